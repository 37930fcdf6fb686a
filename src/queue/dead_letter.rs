//! The dead-letter stream: writes that could not be applied, kept with the reason, never dropped.
//!
//! Stream key `RedisInstanceName + "deadletter"`; each entry has the fields `event` (the original
//! message text, exactly as received), `reason`, `source` (where it came from: stream entry id, or
//! Event Hubs partition and sequence number), `attempts` and `failedAt` (RFC 3339). Entries stay
//! until someone replays or discards them (the `DeadLetters` function).

use redis::streams::{StreamId, StreamRangeReply};
use redis::{RedisError, Value};

use crate::cache::{CacheError, RedisCache};

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// The stream entry id (use it to replay or discard).
    pub id: String,
    /// The original message text.
    pub event: String,
    /// Why it could not be applied.
    pub reason: String,
    /// Where it came from.
    pub source: String,
    /// How many attempts were made.
    pub attempts: u64,
    /// When it was dead-lettered.
    #[serde(rename = "failedAt")]
    pub failed_at: String,
}

/// The dead-letter stream of one instance prefix.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    cache: RedisCache,
    key: String,
}

impl DeadLetters {
    /// The dead-letter stream next to `cache`'s keys.
    pub fn new(cache: RedisCache, instance_name: &str) -> Self {
        Self { cache, key: format!("{instance_name}deadletter") }
    }

    /// The stream's Redis key.
    pub fn stream_key(&self) -> &str {
        &self.key
    }

    /// Records a message that could not be applied. An error means it was NOT recorded: the caller
    /// must then keep the message (not acknowledge it) or fail the invocation.
    pub async fn record(&self, event: &str, reason: &str, source: &str, attempts: u64) -> Result<String, CacheError> {
        let mut conn = self.cache.raw_connection()?;
        let failed_at = crate::version::rfc3339_now();
        let id: Result<String, RedisError> = redis::cmd("XADD")
            .arg(&self.key)
            .arg("*")
            .arg("event")
            .arg(event)
            .arg("reason")
            .arg(reason)
            .arg("source")
            .arg(source)
            .arg("attempts")
            .arg(attempts)
            .arg("failedAt")
            .arg(&failed_at)
            .query_async(&mut conn)
            .await;
        let id = id.map_err(|e| self.cache.map_error(e))?;
        tracing::warn!(id = %id, source, reason, "write dead-lettered");
        Ok(id)
    }

    /// Up to `count` dead letters, oldest first, starting after `after` (an id) if given.
    pub async fn list(&self, count: usize, after: Option<&str>) -> Result<Vec<DeadLetter>, CacheError> {
        let mut conn = self.cache.raw_connection()?;
        let start = after.map(|id| format!("({id}")).unwrap_or_else(|| "-".to_string());
        let reply: Result<StreamRangeReply, RedisError> = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await;
        Ok(reply.map_err(|e| self.cache.map_error(e))?.ids.iter().map(to_dead_letter).collect())
    }

    /// The dead letter with `id`, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<DeadLetter>, CacheError> {
        let mut conn = self.cache.raw_connection()?;
        let reply: Result<StreamRangeReply, RedisError> =
            redis::cmd("XRANGE").arg(&self.key).arg(id).arg(id).query_async(&mut conn).await;
        Ok(reply.map_err(|e| self.cache.map_error(e))?.ids.first().map(to_dead_letter))
    }

    /// Removes a dead letter (after a replay, or to discard it). `Ok(false)` if it was not there.
    pub async fn remove(&self, id: &str) -> Result<bool, CacheError> {
        let mut conn = self.cache.raw_connection()?;
        let removed: Result<i64, RedisError> = redis::cmd("XDEL").arg(&self.key).arg(id).query_async(&mut conn).await;
        Ok(removed.map_err(|e| self.cache.map_error(e))? > 0)
    }

    /// How many dead letters there are.
    pub async fn count(&self) -> Result<u64, CacheError> {
        let mut conn = self.cache.raw_connection()?;
        let n: Result<u64, RedisError> = redis::cmd("XLEN").arg(&self.key).query_async(&mut conn).await;
        n.map_err(|e| self.cache.map_error(e))
    }
}

fn field(entry: &StreamId, name: &str) -> String {
    match entry.map.get(name) {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Int(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn to_dead_letter(entry: &StreamId) -> DeadLetter {
    DeadLetter {
        id: entry.id.clone(),
        event: field(entry, "event"),
        reason: field(entry, "reason"),
        source: field(entry, "source"),
        attempts: field(entry, "attempts").parse().unwrap_or(0),
        failed_at: field(entry, "failedAt"),
    }
}
