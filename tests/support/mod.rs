//! Shared harness: a simulated platform and a real gateway, both in-process on 127.0.0.1:0,
//! talking over real sockets; a plain hyper client for the tenant side.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use tollgate::config::Config;
pub use tollgate::dev::mock::{Fault, FaultKind, MockOptions, MockPlatform, Recorded};
use tollgate::observe::access_log::AccessLog;
use tollgate::policy::money::Usd;
use tollgate::policy::tenants::key_digest;
use tollgate::{Gateway, Listeners};

pub const TOKEN: &str = "platform-secret-token";
pub const KEY_A: &str = "tenant-a-key";
pub const KEY_B: &str = "tenant-b-key";

/// The simulated platform on a free port.
pub struct Platform {
    pub addr: SocketAddr,
    pub mock: Arc<MockPlatform>,
    task: JoinHandle<()>,
}

impl Platform {
    pub async fn start() -> Platform {
        Platform::with(MockOptions { token: Some(TOKEN.into()), balance: usd("100"), ..Default::default() }).await
    }

    pub async fn with_balance(balance: &str) -> Platform {
        Platform::with(MockOptions { token: Some(TOKEN.into()), balance: usd(balance), ..Default::default() }).await
    }

    pub async fn with(opts: MockOptions) -> Platform {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mock = MockPlatform::new(opts);
        let task = tokio::spawn(mock.clone().serve(listener, std::future::pending()));
        Platform { addr, mock, task }
    }

    pub fn fault(&self, kind: FaultKind) -> Fault {
        Fault {
            kind,
            status: None,
            latency_ms: None,
            body: None,
            content_type: None,
            retry_after: None,
            path_prefix: None,
            times: None,
        }
    }

    pub fn inject(&self, f: Fault) {
        self.mock.push_fault(f);
    }

    /// Delays the next `times` requests whose path starts with `path_prefix` by `ms`.
    pub fn delay(&self, path_prefix: &str, ms: u64, times: u32) {
        let mut f = self.fault(FaultKind::Latency);
        f.latency_ms = Some(ms);
        f.path_prefix = Some(path_prefix.into());
        f.times = Some(times);
        self.inject(f);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.mock.recorded()
    }

    /// Requests other than the gateway's own background balance refreshes.
    pub fn forwarded(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path != "/v1/data/balance").collect()
    }

    pub fn requests_to(&self, path_prefix: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path.starts_with(path_prefix)).collect()
    }

    pub fn generate_calls(&self) -> usize {
        self.requests().iter().filter(|r| r.path.ends_with("/generate")).count()
    }

    pub fn balance_calls(&self) -> usize {
        self.requests_to("/v1/data/balance").len()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address nothing listens on.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

pub fn usd(s: &str) -> Usd {
    Usd::parse(s).unwrap()
}

/// A config for a platform at `upstream`; `extra` is TOML appended to the sections (use it to
/// override or add tenants). Tenants `a` (KEY_A) and `b` (KEY_B) have generous limits.
pub fn config_text(upstream: SocketAddr, server_extra: &str, tenants_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
request_timeout_secs = 10
shutdown_grace_secs = 5
header_read_timeout_secs = 10
{server_extra}

[upstream]
base_url = "http://{upstream}"
token_env = "TEST_PLATFORM_TOKEN"
connect_timeout_ms = 500
timeout_secs = 2
circuit_failure_threshold = 1000
# Every poll reaches the platform unless a test turns the status cache on.
status_cache_ms = 0

[store]
backend = "memory"

[balance]
cache_ttl_ms = 60000

# The reconciler is effectively off unless a test sets a short interval (it calls the platform).
[reconcile]
interval_secs = 3600
status_calls_per_minute = 30
unknown_after_secs = 900
lease_margin_ms = 10000

[pricing]
sora = {{ "10" = "0.12", "15" = "0.18" }}
veo = {{ "veo-3-fast" = "0.25", "veo-3-quality" = "0.50" }}
gemini = "0.02"
"kling/o1-photo" = "0.029"

{tenants_extra}
"#
    )
}

