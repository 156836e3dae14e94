//! tollgate: an HTTP API gateway in front of the RunBlob media-generation platform.
//!
//! The library takes a validated [`Config`] and bound listeners ([`run`]), so tests start the
//! real gateway in-process on `127.0.0.1:0`. `main.rs` is a thin CLI over it.
//!
//! Request path, one generate from accept to the access line: accept (`server`) → request id →
//! deadline → route (`gateway::routes`) → auth (`policy::tenants`) → rate limit
//! (`core::limits`) → `paid::generate`: body (`core::upload`) → validate (`policy::validate`,
//! `policy::image`) → idempotency → price (`policy::pricing`) → balance (`core::balance`) → hold
//! (`store`) → generation limit → forward and settle (`paid::Paid`, `upstream`) → errors to
//! responses (`core::error`, `upstream::normalize`) → one access record (`core::Shared::finish`,
//! `observe::access_log`) and metrics.
//!
//! The wings, lowest first (`tests/architecture.rs` holds every import to it, and to no cycle):
//! `ids`, `server`, `policy`, `config`, `store`, `upstream`, `observe`, then `core` (the floor of
//! shared state), `paid`, `gateway` (the front door), `background`, `admin`, and `dev` on top.
//!
//! Modules are `pub` where an embedder, the binary or the integration tests use them and
//! `pub(crate)` otherwise.

#![warn(missing_docs)]

pub mod admin;
pub(crate) mod background;
pub mod config;
pub mod core;
pub mod dev;
pub mod gateway;
pub(crate) mod ids;
pub mod observe;
pub(crate) mod paid;
pub mod policy;
pub mod server;
pub mod store;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use crate::core::error::GatewayError;
pub use config::{Config, ConfigError};
pub use gateway::Gateway;

use gateway::ReloadSource;
use observe::access_log::AccessLog;
use server::ServerOptions;

/// The two bound listeners a gateway serves.
pub struct Listeners {
    /// Tenant-facing.
    pub tenant: TcpListener,
    /// `/metrics`, `/healthz`, `/readyz`, `/admin/*`.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        Ok(Listeners { tenant: bind(config.server.listen).await?, admin: bind(config.server.admin_listen).await? })
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The store did not open.
    #[error("opening the store: {0}")]
    Store(#[from] store::StoreError),
    /// The TLS certificate or key did not load.
    #[error("loading the TLS certificate: {0}")]
    Tls(String),
    /// A config-file tenant has the id of a tenant the store keeps.
    #[error("tenants: {0}")]
    Clash(String),
}

/// Opens the store, loads the TLS certificate if any, and builds the gateway (without serving).
pub async fn build(config: &Config, log: AccessLog, reload: Option<ReloadSource>) -> Result<Arc<Gateway>, BuildError> {
    let tls = match &config.server.tls {
        Some(p) => Some(server::tls::Certs::load(&p.cert, &p.key).map_err(BuildError::Tls)?),
        None => None,
    };
    let store = store::open(&config.store).await?;
    let gateway = Gateway::new(config, store, log, reload, tls);
    // The admin API's tenants are served from the first request on.
    gateway.refresh_directory().await?;
    crate::core::Shared::clashes(&config.tenants, &gateway.current().api).map_err(BuildError::Clash)?;
    Ok(gateway)
}

/// Serves `gateway` on the listeners until `shutdown` resolves, then drains in-flight requests
/// for up to `shutdown_grace_secs`.
pub async fn run(
    config: &Config,
    gateway: Arc<Gateway>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let tls = match gateway.tls.as_ref().map(|c| c.acceptor()).transpose() {
        Ok(tls) => tls,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up TLS; not serving");
            return;
        }
    };
    let opts = ServerOptions {
        header_read_timeout: config.server.header_read_timeout,
        idle_timeout: config.server.idle_timeout,
        max_connections: config.server.max_connections,
        shutdown_grace: config.server.shutdown_grace,
        tls,
    };
    let gw = gateway.clone();
    let on_refusal: server::OnRefusal = Arc::new(move |r| gw.protocol_refusal(r));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin = admin::Admin::new(gateway.shared().clone(), &config.server);
    // The admin port stays plain HTTP: it is meant for loopback and the cluster network.
    let admin_opts = ServerOptions { max_connections: 256, tls: None, ..opts.clone() };
    let mut admin_stop = stop_rx.clone();
    let admin_task = tokio::spawn(server::serve(
        listeners.admin,
        admin_opts,
        tower::service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, std::convert::Infallible>(admin.handle(req).await) }
        }),
        on_refusal.clone(),
        async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        },
    ));
    let background = background::Background::spawn(gateway.shared().clone(), stop_rx.clone());
    let gw = gateway.clone();
    let tenant = server::serve(listeners.tenant, opts, gateway::service::stack(gw), on_refusal, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    tenant.await;
    let _ = admin_task.await;
    background.join().await;
}

pub use background::Background;
