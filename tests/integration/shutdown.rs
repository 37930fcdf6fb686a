//! Graceful shutdown of the real `handler` binary: on SIGTERM the background workers are cancelled
//! and awaited within 10 s (`startup::Workers`), open requests get the same 10 s, and the process
//! exits with status 0 — also when Redis has been gone (killed), hung (SIGSTOP), or its host name
//! stopped resolving for a while, with the default write-behind consumer on the Redis Stream, the
//! invalidation feed, and the refresh-ahead timer running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cachepatterns::domain::options::EntryOptions;
use cachepatterns::ports::store::{Applied, Change, Record, StoreError};
use serde_json::{Value, json};

use crate::common;
use common::process::Handler;
use common::{RedisServer, until};

/// The design's 10 s for open requests and workers, plus the handler's own caps after them (2 s to
/// flush telemetry, 1 s for the runtime's teardown; its watchdog exits at 14 s whatever runs), plus
/// a second of margin for a debug binary on a loaded machine. With Redis gone the handler exits in
/// about a second; before the fix an unresolvable Redis host name held it for the resolver's
/// timeout (here a minute: it was still running at this bound).
const EXIT_WITHIN: Duration = Duration::from_secs(15);

/// How Redis goes away.
#[derive(Debug)]
enum Outage {
    /// The server is killed: connections are refused.
    Killed,
    /// The server is frozen (SIGSTOP): connections open, nothing answers.
    Hung,
    /// The server is killed and its host name, resolved so far from `hosts` (bind-mounted over
    /// `/etc/hosts`), is removed from it: lookups go to a DNS server that never answers.
    Unresolvable { hosts: std::path::PathBuf },
}

/// A `RefreshAhead` timer invocation, as the host posts it on schedule.
fn timer_envelope() -> String {
    json!({
        "Data": {"timer": {"Schedule": {"AdjustForDST": true}, "ScheduleStatus": null, "IsPastDue": false}},
        "Metadata": {"sys": {"MethodName": "RefreshAhead"}}
    })
    .to_string()
}

/// One request on a fresh connection that gives up after `wait`; the status, 0 when none came.
fn hit(port: u16, method: &str, path: &str, body: &str, wait: Duration) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return 0 };
    let _ = stream.set_read_timeout(Some(wait));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes())).is_err() {
        return 0;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    common::process::parse_response(&response).status
}

