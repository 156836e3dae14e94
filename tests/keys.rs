//! Teams and keys at runtime (SPEC §11), over real sockets: the admin API on the admin listener,
//! the keys it issues on the tenant listener, SQLite restarts and two replicas on one Redis.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "admin-secret-for-tests-0123456789abcdef";

fn admin_config(platform: std::net::SocketAddr) -> String {
    config_text(platform, "admin_token_env = \"TEST_ADMIN_TOKEN\"", &default_tenants())
}

async fn admin(c: &HttpClient, gw: &TestGateway, method: Method, path: &str, body: Value) -> Rsp {
    let body = if body.is_null() { String::new() } else { body.to_string() };
    send(c, request(method, &gw.admin_url(path), Some(ADMIN), body)).await
}

/// Creates an API tenant and issues it a key; returns the key and its id.
async fn onboard(c: &HttpClient, gw: &TestGateway, id: &str, settings: Value, key: Value) -> (String, String) {
    let mut body = settings;
    body["id"] = json!(id);
    let r = admin(c, gw, Method::POST, "/admin/tenants", body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = admin(c, gw, Method::POST, &format!("/admin/tenants/{id}/keys"), key).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let k = r.json();
    (k["key"].as_str().unwrap().to_string(), k["id"].as_str().unwrap().to_string())
}

/// A balance read's status, with the 429 for too many failed authentications counted as the
/// 401 it stands for: polling a key that does not work yet adds to that address's failures.
async fn balance_status(c: &HttpClient, gw: &TestGateway, key: &str) -> u16 {
    let r = get(c, &gw.url("/v1/data/balance"), Some(key)).await;
    if r.status == 429 && r.detail().starts_with("Too many failed authentication") {
        401
    } else {
        r.status.as_u16()
    }
}

/// How long until `key` gets `status` on a balance read (polled every 20 ms, up to 5 s). A 429
/// for failed authentication attempts counts as a 401: only keys that do not work add to it.
async fn until_status(c: &HttpClient, gw: &TestGateway, key: &str, status: u16) -> Duration {
    let start = Instant::now();
    loop {
        if balance_status(c, gw, key).await == status {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{key:.8}… never answered {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_is_created_given_a_key_that_works_and_its_budget_refuses() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&admin_config(platform.addr)).await;
    let c = client();
    let (key, key_id) = onboard(
        &c,
        &gw,
        "team-x",
        json!({ "monthly_budget": "0.20", "generations_per_minute": 100 }),
        json!({ "label": "ci" }),
    )
    .await;
    assert!(key.starts_with("tg_") && key.len() >= 35, "{key}");
    // Usable at once on the replica that made it.
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(&key), SORA).await.status, 201);
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(&key), SORA).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (402, "BUDGET_EXCEEDED"));
    // The listing never shows the key, only its prefix.
    let r = admin(&c, &gw, Method::GET, "/admin/tenants/team-x", Value::Null).await;
    assert_eq!(r.status, 200);
    let t = r.json();
    assert_eq!(
        (t["source"].as_str(), t["monthly_budget"].as_str(), t["disabled"].as_bool()),
        (Some("api"), Some("0.2000"), Some(false))
    );
    assert_eq!(t["keys"][0]["id"], key_id.as_str());
    assert_eq!(t["keys"][0]["prefix"], &key[..8]);
    assert_eq!(
        (t["keys"][0]["state"].as_str(), t["keys"][0]["label"].as_str(), t["keys"][0]["scope"].as_str()),
        (Some("active"), Some("ci"), Some("api"))
    );
    assert!(!r.body.windows(key.len()).any(|w| w == key.as_bytes()));
    // Config tenants are listed and left alone.
    let all = admin(&c, &gw, Method::GET, "/admin/tenants", Value::Null).await.json();
    let sources: Vec<(&str, &str)> =
        all.as_array().unwrap().iter().map(|t| (t["id"].as_str().unwrap(), t["source"].as_str().unwrap())).collect();
    assert_eq!(sources, vec![("a", "config"), ("b", "config"), ("team-x", "api")]);
    let r = admin(&c, &gw, Method::PATCH, "/admin/tenants/a", json!({ "burst": 5 })).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (409, "Tenant is managed by the config file"));
    // The audit trail has each change, and never a key.
    let audit = admin(&c, &gw, Method::GET, "/admin/audit?limit=10", Value::Null).await;
    let lines = audit.json();
    let actions: Vec<String> =
        lines.as_array().unwrap().iter().rev().map(|l| l["action"].as_str().unwrap().to_string()).collect();
    assert_eq!(actions, ["tenant.create", "key.issue", "tenant.update"]);
    assert!(!audit.body.windows(key.len()).any(|w| w == key.as_bytes()));
    assert!(audit.body.windows(8).any(|w| w == &key.as_bytes()[..8]), "the audit names the key's prefix");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_old_key_for_its_grace_then_only_the_new_one_works() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&admin_config(platform.addr)).await;
    let c = client();
    let (old, old_id) = onboard(&c, &gw, "team-r", json!({ "requests_per_second": 1000 }), json!({})).await;
    let r = admin(
        &c,
        &gw,
        Method::POST,
        &format!("/admin/tenants/team-r/keys/{old_id}/rotate"),
        json!({ "grace_secs": 2 }),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let new = r.json()["key"].as_str().unwrap().to_string();
    let rotated = Instant::now();
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(&old)).await.status, 200);
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(&new)).await.status, 200);
    let t = admin(&c, &gw, Method::GET, "/admin/tenants/team-r", Value::Null).await.json();
    assert_eq!(t["keys"][0]["state"], "grace");
    let waited = until_status(&c, &gw, &old, 401).await;
    let after = rotated.elapsed();
    assert!(after >= Duration::from_millis(1900), "the old key stopped before its grace ended ({after:?})");
    assert!(
        after < Duration::from_secs(3) + Duration::from_millis(200),
        "the old key outlived its grace by more than 1 s ({after:?}, {waited:?})"
    );
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(&new)).await.status, 200);
    let t = admin(&c, &gw, Method::GET, "/admin/tenants/team-r", Value::Null).await.json();
    assert_eq!((t["keys"][0]["state"].as_str(), t["keys"][1]["state"].as_str()), (Some("expired"), Some("active")));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_key_stops_at_its_time_and_a_viewer_key_only_reads_usage() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&admin_config(platform.addr)).await;
    let c = client();
    let ends = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let ends = ends.replace_nanosecond(0).unwrap();
    let at = ends.format(&time::format_description::well_known::Rfc3339).unwrap();
    let (key, _) =
        onboard(&c, &gw, "team-e", json!({ "requests_per_second": 1000 }), json!({ "expires_at": at })).await;
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(&key)).await.status, 200);
    until_status(&c, &gw, &key, 401).await;
    let late = time::OffsetDateTime::now_utc() - ends;
    assert!(late > time::Duration::ZERO && late < time::Duration::seconds(1), "expired {late} after its time");
    // A viewer key: its usage yes, anything else 403.
    let r = admin(&c, &gw, Method::POST, "/admin/tenants/team-e/keys", json!({ "scope": "viewer" })).await;
    let viewer = r.json()["key"].as_str().unwrap().to_string();
    assert_eq!(r.json()["scope"], "viewer");
    assert_eq!(get(&c, &gw.url("/v1/gateway/usage"), Some(&viewer)).await.status, 200);
    for r in [
        post(&c, &gw.url("/v1/sora/generate"), Some(&viewer), SORA).await,
        get(&c, &gw.url("/v1/data/balance"), Some(&viewer)).await,
    ] {
        assert_eq!((r.status.as_u16(), r.detail().as_str()), (403, "This key is read-only"));
    }
    assert_eq!(platform.generate_calls(), 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_deleted_keys_get_401_and_disabled_ones_403_at_once() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&admin_config(platform.addr)).await;
    let c = client();
    let (key, key_id) = onboard(&c, &gw, "team-v", json!({}), json!({})).await;
    let (other, _) = {
        let r = admin(&c, &gw, Method::POST, "/admin/tenants/team-v/keys", json!({})).await;
        (r.json()["key"].as_str().unwrap().to_string(), ())
    };
    assert_eq!(
        send(
            &c,
            request(Method::DELETE, &gw.admin_url(&format!("/admin/tenants/team-v/keys/{key_id}")), Some(ADMIN), "")
        )
        .await
        .status,
        204
    );
    let r = get(&c, &gw.url("/v1/data/balance"), Some(&key)).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (401, "Invalid credentials"));
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(&other)).await.status, 200);
    // Disable, enable, delete.
    assert_eq!(admin(&c, &gw, Method::PATCH, "/admin/tenants/team-v", json!({ "disabled": true })).await.status, 200);
    // Before: a plain 401 "Invalid credentials"; now the key is known and the answer says why.
    let r = get(&c, &gw.url("/v1/data/balance"), Some(&other)).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (403, "This team is disabled; ask the gateway's admin"));
    assert_eq!(admin(&c, &gw, Method::PATCH, "/admin/tenants/team-v", json!({ "disabled": false })).await.status, 200);
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(&other)).await.status, 200);
    assert_eq!(admin(&c, &gw, Method::DELETE, "/admin/tenants/team-v", Value::Null).await.status, 204);
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(&other)).await.status, 401);
    assert_eq!(admin(&c, &gw, Method::GET, "/admin/tenants/team-v", Value::Null).await.status, 404);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_status_and_names_the_field() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&admin_config(platform.addr)).await;
    let c = client();
    onboard(&c, &gw, "team-b", json!({}), json!({})).await;
    let cases: Vec<(Method, &str, Value, u16, &str)> = vec![
        (Method::POST, "/admin/tenants", json!({ "id": "Bad Id" }), 422, "id: "),
        (Method::POST, "/admin/tenants", json!({}), 422, "id: is required"),
        (Method::POST, "/admin/tenants", json!({ "id": "ok", "colour": "red" }), 422, "colour: unknown field"),
        (Method::POST, "/admin/tenants", json!({ "id": "ok", "monthly_budget": "-1" }), 422, "monthly_budget: "),
        (Method::POST, "/admin/tenants", json!({ "id": "ok", "monthly_budget": "1.00001" }), 422, "monthly_budget: "),
        (Method::POST, "/admin/tenants", json!({ "id": "ok", "requests_per_second": 0 }), 422, "requests_per_second: "),
        (Method::POST, "/admin/tenants", json!({ "id": "ok", "max_in_flight": 0 }), 422, "max_in_flight: "),
        (Method::POST, "/admin/tenants", json!({ "id": "team-b" }), 409, "Tenant already exists"),
        (Method::POST, "/admin/tenants", json!({ "id": "a" }), 409, "Tenant is managed by the config file"),
        (Method::PATCH, "/admin/tenants/team-b", json!({ "disabled": "yes" }), 422, "disabled: "),
        (Method::PATCH, "/admin/tenants/team-b", json!({ "id": "x" }), 422, "id: unknown field"),
        (Method::PATCH, "/admin/tenants/nobody", json!({ "burst": 2 }), 404, "Tenant not found"),
        (
            Method::POST,
            "/admin/tenants/team-b/keys",
            json!({ "expires_at": "2001-01-01T00:00:00Z" }),
            422,
            "expires_at: must be in the future",
        ),
        (Method::POST, "/admin/tenants/team-b/keys", json!({ "expires_at": "tomorrow" }), 422, "expires_at: "),
        (Method::POST, "/admin/tenants/team-b/keys", json!({ "scope": "root" }), 422, "scope: "),
        (Method::POST, "/admin/tenants/nobody/keys", json!({}), 404, "Tenant not found"),
        (Method::POST, "/admin/tenants/team-b/keys/key_0000/rotate", json!({}), 404, "Key not found"),
        (Method::DELETE, "/admin/tenants/team-b/keys/key_0000", Value::Null, 404, "Key not found"),
        (Method::GET, "/admin/audit?limit=0", Value::Null, 422, "limit: "),
    ];
    for (method, path, body, status, detail) in cases {
        let r = admin(&c, &gw, method.clone(), path, body.clone()).await;
        assert_eq!(r.status.as_u16(), status, "{method} {path} {body}: {:?}", r.body);
        assert!(r.detail().starts_with(detail), "{method} {path} {body}: {}", r.detail());
    }
    let big = json!({ "id": "big", "pad": "x".repeat(70 * 1024) });
    assert_eq!(admin(&c, &gw, Method::POST, "/admin/tenants", big).await.status, 413);
    for token in [None, Some("wrong")] {
        let r = send(&c, request(Method::GET, &gw.admin_url("/admin/tenants"), token, "")).await;
        assert_eq!((r.status.as_u16(), r.detail().as_str()), (401, "Invalid credentials"));
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_sqlite_keeps_tenants_keys_revocations_and_spend() {
    let platform = Platform::start().await;
    let (text, _) = with_backend(&admin_config(platform.addr), Backend::Sqlite);
    let c = client();
    let gw = TestGateway::start(&text).await;
    let (kept, _) = onboard(&c, &gw, "team-s", json!({ "monthly_budget": "5" }), json!({})).await;
    let r = admin(&c, &gw, Method::POST, "/admin/tenants/team-s/keys", json!({})).await;
    let (revoked, revoked_id) =
        (r.json()["key"].as_str().unwrap().to_string(), r.json()["id"].as_str().unwrap().to_string());
    assert_eq!(
        admin(&c, &gw, Method::DELETE, &format!("/admin/tenants/team-s/keys/{revoked_id}"), Value::Null).await.status,
        204
    );
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(&kept), SORA).await.status, 201);
    gw.shutdown().await;

    let gw = TestGateway::start(&text).await;
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(&kept)).await.status, 200);
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(&revoked)).await.status, 401);
    let usage = get(&c, &gw.url("/v1/gateway/usage"), Some(&kept)).await.json();
    assert_eq!(usage["spent"], "0.1200", "{usage}");
    let t = admin(&c, &gw, Method::GET, "/admin/tenants/team-s", Value::Null).await.json();
    assert_eq!((t["keys"][0]["state"].as_str(), t["keys"][1]["state"].as_str()), (Some("active"), Some("revoked")));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_see_new_and_revoked_keys_within_a_second() {
    let platform = Platform::start().await;
    let (text, _redis) = with_backend(&admin_config(platform.addr), Backend::Redis);
    let (one, two) = (TestGateway::start(&text).await, TestGateway::start(&text).await);
    let c = client();
    let made = Instant::now();
    let (key, key_id) = onboard(&c, &one, "team-2", json!({ "requests_per_second": 1000 }), json!({})).await;
    let seen = until_status(&c, &two, &key, 200).await;
    assert!(
        made.elapsed() < Duration::from_secs(2) && seen < Duration::from_secs(1),
        "a key made on one replica took {seen:?} to work on the other"
    );
    assert_eq!(
        admin(&c, &two, Method::DELETE, &format!("/admin/tenants/team-2/keys/{key_id}"), Value::Null).await.status,
        204
    );
    assert_eq!(balance_status(&c, &two, &key).await, 401);
    let gone = until_status(&c, &one, &key, 401).await;
    assert!(gone < Duration::from_secs(1), "a revoked key worked on the other replica for {gone:?}");
    // The tenant itself, and its listing, are the same on both.
    let (a, b) = (
        admin(&c, &one, Method::GET, "/admin/tenants/team-2", Value::Null).await.json(),
        admin(&c, &two, Method::GET, "/admin/tenants/team-2", Value::Null).await.json(),
    );
    assert_eq!(a, b);
    one.shutdown().await;
    two.shutdown().await;
}

