//! Bulk reads (`POST api/cache-aside` with `{"keys":[…]}`): hits in one Redis round trip, the
//! misses in one store read, per-key stampede protection, negative caching, bypass and fail-safe
//! as for a single key, and the input rules. On a single node and (same binary,
//! `CACHEPATTERNS_TEST_REDIS=cluster`) on a cluster.

use crate::common;

use std::time::Duration;

use cachepatterns::domain::key::Key;
use cachepatterns::domain::options::{EntryOptions, tags_from};
use cachepatterns::patterns::{CacheStatus, Source};
use cachepatterns::ports::Cache;
use cachepatterns::ports::clock::{Clock, ManualClock};
use cachepatterns::ports::store::{Change, Store};
use common::host::{Call, FunctionDef, MODES, Mode, send};
use common::{RedisServer, TestApp};
use serde_json::{Value, json};

fn bulk(keys: &[String]) -> Call {
    Call::new("POST", None).json(&json!({ "keys": keys }))
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn keys(names: &[String]) -> Vec<Key> {
    names.iter().map(|name| Key::new(name.as_str()).unwrap()).collect()
}

/// The items a bulk read answers for `names` stored as `{"n": i}` at version `100 + i`.
fn stored_items(names: &[String], source: &str) -> Value {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| json!({"key": name, "value": {"n": i}, "version": 100 + i, "source": source}))
        .collect()
}

async fn store_all(t: &TestApp, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        t.sqlite.apply(name, 100 + i as u64, Change::Upsert(json!({"n": i}))).await.unwrap();
    }
}

#[tokio::test]
async fn an_all_hit_bulk_read_is_one_redis_round_trip_and_no_store_call() {
    let redis = RedisServer::start();
    // Redis hits (L2): with the near cache on, hits would make no round trip at all.
    let t = TestApp::new(&redis, &[("L1MaxEntries", "0")]);
    // With the feed live, a read needs no fetch of the invalidation clocks.
    let _feed = common::live_feed(&t.app).await;
    let router = t.app.router();
    let aside = FunctionDef::load("CacheAside");
    let hot = names("hot", 50);
    store_all(&t, &hot).await;
    let warm = send(&router, Mode::Direct, &aside, &bulk(&hot)).await;
    assert_eq!((warm.status, warm.header("x-cache")), (200, Some("miss")), "{}", warm.body);
    for mode in MODES {
        redis.reset_stats();
        let (reads, round_trips) = (t.store.keys_read(), t.app.redis.round_trips());
        let hit = send(&router, mode, &aside, &bulk(&hot)).await;
        assert_eq!(
            (hit.status, hit.header("x-cache"), hit.header("x-cache-tier")),
            (200, Some("hit"), Some("l2")),
            "{mode:?}: {}",
            hit.body
        );
        assert_eq!(hit.body, json!({"items": stored_items(&hot, "cache"), "missing": [], "failed": []}), "{mode:?}");
        assert_eq!(t.app.redis.round_trips() - round_trips, 1, "{mode:?}: 50 hits are one round trip");
        assert_eq!(redis.command_calls().get("hmget"), Some(&50), "{mode:?}: one HMGET per key, pipelined");
        assert_eq!(t.store.keys_read(), reads, "{mode:?}: hits must not read the store");
    }
}

