use super::*;
use crate::dev::testkit::RedisServer;
use crate::store::contract;

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.url, Duration::from_millis(500), &format!("t{}", uuid::Uuid::new_v4().simple()))
        .await
        .unwrap()
}

macro_rules! contract_tests {
    ($($name:ident),*) => {$(
        #[tokio::test]
        async fn $name() {
            let server = RedisServer::start();
            contract::$name(&store(&server).await).await;
        }
    )*};
}

contract_tests!(
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

#[tokio::test]
async fn concurrent_holds_never_overspend() {
    let server = RedisServer::start();
    contract::concurrent_holds_never_overspend(Arc::new(store(&server).await)).await;
}

#[tokio::test]
async fn two_connections_share_one_ledger() {
    let server = RedisServer::start();
    let a = RedisStore::connect(&server.url, Duration::from_millis(500), "shared").await.unwrap();
    let b = RedisStore::connect(&server.url, Duration::from_millis(500), "shared").await.unwrap();
    let at = a.begin_balance_fetch().await.unwrap();
    a.apply_balance(Usd::parse("0.24").unwrap(), at, 1).await.unwrap();
    let req = |id: &str| HoldRequest {
        id: id.into(),
        tenant: Arc::from("t"),
        price: Usd::parse("0.12").unwrap(),
        budget: None,
        reserve: Usd::ZERO,
        max_in_flight: None,
        lease_ms: 60_000,
        intent: Intent { month: "2026-11".into(), ..Default::default() },
    };
    assert_eq!(a.hold(&req("1")).await.unwrap(), HoldOutcome::Held);
    assert_eq!(b.hold(&req("2")).await.unwrap(), HoldOutcome::Held);
    assert_eq!(a.hold(&req("3")).await.unwrap(), HoldOutcome::Refused(Refusal::InsufficientCredits));
    // The reconciler's lease is one owner's at a time.
    assert!(a.reconciler_lease("a", 60_000).await.unwrap());
    assert!(!b.reconciler_lease("b", 60_000).await.unwrap());
    assert!(a.reconciler_lease("a", 60_000).await.unwrap());
}

#[tokio::test]
async fn gcra_allows_burst_then_refuses() {
    let server = RedisServer::start();
    let s = store(&server).await;
    let params = GcraParams { emission_ns: 1_000_000_000, burst: 3 };
    for left in (0..3).rev() {
        match s.rate_limit("t", "req", params).await.unwrap() {
            SharedLimit::Allowed(q) => assert_eq!((q.limit, q.remaining), (3, left)),
            other => panic!("{other:?}"),
        }
    }
    match s.rate_limit("t", "req", params).await.unwrap() {
        SharedLimit::Refused { retry_after_secs, quotas } => {
            assert_eq!(retry_after_secs, 1);
            assert_eq!(quotas.remaining, 0);
        }
        other => panic!("{other:?}"),
    }
    // Another tenant is untouched.
    assert!(matches!(s.rate_limit("u", "req", params).await.unwrap(), SharedLimit::Allowed(_)));
}

#[tokio::test]
async fn a_dead_redis_fails_fast_not_hangs() {
    let server = RedisServer::start();
    let s = store(&server).await;
    s.ping().await.unwrap();
    drop(server);
    let started = std::time::Instant::now();
    assert!(s.ping().await.is_err());
    assert!(s.balance().await.is_err());
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn connect_to_nothing_is_a_clear_error() {
    let e = RedisStore::connect("redis://127.0.0.1:1", Duration::from_millis(200), "x").await.err().unwrap();
    assert!(e.0.starts_with("redis:"), "{e}");
}

/// An API tenant with no keys, for directory writes.
fn api_tenant(id: &str) -> crate::policy::keys::ApiTenant {
    crate::policy::keys::ApiTenant {
        id: id.into(),
        requests_per_second: 1,
        burst: 1,
        generations_per_minute: 1,
        monthly_budget_micros: None,
        max_in_flight: None,
        disabled: false,
        created_ms: 0,
        keys: vec![],
        deleted_ms: None,
        overlay: false,
    }
}

#[tokio::test]
async fn a_directory_write_wakes_the_other_replicas_follower() {
    let server = RedisServer::start();
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let a = RedisStore::connect(&server.url, Duration::from_millis(500), &prefix).await.unwrap();
    let b = RedisStore::connect(&server.url, Duration::from_millis(500), &prefix).await.unwrap();
    let other = RedisStore::connect(&server.url, Duration::from_millis(500), "elsewhere").await.unwrap();
    let (heard, unrelated) = (b.directory_changes().unwrap(), other.directory_changes().unwrap());
    // Subscribing wakes each once (for anything missed before); after that, only writes do.
    tokio::time::timeout(Duration::from_secs(2), heard.notified()).await.expect("b subscribed");
    tokio::time::timeout(Duration::from_secs(2), unrelated.notified()).await.expect("other subscribed");
    let doc = api_tenant("x");
    assert!(a.directory_put("x", 0, Some(&doc)).await.unwrap());
    tokio::time::timeout(Duration::from_secs(1), heard.notified())
        .await
        .expect("b hears of a's write at once, not at its next poll");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), unrelated.notified()).await.is_err(),
        "another prefix's store hears nothing"
    );
    // A refused write (stale revision) announces nothing.
    assert!(!a.directory_put("x", 0, Some(&doc)).await.unwrap());
    assert!(tokio::time::timeout(Duration::from_millis(300), heard.notified()).await.is_err());
}

/// After a `kill -9` of the primary, each store subscribes again on the new one: a write made
/// there still wakes the other store's follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_subscription_follows_a_new_primary() {
    use crate::dev::testkit::{Sentinels, MASTER_NAME};
    let mut sentinels = tokio::task::spawn_blocking(Sentinels::start).await.unwrap();
    let target = RedisTarget::Sentinel {
        sentinels: sentinels.addrs(),
        master_name: MASTER_NAME.to_string(),
        db: 0,
        password: None,
    };
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let a = RedisStore::open(&target, Duration::from_millis(300), &prefix, 0).await.unwrap();
    let b = RedisStore::open(&target, Duration::from_millis(300), &prefix, 0).await.unwrap();
    let heard = b.directory_changes().unwrap();
    tokio::time::timeout(Duration::from_secs(2), heard.notified()).await.expect("b subscribed");
    let doc = api_tenant("x");
    let sentinels = tokio::task::spawn_blocking(move || {
        sentinels.kill_primary();
        sentinels
    })
    .await
    .unwrap();
    // Written as soon as a new primary takes it (the first write may come before or after b
    // subscribes there; either wakes b).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut rev = 0;
    loop {
        match a.directory_put("x", rev, Some(&doc)).await {
            Ok(true) => break,
            // An earlier try was written but its answer lost (a timeout): the revision moved.
            Ok(false) => rev += 1,
            Err(_) => {
                assert!(tokio::time::Instant::now() < deadline, "no new primary within 30 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Drain the wake-ups of the failover itself, then one more write must be heard.
    while tokio::time::timeout(Duration::from_millis(700), heard.notified()).await.is_ok() {}
    assert!(a.directory_put("x", rev + 1, Some(&doc)).await.unwrap());
    tokio::time::timeout(Duration::from_secs(1), heard.notified()).await.expect("b hears writes on the new primary");
    drop(sentinels);
}
