//! Invalidation (docs/invalidation.md): evicting keys, tags, clearing everything, per-entry TTLs,
//! the ordering of invalidations and writes, and the replay of what failed while Redis was away.
//! On a single node and (same binary, `CACHEPATTERNS_TEST_REDIS=cluster`) on a cluster.

use crate::common;

use std::time::Duration;

use cachepatterns::domain::key::Key;
use cachepatterns::domain::options::{EntryOptions, Tag};
use cachepatterns::patterns::invalidation::{Outcome, Scope};
use cachepatterns::ports::Cache;
use cachepatterns::ports::clock::ManualClock;
use cachepatterns::ports::store::{Change, Store};
use common::host::{Call, FunctionDef, MODES, Mode, send};
use common::{RedisServer, TestApp};
use serde_json::json;

fn key(k: &str) -> Key {
    Key::new(k).unwrap()
}

struct Functions {
    aside: FunctionDef,
    through: FunctionDef,
    behind: FunctionDef,
    invalidate: FunctionDef,
    clear: FunctionDef,
}

fn functions() -> Functions {
    Functions {
        aside: FunctionDef::load("CacheAside"),
        through: FunctionDef::load("WriteThrough"),
        behind: FunctionDef::load("WriteBehind"),
        invalidate: FunctionDef::load("CacheInvalidate"),
        clear: FunctionDef::load("CacheClear"),
    }
}

fn with_header(mut call: Call, name: &str, value: &str) -> Call {
    call.headers.push((name.into(), value.into()));
    call
}

#[tokio::test]
async fn evicting_a_key_makes_the_next_read_miss_and_keeps_the_fail_safe_copy_unless_hard() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let f = functions();
    for mode in MODES {
        let k = format!("evict-{mode:?}");
        send(&router, mode, &f.through, &Call::new("PUT", Some(&k)).json(&json!("v1"))).await;
        assert_eq!(send(&router, mode, &f.aside, &Call::new("GET", Some(&k))).await.header("x-cache"), Some("hit"));
        let evicted = send(&router, mode, &f.invalidate, &Call::new("DELETE", Some(&k))).await;
        assert_eq!(evicted.status, 200, "{mode:?}: {:?}", evicted.body);
        assert_eq!(evicted.body["status"], "invalidated");
        assert!(evicted.body["stamp"].as_u64().unwrap() > 0);
        let read = send(&router, mode, &f.aside, &Call::new("GET", Some(&k))).await;
        assert_eq!(
            (read.status, read.header("x-cache")),
            (200, Some("miss")),
            "{mode:?}: evicted means the next read misses"
        );

        // The fail-safe copy stays: with the store down, the evicted value is served stale.
        send(&router, mode, &f.invalidate, &Call::new("DELETE", Some(&k))).await;
        t.store.set_failing(true);
        let stale = send(&router, mode, &f.aside, &Call::new("GET", Some(&k))).await;
        assert_eq!((stale.status, stale.header("x-cache")), (200, Some("stale")), "{mode:?}: {:?}", stale.body);
        t.store.set_failing(false);

        // A hard eviction removes it: with the store down there is nothing to serve.
        send(&router, mode, &f.aside, &Call::new("GET", Some(&k))).await;
        let hard = send(&router, mode, &f.invalidate, &Call::new("DELETE", Some(&k)).query("hard", "true")).await;
        assert_eq!((hard.status, hard.body["hard"].clone()), (200, json!(true)));
        t.store.set_failing(true);
        let gone = send(&router, mode, &f.aside, &Call::new("GET", Some(&k))).await;
        assert_eq!(gone.status, 503, "{mode:?}: a hard eviction leaves no stale copy: {:?}", gone.body);
        t.store.set_failing(false);
    }
}