/// The propagation bound as a figure: 100 changes made on one replica, each timed until the
/// other replica answers accordingly. `cargo test --release --test keys -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn propagation_between_two_replicas_p50_p99() {
    let platform = Platform::start().await;
    let (text, _redis) = with_backend(&admin_config(platform.addr), Backend::Redis);
    let (one, two) = (TestGateway::start(&text).await, TestGateway::start(&text).await);
    let c = client();
    let (key, _) = onboard(&c, &one, "team-p", json!({ "requests_per_second": 1000, "burst": 1000 }), json!({})).await;
    until_status(&c, &two, &key, 200).await;
    let mut took = Vec::new();
    for i in 0..100 {
        let disable = i % 2 == 0;
        let start = Instant::now();
        assert_eq!(
            admin(&c, &one, Method::PATCH, "/admin/tenants/team-p", json!({ "disabled": disable })).await.status,
            200
        );
        until_status(&c, &two, &key, if disable { 403 } else { 200 }).await;
        took.push(start.elapsed());
    }
    took.sort();
    println!("propagation over 100 changes: p50 {:?}, p99 {:?}, max {:?}", took[49], took[98], took[99]);
    assert!(took[98] < Duration::from_secs(1));
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Startup with 100,000 stored keys (10,000 API tenants of ten keys) on SQLite: the time until
/// the gateway serves them, and the memory they take.
/// `cargo test --release --test keys -- --ignored --nocapture startup`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn startup_with_100k_stored_keys() {
    use tollgate::policy::keys::{ApiKey, ApiTenant, Scope};
    let platform = Platform::start().await;
    let (text, _) = with_backend(&admin_config(platform.addr), Backend::Sqlite);
    let config = tollgate::Config::from_toml(&text, &env()).unwrap();
    let mut some_key = String::new();
    {
        let store = tollgate::store::open(&config.store).await.unwrap();
        for t in 0..10_000 {
            let keys: Vec<ApiKey> = (0..10)
                .map(|_| {
                    let (k, key) = ApiKey::issue(None, Scope::Api, None, tollgate::store::now_ms());
                    some_key = key;
                    k
                })
                .collect();
            let doc = ApiTenant {
                id: format!("t{t}"),
                requests_per_second: 100,
                burst: 100,
                generations_per_minute: 10,
                monthly_budget_micros: None,
                max_in_flight: None,
                disabled: false,
                created_ms: 0,
                keys,
                deleted_ms: None,
                overlay: false,
            };
            assert!(store.directory_put(&doc.id, 0, Some(&doc)).await.unwrap());
        }
    }
    let before = rss_kib();
    let start = Instant::now();
    let gw = TestGateway::start(&text).await;
    let took = start.elapsed();
    let after = rss_kib();
    assert_eq!(get(&client(), &gw.url("/v1/data/balance"), Some(&some_key)).await.status, 200);
    println!(
        "startup with 100,000 stored keys: {took:?}; RSS +{} MiB (+{} KiB per 10,000 keys)",
        (after.saturating_sub(before)) / 1024,
        after.saturating_sub(before) / 10
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenants_id_is_never_handed_to_a_new_team() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&admin_config(platform.addr)).await;
    let c = client();
    let (key, _) =
        onboard(&c, &gw, "zeta", json!({ "monthly_budget": "1.00", "generations_per_minute": 100 }), json!({})).await;
    let id = create(&c, &gw, &key).await;
    assert_eq!(admin(&c, &gw, Method::DELETE, "/admin/tenants/zeta", Value::Null).await.status, 204);
    assert_eq!(balance_status(&c, &gw, &key).await, 401, "a deleted tenant's key stops working");
    assert_eq!(admin(&c, &gw, Method::GET, "/admin/tenants/zeta", Value::Null).await.status, 404);
    let listed = admin(&c, &gw, Method::GET, "/admin/tenants", Value::Null).await.json();
    assert!(listed.as_array().unwrap().iter().all(|t| t["id"] != "zeta"), "{listed}");
    // Before: the id was created again and the new team's key read the old team's generation.
    let r = admin(&c, &gw, Method::POST, "/admin/tenants", json!({ "id": "zeta" })).await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert!(r.detail().contains("`zeta`") && r.detail().contains("never reused"), "{}", r.detail());
    assert_eq!(admin(&c, &gw, Method::POST, "/admin/tenants/zeta/keys", json!({})).await.status, 404);
    // The old generation still belongs to nobody new.
    let (other, _) = onboard(&c, &gw, "eta", json!({}), json!({})).await;
    assert_eq!(get(&c, &gw.url(&format!("/v1/sora/generations/{id}")), Some(&other)).await.status, 404);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_tenant_with_an_api_tenants_id_is_refused_at_reload_and_start() {
    let platform = Platform::start().await;
    let dir = temp_dir();
    let db = dir.join("ledger.db");
    let base = admin_config(platform.addr)
        .replace("backend = \"memory\"", &format!("backend = \"sqlite\"\npath = \"{}\"", db.display()));
    let text = Arc::new(std::sync::Mutex::new(base.clone()));
    let source = text.clone();
    let reload: tollgate::gateway::ReloadSource =
        Arc::new(move || tollgate::config::Config::from_toml(&source.lock().unwrap(), &env()));
    let gw = TestGateway::start_config(tollgate::config::Config::from_toml(&base, &env()).unwrap(), Some(reload)).await;
    let c = client();
    let (key, _) = onboard(&c, &gw, "zeta", json!({}), json!({})).await;
    // A reload counts every team it serves: the file's two and the API's one (before: 2).
    let r = admin(&c, &gw, Method::POST, "/admin/reload", Value::Null).await;
    assert_eq!((r.status.as_u16(), r.json()["tenants"].as_u64()), (200, Some(3)), "{:?}", r.body);
    let clash = format!("{base}\n{}", tenant("zeta", "file-zeta-key-0123456789abcdef", 5, 5, 5, None));
    *text.lock().unwrap() = clash.clone();
    // Before: the reload succeeded, the API tenant's key got 401 and the file tenant took its data.
    let r = admin(&c, &gw, Method::POST, "/admin/reload", Value::Null).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(r.detail().contains("`zeta`"), "{}", r.detail());
    assert_eq!(balance_status(&c, &gw, &key).await, 200, "the API tenant keeps working");
    gw.shutdown().await;
    // The same file at start is refused, naming the tenant.
    let (log, _) = tollgate::observe::access_log::AccessLog::memory();
    let err = tollgate::build(&tollgate::config::Config::from_toml(&clash, &env()).unwrap(), log, None)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("`zeta`"), "{err}");
}

