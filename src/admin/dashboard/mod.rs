//! `/dashboard` on the admin listener: an overview for operators and a page per tenant for team
//! leads, rendered on the server (maud, `view.rs`), with no script and nothing from another
//! origin. Signing in takes the admin token or a tenant's viewer key; the session is a signed
//! cookie (`session.rs`). Pages read the store's month totals and daily roll-ups and the newest
//! 50 records through an index, never a scan of the generation records, so a page costs the same
//! with a million records as with ten. Key changes go through the admin API's own code
//! (`tenants::answer`), with its checks and audit lines.

pub(crate) mod session;
mod view;

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{HeaderValue, CACHE_CONTROL, COOKIE, LOCATION, SET_COOKIE};
use http::{Method, Request, Response, StatusCode};
use serde_json::Value;

use crate::core::limits::AdminFailures;
use crate::core::Shared;
use crate::policy::keys::Scope;
use crate::policy::money::Usd;
use crate::policy::secret::Secret;
use crate::server::body::{self, Body};
use crate::store::{month_of, now_ms, Reason, StoreError, DAY_MS};
use session::{Session, Sessions, Who};

/// No script may run, styles come only from this origin, forms post only here, and no other
/// site may frame the pages.
const CSP: &str =
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const STYLE: &str = include_str!("style.css");
/// Largest form body.
const MAX_FORM: usize = 16 * 1024;
/// Days in the spend chart.
pub const CHART_DAYS: i64 = 90;
/// Generations listed on a tenant page.
pub const LATEST: usize = 50;

/// The dashboard of one admin listener.
pub struct Dashboard {
    gateway: Arc<Shared>,
    token: Option<Secret>,
    /// Made on first use, keyed by the store's shared secret.
    sessions: tokio::sync::OnceCell<Sessions>,
    /// Named beside every amount.
    currency: String,
}

fn html(status: StatusCode, markup: maud::Markup) -> Response<Body> {
    body::typed(status, HeaderValue::from_static("text/html; charset=utf-8"), markup.into_string())
}

/// A dashboard cookie: this path only, never read by script, never sent cross-site, `Secure`
/// behind a TLS proxy; `max_age` 0 deletes it.
fn set_cookie(rsp: &mut Response<Body>, name: &str, value: &str, max_age: u64, secure: bool) {
    let cookie = format!(
        "{name}={value}; Path=/dashboard; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        rsp.headers_mut().insert(SET_COOKIE, v);
    }
}

fn see_other(to: &str) -> Response<Body> {
    let mut rsp = body::typed(StatusCode::SEE_OTHER, HeaderValue::from_static("text/plain; charset=utf-8"), "");
    if let Ok(v) = HeaderValue::from_str(to) {
        rsp.headers_mut().insert(LOCATION, v);
    }
    rsp
}

fn not_found() -> Response<Body> {
    html(StatusCode::NOT_FOUND, view::message("Not found", "There is no such page, or it is not yours to see."))
}

fn unavailable(e: &StoreError) -> Response<Body> {
    tracing::warn!(error = %e, "dashboard: store unreachable");
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        view::message("Store unavailable", "The store did not answer; try again in a moment."),
    )
}

/// A form's fields.
fn form(bytes: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

/// `YYYY-MM-DD` of a day number.
fn date(day: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(day * 86_400).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02}", t.year(), t.month() as u8, t.day())
}

/// Unix ms of the first instant of `month` and of the next month.
fn month_bounds(month: &str) -> Option<(u64, u64)> {
    let (y, m) = (month[..4].parse::<i32>().ok()?, month[5..].parse::<u8>().ok()?);
    let start = time::Date::from_calendar_date(y, time::Month::try_from(m).ok()?, 1).ok()?;
    let next = if m == 12 {
        time::Date::from_calendar_date(y + 1, time::Month::January, 1)
    } else {
        time::Date::from_calendar_date(y, time::Month::try_from(m + 1).ok()?, 1)
    }
    .ok()?;
    let ms = |d: time::Date| (d.midnight().assume_utc().unix_timestamp() * 1000) as u64;
    Some((ms(start), ms(next)))
}

/// What the month will have cost at the pace so far.
fn projection(spent: Usd, month: &str, now: u64) -> Usd {
    let Some((start, end)) = month_bounds(month) else { return spent };
    let elapsed = now.saturating_sub(start).max(3_600_000) as f64;
    let pace = spent.micros() as f64 / elapsed;
    // Rounded to the ledger's display precision (a hundredth of a cent).
    Usd::from_micros(((pace * (end - start) as f64) / 100.0).round() as i64 * 100).max(spent)
}

