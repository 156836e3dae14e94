//! A failed request explained from its own access line, and gauges that never say "empty
//! account" when the truth is "wrong token" (over real sockets).

mod support;

use support::*;

fn metrics_of(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .map(|l| l[name.len() + 1..].to_string())
}

#[tokio::test]
async fn a_rejected_platform_token_is_named_in_the_access_line_and_the_gauges() {
    let platform = Platform::start().await;
    let text = config_text(platform.addr, "", &default_tenants());
    let mut env = env();
    env.insert("TEST_PLATFORM_TOKEN".into(), "not-the-platform-token".into());
    let config = tollgate::config::Config::from_toml(&text, &env).unwrap();
    let gw = TestGateway::start_config(config, None).await;
    let c = client();
    // Before any balance is read the gauge is NaN, never a 0 that reads as an empty account.
    let m = String::from_utf8_lossy(&get(&c, &gw.admin_url("/metrics"), None).await.body).into_owned();
    assert_eq!(metrics_of(&m, "tollgate_account_balance_usd").as_deref(), Some("NaN"), "{m}");
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (500, "Upstream authentication failed"));
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    let line = gw.log_lines().into_iter().find(|l| l["request_id"] == id.as_str()).unwrap();
    assert_eq!(line["cause"], "token_rejected", "{line}");
    let m = String::from_utf8_lossy(&get(&c, &gw.admin_url("/metrics"), None).await.body).into_owned();
    assert_eq!(metrics_of(&m, "tollgate_upstream_token_rejected").as_deref(), Some("1"), "{m}");
    assert_eq!(metrics_of(&m, "tollgate_account_balance_usd").as_deref(), Some("NaN"), "{m}");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_platform_is_named_in_the_access_line() {
    let text = config_text(dead_addr().await, "", &default_tenants());
    let gw = TestGateway::start(&text).await;
    let c = client();
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!(r.status, 503);
    let line = gw.log_lines().into_iter().last().unwrap();
    assert_eq!(line["cause"], "connect_refused", "{line}");
    // Success lines carry no cause.
    let platform = Platform::start().await;
    let gw2 = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    assert_eq!(post(&c, &gw2.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    assert!(gw2.log_lines()[0].get("cause").is_none());
    let m = String::from_utf8_lossy(&get(&c, &gw2.admin_url("/metrics"), None).await.body).into_owned();
    assert_eq!(metrics_of(&m, "tollgate_upstream_token_rejected").as_deref(), Some("0"), "{m}");
    gw.shutdown().await;
    gw2.shutdown().await;
}

/// Which families this gateway offers is told to tenants, never to anonymous clients.
#[tokio::test]
async fn unauthenticated_requests_learn_nothing_about_the_enabled_families() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let anon = post(&c, &gw.url("/v1/kling/generate"), None, r#"{"prompt":"p"}"#).await;
    assert_eq!((anon.status.as_u16(), anon.detail().as_str()), (401, "Missing credentials"));
    let wrong = post(&c, &gw.url("/v1/kling/generate"), Some("nope"), r#"{"prompt":"p"}"#).await;
    assert_eq!((wrong.status.as_u16(), wrong.detail().as_str()), (401, "Invalid credentials"));
    let tenant = post(&c, &gw.url("/v1/kling/generate"), Some(KEY_A), r#"{"prompt":"p"}"#).await;
    assert_eq!(tenant.status, 404);
    assert!(tenant.detail().contains("is not enabled on this gateway (enabled: "), "{}", tenant.detail());
    gw.shutdown().await;
}
