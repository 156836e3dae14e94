//! Hostile clients and a failing platform, over raw sockets: slowloris, malformed framing,
//! oversized heads, connection caps; GET retries and the circuit breaker.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes, returns what came back before the server closed or `wait` passed.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    // One response is enough.
                    if out.windows(4).any(|w| w == b"\r\n\r\n") && String::from_utf8_lossy(&out).contains("\"detail\"")
                    {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(rsp: &str) -> u16 {
    rsp.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn ambiguous_framing_is_refused_with_4xx() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let auth = format!("Authorization: Bearer {KEY_A}\r\n");
    let body = SORA;
    let cases = [
        // CL + TE (request smuggling shape).
        format!("POST /v1/sora/generate HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len(), body.len()),
        // Two different Content-Lengths.
        format!("POST /v1/sora/generate HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nContent-Length: 5\r\n\r\n{body}", body.len()),
        // Invalid method token.
        "G@T /v1/data/balance HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        // Garbage request line.
        "HELLO\r\n\r\n".to_string(),
        // Invalid Content-Length.
        format!("POST /v1/sora/generate HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: abc\r\n\r\n"),
        // Accepted before: lines ended by a bare LF, Transfer-Encoding twice, two Content-Types.
        format!("POST /v1/sora/generate HTTP/1.1\nHost: x\n{}Content-Length: {}\n\n{body}", auth.replace("\r\n", "\n"), body.len()),
        format!("POST /v1/sora/generate HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len()),
        format!("POST /v1/sora/generate HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
    ];
    for case in cases {
        let rsp = raw(gw.addr, case.as_bytes(), Duration::from_secs(3)).await;
        let status = status_of(&rsp);
        assert!((400..500).contains(&status), "{case:?} → {rsp:?}");
    }
    assert_eq!(platform.generate_calls(), 0, "nothing ambiguous was forwarded");
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_methods_on_known_paths_are_405() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let rsp = raw(
        gw.addr,
        format!("BREW /v1/sora/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_A}\r\n\r\n").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&rsp), 405, "{rsp}");
    assert!(rsp.contains("{\"detail\":\"Method not allowed\"}"));
    gw.shutdown().await;
}

#[tokio::test]
async fn oversized_and_too_many_headers_are_431() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let huge = format!("GET /v1/data/balance HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let rsp = raw(gw.addr, huge.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_of(&rsp), 431, "{rsp:.200}");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let rsp = raw(
        gw.addr,
        format!("GET /v1/data/balance HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&rsp), 431, "{rsp:.200}");
    // A malformed head is 400. Both refusals are logged and counted like requests.
    let rsp =
        raw(gw.addr, b"GET /v1/data/balance HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n", Duration::from_secs(3))
            .await;
    assert_eq!(status_of(&rsp), 400, "{rsp:.200}");
    eventually(Duration::from_secs(2), || {
        let lines = gw.log_lines();
        lines.iter().filter(|l| l["outcome"] == "headers_too_large" && l["status"] == 431).count() == 2
            && lines.iter().any(|l| l["outcome"] == "bad_request_head" && l["status"] == 400)
    })
    .await;
    let metrics = String::from_utf8_lossy(&get(&client(), &gw.admin_url("/metrics"), None).await.body).into_owned();
    assert!(metrics.contains(r#"outcome="headers_too_large"} 2"#), "{metrics}");
    gw.shutdown().await;
}

#[tokio::test]
async fn slowloris_does_not_starve_normal_clients() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(
        &config_text(platform.addr, "", &default_tenants())
            .replace("header_read_timeout_secs = 10", "header_read_timeout_secs = 2"),
    )
    .await;
    // 200 connections that dribble header bytes and never finish.
    let mut lorises = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /v1/data/balance HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        lorises.push(s);
    }
    let dribble = tokio::spawn(async move {
        for _ in 0..20 {
            for s in lorises.iter_mut() {
                let _ = s.write_all(b"X-A: b\r\n").await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lorises
    });
    let c = client();
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await.status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(2), "normal clients were slowed: {:?}", started.elapsed());
    // The header-read deadline (2 s in the test config) closes the slow connections.
    let mut lorises = dribble.await.unwrap();
    let mut closed = 0;
    for s in lorises.iter_mut() {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1,
            Err(_) => {}
        }
    }
    assert_eq!(closed, 200, "every slowloris connection was cut by the header deadline");
    gw.shutdown().await;
}

#[tokio::test]
async fn at_the_connection_cap_silent_sockets_make_room_and_busy_ones_queue() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "max_connections = 4", &default_tenants())).await;
    // Four sockets that never speak fill the cap…
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // …but a real client is served at once: the oldest silent one is closed for it.
    let c = client();
    let started = Instant::now();
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(1000), "{:?}", started.elapsed());
    let mut buf = [0u8; 16];
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(1), silent[0].read(&mut buf)).await.unwrap().unwrap_or(0),
        0,
        "the oldest silent socket was closed"
    );
    assert!(gw.log_lines().iter().any(|l| l["outcome"] == "evicted_at_capacity" && l["status"] == 503));
    drop(silent);
    // Four connections busy with real requests are never evicted: a fifth waits for a slot.
    platform.delay("/v1/sora/generate", 800, 4);
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let (c, url) = (client(), gw.url("/v1/sora/generate"));
            tokio::spawn(async move { post(&c, &url, Some(KEY_A), SORA).await.status })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c5, url) = (client(), gw.url("/v1/data/balance"));
    let waiting = tokio::spawn(async move { get(&c5, &url, Some(KEY_A)).await.status });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "served past the connection cap");
    for b in busy {
        assert_eq!(b.await.unwrap(), 201);
    }
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap(), 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn idempotent_gets_are_retried_but_paid_posts_never() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let id = create(&c, &gw, KEY_A).await;
    let before = platform.forwarded().len();
    // One 503 then success: the tenant never sees the blip.
    let mut f = platform.fault(FaultKind::Status);
    f.status = Some(503);
    f.path_prefix = Some("/v1/sora/generations/".into());
    platform.inject(f);
    let r = get(&c, &gw.url(&format!("/v1/sora/generations/{id}/")), Some(KEY_A)).await;
    assert_eq!(r.status, 200);
    assert_eq!(platform.forwarded().len() - before, 2, "one retry");
    // The same blip on a paid POST is passed on, not retried.
    let mut f = platform.fault(FaultKind::Status);
    f.status = Some(503);
    f.path_prefix = Some("/v1/sora/generate".into());
    platform.inject(f);
    let calls = platform.generate_calls();
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!(r.status, 503);
    assert_eq!(platform.generate_calls(), calls + 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn circuit_opens_when_the_platform_is_down_and_recovers_by_itself() {
    let platform = Platform::start().await;
    let text = config_text(platform.addr, "", &default_tenants()).replace(
        "circuit_failure_threshold = 1000",
        "circuit_failure_threshold = 3\ncircuit_open_secs = 1\nget_retries = 0",
    );
    let gw = TestGateway::start(&text).await;
    let c = client();
    let id = create(&c, &gw, KEY_A).await;
    let url = gw.url(&format!("/v1/sora/generations/{id}/"));
    let mut f = platform.fault(FaultKind::Html502);
    f.times = Some(3);
    platform.inject(f);
    for _ in 0..3 {
        assert_eq!(get(&c, &url, Some(KEY_A)).await.status, 503);
    }
    // Open: fails fast without touching the platform.
    let seen = platform.forwarded().len();
    let r = get(&c, &url, Some(KEY_A)).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (503, "Upstream unavailable (circuit open)"));
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(platform.forwarded().len(), seen);
    let metrics = get(&c, &gw.admin_url("/metrics"), None).await;
    assert!(String::from_utf8_lossy(&metrics.body).contains("tollgate_circuit_open 1"));
    // After the open period a probe goes through and closes it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&c, &url, Some(KEY_A)).await.status, 200);
    assert_eq!(get(&c, &url, Some(KEY_A)).await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_body_ends_in_the_schema_within_the_timeout() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let mut f = platform.fault(FaultKind::SlowBody);
    f.latency_ms = Some(400);
    f.path_prefix = Some("/v1/sora/generate".into());
    platform.inject(f);
    let started = Instant::now();
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (503, "Upstream timed out"));
    assert!(started.elapsed() < Duration::from_secs(4));
    let t = gw.gateway.store().hold_totals().await.unwrap();
    assert_eq!((t.open, t.unknown), (0, 1), "the hold is kept as outcome unknown, not leaked open");
    gw.shutdown().await;
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    create(&c, &gw, KEY_A).await;
    assert_eq!(get(&c, &gw.admin_url("/healthz"), None).await.status, 200);
    assert_eq!(get(&c, &gw.admin_url("/readyz"), None).await.status, 200);
    let m = get(&c, &gw.admin_url("/metrics"), None).await;
    // The body is OpenMetrics text (it ends with `# EOF`), and says so.
    assert_eq!(m.headers["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    let text = String::from_utf8_lossy(&m.body);
    assert!(text.trim_end().ends_with("# EOF"));
    for want in [
        r#"tollgate_requests_total{tenant="a",route="/v1/sora/generate",status="201",outcome="forwarded"} 1"#,
        "tollgate_upstream_duration_seconds_count{route=\"/v1/sora/generate\"} 1",
        "tollgate_account_balance_usd 100",
        r#"tollgate_spend_usd{tenant="a"} 0.12"#,
        "tollgate_holds_open 0",
    ] {
        assert!(text.contains(want), "missing {want}\n{text}");
    }
    // Admin routes are not on the tenant port, and reload is off without an admin token.
    assert_eq!(get(&c, &gw.url("/metrics"), None).await.status, 404);
    let r = send(&c, request(http::Method::POST, &gw.admin_url("/admin/reload"), Some("x"), "")).await;
    assert_eq!(r.status, 403);
    gw.shutdown().await;
}

#[tokio::test]
async fn silent_sockets_and_half_h2_prefaces_are_closed_at_the_head_deadline() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(
        &config_text(platform.addr, "", &default_tenants())
            .replace("header_read_timeout_secs = 10", "header_read_timeout_secs = 1"),
    )
    .await;
    let mut socks = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        if i % 2 == 1 {
            // Half an HTTP/2 preface: hyper's auto builder waits for the rest.
            s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        }
        socks.push(s);
    }
    let started = Instant::now();
    for s in &mut socks {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(4), s.read(&mut buf))
            .await
            .expect("closed by the deadline")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
    }
    assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());
    eventually(Duration::from_secs(2), || {
        gw.log_lines().iter().filter(|l| l["outcome"] == "header_timeout" && l["status"] == 408).count() == 20
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_http2_and_keep_alive_connections_are_closed() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "idle_timeout_secs = 1", &default_tenants())).await;
    // HTTP/1.1 keep-alive: one request, then silence.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        format!("GET /v1/data/balance HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_A}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(4), s.read(&mut buf))
            .await
            .expect("closed after the idle timeout")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(
        started.elapsed() >= Duration::from_millis(900) && started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // HTTP/2: the connection is closed (GOAWAY) once idle; the client reconnects transparently.
    let c = h2_client();
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await.status, 200);
    gw.shutdown().await;
}

