//! The paid path: admit a generate (`admit.rs`), then forward the held request and run it to its outcome.
//!
//! Once a hold is taken the request is forwarded from its own task ([`Paid::spawn`]), so a
//! client that hangs up (HTTP/1 close, HTTP/2 RST_STREAM) never cancels a request the platform
//! may be charging for. The outcome is one of:
//! - **created** (201): the generation is recorded and the hold settles at the charged price. If
//!   the store fails here the tenant still gets its 201; the record is retried until written
//!   (and the hold, durable or leased, is the fallback for the reconciler).
//! - **refused** (any other answer, or nothing sent): the hold is released.
//! - **unknown** (sent, no answer read): the hold stays, counted as spent, and its
//!   Idempotency-Key answers 409 until the reconciler (`reconcile.rs`) resolves it.
//!
//! When the client is gone by then, the task writes the access line itself (`client_closed`).
//!
//! Invariants, kept by the guards being made, armed and released only in this module:
//! - **No request reaches the platform without a hold.** The hold is taken in one atomic store
//!   step against the tenant's budget and the account balance; a store error refuses.
//! - **Every hold ends exactly once**: settled at the charged price (created), released
//!   (refused, or dropped before forwarding: [`HoldGuard`]'s `Drop`), or left open as unknown for
//!   the reconciler, never two of these.
//! - **An Idempotency-Key buys at most one generation.** Its claim is taken before the hold,
//!   answered from the stored record afterwards, and freed ([`IdemGuard`]'s `Drop`) only when
//!   nothing was sent; an unknown outcome keeps it (409) until the reconciler decides.

mod admit;

pub(crate) use admit::{generate, quote};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Response, StatusCode};
use tokio::sync::oneshot;

use crate::core::error::GatewayError;
use crate::core::{Ctx, Shared};
use crate::policy::family::Family;
use crate::policy::money::Usd;
use crate::policy::pricing::settle_price;
use crate::server::body::{self, Body};
use crate::store::{now_ms, GenerationRecord, Store, StoredResponse};

/// First and longest wait between retries of writing an accepted generation.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(200);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);

/// A hold under an id chosen before the store was asked. Armed when the hold is asked for:
/// dropped after that and before it is handed to the paid task (the client left, the store timed
/// out, a later stage refused), it is released by id, so a hold call that lands late is refused
/// rather than leaked. Requests that end before asking cost no store call.
pub(crate) struct HoldGuard {
    store: Arc<dyn Store>,
    pub(crate) id: String,
    armed: bool,
}

impl HoldGuard {
    pub(crate) fn new(store: Arc<dyn Store>) -> HoldGuard {
        HoldGuard { store, id: crate::ids::uuid().simple().to_string(), armed: false }
    }

    /// The hold is about to be asked for: from now on, dropping the guard releases it.
    pub(crate) fn arm(&mut self) {
        self.armed = true;
    }

    /// No hold stands under this id (refused, or settled, or left to its lease).
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    async fn release(mut self) {
        self.armed = false;
        if let Err(e) = self.store.release(&self.id).await {
            // Its lease will end and the reconciler will find nothing: released then.
            tracing::warn!(error = %e, hold = %self.id, "could not release a hold; it will expire and be reconciled");
        }
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, id) = (self.store.clone(), std::mem::take(&mut self.id));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = until_stored(|| store.release(&id)).await {
                    tracing::warn!(error = %e, hold = %id, "could not release an abandoned hold; it will expire and be reconciled");
                }
            });
        }
    }
}

/// A claimed Idempotency-Key; given up if dropped unfinished so a retry can run.
pub(crate) struct IdemGuard {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) tenant: Arc<str>,
    pub(crate) key: String,
    pub(crate) digest: [u8; 32],
    pub(crate) done: bool,
}

impl IdemGuard {
    pub(crate) async fn finish(mut self, status: StatusCode, body: &Bytes) {
        self.done = true;
        let rsp = StoredResponse { status: status.as_u16(), body: body.clone() };
        if let Err(e) = self.store.idem_finish(&self.tenant, &self.key, &self.digest, &rsp).await {
            tracing::warn!(error = %e, "could not store idempotent response");
        }
    }

