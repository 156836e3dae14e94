//! The shared store: several gateway replicas on one Redis.
//!
//! Every decision that must be atomic across replicas is one Lua script: taking a hold (budget
//! and balance checked together), settling (generation record + spend + debit), applying a
//! fetched balance, refunds, idempotency claims and the GCRA rate-limit check. The arithmetic is
//! `policy::ledger`'s, in integer micro-dollars (exact in Lua's doubles below 2^53).
//!
//! When Redis is down every call fails within `timeout`; callers fail closed for money (503) and
//! open, behind a local limiter, for rate limits. Durability of acknowledged generations is
//! Redis's: run it with `appendonly yes` and `appendfsync always` (see deploy/).
//!
//! Keys share one prefix and are built inside scripts from it, so this needs a single Redis
//! node (or Sentinel), not Redis Cluster.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncCommands, Script, Value};
use async_trait::async_trait;
use bytes::Bytes;

use super::{
    BalanceSnapshot, FetchTicket, GenerationRecord, HoldOutcome, HoldRequest, IdemClaim, Intent, OutboxMessage,
    OutboxStats, Resolution, SharedLimit, Store, StoreError, StoredResponse, UnknownOutcome, WebhookTarget,
};

/// A hold entry as the scripts store it (see `COMMON`).
#[derive(serde::Deserialize)]
struct RedisEntry {
    t: String,
    a: i64,
    st: String,
    #[serde(default)]
    f: String,
    #[serde(default)]
    pd: String,
    #[serde(default)]
    c: u64,
    #[serde(default)]
    ik: String,
    #[serde(default)]
    m: String,
}
use crate::config::RedisTarget;
use crate::policy::family::Family;
use crate::policy::ledger::{HoldTotals, Refusal};
use crate::policy::money::Usd;
use crate::policy::rate_limit::{GcraParams, Quotas};

/// Tombstones of holds released before they arrived are kept this long.
const TOMBSTONE_MS: u64 = 3_600_000;

// Shared by every script: Redis's clock (replicas agree without synchronised clocks) and the
// hold entries, kept as JSON in one hash: {t tenant, a amount µ$, st o|d|u, sq seq, exp lease
// end ms, f family, pd prompt digest, c created ms, ik idempotency key, m month}.
const COMMON: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function get_entry(p, id)
  local s = redis.call('HGET', p .. ':holds', id)
  if not s then return nil end
  return cjson.decode(s)
end
local function put_entry(p, id, e)
  redis.call('HSET', p .. ':holds', id, cjson.encode(e))
end
-- A hold leaving the open state frees its tenant's in-flight slot.
local function leave_open(p, e)
  if e.st == 'o' then redis.call('HINCRBY', p .. ':inflight', e.t, -1) end
end
local function drop_entry(p, id, e)
  leave_open(p, e)
  redis.call('HDEL', p .. ':holds', id)
  redis.call('INCRBY', p .. ':held', -e.a)
  if e.st ~= 'd' then redis.call('HINCRBY', p .. ':theld', e.t, -e.a) end
end
local function tombstone(p, id)
  redis.call('ZADD', p .. ':tombs', now_ms() + tonumber(ARGV_TOMB), id)
end
-- The daily roll-up of a tenant's month: fields `<day>|<family>|<n|c|r|f<reason>>` (day: days
-- since 1970 UTC; n generations, c charged, r refunded µ$, f failures by reason), moved in the
-- same script as the settle, refund or reassignment they count.
local function daily_add(p, tenant, month, created, family, what, by)
  local day = math.floor(tonumber(created) / 86400000)
  redis.call('HINCRBY', p .. ':daily:' .. tenant .. ':' .. month, day .. '|' .. family .. '|' .. what, by)
end
-- Records a generation if new (returns true when it was new).
local function record_gen(p, gid, tenant, family, price, created, status, month)
  local k = p .. ':gen:' .. gid
  if redis.call('EXISTS', k) == 1 then return false end
  redis.call('HSET', k, 'tenant', tenant, 'family', family, 'price', price, 'created_ms', created, 'status', status, 'month', month)
  daily_add(p, tenant, month, created, family, 'n', 1)
  daily_add(p, tenant, month, created, family, 'c', tonumber(price))
  redis.call('ZADD', p .. ':gens:' .. tenant .. ':' .. family, created, gid)
  redis.call('ZADD', p .. ':month:' .. month, created, gid)
  if status ~= 'completed' and status ~= 'failed' then redis.call('ZADD', p .. ':unfinished', created, gid) end
  return true
end
-- Turns an open or unknown entry into a debit and spend.
local function to_debit(p, id, e, charged, month)
  leave_open(p, e)
  redis.call('HINCRBY', p .. ':theld', e.t, -e.a)
  redis.call('INCRBY', p .. ':held', charged - e.a)
  e.a = charged
  e.st = 'd'
  e.sq = redis.call('INCR', p .. ':seq')
  put_entry(p, id, e)
  redis.call('HINCRBY', p .. ':spend:' .. month, e.t, charged)
end
local function idem_done(p, tenant, key, hold, body)
  if not key or key == '' then return end
  local k = p .. ':idem:' .. tenant .. ':' .. key
  if redis.call('HGET', k, 'hold') == hold then
    redis.call('HSET', k, 'state', 'done', 'status', 201, 'body', body)
    redis.call('PEXPIRE', k, ARGV_IDEM_TTL)
  end
end
local function idem_drop(p, tenant, key, hold)
  if not key or key == '' then return end
  local k = p .. ':idem:' .. tenant .. ':' .. key
  if redis.call('HGET', k, 'hold') == hold and redis.call('HGET', k, 'state') == 'running' then redis.call('DEL', k) end
end
"#;

// ARGV: prefix, id, tenant, price, budget(-1 none), reserve, lease_ms, family, prompt digest, idem key, month,
// max in flight (-1 none). The same rule, in the same order, as `Admission::admit`.
const HOLD: &str = r#"
local p, id, tenant = ARGV[1], ARGV[2], ARGV[3]
local price, budget, reserve, lease = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if redis.call('HEXISTS', p .. ':holds', id) == 1 then return {1} end
if redis.call('ZSCORE', p .. ':tombs', id) then return {4} end
local bal = redis.call('HGET', p .. ':balance', 'amount')
if not bal then return {0} end
local held = tonumber(redis.call('GET', p .. ':held') or '0')
local theld = tonumber(redis.call('HGET', p .. ':theld', tenant) or '0')
local spend = tonumber(redis.call('HGET', p .. ':spend:' .. ARGV[11], tenant) or '0')
if budget >= 0 and spend + theld + price > budget then return {2} end
if tonumber(bal) - held - reserve < price then return {3} end
local cap = tonumber(ARGV[12])
if cap >= 0 and tonumber(redis.call('HGET', p .. ':inflight', tenant) or '0') >= cap then return {5} end
local now = now_ms()
put_entry(p, id, {t = tenant, a = price, st = 'o', sq = 0, exp = now + lease, f = ARGV[8], pd = ARGV[9], c = now, ik = ARGV[10], m = ARGV[11]})
redis.call('INCRBY', p .. ':held', price)
redis.call('HINCRBY', p .. ':theld', tenant, price)
redis.call('HINCRBY', p .. ':inflight', tenant, 1)
return {1}
"#;

// ARGV: prefix, hold, charged, gid, tenant, family, created, status, month
const SETTLE: &str = r#"
local p, id, charged = ARGV[1], ARGV[2], tonumber(ARGV[3])
local new = record_gen(p, ARGV[4], ARGV[5], ARGV[6], charged, ARGV[7], ARGV[8], ARGV[9])
local e = get_entry(p, id)
if new then
  if e and e.st ~= 'd' then
    to_debit(p, id, e, charged, ARGV[9])
  else
    redis.call('HINCRBY', p .. ':spend:' .. ARGV[9], ARGV[5], charged)
  end
elseif e and e.st ~= 'd' then
  drop_entry(p, id, e)
end
return 1
"#;

const RELEASE: &str = r#"
local p, id = ARGV[1], ARGV[2]
local e = get_entry(p, id)
tombstone(p, id)
if not e or e.st == 'd' then return 0 end
drop_entry(p, id, e)
return 1
"#;

const UNKNOWN: &str = r#"
local p, id = ARGV[1], ARGV[2]
local e = get_entry(p, id)
if not e or e.st ~= 'o' then return 0 end
leave_open(p, e)
e.st = 'u'
put_entry(p, id, e)
return 1
"#;

