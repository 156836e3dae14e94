use super::*;

fn usd(s: &str) -> Usd {
    Usd::parse(s).unwrap()
}

fn t(id: &str) -> Arc<str> {
    Arc::from(id)
}

const M: &str = "2026-11";

#[test]
fn admission_checks_budget_before_account() {
    let a = Admission {
        balance: usd("1.00"),
        account_held: usd("0.50"),
        reserve: usd("0.10"),
        spend: usd("4.00"),
        tenant_held: usd("0.50"),
        budget: Some(usd("5.00")),
    };
    assert_eq!(a.admit(usd("0.40")), Ok(()));
    assert_eq!(a.admit(usd("0.41")), Err(Refusal::InsufficientCredits));
    assert_eq!(a.admit(usd("0.51")), Err(Refusal::BudgetExceeded));
    assert_eq!(a.spendable(), usd("0.40"));
    let no_budget = Admission { budget: None, ..a };
    assert_eq!(no_budget.admit(usd("0.40")), Ok(()));
    assert_eq!(Admission { balance: usd("0.1"), ..no_budget }.spendable(), Usd::ZERO);
}

#[test]
fn no_balance_no_hold() {
    let mut l = LedgerState::default();
    assert_eq!(l.hold(&t("a"), M, usd("0.12"), None, Usd::ZERO), None);
}

#[test]
fn holds_never_exceed_the_balance() {
    let mut l = LedgerState::default();
    l.apply_balance(usd("0.84"), l.begin_fetch(), 1);
    let granted = (0..50).filter(|_| l.hold(&t("a"), M, usd("0.12"), None, Usd::ZERO).unwrap().is_ok()).count();
    assert_eq!(granted, 7);
    assert_eq!(l.totals().open, 7);
}

#[test]
fn release_returns_the_hold() {
    let mut l = LedgerState::default();
    l.apply_balance(usd("0.12"), 0, 1);
    let id = l.hold(&t("a"), M, usd("0.12"), None, Usd::ZERO).unwrap().unwrap();
    assert_eq!(l.hold(&t("a"), M, usd("0.12"), None, Usd::ZERO), Some(Err(Refusal::InsufficientCredits)));
    l.release(id);
    assert!(l.hold(&t("a"), M, usd("0.12"), None, Usd::ZERO).unwrap().is_ok());
}

#[test]
fn settle_moves_hold_to_spend_and_debit_until_refetch() {
    let mut l = LedgerState::default();
    l.apply_balance(usd("1.00"), l.begin_fetch(), 1);
    let id = l.hold(&t("a"), M, usd("0.20"), Some(usd("1.00")), Usd::ZERO).unwrap().unwrap();
    l.settle(id, usd("0.12"), M);
    assert_eq!(l.spend(&t("a"), M), usd("0.12"));
    // Debit still counts against the stale cached balance.
    assert_eq!(l.spendable(&t("a"), M, None, Usd::ZERO), Some(usd("0.88")));
    assert_eq!(l.totals().open, 0);
    // A fetch that began after the settle reflects the charge: the debit goes.
    let mark = l.begin_fetch();
    l.apply_balance(usd("0.88"), mark, 2);
    assert_eq!(l.spendable(&t("a"), M, None, Usd::ZERO), Some(usd("0.88")));
    assert_eq!(l.totals().held, Usd::ZERO);
    // Budget: 1.00 − 0.12 spent.
    assert_eq!(l.spendable(&t("a"), M, Some(usd("1.00")), Usd::ZERO), Some(usd("0.88")));
    assert_eq!(l.spendable(&t("a"), M, Some(usd("0.50")), Usd::ZERO), Some(usd("0.38")));
}

#[test]
fn a_fetch_started_before_a_settle_keeps_its_debit() {
    let mut l = LedgerState::default();
    l.apply_balance(usd("1.00"), l.begin_fetch(), 1);
    let id = l.hold(&t("a"), M, usd("0.50"), None, Usd::ZERO).unwrap().unwrap();
    let mark = l.begin_fetch(); // fetch in flight …
    l.settle(id, usd("0.50"), M); // … while the charge lands
    l.apply_balance(usd("1.00"), mark, 2); // stale answer
    assert_eq!(l.spendable(&t("a"), M, None, Usd::ZERO), Some(usd("0.50")));
}

#[test]
fn unknown_outcome_is_held_until_refetch() {
    let mut l = LedgerState::default();
    l.apply_balance(usd("0.50"), l.begin_fetch(), 1);
    let id = l.hold(&t("a"), M, usd("0.50"), Some(usd("0.50")), Usd::ZERO).unwrap().unwrap();
    l.mark_unknown(id);
    assert_eq!(l.totals().unknown, 1);
    assert_eq!(l.hold(&t("a"), M, usd("0.10"), None, Usd::ZERO), Some(Err(Refusal::InsufficientCredits)));
    assert_eq!(l.hold(&t("a"), M, usd("0.10"), Some(usd("0.50")), Usd::ZERO), Some(Err(Refusal::BudgetExceeded)));
    l.release(id); // release after unknown is a no-op
    assert_eq!(l.totals().unknown, 1);
    let mark = l.begin_fetch();
    l.apply_balance(usd("0.50"), mark, 2);
    assert_eq!(l.totals(), HoldTotals::default());
    assert!(l.hold(&t("a"), M, usd("0.10"), Some(usd("0.50")), Usd::ZERO).unwrap().is_ok());
}

#[test]
fn budgets_are_per_tenant_and_reserve_is_untouchable() {
    let mut l = LedgerState::default();
    l.apply_balance(usd("10.00"), 0, 1);
    l.set_spend(t("a"), M.into(), usd("0.90"));
    assert_eq!(l.hold(&t("a"), M, usd("0.12"), Some(usd("1.00")), Usd::ZERO), Some(Err(Refusal::BudgetExceeded)));
    assert!(l.hold(&t("b"), M, usd("0.12"), Some(usd("1.00")), Usd::ZERO).unwrap().is_ok());
    // Another month starts from zero.
    assert!(l.hold(&t("a"), "2026-12", usd("0.12"), Some(usd("1.00")), Usd::ZERO).unwrap().is_ok());
    assert_eq!(l.hold(&t("c"), M, usd("0.12"), None, usd("9.80")), Some(Err(Refusal::InsufficientCredits)));
}

#[test]
fn refund_lowers_spend_but_not_below_zero() {
    let mut l = LedgerState::default();
    l.set_spend(t("a"), M.into(), usd("0.30"));
    l.refund(&t("a"), M, usd("0.12"));
    assert_eq!(l.spend(&t("a"), M), usd("0.18"));
    l.refund(&t("a"), M, usd("1.00"));
    assert_eq!(l.spend(&t("a"), M), Usd::ZERO);
    assert_eq!(l.spend_by_tenant(M), vec![(t("a"), Usd::ZERO)]);
}