#[tokio::test]
async fn misses_are_loaded_in_one_store_read_and_absent_keys_are_remembered() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let aside = FunctionDef::load("CacheAside");
    for mode in MODES {
        let k = |name: &str| format!("{mode:?}-{name}");
        let (hit, cold, tagged, deleted, absent) = (k("hit"), k("cold"), k("tagged"), k("deleted"), k("absent"));
        t.sqlite.apply(&hit, 1, Change::Upsert(json!("cached"))).await.unwrap();
        t.sqlite.apply(&cold, 2, Change::Upsert(json!("loaded"))).await.unwrap();
        let options = EntryOptions { tags: tags_from(["blue"]).unwrap(), ttl: Some(Duration::from_secs(60)) };
        t.sqlite.apply_with(&tagged, 3, Change::Upsert(json!({"t": true})), &options).await.unwrap();
        t.sqlite.apply(&deleted, 4, Change::Upsert(json!("soon gone"))).await.unwrap();
        t.sqlite.apply(&deleted, 5, Change::Delete).await.unwrap();
        assert_eq!(send(&router, mode, &aside, &Call::new("GET", Some(&hit))).await.status, 200);

        let (gets, batches, reads) = (t.store.gets(), t.store.get_manys(), t.store.keys_read());
        let asked = [&absent, &hit, &cold, &deleted, &tagged, &hit].map(|k| k.to_string());
        let first = send(&router, mode, &aside, &bulk(&asked)).await;
        assert_eq!((first.status, first.header("x-cache")), (200, Some("miss")), "{mode:?}: {}", first.body);
        assert_eq!(
            first.body,
            json!({
                "items": [
                    {"key": hit, "value": "cached", "version": 1, "source": "cache"},
                    {"key": cold, "value": "loaded", "version": 2, "source": "store"},
                    {"key": tagged, "value": {"t": true}, "version": 3, "source": "store"},
                ],
                "missing": [absent, deleted],
                "failed": [],
            }),
            "{mode:?}: in the order asked, the repeated key once"
        );
        assert_eq!(t.store.get_manys() - batches, 1, "{mode:?}: the four misses in one store call");
        assert_eq!((t.store.gets() - gets, t.store.keys_read() - reads), (0, 4), "{mode:?}");
        // Cached as a single read caches: with the item's tags and TTL.
        let entry = t.app.redis.get(&tagged).await.unwrap().expect("the loaded key is cached");
        assert_eq!((entry.version, entry.tags.clone()), (3, vec!["blue".to_string()]), "{mode:?}");
        assert!(entry.fresh_until.as_millis() - entry.written_at.as_millis() <= 66_000, "its own TTL (+ jitter)");

        // Everything is cached now, the absent keys too (negative entries).
        let reads = t.store.keys_read();
        let second = send(&router, mode, &aside, &bulk(&asked)).await;
        assert_eq!((second.status, second.header("x-cache")), (200, Some("hit")), "{mode:?}: {}", second.body);
        assert_eq!(second.body["missing"], json!([absent, deleted]));
        assert_eq!(second.body["items"].as_array().map(Vec::len), Some(3));
        assert!(second.body["items"].as_array().unwrap().iter().all(|item| item["source"] == "cache"));
        assert_eq!(t.store.keys_read(), reads, "{mode:?}: a second bulk read is all hits");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_bulk_reads_of_cold_keys_read_each_key_about_once() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let _feed = common::live_feed(&t.app).await;
    let cold = names("cold", 20);
    store_all(&t, &cold).await;
    // Slow enough that every bulk read below starts while the first loads are still going on.
    t.store.set_delay(Duration::from_millis(200));
    let round_trips = t.app.redis.round_trips();
    let reads: Vec<_> = (0..32)
        .map(|_| {
            let (services, keys) = (t.app.services.clone(), keys(&cold));
            tokio::spawn(async move { services.cache_aside.get_many(&keys).await })
        })
        .collect();
    for read in reads {
        for (i, (key, answer)) in read.await.unwrap().into_iter().enumerate() {
            let lookup = answer.unwrap();
            assert_eq!(
                (key.as_str(), lookup.value, lookup.version),
                (cold[i].as_str(), Some(json!({"n": i}).into()), 100 + i as u64)
            );
        }
    }
    assert_eq!(t.store.keys_read(), 20, "32 bulk reads of 20 cold keys in one process: each key read once");
    // The reads that followed another's load waited in memory: besides each read's one cache read,
    // a key costs at most a gate, a write and an unlock (and a re-check for a read that missed
    // just before the key was cached).
    let spent = t.app.redis.round_trips() - round_trips;
    assert!(spent <= 32 + 4 * 20, "{spent} round trips: bulk reads must share loads in the process");

    // Two processes on one Redis and one store: the load gate keeps it to one read per key.
    let sibling = t.sibling(&redis.connection_string(), &[]);
    let other = names("shared", 20);
    store_all(&t, &other).await;
    let before = t.store.keys_read();
    let reads: Vec<_> = (0..32)
        .map(|n| {
            let services = if n % 2 == 0 { t.app.services.clone() } else { sibling.services.clone() };
            let keys = keys(&other);
            tokio::spawn(async move { services.cache_aside.get_many(&keys).await })
        })
        .collect();
    for read in reads {
        let answers = read.await.unwrap();
        assert_eq!(answers.len(), 20);
        assert!(answers.iter().all(|(_, answer)| answer.as_ref().is_ok_and(|lookup| lookup.value.is_some())));
    }
    assert_eq!(t.store.keys_read() - before, 20, "across two processes, each key is read once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_one_store_read_answers_and_nothing_is_cached() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let aside = FunctionDef::load("CacheAside");
    let stored = names("down", 3);
    store_all(&t, &stored).await;
    let mut asked = stored.clone();
    asked.push("down-absent".into());
    redis.pause();
    for mode in MODES {
        let (gets, batches) = (t.store.gets(), t.store.get_manys());
        let read = tokio::time::timeout(Duration::from_secs(15), send(&router, mode, &aside, &bulk(&asked)))
            .await
            .expect("no hang while Redis does not answer");
        assert_eq!((read.status, read.header("x-cache")), (200, Some("bypass")), "{mode:?}: {}", read.body);
        assert_eq!(
            read.body,
            json!({"items": stored_items(&stored, "store"), "missing": ["down-absent"], "failed": []}),
            "{mode:?}"
        );
        assert_eq!((t.store.get_manys() - batches, t.store.gets() - gets), (1, 0), "{mode:?}: one batched read");
    }
    redis.resume();
    let mut conn = redis.connection().await;
    for key in &asked {
        let exists: i64 = redis::cmd("EXISTS").arg(key).query_async(&mut conn).await.unwrap();
        assert_eq!(exists, 0, "{key}: nothing is cached by a read that bypassed Redis");
    }
}

#[tokio::test]
async fn with_the_store_down_stale_values_are_served_and_the_rest_fail() {
    let redis = RedisServer::start();
    let time = ManualClock::starting_now();
    let t = TestApp::on_clock(
        &redis.connection_string(),
        &[("CacheTtlSeconds", "1"), ("CacheTtlJitterPercent", "0"), ("FailSafeMaxStaleSeconds", "60")],
        time.clone(),
    );
    let router = t.app.router();
    let aside = FunctionDef::load("CacheAside");
    let cached = names("kept", 3);
    store_all(&t, &cached).await;
    assert_eq!(send(&router, Mode::Direct, &aside, &bulk(&cached)).await.status, 200);
    time.advance(Duration::from_millis(1100));
    t.store.set_failing(true);
    let mut asked = cached.clone();
    asked.push("never-cached".into());
    for mode in MODES {
        let read = send(&router, mode, &aside, &bulk(&asked)).await;
        assert_eq!((read.status, read.header("x-cache")), (200, Some("miss")), "{mode:?}: {}", read.body);
        assert_eq!(read.body["items"], stored_items(&cached, "stale"), "{mode:?}");
        assert_eq!(read.body["missing"], json!([]));
        assert_eq!(read.body["failed"][0]["key"], "never-cached");
        assert_eq!(read.body["failed"][0]["error"]["code"], "store_unavailable", "{mode:?}");
        assert_eq!(read.body["failed"].as_array().map(Vec::len), Some(1));
    }
    let lookups = t.app.services.cache_aside.get_many(&keys(&cached)).await;
    assert!(lookups.iter().all(|(_, answer)| answer.as_ref().is_ok_and(|lookup| lookup.source == Source::Stale)));

    // Nothing to serve for any key: the answer of a single read, 503 with the store's Retry-After.
    for mode in MODES {
        let down = send(&router, mode, &aside, &bulk(&["never-1".into(), "never-2".into()])).await;
        assert_eq!((down.status, down.header("retry-after")), (503, Some("2")), "{mode:?}: {}", down.body);
        assert_eq!(down.body["error"]["code"], "store_unavailable");
    }
    t.store.set_failing(false);
    time.advance(Duration::from_secs(31));
    let back = t.app.services.cache_aside.get_many(&keys(&cached)).await;
    assert!(back.iter().all(|(_, answer)| answer.as_ref().is_ok_and(|lookup| lookup.cache == CacheStatus::Miss)));
}

#[tokio::test]
async fn bad_bulk_reads_are_refused_and_single_key_posts_still_work() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let aside = FunctionDef::load("CacheAside");
    t.sqlite.apply("one", 7, Change::Upsert(json!("single"))).await.unwrap();
    let too_many: Vec<String> = names("k", 1001);
    let refused = [
        (json!({"keys": []}), "bad_body", "1 to 1000"),
        (json!({ "keys": too_many }), "bad_body", "1 to 1000"),
        (json!({"keys": "one"}), "bad_body", "array"),
        (json!({"keys": ["one", 2]}), "bad_key", "keys[1]"),
        (json!({"keys": ["one", "bad\u{1}"]}), "bad_key", "keys[1]"),
        (json!({"keys": ["one", ""]}), "bad_key", "keys[1]"),
        (json!({"keys": ["one"], "hard": true}), "bad_body", "unknown field"),
    ];
    for mode in MODES {
        for (body, code, says) in &refused {
            let reply = send(&router, mode, &aside, &Call::new("POST", None).json(body)).await;
            assert_eq!((reply.status, reply.body["error"]["code"].as_str()), (400, Some(*code)), "{mode:?}: {body}");
            let message = reply.body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(says), "{mode:?}: {message:?} should say {says:?}");
        }
        let exactly_1000 = send(&router, mode, &aside, &bulk(&too_many[..1000])).await;
        assert_eq!(exactly_1000.status, 200, "{mode:?}");
        assert_eq!(exactly_1000.body["missing"].as_array().map(Vec::len), Some(1000));
        // The seed's single-key forms are single reads, as before.
        let single = json!({"key": "one", "value": "single", "version": 7, "source": "cache"});
        for call in [
            Call::new("POST", None).json(&json!({"Key": "one"})),
            Call::new("POST", None).json(&json!("one")),
            Call::new("POST", None).text("one", "text/plain"),
        ] {
            let reply = send(&router, mode, &aside, &call).await;
            assert_eq!(reply.status, 200, "{mode:?}: {}", reply.body);
            assert_eq!(reply.body["key"], single["key"]);
            assert_eq!(reply.body["value"], single["value"]);
        }
        // Keys the single read takes too: any casing of "keys", keys with spaces and slashes.
        let odd = send(&router, mode, &aside, &Call::new("POST", None).json(&json!({"Keys": ["one", "a b/c"]}))).await;
        assert_eq!(odd.status, 200, "{mode:?}: {}", odd.body);
        assert_eq!(
            (odd.body["items"][0]["key"].as_str(), odd.body["missing"].clone()),
            (Some("one"), json!(["a b/c"]))
        );
    }
}