const EXPIRE: &str = r#"
local p = ARGV[1]
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', p .. ':tombs', '-inf', now)
local n = 0
local all = redis.call('HGETALL', p .. ':holds')
for i = 1, #all, 2 do
  local e = cjson.decode(all[i + 1])
  if e.st == 'o' and e.exp <= now then
    leave_open(p, e)
    e.st = 'u'
    put_entry(p, all[i], e)
    n = n + 1
  end
end
return n
"#;

// ARGV: prefix, hold, kind (created|none), gid, family, price, created, status, month, reply
const RESOLVE: &str = r#"
local p, id = ARGV[1], ARGV[2]
local e = get_entry(p, id)
if not e or e.st ~= 'u' then return 0 end
if ARGV[3] == 'created' then
  if record_gen(p, ARGV[4], e.t, ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9]) then
    to_debit(p, id, e, tonumber(ARGV[6]), ARGV[9])
  else
    drop_entry(p, id, e)
  end
  idem_done(p, e.t, e.ik, id, ARGV[10])
else
  drop_entry(p, id, e)
  idem_drop(p, e.t, e.ik, id)
end
return 1
"#;

// ARGV: prefix, amount, mark, ticket
const APPLY_BALANCE: &str = r#"
local p, amount, mark, ticket = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local stored = tonumber(redis.call('HGET', p .. ':balance', 'ticket') or '0')
if ticket < stored then return 0 end
redis.call('HSET', p .. ':balance', 'amount', amount, 'fetched_ms', now_ms(), 'ticket', ticket)
local all = redis.call('HGETALL', p .. ':holds')
for i = 1, #all, 2 do
  local e = cjson.decode(all[i + 1])
  if e.st == 'd' and e.sq <= mark then drop_entry(p, all[i], e) end
end
return 1
"#;

const BEGIN_FETCH: &str = r#"
local p = ARGV[1]
local ticket = redis.call('INCR', p .. ':fetch_ticket')
return {tonumber(redis.call('GET', p .. ':seq') or '0'), ticket}
"#;

// ARGV: prefix, tenant, month. The numbers `HOLD` decides on, for a quote.
const ADMISSION: &str = r#"
local p, tenant = ARGV[1], ARGV[2]
local bal = redis.call('HGET', p .. ':balance', 'amount')
if not bal then return {} end
return {bal, redis.call('GET', p .. ':held') or '0', redis.call('HGET', p .. ':theld', tenant) or '0',
  redis.call('HGET', p .. ':spend:' .. ARGV[3], tenant) or '0', redis.call('HGET', p .. ':inflight', tenant) or '0'}
"#;

const SPENDABLE: &str = r#"
local p, tenant, budget, reserve = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local bal = redis.call('HGET', p .. ':balance', 'amount')
if not bal then return {0} end
local held = tonumber(redis.call('GET', p .. ':held') or '0')
local theld = tonumber(redis.call('HGET', p .. ':theld', tenant) or '0')
local spend = tonumber(redis.call('HGET', p .. ':spend:' .. ARGV[5], tenant) or '0')
local left = tonumber(bal) - held - reserve
if budget >= 0 then left = math.min(left, budget - spend - theld) end
if left < 0 then left = 0 end
return {1, string.format('%d', left)}
"#;

// ARGV: prefix, gid, status, failure reason, failure message (the last two for `failed`)
const UPDATE_STATUS: &str = r#"
local p, gid, status = ARGV[1], ARGV[2], ARGV[3]
local k = p .. ':gen:' .. gid
local old = redis.call('HGET', k, 'status')
if (not old) or old == status or old == 'failed' then return 0 end
redis.call('HSET', k, 'status', status)
if status == 'completed' or status == 'failed' then redis.call('ZREM', p .. ':unfinished', gid) end
if status == 'failed' then
  local tenant, month, price, family, created = unpack(redis.call('HMGET', k, 'tenant', 'month', 'price', 'family', 'created_ms'))
  redis.call('HSET', k, 'reason', ARGV[4], 'error', ARGV[5])
  daily_add(p, tenant, month, created, family, 'r', tonumber(price))
  daily_add(p, tenant, month, created, family, 'f' .. ARGV[4], 1)
  local sk = p .. ':spend:' .. month
  local s = tonumber(redis.call('HGET', sk, tenant) or '0') - tonumber(price)
  if s < 0 then s = 0 end
  redis.call('HSET', sk, tenant, s)
  redis.call('HINCRBY', p .. ':refunded:' .. month, tenant, tonumber(price))
end
return 1
"#;

// ARGV: prefix, gid, from, to. Moves a generation and its charge (or refund) to another owner.
const REASSIGN: &str = r#"
local p, gid, from, to = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local k = p .. ':gen:' .. gid
local owner, family, created, month, price, status, reason = unpack(redis.call('HMGET', k, 'tenant', 'family', 'created_ms', 'month', 'price', 'status', 'reason'))
if owner ~= from then return 0 end
local moved = {n = 1, c = tonumber(price)}
if status == 'failed' then
  moved.r = tonumber(price)
  moved['f' .. (reason or 'other')] = 1
end
for what, by in pairs(moved) do
  daily_add(p, from, month, created, family, what, -by)
  daily_add(p, to, month, created, family, what, by)
end
redis.call('HSET', k, 'tenant', to)
redis.call('ZREM', p .. ':gens:' .. from .. ':' .. family, gid)
redis.call('ZADD', p .. ':gens:' .. to .. ':' .. family, created, gid)
local which = 'spend'
if status == 'failed' then which = 'refunded' end
local mk = p .. ':' .. which .. ':' .. month
local left = tonumber(redis.call('HGET', mk, from) or '0') - tonumber(price)
if left < 0 then left = 0 end
redis.call('HSET', mk, from, left)
redis.call('HINCRBY', mk, to, tonumber(price))
return 1
"#;

// KEYS: idem key. ARGV: prefix, digest, hold, stale_ms
const IDEM_CLAIM: &str = r#"
local k, p, digest, hold, stale = KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
local d = redis.call('HGET', k, 'digest')
if d then
  if d ~= digest then return {'mismatch'} end
  local state = redis.call('HGET', k, 'state')
  if state == 'done' then
    local v = redis.call('HMGET', k, 'status', 'body')
    return {'done', v[1], v[2]}
  end
  local e = get_entry(p, redis.call('HGET', k, 'hold'))
  if e and e.st == 'u' then return {'unresolved'} end
  if e then return {'running'} end
  if now - tonumber(redis.call('HGET', k, 'since') or '0') < stale then return {'running'} end
end
redis.call('DEL', k)
redis.call('HSET', k, 'digest', digest, 'state', 'running', 'hold', hold, 'since', now)
redis.call('PEXPIRE', k, ARGV_IDEM_TTL)
return {'fresh'}
"#;

// ARGV[1], when given: only the claim of this hold.
const IDEM_ABORT: &str = r#"
if redis.call('HGET', KEYS[1], 'state') == 'running' and (not ARGV[1] or redis.call('HGET', KEYS[1], 'hold') == ARGV[1]) then redis.call('DEL', KEYS[1]) end
return 1
"#;

// Outbox: p:ob:{id} hash (tenant, url, body, attempts, created_ms); p:ob:due zset by next ms;
// p:ob:dead zset by created ms. ARGV: prefix, limit, lease_ms.
const OUTBOX_CLAIM: &str = r#"
local p, limit, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', p .. ':ob:due', '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', p .. ':ob:due', now + lease, id)
  local v = redis.call('HMGET', p .. ':ob:' .. id, 'tenant', 'url', 'body', 'attempts', 'created_ms')
  if v[1] then table.insert(out, {id, v[1], v[2], v[3], v[4], v[5]}) else redis.call('ZREM', p .. ':ob:due', id) end
end
return out
"#;

const OUTBOX_PUSH: &str = r#"
local p, id = ARGV[1], ARGV[2]
if redis.call('EXISTS', p .. ':ob:' .. id) == 1 then return 0 end
redis.call('HSET', p .. ':ob:' .. id, 'tenant', ARGV[3], 'url', ARGV[4], 'body', ARGV[5], 'attempts', 0, 'created_ms', ARGV[6])
redis.call('ZADD', p .. ':ob:due', now_ms(), id)
return 1
"#;

const OUTBOX_REDELIVER: &str = r#"
local p, tenant = ARGV[1], ARGV[2]
local now = now_ms()
local n = 0
for _, id in ipairs(redis.call('ZRANGE', p .. ':ob:dead', 0, -1)) do
  if tenant == '' or redis.call('HGET', p .. ':ob:' .. id, 'tenant') == tenant then
    redis.call('ZREM', p .. ':ob:dead', id)
    redis.call('HSET', p .. ':ob:' .. id, 'attempts', 0)
    redis.call('ZADD', p .. ':ob:due', now, id)
    n = n + 1
  end
