//! Pure: an upstream error response → the platform's `{"detail": "..."}` schema.
//!
//! The platform is not consistent (FastAPI `detail` strings and pydantic lists, `message`
//! envelopes, `error` objects, HTML from its proxies); tenants always get one shape.

use http::StatusCode;
use serde_json::Value;

/// Retry-After used when the platform did not send one.
pub const DEFAULT_RETRY_AFTER_SECS: u64 = 5;
/// Longest detail passed on; anything longer is cut (a proxy's error page is not a message).
const MAX_DETAIL_CHARS: usize = 1000;

/// What the tenant gets for an upstream error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// Status for the tenant.
    pub status: StatusCode,
    /// The `detail` string.
    pub detail: String,
    /// Seconds for `Retry-After`, when the status calls for one.
    pub retry_after: Option<u64>,
}

/// What replaces a secret in a detail.
pub const REDACTED: &str = "[redacted]";

/// Removes `secrets` and any `Bearer <credential>` from a detail the platform wrote, so a
/// platform that quotes a header back never leaks the gateway's token to a tenant.
pub fn redact(detail: &str, secrets: &[&str]) -> String {
    let mut out = detail.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        if out.contains(*s) {
            out = out.replace(*s, REDACTED);
        }
    }
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.to_ascii_lowercase().find("bearer ") {
        let after = &rest[i + 7..];
        let cred_len =
            after.find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',').unwrap_or(after.len());
        result.push_str(&rest[..i + 7]);
        if cred_len > 0 && &after[..cred_len] != REDACTED {
            result.push_str(REDACTED);
        } else {
            result.push_str(&after[..cred_len]);
        }
        rest = &after[cred_len..];
    }
    result.push_str(rest);
    result
}

/// Canonical text of a status, e.g. `Bad Gateway`.
pub fn canonical(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("Upstream error").to_string()
}

/// The message inside an error body, whatever envelope the platform used.
pub fn extract_detail(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let s = from_value(&v)?;
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    Some(s.chars().take(MAX_DETAIL_CHARS).collect())
}

fn from_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("detail")
            .and_then(from_detail)
            .or_else(|| o.get("message").and_then(Value::as_str).map(str::to_string))
            .or_else(|| o.get("error").and_then(from_detail)),
        _ => None,
    }
}

/// `detail`/`error` may be a string, a pydantic list, or an object with a message.
fn from_detail(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(pydantic_item).collect();
            (!parts.is_empty()).then(|| parts.join("; "))
        }
        Value::Object(o) => ["message", "msg", "detail", "code"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_str))
            .map(str::to_string),
        _ => None,
    }
}

