//! `tollgate mock-platform`: the platform's documented API, simulated in memory, with fault
//! injection. Used by the demo, the integration tests and the load benchmark.
//!
//! - A balance that decreases by each generation's price (and is refunded on failure).
//! - Generations moving pending → processing → completed on a fast clock; a prompt containing
//!   `[fail]` ends `failed` instead (and is refunded), with the platform's people message;
//!   `[fail:TEXT]` fails with TEXT as the message.
//! - The documented errors: 401 `Missing credentials`, 402 `INSUFFICIENT_CREDITS`, 404
//!   `Generation not found`, 422 pydantic lists, 400 for both image fields.
//! - Faults, scripted per request through `POST /_mock/faults` or at random from the command
//!   line: latency, HTML 502, connection reset (before or mid-response), malformed JSON, any
//!   status with any body, slow body.
//! - Every request it receives is recorded (`GET /_mock/requests`), so tests can check what the
//!   gateway sent (token injected, tenant key stripped).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::policy::family::Family;
use crate::policy::money::Usd;

type MockBody = BoxBody<Bytes, std::io::Error>;

/// Simulated platform settings.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Bearer token required on platform routes (`None`: any bearer accepted).
    pub token: Option<String>,
    /// Starting account balance.
    pub balance: Usd,
    /// Time a generation spends pending, then processing.
    pub step: Duration,
    /// A fault applied at random to platform routes, with its probability.
    pub random_fault: Option<(Fault, f64)>,
    /// Keep a record of every request (tests); off for long runs, where it would only grow.
    pub record: bool,
    /// Echo `callback_url` in status and list answers (a platform that does would show a
    /// tenant the gateway's relay URL unless the gateway scrubs it).
    pub echo_callback_url: bool,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            token: None,
            balance: Usd::from_micros(100_000_000),
            step: Duration::from_millis(500),
            random_fault: None,
            record: true,
            echo_callback_url: false,
        }
    }
}

/// What goes wrong.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Wait `latency_ms`, then answer normally.
    Latency,
    /// 502 with an HTML page.
    Html502,
    /// Close the connection without answering.
    Reset,
    /// Send headers and half a body, then close.
    ResetMidBody,
    /// `status` (default 500) with a truncated JSON body.
    MalformedJson,
    /// `status` with `body` (default `{"detail": "<canonical reason>"}`) and `content_type`.
    Status,
    /// `status` (default 200) with the normal body sent slowly, `latency_ms` per 16 bytes.
    SlowBody,
    /// Act on the request (charge a generate), then wait `latency_ms` before answering: a
    /// platform that charges and answers late.
    LateAnswer,
}

/// One scripted fault.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Fault {
    /// What happens.
    pub kind: FaultKind,
    /// Status for `status`, `malformed_json`.
    #[serde(default)]
    pub status: Option<u16>,
    /// Delay for `latency`, `slow_body`.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Raw body for `status`.
    #[serde(default)]
    pub body: Option<String>,
    /// Content type for `status` (default `application/json`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// `Retry-After` header to send.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// Only requests whose path starts with this.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// How many requests it applies to (default 1).
    #[serde(default)]
    pub times: Option<u32>,
}

/// A request as the platform received it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `Authorization` header as received.
    pub authorization: Option<String>,
    /// `Host` header(s) as received (one, from a well-behaved client).
    pub host: Vec<String>,
    /// All header names received.
    pub headers: Vec<String>,
    /// `traceparent` and `tracestate` as received.
    pub trace: (Option<String>, Option<String>),
    /// Body size.
    pub body_bytes: usize,
    /// SHA-256 of the body (hex), to check bytes were forwarded unchanged.
    pub body_sha256: String,
}

struct Generation {
    family: Family,
    created: Instant,
    created_at: String,
    prompt: String,
    price: Usd,
    /// The failure message, for a generation that fails.
    fails: Option<String>,
    refunded: bool,
    /// Request settings echoed in status and list answers, as the platform's examples show.
    echo: serde_json::Map<String, serde_json::Value>,
}

