//! The store contract against the Cosmos DB store, plus what is Cosmos's own: provisioning, the
//! document shape and ids, contention, throttling through the HTTP API, and Cache-Aside /
//! Write-Through end to end. Cosmos is the SDK's in-memory emulator, which runs the real SDK
//! pipeline (auth, retries, 404/409/412/429) against an in-process account.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use azure_data_cosmos::CosmosClient;
use azure_data_cosmos_driver::fault_injection::{
    FaultInjectionConditionBuilder, FaultInjectionErrorType, FaultInjectionResultBuilder, FaultInjectionRule,
    FaultInjectionRuleBuilder, FaultOperationType,
};
use cachepatterns::adapters::cosmos::{CosmosStore, Provisioning, item_id};
use cachepatterns::patterns::HybridClock;
use cachepatterns::ports::clock::{Clock, ManualClock};
use cachepatterns::ports::store::{Applied, Change, Store, StoreError};
use cachepatterns::startup::{Application, Plugs};
use common::RedisServer;
use common::cosmos::{CONTAINER, DATABASE, Emulator};
use common::host::{self, Call, FunctionDef, MODES};
use serde_json::{Value, json};

/// The raw document behind `key`, as Cosmos holds it.
async fn raw_document(client: &CosmosClient, key: &str) -> Value {
    raw_item(client, &item_id(key)).await.expect("raw item")
}

/// The raw item `id` (a key's, or one of the store's own), `None` if there is none.
async fn raw_item(client: &CosmosClient, id: &str) -> Option<Value> {
    let container = client.database_client(DATABASE).container_client(CONTAINER, None).await.expect("container");
    match container.read_item(id.to_string(), id, None).await {
        Ok(response) => Some(response.into_model().expect("JSON document")),
        Err(e) if e.status().is_not_found() => None,
        Err(e) => panic!("read raw item {id:?}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cosmos_passes_the_store_contract() {
    let emulator = Emulator::new(false);
    let store: Arc<dyn Store> = emulator.store().await;
    common::store_contract::run_all(store, "cosmos").await;
}

#[tokio::test]
async fn documents_have_the_documented_shape_and_keep_the_original_key() {
    let emulator = Emulator::new(false);
    let store = emulator.store().await;
    let client = emulator.client(None).await;
    for key in ["plain-key", "with/slash?and#hash\\", &"é".repeat(200)] {
        store.apply(key, 7, Change::Upsert(json!({"n": 1}))).await.unwrap();
        let doc = raw_document(&client, key).await;
        assert_eq!(doc["id"], json!(item_id(key)));
        assert_eq!(doc["key"], json!(key));
        assert_eq!(doc["value"], json!({"n": 1}));
        assert_eq!(doc["version"], json!("7"), "versions are decimal strings: Cosmos numbers are doubles");
        assert_eq!(doc["deleted"], json!(false));
        let updated = doc["updatedAt"].as_str().expect("updatedAt is a string");
        assert!(updated.len() >= 20 && updated.as_bytes()[10] == b'T' && updated.ends_with('Z'), "{updated}");
        store.apply(key, 8, Change::Delete).await.unwrap();
        let tomb = raw_document(&client, key).await;
        assert_eq!(
            (tomb["deleted"].clone(), tomb["value"].clone(), tomb["version"].clone()),
            (json!(true), Value::Null, json!("8"))
        );
    }
    assert_eq!(item_id("plain-key"), "plain-key");
}

#[tokio::test]
async fn opening_twice_reuses_the_database_and_container() {
    let emulator = Emulator::new(false);
    let first = emulator.store().await;
    first.apply("k", 1, Change::Upsert(json!("kept"))).await.unwrap();
    // The second open meets 409 on both creates and must carry on with the existing container.
    let second = emulator.store().await;
    assert_eq!(second.get("k").await.unwrap().unwrap().value, Some(json!("kept")));
    assert_eq!(second.kind(), "cosmos");
    second.ping().await.unwrap();
}

#[tokio::test]
async fn managed_identity_mode_requires_an_existing_container() {
    let emulator = Emulator::new(false);
    let client = emulator.client(None).await;
    let err = CosmosStore::open(client, DATABASE, CONTAINER, Provisioning::MustExist).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Rejected { .. }), "{err:?}");
    assert!(text.contains("does not exist") && text.contains("/id"), "{text}");

    emulator.precreate_container("/id", None);
    let client = emulator.client(None).await;
    let store = CosmosStore::open(client, DATABASE, CONTAINER, Provisioning::MustExist).await.unwrap();
    store.apply("k", 1, Change::Upsert(json!(1))).await.unwrap();
}

