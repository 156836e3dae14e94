//! The gateway: shared state and the top of the request path.
//!
//! `Gateway::handle` is the whole path, outermost first:
//! request id → deadline → [route → auth → rate limit → stage handler] → error to response →
//! rate-limit headers → `x-request-id` → access log + metrics.
//! The bracketed part is `Gateway::dispatch`; the stage handlers are in `handler.rs`.
//! Every request, including failures, leaves exactly one access-log line.
//!
//! ARCHITECTURE.md sketches these stages as tower layers. They are plain async functions here
//! instead: each stage needs the route, the tenant or the buffered body, which layers can only
//! pass through request extensions, and one straight-line function with `?` between stages is
//! easier to read top to bottom (rpxy's `handle_request`) and cheaper per request.

pub(crate) mod directory;
pub(crate) mod error;
mod handler;
pub(crate) mod limits;
pub(crate) mod routes;
pub mod service;
pub(crate) mod status_cache;
pub(crate) mod upload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{HeaderValue, AUTHORIZATION};
use http::{HeaderMap, Request, Response};

use crate::config::{Config, ConfigError};
use crate::gateway::error::{set_rate_limit_headers, GatewayError};
use crate::gateway::limits::RateLimits;
use crate::gateway::status_cache::StatusCache;
use crate::observe::access_log::{AccessLog, AccessRecord};
use crate::observe::metrics::Metrics;
use crate::paid::balance::BalanceKeeper;
use crate::policy::keys::Scope;
use crate::policy::money::Usd;
use crate::policy::pricing::PriceTable;
use crate::policy::rate_limit::{LimitKind, Quotas};
use crate::policy::tenants::{KeyEntry, TenantDirectory};
use crate::server::body::Body;
use crate::store::Store;
use crate::upstream::Upstream;
use routes::Route;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Tenants now configured.
    pub tenants: usize,
    /// Changed settings that only a restart applies.
    pub restart_required: Vec<&'static str>,
}

/// Re-reads the config (from its file) for a hot reload.
pub type ReloadSource = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// What a reload may change: tenants, keys, limits, prices and the reserve.
pub struct Runtime {
    /// Key → tenant: the config file's and the admin API's.
    pub tenants: TenantDirectory,
    /// The config file's alone.
    pub config_tenants: TenantDirectory,
    /// The admin API's tenants as stored, at `dir_version`.
    pub api: Arc<Vec<crate::store::TenantDoc>>,
    /// The store's directory version this runtime holds.
    pub dir_version: u64,
    /// When an API key next stops working on its own (the directory is rebuilt then).
    pub next_key_end: Option<u64>,
    /// Their limiters.
    pub limits: RateLimits,
    /// The model catalog (`[catalog]`).
    pub catalog: crate::policy::catalog::Catalog,
    /// `[pricing]`.
    pub pricing: PriceTable,
    /// `[balance] reserve`.
    pub reserve: Usd,
}

impl Runtime {
    /// 404 for a family this config does not price, naming the ones it does.
    pub(crate) fn family_not_enabled(&self, family: crate::policy::family::Family) -> GatewayError {
        let mut enabled: Vec<&str> = self.pricing.families().map(|f| f.path()).collect();
        enabled.sort();
        GatewayError::FamilyNotEnabled { family: family.path(), enabled: enabled.join(", ") }
    }
}

/// Shared state of a running gateway.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    /// The tenant listener's certificate, when it speaks TLS (swapped by a reload).
    pub tls: Option<Arc<crate::server::tls::Certs>>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) balance: BalanceKeeper,
    pub(crate) status_cache: StatusCache,
    pub(crate) metrics: Arc<Metrics>,
    log: AccessLog,
    pub(crate) max_body_bytes: usize,
    pub(crate) request_timeout: Duration,
    /// `[server] expose_account_balance`.
    pub(crate) expose_account_balance: bool,
    /// A hold's lease: the upstream timeout plus a margin.
    pub(crate) hold_lease: Duration,
    pub(crate) reconcile: crate::config::ReconcileConfig,
    /// `[webhooks]`, when configured.
    pub(crate) relay: Option<Arc<crate::background::webhooks::Relay>>,
    /// What delivers the outbox (webhooks and alerts): the relay, or one for alerts alone.
    pub(crate) sender: Option<Arc<crate::background::webhooks::Relay>>,
    /// `[alerts]`, when configured.
    pub(crate) alerts: Option<crate::config::AlertsConfig>,
    pub(crate) uploads: crate::gateway::upload::Uploads,
    reload_source: Option<ReloadSource>,
    /// The restart-only settings this process started with.
    started_with: Vec<(&'static str, String)>,
    auth_failures: crate::gateway::limits::AuthFailures,
    /// Unix ms of this replica's last reconciler pass as the lease holder (0: none yet), for
    /// the dashboard.
    pub(crate) reconciled_ms: std::sync::atomic::AtomicU64,
    /// Samples the access lines of refused, unauthenticated requests per address.
    pub(crate) refusals: crate::gateway::limits::RefusalSampler,
    /// Runtime swaps (config reloads, directory changes) one at a time, so none is lost.
    runtime_swap: std::sync::Mutex<()>,
}

