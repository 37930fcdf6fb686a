//! Entra ID credentials for the identity-based settings (`RedisCache__hostName`,
//! `CosmosDBConnection__accountEndpoint`, `EventHubConnection__fullyQualifiedNamespace`, each with
//! an optional `…__clientId`).
//!
//! A client id selects that user-assigned managed identity. Otherwise, in Azure (the platform sets
//! `IDENTITY_ENDPOINT` or `MSI_ENDPOINT`), the system-assigned managed identity; elsewhere (a laptop
//! running `func start`) the developer tools credential: whoever is signed in with `az login` or
//! `azd auth login`.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_identity::{
    DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
};

/// Which identity authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    /// A user-assigned managed identity, by client id.
    UserAssigned(String),
    /// The app's system-assigned managed identity.
    SystemAssigned,
    /// A developer tool's login (Azure CLI, then Azure Developer CLI): local development.
    DeveloperTools,
}

impl Identity {
    /// Picks the identity for `client_id`, given whether a managed identity endpoint exists.
    pub(crate) fn choose(client_id: Option<&str>, managed_identity_endpoint: bool) -> Self {
        match (client_id, managed_identity_endpoint) {
            (Some(id), _) => Self::UserAssigned(id.to_string()),
            (None, true) => Self::SystemAssigned,
            (None, false) => Self::DeveloperTools,
        }
    }

    /// Picks the identity for `client_id` in this process's environment.
    pub(crate) fn for_client_id(client_id: Option<&str>) -> Self {
        Self::choose(client_id, managed_identity_endpoint())
    }

    /// For logs.
    pub fn describe(&self) -> String {
        match self {
            Self::UserAssigned(id) => format!("user-assigned managed identity {id}"),
            Self::SystemAssigned => "system-assigned managed identity".to_string(),
            Self::DeveloperTools => "developer login (Azure CLI / Azure Developer CLI)".to_string(),
        }
    }

    /// The token credential (creating it touches no network; tokens are fetched on first use).
    pub fn credential(&self) -> azure_core::Result<Arc<dyn TokenCredential>> {
        crate::adapters::tls::ensure_crypto_provider();
        Ok(match self {
            Self::UserAssigned(id) => ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: Some(UserAssignedId::ClientId(id.clone())),
                ..Default::default()
            }))?,
            Self::SystemAssigned => ManagedIdentityCredential::new(None)?,
            Self::DeveloperTools => DeveloperToolsCredential::new(None)?,
        })
    }
}

/// True when running on an Azure host that offers a managed identity endpoint.
fn managed_identity_endpoint() -> bool {
    ["IDENTITY_ENDPOINT", "MSI_ENDPOINT"].iter().any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice() {
        assert_eq!(Identity::choose(Some("id"), false), Identity::UserAssigned("id".into()));
        assert_eq!(Identity::choose(Some("id"), true), Identity::UserAssigned("id".into()));
        assert_eq!(Identity::choose(None, true), Identity::SystemAssigned);
        assert_eq!(Identity::choose(None, false), Identity::DeveloperTools);
        for identity in [
            Identity::UserAssigned("0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9".into()),
            Identity::SystemAssigned,
            Identity::DeveloperTools,
        ] {
            identity.credential().expect("creating a credential touches no network");
        }
    }
}