#[tokio::test]
async fn a_container_with_another_partition_key_is_refused() {
    let emulator = Emulator::new(false);
    emulator.precreate_container("/pk", None);
    let client = emulator.client(None).await;
    let err = CosmosStore::open(client, DATABASE, CONTAINER, Provisioning::CreateIfMissing).await.unwrap_err();
    assert!(err.to_string().contains("partition key path /id"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_writers_from_two_clients_lose_no_update() {
    let emulator = Emulator::new(false);
    // Two stores with their own clients: two service instances writing the same item.
    let stores = [emulator.store().await, emulator.store().await];
    let key = "hot/key";
    let writers = 48u64;
    // Versions are a fixed permutation of 1..=48, so the highest does not simply come last.
    let versions: Vec<u64> = (0..writers).map(|i| (i * 29) % writers + 1).collect();
    let tasks: Vec<_> = versions
        .iter()
        .enumerate()
        .map(|(i, &version)| {
            let store = stores[i % 2].clone();
            tokio::spawn(async move {
                let change = if version % 5 == 0 { Change::Delete } else { Change::Upsert(json!({"v": version})) };
                (version, store.apply(key, version, change).await)
            })
        })
        .collect();
    let mut applied = 0;
    for task in tasks {
        let (version, outcome) = task.await.unwrap();
        match outcome.unwrap_or_else(|e| panic!("version {version}: {e}")) {
            Applied::Yes => applied += 1,
            Applied::Stale { current } => {
                assert!(current >= version, "stale {version} against older {current}");
                assert_ne!(version, writers, "the highest version must be applied, never reported stale");
            }
            Applied::BelowWatermark { watermark } => {
                panic!("nothing was purged, yet version {version} is below {watermark}")
            }
        }
    }
    assert!(applied >= 1);
    let record = stores[0].get(key).await.unwrap().unwrap();
    assert_eq!((record.version, record.value), (writers, Some(json!({"v": writers}))));
    assert_eq!(stores[1].get(key).await.unwrap().unwrap().version, writers);
}

fn fault(id: &str, operation: FaultOperationType, result: FaultInjectionResultBuilder) -> Arc<FaultInjectionRule> {
    let condition = FaultInjectionConditionBuilder::new().with_operation_type(operation).build();
    Arc::new(FaultInjectionRuleBuilder::new(id, result.build()).with_condition(condition).build())
}

/// Two service instances race on one key, and the older write is the one held back: it read the
/// item, then its write reaches Cosmos only after the newer write landed. `If-Match` (for an
/// existing item) and `create`'s 409 (for a new one) must turn it into `Stale`; a plain replace
/// or upsert would overwrite the newer version (a lost update).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_older_write_cannot_overwrite_a_newer_one() {
    let emulator = Emulator::new(false);
    let fast = Arc::new(emulator.store().await);
    fast.apply("existing", 1, Change::Upsert(json!("v1"))).await.unwrap();
    let held_back = Duration::from_millis(150);
    let slow_writes = vec![
        fault(
            "slow-replace",
            FaultOperationType::ReplaceItem,
            FaultInjectionResultBuilder::new().with_delay(held_back),
        ),
        fault("slow-create", FaultOperationType::CreateItem, FaultInjectionResultBuilder::new().with_delay(held_back)),
    ];
    let client = emulator.client_with_faults(None, slow_writes).await;
    let slow = Arc::new(CosmosStore::open(client, DATABASE, CONTAINER, Provisioning::CreateIfMissing).await.unwrap());
    for key in ["existing", "new"] {
        let older = {
            let slow = slow.clone();
            tokio::spawn(async move { slow.apply(key, 2, Change::Upsert(json!("older"))).await })
        };
        // Long enough for the older writer's read; far shorter than its write is held back.
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(fast.apply(key, 3, Change::Upsert(json!("newer"))).await.unwrap(), Applied::Yes, "{key}");
        assert_eq!(older.await.unwrap().unwrap(), Applied::Stale { current: 3 }, "{key}");
        let record = fast.get(key).await.unwrap().unwrap();
        assert_eq!((record.version, record.value), (3, Some(json!("newer"))), "{key}: an update was lost");
    }
}

#[tokio::test]
async fn service_unavailable_and_timeouts_are_unavailable_and_404_is_absent() {
    let emulator = Emulator::new(false);
    emulator.store().await.apply("present", 1, Change::Upsert(json!(1))).await.unwrap();
    for (name, error) in
        [("503", FaultInjectionErrorType::ServiceUnavailable), ("408", FaultInjectionErrorType::Timeout)]
    {
        let rule = fault(name, FaultOperationType::ReadItem, FaultInjectionResultBuilder::new().with_error(error));
        let client = emulator.client_with_faults(None, vec![rule]).await;
        let store = CosmosStore::open(client, DATABASE, CONTAINER, Provisioning::CreateIfMissing).await.unwrap();
        match store.get("present").await {
            Err(StoreError::Unavailable { message, .. }) => assert!(message.contains(name), "{message}"),
            other => panic!("{name} must be Unavailable, got {other:?}"),
        }
        assert!(store.apply("present", 2, Change::Delete).await.unwrap_err().is_transient());
    }
    let store = emulator.store().await;
    assert_eq!(store.get("absent").await.unwrap(), None);
}

#[tokio::test]
async fn every_version_round_trips_exactly_and_larger_ones_are_rejected() {
    let emulator = Emulator::new(false);
    let store = emulator.store().await;
    // Above 2^53 a double cannot tell these apart; the store must.
    let big = (1u64 << 62) + 1;
    store.apply("k", big, Change::Upsert(json!("a"))).await.unwrap();
    assert_eq!(store.get("k").await.unwrap().unwrap().version, big);
    assert!(
        matches!(store.apply("k", big - 1, Change::Upsert(json!("b"))).await.unwrap(), Applied::Stale { current } if current == big)
    );
    store.apply("k", big + 1, Change::Upsert(json!("c"))).await.unwrap();
    assert_eq!(store.get("k").await.unwrap().unwrap().value, Some(json!("c")));
    let err = store.apply("other", u64::MAX, Change::Upsert(json!(1))).await.unwrap_err();
    assert!(matches!(err, StoreError::Rejected { .. }), "{err:?}");
    assert_eq!(store.get("other").await.unwrap(), None);
}

/// Applies large values to other keys until the container's RU budget is spent (the emulator then
/// answers 429 with `x-ms-retry-after-ms`, and the SDK, told not to retry, hands it back).
async fn exhaust_throughput(store: &CosmosStore) -> StoreError {
    let blob = json!({"padding": "x".repeat(64 * 1024)});
    for i in 0..200u64 {
        if let Err(e) = store.apply(&format!("filler-{i}"), 1, Change::Upsert(blob.clone())).await {
            return e;
        }
    }
    panic!("the emulator never throttled");
}

#[tokio::test]
async fn throttling_is_unavailable_with_the_services_retry_hint() {
    let emulator = Emulator::new(true);
    emulator.precreate_container("/id", Some(400));
    let client = emulator.client(Some(0)).await;
    let store = CosmosStore::open(client, DATABASE, CONTAINER, Provisioning::CreateIfMissing).await.unwrap();
    match exhaust_throughput(&store).await {
        StoreError::Unavailable { message, retry_after, .. } => {
            assert!(message.contains("429"), "{message}");
            assert!(
                retry_after.is_some_and(|d| d > Duration::ZERO),
                "429 carries x-ms-retry-after-ms: {retry_after:?}"
            );
        }
        other => panic!("429 must be Unavailable, got {other:?}"),
    }
}

/// The store's own items (health probe, tombstone watermark) hold what the docs say, are reached by
/// no key, and are never purged or counted as tombstones. The watermark is a decimal string, and a
/// key without an item that is refused reports it as `current`.
#[tokio::test]
async fn the_stores_own_items_are_reached_by_no_key_and_never_purged() {
    let emulator = Emulator::new(false);
    let store = emulator.store().await;
    let client = emulator.client(None).await;
    store.probe_write().await.unwrap();
    let probe = raw_item(&client, "~~health").await.expect("the probe record");
    assert!(probe["updatedAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{probe}");
    assert!(probe.get("deleted").is_none() && probe.get("key").is_none(), "{probe}");
    store.probe_write().await.unwrap();

    let time = ManualClock::starting_now();
    let clock = HybridClock::new(time.clone());
    let (first, second) = (clock.next(), clock.next());
    store.apply("gone-1", first, Change::Delete).await.unwrap();
    store.apply("gone/2", second, Change::Delete).await.unwrap();
    let later = time.now().plus(Duration::from_secs(60));
    assert_eq!(store.purge_tombstones(later).await.unwrap(), 2, "two tombstones, nothing of the store's own");
    let watermark = raw_item(&client, "~~tombstone-watermark").await.expect("the watermark");
    assert_eq!(watermark["watermark"], json!(second.to_string()), "the highest purged version, as a string");
    assert!(raw_item(&client, "~~health").await.is_some(), "the probe record is not a tombstone");
    for key in ["~~health", "~~tombstone-watermark", "~~ping"] {
        assert_eq!(store.get(key).await.unwrap(), None, "{key}");
        assert_ne!(item_id(key), key);
    }
    // A key without an item takes only versions above the watermark, and says which.
    assert_eq!(
        store.apply("never-written", second, Change::Upsert(json!(1))).await.unwrap(),
        Applied::BelowWatermark { watermark: second }
    );
    assert_eq!(store.apply("never-written", second + 1, Change::Upsert(json!(1))).await.unwrap(), Applied::Yes);
    // Purging again leaves the watermark where it is (it only goes up).
    assert_eq!(store.purge_tombstones(later).await.unwrap(), 0);
    assert_eq!(raw_item(&client, "~~tombstone-watermark").await.unwrap()["watermark"], json!(second.to_string()));
}

/// Older releases wrote versions as JSON numbers; their tombstones are purged too, and the
/// watermark covers them.
#[tokio::test]
async fn tombstones_with_numeric_versions_from_older_releases_are_purged() {
    let emulator = Emulator::new(false);
    let store = emulator.store().await;
    let client = emulator.client(None).await;
    let container = client.database_client(DATABASE).container_client(CONTAINER, None).await.unwrap();
    // Old-layout versions: plain microseconds (2023-11-14).
    let old = 1_700_000_000_000_000u64;
    let document = json!({"id": "legacy", "key": "legacy", "value": null, "version": old, "deleted": true,
                          "updatedAt": "2023-11-14T22:13:20Z"});
    container.create_item("legacy", "legacy", &document, None).await.unwrap();
    store.apply("legacy-live", old, Change::Upsert(json!(1))).await.unwrap();
    let now = ManualClock::starting_now().now();
    assert_eq!(store.purge_tombstones(now).await.unwrap(), 1);
    assert_eq!(store.get("legacy").await.unwrap(), None);
    assert_eq!(
        store.apply("legacy", old - 1, Change::Upsert(json!("zombie"))).await.unwrap(),
        Applied::BelowWatermark { watermark: old }
    );
    assert_eq!(store.get("legacy-live").await.unwrap().unwrap().value, Some(json!(1)));
}

/// A tombstone rewritten between the purge's query and its delete is left alone (`If-Match` its
/// ETag gets 412): the purge never deletes a write it did not see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_rewritten_during_the_purge_is_kept() {
    let emulator = Emulator::new(false);
    let fast = emulator.store().await;
    let time = ManualClock::starting_now();
    let clock = HybridClock::new(time.clone());
    fast.apply("purged", clock.next(), Change::Delete).await.unwrap();
    fast.apply("rewritten", clock.next(), Change::Delete).await.unwrap();
    let slow_deletes = vec![fault(
        "slow-delete",
        FaultOperationType::DeleteItem,
        FaultInjectionResultBuilder::new().with_delay(Duration::from_millis(300)),
    )];
    let client = emulator.client_with_faults(None, slow_deletes).await;
    let slow = Arc::new(CosmosStore::open(client, DATABASE, CONTAINER, Provisioning::CreateIfMissing).await.unwrap());
    let older_than = time.now().plus(Duration::from_secs(60));
    let purge = {
        let slow = slow.clone();
        tokio::spawn(async move { slow.purge_tombstones(older_than).await })
    };
    // The query and the watermark are done; the deletes are held back.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fast.apply("rewritten", clock.next(), Change::Upsert(json!("back"))).await.unwrap(), Applied::Yes);
    assert_eq!(purge.await.unwrap().unwrap(), 1);
    assert_eq!(fast.get("purged").await.unwrap(), None);
    assert_eq!(fast.get("rewritten").await.unwrap().unwrap().value, Some(json!("back")));
}

#[tokio::test]
async fn probe_write_and_purge_are_unavailable_when_cosmos_is() {
    let emulator = Emulator::new(false);
    emulator.store().await.apply("k", 1, Change::Delete).await.unwrap();
    let rules = vec![
        fault(
            "503-upsert",
            FaultOperationType::UpsertItem,
            FaultInjectionResultBuilder::new().with_error(FaultInjectionErrorType::ServiceUnavailable),
        ),
        fault(
            "503-query",
            FaultOperationType::QueryItem,
            FaultInjectionResultBuilder::new().with_error(FaultInjectionErrorType::ServiceUnavailable),
        ),
    ];
    let client = emulator.client_with_faults(None, rules).await;
    let store = CosmosStore::open(client, DATABASE, CONTAINER, Provisioning::CreateIfMissing).await.unwrap();
    match store.probe_write().await {
        Err(StoreError::Unavailable { message, .. }) => assert!(message.contains("503"), "{message}"),
        other => panic!("a 503 on the probe must be Unavailable, got {other:?}"),
    }
    let now = ManualClock::starting_now().now();
    assert!(store.purge_tombstones(now).await.unwrap_err().is_transient());
    store.ping().await.unwrap();
    assert!(store.get("k").await.unwrap().unwrap().is_deleted(), "nothing was purged");
}

#[tokio::test]
async fn probe_write_is_refused_while_cosmos_throttles() {
    let emulator = Emulator::new(true);
    emulator.precreate_container("/id", Some(400));
    let client = emulator.client(Some(0)).await;
    let store = CosmosStore::open(client, DATABASE, CONTAINER, Provisioning::CreateIfMissing).await.unwrap();
    // The budget is per second, and a request is refused only when its own charge no longer fits:
    // spend it on large writes, then probe until the remainder is too small for a probe.
    exhaust_throughput(&store).await;
    for _ in 0..500 {
        match store.probe_write().await {
            Err(StoreError::Unavailable { message, retry_after, .. }) => {
                assert!(message.contains("429"), "{message}");
                assert!(retry_after.is_some_and(|d| d > Duration::ZERO), "429 carries x-ms-retry-after-ms");
                return;
            }
            Err(other) => panic!("429 must be Unavailable, got {other:?}"),
            Ok(()) => continue,
        }
    }
    panic!("the probe was never throttled");
}

/// An app on a real Redis and the given Cosmos store.
fn app_on(redis: &RedisServer, store: Arc<dyn Store>) -> Application {
    let settings = common::settings(&redis.connection_string(), &[]);
    Application::assemble(settings, Plugs::store(store)).expect("the app wires up")
}

#[tokio::test]
async fn throttling_reaches_the_caller_as_503_with_retry_after() {
    let redis = RedisServer::start();
    let emulator = Emulator::new(true);
    emulator.precreate_container("/id", Some(400));
    let client = emulator.client(Some(0)).await;
    let store = Arc::new(CosmosStore::open(client, DATABASE, CONTAINER, Provisioning::CreateIfMissing).await.unwrap());
    let router = app_on(&redis, store.clone()).router();
    let write_through = FunctionDef::load("WriteThrough");
    for mode in MODES {
        exhaust_throughput(&store).await;
        let reply = host::send(
            &router,
            mode,
            &write_through,
            &Call::new("PUT", Some("throttled")).json(&json!({"big": "y".repeat(64 * 1024)})),
        )
        .await;
        assert_eq!(reply.status, 503, "{mode:?}: {:?}", reply.body);
        assert_eq!(reply.body["error"]["code"], json!("store_unavailable"), "{mode:?}");
        let retry_after: u64 = reply.header("Retry-After").expect("Retry-After").parse().expect("whole seconds");
        assert!(retry_after >= 1, "{mode:?}");
    }
    // Write-through must not have cached what the store refused.
    assert_eq!(redis.command("EXISTS throttled").unwrap().trim(), ":0");
}

#[tokio::test]
async fn cache_aside_and_write_through_over_http_on_cosmos() {
    let redis = RedisServer::start();
    let emulator = Emulator::new(false);
    let store = emulator.store().await;
    let router = app_on(&redis, store.clone()).router();
    let cache_aside = FunctionDef::load("CacheAside");
    let write_through = FunctionDef::load("WriteThrough");
    let health = FunctionDef::load("Health");
    for mode in MODES {
        let probe = host::send(&router, mode, &health, &Call::new("GET", None)).await;
        assert_eq!(probe.status, 200, "{mode:?}: {:?}", probe.body);
        assert_eq!(
            (probe.body["store"]["kind"].clone(), probe.body["store"]["status"].clone()),
            (json!("cosmos"), json!("up"))
        );

        let key = format!("orders/{mode:?}/ü?#1");
        // Write-Through: stored in Cosmos under the original key, then cached.
        let put =
            host::send(&router, mode, &write_through, &Call::new("PUT", Some(&key)).json(&json!({"total": 42}))).await;
        assert_eq!(put.status, 200, "{mode:?}: {:?}", put.body);
        let version = put.body["version"].as_u64().expect("version");
        let record = store.get(&key).await.unwrap().expect("in Cosmos");
        assert_eq!(
            (record.key.as_str(), record.value.clone(), record.version),
            (key.as_str(), Some(json!({"total": 42})), version)
        );
        let hit = host::send(&router, mode, &cache_aside, &Call::new("GET", Some(&key))).await;
        assert_eq!((hit.status, hit.header("x-cache")), (200, Some("hit")), "{mode:?}: {:?}", hit.body);
        assert_eq!(hit.body["value"], json!({"total": 42}));

        // Cache-Aside: a value only Cosmos has is loaded on the first read, then served from Redis.
        let other = format!("{key}-stored-only");
        store.apply(&other, 5, Change::Upsert(json!(["from", "cosmos"]))).await.unwrap();
        let miss = host::send(&router, mode, &cache_aside, &Call::new("GET", Some(&other))).await;
        assert_eq!((miss.status, miss.header("x-cache")), (200, Some("miss")), "{mode:?}: {:?}", miss.body);
        assert_eq!((miss.body["source"].clone(), miss.body["version"].clone()), (json!("store"), json!(5)));
        let again = host::send(&router, mode, &cache_aside, &Call::new("GET", Some(&other))).await;
        assert_eq!(again.header("x-cache"), Some("hit"), "{mode:?}");

        // Delete through Write-Through leaves a tombstone in Cosmos and a 404 for readers.
        let delete = host::send(&router, mode, &write_through, &Call::new("DELETE", Some(&key))).await;
        assert!(delete.status == 200 || delete.status == 204, "{mode:?}: {} {:?}", delete.status, delete.body);
        assert!(store.get(&key).await.unwrap().expect("tombstone").is_deleted());
        let gone = host::send(&router, mode, &cache_aside, &Call::new("GET", Some(&key))).await;
        assert_eq!(gone.status, 404, "{mode:?}: {:?}", gone.body);
    }
}

#[tokio::test]
async fn an_unreachable_account_fails_start_up_with_one_clear_line() {
    let redis = RedisServer::start();
    // Port 9 on loopback: nothing listens, so the connection is refused at once.
    let settings = common::settings(
        &redis.connection_string(),
        &[("CosmosDBConnection", "AccountEndpoint=https://127.0.0.1:9/;AccountKey=c2VjcmV0LWtleQ==;")],
    );
    let started = std::time::Instant::now();
    let err = match Application::build(settings, &cachepatterns::startup::Environment::default()).await {
        Ok(_) => panic!("start-up must fail when the account cannot be reached"),
        Err(e) => cachepatterns::domain::error_chain::Chain(&e).to_string(),
    };
    assert!(err.contains("127.0.0.1:9"), "{err}");
    assert!(!err.contains("c2VjcmV0LWtleQ"), "the key leaked: {err}");
    assert!(!err.contains('\n'), "one line: {err}");
    eprintln!("start-up failed after {:?}: {err}", started.elapsed());
}

/// Log lines written during a test, for checking what the store logs.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

/// The process-wide subscriber, installed once: a thread-local one would miss events, because
/// tracing caches each call site's interest across the threads of concurrently running tests.
fn captured_logs() -> &'static CapturedLogs {
    static LOGS: std::sync::OnceLock<CapturedLogs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CapturedLogs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("cachepatterns::adapters::cosmos=trace")
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber of this test binary");
        logs
    })
}

