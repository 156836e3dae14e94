//! The gateway's work outside requests: the reconciler that converges the ledger to the
//! platform, the account balance refresh, the webhook relay's deliveries, and the refusal
//! sampler's flush.

pub(crate) mod alerts;
pub(crate) mod reconcile;
pub(crate) mod webhooks;

use std::sync::Arc;

use crate::core::Shared;
use crate::observe::supervise::supervise;

/// How often an idle gateway refreshes the account balance.
const BACKGROUND_BALANCE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The gateway's work outside requests: the reconciler, the background balance refresh and the
/// webhook relay's deliveries. [`run`] starts them; an embedder serving [`crate::gateway::service::stack`] in its
/// own server starts them with [`Background::spawn`].
pub struct Background {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    /// Starts the tasks; they end when `stop` turns true.
    pub fn spawn(gateway: Arc<Shared>, stop_rx: tokio::sync::watch::Receiver<bool>) -> Background {
        // Every task is supervised: a panic is logged, counted and the task started again.
        let metrics = gateway.metrics.clone();
        let reconciler = {
            let (gw, stop) = (gateway.clone(), stop_rx.clone());
            supervise("reconciler", metrics.clone(), move || reconcile::Reconciler::new(gw.clone()).run(stop.clone()))
        };
        // An idle replica still knows the account balance (for the gauge and its alert).
        let refresher = {
            let (gw, stop) = (gateway.clone(), stop_rx.clone());
            supervise("balance_refresh", metrics.clone(), move || {
                let (gw, mut stop) = (gw.clone(), stop.clone());
                async move {
                    loop {
                        if let Err(e) =
                            gw.balance.ensure_fresh(&http::HeaderValue::from_static("background-balance")).await
                        {
                            tracing::debug!(error = %e, "background balance refresh failed");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(BACKGROUND_BALANCE_EVERY) => {}
                            _ = stop.wait_for(|s| *s) => return,
                        }
                    }
                }
            })
        };
        let alerts = {
            let (gw, stop) = (gateway.clone(), stop_rx.clone());
            supervise("alerts", metrics.clone(), move || alerts::run(gw.clone(), stop.clone()))
        };
        let relay = gateway.sender.clone().map(|r| {
            let gw = gateway.clone();
            let deliveries = webhooks::Deliveries {
                store: gateway.store.clone(),
                metrics: gateway.metrics.clone(),
                secret_of: Arc::new(move |tenant| match tenant {
                    crate::store::ALERTS => gw.alerts.as_ref().map(|a| a.secret.clone()),
                    _ => gw
                        .current()
                        .tenants
                        .tenants()
                        .iter()
                        .find(|t| &*t.id == tenant)
                        .and_then(|t| t.webhook_secret.clone()),
                }),
            };
            let stop = stop_rx.clone();
            supervise("webhook_relay", metrics.clone(), move || {
                webhooks::run(deliveries.clone(), r.clone(), stop.clone())
            })
        });
        // Summaries of sampled access lines, once a second.
        let sampler = {
            let (gw, stop) = (gateway.clone(), stop_rx.clone());
            supervise("refusal_sampler", metrics.clone(), move || {
                let (gw, mut stop) = (gw.clone(), stop.clone());
                async move {
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => gw.refusals.flush(),
                            _ = stop.wait_for(|s| *s) => return gw.refusals.flush(),
                        }
                    }
                }
            })
        };
        // The tenants the admin API keeps in the store: every replica follows their version,
        // woken early where the store announces changes.
        let directory = {
            let (gw, stop) = (gateway.clone(), stop_rx.clone());
            let changed = gateway.store.directory_changes();
            supervise("directory", metrics.clone(), move || {
                let (gw, mut stop, changed) = (gw.clone(), stop.clone(), changed.clone());
                async move {
                    let mut last_flush = tokio::time::Instant::now();
                    loop {
                        if let Err(e) = gw.refresh_directory().await {
                            tracing::debug!(error = %e, "directory refresh failed; serving the tenants already loaded");
                        }
                        if last_flush.elapsed() >= crate::core::directory::LAST_USED_EVERY {
                            last_flush = tokio::time::Instant::now();
                            gw.flush_key_uses().await;
                        }
                        let stopping = tokio::select! {
                            _ = tokio::time::sleep(crate::core::directory::REFRESH_EVERY) => false,
                            // Another replica changed it (Redis pub/sub): refresh now.
                            _ = async {
                                match &changed {
                                    Some(n) => n.notified().await,
                                    None => std::future::pending().await,
                                }
                            } => false,
                            _ = stop.wait_for(|s| *s) => true,
                        };
                        if stopping {
                            return gw.flush_key_uses().await;
                        }
                    }
                }
            })
        };
        let mut tasks = vec![reconciler, refresher, sampler, directory, alerts];
        tasks.extend(relay);
        Background { tasks }
    }

    /// Waits for every task to end.
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
