//! A real Redis Cluster of our own: `redis-server --cluster-enabled yes` nodes on free ports (whose
//! cluster bus port, port + 10000, is free too), joined with `redis-cli --cluster create`, killed
//! on drop.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Proxy, TempDir, inline_command};

/// One node of the cluster.
pub struct ClusterNode {
    child: Option<Child>,
    pub port: u16,
}

/// A local Redis Cluster.
pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    pub dir: TempDir,
}

impl RedisCluster {
    /// Starts `masters` masters, each with `replicas` replicas, and waits for `cluster_state:ok`.
    pub fn start(masters: usize, replicas: usize) -> Self {
        let dir = TempDir::new("cluster");
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let port = super::free_port();
            let child = spawn_node(port, &dir.path().display().to_string());
            nodes.push(ClusterNode { child: Some(child), port });
        }
        let cluster = Self { nodes, dir };
        for node in &cluster.nodes {
            wait_until(Duration::from_secs(10), || {
                inline_command(node.port, "PING").map(|r| r.starts_with("+PONG")).unwrap_or(false)
            });
        }
        let addresses: Vec<String> = cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create (redis-tools)");
        assert!(status.success(), "redis-cli --cluster create failed");
        cluster.wait_ok();
        // A replica is a copy only once its first full sync is done: writes made before that
        // reach it in the snapshot, not in the replication stream whose offsets tests compare.
        wait_until(Duration::from_secs(30), || {
            let synced = cluster.nodes.iter().filter(|n| {
                inline_command(n.port, "INFO replication").is_ok_and(|info| {
                    info.contains("role:slave")
                        && info.contains("master_link_status:up")
                        && info.contains("master_sync_in_progress:0")
                })
            });
            synced.count() == masters * replicas
        });
        cluster
    }

    /// Waits until every live node says `cluster_state:ok` and knows every master.
    pub fn wait_ok(&self) {
        wait_until(Duration::from_secs(30), || {
            self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                inline_command(n.port, "CLUSTER INFO").map(|r| r.contains("cluster_state:ok")).unwrap_or(false)
            })
        });
    }

    /// `RedisCache` for the cluster: any one node (the client discovers the others).
    pub fn connection_string(&self) -> String {
        format!("127.0.0.1:{}", self.nodes[0].port)
    }

    /// The master serving `key` as the live nodes see it, `None` while no live master serves it.
    pub fn promoted_master_of(&self, key: &str) -> Option<u16> {
        self.find_master(key).filter(|port| self.live_ports().contains(port))
    }

    /// The port of the master that serves `key` now.
    pub fn master_of(&self, key: &str) -> u16 {
        self.find_master(key).unwrap_or_else(|| panic!("no master serves {key:?}"))
    }

    fn find_master(&self, key: &str) -> Option<u16> {
        let live = self.live_ports();
        let slot = inline_command(live[0], &format!("CLUSTER KEYSLOT {key}")).unwrap();
        let slot: u16 = slot.trim().trim_start_matches(':').parse().unwrap();
        let live = self.nodes.iter().find(|n| n.child.is_some()).unwrap();
        let nodes = inline_command(live.port, "CLUSTER NODES").unwrap();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port: u16 = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
            for range in &fields[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>())
                    && (lo..=hi).contains(&slot)
                {
                    return Some(port);
                }
            }
        }
        None
    }

    /// A replica of the master on `master`, as the master lists them (`INFO replication`).
    pub fn replica_of(&self, master: u16) -> Option<u16> {
        let info = inline_command(master, "INFO replication").ok()?;
        info.lines()
            .filter(|line| line.starts_with("slave") && line.contains("state=online"))
            .find_map(|line| line.split(',').find_map(|kv| kv.strip_prefix("port=")).and_then(|p| p.parse().ok()))
    }

    /// How far the node on `port` is in its replication stream (`INFO replication`): a master's
    /// `master_repl_offset` (what it has sent), a replica's `slave_repl_offset` (what it has
    /// received and applied).
    pub fn replication_offset(&self, port: u16) -> u64 {
        let info = inline_command(port, "INFO replication").expect("INFO replication");
        let field = if info.contains("role:master") { "master_repl_offset:" } else { "slave_repl_offset:" };
        info.lines()
            .find_map(|line| line.trim().strip_prefix(field))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in INFO replication of {port}: {info}"))
    }

    /// The ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.port).collect()
    }

    /// The process ids of the nodes still running.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.child.as_ref().map(Child::id)).collect()
    }

    /// Stops every node (Redis down).
    pub fn stop_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Starts every stopped node again, empty, with its cluster configuration, and waits for the
    /// cluster to be whole.
    pub fn restart_all(&mut self) {
        let dir = self.dir.path().display().to_string();
        for node in &mut self.nodes {
            if node.child.is_none() {
                node.child = Some(spawn_node(node.port, &dir));
            }
        }
        for node in &self.nodes {
            wait_until(Duration::from_secs(10), || {
                inline_command(node.port, "PING").map(|r| r.starts_with("+PONG")).unwrap_or(false)
            });
        }
        self.wait_ok();
    }

    /// Kills the node on `port` (a failover test).
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("a node on that port");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends one inline command to the node serving `key` (following the cluster's map).
    pub fn command_for(&self, key: &str, command: &str) -> String {
        inline_command(self.master_of(key), command).expect("cluster command")
    }
}

