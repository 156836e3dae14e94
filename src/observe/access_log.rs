//! The access log: exactly one JSON line per request, written last, for every outcome (SPEC §6).
//!
//! Fields are fixed and carry no secrets: no keys, no tokens, no prompts, no images (only sizes).
//! Lines go to a sink that never blocks the request: in production they are appended to an
//! in-memory batch that a background thread writes out every few milliseconds (one syscall and
//! no thread wake-up per request, which profiling showed to matter); in tests, to memory.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;
use time::format_description::well_known::Rfc3339;

use crate::ids::trace::TraceContext;

/// What one request did: made when it arrives, filled in by the stages as it goes, then counted
/// (`Metrics::observe`) and written (`AccessLog::write`) once, with its status, when it ends.
/// The line's fields are this struct's (`time`, `level` and `target` first, added by the
/// writer), so a new field is one field here and one line in `write_json`.
#[derive(Clone, Debug)]
pub struct AccessRecord {
    /// When the request arrived; the line's `latency_ms` runs from here.
    pub started: Instant,
    /// HTTP method.
    pub method: http::Method,
    /// `x-request-id` sent back, sent to the platform and logged. Always visible ASCII (a sane
    /// client id or a UUID), so its text costs nothing (`request_id`).
    pub request_id: HeaderValue,
    /// W3C trace context: the caller's trace (or one the gateway started).
    pub trace: Option<TraceContext>,
    /// Tenant id, once authenticated.
    pub tenant: Option<Arc<str>>,
    /// Route template (ids elided).
    pub route: &'static str,
    /// What happened (forwarded, rate_limited, invalid_request, …).
    pub outcome: &'static str,
    /// Platform status, if it was called.
    pub upstream_status: Option<u16>,
    /// Platform time, if it was called.
    pub upstream_latency: Option<Duration>,
    /// Held or charged USD for paid requests.
    pub price: Option<crate::policy::money::Usd>,
    /// Request body bytes.
    pub request_bytes: usize,
    /// Decoded bytes of validated images.
    pub image_bytes: usize,
    /// Why it failed, when the gateway or the platform failed it (`token_rejected`,
    /// `connect_refused`, `timeout`, `circuit_open`, `store_timeout` …); absent otherwise.
    pub cause: Option<&'static str>,
    /// The client's address, when known (not logged: it picks the refusal sampler's bucket).
    pub peer: Option<std::net::IpAddr>,
}

impl AccessRecord {
    /// A request just arrived.
    pub fn new(
        method: http::Method,
        request_id: HeaderValue,
        route: &'static str,
        outcome: &'static str,
    ) -> AccessRecord {
        AccessRecord {
            started: Instant::now(),
            method,
            request_id,
            trace: None,
            tenant: None,
            route,
            outcome,
            upstream_status: None,
            upstream_latency: None,
            price: None,
            request_bytes: 0,
            image_bytes: 0,
            cause: None,
            peer: None,
        }
    }

    /// The request id as text.
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// The platform answered `status` after `latency` (the two always come together).
    pub fn upstream(&mut self, status: u16, latency: Duration) {
        self.upstream_status = Some(status);
        self.upstream_latency = Some(latency);
    }

