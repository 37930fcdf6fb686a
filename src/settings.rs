//! App settings, read once at start-up from environment variables.
//!
//! The names are the ones the README lists (`RedisCache`, `CacheTtlSeconds`, …) because on Azure they
//! are Function App application settings and locally they come from `local.settings.json`. A missing
//! or malformed setting is a [`SettingsError`] naming the setting; its message never repeats a secret.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

mod event_hubs;

pub use event_hubs::EventHubSettings;

/// A setting that is missing or cannot be used. `Display` gives one line that names the setting.
#[derive(Debug, thiserror::Error)]
#[error("setting `{name}`: {problem}")]
pub struct SettingsError {
    /// The environment variable at fault.
    pub name: String,
    /// What is wrong with it, in words that never include a secret.
    pub problem: String,
}

impl SettingsError {
    fn new(name: &str, problem: impl Into<String>) -> Self {
        Self { name: name.to_string(), problem: problem.into() }
    }
}

/// Where the Redis connection goes, parsed from `RedisCache`.
#[derive(Clone)]
pub struct RedisTarget {
    /// Host names or addresses, in the order given (the first one is used).
    pub host: String,
    /// TCP port; StackExchange.Redis defaults to 6380 with `ssl=True` and 6379 otherwise.
    pub port: u16,
    /// TLS on (`ssl=True` or `rediss://`).
    pub tls: bool,
    /// ACL user name, if any.
    pub user: Option<String>,
    /// Password or access key. Never printed.
    pub password: Option<String>,
    /// Logical database number (`defaultDatabase=`), 0 by default.
    pub database: i64,
    /// Connect timeout (`connectTimeout=` in ms), 1 s by default.
    pub connect_timeout: Duration,
    /// The longest a Redis call may take, connecting or reconnecting included (`syncTimeout=` /
    /// `asyncTimeout=` in ms), 1 s by default: with Redis hung or unreachable, no request waits
    /// on it much longer than this.
    pub response_timeout: Duration,
    /// Entra ID instead of a password (`RedisCache__hostName`): `Some(client id)` of a user-assigned
    /// identity, or `Some(None)` for the system-assigned one (or `az login` locally).
    pub entra_id: Option<Option<String>>,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl RedisTarget {
    /// A description safe for logs: scheme, host, port, database, never the password.
    pub fn describe(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = match (&self.entra_id, &self.user, &self.password) {
            (Some(_), _, _) => "entra-id@".to_string(),
            (None, Some(user), _) => format!("{user}:***@"),
            (None, None, Some(_)) => "***@".to_string(),
            (None, None, None) => String::new(),
        };
        format!("{scheme}://{auth}{}:{}/{}", self.host, self.port, self.database)
    }

    /// `RedisCache__hostName` (+ `RedisCache__clientId`): Azure Cache for Redis with Entra ID. The host
    /// name may carry a port; TLS on 6380 otherwise, as Azure Cache for Redis serves it.
    pub fn entra_id(host_name: &str, client_id: Option<String>) -> Result<Self, SettingsError> {
        let host_name = host_name.trim();
        if host_name.contains("://") || host_name.contains(',') || host_name.contains('/') {
            return Err(SettingsError::new(
                REDIS_HOST_NAME,
                "must be a host name such as mycache.redis.cache.windows.net (no scheme, no options)",
            ));
        }
        let (host, port) = split_host_port(host_name).map_err(|e| SettingsError::new(REDIS_HOST_NAME, e.problem))?;
        let mut target = Self::defaults(host, port.unwrap_or(6380), true);
        target.entra_id = Some(client_id);
        Ok(target)
    }

    /// Parses `RedisCache`: the StackExchange.Redis form the Azure portal shows
    /// (`host:6380,password=…,ssl=True,abortConnect=False`) or a `redis://` / `rediss://` URL.
    pub fn parse(raw: &str) -> Result<Self, SettingsError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(SettingsError::new(
                REDIS_CACHE,
                "is empty; give host:port[,password=…,ssl=True] or a redis:// URL",
            ));
        }
        let lower = raw.to_ascii_lowercase();
        if lower.starts_with("redis://") || lower.starts_with("rediss://") {
            Self::parse_url(raw)
        } else if lower.contains("://") {
            Err(SettingsError::new(REDIS_CACHE, "has an unknown URL scheme; use redis:// or rediss://"))
        } else {
            Self::parse_stackexchange(raw)
        }
    }

    fn defaults(host: String, port: u16, tls: bool) -> Self {
        Self {
            host,
            port,
            tls,
            user: None,
            password: None,
            database: 0,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            entra_id: None,
        }
    }

    fn parse_stackexchange(raw: &str) -> Result<Self, SettingsError> {
        let mut endpoints = Vec::new();
        let mut options = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                // Only the first `=` splits: passwords and access keys end in `=` padding.
                Some((name, value)) => options.push((name.trim().to_ascii_lowercase(), value.trim().to_string())),
                None => endpoints.push(part.to_string()),
            }
        }
        let mut ssl = false;
        let mut target = Self::defaults(String::new(), 0, false);
        let mut port_given = None;
        for (name, value) in options {
            match name.as_str() {
                "password" => target.password = Some(value).filter(|v| !v.is_empty()),
                "user" | "username" => target.user = Some(value).filter(|v| !v.is_empty()),
                "ssl" | "tls" => {
                    ssl = parse_bool(&value).ok_or_else(|| {
                        SettingsError::new(REDIS_CACHE, format!("option `{name}` must be True or False"))
                    })?
                }
                "defaultdatabase" => {
                    target.database = value.parse().map_err(|_| {
                        SettingsError::new(REDIS_CACHE, "option `defaultDatabase` must be a whole number")
                    })?
                }
                "connecttimeout" => target.connect_timeout = parse_millis(&name, &value)?,
                "synctimeout" | "asynctimeout" => target.response_timeout = parse_millis(&name, &value)?,
                // Options that StackExchange.Redis knows and that mean nothing here (or are the
                // behaviour we always have, like abortConnect=False: start even if Redis is down).
                "abortconnect"
                | "allowadmin"
                | "connectretry"
                | "keepalive"
                | "name"
                | "sslprotocols"
                | "sslhost"
                | "checkcertificaterevocation"
                | "resolvedns"
                | "channelprefix"
                | "proxy"
                | "version"
                | "tiebreaker"
                | "configchannel"
                | "servicename"
                | "setlib"
                | "protocol"
                | "responsetimeout"
                | "configcheckseconds"
                | "highprioritysocketthreads"
                | "writebuffer"
                | "defaultversion"
                | "heartbeatinterval" => {}
                other => return Err(SettingsError::new(REDIS_CACHE, format!("unknown option `{other}`"))),
            }
        }
        let first = endpoints.first().ok_or_else(|| {
            SettingsError::new(
                REDIS_CACHE,
                "names no host; expected host:port first, e.g. myredis.redis.cache.windows.net:6380",
            )
        })?;
        let (host, port) = split_host_port(first)?;
        if let Some(port) = port {
            port_given = Some(port);
        }
        target.host = host;
        target.tls = ssl;
        target.port = port_given.unwrap_or(if ssl { 6380 } else { 6379 });
        Ok(target)
    }

    fn parse_url(raw: &str) -> Result<Self, SettingsError> {
        let (scheme, rest) = raw.split_once("://").unwrap_or(("redis", raw));
        let tls = scheme.eq_ignore_ascii_case("rediss");
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport)?;
        let mut target = Self::defaults(host, port.unwrap_or(6379), tls);
        if let Some(userinfo) = userinfo {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            let user = percent_decode_setting(user)?;
            target.user = Some(user).filter(|u| !u.is_empty());
            target.password = password.map(percent_decode_setting).transpose()?.filter(|p| !p.is_empty());
        }
        let db = path.trim_start_matches('/').split('?').next().unwrap_or("");
        if !db.is_empty() {
            target.database = db.parse().map_err(|_| {
                SettingsError::new(REDIS_CACHE, "URL path must be a database number, e.g. redis://host:6379/0")
            })?;
        }
        Ok(target)
    }
}

