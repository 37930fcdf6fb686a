//! The Lua scripts that make multi-step cache operations atomic on the Redis server.

use std::sync::LazyLock;

use redis::Script;

/// Writes an entry unless the cached one has a newer version (DESIGN.md invariant 2).
///
/// KEYS[1] entry; ARGV: version, data, at, soft, hard, negative (0/1), fail-safe (0/1).
/// Versions are compared as decimal strings (length first), so no precision is lost in Lua's
/// doubles. An equal version is rewritten: it is the same write, refreshed. A key holding some other
/// Redis type (not ours) is replaced. Returns 1 when written, 0 when a newer version was kept.
pub(crate) static PUT_IF_NOT_OLDER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'hash' then
  local cur = redis.call('HGET', KEYS[1], 'ver')
  local v = ARGV[1]
  if cur and (#cur > #v or (#cur == #v and cur > v)) then return 0 end
end
if kind ~= 'none' then redis.call('DEL', KEYS[1]) end
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'ver', ARGV[1], 'at', ARGV[3], 'soft', ARGV[4], 'hard', ARGV[5], 'neg', '1')
else
  redis.call('HSET', KEYS[1], 'ver', ARGV[1], 'data', ARGV[2], 'at', ARGV[3], 'soft', ARGV[4], 'hard', ARGV[5])
end
if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'fs', '1') end
redis.call('PEXPIREAT', KEYS[1], ARGV[5])
return 1
"#,
    )
});

/// The gate a cache miss passes before it reads the store (stampede protection across processes).
///
/// KEYS[1] entry, KEYS[2] lock; ARGV: now (ms), lock token, lock TTL (ms).
/// Returns `{1, data, ver, at, soft, hard, neg, fs}` when a fresh entry appeared meanwhile,
/// `{2}` when this caller now holds the load lock, `{3}` when another caller holds it.
pub(crate) static LOAD_GATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  local e = redis.call('HMGET', KEYS[1], 'data', 'ver', 'at', 'soft', 'hard', 'neg', 'fs')
  if e[2] and e[4] and tonumber(e[4]) > tonumber(ARGV[1]) then
    return {1, e[1] or '', e[2], e[3] or '', e[4], e[5] or '', e[6] or '', e[7] or ''}
  end
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {2} end
return {3}
"#,
    )
});

/// Releases a lock only if the caller still owns it. KEYS[1] lock; ARGV[1] token.
pub(crate) static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});
