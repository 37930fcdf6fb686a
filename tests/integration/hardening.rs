//! Field hardening: what testing the service as an attacker and as an operator found, each as a
//! test that failed before the fix (see `docs/reliability.md`).

use crate::common;

use std::time::{Duration, Instant};

use cachepatterns::adapters::redis::ReaderConfig;
use cachepatterns::domain::key::Key;
use cachepatterns::domain::version::{at, issued_at};
use cachepatterns::patterns::write_behind::DrainPolicy;
use cachepatterns::patterns::{HybridClock, QueueConsumer};
use cachepatterns::ports::DeadLetters;
use cachepatterns::ports::clock::{Clock, ManualClock};
use cachepatterns::ports::store::{Applied, Change, Store};
use common::host::{Call, FunctionDef, MODES, Mode, send};
use common::{Blackhole, RedisServer, TestApp, until};
use serde_json::{Value, json};

const WRITE_BEHIND_STREAM: &str = "\u{1f}writebehind";

fn consumer(t: &TestApp, tune: impl FnOnce(&mut ReaderConfig, &mut DrainPolicy)) -> QueueConsumer {
    common::stream_consumer(&t.app, Duration::from_millis(20), tune)
}

async fn drain(c: &QueueConsumer, redis: &RedisServer) {
    for _ in 0..50 {
        c.run_once().await.unwrap();
        if redis.command(&format!("XLEN {WRITE_BEHIND_STREAM}")).unwrap().trim() == ":0" {
            return;
        }
    }
    panic!("the write-behind stream did not drain");
}

struct Functions {
    aside: FunctionDef,
    through: FunctionDef,
    behind: FunctionDef,
    dead_letters: FunctionDef,
    health: FunctionDef,
}

fn functions() -> Functions {
    Functions {
        aside: FunctionDef::load("CacheAside"),
        through: FunctionDef::load("WriteThrough"),
        behind: FunctionDef::load("WriteBehind"),
        dead_letters: FunctionDef::load("DeadLetters"),
        health: FunctionDef::load("Health"),
    }
}

/// Defect 1: a key named like an internal structure read or overwrote it, destroying acknowledged
/// writes and dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_named_like_internal_structures_are_ordinary_keys() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let f = functions();
    // Writes acknowledged but not applied yet (no consumer runs), and dead letters waiting.
    for i in 0..50 {
        let put =
            send(&router, Mode::Direct, &f.behind, &Call::new("PUT", Some(&format!("acked{i}"))).json(&json!(i))).await;
        assert_eq!(put.status, 202);
    }
    for i in 0..3 {
        t.record_dead_letter(&format!("letter {i}")).await;
    }
    let names =
        ["writebehind", "deadletter", "lock", "hot", "{hot}set", "{hot}landmark", "node", "appliers", "refresh-ahead"];
    for name in names {
        for mode in MODES {
            let miss = send(&router, mode, &f.aside, &Call::new("GET", Some(name))).await;
            assert_eq!(miss.status, 404, "{name:?} {mode:?}: {:?}", miss.body);
            let put = send(&router, mode, &f.through, &Call::new("PUT", Some(name)).json(&json!({"mine": name}))).await;
            assert_eq!(put.status, 200, "{name:?} {mode:?}: {:?}", put.body);
            let hit = send(&router, mode, &f.aside, &Call::new("GET", Some(name))).await;
            assert_eq!(
                (hit.status, &hit.body["value"], hit.header("x-cache")),
                (200, &json!({"mine": name}), Some("hit")),
                "{name:?} {mode:?}: an ordinary, cached key"
            );
            let queued = send(&router, mode, &f.behind, &Call::new("PUT", Some(name)).json(&json!("later"))).await;
            assert_eq!(queued.status, 202, "{name:?} {mode:?}: {:?}", queued.body);
            let deleted = send(&router, mode, &f.through, &Call::new("DELETE", Some(name))).await;
            assert_eq!(deleted.status, 200, "{name:?} {mode:?}: {:?}", deleted.body);
        }
    }
    assert_eq!(t.app.dead_letters().count().await.unwrap(), 3, "no dead letter was lost");
    drain(&consumer(&t, |_, _| {}), &redis).await;
    for i in 0..50 {
        let record = t.sqlite.get(&format!("acked{i}")).await.unwrap();
        assert_eq!(record.and_then(|r| r.value), Some(json!(i)), "acknowledged write acked{i} was lost");
    }
    for name in names {
        assert!(t.sqlite.get(name).await.unwrap().unwrap().is_deleted(), "{name:?}: the last write (a delete) wins");
    }
    let health = send(&router, Mode::Direct, &f.health, &Call::new("GET", None)).await;
    assert_eq!(health.status, 200, "{}", health.body);
    eprintln!(
        "FIGURES internal names: {} names × {} host modes, {} requests answered as ordinary keys; 50 of 50 queued writes applied, 3 of 3 dead letters kept: 0 lost",
        names.len(),
        MODES.len(),
        names.len() * MODES.len() * 5
    );
}

fn event(key: &str, version: u64, value: Value) -> String {
    json!({"key": key, "op": "upsert", "value": value, "version": version, "ts": "2026-11-26T00:00:00Z"}).to_string()
}

async fn event_hub_batch(router: &axum::Router, events: &[String]) -> (u16, Value) {
    let data = serde_json::to_string(events).unwrap();
    let envelope = json!({"Data": {"events": data}, "Metadata": {"PartitionContext": {"PartitionId": "0"}}});
    common::host::invoke(router, "EventHubConsumer", &envelope).await
}

/// Defect 3: one event with version `i64::MAX` moved the clock past what the store holds, and every
/// later write-through failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_implausible_event_version_is_dead_lettered_and_never_moves_the_clock() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let now = common::now();
    let two_days_ahead = at(now.plus(Duration::from_secs(48 * 3600)));
    let (status, reply) = event_hub_batch(
        &router,
        &[
            event("poisoned", i64::MAX as u64, json!("max")),
            event("from-the-future", two_days_ahead, json!("future")),
            event("fine", at(now), json!("ok")),
        ],
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(t.sqlite.get("poisoned").await.unwrap(), None);
    assert_eq!(t.sqlite.get("from-the-future").await.unwrap(), None);
    assert_eq!(t.sqlite.get("fine").await.unwrap().unwrap().value, Some(json!("ok")));
    let letters = t.app.dead_letters().list(10, None).await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters.iter().all(|l| l.reason.contains("implausible")), "{letters:?}");
    // Writes of every other key go on, with versions of now.
    let f = functions();
    let put = send(&router, Mode::Direct, &f.through, &Call::new("PUT", Some("other")).json(&json!(1))).await;
    assert_eq!(put.status, 200, "{}", put.body);
    let version = put.body["version"].as_u64().unwrap();
    assert!(issued_at(version).since(now) < Duration::from_secs(60), "the clock did not jump: {version}");
    eprintln!(
        "FIGURES implausible event versions: 3 events, {} dead-lettered, 1 applied; the next write-through issued {:?} after the test began",
        letters.len(),
        issued_at(version).since(now)
    );
}

/// The same class, in a store an older release already poisoned: only that key is refused.
#[tokio::test]
async fn a_stored_implausible_version_refuses_that_key_only() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    t.sqlite.apply("stuck", i64::MAX as u64, Change::Upsert(json!("poison"))).await.unwrap();
    let router = t.app.router();
    let f = functions();
    for mode in MODES {
        let stuck = send(&router, mode, &f.through, &Call::new("PUT", Some("stuck")).json(&json!(1))).await;
        assert_eq!((stuck.status, &stuck.body["error"]["code"]), (409, &json!("stored_version_implausible")));
        let other = send(&router, mode, &f.through, &Call::new("PUT", Some("other")).json(&json!(1))).await;
        assert_eq!(other.status, 200, "{}", other.body);
    }
    eprintln!(
        "FIGURES stored implausible version, write-through: {0} × 409 on that key, {0} × 200 on another",
        MODES.len()
    );
}

