//! The default write-behind queue: a Redis Stream, drained in-process by a consumer group.
//!
//! * Producer: `XADD RedisInstanceName+"writebehind" * event <json>`; the reply is the durable
//!   acceptance (as durable as the Redis server's persistence and replication make it).
//! * Consumer ([`StreamConsumer`]): reads batches with `XREADGROUP` in group `appliers`, applies
//!   them with the same code as `EventHubConsumer`, and `XACK`s + `XDEL`s an entry only once its
//!   write is in the store (or superseded, or recorded as a dead letter). Entries left pending by a
//!   consumer that crashed, or that failed transiently, are taken over with `XAUTOCLAIM` once idle
//!   for `claim_idle`; an entry delivered `max_deliveries` times without success goes to the
//!   dead-letter stream. So nothing acknowledged to a caller is lost, and nothing blocks the stream.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::{RedisError, Value};

use super::dead_letter::DeadLetters;
use super::{QueueError, WriteEvent, WriteQueue};
use crate::cache::{CacheError, RedisCache};
use crate::patterns::Patterns;
use crate::patterns::apply_writes::{ApplyOptions, ApplyReport, Delivery, Outcome};

/// The consumer group every handler instance joins.
pub const GROUP: &str = "appliers";

/// The Redis Stream queue (producer side).
#[derive(Clone, Debug)]
pub struct RedisStreamQueue {
    cache: RedisCache,
    key: String,
}

impl RedisStreamQueue {
    /// The stream `RedisInstanceName + "writebehind"` on `cache`'s connection.
    pub fn new(cache: RedisCache) -> Self {
        let key = format!("{}writebehind", cache.prefix());
        Self { cache, key }
    }

    /// The stream's Redis key.
    pub fn stream_key(&self) -> &str {
        &self.key
    }
}

fn queue_error(e: CacheError) -> QueueError {
    match e {
        CacheError::Unavailable(message) => {
            QueueError::Unavailable { message, retry_after: Some(Duration::from_secs(2)) }
        }
        CacheError::Command(message) => QueueError::Rejected(message),
    }
}

#[async_trait]
impl WriteQueue for RedisStreamQueue {
    async fn publish(&self, event: &WriteEvent) -> Result<(), QueueError> {
        let mut conn = self.cache.raw_connection().map_err(queue_error)?;
        let id: Result<String, RedisError> =
            redis::cmd("XADD").arg(&self.key).arg("*").arg("event").arg(event.to_json()).query_async(&mut conn).await;
        id.map(|_| ()).map_err(|e| queue_error(self.cache.map_error(e)))
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.cache.ping().await.map(|_| ()).map_err(queue_error)
    }

    fn kind(&self) -> &'static str {
        "redis-streams"
    }
}

/// How the in-process consumer behaves.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// This consumer's name in the group (unique per process).
    pub name: String,
    /// Entries read per batch.
    pub batch_size: usize,
    /// How long one `XREADGROUP` waits for new entries.
    pub block: Duration,
    /// An entry pending this long is taken over (its consumer crashed, or it failed transiently).
    pub claim_idle: Duration,
    /// After this many deliveries without success an entry is dead-lettered.
    pub max_deliveries: u64,
    /// How keys are applied.
    pub apply: ApplyOptions,
}

impl ConsumerConfig {
    /// Defaults, with a consumer name unique to this process.
    pub fn new() -> Self {
        let host = std::env::var("WEBSITE_INSTANCE_ID")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "local".into());
        let short_host: String = host.chars().take(16).collect();
        Self {
            name: format!("{short_host}-{}-{:x}", std::process::id(), crate::version::now_micros() & 0xffff_ffff),
            batch_size: 100,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            apply: ApplyOptions { concurrency: 16, budget: Duration::from_secs(5) },
        }
    }
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// One stream entry handed to this consumer.
#[derive(Debug, Clone)]
struct Entry {
    id: String,
    event: String,
    deliveries: u64,
}