/// A header sent on several lines is one list (RFC 9110 §5.3). Forwarded requests took the first
/// line only, where payload mode (the host puts every line's value in the header's array) took them
/// all: the same write was stored with other tags depending on how the host delivered it.
#[tokio::test]
async fn tags_sent_on_several_header_lines_are_all_taken_in_every_mode() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let f = functions();
    for mode in MODES {
        let k = format!("lines-{mode:?}");
        let put = Call::new("PUT", Some(&k)).json(&json!(1));
        let call = with_header(with_header(put, "x-cache-tags", "red"), "x-cache-tags", "round");
        let reply = send(&router, mode, &f.through, &call).await;
        assert_eq!(reply.status, 200, "{mode:?}: {:?}", reply.body);
        let stored = t.sqlite.get(&k).await.unwrap().unwrap();
        assert_eq!(stored.options.tag_names(), ["red", "round"], "{mode:?}: the tags of both lines");
    }
}

#[tokio::test]
async fn bulk_evictions_and_tags_invalidate_exactly_their_entries() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let f = functions();
    let mode = Mode::Direct;
    // Tags by query on one, by header on the other; write-behind takes them too.
    send(&router, mode, &f.through, &Call::new("PUT", Some("red-1")).query("tags", "red,round").json(&json!(1))).await;
    let by_header = with_header(Call::new("PUT", Some("red-2")).json(&json!(2)), "x-cache-tags", "red");
    assert_eq!(send(&router, mode, &f.through, &by_header).await.status, 200);
    let queued =
        send(&router, mode, &f.behind, &Call::new("PUT", Some("red-3")).query("tags", "red").json(&json!(3))).await;
    assert_eq!(queued.status, 202);
    send(&router, mode, &f.through, &Call::new("PUT", Some("blue")).query("tags", "blue").json(&json!(4))).await;
    send(&router, mode, &f.through, &Call::new("PUT", Some("plain")).json(&json!(5))).await;
    for k in ["red-1", "red-2", "red-3", "blue", "plain"] {
        assert_eq!(
            send(&router, mode, &f.aside, &Call::new("GET", Some(k))).await.header("x-cache"),
            Some("hit"),
            "{k}"
        );
    }
    let tags = send(&router, mode, &f.invalidate, &Call::new("POST", None).json(&json!({"tags": ["red"]}))).await;
    assert_eq!((tags.status, tags.body["tags"].clone()), (200, json!(["red"])), "{:?}", tags.body);
    for (k, expected) in [("red-1", "miss"), ("red-2", "miss"), ("blue", "hit"), ("plain", "hit")] {
        let read = send(&router, mode, &f.aside, &Call::new("GET", Some(k))).await;
        assert_eq!(read.header("x-cache"), Some(expected), "{k} after invalidating tag red");
    }
    // Reloaded entries are cached again, with their tags (kept in the store): a second
    // invalidation of the tag covers them too.
    for k in ["red-1", "red-2"] {
        assert_eq!(send(&router, mode, &f.aside, &Call::new("GET", Some(k))).await.header("x-cache"), Some("hit"));
    }
    send(&router, mode, &f.invalidate, &Call::new("POST", None).json(&json!({"tags": ["round"]}))).await;
    assert_eq!(send(&router, mode, &f.aside, &Call::new("GET", Some("red-1"))).await.header("x-cache"), Some("miss"));
    assert_eq!(send(&router, mode, &f.aside, &Call::new("GET", Some("red-2"))).await.header("x-cache"), Some("hit"));

    let keys = send(
        &router,
        mode,
        &f.invalidate,
        &Call::new("POST", None).json(&json!({"keys": ["blue", "plain", "never-cached"]})),
    )
    .await;
    assert_eq!((keys.status, keys.body["keys"].clone()), (200, json!(3)));
    for k in ["blue", "plain"] {
        assert_eq!(
            send(&router, mode, &f.aside, &Call::new("GET", Some(k))).await.header("x-cache"),
            Some("miss"),
            "{k}"
        );
    }
    // The stored items carry their tags.
    let stored = t.sqlite.get("red-1").await.unwrap().unwrap();
    assert_eq!(stored.options.tag_names(), ["red", "round"]);
}