/// The same class on the write-behind path: a write to a key whose store holds an implausible
/// version was answered `202`, counted as stale and dropped, while the cache served it. Both queue
/// transports dead-letter it, saying why, and the cache agrees with the store again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_behind_to_a_key_whose_store_holds_an_implausible_version_is_dead_lettered() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let f = functions();
    for key in ["stuck-stream", "stuck-hub"] {
        t.sqlite.apply(key, i64::MAX as u64, Change::Upsert(json!("poison"))).await.unwrap();
        let put = send(&router, Mode::Direct, &f.behind, &Call::new("PUT", Some(key)).json(&json!("queued"))).await;
        assert_eq!(put.status, 202, "{}", put.body);
    }
    // Event Hubs delivers the event to `EventHubConsumer`: take it off the stream and post it.
    let mut conn = redis.connection().await;
    let entries: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(WRITE_BEHIND_STREAM).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    let hub_entry = entries
        .ids
        .iter()
        .find(|entry| entry.get::<String>("event").unwrap().contains("stuck-hub"))
        .expect("the stuck-hub write is queued");
    let _: i64 = redis::cmd("XDEL").arg(WRITE_BEHIND_STREAM).arg(&hub_entry.id).query_async(&mut conn).await.unwrap();
    let (status, reply) = event_hub_batch(&router, &[hub_entry.get::<String>("event").unwrap()]).await;
    assert_eq!(status, 200, "{reply}");
    // The Redis Stream consumer.
    let c = consumer(&t, |_, _| {});
    let mut stale = 0;
    for _ in 0..50 {
        stale += c.run_once().await.unwrap().stale_skipped;
        if redis.command(&format!("XLEN {WRITE_BEHIND_STREAM}")).unwrap().trim() == ":0" {
            break;
        }
    }
    let letters = t.app.dead_letters().list(10, None).await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    for letter in &letters {
        assert!(letter.reason.contains("implausible"), "{:?}", letter.reason);
    }
    assert_eq!(stale, 0, "a write that can never be applied is not stale");
    for key in ["stuck-stream", "stuck-hub"] {
        assert!(letters.iter().any(|l| l.event.contains(key)), "{key} is dead-lettered: {letters:?}");
        let stored = t.sqlite.get(key).await.unwrap().unwrap();
        assert_eq!((stored.value, stored.version), (Some(json!("poison")), i64::MAX as u64), "{key}");
        let read = send(&router, Mode::Direct, &f.aside, &Call::new("GET", Some(key))).await;
        assert_eq!(
            (read.status, &read.body["value"]),
            (200, &json!("poison")),
            "{key}: the cache agrees with the store"
        );
    }
    eprintln!(
        "FIGURES stored implausible version, write-behind: 2 writes answered 202 (Redis Stream, Event Hubs), {} dead-lettered, {stale} counted as stale, reads answer the store's value",
        letters.len()
    );
}

/// Defect 6: malformed dead-letter ids and paging parameters looked like a Redis outage.
#[tokio::test]
async fn dead_letter_ids_and_paging_are_checked() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let f = functions();
    let (mut refused, mut served) = (0, 0);
    for mode in MODES {
        for method in ["GET", "POST", "DELETE"] {
            for id in ["abc", "1-x", "\u{ff}", "1-2-3"] {
                let reply = send(&router, mode, &f.dead_letters, &Call::new(method, Some(id))).await;
                assert_eq!(
                    (reply.status, &reply.body["error"]["code"]),
                    (400, &json!("bad_id")),
                    "{method} {id:?} {mode:?}"
                );
                refused += 1;
            }
        }
        for (name, value, code) in [
            ("after", "\u{ff}", "bad_id"),
            ("after", "abc", "bad_id"),
            ("count", "abc", "bad_count"),
            ("count", "0", "bad_count"),
            ("count", "5000", "bad_count"),
        ] {
            let reply = send(&router, mode, &f.dead_letters, &Call::new("GET", None).query(name, value)).await;
            assert_eq!((reply.status, &reply.body["error"]["code"]), (400, &json!(code)), "?{name}={value:?} {mode:?}");
            refused += 1;
        }
        let fine =
            send(&router, mode, &f.dead_letters, &Call::new("GET", None).query("count", "5").query("after", "0-0"))
                .await;
        assert_eq!(fine.status, 200, "{}", fine.body);
        served += 1;
    }
    eprintln!(
        "FIGURES dead-letter ids: {refused} bad ids and paging parameters answered 400, {served} good ones 200, 0 answered 503"
    );
}

/// Defects 5 and 7: Health said "healthy" while every write failed, with the queue key broken, and
/// with the store file removed (whose writes were then acknowledged and lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_tells_the_truth_about_the_write_path_and_the_queue() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let f = functions();
    let get = Call::new("GET", None);
    let (slowest, calls) = (std::cell::Cell::new(Duration::ZERO), std::cell::Cell::new(0));
    let health = || async {
        let started = Instant::now();
        let reply = send(&router, Mode::Direct, &f.health, &get).await;
        slowest.set(slowest.get().max(started.elapsed()));
        calls.set(calls.get() + 1);
        reply
    };
    assert_eq!(health().await.status, 200);

    // A full disk: writes fail, reads and the small probe still work.
    t.store.set_failing_writes(true);
    let put = send(&router, Mode::Direct, &f.through, &Call::new("PUT", Some("k")).json(&json!(1))).await;
    assert_eq!(put.status, 503);
    let report = health().await;
    assert_eq!((report.status, &report.body["store"]["status"]), (503, &json!("down")), "{}", report.body);
    assert!(report.body["store"]["error"].as_str().unwrap().contains("writes are failing"), "{}", report.body);
    t.store.set_failing_writes(false);
    let put = send(&router, Mode::Direct, &f.through, &Call::new("PUT", Some("k")).json(&json!(1))).await;
    assert_eq!(put.status, 200);
    assert_eq!(health().await.status, 200);

    // The queue's key holds something else: write-behind cannot work, and Health says so.
    redis.command(&format!("SET {WRITE_BEHIND_STREAM} x")).unwrap();
    let queued = send(&router, Mode::Direct, &f.behind, &Call::new("PUT", Some("q")).json(&json!(1))).await;
    assert!(queued.status >= 500, "{}", queued.body);
    let report = health().await;
    assert_eq!((report.status, &report.body["queue"]["status"]), (503, &json!("down")), "{}", report.body);
    redis.command(&format!("DEL {WRITE_BEHIND_STREAM}")).unwrap();
    let report = health().await;
    assert_eq!(report.status, 200, "{}", report.body);
    assert!(report.body["queue"]["backlog"].is_object(), "the backlog is reported: {}", report.body);

    // A write that has waited 20 minutes: the consumer is stuck (none runs here).
    let twenty_minutes_ago = common::now().minus(Duration::from_secs(20 * 60)).as_millis();
    let _: String = redis::cmd("XADD")
        .arg(WRITE_BEHIND_STREAM)
        .arg(format!("{twenty_minutes_ago}-0"))
        .arg("event")
        .arg(event("stuck", at(common::now()), json!(1)))
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    let report = health().await;
    assert_eq!((report.status, &report.body["queue"]["status"]), (503, &json!("down")), "{}", report.body);
    assert_eq!(report.body["queue"]["backlog"]["length"], 1, "{}", report.body);
    redis.command(&format!("DEL {WRITE_BEHIND_STREAM}")).unwrap();
    assert_eq!(health().await.status, 200);

    // The database file is removed while the handler runs: writes are refused, not acknowledged.
    std::fs::remove_file(t.sqlite.path()).unwrap();
    let put = send(&router, Mode::Direct, &f.through, &Call::new("PUT", Some("k")).json(&json!(2))).await;
    assert_eq!((put.status, &put.body["error"]["code"]), (503, &json!("store_unavailable")), "{}", put.body);
    let report = health().await;
    assert_eq!((report.status, &report.body["store"]["status"]), (503, &json!("down")), "{}", report.body);
    eprintln!(
        "FIGURES Health: 4 faults (writes failing, queue key of another type, a queue stuck 20 min, store file removed) each reported 503 naming the part (the first 3 healthy again once repaired); {} Health calls, slowest {:?}; the 3 writes made during faults refused (5xx), 0 acknowledged",
        calls.get(),
        slowest.get()
    );
}