#[tokio::test]
async fn key_labels_with_control_characters_are_refused() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&admin_config(platform.addr)).await;
    let c = client();
    assert_eq!(admin(&c, &gw, Method::POST, "/admin/tenants", json!({ "id": "lab" })).await.status, 201);
    for bad in ["\u{1b}[31mred", "bell\u{7}", "nul\u{0}", "two\r\nlines"] {
        let r = admin(&c, &gw, Method::POST, "/admin/tenants/lab/keys", json!({ "label": bad })).await;
        assert_eq!(r.status, 422, "{bad:?} {:?}", r.body);
        assert!(r.detail().contains("label"), "{}", r.detail());
    }
    assert_eq!(
        admin(&c, &gw, Method::POST, "/admin/tenants/lab/keys", json!({ "label": "ci – ünïcode ok" })).await.status,
        201
    );
    gw.shutdown().await;
}

/// Before: `tollgate usage` built its report from the file's tenants only, so a team made at
/// runtime showed budget `-` and remaining `-` while `/admin/usage` said 2.0000 / 1.8800. Both
/// now come from one function given the file's tenants, which reads the store's teams itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_report_and_admin_usage_agree_on_a_runtime_team() {
    let platform = Platform::start().await;
    let text = admin_config(platform.addr);
    let gw = TestGateway::start(&text).await;
    let c = client();
    let (key, _) =
        onboard(&c, &gw, "team-r", json!({ "monthly_budget": "2.00", "generations_per_minute": 100 }), json!({})).await;
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(&key), SORA).await.status, 201);
    let admin_view = admin(&c, &gw, Method::GET, "/admin/usage", Value::Null).await.json();
    let config = tollgate::config::Config::from_toml(&text, &env()).unwrap();
    let month = tollgate::store::month_of(tollgate::store::now_ms());
    // What `tollgate usage` calls, with what it has: the config file's tenants.
    let cli =
        tollgate::store::usage::report(&**gw.gateway.store(), config.tenants.tenants(), &month, None).await.unwrap();
    let cli = serde_json::to_value(&cli).unwrap();
    let team = |v: &Value| v["tenants"].as_array().unwrap().iter().find(|t| t["tenant"] == "team-r").cloned().unwrap();
    assert_eq!((team(&cli)["budget"].as_str(), team(&cli)["remaining"].as_str()), (Some("2.0000"), Some("1.8800")));
    assert_eq!(team(&cli), team(&admin_view));
    assert_eq!(cli["tenants"], admin_view["tenants"]);
    gw.shutdown().await;
}