/// Found by scripts/api-fuzz.sh: `?tags=` and `x-cache-tags` were joined, so two lists that were
/// each valid could be refused together (over 16 tags); and an `x-cache-tags` header that was not
/// visible ASCII was dropped, storing the write without its tags. The query now wins (as `?ttl=`
/// does over `Cache-Control`), the header must still be well-formed, and header values are read
/// as UTF-8 (else ISO-8859-1).
#[tokio::test]
async fn tags_come_from_the_query_or_else_the_header_whatever_its_bytes() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let f = functions();
    let tags = |prefix: &str| (0..10).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>().join(",");
    for mode in MODES {
        let k = format!("tagged-{mode:?}");
        let both = with_header(
            Call::new("PUT", Some(&k)).query("tags", &tags("q")).json(&json!(1)),
            "x-cache-tags",
            &tags("h"),
        );
        let put = send(&router, mode, &f.through, &both).await;
        assert_eq!(put.status, 200, "{mode:?}: {}", put.body);
        let stored = t.sqlite.get(&k).await.unwrap().unwrap();
        assert!(stored.options.tag_names().iter().all(|tag| tag.starts_with('q')), "{mode:?}: the query wins");

        let header_only = with_header(Call::new("PUT", Some(&k)).json(&json!(2)), "x-cache-tags", "café, naïve");
        let put = send(&router, mode, &f.through, &header_only).await;
        assert_eq!(put.status, 200, "{mode:?}: {}", put.body);
        assert_eq!(t.sqlite.get(&k).await.unwrap().unwrap().options.tag_names(), ["café", "naïve"], "{mode:?}");

        let control = with_header(Call::new("PUT", Some(&k)).json(&json!(3)), "x-cache-tags", "a\u{84}");
        let refused = send(&router, mode, &f.through, &control).await;
        assert_eq!((refused.status, &refused.body["error"]["code"]), (400, &json!("bad_tag")), "{mode:?}");
        // The header loses to the query, but it is not ignored when it is malformed.
        let refused = send(&router, mode, &f.through, &control.clone().query("tags", "ok")).await;
        assert_eq!((refused.status, &refused.body["error"]["code"]), (400, &json!("bad_tag")), "{mode:?}");
    }
}

#[tokio::test]
async fn clearing_everything_needs_the_admin_function() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let f = functions();
    assert_eq!(f.invalidate.auth_level.as_str(), "function");
    assert_eq!(f.clear.auth_level.as_str(), "admin");
    for mode in MODES {
        for k in ["c1", "c2"] {
            send(&router, mode, &f.through, &Call::new("PUT", Some(k)).json(&json!(k))).await;
        }
        let refused = send(&router, mode, &f.invalidate, &Call::new("POST", None).json(&json!({"all": true}))).await;
        assert_eq!((refused.status, refused.body["error"]["code"].clone()), (403, json!("admin_required")));
        assert_eq!(send(&router, mode, &f.aside, &Call::new("GET", Some("c1"))).await.header("x-cache"), Some("hit"));
        let cleared = send(&router, mode, &f.clear, &Call::new("POST", None)).await;
        assert_eq!((cleared.status, cleared.body["all"].clone()), (200, json!(true)), "{mode:?}: {:?}", cleared.body);
        for k in ["c1", "c2"] {
            assert_eq!(send(&router, mode, &f.aside, &Call::new("GET", Some(k))).await.header("x-cache"), Some("miss"));
        }
        // A write after the clear is cached as usual.
        send(&router, mode, &f.through, &Call::new("PUT", Some("c1")).json(&json!("after"))).await;
        assert_eq!(send(&router, mode, &f.aside, &Call::new("GET", Some("c1"))).await.header("x-cache"), Some("hit"));
    }
}

