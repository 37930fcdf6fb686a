//! The default write-behind queue: a Redis Stream, drained in-process by a consumer group.
//!
//! * Producer ([`RedisStreamQueue`]): `XADD RedisInstanceName+"\x1fwritebehind" * event <json>` (an
//!   internal key: no cache key can reach it); the reply is the durable acceptance (as durable as
//!   the Redis server's persistence and replication make it).
//! * Consumer ([`RedisStreamReader`]): reads batches with `XREADGROUP` in group `appliers`; entries
//!   left pending by a consumer that crashed, or that failed transiently, are taken over with
//!   `XAUTOCLAIM` once idle for `claim_idle`, with their delivery counts (`XPENDING`); settling an
//!   entry is `XACK` + `XDEL`. What to apply, retry or dead-letter is the patterns' business
//!   (`patterns::write_behind::QueueConsumer`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamRangeReply, StreamReadReply};

use super::Redis;
use crate::domain::time::Timestamp;
use crate::domain::write_event::WriteEvent;
use crate::ports::queue::{Backlog, Pulled, QueueReader};
use crate::ports::{CacheError, QueueError, WriteQueue};

/// The consumer group every handler instance joins.
pub const GROUP: &str = "appliers";

/// The Redis Stream queue, producing end. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RedisStreamQueue {
    redis: Redis,
    key: String,
}

impl RedisStreamQueue {
    /// The stream `RedisInstanceName + "\x1fwritebehind"` on `redis`'s connection.
    pub fn new(redis: Redis) -> Self {
        let key = redis.keys().write_behind_stream();
        Self { redis, key }
    }
}

/// A failed Redis call on the stream, as a queue error saying `what` failed.
fn queue_error(what: &'static str) -> impl Fn(CacheError) -> QueueError {
    move |e| match e {
        CacheError::Unavailable { .. } => QueueError::Unavailable {
            message: what.into(),
            retry_after: Some(Duration::from_secs(2)),
            cause: Some(Arc::new(e)),
        },
        other => QueueError::Rejected { message: what.into(), cause: Some(Arc::new(other)) },
    }
}

#[async_trait]
impl WriteQueue for RedisStreamQueue {
    async fn publish(&self, event: &WriteEvent) -> Result<(), QueueError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.key).arg("*").arg("event").arg(event.to_json());
        self.redis.query::<String>(cmd).await.map(|_| ()).map_err(queue_error("Redis did not take the write"))
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let kind = self.redis.key_type(&self.key).await.map_err(queue_error("cannot check the write-behind stream"))?;
        match kind.as_str() {
            "stream" | "none" => Ok(()),
            other => Err(QueueError::rejected(format!(
                "the write-behind stream {:?} holds a Redis {other}, not a stream: writes cannot be queued until it is removed",
                self.key
            ))),
        }
    }

    async fn backlog(&self) -> Result<Option<Backlog>, QueueError> {
        backlog(&self.redis, &self.key).await.map(Some).map_err(queue_error("cannot read the write-behind backlog"))
    }

    fn kind(&self) -> &'static str {
        "redis-streams"
    }
}

/// When a stream entry was added: the time part of its id (`<ms>-<seq>`).
fn added_at(id: &str) -> Option<Timestamp> {
    id.split_once('-').and_then(|(ms, _)| ms.parse().ok()).map(Timestamp::from_millis)
}

/// The `event` field of a stream entry; empty when it has none or it is not UTF-8 text (poison,
/// to be dead-lettered rather than applied with replacement characters).
pub(crate) fn event_field(entry: &StreamId) -> String {
    entry.get::<Vec<u8>>("event").and_then(|bytes| String::from_utf8(bytes).ok()).unwrap_or_default()
}

/// The backlog of the stream `key`: its length, pending count and oldest entry, in one pipeline.
pub(crate) async fn backlog(redis: &Redis, key: &str) -> Result<Backlog, CacheError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe.cmd("XLEN").arg(key);
    pipe.cmd("XPENDING").arg(key).arg(GROUP);
    pipe.cmd("XRANGE").arg(key).arg("-").arg("+").arg("COUNT").arg(1);
    type Replies = (
        redis::RedisResult<u64>,
        redis::RedisResult<redis::streams::StreamPendingReply>,
        redis::RedisResult<StreamRangeReply>,
    );
    let (length, pending, first): Replies = redis.query_pipeline(pipe).await?;
    Ok(Backlog {
        length: length.unwrap_or(0),
        pending: pending.map(|p| p.count() as u64).unwrap_or(0),
        oldest: first.ok().and_then(|first| first.ids.first().and_then(|entry| added_at(&entry.id))),
    })
}

