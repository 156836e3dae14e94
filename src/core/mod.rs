//! The floor of shared state: what the front door (`gateway`), the paid path (`paid`), the
//! background tasks (`background`) and the admin listener (`admin`) all stand on. Nothing here
//! imports those wings, so each of them can be read on its own, and a feature several of them
//! need (the relay handle, status recording, the upload budget, the error enum) lives here
//! rather than as a field of the front door (linkerd2-proxy's `app/core`).
//!
//! - `Shared` (this file): the store, the platform client, the balance keeper, metrics, the
//!   access log and the runtime that a reload swaps; `finish` writes a request's one access line.
//! - `Ctx` (this file): the request record, request ids, the client address.
//! - `error`: the one error enum, turned into a `{"detail": ...}` response in one place.
//! - `limits`, `upload`, `balance`, `relay`, `directory`, `status`: the pieces the wings share.

pub(crate) mod balance;
pub(crate) mod directory;
pub mod error;
pub(crate) mod limits;
pub(crate) mod relay;
pub(crate) mod status;
pub(crate) mod upload;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use http::Request;

use crate::config::{Config, ConfigError};
use crate::core::balance::BalanceKeeper;
use crate::core::error::GatewayError;
use crate::core::limits::RateLimits;
use crate::observe::access_log::{AccessLog, AccessRecord};
use crate::observe::metrics::Metrics;
use crate::policy::money::Usd;
use crate::policy::pricing::PriceTable;
use crate::policy::rate_limit::Quotas;
use crate::policy::tenants::TenantDirectory;
use crate::store::Store;
use crate::upstream::Upstream;

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

/// What every wing shares: the store, the platform client, the balance keeper, metrics, the
/// access log, the swappable runtime, the relay handle, the upload budget, reload. Built once;
/// the front door (`gateway::Gateway`), the paid path, the background tasks and the admin
/// listener all hold it by `Arc`.
pub struct Shared {
    runtime: ArcSwap<Runtime>,
    /// The tenant listener's certificate, when it speaks TLS (swapped by a reload).
    pub tls: Option<Arc<crate::server::tls::Certs>>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) balance: BalanceKeeper,
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
    pub(crate) relay: Option<Arc<crate::core::relay::Relay>>,
    /// What delivers the outbox (webhooks and alerts): the relay, or one for alerts alone.
    pub(crate) sender: Option<Arc<crate::core::relay::Relay>>,
    /// `[alerts]`, when configured.
    pub(crate) alerts: Option<crate::config::AlertsConfig>,
    pub(crate) uploads: crate::core::upload::Uploads,
    reload_source: Option<ReloadSource>,
    /// The restart-only settings this process started with.
    started_with: Vec<(&'static str, String)>,
    /// Unix ms of this replica's last reconciler pass as the lease holder (0: none yet), for
    /// the dashboard.
    pub(crate) reconciled_ms: std::sync::atomic::AtomicU64,
    /// Samples the access lines of refused, unauthenticated requests per address.
    pub(crate) refusals: crate::core::limits::RefusalSampler,
    /// Runtime swaps (config reloads, directory changes) one at a time, so none is lost.
    runtime_swap: std::sync::Mutex<()>,
    /// Key uses taken from directories that were replaced, not yet written to the store.
    pub(crate) pending_uses: std::sync::Mutex<Vec<(String, u64)>>,
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

/// The request's time as `KeyEntry::mark_used` keeps it: ms since this process's clock base,
/// never 0, from the `Instant` the access record already took (no clock read per request).
pub(crate) fn use_time(at: std::time::Instant) -> u64 {
    at.saturating_duration_since(*use_clock_base()).as_millis() as u64 + 1
}

/// A `use_time` as unix ms, measured back from now (so a wall-clock change since start does not
/// shift it).
pub(crate) fn use_time_to_unix_ms(at: u64) -> u64 {
    let ago = use_time(std::time::Instant::now()).saturating_sub(at);
    crate::store::now_ms().saturating_sub(ago)
}

fn use_clock_base() -> &'static std::time::Instant {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now)
}

/// The client's address: from the binary listener's body type, else from a `PeerAddr` extension
/// an embedder put there.
pub(crate) fn peer_ip<B: 'static>(req: &Request<B>) -> Option<std::net::IpAddr> {
    let listener = (req.body() as &dyn std::any::Any).downcast_ref::<crate::server::Lingering>().map(|b| b.peer().ip());
    listener.or_else(|| req.extensions().get::<crate::server::PeerAddr>().map(|p| p.0.ip()))
}

// === impl Shared ===

impl Shared {
    /// Builds the shared state on an opened store.
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        log: AccessLog,
        reload_source: Option<ReloadSource>,
        tls: Option<Arc<crate::server::tls::Certs>>,
    ) -> Shared {
        let upstream = Arc::new(Upstream::new(&config.upstream));
        let balance = BalanceKeeper::new(store.clone(), upstream.clone(), config.balance.cache_ttl);
        let (relay, sender) = crate::core::relay::senders(config);
        Shared {
            runtime: ArcSwap::from_pointee(Shared::runtime(config, None)),
            store,
            upstream,
            balance,
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
            uploads: crate::core::upload::Uploads::new(
                config.server.max_buffered_body_bytes,
                config.server.max_buffered_body_bytes_per_tenant,
                config.server.max_uploads_per_tenant,
                config.server.min_upload_bytes_per_sec,
            ),
            reload_source,
            tls,
            started_with: config.restart_only(),
            reconciled_ms: Default::default(),
            refusals: crate::core::limits::RefusalSampler::new(),
            runtime_swap: Default::default(),
            pending_uses: Default::default(),
        }
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
        self.stash_uses(&previous.tenants);
        self.runtime.store(Arc::new(Shared::runtime(config, Some(&previous))));
    }

    /// Re-reads the config source and applies it; a bad config is refused and the old one keeps
    /// serving.
    pub fn reload(&self) -> Result<Reloaded, String> {
        let Some(source) = &self.reload_source else {
            return Err("this gateway has no config file to reload".into());
        };
        let loaded = source().map_err(|e| e.to_string()).and_then(|config| {
            Shared::clashes(&config.tenants, &self.current().api)?;
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
                // Every team served now: the file's and the admin API's.
                let tenants = self.current().tenants.tenants().len();
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
}
