//! Invalidation on Redis: evicting keys, the tag and "all" clocks, and the feed that tells every
//! instance at once.
//!
//! * **Keys** are evicted in their own entry hash, by one script: the entry turns stale (the
//!   fail-safe copy stays unless the eviction is hard) and the hash remembers the eviction's stamp
//!   in the `inv` field, so a load that read the store before the eviction cannot cache its value
//!   afterwards. A write stamped after the eviction is cached as usual: invalidations never hide
//!   later writes. Many keys go in few calls ([`Redis::evict_entries`]): one script call per
//!   hundred keys of a slot, never more than a few calls in flight on the shared connection.
//! * **Tags and "all"** cost one `HSET` on one hash, the *clocks* (`{inv}clocks`): field `\x1fall`
//!   and one field per tag, each holding the stamp of its last invalidation. An entry is
//!   invalidated when it was cached (`asof`) no later than the clock of "all" or of one of its
//!   tags. Nothing is scanned when a tag is invalidated; reads compare, using the copy of the
//!   clocks every instance keeps from the feed, so a read costs no extra round trip. Without a
//!   live feed a read fetches the clocks alongside the entry (sent together, so on the same
//!   connection it is still one round trip). The first read that finds an entry invalidated this
//!   way evicts it in its hash, so the miss path (load gate, "never older" write) needs nothing new.
//! * **The feed** is a pub/sub channel (`\x1finvalidate`) that every write, eviction and tag or
//!   "all" invalidation publishes to, from the same script that changed Redis. Each instance keeps
//!   one subscriber connection, pings it every [`PING_EVERY`], and counts the feed as live only
//!   while the last answer is younger than [`SILENT_FOR_AT_MOST`]; on every (re)connection it
//!   reloads the clocks and starts a new *generation* (the near cache drops what it held before).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use redis::aio::{PubSubSink, PubSubStream};
use tokio_util::sync::CancellationToken;

use super::{Redis, keys, scripts};
use crate::domain::entry::CacheEntry;
use crate::domain::error_chain::Chain;
use crate::domain::time::Timestamp;
use crate::ports::CacheError;
use crate::ports::cache::Eviction;

/// How often the subscriber connection is pinged.
pub(crate) const PING_EVERY: Duration = Duration::from_millis(50);
/// The feed counts as down when its connection has not answered for this long.
pub(crate) const SILENT_FOR_AT_MOST: Duration = Duration::from_millis(200);
/// How long an evicted key's hash remembers the eviction's stamp at least (longer than any load
/// that read the store before the eviction can take to write its result).
pub(crate) const REMEMBER_EVICTION: Duration = Duration::from_secs(60);
/// The clocks' field for "all" (no tag can contain U+001F).
pub(crate) const ALL_FIELD: &str = "\u{1f}all";
/// Keys evicted per script call. Each costs about ten commands on the server, so a call keeps
/// Redis busy about a millisecond at most; a bulk eviction of 1,000 keys is ten calls, the replay
/// of the most evictions that may wait (10,000) a hundred.
pub(crate) const EVICT_CHUNK: usize = 100;
/// Eviction calls in flight at once on a cluster, where keys of different slots cannot share a
/// call (on a single endpoint: one).
pub(crate) const EVICT_IN_FLIGHT_ON_A_CLUSTER: usize = 16;

/// True when an invalidation whose newest stamp is `floor` covers `entry`, which is not marked
/// stale yet: it was cached (`asof`) no later than `floor`, is not already evicted
/// (`fresh_until` 0) and is not a fail-safe copy (served stale anyway).
pub(crate) fn covered_by(entry: &CacheEntry, floor: u64) -> bool {
    entry.as_of <= floor && !entry.fail_safe && entry.fresh_until != Timestamp::EPOCH
}