/// Reads from `s` until it closes; the time it took, or `None` if still open after `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A gateway with a 1 s head deadline and `idle` as its idle timeout.
async fn one_second_head_deadline(platform: &Platform, idle: &str) -> TestGateway {
    TestGateway::start(
        &config_text(platform.addr, idle, &default_tenants())
            .replace("header_read_timeout_secs = 10", "header_read_timeout_secs = 1"),
    )
    .await
}

/// Sends a whole balance request on keep-alive connection `s` and checks its 200.
async fn balance_is_served(s: &mut TcpStream) {
    s.write_all(
        format!("GET /v1/data/balance HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_A}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_lives_until_the_idle_timeout_not_the_head_deadline() {
    // The head deadline is for a head that has begun; a keep-alive connection with nothing in
    // flight and nothing sent is idle, and idle connections get `idle_timeout_secs`.
    let platform = Platform::start().await;
    let gw = one_second_head_deadline(&platform, "idle_timeout_secs = 3").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    balance_is_served(&mut s).await;
    // Past the head deadline, the connection still serves a second request, even one whose
    // head comes in two pieces (well within the deadline of its first byte)…
    assert_eq!(
        closed_within(&mut s, Duration::from_millis(1600)).await,
        None,
        "closed at the head deadline while idle"
    );
    s.write_all(b"GET /v1/data/balance HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(format!("authorization: Bearer {KEY_A}\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // …and closes once idle for the idle timeout, without a 408 in the access log.
    let closed = closed_within(&mut s, Duration::from_secs(6)).await.expect("closed after the idle timeout");
    assert!(closed >= Duration::from_millis(2500), "{closed:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = gw.log_lines();
    assert_eq!(lines.iter().filter(|l| l["status"] == 200).count(), 2);
    assert!(!lines.iter().any(|l| l["status"] == 408), "an idle close is not a refused head: {lines:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_later_head_that_dribbles_is_closed_at_the_head_deadline() {
    let platform = Platform::start().await;
    let gw = one_second_head_deadline(&platform, "idle_timeout_secs = 30").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    balance_is_served(&mut s).await;
    // Idle for a while first: the deadline runs from the head's first byte, not the last answer.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"GET /v1/data/balance HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let dribble = tokio::spawn(async move {
        for _ in 0..20 {
            if wr.write_all(b"x-a: b\r\n").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(4), rd.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a dribbled head kept its connection past the deadline");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(2500), "{took:?}");
    assert!(rest.is_empty(), "closed without an answer: {:?}", String::from_utf8_lossy(&rest));
    dribble.abort();
    eventually(Duration::from_secs(2), || {
        gw.log_lines().iter().any(|l| l["outcome"] == "header_timeout" && l["status"] == 408)
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn the_admin_probes_answer_while_silent_sockets_fill_its_cap() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(
        &config_text(platform.addr, "", &default_tenants())
            .replace("header_read_timeout_secs = 10", "header_read_timeout_secs = 30"),
    )
    .await;
    let mut socks = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect(gw.admin).await {
            socks.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let c = client();
    let started = Instant::now();
    let r = get(&c, &gw.admin_url("/healthz"), None).await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_probes_answer_while_idle_keep_alive_connections_fill_its_cap() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "idle_timeout_secs = 300", &default_tenants())).await;
    // 260 connections that each made one request and then stay open, idle (the cap is 256).
    // Before: the 257th connection waited for ever, so /readyz went unanswered.
    let mut parked = Vec::new();
    for _ in 0..260 {
        let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(gw.admin)).await else {
            break;
        };
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => parked.push(s),
            _ => break,
        }
    }
    assert!(parked.len() >= 256, "only {} connections were served", parked.len());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), get(&client(), &gw.admin_url("/readyz"), None))
        .await
        .expect("readyz answered");
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    gw.shutdown().await;
}
