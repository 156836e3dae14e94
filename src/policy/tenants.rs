//! Authentication (policy half): gateway key → tenant.
//!
//! Keys are stored only as SHA-256 digests, so a leaked config file leaks no usable key.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::keys::Scope;
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
    /// Optional cap on generates in flight (forwarded, not answered yet).
    pub max_in_flight: Option<u32>,
    /// Standard Webhooks signing secret (`whsec_…`, from the environment), for relayed webhooks.
    pub webhook_secret: Option<crate::policy::secret::Secret>,
    /// Disabled by an admin: its keys are known and refused with 403, not taken for unknown keys.
    pub disabled: bool,
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

/// Where a tenant is managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `[[tenants]]` in the config file.
    Config,
    /// The admin API (kept in the store).
    Api,
}

/// What a presented key grants.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// Whose key it is.
    pub tenant: Arc<Tenant>,
    /// What it may do.
    pub scope: Scope,
    /// Its id in listings.
    pub key_id: Arc<str>,
    /// What it may do beyond its tenant's limits, if anything.
    pub limits: Option<Arc<crate::policy::keys::KeyLimits>>,
    /// When it was last used and not yet written to the store, in ms on the caller's clock
    /// (0: not since); taken (and written at most once a minute) by the gateway. Shared across
    /// rebuilds of the directory.
    used: Arc<AtomicU64>,
}

/// Uses of one key within this many ms are one use: the shared line is written about once a
/// second per key, not once per request.
const USE_GRANULARITY_MS: u64 = 1000;

impl KeyEntry {
    /// Notes a use at `at` (the request's time in ms on the caller's clock, never 0; not the
    /// later flush's). A load first, so the shared line is written at most once a second.
    pub fn mark_used(&self, at: u64) {
        let last = self.used.load(Ordering::Relaxed);
        if last == 0 || at >= last + USE_GRANULARITY_MS {
            self.used.store(at, Ordering::Relaxed);
        }
    }
}

/// A key of a tenant being added to the directory.
#[derive(Debug, Clone)]
pub struct Grant {
    /// SHA-256 of the key.
    pub digest: [u8; 32],
    /// What it may do.
    pub scope: Scope,
    /// Its id.
    pub key_id: Arc<str>,
    /// What it may do beyond its tenant's limits, if anything.
    pub limits: Option<Arc<crate::policy::keys::KeyLimits>>,
}

/// The id a config file's key is listed by: its digest's first 16 hex characters.
pub fn config_key_id(digest: &[u8; 32]) -> Arc<str> {
    Arc::from(format!("sha256:{}", &hex::encode(digest)[..16]))
}

/// Key digest → tenant, built once per config load and again whenever the API's tenants change.
#[derive(Debug, Default, Clone)]
pub struct TenantDirectory {
    by_digest: HashMap<[u8; 32], KeyEntry, foldhash::fast::RandomState>,
    tenants: Vec<Arc<Tenant>>,
    sources: HashMap<Arc<str>, Source>,
}

/// What the admin API keeps for a config-file tenant: keys issued at runtime, or `disabled`.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// The config-file tenant's id.
    pub tenant: String,
    /// Its keys (the file's and these) stop working while set.
    pub disabled: bool,
    /// Keys issued at runtime.
    pub grants: Vec<Grant>,
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

pub use super::keys::key_digest;

// === impl TenantDirectory ===

impl TenantDirectory {
    /// Builds the directory from `(tenant, key digests)` pairs of the config file.
    pub fn new(entries: Vec<(Tenant, Vec<[u8; 32]>)>) -> Result<Self, DuplicateKey> {
        let mut dir = TenantDirectory::default();
        for (tenant, digests) in entries {
            let grants = digests
                .iter()
                .map(|d| Grant { digest: *d, scope: Scope::Api, key_id: config_key_id(d), limits: None })
                .collect();
            dir.add(tenant, grants, Source::Config, None)?;
        }
        Ok(dir)
    }