/// The in-process consumer of the Redis Stream queue.
pub struct StreamConsumer {
    patterns: Patterns,
    /// A connection of its own: blocking reads must not stall the shared connection.
    conn: RedisCache,
    key: String,
    dead_letters: DeadLetters,
    config: ConsumerConfig,
}

impl StreamConsumer {
    /// A consumer applying with `patterns`, reading over `conn` (a dedicated connection).
    pub fn new(patterns: Patterns, conn: RedisCache, config: ConsumerConfig) -> Self {
        let key = format!("{}writebehind", conn.prefix());
        let dead_letters = DeadLetters::new(conn.clone(), conn.prefix());
        Self { patterns, conn, key, dead_letters, config }
    }

    /// Runs until the task is dropped or aborted; errors are logged and retried with back-off.
    pub async fn run(self) {
        tracing::info!(stream = %self.key, group = GROUP, consumer = %self.config.name, "write-behind consumer started");
        let mut pause = Duration::from_millis(200);
        loop {
            match self.run_once().await {
                Ok(_) => pause = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(error = %e, "write-behind consumer: Redis call failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// One round: take over idle pending entries, or read new ones; apply; acknowledge.
    pub async fn run_once(&self) -> Result<ApplyReport, CacheError> {
        self.ensure_group().await?;
        let mut entries = self.claim_idle().await?;
        if entries.is_empty() {
            entries = self.read_new().await?;
        }
        if entries.is_empty() {
            return Ok(ApplyReport::default());
        }
        self.process(entries).await
    }

    async fn ensure_group(&self) -> Result<(), CacheError> {
        let mut conn = self.conn.raw_connection()?;
        let created: Result<String, RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.key)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(self.conn.map_error(e)),
        }
    }

    async fn claim_idle(&self) -> Result<Vec<Entry>, CacheError> {
        let mut conn = self.conn.raw_connection()?;
        let reply: Result<Value, RedisError> = redis::cmd("XAUTOCLAIM")
            .arg(&self.key)
            .arg(GROUP)
            .arg(&self.config.name)
            .arg(self.config.claim_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(self.config.batch_size)
            .query_async(&mut conn)
            .await;
        let reply = reply.map_err(|e| self.conn.map_error(e))?;
        let Value::Array(parts) = reply else { return Ok(Vec::new()) };
        let mut entries = parts.get(1).map(parse_entries).unwrap_or_default();
        // Entries deleted from the stream while pending: nothing to apply, just acknowledge them.
        if let Some(Value::Array(deleted)) = parts.get(2) {
            let ids: Vec<String> = deleted.iter().filter_map(as_string).collect();
            if !ids.is_empty() {
                self.acknowledge(&ids).await?;
            }
        }
        if entries.is_empty() {
            return Ok(entries);
        }
        let counts = self.delivery_counts().await?;
        for entry in &mut entries {
            entry.deliveries = counts.get(&entry.id).copied().unwrap_or(2);
        }
        tracing::info!(count = entries.len(), consumer = %self.config.name, "took over idle write-behind entries");
        Ok(entries)
    }

    async fn delivery_counts(&self) -> Result<HashMap<String, u64>, CacheError> {
        let mut conn = self.conn.raw_connection()?;
        let reply: Result<Value, RedisError> = redis::cmd("XPENDING")
            .arg(&self.key)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(self.config.batch_size * 10)
            .arg(&self.config.name)
            .query_async(&mut conn)
            .await;
        let Value::Array(rows) = reply.map_err(|e| self.conn.map_error(e))? else { return Ok(HashMap::new()) };
        Ok(rows
            .iter()
            .filter_map(|row| match row {
                Value::Array(fields) => Some((as_string(fields.first()?)?, as_u64(fields.get(3)?)?)),
                _ => None,
            })
            .collect())
    }

    async fn read_new(&self) -> Result<Vec<Entry>, CacheError> {
        let mut conn = self.conn.raw_connection()?;
        let reply: Result<Value, RedisError> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.config.name)
            .arg("COUNT")
            .arg(self.config.batch_size)
            .arg("BLOCK")
            .arg(self.config.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(">")
            .query_async(&mut conn)
            .await;
        let reply = reply.map_err(|e| self.conn.map_error(e))?;
        // RESP2: [[stream, [[id, [field, value, …]], …]]]; nil when nothing arrived.
        let Value::Array(streams) = reply else { return Ok(Vec::new()) };
        let mut entries = Vec::new();
        for stream in &streams {
            if let Value::Array(pair) = stream
                && let Some(list) = pair.get(1)
            {
                entries.extend(parse_entries(list));
            }
        }
        Ok(entries)
    }

    async fn process(&self, entries: Vec<Entry>) -> Result<ApplyReport, CacheError> {
        let mut done: Vec<String> = Vec::new();
        let mut to_apply: Vec<&Entry> = Vec::new();
        for entry in &entries {
            if entry.deliveries > self.config.max_deliveries {
                let reason = format!("not applied after {} deliveries", entry.deliveries - 1);
                if self.dead_letter(entry, &reason).await {
                    done.push(entry.id.clone());
                }
            } else {
                to_apply.push(entry);
            }
        }
        let deliveries: Vec<Delivery> = to_apply
            .iter()
            .map(|e| Delivery {
                raw: e.event.clone(),
                source: format!("stream {} entry {}", self.key, e.id),
                deliveries: e.deliveries,
            })
            .collect();
        let (outcomes, report) = self.patterns.apply_deliveries(&deliveries, self.config.apply).await;
        for (entry, outcome) in to_apply.iter().zip(&outcomes) {
            let dead_letter_reason = match outcome {
                o if o.is_done() => {
                    done.push(entry.id.clone());
                    continue;
                }
                Outcome::Poison { reason } => reason,
                Outcome::Failed { reason, transient, .. }
                    if !*transient || entry.deliveries >= self.config.max_deliveries =>
                {
                    reason
                }
                Outcome::Failed { reason, .. } => {
                    tracing::warn!(id = %entry.id, deliveries = entry.deliveries, reason, "write-behind entry not applied yet; it will be retried");
                    continue;
                }
                _ => continue,
            };
            if self.dead_letter(entry, dead_letter_reason).await {
                done.push(entry.id.clone());
            }
        }
        if !done.is_empty() {
            self.acknowledge(&done).await?;
        }
        tracing::info!(
            events = report.events,
            keys = report.keys,
            applied = report.applied,
            stale_skipped = report.stale_skipped,
            failed = report.failed,
            poison = report.poison,
            "write-behind batch applied"
        );
        Ok(report)
    }

    async fn dead_letter(&self, entry: &Entry, reason: &str) -> bool {
        let source = format!("stream {} entry {}", self.key, entry.id);
        match self.dead_letters.record(&entry.event, reason, &source, entry.deliveries).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(id = %entry.id, error = %e, "could not record a dead letter; the entry stays pending");
                false
            }
        }
    }

    async fn acknowledge(&self, ids: &[String]) -> Result<(), CacheError> {
        let mut conn = self.conn.raw_connection()?;
        let mut pipe = redis::pipe();
        pipe.cmd("XACK").arg(&self.key).arg(GROUP).arg(ids).ignore();
        pipe.cmd("XDEL").arg(&self.key).arg(ids).ignore();
        let done: Result<(), RedisError> = pipe.query_async(&mut conn).await;
        done.map_err(|e| self.conn.map_error(e))
    }
}

fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => as_string(other)?.parse().ok(),
    }
}

/// `[[id, [field, value, …]], …]` → entries with their `event` field.
fn parse_entries(list: &Value) -> Vec<Entry> {
    let Value::Array(items) = list else { return Vec::new() };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else { return None };
            let id = as_string(pair.first()?)?;
            let event = match pair.get(1) {
                Some(Value::Array(fields)) => fields.chunks(2).find_map(|kv| match kv {
                    [name, value] if as_string(name).as_deref() == Some("event") => as_string(value),
                    _ => None,
                }),
                _ => None,
            };
            // An entry without an `event` field is poison, not nothing: keep it so it is dead-lettered.
            Some(Entry { id, event: event.unwrap_or_default(), deliveries: 1 })
        })
        .collect()
}