/// `{"loc":["body","prompt"],"msg":"..."}` → `prompt: ...`.
fn pydantic_item(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => {
            let msg = o.get("msg").or_else(|| o.get("message")).and_then(Value::as_str)?;
            let loc: Vec<String> = o
                .get("loc")
                .and_then(Value::as_array)
                .map(|l| {
                    l.iter()
                        .skip_while(|p| p.as_str() == Some("body"))
                        .map(|p| match p {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(if loc.is_empty() { msg.to_string() } else { format!("{}: {msg}", loc.join(".")) })
        }
        _ => None,
    }
}

fn parse_retry_after(v: Option<&str>) -> Option<u64> {
    v.and_then(|s| s.trim().parse::<u64>().ok())
}

/// Normalises a non-2xx upstream response.
pub fn normalize(status: StatusCode, retry_after: Option<&str>, body: &[u8]) -> Normalized {
    let detail = || extract_detail(body).unwrap_or_else(|| canonical(status));
    let retry = || Some(parse_retry_after(retry_after).unwrap_or(DEFAULT_RETRY_AFTER_SECS));
    match status.as_u16() {
        // The gateway's own token was refused: the tenant's key is fine, so never a 401.
        401 | 403 => Normalized {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            detail: "Upstream authentication failed".into(),
            retry_after: None,
        },
        502..=504 => Normalized { status: StatusCode::SERVICE_UNAVAILABLE, detail: detail(), retry_after: retry() },
        429 => Normalized { status, detail: detail(), retry_after: retry() },
        400..=599 => Normalized { status, detail: detail(), retry_after: None },
        // 1xx/3xx/odd codes where a JSON answer was due: the platform is not answering properly.
        _ => Normalized {
            status: StatusCode::SERVICE_UNAVAILABLE,
            detail: format!("Unexpected upstream status {}", status.as_u16()),
            retry_after: retry(),
        },
    }
}

/// `status` of a status body, if it is a JSON object with one (borrowed unless escaped).
pub(crate) fn reported_status(body: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    #[derive(serde::Deserialize)]
    struct S<'a> {
        #[serde(borrow)]
        status: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<S<'_>>(body).ok()?.status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_bearer_credentials_are_redacted() {
        assert_eq!(
            redact("Bad header Authorization: Bearer sk-live-123", &["sk-live-123"]),
            "Bad header Authorization: Bearer [redacted]"
        );
        assert_eq!(redact("token sk-live-123 expired", &["sk-live-123"]), "token [redacted] expired");
        assert_eq!(redact("bearer abc, then BEARER xyz", &[]), "bearer [redacted], then BEARER [redacted]");
        assert_eq!(redact("nothing secret", &["sk-live-123"]), "nothing secret");
        assert_eq!(redact("Bearer ", &[]), "Bearer ");
    }

    fn n(status: u16, body: &str) -> (u16, String, Option<u64>) {
        let r = normalize(StatusCode::from_u16(status).unwrap(), None, body.as_bytes());
        (r.status.as_u16(), r.detail, r.retry_after)
    }

    /// Upstream status and body → expected status, detail, Retry-After.
    type Case<'a> = (u16, &'a str, (u16, &'a str, Option<u64>));

    #[test]
    fn every_shape_becomes_one_detail_string() {
        let cases: &[Case<'_>] = &[
            (402, r#"{"detail": "INSUFFICIENT_CREDITS"}"#, (402, "INSUFFICIENT_CREDITS", None)),
            (404, r#"{"detail": "Generation not found"}"#, (404, "Generation not found", None)),
            (
                422,
                r#"{"detail":[{"type":"string_too_short","loc":["body","prompt"],"msg":"String should have at least 1 character"}]}"#,
                (422, "prompt: String should have at least 1 character", None),
            ),
            (
                422,
                r#"{"detail":[{"loc":["body","duration"],"msg":"Input should be 10 or 15","input":5},{"loc":["query","limit",0],"msg":"bad"}]}"#,
                (422, "duration: Input should be 10 or 15; query.limit.0: bad", None),
            ),
            (
                422,
                r#"{"detail": "Validation error: prompt is required"}"#,
                (422, "Validation error: prompt is required", None),
            ),
            (402, r#"{"success": false, "message": "INSUFFICIENT_CREDITS"}"#, (402, "INSUFFICIENT_CREDITS", None)),
            (400, r#"{"error": {"code": "X", "message": "bad thing"}}"#, (400, "bad thing", None)),
            (400, r#"{"error": "plain error"}"#, (400, "plain error", None)),
            (
                400,
                r#"{"detail": {"code": "INVALID_TASK_ID", "message": "must be valid UUID"}}"#,
                (400, "must be valid UUID", None),
            ),
            (400, r#"{"detail": {"code": "INVALID_TASK_ID"}}"#, (400, "INVALID_TASK_ID", None)),
            (500, r#"{"detail": "boom"}"#, (500, "boom", None)),
            (500, "<html><body>Internal</body></html>", (500, "Internal Server Error", None)),
            (500, "", (500, "Internal Server Error", None)),
            (404, r#"{"detail": ""}"#, (404, "Not Found", None)),
            (400, r#"{"unrelated": 1}"#, (400, "Bad Request", None)),
            (400, r#"[1,2]"#, (400, "Bad Request", None)),
            (400, r#"{"detail": "trunc"#, (400, "Bad Request", None)),
            (418, r#""just a string""#, (418, "just a string", None)),
        ];
        for (status, body, want) in cases {
            let got = n(*status, body);
            assert_eq!((got.0, got.1.as_str(), got.2), *want, "{status} {body}");
        }
    }

    #[test]
    fn upstream_auth_failures_are_500_never_401() {
        for s in [401, 403] {
            assert_eq!(
                n(s, r#"{"detail":"Missing credentials"}"#),
                (500, "Upstream authentication failed".into(), None)
            );
        }
        assert_eq!(
            n(401, r#"{"error":"Unauthorized","message":"Invalid API key"}"#).1,
            "Upstream authentication failed"
        );
    }

    #[test]
    fn gateway_errors_become_503_with_retry_after() {
        assert_eq!(n(502, "<html>Bad gateway</html>"), (503, "Bad Gateway".into(), Some(5)));
        assert_eq!(n(503, ""), (503, "Service Unavailable".into(), Some(5)));
        assert_eq!(n(504, r#"{"detail":"upstream timed out"}"#), (503, "upstream timed out".into(), Some(5)));
        let r = normalize(StatusCode::SERVICE_UNAVAILABLE, Some("30"), b"");
        assert_eq!(r.retry_after, Some(30));
        let r = normalize(StatusCode::SERVICE_UNAVAILABLE, Some("Wed, 21 Oct 2015 07:28:00 GMT"), b"");
        assert_eq!(r.retry_after, Some(5));
    }

    #[test]
    fn upstream_429_keeps_status_and_retry_after() {
        let r = normalize(StatusCode::TOO_MANY_REQUESTS, Some("12"), br#"{"detail":"slow down"}"#);
        assert_eq!((r.status.as_u16(), r.detail.as_str(), r.retry_after), (429, "slow down", Some(12)));
    }

    #[test]
    fn redirects_are_not_passed_on() {
        assert_eq!(n(302, "").0, 503);
    }

    #[test]
    fn long_details_are_cut() {
        let body = format!(r#"{{"detail":"{}"}}"#, "x".repeat(5000));
        assert_eq!(n(400, &body).1.len(), MAX_DETAIL_CHARS);
    }
}