end
return n
"#;

const LEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// GCRA on Redis's clock (TIME), so replicas agree without synchronised clocks.
/// ARGV: emission interval (µs), burst. Returns {allowed, remaining, retry_after_µs, reset_µs}.
const GCRA: &str = r#"
local emission, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + emission
local window = emission * burst
if new_tat - now > window then
  return {0, 0, new_tat - now - window, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = math.floor((window - (new_tat - now)) / emission)
return {1, remaining, 0, new_tat - now}
"#;

/// Gives one cell back: the arrival time moves back one interval, never before now.
/// ARGV: emission interval (µs).
const GCRA_GIVE_BACK: &str = r#"
local emission = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat - emission > now then
  redis.call('SET', KEYS[1], string.format('%d', tat - emission), 'PX', math.ceil((tat - emission - now) / 1000) + 1)
else
  redis.call('DEL', KEYS[1])
end
return 1
"#;

/// The channel (under the prefix) a directory write publishes its new version on.
const DIR_CHANNEL: &str = "dir:changed";
/// Between a lost directory subscription and the next attempt.
const RESUBSCRIBE_EVERY: Duration = Duration::from_millis(250);

/// A conditional write of one API tenant's document: `rev|json` in the `dir` hash, checked
/// against the expected revision; moves the version every replica polls and publishes it on
/// `DIR_CHANNEL` (ARGV[4]).
const DIR_PUT: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local rev = 0
if cur then rev = tonumber(string.match(cur, '^(%d+)|')) end
if rev ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], (rev + 1) .. '|' .. ARGV[3])
end
redis.call('PUBLISH', ARGV[4], redis.call('INCR', KEYS[2]))
return 1
"#;

/// Scripts compiled once (their SHA1 is computed at construction).
struct Scripts {
    dir_put: Script,
    admission: Script,
    hold: Script,
    settle: Script,
    release: Script,
    unknown: Script,
    expire: Script,
    resolve: Script,
    begin_fetch: Script,
    apply_balance: Script,
    lease: Script,
    outbox_claim: Script,
    outbox_push: Script,
    outbox_redeliver: Script,
    spendable: Script,
    update_status: Script,
    reassign: Script,
    idem_claim: Script,
    idem_abort: Script,
    gcra: Script,
    gcra_give_back: Script,
}

/// `tollgate store recover` against the configured Redis.
pub(crate) async fn recover(target: &RedisTarget, timeout: Duration, prefix: &str) -> Result<String, StoreError> {
    RedisStore::open(target, timeout, prefix, 0).await?.recover_epoch().await
}

/// Redis-backed store shared by replicas.
pub struct RedisStore {
    link: Arc<link::Link>,
    /// The money writes this replica acknowledged lately, written again to a new primary.
    journal: Arc<std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, Rewrite)>>>,
    prefix: String,
    timeout: Duration,
    /// `min_replica_acks`: replicas that must have a money write before it counts as done.
    acks: u32,
    scripts: Arc<Scripts>,
    /// Woken when a replica changes the directory (`follow_directory`).
    dir_changed: Arc<tokio::sync::Notify>,
    /// Has Redis forgotten our data? Every call is refused while it has.
    epoch: Arc<epoch::Epoch>,
}

/// An acknowledged money write that is safe to apply twice (the settle script records a
/// generation once; a finished Idempotency-Key is the same hash again).
#[derive(Clone)]
enum Rewrite {
    Settle(Vec<String>),
    IdemFinish {
        key: String,
        digest: String,
        status: u16,
        body: Vec<u8>,
    },
    /// A claim given up, by the hold that made it (never a later claim of the same key).
    IdemAbort {
        key: String,
        hold: String,
    },
}

/// Acknowledged writes are kept this long (a failover takes seconds) and at most this many.
const JOURNAL_KEEP: Duration = Duration::from_secs(60);
const JOURNAL_MAX: usize = 100_000;
/// Passes over the writes that could not be written again yet (250 ms apart).
const REWRITE_ROUNDS: usize = 40;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("redis: {e}"))
}

fn ceil_secs_from_us(us: i64) -> u64 {
    (us.max(0) as u64).div_ceil(1_000_000)
}

// === impl RedisStore ===

impl RedisStore {
    /// Connects to one address (failing fast if Redis is unreachable at start-up); later
    /// outages are survived by dialling again. The tests' shorthand for `open`.
    #[cfg(test)]
    pub async fn connect(url: &str, timeout: Duration, prefix: &str) -> Result<Self, StoreError> {
        Self::open(&RedisTarget::Url(url.to_string()), timeout, prefix, 0).await
    }

