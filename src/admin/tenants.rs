//! Teams and keys at runtime: `/admin/tenants…` and `/admin/audit`.
//!
//! Config-file tenants are listed and never changed here (409: the file manages them). API
//! tenants live in the store as one document each, written with a revision check so two admins
//! (or two replicas) never overwrite each other; every replica's directory follows the store
//! within a second (`gateway/directory.rs`). A key is shown once, in the answer that made it;
//! the store and the audit trail only ever see its digest, id and 8-character prefix.

use http::{Method, Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::config::{DEFAULT_BURST, DEFAULT_GPM, DEFAULT_RPS};
use crate::core::Shared;
use crate::policy::keys::{valid_tenant_id, ApiKey, ApiTenant, KeyState, Scope};
use crate::policy::money::Usd;
use crate::server::body::{self, Body};
use crate::store::{now_ms, StoreError};

/// Largest admin request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest limit, in-flight cap and grace accepted.
const MAX_LIMIT: u64 = 1_000_000;
const MAX_GRACE_SECS: u64 = 30 * 86_400;
const DEFAULT_GRACE_SECS: u64 = 86_400;
const MAX_LABEL: usize = 200;
/// Conditional writes retried this often when another change lands between read and write.
const WRITE_ATTEMPTS: usize = 5;

/// An admin API answer that is not a success.
#[derive(Debug)]
struct Refused(StatusCode, String);

impl Refused {
    fn field(field: &str, why: &str) -> Refused {
        Refused(StatusCode::UNPROCESSABLE_ENTITY, format!("{field}: {why}"))
    }
    fn store(e: StoreError) -> Refused {
        tracing::warn!(error = %e, "admin tenants: store unreachable");
        Refused(StatusCode::SERVICE_UNAVAILABLE, "Store unavailable".into())
    }
    fn not_found() -> Refused {
        Refused(StatusCode::NOT_FOUND, "Tenant not found".into())
    }
    fn managed_by_file() -> Refused {
        Refused(StatusCode::CONFLICT, "Tenant is managed by the config file".into())
    }
}

type Answer = Result<(StatusCode, Option<Value>), Refused>;

pub(crate) use crate::store::rfc3339;

fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, Refused> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Refused(StatusCode::BAD_REQUEST, "Request body must be a JSON object".into())),
        Err(e) => Err(Refused(StatusCode::BAD_REQUEST, format!("Invalid JSON body: {e}"))),
    }
}

fn only(body: &Map<String, Value>, allowed: &[&str]) -> Result<(), Refused> {
    match body.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(Refused::field(k, &format!("unknown field (accepted: {})", allowed.join(", ")))),
        None => Ok(()),
    }
}

fn whole(body: &Map<String, Value>, field: &str, min: u64, max: u64) -> Result<Option<u64>, Refused> {
    match body.get(field) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| (min..=max).contains(n))
            .map(Some)
            .ok_or_else(|| Refused::field(field, &format!("must be a whole number from {min} to {max}"))),
    }
}

/// `null`, or a non-negative amount with at most 4 decimals (string or number).
fn budget(v: &Value) -> Result<Option<Usd>, Refused> {
    let bad = || {
        Refused::field(
            "monthly_budget",
            "must be null or a non-negative amount with at most 4 decimals, like \"50.00\"",
        )
    };
    let text = match v {
        Value::Null => return Ok(None),
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return Err(bad()),
    };
    let decimal: rust_decimal::Decimal = text.parse().map_err(|_| bad())?;
    if decimal.is_sign_negative() || decimal.normalize().scale() > 4 {
        return Err(bad());
    }
    Usd::parse(&text).map(Some).map_err(|_| bad())
}

fn key_view(k: &ApiKey, last_used: Option<u64>, now: u64) -> Value {
    json!({
        "id": k.id,
        "prefix": k.prefix,
        "label": k.label,
        "scope": k.scope.as_str(),
        "created_at": rfc3339(k.created_ms),
        "expires_at": k.ends_ms().map(rfc3339),
        "last_used_at": last_used.map(rfc3339),
        "state": k.state(now).as_str(),
        "families": k.families,
        "max_price": k.max_price_micros.map(|m| Usd::from_micros(m).to_string()),
    })
}

