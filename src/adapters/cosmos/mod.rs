//! The Azure Cosmos DB (NoSQL API) store, on `azure_data_cosmos`.
//!
//! One item per key, in a container partitioned on `/id`:
//! `{"id", "key", "value", "version", "deleted", "updatedAt"}`. The id is derived from the key
//! ([`id`] explains the mapping; keys with `/ \ ? #`, non-ASCII or 200+ bytes get a safe id) and the
//! original key is recorded in `key`, which is what [`Store::get`] returns. Deletes write a
//! tombstone (`deleted: true`, `value: null`) that keeps the delete's version, so a late, older
//! write cannot resurrect the key. Items other programs write may hold only `id` and `value` (or
//! `deleted`): without a `version` they read as version 0, older than any write of ours, and
//! [`CosmosChanges`] tells them apart in the change feed (docs/store-changes.md).
//!
//! # Apply only if newer, atomically
//!
//! Optimistic concurrency on the item's ETag: read the item (404 → `create`, which fails with 409
//! if another writer created it first), compare versions (ours not newer → `Stale`), else `replace`
//! with `If-Match: <etag>` (412 if anyone wrote in between). A 409 or 412 means another writer won
//! the race: read again and decide again, at most [`MAX_ATTEMPTS`] times (then `Unavailable`, so
//! the caller retries later). Cosmos serialises writes per item, so the only replace that can
//! succeed is one based on the current state: no lost update, and the highest version wins.
//!
//! Alternatives considered: a *conditional patch* (`filterPredicate: "from c where c.version <
//! @v"`) is one round trip, but patch is behind `unstable_patch` in this SDK ("not
//! production-ready"), cannot create a missing item, and a rejected predicate does not say which
//! version is stored (the contract's `Stale { current }` needs it), so it saves nothing in the cases
//! that matter. A *stored procedure* would be atomic in one call too, but it must be registered with
//! key (control-plane) access that managed-identity deployments do not have, and the SDK has no API
//! to run one. The ETag loop needs only data-plane rights (Cosmos DB Built-in Data Contributor).
//!
//! # Errors and request units
//!
//! 404 on a read is "absent". 429 (after the SDK's own throttling retries), 503, 408, 449, other 5xx,
//! timeouts and transport failures are [`StoreError::Unavailable`] with the service's
//! `x-ms-retry-after-ms` when it sent one (the HTTP layer turns that into `503` + `Retry-After`);
//! everything else is [`StoreError::Rejected`]. Each Cosmos operation's request charge is logged at
//! `trace` and the sum per store call at `debug` (`RUST_LOG=cachepatterns::store::cosmos=trace`).
//!
//! # The store's own items
//!
//! Three ids no key maps to ([`id::is_reserved`]): `~~ping` (read, never written, by
//! [`Store::ping`]), `~~health` (upserted by [`Store::probe_write`]) and `~~tombstone-watermark`.
//! None has `deleted: true` or a `key`, so neither the purge nor [`Store::get`] can take them for a
//! key's record.
//!
//! # Purging tombstones
//!
//! [`Store::purge_tombstones`] removes tombstones whose version was issued before a time, as the
//! SQLite store does, and keeps the same guarantee: a purged key still refuses writes older than
//! its tombstone. The watermark item holds the highest version of any purged tombstone (a decimal
//! string, only ever raised, with `If-Match` on its ETag), and is raised *before* the tombstones
//! are deleted. A write to a key that has no item (the create path of the apply loop) reads the
//! watermark and is `BelowWatermark` unless it is above it. The purge queries
//! `deleted = true` items (narrowed in SQL to versions below the bound, decided exactly in Rust,
//! since versions are strings or, from older releases, numbers), at most [`MAX_PURGE_PER_CALL`] per
//! call, and deletes each with `If-Match` its ETag: a tombstone rewritten meanwhile (412) or
//! already removed by another instance (404) is left alone.

mod changes;
mod id;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::Etag;
use azure_data_cosmos::models::ContainerProperties;
use azure_data_cosmos::options::{
    BinaryEncodingOptions, ConnectionPoolOptions, FeedOptions, ItemWriteOptions, MaxItemCountHint,
    OperationOptionsBuilder, Precondition, QueryOptions, ServerCertificateValidation, ThrottlingRetryOptionsBuilder,
};
use azure_data_cosmos::{
    AccountEndpoint, AccountReference, ContainerClient, CosmosClient, CosmosClientBuilder, CosmosError,
    CosmosRuntimeBuilder, FeedScope, Query, RoutingStrategy,
};
use azure_data_cosmos_driver::error::status_codes;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use changes::CosmosChanges;
pub use id::item_id;

pub use settings::{CosmosAuth, CosmosSettings};