/// How long requests took in one test, each checked against the bound as it is measured.
#[derive(Debug, Default)]
struct Timings {
    requests: usize,
    slowest: Duration,
    /// Answers by status.
    statuses: std::collections::BTreeMap<u16, usize>,
    health: usize,
    slowest_health: Duration,
}

/// No request may wait on Redis much longer than 2 s in all (the issue's ~2.5 s, with room for
/// the store and a loaded machine); Health must answer within 2 s.
const REQUEST_BOUND: Duration = Duration::from_millis(2500);
const HEALTH_BOUND: Duration = Duration::from_millis(2000);

impl Timings {
    async fn time<T>(&mut self, what: &str, request: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let answer = request.await;
        let took = started.elapsed();
        assert!(took < REQUEST_BOUND, "{what} took {took:?}");
        self.requests += 1;
        self.slowest = self.slowest.max(took);
        answer
    }

    async fn reply(
        &mut self,
        what: &str,
        request: impl std::future::Future<Output = common::host::Reply>,
    ) -> common::host::Reply {
        let reply = self.time(what, request).await;
        *self.statuses.entry(reply.status).or_default() += 1;
        reply
    }

    async fn invocation(
        &mut self,
        what: &str,
        request: impl std::future::Future<Output = (u16, Value)>,
    ) -> (u16, Value) {
        let (status, body) = self.time(what, request).await;
        *self.statuses.entry(status).or_default() += 1;
        (status, body)
    }

    async fn health(&mut self, request: impl std::future::Future<Output = common::host::Reply>) -> common::host::Reply {
        let started = Instant::now();
        let reply = request.await;
        let took = started.elapsed();
        assert!(took < HEALTH_BOUND, "Health took {took:?}");
        self.health += 1;
        self.slowest_health = self.slowest_health.max(took);
        reply
    }

    fn print(&self, fault: &str) {
        let statuses: Vec<String> = self.statuses.iter().map(|(status, n)| format!("{n}× {status}")).collect();
        let health = match self.health {
            0 => String::new(),
            n => format!("; Health {n} times, slowest {:?} (bound {HEALTH_BOUND:?})", self.slowest_health),
        };
        eprintln!(
            "FIGURES {fault}: {} requests ({}), slowest {:?} (bound {REQUEST_BOUND:?}){health}",
            self.requests,
            statuses.join(", "),
            self.slowest,
        );
    }
}

/// Every kind of request with Redis not answering (or not there): each within the bound, and
/// Health says Redis is down. Acknowledged writes all reach the store.
async fn bounded_while_redis_does_not_answer(t: &TestApp, rounds: usize, fault: &str) {
    t.sqlite.apply("k", at(common::now()), Change::Upsert(json!("stored"))).await.unwrap();
    let router = t.app.router();
    let f = functions();
    let ahead = FunctionDef::load("RefreshAheadRead");
    let invalidate = FunctionDef::load("CacheInvalidate");
    let mut timings = Timings::default();
    let mut acknowledged = Vec::new();
    for round in 0..rounds {
        let read = timings
            .reply("a cache-aside read", send(&router, Mode::Direct, &f.aside, &Call::new("GET", Some("k"))))
            .await;
        assert_eq!((read.status, read.header("x-cache")), (200, Some("bypass")), "{}", read.body);
        let read = timings
            .reply("a refresh-ahead read", send(&router, Mode::Payload, &ahead, &Call::new("GET", Some("k"))))
            .await;
        assert_eq!(read.status, 200);
        let keys = json!({"keys": ["k", "absent"]});
        let bulk = timings
            .reply("a bulk read", send(&router, Mode::Direct, &f.aside, &Call::new("POST", None).json(&keys)))
            .await;
        assert_eq!(bulk.status, 200, "{}", bulk.body);
        assert_eq!(bulk.body["items"][0]["value"], json!("stored"), "{}", bulk.body);
        let written = format!("w{round}");
        let write = timings
            .reply(
                "a write-through",
                send(&router, Mode::Direct, &f.through, &Call::new("PUT", Some(&written)).json(&json!(round))),
            )
            .await;
        assert_eq!(write.status, 200, "{}", write.body);
        acknowledged.push((written, json!(round)));
        let queued = timings
            .reply(
                "a write-behind",
                send(&router, Mode::Direct, &f.behind, &Call::new("PUT", Some("q")).json(&json!(1))),
            )
            .await;
        assert_eq!(queued.status, 503, "{}", queued.body);
        let pushed = format!("e{round}");
        let (status, reply) = timings
            .invocation(
                "an Event Hubs batch",
                event_hub_batch(&router, &[event(&pushed, t.app.versions.next(), json!(round))]),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        acknowledged.push((pushed, json!(round)));
        let evicted = timings
            .reply("an eviction", send(&router, Mode::Direct, &invalidate, &Call::new("DELETE", Some("k"))))
            .await;
        assert_eq!((evicted.status, &evicted.body["status"]), (202, &json!("pending")), "{}", evicted.body);
        let letters = timings
            .reply("a dead-letter list", send(&router, Mode::Direct, &f.dead_letters, &Call::new("GET", None)))
            .await;
        assert_eq!(letters.status, 503, "{}", letters.body);
        let replay = timings
            .reply(
                "a dead-letter replay",
                send(&router, Mode::Direct, &f.dead_letters, &Call::new("POST", Some("1-0"))),
            )
            .await;
        assert_eq!(replay.status, 503, "{}", replay.body);
        let health = timings.health(send(&router, Mode::Direct, &f.health, &Call::new("GET", None))).await;
        assert_eq!((health.status, &health.body["redis"]["status"]), (503, &json!("down")), "{}", health.body);
        assert_eq!(health.body["store"]["status"], json!("up"), "{}", health.body);
        // Let the breaker's 2 s window pass so that the next round reconnects again.
        tokio::time::sleep(Duration::from_millis(2100)).await;
    }
    for (key, value) in &acknowledged {
        assert_eq!(t.sqlite.get(key).await.unwrap().and_then(|r| r.value).as_ref(), Some(value), "{key} was lost");
    }
    timings.print(fault);
    eprintln!("FIGURES {fault}: {} writes acknowledged, 0 lost", acknowledged.len());
}

/// Defect 4: a Redis that accepts connections and never answers stalled requests for 8–10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blackholed_redis_bounds_every_request() {
    let hole = Blackhole::start();
    let t = TestApp::with_connection(&format!("127.0.0.1:{}", hole.port), &[]);
    bounded_while_redis_does_not_answer(&t, 2, "Redis blackholed").await;
}