/// Before: "last used" was the time of the once-a-minute flush, and uses not yet flushed were
/// dropped when an admin change replaced the directory, so a key used and then revoked showed
/// "never" — the one figure that answers "is anyone still using the old key?".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_last_use_is_the_requests_time_and_survives_rotation_and_revocation() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&admin_config(platform.addr)).await;
    let c = client();
    let (old, old_id) = onboard(&c, &gw, "team-u", json!({}), json!({})).await;
    let (other, other_id) = {
        let r = admin(&c, &gw, Method::POST, "/admin/tenants/team-u/keys", json!({})).await;
        (r.json()["key"].as_str().unwrap().to_string(), r.json()["id"].as_str().unwrap().to_string())
    };
    let used_at = tollgate::store::now_ms();
    assert_eq!(balance_status(&c, &gw, &old).await, 200);
    assert_eq!(balance_status(&c, &gw, &other).await, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // An admin change replaces the directory before the flush: rotate one, revoke the other.
    let r = admin(&c, &gw, Method::POST, &format!("/admin/tenants/team-u/keys/{old_id}/rotate"), json!({})).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(
        admin(&c, &gw, Method::DELETE, &format!("/admin/tenants/team-u/keys/{other_id}"), Value::Null).await.status,
        204
    );
    gw.gateway.flush_key_uses().await;
    let t = admin(&c, &gw, Method::GET, "/admin/tenants/team-u", Value::Null).await.json();
    for id in [&old_id, &other_id] {
        let k = t["keys"].as_array().unwrap().iter().find(|k| k["id"] == id.as_str()).unwrap();
        let at = k["last_used_at"].as_str().unwrap_or_else(|| panic!("{id} shows never: {k}"));
        let ms = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp_nanos()
            / 1_000_000;
        let ms = ms as u64;
        assert!(
            ms >= used_at.saturating_sub(1) && ms < used_at + 1000,
            "{id}: last used {at}, used at {used_at} (not the flush's time)"
        );
    }
    gw.shutdown().await;
}