/// A bulk read sees what a single read sees: a key written after both were cached is the same
/// through either, and a near-cache hit says `l1`.
#[tokio::test]
async fn bulk_and_single_reads_agree_and_near_cache_hits_say_l1() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let _feed = common::live_feed(&t.app).await;
    let router = t.app.router();
    let (aside, through) = (FunctionDef::load("CacheAside"), FunctionDef::load("WriteThrough"));
    let pair = names("pair", 2);
    store_all(&t, &pair).await;
    assert_eq!(send(&router, Mode::Direct, &aside, &bulk(&pair)).await.header("x-cache"), Some("miss"));
    let near = send(&router, Mode::Direct, &aside, &bulk(&pair)).await;
    assert_eq!((near.header("x-cache"), near.header("x-cache-tier")), (Some("hit"), Some("l1")), "{}", near.body);
    let written = send(&router, Mode::Direct, &through, &Call::new("PUT", Some(&pair[1])).json(&json!("new"))).await;
    let version = written.body["version"].clone();
    let both = send(&router, Mode::Direct, &aside, &bulk(&pair)).await;
    let single = send(&router, Mode::Direct, &aside, &Call::new("GET", Some(&pair[1]))).await;
    assert_eq!(
        (both.body["items"][1]["value"].clone(), both.body["items"][1]["version"].clone()),
        (json!("new"), version)
    );
    assert_eq!(
        (single.body["value"].clone(), single.body["version"].clone()),
        (json!("new"), both.body["items"][1]["version"].clone())
    );
    let entry = t.app.redis.get(&pair[1]).await.unwrap().unwrap();
    assert_eq!(entry.value, Some(json!("new").into()));
}

