use super::*;

fn usd(s: &str) -> Usd {
    Usd::parse(s).unwrap()
}

fn t(id: &str) -> Arc<str> {
    Arc::from(id)
}

const M: &str = "2026-11";

fn intent(month: &str) -> Intent {
    Intent { family: "sora".into(), fingerprint: "p".into(), created_ms: 1, idem_key: None, month: month.into() }
}

/// A hold with a far lease in `month`.
fn hold(
    l: &mut LedgerState,
    id: &str,
    tenant: &str,
    month: &str,
    price: &str,
    budget: Option<&str>,
    reserve: &str,
) -> HoldDecision {
    l.hold(id, &t(tenant), usd(price), budget.map(usd), usd(reserve), None, u64::MAX, intent(month))
}

fn fresh(l: &mut LedgerState, amount: &str, now: u64) {
    let at = l.begin_fetch();
    assert!(l.apply_balance(usd(amount), at, now));
}

#[test]
fn admission_checks_budget_before_account() {
    let a = Admission {
        balance: usd("1.00"),
        account_held: usd("0.50"),
        reserve: usd("0.10"),
        spend: usd("4.00"),
        tenant_held: usd("0.50"),
        budget: Some(usd("5.00")),
        in_flight: 2,
        max_in_flight: None,
    };
    assert_eq!(a.admit(usd("0.40")), Ok(()));
    assert_eq!(Admission { max_in_flight: Some(3), ..a }.admit(usd("0.40")), Ok(()));
    assert_eq!(Admission { max_in_flight: Some(2), ..a }.admit(usd("0.40")), Err(Refusal::TooManyInFlight));
    assert_eq!(
        Admission { max_in_flight: Some(2), ..a }.admit(usd("0.51")),
        Err(Refusal::BudgetExceeded),
        "money is decided first"
    );
    assert_eq!(a.admit(usd("0.41")), Err(Refusal::InsufficientCredits));
    assert_eq!(a.admit(usd("0.51")), Err(Refusal::BudgetExceeded));
    assert_eq!(a.spendable(), usd("0.40"));
    assert_eq!((a.budget_remaining(), a.account_available()), (Some(usd("0.50")), usd("0.40")));
    let no_budget = Admission { budget: None, ..a };
    assert_eq!(no_budget.admit(usd("0.40")), Ok(()));
    assert_eq!(Admission { balance: usd("0.1"), ..no_budget }.spendable(), Usd::ZERO);
}

#[test]
fn no_balance_no_hold() {
    let mut l = LedgerState::default();
    assert_eq!(hold(&mut l, "h", "a", M, "0.12", None, "0"), HoldDecision::NoBalance);
}

#[test]
fn holds_never_exceed_the_balance_and_ids_are_idempotent() {
    let mut l = LedgerState::default();
    fresh(&mut l, "0.84", 1);
    let granted =
        (0..50).filter(|i| hold(&mut l, &format!("h{i}"), "a", M, "0.12", None, "0") == HoldDecision::Held).count();
    assert_eq!(granted, 7);
    // Asking again under a granted id is not a second hold.
    assert_eq!(hold(&mut l, "h0", "a", M, "0.12", None, "0"), HoldDecision::Held);
    assert_eq!(l.totals().open, 7);
}

#[test]
fn release_returns_the_hold_and_a_late_hold_of_a_released_id_is_refused() {
    let mut l = LedgerState::default();
    fresh(&mut l, "0.12", 1);
    assert_eq!(hold(&mut l, "h1", "a", M, "0.12", None, "0"), HoldDecision::Held);
    assert_eq!(hold(&mut l, "h2", "a", M, "0.12", None, "0"), HoldDecision::Refused(Refusal::InsufficientCredits));
    assert!(l.release("h1", 10));
    assert_eq!(hold(&mut l, "h1", "a", M, "0.12", None, "0"), HoldDecision::Gone);
    // The hold call timed out and was released before the store saw it.
    assert!(!l.release("late", 10));
    assert_eq!(hold(&mut l, "late", "a", M, "0.12", None, "0"), HoldDecision::Gone);
    assert_eq!(hold(&mut l, "h3", "a", M, "0.12", None, "0"), HoldDecision::Held);
}

#[test]
fn settle_moves_hold_to_spend_and_debit_until_refetch() {
    let mut l = LedgerState::default();
    fresh(&mut l, "1.00", 1);
    hold(&mut l, "h", "a", M, "0.20", Some("1.00"), "0");
    assert!(l.settle("h", usd("0.12"), M));
    assert!(!l.settle("h", usd("0.12"), M), "settling twice counts once");
    assert_eq!(l.spend(&t("a"), M), usd("0.12"));
    // Debit still counts against the stale cached balance.
    assert_eq!(l.spendable(&t("a"), M, None, Usd::ZERO), Some(usd("0.88")));
    assert_eq!(l.totals().open, 0);
    // A fetch that began after the settle reflects the charge: the debit goes.
    fresh(&mut l, "0.88", 2);
    assert_eq!(l.spendable(&t("a"), M, None, Usd::ZERO), Some(usd("0.88")));
    assert_eq!(l.totals().held, Usd::ZERO);
    assert_eq!(l.spendable(&t("a"), M, Some(usd("0.50")), Usd::ZERO), Some(usd("0.38")));
}

