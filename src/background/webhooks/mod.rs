//! Webhook relay (SPEC §8). With `[webhooks]`, a tenant's `callback_url` never reaches the
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

pub(crate) mod target;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Notify, Semaphore};

use crate::config::{Config, WebhooksConfig};
use crate::observe::metrics::Metrics;
use crate::policy::secret::Secret;
use crate::policy::signing::SigningKey;
use crate::store::Store;
use crate::store::{now_ms, OutboxMessage};
use target::{CheckedResolver, Policy};

/// Largest webhook body the platform may post.
pub const MAX_WEBHOOK_BODY: usize = 256 * 1024;
/// A claimed delivery is someone else's to retry after this (longer than any attempt).
const CLAIM_LEASE_MS: u64 = 60_000;
/// How often the worker looks for due deliveries when nothing wakes it.
const POLL: Duration = Duration::from_millis(500);

type DeliveryClient = Client<HttpsConnector<HttpConnector<CheckedResolver>>, Full<Bytes>>;

/// The relay's settings and its delivery client.
pub struct Relay {
    /// Settings.
    pub config: WebhooksConfig,
    /// What tenant URLs may be.
    pub policy: Policy,
    /// What the alert URL may be, when this relay also sends `[alerts]`.
    alerts: Option<Policy>,
    client: DeliveryClient,
    wake: Notify,
}

/// The tenant's `callback_url` is replaced by this gateway's URL for the token.
pub fn relay_url(config: &WebhooksConfig, token: &str) -> String {
    format!("{}/webhooks/runblob/{token}", config.public_base_url)
}

/// `body` without this gateway's relay URL: a top-level string field that holds one (a platform
/// echoing `callback_url`) gets `replacement` (the tenant's own URL) or is dropped, so a tenant
/// never learns a relay token. Bodies without the URL (all of them, normally) are returned as
/// they are after one substring search.
pub fn scrub_relay_url(body: bytes::Bytes, config: &WebhooksConfig, replacement: Option<&str>) -> bytes::Bytes {
    let prefix = format!("{}/webhooks/runblob/", config.public_base_url);
    if memchr::memmem::find(&body, prefix.as_bytes()).is_none() {
        return body;
    }
    let Ok(serde_json::Value::Object(mut o)) = serde_json::from_slice::<serde_json::Value>(&body) else {
        // Not an object we can edit: never pass the token on.
        return bytes::Bytes::from_static(b"{}");
    };
    let hits: Vec<String> =
        o.iter().filter(|(_, v)| v.as_str().is_some_and(|s| s.contains(&prefix))).map(|(k, _)| k.clone()).collect();
    for k in hits {
        match replacement {
            Some(r) => o.insert(k, serde_json::Value::String(r.to_string())),
            None => o.remove(&k),
        };
    }
    let out = serde_json::Value::Object(o).to_string();
    if out.contains(&prefix) {
        // Nested somewhere else: drop what we cannot place rather than leak it.
        return bytes::Bytes::from_static(b"{}");
    }
    bytes::Bytes::from(out)
}

/// A new unguessable token (256 bits, hex).
pub fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// `webhook-id` for a platform call: the same body to the same token is the same message, so a
/// platform retry is not delivered as a new event.
pub fn message_id(token: &str, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(token.as_bytes());
    h.update(b"\n");
    h.update(body);
    format!("msg_{}", &hex::encode(h.finalize())[..32])
}

impl Relay {
    /// A relay for `config`.
    pub fn new(config: &WebhooksConfig) -> Relay {
        let policy = Policy { allow_http_loopback: config.allow_http_loopback };
        let mut http = HttpConnector::new_with_resolver(CheckedResolver { policy });
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.attempt_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https);
        Relay { config: config.clone(), policy, alerts: None, client, wake: Notify::new() }
    }

    /// This relay also delivers alerts (outbox messages of [`crate::store::ALERTS`]) under
    /// `policy`.
    pub fn with_alerts(mut self, policy: Policy) -> Relay {
        self.alerts = Some(policy);
        self
    }

    /// A delivery was queued: look now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn backoff(&self, attempts: u32) -> Duration {
        self.config.retry_base * 2u32.saturating_pow(attempts.saturating_sub(1))
    }

    /// One attempt; `Ok(status)` for any HTTP answer, `Err` when none came.
    async fn attempt(&self, m: &OutboxMessage, key: &SigningKey) -> Result<u16, String> {
        let policy = if &*m.tenant == crate::store::ALERTS { self.alerts.unwrap_or(self.policy) } else { self.policy };
        if let Err(e) = policy.check_url(&m.url) {
            return Err(format!("target refused: {e}"));
        }
        let ts = now_ms() / 1000;
        let mut req = Request::new(Full::new(m.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = m.url.parse().map_err(|e| format!("bad url: {e}"))?;
        let h = req.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(USER_AGENT, HeaderValue::from_static(concat!("tollgate-webhooks/", env!("CARGO_PKG_VERSION"))));
        h.insert("webhook-id", HeaderValue::from_str(&m.id).map_err(|e| e.to_string())?);
        h.insert("webhook-timestamp", HeaderValue::from(ts));
        h.insert("webhook-signature", HeaderValue::from_str(&key.sign(&m.id, ts, &m.body)).map_err(|e| e.to_string())?);
        let fut = async {
            let rsp = self.client.request(req).await.map_err(|e| {
                format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default())
            })?;
            let status = rsp.status().as_u16();
            // Read (and drop) a bounded answer so the connection can be reused.
            let _ = http_body_util::Limited::new(rsp.into_body(), 64 * 1024).collect().await;
            Ok(status)
        };
        match tokio::time::timeout(self.config.attempt_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.config.attempt_timeout)),
        }
    }
}

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

/// The webhook relay (with `[webhooks]`), and what delivers the outbox: the relay, extended to
/// alerts when both are configured, or a sender for alerts alone.
pub(crate) fn senders(config: &Config) -> (Option<Arc<Relay>>, Option<Arc<Relay>>) {
    let alert_policy = config.alerts.as_ref().map(|a| Policy { allow_http_loopback: a.allow_http_loopback });
    match (&config.webhooks, alert_policy, &config.alerts) {
        (Some(w), policy, _) => {
            let relay = Relay::new(w);
            let relay = Arc::new(match policy {
                Some(p) => relay.with_alerts(p),
                None => relay,
            });
            (Some(relay.clone()), Some(relay))
        }
        (None, Some(policy), Some(a)) => {
            let settings = WebhooksConfig {
                public_base_url: String::new(),
                allow_http_loopback: a.allow_http_loopback,
                retry_base: a.retry_base,
                attempt_timeout: Duration::from_secs(10),
                max_attempts: 6,
                concurrency: 4,
            };
            (None, Some(Arc::new(Relay::new(&settings).with_alerts(policy))))
        }
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