use crate::adapters::identity::Identity;
use crate::domain::error_chain::Chain;
use crate::domain::options::EntryOptions;
use crate::domain::time::Timestamp;
use crate::domain::version::{MAX_VERSION, at, issued_at};
use crate::ports::Clock;
use crate::ports::clock::SystemClock;
use crate::ports::store::{Applied, Change, Record, Store, StoreError};

/// Reads and conditional writes one apply may make before it gives up on a hot key.
pub(crate) const MAX_ATTEMPTS: u32 = 16;
/// Longest a single store call may take, SDK retries included, before it counts as unavailable.
const CALL_DEADLINE: Duration = Duration::from_secs(10);
/// Longest start-up may wait for the account (client, database and container checks).
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// Versions written as JSON numbers by older releases: Cosmos numbers are IEEE doubles, exact only
/// up to 2^53. Versions are written as decimal strings now, which hold every version exactly.
const MAX_EXACT_NUMBER: u64 = (1 << 53) - 1;
/// An id no key maps to (hashed ids are 45 characters), read by [`Store::ping`].
const PING_ID: &str = "~~ping";
/// The item [`Store::probe_write`] upserts; no key maps to it.
const HEALTH_ID: &str = "~~health";
/// The item holding the highest version of any purged tombstone; no key maps to it.
const WATERMARK_ID: &str = "~~tombstone-watermark";
/// Most tombstones one [`Store::purge_tombstones`] call removes; a larger backlog goes over the
/// next calls (the service purges hourly).
pub(crate) const MAX_PURGE_PER_CALL: usize = 10_000;
/// Tombstones deleted under one [`CALL_DEADLINE`].
const PURGE_BATCH: usize = 200;
/// Items per page of the purge query.
const PURGE_PAGE: u32 = 1000;
/// Physical partitions the purge query may fan out to (it has to visit them all).
const PURGE_MAX_FAN_OUT: u32 = 10_000;
/// Point reads one [`Store::get_many`] keeps in flight.
const MAX_CONCURRENT_READS: usize = 16;
/// The partition key path the container must have.
const PARTITION_KEY_PATH: &str = "/id";

/// What start-up may do about a missing database or container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    /// Create them if missing (needs key access: the control plane is not open to Entra ID data roles).
    CreateIfMissing,
    /// Only check that they exist (managed identity).
    MustExist,
}

/// The Cosmos DB-backed [`Store`]. One per process: it holds the process's only Cosmos client.
#[derive(Clone)]
pub struct CosmosStore {
    container: ContainerClient,
    // Kept so the client (and its connection pools) lives exactly as long as the store.
    _client: Arc<CosmosClient>,
    description: String,
}

impl std::fmt::Debug for CosmosStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CosmosStore").field("target", &self.description).finish()
    }
}

