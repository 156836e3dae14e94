//! The access log: exactly one JSON line per request, written last, for every outcome (SPEC §6).
//!
//! Fields are fixed and carry no secrets: no keys, no tokens, no prompts, no images (only sizes).
//! Lines go to a sink that never blocks the request: in production they are appended to an
//! in-memory batch that a background thread writes out every few milliseconds (one syscall and
//! no thread wake-up per request, which profiling showed to matter); in tests, to memory.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;

/// One request's log line.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    /// RFC 3339 UTC.
    pub time: String,
    /// Always `INFO`.
    pub level: &'static str,
    /// Constant, so log pipelines can pick these lines out.
    pub target: &'static str,
    /// `x-request-id` sent back to the client.
    pub request_id: &'a str,
    /// W3C trace id (the caller's `traceparent`, or one the gateway started).
    pub trace_id: Option<&'a str>,
    /// Tenant id, when authenticated.
    pub tenant: Option<&'a str>,
    /// HTTP method.
    pub method: &'a str,
    /// Route template (ids elided).
    pub route: &'static str,
    /// Response status.
    pub status: u16,
    /// What happened (forwarded, rate_limited, invalid_request, …).
    pub outcome: &'static str,
    /// Total time in the gateway.
    pub latency_ms: f64,
    /// Platform status, if it was called.
    pub upstream_status: Option<u16>,
    /// Platform time, if it was called.
    pub upstream_latency_ms: Option<f64>,
    /// Held or charged USD for paid requests.
    pub price: Option<String>,
    /// Request body bytes.
    pub request_bytes: usize,
    /// Decoded bytes of validated images.
    pub image_bytes: usize,
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
        let batch = Arc::new(Batch { buf: Mutex::new(Vec::with_capacity(64 * 1024)), dropped: AtomicU64::new(0), stop: AtomicBool::new(false) });
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

    /// Writes one record as one line.
    pub fn write(&self, record: &AccessRecord<'_>) {
        // Sized for a whole line up front: no regrowth (realloc and copy) while serialising.
        let mut line = Vec::with_capacity(512);
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        match &self.sink {
            Sink::Batched(b) => {
                let mut buf = b.buf.lock().unwrap_or_else(|p| p.into_inner());
                if buf.len() + line.len() > MAX_BATCH {
                    b.dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    buf.extend_from_slice(&line);
                }
            }
            Sink::Memory(lines) => {
                let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
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

    fn record(id: &str) -> AccessRecord<'_> {
        AccessRecord {
            time: now_rfc3339(),
            level: "INFO",
            target: "access_log",
            request_id: id,
            trace_id: None,
            tenant: None,
            method: "GET",
            route: "/v1/data/balance",
            status: 200,
            outcome: "served",
            latency_ms: 0.1,
            upstream_status: None,
            upstream_latency_ms: None,
            price: None,
            request_bytes: 0,
            image_bytes: 0,
        }
    }

    #[test]
    fn batched_lines_are_all_written_by_the_guard() {
        let out = Shared::default();
        let (log, guard) = AccessLog::batched(out.clone());
        for i in 0..1000 {
            log.write(&record(&i.to_string()));
        }
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    }

    #[test]
    fn writes_one_json_line_with_the_spec_fields() {
        let (log, lines) = AccessLog::memory();
        log.write(&AccessRecord {
            time: now_rfc3339(),
            level: "INFO",
            target: "access_log",
            request_id: "r1",
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            tenant: Some("marketing"),
            method: "POST",
            route: "/v1/sora/generate",
            status: 201,
            outcome: "forwarded",
            latency_ms: 12.5,
            upstream_status: Some(201),
            upstream_latency_ms: Some(10.0),
            price: Some("0.1200".into()),
            request_bytes: 42,
            image_bytes: 0,
        });
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        for k in ["time", "level", "request_id", "trace_id", "tenant", "method", "route", "status", "outcome", "latency_ms", "upstream_status", "upstream_latency_ms", "price"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["price"], "0.1200");
    }
}
