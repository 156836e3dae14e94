//! The one response body type (request bodies are buffered by `upload.rs`).

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;

/// Every response is buffered: upstream answers are small JSON and are inspected anyway.
pub type Body = Full<Bytes>;

/// A JSON response with the given bytes.
pub fn json(status: StatusCode, bytes: impl Into<Bytes>) -> Response<Body> {
    typed(status, HeaderValue::from_static("application/json"), bytes)
}

/// A response with the given content type and bytes.
pub fn typed(status: StatusCode, content_type: HeaderValue, bytes: impl Into<Bytes>) -> Response<Body> {
    let mut rsp = Response::new(Full::new(bytes.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(CONTENT_TYPE, content_type);
    rsp
}

/// `{"detail": "<detail>"}` with the given status.
pub fn detail(status: StatusCode, detail: &str) -> Response<Body> {
    json(status, serde_json::json!({ "detail": detail }).to_string())
}

/// Why a capped read stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CappedError {
    /// More than the cap arrived.
    TooLarge,
    /// The body broke off (the client's error, as text).
    Broken(String),
}

/// A whole (small) body, refused past `cap` bytes: admin requests, relayed webhooks. Request
/// bodies of the paid path go through `core::upload` instead, which reserves memory as they
/// arrive.
pub async fn read_capped<B>(incoming: B, cap: usize) -> Result<Bytes, CappedError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    let mut incoming = std::pin::pin!(incoming);
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| CappedError::Broken(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > cap {
                return Err(CappedError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// The declared Content-Length, if any and valid.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_is_escaped_json() {
        let rsp = detail(StatusCode::BAD_REQUEST, "a \"quoted\" word");
        assert_eq!(rsp.headers()[CONTENT_TYPE], "application/json");
    }
}