impl CosmosStore {
    /// Builds the process's Cosmos client from the settings and opens the container, creating the
    /// database and container when authenticating with a key. Fails when the account cannot be
    /// reached within 30 s; no message contains the key.
    pub async fn connect(settings: &CosmosSettings) -> Result<Self, StoreError> {
        crate::adapters::tls::ensure_crypto_provider();
        let endpoint: AccountEndpoint = settings.endpoint.parse().map_err(|e: CosmosError| {
            StoreError::rejected_because(
                format!("the Cosmos DB account endpoint {} is not usable", settings.endpoint),
                e,
            )
        })?;
        let local_emulator = endpoint
            .url()
            .host_str()
            .is_some_and(|host| matches!(host.to_ascii_lowercase().as_str(), "localhost" | "127.0.0.1" | "[::1]"));
        let (account, provisioning) = match &settings.auth {
            CosmosAuth::Key(key) => (
                AccountReference::with_authentication_key(endpoint, Secret::new(key.clone())),
                Provisioning::CreateIfMissing,
            ),
            CosmosAuth::ManagedIdentity { client_id } => {
                let identity = Identity::for_client_id(client_id.as_deref());
                tracing::info!(identity = %identity.describe(), "Cosmos DB: Entra ID authentication");
                let credential: Arc<dyn TokenCredential> = identity.credential().map_err(|e| {
                    StoreError::rejected_because(
                        format!("cannot prepare the managed identity credential ({})", identity.describe()),
                        e,
                    )
                })?;
                (AccountReference::with_credential(endpoint, credential), Provisioning::MustExist)
            }
        };
        let startup = async {
            let mut builder = CosmosClientBuilder::new().with_default_operation_options(
                OperationOptionsBuilder::new()
                    .with_throttling_retry_options(
                        ThrottlingRetryOptionsBuilder::new()
                            .with_max_retry_count(3)
                            .with_max_retry_wait_time(Duration::from_secs(5))
                            .build(),
                    )
                    .build(),
            );
            if local_emulator {
                // The Linux (vNext) Cosmos DB emulator does not speak the SDK's binary JSON yet.
                builder = builder.with_binary_encoding_options(BinaryEncodingOptions::new().with_enabled(false));
            }
            if settings.relax_emulator_certificate {
                let pool = ConnectionPoolOptions::builder()
                    .with_server_certificate_validation(ServerCertificateValidation::RequiredUnlessEmulator)
                    .build()
                    .map_err(|e| startup_error(settings, e))?;
                let runtime = CosmosRuntimeBuilder::new()
                    .with_connection_pool(pool)
                    .build()
                    .await
                    .map_err(|e| startup_error(settings, e))?;
                builder = builder.with_runtime(runtime);
            }
            // An empty preference list routes by the account's own region order.
            let client = builder
                .build(account, RoutingStrategy::PreferredRegions(Vec::new()))
                .await
                .map_err(|e| startup_error(settings, e))?;
            Self::open(client, &settings.database, &settings.container, provisioning).await
        };
        match tokio::time::timeout(STARTUP_DEADLINE, startup).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::unavailable(format!(
                "the Cosmos DB account at {} did not answer within {} s",
                settings.endpoint,
                STARTUP_DEADLINE.as_secs()
            ))),
        }
    }

    /// Opens `database`/`container` through an existing client (the in-memory emulator's, in
    /// tests), creating them first if `provisioning` says so, and checks the partition key path.
    pub async fn open(
        client: CosmosClient,
        database: &str,
        container: &str,
        provisioning: Provisioning,
    ) -> Result<Self, StoreError> {
        let target = format!("{} database {database:?} container {container:?}", client.endpoint());
        if provisioning == Provisioning::CreateIfMissing {
            match client.create_database(database, None).await {
                Ok(_) => tracing::info!(database, "created the Cosmos DB database"),
                Err(e) if e.status().is_conflict() => {}
                Err(e) => return Err(open_error(&target, "create the database", e)),
            }
            let properties = ContainerProperties::new(container.to_string(), PARTITION_KEY_PATH.into());
            match client.database_client(database).create_container(properties, None).await {
                Ok(_) => tracing::info!(database, container, "created the Cosmos DB container (partition key /id)"),
                Err(e) if e.status().is_conflict() => {}
                Err(e) => return Err(open_error(&target, "create the container", e)),
            }
        } else {
            tracing::info!(
                database,
                container,
                "managed identity: the database and the container (partition key /id) must already exist; \
                 the identity needs the Cosmos DB Built-in Data Contributor role"
            );
        }
        let container_client = client.database_client(database).container_client(container, None).await.map_err(|e| {
            if e.status().status_code() == azure_core::http::StatusCode::NotFound {
                StoreError::rejected(format!(
                    "{target} does not exist; create it with partition key /id (with managed identity the service cannot create it)"
                ))
            } else if e.status().is_forbidden() {
                StoreError::rejected_because(
                    format!(
                        "cannot open {target} (give the identity the Cosmos DB Built-in Data Contributor role on the account)"
                    ),
                    e,
                )
            } else {
                open_error(&target, "open the container", e)
            }
        })?;
        let properties: ContainerProperties = container_client
            .read(None)
            .await
            .and_then(|response| response.into_model())
            .map_err(|e| open_error(&target, "read the container's properties", e))?;
        let paths: Vec<&str> = properties.partition_key.paths().iter().map(|p| p.as_ref()).collect();
        if paths != [PARTITION_KEY_PATH] {
            return Err(StoreError::rejected(format!(
                "{target} is partitioned on {paths:?}; this service needs partition key path /id"
            )));
        }
        Ok(Self { container: container_client, _client: Arc::new(client), description: target })
    }

    /// Endpoint, database and container, for logs.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Reads the item `id`: `None` on 404, else the document and its ETag.
    async fn read<D: DeserializeOwned>(
        &self,
        id: &str,
        charges: &mut Charges<'_>,
    ) -> Result<Option<(D, Etag)>, StoreError> {
        match self.container.read_item(id.to_string(), id, None).await {
            Ok(response) => {
                charges.record("read", response.diagnostics().total_request_charge().value(), 200);
                let etag =
                    response.headers().etag().cloned().ok_or_else(|| {
                        StoreError::rejected(format!("Cosmos DB returned item {id:?} without an ETag"))
                    })?;
                let document: D = response.into_model().map_err(|e| {
                    StoreError::rejected_because(format!("item {id:?} is not a document of this service"), e)
                })?;
                Ok(Some((document, etag)))
            }
            Err(e) if e.status().is_not_found() => {
                charges.record_error("read", &e);
                Ok(None)
            }
            Err(e) => {
                charges.record_error("read", &e);
                Err(store_error("read", e))
            }
        }
    }

    async fn apply_at_most(
        &self,
        document: &NewDocument<'_>,
        charges: &mut Charges<'_>,
    ) -> Result<Applied, StoreError> {
        let id = document.id;
        let mut pauses = contention_pauses();
        for attempt in 1..=MAX_ATTEMPTS {
            if attempt > 2 {
                tokio::time::sleep(pauses.next().unwrap_or_default()).await;
            }
            match self.read::<StoredDocument>(id, charges).await? {
                None => {
                    // No item: the key was never written, or its tombstone was purged. Only writes
                    // above every purged tombstone may create it (the watermark only goes up).
                    let watermark = self.watermark(charges).await?.map_or(0, |(watermark, _)| watermark);
                    if document.version_number <= watermark {
                        return Ok(Applied::BelowWatermark { watermark });
                    }
                    match self.container.create_item(id.to_string(), id, document, None).await {
                        Ok(response) => {
                            charges.record("create", response.diagnostics().total_request_charge().value(), 201);
                            return Ok(Applied::Yes);
                        }
                        // Another writer created it first: read theirs and decide again.
                        Err(e) if e.status().is_conflict() => charges.record_error("create", &e),
                        Err(e) => {
                            charges.record_error("create", &e);
                            return Err(store_error("create", e));
                        }
                    }
                }
                Some((current, etag)) => {
                    current.check_key(id, document.key)?;
                    let stored = current.version()?;
                    if stored >= document.version_number {
                        return Ok(Applied::Stale { current: stored });
                    }
                    let options = ItemWriteOptions::default().with_precondition(Precondition::if_match(etag));
                    match self.container.replace_item(id.to_string(), id, document, Some(options)).await {
                        Ok(response) => {
                            charges.record("replace", response.diagnostics().total_request_charge().value(), 200);
                            return Ok(Applied::Yes);
                        }
                        // 412: someone wrote since our read; 404: someone removed the item by hand.
                        Err(e) if e.status().is_precondition_failed() || e.status().is_not_found() => {
                            charges.record_error("replace", &e)
                        }
                        Err(e) => {
                            charges.record_error("replace", &e);
                            return Err(store_error("replace", e));
                        }
                    }
                }
            }
        }
        Err(StoreError::Unavailable {
            message: format!(
                "Cosmos DB: gave up on item {id:?} after {MAX_ATTEMPTS} attempts lost to concurrent writers"
            ),
            retry_after: Some(Duration::from_millis(100)),
            cause: None,
        })
    }
}

