//! The embedded store: one process, state in memory behind one mutex, made durable in a SQLite
//! file (WAL, `synchronous=FULL`) when configured.
//!
//! Holds and the cached balance live only in memory: they describe requests in flight in this
//! process, which a restart ends anyway. Generations and finished idempotency records are
//! written to SQLite *before* the caller is told they are settled, so a 201 is only ever sent for
//! a record that survives `kill -9`. Spend is derived from the generations table, so it always
//! matches the records.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};

use super::{month_of, BalanceSnapshot, GenerationRecord, HoldOutcome, HoldRequest, IdemClaim, Store, StoreError, StoredResponse};
use crate::policy::family::Family;
use crate::policy::ledger::{HoldTotals, LedgerState};
use crate::policy::money::Usd;

/// Entries kept in memory before the cache of SQLite-backed records is emptied.
const CACHE_LIMIT: usize = 200_000;

enum Idem {
    Running([u8; 32]),
    Done([u8; 32], StoredResponse),
}

#[derive(Default)]
struct Inner {
    ledger: LedgerState,
    /// All generations (memory backend) or a cache of them (SQLite backend).
    generations: HashMap<String, GenerationRecord>,
    idem: HashMap<(String, String), Idem>,
}

/// Memory or SQLite-backed store for a single gateway process.
pub struct EmbeddedStore {
    inner: Mutex<Inner>,
    db: Option<Arc<Mutex<Connection>>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS generations (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    family TEXT NOT NULL,
    price_micros INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    month TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS generations_by_owner ON generations (tenant, family, created_ms DESC);
CREATE TABLE IF NOT EXISTS idempotency (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    body_digest BLOB NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
);
";

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("sqlite: {e}"))
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<GenerationRecord> {
    let family: String = row.get(2)?;
    Ok(GenerationRecord {
        id: row.get(0)?,
        tenant: Arc::from(row.get::<_, String>(1)?),
        family: Family::from_path(&family).unwrap_or(Family::Sora),
        price: Usd::from_micros(row.get(3)?),
        created_ms: row.get(4)?,
        status: row.get(5)?,
    })
}

// === impl EmbeddedStore ===

impl EmbeddedStore {
    /// State in memory only; lost at exit.
    pub fn memory() -> Self {
        EmbeddedStore { inner: Mutex::new(Inner::default()), db: None }
    }