impl Dashboard {
    /// `token` is the admin token.
    pub fn new(gateway: Arc<Shared>, token: Option<Secret>, currency: String) -> Dashboard {
        Dashboard { gateway, token, sessions: tokio::sync::OnceCell::new(), currency }
    }

    /// The session signer, keyed by the secret every replica shares through the store.
    async fn sessions(&self) -> Result<&Sessions, StoreError> {
        self.sessions
            .get_or_try_init(|| async {
                let key = self.gateway.store().shared_secret("dashboard-sessions").await?;
                Ok(Sessions::new(key, self.token.as_ref().map(|t| t.expose())))
            })
            .await
    }

    /// The session a request carries, if its cookie is good, it was not signed out and, for a
    /// viewer, its key still works.
    async fn session<B>(&self, sessions: &Sessions, req: &Request<B>, now: u64) -> Result<Option<Session>, StoreError> {
        let Some(value) =
            req.headers().get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(session::cookie_value)
        else {
            return Ok(None);
        };
        let Some(s) = sessions.check(value, now) else { return Ok(None) };
        if self.gateway.store().session_ended(&s.id).await? {
            return Ok(None);
        }
        Ok(match &s.who {
            Who::Admin => self.token.is_some().then_some(s),
            Who::Viewer { tenant, key_id } => {
                (self.gateway.current().tenants.key_scope(tenant, key_id) == Some(Scope::Viewer)).then_some(s)
            }
        })
    }

    /// The sign-in form, with a fresh form cookie and the CSRF token bound to it.
    fn sign_in_form(
        &self,
        sessions: &Sessions,
        status: StatusCode,
        error: Option<&str>,
        secure: bool,
    ) -> Response<Body> {
        let nonce = Sessions::login_nonce();
        let mut rsp = html(status, view::sign_in(error, &sessions.login_csrf(&nonce)));
        set_cookie(&mut rsp, session::LOGIN_COOKIE, &nonce, 3600, secure);
        rsp
    }

    /// Serves one `/dashboard…` request; every answer carries the CSP and is never cached.
    pub async fn handle<B>(&self, failures: &AdminFailures, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let mut rsp = self.route(failures, req).await;
        let h = rsp.headers_mut();
        h.insert("content-security-policy", HeaderValue::from_static(CSP));
        h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
        h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        rsp
    }

