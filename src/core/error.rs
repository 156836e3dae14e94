//! The one request-path error type and the one place errors become `{"detail": ...}` responses.

use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::policy::ledger::Refusal;
use crate::policy::rate_limit::{Quotas, RateLimited};
use crate::policy::validate::{BodyError, ValidationError};
use crate::server::body::{self, Body};
use crate::store::StoreError;
use crate::upstream::normalize::Normalized;
use crate::upstream::UpstreamError;

/// Retry-After for the gateway's own 503s.
const RETRY_AFTER_SECS: u64 = 5;
/// Repeats of an Idempotency-Key whose first outcome is being reconciled: try again later.
const OUTCOME_RETRY_AFTER_SECS: u64 = 30;

/// Everything that can end a request early. Leaf stages return these; `into_response` is the
/// only place they become HTTP.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No such route.
    #[error("Not found")]
    NotFound,
    /// Known path, wrong method.
    #[error("Method not allowed")]
    MethodNotAllowed {
        /// Value of the `Allow` header.
        allow: &'static str,
    },
    /// No `Authorization: Bearer` header.
    #[error("Missing credentials")]
    MissingCredentials,
    /// An `Authorization` header of another scheme.
    #[error("Missing credentials: use Authorization: Bearer <key>")]
    WrongScheme,
    /// The tenant's monthly budget cannot pay; the detail stays the platform-compatible string.
    #[error("BUDGET_EXCEEDED")]
    BudgetExceeded {
        /// What the budget still allows.
        remaining: String,
        /// When the month (and the budget) resets.
        resets_at: String,
    },
    /// A key no tenant owns.
    #[error("Invalid credentials")]
    InvalidCredentials,
    /// The tenant's cap on generates in flight is reached.
    #[error("Too many generations in progress for this tenant")]
    TooManyInFlight,
    /// A viewer key on a route that does more than read usage.
    #[error("This key is read-only")]
    ReadOnlyKey,
    /// A key of a team an admin disabled.
    #[error("This team is disabled; ask the gateway's admin")]
    TenantDisabled,
    /// A key whose allow-list does not name this family (as routing resolved it).
    #[error("This key may not use {0}")]
    KeyFamilyNotAllowed(&'static str),
    /// One generation would hold more than this key may.
    #[error("Price {price} is over this key's limit of {max} per generation")]
    OverKeyMaxPrice {
        /// What the hold would be.
        price: crate::policy::money::Usd,
        /// The key's `max_price`.
        max: crate::policy::money::Usd,
    },
    /// This client address sent too many unknown keys: it waits before trying more.
    #[error("Too many failed authentication attempts from this address; retry later")]
    AuthThrottled {
        /// Seconds until it may try again.
        retry_after_secs: u64,
    },
    /// The body arrived slower than `min_upload_bytes_per_sec` after the grace period.
    #[error("Request body arrived too slowly")]
    UploadTooSlow,
    /// The tenant already has its share of uploads or of body memory in use.
    #[error("Too many uploads in progress for this tenant; retry shortly")]
    TenantUploadsBusy,
    /// A POST body that is not `application/json`.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// A tenant quota ran out.
    #[error("Rate limit exceeded: {} for this key", match .0.kind { crate::policy::rate_limit::LimitKind::Requests => "requests per second", crate::policy::rate_limit::LimitKind::Generations => "paid generations per minute" })]
    RateLimited(#[from] RateLimited),
    /// Body over `max_body_bytes`.
    #[error("Request body exceeds the {limit}-byte limit")]
    PayloadTooLarge {
        /// The cap.
        limit: usize,
    },
    /// Body is not a JSON object.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// Other malformed requests (query strings, ambiguous framing, unreadable bodies).
    #[error("{0}")]
    BadRequest(String),
    /// A family rule failed.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// Budget or balance cannot pay.
    #[error(transparent)]
    Refused(Refusal),
    /// `/v1/{family}/…` with a family the platform does not have.
    #[error("Unknown model family {0:?}; the families are: {1}")]
    UnknownFamily(String, String),
    /// Unknown generation, or another tenant's.
    #[error("Generation not found")]
    GenerationNotFound,
    /// A request with the same Idempotency-Key is running.
    #[error("A request with this Idempotency-Key is still in progress")]
    IdempotencyInProgress,
    /// The first request with this Idempotency-Key reached the platform without a readable
    /// answer; repeats wait until the reconciler knows whether it was charged.
    #[error("The first request with this Idempotency-Key reached the platform but its outcome is not known yet; it is being resolved, retry later")]
    OutcomeUnresolved,
    /// Same Idempotency-Key, different body.
    #[error("Idempotency-Key was already used with a different request body")]
    IdempotencyMismatch,
    /// The operator priced nothing for this family: it is not offered here.
    #[error("Model family {family} is not enabled on this gateway (enabled: {enabled})")]
    FamilyNotEnabled {
        /// The family's path.
        family: &'static str,
        /// The families this gateway offers.
        enabled: String,
    },
    /// The platform answered with an error, already normalised.
    #[error("{}", .0.detail)]
    Upstream(Normalized),
    /// A 2xx from the platform that is not the documented JSON (an HTML page, truncated JSON, a
    /// created answer without an id). On a paid generate the outcome is unknown.
    #[error("Upstream returned an invalid answer")]
    InvalidAnswer,
    /// The platform could not be reached, or timed out, or fails fast behind an open circuit.
    #[error(transparent)]
    Unreachable(#[from] UpstreamError),
    /// The whole request took longer than `request_timeout_secs`.
    #[error("Request timed out")]
    RequestTimeout,
    /// Too many request bytes buffered at once.
    #[error("Gateway is busy, retry shortly")]
    Overloaded,
    /// The store could not be reached: money and ownership fail closed.
    #[error("Store unavailable")]
    Store(#[from] StoreError),
    /// A bug or an impossible state; the message is logged, not shown.
    #[error("Internal server error")]
    Internal(String),
}

// === impl GatewayError ===

impl From<Refusal> for GatewayError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::TooManyInFlight => GatewayError::TooManyInFlight,
            money => GatewayError::Refused(money),
        }
    }
}

