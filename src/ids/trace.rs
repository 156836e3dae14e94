//! W3C trace context (`traceparent`, `tracestate`): the gateway takes part in the caller's trace.
//!
//! A valid incoming `traceparent` keeps its trace id and flags; the gateway's hop gets a span id
//! of its own, which becomes the parent id the platform sees. Without one (or with an invalid
//! one, which the spec says to ignore) the gateway starts a trace. `tracestate` is passed on only
//! with a valid `traceparent`, and only when it is of sane size. The access line carries the
//! trace id, so a tenant's trace finds the gateway's line and the platform's request.

use http::{HeaderMap, HeaderValue};

/// `traceparent`.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// An id of `N` lowercase hex digits, kept inline: every request gets a trace and a span id,
/// and a `String` each was two allocations and two frees per request.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexId<const N: usize>([u8; N]);

impl<const N: usize> HexId<N> {
    /// `s` when it is exactly `N` lowercase hex digits.
    pub fn parse(s: &str) -> Option<HexId<N>> {
        <[u8; N]>::try_from(s.as_bytes()).ok().filter(|_| is_hex(s)).map(HexId)
    }

    /// The digits of the last `N / 2` of `bytes` (an id of up to 16 bytes).
    pub fn of_bytes(bytes: &[u8]) -> HexId<N> {
        const { assert!(N % 2 == 0 && N <= 32, "an id of up to 128 bits") };
        let mut out = [b'0'; N];
        let _ = hex::encode_to_slice(
            &bytes[bytes.len().saturating_sub(N / 2)..],
            &mut out[N.saturating_sub(2 * bytes.len())..],
        );
        HexId(out)
    }

    /// All zero digits: an invalid trace or span id.
    fn is_zero(&self) -> bool {
        self.0.iter().all(|&b| b == b'0')
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl<const N: usize> std::ops::Deref for HexId<N> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> PartialEq<&str> for HexId<N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl<const N: usize> std::fmt::Debug for HexId<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> std::fmt::Display for HexId<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The trace this request belongs to, and the gateway's span in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: HexId<32>,
    /// The gateway's span: 16 lowercase hex digits.
    pub span_id: HexId<16>,
    /// Trace flags (bit 0: sampled), kept from the caller.
    pub flags: u8,
    /// The caller's span (the `traceparent` parent id), when it sent one.
    pub parent_id: Option<HexId<16>>,
    /// The caller's `tracestate`, passed on unchanged.
    pub tracestate: Option<HeaderValue>,
}

/// The W3C limit for `tracestate` is 32 list members; 512 bytes is what the spec asks every
/// participant to pass on at least.
const MAX_TRACESTATE: usize = 512;

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A random id of `N` hex digits, never all zero (W3C: all-zero ids are invalid).
fn random_hex<const N: usize>() -> HexId<N> {
    loop {
        let id = HexId::of_bytes(&crate::ids::random_bits().to_be_bytes());
        if !id.is_zero() {
            return id;
        }
    }
}

/// `(trace_id, parent_id, flags)` of a valid `traceparent`.
fn parse(v: &str) -> Option<(HexId<32>, HexId<16>, u8)> {
    let mut parts = v.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let (trace, parent) = (HexId::<32>::parse(trace)?, HexId::<16>::parse(parent)?);
    let valid = version.len() == 2
        && is_hex(version)
        && version != "ff"
        && !trace.is_zero()
        && !parent.is_zero()
        && flags.len() == 2
        && is_hex(flags);
    // Version 00 has exactly four fields; later versions may append more after a dash.
    let rest_ok = match parts.next() {
        None => true,
        Some(_) => version != "00",
    };
    if !(valid && rest_ok) {
        return None;
    }
    Some((trace, parent, u8::from_str_radix(flags, 16).unwrap_or(0)))
}

impl TraceContext {
    /// The context for a request with these headers.
    pub fn from_headers(headers: &HeaderMap) -> TraceContext {
        let parent = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(parse);
        match parent {
            Some((trace, parent, flags)) => TraceContext {
                trace_id: trace,
                span_id: random_hex(),
                flags,
                parent_id: Some(parent),
                tracestate: headers.get(TRACESTATE).filter(|v| v.len() <= MAX_TRACESTATE).cloned(),
            },
            None => TraceContext {
                trace_id: random_hex(),
                span_id: random_hex(),
                flags: 0,
                parent_id: None,
                tracestate: None,
            },
        }
    }

    /// The `traceparent` the platform gets: this trace, the gateway's span as parent.
    /// Assembled in place (it is built for every forwarded request).
    pub fn traceparent(&self) -> HeaderValue {
        let mut b = [0u8; 55];
        b[..3].copy_from_slice(b"00-");
        b[3..35].copy_from_slice(&self.trace_id.0);
        b[35] = b'-';
        b[36..52].copy_from_slice(&self.span_id.0);
        b[52] = b'-';
        let _ = hex::encode_to_slice([self.flags], &mut b[53..]);
        HeaderValue::from_bytes(&b).unwrap_or(HeaderValue::from_static(""))
    }

    /// Adds `traceparent` (and `tracestate`) to a request going upstream.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, self.traceparent());
        if let Some(s) = &self.tracestate {
            headers.insert(TRACESTATE, s.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(tp: &str, ts: Option<&str>) -> TraceContext {
        let mut h = HeaderMap::new();
        h.insert("traceparent", tp.parse().unwrap());
        if let Some(ts) = ts {
            h.insert("tracestate", ts.parse().unwrap());
        }
        TraceContext::from_headers(&h)
    }

    #[test]
    fn a_valid_parent_keeps_its_trace_and_flags_with_a_new_span() {
        let c = ctx("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some("congo=t61rcWkgMzE"));
        assert_eq!(c.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.flags, 1);
        assert_ne!(c.span_id, "00f067aa0ba902b7");
        assert_eq!(c.tracestate.as_ref().unwrap(), "congo=t61rcWkgMzE");
        let tp = c.traceparent();
        let tp = tp.to_str().unwrap();
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-01"), "{tp}");
        assert_eq!(parse(tp).map(|p| p.0), HexId::parse("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(c.parent_id.as_deref(), Some("00f067aa0ba902b7"));
    }

    #[test]
    fn invalid_parents_start_a_new_trace_and_drop_tracestate() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let c = ctx(bad, Some("a=b"));
            assert_ne!(c.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert_eq!((c.trace_id.len(), c.flags, c.tracestate.is_none()), (32, 0, true), "{bad}");
        }
        // A later version may carry more fields.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
    }
}
