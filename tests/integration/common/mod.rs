//! Shared test support: real `redis-server` processes on free ports, temporary folders, a store
//! wrapper that counts calls and injects failures, and host-shaped requests built from the
//! `function.json` files.
#![allow(dead_code)]

pub mod cluster;
pub mod cosmos;
pub mod host;
pub mod process;
pub mod store_contract;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cachepatterns::adapters::sqlite::SqliteStore;
use cachepatterns::config::Settings;
use cachepatterns::domain::options::EntryOptions;
use cachepatterns::ports::dead_letters::{DeadLetterId, DeadLetters, Failed};
use cachepatterns::ports::store::{Applied, Change, Record, Store, StoreError};
use cachepatterns::ports::{Clock, WriteQueue};
use cachepatterns::startup::{Application, Plugs};

/// Polls `done` every 5 ms until it holds; panics saying `what` after 10 s.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The system's time now.
pub fn now() -> cachepatterns::domain::time::Timestamp {
    cachepatterns::ports::clock::SystemClock.now()
}

/// A folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "cachepatterns-{label}-{}-{n}-{}",
            std::process::id(),
            now().as_micros()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::fs::remove_dir_all(&self.0).is_err() {
            // An app root a test made immutable (`chattr +i`, as on Azure) whose handler never
            // started, so nothing took the flag off: take it off and try again.
            let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A free TCP port on 127.0.0.1 for a server a test starts, with port + 10000 free too (a cluster
/// node's bus port). Drawn below the kernel's ephemeral range where it can be: a port the OS picks
/// for `bind(0)` comes from that range, which every outgoing connection of the run also draws from,
/// and a client's connection could take it before the server bound it (a handler then failed to
/// start). No port is handed out twice in one test process.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let mut usable = |port: u16| {
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        let pair_free = port < 55_536
            && !handed_out.contains(&port)
            && !handed_out.contains(&(port + 10_000))
            && free(port)
            && free(port + 10_000);
        if pair_free {
            handed_out.insert(port);
            handed_out.insert(port + 10_000);
        }
        pair_free
    };
    let (low, high) = (10_000u32, ephemeral_low.saturating_sub(10_000).min(55_536));
    if high >= low + 1_000 {
        let span = high - low;
        let start = {
            use std::hash::BuildHasher;
            // Random per call, so that test binaries run side by side rarely meet.
            (std::collections::hash_map::RandomState::new().hash_one(0u8) % u64::from(span)) as u32
        };
        if let Some(port) = (0..span).map(|step| (low + (start + step) % span) as u16).find(|&p| usable(p)) {
            return port;
        }
    }
    // The ephemeral range starts too low to leave room below it: let the OS pick, as before.
    eprintln!("the ephemeral port range starts at {ephemeral_low}: ports are picked by the OS, and may race");
    for _ in 0..1_000 {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port");
        if usable(port) {
            return port;
        }
    }
    panic!("no free port pair (port and port + 10000) on 127.0.0.1");
}

/// A TCP server that accepts connections and never answers (a blackholed or hung peer).
pub struct Blackhole {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Blackhole {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { port, stop }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A TCP proxy to `127.0.0.1:upstream` that hands every chunk read in either direction to an edit
/// before passing it on (the edit may change the bytes in place, or take its time).
pub struct Proxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

/// What a [`Proxy`] does to a chunk on its way.
pub type Edit = Arc<dyn Fn(&mut [u8]) + Send + Sync>;

impl Proxy {
    pub fn start(upstream: u16, to_server: Edit, to_client: Edit) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                client.set_nonblocking(false).unwrap();
                let (client_read, server_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (to_server, to_client) = (to_server.clone(), to_client.clone());
                std::thread::spawn(move || pipe(client_read, server_write, &*to_server));
                std::thread::spawn(move || pipe(server, client, &*to_client));
            }
        });
        Self { port, stop }
    }

    /// A Redis that answers every command, slowly: what a client sends is held for `delay`.
    pub fn slow(upstream: u16, delay: Duration) -> Self {
        Self::start(upstream, Arc::new(move |_: &mut [u8]| std::thread::sleep(delay)), Arc::new(|_: &mut [u8]| {}))
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, edit: &(dyn Fn(&mut [u8]) + Send + Sync)) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        edit(&mut buf[..n]);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A `redis-server` of our own, on a free port, killed on drop; or, when the tests run against a
/// cluster (`CACHEPATTERNS_TEST_REDIS=cluster`, see `scripts/test.sh`), a three-master Redis
/// Cluster that stands in for it: the same suites run on both.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub tls_port: Option<u16>,
    pub dir: TempDir,
    cluster: Option<cluster::RedisCluster>,
}

