//! `RedisCache` (a connection string or a URL) or `RedisCache__hostName` (+ `RedisCache__clientId`,
//! Entra ID), parsed into a [`RedisTarget`].

use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo};

use super::{SettingsError, parse_bool};
use crate::adapters::redis::RedisTarget;

const REDIS_CACHE: &str = "RedisCache";
const REDIS_INSTANCE_NAME: &str = "RedisInstanceName";
const REDIS_HOST_NAME: &str = "RedisCache__hostName";
const REDIS_CLIENT_ID: &str = "RedisCache__clientId";

/// The Redis target the settings name: `RedisCache` for a password (or none), or
/// `RedisCache__hostName` for Entra ID; exactly one of them.
pub(crate) fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<RedisTarget, SettingsError> {
    match (get(REDIS_CACHE), get(REDIS_HOST_NAME)) {
        (Some(raw), None) => parse(&raw),
        (None, Some(host_name)) => entra_id(&host_name, get(REDIS_CLIENT_ID)),
        (Some(_), Some(_)) => Err(SettingsError::new(
            REDIS_CACHE,
            "and RedisCache__hostName are both set; keep RedisCache for a password, or RedisCache__hostName for Entra ID",
        )),
        (None, None) => Err(SettingsError::new(
            REDIS_CACHE,
            "is not set; set it to the connection string the Azure portal shows (host:6380,password=…,ssl=True,abortConnect=False) or to localhost:6379, or set RedisCache__hostName for Entra ID",
        )),
    }
}

/// `RedisInstanceName`, the prefix of every Redis key (empty when unset). A control character
/// could reach the internal keys (they start with `\x1f`). A brace would make Redis Cluster read a
/// hash tag in the prefix: `{app}` puts every key in one slot, and a lone `{` or `}` breaks the
/// tags the internal keys share (`{hot}`, `{inv}`); refused on every Redis, as the handler learns
/// it is on a cluster only once connected.
pub(crate) fn instance_name(raw: Option<String>) -> Result<String, SettingsError> {
    let name = raw.unwrap_or_default();
    if name.chars().any(char::is_control) {
        return Err(SettingsError::new(REDIS_INSTANCE_NAME, "must not contain control characters"));
    }
    if name.contains(['{', '}']) {
        return Err(SettingsError::new(
            REDIS_INSTANCE_NAME,
            "must not contain `{` or `}`: on a Redis Cluster they make a hash tag that puts every key in one slot or breaks the tags the handler uses",
        ));
    }
    Ok(name)
}

/// `RedisCache__hostName` (+ `RedisCache__clientId`): Azure Cache for Redis with Entra ID. The host
/// name may carry a port; TLS on 6380 otherwise, as Azure Cache for Redis serves it.
fn entra_id(host_name: &str, client_id: Option<String>) -> Result<RedisTarget, SettingsError> {
    let host_name = host_name.trim();
    if host_name.contains("://") || host_name.contains(',') || host_name.contains('/') {
        return Err(SettingsError::new(
            REDIS_HOST_NAME,
            "must be a host name such as mycache.redis.cache.windows.net (no scheme, no options)",
        ));
    }
    let (host, port) = split_host_port(host_name).map_err(|e| SettingsError::new(REDIS_HOST_NAME, e.problem))?;
    let mut target = RedisTarget::new(host, port.unwrap_or(6380), true);
    target.entra_id = Some(client_id);
    Ok(target)
}

/// Parses `RedisCache`: the StackExchange.Redis form the Azure portal shows
/// (`host:6380,password=…,ssl=True,abortConnect=False`) or a `redis://` / `rediss://` URL.
pub(crate) fn parse(raw: &str) -> Result<RedisTarget, SettingsError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(SettingsError::new(
            REDIS_CACHE,
            "is empty; give host:port[,password=…,ssl=True] or a redis:// URL",
        ));
    }
    let lower = raw.to_ascii_lowercase();
    if lower.starts_with("redis://") || lower.starts_with("rediss://") {
        parse_url(raw)
    } else if lower.contains("://") {
        Err(SettingsError::new(REDIS_CACHE, "has an unknown URL scheme; use redis:// or rediss://"))
    } else {
        parse_stackexchange(raw)
    }
}

