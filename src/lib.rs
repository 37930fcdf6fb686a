//! Redis caching patterns — Cache-Aside, Write-Through, Write-Behind and Refresh-Ahead — served as
//! an Azure Functions custom handler.
//!
//! The layers, outside in (docs/architecture.md):
//! * [`http`]: the host's wire formats, the server, one thin handler per function;
//! * [`patterns`]: the caching logic, one service per pattern, over
//! * [`ports`]: the traits the patterns need (`Cache`, `Store`, `WriteQueue`, `DeadLetters`,
//!   `Leases`, `Clock`), implemented by
//! * [`adapters`]: Redis, SQLite, Cosmos DB, Event Hubs;
//! * [`domain`]: keys, time, versions, entries and events, shared by all;
//! * [`telemetry`]: metrics and traces (OpenTelemetry), recorded by every layer;
//! * [`config`] reads the settings into each component's types, and [`startup`] alone wires
//!   everything together (for `main` and for the tests alike).

pub mod adapters;
pub mod config;
pub mod domain;
pub mod http;
pub mod patterns;
pub mod ports;
pub mod startup;
pub mod telemetry;