/// One message on the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FeedEvent {
    /// `key` was written at `version`: older copies are out of date.
    Written { key: String, version: u64 },
    /// `key` was evicted at `stamp`: copies cached no later are out of date.
    Evicted { key: String, stamp: u64 },
    /// Every entry with one of `tags` cached no later than `stamp` is out of date.
    Tags { tags: Vec<String>, stamp: u64 },
    /// Every entry cached no later than `stamp` is out of date.
    All { stamp: u64 },
}

impl FeedEvent {
    /// Parses a message the scripts published: `w <version> <key>`, `e <stamp> <key>`,
    /// `t <stamp> <tag>\x1f<tag>…`, `a <stamp>`. `None` for anything else.
    pub(crate) fn decode(message: &str) -> Option<Self> {
        let (kind, rest) = message.split_once(' ')?;
        let (number, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let number: u64 = number.parse().ok()?;
        match kind {
            "w" if !rest.is_empty() => Some(Self::Written { key: rest.to_string(), version: number }),
            "e" if !rest.is_empty() => Some(Self::Evicted { key: rest.to_string(), stamp: number }),
            "t" if !rest.is_empty() => {
                Some(Self::Tags { tags: rest.split('\u{1f}').map(str::to_string).collect(), stamp: number })
            }
            "a" => Some(Self::All { stamp: number }),
            _ => None,
        }
    }
}

/// Who hears the feed besides the clocks (the near cache).
pub(crate) trait FeedListener: Send + Sync + 'static {
    /// An invalidation arrived.
    fn heard(&self, event: &FeedEvent);
    /// The feed went down or came back as a new generation: nothing heard before can be trusted.
    fn reset(&self, generation: u64);
}

/// The last invalidation of "all" and of each tag, as far as this instance knows. Clocks only move
/// forward.
#[derive(Debug, Default, Clone)]
pub(crate) struct Clocks {
    all: u64,
    tags: HashMap<String, u64>,
}

impl Clocks {
    /// The newest invalidation that covers an entry with `tags`.
    pub(crate) fn floor(&self, tags: &[String]) -> u64 {
        tags.iter().filter_map(|t| self.tags.get(t)).fold(self.all, |a, b| a.max(*b))
    }

    fn raise(&mut self, field: &str, stamp: u64) {
        if field == ALL_FIELD {
            self.all = self.all.max(stamp);
        } else {
            let clock = self.tags.entry(field.to_string()).or_default();
            *clock = (*clock).max(stamp);
        }
    }

    fn merge(&mut self, fields: &HashMap<String, String>) {
        for (field, stamp) in fields {
            if let Ok(stamp) = stamp.parse() {
                self.raise(field, stamp);
            }
        }
    }

    fn hear(&mut self, event: &FeedEvent) {
        match event {
            FeedEvent::Tags { tags, stamp } => tags.iter().for_each(|t| self.raise(t, *stamp)),
            FeedEvent::All { stamp } => self.all = self.all.max(*stamp),
            FeedEvent::Written { .. } | FeedEvent::Evicted { .. } => {}
        }
    }
}

/// The feed's state, shared by the subscriber task and every reader.
pub(crate) struct Feed {
    clocks: RwLock<Clocks>,
    generation: AtomicU64,
    subscribed: AtomicBool,
    started: Instant,
    last_answer_ms: AtomicU64,
    listener: OnceLock<Arc<dyn FeedListener>>,
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            clocks: RwLock::default(),
            generation: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            started: Instant::now(),
            last_answer_ms: AtomicU64::new(0),
            listener: OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("live", &self.live_generation()).finish()
    }
}

impl Feed {
    /// The current generation while the feed is live: subscribed, and answered within
    /// [`SILENT_FOR_AT_MOST`].
    pub(crate) fn live_generation(&self) -> Option<u64> {
        if !self.subscribed.load(Ordering::Acquire) {
            return None;
        }
        let silent_ms = self.elapsed_ms().saturating_sub(self.last_answer_ms.load(Ordering::Acquire));
        (silent_ms <= SILENT_FOR_AT_MOST.as_millis() as u64).then(|| self.generation.load(Ordering::Acquire))
    }

