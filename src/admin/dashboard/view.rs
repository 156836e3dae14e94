//! The dashboard's pages, rendered with maud: every `(value)` is HTML-escaped by the template
//! engine, so tenant ids, key labels and the platform's error messages are text, never markup.
//! No script anywhere; charts and bars are inline SVG.

use maud::{html, Markup, DOCTYPE};

use crate::policy::money::Usd;
use crate::store::{Failure, GenerationRecord, Reason};

/// One tenant's row on the overview.
pub struct TenantRow {
    pub id: String,
    pub budget: Option<Usd>,
    pub spent: Usd,
    pub held: Usd,
    pub unknown: Usd,
    pub remaining: Option<Usd>,
    /// Share of the budget used (spent + held + unknown), if there is a budget.
    pub share: Option<f64>,
    pub in_flight: u64,
    /// Budget thresholds alerted this month.
    pub alerts: Vec<f64>,
}

/// Thresholds as "50 %, 100 %".
fn shares(v: &[f64]) -> String {
    v.iter().map(|t| format!("{:.0} %", t * 100.0)).collect::<Vec<_>>().join(", ")
}

/// The admin's overview.
pub struct Overview {
    pub month: String,
    pub balance: Option<Usd>,
    pub held: Usd,
    pub unknown: Usd,
    pub rows: Vec<TenantRow>,
    pub backlog: u64,
    pub oldest_pending_secs: Option<u64>,
    pub dead: u64,
    /// `[alerts]` is configured.
    pub alerts_on: bool,
    /// Seconds since the reconciler's last pass: this replica's, or on a shared store the lease
    /// holder's (`None`: none has run yet).
    pub reconciled_secs_ago: Option<u64>,
    /// The low-balance alert was sent and the balance has not recovered.
    pub balance_alert: bool,
    pub csrf: String,
    /// Named beside every amount.
    pub currency: String,
}

/// A key as the tenant page lists it.
pub struct KeyRow {
    pub id: String,
    pub prefix: Option<String>,
    pub label: Option<String>,
    pub scope: String,
    pub state: String,
    pub created: Option<String>,
    pub expires: Option<String>,
    pub last_used: Option<String>,
    /// Listed in the config file: changed there, not here.
    pub in_file: bool,
}

/// Failures of one family this month.
pub struct FamilyFailures {
    pub family: String,
    pub generations: u64,
    pub failed: [u64; 3],
}

/// One tenant's page.
pub struct TenantPage {
    pub id: String,
    pub admin: bool,
    /// Keys can be changed here (an admin, on an API tenant).
    pub manage_keys: bool,
    pub csrf: String,
    pub month: String,
    pub budget: Option<Usd>,
    pub spent: Usd,
    pub held: Usd,
    pub unknown: Usd,
    pub refunded: Usd,
    pub remaining: Option<Usd>,
    pub projection: Usd,
    pub in_flight: u64,
    /// Budget thresholds alerted this month (`None` without `[alerts]`).
    pub alerts: Option<Vec<f64>>,
    /// Net spend of each of the last 90 days, oldest first: (RFC 3339 date, amount).
    pub days: Vec<(String, Usd)>,
    pub failures: Vec<FamilyFailures>,
    pub keys: Vec<KeyRow>,
    pub latest: Vec<(GenerationRecord, Option<Failure>, String)>,
    /// A key just made: shown once.
    pub new_key: Option<String>,
    /// The outcome of a form (an error from the admin API, or what was done).
    pub notice: Option<String>,
    /// Named beside every amount.
    pub currency: String,
}

fn page(title: &str, signed_in: Option<&str>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tollgate" }
                link rel="stylesheet" href="/dashboard/style.css";
            }
            body {
                header {
                    a.brand href="/dashboard" { "tollgate" }
                    @if let Some(csrf) = signed_in {
                        form.logout method="post" action="/dashboard/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (content) }
            }
        }
    }
}