/// The same with TLS asked of a plain port: the handshake never completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_to_a_plain_port_bounds_every_request() {
    let redis = RedisServer::start();
    let t = TestApp::with_connection(&format!("rediss://127.0.0.1:{}", redis.port), &[]);
    bounded_while_redis_does_not_answer(&t, 1, "TLS to a plain port").await;
}

/// How Redis stops answering after it served, and comes back.
#[derive(Debug, Clone, Copy)]
enum Outage {
    /// The process frozen (`SIGSTOP`), then resumed: connections stay open, nothing answers.
    Hung,
    /// The process gone (connections refused), then started again, empty.
    Down,
}

/// Under `outage` every request is bounded (as above); once Redis is back the service returns to
/// the cache by itself, with no restart: reads stop bypassing it, and Health is healthy again.
async fn bounded_during_an_outage_then_recovers(outage: Outage) {
    let mut redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let f = functions();
    let warm = send(&router, Mode::Direct, &f.through, &Call::new("PUT", Some("warm")).json(&json!(1))).await;
    assert_eq!(warm.status, 200);
    match outage {
        Outage::Hung => redis.pause(),
        Outage::Down => redis.stop(),
    }
    let label = match outage {
        Outage::Hung => "Redis hung",
        Outage::Down => "Redis down",
    };
    bounded_while_redis_does_not_answer(&t, 2, label).await;
    match outage {
        Outage::Hung => redis.resume(),
        Outage::Down => redis.restart(),
    }
    let started = Instant::now();
    loop {
        let read = send(&router, Mode::Direct, &f.aside, &Call::new("GET", Some("warm"))).await;
        // A restarted Redis is empty: its first read is a miss served from the store, not a hit.
        if read.header("x-cache") != Some("bypass") {
            assert_eq!((read.status, &read.body["value"]), (200, &json!(1)), "{}", read.body);
            if matches!(outage, Outage::Hung) {
                assert_eq!(read.header("x-cache"), Some("hit"), "a resumed Redis still holds the entry");
            }
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "reads never went back to the cache");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = send(&router, Mode::Direct, &f.health, &Call::new("GET", None)).await;
    assert_eq!(health.status, 200, "{}", health.body);
}

/// The same with the Redis process frozen (`SIGSTOP`) after it served: then it recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_redis_bounds_every_request_and_recovers() {
    bounded_during_an_outage_then_recovers(Outage::Hung).await;
}

/// The same with Redis down (the process gone, connections refused) after it served: then it
/// recovers by itself once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_that_is_down_bounds_every_request_and_recovers() {
    bounded_during_an_outage_then_recovers(Outage::Down).await;
}

/// Defect 8: tombstones were never removed.
#[tokio::test]
async fn tombstones_are_purged_after_the_retention_window_and_never_resurrect() {
    let dir = common::TempDir::new("purge");
    let store = cachepatterns::adapters::sqlite::SqliteStore::open(&dir.path().join("store.db")).unwrap();
    let time = ManualClock::starting_now();
    let clock = HybridClock::new(time.clone());
    for i in 0..500 {
        store.apply(&format!("never-existed-{i}"), clock.next(), Change::Delete).await.unwrap();
    }
    store.apply("alive", clock.next(), Change::Upsert(json!(1))).await.unwrap();
    let tombstone = clock.next();
    store.apply("deleted", tombstone, Change::Delete).await.unwrap();
    time.advance(Duration::from_secs(10 * 24 * 3600));
    let recent = clock.next();
    store.apply("recently-deleted", recent, Change::Delete).await.unwrap();
    assert_eq!(store.purge_tombstones(time.now().minus(Duration::from_secs(24 * 3600))).await.unwrap(), 501);
    let rows: i64 = rusqlite::Connection::open(store.path())
        .unwrap()
        .query_row("SELECT count(*) FROM items", [], |row| row.get(0))
        .unwrap();
    assert_eq!(rows, 2, "the live key and the recent tombstone remain");
    assert_eq!(store.purge_tombstones(time.now().minus(Duration::from_secs(24 * 3600))).await.unwrap(), 0);
    // A late write older than the purged tombstone stays refused...
    assert!(matches!(
        store.apply("deleted", tombstone - 1, Change::Upsert(json!("zombie"))).await.unwrap(),
        Applied::BelowWatermark { .. }
    ));
    assert_eq!(store.get("deleted").await.unwrap(), None);
    // ...while new writes go through, to it and to new keys.
    assert_eq!(store.apply("deleted", clock.next(), Change::Upsert(json!("new"))).await.unwrap(), Applied::Yes);
    assert_eq!(store.apply("brand-new", clock.next(), Change::Upsert(json!(1))).await.unwrap(), Applied::Yes);
    assert!(store.get("recently-deleted").await.unwrap().unwrap().is_deleted());
    eprintln!(
        "FIGURES tombstones: 503 rows, 501 purged, 2 left; a late write below the purged tombstone refused, 0 resurrected"
    );
}

/// A queued write older than a purged tombstone (a dead letter replayed weeks later) for a key
/// without a record is not silently taken as superseded: it goes back to the dead letters, saying
/// why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_older_than_the_purged_tombstones_is_dead_lettered_not_dropped() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let now = common::now();
    let weeks_ago = at(now.minus(Duration::from_secs(40 * 24 * 3600)));
    t.sqlite.apply("old-delete", weeks_ago + 10, Change::Delete).await.unwrap();
    assert_eq!(t.sqlite.purge_tombstones(now.minus(Duration::from_secs(30 * 24 * 3600))).await.unwrap(), 1);
    let (status, reply) = event_hub_batch(&router, &[event("never-seen", weeks_ago, json!("late"))]).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(t.sqlite.get("never-seen").await.unwrap(), None);
    let letters = t.app.dead_letters().list(10, None).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].reason.contains("TombstoneRetentionSeconds"), "{:?}", letters[0].reason);
    eprintln!("FIGURES a write older than the purged tombstones: 1 event, 1 dead-lettered, 0 applied, 0 dropped");
}

/// Defect 11: an Event Hubs batch larger than the payload cap was refused, retried, then
/// checkpointed by the host: lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_hubs_batch_of_large_events_is_applied() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[("MaxValueBytes", "65536")]);
    let router = t.app.router();
    // Quotes and backslashes double at every level of escaping.
    let value = json!("\"\\".repeat(15_000));
    let now = common::now();
    let events: Vec<String> = (0..100).map(|i| event(&format!("big{i}"), at(now) + i, value.clone())).collect();
    let envelope_bytes = json!({"Data": {"events": serde_json::to_string(&events).unwrap()}}).to_string().len();
    let (status, reply) = event_hub_batch(&router, &events).await;
    assert_eq!(status, 200, "{reply}");
    for i in 0..100 {
        assert_eq!(t.sqlite.get(&format!("big{i}")).await.unwrap().unwrap().value, Some(value.clone()));
    }
    eprintln!(
        "FIGURES large Event Hubs batch: a {:.1} MB envelope, 100 of 100 events applied",
        envelope_bytes as f64 / 1e6
    );
}