impl CosmosStore {
    /// The tombstone watermark and its item's ETag; `None` while nothing was ever purged.
    async fn watermark(&self, charges: &mut Charges<'_>) -> Result<Option<(u64, Etag)>, StoreError> {
        match self.read::<WatermarkDocument>(WATERMARK_ID, charges).await? {
            None => Ok(None),
            Some((document, etag)) => {
                let watermark = parse_version(&document.watermark).ok_or_else(|| {
                    StoreError::rejected(format!(
                        "the tombstone watermark {} in item {WATERMARK_ID:?} is not a whole number",
                        document.watermark
                    ))
                })?;
                Ok(Some((watermark, etag)))
            }
        }
    }

    /// Raises the watermark to at least `to` (never lowers it), with the same optimistic
    /// concurrency as the apply loop: `create` (409: someone else did) or `replace` with `If-Match`
    /// (412: someone else raised it meanwhile), then read and decide again.
    async fn raise_watermark(&self, to: u64, charges: &mut Charges<'_>) -> Result<(), StoreError> {
        let mut pauses = contention_pauses();
        for attempt in 1..=MAX_ATTEMPTS {
            if attempt > 2 {
                tokio::time::sleep(pauses.next().unwrap_or_default()).await;
            }
            let document = WatermarkDocument { id: WATERMARK_ID.to_string(), watermark: Value::String(to.to_string()) };
            let outcome = match self.watermark(charges).await? {
                Some((current, _)) if current >= to => return Ok(()),
                Some((_, etag)) => {
                    let options = ItemWriteOptions::default().with_precondition(Precondition::if_match(etag));
                    let outcome =
                        self.container.replace_item(WATERMARK_ID, WATERMARK_ID, &document, Some(options)).await;
                    ("replace", 200, outcome)
                }
                None => ("create", 201, self.container.create_item(WATERMARK_ID, WATERMARK_ID, &document, None).await),
            };
            match outcome {
                (operation, status, Ok(response)) => {
                    charges.record(operation, response.diagnostics().total_request_charge().value(), status);
                    return Ok(());
                }
                (operation, _, Err(e))
                    if e.status().is_conflict() || e.status().is_precondition_failed() || e.status().is_not_found() =>
                {
                    charges.record_error(operation, &e)
                }
                (operation, _, Err(e)) => {
                    charges.record_error(operation, &e);
                    return Err(store_error(operation, e));
                }
            }
        }
        Err(StoreError::Unavailable {
            message: format!(
                "Cosmos DB: gave up raising the tombstone watermark after {MAX_ATTEMPTS} attempts lost to concurrent purges"
            ),
            retry_after: Some(Duration::from_millis(100)),
            cause: None,
        })
    }