    async fn route<B>(&self, failures: &AdminFailures, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let now = now_ms();
        let sessions = match self.sessions().await {
            Ok(s) => s,
            Err(e) => return unavailable(&e),
        };
        let session = match self.session(sessions, &req, now).await {
            Ok(s) => s,
            Err(e) => return unavailable(&e),
        };
        let path = req.uri().path().trim_end_matches('/').to_string();
        let parts: Vec<&str> = path.split('/').skip(2).collect();
        let method = req.method().clone();
        match (&method, parts.as_slice()) {
            (&Method::GET, ["style.css"]) => {
                body::typed(StatusCode::OK, HeaderValue::from_static("text/css; charset=utf-8"), STYLE)
            }
            (&Method::GET, []) => match &session {
                None => self.sign_in_form(sessions, StatusCode::OK, None, forwarded_https(&req)),
                Some(Session { who: Who::Viewer { tenant, .. }, .. }) => {
                    see_other(&format!("/dashboard/tenants/{tenant}"))
                }
                Some(s) => match self.overview(s, now).await {
                    Ok(page) => html(StatusCode::OK, page),
                    Err(e) => unavailable(&e),
                },
            },
            (&Method::POST, ["login"]) => self.sign_in(sessions, failures, req, now).await,
            (&Method::POST, ["logout"]) => {
                let secure = forwarded_https(&req);
                let fields = match super::read_capped(req.into_body(), MAX_FORM).await {
                    Ok(b) => form(&b),
                    Err(refused) => return refused,
                };
                if let Some(s) = &session {
                    if !sessions.csrf_ok(s, fields.get("csrf").map_or("", String::as_str)) {
                        return html(
                            StatusCode::FORBIDDEN,
                            view::message(
                                "Refused",
                                "The form was stale or not made here; sign out from the page again.",
                            ),
                        );
                    }
                    // Ended on every replica, not only forgotten by this browser.
                    if let Err(e) = self.gateway.store().session_end(&s.id, s.expires_ms).await {
                        return unavailable(&e);
                    }
                }
                let mut rsp = see_other("/dashboard");
                set_cookie(&mut rsp, session::COOKIE, "", 0, secure);
                rsp
            }
            (&Method::GET, ["tenants", id, "generations.csv"]) => {
                let Some(s) = session else { return see_other("/dashboard") };
                if !self.may_see(&s, id) {
                    return not_found();
                }
                // The month's generations of this team, for its lead and for finance: the same
                // rows as `/admin/usage` in CSV.
                let month = month_of(now);
                let runtime = self.gateway.current();
                match crate::store::usage::report(
                    &**self.gateway.store(),
                    runtime.config_tenants.tenants(),
                    &month,
                    Some(id),
                )
                .await
                {
                    Ok(r) => {
                        let mut rsp =
                            body::typed(StatusCode::OK, HeaderValue::from_static("text/csv; charset=utf-8"), r.csv());
                        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{id}-{month}.csv\"")) {
                            rsp.headers_mut().insert(http::header::CONTENT_DISPOSITION, v);
                        }
                        rsp
                    }
                    Err(e) => unavailable(&e),
                }
            }
            (&Method::GET, ["tenants", id]) => {
                let Some(s) = session else { return see_other("/dashboard") };
                if !self.may_see(&s, id) {
                    return not_found();
                }
                self.tenant_page(&s, id, None, None, now).await
            }
            (&Method::POST, ["tenants", id, "keys", rest @ ..]) => {
                let Some(s) = session else { return see_other("/dashboard") };
                if s.who != Who::Admin {
                    return not_found();
                }
                let (id, rest) = (id.to_string(), rest.iter().map(|p| p.to_string()).collect::<Vec<_>>());
                let fields = match super::read_capped(req.into_body(), MAX_FORM).await {
                    Ok(b) => form(&b),
                    Err(refused) => return refused,
                };
                if !sessions.csrf_ok(&s, fields.get("csrf").map_or("", String::as_str)) {
                    return html(
                        StatusCode::FORBIDDEN,
                        view::message("Refused", "The form was stale or not made here; open the page again and retry."),
                    );
                }
                self.change_keys(&s, &id, &rest, &fields, now).await
            }
            (_, ["style.css"] | [] | ["login"] | ["logout"] | ["tenants", _] | ["tenants", _, "keys", ..]) => html(
                StatusCode::METHOD_NOT_ALLOWED,
                view::message("Method not allowed", "This address does not take that method."),
            ),
            _ => not_found(),
        }
    }

    /// May this session see tenant `id`'s page?
    fn may_see(&self, s: &Session, id: &str) -> bool {
        match &s.who {
            Who::Admin => true,
            Who::Viewer { tenant, .. } => tenant == id,
        }
    }

    /// `POST /dashboard/login`: the admin token or a viewer key starts a session; anything else
    /// gets the form again (and an address that keeps guessing is slowed down like the API's).
    async fn sign_in<B>(
        &self,
        sessions: &Sessions,
        failures: &AdminFailures,
        req: Request<B>,
        now: u64,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let (secure, ip) = (forwarded_https(&req), crate::core::peer_ip(&req));
        let nonce = req
            .headers()
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|h| session::named_cookie(h, session::LOGIN_COOKIE))
            .unwrap_or("")
            .to_string();
        let fields = match super::read_capped(req.into_body(), MAX_FORM).await {
            Ok(b) => form(&b),
            Err(refused) => return refused,
        };
        // A throttled address learns nothing from its guess: the form again, with the wait.
        let throttled = |secs: u64| {
            let mut rsp = self.sign_in_form(
                sessions,
                StatusCode::TOO_MANY_REQUESTS,
                Some("Too many failed attempts; retry later"),
                secure,
            );
            rsp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            rsp
        };
        if let Some(secs) = failures.throttled(ip) {
            return throttled(secs);
        }
        // Login CSRF: only a form this listener served, in this browser, signs it in.
        if !sessions.login_csrf_ok(&nonce, fields.get("login_csrf").map_or("", String::as_str)) {
            return self.sign_in_form(
                sessions,
                StatusCode::FORBIDDEN,
                Some("The sign-in form was stale or not made here; sign in again"),
                secure,
            );
        }
        let presented = fields.get("token").map_or("", |t| t.trim());
        let who = if self
            .token
            .as_ref()
            .is_some_and(|t| crate::policy::secret::constant_time_eq(presented.as_bytes(), t.expose().as_bytes()))
        {
            Some(Who::Admin)
        } else {
            let runtime = self.gateway.current();
            runtime
                .tenants
                .lookup(presented)
                .filter(|e| e.scope == Scope::Viewer && !e.tenant.disabled)
                .map(|e| Who::Viewer { tenant: e.tenant.id.to_string(), key_id: e.key_id.to_string() })
        };
        let Some(who) = who else {
            if let Err(secs) = failures.failed(ip) {
                return throttled(secs);
            }
            tracing::info!(target: "audit", action = "dashboard.sign_in", result = "refused", "dashboard sign-in refused");
            // An app's key is a key, just not one for this page: say which one is.
            let api_key = self.gateway.current().tenants.lookup(presented).is_some();
            let why = if api_key {
                "That is an API key, for apps: the dashboard takes a viewer key (ask an admin to issue one) or the admin token"
            } else {
                "Invalid credentials"
            };
            return self.sign_in_form(sessions, StatusCode::UNAUTHORIZED, Some(why), secure);
        };
        let (role, tenant) = match &who {
            Who::Admin => ("admin", None),
            Who::Viewer { tenant, .. } => ("viewer", Some(tenant.as_str())),
        };
        tracing::info!(target: "audit", action = "dashboard.sign_in", role, tenant, result = "ok", "dashboard sign-in");
        let value = sessions.issue(&who, now);
        let mut rsp = see_other("/dashboard");
        set_cookie(&mut rsp, session::COOKIE, &value, session::LIFETIME_MS / 1000, secure);
        rsp
    }

    async fn overview(&self, s: &Session, now: u64) -> Result<maud::Markup, StoreError> {
        let store = self.gateway.store();
        let runtime = self.gateway.current();
        let month = month_of(now);
        let totals = store.month_totals(&month).await?;
        let balance = store.balance().await?;
        let holds = store.hold_totals().await?;
        let outbox = store.outbox_stats().await?;
        let shared_pass = store.reconciler_last_pass().await?;
        let mut in_flight: HashMap<String, u64> = HashMap::new();
        for h in store.open_holds().await? {
            *in_flight.entry(h.tenant.to_string()).or_default() += 1;
        }
        let budgets: HashMap<&str, Option<Usd>> =
            runtime.tenants.tenants().iter().map(|t| (&*t.id, t.monthly_budget)).collect();
        let (alerts, balance_alert) =
            self.alerts_sent(budgets.iter().filter(|(_, b)| b.is_some()).map(|(id, _)| *id), &month).await?;
        // Every tenant, and the owners of this month's money that are no longer configured
        // (as the usage report lists them).
        let mut ids: Vec<&str> = budgets.keys().copied().chain(totals.keys().map(String::as_str)).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut rows: Vec<view::TenantRow> = ids
            .into_iter()
            .map(|id| {
                let t = totals.get(id).copied().unwrap_or_default();
                let budget = budgets.get(id).copied().flatten();
                let used = t.used();
                view::TenantRow {
                    id: id.to_string(),
                    budget,
                    spent: t.spent,
                    held: t.held,
                    unknown: t.unknown,
                    remaining: budget.map(|b| (b - used).max_zero()),
                    share: budget.map(|b| if b.micros() > 0 { used.micros() as f64 / b.micros() as f64 } else { 1.0 }),
                    in_flight: in_flight.get(id).copied().unwrap_or(0),
                    alerts: alerts.get(id).cloned().unwrap_or_default(),
                }
            })
            .collect();
        rows.sort_by(|a, b| b.share.unwrap_or(-1.0).total_cmp(&a.share.unwrap_or(-1.0)).then_with(|| a.id.cmp(&b.id)));
        Ok(view::overview(&view::Overview {
            month,
            balance: balance.map(|b| b.amount),
            held: holds.open_amount,
            unknown: holds.unknown_amount,
            rows,
            backlog: outbox.pending,
            oldest_pending_secs: outbox.oldest_pending_ms.map(|ms| now.saturating_sub(ms) / 1000),
            dead: outbox.dead,
            alerts_on: self.gateway.alerts.is_some(),
            reconciled_secs_ago: match self
                .gateway
                .reconciled_ms
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(shared_pass.unwrap_or(0))
            {
                0 => None,
                ms => Some(now.saturating_sub(ms) / 1000),
            },
            balance_alert,
            // Made before any page is: `route` asks for it first.
            csrf: self.sessions.get().map(|k| k.csrf(s)).unwrap_or_default(),
            currency: self.currency.clone(),
        }))
    }

    /// The budget thresholds each of `tenants` has had an alert for in `month`, and whether the
    /// low-balance alert stands; nothing without `[alerts]`.
    async fn alerts_sent<'a>(
        &self,
        tenants: impl Iterator<Item = &'a str>,
        month: &str,
    ) -> Result<(HashMap<String, Vec<f64>>, bool), StoreError> {
        use crate::background::alerts::{budget_key, BALANCE_KEY};
        let Some(cfg) = &self.gateway.alerts else { return Ok((HashMap::new(), false)) };
        let asked: Vec<(String, f64)> =
            tenants.flat_map(|t| cfg.thresholds.iter().map(move |&th| (t.to_string(), th))).collect();
        let mut keys: Vec<String> = asked.iter().map(|(t, th)| budget_key(t, month, *th)).collect();
        keys.push(BALANCE_KEY.to_string());
        let mut marked = self.gateway.store().alerts_marked(&keys).await?;
        let balance = marked.pop().unwrap_or(false) && cfg.balance_below.is_some();
        let mut out: HashMap<String, Vec<f64>> = HashMap::new();
        for ((t, th), sent) in asked.into_iter().zip(marked) {
            if sent {
                out.entry(t).or_default().push(th);
            }
        }
        Ok((out, balance))
    }

    async fn tenant_page(
        &self,
        s: &Session,
        id: &str,
        new_key: Option<String>,
        notice: Option<String>,
        now: u64,
    ) -> Response<Body> {
        let runtime = self.gateway.current();
        let Some(tenant) = runtime.tenants.tenants().iter().find(|t| &*t.id == id).cloned() else {
            return not_found();
        };
        match self.tenant_data(s, &tenant, new_key, notice, now).await {
            Ok(page) => html(StatusCode::OK, view::tenant(&page)),
            Err(e) => unavailable(&e),
        }
    }

    async fn tenant_data(
        &self,
        s: &Session,
        tenant: &crate::policy::tenants::Tenant,
        new_key: Option<String>,
        notice: Option<String>,
        now: u64,
    ) -> Result<view::TenantPage, StoreError> {
        let store = self.gateway.store();
        let runtime = self.gateway.current();
        let id = &*tenant.id;
        let month = month_of(now);
        let t = store.month_totals(&month).await?.get(id).copied().unwrap_or_default();
        let today = now as i64 / DAY_MS;
        let rollups = store.daily(id, today - (CHART_DAYS - 1), today).await?;
        let mut by_day: HashMap<i64, Usd> = HashMap::new();
        let mut failures: std::collections::BTreeMap<String, view::FamilyFailures> = Default::default();
        let month_start = month_bounds(&month).map_or(today, |(start, _)| start as i64 / DAY_MS);
        for d in &rollups {
            *by_day.entry(d.day).or_insert(Usd::ZERO) += d.spent();
            if d.day >= month_start {
                let f = failures.entry(d.family.clone()).or_insert_with(|| view::FamilyFailures {
                    family: d.family.clone(),
                    generations: 0,
                    failed: [0; 3],
                });
                f.generations += d.generations;
                for r in Reason::ALL {
                    f.failed[r.index()] += d.failed[r.index()];
                }
            }
        }
        let days = (today - (CHART_DAYS - 1)..=today)
            .map(|d| (date(d), by_day.get(&d).copied().unwrap_or(Usd::ZERO)))
            .collect();
        let in_flight = store.open_holds().await?.iter().filter(|h| &*h.tenant == id).count() as u64;
        let alerts = self
            .alerts_sent(std::iter::once(id).filter(|_| tenant.monthly_budget.is_some()), &month)
            .await?
            .0
            .remove(id);
        let latest = store
            .latest_generations(id, runtime.catalog.families(), LATEST)
            .await?
            .into_iter()
            .map(|(r, f)| {
                let time = super::tenants::rfc3339(r.created_ms.max(0) as u64);
                (r, f, time)
            })
            .collect();
        let keys = match super::tenants::answer(&self.gateway, &Method::GET, &format!("/admin/tenants/{id}"), None, b"")
            .await
        {
            Some(Ok((_, Some(v)))) => key_rows(&v),
            Some(Err((StatusCode::SERVICE_UNAVAILABLE, detail))) => return Err(StoreError(detail)),
            _ => Vec::new(),
        };
        let admin = s.who == Who::Admin;
        Ok(view::TenantPage {
            id: id.to_string(),
            admin,
            // One kind of team: keys are issued to config-file teams too (kept in their overlay).
            manage_keys: admin && runtime.tenants.source(id).is_some(),
            // Made before any page is: `route` asks for it first.
            csrf: self.sessions.get().map(|k| k.csrf(s)).unwrap_or_default(),
            currency: self.currency.clone(),
            budget: tenant.monthly_budget,
            spent: t.spent,
            held: t.held,
            unknown: t.unknown,
            refunded: t.refunded,
            remaining: tenant.monthly_budget.map(|b| t.remaining(b)),
            projection: projection(t.spent, &month, now),
            month,
            in_flight,
            alerts: self.gateway.alerts.as_ref().map(|_| alerts.unwrap_or_default()),
            days,
            failures: failures.into_values().collect(),
            keys,
            latest,
            new_key,
            notice,
        })
    }

    /// The key forms: `keys` (issue), `keys/{key}/rotate`, `keys/{key}/revoke`, made through
    /// the admin API's code; the page comes back with the outcome (a new key shown once).
    async fn change_keys(
        &self,
        s: &Session,
        id: &str,
        rest: &[String],
        fields: &HashMap<String, String>,
        now: u64,
    ) -> Response<Body> {
        let (method, path, body) = match rest {
            [] => {
                let label = fields.get("label").map(|l| l.trim()).filter(|l| !l.is_empty());
                let scope = fields.get("scope").map_or("api", String::as_str);
                (
                    Method::POST,
                    format!("/admin/tenants/{id}/keys"),
                    serde_json::json!({ "label": label, "scope": scope }),
                )
            }
            [key, action] if action == "rotate" => {
                (Method::POST, format!("/admin/tenants/{id}/keys/{key}/rotate"), serde_json::json!({}))
            }
            [key, action] if action == "revoke" => {
                (Method::DELETE, format!("/admin/tenants/{id}/keys/{key}"), Value::Null)
            }
            _ => return not_found(),
        };
        let bytes = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
        let (new_key, notice) = match super::tenants::answer(&self.gateway, &method, &path, None, &bytes).await {
            Some(Ok((_, Some(v)))) => {
                let key = v.get("key").and_then(Value::as_str).map(str::to_string);
                let what = match rest.last().map(String::as_str) {
                    Some("rotate") => "Rotated: the old key keeps working for its grace period (24 h).",
                    Some("revoke") => "Revoked.",
                    _ => "Issued.",
                };
                (key, Some(what.to_string()))
            }
            Some(Ok((_, None))) => (None, Some("Revoked.".to_string())),
            Some(Err((status, detail))) => (None, Some(format!("Refused ({}): {detail}", status.as_u16()))),
            None => return not_found(),
        };
        self.tenant_page(s, id, new_key, notice, now).await
    }
}

