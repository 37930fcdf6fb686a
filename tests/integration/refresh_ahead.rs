//! Refresh-Ahead on a real Redis and a real store: eager refresh on read, the hot-key set, the
//! timer and its host payloads, and the fail-safe on every read path.
//!
//! Every test runs against each store [`stores`] returns (SQLite, and Cosmos DB on the SDK's in-memory
//! emulator), through the `Store` trait only. Time passes on an injected clock (`ManualClock`):
//! no test waits for a TTL to run out.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use cachepatterns::adapters::sqlite::SqliteStore;
use cachepatterns::domain::entry::CacheEntry;
use cachepatterns::domain::key::Key;
use cachepatterns::ports::Cache;
use cachepatterns::ports::clock::{Clock, ManualClock};
use cachepatterns::ports::store::{Applied, Change, Record, Store, StoreError};
use cachepatterns::startup::{Application, Plugs};
use chrono::{DateTime, SecondsFormat};
use common::host::{self, Call, FunctionDef, MODES, Mode};
use common::{FaultyStore, RedisServer, TempDir};
use serde_json::{Value, json};
use tokio::sync::watch;

/// The stores every test runs against, each fresh: SQLite and Cosmos DB (in-memory emulator).
async fn stores(dir: &TempDir) -> Vec<(&'static str, Arc<dyn Store>)> {
    vec![
        ("sqlite", Arc::new(SqliteStore::open(&dir.path().join("store.db")).expect("sqlite store"))),
        ("cosmos", common::cosmos::in_memory_store().await),
    ]
}

/// One handler process: an app, its router, and the counting store behind it.
struct Process {
    app: Application,
    router: Router,
    store: Arc<FaultyStore>,
}

impl Process {
    fn new(redis: &RedisServer, store: Arc<FaultyStore>, extra: &[(&str, &str)], time: Arc<dyn Clock>) -> Self {
        let settings = common::settings(&redis.connection_string(), extra);
        let plugs = Plugs { store: store.clone(), clock: time, queue: None };
        let app = Application::assemble(settings, plugs).expect("the app wires up");
        Self { router: app.router(), app, store }
    }

    /// A process on its own over `backing` (counted), and a sibling sharing its Redis and store.
    fn pair(redis: &RedisServer, backing: Arc<dyn Store>, extra: &[(&str, &str)]) -> (Self, Self) {
        Self::pair_on(redis, backing, extra, cachepatterns::ports::clock::system())
    }

    /// Like [`Process::pair`], both on the time source `time`.
    fn pair_on(
        redis: &RedisServer,
        backing: Arc<dyn Store>,
        extra: &[(&str, &str)],
        time: Arc<dyn Clock>,
    ) -> (Self, Self) {
        let store = FaultyStore::new(backing);
        (Self::new(redis, store.clone(), extra, time.clone()), Self::new(redis, store, extra, time))
    }

    async fn write(&self, key: &str, value: Value) -> u64 {
        let key = Key::new(key).unwrap();
        self.app.services.write_through.write(&key, Change::Upsert(value)).await.expect("write-through").version
    }

    async fn read(&self, mode: Mode, function: &str, key: &str) -> host::Reply {
        host::send(&self.router, mode, &FunctionDef::load(function), &Call::new("GET", Some(key))).await
    }

    async fn entry(&self, key: &str) -> CacheEntry {
        self.app.redis.get(key).await.expect("redis").expect("a cached entry")
    }

