//! The Lua scripts that make multi-step cache operations atomic on the Redis server.
//!
//! Each script touches exactly one key, the entry hash, so each is valid on Redis Cluster whatever
//! the key (one slot per per-key operation); the eviction script takes many entries at once, which
//! the caller groups by slot. Per-key coordination (the load lock, the
//! refresh lock) lives in fields of that hash, next to the entry it guards:
//!
//! | field | meaning |
//! | --- | --- |
//! | `lk`, `lkx` | load lock token and its expiry (ms) |
//! | `rk`, `rkx` | refresh lock token and its expiry (ms) |
//! | `inv`, `minv`, `invx` | the last eviction's stamp and version floor, and until when (ms) the hash keeps them (docs/invalidation.md) |
//!
//! A hash that holds only lock fields reads as a miss. Scripts never delete or overwrite a key of
//! another type: such a key is not the cache's (an older release's write-behind stream had a name a
//! key could take), so they answer "not ours" and the caller goes on without the cache.

use std::sync::LazyLock;

use redis::Script;

/// Lua helper: true when decimal version `a` is newer than `b` (compared as strings, length
/// first, so no precision is lost in Lua's doubles).
const NEWER: &str = r#"
local function newer(a, b) return #a > #b or (#a == #b and a > b) end
"#;

/// Lua helper: makes the key live at least until `at` (ms); never shortens its life.
const KEEP_UNTIL: &str = r#"
local function keep_until(key, now, at)
  local pttl = redis.call('PTTL', key)
  if pttl < 0 or now + pttl < at then redis.call('PEXPIREAT', key, at) end
end
"#;

/// Writes an entry unless the cached one has a newer version (invariant 2, docs/reliability.md),
/// or it was cached before the key's last eviction (docs/invalidation.md).
///
/// KEYS[1] entry; ARGV: version, data, at, soft, hard, negative (0/1), fail-safe (0/1), now (ms),
/// asof (when the value was read or written, on the version clock), tags (joined by U+001F),
/// feed channel ('' for none), the cache key, announce (0/1).
/// An equal version is rewritten: it is the same write, refreshed. Lock fields and the eviction
/// memory (`inv`, `minv`) are kept. A value read no later than the last eviction (`asof` ≤ `inv`)
/// is refused, unless it is the fail-safe marking a stale copy it already holds: a fail-safe write
/// is refused when the entry no longer holds that version (evicted hard, or rewritten). The feed hears the
/// write when `announce` is set or another version is replaced. Returns 1 when written, 0 when a
/// newer version was kept, 2 when refused by an eviction, -1 when the key is not a cache entry.
pub(crate) static PUT_IF_NOT_OLDER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{NEWER}
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'hash' and kind ~= 'none' then return -1 end
local e = redis.call('HMGET', KEYS[1], 'ver', 'inv', 'minv')
local cur = e[1]
if cur and newer(cur, ARGV[1]) then return 0 end
if e[3] and newer(e[3], ARGV[1]) then return 0 end
if ARGV[7] == '1' and cur ~= ARGV[1] then return 2 end
if ARGV[7] ~= '1' and e[2] and not newer(ARGV[9], e[2]) then return 2 end
redis.call('HDEL', KEYS[1], 'data', 'neg', 'fs', 'tags')
redis.call('HSET', KEYS[1], 'ver', ARGV[1], 'at', ARGV[3], 'soft', ARGV[4], 'hard', ARGV[5], 'asof', ARGV[9])
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'neg', '1') else redis.call('HSET', KEYS[1], 'data', ARGV[2]) end
if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'fs', '1') end
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'tags', ARGV[10]) end
local hold = tonumber(ARGV[5])
for _, f in ipairs({{'lkx', 'rkx', 'invx'}}) do
  local x = tonumber(redis.call('HGET', KEYS[1], f) or '')
  if x and x > hold then hold = x end
end
redis.call('PEXPIREAT', KEYS[1], hold)
if ARGV[11] ~= '' and (ARGV[13] == '1' or (cur and cur ~= ARGV[1])) then
  redis.call('PUBLISH', ARGV[11], 'w ' .. ARGV[1] .. ' ' .. ARGV[12])
end
return 1
"#
    ))
});

