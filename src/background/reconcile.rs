//! The reconciler: the ledger converges to the platform whether or not anyone polls.
//!
//! Every `interval`, one gateway per store (a lease in the store, so replicas never double
//! refund or double settle):
//! 1. turns holds whose lease ran out (crash, grace expiry, slow store) into unknown outcomes;
//! 2. resolves unknown outcomes against the platform's account-wide generation list: a
//!    generation nobody owns yet that can be this request and only it (same family, prompt
//!    digest, creation window and every request field the list shows; `policy::attribution`)
//!    is the tenant's, settled at its price. One that could be more than one tenant's request is
//!    owned by nobody (`~unattributed`, for an operator to assign or dismiss). An unknown outcome
//!    with nothing certainly its own after `unknown_after` is released. A list the platform did
//!    not answer releases nothing;
//! 3. follows generations that are not final yet (oldest-checked first), so a `failed` one is
//!    refunded exactly once (the store's conditional update) even for tenants who never poll.
//!
//! Platform calls are paced: at most `status_calls_per_minute`, spread over the passes, because
//! all tenants share the one token's per-key status limits.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use sha2::{Digest, Sha256};

use crate::core::Shared;
use crate::policy::attribution::{attribute, compatible, Claim, Fingerprint, Listing};
use crate::policy::family::Family;
use crate::policy::money::Usd;
use crate::policy::pricing::settle_price;
use crate::store::{now_ms, GenerationRecord, Resolution, StoreError, UnknownOutcome, UNATTRIBUTED};

/// The platform's list page size (its documented maximum).
const PAGE: usize = 100;
/// Clock skew allowed between the gateway and the platform when matching creation times.
const SKEW_MS: i64 = 60_000;
/// Unfinished generations looked at per pass, at most.
const FOLLOW_WINDOW: usize = 1000;

/// What one pass did (tests and logs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// This gateway held the reconciler lease.
    pub leader: bool,
    /// Holds whose lease ran out.
    pub expired: u64,
    /// Unknown outcomes found on the platform and settled.
    pub found: u64,
    /// Unknown outcomes released (not on the platform after `unknown_after`).
    pub released: u64,
    /// Generations whose status was asked.
    pub followed: u64,
    /// Platform calls spent.
    pub calls: u64,
    /// Generations that could be more than one tenant's, set aside for an operator.
    pub unattributed: u64,
}

/// The reconciler's state across passes.
pub struct Reconciler {
    gw: Arc<Shared>,
    owner: String,
    last_checked: HashMap<String, Instant>,
    /// Platform calls it may make now: refilled at `status_calls_per_minute`, at most a
    /// minute's worth saved up (so a long list can be read across quiet passes).
    tokens: f64,
    refilled: Instant,
}

/// The `x-request-id` of the reconciler's own platform calls.
fn reconcile_id() -> http::HeaderValue {
    let mut buf = [0u8; 42];
    buf[..10].copy_from_slice(b"reconcile-");
    crate::ids::uuid().simple().encode_lower(&mut buf[10..]);
    http::HeaderValue::from_bytes(&buf).unwrap_or(http::HeaderValue::from_static("reconcile"))
}

fn family_of(path: &str) -> Option<Family> {
    Some(Family::named(path))
}

/// Unix ms of a platform timestamp (`2026-11-25T16:00:00.123456`, UTC with or without `Z`).
fn parse_created(s: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| time::OffsetDateTime::parse(&format!("{s}Z"), &Rfc3339))
        .ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// One item of the platform's list: what attribution compares, and what settling records.
struct Listed {
    id: String,
    status: String,
    price: Option<Usd>,
    /// Prompt digest, creation time and the other scalar fields (duration, orientation …).
    listing: Listing,
}

