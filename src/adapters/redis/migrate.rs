//! Upgrading from the release that kept its streams where a key could reach them.
//!
//! That release queued write-behind events in `RedisInstanceName + "writebehind"` and dead letters
//! in `RedisInstanceName + "deadletter"`. An upgraded instance moves every entry of those streams
//! into the internal ones (events keep their versions, so a duplicate — an old consumer applying
//! the same entry meanwhile — is harmless) and deletes each old stream once it is empty, atomically,
//! so an entry an old instance adds meanwhile is moved at the next pass. Until then the old key is
//! left alone by the cache (it is not a hash: reads of a key named like it go to the store uncached).
//! The old hot-key set is dropped: hotness rebuilds itself from reads.

use std::time::Duration;

use redis::streams::StreamRangeReply;
use tokio_util::sync::CancellationToken;

use super::Redis;
use super::dead_letters::{RedisDeadLetters, list_stream};
use super::streams::event_field;
use crate::domain::error_chain::Chain;
use crate::ports::{CacheError, LockToken};

/// How often an instance looks for old streams again (older instances may still be writing to
/// them during a rolling upgrade).
pub(crate) const EVERY: Duration = Duration::from_secs(60);
/// How soon to look again after Redis failed.
const AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Moves what an older release left behind, now and every [`EVERY`], until `shutdown`.
pub(crate) async fn keep_moving(redis: Redis, dead_letters: RedisDeadLetters, shutdown: CancellationToken) {
    loop {
        let pause = match move_legacy_until(&redis, &dead_letters, &shutdown).await {
            Ok(_) => EVERY,
            Err(e) => {
                tracing::debug!(error = %Chain(&e), "could not check for an older release's streams yet");
                AFTER_FAILURE
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Entries moved per round trip.
const CHUNK: usize = 100;

/// What a pass moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Write-behind events moved to the internal stream.
    pub events: u64,
    /// Dead letters moved to the internal dead-letter stream.
    pub dead_letters: u64,
}

/// Deletes `KEYS[1]` only if it is a stream with no entries left.
static DELETE_IF_EMPTY_STREAM: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('TYPE', KEYS[1]).ok == 'stream' and redis.call('XLEN', KEYS[1]) == 0 then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// One pass: moves what the old streams hold, drops the old hot-key set. One instance at a time
/// (a lease on `\x1fmigrate`), so two instances never copy the same dead letters.
pub async fn move_legacy(cache: &Redis, dead_letters: &RedisDeadLetters) -> Result<Moved, CacheError> {
    move_legacy_until(cache, dead_letters, &CancellationToken::new()).await
}

/// [`move_legacy`], stopping after the entry in hand once `stop` is cancelled (the lock is given
/// back; the next pass moves the rest).
async fn move_legacy_until(
    cache: &Redis,
    dead_letters: &RedisDeadLetters,
    stop: &CancellationToken,
) -> Result<Moved, CacheError> {
    let legacy = cache.keys().legacy();
    let moved = Moved::default();
    // A cheap look first: in the common case there is nothing to move.
    let exists = [&legacy.write_behind_stream, &legacy.dead_letter_stream, &legacy.hot_set, &legacy.hot_landmark]
        .into_iter()
        .map(|key| {
            let mut cmd = redis::cmd("EXISTS");
            cmd.arg(key);
            cmd
        })
        .collect();
    let present = cache.query_each(exists).await?;
    if present.into_iter().all(|n| matches!(n, Ok(redis::Value::Int(0)))) {
        return Ok(moved);
    }
    let (lock, token) = (cache.keys().internal("migrate"), LockToken::random());
    if !cache.take_lease(&lock, &token, LOCK_TTL).await? {
        return Ok(moved);
    }
    let mut moved = moved;
    let result = move_all(cache, dead_letters, &mut moved, stop).await;
    if let Err(e) = cache.give_back_lease(&lock, &token).await {
        tracing::debug!(error = %Chain(&e), "could not release the migration lock; it expires by itself");
    }
    result.map(|()| moved)
}

/// How long one pass may hold the migration lock.
const LOCK_TTL: Duration = Duration::from_secs(300);

async fn move_all(
    cache: &Redis,
    dead_letters: &RedisDeadLetters,
    moved: &mut Moved,
    stop: &CancellationToken,
) -> Result<(), CacheError> {
    let legacy = cache.keys().legacy();
    if cache.key_type(&legacy.write_behind_stream).await? == "stream" {
        moved.events = move_events(cache, &legacy.write_behind_stream, stop).await?;
        if stop.is_cancelled() {
            return Ok(());
        }
        let mut delete = DELETE_IF_EMPTY_STREAM.prepare_invoke();
        delete.key(&legacy.write_behind_stream);
        cache.invoke::<i64>(&delete).await?;
    }
    if cache.key_type(&legacy.dead_letter_stream).await? == "stream" {
        moved.dead_letters = move_dead_letters(cache, dead_letters, &legacy.dead_letter_stream, stop).await?;
        if stop.is_cancelled() {
            return Ok(());
        }
        let mut delete = DELETE_IF_EMPTY_STREAM.prepare_invoke();
        delete.key(&legacy.dead_letter_stream);
        cache.invoke::<i64>(&delete).await?;
    }
    for old in [&legacy.hot_set, &legacy.hot_landmark] {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(old);
        cache.query::<i64>(cmd).await?;
    }
    if *moved != Moved::default() {
        tracing::info!(
            events = moved.events,
            dead_letters = moved.dead_letters,
            "moved an older release's write-behind queue and dead letters to the internal streams"
        );
    }
    Ok(())
}

async fn move_events(cache: &Redis, old: &str, stop: &CancellationToken) -> Result<u64, CacheError> {
    let target = cache.keys().write_behind_stream();
    let mut moved = 0;
    loop {
        if stop.is_cancelled() {
            return Ok(moved);
        }
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(old).arg("-").arg("+").arg("COUNT").arg(CHUNK);
        let reply: StreamRangeReply = cache.query(cmd).await?;
        if reply.ids.is_empty() {
            return Ok(moved);
        }
        for entry in reply.ids.iter().take_while(|_| !stop.is_cancelled()) {
            // No event field: still moved, so the consumer dead-letters it with a reason.
            let event = event_field(entry);
            // Copy first, delete only once the copy is confirmed: a refused copy (Redis out of
            // memory) leaves the entry where it was. A copy whose delete fails is moved again at
            // the next pass, which is harmless (versions make a duplicate a no-op).
            let mut add = redis::cmd("XADD");
            add.arg(&target).arg("*").arg("event").arg(event);
            cache.query::<String>(add).await?;
            let mut delete = redis::cmd("XDEL");
            delete.arg(old).arg(&entry.id);
            cache.query::<i64>(delete).await?;
            moved += 1;
        }
    }
}

async fn move_dead_letters(
    cache: &Redis,
    dead_letters: &RedisDeadLetters,
    old: &str,
    stop: &CancellationToken,
) -> Result<u64, CacheError> {
    let mut moved = 0;
    loop {
        if stop.is_cancelled() {
            return Ok(moved);
        }
        let letters = list_stream(cache, old, CHUNK, None).await?;
        if letters.is_empty() {
            return Ok(moved);
        }
        for letter in letters.iter().take_while(|_| !stop.is_cancelled()) {
            dead_letters.record_as_is(letter).await?;
            let mut cmd = redis::cmd("XDEL");
            cmd.arg(old).arg(letter.id.as_str());
            cache.query::<i64>(cmd).await?;
            moved += 1;
        }
    }
}
