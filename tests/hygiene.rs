//! Request hygiene at the front door (SPEC §3): secrets never pass through, nothing unvalidated
//! reaches the platform, ambiguous credentials are refused, bad keys are throttled per address,
//! and GET retries stay inside one upstream deadline.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use support::*;

#[tokio::test]
async fn the_platform_token_quoted_in_an_error_never_reaches_the_tenant() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let mut f = platform.fault(FaultKind::Status);
    f.status = Some(400);
    f.body = Some(format!(r#"{{"detail":"Bad header Authorization: Bearer {TOKEN} (token {TOKEN} unknown)"}}"#));
    f.path_prefix = Some("/v1/sora/generate".into());
    platform.inject(f);
    let r = post(&client(), &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!(r.status, 400);
    let detail = r.detail();
    assert!(!detail.contains(TOKEN), "{detail}");
    assert_eq!(detail, "Bad header Authorization: Bearer [redacted] (token [redacted] unknown)");
    assert!(gw.logs.lock().unwrap().iter().all(|l| !l.contains(TOKEN)));
    gw.shutdown().await;
}

#[tokio::test]
async fn undocumented_query_parameters_are_refused_by_name() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let r = post(&c, &gw.url("/v1/sora/generate?callback_url=http://internal/&duration=12"), Some(KEY_A), SORA).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.detail(), "Unsupported query parameter(s): callback_url, duration (this endpoint accepts: none)");
    assert_eq!(platform.generate_calls(), 0);
    let r = get(&c, &gw.url("/v1/sora/generations?limit=5&offset=0&status=failed"), Some(KEY_A)).await;
    assert_eq!(r.detail(), "Unsupported query parameter(s): status (this endpoint accepts: limit, offset)");
    assert_eq!(get(&c, &gw.url("/v1/sora/generations?limit=5&offset=0"), Some(KEY_A)).await.status, 200);
    assert_eq!(get(&c, &gw.url("/v1/data/balance?x=1"), Some(KEY_A)).await.status, 400);
    gw.shutdown().await;
}

#[tokio::test]
async fn post_bodies_must_be_json() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let mut req = request(Method::POST, &gw.url("/v1/sora/generate"), Some(KEY_A), "prompt=a+cat&duration=10");
    req.headers_mut().insert("content-type", "application/x-www-form-urlencoded".parse().unwrap());
    let r = send(&c, req).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (415, "Content-Type must be application/json"));
    let mut req = request(Method::POST, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA);
    req.headers_mut().insert("content-type", "application/json; charset=utf-8".parse().unwrap());
    assert_eq!(send(&c, req).await.status, 201);
    assert_eq!(platform.generate_calls(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let mut req = request(Method::GET, &gw.url("/v1/data/balance"), Some(KEY_A), Bytes::new());
    req.headers_mut().append("authorization", format!("Bearer {KEY_B}").parse().unwrap());
    let r = send(&client(), req).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (400, "Send exactly one Authorization header"));
    gw.shutdown().await;
}

#[tokio::test]
async fn failed_authentication_is_throttled_per_address_but_valid_keys_are_not() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let mut statuses = Vec::new();
    for i in 0..60 {
        statuses.push(get(&c, &gw.url("/v1/data/balance"), Some(&format!("wrong-{i}"))).await);
    }
    assert!(statuses[..10].iter().all(|r| r.status == 401));
    let throttled: Vec<_> = statuses.iter().filter(|r| r.status == 429).collect();
    assert!(throttled.len() >= 45, "{} of 60 throttled", throttled.len());
    assert!(throttled[0].headers.contains_key("retry-after"));
    assert_eq!(throttled[0].detail(), "Too many failed authentication attempts from this address; retry later");
    // The same address with a valid key is served at full speed.
    for _ in 0..20 {
        assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await.status, 200);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn get_retries_fit_inside_one_upstream_deadline_and_timeouts_are_not_retried() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let id = create(&c, &gw, KEY_A).await;
    let path = format!("/v1/sora/generations/{id}/");
    // A platform slower than the 2 s timeout: one attempt, 503 after ~2 s (was 3 × 2 s).
    platform.delay("/v1/sora/generations/", 3000, 1);
    let started = Instant::now();
    let r = get(&c, &gw.url(&path), Some(KEY_A)).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (503, "Upstream timed out"));
    assert!(started.elapsed() < Duration::from_millis(2600), "{:?}", started.elapsed());
    assert_eq!(platform.requests_to("/v1/sora/generations/").len(), 1, "a timed-out GET is not retried");
    // A 502 is retried, within the same deadline.
    let mut f = platform.fault(FaultKind::Html502);
    f.path_prefix = Some("/v1/sora/generations/".into());
    platform.inject(f);
    let r = get(&c, &gw.url(&path), Some(KEY_A)).await;
    assert_eq!(r.status, 200);
    gw.shutdown().await;
}

/// Opens an upload (chunked, no Content-Length) that sends one small chunk and then stalls.
async fn stalled_upload(addr: std::net::SocketAddr, key: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/sora/generate HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n10\r\n{{\"prompt\": \"aaaa\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn one_tenants_stalled_uploads_never_refuse_another_tenant() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(
        platform.addr,
        "max_buffered_body_bytes = 67108864\nmin_upload_bytes_per_sec = 0",
        &default_tenants(),
    ))
    .await;
    // Tenant a opens 40 uploads that never finish (the old budget reserved 16 MiB for each).
    let mut stalled = Vec::new();
    for _ in 0..40 {
        stalled.push(stalled_upload(gw.addr, KEY_A).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = client();
    // a is held to its own share: 32 uploads in progress at most.
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!(
        (r.status.as_u16(), r.detail().as_str()),
        (429, "Too many uploads in progress for this tenant; retry shortly")
    );
    assert!(r.headers.contains_key("retry-after"));
    // b is not affected at all.
    for _ in 0..5 {
        assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_B), SORA).await.status, 201);
    }
    drop(stalled);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upload_slower_than_the_minimum_rate_gets_408_after_the_grace() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let platform = Platform::start().await;
    let gw =
        TestGateway::start(&config_text(platform.addr, "min_upload_bytes_per_sec = 1024", &default_tenants())).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(format!("POST /v1/sora/generate HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_A}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n").as_bytes()).await.unwrap();
    let started = Instant::now();
    // 100 bytes a second: far below 1 KiB/s.
    let writer = tokio::spawn(async move {
        for _ in 0..20 {
            if s.write_all(&[b' '; 100]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        s
    });
    // The answer arrives while the client is still sending.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let mut s = writer.await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#"{"detail":"Request body arrived too slowly"}"#), "{text}");
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert_eq!(platform.generate_calls(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_early_413_is_readable_by_a_client_that_sends_its_whole_body_first() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "max_body_bytes = 1048576", &default_tenants())).await;
    // Like Python's http.client: send everything, then read the answer.
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let body = vec![b'x'; 8 * 1024 * 1024];
        s.write_all(format!("POST /v1/sora/generate HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_A}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes()).await.unwrap();
        s.write_all(&body).await.expect("the gateway keeps reading (lingering close) instead of resetting");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("limit\"}") {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 413"), "{text:.200}");
        assert!(text.contains("Request body exceeds the 1048576-byte limit"));
    }
    gw.shutdown().await;
}
