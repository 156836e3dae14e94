//! Authentication (policy half): gateway key → tenant.
//!
//! Keys are stored only as SHA-256 digests, so a leaked config file leaks no usable key.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::money::Usd;

/// A tenant: one internal team with its own keys, limits and budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Stable id from the config (`[[tenants]] id`), used in logs, metrics and the store.
    pub id: Arc<str>,
    /// Request and generation rates.
    pub limits: Limits,
    /// Optional monthly spend cap.
    pub monthly_budget: Option<Usd>,
    /// Standard Webhooks signing secret (`whsec_…`, from the environment), for relayed webhooks.
    pub webhook_secret: Option<crate::policy::secret::Secret>,
}

/// A tenant's rate limits; non-zero by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sustained requests per second (all requests).
    pub requests_per_second: NonZeroU32,
    /// Requests allowed at once above the sustained rate.
    pub burst: NonZeroU32,
    /// Paid `POST …/generate` per minute.
    pub generations_per_minute: NonZeroU32,
}

/// Key digest → tenant, built once per config load.
#[derive(Debug, Default, Clone)]
pub struct TenantDirectory {
    by_digest: HashMap<[u8; 32], Arc<Tenant>, foldhash::fast::RandomState>,
    tenants: Vec<Arc<Tenant>>,
}

/// Two tenants listed the same key digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key digest {digest} is listed by both tenant {first:?} and tenant {second:?}")]
pub struct DuplicateKey {
    /// Hex digest.
    pub digest: String,
    /// Tenant that listed it first.
    pub first: String,
    /// Tenant that listed it again.
    pub second: String,
}

/// SHA-256 of a gateway key, as stored in the config.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

// === impl TenantDirectory ===

impl TenantDirectory {
    /// Builds the directory from `(tenant, key digests)` pairs.
    pub fn new(entries: Vec<(Tenant, Vec<[u8; 32]>)>) -> Result<Self, DuplicateKey> {
        let mut dir = TenantDirectory::default();
        for (tenant, digests) in entries {
            let tenant = Arc::new(tenant);
            for d in digests {
                if let Some(prev) = dir.by_digest.insert(d, tenant.clone()) {
                    if prev.id != tenant.id {
                        return Err(DuplicateKey {
                            digest: hex::encode(d),
                            first: prev.id.to_string(),
                            second: tenant.id.to_string(),
                        });
                    }
                }
            }
            dir.tenants.push(tenant);
        }
        Ok(dir)
    }

    /// The tenant owning this presented key, if any.
    pub fn lookup(&self, key: &str) -> Option<&Arc<Tenant>> {
        self.by_digest.get(&key_digest(key))
    }

    /// All tenants, in config order.
    pub fn tenants(&self) -> &[Arc<Tenant>] {
        &self.tenants
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> Tenant {
        let n = NonZeroU32::new(1).unwrap();
        Tenant {
            id: id.into(),
            limits: Limits { requests_per_second: n, burst: n, generations_per_minute: n },
            monthly_budget: None,
            webhook_secret: None,
        }
    }

    #[test]
    fn finds_tenant_by_any_of_its_keys() {
        let dir = TenantDirectory::new(vec![
            (tenant("a"), vec![key_digest("ka1"), key_digest("ka2")]),
            (tenant("b"), vec![key_digest("kb")]),
        ])
        .unwrap();
        assert_eq!(&*dir.lookup("ka1").unwrap().id, "a");
        assert_eq!(&*dir.lookup("ka2").unwrap().id, "a");
        assert_eq!(&*dir.lookup("kb").unwrap().id, "b");
        assert!(dir.lookup("kc").is_none());
        assert!(dir.lookup("").is_none());
        assert_eq!(dir.tenants().len(), 2);
    }

    #[test]
    fn refuses_one_key_for_two_tenants() {
        let err = TenantDirectory::new(vec![
            (tenant("a"), vec![key_digest("k")]),
            (tenant("b"), vec![key_digest("k")]),
        ])
        .unwrap_err();
        assert_eq!(err.first, "a");
        assert_eq!(err.second, "b");
    }

    #[test]
    fn digest_matches_sha256sum() {
        // `printf demo | sha256sum`
        assert_eq!(
            hex::encode(key_digest("demo")),
            "2a97516c354b68848cdbd8f54a226a0a55b21ed138e207ad6c5cbb9c00aa5aea"
        );
    }
}
