//! The admin listener (loopback by default): `/healthz`, `/readyz`, `/metrics`,
//! `POST /admin/reload`, usage, unattributed generations, and teams and keys at runtime
//! (`tenants.rs`). Kept off the tenant port so tenants never see metrics or admin routes.

pub mod client;
pub(crate) mod dashboard;
pub(crate) mod tenants;

use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};

use crate::config::Secret;
use crate::core::Shared;
use crate::server::body::{self, Body};

/// Admin endpoints of one gateway.
pub struct Admin {
    gateway: Arc<Shared>,
    token: Option<Secret>,
    token_env: String,
    /// Wrong admin tokens per client address: past ten, one guess a second.
    failures: crate::core::limits::AdminFailures,
    dashboard: dashboard::Dashboard,
    /// Host names answered besides IP literals and `localhost`.
    hosts: Vec<String>,
    /// `/metrics` needs the admin token.
    metrics_require_token: bool,
}

/// Is `host` (a `Host` header's value) one the admin listener answers? An IP literal or
/// `localhost` always (probes and scrapers dial addresses); any other name only when configured,
/// so a page whose name was rebound to this address (DNS rebinding) is refused.
fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    // HTTP/1.0 and HTTP/2 without :authority: nothing names a host to rebind.
    let Some(host) = host else { return true };
    let Ok(authority) = host.parse::<http::uri::Authority>() else { return false };
    let name = authority.host().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || allowed.contains(&name)
}

use crate::policy::secret::constant_time_eq;

/// 503 `Store unavailable` for an admin request the store could not answer, logged once.
fn store_unavailable(what: &str, e: &crate::store::StoreError) -> Response<Body> {
    tracing::warn!(error = %e, "{what} failed: store unreachable");
    body::detail(StatusCode::SERVICE_UNAVAILABLE, "Store unavailable")
}

/// `?month=YYYY-MM` (default: this month, UTC); 400 for anything else.
// The `Err` is the answer itself, made only on a bad query: boxing it would add an allocation
// to every refusal and a deref to every caller for nothing.
#[allow(clippy::result_large_err)]
fn month_param<B>(req: &Request<B>) -> Result<String, Response<Body>> {
    let month = query_param(req, "month").unwrap_or_else(|| crate::store::month_of(crate::store::now_ms()));
    if crate::store::usage::valid_month(&month) {
        Ok(month)
    } else {
        Err(body::detail(StatusCode::BAD_REQUEST, "month must be YYYY-MM"))
    }
}

/// The request body, up to `cap` bytes (413 past it).
async fn read_capped<B>(incoming: B, cap: usize) -> Result<bytes::Bytes, Response<Body>>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: std::fmt::Display,
{
    body::read_capped(incoming, cap).await.map_err(|e| match e {
        body::CappedError::TooLarge => {
            body::detail(StatusCode::PAYLOAD_TOO_LARGE, &format!("Request body exceeds the {cap}-byte limit"))
        }
        body::CappedError::Broken(m) => {
            body::detail(StatusCode::BAD_REQUEST, &format!("Could not read request body: {m}"))
        }
    })
}

/// The value of query parameter `name`, if given.
fn query_param<B>(req: &Request<B>, name: &str) -> Option<String> {
    crate::server::query::param(req.uri().query(), name)
}

// === impl Admin ===

