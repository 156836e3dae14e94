//! The tenants the request path authenticates: the config file's, plus the admin API's from the
//! store, merged into the runtime's in-memory directory. Requests never ask the store who a key
//! belongs to; the directory is rebuilt when the store's directory version moves (at once on the
//! replica that made the change, at once on the others where the store announces changes —
//! Redis pub/sub —, and at the latest at the next poll, every [`REFRESH_EVERY`]) or when a
//! key's grace or expiry passes.

use std::sync::Arc;
use std::time::Duration;

use crate::core::{Runtime, Shared};
use crate::policy::keys::ApiTenant;
use crate::policy::rate_limit;
use crate::policy::tenants::{Grant, Overlay, Tenant, TenantDirectory};
use crate::store::{now_ms, StoreError, TenantDoc};

/// How often every replica compares the store's directory version with its own. One small read
/// per replica each time; it bounds how long a change made elsewhere takes to hold here when
/// no announcement arrives (a subscription being re-made, a store without one).
pub const REFRESH_EVERY: Duration = Duration::from_millis(200);
/// How often key uses are written to the store: each key at most once per period.
pub const LAST_USED_EVERY: Duration = Duration::from_secs(60);

/// The API's tenants as the directory holds them at `now_ms`: a disabled tenant stays listed
/// (its reports go on) with no key; a key works only while it is active or in its grace.
pub(crate) fn merged(
    config: &TenantDirectory,
    docs: &[TenantDoc],
    previous: Option<&TenantDirectory>,
    now_ms: u64,
) -> (TenantDirectory, Vec<String>) {
    // The keys of a document that work now.
    let grants = |t: &ApiTenant| -> Vec<Grant> {
        t.keys
            .iter()
            .filter(|k| k.works(now_ms))
            .filter_map(|k| {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(&k.digest, &mut digest).ok()?;
                Some(Grant {
                    digest,
                    scope: k.scope,
                    key_id: Arc::from(k.id.as_str()),
                    limits: k.limits().map(Arc::new),
                })
            })
            .collect()
    };
    // One kind of team: a config-file tenant's runtime keys and `disabled` live in an overlay
    // document; one whose file tenant is gone serves nothing.
    let overlays = docs
        .iter()
        .filter(|d| d.tenant.overlay && !d.tenant.is_deleted() && config.source(&d.tenant.id).is_some())
        .map(|d| Overlay { tenant: d.tenant.id.clone(), disabled: d.tenant.disabled, grants: grants(&d.tenant) })
        .collect();
    let api = docs
        .iter()
        .filter(|d| !d.tenant.is_deleted() && !d.tenant.overlay)
        .filter_map(|d| {
            let t = &d.tenant;
            let limits = rate_limit::limits(t.requests_per_second, t.burst, t.generations_per_minute)?;
            let tenant = Tenant {
                id: Arc::from(t.id.as_str()),
                limits,
                monthly_budget: t.monthly_budget(),
                max_in_flight: t.max_in_flight,
                webhook_secret: None,
                disabled: t.disabled,
            };
            // A disabled team's keys stay known, so they are refused as disabled (403), not as
            // unknown keys.
            Some((tenant, grants(t)))
        })
        .collect();
    config.with_api(api, overlays, previous)
}

/// The earliest moment after `now_ms` at which an API key stops working on its own.
pub(crate) fn next_key_end(docs: &[TenantDoc], now_ms: u64) -> Option<u64> {
    docs.iter()
        .filter(|d| !d.tenant.disabled && !d.tenant.is_deleted())
        .filter_map(|d| d.tenant.next_key_end(now_ms))
        .min()
}

impl Shared {
    /// Rebuilds the runtime's directory if the store's version moved or a key's end passed.
    pub async fn refresh_directory(&self) -> Result<bool, StoreError> {
        let current = self.current();
        let version = self.store.directory_version().await?;
        let due = current.next_key_end.is_some_and(|end| now_ms() >= end);
        if version == current.dir_version && !due {
            return Ok(false);
        }
        let (version, docs) = self.store.directory().await?;
        self.apply_directory(version, Arc::new(docs));
        Ok(true)
    }

    /// Swaps in a runtime whose directory holds these API tenants.
    pub(crate) fn apply_directory(&self, version: u64, docs: Arc<Vec<TenantDoc>>) {
        let _one_at_a_time = self.runtime_swap.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.current();
        let now = now_ms();
        let (tenants, shadowed) = merged(&previous.config_tenants, &docs, Some(&previous.tenants), now);
        for id in &shadowed {
            tracing::warn!(tenant = %id, "an API tenant has the id of a config-file tenant (or one of its keys); the file's tenant is served");
        }
        self.stash_uses(&previous.tenants);
        let runtime = Runtime {
            limits: crate::core::limits::RateLimits::new(&tenants, Some(&previous.limits)),
            tenants,
            config_tenants: previous.config_tenants.clone(),
            next_key_end: next_key_end(&docs, now),
            api: docs,
            dir_version: version,
            catalog: previous.catalog.clone(),
            pricing: previous.pricing.clone(),
            reserve: previous.reserve,
        };
        self.runtime.store(Arc::new(runtime));
    }