    /// State in memory, records durable in the SQLite file at `path` (created with its parent
    /// directory if missing). Loads each tenant's spend from the records.
    pub async fn sqlite(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let (conn, spend) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
            }
            let conn = Connection::open(&path).map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
            // WAL: readers never block the writer. FULL: a commit is on disk before we answer.
            conn.pragma_update(None, "journal_mode", "WAL").map_err(db_err)?;
            conn.pragma_update(None, "synchronous", "FULL").map_err(db_err)?;
            conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db_err)?;
            conn.execute_batch(SCHEMA).map_err(db_err)?;
            let spend = {
                let mut stmt = conn
                    .prepare("SELECT tenant, month, SUM(price_micros) FROM generations WHERE status != 'failed' GROUP BY tenant, month")
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))
                    .map_err(db_err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?
            };
            Ok((conn, spend))
        })
        .await
        .map_err(db_err)??;
        let mut inner = Inner::default();
        for (tenant, month, micros) in spend {
            inner.ledger.set_spend(Arc::from(tenant), month, Usd::from_micros(micros));
        }
        Ok(EmbeddedStore { inner: Mutex::new(inner), db: Some(Arc::new(Mutex::new(conn))) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the ledger half-updated in a way that
        // matters more than refusing all traffic would, so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the SQLite connection off the async threads; `None` for the memory backend.
    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<Option<T>, StoreError> {
        let Some(db) = self.db.clone() else { return Ok(None) };
        tokio::task::spawn_blocking(move || {
            let mut conn = db.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(db_err)?
        .map(Some)
        .map_err(db_err)
    }

    fn cache(&self, record: GenerationRecord) {
        let mut inner = self.lock();
        if self.db.is_some() && inner.generations.len() >= CACHE_LIMIT {
            inner.generations.clear();
        }
        inner.generations.insert(record.id.clone(), record);
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        if self.db.is_some() {
            "sqlite"
        } else {
            "memory"
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_db(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await.map(|_| ())
    }

    async fn balance(&self) -> Result<Option<BalanceSnapshot>, StoreError> {
        Ok(self.lock().ledger.balance().map(|(amount, fetched_ms)| BalanceSnapshot { amount, fetched_ms }))
    }

    async fn begin_balance_fetch(&self) -> Result<u64, StoreError> {
        Ok(self.lock().ledger.begin_fetch())
    }

    async fn apply_balance(&self, amount: Usd, mark: u64, now_ms: u64) -> Result<(), StoreError> {
        self.lock().ledger.apply_balance(amount, mark, now_ms);
        Ok(())
    }

    async fn hold(&self, req: &HoldRequest) -> Result<HoldOutcome, StoreError> {
        let mut inner = self.lock();
        Ok(match inner.ledger.hold(&req.tenant, &req.month, req.price, req.budget, req.reserve) {
            None => HoldOutcome::NoBalance,
            Some(Ok(id)) => HoldOutcome::Held(id),
            Some(Err(r)) => HoldOutcome::Refused(r),
        })
    }

    async fn settle(&self, hold: u64, month: &str, charged: Usd, record: &GenerationRecord) -> Result<(), StoreError> {
        let r = record.clone();
        let month_owned = month.to_string();
        self.with_db(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO generations (id, tenant, family, price_micros, created_ms, month, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![r.id, &*r.tenant, r.family.path(), r.price.micros(), r.created_ms, month_owned, r.status],
            )
        })
        .await?;
        self.lock().ledger.settle(hold, charged, month);
        self.cache(record.clone());
        Ok(())
    }

    async fn release(&self, hold: u64) -> Result<(), StoreError> {
        self.lock().ledger.release(hold);
        Ok(())
    }

    async fn mark_unknown(&self, hold: u64) -> Result<(), StoreError> {
        self.lock().ledger.mark_unknown(hold);
        Ok(())
    }

    async fn spendable(&self, tenant: &Arc<str>, month: &str, budget: Option<Usd>, reserve: Usd) -> Result<Option<Usd>, StoreError> {
        Ok(self.lock().ledger.spendable(tenant, month, budget, reserve))
    }

    async fn generation(&self, id: &str) -> Result<Option<GenerationRecord>, StoreError> {
        if let Some(r) = self.lock().generations.get(id) {
            return Ok(Some(r.clone()));
        }
        let id = id.to_string();
        let found = self
            .with_db(move |c| {
                c.query_row(
                    "SELECT id, tenant, family, price_micros, created_ms, status FROM generations WHERE id = ?1",
                    [id],
                    row_to_record,
                )
                .optional()
            })
            .await?
            .flatten();
        if let Some(r) = &found {
            self.cache(r.clone());
        }
        Ok(found)
    }

    async fn list_generations(&self, tenant: &str, family: Family, limit: usize, offset: usize) -> Result<Vec<GenerationRecord>, StoreError> {
        if self.db.is_none() {
            let inner = self.lock();
            let mut mine: Vec<&GenerationRecord> =
                inner.generations.values().filter(|r| &*r.tenant == tenant && r.family == family).collect();
            mine.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then_with(|| b.id.cmp(&a.id)));
            return Ok(mine.into_iter().skip(offset).take(limit).cloned().collect());
        }
        let tenant = tenant.to_string();
        let rows = self
            .with_db(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT id, tenant, family, price_micros, created_ms, status FROM generations
                     WHERE tenant = ?1 AND family = ?2 ORDER BY created_ms DESC, id DESC LIMIT ?3 OFFSET ?4",
                )?;
                let rows = stmt.query_map(params![tenant, family.path(), limit as i64, offset as i64], row_to_record)?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(rows.unwrap_or_default())
    }

    async fn update_status(&self, id: &str, status: &str) -> Result<(), StoreError> {
        let Some(record) = self.generation(id).await? else { return Ok(()) };
        if record.status == status {
            return Ok(());
        }
        let (id_owned, status_owned) = (id.to_string(), status.to_string());
        self.with_db(move |c| c.execute("UPDATE generations SET status = ?2 WHERE id = ?1", params![id_owned, status_owned])).await?;
        let mut inner = self.lock();
        let refund = status == "failed" && record.status != "failed";
        if refund {
            let month = month_of(record.created_ms.max(0) as u64);
            inner.ledger.refund(&record.tenant, &month, record.price);
        }
        if let Some(r) = inner.generations.get_mut(id) {
            r.status = status.to_string();
        }
        Ok(())
    }

    async fn idem_claim(&self, tenant: &str, key: &str, digest: &[u8; 32]) -> Result<IdemClaim, StoreError> {
        let k = (tenant.to_string(), key.to_string());
        {
            let inner = self.lock();
            match inner.idem.get(&k) {
                Some(Idem::Running(d)) => return Ok(if d == digest { IdemClaim::InProgress } else { IdemClaim::Mismatch }),
                Some(Idem::Done(d, rsp)) => return Ok(if d == digest { IdemClaim::Replay(rsp.clone()) } else { IdemClaim::Mismatch }),
                None => {}
            }
        }
        let (t, kk) = k.clone();
        let stored = self
            .with_db(move |c| {
                c.query_row("SELECT body_digest, status, body FROM idempotency WHERE tenant = ?1 AND key = ?2", [t, kk], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?))
                })
                .optional()
            })
            .await?
            .flatten();
        let mut inner = self.lock();
        if let Some((d, status, body)) = stored {
            let rsp = StoredResponse { status: status as u16, body: Bytes::from(body) };
            let same = d.as_slice() == digest;
            inner.idem.insert(k, Idem::Done(d.try_into().unwrap_or([0; 32]), rsp.clone()));
            return Ok(if same { IdemClaim::Replay(rsp) } else { IdemClaim::Mismatch });
        }
        // Re-check under the lock: another request may have claimed it while we read SQLite.
        if let Some(existing) = inner.idem.get(&k) {
            return Ok(match existing {
                Idem::Running(d) if d == digest => IdemClaim::InProgress,
                Idem::Done(d, rsp) if d == digest => IdemClaim::Replay(rsp.clone()),
                _ => IdemClaim::Mismatch,
            });
        }
        inner.idem.insert(k, Idem::Running(*digest));
        Ok(IdemClaim::Fresh)
    }

    async fn idem_finish(&self, tenant: &str, key: &str, digest: &[u8; 32], rsp: &StoredResponse) -> Result<(), StoreError> {
        let (t, k, d, status, body) = (tenant.to_string(), key.to_string(), digest.to_vec(), rsp.status as i64, rsp.body.to_vec());
        self.with_db(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO idempotency (tenant, key, body_digest, status, body, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![t, k, d, status, body, super::now_ms() as i64],
            )
        })
        .await?;
        self.lock().idem.insert((tenant.to_string(), key.to_string()), Idem::Done(*digest, rsp.clone()));
        Ok(())
    }

    async fn idem_abort(&self, tenant: &str, key: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if matches!(inner.idem.get(&(tenant.to_string(), key.to_string())), Some(Idem::Running(_))) {
            inner.idem.remove(&(tenant.to_string(), key.to_string()));
        }
        Ok(())
    }

    async fn hold_totals(&self) -> Result<HoldTotals, StoreError> {
        Ok(self.lock().ledger.totals())
    }

    async fn spend_by_tenant(&self, month: &str) -> Result<Vec<(Arc<str>, Usd)>, StoreError> {
        Ok(self.lock().ledger.spend_by_tenant(month))
    }
}

#[cfg(test)]
mod tests;