    /// Up to [`MAX_PURGE_PER_CALL`] tombstones whose version was issued before `older_than`.
    async fn purgeable_tombstones(
        &self,
        older_than: Timestamp,
        charges: &mut Charges<'_>,
    ) -> Result<Vec<PurgeableTombstone>, StoreError> {
        // In SQL, a superset: every version issued before `older_than`, of either layout, is below
        // `at(older_than)`; decimal strings without leading zeros compare as numbers when their
        // lengths are compared first. Numbers (older releases) are all taken and decided in Rust.
        let bound = at(older_than).to_string();
        let query = Query::from(
            "SELECT c.id, c.version, c._etag FROM c WHERE c.deleted = true AND (IS_NUMBER(c.version) OR \
             (IS_STRING(c.version) AND (LENGTH(c.version) < @length OR (LENGTH(c.version) = @length AND c.version < @bound))))",
        )
        .with_parameter("@length", bound.len())
        .and_then(|query| query.with_parameter("@bound", &bound))
        .map_err(|e| StoreError::rejected_because("cannot build the tombstone query", e))?;
        let page_size =
            std::num::NonZeroU32::new(PURGE_PAGE).map_or(MaxItemCountHint::ServerDecides, MaxItemCountHint::Limit);
        let options = QueryOptions::default().with_feed_options(
            FeedOptions::default().with_max_item_count(page_size).with_max_fan_out(PURGE_MAX_FAN_OUT),
        );
        let mut pages =
            match self.container.query_items::<TombstoneRow>(query, FeedScope::full_container(), Some(options)).await {
                Ok(items) => items.into_pages(),
                Err(e) => {
                    charges.record_error("query", &e);
                    return Err(store_error("query", e));
                }
            };
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                charges.record_error("query", &e);
                store_error("query", e)
            })?;
            charges.record("query", page.diagnostics().total_request_charge().value(), 200);
            for row in page.into_items() {
                let Some(version) = parse_version(&row.version) else { continue };
                if id::is_reserved(&row.id) || issued_at(version) >= older_than {
                    continue;
                }
                found.push(PurgeableTombstone { id: row.id, version, etag: Etag::from(row.etag) });
                if found.len() >= MAX_PURGE_PER_CALL {
                    return Ok(found);
                }
            }
        }
        Ok(found)
    }

    /// Deletes one tombstone if it is still the one the query saw: `true` if deleted, `false` if it
    /// was rewritten meanwhile (412) or is gone already (404).
    async fn delete_tombstone(
        &self,
        tombstone: &PurgeableTombstone,
        charges: &mut Charges<'_>,
    ) -> Result<bool, StoreError> {
        let id = tombstone.id.as_str();
        let options = ItemWriteOptions::default().with_precondition(Precondition::if_match(tombstone.etag.clone()));
        match self.container.delete_item(id.to_string(), id, Some(options)).await {
            Ok(response) => {
                charges.record("delete", response.diagnostics().total_request_charge().value(), 204);
                Ok(true)
            }
            Err(e) if e.status().is_precondition_failed() || e.status().is_not_found() => {
                charges.record_error("delete", &e);
                Ok(false)
            }
            Err(e) => {
                charges.record_error("delete", &e);
                Err(store_error("delete", e))
            }
        }
    }
}

/// A tombstone the purge found, with the ETag it had then.
struct PurgeableTombstone {
    id: String,
    version: u64,
    etag: Etag,
}

/// One row of the purge query.
#[derive(Deserialize)]
struct TombstoneRow {
    id: String,
    version: Value,
    #[serde(rename = "_etag")]
    etag: String,
}

/// The tombstone watermark item; Cosmos's own fields are ignored.
#[derive(Serialize, Deserialize)]
struct WatermarkDocument {
    id: String,
    /// A decimal string, like item versions.
    watermark: Value,
}

/// The health probe item [`Store::probe_write`] upserts.
#[derive(Serialize)]
struct ProbeDocument {
    id: &'static str,
    probe: &'static str,
    #[serde(rename = "updatedAt")]
    updated_at: String,
}

/// Short jittered pauses between attempts on a contended item (from 1 ms, doubling to 8 ms), so
/// racing writers spread out.
fn contention_pauses() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(1))
        .with_max_delay(Duration::from_millis(8))
        .with_jitter()
        .without_max_times()
        .build()
}

