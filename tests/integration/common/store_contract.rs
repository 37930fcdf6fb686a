//! The store contract: every `Store` implementation must pass all of it.
//!
//! `run_all` runs each case against one store, with keys namespaced per case so one store instance
//! serves the whole suite; a failure names the case.

use std::sync::Arc;
use std::time::Duration;

use cachepatterns::domain::options::{EntryOptions, tags_from};
use cachepatterns::patterns::HybridClock;
use cachepatterns::ports::clock::{Clock, ManualClock};
use cachepatterns::ports::store::{Applied, Change, Store};
use serde_json::{Value, json};

type BoxedCase = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
type Case = (&'static str, fn(Arc<dyn Store>, String) -> BoxedCase);

macro_rules! case {
    ($name:ident) => {
        (stringify!($name), |store, ns| Box::pin($name(store, ns)))
    };
}

/// Runs the whole contract against `store`. `namespace` keeps runs on a shared store apart.
pub async fn run_all(store: Arc<dyn Store>, namespace: &str) {
    let cases: Vec<Case> = vec![
        case!(missing_key_is_none),
        case!(upsert_then_get),
        case!(older_and_equal_versions_are_stale),
        case!(newer_versions_apply),
        case!(delete_leaves_a_versioned_tombstone),
        case!(delete_of_a_never_written_key),
        case!(null_is_a_value_not_a_tombstone),
        case!(out_of_order_and_duplicate_applies),
        case!(concurrent_writers_keep_the_highest_version),
        case!(tricky_keys_round_trip),
        case!(keys_are_case_sensitive_and_independent),
        case!(large_values_round_trip),
        case!(get_many_reads_what_get_reads_in_order),
        case!(ping_answers),
        case!(probe_write_succeeds),
        // Last: it purges every old tombstone in the store and raises the watermark to now, after
        // which keys without a record refuse the small versions the other cases use.
        case!(tombstones_are_purged_after_the_retention_window_and_never_resurrect),
    ];
    for (name, case) in cases {
        let ns = format!("{namespace}-{name}-");
        let run = tokio::spawn(case(store.clone(), ns));
        if let Err(e) = run.await {
            panic!("store contract case `{name}` failed against {}: {e}", store.kind());
        }
    }
}

async fn missing_key_is_none(store: Arc<dyn Store>, ns: String) {
    assert_eq!(store.get(&format!("{ns}never")).await.unwrap(), None);
}

async fn upsert_then_get(store: Arc<dyn Store>, ns: String) {
    let key = format!("{ns}k");
    assert_eq!(store.apply(&key, 10, Change::Upsert(json!({"a": [1, 2, "x"]}))).await.unwrap(), Applied::Yes);
    let record = store.get(&key).await.unwrap().expect("record");
    assert_eq!(record.key, key);
    assert_eq!(record.value, Some(json!({"a": [1, 2, "x"]})));
    assert_eq!(record.version, 10);
    assert!(!record.is_deleted());
}

async fn older_and_equal_versions_are_stale(store: Arc<dyn Store>, ns: String) {
    let key = format!("{ns}k");
    store.apply(&key, 100, Change::Upsert(json!("new"))).await.unwrap();
    assert_eq!(store.apply(&key, 99, Change::Upsert(json!("old"))).await.unwrap(), Applied::Stale { current: 100 });
    assert_eq!(
        store.apply(&key, 100, Change::Upsert(json!("same version"))).await.unwrap(),
        Applied::Stale { current: 100 }
    );
    assert_eq!(store.apply(&key, 50, Change::Delete).await.unwrap(), Applied::Stale { current: 100 });
    let record = store.get(&key).await.unwrap().unwrap();
    assert_eq!((record.value, record.version), (Some(json!("new")), 100));
}

async fn newer_versions_apply(store: Arc<dyn Store>, ns: String) {
    let key = format!("{ns}k");
    for (version, value) in [(1, "a"), (2, "b"), (1_800_000_000_000_000, "c")] {
        assert_eq!(store.apply(&key, version, Change::Upsert(json!(value))).await.unwrap(), Applied::Yes);
    }
    let record = store.get(&key).await.unwrap().unwrap();
    assert_eq!((record.value, record.version), (Some(json!("c")), 1_800_000_000_000_000));
}

async fn delete_leaves_a_versioned_tombstone(store: Arc<dyn Store>, ns: String) {
    let key = format!("{ns}k");
    store.apply(&key, 5, Change::Upsert(json!(1))).await.unwrap();
    assert_eq!(store.apply(&key, 6, Change::Delete).await.unwrap(), Applied::Yes);
    let tomb = store.get(&key).await.unwrap().expect("a tombstone, not nothing");
    assert!(tomb.is_deleted());
    assert_eq!(tomb.version, 6);
    // A late write older than the delete must not resurrect the key.
    assert_eq!(store.apply(&key, 5, Change::Upsert(json!("late"))).await.unwrap(), Applied::Stale { current: 6 });
    assert!(store.get(&key).await.unwrap().unwrap().is_deleted());
    // A newer write does.
    assert_eq!(store.apply(&key, 7, Change::Upsert(json!("back"))).await.unwrap(), Applied::Yes);
    assert_eq!(store.get(&key).await.unwrap().unwrap().value, Some(json!("back")));
}

async fn delete_of_a_never_written_key(store: Arc<dyn Store>, ns: String) {
    let key = format!("{ns}k");
    assert_eq!(store.apply(&key, 3, Change::Delete).await.unwrap(), Applied::Yes);
    assert_eq!(store.apply(&key, 2, Change::Upsert(json!("older"))).await.unwrap(), Applied::Stale { current: 3 });
    let tomb = store.get(&key).await.unwrap().unwrap();
    assert!(tomb.is_deleted());
    assert_eq!(tomb.version, 3);
}

async fn null_is_a_value_not_a_tombstone(store: Arc<dyn Store>, ns: String) {
    let key = format!("{ns}k");
    store.apply(&key, 1, Change::Upsert(Value::Null)).await.unwrap();
    let record = store.get(&key).await.unwrap().unwrap();
    assert_eq!(record.value, Some(Value::Null));
    assert!(!record.is_deleted());
}

async fn out_of_order_and_duplicate_applies(store: Arc<dyn Store>, ns: String) {
    let key = format!("{ns}k");
    // A fixed shuffle of 1..=40, each delivered twice; every 7th is a delete.
    let mut versions: Vec<u64> = (1..=40).collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in (1..versions.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        versions.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let change = |v: u64| if v.is_multiple_of(7) { Change::Delete } else { Change::Upsert(json!({"v": v})) };
    for &v in versions.iter().chain(versions.iter().rev()) {
        store.apply(&key, v, change(v)).await.unwrap();
    }
    let record = store.get(&key).await.unwrap().unwrap();
    assert_eq!((record.value, record.version), (Some(json!({"v": 40})), 40));
}

async fn concurrent_writers_keep_the_highest_version(store: Arc<dyn Store>, ns: String) {
    let key = format!("{ns}k");
    let writers = 16u64;
    let per_writer = 12u64;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let key = key.clone();
            tokio::spawn(async move {
                for i in 0..per_writer {
                    // Interleaved versions: writer w writes w, w+16, w+32, … (some deletes).
                    let version = 1 + w + i * writers;
                    let change = if version.is_multiple_of(11) {
                        Change::Delete
                    } else {
                        Change::Upsert(json!({"writer": w, "v": version}))
                    };
                    store.apply(&key, version, change).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let max = writers * per_writer;
    let record = store.get(&key).await.unwrap().unwrap();
    assert_eq!(record.version, max, "the highest version must win");
    assert_eq!(record.value, Some(json!({"writer": (max - 1) % writers, "v": max})));
}

/// Keys that break naive stores: Cosmos forbids `/ \ ? #` in ids, ids are limited to 255 bytes.
pub fn tricky_keys() -> Vec<String> {
    vec![
        "plain".into(),
        "with/slash".into(),
        "back\\slash".into(),
        "question?mark".into(),
        "hash#tag".into(),
        "percent%2Fencoded%".into(),
        "spaces and ünïcødé 🙂".into(),
        "quote'\"{}[]".into(),
        ".".into(),
        "..".into(),
        " leading and trailing ".into(),
        "é".repeat(200),
        "k".repeat(512),
    ]
}

async fn tricky_keys_round_trip(store: Arc<dyn Store>, ns: String) {
    for (i, suffix) in tricky_keys().into_iter().enumerate() {
        // The namespace goes at the end so that 512-byte keys stay as long as they are.
        let key = if suffix.len() + ns.len() > 512 { suffix.clone() } else { format!("{suffix}{ns}") };
        let version = 1000 + i as u64;
        assert_eq!(store.apply(&key, version, Change::Upsert(json!({"i": i}))).await.unwrap(), Applied::Yes, "{key:?}");
        let record = store.get(&key).await.unwrap().unwrap_or_else(|| panic!("key {key:?} did not round-trip"));
        assert_eq!((record.key.as_str(), record.value, record.version), (key.as_str(), Some(json!({"i": i})), version));
        assert_eq!(store.apply(&key, version + 1, Change::Delete).await.unwrap(), Applied::Yes, "{key:?}");
        assert!(store.get(&key).await.unwrap().unwrap().is_deleted());
    }
}

async fn keys_are_case_sensitive_and_independent(store: Arc<dyn Store>, ns: String) {
    let (lower, upper) = (format!("{ns}key"), format!("{ns}KEY"));
    store.apply(&lower, 1, Change::Upsert(json!("lower"))).await.unwrap();
    store.apply(&upper, 2, Change::Upsert(json!("upper"))).await.unwrap();
    assert_eq!(store.get(&lower).await.unwrap().unwrap().value, Some(json!("lower")));
    assert_eq!(store.get(&upper).await.unwrap().unwrap().value, Some(json!("upper")));
    store.apply(&lower, 3, Change::Delete).await.unwrap();
    assert_eq!(store.get(&upper).await.unwrap().unwrap().value, Some(json!("upper")));
}

async fn large_values_round_trip(store: Arc<dyn Store>, ns: String) {
    let key = format!("{ns}big");
    let value = json!({"blob": "x".repeat(600 * 1024), "n": [1, 2, 3]});
    store.apply(&key, 1, Change::Upsert(value.clone())).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap().unwrap().value, Some(value));
}

/// A batched read answers, per key and in order, exactly what `get` answers: values, tombstones,
/// absent keys, the write's tags and TTL, tricky and repeated keys, and more keys than one batch
/// of the store takes (SQLite: 500).
async fn get_many_reads_what_get_reads_in_order(store: Arc<dyn Store>, ns: String) {
    let options = EntryOptions { tags: tags_from(["b", "a"]).unwrap(), ttl: Some(Duration::from_secs(90)) };
    let (tagged, deleted, absent) = (format!("{ns}tagged"), format!("{ns}deleted"), format!("{ns}absent"));
    store.apply_with(&tagged, 5, Change::Upsert(json!({"t": 1})), &options).await.unwrap();
    store.apply(&deleted, 6, Change::Upsert(json!("gone soon"))).await.unwrap();
    store.apply(&deleted, 7, Change::Delete).await.unwrap();
    let mut keys = vec![absent.clone(), tagged.clone(), deleted.clone(), tagged.clone()];
    for (i, suffix) in tricky_keys().into_iter().enumerate() {
        let key = if suffix.len() + ns.len() > 512 { suffix } else { format!("{suffix}{ns}") };
        if i % 3 != 0 {
            store.apply(&key, 100 + i as u64, Change::Upsert(json!(i))).await.unwrap();
        }
        keys.push(key);
    }
    for i in 0..520 {
        let key = format!("{ns}many-{i}");
        if i % 2 == 0 {
            store.apply(&key, 1000 + i, Change::Upsert(json!(i))).await.unwrap();
        }
        keys.push(key);
    }
    let many = store.get_many(&keys).await.unwrap();
    assert_eq!(many.len(), keys.len());
    for (key, batched) in keys.iter().zip(&many) {
        assert_eq!(batched, &store.get(key).await.unwrap(), "{key:?}");
    }
    let tagged_record = many[1].as_ref().expect("the tagged key is stored");
    assert_eq!(
        (tagged_record.options.tag_names(), tagged_record.options.ttl),
        (vec!["a".to_string(), "b".to_string()], Some(Duration::from_secs(90)))
    );
    assert!(many[2].as_ref().is_some_and(|r| r.is_deleted() && r.version == 7));
    assert_eq!((&many[0], many[3].as_ref()), (&None, Some(tagged_record)));
    for (i, record) in many[many.len() - 520..].iter().enumerate() {
        let expected = (i % 2 == 0).then(|| (Some(json!(i)), 1000 + i as u64));
        assert_eq!(record.as_ref().map(|r| (r.value.clone(), r.version)), expected, "many-{i}");
    }
    assert!(store.get_many(&[]).await.unwrap().is_empty());
}

async fn ping_answers(store: Arc<dyn Store>, _ns: String) {
    store.ping().await.unwrap();
    assert!(!store.kind().is_empty());
}

async fn probe_write_succeeds(store: Arc<dyn Store>, ns: String) {
    store.probe_write().await.unwrap();
    store.probe_write().await.unwrap();
    // The probe record is the store's own: no key reads it.
    for key in ["~~health", "health", "health_probe", "~~tombstone-watermark", "tombstone_watermark"] {
        assert_eq!(store.get(key).await.unwrap(), None, "{key}");
    }
    assert_eq!(store.get(&format!("{ns}after-probe")).await.unwrap(), None);
}

/// The scenario of `hardening.rs`, on any store: 500 old tombstones plus one, a live key and
/// a recent tombstone; the purge removes exactly the 501 old ones, a late older write to a purged key
/// stays refused, new writes go through.
async fn tombstones_are_purged_after_the_retention_window_and_never_resurrect(store: Arc<dyn Store>, ns: String) {
    let time = ManualClock::starting_now();
    // The earlier cases' tombstones (tiny versions, issued in 1970) go first, so the count below is
    // this case's own.
    store.purge_tombstones(time.now()).await.unwrap();
    let clock = HybridClock::new(time.clone());
    for i in 0..500 {
        store.apply(&format!("{ns}never-existed-{i}"), clock.next(), Change::Delete).await.unwrap();
    }
    let (alive, deleted, recently_deleted) =
        (format!("{ns}alive"), format!("{ns}deleted"), format!("{ns}recently-deleted"));
    store.apply(&alive, clock.next(), Change::Upsert(json!(1))).await.unwrap();
    let tombstone = clock.next();
    store.apply(&deleted, tombstone, Change::Delete).await.unwrap();
    time.advance(Duration::from_secs(10 * 24 * 3600));
    let recent = clock.next();
    store.apply(&recently_deleted, recent, Change::Delete).await.unwrap();
    let retention = Duration::from_secs(24 * 3600);
    assert_eq!(store.purge_tombstones(time.now().minus(retention)).await.unwrap(), 501);
    assert_eq!(store.get(&deleted).await.unwrap(), None, "purged");
    assert_eq!(store.get(&format!("{ns}never-existed-7")).await.unwrap(), None, "purged");
    assert_eq!(store.get(&alive).await.unwrap().unwrap().value, Some(json!(1)), "live keys stay");
    assert!(store.get(&recently_deleted).await.unwrap().unwrap().is_deleted(), "recent tombstones stay");
    assert_eq!(store.purge_tombstones(time.now().minus(retention)).await.unwrap(), 0);
    // A late write older than the purged tombstone stays refused, and says what refused it...
    match store.apply(&deleted, tombstone - 1, Change::Upsert(json!("zombie"))).await.unwrap() {
        Applied::BelowWatermark { watermark } => assert!(watermark >= tombstone, "{watermark} < {tombstone}"),
        other => panic!("a purged delete must refuse an older write as below the watermark, got {other:?}"),
    }
    assert_eq!(store.get(&deleted).await.unwrap(), None);
    // ...as does one older than the retention window to a key that never existed (the price of
    // forgetting which keys had tombstones).
    assert!(matches!(
        store.apply(&format!("{ns}late-new-key"), tombstone - 1, Change::Upsert(json!(1))).await.unwrap(),
        Applied::BelowWatermark { .. }
    ));
    // The recent tombstone still guards its key with its own version.
    assert_eq!(
        store.apply(&recently_deleted, recent - 1, Change::Upsert(json!("late"))).await.unwrap(),
        Applied::Stale { current: recent }
    );
    // New writes go through, to the purged key and to new keys.
    assert_eq!(store.apply(&deleted, clock.next(), Change::Upsert(json!("new"))).await.unwrap(), Applied::Yes);
    assert_eq!(store.get(&deleted).await.unwrap().unwrap().value, Some(json!("new")));
    assert_eq!(
        store.apply(&format!("{ns}brand-new"), clock.next(), Change::Upsert(json!(1))).await.unwrap(),
        Applied::Yes
    );
    assert_eq!(store.apply(&format!("{ns}never-existed-3"), clock.next(), Change::Delete).await.unwrap(), Applied::Yes);
    store.probe_write().await.unwrap();
    assert_eq!(store.purge_tombstones(time.now().minus(retention)).await.unwrap(), 0, "nothing old is left");
}
