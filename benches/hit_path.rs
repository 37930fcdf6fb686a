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
    let t = TestApp::new(&redis, &[]);
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
    let store = measure("store read (SQLite, what a miss adds)", n, || async {
        t.sqlite.get("bench:key").await.map(|_| ()).unwrap()
    })
    .await;
    let _ = &mut conn;
    let ratio = |d: Duration| d.as_secs_f64() / baseline.as_secs_f64();
    println!();
    println!(
        "ratios to the baseline: pattern {:.2}x, refresh-ahead {:.2}x, forwarded {:.2}x, payload {:.2}x, store read {:.2}x",
        ratio(pattern),
        ratio(refresh_ahead),
        ratio(forwarded),
        ratio(payload),
        ratio(store)
    );
}
