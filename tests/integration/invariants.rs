//! The invariants for reads and write-through (docs/reliability.md, README), each with a test that fails without it:
//! 1 (store never backwards), 2 (cache never backwards), 3 (write-through order), 5 (a hit is one
//! round trip), 6 (stampede protection), 7 (fail-open reads and fail-safe).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use cachepatterns::domain::entry::CacheEntry;
use cachepatterns::domain::key::Key;
use cachepatterns::patterns::{CacheStatus, Source};
use cachepatterns::ports::Cache;
use cachepatterns::ports::cache::Put;
use cachepatterns::ports::clock::ManualClock;
use cachepatterns::ports::store::{Change, Store};
use common::host::{Call, FunctionDef, MODES, Mode, send};
use common::{RedisServer, TestApp};
use serde_json::json;

fn key(k: &str) -> Key {
    Key::new(k).unwrap()
}

#[tokio::test]
async fn a_cache_hit_is_one_redis_round_trip_and_no_store_call() {
    let redis = RedisServer::start();
    // Redis hits (L2): the near cache is off here; `near_cache` checks that its hits make none.
    let t = TestApp::new(&redis, &[("L1MaxEntries", "0")]);
    let _feed = common::live_feed(&t.app).await;
    let router = t.app.router();
    let (aside, through) = (FunctionDef::load("CacheAside"), FunctionDef::load("WriteThrough"));
    send(&router, Mode::Direct, &through, &Call::new("PUT", Some("hot")).json(&json!({"v": 1}))).await;
    for mode in MODES {
        redis.reset_stats();
        let gets_before = t.store.gets();
        let round_trips = t.app.redis.round_trips();
        let hit = send(&router, mode, &aside, &Call::new("GET", Some("hot"))).await;
        assert_eq!(hit.header("x-cache"), Some("hit"));
        assert_eq!(t.app.redis.round_trips() - round_trips, 1);
        let calls = redis.command_calls();
        let total: u64 = calls
            .iter()
            // `ping`: the invalidation feed's heartbeat, on its own connection.
            .filter(|(name, _)| !matches!(name.as_str(), "info" | "config|resetstat" | "config" | "ping"))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(total, 1, "{mode:?}: a hit must be exactly one Redis command, saw {calls:?}");
        assert_eq!(calls.get("hmget"), Some(&1));
        assert_eq!(t.store.gets(), gets_before, "a hit must not read the store");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_in_one_process_make_one_store_read() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    t.sqlite.apply("stampede", 7, Change::Upsert(json!("loaded once"))).await.unwrap();
    t.store.set_delay(Duration::from_millis(200));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let patterns = t.app.services.clone();
            tokio::spawn(async move { patterns.cache_aside.get(&key("stampede")).await.unwrap() })
        })
        .collect();
    for task in tasks {
        let lookup = task.await.unwrap();
        assert_eq!((lookup.value, lookup.version), (Some(json!("loaded once").into()), 7));
    }
    assert_eq!(t.store.gets(), 1, "64 concurrent misses must share one store read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_across_processes_make_about_one_store_read() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    // Three "processes": separate caches, connections and single-flight tables, one Redis, one store.
    let apps = [t.app.clone(), t.sibling(&redis.connection_string(), &[]), t.sibling(&redis.connection_string(), &[])];
    t.sqlite.apply("shared", 3, Change::Upsert(json!([1, 2]))).await.unwrap();
    t.store.set_delay(Duration::from_millis(300));
    let mut tasks = Vec::new();
    for app in &apps {
        for _ in 0..10 {
            let patterns = app.services.clone();
            tasks.push(tokio::spawn(async move { patterns.cache_aside.get(&key("shared")).await.unwrap() }));
        }
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().value, Some(json!([1, 2]).into()));
    }
    assert_eq!(t.store.gets(), 1, "the Redis load lock keeps three processes to one store read");
}

#[tokio::test]
async fn write_through_store_failure_is_503_and_leaves_the_cache_untouched() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let (aside, through) = (FunctionDef::load("CacheAside"), FunctionDef::load("WriteThrough"));
    let first = send(&router, Mode::Direct, &through, &Call::new("PUT", Some("k")).json(&json!("v1"))).await;
    let v1 = first.body["version"].as_u64().unwrap();
    let mut conn = redis.connection().await;
    let before: Vec<(String, String)> = redis::cmd("HGETALL").arg("k").query_async(&mut conn).await.unwrap();
    t.store.set_failing(true);
    for mode in MODES {
        for call in [Call::new("PUT", Some("k")).json(&json!("v2")), Call::new("DELETE", Some("k"))] {
            let failed = send(&router, mode, &through, &call).await;
            assert_eq!(failed.status, 503, "{mode:?}");
            assert_eq!(failed.body["error"]["code"], "store_unavailable");
            assert_eq!(failed.header("retry-after"), Some("2"), "Retry-After comes from the store's hint");
        }
    }
    let after: Vec<(String, String)> = redis::cmd("HGETALL").arg("k").query_async(&mut conn).await.unwrap();
    assert_eq!(before, after, "a failed write-through must not touch the cache");
    let read = send(&router, Mode::Direct, &aside, &Call::new("GET", Some("k"))).await;
    assert_eq!((read.body["value"].clone(), read.body["version"].as_u64()), (json!("v1"), Some(v1)));
}

