//! Prometheus metrics (SPEC §6), served as text on the admin listener.
//!
//! Request counters and histograms are updated on the request path; gauges that describe
//! stored state (balance, holds, spend) are read from the store when /metrics is scraped.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::observe::access_log::AccessRecord;
use crate::policy::money::Usd;
use crate::store::{month_of, now_ms, Store};
use crate::upstream::circuit::State;

/// A label value shared without copying (tenant ids).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tenant: Label,
    route: &'static str,
    status: u16,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    tenant: Label,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    family: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    family: Label,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// All series.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    upstream_latency: Family<RouteLabels, Histogram>,
    rate_limited: Family<LimitLabels, Counter>,
    upstream_errors: Family<KindLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    balance: Gauge<f64, AtomicU64>,
    holds_open: Gauge,
    holds_open_usd: Gauge<f64, AtomicU64>,
    holds_unknown: Gauge,
    held_usd: Gauge<f64, AtomicU64>,
    spend: Family<TenantLabels, Gauge<f64, AtomicU64>>,
    circuit_open: Gauge,
    store_up: Gauge,
    holds_unknown_usd: Gauge<f64, AtomicU64>,
    unknown_outcomes: Family<CauseLabels, Counter>,
    resolutions: Family<ResultLabels, Counter>,
    refunds: Family<TenantLabels, Counter>,
    generation_failures: Family<FailureLabels, Counter>,
    expired_leases: Counter,
    untrusted_prices: Counter,
    store_retries: Family<ResultLabels, Counter>,
    webhook_deliveries: Family<DeliveryLabels, Counter>,
    webhook_rejected: Family<CauseLabels, Counter>,
    task_panics: Family<TaskLabels, Counter>,
    outbox_pending: Gauge,
    outbox_oldest: Gauge<f64, AtomicU64>,
    outbox_dead: Gauge,
    budget: Family<TenantLabels, Gauge<f64, AtomicU64>>,
    unattributed: Family<FamilyLabels, Counter>,
    token_rejected: Gauge,
    charged_above_hold: Family<FamilyLabels, Counter>,
    alerts: Family<KindLabels, Counter>,
    budgets_over_balance: Gauge,
    /// Handles of the per-request series by their labels, hashed with foldhash: the families'
    /// own maps hash every label string with SipHash, three times per request. Measured: one of
    /// the changes that took a forwarded poll from 89,255 to 69,100 instructions (callgrind,
    /// `benches/instructions.sh`); its own share was not measured apart from the others.
    handles: std::sync::RwLock<std::collections::HashMap<RequestLabels, RequestHandles, foldhash::fast::RandomState>>,
}

/// The series one kind of finished request updates.
#[derive(Clone)]
struct RequestHandles {
    count: Counter,
    latency: Histogram,
    /// Created once a request of this kind called the platform.
    upstream_latency: Option<Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    tenant: Label,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: &'static str,
}

// === impl Metrics ===

