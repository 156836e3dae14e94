//! The store knows when it has forgotten. Redis can lose everything at once (`FLUSHALL`, a
//! restart without persistence, eviction): the holds, the month's spend, who owns which
//! generation, the Idempotency-Keys, the API tenants. Carrying on would let money fail open
//! (budgets start again at zero, an acknowledged key buys a second generation), so every store
//! is stamped with an epoch when it is first used, each replica checks it every second and on
//! every new primary, and a replica that finds it gone refuses every store call (`/readyz` 503,
//! paid requests 503 `Store unavailable`) until an operator runs `tollgate store recover`, which
//! says what was lost and writes a new epoch. The first replica to notice leaves a `lost:`
//! marker, so a replica started later refuses too instead of taking the empty Redis as new.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::AsyncCommands;

use super::link::Link;
use crate::store::{now_ms, StoreError};

/// The key under the prefix that holds the epoch.
pub(super) const EPOCH: &str = "epoch";
/// The epoch `tollgate store recover` wrote: a replica that noticed the loss adopts it.
const RECOVERED: &str = "epoch_recovered";
/// How often each replica reads the epoch.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What this replica knows of the epoch.
#[derive(Default)]
pub(super) struct Epoch {
    mine: Mutex<String>,
    /// Why store calls are refused, once the epoch went missing or changed.
    lost: Mutex<Option<String>>,
    /// `lost` is set: read by every store call, so an atomic rather than the lock.
    is_lost: std::sync::atomic::AtomicBool,
}

impl Epoch {
    /// Why every store call is refused now, if it is.
    pub(super) fn lost(&self) -> Option<String> {
        if !self.is_lost.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_lost(&self, why: String) {
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        if lost.is_none() {
            tracing::error!(error = %why, "the Redis store has forgotten tollgate's data: money is refused until `tollgate store recover` is run");
        }
        *lost = Some(why);
        self.is_lost.store(true, std::sync::atomic::Ordering::Release);
    }

    fn mine(&self) -> String {
        self.mine.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the stored epoch at start: adopts it, takes the lost marker as lost, or stamps a
    /// store that has none (a new one, or one written before epochs existed).
    pub(super) async fn start(&self, c: &mut MultiplexedConnection, prefix: &str) -> Result<(), StoreError> {
        let key = format!("{prefix}:{EPOCH}");
        let current: Option<String> = c.get(&key).await.map_err(super::err)?;
        match current {
            Some(v) if v.starts_with("lost:") => self.set_lost(lost_message(&v)),
            Some(v) => *self.mine.lock().unwrap_or_else(|p| p.into_inner()) = v,
            None => {
                let fresh = uuid::Uuid::new_v4().simple().to_string();
                let written: bool = ::redis::cmd("SET")
                    .arg(&key)
                    .arg(&fresh)
                    .arg("NX")
                    .query_async::<Option<String>>(c)
                    .await
                    .map_err(super::err)?
                    .is_some();
                if written {
                    tracing::info!(epoch = %fresh, "stamped the Redis store with a new epoch");
                    *self.mine.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                } else {
                    // Another replica stamped it first.
                    return Box::pin(self.start(c, prefix)).await;
                }
            }
        }
        Ok(())
    }

    /// One check: the epoch is still this replica's, or the loss is noticed (and marked for
    /// replicas started later), or an operator's recovery is adopted.
    pub(super) async fn check(&self, c: &mut MultiplexedConnection, prefix: &str) -> Result<(), StoreError> {
        let key = format!("{prefix}:{EPOCH}");
        let (current, recovered): (Option<String>, Option<String>) =
            ::redis::pipe().get(&key).get(format!("{prefix}:{RECOVERED}")).query_async(c).await.map_err(super::err)?;
        let mine = self.mine();
        match current {
            Some(v) if v == mine && !v.is_empty() => {}
            None => {
                let marker = format!("lost:{mine}:{}", now_ms());
                let _: Option<String> = ::redis::cmd("SET").arg(&key).arg(&marker).arg("NX").query_async(c).await.map_err(super::err)?;
                self.set_lost(lost_message(&marker));
            }
            Some(v) if v.starts_with("lost:") => self.set_lost(lost_message(&v)),
            Some(v) if self.lost().is_some() && recovered.as_deref() == Some(v.as_str()) => {
                *self.mine.lock().unwrap_or_else(|p| p.into_inner()) = v.clone();
                *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.is_lost.store(false, std::sync::atomic::Ordering::Release);
                tracing::warn!(epoch = %v, "the Redis store was recovered by an operator: money is accepted again");
            }
            Some(v) => self.set_lost(format!(
                "the Redis store's epoch changed from {mine} to {v}: its data was replaced since this replica started; run `tollgate store recover`"
            )),
        }
        Ok(())
    }

    /// Checks every second and on every new primary, while the link lives.
    pub(super) fn watch(self: &Arc<Self>, link: &Arc<Link>, prefix: String) {
        let (epoch, link) = (Arc::downgrade(self), Arc::downgrade(link));
        tokio::spawn(async move {
            let mut moves = match link.upgrade() {
                Some(l) => l.moves(),
                None => return,
            };
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(CHECK_EVERY) => {}
                    changed = moves.changed() => if changed.is_err() { return },
                }
                let (Some(epoch), Some(link)) = (epoch.upgrade(), link.upgrade()) else { return };
                let Ok(Ok((_, mut c))) = tokio::time::timeout(CHECK_EVERY, link.get()).await else { continue };
                if let Err(e) = tokio::time::timeout(CHECK_EVERY, epoch.check(&mut c, &prefix)).await.unwrap_or(Ok(()))
                {
                    tracing::debug!(error = %e, "could not read the store's epoch; trying again");
                }
            }
        });
    }
}