impl GatewayError {
    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            NotFound | GenerationNotFound | FamilyNotEnabled { .. } | UnknownFamily(..) => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            MissingCredentials | WrongScheme | InvalidCredentials => StatusCode::UNAUTHORIZED,
            ReadOnlyKey | TenantDisabled | KeyFamilyNotAllowed(_) | OverKeyMaxPrice { .. } => StatusCode::FORBIDDEN,
            BudgetExceeded { .. } => StatusCode::PAYMENT_REQUIRED,
            RateLimited(_) | AuthThrottled { .. } | TenantUploadsBusy | TooManyInFlight => {
                StatusCode::TOO_MANY_REQUESTS
            }
            UploadTooSlow => StatusCode::REQUEST_TIMEOUT,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Body(_) | BadRequest(_) => StatusCode::BAD_REQUEST,
            Validation(_) | IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Refused(_) => StatusCode::PAYMENT_REQUIRED,
            IdempotencyInProgress | OutcomeUnresolved => StatusCode::CONFLICT,
            Upstream(n) => n.status,
            InvalidAnswer => StatusCode::BAD_GATEWAY,
            Unreachable(_) | Overloaded | Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The access log's `outcome` and the metrics label.
    pub fn outcome(&self) -> &'static str {
        use GatewayError::*;
        match self {
            NotFound | MethodNotAllowed { .. } => "not_found",
            GenerationNotFound | FamilyNotEnabled { .. } | UnknownFamily(..) => "not_found",
            MissingCredentials | WrongScheme | InvalidCredentials => "unauthorized",
            ReadOnlyKey | TenantDisabled | KeyFamilyNotAllowed(_) | OverKeyMaxPrice { .. } => "forbidden",
            BudgetExceeded { .. } => "budget_exceeded",
            RateLimited(_) => "rate_limited",
            TooManyInFlight => "in_flight_limited",
            AuthThrottled { .. } => "auth_throttled",
            TenantUploadsBusy => "overloaded",
            UploadTooSlow => "timeout",
            UnsupportedMediaType => "invalid_request",
            PayloadTooLarge { .. } => "payload_too_large",
            Body(_) | BadRequest(_) | Validation(_) | IdempotencyMismatch => "invalid_request",
            Refused(crate::policy::ledger::Refusal::InsufficientCredits) => "insufficient_credits",
            Refused(crate::policy::ledger::Refusal::BudgetExceeded) => "budget_exceeded",
            Refused(crate::policy::ledger::Refusal::TooManyInFlight) => "in_flight_limited",
            IdempotencyInProgress | OutcomeUnresolved => "conflict",
            Upstream(_) => "upstream_error",
            InvalidAnswer => "upstream_invalid_answer",
            Unreachable(UpstreamError::Timeout) => "upstream_timeout",
            Unreachable(UpstreamError::CircuitOpen { .. }) => "circuit_open",
            Unreachable(_) => "upstream_unavailable",
            RequestTimeout => "timeout",
            Overloaded => "overloaded",
            Store(_) => "store_unavailable",
            Internal(_) => "internal",
        }
    }

    /// For the access line: why a request failed, when the gateway or the platform failed it
    /// (not the tenant's request), in a word an operator can search for.
    pub fn cause(&self) -> Option<&'static str> {
        use GatewayError::*;
        Some(match self {
            Upstream(n) if n.detail == "Upstream authentication failed" => "token_rejected",
            Upstream(n) if n.status == StatusCode::SERVICE_UNAVAILABLE => "platform_unavailable",
            Upstream(n) if n.status == StatusCode::TOO_MANY_REQUESTS => "platform_rate_limited",
            Upstream(n) if n.status.is_server_error() => "platform_error",
            InvalidAnswer => "invalid_answer",
            Unreachable(UpstreamError::Connect(_)) => "connect_refused",
            Unreachable(UpstreamError::Timeout) => "timeout",
            Unreachable(UpstreamError::Broken(_)) => "connection_broken",
            Unreachable(UpstreamError::CircuitOpen { .. }) => "circuit_open",
            Store(StoreError(m)) if m.contains("timed out") => "store_timeout",
            Store(_) => "store_error",
            RequestTimeout => "request_timeout",
            Overloaded => "overloaded",
            Internal(_) => "internal_error",
            _ => return None,
        })
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::RateLimited(r) => Some(r.retry_after_secs),
            GatewayError::AuthThrottled { retry_after_secs } => Some(*retry_after_secs),
            GatewayError::Upstream(n) => n.retry_after,
            GatewayError::Unreachable(UpstreamError::CircuitOpen { retry_after_secs }) => Some(*retry_after_secs),
            GatewayError::Unreachable(_) | GatewayError::Store(_) => Some(RETRY_AFTER_SECS),
            GatewayError::Overloaded | GatewayError::TenantUploadsBusy => Some(1),
            // A slot frees when a generate in flight is answered: seconds, usually.
            GatewayError::TooManyInFlight => Some(2),
            GatewayError::OutcomeUnresolved => Some(OUTCOME_RETRY_AFTER_SECS),
            _ => None,
        }
    }

    /// The `{"detail": ...}` response.
    pub fn into_response(self) -> Response<Body> {
        let mut rsp = body::detail(self.status(), &self.to_string());
        let h = rsp.headers_mut();
        if let Some(secs) = self.retry_after() {
            h.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        match &self {
            // The limiter that decided: its reset is when the next request passes.
            GatewayError::RateLimited(r) => {
                set_rate_limit_headers(h, &Quotas { reset_secs: r.retry_after_secs, ..r.quotas })
            }
            GatewayError::BudgetExceeded { remaining, resets_at } => {
                if let (Ok(r), Ok(t)) = (HeaderValue::from_str(remaining), HeaderValue::from_str(resets_at)) {
                    h.insert("x-budget-remaining", r);
                    h.insert("x-budget-resets-at", t);
                }
            }
            GatewayError::MissingCredentials | GatewayError::WrongScheme | GatewayError::InvalidCredentials => {
                h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            GatewayError::MethodNotAllowed { allow } => {
                h.insert(ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        debug_assert_eq!(h.get(CONTENT_TYPE).map(|v| v.as_bytes()), Some(&b"application/json"[..]));
        rsp
    }
}

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (IETF draft names).
pub fn set_rate_limit_headers(h: &mut http::HeaderMap, q: &Quotas) {
    h.insert(RATELIMIT_LIMIT, number(q.limit.into()));
    h.insert(RATELIMIT_REMAINING, number(q.remaining.into()));
    h.insert(RATELIMIT_RESET, number(q.reset_secs));
}

/// Numbers below this come from a table made once: a reference count per header instead of
/// a formatted, validated and allocated value (typical limits, what is left of them, and the
/// seconds to reset are all small).
const SMALL_NUMBERS: u64 = 1024;

/// A number as a header value: from the table, or formatted on the stack (one allocation,
/// where `HeaderValue::from(u64)` makes two).
fn number(n: u64) -> HeaderValue {
    static SMALL: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let format = |n: u64| HeaderValue::from_str(itoa::Buffer::new().format(n)).unwrap_or(HeaderValue::from_static("0"));
    if n < SMALL_NUMBERS {
        let table = SMALL.get_or_init(|| (0..SMALL_NUMBERS).map(format).collect());
        if let Some(v) = table.get(n as usize) {
            return v.clone();
        }
    }
    format(n)
}

/// `RateLimit-Limit` (names as constants: parsed once, not on every response).
pub const RATELIMIT_LIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`.
pub const RATELIMIT_REMAINING: http::HeaderName = http::HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`.
pub const RATELIMIT_RESET: http::HeaderName = http::HeaderName::from_static("ratelimit-reset");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rate_limit::LimitKind;
    use http_body_util::BodyExt;

    #[test]
    fn rate_limit_numbers_read_the_same_from_the_table_and_beyond_it() {
        for n in [0, 1, 9, 10, 999, 1023, 1024, 1025, 1_000_000, u64::MAX] {
            assert_eq!(number(n).to_str().unwrap(), n.to_string());
        }
    }

    async fn render(e: GatewayError) -> (u16, String, http::HeaderMap) {
        let rsp = e.into_response();
        let status = rsp.status().as_u16();
        let headers = rsp.headers().clone();
        let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 1, "only `detail`: {v}");
        (status, v["detail"].as_str().unwrap().to_string(), headers)
    }

    #[tokio::test]
    async fn every_variant_has_its_status_and_detail() {
        let rl = RateLimited {
            kind: LimitKind::Requests,
            retry_after_secs: 2,
            quotas: Quotas { limit: 40, remaining: 0, reset_secs: 2 },
        };
        let cases: Vec<(GatewayError, u16, &str)> = vec![
            (GatewayError::NotFound, 404, "Not found"),
            (GatewayError::MethodNotAllowed { allow: "POST" }, 405, "Method not allowed"),
            (GatewayError::MissingCredentials, 401, "Missing credentials"),
            (GatewayError::InvalidCredentials, 401, "Invalid credentials"),
            (GatewayError::TenantDisabled, 403, "This team is disabled; ask the gateway's admin"),
            (GatewayError::KeyFamilyNotAllowed("sora"), 403, "This key may not use sora"),
            (
                GatewayError::OverKeyMaxPrice {
                    price: crate::policy::money::Usd::from_micros(180_000),
                    max: crate::policy::money::Usd::from_micros(120_000),
                },
                403,
                "Price 0.1800 is over this key's limit of 0.1200 per generation",
            ),
            (GatewayError::RateLimited(rl), 429, "Rate limit exceeded: requests per second for this key"),
            (GatewayError::WrongScheme, 401, "Missing credentials: use Authorization: Bearer <key>"),
            (GatewayError::BudgetExceeded { remaining: "0.0100".into(), resets_at: "2026-12-01T00:00:00Z".into() }, 402, "BUDGET_EXCEEDED"),
            (GatewayError::AuthThrottled { retry_after_secs: 3 }, 429, "Too many failed authentication attempts from this address; retry later"),
            (GatewayError::UploadTooSlow, 408, "Request body arrived too slowly"),
            (GatewayError::TenantUploadsBusy, 429, "Too many uploads in progress for this tenant; retry shortly"),
            (GatewayError::UnsupportedMediaType, 415, "Content-Type must be application/json"),
            (GatewayError::PayloadTooLarge { limit: 10 }, 413, "Request body exceeds the 10-byte limit"),
            (GatewayError::Body(BodyError::NotAnObject), 400, "Request body must be a JSON object"),
            (GatewayError::BadRequest("bad limit".into()), 400, "bad limit"),
            (
                GatewayError::Validation(ValidationError { field: "prompt".into(), message: "is required".into() }),
                422,
                "prompt: is required",
            ),
            (GatewayError::Refused(Refusal::InsufficientCredits), 402, "INSUFFICIENT_CREDITS"),
            (GatewayError::Refused(Refusal::BudgetExceeded), 402, "BUDGET_EXCEEDED"),
            (GatewayError::GenerationNotFound, 404, "Generation not found"),
            (GatewayError::IdempotencyInProgress, 409, "A request with this Idempotency-Key is still in progress"),
            (
                GatewayError::OutcomeUnresolved,
                409,
                "The first request with this Idempotency-Key reached the platform but its outcome is not known yet; it is being resolved, retry later",
            ),
            (GatewayError::IdempotencyMismatch, 422, "Idempotency-Key was already used with a different request body"),
            (
                GatewayError::FamilyNotEnabled { family: "seedance", enabled: "sora, veo".into() },
                404,
                "Model family seedance is not enabled on this gateway (enabled: sora, veo)",
            ),
            (
                GatewayError::Upstream(Normalized { status: StatusCode::BAD_REQUEST, detail: "x".into(), retry_after: None }),
                400,
                "x",
            ),
            (GatewayError::Unreachable(UpstreamError::Connect("refused".into())), 503, "Upstream unavailable"),
            (GatewayError::Unreachable(UpstreamError::Timeout), 503, "Upstream timed out"),
            (GatewayError::Unreachable(UpstreamError::CircuitOpen { retry_after_secs: 3 }), 503, "Upstream unavailable (circuit open)"),
            (GatewayError::RequestTimeout, 408, "Request timed out"),
            (GatewayError::Overloaded, 503, "Gateway is busy, retry shortly"),
            (GatewayError::Store(StoreError("redis down".into())), 503, "Store unavailable"),
            (GatewayError::Internal("secret detail".into()), 500, "Internal server error"),
        ];
        for (err, status, detail) in cases {
            let name = format!("{err:?}");
            let (s, d, h) = render(err).await;
            assert_eq!((s, d.as_str()), (status, detail), "{name}");
            assert_eq!(h[CONTENT_TYPE], "application/json", "{name}");
            if status == 503 || status == 429 || name == "OutcomeUnresolved" {
                assert!(h.contains_key(RETRY_AFTER), "{name}");
            }
        }
    }

    #[tokio::test]
    async fn rate_limited_carries_all_headers() {
        let rl = RateLimited {
            kind: LimitKind::Generations,
            retry_after_secs: 6,
            quotas: Quotas { limit: 10, remaining: 0, reset_secs: 60 },
        };
        let (_, _, h) = render(GatewayError::RateLimited(rl)).await;
        assert_eq!(h["retry-after"], "6");
        assert_eq!(h["ratelimit-limit"], "10");
        assert_eq!(h["ratelimit-remaining"], "0");
        assert_eq!(h["ratelimit-reset"], "6", "Retry-After and RateLimit-Reset agree");
    }

    #[tokio::test]
    async fn circuit_open_uses_its_own_retry_after() {
        let (_, _, h) = render(GatewayError::Unreachable(UpstreamError::CircuitOpen { retry_after_secs: 7 })).await;
        assert_eq!(h["retry-after"], "7");
    }
}