/// Defect 12: with the store's disk full for a few minutes, 41 % of accepted writes went to dead
/// letters. Transient failures are retried for the retry window, then dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_behind_retries_through_a_full_disk_then_dead_letters_after_the_window() {
    let redis = RedisServer::start();
    let time = ManualClock::starting_now();
    let t = TestApp::on_clock(&redis.connection_string(), &[], time.clone());
    let c = consumer(&t, |reader, drain| {
        reader.claim_idle = Duration::ZERO;
        drain.max_deliveries = 2;
        drain.apply.budget = Duration::from_millis(50);
    });
    for i in 0..20 {
        t.app
            .services
            .write_behind
            .accept(&Key::new(format!("w{i}")).unwrap(), Change::Upsert(json!(i)))
            .await
            .unwrap();
    }
    t.store.set_failing_writes(true);
    for _ in 0..6 {
        c.run_once().await.unwrap();
    }
    assert_eq!(t.app.dead_letters().count().await.unwrap(), 0, "within the window, nothing is given up");
    t.store.set_failing_writes(false);
    drain(&c, &redis).await;
    for i in 0..20 {
        assert_eq!(t.sqlite.get(&format!("w{i}")).await.unwrap().unwrap().value, Some(json!(i)));
    }
    // Past the window, what still fails goes to the dead letters (nothing is dropped).
    for i in 0..5 {
        t.app
            .services
            .write_behind
            .accept(&Key::new(format!("late{i}")).unwrap(), Change::Upsert(json!(i)))
            .await
            .unwrap();
    }
    t.store.set_failing_writes(true);
    c.run_once().await.unwrap();
    time.advance(Duration::from_secs(2 * 3600));
    drain(&c, &redis).await;
    assert_eq!(t.app.dead_letters().count().await.unwrap(), 5);
    eprintln!(
        "FIGURES write-behind through a full disk: 20 writes through 6 failing rounds, 0 dead letters, 20 of 20 applied after recovery; past the window 5 of 5 dead-lettered: 0 lost"
    );
}

/// Upgrading: what an older release queued in the streams a key could reach is moved, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_release_queue_and_dead_letters_survive_the_upgrade() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let mut conn = redis.connection().await;
    let now = common::now();
    for i in 0..3 {
        let _: String = redis::cmd("XADD")
            .arg("writebehind")
            .arg("*")
            .arg("event")
            .arg(event(&format!("legacy{i}"), at(now) + i, json!(i)))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // The old consumer group, with one entry pending at a consumer that is gone.
    let _: String = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("writebehind")
        .arg("appliers")
        .arg("0")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("appliers")
        .arg("old-instance")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg("writebehind")
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("deadletter")
        .arg("*")
        .arg("event")
        .arg("old poison")
        .arg("reason")
        .arg("not a write event")
        .arg("source")
        .arg("stream writebehind entry 1-0")
        .arg("attempts")
        .arg(1)
        .arg("failedAt")
        .arg("2026-01-01T00:00:00.000Z")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("ZADD").arg("hot\u{1f}refresh-ahead").arg(1).arg("x").query_async(&mut conn).await.unwrap();

    let moved = cachepatterns::adapters::redis::migrate::move_legacy(&t.app.redis, t.app.dead_letters()).await.unwrap();
    assert_eq!((moved.events, moved.dead_letters), (3, 1));
    for old in ["writebehind", "deadletter", "hot\u{1f}refresh-ahead"] {
        let kind: String = redis::cmd("TYPE").arg(old).query_async(&mut conn).await.unwrap();
        assert_eq!(kind, "none", "{old:?} is gone");
    }
    // An instance of the old release still running (a rolling upgrade) queues one more: the next
    // pass moves it too.
    let _: String = redis::cmd("XADD")
        .arg("writebehind")
        .arg("*")
        .arg("event")
        .arg(event("legacy3", at(now) + 3, json!(3)))
        .query_async(&mut conn)
        .await
        .unwrap();
    let again = cachepatterns::adapters::redis::migrate::move_legacy(&t.app.redis, t.app.dead_letters()).await.unwrap();
    assert_eq!((again.events, again.dead_letters), (1, 0));
    // Under memory pressure nothing moves and nothing is lost.
    let _: i64 = redis::cmd("XADD")
        .arg("writebehind")
        .arg("*")
        .arg("event")
        .arg(event("legacy4", at(now) + 4, json!(4)))
        .query_async(&mut conn)
        .await
        .map(|_: String| 0)
        .unwrap();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1").query_async(&mut conn).await.unwrap();
    assert!(cachepatterns::adapters::redis::migrate::move_legacy(&t.app.redis, t.app.dead_letters()).await.is_err());
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0").query_async(&mut conn).await.unwrap();
    let len: i64 = redis::cmd("XLEN").arg("writebehind").query_async(&mut conn).await.unwrap();
    assert_eq!(len, 1, "the entry is still in the old stream");
    let last = cachepatterns::adapters::redis::migrate::move_legacy(&t.app.redis, t.app.dead_letters()).await.unwrap();
    assert_eq!(last.events, 1);
    drain(&consumer(&t, |_, _| {}), &redis).await;
    for i in 0..5 {
        assert_eq!(t.sqlite.get(&format!("legacy{i}")).await.unwrap().unwrap().value, Some(json!(i)));
    }
    let letters = t.app.dead_letters().list(10, None).await.unwrap();
    assert_eq!((letters.len(), letters[0].event.as_str(), letters[0].attempts), (1, "old poison", 1));
    // And the key named like the old stream is an ordinary key again.
    let router = t.app.router();
    let f = functions();
    let put =
        send(&router, Mode::Direct, &f.through, &Call::new("PUT", Some("writebehind")).json(&json!("mine"))).await;
    assert_eq!(put.status, 200);
    let read = send(&router, Mode::Direct, &f.aside, &Call::new("GET", Some("writebehind"))).await;
    assert_eq!((read.body["value"].clone(), read.header("x-cache")), (json!("mine"), Some("hit")));
    eprintln!(
        "FIGURES upgrade: {} queued events (1 pending at a vanished consumer) and {} dead letter moved in 3 passes, 5 of 5 applied: 0 lost",
        moved.events + again.events + last.events,
        moved.dead_letters + again.dead_letters + last.dead_letters
    );
}

/// Defect 2 in one process: two instances at the same microsecond used to issue the same version.
#[tokio::test]
async fn two_instances_at_the_same_instant_issue_different_versions() {
    let redis = RedisServer::start();
    let time = ManualClock::starting_now();
    let a = TestApp::on_clock(&redis.connection_string(), &[], time.clone());
    let b = TestApp::on_clock(&redis.connection_string(), &[], time.clone());
    for t in [&a, &b] {
        let mut lease = cachepatterns::patterns::versions::NodeLease::new(
            std::sync::Arc::new(t.app.redis.clone()),
            t.app.versions.clone(),
        );
        lease.refresh().await.unwrap();
    }
    assert_ne!(a.app.versions.node(), b.app.versions.node(), "leases are exclusive");
    let key = Key::new("same").unwrap();
    let wb = a.app.services.write_behind.accept(&key, Change::Upsert(json!("A"))).await.unwrap();
    let wt = b.app.services.write_through.write(&key, Change::Upsert(json!("B"))).await.unwrap();
    assert_ne!(wb.version, wt.version);
    assert_eq!(issued_at(wb.version), issued_at(wt.version), "the same instant");
    let _ = time.now();
    eprintln!(
        "FIGURES same instant: node ids {} and {}, versions {} and {}: different",
        a.app.versions.node(),
        b.app.versions.node(),
        wb.version,
        wt.version
    );
}

