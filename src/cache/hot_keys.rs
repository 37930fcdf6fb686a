//! What refresh-ahead needs from Redis besides plain entries: the hot-key set, entry metadata in
//! bulk, and short locks.
//!
//! **Hot keys** live in one sorted set, `RedisInstanceName + "hot\u{1f}refresh-ahead"`, scored by
//! an exponentially decayed read count ("forward decay"): a read at time `t` adds
//! `2^((t - landmark) / half_life)`, so older reads weigh exponentially less without ever touching
//! them, and `score / 2^((now - landmark) / half_life)` is the decayed count now. When the weights
//! grow past 2^64 the set is rescaled once and the landmark (`…"hot\u{1f}landmark"`) moves. The set
//! is trimmed to `RefreshAheadHotKeysMax` members, coldest first, in the same script, so it stays
//! bounded. The read and the bump are one script: a refresh-ahead hit stays one round trip.
//!
//! **Refresh locks** (`…"refresh\u{1f}" + key`) are taken only if the entry is still the one the
//! reader saw (same write time), so a refresh that another process already finished is not redone.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{CacheEntry, CacheError, INTERNAL, RedisCache};
use crate::version::now_millis;

/// How the hot-key set decays and how large it may grow.
#[derive(Debug, Clone, Copy)]
pub struct HotKeyPolicy {
    /// A read counts half as much after this long.
    pub half_life: Duration,
    /// Most members kept.
    pub max_keys: u64,
}

/// The parts of an entry the timer needs to decide on a refresh (never the value itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// Version of the cached value.
    pub version: u64,
    /// When the entry was written (ms).
    pub written_at_ms: u64,
    /// Logical expiry (ms).
    pub fresh_until_ms: u64,
    /// The entry records an absent key.
    pub negative: bool,
}

/// What [`RedisCache::refresh_gate`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshGate {
    /// This caller holds the refresh lock of the key.
    Acquired,
    /// Another caller is refreshing the key (or failed moments ago and holds the lock as a throttle).
    Busy,
    /// The entry changed since it was read: someone already refreshed or rewrote it.
    AlreadyDone,
}

/// Reads an entry and counts the read in the hot-key set.
///
/// KEYS[1] entry, KEYS[2] hot set, KEYS[3] landmark; ARGV: now (ms), half-life (ms), max members,
/// member. Returns the entry's fields in `entry::FIELDS` order, or an empty array.
static READ_AND_BUMP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local e = {}
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  e = redis.call('HMGET', KEYS[1], 'data', 'ver', 'at', 'soft', 'hard', 'neg', 'fs')
end
local now = tonumber(ARGV[1])
local half = tonumber(ARGV[2])
local landmark = tonumber(redis.call('GET', KEYS[3]) or '')
if not landmark then
  landmark = now
  redis.call('SET', KEYS[3], now)
end
local x = (now - landmark) / half
if x > 64 then
  redis.call('ZUNIONSTORE', KEYS[2], 1, KEYS[2], 'WEIGHTS', 2 ^ (-x))
  redis.call('SET', KEYS[3], now)
  x = 0
end
redis.call('ZINCRBY', KEYS[2], 2 ^ x, ARGV[4])
local n = redis.call('ZCARD', KEYS[2])
local max = tonumber(ARGV[3])
if n > max then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - max - 1) end
return e
"#,
    )
});

/// The hottest members with their decayed read counts, forgetting the ones that decayed to nothing.
///
/// KEYS[1] hot set, KEYS[2] landmark; ARGV: now (ms), half-life (ms), min reads, limit.
/// Returns `member, count, member, count, …`, hottest first.
static HOTTEST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local landmark = tonumber(redis.call('GET', KEYS[2]) or '')
if not landmark then return {} end
local scale = 2 ^ ((tonumber(ARGV[1]) - landmark) / tonumber(ARGV[2]))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.17g', scale / 1000))
local found = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', string.format('%.17g', scale * tonumber(ARGV[3])),
  'WITHSCORES', 'LIMIT', 0, ARGV[4])
for i = 2, #found, 2 do found[i] = string.format('%.6g', tonumber(found[i]) / scale) end
return found
"#,
    )
});

/// Entry metadata of many keys. KEYS: entries. Returns one `{ver, at, soft, neg}` (or `{}`) per key.
static METADATA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('TYPE', k).ok == 'hash' then
    out[i] = redis.call('HMGET', k, 'ver', 'at', 'soft', 'neg')
  else
    out[i] = {}
  end
end
return out
"#,
    )
});

/// Takes the refresh lock of a key if the entry is still the one the caller read.
///
/// KEYS[1] entry, KEYS[2] lock; ARGV: the entry's `at` as read (empty when it was missing), token,
/// lock TTL (ms). Returns 1 acquired, 0 busy, 2 the entry changed meanwhile.
static REFRESH_GATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local at = false
if redis.call('TYPE', KEYS[1]).ok == 'hash' then at = redis.call('HGET', KEYS[1], 'at') end
if (at or '') ~= ARGV[1] then return 2 end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return 1 end
return 0
"#,
    )
});

impl RedisCache {
    fn hot_set_key(&self) -> String {
        format!("{}hot{INTERNAL}refresh-ahead", self.prefix)
    }

    fn hot_landmark_key(&self) -> String {
        format!("{}hot{INTERNAL}landmark", self.prefix)
    }

