//! The stage handlers behind auth and the request rate limit, one per route kind.
//!
//! `generate` is the paid path of SPEC §4, straight down:
//! buffer (413) → parse + validate (400/422) → idempotency → generation limit (429) → price →
//! fresh balance → atomic hold (402) → forward → settle / release / mark unknown → respond.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode, Uri};
use sha2::{Digest, Sha256};

use crate::body::{self, content_length, read_limited, Body, ReadError};
use crate::error::GatewayError;
use crate::gateway::{Ctx, Gateway, Runtime};
use crate::policy::family::Family;
use crate::policy::money::Usd;
use crate::policy::rate_limit::LimitKind;
use crate::policy::tenants::Tenant;
use crate::policy::validate::{parse_object, validate};
use crate::status_cache::{CachedStatus, Lookup};
use crate::store::{month_of, now_ms, GenerationRecord, HoldOutcome, HoldRequest, IdemClaim, Store, StoredResponse};
use crate::upstream::normalize::normalize;
use crate::upstream::UpstreamResponse;

/// Default and maximum page size of list endpoints (the platform's documented 1–100, 50).
const LIST_DEFAULT: usize = 50;
const LIST_MAX: usize = 100;
/// Status lookups in flight at once while building a list.
const LIST_CONCURRENCY: usize = 8;
/// Longest Idempotency-Key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A hold on the balance; released (or, once forwarded, marked unknown) if dropped unsettled,
/// so a cancelled or timed-out request cannot leak held money.
struct HoldGuard {
    store: Arc<dyn Store>,
    id: u64,
    forwarded: bool,
    done: bool,
}

impl HoldGuard {
    async fn release(mut self) {
        self.done = true;
        if let Err(e) = self.store.release(self.id).await {
            tracing::warn!(error = %e, hold = self.id, "could not release hold");
        }
    }

    async fn unknown(mut self) {
        self.done = true;
        if let Err(e) = self.store.mark_unknown(self.id).await {
            tracing::warn!(error = %e, hold = self.id, "could not mark hold unknown");
        }
    }

    async fn settle(mut self, month: &str, charged: Usd, record: &GenerationRecord) -> Result<(), GatewayError> {
        match self.store.settle(self.id, month, charged, record).await {
            Ok(()) => {
                self.done = true;
                Ok(())
            }
            // Charged but not recorded: keep the money held (Drop marks it unknown) and fail.
            Err(e) => {
                tracing::error!(error = %e, generation = %record.id, tenant = %record.tenant, "generation created upstream but not recorded");
                Err(e.into())
            }
        }
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (store, id, forwarded) = (self.store.clone(), self.id, self.forwarded);
        tokio::spawn(async move {
            let r = if forwarded { store.mark_unknown(id).await } else { store.release(id).await };
            if let Err(e) = r {
                tracing::warn!(error = %e, hold = id, "could not clean up an abandoned hold");
            }
        });
    }
}

/// A claimed Idempotency-Key; given up if dropped unfinished so a retry can run.
struct IdemGuard {
    store: Arc<dyn Store>,
    tenant: Arc<str>,
    key: String,
    digest: [u8; 32],
    done: bool,
}

impl IdemGuard {
    async fn finish(mut self, status: StatusCode, body: &Bytes) {
        self.done = true;
        let rsp = StoredResponse { status: status.as_u16(), body: body.clone() };
        if let Err(e) = self.store.idem_finish(&self.tenant, &self.key, &self.digest, &rsp).await {
            tracing::warn!(error = %e, "could not store idempotent response");
        }
    }
}

impl Drop for IdemGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (store, tenant, key) = (self.store.clone(), self.tenant.clone(), std::mem::take(&mut self.key));
        tokio::spawn(async move {
            let _ = store.idem_abort(&tenant, &key).await;
        });
    }
}

/// A status answer and, when the platform answered, its status and latency (`None` with an
/// `Ok` answer: served from the status cache).
struct Polled {
    result: Result<CachedStatus, GatewayError>,
    upstream: Option<(StatusCode, std::time::Duration)>,
}

/// A 2xx from the platform, passed through byte for byte with its content type.
fn passthrough(status: StatusCode, content_type: Option<&HeaderValue>, bytes: Bytes) -> Response<Body> {
    let mut out = body::json(status, bytes);
    if let Some(ct) = content_type {
        out.headers_mut().insert(CONTENT_TYPE, ct.clone());
    }
    out
}

fn upstream_error(rsp: &UpstreamResponse) -> GatewayError {
    let retry = rsp.headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok());
    GatewayError::Upstream(normalize(rsp.status, retry, &rsp.body))
}

fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
}

/// What a 201 says: `generation_id`/`task_uuid`, `price` and `status`.
#[derive(Debug, PartialEq, Eq)]
struct Created {
    id: Option<String>,
    price: Option<Usd>,
    status: Option<String>,
}

fn created(family: Family, body: &[u8]) -> Created {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return Created { id: None, price: None, status: None } };
    let id = v.get(family.id_field()).or_else(|| v.get("generation_id")).or_else(|| v.get("task_uuid"));
    Created {
        id: id.and_then(|i| i.as_str()).map(str::to_string),
        price: v.get("price").and_then(Usd::from_json),
        status: v.get("status").and_then(|s| s.as_str()).map(str::to_string),
    }
}

/// `status` of a status body, if it is a JSON object with one.
fn reported_status(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct S {
        status: Option<String>,
    }
    serde_json::from_slice::<S>(body).ok()?.status
}

fn idempotency_key(req_headers: &http::HeaderMap) -> Result<Option<String>, GatewayError> {
    let Some(v) = req_headers.get("idempotency-key") else { return Ok(None) };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= MAX_IDEMPOTENCY_KEY && s.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(s.to_string())),
        _ => Err(GatewayError::BadRequest(format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"))),
    }
}

fn query_usize(uri: &Uri, name: &str, default: usize, min: usize, max: usize) -> Result<usize, GatewayError> {
    let Some(q) = uri.query() else { return Ok(default) };
    let Some(v) = q.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v) else {
        return Ok(default);
    };
    v.parse::<usize>().ok().filter(|n| (min..=max).contains(n)).ok_or_else(|| {
        GatewayError::Validation(crate::policy::validate::ValidationError {
            field: name.to_string(),
            message: format!("must be an integer from {min} to {max}"),
        })
    })
}

// === impl Gateway (stage handlers) ===

impl Gateway {
    /// `POST /v1/{family}/generate`: the paid path.
    pub(crate) async fn generate<B>(
        &self,
        ctx: &mut Ctx,
        runtime: &Runtime,
        tenant: &Arc<Tenant>,
        family: Family,
        req: Request<B>,
    ) -> Result<Response<Body>, GatewayError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let (parts, incoming) = req.into_parts();
        // 3. Body, capped; memory for it is reserved first.
        let declared = content_length(&parts.headers);
        let idem_key = idempotency_key(&parts.headers)?;
        let _permit = self.body_permit(declared)?;
        let body = read_limited(incoming, declared, self.max_body_bytes).await.map_err(|e| match e {
            ReadError::TooLarge => GatewayError::PayloadTooLarge { limit: self.max_body_bytes },
            ReadError::Broken(m) => GatewayError::BadRequest(format!("Could not read request body: {m}")),
        })?;
        ctx.request_bytes = body.len();

        // 4. JSON and family rules, on borrowed slices of the body.
        let validated = {
            let fields = parse_object(&body)?;
            validate(family, &fields)?
        };
        ctx.image_bytes = validated.image_bytes;

        // 10. A repeat of a finished request is answered from the record, uncharged.
        let idem = match idem_key {
            None => None,
            Some(key) => {
                let digest: [u8; 32] = Sha256::digest(&body).into();
                match self.store.idem_claim(&tenant.id, &key, &digest).await? {
                    IdemClaim::Fresh => Some(IdemGuard { store: self.store.clone(), tenant: tenant.id.clone(), key, digest, done: false }),
                    IdemClaim::Replay(stored) => {
                        ctx.outcome = "idempotent_replay";
                        let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
                        let mut rsp = body::json(status, stored.body);
                        rsp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
                        return Ok(rsp);
                    }
                    IdemClaim::InProgress => return Err(GatewayError::IdempotencyInProgress),
                    IdemClaim::Mismatch => return Err(GatewayError::IdempotencyMismatch),
                }
            }
        };

        // 5. Generation rate limit.
        ctx.quotas = Some(runtime.limits.check(&*self.store, tenant, LimitKind::Generations).await?);

        // 6–8. Price, fresh balance, atomic hold against budget and balance.
        let price = runtime.pricing.estimate(family, &validated.price_key).ok_or(GatewayError::PriceNotConfigured(family.path()))?;
        ctx.price = Some(price);
        self.balance.ensure_fresh(&ctx.request_id).await?;
        let month = month_of(now_ms());
        let hold_req = HoldRequest { tenant: tenant.id.clone(), month: month.clone(), price, budget: tenant.monthly_budget, reserve: runtime.reserve };
        let mut hold = match self.store.hold(&hold_req).await? {
            HoldOutcome::Held(id) => HoldGuard { store: self.store.clone(), id, forwarded: false, done: false },
            HoldOutcome::Refused(r) => return Err(r.into()),
            HoldOutcome::NoBalance => return Err(GatewayError::Internal("no balance cached after a successful refresh".into())),
        };