/// Defect 9: half-sent headers or bodies held a connection for minutes, and bodies in memory had
/// no bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_greedy_clients_cannot_hold_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let limits = cachepatterns::http::Limits {
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(1500),
        in_flight_body_budget: 100_000,
        budget_wait: Duration::from_millis(100),
    };
    let port = serve(&t, limits).await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", port));
    let read_all = |mut s: tokio::net::TcpStream| async move {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("the server let go").ok();
        String::from_utf8_lossy(&out).into_owned()
    };

    // Headers that never end: the connection is closed.
    let mut slow = connect().await.unwrap();
    slow.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    read_all(slow).await;
    let headers_held = started.elapsed();
    assert!(headers_held < Duration::from_secs(3), "held for {headers_held:?}");

    // Headers sent a byte every 20 ms for 5 s, never ending: hyper's header deadline runs from when
    // it began to read the request, and what trickles in does not move it, so the connection is cut
    // while the client is still sending.
    let mut trickle = connect().await.unwrap();
    let started = Instant::now();
    let mut cut = None;
    let slow_header: Vec<u8> =
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().copied().chain([b'a'; 220]).collect();
    for byte in &slow_header {
        if trickle.write_all(&[*byte]).await.is_err() {
            cut = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let trickle_held = cut.unwrap_or_else(|| {
        panic!("a trickle of {} bytes over {:?} was never cut", slow_header.len(), started.elapsed())
    });
    assert!(trickle_held < Duration::from_secs(3), "held for {trickle_held:?}");

    // A kept-alive connection that sent nothing after its request is closed the same way.
    let mut idle = connect().await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let answer = read_all(idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let idle_held = started.elapsed();
    assert!(idle_held < Duration::from_secs(3), "held for {idle_held:?}");

    // A body that never arrives: 408.
    let mut slow = connect().await.unwrap();
    slow.write_all(b"PUT /api/write-through/k HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_all(slow).await;
    let body_held = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Bodies in memory at once are bounded: of three large uploads that fit two at a time, one
    // waits, then is told to come back; the other two are read (and time out, as they never end).
    let mut uploads = Vec::new();
    for _ in 0..3 {
        let mut upload = connect().await.unwrap();
        upload
            .write_all(b"PUT /api/write-through/big HTTP/1.1\r\nHost: x\r\nContent-Length: 45000\r\n\r\n\"")
            .await
            .unwrap();
        uploads.push(tokio::spawn(read_all(upload)));
    }
    let mut statuses = Vec::new();
    for upload in uploads {
        let answer = upload.await.unwrap();
        statuses.push(answer.split(' ').nth(1).unwrap_or("").to_string());
        if answer.contains(" 503 ") {
            assert!(answer.contains("busy"), "{answer}");
        }
    }
    statuses.sort();
    assert_eq!(statuses, ["408", "408", "503"]);
    eprintln!(
        "FIGURES slow clients (limits of the test: headers {:?}, body {:?}, 100 kB in flight): unfinished headers closed after {headers_held:?}, trickled ones cut after {trickle_held:?}, an idle kept-alive connection after {idle_held:?}, an unfinished body answered 408 after {body_held:?}; 3 uploads of 45 kB: {statuses:?}",
        limits.header_read_timeout, limits.body_read_timeout
    );
}

/// Serves `t`'s app with `limits` through the serve loop and hyper, as the handler does, on a port
/// of its own; returns the port.
async fn serve(t: &TestApp, limits: cachepatterns::http::Limits) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = t.app.router_with(limits);
    tokio::spawn(cachepatterns::http::serve(listener, router, limits, std::future::pending(), Duration::from_secs(1)));
    port
}

/// A caller leaving: half-closes `stream` and checks that the server closed it without answering
/// (hyper dropped the request).
async fn leave(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection the caller left")
        .ok();
    assert!(answer.is_empty(), "the request was dropped unanswered: {:?}", String::from_utf8_lossy(&answer));
}

/// Sends one request on a kept-alive connection and reads its answer (`Content-Length` bodies):
/// the status, the `x-cache` header and the body.
async fn exchange(stream: &mut tokio::net::TcpStream, request: &str) -> (u16, String, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.expect("send the request");
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).await.expect("read the answer");
        assert!(n > 0, "the connection closed: {:?}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let header = |name: &str| {
        head.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':'))).map(|v| v.trim().to_string())
    };
    let length: usize = header("content-length").and_then(|v| v.parse().ok()).expect("a content-length");
    while received.len() < head_end + length {
        let n = stream.read(&mut chunk).await.expect("read the body");
        assert!(n > 0, "the connection closed in the body");
        received.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&received[head_end..head_end + length]).unwrap_or(Value::Null);
    (status, header("x-cache").unwrap_or_default(), body)
}

/// [`exchange`], bounded: a server that never answers fails the test instead of hanging it.
async fn answered(stream: &mut tokio::net::TcpStream, request: String) -> (u16, String, Value) {
    tokio::time::timeout(Duration::from_secs(10), exchange(stream, &request)).await.expect("an answer within 10 s")
}

