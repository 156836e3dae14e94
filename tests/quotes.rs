//! Quotes and in-flight caps (SPEC §14), over real sockets.

mod support;

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use serde_json::{json, Value};
use support::*;

fn quote_config(platform: std::net::SocketAddr, budget: &str) -> String {
    config_text(
        platform,
        "",
        &format!(
            "{}{}",
            tenant("a", KEY_A, 10_000, 10_000, 10_000, Some(budget)),
            tenant("b", KEY_B, 10_000, 10_000, 10_000, None)
        ),
    )
}

fn capped(platform: std::net::SocketAddr, cap: u32) -> String {
    config_text(
        platform,
        "",
        &format!(
            "{}\nmax_in_flight = {cap}\n\n{}",
            tenant("a", KEY_A, 10_000, 10_000, 10_000, None).trim_end(),
            tenant("b", KEY_B, 10_000, 10_000, 10_000, None)
        ),
    )
}

/// Bodies a tenant might send to Sora: valid ones of both durations, and ones the validation,
/// the catalog or the JSON parser refuses.
fn sora_body() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (prop_oneof![Just(10), Just(15)], "[a-z ]{1,40}").prop_map(|(d, p)| json!({ "prompt": p, "duration": d }).to_string()),
        1 => "[a-z ]{1,20}".prop_map(|p| json!({ "prompt": p, "duration": 12 }).to_string()),
        1 => Just(json!({ "duration": 10 }).to_string()),
        1 => "[a-z]{1,8}".prop_map(|f| json!({ "prompt": "x", "duration": 10, f: true }).to_string()),
        1 => Just("{\"prompt\": ".to_string()),
    ]
}

