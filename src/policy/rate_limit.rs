//! Stages 2 and 5 of the request path (policy half): per-tenant GCRA limits with governor.
//!
//! Each tenant gets its own pair of limiters, so one tenant's flood never drains another's
//! quota. Requests use governor. Paid generations use the same GCRA arithmetic by hand, because
//! a generation the platform refused (503, its own 402, never reached) gives its cell back, and
//! governor has no way to return a cell. The clock is a type parameter so tests drive time.

use std::num::NonZeroU32;
use std::time::Duration;

use std::sync::Mutex;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::tenants::Limits;

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

/// Which quota a check consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Every request (`requests_per_second` / `burst`).
    Requests,
    /// Paid generations (`generations_per_minute`).
    Generations,
}

/// The state reported in `RateLimit-*` headers after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Most requests the window allows (the burst size).
    pub limit: u32,
    /// Requests left right now.
    pub remaining: u32,
    /// Seconds until the quota is whole again.
    pub reset_secs: u64,
}

/// A refused check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} rate limit exceeded: retry in {retry_after_secs}s")]
pub struct RateLimited {
    /// Which quota ran out.
    pub kind: LimitKind,
    /// Seconds until one more request would pass (at least 1).
    pub retry_after_secs: u64,
    /// Header state at refusal (`remaining` is 0).
    pub quotas: Quotas,
}

/// One tenant's limiters.
pub struct TenantLimiter<C: Clock = DefaultClock> {
    limits: Limits,
    requests: Direct<C>,
    generations: Gcra<C>,
    clock: C,
}

/// GCRA with a "give back": the theoretical arrival time of the next cell, in nanoseconds
/// since `origin`. Same arithmetic as the shared store's script.
struct Gcra<C: Clock> {
    params: GcraParams,
    tat: Mutex<u64>,
    origin: C::Instant,
}

impl<C: Clock> Gcra<C> {
    fn new(quota: &Quota, clock: &C) -> Self {
        Gcra { params: GcraParams::of(quota), tat: Mutex::new(0), origin: clock.now() }
    }

    fn now(&self, clock: &C) -> u64 {
        clock.now().duration_since(self.origin).as_u64()
    }

    fn check(&self, clock: &C, kind: LimitKind) -> Result<Quotas, RateLimited> {
        let (emission, burst) = (self.params.emission_ns.max(1), self.params.burst);
        let window = emission * burst as u64;
        let now = self.now(clock);
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let base = (*tat).max(now);
        let next = base + emission;
        if next - now > window {
            let reset = Duration::from_nanos(base - now);
            return Err(RateLimited {
                kind,
                retry_after_secs: ceil_secs(Duration::from_nanos(next - now - window)).max(1),
                quotas: Quotas { limit: burst, remaining: 0, reset_secs: ceil_secs(reset) },
            });
        }
        *tat = next;
        let remaining = ((window - (next - now)) / emission) as u32;
        Ok(Quotas { limit: burst, remaining, reset_secs: ceil_secs(Duration::from_nanos(next - now)) })
    }

    /// Returns one cell taken earlier (never more than a full bucket).
    fn give_back(&self, clock: &C) {
        let now = self.now(clock);
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        *tat = tat.saturating_sub(self.params.emission_ns).max(now);
    }
}

/// The quota for all requests: `rps` sustained, `burst` at once.
pub fn request_quota(limits: &Limits) -> Quota {
    Quota::per_second(limits.requests_per_second).allow_burst(limits.burst)
}

/// The quota for paid generations: `gpm` per minute, all of them at once.
pub fn generation_quota(limits: &Limits) -> Quota {
    Quota::per_minute(limits.generations_per_minute)
}

fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s
    }
}

/// Seconds until a quota with `remaining` of `limit` cells left is whole again.
pub fn reset_after(quota: &Quota, limit: u32, remaining: u32) -> u64 {
    let missing = limit.saturating_sub(remaining);
    ceil_secs(quota.replenish_interval() * missing)
}

// === impl TenantLimiter ===

