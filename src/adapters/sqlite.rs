//! The embedded store: one SQLite file at `LocalStorePath` (local runs; on Azure use Cosmos DB).
//!
//! Versioned writes are a single `INSERT … ON CONFLICT DO UPDATE … WHERE excluded.version >
//! items.version`, so "apply only if newer" is one atomic statement. SQLite calls block, so they run
//! on Tokio's blocking pool behind one connection (SQLite serialises writers anyway). Several
//! handler processes on one machine may share the file (WAL mode, a busy timeout).
//!
//! **The file must stay the file.** If `store.db` is deleted or replaced while the handler runs,
//! SQLite keeps writing to the unlinked inode and everything is gone at the next start. Every write
//! therefore first checks that the path still names the file that was opened, and refuses
//! (`Unavailable`, so `503`) when it does not.
//!
//! **Tombstones** (deleted keys) are purged once older than the retention window. A purged key must
//! still refuse writes older than its tombstone (or a late write could bring it back), so the store
//! keeps a watermark, the highest version of any purged tombstone, and a key without a row only
//! accepts versions above it. Versions are issued from the clock, so a new write is always far
//! above the watermark; only writes older than the retention window (a dead letter replayed weeks
//! later) are refused as stale, for keys that have no row.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use crate::domain::options::EntryOptions;
use crate::domain::time::Timestamp;
use crate::domain::version::{OLD_LAYOUT_LIMIT, at};
use crate::ports::store::{Applied, Change, Record, Store, StoreError};

/// Tombstones removed per transaction by a purge.
const PURGE_BATCH: usize = 5_000;
/// Keys per `SELECT … IN (…)` of a bulk read (well below SQLite's limit on bound parameters).
const MAX_KEYS_PER_SELECT: usize = 500;

/// The SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    identity: FileIdentity,
}

/// Which file is open: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self { dev: meta.dev(), ino: meta.ino() })
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

