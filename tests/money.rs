//! Money and isolation over real sockets: holds under concurrency, budgets, the balance cache,
//! ownership of generations, refunds and idempotency.

mod support;

use std::time::Duration;

use http::Method;
use support::*;

#[tokio::test]
async fn fifty_concurrent_generates_at_a_balance_for_seven() {
    let platform = Platform::with_balance("0.84").await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (c, url) = (c.clone(), gw.url("/v1/sora/generate"));
            let key = if i % 2 == 0 { KEY_A } else { KEY_B };
            tokio::spawn(async move { post(&c, &url, Some(key), SORA).await })
        })
        .collect();
    let (mut created, mut refused) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            201 => created += 1,
            402 => {
                assert_eq!(r.detail(), "INSUFFICIENT_CREDITS");
                refused += 1;
            }
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    assert_eq!((created, refused), (7, 43));
    assert_eq!(platform.generate_calls(), 7, "exactly seven forwarded");
    assert_eq!(platform.mock.balance(), usd("0"));
    gw.shutdown().await;
}

#[tokio::test]
async fn balance_is_fetched_once_per_ttl_under_200_concurrent_requests() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    // A slow balance endpoint makes every request wait on the same fetch.
    platform.delay("/v1/data/balance", 300, 1);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (c, base) = (c.clone(), gw.addr);
            tokio::spawn(async move {
                if i % 4 == 0 {
                    post(&c, &format!("http://{base}/v1/sora/generate"), Some(KEY_A), SORA).await.status.as_u16()
                } else {
                    get(&c, &format!("http://{base}/v1/data/balance"), Some(KEY_B)).await.status.as_u16()
                }
            })
        })
        .collect();
    for t in tasks {
        let s = t.await.unwrap();
        assert!(s == 200 || s == 201, "{s}");
    }
    assert_eq!(platform.balance_calls(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn balance_is_refetched_after_the_ttl() {
    let platform = Platform::start().await;
    let text = config_text(platform.addr, "", &default_tenants()).replace("cache_ttl_ms = 60000", "cache_ttl_ms = 200");
    let gw = TestGateway::start(&text).await;
    let c = client();
    get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await;
    get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await;
    assert_eq!(platform.balance_calls(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await;
    assert_eq!(platform.balance_calls(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn tenant_budget_is_enforced_without_calling_the_platform() {
    let platform = Platform::start().await;
    let tenants =
        format!("{}{}", tenant("a", KEY_A, 1000, 1000, 1000, Some("0.30")), tenant("b", KEY_B, 1000, 1000, 1000, None));
    let gw = TestGateway::start(&config_text(platform.addr, "", &tenants)).await;
    let c = client();
    create(&c, &gw, KEY_A).await;
    create(&c, &gw, KEY_A).await; // 0.24 spent
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (402, "BUDGET_EXCEEDED"));
    assert_eq!(platform.generate_calls(), 2);
    // What a can still spend: budget 0.30 − 0.24.
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await.json()["balance"], "0.0600");
    // Another tenant is not affected.
    create(&c, &gw, KEY_B).await;
    assert_eq!(gw.log_lines().iter().filter(|l| l["outcome"] == "budget_exceeded").count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn account_balance_is_enforced_and_reported_per_tenant() {
    let platform = Platform::with_balance("1.00").await;
    let text = config_text(
        platform.addr,
        "",
        &format!(
            "{}{}",
            tenant("a", KEY_A, 1000, 1000, 1000, Some("0.50")),
            tenant("b", KEY_B, 1000, 1000, 1000, None)
        ),
    )
    .replace("[balance]\n", "[balance]\nreserve = \"0.10\"\n");
    let gw = TestGateway::start(&text).await;
    let c = client();
    // a: min(1.00 − 0.10, 0.50); b: 1.00 − 0.10.
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await.json()["balance"], "0.5000");
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_B)).await.json()["balance"], "0.9000");
    for _ in 0..7 {
        create(&c, &gw, KEY_B).await;
    }
    // 0.90 − 7 × 0.12 = 0.06 left above the reserve.
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_B)).await.json()["balance"], "0.0600");
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_B), SORA).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (402, "INSUFFICIENT_CREDITS"));
    assert_eq!(platform.generate_calls(), 7);
    gw.shutdown().await;
}

