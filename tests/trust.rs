//! Trust under ambiguity and forgery, over real sockets: the reconciler never guesses which
//! tenant a platform generation belongs to, a forged webhook moves no money, lying image headers
//! and garbage answers are refused.

mod support;

use std::time::Duration;

use http::Method;
use support::*;
use tollgate::policy::image::fixtures::{b64, jpeg, png, webp};

const ADMIN: &str = "admin_token_env = \"TEST_ADMIN_TOKEN\"";

fn late_answer(platform: &Platform, ms: u64) {
    let mut f = platform.fault(FaultKind::LateAnswer);
    f.latency_ms = Some(ms);
    f.path_prefix = Some("/v1/sora/generate".into());
    platform.inject(f);
}

async fn admin(c: &HttpClient, gw: &TestGateway, method: Method, path: &str) -> Rsp {
    let mut r = request(method, &gw.admin_url(path), None, "");
    r.headers_mut().insert("authorization", "Bearer admin-secret-for-tests-0123456789abcdef".parse().unwrap());
    send(c, r).await
}

async fn unattributed(c: &HttpClient, gw: &TestGateway) -> Vec<String> {
    let r = admin(c, gw, Method::GET, "/admin/unattributed").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["unattributed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["generation_id"].as_str().unwrap().to_string())
        .collect()
}

async fn start(backend: Backend) -> (Platform, TestGateway, Option<tollgate::dev::testkit::RedisServer>) {
    let platform = Platform::start().await;
    let text = fast_reconcile(&config_text(platform.addr, ADMIN, &default_tenants()), 2, 300);
    let (text, redis) = with_backend(&text, backend);
    let gw = TestGateway::start(&text).await;
    (platform, gw, redis)
}

/// Two tenants, one templated prompt, two private images; the platform charges both and
/// answers after the gateway's timeout.
async fn same_prompt_two_tenants(backend: Backend, second_created: bool) {
    let (platform, gw, _redis) = start(backend).await;
    let c = client();
    late_answer(&platform, 2600);
    if second_created {
        late_answer(&platform, 2600);
    } else {
        let mut f = platform.fault(FaultKind::Reset);
        f.path_prefix = Some("/v1/sora/generate".into());
        platform.inject(f);
    }
    let body_a = format!(r#"{{"prompt":"Product shot, studio light","image_base64":"{}"}}"#, b64(&png(64, 64, 0)));
    let body_b = format!(r#"{{"prompt":"Product shot, studio light","image_base64":"{}"}}"#, b64(&png(32, 48, 0)));
    let url = gw.url("/v1/sora/generate");
    let (ra, rb) = tokio::join!(post(&c, &url, Some(KEY_A), &body_a), post(&c, &url, Some(KEY_B), &body_b));
    assert_eq!((ra.status.as_u16(), rb.status.as_u16()), (503, 503), "{:?} {:?}", ra.body, rb.body);
    let made = if second_created { 2 } else { 1 };
    // The reconciler sets the charges aside; the unknown outcomes are released after 2 s.
    until(Duration::from_secs(20), "unattributed charges and no unknown outcomes", || async {
        let totals = gw.gateway.store().hold_totals().await.unwrap();
        unattributed(&c, &gw).await.len() == made && totals.unknown == 0 && totals.open == 0
    })
    .await;
    let ids = unattributed(&c, &gw).await;
    assert_eq!(platform.mock.generations().len(), made);
    for id in &ids {
        for key in [KEY_A, KEY_B] {
            let r = get(&c, &gw.url(&format!("/v1/sora/generations/{id}")), Some(key)).await;
            assert_eq!(
                (r.status.as_u16(), r.detail().as_str()),
                (404, "Generation not found"),
                "{backend:?}: nobody owns {id}"
            );
        }
    }
    assert_eq!(spend_of(&gw, "a").await, usd("0"));
    assert_eq!(spend_of(&gw, "b").await, usd("0"));
    assert_eq!(
        spend_of(&gw, "~unattributed").await,
        platform.mock.charged_total(),
        "the account's charges are all accounted for"
    );
    // The usage report has a line for them.
    let r = admin(&c, &gw, Method::GET, "/admin/usage").await;
    let line = r.json()["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "~unattributed")
        .cloned()
        .expect("an unattributed line");
    assert_eq!(line["spent"], platform.mock.charged_total().to_string());

    // An operator who knows assigns the first to `a` and dismisses the rest.
    let r = admin(&c, &gw, Method::POST, &format!("/admin/unattributed/{}/assign?tenant=a", ids[0])).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["owner"], "a");
    assert_eq!(get(&c, &gw.url(&format!("/v1/sora/generations/{}", ids[0])), Some(KEY_A)).await.status, 200);
    assert_eq!(get(&c, &gw.url(&format!("/v1/sora/generations/{}", ids[0])), Some(KEY_B)).await.status, 404);
    assert_eq!(spend_of(&gw, "a").await, usd("0.12"));
    for id in &ids[1..] {
        assert_eq!(admin(&c, &gw, Method::POST, &format!("/admin/unattributed/{id}/dismiss")).await.status, 200);
    }
    assert!(unattributed(&c, &gw).await.is_empty());
    // Decided once: a second decision finds nothing; an unknown tenant is refused.
    assert_eq!(
        admin(&c, &gw, Method::POST, &format!("/admin/unattributed/{}/assign?tenant=b", ids[0])).await.status,
        404
    );
    assert_eq!(admin(&c, &gw, Method::POST, "/admin/unattributed/x/assign?tenant=nobody").await.status, 422);
    gw.shutdown().await;
}

#[tokio::test]
async fn same_prompt_from_two_tenants_is_owned_by_nobody_memory() {
    same_prompt_two_tenants(Backend::Memory, true).await;
}

#[tokio::test]
async fn same_prompt_from_two_tenants_is_owned_by_nobody_sqlite() {
    same_prompt_two_tenants(Backend::Sqlite, true).await;
}

#[tokio::test]
async fn same_prompt_from_two_tenants_is_owned_by_nobody_redis() {
    same_prompt_two_tenants(Backend::Redis, true).await;
}

#[tokio::test]
async fn one_generation_that_could_be_either_tenants_is_charged_to_neither() {
    same_prompt_two_tenants(Backend::Memory, false).await;
}

/// What the list shows of the request (here `duration`) tells two tenants' requests apart.
#[tokio::test]
async fn request_fields_in_the_list_attribute_same_prompt_requests() {
    let (platform, gw, _redis) = start(Backend::Memory).await;
    let c = client();
    late_answer(&platform, 2600);
    late_answer(&platform, 2600);
    let url = gw.url("/v1/sora/generate");
    let (ra, rb) = tokio::join!(
        post(&c, &url, Some(KEY_A), r#"{"prompt":"same","duration":10}"#),
        post(&c, &url, Some(KEY_B), r#"{"prompt":"same","duration":15}"#)
    );
    assert_eq!((ra.status.as_u16(), rb.status.as_u16()), (503, 503));
    until(Duration::from_secs(20), "both found", || async {
        spend_of(&gw, "a").await == usd("0.12") && spend_of(&gw, "b").await == usd("0.18")
    })
    .await;
    assert!(unattributed(&c, &gw).await.is_empty());
    gw.shutdown().await;
}

/// A relay config: tenant `a` with a webhook secret, the reconciler on.
fn relay_text(platform: std::net::SocketAddr) -> String {
    let tenants = tenant("a", KEY_A, 1000, 1000, 1000, None).replacen(
        "generations_per_minute = 1000\n",
        "generations_per_minute = 1000\nwebhook_secret_env = \"TEST_WEBHOOK_SECRET\"\n",
        1,
    );
    fast_reconcile(&config_text(platform, ADMIN, &tenants), 900, 10_000).replace(
        "[pricing]",
        "[webhooks]\npublic_base_url = \"http://{addr}\"\nallow_http_loopback = true\nretry_base_ms = 300\n\n[pricing]",
    )
}

/// A platform that echoes `callback_url` in its status answers would show the tenant its relay
/// token; with it a forged `failed` webhook used to refund a completed generation.
#[tokio::test]
async fn a_forged_failed_webhook_moves_no_money_and_status_bodies_hide_the_relay_url() {
    let platform = Platform::with(MockOptions {
        token: Some(TOKEN.into()),
        balance: usd("100"),
        step: Duration::from_secs(3),
        echo_callback_url: true,
        ..Default::default()
    })
    .await;
    let gw = TestGateway::start_templated(&relay_text(platform.addr)).await;
    let rx = Receiver::start().await;
    let c = client();
    let body = format!(r#"{{"prompt":"a lighthouse","callback_url":"{}"}}"#, rx.url());
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.json()["generation_id"].as_str().unwrap().to_string();
    // The platform's own answer carries the relay URL ...
    let direct = {
        let mut q = request(Method::GET, &format!("http://{}/v1/sora/generations/{id}", platform.addr), None, "");
        q.headers_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        send(&c, q).await
    };
    let relay_url = direct.json()["callback_url"].as_str().unwrap().to_string();
    assert!(relay_url.contains("/webhooks/runblob/"), "{relay_url}");
    // ... the tenant's never does, on a poll or in a list.
    for path in [format!("/v1/sora/generations/{id}"), "/v1/sora/generations".to_string()] {
        let r = get(&c, &gw.url(&path), Some(KEY_A)).await;
        assert_eq!(r.status, 200);
        assert!(!String::from_utf8_lossy(&r.body).contains("/webhooks/runblob/"), "{path}: {:?}", r.body);
    }
    // A forger who has the token anyway reports a failure while the platform is still working,
    // then a completion with a malicious output URL.
    let forged = post(&c, &relay_url, None, &format!(r#"{{"generation_id":"{id}","status":"failed"}}"#)).await;
    assert_eq!(forged.status, 200);
    let forged = post(
        &c,
        &relay_url,
        None,
        &format!(r#"{{"generation_id":"{id}","status":"completed","video_url":"https://evil.example/malware.mp4"}}"#),
    )
    .await;
    assert_eq!(forged.status, 200);
    until(Duration::from_secs(10), "the forgeries are counted", || async {
        let m = String::from_utf8_lossy(&get(&c, &gw.admin_url("/metrics"), None).await.body).into_owned();
        m.contains(r#"tollgate_webhook_rejected_total{cause="contradicts_platform"} 2"#)
    })
    .await;
    // Before: the forged body reached the tenant, signed with its secret. Now the tenant gets
    // only what the platform confirmed (its own answer: still in progress).
    until(Duration::from_secs(10), "two deliveries", || async { rx.accepted().len() >= 2 }).await;
    for r in rx.accepted() {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(!String::from_utf8_lossy(&r.body).contains("evil.example"), "{v}");
        assert!(v["status"] != "failed" && v["status"] != "completed", "{v}");
    }
    assert_eq!(spend_of(&gw, "a").await, usd("0.12"), "no refund on a webhook's word");
    let metrics = String::from_utf8_lossy(&get(&c, &gw.admin_url("/metrics"), None).await.body).into_owned();
    assert!(!metrics.contains(r#"tollgate_refunds_total{tenant="a"}"#), "{metrics}");
    gw.shutdown().await;
}

/// Decompression-bomb dimensions and a corrupt PNG header are refused before anything is
/// charged, naming the field and the limit.
#[tokio::test]
async fn images_whose_header_lies_are_refused_with_the_limit() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let mut bad_crc = png(64, 64, 0);
    bad_crc[29] ^= 0x5a;
    let cases = [
        (png(65535, 65535, 0), "image_base64: is 65535x65535 pixels, over the 8192x8192 limit"),
        (
            png(i32::MAX as u32, i32::MAX as u32, 0),
            "image_base64: is 2147483647x2147483647 pixels, over the 8192x8192 limit",
        ),
        (jpeg(65500, 65500, 0), "image_base64: is 65500x65500 pixels, over the 8192x8192 limit"),
        (webp(16383, 16383), "image_base64: is 16383x16383 pixels, over the 8192x8192 limit"),
        (png(8000, 8000, 0), "image_base64: is 8000x8000 = 64000000 pixels, over the 40000000 pixel limit"),
        (bad_crc, "image_base64: has a PNG header chunk (IHDR) whose CRC does not match"),
    ];
    for (img, want) in cases {
        let body = format!(r#"{{"prompt":"p","image_base64":"{}"}}"#, b64(&img));
        let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &body).await;
        assert_eq!((r.status.as_u16(), r.detail().as_str()), (422, want));
    }
    assert_eq!(platform.generate_calls(), 0);
    gw.shutdown().await;
}

/// A price list below what the platform charges is counted per family, so it can be alerted on.
#[tokio::test]
async fn a_charge_above_its_hold_is_counted() {
    let platform = Platform::start().await;
    let text = config_text(platform.addr, "", &default_tenants())
        .replace(r#"sora = { "10" = "0.12", "15" = "0.18" }"#, r#"sora = "0.05""#);
    let gw = TestGateway::start(&text).await;
    let c = client();
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    assert_eq!(spend_of(&gw, "a").await, usd("0.12"), "settled at the charged price");
    let m = String::from_utf8_lossy(&get(&c, &gw.admin_url("/metrics"), None).await.body).into_owned();
    assert!(m.contains(r#"tollgate_charged_above_hold_total{family="sora"} 1"#), "{m}");
    gw.shutdown().await;
}

fn answer(platform: &Platform, prefix: &str, status: u16, content_type: &str, body: &str) {
    let mut f = platform.fault(FaultKind::Status);
    f.status = Some(status);
    f.content_type = Some(content_type.into());
    f.body = Some(body.into());
    f.path_prefix = Some(prefix.into());
    f.times = Some(1);
    platform.inject(f);
}

/// A 2xx that is not the documented JSON is not success: the tenant gets 502 and a paid
/// request's outcome is unknown (the platform may have charged) until the reconciler decides.
#[tokio::test]
async fn garbage_2xx_answers_are_502_and_paid_ones_are_unknown_outcomes() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&fast_reconcile(&config_text(platform.addr, "", &default_tenants()), 2, 300)).await;
    let c = client();
    for (status, ct, body) in
        [(200, "text/html", "<html>ok</html>"), (201, "application/json", r#"{"status":"pending","price":"0.12"}"#)]
    {
        answer(&platform, "/v1/sora/generate", status, ct, body);
        let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
        assert_eq!((r.status.as_u16(), r.detail().as_str()), (502, "Upstream returned an invalid answer"), "{body}");
        assert_eq!(r.headers["content-type"], "application/json");
        let totals = gw.gateway.store().hold_totals().await.unwrap();
        assert_eq!(totals.unknown, 1, "counted as spent until reconciled");
        // Nothing was created: the reconciler releases it.
        until(Duration::from_secs(10), "released", || async {
            gw.gateway.store().hold_totals().await.unwrap().unknown == 0
        })
        .await;
    }
    assert_eq!(spend_of(&gw, "a").await, usd("0"));
    let id = create(&c, &gw, KEY_A).await;
    for body in ["<html><body>Bad gateway</body></html>", r#"{"generation_id":"x","status":"compl"#, ""] {
        answer(&platform, "/v1/sora/generations/", 200, "application/json", body);
        let r = get(&c, &gw.url(&format!("/v1/sora/generations/{id}")), Some(KEY_A)).await;
        assert_eq!((r.status.as_u16(), r.detail().as_str()), (502, "Upstream returned an invalid answer"), "{body:?}");
    }
    assert_eq!(get(&c, &gw.url(&format!("/v1/sora/generations/{id}")), Some(KEY_A)).await.status, 200);
    gw.shutdown().await;
}

/// Numeric, hex and short spellings of private addresses are refused before anything is charged.
#[tokio::test]
async fn callback_urls_in_any_spelling_of_a_private_address_are_refused() {
    let platform = Platform::start().await;
    let gw = TestGateway::start_templated(&relay_text(platform.addr)).await;
    let c = client();
    for url in [
        "https://167772161/x",
        "https://0x0a000001/x",
        "https://10.1/x",
        "https://012.0.0.1/x",
        "https://169.254.169.254./x",
    ] {
        let r =
            post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &format!(r#"{{"prompt":"p","callback_url":"{url}"}}"#))
                .await;
        assert_eq!(
            (r.status.as_u16(), r.detail().as_str()),
            (422, "callback_url: must not point to a private, loopback or link-local address"),
            "{url}"
        );
    }
    assert_eq!(platform.generate_calls(), 0);
    gw.shutdown().await;
}

/// The admin token cannot be guessed at wire speed: an address that keeps presenting wrong
/// tokens waits, and while it waits even the right token gets 429 (before, it got 200, so
/// every throttled guess still told right from wrong).
#[tokio::test]
async fn failed_admin_authentication_is_throttled_per_address() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, ADMIN, &default_tenants())).await;
    let c = client();
    let mut statuses = Vec::new();
    for i in 0..30 {
        let mut r = request(Method::GET, &gw.admin_url("/admin/usage"), None, "");
        r.headers_mut().insert("authorization", format!("Bearer guess-{i}").parse().unwrap());
        statuses.push(send(&c, r).await);
    }
    assert_eq!(statuses[0].status, 401);
    let throttled = statuses.iter().filter(|r| r.status == 429).count();
    assert!(throttled >= 15, "{throttled} of 30 guesses throttled");
    let last = statuses.last().unwrap();
    assert_eq!(last.detail(), "Too many failed authentication attempts; retry later");
    assert!(last.headers.contains_key("retry-after"));
    assert_eq!(
        admin(&c, &gw, Method::GET, "/admin/usage").await.status,
        429,
        "a throttled address learns nothing, right token or not"
    );
    let wait: u64 = last.headers["retry-after"].to_str().unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(
        admin(&c, &gw, Method::GET, "/admin/usage").await.status,
        200,
        "the real token works once the wait is over"
    );
    gw.shutdown().await;
}

/// GET over a raw socket bound to `from` (any 127.0.0.0/8 address is this machine).
async fn admin_get_from(from: std::net::IpAddr, to: std::net::SocketAddr, path: &str, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(std::net::SocketAddr::new(from, 0)).unwrap();
    let mut s = sock.connect(to).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Before: 50 addresses × 10 guesses were never throttled. Past the budget shared by all
/// addresses, every attempt waits, from a fresh address and with the right token too.
#[tokio::test]
async fn many_addresses_guessing_the_admin_token_are_throttled_together() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, ADMIN, &default_tenants())).await;
    let mut statuses = Vec::new();
    for n in 2..9u8 {
        for i in 0..10 {
            statuses
                .push(admin_get_from([127, 0, 0, n].into(), gw.admin, "/admin/usage", &format!("guess-{n}-{i}")).await);
        }
    }
    assert!(statuses[..60].iter().all(|s| *s == 401), "each address stayed within its own ten");
    assert!(statuses[60..].iter().all(|s| *s == 429), "{statuses:?}");
    let right = env()["TEST_ADMIN_TOKEN"].clone();
    assert_eq!(admin_get_from([127, 0, 0, 20].into(), gw.admin, "/admin/usage", &right).await, 429);
    gw.shutdown().await;
}

/// `/readyz` asks the store for a write: a Redis that answers PING but refuses writes is not ready.
#[tokio::test]
async fn readyz_is_503_while_the_store_cannot_write() {
    let platform = Platform::start().await;
    let (text, redis) = with_backend(&config_text(platform.addr, "", &default_tenants()), Backend::Redis);
    let redis = redis.unwrap();
    let gw = TestGateway::start(&text).await;
    let c = client();
    assert_eq!(get(&c, &gw.admin_url("/readyz"), None).await.status, 200);
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let set = |v: &'static str| redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(v).to_owned();
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("noeviction").query_async(&mut conn).await.unwrap();
    let _: () = set("1").query_async(&mut conn).await.unwrap();
    let r = get(&c, &gw.admin_url("/readyz"), None).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (503, "Store unavailable"));
    let _: () = set("0").query_async(&mut conn).await.unwrap();
    assert_eq!(get(&c, &gw.admin_url("/readyz"), None).await.status, 200);
    gw.shutdown().await;
}

async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// HTTP/1.1 without a Host, or with two, is a 400 (RFC 9112 §3.2); HTTP/1.0 needs none.
#[tokio::test]
async fn http11_needs_exactly_one_host() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let auth = format!("Authorization: Bearer {KEY_A}\r\n");
    let none = raw(gw.addr, &format!("GET /v1/data/balance HTTP/1.1\r\n{auth}Connection: close\r\n\r\n")).await;
    assert!(none.starts_with("HTTP/1.1 400"), "{none}");
    assert!(none.contains(r#"{"detail":"HTTP/1.1 requests need exactly one Host header"}"#), "{none}");
    let two = raw(
        gw.addr,
        &format!("GET /v1/data/balance HTTP/1.1\r\nHost: a\r\nHost: b\r\n{auth}Connection: close\r\n\r\n"),
    )
    .await;
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    let one =
        raw(gw.addr, &format!("GET /v1/data/balance HTTP/1.1\r\nHost: a\r\n{auth}Connection: close\r\n\r\n")).await;
    assert!(one.starts_with("HTTP/1.1 200"), "{one}");
    let old = raw(gw.addr, &format!("GET /v1/data/balance HTTP/1.0\r\n{auth}\r\n")).await;
    assert!(old.starts_with("HTTP/1.0 200") || old.starts_with("HTTP/1.1 200"), "{old}");
    gw.shutdown().await;
}

/// A flood of unauthenticated requests from one address writes a bounded number of access
/// lines; metrics still count every request.
#[tokio::test]
async fn refused_requests_past_a_rate_are_sampled_in_the_access_log() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    for _ in 0..400 {
        let _ = get(&c, &gw.url("/v1/data/balance"), Some("wrong-key")).await;
    }
    let lines = gw.log_lines().len();
    assert!((50..150).contains(&lines), "{lines} access lines for 400 refused requests");
    let m = String::from_utf8_lossy(&get(&c, &gw.admin_url("/metrics"), None).await.body).into_owned();
    let counted: f64 = m
        .lines()
        .filter(|l| l.starts_with("tollgate_requests_total{") && l.contains(r#"tenant="-""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, 400.0, "{m}");
    // Another tenant's requests are logged in full.
    for _ in 0..5 {
        assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await.status, 200);
    }
    assert_eq!(gw.log_lines().iter().filter(|l| l["tenant"] == "a").count(), 5);
    gw.shutdown().await;
}

/// A chunk header that declares more than `max_body_bytes` is answered 413 at once, not after
/// the client has sent that many bytes.
#[tokio::test]
async fn a_declared_chunk_over_the_cap_gets_an_early_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "max_body_bytes = 65536", &default_tenants())).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/sora/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_A}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    // 1 GiB declared; 16 bytes sent.
    s.write_all(format!("{head}40000000\r\n{{\"prompt\": \"aaaa").as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer before the body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("Request body exceeds the 65536-byte limit"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(platform.generate_calls(), 0);
    gw.shutdown().await;
}

/// Before: any `Host` was answered (a DNS-rebinding page could read spend and balance from
/// `/metrics`), and admin JSON carried no `Cache-Control`.
#[tokio::test]
async fn the_admin_listener_answers_only_its_own_names_and_is_never_cached() {
    let platform = Platform::start().await;
    let server = format!("{ADMIN}\nadmin_hosts = [\"tollgate-admin.internal\"]\nmetrics_require_token = true");
    let gw = TestGateway::start(&config_text(platform.addr, &server, &default_tenants())).await;
    let c = client();
    let with_host = |path: &str, host: &str, token: bool| {
        let mut r = request(Method::GET, &gw.admin_url(path), None, "");
        r.headers_mut().insert("host", host.parse().unwrap());
        if token {
            r.headers_mut().insert("authorization", format!("Bearer {}", env()["TEST_ADMIN_TOKEN"]).parse().unwrap());
        }
        r
    };
    for host in ["rebound.attacker.example", "rebound.attacker.example:9090"] {
        let r = send(&c, with_host("/metrics", host, true)).await;
        assert_eq!(r.status, 403, "{host}");
        assert!(r.detail().contains("admin_hosts"), "{}", r.detail());
    }
    assert_eq!(send(&c, with_host("/healthz", "tollgate-admin.internal:9090", false)).await.status, 200);
    // /metrics behind the token when asked for.
    assert_eq!(send(&c, with_host("/metrics", "127.0.0.1", false)).await.status, 401);
    let m = send(&c, with_host("/metrics", "127.0.0.1", true)).await;
    assert_eq!(m.status, 200);
    let usage = admin(&c, &gw, Method::GET, "/admin/usage").await;
    assert_eq!(usage.status, 200);
    for r in [&m, &usage] {
        assert_eq!(r.headers.get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
    }
    gw.shutdown().await;
}