/// The document as written.
#[derive(Serialize)]
struct NewDocument<'a> {
    id: &'a str,
    key: &'a str,
    value: &'a Value,
    /// A decimal string: Cosmos numbers cannot hold 64-bit versions exactly.
    version: String,
    deleted: bool,
    #[serde(rename = "updatedAt")]
    updated_at: String,
    /// The write's cache tags (docs/invalidation.md); absent when none.
    #[serde(rename = "cacheTags", skip_serializing_if = "Vec::is_empty")]
    cache_tags: Vec<String>,
    /// The write's own cache TTL in seconds; absent when none.
    #[serde(rename = "cacheTtlSeconds", skip_serializing_if = "Option::is_none")]
    cache_ttl_seconds: Option<u64>,
    #[serde(skip)]
    version_number: u64,
}

/// The document as read; Cosmos's own fields (`_etag`, `_ts`, …) are ignored. Items written by
/// other programs may lack everything but `id` and `value` (docs/store-changes.md).
#[derive(Deserialize)]
struct StoredDocument {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Value,
    /// Absent (null) in items other programs wrote: version 0, older than any write of ours.
    #[serde(default)]
    version: Value,
    #[serde(default)]
    deleted: bool,
    #[serde(default, rename = "cacheTags")]
    cache_tags: Vec<String>,
    #[serde(default, rename = "cacheTtlSeconds")]
    cache_ttl_seconds: Option<u64>,
}

/// A stored version: a decimal string (this release), or a number (older releases; accepts
/// `1.0e15`-style numbers that some encodings give back for integers).
fn parse_version(version: &Value) -> Option<u64> {
    match version {
        Value::String(text) => text.trim().parse::<u64>().ok(),
        number => number.as_u64().or_else(|| {
            number.as_f64().filter(|v| v.fract() == 0.0 && *v >= 0.0 && *v <= MAX_EXACT_NUMBER as f64).map(|v| v as u64)
        }),
    }
}

impl StoredDocument {
    /// The stored version (see [`parse_version`]); 0 for an item written without one.
    fn version(&self) -> Result<u64, StoreError> {
        if self.version.is_null() {
            return Ok(0);
        }
        parse_version(&self.version)
            .ok_or_else(|| StoreError::rejected(format!("stored version {} is not a whole number", self.version)))
    }

    /// The key this item stands for: the recorded one, or (for items written by hand without it)
    /// the one the id encodes.
    fn stored_key(&self, id: &str) -> Option<String> {
        self.key.clone().or_else(|| id::key_of(id))
    }

    /// Guards against the (astronomically unlikely) hash collision of two long keys.
    fn check_key(&self, id: &str, key: &str) -> Result<(), StoreError> {
        match self.stored_key(id) {
            Some(stored) if stored == key => Ok(()),
            _ => Err(StoreError::rejected(format!("Cosmos DB item {id:?} belongs to another key"))),
        }
    }

    fn into_record(self, id: &str, key: &str) -> Result<Record, StoreError> {
        self.check_key(id, key)?;
        let version = self.version()?;
        let value = if self.deleted { None } else { Some(self.value) };
        let options = EntryOptions::from_stored(&self.cache_tags, self.cache_ttl_seconds);
        Ok(Record { key: key.to_string(), value, version, options })
    }
}

/// Request units spent by one store call, logged per operation (trace) and in total (debug).
struct Charges<'a> {
    call: &'static str,
    id: &'a str,
    total: f64,
    operations: u32,
}

impl<'a> Charges<'a> {
    fn new(call: &'static str, id: &'a str) -> Self {
        Self { call, id, total: 0.0, operations: 0 }
    }

    fn record(&mut self, operation: &'static str, request_charge: f64, status: u16) {
        self.total += request_charge;
        self.operations += 1;
        crate::telemetry::metrics()
            .cosmos_request_charge
            .add(request_charge, &[opentelemetry::KeyValue::new("db.operation.name", operation)]);
        tracing::trace!(operation, id = self.id, status, request_charge, "Cosmos DB request charge");
    }

    fn record_error(&mut self, operation: &'static str, error: &CosmosError) {
        let charge = error.diagnostics().map(|d| d.total_request_charge().value()).unwrap_or(0.0);
        self.record(operation, charge, u16::from(error.status().status_code()));
    }

    fn finish(&self) {
        tracing::debug!(
            call = self.call,
            id = self.id,
            operations = self.operations,
            request_charge = self.total,
            "Cosmos DB request charge of the store call"
        );
    }
}