/// Evicts entries (docs/invalidation.md), one or many in one call: on a cluster, the keys of one
/// call share a slot.
///
/// KEYS: the entries; ARGV: how long a hash remembers an eviction at least (ms), feed channel (''
/// for none), then for each key, in the order of KEYS: stamp ('' for none), version floor (''
/// for none), hard (0/1), the cache key.
/// An entry turns stale (`soft` = 0, the stale copy kept for the fail-safe) when it was cached no
/// later than the stamp or holds a version below the floor; with `hard` its value goes too. The
/// stamp is remembered in `inv` (later writes of values read before it are refused), the floor in
/// `minv`. A key that is not a cache entry is left alone (and not announced). Returns how many
/// entries were evicted.
pub(crate) static EVICT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{NEWER}
local keep, channel = tonumber(ARGV[1]), ARGV[2]
-- Later writes keep a hash at least until then (their own expiry may be shorter).
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + keep
local hits = 0
for i, key in ipairs(KEYS) do
  local at = 2 + (i - 1) * 4
  local stamp, floor, hard, name = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  local kind = redis.call('TYPE', key).ok
  if kind == 'hash' or kind == 'none' then
    local e = redis.call('HMGET', key, 'ver', 'asof', 'inv', 'minv')
    if stamp ~= '' and (not e[3] or newer(stamp, e[3])) then redis.call('HSET', key, 'inv', stamp) end
    if floor ~= '' and (not e[4] or newer(floor, e[4])) then redis.call('HSET', key, 'minv', floor) end
    if e[1] then
      local asof = e[2] or e[1]
      if (stamp ~= '' and not newer(asof, stamp)) or (floor ~= '' and newer(floor, e[1])) then
        hits = hits + 1
        if hard == '1' then
          redis.call('HDEL', key, 'data', 'ver', 'neg', 'fs', 'asof', 'tags', 'at', 'soft', 'hard')
        else
          redis.call('HSET', key, 'soft', '0')
        end
      end
    end
    if stamp ~= '' or floor ~= '' then
      local pttl = redis.call('PTTL', key)
      if pttl < keep then redis.call('PEXPIRE', key, keep) end
      local invx = tonumber(redis.call('HGET', key, 'invx') or '0')
      if until_ms > invx then redis.call('HSET', key, 'invx', until_ms) end
    end
    if channel ~= '' then
      if stamp ~= '' then redis.call('PUBLISH', channel, 'e ' .. stamp .. ' ' .. name) end
      if floor ~= '' then redis.call('PUBLISH', channel, 'w ' .. floor .. ' ' .. name) end
    end
  end
end
return hits
"#
    ))
});

/// Raises invalidation clocks (docs/invalidation.md) and tells the feed.
///
/// KEYS[1] the clocks hash; ARGV: stamp, feed channel, message, then the fields to raise (tag
/// names, or U+001F "all"). A clock never moves back.
pub(crate) static RAISE_CLOCKS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{NEWER}
for i = 4, #ARGV do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if not cur or newer(ARGV[1], cur) then redis.call('HSET', KEYS[1], ARGV[i], ARGV[1]) end
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#
    ))
});

/// The gate a cache miss passes before it reads the store (stampede protection across processes).
///
/// KEYS[1] entry; ARGV: now (ms), lock token, lock TTL (ms).
/// Returns `{1, data, ver, at, soft, hard, neg, fs, tags, asof}` when a fresh entry appeared meanwhile,
/// `{2}` when this caller now holds the load lock, `{3}` when another caller holds it, `{4}` when
/// the key is not a cache entry (read the store, do not cache).
pub(crate) static LOAD_GATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{KEEP_UNTIL}
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'hash' and kind ~= 'none' then return {{4}} end
local now = tonumber(ARGV[1])
if kind == 'hash' then
  local e = redis.call('HMGET', KEYS[1], 'data', 'ver', 'at', 'soft', 'hard', 'neg', 'fs', 'tags', 'asof', 'lk', 'lkx')
  if e[2] and e[4] and tonumber(e[4]) > now then
    return {{1, e[1] or '', e[2], e[3] or '', e[4], e[5] or '', e[6] or '', e[7] or '', e[8] or '', e[9] or ''}}
  end
  if e[10] and tonumber(e[11] or '0') > now then return {{3}} end
end
local until_ms = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'lk', ARGV[2], 'lkx', until_ms)
keep_until(KEYS[1], now, until_ms)
return {{2}}
"#
    ))
});

/// Releases a lock held in fields of the entry if the caller still owns it.
/// KEYS[1] entry; ARGV: token, token field, expiry field.
pub(crate) static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[1] then return redis.call('HDEL', KEYS[1], ARGV[2], ARGV[3]) end
return 0
"#,
    )
});

/// Takes the refresh lock of a key if the entry is still the one the caller read.
///
/// KEYS[1] entry; ARGV: the entry's `at` as read (empty when it was missing), token, lock TTL (ms),
/// now (ms). Returns 1 acquired, 0 busy, 2 the entry changed meanwhile, 4 not a cache entry.
pub(crate) static REFRESH_GATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{KEEP_UNTIL}
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'hash' and kind ~= 'none' then return 4 end
local now = tonumber(ARGV[4])
local at, rk, rkx = false, false, false
if kind == 'hash' then
  local f = redis.call('HMGET', KEYS[1], 'at', 'rk', 'rkx', 'ver')
  if f[4] then at = f[1] end
  rk, rkx = f[2], f[3]
end
if (at or '') ~= ARGV[1] then return 2 end
if rk and tonumber(rkx or '0') > now then return 0 end
local until_ms = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'rk', ARGV[2], 'rkx', until_ms)
keep_until(KEYS[1], now, until_ms)
return 1
"#
    ))
});

/// Takes (or renews) a lease key only if it is free or already ours.
/// KEYS[1] lock; ARGV: token, TTL (ms). Returns 1 when held by the caller now.
pub(crate) static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// Deletes a lease key if the caller holds it. KEYS[1] lock; ARGV[1] token.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});
