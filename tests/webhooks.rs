//! Webhook relay end to end (SPEC §8): a tenant receiver on loopback, a generate with
//! `callback_url`, the simulated platform calling back when the generation finishes, and the
//! gateway relaying it signed. Failure paths: a receiver that is down, a restart with deliveries
//! pending, two replicas on Redis, forged tokens, and a failed generation's refund.

mod support;

use std::time::Duration;

use support::*;

fn relay_config(platform: std::net::SocketAddr, server_extra: &str, budget: Option<&str>) -> String {
    let tenants =
        format!("{}{}", tenant("a", KEY_A, 1000, 1000, 1000, budget), tenant("b", KEY_B, 1000, 1000, 1000, None))
            .replacen(
                "generations_per_minute = 1000\n",
                "generations_per_minute = 1000\nwebhook_secret_env = \"TEST_WEBHOOK_SECRET\"\n",
                1,
            );
    let text = config_text(platform, server_extra, &tenants);
    text.replace(
        "[pricing]",
        "[webhooks]\npublic_base_url = \"http://{addr}\"\nallow_http_loopback = true\nretry_base_ms = 300\nattempt_timeout_ms = 2000\n\n[pricing]",
    )
}

fn with_callback(url: &str, prompt: &str) -> String {
    format!(r#"{{"prompt": "{prompt}", "callback_url": "{url}"}}"#)
}

async fn wait_accepted(rx: &Receiver, n: usize, within: Duration) {
    let until = tokio::time::Instant::now() + within;
    while rx.accepted().len() < n {
        assert!(tokio::time::Instant::now() < until, "{} of {n} webhooks delivered", rx.accepted().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn webhooks_are_relayed_signed_and_byte_for_byte() {
    let platform = Platform::start().await;
    let gw = TestGateway::start_templated(&relay_config(platform.addr, "", None)).await;
    let rx = Receiver::start().await;
    let c = client();
    const N: usize = 20;
    for i in 0..N {
        let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &with_callback(&rx.url(), &format!("sunset {i}")))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    wait_accepted(&rx, N, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = rx.accepted();
    assert_eq!(got.len(), N, "each delivered once");
    let sent = platform.mock.webhooks_sent();
    // The platform never saw the tenant's URL: it called the gateway.
    assert!(
        sent.iter().all(|(url, ..)| url.starts_with(&gw.url("/webhooks/runblob/"))),
        "{:?}",
        sent.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    let mut latencies = Vec::new();
    for r in &got {
        assert!(verify_signature(WEBHOOK_SECRET, r), "signature must verify with the tenant's secret");
        assert!(!verify_signature("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", r));
        assert!(r.headers["webhook-id"].to_str().unwrap().starts_with("msg_"));
        let (_, body, _, at) = sent.iter().find(|(_, b, ..)| *b == r.body).expect("the platform's body, byte for byte");
        assert_eq!(body, &r.body);
        latencies.push(r.at.duration_since(*at));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["status"], "completed");
    }
    latencies.sort();
    eprintln!(
        "webhook relay latency, platform POST → tenant receipt, {N} deliveries: p50 {:?}, p99 {:?}",
        latencies[N / 2],
        latencies[N - 1]
    );
    let lines = gw.log_lines();
    assert_eq!(lines.iter().filter(|l| l["route"] == "/webhooks/runblob/{token}" && l["status"] == 200).count(), N);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_the_webhook_once_it_is_back() {
    let platform = Platform::start().await;
    let gw = TestGateway::start_templated(&relay_config(platform.addr, "", None)).await;
    let rx = Receiver::start().await;
    rx.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let c = client();
    assert_eq!(
        post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &with_callback(&rx.url(), "a cat")).await.status,
        201
    );
    // Two refused attempts (300 ms, then 600 ms apart) …
    eventually(Duration::from_secs(10), || rx.got.lock().unwrap().len() >= 2).await;
    rx.down.store(false, std::sync::atomic::Ordering::SeqCst);
    // … then delivered, once, with the same webhook-id.
    wait_accepted(&rx, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = rx.got.lock().unwrap().clone();
    assert_eq!(rx.accepted().len(), 1);
    assert!(all.iter().all(|r| r.headers["webhook-id"] == all[0].headers["webhook-id"]));
    let metrics = String::from_utf8_lossy(&get(&c, &gw.admin_url("/metrics"), None).await.body).into_owned();
    assert!(metrics.contains(r#"tollgate_webhook_deliveries_total{tenant="a",result="delivered"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"tollgate_webhook_deliveries_total{tenant="a",result="retry"}"#));
    gw.shutdown().await;
}

#[tokio::test]
async fn deliveries_pending_at_a_restart_are_delivered_once_after_it() {
    let platform = Platform::start().await;
    let dir = std::env::temp_dir().join(format!("tollgate-wh-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = relay_config(platform.addr, "", None)
        .replace("backend = \"memory\"", &format!("backend = \"sqlite\"\npath = \"{}\"", dir.join("t.db").display()));
    let gw = TestGateway::start_templated(&text).await;
    let rx = Receiver::start().await;
    rx.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let c = client();
    assert_eq!(
        post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &with_callback(&rx.url(), "a dog")).await.status,
        201
    );
    eventually(Duration::from_secs(10), || !rx.got.lock().unwrap().is_empty()).await;
    gw.shutdown().await;
    assert!(rx.accepted().is_empty());
    rx.down.store(false, std::sync::atomic::Ordering::SeqCst);
    // A new process on the same database picks the delivery up.
    let gw = TestGateway::start_templated(&text).await;
    wait_accepted(&rx, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.accepted().len(), 1);
    assert!(verify_signature(WEBHOOK_SECRET, &rx.accepted()[0]));
    assert_eq!(gw.gateway.store().outbox_stats().await.unwrap().pending, 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn two_replicas_on_redis_deliver_each_webhook_once() {
    let redis = tollgate::dev::testkit::RedisServer::start();
    let platform = Platform::start().await;
    let text = relay_config(platform.addr, "", None)
        .replace("backend = \"memory\"", &format!("backend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"wh\"", redis.url));
    let a = TestGateway::start_templated(&text).await;
    let b = TestGateway::start_templated(&text).await;
    let rx = Receiver::start().await;
    let c = client();
    const N: usize = 12;
    for i in 0..N {
        let gw = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &with_callback(&rx.url(), &format!("replica {i}")))
                .await
                .status,
            201
        );
    }
    wait_accepted(&rx, N, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = rx.accepted();
    let ids: std::collections::HashSet<_> = got.iter().map(|r| r.headers["webhook-id"].clone()).collect();
    assert_eq!((got.len(), ids.len()), (N, N), "every webhook delivered exactly once");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn forged_or_unknown_tokens_are_404_and_record_nothing() {
    let platform = Platform::start().await;
    let gw = TestGateway::start_templated(&relay_config(platform.addr, "", None)).await;
    let c = client();
    for path in [
        "/webhooks/runblob/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "/webhooks/runblob/x",
        "/webhooks/runblob/../v1",
    ] {
        let r = post(&c, &gw.url(path), None, r#"{"generation_id":"g","status":"failed"}"#).await;
        assert_eq!(r.status, 404, "{path}");
    }
    let stats = gw.gateway.store().outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (0, 0));
    let metrics = String::from_utf8_lossy(&get(&c, &gw.admin_url("/metrics"), None).await.body).into_owned();
    assert!(metrics.contains(r#"tollgate_webhook_rejected_total{cause="unknown_token"} 2"#), "{metrics}");
    // A tenant URL the relay would not call is refused up front.
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &with_callback("https://10.0.0.7/hook", "x")).await;
    assert_eq!(
        (r.status.as_u16(), r.detail().as_str()),
        (422, "callback_url: must not point to a private, loopback or link-local address")
    );
    // Port 0 reaches nothing: refused before anything is charged (it was accepted and charged).
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &with_callback("https://example.com:0/h", "x")).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (422, "callback_url: must name a port from 1 to 65535"));
    // A tenant without a webhook secret cannot ask for callbacks.
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_B), &with_callback("http://127.0.0.1:9/hook", "x")).await;
    assert_eq!(r.status, 422);
    assert_eq!(platform.generate_calls(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_failed_webhook_refunds_once_even_when_a_poll_sees_the_failure_too() {
    let platform = Platform::start().await;
    let gw = TestGateway::start_templated(&fast_reconcile(&relay_config(platform.addr, "", Some("0.12")), 900, 10_000))
        .await;
    let rx = Receiver::start().await;
    let c = client();
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &with_callback(&rx.url(), "[fail] a face")).await;
    assert_eq!(r.status, 201);
    let id = r.json()["generation_id"].as_str().unwrap().to_string();
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.detail(), "BUDGET_EXCEEDED");
    wait_accepted(&rx, 1, Duration::from_secs(10)).await;
    // The webhook is a hint: the reconciler confirms the failure with the platform and refunds;
    // a poll sees `failed` as well and must not refund again.
    until(Duration::from_secs(10), "refund confirmed", || async { spend_of(&gw, "a").await == usd("0") }).await;
    assert_eq!(get(&c, &gw.url(&format!("/v1/sora/generations/{id}/")), Some(KEY_A)).await.json()["status"], "failed");
    assert_eq!(spend_of(&gw, "a").await, usd("0"));
    let metrics = String::from_utf8_lossy(&get(&c, &gw.admin_url("/metrics"), None).await.body).into_owned();
    assert!(metrics.contains(r#"tollgate_refunds_total{tenant="a"} 1"#), "{metrics}");
    // Refunded exactly once: one more generation fits the budget, a second does not.
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.detail(), "BUDGET_EXCEEDED");
    gw.shutdown().await;
}

#[tokio::test]
async fn undeliverable_webhooks_become_dead_letters_and_can_be_redriven() {
    let platform = Platform::start().await;
    let text = relay_config(platform.addr, "admin_token_env = \"TEST_ADMIN_TOKEN\"", None)
        .replace("retry_base_ms = 300", "retry_base_ms = 100\nmax_attempts = 2");
    let gw = TestGateway::start_templated(&text).await;
    let rx = Receiver::start().await;
    rx.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let c = client();
    assert_eq!(
        post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &with_callback(&rx.url(), "lost")).await.status,
        201
    );
    let store = gw.gateway.store().clone();
    until(Duration::from_secs(10), "dead letter", || {
        let store = store.clone();
        async move { store.outbox_stats().await.unwrap().dead == 1 }
    })
    .await;
    let metrics = String::from_utf8_lossy(&get(&c, &gw.admin_url("/metrics"), None).await.body).into_owned();
    assert!(metrics.contains("tollgate_webhook_dead_letters 1"), "{metrics}");
    rx.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut req = request(http::Method::POST, &gw.admin_url("/admin/webhooks/redeliver"), None, "");
    req.headers_mut().insert("authorization", "Bearer admin-secret-for-tests-0123456789abcdef".parse().unwrap());
    let r = send(&c, req).await;
    assert_eq!((r.status.as_u16(), r.json()["redelivering"].as_u64()), (200, Some(1)));
    wait_accepted(&rx, 1, Duration::from_secs(5)).await;
    until(Duration::from_secs(5), "outbox empty", || {
        let store = store.clone();
        async move { store.outbox_stats().await.unwrap() == tollgate::store::OutboxStats::default() }
    })
    .await;
    gw.shutdown().await;
}
