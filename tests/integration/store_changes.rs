//! `StoreChanges` (docs/store-changes.md): the change feed of the Cosmos DB container, as the host
//! pushes it, keeps the cache in step with what other programs write, and costs nothing for what
//! this service writes. Real documents come from the change feed of the SDK's in-memory emulator;
//! the invocations are built from `StoreChanges/function.json`.

use crate::common;

use std::collections::HashMap;

use axum::Router;
use azure_data_cosmos::FeedScope;
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::options::ChangeFeedStartFrom;
use cachepatterns::adapters::cosmos::item_id;
use cachepatterns::config::{Settings, StoreSettings};
use cachepatterns::domain::key::Key;
use cachepatterns::http::TriggerFunction;
use cachepatterns::patterns::CacheStatus;
use cachepatterns::patterns::store_changes::ChangedItem;
use cachepatterns::ports::DeadLetters;
use cachepatterns::ports::store::{Change, Store};
use common::cosmos::{CONTAINER, DATABASE, Emulator};
use common::host::{self, FunctionDef};
use common::{RedisServer, TestApp};
use futures_util::StreamExt;
use serde_json::{Value, json};

fn key(k: &str) -> Key {
    Key::new(k).unwrap()
}

/// An app on a real Redis and a Cosmos store on its own in-memory account, with a client of that
/// account to play the other programs and to read the change feed.
struct World {
    t: TestApp,
    container: ContainerClient,
    _emulator: Emulator,
}

async fn world(redis: &RedisServer) -> World {
    let emulator = Emulator::new(false);
    let store = emulator.store().await;
    let t = TestApp::with_store(redis, store, &[]);
    let client = emulator.client(None).await;
    let container = client.database_client(DATABASE).container_client(CONTAINER, None).await.expect("container");
    World { t, container, _emulator: emulator }
}

impl World {
    /// The documents of `ids` as the change feed delivers them now (the latest version of each,
    /// system properties included), in the order of `ids`.
    async fn changed(&self, ids: &[&str]) -> Vec<Value> {
        let mut pages = self
            .container
            .query_change_feed::<Value>(FeedScope::full_container(), ChangeFeedStartFrom::Beginning, None)
            .await
            .expect("change feed");
        let mut latest: HashMap<String, Value> = HashMap::new();
        let mut empty_pages = 0;
        while ids.iter().any(|id| !latest.contains_key(*id)) {
            let page = pages.next().await.expect("the change feed never ends").expect("a page");
            let mut items = 0;
            for item in page.items() {
                if let Some(document) = item.current() {
                    items += 1;
                    latest.insert(document["id"].as_str().unwrap().to_string(), document.clone());
                }
            }
            empty_pages = if items == 0 { empty_pages + 1 } else { 0 };
            assert!(empty_pages < 20, "the change feed has no document for some of {ids:?}: {:?}", latest.keys());
        }
        ids.iter().map(|id| latest[*id].clone()).collect()
    }

    /// Writes `document` into the container as another program would (an upsert, no version of ours).
    async fn written_elsewhere(&self, document: Value) {
        let id = document["id"].as_str().unwrap().to_string();
        self.container.upsert_item(id.clone(), &id, &document, None).await.expect("upsert");
    }

    /// The item as stored (what another program editing it would start from).
    async fn stored(&self, id: &str) -> Value {
        self.container.read_item(id.to_string(), id, None).await.expect("read").into_model().expect("JSON")
    }
}

/// The invocation the host posts for `documents` (the binding data, in whichever encoding), with
/// the retry policy's context.
fn invocation(documents: Value, retry_count: u64) -> Value {
    let def = FunctionDef::load("StoreChanges");
    let mut data = serde_json::Map::new();
    data.insert(def.trigger.clone(), documents);
    json!({"Data": data, "Metadata": {
        "RetryContext": {"RetryCount": retry_count, "MaxRetryCount": -1, "Exception": null},
        "sys": {"MethodName": def.name, "UtcNow": "2026-11-26T07:29:07.1234567Z", "RandGuid": "5d1c4a0e-3f7b-4a55-9c1d-2b6e8f0a7c13"}
    }})
}