/// The sign-in form, with an error when the last try failed.
pub fn sign_in(error: Option<&str>, csrf: &str) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            p { "Paste the admin token, or a viewer key of your team." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/dashboard/login" {
                input type="hidden" name="login_csrf" value=(csrf);
                label for="token" { "Token or viewer key" }
                input id="token" name="token" type="password" autocomplete="off" required;
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// A page that says only `message` (404s and refusals).
pub fn message(title: &str, message: &str) -> Markup {
    page(title, None, html! { h1 { (title) } p { (message) } p { a href="/dashboard" { "Back to the dashboard" } } })
}

fn bar(share: Option<f64>) -> Markup {
    let w = share.map_or(0.0, |s| (s * 100.0).clamp(0.0, 100.0));
    let class = match share {
        Some(s) if s >= 1.0 => "over",
        Some(s) if s >= 0.8 => "warn",
        _ => "ok",
    };
    html! {
        svg.bar width="120" height="10" viewBox="0 0 100 10" aria-hidden="true" {
            rect.track x="0" y="0" width="100" height="10" {}
            rect class=(class) x="0" y="0" width=(format!("{w:.1}")) height="10" {}
        }
    }
}

/// The currency after an amount, outside its `data-figure` element (which keeps the bare number
/// the usage report has).
fn cur(c: &str) -> Markup {
    html! { " " span.cur { (c) } }
}

fn money(u: Option<Usd>) -> String {
    u.map_or_else(|| "-".to_string(), |u| u.to_string())
}

/// The admin's overview.
pub fn overview(o: &Overview) -> Markup {
    page(
        "Overview",
        Some(&o.csrf),
        html! {
            h1 { "Overview " small { (o.month) " (UTC)" } }
            section.cards {
                div.card { h2 { "Account balance" } p.figure { span data-figure="balance" { (money(o.balance)) } (cur(&o.currency)) } }
                div.card { h2 { "Held" } p.figure { span data-figure="held" { (o.held) } (cur(&o.currency)) } }
                div.card { h2 { "Unknown" } p.figure { span data-figure="unknown" { (o.unknown) } (cur(&o.currency)) } }
                div.card {
                    h2 { "Webhooks" }
                    p { span data-figure="backlog" { (o.backlog) } " waiting"
                        @if let Some(s) = o.oldest_pending_secs { " (oldest " (s) " s)" } }
                    p { span data-figure="dead" { (o.dead) } " dead letters" }
                }
                div.card {
                    h2 { "Reconciler" }
                    p data-figure="reconciled" {
                        @match o.reconciled_secs_ago { Some(s) => { "last pass " (s) " s ago" }, None => { "no pass yet" } }
                    }
                }
                @if o.alerts_on {
                    div.card {
                        h2 { "Alerts this month" }
                        p.figure data-figure="alerts" { (o.rows.iter().map(|r| r.alerts.len()).sum::<usize>()) }
                        @if o.balance_alert { p.flag { "low-balance alert sent" } }
                    }
                }
            }
            h2 { "Tenants" }
            table #tenants {
                @let c = &o.currency;
                thead { tr { th { "Tenant" } th { "Budget (" (c) ")" } th { "Spent (" (c) ")" } th { "Held (" (c) ")" } th { "Unknown (" (c) ")" } th { "Remaining (" (c) ")" } th { "In flight" } th { "Used" } @if o.alerts_on { th { "Alerts sent" } } } }
                tbody {
                    @for r in &o.rows {
                        @let flag = match r.share { Some(s) if s >= 1.0 => "over", Some(s) if s >= 0.8 => "warn", _ => "" };
                        tr class=(flag) data-tenant=(r.id) {
                            td { a href=(format!("/dashboard/tenants/{}", r.id)) { (r.id) } }
                            td.num { (money(r.budget)) }
                            td.num data-col="spent" { (r.spent) }
                            td.num data-col="held" { (r.held) }
                            td.num data-col="unknown" { (r.unknown) }
                            td.num data-col="remaining" { (money(r.remaining)) }
                            td.num { (r.in_flight) }
                            td {
                                (bar(r.share))
                                " "
                                @if let Some(s) = r.share { (format!("{:.0} %", s * 100.0)) }
                                @if flag == "over" { " " span.flag { "over budget" } }
                                @else if flag == "warn" { " " span.flag { "≥ 80 %" } }
                            }
                            @if o.alerts_on { td data-col="alerts" { (shares(&r.alerts)) } }
                        }
                    }
                }
            }
        },
    )
}

