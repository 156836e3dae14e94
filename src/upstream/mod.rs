//! Forwarding to the platform over a pooled hyper-util client (http or https via
//! rustls). The upstream token is added here and only here, so no outer stage ever sees it.
//!
//! Idempotent GETs are retried on connect errors and 502/503/504 within a retry budget, with
//! jittered backoff; a paid POST is never retried. A circuit breaker fails fast while the
//! platform is down and lets one probe through after `circuit_open`.

pub mod circuit;
pub(crate) mod connector;
pub mod normalize;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};

use crate::ids::trace::TraceContext;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;

use crate::config::UpstreamConfig;
use circuit::CircuitBreaker;
use connector::QuietConnector;

/// The platform's address when `base_url` names none (config validation makes sure it does).
const FALLBACK_AUTHORITY: &str = "platform.runblob.io";

/// Upstream answers are small JSON; anything bigger is not the platform talking.
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// First retry delay; doubles per attempt, ±50 % jitter.
const RETRY_BASE: Duration = Duration::from_millis(50);
/// Retries allowed per request seen, on top of a small floor (a retry budget, as in linkerd):
/// a struggling platform sees at most ~20 % extra load from us.
const RETRY_RATIO_PERCENT: u64 = 20;
const RETRY_BUDGET_FLOOR: u64 = 10;
/// A retry is only started with at least this much of the deadline left.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);

/// The platform could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// Nothing was sent (connection refused, DNS, TLS handshake): safe to release a hold.
    #[error("Upstream unavailable")]
    Connect(String),
    /// The request may have been received; the deadline passed without an answer.
    #[error("Upstream timed out")]
    Timeout,
    /// The connection broke after the request was (maybe) sent.
    #[error("Upstream unavailable")]
    Broken(String),
    /// Failing fast while the circuit is open.
    #[error("Upstream unavailable (circuit open)")]
    CircuitOpen {
        /// Seconds until the next probe.
        retry_after_secs: u64,
    },
}

impl UpstreamError {
    /// Could the platform have acted on (and charged for) the request?
    pub fn maybe_delivered(&self) -> bool {
        matches!(self, UpstreamError::Timeout | UpstreamError::Broken(_))
    }

    /// Label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Broken(_) => "broken",
            UpstreamError::CircuitOpen { .. } => "circuit_open",
        }
    }
}

/// A buffered platform answer.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes, unchanged.
    pub body: Bytes,
    /// Time from sending to the last body byte (last attempt).
    pub latency: Duration,
}

type HttpsClient = Client<QuietConnector<HttpsConnector<HttpConnector>>, Full<Bytes>>;

/// The platform client.
pub struct Upstream {
    client: HttpsClient,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// `Host` for every platform request, made once (hyper-util would format it from the URI
    /// on every request).
    host: HeaderValue,
    path_prefix: String,
    auth: HeaderValue,
    timeout: Duration,
    get_retries: u32,
    circuit: CircuitBreaker,
    requests: AtomicU64,
    retries: AtomicU64,
    /// Unix ms of the last failure logged, so an outage writes a line a second, not one per
    /// request.
    last_failure_log: AtomicU64,
    suppressed: AtomicU64,
    /// The platform's last answer to the gateway's token was 401/403 (cleared by a 2xx).
    token_rejected: std::sync::atomic::AtomicBool,
}

fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    let msg = format!("{e}: {}", std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_default());
    if e.is_connect() {
        UpstreamError::Connect(msg)
    } else {
        UpstreamError::Broken(msg)
    }
}

/// The `Host` header hyper-util would send: the host, and the port unless it is the scheme's
/// default (no user info).
fn host_header(scheme: &http::uri::Scheme, authority: &http::uri::Authority) -> HeaderValue {
    let default = if *scheme == http::uri::Scheme::HTTP { 80 } else { 443 };
    let host = match authority.port_u16() {
        Some(port) if port != default => format!("{}:{port}", authority.host()),
        _ => authority.host().to_string(),
    };
    HeaderValue::from_str(&host).unwrap_or_else(|_| HeaderValue::from_static(FALLBACK_AUTHORITY))
}

/// A path that makes no valid platform URI (never sent).
fn bad_uri(e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Connect(format!("bad upstream uri: {e}"))
}

// === impl Upstream ===