fn split_host_port(endpoint: &str) -> Result<(String, Option<u16>), SettingsError> {
    let endpoint = endpoint.trim();
    // [::1]:6379 style IPv6 literals.
    let (host, port) = if let Some(rest) = endpoint.strip_prefix('[') {
        let (host, after) =
            rest.split_once(']').ok_or_else(|| SettingsError::new(REDIS_CACHE, "has an unclosed `[` in the host"))?;
        (host.to_string(), after.strip_prefix(':'))
    } else {
        match endpoint.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (endpoint.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(SettingsError::new(REDIS_CACHE, "names an empty host"));
    }
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| SettingsError::new(REDIS_CACHE, "has a port that is not a number from 1 to 65535"))?,
        ),
        None => None,
    };
    Ok((host, port))
}

fn percent_decode_setting(raw: &str) -> Result<String, SettingsError> {
    crate::protocol::percent_decode(raw)
        .ok_or_else(|| SettingsError::new(REDIS_CACHE, "has a badly percent-encoded user or password in the URL"))
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

fn parse_millis(name: &str, value: &str) -> Result<Duration, SettingsError> {
    value
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| SettingsError::new(REDIS_CACHE, format!("option `{name}` must be a whole number of milliseconds")))
}

const REDIS_CACHE: &str = "RedisCache";
const REDIS_HOST_NAME: &str = "RedisCache__hostName";
const REDIS_CLIENT_ID: &str = "RedisCache__clientId";