    /// Connects to the primary at `target`, with money writes waiting for `acks` replicas.
    pub async fn open(target: &RedisTarget, timeout: Duration, prefix: &str, acks: u32) -> Result<Self, StoreError> {
        let (source, shown) = match target {
            RedisTarget::Url(url) => {
                (link::Source::Url(::redis::Client::open(url.as_str()).map_err(err)?), crate::config::redact_url(url))
            }
            RedisTarget::Sentinel { sentinels, master_name, db, password } => (
                link::Source::sentinel(sentinels, master_name, *db, password.as_ref().map(|p| p.expose().to_string()))
                    .map_err(err)?,
                format!("primary {master_name:?} of sentinels {}", sentinels.join(", ")),
            ),
        };
        let link = Arc::new(link::Link::new(source, timeout));
        link.watch();
        // At start-up a few dials (a sentinel may still be electing), then give up clearly.
        let deadline = tokio::time::Instant::now() + timeout * 4;
        loop {
            match link.get().await {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(err(format!("no primary at {shown} within {:?}: {e}", timeout * 4)))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(120)).await,
            }
        }
        {
            let (_, mut c) = link.get().await.map_err(err)?;
            epoch::check_server(&mut c).await?;
        }
        let store_epoch = Arc::new(epoch::Epoch::default());
        {
            let (_, mut c) = link.get().await.map_err(err)?;
            store_epoch.start(&mut c, prefix).await?;
        }
        store_epoch.watch(&link, prefix.to_string());
        let common = COMMON
            .replace("ARGV_TOMB", &TOMBSTONE_MS.to_string())
            .replace("ARGV_IDEM_TTL", &super::IDEM_RETENTION_MS.to_string());
        let with_common = |body: &str| Script::new(&format!("{common}{body}"));
        let scripts = Scripts {
            dir_put: Script::new(DIR_PUT),
            admission: Script::new(ADMISSION),
            hold: with_common(HOLD),
            settle: with_common(SETTLE),
            release: with_common(RELEASE),
            unknown: with_common(UNKNOWN),
            expire: with_common(EXPIRE),
            resolve: with_common(RESOLVE),
            begin_fetch: Script::new(BEGIN_FETCH),
            apply_balance: with_common(APPLY_BALANCE),
            lease: Script::new(LEASE),
            outbox_claim: with_common(OUTBOX_CLAIM),
            outbox_push: with_common(OUTBOX_PUSH),
            outbox_redeliver: with_common(OUTBOX_REDELIVER),
            spendable: Script::new(SPENDABLE),
            update_status: with_common(UPDATE_STATUS),
            reassign: with_common(REASSIGN),
            idem_claim: with_common(&IDEM_CLAIM.replace("ARGV_IDEM_TTL", &super::IDEM_RETENTION_MS.to_string())),
            idem_abort: Script::new(IDEM_ABORT),
            gcra: Script::new(GCRA),
            gcra_give_back: Script::new(GCRA_GIVE_BACK),
        };
        let store = RedisStore {
            link,
            journal: Default::default(),
            prefix: prefix.to_string(),
            timeout,
            acks,
            scripts: Arc::new(scripts),
            dir_changed: Default::default(),
            epoch: store_epoch,
        };
        store.rewrite_on_move();
        store.follow_directory();
        Ok(store)
    }

    /// After the store forgot its data: says what was lost, writes a new epoch.
    async fn recover_epoch(&self) -> Result<String, StoreError> {
        let (_, mut c) = self.link.get().await.map_err(err)?;
        epoch::recover(&mut c, &self.prefix).await
    }

    /// Every directory write publishes the new version on `DIR_CHANNEL`; a subscription of its
    /// own to the primary wakes this replica's directory follower at once, instead of at its
    /// next version poll (which stays as the backstop while the subscription is down). Each
    /// (re)subscription wakes it too, for anything published while it was not listening.
    fn follow_directory(&self) {
        let (link, changed, channel, timeout) =
            (Arc::downgrade(&self.link), self.dir_changed.clone(), self.key(DIR_CHANNEL), self.timeout);
        tokio::spawn(async move {
            use futures_util::StreamExt;
            loop {
                let Some(strong) = link.upgrade() else { return };
                let mut moves = strong.moves();
                let subscribed = tokio::time::timeout(timeout, async {
                    let mut pubsub = strong.primary_client().await?.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, ::redis::RedisError>(pubsub)
                })
                .await;
                drop(strong);
                match subscribed {
                    Ok(Ok(pubsub)) => {
                        changed.notify_one();
                        let mut messages = pubsub.into_on_message();
                        loop {
                            tokio::select! {
                                m = messages.next() => match m {
                                    Some(_) => changed.notify_one(),
                                    None => break,
                                },
                                // A new primary: subscribe there.
                                _ = moves.changed() => break,
                                _ = tokio::time::sleep(Duration::from_secs(1)) => if link.strong_count() == 0 { return },
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "directory subscription failed; the version poll covers it")
                    }
                    Err(_) => tracing::debug!("directory subscription timed out; the version poll covers it"),
                }
                tokio::time::sleep(RESUBSCRIBE_EVERY).await;
            }
        });
    }

    /// Replication is asynchronous: a primary that dies, or is demoted by a planned failover
    /// while it still takes writes, can take writes already answered with them. So when the
    /// link finds another primary, the settles and finished Idempotency-Keys acknowledged in
    /// the last `JOURNAL_KEEP` are written to it again; both are idempotent, so those that did
    /// arrive change nothing. (This covers this replica's own writes; `min_replica_acks` covers
    /// a replica that dies with its primary.)
    fn rewrite_on_move(&self) {
        let mut moves = self.link.moves();
        let (link, journal, scripts, timeout) =
            (Arc::downgrade(&self.link), self.journal.clone(), self.scripts.clone(), self.timeout);
        tokio::spawn(async move {
            while moves.changed().await.is_ok() {
                let Some(link) = link.upgrade() else { return };
                let pending: Vec<Rewrite> = {
                    let mut j = journal.lock().unwrap();
                    while j.front().is_some_and(|(at, _)| at.elapsed() > JOURNAL_KEEP) {
                        j.pop_front();
                    }
                    j.iter().map(|(_, w)| w.clone()).collect()
                };
                // Each write is tried again for a while: the new primary may still be settling in.
                let (mut done, mut left) = (0usize, pending);
                for round in 0..REWRITE_ROUNDS {
                    let mut failed = Vec::new();
                    for w in left {
                        if apply(&link, &scripts, timeout, &w).await {
                            done += 1;
                        } else {
                            failed.push(w);
                        }
                    }
                    left = failed;
                    if left.is_empty() || round + 1 == REWRITE_ROUNDS {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                let failed = left.len();
                if failed > 0 {
                    tracing::error!(failed, "a new Redis primary: some money writes of the last minute could not be written to it again (the store is still unavailable)");
                }
                tracing::warn!(
                    rewritten = done,
                    "a new Redis primary: the money writes of the last minute were written to it again"
                );
            }
        });
    }

    /// Journals a write connection `n` acknowledged, and writes it again now if that
    /// connection's primary has been replaced meanwhile (an in-flight request on the old
    /// connection), since the old one's writes may be lost. Journalled before the check: either
    /// a later move's rewrite sees it, or the check does.
    async fn acknowledged(&self, w: Rewrite, n: u64) -> Result<(), StoreError> {
        self.journal(w.clone());
        if self.link.went_to_an_old_primary(n) {
            match &w {
                // Again as a money write, replicas and all.
                Rewrite::Settle(args) => self.money_script::<i64>(|s| &s.settle, &[], args).await.map(|_| ())?,
                _ => {
                    let scripts = self.scripts.clone();
                    self.run(|mut c| async move { invoke(&scripts, &w, &mut c).await }).await?
                }
            }
        }
        Ok(())
    }

    fn journal(&self, w: Rewrite) {
        let mut j = self.journal.lock().unwrap();
        while j.len() >= JOURNAL_MAX || j.front().is_some_and(|(at, _)| at.elapsed() > JOURNAL_KEEP) {
            j.pop_front();
        }
        j.push_back((std::time::Instant::now(), w));
    }

    /// Hold entries in one state (`o` open, `u` unknown), oldest first.
    async fn holds_in(&self, state: &str) -> Result<Vec<UnknownOutcome>, StoreError> {
        let hk = self.key("holds");
        let all: std::collections::HashMap<String, String> =
            self.run(|mut c| async move { c.hgetall(hk).await }).await?;
        let mut out: Vec<UnknownOutcome> = all
            .into_iter()
            .filter_map(|(id, json)| {
                let e: RedisEntry = serde_json::from_str(&json).ok()?;
                (e.st == state).then(|| UnknownOutcome {
                    hold: id,
                    tenant: Arc::from(e.t.as_str()),
                    price: Usd::from_micros(e.a),
                    intent: Intent {
                        family: e.f,
                        fingerprint: e.pd,
                        created_ms: e.c,
                        idem_key: Some(e.ik).filter(|k| !k.is_empty()),
                        month: e.m,
                    },
                })
            })
            .collect();
        out.sort_by_key(|u| u.intent.created_ms);
        Ok(out)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// One command per key, sent as one pipeline (one round trip), answers in key order.
    async fn each<T: ::redis::FromRedisValue>(
        &self,
        keys: Vec<String>,
        cmd: impl Fn(&mut ::redis::Pipeline, &str),
    ) -> Result<Vec<T>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.run(|mut c| async move {
            let mut pipe = ::redis::pipe();
            for k in &keys {
                cmd(&mut pipe, k);
            }
            pipe.query_async(&mut c).await
        })
        .await
    }

    /// Runs one Redis operation with the store's deadline; an error that says the primary is
    /// gone makes the next operation dial again.
    async fn run<T, F>(&self, f: impl FnOnce(MultiplexedConnection) -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = ::redis::RedisResult<T>>,
    {
        self.run_on(self.timeout, f).await.map(|(v, _)| v)
    }

    /// As `run`, within `within`, also saying which connection answered.
    async fn run_on<T, F>(
        &self,
        within: Duration,
        f: impl FnOnce(MultiplexedConnection) -> F,
    ) -> Result<(T, u64), StoreError>
    where
        F: std::future::Future<Output = ::redis::RedisResult<T>>,
    {
        if let Some(why) = self.epoch.lost() {
            return Err(StoreError(why));
        }
        let deadline = tokio::time::Instant::now() + within;
        let (n, conn) = match tokio::time::timeout_at(deadline, self.link.get()).await {
            Ok(r) => r.map_err(err)?,
            Err(_) => return Err(err(format!("timed out after {within:?} waiting for a connection"))),
        };
        match tokio::time::timeout_at(deadline, f(conn)).await {
            Ok(Ok(v)) => Ok((v, n)),
            Ok(Err(e)) => {
                if link::is_fatal(&e) {
                    self.link.broken(n);
                }
                Err(err(e))
            }
            Err(_) => {
                self.link.broken(n);
                Err(err(format!("timed out after {within:?}")))
            }
        }
    }

    async fn script<T: ::redis::FromRedisValue>(
        &self,
        pick: fn(&Scripts) -> &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        self.script_on(pick, keys, args, false).await.map(|(v, _)| v)
    }

    /// A money write: with `min_replica_acks`, done only once that many replicas have it
    /// (`WAIT` on the same connection, bounded by the timeout). Falling short is an error, and
    /// each caller's error path decides: a hold or claim fails closed, a record is retried.
    async fn money_script<T: ::redis::FromRedisValue>(
        &self,
        pick: fn(&Scripts) -> &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        self.script_on(pick, keys, args, true).await.map(|(v, _)| v)
    }

    async fn script_on<T: ::redis::FromRedisValue>(
        &self,
        pick: fn(&Scripts) -> &Script,
        keys: &[String],
        args: &[String],
        money: bool,
    ) -> Result<(T, u64), StoreError> {
        let scripts = self.scripts.clone();
        let acks = if money { self.acks } else { 0 };
        let wait_ms = self.timeout.as_millis() as u64;
        // The WAIT has its own bound inside the deadline.
        let within = if acks > 0 { self.timeout * 2 } else { self.timeout };
        let (out, n): ((T, i64), u64) = self
            .run_on(within, |mut c| async move {
                let s = pick(&scripts);
                let mut inv = s.prepare_invoke();
                for k in keys {
                    inv.key(k);
                }
                for a in args {
                    inv.arg(a);
                }
                // Loads the script again on NOSCRIPT (a new primary starts with none).
                let v: T = inv.invoke_async(&mut c).await?;
                let got = if acks > 0 {
                    ::redis::cmd("WAIT").arg(acks).arg(wait_ms).query_async::<i64>(&mut c).await?
                } else {
                    0
                };
                Ok((v, got))
            })
            .await?;
        if acks > 0 && out.1 < acks as i64 {
            return Err(err(format!("only {} of {acks} replicas acknowledged within {wait_ms} ms", out.1)));
        }
        Ok((out.0, n))
    }

    /// One GCRA check shared by all replicas.
    pub async fn rate_limit(&self, tenant: &str, kind: &str, params: GcraParams) -> Result<SharedLimit, StoreError> {
        let emission_us = (params.emission_ns / 1000).max(1);
        let key = self.key(&format!("rl:{tenant}:{kind}"));
        let (allowed, remaining, retry_us, reset_us): (i64, i64, i64, i64) =
            self.script(|s| &s.gcra, &[key], &[emission_us.to_string(), params.burst.to_string()]).await?;
        let quotas =
            Quotas { limit: params.burst, remaining: remaining.max(0) as u32, reset_secs: ceil_secs_from_us(reset_us) };
        Ok(if allowed == 1 {
            SharedLimit::Allowed(quotas)
        } else {
            SharedLimit::Refused { retry_after_secs: ceil_secs_from_us(retry_us).max(1), quotas }
        })
    }

    /// Returns one cell of a shared GCRA limit.
    pub async fn rate_limit_give_back(&self, tenant: &str, kind: &str, params: GcraParams) -> Result<(), StoreError> {
        let emission_us = (params.emission_ns / 1000).max(1);
        let key = self.key(&format!("rl:{tenant}:{kind}"));
        let _: i64 = self.script(|s| &s.gcra_give_back, &[key], &[emission_us.to_string()]).await?;
        Ok(())
    }

    fn parse_record(id: &str, fields: &std::collections::HashMap<String, String>) -> Option<GenerationRecord> {
        Some(GenerationRecord {
            id: id.to_string(),
            tenant: Arc::from(fields.get("tenant")?.as_str()),
            family: Family::named(fields.get("family")?),
            price: Usd::from_micros(fields.get("price")?.parse().ok()?),
            created_ms: fields.get("created_ms")?.parse().ok()?,
            status: fields.get("status")?.clone(),
        })
    }
}

/// Sends one journalled write on `c`.
async fn invoke(scripts: &Scripts, w: &Rewrite, c: &mut MultiplexedConnection) -> ::redis::RedisResult<()> {
    match w {
        Rewrite::Settle(args) => {
            let mut inv = scripts.settle.prepare_invoke();
            for a in args {
                inv.arg(a);
            }
            inv.invoke_async::<i64>(c).await.map(|_| ())
        }
        Rewrite::IdemFinish { key, digest, status, body } => {
            idem_finish_cmd(key, digest, *status, body).query_async::<()>(c).await
        }
        Rewrite::IdemAbort { key, hold } => {
            scripts.idem_abort.key(key).arg(hold).invoke_async::<i64>(c).await.map(|_| ())
        }
    }
}

/// Writes one journalled write again (from a background task); did it land?
async fn apply(link: &link::Link, scripts: &Scripts, timeout: Duration, w: &Rewrite) -> bool {
    let wrote = tokio::time::timeout(timeout * 4, async {
        let (_, mut c) = link.get().await?;
        invoke(scripts, w, &mut c).await
    })
    .await;
    matches!(wrote, Ok(Ok(())))
}

/// A finished Idempotency-Key: its stored answer, kept for the retention period.
fn idem_finish_cmd(k: &str, digest: &str, status: u16, body: &[u8]) -> ::redis::Pipeline {
    let mut p = ::redis::pipe();
    p.atomic()
        .hset_multiple(
            k,
            &[
                ("digest", digest.as_bytes().to_vec()),
                ("state", b"done".to_vec()),
                ("status", status.to_string().into_bytes()),
                ("body", body.to_vec()),
            ],
        )
        .pexpire(k, super::IDEM_RETENTION_MS as i64);
    p
}

fn budget_arg(b: Option<Usd>) -> String {
    b.map(|b| b.micros().to_string()).unwrap_or_else(|| "-1".into())
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A write, not PING: a Redis that answers but refuses writes (maxmemory, a failed
        // snapshot, a read-only replica) cannot take money either.
        // With `min_replica_acks`, ready only while that many replicas take it too: otherwise
        // every paid request is refused (after a failover left too few replicas).
        let key = self.key("ready_probe");
        let (acks, wait_ms) = (self.acks, self.timeout.as_millis() as u64);
        let got = self
            .run_on(self.timeout * 2, |mut c| async move {
                ::redis::cmd("SET")
                    .arg(key)
                    .arg(super::now_ms())
                    .arg("PX")
                    .arg(60_000)
                    .query_async::<String>(&mut c)
                    .await?;
                if acks == 0 {
                    return Ok(0);
                }
                ::redis::cmd("WAIT").arg(acks).arg(wait_ms).query_async::<i64>(&mut c).await
            })
            .await?
            .0;
        if acks > 0 && got < acks as i64 {
            return Err(err(format!("only {got} of {acks} replicas acknowledged a write within {wait_ms} ms")));
        }
        Ok(())
    }

    async fn balance(&self) -> Result<Option<BalanceSnapshot>, StoreError> {
        let key = self.key("balance");
        let (amount, fetched): (Option<i64>, Option<u64>) =
            self.run(|mut c| async move { c.hget(key, &["amount", "fetched_ms"]).await }).await?;
        Ok(match (amount, fetched) {
            (Some(a), Some(f)) => Some(BalanceSnapshot { amount: Usd::from_micros(a), fetched_ms: f }),
            _ => None,
        })
    }

    async fn begin_balance_fetch(&self) -> Result<FetchTicket, StoreError> {
        let v: Vec<u64> = self.script(|s| &s.begin_fetch, &[], std::slice::from_ref(&self.prefix)).await?;
        match v.as_slice() {
            [mark, ticket] => Ok(FetchTicket { mark: *mark, ticket: *ticket }),
            _ => Err(err("unexpected answer to begin_fetch")),
        }
    }

    async fn apply_balance(&self, amount: Usd, at: FetchTicket, _now_ms: u64) -> Result<bool, StoreError> {
        let args = [self.prefix.clone(), amount.micros().to_string(), at.mark.to_string(), at.ticket.to_string()];
        self.script::<i64>(|s| &s.apply_balance, &[], &args).await.map(|v| v == 1)
    }

    async fn hold(&self, req: &HoldRequest) -> Result<HoldOutcome, StoreError> {
        let args = [
            self.prefix.clone(),
            req.id.clone(),
            req.tenant.to_string(),
            req.price.micros().to_string(),
            budget_arg(req.budget),
            req.reserve.micros().to_string(),
            req.lease_ms.to_string(),
            req.intent.family.clone(),
            req.intent.fingerprint.clone(),
            req.intent.idem_key.clone().unwrap_or_default(),
            req.intent.month.clone(),
            req.max_in_flight.map_or("-1".to_string(), |m| m.to_string()),
        ];
        let v: Vec<i64> = self.money_script(|s| &s.hold, &[], &args).await?;
        Ok(match v.as_slice() {
            [1] => HoldOutcome::Held,
            [2] => HoldOutcome::Refused(Refusal::BudgetExceeded),
            [3] => HoldOutcome::Refused(Refusal::InsufficientCredits),
            [5] => HoldOutcome::Refused(Refusal::TooManyInFlight),
            [4] => HoldOutcome::Gone,
            _ => HoldOutcome::NoBalance,
        })
    }

    async fn settle(&self, hold: &str, charged: Usd, r: &GenerationRecord) -> Result<(), StoreError> {
        let args = [
            self.prefix.clone(),
            hold.to_string(),
            charged.micros().to_string(),
            r.id.clone(),
            r.tenant.to_string(),
            r.family.path().to_string(),
            r.created_ms.to_string(),
            r.status.clone(),
            super::month_of(r.created_ms.max(0) as u64),
        ];
        let (_, n) = self.script_on::<i64>(|s| &s.settle, &[], &args, true).await?;
        self.acknowledged(Rewrite::Settle(args.to_vec()), n).await
    }

    async fn release(&self, hold: &str) -> Result<(), StoreError> {
        self.script::<i64>(|s| &s.release, &[], &[self.prefix.clone(), hold.to_string()]).await.map(|_| ())
    }

    async fn mark_unknown(&self, hold: &str) -> Result<(), StoreError> {
        self.script::<i64>(|s| &s.unknown, &[], &[self.prefix.clone(), hold.to_string()]).await.map(|_| ())
    }

    async fn expire_holds(&self) -> Result<u64, StoreError> {
        self.script::<i64>(|s| &s.expire, &[], std::slice::from_ref(&self.prefix)).await.map(|n| n.max(0) as u64)
    }

    async fn unknown_outcomes(&self) -> Result<Vec<UnknownOutcome>, StoreError> {
        self.holds_in("u").await
    }

    async fn open_holds(&self) -> Result<Vec<UnknownOutcome>, StoreError> {
        self.holds_in("o").await
    }

    async fn reassign(&self, id: &str, from: &str, to: &str) -> Result<Option<GenerationRecord>, StoreError> {
        let Some(record) = self.generation(id).await?.filter(|r| &*r.tenant == from) else { return Ok(None) };
        let args = [self.prefix.clone(), id.to_string(), from.to_string(), to.to_string()];
        Ok((self.script::<i64>(|s| &s.reassign, &[], &args).await? == 1).then_some(record))
    }

    async fn resolve_unknown(&self, hold: &str, resolution: &Resolution) -> Result<bool, StoreError> {
        let mut args = vec![self.prefix.clone(), hold.to_string()];
        match resolution {
            Resolution::Created { record: r, reply } => args.extend([
                "created".to_string(),
                r.id.clone(),
                r.family.path().to_string(),
                r.price.micros().to_string(),
                r.created_ms.to_string(),
                r.status.clone(),
                super::month_of(r.created_ms.max(0) as u64),
                String::from_utf8_lossy(reply).into_owned(),
            ]),
            Resolution::NotCharged => args.push("none".into()),
        }
        self.money_script::<i64>(|s| &s.resolve, &[], &args).await.map(|v| v == 1)
    }

    async fn spendable(
        &self,
        tenant: &Arc<str>,
        month: &str,
        budget: Option<Usd>,
        reserve: Usd,
    ) -> Result<Option<Usd>, StoreError> {
        let args = [
            self.prefix.clone(),
            tenant.to_string(),
            budget_arg(budget),
            reserve.micros().to_string(),
            month.to_string(),
        ];
        let v: Vec<Value> = self.script(|s| &s.spendable, &[], &args).await?;
        match v.as_slice() {
            [_, amount] => {
                let s: String = ::redis::from_redis_value(amount).map_err(err)?;
                Ok(Some(Usd::from_micros(s.parse().map_err(err)?)))
            }
            _ => Ok(None),
        }
    }

    async fn admission(
        &self,
        tenant: &Arc<str>,
        month: &str,
        budget: Option<Usd>,
        reserve: Usd,
        max_in_flight: Option<u32>,
    ) -> Result<Option<crate::policy::ledger::Admission>, StoreError> {
        let v: Vec<String> =
            self.script(|s| &s.admission, &[], &[self.prefix.clone(), tenant.to_string(), month.to_string()]).await?;
        let n = |i: usize| -> Result<i64, StoreError> { v[i].parse::<i64>().map_err(err) };
        if v.len() != 5 {
            return Ok(None);
        }
        Ok(Some(crate::policy::ledger::Admission {
            balance: Usd::from_micros(n(0)?),
            account_held: Usd::from_micros(n(1)?),
            reserve,
            spend: Usd::from_micros(n(3)?),
            tenant_held: Usd::from_micros(n(2)?),
            budget,
            in_flight: n(4)?.max(0) as u32,
            max_in_flight,
        }))
    }

    async fn generation(&self, id: &str) -> Result<Option<GenerationRecord>, StoreError> {
        let key = self.key(&format!("gen:{id}"));
        let fields: std::collections::HashMap<String, String> =
            self.run(|mut c| async move { c.hgetall(key).await }).await?;
        Ok(if fields.is_empty() { None } else { RedisStore::parse_record(id, &fields) })
    }

    async fn list_generations(
        &self,
        tenant: &str,
        family: Family,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<GenerationRecord>, StoreError> {
        let key = self.key(&format!("gens:{tenant}:{}", family.path()));
        let start = offset as isize;
        let stop = (offset + limit) as isize - 1;
        // Newest first; equal times ordered by id descending, like the embedded store.
        let ids: Vec<String> = self.run(|mut c| async move { c.zrevrange(key, start, stop).await }).await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.generation(&id).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn unfinished_generations(&self, limit: usize) -> Result<Vec<GenerationRecord>, StoreError> {
        let key = self.key("unfinished");
        let stop = limit.max(1) as isize - 1;
        let ids: Vec<String> = self.run(|mut c| async move { c.zrange(key, 0, stop).await }).await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.generation(&id).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn update_status(
        &self,
        id: &str,
        status: &str,
        failure: Option<&super::Failure>,
    ) -> Result<bool, StoreError> {
        let (reason, message) = failure.map_or(("other", ""), |f| (f.reason.as_str(), f.message.as_str()));
        let args = [self.prefix.clone(), id.to_string(), status.to_string(), reason.to_string(), message.to_string()];
        self.script::<i64>(|s| &s.update_status, &[], &args).await.map(|n| n == 1)
    }

    async fn latest_generations(
        &self,
        tenant: &str,
        families: &[Family],
        limit: usize,
    ) -> Result<Vec<(GenerationRecord, Option<super::Failure>)>, StoreError> {
        // The newest `limit` of each family's sorted set, merged: one round trip, however many
        // records the tenant has.
        let keys: Vec<String> = families.iter().map(|f| self.key(&format!("gens:{tenant}:{}", f.path()))).collect();
        let stop = limit.max(1) as isize - 1;
        let lists: Vec<Vec<(String, f64)>> = self
            .each(keys, |p, k| {
                p.zrevrange_withscores(k, 0, stop);
            })
            .await?;
        let mut newest: Vec<(String, f64)> = lists.into_iter().flatten().collect();
        newest.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        newest.truncate(limit);
        let gen_keys: Vec<String> = newest.iter().map(|(id, _)| self.key(&format!("gen:{id}"))).collect();
        let hashes: Vec<std::collections::HashMap<String, String>> = self
            .each(gen_keys, |p, k| {
                p.hgetall(k);
            })
            .await?;
        Ok(newest
            .iter()
            .zip(hashes)
            .filter_map(|((id, _), fields)| {
                let record = RedisStore::parse_record(id, &fields)?;
                let failure = (record.status == "failed").then(|| super::Failure {
                    reason: super::Reason::named(fields.get("reason").map_or("", String::as_str)),
                    message: fields.get("error").cloned().unwrap_or_default(),
                });
                Some((record, failure))
            })
            .collect())
    }

    async fn daily(&self, tenant: &str, from: i64, to: i64) -> Result<Vec<super::DayTotals>, StoreError> {
        // One hash per tenant and month: a 90-day chart reads four.
        let mut months: Vec<String> = (from..=to)
            .step_by(28)
            .chain(std::iter::once(to))
            .map(|d| super::month_of((d.max(0) * super::DAY_MS) as u64))
            .collect();
        months.dedup();
        let keys: Vec<String> = months.iter().map(|m| self.key(&format!("daily:{tenant}:{m}"))).collect();
        let hashes: Vec<std::collections::HashMap<String, i64>> = self
            .each(keys, |p, k| {
                p.hgetall(k);
            })
            .await?;
        let mut days: std::collections::BTreeMap<(i64, String), super::DayTotals> = Default::default();
        for (field, v) in hashes.into_iter().flatten() {
            let mut parts = field.splitn(3, '|');
            let (Some(day), Some(family), Some(what)) =
                (parts.next().and_then(|d| d.parse::<i64>().ok()), parts.next(), parts.next())
            else {
                continue;
            };
            if day < from || day > to {
                continue;
            }
            let d = days.entry((day, family.to_string())).or_insert_with(|| super::DayTotals {
                day,
                family: family.to_string(),
                ..Default::default()
            });
            match what {
                "n" => d.generations = v.max(0) as u64,
                "c" => d.charged = Usd::from_micros(v),
                "r" => d.refunded = Usd::from_micros(v),
                f => {
                    if let Some(reason) = f.strip_prefix('f') {
                        d.failed[super::Reason::named(reason).index()] += v.max(0) as u64;
                    }
                }
            }
        }
        Ok(days.into_values().collect())
    }

    async fn idem_claim(
        &self,
        tenant: &str,
        key: &str,
        digest: &[u8; 32],
        hold: &str,
        stale_ms: u64,
    ) -> Result<IdemClaim, StoreError> {
        let k = self.key(&format!("idem:{tenant}:{key}"));
        let args = [self.prefix.clone(), hex::encode(digest), hold.to_string(), stale_ms.to_string()];
        let v: Vec<Value> = match self.money_script(|s| &s.idem_claim, std::slice::from_ref(&k), &args).await {
            Ok(v) => v,
            Err(e) => {
                // The claim may have landed (a lost answer, or a WAIT that fell short): it is
                // withdrawn, by this hold only, once the store answers again, so the client's
                // retry with the same key can claim it instead of finding it running.
                let (link, scripts, timeout) = (self.link.clone(), self.scripts.clone(), self.timeout);
                let w = Rewrite::IdemAbort { key: k, hold: hold.to_string() };
                tokio::spawn(async move {
                    for _ in 0..REWRITE_ROUNDS {
                        if apply(&link, &scripts, timeout, &w).await {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                });
                return Err(e);
            }
        };
        let tag: String = v.first().map(::redis::from_redis_value).transpose().map_err(err)?.unwrap_or_default();
        Ok(match tag.as_str() {
            "fresh" => IdemClaim::Fresh,
            "mismatch" => IdemClaim::Mismatch,
            "running" => IdemClaim::InProgress,
            "unresolved" => IdemClaim::Unresolved,
            "done" => {
                let status: u16 = v.get(1).map(::redis::from_redis_value).transpose().map_err(err)?.unwrap_or(500);
                let body: Vec<u8> =
                    v.get(2).map(::redis::from_redis_value).transpose().map_err(err)?.unwrap_or_default();
                IdemClaim::Replay(StoredResponse { status, body: Bytes::from(body) })
            }
            other => return Err(err(format!("unexpected idempotency state {other:?}"))),
        })
    }

    async fn idem_finish(
        &self,
        tenant: &str,
        key: &str,
        digest: &[u8; 32],
        rsp: &StoredResponse,
    ) -> Result<(), StoreError> {
        let k = self.key(&format!("idem:{tenant}:{key}"));
        let (d, status, body) = (hex::encode(digest), rsp.status, rsp.body.to_vec());
        let cmd = idem_finish_cmd(&k, &d, status, &body);
        let ((), n) = self.run_on(self.timeout, |mut c| async move { cmd.query_async::<()>(&mut c).await }).await?;
        self.acknowledged(Rewrite::IdemFinish { key: k, digest: d, status, body }, n).await
    }

    async fn idem_abort(&self, tenant: &str, key: &str) -> Result<(), StoreError> {
        let k = self.key(&format!("idem:{tenant}:{key}"));
        let hk = k.clone();
        let hold: Option<String> = self.run(|mut c| async move { c.hget(hk, "hold").await }).await?;
        let Some(hold) = hold else { return Ok(()) };
        let (_, n) = self
            .script_on::<i64>(|s| &s.idem_abort, std::slice::from_ref(&k), std::slice::from_ref(&hold), false)
            .await?;
        self.acknowledged(Rewrite::IdemAbort { key: k, hold }, n).await
    }

    async fn webhook_register(&self, t: &WebhookTarget) -> Result<(), StoreError> {
        let k = self.key(&format!("wh:{}", t.token));
        let fields = vec![
            ("tenant", t.tenant.to_string()),
            ("url", t.url.clone()),
            ("generation", t.generation.clone().unwrap_or_default()),
            ("created_ms", t.created_ms.to_string()),
        ];
        self.run(|mut c| async move { c.hset_multiple::<_, _, _, ()>(k, &fields).await }).await
    }

    async fn webhook_link(&self, token: &str, generation: &str) -> Result<(), StoreError> {
        let k = self.key(&format!("wh:{token}"));
        let g = generation.to_string();
        self.run(|mut c| async move {
            ::redis::cmd("HSET").arg(&k).arg("generation").arg(g).query_async::<()>(&mut c).await
        })
        .await
    }

    async fn webhook_target(&self, token: &str) -> Result<Option<WebhookTarget>, StoreError> {
        let k = self.key(&format!("wh:{token}"));
        let f: std::collections::HashMap<String, String> = self.run(|mut c| async move { c.hgetall(k).await }).await?;
        Ok((|| {
            Some(WebhookTarget {
                token: token.to_string(),
                tenant: Arc::from(f.get("tenant")?.as_str()),
                url: f.get("url")?.clone(),
                generation: f.get("generation").filter(|g| !g.is_empty()).cloned(),
                created_ms: f.get("created_ms")?.parse().ok()?,
            })
        })())
    }

    async fn outbox_push(&self, m: &OutboxMessage) -> Result<(), StoreError> {
        let args = [
            self.prefix.clone(),
            m.id.clone(),
            m.tenant.to_string(),
            m.url.clone(),
            String::from_utf8_lossy(&m.body).into_owned(),
            m.created_ms.to_string(),
        ];
        self.script::<i64>(|s| &s.outbox_push, &[], &args).await.map(|_| ())
    }

    async fn outbox_claim(&self, limit: usize, lease_ms: u64) -> Result<Vec<OutboxMessage>, StoreError> {
        let rows: Vec<(String, String, String, Vec<u8>, u32, u64)> = self
            .script(|s| &s.outbox_claim, &[], &[self.prefix.clone(), limit.to_string(), lease_ms.to_string()])
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, tenant, url, body, attempts, created_ms)| OutboxMessage {
                id,
                tenant: Arc::from(tenant.as_str()),
                url,
                body: Bytes::from(body),
                attempts,
                created_ms,
            })
            .collect())
    }

    async fn outbox_done(&self, id: &str) -> Result<(), StoreError> {
        let (k, due) = (self.key(&format!("ob:{id}")), self.key("ob:due"));
        let id = id.to_string();
        self.run(|mut c| async move { ::redis::pipe().atomic().del(k).zrem(due, id).query_async::<()>(&mut c).await })
            .await
    }

    async fn outbox_retry(&self, id: &str, attempts: u32, next_ms: u64) -> Result<(), StoreError> {
        let (k, due) = (self.key(&format!("ob:{id}")), self.key("ob:due"));
        let id = id.to_string();
        self.run(|mut c| async move {
            ::redis::pipe()
                .atomic()
                .hset(k, "attempts", attempts)
                .zadd(due, id, next_ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn outbox_dead(&self, id: &str, attempts: u32) -> Result<(), StoreError> {
        let (k, due, dead) = (self.key(&format!("ob:{id}")), self.key("ob:due"), self.key("ob:dead"));
        let id = id.to_string();
        let now = super::now_ms();
        self.run(|mut c| async move {
            ::redis::pipe()
                .atomic()
                .hset(k, "attempts", attempts)
                .zrem(due, &id)
                .zadd(dead, &id, now)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn outbox_redeliver(&self, tenant: Option<&str>) -> Result<u64, StoreError> {
        let args = [self.prefix.clone(), tenant.unwrap_or("").to_string()];
        self.script::<i64>(|s| &s.outbox_redeliver, &[], &args).await.map(|n| n.max(0) as u64)
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let (due, dead) = (self.key("ob:due"), self.key("ob:dead"));
        let prefix = self.key("ob:");
        let (ids, dead_n): (Vec<String>, u64) = self
            .run(|mut c| async move { ::redis::pipe().zrange(due, 0, -1).zcard(dead).query_async(&mut c).await })
            .await?;
        let mut oldest: Option<u64> = None;
        for id in ids.iter().take(1000) {
            let k = format!("{prefix}{id}");
            let created: Option<u64> = self.run(|mut c| async move { c.hget(k, "created_ms").await }).await?;
            oldest = match (oldest, created) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(OutboxStats { pending: ids.len() as u64, oldest_pending_ms: oldest, dead: dead_n })
    }

    async fn month_totals(
        &self,
        month: &str,
    ) -> Result<std::collections::HashMap<String, crate::store::MonthTotals>, StoreError> {
        let (sk, rk, hk) =
            (self.key(&format!("spend:{month}")), self.key(&format!("refunded:{month}")), self.key("holds"));
        let (spend, refunded, holds): (
            std::collections::HashMap<String, i64>,
            std::collections::HashMap<String, i64>,
            Vec<String>,
        ) = self
            .run(|mut c| async move { ::redis::pipe().hgetall(sk).hgetall(rk).hvals(hk).query_async(&mut c).await })
            .await?;
        let mut out: std::collections::HashMap<String, crate::store::MonthTotals> = std::collections::HashMap::new();
        for (t, v) in spend {
            out.entry(t).or_default().spent = Usd::from_micros(v);
        }
        for (t, v) in refunded {
            out.entry(t).or_default().refunded = Usd::from_micros(v);
        }
        for e in holds.iter().filter_map(|j| serde_json::from_str::<RedisEntry>(j).ok()).filter(|e| e.m == month) {
            let slot = out.entry(e.t.clone()).or_default();
            match e.st.as_str() {
                "o" => slot.held += Usd::from_micros(e.a),
                "u" => slot.unknown += Usd::from_micros(e.a),
                _ => {}
            }
        }
        Ok(out)
    }

    async fn generations_in_month(
        &self,
        month: &str,
        tenant: Option<&str>,
    ) -> Result<Vec<GenerationRecord>, StoreError> {
        let key = self.key(&format!("month:{month}"));
        let ids: Vec<String> = self.run(|mut c| async move { c.zrange(key, 0, -1).await }).await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.generation(&id).await?.filter(|r| tenant.is_none_or(|t| &*r.tenant == t)) {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn outbox_dead_by_tenant(&self) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let dead = self.key("ob:dead");
        let ids: Vec<String> = self.run(|mut c| async move { c.zrange(dead, 0, -1).await }).await?;
        let mut out = std::collections::HashMap::new();
        for id in ids {
            let k = self.key(&format!("ob:{id}"));
            let t: Option<String> = self.run(|mut c| async move { c.hget(k, "tenant").await }).await?;
            if let Some(t) = t {
                *out.entry(t).or_default() += 1;
            }
        }
        Ok(out)
    }

    async fn reconciler_lease(&self, owner: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let k = self.key("reconciler");
        self.script::<i64>(|s| &s.lease, &[k], &[owner.to_string(), ttl_ms.to_string()]).await.map(|v| v == 1)
    }

    async fn reconciler_passed(&self, at_ms: u64) -> Result<(), StoreError> {
        let k = self.key("reconciler:last_pass");
        self.run(|mut c| async move { c.set::<_, _, ()>(k, at_ms).await }).await
    }

    async fn reconciler_last_pass(&self) -> Result<Option<u64>, StoreError> {
        let k = self.key("reconciler:last_pass");
        self.run(|mut c| async move { c.get(k).await }).await
    }

    async fn hold_totals(&self) -> Result<HoldTotals, StoreError> {
        let (hk, heldk) = (self.key("holds"), self.key("held"));
        let (entries, held): (Vec<String>, Option<i64>) =
            self.run(|mut c| async move { ::redis::pipe().hvals(hk).get(heldk).query_async(&mut c).await }).await?;
        let mut t = HoldTotals { held: Usd::from_micros(held.unwrap_or(0)), ..Default::default() };
        for e in entries.iter().filter_map(|j| serde_json::from_str::<RedisEntry>(j).ok()) {
            match e.st.as_str() {
                "o" => {
                    t.open += 1;
                    t.open_amount += Usd::from_micros(e.a);
                }
                "u" => {
                    t.unknown += 1;
                    t.unknown_amount += Usd::from_micros(e.a);
                }
                _ => {}
            }
        }
        Ok(t)
    }

    async fn spend_by_tenant(&self, month: &str) -> Result<Vec<(Arc<str>, Usd)>, StoreError> {
        let key = self.key(&format!("spend:{month}"));
        let all: std::collections::HashMap<String, i64> = self.run(|mut c| async move { c.hgetall(key).await }).await?;
        Ok(all.into_iter().map(|(t, m)| (Arc::from(t.as_str()), Usd::from_micros(m))).collect())
    }

    async fn directory(&self) -> Result<(u64, Vec<super::TenantDoc>), StoreError> {
        let version = self.directory_version().await?;
        let k = self.key("dir");
        let all: std::collections::HashMap<String, String> =
            self.run(|mut c| async move { c.hgetall(k).await }).await?;
        let mut docs = Vec::with_capacity(all.len());
        for (id, v) in all {
            let (rev, json) = v.split_once('|').ok_or_else(|| err(format!("api tenant {id:?} is unreadable")))?;
            let tenant =
                serde_json::from_str(json).map_err(|e| err(format!("api tenant {id:?} is unreadable: {e}")))?;
            docs.push(super::TenantDoc { rev: rev.parse().map_err(err)?, tenant });
        }
        docs.sort_by(|a, b| a.tenant.id.cmp(&b.tenant.id));
        Ok((version, docs))
    }

    async fn directory_version(&self) -> Result<u64, StoreError> {
        let k = self.key("dir:version");
        let v: Option<u64> = self.run(|mut c| async move { c.get(k).await }).await?;
        Ok(v.unwrap_or(0))
    }

    async fn directory_put(
        &self,
        id: &str,
        expect: u64,
        doc: Option<&crate::policy::keys::ApiTenant>,
    ) -> Result<bool, StoreError> {
        let json = doc.map(serde_json::to_string).transpose().map_err(err)?.unwrap_or_default();
        let keys = [self.key("dir"), self.key("dir:version")];
        let written: i64 = self
            .script(|s| &s.dir_put, &keys, &[id.to_string(), expect.to_string(), json, self.key(DIR_CHANNEL)])
            .await?;
        Ok(written == 1)
    }

    fn directory_changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.dir_changed.clone())
    }

    async fn alerts_marked(&self, keys: &[String]) -> Result<Vec<bool>, StoreError> {
        self.each(keys.iter().map(|k| self.key(&format!("alert:{k}"))).collect(), |p, k| {
            p.exists(k);
        })
        .await
    }

    async fn alert_once(&self, key: &str) -> Result<bool, StoreError> {
        let k = self.key(&format!("alert:{key}"));
        let set: Option<String> =
            self.run(|mut c| async move {
                ::redis::cmd("SET").arg(&k).arg(super::now_ms()).arg("NX").query_async(&mut c).await
            })
            .await?;
        Ok(set.is_some())
    }

    async fn shared_secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let (k, fresh) = (self.key(&format!("secret:{name}")), super::random_secret_hex());
        let text: String = self
            .run(|mut c| async move {
                let _: Option<String> = ::redis::cmd("SET").arg(&k).arg(&fresh).arg("NX").query_async(&mut c).await?;
                c.get(&k).await
            })
            .await?;
        super::secret_from_hex(&text)
    }

    async fn session_end(&self, id: &str, until_ms: u64) -> Result<(), StoreError> {
        let k = self.key(&format!("session_ended:{id}"));
        let ttl = until_ms.saturating_sub(super::now_ms()).max(1);
        self.run(
            |mut c| async move { ::redis::cmd("SET").arg(k).arg(1).arg("PX").arg(ttl).query_async::<()>(&mut c).await },
        )
        .await
    }

    async fn session_ended(&self, id: &str) -> Result<bool, StoreError> {
        let k = self.key(&format!("session_ended:{id}"));
        self.run(|mut c| async move { c.exists(k).await }).await
    }

    async fn alert_rearm(&self, key: &str) -> Result<(), StoreError> {
        let k = self.key(&format!("alert:{key}"));
        self.run(|mut c| async move { c.del::<_, ()>(k).await }).await
    }

    async fn audit_push(&self, line: &str) -> Result<(), StoreError> {
        let k = self.key("audit");
        let line = line.to_string();
        self.run(|mut c| async move {
            ::redis::pipe()
                .atomic()
                .lpush(&k, line)
                .ignore()
                .ltrim(&k, 0, super::AUDIT_KEEP as isize - 1)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn audit_latest(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let k = self.key("audit");
        self.run(|mut c| async move { c.lrange(k, 0, limit as isize - 1).await }).await
    }

    async fn keys_touch(&self, used: &[(String, u64)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let k = self.key("keys:last_used");
        let fields: Vec<(String, String)> = used.iter().map(|(id, ms)| (id.clone(), ms.to_string())).collect();
        self.run(|mut c| async move { c.hset_multiple::<_, _, _, ()>(k, &fields).await }).await
    }

    async fn keys_last_used(&self) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let k = self.key("keys:last_used");
        let all: std::collections::HashMap<String, String> =
            self.run(|mut c| async move { c.hgetall(k).await }).await?;
        Ok(all.into_iter().filter_map(|(k, v)| Some((k, v.parse().ok()?))).collect())
    }

    fn shares_rate_limits(&self) -> bool {
        true
    }

    async fn shared_rate_limit(
        &self,
        tenant: &str,
        kind: &'static str,
        params: GcraParams,
    ) -> Option<Result<SharedLimit, StoreError>> {
        Some(self.rate_limit(tenant, kind, params).await)
    }

    async fn shared_rate_limit_give_back(
        &self,
        tenant: &str,
        kind: &'static str,
        params: GcraParams,
    ) -> Option<Result<(), StoreError>> {
        Some(self.rate_limit_give_back(tenant, kind, params).await)
    }
}

mod epoch;
mod link;
#[cfg(test)]
mod tests;
