//! The [`DeadLetters`] port on a Redis Stream: writes that could not be applied, kept with the
//! reason, never dropped.
//!
//! Stream key `RedisInstanceName + "\x1fdeadletter"` (internal: no key can reach it); each entry has
//! the fields `event` (the original message text, exactly as received), `reason`, `source` (where it
//! came from: stream entry id, or Event Hubs partition and sequence number), `attempts` and
//! `failedAt` (RFC 3339). Entries stay until someone replays or discards them.

use std::sync::Arc;

use async_trait::async_trait;
use redis::streams::{StreamId, StreamRangeReply};

use super::Redis;
use crate::ports::dead_letters::{DeadLetter, DeadLetterId, DeadLetters, Failed};
use crate::ports::{CacheError, Clock};

/// The dead-letter stream of one instance prefix. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RedisDeadLetters {
    redis: Redis,
    key: String,
    clock: Arc<dyn Clock>,
}

impl RedisDeadLetters {
    /// The dead-letter stream next to `redis`'s keys; `failedAt` comes from `clock`.
    pub fn new(redis: Redis, clock: Arc<dyn Clock>) -> Self {
        let key = redis.keys().dead_letter_stream();
        Self { redis, key, clock }
    }

    async fn add(
        &self,
        event: &str,
        reason: &str,
        source: &str,
        attempts: u64,
        failed_at: &str,
    ) -> Result<DeadLetterId, CacheError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.key)
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
            .arg(failed_at);
        let id: String = self.redis.query(cmd).await?;
        Ok(DeadLetterId::issued(id))
    }

    /// Copies a dead letter as it is (from an older release's stream); returns its new id.
    pub(crate) async fn record_as_is(&self, letter: &DeadLetter) -> Result<DeadLetterId, CacheError> {
        self.add(&letter.event, &letter.reason, &letter.source, letter.attempts, &letter.failed_at).await
    }
}

#[async_trait]
impl DeadLetters for RedisDeadLetters {
    async fn record(&self, failed: Failed<'_>) -> Result<DeadLetterId, CacheError> {
        let failed_at = self.clock.now().rfc3339();
        self.add(failed.event, failed.reason, failed.source, failed.attempts, &failed_at).await
    }

    async fn list(&self, count: usize, after: Option<&DeadLetterId>) -> Result<Vec<DeadLetter>, CacheError> {
        list_stream(&self.redis, &self.key, count, after).await
    }

    async fn get(&self, id: &DeadLetterId) -> Result<Option<DeadLetter>, CacheError> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&self.key).arg(id.as_str()).arg(id.as_str());
        let reply: StreamRangeReply = self.redis.query(cmd).await?;
        Ok(reply.ids.first().map(to_dead_letter))
    }

    async fn remove(&self, id: &DeadLetterId) -> Result<bool, CacheError> {
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(&self.key).arg(id.as_str());
        Ok(self.redis.query::<i64>(cmd).await? > 0)
    }

    async fn count(&self) -> Result<u64, CacheError> {
        let mut cmd = redis::cmd("XLEN");
        cmd.arg(&self.key);
        self.redis.query(cmd).await
    }
}

/// Up to `count` entries of the dead-letter-shaped stream `key`, after `after` if given.
pub(crate) async fn list_stream(
    redis: &Redis,
    key: &str,
    count: usize,
    after: Option<&DeadLetterId>,
) -> Result<Vec<DeadLetter>, CacheError> {
    let start = after.map(|id| format!("({id}")).unwrap_or_else(|| "-".to_string());
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(key).arg(start).arg("+").arg("COUNT").arg(count);
    let reply: StreamRangeReply = redis.query(cmd).await?;
    Ok(reply.ids.iter().map(to_dead_letter).collect())
}

fn to_dead_letter(entry: &StreamId) -> DeadLetter {
    let field = |name: &str| {
        entry.get::<Vec<u8>>(name).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
    };
    DeadLetter {
        id: DeadLetterId::issued(entry.id.clone()),
        event: field("event"),
        reason: field("reason"),
        source: field("source"),
        attempts: entry.get::<u64>("attempts").unwrap_or(0),
        failed_at: field("failedAt"),
    }
}