#[tokio::test]
async fn an_invalidation_never_hides_a_later_write_and_always_covers_an_earlier_one() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let s = &t.app.services;
    let tags = vec![cachepatterns::domain::options::Tag::new("t").unwrap()];
    let opts = cachepatterns::domain::options::EntryOptions { tags: tags.clone(), ttl: None };
    // Earlier write, later invalidation: covered.
    s.write_through.write_with(&key("order"), Change::Upsert(json!("v1")), &opts).await.unwrap();
    let Outcome::Done { stamp } = s.invalidation.invalidate(&Scope::Tags(tags.clone())).await else {
        panic!("Redis is up")
    };
    let read = s.cache_aside.get(&key("order")).await.unwrap();
    assert_eq!(read.cache, cachepatterns::patterns::CacheStatus::Miss);
    // Later write: never hidden, on this instance or another.
    let written = s.write_through.write_with(&key("order"), Change::Upsert(json!("v2")), &opts).await.unwrap();
    assert!(written.version > stamp, "the write's version orders it after the invalidation");
    let sibling = t.sibling(&redis.connection_string(), &[]);
    for services in [s, &sibling.services] {
        let read = services.cache_aside.get(&key("order")).await.unwrap();
        assert_eq!((read.cache, read.value), (cachepatterns::patterns::CacheStatus::Hit, Some(json!("v2").into())));
    }
    // Same for a key eviction.
    let Outcome::Done { .. } = s.invalidation.invalidate(&Scope::Keys { keys: vec![key("order")], hard: false }).await
    else {
        panic!()
    };
    s.write_through.write(&key("order"), Change::Upsert(json!("v3"))).await.unwrap();
    let read = sibling.services.cache_aside.get(&key("order")).await.unwrap();
    assert_eq!((read.cache, read.value), (cachepatterns::patterns::CacheStatus::Hit, Some(json!("v3").into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_read_the_store_before_an_eviction_cannot_cache_what_it_read() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[("FailSafeSoftTimeoutMs", "0")]);
    t.sqlite.apply("raced", 5, Change::Upsert(json!("old"))).await.unwrap();
    // The store answers the read at once but the answer takes 300 ms to come back: the eviction
    // (and the store changing behind the cache's back, as another program would) happen between.
    t.store.set_get_return_delay(Duration::from_millis(300));
    let services = t.app.services.clone();
    let load = tokio::spawn(async move { services.cache_aside.get(&key("raced")).await.unwrap() });
    while t.store.reads_done() == 0 {
        tokio::task::yield_now().await;
    }
    t.sqlite.apply("raced", 6, Change::Upsert(json!("new, written by another program"))).await.unwrap();
    let outcome = t.app.services.invalidation.invalidate(&Scope::Keys { keys: vec![key("raced")], hard: false }).await;
    assert!(matches!(outcome, Outcome::Done { .. }));
    let loaded = load.await.unwrap();
    assert_eq!(loaded.value, Some(json!("old").into()), "the slow load answers what it read");
    t.store.set_get_return_delay(Duration::ZERO);
    let next = t.app.services.cache_aside.get(&key("raced")).await.unwrap();
    assert_eq!(
        (next.value, next.cache),
        (Some(json!("new, written by another program").into()), cachepatterns::patterns::CacheStatus::Miss),
        "the value read before the eviction must not have been cached after it"
    );
}

#[tokio::test]
async fn a_write_can_set_its_own_ttl() {
    let redis = RedisServer::start();
    let clock = ManualClock::starting_now();
    let t = TestApp::on_clock(
        &redis.connection_string(),
        &[("CacheTtlSeconds", "300"), ("CacheTtlJitterPercent", "0")],
        clock.clone(),
    );
    let router = t.app.router();
    let f = functions();
    let mode = Mode::Direct;
    send(&router, mode, &f.through, &Call::new("PUT", Some("short")).query("ttl", "60").json(&json!(1))).await;
    let by_header =
        with_header(Call::new("PUT", Some("header")).json(&json!(2)), "Cache-Control", "public, max-age=120");
    assert_eq!(send(&router, mode, &f.through, &by_header).await.status, 200);
    send(&router, mode, &f.through, &Call::new("PUT", Some("default")).json(&json!(3))).await;
    let read = |k: &'static str| {
        let router = router.clone();
        let aside = f.aside.clone();
        async move { send(&router, mode, &aside, &Call::new("GET", Some(k))).await.header("x-cache").map(str::to_string) }
    };
    clock.advance(Duration::from_secs(61));
    assert_eq!(read("short").await.as_deref(), Some("miss"), "60 s passed");
    assert_eq!(read("header").await.as_deref(), Some("hit"));
    // Reloaded from the store at 61 s, the entry keeps its own TTL (until 121 s).
    clock.advance(Duration::from_secs(58));
    assert_eq!(read("short").await.as_deref(), Some("hit"));
    assert_eq!(read("header").await.as_deref(), Some("hit"));
    clock.advance(Duration::from_secs(3));
    assert_eq!(read("short").await.as_deref(), Some("miss"), "the reloaded entry has the write's TTL");
    assert_eq!(read("header").await.as_deref(), Some("miss"), "max-age=120 passed");
    assert_eq!(read("default").await.as_deref(), Some("hit"), "CacheTtlSeconds=300 has not");
    // Bad options are refused before anything is written.
    for (name, value) in [("ttl", "0"), ("ttl", "2592001"), ("ttl", "soon"), ("tags", "a,,b")] {
        let r =
            send(&router, mode, &f.through, &Call::new("PUT", Some("bad")).query(name, value).json(&json!(1))).await;
        assert_eq!(r.status, 400, "?{name}={value}: {:?}", r.body);
    }
    assert!(t.sqlite.get("bad").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_writes_and_invalidations_that_failed_while_redis_was_away_are_replayed() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let s = &t.app.services;
    s.write_through.write(&key("away"), Change::Upsert(json!("v1"))).await.unwrap();
    s.write_through.write(&key("evicted-while-away"), Change::Upsert(json!("e1"))).await.unwrap();
    assert_eq!(s.cache_aside.get(&key("away")).await.unwrap().value, Some(json!("v1").into()));
    // Redis refuses every write for now, as a failing-over or overloaded Redis does (a paused one
    // would run the queued commands when it wakes up, which hides what is tested here).
    redis.command("CONFIG SET min-replicas-to-write 1").expect("CONFIG SET");
    // The store takes the write; the cache cannot: the write remembers to evict older versions.
    let written = s.write_through.write(&key("away"), Change::Upsert(json!("v2"))).await.unwrap();
    assert!(!written.cached);
    let outcome = s.invalidation.invalidate(&Scope::Keys { keys: vec![key("evicted-while-away")], hard: false }).await;
    assert!(matches!(outcome, Outcome::Pending { .. }), "{outcome:?}");
    assert_eq!(s.invalidation.pending(), 2);
    // Another program changes the evicted item meanwhile.
    t.sqlite.apply("evicted-while-away", t.app.versions.next(), Change::Upsert(json!("e2"))).await.unwrap();
    assert_eq!(s.invalidation.replay_pending().await, 0, "nothing is replayed while Redis refuses");
    assert_eq!(s.invalidation.pending(), 2, "what failed again waits again");
    // Until the replay, the old values are still cached: that is what the replay fixes.
    assert_eq!(s.cache_aside.get(&key("away")).await.unwrap().value, Some(json!("v1").into()));
    assert_eq!(s.cache_aside.get(&key("evicted-while-away")).await.unwrap().value, Some(json!("e1").into()));
    redis.command("CONFIG SET min-replicas-to-write 0").expect("CONFIG SET");
    assert_eq!(s.invalidation.replay_pending().await, 2);
    assert_eq!(s.invalidation.pending(), 0);
    assert_eq!(s.cache_aside.get(&key("away")).await.unwrap().value, Some(json!("v2").into()));
    assert_eq!(s.cache_aside.get(&key("evicted-while-away")).await.unwrap().value, Some(json!("e2").into()));
}

#[tokio::test]
async fn the_fail_safe_cannot_bring_back_a_value_evicted_hard() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let s = &t.app.services;
    s.write_through.write(&key("gone"), Change::Upsert(json!("secret"))).await.unwrap();
    let read_before = Cache::get(&t.app.redis, "gone").await.unwrap().expect("cached");
    s.invalidation.invalidate(&Scope::Keys { keys: vec![key("gone")], hard: true }).await;
    // A reader that read the entry before the hard eviction, then found the store down, tries to
    // keep serving it as a fail-safe copy.
    let fail_safe = cachepatterns::domain::entry::CacheEntry { fail_safe: true, ..read_before };
    let put = Cache::put(&t.app.redis, "gone", &fail_safe, t.app.versions.now()).await.unwrap();
    assert_eq!(put, cachepatterns::ports::cache::Put::Evicted);
    assert_eq!(Cache::get(&t.app.redis, "gone").await.unwrap(), None, "the hard eviction holds");
}

