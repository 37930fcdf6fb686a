//! The [`Cache`] port on Redis: one entry hash per key, written and gated by Lua scripts that touch
//! only that key (so each is one round trip, valid on a cluster whatever the key).

use std::time::Duration;

use async_trait::async_trait;

use super::{Redis, entry, scripts};
use crate::domain::entry::CacheEntry;
use crate::domain::time::Timestamp;
use crate::ports::LockToken;
use crate::ports::cache::{Cache, CacheError, EntryMeta, Gate, HotKeyPolicy, Put, RefreshGate};

/// A `redis::Value` as text, if it is a non-empty string.
fn as_text(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) if !bytes.is_empty() => String::from_utf8(bytes.clone()).ok(),
        redis::Value::SimpleString(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

impl Redis {
    /// Reads the entry of `key` in one round trip. `Ok(None)` when nothing (usable) is cached.
    pub(crate) async fn get_entry(&self, key: &str) -> Result<Option<CacheEntry>, CacheError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys.entry(key)).arg(&entry::FIELDS[..]);
        let fields = self
            .run(|mut conn| async move {
                match cmd.query_async::<Vec<Option<String>>>(&mut conn).await {
                    Ok(fields) => Ok(Some(fields)),
                    // Not a cache entry under this key (see `keys`): a miss that is never cached over.
                    Err(e) if e.code() == Some("WRONGTYPE") => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(fields.and_then(|fields| entry::from_fields(&fields)))
    }

    /// Writes `entry` unless Redis holds a newer version, or the key is not a cache entry.
    pub(crate) async fn put_entry(&self, key: &str, entry: &CacheEntry, now: Timestamp) -> Result<Put, CacheError> {
        let data = entry.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
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
            .arg(now.as_millis());
        Ok(match self.invoke::<i64>(&invocation).await? {
            1 => Put::Written,
            0 => Put::KeptNewer,
            _ => Put::NotOurs,
        })
    }
}

#[async_trait]
impl Cache for Redis {
    async fn get(&self, key: &str) -> Result<Option<CacheEntry>, CacheError> {
        self.get_entry(key).await
    }

    async fn put(&self, key: &str, entry: &CacheEntry, now: Timestamp) -> Result<Put, CacheError> {
        self.put_entry(key, entry, now).await
    }

    async fn load_gate(&self, key: &str, token: &LockToken, ttl: Duration, now: Timestamp) -> Result<Gate, CacheError> {
        let mut invocation = scripts::LOAD_GATE.prepare_invoke();
        invocation.key(self.keys.entry(key)).arg(now.as_millis()).arg(token.as_str()).arg(ttl.as_millis() as u64);
        let reply: Vec<redis::Value> = self.invoke(&invocation).await?;
        Ok(match reply.first() {
            Some(redis::Value::Int(1)) => {
                let fields: Vec<Option<String>> = reply[1..].iter().map(as_text).collect();
                // No lock was taken: a damaged entry is reloaded, not waited on.
                entry::from_fields(&fields).map(Gate::Fresh).unwrap_or(Gate::Unreadable)
            }
            Some(redis::Value::Int(2)) => Gate::Acquired,
            Some(redis::Value::Int(4)) => Gate::NotOurs,
            _ => Gate::Busy,
        })
    }

    async fn unlock(&self, key: &str, token: &LockToken) -> Result<(), CacheError> {
        let mut invocation = scripts::UNLOCK.prepare_invoke();
        invocation.key(self.keys.entry(key)).arg(token.as_str()).arg("lk").arg("lkx");
        self.invoke::<i64>(&invocation).await.map(|_| ())
    }

    async fn get_counting_read(
        &self,
        key: &str,
        hot_keys: &HotKeyPolicy,
        now: Timestamp,
    ) -> Result<Option<CacheEntry>, CacheError> {
        self.get_and_bump(key, hot_keys, now).await
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

    async fn ping(&self) -> Result<Duration, CacheError> {
        Redis::ping(self).await
    }

    fn describe(&self) -> &str {
        Redis::describe(self)
    }
}