fn parse_stackexchange(raw: &str) -> Result<RedisTarget, SettingsError> {
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
    let mut target = RedisTarget::new(String::new(), 0, false);
    let mut port_given = None;
    for (name, value) in options {
        match name.as_str() {
            "password" => target.password = Some(value).filter(|v| !v.is_empty()),
            "user" | "username" => target.user = Some(value).filter(|v| !v.is_empty()),
            "ssl" | "tls" => {
                ssl = parse_bool(&value)
                    .ok_or_else(|| SettingsError::new(REDIS_CACHE, format!("option `{name}` must be True or False")))?
            }
            "defaultdatabase" => {
                target.database = value
                    .parse()
                    .map_err(|_| SettingsError::new(REDIS_CACHE, "option `defaultDatabase` must be a whole number"))?
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

/// A `redis://` or `rediss://` URL, read by the Redis client's own URL parser (percent-escapes in
/// the user and password included). Its error is not repeated: it may hold the password.
fn parse_url(raw: &str) -> Result<RedisTarget, SettingsError> {
    // The two mistakes worth their own words; the client's parser judges the rest.
    let rest = raw.split_once("://").map_or("", |(_, rest)| rest);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let database = path.split(['?', '#']).next().unwrap_or("");
    if !database.is_empty() && database.parse::<i64>().is_err() {
        return Err(SettingsError::new(REDIS_CACHE, "URL path must be a database number, e.g. redis://host:6379/0"));
    }
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host_port.rsplit_once(':').is_some_and(|(_, port)| port == "0") {
        return Err(SettingsError::new(REDIS_CACHE, "has a port that is not a number from 1 to 65535"));
    }
    let info = raw.into_connection_info().map_err(|_| {
        SettingsError::new(
            REDIS_CACHE,
            "is not a usable Redis URL; expected redis://[user:password@]host[:port][/database] or rediss://…",
        )
    })?;
    let (host, port, tls) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => (host.clone(), *port, false),
        ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port, true),
        _ => return Err(SettingsError::new(REDIS_CACHE, "must name a TCP host (redis:// or rediss://)")),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let mut target = RedisTarget::new(host, port, tls);
    let settings = info.redis_settings();
    target.database = settings.db();
    target.user = settings.username().map(str::to_string).filter(|u| !u.is_empty());
    target.password = settings.password().map(str::to_string).filter(|p| !p.is_empty());
    Ok(target)
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

fn parse_millis(name: &str, value: &str) -> Result<Duration, SettingsError> {
    value
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| SettingsError::new(REDIS_CACHE, format!("option `{name}` must be a whole number of milliseconds")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portal_connection_string_with_base64_password() {
        let t = parse("myredis.redis.cache.windows.net:6380,password=ab+c/d==,ssl=True,abortConnect=False").unwrap();
        assert_eq!(t.host, "myredis.redis.cache.windows.net");
        assert_eq!(t.port, 6380);
        assert!(t.tls);
        assert_eq!(t.password.as_deref(), Some("ab+c/d=="));
    }

    #[test]
    fn option_names_are_case_insensitive_and_ssl_defaults_the_port() {
        let t = parse("cache.example, PASSWORD=x=y ,SSL=true,AbortConnect=false,DefaultDatabase=3").unwrap();
        assert_eq!((t.port, t.tls, t.database), (6380, true, 3));
        assert_eq!(t.password.as_deref(), Some("x=y"));
        let plain = parse("localhost").unwrap();
        assert_eq!((plain.port, plain.tls), (6379, false));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let err = parse("redis://host:6379/db0").unwrap_err();
        assert!(err.problem.contains("database number"), "{err}");
        let err = parse("redis://host:0").unwrap_err();
        assert!(err.problem.contains("port"), "{err}");
        let err = parse("rediss://u:s3cret@host:notaport").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn urls_with_credentials_and_database() {
        let t = parse("rediss://user:p%40ss@host.example:6390/2").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls, t.database), ("host.example", 6390, true, 2));
        assert_eq!((t.user.as_deref(), t.password.as_deref()), (Some("user"), Some("p@ss")));
        let t = parse("redis://[::1]:7000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 7000));
    }

    #[test]
    fn an_instance_name_with_a_brace_or_a_control_character_is_refused() {
        for bad in ["{app}:", "app{", "app}", "a{b}c:", "app\u{1f}", "app\n"] {
            let err = instance_name(Some(bad.into())).unwrap_err();
            assert_eq!(err.name, "RedisInstanceName", "{bad:?}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
        let err = instance_name(Some("{app}:".into())).unwrap_err().to_string();
        assert!(err.starts_with("setting `RedisInstanceName`: must not contain `{` or `}`"), "{err}");
        for good in [None, Some(String::new()), Some("app1:".into()), Some("my app ".into())] {
            assert_eq!(instance_name(good.clone()).unwrap(), good.unwrap_or_default());
        }
    }

    #[test]
    fn errors_name_the_setting_and_never_the_password() {
        for bad in
            ["", "host:notaport,password=s3cret", "host,password=s3cret,bogus=1", "http://host", ",password=s3cret"]
        {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("setting `RedisCache`"), "{err}");
            assert!(!err.contains("s3cret"), "secret leaked: {err}");
        }
        let described = parse("h:1,password=s3cret").unwrap().describe();
        assert!(!described.contains("s3cret"));
    }
}
