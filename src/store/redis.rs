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

use ::redis::aio::ConnectionManager;
use ::redis::{AsyncCommands, Script, Value};
use async_trait::async_trait;
use bytes::Bytes;

use super::{SharedLimit, BalanceSnapshot, GenerationRecord, HoldOutcome, HoldRequest, IdemClaim, Store, StoreError, StoredResponse};
use crate::policy::family::Family;
use crate::policy::ledger::{HoldTotals, Refusal};
use crate::policy::money::Usd;
use crate::policy::rate_limit::{GcraParams, Quotas};

/// Finished idempotency records are kept a day.
const IDEM_DONE_TTL_MS: u64 = 24 * 3600 * 1000;
/// A claim whose request died with its process frees itself after this.
const IDEM_RUNNING_TTL_MS: u64 = 10 * 60 * 1000;

const HOLD: &str = r#"
local p, tenant = ARGV[1], ARGV[2]
local price, budget, reserve = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local bal = redis.call('HGET', p .. ':balance', 'amount')
if not bal then return {0} end
local held = tonumber(redis.call('GET', p .. ':held') or '0')
local theld = tonumber(redis.call('HGET', p .. ':theld', tenant) or '0')
local spend = tonumber(redis.call('HGET', p .. ':spend:' .. ARGV[6], tenant) or '0')
if budget >= 0 and spend + theld + price > budget then return {2} end
if tonumber(bal) - held - reserve < price then return {3} end
local id = redis.call('INCR', p .. ':hold_id')
redis.call('HSET', p .. ':holds', id, tenant .. '|' .. price .. '|o|0')
redis.call('INCRBY', p .. ':held', price)
redis.call('HINCRBY', p .. ':theld', tenant, price)
return {1, id}
"#;

// Parses "tenant|amount|state|seq".
const PARSE_ENTRY: &str = r#"
local function entry(s)
  local t, a, st, sq = string.match(s, '^(.*)|(%-?%d+)|(%a)|(%d+)$')
  return t, tonumber(a), st, tonumber(sq)
end
"#;

const SETTLE: &str = r#"
local p, id, charged = ARGV[1], ARGV[2], tonumber(ARGV[3])
local gid, tenant, family, created, status, month = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
redis.call('HSET', p .. ':gen:' .. gid, 'tenant', tenant, 'family', family, 'price', charged,
  'created_ms', created, 'status', status, 'month', month)
redis.call('ZADD', p .. ':gens:' .. tenant .. ':' .. family, created, gid)
redis.call('HINCRBY', p .. ':spend:' .. month, tenant, charged)
local e = redis.call('HGET', p .. ':holds', id)
if e then
  local t, amount, st = entry(e)
  if st == 'o' then
    local seq = redis.call('INCR', p .. ':seq')
    redis.call('INCRBY', p .. ':held', charged - amount)
    redis.call('HINCRBY', p .. ':theld', t, -amount)
    redis.call('HSET', p .. ':holds', id, t .. '|' .. charged .. '|d|' .. seq)
  end
end
return 1
"#;

const RELEASE: &str = r#"
local p, id = ARGV[1], ARGV[2]
local e = redis.call('HGET', p .. ':holds', id)
if not e then return 0 end
local t, amount, st = entry(e)
if st ~= 'o' then return 0 end
redis.call('HDEL', p .. ':holds', id)
redis.call('INCRBY', p .. ':held', -amount)
redis.call('HINCRBY', p .. ':theld', t, -amount)
return 1
"#;

const UNKNOWN: &str = r#"
local p, id = ARGV[1], ARGV[2]
local e = redis.call('HGET', p .. ':holds', id)
if not e then return 0 end
local t, amount, st = entry(e)
if st ~= 'o' then return 0 end
local seq = redis.call('INCR', p .. ':seq')
redis.call('HSET', p .. ':holds', id, t .. '|' .. amount .. '|u|' .. seq)
return 1
"#;

const APPLY_BALANCE: &str = r#"
local p, amount, mark, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
redis.call('HSET', p .. ':balance', 'amount', amount, 'fetched_ms', now)
local all = redis.call('HGETALL', p .. ':holds')
for i = 1, #all, 2 do
  local t, a, st, sq = entry(all[i + 1])
  if st ~= 'o' and sq <= mark then
    redis.call('HDEL', p .. ':holds', all[i])
    redis.call('INCRBY', p .. ':held', -a)
    if st == 'u' then redis.call('HINCRBY', p .. ':theld', t, -a) end
  end