/// Polls `api/health` until Redis is reported down, at most `within`.
fn wait_until_redis_is_down(handler: &Handler, within: Duration) -> Value {
    let started = Instant::now();
    let mut last = Value::Null;
    while started.elapsed() < within {
        if let Ok((_, body)) = handler.request("GET", "/api/health", None) {
            if body["redis"]["status"] == "down" {
                return body;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the handler did not report Redis down within {within:?}; last health: {last}\n{}", handler.log());
}

/// Starts the handler on `redis` (reached at `connection`) with every default worker, uses each
/// pattern once, takes Redis away (`outage`) for `down_for` after the handler noticed while the
/// host keeps calling (reads, write-behind writes, timer runs), then sends SIGTERM: the process
/// must exit, with status 0, within [`EXIT_WITHIN`]. Returns how long the exit took.
fn exits_on_sigterm_after(mut redis: RedisServer, connection: &str, outage: Outage, down_for: Duration) -> Duration {
    let mut handler = Handler::start_logging(&[("RedisCache", connection)]);
    let (status, body) = handler.request("GET", "/api/health", None).unwrap();
    assert_eq!((status, &body["redis"]["status"]), (200, &json!("up")), "{body}");
    // Every worker has something to do: a queued write for the consumer, a near-cached entry the
    // feed invalidates, hot keys for the timer.
    assert_eq!(handler.request("PUT", "/api/write-behind/wb", Some("1")).unwrap().0, 202);
    assert_eq!(handler.request("PUT", "/api/write-through/hot", Some("2")).unwrap().0, 200);
    for _ in 0..3 {
        assert_eq!(handler.request("GET", "/api/refresh-ahead/hot", None).unwrap().0, 200);
        assert_eq!(handler.request("GET", "/api/cache-aside/hot", None).unwrap().0, 200);
    }
    assert_eq!(handler.request("POST", "/RefreshAhead", Some(&timer_envelope())).unwrap().0, 200);

    let label = format!("{outage:?}");
    match outage {
        Outage::Killed => redis.stop(),
        Outage::Hung => redis.pause(),
        Outage::Unresolvable { hosts } => {
            // Rewritten in place: the bind mount follows the file, and every lookup reads it again.
            std::fs::write(&hosts, "127.0.0.1 localhost\n").expect("rewrite the hosts file");
            redis.stop();
        }
    }
    // The host keeps calling while Redis is away, up to and past the SIGTERM.
    let calling = Arc::new(AtomicBool::new(true));
    let port = handler.port;
    let traffic = {
        let calling = calling.clone();
        std::thread::spawn(move || {
            let timer = timer_envelope();
            let mut n = 0u32;
            while calling.load(Ordering::SeqCst) {
                n += 1;
                let wait = Duration::from_secs(30);
                hit(port, "GET", "/api/cache-aside/hot", "", wait);
                hit(port, "PUT", &format!("/api/write-behind/k{n}"), "3", wait);
                hit(port, "DELETE", "/api/write-through/hot", "", wait);
                hit(port, "POST", "/RefreshAhead", &timer, wait);
            }
        })
    };
    let health = wait_until_redis_is_down(&handler, Duration::from_secs(30));
    assert_eq!(health["status"], "unhealthy", "{health}");
    // The outage lasts: reconnect loops reach their longer back-offs.
    let noticed = Instant::now();
    while noticed.elapsed() < down_for {
        wait_until_redis_is_down(&handler, Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(200));
    }

    let exited = handler.terminate_within(EXIT_WITHIN);
    calling.store(false, Ordering::SeqCst);
    let log = handler.log();
    let (status, took) = exited.unwrap_or_else(|bound| {
        panic!("{label}: the handler was still running {bound:?} after SIGTERM\n{log}");
    });
    traffic.join().unwrap();
    assert!(status.success(), "{label}: exit status {status} ({took:?} after SIGTERM)\n{log}");
    eprintln!("{label}, down for {down_for:?}: exited {took:?} after SIGTERM");
    took
}

#[test]
fn exits_promptly_on_sigterm_when_redis_was_killed() {
    let redis = RedisServer::start();
    let connection = redis.connection_string();
    exits_on_sigterm_after(redis, &connection, Outage::Killed, Duration::from_secs(5));
}

#[test]
fn exits_promptly_on_sigterm_when_redis_is_hung() {
    let redis = RedisServer::start();
    let connection = redis.connection_string();
    exits_on_sigterm_after(redis, &connection, Outage::Hung, Duration::from_secs(5));
}

/// Set in the copy of the test binary that runs inside its own user, mount and network namespaces.
const IN_NAMESPACES: &str = "CACHEPATTERNS_TEST_IN_NAMESPACES";

/// Redis is reached by host name (as on Azure), and during the outage the name stops resolving
/// and DNS stops answering (each lookup waits out the resolver's timeout). Every connection
/// attempt looks the name up on a blocking thread; those lookups must not hold the exit.
///
/// DNS cannot be made to hang for one process without namespaces: the test runs itself again
/// under `unshare --user --map-root-user --mount --net`, where it may bind-mount `/etc/hosts` and
/// `/etc/resolv.conf` and serve a DNS port that never answers. Where unprivileged user namespaces
/// are not allowed, it says so and passes.
#[test]
fn exits_promptly_on_sigterm_when_the_redis_host_name_stops_resolving() {
    const NAME: &str = "exits_promptly_on_sigterm_when_the_redis_host_name_stops_resolving";
    if std::env::var_os(IN_NAMESPACES).is_some() {
        return redis_host_name_stops_resolving();
    }
    let usable = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "--net", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        eprintln!("SKIPPED: unprivileged user namespaces (`unshare --user --mount --net`) are not available here");
        return;
    }
    let test = std::env::current_exe().expect("the test binary");
    let output = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "--net", "--"])
        .arg(test)
        .args([&format!("shutdown::{NAME}"), "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_NAMESPACES, "1")
        .output()
        .expect("run the test in its namespaces");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the test ran in its namespaces: {text}");
    eprintln!("{}", text.lines().filter(|l| l.contains("after SIGTERM")).collect::<Vec<_>>().join("\n"));
}

/// The part of [`exits_promptly_on_sigterm_when_the_redis_host_name_stops_resolving`] that runs in
/// its namespaces (as root there, with a loopback of its own).
fn redis_host_name_stops_resolving() {
    let run = |program: &str, args: &[&str]| {
        let status = std::process::Command::new(program).args(args).status();
        assert!(status.is_ok_and(|s| s.success()), "{program} {args:?} failed");
    };
    run("ip", &["link", "set", "lo", "up"]);
    let dir = common::TempDir::new("dns");
    let (hosts, resolv) = (dir.path().join("hosts"), dir.path().join("resolv.conf"));
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.1 redis.shutdown.test\n").unwrap();
    // One lookup waits up to a minute (two attempts of 30 s, glibc's longest timeout).
    std::fs::write(&resolv, "nameserver 127.0.0.1\noptions timeout:30 attempts:2\n").unwrap();
    run("mount", &["--bind", hosts.to_str().unwrap(), "/etc/hosts"]);
    run("mount", &["--bind", resolv.to_str().unwrap(), "/etc/resolv.conf"]);
    // A DNS server that takes every query and never answers.
    let dns = std::net::UdpSocket::bind("127.0.0.1:53").expect("bind the DNS port");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while dns.recv_from(&mut buf).is_ok() {}
    });
    let redis = RedisServer::start_single();
    let connection = format!("redis.shutdown.test:{}", redis.port);
    exits_on_sigterm_after(redis, &connection, Outage::Unresolvable { hosts }, Duration::from_secs(5));
}

