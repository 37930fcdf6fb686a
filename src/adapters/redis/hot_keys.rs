//! What refresh-ahead needs from Redis besides plain entries: the hot-key set and entry metadata in
//! bulk (the per-key refresh lock is a script in `scripts`).
//!
//! **Hot keys** live in one sorted set (`Keys::hot_set`), scored by an exponentially decayed
//! read count ("forward decay"): a read at time `t` adds `2^((t - landmark) / half_life)`, so older
//! reads weigh exponentially less without ever touching them, and
//! `score / 2^((now - landmark) / half_life)` is the decayed count now. When the weights grow past
//! 2^64 the set is rescaled once and the landmark (`keys::Keys::hot_landmark`, same cluster slot)
//! moves. The set is trimmed to `RefreshAheadHotKeysMax` members, coldest first, in the same script,
//! so it stays bounded. Reads are counted in the process and sent in batches (`bump_reads`): per
//! second of reading, one script call per `BUMP_CHUNK` keys, sent one after another, so that a
//! flush never has more than one call on the shared connection (requests' calls queue behind
//! whatever is in flight there).

use std::sync::LazyLock;

use redis::Script;

use super::Redis;
use crate::domain::time::Timestamp;
use crate::ports::cache::{CacheError, EntryMeta, HotKeyPolicy};

/// Keys counted per script call. Small enough that a call keeps Redis busy well under a
/// millisecond (each key is one `ZINCRBY`), large enough that a flush of the most keys that may
/// wait (`RefreshAheadHotKeysMax`, 10,000 by default) is a few dozen round trips.
const BUMP_CHUNK: usize = 256;

/// Counts reads of members in the hot-key set, then trims the set once.
///
/// KEYS[1] hot set, KEYS[2] landmark (one slot); ARGV: now (ms), half-life (ms), max members, then
/// for each member: the member and how many reads to count.
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
local weight = 2 ^ x
for i = 4, #ARGV - 1, 2 do
  redis.call('ZINCRBY', KEYS[1], (tonumber(ARGV[i + 1]) or 1) * weight, ARGV[i])
end
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

impl Redis {
    /// Counts `reads` reads of each key in the hot-key set (reads the near cache served): one
    /// script call per [`BUMP_CHUNK`] keys, one at a time. Stops at the first call that fails
    /// (Redis is down or slow: the rest would fail alike, and only add to its load).
    pub(crate) async fn bump_reads(
        &self,
        counts: &[(String, u64)],
        policy: &HotKeyPolicy,
        now: Timestamp,
    ) -> Result<(), CacheError> {
        let keys = self.keys();
        for chunk in counts.chunks(BUMP_CHUNK) {
            let mut bump = BUMP.prepare_invoke();
            bump.key(keys.hot_set())
                .key(keys.hot_landmark())
                .arg(now.as_millis())
                .arg(policy.half_life.as_millis().max(1) as u64)
                .arg(policy.max_keys);
            for (key, reads) in chunk {
                bump.arg(key).arg(*reads);
            }
            self.invoke::<i64>(&bump).await?;
        }
        Ok(())
    }

    /// Up to `limit` hot keys whose decayed read count is at least `min_reads`, hottest first,
    /// with their counts.
    pub(crate) async fn hottest_keys(
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
        let hot = self.hottest_keys(policy, 0.0, u64::MAX, now).await?;
        Ok(hot.into_iter().find(|(k, _)| k == key).map(|(_, n)| n).unwrap_or(0.0))
    }

    /// Entry metadata of `keys`, in order (`None` for a missing or unreadable entry): one pipeline
    /// of `HMGET`s per 200 keys.
    pub(crate) async fn entry_metadata(&self, keys: &[String]) -> Result<Vec<Option<EntryMeta>>, CacheError> {
        let rows = self.entry_fields(keys, &["ver", "at", "soft", "neg"]).await?;
        Ok(rows.into_iter().map(|row| row.and_then(|row| parse_meta(&row))).collect())
    }
}

fn parse_meta(row: &[Option<String>]) -> Option<EntryMeta> {
    let [ver, at, soft, neg] = row else { return None };
    let number = |f: &Option<String>| f.as_deref()?.parse::<u64>().ok();
    Some(EntryMeta {
        version: number(ver)?,
        written_at: Timestamp::from_millis(number(at).unwrap_or(0)),
        fresh_until: Timestamp::from_millis(number(soft).unwrap_or(0)),
        negative: neg.as_deref() == Some("1"),
    })
}