    /// The Redis key of the refresh lock of `key`.
    pub fn refresh_lock_key(&self, key: &str) -> String {
        format!("{}refresh{INTERNAL}{key}", self.prefix)
    }

    /// The Redis key of the timer's lock for the tick at `tick_ms`.
    pub fn tick_lock_key(&self, tick_ms: i64) -> String {
        format!("{}refresh-ahead{INTERNAL}tick{INTERNAL}{tick_ms}", self.prefix)
    }

    /// Reads the entry of `key` and counts the read in the hot-key set, in one round trip.
    pub async fn get_and_bump(&self, key: &str, policy: &HotKeyPolicy) -> Result<Option<CacheEntry>, CacheError> {
        let mut conn = self.connection()?;
        let fields: Result<Vec<Option<String>>, _> = READ_AND_BUMP
            .key(self.redis_key(key))
            .key(self.hot_set_key())
            .key(self.hot_landmark_key())
            .arg(now_millis())
            .arg(policy.half_life.as_millis().max(1) as u64)
            .arg(policy.max_keys)
            .arg(key)
            .invoke_async(&mut conn)
            .await;
        fields.map(|f| CacheEntry::from_fields(&f)).map_err(|e| self.classify(e))
    }

    /// Up to `limit` hot keys whose decayed read count is at least `min_reads`, hottest first,
    /// with their counts.
    pub async fn hottest(
        &self,
        policy: &HotKeyPolicy,
        min_reads: f64,
        limit: u64,
    ) -> Result<Vec<(String, f64)>, CacheError> {
        let mut conn = self.connection()?;
        let flat: Result<Vec<String>, _> = HOTTEST
            .key(self.hot_set_key())
            .key(self.hot_landmark_key())
            .arg(now_millis())
            .arg(policy.half_life.as_millis().max(1) as u64)
            .arg(min_reads)
            .arg(limit.min(i64::MAX as u64))
            .invoke_async(&mut conn)
            .await;
        let flat = flat.map_err(|e| self.classify(e))?;
        Ok(flat.chunks_exact(2).map(|pair| (pair[0].clone(), pair[1].parse().unwrap_or(0.0))).collect())
    }

    /// The decayed read count of `key` in the hot-key set (0 when absent), for tests and diagnostics.
    pub async fn hotness(&self, key: &str, policy: &HotKeyPolicy) -> Result<f64, CacheError> {
        let hot = self.hottest(policy, 0.0, u64::MAX).await?;
        Ok(hot.into_iter().find(|(k, _)| k == key).map(|(_, n)| n).unwrap_or(0.0))
    }

    /// Entry metadata of `keys`, in order (`None` for a missing or unreadable entry).
    pub async fn metadata(&self, keys: &[String]) -> Result<Vec<Option<EntryMeta>>, CacheError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(200) {
            let mut conn = self.connection()?;
            let mut invocation = METADATA.prepare_invoke();
            for key in chunk {
                invocation.key(self.redis_key(key));
            }
            let rows: Result<Vec<Vec<Option<String>>>, _> = invocation.invoke_async(&mut conn).await;
            let rows = rows.map_err(|e| self.classify(e))?;
            out.extend(rows.iter().map(|row| parse_meta(row)));
        }
        Ok(out)
    }

    /// Takes the refresh lock of `key` for `ttl`, unless the entry's write time is no longer
    /// `observed_at` (`None`: the entry was missing).
    pub async fn refresh_gate(
        &self,
        key: &str,
        observed_at: Option<u64>,
        token: &str,
        ttl: Duration,
    ) -> Result<RefreshGate, CacheError> {
        let mut conn = self.connection()?;
        let reply: Result<i64, _> = REFRESH_GATE
            .key(self.redis_key(key))
            .key(self.refresh_lock_key(key))
            .arg(observed_at.map(|at| at.to_string()).unwrap_or_default())
            .arg(token)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await;
        match reply.map_err(|e| self.classify(e))? {
            1 => Ok(RefreshGate::Acquired),
            2 => Ok(RefreshGate::AlreadyDone),
            _ => Ok(RefreshGate::Busy),
        }
    }

    /// `SET lock token NX PX ttl` on an internal lock key; true when taken.
    pub async fn try_lock(&self, lock_key: &str, token: &str, ttl: Duration) -> Result<bool, CacheError> {
        let mut conn = self.connection()?;
        let set: Result<Option<String>, _> = redis::cmd("SET")
            .arg(lock_key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await;
        set.map(|reply| reply.is_some()).map_err(|e| self.classify(e))
    }

    /// Releases an internal lock if `token` still owns it.
    pub async fn release(&self, lock_key: &str, token: &str) -> Result<(), CacheError> {
        let mut conn = self.connection()?;
        let released: Result<i64, _> = super::scripts::UNLOCK.key(lock_key).arg(token).invoke_async(&mut conn).await;
        released.map(|_| ()).map_err(|e| self.classify(e))
    }
}

fn parse_meta(row: &[Option<String>]) -> Option<EntryMeta> {
    let [ver, at, soft, neg] = row else { return None };
    let number = |f: &Option<String>| f.as_deref()?.parse::<u64>().ok();
    Some(EntryMeta {
        version: number(ver)?,
        written_at_ms: number(at).unwrap_or(0),
        fresh_until_ms: number(soft).unwrap_or(0),
        negative: neg.as_deref() == Some("1"),
    })
}