/// Whether this test run targets a Redis Cluster.
pub fn cluster_target() -> bool {
    std::env::var("CACHEPATTERNS_TEST_REDIS").is_ok_and(|v| v.eq_ignore_ascii_case("cluster"))
}

impl RedisServer {
    /// Starts the Redis the tests run against: a plain-TCP server, or a cluster.
    pub fn start() -> Self {
        if cluster_target() {
            let cluster = cluster::RedisCluster::start(3, 0);
            let port = cluster.nodes[0].port;
            return Self {
                child: None,
                port,
                tls_port: None,
                dir: TempDir::new("redis-cluster-handle"),
                cluster: Some(cluster),
            };
        }
        Self::start_single()
    }

    /// Starts a plain-TCP single server, whatever the target (tests of single-node specifics).
    pub fn start_single() -> Self {
        Self::spawn(&[], None)
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Starts a server that also listens with TLS, with a CA and server certificate generated by
    /// `openssl` for `localhost`. The CA certificate is at [`RedisServer::ca_path`].
    pub fn start_tls() -> Self {
        let dir = TempDir::new("redis-tls");
        make_certificates(dir.path());
        let tls_port = free_port();
        let d = dir.path().display().to_string();
        let args = vec![
            "--tls-port".to_string(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            format!("{d}/server.crt"),
            "--tls-key-file".into(),
            format!("{d}/server.key"),
            "--tls-ca-cert-file".into(),
            format!("{d}/ca.crt"),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let mut server = Self::spawn(&args, Some(dir));
        server.tls_port = Some(tls_port);
        server
    }

    fn spawn(extra: &[String], dir: Option<TempDir>) -> Self {
        let dir = dir.unwrap_or_else(|| TempDir::new("redis"));
        for attempt in 0..5 {
            let port = free_port();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--dir", &dir.path().display().to_string()])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start `redis-server` ({e}). The integration tests need a real Redis: install it (Debian/Ubuntu: `sudo apt-get install -y redis-server`; macOS: `brew install redis`)")
                });
            if wait_ready(&mut child, port, Duration::from_secs(10)) {
                return Self { child: Some(child), port, tls_port: None, dir, cluster: None };
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("redis-server on port {port} did not come up (attempt {attempt}); retrying on another port");
        }
        panic!("redis-server did not start after 5 attempts");
    }

    /// The ports of every node (one for a single server).
    fn node_ports(&self) -> Vec<u16> {
        match &self.cluster {
            Some(cluster) => cluster.live_ports(),
            None => vec![self.port],
        }
    }

    /// Sends one inline command over plain TCP and returns the raw reply. On a cluster, a command
    /// on a key goes to the node that serves it; one without a key (`FLUSHALL`, `CONFIG …`) to
    /// every node (the first reply is returned).
    pub fn command(&self, command: &str) -> std::io::Result<String> {
        let Some(cluster) = &self.cluster else { return inline_command(self.port, command) };
        let keyless = ["FLUSHALL", "FLUSHDB", "CONFIG", "INFO", "PING", "KEYS", "SCRIPT", "ACL", "CLIENT"]
            .iter()
            .any(|c| command.to_ascii_uppercase().starts_with(c));
        if keyless {
            let replies: Vec<String> =
                cluster.live_ports().into_iter().map(|port| inline_command(port, command)).collect::<Result<_, _>>()?;
            return Ok(if command.to_ascii_uppercase().starts_with("KEYS") {
                merge_arrays(&replies)
            } else {
                replies[0].clone()
            });
        }
        let mut last = String::new();
        for port in cluster.live_ports() {
            last = inline_command(port, command)?;
            if !(last.starts_with("-MOVED") || last.starts_with("-ASK") || last.starts_with("-CROSSSLOT")) {
                return Ok(last);
            }
        }
        Ok(last)
    }

    /// `RedisCache` connection string for this server (a cluster: one of its nodes).
    pub fn connection_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The generated CA certificate (TLS servers only).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Total calls of each Redis command since the last `CONFIG RESETSTAT` (all nodes together).
    pub fn command_calls(&self) -> HashMap<String, u64> {
        let mut calls = HashMap::new();
        for port in self.node_ports() {
            let info = inline_command(port, "INFO commandstats").expect("INFO commandstats");
            for line in info.lines() {
                let Some(rest) = line.strip_prefix("cmdstat_") else { continue };
                let Some((name, stats)) = rest.split_once(':') else { continue };
                let Some(n) =
                    stats.split(',').find_map(|kv| kv.strip_prefix("calls=")).and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                *calls.entry(name.to_string()).or_insert(0) += n;
            }
        }
        calls
    }

    /// Resets command statistics.
    pub fn reset_stats(&self) {
        for port in self.node_ports() {
            inline_command(port, "CONFIG RESETSTAT").expect("CONFIG RESETSTAT");
        }
    }

    fn pids(&self) -> Vec<u32> {
        match &self.cluster {
            Some(cluster) => cluster.pids(),
            None => self.child.iter().map(Child::id).collect(),
        }
    }

    /// Freezes the server (`SIGSTOP`): connections stay open and nothing answers.
    pub fn pause(&self) {
        for pid in self.pids() {
            signal(pid, "-STOP");
        }
    }

    /// Thaws a paused server (`SIGCONT`).
    pub fn resume(&self) {
        for pid in self.pids() {
            signal(pid, "-CONT");
        }
    }

    /// Stops the server (to test Redis being down). Dropping also stops it.
    pub fn stop(&mut self) {
        if let Some(cluster) = &mut self.cluster {
            cluster.stop_all();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        if let Some(cluster) = &mut self.cluster {
            cluster.restart_all();
            return;
        }
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restart redis-server");
        assert!(wait_ready(&mut child, self.port, Duration::from_secs(10)), "redis-server did not restart");
        self.child = Some(child);
    }

    /// An async connection for inspecting what the service wrote (a cluster connection on a
    /// cluster).
    pub async fn connection(&self) -> TestConnection {
        if self.cluster.is_some() {
            let client = redis::cluster::ClusterClient::new(vec![format!("redis://127.0.0.1:{}/", self.port)]).unwrap();
            return TestConnection::Cluster(client.get_async_connection().await.expect("connect to the test cluster"));
        }
        TestConnection::Single(
            redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .expect("connect to test redis"),
        )
    }
}

/// The elements of several RESP array replies as one array reply.
fn merge_arrays(replies: &[String]) -> String {
    let mut count = 0;
    let mut body = String::new();
    for reply in replies {
        let Some((head, rest)) = reply.split_once("\r\n") else { continue };
        count += head.trim_start_matches('*').parse::<usize>().unwrap_or(0);
        body.push_str(rest);
    }
    format!("*{count}\r\n{body}")
}

/// A test's own connection to the Redis under test, of either kind.
#[derive(Clone)]
pub enum TestConnection {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for TestConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

fn signal(pid: u32, which: &str) {
    let status = Command::new("kill").arg(which).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill {which} {pid} failed");
}

fn wait_ready(child: &mut Child, port: u16, timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if inline_command(port, "PING").map(|r| r.starts_with("+PONG")).unwrap_or(false) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Sends one inline command to the Redis on `port` and returns the raw reply.
pub fn inline_command(port: u16, command: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        let n = stream.read(&mut buf)?;
        out.extend_from_slice(&buf[..n]);
        if n == 0 || (out.ends_with(b"\r\n") && complete_reply(&out)) {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn complete_reply(out: &[u8]) -> bool {
    match out.first() {
        Some(b'$') => {
            let text = String::from_utf8_lossy(out);
            let Some((len, rest)) = text.split_once("\r\n") else { return false };
            let len: i64 = len[1..].parse().unwrap_or(-1);
            len < 0 || rest.len() >= len as usize + 2
        }
        Some(b'*') => true,
        _ => true,
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let status =
            Command::new("openssl").args(args).current_dir(dir).stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(
            status.map(|s| s.success()).unwrap_or(false),
            "`openssl {}` failed: the TLS test needs the openssl command (apt-get install -y openssl)",
            args.join(" ")
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=cachepatterns test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

/// A store that wraps a real one, counts calls, and can be told to fail or to be slow.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    pub gets: AtomicUsize,
    /// Batched reads (`get_many` calls), and the keys they asked for.
    pub get_manys: AtomicUsize,
    keys_in_get_manys: AtomicUsize,
    /// Reads that have their answer from the inner store (even if it is still held back).
    reads_done: AtomicUsize,
    pub applies: AtomicUsize,
    /// Writes the inner store has applied (even if their answer is still held back).
    applies_done: AtomicUsize,
    failing: AtomicBool,
    failing_writes: AtomicBool,
    delay_ms: AtomicU64,
    get_return_delay_ms: AtomicU64,
    /// Where writes are held, if they are.
    applies_held: tokio::sync::watch::Sender<Option<HoldApplies>>,
}

/// Where [`FaultyStore::hold_applies`] holds writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldApplies {
    /// Before they reach the store.
    BeforeTheStore,
    /// After the store applied them, before it answers.
    BeforeTheAnswer,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            gets: AtomicUsize::new(0),
            get_manys: AtomicUsize::new(0),
            keys_in_get_manys: AtomicUsize::new(0),
            reads_done: AtomicUsize::new(0),
            applies: AtomicUsize::new(0),
            applies_done: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            failing_writes: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            get_return_delay_ms: AtomicU64::new(0),
            applies_held: tokio::sync::watch::Sender::new(None),
        })
    }

    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Makes writes fail as a full disk does (transiently) while reads, pings and the health
    /// probe still work.
    pub fn set_failing_writes(&self, failing: bool) {
        self.failing_writes.store(failing, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Makes `get` read the store at once but return its (by then old) answer only after `delay`:
    /// a slow reader racing a writer.
    pub fn set_get_return_delay(&self, delay: Duration) {
        self.get_return_delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Holds writes `at` that point until [`FaultyStore::release_applies`]: before the store has
    /// them, or once it has and before it answers (a caller that gives up then never hears of it).
    pub fn hold_applies(&self, at: HoldApplies) {
        self.applies_held.send_replace(Some(at));
    }

    /// Lets held writes go on.
    pub fn release_applies(&self) {
        self.applies_held.send_replace(None);
    }

    async fn pass(&self, here: HoldApplies) {
        let mut held = self.applies_held.subscribe();
        let _ = held.wait_for(|at| *at != Some(here)).await;
    }

    /// How many writes the inner store has applied (or refused), answered or not.
    pub fn applies_done(&self) -> usize {
        self.applies_done.load(Ordering::SeqCst)
    }

    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    /// How many batched reads (`get_many` calls) were made.
    pub fn get_manys(&self) -> usize {
        self.get_manys.load(Ordering::SeqCst)
    }

    /// How many keys were read, one by one or in batches.
    pub fn keys_read(&self) -> usize {
        self.gets() + self.keys_in_get_manys.load(Ordering::SeqCst)
    }

    /// How many reads have their answer from the inner store.
    pub fn reads_done(&self) -> usize {
        self.reads_done.load(Ordering::SeqCst)
    }

    pub fn applies(&self) -> usize {
        self.applies.load(Ordering::SeqCst)
    }

    async fn before_call(&self) -> Result<(), StoreError> {
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable {
                message: "injected failure".into(),
                retry_after: Some(Duration::from_secs(2)),
                cause: None,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.before_call().await?;
        let result = self.inner.get(key).await;
        self.reads_done.fetch_add(1, Ordering::SeqCst);
        let delay = self.get_return_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        result
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Record>>, StoreError> {
        self.get_manys.fetch_add(1, Ordering::SeqCst);
        self.keys_in_get_manys.fetch_add(keys.len(), Ordering::SeqCst);
        self.before_call().await?;
        let result = self.inner.get_many(keys).await;
        self.reads_done.fetch_add(1, Ordering::SeqCst);
        let delay = self.get_return_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        result
    }

    async fn apply_with(
        &self,
        key: &str,
        version: u64,
        change: Change,
        options: &EntryOptions,
    ) -> Result<Applied, StoreError> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        self.before_call().await?;
        if self.failing_writes.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("injected: database or disk is full"));
        }
        self.pass(HoldApplies::BeforeTheStore).await;
        let applied = self.inner.apply_with(key, version, change, options).await;
        self.applies_done.fetch_add(1, Ordering::SeqCst);
        self.pass(HoldApplies::BeforeTheAnswer).await;
        applied
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        self.before_call().await?;
        self.inner.probe_write().await
    }

    async fn purge_tombstones(&self, older_than: cachepatterns::domain::time::Timestamp) -> Result<u64, StoreError> {
        self.inner.purge_tombstones(older_than).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.before_call().await?;
        self.inner.ping().await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

/// Settings for a test: `RedisCache` pointing at `redis`, plus `extra` overrides.
pub fn settings(redis: &str, extra: &[(&str, &str)]) -> Settings {
    let mut map: HashMap<String, String> = HashMap::new();
    map.insert("RedisCache".into(), redis.into());
    for (k, v) in extra {
        map.insert(k.to_string(), v.to_string());
    }
    Settings::from_map(&map).expect("test settings")
}

/// An app on a real Redis and a real SQLite store (wrapped to count and inject faults), wired by
/// the same composition root as the handler (`Application::assemble`).
pub struct TestApp {
    pub app: Application,
    pub store: Arc<FaultyStore>,
    pub sqlite: Arc<SqliteStore>,
    pub dir: TempDir,
}

/// A change to the parsed settings before an app is wired.
type Tune<'a> = Box<dyn FnOnce(&mut Settings) + 'a>;

/// How a test app is built: settings, store, clock and queue of the test's choice.
pub struct Build<'a> {
    connection: String,
    extra: &'a [(&'a str, &'a str)],
    clock: Arc<dyn Clock>,
    store: Option<Arc<dyn Store>>,
    queue: Option<Arc<dyn WriteQueue>>,
    tune: Option<Tune<'a>>,
}

impl<'a> Build<'a> {
    /// Time from `clock`.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Another store behind the fault-injecting wrapper (SQLite by default).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Another write-behind queue (the Redis Stream by default).
    pub fn queue(mut self, queue: Arc<dyn WriteQueue>) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Changes the parsed settings before the app is wired.
    pub fn tune(mut self, tune: impl FnOnce(&mut Settings) + 'a) -> Self {
        self.tune = Some(Box::new(tune));
        self
    }

    pub fn build(self) -> TestApp {
        let dir = TempDir::new("app");
        let mut settings = settings(&self.connection, self.extra);
        if let Some(tune) = self.tune {
            tune(&mut settings);
        }
        let sqlite = Arc::new(SqliteStore::open(&dir.path().join("store.db")).expect("sqlite"));
        let store = FaultyStore::new(self.store.unwrap_or_else(|| sqlite.clone()));
        let plugs = Plugs { store: store.clone(), clock: self.clock, queue: self.queue };
        let app = Application::assemble(settings, plugs).expect("the test app wires up");
        TestApp { app, store, sqlite, dir }
    }
}

impl TestApp {
    pub fn new(redis: &RedisServer, extra: &[(&str, &str)]) -> Self {
        Self::with_connection(&redis.connection_string(), extra)
    }

    pub fn with_connection(connection: &str, extra: &[(&str, &str)]) -> Self {
        Self::builder(connection, extra).build()
    }

    /// A test app to configure further.
    pub fn builder<'a>(connection: &str, extra: &'a [(&'a str, &'a str)]) -> Build<'a> {
        Build {
            connection: connection.to_string(),
            extra,
            clock: cachepatterns::ports::clock::system(),
            store: None,
            queue: None,
            tune: None,
        }
    }

    /// An app on a real Redis and SQLite whose time comes from `time`.
    pub fn on_clock(connection: &str, extra: &[(&str, &str)], time: Arc<dyn Clock>) -> Self {
        Self::builder(connection, extra).clock(time).build()
    }

    /// An app on a real Redis and the given store (wrapped to count and inject faults).
    pub fn with_store(redis: &RedisServer, store: Arc<dyn Store>, extra: &[(&str, &str)]) -> Self {
        Self::builder(&redis.connection_string(), extra).store(store).build()
    }

    /// A second app (another "process") sharing this one's Redis and store.
    pub fn sibling(&self, connection: &str, extra: &[(&str, &str)]) -> Application {
        let plugs = Plugs::store(self.store.clone());
        Application::assemble(settings(connection, extra), plugs).expect("the sibling app wires up")
    }

    /// Records a dead letter directly (as a consumer that gave up would).
    pub async fn record_dead_letter(&self, event: &str) -> DeadLetterId {
        let failed = Failed { event, reason: "test", source: "test", attempts: 1 };
        self.app.dead_letters().record(failed).await.expect("dead letter recorded")
    }
}

/// The in-process write-behind consumer of `app`, as the handler wires it, with the reader and the
/// drain policy tuned by the test (`block` starts short so that rounds are quick).
pub fn stream_consumer(
    app: &Application,
    block: Duration,
    tune: impl FnOnce(
        &mut cachepatterns::adapters::redis::ReaderConfig,
        &mut cachepatterns::patterns::write_behind::DrainPolicy,
    ),
) -> cachepatterns::patterns::QueueConsumer {
    let mut reader = cachepatterns::adapters::redis::ReaderConfig { block, ..Default::default() };
    let mut drain = app.settings.write_behind;
    tune(&mut reader, &mut drain);
    app.write_behind_consumer(reader, drain).expect("the consumer wires up")
}

/// Follows `app`'s invalidation feed (alone, no other worker) and waits until it is live: a
/// running service always has it, and without it every read also fetches the invalidation
/// clocks (see docs/invalidation.md). Waiting is bounded.
pub async fn live_feed(app: &Application) -> cachepatterns::startup::Workers {
    let workers = app.follow_invalidations();
    let started = std::time::Instant::now();
    while !app.redis.feed_is_live() {
        assert!(started.elapsed() < Duration::from_secs(10), "the invalidation feed did not come up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    workers
}

/// A deterministic pseudo-random sequence (xorshift64*): randomized tests replay the same run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