    fn add(
        &mut self,
        tenant: Tenant,
        grants: Vec<Grant>,
        source: Source,
        previous: Option<&TenantDirectory>,
    ) -> Result<(), DuplicateKey> {
        let tenant = Arc::new(tenant);
        for g in grants {
            let used = previous.and_then(|p| p.by_digest.get(&g.digest)).map(|e| e.used.clone()).unwrap_or_default();
            let entry = KeyEntry { tenant: tenant.clone(), scope: g.scope, key_id: g.key_id, limits: g.limits, used };
            if let Some(prev) = self.by_digest.insert(g.digest, entry) {
                if prev.tenant.id != tenant.id {
                    return Err(DuplicateKey {
                        digest: hex::encode(g.digest),
                        first: prev.tenant.id.to_string(),
                        second: tenant.id.to_string(),
                    });
                }
            }
        }
        self.sources.insert(tenant.id.clone(), source);
        self.tenants.push(tenant);
        Ok(())
    }

    /// This (config) directory with the API's tenants added. A tenant whose id the config file
    /// also has is left out (the file manages it) and named in the second value. Use marks carry
    /// over from `previous`.
    pub fn with_api(
        &self,
        api: Vec<(Tenant, Vec<Grant>)>,
        overlays: Vec<Overlay>,
        previous: Option<&TenantDirectory>,
    ) -> (TenantDirectory, Vec<String>) {
        let mut dir = self.clone();
        if let Some(p) = previous {
            for (d, e) in dir.by_digest.iter_mut() {
                if let Some(old) = p.by_digest.get(d) {
                    e.used = old.used.clone();
                }
            }
        }
        let mut shadowed = Vec::new();
        for (tenant, grants) in api {
            if dir.sources.contains_key(&tenant.id) {
                shadowed.push(tenant.id.to_string());
                continue;
            }
            let id = tenant.id.to_string();
            if dir.add(tenant, grants, Source::Api, previous).is_err() {
                shadowed.push(id);
            }
        }
        // What the admin API added to config-file tenants: keys, or the whole team disabled.
        for o in overlays {
            let Some(tenant) = dir.tenants.iter().find(|t| *t.id == *o.tenant).cloned() else { continue };
            let tenant = if o.disabled {
                let off = Arc::new(Tenant { disabled: true, ..(*tenant).clone() });
                for e in dir.by_digest.values_mut().filter(|e| e.tenant.id == off.id) {
                    e.tenant = off.clone();
                }
                if let Some(t) = dir.tenants.iter_mut().find(|t| t.id == off.id) {
                    *t = off.clone();
                }
                off
            } else {
                tenant
            };
            for g in o.grants {
                if dir.by_digest.get(&g.digest).is_some_and(|e| e.tenant.id != tenant.id) {
                    shadowed.push(tenant.id.to_string());
                    continue;
                }
                let used =
                    previous.and_then(|p| p.by_digest.get(&g.digest)).map(|e| e.used.clone()).unwrap_or_default();
                dir.by_digest.insert(
                    g.digest,
                    KeyEntry { tenant: tenant.clone(), scope: g.scope, key_id: g.key_id, limits: g.limits, used },
                );
            }
        }
        (dir, shadowed)
    }

    /// What this presented key grants, if anything.
    pub fn lookup(&self, key: &str) -> Option<&KeyEntry> {
        self.by_digest.get(&key_digest(key))
    }

    /// The scope of key `key_id` of `tenant`, while the key works (a dashboard session of a
    /// viewer key ends when the key does). A pass over the keys: for a sign-in check, never
    /// the request path.
    pub fn key_scope(&self, tenant: &str, key_id: &str) -> Option<Scope> {
        self.by_digest
            .values()
            .find(|e| &*e.tenant.id == tenant && &*e.key_id == key_id && !e.tenant.disabled)
            .map(|e| e.scope)
    }

