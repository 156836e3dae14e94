//! Configuration: TOML text → the file's raw sections (`file.rs`, serde) → validated here →
//! the typed `Config` (`types.rs`). Secrets come only from the environment (`env.rs`).
//!
//! Every problem is collected before giving up, so an operator fixes a config in one pass.

use std::collections::{HashMap, HashSet};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;

use crate::policy::catalog::{toml_syntax_error, Catalog};
use crate::policy::money::Usd;
use crate::policy::pricing::{FamilyPrices, PriceTable};
use crate::policy::rate_limit;
pub use crate::policy::secret::Secret;
use crate::policy::tenants::{Tenant, TenantDirectory};

mod env;
mod file;
mod types;

/// Tenant-facing listener when none is configured.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Admin listener: loopback, because /metrics and /admin are not for tenants.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// 16 MiB: a 10 MiB image is ~14 MB as base64, plus the rest of the JSON.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
/// Whole-request deadline; longer than the upstream timeout so upstream errors win.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 60;
/// Drain time on SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;
/// Slowloris guard: a client must finish its headers within this.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Open connections accepted at once; more wait in the kernel's backlog.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
/// Request-body bytes buffered at once across all requests (503 past it): bounds memory.
pub const DEFAULT_MAX_BUFFERED_BODY_BYTES: u64 = 512 * 1024 * 1024;
/// Uploads one tenant may have in progress at once.
pub const DEFAULT_MAX_UPLOADS_PER_TENANT: u64 = 32;
/// Slowest upload accepted after its first 5 s (bytes per second).
pub const DEFAULT_MIN_UPLOAD_BYTES_PER_SEC: u64 = 16_384;
/// Keep-alive and HTTP/2 connections with nothing in flight close after this.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
/// Env var holding the admin token for `POST /admin/reload`.
pub const DEFAULT_ADMIN_TOKEN_ENV: &str = "TOLLGATE_ADMIN_TOKEN";
/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;
/// The platform.
pub const DEFAULT_BASE_URL: &str = "https://platform.runblob.io";
/// Env var holding the platform token.
pub const DEFAULT_TOKEN_ENV: &str = "RUNBLOB_TOKEN";
/// TCP+TLS connect deadline to the platform.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2000;
/// Deadline for one upstream request (headers and body).
pub const DEFAULT_UPSTREAM_TIMEOUT_SECS: u64 = 30;
/// Polls of one generation share a platform answer this long (0: off); see `status_cache.rs`.
pub const DEFAULT_STATUS_CACHE_MS: u64 = 1000;
/// Extra attempts for idempotent GETs on connect errors and 502/503/504.
pub const DEFAULT_GET_RETRIES: u32 = 2;
/// Consecutive upstream failures that open the circuit.
pub const DEFAULT_CIRCUIT_FAILURES: u32 = 5;
/// How long an open circuit fails fast before probing again.
pub const DEFAULT_CIRCUIT_OPEN_SECS: u64 = 10;
/// SQLite file of the embedded store.
pub const DEFAULT_STORE_PATH: &str = "data/tollgate.db";
/// Redis command deadline: money fails closed quickly rather than hanging.
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 500;
/// How long a fetched account balance is trusted.
pub const DEFAULT_BALANCE_TTL_MS: u64 = 5000;
/// Per-tenant defaults (SPEC §2 example values).
pub const DEFAULT_RPS: u32 = 20;
/// Burst above the sustained rate.
pub const DEFAULT_BURST: u32 = 40;
/// Paid generations per minute.
pub const DEFAULT_GPM: u32 = 10;

/// A config that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// Path given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// One or more problems, all listed, one per line.
    #[error("invalid config ({} problem{}):\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.iter().map(|p| format!("  - {}", p.replace(['\n', '\r'], " "))).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

pub use env::{Env, ProcessEnv};
use file::*;
pub use types::*;

/// Keys written in this project's docs and example configs. A tenant that accepts one can be
/// spent by anyone who has read them.
pub const PUBLIC_KEYS: &[&str] =
    &["tg_example_marketing", "tg_example_research", "tg_demo_marketing_key", "tg_demo_research_key"];

/// The absolute directory of a config file: its relative paths are resolved against it, so the
/// ledger and the catalog do not depend on where the process was started.
fn config_dir(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    abs.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// A serde/TOML message on one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn positive(v: Option<u64>, default: u64, name: &str, problems: &mut Vec<String>) -> u64 {
    let v = v.unwrap_or(default);
    if v == 0 {
        problems.push(format!("{name} must be greater than 0"));
        return default;
    }
    v
}

fn addr(v: Option<String>, default: &str, name: &str, problems: &mut Vec<String>) -> SocketAddr {
    let s = v.unwrap_or_else(|| default.to_string());
    s.parse().unwrap_or_else(|_| {
        problems.push(format!("{name} = {s:?} is not an address like \"127.0.0.1:8080\""));
        default.parse().expect("default address parses")
    })
}

