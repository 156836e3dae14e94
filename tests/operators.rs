//! What operators and team leads ask of a running gateway: usage per tenant and month (admin
//! JSON and CSV, the tenant's own view), and families that are not offered.

mod support;

use std::time::Duration;

use http::Method;
use support::*;

#[tokio::test]
async fn usage_reports_match_a_known_ledger() {
    let platform = Platform::start().await;
    let tenants =
        format!("{}{}", tenant("a", KEY_A, 1000, 1000, 1000, Some("1.00")), tenant("b", KEY_B, 1000, 1000, 1000, None));
    let gw = TestGateway::start(&config_text(platform.addr, "admin_token_env = \"TEST_ADMIN_TOKEN\"", &tenants)).await;
    let c = client();
    // a: two generations, one that fails (and is refunded), one whose outcome is unknown.
    create(&c, &gw, KEY_A).await;
    create(&c, &gw, KEY_A).await;
    let failed = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), r#"{"prompt": "[fail] x"}"#).await.json()
        ["generation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut f = platform.fault(FaultKind::LateAnswer);
    f.latency_ms = Some(2500);
    f.path_prefix = Some("/v1/sora/generate".into());
    platform.inject(f);
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 503);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        get(&c, &gw.url(&format!("/v1/sora/generations/{failed}/")), Some(KEY_A)).await.json()["status"],
        "failed"
    );
    // b: one generation.
    create(&c, &gw, KEY_B).await;

    let month = tollgate::store::month_of(tollgate::store::now_ms());
    let admin = |path: &str, accept: &str| {
        let mut r = request(Method::GET, &gw.admin_url(path), None, "");
        r.headers_mut().insert("authorization", "Bearer admin-secret-for-tests-0123456789abcdef".parse().unwrap());
        r.headers_mut().insert("accept", accept.parse().unwrap());
        r
    };
    let r = send(&c, admin(&format!("/admin/usage?month={month}"), "application/json")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json();
    let a = v["tenants"].as_array().unwrap().iter().find(|t| t["tenant"] == "a").unwrap().clone();
    assert_eq!(a["budget"], "1.0000");
    assert_eq!(a["spent"], "0.2400");
    assert_eq!(a["refunded"], "0.1200");
    assert_eq!(a["unknown"], "0.1200");
    assert_eq!(a["held"], "0.0000");
    assert_eq!(a["remaining"], "0.6400");
    assert_eq!(a["generations"]["sora"]["failed"], 1);
    assert_eq!(a["generations"]["sora"]["pending"], 2);
    let b = v["tenants"].as_array().unwrap().iter().find(|t| t["tenant"] == "b").unwrap().clone();
    assert_eq!((b["spent"].as_str(), b["budget"].is_null()), (Some("0.1200"), true));
    // One tenant, as CSV: one row per generation.
    let r = send(&c, admin(&format!("/admin/usage?month={month}&tenant=a"), "text/csv")).await;
    assert_eq!(r.headers["content-type"], "text/csv; charset=utf-8");
    let csv = String::from_utf8_lossy(&r.body).into_owned();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "time,tenant,family,generation_id,status,price");
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines.iter().any(|l| l.contains(&failed) && l.ends_with(",failed,0.1200")), "{csv}");
    assert_eq!(send(&c, admin("/admin/usage?month=2026-13", "application/json")).await.status, 400);
    let mut unauth = admin("/admin/usage", "application/json");
    unauth.headers_mut().remove("authorization");
    assert_eq!(send(&c, unauth).await.status, 401);

    // The tenant's own view: its figures only, and when the budget resets.
    let mine = get(&c, &gw.url("/v1/gateway/usage"), Some(KEY_A)).await.json();
    assert_eq!(mine["tenant"], "a");
    assert_eq!(
        (mine["spent"].as_str(), mine["held"].as_str(), mine["remaining"].as_str()),
        (Some("0.2400"), Some("0.1200"), Some("0.6400"))
    );
    assert!(mine["resets_at"].as_str().unwrap().ends_with("-01T00:00:00Z"));
    assert_eq!(mine["limits"]["generations_per_minute"], 1000);
    // The account's balance moves with every team's spend: hidden unless the operator opts in.
    assert!(mine["account_available"].is_null(), "{mine}");
    assert_eq!(get(&c, &gw.url("/v1/gateway/usage"), Some(KEY_B)).await.json()["tenant"], "b");
    // Both reads take a trailing slash, as the generation paths do.
    assert_eq!(get(&c, &gw.url("/v1/gateway/usage/"), Some(KEY_B)).await.json()["tenant"], "b");
    assert_eq!(get(&c, &gw.url("/v1/data/balance/"), Some(KEY_B)).await.status, 200);

    let metrics = String::from_utf8_lossy(&get(&c, &gw.admin_url("/metrics"), None).await.body).into_owned();
    assert!(metrics.contains(r#"tollgate_budget_usd{tenant="a"} 1"#), "{metrics}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_family_without_a_price_is_not_offered_and_never_a_500() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let r = post(&c, &gw.url("/v1/seedance/generate"), Some(KEY_A), r#"{"prompt": "x"}"#).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.detail(),
        "Model family seedance is not enabled on this gateway (enabled: gemini, kling/o1-photo, sora, veo)"
    );
    assert_eq!(get(&c, &gw.url("/v1/seedance/generations/abc"), Some(KEY_A)).await.status, 404);
    assert_eq!(platform.generate_calls(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn refusals_say_what_to_do() {
    let platform = Platform::start().await;
    let tenants =
        format!("{}{}", tenant("a", KEY_A, 1000, 1000, 1000, Some("0.20")), tenant("b", KEY_B, 1000, 1000, 1, None));
    let gw = TestGateway::start(
        &config_text(platform.addr, "", &tenants).replace("cache_ttl_ms = 60000", "cache_ttl_ms = 200"),
    )
    .await;
    let c = client();
    create(&c, &gw, KEY_A).await;
    // The budget's detail stays the platform's string; headers say what is left and when it resets.
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (402, "BUDGET_EXCEEDED"));
    assert_eq!(r.headers["x-budget-remaining"], "0.0800");
    assert!(r.headers["x-budget-resets-at"].to_str().unwrap().ends_with("-01T00:00:00Z"));
    // Another scheme than Bearer is named.
    let mut req = request(http::Method::GET, &gw.url("/v1/data/balance"), None, "");
    req.headers_mut().insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    assert_eq!(send(&c, req).await.detail(), "Missing credentials: use Authorization: Bearer <key>");
    // A 402 does not use up a generation slot (b may make 1 a minute).
    platform.mock.set_balance(usd("0"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_B), SORA).await;
    assert_eq!(r.detail(), "INSUFFICIENT_CREDITS");
    platform.mock.set_balance(usd("10"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_B), SORA).await.status, 201);
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_B), SORA).await.status, 429);
    gw.shutdown().await;
}

