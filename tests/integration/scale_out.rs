//! Several handler processes on one Redis and one store, as Azure runs the app when it scales out.
//!
//! Each round sends one write per process to the same key at the same moment (a barrier releases
//! them together): write-through and write-behind, upserts and deletes, mixed. After the
//! write-behind queue has drained, every key must hold, in the store and in the cache, the write
//! with the highest version any `2xx` answer reported, and no two `2xx` answers for one key may
//! report the same version (invariants 1, 2 and 4, docs/reliability.md). And with callers that
//! leave at any moment of their writes, cache and store still agree on every key once it is over.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::process::{Handler, sqlite_row};
use common::{RedisServer, Rng};
use serde_json::{Value, json};

/// What one `2xx` write answer reported.
#[derive(Debug, Clone, PartialEq)]
struct Ack {
    key: String,
    version: u64,
    /// The value written, `None` for a delete.
    value: Option<Value>,
    what: String,
}

/// The keys named like the old internal streams get many conflicting writes each.
const HOT_KEYS: [&str; 2] = ["writebehind", "deadletter"];
/// Every other round writes a fresh key, this many rounds in a row, so that the final state of
/// many keys is checked.
const ROUNDS_PER_FRESH_KEY: usize = 10;

/// The key every process writes in `round`: half the rounds one of [`HOT_KEYS`], the other half a
/// key of its own for [`ROUNDS_PER_FRESH_KEY`] rounds.
fn key_of(round: usize) -> String {
    match round % 4 {
        0 | 1 => HOT_KEYS[round % 4].to_string(),
        _ => format!("k{}", round / (2 * ROUNDS_PER_FRESH_KEY)),
    }
}

