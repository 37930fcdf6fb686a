//! `CosmosDBConnection` (a key connection string) or `CosmosDBConnection__accountEndpoint` (+
//! `__clientId`, managed identity), `CosmosDBDatabase` and `CosmosDBContainer`, parsed into
//! [`CosmosSettings`].

use super::{SettingsError, parse_bool};
use crate::adapters::cosmos::{CosmosAuth, CosmosSettings};

/// Reads the `CosmosDB…` settings; `Ok(None)` when none of the connection settings is present.
///
/// `CosmosDBConnection` (a key connection string) wins over `CosmosDBConnection__accountEndpoint`
/// (managed identity), as it does for the Functions Cosmos DB extension.
pub(crate) fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Option<CosmosSettings>, SettingsError> {
    let connection = get(COSMOS_CONNECTION);
    let identity_endpoint = get(COSMOS_IDENTITY_ENDPOINT);
    let client_id = get(COSMOS_CLIENT_ID);
    let (endpoint, auth, relax_emulator_certificate) = match (connection, identity_endpoint) {
        (Some(raw), _) => {
            let parsed = parse_cosmos_connection(&raw)?;
            (parsed.endpoint, CosmosAuth::Key(parsed.key), parsed.relax_emulator_certificate)
        }
        (None, Some(endpoint)) => {
            let endpoint = check_cosmos_endpoint(COSMOS_IDENTITY_ENDPOINT, &endpoint)?;
            (endpoint, CosmosAuth::ManagedIdentity { client_id }, false)
        }
        (None, None) if client_id.is_some() => {
            return Err(SettingsError::new(
                COSMOS_IDENTITY_ENDPOINT,
                "is not set, but CosmosDBConnection__clientId is; set it to the account endpoint (https://<account>.documents.azure.com:443/)",
            ));
        }
        (None, None) => {
            // The default names may be set without a connection: they change nothing, and
            // `StoreChanges/function.json` needs them resolved even where that function is
            // disabled (local.settings.json, on the embedded store).
            for (name, default) in [(COSMOS_DATABASE, DEFAULT_DATABASE), (COSMOS_CONTAINER, DEFAULT_CONTAINER)] {
                if get(name).is_some_and(|value| value != default) {
                    return Err(SettingsError::new(
                        COSMOS_CONNECTION,
                        format!(
                            "is not set, but {name} is; set CosmosDBConnection (AccountEndpoint=…;AccountKey=…;) or CosmosDBConnection__accountEndpoint, or remove {name} to use the embedded store"
                        ),
                    ));
                }
            }
            return Ok(None);
        }
    };
    let database = cosmos_name(get, COSMOS_DATABASE, DEFAULT_DATABASE)?;
    let container = cosmos_name(get, COSMOS_CONTAINER, DEFAULT_CONTAINER)?;
    Ok(Some(CosmosSettings { endpoint, auth, database, container, relax_emulator_certificate }))
}

struct CosmosConnection {
    endpoint: String,
    key: String,
    relax_emulator_certificate: bool,
}