struct State {
    balance: Usd,
    // A BTreeMap grows without rehashing: a HashMap doubling at a million generations stalled
    // the simulated platform for a second in the middle of a load run.
    generations: BTreeMap<String, Generation>,
    order: Vec<String>,
    faults: VecDeque<Fault>,
    recorded: Vec<Recorded>,
    /// Generations whose `callback_url` is still to be called: (id, url).
    callbacks: Vec<(String, String)>,
    /// Webhooks sent: (url, body, status answered or 0 for none, when sent).
    sent: Vec<(String, Bytes, u16, Instant)>,
}

/// The simulated platform.
pub struct MockPlatform {
    opts: MockOptions,
    state: Mutex<State>,
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<MockBody> {
    let mut rsp = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed());
    *rsp.status_mut() = status;
    if let Ok(ct) = HeaderValue::from_str(content_type) {
        rsp.headers_mut().insert(CONTENT_TYPE, ct);
    }
    rsp
}

fn json_rsp(status: StatusCode, v: serde_json::Value) -> Response<MockBody> {
    full(status, "application/json", v.to_string())
}

fn detail(status: StatusCode, d: &str) -> Response<MockBody> {
    json_rsp(status, json!({ "detail": d }))
}

/// The mock's price list (matches `config/tollgate.toml`).
pub fn mock_price(family: Family, body: &serde_json::Value) -> Usd {
    let s = |k: &str| body.get(k).map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
    let p = match family.path() {
        "sora" => {
            if s("duration").as_deref() == Some("15") {
                "0.1800"
            } else {
                "0.1200"
            }
        }
        "veo" => match s("model").or_else(|| s("model_type")).as_deref() {
            Some("veo-3-quality") => "0.5000",
            _ => "0.2500",
        },
        "kling" => {
            if s("duration").as_deref() == Some("10") {
                "0.5000"
            } else {
                "0.2500"
            }
        }
        "kling/o1-video" => {
            if s("duration").as_deref() == Some("10") {
                "0.60"
            } else {
                "0.30"
            }
        }
        "kling/o3-video" => match s("duration").as_deref() {
            Some("15") => "0.4500",
            Some("10") => "0.3000",
            _ => "0.1500",
        },
        "kling/o1-photo" => "0.0290",
        "kling/o3-photo" => match s("img_resolution").as_deref() {
            Some("1k") => "0.0300",
            Some("2k") => "0.0400",
            _ => "0.0500",
        },
        "gemini" => match s("model").as_deref() {
            Some("pro") => "0.0500",
            Some("v2") => "0.0400",
            _ => "0.0200",
        },
        "chatgpt-images" => "0.0390",
        "seedance" => "0.2000",
        // A model the platform added after this list: one flat price.
        _ => "0.1000",
    };
    Usd::parse(p).unwrap_or_default()
}

// === impl MockPlatform ===

