//! The embedded store: one SQLite file at `LocalStorePath`.
//!
//! Versioned writes are a single `INSERT … ON CONFLICT DO UPDATE … WHERE excluded.version >
//! items.version`, so "apply only if newer" is one atomic statement. SQLite calls block, so they run
//! on Tokio's blocking pool behind one connection (SQLite serialises writers anyway).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Applied, Change, Record, Store, StoreError};

/// The SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed, parent folders included) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Rejected(format!("cannot create the folder {} for LocalStorePath: {e}", parent.display()))
            })?;
        }
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Rejected(format!("cannot open the SQLite store at {}: {e}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite_error)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS items (
                 key        TEXT PRIMARY KEY NOT NULL,
                 value      TEXT,
                 version    INTEGER NOT NULL,
                 deleted    INTEGER NOT NULL DEFAULT 0,
                 updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             ) WITHOUT ROWID;",
        )
        .map_err(|e| StoreError::Rejected(format!("cannot prepare the SQLite store at {}: {e}", path.display())))?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), path: path.to_path_buf() })
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let guard = conn
                .lock()
                .map_err(|_| StoreError::unavailable("the SQLite connection was poisoned by an earlier panic"))?;
            f(&guard)
        })
        .await
        .map_err(|e| StoreError::unavailable(format!("the SQLite task failed: {e}")))?
    }
}

fn sqlite_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked, DiskFull, SystemIoFailure};
    match e.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked | SystemIoFailure | DiskFull) => {
            StoreError::unavailable(format!("SQLite: {e}"))
        }
        _ => StoreError::Rejected(format!("SQLite: {e}")),
    }
}

fn to_sql_version(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version)
        .map_err(|_| StoreError::Rejected(format!("version {version} is larger than the store can hold")))
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let key = key.to_string();
        self.with_conn(move |conn| {
            let row = conn
                .query_row("SELECT value, version, deleted FROM items WHERE key = ?1", params![key], |row| {
                    Ok((row.get::<_, Option<String>>(0)?, row.get::<_, i64>(1)?, row.get::<_, bool>(2)?))
                })
                .optional()
                .map_err(sqlite_error)?;
            let Some((text, version, deleted)) = row else { return Ok(None) };
            let value = match (deleted, text) {
                (true, _) | (false, None) => None,
                (false, Some(text)) => Some(
                    serde_json::from_str(&text)
                        .map_err(|e| StoreError::Rejected(format!("stored value of {key:?} is not JSON: {e}")))?,
                ),
            };
            Ok(Some(Record { key, value, version: version as u64 }))
        })
        .await
    }

    async fn apply(&self, key: &str, version: u64, change: Change) -> Result<Applied, StoreError> {
        let key = key.to_string();
        let sql_version = to_sql_version(version)?;
        let (text, deleted) = match change {
            Change::Upsert(value) => (Some(value.to_string()), false),
            Change::Delete => (None, true),
        };
        self.with_conn(move |conn| {
            let changed = conn
                .execute(
                    "INSERT INTO items (key, value, version, deleted, updated_at)
                     VALUES (?1, ?2, ?3, ?4, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
                     ON CONFLICT (key) DO UPDATE SET
                         value = excluded.value, version = excluded.version,
                         deleted = excluded.deleted, updated_at = excluded.updated_at
                     WHERE excluded.version > items.version",
                    params![key, text, sql_version, deleted],
                )
                .map_err(sqlite_error)?;
            if changed == 1 {
                return Ok(Applied::Yes);
            }
            let current: i64 = conn
                .query_row("SELECT version FROM items WHERE key = ?1", params![key], |row| row.get(0))
                .map_err(sqlite_error)?;
            Ok(Applied::Stale { current: current as u64 })
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_conn(|conn| {
            conn.query_row("SELECT count(*) FROM items LIMIT 1", [], |_| Ok(())).map_err(sqlite_error)
        })
        .await
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }
}