#[tokio::test]
async fn settles_at_the_charged_price_not_the_estimate() {
    let platform = Platform::start().await;
    // The config prices Sora 15 s at 0.18, but a table miss would hold the max; the platform
    // charges what it charges.
    let text = config_text(platform.addr, "", &default_tenants())
        .replace(r#"sora = { "10" = "0.12", "15" = "0.18" }"#, r#"sora = { "10" = "0.50" }"#);
    let gw = TestGateway::start(&text).await;
    let c = client();
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["price"], "0.1200");
    let line = gw.log_lines().pop().unwrap();
    assert_eq!(line["price"], "0.1200");
    let spend =
        gw.gateway.store().spend_by_tenant(&tollgate::store::month_of(tollgate::store::now_ms())).await.unwrap();
    assert_eq!(spend, vec![(std::sync::Arc::from("a"), usd("0.12"))]);
    gw.shutdown().await;
}

#[tokio::test]
async fn foreign_generations_are_404_without_asking_the_platform() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let id = create(&c, &gw, KEY_A).await;
    let before = platform.forwarded().len();
    for path in [
        format!("/v1/sora/generations/{id}/"),
        format!("/v1/sora/generations/{id}"),
        format!("/v1/veo/generations/{id}"),
    ] {
        let r = get(&c, &gw.url(&path), Some(KEY_B)).await;
        assert_eq!((r.status.as_u16(), r.detail().as_str()), (404, "Generation not found"), "{path}");
    }
    // Unknown ids, and the owner asking under another family, are 404 too.
    let r = get(&c, &gw.url("/v1/sora/generations/00000000-0000-0000-0000-000000000000/"), Some(KEY_A)).await;
    assert_eq!(r.detail(), "Generation not found");
    assert_eq!(get(&c, &gw.url(&format!("/v1/veo/generations/{id}")), Some(KEY_A)).await.status, 404);
    assert_eq!(platform.forwarded().len(), before, "the platform was never asked");
    assert_eq!(get(&c, &gw.url(&format!("/v1/sora/generations/{id}/")), Some(KEY_A)).await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn lists_show_only_the_tenants_own_generations() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let mut mine = Vec::new();
    for i in 0..3 {
        mine.push(create(&c, &gw, KEY_A).await);
        let theirs = create(&c, &gw, KEY_B).await;
        assert_ne!(mine[i], theirs);
        // Lists are ordered by creation time in milliseconds, equal times by id (the store
        // contract); an optimised build creates several generations within one millisecond.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let r = get(&c, &gw.url("/v1/sora/generations"), Some(KEY_A)).await;
    assert_eq!(r.status, 200);
    let ids: Vec<String> =
        r.json().as_array().unwrap().iter().map(|g| g["generation_id"].as_str().unwrap().to_string()).collect();
    mine.reverse();
    assert_eq!(ids, mine, "own generations, newest first");
    let r = get(&c, &gw.url("/v1/sora/generations?limit=1&offset=1"), Some(KEY_A)).await;
    let page = r.json();
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["generation_id"], mine[1].as_str());
    assert_eq!(page[0]["status"], "pending");
    let r = get(&c, &gw.url("/v1/sora/generations?limit=0"), Some(KEY_A)).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (422, "limit: must be an integer from 1 to 100"));
    // A list costs at most one platform call, never one per generation.
    let before = platform.forwarded().len();
    let r = get(&c, &gw.url("/v1/sora/generations?limit=100"), Some(KEY_A)).await;
    assert_eq!(r.json().as_array().unwrap().len(), 3);
    let calls: Vec<String> = platform.forwarded()[before..].iter().map(|r| r.path.clone()).collect();
    assert_eq!(calls, vec!["/v1/sora/generations?limit=100".to_string()], "one list call");
    // The platform's list failing does not fail the tenant's: it answers from the records.
    let mut f = platform.fault(FaultKind::Status);
    f.status = Some(503);
    f.path_prefix = Some("/v1/sora/generations?".into());
    f.times = Some(10);
    platform.inject(f);
    let r = get(&c, &gw.url("/v1/sora/generations"), Some(KEY_A)).await;
    assert_eq!(r.status, 200);
    let page = r.json();
    assert_eq!(page.as_array().unwrap().len(), 3);
    assert_eq!(
        (page[0]["generation_id"].as_str(), page[0]["status"].as_str()),
        (Some(mine[0].as_str()), Some("pending"))
    );
    assert_eq!(get(&c, &gw.url("/v1/gemini/generations"), Some(KEY_A)).await.json(), serde_json::json!([]));
    gw.shutdown().await;
}