/// One kind of team (#43): a config-file team gets keys issued at runtime (a viewer key for its
/// lead's dashboard, an app key), can be disabled and enabled, and has those keys revoked, all
/// without editing the file; its limits, budget and listed keys stay the file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_team_gets_runtime_keys_and_can_be_disabled() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&admin_config(platform.addr)).await;
    let c = client();
    // Before: 409 "Tenant is managed by the config file".
    let r = admin(&c, &gw, Method::POST, "/admin/tenants/a/keys", json!({ "scope": "viewer", "label": "lead" })).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let viewer = r.json()["key"].as_str().unwrap().to_string();
    let r = admin(&c, &gw, Method::POST, "/admin/tenants/a/keys", json!({ "label": "app" })).await;
    let (app, app_id) = (r.json()["key"].as_str().unwrap().to_string(), r.json()["id"].as_str().unwrap().to_string());
    assert_eq!(get(&c, &gw.url("/v1/gateway/usage"), Some(&viewer)).await.json()["tenant"], "a");
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(&app), SORA).await.status, 201);
    assert_eq!(spend_of(&gw, "a").await, usd("0.12"), "charged to the file team, under its budget");
    let t = admin(&c, &gw, Method::GET, "/admin/tenants/a", Value::Null).await.json();
    let sources: Vec<&str> = t["keys"].as_array().unwrap().iter().map(|k| k["source"].as_str().unwrap()).collect();
    assert_eq!((t["source"].as_str(), sources), (Some("config"), vec!["config", "api", "api"]));
    // The file's settings stay the file's; so do its keys.
    let r = admin(&c, &gw, Method::PATCH, "/admin/tenants/a", json!({ "monthly_budget": "9.00" })).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (409, "Tenant is managed by the config file"));
    let file_key_id = t["keys"][0]["id"].as_str().unwrap().to_string();
    let r = admin(&c, &gw, Method::DELETE, &format!("/admin/tenants/a/keys/{file_key_id}"), Value::Null).await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(admin(&c, &gw, Method::DELETE, "/admin/tenants/a", Value::Null).await.status, 409);
    // Disabled: every key of the team, the file's too, stops; enabled: they work again.
    let r = admin(&c, &gw, Method::PATCH, "/admin/tenants/a", json!({ "disabled": true })).await;
    assert_eq!((r.status.as_u16(), r.json()["disabled"].as_bool()), (200, Some(true)), "{:?}", r.body);
    for key in [KEY_A, app.as_str(), viewer.as_str()] {
        assert_eq!(balance_status(&c, &gw, key).await, 403);
    }
    assert_eq!(admin(&c, &gw, Method::PATCH, "/admin/tenants/a", json!({ "disabled": false })).await.status, 200);
    assert_eq!(balance_status(&c, &gw, KEY_A).await, 200);
    // A runtime key is revoked by id.
    assert_eq!(
        admin(&c, &gw, Method::DELETE, &format!("/admin/tenants/a/keys/{app_id}"), Value::Null).await.status,
        204
    );
    assert_eq!(balance_status(&c, &gw, &app).await, 401);
    assert_eq!(balance_status(&c, &gw, KEY_A).await, 200);
    gw.shutdown().await;
}

