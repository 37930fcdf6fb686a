//! Several handler processes on one Redis and one store, as Azure runs the app when it scales out.
//!
//! Each round sends one write per process to the same key at the same moment (a barrier releases
//! them together): write-through and write-behind, upserts and deletes, mixed. After the
//! write-behind queue has drained, every key must hold, in the store and in the cache, the write
//! with the highest version any `2xx` answer reported, and no two `2xx` answers for one key may
//! report the same version (invariants 1, 2 and 4, docs/reliability.md).

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

fn conflicting_writes(processes: usize, rounds: usize) {
    let redis = RedisServer::start();
    let store_dir = common::TempDir::new("scale-out");
    let store_path = store_dir.path().join("shared.db");
    let redis_cs = redis.connection_string();
    let store = store_path.display().to_string();
    let handlers: Vec<Arc<Handler>> = (0..processes)
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
    // Every process holds its version node-id lease before the writes start.
    let started = Instant::now();
    loop {
        let leases = redis.command("KEYS \u{1f}node\u{1f}*").expect("KEYS");
        if leases.starts_with(&format!("*{processes}\r\n")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "node-id leases not taken: {leases:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
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