/// Posts `envelope` to `StoreChanges`: the status and the `Logs`.
async fn run(router: &Router, envelope: &Value) -> (u16, Vec<String>) {
    let (status, reply) = host::invoke(router, "StoreChanges", envelope).await;
    if status != 200 {
        return (status, vec![reply.to_string()]);
    }
    assert_eq!(reply["ReturnValue"], Value::Null, "{reply}");
    assert_eq!(reply["Outputs"], json!({}), "no output bindings: {reply}");
    (status, reply["Logs"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect())
}

/// The counts line of a run's `Logs`.
fn counts(logs: &[String]) -> &str {
    logs.iter().find(|l| l.contains(" keys: ")).unwrap_or_else(|| panic!("no counts in {logs:?}"))
}

#[test]
fn the_function_folder_follows_the_store_container() {
    let def = FunctionDef::load("StoreChanges");
    let trigger = &def.json["bindings"][0];
    assert_eq!(def.json["bindings"].as_array().unwrap().len(), 1, "no output bindings");
    assert_eq!(trigger["type"], "cosmosDBTrigger");
    assert_eq!(trigger["direction"], "in");
    assert_eq!(def.trigger, TriggerFunction::StoreChanges.trigger_binding());
    assert_eq!(TriggerFunction::StoreChanges.name(), "StoreChanges");
    // Extension bundle v4 names; the same settings as the handler's store.
    assert_eq!(trigger["connection"], "CosmosDBConnection");
    assert_eq!(trigger["databaseName"], "%CosmosDBDatabase%");
    assert_eq!(trigger["containerName"], "%CosmosDBContainer%");
    assert_eq!(trigger["leaseContainerName"], "leases");
    assert_eq!(trigger["createLeaseContainerIfNotExists"], true);
    assert_eq!(trigger["startFromBeginning"], false, "a new deployment follows changes from now on");
    assert!(trigger["maxItemsPerInvocation"].as_u64().is_some_and(|n| n <= 100), "bounded batches: {trigger}");
    assert_eq!(def.json["retry"]["strategy"], "exponentialBackoff");
    assert_eq!(def.json["retry"]["maxRetryCount"], -1, "a batch waits for Redis rather than being lost");
    // Locally (the embedded store) the function is disabled, its placeholders still resolve, and
    // those settings keep the handler on SQLite.
    let local: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/local.settings.json")).unwrap(),
    )
    .unwrap();
    let values = local["Values"].as_object().unwrap();
    assert_eq!(values["AzureWebJobs.StoreChanges.Disabled"], "true");
    for placeholder in ["CosmosDBDatabase", "CosmosDBContainer"] {
        assert!(values[placeholder].is_string(), "%{placeholder}% must resolve locally");
    }
    let map = values.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect();
    let settings = Settings::from_map(&map).expect("local.settings.json starts the handler");
    assert!(matches!(settings.store, StoreSettings::Sqlite { .. }), "{:?}", settings.store);
}

