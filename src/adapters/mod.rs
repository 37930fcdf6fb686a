//! The adapters: the ports (`crate::ports`) implemented on real infrastructure. Each knows its own
//! system and nothing of the patterns or of HTTP.
//!
//! * [`redis`]: the cache, the leases, the write-behind stream and the dead letters.
//! * [`sqlite`]: the embedded store (local runs); [`cosmos`]: Azure Cosmos DB.
//! * [`event_hubs`]: the write-behind queue on Azure Event Hubs (cargo feature `eventhubs`).
//! * [`deferred_store`]: a store that connects in the background, and the stand-in for none.
//! * [`identity`]: Entra ID credentials; [`tls`]: the process's TLS provider.

pub mod cosmos;
pub(crate) mod deferred_store;
pub mod event_hubs;
pub mod identity;
pub mod near_cache;
pub mod redis;
pub mod sqlite;
pub mod tls;