/// Round trips a burst may keep in flight at once on a cluster, where keys of different slots
/// cannot share a script call (the adapter's bound; on a single endpoint one call is in flight).
const CLUSTER_CALLS_IN_FLIGHT: u64 = 16;

/// The keys `prefix-0`… in four hash-tag groups: four slots on a cluster, so that calls that take
/// many keys of one slot count alike on a single node and on a cluster.
fn grouped_keys(prefix: &str, n: usize) -> Vec<Key> {
    (0..n).map(|i| key(&format!("{{g{}}}{prefix}-{i}", i % 4))).collect()
}

/// Evicting many keys against a hung Redis puts a few calls on the shared connection, not one per
/// key: one call of many keys on a single node (at most a few, of a slot each, on a cluster), and
/// none after a call failed. The keys not evicted wait for Redis, as every failed eviction does.
/// Every request's Redis call queues behind what is in flight there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicting_many_keys_against_a_hung_redis_has_few_calls_in_flight() {
    const KEYS: usize = 1000;
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let s = &t.app.services;
    // Connected, the script loaded.
    let warm = s.invalidation.invalidate(&Scope::Keys { keys: vec![key("warm")], hard: false }).await;
    assert!(matches!(warm, Outcome::Done { .. }), "{warm:?}");
    let keys: Vec<Key> = (0..KEYS).map(|i| key(&format!("hung-{i}"))).collect();
    redis.pause();
    let before = t.app.redis.round_trips();
    t.app.redis.take_peak_in_flight();
    let outcome = s.invalidation.invalidate(&Scope::Keys { keys, hard: false }).await;
    let (started, peak) = (t.app.redis.round_trips() - before, t.app.redis.take_peak_in_flight());
    redis.resume();
    eprintln!(
        "FIGURES evicting {KEYS} keys against a hung Redis: {started} round trips started, {peak} in flight at most"
    );
    assert!(matches!(outcome, Outcome::Pending { .. }), "{outcome:?}");
    assert_eq!(s.invalidation.pending(), KEYS, "every key waits for Redis");
    let bound = if redis.is_cluster() { CLUSTER_CALLS_IN_FLIGHT } else { 1 };
    assert!((1..=bound).contains(&started), "{started} round trips started against a hung Redis; at most {bound}");
    assert!(peak <= bound, "{peak} round trips in flight at once; at most {bound}");
}

