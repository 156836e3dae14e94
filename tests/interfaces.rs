//! The gateway as a tower service: tower-http's layers around it (panics, sensitive headers), its
//! request ids, and mounted inside another server (`examples/embed.rs`), over real sockets.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::net::TcpListener;
use tower::Service;

/// A handler that panics on `/boom` answers 500 `{"detail": …}` with the request's id and an
/// access line, and the server keeps serving, on the same connection too.
#[tokio::test]
async fn a_panic_becomes_a_500_with_an_access_line_and_the_server_keeps_serving() {
    let platform = Platform::start().await;
    let config =
        tollgate::config::Config::from_toml(&config_text(platform.addr, "", &default_tenants()), &env()).unwrap();
    let (log, lines) = tollgate::observe::access_log::AccessLog::memory();
    let gw = tollgate::build(&config, log, None).await.unwrap();
    let gateway = tollgate::gateway::service::GatewayService(gw.clone());
    let panicky = tower::service_fn(move |req: http::Request<tollgate::server::Lingering>| {
        let mut gateway = gateway.clone();
        async move {
            // SetSensitiveRequestHeaders ran first: the key never shows in a Debug of the request.
            assert!(req.headers().get("authorization").is_none_or(|v| v.is_sensitive()), "{:?}", req.headers());
            if req.uri().path() == "/v1/sora/generations/boom" {
                panic!("a bug on the request path");
            }
            gateway.call(req).await
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = tollgate::server::ServerOptions {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 16,
        shutdown_grace: Duration::from_secs(1),
        tls: None,
    };
    let gw2 = gw.clone();
    let on_refusal: tollgate::server::OnRefusal = Arc::new(move |r| gw2.protocol_refusal(r));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tollgate::server::serve(
        listener,
        opts,
        tollgate::gateway::service::layered(gw.clone(), panicky),
        on_refusal,
        async move {
            let _ = stopped.await;
        },
    ));

    let c = client(); // one pooled keep-alive connection for both requests
    let mut req = request(http::Method::GET, &format!("http://{addr}/v1/sora/generations/boom"), Some(KEY_A), "");
    req.headers_mut().insert("x-request-id", "panic-probe-1".parse().unwrap());
    let r = send(&c, req).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json(), serde_json::json!({ "detail": "Internal server error" }));
    assert_eq!(r.headers["x-request-id"], "panic-probe-1");
    let line = lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["request_id"] == "panic-probe-1")
        .expect("an access line for the panic");
    assert_eq!(
        (line["status"].as_u64(), line["outcome"].as_str(), line["route"].as_str()),
        (Some(500), Some("panic"), Some("/v1/sora/generations/{id}"))
    );

    // Without a usable id of its own, the panic's 500 and its access line share a fresh one.
    let mut req = request(http::Method::GET, &format!("http://{addr}/v1/sora/generations/boom"), Some(KEY_A), "");
    req.headers_mut().insert("x-request-id", "not sane!".parse().unwrap());
    let r = send(&c, req).await;
    assert_eq!(r.status, 500);
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    assert!(lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .any(|v| v["request_id"] == id.as_str() && v["outcome"] == "panic"));

    let r = get(&c, &format!("http://{addr}/v1/data/balance"), Some(KEY_A)).await;
    assert_eq!(r.status, 200, "still serving after the panic");
    let _ = stop.send(());
    let _ = server.await;
}

/// A sane client id is echoed and logged; an insane one is replaced by a fresh UUID.
#[tokio::test]
async fn request_ids_are_kept_when_sane_and_replaced_otherwise() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    for (sent, kept) in [("client-id_1.2:3", true), ("has spaces", false), ("", false)] {
        let mut req = request(http::Method::GET, &gw.url("/v1/data/balance"), Some(KEY_A), "");
        req.headers_mut().insert("x-request-id", sent.parse().unwrap());
        let r = send(&c, req).await;
        let got = r.headers["x-request-id"].to_str().unwrap().to_string();
        if kept {
            assert_eq!(got, sent);
        } else {
            assert!(uuid::Uuid::parse_str(&got).is_ok(), "{got}");
        }
        assert!(gw.log_lines().iter().any(|l| l["request_id"] == got.as_str()), "the access line carries {got}");
        // The platform got the same id.
        assert!(platform.mock.recorded().iter().any(|r| r.headers.iter().any(|h| h == "x-request-id")));
    }
    let r = get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await;
    assert!(uuid::Uuid::parse_str(r.headers["x-request-id"].to_str().unwrap()).is_ok());
    gw.shutdown().await;
}