/// A proxy to one cluster node that turns `cluster_enabled:1` into `cluster_enabled:0` in what the
/// node answers: a cluster node whose `INFO` says it is none. Every other byte passes as is.
pub fn hiding_proxy(upstream: u16) -> Proxy {
    let hide = |chunk: &mut [u8]| {
        let (from, to) = (b"cluster_enabled:1", b"cluster_enabled:0");
        for at in 0..chunk.len().saturating_sub(from.len() - 1) {
            if &chunk[at..at + from.len()] == from {
                chunk[at..at + to.len()].copy_from_slice(to);
            }
        }
    };
    Proxy::start(upstream, Arc::new(|_: &mut [u8]| {}), Arc::new(hide))
}

fn spawn_node(port: u16, dir: &str) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        // A replica's first copy starts at once (Redis waits 5 s by default for more replicas).
        .args(["--repl-diskless-sync-delay", "0"])
        .args(["--dir", dir])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server (cluster node)")
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for the cluster");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A Redis Cluster that speaks TLS only (clients, the cluster bus and replication), with a CA and
/// a certificate for `localhost`/`127.0.0.1` generated by `openssl`.
pub struct TlsRedisCluster {
    children: Vec<Child>,
    pub ports: Vec<u16>,
    pub dir: TempDir,
}

impl TlsRedisCluster {
    /// Starts `masters` TLS masters and waits for `cluster_state:ok`.
    pub fn start(masters: usize) -> Self {
        let dir = TempDir::new("cluster-tls");
        super::make_certificates(dir.path());
        let d = dir.path().display().to_string();
        let mut children = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..masters {
            let port = super::free_port();
            let child = Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--dir", &d])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--tls-cluster", "yes", "--tls-replication", "yes", "--tls-auth-clients", "no"])
                .args(["--tls-cert-file", &format!("{d}/server.crt"), "--tls-key-file", &format!("{d}/server.key")])
                .args(["--tls-ca-cert-file", &format!("{d}/ca.crt")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server (TLS cluster node)");
            children.push(child);
            ports.push(port);
        }
        let cluster = Self { children, ports, dir };
        for port in &cluster.ports {
            wait_until(Duration::from_secs(10), || cluster.cli(*port, &["PING"]).contains("PONG"));
        }
        let mut create = vec!["--cluster".to_string(), "create".to_string()];
        create.extend(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.push("--cluster-yes".into());
        let args: Vec<&str> = create.iter().map(String::as_str).collect();
        // `--cluster create` waits for ever if the nodes cannot meet: bound it.
        let mut creating = Command::new("redis-cli")
            .args(["--tls", "--cacert", &cluster.ca_path().display().to_string(), "-h", "127.0.0.1"])
            .args(["-p", &cluster.ports[0].to_string()])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli");
        wait_until(Duration::from_secs(30), || creating.try_wait().ok().flatten().is_some());
        wait_until(Duration::from_secs(30), || {
            cluster.ports.iter().all(|p| cluster.cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
        cluster
    }

    /// The generated CA certificate.
    pub fn ca_path(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Runs `redis-cli` with TLS against the node on `port`; returns its output.
    fn cli(&self, port: u16, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["--tls", "--cacert", &self.ca_path().display().to_string(), "-h", "127.0.0.1"])
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for TlsRedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