    /// Appends the record, ended with `status` after `latency`, as one JSON object (no
    /// newline). Written out by hand: a serde serialiser walking 16 fields was 7 % of a
    /// forwarded request's instructions.
    pub fn write_json(&self, status: u16, latency: Duration, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        // `time` formats straight into the buffer (no String per line).
        let _ = time::OffsetDateTime::now_utc().format_into(out, &Rfc3339);
        out.extend_from_slice(br#"","level":"INFO","target":"access_log","request_id":"#);
        push_str(out, self.request_id());
        out.extend_from_slice(br#","trace_id":"#);
        push_or_null(out, self.trace.as_ref().map(|t| t.trace_id.as_str()), push_str);
        out.extend_from_slice(br#","tenant":"#);
        push_or_null(out, self.tenant.as_deref(), push_str);
        out.extend_from_slice(br#","method":"#);
        push_str(out, self.method.as_str());
        out.extend_from_slice(br#","route":"#);
        push_str(out, self.route);
        out.extend_from_slice(br#","status":"#);
        push_int(out, status);
        out.extend_from_slice(br#","outcome":"#);
        push_str(out, self.outcome);
        out.extend_from_slice(br#","latency_ms":"#);
        push_ms(out, latency);
        out.extend_from_slice(br#","upstream_status":"#);
        push_or_null(out, self.upstream_status, push_int);
        out.extend_from_slice(br#","upstream_latency_ms":"#);
        push_or_null(out, self.upstream_latency, push_ms);
        out.extend_from_slice(br#","price":"#);
        push_or_null(out, self.price, |out, p| {
            out.push(b'"');
            let _ = write!(out, "{p}");
            out.push(b'"');
        });
        out.extend_from_slice(br#","request_bytes":"#);
        push_int(out, self.request_bytes);
        out.extend_from_slice(br#","image_bytes":"#);
        push_int(out, self.image_bytes);
        if let Some(cause) = self.cause {
            out.extend_from_slice(br#","cause":"#);
            push_str(out, cause);
        }
        out.push(b'}');
    }
}

fn push_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Milliseconds with microsecond precision (`12.5`, `0.131`: no `0.13026300000000002`).
fn push_ms(out: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros();
    push_int(out, micros / 1000);
    let frac = (micros % 1000) as u32;
    out.push(b'.');
    if frac == 0 {
        out.push(b'0');
        return;
    }
    let digits = [b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8];
    let keep = if frac % 100 == 0 {
        1
    } else if frac % 10 == 0 {
        2
    } else {
        3
    };
    out.extend_from_slice(&digits[..keep]);
}

/// `v` written by `push`, or `null`.
fn push_or_null<T>(out: &mut Vec<u8>, v: Option<T>, push: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        Some(v) => push(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// A byte a JSON string must escape: a control character, quote or backslash. Comparisons,
/// not a table, so the clean-string pass below vectorises.
fn must_escape(c: u8) -> bool {
    (c < 0x20) | (c == b'"') | (c == b'\\')
}

/// A JSON string, escaped as serde_json escapes: quote, backslash and control characters;
/// other UTF-8 passes through. Clean runs are copied whole.
pub(crate) fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let b = s.as_bytes();
    // Nearly every field is clean: one pass that the compiler vectorises (no early exit), then
    // one copy.
    if !b.iter().fold(false, |dirty, &c| dirty | must_escape(c)) {
        out.extend_from_slice(b);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    while let Some(i) = b[start..].iter().position(|&c| must_escape(c)).map(|i| start + i) {
        out.extend_from_slice(&b[start..i]);
        let c = b[i];
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                let mut esc = *b"\\u0000";
                let _ = hex::encode_to_slice([c], &mut esc[4..]);
                out.extend_from_slice(&esc);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// How often the batch is written out.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// A batch this large (the writer is stuck) drops further lines rather than grow or block.
const MAX_BATCH: usize = 16 * 1024 * 1024;

/// Where access-log lines go.
#[derive(Clone)]
pub struct AccessLog {
    sink: Sink,
}

#[derive(Clone)]
enum Sink {
    Batched(Arc<Batch>),
    Memory(Arc<Mutex<Vec<String>>>),
    Off,
}

struct Batch {
    buf: Mutex<Vec<u8>>,
    dropped: AtomicU64,
    stop: AtomicBool,
}

/// Writes out what is left when dropped; keep it alive for the life of the process.
pub struct FlushGuard {
    batch: Arc<Batch>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.batch.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

// === impl AccessLog ===

impl AccessLog {
    /// Lines batched and written to `w` by a background thread every few milliseconds.
    pub fn batched(mut w: impl Write + Send + 'static) -> (Self, FlushGuard) {
        let batch = Arc::new(Batch {
            buf: Mutex::new(Vec::with_capacity(64 * 1024)),
            dropped: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let b = batch.clone();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                // Two buffers swapped in turn: requests append to one whose capacity has already
                // grown, never to a fresh empty Vec that reallocates and copies as it fills.
                let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
                loop {
                    let stop = b.stop.load(Ordering::Relaxed);
                    out.clear();
                    std::mem::swap(&mut out, &mut *b.buf.lock().unwrap_or_else(|p| p.into_inner()));
                    if !out.is_empty() {
                        let _ = w.write_all(&out).and_then(|_| w.flush());
                    }
                    let dropped = b.dropped.swap(0, Ordering::Relaxed);
                    if dropped > 0 {
                        let _ = writeln!(w, r#"{{"time":"{}","level":"WARN","target":"access_log","message":"dropped {dropped} access-log lines: output too slow"}}"#, now_rfc3339());
                    }
                    if stop {
                        return;
                    }
                    std::thread::park_timeout(FLUSH_EVERY);
                }
            })
            .expect("spawn access-log thread");
        (AccessLog { sink: Sink::Batched(batch.clone()) }, FlushGuard { batch, thread: Some(thread) })
    }

    /// Lines kept in memory; the handle reads them (tests).
    pub fn memory() -> (Self, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        (AccessLog { sink: Sink::Memory(lines.clone()) }, lines)
    }

    /// No access log.
    pub fn off() -> Self {
        AccessLog { sink: Sink::Off }
    }

    /// Writes one record, ended with `status` after `latency`, as one line.
    pub fn write(&self, record: &AccessRecord, status: u16, latency: Duration) {
        match &self.sink {
            // Written straight into the batch under its lock (no line buffer per request).
            Sink::Batched(b) => {
                let mut buf = b.buf.lock().unwrap_or_else(|p| p.into_inner());
                let start = buf.len();
                record.write_json(status, latency, &mut buf);
                buf.push(b'\n');
                if buf.len() > MAX_BATCH {
                    buf.truncate(start);
                    b.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Sink::Memory(lines) => {
                let mut line = Vec::with_capacity(512);
                record.write_json(status, latency, &mut line);
                let text = String::from_utf8_lossy(&line).into_owned();
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(text);
            }
            Sink::Off => {}
        }
    }
}

/// Now, RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn record(id: &str) -> AccessRecord {
        AccessRecord::new(http::Method::GET, HeaderValue::from_str(id).unwrap(), "/v1/data/balance", "served")
    }

    #[test]
    fn batched_lines_are_all_written_by_the_guard() {
        let out = Shared::default();
        let (log, guard) = AccessLog::batched(out.clone());
        for i in 0..1000 {
            log.write(&record(&i.to_string()), 200, Duration::from_micros(100));
        }
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    }

    #[test]
    fn writes_one_json_line_with_the_spec_fields() {
        let (log, lines) = AccessLog::memory();
        let mut r =
            AccessRecord::new(http::Method::POST, HeaderValue::from_static("r1"), "/v1/sora/generate", "forwarded");
        let mut headers = http::HeaderMap::new();
        headers
            .insert("traceparent", HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        r.trace = Some(TraceContext::from_headers(&headers));
        r.tenant = Some(Arc::from("marketing"));
        r.upstream(201, Duration::from_millis(10));
        r.price = Some(crate::policy::money::Usd::from_micros(120_000));
        r.request_bytes = 42;
        log.write(&r, 201, Duration::from_micros(12_500));
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        for k in [
            "time",
            "level",
            "request_id",
            "trace_id",
            "tenant",
            "method",
            "route",
            "status",
            "outcome",
            "latency_ms",
            "upstream_status",
            "upstream_latency_ms",
            "price",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["price"], "0.1200");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "access_log");
        assert_eq!(v["latency_ms"], 12.5);
        assert_eq!(v["upstream_latency_ms"], 10.0);
        assert_eq!(v["request_bytes"], 42);
        assert!(v["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" && v["tenant"] == "marketing");
        assert!(v.get("cause").is_none() && v.get("peer").is_none(), "{v}");
        let t = v["time"].as_str().unwrap();
        assert!(time::OffsetDateTime::parse(t, &Rfc3339).is_ok(), "{t}");
    }

    #[test]
    fn strings_are_escaped_as_json_and_latencies_have_microseconds() {
        for s in ["plain", "quote \" and \\ back", "ctl \u{1}\n\t\r", "ünïcødé ✓", ""] {
            let mut out = Vec::new();
            push_str(&mut out, s);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "same bytes as serde_json for {s:?}");
        }
        // Every ASCII byte at every position of a string long enough for the vectorised check.
        for c in 0u8..0x80 {
            for at in [0, 1, 15, 16, 31, 32, 33, 63, 69] {
                let mut s = "x".repeat(70);
                s.replace_range(at..at + 1, std::str::from_utf8(&[c]).unwrap());
                let mut out = Vec::new();
                push_str(&mut out, &s);
                assert_eq!(out, serde_json::to_vec(&s).unwrap(), "byte {c:#x} at {at}");
            }
        }
        for (micros, text) in
            [(0, "0.0"), (100, "0.1"), (131, "0.131"), (12_500, "12.5"), (1_000_000, "1000.0"), (2_030, "2.03")]
        {
            let mut out = Vec::new();
            push_ms(&mut out, Duration::from_micros(micros));
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }
}
