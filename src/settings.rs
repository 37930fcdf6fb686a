//! App settings, read once at start-up from environment variables.
//!
//! The names are the ones DESIGN.md lists (`RedisCache`, `CacheTtlSeconds`, …) because on Azure they
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
    /// Connect timeout (`connectTimeout=` in ms), 5 s by default.
    pub connect_timeout: Duration,
    /// Per-command timeout (`syncTimeout=`/`asyncTimeout=` in ms), 2 s by default.
    pub response_timeout: Duration,
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
        let auth = match (&self.user, &self.password) {
            (Some(user), _) => format!("{user}:***@"),
            (None, Some(_)) => "***@".to_string(),
            (None, None) => String::new(),
        };
        format!("{scheme}://{auth}{}:{}/{}", self.host, self.port, self.database)
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
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(2),
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

/// Which backing store the service uses. Cosmos DB comes with its settings; SQLite is the default.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// The embedded SQLite store at this path.
    Sqlite { path: PathBuf },
}

/// Every setting the service reads, with DESIGN.md's defaults applied.
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
    /// `MaxValueBytes`: largest accepted value, as serialized JSON.
    pub max_value_bytes: usize,
    /// `FUNCTIONS_CUSTOMHANDLER_PORT`: where the handler listens (127.0.0.1 only).
    pub port: u16,
}

impl Settings {
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
        let redis_raw = get(REDIS_CACHE).ok_or_else(|| {
            SettingsError::new(REDIS_CACHE, "is not set; set it to the connection string the Azure portal shows (host:6380,password=…,ssl=True,abortConnect=False) or to localhost:6379")
        })?;
        let redis = RedisTarget::parse(&redis_raw)?;
        let instance_name = lookup("RedisInstanceName").unwrap_or_default();
        if instance_name.chars().any(char::is_control) {
            return Err(SettingsError::new("RedisInstanceName", "must not contain control characters"));
        }
        let store = StoreSettings::Sqlite {
            path: PathBuf::from(get("LocalStorePath").unwrap_or_else(|| ".data/store.db".to_string())),
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
            max_value_bytes,
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

#[cfg(test)]
mod tests {
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
}
