//! The default write-behind queue: a Redis Stream, drained in-process by a consumer group.
//!
//! * Producer: `XADD RedisInstanceName+"\x1fwritebehind" * event <json>` (an internal key: no cache
//!   key can reach it); the reply is the durable acceptance (as durable as the Redis server's
//!   persistence and replication make it).
//! * Consumer ([`StreamConsumer`]): reads batches with `XREADGROUP` in group `appliers`, applies
//!   them with the same code as `EventHubConsumer`, and `XACK`s + `XDEL`s an entry only once its
//!   write is in the store (or superseded, or recorded as a dead letter). Entries left pending by a
//!   consumer that crashed, or that failed transiently, are taken over with `XAUTOCLAIM` once idle
//!   for `claim_idle`, so a failing store is retried every `claim_idle`; an entry still failing once
//!   it has been delivered `max_deliveries` times and is older than `retry_window`
//!   (`WriteBehindRetryWindowSeconds`) goes to the dead-letter stream, as does at once anything that
//!   can never be applied. So nothing acknowledged to a caller is lost, a store that is down for a
//!   while (a full disk, throttling) only delays writes, and nothing blocks the stream.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::Value;

use super::dead_letter::DeadLetters;
use super::{Backlog, QueueError, WriteEvent, WriteQueue};
use crate::cache::{CacheError, RedisCache};
use crate::clock::Timestamp;
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
    /// The stream `RedisInstanceName + "\x1fwritebehind"` on `cache`'s connection.
    pub fn new(cache: RedisCache) -> Self {
        let key = cache.keys().write_behind_stream();
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
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.key).arg("*").arg("event").arg(event.to_json());
        self.cache.query::<String>(cmd).await.map(|_| ()).map_err(queue_error)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let kind = self.cache.key_type(&self.key).await.map_err(queue_error)?;
        match kind.as_str() {
            "stream" | "none" => Ok(()),
            other => Err(QueueError::Rejected(format!(
                "the write-behind stream {:?} holds a Redis {other}, not a stream: writes cannot be queued until it is removed",
                self.key
            ))),
        }
    }

    async fn backlog(&self) -> Result<Option<Backlog>, QueueError> {
        backlog(&self.cache, &self.key).await.map(Some).map_err(queue_error)
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
    /// An entry still failing is dead-lettered once it has been delivered this many times...
    pub max_deliveries: u64,
    /// ...and was accepted at least this long ago (`WriteBehindRetryWindowSeconds`).
    pub retry_window: Duration,
    /// How keys are applied.
    pub apply: ApplyOptions,
}

