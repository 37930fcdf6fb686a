//! The [`Cache`] port on Redis: one entry hash per key, written and gated by Lua scripts that touch
//! only that key (so each is one round trip, valid on a cluster whatever the key).

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionLike;

use super::invalidation::{ALL_FIELD, covered_by};
use super::{Redis, entry, scripts};
use crate::domain::entry::CacheEntry;
use crate::domain::error_chain::Chain;
use crate::domain::time::Timestamp;
use crate::ports::LockToken;
use crate::ports::cache::{Cache, CacheError, EntryMeta, Eviction, Gate, HotKeyPolicy, Put, RefreshGate};

/// The fields of an entry hash from a reply, each moved out as text (`None` where absent or
/// empty), or `None` when one of them is not UTF-8: such an entry is unreadable as a whole (a
/// field quietly dropped, say its tags, would let an invalidation miss it), and is read again
/// from the store and written over.
fn entry_texts(fields: impl IntoIterator<Item = redis::Value>) -> Option<Vec<Option<String>>> {
    fields
        .into_iter()
        .map(|field| match field {
            redis::Value::BulkString(bytes) if bytes.is_empty() => Some(None),
            redis::Value::BulkString(bytes) => String::from_utf8(bytes).ok().map(Some),
            redis::Value::SimpleString(text) => Some((!text.is_empty()).then_some(text)),
            _ => Some(None),
        })
        .collect()
}

