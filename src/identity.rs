//! Entra ID credentials for the identity-based settings (`…__clientId`, `…__accountEndpoint`,
//! `…__hostName`, `…__fullyQualifiedNamespace`).
//!
//! In Azure (the platform sets `IDENTITY_ENDPOINT` or `MSI_ENDPOINT`) the app's managed identity is
//! used: the user-assigned one named by the client id, else the system-assigned one. Elsewhere
//! (a laptop running `func start`) the developer tools credential is used, i.e. whoever is signed in
//! with `az login` or `azd auth login`, which is what the Functions host itself does locally.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_identity::{
    DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
};

/// True when running on an Azure host that offers a managed identity endpoint.
pub fn managed_identity_available() -> bool {
    ["IDENTITY_ENDPOINT", "MSI_ENDPOINT"].iter().any(|name| std::env::var_os(name).is_some())
}

/// The credential for an identity-based connection with optional user-assigned `client_id`.
pub fn credential(client_id: Option<&str>) -> azure_core::Result<Arc<dyn TokenCredential>> {
    if managed_identity_available() || client_id.is_some() {
        let options = ManagedIdentityCredentialOptions {
            user_assigned_id: client_id.map(|id| UserAssignedId::ClientId(id.to_string())),
            ..Default::default()
        };
        Ok(ManagedIdentityCredential::new(Some(options))?)
    } else {
        tracing::info!(
            "no managed identity endpoint here: using the developer tools credential (az login / azd auth login)"
        );
        Ok(DeveloperToolsCredential::new(None)?)
    }
}

/// Describes which identity [`credential`] picks, for logs.
pub fn describe(client_id: Option<&str>) -> String {
    match (managed_identity_available() || client_id.is_some(), client_id) {
        (true, Some(id)) => format!("user-assigned managed identity {id}"),
        (true, None) => "system-assigned managed identity".to_string(),
        (false, _) => "developer tools credential (az login)".to_string(),
    }
}