impl Upstream {
    /// Builds the pooled client.
    pub fn new(cfg: &UpstreamConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(QuietConnector(https));
        let parts = cfg.base_url.clone().into_parts();
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", cfg.token.expose()))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-token"));
        // Sensitive: hyper's HPACK never indexes it and Debug output hides it.
        auth.set_sensitive(true);
        let scheme = parts.scheme.unwrap_or(http::uri::Scheme::HTTPS);
        let authority = parts.authority.unwrap_or_else(|| http::uri::Authority::from_static(FALLBACK_AUTHORITY));
        let host = host_header(&scheme, &authority);
        Upstream {
            client,
            scheme,
            authority,
            host,
            path_prefix: parts.path_and_query.map(|p| p.path().trim_end_matches('/').to_string()).unwrap_or_default(),
            auth,
            timeout: cfg.timeout,
            get_retries: cfg.get_retries,
            circuit: CircuitBreaker::new(cfg.circuit_failure_threshold, cfg.circuit_open),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            last_failure_log: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            token_rejected: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// An error answer as the tenant will see it: normalised (`normalize.rs`), with the
    /// gateway's token and any quoted credential redacted.
    pub fn error_of(&self, rsp: &UpstreamResponse) -> normalize::Normalized {
        let retry = rsp.headers.get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok());
        let mut n = normalize::normalize(rsp.status, retry, &rsp.body);
        let token = self.auth.to_str().unwrap_or("").trim_start_matches("Bearer ").to_string();
        n.detail = normalize::redact(&n.detail, &[&token]);
        n
    }

    /// Is the circuit closed (for metrics)?
    pub fn circuit_state(&self) -> circuit::State {
        self.circuit.state()
    }

    /// Did the platform refuse the gateway's token on its last verdict about it?
    pub fn token_rejected(&self) -> bool {
        self.token_rejected.load(Ordering::Relaxed)
    }

    /// The platform URI for a path: scheme and authority from `base_url`, and its path prefix
    /// when it has one.
    fn uri(&self, path_and_query: PathAndQuery) -> Result<Uri, UpstreamError> {
        let b = Uri::builder().scheme(self.scheme.clone()).authority(self.authority.clone());
        let b = if self.path_prefix.is_empty() {
            b.path_and_query(path_and_query)
        } else {
            b.path_and_query(format!("{}{}", self.path_prefix, path_and_query))
        };
        b.build().map_err(bad_uri)
    }

    fn build(
        &self,
        method: &Method,
        uri: Uri,
        content_type: Option<&HeaderValue>,
        request_id: &HeaderValue,
        trace: Option<&TraceContext>,
        body: Bytes,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        // Room for every header below at once (an empty map grows, and rehashes, twice).
        *req.headers_mut() = HeaderMap::with_capacity(8);
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        // An allow-list: the tenant's Authorization, cookies and Idempotency-Key never go up.
        h.insert(AUTHORIZATION, self.auth.clone());
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        h.insert(USER_AGENT, HeaderValue::from_static(concat!("tollgate/", env!("CARGO_PKG_VERSION"))));
        if let Some(ct) = content_type {
            h.insert(CONTENT_TYPE, ct.clone());
        }
        h.insert(crate::ids::X_REQUEST_ID, request_id.clone());
        if let Some(t) = trace {
            t.inject(h);
        }
        req
    }

    async fn attempt(&self, req: Request<Full<Bytes>>, deadline: Instant) -> Result<UpstreamResponse, UpstreamError> {
        let started = Instant::now();
        let fut = async {
            let rsp = self.client.request(req).await.map_err(|e| classify(&e))?;
            let (parts, body) = rsp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| UpstreamError::Broken(format!("reading response body: {e}")))?
                .to_bytes();
            Ok(UpstreamResponse { status: parts.status, headers: parts.headers, body, latency: started.elapsed() })
        };
        match tokio::time::timeout_at(deadline.into(), fut).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    /// Logs why the platform failed, at most once a second (with how many were not logged).
    fn log_failure(&self, path: &str, request_id: &HeaderValue, result: &Result<UpstreamResponse, UpstreamError>) {
        let (cause, detail, status) = match result {
            Ok(r) if matches!(r.status.as_u16(), 401 | 403) => {
                ("token_rejected", "the platform rejected the gateway's token".to_string(), Some(r.status.as_u16()))
            }
            Ok(r) if matches!(r.status.as_u16(), 502..=504) => {
                ("platform_unavailable", format!("the platform answered {}", r.status), Some(r.status.as_u16()))
            }
            Ok(_) => return,
            Err(UpstreamError::Connect(m)) => ("unreachable", m.clone(), None),
            Err(UpstreamError::Timeout) => ("timeout", format!("no answer within {:?}", self.timeout), None),
            Err(UpstreamError::Broken(m)) => ("broken_connection", m.clone(), None),
            Err(UpstreamError::CircuitOpen { .. }) => return,
        };
        let now = crate::store::now_ms();
        let last = self.last_failure_log.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000
            || self.last_failure_log.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        let request_id = request_id.to_str().unwrap_or("-");
        if cause == "token_rejected" {
            tracing::error!(
                request_id,
                cause,
                status,
                path,
                suppressed,
                "{detail}: check the upstream token (upstream.token_env)"
            );
        } else {
            tracing::warn!(request_id, cause, status, path, error = %detail, suppressed, "platform call failed");
        }
    }

    fn retry_allowed(&self) -> bool {
        let seen = self.requests.load(Ordering::Relaxed);
        let budget = RETRY_BUDGET_FLOOR + seen * RETRY_RATIO_PERCENT / 100;
        if self.retries.load(Ordering::Relaxed) >= budget {
            return false;
        }
        self.retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn backoff(attempt: u32) -> Duration {
        let base = RETRY_BASE * 2u32.saturating_pow(attempt);
        base.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
    }

    /// Sends one request to the platform. `content_type` and the body are passed through
    /// unchanged; the token is injected. GETs are retried as described in the module docs.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: Option<&HeaderValue>,
        request_id: &HeaderValue,
        trace: Option<&TraceContext>,
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let path = PathAndQuery::try_from(path_and_query).map_err(bad_uri)?;
        self.forward(method, path, content_type, request_id, trace, body).await
    }

    /// [`send`](Self::send) to a path already parsed (a request the gateway received: a
    /// reference count, not a print and a re-parse).
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: PathAndQuery,
        content_type: Option<&HeaderValue>,
        request_id: &HeaderValue,
        trace: Option<&TraceContext>,
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let uri = self.uri(path_and_query)?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let retries = if method == Method::GET { self.get_retries } else { 0 };
        // Every attempt and backoff fits inside one `timeout`.
        let deadline = Instant::now() + self.timeout;
        let mut attempt = 0;
        loop {
            let permit = self
                .circuit
                .try_acquire()
                .map_err(|retry_after_secs| UpstreamError::CircuitOpen { retry_after_secs })?;
            let result = self
                .attempt(self.build(&method, uri.clone(), content_type, request_id, trace, body.clone()), deadline)
                .await;
            let failed = match &result {
                Ok(r) => matches!(r.status.as_u16(), 502..=504),
                Err(_) => true,
            };
            permit.record(!failed);
            if let Ok(r) = &result {
                // Stored only when it changes: a store per answer would share a cache line
                // across every request.
                let rejected = matches!(r.status.as_u16(), 401 | 403);
                if (rejected || r.status.is_success()) && self.token_rejected.load(Ordering::Relaxed) != rejected {
                    self.token_rejected.store(rejected, Ordering::Relaxed);
                }
            }
            self.log_failure(uri.path_and_query().map_or("/", |p| p.as_str()), request_id, &result);
            let retryable = match &result {
                Ok(r) => matches!(r.status.as_u16(), 502..=504),
                // A timed-out platform is overloaded or stuck: asking again only adds load.
                Err(UpstreamError::CircuitOpen { .. } | UpstreamError::Timeout) => false,
                // A GET is safe to repeat whatever else happened to the first one.
                Err(_) => true,
            };
            if retryable && attempt < retries {
                let pause = Self::backoff(attempt);
                let time_left = deadline.saturating_duration_since(Instant::now()) > pause + MIN_ATTEMPT;
                if time_left && self.retry_allowed() {
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                    continue;
                }
            }
            return result;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_is_uncertain_only_after_sending() {
        assert!(!UpstreamError::Connect("refused".into()).maybe_delivered());
        assert!(!UpstreamError::CircuitOpen { retry_after_secs: 1 }.maybe_delivered());
        assert!(UpstreamError::Timeout.maybe_delivered());
        assert!(UpstreamError::Broken("reset".into()).maybe_delivered());
    }

    #[test]
    fn the_host_header_is_what_hyper_util_would_send() {
        let host = |url: &str| {
            let parts = url.parse::<Uri>().unwrap().into_parts();
            host_header(&parts.scheme.unwrap(), &parts.authority.unwrap())
        };
        assert_eq!(host("http://127.0.0.1:8080/v1"), "127.0.0.1:8080");
        assert_eq!(host("https://api.runblob.io"), "api.runblob.io");
        assert_eq!(host("https://api.runblob.io:443"), "api.runblob.io");
        assert_eq!(host("http://platform:80"), "platform");
        assert_eq!(host("http://platform:443"), "platform:443");
        assert_eq!(host("https://user:secret@platform:8443"), "platform:8443");
        assert_eq!(host("http://[::1]:9000"), "[::1]:9000");
    }

    #[test]
    fn backoff_grows_with_jitter() {
        for attempt in 0..4 {
            let d = Upstream::backoff(attempt);
            let base = RETRY_BASE * 2u32.pow(attempt);
            assert!(d >= base.mul_f64(0.5) && d <= base.mul_f64(1.5), "{attempt}: {d:?}");
        }
    }
}