    /// Writes the keys used since the last flush to the store (`last_used_at`).
    pub async fn flush_key_uses(&self) {
        let mut rows: Vec<(String, u64)> =
            std::mem::take(&mut *self.pending_uses.lock().unwrap_or_else(|p| p.into_inner()));
        let used = self.current().tenants.take_used();
        rows.extend(used.into_iter().map(|(_, k, at)| (k.to_string(), crate::core::use_time_to_unix_ms(at))));
        if rows.is_empty() {
            return;
        }
        if let Err(e) = self.store.keys_touch(&rows).await {
            tracing::debug!(error = %e, keys = rows.len(), "could not record key uses; the next flush will");
        }
    }

    /// The config file's tenants that clash with an API tenant (live or deleted), as one error
    /// naming both: a file tenant must never take over an API tenant's id and its data.
    pub(crate) fn clashes(config: &TenantDirectory, docs: &[TenantDoc]) -> Result<(), String> {
        let clash: Vec<String> = docs
            .iter()
            .filter(|d| !d.tenant.overlay && config.source(&d.tenant.id).is_some())
            .map(|d| {
                let what = if d.tenant.is_deleted() {
                    "a deleted API tenant (its id is retired)"
                } else {
                    "an API tenant (made with the admin API)"
                };
                format!("config-file tenant `{}` has the id of {what}", d.tenant.id)
            })
            .collect();
        if clash.is_empty() {
            Ok(())
        } else {
            Err(format!("{}; rename the file's tenant, or delete the API tenant and use a new id", clash.join("; ")))
        }
    }

    /// Keeps the not-yet-written uses of a directory about to be replaced (a revoked key's
    /// entry is gone from the next one), for the next flush.
    pub(crate) fn stash_uses(&self, replaced: &TenantDirectory) {
        let taken = replaced.take_used();
        if !taken.is_empty() {
            let mut pending = self.pending_uses.lock().unwrap_or_else(|p| p.into_inner());
            pending.extend(taken.into_iter().map(|(_, k, at)| (k.to_string(), crate::core::use_time_to_unix_ms(at))));
        }
    }

    /// An API tenant's document as stored now, and its revision.
    pub(crate) async fn api_tenant(&self, id: &str) -> Result<Option<TenantDoc>, StoreError> {
        let (_, docs) = self.store.directory().await?;
        Ok(docs.into_iter().find(|d| d.tenant.id == id))
    }

    /// Writes an API tenant's document if nobody changed it since `expect`, then applies the
    /// store's directory here at once.
    pub(crate) async fn put_api_tenant(
        &self,
        id: &str,
        expect: u64,
        doc: Option<&ApiTenant>,
    ) -> Result<bool, StoreError> {
        let written = self.store.directory_put(id, expect, doc).await?;
        let (version, docs) = self.store.directory().await?;
        self.apply_directory(version, Arc::new(docs));
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::keys::{ApiKey, Scope};

    fn doc(id: &str, disabled: bool, keys: Vec<ApiKey>) -> TenantDoc {
        TenantDoc {
            rev: 1,
            tenant: ApiTenant {
                id: id.into(),
                requests_per_second: 5,
                burst: 5,
                generations_per_minute: 5,
                monthly_budget_micros: Some(1_000_000),
                max_in_flight: None,
                disabled,
                created_ms: 0,
                keys,
                deleted_ms: None,
                overlay: false,
            },
        }
    }

    #[test]
    fn only_working_keys_of_enabled_tenants_authenticate() {
        let (live, live_key) = ApiKey::issue(None, Scope::Api, None, 0);
        let (mut revoked, revoked_key) = ApiKey::issue(None, Scope::Api, None, 0);
        revoked.revoked_ms = Some(1);
        let (expiring, expiring_key) = ApiKey::issue(None, Scope::Viewer, Some(5_000), 0);
        let (off, off_key) = ApiKey::issue(None, Scope::Api, None, 0);
        let docs = vec![doc("a", false, vec![live, revoked, expiring]), doc("b", true, vec![off])];
        let config = TenantDirectory::default();
        let (dir, _) = merged(&config, &docs, None, 1_000);
        assert_eq!(&*dir.lookup(&live_key).unwrap().tenant.id, "a");
        assert!(dir.lookup(&revoked_key).is_none());
        assert_eq!(dir.lookup(&expiring_key).unwrap().scope, Scope::Viewer);
        // A disabled team's key is known (so refused as disabled, not as unknown).
        assert!(dir.lookup(&off_key).unwrap().tenant.disabled);
        assert_eq!(dir.tenants().len(), 2, "a disabled tenant stays listed for its reports");
        assert_eq!(next_key_end(&docs, 1_000), Some(5_000));
        let (later, _) = merged(&config, &docs, Some(&dir), 5_000);
        assert!(later.lookup(&expiring_key).is_none());
    }
}
