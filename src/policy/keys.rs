//! Gateway keys issued at runtime, and the tenants made through the admin API.
//!
//! A key is `tg_` + 32 random base62 characters + a 6-character base62 CRC-32 of them, so a
//! secret scanner can recognise a leaked one (and tell it from random text) without asking us.
//! Only its SHA-256 digest and its first 8 characters (the display prefix) are ever stored.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::money::Usd;

/// What every issued key starts with.
pub const KEY_PREFIX: &str = "tg_";
const RANDOM_CHARS: usize = 32;
const CHECKSUM_CHARS: usize = 6;
/// Characters of a key kept for display.
pub const DISPLAY_PREFIX: usize = 8;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn base62_fixed(mut n: u64, width: usize) -> String {
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out).unwrap_or_default()
}

/// A new key: 32 base62 characters from the OS-seeded CSPRNG (190 bits), then the checksum.
pub fn new_key() -> String {
    let mut rng = rand::thread_rng();
    let random: String = (0..RANDOM_CHARS).map(|_| BASE62[rng.gen_range(0..62)] as char).collect();
    let sum = base62_fixed(u64::from(crc32fast::hash(random.as_bytes())), CHECKSUM_CHARS);
    format!("{KEY_PREFIX}{random}{sum}")
}

/// Does `key` have the issued format with a matching checksum?
pub fn well_formed(key: &str) -> bool {
    let Some(body) = key.strip_prefix(KEY_PREFIX) else { return false };
    if body.len() != RANDOM_CHARS + CHECKSUM_CHARS || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (random, sum) = body.split_at(RANDOM_CHARS);
    base62_fixed(u64::from(crc32fast::hash(random.as_bytes())), CHECKSUM_CHARS) == sum
}

/// The characters of a key shown in listings and logs.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(DISPLAY_PREFIX).collect()
}

/// SHA-256 of a gateway key, as stored in the config.
pub fn key_digest(key: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).into()
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Everything a tenant may do.
    #[default]
    Api,
    /// Read its own usage and sign in to the dashboard; nothing else.
    Viewer,
}

impl Scope {
    /// As written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Api => "api",
            Scope::Viewer => "viewer",
        }
    }
}

/// Where a key stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Works.
    Active,
    /// Rotated: works until its grace ends.
    Grace,
    /// Past `expires_at` or its grace.
    Expired,
    /// Revoked.
    Revoked,
}

impl KeyState {
    /// As written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Grace => "grace",
            KeyState::Expired => "expired",
            KeyState::Revoked => "revoked",
        }
    }
}

/// A key issued through the admin API, as stored (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Stable id (`key_` + 16 hex characters), for rotate and revoke.
    pub id: String,
    /// SHA-256 of the key, hex.
    pub digest: String,
    /// Its first 8 characters.
    pub prefix: String,
    /// Free text from the operator.
    pub label: Option<String>,
    /// What it may do.
    pub scope: Scope,
    /// When it was made (ms since the epoch).
    pub created_ms: u64,
    /// When it stops working, if it was given an end.
    pub expires_ms: Option<u64>,
    /// Set when the key was rotated: it works until then.
    pub grace_until_ms: Option<u64>,
    /// Set when the key was revoked.
    pub revoked_ms: Option<u64>,
    /// The families it may generate and quote with (`None`: every family).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub families: Option<Vec<String>>,
    /// The most one generation may hold, micro-dollars (`None`: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price_micros: Option<i64>,
}

/// What one key may do beyond its tenant's limits: checked on the family as routing resolved it
/// and on the price the hold would take, before anything is held.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyLimits {
    /// The families it may generate and quote with (`None`: every family).
    pub families: Option<Vec<String>>,
    /// The most one generation may hold.
    pub max_price: Option<Usd>,
}

impl KeyLimits {
    /// No limit at all?
    pub fn is_empty(&self) -> bool {
        self.families.is_none() && self.max_price.is_none()
    }

    /// May it use `family` (its path, as routing resolved it)?
    pub fn allows_family(&self, family: &str) -> bool {
        self.families.as_ref().is_none_or(|f| f.iter().any(|x| x == family))
    }
}

impl ApiKey {
    /// Its limits, when it has any.
    pub fn limits(&self) -> Option<KeyLimits> {
        let l = KeyLimits { families: self.families.clone(), max_price: self.max_price_micros.map(Usd::from_micros) };
        (!l.is_empty()).then_some(l)
    }

    /// A fresh key's record and the key itself (to be shown once).
    pub fn issue(label: Option<String>, scope: Scope, expires_ms: Option<u64>, now_ms: u64) -> (ApiKey, String) {
        let key = new_key();
        let record = ApiKey {
            id: format!("key_{:016x}", crate::ids::random_bits() as u64),
            digest: hex::encode(key_digest(&key)),
            prefix: display_prefix(&key),
            label,
            scope,
            created_ms: now_ms,
            expires_ms,
            grace_until_ms: None,
            revoked_ms: None,
            families: None,
            max_price_micros: None,
        };
        (record, key)
    }

