//! The store's change feed, as the cache needs it: which key a changed document stands for, and
//! whether this service wrote it (docs/store-changes.md).
//!
//! The Functions host pushes the changed documents to `StoreChanges` in the store's own layout;
//! only the store's adapter knows that layout (how ids encode keys, which fields a write of this
//! service leaves, which items are its own bookkeeping), so it reads them ([`ChangeReader`]) and
//! the patterns see plain [`ChangedItem`]s.

use serde_json::Value;

use crate::domain::key::Key;

/// An item of the store that changed, reduced to what the cache needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedItem {
    /// The cache key whose store read returns this item.
    pub key: Key,
    /// The version the item carries, if it carries one this service can read.
    pub version: Option<u64>,
    /// True when this service wrote the item and nothing suggests another program changed it
    /// since: the write path already brought the cache up to date (or remembered to).
    pub written_by_us: bool,
}

/// What one changed document is, for the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// An item that a cache key reads.
    Item(ChangedItem),
    /// One of the store's own bookkeeping items (health probe, tombstone watermark): no key reads it.
    Bookkeeping,
    /// A document no key reads (no usable id, an id that no key maps to, not an object): why.
    Unusable(String),
}

/// Reads the documents of the store's change feed.
pub trait ChangeReader: Send + Sync + std::fmt::Debug + 'static {
    /// What `document`, as the change feed delivered it (system properties included), is.
    fn read(&self, document: &Value) -> Changed;
}