impl Redis {
    /// Runs `read` with the invalidation clocks at hand: while the feed is live this instance's
    /// copy is current; otherwise the clocks are fetched at the same time as `read` (sent together:
    /// one round trip on one connection).
    pub(crate) async fn read_with_clocks<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, CacheError>>,
    ) -> Result<T, CacheError> {
        if self.feed().live_generation().is_some() {
            return read.await;
        }
        let (value, clocks) = tokio::join!(read, self.fetch_clocks());
        let value = value?;
        self.merge_clocks(&clocks?);
        Ok(value)
    }

    /// `entry` unless an invalidation covers it (then its stale copy, see `invalidation`).
    pub(crate) async fn checked(&self, key: &str, entry: Option<CacheEntry>) -> Option<CacheEntry> {
        let entry = entry?;
        let floor = self.feed().floor(&entry.tags);
        Some(self.unless_invalidated(key, entry, floor).await)
    }

    /// Reads the entry of `key` in one round trip. `Ok(None)` when nothing (usable) is cached.
    pub(crate) async fn get_entry(&self, key: &str) -> Result<Option<CacheEntry>, CacheError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys.entry(key)).arg(&entry::FIELDS[..]);
        let read = self.run(|mut conn| async move {
            // The reply is taken apart as it came: each field is moved out of it, not copied
            // through a checked and converted reply (this is every Redis hit).
            let reply = match conn.req_packed_command(&cmd).await {
                Ok(redis::Value::ServerError(e)) => Err(redis::RedisError::from(e)),
                other => other,
            };
            match reply {
                // A field that is not UTF-8 makes the entry unreadable: read as a miss, whose
                // load gate finds it damaged, reloads it and writes it over.
                Ok(redis::Value::Array(fields)) => Ok(entry_texts(fields)),
                Ok(_) => Err(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "HMGET of an entry answered something other than a list of fields",
                ))),
                // Not a cache entry under this key (see `keys`): a miss that is never cached over.
                Err(e) if e.code() == Some("WRONGTYPE") => Ok(None),
                Err(e) => Err(e),
            }
        });
        let fields = self.read_with_clocks(read).await?;
        Ok(self.checked(key, fields.and_then(entry::from_fields)).await)
    }

    /// `fields` of the entry hashes of `keys`, in order (`None` where a key is not a hash or the
    /// reply is unreadable): one pipeline of `HMGET`s per 200 keys (on a cluster, sent to every
    /// node at once).
    pub(crate) async fn entry_fields(
        &self,
        keys: &[String],
        fields: &[&str],
    ) -> Result<Vec<Option<Vec<Option<String>>>>, CacheError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(200) {
            let cmds = chunk
                .iter()
                .map(|key| {
                    let mut cmd = redis::cmd("HMGET");
                    cmd.arg(self.keys.entry(key)).arg(fields);
                    cmd
                })
                .collect();
            let rows = self.query_each(cmds).await?;
            out.extend(rows.into_iter().map(|row| match row {
                Ok(redis::Value::Array(fields)) => entry_texts(fields),
                _ => None,
            }));
        }
        Ok(out)
    }

    /// Reads the entries of `keys` (in order), with the invalidation clocks at hand. Entries an
    /// invalidation covers come back stale, and are marked stale in their hashes in few calls
    /// ([`Redis::evict_entries`]), not one per entry at once.
    pub(crate) async fn get_entries(&self, keys: &[String]) -> Result<Vec<Option<CacheEntry>>, CacheError> {
        let rows = self.read_with_clocks(self.entry_fields(keys, &entry::FIELDS)).await?;
        let mut entries: Vec<Option<CacheEntry>> =
            rows.into_iter().map(|row| row.and_then(entry::from_fields)).collect();
        let mut covered = Vec::new();
        for (key, found) in keys.iter().zip(entries.iter_mut()) {
            let Some(entry) = found else { continue };
            let floor = self.feed().floor(&entry.tags);
            if covered_by(entry, floor) {
                entry.fresh_until = Timestamp::EPOCH;
                covered.push((key.clone(), Eviction { stamp: Some(floor), below_version: None, hard: false }));
            }
        }
        let marked = self.evict_entries(&covered, false).await;
        if let Some(Err(e)) = marked.iter().find(|m| m.is_err()) {
            let failed = marked.iter().filter(|m| m.is_err()).count();
            tracing::debug!(entries = failed, error = %Chain(e), "could not mark invalidated entries stale in Redis; the next read tries again");
        }
        Ok(entries)
    }

    /// Writes `entry` unless Redis holds a newer version, or the key is not a cache entry.
    pub(crate) async fn put_entry(&self, key: &str, entry: &CacheEntry, now: Timestamp) -> Result<Put, CacheError> {
        let data = entry.value.as_ref().map_or("", |v| v.as_str());
        let stale_until = entry.stale_until.max(entry.fresh_until).max(now.plus(Duration::from_millis(1)));
        let mut invocation = scripts::PUT_IF_NOT_OLDER.prepare_invoke();
        invocation
            .key(self.keys.entry(key))
            .arg(entry.version)
            .arg(data)
            .arg(entry.written_at.as_millis())
            .arg(entry.fresh_until.as_millis())
            .arg(stale_until.as_millis())
            .arg(if entry.value.is_none() { "1" } else { "0" })
            .arg(if entry.fail_safe { "1" } else { "0" })
            .arg(now.as_millis())
            .arg(entry.as_of)
            .arg(entry::join_tags(&entry.tags))
            .arg(self.keys.feed_channel())
            .arg(key)
            // A write (cached as of its own version) is announced even over no entry: other
            // instances may hold an older copy in memory.
            .arg(if entry.as_of == entry.version { "1" } else { "0" });
        Ok(match self.invoke::<i64>(&invocation).await? {
            1 => Put::Written,
            0 => Put::KeptNewer,
            2 => Put::Evicted,
            _ => Put::NotOurs,
        })
    }
}

