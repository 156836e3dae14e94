//! Money under faults (SPEC §4 outcome unknown, leases, idempotency while unknown; §7
//! reconciliation), over real sockets, on the memory, SQLite and Redis stores: a client that
//! hangs up, a platform that charges and answers late or breaks mid-answer, a slow or failing
//! Redis, a stale balance racing a newer one across replicas, an absurd price.

mod support;

use std::time::Duration;

use http::Method;
use support::*;

const BUDGET_ONE: &str = "0.12";

/// Tenant `a` can afford exactly one Sora generation this month; `b` is unlimited.
fn one_generation_budget() -> String {
    format!("{}{}", tenant("a", KEY_A, 1000, 1000, 1000, Some(BUDGET_ONE)), tenant("b", KEY_B, 1000, 1000, 1000, None))
}

fn late_answer(platform: &Platform, ms: u64) {
    let mut f = platform.fault(FaultKind::LateAnswer);
    f.latency_ms = Some(ms);
    f.path_prefix = Some("/v1/sora/generate".into());
    platform.inject(f);
}

async fn start(platform: &Platform, backend: Backend) -> (TestGateway, Option<tollgate::dev::testkit::RedisServer>) {
    let text = fast_reconcile(&config_text(platform.addr, "", &one_generation_budget()), 2, 300);
    let (text, redis) = with_backend(&text, backend);
    (TestGateway::start(&text).await, redis)
}

async fn wait_spend(gw: &TestGateway, tenant: &str, want: &str) {
    let want = usd(want);
    let until_t = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        // Just after an outage the store may still refuse for a moment (it redials): keep asking.
        let got = match try_spend_of(gw, tenant).await {
            Ok(spend) => spend,
            Err(e) => {
                assert!(tokio::time::Instant::now() < until_t, "spend of {tenant}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if got == want {
            return;
        }
        assert!(tokio::time::Instant::now() < until_t, "spend of {tenant} is {got}, want {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn client_hang_up_after_forward(backend: Backend) {
    let platform = Platform::start().await;
    let (gw, _redis) = start(&platform, backend).await;
    // The platform charges at once and answers after 600 ms; the client leaves after 200 ms.
    late_answer(&platform, 600);
    hang_up_after(gw.addr, "/v1/sora/generate", KEY_A, SORA, "", Duration::from_millis(200)).await;
    // The request runs to its outcome anyway: the generation is recorded and charged to `a`.
    wait_spend(&gw, "a", "0.12").await;
    assert_eq!(platform.mock.charged_total(), usd("0.12"));
    let id = platform.mock.generations()[0].0.clone();
    assert_eq!(gw.gateway.store().generation(&id).await.unwrap().map(|r| r.tenant.to_string()), Some("a".to_string()));
    // Logged and counted as client_closed.
    eventually(Duration::from_secs(2), || {
        gw.log_lines().iter().any(|l| l["outcome"] == "client_closed" && l["status"] == 201)
    })
    .await;
    // The budget is spent: no escape by hanging up.
    let c = client();
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.detail(), "BUDGET_EXCEEDED");
    let metrics = get(&c, &gw.admin_url("/metrics"), None).await;
    assert!(String::from_utf8_lossy(&metrics.body).contains(r#"outcome="client_closed""#));
    gw.shutdown().await;
}

#[tokio::test]
async fn client_hang_up_after_forward_memory() {
    client_hang_up_after_forward(Backend::Memory).await;
}

#[tokio::test]
async fn client_hang_up_after_forward_sqlite() {
    client_hang_up_after_forward(Backend::Sqlite).await;
}

#[tokio::test]
async fn client_hang_up_after_forward_redis() {
    client_hang_up_after_forward(Backend::Redis).await;
}

#[tokio::test]
async fn http2_reset_stream_after_forward_still_charges_the_tenant() {
    let platform = Platform::start().await;
    let (gw, _r) = start(&platform, Backend::Memory).await;
    late_answer(&platform, 600);
    let c = h2_client();
    let req = request(Method::POST, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA);
    // Dropping the response future resets the stream (RST_STREAM CANCEL).
    let r = tokio::time::timeout(Duration::from_millis(200), c.request(req)).await;
    assert!(r.is_err(), "the answer must not have arrived yet");
    wait_spend(&gw, "a", "0.12").await;
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.detail(), "BUDGET_EXCEEDED");
    gw.shutdown().await;
}

async fn timeout_after_charge(backend: Backend) {
    let platform = Platform::start().await;
    let (gw, _redis) = start(&platform, backend).await;
    let c = client();
    // The platform charges, then answers after the upstream timeout (2 s); its list answers
    // slowly, so the outcome stays unknown for a while.
    late_answer(&platform, 2600);
    platform.delay("/v1/sora/generations?", 1500, 2);
    let keyed = |key: &str| {
        let mut r = request(Method::POST, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA);
        r.headers_mut().insert("idempotency-key", key.parse().unwrap());
        r
    };
    let r = send(&c, keyed("k-1")).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (503, "Upstream timed out"));
    // Unknown counts as spent: the budget is used up, not escaped.
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.detail(), "BUDGET_EXCEEDED");
    // A retry with the same key is not forwarded while the outcome is unknown.
    let r = send(&c, keyed("k-1")).await;
    assert_eq!(r.status, 409);
    assert!(r.detail().contains("outcome is not known yet"), "{}", r.detail());
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(platform.generate_calls(), 1);
    // The reconciler finds it on the platform: owned by `a`, charged once.
    wait_spend(&gw, "a", "0.12").await;
    let (id, _, _) = platform.mock.generations()[0].clone();
    let r = send(&c, keyed("k-1")).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.json()["generation_id"], id.as_str());
    assert_eq!(get(&c, &gw.url(&format!("/v1/sora/generations/{id}/")), Some(KEY_A)).await.status, 200);
    assert_eq!(get(&c, &gw.url(&format!("/v1/sora/generations/{id}/")), Some(KEY_B)).await.status, 404);
    assert_eq!(platform.generate_calls(), 1, "one key, one generation");
    assert_eq!(platform.mock.charged_total(), usd("0.12"));
    let totals = gw.gateway.store().hold_totals().await.unwrap();
    assert_eq!((totals.open, totals.unknown), (0, 0));
    gw.shutdown().await;
}

