//! The behaviour every store backend must have; each backend's tests run all of these.

use std::sync::Arc;

use super::*;

fn usd(s: &str) -> Usd {
    Usd::parse(s).unwrap()
}

fn req_id(id: &str, tenant: &str, price: &str, budget: Option<&str>, lease_ms: u64, idem: Option<&str>) -> HoldRequest {
    HoldRequest {
        id: id.into(),
        tenant: Arc::from(tenant),
        price: usd(price),
        budget: budget.map(usd),
        reserve: Usd::ZERO,
        max_in_flight: None,
        lease_ms,
        intent: Intent {
            family: "sora".into(),
            fingerprint: "digest".into(),
            created_ms: 0,
            idem_key: idem.map(str::to_string),
            month: month_of(NOV as u64),
        },
    }
}

fn req(tenant: &str, price: &str, budget: Option<&str>) -> HoldRequest {
    req_id(&uuid::Uuid::new_v4().simple().to_string(), tenant, price, budget, 60_000, None)
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

async fn held(s: &dyn Store, r: &HoldRequest) -> String {
    match s.hold(r).await.unwrap() {
        HoldOutcome::Held => r.id.clone(),
        other => panic!("expected a hold, got {other:?}"),
    }
}

async fn set_balance(s: &dyn Store, amount: &str) {
    let at = s.begin_balance_fetch().await.unwrap();
    assert!(s.apply_balance(usd(amount), at, now_ms()).await.unwrap());
}

fn t(id: &str) -> Arc<str> {
    Arc::from(id)
}

const M: &str = "2026-11";

/// Holds are refused without a balance, granted up to it, released, and idempotent per id.
pub async fn holds_follow_the_balance(s: &dyn Store) {
    assert_eq!(s.hold(&req("a", "0.12", None)).await.unwrap(), HoldOutcome::NoBalance);
    set_balance(s, "0.30").await;
    assert_eq!(s.balance().await.unwrap().map(|b| b.amount), Some(usd("0.30")));
    let r1 = req("a", "0.12", None);
    let h1 = held(s, &r1).await;
    assert_eq!(s.hold(&r1).await.unwrap(), HoldOutcome::Held, "the same id again is the same hold");
    let _h2 = held(s, &req("b", "0.12", None)).await;
    assert_eq!(s.hold(&req("a", "0.12", None)).await.unwrap(), HoldOutcome::Refused(Refusal::InsufficientCredits));
    assert_eq!(s.hold_totals().await.unwrap().open, 2);
    s.release(&h1).await.unwrap();
    assert_eq!(s.hold(&r1).await.unwrap(), HoldOutcome::Gone, "a released id is never held again");
    held(s, &req("a", "0.12", None)).await;
    assert_eq!(s.spendable(&t("a"), M, None, Usd::ZERO).await.unwrap(), Some(usd("0.06")));
}

/// A hold call that timed out is released by id before it lands: when it lands it is refused.
pub async fn a_late_hold_after_its_release_is_refused(s: &dyn Store) {
    set_balance(s, "1.00").await;
    let r = req("a", "0.50", None);
    s.release(&r.id).await.unwrap();
    assert_eq!(s.hold(&r).await.unwrap(), HoldOutcome::Gone);
    assert_eq!(s.hold_totals().await.unwrap(), HoldTotals::default());
}

/// Settling records the generation and its spend, once; budgets count spend and holds.
pub async fn settle_records_and_budgets_apply(s: &dyn Store) {
    set_balance(s, "10.00").await;
    let h = held(s, &req("a", "0.20", Some("0.30"))).await;
    let rec = record("gen-1", "a", Family::builtin("sora"), NOV);
    s.settle(&h, usd("0.12"), &rec).await.unwrap();
    s.settle(&h, usd("0.12"), &rec).await.unwrap();
    assert_eq!(s.generation("gen-1").await.unwrap(), Some(rec.clone()));
    assert_eq!(s.generation("gen-2").await.unwrap(), None);
    assert_eq!(s.spendable(&t("a"), M, Some(usd("0.30")), Usd::ZERO).await.unwrap(), Some(usd("0.18")));
    assert_eq!(s.hold(&req("a", "0.19", Some("0.30"))).await.unwrap(), HoldOutcome::Refused(Refusal::BudgetExceeded));
    let h2 = held(s, &req("a", "0.18", Some("0.30"))).await;
    assert_eq!(s.hold(&req("a", "0.01", Some("0.30"))).await.unwrap(), HoldOutcome::Refused(Refusal::BudgetExceeded));
    s.release(&h2).await.unwrap();
    assert_eq!(s.spend_by_tenant(M).await.unwrap(), vec![(t("a"), usd("0.12"))]);
    // The debit counts against the cached balance until a later fetch reflects it.
    assert_eq!(s.spendable(&t("a"), M, None, Usd::ZERO).await.unwrap(), Some(usd("9.88")));
    set_balance(s, "9.88").await;
    assert_eq!(s.spendable(&t("a"), M, None, Usd::ZERO).await.unwrap(), Some(usd("9.88")));
}

/// A balance fetch that began before the stored snapshot's never overwrites it.
pub async fn balance_snapshots_only_move_forward(s: &dyn Store) {
    let slow = s.begin_balance_fetch().await.unwrap();
    let quick = s.begin_balance_fetch().await.unwrap();
    assert!(s.apply_balance(usd("0.00"), quick, now_ms()).await.unwrap());
    assert!(!s.apply_balance(usd("0.84"), slow, now_ms()).await.unwrap());
    assert_eq!(s.balance().await.unwrap().map(|b| b.amount), Some(usd("0.00")));
    assert_eq!(s.hold(&req("a", "0.12", None)).await.unwrap(), HoldOutcome::Refused(Refusal::InsufficientCredits));
}

/// A first `failed` refunds the spend once, however many observers report it.
pub async fn failed_generations_are_refunded_once(s: &dyn Store) {
    set_balance(s, "10.00").await;
    let h = held(s, &req("a", "0.12", None)).await;
    s.settle(&h, usd("0.12"), &record("gen-f", "a", Family::builtin("sora"), NOV)).await.unwrap();
    assert_eq!(s.unfinished_generations(10).await.unwrap().len(), 1);
    assert!(s.update_status("gen-f", "processing", None).await.unwrap());
    assert_eq!(s.generation("gen-f").await.unwrap().unwrap().status, "processing");
    assert!(s.update_status("gen-f", "failed", None).await.unwrap());
    assert!(!s.update_status("gen-f", "failed", None).await.unwrap(), "counted once");
    assert!(!s.update_status("gen-f", "completed", None).await.unwrap());
    assert_eq!(s.spendable(&t("a"), M, Some(usd("1.00")), Usd::ZERO).await.unwrap(), Some(usd("1.00")));
    assert_eq!(s.generation("gen-f").await.unwrap().unwrap().status, "failed");
    assert!(s.unfinished_generations(10).await.unwrap().is_empty());
    assert!(!s.update_status("unknown-id", "failed", None).await.unwrap());
}

/// The daily roll-ups follow every settle, refund and reassignment, and add up to the month's
/// totals; the latest generations come newest first across families with their failures.
pub async fn daily_rollups_add_up_to_the_month(s: &dyn Store) {
    set_balance(s, "100.00").await;
    let (sora, veo) = (Family::builtin("sora"), Family::builtin("veo"));
    let day = NOV / DAY_MS;
    let settle = |id: &'static str, tenant: &'static str, family: Family, at: i64| async move {
        let h = held(s, &req(tenant, "0.12", None)).await;
        s.settle(&h, usd("0.12"), &record(id, tenant, family, at)).await.unwrap();
    };
    settle("d1", "a", sora, NOV + 1_000).await;
    settle("d2", "a", sora, NOV + 2_000).await;
    settle("d3", "a", veo, NOV + DAY_MS + 5).await;
    settle("d4", "b", sora, NOV + 3_000).await;
    // A duplicate settle of a recorded generation counts nothing.
    let h = held(s, &req("a", "0.12", None)).await;
    s.settle(&h, usd("0.12"), &record("d1", "a", sora, NOV + 1_000)).await.unwrap();
    let people = Failure { reason: Reason::People, message: "Image contains photorealistic people <script>".into() };
    assert!(s.update_status("d2", "failed", Some(&people)).await.unwrap());
    assert!(s.update_status("d3", "failed", None).await.unwrap());
    assert!(!s.update_status("d3", "failed", Some(&people)).await.unwrap());
    assert!(s.update_status("d4", "completed", None).await.unwrap());

    let a = s.daily("a", day - 1, day + 1).await.unwrap();
    let find = |v: &[DayTotals], d: i64, f: Family| {
        v.iter().find(|x| x.day == d && x.family == f.path()).cloned().unwrap_or_default()
    };
    let a0 = find(&a, day, sora);
    assert_eq!((a0.generations, a0.charged, a0.refunded, a0.failed), (2, usd("0.24"), usd("0.12"), [1, 0, 0]));
    let a1 = find(&a, day + 1, veo);
    assert_eq!((a1.generations, a1.spent(), a1.failed), (1, Usd::ZERO, [0, 0, 1]));
    assert!(s.daily("a", day + 2, day + 90).await.unwrap().is_empty(), "days outside the range are left out");

    let check = |tenant: &'static str| async move {
        let totals = s.month_totals(M).await.unwrap().get(tenant).cloned().unwrap_or_default();
        let days = s.daily(tenant, day - 40, day + 40).await.unwrap();
        let spent = days.iter().fold(Usd::ZERO, |acc, d| acc + d.spent());
        let refunded = days.iter().fold(Usd::ZERO, |acc, d| acc + d.refunded);
        assert_eq!(
            (spent, refunded),
            (totals.spent, totals.refunded),
            "{tenant}: roll-ups {days:?} vs month {totals:?}"
        );
    };
    check("a").await;
    check("b").await;

    // An operator moves a failed generation: its day, charge, refund and reason move with it.
    assert!(s.reassign("d2", "a", "b").await.unwrap().is_some());
    check("a").await;
    check("b").await;
    let b0 = find(&s.daily("b", day, day).await.unwrap(), day, sora);
    assert_eq!((b0.generations, b0.refunded, b0.failed), (2, usd("0.12"), [1, 0, 0]));

    let latest = s.latest_generations("a", &[sora, veo], 10).await.unwrap();
    let ids: Vec<&str> = latest.iter().map(|(r, _)| r.id.as_str()).collect();
    assert_eq!(ids, ["d3", "d1"]);
    assert_eq!(latest[0].1.as_ref().map(|f| f.reason), Some(Reason::Other));
    assert!(latest[1].1.is_none());
    let latest_b = s.latest_generations("b", &[sora, veo], 1).await.unwrap();
    assert_eq!(latest_b.len(), 1);
    assert_eq!(latest_b[0].0.id, "d4");
    let moved = s.latest_generations("b", &[sora], 5).await.unwrap();
    let d2 = moved.iter().find(|(r, _)| r.id == "d2").expect("the moved generation is b's");
    assert_eq!(d2.1, Some(people));
}