pub fn tenant(id: &str, key: &str, rps: u32, burst: u32, gpm: u32, budget: Option<&str>) -> String {
    let budget = budget.map(|b| format!("monthly_budget = \"{b}\"\n")).unwrap_or_default();
    format!(
        "[[tenants]]\nid = \"{id}\"\nkeys_sha256 = [\"{}\"]\nrequests_per_second = {rps}\nburst = {burst}\ngenerations_per_minute = {gpm}\n{budget}\n",
        hex::encode(key_digest(key))
    )
}

pub fn default_tenants() -> String {
    format!("{}{}", tenant("a", KEY_A, 1000, 1000, 1000, None), tenant("b", KEY_B, 1000, 1000, 1000, None))
}

/// A fresh directory under the system's temp dir.
pub fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tollgate-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Tenants' webhook signing secret in tests (32 bytes of 0x2a).
pub const WEBHOOK_SECRET: &str = "whsec_KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

pub fn env() -> HashMap<String, String> {
    HashMap::from([
        ("TEST_PLATFORM_TOKEN".to_string(), TOKEN.to_string()),
        ("TEST_ADMIN_TOKEN".to_string(), "admin-secret-for-tests-0123456789abcdef".to_string()),
        ("TEST_WEBHOOK_SECRET".to_string(), WEBHOOK_SECRET.to_string()),
    ])
}

