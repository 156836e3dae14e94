//! Stages 7–9 of the paid path (policy half): may this tenant spend `price` now?
//!
//! Money the platform may still take is tracked as *entries* against the last fetched account
//! balance, each under an id the gateway chose before asking the store (so a hold call that
//! timed out can still be cleaned up by id):
//! - `Open`: a request being forwarded (a hold), a lease that ends at `lease_until_ms`;
//! - `Debit`: charged (a 201 was seen) but perhaps not yet reflected in the cached balance;
//! - `Unknown`: forwarded, no answer read (timeout, broken connection, crash, expired lease).
//!   It counts as spent for the tenant's budget and against the account until the reconciler
//!   resolves it: found on the platform (it becomes a debit and spend) or not (released).
//!
//! Settled debits get a sequence number; a balance fetched after that number already reflects
//! them, so applying it drops them. Fetches carry a ticket taken when they start; a fetch that
//! started before the stored snapshot's is dropped, so an old balance never overwrites a newer
//! one. This module is the arithmetic for the embedded stores; the Redis backend runs the same
//! rules in Lua (see `store/redis.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use super::money::Usd;

/// Why a paid request was refused (402).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// month's spend + tenant holds + price > monthly budget.
    #[error("BUDGET_EXCEEDED")]
    BudgetExceeded,
    /// balance − all holds − reserve < price.
    #[error("INSUFFICIENT_CREDITS")]
    InsufficientCredits,
    /// The tenant already has `max_in_flight` generates the platform has not answered.
    #[error("Too many generations in progress for this tenant")]
    TooManyInFlight,
}

/// The numbers one admission decision needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Cached account balance.
    pub balance: Usd,
    /// Everything held against it (open, debits, unknown).
    pub account_held: Usd,
    /// Always left untouched.
    pub reserve: Usd,
    /// The tenant's spend this month.
    pub spend: Usd,
    /// The tenant's open and unknown holds.
    pub tenant_held: Usd,
    /// The tenant's monthly budget, if any.
    pub budget: Option<Usd>,
    /// The tenant's open holds: generates forwarded (or about to be) and not answered yet.
    pub in_flight: u32,
    /// The tenant's cap on them, if any.
    pub max_in_flight: Option<u32>,
}

// === impl Admission ===

impl Admission {
    /// Budget first (SPEC §4 step 7), then the account (step 8).
    pub fn admit(&self, price: Usd) -> Result<(), Refusal> {
        if let Some(budget) = self.budget {
            if self.spend + self.tenant_held + price > budget {
                return Err(Refusal::BudgetExceeded);
            }
        }
        if self.balance - self.account_held - self.reserve < price {
            return Err(Refusal::InsufficientCredits);
        }
        if self.max_in_flight.is_some_and(|cap| self.in_flight >= cap) {
            return Err(Refusal::TooManyInFlight);
        }
        Ok(())
    }

    /// What the budget still allows (`None` without a budget), never negative.
    pub fn budget_remaining(&self) -> Option<Usd> {
        self.budget.map(|b| (b - self.spend - self.tenant_held).max_zero())
    }

    /// What the account still allows, never negative.
    pub fn account_available(&self) -> Usd {
        (self.balance - self.account_held - self.reserve).max_zero()
    }

    /// What the tenant can still spend: min(account left, budget left), never negative.
    pub fn spendable(&self) -> Usd {
        let account = self.balance - self.account_held - self.reserve;
        let own = match self.budget {
            Some(b) => account.min(b - self.spend - self.tenant_held),
            None => account,
        };
        own.max_zero()
    }
}

/// One hold's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// Being forwarded; becomes `Unknown` when the lease ends (unix ms).
    Open {
        /// Lease end.
        lease_until_ms: u64,
    },
    /// Charged; dropped once a balance fetched after `seq` is applied.
    Debit(u64),
    /// Outcome unknown; stays until resolved.
    Unknown,
}

/// What a hold was for: lets the reconciler find its generation on the platform.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Intent {
    /// Family path (`sora`, `kling/o1-video` …).
    pub family: String,
    /// What was sent, to recognise it in the platform's list (`attribution::Fingerprint`,
    /// encoded; stored in the `prompt_sha256` column it grew out of).
    pub fingerprint: String,
    /// Unix ms the hold was taken.
    pub created_ms: u64,
    /// The request's Idempotency-Key, if any.
    pub idem_key: Option<String>,
    /// `YYYY-MM` the spend counts in.
    pub month: String,
}

