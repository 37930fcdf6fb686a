//! The nodes of a Redis Cluster as last seen, so that a connection opened later does not depend
//! on the one node `RedisCache` names.
//!
//! `RedisCache` names one node. A cluster client started from it alone learns the others, and
//! follows failovers while it runs; but a client built afterwards (the write-behind consumer's own
//! connection, the invalidation feed's subscriber after a reconnect) would try that one node only,
//! and reach nothing once it is a master that died. So each time a cluster connection is built, the
//! nodes it sees (`CLUSTER SLOTS`: every master and replica holding slots) are remembered here, in
//! a list that the handles of one process naming the same `RedisCache` share, and later
//! connections start from the named node first and then every known one (same TLS mode, same
//! password or Entra ID credentials). A new process knows only the named node.

use std::sync::RwLock;

use redis::{ConnectionAddr, ConnectionInfo, Value};

/// The nodes of the cluster, as the last cluster connection built saw them; empty until Redis is
/// known to be a cluster.
#[derive(Debug, Default)]
pub(crate) struct Topology {
    nodes: RwLock<Vec<(String, u16)>>,
}

impl Topology {
    /// Whether a cluster connection has been built and has seen the cluster's nodes.
    pub(crate) fn is_known(&self) -> bool {
        !self.nodes.read().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// The known nodes, `host:port` (as the nodes announce themselves).
    pub(crate) fn nodes(&self) -> Vec<(String, u16)> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Remembers the nodes of a `CLUSTER SLOTS` answer instead of the ones known before (a node
    /// no longer listed, such as a dead master whose replica was promoted, is dropped). An answer
    /// that names no node changes nothing. Returns how many nodes are known.
    pub(crate) fn learn(&self, cluster_slots: &Value) -> usize {
        let seen = nodes_in(cluster_slots);
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if !seen.is_empty() {
            *nodes = seen;
        }
        nodes.len()
    }

    /// Where to connect, in order: `seed` (the node `RedisCache` names) first, then every other
    /// known node with the same TLS mode and handshake (database, user, password).
    pub(crate) fn starting_from(&self, seed: &ConnectionInfo) -> Vec<ConnectionInfo> {
        let mut infos = vec![seed.clone()];
        for (host, port) in self.nodes() {
            let addr = match seed.addr() {
                ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
                    ConnectionAddr::TcpTls { host, port, insecure: *insecure, tls_params: tls_params.clone() }
                }
                _ => ConnectionAddr::Tcp(host, port),
            };
            if addr != *seed.addr() {
                infos.push(seed.clone().set_addr(addr));
            }
        }
        infos
    }
}

/// The distinct `host:port` of every node in a `CLUSTER SLOTS` answer: per slot range, its start,
/// its end, then one entry per node, master first (`[host, port, id, …]`). A node that does not
/// know its own address answers an empty host or `?`: skipped.
fn nodes_in(cluster_slots: &Value) -> Vec<(String, u16)> {
    let text = |value: &Value| match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    };
    let mut nodes: Vec<(String, u16)> = Vec::new();
    let Value::Array(ranges) = cluster_slots else { return nodes };
    for range in ranges {
        let Value::Array(fields) = range else { continue };
        for node in fields.iter().skip(2) {
            let Value::Array(node) = node else { continue };
            let (Some(host), Some(Value::Int(port))) = (node.first().and_then(text), node.get(1)) else { continue };
            let Ok(port) = u16::try_from(*port) else { continue };
            if host.is_empty() || host == "?" || port == 0 {
                continue;
            }
            if !nodes.iter().any(|(h, p)| *h == host && *p == port) {
                nodes.push((host, port));
            }
        }
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::IntoConnectionInfo;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![Value::BulkString(host.into()), Value::Int(port), Value::BulkString(b"id".to_vec())])
    }

    fn range(start: i64, end: i64, nodes: Vec<Value>) -> Value {
        let mut fields = vec![Value::Int(start), Value::Int(end)];
        fields.extend(nodes);
        Value::Array(fields)
    }

    #[test]
    fn every_master_and_replica_is_remembered_once_and_the_last_answer_wins() {
        let topology = Topology::default();
        assert!(!topology.is_known());
        let answer = Value::Array(vec![
            range(0, 5460, vec![node("10.0.0.1", 7000), node("10.0.0.4", 7003)]),
            range(5461, 10922, vec![node("10.0.0.2", 7001), node("", 7004), node("?", 7005)]),
            range(10923, 16383, vec![node("10.0.0.3", 7002)]),
            range(16383, 16383, vec![node("10.0.0.3", 7002)]),
        ]);
        assert_eq!(topology.learn(&answer), 4);
        assert_eq!(
            topology.nodes(),
            [("10.0.0.1", 7000), ("10.0.0.4", 7003), ("10.0.0.2", 7001), ("10.0.0.3", 7002)]
                .map(|(h, p)| (h.to_string(), p))
        );
        // The master on 7000 died, its replica was promoted.
        let after = Value::Array(vec![range(0, 5460, vec![node("10.0.0.4", 7003)])]);
        assert_eq!(topology.learn(&after), 1);
        assert_eq!(topology.learn(&Value::Array(vec![])), 1, "an empty answer forgets nothing");
        assert_eq!(topology.learn(&Value::Nil), 1);
        assert!(topology.is_known());
    }

    #[test]
    fn connections_start_from_the_seed_then_every_known_node_with_the_same_tls_and_handshake() {
        let topology = Topology::default();
        topology.learn(&Value::Array(vec![range(0, 16383, vec![node("10.0.0.1", 6380), node("10.0.0.2", 6380)])]));
        let settings = redis::RedisConnectionInfo::default().set_db(2).set_username("u").set_password("p");
        let seed = ConnectionAddr::TcpTls { host: "10.0.0.1".into(), port: 6380, insecure: false, tls_params: None }
            .into_connection_info()
            .unwrap()
            .set_redis_settings(settings);
        let infos = topology.starting_from(&seed);
        let addrs: Vec<String> = infos.iter().map(|i| i.addr().to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:6380", "10.0.0.2:6380"], "the seed once, first");
        for info in &infos {
            assert!(matches!(info.addr(), ConnectionAddr::TcpTls { insecure: false, .. }));
            assert_eq!(info.redis_settings().db(), 2);
            assert_eq!(info.redis_settings().username(), Some("u"));
            assert_eq!(info.redis_settings().password(), Some("p"));
        }
        let plain = ConnectionAddr::Tcp("cache.example".into(), 6379).into_connection_info().unwrap();
        let infos = topology.starting_from(&plain);
        assert_eq!(infos.len(), 3);
        assert!(infos.iter().all(|i| matches!(i.addr(), ConnectionAddr::Tcp(..))));
    }
}