#[tokio::test]
async fn timeout_after_charge_memory() {
    timeout_after_charge(Backend::Memory).await;
}

#[tokio::test]
async fn timeout_after_charge_sqlite() {
    timeout_after_charge(Backend::Sqlite).await;
}

#[tokio::test]
async fn timeout_after_charge_redis() {
    timeout_after_charge(Backend::Redis).await;
}

#[tokio::test]
async fn reset_mid_body_is_resolved_as_charged() {
    let platform = Platform::start().await;
    let (gw, _r) = start(&platform, Backend::Memory).await;
    let c = client();
    let mut f = platform.fault(FaultKind::ResetMidBody);
    f.path_prefix = Some("/v1/sora/generate".into());
    platform.inject(f);
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 503);
    assert_eq!(gw.gateway.store().hold_totals().await.unwrap().unknown, 1);
    wait_spend(&gw, "a", "0.12").await;
    assert_eq!(gw.gateway.store().hold_totals().await.unwrap().unknown, 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_negative_or_absurd_price_is_settled_at_the_quote() {
    let platform = Platform::start().await;
    let (gw, _r) = start(&platform, Backend::Memory).await;
    let c = client();
    // 23 digits overflowed the money type and panicked: the tenant got 500, the charge was lost.
    for (id, price) in [
        ("neg", r#""-5.0000""#),
        ("huge", r#""120.00""#),
        ("digits", r#""99999999999999999999999""#),
        ("number", "99999999999999999999999"),
    ] {
        let mut f = platform.fault(FaultKind::Status);
        f.status = Some(201);
        f.body = Some(format!(r#"{{"generation_id":"{id}","status":"pending","price":{price}}}"#));
        f.path_prefix = Some("/v1/sora/generate".into());
        platform.inject(f);
        let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_B), SORA).await;
        assert_eq!(r.status, 201);
    }
    assert_eq!(spend_of(&gw, "b").await, usd("0.48"), "all four settled at the 0.12 quote");
    let metrics = get(&c, &gw.admin_url("/metrics"), None).await;
    assert!(String::from_utf8_lossy(&metrics.body).contains("tollgate_untrusted_prices_total 4"));
    gw.shutdown().await;
}

#[tokio::test]
async fn an_absurd_balance_is_a_broken_answer_not_a_crash() {
    let platform = Platform::start().await;
    let (gw, _r) = start(&platform, Backend::Memory).await;
    let c = client();
    let mut f = platform.fault(FaultKind::Status);
    f.status = Some(200);
    f.body = Some(r#"{"balance":"99999999999999999999999"}"#.into());
    f.path_prefix = Some("/v1/data/balance".into());
    f.times = Some(2);
    platform.inject(f);
    let paid = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_B), SORA).await;
    assert!(paid.status.is_server_error() && paid.status != 500, "{} {:?}", paid.status, paid.body);
    assert_eq!(platform.generate_calls(), 0, "nothing forwarded without a usable balance");
    let read = get(&c, &gw.url("/v1/data/balance"), Some(KEY_B)).await;
    assert!(read.status.is_server_error() && read.status != 500, "{} {:?}", read.status, read.body);
    gw.shutdown().await;
}

/// Redis behind a proxy the test can stall.
async fn redis_behind_proxy(
    platform: &Platform,
    timeout_ms: u64,
) -> (TestGateway, tollgate::dev::testkit::RedisServer, RedisProxy) {
    let redis = tollgate::dev::testkit::RedisServer::start();
    let proxy = RedisProxy::start(&redis.url).await;
    let text = fast_reconcile(&config_text(platform.addr, "", &one_generation_budget()), 2, 300).replace(
        "backend = \"memory\"",
        &format!(
            "backend = \"redis\"\nurl = \"{}\"\ntimeout_ms = {timeout_ms}\nkey_prefix = \"p{}\"",
            proxy.url,
            uuid::Uuid::new_v4().simple()
        ),
    );
    (TestGateway::start(&text).await, redis, proxy)
}

#[tokio::test]
async fn a_redis_failure_after_the_201_still_answers_201_and_records_it_later() {
    let platform = Platform::start().await;
    let (gw, _redis, proxy) = redis_behind_proxy(&platform, 300).await;
    let c = client();
    late_answer(&platform, 600);
    let pending = {
        let (c, url) = (c.clone(), gw.url("/v1/sora/generate"));
        tokio::spawn(async move { post(&c, &url, Some(KEY_B), SORA).await })
    };
    // Redis stops answering while the platform is creating the generation.
    eventually(Duration::from_secs(5), || platform.generate_calls() == 1).await;
    proxy.stall(true);
    let r = pending.await.unwrap();
    assert_eq!(r.status, 201, "the platform created and charged it: the tenant must hear so ({:?})", r.body);
    let id = r.json()["generation_id"].as_str().unwrap().to_string();
    // Back: the record is written from the retry queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.stall(false);
    wait_spend(&gw, "b", "0.12").await;
    assert_eq!(gw.gateway.store().generation(&id).await.unwrap().map(|r| r.tenant.to_string()), Some("b".into()));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_hold_script_answered_after_the_store_timeout_leaves_no_hold() {
    let platform = Platform::start().await;
    let (gw, _redis, proxy) = redis_behind_proxy(&platform, 300).await;
    let c = client();
    // Cache a balance first, so the slow call is the hold itself.
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_B)).await.status, 200);
    let prompt = "slow hold";
    *proxy.delay_marker.lock().unwrap() = Some((prompt_digest(prompt).into_bytes(), Duration::from_millis(900)));
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_B), &format!(r#"{{"prompt": "{prompt}"}}"#)).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (503, "Store unavailable"));
    *proxy.delay_marker.lock().unwrap() = None;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let totals = gw.gateway.store().hold_totals().await.unwrap();
    assert_eq!((totals.open, totals.unknown, totals.held), (0, 0, usd("0")), "the late hold was refused or released");
    assert_eq!(platform.generate_calls(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_stale_balance_fetch_never_overwrites_a_newer_one_across_replicas() {
    let redis = tollgate::dev::testkit::RedisServer::start();
    let platform = Platform::with_balance("0.84").await;
    let tenants =
        format!("{}{}", tenant("a", KEY_A, 1000, 1000, 1000, None), tenant("b", KEY_B, 1000, 1000, 1000, None));
    let text = config_text(platform.addr, "", &tenants).replace("cache_ttl_ms = 60000", "cache_ttl_ms = 300").replace(
        "backend = \"memory\"",
        &format!("backend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"shared\"", redis.url),
    );
    // Each replica fetches the balance at start, B once A's snapshot is stale (a B started
    // within the TTL reads A's and fetches nothing: the count then depended on how slowly B
    // started).
    let replica_a = TestGateway::start(&text).await;
    eventually(Duration::from_secs(5), || platform.balance_calls() >= 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let replica_b = TestGateway::start(&text).await;
    let c = client();
    eventually(Duration::from_secs(5), || platform.balance_calls() >= 2).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Replica A starts a balance fetch that the platform answers slowly (it will say 0.84) …
    platform.delay("/v1/data/balance", 1500, 1);
    let slow = {
        let (c, url) = (c.clone(), replica_a.url("/v1/sora/generate"));
        tokio::spawn(async move { post(&c, &url, Some(KEY_A), SORA).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    // … replica B fetches later, admits seven, and a later fetch sees the account empty …
    for _ in 0..7 {
        assert_eq!(post(&c, &replica_b.url("/v1/sora/generate"), Some(KEY_B), SORA).await.status, 201);
    }
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(post(&c, &replica_b.url("/v1/sora/generate"), Some(KEY_B), SORA).await.detail(), "INSUFFICIENT_CREDITS");
    // … then A's stale 0.84 lands: dropped, so A refuses too instead of forwarding.
    let r = slow.await.unwrap();
    assert_eq!(r.detail(), "INSUFFICIENT_CREDITS");
    assert_eq!(platform.generate_calls(), 7, "only the platform's own money was spent, never its 402");
    replica_a.shutdown().await;
    replica_b.shutdown().await;
}

#[tokio::test]
async fn a_failed_generation_is_refunded_without_anyone_polling() {
    let platform = Platform::start().await;
    let (gw, _r) = start(&platform, Backend::Memory).await;
    let c = client();
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), r#"{"prompt": "[fail] a cat"}"#).await;
    assert_eq!(r.status, 201);
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.detail(), "BUDGET_EXCEEDED");
    // Nobody polls; the reconciler follows it to `failed` and refunds it once.
    wait_spend(&gw, "a", "0").await;
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    let metrics = String::from_utf8_lossy(&get(&c, &gw.admin_url("/metrics"), None).await.body).into_owned();
    assert!(metrics.contains(r#"tollgate_refunds_total{tenant="a"} 1"#), "{metrics}");
    gw.shutdown().await;
}

async fn redis_conn(url: &str) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// Before: after FLUSHALL `/readyz` stayed 200, a tenant at its budget got more 201s and an
/// acknowledged Idempotency-Key bought a second generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_forgets_its_data_fails_money_closed_until_recovered() {
    let platform = Platform::start().await;
    let text = fast_reconcile(&config_text(platform.addr, "", &one_generation_budget()), 2, 300);
    let (text, redis) = with_backend(&text, Backend::Redis);
    let redis = redis.unwrap();
    let gw = TestGateway::start(&text).await;
    let c = client();
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 402, "a's budget is spent");
    let _: () = ::redis::cmd("FLUSHALL").query_async(&mut redis_conn(&redis.url).await).await.unwrap();
    until(Duration::from_secs(5), "readyz 503 after FLUSHALL", || async {
        get(&client(), &gw.admin_url("/readyz"), None).await.status == 503
    })
    .await;
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (503, "Store unavailable"));
    assert_eq!(platform.generate_calls(), 1, "nothing forwarded after the loss");
    // A replica started now refuses to start, naming the way out: the first one left the lost
    // marker, so the empty Redis is not taken for a new store.
    let config = tollgate::config::Config::from_toml(&text, &env()).unwrap();
    let (log, _) = tollgate::observe::access_log::AccessLog::memory();
    let err = tollgate::build(&config, log, None).await.err().expect("refused while lost");
    assert!(err.to_string().contains("tollgate store recover"), "{err}");
    // The operator's recovery says what was lost; replicas take money again.
    let report = tollgate::store::recover(&config.store).await.unwrap();
    assert!(report.contains("Lost for good") && report.contains("this month's spend"), "{report}");
    assert!(tollgate::store::recover(&config.store).await.unwrap_err().to_string().contains("nothing to recover"));
    until(Duration::from_secs(5), "readyz 200 after recovery", || async {
        get(&client(), &gw.admin_url("/readyz"), None).await.status == 200
    })
    .await;
    let late = TestGateway::start(&text).await;
    assert_eq!(get(&c, &late.admin_url("/readyz"), None).await.status, 200);
    late.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_redis_that_may_evict_keys_is_refused_at_start() {
    let platform = Platform::start().await;
    let (text, redis) = with_backend(&config_text(platform.addr, "", &default_tenants()), Backend::Redis);
    let redis = redis.unwrap();
    let _: () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut redis_conn(&redis.url).await)
        .await
        .unwrap();
    let (log, _) = tollgate::observe::access_log::AccessLog::memory();
    let err = tollgate::build(&tollgate::config::Config::from_toml(&text, &env()).unwrap(), log, None)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("maxmemory-policy is allkeys-lru"), "{err}");
}

/// Before: with `min_replica_acks = 1` and no replica left (after a failover in a set of two),
/// every paid request was 503 while `/readyz` said 200. Readiness now waits for the acks too.
#[tokio::test]
async fn readyz_is_503_while_money_writes_cannot_be_acknowledged() {
    let platform = Platform::start().await;
    let (text, _redis) = with_backend(&config_text(platform.addr, "", &default_tenants()), Backend::Redis);
    let text = text.replace("backend = \"redis\"", "backend = \"redis\"\nmin_replica_acks = 1\ntimeout_ms = 300");
    let gw = TestGateway::start(&text).await;
    let c = client();
    assert_eq!(
        post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status,
        503,
        "no replica acknowledges the hold"
    );
    assert_eq!(get(&c, &gw.admin_url("/readyz"), None).await.status, 503);
    gw.shutdown().await;
}
