//! Where the Cosmos DB store lives and how it authenticates (parsed from the `CosmosDB…` settings
//! by `config::cosmos`).

use std::fmt;

/// Where the Cosmos DB store lives and how to authenticate, from the `CosmosDB…` settings.
#[derive(Clone)]
pub struct CosmosSettings {
    /// The account endpoint, e.g. `https://myaccount.documents.azure.com:443/`.
    pub endpoint: String,
    /// Account key or managed identity.
    pub auth: CosmosAuth,
    /// `CosmosDBDatabase`.
    pub database: String,
    /// `CosmosDBContainer`; its partition key path is `/id`.
    pub container: String,
    /// `DisableServerCertificateValidation=True` in the connection string: accept the local Cosmos
    /// DB emulator's self-signed certificate (honoured for emulator hosts only, e.g. localhost).
    pub relax_emulator_certificate: bool,
}

/// How the service authenticates to Cosmos DB.
#[derive(Clone, PartialEq, Eq)]
pub enum CosmosAuth {
    /// `AccountKey=` of `CosmosDBConnection` (base64). Never printed.
    Key(String),
    /// Entra ID through a managed identity: the system-assigned one, or the user-assigned one
    /// with this client id (`CosmosDBConnection__clientId`).
    ManagedIdentity {
        /// Client id of a user-assigned identity.
        client_id: Option<String>,
    },
}

impl fmt::Debug for CosmosSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CosmosSettings")
            .field("endpoint", &self.endpoint)
            .field("auth", &self.auth)
            .field("database", &self.database)
            .field("container", &self.container)
            .field("relax_emulator_certificate", &self.relax_emulator_certificate)
            .finish()
    }
}

impl fmt::Debug for CosmosAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(_) => write!(f, "AccountKey(***)"),
            Self::ManagedIdentity { client_id: None } => write!(f, "ManagedIdentity(system-assigned)"),
            Self::ManagedIdentity { client_id: Some(id) } => write!(f, "ManagedIdentity(client id {id})"),
        }
    }
}

impl CosmosSettings {
    /// A description safe for logs: endpoint, database, container and the kind of credential.
    pub fn describe(&self) -> String {
        let auth = match &self.auth {
            CosmosAuth::Key(_) => "account key",
            CosmosAuth::ManagedIdentity { client_id: None } => "system-assigned managed identity",
            CosmosAuth::ManagedIdentity { client_id: Some(_) } => "user-assigned managed identity",
        };
        format!("{} database {:?} container {:?} ({auth})", self.endpoint, self.database, self.container)
    }
}