/// What a quote said and what the generate after it did must agree: the same refusal for a body
/// either refuses, the same price and verdict otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_says_what_the_generate_that_follows_does() {
    let platform = Platform::with_balance("2.00").await;
    let gw = TestGateway::start(&quote_config(platform.addr, "1.00")).await;
    let c = client();
    let mut runner = TestRunner::new(PropConfig { cases: 60, failure_persistence: None, ..PropConfig::default() });
    let bodies: Vec<String> = (0..60).map(|_| sora_body().new_tree(&mut runner).unwrap().current()).collect();
    let (mut admitted, mut refused) = (0, 0);
    for body in bodies {
        let q = post(&c, &gw.url("/v1/sora/quote"), Some(KEY_A), &body).await;
        let g = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &body).await;
        if q.status != 200 {
            assert_eq!(
                (q.status, q.detail()),
                (g.status, g.detail()),
                "the quote and the generate refuse {body} alike"
            );
            continue;
        }
        let quote = q.json();
        if quote["admitted"] == Value::Bool(true) {
            admitted += 1;
            assert_eq!(g.status, 201, "quoted admitted, generate refused: {body} {quote} {:?}", g.body);
            assert_eq!(g.json()["price"], quote["price"], "{body}");
        } else {
            refused += 1;
            assert_ne!(g.status, 201, "quoted refused, generate admitted: {body} {quote}");
            assert_eq!(Value::String(g.detail()), quote["detail"], "{body}");
        }
    }
    assert!(admitted > 0 && refused > 0, "the run covered both verdicts ({admitted} admitted, {refused} refused)");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_holds_and_forwards_nothing_and_reports_what_is_left() {
    let platform = Platform::with_balance("1.00").await;
    let opted_in =
        quote_config(platform.addr, "0.30").replace("[server]\n", "[server]\nexpose_account_balance = true\n");
    assert!(opted_in.contains("expose_account_balance"));
    let gw = TestGateway::start(&opted_in).await;
    let c = client();
    let q = post(&c, &gw.url("/v1/sora/quote"), Some(KEY_A), SORA).await;
    assert_eq!(q.status, 200, "{:?}", q.body);
    assert_eq!(
        q.json(),
        json!({ "price": "0.1200", "admitted": true, "detail": null, "budget_remaining": "0.3000", "account_available": "1.0000" })
    );
    assert_eq!(platform.generate_calls(), 0);
    for _ in 0..2 {
        assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    }
    let q = post(&c, &gw.url("/v1/sora/quote"), Some(KEY_A), SORA).await.json();
    assert_eq!(
        (q["admitted"].clone(), q["detail"].clone(), q["budget_remaining"].clone()),
        (json!(false), json!("BUDGET_EXCEEDED"), json!("0.0600"))
    );
    // Without a budget, the account is what limits.
    let q = post(&c, &gw.url("/v1/sora/quote"), Some(KEY_B), r#"{"prompt": "x", "duration": 15}"#).await.json();
    assert_eq!(
        (q["price"].clone(), q["admitted"].clone(), q["budget_remaining"].clone()),
        (json!("0.1800"), json!(true), Value::Null)
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_generates_at_once_with_a_cap_of_two() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&capped(platform.addr, 2)).await;
    let c = client();
    platform.delay("/v1/sora/generate", 800, 2);
    let sends: Vec<_> = (0..4)
        .map(|i| {
            let (c, url) = (c.clone(), gw.url("/v1/sora/generate"));
            tokio::spawn(async move {
                // The first two are in flight before the last two arrive.
                tokio::time::sleep(Duration::from_millis(if i < 2 { 0 } else { 300 })).await;
                post(&c, &url, Some(KEY_A), SORA).await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for s in sends {
        let r = s.await.unwrap();
        if r.status == 429 {
            assert_eq!(r.detail(), "Too many generations in progress for this tenant");
            assert!(r.headers.contains_key("retry-after"));
        }
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses, [201, 201, 429, 429]);
    // Another tenant is not capped by a's, and a's slots come back with the answers.
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_B), SORA).await.status, 201);
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    let q = post(&c, &gw.url("/v1/sora/quote"), Some(KEY_A), SORA).await.json();
    assert_eq!(q["admitted"], true);
    gw.shutdown().await;
}

/// A client that hangs up does not free its slot early: the request runs to its outcome in its
/// own task and holds the slot until the platform answers. A timeout frees it: the hold becomes
/// an unknown outcome (still counted as spent) and no request is waiting on the platform any
/// more, so keeping the slot would block the tenant until the reconciler decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_keeps_its_slot_until_answered_and_a_timeout_frees_it() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&capped(platform.addr, 1)).await;
    let c = client();
    platform.delay("/v1/sora/generate", 1200, 1);
    hang_up_after(gw.addr, "/v1/sora/generate", KEY_A, SORA, "", Duration::from_millis(200)).await;
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    let start = Instant::now();
    loop {
        let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
        if r.status == 201 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "the slot never came back: {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Longer than the upstream timeout (2 s): an unknown outcome.
    platform.delay("/v1/sora/generate", 3000, 1);
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(
        post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status,
        201,
        "an unknown outcome holds no slot"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_across_two_replicas_on_one_redis() {
    let platform = Platform::start().await;
    let (text, _redis) = with_backend(&capped(platform.addr, 2), Backend::Redis);
    let (one, two) = (TestGateway::start(&text).await, TestGateway::start(&text).await);
    let c = client();
    platform.delay("/v1/sora/generate", 1000, 2);
    let first: Vec<_> = (0..2)
        .map(|_| {
            let (c, url) = (c.clone(), one.url("/v1/sora/generate"));
            tokio::spawn(async move { post(&c, &url, Some(KEY_A), SORA).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = post(&c, &two.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (429, "Too many generations in progress for this tenant"));
    let q = post(&c, &two.url("/v1/sora/quote"), Some(KEY_A), SORA).await.json();
    assert_eq!(
        (q["admitted"].clone(), q["detail"].clone()),
        (json!(false), json!("Too many generations in progress for this tenant"))
    );
    for f in first {
        assert_eq!(f.await.unwrap().status, 201);
    }
    assert_eq!(post(&c, &two.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    one.shutdown().await;
    two.shutdown().await;
}

/// Before: every tenant, viewers included, read the account's balance (the other teams' spend,
/// live) in quotes and usage. Now only where the operator opts in.
#[tokio::test]
async fn the_account_balance_is_hidden_from_tenants_by_default() {
    let platform = Platform::with_balance("1.00").await;
    let gw = TestGateway::start(&quote_config(platform.addr, "0.30")).await;
    let c = client();
    let q = post(&c, &gw.url("/v1/sora/quote"), Some(KEY_A), SORA).await.json();
    assert_eq!((q["admitted"].clone(), q["account_available"].clone()), (json!(true), Value::Null));
    assert_eq!(get(&c, &gw.url("/v1/gateway/usage"), Some(KEY_A)).await.json()["account_available"], Value::Null);
    gw.shutdown().await;
}
