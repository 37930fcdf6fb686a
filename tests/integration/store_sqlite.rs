//! The store contract against the embedded SQLite store, plus what is SQLite's own.

use crate::common;

use std::sync::Arc;

use cachepatterns::adapters::sqlite::SqliteStore;
use cachepatterns::ports::store::{Applied, Change, Store};
use common::TempDir;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_passes_the_store_contract() {
    let dir = TempDir::new("sqlite-contract");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("nested/folder/store.db")).unwrap());
    common::store_contract::run_all(store, "sqlite").await;
}

#[tokio::test]
async fn data_survives_reopening() {
    let dir = TempDir::new("sqlite-reopen");
    let path = dir.path().join("store.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        store.apply("k", 42, Change::Upsert(json!({"kept": true}))).await.unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let record = store.get("k").await.unwrap().unwrap();
    assert_eq!((record.value, record.version), (Some(json!({"kept": true})), 42));
    assert_eq!(store.apply("k", 41, Change::Delete).await.unwrap(), Applied::Stale { current: 42 });
}

#[tokio::test]
async fn an_unusable_path_is_a_clear_error() {
    let dir = TempDir::new("sqlite-bad");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let err = SqliteStore::open(&file.join("store.db")).unwrap_err().to_string();
    assert!(err.contains("LocalStorePath") || err.contains("cannot open"), "{err}");
}