        // 9. Forward; never retried (a POST may have been charged).
        hold.forwarded = true;
        let sent = self
            .upstream
            .send(Method::POST, path_and_query(&parts.uri), parts.headers.get(CONTENT_TYPE), &ctx.request_id, body)
            .await;
        let rsp = match sent {
            Ok(rsp) => rsp,
            Err(e) => {
                if e.maybe_delivered() {
                    hold.unknown().await;
                } else {
                    hold.release().await;
                }
                return Err(e.into());
            }
        };
        ctx.upstream_status = Some(rsp.status.as_u16());
        ctx.upstream_latency = Some(rsp.latency);
        if !rsp.status.is_success() {
            hold.release().await;
            let err = upstream_error(&rsp);
            // The platform's own verdict on this body (4xx) is final: replay it. 5xx and 429 may
            // pass on retry, so the key is given up (the guard's drop).
            if let (Some(idem), GatewayError::Upstream(n)) = (idem, &err) {
                if n.status.is_client_error() && n.status != StatusCode::TOO_MANY_REQUESTS {
                    idem.finish(n.status, &Bytes::from(serde_json::json!({ "detail": n.detail }).to_string())).await;
                }
            }
            return Err(err);
        }
        let answer = created(family, &rsp.body);
        // "calculating" or absent (Motion Control, Seedance): settle at the estimate.
        let charged = answer.price.unwrap_or(price);
        ctx.price = Some(charged);
        let id = answer.id.unwrap_or_else(|| {
            tracing::warn!(request_id = %ctx.request_id, "platform accepted a generation without an id; recording it under the request id");
            format!("unknown-{}", ctx.request_id)
        });
        let record = GenerationRecord {
            id,
            tenant: tenant.id.clone(),
            family,
            price: charged,
            created_ms: now_ms() as i64,
            status: answer.status.unwrap_or_else(|| "pending".into()),
        };
        // Durable before the tenant hears of it.
        hold.settle(&month, charged, &record).await?;
        if let Some(idem) = idem {
            idem.finish(rsp.status, &rsp.body).await;
        }
        Ok(passthrough(rsp.status, rsp.headers.get(CONTENT_TYPE), rsp.body))
    }

    /// `GET /v1/{family}/generations/{id}`: only the owner may look.
    pub(crate) async fn status(&self, ctx: &mut Ctx, tenant: &Tenant, family: Family, id: &str, uri: &Uri) -> Result<Response<Body>, GatewayError> {
        let record = self
            .store
            .generation(id)
            .await?
            .filter(|r| r.tenant == tenant.id && r.family == family)
            .ok_or(GatewayError::GenerationNotFound)?;
        let polled = self.current_status(&ctx.request_id, &record, path_and_query(uri)).await;
        if let Some((status, latency)) = polled.upstream {
            ctx.upstream_status = Some(status.as_u16());
            ctx.upstream_latency = Some(latency);
        }
        let answer = polled.result?;
        if polled.upstream.is_none() {
            ctx.outcome = "cached";
        }
        Ok(passthrough(answer.status, answer.content_type.as_ref(), answer.body))
    }

    /// An owned generation's status: shared with concurrent polls and cached briefly
    /// (`status_cache.rs`), otherwise asked of the platform.
    async fn current_status(&self, request_id: &str, record: &GenerationRecord, path: &str) -> Polled {
        let refresh = if self.status_cache.enabled() {
            match self.status_cache.lookup(&record.id).await {
                Lookup::Hit(answer) => return Polled { result: Ok(answer), upstream: None },
                Lookup::Refresh(r) => Some(r),
            }
        } else {
            None
        };
        let rsp = match self.upstream.send(Method::GET, path, None, request_id, Bytes::new()).await {
            Ok(rsp) => rsp,
            Err(e) => return Polled { result: Err(e.into()), upstream: None },
        };
        let upstream = Some((rsp.status, rsp.latency));
        if !rsp.status.is_success() {
            return Polled { result: Err(upstream_error(&rsp)), upstream };
        }
        self.track_status(record, &rsp.body).await;
        let answer = CachedStatus { at: Instant::now(), status: rsp.status, content_type: rsp.headers.get(CONTENT_TYPE).cloned(), body: rsp.body };
        if let Some(r) = refresh {
            r.store(answer.clone());
        }
        Polled { result: Ok(answer), upstream }
    }

    /// Records a status change; a first `failed` refunds the tenant's spend.
    async fn track_status(&self, record: &GenerationRecord, body: &[u8]) {
        if let Some(status) = reported_status(body).filter(|s| *s != record.status) {
            if let Err(e) = self.store.update_status(&record.id, &status).await {
                tracing::warn!(error = %e, generation = %record.id, "could not record status change");
            }
        }
    }

    /// `GET /v1/{family}/generations?limit&offset`: the tenant's own generations, newest first,
    /// each with its current status from the platform.
    pub(crate) async fn list(&self, ctx: &mut Ctx, tenant: &Tenant, family: Family, uri: &Uri) -> Result<Response<Body>, GatewayError> {
        use futures_util::stream::{self, StreamExt};
        let limit = query_usize(uri, "limit", LIST_DEFAULT, 1, LIST_MAX)?;
        let offset = query_usize(uri, "offset", 0, 0, usize::MAX / 2)?;
        let records = self.store.list_generations(&tenant.id, family, limit, offset).await?;
        let request_id = ctx.request_id.clone();
        // Sora's status path is documented with a trailing slash.
        let slash = if family == Family::Sora { "/" } else { "" };
        let items: Vec<String> = stream::iter(records)
            .map(|r| {
                let path = format!("/v1/{}/generations/{}{slash}", family.path(), r.id);
                let request_id = request_id.clone();
                async move {
                    let polled = self.current_status(&request_id, &r, &path).await;
                    match polled.result {
                        Ok(a) if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&a.body).is_ok() => {
                            String::from_utf8_lossy(&a.body).into_owned()
                        }
                        // The platform did not answer for this one: what the gateway last saw.
                        _ => serde_json::json!({ family.id_field(): r.id, "status": r.status }).to_string(),
                    }
                }
            })
            .buffered(LIST_CONCURRENCY)
            .collect()
            .await;
        Ok(body::json(StatusCode::OK, format!("[{}]", items.join(","))))
    }

    /// `GET /v1/data/balance`: what this tenant can still spend.
    pub(crate) async fn tenant_balance(&self, ctx: &mut Ctx, runtime: &Runtime, tenant: &Tenant) -> Result<Response<Body>, GatewayError> {
        ctx.outcome = "served";
        self.balance.ensure_fresh(&ctx.request_id).await?;
        let month = month_of(now_ms());
        let left = self
            .store
            .spendable(&tenant.id, &month, tenant.monthly_budget, runtime.reserve)
            .await?
            .ok_or_else(|| GatewayError::Internal("no balance cached after a successful refresh".into()))?;
        Ok(body::json(StatusCode::OK, serde_json::json!({ "balance": left.to_string() }).to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_created_id_and_price_of_either_id_field() {
        let c = |id: Option<&str>, price: Option<i64>, status: Option<&str>| Created {
            id: id.map(str::to_string),
            price: price.map(Usd::from_micros),
            status: status.map(str::to_string),
        };
        assert_eq!(
            created(Family::Sora, br#"{"generation_id":"g1","status":"pending","price":"0.1200"}"#),
            c(Some("g1"), Some(120_000), Some("pending"))
        );
        assert_eq!(created(Family::Gemini, br#"{"task_uuid":"t1","price":0.02}"#), c(Some("t1"), Some(20_000), None));
        assert_eq!(created(Family::Kling, br#"{"generation_id":"k","price":"calculating"}"#), c(Some("k"), None, None));
        assert_eq!(created(Family::Veo, b"not json"), c(None, None, None));
    }

    #[test]
    fn list_query_bounds() {
        let u: Uri = "/v1/gemini/generations?limit=10&offset=5".parse().unwrap();
        assert_eq!(query_usize(&u, "limit", 50, 1, 100).unwrap(), 10);
        assert_eq!(query_usize(&u, "offset", 0, 0, 1000).unwrap(), 5);
        let bad: Uri = "/x?limit=0".parse().unwrap();
        assert!(query_usize(&bad, "limit", 50, 1, 100).is_err());
        let none: Uri = "/x".parse().unwrap();
        assert_eq!(query_usize(&none, "limit", 50, 1, 100).unwrap(), 50);
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        let mut h = http::HeaderMap::new();
        assert_eq!(idempotency_key(&h).unwrap(), None);
        h.insert("idempotency-key", HeaderValue::from_static("abc-1"));
        assert_eq!(idempotency_key(&h).unwrap(), Some("abc-1".into()));
        h.insert("idempotency-key", HeaderValue::from_static("has space"));
        assert!(idempotency_key(&h).is_err());
    }
}