impl MockPlatform {
    /// A platform with these options.
    pub fn new(opts: MockOptions) -> Arc<MockPlatform> {
        let balance = opts.balance;
        Arc::new(MockPlatform {
            opts,
            state: Mutex::new(State {
                balance,
                generations: BTreeMap::new(),
                order: Vec::new(),
                faults: VecDeque::new(),
                recorded: Vec::new(),
                callbacks: Vec::new(),
                sent: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves on `listener` until the task is dropped or `shutdown` resolves.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl std::future::Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                _ = &mut shutdown => return,
            };
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            let svc = hyper::service::service_fn(move |req| {
                let me = me.clone();
                async move { me.handle(req).await }
            });
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    }

    /// Current balance.
    pub fn balance(&self) -> Usd {
        self.lock().balance
    }

    /// Sets the balance.
    pub fn set_balance(&self, b: Usd) {
        self.lock().balance = b;
    }

    /// What the account was charged and not refunded, in total (a failed generation's status is
    /// brought up to date first, which refunds it as the platform does).
    pub fn charged_total(&self) -> Usd {
        let mut st = self.lock();
        let ids: Vec<String> = st.order.clone();
        for id in &ids {
            self.status_json(&mut st, id);
        }
        ids.iter().filter_map(|id| st.generations.get(id)).filter(|g| !g.refunded).map(|g| g.price).sum()
    }

    /// Every generation created, oldest first: (id, family path, prompt).
    pub fn generations(&self) -> Vec<(String, String, String)> {
        let st = self.lock();
        st.order
            .iter()
            .filter_map(|id| {
                st.generations.get(id).map(|g| (id.clone(), g.family.path().to_string(), g.prompt.clone()))
            })
            .collect()
    }

    /// Webhooks the platform sent: (url, body, status the receiver answered or 0, when).
    pub fn webhooks_sent(&self) -> Vec<(String, Bytes, u16, Instant)> {
        self.lock().sent.clone()
    }

    /// Once the generation is final, POSTs its webhook to `url` (as the platform does: the final
    /// status object, without the prompt), retrying a few times on failure.
    async fn call_back(self: Arc<Self>, id: String, url: String) {
        tokio::time::sleep(self.opts.step * 2 + Duration::from_millis(20)).await;
        let payload = {
            let mut st = self.lock();
            let Some(mut v) = self.status_json(&mut st, &id) else { return };
            if let Some(o) = v.as_object_mut() {
                o.remove("prompt");
                o.remove("progress_pct");
                o.remove("created_at");
            }
            Bytes::from(v.to_string())
        };
        let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        for attempt in 0..3 {
            let Ok(uri) = url.parse::<http::Uri>() else { return };
            let mut req = Request::new(Full::new(payload.clone()));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = uri;
            req.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let at = Instant::now();
            let status = match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                Ok(Ok(rsp)) => rsp.status().as_u16(),
                _ => 0,
            };
            self.lock().sent.push((url.clone(), payload.clone(), status, at));
            if (200..300).contains(&status) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
        }
    }

    /// Queues a fault.
    pub fn push_fault(&self, f: Fault) {
        self.lock().faults.push_back(f);
    }

    /// Requests received so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.lock().recorded.clone()
    }

    fn next_fault(&self, path: &str) -> Option<Fault> {
        let mut st = self.lock();
        let idx = st.faults.iter().position(|f| f.path_prefix.as_deref().is_none_or(|p| path.starts_with(p)));
        if let Some(i) = idx {
            let f = st.faults[i].clone();
            let left = f.times.unwrap_or(1).saturating_sub(1);
            if left == 0 {
                st.faults.remove(i);
            } else {
                st.faults[i].times = Some(left);
            }
            return Some(f);
        }
        drop(st);
        match &self.opts.random_fault {
            Some((f, p)) if rand::thread_rng().gen_bool(p.clamp(0.0, 1.0)) => Some(f.clone()),
            _ => None,
        }
    }

    /// One request. `Err` makes hyper drop the connection (the `reset` fault).
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<MockBody>, std::io::Error> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
        if let Some(rest) = parts.uri.path().strip_prefix("/_mock/") {
            return Ok(self.control(&parts.method, rest, &body));
        }
        if self.opts.record {
            use sha2::Digest;
            let rec = Recorded {
                method: parts.method.to_string(),
                path: path.clone(),
                authorization: parts
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                host: parts
                    .headers
                    .get_all(http::header::HOST)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(str::to_string)
                    .collect(),
                headers: parts.headers.keys().map(|k| k.to_string()).collect(),
                trace: (
                    parts.headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_string),
                    parts.headers.get("tracestate").and_then(|v| v.to_str().ok()).map(str::to_string),
                ),
                body_bytes: body.len(),
                body_sha256: hex::encode(sha2::Sha256::digest(&body)),
            };
            self.lock().recorded.push(rec);
        }
        let fault = self.next_fault(&path);
        if let Some(f) = &fault {
            let delay = Duration::from_millis(f.latency_ms.unwrap_or(0));
            match f.kind {
                FaultKind::Latency => tokio::time::sleep(delay).await,
                FaultKind::Reset => {
                    return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected reset"))
                }
                FaultKind::Html502 => {
                    return Ok(full(StatusCode::BAD_GATEWAY, "text/html", "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>"));
                }
                FaultKind::MalformedJson => {
                    let status =
                        StatusCode::from_u16(f.status.unwrap_or(500)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    return Ok(full(status, "application/json", r#"{"detail": "Internal err"#));
                }
                FaultKind::Status => {
                    let status =
                        StatusCode::from_u16(f.status.unwrap_or(500)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    let body = f.body.clone().unwrap_or_else(|| {
                        json!({ "detail": status.canonical_reason().unwrap_or("error") }).to_string()
                    });
                    let mut rsp = full(status, f.content_type.as_deref().unwrap_or("application/json"), body);
                    if let Some(r) = f.retry_after {
                        rsp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(r));
                    }
                    return Ok(rsp);
                }
                FaultKind::ResetMidBody | FaultKind::SlowBody | FaultKind::LateAnswer => {}
            }
        }

        let rsp = self.platform(&parts.method, parts.uri.path(), parts.uri.query(), &parts.headers, &body);
        let callbacks = std::mem::take(&mut self.lock().callbacks);
        for (id, url) in callbacks {
            tokio::spawn(self.clone().call_back(id, url));
        }
        if let Some(f) = fault.as_ref().filter(|f| f.kind == FaultKind::LateAnswer) {
            tokio::time::sleep(Duration::from_millis(f.latency_ms.unwrap_or(0))).await;
        }
        Ok(match fault {
            Some(f) if f.kind == FaultKind::ResetMidBody => trickle(rsp, None).await,
            Some(f) if f.kind == FaultKind::SlowBody => {
                trickle(rsp, Some(Duration::from_millis(f.latency_ms.unwrap_or(100)))).await
            }
            _ => rsp,
        })
    }

    fn control(&self, method: &Method, rest: &str, body: &[u8]) -> Response<MockBody> {
        match (method, rest) {
            (&Method::POST, "faults") => match serde_json::from_slice::<Fault>(body) {
                Ok(f) => {
                    self.push_fault(f);
                    json_rsp(StatusCode::OK, json!({ "queued": self.lock().faults.len() }))
                }
                Err(e) => detail(StatusCode::BAD_REQUEST, &e.to_string()),
            },
            (&Method::POST, "balance") => {
                let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                match v.get("balance").and_then(Usd::from_json) {
                    Some(b) => {
                        self.set_balance(b);
                        json_rsp(StatusCode::OK, json!({ "balance": b.to_string() }))
                    }
                    None => detail(StatusCode::BAD_REQUEST, "expected {\"balance\": \"<decimal>\"}"),
                }
            }
            (&Method::GET, "requests") => {
                json_rsp(StatusCode::OK, serde_json::to_value(self.recorded()).unwrap_or_default())
            }
            (&Method::POST, "reset") => {
                let mut st = self.lock();
                st.faults.clear();
                st.recorded.clear();
                json_rsp(StatusCode::OK, json!({ "reset": true }))
            }
            _ => detail(StatusCode::NOT_FOUND, "Not found"),
        }
    }

    fn authorized(&self, headers: &http::HeaderMap) -> bool {
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match (&self.opts.token, presented) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(t), Some(p)) => t == p,
        }
    }