/// A call Redis refuses (its keys include a damaged hash, on which the eviction script fails)
/// fails alone: the calls for the other keys are still sent, and their entries evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_eviction_call_does_not_stop_the_others() {
    const KEYS: usize = 300;
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[("L1MaxEntries", "0")]);
    let s = &t.app.services;
    let keys = grouped_keys("refused", KEYS);
    let cached = [&keys[KEYS / 2], &keys[KEYS - 1]];
    for k in cached {
        s.write_through.write(k, Change::Upsert(json!("old"))).await.unwrap();
    }
    // The first key's hash holds an eviction deadline that is not a number: the script errors.
    s.write_through.write(&keys[0], Change::Upsert(json!("old"))).await.unwrap();
    redis.command(&format!("HSET {} invx garbage", keys[0].as_str())).expect("HSET");
    s.invalidation.invalidate(&Scope::Keys { keys: keys.clone(), hard: false }).await;
    for k in cached {
        let read = s.cache_aside.get(k).await.unwrap();
        assert_ne!(
            read.cache,
            cachepatterns::patterns::CacheStatus::Hit,
            "{}: still served from the cache",
            k.as_str()
        );
    }
}

/// What waited for Redis is replayed in a few multi-key calls once it answers, not one call per
/// key all at once (up to 10,000 keys may wait): one round trip per 100 keys of a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_many_evictions_is_sent_in_a_few_calls() {
    const KEYS: usize = 2000;
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let s = &t.app.services;
    let keys = grouped_keys("replayed", KEYS);
    let cached = &keys[..8];
    for k in cached {
        s.write_through.write(k, Change::Upsert(json!("old"))).await.unwrap();
        assert_eq!(s.cache_aside.get(k).await.unwrap().source, cachepatterns::patterns::Source::Cache);
    }
    // Redis refuses every write (see `cache_writes_and_invalidations_that_failed_…` above).
    redis.command("CONFIG SET min-replicas-to-write 1").expect("CONFIG SET");
    for batch in keys.chunks(1000) {
        let outcome = s.invalidation.invalidate(&Scope::Keys { keys: batch.to_vec(), hard: false }).await;
        assert!(matches!(outcome, Outcome::Pending { .. }), "{outcome:?}");
    }
    assert_eq!(s.invalidation.pending(), KEYS);
    redis.command("CONFIG SET min-replicas-to-write 0").expect("CONFIG SET");
    redis.reset_stats();
    let before = t.app.redis.round_trips();
    t.app.redis.take_peak_in_flight();
    assert_eq!(s.invalidation.replay_pending().await, KEYS, "every eviction is replayed");
    let (round_trips, peak) = (t.app.redis.round_trips() - before, t.app.redis.take_peak_in_flight());
    let calls = redis.command_calls();
    let scripts = calls.get("evalsha").copied().unwrap_or(0) + calls.get("eval").copied().unwrap_or(0);
    let announced = calls.get("publish").copied().unwrap_or(0);
    eprintln!(
        "FIGURES replay of {KEYS} evictions: {round_trips} round trips (a ping first), {scripts} script calls, {announced} announced, {peak} in flight at most"
    );
    assert_eq!(s.invalidation.pending(), 0);
    assert_eq!(announced, KEYS as u64, "every key is evicted and announced: {calls:?}");
    assert_eq!(round_trips, 1 + (KEYS as u64).div_ceil(100), "a ping, then one call per 100 keys of a slot");
    // On a cluster a node that never ran the script answers NOSCRIPT once, within the same call.
    assert!(scripts <= (KEYS as u64).div_ceil(100) + 3, "{scripts} script calls: {calls:?}");
    assert!(peak <= CLUSTER_CALLS_IN_FLIGHT, "{peak} round trips in flight at once");
    for k in cached {
        let read = s.cache_aside.get(k).await.unwrap();
        assert_eq!(read.cache, cachepatterns::patterns::CacheStatus::Miss, "{k:?} was evicted by the replay");
    }
}

