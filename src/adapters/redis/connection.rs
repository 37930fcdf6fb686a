//! One Redis connection, to a single endpoint or to a cluster, found out on first use.
//!
//! A user pastes the connection string of whatever Azure gives them, so, like StackExchange.Redis,
//! the handler asks the endpoint (`INFO cluster`) the first time it reaches it:
//! * `cluster_enabled:0` — a single node, or a proxy that hides its shards (Azure Cache for Redis
//!   without clustering; Azure Managed Redis with the Enterprise cluster policy): one
//!   auto-reconnecting connection (`ConnectionManager`);
//! * `cluster_enabled:1` — Redis Cluster (Azure Managed Redis with the OSS cluster policy, Azure
//!   Cache for Redis Premium with clustering): redis-rs' cluster client, which learns the slot map,
//!   follows `MOVED`/`ASK`, refreshes the topology after a failover, and authenticates every node
//!   connection the same way (password, or Entra ID tokens kept fresh).
//!
//! Until Redis has answered once, calls fail (and the cache is bypassed) like any unreachable Redis.
//!
//! A node that says `cluster_enabled:0` yet redirects (`MOVED`/`ASK`, which only a cluster node
//! answers) is a cluster the handler did not find out: the first redirection on the single-node
//! connection is logged once, as an error naming the situation (the call itself counts as an
//! outage: the cache is bypassed for it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

/// A live connection of either kind. Cheap to clone; clones share it.
#[derive(Clone)]
pub(crate) enum Connection {
    /// One endpoint.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The connection to use, decided once Redis has answered.
pub(crate) struct Connector {
    single: ConnectionManager,
    cluster: ClusterClient,
    cluster_config: ClusterConfig,
    decided: OnceCell<Connection>,
}

impl Connector {
    /// Prepares both kinds without connecting.
    pub(crate) fn new(
        single: ConnectionManager,
        info: ConnectionInfo,
        connect_timeout: Duration,
        response_timeout: Duration,
        credentials: Option<super::entra::EntraIdCredentials>,
    ) -> RedisResult<Arc<Self>> {
        let mut builder = ClusterClientBuilder::new(vec![info])
            .connection_timeout(connect_timeout)
            .response_timeout(response_timeout)
            .retries(2)
            .min_retry_wait(50)
            .max_retry_wait(500);
        if let Some(credentials) = credentials {
            builder = builder.set_credentials_provider(credentials);
        }
        let cluster_config =
            ClusterConfig::new().set_connection_timeout(connect_timeout).set_response_timeout(response_timeout);
        Ok(Arc::new(Self { single, cluster: builder.build()?, cluster_config, decided: OnceCell::new() }))
    }

    /// The connection, asking the endpoint what it is on first use.
    pub(crate) async fn get(&self) -> RedisResult<Connection> {
        self.decided
            .get_or_try_init(|| async {
                let mut single = self.single.clone();
                let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut single).await?;
                if info.lines().any(|line| line.trim() == "cluster_enabled:1") {
                    tracing::info!("Redis is a cluster: using the cluster client");
                    Ok(Connection::Cluster(
                        self.cluster.get_pending_async_connection_with_config(self.cluster_config.clone()),
                    ))
                } else {
                    Ok(Connection::Single(single))
                }
            })
            .await
            .cloned()
    }

    /// Whether Redis turned out to be a cluster (`None` before it first answered).
    pub(crate) fn is_cluster(&self) -> Option<bool> {
        self.decided.get().map(|conn| matches!(conn, Connection::Cluster(_)))
    }

    /// Called with every error: a redirection on the single-node connection means the endpoint
    /// is a cluster that `INFO cluster` did not report. Logged once per process.
    pub(crate) fn check_redirection(&self, error: &redis::RedisError, target: &str) {
        static REPORTED: AtomicBool = AtomicBool::new(false);
        let redirected = matches!(error.code(), Some("MOVED" | "ASK"));
        if redirected && self.is_cluster() == Some(false) && !REPORTED.swap(true, Ordering::Relaxed) {
            tracing::error!(
                target_redis = %target,
                "Redis answered {} on a single-node connection: the endpoint said cluster_enabled:0 in INFO cluster, yet it is a Redis Cluster node; calls on keys of its other shards fail, so the cache is mostly bypassed; point RedisCache at a node that reports cluster_enabled:1, or at the cache's proxied (non-OSS) endpoint",
                error.code().unwrap_or("MOVED"),
            );
        }
    }
}