    fn platform(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Response<MockBody> {
        if !self.authorized(headers) {
            return detail(StatusCode::UNAUTHORIZED, "Missing credentials");
        }
        if path == "/v1/data/balance" && method == Method::GET {
            return json_rsp(StatusCode::OK, json!({ "balance": self.balance().to_string() }));
        }
        let Some(rest) = path.strip_prefix("/v1/") else { return detail(StatusCode::NOT_FOUND, "Not Found") };
        // Any `/v1/{family}/generate` or `.../generations…`: the platform has more models than
        // any one catalog (`Family::named` gives the id field of the catalog that has it).
        let split = rest.find("/generat").map(|i| (&rest[..i], &rest[i + 1..]));
        let Some((family, tail)) = split.filter(|(f, _)| !f.is_empty()).map(|(f, t)| (Family::named(f), t)) else {
            return detail(StatusCode::NOT_FOUND, "Not Found");
        };
        match (method, tail) {
            (&Method::POST, "generate") => self.generate(family, body),
            (&Method::GET, "generations") => self.list(family, query),
            (&Method::GET, t) if t.starts_with("generations/") => {
                let id = t.trim_start_matches("generations/").trim_end_matches('/');
                self.status(family, id)
            }
            _ => detail(StatusCode::NOT_FOUND, "Not Found"),
        }
    }

    fn generate(&self, family: Family, body: &[u8]) -> Response<MockBody> {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return json_rsp(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"detail": [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error"}]}),
            );
        };
        let prompt = v.get("prompt").and_then(|p| p.as_str()).unwrap_or("");
        if prompt.is_empty() && !matches!(family.path(), "kling" | "seedance") {
            return json_rsp(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"detail": [{"type": "string_too_short", "loc": ["body", "prompt"], "msg": "String should have at least 1 character"}]}),
            );
        }
        if v.get("image_base64").is_some() && v.get("image_url").is_some() {
            return detail(StatusCode::BAD_REQUEST, "Cannot provide both image_base64 and image_url");
        }
        let price = mock_price(family, &v);
        let id = uuid::Uuid::new_v4().to_string();
        let mut st = self.lock();
        if st.balance < price {
            return detail(StatusCode::PAYMENT_REQUIRED, "INSUFFICIENT_CREDITS");
        }
        st.balance -= price;
        let created_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
            .trim_end_matches('Z')
            .to_string();
        st.generations.insert(
            id.clone(),
            Generation {
                family,
                created: Instant::now(),
                created_at,
                prompt: prompt.to_string(),
                price,
                fails: if prompt.contains("[fail]") {
                    Some("Image contains photorealistic people. Please try with a different image.".to_string())
                } else {
                    prompt.split_once("[fail:").and_then(|(_, rest)| rest.split_once(']')).map(|(m, _)| m.to_string())
                },
                refunded: false,
                echo: ["duration", "orientation", "model", "aspect_ratio", "callback_url"]
                    .iter()
                    .filter(|k| **k != "callback_url" || self.opts.echo_callback_url)
                    .filter_map(|k| v.get(*k).map(|x| (k.to_string(), x.clone())))
                    .collect(),
            },
        );
        st.order.push(id.clone());
        if let Some(url) = v.get("callback_url").and_then(|u| u.as_str()) {
            st.callbacks.push((id.clone(), url.to_string()));
        }
        json_rsp(StatusCode::CREATED, json!({ family.id_field(): id, "status": "pending", "price": price.to_string() }))
    }

    fn status_json(&self, st: &mut State, id: &str) -> Option<serde_json::Value> {
        let step = self.opts.step;
        let g = st.generations.get_mut(id)?;
        let age = g.created.elapsed();
        let status = if age < step {
            "pending"
        } else if age < step * 2 {
            "processing"
        } else if g.fails.is_some() {
            "failed"
        } else {
            "completed"
        };
        let mut refund = Usd::ZERO;
        if status == "failed" && !g.refunded {
            g.refunded = true;
            refund = g.price;
        }
        let done = matches!(status, "completed" | "failed");
        let url_field = match g.family.path() {
            "gemini" | "chatgpt-images" => "result_image_url",
            "kling/o1-photo" | "kling/o3-photo" => "image_url",
            _ => "video_url",
        };
        let error_field = if g.family.path() == "sora" { "error_message" } else { "message" };
        let mut v = json!({
            g.family.id_field(): id,
            "status": status,
            "prompt": g.prompt,
            url_field: if status == "completed" { json!(format!("https://cdn.runblob.io/mock/{id}.bin")) } else { json!(null) },
            "created_at": g.created_at,
            "completed_at": if done { json!(g.created_at) } else { json!(null) },
            "progress_pct": if status == "processing" { json!(50) } else if status == "completed" { json!(100) } else { json!(null) },
            error_field: if status == "failed" { json!(g.fails) } else { json!(null) },
        });
        if let Some(o) = v.as_object_mut() {
            o.extend(g.echo.clone());
        }
        st.balance += refund;
        Some(v)
    }

    fn status(&self, family: Family, id: &str) -> Response<MockBody> {
        let mut st = self.lock();
        if st.generations.get(id).is_none_or(|g| g.family != family) {
            return detail(StatusCode::NOT_FOUND, "Generation not found");
        }
        match self.status_json(&mut st, id) {
            Some(v) => json_rsp(StatusCode::OK, v),
            None => detail(StatusCode::NOT_FOUND, "Generation not found"),
        }
    }

    fn list(&self, family: Family, query: Option<&str>) -> Response<MockBody> {
        let param = |name: &str, default: usize| -> usize {
            crate::server::query::param(query, name).and_then(|v| v.parse().ok()).unwrap_or(default)
        };
        let (limit, offset) = (param("limit", 50).clamp(1, 100), param("offset", 0));
        let mut st = self.lock();
        let ids: Vec<String> = st
            .order
            .iter()
            .rev()
            .filter(|id| st.generations.get(*id).is_some_and(|g| g.family == family))
            .skip(offset)
            .take(limit)
            .cloned()
            .collect();
        let items: Vec<serde_json::Value> = ids.iter().filter_map(|id| self.status_json(&mut st, id)).collect();
        json_rsp(StatusCode::OK, serde_json::Value::Array(items))
    }
}