/// Unknown outcomes count as spent (budget and account) through refetches until resolved.
pub async fn unknown_outcomes_count_until_resolved(s: &dyn Store) {
    set_balance(s, "1.00").await;
    let r2 = req_id("u2", "b", "0.50", Some("0.50"), 60_000, Some("key-2"));
    assert_eq!(s.idem_claim("b", "key-2", &[8; 32], "u2", 60_000).await.unwrap(), IdemClaim::Fresh);
    held(s, &r2).await;
    s.mark_unknown("u2").await.unwrap();
    set_balance(s, "1.00").await;
    let totals = s.hold_totals().await.unwrap();
    assert_eq!((totals.unknown, totals.unknown_amount), (1, usd("0.50")));
    assert_eq!(s.hold(&req("b", "0.10", Some("0.50"))).await.unwrap(), HoldOutcome::Refused(Refusal::BudgetExceeded));
    assert_eq!(s.spendable(&t("c"), M, None, Usd::ZERO).await.unwrap(), Some(usd("0.50")));
    // Repeats of its key wait for the resolution.
    assert_eq!(s.idem_claim("b", "key-2", &[8; 32], "other", 0).await.unwrap(), IdemClaim::Unresolved);
    let unknown = s.unknown_outcomes().await.unwrap();
    assert_eq!(unknown.len(), 1);
    assert_eq!(
        (unknown[0].hold.as_str(), &*unknown[0].tenant, unknown[0].intent.idem_key.as_deref()),
        ("u2", "b", Some("key-2"))
    );
    assert_eq!(unknown[0].intent.fingerprint, "digest");
    // Found on the platform: owned, charged, and the key replays a 201.
    let rec = GenerationRecord { price: usd("0.50"), ..record("found-1", "b", Family::builtin("sora"), NOV) };
    let reply = Bytes::from_static(br#"{"generation_id":"found-1"}"#);
    assert!(s.resolve_unknown("u2", &Resolution::Created { record: rec.clone(), reply: reply.clone() }).await.unwrap());
    assert!(!s.resolve_unknown("u2", &Resolution::NotCharged).await.unwrap(), "resolved once");
    assert_eq!(s.generation("found-1").await.unwrap().map(|r| r.tenant), Some(t("b")));
    assert_eq!(s.spend_by_tenant(M).await.unwrap(), vec![(t("b"), usd("0.50"))]);
    assert_eq!(
        s.idem_claim("b", "key-2", &[8; 32], "other", 0).await.unwrap(),
        IdemClaim::Replay(StoredResponse { status: 201, body: reply })
    );
    // A late 201 for the same hold does not count it twice.
    s.settle("u2", usd("0.50"), &rec).await.unwrap();
    assert_eq!(s.spend_by_tenant(M).await.unwrap(), vec![(t("b"), usd("0.50"))]);
    assert_eq!(s.hold_totals().await.unwrap().unknown, 0);
}

/// Not found on the platform: released, and its key runs afresh.
pub async fn unknown_outcomes_not_found_are_released(s: &dyn Store) {
    set_balance(s, "1.00").await;
    assert_eq!(s.idem_claim("a", "k", &[1; 32], "h", 60_000).await.unwrap(), IdemClaim::Fresh);
    held(s, &req_id("h", "a", "0.40", None, 60_000, Some("k"))).await;
    s.mark_unknown("h").await.unwrap();
    assert!(s.resolve_unknown("h", &Resolution::NotCharged).await.unwrap());
    assert_eq!(s.hold_totals().await.unwrap(), HoldTotals::default());
    assert_eq!(s.idem_claim("a", "k", &[1; 32], "h2", 60_000).await.unwrap(), IdemClaim::Fresh);
}

/// A hold whose lease ran out becomes an unknown outcome.
pub async fn expired_leases_become_unknown(s: &dyn Store) {
    set_balance(s, "1.00").await;
    held(s, &req_id("short", "a", "0.30", None, 1, None)).await;
    held(s, &req_id("long", "a", "0.30", None, 60_000, None)).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(s.expire_holds().await.unwrap(), 1);
    let totals = s.hold_totals().await.unwrap();
    assert_eq!((totals.open, totals.unknown), (1, 1));
    assert_eq!(s.unknown_outcomes().await.unwrap()[0].hold, "short");
    // A 201 that arrives after the lease still settles it.
    s.settle("short", usd("0.30"), &record("late", "a", Family::builtin("sora"), NOV)).await.unwrap();
    assert_eq!(s.hold_totals().await.unwrap().unknown, 0);
}

/// Lists are per tenant and family, newest first, paginated.
pub async fn lists_are_per_tenant(s: &dyn Store) {
    set_balance(s, "100").await;
    for (i, (tenant, family)) in [
        ("a", Family::builtin("sora")),
        ("b", Family::builtin("sora")),
        ("a", Family::builtin("sora")),
        ("a", Family::builtin("veo")),
        ("a", Family::builtin("sora")),
    ]
    .into_iter()
    .enumerate()
    {
        let h = held(s, &req(tenant, "0.12", None)).await;
        s.settle(&h, usd("0.12"), &record(&format!("g{i}"), tenant, family, NOV + i as i64)).await.unwrap();
    }
    let ids = |v: Vec<GenerationRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list_generations("a", Family::builtin("sora"), 10, 0).await.unwrap()), ["g4", "g2", "g0"]);
    assert_eq!(ids(s.list_generations("a", Family::builtin("sora"), 1, 1).await.unwrap()), ["g2"]);
    assert_eq!(ids(s.list_generations("b", Family::builtin("sora"), 10, 0).await.unwrap()), ["g1"]);
    assert_eq!(ids(s.list_generations("a", Family::builtin("veo"), 10, 0).await.unwrap()), ["g3"]);
    assert!(s.list_generations("c", Family::builtin("sora"), 10, 0).await.unwrap().is_empty());
}