/// Daily spend as bars; the month-to-date total as a line that starts again at each month's
/// first day (a dotted line marks it), against the budget (dashed), on a scale of its own.
fn chart(days: &[(String, Usd)], budget: Option<Usd>, currency: &str) -> Markup {
    let max = days.iter().map(|(_, u)| u.micros()).max().unwrap_or(0).max(1) as f64;
    let (w, h, bar_w) = (900.0, 160.0, 10.0);
    // Month to date: (x, total), reset where the month changes (`YYYY-MM` of the day).
    let mut totals = Vec::with_capacity(days.len());
    let mut run = 0i64;
    for (i, (day, amount)) in days.iter().enumerate() {
        if i > 0 && days[i - 1].0.get(..7) != day.get(..7) {
            run = 0;
        }
        run += amount.micros().max(0);
        totals.push((i as f64 * bar_w + 4.0, run, i > 0 && run == amount.micros().max(0)));
    }
    let top = totals.iter().map(|t| t.1).max().unwrap_or(0).max(budget.map_or(0, |b| b.micros())).max(1) as f64;
    let y = |m: i64| h - m as f64 / top * (h - 10.0);
    let path: String = totals
        .iter()
        .map(|(x, m, new_month)| format!("{}{x:.1},{:.1}", if *new_month { " M" } else { " L" }, y(*m)))
        .collect::<String>()
        .replacen(" L", "M", 1);
    html! {
        svg.chart width="900" height="190" viewBox="0 0 900 190" role="img" aria-label="Daily spend and month-to-date total, last 90 days" {
            line x1="0" y1=(h) x2=(w) y2=(h) class="axis" {}
            @for (i, (day, amount)) in days.iter().enumerate() {
                @let bh = (amount.micros().max(0) as f64 / max * (h - 10.0)).max(if amount.micros() > 0 { 1.0 } else { 0.0 });
                @if i > 0 && days[i - 1].0.get(..7) != day.get(..7) {
                    line.month x1=(format!("{:.0}", i as f64 * bar_w - 1.0)) y1="0" x2=(format!("{:.0}", i as f64 * bar_w - 1.0)) y2=(h) data-month=(day.get(..7).unwrap_or("")) {}
                    text x=(format!("{:.0}", i as f64 * bar_w + 2.0)) y="24" { (day.get(..7).unwrap_or("")) }
                }
                rect.spend x=(format!("{:.0}", i as f64 * bar_w)) y=(format!("{:.1}", h - bh)) width="8" height=(format!("{bh:.1}")) data-day=(day) data-amount=(amount) {
                    title { (day) ": " (amount) " " (currency) }
                }
            }
            @if !totals.is_empty() { path.mtd d=(path) {} }
            @if let Some(b) = budget {
                line.budget x1="0" y1=(format!("{:.1}", y(b.micros()))) x2=(w) y2=(format!("{:.1}", y(b.micros()))) data-budget=(b) {}
                text x="900" y=(format!("{:.1}", y(b.micros()) - 3.0)) text-anchor="end" { "budget " (b) " " (currency) }
            }
            text x="0" y="180" { (days.first().map(|d| d.0.as_str()).unwrap_or("")) }
            text x="900" y="180" text-anchor="end" { (days.last().map(|d| d.0.as_str()).unwrap_or("")) }
            text x="0" y="12" { "bars: daily, max " (Usd::from_micros(max as i64)) " " (currency) "; line: month to date" }
        }
    }
}

