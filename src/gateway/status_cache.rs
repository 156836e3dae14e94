//! Status polls of one generation, coalesced and cached briefly.
//!
//! Every tenant polls through the gateway's single platform token, and the platform limits
//! status checks per key (60/min on some families) while recommending 3–10 s between polls. So
//! polls of the same generation share one platform call at a time, and its 2xx answer is reused
//! for `status_cache_ms` (default 1 s). While one poll refreshes an expired answer, the others
//! get the previous one (stale-while-revalidate) instead of queueing behind the platform; an
//! answer is therefore never older than the TTL plus one platform round trip. Ownership is
//! checked before the cache is consulted, so a cached answer never crosses tenants.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::StatusCode;
use tokio::sync::Notify;

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

#[derive(Default)]
struct SlotState {
    cached: Option<CachedStatus>,
    refreshing: bool,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    done: Notify,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// See the module docs.
pub struct StatusCache {
    ttl: Duration,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// What a poll should do.
pub enum Lookup {
    /// Answer with this (fresh, or the previous answer while another poll refreshes it).
    Hit(CachedStatus),
    /// Ask the platform, then `store` the answer; others wait for it or take the old one.
    Refresh(Refresh),
}

/// The right to refresh one slot. Dropping it without storing (an error, a cancelled request)
/// lets the next poll try.
pub struct Refresh {
    slot: Arc<Slot>,
    stored: bool,
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

    fn slot(&self, id: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(id) {
            return s.clone();
        }
        if slots.len() >= SWEEP_ABOVE {
            let ttl = self.ttl;
            // Drop slots nobody is using whose answer has expired.
            slots.retain(|_, s| {
                let st = s.lock();
                Arc::strong_count(s) > 1 || st.refreshing || st.cached.as_ref().is_some_and(|c| c.at.elapsed() < ttl)
            });
        }
        slots.entry(id.to_string()).or_default().clone()
    }

    /// Decides how to answer a poll of generation `id`.
    pub async fn lookup(&self, id: &str) -> Lookup {
        let slot = self.slot(id);
        loop {
            let done = {
                let mut st = slot.lock();
                match &st.cached {
                    Some(c) if c.at.elapsed() < self.ttl || st.refreshing => return Lookup::Hit(c.clone()),
                    _ if !st.refreshing => {
                        st.refreshing = true;
                        return Lookup::Refresh(Refresh { slot: slot.clone(), stored: false });
                    }
                    // First ever poll of this generation is in flight: wait for its answer.
                    _ => slot.done.notified(),
                }
            };
            done.await;
        }
    }
}

impl Refresh {
    /// Stores the platform's answer and wakes the polls waiting for it.
    pub fn store(mut self, c: CachedStatus) {
        self.stored = true;
        let mut st = self.slot.lock();
        st.cached = Some(c);
        st.refreshing = false;
        drop(st);
        self.slot.done.notify_waiters();
    }
}

impl Drop for Refresh {
    fn drop(&mut self) {
        if !self.stored {
            self.slot.lock().refreshing = false;
            self.slot.done.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn answer(body: &'static str) -> CachedStatus {
        CachedStatus {
            at: Instant::now(),
            status: StatusCode::OK,
            content_type: None,
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    async fn refresh(c: &StatusCache, id: &str) -> Refresh {
        match c.lookup(id).await {
            Lookup::Refresh(r) => r,
            Lookup::Hit(_) => panic!("expected to refresh"),
        }
    }

    async fn hit(c: &StatusCache, id: &str) -> Bytes {
        match c.lookup(id).await {
            Lookup::Hit(a) => a.body,
            Lookup::Refresh(_) => panic!("expected a cached answer"),
        }
    }

    #[tokio::test]
    async fn answers_expire_after_the_ttl() {
        let c = StatusCache::new(Duration::from_millis(30));
        refresh(&c, "g").await.store(answer("1"));
        assert_eq!(hit(&c, "g").await, "1");
        assert!(matches!(c.lookup("other").await, Lookup::Refresh(_)));
        tokio::time::sleep(Duration::from_millis(40)).await;
        let r = refresh(&c, "g").await;
        // While the refresh runs, others get the previous answer at once.
        assert_eq!(hit(&c, "g").await, "1");
        r.store(answer("2"));
        assert_eq!(hit(&c, "g").await, "2");
    }

    #[tokio::test]
    async fn first_poll_is_shared_by_concurrent_callers() {
        let c = Arc::new(StatusCache::new(Duration::from_secs(5)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (c, fetches) = (c.clone(), fetches.clone());
                tokio::spawn(async move {
                    match c.lookup("g").await {
                        Lookup::Hit(a) => a.body,
                        Lookup::Refresh(r) => {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            r.store(answer("x"));
                            Bytes::from_static(b"x")
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), "x");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_refresh_lets_the_next_poll_try() {
        let c = StatusCache::new(Duration::from_secs(5));
        drop(refresh(&c, "g").await);
        refresh(&c, "g").await.store(answer("ok"));
        assert_eq!(hit(&c, "g").await, "ok");
    }

    #[tokio::test]
    async fn idle_expired_slots_are_swept() {
        let c = StatusCache::new(Duration::from_millis(1));
        for i in 0..SWEEP_ABOVE {
            refresh(&c, &i.to_string()).await.store(answer("a"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(c.lookup("new").await);
        assert!(c.slots.lock().unwrap().len() < 10);
    }
}