    /// Where a tenant is managed, if it is known.
    pub fn source(&self, id: &str) -> Option<Source> {
        self.sources.get(id).copied()
    }

    /// The keys used since the last call, with the time of their latest use on the clock
    /// `mark_used` was given (each clears it).
    pub fn take_used(&self) -> Vec<(Arc<str>, Arc<str>, u64)> {
        self.by_digest
            .values()
            .filter_map(|e| match e.used.swap(0, Ordering::Relaxed) {
                0 => None,
                ms => Some((e.tenant.id.clone(), e.key_id.clone(), ms)),
            })
            .collect()
    }

    /// The key ids a config tenant is listed with.
    pub fn config_key_ids(&self, tenant: &str) -> Vec<Arc<str>> {
        let mut ids: Vec<Arc<str>> = self
            .by_digest
            .values()
            .filter(|e| &*e.tenant.id == tenant && self.sources.get(&e.tenant.id) == Some(&Source::Config))
            .map(|e| e.key_id.clone())
            .collect();
        ids.sort();
        ids
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
            max_in_flight: None,
            webhook_secret: None,
            disabled: false,
        }
    }

    #[test]
    fn finds_tenant_by_any_of_its_keys() {
        let dir = TenantDirectory::new(vec![
            (tenant("a"), vec![key_digest("ka1"), key_digest("ka2")]),
            (tenant("b"), vec![key_digest("kb")]),
        ])
        .unwrap();
        assert_eq!(&*dir.lookup("ka1").unwrap().tenant.id, "a");
        assert_eq!(&*dir.lookup("ka2").unwrap().tenant.id, "a");
        assert_eq!(&*dir.lookup("kb").unwrap().tenant.id, "b");
        assert!(dir.lookup("kc").is_none());
        assert!(dir.lookup("").is_none());
        assert_eq!(dir.tenants().len(), 2);
    }

    #[test]
    fn api_tenants_join_the_config_ones_and_never_shadow_them() {
        let config = TenantDirectory::new(vec![(tenant("a"), vec![key_digest("ka")])]).unwrap();
        let grant = |k: &str, scope| Grant { digest: key_digest(k), scope, key_id: Arc::from(k), limits: None };
        let (dir, shadowed) = config.with_api(
            vec![(tenant("a"), vec![grant("evil", Scope::Api)]), (tenant("b"), vec![grant("kb", Scope::Viewer)])],
            Vec::new(),
            None,
        );
        assert_eq!(shadowed, vec!["a".to_string()]);
        assert!(dir.lookup("evil").is_none());
        let b = dir.lookup("kb").unwrap();
        assert_eq!((&*b.tenant.id, b.scope), ("b", Scope::Viewer));
        assert_eq!(
            (dir.source("a"), dir.source("b"), dir.source("c")),
            (Some(Source::Config), Some(Source::Api), None)
        );
        // Use marks are taken once, and survive a rebuild.
        // The first use counts however early on the caller's clock it comes.
        dir.lookup("kb").unwrap().mark_used(5);
        let (again, _) = config.with_api(vec![(tenant("b"), vec![grant("kb", Scope::Viewer)])], Vec::new(), Some(&dir));
        assert_eq!(again.take_used(), vec![(Arc::from("b"), Arc::from("kb"), 5)]);
        assert!(again.take_used().is_empty());
    }

    #[test]
    fn refuses_one_key_for_two_tenants() {
        let err =
            TenantDirectory::new(vec![(tenant("a"), vec![key_digest("k")]), (tenant("b"), vec![key_digest("k")])])
                .unwrap_err();
        assert_eq!(err.first, "a");
        assert_eq!(err.second, "b");
    }

    #[test]
    fn digest_matches_sha256sum() {
        // `printf demo | sha256sum`
        assert_eq!(hex::encode(key_digest("demo")), "2a97516c354b68848cdbd8f54a226a0a55b21ed138e207ad6c5cbb9c00aa5aea");
    }
}
