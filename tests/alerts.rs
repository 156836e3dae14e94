//! Budget and balance alerts (SPEC §14): signed POSTs from the durable outbox, once per tenant,
//! month and threshold across replicas, retried while the receiver is down.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

fn alerts_config(platform: std::net::SocketAddr, receiver: std::net::SocketAddr, budget: &str, extra: &str) -> String {
    let tenants =
        format!("{}{}", tenant("a", KEY_A, 1000, 1000, 1000, Some(budget)), tenant("b", KEY_B, 1000, 1000, 1000, None));
    config_text(platform, "admin_token_env = \"TEST_ADMIN_TOKEN\"", &tenants).replace(
        "[pricing]",
        &format!("[alerts]\nurl = \"http://{receiver}/alerts\"\nsecret_env = \"TEST_WEBHOOK_SECRET\"\nthresholds = [0.5, 1.0]\nallow_http_loopback = true\nretry_base_ms = 300\n{extra}\n\n[pricing]"),
    )
}

fn bodies(rx: &Receiver) -> Vec<Value> {
    rx.accepted().iter().map(|r| serde_json::from_slice(&r.body).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_of_0_24_with_two_thresholds_gets_exactly_two_signed_alerts() {
    let platform = Platform::start().await;
    let rx = Receiver::start().await;
    let gw = TestGateway::start(&alerts_config(platform.addr, rx.addr, "0.24", "")).await;
    let c = client();
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    until(Duration::from_secs(5), "the 50 % alert", || async { rx.accepted().len() == 1 }).await;
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    until(Duration::from_secs(5), "the 100 % alert", || async { rx.accepted().len() == 2 }).await;
    // Refused requests and more time add nothing.
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 402);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got = bodies(&rx);
    assert_eq!(got.len(), 2, "{got:?}");
    let month = tollgate::store::month_of(tollgate::store::now_ms());
    for (alert, threshold, spent) in [(&got[0], 0.5, "0.1200"), (&got[1], 1.0, "0.2400")] {
        assert_eq!(alert["type"], "budget.threshold");
        assert_eq!((alert["tenant"].as_str(), alert["month"].as_str()), (Some("a"), Some(month.as_str())));
        assert_eq!(
            (alert["threshold"].as_f64(), alert["spent"].as_str(), alert["budget"].as_str()),
            (Some(threshold), Some(spent), Some("0.2400"))
        );
    }
    for r in rx.accepted() {
        assert!(verify_signature(WEBHOOK_SECRET, &r), "an alert must verify with the alert secret");
        assert!(!verify_signature("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", &r));
    }
    let metrics = get(&c, &gw.admin_url("/metrics"), None).await;
    assert!(String::from_utf8_lossy(&metrics.body).contains("tollgate_alerts_total{kind=\"budget.threshold\"} 2"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_redis_send_each_alert_once() {
    let platform = Platform::start().await;
    let rx = Receiver::start().await;
    let (text, _redis) = with_backend(&alerts_config(platform.addr, rx.addr, "0.24", ""), Backend::Redis);
    let (one, two) = (TestGateway::start(&text).await, TestGateway::start(&text).await);
    let c = client();
    assert_eq!(post(&c, &one.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    assert_eq!(post(&c, &two.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    until(Duration::from_secs(5), "both alerts", || async { rx.accepted().len() >= 2 }).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Two replicas send, each on its own worker: the order of arrival is free.
    let mut thresholds: Vec<f64> = bodies(&rx).iter().map(|a| a["threshold"].as_f64().unwrap()).collect();
    thresholds.sort_by(f64::total_cmp);
    assert_eq!(thresholds, [0.5, 1.0], "each threshold once, from whichever replica saw it first");
    // Either replica's dashboard shows both as sent.
    let overview = dashboard_page(&c, &two, "admin-secret-for-tests-0123456789abcdef", "/dashboard").await;
    let row = &overview[overview.find("data-tenant=\"a\"").unwrap()..];
    assert!(row[..row.find("</tr>").unwrap()].contains("<td data-col=\"alerts\">50 %, 100 %</td>"), "{row}");
    let page = dashboard_page(&c, &one, "admin-secret-for-tests-0123456789abcdef", "/dashboard/tenants/a").await;
    assert!(page.contains("data-figure=\"alerts\">50 %, 100 %<"), "{page}");
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_gets_the_alert_later_and_a_low_balance_alerts_once() {
    let platform = Platform::with_balance("0.50").await;
    let rx = Receiver::start().await;
    rx.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let gw = TestGateway::start(&alerts_config(platform.addr, rx.addr, "100", "balance_below = \"1.00\"")).await;
    until(Duration::from_secs(5), "an attempt while down", || async { !rx.got.lock().unwrap().is_empty() }).await;
    assert!(rx.accepted().is_empty());
    rx.down.store(false, std::sync::atomic::Ordering::SeqCst);
    until(Duration::from_secs(10), "the retried alert", || async { !rx.accepted().is_empty() }).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got = bodies(&rx);
    assert_eq!(got.len(), 1, "one alert per fall below the floor: {got:?}");
    assert_eq!(
        (got[0]["type"].as_str(), got[0]["balance"].as_str(), got[0]["balance_below"].as_str()),
        (Some("balance.low"), Some("0.5000"), Some("1.0000"))
    );
    // Budgets (100) above the balance (0.50): the gauge says so.
    let metrics = get(&client(), &gw.admin_url("/metrics"), None).await;
    assert!(String::from_utf8_lossy(&metrics.body).contains("tollgate_budgets_over_balance 1"));
    gw.shutdown().await;
}

/// Without `[alerts]` an operator still learns that the budgets handed out exceed the balance:
/// the gauge (and a warning line, which goes to the diagnostic log this harness does not keep).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_over_the_balance_warn_without_alerts_configured() {
    let platform = Platform::with_balance("0.50").await;
    let tenants = format!(
        "{}{}",
        tenant("a", KEY_A, 1000, 1000, 1000, Some("0.40")),
        tenant("b", KEY_B, 1000, 1000, 1000, Some("0.40"))
    );
    let gw = TestGateway::start(&config_text(platform.addr, "", &tenants)).await;
    let c = client();
    // The balance is read on the first paid request.
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    until(Duration::from_secs(5), "the gauge", || async {
        String::from_utf8_lossy(&get(&c, &gw.admin_url("/metrics"), None).await.body)
            .contains("tollgate_budgets_over_balance 1")
    })
    .await;
    gw.shutdown().await;
}
