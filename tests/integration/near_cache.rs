//! The near cache (L1) and its coherence across instances (invariant 8, docs/invalidation.md):
//! hits from memory make no Redis command; a write, delete, eviction or tag invalidation on any
//! instance stops every other instance from serving the older version within 100 ms; the writer
//! reads its own write at once; without a live invalidation feed the near cache is bypassed.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use cachepatterns::domain::key::Key;
use cachepatterns::patterns::Services;
use cachepatterns::patterns::invalidation::Scope;
use cachepatterns::ports::store::{Change, Store};
use cachepatterns::startup::{Application, Workers};
use common::host::{Call, FunctionDef, MODES, send};
use common::process::{Handler, sqlite_row};
use common::{RedisServer, Rng, TestApp};
use serde_json::{Value, json};

fn key(k: &str) -> Key {
    Key::new(k).unwrap()
}

/// Starts `app`'s workers and waits (bounded) until its invalidation feed is live.
async fn live(app: &Application) -> Workers {
    let workers = app.start_workers().expect("workers start");
    let started = Instant::now();
    while !app.redis.feed_is_live() {
        assert!(started.elapsed() < Duration::from_secs(10), "the invalidation feed did not come up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    workers
}

/// Polls `read` until it answers `wanted` or `limit` passes; returns how long it took.
async fn until<F, Fut>(limit: Duration, mut read: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if read().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

async fn read(services: &Services, k: &str) -> (Option<Value>, &'static str) {
    let lookup = services.cache_aside.get(&key(k)).await.expect("read");
    (lookup.value.map(|v| v.to_value()), lookup.tier.map(|t| t.as_str()).unwrap_or("-"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cache_hit_makes_no_redis_command_and_says_l1() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let workers = live(&t.app).await;
    let router = t.app.router();
    let (aside, through) = (FunctionDef::load("CacheAside"), FunctionDef::load("WriteThrough"));
    send(&router, MODES[0], &through, &Call::new("PUT", Some("near")).json(&json!({"v": 1}))).await;
    for mode in MODES {
        let round_trips = t.app.redis.round_trips();
        let hit = send(&router, mode, &aside, &Call::new("GET", Some("near"))).await;
        assert_eq!(
            (hit.status, hit.header("x-cache"), hit.header("x-cache-tier")),
            (200, Some("hit"), Some("l1")),
            "{mode:?}"
        );
        assert_eq!(hit.body["value"], json!({"v": 1}));
        assert_eq!(t.app.redis.round_trips(), round_trips, "{mode:?}: a near-cache hit makes no Redis call");
    }
    // Values over 256 KiB of JSON text are never held: every read of one goes to Redis. Its text
    // is the string and its two quotes.
    for (k, chars, tier) in [("at-bound", 256 * 1024 - 2, "l1"), ("over-bound", 256 * 1024 - 1, "l2")] {
        let value = json!("x".repeat(chars));
        send(&router, MODES[0], &through, &Call::new("PUT", Some(k)).json(&value)).await;
        for _ in 0..2 {
            let hit = send(&router, MODES[0], &aside, &Call::new("GET", Some(k))).await;
            assert_eq!((hit.status, hit.body["value"] == value), (200, true), "{k}");
        }
        let hit = send(&router, MODES[0], &aside, &Call::new("GET", Some(k))).await;
        assert_eq!(hit.header("x-cache-tier"), Some(tier), "{k}: {} bytes of JSON", value.to_string().len());
    }
    // The same read with the near cache off is a Redis hit.
    let off = TestApp::new(&redis, &[("L1MaxEntries", "0")]);
    let off_workers = live(&off.app).await;
    let hit = send(&off.app.router(), MODES[0], &aside, &Call::new("GET", Some("near"))).await;
    assert_eq!((hit.header("x-cache"), hit.header("x-cache-tier")), (Some("hit"), Some("l2")));
    off_workers.stop(Duration::from_secs(5)).await;
    workers.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_deletes_evictions_and_tags_on_one_instance_reach_the_others_near_caches() {
    let redis = RedisServer::start();
    let a = TestApp::new(&redis, &[]);
    let b = a.sibling(&redis.connection_string(), &[]);
    let (wa, wb) = (live(&a.app).await, live(&b).await);
    let tags = cachepatterns::domain::options::EntryOptions {
        tags: vec![cachepatterns::domain::options::Tag::new("grp").unwrap()],
        ttl: None,
    };
    a.app.services.write_through.write_with(&key("shared"), Change::Upsert(json!(1)), &tags).await.unwrap();
    // B caches it in memory.
    read(&b.services, "shared").await;
    assert_eq!(read(&b.services, "shared").await, (Some(json!(1)), "l1"));
    let limit = Duration::from_millis(100);
    let steps: Vec<(&str, Option<Value>)> =
        vec![("write", Some(json!(2))), ("delete", None), ("evict", None), ("tag", None), ("clear", None)];
    for (what, expected) in steps {
        // Before an eviction or invalidation B holds a fresh copy in memory.
        let mut held_since = None;
        if what == "evict" || what == "tag" || what == "clear" {
            a.app.services.write_through.write_with(&key("shared"), Change::Upsert(json!(what)), &tags).await.unwrap();
            let took = until(limit, || async { read(&b.services, "shared").await == (Some(json!(what)), "l1") }).await;
            assert!(took.is_some(), "{what}: B did not see A's write within {limit:?}");
            held_since = b.services.cache_aside.get(&key("shared")).await.unwrap().cached_at;
        }
        match what {
            "write" => {
                a.app.services.write_through.write_with(&key("shared"), Change::Upsert(json!(2)), &tags).await.unwrap();
            }
            "delete" => {
                a.app.services.write_through.write(&key("shared"), Change::Delete).await.unwrap();
            }
            "evict" => {
                a.app.services.invalidation.invalidate(&Scope::Keys { keys: vec![key("shared")], hard: true }).await;
            }
            "tag" => {
                a.app.services.invalidation.invalidate(&Scope::Tags(tags.tags.clone())).await;
            }
            _ => {
                a.app.services.invalidation.invalidate(&Scope::All).await;
            }
        }
        // A sees its own change at once.
        let own = a.app.services.cache_aside.get(&key("shared")).await.unwrap();
        if what == "write" || what == "delete" {
            assert_eq!(own.value.map(|v| v.to_value()), expected, "{what}: the writer reads its own write");
        } else {
            assert_ne!(
                own.cache,
                cachepatterns::patterns::CacheStatus::Hit,
                "{what}: the invalidating instance misses at once"
            );
        }
        let seen_by_b = until(limit, || async {
            let lookup = b.services.cache_aside.get(&key("shared")).await.unwrap();
            match what {
                "write" | "delete" => lookup.value.map(|v| v.to_value()) == expected,
                // B must not keep serving the copy it held from memory.
                _ => !(lookup.tier.map(|t| t.as_str()) == Some("l1") && lookup.cached_at == held_since),
            }
        })
        .await;
        assert!(seen_by_b.is_some(), "{what}: the other instance kept serving the older value for more than {limit:?}");
    }
    wa.stop(Duration::from_secs(5)).await;
    wb.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_live_feed_the_near_cache_is_bypassed_until_it_is_back_and_flushed() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let workers = live(&t.app).await;
    let s = &t.app.services;
    s.write_through.write(&key("feed"), Change::Upsert(json!("v1"))).await.unwrap();
    assert_eq!(read(s, "feed").await, (Some(json!("v1")), "l1"));
    // The subscriber connection is killed (as a failover or a network cut would), and the instance
    // notices: until then it cannot know, and serves its copies (for at most the feed's silence
    // bound, which `SILENT_FOR_AT_MOST` keeps short; the test needs the drop seen, not timed).
    let generation = t.app.redis.feed_generation();
    assert!(generation.is_some(), "the feed is live before the kill");
    redis.command("CLIENT KILL TYPE pubsub").expect("CLIENT KILL");
    let noticed = until(Duration::from_secs(10), || async { t.app.redis.feed_generation() != generation }).await;
    assert!(noticed.is_some(), "the instance never noticed its feed connection was killed");
    // The value changes in Redis while the feed is down and nobody announces it.
    let next = t.app.versions.next();
    t.sqlite.apply("feed", next, Change::Upsert(json!("v2"))).await.unwrap();
    redis.command("DEL feed").expect("DEL");
    // Until the feed is back every read goes to Redis; after it the old copy is gone.
    let saw_bypass = std::sync::atomic::AtomicBool::new(false);
    let back = until(Duration::from_secs(10), || async {
        let (value, tier) = read(s, "feed").await;
        assert_ne!((value, tier), (Some(json!("v1")), "l1"), "served the old copy from memory without a live feed");
        if tier != "l1" {
            saw_bypass.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        tier == "l1"
    })
    .await;
    assert!(saw_bypass.into_inner() && back.is_some());
    assert_eq!(read(s, "feed").await, (Some(json!("v2")), "l1"));
    // Paused Redis (no connection lost, no answers): the feed counts as down within its ping window.
    redis.pause();
    let bypassed = until(Duration::from_secs(2), || async { !t.app.redis.feed_is_live() }).await;
    redis.resume();
    assert!(bypassed.is_some(), "a silent Redis must stop the near cache");
    workers.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_reads_served_from_memory_still_count_as_hot() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let workers = live(&t.app).await;
    let s = &t.app.services;
    s.write_through.write(&key("hot"), Change::Upsert(json!(1))).await.unwrap();
    for _ in 0..20 {
        s.refresh_ahead.get(&key("hot")).await.unwrap();
    }
    let policy = t.app.settings.refresh_ahead.hot_keys;
    let before = t.app.redis.hotness("hot", &policy, t.app.versions.now()).await.unwrap();
    t.app.services.flush_buffered_reads().await;
    let after = t.app.redis.hotness("hot", &policy, t.app.versions.now()).await.unwrap();
    assert!(after >= before + 15.0, "reads served from memory must reach the hot-key set: {before} → {after}");
    workers.stop(Duration::from_secs(5)).await;
}

// ---- Several processes ----

/// One read as a process answered it.
#[derive(Debug, Clone)]
struct Read {
    key: String,
    version: u64,
    began: Instant,
    process: usize,
}

/// One acknowledged write.
#[derive(Debug, Clone)]
struct Ack {
    key: String,
    version: u64,
    acked: Instant,
}

const KEYS: [&str; 3] = ["n0", "n1", "n2"];

/// Randomized writes (and, with `invalidations`, evictions and tag invalidations, which also make
/// copies go away) from every process with reads everywhere; optionally the invalidation
/// connections are killed halfway. Every read must return a version
/// at least as new as every write acknowledged more than `slack` before the read began.
fn coherence(processes: usize, ops_per_process: usize, kill_feed_halfway: bool, invalidations: bool) {
    let slack = Duration::from_millis(100);
    let redis = RedisServer::start();
    let store_dir = common::TempDir::new("near-cache");
    let store = store_dir.path().join("shared.db").display().to_string();
    let redis_cs = redis.connection_string();
    let handlers: Vec<Arc<Handler>> = (0..processes)
        .map(|_| Arc::new(Handler::start(&[("RedisCache", &redis_cs), ("LocalStorePath", &store)])))
        .collect();
    // Every process has its feed live (its health says so) before the run starts.
    for h in &handlers {
        let started = Instant::now();
        loop {
            let (_, body) = h.request("GET", "/api/health", None).expect("health");
            if body["nearCache"]["status"] == "live" {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "near cache not live: {body}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for k in KEYS {
        handlers[0].request("PUT", &format!("/api/write-through/{k}?tags=all-of-them"), Some("0")).expect("seed");
    }
    let barrier = Arc::new(Barrier::new(processes));
    let reads = Arc::new(Mutex::new(Vec::<Read>::new()));
    let acks = Arc::new(Mutex::new(Vec::<Ack>::new()));
    let threads: Vec<_> = (0..processes)
        .map(|p| {
            let (handlers, barrier, reads, acks) = (handlers.clone(), barrier.clone(), reads.clone(), acks.clone());
            let redis_port_cmd = redis.connection_string();
            std::thread::spawn(move || {
                let _ = redis_port_cmd;
                let me = &handlers[p];
                let mut rng = Rng(0x5851_f42d_4c95_7f2d ^ (p as u64 + 7));
                barrier.wait();
                for i in 0..ops_per_process {
                    let k = KEYS[(rng.next() % KEYS.len() as u64) as usize];
                    let roll = rng.next() % 10;
                    // Without invalidations, only writes make copies out of date.
                    let roll = if !invalidations && (3..=4).contains(&roll) { 0 } else { roll };
                    match roll {
                        0..=2 => {
                            let (status, body) = me
                                .request(
                                    "PUT",
                                    &format!("/api/write-through/{k}?tags=all-of-them"),
                                    Some(&format!("\"p{p}-{i}\"")),
                                )
                                .expect("write");
                            if status == 200 {
                                let version = body["version"].as_u64().expect("version");
                                acks.lock().unwrap().push(Ack { key: k.into(), version, acked: Instant::now() });
                            }
                        }
                        3 => {
                            me.request("DELETE", &format!("/api/cache/{k}"), None).expect("evict");
                        }
                        4 => {
                            me.request("POST", "/api/cache", Some(r#"{"tags":["all-of-them"]}"#)).expect("tags");
                        }
                        _ => {
                            let began = Instant::now();
                            let (status, body) =
                                me.request("GET", &format!("/api/cache-aside/{k}"), None).expect("read");
                            if status == 200 {
                                let version = body["version"].as_u64().expect("version");
                                reads.lock().unwrap().push(Read { key: k.into(), version, began, process: p });
                            }
                        }
                    }
                }
            })
        })
        .collect();
    if kill_feed_halfway {
        // Wait until half the reads are in, then cut every subscriber connection.
        let started = Instant::now();
        while reads.lock().unwrap().len() < processes * ops_per_process * 6 / 20
            && started.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        redis.command("CLIENT KILL TYPE pubsub").expect("CLIENT KILL");
    }
    for t in threads {
        t.join().expect("a client thread panicked");
    }
    let reads = reads.lock().unwrap().clone();
    let acks = acks.lock().unwrap().clone();
    assert!(reads.len() > processes * ops_per_process / 4, "too few reads: {}", reads.len());
    assert!(acks.len() > processes * ops_per_process / 8, "too few writes: {}", acks.len());
    let mut stale = Vec::new();
    for r in &reads {
        let newest_settled =
            acks.iter().filter(|a| a.key == r.key && a.acked + slack < r.began).map(|a| a.version).max().unwrap_or(0);
        if r.version < newest_settled {
            stale.push((r.clone(), newest_settled));
        }
    }
    assert!(
        stale.is_empty(),
        "{} of {} reads served a version older than one acknowledged >{slack:?} before: {:?}",
        stale.len(),
        reads.len(),
        &stale[..stale.len().min(5)]
    );
    // After quiescence every process answers what the store holds, once the last announcements
    // have reached it: a copy may outlive a write on another process by the feed's delivery time
    // (the bound the reads above are held to), so reads are retried until `slack` after the last
    // acknowledged write, never longer.
    let settled_by = acks.iter().map(|a| a.acked).max().unwrap_or_else(Instant::now) + slack;
    let mut answers: HashMap<String, Vec<Value>> = HashMap::new();
    for k in KEYS {
        let (stored, version, _) = sqlite_row(std::path::Path::new(&store), k).expect("stored");
        for (n, h) in handlers.iter().enumerate() {
            let answer = loop {
                let answer = h.exchange("GET", &format!("/api/cache-aside/{k}"), &[], "").expect("read");
                if answer.body["version"].as_u64() == Some(version) || Instant::now() > settled_by {
                    break answer;
                }
                // Polls the condition (the feed's announcement has arrived); it signals nothing.
                std::thread::sleep(Duration::from_millis(2));
            };
            assert_eq!(
                answer.body["version"].as_u64(),
                Some(version),
                "{k}: process {n} still disagrees with the store {slack:?} after the last write (tier {:?})",
                answer.header("x-cache-tier")
            );
            answers.entry(k.into()).or_default().push(answer.body["value"].clone());
        }
        let stored: Value = serde_json::from_str(&stored.expect("a value")).expect("JSON");
        assert!(answers[k].iter().all(|v| *v == stored), "{k}: {:?} vs store {stored}", answers[k]);
    }
    let per_process: Vec<usize> = (0..processes).map(|p| reads.iter().filter(|r| r.process == p).count()).collect();
    eprintln!("near-cache coherence: {} reads {per_process:?}, {} writes, none stale", reads.len(), acks.len());
}

#[test]
fn two_processes_never_serve_a_version_older_than_100ms() {
    coherence(2, 600, false, false);
}

#[test]
fn three_processes_stay_coherent_with_the_invalidation_connections_killed_midway() {
    coherence(3, 500, true, true);
}