    /// The outcome is unknown: the claim stays, tied to the unknown hold, until reconciled.
    fn keep(mut self) {
        self.done = true;
    }
}

impl Drop for IdemGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (store, tenant, key) = (self.store.clone(), self.tenant.clone(), std::mem::take(&mut self.key));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                // Until the store is back (a failover): otherwise the client's retry would find
                // the key "in progress" until the claim goes stale.
                if let Err(e) = until_stored(|| store.idem_abort(&tenant, &key)).await {
                    tracing::warn!(error = %e, "could not give up an Idempotency-Key claim; it goes stale after the request timeout");
                }
            });
        }
    }
}

/// A clean-up write, tried again for a while when the store is unavailable (up to
/// `CLEANUP_TRIES` attempts over about 12 s, longer than a Sentinel failover takes).
async fn until_stored<F, Fut>(mut write: F) -> Result<(), crate::store::StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::store::StoreError>>,
{
    let mut wait = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(e) if tries >= CLEANUP_TRIES => return Err(e),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(wait).await;
                wait = (wait * 3 / 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// See [`until_stored`].
const CLEANUP_TRIES: u32 = 12;

/// What the paid task tells the request: the answer and what to log.
pub(crate) struct PaidOutcome {
    pub(crate) result: Result<Response<Body>, GatewayError>,
    pub(crate) upstream: Option<(StatusCode, Duration)>,
    pub(crate) price: Usd,
}

/// A held request about to be forwarded.
pub(crate) struct Paid {
    pub(crate) gw: Arc<Shared>,
    pub(crate) hold: HoldGuard,
    pub(crate) idem: Option<IdemGuard>,
    pub(crate) family: Family,
    pub(crate) tenant: Arc<str>,
    pub(crate) quoted: Usd,
    pub(crate) path: String,
    /// The request's trace context, passed to the platform.
    pub(crate) trace: Option<crate::ids::trace::TraceContext>,
    pub(crate) content_type: Option<HeaderValue>,
    pub(crate) body: Bytes,
    /// The relay token in the forwarded `callback_url`, if any.
    pub(crate) webhook_token: Option<String>,
}

/// What a 201 says: `generation_id`/`task_uuid`, `price` and `status`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Created {
    pub(crate) id: Option<String>,
    pub(crate) price: Option<Usd>,
    /// A `price` that reads as a number but is no usable amount (23 digits, say): not trusted.
    pub(crate) absurd_price: Option<String>,
    pub(crate) status: Option<String>,
}

pub(crate) fn created(family: Family, body: &[u8]) -> Created {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Created { id: None, price: None, absurd_price: None, status: None };
    };
    let id = v.get(family.id_field()).or_else(|| v.get("generation_id")).or_else(|| v.get("task_uuid"));
    let reported = v.get("price");
    let price = reported.and_then(Usd::from_json);
    Created {
        id: id.and_then(|i| i.as_str()).map(str::to_string),
        price,
        absurd_price: reported.filter(|p| price.is_none() && looks_numeric(p)).map(|p| p.to_string()),
        status: v.get("status").and_then(|s| s.as_str()).map(str::to_string),
    }
}

/// A number, or a string holding digits (not `"calculating"`).
fn looks_numeric(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(_) => true,
        serde_json::Value::String(s) => s.bytes().any(|b| b.is_ascii_digit()),
        _ => false,
    }
}

// === impl Paid ===

impl Paid {
    /// Runs the request to its outcome in its own task. The answer arrives on the returned
    /// channel; if nobody is listening any more, the task logs the request as `client_closed`.
    pub(crate) fn spawn(self, ctx: &Ctx) -> oneshot::Receiver<PaidOutcome> {
        let (tx, rx) = oneshot::channel();
        let ctx = ctx.clone();
        let gw = self.gw.clone();
        tokio::spawn(async move {
            let out = self.run(&ctx).await;
            if let Err(out) = tx.send(out) {
                let mut ctx = ctx;
                let status = match &out.result {
                    Ok(r) => r.status(),
                    Err(e) => e.status(),
                };
                ctx.record.outcome = "client_closed";
                ctx.record.cause = out.result.as_ref().err().and_then(GatewayError::cause);
                if let Some((platform_status, latency)) = out.upstream {
                    ctx.record.upstream(platform_status.as_u16(), latency);
                }
                ctx.record.price = Some(out.price);
                tracing::info!(
                    request_id = ctx.record.request_id(),
                    status = status.as_u16(),
                    "client left before its paid request finished; it ran to its outcome"
                );
                gw.finish(&ctx, status.as_u16());
            }
        });
        rx
    }