/// Served connections (the serve loop and hyper, not the router alone) live through a Redis outage:
/// with Redis frozen (`SIGSTOP`), reads and writes on three kept-alive connections at once each
/// wait on Redis no longer than its deadline and are answered (reads from the store, writes
/// acknowledged), and once Redis is thawed the same connections are served from the cache again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_redis_bounds_requests_on_served_connections() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    t.sqlite.apply("k", at(common::now()), Change::Upsert(json!("stored"))).await.unwrap();
    let limits = cachepatterns::http::Limits::default();
    let port = serve(&t, limits).await;
    let read = "GET /api/cache-aside/k HTTP/1.1\r\nHost: x\r\n\r\n".to_string();
    let write = |key: &str| {
        format!(
            "PUT /api/write-through/{key} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1\r\n\r\n1"
        )
    };
    let mut connections = Vec::new();
    for _ in 0..3 {
        let mut connection = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (status, cache, _) = answered(&mut connection, read.clone()).await;
        assert_eq!(status, 200);
        assert!(cache == "miss" || cache == "hit", "{cache}");
        connections.push(connection);
    }
    redis.pause();
    let mut timings = Vec::new();
    let mut written = Vec::new();
    for round in 0..2 {
        // All three at once, so that each waits on Redis before the first missed deadline opens
        // the breaker; reads and writes alternate between the connections and the rounds.
        let served = connections.iter_mut().enumerate().map(|(i, connection)| {
            let is_read = (i + round) % 2 == 0;
            let key = format!("w{round}{i}");
            let request = if is_read { read.clone() } else { write(&key) };
            async move {
                let started = Instant::now();
                let (status, cache, body) = answered(connection, request).await;
                let took = started.elapsed();
                assert!(took < REQUEST_BOUND, "took {took:?}");
                if is_read {
                    assert_eq!((status, cache.as_str(), &body["value"]), (200, "bypass", &json!("stored")), "{body}");
                } else {
                    assert_eq!(status, 200, "{body}");
                }
                (took, (!is_read).then_some(key))
            }
        });
        let round_timings = futures_util::future::join_all(served).await;
        let waited = round_timings.iter().map(|(took, _)| *took).max().unwrap_or_default();
        assert!(
            waited >= Duration::from_millis(500),
            "round {round}: no request waited on the frozen Redis ({waited:?})"
        );
        for (took, key) in round_timings {
            timings.push(took);
            written.extend(key);
        }
        // Let the breaker's 2 s window pass so that the next round waits on Redis again.
        tokio::time::sleep(Duration::from_millis(2100)).await;
    }
    redis.resume();
    let started = Instant::now();
    let mut back = [false; 3];
    while !back.iter().all(|b| *b) {
        for (connection, back) in connections.iter_mut().zip(&mut back) {
            let (status, cache, body) = answered(connection, read.clone()).await;
            assert_eq!((status, &body["value"]), (200, &json!("stored")), "{body}");
            // A resumed Redis still holds the entry: reads go from bypassing it to hits.
            assert!(cache == "hit" || cache == "bypass", "{cache}");
            *back = cache == "hit";
        }
        assert!(started.elapsed() < Duration::from_secs(10), "reads never went back to the cache: {back:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(written.len(), 3);
    for key in &written {
        assert_eq!(t.sqlite.get(key).await.unwrap().and_then(|r| r.value), Some(json!(1)), "{key} was lost");
    }
    let slowest = timings.iter().max().copied().unwrap_or_default();
    eprintln!(
        "FIGURES Redis hung, 3 served connections, 2 rounds: 3 reads and 3 writes sent at once, each bounded, the slowest waiting {slowest:?} (the Redis deadline); 3 writes acknowledged, 0 lost; the same connections back on the cache after"
    );
}

/// A write whose caller goes away once the store has it (a client that disconnects, the host
/// cancelling the invocation at `functionTimeout`) is still cached: hyper drops a request whose
/// connection closed, and with it used to go the write's cache update, so the cache kept serving
/// the replaced value (or a deleted key's) until its TTL while the store held the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_whose_caller_goes_away_still_reaches_the_cache() {
    use common::HoldApplies;
    use tokio::io::AsyncWriteExt;
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let limits = cachepatterns::http::Limits::default();
    let port = serve(&t, limits).await;
    let request = |method: &str, key: &str, body: &str| {
        format!(
            "{method} /api/write-through/{key} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let read = |key: &str| format!("GET /api/cache-aside/{key} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut reader = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut figures = Vec::new();
    for (key, method, body, expected) in
        [("put", "PUT", "\"new\"", (200, json!("new"))), ("deleted", "DELETE", "", (404, Value::Null))]
    {
        // The old value, cached.
        let (status, _, _) = answered(&mut reader, request("PUT", key, "\"old\"")).await;
        assert_eq!(status, 200);
        let (status, cache, body_read) = answered(&mut reader, read(key)).await;
        assert_eq!((status, cache.as_str(), &body_read["value"]), (200, "hit", &json!("old")), "{body_read}");

        // The store takes the write, and its answer is held; meanwhile the caller leaves.
        t.store.hold_applies(HoldApplies::BeforeTheAnswer);
        let applied = t.store.applies_done();
        let mut leaving = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        leaving.write_all(request(method, key, body).as_bytes()).await.unwrap();
        until("the write reaches the store", || t.store.applies_done() > applied).await;
        let stored = t.sqlite.get(key).await.unwrap().and_then(|r| r.value);
        assert_eq!(stored.as_ref(), expected.1.as_str().map(|_| &expected.1), "the store has the write");
        leave(leaving).await;
        let (status, cache, body_read) = answered(&mut reader, read(key)).await;
        assert_eq!((status, cache.as_str(), &body_read["value"]), (200, "hit", &json!("old")), "not yet: {body_read}");

        // The store answers: the write that nobody waits for any more goes on to the cache.
        let left = Instant::now();
        t.store.release_applies();
        loop {
            let (status, cache, body_read) = answered(&mut reader, read(key)).await;
            if status == expected.0 && cache == "hit" && body_read["value"] == expected.1 {
                break;
            }
            assert_eq!(&body_read["value"], &json!("old"), "{status} {cache} {body_read}");
            assert!(
                left.elapsed() < Duration::from_secs(5),
                "{method}: the cache still serves the replaced value {:?} after the store answered",
                left.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        figures.push(format!("{method} cached {:?} after the store answered", left.elapsed()));
    }
    eprintln!("FIGURES writes whose caller left before the store answered: {}", figures.join(", "));
}

/// A write whose caller left keeps its body's room in the in-flight memory budget until it ends:
/// callers that send large writes and leave at once cannot pile up writes beyond the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_whose_caller_left_keeps_its_room_in_the_memory_budget() {
    use common::HoldApplies;
    use tokio::io::AsyncWriteExt;
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let limits = cachepatterns::http::Limits {
        in_flight_body_budget: 100_000,
        budget_wait: Duration::from_millis(100),
        ..cachepatterns::http::Limits::default()
    };
    let port = serve(&t, limits).await;
    let large = format!("\"{}\"", "a".repeat(60_000));
    let put = |key: &str| {
        format!(
            "PUT /api/write-through/{key} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{large}",
            large.len()
        )
    };
    t.store.hold_applies(HoldApplies::BeforeTheAnswer);
    let mut leaving = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    leaving.write_all(put("left").as_bytes()).await.unwrap();
    until("the write reaches the store", || t.store.applies_done() > 0).await;
    leave(leaving).await;

    // The write runs on, holding 60 kB of the 100 kB: another 60 kB must wait, then is turned away
    // (let in, it would wait on the held store and never be answered).
    let mut next = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(3), exchange(&mut next, &put("next")))
        .await
        .expect("turned away within 3 s: the room of the write whose caller left was given back too early");
    assert_eq!((status, &body["error"]["code"]), (503, &json!("busy")), "{body}");
    // Once the left write ended, its room is given back.
    t.store.release_applies();
    let started = Instant::now();
    loop {
        let mut again = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (status, _, body) = answered(&mut again, put("next")).await;
        if status == 200 {
            break;
        }
        assert_eq!((status, &body["error"]["code"]), (503, &json!("busy")), "{body}");
        assert!(started.elapsed() < Duration::from_secs(5), "the room was never given back");
    }
}

/// A write whose caller left runs on, but is not retried above a newer version: the caller may
/// have written again meanwhile (through this instance or another), and that write must stay.
/// (A write whose caller waits is retried above newer versions, so that the latest accepted
/// write wins.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_whose_caller_left_is_not_written_above_a_newer_one() {
    use common::HoldApplies;
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let workers = t.app.start_workers().expect("the workers start");
    let k = Key::new("superseded").unwrap();
    t.store.hold_applies(HoldApplies::BeforeTheStore);
    let applies = t.store.applies();
    let (services, abandoned_key) = (t.app.services.clone(), k.clone());
    let abandoned =
        tokio::spawn(
            async move { services.write_through.write(&abandoned_key, Change::Upsert(json!("abandoned"))).await },
        );
    until("the write reaches the store", || t.store.applies() > applies).await;
    abandoned.abort();
    assert!(abandoned.await.unwrap_err().is_cancelled(), "the caller left");
    // Meanwhile the caller wrote again, elsewhere: the store holds a newer write.
    let newer = t.app.versions.next();
    assert_eq!(t.sqlite.apply(k.as_str(), newer, Change::Upsert(json!("again"))).await.unwrap(), Applied::Yes);
    t.store.release_applies();
    // Stopping the work requests left running waits for the abandoned write to end (writes get
    // time to finish first).
    assert!(workers.stop(Duration::from_secs(5)).await, "the abandoned write ended");
    let stored = t.sqlite.get(k.as_str()).await.unwrap().unwrap();
    assert_eq!((stored.version, stored.value), (newer, Some(json!("again"))), "the newer write stays");
    assert_eq!(t.store.applies(), applies + 1, "the abandoned write was tried once, not again above the newer one");
}

/// Defect 12 on Event Hubs: a batch the store refuses for now is handed back to the host's retry
/// policy (the trigger checkpoints only after it), and dead-lettered once older than the window or
/// on the policy's last retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_hub_batches_are_retried_by_the_host_while_the_store_refuses_writes() {
    let redis = RedisServer::start();
    let time = ManualClock::starting_now();
    let t = TestApp::builder(&redis.connection_string(), &[])
        .clock(time.clone())
        .tune(|settings| settings.write_behind.apply.budget = Duration::from_millis(100))
        .build();
    let router = t.app.router();
    let envelope = |key: &str, enqueued_ms: u64, retry: Option<(i64, i64)>| {
        let events = serde_json::to_string(&[event(key, at(time.now()), json!(key))]).unwrap();
        let enqueued = chrono::DateTime::from_timestamp_millis(enqueued_ms as i64)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S%.3f")
            .to_string();
        let mut metadata = json!({
            "PartitionContext": {"PartitionId": "1"},
            "EnqueuedTimeUtcArray": serde_json::to_string(&[enqueued]).unwrap(),
            "SequenceNumberArray": "[7]",
        });
        if let Some((count, max)) = retry {
            metadata["RetryContext"] = json!({"RetryCount": count, "MaxRetryCount": max});
        }
        json!({"Data": {"events": events}, "Metadata": metadata})
    };
    t.store.set_failing_writes(true);
    let now_ms = time.now().as_millis();
    // Fresh batch: the host is asked to retry; nothing is dead-lettered.
    for retry in [None, Some((3, -1))] {
        let (status, _) = common::host::invoke(&router, "EventHubConsumer", &envelope("fresh", now_ms, retry)).await;
        assert_eq!(status, 500, "retry {retry:?}");
    }
    assert_eq!(t.app.dead_letters().count().await.unwrap(), 0);
    // The store is back: the retry applies it.
    t.store.set_failing_writes(false);
    let (status, _) =
        common::host::invoke(&router, "EventHubConsumer", &envelope("fresh", now_ms, Some((4, -1)))).await;
    assert_eq!(status, 200);
    assert_eq!(t.sqlite.get("fresh").await.unwrap().unwrap().value, Some(json!("fresh")));
    // Older than the window, or the policy's last retry: dead-lettered, and the invocation succeeds.
    t.store.set_failing_writes(true);
    let two_hours_ago = now_ms - 2 * 3600 * 1000;
    let (status, _) =
        common::host::invoke(&router, "EventHubConsumer", &envelope("old", two_hours_ago, Some((9, -1)))).await;
    assert_eq!(status, 200);
    let (status, _) = common::host::invoke(&router, "EventHubConsumer", &envelope("last", now_ms, Some((5, 5)))).await;
    assert_eq!(status, 200);
    let letters = t.app.dead_letters().list(10, None).await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters.iter().all(|l| l.reason.contains("full")), "{letters:?}");
    eprintln!(
        "FIGURES Event Hubs while the store refuses writes: 2 invocations failed for a retry (500) with 0 dead letters, the retry after recovery applied (200); past the window and on the last retry: 2 of 2 dead-lettered (200): 0 lost"
    );
}