#[tokio::test]
async fn request_charges_are_logged_per_operation_and_summed_per_call() {
    let logs = captured_logs();
    let emulator = Emulator::new(false);
    let store = emulator.store().await;
    store.apply("charged", 1, Change::Upsert(json!({"n": 1}))).await.unwrap();
    let all = logs.text();
    // Other tests log concurrently; keep the lines about this test's item.
    let text: String = all.lines().filter(|l| l.contains("id=\"charged\"")).map(|l| format!("{l}\n")).collect();
    let per_operation: Vec<&str> = text.lines().filter(|l| l.contains("Cosmos DB request charge ")).collect();
    assert!(
        per_operation
            .iter()
            .any(|l| l.contains("TRACE") && l.contains("operation=\"read\"") && l.contains("status=404")),
        "{text}"
    );
    assert!(per_operation.iter().any(|l| l.contains("operation=\"create\"") && l.contains("status=201")), "{text}");
    let total = text
        .lines()
        .find(|l| l.contains("DEBUG") && l.contains("request charge of the store call") && l.contains("call=\"apply\""))
        .unwrap_or_else(|| panic!("no per-call sum in:\n{text}"));
    // The item's read (404), the tombstone watermark's read (a new key must be above it), the create.
    assert!(total.contains("operations=3"), "{total}");
    let charge: f64 = total
        .split("request_charge=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request_charge in {total}"));
    assert!(charge > 0.0, "{total}");
}