fn listed(family: Family, v: &serde_json::Value) -> Option<Listed> {
    let id = v
        .get(family.id_field())
        .or_else(|| v.get("generation_id"))
        .or_else(|| v.get("task_uuid"))?
        .as_str()?
        .to_string();
    let prompt = v.get("prompt").and_then(|p| p.as_str()).unwrap_or("");
    let fields = v
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| k.as_str() != "prompt")
                .filter_map(|(k, v)| match v {
                    serde_json::Value::String(s) => Some((k.clone(), s.clone())),
                    serde_json::Value::Number(_) | serde_json::Value::Bool(_) => Some((k.clone(), v.to_string())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let listing = Listing {
        prompt_sha256: hex::encode(Sha256::digest(prompt.as_bytes())),
        created_ms: v.get("created_at").and_then(|c| c.as_str()).and_then(parse_created),
        fields,
    };
    Some(Listed {
        id,
        listing,
        status: v.get("status").and_then(|s| s.as_str()).unwrap_or("pending").to_string(),
        price: v.get("price").and_then(Usd::from_json),
    })
}

/// The status a found generation is first recorded with: a failed one as not final, so
/// following it refunds it through the one conditional path every refund takes.
fn first_status(listed: &str) -> String {
    if listed == "failed" { "pending" } else { listed }.to_string()
}

// === impl Reconciler ===

impl Reconciler {
    /// A reconciler for `gw`, under a fresh owner id.
    pub fn new(gw: Arc<Shared>) -> Reconciler {
        let per_minute = f64::from(gw.reconcile.status_calls_per_minute);
        Reconciler {
            gw,
            owner: uuid::Uuid::new_v4().simple().to_string(),
            last_checked: HashMap::new(),
            tokens: per_minute / 2.0,
            refilled: Instant::now(),
        }
    }

    /// Runs passes every `interval` until `stop` turns true.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let interval = self.gw.reconcile.interval;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let pass = self.pass().await;
            if pass.as_ref().is_ok_and(|r| r.leader) {
                let now = crate::store::now_ms();
                self.gw.reconciled_ms.store(now, std::sync::atomic::Ordering::Relaxed);
                // For the dashboards of the replicas that do not hold the lease.
                if let Err(e) = self.gw.store.reconciler_passed(now).await {
                    tracing::debug!(error = %e, "could not record the reconciler pass");
                }
            }
            match pass {
                Ok(r) if r.expired + r.found + r.released > 0 => {
                    tracing::info!(
                        expired = r.expired,
                        found = r.found,
                        released = r.released,
                        followed = r.followed,
                        "reconciler pass"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reconciler pass failed; retrying next interval"),
            }
        }
    }

    /// One pass (see the module docs).
    pub async fn pass(&mut self) -> Result<PassReport, StoreError> {
        let gw = self.gw.clone();
        let cfg = &gw.reconcile;
        let mut report = PassReport::default();
        let lease_ms = (cfg.interval * 3).as_millis() as u64;
        if !gw.store.reconciler_lease(&self.owner, lease_ms).await? {
            return Ok(report);
        }
        report.leader = true;
        report.expired = gw.store.expire_holds().await?;
        if report.expired > 0 {
            gw.metrics.expired_leases(report.expired);
            tracing::warn!(holds = report.expired, cause = "lease_expired", "holds outlived their lease (crash, shutdown or slow store): now unknown outcomes, counted as spent until reconciled");
        }
        let per_minute = f64::from(cfg.status_calls_per_minute);
        self.tokens =
            (self.tokens + self.refilled.elapsed().as_secs_f64() * per_minute / 60.0).min(per_minute.max(1.0));
        self.refilled = Instant::now();
        let budget = self.tokens.floor() as u64;
        let mut calls_left = budget;

        let unknown = gw.store.unknown_outcomes().await?;
        if !unknown.is_empty() {
            self.resolve(&unknown, &mut calls_left, &mut report).await?;
        }

        let mut unfinished = gw.store.unfinished_generations(FOLLOW_WINDOW).await?;
        let live: HashSet<&str> = unfinished.iter().map(|r| r.id.as_str()).collect();
        self.last_checked.retain(|id, _| live.contains(id.as_str()));
        // Never-checked first, then the least recently checked (a webhook's status is confirmed
        // when it arrives, so none waits here).
        unfinished.sort_by_key(|r| self.last_checked.get(&r.id).copied());
        for record in unfinished {
            if calls_left == 0 {
                break;
            }
            calls_left -= 1;
            self.follow(&record).await;
            self.last_checked.insert(record.id.clone(), Instant::now());
            report.followed += 1;
        }
        report.calls = budget - calls_left;
        self.tokens -= report.calls as f64;
        Ok(report)
    }

    async fn follow(&self, record: &GenerationRecord) {
        let path = record.family.status_path(&record.id);
        let request_id = reconcile_id();
        match self.gw.upstream.send(Method::GET, &path, None, &request_id, None, Bytes::new()).await {
            Ok(rsp) if rsp.status.is_success() => self.gw.track_status(record, &rsp.body).await,
            Ok(rsp) => {
                tracing::debug!(generation = %record.id, status = rsp.status.as_u16(), "reconciler status check answered with an error")
            }
            Err(e) => tracing::debug!(generation = %record.id, error = %e, "reconciler status check failed"),
        }
    }

    /// Fetches the account-wide list of one family, newest first, back to `oldest_ms`.
    async fn list(&self, family: Family, oldest_ms: i64, calls_left: &mut u64) -> Option<Vec<Listed>> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            if *calls_left == 0 {
                return None;
            }
            *calls_left -= 1;
            let path = format!("/v1/{}/generations?limit={PAGE}&offset={offset}", family.path());
            let request_id = reconcile_id();
            let rsp = self.gw.upstream.send(Method::GET, &path, None, &request_id, None, Bytes::new()).await.ok()?;
            if !rsp.status.is_success() {
                return None;
            }
            let items: Vec<serde_json::Value> = serde_json::from_slice(&rsp.body).ok()?;
            let n = items.len();
            let page: Vec<Listed> = items.iter().filter_map(|v| listed(family, v)).collect();
            let reached_oldest = page.iter().filter_map(|l| l.listing.created_ms).any(|c| c < oldest_ms);
            out.extend(page);
            if n < PAGE || reached_oldest {
                return Some(out);
            }
            offset += PAGE;
        }
    }

    async fn resolve(
        &self,
        unknown: &[UnknownOutcome],
        calls_left: &mut u64,
        report: &mut PassReport,
    ) -> Result<(), StoreError> {
        let gw = &self.gw;
        let now = now_ms();
        let window = (SKEW_MS, gw.hold_lease.as_millis() as i64 + SKEW_MS);
        let open = gw.store.open_holds().await?;
        let mut by_family: HashMap<&str, Vec<&UnknownOutcome>> = HashMap::new();
        for u in unknown {
            by_family.entry(u.intent.family.as_str()).or_default().push(u);
        }
        for (fam, outcomes) in by_family {
            let Some(family) = family_of(fam) else { continue };
            let oldest = outcomes.iter().map(|u| u.intent.created_ms as i64).min().unwrap_or(0) - SKEW_MS;
            // Without an answer from the platform nothing is released: unknown stays unknown.
            let Some(listed) = self.list(family, oldest, calls_left).await else {
                tracing::warn!(
                    family = fam,
                    "could not read the platform's generation list; unknown outcomes stay counted"
                );
                continue;
            };
            // Only generations nobody owns yet (a tenant's own earlier records, or charges
            // already set aside as unattributed) are candidates.
            let mut free = Vec::with_capacity(listed.len());
            for l in listed {
                if gw.store.generation(&l.id).await?.is_none() {
                    free.push(l);
                }
            }
            free.sort_by_key(|l| l.listing.created_ms);
            // What attribution compares, moved out; `free[i]` keeps the rest of `listings[i]`.
            let listings: Vec<Listing> = free.iter_mut().map(|l| std::mem::take(&mut l.listing)).collect();
            // Requests still in flight take part, so a generation they may yet be answered
            // with is never handed to another request.
            let in_flight: Vec<&UnknownOutcome> = open.iter().filter(|o| o.intent.family == fam).collect();
            let claims: Vec<Claim> = outcomes
                .iter()
                .map(|u| (u, false))
                .chain(in_flight.iter().map(|u| (u, true)))
                .map(|(u, in_flight)| Claim {
                    tenant: u.tenant.to_string(),
                    created_ms: u.intent.created_ms as i64,
                    fingerprint: Fingerprint::decode(&u.intent.fingerprint),
                    in_flight,
                })
                .collect();
            let verdict = attribute(&claims, &listings, window);
            let mut decided = vec![false; outcomes.len()];
            for &(c, li) in &verdict.assigned {
                let (u, l) = (outcomes[c], &free[li]);
                decided[c] = true;
                let price = settle_price(u.price, l.price).unwrap_or(u.price);
                if price > u.price {
                    gw.metrics.charged_above_hold(fam);
                }
                let record = GenerationRecord {
                    id: l.id.clone(),
                    tenant: u.tenant.clone(),
                    family,
                    price,
                    created_ms: listings[li].created_ms.unwrap_or(u.intent.created_ms as i64),
                    status: first_status(&l.status),
                };
                let reply =
                    serde_json::json!({ family.id_field(): l.id, "status": "pending", "price": price.to_string() })
                        .to_string();
                if gw.store.resolve_unknown(&u.hold, &Resolution::Created { record, reply: Bytes::from(reply) }).await?
                {
                    report.found += 1;
                    gw.metrics.resolution("found");
                    tracing::warn!(hold = %u.hold, tenant = %u.tenant, generation = %l.id, price = %price, cause = "found_on_platform", "unknown outcome resolved: the platform created it; charged to the tenant");
                }
            }
            for (li, tenants) in &verdict.ambiguous {
                let l = &free[*li];
                // The highest quote of the requests it could be: what the account was charged
                // at most, unless the platform names a sane price.
                let quote = claims
                    .iter()
                    .zip(outcomes.iter().map(|u| u.price))
                    .filter(|(c, _)| compatible(c, &listings[*li], window))
                    .map(|(_, p)| p)
                    .max()
                    .unwrap_or(Usd::ZERO);
                let price = settle_price(quote, l.price).unwrap_or(quote);
                let record = GenerationRecord {
                    id: l.id.clone(),
                    tenant: Arc::from(UNATTRIBUTED),
                    family,
                    price,
                    created_ms: listings[*li].created_ms.unwrap_or(now as i64),
                    status: first_status(&l.status),
                };
                gw.store.settle(&format!("unattributed-{}", l.id), price, &record).await?;
                report.unattributed += 1;
                gw.metrics.unattributed(fam);
                tracing::warn!(generation = %l.id, family = fam, price = %price, candidates = ?tenants, cause = "ambiguous_owner",
                    "a platform generation could be more than one tenant's request: owned by nobody until an operator assigns or dismisses it (GET /admin/unattributed)");
            }
            for (c, u) in outcomes.iter().enumerate() {
                if decided[c] {
                    continue;
                }
                // A cluster waiting for a request in flight is not released meanwhile.
                if !verdict.waiting.contains(&c)
                    && now.saturating_sub(u.intent.created_ms) >= gw.reconcile.unknown_after.as_millis() as u64
                    && gw.store.resolve_unknown(&u.hold, &Resolution::NotCharged).await?
                {
                    report.released += 1;
                    gw.metrics.resolution("not_charged");
                    tracing::warn!(hold = %u.hold, tenant = %u.tenant, cause = "not_on_platform", "unknown outcome resolved: no generation on the platform is certainly this request's; released");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_timestamps_parse_with_or_without_zone() {
        assert_eq!(parse_created("1970-01-01T00:00:01.5"), Some(1500));
        assert_eq!(parse_created("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_created("yesterday"), None);
    }

    #[test]
    fn list_items_match_on_prompt_digest() {
        let v = serde_json::json!({"task_uuid": "t1", "status": "completed", "prompt": "cat", "created_at": "1970-01-01T00:00:02"});
        let l = listed(Family::builtin("gemini"), &v).unwrap();
        assert_eq!(l.id, "t1");
        assert_eq!(l.listing.prompt_sha256, hex::encode(Sha256::digest(b"cat")));
        assert_eq!(l.listing.created_ms, Some(2000));
        assert_eq!(l.price, None);
    }
}