/// Idempotency keys replay, conflict, mismatch, abort, and free a dead claim.
pub async fn idempotency_keys(s: &dyn Store) {
    let d1 = [1u8; 32];
    let d2 = [2u8; 32];
    assert_eq!(s.idem_claim("a", "k", &d1, "h1", 60_000).await.unwrap(), IdemClaim::Fresh);
    assert_eq!(s.idem_claim("a", "k", &d1, "h2", 60_000).await.unwrap(), IdemClaim::InProgress);
    assert_eq!(s.idem_claim("a", "k", &d2, "h2", 60_000).await.unwrap(), IdemClaim::Mismatch);
    // Keys are per tenant.
    assert_eq!(s.idem_claim("b", "k", &d2, "h3", 60_000).await.unwrap(), IdemClaim::Fresh);
    let rsp = StoredResponse { status: 201, body: Bytes::from_static(b"{\"generation_id\":\"x\"}") };
    s.idem_finish("a", "k", &d1, &rsp).await.unwrap();
    assert_eq!(s.idem_claim("a", "k", &d1, "h4", 60_000).await.unwrap(), IdemClaim::Replay(rsp));
    assert_eq!(s.idem_claim("a", "k", &d2, "h4", 60_000).await.unwrap(), IdemClaim::Mismatch);
    s.idem_abort("b", "k").await.unwrap();
    assert_eq!(s.idem_claim("b", "k", &d1, "h5", 60_000).await.unwrap(), IdemClaim::Fresh);
    // A claim whose request died before taking its hold is taken over once stale.
    assert_eq!(s.idem_claim("c", "k", &d1, "dead", 60_000).await.unwrap(), IdemClaim::Fresh);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(s.idem_claim("c", "k", &d1, "next", 1).await.unwrap(), IdemClaim::Fresh);
}

/// Fifty concurrent holds at a balance that pays for seven: exactly seven granted.
pub async fn concurrent_holds_never_overspend(s: Arc<dyn Store>) {
    set_balance(&*s, "0.84").await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { s.hold(&req(&format!("t{}", i % 3), "0.12", None)).await.unwrap() }));
    }
    let mut granted = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), HoldOutcome::Held) {
            granted += 1;
        }
    }
    assert_eq!(granted, 7);
}