#[tokio::test]
async fn failed_generations_are_credited_back_to_the_month() {
    let platform = Platform::with(MockOptions {
        token: Some(TOKEN.into()),
        balance: usd("10"),
        step: Duration::from_millis(50),
        random_fault: None,
        record: true,
        echo_callback_url: false,
    })
    .await;
    let tenants = tenant("a", KEY_A, 1000, 1000, 1000, Some("0.20"));
    let gw = TestGateway::start(&config_text(platform.addr, "", &tenants)).await;
    let c = client();
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), r#"{"prompt":"this one will [fail]"}"#).await;
    let id = r.json()["generation_id"].as_str().unwrap().to_string();
    // Budget 0.20 − 0.12 spent: another 0.12 does not fit.
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.detail(), "BUDGET_EXCEEDED");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = get(&c, &gw.url(&format!("/v1/sora/generations/{id}/")), Some(KEY_A)).await;
    assert_eq!(r.json()["status"], "failed");
    // Seen failed: refunded, so it fits again.
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    gw.shutdown().await;
}

#[tokio::test]
async fn idempotency_key_replays_conflicts_and_mismatches() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let with_key = |body: &str, key: &str, tenant_key: &str| {
        let mut r = request(Method::POST, &gw.url("/v1/sora/generate"), Some(tenant_key), body.to_string());
        r.headers_mut().insert("idempotency-key", key.parse().unwrap());
        r
    };
    // The first is slow, so a duplicate arrives while it runs.
    platform.delay("/v1/sora/generate", 500, 1);
    let first = tokio::spawn({
        let (c, req) = (c.clone(), with_key(SORA, "order-1", KEY_A));
        async move { send(&c, req).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let dup = send(&c, with_key(SORA, "order-1", KEY_A)).await;
    assert_eq!(
        (dup.status.as_u16(), dup.detail().as_str()),
        (409, "A request with this Idempotency-Key is still in progress")
    );
    let first = first.await.unwrap();
    assert_eq!(first.status, 201);
    // A repeat gets the first response, uncharged.
    let again = send(&c, with_key(SORA, "order-1", KEY_A)).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(platform.generate_calls(), 1);
    // Same key, other body: 422.
    let other = send(&c, with_key(r#"{"prompt":"something else"}"#, "order-1", KEY_A)).await;
    assert_eq!(
        (other.status.as_u16(), other.detail().as_str()),
        (422, "Idempotency-Key was already used with a different request body")
    );
    // Same key and body on another family is another request, not a replay of the Sora answer
    // (found by schemathesis: a Nano Banana 201 came back for a Sora generate).
    let mut r = request(Method::POST, &gw.url("/v1/gemini/generate"), Some(KEY_A), SORA.to_string());
    r.headers_mut().insert("idempotency-key", "order-1".parse().unwrap());
    let other = send(&c, r).await;
    // (Refused before the key is even looked at: `duration` is not a field of gemini.)
    assert_eq!(other.status, 422, "never the Sora answer replayed: {:?}", other.body);
    assert_eq!(platform.generate_calls(), 1);
    // Keys are per tenant.
    assert_eq!(send(&c, with_key(SORA, "order-1", KEY_B)).await.status, 201);
    assert_eq!(platform.generate_calls(), 2);
    let spend =
        gw.gateway.store().spend_by_tenant(&tollgate::store::month_of(tollgate::store::now_ms())).await.unwrap();
    assert!(spend.contains(&(std::sync::Arc::from("a"), usd("0.12"))), "{spend:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_refused_request_does_not_burn_its_idempotency_key() {
    let platform = Platform::with_balance("0.10").await;
    let text = config_text(platform.addr, "", &default_tenants()).replace("cache_ttl_ms = 60000", "cache_ttl_ms = 200");
    let gw = TestGateway::start(&text).await;
    let c = client();
    let req = || {
        let mut r = request(Method::POST, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA);
        r.headers_mut().insert("idempotency-key", "k".parse().unwrap());
        r
    };
    assert_eq!(send(&c, req()).await.status, 402);
    platform.mock.set_balance(usd("1.00"));
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Nothing was charged, so the same key runs afresh once the balance allows.
    assert_eq!(send(&c, req()).await.status, 201);
    assert_eq!(platform.generate_calls(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn errors_release_holds_and_unknown_outcomes_stay_counted_until_reconciled() {
    let platform = Platform::with_balance("0.12").await;
    let text = fast_reconcile(
        &config_text(platform.addr, "", &default_tenants()).replace("cache_ttl_ms = 60000", "cache_ttl_ms = 500"),
        3,
        500,
    );
    let gw = TestGateway::start(&text).await;
    let c = client();
    // A platform error releases the hold: the same money is available again at once.
    let mut f = platform.fault(FaultKind::Status);
    f.status = Some(500);
    f.path_prefix = Some("/v1/sora/generate".into());
    platform.inject(f);
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 500);
    let mut f = platform.fault(FaultKind::Reset);
    f.path_prefix = Some("/v1/sora/generate".into());
    // A reset after sending is "outcome unknown" …
    platform.inject(f);
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 503);
    assert_eq!(gw.gateway.store().hold_totals().await.unwrap().unknown, 1);
    // … so the money stays counted as spent, also through balance refetches …
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.detail(), "INSUFFICIENT_CREDITS");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.detail(), "INSUFFICIENT_CREDITS");
    // … until the reconciler finds no such generation on the platform and releases it.
    let store = gw.gateway.store().clone();
    until(Duration::from_secs(8), "unknown outcome released", || {
        let store = store.clone();
        async move { store.hold_totals().await.unwrap().unknown == 0 }
    })
    .await;
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    assert_eq!(gw.gateway.store().hold_totals().await.unwrap().open, 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_timeout_on_generate_is_503_and_holds_as_unknown() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    platform.delay("/v1/sora/generate", 3000, 1);
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (503, "Upstream timed out"));
    assert_eq!(platform.generate_calls(), 1, "a paid POST is never retried");
    let totals = gw.gateway.store().hold_totals().await.unwrap();
    assert_eq!((totals.open, totals.unknown), (0, 1));
    gw.shutdown().await;
}

#[tokio::test]
async fn status_polls_are_coalesced_and_cached_per_generation() {
    let platform = Platform::start().await;
    let text =
        config_text(platform.addr, "", &default_tenants()).replace("status_cache_ms = 0", "status_cache_ms = 300");
    let gw = TestGateway::start(&text).await;
    let c = client();
    let id = create(&c, &gw, KEY_A).await;
    let path = format!("/v1/sora/generations/{id}/");
    // A slow platform answer: 64 concurrent polls wait for one call.
    platform.delay("/v1/sora/generations/", 200, 1);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (c, url) = (c.clone(), gw.url(&path));
            tokio::spawn(async move { get(&c, &url, Some(KEY_A)).await })
        })
        .collect();
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        bodies.insert(r.body);
    }
    assert_eq!(bodies.len(), 1, "everyone got the same answer");
    assert_eq!(platform.requests_to("/v1/sora/generations/").len(), 1);
    let lines = gw.log_lines();
    assert_eq!(lines.iter().filter(|l| l["outcome"] == "cached").count(), 63);
    // Ownership is checked before the cache: another tenant still gets 404.
    assert_eq!(get(&c, &gw.url(&path), Some(KEY_B)).await.detail(), "Generation not found");
    // After the TTL the platform is asked again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(get(&c, &gw.url(&path), Some(KEY_A)).await.status, 200);
    assert_eq!(platform.requests_to("/v1/sora/generations/").len(), 2);
    gw.shutdown().await;
}
