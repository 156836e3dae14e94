//! What the gateway remembers: holds against the account balance, spend per tenant per month,
//! which tenant owns which generation, and idempotency records.
//!
//! Backends: `embedded` (in memory, optionally backed by a SQLite file: one process) and
//! `redis` (several replicas share one Redis). Both give the same answers; the admission
//! decision is atomic in each (one mutex, or one Lua script).

pub mod embedded;
pub(crate) mod redis;
pub mod usage;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::StoreConfig;
use crate::policy::family::Family;
use crate::policy::keys::ApiTenant;
pub use crate::policy::ledger::{FetchTicket, Intent};
use crate::policy::ledger::{HoldTotals, Refusal};
use crate::policy::money::Usd;
use crate::policy::rate_limit::{GcraParams, Quotas};

/// The store could not answer; money and ownership decisions fail closed on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// A generation the gateway forwarded and the platform accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationRecord {
    /// `generation_id` or `task_uuid`.
    pub id: String,
    /// Owner.
    pub tenant: Arc<str>,
    /// Family it was created in.
    pub family: Family,
    /// What the platform charged.
    pub price: Usd,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// Last status the gateway saw.
    pub status: String,
}

pub use crate::policy::failure::{Failure, Reason};

/// Milliseconds in a UTC day: roll-ups are keyed by `created_ms / DAY_MS`.
pub const DAY_MS: i64 = 86_400_000;

/// One tenant's generations of one family on one UTC day: the daily roll-up, written in the same
/// transaction (SQLite) or script (Redis) as the settle, refund or reassignment it counts, so a
/// chart of spend reads a few rows per day instead of the generation records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DayTotals {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    /// Family path.
    pub family: String,
    /// Generations recorded.
    pub generations: u64,
    /// What they were charged.
    pub charged: Usd,
    /// What was refunded (failed generations).
    pub refunded: Usd,
    /// Failed generations by reason (`Reason::ALL` order).
    pub failed: [u64; 3],
}

impl DayTotals {
    /// Spend net of refunds.
    pub fn spent(&self) -> Usd {
        self.charged - self.refunded
    }
}

/// A hold request: one paid generation about to be forwarded.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    /// Chosen by the gateway before the call, so a call that timed out can be cleaned up.
    pub id: String,
    /// Who pays.
    pub tenant: Arc<str>,
    /// Estimated price.
    pub price: Usd,
    /// The tenant's budget.
    pub budget: Option<Usd>,
    /// Account reserve.
    pub reserve: Usd,
    /// The tenant's cap on generates in flight (its open holds), if any.
    pub max_in_flight: Option<u32>,
    /// The hold's lease: after this long it becomes an unknown outcome (upstream timeout plus a
    /// margin), so no hold outlives a crash.
    pub lease_ms: u64,
    /// What it is for (month, family, prompt digest, Idempotency-Key).
    pub intent: Intent,
}

/// Answer to a hold request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Granted; settle, release or mark unknown by its id.
    Held,
    /// Budget or balance cannot pay.
    Refused(Refusal),
    /// No balance is cached (fetch one first).
    NoBalance,
    /// The id was released before the hold arrived (an earlier call timed out).
    Gone,
}

/// A forwarded request whose outcome is not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownOutcome {
    /// Hold id.
    pub hold: String,
    /// Who would pay.
    pub tenant: Arc<str>,
    /// Held amount (the quoted price).
    pub price: Usd,
    /// What it was for.
    pub intent: Intent,
}

/// How the reconciler settles an unknown outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Found on the platform: owned by the tenant and charged at its price. `reply` is the 201
    /// body a repeat of its Idempotency-Key gets.
    Created {
        /// The generation found.
        record: GenerationRecord,
        /// Body replayed to repeats of its Idempotency-Key.
        reply: Bytes,
    },
    /// Not found: nothing was charged.
    NotCharged,
}

/// Where one generation's webhook goes (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// The unguessable token in the URL given to the platform.
    pub token: String,
    /// Whose generation.
    pub tenant: Arc<str>,
    /// The tenant's own `callback_url`.
    pub url: String,
    /// The generation, once the platform's 201 named it.
    pub generation: Option<String>,
    /// Unix ms.
    pub created_ms: u64,
}

