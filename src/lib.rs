//! Redis caching patterns — Cache-Aside, Write-Through, Write-Behind and Refresh-Ahead — served as
//! an Azure Functions custom handler.
//!
//! Layers, from the wire inwards:
//! * [`server`] routes the host's requests; [`protocol`] decodes the host's two wire formats
//!   (forwarded HTTP and JSON invocation envelopes) into one [`protocol::HttpCall`].
//! * [`api`] holds the thin function handlers: request in, pattern call, reply out.
//! * [`patterns`] holds the caching logic, one module per pattern, over
//! * [`cache`] (Redis) and [`store`] (the system of record: SQLite or Cosmos DB).
//! * [`settings`] reads the app settings; [`version`] issues write versions; [`key`] validates keys.

pub mod api;
pub mod app;
pub mod cache;
pub mod clock;
pub mod fatal_signals;
pub mod identity;
pub mod key;
pub mod patterns;
pub mod protocol;
pub mod queue;
pub mod server;
pub mod settings;
pub mod store;
pub mod tls;
pub mod version;
