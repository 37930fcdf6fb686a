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
//! Asking a cluster for its nodes (`CLUSTER SLOTS`, below) only refines where connections start
//! from: when it fails (a node that refuses the command, or does not answer within half the
//! response timeout), the connection is made all the same, from the nodes known so far, and the
//! failure is logged (a warning the first time for each cause, then at debug level).
//!
//! Every cluster client starts from the named node and every node of the cluster known
//! ([`Topology`], learnt from the named node before the first client is built and refreshed by
//! each later one): a later connection (the write-behind consumer's, another handle's), and the
//! client's own recovery after losing every connection, do not need the named node to be alive.
//!
//! A node that says `cluster_enabled:0` yet redirects (`MOVED`/`ASK`, which only a cluster node
//! answers) is a cluster the handler did not find out: the first redirection on the single-node
//! connection is logged once, as an error naming the situation (the call itself counts as an
//! outage: the cache is bypassed for it).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

use super::topology::Topology;
use crate::domain::error_chain::Chain;

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
    /// The node `RedisCache` names.
    seed: ConnectionInfo,
    connect_timeout: Duration,
    response_timeout: Duration,
    credentials: Option<super::entra::EntraIdCredentials>,
    /// The cluster's nodes as last seen, shared with the process's other handles on the same
    /// `RedisCache`.
    topology: Arc<Topology>,
    decided: OnceCell<Connection>,
}

impl Connector {
    /// Prepares both kinds without connecting (the cluster client's settings are checked now).
    pub(crate) fn new(
        single: ConnectionManager,
        seed: ConnectionInfo,
        connect_timeout: Duration,
        response_timeout: Duration,
        credentials: Option<super::entra::EntraIdCredentials>,
        topology: Arc<Topology>,
    ) -> RedisResult<Arc<Self>> {
        let connector =
            Self { single, seed, connect_timeout, response_timeout, credentials, topology, decided: OnceCell::new() };
        connector.cluster_client(vec![connector.seed.clone()])?;
        Ok(Arc::new(connector))
    }

    /// A cluster client starting from `nodes`, every one with the same TLS mode, handshake and
    /// credentials (password, or Entra ID tokens kept fresh).
    fn cluster_client(&self, nodes: Vec<ConnectionInfo>) -> RedisResult<ClusterClient> {
        let mut builder = ClusterClientBuilder::new(nodes)
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.response_timeout)
            .retries(2)
            .min_retry_wait(50)
            .max_retry_wait(500);
        if let Some(credentials) = &self.credentials {
            builder = builder.set_credentials_provider(credentials.clone());
        }
        builder.build()
    }

    /// The connection, asking the endpoint what it is on first use. On a cluster, the named node
    /// is asked for every node (`CLUSTER SLOTS`) before the cluster client is built, so that the
    /// client starts from all of them: its own recovery after losing every connection reconnects
    /// from these, not from the named node alone. Once the process has seen the cluster (this
    /// handle or another on the same `RedisCache`), the named node is not asked at all: the client
    /// starts from it and every known node, reaching the cluster even when the named node is a
    /// master that has died since, and refreshes the known nodes through the cluster before use.
    /// Either question failing leaves the connection as it is: the client then starts from (or
    /// keeps) the nodes known before, and finds the others itself.
    pub(crate) async fn get(&self) -> RedisResult<Connection> {
        self.decided
            .get_or_try_init(|| async {
                let seen_before = self.topology.is_known();
                if !seen_before {
                    let mut single = self.single.clone();
                    let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut single).await?;
                    if !info.lines().any(|line| line.trim() == "cluster_enabled:1") {
                        return Ok(Connection::Single(single));
                    }
                    match self.learn_nodes(&mut single).await {
                        Ok(known) => tracing::info!(nodes = known, "Redis is a cluster: using the cluster client"),
                        Err(e) => {
                            nodes_unknown(&e, "the cluster client starts from the named node alone");
                            tracing::info!("Redis is a cluster: using the cluster client");
                        }
                    }
                }
                let client = self.cluster_client(self.topology.starting_from(&self.seed))?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(self.connect_timeout)
                    .set_response_timeout(self.response_timeout);
                let mut cluster = client.get_pending_async_connection_with_config(config);
                if seen_before {
                    match self.learn_nodes(&mut cluster).await {
                        Ok(known) => tracing::debug!(
                            nodes = known,
                            "Redis is a cluster (seen before): the cluster client started from every known node"
                        ),
                        Err(e) => nodes_unknown(&e, "the nodes known before are kept"),
                    }
                }
                Ok(Connection::Cluster(cluster))
            })
            .await
            .cloned()
    }

    /// Asks `conn` for the cluster's nodes (`CLUSTER SLOTS`) and remembers them; returns how many
    /// nodes are known. Waits at most half the response timeout: the call that is connecting gets
    /// the rest.
    async fn learn_nodes(&self, conn: &mut impl ConnectionLike) -> RedisResult<usize> {
        let within = self.response_timeout / 2;
        let mut cmd = redis::cmd("CLUSTER");
        let asked = cmd.arg("SLOTS").query_async::<Value>(conn);
        let slots = tokio::time::timeout(within, asked).await.map_err(|_| {
            let late = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {within:?}"));
            redis::RedisError::from(late)
        })??;
        Ok(self.topology.learn(&slots))
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

/// Logs that the cluster's nodes could not be asked for, and `what_then`: a warning the first time
/// for each cause (the error's kind and code) in this process, then at debug level (every new
/// connection asks again).
fn nodes_unknown(error: &redis::RedisError, what_then: &str) {
    static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let cause = format!("{:?} {}", error.kind(), error.code().unwrap_or_default());
    let first = WARNED.lock().unwrap_or_else(|p| p.into_inner()).insert(cause);
    let error = Chain(error);
    if first {
        tracing::warn!(%error, "could not ask Redis Cluster for its nodes (CLUSTER SLOTS); {what_then}, and the connection is kept");
    } else {
        tracing::debug!(%error, "could not ask Redis Cluster for its nodes (CLUSTER SLOTS); {what_then}, and the connection is kept");
    }
}