/// A gateway serving on free ports.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub logs: Arc<Mutex<Vec<String>>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestGateway {
    pub async fn start(text: &str) -> TestGateway {
        let config = Config::from_toml(text, &env()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        TestGateway::start_config(config, None).await
    }

    /// Binds the tenant port first, so the config can name it (`{addr}` in `text`).
    pub async fn start_templated(text: &str) -> TestGateway {
        let tenant = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let text = text.replace("{addr}", &tenant.local_addr().unwrap().to_string());
        let config = Config::from_toml(&text, &env()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        TestGateway::start_on(config, None, tenant).await
    }

    pub async fn start_config(config: Config, reload: Option<tollgate::gateway::ReloadSource>) -> TestGateway {
        TestGateway::start_on(config, reload, TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    pub async fn start_on(
        config: Config,
        reload: Option<tollgate::gateway::ReloadSource>,
        tenant: TcpListener,
    ) -> TestGateway {
        let (log, logs) = AccessLog::memory();
        let gateway = tollgate::build(&config, log, reload).await.expect("store opens");
        let listeners = Listeners { tenant, admin: TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let (addr, admin) = (listeners.tenant.local_addr().unwrap(), listeners.admin.local_addr().unwrap());
        let (stop, rx) = oneshot::channel();
        let gw = gateway.clone();
        let task = tokio::spawn(async move {
            tollgate::run(&config, gw, listeners, async move {
                let _ = rx.await;
            })
            .await
        });
        TestGateway { addr, admin, gateway, logs, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.logs.lock().unwrap().iter().map(|l| serde_json::from_str(l).expect("log line is JSON")).collect()
    }

    /// Stops accepting and waits for the drain; panics in server tasks surface here.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t).await.expect("drained in time").expect("server task");
        }
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// A response read whole.
pub struct Rsp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Rsp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn detail(&self) -> String {
        let v = self.json();
        assert_eq!(v.as_object().map(|o| o.len()), Some(1), "error body must be exactly {{\"detail\"}}: {v}");
        assert_eq!(self.headers["content-type"], "application/json");
        v["detail"].as_str().expect("detail is a string").to_string()
    }
}

pub fn request(method: Method, url: &str, key: Option<&str>, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(url).header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Full::new(body.into())).unwrap()
}

pub async fn send(c: &HttpClient, req: Request<Full<Bytes>>) -> Rsp {
    let rsp = tokio::time::timeout(Duration::from_secs(90), c.request(req)).await.expect("no hang").expect("request");
    let status = rsp.status();
    let headers = rsp.headers().clone();
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    Rsp { status, headers, body }
}

pub async fn get(c: &HttpClient, url: &str, key: Option<&str>) -> Rsp {
    send(c, request(Method::GET, url, key, Bytes::new())).await
}

pub async fn post(c: &HttpClient, url: &str, key: Option<&str>, body: &str) -> Rsp {
    send(c, request(Method::POST, url, key, body.to_string())).await
}

pub const SORA: &str = r#"{"prompt": "A beautiful sunset over the ocean", "duration": 10}"#;

/// Creates a Sora generation as `key` and returns its id.
pub async fn create(c: &HttpClient, gw: &TestGateway, key: &str) -> String {
    let r = post(c, &gw.url("/v1/sora/generate"), Some(key), SORA).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.json()["generation_id"].as_str().unwrap().to_string()
}

/// Turns the reconciler on: a pass every second, unknown outcomes released after `unknown_after`
/// seconds, leases `margin_ms` past the upstream timeout.
pub fn fast_reconcile(text: &str, unknown_after: u64, margin_ms: u64) -> String {
    text.replace("interval_secs = 3600", "interval_secs = 1")
        .replace("status_calls_per_minute = 30", "status_calls_per_minute = 6000")
        .replace("unknown_after_secs = 900", &format!("unknown_after_secs = {unknown_after}"))
        .replace("lease_margin_ms = 10000", &format!("lease_margin_ms = {margin_ms}"))
}

/// Waits (polling) until an async condition holds.
pub async fn until<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    while !check().await {
        assert!(tokio::time::Instant::now() < until, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Retries `check` until it holds or `deadline` passes (asynchronous state only).
pub async fn eventually(deadline: Duration, mut check: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + deadline;
    while !check() {
        assert!(tokio::time::Instant::now() < until, "condition not met within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Which store a fault test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Sqlite,
    Redis,
}

/// A store section for `backend`; Redis gets a private server (kept alive by the returned guard).
pub fn with_backend(text: &str, backend: Backend) -> (String, Option<tollgate::dev::testkit::RedisServer>) {
    match backend {
        Backend::Memory => (text.to_string(), None),
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join(format!("tollgate-fault-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            (
                text.replace(
                    "backend = \"memory\"",
                    &format!("backend = \"sqlite\"\npath = \"{}\"", dir.join("t.db").display()),
                ),
                None,
            )
        }
        Backend::Redis => {
            let server = tollgate::dev::testkit::RedisServer::start();
            let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
            let t = text.replace(
                "backend = \"memory\"",
                &format!("backend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"{prefix}\"", server.url),
            );
            (t, Some(server))
        }
    }
}

/// Sends an HTTP/1.1 request over a raw socket and closes the socket after `after`, without
/// reading the answer: a client that hangs up.
pub async fn hang_up_after(addr: SocketAddr, path: &str, key: &str, body: &str, extra_headers: &str, after: Duration) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra_headers}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    tokio::time::sleep(after).await;
    drop(s);
}

/// A byte string and the delay for frames that contain it.
pub type DelayMarker = Arc<Mutex<Option<(Vec<u8>, Duration)>>>;

/// A TCP proxy in front of a Redis unix socket that can stall every byte, or delay the frames
/// that contain a marker (to slow one script call down past the store timeout).
pub struct RedisProxy {
    pub url: String,
    pub stalled: Arc<std::sync::atomic::AtomicBool>,
    pub delay_marker: DelayMarker,
    task: JoinHandle<()>,
}

impl RedisProxy {
    pub async fn start(redis_url: &str) -> RedisProxy {
        let sock = redis_url.trim_start_matches("unix://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let delay_marker: DelayMarker = Arc::new(Mutex::new(None));
        let (st, dm) = (stalled.clone(), delay_marker.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let Ok(server) = tokio::net::UnixStream::connect(&sock).await else { continue };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, st.clone(), Some(dm.clone())));
                tokio::spawn(pipe(sr, cw, st.clone(), None));
            }
        });
        RedisProxy { url, stalled, delay_marker, task }
    }

    pub fn stall(&self, on: bool) {
        self.stalled.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for RedisProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut r: impl tokio::io::AsyncRead + Unpin,
    mut w: impl tokio::io::AsyncWrite + Unpin,
    stalled: Arc<std::sync::atomic::AtomicBool>,
    marker: Option<DelayMarker>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let delay = marker.as_ref().and_then(|m| {
            let m = m.lock().unwrap();
            m.as_ref()
                .filter(|(needle, _)| buf[..n].windows(needle.len()).any(|w| w == needle.as_slice()))
                .map(|(_, d)| *d)
        });
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Hex SHA-256 of a prompt, as holds record it.
pub fn prompt_digest(prompt: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(prompt.as_bytes()))
}

/// The tenant's spend this month, as the store has it.
pub async fn spend_of(gw: &TestGateway, tenant: &str) -> Usd {
    try_spend_of(gw, tenant).await.unwrap()
}

/// As [`spend_of`], with the store's error when it cannot answer.
pub async fn try_spend_of(gw: &TestGateway, tenant: &str) -> Result<Usd, tollgate::store::StoreError> {
    let month = tollgate::store::month_of(tollgate::store::now_ms());
    Ok(gw
        .gateway
        .store()
        .spend_by_tenant(&month)
        .await?
        .into_iter()
        .find(|(t, _)| &**t == tenant)
        .map(|(_, s)| s)
        .unwrap_or_default())
}

/// One webhook as a tenant's receiver got it.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: std::time::Instant,
    pub answered: u16,
}

/// A tenant's webhook receiver on loopback: records every POST; answers 503 while `down`.
pub struct Receiver {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Received>>>,
    pub down: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, d) = (got.clone(), down.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else { return };
                let (g, d) = (g.clone(), d.clone());
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (g, d) = (g.clone(), d.clone());
                    async move {
                        let headers = req.headers().clone();
                        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        let answered = if d.load(std::sync::atomic::Ordering::SeqCst) { 503 } else { 204 };
                        g.lock().unwrap().push(Received { headers, body, at: std::time::Instant::now(), answered });
                        let mut rsp = http::Response::new(Full::new(Bytes::new()));
                        *rsp.status_mut() = StatusCode::from_u16(answered).unwrap();
                        Ok::<_, std::convert::Infallible>(rsp)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(s), svc),
                );
            }
        });
        Receiver { addr, got, down, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/tollgate", self.addr)
    }

    /// Deliveries it accepted (2xx).
    pub fn accepted(&self) -> Vec<Received> {
        self.got.lock().unwrap().iter().filter(|r| r.answered < 300).cloned().collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Verifies a Standard Webhooks signature with its own HMAC (not the gateway's code).
pub fn verify_signature(secret: &str, r: &Received) -> bool {
    use hmac::Mac;
    let key = base64_simd::STANDARD.decode_to_vec(secret.trim_start_matches("whsec_")).unwrap();
    let id = r.headers["webhook-id"].to_str().unwrap();
    let ts = r.headers["webhook-timestamp"].to_str().unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&r.body);
    let expected = format!("v1,{}", base64_simd::STANDARD.encode_to_string(mac.finalize().into_bytes()));
    r.headers["webhook-signature"].to_str().unwrap().split(' ').any(|s| s == expected)
}

/// The sign-in form as a browser gets it: its cookie (`tollgate_login=…`) and its CSRF token.
pub async fn login_form(c: &HttpClient, gw: &TestGateway) -> (String, String) {
    let r = get(c, &gw.admin_url("/dashboard"), None).await;
    let cookie = r.headers["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("tollgate_login="), "{cookie}");
    let html = String::from_utf8_lossy(&r.body).into_owned();
    let at = html.find("name=\"login_csrf\" value=\"").expect("the form carries a CSRF token")
        + "name=\"login_csrf\" value=\"".len();
    (cookie, html[at..at + html[at..].find('"').unwrap()].to_string())
}

/// A sign-in POST from the form (`token` form-encoded by the caller when needed).
pub async fn login_post(c: &HttpClient, gw: &TestGateway, token: &str, extra: &[(&str, &str)]) -> Rsp {
    let (cookie, csrf) = login_form(c, gw).await;
    let mut b = Request::builder()
        .method(Method::POST)
        .uri(gw.admin_url("/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", cookie);
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::new(Bytes::from(format!("login_csrf={csrf}&token={token}")))).unwrap()).await
}

/// Signs in to the dashboard of `gw` with `token` and returns the page at `path` (HTML).
pub async fn dashboard_page(c: &HttpClient, gw: &TestGateway, token: &str, path: &str) -> String {
    let r = login_post(c, gw, token, &[]).await;
    assert_eq!(r.status, 303, "{:?}", r.body);
    let cookie = r.headers["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let req =
        Request::builder().uri(gw.admin_url(path)).header("cookie", cookie).body(Full::new(Bytes::new())).unwrap();
    let r = send(c, req).await;
    assert_eq!(r.status, 200, "{path}");
    String::from_utf8_lossy(&r.body).into_owned()
}