/// Parses `AccountEndpoint=…;AccountKey=…;` (option names case-insensitive, values split at the
/// first `=` only because base64 keys end in `=` padding). Errors never repeat the key.
fn parse_cosmos_connection(raw: &str) -> Result<CosmosConnection, SettingsError> {
    let mut endpoint = None;
    let mut key = None;
    let mut relax_emulator_certificate = false;
    for part in raw.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            return Err(SettingsError::new(
                COSMOS_CONNECTION,
                "must be a list of Name=Value pairs separated by `;` (AccountEndpoint=…;AccountKey=…;)",
            ));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "accountendpoint" => endpoint = Some(value.to_string()),
            "accountkey" => key = Some(value.to_string()),
            "disableservercertificatevalidation" => {
                relax_emulator_certificate = parse_bool(value).ok_or_else(|| {
                    SettingsError::new(
                        COSMOS_CONNECTION,
                        "option `DisableServerCertificateValidation` must be True or False",
                    )
                })?
            }
            other => {
                return Err(SettingsError::new(
                    COSMOS_CONNECTION,
                    format!("has an unknown option `{other}`; expected AccountEndpoint and AccountKey"),
                ));
            }
        }
    }
    let endpoint = endpoint.filter(|e| !e.is_empty()).ok_or_else(|| {
        SettingsError::new(COSMOS_CONNECTION, "has no AccountEndpoint (expected AccountEndpoint=https://<account>.documents.azure.com:443/;AccountKey=…;)")
    })?;
    let endpoint = check_cosmos_endpoint(COSMOS_CONNECTION, &endpoint)?;
    let key = key.filter(|k| !k.is_empty()).ok_or_else(|| {
        SettingsError::new(
            COSMOS_CONNECTION,
            "has no AccountKey; give the key connection string the portal shows, or use CosmosDBConnection__accountEndpoint for managed identity",
        )
    })?;
    use base64::Engine as _;
    if base64::engine::general_purpose::STANDARD.decode(&key).is_err() {
        return Err(SettingsError::new(COSMOS_CONNECTION, "has an AccountKey that is not valid base64"));
    }
    Ok(CosmosConnection { endpoint, key, relax_emulator_certificate })
}

/// An absolute `https://` (or, for the local emulator, `http://`) URL with a host.
fn check_cosmos_endpoint(setting: &str, raw: &str) -> Result<String, SettingsError> {
    let lower = raw.to_ascii_lowercase();
    let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', ':', '?']).next().unwrap_or(""));
    match host {
        Some(host) if !host.is_empty() && !raw.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            Ok(raw.to_string())
        }
        _ => Err(SettingsError::new(
            setting,
            "has an account endpoint that is not an https:// URL (expected https://<account>.documents.azure.com:443/)",
        )),
    }
}

/// Database and container ids: 1–255 characters, none of `/ \ ? #`.
fn cosmos_name(get: &impl Fn(&str) -> Option<String>, name: &str, default: &str) -> Result<String, SettingsError> {
    let value = get(name).unwrap_or_else(|| default.to_string());
    if value.len() > 255 || value.chars().any(|c| matches!(c, '/' | '\\' | '?' | '#') || c.is_control()) {
        return Err(SettingsError::new(
            name,
            format!("{value:?} is not a valid Cosmos DB id (at most 255 characters, none of / \\ ? #)"),
        ));
    }
    Ok(value)
}

const COSMOS_CONNECTION: &str = "CosmosDBConnection";
const COSMOS_IDENTITY_ENDPOINT: &str = "CosmosDBConnection__accountEndpoint";
const COSMOS_CLIENT_ID: &str = "CosmosDBConnection__clientId";
const COSMOS_DATABASE: &str = "CosmosDBDatabase";
const COSMOS_CONTAINER: &str = "CosmosDBContainer";
const DEFAULT_DATABASE: &str = "cachepatterns";
const DEFAULT_CONTAINER: &str = "items";

