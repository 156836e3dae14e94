use super::*;
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
    settle_records_and_budgets_apply,
    failed_generations_are_refunded_once,
    unknown_holds_wait_for_a_refetch,
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

#[tokio::test]
async fn sqlite_records_survive_reopen_with_their_spend() {
    let path = tempdir().join("nested/dir/t.db");
    {
        let s = EmbeddedStore::sqlite(&path).await.unwrap();
        s.apply_balance(Usd::parse("1").unwrap(), 0, 1).await.unwrap();
        for (i, status) in ["completed", "failed"].iter().enumerate() {
            let req = HoldRequest { tenant: Arc::from("a"), month: "2026-11".into(), price: Usd::from_micros(120_000), budget: None, reserve: Usd::ZERO };
            let HoldOutcome::Held(h) = s.hold(&req).await.unwrap() else { panic!() };
            let rec = GenerationRecord {
                id: format!("g{i}"),
                tenant: Arc::from("a"),
                family: Family::Veo,
                price: Usd::from_micros(120_000),
                created_ms: 1_794_268_800_000,
                status: "pending".into(),
            };
            s.settle(h, "2026-11", rec.price, &rec).await.unwrap();
            s.update_status(&rec.id, status).await.unwrap();
        }
        s.idem_claim("a", "k", &[7; 32]).await.unwrap();
        s.idem_finish("a", "k", &[7; 32], &StoredResponse { status: 201, body: Bytes::from_static(b"{}") }).await.unwrap();
    }
    let s = EmbeddedStore::sqlite(&path).await.unwrap();
    let g = s.generation("g0").await.unwrap().unwrap();
    assert_eq!((&*g.tenant, g.family, g.status.as_str()), ("a", Family::Veo, "completed"));
    // Only the completed one counts: the failed one was refunded.
    assert_eq!(s.spend_by_tenant("2026-11").await.unwrap(), vec![(Arc::from("a"), Usd::from_micros(120_000))]);
    assert!(matches!(s.idem_claim("a", "k", &[7; 32]).await.unwrap(), IdemClaim::Replay(_)));
    assert_eq!(s.backend(), "sqlite");
    s.ping().await.unwrap();
}

#[tokio::test]
async fn sqlite_open_fails_clearly_on_a_bad_path() {
    let file = tempdir().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = EmbeddedStore::sqlite(&file.join("sub/t.db")).await.err().unwrap();
    assert!(err.0.contains("cannot create"), "{err}");
}
