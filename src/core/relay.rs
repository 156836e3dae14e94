//! The relay handle every wing shares (SPEC §8): its settings, the policy for target URLs, the
//! delivery client and the worker's wake-up, plus what the request path does with relay URLs
//! (swap a tenant's `callback_url` for one of ours, keep our tokens out of tenants' bodies, name
//! a message). The delivery worker that drains the outbox is `background::webhooks`.

pub(crate) mod target;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;

use crate::config::{Config, WebhooksConfig};
use crate::policy::signing::SigningKey;
use crate::store::{now_ms, OutboxMessage};
use target::{CheckedResolver, Policy};

/// Largest webhook body the platform may post.
pub const MAX_WEBHOOK_BODY: usize = 256 * 1024;
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
    pub(crate) wake: Notify,
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

    /// The wait before attempt `attempts + 1`.
    pub(crate) fn backoff(&self, attempts: u32) -> Duration {
        self.config.retry_base * 2u32.saturating_pow(attempts.saturating_sub(1))
    }

    /// One attempt; `Ok(status)` for any HTTP answer, `Err` when none came.
    pub(crate) async fn attempt(&self, m: &OutboxMessage, key: &SigningKey) -> Result<u16, String> {
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