impl TenantLimiter<DefaultClock> {
    /// Limiters on the real clock.
    pub fn new(limits: Limits) -> Self {
        Self::with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> TenantLimiter<C> {
    /// Limiters on the given clock.
    pub fn with_clock(limits: Limits, clock: C) -> Self {
        let mk =
            |q: Quota| RateLimiter::direct_with_clock(q, clock.clone()).with_middleware::<StateInformationMiddleware>();
        TenantLimiter {
            requests: mk(request_quota(&limits)),
            generations: Gcra::new(&generation_quota(&limits), &clock),
            limits,
            clock,
        }
    }

    /// The limits these limiters were built from.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Gives back a generation cell whose generation the platform did not take.
    pub fn give_back_generation(&self) {
        self.generations.give_back(&self.clock);
    }

    /// Consumes one cell of `kind`.
    pub fn check(&self, kind: LimitKind) -> Result<Quotas, RateLimited> {
        let limiter = match kind {
            LimitKind::Requests => &self.requests,
            LimitKind::Generations => return self.generations.check(&self.clock, kind),
        };
        match limiter.check() {
            Ok(snapshot) => {
                let quota = snapshot.quota();
                let limit = quota.burst_size().get();
                let remaining = snapshot.remaining_burst_capacity();
                Ok(Quotas { limit, remaining, reset_secs: reset_after(&quota, limit, remaining) })
            }
            Err(not_until) => {
                let quota = not_until.quota();
                let limit = quota.burst_size().get();
                let wait = not_until.wait_time_from(self.clock.now());
                Err(RateLimited {
                    kind,
                    retry_after_secs: ceil_secs(wait).max(1),
                    quotas: Quotas { limit, remaining: 0, reset_secs: reset_after(&quota, limit, 0) },
                })
            }
        }
    }
}

/// Used by the Redis backend: the same GCRA parameters as governor, as plain numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraParams {
    /// Nanoseconds between two replenished cells.
    pub emission_ns: u64,
    /// Cells allowed at once.
    pub burst: u32,
}

impl GcraParams {
    /// The parameters of a quota.
    pub fn of(quota: &Quota) -> Self {
        GcraParams { emission_ns: quota.replenish_interval().as_nanos() as u64, burst: quota.burst_size().get() }
    }
}

/// Quotas of `kind` for `limits`.
pub fn quota_of(limits: &Limits, kind: LimitKind) -> Quota {
    match kind {
        LimitKind::Requests => request_quota(limits),
        LimitKind::Generations => generation_quota(limits),
    }
}

/// Builds `Limits` from plain numbers; `None` when any is zero.
pub fn limits(rps: u32, burst: u32, gpm: u32) -> Option<Limits> {
    Some(Limits {
        requests_per_second: NonZeroU32::new(rps)?,
        burst: NonZeroU32::new(burst)?,
        generations_per_minute: NonZeroU32::new(gpm)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limiter(rps: u32, burst: u32, gpm: u32) -> (TenantLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (TenantLimiter::with_clock(limits(rps, burst, gpm).unwrap(), clock.clone()), clock)
    }

    #[test]
    fn allows_burst_then_refuses_with_retry_after() {
        let (l, _clock) = limiter(2, 4, 10);
        for left in (0..4).rev() {
            let q = l.check(LimitKind::Requests).unwrap();
            assert_eq!(q.limit, 4);
            assert_eq!(q.remaining, left);
        }
        let err = l.check(LimitKind::Requests).unwrap_err();
        assert_eq!(err.kind, LimitKind::Requests);
        assert_eq!(err.retry_after_secs, 1); // 500 ms rounds up to 1 s
        assert_eq!(err.quotas.remaining, 0);
        assert_eq!(err.quotas.reset_secs, 2); // 4 cells × 500 ms
    }

    #[test]
    fn replenishes_with_the_clock() {
        let (l, clock) = limiter(2, 1, 10);
        l.check(LimitKind::Requests).unwrap();
        assert!(l.check(LimitKind::Requests).is_err());
        clock.advance(Duration::from_millis(500));
        assert!(l.check(LimitKind::Requests).is_ok());
    }

    #[test]
    fn generations_have_their_own_quota() {
        let (l, clock) = limiter(100, 100, 2);
        l.check(LimitKind::Generations).unwrap();
        l.check(LimitKind::Generations).unwrap();
        let err = l.check(LimitKind::Generations).unwrap_err();
        assert_eq!(err.kind, LimitKind::Generations);
        assert_eq!(err.retry_after_secs, 30);
        // Requests are untouched by the generation quota.
        assert_eq!(l.check(LimitKind::Requests).unwrap().remaining, 99);
        clock.advance(Duration::from_secs(30));
        assert!(l.check(LimitKind::Generations).is_ok());
    }

    #[test]
    fn a_generation_cell_given_back_is_usable_again_but_never_beyond_the_burst() {
        let (l, clock) = limiter(100, 100, 2);
        l.check(LimitKind::Generations).unwrap();
        assert_eq!(l.check(LimitKind::Generations).unwrap().remaining, 0);
        l.give_back_generation();
        assert_eq!(l.check(LimitKind::Generations).unwrap().remaining, 0);
        assert!(l.check(LimitKind::Generations).is_err());
        // A full bucket stays full: giving back then does not add a third cell.
        clock.advance(Duration::from_secs(120));
        l.give_back_generation();
        l.give_back_generation();
        l.check(LimitKind::Generations).unwrap();
        l.check(LimitKind::Generations).unwrap();
        assert!(l.check(LimitKind::Generations).is_err());
    }

    #[test]
    fn two_tenants_do_not_share_cells() {
        let clock = FakeRelativeClock::default();
        let a = TenantLimiter::with_clock(limits(1, 1, 1).unwrap(), clock.clone());
        let b = TenantLimiter::with_clock(limits(1, 1, 1).unwrap(), clock);
        a.check(LimitKind::Requests).unwrap();
        assert!(a.check(LimitKind::Requests).is_err());
        assert!(b.check(LimitKind::Requests).is_ok());
    }

    #[test]
    fn zero_limits_are_unrepresentable() {
        assert!(limits(0, 1, 1).is_none());
        assert!(limits(1, 0, 1).is_none());
        assert!(limits(1, 1, 0).is_none());
    }

    #[test]
    fn gcra_params_match_governor() {
        let l = limits(20, 40, 10).unwrap();
        let p = GcraParams::of(&request_quota(&l));
        assert_eq!(p.emission_ns, 50_000_000);
        assert_eq!(p.burst, 40);
        let g = GcraParams::of(&generation_quota(&l));
        assert_eq!(g.emission_ns, 6_000_000_000);
        assert_eq!(g.burst, 10);
    }
}
