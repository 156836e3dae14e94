//! The `tollgate tenants …` and `tollgate keys …` commands: a client of the admin API that
//! prints tables (or the API's JSON with `--json`).

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// Why a command could not do its work; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No token to send.
    #[error("set TOLLGATE_ADMIN_TOKEN to the gateway's admin token")]
    NoToken,
    /// The URL does not parse.
    #[error("bad --admin-url {0:?}")]
    BadUrl(String),
    /// Nothing answered.
    #[error(
        "cannot reach the admin API at {url}: {why} (is the gateway running, and is --admin-url its admin_listen?)"
    )]
    Unreachable {
        /// Where.
        url: String,
        /// What happened.
        why: String,
    },
    /// The token was refused.
    #[error("the admin API refused the token (check TOLLGATE_ADMIN_TOKEN): {0}")]
    Refused(String),
    /// Any other refusal, with the API's detail.
    #[error("{status}: {detail}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The `detail`.
        detail: String,
    },
}

/// Where the admin API is and how to sign in to it.
pub struct AdminApi {
    /// `http://host:port`.
    pub base: String,
    /// The admin token.
    pub token: String,
}

impl AdminApi {
    /// From `--admin-url` and the `TOLLGATE_ADMIN_TOKEN` value.
    pub fn new(base: &str, token: Option<String>) -> Result<AdminApi, ClientError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(ClientError::NoToken)?;
        let base = base.trim_end_matches('/').to_string();
        base.parse::<http::Uri>()
            .ok()
            .filter(|u| u.scheme().is_some() && u.authority().is_some())
            .ok_or_else(|| ClientError::BadUrl(base.clone()))?;
        Ok(AdminApi { base, token })
    }

    /// One call; a 2xx's JSON (or `null` for an empty answer), anything else an error.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token));
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
            .map_err(|_| ClientError::BadUrl(url.clone()))?;
        let unreachable = |why: String| ClientError::Unreachable { url: self.base.clone(), why };
        let rsp = match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Err(unreachable(
                    std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string()),
                ))
            }
            Err(_) => return Err(unreachable("no answer within 10 s".into())),
        };
        let status = rsp.status();
        let bytes = tokio::time::timeout(Duration::from_secs(10), rsp.into_body().collect())
            .await
            .map_err(|_| unreachable("the answer stopped arriving".into()))?
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        let detail =
            || json.get("detail").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| json.to_string());
        match status {
            s if s.is_success() => Ok(json),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS => {
                Err(ClientError::Refused(detail()))
            }
            s => Err(ClientError::Api { status: s.as_u16(), detail: detail() }),
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let l: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", l.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
    out
}

/// `tenants list`.
pub fn tenants_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let live = t["keys"]
                .as_array()
                .map_or(0, |k| k.iter().filter(|k| matches!(k["state"].as_str(), Some("active" | "grace"))).count());
            vec![
                text(&t["id"]),
                text(&t["source"]),
                if t["disabled"] == Value::Bool(true) { "disabled".into() } else { "enabled".into() },
                text(&t["requests_per_second"]),
                text(&t["burst"]),
                text(&t["generations_per_minute"]),
                text(&t["monthly_budget"]),
                text(&t["max_in_flight"]),
                live.to_string(),
            ]
        })
        .collect();
    table(&["ID", "SOURCE", "STATE", "RPS", "BURST", "GEN/MIN", "BUDGET", "IN FLIGHT", "KEYS"], &rows)
}

/// `tenants show`.
pub fn tenant_detail(t: &Value) -> String {
    let mut out = String::new();
    for (label, field) in [
        ("id", "id"),
        ("source", "source"),
        ("disabled", "disabled"),
        ("requests/s", "requests_per_second"),
        ("burst", "burst"),
        ("generations/min", "generations_per_minute"),
        ("monthly budget", "monthly_budget"),
        ("max in flight", "max_in_flight"),
    ] {
        let _ = writeln!(out, "{label:<16} {}", text(&t[field]));
    }
    out.push('\n');
    let keys: Vec<Vec<String>> = t["keys"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|k| {
            ["id", "prefix", "label", "scope", "state", "created_at", "expires_at", "last_used_at"]
                .iter()
                .map(|f| text(&k[*f]))
                .collect()
        })
        .collect();
    out.push_str(&table(&["KEY ID", "PREFIX", "LABEL", "SCOPE", "STATE", "CREATED", "EXPIRES", "LAST USED"], &keys));
    out
}

/// A key just made: the only time it is printed.
pub fn new_key(k: &Value) -> String {
    format!(
        "key:     {}\nkey id:  {}\nprefix:  {}\nscope:   {}\nexpires: {}\nThis is the only time the key is shown: hand it to the team now (it is stored only as a digest).\n",
        text(&k["key"]),
        text(&k["id"]),
        text(&k["prefix"]),
        text(&k["scope"]),
        text(&k["expires_at"])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()], vec!["w".into(), "22".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\nw    22\n");
    }

    #[test]
    fn a_missing_token_or_a_bad_url_is_a_clear_error() {
        assert!(matches!(AdminApi::new("http://127.0.0.1:9090", None), Err(ClientError::NoToken)));
        assert!(matches!(AdminApi::new("not a url", Some("t".into())), Err(ClientError::BadUrl(_))));
    }
}