    /// Who else hears the feed (set once, by the near cache).
    pub(crate) fn listen(&self, listener: Arc<dyn FeedListener>) {
        let _ = self.listener.set(listener);
    }

    /// The newest invalidation covering `tags`, from the clocks this instance knows.
    pub(crate) fn floor(&self, tags: &[String]) -> u64 {
        self.clocks.read().unwrap_or_else(|p| p.into_inner()).floor(tags)
    }

    /// Raises the clocks for an invalidation this instance issued (it hears its own message later).
    pub(crate) fn heard_locally(&self, event: &FeedEvent) {
        self.clocks.write().unwrap_or_else(|p| p.into_inner()).hear(event);
    }

    fn merge(&self, fields: &HashMap<String, String>) {
        self.clocks.write().unwrap_or_else(|p| p.into_inner()).merge(fields);
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn answered(&self) {
        self.last_answer_ms.store(self.elapsed_ms(), Ordering::Release);
    }

    fn went_down(&self) {
        if self.subscribed.swap(false, Ordering::AcqRel) {
            let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
            if let Some(listener) = self.listener.get() {
                listener.reset(generation);
            }
        }
    }

    fn came_up(&self) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(listener) = self.listener.get() {
            listener.reset(generation);
        }
        self.answered();
        self.subscribed.store(true, Ordering::Release);
    }

    fn hear(&self, event: &FeedEvent) {
        self.clocks.write().unwrap_or_else(|p| p.into_inner()).hear(event);
        if let Some(listener) = self.listener.get() {
            listener.heard(event);
        }
    }
}

/// Why the subscriber connection ended.
enum Ended {
    Shutdown,
    Lost(String),
    NewCredentials,
}