/// One entry, as the reconciler and the stores see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Who pays.
    pub tenant: Arc<str>,
    /// Held (or charged) amount.
    pub amount: Usd,
    /// Where it is in its life.
    pub state: EntryState,
    /// What it was for.
    pub intent: Intent,
}

/// A fetch's place in line: `mark` for debits, `ticket` for ordering snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FetchTicket {
    /// Debits settled up to this sequence number will be in the fetched balance.
    pub mark: u64,
    /// Increases with every fetch begun; the stored snapshot keeps the highest applied.
    pub ticket: u64,
}

/// Holds, debits and per-month spend for the embedded stores (guarded by one mutex there).
#[derive(Debug, Default)]
pub struct LedgerState {
    balance: Option<Usd>,
    balance_fetched_ms: u64,
    balance_ticket: u64,
    next_ticket: u64,
    seq: u64,
    entries: HashMap<String, Entry>,
    /// Ids released before their hold arrived (a hold call that timed out): refused later.
    tombstones: HashMap<String, u64>,
    account_held: Usd,
    tenant_held: HashMap<Arc<str>, Usd>,
    spend: HashMap<(Arc<str>, String), Usd>,
    refunded: HashMap<(Arc<str>, String), Usd>,
}

/// Totals for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HoldTotals {
    /// Open (in-flight) holds.
    pub open: u64,
    /// Their amount.
    pub open_amount: Usd,
    /// Holds whose outcome is unknown.
    pub unknown: u64,
    /// Their amount.
    pub unknown_amount: Usd,
    /// Everything held against the cached balance.
    pub held: Usd,
}

/// Result of asking for a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldDecision {
    /// Granted (or already granted under this id).
    Held,
    /// Budget or balance cannot pay.
    Refused(Refusal),
    /// No balance cached.
    NoBalance,
    /// This id was already released or resolved: the caller gave up on it.
    Gone,
}

/// How long a tombstone for a released id is kept (longer than any store call can be late).
const TOMBSTONE_MS: u64 = 3_600_000;

// === impl LedgerState ===

impl LedgerState {
    /// The cached balance and when it was fetched (unix ms).
    pub fn balance(&self) -> Option<(Usd, u64)> {
        self.balance.map(|b| (b, self.balance_fetched_ms))
    }

    /// Marks the start of a balance fetch.
    pub fn begin_fetch(&mut self) -> FetchTicket {
        self.next_ticket += 1;
        FetchTicket { mark: self.seq, ticket: self.next_ticket }
    }