/// Runs one store call under [`CALL_DEADLINE`] and logs its request charge.
async fn within_deadline<T>(
    charges: &mut Charges<'_>,
    call: impl AsyncFnOnce(&mut Charges<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let result = match tokio::time::timeout(CALL_DEADLINE, call(charges)).await {
        Ok(result) => result,
        Err(_) => {
            Err(StoreError::unavailable(format!("Cosmos DB did not answer within {} s", CALL_DEADLINE.as_secs())))
        }
    };
    charges.finish();
    result
}

/// Maps an SDK error to the store's: transient conditions are `Unavailable` (with the service's
/// retry hint), the rest `Rejected`. The SDK error is kept as the cause (its own sources carry the
/// root cause: a DNS or connection error says more than "transport failed").
fn store_error(operation: &str, error: CosmosError) -> StoreError {
    let status = error.status();
    let code = u16::from(status.status_code());
    let message = format!("Cosmos DB {operation} failed with status {code}");
    // `is_transient` covers 408/429/449/503, including the SDK's own 503s for transport failures
    // (DNS, connection) and 408s for client-side timeouts.
    let transient = status.is_transient()
        || matches!(code, 500 | 502 | 504)
        || status.is_read_session_not_available()
        // No token yet: the identity endpoint is not answering (yet).
        || status == status_codes::AUTHENTICATION_TOKEN_ACQUISITION_FAILED;
    if transient {
        let retry_after =
            error.response().and_then(|response| response.headers().retry_after_ms).map(Duration::from_millis);
        StoreError::Unavailable { message, retry_after, cause: Some(Arc::new(error)) }
    } else {
        StoreError::rejected_because(message, error)
    }
}

fn startup_error(settings: &CosmosSettings, error: CosmosError) -> StoreError {
    let status = error.status();
    let hint = match settings.auth {
        CosmosAuth::ManagedIdentity { .. } if status.is_unauthorized() || status.is_forbidden() => {
            " (managed identity: the identity needs a token from the platform and the Cosmos DB Built-in Data Contributor role on the account)"
        }
        _ => "",
    };
    store_error("connect", error)
        .with_message(format!("cannot reach the Cosmos DB account at {}{hint}", settings.endpoint))
}

fn open_error(target: &str, action: &str, error: CosmosError) -> StoreError {
    store_error(action, error).with_message(format!("cannot {action} ({target})"))
}

/// When a document was written, for people reading the container.
fn now_rfc3339() -> String {
    SystemClock.now().rfc3339()
}

#[async_trait]
impl Store for CosmosStore {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let id = item_id(key);
        let mut charges = Charges::new("get", &id);
        within_deadline(&mut charges, async |charges| match self.read::<StoredDocument>(&id, charges).await? {
            None => Ok(None),
            Some((document, _)) => document.into_record(&id, key).map(Some),
        })
        .await
    }

    /// Concurrent point reads, at most [`MAX_CONCURRENT_READS`] at a time. `azure_data_cosmos`
    /// 1.0 has no read-many, and a query is the worse tool here: with the container partitioned
    /// on `/id`, the SDK's query planner turns `SELECT * FROM c WHERE c.id IN (…)` into one
    /// request per listed id (a point range each) and drains them one after another, each billed
    /// as a query, where a point read is the cheapest request Cosmos DB has (1 RU for a small
    /// item). Point reads in parallel take about the time of the slowest few, and each checks its
    /// item's key as [`Store::get`] does (they are [`Store::get`]).
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Record>>, StoreError> {
        let reads: Vec<_> = keys.iter().map(|key| self.get(key)).collect();
        futures_util::stream::iter(reads).buffered(MAX_CONCURRENT_READS).try_collect().await
    }

    async fn apply_with(
        &self,
        key: &str,
        version: u64,
        change: Change,
        options: &EntryOptions,
    ) -> Result<Applied, StoreError> {
        if version > MAX_VERSION {
            return Err(StoreError::rejected(format!(
                "version {version} is larger than the stores hold ({MAX_VERSION})"
            )));
        }
        let id = item_id(key);
        let (value, deleted) = match change {
            Change::Upsert(value) => (value, false),
            Change::Delete => (Value::Null, true),
        };
        let document = NewDocument {
            id: &id,
            key,
            value: &value,
            version: version.to_string(),
            version_number: version,
            deleted,
            updated_at: now_rfc3339(),
            cache_tags: options.tag_names(),
            cache_ttl_seconds: options.ttl.map(|t| t.as_secs()),
        };
        let mut charges = Charges::new("apply", &id);
        within_deadline(&mut charges, async |charges| self.apply_at_most(&document, charges).await).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut charges = Charges::new("ping", PING_ID);
        within_deadline(&mut charges, async |charges| self.read::<Value>(PING_ID, charges).await.map(|_| ())).await
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        let mut charges = Charges::new("probe_write", HEALTH_ID);
        within_deadline(&mut charges, async |charges| {
            let document = ProbeDocument { id: HEALTH_ID, probe: "write", updated_at: now_rfc3339() };
            match self.container.upsert_item(HEALTH_ID, HEALTH_ID, &document, None).await {
                Ok(response) => {
                    charges.record("upsert", response.diagnostics().total_request_charge().value(), 200);
                    Ok(())
                }
                Err(e) => {
                    charges.record_error("upsert", &e);
                    Err(store_error("upsert", e))
                }
            }
        })
        .await
    }

    async fn purge_tombstones(&self, older_than: Timestamp) -> Result<u64, StoreError> {
        let mut charges = Charges::new("purge_tombstones", WATERMARK_ID);
        // First the watermark, so that no purged key can take a write older than its tombstone.
        let tombstones = within_deadline(&mut charges, async |charges| {
            let tombstones = self.purgeable_tombstones(older_than, charges).await?;
            if let Some(highest) = tombstones.iter().map(|t| t.version).max() {
                self.raise_watermark(highest, charges).await?;
            }
            Ok(tombstones)
        })
        .await?;
        let mut purged = 0u64;
        for batch in tombstones.chunks(PURGE_BATCH) {
            let mut charges = Charges::new("purge_tombstones", "tombstones");
            purged += within_deadline(&mut charges, async |charges| {
                let mut deleted = 0u64;
                for tombstone in batch {
                    deleted += u64::from(self.delete_tombstone(tombstone, charges).await?);
                }
                Ok(deleted)
            })
            .await
            .inspect_err(
                |e| tracing::warn!(purged, error = %Chain(e), "Cosmos DB: tombstone purge stopped part-way"),
            )?;
        }
        Ok(purged)
    }

    fn kind(&self) -> &'static str {
        "cosmos"
    }
}