/// Which backing store the service uses. Cosmos DB comes with its settings; SQLite is the default.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// The embedded SQLite store at this path.
    Sqlite {
        /// `LocalStorePath`, or its default `.data/store.db`.
        path: PathBuf,
        /// Whether `LocalStorePath` was set (on Azure the default is never used).
        explicit: bool,
    },
    /// Azure Cosmos DB (NoSQL API), chosen whenever a `CosmosDBConnection…` setting is present.
    Cosmos(CosmosSettings),
}

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

    /// Reads the `CosmosDB…` settings; `Ok(None)` when none of the connection settings is present.
    ///
    /// `CosmosDBConnection` (a key connection string) wins over `CosmosDBConnection__accountEndpoint`
    /// (managed identity), as it does for the Functions Cosmos DB extension.
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Option<Self>, SettingsError> {
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
                for name in [COSMOS_DATABASE, COSMOS_CONTAINER] {
                    if get(name).is_some() {
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
        let database = cosmos_name(get, COSMOS_DATABASE, "cachepatterns")?;
        let container = cosmos_name(get, COSMOS_CONTAINER, "items")?;
        Ok(Some(Self { endpoint, auth, database, container, relax_emulator_certificate }))
    }
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

/// Every setting the service reads, with the README's defaults applied.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `RedisCache`.
    pub redis: RedisTarget,
    /// `RedisInstanceName`: prefix of every Redis key the service writes.
    pub instance_name: String,
    /// The backing store.
    pub store: StoreSettings,
    /// The write-behind queue on Event Hubs, when `EventHubConnection__fullyQualifiedNamespace` is set.
    pub event_hubs: Option<EventHubSettings>,
    /// `CacheTtlSeconds`: logical lifetime of a cached value.
    pub cache_ttl: Duration,
    /// `CacheTtlJitterPercent`: each entry lives up to this much longer, so entries written
    /// together do not all expire together.
    pub ttl_jitter_percent: u32,
    /// `NegativeCacheTtlSeconds`: how long "this key does not exist" is remembered.
    pub negative_ttl: Duration,
    /// `RefreshAheadFactor`: fraction of the TTL after which a read schedules a refresh.
    pub refresh_ahead_factor: f64,
    /// `FailSafeMaxStaleSeconds`: how long past its TTL a value may be served while the store fails.
    pub fail_safe_max_stale: Duration,
    /// `FailSafeSoftTimeoutMs`: how long a read waits for the store when a stale value could be
    /// served instead (zero: wait for the store's own timeout).
    pub fail_safe_soft_timeout: Duration,
    /// The refresh-ahead read and timer settings.
    pub refresh_ahead: RefreshAheadSettings,
    /// `MaxValueBytes`: largest accepted value, as serialized JSON.
    pub max_value_bytes: usize,
    /// `WriteBehindRetryWindowSeconds`: how long a queued write that keeps failing transiently (a
    /// full disk, throttling) is retried before it is dead-lettered.
    pub write_behind_retry_window: Duration,
    /// `TombstoneRetentionSeconds`: how long the store keeps the tombstone of a deleted key.
    pub tombstone_retention: Duration,
    /// `FUNCTIONS_CUSTOMHANDLER_PORT`: where the handler listens (127.0.0.1 only).
    pub port: u16,
}

impl Settings {
    /// `FUNCTIONS_CUSTOMHANDLER_PORT` alone (read first: the port is bound before anything else).
    pub fn port_from_env() -> Result<u16, SettingsError> {
        let get = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        number(&get, "FUNCTIONS_CUSTOMHANDLER_PORT", 7071, 1, 65535).map(|p| p as u16)
    }

    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings from a map (tests, or anything else that is not the environment).
    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, SettingsError> {
        Self::from_lookup(|name| map.get(name).cloned())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let redis = match (get(REDIS_CACHE), get(REDIS_HOST_NAME)) {
            (Some(raw), None) => RedisTarget::parse(&raw)?,
            (None, Some(host_name)) => RedisTarget::entra_id(&host_name, get(REDIS_CLIENT_ID))?,
            (Some(_), Some(_)) => {
                return Err(SettingsError::new(
                    REDIS_CACHE,
                    "and RedisCache__hostName are both set; keep RedisCache for a password, or RedisCache__hostName for Entra ID",
                ));
            }
            (None, None) => {
                return Err(SettingsError::new(
                    REDIS_CACHE,
                    "is not set; set it to the connection string the Azure portal shows (host:6380,password=…,ssl=True,abortConnect=False) or to localhost:6379, or set RedisCache__hostName for Entra ID",
                ));
            }
        };
        let instance_name = lookup("RedisInstanceName").unwrap_or_default();
        if instance_name.chars().any(char::is_control) {
            return Err(SettingsError::new("RedisInstanceName", "must not contain control characters"));
        }
        let store = match CosmosSettings::from_lookup(&get)? {
            Some(cosmos) => StoreSettings::Cosmos(cosmos),
            None => {
                let explicit = get("LocalStorePath");
                StoreSettings::Sqlite {
                    path: PathBuf::from(explicit.clone().unwrap_or_else(|| ".data/store.db".to_string())),
                    explicit: explicit.is_some(),
                }
            }
        };
        let event_hubs = EventHubSettings::from_lookup(get)?;
        let cache_ttl = Duration::from_secs(number(&get, "CacheTtlSeconds", 300, 1, 365 * 24 * 3600)?);
        let ttl_jitter_percent = number(&get, "CacheTtlJitterPercent", 10, 0, 100)? as u32;
        let negative_ttl = Duration::from_secs(number(&get, "NegativeCacheTtlSeconds", 30, 0, 24 * 3600)?);
        let fail_safe_max_stale =
            Duration::from_secs(number(&get, "FailSafeMaxStaleSeconds", 3600, 0, 30 * 24 * 3600)?);
        let max_value_bytes = number(&get, "MaxValueBytes", 1_048_576, 1, 512 * 1024 * 1024)? as usize;
        let refresh_ahead_factor = match get("RefreshAheadFactor") {
            None => 0.8,
            Some(raw) => raw.parse::<f64>().ok().filter(|f| (0.0..=1.0).contains(f)).ok_or_else(|| {
                SettingsError::new(
                    "RefreshAheadFactor",
                    format!("must be a number from 0 to 1 (0 turns eager refresh off), got {raw:?}"),
                )
            })?,
        };
        let fail_safe_soft_timeout = Duration::from_millis(number(&get, "FailSafeSoftTimeoutMs", 1000, 0, 60_000)?);
        let refresh_ahead = RefreshAheadSettings::from_lookup(&get)?;
        let write_behind_retry_window =
            Duration::from_secs(number(&get, "WriteBehindRetryWindowSeconds", 3600, 0, 7 * 24 * 3600)?);
        let tombstone_retention =
            Duration::from_secs(number(&get, "TombstoneRetentionSeconds", 30 * 24 * 3600, 86_400, 3650 * 24 * 3600)?);
        // A queued write still being retried must never fall below a purged tombstone's version.
        if tombstone_retention < write_behind_retry_window + Duration::from_secs(86_400) {
            return Err(SettingsError::new(
                "TombstoneRetentionSeconds",
                format!(
                    "must be at least WriteBehindRetryWindowSeconds ({}) plus one day, so that a queued write still being retried is never older than a purged tombstone",
                    write_behind_retry_window.as_secs()
                ),
            ));
        }
        let port = number(&get, "FUNCTIONS_CUSTOMHANDLER_PORT", 7071, 1, 65535)? as u16;
        Ok(Self {
            redis,
            instance_name,
            store,
            event_hubs,
            cache_ttl,
            ttl_jitter_percent,
            negative_ttl,
            refresh_ahead_factor,
            fail_safe_max_stale,
            fail_safe_soft_timeout,
            refresh_ahead,
            max_value_bytes,
            write_behind_retry_window,
            tombstone_retention,
            port,
        })
    }
}

fn number(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, SettingsError> {
    match get(name) {
        None => Ok(default),
        Some(raw) => raw.parse::<u64>().ok().filter(|n| (min..=max).contains(n)).ok_or_else(|| {
            SettingsError::new(name, format!("must be a whole number from {min} to {max}, got {raw:?}"))
        }),
    }
}

/// Settings of the refresh-ahead read (`RefreshAheadRead`) and timer (`RefreshAhead`); see
/// `docs/refresh-ahead.md`.
#[derive(Debug, Clone)]
pub struct RefreshAheadSettings {
    /// `RefreshAheadSchedule`: the timer's NCRONTAB schedule; `function.json` reads the same setting.
    pub schedule: crate::patterns::refresh_ahead::Schedule,
    /// `RefreshAheadHotKeysMax`: most keys the hot-key set keeps (the coldest are trimmed).
    pub hot_keys_max: u64,
    /// `RefreshAheadHotKeysHalfLifeSeconds`: a read counts half as much after this long.
    pub hot_keys_half_life: Duration,
    /// `RefreshAheadHotMinReads`: decayed read count from which a key is hot enough for the timer.
    pub hot_min_reads: f64,
    /// `RefreshAheadTimerMaxKeys`: most (hottest) keys one timer run looks at.
    pub timer_max_keys: u64,
    /// `RefreshAheadTimerParallelism`: store reads one timer run makes at once.
    pub timer_parallelism: usize,
}

impl RefreshAheadSettings {
    /// The default timer schedule (every five minutes, on the minute).
    pub const DEFAULT_SCHEDULE: &'static str = "0 */5 * * * *";

    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let raw = get("RefreshAheadSchedule").unwrap_or_else(|| Self::DEFAULT_SCHEDULE.to_string());
        let schedule = crate::patterns::refresh_ahead::Schedule::parse(&raw)
            .map_err(|problem| SettingsError::new("RefreshAheadSchedule", format!("{problem} (got {raw:?})")))?;
        let hot_min_reads = match get("RefreshAheadHotMinReads") {
            None => 2.0,
            Some(raw) => raw.parse::<f64>().ok().filter(|f| (0.0..=1e6).contains(f)).ok_or_else(|| {
                SettingsError::new(
                    "RefreshAheadHotMinReads",
                    format!("must be a number from 0 to 1000000, got {raw:?}"),
                )
            })?,
        };
        Ok(Self {
            schedule,
            hot_keys_max: number(get, "RefreshAheadHotKeysMax", 10_000, 1, 1_000_000)?,
            hot_keys_half_life: Duration::from_secs(number(
                get,
                "RefreshAheadHotKeysHalfLifeSeconds",
                900,
                1,
                7 * 24 * 3600,
            )?),
            hot_min_reads,
            timer_max_keys: number(get, "RefreshAheadTimerMaxKeys", 1000, 1, 100_000)?,
            timer_parallelism: number(get, "RefreshAheadTimerParallelism", 8, 1, 256)? as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_map(&map)
    }

    #[test]
    fn portal_connection_string_with_base64_password() {
        let t =
            RedisTarget::parse("myredis.redis.cache.windows.net:6380,password=ab+c/d==,ssl=True,abortConnect=False")
                .unwrap();
        assert_eq!(t.host, "myredis.redis.cache.windows.net");
        assert_eq!(t.port, 6380);
        assert!(t.tls);
        assert_eq!(t.password.as_deref(), Some("ab+c/d=="));
    }

    #[test]
    fn option_names_are_case_insensitive_and_ssl_defaults_the_port() {
        let t =
            RedisTarget::parse("cache.example, PASSWORD=x=y ,SSL=true,AbortConnect=false,DefaultDatabase=3").unwrap();
        assert_eq!((t.port, t.tls, t.database), (6380, true, 3));
        assert_eq!(t.password.as_deref(), Some("x=y"));
        let plain = RedisTarget::parse("localhost").unwrap();
        assert_eq!((plain.port, plain.tls), (6379, false));
    }

    #[test]
    fn urls_with_credentials_and_database() {
        let t = RedisTarget::parse("rediss://user:p%40ss@host.example:6390/2").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls, t.database), ("host.example", 6390, true, 2));
        assert_eq!((t.user.as_deref(), t.password.as_deref()), (Some("user"), Some("p@ss")));
        let t = RedisTarget::parse("redis://[::1]:7000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 7000));
    }

    #[test]
    fn errors_name_the_setting_and_never_the_password() {
        for bad in
            ["", "host:notaport,password=s3cret", "host,password=s3cret,bogus=1", "http://host", ",password=s3cret"]
        {
            let err = RedisTarget::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("setting `RedisCache`"), "{err}");
            assert!(!err.contains("s3cret"), "secret leaked: {err}");
        }
        let described = RedisTarget::parse("h:1,password=s3cret").unwrap().describe();
        assert!(!described.contains("s3cret"));
    }

    #[test]
    fn entra_id_by_host_name() {
        let s = settings(&[("RedisCache__hostName", "mycache.redis.cache.windows.net")]).unwrap();
        assert_eq!((s.redis.host.as_str(), s.redis.port, s.redis.tls), ("mycache.redis.cache.windows.net", 6380, true));
        assert_eq!(s.redis.entra_id, Some(None));
        assert!(s.redis.describe().starts_with("rediss://entra-id@"));
        let s = settings(&[("RedisCache__hostName", "c.example:10000"), ("RedisCache__clientId", "abc")]).unwrap();
        assert_eq!((s.redis.port, s.redis.entra_id.clone()), (10000, Some(Some("abc".to_string()))));
        let err = settings(&[("RedisCache__hostName", "rediss://c.example")]).unwrap_err();
        assert_eq!(err.name, "RedisCache__hostName");
        let err = settings(&[("RedisCache__hostName", "c"), ("RedisCache", "localhost")]).unwrap_err();
        assert_eq!(err.name, "RedisCache");
    }

    #[test]
    fn defaults_and_bad_numbers() {
        let s = settings(&[("RedisCache", "localhost:6379")]).unwrap();
        assert_eq!(s.cache_ttl, Duration::from_secs(300));
        assert_eq!(s.ttl_jitter_percent, 10);
        assert_eq!(s.negative_ttl, Duration::from_secs(30));
        assert_eq!(s.fail_safe_max_stale, Duration::from_secs(3600));
        assert_eq!(s.max_value_bytes, 1_048_576);
        assert!((s.refresh_ahead_factor - 0.8).abs() < f64::EPSILON);
        let err = settings(&[("RedisCache", "localhost"), ("CacheTtlSeconds", "ten")]).unwrap_err();
        assert_eq!(err.name, "CacheTtlSeconds");
        let err = settings(&[("RedisCache", "localhost"), ("RefreshAheadFactor", "1.5")]).unwrap_err();
        assert_eq!(err.name, "RefreshAheadFactor");
        assert_eq!(settings(&[]).unwrap_err().name, "RedisCache");
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
    fn no_cosmos_setting_means_sqlite() {
        let s = settings(&[("RedisCache", "localhost"), ("LocalStorePath", "/tmp/x.db")]).unwrap();
        assert!(
            matches!(s.store, StoreSettings::Sqlite { ref path, explicit: true } if path == Path::new("/tmp/x.db"))
        );
        let s = settings(&[("RedisCache", "localhost")]).unwrap();
        assert!(matches!(s.store, StoreSettings::Sqlite { explicit: false, .. }));
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
        let err = cosmos(&[("CosmosDBConnection", EMULATOR), ("CosmosDBContainer", "a/b")]).unwrap_err();
        assert_eq!(err.name, "CosmosDBContainer");
    }

    #[test]
    fn tombstone_retention_outlasts_the_write_behind_retry_window() {
        let s = settings(&[("RedisCache", "localhost")]).unwrap();
        assert_eq!((s.tombstone_retention.as_secs(), s.write_behind_retry_window.as_secs()), (30 * 86_400, 3600));
        let err = settings(&[
            ("RedisCache", "localhost"),
            ("WriteBehindRetryWindowSeconds", "604800"),
            ("TombstoneRetentionSeconds", "604800"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "TombstoneRetentionSeconds");
        let err = settings(&[("RedisCache", "localhost"), ("TombstoneRetentionSeconds", "3600")]).unwrap_err();
        assert_eq!(err.name, "TombstoneRetentionSeconds");
    }

    #[test]
    fn refresh_ahead_settings() {
        let s = settings(&[("RedisCache", "localhost")]).unwrap();
        assert_eq!(s.refresh_ahead.schedule.as_str(), "0 */5 * * * *");
        assert_eq!(s.fail_safe_soft_timeout, Duration::from_millis(1000));
        assert_eq!((s.refresh_ahead.hot_keys_max, s.refresh_ahead.timer_parallelism), (10_000, 8));
        for (name, bad) in [
            ("RefreshAheadSchedule", "every five minutes"),
            ("RefreshAheadHotKeysMax", "0"),
            ("RefreshAheadHotMinReads", "-1"),
            ("RefreshAheadTimerParallelism", "1000"),
            ("FailSafeSoftTimeoutMs", "soon"),
        ] {
            let err = settings(&[("RedisCache", "localhost"), (name, bad)]).unwrap_err();
            assert_eq!(err.name, name, "{err}");
        }
    }
}