/// One request in the gateway: its access record, and what the stages share beyond it.
#[derive(Clone)]
pub struct Ctx {
    /// What the request did, filled in as it goes; counted and logged once by `finish`.
    pub record: AccessRecord,
    /// Set once a paid request is handed to the platform: from then on it runs to its outcome,
    /// past the request deadline and past a client that leaves.
    pub forwarded: Arc<AtomicBool>,
    /// Rate-limit state for the response headers.
    pub quotas: Option<Quotas>,
}

impl Ctx {
    /// A request just arrived.
    pub(crate) fn new(
        method: http::Method,
        request_id: HeaderValue,
        route: &'static str,
        outcome: &'static str,
    ) -> Ctx {
        Ctx {
            record: AccessRecord::new(method, request_id, route, outcome),
            forwarded: Arc::new(AtomicBool::new(false)),
            quotas: None,
        }
    }
}

/// 1–128 characters of `[A-Za-z0-9-_.:]`.
pub(crate) fn is_sane_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

/// The request's id as sent back, from the client's `x-request-id` header: that value when
/// sane, otherwise a new UUID (formatted on the stack).
pub(crate) fn request_id_header(sent: Option<&HeaderValue>) -> HeaderValue {
    if let Some(v) = sent.filter(|v| is_sane_request_id(v)) {
        return v.clone();
    }
    let mut buf = uuid::Uuid::encode_buffer();
    HeaderValue::from_str(crate::ids::uuid().hyphenated().encode_lower(&mut buf))
        .unwrap_or(HeaderValue::from_static("-"))
}

