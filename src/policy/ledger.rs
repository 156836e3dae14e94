//! Stages 7–9 of the paid path (policy half): may this tenant spend `price` now?
//!
//! Money the platform may still take is tracked as *entries* against the last fetched account
//! balance:
//! - `Open`: a request being forwarded (a hold);
//! - `Debit`: charged (a 201 was seen) but perhaps not yet reflected in the cached balance;
//! - `Unknown`: forwarded but timed out, so we cannot tell whether it was charged.
//!
//! Settled debits and unknown holds get a sequence number; a balance fetched after that number
//! already reflects them, so applying it drops them. This module is the arithmetic for the
//! embedded stores; the Redis backend runs the same rules in Lua (see `store/redis.rs`).

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
        Ok(())
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
    /// Being forwarded.
    Open,
    /// Charged; dropped once a balance fetched after `seq` is applied.
    Debit(u64),
    /// Outcome unknown; dropped once a balance fetched after `seq` is applied.
    Unknown(u64),
}

#[derive(Debug, Clone)]
struct Entry {
    tenant: Arc<str>,
    amount: Usd,
    state: EntryState,
}

/// Holds, debits and per-month spend for the embedded stores (guarded by one mutex there).
#[derive(Debug, Default)]
pub struct LedgerState {
    balance: Option<Usd>,
    balance_fetched_ms: u64,
    seq: u64,
    next_id: u64,
    entries: HashMap<u64, Entry>,
    account_held: Usd,
    tenant_held: HashMap<Arc<str>, Usd>,
    spend: HashMap<(Arc<str>, String), Usd>,
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
    /// Everything held against the cached balance.
    pub held: Usd,
}

// === impl LedgerState ===

impl LedgerState {
    /// The cached balance and when it was fetched (unix ms).
    pub fn balance(&self) -> Option<(Usd, u64)> {
        self.balance.map(|b| (b, self.balance_fetched_ms))
    }

    /// Marks the start of a balance fetch: entries settled up to now will be in its answer.
    pub fn begin_fetch(&self) -> u64 {
        self.seq
    }

    /// Stores a fetched balance and drops what it already reflects.
    pub fn apply_balance(&mut self, balance: Usd, mark: u64, now_ms: u64) {
        self.balance = Some(balance);
        self.balance_fetched_ms = now_ms;
        let reflected: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, EntryState::Debit(s) | EntryState::Unknown(s) if s <= mark))
            .map(|(id, _)| *id)
            .collect();
        for id in reflected {
            self.remove(id);
        }
    }

    fn admission(&self, tenant: &Arc<str>, month: &str, budget: Option<Usd>, reserve: Usd) -> Option<Admission> {
        Some(Admission {
            balance: self.balance?,
            account_held: self.account_held,
            reserve,
            spend: self.spend(tenant, month),
            tenant_held: self.tenant_held.get(tenant).copied().unwrap_or_default(),
            budget,
        })
    }

    /// Takes a hold of `price` if budget and balance allow; `None` when no balance is cached.
    pub fn hold(
        &mut self,
        tenant: &Arc<str>,
        month: &str,
        price: Usd,
        budget: Option<Usd>,
        reserve: Usd,
    ) -> Option<Result<u64, Refusal>> {
        let admission = self.admission(tenant, month, budget, reserve)?;
        if let Err(r) = admission.admit(price) {
            return Some(Err(r));
        }
        self.next_id += 1;
        let id = self.next_id;
        self.entries.insert(id, Entry { tenant: tenant.clone(), amount: price, state: EntryState::Open });
        self.account_held += price;
        *self.tenant_held.entry(tenant.clone()).or_default() += price;
        Some(Ok(id))
    }

    /// The platform charged `charged` for hold `id` in `month`: it becomes a debit and spend.
    pub fn settle(&mut self, id: u64, charged: Usd, month: &str) {
        let Some(e) = self.entries.get(&id).cloned() else { return };
        if e.state != EntryState::Open {
            return;
        }
        self.release_tenant(&e.tenant, e.amount);
        self.account_held = self.account_held - e.amount + charged;
        self.seq += 1;
        let seq = self.seq;
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.amount = charged;
            entry.state = EntryState::Debit(seq);
        }
        *self.spend.entry((e.tenant, month.to_string())).or_default() += charged;
    }

    /// The request failed before or at the platform without a charge.
    pub fn release(&mut self, id: u64) {
        if self.entries.get(&id).is_some_and(|e| e.state == EntryState::Open) {
            self.remove(id);
        }
    }

    /// The forward timed out: keep the hold until a later balance fetch settles the question.
    pub fn mark_unknown(&mut self, id: u64) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(e) = self.entries.get_mut(&id).filter(|e| e.state == EntryState::Open) {
            e.state = EntryState::Unknown(seq);
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(e) = self.entries.remove(&id) {
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

    /// Overwrites a month's spend (loading from durable storage).
    pub fn set_spend(&mut self, tenant: Arc<str>, month: String, amount: Usd) {
        self.spend.insert((tenant, month), amount);
    }

    /// A charged generation failed and the platform refunded it.
    pub fn refund(&mut self, tenant: &Arc<str>, month: &str, amount: Usd) {
        if let Some(s) = self.spend.get_mut(&(tenant.clone(), month.to_string())) {
            *s = (*s - amount).max_zero();
        }
    }

    /// What the tenant can still spend; `None` when no balance is cached.
    pub fn spendable(&self, tenant: &Arc<str>, month: &str, budget: Option<Usd>, reserve: Usd) -> Option<Usd> {
        self.admission(tenant, month, budget, reserve).map(|a| a.spendable())
    }

    /// Totals for metrics.
    pub fn totals(&self) -> HoldTotals {
        let mut t = HoldTotals { held: self.account_held, ..Default::default() };
        for e in self.entries.values() {
            match e.state {
                EntryState::Open => {
                    t.open += 1;
                    t.open_amount += e.amount;
                }
                EntryState::Unknown(_) => t.unknown += 1,
                EntryState::Debit(_) => {}
            }
        }
        t
    }

    /// Spend of every tenant in `month` (metrics).
    pub fn spend_by_tenant(&self, month: &str) -> Vec<(Arc<str>, Usd)> {
        self.spend.iter().filter(|((_, m), _)| m == month).map(|((t, _), s)| (t.clone(), *s)).collect()
    }
}

#[cfg(test)]
mod tests;