    /// Stores a fetched balance and drops the debits it already reflects. A fetch that began
    /// before the stored snapshot's is dropped (returns false).
    pub fn apply_balance(&mut self, balance: Usd, at: FetchTicket, now_ms: u64) -> bool {
        if at.ticket < self.balance_ticket {
            return false;
        }
        self.balance = Some(balance);
        self.balance_fetched_ms = now_ms;
        self.balance_ticket = at.ticket;
        let reflected: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, EntryState::Debit(s) if s <= at.mark))
            .map(|(id, _)| id.clone())
            .collect();
        for id in reflected {
            self.remove(&id);
        }
        true
    }

    /// The numbers a hold of `tenant` would be decided on now (`None`: no balance cached). The
    /// open holds are counted only when there is a cap to compare them with.
    pub fn admission(
        &self,
        tenant: &Arc<str>,
        month: &str,
        budget: Option<Usd>,
        reserve: Usd,
        max_in_flight: Option<u32>,
    ) -> Option<Admission> {
        let in_flight = match max_in_flight {
            Some(_) => self
                .entries
                .values()
                .filter(|e| e.tenant == *tenant && matches!(e.state, EntryState::Open { .. }))
                .count() as u32,
            None => 0,
        };
        Some(Admission {
            balance: self.balance?,
            account_held: self.account_held,
            reserve,
            spend: self.spend(tenant, month),
            tenant_held: self.tenant_held.get(tenant).copied().unwrap_or_default(),
            budget,
            in_flight,
            max_in_flight,
        })
    }

    /// Takes hold `id` of `price` if budget and balance allow. Asking again with the same id
    /// answers `Held` without a second hold.
    #[allow(clippy::too_many_arguments)]
    pub fn hold(
        &mut self,
        id: &str,
        tenant: &Arc<str>,
        price: Usd,
        budget: Option<Usd>,
        reserve: Usd,
        max_in_flight: Option<u32>,
        lease_until_ms: u64,
        intent: Intent,
    ) -> HoldDecision {
        if self.entries.contains_key(id) {
            return HoldDecision::Held;
        }
        if self.tombstones.contains_key(id) {
            return HoldDecision::Gone;
        }
        let Some(admission) = self.admission(tenant, &intent.month, budget, reserve, max_in_flight) else {
            return HoldDecision::NoBalance;
        };
        if let Err(r) = admission.admit(price) {
            return HoldDecision::Refused(r);
        }
        self.insert(
            id.to_string(),
            Entry { tenant: tenant.clone(), amount: price, state: EntryState::Open { lease_until_ms }, intent },
        );
        HoldDecision::Held
    }

    /// Puts back an entry loaded from durable storage (counted like a new one).
    pub fn insert(&mut self, id: String, e: Entry) {
        self.account_held += e.amount;
        if !matches!(e.state, EntryState::Debit(_)) {
            *self.tenant_held.entry(e.tenant.clone()).or_default() += e.amount;
        }
        self.entries.insert(id, e);
    }

    /// The platform charged `charged` for hold `id` (open or unknown): it becomes a debit and
    /// spend in `month` (the generation's). Returns false when there was no such hold (already settled,
    /// resolved or released); the caller then adds the spend itself if the generation is new.
    pub fn settle(&mut self, id: &str, charged: Usd, month: &str) -> bool {
        let Some(e) = self.entries.get(id).cloned() else { return false };
        if matches!(e.state, EntryState::Debit(_)) {
            return false;
        }
        self.release_tenant(&e.tenant, e.amount);
        self.account_held = self.account_held - e.amount + charged;
        self.seq += 1;
        let seq = self.seq;
        if let Some(entry) = self.entries.get_mut(id) {
            entry.amount = charged;
            entry.state = EntryState::Debit(seq);
        }
        self.add_spend(e.tenant, month, charged);
        true
    }

    /// Spend for a generation recorded without a hold (a late settle after release).
    pub fn add_spend(&mut self, tenant: Arc<str>, month: &str, amount: Usd) {
        *self.spend.entry((tenant, month.to_string())).or_default() += amount;
    }

    /// No charge happened: drop an open or unknown hold; an id never seen is tombstoned so its
    /// late hold is refused.
    pub fn release(&mut self, id: &str, now_ms: u64) -> bool {
        match self.entries.get(id).map(|e| e.state) {
            Some(EntryState::Open { .. } | EntryState::Unknown) => {
                self.remove(id);
                self.tombstones.insert(id.to_string(), now_ms + TOMBSTONE_MS);
                true
            }
            Some(EntryState::Debit(_)) => false,
            None => {
                self.tombstones.insert(id.to_string(), now_ms + TOMBSTONE_MS);
                false
            }
        }
    }

    /// The outcome is unknown: the hold stays counted until the reconciler resolves it.
    pub fn mark_unknown(&mut self, id: &str) -> bool {
        match self.entries.get_mut(id) {
            Some(e) if matches!(e.state, EntryState::Open { .. }) => {
                e.state = EntryState::Unknown;
                true
            }
            _ => false,
        }
    }

    /// Open holds whose lease ended become unknown outcomes; returns their ids. Old tombstones go.
    pub fn expire(&mut self, now_ms: u64) -> Vec<String> {
        self.tombstones.retain(|_, until| *until > now_ms);
        let mut expired = Vec::new();
        for (id, e) in self.entries.iter_mut() {
            if matches!(e.state, EntryState::Open { lease_until_ms } if lease_until_ms <= now_ms) {
                e.state = EntryState::Unknown;
                expired.push(id.clone());
            }
        }
        expired
    }

    /// Unknown outcomes, oldest first.
    pub fn unknown(&self) -> Vec<(String, Entry)> {
        let mut v: Vec<(String, Entry)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.state == EntryState::Unknown)
            .map(|(i, e)| (i.clone(), e.clone()))
            .collect();
        v.sort_by_key(|(_, e)| e.intent.created_ms);
        v
    }

    /// Open holds (requests in flight), oldest first.
    pub fn open(&self) -> Vec<(String, Entry)> {
        let mut v: Vec<(String, Entry)> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, EntryState::Open { .. }))
            .map(|(i, e)| (i.clone(), e.clone()))
            .collect();
        v.sort_by_key(|(_, e)| e.intent.created_ms);
        v
    }

    /// Moves a generation's charge from one tenant's month to another's (an operator assigned
    /// an unattributed charge): its spend, or its refund when it already failed.
    pub fn transfer(&mut self, from: &Arc<str>, to: &Arc<str>, month: &str, amount: Usd, refunded: bool) {
        let map = if refunded { &mut self.refunded } else { &mut self.spend };
        let k = (from.clone(), month.to_string());
        if let Some(v) = map.get_mut(&k) {
            *v = (*v - amount).max_zero();
        }
        *map.entry((to.clone(), month.to_string())).or_default() += amount;
    }

    /// An entry by id.
    pub fn entry(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    fn remove(&mut self, id: &str) {
        if let Some(e) = self.entries.remove(id) {
            self.account_held -= e.amount;
            // A debit already left the tenant's holds for its spend.
            if !matches!(e.state, EntryState::Debit(_)) {
                self.release_tenant(&e.tenant, e.amount);
            }
        }
    }

    fn release_tenant(&mut self, tenant: &Arc<str>, amount: Usd) {
        if let Some(h) = self.tenant_held.get_mut(tenant) {
            *h = (*h - amount).max_zero();
        }
    }

    /// The tenant's recorded spend in `month`.
    pub fn spend(&self, tenant: &Arc<str>, month: &str) -> Usd {
        self.spend.get(&(tenant.clone(), month.to_string())).copied().unwrap_or_default()
    }

    /// Overwrites a month's spend and refunds (loading from durable storage).
    pub fn set_spend(&mut self, tenant: Arc<str>, month: String, spend: Usd, refunded: Usd) {
        self.spend.insert((tenant.clone(), month.clone()), spend);
        self.refunded.insert((tenant, month), refunded);
    }

    /// A charged generation failed and the platform refunded it.
    pub fn refund(&mut self, tenant: &Arc<str>, month: &str, amount: Usd) {
        let k = (tenant.clone(), month.to_string());
        if let Some(s) = self.spend.get_mut(&k) {
            *s = (*s - amount).max_zero();
        }
        *self.refunded.entry(k).or_default() += amount;
    }

    /// Refunds the tenant received in `month` (tests).
    #[cfg(test)]
    pub fn refunded(&self, tenant: &Arc<str>, month: &str) -> Usd {
        self.refunded.get(&(tenant.clone(), month.to_string())).copied().unwrap_or_default()
    }

    /// What the tenant can still spend; `None` when no balance is cached.
    pub fn spendable(&self, tenant: &Arc<str>, month: &str, budget: Option<Usd>, reserve: Usd) -> Option<Usd> {
        self.admission(tenant, month, budget, reserve, None).map(|a| a.spendable())
    }

    /// Totals for metrics.
    pub fn totals(&self) -> HoldTotals {
        let mut t = HoldTotals { held: self.account_held, ..Default::default() };
        for e in self.entries.values() {
            match e.state {
                EntryState::Open { .. } => {
                    t.open += 1;
                    t.open_amount += e.amount;
                }
                EntryState::Unknown => {
                    t.unknown += 1;
                    t.unknown_amount += e.amount;
                }
                EntryState::Debit(_) => {}
            }
        }
        t
    }

    /// Refunds of every tenant in `month`.
    pub fn refunded_by_tenant(&self, month: &str) -> Vec<(Arc<str>, Usd)> {
        self.refunded.iter().filter(|((_, m), _)| m == month).map(|((t, _), s)| (t.clone(), *s)).collect()
    }

    /// Open and unknown amounts per tenant for holds taken in `month`.
    pub fn held_by_tenant(&self, month: &str) -> Vec<(Arc<str>, Usd, Usd)> {
        let mut m: HashMap<Arc<str>, (Usd, Usd)> = HashMap::new();
        for e in self.entries.values().filter(|e| e.intent.month == month) {
            let slot = m.entry(e.tenant.clone()).or_default();
            match e.state {
                EntryState::Open { .. } => slot.0 += e.amount,
                EntryState::Unknown => slot.1 += e.amount,
                EntryState::Debit(_) => {}
            }
        }
        m.into_iter().map(|(t, (h, u))| (t, h, u)).collect()
    }

    /// Spend of every tenant in `month` (metrics).
    pub fn spend_by_tenant(&self, month: &str) -> Vec<(Arc<str>, Usd)> {
        self.spend.iter().filter(|((_, m), _)| m == month).map(|((t, _), s)| (t.clone(), *s)).collect()
    }
}

#[cfg(test)]
mod tests;