impl Redis {
    /// The feed's shared state.
    pub(crate) fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// The clocks as Redis holds them (one `HGETALL`).
    pub(crate) async fn fetch_clocks(&self) -> Result<HashMap<String, String>, CacheError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.keys.clocks());
        self.query(cmd).await
    }

    /// Raises this instance's copy of the clocks with what Redis holds.
    pub(crate) fn merge_clocks(&self, fields: &HashMap<String, String>) {
        self.feed.merge(fields);
    }

    /// True while the invalidation feed is live (the near cache may serve).
    pub fn feed_is_live(&self) -> bool {
        self.feed.live_generation().is_some()
    }

    /// The feed's generation while it is live; a new one after every resubscription. Tells a
    /// feed that dropped and came back (its copies forgotten) from one that never dropped.
    pub fn feed_generation(&self) -> Option<u64> {
        self.feed.live_generation()
    }

    /// `entry` as a reader may use it: when a tag or "all" invalidation covers it (its `asof` is
    /// not after `floor`), it is evicted in Redis (keeping the fail-safe copy) and returned stale.
    /// Entries already evicted, or served stale by the fail-safe, are left as they are.
    pub(crate) async fn unless_invalidated(&self, key: &str, entry: CacheEntry, floor: u64) -> CacheEntry {
        if !covered_by(&entry, floor) {
            return entry;
        }
        if let Err(e) = self.evict_entry(key, Some(floor), None, false, false).await {
            tracing::debug!(key = ?key, error = %Chain(&e), "could not mark an invalidated entry stale in Redis; the next read tries again");
        }
        CacheEntry { fresh_until: Timestamp::EPOCH, ..entry }
    }

    /// Evicts `key`: its entry turns stale when it was cached no later than `stamp` or holds a
    /// version below `below_version`; with `hard`, the value is removed too (no fail-safe copy).
    /// Loads that read the store before `stamp` can no longer cache their result. With
    /// `announce`, the feed hears it.
    pub(crate) async fn evict_entry(
        &self,
        key: &str,
        stamp: Option<u64>,
        below_version: Option<u64>,
        hard: bool,
        announce: bool,
    ) -> Result<(), CacheError> {
        let eviction = Eviction { stamp, below_version, hard };
        self.evict_call(std::iter::once((key, &eviction)), announce).await
    }

    /// Evicts each key as its eviction says (see [`Redis::evict_entry`]), in few calls: one
    /// script call per [`EVICT_CHUNK`] keys of a slot (on a single endpoint, of any slots). On a
    /// single endpoint the calls go one at a time; on a cluster (or before Redis first answered)
    /// at most [`EVICT_IN_FLIGHT_ON_A_CLUSTER`] at once. Every request's call on the shared
    /// connection queues behind what is in flight there, so a burst of evictions (the replay of
    /// what waited while Redis was away, up to 10,000 keys) must not all go at once. Once a call
    /// failed, the calls not yet sent fail alike without being sent (Redis is down or slow: they
    /// would only add to its load). One result per eviction, in order.
    pub(crate) async fn evict_entries(
        &self,
        evictions: &[(String, Eviction)],
        announce: bool,
    ) -> Vec<Result<(), CacheError>> {
        let single = self.is_cluster() == Some(false);
        let calls: Vec<Vec<usize>> = if single {
            let all: Vec<usize> = (0..evictions.len()).collect();
            all.chunks(EVICT_CHUNK).map(<[usize]>::to_vec).collect()
        } else {
            let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
            for (at, (key, _)) in evictions.iter().enumerate() {
                by_slot.entry(keys::slot(&self.keys.entry(key))).or_default().push(at);
            }
            by_slot
                .into_values()
                .flat_map(|ats| ats.chunks(EVICT_CHUNK).map(<[usize]>::to_vec).collect::<Vec<_>>())
                .collect()
        };
        let failed: OnceLock<CacheError> = OnceLock::new();
        let results = futures_util::stream::iter(calls)
            .map(|ats| {
                let failed = &failed;
                async move {
                    let result = match failed.get() {
                        Some(e) => Err(e.clone()),
                        None => {
                            let batch = ats.iter().map(|at| (evictions[*at].0.as_str(), &evictions[*at].1));
                            let result = self.evict_call(batch, announce).await;
                            // Only an outage stops the rest: a call that Redis refused (a
                            // damaged entry among its keys) says nothing about the other calls.
                            if let Err(e) = &result
                                && e.is_transient()
                            {
                                let _ = failed.set(e.clone());
                            }
                            result
                        }
                    };
                    (ats, result)
                }
            })
            .buffer_unordered(if single { 1 } else { EVICT_IN_FLIGHT_ON_A_CLUSTER });
        let mut out: Vec<Result<(), CacheError>> = (0..evictions.len()).map(|_| Ok(())).collect();
        let results: Vec<(Vec<usize>, Result<(), CacheError>)> = results.collect().await;
        for (ats, result) in results {
            for at in ats {
                out[at] = result.clone();
            }
        }
        out
    }

    /// One script call evicting `evictions` (keys of one slot on a cluster).
    async fn evict_call<'a>(
        &self,
        evictions: impl Iterator<Item = (&'a str, &'a Eviction)>,
        announce: bool,
    ) -> Result<(), CacheError> {
        let mut invocation = scripts::EVICT.prepare_invoke();
        invocation.arg(REMEMBER_EVICTION.as_millis() as u64).arg(if announce {
            self.keys.feed_channel()
        } else {
            String::new()
        });
        for (key, eviction) in evictions {
            invocation
                .key(self.keys.entry(key))
                .arg(eviction.stamp.map(|s| s.to_string()).unwrap_or_default())
                .arg(eviction.below_version.map(|v| v.to_string()).unwrap_or_default())
                .arg(if eviction.hard { "1" } else { "0" })
                .arg(key);
        }
        self.invoke::<i64>(&invocation).await.map(|_| ())
    }

    /// Raises the clocks of `fields` (tag names, or [`ALL_FIELD`]) to `stamp` and tells the feed.
    pub(crate) async fn raise_clocks(&self, fields: &[String], stamp: u64) -> Result<(), CacheError> {
        let event = if fields.iter().any(|f| f == ALL_FIELD) {
            FeedEvent::All { stamp }
        } else {
            FeedEvent::Tags { tags: fields.to_vec(), stamp }
        };
        let message = match &event {
            FeedEvent::All { stamp } => format!("a {stamp}"),
            _ => format!("t {stamp} {}", fields.join("\u{1f}")),
        };
        let mut invocation = scripts::RAISE_CLOCKS.prepare_invoke();
        invocation.key(self.keys.clocks()).arg(stamp).arg(self.keys.feed_channel()).arg(message);
        for field in fields {
            invocation.arg(field);
        }
        self.invoke::<i64>(&invocation).await?;
        self.feed.heard_locally(&event);
        Ok(())
    }

    /// Follows the feed until `shutdown`: subscribes, reloads the clocks, pings, and reconnects
    /// (with back-off) whenever the connection is lost, silent or its credentials change.
    pub(crate) async fn follow_feed(self, shutdown: CancellationToken) {
        let mut pause = Duration::from_millis(100);
        loop {
            // Connecting and reloading the clocks wait on Redis too: shutdown cuts them short.
            let ended = tokio::select! {
                ended = self.follow_once(&shutdown) => ended,
                () = shutdown.cancelled() => Ended::Shutdown,
            };
            self.feed.went_down();
            match ended {
                Ended::Shutdown => return,
                Ended::NewCredentials => {
                    tracing::debug!("the invalidation feed reconnects with renewed credentials");
                    pause = Duration::from_millis(100);
                    continue;
                }
                Ended::Lost(why) => {
                    tracing::warn!(target_redis = %self.target, error = %why, retry_in = ?pause, "the invalidation feed is down: the near cache is bypassed until it is back");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    async fn follow_once(&self, shutdown: &CancellationToken) -> Ended {
        let mut credentials =
            self.credentials.as_ref().map(|c| redis::auth::StreamingCredentialsProvider::subscribe(c));
        let mut settings = self.info.redis_settings().clone();
        if let Some(stream) = credentials.as_mut() {
            match tokio::time::timeout(self.deadline, stream.next()).await {
                Ok(Some(Ok(auth))) => settings = settings.set_username(auth.username()).set_password(auth.password()),
                Ok(Some(Err(e))) => return Ended::Lost(Chain(&e).to_string()),
                _ => return Ended::Lost("no Entra ID token yet".into()),
            }
        }
        // The named node first, then (on a cluster) every node known: it may be a master that
        // died, and a message published on any node of a cluster reaches the subscribers of all.
        let seed = self.info.clone().set_redis_settings(settings);
        let mut subscribed = Err(String::new());
        for info in self.topology.starting_from(&seed) {
            subscribed = match tokio::time::timeout(self.target_connect_timeout, self.subscribe(info)).await {
                Ok(Ok(parts)) => Ok(parts),
                Ok(Err(e)) => Err(Chain(&e).to_string()),
                Err(_) => Err(format!("no connection within {:?}", self.target_connect_timeout)),
            };
            if subscribed.is_ok() {
                break;
            }
        }
        let (mut sink, mut stream) = match subscribed {
            Ok(parts) => parts,
            Err(why) => return Ended::Lost(why),
        };
        // Subscribed first, then the clocks: nothing raised in between is missed.
        match self.fetch_clocks().await {
            Ok(fields) => self.feed.merge(&fields),
            Err(e) => return Ended::Lost(Chain(&e).to_string()),
        }
        self.feed.came_up();
        tracing::info!(target_redis = %self.target, "the invalidation feed is live");
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ended::Shutdown,
                message = stream.next() => match message {
                    Some(message) => {
                        self.feed.answered();
                        if let Ok(text) = message.get_payload::<String>()
                            && let Some(event) = FeedEvent::decode(&text)
                        {
                            self.feed.hear(&event);
                        }
                    }
                    None => return Ended::Lost("the connection closed".into()),
                },
                _ = ping.tick() => {
                    if let Err(why) = ping_within(&mut sink, SILENT_FOR_AT_MOST).await {
                        return Ended::Lost(why);
                    }
                    // Messages that arrived before the answer are heard before the feed counts
                    // as current again (after a stall, the ping may be polled first).
                    while let Some(Some(message)) = stream.next().now_or_never() {
                        if let Ok(text) = message.get_payload::<String>()
                            && let Some(event) = FeedEvent::decode(&text)
                        {
                            self.feed.hear(&event);
                        }
                    }
                    self.feed.answered();
                }
                renewed = next_credentials(&mut credentials) => {
                    if renewed {
                        return Ended::NewCredentials;
                    }
                    // The credential stream ended: keep the connection, stop waiting on it.
                    credentials = None;
                }
            }
        }
    }
}

impl Redis {
    /// A subscriber connection to `info`, subscribed to the feed.
    async fn subscribe(&self, info: redis::ConnectionInfo) -> redis::RedisResult<(PubSubSink, PubSubStream)> {
        let client = redis::Client::open(info)?;
        let pubsub = client.get_async_pubsub().await?;
        let (mut sink, stream) = pubsub.split();
        sink.subscribe(self.keys.feed_channel()).await?;
        Ok((sink, stream))
    }
}

async fn ping_within(sink: &mut PubSubSink, limit: Duration) -> Result<(), String> {
    match tokio::time::timeout(limit, sink.ping::<redis::Value>()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Chain(&e).to_string()),
        Err(_) => Err(format!("no answer to a ping within {limit:?}")),
    }
}

