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