/// How the reading end behaves.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// This consumer's name in the group (unique per process).
    pub name: String,
    /// Entries read per batch.
    pub batch_size: usize,
    /// How long one `XREADGROUP` waits for new entries.
    pub block: Duration,
    /// An entry pending this long is taken over (its consumer crashed, or it failed transiently).
    pub claim_idle: Duration,
}

impl Default for ReaderConfig {
    /// Defaults, with a consumer name unique to this process.
    fn default() -> Self {
        let host = std::env::var("WEBSITE_INSTANCE_ID")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "local".into());
        let short_host: String = host.chars().filter(char::is_ascii_alphanumeric).take(16).collect();
        Self {
            name: format!("{short_host}-{}-{:08x}", std::process::id(), fastrand::u32(..)),
            batch_size: 100,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
        }
    }
}

/// The Redis Stream queue, reading end.
pub struct RedisStreamReader {
    /// A connection of its own: blocking reads must not stall the shared connection.
    redis: Redis,
    key: String,
    config: ReaderConfig,
}

impl RedisStreamReader {
    /// A reader over `redis`, a dedicated connection whose deadline is longer than `config.block`.
    pub fn new(redis: Redis, config: ReaderConfig) -> Self {
        let key = redis.keys().write_behind_stream();
        Self { redis, key, config }
    }

    async fn ensure_group(&self) -> Result<(), CacheError> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE").arg(&self.key).arg(GROUP).arg("0").arg("MKSTREAM");
        let key = self.key.clone();
        self.redis
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

    /// Entries idle for `claim_idle`, taken over, with their delivery counts.
    async fn claim_idle(&self) -> Result<Vec<Pulled>, CacheError> {
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(&self.key)
            .arg(GROUP)
            .arg(&self.config.name)
            .arg(self.config.claim_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(self.config.batch_size);
        let reply: StreamAutoClaimReply = self.redis.query(cmd).await?;
        // Entries deleted from the stream while pending: nothing to apply, just acknowledge them.
        if !reply.deleted_ids.is_empty() {
            self.acknowledge(&reply.deleted_ids).await?;
        }
        if reply.claimed.is_empty() {
            return Ok(Vec::new());
        }
        let counts = self.delivery_counts(&reply.claimed).await?;
        let pulled: Vec<Pulled> =
            reply.claimed.iter().map(|entry| self.pulled(entry, counts.get(&entry.id).copied().unwrap_or(2))).collect();
        tracing::info!(count = pulled.len(), consumer = %self.config.name, "took over idle write-behind entries");
        Ok(pulled)
    }

    /// How many times each of `entries` was delivered, from the pending list over their id range.
    async fn delivery_counts(&self, entries: &[StreamId]) -> Result<HashMap<String, u64>, CacheError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Ok(HashMap::new()) };
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&self.key).arg(GROUP).arg(&first.id).arg(&last.id).arg(entries.len()).arg(&self.config.name);
        let reply: StreamPendingCountReply = self.redis.query(cmd).await?;
        Ok(reply.ids.into_iter().map(|pending| (pending.id, pending.times_delivered as u64)).collect())
    }

    async fn read_new(&self) -> Result<Vec<Pulled>, CacheError> {
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
        // Nil when nothing arrived within the block time.
        let reply: Option<StreamReadReply> = self.redis.query(cmd).await?;
        Ok(reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|stream| stream.ids)
            .map(|entry| self.pulled(&entry, 1))
            .collect())
    }

    fn pulled(&self, entry: &StreamId, deliveries: u64) -> Pulled {
        Pulled { id: entry.id.clone(), raw: event_field(entry), deliveries, enqueued_at: added_at(&entry.id) }
    }

    async fn acknowledge(&self, ids: &[String]) -> Result<(), CacheError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XACK").arg(&self.key).arg(GROUP).arg(ids).ignore();
        pipe.cmd("XDEL").arg(&self.key).arg(ids).ignore();
        self.redis.query_pipeline::<()>(pipe).await
    }
}

#[async_trait]
impl QueueReader for RedisStreamReader {
    async fn next_batch(&self) -> Result<Vec<Pulled>, QueueError> {
        let reading = queue_error("cannot read the write-behind stream");
        self.ensure_group().await.map_err(&reading)?;
        let claimed = self.claim_idle().await.map_err(&reading)?;
        if !claimed.is_empty() {
            return Ok(claimed);
        }
        self.read_new().await.map_err(&reading)
    }

    async fn settle(&self, ids: &[String]) -> Result<(), QueueError> {
        self.acknowledge(ids).await.map_err(queue_error("cannot acknowledge write-behind entries"))
    }

    fn source_of(&self, message: &Pulled) -> String {
        format!("stream {:?} entry {}", self.key, message.id)
    }
}
