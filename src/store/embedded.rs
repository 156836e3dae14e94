//! The embedded store: one process, state in memory behind one mutex, made durable in a SQLite
//! file (WAL, `synchronous=FULL`) when configured.
//!
//! The cached balance lives only in memory. Holds, generations and idempotency claims are
//! written to SQLite *before* the caller is told, so a 201 is only ever sent for a record that
//! survives `kill -9`, and a hold whose request died with the process comes back at the next
//! start as an unknown outcome for the reconciler (never silently dropped). Spend is derived
//! from the generations table, so it always matches the records. The connection lives on its
//! own thread, which commits the writes of requests that arrive together at once (`writer.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    is_final_status, month_of, BalanceSnapshot, FetchTicket, GenerationRecord, HoldOutcome, HoldRequest, IdemClaim,
    Intent, OutboxMessage, OutboxStats, Resolution, Store, StoreError, StoredResponse, UnknownOutcome, WebhookTarget,
};
use crate::policy::family::Family;
use crate::policy::ledger::{Entry, EntryState, HoldDecision, HoldTotals, LedgerState};
use crate::policy::money::Usd;
use writer::Writer;

mod writer;

/// Entries kept in memory before the cache of SQLite-backed records is emptied.
const CACHE_LIMIT: usize = 200_000;

enum Idem {
    /// Claimed by the request that takes hold `hold`.
    Running {
        digest: [u8; 32],
        hold: String,
        since_ms: u64,
    },
    Done {
        digest: [u8; 32],
        rsp: StoredResponse,
        at_ms: u64,
    },
}

/// An outbox entry of the memory backend.
struct Queued {
    m: OutboxMessage,
    next_ms: u64,
    dead: bool,
}

#[derive(Default)]
struct Inner {
    webhooks: HashMap<String, WebhookTarget>,
    outbox: HashMap<String, Queued>,
    ledger: LedgerState,
    /// All generations (memory backend) or a cache of them (SQLite backend).
    generations: HashMap<String, GenerationRecord, foldhash::fast::RandomState>,
    idem: HashMap<(String, String), Idem>,
    /// The admin API's tenants (SQLite: loaded at open, written through).
    directory: std::collections::BTreeMap<String, super::TenantDoc>,
    dir_version: u64,
    last_used: HashMap<String, u64>,
    /// Alerts sent (SQLite: loaded at open, written through).
    alerts_sent: std::collections::HashSet<String>,
    /// Audit lines of the memory backend (SQLite keeps them in a table).
    audit: std::collections::VecDeque<String>,
    /// Why generations failed (memory backend; SQLite keeps it in the record's row).
    failures: HashMap<String, super::Failure>,
    /// Shared secrets and ended sessions as this process knows them (SQLite: written through
    /// and read on a miss).
    secrets: HashMap<String, [u8; 32]>,
    ended_sessions: HashMap<String, u64>,
}