#[test]
fn a_fetch_started_before_a_settle_keeps_its_debit() {
    let mut l = LedgerState::default();
    fresh(&mut l, "1.00", 1);
    hold(&mut l, "h", "a", M, "0.50", None, "0");
    let at = l.begin_fetch(); // fetch in flight …
    l.settle("h", usd("0.50"), M); // … while the charge lands
    l.apply_balance(usd("1.00"), at, 2); // stale answer
    assert_eq!(l.spendable(&t("a"), M, None, Usd::ZERO), Some(usd("0.50")));
}

#[test]
fn a_fetch_that_began_before_the_stored_snapshot_is_dropped() {
    let mut l = LedgerState::default();
    let slow = l.begin_fetch(); // replica A starts a slow fetch
    let quick = l.begin_fetch(); // replica B starts later …
    assert!(l.apply_balance(usd("0.00"), quick, 2)); // … and lands first
    assert!(!l.apply_balance(usd("0.84"), slow, 3), "the older answer must not overwrite the newer one");
    assert_eq!(l.balance(), Some((usd("0.00"), 2)));
}

#[test]
fn unknown_outcomes_count_as_spent_until_resolved_not_until_a_refetch() {
    let mut l = LedgerState::default();
    fresh(&mut l, "0.50", 1);
    hold(&mut l, "h", "a", M, "0.50", Some("0.50"), "0");
    assert!(l.mark_unknown("h"));
    assert_eq!(l.totals().unknown, 1);
    assert_eq!(hold(&mut l, "x", "b", M, "0.10", None, "0"), HoldDecision::Refused(Refusal::InsufficientCredits));
    assert_eq!(hold(&mut l, "y", "a", M, "0.10", Some("0.50"), "0"), HoldDecision::Refused(Refusal::BudgetExceeded));
    // A refetch does not make it disappear.
    fresh(&mut l, "0.50", 2);
    assert_eq!(l.totals().unknown, 1);
    assert_eq!(hold(&mut l, "y", "a", M, "0.10", Some("0.50"), "0"), HoldDecision::Refused(Refusal::BudgetExceeded));
    // Resolved as charged: spend; resolved as not charged would be a release.
    assert!(l.settle("h", usd("0.50"), M));
    assert_eq!(l.spend(&t("a"), M), usd("0.50"));
    assert_eq!(l.totals().unknown, 0);
}

#[test]
fn expired_leases_become_unknown_outcomes() {
    let mut l = LedgerState::default();
    fresh(&mut l, "1.00", 1);
    l.hold("a1", &t("a"), usd("0.10"), None, Usd::ZERO, None, 100, intent(M));
    l.hold("a2", &t("a"), usd("0.10"), None, Usd::ZERO, None, 200, intent(M));
    assert_eq!(l.expire(150), vec!["a1".to_string()]);
    assert_eq!(l.totals().unknown, 1);
    assert_eq!(l.totals().open, 1);
    assert_eq!(l.unknown().len(), 1);
    assert!(l.release("a1", 160));
    assert_eq!(l.spendable(&t("a"), M, None, Usd::ZERO), Some(usd("0.90")));
}

#[test]
fn budgets_are_per_tenant_and_reserve_is_untouchable() {
    let mut l = LedgerState::default();
    fresh(&mut l, "10.00", 1);
    l.set_spend(t("a"), M.into(), usd("0.90"), Usd::ZERO);
    assert_eq!(hold(&mut l, "1", "a", M, "0.12", Some("1.00"), "0"), HoldDecision::Refused(Refusal::BudgetExceeded));
    assert_eq!(hold(&mut l, "2", "b", M, "0.12", Some("1.00"), "0"), HoldDecision::Held);
    // Another month starts from zero.
    assert_eq!(hold(&mut l, "3", "a", "2026-12", "0.12", Some("1.00"), "0"), HoldDecision::Held);
    assert_eq!(hold(&mut l, "4", "c", M, "0.12", None, "9.80"), HoldDecision::Refused(Refusal::InsufficientCredits));
}

#[test]
fn refund_lowers_spend_but_not_below_zero() {
    let mut l = LedgerState::default();
    l.set_spend(t("a"), M.into(), usd("0.30"), Usd::ZERO);
    l.refund(&t("a"), M, usd("0.12"));
    assert_eq!(l.spend(&t("a"), M), usd("0.18"));
    assert_eq!(l.refunded(&t("a"), M), usd("0.12"));
    l.refund(&t("a"), M, usd("1.00"));
    assert_eq!(l.spend(&t("a"), M), Usd::ZERO);
    assert_eq!(l.spend_by_tenant(M), vec![(t("a"), Usd::ZERO)]);
}
