//! The free routes behind auth and the request rate limit: a generation's status (polls,
//! coalesced by the status cache), lists, the tenant's balance and usage, and webhooks the
//! platform posts. The paid routes (generate, quote) are `paid::generate` and `paid::quote`.

use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode, Uri};

use crate::core::error::GatewayError;
use crate::gateway::status_cache::{CachedStatus, Lookup};
use crate::gateway::{Ctx, Gateway, Runtime};
use crate::paid::passthrough;
use crate::policy::family::Family;
use crate::policy::tenants::Tenant;
use crate::server::body::{self, Body};
use std::collections::HashMap;

use crate::store::{month_of, now_ms, GenerationRecord, OutboxMessage};

/// Default and maximum page size of list endpoints (the platform's documented 1–100, 50).
const LIST_DEFAULT: usize = 50;
const LIST_MAX: usize = 100;

/// A status answer and, when the platform answered, its status and latency (`None` with an
/// `Ok` answer: served from the status cache).
struct Polled {
    result: Result<CachedStatus, GatewayError>,
    upstream: Option<(StatusCode, std::time::Duration)>,
}

/// Does the body open and close as a JSON object? An O(1) look at its ends that refuses HTML
/// pages, empty bodies and truncated JSON on every poll without parsing the body again (the
/// status scan below reads the rest).
fn framed_as_object(body: &[u8]) -> bool {
    let first = body.iter().position(|c| !c.is_ascii_whitespace());
    let last = body.iter().rposition(|c| !c.is_ascii_whitespace());
    matches!((first, last), (Some(f), Some(l)) if f < l && body[f] == b'{' && body[l] == b'}')
}

fn query_usize(uri: &Uri, name: &str, default: usize, min: usize, max: usize) -> Result<usize, GatewayError> {
    let Some(v) = crate::server::query::param(uri.query(), name) else { return Ok(default) };
    v.parse::<usize>().ok().filter(|n| (min..=max).contains(n)).ok_or_else(|| {
        GatewayError::Validation(crate::policy::validate::ValidationError {
            field: name.to_string(),
            message: format!("must be an integer from {min} to {max}"),
        })
    })
}

// === impl Gateway (stage handlers) ===

