//! Webhook relay's delivery worker (SPEC §8; the relay handle is `core::relay`). With `[webhooks]`, a tenant's `callback_url` never reaches the
//! platform: the gateway forwards `{public_base_url}/webhooks/runblob/{token}` instead (one
//! unguessable token per generation), records the outcome when the platform calls it (a refund on
//! `failed`, through the same conditional update as every refund), and delivers the platform's
//! body byte for byte to the tenant's URL, signed per Standard Webhooks, from a durable outbox
//! in the store. Every replica runs a delivery worker; claims in the store keep a delivery with
//! one worker at a time, and a worker that dies loses only its lease.
//!
//! Retries back off from `retry_base` doubling (30 s, 60 s, 120 s, 240 s, 480 s by default,
//! like the platform's own); after `max_attempts` a delivery is a dead letter, counted, shown in
//! metrics and re-driven with `POST /admin/webhooks/redeliver`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::core::relay::Relay;
use crate::observe::metrics::Metrics;
use crate::policy::secret::Secret;
use crate::policy::signing::SigningKey;
use crate::store::Store;
use crate::store::{now_ms, OutboxMessage};

/// A claimed delivery is someone else's to retry after this (longer than any attempt).
const CLAIM_LEASE_MS: u64 = 60_000;
/// How often the worker looks for due deliveries when nothing wakes it.
const POLL: Duration = Duration::from_millis(500);

/// What the delivery worker needs from the gateway, and nothing more.
#[derive(Clone)]
pub struct Deliveries {
    /// The outbox.
    pub store: Arc<dyn Store>,
    /// Delivery counters.
    pub metrics: Arc<Metrics>,
    /// A tenant's current webhook signing secret (it follows config reloads).
    pub secret_of: SecretOf,
}

/// A tenant's current webhook signing secret, by tenant id.
pub type SecretOf = Arc<dyn Fn(&str) -> Option<Secret> + Send + Sync>;

/// Delivers one claimed message and records the result.
async fn deliver(gw: Deliveries, relay: Arc<Relay>, m: OutboxMessage) {
    let attempt = m.attempts + 1;
    let started = Instant::now();
    let key = (gw.secret_of)(&m.tenant);
    let result = match key.as_ref().map(|k| SigningKey::parse(k.expose())) {
        Some(Ok(key)) => relay.attempt(&m, &key).await,
        _ => Err("the tenant has no webhook secret any more".to_string()),
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let store = &gw.store;
    let outcome = match &result {
        Ok(s) if (200..300).contains(s) => {
            if let Err(e) = store.outbox_done(&m.id).await {
                tracing::warn!(error = %e, webhook_id = %m.id, "delivered, but could not mark it done; it may be delivered again");
            }
            "delivered"
        }
        _ if attempt >= relay.config.max_attempts => {
            if let Err(e) = store.outbox_dead(&m.id, attempt).await {
                tracing::warn!(error = %e, webhook_id = %m.id, "could not move a delivery to the dead letters");
            }
            "dead_letter"
        }
        _ => {
            let next = now_ms() + relay.backoff(attempt).as_millis() as u64;
            if let Err(e) = store.outbox_retry(&m.id, attempt, next).await {
                tracing::warn!(error = %e, webhook_id = %m.id, "could not schedule a retry; the claim lease will");
            }
            "retry"
        }
    };
    gw.metrics.webhook_delivery(&m.tenant, outcome);
    let (status, error) = match result {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e)),
    };
    if outcome == "delivered" {
        tracing::info!(target: "webhook_delivery", webhook_id = %m.id, tenant = %m.tenant, attempt, status, latency_ms = (ms * 100.0).round() / 100.0, result = outcome, "webhook delivered");
    } else {
        tracing::warn!(target: "webhook_delivery", webhook_id = %m.id, tenant = %m.tenant, attempt, status, error, latency_ms = (ms * 100.0).round() / 100.0, result = outcome, "webhook delivery failed");
    }
}

/// The delivery worker: claims due deliveries and sends them, `concurrency` at a time, until
/// `stop` turns true.
pub async fn run(gw: Deliveries, relay: Arc<Relay>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(relay.config.concurrency));
    loop {
        let free = slots.available_permits();
        if free > 0 {
            match gw.store.outbox_claim(free, CLAIM_LEASE_MS).await {
                Ok(batch) => {
                    let full = batch.len() == free;
                    for m in batch {
                        let Ok(permit) = slots.clone().acquire_owned().await else { return };
                        let (gw, relay) = (gw.clone(), relay.clone());
                        tokio::spawn(async move {
                            deliver(gw, relay, m).await;
                            drop(permit);
                        });
                    }
                    if full {
                        continue;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "webhook outbox unavailable"),
            }
        }
        tokio::select! {
            _ = relay.wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WebhooksConfig;
    use crate::core::relay::{message_id, new_token, relay_url};

    #[test]
    fn retries_double_from_the_base() {
        let cfg = WebhooksConfig {
            public_base_url: "https://gw.example.com".into(),
            allow_http_loopback: false,
            retry_base: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(5),
            max_attempts: 6,
            concurrency: 4,
        };
        let r = Relay::new(&cfg);
        let secs: Vec<u64> = (1..=5).map(|a| r.backoff(a).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480]);
        assert_eq!(relay_url(&cfg, "t"), "https://gw.example.com/webhooks/runblob/t");
        assert_ne!(new_token(), new_token());
        assert_eq!(message_id("t", b"{}"), message_id("t", b"{}"));
        assert_ne!(message_id("t", b"{}"), message_id("u", b"{}"));
    }
}