/// A delivery in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// `webhook-id` (`msg_…`), the same on every attempt so receivers can deduplicate.
    pub id: String,
    /// For whom.
    pub tenant: Arc<str>,
    /// Where to.
    pub url: String,
    /// The platform's body, byte for byte.
    pub body: Bytes,
    /// Attempts made so far.
    pub attempts: u32,
    /// Unix ms it was received.
    pub created_ms: u64,
}

/// Outbox figures for metrics and usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    /// Deliveries waiting (due or backing off).
    pub pending: u64,
    /// Unix ms of the oldest pending one.
    pub oldest_pending_ms: Option<u64>,
    /// Deliveries given up on (dead letters).
    pub dead: u64,
}

/// A response kept for an Idempotency-Key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// HTTP status.
    pub status: u16,
    /// Body bytes as first sent.
    pub body: Bytes,
}

/// Answer to claiming an Idempotency-Key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdemClaim {
    /// First use: go ahead, then `idem_finish` or `idem_abort`.
    Fresh,
    /// Seen with this body: send this again.
    Replay(StoredResponse),
    /// Seen with this body and still running.
    InProgress,
    /// Seen with this body; its outcome is unknown until the reconciler resolves it.
    Unresolved,
    /// Seen with another body.
    Mismatch,
}

/// Result of a rate-limit check shared by replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedLimit {
    /// Allowed, with header state.
    Allowed(Quotas),
    /// Refused.
    Refused {
        /// Seconds until a retry can pass (at least 1).
        retry_after_secs: u64,
        /// Header state.
        quotas: Quotas,
    },
}

/// Cached account balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceSnapshot {
    /// Account balance as the platform last reported it.
    pub amount: Usd,
    /// Unix ms of the fetch.
    pub fetched_ms: u64,
}

/// The pseudo-tenant of alert deliveries in the outbox (not a valid tenant id).
pub const ALERTS: &str = "~alerts";

/// Audit lines kept by every backend.
pub const AUDIT_KEEP: usize = 10_000;

/// An API tenant's document and its revision (1 for a new one, one more per change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantDoc {
    /// Revision, for conditional writes.
    pub rev: u64,
    /// The document.
    pub tenant: ApiTenant,
}

/// A tenant's money in one month, as the store has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MonthTotals {
    /// Net of refunds.
    pub spent: Usd,
    /// Refunds.
    pub refunded: Usd,
    /// Open holds.
    pub held: Usd,
    /// Unknown outcomes.
    pub unknown: Usd,
}

impl MonthTotals {
    /// What counts against a budget: spent, held and unknown.
    pub fn used(&self) -> Usd {
        self.spent + self.held + self.unknown
    }

    /// What is left of `budget` (never below zero).
    pub fn remaining(&self, budget: Usd) -> Usd {
        (budget - self.used()).max_zero()
    }
}

