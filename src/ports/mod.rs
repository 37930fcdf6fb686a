//! The ports: what the patterns need from the outside world, as traits. The patterns see only
//! these; `adapters` implements them (Redis, SQLite, Cosmos DB, Event Hubs) and `startup` plugs the
//! adapters in.
//!
//! * [`Cache`]: the shared cache of entries, with the atomic "never older" write and the load and
//!   refresh gates (stampede protection).
//! * [`Leases`]: short exclusive leases (a version node id, a timer tick).
//! * [`Store`]: the system of record, with versioned writes; [`ChangeReader`] reads the documents
//!   of its change feed.
//! * [`WriteQueue`] and [`QueueReader`]: the write-behind queue, both ends.
//! * [`DeadLetters`]: writes that could not be applied, kept until someone acts on them.
//! * [`Clock`]: the time.

pub mod budget;
pub mod cache;
pub mod changes;
pub mod clock;
pub mod dead_letters;
pub mod leases;
pub mod queue;
pub mod store;

use std::sync::Arc;

pub use cache::{Cache, CacheError};
pub use changes::ChangeReader;
pub use clock::{Clock, ManualClock, SystemClock};
pub use dead_letters::{DeadLetter, DeadLetters};
pub use leases::{LeaseName, Leases};
pub use queue::{QueueError, QueueReader, WriteQueue};
pub use store::{Store, StoreError};

/// The underlying error behind a port's error, kept as its `source()` for logs; shared so that
/// one failure can be handed to every caller waiting on it.
pub(crate) type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A random token that names the holder of a lock or lease: 128 bits, as hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken(String);

impl LockToken {
    /// A fresh random token.
    pub fn random() -> Self {
        Self(format!("{:032x}", fastrand::u128(..)))
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