/// 400 for query parameters the route does not document (lists take `limit` and `offset`).
fn check_query(route: &Route, query: Option<&str>) -> Result<(), GatewayError> {
    let Some(q) = query.filter(|q| !q.is_empty()) else { return Ok(()) };
    let allowed: &[&str] = if matches!(route, Route::List(_)) { &["limit", "offset"] } else { &[] };
    let mut unknown: Vec<&str> =
        q.split('&').map(|kv| kv.split('=').next().unwrap_or("")).filter(|k| !allowed.contains(k)).collect();
    unknown.dedup();
    if unknown.is_empty() {
        return Ok(());
    }
    let accepted = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
    // Long names are cut (on a character boundary) so a detail stays readable.
    let names: Vec<String> = unknown
        .iter()
        .map(|k| {
            if k.chars().count() > 40 {
                format!("{}…", k.chars().take(40).collect::<String>())
            } else {
                k.to_string()
            }
        })
        .collect();
    Err(GatewayError::BadRequest(format!(
        "Unsupported query parameter(s): {} (this endpoint accepts: {accepted})",
        names.join(", ")
    )))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

// === impl Gateway ===

impl Gateway {
    /// Builds a gateway on an opened store.
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        log: AccessLog,
        reload_source: Option<ReloadSource>,
        tls: Option<Arc<crate::server::tls::Certs>>,
    ) -> Arc<Gateway> {
        let upstream = Arc::new(Upstream::new(&config.upstream));
        let balance = BalanceKeeper::new(store.clone(), upstream.clone(), config.balance.cache_ttl);
        let (relay, sender) = crate::background::webhooks::senders(config);
        Arc::new(Gateway {
            runtime: ArcSwap::from_pointee(Gateway::runtime(config, None)),
            store,
            upstream,
            balance,
            status_cache: StatusCache::new(config.upstream.status_cache),
            metrics: Arc::new(Metrics::new()),
            log,
            max_body_bytes: config.server.max_body_bytes,
            request_timeout: config.server.request_timeout,
            expose_account_balance: config.server.expose_account_balance,
            hold_lease: config.upstream.timeout + config.reconcile.lease_margin,
            reconcile: config.reconcile.clone(),
            relay: relay.clone(),
            sender,
            alerts: config.alerts.clone(),
            uploads: crate::gateway::upload::Uploads::new(
                config.server.max_buffered_body_bytes,
                config.server.max_buffered_body_bytes_per_tenant,
                config.server.max_uploads_per_tenant,
                config.server.min_upload_bytes_per_sec,
            ),
            reload_source,
            tls,
            started_with: config.restart_only(),
            auth_failures: crate::gateway::limits::AuthFailures::new(),
            reconciled_ms: Default::default(),
            refusals: crate::gateway::limits::RefusalSampler::new(),
            runtime_swap: Default::default(),
        })
    }

    fn runtime(config: &Config, previous: Option<&Runtime>) -> Runtime {
        let api = previous.map(|p| p.api.clone()).unwrap_or_default();
        let now = crate::store::now_ms();
        let (tenants, _) = directory::merged(&config.tenants, &api, previous.map(|p| &p.tenants), now);
        Runtime {
            limits: RateLimits::new(&tenants, previous.map(|p| &p.limits)),
            tenants,
            config_tenants: config.tenants.clone(),
            next_key_end: directory::next_key_end(&api, now),
            dir_version: previous.map_or(0, |p| p.dir_version),
            api,
            catalog: config.catalog.clone(),
            pricing: config.pricing.clone(),
            reserve: config.balance.reserve,
        }
    }

    /// The current tenants, limits and prices.
    pub fn current(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The upstream client.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Swaps in tenants, keys, limits and prices from a freshly loaded config. In-flight requests
    /// finish on the runtime they started with; connections are untouched.
    pub fn apply(&self, config: &Config) {
        let _one_at_a_time = self.runtime_swap.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.runtime.load();
        self.runtime.store(Arc::new(Gateway::runtime(config, Some(&previous))));
    }

    /// Re-reads the config source and applies it; a bad config is refused and the old one keeps
    /// serving.
    pub fn reload(&self) -> Result<Reloaded, String> {
        let Some(source) = &self.reload_source else {
            return Err("this gateway has no config file to reload".into());
        };
        let loaded = source().map_err(|e| e.to_string()).and_then(|config| {
            Gateway::clashes(&config.tenants, &self.current().api)?;
            // New certificate files (or paths) reach new connections; open ones keep theirs.
            if let (Some(certs), Some(paths)) = (&self.tls, &config.server.tls) {
                certs.reload(&paths.cert, &paths.key)?;
            }
            Ok(config)
        });
        match loaded {
            Ok(config) => {
                self.apply(&config);
                self.metrics.reload(true);
                let tenants = config.tenants.tenants().len();
                let restart_required: Vec<&'static str> = config
                    .restart_only()
                    .into_iter()
                    .zip(&self.started_with)
                    .filter(|(new, old)| new.1 != old.1)
                    .map(|(new, _)| new.0)
                    .collect();
                if restart_required.is_empty() {
                    tracing::info!(tenants, "config reloaded");
                } else {
                    tracing::warn!(tenants, restart_required = %restart_required.join(", "), "config reloaded; changes to these settings take effect only after a restart");
                }
                Ok(Reloaded { tenants, restart_required })
            }
            Err(e) => {
                self.metrics.reload(false);
                tracing::error!(error = %e, "config reload refused; the previous config keeps serving");
                Err(e)
            }
        }
    }

    /// Serves one request. Never fails: errors become `{"detail": ...}` responses here.
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        // One value for the response header (a reference count of the client's, when sane) and
        // the text the logs and the platform get.
        let id_header = request_id_header(req.headers().get(crate::ids::X_REQUEST_ID));
        let mut ctx = Ctx::new(req.method().clone(), id_header.clone(), routes::UNMATCHED, "forwarded");
        let mut trace = crate::ids::trace::TraceContext::from_headers(req.headers());
        // `None` (and free) unless `[telemetry]` exports spans.
        let route = || {
            routes::resolve(&self.current().catalog, req.method(), req.uri().path())
                .map(|r| r.template())
                .unwrap_or(routes::UNMATCHED)
        };
        let span = crate::observe::telemetry::request_span(req.method(), route, &mut trace);
        ctx.record.trace = Some(trace);
        let forwarded = ctx.forwarded.clone();
        // The deadline drops the stage future (hold and idempotency guards clean up on drop),
        // except once a paid request was forwarded: then its answer is what the client gets, and
        // the upstream timeout bounds the wait.
        let result = {
            // Pinned where it is made: `tokio::pin!` on a local moved it into a second slot of
            // this future's state, which made every request's future 3 KB larger (7,920 bytes
            // against 4,232).
            let mut dispatch = std::pin::pin!(self.dispatch(&mut ctx, req));
            // `biased`: the request first, and no random pick of which branch to poll.
            tokio::select! {
                biased;
                r = &mut dispatch => r,
                _ = tokio::time::sleep(self.request_timeout) => {
                    if forwarded.load(Ordering::Acquire) { dispatch.await } else { Err(GatewayError::RequestTimeout) }
                }
            }
        };
        let mut rsp = match result {
            Ok(rsp) => rsp,
            Err(e) => {
                ctx.record.outcome = e.outcome();
                ctx.record.cause = e.cause();
                if let GatewayError::Internal(msg) | GatewayError::Store(crate::store::StoreError(msg)) = &e {
                    tracing::warn!(request_id = ctx.record.request_id(), error = %msg, "request failed inside the gateway");
                }
                if let GatewayError::RateLimited(r) = &e {
                    if let Some(t) = &ctx.record.tenant {
                        self.metrics.rate_limited(t, RateLimits::kind_name(r.kind));
                    }
                } else if let GatewayError::Unreachable(u) = &e {
                    self.metrics.upstream_error(u.kind());
                }
                e.into_response()
            }
        };
        if let (Some(q), false) = (&ctx.quotas, rsp.headers().contains_key(crate::gateway::error::RATELIMIT_LIMIT)) {
            set_rate_limit_headers(rsp.headers_mut(), q);
        }
        rsp.headers_mut().insert(crate::ids::X_REQUEST_ID, id_header);
        self.finish(&ctx, rsp.status().as_u16());
        if let Some(span) = span {
            span.record("http.route", ctx.record.route);
            span.record("http.response.status_code", rsp.status().as_u16());
            span.record("tollgate.request_id", ctx.record.request_id());
            span.record("tollgate.outcome", ctx.record.outcome);
            if let Some(t) = &ctx.record.tenant {
                span.record("tollgate.tenant", &**t);
            }
        }
        rsp
    }

    /// A connection refused before any request reached the gateway (no head in time, malformed
    /// head, headers too large, closed at the connection cap): logged and counted like a request.
    pub fn protocol_refusal(&self, r: crate::server::ProtocolRefusal) {
        let mut ctx = Ctx::new(
            http::Method::from_bytes(b"-").unwrap_or(http::Method::GET),
            request_id_header(None),
            "-",
            r.outcome,
        );
        ctx.record.peer = Some(r.peer.ip());
        tracing::debug!(peer = %r.peer, status = r.status, outcome = r.outcome, "connection refused at the protocol level");
        self.finish(&ctx, r.status);
    }

    /// Counts the request and writes its access line.
    pub(crate) fn finish(&self, ctx: &Ctx, status: u16) {
        let record = &ctx.record;
        let latency = record.started.elapsed();
        self.metrics.observe(record, status, latency);
        // Refused before anyone was authenticated: past a rate per address, counted only.
        if record.tenant.is_none() && status >= 400 && !self.refusals.admit(record.peer) {
            return;
        }
        self.log.write(record, status, latency);
    }

    /// Route, authenticate, rate-limit, then hand over to the route's stage handler.
    async fn dispatch<B>(self: &Arc<Self>, ctx: &mut Ctx, req: Request<B>) -> Result<Response<Body>, GatewayError>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        // Ambiguous framing (seen on the wire by `framing.rs`; hyper drops the evidence from the
        // headers) is refused before anything else looks at the request.
        ctx.record.peer = peer_ip(&req);
        if req.extensions().get::<crate::server::framing::AmbiguousFraming>().is_some() {
            return Err(GatewayError::BadRequest(
                "Request framing is ambiguous (Content-Length with Transfer-Encoding, Transfer-Encoding twice, or a line ending in a bare LF)".into(),
            ));
        }
        // Two Content-Types: which one the body is in is a guess.
        if req.headers().get_all(http::header::CONTENT_TYPE).iter().nth(1).is_some() {
            return Err(GatewayError::BadRequest("Request has more than one Content-Type header".into()));
        }
        // RFC 9112 §3.2: an HTTP/1.1 request without a Host, or with two, is a 400.
        if req.version() == http::Version::HTTP_11 {
            let mut hosts = req.headers().get_all(http::header::HOST).iter();
            if hosts.next().is_none() || hosts.next().is_some() {
                return Err(GatewayError::BadRequest("HTTP/1.1 requests need exactly one Host header".into()));
            }
        }
        let runtime = self.current();
        let route = routes::resolve(&runtime.catalog, req.method(), req.uri().path())?;
        ctx.record.route = route.template();
        // One credential, and only the query parameters this route documents: nothing the
        // gateway did not validate reaches the platform.
        if req.headers().get_all(AUTHORIZATION).iter().nth(1).is_some() {
            return Err(GatewayError::BadRequest("Send exactly one Authorization header".into()));
        }
        check_query(&route, req.uri().query())?;
        if let Route::Webhook(token) = &route {
            return Box::pin(self.webhook_received(ctx, token, req)).await;
        }
        let key = self.authenticate(&runtime, req.headers(), ctx.record.peer)?;
        key.mark_used();
        if key.scope == Scope::Viewer && !matches!(route, Route::Usage) {
            ctx.record.tenant = Some(key.tenant.id.clone());
            return Err(GatewayError::ReadOnlyKey);
        }
        let tenant = key.tenant.clone();
        // A family without a price is not offered here: 404, never a 500. After auth, so an
        // unauthenticated client learns nothing of what this gateway offers.
        if let Route::Generate(f) | Route::Quote(f) | Route::Status(f, _) | Route::List(f) = &route {
            if !runtime.pricing.offers(*f) {
                return Err(runtime.family_not_enabled(*f));
            }
        }
        ctx.record.tenant = Some(tenant.id.clone());
        ctx.quotas = Some(runtime.limits.check(&*self.store, &tenant, LimitKind::Requests).await?);
        match route {
            // The large, rarer stages are boxed (the paid path, lists, usage, webhooks above):
            // otherwise every request's future is as large as the largest of them, allocated
            // and moved whole. Status polls, the hot path, stay inline.
            Route::Generate(family) => Box::pin(self.generate(ctx, &runtime, &tenant, family, req)).await,
            Route::Quote(family) => Box::pin(self.quote(ctx, &runtime, &tenant, family, req)).await,
            Route::Status(family, id) => self.status(ctx, &tenant, family, &id, req.uri()).await,
            Route::List(family) => Box::pin(self.list(ctx, &tenant, family, req.uri())).await,
            Route::Balance => self.tenant_balance(ctx, &runtime, &tenant).await,
            Route::Usage => Box::pin(self.tenant_usage(ctx, &runtime, &tenant)).await,
            Route::Webhook(_) => Err(GatewayError::NotFound),
        }
    }

    /// A valid key is never slowed down; a client address that keeps presenting unknown keys
    /// is answered 429 for a while (`auth_failures`).
    fn authenticate<'r>(
        &self,
        runtime: &'r Runtime,
        headers: &HeaderMap,
        peer: Option<std::net::IpAddr>,
    ) -> Result<&'r KeyEntry, GatewayError> {
        let missing = if headers.contains_key(AUTHORIZATION) {
            GatewayError::WrongScheme
        } else {
            GatewayError::MissingCredentials
        };
        let found = bearer(headers)
            .ok_or(missing)
            .and_then(|key| runtime.tenants.lookup(key).ok_or(GatewayError::InvalidCredentials));
        match (found, peer) {
            (Ok(t), _) => Ok(t),
            (Err(e), Some(ip)) => match self.auth_failures.failed(ip) {
                Ok(()) => Err(e),
                Err(retry_after_secs) => Err(GatewayError::AuthThrottled { retry_after_secs }),
            },
            (Err(e), None) => Err(e),
        }
    }
}