    async fn settle(&self) {
        wait_until("background refreshes to finish", || self.app.services.refresh_ahead.refreshes_in_flight() == 0)
            .await;
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_served(reply: &host::Reply, value: &Value, source: &str, x_cache: &str) {
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(&reply.body["value"], value, "{:?}", reply.body);
    assert_eq!(reply.body["source"], source, "{:?}", reply.body);
    assert_eq!(reply.header("x-cache"), Some(x_cache), "{:?}", reply.headers);
}

const SHORT_TTL: [(&str, &str); 3] =
    [("CacheTtlSeconds", "2"), ("CacheTtlJitterPercent", "0"), ("RefreshAheadFactor", "0.5")];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eager_refresh_fires_once_per_key_per_window_across_processes() {
    let redis = RedisServer::start();
    let dir = TempDir::new("ra-eager");
    for (store_name, backing) in stores(&dir).await {
        // Each store starts from an empty Redis: no hot keys or locks left by the previous one.
        redis.command("FLUSHALL").expect("FLUSHALL");
        let time = ManualClock::starting_now();
        let (a, b) = Process::pair_on(&redis, backing, &SHORT_TTL, time.clone());
        for mode in MODES {
            let key = format!("{store_name}-eager-{mode:?}");
            a.write(&key, json!({"v": 1})).await;
            let before = a.store.gets();
            assert_served(&a.read(mode, "RefreshAheadRead", &key).await, &json!({"v": 1}), "cache", "hit");
            for window in 1..=2 {
                // Past 0.5 × 2 s: every read now is eligible to start a refresh.
                time.advance(Duration::from_millis(1100));
                let reads = (0..40).map(|i| {
                    let process = if i % 2 == 0 { &a } else { &b };
                    process.read(mode, "RefreshAheadRead", &key)
                });
                for reply in futures_util::future::join_all(reads).await {
                    assert_served(&reply, &json!({"v": 1}), "cache", "hit");
                }
                a.settle().await;
                b.settle().await;
                assert_eq!(
                    a.store.gets() - before,
                    window,
                    "{store_name} {mode:?}: one store read per window for 40 concurrent reads in two processes"
                );
                // The refreshed entry is young again: more reads start nothing.
                for _ in 0..10 {
                    assert_served(&b.read(mode, "RefreshAheadRead", &key).await, &json!({"v": 1}), "cache", "hit");
                }
                b.settle().await;
                assert_eq!(a.store.gets() - before, window);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hit_is_one_redis_round_trip_and_its_read_is_counted() {
    let redis = RedisServer::start();
    let dir = TempDir::new("ra-hit");
    for (store_name, backing) in stores(&dir).await {
        // Each store starts from an empty Redis: no hot keys or locks left by the previous one.
        redis.command("FLUSHALL").expect("FLUSHALL");
        let (a, _) = Process::pair(&redis, backing, &[("L1MaxEntries", "0")]);
        let _feed = common::live_feed(&a.app).await;
        let key = format!("{store_name}-hit");
        a.write(&key, json!("warm")).await;
        a.read(Mode::Direct, "RefreshAheadRead", &key).await;
        a.app.services.flush_buffered_reads().await; // loads the counting script
        let policy = a.app.services.refresh_ahead.policy().hot_keys;
        let before = a.app.redis.hotness(&key, &policy, common::now()).await.unwrap();
        redis.reset_stats();
        let gets = a.store.gets();
        let round_trips = a.app.redis.round_trips();
        assert_served(&a.read(Mode::Payload, "RefreshAheadRead", &key).await, &json!("warm"), "cache", "hit");
        assert_eq!(a.app.redis.round_trips() - round_trips, 1, "a hit is one round trip to Redis");
        let calls = redis.command_calls();
        eprintln!("Redis commands for one refresh-ahead hit (script body included): {calls:?}");
        assert_eq!(calls.get("hmget"), Some(&1), "{calls:?}");
        let top_level: Vec<_> =
            calls.keys().filter(|c| !["hmget", "info", "config|resetstat"].contains(&c.as_str())).collect();
        assert!(top_level.is_empty(), "a hit is one HMGET of the entry, nothing else: {calls:?}");
        assert_eq!(a.store.gets(), gets, "a hit never reads the store");
        // The read is counted in the process and sent with the others (every second, or here).
        a.app.services.flush_buffered_reads().await;
        let after = a.app.redis.hotness(&key, &policy, common::now()).await.unwrap();
        assert!((after - before - 1.0).abs() < 0.01, "the read counted once: {before} → {after}");
    }
}

/// A store whose reads can be held after they read (so a refresh carries an old value).
struct HeldStore {
    inner: Arc<dyn Store>,
    hold: watch::Sender<bool>,
    held: AtomicUsize,
}

#[async_trait]
impl Store for HeldStore {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let record = self.inner.get(key).await;
        let mut rx = self.hold.subscribe();
        if *rx.borrow() {
            self.held.fetch_add(1, Ordering::SeqCst);
            let _ = rx.wait_for(|hold| !hold).await;
        }
        record
    }

    async fn apply_with(
        &self,
        key: &str,
        version: u64,
        change: Change,
        options: &cachepatterns::domain::options::EntryOptions,
    ) -> Result<Applied, StoreError> {
        self.inner.apply_with(key, version, change, options).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_racing_a_write_through_never_wins() {
    let redis = RedisServer::start();
    let dir = TempDir::new("ra-race");
    for (store_name, backing) in stores(&dir).await {
        // Each store starts from an empty Redis: no hot keys or locks left by the previous one.
        redis.command("FLUSHALL").expect("FLUSHALL");
        let held = Arc::new(HeldStore { inner: backing, hold: watch::Sender::new(false), held: AtomicUsize::new(0) });
        let time = ManualClock::starting_now();
        let (a, _) = Process::pair_on(&redis, held.clone(), &SHORT_TTL, time.clone());
        let key = format!("{store_name}-race");
        a.write(&key, json!("old")).await;
        time.advance(Duration::from_millis(1100));
        held.hold.send_replace(true);
        // The read answers at once with the old value; its refresh reads "old" and is held.
        assert_served(&a.read(Mode::Direct, "RefreshAheadRead", &key).await, &json!("old"), "cache", "hit");
        wait_until("the refresh to read the store", || held.held.load(Ordering::SeqCst) == 1).await;
        let newer = a.write(&key, json!("new")).await;
        held.hold.send_replace(false);
        a.settle().await;
        let entry = a.entry(&key).await;
        assert_eq!((entry.value, entry.version), (Some(json!("new").into()), newer), "{store_name}: the refresh lost");
        let reply = a.read(Mode::Payload, "RefreshAheadRead", &key).await;
        assert_served(&reply, &json!("new"), "cache", "hit");
        assert_eq!(reply.body["version"], json!(newer));
    }
}

/// Many keys due at once (written together, read together) must not send one store read per key at
/// the same moment: eager refreshes are bounded per process, and a key skipped while the bound is
/// full is refreshed by a later read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eager_refreshes_of_many_due_keys_are_bounded_and_skipped_keys_are_refreshed_later() {
    const KEYS: usize = 60;
    const BOUND: usize = 5;
    let redis = RedisServer::start();
    let dir = TempDir::new("ra-bounded");
    for (store_name, backing) in stores(&dir).await {
        redis.command("FLUSHALL").expect("FLUSHALL");
        let held = Arc::new(HeldStore { inner: backing, hold: watch::Sender::new(false), held: AtomicUsize::new(0) });
        let time = ManualClock::starting_now();
        let mut settings = SHORT_TTL.to_vec();
        let bound = BOUND.to_string();
        settings.extend([("RefreshAheadEagerParallelism", bound.as_str()), ("L1MaxEntries", "0")]);
        let (a, _) = Process::pair_on(&redis, held.clone(), &settings, time.clone());
        let keys: Vec<String> = (0..KEYS).map(|i| format!("{store_name}-due-{i}")).collect();
        for key in &keys {
            a.write(key, json!(key)).await;
        }
        time.advance(Duration::from_millis(1100));
        held.hold.send_replace(true);
        let reads = keys.iter().map(|key| a.read(Mode::Direct, "RefreshAheadRead", key));
        for (reply, key) in futures_util::future::join_all(reads).await.iter().zip(&keys) {
            assert_served(reply, &json!(key), "cache", "hit");
        }
        // Every refresh that was started reaches the store and is held there.
        wait_until("the started refreshes to read the store", || {
            held.held.load(Ordering::SeqCst) == a.app.services.refresh_ahead.refreshes_in_flight()
        })
        .await;
        let at_once = held.held.load(Ordering::SeqCst);
        // Exactly the bound: the held refreshes keep their permits, every other read is deferred.
        assert_eq!(at_once, BOUND, "{store_name}: store reads at once for {KEYS} due keys; the bound is {BOUND}");
        held.hold.send_replace(false);
        a.settle().await;
        // Skipped keys are still due: later reads refresh them, a bound's worth at a time.
        let mut rounds = 0;
        loop {
            let mut due = Vec::new();
            for key in &keys {
                if time.now().since(a.entry(key).await.written_at) >= Duration::from_millis(1000) {
                    due.push(key);
                }
            }
            if due.is_empty() {
                break;
            }
            rounds += 1;
            // Each round refreshes at least a bound's worth of the keys still due.
            assert!(
                rounds <= (KEYS - BOUND).div_ceil(BOUND),
                "{store_name}: {} keys still due after {rounds} rounds of reads",
                due.len()
            );
            let reads = due.iter().map(|key| a.read(Mode::Direct, "RefreshAheadRead", key));
            futures_util::future::join_all(reads).await;
            a.settle().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_refresh_keeps_the_old_value_and_is_not_retried_at_once() {
    let redis = RedisServer::start();
    let dir = TempDir::new("ra-failed");
    for (store_name, backing) in stores(&dir).await {
        // Each store starts from an empty Redis: no hot keys or locks left by the previous one.
        redis.command("FLUSHALL").expect("FLUSHALL");
        let time = ManualClock::starting_now();
        let (a, _) = Process::pair_on(&redis, backing, &SHORT_TTL, time.clone());
        let key = format!("{store_name}-failed");
        let version = a.write(&key, json!([1, 2])).await;
        time.advance(Duration::from_millis(1100));
        a.store.set_failing(true);
        for mode in MODES {
            assert_served(&a.read(mode, "RefreshAheadRead", &key).await, &json!([1, 2]), "cache", "hit");
            a.settle().await;
        }
        assert_eq!(a.store.gets(), 1, "{store_name}: one attempt; the kept lock throttles the next");
        let entry = a.entry(&key).await;
        assert_eq!((entry.value, entry.version, entry.fail_safe), (Some(json!([1, 2]).into()), version, false));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_key_set_decays_and_stays_bounded() {
    let redis = RedisServer::start();
    let dir = TempDir::new("ra-hot");
    for (store_name, backing) in stores(&dir).await {
        // Each store starts from an empty Redis: no hot keys or locks left by the previous one.
        redis.command("FLUSHALL").expect("FLUSHALL");
        let extra = [("RefreshAheadHotKeysMax", "10"), ("RefreshAheadHotKeysHalfLifeSeconds", "1")];
        let time = ManualClock::starting_now();
        let (a, _) = Process::pair_on(&redis, backing, &extra, time.clone());
        let policy = a.app.services.refresh_ahead.policy().hot_keys;
        let cache = &a.app.redis;
        let old = format!("{store_name}-old");
        for _ in 0..4 {
            a.read(Mode::Direct, "RefreshAheadRead", &old).await;
        }
        time.advance(Duration::from_secs(2));
        let new = format!("{store_name}-new");
        for _ in 0..2 {
            // Absent keys answer 404 and still count.
            assert_eq!(a.read(Mode::Payload, "RefreshAheadRead", &new).await.status, 404);
        }
        a.app.services.flush_buffered_reads().await;
        let (old_reads, new_reads) = (
            cache.hotness(&old, &policy, time.now()).await.unwrap(),
            cache.hotness(&new, &policy, time.now()).await.unwrap(),
        );
        assert!((0.999..1.001).contains(&old_reads), "4 reads two half-lives ago count 1: {old_reads}");
        assert!((1.999..2.001).contains(&new_reads), "2 reads now count 2: {new_reads}");
        for i in 0..30 {
            a.read(Mode::Direct, "RefreshAheadRead", &format!("{store_name}-many-{i}")).await;
        }
        a.app.services.flush_buffered_reads().await;
        let all = cache.hottest(&policy, 0.0, 1000, time.now()).await.unwrap();
        assert_eq!(all.len(), 10, "bounded by RefreshAheadHotKeysMax: {all:?}");

        // Weights grow as 2^(half-lives since the landmark); far past it the set is rescaled
        // instead of overflowing. 100 half-lives later, reads must still count exactly.
        time.advance(Duration::from_secs(100));
        let fresh = format!("{store_name}-after-rescale");
        for _ in 0..3 {
            a.read(Mode::Direct, "RefreshAheadRead", &fresh).await;
        }
        a.app.services.flush_buffered_reads().await;
        let reads = cache.hotness(&fresh, &policy, time.now()).await.unwrap();
        assert!((2.999..3.001).contains(&reads), "3 reads count 3 after the rescale: {reads}");
        let landmark = "\u{1f}{hot}landmark";
        let moved: String =
            redis::cmd("GET").arg(landmark).query_async(&mut redis.connection().await).await.expect("landmark");
        assert_eq!(moved.parse::<u64>().unwrap(), time.now().as_millis(), "the landmark moved to now");
    }
}

/// A process that has read `n` distinct keys through `RefreshAheadRead` (each a miss, answered
/// `None`), all in one second of its clock, with nothing sent yet.
async fn read_distinct_keys(a: &Process, prefix: &str, n: usize) {
    let keys: Vec<Key> = (0..n).map(|i| Key::new(format!("{prefix}-{i}")).unwrap()).collect();
    for batch in keys.chunks(50) {
        let reads = batch.iter().map(|key| a.app.services.refresh_ahead.get(key));
        for read in futures_util::future::join_all(reads).await {
            read.expect("a refresh-ahead read");
        }
    }
}

/// Reads of many distinct keys reach the hot-key set in a few multi-key script calls, not one
/// script per key: a flush used to put every one of them on the shared connection at once, and
/// every request's Redis call waited behind them. And no more keys wait than the set keeps
/// (`RefreshAheadHotKeysMax`): the others would only be trimmed away again. Counted by Redis itself
/// (`INFO commandstats` counts the commands scripts run too).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_counts_of_many_keys_are_sent_in_a_few_calls_and_no_more_keys_wait_than_the_set_keeps() {
    const MAX: usize = 500;
    const READ: usize = 800;
    let redis = RedisServer::start();
    let dir = TempDir::new("ra-flush");
    let time = ManualClock::starting_now();
    let backing = Arc::new(SqliteStore::open(&dir.path().join("store.db")).expect("sqlite store"));
    let extra = [("RefreshAheadHotKeysMax", "500"), ("L1MaxEntries", "0")];
    let a = Process::new(&redis, FaultyStore::new(backing), &extra, time.clone());
    // Loads the counting script, so that what follows counts calls that run it.
    read_distinct_keys(&a, "warm", 1).await;
    a.app.services.flush_buffered_reads().await;
    redis.command("FLUSHALL").expect("FLUSHALL");

    read_distinct_keys(&a, "k", READ).await;
    redis.reset_stats();
    let round_trips = a.app.redis.round_trips();
    a.app.services.flush_buffered_reads().await;
    let round_trips = a.app.redis.round_trips() - round_trips;
    let calls = redis.command_calls();
    let scripts = calls.get("evalsha").copied().unwrap_or(0) + calls.get("eval").copied().unwrap_or(0);
    let counted = calls.get("zincrby").copied().unwrap_or(0);
    eprintln!(
        "FIGURES flush of {READ} distinct keys read (RefreshAheadHotKeysMax {MAX}): {counted} keys sent in {scripts} script calls, {round_trips} round trips"
    );
    assert!(scripts >= 1 && scripts <= (READ as u64).div_ceil(100), "at most one script call per 100 keys: {calls:?}");
    assert_eq!(counted, MAX as u64, "as many keys wait as the hot-key set keeps: {calls:?}");
    assert_eq!(round_trips, scripts, "one round trip per script call, nothing else");
    let policy = a.app.services.refresh_ahead.policy().hot_keys;
    let hot = a.app.redis.hottest(&policy, 0.0, u64::MAX, time.now()).await.unwrap();
    assert_eq!(hot.len(), MAX, "every key sent is counted");
    assert!(hot.iter().all(|(_, reads)| (0.999..1.001).contains(reads)), "one read each: {hot:?}");
}

/// A flush that meets a hung Redis has one call in flight, not one per key: it waits out one call's
/// deadline, and sends nothing more once that call failed (the counts are dropped, as documented).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flush_against_a_hung_redis_has_one_call_in_flight() {
    const KEYS: usize = 300;
    let redis = RedisServer::start();
    let dir = TempDir::new("ra-flush-hung");
    let time = ManualClock::starting_now();
    let backing = Arc::new(SqliteStore::open(&dir.path().join("store.db")).expect("sqlite store"));
    let a = Process::new(&redis, FaultyStore::new(backing), &[("L1MaxEntries", "0")], time.clone());
    read_distinct_keys(&a, "warm", 1).await;
    a.app.services.flush_buffered_reads().await;

    read_distinct_keys(&a, "k", KEYS).await;
    redis.pause();
    let round_trips = a.app.redis.round_trips();
    a.app.services.flush_buffered_reads().await;
    let round_trips = a.app.redis.round_trips() - round_trips;
    redis.resume();
    eprintln!("FIGURES flush of {KEYS} keys against a hung Redis: {round_trips} round trips started");
    assert_eq!(round_trips, 1, "one call in flight, then nothing more after it failed");
}

// ---- the timer ----

fn iso(ms: i64, fraction: bool) -> String {
    let t = DateTime::from_timestamp_millis(ms).unwrap();
    let base = t.to_rfc3339_opts(SecondsFormat::Secs, false);
    if fraction { base.replacen("+00:00", ".0105419+00:00", 1) } else { base }
}

fn now_ms() -> i64 {
    common::now().as_millis() as i64
}

/// The `TimerInfo` the host sends, as docs/host-protocol.md §5.1 shows it.
fn timer_info(next_ms: Option<i64>, past_due: Value) -> Value {
    let status = match next_ms {
        Some(next) => {
            json!({"Last": iso(next - 300_000, true), "Next": iso(next, false), "LastUpdated": iso(next - 300_000, true)})
        }
        None => Value::Null,
    };
    json!({"Schedule": {"AdjustForDST": true}, "ScheduleStatus": status, "IsPastDue": past_due})
}

/// Posts a timer invocation built from `RefreshAhead/function.json` and returns its `Logs`.
async fn run_timer(router: &Router, timer: Option<Value>) -> Vec<String> {
    let def = FunctionDef::load("RefreshAhead");
    assert_eq!(def.json["bindings"][0]["type"], "timerTrigger");
    let mut data = serde_json::Map::new();
    if let Some(timer) = timer {
        data.insert(def.trigger.clone(), timer);
    }
    let envelope = json!({"Data": data, "Metadata": {"sys": {"MethodName": def.name, "UtcNow": iso(now_ms(), true), "RandGuid": "7c1f0e55-7a8e-4f4e-9d25-5b1d2c3a4b5c"}}});
    let (status, reply) = host::invoke(router, &def.name, &envelope).await;
    assert_eq!(status, 200, "a timer run answers 200: {reply}");
    assert_eq!(reply["ReturnValue"], Value::Null);
    assert!(reply["Outputs"].is_object(), "{reply}");
    reply["Logs"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect()
}

/// `(refreshed, skipped, failed)` from a timer run's `Logs`.
fn counts(logs: &[String]) -> (usize, usize, usize) {
    let line = logs.iter().find(|l| l.contains("refreshed")).unwrap_or_else(|| panic!("no counts in {logs:?}"));
    let number_before = |word: &str| -> usize {
        let at = line.find(word).unwrap_or_else(|| panic!("no {word:?} in {line}"));
        line[..at].trim_end().rsplit([' ', ':']).next().unwrap().parse().unwrap()
    };
    (number_before(" refreshed"), number_before(" skipped"), number_before(" failed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_timer_refreshes_hot_keys_that_expire_before_the_next_run_and_skips_cold_ones() {
    let redis = RedisServer::start();
    let dir = TempDir::new("ra-timer");
    for (store_name, backing) in stores(&dir).await {
        // Each store starts from an empty Redis: no hot keys or locks left by the previous one.
        redis.command("FLUSHALL").expect("FLUSHALL");
        let extra = [("CacheTtlSeconds", "3"), ("CacheTtlJitterPercent", "0"), ("RefreshAheadFactor", "0")];
        let (a, _) = Process::pair(&redis, backing, &extra);
        let hot: Vec<String> = (0..2).map(|i| format!("{store_name}-hot-{i}")).collect();
        let (cold_once, cold_aside) = (format!("{store_name}-cold-once"), format!("{store_name}-cold-aside"));
        for key in hot.iter().chain([&cold_once, &cold_aside]) {
            a.write(key, json!(key)).await;
        }
        for key in &hot {
            for _ in 0..3 {
                a.read(Mode::Direct, "RefreshAheadRead", key).await;
            }
        }
        a.read(Mode::Direct, "RefreshAheadRead", &cold_once).await; // 1 read < RefreshAheadHotMinReads (2)
        for _ in 0..5 {
            a.read(Mode::Direct, "CacheAside", &cold_aside).await; // Cache-Aside reads are not tracked
        }
        let written_at: Vec<_> =
            futures_util::future::join_all(hot.iter().map(|k| a.entry(k))).await.iter().map(|e| e.written_at).collect();
        assert_eq!(a.store.gets(), 0);

        // Next run in 10 s: the 3 s entries expire before it.
        let logs = run_timer(&a.router, Some(timer_info(Some(now_ms() + 10_000), json!(false)))).await;
        assert_eq!(counts(&logs), (2, 0, 0), "{store_name}: {logs:?}");
        assert_eq!(a.store.gets(), 2, "only the hot keys were read");
        for (key, before) in hot.iter().zip(written_at) {
            assert!(a.entry(key).await.written_at > before, "{key} was rewritten");
        }

        // Next run in 2 s (whole seconds, as the host writes it): the refreshed 3 s entries outlive it.
        let logs = run_timer(&a.router, Some(timer_info(Some(now_ms() + 2_000), json!(false)))).await;
        assert_eq!(counts(&logs), (0, 2, 0), "{store_name}: {logs:?}");
        assert_eq!(a.store.gets(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_concurrent_timer_runs_refresh_each_key_once() {
    let redis = RedisServer::start();
    let dir = TempDir::new("ra-timer-pair");
    for (store_name, backing) in stores(&dir).await {
        // Each store starts from an empty Redis: no hot keys or locks left by the previous one.
        redis.command("FLUSHALL").expect("FLUSHALL");
        let extra = [("CacheTtlSeconds", "3"), ("RefreshAheadFactor", "0"), ("RefreshAheadHotMinReads", "0.5")];
        let (a, b) = Process::pair(&redis, backing, &extra);
        let keys: Vec<String> = (0..6).map(|i| format!("{store_name}-pair-{i}")).collect();
        for key in &keys {
            a.write(key, json!(1)).await;
            a.read(Mode::Payload, "RefreshAheadRead", key).await;
        }
        // The reads were counted in `a`; either instance may win the tick, and `b` sees `a`'s counts
        // once `a` has sent them (every second; here at once, as the second would have).
        a.app.services.flush_buffered_reads().await;
        a.store.set_delay(Duration::from_millis(200));
        let timer = timer_info(Some(now_ms() + 10_000), json!(false));
        let (logs_a, logs_b) =
            tokio::join!(run_timer(&a.router, Some(timer.clone())), run_timer(&b.router, Some(timer)));
        let (ca, cb) = (counts(&logs_a), counts(&logs_b));
        assert_eq!(ca.0 + cb.0, keys.len(), "{store_name}: {logs_a:?} {logs_b:?}");
        assert_eq!(a.store.gets(), keys.len(), "each key read from the store once");
        assert!(
            logs_a.iter().chain(&logs_b).any(|l| l.contains("another instance")),
            "one run stood aside: {logs_a:?} {logs_b:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_timer_payload_the_host_sends_runs() {
    let mut redis = RedisServer::start();
    let dir = TempDir::new("ra-timer-payloads");
    for (store_name, backing) in stores(&dir).await {
        // Each store starts from an empty Redis: no hot keys or locks left by the previous one.
        redis.command("FLUSHALL").expect("FLUSHALL");
        let extra = [("CacheTtlSeconds", "3600"), ("RefreshAheadHotMinReads", "0.5")];
        let (a, _) = Process::pair(&redis, backing, &extra);
        let key = format!("{store_name}-payloads");
        a.write(&key, json!("v")).await;
        a.read(Mode::Direct, "RefreshAheadRead", &key).await;
        let now = now_ms();
        let tick = now - now.rem_euclid(300_000);
        let scheduled = timer_info(Some(tick), json!(false));
        let first_run = json!({"Schedule": {"AdjustForDST": true}, "ScheduleStatus": {"Last": "0001-01-01T00:00:00+00:00", "Next": iso(tick + 300_000, false), "LastUpdated": "0001-01-01T00:00:00+00:00"}, "IsPastDue": false});
        let variants = [
            ("scheduled", Some(scheduled.clone())),
            ("ScheduleStatus null", Some(timer_info(None, json!(false)))),
            ("first run (year 1)", Some(first_run)),
            ("past due", Some(timer_info(Some(tick - 600_000), json!(true)))),
            ("past due as text", Some(timer_info(Some(tick - 600_000), json!("True")))),
            // Portal Test/Run: the host ignores the input and builds the TimerInfo itself; here it
            // arrives JSON-encoded as a string, and with the next tick as Next.
            ("portal run", Some(Value::String(timer_info(Some(tick + 300_000), json!(false)).to_string()))),
            ("no timer binding", None),
            ("unreadable timer", Some(json!("\"\""))),
        ];
        for (name, timer) in variants {
            // Drop the cached entry: the hot key is due.
            redis.command(&format!("DEL {key}")).unwrap();
            let gets = a.store.gets();
            let logs = run_timer(&a.router, timer).await;
            assert_eq!(counts(&logs), (1, 0, 0), "{store_name} {name}: {logs:?}");
            assert_eq!(a.store.gets(), gets + 1, "{name}");
            assert_eq!(a.entry(&key).await.value, Some(json!("v").into()), "{name}");
            if name.starts_with("past due") {
                assert!(logs[0].contains("past due"), "{logs:?}");
            }
            // A second run of the same tick finds the entry fresh (an hour) and skips it.
            assert_eq!(counts(&run_timer(&a.router, Some(scheduled.clone())).await), (0, 1, 0), "{name}");
        }
    }
    // Redis down: still a 200 envelope (a retry would not help), with the reason in Logs.
    redis.stop();
    let (a, _) = Process::pair(&redis, stores(&dir).await.remove(0).1, &[]);
    let logs = run_timer(&a.router, Some(timer_info(None, json!(false)))).await;
    assert_eq!(counts(&logs), (0, 0, 0));
    assert!(logs[0].contains("unavailable"), "{logs:?}");
}

// ---- fail-safe ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_safe_serves_stale_while_the_store_fails_and_stops_after_the_window() {
    let redis = RedisServer::start();
    let dir = TempDir::new("ra-failsafe");
    for (store_name, backing) in stores(&dir).await {
        // Each store starts from an empty Redis: no hot keys or locks left by the previous one.
        redis.command("FLUSHALL").expect("FLUSHALL");
        let extra = [
            ("CacheTtlSeconds", "1"),
            ("CacheTtlJitterPercent", "0"),
            ("FailSafeMaxStaleSeconds", "2"),
            ("RefreshAheadFactor", "0"),
        ];
        let time = ManualClock::starting_now();
        let (a, _) = Process::pair_on(&redis, backing, &extra, time.clone());
        let cases: Vec<(&str, Mode, String)> = ["CacheAside", "RefreshAheadRead"]
            .into_iter()
            .flat_map(|f| MODES.map(|m| (f, m, format!("{store_name}-fs-{f}-{m:?}"))))
            .collect();
        for (_, _, key) in &cases {
            a.write(key, json!({"k": key})).await;
        }
        time.advance(Duration::from_millis(1100));
        a.store.set_failing(true);
        for (function, mode, key) in &cases {
            let reply = a.read(*mode, function, key).await;
            assert_served(&reply, &json!({"k": key}), "stale", "stale");
        }
        let attempts = a.store.gets();
        assert_eq!(attempts, cases.len(), "one store attempt per key");
        for (function, mode, key) in &cases {
            assert_served(&a.read(*mode, function, key).await, &json!({"k": key}), "stale", "stale");
        }
        assert_eq!(a.store.gets(), attempts, "the failing store is not retried at once");
        // Past TTL (1 s) + FailSafeMaxStaleSeconds (2 s): nothing stale is left to serve.
        time.advance(Duration::from_millis(2100));
        for (function, mode, key) in &cases {
            let reply = a.read(*mode, function, key).await;
            assert_eq!(reply.status, 503, "{function} {mode:?}: {:?}", reply.body);
            assert!(reply.header("retry-after").is_some());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_store_gets_the_soft_timeout_then_the_load_completes_in_the_background() {
    let redis = RedisServer::start();
    let dir = TempDir::new("ra-soft");
    for (store_name, backing) in stores(&dir).await {
        // Each store starts from an empty Redis: no hot keys or locks left by the previous one.
        redis.command("FLUSHALL").expect("FLUSHALL");
        let extra = [
            ("CacheTtlSeconds", "1"),
            ("CacheTtlJitterPercent", "0"),
            ("RefreshAheadFactor", "0"),
            ("FailSafeSoftTimeoutMs", "200"),
        ];
        let time = ManualClock::starting_now();
        let (a, b) = Process::pair_on(&redis, backing, &extra, time.clone());
        let mut slowest = Duration::ZERO;
        for (function, mode) in [("CacheAside", Mode::Direct), ("RefreshAheadRead", Mode::Payload)] {
            let key = format!("{store_name}-soft-{function}");
            a.write(&key, json!("v1")).await;
            time.advance(Duration::from_millis(1100));
            a.store.set_delay(Duration::from_millis(900));
            let gets = a.store.gets();
            let started = Instant::now();
            assert_served(&a.read(mode, function, &key).await, &json!("v1"), "stale", "stale");
            assert!(started.elapsed() < Duration::from_millis(700), "answered after the soft timeout");
            slowest = slowest.max(started.elapsed());
            // Another process meanwhile: the load lock is still held, so it serves stale too.
            assert_served(&b.read(mode, function, &key).await, &json!("v1"), "stale", "stale");
            // The load finishes in the background and caches what the store said.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !a.entry(&key).await.is_fresh(time.now()) {
                assert!(Instant::now() < deadline, "the background load did not complete");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            a.store.set_delay(Duration::ZERO);
            assert_served(&b.read(mode, function, &key).await, &json!("v1"), "cache", "hit");
            assert_eq!(a.store.gets(), gets + 1, "{function}: one store read, finished in the background");
        }
        eprintln!(
            "FIGURES slow store ({store_name}, 900 ms a read, soft timeout 200 ms): CacheAside and RefreshAheadRead answered stale, slowest {slowest:?}; one store read each, finished in the background"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_down_reads_go_to_the_store() {
    let mut redis = RedisServer::start();
    let dir = TempDir::new("ra-bypass");
    for (store_name, backing) in stores(&dir).await {
        // Each store starts from a running, empty Redis (the previous round stopped it).
        redis.restart();
        let (a, _) = Process::pair(&redis, backing, &[]);
        let key = format!("{store_name}-bypass");
        a.write(&key, json!("from the store")).await;
        redis.stop();
        for mode in MODES {
            let reply = a.read(mode, "RefreshAheadRead", &key).await;
            assert_served(&reply, &json!("from the store"), "store", "bypass");
        }
    }
}