/// A slow store: when every key it loads has a stale value, a bulk read serves those after the
/// soft timeout, as a single read does, and the one store read goes on and caches what it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_serves_stale_values_after_the_soft_timeout_while_the_load_goes_on() {
    let redis = RedisServer::start();
    let time = ManualClock::starting_now();
    let extra = [("CacheTtlSeconds", "1"), ("CacheTtlJitterPercent", "0"), ("FailSafeSoftTimeoutMs", "100")];
    let t = TestApp::on_clock(&redis.connection_string(), &extra, time.clone());
    let router = t.app.router();
    let aside = FunctionDef::load("CacheAside");
    let slow = names("slow", 3);
    store_all(&t, &slow).await;
    assert_eq!(send(&router, Mode::Direct, &aside, &bulk(&slow)).await.status, 200);
    time.advance(Duration::from_millis(1100));
    t.store.set_delay(Duration::from_millis(1500));
    let batches = t.store.get_manys();
    let stale = send(&router, Mode::Direct, &aside, &bulk(&slow)).await;
    assert_eq!(stale.body["items"], stored_items(&slow, "stale"), "{}", stale.body);
    // The load finishes in the background and caches what the store said.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for key in &slow {
        while !t.app.redis.get(key).await.unwrap().is_some_and(|entry| entry.is_fresh(time.now())) {
            assert!(std::time::Instant::now() < deadline, "the background load did not complete");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    t.store.set_delay(Duration::ZERO);
    let fresh = send(&router, Mode::Payload, &aside, &bulk(&slow)).await;
    assert_eq!((fresh.header("x-cache"), &fresh.body["items"]), (Some("hit"), &stored_items(&slow, "cache")));
    assert_eq!(t.store.get_manys() - batches, 1, "one store read, finished in the background");
}

