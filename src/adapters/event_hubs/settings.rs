//! Where write-behind events go when the queue is Event Hubs (parsed from the `EventHubConnection__*`
//! and `EventHubName` settings by `config::event_hubs`).

/// Where write-behind events go when the queue is Event Hubs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHubSettings {
    /// `EventHubConnection__fullyQualifiedNamespace`, e.g. `myns.servicebus.windows.net`.
    pub fully_qualified_namespace: String,
    /// `EventHubConnection__clientId`: the client ID of a user-assigned managed identity. Without it
    /// the handler uses the system-assigned identity on Azure and a developer tool login locally.
    pub client_id: Option<String>,
    /// `EventHubName`, `cache-writes` by default.
    pub event_hub_name: String,
}
