//! The config file as serde reads it: one raw struct per TOML section, unvalidated. `mod.rs`
//! turns these into the typed [`super::Config`], collecting every problem.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::one_line;

#[derive(Debug, Default, Deserialize)]
pub(super) struct ServerSection {
    pub(super) listen: Option<String>,
    pub(super) admin_listen: Option<String>,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) request_timeout_secs: Option<u64>,
    pub(super) shutdown_grace_secs: Option<u64>,
    pub(super) header_read_timeout_secs: Option<u64>,
    pub(super) max_connections: Option<u64>,
    pub(super) max_buffered_body_bytes: Option<u64>,
    pub(super) max_buffered_body_bytes_per_tenant: Option<u64>,
    pub(super) max_uploads_per_tenant: Option<u64>,
    pub(super) min_upload_bytes_per_sec: Option<u64>,
    pub(super) idle_timeout_secs: Option<u64>,
    pub(super) admin_token_env: Option<String>,
    pub(super) admin_hosts: Option<Vec<String>>,
    pub(super) metrics_require_token: Option<bool>,
    pub(super) expose_account_balance: Option<bool>,
    pub(super) currency: Option<String>,
    pub(super) tls_cert_path: Option<String>,
    pub(super) tls_key_path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct UpstreamSection {
    pub(super) base_url: Option<String>,
    pub(super) token_env: Option<String>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) timeout_secs: Option<u64>,
    pub(super) get_retries: Option<u32>,
    pub(super) status_cache_ms: Option<u64>,
    pub(super) circuit_failure_threshold: Option<u32>,
    pub(super) circuit_open_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct StoreSection {
    pub(super) backend: Option<String>,
    pub(super) path: Option<String>,
    pub(super) url: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) key_prefix: Option<String>,
    pub(super) sentinels: Option<Vec<String>>,
    pub(super) master_name: Option<String>,
    pub(super) db: Option<i64>,
    pub(super) min_replica_acks: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct BalanceSection {
    pub(super) cache_ttl_ms: Option<u64>,
    pub(super) reserve: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct CatalogSection {
    pub(super) path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct TelemetrySection {
    pub(super) otlp_endpoint: Option<String>,
    pub(super) service_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WebhooksSection {
    pub(super) public_base_url: Option<String>,
    pub(super) allow_http_loopback: Option<bool>,
    pub(super) retry_base_ms: Option<u64>,
    pub(super) attempt_timeout_ms: Option<u64>,
    pub(super) max_attempts: Option<u32>,
    pub(super) concurrency: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AlertsSection {
    pub(super) url: Option<String>,
    pub(super) secret_env: Option<String>,
    pub(super) thresholds: Option<Vec<f64>>,
    pub(super) balance_below: Option<String>,
    pub(super) allow_http_loopback: Option<bool>,
    pub(super) retry_base_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ReconcileSection {
    pub(super) interval_secs: Option<u64>,
    pub(super) status_calls_per_minute: Option<u32>,
    pub(super) unknown_after_secs: Option<u64>,
    pub(super) lease_margin_ms: Option<u64>,
}

/// A USD amount as a string (`"50.00"`, preferred: exact) or a number (`50`, `12.5`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum Amount {
    Text(String),
    Int(i64),
    Float(f64),
}

impl Amount {
    pub(super) fn text(&self) -> String {
        match self {
            Amount::Text(s) => s.clone(),
            Amount::Int(i) => i.to_string(),
            Amount::Float(f) => f.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum PriceSpec {
    Flat(String),
    Table(HashMap<String, String>),
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct TenantSection {
    pub(super) id: Option<String>,
    pub(super) keys_sha256: Option<Vec<String>>,
    pub(super) requests_per_second: Option<u32>,
    pub(super) burst: Option<u32>,
    pub(super) generations_per_minute: Option<u32>,
    pub(super) monthly_budget: Option<Amount>,
    pub(super) max_in_flight: Option<u32>,
    pub(super) webhook_secret_env: Option<String>,
}

// ---------- validated config ----------

pub(super) fn section<T: DeserializeOwned + Default>(
    value: Option<&toml::Value>,
    name: &str,
    problems: &mut Vec<String>,
) -> T {
    let Some(value) = value else { return T::default() };
    // Unknown keys are found key by key, so a type error elsewhere never hides one (serde stops
    // at the first error), and each gets the nearest known name as a suggestion.
    let known = fields_of::<T>();
    if let Some(table) = value.as_table() {
        for (k, v) in table {
            let single = toml::Value::Table(toml::Table::from_iter([(k.clone(), v.clone())]));
            let mut unknown = Vec::new();
            let _ = serde_ignored::deserialize::<_, _, T>(single, |path| unknown.push(path.to_string()));
            for path in unknown {
                let leaf = path.rsplit('.').next().unwrap_or(&path);
                let hint = nearest(leaf, known).map(|n| format!(" (did you mean `{n}`?)")).unwrap_or_default();
                problems.push(format!("unknown key `{name}.{path}`{hint}"));
            }
        }
    }
    match T::deserialize(value.clone()) {
        Ok(v) => v,
        Err(e) => {
            // Find every key that fails on its own, report each, and keep the rest.
            let Some(table) = value.as_table() else {
                problems.push(format!("[{name}]: {}", one_line(&e.to_string())));
                return T::default();
            };
            let mut good = toml::Table::new();
            for (k, v) in table {
                let single = toml::Table::from_iter([(k.clone(), v.clone())]);
                match T::deserialize(toml::Value::Table(single)) {
                    Ok(_) => {
                        good.insert(k.clone(), v.clone());
                    }
                    Err(e) => problems.push(format!("{name}.{k}: {}", one_line(&e.to_string()))),
                }
            }
            T::deserialize(toml::Value::Table(good)).unwrap_or_default()
        }
    }
}

/// The field names a section struct accepts, as serde's derive lists them.
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    /// A deserializer that only records the fields `deserialize_struct` is asked for.
    struct Fields<'a>(&'a mut &'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("fields recorded")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for Fields<'_> {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

/// The known name closest to `key`, when it is close enough to be a typo.
fn nearest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 5))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}
