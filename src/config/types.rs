//! The validated configuration the gateway runs on (made by `Config::from_toml`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

use crate::policy::catalog::Catalog;
use crate::policy::money::Usd;
use crate::policy::pricing::PriceTable;
use crate::policy::secret::Secret;
use crate::policy::tenants::TenantDirectory;

/// The validated configuration the library runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[upstream]`.
    pub upstream: UpstreamConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[balance]`.
    pub balance: BalanceConfig,
    /// `[reconcile]`.
    pub reconcile: ReconcileConfig,
    /// `[webhooks]`: relay tenants' callbacks (off when absent).
    pub webhooks: Option<WebhooksConfig>,
    /// `[alerts]`: budget and balance alerts (off when absent).
    pub alerts: Option<AlertsConfig>,
    /// `[telemetry]`: OTLP span export (off when absent).
    pub telemetry: Option<TelemetryConfig>,
    /// `[catalog]`: the model families (the built-in catalog unless `path` names another).
    pub catalog: Catalog,
    /// `[catalog] path`, when set.
    pub catalog_path: Option<PathBuf>,
    /// `[pricing]`.
    pub pricing: PriceTable,
    /// `[[tenants]]`.
    pub tenants: TenantDirectory,
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Where spans go: an OTLP/HTTP (protobuf) traces URL, `…/v1/traces`.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Tenant-facing address.
    pub listen: SocketAddr,
    /// Admin address.
    pub admin_listen: SocketAddr,
    /// Request bodies over this get 413.
    pub max_body_bytes: usize,
    /// Whole-request deadline.
    pub request_timeout: Duration,
    /// SIGTERM drain.
    pub shutdown_grace: Duration,
    /// Deadline for a client's request headers.
    pub header_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Body bytes buffered at once across requests.
    pub max_buffered_body_bytes: usize,
    /// One tenant's share of it.
    pub max_buffered_body_bytes_per_tenant: usize,
    /// Request bodies one tenant may be uploading at once.
    pub max_uploads_per_tenant: usize,
    /// Uploads slower than this after the first 5 s get 408 (0: no minimum).
    pub min_upload_bytes_per_sec: u64,
    /// Connections with no request in flight for this long are closed.
    pub idle_timeout: Duration,
    /// Token for `/admin/*`; admin endpoints refuse everything when unset.
    pub admin_token: Option<Secret>,
    /// The variable it comes from (named in the admin API's 403).
    pub admin_token_env: String,
    /// Host names the admin listener answers besides IP literals and `localhost` (a page on
    /// another name, DNS rebinding included, gets 403).
    pub admin_hosts: Vec<String>,
    /// `/metrics` needs the admin token too.
    pub metrics_require_token: bool,
    /// Tenants' quotes and usage show what the account can still pay (it moves with every
    /// team's spend, so it is off unless the operator opts in).
    pub expose_account_balance: bool,
    /// The currency the dashboard names beside every amount (the platform bills in US dollars).
    pub currency: String,
    /// TLS on the tenant listener: PEM certificate chain and private key.
    pub tls: Option<TlsPaths>,
}

/// `[server] tls_cert_path` and `tls_key_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// PEM certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

/// `[upstream]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Scheme and authority (and optional path prefix, no trailing slash).
    pub base_url: Uri,
    /// The platform token.
    pub token: Secret,
    /// Connect deadline.
    pub connect_timeout: Duration,
    /// Per-request deadline.
    pub timeout: Duration,
    /// Retries for idempotent GETs.
    pub get_retries: u32,
    /// How long a generation's status answer is shared between polls.
    pub status_cache: Duration,
    /// Consecutive failures that open the circuit.
    pub circuit_failure_threshold: u32,
    /// How long the circuit stays open.
    pub circuit_open: Duration,
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// Embedded SQLite file (the default).
    Sqlite {
        /// Database file.
        path: PathBuf,
    },
    /// In memory, lost at exit (tests and the demo).
    Memory,
    /// Shared by several replicas.
    Redis {
        /// Where the primary is.
        target: RedisTarget,
        /// Command deadline.
        timeout: Duration,
        /// Prefix of every key.
        key_prefix: String,
        /// Replicas that must acknowledge a money write (`WAIT`) before anyone is answered.
        min_replica_acks: u32,
    },
}

/// `[store] url`, or `sentinels` + `master_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://host:port/db` (the password from `password_env` already in it).
    Url(String),
    /// The primary is whoever these sentinels say it is.
    Sentinel {
        /// `host:port` of each sentinel.
        sentinels: Vec<String>,
        /// The name the sentinels monitor.
        master_name: String,
        /// Database number on the data nodes.
        db: i64,
        /// The data nodes' password (`password_env`).
        password: Option<Secret>,
    },
}

/// `[balance]`.
#[derive(Debug, Clone)]
pub struct BalanceConfig {
    /// How long a fetched balance is trusted.
    pub cache_ttl: Duration,
    /// Never spent.
    pub reserve: Usd,
}

/// `[reconcile]`: how the ledger converges to the platform (unknown outcomes, refunds).
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// How often unresolved generations and outcomes are looked at.
    pub interval: Duration,
    /// Platform calls the reconciler may spend per minute (all tenants share one token).
    pub status_calls_per_minute: u32,
    /// An unknown outcome not found on the platform by then is released.
    pub unknown_after: Duration,
    /// A hold's lease is the upstream timeout plus this.
    pub lease_margin: Duration,
}

/// `[alerts]` (SPEC §14).
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// Where alerts are POSTed.
    pub url: String,
    /// The Standard Webhooks secret (`whsec_…`) they are signed with.
    pub secret: Secret,
    /// Shares of a tenant's budget (spend plus holds) that each send one alert a month.
    pub thresholds: Vec<f64>,
    /// One alert each time the account balance falls below this.
    pub balance_below: Option<Usd>,
    /// Plain http to loopback allowed (tests, the demo).
    pub allow_http_loopback: bool,
    /// First retry delay; doubles per attempt.
    pub retry_base: Duration,
}

/// `[webhooks]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhooksConfig {
    /// Where the platform reaches this gateway, without a trailing slash.
    pub public_base_url: String,
    /// Plain http to loopback allowed (tests, the demo).
    pub allow_http_loopback: bool,
    /// First retry delay; doubles per attempt (30 s, 60 s, 120 s, 240 s, 480 s by default).
    pub retry_base: Duration,
    /// Deadline of one delivery attempt.
    pub attempt_timeout: Duration,
    /// Attempts before a delivery becomes a dead letter.
    pub max_attempts: u32,
    /// Deliveries in flight at once per gateway.
    pub concurrency: usize,
}

/// Reconciler defaults.
pub const DEFAULT_RECONCILE_INTERVAL_SECS: u64 = 30;
/// Platform status calls per minute for the reconciler.
pub const DEFAULT_RECONCILE_CALLS_PER_MINUTE: u32 = 30;
/// Unknown outcomes not found by then are released.
pub const DEFAULT_UNKNOWN_AFTER_SECS: u64 = 900;
/// Lease margin over the upstream timeout.
pub const DEFAULT_LEASE_MARGIN_MS: u64 = 10_000;
