//! The foundation over real sockets: auth, token injection, routing, pass-through, error
//! normalisation of every fault shape, request ids, the access log, HTTP/2 and drain.

mod support;

use std::time::{Duration, Instant};

use http::Method;
use support::*;

#[tokio::test]
async fn injects_platform_token_and_strips_tenant_key() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let mut req = request(Method::POST, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA);
    req.headers_mut().insert("cookie", "session=tenant-cookie".parse().unwrap());
    req.headers_mut().insert("idempotency-key", "k-1".parse().unwrap());
    let r = send(&c, req).await;
    assert_eq!(r.status, 201);
    let sent = platform.requests_to("/v1/sora/generate");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].authorization.as_deref(), Some(&*format!("Bearer {TOKEN}")));
    // One Host header: the platform's address, not the gateway's.
    assert_eq!(sent[0].host, vec![platform.addr.to_string()]);
    for r in platform.requests() {
        assert_ne!(r.authorization.as_deref(), Some(&*format!("Bearer {KEY_A}")));
        assert!(!r.headers.iter().any(|h| h == "cookie" || h == "idempotency-key"), "{:?}", r.headers);
    }
    // The body went up byte for byte.
    use sha2::Digest;
    assert_eq!(sent[0].body_sha256, hex::encode(sha2::Sha256::digest(SORA.as_bytes())));
    gw.shutdown().await;
}

