//! Budget and balance alerts (`[alerts]`): each is one signed POST, queued in the durable
//! outbox and delivered (and retried) by the webhook delivery worker. A tenant's spend plus its
//! holds crossing a share of its budget sends one alert per tenant, month and threshold; the
//! account balance falling below `balance_below` sends one each time it falls. "Once" holds
//! across replicas: the store marks each alert sent in one atomic step before it is queued.
//!
//! Every replica checks once a second from the store's totals, so the request path pays
//! nothing for alerts.

use std::sync::Arc;
use std::time::Duration;

use crate::config::AlertsConfig;
use crate::core::Shared;
use crate::store::{month_of, now_ms, OutboxMessage, ALERTS};

/// How often the totals are compared with the thresholds.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The alert key of a tenant's threshold in a month: at most one alert each, on any replica.
pub(crate) fn budget_key(tenant: &str, month: &str, threshold: f64) -> String {
    format!("budget:{tenant}:{month}:{threshold}")
}

pub(crate) const BALANCE_KEY: &str = "balance_low";

async fn queue(gw: &Shared, alerts: &AlertsConfig, kind: &'static str, body: serde_json::Value) {
    let m = OutboxMessage {
        id: format!("alert_{}", crate::ids::uuid().simple()),
        tenant: Arc::from(ALERTS),
        url: alerts.url.clone(),
        body: bytes::Bytes::from(body.to_string()),
        attempts: 0,
        created_ms: now_ms(),
    };
    match gw.store.outbox_push(&m).await {
        Ok(()) => {
            gw.metrics.alert(kind);
            tracing::info!(target: "alert", kind, webhook_id = %m.id, body = %body, "alert queued");
            if let Some(s) = &gw.sender {
                s.wake();
            }
        }
        // Marked sent but not queued: it is logged, and counted nowhere else.
        Err(e) => tracing::error!(error = %e, kind, body = %body, "alert marked sent but not queued"),
    }
}

/// One pass: every tenant with a budget, then the account balance (the alerts only with
/// `[alerts]`). Answers whether the budgets add up to more than the balance (`None` while no
/// balance is known).
pub async fn check(gw: &Shared, alerts: Option<&AlertsConfig>) -> Result<Option<bool>, crate::store::StoreError> {
    let month = month_of(now_ms());
    let runtime = gw.current();
    let totals = gw.store.month_totals(&month).await?;
    let mut budgets = crate::policy::money::Usd::ZERO;
    for t in runtime.tenants.tenants() {
        let Some(budget) = t.monthly_budget else { continue };
        budgets += budget;
        if budget <= crate::policy::money::Usd::ZERO {
            continue;
        }
        let Some(alerts) = alerts else { continue };
        let used = totals.get(&*t.id).map(|m| m.used()).unwrap_or_default();
        for &threshold in &alerts.thresholds {
            if (used.micros() as f64) < threshold * budget.micros() as f64 {
                break;
            }
            if gw.store.alert_once(&budget_key(&t.id, &month, threshold)).await? {
                let body = serde_json::json!({
                    "type": "budget.threshold", "tenant": &*t.id, "month": month, "threshold": threshold,
                    "spent": used.to_string(), "budget": budget.to_string(),
                });
                queue(gw, alerts, "budget.threshold", body).await;
            }
        }
    }
    let Some(snapshot) = gw.store.balance().await? else { return Ok(None) };
    let balance = snapshot.amount;
    let over = budgets > balance;
    gw.metrics.set_budgets_over_balance(over);
    if let Some(alerts) = alerts {
        if let Some(floor) = alerts.balance_below {
            if balance < floor {
                if gw.store.alert_once(BALANCE_KEY).await? {
                    queue(gw, alerts, "balance.low", serde_json::json!({ "type": "balance.low", "balance": balance.to_string(), "balance_below": floor.to_string() })).await;
                }
            } else {
                gw.store.alert_rearm(BALANCE_KEY).await?;
            }
        }
    }
    Ok(Some(over))
}

/// Checks every [`CHECK_EVERY`] until `stop` turns true.
pub async fn run(gw: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    // Runs without [alerts] too: the budgets-over-balance warning and gauge are for everyone.
    let alerts = gw.alerts.clone();
    let mut was_over = false;
    loop {
        match check(&gw, alerts.as_ref()).await {
            Ok(Some(over)) => {
                if over && !was_over {
                    tracing::warn!("the monthly budgets handed out add up to more than the account balance: not every tenant can spend its budget");
                }
                was_over = over;
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "alert check failed; the next one retries"),
        }
        let stopping = tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopping {
            return;
        }
    }
}