/// What the gateway remembers; see the module docs.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Backend name for logs and metrics.
    fn backend(&self) -> &'static str;
    /// Is the store reachable (for `/readyz`)?
    async fn ping(&self) -> Result<(), StoreError>;

    /// The cached account balance.
    async fn balance(&self) -> Result<Option<BalanceSnapshot>, StoreError>;
    /// Marks the start of a balance fetch; pass the ticket to `apply_balance`.
    async fn begin_balance_fetch(&self) -> Result<FetchTicket, StoreError>;
    /// Stores a fetched balance and drops debits it already reflects. A fetch that began before
    /// the stored snapshot's is dropped (`false`).
    async fn apply_balance(&self, amount: Usd, at: FetchTicket, now_ms: u64) -> Result<bool, StoreError>;

    /// Atomically checks budget and balance and takes hold `req.id`; idempotent per id.
    async fn hold(&self, req: &HoldRequest) -> Result<HoldOutcome, StoreError>;
    /// The platform accepted and charged `charged`: record the generation durably and turn the
    /// hold (open, or unknown after a lease ran out) into spend. Idempotent: a generation already
    /// recorded is not counted twice.
    async fn settle(&self, hold: &str, charged: Usd, record: &GenerationRecord) -> Result<(), StoreError>;
    /// No charge happened: drop the hold (a hold that has not arrived yet is refused later).
    async fn release(&self, hold: &str) -> Result<(), StoreError>;
    /// The outcome is unknown: the hold counts as spent until `resolve_unknown`.
    async fn mark_unknown(&self, hold: &str) -> Result<(), StoreError>;
    /// Open holds whose lease ended become unknown outcomes; returns how many.
    async fn expire_holds(&self) -> Result<u64, StoreError>;
    /// Unknown outcomes, oldest first.
    async fn unknown_outcomes(&self) -> Result<Vec<UnknownOutcome>, StoreError>;
    /// Open holds (requests in flight), oldest first: attribution must not give their
    /// generations to anyone else while they may still be answered.
    async fn open_holds(&self) -> Result<Vec<UnknownOutcome>, StoreError>;
    /// Settles an unknown outcome (and its Idempotency-Key); `false` if it was no longer unknown.
    async fn resolve_unknown(&self, hold: &str, resolution: &Resolution) -> Result<bool, StoreError>;
    /// What a tenant can still spend; `None` without a cached balance.
    async fn spendable(
        &self,
        tenant: &Arc<str>,
        month: &str,
        budget: Option<Usd>,
        reserve: Usd,
    ) -> Result<Option<Usd>, StoreError>;

    /// Who owns a generation.
    async fn generation(&self, id: &str) -> Result<Option<GenerationRecord>, StoreError>;
    /// A tenant's generations in a family, newest first.
    async fn list_generations(
        &self,
        tenant: &str,
        family: Family,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<GenerationRecord>, StoreError>;
    /// Generations not yet `completed` or `failed`, oldest first (the reconciler follows them).
    async fn unfinished_generations(&self, limit: usize) -> Result<Vec<GenerationRecord>, StoreError>;
    /// The platform reported a new status; a first `failed` refunds the tenant's spend and keeps
    /// `failure` (its message and reason) with the record. `true` when this call changed the
    /// status (so a refund is counted once however many observers saw it).
    async fn update_status(&self, id: &str, status: &str, failure: Option<&Failure>) -> Result<bool, StoreError>;
    /// A tenant's latest `limit` generations across `families`, newest first, with the failure
    /// of those that failed.
    async fn latest_generations(
        &self,
        tenant: &str,
        families: &[Family],
        limit: usize,
    ) -> Result<Vec<(GenerationRecord, Option<Failure>)>, StoreError>;
    /// A tenant's daily roll-ups for days `from..=to` (days since 1970-01-01, UTC).
    async fn daily(&self, tenant: &str, from: i64, to: i64) -> Result<Vec<DayTotals>, StoreError>;

    /// Moves generation `id` from tenant `from` to `to` with its charge (or refund), if `from`
    /// still owns it; returns the record as it was.
    async fn reassign(&self, id: &str, from: &str, to: &str) -> Result<Option<GenerationRecord>, StoreError>;

    /// Claims an Idempotency-Key for a request body digest, for the request that will take
    /// hold `hold`. A claim whose request died before taking its hold frees itself after
    /// `stale_ms`; one whose hold is unknown answers `Unresolved`.
    async fn idem_claim(
        &self,
        tenant: &str,
        key: &str,
        body_digest: &[u8; 32],
        hold: &str,
        stale_ms: u64,
    ) -> Result<IdemClaim, StoreError>;
    /// Stores the response of a claimed key (kept 24 h).
    async fn idem_finish(
        &self,
        tenant: &str,
        key: &str,
        body_digest: &[u8; 32],
        rsp: &StoredResponse,
    ) -> Result<(), StoreError>;
    /// Gives up a claim (nothing was charged), so a retry runs afresh.
    async fn idem_abort(&self, tenant: &str, key: &str) -> Result<(), StoreError>;

    /// Remembers where a generation's webhook goes, under its token.
    async fn webhook_register(&self, target: &WebhookTarget) -> Result<(), StoreError>;
    /// Names the generation a token belongs to (after the platform's 201).
    async fn webhook_link(&self, token: &str, generation: &str) -> Result<(), StoreError>;
    /// The target of a token.
    async fn webhook_target(&self, token: &str) -> Result<Option<WebhookTarget>, StoreError>;
    /// Queues a delivery, due now.
    async fn outbox_push(&self, m: &OutboxMessage) -> Result<(), StoreError>;
    /// Claims up to `limit` due deliveries for `lease_ms` (others skip them meanwhile; a claim
    /// whose worker died becomes due again when the lease ends).
    async fn outbox_claim(&self, limit: usize, lease_ms: u64) -> Result<Vec<OutboxMessage>, StoreError>;
    /// Delivered.
    async fn outbox_done(&self, id: &str) -> Result<(), StoreError>;
    /// Failed; due again at `next_ms`.
    async fn outbox_retry(&self, id: &str, attempts: u32, next_ms: u64) -> Result<(), StoreError>;
    /// Given up: kept as a dead letter.
    async fn outbox_dead(&self, id: &str, attempts: u32) -> Result<(), StoreError>;
    /// Dead letters (of one tenant, or all) become due again; returns how many.
    async fn outbox_redeliver(&self, tenant: Option<&str>) -> Result<u64, StoreError>;
    /// Figures for metrics.
    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError>;

    /// Each tenant's money in `month` (spent, refunded, held, unknown), for usage reports.
    async fn month_totals(&self, month: &str) -> Result<std::collections::HashMap<String, MonthTotals>, StoreError>;
    /// The month's generations (of one tenant, or all), oldest first.
    async fn generations_in_month(
        &self,
        month: &str,
        tenant: Option<&str>,
    ) -> Result<Vec<GenerationRecord>, StoreError>;
    /// Dead-letter webhook deliveries per tenant.
    async fn outbox_dead_by_tenant(&self) -> Result<std::collections::HashMap<String, u64>, StoreError>;

    /// Takes or renews the reconciler's lease for `owner`; `true` while `owner` holds it.
    async fn reconciler_lease(&self, owner: &str, ttl_ms: u64) -> Result<bool, StoreError>;
    /// The lease holder finished a pass at `at_ms`: kept where replicas share the store, so any
    /// replica's dashboard shows it. A store of one process keeps nothing (its own figure is it).
    async fn reconciler_passed(&self, _at_ms: u64) -> Result<(), StoreError> {
        Ok(())
    }
    /// When the lease holder last finished a pass, where the store shares it.
    async fn reconciler_last_pass(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Hold totals for metrics.
    async fn hold_totals(&self) -> Result<HoldTotals, StoreError>;
    /// Spend of every tenant in a month, for metrics.
    async fn spend_by_tenant(&self, month: &str) -> Result<Vec<(Arc<str>, Usd)>, StoreError>;

    /// The numbers a hold of `tenant` would be decided on now, without taking one (`None`: no
    /// balance cached): what a quote answers from.
    async fn admission(
        &self,
        tenant: &Arc<str>,
        month: &str,
        budget: Option<Usd>,
        reserve: Usd,
        max_in_flight: Option<u32>,
    ) -> Result<Option<crate::policy::ledger::Admission>, StoreError>;

    /// The tenants made through the admin API, and the directory's version (which moves on
    /// every change). The version is read first, so a change racing the read is seen again.
    async fn directory(&self) -> Result<(u64, Vec<TenantDoc>), StoreError>;
    /// The directory's version alone: what replicas poll.
    async fn directory_version(&self) -> Result<u64, StoreError>;
    /// Woken when another replica changed the directory, where the store can say so at once
    /// (Redis pub/sub); `None` where only the version poll tells.
    fn directory_changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
    /// Writes tenant `id`'s document (`None` deletes it) if its revision is still `expect`
    /// (0: it must not exist), and moves the version. `false`: someone changed it first.
    async fn directory_put(&self, id: &str, expect: u64, doc: Option<&ApiTenant>) -> Result<bool, StoreError>;
    /// Marks alert `key` sent; `true` only for the first caller on any replica (once per key).
    async fn alert_once(&self, key: &str) -> Result<bool, StoreError>;
    /// Which of `keys` are marked sent (for the dashboard), in order.
    async fn alerts_marked(&self, keys: &[String]) -> Result<Vec<bool>, StoreError>;
    /// Forgets alert `key`, so it can be sent again (the balance recovered).
    async fn alert_rearm(&self, key: &str) -> Result<(), StoreError>;
    /// Appends an audit line (kept: the latest 10,000).
    async fn audit_push(&self, line: &str) -> Result<(), StoreError>;
    /// The latest audit lines, newest first.
    async fn audit_latest(&self, limit: usize) -> Result<Vec<String>, StoreError>;
    /// A random 32-byte secret named `name`, made by the first replica that asks and the same
    /// for every replica after (dashboard sessions are signed with it).
    async fn shared_secret(&self, name: &str) -> Result<[u8; 32], StoreError>;
    /// Ends session `id` (signed out) on every replica, remembered until it would have expired.
    async fn session_end(&self, id: &str, until_ms: u64) -> Result<(), StoreError>;
    /// Was session `id` ended?
    async fn session_ended(&self, id: &str) -> Result<bool, StoreError>;
    /// Records when keys were last used (`key id`, ms); written at most once a minute per key.
    async fn keys_touch(&self, used: &[(String, u64)]) -> Result<(), StoreError>;
    /// When each key was last used.
    async fn keys_last_used(&self) -> Result<std::collections::HashMap<String, u64>, StoreError>;

    /// Does this backend share rate limits between replicas? Asked first, so a backend without
    /// them costs no call (and no boxed future) per request.
    fn shares_rate_limits(&self) -> bool {
        false
    }

    /// A rate-limit check shared with other replicas; `None` when this backend has none (the
    /// caller uses its in-process limiter).
    async fn shared_rate_limit(
        &self,
        _tenant: &str,
        _kind: &'static str,
        _params: GcraParams,
    ) -> Option<Result<SharedLimit, StoreError>> {
        None
    }

    /// Returns one cell of a shared limit; `None` when this backend has none.
    async fn shared_rate_limit_give_back(
        &self,
        _tenant: &str,
        _kind: &'static str,
        _params: GcraParams,
    ) -> Option<Result<(), StoreError>> {
        None
    }
}

/// The owner of charges the reconciler could not attribute (not a valid tenant id, so no key
/// ever reads them): an operator assigns or dismisses them.
pub const UNATTRIBUTED: &str = "~unattributed";
/// The owner of unattributed charges an operator dismissed (the account absorbs them).
pub const DISMISSED: &str = "~dismissed";

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// RFC 3339 UTC of a time in ms.
pub fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// `YYYY-MM` (UTC) of a unix-ms time: the budget month.
pub fn month_of(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}", t.year(), t.month() as u8)
}