impl Admin {
    /// The admin token guards `/admin/*`; without one those endpoints refuse everything.
    pub fn new(gateway: Arc<Shared>, server: &crate::config::ServerConfig) -> Arc<Admin> {
        let token = server.admin_token.clone();
        let dashboard = dashboard::Dashboard::new(gateway.clone(), token.clone(), server.currency.clone());
        Arc::new(Admin {
            gateway,
            token,
            token_env: server.admin_token_env.clone(),
            failures: crate::core::limits::AdminFailures::new(),
            dashboard,
            hosts: server.admin_hosts.clone(),
            metrics_require_token: server.metrics_require_token,
        })
    }

    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let Some(token) = &self.token else { return false };
        let presented = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(presented.as_bytes(), token.expose().as_bytes())
    }

    /// `/admin/*` needs the admin token: 403 when none is configured, 401 when it is wrong.
    fn refusal<B: 'static>(&self, req: &Request<B>) -> Option<Response<Body>> {
        if self.token.is_none() {
            return Some(body::detail(
                StatusCode::FORBIDDEN,
                &format!(
                    "Admin API disabled: set the {} environment variable (server.admin_token_env) and restart",
                    self.token_env
                ),
            ));
        }
        // A throttled address gets 429 before its token is looked at, so a guess made while
        // throttled tells nothing.
        let ip = crate::core::peer_ip(req);
        let throttled = |secs: u64| {
            let mut rsp =
                body::detail(StatusCode::TOO_MANY_REQUESTS, "Too many failed authentication attempts; retry later");
            rsp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            Some(rsp)
        };
        if let Some(secs) = self.failures.throttled(ip) {
            return throttled(secs);
        }
        if !self.authorized(req) {
            if let Err(secs) = self.failures.failed(ip) {
                return throttled(secs);
            }
            return Some(body::detail(StatusCode::UNAUTHORIZED, "Invalid credentials"));
        }
        None
    }

    /// Serves one admin request: only for an allowed `Host`, and never cached (spend, keys and
    /// tenants must not linger in a browser or proxy cache).
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        let mut rsp = if host_allowed(host, &self.hosts) {
            self.route(req).await
        } else {
            body::detail(StatusCode::FORBIDDEN, "Host not allowed on the admin listener; add it to server.admin_hosts")
        };
        rsp.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        rsp
    }

    async fn route<B>(self: Arc<Self>, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let path = req.uri().path();
        if path == "/dashboard" || path.starts_with("/dashboard/") {
            return self.dashboard.handle(&self.failures, req).await;
        }
        if path.starts_with("/admin/tenants") || path == "/admin/audit" {
            if let Some(refused) = self.refusal(&req) {
                return refused;
            }
            let (parts, incoming) = req.into_parts();
            let bytes = match read_capped(incoming, tenants::MAX_BODY).await {
                Ok(b) => b,
                Err(refused) => return refused,
            };
            return match tenants::route(&self.gateway, &parts.method, parts.uri.path(), parts.uri.query(), &bytes).await
            {
                Some(rsp) => rsp,
                None => body::detail(StatusCode::NOT_FOUND, "Not found"),
            };
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => body::json(StatusCode::OK, r#"{"status":"ok"}"#),
            (&Method::GET, "/readyz") => match self.gateway.store().ping().await {
                Ok(()) => body::json(StatusCode::OK, r#"{"status":"ready"}"#),
                Err(e) => {
                    tracing::warn!(error = %e, "not ready: the store cannot take a write");
                    body::detail(StatusCode::SERVICE_UNAVAILABLE, "Store unavailable")
                }
            },
            (&Method::GET, "/metrics") if self.metrics_require_token && self.refusal(&req).is_some() => {
                self.refusal(&req).unwrap_or_else(|| body::detail(StatusCode::UNAUTHORIZED, "Invalid credentials"))
            }
            (&Method::GET, "/metrics") => {
                let runtime = self.gateway.current();
                self.gateway.metrics().set_budgets(
                    runtime.tenants.tenants().iter().filter_map(|t| t.monthly_budget.map(|b| (t.id.clone(), b))),
                );
                self.gateway.metrics().set_token_rejected(self.gateway.upstream().token_rejected());
                let text = self
                    .gateway
                    .metrics()
                    .render(&**self.gateway.store(), self.gateway.upstream().circuit_state())
                    .await;
                let mut rsp = body::json(StatusCode::OK, text);
                rsp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                rsp
            }
            (&Method::GET, "/openapi.json") => match openapi_json() {
                Ok(json) => body::json(StatusCode::OK, json),
                Err(e) => body::detail(StatusCode::INTERNAL_SERVER_ERROR, e),
            },
            (&Method::GET, "/openapi-admin.json") => match admin_openapi_json() {
                Ok(json) => body::json(StatusCode::OK, json),
                Err(e) => body::detail(StatusCode::INTERNAL_SERVER_ERROR, e),
            },
            (&Method::POST, "/admin/reload") => {
                if let Some(refused) = self.refusal(&req) {
                    return refused;
                }
                match self.gateway.reload() {
                    Ok(r) => body::json(
                        StatusCode::OK,
                        serde_json::json!({ "status": "reloaded", "tenants": r.tenants, "restart_required": r.restart_required }).to_string(),
                    ),
                    Err(e) => body::detail(StatusCode::UNPROCESSABLE_ENTITY, &format!("Config refused, previous config still serving: {e}")),
                }
            }
            (&Method::GET, "/admin/usage") => {
                if let Some(refused) = self.refusal(&req) {
                    return refused;
                }
                let month = match month_param(&req) {
                    Ok(m) => m,
                    Err(refused) => return refused,
                };
                let tenant = query_param(&req, "tenant");
                let csv = req
                    .headers()
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("text/csv"));
                let runtime = self.gateway.current();
                match crate::store::usage::report(
                    &**self.gateway.store(),
                    runtime.config_tenants.tenants(),
                    &month,
                    tenant.as_deref(),
                )
                .await
                {
                    Ok(r) if csv => {
                        let mut rsp = body::json(StatusCode::OK, r.csv());
                        rsp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
                        rsp
                    }
                    Ok(r) => body::json(StatusCode::OK, serde_json::to_string(&r).unwrap_or_default()),
                    Err(e) => store_unavailable("usage report", &e),
                }
            }
            (&Method::POST, "/admin/webhooks/redeliver") => {
                if let Some(refused) = self.refusal(&req) {
                    return refused;
                }
                let tenant = query_param(&req, "tenant");
                match self.gateway.store().outbox_redeliver(tenant.as_deref()).await {
                    Ok(n) => {
                        tracing::info!(deliveries = n, tenant = tenant.as_deref(), "dead-letter webhooks queued again");
                        if let Some(r) = &self.gateway.sender {
                            r.wake();
                        }
                        body::json(StatusCode::OK, serde_json::json!({ "redelivering": n }).to_string())
                    }
                    Err(e) => store_unavailable("redeliver", &e),
                }
            }
            (&Method::GET, "/admin/unattributed") => {
                if let Some(refused) = self.refusal(&req) {
                    return refused;
                }
                let month = match month_param(&req) {
                    Ok(m) => m,
                    Err(refused) => return refused,
                };
                match self.gateway.store().generations_in_month(&month, Some(crate::store::UNATTRIBUTED)).await {
                    Ok(rows) => {
                        let items: Vec<serde_json::Value> = rows
                            .iter()
                            .map(|r| serde_json::json!({ "generation_id": r.id, "family": r.family.path(), "price": r.price.to_string(), "status": r.status, "created_ms": r.created_ms }))
                            .collect();
                        body::json(
                            StatusCode::OK,
                            serde_json::json!({ "month": month, "unattributed": items }).to_string(),
                        )
                    }
                    Err(e) => store_unavailable("unattributed list", &e),
                }
            }
            (&Method::POST, path) if path.starts_with("/admin/unattributed/") => {
                if let Some(refused) = self.refusal(&req) {
                    return refused;
                }
                self.decide_unattributed(&req, &path["/admin/unattributed/".len()..]).await
            }
            (
                _,
                "/healthz"
                | "/readyz"
                | "/metrics"
                | "/openapi.json"
                | "/openapi-admin.json"
                | "/admin/reload"
                | "/admin/webhooks/redeliver"
                | "/admin/usage"
                | "/admin/unattributed",
            ) => body::detail(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
            _ => body::detail(StatusCode::NOT_FOUND, "Not found"),
        }
    }
}

impl Admin {
    /// `POST /admin/unattributed/{id}/assign?tenant=ID` charges an unattributed generation to a
    /// tenant (who can then read it); `.../dismiss` leaves it to the account. One audit line each.
    async fn decide_unattributed<B: 'static>(&self, req: &Request<B>, rest: &str) -> Response<Body> {
        let Some((id, action)) = rest.rsplit_once('/') else { return body::detail(StatusCode::NOT_FOUND, "Not found") };
        let to: Arc<str> = match action {
            "assign" => {
                let Some(tenant) = query_param(req, "tenant") else {
                    return body::detail(StatusCode::UNPROCESSABLE_ENTITY, "tenant: is required (?tenant=ID)");
                };
                match self.gateway.current().tenants.tenants().iter().find(|t| *t.id == *tenant) {
                    Some(t) => t.id.clone(),
                    None => {
                        return body::detail(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            &format!("tenant: no tenant {tenant:?} is configured"),
                        )
                    }
                }
            }
            "dismiss" => Arc::from(crate::store::DISMISSED),
            _ => return body::detail(StatusCode::NOT_FOUND, "Not found"),
        };
        match self.gateway.store().reassign(id, crate::store::UNATTRIBUTED, &to).await {
            Ok(Some(r)) => {
                tracing::info!(audit = true, action, generation = %r.id, family = r.family.path(), price = %r.price, tenant = %to, "unattributed generation decided by an operator");
                body::json(
                    StatusCode::OK,
                    serde_json::json!({ "generation_id": r.id, "owner": &*to, "price": r.price.to_string() })
                        .to_string(),
                )
            }
            Ok(None) => body::detail(StatusCode::NOT_FOUND, "Generation not found"),
            Err(e) => store_unavailable("unattributed decision", &e),
        }
    }
}