/// A cold bulk read keeps a few Redis calls in flight on the shared connection, whatever the number
/// of keys: the load gates, the cache writes and the lock releases of its misses go out at most 16
/// at a time, not one per key all at once (a bulk read names up to 1,000 keys; every request's
/// Redis call queues behind what is in flight there). Measured by the Redis handle itself: the
/// most round trips it had in flight at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_bulk_read_keeps_a_few_redis_calls_in_flight() {
    const KEYS: usize = 500;
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[("L1MaxEntries", "0")]);
    // With the feed live, a gate needs no fetch of the invalidation clocks beside it.
    let _feed = common::live_feed(&t.app).await;
    let cold = names("cold", KEYS);
    store_all(&t, &cold).await;
    // Connected, the scripts loaded.
    t.app.services.cache_aside.get_many(&keys(&names("warm", 2))).await;
    let before = t.app.redis.round_trips();
    t.app.redis.take_peak_in_flight();
    let answers = t.app.services.cache_aside.get_many(&keys(&cold)).await;
    let (round_trips, peak) = (t.app.redis.round_trips() - before, t.app.redis.take_peak_in_flight());
    eprintln!("FIGURES a cold bulk read of {KEYS} keys: {round_trips} round trips, {peak} in flight at most");
    assert!(answers.iter().all(|(_, a)| a.as_ref().is_ok_and(|a| a.source == Source::Store)), "every key is loaded");
    assert!(peak <= 16, "{peak} round trips in flight at once; at most 16");
    let again = t.app.services.cache_aside.get_many(&keys(&cold)).await;
    assert!(again.iter().all(|(_, a)| a.as_ref().is_ok_and(|a| a.source == Source::Cache)), "every key was cached");
}

/// Damaged entries, fresh by their times but unreadable (not JSON, JSON a tree cannot hold, a
/// field that is not UTF-8), are misses for a bulk read as for a single read: the store's value
/// is answered and the entry written over, and nothing fails.
#[tokio::test]
async fn damaged_entries_are_reloaded_by_bulk_and_single_reads() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[("L1MaxEntries", "0")]);
    let _feed = common::live_feed(&t.app).await;
    let router = t.app.router();
    let aside = FunctionDef::load("CacheAside");
    let far = common::now().as_millis() + 3_600_000;
    // Inline commands read `\xff` in double quotes as that byte.
    let damage = [
        ("data", "not-json"),
        ("data", "1e400"),
        ("data", "\"\\\"\\\\ud800\\\"\""),
        ("data", &format!("{}{}", "[".repeat(200), "]".repeat(200))),
        ("data", "\"\\xff\\xfe\""),
        ("tags", "\"\\xff\""),
    ];
    for read in ["bulk", "single"] {
        let damaged = names(&format!("damaged-{read}"), damage.len());
        store_all(&t, &damaged).await;
        for (name, (field, text)) in damaged.iter().zip(damage) {
            let data = if field == "data" { text.to_string() } else { "1".to_string() };
            redis.command(&format!("HSET {name} data {data} ver 1 at 0 soft {far} hard {far}")).unwrap();
            if field != "data" {
                redis.command(&format!("HSET {name} {field} {text}")).unwrap();
            }
        }
        let answers: Vec<Value> = if read == "bulk" {
            let answer = send(&router, Mode::Direct, &aside, &bulk(&damaged)).await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            answer.body["items"].as_array().cloned().unwrap_or_default()
        } else {
            let mut items = Vec::new();
            for name in &damaged {
                let answer = send(&router, Mode::Direct, &aside, &Call::new("GET", Some(name))).await;
                assert_eq!(answer.status, 200, "{name}: {}", answer.body);
                items.push(answer.body);
            }
            items
        };
        assert_eq!(Value::Array(answers), stored_items(&damaged, "store"), "{read}");
        for (i, name) in damaged.iter().enumerate() {
            let repaired = t.app.redis.get(name).await.unwrap().expect("the entry was written again");
            assert_eq!((repaired.value, repaired.version), (Some(json!({"n": i}).into()), 100 + i as u64), "{name}");
        }
    }
}
