use super::*;
use crate::policy::ledger::HoldTotals;
use crate::store::contract;

macro_rules! both_backends {
    ($($name:ident),*) => {$(
        mod $name {
            use super::*;
            #[tokio::test]
            async fn memory() {
                contract::$name(&EmbeddedStore::memory()).await;
            }
            #[tokio::test]
            async fn sqlite() {
                let dir = tempdir();
                contract::$name(&EmbeddedStore::sqlite(&dir.join("t.db")).await.unwrap()).await;
            }
        }
    )*};
}

both_backends!(
    holds_follow_the_balance,
    a_late_hold_after_its_release_is_refused,
    settle_records_and_budgets_apply,
    balance_snapshots_only_move_forward,
    failed_generations_are_refunded_once,
    daily_rollups_add_up_to_the_month,
    unknown_outcomes_count_until_resolved,
    unknown_outcomes_not_found_are_released,
    expired_leases_become_unknown,
    lists_are_per_tenant,
    idempotency_keys
);

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-store-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn concurrent_holds_never_overspend() {
    contract::concurrent_holds_never_overspend(Arc::new(EmbeddedStore::memory())).await;
}

fn hold_req(id: &str, idem: Option<&str>) -> HoldRequest {
    HoldRequest {
        id: id.into(),
        tenant: Arc::from("a"),
        price: Usd::from_micros(120_000),
        budget: None,
        reserve: Usd::ZERO,
        max_in_flight: None,
        lease_ms: 60_000,
        intent: Intent {
            family: "veo".into(),
            fingerprint: "d".into(),
            created_ms: 0,
            idem_key: idem.map(str::to_string),
            month: "2026-11".into(),
        },
    }
}

#[tokio::test]
async fn sqlite_records_survive_reopen_with_their_spend() {
    let path = tempdir().join("nested/dir/t.db");
    {
        let s = EmbeddedStore::sqlite(&path).await.unwrap();
        let at = s.begin_balance_fetch().await.unwrap();
        s.apply_balance(Usd::parse("1").unwrap(), at, 1).await.unwrap();
        for (i, status) in ["completed", "failed"].iter().enumerate() {
            let req = hold_req(&format!("h{i}"), None);
            assert_eq!(s.hold(&req).await.unwrap(), HoldOutcome::Held);
            let rec = GenerationRecord {
                id: format!("g{i}"),
                tenant: Arc::from("a"),
                family: Family::builtin("veo"),
                price: Usd::from_micros(120_000),
                created_ms: 1_794_268_800_000,
                status: "pending".into(),
            };
            s.settle(&req.id, rec.price, &rec).await.unwrap();
            s.update_status(&rec.id, status, None).await.unwrap();
        }
        s.idem_claim("a", "k", &[7; 32], "hk", 60_000).await.unwrap();
        s.idem_finish("a", "k", &[7; 32], &StoredResponse { status: 201, body: Bytes::from_static(b"{}") })
            .await
            .unwrap();
    }
    let s = EmbeddedStore::sqlite(&path).await.unwrap();
    let g = s.generation("g0").await.unwrap().unwrap();
    assert_eq!((&*g.tenant, g.family, g.status.as_str()), ("a", Family::builtin("veo"), "completed"));
    // Only the completed one counts: the failed one was refunded.
    assert_eq!(s.spend_by_tenant("2026-11").await.unwrap(), vec![(Arc::from("a"), Usd::from_micros(120_000))]);
    assert!(matches!(s.idem_claim("a", "k", &[7; 32], "x", 60_000).await.unwrap(), IdemClaim::Replay(_)));
    assert_eq!(s.hold_totals().await.unwrap(), HoldTotals::default());
    assert_eq!(s.backend(), "sqlite");
    s.ping().await.unwrap();
}

#[tokio::test]
async fn sqlite_holds_in_flight_at_a_crash_come_back_as_unknown_outcomes() {
    let path = tempdir().join("t.db");
    {
        let s = EmbeddedStore::sqlite(&path).await.unwrap();
        let at = s.begin_balance_fetch().await.unwrap();
        s.apply_balance(Usd::parse("1").unwrap(), at, 1).await.unwrap();
        assert_eq!(s.idem_claim("a", "k", &[7; 32], "inflight", 60_000).await.unwrap(), IdemClaim::Fresh);
        assert_eq!(s.hold(&hold_req("inflight", Some("k"))).await.unwrap(), HoldOutcome::Held);
        // The process dies here (no settle, no release).
    }
    let s = EmbeddedStore::sqlite(&path).await.unwrap();
    let unknown = s.unknown_outcomes().await.unwrap();
    assert_eq!(unknown.len(), 1);
    assert_eq!((unknown[0].hold.as_str(), unknown[0].intent.idem_key.as_deref()), ("inflight", Some("k")));
    // Counted against the tenant until resolved; its key is not forwarded again.
    assert_eq!(
        s.spendable(&Arc::from("a"), "2026-11", Some(Usd::from_micros(120_000)), Usd::ZERO).await.unwrap(),
        None
    );
    assert_eq!(s.idem_claim("a", "k", &[7; 32], "retry", 0).await.unwrap(), IdemClaim::Unresolved);
}

#[tokio::test]
async fn sqlite_open_fails_clearly_on_a_bad_path() {
    let file = tempdir().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = EmbeddedStore::sqlite(&file.join("sub/t.db")).await.err().unwrap();
    assert!(err.0.contains("cannot create"), "{err}");
}

/// A ledger written before the daily roll-ups existed gets them, filled from its records, and
/// keeps them from then on.
#[tokio::test]
async fn an_older_ledger_gets_its_daily_rollups() {
    let path = tempdir().join("old.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE generations (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, family TEXT NOT NULL, price_micros INTEGER NOT NULL,
                created_ms INTEGER NOT NULL, month TEXT NOT NULL, status TEXT NOT NULL);
             INSERT INTO generations VALUES ('o1', 'a', 'sora', 120000, 1794268800000, '2026-11', 'completed');
             INSERT INTO generations VALUES ('o2', 'a', 'sora', 120000, 1794268801000, '2026-11', 'failed');",
        )
        .unwrap();
    }
    let s = EmbeddedStore::sqlite(&path).await.unwrap();
    let day = 1_794_268_800_000 / crate::store::DAY_MS;
    let d = s.daily("a", day, day).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].generations, d[0].spent(), d[0].refunded, d[0].failed),
        (2, Usd::from_micros(120_000), Usd::from_micros(120_000), [0, 0, 1])
    );
    assert_eq!(s.month_totals("2026-11").await.unwrap()["a"].spent, d[0].spent());
    drop(s);
    // Opened again: not filled twice.
    let s = EmbeddedStore::sqlite(&path).await.unwrap();
    assert_eq!(s.daily("a", day, day).await.unwrap()[0].generations, 2);
}