    async fn run(self, ctx: &Ctx) -> PaidOutcome {
        let Paid { gw, mut hold, idem, family, tenant, quoted, path, trace, content_type, body, webhook_token } = self;
        let request_id = ctx.record.request_id();
        let sent = gw
            .upstream
            .send(Method::POST, &path, content_type.as_ref(), &ctx.record.request_id, trace.as_ref(), body)
            .await;
        let rsp = match sent {
            Ok(rsp) => rsp,
            Err(e) if e.maybe_delivered() => {
                tracing::warn!(request_id, tenant = %tenant, hold = %hold.id, cause = e.kind(), "paid request sent but no answer read: outcome unknown, counted as spent until reconciled");
                outcome_unknown(&gw, hold, idem, e.kind()).await;
                return PaidOutcome { result: Err(e.into()), upstream: None, price: quoted };
            }
            Err(e) => {
                hold.release().await;
                gw.current().limits.give_back_generation(&*gw.store, &tenant).await;
                return PaidOutcome { result: Err(e.into()), upstream: None, price: quoted };
            }
        };
        let upstream = Some((rsp.status, rsp.latency));
        if !rsp.status.is_success() {
            hold.release().await;
            // Refused for capacity or money, not for the request: no generation, no slot used.
            if matches!(
                rsp.status,
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYMENT_REQUIRED
            ) {
                gw.current().limits.give_back_generation(&*gw.store, &tenant).await;
            }
            let err = GatewayError::Upstream(gw.upstream.error_of(&rsp));
            // The platform's own verdict on this body (4xx) is final: replay it. 5xx and 429 may
            // pass on retry, so the key is given up (the guard's drop).
            if let (Some(idem), GatewayError::Upstream(n)) = (idem, &err) {
                if n.status.is_client_error() && n.status != StatusCode::TOO_MANY_REQUESTS {
                    idem.finish(n.status, &Bytes::from(serde_json::json!({ "detail": n.detail }).to_string())).await;
                }
            }
            return PaidOutcome { result: Err(err), upstream, price: quoted };
        }
        let answer = created(family, &rsp.body);
        let Some(id) = answer.id else {
            // A 2xx that is not the documented JSON, or names no generation: the platform may
            // have charged, and the tenant could never poll it. Unknown, for the reconciler.
            tracing::warn!(request_id, tenant = %tenant, hold = %hold.id, status = rsp.status.as_u16(), cause = "invalid_answer",
                "platform answered a paid request with a 2xx that is not a created generation: outcome unknown, counted as spent until reconciled");
            outcome_unknown(&gw, hold, idem, "invalid_answer").await;
            return PaidOutcome { result: Err(GatewayError::InvalidAnswer), upstream, price: quoted };
        };
        if let Some(raw) = &answer.absurd_price {
            gw.metrics.untrusted_price();
            tracing::error!(request_id, tenant = %tenant, reported = %raw, quoted = %quoted, why = "not a usable amount",
                "platform reported a price that is not trusted; settled at the quote");
        }
        let charged = match settle_price(quoted, answer.price) {
            Ok(p) => p,
            Err((q, why)) => {
                gw.metrics.untrusted_price();
                tracing::error!(request_id, tenant = %tenant, reported = ?answer.price.map(|p| p.to_string()), quoted = %q, why, "platform reported a price that is not trusted; settled at the quote");
                q
            }
        };
        if charged > quoted {
            gw.metrics.charged_above_hold(family.path());
            tracing::error!(request_id, tenant = %tenant, family = family.path(), charged = %charged, held = %quoted, cause = "charged_above_hold",
                "the platform charged more than the hold: [pricing] is below a real price, so budgets can be overrun; raise it to the highest price a request can cost");
        }
        let record = GenerationRecord {
            id,
            tenant: tenant.clone(),
            family,
            price: charged,
            created_ms: now_ms() as i64,
            status: answer.status.unwrap_or_else(|| "pending".into()),
        };
        if let Some(token) = &webhook_token {
            if let Err(e) = gw.store.webhook_link(token, &record.id).await {
                // The receiver also finds the generation by the id in the platform's body.
                tracing::warn!(error = %e, generation = %record.id, "could not link the webhook token to its generation");
            }
        }
        // Durable before the tenant hears of it, when the store allows.
        hold.disarm();
        match gw.store.settle(&hold.id, charged, &record).await {
            Ok(()) => {
                if let Some(idem) = idem {
                    idem.finish(rsp.status, &rsp.body).await;
                }
            }
            Err(e) => {
                // The platform created and charged it: the tenant gets its 201 regardless, and
                // the record is written when the store is back.
                tracing::error!(error = %e, generation = %record.id, tenant = %tenant, "generation created upstream but not recorded yet; retrying in the background");
                let idem = idem.map(|i| (i, rsp.status, rsp.body.clone()));
                tokio::spawn(retry_record(gw.clone(), hold.id.clone(), charged, record, idem));
            }
        }
        let out = passthrough(rsp.status, rsp.headers.get(CONTENT_TYPE), rsp.body);
        PaidOutcome { result: Ok(out), upstream, price: charged }
    }
}

