//! Stages 2 and 5 of the request path (I/O half): which limiter a tenant's check goes to.
//!
//! With the embedded store every tenant has in-process governor limiters. With Redis the check
//! is one GCRA script shared by all replicas; if Redis fails, the local limiter answers instead
//! (fail open, but bounded: each replica still enforces the tenant's limit on its own).

use std::collections::HashMap;
use std::sync::Arc;

use crate::policy::rate_limit::Quotas;
use crate::policy::rate_limit::{quota_of, GcraParams, LimitKind, RateLimited, TenantLimiter};
use crate::policy::tenants::{Tenant, TenantDirectory};
use crate::store::{SharedLimit, Store};

/// Per-tenant limiters for one config generation.
pub struct RateLimits {
    local: HashMap<Arc<str>, Arc<TenantLimiter>, foldhash::fast::RandomState>,
}

fn kind_name(kind: LimitKind) -> &'static str {
    match kind {
        LimitKind::Requests => "requests",
        LimitKind::Generations => "generations",
    }
}

// === impl RateLimits ===

impl RateLimits {
    /// Limiters for every tenant of `dir`. Limiters of `previous` whose limits did not change are
    /// kept, so a reload does not hand every tenant a fresh burst.
    pub fn new(dir: &TenantDirectory, previous: Option<&RateLimits>) -> Self {
        let local = dir
            .tenants()
            .iter()
            .map(|t| {
                let kept = previous.and_then(|p| p.local.get(&t.id)).filter(|l| l.limits() == &t.limits).cloned();
                (t.id.clone(), kept.unwrap_or_else(|| Arc::new(TenantLimiter::new(t.limits))))
            })
            .collect();
        RateLimits { local }
    }

    /// Consumes one cell of `kind` for `tenant`.
    pub async fn check(&self, store: &dyn Store, tenant: &Tenant, kind: LimitKind) -> Result<Quotas, RateLimited> {
        let params = GcraParams::of(&quota_of(&tenant.limits, kind));
        let shared = if store.shares_rate_limits() {
            store.shared_rate_limit(&tenant.id, kind_name(kind), params).await
        } else {
            None
        };
        match shared {
            Some(Ok(SharedLimit::Allowed(q))) => return Ok(q),
            Some(Ok(SharedLimit::Refused { retry_after_secs, quotas })) => {
                return Err(RateLimited { kind, retry_after_secs, quotas });
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, tenant = %tenant.id, "shared rate limit unavailable; using the local limiter")
            }
            None => {}
        }
        match self.local.get(&tenant.id) {
            Some(l) => l.check(kind),
            // A tenant added by a reload that raced this request: build its limiter lazily.
            None => TenantLimiter::new(tenant.limits).check(kind),
        }
    }

    /// Gives back the generation cell `tenant` used for a generation the platform did not take
    /// (it answered 503, 429 or its own 402, or was never reached): only charged work counts.
    pub async fn give_back_generation(&self, store: &dyn Store, tenant: &str) {
        let Some(local) = self.local.get(tenant) else { return };
        let params = GcraParams::of(&quota_of(local.limits(), LimitKind::Generations));
        let shared = if store.shares_rate_limits() {
            store.shared_rate_limit_give_back(tenant, kind_name(LimitKind::Generations), params).await
        } else {
            None
        };
        match shared {
            Some(Ok(())) => return,
            Some(Err(e)) => {
                tracing::warn!(error = %e, tenant, "shared rate limit unavailable; giving the cell back locally")
            }
            None => {}
        }
        local.give_back_generation();
    }

    /// Name of a limit kind for logs and metrics.
    pub fn kind_name(kind: LimitKind) -> &'static str {
        kind_name(kind)
    }
}

/// A rate per client address (governor's keyed limiter), forgetting idle addresses now and
/// then so the table stays small.
struct PerAddress {
    limiter: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    checks: std::sync::atomic::AtomicU64,
}

