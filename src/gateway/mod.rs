//! The front door: the top of the request path, standing on the floor of shared state
//! (`core::Shared`).
//!
//! `Gateway::handle` is the whole path, outermost first:
//! request id → deadline → [route → auth → rate limit → stage handler] → error to response →
//! rate-limit headers → `x-request-id` → access log + metrics (`Shared::finish`).
//! The bracketed part is `Gateway::dispatch`; a generate and a quote go to `paid::generate` and
//! `paid::quote`, the free routes to `handler.rs`.
//! Every request, including failures, leaves exactly one access-log line.
//!
//! ARCHITECTURE.md sketches these stages as tower layers. They are plain async functions here
//! instead: each stage needs the route, the tenant or the buffered body, which layers can only
//! pass through request extensions, and one straight-line function with `?` between stages is
//! easier to read top to bottom (rpxy's `handle_request`) and cheaper per request.

mod handler;
pub(crate) mod routes;
pub mod service;
pub(crate) mod status_cache;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, Request, Response};

use crate::config::Config;
use crate::core::error::{set_rate_limit_headers, GatewayError};
use crate::core::limits::{AuthFailures, RateLimits};
use crate::core::{peer_ip, request_id_header, Ctx, Runtime, Shared};
use crate::gateway::status_cache::StatusCache;
use crate::observe::access_log::AccessLog;
use crate::policy::keys::Scope;
use crate::policy::rate_limit::LimitKind;
use crate::policy::tenants::KeyEntry;
use crate::server::body::Body;
use crate::store::Store;
use routes::Route;

pub use crate::core::{ReloadSource, Reloaded};

/// The front door: the shared floor, and what only the request path keeps (the status cache
/// that coalesces polls, the failed-authentication throttle).
pub struct Gateway {
    shared: Arc<Shared>,
    pub(crate) status_cache: StatusCache,
    auth_failures: AuthFailures,
}

/// The front door stands on the floor: what it shares with the other wings reads through.
impl std::ops::Deref for Gateway {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// 400 for query parameters the route does not document (lists take `limit` and `offset`).
fn check_query(route: &Route, query: Option<&str>) -> Result<(), GatewayError> {
    let Some(q) = query.filter(|q| !q.is_empty()) else { return Ok(()) };
    let allowed: &[&str] = if matches!(route, Route::List(_)) { &["limit", "offset"] } else { &[] };
    let mut unknown: Vec<String> =
        crate::server::query::names(Some(q)).into_iter().filter(|k| !allowed.contains(&k.as_str())).collect();
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
        Arc::new(Gateway {
            shared: Arc::new(Shared::new(config, store, log, reload_source, tls)),
            status_cache: StatusCache::new(config.upstream.status_cache),
            auth_failures: AuthFailures::new(),
        })
    }

    /// The floor the other wings (background tasks, the admin listener) stand on.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
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
        if let (Some(q), false) = (&ctx.quotas, rsp.headers().contains_key(crate::core::error::RATELIMIT_LIMIT)) {
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
        if key.tenant.disabled {
            ctx.record.tenant = Some(key.tenant.id.clone());
            return Err(GatewayError::TenantDisabled);
        }
        key.mark_used(crate::core::use_time(ctx.record.started));
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
        // A key's allow-list is checked on the family as routing resolved it: no spelling of a
        // path (case, slashes, encoding, the quote route) gets around it.
        if let (Route::Generate(f) | Route::Quote(f), Some(limits)) = (&route, &key.limits) {
            if !limits.allows_family(f.path()) {
                return Err(GatewayError::KeyFamilyNotAllowed(f.path()));
            }
        }
        ctx.quotas = Some(runtime.limits.check(&*self.store, &tenant, LimitKind::Requests).await?);
        match route {
            // The large, rarer stages are boxed (the paid path, lists, usage, webhooks above):
            // otherwise every request's future is as large as the largest of them, allocated
            // and moved whole. Status polls, the hot path, stay inline.
            Route::Generate(family) => {
                Box::pin(crate::paid::generate(
                    &self.shared,
                    ctx,
                    &runtime,
                    &tenant,
                    key.limits.as_deref(),
                    family,
                    req,
                ))
                .await
            }
            Route::Quote(family) => {
                Box::pin(crate::paid::quote(&self.shared, ctx, &runtime, &tenant, key.limits.as_deref(), family, req))
                    .await
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