impl Gateway {
    /// `POST /webhooks/runblob/{token}`: the platform reports an outcome. Recorded (a refund on
    /// `failed`), queued for delivery to the tenant, answered at once.
    pub(crate) async fn webhook_received<B>(
        &self,
        ctx: &mut Ctx,
        token: &str,
        req: Request<B>,
    ) -> Result<Response<Body>, GatewayError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let Some(relay) = self.relay.clone() else { return Err(GatewayError::NotFound) };
        let Some(target) = self.store.webhook_target(token).await? else {
            self.metrics.webhook_rejected("unknown_token");
            return Err(GatewayError::NotFound);
        };
        ctx.record.tenant = Some(target.tenant.clone());
        ctx.record.outcome = "webhook_received";
        let limit = crate::core::relay::MAX_WEBHOOK_BODY;
        let body = match body::read_capped(req.into_body(), limit).await {
            Ok(b) => b,
            Err(body::CappedError::TooLarge) => {
                self.metrics.webhook_rejected("too_large");
                return Err(GatewayError::PayloadTooLarge { limit });
            }
            Err(body::CappedError::Broken(m)) => {
                return Err(GatewayError::BadRequest(format!("Could not read request body: {m}")))
            }
        };
        ctx.record.request_bytes = body.len();
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice::<serde_json::Value>(&body) else {
            self.metrics.webhook_rejected("not_json");
            return Err(GatewayError::BadRequest("Webhook body must be a JSON object".into()));
        };
        // A webhook is a claim, never proof: anyone who learned the token could have sent it.
        // Its status is confirmed with one status call now (which records it, and refunds a
        // confirmed failure); the tenant gets the webhook's body only when the platform says
        // the same, else the platform's own answer. Nothing unconfirmed is ever relayed.
        let named = ["generation_id", "task_uuid"]
            .iter()
            .find_map(|k| fields.get(*k).and_then(|v| v.as_str()).map(str::to_string));
        let reported = fields.get("status").and_then(|v| v.as_str()).map(str::to_string);
        let record = match target.generation.clone().or(named) {
            Some(id) => self.store.generation(&id).await?.filter(|r| r.tenant == target.tenant),
            None => None,
        };
        let Some(record) = record else {
            self.metrics.webhook_rejected("unconfirmed");
            tracing::warn!(request_id = ctx.record.request_id(), tenant = %target.tenant, "webhook names no generation of this token's tenant; nothing relayed");
            return Ok(body::json(StatusCode::OK, r#"{"received":true}"#));
        };
        let uri: Uri =
            record.family.status_path(&record.id).parse().map_err(|_| GatewayError::Internal("status path".into()))?;
        let confirmed = self.current_status(&ctx.record.request_id, ctx.record.trace.as_ref(), &record, &uri).await;
        let answer = match confirmed.result {
            Ok(answer) => answer,
            Err(e) => {
                // Not relayed unconfirmed: the platform's retry (or the tenant's poll) brings it.
                tracing::warn!(request_id = ctx.record.request_id(), generation = %record.id, error = %e, "could not confirm a webhook's status with the platform; not relayed now");
                return Err(GatewayError::Unreachable(crate::upstream::UpstreamError::Broken(
                    "could not confirm the webhook with the platform".into(),
                )));
            }
        };
        let platform_says = crate::upstream::normalize::reported_status(&answer.body);
        let body = if platform_says.is_some() && platform_says.as_deref() == reported.as_deref() {
            body
        } else {
            self.metrics.webhook_rejected("contradicts_platform");
            tracing::warn!(request_id = ctx.record.request_id(), generation = %record.id, reported = ?reported, platform = ?platform_says,
                "webhook's status is not what the platform says; the platform's answer is relayed instead");
            answer.body
        };
        let body = crate::core::relay::scrub_relay_url(body, &relay.config, Some(&target.url));
        let m = OutboxMessage {
            id: crate::core::relay::message_id(token, &body),
            tenant: target.tenant.clone(),
            url: target.url.clone(),
            body,
            attempts: 0,
            created_ms: now_ms(),
        };
        self.store.outbox_push(&m).await?;
        relay.wake();
        Ok(body::json(StatusCode::OK, r#"{"received":true}"#))
    }

    /// `GET /v1/{family}/generations/{id}`: only the owner may look.
    pub(crate) async fn status(
        &self,
        ctx: &mut Ctx,
        tenant: &Tenant,
        family: Family,
        id: &str,
        uri: &Uri,
    ) -> Result<Response<Body>, GatewayError> {
        let record = self
            .store
            .generation(id)
            .await?
            .filter(|r| r.tenant == tenant.id && r.family == family)
            .ok_or(GatewayError::GenerationNotFound)?;
        let polled = self.current_status(&ctx.record.request_id, ctx.record.trace.as_ref(), &record, uri).await;
        if let Some((status, latency)) = polled.upstream {
            ctx.record.upstream(status.as_u16(), latency);
        }
        let answer = polled.result?;
        if polled.upstream.is_none() {
            ctx.record.outcome = "cached";
        }
        Ok(passthrough(answer.status, answer.content_type.as_ref(), self.without_relay_url(answer.body)))
    }

    /// An owned generation's status: shared with concurrent polls and cached briefly
    /// (`status_cache.rs`), otherwise asked of the platform.
    async fn current_status(
        &self,
        request_id: &HeaderValue,
        trace: Option<&crate::ids::trace::TraceContext>,
        record: &GenerationRecord,
        uri: &Uri,
    ) -> Polled {
        let refresh = if self.status_cache.enabled() {
            match self.status_cache.lookup(&record.id).await {
                Lookup::Hit(answer) => return Polled { result: Ok(answer), upstream: None },
                Lookup::Refresh(r) => Some(r),
            }
        } else {
            None
        };
        // The tenant's own path (validated by the router, no query) goes to the platform as is.
        let path = uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let rsp = match self.upstream.forward(Method::GET, path, None, request_id, trace, Bytes::new()).await {
            Ok(rsp) => rsp,
            Err(e) => return Polled { result: Err(e.into()), upstream: None },
        };
        let upstream = Some((rsp.status, rsp.latency));
        if !rsp.status.is_success() {
            return Polled { result: Err(GatewayError::Upstream(self.upstream.error_of(&rsp))), upstream };
        }
        if !framed_as_object(&rsp.body) {
            self.metrics.upstream_error("invalid_answer");
            tracing::warn!(request_id = %String::from_utf8_lossy(request_id.as_bytes()), generation = %record.id, status = rsp.status.as_u16(), cause = "invalid_answer", "platform answered a status poll with a body that is not a JSON object");
            return Polled { result: Err(GatewayError::InvalidAnswer), upstream };
        }
        self.track_status(record, &rsp.body).await;
        let answer = CachedStatus {
            at: Instant::now(),
            status: rsp.status,
            content_type: rsp.headers.get(CONTENT_TYPE).cloned(),
            body: rsp.body,
        };
        if let Some(r) = refresh {
            r.store(answer.clone());
        }
        Polled { result: Ok(answer), upstream }
    }

    /// A platform body for a tenant, without this gateway's relay URL (see `scrub_relay_url`).
    fn without_relay_url(&self, body: Bytes) -> Bytes {
        match &self.relay {
            Some(relay) => crate::core::relay::scrub_relay_url(body, &relay.config, None),
            None => body,
        }
    }

    /// `GET /v1/{family}/generations?limit&offset`: the tenant's own generations, newest first,
    /// from the gateway's records, with at most one platform call: the account's newest page of
    /// this family gives the current body of those generations it holds (status changes are
    /// recorded, a failure refunded); older ones are answered from the record, which the
    /// reconciler keeps current. N generations never cost N calls of the token's shared budget.
    pub(crate) async fn list(
        &self,
        ctx: &mut Ctx,
        tenant: &Tenant,
        family: Family,
        uri: &Uri,
    ) -> Result<Response<Body>, GatewayError> {
        let limit = query_usize(uri, "limit", LIST_DEFAULT, 1, LIST_MAX)?;
        let offset = query_usize(uri, "offset", 0, 0, usize::MAX / 2)?;
        let records = self.store.list_generations(&tenant.id, family, limit, offset).await?;
        if records.is_empty() {
            ctx.record.outcome = "served";
            return Ok(body::json(StatusCode::OK, "[]"));
        }
        let path = format!("/v1/{}/generations?limit={LIST_MAX}", family.path());
        let mut current: HashMap<String, serde_json::Value> = HashMap::new();
        match self
            .upstream
            .send(Method::GET, &path, None, &ctx.record.request_id, ctx.record.trace.as_ref(), Bytes::new())
            .await
        {
            Ok(rsp) => {
                ctx.record.upstream(rsp.status.as_u16(), rsp.latency);
                if rsp.status.is_success() {
                    if let Ok(items) = serde_json::from_slice::<Vec<serde_json::Value>>(&rsp.body) {
                        for item in items {
                            if let Some(id) = item.get(family.id_field()).and_then(|v| v.as_str()) {
                                current.insert(id.to_string(), item);
                            }
                        }
                    }
                }
            }
            // The list still answers from the records; the reconciler catches up later.
            Err(e) => {
                tracing::debug!(request_id = ctx.record.request_id(), error = %e, "platform list unavailable; answering from records")
            }
        }
        let mut items = Vec::with_capacity(records.len());
        for r in &records {
            match current.remove(&r.id) {
                Some(v) => {
                    if let Some(status) = v.get("status").and_then(|s| s.as_str()) {
                        self.record_status(r, status, || v.clone()).await;
                    }
                    let item = self.without_relay_url(Bytes::from(v.to_string()));
                    items.push(String::from_utf8_lossy(&item).into_owned());
                }
                None => items.push(serde_json::json!({ family.id_field(): r.id, "status": r.status }).to_string()),
            }
        }
        Ok(body::json(StatusCode::OK, format!("[{}]", items.join(","))))
    }

    /// `GET /v1/gateway/usage`: the tenant's own month: budget, spent, held, remaining, when it
    /// resets, what the account still allows, and its limits.
    pub(crate) async fn tenant_usage(
        &self,
        ctx: &mut Ctx,
        runtime: &Runtime,
        tenant: &Tenant,
    ) -> Result<Response<Body>, GatewayError> {
        ctx.record.outcome = "served";
        let month = month_of(now_ms());
        let totals = self.store.month_totals(&month).await?.remove(&*tenant.id).unwrap_or_default();
        // The account moves with every team's spend: shown only where the operator opted in.
        let account = match self.expose_account_balance {
            false => None,
            true => match self.balance.ensure_fresh(&ctx.record.request_id).await {
                Ok(()) => self.store.spendable(&tenant.id, &month, None, runtime.reserve).await?.map(|u| u.to_string()),
                Err(_) => None,
            },
        };
        let v = serde_json::json!({
            "tenant": &*tenant.id,
            "month": month,
            "resets_at": crate::store::usage::resets_at(&month),
            "budget": tenant.monthly_budget.map(|b| b.to_string()),
            "spent": totals.spent.to_string(),
            "held": (totals.held + totals.unknown).to_string(),
            "refunded": totals.refunded.to_string(),
            "remaining": tenant.monthly_budget.map(|b| totals.remaining(b).to_string()),
            "account_available": account,
            "limits": {
                "requests_per_second": tenant.limits.requests_per_second.get(),
                "burst": tenant.limits.burst.get(),
                "generations_per_minute": tenant.limits.generations_per_minute.get(),
            },
        });
        Ok(body::json(StatusCode::OK, v.to_string()))
    }

    /// `GET /v1/data/balance`: what this tenant can still spend.
    pub(crate) async fn tenant_balance(
        &self,
        ctx: &mut Ctx,
        runtime: &Runtime,
        tenant: &Tenant,
    ) -> Result<Response<Body>, GatewayError> {
        ctx.record.outcome = "served";
        self.balance.ensure_fresh(&ctx.record.request_id).await?;
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
    fn list_query_bounds() {
        let u: Uri = "/v1/gemini/generations?limit=10&offset=5".parse().unwrap();
        assert_eq!(query_usize(&u, "limit", 50, 1, 100).unwrap(), 10);
        assert_eq!(query_usize(&u, "offset", 0, 0, 1000).unwrap(), 5);
        let bad: Uri = "/x?limit=0".parse().unwrap();
        assert!(query_usize(&bad, "limit", 50, 1, 100).is_err());
        let none: Uri = "/x".parse().unwrap();
        assert_eq!(query_usize(&none, "limit", 50, 1, 100).unwrap(), 50);
    }
}