/// The request may have been charged but no usable answer was read: the hold stays, counted as
/// spent, and its Idempotency-Key answers 409 until the reconciler resolves it.
async fn outcome_unknown(gw: &Shared, mut hold: HoldGuard, idem: Option<IdemGuard>, cause: &'static str) {
    hold.disarm();
    gw.metrics.unknown_outcome(cause);
    if let Err(se) = gw.store.mark_unknown(&hold.id).await {
        tracing::warn!(error = %se, hold = %hold.id, "could not mark hold unknown; its lease will");
    }
    if let Some(i) = idem {
        i.keep();
    }
}

/// Retries settling an accepted generation until the store takes it.
async fn retry_record(
    gw: Arc<Shared>,
    hold: String,
    charged: Usd,
    record: GenerationRecord,
    idem: Option<(IdemGuard, StatusCode, Bytes)>,
) {
    let mut wait = RECORD_RETRY_FIRST;
    loop {
        tokio::time::sleep(wait).await;
        match gw.store.settle(&hold, charged, &record).await {
            Ok(()) => {
                gw.metrics.record_retry(true);
                tracing::info!(generation = %record.id, tenant = %record.tenant, "generation recorded after a store failure");
                if let Some((i, status, body)) = idem {
                    i.finish(status, &body).await;
                }
                return;
            }
            Err(e) => {
                gw.metrics.record_retry(false);
                tracing::warn!(error = %e, generation = %record.id, "still cannot record an accepted generation; retrying");
                wait = (wait * 2).min(RECORD_RETRY_MAX);
            }
        }
    }
}

/// A 2xx from the platform, passed through byte for byte with its content type.
pub(crate) fn passthrough(status: StatusCode, content_type: Option<&HeaderValue>, bytes: Bytes) -> Response<Body> {
    match content_type {
        Some(ct) => body::typed(status, ct.clone(), bytes),
        None => body::json(status, bytes),
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
            absurd_price: None,
            status: status.map(str::to_string),
        };
        assert_eq!(
            created(Family::builtin("sora"), br#"{"generation_id":"g1","status":"pending","price":"0.1200"}"#),
            c(Some("g1"), Some(120_000), Some("pending"))
        );
        assert_eq!(
            created(Family::builtin("gemini"), br#"{"task_uuid":"t1","price":0.02}"#),
            c(Some("t1"), Some(20_000), None)
        );
        assert_eq!(
            created(Family::builtin("kling"), br#"{"generation_id":"k","price":"calculating"}"#),
            c(Some("k"), None, None)
        );
        assert_eq!(created(Family::builtin("veo"), b"not json"), c(None, None, None));
        let absurd = created(Family::builtin("sora"), br#"{"generation_id":"g","price":"99999999999999999999999"}"#);
        assert_eq!((absurd.price, absurd.absurd_price.as_deref()), (None, Some("\"99999999999999999999999\"")));
    }
}
