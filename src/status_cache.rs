//! Status polls of one generation, coalesced and cached briefly.
//!
//! Every tenant polls through the gateway's single platform token, and the platform limits
//! status checks per key (60/min on some families) while recommending 3–10 s between polls. So
//! concurrent polls of the same generation share one platform call (single flight), and its 2xx
//! answer is reused for `status_cache_ms` (default 1 s). Ownership is checked before the cache
//! is consulted, so a cached answer never crosses tenants.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::StatusCode;

/// Slots kept before idle ones are swept.
const SWEEP_ABOVE: usize = 10_000;

/// A cached 2xx status answer.
#[derive(Debug, Clone)]
pub struct CachedStatus {
    /// When the platform answered.
    pub at: Instant,
    /// Status (2xx).
    pub status: StatusCode,
    /// Content type as sent.
    pub content_type: Option<HeaderValue>,
    /// Body, byte for byte.
    pub body: Bytes,
}

type Slot = Arc<tokio::sync::Mutex<Option<CachedStatus>>>;

/// See the module docs.
pub struct StatusCache {
    ttl: Duration,
    slots: Mutex<HashMap<String, Slot>>,
}

/// Exclusive access to one generation's slot: callers behind it wait for this fetch.
pub struct SlotGuard {
    guard: tokio::sync::OwnedMutexGuard<Option<CachedStatus>>,
    ttl: Duration,
}

// === impl StatusCache ===

impl StatusCache {
    /// A cache keeping answers for `ttl` (zero: off).
    pub fn new(ttl: Duration) -> Self {
        StatusCache { ttl, slots: Mutex::new(HashMap::new()) }
    }

    /// Is caching on?
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// Waits for exclusive access to the slot of `id`.
    pub async fn slot(&self, id: &str) -> SlotGuard {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if !slots.contains_key(id) && slots.len() >= SWEEP_ABOVE {
                let ttl = self.ttl;
                // Drop slots nobody is using whose answer has expired.
                slots.retain(|_, s| {
                    Arc::strong_count(s) > 1 || s.try_lock().map(|c| c.as_ref().is_some_and(|c| c.at.elapsed() < ttl)).unwrap_or(true)
                });
            }
            slots.entry(id.to_string()).or_default().clone()
        };
        SlotGuard { guard: slot.lock_owned().await, ttl: self.ttl }
    }
}

impl SlotGuard {
    /// The cached answer, if still fresh.
    pub fn fresh(&self) -> Option<&CachedStatus> {
        self.guard.as_ref().filter(|c| c.at.elapsed() < self.ttl)
    }

    /// Stores a new answer.
    pub fn store(&mut self, c: CachedStatus) {
        *self.guard = Some(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> CachedStatus {
        CachedStatus { at: Instant::now(), status: StatusCode::OK, content_type: None, body: Bytes::from_static(b"{}") }
    }

    #[tokio::test]
    async fn answers_expire_after_the_ttl() {
        let c = StatusCache::new(Duration::from_millis(30));
        let mut s = c.slot("g").await;
        assert!(s.fresh().is_none());
        s.store(answer());
        assert!(s.fresh().is_some());
        drop(s);
        assert!(c.slot("g").await.fresh().is_some());
        assert!(c.slot("other").await.fresh().is_none());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(c.slot("g").await.fresh().is_none());
    }

    #[tokio::test]
    async fn concurrent_callers_wait_for_one_fetch() {
        let c = Arc::new(StatusCache::new(Duration::from_secs(5)));
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (c, fetches) = (c.clone(), fetches.clone());
                tokio::spawn(async move {
                    let mut s = c.slot("g").await;
                    if s.fresh().is_none() {
                        fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        s.store(answer());
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn idle_expired_slots_are_swept() {
        let c = StatusCache::new(Duration::from_millis(1));
        for i in 0..SWEEP_ABOVE {
            c.slot(&i.to_string()).await.store(answer());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(c.slot("new").await);
        assert!(c.slots.lock().unwrap().len() < 10);
    }
}