impl PerAddress {
    fn new(per_second: u32, burst: u32) -> Self {
        let nz = |n: u32| std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = governor::Quota::per_second(nz(per_second)).allow_burst(nz(burst));
        PerAddress { limiter: governor::RateLimiter::keyed(quota), checks: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Takes one cell for `ip`; `Err(seconds)` until one is free again.
    fn check(&self, ip: std::net::IpAddr) -> Result<(), u64> {
        use governor::clock::Clock;
        if self.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4096 == 4095 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

/// Failed authentications allowed per client address in a burst, then one per second.
pub const AUTH_FAILURE_BURST: u32 = 10;

/// A per-client-address limit on *failed* authentications (401s). Only failures are counted,
/// so valid keys are never slowed, however many bad ones share their address.
pub struct AuthFailures(PerAddress);

impl AuthFailures {
    /// Ten failures at once, then one a second, per address.
    pub fn new() -> Self {
        AuthFailures(PerAddress::new(1, AUTH_FAILURE_BURST))
    }

    /// Records a failure from `ip`; `Err(seconds)` when the address is over its allowance.
    pub fn failed(&self, ip: std::net::IpAddr) -> Result<(), u64> {
        self.0.check(ip)
    }
}

impl Default for AuthFailures {
    fn default() -> Self {
        Self::new()
    }
}

/// Failed admin-token attempts (admin API and dashboard sign-in) allowed across all addresses
/// in a burst, then one a second: many addresses guessing together are slowed too.
const ADMIN_FAILURE_GLOBAL_BURST: u32 = 60;

/// Guessing the admin token. Unlike tenant keys (128 random bits, never slowed when valid), an
/// operator-chosen token can be guessed, so a throttled address (or every address, once the
/// global budget is spent) gets 429 for *every* attempt, right or wrong: a throttled guess
/// learns nothing.
pub struct AdminFailures {
    per_address: AuthFailures,
    global: governor::DefaultDirectRateLimiter,
    until:
        std::sync::Mutex<(std::collections::HashMap<std::net::IpAddr, std::time::Instant>, Option<std::time::Instant>)>,
}

impl AdminFailures {
    /// Ten failures per address, sixty in all, then one a second each.
    pub fn new() -> Self {
        let quota = governor::Quota::per_second(std::num::NonZeroU32::MIN)
            .allow_burst(std::num::NonZeroU32::new(ADMIN_FAILURE_GLOBAL_BURST).unwrap_or(std::num::NonZeroU32::MIN));
        AdminFailures {
            per_address: AuthFailures::new(),
            global: governor::RateLimiter::direct(quota),
            until: Default::default(),
        }
    }

    /// Seconds left while `ip` (or everyone) is throttled: answer 429 without looking at the token.
    pub fn throttled(&self, ip: Option<std::net::IpAddr>) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        until.0.retain(|_, t| *t > now);
        let mine = ip.and_then(|ip| until.0.get(&ip).copied());
        let end = match (mine, until.1.filter(|t| *t > now)) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b)?,
        };
        let left = end - now;
        Some(left.as_secs() + u64::from(left.subsec_nanos() > 0))
    }

    /// Records a wrong token from `ip`; `Err(seconds)` once it (or everyone) is over the allowance.
    pub fn failed(&self, ip: Option<std::net::IpAddr>) -> Result<(), u64> {
        use governor::clock::Clock;
        let now = std::time::Instant::now();
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(not_until) = self.global.check() {
            let wait = not_until
                .wait_time_from(governor::clock::DefaultClock::default().now())
                .max(std::time::Duration::from_secs(1));
            until.1 = Some(now + wait);
            return Err(wait.as_secs().max(1));
        }
        if let Some(ip) = ip {
            if let Err(secs) = self.per_address.failed(ip) {
                until.0.insert(ip, now + std::time::Duration::from_secs(secs.max(1)));
                return Err(secs.max(1));
            }
        }
        Ok(())
    }
}

impl Default for AdminFailures {
    fn default() -> Self {
        Self::new()
    }
}

/// Access lines of refused, unauthenticated requests, per client address: past a rate they
/// are counted instead of written (a flood of bad keys would otherwise fill the disk with
/// lines that say the same thing), and `flush` writes one summary line per address.
pub struct RefusalSampler {
    logged: PerAddress,
    suppressed: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u64>>,
}

/// Refused requests logged in full per address: a burst of 50, then 20 a second.
const REFUSALS_LOGGED_PER_SEC: u32 = 20;
const REFUSALS_LOGGED_BURST: u32 = 50;

impl RefusalSampler {
    /// A sampler at the default rate.
    pub fn new() -> Self {
        RefusalSampler {
            logged: PerAddress::new(REFUSALS_LOGGED_PER_SEC, REFUSALS_LOGGED_BURST),
            suppressed: Default::default(),
        }
    }

    /// Should this refused request's access line be written?
    pub fn admit(&self, peer: Option<std::net::IpAddr>) -> bool {
        let Some(ip) = peer else { return true };
        if self.logged.check(ip).is_ok() {
            return true;
        }
        *self.suppressed.lock().unwrap_or_else(|p| p.into_inner()).entry(ip).or_default() += 1;
        false
    }

    /// One line per address whose lines were held back since the last flush.
    pub fn flush(&self) {
        let held: Vec<(std::net::IpAddr, u64)> =
            self.suppressed.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (peer, count) in held {
            tracing::warn!(peer = %peer, suppressed = count, cause = "refusal_flood", "access lines of refused requests from this address were sampled: {count} not written (metrics count every one)");
        }
    }
}

impl Default for RefusalSampler {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rate_limit::limits;
    use crate::policy::tenants::key_digest;
    use crate::store::embedded::EmbeddedStore;

    fn dir(rps: u32) -> TenantDirectory {
        let t = Tenant {
            id: "a".into(),
            limits: limits(rps, 1, 1).unwrap(),
            monthly_budget: None,
            max_in_flight: None,
            webhook_secret: None,
            disabled: false,
        };
        TenantDirectory::new(vec![(t, vec![key_digest("k")])]).unwrap()
    }

    #[tokio::test]
    async fn reload_keeps_state_of_unchanged_limits() {
        let store = EmbeddedStore::memory();
        let d = dir(1);
        let first = RateLimits::new(&d, None);
        let tenant = d.tenants()[0].clone();
        first.check(&store, &tenant, LimitKind::Requests).await.unwrap();
        let same = RateLimits::new(&d, Some(&first));
        assert!(same.check(&store, &tenant, LimitKind::Requests).await.is_err(), "burst must not reset on reload");
        let changed_dir = dir(2);
        let changed = RateLimits::new(&changed_dir, Some(&first));
        assert!(changed.check(&store, &changed_dir.tenants()[0], LimitKind::Requests).await.is_ok());
    }
}