end
return 1
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

const UPDATE_STATUS: &str = r#"
local p, gid, status = ARGV[1], ARGV[2], ARGV[3]
local k = p .. ':gen:' .. gid
local old = redis.call('HGET', k, 'status')
if (not old) or old == status then return 0 end
redis.call('HSET', k, 'status', status)
if status == 'failed' then
  local tenant, month, price = unpack(redis.call('HMGET', k, 'tenant', 'month', 'price'))
  local sk = p .. ':spend:' .. month
  local s = tonumber(redis.call('HGET', sk, tenant) or '0') - tonumber(price)
  if s < 0 then s = 0 end
  redis.call('HSET', sk, tenant, s)
end
return 1
"#;

const IDEM_CLAIM: &str = r#"
local k, digest = KEYS[1], ARGV[1]
local d = redis.call('HGET', k, 'digest')
if not d then
  redis.call('HSET', k, 'digest', digest, 'state', 'running')
  redis.call('PEXPIRE', k, ARGV[2])
  return {'fresh'}
end
if d ~= digest then return {'mismatch'} end
if redis.call('HGET', k, 'state') == 'running' then return {'running'} end
local v = redis.call('HMGET', k, 'status', 'body')
return {'done', v[1], v[2]}
"#;

const IDEM_ABORT: &str = r#"
if redis.call('HGET', KEYS[1], 'state') == 'running' then redis.call('DEL', KEYS[1]) end
return 1
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

/// Scripts compiled once (their SHA1 is computed at construction).
struct Scripts {
    hold: Script,
    settle: Script,
    release: Script,
    unknown: Script,
    apply_balance: Script,
    spendable: Script,
    update_status: Script,
    idem_claim: Script,
    idem_abort: Script,
    gcra: Script,
}

/// Redis-backed store shared by replicas.
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    scripts: Arc<Scripts>,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("redis: {e}"))
}

fn ceil_secs_from_us(us: i64) -> u64 {
    (us.max(0) as u64).div_ceil(1_000_000)
}

// === impl RedisStore ===

