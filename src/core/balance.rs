//! The paid path's balance phase (I/O half): keep the cached account balance fresh.
//!
//! The balance is fetched from `GET /v1/data/balance` at most once per TTL: concurrent callers
//! queue behind one fetch (single flight) and re-check freshness when it lands, so a burst of
//! 200 requests costs one platform call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{HeaderValue, Method};

use crate::core::error::GatewayError;
use crate::policy::money::Usd;
use crate::store::{now_ms, Store};
use crate::upstream::{Upstream, UpstreamError};

/// After a failed fetch, queued callers fail at once for this long instead of each retrying.
const FAILURE_HOLD_OFF: Duration = Duration::from_secs(1);

/// Where the account balance comes from (the platform; a fake in unit tests).
#[async_trait]
pub trait BalanceSource: Send + Sync {
    /// The account balance now.
    async fn fetch_balance(&self, request_id: &HeaderValue) -> Result<Usd, GatewayError>;
}

#[async_trait]
impl BalanceSource for Upstream {
    async fn fetch_balance(&self, request_id: &HeaderValue) -> Result<Usd, GatewayError> {
        let rsp = self.send(Method::GET, "/v1/data/balance", None, request_id, None, bytes::Bytes::new()).await?;
        if !rsp.status.is_success() {
            return Err(GatewayError::Upstream(self.error_of(&rsp)));
        }
        let v: serde_json::Value = serde_json::from_slice(&rsp.body)
            .map_err(|_| GatewayError::Unreachable(UpstreamError::Broken("balance response is not JSON".into())))?;
        v.get("balance").and_then(Usd::from_json).ok_or_else(|| {
            GatewayError::Unreachable(UpstreamError::Broken("balance response has no usable `balance`".into()))
        })
    }
}

/// Keeps the store's cached balance fresh.
pub struct BalanceKeeper {
    store: Arc<dyn Store>,
    source: Arc<dyn BalanceSource>,
    ttl: Duration,
    /// When the last fetch failed, and the platform's answer if it gave one (a refused token
    /// stays "Upstream authentication failed" during the hold-off, never "unavailable").
    flight: tokio::sync::Mutex<Option<(Instant, Option<crate::upstream::normalize::Normalized>)>>,
}

// === impl BalanceKeeper ===

impl BalanceKeeper {
    /// A keeper refreshing `store` from `source` every `ttl`.
    pub fn new(store: Arc<dyn Store>, source: Arc<dyn BalanceSource>, ttl: Duration) -> Self {
        BalanceKeeper { store, source, ttl, flight: tokio::sync::Mutex::new(None) }
    }

    async fn is_fresh(&self) -> Result<bool, GatewayError> {
        Ok(self
            .store
            .balance()
            .await?
            .is_some_and(|b| now_ms().saturating_sub(b.fetched_ms) < self.ttl.as_millis() as u64))
    }

    /// Ensures a balance younger than the TTL is cached.
    pub async fn ensure_fresh(&self, request_id: &HeaderValue) -> Result<(), GatewayError> {
        if self.is_fresh().await? {
            return Ok(());
        }
        let mut last_failure = self.flight.lock().await;
        // Whoever held the lock before us may have fetched it.
        if self.is_fresh().await? {
            return Ok(());
        }
        if let Some((_, answer)) = last_failure.as_ref().filter(|(t, _)| t.elapsed() < FAILURE_HOLD_OFF) {
            return Err(match answer {
                Some(n) => GatewayError::Upstream(n.clone()),
                None => GatewayError::Unreachable(UpstreamError::Connect("account balance unavailable".into())),
            });
        }
        let mark = self.store.begin_balance_fetch().await?;
        match self.source.fetch_balance(request_id).await {
            Ok(amount) => {
                *last_failure = None;
                self.store.apply_balance(amount, mark, now_ms()).await?;
                Ok(())
            }
            Err(e) => {
                let answer = match &e {
                    GatewayError::Upstream(n) => Some(n.clone()),
                    _ => None,
                };
                *last_failure = Some((Instant::now(), answer));
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        calls: AtomicUsize,
        fail: bool,
    }

    #[async_trait]
    impl BalanceSource for Counting {
        async fn fetch_balance(&self, _: &HeaderValue) -> Result<Usd, GatewayError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.fail {
                Err(GatewayError::Unreachable(UpstreamError::Connect("down".into())))
            } else {
                Ok(Usd::parse("5.00").unwrap())
            }
        }
    }

    #[tokio::test]
    async fn many_waiters_one_fetch() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::memory());
        let source = Arc::new(Counting { calls: AtomicUsize::new(0), fail: false });
        let keeper = Arc::new(BalanceKeeper::new(store.clone(), source.clone(), Duration::from_secs(60)));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let k = keeper.clone();
                tokio::spawn(async move { k.ensure_fresh(&HeaderValue::from_static("r")).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
        assert_eq!(store.balance().await.unwrap().unwrap().amount, Usd::parse("5").unwrap());
    }

    #[tokio::test]
    async fn refetches_after_ttl() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::memory());
        let source = Arc::new(Counting { calls: AtomicUsize::new(0), fail: false });
        let keeper = BalanceKeeper::new(store, source.clone(), Duration::from_millis(30));
        keeper.ensure_fresh(&HeaderValue::from_static("r")).await.unwrap();
        keeper.ensure_fresh(&HeaderValue::from_static("r")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        keeper.ensure_fresh(&HeaderValue::from_static("r")).await.unwrap();
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failing_source_is_not_hammered() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::memory());
        let source = Arc::new(Counting { calls: AtomicUsize::new(0), fail: true });
        let keeper = Arc::new(BalanceKeeper::new(store, source.clone(), Duration::from_secs(60)));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let k = keeper.clone();
                tokio::spawn(async move { k.ensure_fresh(&HeaderValue::from_static("r")).await })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap().is_err());
        }
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    }
}
