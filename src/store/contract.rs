//! The behaviour every store backend must have; each backend's tests run all of these.

use std::sync::Arc;

use super::*;

fn usd(s: &str) -> Usd {
    Usd::parse(s).unwrap()
}

fn req(tenant: &str, price: &str, budget: Option<&str>) -> HoldRequest {
    HoldRequest {
        tenant: Arc::from(tenant),
        month: "2026-11".into(),
        price: usd(price),
        budget: budget.map(usd),
        reserve: Usd::ZERO,
    }
}

fn record(id: &str, tenant: &str, family: Family, created_ms: i64) -> GenerationRecord {
    GenerationRecord {
        id: id.into(),
        tenant: Arc::from(tenant),
        family,
        price: usd("0.12"),
        created_ms,
        status: "pending".into(),
    }
}

/// 2026-11-10T00:00:00Z
const NOV: i64 = 1_794_268_800_000;

async fn held(s: &dyn Store, r: &HoldRequest) -> u64 {
    match s.hold(r).await.unwrap() {
        HoldOutcome::Held(id) => id,
        other => panic!("expected a hold, got {other:?}"),
    }
}

/// Holds are refused without a balance, granted up to it, and released.
pub async fn holds_follow_the_balance(s: &dyn Store) {
    assert_eq!(s.hold(&req("a", "0.12", None)).await.unwrap(), HoldOutcome::NoBalance);
    let mark = s.begin_balance_fetch().await.unwrap();
    s.apply_balance(usd("0.30"), mark, 1).await.unwrap();
    assert_eq!(s.balance().await.unwrap(), Some(BalanceSnapshot { amount: usd("0.30"), fetched_ms: 1 }));
    let h1 = held(s, &req("a", "0.12", None)).await;
    let _h2 = held(s, &req("b", "0.12", None)).await;
    assert_eq!(s.hold(&req("a", "0.12", None)).await.unwrap(), HoldOutcome::Refused(Refusal::InsufficientCredits));
    assert_eq!(s.hold_totals().await.unwrap().open, 2);
    s.release(h1).await.unwrap();
    held(s, &req("a", "0.12", None)).await;
    let t: Arc<str> = Arc::from("a");
    assert_eq!(s.spendable(&t, "2026-11", None, Usd::ZERO).await.unwrap(), Some(usd("0.06")));
}

/// Settling records the generation and its spend; budgets count spend and holds.
pub async fn settle_records_and_budgets_apply(s: &dyn Store) {
    let mark = s.begin_balance_fetch().await.unwrap();
    s.apply_balance(usd("10.00"), mark, 1).await.unwrap();
    let h = held(s, &req("a", "0.20", Some("0.30"))).await;
    let rec = record("gen-1", "a", Family::Sora, NOV);
    s.settle(h, "2026-11", usd("0.12"), &rec).await.unwrap();
    assert_eq!(s.generation("gen-1").await.unwrap(), Some(rec.clone()));
    assert_eq!(s.generation("gen-2").await.unwrap(), None);
    let t: Arc<str> = Arc::from("a");
    assert_eq!(s.spendable(&t, "2026-11", Some(usd("0.30")), Usd::ZERO).await.unwrap(), Some(usd("0.18")));
    assert_eq!(s.hold(&req("a", "0.19", Some("0.30"))).await.unwrap(), HoldOutcome::Refused(Refusal::BudgetExceeded));
    let h2 = held(s, &req("a", "0.18", Some("0.30"))).await;
    assert_eq!(s.hold(&req("a", "0.01", Some("0.30"))).await.unwrap(), HoldOutcome::Refused(Refusal::BudgetExceeded));
    s.release(h2).await.unwrap();
    assert_eq!(s.spend_by_tenant("2026-11").await.unwrap(), vec![(t.clone(), usd("0.12"))]);
    // The debit counts against the cached balance until a later fetch reflects it.
    assert_eq!(s.spendable(&t, "2026-11", None, Usd::ZERO).await.unwrap(), Some(usd("9.88")));
    let mark = s.begin_balance_fetch().await.unwrap();
    s.apply_balance(usd("9.88"), mark, 2).await.unwrap();
    assert_eq!(s.spendable(&t, "2026-11", None, Usd::ZERO).await.unwrap(), Some(usd("9.88")));
}