/// A request that does not finish (its client sends the body a byte at a time, then stalls) gets
/// the same bounded time as the workers: its connection is cut and the process exits, instead of
/// waiting for the request's own timeouts (the body's 30 s).
#[test]
fn a_request_that_does_not_finish_does_not_hold_the_exit() {
    use std::io::{BufRead, BufReader, Write};
    let redis = RedisServer::start();
    let mut handler = Handler::start_logging(&[("RedisCache", &redis.connection_string())]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", handler.port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = "PUT /api/write-through/stalled HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    // `100 Continue` comes when the handler starts reading the body: the request is in progress.
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 100"), "{line:?}");
    stream.write_all(b"1").unwrap();

    let (status, took) = handler
        .terminate_within(EXIT_WITHIN)
        .unwrap_or_else(|bound| panic!("still running {bound:?} after SIGTERM\n{}", handler.log()));
    let log = handler.log();
    assert!(status.success(), "exit status {status}\n{log}");
    assert!(log.contains("were cut off"), "the cut request is logged\n{log}");
    eprintln!("a stalled request: exited {took:?} after SIGTERM");
}

/// A store whose reads or writes, once held, never finish. When a held call is dropped (its
/// request was cut, or its task stopped), it notes whether the process's node-id lease was still in
/// Redis at that moment.
struct HeldStore {
    inner: Arc<dyn cachepatterns::ports::store::Store>,
    redis: Arc<RedisServer>,
    /// The lease key, once the process holds it.
    lease: std::sync::Mutex<String>,
    hold_reads: AtomicBool,
    hold_writes: AtomicBool,
    /// Calls being held.
    entered: std::sync::atomic::AtomicUsize,
    /// For each held call dropped: whether the lease key still existed then.
    cut: std::sync::Mutex<Vec<bool>>,
}

/// Dropped with a held call's future.
struct OnCut<'a>(&'a HeldStore);

impl Drop for OnCut<'_> {
    fn drop(&mut self) {
        // Never a panic here: this may run while a failed test unwinds.
        let lease = self.0.lease.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let exists = self.0.redis.command(&format!("EXISTS {lease}"));
        self.0.cut.lock().unwrap_or_else(|p| p.into_inner()).push(exists.is_ok_and(|r| r.starts_with(":1")));
    }
}