/// Finished Idempotency-Keys are kept this long on every backend.
pub const IDEM_RETENTION_MS: u64 = 24 * 3600 * 1000;

/// Is this platform status final?
pub fn is_final_status(status: &str) -> bool {
    matches!(status, "completed" | "failed")
}

/// `tollgate store recover`: after a Redis store forgot its data, says what was lost and lets
/// replicas accept money again. Only Redis can forget on its own.
pub async fn recover(config: &StoreConfig) -> Result<String, StoreError> {
    match config {
        StoreConfig::Redis { target, timeout, key_prefix, .. } => redis::recover(target, *timeout, key_prefix).await,
        _ => Err(StoreError(
            "only a Redis store can forget its data on its own; this config's store is not Redis".into(),
        )),
    }
}

/// A fresh random secret, hex (the form `shared_secret` stores).
pub(crate) fn random_secret_hex() -> String {
    // ThreadRng is a CSPRNG seeded from the OS.
    hex::encode(rand::random::<[u8; 32]>())
}

/// A stored secret back to bytes.
pub(crate) fn secret_from_hex(text: &str) -> Result<[u8; 32], StoreError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out)
        .map_err(|_| StoreError("a stored secret is not 64 hex digits".into()))?;
    Ok(out)
}

/// Opens the configured backend.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config {
        StoreConfig::Memory => Arc::new(embedded::EmbeddedStore::memory()),
        StoreConfig::Sqlite { path } => Arc::new(embedded::EmbeddedStore::sqlite(path).await?),
        StoreConfig::Redis { target, timeout, key_prefix, min_replica_acks } => {
            Arc::new(redis::RedisStore::open(target, *timeout, key_prefix, *min_replica_acks).await?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_utc_calendar_months() {
        assert_eq!(month_of(0), "1970-01");
        // 2026-11-30T23:59:59Z and a second later
        assert_eq!(month_of(1_796_083_199_000), "2026-11");
        assert_eq!(month_of(1_796_083_200_000), "2026-12");
    }
}
#[cfg(test)]
mod contract;