    /// The moment it stops working on its own, if any.
    pub fn ends_ms(&self) -> Option<u64> {
        match (self.expires_ms, self.grace_until_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Where it stands at `now_ms`.
    pub fn state(&self, now_ms: u64) -> KeyState {
        if self.revoked_ms.is_some() {
            KeyState::Revoked
        } else if self.ends_ms().is_some_and(|end| now_ms >= end) {
            KeyState::Expired
        } else if self.grace_until_ms.is_some() {
            KeyState::Grace
        } else {
            KeyState::Active
        }
    }

    /// Does it authenticate at `now_ms`?
    pub fn works(&self, now_ms: u64) -> bool {
        matches!(self.state(now_ms), KeyState::Active | KeyState::Grace)
    }
}

/// A tenant made through the admin API, as stored: its settings and its keys in one document,
/// so a change is one write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTenant {
    /// Its id (`[a-z0-9][a-z0-9_-]{0,63}`).
    pub id: String,
    /// Sustained requests per second.
    pub requests_per_second: u32,
    /// Requests at once above it.
    pub burst: u32,
    /// Paid generates per minute.
    pub generations_per_minute: u32,
    /// Monthly budget, micro-dollars.
    pub monthly_budget_micros: Option<i64>,
    /// Generates in flight at once.
    pub max_in_flight: Option<u32>,
    /// Its keys stop working while set.
    pub disabled: bool,
    /// When it was made.
    pub created_ms: u64,
    /// Its keys, revoked ones included (they show in listings).
    pub keys: Vec<ApiKey>,
    /// Set when the tenant was deleted: the document stays as a tombstone so the id, whose
    /// generations and spend are still in the store, is never handed to a new team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_ms: Option<u64>,
    /// This document only adds to the config-file tenant of the same id: keys issued at runtime
    /// (viewer keys for its dashboard, say) and `disabled`. The file keeps its limits, budget and
    /// own keys.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overlay: bool,
}

impl ApiTenant {
    /// A new overlay of config-file tenant `id` (no keys yet, enabled).
    pub fn overlay_of(id: &str, now_ms: u64) -> ApiTenant {
        ApiTenant {
            id: id.to_string(),
            requests_per_second: 1,
            burst: 1,
            generations_per_minute: 1,
            monthly_budget_micros: None,
            max_in_flight: None,
            disabled: false,
            created_ms: now_ms,
            keys: Vec::new(),
            deleted_ms: None,
            overlay: true,
        }
    }

    /// Deleted (a tombstone)?
    pub fn is_deleted(&self) -> bool {
        self.deleted_ms.is_some()
    }

    /// Its budget.
    pub fn monthly_budget(&self) -> Option<Usd> {
        self.monthly_budget_micros.map(Usd::from_micros)
    }

    /// The earliest moment after `now_ms` at which one of its keys stops working on its own.
    pub fn next_key_end(&self, now_ms: u64) -> Option<u64> {
        self.keys.iter().filter(|k| k.revoked_ms.is_none()).filter_map(ApiKey::ends_ms).filter(|e| *e > now_ms).min()
    }
}

/// Is `id` a usable tenant id?
pub fn valid_tenant_id(id: &str) -> bool {
    let b = id.as_bytes();
    (1..=64).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_have_the_format_and_a_checksum_that_catches_a_typo() {
        let k = new_key();
        assert!(k.starts_with("tg_") && k.len() == 3 + 32 + 6, "{k}");
        assert!(well_formed(&k));
        let mut typo = k.clone().into_bytes();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        assert!(!well_formed(std::str::from_utf8(&typo).unwrap()));
        assert!(!well_formed("tg_short"));
        assert_ne!(new_key(), new_key());
        assert_eq!(display_prefix(&k), &k[..8]);
    }

    #[test]
    fn a_keys_state_follows_revocation_grace_and_expiry() {
        let (mut k, key) = ApiKey::issue(None, Scope::Api, Some(10_000), 1_000);
        assert_eq!(k.digest, hex::encode(key_digest(&key)));
        assert_eq!(k.state(5_000), KeyState::Active);
        assert_eq!(k.state(10_000), KeyState::Expired);
        k.grace_until_ms = Some(6_000);
        assert_eq!(k.state(5_999), KeyState::Grace);
        assert!(!k.works(6_000));
        k.revoked_ms = Some(2_000);
        assert_eq!(k.state(1_500), KeyState::Revoked);
    }

    #[test]
    fn tenant_ids() {
        for ok in ["a", "team-1", "0x_y", &"a".repeat(64)] {
            assert!(valid_tenant_id(ok), "{ok}");
        }
        for bad in ["", "-a", "_a", "A", "a b", "é", &"a".repeat(65), "~unattributed"] {
            assert!(!valid_tenant_id(bad), "{bad}");
        }
    }
}