/// Defect 7: with SQLite's `-shm` file made immutable, one write killed the process with `SIGBUS`
/// and no log line. Writes are refused (`503`) instead, and go through again once it is writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unwritable_sqlite_shared_memory_file_refuses_writes_instead_of_crashing() {
    let redis = RedisServer::start();
    let dir = common::TempDir::new("shm");
    let store = dir.path().join("store.db");
    let handler = common::process::Handler::start(&[
        ("RedisCache", &redis.connection_string()),
        ("LocalStorePath", &store.display().to_string()),
    ]);
    assert_eq!(handler.request("PUT", "/api/write-through/a", Some("1")).unwrap().0, 200);
    let shm = dir.path().join("store.db-shm");
    let chattr = |flag: &str| std::process::Command::new("chattr").arg(flag).arg(&shm).status().map(|s| s.success());
    if !matches!(chattr("+i"), Ok(true)) {
        eprintln!("SKIPPED: `chattr +i` is not available here (needs root and a filesystem that supports it)");
        return;
    }
    let refused = handler.request("PUT", "/api/write-through/b", Some("\"big enough to touch the shared memory\""));
    let health = handler.request("GET", "/api/health", None);
    // Reads touch the shared memory too: served without the store (404 here), never a crash.
    let read = handler.request("GET", "/api/cache-aside/never-cached", None);
    let _ = chattr("-i");
    assert!(matches!(read, Ok((503, _))), "{read:?}");
    let (status, body) = refused.expect("the handler is still there");
    assert_eq!((status, &body["error"]["code"]), (503, &json!("store_unavailable")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("store.db-shm"), "{body}");
    assert_eq!(health.unwrap().0, 503);
    assert_eq!(handler.request("PUT", "/api/write-through/b", Some("2")).unwrap().0, 200);
    eprintln!(
        "FIGURES unwritable -shm: write 503, read 503, Health 503, the process alive; the write 200 once writable"
    );
}

/// A Redis that answers every command just under the deadline never trips the breaker, and a
/// request sends several commands: the request's total time on Redis is bounded too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_redis_bounds_each_request_in_all() {
    let redis = RedisServer::start();
    let proxy = common::Proxy::slow(redis.port, Duration::from_millis(800));
    let t = TestApp::with_connection(&format!("127.0.0.1:{}", proxy.port), &[("syncTimeout", "1000")]);
    t.sqlite.apply("k", at(common::now()), Change::Upsert(json!("stored"))).await.unwrap();
    let router = t.app.router();
    let f = functions();
    let mut timings = Timings::default();
    for round in 0..3 {
        let read = timings
            .reply("a cache-aside read", send(&router, Mode::Direct, &f.aside, &Call::new("GET", Some("k"))))
            .await;
        assert_eq!(read.status, 200, "{}", read.body);
        let queued = timings
            .reply(
                "a write-behind",
                send(&router, Mode::Direct, &f.behind, &Call::new("PUT", Some(&format!("q{round}"))).json(&json!(1))),
            )
            .await;
        assert!(queued.status == 202 || queued.status == 503, "{}", queued.body);
        let write = timings
            .reply(
                "a write-through",
                send(&router, Mode::Direct, &f.through, &Call::new("PUT", Some(&format!("w{round}"))).json(&json!(1))),
            )
            .await;
        assert_eq!(write.status, 200, "{}", write.body);
    }
    timings.print("Redis slow (800 ms a command)");
}

/// `EventHubConsumer` retries without bound: an invocation that can never be read must not be
/// failed (the host would retry it for ever, then drop it). It is dead-lettered, and succeeds.
#[tokio::test]
async fn an_unreadable_event_hubs_invocation_is_dead_lettered_not_retried_for_ever() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/EventHubConsumer")
        .header("Content-Type", "application/json")
        .body(axum::body::Body::from("{not an envelope"))
        .unwrap();
    let (status, _, body) = common::host::raw(&router, request).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let letters = t.app.dead_letters().list(10, None).await.unwrap();
    assert_eq!((letters.len(), letters[0].event.as_str()), (1, "{not an envelope"));
    assert!(letters[0].reason.contains("could not be read"), "{:?}", letters[0].reason);
    eprintln!("FIGURES unreadable Event Hubs invocation: answered 200, 1 dead letter with the whole body");
}

/// The same for an invocation whose declared length is over the body cap: it was refused with
/// `413` before the dead-letter path, and the host retried it without end, stalling the partition.
/// It is dead-lettered (what can be kept: its reason and source), and succeeds; forwarded requests
/// over the cap still get `413`.
#[tokio::test]
async fn an_event_hubs_invocation_declared_over_the_body_cap_is_dead_lettered_not_refused() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let request = |uri: &str| {
        axum::http::Request::builder()
            .method("POST")
            .uri(uri)
            .header("Content-Type", "application/json")
            .header("Content-Length", "999999999999")
            .body(axum::body::Body::from("{\"Data\":"))
            .unwrap()
    };
    let (status, _, body) = common::host::raw(&router, request("/EventHubConsumer")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let letters = t.app.dead_letters().list(10, None).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].reason.contains("could not be read"), "{:?}", letters[0].reason);
    assert!(letters[0].reason.contains("999999999999"), "{:?}", letters[0].reason);
    let (status, _, _) = common::host::raw(&router, request("/api/write-through/k")).await;
    assert_eq!(status, 413);
    eprintln!(
        "FIGURES Event Hubs invocation declared over the cap: answered 200 (not 413), 1 dead letter; a forwarded request over its cap: 413"
    );
}