impl ConsumerConfig {
    /// Defaults, with a consumer name unique to this process.
    pub fn new() -> Self {
        let host = std::env::var("WEBSITE_INSTANCE_ID")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "local".into());
        let short_host: String = host.chars().filter(char::is_ascii_alphanumeric).take(16).collect();
        Self {
            name: format!("{short_host}-{}-{:08x}", std::process::id(), fastrand::u32(..)),
            batch_size: 100,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            retry_window: Duration::from_secs(3600),
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

impl Entry {
    /// When the entry was added: the time part of its id.
    fn added_at(&self) -> Option<Timestamp> {
        self.id.split_once('-').and_then(|(ms, _)| ms.parse().ok()).map(Timestamp::from_millis)
    }
}

/// The backlog of the stream `key`: its length, pending count and oldest entry, in one pipeline.
pub(crate) async fn backlog(cache: &RedisCache, key: &str) -> Result<Backlog, CacheError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe.cmd("XLEN").arg(key);
    pipe.cmd("XPENDING").arg(key).arg(GROUP);
    pipe.cmd("XRANGE").arg(key).arg("-").arg("+").arg("COUNT").arg(1);
    let (length, pending, first): (redis::RedisResult<u64>, redis::RedisResult<Value>, redis::RedisResult<Value>) =
        cache.query_pipeline(pipe).await?;
    let pending = match pending {
        Ok(Value::Array(summary)) => summary.first().and_then(as_u64).unwrap_or(0),
        _ => 0,
    };
    let oldest_ms = match &first {
        Ok(list) => parse_entries(list).first().and_then(|e| e.added_at()).map(Timestamp::as_millis),
        Err(_) => None,
    };
    Ok(Backlog { length: length.unwrap_or(0), pending, oldest_ms })
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
    /// A consumer applying with `patterns`, reading over `conn` (a dedicated connection whose
    /// deadline is longer than `config.block`).
    pub fn new(patterns: Patterns, conn: RedisCache, config: ConsumerConfig) -> Self {
        let key = conn.keys().write_behind_stream();
        let dead_letters = DeadLetters::new(conn.clone(), patterns.clock().clock().clone());
        Self { patterns, conn, key, dead_letters, config }
    }

    /// Runs until the task is dropped or aborted; errors are logged and retried with back-off.
    /// Streams an older release left behind are moved into this one's first, and again now and
    /// then (instances of the old release may still be writing during a rolling upgrade).
    pub async fn run(self) {
        tracing::info!(stream = ?self.key, group = GROUP, consumer = %self.config.name, "write-behind consumer started");
        let mut pause = Duration::from_millis(200);
        let mut next_migration = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_migration {
                match super::migrate::move_legacy(&self.conn, &self.dead_letters).await {
                    Ok(_) => next_migration = tokio::time::Instant::now() + super::migrate::EVERY,
                    Err(e) => tracing::debug!(error = %e, "could not check for an older release's streams yet"),
                }
            }
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

    /// One round: take over idle pending entries, or read new ones; apply; acknowledge. With no
    /// store configured, nothing is read: the entries wait until there is one.
    pub async fn run_once(&self) -> Result<ApplyReport, CacheError> {
        if let Err(e) = self.patterns.store().configured() {
            tracing::debug!(error = %e, "write-behind consumer idle: no store to apply to");
            tokio::time::sleep(self.config.block).await;
            return Ok(ApplyReport::default());
        }
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
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE").arg(&self.key).arg(GROUP).arg("0").arg("MKSTREAM");
        let key = self.key.clone();
        self.conn
            .run(|mut conn| async move {
                match cmd.query_async::<String>(&mut conn).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                    Err(e) if e.code() == Some("WRONGTYPE") => Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "the write-behind stream key holds another Redis type",
                        key,
                    ))),
                    Err(e) => Err(e),
                }
            })
            .await
    }

    async fn claim_idle(&self) -> Result<Vec<Entry>, CacheError> {
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(&self.key)
            .arg(GROUP)
            .arg(&self.config.name)
            .arg(self.config.claim_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(self.config.batch_size);
        let reply: Value = self.conn.query(cmd).await?;
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
        let counts = self.delivery_counts(&entries).await?;
        for entry in &mut entries {
            entry.deliveries = counts.get(&entry.id).copied().unwrap_or(2);
        }
        tracing::info!(count = entries.len(), consumer = %self.config.name, "took over idle write-behind entries");
        Ok(entries)
    }

    /// How many times each of `entries` was delivered, from the pending list over their id range.
    async fn delivery_counts(&self, entries: &[Entry]) -> Result<HashMap<String, u64>, CacheError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Ok(HashMap::new()) };
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&self.key).arg(GROUP).arg(&first.id).arg(&last.id).arg(entries.len()).arg(&self.config.name);
        let Value::Array(rows) = self.conn.query::<Value>(cmd).await? else { return Ok(HashMap::new()) };
        Ok(rows
            .iter()
            .filter_map(|row| match row {
                Value::Array(fields) => Some((as_string(fields.first()?)?, as_u64(fields.get(3)?)?)),
                _ => None,
            })
            .collect())
    }

    async fn read_new(&self) -> Result<Vec<Entry>, CacheError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.config.name)
            .arg("COUNT")
            .arg(self.config.batch_size)
            .arg("BLOCK")
            .arg(self.config.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(">");
        // RESP2: [[stream, [[id, [field, value, …]], …]]]; nil when nothing arrived.
        let Value::Array(streams) = self.conn.query::<Value>(cmd).await? else { return Ok(Vec::new()) };
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

    /// True when a still-failing entry has had its chances: enough deliveries, and older than the
    /// retry window.
    fn out_of_retries(&self, entry: &Entry) -> bool {
        let old_enough = match entry.added_at() {
            Some(added) => self.patterns.now().since(added) >= self.config.retry_window,
            None => true,
        };
        entry.deliveries >= self.config.max_deliveries && old_enough
    }

    async fn process(&self, entries: Vec<Entry>) -> Result<ApplyReport, CacheError> {
        let mut done: Vec<String> = Vec::new();
        let mut to_apply: Vec<&Entry> = Vec::new();
        for entry in &entries {
            // Delivered over and over without ever settling (its consumer crashes on it): give up
            // without another attempt. Anything else gets one more try before it is given up.
            if entry.deliveries > 2 * self.config.max_deliveries && self.out_of_retries(entry) {
                let reason = format!("not settled after {} deliveries", entry.deliveries - 1);
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
                source: format!("stream {:?} entry {}", self.key, e.id),
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
                Outcome::Failed { reason, transient, .. } if !*transient || self.out_of_retries(entry) => reason,
                Outcome::Failed { reason, .. } => {
                    tracing::warn!(id = %entry.id, deliveries = entry.deliveries, reason = ?reason, "write-behind entry not applied yet; it will be retried");
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
        let source = format!("stream {:?} entry {}", self.key, entry.id);
        match self.dead_letters.record(&entry.event, reason, &source, entry.deliveries).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(id = %entry.id, error = %e, "could not record a dead letter; the entry stays pending");
                false
            }
        }
    }

    async fn acknowledge(&self, ids: &[String]) -> Result<(), CacheError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XACK").arg(&self.key).arg(GROUP).arg(ids).ignore();
        pipe.cmd("XDEL").arg(&self.key).arg(ids).ignore();
        self.conn.query_pipeline::<()>(pipe).await
    }
}

pub(crate) fn as_string(value: &Value) -> Option<String> {
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
