//! The dead-letter stream: writes that could not be applied, kept with the reason, never dropped.
//!
//! Stream key `RedisInstanceName + "\x1fdeadletter"` (internal: no key can reach it); each entry has the fields `event` (the original
//! message text, exactly as received), `reason`, `source` (where it came from: stream entry id, or
//! Event Hubs partition and sequence number), `attempts` and `failedAt` (RFC 3339). Entries stay
//! until someone replays or discards them (the `DeadLetters` function).

use std::sync::Arc;

use redis::Value;
use redis::streams::{StreamId, StreamRangeReply};

use crate::cache::{CacheError, RedisCache};
use crate::clock::Clock;

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
    time: Arc<dyn Clock>,
}

/// A stream entry id as Redis writes them: `<ms>-<seq>`. Anything else is refused before it reaches
/// Redis, so a mistyped id is a clear `400`, not a Redis error that looks like an outage.
pub fn parse_id(raw: &str) -> Option<String> {
    let (ms, seq) = raw.trim().split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    (digits(ms) && digits(seq) && ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok())
        .then(|| format!("{ms}-{seq}"))
}

impl DeadLetters {
    /// The dead-letter stream next to `cache`'s keys.
    pub fn new(cache: RedisCache, time: Arc<dyn Clock>) -> Self {
        let key = cache.keys().dead_letter_stream();
        Self { cache, key, time }
    }

    /// The stream's Redis key.
    pub fn stream_key(&self) -> &str {
        &self.key
    }

    /// Records a message that could not be applied. An error means it was NOT recorded: the caller
    /// must then keep the message (not acknowledge it) or fail the invocation.
    pub async fn record(&self, event: &str, reason: &str, source: &str, attempts: u64) -> Result<String, CacheError> {
        let failed_at = self.time.now().rfc3339();
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
            .arg(&failed_at);
        let id: String = self.cache.query(cmd).await?;
        tracing::warn!(id = %id, source = ?source, reason = ?reason, "write dead-lettered");
        Ok(id)
    }

    /// Copies a dead letter as it is (from an older release's stream); returns its new id.
    pub(crate) async fn record_as_is(&self, letter: &DeadLetter) -> Result<String, CacheError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.key)
            .arg("*")
            .arg("event")
            .arg(&letter.event)
            .arg("reason")
            .arg(&letter.reason)
            .arg("source")
            .arg(&letter.source)
            .arg("attempts")
            .arg(letter.attempts)
            .arg("failedAt")
            .arg(&letter.failed_at);
        self.cache.query(cmd).await
    }

    /// Up to `count` dead letters, oldest first, starting after `after` (an id) if given.
    pub async fn list(&self, count: usize, after: Option<&str>) -> Result<Vec<DeadLetter>, CacheError> {
        list_stream(&self.cache, &self.key, count, after).await
    }

    /// The dead letter with `id`, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<DeadLetter>, CacheError> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&self.key).arg(id).arg(id);
        let reply: StreamRangeReply = self.cache.query(cmd).await?;
        Ok(reply.ids.first().map(to_dead_letter))
    }

    /// Removes a dead letter (after a replay, or to discard it). `Ok(false)` if it was not there.
    pub async fn remove(&self, id: &str) -> Result<bool, CacheError> {
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(&self.key).arg(id);
        Ok(self.cache.query::<i64>(cmd).await? > 0)
    }

    /// How many dead letters there are.
    pub async fn count(&self) -> Result<u64, CacheError> {
        let mut cmd = redis::cmd("XLEN");
        cmd.arg(&self.key);
        self.cache.query(cmd).await
    }
}

/// Up to `count` entries of the dead-letter-shaped stream `key`, after `after` if given.
pub(crate) async fn list_stream(
    cache: &RedisCache,
    key: &str,
    count: usize,
    after: Option<&str>,
) -> Result<Vec<DeadLetter>, CacheError> {
    let start = after.map(|id| format!("({id}")).unwrap_or_else(|| "-".to_string());
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(key).arg(start).arg("+").arg("COUNT").arg(count);
    let reply: StreamRangeReply = cache.query(cmd).await?;
    Ok(reply.ids.iter().map(to_dead_letter).collect())
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

#[cfg(test)]
mod tests {
    use super::parse_id;

    #[test]
    fn only_stream_ids_are_ids() {
        assert_eq!(parse_id("1700000000000-0").as_deref(), Some("1700000000000-0"));
        assert_eq!(parse_id(" 1-2 ").as_deref(), Some("1-2"));
        for bad in ["abc", "1", "1-", "-1", "1-2-3", "1-x", "\u{ff}", "99999999999999999999999-0", "+1-0", "1 -0"] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }
}