impl HeldStore {
    /// A SQLite store in `dir`, nothing held yet.
    fn new(redis: &Arc<RedisServer>, dir: &common::TempDir) -> Arc<Self> {
        let sqlite = cachepatterns::adapters::sqlite::SqliteStore::open(&dir.path().join("store.db")).expect("sqlite");
        Arc::new(Self {
            inner: Arc::new(sqlite),
            redis: redis.clone(),
            lease: std::sync::Mutex::new(String::new()),
            hold_reads: AtomicBool::new(false),
            hold_writes: AtomicBool::new(false),
            entered: std::sync::atomic::AtomicUsize::new(0),
            cut: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Waits (bounded) until the process holds its node-id lease, and notes its key.
    async fn note_the_lease(&self) {
        let leases = || self.redis.command("KEYS \u{1f}node\u{1f}*").expect("KEYS");
        until("the node-id lease is taken", || leases().starts_with("*1\r\n")).await;
        *self.lease.lock().unwrap() = leases().lines().nth(2).expect("the lease key").to_string();
    }

    async fn held(&self) -> ! {
        let _cut = OnCut(self);
        self.entered.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

#[async_trait::async_trait]
impl cachepatterns::ports::store::Store for HeldStore {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        if self.hold_reads.load(Ordering::SeqCst) {
            self.held().await
        }
        self.inner.get(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Record>>, StoreError> {
        if self.hold_reads.load(Ordering::SeqCst) {
            self.held().await
        }
        self.inner.get_many(keys).await
    }

    async fn apply_with(
        &self,
        key: &str,
        version: u64,
        change: Change,
        options: &EntryOptions,
    ) -> Result<Applied, StoreError> {
        if self.hold_writes.load(Ordering::SeqCst) {
            self.held().await
        }
        self.inner.apply_with(key, version, change, options).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

/// A request still running when the drain time is up is cut, and its write (which runs on to its
/// end without its request, like work requests leave behind) is cut before the node-id lease its
/// versions come from is given back. A write left running past that could write with a node id
/// another instance may lease by then (versions that tie). The drain time is injected (200 ms) into
/// the server the handler runs, and the steps after it are the handler's (`startup::run`): the
/// workers are told at the signal, and stopped once `serve` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_running_after_the_drain_is_cut_before_the_lease_is_given_back() {
    use std::io::{Read, Write};
    let redis = Arc::new(RedisServer::start());
    let dir = common::TempDir::new("held-writes");
    let store = HeldStore::new(&redis, &dir);
    store.hold_writes.store(true, Ordering::SeqCst);
    let t = common::TestApp::builder(&redis.connection_string(), &[]).store(store.clone()).build();
    let workers = t.app.start_workers().expect("the workers start");
    store.note_the_lease().await;
    let leases = || redis.command("KEYS \u{1f}node\u{1f}*").expect("KEYS");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().unwrap().port();
    let (signal, signalled) = tokio::sync::oneshot::channel::<()>();
    let limits = cachepatterns::http::Limits::default();
    let router = t.app.router_with(limits);
    let stopping = async {
        let _ = signalled.await;
        workers.cancel();
    };
    let drain = Duration::from_millis(200);
    let server = cachepatterns::http::serve(listener, router, limits, stopping, drain);
    let client = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = "PUT /api/write-through/held HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1\r\n\r\n1";
        stream.write_all(head.as_bytes()).expect("send the request");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        answer
    });
    let serving = async {
        until("the write reaches the store", || store.entered.load(Ordering::SeqCst) == 1).await;
        let _ = signal.send(());
    };
    let (served, ()) = tokio::join!(tokio::time::timeout(Duration::from_secs(10), server), serving);
    served.expect("serve returns after the drain time").expect("serve");
    assert!(store.cut.lock().unwrap().is_empty(), "the write outlived its request");
    // What `startup::run` does once `serve` returned (with 2 s left: the write gets 1 s to finish,
    // then is cut).
    let stopped = workers.stop(Duration::from_secs(2)).await;
    let cut = store.cut.lock().unwrap().clone();
    assert_eq!(cut, vec![true], "the held write was cut (one entry) while the lease was held (true)");
    assert!(stopped, "the workers stop");
    assert!(leases().starts_with("*0\r\n"), "the lease is given back: {:?}", leases());
    let answer = client.join().expect("the client");
    assert!(answer.is_empty(), "the cut request got no answer: {:?}", String::from_utf8_lossy(&answer));
}

/// Sends `request` (without its final blank line) on a connection of its own and returns the
/// whole answer.
fn http(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Work that requests start and that outlives them — an eager refresh (Refresh-Ahead), the load that
/// goes on after a stale value was served (soft timeout), and the store read of a bulk load after
/// its stale values were served — is stopped before the node-id lease is given back: it takes
/// stamps from the version clock (a load stamps what it read before reading), and another instance
/// may lease the id next (stamps and versions that tie). Here each one's store read never
/// finishes; the requests are answered, `serve` returns, and then the handler's steps
/// (`startup::run`) stop the workers: every held read must be dropped while the lease key is still
/// in Redis, and the lease is given back afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_loads_and_refreshes_are_stopped_before_the_lease_is_given_back() {
    use cachepatterns::domain::key::Key;
    use cachepatterns::ports::clock::ManualClock;
    let redis = Arc::new(RedisServer::start());
    let dir = common::TempDir::new("held-reads");
    let store = HeldStore::new(&redis, &dir);
    let time = ManualClock::starting_now();
    let extra = [("FailSafeSoftTimeoutMs", "50"), ("L1MaxEntries", "0")];
    let t =
        common::TestApp::builder(&redis.connection_string(), &extra).store(store.clone()).clock(time.clone()).build();
    let workers = t.app.start_workers().expect("the workers start");
    store.note_the_lease().await;
    let leases = || redis.command("KEYS \u{1f}node\u{1f}*").expect("KEYS");

    // Three keys cached with a 10 s TTL (stale 290 s later, within the fail-safe), one with the
    // default TTL (fresh 290 s later, past the refresh-ahead factor).
    let s = &t.app.services;
    let short = EntryOptions { tags: Vec::new(), ttl: Some(Duration::from_secs(10)) };
    for key in ["stale-one", "stale-a", "stale-b"] {
        s.write_through.write_with(&Key::new(key).unwrap(), Change::Upsert(json!(key)), &short).await.unwrap();
    }
    s.write_through.write(&Key::new("refreshed").unwrap(), Change::Upsert(json!(1))).await.unwrap();
    time.advance(Duration::from_secs(290));
    store.hold_reads.store(true, Ordering::SeqCst);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().unwrap().port();
    let (signal, signalled) = tokio::sync::oneshot::channel::<()>();
    let limits = cachepatterns::http::Limits::default();
    let router = t.app.router_with(limits);
    let stopping = async {
        let _ = signalled.await;
        workers.cancel();
    };
    let server = cachepatterns::http::serve(listener, router, limits, stopping, Duration::from_millis(200));
    let requests = [
        "GET /api/refresh-ahead/refreshed HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_string(),
        "GET /api/cache-aside/stale-one HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_string(),
        {
            let body = r#"{"keys":["stale-a","stale-b"]}"#;
            format!(
                "POST /api/cache-aside HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        },
    ];
    let client = std::thread::spawn(move || requests.iter().map(|r| http(port, r)).collect::<Vec<_>>());
    let serving = async {
        until("the requests are answered", || client.is_finished()).await;
        let answers = client.join().expect("the client");
        until("the three background reads are held", || store.entered.load(Ordering::SeqCst) == 3).await;
        let _ = signal.send(());
        answers
    };
    let (served, answers) = tokio::join!(tokio::time::timeout(Duration::from_secs(10), server), serving);
    served.expect("serve returns").expect("serve");
    for answer in &answers {
        assert!(answer.starts_with("HTTP/1.1 200"), "every request was answered at once: {answer}");
    }
    assert!(answers[0].contains("x-cache: hit") && answers[1].contains("x-cache: stale"), "{answers:?}");
    assert!(store.cut.lock().unwrap().is_empty(), "the background reads ran on after their requests");
    // What `startup::run` does once `serve` returned.
    let stopped = workers.stop(Duration::from_secs(5)).await;
    let cut = store.cut.lock().unwrap().clone();
    assert_eq!(
        cut,
        vec![true; 3],
        "when the workers stopped, every background read had been stopped (one entry each) while the lease was held (true)"
    );
    assert!(stopped, "the workers stop");
    assert!(leases().starts_with("*0\r\n"), "the lease is given back: {:?}", leases());
}

/// Once the work requests leave running has been stopped (the last step before the node-id lease
/// is given back), a write or an invalidation can no longer begin: it is refused with
/// `503 stopping`, never run with versions or stamps that may outlive the lease. (The handler
/// serves no request by then; this is what the services answer.)
#[tokio::test]
async fn a_write_after_the_stop_is_refused_with_503_stopping() {
    use cachepatterns::ports::Cache;
    use cachepatterns::ports::store::Store;
    use common::host::{Call, FunctionDef, MODES, send};
    let redis = RedisServer::start();
    let t = common::TestApp::new(&redis, &[]);
    let workers = t.app.start_workers().expect("the workers start");
    assert!(workers.stop(Duration::from_secs(5)).await, "the workers stop");
    let router = t.app.router();
    for function in ["WriteThrough", "WriteBehind"] {
        let def = FunctionDef::load(function);
        for mode in MODES {
            let put = send(&router, mode, &def, &Call::new("PUT", Some("late")).json(&json!(1))).await;
            assert_eq!((put.status, put.header("retry-after")), (503, Some("1")), "{function} {mode:?}: {}", put.body);
            assert_eq!(put.body["error"]["code"], "stopping", "{}", put.body);
        }
    }
    let invalidate = FunctionDef::load("CacheInvalidate");
    for mode in MODES {
        let evict = send(&router, mode, &invalidate, &Call::new("DELETE", Some("late"))).await;
        assert_eq!((evict.status, &evict.body["error"]["code"]), (503, &json!("stopping")), "{}", evict.body);
    }
    assert_eq!(t.sqlite.get("late").await.unwrap(), None, "nothing was written");
    assert_eq!(redis.command("XLEN \u{1f}writebehind").expect("XLEN"), ":0\r\n", "nothing was queued");
    assert_eq!(t.app.redis.get("late").await.unwrap(), None, "nothing was cached");
}
