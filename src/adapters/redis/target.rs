//! Where the Redis connection goes and how it authenticates (parsed from the `RedisCache…`
//! settings by `config::redis`).

use std::fmt;
use std::time::Duration;

/// Where the Redis connection goes.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// Host name or address (of one node, for a cluster).
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
    /// identity, or `Some(None)` for the system-assigned one (or a developer login locally).
    pub entra_id: Option<Option<String>>,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl RedisTarget {
    /// `host:port`, TLS or not, with the default timeouts and no credentials.
    pub fn new(host: impl Into<String>, port: u16, tls: bool) -> Self {
        Self {
            host: host.into(),
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

    /// A description safe for logs: scheme, host, port, database, never the password.
    pub fn describe(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = match (&self.entra_id, &self.user, &self.password) {
            (Some(_), _, _) => "entra-id@".to_string(),
            (None, Some(user), _) => format!("{user}:***@"),
            (None, None, Some(_)) => "***@".to_string(),
            (None, None, None) => String::new(),
        };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("{scheme}://{auth}{host}:{}/{}", self.port, self.database)
    }
}