/// Memory or SQLite-backed store for a single gateway process.
pub struct EmbeddedStore {
    inner: Mutex<Inner>,
    db: Option<Writer>,
    /// Directory writes one at a time: each checks a revision, then writes through.
    dir_writes: tokio::sync::Mutex<()>,
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
CREATE TABLE IF NOT EXISTS holds (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    price_micros INTEGER NOT NULL,
    family TEXT NOT NULL,
    prompt_sha256 TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    idem_key TEXT,
    month TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_targets (
    token TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    generation TEXT,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    next_ms INTEGER NOT NULL,
    dead INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (dead, next_ms);
CREATE TABLE IF NOT EXISTS api_tenants (id TEXT PRIMARY KEY, rev INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS directory_version (k INTEGER PRIMARY KEY CHECK (k = 0), version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts_sent (key TEXT PRIMARY KEY, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ended_sessions (id TEXT PRIMARY KEY, until_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS key_last_used (key_id TEXT PRIMARY KEY, ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ready_probe (k INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    body_digest BLOB NOT NULL,
    state TEXT NOT NULL,
    hold_id TEXT NOT NULL,
    status INTEGER NOT NULL DEFAULT 0,
    body BLOB NOT NULL DEFAULT x'',
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
);
";

/// The daily roll-ups (`super::DayTotals`) and the triggers that keep them: they run inside the
/// statement that inserts a generation, fails it (refund) or moves it to another owner, so a
/// roll-up can never disagree with the records (nor with the spend derived from them at start).
fn daily_schema() -> String {
    // What one generation row adds to its day (`sign` 1) or takes away (-1).
    let add = |row: &str| {
        format!(
            "INSERT INTO daily VALUES ({row}.tenant, {row}.created_ms / 86400000, {row}.family, 1, {row}.price_micros,
                CASE WHEN {row}.status = 'failed' THEN {row}.price_micros ELSE 0 END,
                CASE WHEN {row}.status = 'failed' AND {row}.reason = 'people' THEN 1 ELSE 0 END,
                CASE WHEN {row}.status = 'failed' AND {row}.reason = 'policy' THEN 1 ELSE 0 END,
                CASE WHEN {row}.status = 'failed' AND COALESCE({row}.reason, '') NOT IN ('people', 'policy') THEN 1 ELSE 0 END)
             ON CONFLICT (tenant, day, family) DO UPDATE SET n = n + excluded.n, charged_micros = charged_micros + excluded.charged_micros,
                refunded_micros = refunded_micros + excluded.refunded_micros, failed_people = failed_people + excluded.failed_people,
                failed_policy = failed_policy + excluded.failed_policy, failed_other = failed_other + excluded.failed_other;"
        )
    };
    let of_row =
        |row: &str| format!("tenant = {row}.tenant AND day = {row}.created_ms / 86400000 AND family = {row}.family");
    format!(
        "CREATE TABLE IF NOT EXISTS daily (
            tenant TEXT NOT NULL, day INTEGER NOT NULL, family TEXT NOT NULL,
            n INTEGER NOT NULL, charged_micros INTEGER NOT NULL, refunded_micros INTEGER NOT NULL,
            failed_people INTEGER NOT NULL, failed_policy INTEGER NOT NULL, failed_other INTEGER NOT NULL,
            PRIMARY KEY (tenant, day, family)
        ) WITHOUT ROWID;
        CREATE TRIGGER IF NOT EXISTS daily_insert AFTER INSERT ON generations BEGIN {ins} END;
        CREATE TRIGGER IF NOT EXISTS daily_fail AFTER UPDATE OF status ON generations
            WHEN NEW.status = 'failed' AND OLD.status != 'failed' BEGIN
            UPDATE daily SET refunded_micros = refunded_micros + NEW.price_micros,
                failed_people = failed_people + (CASE WHEN NEW.reason = 'people' THEN 1 ELSE 0 END),
                failed_policy = failed_policy + (CASE WHEN NEW.reason = 'policy' THEN 1 ELSE 0 END),
                failed_other = failed_other + (CASE WHEN COALESCE(NEW.reason, '') NOT IN ('people', 'policy') THEN 1 ELSE 0 END)
            WHERE {new_row};
        END;
        CREATE TRIGGER IF NOT EXISTS daily_move AFTER UPDATE OF tenant ON generations WHEN NEW.tenant != OLD.tenant BEGIN
            UPDATE daily SET n = n - 1, charged_micros = charged_micros - OLD.price_micros,
                refunded_micros = refunded_micros - (CASE WHEN OLD.status = 'failed' THEN OLD.price_micros ELSE 0 END),
                failed_people = failed_people - (CASE WHEN OLD.status = 'failed' AND OLD.reason = 'people' THEN 1 ELSE 0 END),
                failed_policy = failed_policy - (CASE WHEN OLD.status = 'failed' AND OLD.reason = 'policy' THEN 1 ELSE 0 END),
                failed_other = failed_other - (CASE WHEN OLD.status = 'failed' AND COALESCE(OLD.reason, '') NOT IN ('people', 'policy') THEN 1 ELSE 0 END)
            WHERE {old_row};
            {ins_new}
        END;",
        ins = add("NEW"),
        ins_new = add("NEW"),
        new_row = of_row("NEW"),
        old_row = of_row("OLD"),
    )
}

/// Brings a ledger written by an older tollgate up to this schema: the failure columns, the
/// newest-first index the dashboard reads, and the daily roll-ups (filled once from the records).
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let has = |c: &Connection, table: &str, column: Option<&str>| -> rusqlite::Result<bool> {
        match column {
            Some(col) => c
                .query_row("SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2", params![table, col], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| n > 0),
            None => c
                .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1", [table], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| n > 0),
        }
    };
    if !has(&tx, "generations", Some("reason"))? {
        tx.execute_batch(
            "ALTER TABLE generations ADD COLUMN error TEXT; ALTER TABLE generations ADD COLUMN reason TEXT;",
        )?;
    }
    tx.execute_batch(
        "CREATE INDEX IF NOT EXISTS generations_latest ON generations (tenant, created_ms DESC, id DESC);",
    )?;
    let fill = !has(&tx, "daily", None)?;
    tx.execute_batch(&daily_schema())?;
    if fill {
        tx.execute_batch(
            "INSERT INTO daily SELECT tenant, created_ms / 86400000, family, COUNT(*), SUM(price_micros),
                SUM(CASE WHEN status = 'failed' THEN price_micros ELSE 0 END),
                SUM(CASE WHEN status = 'failed' AND reason = 'people' THEN 1 ELSE 0 END),
                SUM(CASE WHEN status = 'failed' AND reason = 'policy' THEN 1 ELSE 0 END),
                SUM(CASE WHEN status = 'failed' AND COALESCE(reason, '') NOT IN ('people', 'policy') THEN 1 ELSE 0 END)
             FROM generations GROUP BY tenant, created_ms / 86400000, family;",
        )?;
    }
    tx.commit()
}

/// `execute` through the connection's statement cache: the paid path runs the same few
/// statements over and over, and parsing each one every time showed in its profile.
fn exec(c: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(params)
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("sqlite: {e}"))
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<GenerationRecord> {
    let family: String = row.get(2)?;
    Ok(GenerationRecord {
        id: row.get(0)?,
        tenant: Arc::from(row.get::<_, String>(1)?),
        family: Family::named(&family),
        price: Usd::from_micros(row.get(3)?),
        created_ms: row.get(4)?,
        status: row.get(5)?,
    })
}

// === impl EmbeddedStore ===

type Loaded = (Connection, Vec<(String, String, i64, i64)>, Vec<(String, Entry)>);

impl EmbeddedStore {
    /// State in memory only; lost at exit.
    pub fn memory() -> Self {
        EmbeddedStore { inner: Mutex::new(Inner::default()), db: None, dir_writes: Default::default() }
    }

    /// State in memory, records durable in the SQLite file at `path` (created with its parent
    /// directory if missing). Loads each tenant's spend from the records, and the holds of
    /// requests that were in flight when the process last stopped, as unknown outcomes.
    pub async fn sqlite(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let (conn, spend, holds) = tokio::task::spawn_blocking(move || -> Result<Loaded, StoreError> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
            }
            let mut conn = Connection::open(&path).map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
            // WAL: readers never block the writer. FULL: a commit is on disk before we answer.
            conn.pragma_update(None, "journal_mode", "WAL").map_err(db_err)?;
            conn.pragma_update(None, "synchronous", "FULL").map_err(db_err)?;
            conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db_err)?;
            conn.set_prepared_statement_cache_capacity(64);
            conn.execute_batch(SCHEMA).map_err(db_err)?;
            migrate(&mut conn).map_err(db_err)?;
            let spend = {
                let mut stmt = conn
                    .prepare(
                        "SELECT tenant, month, SUM(CASE WHEN status != 'failed' THEN price_micros ELSE 0 END),
                                SUM(CASE WHEN status = 'failed' THEN price_micros ELSE 0 END)
                         FROM generations GROUP BY tenant, month",
                    )
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?)))
                    .map_err(db_err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?
            };
            let holds = {
                let mut stmt = conn
                    .prepare("SELECT id, tenant, price_micros, family, prompt_sha256, created_ms, idem_key, month FROM holds")
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            Entry {
                                tenant: Arc::from(r.get::<_, String>(1)?),
                                amount: Usd::from_micros(r.get(2)?),
                                state: EntryState::Unknown,
                                intent: Intent {
                                    family: r.get(3)?,
                                    fingerprint: r.get(4)?,
                                    created_ms: r.get::<_, i64>(5)?.max(0) as u64,
                                    idem_key: r.get(6)?,
                                    month: r.get(7)?,
                                },
                            },
                        ))
                    })
                    .map_err(db_err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?
            };
            Ok((conn, spend, holds))
        })
        .await
        .map_err(db_err)??;
        let mut inner = Inner::default();
        for (tenant, month, micros, refunded) in spend {
            inner.ledger.set_spend(Arc::from(tenant), month, Usd::from_micros(micros), Usd::from_micros(refunded));
        }
        if !holds.is_empty() {
            tracing::warn!(holds = holds.len(), "requests were in flight when the gateway last stopped; their holds are unknown outcomes until reconciled");
        }
        for (id, entry) in holds {
            inner.ledger.insert(id, entry);
        }
        let writer = Writer::start(conn).map_err(|e| StoreError(format!("cannot start the database thread: {e}")))?;
        let store = EmbeddedStore { inner: Mutex::new(inner), db: Some(writer), dir_writes: Default::default() };
        let (version, docs, used, sent) = store
            .with_db(|c| {
                let version: u64 = c
                    .query_row("SELECT version FROM directory_version WHERE k = 0", [], |r| r.get::<_, i64>(0))
                    .optional()?
                    .unwrap_or(0) as u64;
                let docs = {
                    let mut stmt = c.prepare("SELECT id, rev, doc FROM api_tenants")?;
                    let rows = stmt.query_map([], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, String>(2)?))
                    })?;
                    rows.collect::<Result<Vec<_>, _>>()?
                };
                let sent = {
                    let mut stmt = c.prepare("SELECT key FROM alerts_sent")?;
                    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                    rows.collect::<Result<std::collections::HashSet<_>, _>>()?
                };
                let used = {
                    let mut stmt = c.prepare("SELECT key_id, ms FROM key_last_used")?;
                    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
                    rows.collect::<Result<HashMap<_, _>, _>>()?
                };
                Ok((version, docs, used, sent))
            })
            .await?
            .unwrap_or_default();
        {
            let mut inner = store.lock();
            inner.dir_version = version;
            inner.last_used = used;
            inner.alerts_sent = sent;
            for (id, rev, doc) in docs {
                let tenant = serde_json::from_str(&doc)
                    .map_err(|e| StoreError(format!("api tenant {id:?} in the database is unreadable: {e}")))?;
                inner.directory.insert(id, super::TenantDoc { rev, tenant });
            }
        }
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the ledger half-updated in a way that
        // matters more than refusing all traffic would, so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the SQLite connection's thread, atomically, and returns once it is durable
    /// (`writer.rs`: commits are shared by the requests waiting at the time); `None` for the
    /// memory backend.
    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<Option<T>, StoreError> {
        let Some(db) = &self.db else { return Ok(None) };
        db.run(f).await.map(Some).map_err(db_err)
    }

    fn cache(&self, record: GenerationRecord) {
        let mut inner = self.lock();
        if self.db.is_some() && inner.generations.len() >= CACHE_LIMIT {
            inner.generations.clear();
        }
        inner.generations.insert(record.id.clone(), record);
    }

    /// Writes a generation (if new), drops the hold row and finishes an Idempotency-Key, in one
    /// transaction. Returns whether the generation was new.
    async fn record_generation(
        &self,
        r: &GenerationRecord,
        hold: &str,
        idem: Option<(String, String, Bytes)>,
    ) -> Result<bool, StoreError> {
        if self.db.is_none() {
            return Ok(!self.lock().generations.contains_key(&r.id));
        }
        let r = r.clone();
        let hold = hold.to_string();
        let month = month_of(r.created_ms.max(0) as u64);
        self.with_db(move |c| {
            let tx = c.savepoint()?;
            let new = exec(&tx,
                "INSERT OR IGNORE INTO generations (id, tenant, family, price_micros, created_ms, month, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![r.id, &*r.tenant, r.family.path(), r.price.micros(), r.created_ms, month, r.status],
            )? == 1;
            exec(&tx, "DELETE FROM holds WHERE id = ?1", [&hold])?;
            if let Some((tenant, key, body)) = idem {
                exec(&tx,
                    "UPDATE idempotency_keys SET state = 'done', status = 201, body = ?3, created_ms = ?4 WHERE tenant = ?1 AND key = ?2 AND hold_id = ?5",
                    params![tenant, key, body.to_vec(), super::now_ms() as i64, hold],
                )?;
            }
            tx.commit()?;
            Ok(new)
        })
        .await
        .map(|v| v.unwrap_or(true))
    }
}