/// The client's address: from the binary listener's body type, else from a `PeerAddr` extension
/// an embedder put there.
pub(crate) fn peer_ip<B: 'static>(req: &Request<B>) -> Option<std::net::IpAddr> {
    let listener = (req.body() as &dyn std::any::Any).downcast_ref::<crate::server::Lingering>().map(|b| b.peer().ip());
    listener.or_else(|| req.extensions().get::<crate::server::PeerAddr>().map(|p| p.0.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_clients_must_be_sane() {
        assert!(is_sane_request_id(&HeaderValue::from_static("abc-123_x.y:z")));
        assert!(!is_sane_request_id(&HeaderValue::from_static("has space")));
        assert!(!is_sane_request_id(&HeaderValue::from_static("")));
        assert!(!is_sane_request_id(&HeaderValue::from_str(&"a".repeat(129)).unwrap()));
        assert_eq!(request_id_header(None).len(), 36);
    }

    #[test]
    fn the_peer_comes_from_the_listener_body_or_an_embedder_extension() {
        let addr: std::net::SocketAddr = "10.1.2.3:4567".parse().unwrap();
        let listener = Request::new(crate::server::Lingering::new(None, addr));
        assert_eq!(peer_ip(&listener), Some(addr.ip()));
        let mut embedded = Request::new(String::new());
        assert_eq!(peer_ip(&embedded), None);
        embedded.extensions_mut().insert(crate::server::PeerAddr(addr));
        assert_eq!(peer_ip(&embedded), Some(addr.ip()));
    }

    #[test]
    fn bearer_parsing() {
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(AUTHORIZATION, HeaderValue::from_static(v));
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
