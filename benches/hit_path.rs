//! What the layers cost on the hot path, against a baseline measured in the same run: a raw
//! `HMGET` over its own connection (the least a cache hit can cost). Prints figures; asserts
//! nothing about speed (shared machines are noisy).
//!
//! `cargo bench --bench hit_path` for the full run; under `cargo test` it runs a short smoke pass.

#[path = "../tests/integration/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use cachepatterns::domain::key::Key;
use cachepatterns::ports::store::{Change, Store};
use common::host::{Call, FunctionDef, Mode, send};
use common::{RedisServer, TestApp};
use serde_json::json;

async fn measure<F, Fut>(name: &str, iterations: u32, mut op: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..iterations / 10 {
        op().await;
    }
    let started = Instant::now();
    for _ in 0..iterations {
        op().await;
    }
    let per_op = started.elapsed() / iterations;
    println!("{name:<44} {:>9.1} µs/op", per_op.as_secs_f64() * 1e6);
    per_op
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 20_000 } else { 200 };
    let redis = RedisServer::start();
    // Redis hits (L2): the near cache off, the invalidation feed live (as in a running service).
    let t = TestApp::new(&redis, &[("L1MaxEntries", "0")]);
    let _feed = common::live_feed(&t.app).await;
    let router = t.app.router();
    let key = Key::new("bench:key").unwrap();
    let value = json!({"name": "Ada Lovelace", "tags": ["math", "engines"], "n": 1815});
    t.app.services.write_through.write(&key, Change::Upsert(value)).await.unwrap();
    let aside = FunctionDef::load("CacheAside");
    let call = Call::new("GET", Some("bench:key"));
    let mut conn = redis.connection().await;

    println!("cache hit path, {n} iterations each (sequential, one client)");
    let baseline = measure("baseline: raw HMGET on its own connection", n, || {
        let mut conn = conn.clone();
        async move {
            let _: Vec<Option<String>> = redis::cmd("HMGET")
                .arg("bench:key")
                .arg(&["data", "ver", "at", "soft", "hard", "neg", "fs"][..])
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    })
    .await;
    let pattern = measure("CacheAside::get (hit)", n, || async {
        t.app.services.cache_aside.get(&key).await.map(|_| ()).unwrap()
    })
    .await;
    let refresh_ahead = measure("RefreshAhead::get (hit + hot bump)", n, || async {
        t.app.services.refresh_ahead.get(&key).await.map(|_| ()).unwrap()
    })
    .await;
    let forwarded = measure("router, forwarded GET /api/cache-aside (hit)", n, || async {
        assert_eq!(send(&router, Mode::Forwarded, &aside, &call).await.status, 200);
    })
    .await;
    let payload = measure("router, payload POST /CacheAside (hit)", n, || async {
        assert_eq!(send(&router, Mode::Payload, &aside, &call).await.status, 200);
    })
    .await;
    // Near-cache hits (L1): a second instance on the same Redis with the near cache on.
    let near = TestApp::new(&redis, &[]);
    let _near_feed = common::live_feed(&near.app).await;
    let near_router = near.app.router();
    near.app.services.cache_aside.get(&key).await.unwrap();
    redis.reset_stats();
    let near_hit = measure("CacheAside::get (near-cache hit, L1)", n, || async {
        let lookup = near.app.services.cache_aside.get(&key).await.unwrap();
        debug_assert_eq!(lookup.tier.map(|t| t.as_str()), Some("l1"));
    })
    .await;
    let commands: u64 = redis
        .command_calls()
        .iter()
        .filter(|(c, _)| !matches!(c.as_str(), "info" | "ping" | "config|resetstat" | "config"))
        .map(|(_, n)| n)
        .sum();
    let near_forwarded = measure("router, forwarded GET (near-cache hit)", n, || async {
        assert_eq!(send(&near_router, Mode::Forwarded, &aside, &call).await.status, 200);
    })
    .await;
    let store = measure("store read (SQLite, what a miss adds)", n, || async {
        t.sqlite.get("bench:key").await.map(|_| ()).unwrap()
    })
    .await;
    let _ = &mut conn;
    let ratio = |d: Duration| d.as_secs_f64() / baseline.as_secs_f64();
    println!(
        "Redis commands per near-cache hit: {:.3} ({commands} over {} hits, the feed's pings on its own connection not counted)",
        commands as f64 / f64::from(n + n / 10),
        n + n / 10
    );
    println!();
    println!(
        "ratios to the baseline: pattern {:.2}x, refresh-ahead {:.2}x, forwarded {:.2}x, payload {:.2}x, store read {:.2}x",
        ratio(pattern),
        ratio(refresh_ahead),
        ratio(forwarded),
        ratio(payload),
        ratio(store)
    );
    println!(
        "near cache: L1 hit {:.2}x the baseline (L2 hit {:.2}x); forwarded request with an L1 hit {:.2}x",
        ratio(near_hit),
        ratio(pattern),
        ratio(near_forwarded)
    );

    // Throughput at the same concurrency as `redis-benchmark -t get`: many clients at once.
    let clients = 50;
    let per_client = if full { 4_000 } else { 40 };
    let rate = |name: &str, elapsed: Duration| {
        let ops = f64::from(clients * per_client) / elapsed.as_secs_f64();
        println!("{name:<44} {ops:>12.0} ops/s ({clients} clients)");
        ops
    };
    let concurrent = |app: &'static TestApp| async move {
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                tokio::spawn(async move {
                    let key = Key::new("bench:key").unwrap();
                    for _ in 0..per_client {
                        app.app.services.cache_aside.get(&key).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        started.elapsed()
    };
    let (t, near): (&'static TestApp, &'static TestApp) = (Box::leak(Box::new(t)), Box::leak(Box::new(near)));
    let l2_rate = rate("CacheAside::get, Redis hits (L2)", concurrent(t).await);
    let l1_rate = rate("CacheAside::get, near-cache hits (L1)", concurrent(near).await);
    let bench = std::process::Command::new("redis-benchmark")
        .args(["-p", &redis.port.to_string(), "-t", "get", "-c", &clients.to_string()])
        .args(["-n", &(clients * per_client).to_string(), "-q"])
        .output();
    match bench {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let redis_rate = text
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .find(|w| w[1] == "requests")
                .and_then(|w| w[0].parse::<f64>().ok());
            match redis_rate {
                Some(r) => println!(
                    "redis-benchmark -t get -c {clients}: {r:.0} ops/s; L2 hits {:.2}x of it, L1 hits {:.2}x of it",
                    l2_rate / r,
                    l1_rate / r
                ),
                None => println!("redis-benchmark said: {}", text.trim()),
            }
        }
        Err(e) => println!("redis-benchmark not run: {e}"),
    }
}
