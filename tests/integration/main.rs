//! The integration tests, in one binary (one link of the Azure and AMQP stacks instead of one per
//! file). Each module is one area; `common` holds the support they share: real `redis-server`
//! processes (one node or a cluster), the SDK's in-memory Cosmos emulator, host-shaped requests
//! built from the `function.json` files, and stores that fail on demand.
//!
//! `CACHEPATTERNS_TEST_REDIS=cluster` runs the Redis-backed modules against a three-master cluster
//! instead of a single node (`scripts/test.sh` does both).

mod common;

mod architecture;
mod binary;
mod bulk_read;
mod cluster;
mod eventhubs_amqp;
mod hardening;
mod http_api;
mod infra;
mod invalidation;
mod invariants;
mod keys;
mod near_cache;
mod openapi;
mod properties;
mod redis_entra_id;
mod refresh_ahead;
mod run_scripts;
mod scale_out;
mod shutdown;
mod store_changes;
mod store_cosmos;
mod store_sqlite;
mod telemetry;
mod write_behind;