/// Adds the columns that keep a write's cache options (tags joined by U+001F, TTL in seconds) to a
/// store created by an older release.
fn add_option_columns(conn: &Connection) -> rusqlite::Result<()> {
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('items')")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, kind) in [("tags", "TEXT"), ("ttl_s", "INTEGER")] {
        if !columns.iter().any(|c| c == name) {
            conn.execute_batch(&format!("ALTER TABLE items ADD COLUMN {name} {kind}"))?;
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed, parent folders included) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::rejected_because(
                    format!("cannot create the folder {} for LocalStorePath", parent.display()),
                    e,
                )
            })?;
        }
        let conn = Connection::open(path).map_err(|e| {
            StoreError::rejected_because(format!("cannot open the SQLite store at {}", path.display()), e)
        })?;
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
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS meta (
                 name  TEXT PRIMARY KEY NOT NULL,
                 value INTEGER NOT NULL
             ) WITHOUT ROWID;
             INSERT OR IGNORE INTO meta (name, value) VALUES ('tombstone_watermark', 0);
             CREATE INDEX IF NOT EXISTS items_tombstones ON items (version) WHERE deleted = 1;",
        )
        .map_err(|e| {
            StoreError::rejected_because(format!("cannot prepare the SQLite store at {}", path.display()), e)
        })?;
        add_option_columns(&conn).map_err(|e| {
            StoreError::rejected_because(
                format!("cannot add the cache option columns to the SQLite store at {}", path.display()),
                e,
            )
        })?;
        let identity = FileIdentity::of(path).map_err(|e| {
            StoreError::rejected_because(format!("cannot read the SQLite store file at {}", path.display()), e)
        })?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), path: path.to_path_buf(), identity })
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Unavailable` when the path no longer names the file that was opened (deleted, replaced),
    /// or when SQLite's write-ahead log or shared-memory file cannot be written: SQLite maps the
    /// latter into memory, and writing through a mapping of a file that cannot be written kills the
    /// process with `SIGBUS`.
    fn check_file(&self) -> Result<(), StoreError> {
        self.check_companions()?;
        self.check_identity()
    }

    /// The `-wal` and `-shm` part of [`SqliteStore::check_file`]: reads need it too (in WAL mode a
    /// read updates the shared memory).
    fn check_companions(&self) -> Result<(), StoreError> {
        for suffix in ["-wal", "-shm"] {
            let mut companion = self.path.clone().into_os_string();
            companion.push(suffix);
            if let Err(e) = writable(Path::new(&companion)) {
                return Err(StoreError::unavailable_because(
                    format!(
                        "SQLite's {} cannot be written; writes are refused until it can",
                        Path::new(&companion).display()
                    ),
                    e,
                ));
            }
        }
        Ok(())
    }

    fn check_identity(&self) -> Result<(), StoreError> {
        match FileIdentity::of(&self.path) {
            Ok(now) if now == self.identity => Ok(()),
            Ok(_) => Err(StoreError::unavailable(format!(
                "the SQLite file {} was replaced while the handler runs; writes are refused so that none is lost (restart the handler)",
                self.path.display()
            ))),
            Err(e) => Err(StoreError::unavailable_because(
                format!(
                    "the SQLite file {} is gone; writes are refused so that none is lost (restore it, or restart the handler to start empty)",
                    self.path.display()
                ),
                e,
            )),
        }
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
        .map_err(|e| StoreError::unavailable_because("the SQLite task failed", e))?
    }
}

/// Whether this process may write `path` (a missing file is fine: SQLite creates it).
fn writable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return Ok(()) };
    // SAFETY: `access` only reads the NUL-terminated path it is given.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } == 0 {
        return Ok(());
    }
    match std::io::Error::last_os_error() {
        e if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        e => Err(e),
    }
}

fn sqlite_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{CannotOpen, DatabaseBusy, DatabaseLocked, DiskFull, ReadOnly, SystemIoFailure};
    match e.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked | SystemIoFailure | DiskFull | ReadOnly | CannotOpen) => {
            StoreError::unavailable_because("SQLite cannot serve the request now", e)
        }
        _ => StoreError::rejected_because("SQLite refused the request", e),
    }
}

/// The columns of an item that make its [`Record`]: value, version, deleted, tags, TTL.
struct StoredRow {
    text: Option<String>,
    version: i64,
    deleted: bool,
    tags: Option<String>,
    ttl: Option<i64>,
}

impl StoredRow {
    /// Reads `value, version, deleted, tags, ttl_s` from `row`, starting at column `first`.
    fn read(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            text: row.get(first)?,
            version: row.get(first + 1)?,
            deleted: row.get(first + 2)?,
            tags: row.get(first + 3)?,
            ttl: row.get(first + 4)?,
        })
    }

    fn into_record(self, key: String) -> Result<Record, StoreError> {
        let tags: Vec<String> = self.tags.map(|t| t.split('\u{1f}').map(str::to_string).collect()).unwrap_or_default();
        let options = EntryOptions::from_stored(&tags, self.ttl.and_then(|t| u64::try_from(t).ok()));
        let value = match (self.deleted, self.text) {
            (true, _) | (false, None) => None,
            (false, Some(text)) => Some(
                serde_json::from_str(&text)
                    .map_err(|e| StoreError::rejected_because(format!("stored value of {key:?} is not JSON"), e))?,
            ),
        };
        Ok(Record { key, value, version: self.version as u64, options })
    }
}

fn to_sql_version(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version)
        .map_err(|_| StoreError::rejected(format!("version {version} is larger than the store can hold")))
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.check_companions()?;
        let key = key.to_string();
        self.with_conn(move |conn| {
            let row = conn
                .query_row(
                    "SELECT value, version, deleted, tags, ttl_s FROM items WHERE key = ?1",
                    params![key],
                    |row| StoredRow::read(row, 0),
                )
                .optional()
                .map_err(sqlite_error)?;
            row.map(|row| row.into_record(key)).transpose()
        })
        .await
    }

    /// One `SELECT … WHERE key IN (…)` per [`MAX_KEYS_PER_SELECT`] keys, all on the connection at
    /// once (one blocking task).
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Record>>, StoreError> {
        self.check_companions()?;
        let keys = keys.to_vec();
        self.with_conn(move |conn| {
            let mut found: HashMap<String, Record> = HashMap::with_capacity(keys.len());
            for chunk in keys.chunks(MAX_KEYS_PER_SELECT) {
                let placeholders = vec!["?"; chunk.len()].join(", ");
                let mut select = conn
                    .prepare(&format!(
                        "SELECT key, value, version, deleted, tags, ttl_s FROM items WHERE key IN ({placeholders})"
                    ))
                    .map_err(sqlite_error)?;
                let rows = select
                    .query_map(params_from_iter(chunk), |row| Ok((row.get::<_, String>(0)?, StoredRow::read(row, 1)?)))
                    .map_err(sqlite_error)?;
                for row in rows {
                    let (key, row) = row.map_err(sqlite_error)?;
                    let record = row.into_record(key.clone())?;
                    found.insert(key, record);
                }
            }
            Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
        })
        .await
    }

    async fn apply_with(
        &self,
        key: &str,
        version: u64,
        change: Change,
        options: &EntryOptions,
    ) -> Result<Applied, StoreError> {
        self.check_file()?;
        let tags = (!options.tags.is_empty()).then(|| options.tag_names().join("\u{1f}"));
        let ttl = options.ttl.map(|t| t.as_secs() as i64);
        let key = key.to_string();
        let sql_version = to_sql_version(version)?;
        let (text, deleted) = match change {
            Change::Upsert(value) => (Some(value.to_string()), false),
            Change::Delete => (None, true),
        };
        self.with_conn(move |conn| {
            // A new row only above the watermark of purged tombstones; an existing one only if newer.
            let changed = conn
                .execute(
                    "INSERT INTO items (key, value, version, deleted, updated_at, tags, ttl_s)
                     SELECT ?1, ?2, ?3, ?4, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?5, ?6
                     WHERE ?3 > (SELECT value FROM meta WHERE name = 'tombstone_watermark')
                        OR EXISTS (SELECT 1 FROM items WHERE key = ?1)
                     ON CONFLICT (key) DO UPDATE SET
                         value = excluded.value, version = excluded.version,
                         deleted = excluded.deleted, updated_at = excluded.updated_at,
                         tags = excluded.tags, ttl_s = excluded.ttl_s
                     WHERE excluded.version > items.version",
                    params![key, text, sql_version, deleted, tags, ttl],
                )
                .map_err(sqlite_error)?;
            if changed == 1 {
                return Ok(Applied::Yes);
            }
            let current: Option<i64> = conn
                .query_row("SELECT version FROM items WHERE key = ?1", params![key], |row| row.get(0))
                .optional()
                .map_err(sqlite_error)?;
            match current {
                Some(current) => Ok(Applied::Stale { current: current as u64 }),
                None => {
                    let watermark: i64 = conn
                        .query_row("SELECT value FROM meta WHERE name = 'tombstone_watermark'", [], |row| row.get(0))
                        .map_err(sqlite_error)?;
                    Ok(Applied::BelowWatermark { watermark: watermark as u64 })
                }
            }
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_conn(|conn| {
            conn.query_row("SELECT count(*) FROM items LIMIT 1", [], |_| Ok(())).map_err(sqlite_error)
        })
        .await
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        self.check_file()?;
        self.with_conn(|conn| {
            conn.execute(
                "INSERT INTO meta (name, value) VALUES ('health_probe', 1)
                 ON CONFLICT (name) DO UPDATE SET value = value + 1",
                [],
            )
            .map(|_| ())
            .map_err(sqlite_error)
        })
        .await
    }

    async fn purge_tombstones(&self, older_than: Timestamp) -> Result<u64, StoreError> {
        self.check_file()?;
        // Versions of the older layout are microseconds; this layout's are `at(t)`.
        let (old_layout_before, new_layout_before) =
            (older_than.as_micros().min(OLD_LAYOUT_LIMIT) as i64, to_sql_version(at(older_than))?);
        // In batches, each its own transaction, so a large backlog never holds the store long.
        let mut purged = 0;
        loop {
            let batch = self
                .with_conn(move |conn| {
                    let tx = conn.unchecked_transaction().map_err(sqlite_error)?;
                    let which = "deleted = 1 AND ((version < ?1 AND version < ?3) OR (version >= ?1 AND version < ?2))";
                    let params = params![OLD_LAYOUT_LIMIT as i64, new_layout_before, old_layout_before];
                    let keys: Vec<(String, i64)> = {
                        let mut query = tx
                            .prepare(&format!("SELECT key, version FROM items WHERE {which} LIMIT {PURGE_BATCH}"))
                            .map_err(sqlite_error)?;
                        query
                            .query_map(params, |row| Ok((row.get(0)?, row.get(1)?)))
                            .map_err(sqlite_error)?
                            .collect::<Result<_, _>>()
                            .map_err(sqlite_error)?
                    };
                    let Some(highest) = keys.iter().map(|(_, version)| *version).max() else { return Ok(0) };
                    tx.execute(
                        "UPDATE meta SET value = max(value, ?1) WHERE name = 'tombstone_watermark'",
                        params![highest],
                    )
                    .map_err(sqlite_error)?;
                    let mut delete = tx
                        .prepare("DELETE FROM items WHERE key = ?1 AND deleted = 1 AND version = ?2")
                        .map_err(sqlite_error)?;
                    let mut deleted = 0;
                    for (key, version) in &keys {
                        deleted += delete.execute(params![key, version]).map_err(sqlite_error)?;
                    }
                    drop(delete);
                    tx.commit().map_err(sqlite_error)?;
                    Ok(deleted as u64)
                })
                .await?;
            purged += batch;
            if batch < PURGE_BATCH as u64 {
                return Ok(purged);
            }
        }
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }
}