fn parse_base_url(s: &str, problems: &mut Vec<String>) -> Uri {
    let fallback = || Uri::from_static(DEFAULT_BASE_URL);
    let trimmed = s.trim_end_matches('/');
    match trimmed.parse::<Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http") | Some("https"))
                && u.authority().is_some()
                && u.query().is_none() =>
        {
            u
        }
        _ => {
            problems
                .push(format!("upstream.base_url = {s:?} must be an http(s) URL like \"https://platform.runblob.io\""));
            fallback()
        }
    }
}

fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

// === impl Config ===

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        Config::from_toml_at(&text, env, &config_dir(path))
    }

    /// Validates config text. Missing secrets are problems too. Relative paths in it are taken
    /// from the current directory (a file's are from its own directory: [`Config::load`]).
    pub fn from_toml(text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        Config::from_toml_at(text, env, &std::env::current_dir().unwrap_or_default())
    }

    /// [`Config::from_toml`] with relative paths resolved against `base`.
    pub fn from_toml_at(text: &str, env: &dyn Env, base: &Path) -> Result<Config, ConfigError> {
        let (config, problems) = Config::parse(text, env, base);
        match config {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }

    /// [`Config::check`] of a file, relative paths resolved against its directory.
    pub fn check_file(path: &Path, env: &dyn Env) -> Result<(Config, Vec<String>), ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        Config::check_at(&text, env, &config_dir(path))
    }

    /// Like [`Config::from_toml`], but a missing upstream token is a warning, not a problem
    /// (`check-config` runs where secrets are absent). Returns the config and the warnings.
    pub fn check(text: &str, env: &dyn Env) -> Result<(Config, Vec<String>), ConfigError> {
        Config::check_at(text, env, &std::env::current_dir().unwrap_or_default())
    }

    fn check_at(text: &str, env: &dyn Env, base: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let (config, problems) = Config::parse(text, env, base);
        let (secret, other): (Vec<String>, Vec<String>) = problems.into_iter().partition(|p| p.starts_with("secret:"));
        match config {
            Some(c) if other.is_empty() => Ok((c, secret)),
            _ => Err(ConfigError::Invalid(other.into_iter().chain(secret).collect())),
        }
    }

    fn parse(text: &str, env: &dyn Env, base: &Path) -> (Option<Config>, Vec<String>) {
        let mut p = Vec::new();
        let table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => return (None, vec![toml_syntax_error(text, &e)]),
        };
        for key in table.keys() {
            if ![
                "server",
                "upstream",
                "store",
                "balance",
                "reconcile",
                "webhooks",
                "alerts",
                "telemetry",
                "catalog",
                "pricing",
                "tenants",
            ]
            .contains(&key.as_str())
            {
                p.push(format!("unknown key `{key}`"));
            }
        }
        let server: ServerSection = section(table.get("server"), "server", &mut p);
        let upstream: UpstreamSection = section(table.get("upstream"), "upstream", &mut p);
        let store: StoreSection = section(table.get("store"), "store", &mut p);
        let balance: BalanceSection = section(table.get("balance"), "balance", &mut p);
        let reconcile: ReconcileSection = section(table.get("reconcile"), "reconcile", &mut p);
        let webhooks: Option<WebhooksSection> = table.get("webhooks").map(|v| section(Some(v), "webhooks", &mut p));
        let alerts: Option<AlertsSection> = table.get("alerts").map(|v| section(Some(v), "alerts", &mut p));
        let telemetry: Option<TelemetrySection> = table.get("telemetry").map(|v| section(Some(v), "telemetry", &mut p));
        let catalog: CatalogSection = section(table.get("catalog"), "catalog", &mut p);
        let pricing: HashMap<String, PriceSpec> = match table.get("pricing") {
            None => HashMap::new(),
            // Entry by entry, so one bad family does not hide the others' problems.
            Some(toml::Value::Table(t)) => t
                .iter()
                .filter_map(|(name, v)| {
                    let mut local = Vec::new();
                    let spec: Option<PriceSpec> = section(Some(v), &format!("pricing.{name}"), &mut local);
                    if !local.is_empty() || spec.is_none() {
                        p.push(format!("pricing.{name:?} must be a price string or a table of price strings"));
                        return None;
                    }
                    spec.map(|s| (name.clone(), s))
                })
                .collect(),
            Some(_) => {
                p.push("[pricing] must be a table".into());
                HashMap::new()
            }
        };
        let tenants: Vec<TenantSection> = match table.get("tenants") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                // Named by id where it has one: `tenant "research".monthly_budgt`, not an index.
                .map(|(i, v)| {
                    let name = match v.get("id").and_then(|id| id.as_str()) {
                        Some(id) => format!("tenant {id:?}"),
                        None => format!("tenants[{i}]"),
                    };
                    section(Some(v), &name, &mut p)
                })
                .collect(),
            Some(_) => {
                p.push("tenants must be an array of tables ([[tenants]])".into());
                Vec::new()
            }
        };

        let server = Config::server(server, env, &mut p);
        let upstream = Config::upstream(upstream, env, &mut p);
        let store = Config::store(store, env, base, &mut p);
        let balance = BalanceConfig {
            cache_ttl: Duration::from_millis(positive(
                balance.cache_ttl_ms,
                DEFAULT_BALANCE_TTL_MS,
                "balance.cache_ttl_ms",
                &mut p,
            )),
            reserve: match balance.reserve.as_deref().map(Usd::parse) {
                None => Usd::ZERO,
                Some(Ok(r)) if r >= Usd::ZERO => r,
                Some(_) => {
                    p.push("balance.reserve must be a non-negative decimal string like \"1.00\"".into());
                    Usd::ZERO
                }
            },
        };
        let catalog_path = catalog.path.map(|p| base.join(p));
        let catalog = match &catalog_path {
            None => Catalog::builtin().clone(),
            Some(path) => Catalog::load(path).unwrap_or_else(|problems| {
                p.extend(problems);
                Catalog::builtin().clone()
            }),
        };
        let pricing = Config::pricing(&catalog, pricing, &mut p);
        let no_file_tenants = tenants.is_empty();
        let tenants = Config::tenants(tenants, env, &mut p);
        // With the admin API on, teams can all live in the store: a file without [[tenants]]
        // serves the ones made at runtime. Without it, nothing could ever be served.
        if no_file_tenants && server.admin_token.is_none() {
            p.push(format!(
                "no [[tenants]] configured and the admin API is off: every request would be refused (add a [[tenants]] section, or set {} to manage teams at runtime)",
                server.admin_token_env
            ));
        }
        let reconcile = ReconcileConfig {
            interval: Duration::from_secs(positive(
                reconcile.interval_secs,
                DEFAULT_RECONCILE_INTERVAL_SECS,
                "reconcile.interval_secs",
                &mut p,
            )),
            status_calls_per_minute: positive(
                reconcile.status_calls_per_minute.map(u64::from),
                DEFAULT_RECONCILE_CALLS_PER_MINUTE as u64,
                "reconcile.status_calls_per_minute",
                &mut p,
            ) as u32,
            unknown_after: Duration::from_secs(positive(
                reconcile.unknown_after_secs,
                DEFAULT_UNKNOWN_AFTER_SECS,
                "reconcile.unknown_after_secs",
                &mut p,
            )),
            lease_margin: Duration::from_millis(reconcile.lease_margin_ms.unwrap_or(DEFAULT_LEASE_MARGIN_MS)),
        };
        let webhooks = webhooks.map(|w| Config::webhooks(w, &mut p));
        let alerts = alerts.map(|a| Config::alerts(a, env, &mut p));
        let telemetry = telemetry.and_then(|t| Config::telemetry(t, &mut p));
        let config = Config {
            server,
            upstream,
            store,
            balance,
            reconcile,
            webhooks,
            alerts,
            telemetry,
            catalog,
            catalog_path,
            pricing,
            tenants,
        };
        (Some(config), p)
    }

    fn server(s: ServerSection, env: &dyn Env, p: &mut Vec<String>) -> ServerConfig {
        let token_env = s.admin_token_env.clone().unwrap_or_else(|| DEFAULT_ADMIN_TOKEN_ENV.to_string());
        let mut cfg = ServerConfig {
            listen: addr(s.listen, DEFAULT_LISTEN, "server.listen", p),
            admin_listen: addr(s.admin_listen, DEFAULT_ADMIN_LISTEN, "server.admin_listen", p),
            max_body_bytes: positive(s.max_body_bytes, DEFAULT_MAX_BODY_BYTES, "server.max_body_bytes", p) as usize,
            request_timeout: Duration::from_secs(positive(
                s.request_timeout_secs,
                DEFAULT_REQUEST_TIMEOUT_SECS,
                "server.request_timeout_secs",
                p,
            )),
            shutdown_grace: Duration::from_secs(s.shutdown_grace_secs.unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS)),
            header_read_timeout: Duration::from_secs(positive(
                s.header_read_timeout_secs,
                DEFAULT_HEADER_READ_TIMEOUT_SECS,
                "server.header_read_timeout_secs",
                p,
            )),
            max_connections: positive(s.max_connections, DEFAULT_MAX_CONNECTIONS, "server.max_connections", p) as usize,
            max_buffered_body_bytes: positive(
                s.max_buffered_body_bytes,
                DEFAULT_MAX_BUFFERED_BODY_BYTES,
                "server.max_buffered_body_bytes",
                p,
            ) as usize,
            max_buffered_body_bytes_per_tenant: 0,
            max_uploads_per_tenant: positive(
                s.max_uploads_per_tenant,
                DEFAULT_MAX_UPLOADS_PER_TENANT,
                "server.max_uploads_per_tenant",
                p,
            ) as usize,
            min_upload_bytes_per_sec: s.min_upload_bytes_per_sec.unwrap_or(DEFAULT_MIN_UPLOAD_BYTES_PER_SEC),
            idle_timeout: Duration::from_secs(positive(
                s.idle_timeout_secs,
                DEFAULT_IDLE_TIMEOUT_SECS,
                "server.idle_timeout_secs",
                p,
            )),
            admin_token: env.var(&token_env).filter(|t| !t.is_empty()).map(Secret::new),
            admin_token_env: token_env.clone(),
            admin_hosts: s.admin_hosts.unwrap_or_default().into_iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
            metrics_require_token: s.metrics_require_token.unwrap_or(false),
            expose_account_balance: s.expose_account_balance.unwrap_or(false),
            currency: s.currency.clone().unwrap_or_else(|| "USD".to_string()),
            tls: Self::tls(s.tls_cert_path, s.tls_key_path, p),
        };
        if !(1..=8).contains(&cfg.currency.len()) || !cfg.currency.bytes().all(|b| b.is_ascii_alphanumeric()) {
            p.push(format!("server.currency = {:?} must be 1-8 letters or digits, like \"USD\"", cfg.currency));
        }
        for h in &cfg.admin_hosts {
            if h.is_empty() || h.contains(['/', ':', ' ']) {
                p.push(format!("server.admin_hosts: {h:?} is not a host name (no port, no scheme)"));
            }
        }
        // An operator-chosen token can be guessed offline from any page it signs; 32 characters
        // (`openssl rand -hex 16`) put that out of reach.
        if let Some(t) = &cfg.admin_token {
            if t.expose().chars().count() < MIN_ADMIN_TOKEN_CHARS {
                p.push(format!(
                    "{token_env}: the admin token must be at least {MIN_ADMIN_TOKEN_CHARS} characters (it has {}); make one with `openssl rand -hex 32`",
                    t.expose().chars().count()
                ));
            }
        }
        // A quarter of the total by default: one tenant's stalled uploads never fill it.
        let per_tenant = s.max_buffered_body_bytes_per_tenant.unwrap_or(cfg.max_buffered_body_bytes as u64 / 4);
        if per_tenant == 0 {
            p.push("server.max_buffered_body_bytes_per_tenant must be greater than 0".into());
        }
        cfg.max_buffered_body_bytes_per_tenant = (per_tenant as usize).clamp(1, cfg.max_buffered_body_bytes);
        cfg
    }

    /// Both paths or neither; the files must hold a certificate and its key. A missing file is
    /// reported like a missing secret (`check-config --skip-secrets` only warns).
    fn tls(cert: Option<String>, key: Option<String>, p: &mut Vec<String>) -> Option<TlsPaths> {
        match (cert.filter(|c| !c.is_empty()), key.filter(|k| !k.is_empty())) {
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                p.push(
                    "server.tls_cert_path and server.tls_key_path go together: set both (TLS) or neither (plain HTTP)"
                        .into(),
                );
                None
            }
            (Some(cert), Some(key)) => {
                let paths = TlsPaths { cert: cert.into(), key: key.into() };
                let missing: Vec<_> = [("tls_cert_path", &paths.cert), ("tls_key_path", &paths.key)]
                    .into_iter()
                    .filter(|(_, f)| !f.is_file())
                    .collect();
                if !missing.is_empty() {
                    for (k, f) in missing {
                        p.push(format!("secret: server.{k} {} is not a readable file", f.display()));
                    }
                } else if let Err(e) = crate::server::tls::read(&paths.cert, &paths.key) {
                    p.push(e);
                }
                Some(paths)
            }
        }
    }

    fn upstream(u: UpstreamSection, env: &dyn Env, p: &mut Vec<String>) -> UpstreamConfig {
        let base_url = parse_base_url(u.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL), p);
        let token_env = u.token_env.unwrap_or_else(|| DEFAULT_TOKEN_ENV.to_string());
        let token = match env.var(&token_env).filter(|t| !t.trim().is_empty()) {
            Some(t) => Secret::new(t.trim()),
            None => {
                p.push(format!("secret: environment variable {token_env} (upstream.token_env) is not set"));
                Secret::new("")
            }
        };
        UpstreamConfig {
            base_url,
            token,
            connect_timeout: Duration::from_millis(positive(
                u.connect_timeout_ms,
                DEFAULT_CONNECT_TIMEOUT_MS,
                "upstream.connect_timeout_ms",
                p,
            )),
            timeout: Duration::from_secs(positive(
                u.timeout_secs,
                DEFAULT_UPSTREAM_TIMEOUT_SECS,
                "upstream.timeout_secs",
                p,
            )),
            get_retries: u.get_retries.unwrap_or(DEFAULT_GET_RETRIES),
            status_cache: Duration::from_millis(u.status_cache_ms.unwrap_or(DEFAULT_STATUS_CACHE_MS)),
            circuit_failure_threshold: positive(
                u.circuit_failure_threshold.map(u64::from),
                DEFAULT_CIRCUIT_FAILURES as u64,
                "upstream.circuit_failure_threshold",
                p,
            ) as u32,
            circuit_open: Duration::from_secs(positive(
                u.circuit_open_secs,
                DEFAULT_CIRCUIT_OPEN_SECS,
                "upstream.circuit_open_secs",
                p,
            )),
        }
    }

    /// An http(s) URL; a bare collector address gets the standard `/v1/traces` path.
    fn telemetry(t: TelemetrySection, p: &mut Vec<String>) -> Option<TelemetryConfig> {
        let endpoint = t.otlp_endpoint.unwrap_or_default().trim().to_string();
        if endpoint.is_empty() {
            p.push(
                "telemetry.otlp_endpoint is required in [telemetry] (for example http://127.0.0.1:4318/v1/traces)"
                    .into(),
            );
            return None;
        }
        let Ok(uri) = endpoint.parse::<Uri>() else {
            p.push(format!("telemetry.otlp_endpoint `{endpoint}` is not a URL"));
            return None;
        };
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            p.push(format!("telemetry.otlp_endpoint `{endpoint}` must be an http(s) URL with a host"));
            return None;
        }
        let otlp_endpoint = if matches!(uri.path(), "" | "/") {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        } else {
            endpoint
        };
        Some(TelemetryConfig {
            otlp_endpoint,
            service_name: t.service_name.filter(|s| !s.is_empty()).unwrap_or_else(|| "tollgate".into()),
        })
    }

    fn alerts(a: AlertsSection, env: &dyn Env, p: &mut Vec<String>) -> AlertsConfig {
        let allow_http_loopback = a.allow_http_loopback.unwrap_or(false);
        let url = a.url.unwrap_or_default().trim().to_string();
        let policy = crate::policy::callback::Policy { allow_http_loopback };
        if url.is_empty() {
            p.push("alerts.url is required: where budget and balance alerts are POSTed".into());
        } else if let Err(e) = policy.check_url(&url) {
            p.push(format!("alerts.url {url:?} {e}"));
        }
        let secret = match a.secret_env.as_deref() {
            None => {
                p.push(
                    "alerts.secret_env is required: the variable holding the whsec_ secret alerts are signed with"
                        .into(),
                );
                Secret::new("")
            }
            Some(var) => match env.var(var).filter(|v| !v.trim().is_empty()) {
                None => {
                    p.push(format!("secret: environment variable {var} (alerts.secret_env) is not set"));
                    Secret::new("")
                }
                Some(v) => match crate::policy::signing::SigningKey::parse(&v) {
                    Ok(_) => Secret::new(v.trim()),
                    Err(e) => {
                        p.push(format!("alerts.secret_env: {var}: {e}"));
                        Secret::new("")
                    }
                },
            },
        };
        let mut thresholds = a.thresholds.unwrap_or_else(|| vec![0.8, 1.0]);
        if thresholds.iter().any(|t| !(t.is_finite() && *t > 0.0 && *t <= 10.0)) {
            p.push("alerts.thresholds must be shares of the budget above 0 and at most 10, like [0.8, 1.0]".into());
        }
        thresholds.sort_by(|a, b| a.total_cmp(b));
        thresholds.dedup();
        let balance_below = match a.balance_below.as_deref().map(Usd::parse) {
            None => None,
            Some(Ok(b)) if b > Usd::ZERO => Some(b),
            Some(_) => {
                p.push("alerts.balance_below must be a positive amount like \"20.00\"".into());
                None
            }
        };
        AlertsConfig {
            url,
            secret,
            thresholds,
            balance_below,
            allow_http_loopback,
            retry_base: Duration::from_millis(positive(a.retry_base_ms, 30_000, "alerts.retry_base_ms", p)),
        }
    }

    fn webhooks(w: WebhooksSection, p: &mut Vec<String>) -> WebhooksConfig {
        let allow_http_loopback = w.allow_http_loopback.unwrap_or(false);
        let base = w.public_base_url.unwrap_or_default().trim().trim_end_matches('/').to_string();
        let policy = crate::policy::callback::Policy { allow_http_loopback };
        if base.is_empty() {
            p.push("webhooks.public_base_url is required: where the platform can reach this gateway".into());
        } else if let Err(e) = policy.check_url(&base) {
            p.push(format!("webhooks.public_base_url {base:?} {e}"));
        }
        WebhooksConfig {
            public_base_url: base,
            allow_http_loopback,
            retry_base: Duration::from_millis(positive(w.retry_base_ms, 30_000, "webhooks.retry_base_ms", p)),
            attempt_timeout: Duration::from_millis(positive(
                w.attempt_timeout_ms,
                10_000,
                "webhooks.attempt_timeout_ms",
                p,
            )),
            max_attempts: positive(w.max_attempts.map(u64::from), 6, "webhooks.max_attempts", p) as u32,
            concurrency: positive(w.concurrency, 16, "webhooks.concurrency", p) as usize,
        }
    }

    fn store(s: StoreSection, env: &dyn Env, base: &Path, p: &mut Vec<String>) -> StoreConfig {
        match s.backend.as_deref().unwrap_or("sqlite") {
            "sqlite" => {
                StoreConfig::Sqlite { path: base.join(s.path.unwrap_or_else(|| DEFAULT_STORE_PATH.to_string())) }
            }
            "memory" => StoreConfig::Memory,
            "redis" => {
                let password = s.password_env.as_ref().and_then(|var| match env.var(var).filter(|v| !v.is_empty()) {
                    // The password comes from the environment, never the file.
                    Some(pw) => Some(pw),
                    None => {
                        p.push(format!("secret: environment variable {var} (store.password_env) is not set"));
                        None
                    }
                });
                let target = match (s.url, s.sentinels) {
                    (Some(_), Some(_)) => {
                        p.push("store.url and store.sentinels are alternatives: set one".into());
                        RedisTarget::Url(String::new())
                    }
                    (Some(url), None)
                        if url.starts_with("redis://")
                            || url.starts_with("rediss://")
                            || url.starts_with("unix://") =>
                    {
                        if s.master_name.is_some() || s.db.is_some() {
                            p.push("store.master_name and store.db go with store.sentinels (with store.url, the database is in the url)".into());
                        }
                        RedisTarget::Url(match password {
                            Some(pw) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                                let (scheme, rest) = url.split_once("://").unwrap_or(("redis", &url));
                                let enc: String = pw
                                    .bytes()
                                    .map(|b| {
                                        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                                            (b as char).to_string()
                                        } else {
                                            format!("%{b:02X}")
                                        }
                                    })
                                    .collect();
                                format!("{scheme}://:{enc}@{}", rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest))
                            }
                            Some(_) => {
                                p.push("store.password_env needs a redis:// or rediss:// url".into());
                                url
                            }
                            None => url,
                        })
                    }
                    (None, Some(sentinels)) => {
                        if sentinels.is_empty() {
                            p.push("store.sentinels needs at least one \"host:port\"".into());
                        }
                        for a in &sentinels {
                            let ok = a
                                .rsplit_once(':')
                                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0));
                            if !ok {
                                p.push(format!("store.sentinels: {a:?} is not \"host:port\""));
                            }
                        }
                        let master_name = s.master_name.unwrap_or_default();
                        if master_name.is_empty() {
                            p.push("store.master_name must be set to the name the sentinels monitor when store.sentinels is set".into());
                        }
                        let db = s.db.unwrap_or(0);
                        if db < 0 {
                            p.push("store.db must be 0 or more".into());
                        }
                        RedisTarget::Sentinel { sentinels, master_name, db, password: password.map(Secret::new) }
                    }
                    _ => {
                        p.push("store.url must be set to redis://host:port (or store.sentinels and store.master_name) when store.backend = \"redis\"".into());
                        RedisTarget::Url(String::new())
                    }
                };
                let min_replica_acks = s.min_replica_acks.unwrap_or(0);
                if min_replica_acks > 16 {
                    p.push(format!("store.min_replica_acks = {min_replica_acks} is more replicas than a Redis primary is run with (at most 16)"));
                }
                StoreConfig::Redis {
                    target,
                    timeout: Duration::from_millis(positive(
                        s.timeout_ms,
                        DEFAULT_REDIS_TIMEOUT_MS,
                        "store.timeout_ms",
                        p,
                    )),
                    key_prefix: s.key_prefix.unwrap_or_else(|| "tollgate".to_string()),
                    min_replica_acks,
                }
            }
            other => {
                p.push(format!("store.backend = {other:?} must be \"sqlite\", \"memory\" or \"redis\""));
                StoreConfig::Memory
            }
        }
    }

    fn pricing(catalog: &Catalog, pricing: HashMap<String, PriceSpec>, p: &mut Vec<String>) -> PriceTable {
        let mut families = HashMap::new();
        let mut names: Vec<&String> = pricing.keys().collect();
        names.sort();
        for name in names {
            let Some(family) = catalog.get(name) else {
                p.push(format!("pricing.{name:?} is not a model family (known: {})", catalog.paths()));
                continue;
            };
            let entries: Vec<(String, String)> = match &pricing[name] {
                PriceSpec::Flat(s) => vec![("default".to_string(), s.clone())],
                PriceSpec::Table(t) => t.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            };
            if entries.is_empty() {
                p.push(format!("pricing.{name:?} has no prices: give it a price string or a table of them"));
            }
            let mut parsed = Vec::new();
            for (key, value) in entries {
                // A hold must be the highest price a request can cost: a zero hold admits
                // requests a budget cannot pay for, which settlement then charges anyway.
                match Usd::parse(&value) {
                    Ok(u) if u > Usd::ZERO => parsed.push((key, u)),
                    Ok(_) => p.push(format!("pricing.{name:?}.{key:?} = {value:?} must be above zero (the hold must be the highest price a request can cost)")),
                    _ => p.push(format!("pricing.{name:?}.{key:?} = {value:?} is not a decimal string like \"0.12\"")),
                }
            }
            families.insert(family, FamilyPrices::new(parsed));
        }
        PriceTable::new(families)
    }

    fn tenants(sections: Vec<TenantSection>, env: &dyn Env, p: &mut Vec<String>) -> TenantDirectory {
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        for (i, t) in sections.into_iter().enumerate() {
            let at = format!("tenants[{i}]");
            let id = match t.id {
                Some(id) if valid_tenant_id(&id) => id,
                Some(id) => {
                    p.push(format!("{at}.id = {id:?} must be 1-64 characters of A-Z a-z 0-9 - _ ."));
                    continue;
                }
                None => {
                    p.push(format!("{at}.id is required"));
                    continue;
                }
            };
            let at = format!("tenant {id:?}");
            if !seen.insert(id.clone()) {
                p.push(format!("{at} is listed twice"));
            }
            let mut digests = Vec::new();
            let keys = t.keys_sha256.unwrap_or_default();
            if keys.is_empty() {
                p.push(format!("{at}: keys_sha256 needs at least one key digest (run `tollgate keygen`)"));
            }
            for k in keys {
                let mut d = [0u8; 32];
                match hex::decode_to_slice(k.trim().to_ascii_lowercase(), &mut d) {
                    Ok(()) => digests.push(d),
                    // Never echo what may be a live key into a terminal or a CI log.
                    Err(_) if k.starts_with("tg_") || k.len() != 64 => p.push(format!(
                        "{at}: a keys_sha256 entry ({}…) looks like a key, not its digest: put its digest (tollgate keygen prints it) and give the key to the tenant",
                        k.chars().take(6).collect::<String>()
                    )),
                    Err(_) => p.push(format!("{at}: a keys_sha256 entry is not 64 hex characters")),
                }
            }
            let rps = t.requests_per_second.unwrap_or(DEFAULT_RPS);
            let burst = t.burst.unwrap_or(DEFAULT_BURST.max(rps));
            let gpm = t.generations_per_minute.unwrap_or(DEFAULT_GPM);
            // Every problem in one pass: a bad limit does not hide a bad budget after it.
            let limits = rate_limit::limits(rps, burst, gpm);
            if limits.is_none() {
                p.push(format!("{at}: requests_per_second, burst and generations_per_minute must be greater than 0"));
            }
            if t.max_in_flight == Some(0) {
                p.push(format!("{at}: max_in_flight must be at least 1 (leave it out for no cap)"));
            }
            let monthly_budget = match t.monthly_budget.as_ref().map(|a| Usd::parse(&a.text())) {
                None => None,
                Some(Ok(b)) if b >= Usd::ZERO => Some(b),
                Some(_) => {
                    p.push(format!("{at}: monthly_budget must be a non-negative amount like \"50.00\""));
                    None
                }
            };
            let webhook_secret = match &t.webhook_secret_env {
                None => None,
                Some(var) => match env.var(var).filter(|v| !v.trim().is_empty()) {
                    None => {
                        p.push(format!("secret: environment variable {var} ({at}.webhook_secret_env) is not set"));
                        None
                    }
                    Some(v) => match crate::policy::signing::SigningKey::parse(&v) {
                        Ok(_) => Some(Secret::new(v.trim())),
                        Err(e) => {
                            p.push(format!("{at}: {var}: {e}"));
                            None
                        }
                    },
                },
            };
            if let Some(limits) = limits {
                entries.push((
                    Tenant {
                        id: id.as_str().into(),
                        limits,
                        monthly_budget,
                        max_in_flight: t.max_in_flight,
                        webhook_secret,
                        disabled: false,
                    },
                    digests,
                ));
            }
        }
        TenantDirectory::new(entries).unwrap_or_else(|e| {
            p.push(e.to_string());
            TenantDirectory::default()
        })
    }

    /// Settings a reload cannot change (listeners, store, upstream, connection and body limits,
    /// webhooks): name → value, compared across reloads to say what still needs a restart.
    pub fn restart_only(&self) -> Vec<(&'static str, String)> {
        let s = &self.server;
        let u = &self.upstream;
        vec![
            ("server.listen", s.listen.to_string()),
            ("server.admin_listen", s.admin_listen.to_string()),
            // Turning TLS on or off needs a restart; new files (or paths) are reloaded.
            ("server.tls", s.tls.is_some().to_string()),
            (
                "server (timeouts and limits)",
                format!(
                    "{} {:?} {:?} {:?} {:?} {} {} {} {} {}",
                    s.max_body_bytes,
                    s.request_timeout,
                    s.header_read_timeout,
                    s.idle_timeout,
                    s.shutdown_grace,
                    s.max_connections,
                    s.max_buffered_body_bytes,
                    s.max_buffered_body_bytes_per_tenant,
                    s.max_uploads_per_tenant,
                    s.min_upload_bytes_per_sec
                ),
            ),
            ("store", format!("{:?}", self.store)),
            (
                "upstream",
                format!(
                    "{} {:?} {:?} {} {:?} {} {:?} {}",
                    u.base_url,
                    u.connect_timeout,
                    u.timeout,
                    u.get_retries,
                    u.status_cache,
                    u.circuit_failure_threshold,
                    u.circuit_open,
                    u.token.expose().len()
                ),
            ),
            ("webhooks", format!("{:?}", self.webhooks)),
            ("alerts", format!("{:?}", self.alerts)),
            ("telemetry", format!("{:?}", self.telemetry)),
            ("reconcile", format!("{:?}", self.reconcile)),
        ]
    }

    /// Tenants that accept a key printed in this project's docs or examples (anyone who has read
    /// them can spend as that tenant): `run` refuses them.
    pub fn public_key_tenants(&self) -> Vec<(String, &'static str)> {
        PUBLIC_KEYS.iter().filter_map(|k| self.tenants.lookup(k).map(|e| (e.tenant.id.to_string(), *k))).collect()
    }

    /// Why `run` would refuse this config although it parses (keys anyone who read the docs can
    /// use): `check-config` gives the same verdict from the same list, exit 64.
    pub fn run_refusals(&self) -> Vec<String> {
        self.public_key_tenants()
            .into_iter()
            .map(|(tenant, key)| {
                format!(
                    "tenant {tenant:?} accepts the publicly known example key {key:?}: give it its own key (tollgate keygen) and put the digest in keys_sha256"
                )
            })
            .collect()
    }

    /// What a first real run should know, said once at start by `check-config` and `run`.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for t in self.tenants.tenants().iter().filter(|t| t.monthly_budget.is_none()) {
            w.push(format!("tenant {:?} has no monthly_budget: it can spend the whole account", t.id));
        }
        if !self.server.listen.ip().is_loopback() && self.server.tls.is_none() {
            w.push(format!(
                "server.listen {} is reachable from other hosts without TLS: tenant keys cross the network in clear text (set tls_cert_path and tls_key_path, or bind to loopback behind a TLS proxy)",
                self.server.listen
            ));
        }
        if self.server.admin_token.is_none() {
            w.push(format!(
                "the admin API is disabled ({} is not set): no /admin/usage, reload over HTTP or decisions on unattributed charges",
                self.server.admin_token_env
            ));
        }
        if self.pricing.families().next().is_none() {
            w.push("no [pricing]: no family is offered, every generate is answered 404".into());
        }
        w
    }

    /// A human summary for `check-config`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let s = &self.server;
        out += &format!("listen {} (admin {})\n", s.listen, s.admin_listen);
        out += &format!(
            "upstream {} (token set: {}, timeout {}s)\n",
            self.upstream.base_url,
            !self.upstream.token.expose().is_empty(),
            self.upstream.timeout.as_secs()
        );
        out += &match &self.store {
            StoreConfig::Sqlite { path } => format!("store sqlite {}\n", path.display()),
            StoreConfig::Memory => "store memory (not durable)\n".to_string(),
            StoreConfig::Redis { target: RedisTarget::Url(url), min_replica_acks, .. } => {
                format!("store redis {}, min_replica_acks {min_replica_acks}\n", redact_url(url))
            }
            StoreConfig::Redis {
                target: RedisTarget::Sentinel { sentinels, master_name, .. },
                min_replica_acks,
                ..
            } => {
                format!(
                    "store redis primary {master_name:?} via sentinels {}, min_replica_acks {min_replica_acks}\n",
                    sentinels.join(", ")
                )
            }
        };
        out += &format!("balance ttl {}ms, reserve {}\n", self.balance.cache_ttl.as_millis(), self.balance.reserve);
        out += &format!(
            "model catalog {} ({} families)\n",
            self.catalog_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in".into()),
            self.catalog.families().len()
        );
        let mut fams: Vec<&str> = self.pricing.families().map(|f| f.path()).collect();
        fams.sort();
        out += &format!(
            "enabled families (priced): {}\n",
            if fams.is_empty() { "none".to_string() } else { fams.join(", ") }
        );
        let mut off: Vec<&str> = self
            .catalog
            .families()
            .iter()
            .filter(|f| self.pricing.estimate(**f, &[]).is_none())
            .map(|f| f.path())
            .collect();
        off.sort();
        if !off.is_empty() {
            out += &format!("not offered (no price; their routes answer 404): {}\n", off.join(", "));
        }
        for t in self.tenants.tenants() {
            out += &format!(
                "tenant {}: {} rps (burst {}), {} generations/min, budget {}\n",
                t.id,
                t.limits.requests_per_second,
                t.limits.burst,
                t.limits.generations_per_minute,
                t.monthly_budget.map(|b| b.to_string()).unwrap_or_else(|| "none".into())
            );
        }
        out
    }
}

/// Hides a password in a Redis URL.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests;