fn api_view(t: &ApiTenant, used: &std::collections::HashMap<String, u64>, now: u64) -> Value {
    json!({
        "id": t.id,
        "source": "api",
        "disabled": t.disabled,
        "requests_per_second": t.requests_per_second,
        "burst": t.burst,
        "generations_per_minute": t.generations_per_minute,
        "monthly_budget": t.monthly_budget().map(|b| b.to_string()),
        "max_in_flight": t.max_in_flight,
        "keys": t.keys.iter().map(|k| key_view(k, used.get(&k.id).copied(), now)).collect::<Vec<_>>(),
    })
}

fn config_view(
    gw: &Shared,
    t: &crate::policy::tenants::Tenant,
    used: &std::collections::HashMap<String, u64>,
) -> Value {
    let runtime = gw.current();
    let overlay = runtime.api.iter().find(|d| d.tenant.overlay && d.tenant.id == *t.id && !d.tenant.is_deleted());
    let mut keys: Vec<Value> = runtime
        .config_tenants
        .config_key_ids(&t.id)
        .iter()
        .map(|id| {
            json!({ "id": &**id, "prefix": null, "label": null, "scope": "api", "created_at": null, "expires_at": null,
                    "last_used_at": used.get(&**id).copied().map(rfc3339), "state": "active", "source": "config" })
        })
        .collect();
    // Keys issued at runtime (viewer keys for the team's dashboard, say), revocable by id.
    let now = now_ms();
    keys.extend(overlay.into_iter().flat_map(|d| d.tenant.keys.iter()).map(|k| {
        let mut v = key_view(k, used.get(&k.id).copied(), now);
        v["source"] = json!("api");
        v
    }));
    json!({
        "id": &*t.id,
        "source": "config",
        "disabled": overlay.is_some_and(|d| d.tenant.disabled),
        "requests_per_second": t.limits.requests_per_second.get(),
        "burst": t.limits.burst.get(),
        "generations_per_minute": t.limits.generations_per_minute.get(),
        "monthly_budget": t.monthly_budget.map(|b| b.to_string()),
        "max_in_flight": t.max_in_flight,
        "keys": keys,
    })
}

/// The audit line of one change: never a key or a token.
async fn audit(gw: &Shared, action: &str, tenant: &str, key: Option<&ApiKey>, result: &str) {
    let (key_id, key_prefix) = (key.map(|k| k.id.as_str()), key.map(|k| k.prefix.as_str()));
    tracing::info!(target: "audit", action, tenant, key_id, key_prefix, result, "admin change");
    let line = json!({ "time": rfc3339(now_ms()), "action": action, "tenant": tenant, "key_id": key_id, "key_prefix": key_prefix, "result": result });
    if let Err(e) = gw.store().audit_push(&line.to_string()).await {
        tracing::warn!(error = %e, action, tenant, "could not keep the audit line in the store (it is in the log)");
    }
}