#[tokio::test]
async fn writes_of_this_service_cost_nothing() {
    let redis = RedisServer::start();
    let w = world(&redis).await;
    let s = &w.t.app.services;
    let router = w.t.app.router();
    s.write_through.write(&key("ours:a"), Change::Upsert(json!("a1"))).await.unwrap();
    s.write_through.write(&key("ours/b ü"), Change::Upsert(json!({"b": 1}))).await.unwrap();
    s.write_through.write(&key("ours:gone"), Change::Upsert(json!(1))).await.unwrap();
    s.write_through.write(&key("ours:gone"), Change::Delete).await.unwrap();
    w.t.store.probe_write().await.unwrap();
    for k in ["ours:a", "ours/b ü"] {
        assert_eq!(s.cache_aside.get(&key(k)).await.unwrap().cache, CacheStatus::Hit);
    }
    let ids = [item_id("ours:a"), item_id("ours/b ü"), item_id("ours:gone"), "~~health".to_string()];
    let documents = w.changed(&ids.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(documents.iter().all(|d| d["_ts"].is_u64()), "real documents carry _ts: {documents:?}");
    redis.reset_stats();
    let (status, logs) = run(&router, &invocation(Value::Array(documents), 0)).await;
    assert_eq!(status, 200, "{logs:?}");
    assert!(
        counts(&logs).contains("3 keys: 3 written by this service (skipped), 0 evicted, 0 waiting for Redis; 1 of the service's own bookkeeping, 0 unusable"),
        "{logs:?}"
    );
    let calls = redis.command_calls();
    assert!(calls.keys().all(|c| !c.starts_with("eval")), "no eviction was sent: {calls:?}");
    assert_eq!(s.cache_aside.get(&key("ours:a")).await.unwrap().cache, CacheStatus::Hit, "still cached");
    assert_eq!(s.cache_aside.get(&key("ours/b ü")).await.unwrap().cache, CacheStatus::Hit);
}

#[tokio::test]
async fn items_other_programs_write_are_evicted_and_the_next_read_loads_them() {
    let redis = RedisServer::start();
    let w = world(&redis).await;
    let s = &w.t.app.services;
    let router = w.t.app.router();
    for k in ["ext:plain", "ext:kept", "ext:deleted"] {
        s.write_through.write(&key(k), Change::Upsert(json!("v1"))).await.unwrap();
        assert_eq!(s.cache_aside.get(&key(k)).await.unwrap().value, Some(json!("v1").into()));
    }
    // Another program replaces one item with a document of its own (no key, version or updatedAt)...
    w.written_elsewhere(json!({"id": "ext:plain", "value": "v2"})).await;
    // ...edits another long after our write, keeping our key, version and updatedAt...
    let mut kept = w.stored("ext:kept").await;
    let our_version = kept["version"].clone();
    let an_hour_ago =
        chrono::DateTime::from_timestamp_millis((common::now().as_millis() - 3_600_000) as i64).unwrap().to_rfc3339();
    kept["value"] = json!("v2");
    kept["updatedAt"] = json!(an_hour_ago);
    w.written_elsewhere(kept).await;
    // ...and deletes a third the way the container's layout says: a tombstone.
    w.written_elsewhere(json!({"id": "ext:deleted", "value": null, "deleted": true})).await;
    // Until the change feed is followed, the cache serves what it had.
    assert_eq!(s.cache_aside.get(&key("ext:plain")).await.unwrap().value, Some(json!("v1").into()));
    let documents = w.changed(&["ext:plain", "ext:kept", "ext:deleted"]).await;
    // The host may send the array as JSON text.
    let (status, logs) = run(&router, &invocation(Value::String(Value::Array(documents).to_string()), 0)).await;
    assert_eq!(status, 200, "{logs:?}");
    assert!(counts(&logs).contains("3 keys: 0 written by this service (skipped), 3 evicted"), "{logs:?}");
    let plain = s.cache_aside.get(&key("ext:plain")).await.unwrap();
    assert_eq!((plain.value, plain.version, plain.cache), (Some(json!("v2").into()), 0, CacheStatus::Miss));
    let plain = s.cache_aside.get(&key("ext:plain")).await.unwrap();
    assert_eq!(
        (plain.value, plain.cache),
        (Some(json!("v2").into()), CacheStatus::Hit),
        "the reload at version 0 is cached: the eviction took the old version with it"
    );
    let kept = s.cache_aside.get(&key("ext:kept")).await.unwrap();
    assert_eq!((kept.value, Value::String(kept.version.to_string())), (Some(json!("v2").into()), our_version));
    assert_eq!(s.cache_aside.get(&key("ext:kept")).await.unwrap().cache, CacheStatus::Hit);
    let deleted = s.cache_aside.get(&key("ext:deleted")).await.unwrap();
    assert_eq!(deleted.value, None, "the tombstone another program wrote hides the key");
    // The service writes over an item of another program as over its own.
    let written = s.write_through.write(&key("ext:plain"), Change::Upsert(json!("v3"))).await.unwrap();
    assert!(written.cached);
    let read = s.cache_aside.get(&key("ext:plain")).await.unwrap();
    assert_eq!((read.value, read.cache), (Some(json!("v3").into()), CacheStatus::Hit));
    // That write comes back through the change feed as ours: nothing to do.
    let documents = w.changed(&["ext:plain"]).await;
    let (_, logs) = run(&router, &invocation(Value::Array(documents), 0)).await;
    assert!(counts(&logs).contains("1 keys: 1 written by this service (skipped), 0 evicted"), "{logs:?}");
    assert_eq!(s.cache_aside.get(&key("ext:plain")).await.unwrap().cache, CacheStatus::Hit);
}

#[tokio::test]
async fn every_encoding_of_the_batch_and_garbage_documents_are_skipped() {
    let redis = RedisServer::start();
    let w = world(&redis).await;
    let s = &w.t.app.services;
    let router = w.t.app.router();
    let long = "k".repeat(300);
    let garbage = vec![
        json!("not a document"),
        json!(42),
        json!({"value": "no id"}),
        json!({"id": item_id(&long), "value": "a hashed id without its key"}),
        json!({"id": "a", "key": "b"}),
        json!({"id": "~~tombstone-watermark", "watermark": "7"}),
    ];
    type Encode = fn(Vec<Value>) -> Value;
    let encodings: [(&str, Encode); 3] = [
        ("array", Value::Array),
        ("string", |d| Value::String(Value::Array(d).to_string())),
        ("string twice", |d| Value::String(Value::String(Value::Array(d).to_string()).to_string())),
    ];
    for (name, encode) in encodings {
        let k = format!("enc:{name}");
        s.write_through.write(&key(&k), Change::Upsert(json!("v1"))).await.unwrap();
        assert_eq!(s.cache_aside.get(&key(&k)).await.unwrap().value, Some(json!("v1").into()));
        w.written_elsewhere(json!({"id": item_id(&k), "value": "v2"})).await;
        let mut documents = garbage.clone();
        documents.insert(3, w.changed(&[&item_id(&k)]).await.remove(0));
        let (status, logs) = run(&router, &invocation(encode(documents), 0)).await;
        assert_eq!(status, 200, "{name}: {logs:?}");
        assert!(
            counts(&logs).contains("7 documents, 1 keys: 0 written by this service (skipped), 1 evicted, 0 waiting for Redis; 1 of the service's own bookkeeping, 5 unusable"),
            "{name}: {logs:?}"
        );
        assert_eq!(logs.iter().filter(|l| l.contains("skipped: ")).count(), 5, "{name}: {logs:?}");
        assert!(logs.iter().any(|l| l.contains("document 4 skipped") && l.contains(&item_id(&long))), "{logs:?}");
        assert_eq!(s.cache_aside.get(&key(&k)).await.unwrap().value, Some(json!("v2").into()), "{name}");
    }
    // Many unusable documents: the first few are logged, the rest counted.
    let (status, logs) = run(&router, &invocation(Value::Array(vec![json!(1); 25]), 0)).await;
    assert_eq!(status, 200);
    assert_eq!(logs.iter().filter(|l| l.contains("skipped: ")).count(), 10, "{logs:?}");
    assert!(logs.iter().any(|l| l.contains("15 more documents skipped")), "{logs:?}");
    // A batch that cannot be read at all is skipped: delivering it again would not help.
    for documents in [json!(42), json!("[{\"id\": trunc"), json!(true)] {
        let (status, logs) = run(&router, &invocation(documents.clone(), 0)).await;
        assert_eq!(status, 200, "{documents}: {logs:?}");
        assert!(logs.iter().any(|l| l.contains("the batch is skipped")), "{logs:?}");
    }
    let (status, logs) = run(&router, &json!({"Data": {}, "Metadata": {}})).await;
    assert_eq!((status, logs.len()), (200, 1), "{logs:?}");
    // Nor is an envelope that is not JSON retried, or taken for a write-behind batch.
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/StoreChanges")
        .header("Content-Type", "application/json")
        .body(axum::body::Body::from("{\"Data\": trunc"))
        .unwrap();
    let (status, _, body) = host::raw(&router, request).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("could not be read"));
    assert_eq!(w.t.app.dead_letters().count().await.unwrap(), 0, "store changes are no write-behind events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_refuses_the_evictions_wait_and_the_batch_is_delivered_again() {
    let redis = RedisServer::start();
    let w = world(&redis).await;
    let s = &w.t.app.services;
    let router = w.t.app.router();
    s.write_through.write(&key("away:a"), Change::Upsert(json!("v1"))).await.unwrap();
    s.write_through.write(&key("away:ours"), Change::Upsert(json!("o1"))).await.unwrap();
    assert_eq!(s.cache_aside.get(&key("away:a")).await.unwrap().value, Some(json!("v1").into()));
    w.written_elsewhere(json!({"id": "away:a", "value": "v2"})).await;
    let documents = Value::Array(w.changed(&["away:a", "away:ours"]).await);
    // Redis refuses every write for now (as a failing-over Redis does); reads still work.
    redis.command("CONFIG SET min-replicas-to-write 1").expect("CONFIG SET");
    let (status, reply) = run(&router, &invocation(documents.clone(), 0)).await;
    assert_eq!(status, 500, "the host's retry policy is to deliver the batch again: {reply:?}");
    assert!(reply[0].contains("1 of the 1 keys"), "{reply:?}");
    assert_eq!(s.invalidation.pending(), 1, "the eviction waits for Redis");
    assert_eq!(s.invalidation.replay_pending().await, 0, "nothing is replayed while Redis refuses");
    assert_eq!(s.cache_aside.get(&key("away:a")).await.unwrap().value, Some(json!("v1").into()), "not evicted yet");
    // Redis is back: the replay evicts what waited...
    redis.command("CONFIG SET min-replicas-to-write 0").expect("CONFIG SET");
    assert_eq!(s.invalidation.replay_pending().await, 1);
    let read = s.cache_aside.get(&key("away:a")).await.unwrap();
    assert_eq!((read.value, read.cache), (Some(json!("v2").into()), CacheStatus::Miss));
    // ...and the batch delivered again (the instance that failed it may be gone) goes through.
    let (status, logs) = run(&router, &invocation(documents, 1)).await;
    assert_eq!(status, 200, "{logs:?}");
    assert!(logs.iter().any(|l| l.starts_with("retry 1 of this batch")), "{logs:?}");
    assert!(counts(&logs).contains("2 keys: 1 written by this service (skipped), 1 evicted"), "{logs:?}");
    assert_eq!(s.invalidation.pending(), 0);
    assert_eq!(s.cache_aside.get(&key("away:a")).await.unwrap().value, Some(json!("v2").into()));
    assert_eq!(s.cache_aside.get(&key("away:ours")).await.unwrap().cache, CacheStatus::Hit, "never evicted");
}

/// A batch of many items other programs changed is evicted in a few multi-key calls, not one call
/// per item all at once: one round trip per 100 keys of a slot (keys in four hash-tag groups here,
/// four slots on a cluster). The change feed's batches are as large as the trigger's
/// `maxItemsPerInvocation` allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_many_foreign_changes_is_evicted_in_a_few_calls() {
    const KEYS: usize = 400;
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let s = &t.app.services;
    let changed: Vec<Key> = (0..KEYS).map(|i| key(&format!("{{g{}}}foreign-{i}", i % 4))).collect();
    for k in &changed[..8] {
        s.write_through.write(k, Change::Upsert(json!("old"))).await.unwrap();
    }
    let items: Vec<ChangedItem> =
        changed.iter().map(|k| ChangedItem { key: k.clone(), version: None, written_by_us: false }).collect();
    // The script loaded.
    s.store_changes.follow(&items[..1]).await.expect("a batch of one");
    redis.reset_stats();
    let before = t.app.redis.round_trips();
    t.app.redis.take_peak_in_flight();
    let followed = s.store_changes.follow(&items).await.expect("the batch is followed");
    let (round_trips, peak) = (t.app.redis.round_trips() - before, t.app.redis.take_peak_in_flight());
    let calls = redis.command_calls();
    let scripts = calls.get("evalsha").copied().unwrap_or(0) + calls.get("eval").copied().unwrap_or(0);
    eprintln!(
        "FIGURES a batch of {KEYS} foreign changes: {round_trips} round trips, {scripts} script calls, {peak} in flight at most"
    );
    assert_eq!((followed.evicted, followed.waiting), (KEYS, 0), "{followed:?}");
    assert_eq!(calls.get("publish").copied(), Some(KEYS as u64), "every eviction is announced: {calls:?}");
    assert_eq!(round_trips, (KEYS as u64).div_ceil(100), "one call per 100 keys of a slot");
    assert!(scripts <= (KEYS as u64).div_ceil(100) + 3, "{scripts} script calls: {calls:?}");
    assert!(peak <= 16, "{peak} round trips in flight at once");
    for k in &changed[..8] {
        assert_eq!(s.cache_aside.get(k).await.unwrap().cache, CacheStatus::Miss, "{k:?} was evicted");
    }
}