#[tokio::test]
async fn passes_2xx_through_byte_for_byte() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let id = create(&c, &gw, KEY_A).await;
    // Sora's documented trailing slash and the bare form both work.
    for path in [format!("/v1/sora/generations/{id}/"), format!("/v1/sora/generations/{id}")] {
        let odd = r#"{"generation_id": "x",   "status":"processing","extra":[1, 2.50, "é"]}"#;
        let mut f = platform.fault(FaultKind::Status);
        f.status = Some(200);
        f.body = Some(odd.to_string());
        f.path_prefix = Some("/v1/sora/generations/".into());
        platform.inject(f);
        let r = get(&c, &gw.url(&path), Some(KEY_A)).await;
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], odd.as_bytes());
        assert_eq!(platform.requests().last().unwrap().path, path);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn credentials_are_required() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let r = post(&c, &gw.url("/v1/sora/generate"), None, SORA).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (401, "Missing credentials"));
    let r = post(&c, &gw.url("/v1/sora/generate"), Some("not-a-key"), SORA).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (401, "Invalid credentials"));
    let mut req = request(Method::GET, &gw.url("/v1/data/balance"), None, "");
    req.headers_mut().insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    assert_eq!(send(&c, req).await.status, 401);
    assert!(platform.forwarded().is_empty(), "nothing reaches the platform");
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    for path in ["/", "/v1/nope", "/v2/sora/generate", "/metrics"] {
        let r = get(&c, &gw.url(path), Some(KEY_A)).await;
        assert_eq!((r.status.as_u16(), r.detail().as_str()), (404, "Not found"), "{path}");
    }
    // An unknown family is named, with the ones that exist.
    let r = post(&c, &gw.url("/v1/midjourney/generate"), Some(KEY_A), SORA).await;
    assert_eq!(r.status, 404);
    assert!(
        r.detail().starts_with("Unknown model family \"midjourney\"; the families are: chatgpt-images, gemini, kling,"),
        "{}",
        r.detail()
    );
    let r = get(&c, &gw.url("/v1/sora/generate"), Some(KEY_A)).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "POST");
    r.detail();
    assert!(platform.forwarded().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn every_upstream_fault_is_normalised() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let id = create(&c, &gw, KEY_A).await;
    let status_path = format!("/v1/sora/generations/{id}/");

    struct Case {
        fault: Fault,
        status: u16,
        detail: &'static str,
        retry_after: Option<&'static str>,
    }
    let mut cases = Vec::new();
    let mk = |kind: FaultKind, status: Option<u16>, body: Option<&str>, ct: Option<&str>, retry: Option<u64>| {
        let mut f = platform.fault(kind);
        f.status = status;
        f.body = body.map(str::to_string);
        f.content_type = ct.map(str::to_string);
        f.retry_after = retry;
        f.path_prefix = Some("/v1/sora/generations/".into());
        f
    };
    cases.push(Case {
        fault: mk(FaultKind::Html502, None, None, None, None),
        status: 503,
        detail: "Bad Gateway",
        retry_after: Some("5"),
    });
    cases.push(Case {
        fault: mk(FaultKind::Status, Some(500), Some(r#"{"detail":"Server exploded"}"#), None, None),
        status: 500,
        detail: "Server exploded",
        retry_after: None,
    });
    cases.push(Case {
        fault: mk(
            FaultKind::Status,
            Some(422),
            Some(
                r#"{"detail":[{"type":"enum","loc":["body","orientation"],"msg":"Input should be '9:16' or '16:9'"}]}"#,
            ),
            None,
            None,
        ),
        status: 422,
        detail: "orientation: Input should be '9:16' or '16:9'",
        retry_after: None,
    });
    cases.push(Case {
        fault: mk(
            FaultKind::Status,
            Some(402),
            Some(r#"{"success": false, "message": "INSUFFICIENT_CREDITS"}"#),
            None,
            None,
        ),
        status: 402,
        detail: "INSUFFICIENT_CREDITS",
        retry_after: None,
    });
    cases.push(Case {
        fault: mk(FaultKind::Status, Some(503), Some(""), Some("text/plain"), Some(30)),
        status: 503,
        detail: "Service Unavailable",
        retry_after: Some("30"),
    });
    cases.push(Case {
        fault: mk(FaultKind::Status, Some(504), Some("<html>timeout</html>"), Some("text/html"), None),
        status: 503,
        detail: "Gateway Timeout",
        retry_after: Some("5"),
    });
    cases.push(Case {
        fault: mk(FaultKind::Status, Some(401), Some(r#"{"detail":"Missing credentials"}"#), None, None),
        status: 500,
        detail: "Upstream authentication failed",
        retry_after: None,
    });
    cases.push(Case {
        fault: mk(FaultKind::Status, Some(403), Some(r#"{"error":"Forbidden","message":"bad key"}"#), None, None),
        status: 500,
        detail: "Upstream authentication failed",
        retry_after: None,
    });
    cases.push(Case {
        fault: mk(FaultKind::Status, Some(429), Some(r#"{"detail":"Too many status checks"}"#), None, Some(12)),
        status: 429,
        detail: "Too many status checks",
        retry_after: Some("12"),
    });
    cases.push(Case {
        fault: mk(FaultKind::MalformedJson, Some(500), None, None, None),
        status: 500,
        detail: "Internal Server Error",
        retry_after: None,
    });
    cases.push(Case {
        fault: mk(FaultKind::Reset, None, None, None, None),
        status: 503,
        detail: "Upstream unavailable",
        retry_after: Some("5"),
    });
    cases.push(Case {
        fault: mk(FaultKind::ResetMidBody, None, None, None, None),
        status: 503,
        detail: "Upstream unavailable",
        retry_after: Some("5"),
    });

    for case in cases {
        let name = format!("{:?}/{:?}", case.fault.kind, case.fault.status);
        // GET retries would hide a single fault; inject it for every attempt.
        let mut f = case.fault;
        f.times = Some(3);
        platform.inject(f);
        let r = get(&c, &gw.url(&status_path), Some(KEY_A)).await;
        assert_eq!(r.status.as_u16(), case.status, "{name}");
        assert_eq!(r.detail(), case.detail, "{name}");
        assert_eq!(r.headers.get("retry-after").map(|v| v.to_str().unwrap()), case.retry_after, "{name}");
        assert!(r.headers.contains_key("x-request-id"), "{name}");
        let _ = c.request(request(Method::POST, &format!("http://{}/_mock/reset", platform.addr), None, "")).await;
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn dead_upstream_is_a_fast_503() {
    let dead = dead_addr().await;
    let gw = TestGateway::start(&config_text(dead, "", &default_tenants())).await;
    let c = client();
    let started = Instant::now();
    let r = get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (503, "Upstream unavailable"));
    assert_eq!(r.headers["retry-after"], "5");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!(r.status, 503);
    gw.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_times_out_within_the_configured_timeout() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let id = create(&c, &gw, KEY_A).await;
    platform.delay("/v1/sora/generations/", 5000, 3);
    let started = Instant::now();
    let r = get(&c, &gw.url(&format!("/v1/sora/generations/{id}/")), Some(KEY_A)).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (503, "Upstream timed out"));
    // timeout_secs = 2 per attempt, GET retried within the retry budget.
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    gw.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_kept_or_made() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let mut req = request(Method::GET, &gw.url("/v1/data/balance"), Some(KEY_A), "");
    req.headers_mut().insert("x-request-id", "client-id-123".parse().unwrap());
    let r = send(&c, req).await;
    assert_eq!(r.headers["x-request-id"], "client-id-123");
    // The platform sees an id too, for cross-system tracing.
    assert!(platform.requests().last().unwrap().headers.iter().any(|h| h == "x-request-id"));
    let mut req = request(Method::GET, &gw.url("/v1/nope"), None, "");
    req.headers_mut().insert("x-request-id", "bad id with spaces".parse().unwrap());
    let r = send(&c, req).await;
    let made = r.headers["x-request-id"].to_str().unwrap();
    assert_eq!(made.len(), 36, "{made}");
    gw.shutdown().await;
}

#[tokio::test]
async fn one_access_log_line_per_request_without_secrets() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let secret_prompt = "SECRET-PROMPT-TEXT";
    let body = format!(r#"{{"prompt": "{secret_prompt}"}}"#);
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &body).await.status, 201);
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some("wrong"), &body).await.status, 401);
    assert_eq!(get(&c, &gw.url("/nope"), Some(KEY_A)).await.status, 404);
    let lines = gw.log_lines();
    assert_eq!(lines.len(), 3);
    let first = &lines[0];
    for k in [
        "time",
        "level",
        "request_id",
        "tenant",
        "method",
        "route",
        "status",
        "outcome",
        "latency_ms",
        "upstream_status",
        "upstream_latency_ms",
        "price",
    ] {
        assert!(first.get(k).is_some(), "missing {k} in {first}");
    }
    assert_eq!(first["tenant"], "a");
    assert_eq!(first["route"], "/v1/sora/generate");
    assert_eq!(first["status"], 201);
    assert_eq!(first["outcome"], "forwarded");
    assert_eq!(first["upstream_status"], 201);
    assert_eq!(first["price"], "0.1200");
    assert_eq!(lines[1]["outcome"], "unauthorized");
    assert_eq!(lines[1]["tenant"], serde_json::Value::Null);
    assert_eq!(lines[2]["outcome"], "not_found");
    let all = gw.logs.lock().unwrap().join("\n");
    for secret in [KEY_A, TOKEN, secret_prompt, "wrong"] {
        assert!(!all.contains(secret), "{secret} leaked into the access log");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn serves_http2() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = h2_client();
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!(r.status, 201);
    let r = get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await;
    assert_eq!(r.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    platform.delay("/v1/sora/generate", 800, 1);
    let url = gw.url("/v1/sora/generate");
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { post(&c, &url, Some(KEY_A), SORA).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = gw.addr;
    gw.shutdown().await;
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 201, "the in-flight request completed during the drain");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
}