/// Waits for the next credentials; never returns when there are none to wait for.
async fn next_credentials(
    credentials: &mut Option<
        std::pin::Pin<Box<dyn futures_util::Stream<Item = redis::RedisResult<redis::auth::BasicAuth>> + Send>>,
    >,
) -> bool {
    match credentials.as_mut() {
        Some(stream) => stream.next().await.is_some(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_decode_and_garbage_is_ignored() {
        assert_eq!(
            FeedEvent::decode("w 42 a key with spaces"),
            Some(FeedEvent::Written { key: "a key with spaces".into(), version: 42 })
        );
        assert_eq!(FeedEvent::decode("e 7 k"), Some(FeedEvent::Evicted { key: "k".into(), stamp: 7 }));
        assert_eq!(
            FeedEvent::decode("t 9 a\u{1f}b c"),
            Some(FeedEvent::Tags { tags: vec!["a".into(), "b c".into()], stamp: 9 })
        );
        assert_eq!(FeedEvent::decode("a 3"), Some(FeedEvent::All { stamp: 3 }));
        for garbage in ["", "w", "w x k", "w 1", "z 1 k", "e -1 k"] {
            assert_eq!(FeedEvent::decode(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn clocks_only_move_forward_and_cover_tags() {
        let mut clocks = Clocks::default();
        clocks.hear(&FeedEvent::Tags { tags: vec!["a".into()], stamp: 10 });
        clocks.hear(&FeedEvent::Tags { tags: vec!["a".into()], stamp: 5 });
        clocks.merge(&HashMap::from([(ALL_FIELD.to_string(), "3".to_string()), ("b".into(), "x".into())]));
        assert_eq!(clocks.floor(&[]), 3);
        assert_eq!(clocks.floor(&["a".into(), "b".into()]), 10);
        clocks.hear(&FeedEvent::All { stamp: 12 });
        assert_eq!(clocks.floor(&["a".into()]), 12);
    }
}
