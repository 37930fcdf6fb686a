//! What refresh-ahead needs from Redis besides plain entries: the hot-key set, entry metadata in
//! bulk, and the per-key refresh lock.
//!
//! **Hot keys** live in one sorted set (`keys::Keys::hot_set`), scored by an exponentially decayed
//! read count ("forward decay"): a read at time `t` adds `2^((t - landmark) / half_life)`, so older
//! reads weigh exponentially less without ever touching them, and
//! `score / 2^((now - landmark) / half_life)` is the decayed count now. When the weights grow past
//! 2^64 the set is rescaled once and the landmark (`keys::Keys::hot_landmark`, same cluster slot)
//! moves. The set is trimmed to `RefreshAheadHotKeysMax` members, coldest first, in the same script,
//! so it stays bounded. A refresh-ahead read sends the entry read and the bump in one pipeline: one
//! round trip (on a cluster, one per node, in parallel).
//!
//! **Refresh locks** are fields of the entry hash (`rk`, `rkx`), taken only if the entry is still the
//! one the reader saw (same write time), so a refresh that another process already finished is not
//! redone.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{RedisResult, Script};

use super::connection::Connection;
use super::{CacheEntry, CacheError, RedisCache};
use crate::clock::Timestamp;

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

/// Counts one read in the hot-key set.
///
/// KEYS[1] hot set, KEYS[2] landmark (one slot); ARGV: now (ms), half-life (ms), max members, member.
static BUMP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local now = tonumber(ARGV[1])
local half = tonumber(ARGV[2])
local landmark = tonumber(redis.call('GET', KEYS[2]) or '')
if not landmark then
  landmark = now
  redis.call('SET', KEYS[2], now)
end
local x = (now - landmark) / half
if x > 64 then
  redis.call('ZUNIONSTORE', KEYS[1], 1, KEYS[1], 'WEIGHTS', 2 ^ (-x))
  redis.call('SET', KEYS[2], now)
  x = 0
end
redis.call('ZINCRBY', KEYS[1], 2 ^ x, ARGV[4])
local n = redis.call('ZCARD', KEYS[1])
local max = tonumber(ARGV[3])
if n > max then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - max - 1) end
return 1
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

impl RedisCache {
    /// Reads the entry of `key` and counts the read in the hot-key set, in one round trip (a
    /// pipeline of `HMGET` and the bump script).
    pub async fn get_and_bump(
        &self,
        key: &str,
        policy: &HotKeyPolicy,
        now: Timestamp,
    ) -> Result<Option<CacheEntry>, CacheError> {
        let keys = self.keys();
        let mut bump = BUMP.prepare_invoke();
        bump.key(keys.hot_set())
            .key(keys.hot_landmark())
            .arg(now.as_millis())
            .arg(policy.half_life.as_millis().max(1) as u64)
            .arg(policy.max_keys)
            .arg(key);
        let mut read = redis::cmd("HMGET");
        read.arg(keys.entry(key)).arg(&super::entry::FIELDS[..]);
        // The entry and the hot-key set are in different cluster slots: one pipeline on a single
        // endpoint, two commands at once on a cluster; one round trip either way.
        let bump_ref = &bump;
        let (read, bumped): (RedisResult<Vec<Option<String>>>, RedisResult<i64>) = self
            .run(|conn| async move {
                match conn {
                    Connection::Single(mut single) => {
                        let mut pipe = redis::pipe();
                        pipe.ignore_errors();
                        pipe.add_command(read);
                        pipe.invoke_script(bump_ref);
                        pipe.query_async(&mut single).await
                    }
                    Connection::Cluster(cluster) => {
                        let (mut first, mut second) = (cluster.clone(), cluster);
                        let (read, bumped) =
                            tokio::join!(read.query_async(&mut first), bump_ref.invoke_async(&mut second));
                        Ok((read, bumped))
                    }
                }
            })
            .await?;
        if let Err(e) = bumped {
            if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
                // First use on this server: the script runs (and is cached there) the long way.
                self.invoke::<i64>(&bump).await?;
            } else {
                tracing::debug!(error = %e, "could not count a refresh-ahead read in the hot-key set");
            }
        }
        match read {
            Ok(fields) => Ok(CacheEntry::from_fields(&fields)),
            Err(e) if e.code() == Some("WRONGTYPE") => Ok(None),
            Err(e) => Err(CacheError::Command(e.to_string())),
        }
    }

    /// Up to `limit` hot keys whose decayed read count is at least `min_reads`, hottest first,
    /// with their counts.
    pub async fn hottest(
        &self,
        policy: &HotKeyPolicy,
        min_reads: f64,
        limit: u64,
        now: Timestamp,
    ) -> Result<Vec<(String, f64)>, CacheError> {
        let mut invocation = HOTTEST.prepare_invoke();
        invocation
            .key(self.keys().hot_set())
            .key(self.keys().hot_landmark())
            .arg(now.as_millis())
            .arg(policy.half_life.as_millis().max(1) as u64)
            .arg(min_reads)
            .arg(limit.min(i64::MAX as u64));
        let flat: Vec<String> = self.invoke(&invocation).await?;
        Ok(flat.chunks_exact(2).map(|pair| (pair[0].clone(), pair[1].parse().unwrap_or(0.0))).collect())
    }

    /// The decayed read count of `key` in the hot-key set (0 when absent), for tests and diagnostics.
    pub async fn hotness(&self, key: &str, policy: &HotKeyPolicy, now: Timestamp) -> Result<f64, CacheError> {
        let hot = self.hottest(policy, 0.0, u64::MAX, now).await?;
        Ok(hot.into_iter().find(|(k, _)| k == key).map(|(_, n)| n).unwrap_or(0.0))
    }

    /// Entry metadata of `keys`, in order (`None` for a missing or unreadable entry): one pipeline
    /// of `HMGET`s per 200 keys.
    pub async fn metadata(&self, keys: &[String]) -> Result<Vec<Option<EntryMeta>>, CacheError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(200) {
            let cmds = chunk
                .iter()
                .map(|key| {
                    let mut cmd = redis::cmd("HMGET");
                    cmd.arg(self.redis_key(key)).arg("ver").arg("at").arg("soft").arg("neg");
                    cmd
                })
                .collect();
            let rows = self.query_each(cmds).await?;
            out.extend(rows.into_iter().map(|row| {
                row.ok()
                    .and_then(|value| redis::from_redis_value::<Vec<Option<String>>>(value).ok())
                    .and_then(|row| parse_meta(&row))
            }));
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
        now: Timestamp,
    ) -> Result<RefreshGate, CacheError> {
        let mut invocation = super::scripts::REFRESH_GATE.prepare_invoke();
        invocation
            .key(self.redis_key(key))
            .arg(observed_at.map(|at| at.to_string()).unwrap_or_default())
            .arg(token)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(now.as_millis());
        Ok(match self.invoke::<i64>(&invocation).await? {
            1 => RefreshGate::Acquired,
            2 | 4 => RefreshGate::AlreadyDone,
            _ => RefreshGate::Busy,
        })
    }

    /// Releases the refresh lock of `key` if `token` still owns it.
    pub async fn release_refresh(&self, key: &str, token: &str) -> Result<(), CacheError> {
        let mut invocation = super::scripts::UNLOCK.prepare_invoke();
        invocation.key(self.redis_key(key)).arg(token).arg("rk").arg("rkx");
        self.invoke::<i64>(&invocation).await.map(|_| ())
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
