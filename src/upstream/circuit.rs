//! A consecutive-failure circuit breaker: closed → open after N failures in a row → after the
//! open period one probe is let through (half-open) → closed on its success, open again on its
//! failure. Time is injected so tests need no sleeps.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Circuit state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requests flow.
    Closed,
    /// Failing fast until the instant.
    Open(Instant),
    /// One probe is in flight.
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    state: State,
    failures: u32,
}

/// See the module docs.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
}

/// Permission to send one request; report how it went.
#[must_use]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    recorded: bool,
}

// === impl CircuitBreaker ===

impl CircuitBreaker {
    /// Opens after `threshold` consecutive failures, for `open_for`.
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        CircuitBreaker {
            threshold: threshold.max(1),
            open_for,
            inner: Mutex::new(Inner { state: State::Closed, failures: 0 }),
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.lock().state
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a request go now? `Err(seconds until the next probe)` when not.
    pub fn try_acquire(&self) -> Result<Permit<'_>, u64> {
        self.try_acquire_at(Instant::now())
    }

    /// [`CircuitBreaker::try_acquire`] at a given time.
    pub fn try_acquire_at(&self, now: Instant) -> Result<Permit<'_>, u64> {
        let mut inner = self.lock();
        match inner.state {
            State::Closed => Ok(Permit { breaker: self, probe: false, recorded: false }),
            State::Open(until) if now >= until => {
                inner.state = State::HalfOpen;
                Ok(Permit { breaker: self, probe: true, recorded: false })
            }
            State::Open(until) => Err((until - now).as_secs().max(1)),
            // Others wait for the probe's verdict.
            State::HalfOpen => Err(1),
        }
    }

    fn record_at(&self, success: bool, probe: bool, now: Instant) {
        let mut inner = self.lock();
        if success {
            if inner.state != State::Closed {
                tracing::info!(cause = "platform_recovered", "upstream circuit closed: the platform answers again");
            }
            inner.failures = 0;
            inner.state = State::Closed;
            return;
        }
        inner.failures = inner.failures.saturating_add(1);
        if probe || inner.failures >= self.threshold {
            if !matches!(inner.state, State::Open(_)) {
                tracing::warn!(
                    cause = if probe { "probe_failed" } else { "consecutive_failures" },
                    failures = inner.failures,
                    open_secs = self.open_for.as_secs(),
                    "upstream circuit opened: failing fast (503) until the next probe"
                );
            }
            inner.state = State::Open(now + self.open_for);
        }
    }
}

impl Permit<'_> {
    /// Reports the outcome (`true`: the platform answered properly).
    pub fn record(mut self, success: bool) {
        self.recorded = true;
        self.breaker.record_at(success, self.probe, Instant::now());
    }

    /// [`Permit::record`] at a given time.
    pub fn record_at(mut self, success: bool, now: Instant) {
        self.recorded = true;
        self.breaker.record_at(success, self.probe, now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        // A cancelled probe must not wedge the breaker half-open forever.
        if !self.recorded && self.probe {
            let mut inner = self.breaker.lock();
            if inner.state == State::HalfOpen {
                inner.state = State::Open(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_recovers_through_a_probe() {
        let cb = CircuitBreaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..2 {
            cb.try_acquire_at(t0).unwrap().record_at(false, t0);
        }
        assert_eq!(cb.state(), State::Closed);
        cb.try_acquire_at(t0).unwrap().record_at(false, t0);
        assert!(matches!(cb.state(), State::Open(_)));
        assert_eq!(cb.try_acquire_at(t0 + Duration::from_secs(1)).err(), Some(9));
        // After the open period exactly one probe goes.
        let probe = cb.try_acquire_at(t0 + Duration::from_secs(10)).unwrap();
        assert!(cb.try_acquire_at(t0 + Duration::from_secs(10)).is_err());
        probe.record_at(true, t0 + Duration::from_secs(10));
        assert_eq!(cb.state(), State::Closed);
    }

    #[test]
    fn failed_probe_reopens() {
        let cb = CircuitBreaker::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        cb.try_acquire_at(t0).unwrap().record_at(false, t0);
        let probe = cb.try_acquire_at(t0 + Duration::from_secs(5)).unwrap();
        probe.record_at(false, t0 + Duration::from_secs(5));
        assert_eq!(cb.try_acquire_at(t0 + Duration::from_secs(6)).err(), Some(4));
    }

    #[test]
    fn success_resets_the_count() {
        let cb = CircuitBreaker::new(2, Duration::from_secs(5));
        let t0 = Instant::now();
        cb.try_acquire_at(t0).unwrap().record_at(false, t0);
        cb.try_acquire_at(t0).unwrap().record_at(true, t0);
        cb.try_acquire_at(t0).unwrap().record_at(false, t0);
        assert_eq!(cb.state(), State::Closed);
    }

    #[test]
    fn dropped_probe_does_not_wedge() {
        let cb = CircuitBreaker::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        cb.try_acquire_at(t0).unwrap().record_at(false, t0);
        drop(cb.try_acquire_at(t0 + Duration::from_secs(5)).unwrap());
        assert!(cb.try_acquire().is_ok());
    }
}