#[cfg(test)]
mod tests {
    use super::super::{Settings, StoreSettings};
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_map(&map)
    }

    const EMULATOR: &str = "AccountEndpoint=https://localhost:8081/;AccountKey=C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==;";

    fn cosmos(pairs: &[(&str, &str)]) -> Result<CosmosSettings, SettingsError> {
        let mut all = vec![("RedisCache", "localhost")];
        all.extend_from_slice(pairs);
        match settings(&all)?.store {
            StoreSettings::Cosmos(cosmos) => Ok(cosmos),
            other => panic!("expected the Cosmos store, got {other:?}"),
        }
    }

    #[test]
    fn emulator_connection_string_with_defaults() {
        let c = cosmos(&[("CosmosDBConnection", EMULATOR)]).unwrap();
        assert_eq!(c.endpoint, "https://localhost:8081/");
        assert_eq!(
            c.auth,
            CosmosAuth::Key(
                "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==".into()
            )
        );
        assert_eq!((c.database.as_str(), c.container.as_str()), ("cachepatterns", "items"));
        assert!(!c.relax_emulator_certificate);
        assert!(!format!("{c:?}").contains("C2y6yDjf5"), "Debug must not print the key");
        assert!(!c.describe().contains("C2y6yDjf5"));
    }

    #[test]
    fn portal_connection_string_any_case_and_names() {
        let c = cosmos(&[
            ("CosmosDBConnection", " accountendpoint=https://acct.documents.azure.com:443/ ; ACCOUNTKEY=a2V5PT0=; DisableServerCertificateValidation=True"),
            ("CosmosDBDatabase", "db1"),
            ("CosmosDBContainer", "c1"),
        ])
        .unwrap();
        assert_eq!(c.endpoint, "https://acct.documents.azure.com:443/");
        assert_eq!(c.auth, CosmosAuth::Key("a2V5PT0=".into()));
        assert_eq!((c.database.as_str(), c.container.as_str()), ("db1", "c1"));
        assert!(c.relax_emulator_certificate);
    }

    #[test]
    fn managed_identity_settings() {
        let c = cosmos(&[("CosmosDBConnection__accountEndpoint", "https://acct.documents.azure.com:443/")]).unwrap();
        assert_eq!(c.auth, CosmosAuth::ManagedIdentity { client_id: None });
        let c = cosmos(&[
            ("CosmosDBConnection__accountEndpoint", "https://acct.documents.azure.com:443/"),
            ("CosmosDBConnection__clientId", "00000000-1111-2222-3333-444444444444"),
        ])
        .unwrap();
        assert_eq!(
            c.auth,
            CosmosAuth::ManagedIdentity { client_id: Some("00000000-1111-2222-3333-444444444444".into()) }
        );
        // The key connection string wins when both are present.
        let c =
            cosmos(&[("CosmosDBConnection", EMULATOR), ("CosmosDBConnection__accountEndpoint", "https://x/")]).unwrap();
        assert!(matches!(c.auth, CosmosAuth::Key(_)));
    }

    #[test]
    fn default_names_without_a_connection_keep_the_embedded_store() {
        // As local.settings.json sets them, for StoreChanges/function.json.
        let local = settings(&[
            ("RedisCache", "localhost"),
            ("CosmosDBDatabase", "cachepatterns"),
            ("CosmosDBContainer", "items"),
        ])
        .unwrap();
        assert!(matches!(local.store, StoreSettings::Sqlite { .. }), "{:?}", local.store);
    }

    #[test]
    fn cosmos_errors_name_the_setting_and_never_the_key() {
        let secret = "c2VjcmV0LWtleQ==";
        let bad_connections = [
            format!("AccountKey={secret}"),
            format!("AccountEndpoint=ftp://acct;AccountKey={secret}"),
            format!("AccountEndpoint=https://acct.documents.azure.com/;AccountKey={secret};Bogus=1"),
            format!("AccountEndpoint=https://acct.documents.azure.com/;{secret}"),
            "AccountEndpoint=https://acct.documents.azure.com/;AccountKey=not base64 s3cret!".to_string(),
            "AccountEndpoint=https://acct.documents.azure.com/".to_string(),
        ];
        for bad in &bad_connections {
            let err = cosmos(&[("CosmosDBConnection", bad)]).unwrap_err();
            assert_eq!(err.name, "CosmosDBConnection", "{err}");
            let text = err.to_string();
            assert!(!text.contains(secret) && !text.contains("s3cret"), "secret leaked: {text}");
        }
        let err = cosmos(&[("CosmosDBConnection__clientId", "abc")]).unwrap_err();
        assert_eq!(err.name, "CosmosDBConnection__accountEndpoint");
        let err = cosmos(&[("CosmosDBConnection__accountEndpoint", "acct.documents.azure.com")]).unwrap_err();
        assert_eq!(err.name, "CosmosDBConnection__accountEndpoint");
        let err = cosmos(&[("CosmosDBDatabase", "db")]).unwrap_err();
        assert_eq!(err.name, "CosmosDBConnection");
        let err = cosmos(&[("CosmosDBContainer", "things")]).unwrap_err();
        assert_eq!(err.name, "CosmosDBConnection");
        let err = cosmos(&[("CosmosDBConnection", EMULATOR), ("CosmosDBContainer", "a/b")]).unwrap_err();
        assert_eq!(err.name, "CosmosDBContainer");
    }
}