/// A first `failed` refunds the spend once.
pub async fn failed_generations_are_refunded_once(s: &dyn Store) {
    let mark = s.begin_balance_fetch().await.unwrap();
    s.apply_balance(usd("10.00"), mark, 1).await.unwrap();
    let h = held(s, &req("a", "0.12", None)).await;
    s.settle(h, "2026-11", usd("0.12"), &record("gen-f", "a", Family::Sora, NOV)).await.unwrap();
    let t: Arc<str> = Arc::from("a");
    s.update_status("gen-f", "processing").await.unwrap();
    assert_eq!(s.generation("gen-f").await.unwrap().unwrap().status, "processing");
    s.update_status("gen-f", "failed").await.unwrap();
    s.update_status("gen-f", "failed").await.unwrap();
    assert_eq!(s.spendable(&t, "2026-11", Some(usd("1.00")), Usd::ZERO).await.unwrap(), Some(usd("1.00")));
    assert_eq!(s.generation("gen-f").await.unwrap().unwrap().status, "failed");
    s.update_status("unknown-id", "failed").await.unwrap();
}

/// Timed-out holds stay until a later balance fetch.
pub async fn unknown_holds_wait_for_a_refetch(s: &dyn Store) {
    let mark = s.begin_balance_fetch().await.unwrap();
    s.apply_balance(usd("0.12"), mark, 1).await.unwrap();
    let h = held(s, &req("a", "0.12", None)).await;
    s.mark_unknown(h).await.unwrap();
    assert_eq!(s.hold(&req("a", "0.12", None)).await.unwrap(), HoldOutcome::Refused(Refusal::InsufficientCredits));
    assert_eq!(s.hold_totals().await.unwrap().unknown, 1);
    let mark = s.begin_balance_fetch().await.unwrap();
    s.apply_balance(usd("0.12"), mark, 2).await.unwrap();
    held(s, &req("a", "0.12", None)).await;
}

/// Lists are per tenant and family, newest first, paginated.
pub async fn lists_are_per_tenant(s: &dyn Store) {
    let mark = s.begin_balance_fetch().await.unwrap();
    s.apply_balance(usd("100"), mark, 1).await.unwrap();
    for (i, (tenant, family)) in [("a", Family::Sora), ("b", Family::Sora), ("a", Family::Sora), ("a", Family::Veo), ("a", Family::Sora)]
        .into_iter()
        .enumerate()
    {
        let h = held(s, &req(tenant, "0.12", None)).await;
        s.settle(h, "2026-11", usd("0.12"), &record(&format!("g{i}"), tenant, family, NOV + i as i64)).await.unwrap();
    }
    let ids = |v: Vec<GenerationRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list_generations("a", Family::Sora, 10, 0).await.unwrap()), ["g4", "g2", "g0"]);
    assert_eq!(ids(s.list_generations("a", Family::Sora, 1, 1).await.unwrap()), ["g2"]);
    assert_eq!(ids(s.list_generations("b", Family::Sora, 10, 0).await.unwrap()), ["g1"]);
    assert_eq!(ids(s.list_generations("a", Family::Veo, 10, 0).await.unwrap()), ["g3"]);
    assert!(s.list_generations("c", Family::Sora, 10, 0).await.unwrap().is_empty());
}

/// Idempotency keys replay, conflict, mismatch and abort.
pub async fn idempotency_keys(s: &dyn Store) {
    let d1 = [1u8; 32];
    let d2 = [2u8; 32];
    assert_eq!(s.idem_claim("a", "k", &d1).await.unwrap(), IdemClaim::Fresh);
    assert_eq!(s.idem_claim("a", "k", &d1).await.unwrap(), IdemClaim::InProgress);
    assert_eq!(s.idem_claim("a", "k", &d2).await.unwrap(), IdemClaim::Mismatch);
    // Keys are per tenant.
    assert_eq!(s.idem_claim("b", "k", &d2).await.unwrap(), IdemClaim::Fresh);
    let rsp = StoredResponse { status: 201, body: Bytes::from_static(b"{\"generation_id\":\"x\"}") };
    s.idem_finish("a", "k", &d1, &rsp).await.unwrap();
    assert_eq!(s.idem_claim("a", "k", &d1).await.unwrap(), IdemClaim::Replay(rsp));
    assert_eq!(s.idem_claim("a", "k", &d2).await.unwrap(), IdemClaim::Mismatch);
    s.idem_abort("b", "k").await.unwrap();
    assert_eq!(s.idem_claim("b", "k", &d1).await.unwrap(), IdemClaim::Fresh);
}

/// Fifty concurrent holds at a balance that pays for seven: exactly seven granted.
pub async fn concurrent_holds_never_overspend(s: Arc<dyn Store>) {
    let mark = s.begin_balance_fetch().await.unwrap();
    s.apply_balance(usd("0.84"), mark, 1).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { s.hold(&req(&format!("t{}", i % 3), "0.12", None)).await.unwrap() }));
    }
    let mut granted = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), HoldOutcome::Held(_)) {
            granted += 1;
        }
    }
    assert_eq!(granted, 7);
}