#[tokio::test]
async fn the_cache_never_goes_backwards() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let cache = t.app.redis;
    let policy = &t.app.settings.cache;
    let now = common::now();
    assert_eq!(cache.put("k", &policy.value_entry(json!("new"), 10, now), now).await.unwrap(), Put::Written);
    assert_eq!(
        cache.put("k", &policy.value_entry(json!("old"), 9, now), now).await.unwrap(),
        Put::KeptNewer,
        "an older version is refused"
    );
    assert_eq!(
        cache.put("k", &policy.negative_entry(3, now), now).await.unwrap(),
        Put::KeptNewer,
        "so is an older delete"
    );
    assert_eq!(
        cache.put("k", &policy.value_entry(json!("same"), 10, now), now).await.unwrap(),
        Put::Written,
        "the same version may be refreshed"
    );
    let entry = cache.get("k").await.unwrap().unwrap();
    assert_eq!((entry.value, entry.version), (Some(json!("same").into()), 10));
    // Versions are compared exactly, not as floating point (2^53 + 1 vs 2^53).
    let big = 9_007_199_254_740_993u64;
    assert_eq!(cache.put("big", &policy.value_entry(json!("a"), big, now), now).await.unwrap(), Put::Written);
    assert_eq!(cache.put("big", &policy.value_entry(json!("b"), big - 1, now), now).await.unwrap(), Put::KeptNewer);
    // A Redis key that holds something that is not a cache entry is neither an error nor destroyed:
    // it reads as a miss and the cache leaves it alone.
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("SET").arg("foreign").arg("x").query_async(&mut conn).await.unwrap();
    assert_eq!(cache.get("foreign").await.unwrap(), None);
    let entry = CacheEntry { fail_safe: false, ..policy.value_entry(json!(1), 1, now) };
    assert_eq!(cache.put("foreign", &entry, now).await.unwrap(), Put::NotOurs);
    let kept: String = redis::cmd("GET").arg("foreign").query_async(&mut conn).await.unwrap();
    assert_eq!(kept, "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_load_cannot_overwrite_a_newer_write_through() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let first = t.app.services.write_through.write(&key("race"), Change::Upsert(json!("old"))).await.unwrap();
    redis.command("FLUSHALL").unwrap();
    // The reader reads "old" from the store, then is slow to get back.
    t.store.set_get_return_delay(Duration::from_millis(400));
    let reader = {
        let patterns = t.app.services.clone();
        tokio::spawn(async move { patterns.cache_aside.get(&key("race")).await.unwrap() })
    };
    // Once the reader has its answer from the store (and is held with it), write a newer value.
    let started = std::time::Instant::now();
    while t.store.reads_done() == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the reader never read the store");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = t.app.services.write_through.write(&key("race"), Change::Upsert(json!("new"))).await.unwrap();
    assert!(second.version > first.version);
    let stale_read = reader.await.unwrap();
    assert_eq!(stale_read.value, Some(json!("old").into()), "the slow reader saw the old value");
    t.store.set_get_return_delay(Duration::ZERO);
    let now = t.app.services.cache_aside.get(&key("race")).await.unwrap();
    assert_eq!(
        (now.value, now.cache),
        (Some(json!("new").into()), CacheStatus::Hit),
        "the old value must not replace the newer cached one"
    );
}

#[tokio::test]
async fn the_store_never_goes_backwards_even_with_a_far_ahead_writer() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    // Another process with a clock an hour ahead wrote this key.
    let ahead = cachepatterns::domain::version::at(common::now().plus(Duration::from_secs(3600)));
    t.sqlite.apply("skew", ahead, Change::Upsert(json!("from the future"))).await.unwrap();
    let written = t.app.services.write_through.write(&key("skew"), Change::Upsert(json!("latest"))).await.unwrap();
    assert!(written.version > ahead, "the clock moved past the newer version instead of losing the write");
    let record = t.sqlite.get("skew").await.unwrap().unwrap();
    assert_eq!((record.value, record.version), (Some(json!("latest")), written.version));
    // And an old version replayed later is a no-op.
    assert!(matches!(
        t.sqlite.apply("skew", ahead, Change::Delete).await.unwrap(),
        cachepatterns::ports::store::Applied::Stale { .. }
    ));
}