/// Did the request come through a TLS proxy (`X-Forwarded-Proto: https`)? The admin port itself
/// is plain HTTP; a session cookie that crossed TLS is marked `Secure`.
fn forwarded_https<B>(req: &Request<B>) -> bool {
    req.headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// The key rows of an admin API tenant document.
fn key_rows(v: &Value) -> Vec<view::KeyRow> {
    let text = |k: &Value, f: &str| k.get(f).and_then(Value::as_str).map(str::to_string);
    v.get("keys")
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .map(|k| view::KeyRow {
                    id: text(k, "id").unwrap_or_default(),
                    prefix: text(k, "prefix"),
                    label: text(k, "label"),
                    scope: text(k, "scope").unwrap_or_default(),
                    state: text(k, "state").unwrap_or_default(),
                    created: text(k, "created_at"),
                    expires: text(k, "expires_at"),
                    last_used: text(k, "last_used_at"),
                    in_file: text(k, "source").as_deref() == Some("config"),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projections_and_dates() {
        let (start, end) = month_bounds("2026-11").unwrap();
        assert_eq!(date(start as i64 / DAY_MS), "2026-11-01");
        assert_eq!(date(end as i64 / DAY_MS), "2026-12-01");
        assert_eq!(month_bounds("2026-12").map(|(_, e)| date(e as i64 / DAY_MS)).as_deref(), Some("2027-01-01"));
        // 10 days into a 30-day month with 1.00 spent: 3.00 at that pace.
        let p = projection(Usd::parse("1.00").unwrap(), "2026-11", start + 10 * DAY_MS as u64);
        assert_eq!(p, Usd::parse("3.00").unwrap());
        assert_eq!(projection(Usd::ZERO, "2026-11", start + 1), Usd::ZERO);
    }
}