/// Serves `/admin/tenants…` and `/admin/audit` (after the admin token was checked); `None` for
/// any other path.
pub(super) async fn route(
    gw: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Option<Response<Body>> {
    Some(match answer(gw, method, path, query, body).await? {
        Ok((status, Some(v))) => body::json(status, v.to_string()),
        Ok((status, None)) => {
            let mut rsp = body::json(status, "");
            rsp.headers_mut().remove(http::header::CONTENT_TYPE);
            rsp
        }
        Err((status, detail)) => body::detail(status, &detail),
    })
}

/// What `route` answers, before it becomes a response: the dashboard's forms make the same
/// changes through here (same checks, same audit lines) and render the outcome as a page.
pub(crate) async fn answer(
    gw: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Option<Result<(StatusCode, Option<Value>), (StatusCode, String)>> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    let answer = match (method, parts.as_slice()) {
        (&Method::GET, ["audit"]) => audit_list(gw, query).await,
        (_, ["audit"]) => Err(Refused(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed".into())),
        (&Method::GET, ["tenants"]) => list(gw).await,
        (&Method::POST, ["tenants"]) => create(gw, body).await,
        (&Method::GET, ["tenants", id]) => show(gw, id).await,
        (&Method::PATCH, ["tenants", id]) => update(gw, id, body).await,
        (&Method::DELETE, ["tenants", id]) => delete(gw, id).await,
        (&Method::POST, ["tenants", id, "keys"]) => issue(gw, id, body).await,
        (&Method::POST, ["tenants", id, "keys", key, "rotate"]) => rotate(gw, id, key, body).await,
        (&Method::DELETE, ["tenants", id, "keys", key]) => revoke(gw, id, key).await,
        (&Method::PATCH, ["tenants", id, "keys", key]) => update_key(gw, id, key, body).await,
        (_, ["tenants", ..]) => Err(Refused(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed".into())),
        _ => return None,
    };
    Some(answer.map_err(|Refused(status, detail)| (status, detail)))
}

async fn audit_list(gw: &Shared, query: Option<&str>) -> Answer {
    let limit = match crate::server::query::param(query, "limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| Refused::field("limit", "must be a whole number from 1 to 1000"))?,
    };
    let lines = gw.store().audit_latest(limit).await.map_err(Refused::store)?;
    let items: Vec<Value> = lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    Ok((StatusCode::OK, Some(Value::Array(items))))
}

async fn list(gw: &Shared) -> Answer {
    let (_, docs) = gw.store().directory().await.map_err(Refused::store)?;
    let used = gw.store().keys_last_used().await.map_err(Refused::store)?;
    let now = now_ms();
    let runtime = gw.current();
    let mut out: Vec<Value> = runtime.config_tenants.tenants().iter().map(|t| config_view(gw, t, &used)).collect();
    out.extend(
        docs.iter()
            .filter(|d| !d.tenant.is_deleted() && runtime.config_tenants.source(&d.tenant.id).is_none())
            .map(|d| api_view(&d.tenant, &used, now)),
    );
    Ok((StatusCode::OK, Some(Value::Array(out))))
}

async fn show(gw: &Shared, id: &str) -> Answer {
    let used = gw.store().keys_last_used().await.map_err(Refused::store)?;
    let runtime = gw.current();
    if let Some(t) = runtime.config_tenants.tenants().iter().find(|t| &*t.id == id) {
        return Ok((StatusCode::OK, Some(config_view(gw, t, &used))));
    }
    let doc = gw
        .api_tenant(id)
        .await
        .map_err(Refused::store)?
        .filter(|d| !d.tenant.is_deleted())
        .ok_or_else(Refused::not_found)?;
    Ok((StatusCode::OK, Some(api_view(&doc.tenant, &used, now_ms()))))
}

/// Applies the tenant settings in `body` to `t` (create and update share the rules).
/// A new rate without a burst: a new team gets the file's default (`max(40, rate)`); a team's
/// update keeps its burst-to-rate ratio, so lowering the rate lowers the burst too (before,
/// `--rps 5` kept a burst of 40).
fn apply_settings(t: &mut ApiTenant, body: &Map<String, Value>, creating: bool) -> Result<(), Refused> {
    if let Some(n) = whole(body, "requests_per_second", 1, MAX_LIMIT)? {
        let old = u64::from(t.requests_per_second.max(1));
        t.requests_per_second = n as u32;
        if !body.contains_key("burst") {
            t.burst = if creating {
                DEFAULT_BURST.max(t.requests_per_second)
            } else {
                (u64::from(t.burst) * n).div_ceil(old).clamp(1, MAX_LIMIT) as u32
            };
        }
    }
    if let Some(n) = whole(body, "burst", 1, MAX_LIMIT)? {
        t.burst = n as u32;
    }
    if let Some(n) = whole(body, "generations_per_minute", 1, MAX_LIMIT)? {
        t.generations_per_minute = n as u32;
    }
    if let Some(v) = body.get("monthly_budget") {
        t.monthly_budget_micros = budget(v)?.map(Usd::micros);
    }
    match body.get("max_in_flight") {
        None => {}
        Some(Value::Null) => t.max_in_flight = None,
        Some(_) => t.max_in_flight = whole(body, "max_in_flight", 1, MAX_LIMIT)?.map(|n| n as u32),
    }
    if let Some(v) = body.get("disabled") {
        t.disabled = v.as_bool().ok_or_else(|| Refused::field("disabled", "must be true or false"))?;
    }
    Ok(())
}

const SETTINGS: &[&str] =
    &["requests_per_second", "burst", "generations_per_minute", "monthly_budget", "max_in_flight"];

async fn create(gw: &Shared, bytes: &[u8]) -> Answer {
    let body = parse_object(bytes)?;
    let mut allowed = vec!["id"];
    allowed.extend_from_slice(SETTINGS);
    only(&body, &allowed)?;
    let id = match body.get("id") {
        Some(Value::String(s)) if valid_tenant_id(s) => s.clone(),
        Some(_) => return Err(Refused::field("id", "must match [a-z0-9][a-z0-9_-]{0,63}")),
        None => return Err(Refused::field("id", "is required")),
    };
    let mut t = ApiTenant {
        id: id.clone(),
        requests_per_second: DEFAULT_RPS,
        burst: DEFAULT_BURST,
        generations_per_minute: DEFAULT_GPM,
        monthly_budget_micros: None,
        max_in_flight: None,
        disabled: false,
        created_ms: now_ms(),
        keys: Vec::new(),
        deleted_ms: None,
        overlay: false,
    };
    t.burst = DEFAULT_BURST.max(t.requests_per_second);
    apply_settings(&mut t, &body, true)?;
    if gw.current().config_tenants.source(&id).is_some() {
        audit(gw, "tenant.create", &id, None, "conflict: managed by the config file").await;
        return Err(Refused::managed_by_file());
    }
    if !gw.put_api_tenant(&id, 0, Some(&t)).await.map_err(Refused::store)? {
        if gw.api_tenant(&id).await.map_err(Refused::store)?.is_some_and(|d| d.tenant.is_deleted()) {
            audit(gw, "tenant.create", &id, None, "conflict: id retired").await;
            return Err(Refused(
                StatusCode::CONFLICT,
                format!("Tenant id `{id}` belonged to a deleted tenant and is never reused (its generations and spend stay with it); choose another id"),
            ));
        }
        audit(gw, "tenant.create", &id, None, "conflict: exists").await;
        return Err(Refused(StatusCode::CONFLICT, "Tenant already exists".into()));
    }
    audit(gw, "tenant.create", &id, None, "ok").await;
    Ok((StatusCode::CREATED, Some(api_view(&t, &Default::default(), now_ms()))))
}

/// Reads API tenant `id`, changes it with `change`, writes it back if nobody changed it in
/// between (retrying otherwise). `change` returns what to answer, and `None` to delete.
async fn modify<T>(
    gw: &Shared,
    id: &str,
    mut change: impl FnMut(&mut ApiTenant) -> Result<(bool, T), Refused>,
) -> Result<(Option<ApiTenant>, T), Refused> {
    // A config-file tenant is changed through its overlay: its runtime keys and `disabled`.
    let file = gw.current().config_tenants.source(id).is_some();
    for _ in 0..WRITE_ATTEMPTS {
        let found = gw.api_tenant(id).await.map_err(Refused::store)?.filter(|d| !d.tenant.is_deleted());
        let (rev, mut t) = match (found, file) {
            (Some(doc), false) if !doc.tenant.overlay => (doc.rev, doc.tenant),
            (Some(doc), true) if doc.tenant.overlay => (doc.rev, doc.tenant),
            (None, true) => (0, ApiTenant::overlay_of(id, now_ms())),
            (Some(_), true) => return Err(Refused::managed_by_file()),
            _ => return Err(Refused::not_found()),
        };
        let (keep, out) = change(&mut t)?;
        let next = keep.then_some(t);
        if gw.put_api_tenant(id, rev, next.as_ref()).await.map_err(Refused::store)? {
            return Ok((next, out));
        }
    }
    Err(Refused(StatusCode::CONFLICT, "Tenant changed concurrently; retry".into()))
}

async fn update(gw: &Shared, id: &str, bytes: &[u8]) -> Answer {
    let body = parse_object(bytes)?;
    let mut allowed = SETTINGS.to_vec();
    allowed.push("disabled");
    only(&body, &allowed)?;
    // A file tenant's limits and budget are the file's; the API may only disable or enable it.
    let file = gw.current().config_tenants.source(id).is_some();
    if file && body.keys().any(|k| k != "disabled") {
        return finish(gw, "tenant.update", id, None, Err(Refused::managed_by_file())).await;
    }
    let result = modify(gw, id, |t| apply_settings(t, &body, false).map(|()| (true, ()))).await;
    let action = match body.get("disabled").and_then(Value::as_bool) {
        Some(true) => "tenant.disable",
        Some(false) => "tenant.enable",
        None => "tenant.update",
    };
    finish(gw, action, id, None, result.map(|(t, ())| t)).await?;
    show(gw, id).await
}

/// Deleting leaves a tombstone: keys revoked, the id retired for good.
async fn delete(gw: &Shared, id: &str) -> Answer {
    if gw.current().config_tenants.source(id).is_some() {
        return finish(gw, "tenant.delete", id, None, Err(Refused::managed_by_file())).await;
    }
    let now = now_ms();
    let result = modify(gw, id, |t| {
        t.deleted_ms = Some(now);
        t.disabled = true;
        for k in &mut t.keys {
            k.revoked_ms.get_or_insert(now);
        }
        Ok((true, ()))
    })
    .await;
    finish(gw, "tenant.delete", id, None, result.map(|_| None::<ApiTenant>))
        .await
        .map(|_| (StatusCode::NO_CONTENT, None))
}

/// Writes the audit line of a change's result and passes it on.
async fn finish<T>(
    gw: &Shared,
    action: &str,
    id: &str,
    key: Option<&ApiKey>,
    result: Result<T, Refused>,
) -> Result<T, Refused> {
    match &result {
        Ok(_) => audit(gw, action, id, key, "ok").await,
        Err(Refused(status, _)) if *status != StatusCode::SERVICE_UNAVAILABLE => {
            audit(gw, action, id, key, &format!("refused: {}", status.as_u16())).await
        }
        Err(_) => {}
    }
    result
}

fn new_key_view(k: &ApiKey, key: &str) -> Value {
    json!({
        "id": k.id,
        "key": key,
        "prefix": k.prefix,
        "label": k.label,
        "scope": k.scope.as_str(),
        "created_at": rfc3339(k.created_ms),
        "expires_at": k.ends_ms().map(rfc3339),
        "families": k.families,
        "max_price": k.max_price_micros.map(|m| Usd::from_micros(m).to_string()),
    })
}

/// A key's `families` and `max_price` from a request body (absent: unchanged; `null`: none).
fn key_limits(gw: &Shared, k: &mut ApiKey, body: &Map<String, Value>) -> Result<(), Refused> {
    match body.get("families") {
        None => {}
        Some(Value::Null) => k.families = None,
        Some(Value::Array(items)) if !items.is_empty() => {
            let catalog = gw.current().catalog.clone();
            let mut out = Vec::new();
            for item in items {
                let Some(path) = item.as_str().filter(|p| catalog.get(p).is_some()) else {
                    return Err(Refused::field(
                        "families",
                        &format!("{item} is not a family of this gateway's catalog"),
                    ));
                };
                if !out.iter().any(|x| x == path) {
                    out.push(path.to_string());
                }
            }
            k.families = Some(out);
        }
        Some(_) => {
            return Err(Refused::field(
                "families",
                "must be null or a non-empty array of family paths, like [\"sora\"]",
            ))
        }
    }
    match body.get("max_price") {
        None => {}
        Some(Value::Null) => k.max_price_micros = None,
        Some(v) => match budget(v) {
            Ok(Some(p)) if p > Usd::ZERO => k.max_price_micros = Some(p.micros()),
            _ => {
                return Err(Refused::field(
                    "max_price",
                    "must be null or an amount above zero with at most 4 decimals, like \"0.50\"",
                ))
            }
        },
    }
    Ok(())
}

/// `PATCH /admin/tenants/{id}/keys/{key_id}`: a key's `families` and `max_price`.
async fn update_key(gw: &Shared, id: &str, key_id: &str, bytes: &[u8]) -> Answer {
    refuse_file_key(gw, id, key_id)?;
    let body = parse_object(bytes)?;
    only(&body, &["families", "max_price"])?;
    let mut changed = None;
    let result = modify(gw, id, |t| {
        let k = key_mut(t, key_id)?;
        key_limits(gw, k, &body)?;
        changed = Some(k.clone());
        Ok((true, ()))
    })
    .await;
    let key = changed.clone().unwrap_or_else(|| ApiKey { id: key_id.to_string(), ..placeholder_key() });
    finish(gw, "key.update", id, Some(&key), result).await?;
    let used = gw.store().keys_last_used().await.map_err(Refused::store)?;
    Ok((StatusCode::OK, changed.map(|k| key_view(&k, used.get(&k.id).copied(), now_ms()))))
}

async fn issue(gw: &Shared, id: &str, bytes: &[u8]) -> Answer {
    let body = parse_object(bytes)?;
    only(&body, &["label", "expires_at", "scope", "families", "max_price"])?;
    let now = now_ms();
    let label = match body.get("label") {
        None | Some(Value::Null) => None,
        // Control characters would reach operators' terminals raw (`tollgate tenants show`).
        Some(Value::String(s)) if s.chars().count() <= MAX_LABEL && !s.chars().any(char::is_control) => Some(s.clone()),
        Some(_) => {
            return Err(Refused::field(
                "label",
                &format!("must be a string of at most {MAX_LABEL} characters, without control characters"),
            ))
        }
    };
    let expires_ms = match body.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| Refused::field("expires_at", "must be an RFC 3339 time like 2027-01-31T00:00:00Z"))?;
            let ms = (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
            if ms <= now {
                return Err(Refused::field("expires_at", "must be in the future"));
            }
            Some(ms)
        }
        Some(_) => return Err(Refused::field("expires_at", "must be an RFC 3339 time like 2027-01-31T00:00:00Z")),
    };
    let scope = match body.get("scope") {
        None | Some(Value::Null) => Scope::Api,
        Some(Value::String(s)) if s == "api" => Scope::Api,
        Some(Value::String(s)) if s == "viewer" => Scope::Viewer,
        Some(_) => return Err(Refused::field("scope", "must be \"api\" or \"viewer\"")),
    };
    let (mut record, key) = ApiKey::issue(label, scope, expires_ms, now);
    key_limits(gw, &mut record, &body)?;
    let result = modify(gw, id, |t| {
        t.keys.push(record.clone());
        Ok((true, ()))
    })
    .await;
    finish(gw, "key.issue", id, Some(&record), result).await?;
    Ok((StatusCode::CREATED, Some(new_key_view(&record, &key))))
}

async fn rotate(gw: &Shared, id: &str, key_id: &str, bytes: &[u8]) -> Answer {
    refuse_file_key(gw, id, key_id)?;
    let body = parse_object(bytes)?;
    only(&body, &["grace_secs"])?;
    let grace = whole(&body, "grace_secs", 0, MAX_GRACE_SECS)?.unwrap_or(DEFAULT_GRACE_SECS);
    let now = now_ms();
    let (mut made, mut old_prefix) = (None, String::new());
    let result = modify(gw, id, |t| {
        let old = key_mut(t, key_id)?;
        old_prefix = old.prefix.clone();
        if !old.works(now) {
            return Err(Refused(
                StatusCode::CONFLICT,
                format!("Key is {}; issue a new one instead", old.state(now).as_str()),
            ));
        }
        let end = now + grace * 1000;
        old.grace_until_ms = Some(old.grace_until_ms.map_or(end, |g| g.min(end)));
        let (mut record, key) = ApiKey::issue(old.label.clone(), old.scope, old.expires_ms, now);
        // The new key may do what the old one could, no more.
        (record.families, record.max_price_micros) = (old.families.clone(), old.max_price_micros);
        t.keys.push(record.clone());
        made = Some((record, key));
        Ok((true, ()))
    })
    .await;
    let old = ApiKey { id: key_id.to_string(), prefix: old_prefix, ..placeholder_key() };
    finish(gw, "key.rotate", id, Some(&old), result).await?;
    let (record, key) =
        made.ok_or_else(|| Refused(StatusCode::INTERNAL_SERVER_ERROR, "rotation made no key".into()))?;
    audit(gw, "key.issue", id, Some(&record), "ok").await;
    Ok((StatusCode::CREATED, Some(new_key_view(&record, &key))))
}

/// Key `key_id` of `t`, or 404.
fn key_mut<'a>(t: &'a mut ApiTenant, key_id: &str) -> Result<&'a mut ApiKey, Refused> {
    t.keys.iter_mut().find(|k| k.id == key_id).ok_or_else(|| Refused(StatusCode::NOT_FOUND, "Key not found".into()))
}

/// 409 for a key the config file lists: the file manages it.
fn refuse_file_key(gw: &Shared, id: &str, key_id: &str) -> Result<(), Refused> {
    if gw.current().config_tenants.config_key_ids(id).iter().any(|k| &**k == key_id) {
        return Err(Refused(
            StatusCode::CONFLICT,
            "Key is listed in the config file: remove its digest from keys_sha256 and reload".into(),
        ));
    }
    Ok(())
}

async fn revoke(gw: &Shared, id: &str, key_id: &str) -> Answer {
    refuse_file_key(gw, id, key_id)?;
    let now = now_ms();
    let mut prefix = String::new();
    let result = modify(gw, id, |t| {
        let k = key_mut(t, key_id)?;
        prefix = k.prefix.clone();
        if k.state(now) != KeyState::Revoked {
            k.revoked_ms = Some(now);
        }
        Ok((true, ()))
    })
    .await;
    let key = ApiKey { id: key_id.to_string(), prefix, ..placeholder_key() };
    finish(gw, "key.revoke", id, Some(&key), result).await?;
    Ok((StatusCode::NO_CONTENT, None))
}

/// A key record carrying only an id and prefix, for audit lines about a key by id.
fn placeholder_key() -> ApiKey {
    ApiKey {
        id: String::new(),
        digest: String::new(),
        prefix: String::new(),
        label: None,
        scope: Scope::Api,
        created_ms: 0,
        expires_ms: None,
        grace_until_ms: None,
        revoked_ms: None,
        families: None,
        max_price_micros: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_alone_sets_the_burst_by_the_files_rule_then_keeps_its_ratio() {
        let mut t = ApiTenant::overlay_of("x", 0);
        let body = |v: Value| v.as_object().unwrap().clone();
        (t.requests_per_second, t.burst) = (DEFAULT_RPS, DEFAULT_BURST);
        apply_settings(&mut t, &body(json!({ "requests_per_second": 5 })), false).unwrap();
        assert_eq!((t.requests_per_second, t.burst), (5, 10), "20/40 lowered to 5: burst 10, not 40");
        apply_settings(&mut t, &body(json!({ "requests_per_second": 50 })), false).unwrap();
        assert_eq!(t.burst, 100);
        apply_settings(&mut t, &body(json!({ "requests_per_second": 7, "burst": 3 })), false).unwrap();
        assert_eq!(t.burst, 3, "a burst given wins");
        (t.requests_per_second, t.burst) = (DEFAULT_RPS, DEFAULT_BURST);
        apply_settings(&mut t, &body(json!({ "requests_per_second": 5 })), true).unwrap();
        assert_eq!(t.burst, 40, "a new team: the file's default, max(40, rate)");
    }

    #[test]
    fn budgets_are_non_negative_with_at_most_four_decimals() {
        assert_eq!(budget(&json!("50.00")).ok().flatten(), Some(Usd::parse("50").unwrap()));
        assert_eq!(budget(&json!(12.5)).ok().flatten(), Some(Usd::parse("12.5").unwrap()));
        // 23 digits dropped the connection (a panic); now a 422 naming the field.
        for absurd in [json!("99999999999999999999999"), json!(99999999999999999999999u128 as f64), json!("1e40")] {
            assert!(budget(&absurd).is_err(), "{absurd}");
        }
        assert_eq!(budget(&json!("1.50000")).ok().flatten(), Some(Usd::parse("1.5").unwrap()));
        assert!(budget(&Value::Null).unwrap().is_none());
        for bad in [json!("-1"), json!("0.00001"), json!("ten"), json!(true), json!([])] {
            assert!(budget(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_600_000), "2026-01-01T00:00:00Z");
    }
}