/// Controls below the team (#42, first part): a key's allow-list of families and its price
/// ceiling, checked on the family as routing resolved it (no spelling of the path gets around
/// it, the quote route included) and on the price the hold would take, before anything is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_families_and_price_ceiling_hold_on_every_route_to_them() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&admin_config(platform.addr)).await;
    let c = client();
    let (key, key_id) = onboard(
        &c,
        &gw,
        "thumbs",
        json!({ "generations_per_minute": 100 }),
        json!({ "label": "thumbnails", "families": ["sora"], "max_price": "0.12" }),
    )
    .await;
    let shown = admin(&c, &gw, Method::GET, "/admin/tenants/thumbs", Value::Null).await.json();
    assert_eq!(
        (shown["keys"][0]["families"].clone(), shown["keys"][0]["max_price"].clone()),
        (json!(["sora"]), json!("0.1200"))
    );
    // Within its limits: served.
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(&key), SORA).await.status, 201);
    // Another family, however the path is spelled, and its quote: 403, nothing forwarded.
    let veo = r#"{"prompt":"p","model":"veo-3-fast"}"#;
    let mut refused = 0;
    for path in ["/v1/veo/generate", "/v1/veo/generate/", "/v1/veo/quote", "//v1/veo/generate", "/v1/%76eo/generate"] {
        let r = post(&c, &gw.url(path), Some(&key), veo).await;
        assert!(r.status == 403 || r.status == 404, "{path}: {} {:?}", r.status, r.body);
        if r.status == 403 {
            assert_eq!(r.detail(), "This key may not use veo", "{path}");
            refused += 1;
        }
    }
    assert!(refused >= 2, "the generate and quote routes refuse by the allow-list (the rest are no route)");
    // Over its ceiling (a 15 s Sora holds 0.18): 403 naming both, quote and generate alike.
    for route in ["/v1/sora/generate", "/v1/sora/quote"] {
        let r = post(&c, &gw.url(route), Some(&key), r#"{"prompt":"p","duration":15}"#).await;
        assert_eq!(
            (r.status.as_u16(), r.detail().as_str()),
            (403, "Price 0.1800 is over this key's limit of 0.1200 per generation")
        );
    }
    assert_eq!(platform.generate_calls(), 1, "only the generate within the key's limits was forwarded");
    // Lifted with PATCH: the 15 s generate goes through; an unknown family is a 422.
    let r =
        admin(&c, &gw, Method::PATCH, &format!("/admin/tenants/thumbs/keys/{key_id}"), json!({ "max_price": null }))
            .await;
    assert_eq!((r.status.as_u16(), r.json()["max_price"].clone()), (200, Value::Null), "{:?}", r.body);
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(&key), r#"{"prompt":"p","duration":15}"#).await.status, 201);
    let r =
        admin(&c, &gw, Method::PATCH, &format!("/admin/tenants/thumbs/keys/{key_id}"), json!({ "families": ["nope"] }))
            .await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(r.detail().starts_with("families:"), "{}", r.detail());
    gw.shutdown().await;
}
