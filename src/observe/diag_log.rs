//! Diagnostic log lines in the access log's shape: one flat JSON object per line with `time`
//! (RFC 3339, UTC), `level`, `target`, `message` and the event's fields. tracing-subscriber's own
//! JSON format names its time field `timestamp`, which would give operators two shapes to parse.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter for diagnostic lines.
pub struct FlatJson;

struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_string(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
}

/// One diagnostic line (without its newline) for an event's metadata and fields: `time`,
/// `level`, `target` and `message` first, then the other fields in name order.
pub fn line(level: &tracing::Level, target: &str, mut fields: Map<String, Value>) -> String {
    let str = |s: &str| Value::String(s.to_string()).to_string();
    let mut out = format!(
        r#"{{"time":{},"level":{},"target":{}"#,
        str(&crate::observe::access_log::now_rfc3339()),
        str(level.as_str()),
        str(target)
    );
    let message = fields.remove("message");
    for (k, v) in message.iter().map(|m| ("message", m)).chain(fields.iter().map(|(k, v)| (k.as_str(), v))) {
        out.push(',');
        out.push_str(&str(k));
        out.push(':');
        out.push_str(&v.to_string());
    }
    out.push('}');
    out
}

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let meta = event.metadata();
        writeln!(w, "{}", line(meta.level(), meta.target(), fields.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_flat_json_with_the_access_logs_time_field() {
        let mut f = Map::new();
        f.insert("cause".into(), Value::from("timeout"));
        f.insert("message".into(), Value::from("platform failing"));
        let v: Value = serde_json::from_str(&line(&tracing::Level::WARN, "tollgate::upstream", f)).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["message"], "platform failing");
        assert_eq!(v["cause"], "timeout");
        assert!(v.get("timestamp").is_none());
        let t = v["time"].as_str().unwrap();
        assert!(time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_ok(), "{t}");
    }
}