/// The tenant API's OpenAPI document (`docs/openapi.yaml`, compiled in), as JSON, converted once.
pub fn openapi_json() -> Result<&'static str, &'static str> {
    static JSON: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    as_json(&JSON, "docs/openapi.yaml", include_str!("../../docs/openapi.yaml"))
}

/// The admin API's OpenAPI document (`docs/admin-openapi.yaml`), as JSON.
pub fn admin_openapi_json() -> Result<&'static str, &'static str> {
    static JSON: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    as_json(&JSON, "docs/admin-openapi.yaml", include_str!("../../docs/admin-openapi.yaml"))
}

fn as_json(
    cell: &'static std::sync::OnceLock<Result<String, String>>,
    name: &str,
    yaml: &str,
) -> Result<&'static str, &'static str> {
    cell.get_or_init(|| {
        let doc: serde_json::Value = serde_yaml_ng::from_str(yaml).map_err(|e| format!("{name}: {e}"))?;
        serde_json::to_string(&doc).map_err(|e| e.to_string())
    })
    .as_deref()
    .map_err(|e| {
        tracing::error!(error = e, "a compiled-in OpenAPI document does not parse");
        "OpenAPI document unavailable"
    })
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn ip_literals_localhost_and_configured_names_only() {
        let allowed = vec!["tollgate-admin.internal".to_string()];
        for ok in [
            None,
            Some("127.0.0.1:9090"),
            Some("10.1.2.3"),
            Some("[::1]:9090"),
            Some("localhost:9090"),
            Some("LOCALHOST"),
            Some("tollgate-admin.internal:9090"),
        ] {
            assert!(host_allowed(ok, &allowed), "{ok:?}");
        }
        for bad in [
            Some("evil.example"),
            Some("rebind.attacker.test:9090"),
            Some("localhost.evil.example"),
            Some(""),
            Some("a b"),
        ] {
            assert!(!host_allowed(bad, &allowed), "{bad:?}");
        }
    }
}