impl Metrics {
    /// Registers every series.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests by tenant, route, status and outcome", requests.clone());
        let hist = || Histogram::new(exponential_buckets(0.0005, 2.0, 18));
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(hist as fn() -> Histogram);
        registry.register("request_duration_seconds", "Total request latency", latency.clone());
        let upstream_latency = Family::<RouteLabels, Histogram>::new_with_constructor(hist as fn() -> Histogram);
        registry.register("upstream_duration_seconds", "Latency of platform calls", upstream_latency.clone());
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register("rate_limited", "Requests refused by a tenant rate limit", rate_limited.clone());
        let upstream_errors = Family::<KindLabels, Counter>::default();
        registry.register("upstream_errors", "Platform failures by kind", upstream_errors.clone());
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register("config_reloads", "Config reloads by result", reloads.clone());
        let balance = Gauge::<f64, AtomicU64>::default();
        // NaN until a balance was read: 0 would say "empty account" when nothing is known.
        balance.set(f64::NAN);
        registry.register(
            "account_balance_usd",
            "Account balance last fetched from the platform (NaN until one was read)",
            balance.clone(),
        );
        let token_rejected = Gauge::default();
        registry.register(
            "upstream_token_rejected",
            "1 while the platform refuses the gateway's token (401/403): fix upstream.token_env, not the balance",
            token_rejected.clone(),
        );
        let holds_open = Gauge::default();
        registry.register("holds_open", "Paid requests in flight holding balance", holds_open.clone());
        let holds_open_usd = Gauge::<f64, AtomicU64>::default();
        registry.register("holds_open_usd", "USD held by paid requests in flight", holds_open_usd.clone());
        let holds_unknown = Gauge::default();
        registry.register(
            "holds_unknown",
            "Paid requests whose outcome is unknown, counted as spent until reconciled",
            holds_unknown.clone(),
        );
        let held_usd = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "held_usd",
            "USD counted against the cached balance (holds and recent charges)",
            held_usd.clone(),
        );
        let spend = Family::<TenantLabels, Gauge<f64, AtomicU64>>::default();
        registry.register("spend_usd", "Spend this month by tenant", spend.clone());
        let circuit_open = Gauge::default();
        registry.register("circuit_open", "1 while the upstream circuit breaker is open", circuit_open.clone());
        let store_up = Gauge::default();
        registry.register("store_up", "1 when the store answered the last scrape", store_up.clone());
        let holds_unknown_usd = Gauge::<f64, AtomicU64>::default();
        registry.register("holds_unknown_usd", "USD held by outcomes being reconciled", holds_unknown_usd.clone());
        let unknown_outcomes = Family::<CauseLabels, Counter>::default();
        registry.register(
            "unknown_outcomes",
            "Paid requests forwarded without a readable answer, by cause",
            unknown_outcomes.clone(),
        );
        let resolutions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconcile_resolutions",
            "Unknown outcomes resolved by the reconciler (found / not_charged)",
            resolutions.clone(),
        );
        let refunds = Family::<TenantLabels, Counter>::default();
        registry.register("refunds", "Failed generations refunded to a tenant's month", refunds.clone());
        let generation_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "generation_failures",
            "Generations the platform reported failed, by family and reason (people, policy, other: the catalog's [failure_reasons] rules)",
            generation_failures.clone(),
        );
        let expired_leases = Counter::default();
        registry.register(
            "expired_hold_leases",
            "Holds whose lease ran out (crash, grace expiry, slow store)",
            expired_leases.clone(),
        );
        let untrusted_prices = Counter::default();
        registry.register(
            "untrusted_prices",
            "Platform prices not trusted (negative or far above the quote)",
            untrusted_prices.clone(),
        );
        let store_retries = Family::<ResultLabels, Counter>::default();
        registry.register(
            "record_retries",
            "Retries writing a generation the platform accepted (ok / failed)",
            store_retries.clone(),
        );
        let webhook_deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by tenant and result (delivered / retry / dead_letter)",
            webhook_deliveries.clone(),
        );
        let webhook_rejected = Family::<CauseLabels, Counter>::default();
        registry.register(
            "webhook_rejected",
            "Platform webhook calls refused (unknown or forged token, bad body)",
            webhook_rejected.clone(),
        );
        let task_panics = Family::<TaskLabels, Counter>::default();
        registry.register(
            "task_panics",
            "Background tasks that panicked and were restarted, by task",
            task_panics.clone(),
        );
        let outbox_pending = Gauge::default();
        registry.register("webhook_outbox_pending", "Webhook deliveries waiting", outbox_pending.clone());
        let outbox_oldest = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "webhook_outbox_oldest_pending_seconds",
            "Age of the oldest waiting webhook delivery",
            outbox_oldest.clone(),
        );
        let outbox_dead = Gauge::default();
        registry.register(
            "webhook_dead_letters",
            "Webhook deliveries given up on (re-drive with POST /admin/webhooks/redeliver)",
            outbox_dead.clone(),
        );
        let budget = Family::<TenantLabels, Gauge<f64, AtomicU64>>::default();
        registry.register("budget_usd", "Monthly budget by tenant (alert on spend_usd / budget_usd)", budget.clone());
        let unattributed = Family::<FamilyLabels, Counter>::default();
        registry.register(
            "unattributed_generations",
            "Platform generations that could be more than one tenant's request, owned by nobody until an operator decides (GET /admin/unattributed)",
            unattributed.clone(),
        );
        let charged_above_hold = Family::<FamilyLabels, Counter>::default();
        registry.register(
            "charged_above_hold",
            "Generations the platform charged more than their hold (the price list is below a real price: budgets can be overrun)",
            charged_above_hold.clone(),
        );
        let alerts = Family::<KindLabels, Counter>::default();
        registry.register(
            "alerts",
            "Budget and balance alerts queued for delivery, by kind (budget.threshold / balance.low)",
            alerts.clone(),
        );
        let budgets_over_balance = Gauge::default();
        registry.register(
            "budgets_over_balance",
            "1 while the monthly budgets handed out add up to more than the account balance (the budgets cannot all be spent)",
            budgets_over_balance.clone(),
        );
        Metrics {
            alerts,
            budgets_over_balance,
            token_rejected,
            unattributed,
            charged_above_hold,
            handles: Default::default(),
            budget,
            webhook_deliveries,
            webhook_rejected,
            task_panics,
            outbox_pending,
            outbox_oldest,
            outbox_dead,
            holds_unknown_usd,
            unknown_outcomes,
            resolutions,
            refunds,
            generation_failures,
            expired_leases,
            untrusted_prices,
            store_retries,
            registry,
            requests,
            latency,
            upstream_latency,
            rate_limited,
            upstream_errors,
            reloads,
            balance,
            holds_open,
            holds_open_usd,
            holds_unknown,
            held_usd,
            spend,
            circuit_open,
            store_up,
        }
    }

    /// Counts one finished request, ended with `status` after `latency`.
    pub fn observe(&self, r: &AccessRecord, status: u16, latency: Duration) {
        static ANONYMOUS: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        let tenant = r.tenant.clone().unwrap_or_else(|| ANONYMOUS.get_or_init(|| Arc::from("-")).clone());
        let labels = RequestLabels { tenant: Label(tenant), route: r.route, status, outcome: r.outcome };
        let h = self.handles(labels, r.upstream_latency.is_some());
        h.count.inc();
        h.latency.observe(latency.as_secs_f64());
        if let (Some(u), Some(series)) = (r.upstream_latency, &h.upstream_latency) {
            series.observe(u.as_secs_f64());
        }
    }

    /// The series of one kind of request; the platform-latency one only once such a request
    /// called the platform (so routes that never do export none).
    fn handles(&self, labels: RequestLabels, upstream: bool) -> RequestHandles {
        let found = self
            .handles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&labels)
            .filter(|h| !upstream || h.upstream_latency.is_some())
            .cloned();
        if let Some(h) = found {
            return h;
        }
        // The families create the series (so they are exported); the handles share them.
        let route = RouteLabels { route: labels.route };
        let upstream_latency = upstream.then(|| self.upstream_latency.get_or_create(&route).clone());
        let mut all = self.handles.write().unwrap_or_else(|p| p.into_inner());
        let h = all.entry(labels).or_insert_with_key(|labels| RequestHandles {
            count: self.requests.get_or_create(labels).clone(),
            latency: self.latency.get_or_create(&route).clone(),
            upstream_latency: None,
        });
        if h.upstream_latency.is_none() {
            h.upstream_latency = upstream_latency;
        }
        h.clone()
    }

    /// Counts a rate-limit refusal.
    pub fn rate_limited(&self, tenant: &Arc<str>, kind: &'static str) {
        self.rate_limited.get_or_create(&LimitLabels { tenant: Label(tenant.clone()), kind }).inc();
    }

    /// Counts a platform failure.
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors.get_or_create(&KindLabels { kind }).inc();
    }

    /// Counts a paid request whose outcome is unknown.
    pub fn unknown_outcome(&self, cause: &'static str) {
        self.unknown_outcomes.get_or_create(&CauseLabels { cause }).inc();
    }

    /// Counts a reconciler resolution (`found` / `not_charged`).
    pub fn resolution(&self, result: &'static str) {
        self.resolutions.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counts a platform generation set aside as unattributed (it could be more than one
    /// tenant's request).
    pub fn unattributed(&self, family: &str) {
        self.unattributed.get_or_create(&FamilyLabels { family: Label(Arc::from(family)) }).inc();
    }

    /// Counts an alert queued.
    pub fn alert(&self, kind: &'static str) {
        self.alerts.get_or_create(&KindLabels { kind }).inc();
    }

    /// Whether the budgets add up to more than the balance.
    pub fn set_budgets_over_balance(&self, over: bool) {
        self.budgets_over_balance.set(i64::from(over));
    }

    /// Whether the platform refuses the gateway's token (read at each scrape).
    pub fn set_token_rejected(&self, rejected: bool) {
        self.token_rejected.set(i64::from(rejected));
    }

    /// Counts a generation charged above its hold.
    pub fn charged_above_hold(&self, family: &str) {
        self.charged_above_hold.get_or_create(&FamilyLabels { family: Label(Arc::from(family)) }).inc();
    }

    /// Counts a generation the platform failed, by the class of its message.
    pub fn generation_failed(&self, family: &str, reason: &'static str) {
        self.generation_failures.get_or_create(&FailureLabels { family: Label(Arc::from(family)), reason }).inc();
    }

    /// Counts a refund credited to a tenant.
    pub fn refund(&self, tenant: &Arc<str>) {
        self.refunds.get_or_create(&TenantLabels { tenant: Label(tenant.clone()) }).inc();
    }

    /// Counts holds whose lease ran out.
    pub fn expired_leases(&self, n: u64) {
        self.expired_leases.inc_by(n);
    }

    /// Counts a price the platform reported that was not trusted.
    pub fn untrusted_price(&self) {
        self.untrusted_prices.inc();
    }

    /// Counts a retry of writing a generation record.
    pub fn record_retry(&self, ok: bool) {
        self.store_retries.get_or_create(&ResultLabels { result: if ok { "ok" } else { "failed" } }).inc();
    }

    /// Sets the budget gauges from the current tenants.
    pub fn set_budgets(&self, budgets: impl IntoIterator<Item = (Arc<str>, Usd)>) {
        for (t, b) in budgets {
            self.budget.get_or_create(&TenantLabels { tenant: Label(t) }).set(b.as_f64());
        }
    }

    /// Counts a webhook delivery attempt.
    pub fn webhook_delivery(&self, tenant: &Arc<str>, result: &'static str) {
        self.webhook_deliveries.get_or_create(&DeliveryLabels { tenant: Label(tenant.clone()), result }).inc();
    }

    /// Counts a background task that panicked (and is restarted).
    pub fn task_panicked(&self, task: &'static str) {
        self.task_panics.get_or_create(&TaskLabels { task }).inc();
    }

    /// Counts a platform webhook call refused.
    pub fn webhook_rejected(&self, cause: &'static str) {
        self.webhook_rejected.get_or_create(&CauseLabels { cause }).inc();
    }

    /// Counts a config reload attempt.
    pub fn reload(&self, ok: bool) {
        self.reloads.get_or_create(&ResultLabels { result: if ok { "ok" } else { "refused" } }).inc();
    }

    /// Reads stored state into the gauges and renders everything.
    pub async fn render(&self, store: &dyn Store, circuit: State) -> String {
        let month = month_of(now_ms());
        let state = async {
            let balance = store.balance().await?;
            let totals = store.hold_totals().await?;
            let spend = store.spend_by_tenant(&month).await?;
            let outbox = store.outbox_stats().await?;
            Ok::<_, crate::store::StoreError>((balance, totals, spend, outbox))
        };
        match state.await {
            Ok((balance, totals, spend, outbox)) => {
                self.outbox_pending.set(outbox.pending as i64);
                self.outbox_dead.set(outbox.dead as i64);
                self.outbox_oldest
                    .set(outbox.oldest_pending_ms.map(|t| now_ms().saturating_sub(t) as f64 / 1000.0).unwrap_or(0.0));
                self.store_up.set(1);
                if let Some(b) = balance {
                    self.balance.set(b.amount.as_f64());
                }
                self.holds_open.set(totals.open as i64);
                self.holds_open_usd.set(totals.open_amount.as_f64());
                self.holds_unknown.set(totals.unknown as i64);
                self.holds_unknown_usd.set(totals.unknown_amount.as_f64());
                self.held_usd.set(totals.held.as_f64());
                for (tenant, amount) in spend {
                    self.spend.get_or_create(&TenantLabels { tenant: Label(tenant) }).set(Usd::as_f64(amount));
                }
            }
            Err(_) => {
                self.store_up.set(0);
            }
        }
        self.circuit_open.set(i64::from(matches!(circuit, State::Open(_))));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    #[tokio::test]
    async fn renders_request_and_state_series() {
        let m = Metrics::new();
        let t: Arc<str> = Arc::from("marketing");
        let mut r = AccessRecord::new(
            http::Method::POST,
            http::HeaderValue::from_static("r1"),
            "/v1/sora/generate",
            "forwarded",
        );
        r.tenant = Some(t.clone());
        r.upstream(201, Duration::from_millis(10));
        m.observe(&r, 201, Duration::from_millis(12));
        m.rate_limited(&t, "requests");
        m.upstream_error("timeout");
        let store = EmbeddedStore::memory();
        let at = store.begin_balance_fetch().await.unwrap();
        store.apply_balance(Usd::parse("12.5").unwrap(), at, 1).await.unwrap();
        let text = m.render(&store, State::Closed).await;
        for want in [
            r#"tollgate_requests_total{tenant="marketing",route="/v1/sora/generate",status="201",outcome="forwarded"} 1"#,
            r#"tollgate_rate_limited_total{tenant="marketing",kind="requests"} 1"#,
            r#"tollgate_upstream_errors_total{kind="timeout"} 1"#,
            "tollgate_account_balance_usd 12.5",
            "tollgate_request_duration_seconds_bucket",
            "tollgate_upstream_duration_seconds_count{route=\"/v1/sora/generate\"} 1",
            "tollgate_holds_open 0",
            "tollgate_store_up 1",
            "tollgate_circuit_open 0",
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
    }

    #[tokio::test]
    async fn cached_handles_count_into_the_exported_series() {
        let m = Metrics::new();
        let t: Arc<str> = Arc::from("ops");
        let sample = |upstream: Option<Duration>| {
            let mut r = AccessRecord::new(
                http::Method::GET,
                http::HeaderValue::from_static("r1"),
                "/v1/data/balance",
                "served",
            );
            r.tenant = Some(t.clone());
            r.upstream_latency = upstream;
            r
        };
        let store = EmbeddedStore::memory();
        m.observe(&sample(None), 200, Duration::from_millis(1));
        m.observe(&sample(None), 200, Duration::from_millis(1));
        let text = m.render(&store, State::Closed).await;
        assert!(
            text.contains(
                r#"tollgate_requests_total{tenant="ops",route="/v1/data/balance",status="200",outcome="served"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"tollgate_request_duration_seconds_count{route="/v1/data/balance"} 2"#), "{text}");
        // No platform series until a request of this kind called the platform.
        assert!(!text.contains(r#"tollgate_upstream_duration_seconds_count{route="/v1/data/balance"}"#), "{text}");
        m.observe(&sample(Some(Duration::from_millis(1))), 200, Duration::from_millis(1));
        m.observe(&sample(Some(Duration::from_millis(1))), 200, Duration::from_millis(1));
        let text = m.render(&store, State::Closed).await;
        assert!(
            text.contains(
                r#"tollgate_requests_total{tenant="ops",route="/v1/data/balance",status="200",outcome="served"} 4"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"tollgate_upstream_duration_seconds_count{route="/v1/data/balance"} 2"#), "{text}");
    }
}
