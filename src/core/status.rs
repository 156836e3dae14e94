//! Status recording, shared by tenants' polls and lists (the front door), relayed webhooks and
//! the reconciler (background): a status change the platform reports is recorded through one
//! conditional update, so a failure is refunded once however many of them saw it.

use crate::core::Shared;
use crate::store::GenerationRecord;

/// Measured: the scan replaced a JSON parse of every status body, one of the changes that took a
/// forwarded poll from 89,255 to 69,100 instructions (callgrind, `benches/instructions.sh`); its
/// own share was not measured apart from the others.
///
/// The top-level `"status"` string of a JSON object, found by a byte scan without parsing the
/// rest; `None` when it is absent, escaped, or the scan meets anything unexpected. Only ever
/// used to see that a status did *not* change (see `track_status`).
pub(crate) fn scanned_status(body: &[u8]) -> Option<&[u8]> {
    let ws = |b: &[u8], mut i: usize| {
        while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
            i += 1;
        }
        i
    };
    let mut i = ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut depth = 1usize;
    while i < body.len() {
        match body[i] {
            b'"' => {
                let start = i + 1;
                i = start;
                // To the closing quote, a memchr jump at a time (the bodies are mostly strings).
                loop {
                    i += memchr::memchr2(b'"', b'\\', body.get(i..)?)?;
                    if body[i] == b'"' {
                        break;
                    }
                    i += 2;
                }
                let key = &body[start..i];
                i += 1;
                if depth == 1 && key == b"status" {
                    let colon = ws(body, i);
                    if body.get(colon) == Some(&b':') {
                        let v = ws(body, colon + 1);
                        if body.get(v) != Some(&b'"') {
                            return None;
                        }
                        let len = body[v + 1..].iter().position(|c| matches!(c, b'"' | b'\\'))?;
                        return (body[v + 1 + len] == b'"').then(|| &body[v + 1..v + 1 + len]);
                    }
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return None;
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

impl Shared {
    /// Records a status change reported in a platform body; a first `failed` refunds.
    pub(crate) async fn track_status(&self, record: &GenerationRecord, body: &[u8]) {
        // Most polls repeat the recorded status: a byte scan shows that without parsing the
        // body. Anything else (a change, an odd body) is decided by the full parse, so a status
        // is only ever recorded, and a failure refunded, from a body that is valid JSON.
        if scanned_status(body) == Some(record.status.as_bytes()) {
            return;
        }
        if let Some(status) = crate::upstream::normalize::reported_status(body) {
            let failed = || serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default();
            self.record_status(record, &status, failed).await;
        }
    }

    /// Records `status` if it changed; a first `failed` refunds the tenant's spend and keeps the
    /// platform's reason (read from `body`, only then) with the record.
    pub(crate) async fn record_status(
        &self,
        record: &GenerationRecord,
        status: &str,
        body: impl FnOnce() -> serde_json::Value,
    ) {
        if status != record.status {
            let failure = (status == "failed").then(|| self.current().catalog.failure_rules().failure(&body()));
            match self.store.update_status(&record.id, status, failure.as_ref()).await {
                Ok(true) if status == "failed" => {
                    let reason = failure.as_ref().map_or(crate::store::Reason::Other, |f| f.reason);
                    self.metrics.refund(&record.tenant);
                    self.metrics.generation_failed(record.family.path(), reason.as_str());
                    tracing::warn!(generation = %record.id, tenant = %record.tenant, price = %record.price, cause = "generation_failed", "generation failed on the platform; refunded to the tenant's month");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, generation = %record.id, "could not record status change"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_scan_finds_only_the_top_level_unescaped_status() {
        let scan = |b: &str| scanned_status(b.as_bytes()).map(|s| String::from_utf8(s.to_vec()).unwrap());
        assert_eq!(scan(r#"{"id":"g1","status":"processing"}"#).as_deref(), Some("processing"));
        assert_eq!(scan(r#" { "status" : "completed" , "x": 1}"#).as_deref(), Some("completed"));
        assert_eq!(scan(r#"{"result":{"status":"failed"},"status":"completed"}"#).as_deref(), Some("completed"));
        assert_eq!(
            scan(r#"{"items":[{"status":"failed"}],"note":"status","status":"queued"}"#).as_deref(),
            Some("queued")
        );
        assert_eq!(scan(r#"{"a":"say \"status\":\"failed\"","status":"ok"}"#).as_deref(), Some("ok"));
        assert_eq!(scan(r#"{"result":{"status":"failed"}}"#), None);
        assert_eq!(scan(r#"{"status":"fa\u0069led"}"#), None);
        assert_eq!(scan(r#"{"status":3}"#), None);
        assert_eq!(scan(r#"["status"]"#), None);
        assert_eq!(scan(r#"{"status":"unterminated"#), None);
        assert_eq!(scan(r#"{"a":"\"#), None);
        assert_eq!(scan(""), None);
        // Wherever the scan answers, it agrees with the full parse.
        for b in [
            r#"{"id":"g1","status":"processing"}"#,
            r#"{"result":{"status":"failed"},"status":"completed"}"#,
            r#"{"a":"say \"status\"","status":"ok"}"#,
        ] {
            assert_eq!(scan(b).as_deref(), crate::upstream::normalize::reported_status(b.as_bytes()).as_deref());
        }
    }
}
