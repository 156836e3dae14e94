//! Randomized chaos over the paid path (SPEC §7 invariants), on memory, SQLite and Redis: a few
//! hundred paid requests from three tenants while the platform answers late past the timeout,
//! resets before or during its answer, fails with 500, fails generations later (refunds), and
//! clients hang up or retry with their Idempotency-Key. Once quiet:
//! - no open or unknown holds;
//! - Σ tenant spend equals what the simulated platform charged (net of its refunds);
//! - no Idempotency-Key bought two generations;
//! - every generation the platform created is owned by the tenant that asked for it, and
//!   visible to it alone.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use rand::{Rng, SeedableRng};
use support::*;

const REQUESTS: usize = 240;
const CONCURRENCY: usize = 8;

fn keyed(url: &str, key: &str, tenant_key: &str, body: String) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut r = request(Method::POST, url, Some(tenant_key), body);
    r.headers_mut().insert("idempotency-key", key.parse().unwrap());
    r
}

async fn chaos(backend: Backend, seed: u64) {
    let platform = Arc::new(Platform::start().await);
    let tenants = format!(
        "{}{}{}",
        tenant("a", KEY_A, 1000, 1000, 1000, None),
        tenant("b", KEY_B, 1000, 1000, 1000, None),
        tenant("c", "tenant-c-key", 1000, 1000, 1000, None)
    );
    let text = fast_reconcile(&config_text(platform.addr, "", &tenants), 2, 300)
        .replace("cache_ttl_ms = 60000", "cache_ttl_ms = 500");
    let (text, _redis) = with_backend(&text, backend);
    let gw = Arc::new(TestGateway::start(&text).await);
    let keys = [("a", KEY_A), ("b", KEY_B), ("c", "tenant-c-key")];
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        let (platform, gw, next) = (platform.clone(), gw.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed + w as u64);
            let c = client();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= REQUESTS {
                    return;
                }
                let (tenant, key) = keys[rng.gen_range(0..keys.len())];
                let roll = rng.gen_range(0..100);
                let fail = if roll >= 90 { " [fail]" } else { "" };
                let body = format!(r#"{{"prompt": "chaos {tenant} {i}{fail}"}}"#);
                let idem = format!("chaos-{i}");
                let url = gw.url("/v1/sora/generate");
                let fault = |kind: FaultKind, ms: Option<u64>, status: Option<u16>| {
                    let mut f = platform.fault(kind);
                    f.latency_ms = ms;
                    f.status = status;
                    f.path_prefix = Some("/v1/sora/generate".into());
                    platform.inject(f);
                };
                match roll {
                    0..=9 => fault(FaultKind::LateAnswer, Some(2400), None), // charged, timed out
                    10..=19 => fault(FaultKind::Reset, None, None),          // not charged, unknown
                    20..=29 => fault(FaultKind::ResetMidBody, None, None),   // charged, unknown
                    30..=39 => fault(FaultKind::Status, None, Some(500)),    // refused
                    40..=49 => {
                        // The client hangs up while the platform charges.
                        fault(FaultKind::LateAnswer, Some(300), None);
                        hang_up_after(
                            gw.addr,
                            "/v1/sora/generate",
                            key,
                            &body,
                            &format!("idempotency-key: {idem}\r\n"),
                            Duration::from_millis(80),
                        )
                        .await;
                        continue;
                    }
                    _ => {}
                }
                let r = send(&c, keyed(&url, &idem, key, body.clone())).await;
                // A client that did not get a 201 retries once with the same key.
                if r.status != 201 && rng.gen_bool(0.7) {
                    let _ = send(&c, keyed(&url, &idem, key, body)).await;
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let quiet = Instant::now();

    // Quiescence: the reconciler converges the ledger to the platform.
    let store = gw.gateway.store().clone();
    let month = tollgate::store::month_of(tollgate::store::now_ms());
    let (spend, charged) = loop {
        let totals = store.hold_totals().await.unwrap();
        let spend: tollgate::policy::money::Usd =
            store.spend_by_tenant(&month).await.unwrap().into_iter().map(|(_, s)| s).sum();
        let charged = platform.mock.charged_total();
        if totals.open == 0 && totals.unknown == 0 && spend == charged {
            break (spend, charged);
        }
        assert!(
            quiet.elapsed() < Duration::from_secs(45),
            "{backend:?}: no convergence: {totals:?}, spend {spend}, platform charged {charged}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let converged = quiet.elapsed();

    // Ownership: every platform generation is recorded for the tenant named in its prompt.
    let generations = platform.mock.generations();
    let mut per_prompt: HashMap<String, usize> = HashMap::new();
    let c = client();
    for (n, (id, _, prompt)) in generations.iter().enumerate() {
        *per_prompt.entry(prompt.clone()).or_default() += 1;
        let owner = prompt.split(' ').nth(1).unwrap();
        let rec = store
            .generation(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{backend:?}: generation {id} ({prompt}) is not in the ledger"));
        assert_eq!(&*rec.tenant, owner, "{backend:?}: {id} owned by the wrong tenant");
        if n % 10 == 0 {
            let (own, other) = match owner {
                "a" => (KEY_A, KEY_B),
                "b" => (KEY_B, KEY_A),
                _ => ("tenant-c-key", KEY_A),
            };
            assert_eq!(get(&c, &gw.url(&format!("/v1/sora/generations/{id}/")), Some(own)).await.status, 200);
            assert_eq!(get(&c, &gw.url(&format!("/v1/sora/generations/{id}/")), Some(other)).await.status, 404);
        }
    }
    // The daily roll-ups the dashboard charts add up to the usage report's month, per tenant.
    let totals = store.month_totals(&month).await.unwrap();
    let today = tollgate::store::now_ms() as i64 / tollgate::store::DAY_MS;
    for (tenant, t) in &totals {
        let days = store.daily(tenant, today - 40, today).await.unwrap();
        let in_month = |d: &&tollgate::store::DayTotals| {
            tollgate::store::month_of((d.day * tollgate::store::DAY_MS) as u64) == month
        };
        let spent = days.iter().filter(in_month).fold(tollgate::policy::money::Usd::ZERO, |a, d| a + d.spent());
        let refunded = days.iter().filter(in_month).fold(tollgate::policy::money::Usd::ZERO, |a, d| a + d.refunded);
        assert_eq!(
            (spent, refunded),
            (t.spent, t.refunded),
            "{backend:?}: {tenant}'s daily roll-ups disagree with its month"
        );
    }
    // Prompts are unique per Idempotency-Key: no key bought two generations.
    assert!(per_prompt.values().all(|n| *n == 1), "{backend:?}: a key bought two generations: {per_prompt:?}");
    let unknowns = gw
        .log_lines()
        .iter()
        .filter(|l| l["outcome"] == "upstream_timeout" || l["outcome"] == "upstream_unavailable")
        .count();
    let closed = gw.log_lines().iter().filter(|l| l["outcome"] == "client_closed").count();
    eprintln!(
        "chaos {backend:?}: {REQUESTS} paid requests, {} generations created, platform charged {charged}, Σ spend {spend}, \
         {unknowns} timeouts/resets answered 503, {closed} client_closed, open holds 0, ledger matched the platform {converged:?} after quiescence",
        generations.len()
    );
    assert_eq!(spend, charged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_memory() {
    chaos(Backend::Memory, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_sqlite() {
    chaos(Backend::Sqlite, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_redis() {
    chaos(Backend::Redis, 3).await;
}