impl RedisStore {
    /// Connects (failing fast if Redis is unreachable at start-up); later outages are survived by
    /// reconnecting.
    pub async fn connect(url: &str, timeout: Duration, prefix: &str) -> Result<Self, StoreError> {
        let client = ::redis::Client::open(url).map_err(err)?;
        let config = ::redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1)
            .set_max_delay(timeout.as_millis() as u64);
        let conn = tokio::time::timeout(timeout * 4, ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|_| err(format!("no answer from {} within {:?}", crate::config::redact_url(url), timeout * 4)))?
            .map_err(err)?;
        let with_entry = |body: &str| Script::new(&format!("{PARSE_ENTRY}{body}"));
        let scripts = Scripts {
            hold: Script::new(HOLD),
            settle: with_entry(SETTLE),
            release: with_entry(RELEASE),
            unknown: with_entry(UNKNOWN),
            apply_balance: with_entry(APPLY_BALANCE),
            spendable: Script::new(SPENDABLE),
            update_status: Script::new(UPDATE_STATUS),
            idem_claim: Script::new(IDEM_CLAIM),
            idem_abort: Script::new(IDEM_ABORT),
            gcra: Script::new(GCRA),
        };
        Ok(RedisStore { conn, prefix: prefix.to_string(), timeout, scripts: Arc::new(scripts) })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// Runs one Redis operation with the store's deadline.
    async fn run<T, F>(&self, f: impl FnOnce(ConnectionManager) -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = ::redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.timeout, f(self.conn.clone())).await {
            Ok(r) => r.map_err(err),
            Err(_) => Err(err(format!("timed out after {:?}", self.timeout))),
        }
    }

    async fn script<T: ::redis::FromRedisValue>(&self, pick: fn(&Scripts) -> &Script, keys: &[String], args: &[String]) -> Result<T, StoreError> {
        let scripts = self.scripts.clone();
        self.run(|mut c| async move {
            let s = pick(&scripts);
            let mut inv = s.prepare_invoke();
            for k in keys {
                inv.key(k);
            }
            for a in args {
                inv.arg(a);
            }
            inv.invoke_async(&mut c).await
        })
        .await
    }

    /// One GCRA check shared by all replicas.
    pub async fn rate_limit(&self, tenant: &str, kind: &str, params: GcraParams) -> Result<SharedLimit, StoreError> {
        let emission_us = (params.emission_ns / 1000).max(1);
        let key = self.key(&format!("rl:{tenant}:{kind}"));
        let (allowed, remaining, retry_us, reset_us): (i64, i64, i64, i64) =
            self.script(|s| &s.gcra, &[key], &[emission_us.to_string(), params.burst.to_string()]).await?;
        let quotas = Quotas { limit: params.burst, remaining: remaining.max(0) as u32, reset_secs: ceil_secs_from_us(reset_us) };
        Ok(if allowed == 1 {
            SharedLimit::Allowed(quotas)
        } else {
            SharedLimit::Refused { retry_after_secs: ceil_secs_from_us(retry_us).max(1), quotas }
        })
    }

    fn parse_record(id: &str, fields: &std::collections::HashMap<String, String>) -> Option<GenerationRecord> {
        Some(GenerationRecord {
            id: id.to_string(),
            tenant: Arc::from(fields.get("tenant")?.as_str()),
            family: Family::from_path(fields.get("family")?)?,
            price: Usd::from_micros(fields.get("price")?.parse().ok()?),
            created_ms: fields.get("created_ms")?.parse().ok()?,
            status: fields.get("status")?.clone(),
        })
    }
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
        self.run(|mut c| async move { ::redis::cmd("PING").query_async::<String>(&mut c).await }).await.map(|_| ())
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

    async fn begin_balance_fetch(&self) -> Result<u64, StoreError> {
        let key = self.key("seq");
        let seq: Option<u64> = self.run(|mut c| async move { c.get(key).await }).await?;
        Ok(seq.unwrap_or(0))
    }

    async fn apply_balance(&self, amount: Usd, mark: u64, now_ms: u64) -> Result<(), StoreError> {
        let args = [self.prefix.clone(), amount.micros().to_string(), mark.to_string(), now_ms.to_string()];
        self.script::<i64>(|s| &s.apply_balance, &[], &args).await.map(|_| ())
    }

    async fn hold(&self, req: &HoldRequest) -> Result<HoldOutcome, StoreError> {
        let args = [
            self.prefix.clone(),
            req.tenant.to_string(),
            req.price.micros().to_string(),
            budget_arg(req.budget),
            req.reserve.micros().to_string(),
            req.month.clone(),
        ];
        let v: Vec<i64> = self.script(|s| &s.hold, &[], &args).await?;
        Ok(match v.as_slice() {
            [1, id] => HoldOutcome::Held(*id as u64),
            [2] => HoldOutcome::Refused(Refusal::BudgetExceeded),
            [3] => HoldOutcome::Refused(Refusal::InsufficientCredits),
            _ => HoldOutcome::NoBalance,
        })
    }

    async fn settle(&self, hold: u64, month: &str, charged: Usd, r: &GenerationRecord) -> Result<(), StoreError> {
        let args = [
            self.prefix.clone(),
            hold.to_string(),
            charged.micros().to_string(),
            r.id.clone(),
            r.tenant.to_string(),
            r.family.path().to_string(),
            r.created_ms.to_string(),
            r.status.clone(),
            month.to_string(),
        ];
        self.script::<i64>(|s| &s.settle, &[], &args).await.map(|_| ())
    }

    async fn release(&self, hold: u64) -> Result<(), StoreError> {
        self.script::<i64>(|s| &s.release, &[], &[self.prefix.clone(), hold.to_string()]).await.map(|_| ())
    }

    async fn mark_unknown(&self, hold: u64) -> Result<(), StoreError> {
        self.script::<i64>(|s| &s.unknown, &[], &[self.prefix.clone(), hold.to_string()]).await.map(|_| ())
    }

    async fn spendable(&self, tenant: &Arc<str>, month: &str, budget: Option<Usd>, reserve: Usd) -> Result<Option<Usd>, StoreError> {
        let args = [self.prefix.clone(), tenant.to_string(), budget_arg(budget), reserve.micros().to_string(), month.to_string()];
        let v: Vec<Value> = self.script(|s| &s.spendable, &[], &args).await?;
        match v.as_slice() {
            [_, amount] => {
                let s: String = ::redis::from_redis_value(amount).map_err(err)?;
                Ok(Some(Usd::from_micros(s.parse().map_err(err)?)))
            }
            _ => Ok(None),
        }
    }

    async fn generation(&self, id: &str) -> Result<Option<GenerationRecord>, StoreError> {
        let key = self.key(&format!("gen:{id}"));
        let fields: std::collections::HashMap<String, String> = self.run(|mut c| async move { c.hgetall(key).await }).await?;
        Ok(if fields.is_empty() { None } else { RedisStore::parse_record(id, &fields) })
    }

    async fn list_generations(&self, tenant: &str, family: Family, limit: usize, offset: usize) -> Result<Vec<GenerationRecord>, StoreError> {
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

    async fn update_status(&self, id: &str, status: &str) -> Result<(), StoreError> {
        let args = [self.prefix.clone(), id.to_string(), status.to_string()];
        self.script::<i64>(|s| &s.update_status, &[], &args).await.map(|_| ())
    }

    async fn idem_claim(&self, tenant: &str, key: &str, digest: &[u8; 32]) -> Result<IdemClaim, StoreError> {
        let k = self.key(&format!("idem:{tenant}:{key}"));
        let v: Vec<Value> = self.script(|s| &s.idem_claim, &[k], &[hex::encode(digest), IDEM_RUNNING_TTL_MS.to_string()]).await?;
        let tag: String = v.first().map(::redis::from_redis_value).transpose().map_err(err)?.unwrap_or_default();
        Ok(match tag.as_str() {
            "fresh" => IdemClaim::Fresh,
            "mismatch" => IdemClaim::Mismatch,
            "running" => IdemClaim::InProgress,
            "done" => {
                let status: u16 = v.get(1).map(::redis::from_redis_value).transpose().map_err(err)?.unwrap_or(500);
                let body: Vec<u8> = v.get(2).map(::redis::from_redis_value).transpose().map_err(err)?.unwrap_or_default();
                IdemClaim::Replay(StoredResponse { status, body: Bytes::from(body) })
            }
            other => return Err(err(format!("unexpected idempotency state {other:?}"))),
        })
    }

    async fn idem_finish(&self, tenant: &str, key: &str, digest: &[u8; 32], rsp: &StoredResponse) -> Result<(), StoreError> {
        let k = self.key(&format!("idem:{tenant}:{key}"));
        let (d, status, body) = (hex::encode(digest), rsp.status, rsp.body.to_vec());
        self.run(|mut c| async move {
            ::redis::pipe()
                .atomic()
                .hset_multiple(&k, &[("digest", d.into_bytes()), ("state", b"done".to_vec()), ("status", status.to_string().into_bytes()), ("body", body)])
                .pexpire(&k, IDEM_DONE_TTL_MS as i64)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn idem_abort(&self, tenant: &str, key: &str) -> Result<(), StoreError> {
        let k = self.key(&format!("idem:{tenant}:{key}"));
        self.script::<i64>(|s| &s.idem_abort, &[k], &[]).await.map(|_| ())
    }

    async fn hold_totals(&self) -> Result<HoldTotals, StoreError> {
        let (hk, heldk) = (self.key("holds"), self.key("held"));
        let (entries, held): (Vec<String>, Option<i64>) =
            self.run(|mut c| async move { ::redis::pipe().hvals(hk).get(heldk).query_async(&mut c).await }).await?;
        let mut t = HoldTotals { held: Usd::from_micros(held.unwrap_or(0)), ..Default::default() };
        for e in entries {
            let mut parts = e.rsplitn(3, '|');
            let (_seq, state, rest) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
            let amount = rest.rsplit('|').next().and_then(|a| a.parse().ok()).unwrap_or(0);
            match state {
                Some("o") => {
                    t.open += 1;
                    t.open_amount += Usd::from_micros(amount);
                }
                Some("u") => t.unknown += 1,
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

    async fn shared_rate_limit(&self, tenant: &str, kind: &'static str, params: GcraParams) -> Option<Result<SharedLimit, StoreError>> {
        Some(self.rate_limit(tenant, kind, params).await)
    }
}

#[cfg(test)]
mod tests;
