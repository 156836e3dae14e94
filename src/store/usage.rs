//! Usage and budgets for team leads and finance: per tenant and UTC calendar month, what was
//! spent, what is held or in doubt, what was refunded, and the generations behind it. Served
//! as JSON or CSV at `GET /admin/usage`, offline by `tollgate usage`, and per tenant (its own
//! figures only) at `GET /v1/gateway/usage`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::policy::tenants::Tenant;
use crate::store::{GenerationRecord, Store, StoreError};

/// One tenant's month.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TenantUsage {
    /// Tenant id.
    pub tenant: String,
    /// Monthly budget, if any.
    pub budget: Option<String>,
    /// Charged this month, net of refunds.
    pub spent: String,
    /// Held by requests in flight.
    pub held: String,
    /// Forwarded without a known outcome, counted as spent until reconciled.
    pub unknown: String,
    /// Refunded this month (failed generations).
    pub refunded: String,
    /// What the budget still allows (budget − spent − held − unknown), if there is a budget.
    pub remaining: Option<String>,
    /// Generations by family, then status.
    pub generations: BTreeMap<String, BTreeMap<String, u64>>,
    /// Webhook deliveries given up on (dead letters), all months.
    pub webhook_dead_letters: u64,
}

/// A month's report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// `YYYY-MM` (UTC).
    pub month: String,
    /// One entry per tenant, by id.
    pub tenants: Vec<TenantUsage>,
    /// The month's generations (for CSV), oldest first.
    #[serde(skip)]
    pub rows: Vec<GenerationRecord>,
}

/// Is `m` a `YYYY-MM` month?
pub fn valid_month(m: &str) -> bool {
    let b = m.as_bytes();
    b.len() == 7
        && b[4] == b'-'
        && b[..4].iter().chain(&b[5..]).all(u8::is_ascii_digit)
        && matches!(&m[5..], "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12")
}

/// Unix ms of the first instant of the month after `month` (when budgets reset).
pub fn resets_at(month: &str) -> Option<String> {
    let (y, m) = (month[..4].parse::<i32>().ok()?, month[5..].parse::<u8>().ok()?);
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    Some(format!("{y:04}-{m:02}-01T00:00:00Z"))
}

/// Builds the report for `month`, for every tenant (or one): the config file's `tenants` and the
/// ones the admin API keeps in the store, with their budgets. The one code path behind
/// `/admin/usage`, `tollgate usage` and the dashboard's figures, so they never disagree.
pub async fn report(
    store: &dyn Store,
    tenants: &[Arc<Tenant>],
    month: &str,
    only: Option<&str>,
) -> Result<Report, StoreError> {
    let totals = store.month_totals(month).await?;
    let rows = store.generations_in_month(month, only).await?;
    let dead = store.outbox_dead_by_tenant().await?;
    let (_, docs) = store.directory().await?;
    let api: Vec<&crate::policy::keys::ApiTenant> = docs
        .iter()
        .map(|d| &d.tenant)
        .filter(|t| !t.is_deleted() && !t.overlay && !tenants.iter().any(|c| *c.id == *t.id))
        .collect();
    let mut out = Vec::new();
    let mut ids: Vec<&str> = tenants.iter().map(|t| &*t.id).chain(api.iter().map(|t| t.id.as_str())).collect();
    // Tenants removed from the config still have history.
    for t in totals.keys() {
        if !ids.contains(&t.as_str()) {
            ids.push(t);
        }
    }
    ids.sort();
    for id in ids.into_iter().filter(|id| only.is_none_or(|o| o == *id)) {
        let t = totals.get(id).cloned().unwrap_or_default();
        let budget = match tenants.iter().find(|x| &*x.id == id) {
            Some(x) => x.monthly_budget,
            None => api.iter().find(|x| x.id == id).and_then(|x| x.monthly_budget()),
        };
        let mut generations: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for r in rows.iter().filter(|r| &*r.tenant == id) {
            *generations.entry(r.family.path().to_string()).or_default().entry(r.status.clone()).or_default() += 1;
        }
        out.push(TenantUsage {
            tenant: id.to_string(),
            budget: budget.map(|b| b.to_string()),
            spent: t.spent.to_string(),
            held: t.held.to_string(),
            unknown: t.unknown.to_string(),
            refunded: t.refunded.to_string(),
            remaining: budget.map(|b| t.remaining(b).to_string()),
            generations,
            webhook_dead_letters: dead.get(id).copied().unwrap_or(0),
        });
    }
    Ok(Report { month: month.to_string(), tenants: out, rows })
}

/// RFC 3339 UTC with milliseconds always written, so every row's time has the same width
/// (`2026-12-06T20:00:00.100Z`, never `…:00.1Z`) and sorts as text.
fn csv_time(ms: i64) -> String {
    // Parsed once, not once per row.
    static FORMAT: std::sync::OnceLock<time::format_description::OwnedFormatItem> = std::sync::OnceLock::new();
    let format = FORMAT.get_or_init(|| {
        time::format_description::parse_owned::<2>(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z",
        )
        .expect("a valid format description")
    });
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(format).ok())
        .unwrap_or_default()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl Report {
    /// One row per generation: time, tenant, family, generation_id, status, price.
    pub fn csv(&self) -> String {
        let mut out = String::from("time,tenant,family,generation_id,status,price\n");
        for r in &self.rows {
            let time = csv_time(r.created_ms);
            out += &[
                time,
                csv_field(&r.tenant),
                r.family.path().to_string(),
                csv_field(&r.id),
                csv_field(&r.status),
                r.price.to_string(),
            ]
            .join(",");
            out.push('\n');
        }
        out
    }

    /// A table for a terminal.
    pub fn table(&self) -> String {
        let mut out = format!("usage {} (UTC)\n", self.month);
        out += &format!(
            "{:<20} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}\n",
            "tenant", "budget", "spent", "held", "unknown", "refunded", "remaining", "gens"
        );
        for t in &self.tenants {
            let gens: u64 = t.generations.values().flat_map(|m| m.values()).sum();
            out += &format!(
                "{:<20} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}\n",
                t.tenant,
                t.budget.as_deref().unwrap_or("-"),
                t.spent,
                t.held,
                t.unknown,
                t.refunded,
                t.remaining.as_deref().unwrap_or("-"),
                gens
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_resets() {
        assert!(valid_month("2026-11"));
        assert!(!valid_month("2026-13") && !valid_month("26-11") && !valid_month("2026/11"));
        assert_eq!(resets_at("2026-11").unwrap(), "2026-12-01T00:00:00Z");
        assert_eq!(resets_at("2026-12").unwrap(), "2027-01-01T00:00:00Z");
    }

    #[test]
    fn csv_escapes() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("plain"), "plain");
    }

    #[test]
    fn csv_times_have_one_width() {
        // Before: RFC 3339 dropped trailing zeros, `…:00.1Z` beside `…:00.123Z`.
        let times: Vec<String> = [1_796_083_200_100, 1_796_083_200_123, 1_796_083_200_000].map(csv_time).into();
        assert_eq!(times, ["2026-12-01T00:00:00.100Z", "2026-12-01T00:00:00.123Z", "2026-12-01T00:00:00.000Z"]);
    }
}