fn lost_message(marker: &str) -> String {
    let mut parts = marker.splitn(3, ':').skip(1);
    let (old, at) = (parts.next().unwrap_or("?"), parts.next().and_then(|t| t.parse::<u64>().ok()));
    let when = at.map(crate::store::rfc3339).unwrap_or_else(|| "an unknown time".into());
    format!("Redis has lost tollgate's data (epoch {old} gone, noticed at {when}); money is refused until an operator runs `tollgate store recover`")
}

/// Refuses a Redis that may evict keys (every money key is one), and warns about one that
/// keeps nothing across a restart. Read from `INFO`, which managed services allow where they
/// block `CONFIG`.
pub(super) async fn check_server(c: &mut MultiplexedConnection) -> Result<(), StoreError> {
    let memory: String = ::redis::cmd("INFO").arg("memory").query_async(c).await.map_err(super::err)?;
    let policy = info_field(&memory, "maxmemory_policy").unwrap_or("noeviction");
    if policy != "noeviction" {
        return Err(StoreError(format!(
            "redis: maxmemory-policy is {policy}, which can evict tollgate's money keys (holds, spend, Idempotency-Keys) without a trace; set it to noeviction"
        )));
    }
    let persistence: String = ::redis::cmd("INFO").arg("persistence").query_async(c).await.map_err(super::err)?;
    let aof = info_field(&persistence, "aof_enabled") == Some("1");
    let save: Option<Vec<String>> = ::redis::cmd("CONFIG").arg("GET").arg("save").query_async(c).await.ok();
    let rdb = save.as_ref().and_then(|v| v.get(1)).is_some_and(|s| !s.trim().is_empty());
    if !aof && !rdb {
        tracing::warn!("Redis keeps nothing across a restart (no appendonly, no save): a restart forgets every hold, spend and key; tollgate will notice and refuse money until `tollgate store recover`, but run Redis with appendonly yes (see deploy/)");
    }
    Ok(())
}

fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')).map(str::trim)
}

/// `tollgate store recover`: says what was lost and writes a new epoch, which replicas that
/// noticed the loss adopt within a second.
pub(super) async fn recover(c: &mut MultiplexedConnection, prefix: &str) -> Result<String, StoreError> {
    let key = format!("{prefix}:{EPOCH}");
    let current: Option<String> = c.get(&key).await.map_err(super::err)?;
    let noticed = match &current {
        Some(v) if v.starts_with("lost:") => lost_message(v),
        None => "no epoch is stored (Redis was emptied, and no replica has noticed yet)".into(),
        Some(v) => return Err(StoreError(format!("nothing to recover: the store's epoch {v} is intact"))),
    };
    let mut cursor = 0u64;
    let mut found = 0usize;
    loop {
        let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await
            .map_err(super::err)?;
        found += keys.iter().filter(|k| **k != key).count();
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let fresh = uuid::Uuid::new_v4().simple().to_string();
    let _: () = ::redis::pipe()
        .atomic()
        .set(&key, &fresh)
        .set(format!("{prefix}:{RECOVERED}"), &fresh)
        .query_async(c)
        .await
        .map_err(super::err)?;
    Ok(format!(
        "{noticed}.\n\
         Lost for good, for everything written before then: open holds and unknown outcomes, this month's spend and refunds \
         (budgets start again from what is recorded after now), which tenant owns which earlier generation (their polls answer 404), \
         Idempotency-Key records, API tenants and their keys, dashboard sessions, and the webhook outbox. \
         Config-file tenants and their keys are unaffected.\n\
         Found under the prefix now: {found} keys.\n\
         Wrote the new epoch {fresh}: replicas accept money again within a second.\n\
         Next: re-create API tenants and keys (tollgate tenants create …), and compare the platform's generation list with \
         your records for charges made before the loss."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_read_by_name() {
        let info = "# Memory\r\nused_memory:1\r\nmaxmemory_policy:allkeys-lru\r\nmaxmemory:0\r\n";
        assert_eq!(info_field(info, "maxmemory_policy"), Some("allkeys-lru"));
        assert_eq!(info_field(info, "maxmemory"), Some("0"));
        assert_eq!(info_field(info, "aof_enabled"), None);
    }

    #[test]
    fn the_lost_marker_names_the_old_epoch_and_when() {
        let m = lost_message("lost:abc:0");
        assert!(m.contains("epoch abc") && m.contains("1970-01-01"), "{m}");
    }
}
