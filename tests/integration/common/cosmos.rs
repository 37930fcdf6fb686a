//! The Cosmos DB store on the SDK's in-memory emulator, for any test that wants to run on Cosmos.
//! The emulator runs the real SDK pipeline (auth, retries, 404/409/412/429) against an in-process
//! account.

use std::sync::Arc;

use azure_core::http::Url;
use azure_data_cosmos::options::{OperationOptionsBuilder, Region, ThrottlingRetryOptionsBuilder};
use azure_data_cosmos::{
    AccountEndpoint, AccountReference, CosmosClient, CosmosClientBuilder, CosmosRuntimeBuilder, RoutingStrategy,
};
use azure_data_cosmos_driver::fault_injection::FaultInjectionRule;
use azure_data_cosmos_driver::in_memory_emulator::{
    ConsistencyLevel, ContainerConfig, EmulatorStore, InMemoryEmulatorHttpClient, VirtualAccountConfig, VirtualRegion,
};
use cachepatterns::adapters::cosmos::{CosmosStore, Provisioning};
use serde_json::json;

pub const GATEWAY: &str = "https://eastus.emulator.local";
pub const DATABASE: &str = "cachepatterns";
pub const CONTAINER: &str = "items";

/// One in-memory Cosmos account.
pub struct Emulator {
    pub http: Arc<InMemoryEmulatorHttpClient>,
}

impl Emulator {
    pub fn new(throttling: bool) -> Self {
        // reqwest is built without a default crypto provider (see Cargo.toml); the binary and
        // `CosmosStore::connect` install `ring`, and so must a test that builds its own client.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let region = VirtualRegion::new("East US", Url::parse(GATEWAY).expect("gateway URL"));
        let config = VirtualAccountConfig::new(vec![region])
            .expect("emulator account")
            .with_consistency(ConsistencyLevel::Session)
            .with_throttling_enabled(throttling);
        Self { http: Arc::new(InMemoryEmulatorHttpClient::new(config)) }
    }

    pub fn account(&self) -> Arc<EmulatorStore> {
        self.http.store()
    }

    /// A client of this account. `throttle_retries: Some(0)` makes the SDK hand back the first 429.
    pub async fn client(&self, throttle_retries: Option<u32>) -> CosmosClient {
        self.client_with_faults(throttle_retries, Vec::new()).await
    }

    /// A client whose requests pass through fault-injection `rules` (delays, injected errors).
    pub async fn client_with_faults(
        &self,
        throttle_retries: Option<u32>,
        rules: Vec<Arc<FaultInjectionRule>>,
    ) -> CosmosClient {
        let account = AccountReference::with_authentication_key(
            GATEWAY.parse::<AccountEndpoint>().expect("endpoint"),
            azure_core::credentials::Secret::new("dGVzdGtleQ=="),
        );
        let driver_runtime = if rules.is_empty() {
            self.http.runtime_builder()
        } else {
            self.http.runtime_builder_with_fault_rules(rules)
        };
        let runtime = CosmosRuntimeBuilder::from(driver_runtime).build().await.expect("emulator runtime");
        let mut builder = CosmosClientBuilder::new().with_runtime(runtime);
        if let Some(retries) = throttle_retries {
            builder = builder.with_default_operation_options(
                OperationOptionsBuilder::new()
                    .with_throttling_retry_options(
                        ThrottlingRetryOptionsBuilder::new().with_max_retry_count(retries).build(),
                    )
                    .build(),
            );
        }
        builder.build(account, RoutingStrategy::ProximityTo(Region::EAST_US)).await.expect("emulator client")
    }

    /// The store on this account, creating the database and container as a key-authenticated
    /// service does at start-up.
    pub async fn store(&self) -> Arc<CosmosStore> {
        let client = self.client(None).await;
        Arc::new(CosmosStore::open(client, DATABASE, CONTAINER, Provisioning::CreateIfMissing).await.expect("open"))
    }

    /// Creates the container directly in the account, partitioned on `path`, with `throughput` RU/s.
    pub fn precreate_container(&self, path: &str, throughput: Option<u64>) {
        let account = self.account();
        account.create_database(DATABASE);
        let mut config = ContainerConfig::new().with_partition_count(1);
        if let Some(ru) = throughput {
            config = config.with_throughput(ru);
        }
        account.create_container_with_config(
            DATABASE,
            CONTAINER,
            serde_json::from_value(json!({"paths": [path], "kind": "Hash", "version": 2})).expect("pk definition"),
            config.build().expect("container config"),
        );
    }
}

/// A fresh Cosmos store on its own in-memory account.
pub async fn in_memory_store() -> Arc<CosmosStore> {
    Emulator::new(false).store().await
}