/// A generation the platform refused for capacity (503) never reached its quota: the tenant's
/// generation slot is given back, on the in-process limiter and on the shared one alike.
async fn platform_503_gives_the_generation_slot_back(backend: Backend) {
    let platform = Platform::start().await;
    let tenants = format!("{}{}", tenant("a", KEY_A, 1000, 1000, 1000, None), tenant("b", KEY_B, 1000, 1000, 1, None));
    let (text, _redis) = with_backend(&config_text(platform.addr, "", &tenants), backend);
    let gw = TestGateway::start(&text).await;
    let c = client();
    let mut f = platform.fault(FaultKind::Status);
    f.status = Some(503);
    f.path_prefix = Some("/v1/sora/generate".into());
    f.times = Some(2);
    platform.inject(f);
    for _ in 0..2 {
        assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_B), SORA).await.status, 503);
    }
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_B), SORA).await.status, 201);
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_B), SORA).await;
    assert_eq!(r.status, 429, "one generation a minute, and it was used: {}", r.detail());
    assert_eq!(platform.generate_calls(), 3);
    gw.shutdown().await;
}

#[tokio::test]
async fn platform_503_gives_the_generation_slot_back_in_memory() {
    platform_503_gives_the_generation_slot_back(Backend::Memory).await;
}

#[tokio::test]
async fn platform_503_gives_the_generation_slot_back_on_redis() {
    platform_503_gives_the_generation_slot_back(Backend::Redis).await;
}
