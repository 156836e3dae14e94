//! The access log: exactly one JSON line per request, written last, for every outcome (SPEC §6).
//!
//! Fields are fixed and carry no secrets: no keys, no tokens, no prompts, no images (only sizes).
//! Lines go to a sink that does not block the request (a non-blocking stdout writer in
//! production, memory in tests).

use std::io::Write;
use std::sync::{Arc, Mutex};

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

type Writer = Box<dyn Write + Send>;

/// Where access-log lines go.
#[derive(Clone)]
pub struct AccessLog {
    sink: Sink,
}

#[derive(Clone)]
enum Sink {
    Writer(Arc<Mutex<Writer>>),
    Memory(Arc<Mutex<Vec<String>>>),
    Off,
}

// === impl AccessLog ===

impl AccessLog {
    /// Lines to a writer (e.g. `tracing_appender`'s non-blocking stdout).
    pub fn to_writer(w: impl Write + Send + 'static) -> Self {
        AccessLog { sink: Sink::Writer(Arc::new(Mutex::new(Box::new(w)))) }
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
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        match &self.sink {
            Sink::Writer(w) => {
                let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
                let _ = w.write_all(&line);
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

    #[test]
    fn writes_one_json_line_with_the_spec_fields() {
        let (log, lines) = AccessLog::memory();
        log.write(&AccessRecord {
            time: now_rfc3339(),
            level: "INFO",
            target: "access_log",
            request_id: "r1",
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
        for k in ["time", "level", "request_id", "tenant", "method", "route", "status", "outcome", "latency_ms", "upstream_status", "upstream_latency_ms", "price"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["price"], "0.1200");
    }
}