/// Re-sends a response's body in 16-byte pieces: slowly (`Some(delay)`), or half of it followed
/// by a broken connection (`None`).
async fn trickle(rsp: Response<MockBody>, delay: Option<Duration>) -> Response<MockBody> {
    let (parts, body) = rsp.into_parts();
    let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let total = bytes.len();
    let chunks: Vec<Bytes> = (0..total).step_by(16).map(|i| bytes.slice(i..(i + 16).min(total))).collect();
    let half = chunks.len() / 2;
    let stream =
        futures_util::stream::unfold((chunks.into_iter().enumerate(), delay), move |(mut it, delay)| async move {
            let (i, chunk) = it.next()?;
            match delay {
                Some(d) => tokio::time::sleep(d).await,
                None if i >= half.max(1) => {
                    return Some((
                        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected mid-body reset")),
                        (it, delay),
                    ));
                }
                None => {}
            }
            Some((Ok(Frame::data(chunk)), (it, delay)))
        });
    let mut out = Response::from_parts(parts, BodyExt::boxed(StreamBody::new(stream)));
    // Content-Length promises the whole body, so a cut is visible to the client.
    out.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from(total));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_match_the_example_config() {
        assert_eq!(mock_price(Family::builtin("sora"), &json!({"duration": 15})), Usd::parse("0.18").unwrap());
        assert_eq!(mock_price(Family::builtin("sora"), &json!({})), Usd::parse("0.12").unwrap());
        assert_eq!(
            mock_price(Family::builtin("veo"), &json!({"model_type": "veo-3-quality"})),
            Usd::parse("0.5").unwrap()
        );
        assert_eq!(mock_price(Family::builtin("kling/o1-photo"), &json!({})), Usd::parse("0.029").unwrap());
    }

    #[test]
    fn faults_parse_from_json() {
        let f: Fault = serde_json::from_str(r#"{"kind":"status","status":429,"retry_after":7,"times":2}"#).unwrap();
        assert_eq!((f.kind, f.status, f.retry_after, f.times), (FaultKind::Status, Some(429), Some(7), Some(2)));
    }
}