fn idem_done(inner: &mut Inner, tenant: &str, key: &str, hold: &str, rsp: StoredResponse) {
    let k = (tenant.to_string(), key.to_string());
    if let Some(Idem::Running { digest, hold: h, .. }) = inner.idem.get(&k) {
        if h == hold {
            let digest = *digest;
            inner.idem.insert(k, Idem::Done { digest, rsp, at_ms: super::now_ms() });
        }
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
        // A durable write, not a read: a full disk or a read-only file must make /readyz fail.
        self.with_db(|c| {
            exec(c, "INSERT OR REPLACE INTO ready_probe (k, at_ms) VALUES (1, ?1)", [super::now_ms() as i64])
        })
        .await
        .map(|_| ())
    }

    async fn balance(&self) -> Result<Option<BalanceSnapshot>, StoreError> {
        Ok(self.lock().ledger.balance().map(|(amount, fetched_ms)| BalanceSnapshot { amount, fetched_ms }))
    }

    async fn begin_balance_fetch(&self) -> Result<FetchTicket, StoreError> {
        Ok(self.lock().ledger.begin_fetch())
    }

    async fn apply_balance(&self, amount: Usd, at: FetchTicket, now_ms: u64) -> Result<bool, StoreError> {
        Ok(self.lock().ledger.apply_balance(amount, at, now_ms))
    }

    async fn hold(&self, req: &HoldRequest) -> Result<HoldOutcome, StoreError> {
        let now = super::now_ms();
        let mut intent = req.intent.clone();
        intent.created_ms = now;
        let decision = self.lock().ledger.hold(
            &req.id,
            &req.tenant,
            req.price,
            req.budget,
            req.reserve,
            req.max_in_flight,
            now + req.lease_ms,
            intent.clone(),
        );
        if decision == HoldDecision::Held && self.db.is_some() {
            let (id, tenant, price) = (req.id.clone(), req.tenant.to_string(), req.price.micros());
            let written = self
                .with_db(move |c| {
                    exec(c,
                        "INSERT OR IGNORE INTO holds (id, tenant, price_micros, family, prompt_sha256, created_ms, idem_key, month) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        params![id, tenant, price, intent.family, intent.fingerprint, intent.created_ms as i64, intent.idem_key, intent.month],
                    )
                })
                .await;
            if let Err(e) = written {
                self.lock().ledger.release(&req.id, now);
                return Err(e);
            }
        }
        Ok(match decision {
            HoldDecision::Held => HoldOutcome::Held,
            HoldDecision::Refused(r) => HoldOutcome::Refused(r),
            HoldDecision::NoBalance => HoldOutcome::NoBalance,
            HoldDecision::Gone => HoldOutcome::Gone,
        })
    }

    async fn settle(&self, hold: &str, charged: Usd, record: &GenerationRecord) -> Result<(), StoreError> {
        let new = self.record_generation(record, hold, None).await?;
        let month = month_of(record.created_ms.max(0) as u64);
        {
            let mut inner = self.lock();
            if new {
                if !inner.ledger.settle(hold, charged, &month) {
                    // Released or resolved meanwhile: the generation still costs the tenant.
                    inner.ledger.add_spend(record.tenant.clone(), &month, charged);
                }
            } else {
                // Recorded already (the reconciler found it first): drop the duplicate hold.
                inner.ledger.release(hold, super::now_ms());
            }
        }
        self.cache(record.clone());
        Ok(())
    }

    async fn release(&self, hold: &str) -> Result<(), StoreError> {
        let id = hold.to_string();
        self.with_db(move |c| exec(c, "DELETE FROM holds WHERE id = ?1", [id])).await?;
        self.lock().ledger.release(hold, super::now_ms());
        Ok(())
    }

    async fn mark_unknown(&self, hold: &str) -> Result<(), StoreError> {
        // The durable row already says "in flight"; after a restart every row is unknown.
        self.lock().ledger.mark_unknown(hold);
        Ok(())
    }

    async fn expire_holds(&self) -> Result<u64, StoreError> {
        let now = super::now_ms();
        let cutoff = now.saturating_sub(super::IDEM_RETENTION_MS);
        let expired = {
            let mut inner = self.lock();
            inner.idem.retain(|_, v| !matches!(v, Idem::Done { at_ms, .. } if *at_ms < cutoff));
            inner.ledger.expire(now).len() as u64
        };
        self.with_db(move |c| {
            exec(c, "DELETE FROM idempotency_keys WHERE state = 'done' AND created_ms < ?1", [cutoff as i64])
        })
        .await?;
        Ok(expired)
    }

    async fn unknown_outcomes(&self) -> Result<Vec<UnknownOutcome>, StoreError> {
        Ok(self
            .lock()
            .ledger
            .unknown()
            .into_iter()
            .map(|(hold, e)| UnknownOutcome { hold, tenant: e.tenant, price: e.amount, intent: e.intent })
            .collect())
    }

    async fn open_holds(&self) -> Result<Vec<UnknownOutcome>, StoreError> {
        Ok(self
            .lock()
            .ledger
            .open()
            .into_iter()
            .map(|(hold, e)| UnknownOutcome { hold, tenant: e.tenant, price: e.amount, intent: e.intent })
            .collect())
    }

    async fn reassign(&self, id: &str, from: &str, to: &str) -> Result<Option<GenerationRecord>, StoreError> {
        let Some(record) = self.generation(id).await?.filter(|r| &*r.tenant == from) else { return Ok(None) };
        let (i, f, t) = (id.to_string(), from.to_string(), to.to_string());
        if self
            .with_db(move |c| {
                exec(c, "UPDATE generations SET tenant = ?3 WHERE id = ?1 AND tenant = ?2", params![i, f, t])
            })
            .await?
            == Some(0)
        {
            return Ok(None);
        }
        let month = month_of(record.created_ms.max(0) as u64);
        let to: Arc<str> = Arc::from(to);
        let mut inner = self.lock();
        if inner.generations.get(id).is_some_and(|r| *r.tenant != *from) {
            return Ok(None);
        }
        inner.ledger.transfer(&record.tenant, &to, &month, record.price, record.status == "failed");
        let mut moved = record.clone();
        moved.tenant = to;
        inner.generations.insert(id.to_string(), moved);
        Ok(Some(record))
    }

    async fn resolve_unknown(&self, hold: &str, resolution: &Resolution) -> Result<bool, StoreError> {
        let Some(entry) = self.lock().ledger.entry(hold).filter(|e| e.state == EntryState::Unknown).cloned() else {
            return Ok(false);
        };
        let idem_key = entry.intent.idem_key.clone();
        match resolution {
            Resolution::Created { record, reply } => {
                let idem = idem_key.clone().map(|k| (entry.tenant.to_string(), k, reply.clone()));
                let new = self.record_generation(record, hold, idem).await?;
                let month = month_of(record.created_ms.max(0) as u64);
                let mut inner = self.lock();
                if new {
                    inner.ledger.settle(hold, record.price, &month);
                } else {
                    inner.ledger.release(hold, super::now_ms());
                }
                if let Some(k) = &idem_key {
                    idem_done(&mut inner, &entry.tenant, k, hold, StoredResponse { status: 201, body: reply.clone() });
                }
                drop(inner);
                self.cache(record.clone());
            }
            Resolution::NotCharged => {
                let (id, tenant, key) = (hold.to_string(), entry.tenant.to_string(), idem_key.clone());
                self.with_db(move |c| {
                    let tx = c.savepoint()?;
                    exec(&tx, "DELETE FROM holds WHERE id = ?1", [&id])?;
                    if let Some(k) = key {
                        exec(&tx, "DELETE FROM idempotency_keys WHERE tenant = ?1 AND key = ?2 AND hold_id = ?3 AND state = 'running'", params![tenant, k, id])?;
                    }
                    tx.commit()
                })
                .await?;
                let mut inner = self.lock();
                inner.ledger.release(hold, super::now_ms());
                if let Some(k) = idem_key {
                    let kk = (entry.tenant.to_string(), k);
                    if matches!(inner.idem.get(&kk), Some(Idem::Running { hold: h, .. }) if h == hold) {
                        inner.idem.remove(&kk);
                    }
                }
            }
        }
        Ok(true)
    }

    async fn spendable(
        &self,
        tenant: &Arc<str>,
        month: &str,
        budget: Option<Usd>,
        reserve: Usd,
    ) -> Result<Option<Usd>, StoreError> {
        Ok(self.lock().ledger.spendable(tenant, month, budget, reserve))
    }

    async fn admission(
        &self,
        tenant: &Arc<str>,
        month: &str,
        budget: Option<Usd>,
        reserve: Usd,
        max_in_flight: Option<u32>,
    ) -> Result<Option<crate::policy::ledger::Admission>, StoreError> {
        Ok(self.lock().ledger.admission(tenant, month, budget, reserve, max_in_flight))
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

    async fn list_generations(
        &self,
        tenant: &str,
        family: Family,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<GenerationRecord>, StoreError> {
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
                let rows =
                    stmt.query_map(params![tenant, family.path(), limit as i64, offset as i64], row_to_record)?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(rows.unwrap_or_default())
    }

    async fn unfinished_generations(&self, limit: usize) -> Result<Vec<GenerationRecord>, StoreError> {
        if self.db.is_none() {
            let inner = self.lock();
            let mut v: Vec<GenerationRecord> =
                inner.generations.values().filter(|r| !is_final_status(&r.status)).cloned().collect();
            v.sort_by_key(|r| r.created_ms);
            v.truncate(limit);
            return Ok(v);
        }
        let rows = self
            .with_db(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT id, tenant, family, price_micros, created_ms, status FROM generations
                     WHERE status NOT IN ('completed', 'failed') ORDER BY created_ms LIMIT ?1",
                )?;
                let rows = stmt.query_map([limit as i64], row_to_record)?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(rows.unwrap_or_default())
    }

    async fn update_status(
        &self,
        id: &str,
        status: &str,
        failure: Option<&super::Failure>,
    ) -> Result<bool, StoreError> {
        let Some(record) = self.generation(id).await? else { return Ok(false) };
        if record.status == status || record.status == "failed" {
            return Ok(false);
        }
        let failure = failure.filter(|_| status == "failed").cloned();
        let (id_owned, status_owned) = (id.to_string(), status.to_string());
        let (error, reason) =
            (failure.as_ref().map(|f| f.message.clone()), failure.as_ref().map(|f| f.reason.as_str()));
        // Conditional on the old status, so two concurrent observers refund once. The daily
        // roll-up's refund is the `daily_fail` trigger of this same statement.
        let changed = self
            .with_db(move |c| {
                exec(
                    c,
                    "UPDATE generations SET status = ?2, error = ?3, reason = ?4 WHERE id = ?1 AND status != 'failed' AND status != ?2",
                    params![id_owned, status_owned, error, reason],
                )
            })
            .await?;
        let mut inner = self.lock();
        let current = inner.generations.get(id).map(|r| r.status.clone()).unwrap_or_else(|| record.status.clone());
        if changed == Some(0) || current == "failed" || current == status {
            if let (Some(r), Some(0)) = (inner.generations.get_mut(id), changed) {
                r.status = status.to_string();
            }
            return Ok(false);
        }
        if status == "failed" {
            let month = month_of(record.created_ms.max(0) as u64);
            inner.ledger.refund(&record.tenant, &month, record.price);
            if self.db.is_none() {
                inner.failures.insert(
                    id.to_string(),
                    failure.unwrap_or(super::Failure { reason: super::Reason::Other, message: String::new() }),
                );
            }
        }
        if let Some(r) = inner.generations.get_mut(id) {
            r.status = status.to_string();
        }
        Ok(true)
    }

    async fn latest_generations(
        &self,
        tenant: &str,
        _families: &[Family],
        limit: usize,
    ) -> Result<Vec<(GenerationRecord, Option<super::Failure>)>, StoreError> {
        if self.db.is_none() {
            let inner = self.lock();
            let mut mine: Vec<&GenerationRecord> =
                inner.generations.values().filter(|r| &*r.tenant == tenant).collect();
            mine.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then_with(|| b.id.cmp(&a.id)));
            return Ok(mine.into_iter().take(limit).map(|r| (r.clone(), inner.failures.get(&r.id).cloned())).collect());
        }
        let tenant = tenant.to_string();
        let rows = self
            .with_db(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT id, tenant, family, price_micros, created_ms, status, error, reason FROM generations
                     WHERE tenant = ?1 ORDER BY created_ms DESC, id DESC LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![tenant, limit as i64], |row| {
                    let record = row_to_record(row)?;
                    let failure = (record.status == "failed").then(|| -> rusqlite::Result<super::Failure> {
                        Ok(super::Failure {
                            message: row.get::<_, Option<String>>(6)?.unwrap_or_default(),
                            reason: super::Reason::named(row.get::<_, Option<String>>(7)?.as_deref().unwrap_or("")),
                        })
                    });
                    Ok((record, failure.transpose()?))
                })?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(rows.unwrap_or_default())
    }

    async fn daily(&self, tenant: &str, from: i64, to: i64) -> Result<Vec<super::DayTotals>, StoreError> {
        if self.db.is_none() {
            // The memory backend keeps every record in memory: its roll-up is a pass over them.
            let inner = self.lock();
            let mut days: std::collections::BTreeMap<(i64, String), super::DayTotals> = Default::default();
            for r in inner.generations.values().filter(|r| &*r.tenant == tenant) {
                let day = r.created_ms.div_euclid(super::DAY_MS);
                if day < from || day > to {
                    continue;
                }
                let d = days.entry((day, r.family.path().to_string())).or_insert_with(|| super::DayTotals {
                    day,
                    family: r.family.path().to_string(),
                    ..Default::default()
                });
                d.generations += 1;
                d.charged += r.price;
                if r.status == "failed" {
                    d.refunded += r.price;
                    d.failed[inner.failures.get(&r.id).map_or(super::Reason::Other, |f| f.reason).index()] += 1;
                }
            }
            return Ok(days.into_values().collect());
        }
        let tenant = tenant.to_string();
        let rows = self
            .with_db(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT day, family, n, charged_micros, refunded_micros, failed_people, failed_policy, failed_other FROM daily
                     WHERE tenant = ?1 AND day BETWEEN ?2 AND ?3 ORDER BY day, family",
                )?;
                let rows = stmt.query_map(params![tenant, from, to], |r| {
                    Ok(super::DayTotals {
                        day: r.get(0)?,
                        family: r.get(1)?,
                        generations: r.get::<_, i64>(2)?.max(0) as u64,
                        charged: Usd::from_micros(r.get(3)?),
                        refunded: Usd::from_micros(r.get(4)?),
                        failed: [r.get::<_, i64>(5)?.max(0) as u64, r.get::<_, i64>(6)?.max(0) as u64, r.get::<_, i64>(7)?.max(0) as u64],
                    })
                })?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(rows.unwrap_or_default())
    }

    async fn idem_claim(
        &self,
        tenant: &str,
        key: &str,
        digest: &[u8; 32],
        hold: &str,
        stale_ms: u64,
    ) -> Result<IdemClaim, StoreError> {
        let k = (tenant.to_string(), key.to_string());
        let in_memory = self.lock().idem.contains_key(&k);
        if !in_memory {
            let (t, kk) = k.clone();
            let stored = self
                .with_db(move |c| {
                    c.query_row(
                        "SELECT body_digest, state, hold_id, status, body, created_ms FROM idempotency_keys WHERE tenant = ?1 AND key = ?2",
                        [t, kk],
                        |r| {
                            Ok((
                                r.get::<_, Vec<u8>>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, String>(2)?,
                                r.get::<_, i64>(3)?,
                                r.get::<_, Vec<u8>>(4)?,
                                r.get::<_, i64>(5)?,
                            ))
                        },
                    )
                    .optional()
                })
                .await?
                .flatten();
            if let Some((d, state, h, status, body, at)) = stored {
                let digest_arr: [u8; 32] = d.try_into().unwrap_or([0; 32]);
                let at_ms = at.max(0) as u64;
                let v = if state == "done" {
                    Idem::Done {
                        digest: digest_arr,
                        rsp: StoredResponse { status: status as u16, body: Bytes::from(body) },
                        at_ms,
                    }
                } else {
                    Idem::Running { digest: digest_arr, hold: h, since_ms: at_ms }
                };
                self.lock().idem.entry(k.clone()).or_insert(v);
            }
        }
        let now = super::now_ms();
        let claim = {
            let mut inner = self.lock();
            let answer = match inner.idem.get(&k) {
                None => None,
                Some(Idem::Done { digest: d, rsp, at_ms }) if now.saturating_sub(*at_ms) < super::IDEM_RETENTION_MS => {
                    Some(if d == digest { IdemClaim::Replay(rsp.clone()) } else { IdemClaim::Mismatch })
                }
                Some(Idem::Done { .. }) => None,
                Some(Idem::Running { digest: d, .. }) if d != digest => Some(IdemClaim::Mismatch),
                Some(Idem::Running { hold: h, since_ms, .. }) => match inner.ledger.entry(h).map(|e| e.state) {
                    Some(EntryState::Unknown) => Some(IdemClaim::Unresolved),
                    Some(_) => Some(IdemClaim::InProgress),
                    // Its request died before taking a hold: nothing was sent, take it over.
                    None if now.saturating_sub(*since_ms) >= stale_ms => None,
                    None => Some(IdemClaim::InProgress),
                },
            };
            if answer.is_none() {
                inner.idem.insert(k.clone(), Idem::Running { digest: *digest, hold: hold.to_string(), since_ms: now });
            }
            answer
        };
        if let Some(a) = claim {
            return Ok(a);
        }
        let (t, kk, d, h) = (k.0.clone(), k.1.clone(), digest.to_vec(), hold.to_string());
        let written = self
            .with_db(move |c| {
                exec(c,
                    "INSERT OR REPLACE INTO idempotency_keys (tenant, key, body_digest, state, hold_id, created_ms) VALUES (?1, ?2, ?3, 'running', ?4, ?5)",
                    params![t, kk, d, h, now as i64],
                )
            })
            .await;
        if let Err(e) = written {
            self.lock().idem.remove(&k);
            return Err(e);
        }
        Ok(IdemClaim::Fresh)
    }

    async fn idem_finish(
        &self,
        tenant: &str,
        key: &str,
        digest: &[u8; 32],
        rsp: &StoredResponse,
    ) -> Result<(), StoreError> {
        let (t, k, d, status, body) =
            (tenant.to_string(), key.to_string(), digest.to_vec(), rsp.status as i64, rsp.body.to_vec());
        let now = super::now_ms();
        self.with_db(move |c| {
            exec(c,
                "INSERT OR REPLACE INTO idempotency_keys (tenant, key, body_digest, state, hold_id, status, body, created_ms) VALUES (?1, ?2, ?3, 'done', '', ?4, ?5, ?6)",
                params![t, k, d, status, body, now as i64],
            )
        })
        .await?;
        self.lock().idem.insert(
            (tenant.to_string(), key.to_string()),
            Idem::Done { digest: *digest, rsp: rsp.clone(), at_ms: now },
        );
        Ok(())
    }

    async fn idem_abort(&self, tenant: &str, key: &str) -> Result<(), StoreError> {
        let (t, k) = (tenant.to_string(), key.to_string());
        self.with_db(move |c| {
            exec(c, "DELETE FROM idempotency_keys WHERE tenant = ?1 AND key = ?2 AND state = 'running'", [t, k])
        })
        .await?;
        let mut inner = self.lock();
        let kk = (tenant.to_string(), key.to_string());
        if matches!(inner.idem.get(&kk), Some(Idem::Running { .. })) {
            inner.idem.remove(&kk);
        }
        Ok(())
    }

    async fn webhook_register(&self, t: &WebhookTarget) -> Result<(), StoreError> {
        if self.db.is_none() {
            self.lock().webhooks.insert(t.token.clone(), t.clone());
            return Ok(());
        }
        let t = t.clone();
        self.with_db(move |c| {
            exec(c,
                "INSERT OR REPLACE INTO webhook_targets (token, tenant, url, generation, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.token, &*t.tenant, t.url, t.generation, t.created_ms as i64],
            )
        })
        .await
        .map(|_| ())
    }

    async fn webhook_link(&self, token: &str, generation: &str) -> Result<(), StoreError> {
        if self.db.is_none() {
            if let Some(t) = self.lock().webhooks.get_mut(token) {
                t.generation = Some(generation.to_string());
            }
            return Ok(());
        }
        let (t, g) = (token.to_string(), generation.to_string());
        self.with_db(move |c| exec(c, "UPDATE webhook_targets SET generation = ?2 WHERE token = ?1", [t, g]))
            .await
            .map(|_| ())
    }

    async fn webhook_target(&self, token: &str) -> Result<Option<WebhookTarget>, StoreError> {
        if self.db.is_none() {
            return Ok(self.lock().webhooks.get(token).cloned());
        }
        let t = token.to_string();
        Ok(self
            .with_db(move |c| {
                c.query_row(
                    "SELECT token, tenant, url, generation, created_ms FROM webhook_targets WHERE token = ?1",
                    [t],
                    |r| {
                        Ok(WebhookTarget {
                            token: r.get(0)?,
                            tenant: Arc::from(r.get::<_, String>(1)?),
                            url: r.get(2)?,
                            generation: r.get(3)?,
                            created_ms: r.get::<_, i64>(4)?.max(0) as u64,
                        })
                    },
                )
                .optional()
            })
            .await?
            .flatten())
    }

    async fn outbox_push(&self, m: &OutboxMessage) -> Result<(), StoreError> {
        let now = super::now_ms();
        if self.db.is_none() {
            self.lock().outbox.insert(m.id.clone(), Queued { m: m.clone(), next_ms: now, dead: false });
            return Ok(());
        }
        let m = m.clone();
        self.with_db(move |c| {
            exec(c,
                "INSERT OR IGNORE INTO outbox (id, tenant, url, body, attempts, created_ms, next_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![m.id, &*m.tenant, m.url, m.body.to_vec(), m.attempts, m.created_ms as i64, now as i64],
            )
        })
        .await
        .map(|_| ())
    }

    async fn outbox_claim(&self, limit: usize, lease_ms: u64) -> Result<Vec<OutboxMessage>, StoreError> {
        let now = super::now_ms();
        if self.db.is_none() {
            let mut inner = self.lock();
            let mut due: Vec<&mut Queued> = inner.outbox.values_mut().filter(|q| !q.dead && q.next_ms <= now).collect();
            due.sort_by_key(|q| q.next_ms);
            return Ok(due
                .into_iter()
                .take(limit)
                .map(|q| {
                    q.next_ms = now + lease_ms;
                    q.m.clone()
                })
                .collect());
        }
        let rows = self
            .with_db(move |c| {
                let tx = c.savepoint()?;
                let rows = {
                    let mut stmt = tx.prepare_cached(
                        "SELECT id, tenant, url, body, attempts, created_ms FROM outbox WHERE dead = 0 AND next_ms <= ?1 ORDER BY next_ms LIMIT ?2",
                    )?;
                    let rows = stmt.query_map(params![now as i64, limit as i64], |r| {
                        Ok(OutboxMessage {
                            id: r.get(0)?,
                            tenant: Arc::from(r.get::<_, String>(1)?),
                            url: r.get(2)?,
                            body: Bytes::from(r.get::<_, Vec<u8>>(3)?),
                            attempts: r.get(4)?,
                            created_ms: r.get::<_, i64>(5)?.max(0) as u64,
                        })
                    })?;
                    rows.collect::<Result<Vec<_>, _>>()?
                };
                for m in &rows {
                    exec(&tx, "UPDATE outbox SET next_ms = ?2 WHERE id = ?1", params![m.id, (now + lease_ms) as i64])?;
                }
                tx.commit()?;
                Ok(rows)
            })
            .await?;
        Ok(rows.unwrap_or_default())
    }

    async fn outbox_done(&self, id: &str) -> Result<(), StoreError> {
        if self.db.is_none() {
            self.lock().outbox.remove(id);
            return Ok(());
        }
        let id = id.to_string();
        self.with_db(move |c| exec(c, "DELETE FROM outbox WHERE id = ?1", [id])).await.map(|_| ())
    }

    async fn outbox_retry(&self, id: &str, attempts: u32, next_ms: u64) -> Result<(), StoreError> {
        if self.db.is_none() {
            if let Some(q) = self.lock().outbox.get_mut(id) {
                q.m.attempts = attempts;
                q.next_ms = next_ms;
            }
            return Ok(());
        }
        let id = id.to_string();
        self.with_db(move |c| {
            exec(
                c,
                "UPDATE outbox SET attempts = ?2, next_ms = ?3 WHERE id = ?1",
                params![id, attempts, next_ms as i64],
            )
        })
        .await
        .map(|_| ())
    }

    async fn outbox_dead(&self, id: &str, attempts: u32) -> Result<(), StoreError> {
        if self.db.is_none() {
            if let Some(q) = self.lock().outbox.get_mut(id) {
                q.m.attempts = attempts;
                q.dead = true;
            }
            return Ok(());
        }
        let id = id.to_string();
        self.with_db(move |c| exec(c, "UPDATE outbox SET attempts = ?2, dead = 1 WHERE id = ?1", params![id, attempts]))
            .await
            .map(|_| ())
    }

    async fn outbox_redeliver(&self, tenant: Option<&str>) -> Result<u64, StoreError> {
        let now = super::now_ms();
        if self.db.is_none() {
            let mut n = 0;
            for q in self.lock().outbox.values_mut().filter(|q| q.dead && tenant.is_none_or(|t| &*q.m.tenant == t)) {
                q.dead = false;
                q.m.attempts = 0;
                q.next_ms = now;
                n += 1;
            }
            return Ok(n);
        }
        let tenant = tenant.map(str::to_string);
        let n = self
            .with_db(move |c| {
                exec(c,
                    "UPDATE outbox SET dead = 0, attempts = 0, next_ms = ?1 WHERE dead = 1 AND (?2 IS NULL OR tenant = ?2)",
                    params![now as i64, tenant],
                )
            })
            .await?;
        Ok(n.unwrap_or(0) as u64)
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        if self.db.is_none() {
            let inner = self.lock();
            let pending = inner.outbox.values().filter(|q| !q.dead);
            return Ok(OutboxStats {
                pending: pending.clone().count() as u64,
                oldest_pending_ms: pending.map(|q| q.m.created_ms).min(),
                dead: inner.outbox.values().filter(|q| q.dead).count() as u64,
            });
        }
        let s = self
            .with_db(|c| {
                c.query_row(
                    "SELECT COALESCE(SUM(dead = 0), 0), MIN(CASE WHEN dead = 0 THEN created_ms END), COALESCE(SUM(dead = 1), 0) FROM outbox",
                    [],
                    |r| Ok(OutboxStats { pending: r.get::<_, i64>(0)? as u64, oldest_pending_ms: r.get::<_, Option<i64>>(1)?.map(|v| v.max(0) as u64), dead: r.get::<_, i64>(2)? as u64 }),
                )
            })
            .await?;
        Ok(s.unwrap_or_default())
    }

    async fn month_totals(&self, month: &str) -> Result<HashMap<String, crate::store::MonthTotals>, StoreError> {
        let inner = self.lock();
        let mut out: HashMap<String, crate::store::MonthTotals> = HashMap::new();
        for (t, s) in inner.ledger.spend_by_tenant(month) {
            out.entry(t.to_string()).or_default().spent = s;
        }
        for (t, r) in inner.ledger.refunded_by_tenant(month) {
            out.entry(t.to_string()).or_default().refunded = r;
        }
        for (t, h, u) in inner.ledger.held_by_tenant(month) {
            let e = out.entry(t.to_string()).or_default();
            e.held = h;
            e.unknown = u;
        }
        Ok(out)
    }

    async fn generations_in_month(
        &self,
        month: &str,
        tenant: Option<&str>,
    ) -> Result<Vec<GenerationRecord>, StoreError> {
        if self.db.is_none() {
            let inner = self.lock();
            let mut v: Vec<GenerationRecord> = inner
                .generations
                .values()
                .filter(|r| month_of(r.created_ms.max(0) as u64) == month && tenant.is_none_or(|t| &*r.tenant == t))
                .cloned()
                .collect();
            v.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then_with(|| a.id.cmp(&b.id)));
            return Ok(v);
        }
        let (month, tenant) = (month.to_string(), tenant.map(str::to_string));
        let rows = self
            .with_db(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT id, tenant, family, price_micros, created_ms, status FROM generations
                     WHERE month = ?1 AND (?2 IS NULL OR tenant = ?2) ORDER BY created_ms, id",
                )?;
                let rows = stmt.query_map(params![month, tenant], row_to_record)?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(rows.unwrap_or_default())
    }

    async fn outbox_dead_by_tenant(&self) -> Result<HashMap<String, u64>, StoreError> {
        if self.db.is_none() {
            let mut out = HashMap::new();
            for q in self.lock().outbox.values().filter(|q| q.dead) {
                *out.entry(q.m.tenant.to_string()).or_default() += 1;
            }
            return Ok(out);
        }
        let rows = self
            .with_db(|c| {
                let mut stmt =
                    c.prepare_cached("SELECT tenant, COUNT(*) FROM outbox WHERE dead = 1 GROUP BY tenant")?;
                let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
                rows.collect::<Result<HashMap<_, _>, _>>()
            })
            .await?;
        Ok(rows.unwrap_or_default())
    }

    async fn reconciler_lease(&self, _owner: &str, _ttl_ms: u64) -> Result<bool, StoreError> {
        // One process owns this store.
        Ok(true)
    }

    async fn hold_totals(&self) -> Result<HoldTotals, StoreError> {
        Ok(self.lock().ledger.totals())
    }

    async fn spend_by_tenant(&self, month: &str) -> Result<Vec<(Arc<str>, Usd)>, StoreError> {
        Ok(self.lock().ledger.spend_by_tenant(month))
    }

    async fn directory(&self) -> Result<(u64, Vec<super::TenantDoc>), StoreError> {
        let inner = self.lock();
        Ok((inner.dir_version, inner.directory.values().cloned().collect()))
    }

    async fn directory_version(&self) -> Result<u64, StoreError> {
        Ok(self.lock().dir_version)
    }

    async fn directory_put(
        &self,
        id: &str,
        expect: u64,
        doc: Option<&crate::policy::keys::ApiTenant>,
    ) -> Result<bool, StoreError> {
        let _one_at_a_time = self.dir_writes.lock().await;
        let (current, version) = {
            let inner = self.lock();
            (inner.directory.get(id).map_or(0, |d| d.rev), inner.dir_version)
        };
        if current != expect {
            return Ok(false);
        }
        let next = doc.map(|t| super::TenantDoc { rev: current + 1, tenant: t.clone() });
        if self.db.is_some() {
            let json = doc.map(serde_json::to_string).transpose().map_err(|e| StoreError(e.to_string()))?;
            let (id, rev) = (id.to_string(), current + 1);
            self.with_db(move |c| {
                match &json {
                    Some(j) => exec(c, "INSERT INTO api_tenants (id, rev, doc) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO UPDATE SET rev = ?2, doc = ?3", params![id, rev as i64, j])?,
                    None => exec(c, "DELETE FROM api_tenants WHERE id = ?1", [&id])?,
                };
                exec(c, "INSERT INTO directory_version (k, version) VALUES (0, ?1) ON CONFLICT (k) DO UPDATE SET version = ?1", [(version + 1) as i64])
            })
            .await?;
        }
        let mut inner = self.lock();
        match next {
            Some(d) => inner.directory.insert(id.to_string(), d),
            None => inner.directory.remove(id),
        };
        inner.dir_version = version + 1;
        Ok(true)
    }

    async fn alerts_marked(&self, keys: &[String]) -> Result<Vec<bool>, StoreError> {
        let inner = self.lock();
        Ok(keys.iter().map(|k| inner.alerts_sent.contains(k)).collect())
    }

    async fn alert_once(&self, key: &str) -> Result<bool, StoreError> {
        let _one_at_a_time = self.dir_writes.lock().await;
        if self.lock().alerts_sent.contains(key) {
            return Ok(false);
        }
        let k = key.to_string();
        self.with_db(move |c| {
            exec(
                c,
                "INSERT OR IGNORE INTO alerts_sent (key, at_ms) VALUES (?1, ?2)",
                params![k, super::now_ms() as i64],
            )
        })
        .await?;
        Ok(self.lock().alerts_sent.insert(key.to_string()))
    }

    async fn alert_rearm(&self, key: &str) -> Result<(), StoreError> {
        if !self.lock().alerts_sent.contains(key) {
            return Ok(());
        }
        let k = key.to_string();
        self.with_db(move |c| exec(c, "DELETE FROM alerts_sent WHERE key = ?1", [k])).await?;
        self.lock().alerts_sent.remove(key);
        Ok(())
    }

    async fn audit_push(&self, line: &str) -> Result<(), StoreError> {
        if self.db.is_none() {
            let mut inner = self.lock();
            inner.audit.push_front(line.to_string());
            inner.audit.truncate(super::AUDIT_KEEP);
            return Ok(());
        }
        let line = line.to_string();
        self.with_db(move |c| {
            exec(c, "INSERT INTO audit (line) VALUES (?1)", [&line])?;
            exec(c, "DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?1", [super::AUDIT_KEEP as i64])
        })
        .await
        .map(|_| ())
    }

    async fn audit_latest(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        if self.db.is_none() {
            return Ok(self.lock().audit.iter().take(limit).cloned().collect());
        }
        let rows = self
            .with_db(move |c| {
                let mut stmt = c.prepare_cached("SELECT line FROM audit ORDER BY seq DESC LIMIT ?1")?;
                let rows = stmt.query_map([limit as i64], |r| r.get::<_, String>(0))?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(rows.unwrap_or_default())
    }

    async fn keys_touch(&self, used: &[(String, u64)]) -> Result<(), StoreError> {
        {
            let mut inner = self.lock();
            for (k, ms) in used {
                let e = inner.last_used.entry(k.clone()).or_default();
                *e = (*e).max(*ms);
            }
        }
        if self.db.is_none() || used.is_empty() {
            return Ok(());
        }
        let used = used.to_vec();
        self.with_db(move |c| {
            for (k, ms) in &used {
                exec(c, "INSERT INTO key_last_used (key_id, ms) VALUES (?1, ?2) ON CONFLICT (key_id) DO UPDATE SET ms = MAX(ms, ?2)", params![k, *ms as i64])?;
            }
            Ok(())
        })
        .await
        .map(|_| ())
    }

    async fn keys_last_used(&self) -> Result<HashMap<String, u64>, StoreError> {
        Ok(self.lock().last_used.clone())
    }

    async fn shared_secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        if let Some(s) = self.lock().secrets.get(name) {
            return Ok(*s);
        }
        let (n, fresh) = (name.to_string(), super::random_secret_hex());
        let stored = self
            .with_db(move |c| {
                exec(c, "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)", params![n, fresh])?;
                c.query_row("SELECT value FROM secrets WHERE name = ?1", [&n], |r| r.get::<_, String>(0))
            })
            .await?;
        let secret = match stored {
            Some(text) => super::secret_from_hex(&text)?,
            None => rand::random::<[u8; 32]>(),
        };
        Ok(*self.lock().secrets.entry(name.to_string()).or_insert(secret))
    }

    async fn session_end(&self, id: &str, until_ms: u64) -> Result<(), StoreError> {
        let (i, now) = (id.to_string(), super::now_ms() as i64);
        self.with_db(move |c| {
            exec(c, "DELETE FROM ended_sessions WHERE until_ms < ?1", [now])?;
            exec(c, "INSERT OR REPLACE INTO ended_sessions (id, until_ms) VALUES (?1, ?2)", params![i, until_ms as i64])
        })
        .await?;
        let mut inner = self.lock();
        let now = super::now_ms();
        inner.ended_sessions.retain(|_, until| *until > now);
        inner.ended_sessions.insert(id.to_string(), until_ms);
        Ok(())
    }

    async fn session_ended(&self, id: &str) -> Result<bool, StoreError> {
        if self.lock().ended_sessions.contains_key(id) {
            return Ok(true);
        }
        let i = id.to_string();
        Ok(self
            .with_db(move |c| {
                c.query_row("SELECT COUNT(*) FROM ended_sessions WHERE id = ?1", [&i], |r| r.get::<_, i64>(0))
            })
            .await?
            .is_some_and(|n| n > 0))
    }
}

#[cfg(test)]
mod tests;