/// One tenant's page.
pub fn tenant(t: &TenantPage) -> Markup {
    let action = |rest: &str| format!("/dashboard/tenants/{}/{rest}", t.id);
    let share =
        t.budget.filter(|b| b.micros() > 0).map(|b| (t.spent + t.held + t.unknown).micros() as f64 / b.micros() as f64);
    page(
        &t.id,
        Some(&t.csrf),
        html! {
            @if t.admin { p.crumbs { a href="/dashboard" { "Overview" } " / " (t.id) } }
            h1 { (t.id) " " small { (t.month) " (UTC)" } }
            @if let Some(n) = &t.notice { p.notice role="status" { (n) } }
            @if let Some(k) = &t.new_key {
                div.newkey role="alert" {
                    p { "The new key, shown this once. Copy it now; only its prefix is kept." }
                    code #new-key { (k) }
                }
            }
            section.cards {
                div.card { h2 { "Spent this month" } p.figure { span data-figure="spent" { (t.spent) } (cur(&t.currency)) } }
                div.card { h2 { "Budget" } p.figure { span data-figure="budget" { (money(t.budget)) } (cur(&t.currency)) } @if t.budget.is_some() { (bar(share)) } }
                div.card { h2 { "Remaining" } p.figure { span data-figure="remaining" { (money(t.remaining)) } (cur(&t.currency)) } }
                div.card {
                    h2 { "Month-end at this pace" }
                    p.figure { span data-figure="projection" { (t.projection) } (cur(&t.currency)) }
                    // Ahead of the budget at this pace: the lead sees it before the 429s do.
                    @if t.budget.is_some_and(|b| t.projection > b) { p.flag data-flag="projection" { "over the budget by month-end" } }
                }
                div.card { h2 { "Held / unknown" } p { span data-figure="held" { (t.held) } " / " span data-figure="unknown" { (t.unknown) } } }
                div.card { h2 { "Refunded" } p.figure { span data-figure="refunded" { (t.refunded) } (cur(&t.currency)) } }
                div.card { h2 { "In flight" } p.figure data-figure="in-flight" { (t.in_flight) } }
                @if let Some(a) = &t.alerts {
                    div.card { h2 { "Alerts sent" } p data-figure="alerts" { @if a.is_empty() { "none" } @else { (shares(a)) } } }
                }
            }
            h2 { "Daily spend, last 90 days" }
            (chart(&t.days, t.budget, &t.currency))
            p { a.csv href=(action("generations.csv")) download { "This month's generations (CSV)" } }
            h2 { "Failures this month" }
            @if t.failures.is_empty() { p { "No generations this month." } } @else {
                table #failures {
                    thead { tr { th { "Family" } th { "Generations" } th { "Failed" } th { "Rate" }
                        @for r in Reason::ALL { th { (r.as_str()) } } } }
                    tbody {
                        @for f in &t.failures {
                            @let failed: u64 = f.failed.iter().sum();
                            tr {
                                td { (f.family) } td.num { (f.generations) } td.num { (failed) }
                                td.num { (format!("{:.0} %", if f.generations > 0 { failed as f64 * 100.0 / f.generations as f64 } else { 0.0 })) }
                                @for n in f.failed { td.num { (n) } }
                            }
                        }
                    }
                }
            }
            h2 { "Keys" }
            table #keys {
                thead { tr { th { "Id" } th { "Prefix" } th { "Label" } th { "Scope" } th { "State" } th { "Created" } th { "Expires" } th { "Last used" } @if t.manage_keys { th {} } } }
                tbody {
                    @for k in &t.keys {
                        tr data-key=(k.id) {
                            td { code { (k.id) } } td { @if let Some(p) = &k.prefix { code { (p) "…" } } }
                            td { (k.label.as_deref().unwrap_or("")) } td { (k.scope) } td.state { (k.state) }
                            td { (k.created.as_deref().unwrap_or("-")) } td { (k.expires.as_deref().unwrap_or("-")) } td { (k.last_used.as_deref().unwrap_or("never")) }
                            @if t.manage_keys && k.in_file {
                                td.actions { "in the config file" }
                            } @else if t.manage_keys {
                                td.actions {
                                    @if k.state == "active" {
                                        form method="post" action=(action(&format!("keys/{}/rotate", k.id))) {
                                            input type="hidden" name="csrf" value=(t.csrf);
                                            button type="submit" { "Rotate" }
                                        }
                                    }
                                    @if k.state != "revoked" {
                                        form method="post" action=(action(&format!("keys/{}/revoke", k.id))) {
                                            input type="hidden" name="csrf" value=(t.csrf);
                                            button.danger type="submit" { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if t.manage_keys {
                form #issue method="post" action=(action("keys")) {
                    input type="hidden" name="csrf" value=(t.csrf);
                    label for="label" { "Label" } input id="label" name="label" maxlength="200";
                    label for="scope" { "Scope" }
                    select id="scope" name="scope" { option value="api" { "api" } option value="viewer" { "viewer" } }
                    button type="submit" { "Issue a key" }
                }
            }
            @if t.manage_keys && t.keys.iter().any(|k| k.in_file) {
                p { "This team's limits, budget and listed keys are in the config file and change there; keys issued here (a viewer key for the team lead, say) are rotated and revoked here." }
            }
            h2 { "Latest generations" }
            table #generations {
                thead { tr { th { "Time (UTC)" } th { "Family" } th { "Id" } th { "Status" } th { "Price (" (t.currency) ")" } th { "Platform's message" } } }
                tbody {
                    @for (r, failure, time) in &t.latest {
                        tr data-generation=(r.id) {
                            td.time { (time) } td { (r.family.path()) } td { code { (r.id) } } td { (r.status) }
                            // A failed generation was refunded to the month: its price is not spend.
                            @if r.status == "failed" { td.num.refunded { s { (r.price) } " " span.flag { "refunded" } } } @else { td.num { (r.price) } }
                            td.message { @if let Some(f) = failure { span.reason { (f.reason.as_str()) } " " (f.message) } }
                        }
                    }
                }
            }
        },
    )
}