/// A bulk read of entries a tag invalidation covers marks them stale in Redis in a few multi-key
/// calls, not one call per entry all at once (a bulk read names up to 1,000 keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_a_tag_invalidation_covers_are_marked_stale_in_a_few_calls() {
    const KEYS: usize = 400;
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let s = &t.app.services;
    let keys = grouped_keys("covered", KEYS);
    let tagged = EntryOptions { tags: vec![Tag::new("covered").unwrap()], ttl: None };
    for k in &keys {
        s.write_through.write_with(k, Change::Upsert(json!(1)), &tagged).await.unwrap();
    }
    let outcome = s.invalidation.invalidate(&Scope::Tags(vec![Tag::new("covered").unwrap()])).await;
    assert!(matches!(outcome, Outcome::Done { .. }), "{outcome:?}");
    let names: Vec<String> = keys.iter().map(|k| k.as_str().to_string()).collect();
    let read = |what: &'static str| {
        let (redis, app, names) = (&redis, &t.app, &names);
        async move {
            redis.reset_stats();
            let before = app.redis.round_trips();
            app.redis.take_peak_in_flight();
            let entries = Cache::get_many(&app.redis, names).await.expect("a bulk read of Redis");
            let (round_trips, peak) = (app.redis.round_trips() - before, app.redis.take_peak_in_flight());
            let scripts = redis.command_calls().get("evalsha").copied().unwrap_or(0);
            eprintln!(
                "FIGURES {what}: get_many of {KEYS} covered entries: {round_trips} round trips, {scripts} script calls, {peak} in flight at most"
            );
            assert!(entries.iter().all(|e| e.as_ref().is_some_and(|e| !e.is_fresh(app.versions.now()))), "{what}");
            round_trips
        }
    };
    // Two reads of the entries (200 keys each, pipelined) and the invalidation clocks beside them
    // (the feed is not followed here), then one call per 100 entries of a slot.
    assert_eq!(read("first read").await, 3 + (KEYS as u64).div_ceil(100));
    // Marked stale in Redis: nothing left to do.
    assert_eq!(read("second read").await, 3);
}