/// `examples/embed.rs`, run as a user would: the host app's own route and the gateway's routes
/// side by side on one listener.
#[tokio::test]
async fn the_embedding_example_serves_its_own_route_and_the_gateway() {
    let platform = Platform::start().await;
    let dir = temp_dir();
    let path = dir.join("tollgate.toml");
    std::fs::write(&path, config_text(platform.addr, "", &default_tenants())).unwrap();
    // target/debug/deps/interfaces-… → target/debug/examples/embed
    let exe = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("examples/embed");
    assert!(exe.exists(), "{} is built by cargo test", exe.display());
    let mut child = Command::new(&exe)
        .arg(&path)
        .arg("127.0.0.1:0")
        .env("TEST_PLATFORM_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let addr = first.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{first}")).to_string();
    std::thread::spawn(move || for _ in out.lines() {});
    let c = client();
    let r = get(&c, &format!("http://{addr}/hello"), None).await;
    assert_eq!((r.status.as_u16(), String::from_utf8_lossy(&r.body).as_ref()), (200, "hello from the host app\n"));
    let r = post(&c, &format!("http://{addr}/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!(r.status, 201);
    assert!(r.headers.contains_key("x-request-id"));
    assert_eq!(get(&c, &format!("http://{addr}/v1/data/balance"), None).await.detail(), "Missing credentials");
    child.kill().unwrap();
    let _ = child.wait();
}

/// W3C trace context: the caller's trace reaches the platform with the gateway's span as parent,
/// `tracestate` passes unchanged, and the access line carries the trace id. Without one the
/// gateway starts a trace of its own.
#[tokio::test]
async fn trace_context_reaches_the_platform_and_the_access_line() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = request(http::Method::POST, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA);
    req.headers_mut().insert("traceparent", format!("00-{trace}-00f067aa0ba902b7-01").parse().unwrap());
    req.headers_mut().insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
    req.headers_mut().insert("x-request-id", "traced-1".parse().unwrap());
    assert_eq!(send(&c, req).await.status, 201);
    let sent = platform.mock.recorded().into_iter().find(|r| r.path.ends_with("/generate")).unwrap();
    let (parent, state) = sent.trace;
    let parent = parent.expect("traceparent sent to the platform");
    let parts: Vec<&str> = parent.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", trace, "01"), "{parent}");
    assert_ne!(parts[2], "00f067aa0ba902b7", "the gateway's own span is the platform's parent");
    assert_eq!(state.as_deref(), Some("congo=t61rcWkgMzE"));
    eventually(Duration::from_secs(2), || gw.log_lines().iter().any(|l| l["request_id"] == "traced-1")).await;
    let line = gw.log_lines().into_iter().find(|l| l["request_id"] == "traced-1").unwrap();
    assert_eq!(line["trace_id"], trace);

    // No traceparent (or an invalid one): a trace of the gateway's own, logged and sent.
    let mut req = request(http::Method::GET, &gw.url("/v1/sora/generations"), Some(KEY_A), "");
    req.headers_mut().insert("traceparent", "00-not-a-trace".parse().unwrap());
    req.headers_mut().insert("x-request-id", "traced-2".parse().unwrap());
    assert_eq!(send(&c, req).await.status, 200);
    eventually(Duration::from_secs(2), || gw.log_lines().iter().any(|l| l["request_id"] == "traced-2")).await;
    let line = gw.log_lines().into_iter().find(|l| l["request_id"] == "traced-2").unwrap();
    let own = line["trace_id"].as_str().unwrap().to_string();
    assert!(own.len() == 32 && own != trace, "{own}");
    let polled = platform.mock.recorded().into_iter().rev().find(|r| r.path.contains("/generations")).unwrap();
    assert!(polled.trace.0.unwrap().contains(&own));
    gw.shutdown().await;
}

/// The admin listener serves the OpenAPI document as JSON, covering every family's routes.
#[tokio::test]
async fn the_admin_listener_serves_the_openapi_document() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let r = get(&client(), &gw.admin_url("/openapi.json"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    for &f in tollgate::policy::catalog::Catalog::builtin().families() {
        let slash = if f == tollgate::policy::family::Family::builtin("sora") { "/" } else { "" };
        for path in [
            format!("/v1/{}/generate", f.path()),
            format!("/v1/{}/generations", f.path()),
            format!("/v1/{}/generations/{{id}}{slash}", f.path()),
        ] {
            assert!(doc["paths"].get(&path).is_some(), "{path} is not documented");
        }
    }
    for path in ["/v1/data/balance", "/v1/gateway/usage", "/webhooks/runblob/{token}"] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
    gw.shutdown().await;
}