#[cfg(test)]
mod tests {
    use azure_core::http::StatusCode;
    use azure_data_cosmos::CosmosStatus;

    use serde_json::json;

    use super::*;

    fn error(status: CosmosStatus) -> CosmosError {
        CosmosError::builder().with_status(status).with_message("test").build()
    }

    #[test]
    fn transient_answers_are_unavailable_and_the_rest_rejected() {
        for status in [
            CosmosStatus::new(StatusCode::TooManyRequests),
            CosmosStatus::new(StatusCode::ServiceUnavailable),
            CosmosStatus::new(StatusCode::RequestTimeout),
            CosmosStatus::new(StatusCode::InternalServerError),
            status_codes::TRANSPORT_CONNECTION_FAILED,
            status_codes::TRANSPORT_DNS_FAILED,
            status_codes::AUTHENTICATION_TOKEN_ACQUISITION_FAILED,
            status_codes::READ_SESSION_NOT_AVAILABLE,
        ] {
            assert!(store_error("read", error(status)).is_transient(), "{status:?}");
        }
        for status in [
            CosmosStatus::new(StatusCode::BadRequest),
            CosmosStatus::new(StatusCode::Unauthorized),
            CosmosStatus::new(StatusCode::Forbidden),
            CosmosStatus::new(StatusCode::PayloadTooLarge),
            status_codes::CLIENT_BAD_REQUEST,
        ] {
            assert!(!store_error("read", error(status)).is_transient(), "{status:?}");
        }
    }

    #[test]
    fn messages_say_what_failed() {
        let message = store_error("replace", error(CosmosStatus::new(StatusCode::TooManyRequests))).to_string();
        assert!(message.contains("Cosmos DB replace") && message.contains("429"), "{message}");
    }

    #[test]
    fn stored_versions_are_decimal_strings_or_whole_numbers() {
        let document = |version: Value| StoredDocument {
            key: None,
            value: Value::Null,
            version,
            deleted: false,
            cache_tags: Vec::new(),
            cache_ttl_seconds: None,
        };
        // This release writes strings, which hold every version exactly.
        assert_eq!(document(json!("9223372036854775807")).version().unwrap(), i64::MAX as u64);
        assert_eq!(document(json!("7")).version().unwrap(), 7);
        // Older releases wrote numbers, which may come back as whole doubles.
        assert_eq!(document(json!(1_800_000_000_000_000u64)).version().unwrap(), 1_800_000_000_000_000);
        assert_eq!(document(json!(1.8e15)).version().unwrap(), 1_800_000_000_000_000);
        assert!(document(json!(1.5)).version().is_err());
        assert!(document(json!("7.5")).version().is_err());
        assert!(document(json!("-1")).version().is_err());
        // Other programs may write items without a version: older than anything of ours.
        assert_eq!(document(Value::Null).version().unwrap(), 0);
    }

    #[test]
    fn items_written_without_a_key_field_fall_back_to_the_id() {
        let document = StoredDocument {
            key: None,
            value: json!(1),
            version: json!(3),
            deleted: false,
            cache_tags: Vec::new(),
            cache_ttl_seconds: None,
        };
        let record = document.into_record("with-id", "with-id").unwrap();
        assert_eq!((record.key.as_str(), record.value, record.version), ("with-id", Some(json!(1)), 3));
        let other = StoredDocument {
            key: Some("a".into()),
            value: json!(1),
            version: json!(3),
            deleted: false,
            cache_tags: Vec::new(),
            cache_ttl_seconds: None,
        };
        assert!(other.into_record("~~hash", "b").is_err(), "a key mismatch must not return another key's value");
    }
}