/// An eviction whose caller leaves midway (a client that disconnects, the host cancelling the
/// invocation) still evicts every key: it runs to its end on a task of its own. Cut with its
/// request, the keys of the calls not yet sent stayed cached, neither evicted nor waiting for
/// Redis. The second of its three calls is held at a proxy while the caller leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_whose_caller_leaves_midway_evicts_every_key() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const KEYS: usize = 300;
    let redis = RedisServer::start_single();
    let (armed, calls, holding, released) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let gate = {
        let (armed, calls, holding, released) = (armed.clone(), calls.clone(), holding.clone(), released.clone());
        move |chunk: &mut [u8]| {
            if !armed.load(Ordering::SeqCst) || !chunk.windows(5).any(|w| w == b"left-") {
                return;
            }
            if calls.fetch_add(1, Ordering::SeqCst) == 1 {
                holding.store(true, Ordering::SeqCst);
                while !released.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    };
    let proxy = common::Proxy::start(redis.port, Arc::new(gate), Arc::new(|_: &mut [u8]| {}));
    let t = TestApp::with_connection(&format!("127.0.0.1:{}", proxy.port), &[("L1MaxEntries", "0")]);
    let workers = t.app.start_workers().expect("the workers start");
    let s = t.app.services.clone();
    let keys: Vec<Key> = (0..KEYS).map(|i| key(&format!("left-{i}"))).collect();
    for k in &keys {
        s.write_through.write(k, Change::Upsert(json!("old"))).await.unwrap();
    }
    armed.store(true, Ordering::SeqCst);
    let caller = tokio::spawn({
        let (s, keys) = (s.clone(), keys.clone());
        async move { s.invalidation.invalidate(&Scope::Keys { keys, hard: false }).await }
    });
    common::until("the second eviction call comes", || holding.load(Ordering::SeqCst)).await;
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled(), "the caller left midway");
    released.store(true, Ordering::SeqCst);
    let released_at = std::time::Instant::now();
    while calls.load(Ordering::SeqCst) < KEYS / 100 {
        assert!(
            released_at.elapsed() < Duration::from_secs(5),
            "the eviction stopped with its caller: {} of {} calls sent",
            calls.load(Ordering::SeqCst),
            KEYS / 100
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let sent = calls.load(Ordering::SeqCst);
    // The reads go on the same connection, after the last call.
    let mut still_cached = 0;
    for k in &keys {
        if s.cache_aside.get(k).await.unwrap().cache == cachepatterns::patterns::CacheStatus::Hit {
            still_cached += 1;
        }
    }
    eprintln!(
        "FIGURES an eviction of {KEYS} keys whose caller left during its second call: {sent} writes to Redis carrying its keys, {still_cached} keys still cached"
    );
    assert_eq!(still_cached, 0, "{still_cached} of {KEYS} keys were never evicted");
    assert!(workers.stop(Duration::from_secs(5)).await);
}