/// `processes` handlers on `redis` and the SQLite file at `store`, each holding its version
/// node-id lease.
fn start_handlers(redis: &RedisServer, store: &std::path::Path, processes: usize) -> Vec<Arc<Handler>> {
    let (redis_cs, store) = (redis.connection_string(), store.display().to_string());
    let handlers = (0..processes)
        // Entries (and the record of a delete) outlive the run, however slow the machine: the final
        // check compares what is cached, and an entry that expired on its own would hold nothing.
        .map(|_| {
            Arc::new(Handler::start(&[
                ("RedisCache", &redis_cs),
                ("LocalStorePath", &store),
                ("CacheTtlSeconds", "3600"),
                ("NegativeCacheTtlSeconds", "3600"),
            ]))
        })
        .collect();
    let started = Instant::now();
    loop {
        let leases = redis.command("KEYS \u{1f}node\u{1f}*").expect("KEYS");
        if leases.starts_with(&format!("*{processes}\r\n")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "node-id leases not taken: {leases:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    handlers
}

fn conflicting_writes(processes: usize, rounds: usize) {
    let redis = RedisServer::start();
    let store_dir = common::TempDir::new("scale-out");
    let store_path = store_dir.path().join("shared.db");
    let handlers = start_handlers(&redis, &store_path, processes);
    let barrier = Arc::new(Barrier::new(processes));
    let acks = Arc::new(Mutex::new(Vec::<Ack>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let threads: Vec<_> = (0..processes)
        .map(|p| {
            let (handler, barrier, acks, failures) =
                (handlers[p].clone(), barrier.clone(), acks.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (p as u64 + 1));
                for round in 0..rounds {
                    let key = key_of(round);
                    let pattern = if rng.next().is_multiple_of(2) { "write-through" } else { "write-behind" };
                    let delete = rng.next().is_multiple_of(4);
                    let value = json!(format!("p{p}-r{round}"));
                    let path = format!("/api/{pattern}/{key}");
                    barrier.wait();
                    let answer = if delete {
                        handler.request("DELETE", &path, None)
                    } else {
                        handler.request("PUT", &path, Some(&value.to_string()))
                    };
                    match answer {
                        Ok((status, body)) if (200..300).contains(&status) => {
                            let version = body["version"].as_u64().expect("a write answer carries its version");
                            let what = format!(
                                "{} {pattern} by process {p} in round {round}",
                                if delete { "delete" } else { "put" }
                            );
                            acks.lock().unwrap().push(Ack {
                                key: key.clone(),
                                version,
                                value: (!delete).then_some(value),
                                what,
                            });
                        }
                        Ok((status, body)) => failures.lock().unwrap().push(format!("{path}: {status} {body}")),
                        Err(e) => failures.lock().unwrap().push(format!("{path}: {e}")),
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a writer thread panicked");
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} writes failed, e.g. {:?}", failures.len(), &failures[..failures.len().min(5)]);
    let acks = acks.lock().unwrap().clone();
    assert_eq!(acks.len(), processes * rounds);

    // No two acknowledged writes of one key share a version.
    let mut seen: HashMap<(String, u64), String> = HashMap::new();
    for ack in &acks {
        if let Some(first) = seen.insert((ack.key.clone(), ack.version), ack.what.clone()) {
            panic!("{} and {} both answered version {} for {:?}", first, ack.what, ack.version, ack.key);
        }
    }

    // Quiescence: the write-behind stream is empty once every entry was applied and acknowledged.
    let started = Instant::now();
    loop {
        let len = redis.command("XLEN \u{1f}writebehind").expect("XLEN");
        if len.trim() == ":0" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the write-behind queue did not drain: {len}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // After quiescence, every key written holds the acknowledged write with the highest version,
    // in the store and in the cache.
    let mut highest: HashMap<&str, &Ack> = HashMap::new();
    for ack in &acks {
        let best = highest.entry(ack.key.as_str()).or_insert(ack);
        if ack.version > best.version {
            *best = ack;
        }
    }
    let (mut store_disagreements, mut cache_disagreements) = (Vec::new(), Vec::new());
    for (key, expected) in &highest {
        let stored = sqlite_row(&store_path, key).map(|(text, version, deleted)| {
            (version, if deleted { None } else { text.map(|t| serde_json::from_str::<Value>(&t).unwrap()) })
        });
        if stored.as_ref() != Some(&(expected.version, expected.value.clone())) {
            store_disagreements
                .push(format!("store of {key:?}: {stored:?}, not {} ({})", expected.version, expected.what));
        }
        let fields = redis.command(&format!("HMGET {key} ver data neg")).expect("HMGET");
        // *3, $len, ver, $len|$-1, data|..., ...
        let lines: Vec<&str> = fields.lines().collect();
        let cached_version = lines.get(2).and_then(|line| line.parse::<u64>().ok());
        let cached_right = match &expected.value {
            Some(value) => lines.get(4) == Some(&value.to_string().as_str()),
            None => fields.contains("\r\n1\r\n"),
        };
        if cached_version != Some(expected.version) || !cached_right {
            cache_disagreements
                .push(format!("cache of {key:?}: {fields:?}, not {} ({})", expected.version, expected.what));
        }
    }
    eprintln!(
        "FIGURES scale-out, {processes} processes: {} conflicting writes, {} acknowledged ({} failed), {} keys checked, 0 shared versions, {} store and {} cache disagreements",
        processes * rounds,
        acks.len(),
        failures.len(),
        highest.len(),
        store_disagreements.len(),
        cache_disagreements.len()
    );
    assert!(store_disagreements.is_empty(), "{store_disagreements:#?}");
    assert!(cache_disagreements.is_empty(), "{cache_disagreements:#?}");
}

#[test]
fn two_processes_conflicting_writes_agree_in_cache_and_store() {
    conflicting_writes(2, 3000);
}

#[test]
fn three_processes_conflicting_writes_agree_in_cache_and_store() {
    conflicting_writes(3, 2000);
}

/// Sends `request` on a connection of its own and leaves: after `wait` without reading anything,
/// or once the answer came when `wait` is `None`.
fn send_and_maybe_leave(port: u16, request: &str, wait: Option<Duration>) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    if stream.write_all(request.as_bytes()).is_err() {
        return;
    }
    match wait {
        Some(wait) => {
            std::thread::sleep(wait);
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        None => {
            let _ = stream.read_to_end(&mut Vec::new());
        }
    }
}

/// Callers that leave while their writes run, on several processes at once: a client that
/// disconnects (or the host cancelling the invocation) at any moment of a write. Whatever each
/// write became, once the queue has drained every key must be the same in the cache and in the
/// store: a write the store took is cached too (invariant 2).
fn callers_that_leave(processes: usize, writes_per_process: usize) {
    let redis = RedisServer::start();
    let store_dir = common::TempDir::new("scale-out-leaving");
    let store_path = store_dir.path().join("shared.db");
    let handlers = start_handlers(&redis, &store_path, processes);
    const KEYS: u64 = 16;
    let barrier = Arc::new(Barrier::new(processes));
    let threads: Vec<_> = (0..processes)
        .map(|p| {
            let (handler, barrier) = (handlers[p].clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (p as u64 + 1));
                let mut left = 0;
                for i in 0..writes_per_process {
                    let key = format!("leave-{}", rng.below(KEYS));
                    let pattern = if rng.below(3) == 0 { "write-behind" } else { "write-through" };
                    let request = if rng.below(5) == 0 {
                        format!("DELETE /api/{pattern}/{key} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    } else {
                        let body = format!("\"p{p}-{i}\"");
                        format!(
                            "PUT /api/{pattern}/{key} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    // Two in three callers leave after 0 to 2 ms, the moments a write is in the
                    // store or the queue and not yet in the cache.
                    let wait = (rng.below(3) != 0).then(|| Duration::from_micros(rng.below(2000)));
                    left += usize::from(wait.is_some());
                    if i % 50 == 0 {
                        barrier.wait();
                    }
                    send_and_maybe_leave(handler.port, &request, wait);
                }
                left
            })
        })
        .collect();
    let left: usize = threads.into_iter().map(|t| t.join().expect("a writer thread panicked")).sum();

    // Quiescence, then agreement: nothing queued, and every key the same in the cache and in the
    // store (a key not cached at all agrees: the next read loads it). Writes of callers that left
    // may still be finishing, or queue events after the stream looked empty, so the check must
    // hold twice, a second apart (within 60 s).
    let disagreements = || {
        let mut found = Vec::new();
        let len = redis.command("XLEN \u{1f}writebehind").expect("XLEN");
        if len.trim() != ":0" {
            found.push(format!("the write-behind queue holds {len:?}"));
        }
        for k in 0..KEYS {
            let key = format!("leave-{k}");
            let stored = sqlite_row(&store_path, &key).map(|(text, version, deleted)| {
                (version, if deleted { None } else { text.map(|t| serde_json::from_str::<Value>(&t).unwrap()) })
            });
            let fields = redis.command(&format!("HMGET {key} ver data neg")).expect("HMGET");
            let lines: Vec<&str> = fields.lines().collect();
            let cached_version = lines.get(2).and_then(|line| line.parse::<u64>().ok());
            let agree = match (&stored, cached_version) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some((version, value)), Some(cached)) => {
                    cached == *version
                        && match value {
                            Some(value) => lines.get(4) == Some(&value.to_string().as_str()),
                            None => fields.contains("\r\n1\r\n"),
                        }
                }
            };
            if !agree {
                found.push(format!("{key}: store {stored:?}, cache {fields:?}"));
            }
        }
        found
    };
    let started = Instant::now();
    let mut agreeing_since: Option<Instant> = None;
    let disagreements = loop {
        let found = disagreements();
        if !found.is_empty() {
            agreeing_since = None;
        } else if agreeing_since.is_some_and(|since| since.elapsed() >= Duration::from_secs(1)) {
            break found;
        } else {
            agreeing_since = agreeing_since.or(Some(Instant::now()));
        }
        if started.elapsed() > Duration::from_secs(60) {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "FIGURES scale-out, {processes} processes, callers leaving: {} writes to {KEYS} keys, {left} callers left mid-write, {} keys where cache and store disagree",
        processes * writes_per_process,
        disagreements.len()
    );
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

#[test]
fn callers_that_leave_mid_write_on_two_processes_leave_cache_and_store_agreeing() {
    callers_that_leave(2, 1500);
}
