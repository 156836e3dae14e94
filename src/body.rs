//! The one response body type, and request-body buffering with a hard cap.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full};

/// Every response is buffered: upstream answers are small JSON and are inspected anyway.
pub type Body = Full<Bytes>;

/// A JSON response with the given bytes.
pub fn json(status: StatusCode, bytes: impl Into<Bytes>) -> Response<Body> {
    let mut rsp = Response::new(Full::new(bytes.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rsp
}

/// `{"detail": "<detail>"}` with the given status.
pub fn detail(status: StatusCode, detail: &str) -> Response<Body> {
    json(status, serde_json::json!({ "detail": detail }).to_string())
}

/// Why a request body could not be buffered.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Over the cap (by Content-Length or by bytes received).
    TooLarge,
    /// The client went away or sent a broken body.
    Broken(String),
}

/// The declared Content-Length, if any and valid.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Reads a body of at most `limit` bytes into one contiguous buffer. A declared length over the
/// cap is refused before reading; otherwise reading stops at the first byte past the cap.
pub async fn read_limited<B>(body: B, declared: Option<u64>, limit: usize) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    // One allocation of the right size when the client said how much is coming.
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Broken(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn chunks(parts: Vec<&'static [u8]>) -> impl http_body::Body<Data = Bytes, Error = std::convert::Infallible> {
        let frames = parts.into_iter().map(|p| Ok(http_body::Frame::data(Bytes::from_static(p))));
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn reads_whole_body_under_the_cap() {
        let b = read_limited(chunks(vec![b"ab", b"cd"]), None, 4).await.unwrap();
        assert_eq!(&b[..], b"abcd");
    }

    #[tokio::test]
    async fn stops_at_first_byte_over_the_cap() {
        assert_eq!(read_limited(chunks(vec![b"ab", b"cde"]), None, 4).await, Err(ReadError::TooLarge));
    }

    #[tokio::test]
    async fn refuses_declared_oversize_without_reading() {
        assert_eq!(read_limited(chunks(vec![]), Some(5), 4).await, Err(ReadError::TooLarge));
    }

    #[test]
    fn detail_is_escaped_json() {
        let rsp = detail(StatusCode::BAD_REQUEST, "a \"quoted\" word");
        assert_eq!(rsp.headers()[CONTENT_TYPE], "application/json");
    }
}