#[async_trait]
impl Cache for Redis {
    async fn get(&self, key: &str) -> Result<Option<CacheEntry>, CacheError> {
        self.get_entry(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<CacheEntry>>, CacheError> {
        self.get_entries(keys).await
    }

    async fn put(&self, key: &str, entry: &CacheEntry, now: Timestamp) -> Result<Put, CacheError> {
        self.put_entry(key, entry, now).await
    }

    async fn load_gate(&self, key: &str, token: &LockToken, ttl: Duration, now: Timestamp) -> Result<Gate, CacheError> {
        let mut invocation = scripts::LOAD_GATE.prepare_invoke();
        invocation.key(self.keys.entry(key)).arg(now.as_millis()).arg(token.as_str()).arg(ttl.as_millis() as u64);
        // Twice at most: a fresh entry that an invalidation covers is evicted in its hash, then the
        // gate is passed again.
        for _ in 0..2 {
            let reply: Vec<redis::Value> = self.read_with_clocks(self.invoke(&invocation)).await?;
            let mut reply = reply.into_iter();
            return Ok(match reply.next() {
                Some(redis::Value::Int(1)) => {
                    // No lock was taken: a damaged entry is reloaded, not waited on.
                    let Some(found) = entry_texts(reply).and_then(entry::from_fields) else {
                        return Ok(Gate::Unreadable);
                    };
                    match self.checked(key, Some(found)).await {
                        Some(entry) if entry.is_fresh(now) => Gate::Fresh(entry),
                        _ => continue,
                    }
                }
                Some(redis::Value::Int(2)) => Gate::Acquired,
                Some(redis::Value::Int(4)) => Gate::NotOurs,
                _ => Gate::Busy,
            });
        }
        Ok(Gate::Unreadable)
    }

    async fn unlock(&self, key: &str, token: &LockToken) -> Result<(), CacheError> {
        let mut invocation = scripts::UNLOCK.prepare_invoke();
        invocation.key(self.keys.entry(key)).arg(token.as_str()).arg("lk").arg("lkx");
        self.invoke::<i64>(&invocation).await.map(|_| ())
    }

    async fn hottest(
        &self,
        hot_keys: &HotKeyPolicy,
        min_reads: f64,
        limit: u64,
        now: Timestamp,
    ) -> Result<Vec<(String, f64)>, CacheError> {
        self.hottest_keys(hot_keys, min_reads, limit, now).await
    }

    async fn metadata(&self, keys: &[String]) -> Result<Vec<Option<EntryMeta>>, CacheError> {
        self.entry_metadata(keys).await
    }

    async fn refresh_gate(
        &self,
        key: &str,
        observed: Option<Timestamp>,
        token: &LockToken,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<RefreshGate, CacheError> {
        let mut invocation = scripts::REFRESH_GATE.prepare_invoke();
        invocation
            .key(self.keys.entry(key))
            .arg(observed.map(|at| at.as_millis().to_string()).unwrap_or_default())
            .arg(token.as_str())
            .arg(ttl.as_millis().max(1) as u64)
            .arg(now.as_millis());
        Ok(match self.invoke::<i64>(&invocation).await? {
            1 => RefreshGate::Acquired,
            2 | 4 => RefreshGate::AlreadyDone,
            _ => RefreshGate::Busy,
        })
    }

    async fn release_refresh(&self, key: &str, token: &LockToken) -> Result<(), CacheError> {
        let mut invocation = scripts::UNLOCK.prepare_invoke();
        invocation.key(self.keys.entry(key)).arg(token.as_str()).arg("rk").arg("rkx");
        self.invoke::<i64>(&invocation).await.map(|_| ())
    }

    async fn count_reads(
        &self,
        counts: &[(String, u64)],
        hot_keys: &HotKeyPolicy,
        now: Timestamp,
    ) -> Result<(), CacheError> {
        self.bump_reads(counts, hot_keys, now).await
    }

    async fn evict(&self, key: &str, eviction: &Eviction, _now: Timestamp) -> Result<(), CacheError> {
        self.evict_entry(key, eviction.stamp, eviction.below_version, eviction.hard, true).await
    }

    async fn evict_many(&self, evictions: &[(String, Eviction)], _now: Timestamp) -> Vec<Result<(), CacheError>> {
        self.evict_entries(evictions, true).await
    }

    async fn invalidate_tags(&self, tags: &[String], stamp: u64) -> Result<(), CacheError> {
        self.raise_clocks(tags, stamp).await
    }

    async fn invalidate_all(&self, stamp: u64) -> Result<(), CacheError> {
        self.raise_clocks(&[ALL_FIELD.to_string()], stamp).await
    }

    async fn ping(&self) -> Result<Duration, CacheError> {
        Redis::ping(self).await
    }

    fn describe(&self) -> &str {
        Redis::describe(self)
    }
}