#[tokio::test]
async fn absent_keys_are_cached_negatively() {
    let redis = RedisServer::start();
    let time = ManualClock::starting_now();
    let t = TestApp::on_clock(&redis.connection_string(), &[("NegativeCacheTtlSeconds", "1")], time.clone());
    let first = t.app.services.cache_aside.get(&key("nobody")).await.unwrap();
    assert_eq!((first.value.clone(), first.cache), (None, CacheStatus::Miss));
    let second = t.app.services.cache_aside.get(&key("nobody")).await.unwrap();
    assert_eq!((second.value, second.cache), (None, CacheStatus::Hit));
    assert_eq!(t.store.gets(), 1, "the absence was remembered");
    // Someone writes the store directly: the negative entry hides it until it expires.
    t.sqlite.apply("nobody", 5, Change::Upsert(json!("here now"))).await.unwrap();
    time.advance(Duration::from_millis(1100));
    let third = t.app.services.cache_aside.get(&key("nobody")).await.unwrap();
    assert_eq!((third.value, third.cache), (Some(json!("here now").into()), CacheStatus::Miss));
}

#[tokio::test]
async fn entries_use_the_instance_prefix_a_jittered_ttl_and_the_fail_safe_window() {
    let redis = RedisServer::start();
    let t = TestApp::new(
        &redis,
        &[
            ("RedisInstanceName", "app1:"),
            ("CacheTtlSeconds", "100"),
            ("CacheTtlJitterPercent", "10"),
            ("FailSafeMaxStaleSeconds", "50"),
        ],
    );
    t.app.services.write_through.write(&key("k"), Change::Upsert(json!(1))).await.unwrap();
    let mut conn = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    assert_eq!(keys, vec!["app1:k".to_string()], "the Redis key of `k` is exactly RedisInstanceName + k");
    let (at, soft, hard): (u64, u64, u64) =
        redis::cmd("HMGET").arg("app1:k").arg("at").arg("soft").arg("hard").query_async(&mut conn).await.unwrap();
    let ttl = soft - at;
    assert!((100_000..=110_000).contains(&ttl), "TTL {ttl} ms is CacheTtlSeconds plus up to 10%");
    assert_eq!(hard - soft, 50_000, "the entry outlives its TTL by FailSafeMaxStaleSeconds");
    let pttl: i64 = redis::cmd("PTTL").arg("app1:k").query_async(&mut conn).await.unwrap();
    assert!(pttl > 140_000 && pttl <= 160_000, "Redis expires the key at the end of the fail-safe window: {pttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_reads_bypass_to_the_store_and_recover() {
    let mut redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let (aside, through) = (FunctionDef::load("CacheAside"), FunctionDef::load("WriteThrough"));
    send(&router, Mode::Direct, &through, &Call::new("PUT", Some("k")).json(&json!("v1"))).await;
    redis.stop();
    for mode in MODES {
        let read =
            tokio::time::timeout(Duration::from_secs(15), send(&router, mode, &aside, &Call::new("GET", Some("k"))))
                .await
                .expect("no hang while Redis is down");
        assert_eq!(
            (read.status, read.header("x-cache"), &read.body["source"]),
            (200, Some("bypass"), &json!("store")),
            "{mode:?}"
        );
        let write = send(&router, mode, &through, &Call::new("PUT", Some("k")).json(&json!("v2"))).await;
        assert_eq!(
            (write.status, write.header("x-cache")),
            (200, Some("bypass")),
            "the store took the write; the cache could not"
        );
        let missing = send(&router, mode, &aside, &Call::new("GET", Some("absent"))).await;
        assert_eq!((missing.status, missing.header("x-cache")), (404, Some("bypass")));
    }
    let health = send(&router, Mode::Direct, &FunctionDef::load("Health"), &Call::new("GET", None)).await;
    assert_eq!(health.status, 503);
    assert_eq!(
        (health.body["redis"]["status"].as_str(), health.body["store"]["status"].as_str()),
        (Some("down"), Some("up"))
    );

    redis.restart();
    let mut recovered = None;
    for _ in 0..100 {
        let read = send(&router, Mode::Direct, &aside, &Call::new("GET", Some("k"))).await;
        if read.header("x-cache") != Some("bypass") {
            recovered = Some(read);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let read = recovered.expect("the cache is used again once Redis is back");
    assert_eq!(read.body["value"], "v2");
    let health = send(&router, Mode::Direct, &FunctionDef::load("Health"), &Call::new("GET", None)).await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn store_down_serves_stale_within_the_fail_safe_window_then_503() {
    let redis = RedisServer::start();
    let time = ManualClock::starting_now();
    let t = TestApp::on_clock(
        &redis.connection_string(),
        &[("CacheTtlSeconds", "1"), ("CacheTtlJitterPercent", "0"), ("FailSafeMaxStaleSeconds", "2")],
        time.clone(),
    );
    let router = t.app.router();
    let aside = FunctionDef::load("CacheAside");
    let written = t.app.services.write_through.write(&key("k"), Change::Upsert(json!("kept"))).await.unwrap();
    // Redis itself deletes the entry once the fail-safe window is over (TTL + max stale = 3 s).
    let pttl: i64 = redis.command("PTTL k").unwrap().trim().trim_start_matches(':').parse().unwrap();
    assert!(pttl > 0 && pttl <= 3000, "the entry expires in Redis at the end of its fail-safe window: {pttl} ms");
    time.advance(Duration::from_millis(1100));
    t.store.set_failing(true);
    for mode in MODES {
        let stale = send(&router, mode, &aside, &Call::new("GET", Some("k"))).await;
        assert_eq!((stale.status, stale.header("x-cache")), (200, Some("stale")), "{mode:?}: {}", stale.body);
        assert_eq!(stale.body, json!({"key": "k", "value": "kept", "version": written.version, "source": "stale"}));
    }
    assert_eq!(t.store.gets(), 1, "after one failure the store is left alone for the fail-safe throttle");
    let lookup = t.app.services.cache_aside.get(&key("k")).await.unwrap();
    assert_eq!(lookup.source, Source::Stale);
    // Past the fail-safe window there is nothing to serve.
    time.advance(Duration::from_millis(2100));
    let gone = send(&router, Mode::Direct, &aside, &Call::new("GET", Some("k"))).await;
    assert_eq!(gone.status, 503);
    assert!(gone.header("retry-after").is_some());
    // A key never cached gets 503 at once while the store is down.
    let never = send(&router, Mode::Payload, &aside, &Call::new("GET", Some("never"))).await;
    assert_eq!(never.status, 503);
    // When the store is back, the value is fresh again.
    t.store.set_failing(false);
    let back = t.app.services.cache_aside.get(&key("k")).await.unwrap();
    assert_eq!((back.value, back.source), (Some(json!("kept").into()), Source::Store));
    eprintln!(
        "FIGURES store down: {} reads served stale (200) within the window with 1 store attempt; past it 503 + Retry-After, a key never cached 503; fresh again once the store is back",
        MODES.len()
    );
}

#[tokio::test]
async fn health_reports_each_dependency() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let health = FunctionDef::load("Health");
    for mode in MODES {
        let up = send(&router, mode, &health, &Call::new("GET", None)).await;
        assert_eq!(up.status, 200);
        assert_eq!(
            (up.body["status"].as_str(), up.body["redis"]["status"].as_str(), up.body["store"]["kind"].as_str()),
            (Some("healthy"), Some("up"), Some("sqlite"))
        );
    }
    t.store.set_failing(true);
    let down = send(&router, Mode::Payload, &health, &Call::new("GET", None)).await;
    assert_eq!((down.status, down.body["store"]["status"].as_str()), (503, Some("down")));
    let _ = Arc::clone(&t.store);
}

/// A damaged entry (fresh by its times, its value unreadable: not JSON, or not even UTF-8) is no
/// lock: the miss reloads it from the store and writes it again at once, instead of waiting on a
/// load nobody is doing.
#[tokio::test]
async fn a_damaged_entry_is_reloaded_and_repaired_without_waiting() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[("L1MaxEntries", "0")]);
    let _feed = common::live_feed(&t.app).await;
    let far = common::now().as_millis() + 3_600_000;
    // Inline commands read `\xff` in double quotes as that byte.
    for (n, (k, data)) in [("damaged", "not-json"), ("damaged-bytes", "\"\\xff\\xfe\"")].into_iter().enumerate() {
        t.sqlite.apply(k, 5, Change::Upsert(json!("good"))).await.unwrap();
        redis.command(&format!("HSET {k} data {data} ver 1 at 0 soft {far} hard {far}")).unwrap();
        let round_trips = t.app.redis.round_trips();
        let lookup = t.app.services.cache_aside.get(&key(k)).await.unwrap();
        assert_eq!((lookup.value, lookup.source), (Some(json!("good").into()), Source::Store), "{k}");
        // The read, the gate, the repair: no polling for a lock that is not there.
        assert_eq!(t.app.redis.round_trips() - round_trips, 3, "{k}: one read, one gate, one write");
        let repaired = t.app.redis.get(k).await.unwrap().expect("the entry was written again");
        assert_eq!((repaired.value, repaired.version), (Some(json!("good").into()), 5), "{k}");
        assert_eq!(t.store.gets(), n + 1, "{k}");
    }
}
