//! Redis Cluster specifics: the cluster is found out by itself, and a master that dies under load
//! is survived. (Every other suite also runs on a cluster: `CACHEPATTERNS_TEST_REDIS=cluster`, as
//! `scripts/test.sh` does.)

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cachepatterns::ports::store::Store;
use common::TestApp;
use common::cluster::RedisCluster;
use common::host::{Call, FunctionDef, Mode, send};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_is_found_out_from_one_node_and_every_key_is_cached() {
    let cluster = RedisCluster::start(3, 0);
    let t = TestApp::with_connection(&cluster.connection_string(), &[]);
    let router = t.app.router();
    let (through, aside) = (FunctionDef::load("WriteThrough"), FunctionDef::load("CacheAside"));
    let mut masters = std::collections::HashSet::new();
    for i in 0..30 {
        let key = format!("k{i}");
        masters.insert(cluster.master_of(&key));
        let put = send(&router, Mode::Direct, &through, &Call::new("PUT", Some(&key)).json(&json!(i))).await;
        assert_eq!((put.status, put.header("x-cache")), (200, Some("updated")), "{key}: {}", put.body);
        let read = send(&router, Mode::Direct, &aside, &Call::new("GET", Some(&key))).await;
        assert_eq!((read.status, read.header("x-cache")), (200, Some("hit")), "{key}: {}", read.body);
    }
    assert_eq!(masters.len(), 3, "the keys spread over every master");
    assert_eq!(t.app.redis.is_cluster(), Some(true));
}

/// One request of the load, and what it got.
#[derive(Debug)]
struct Answered {
    what: String,
    status: u16,
    took: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_dies_under_load_and_the_service_carries_on() {
    let mut cluster = RedisCluster::start(3, 1);
    let t = TestApp::with_connection(&cluster.connection_string(), &[]);
    let workers = t.app.start_workers().unwrap();
    let router = t.app.router();
    let (through, aside, behind) =
        (FunctionDef::load("WriteThrough"), FunctionDef::load("CacheAside"), FunctionDef::load("WriteBehind"));
    // The master to kill: the one holding the write-behind stream.
    let victim = cluster.master_of("\u{1f}writebehind");
    for i in 0..20 {
        let put =
            send(&router, Mode::Direct, &behind, &Call::new("PUT", Some(&format!("before{i}"))).json(&json!(i))).await;
        assert_eq!(put.status, 202);
    }
    // "Given the replica had it": Redis replicates asynchronously; wait until it has.
    let started = Instant::now();
    while common::inline_command(victim, "WAIT 1 1000").map(|r| r.trim() != ":1").unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(30), "the replica never caught up");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (router, stop) = (router.clone(), stop.clone());
        let (through, aside, behind) = (through.clone(), aside.clone(), behind.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                for (what, def, call) in [
                    ("write-through", &through, Call::new("PUT", Some(&format!("wt{}", i % 10))).json(&json!(i))),
                    ("cache-aside", &aside, Call::new("GET", Some(&format!("wt{}", i % 10)))),
                    ("write-behind", &behind, Call::new("PUT", Some(&format!("during{i}"))).json(&json!(i))),
                ] {
                    let started = Instant::now();
                    let reply = send(&router, Mode::Direct, def, &call).await;
                    if reply.status >= 500 && reply.status != 503 {
                        eprintln!("{what}: {} {}", reply.status, reply.body);
                    }
                    answers.push(Answered {
                        what: format!("{what} {}", call.key.clone().unwrap_or_default()),
                        status: reply.status,
                        took: started.elapsed(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill(victim);
    let killed_at = Instant::now();
    // The replica is promoted once the others have marked the master as failed.
    while cluster.promoted_master_of("\u{1f}writebehind").is_none_or(|port| port == victim) {
        assert!(killed_at.elapsed() < Duration::from_secs(30), "no failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.wait_ok();
    eprintln!("failover took {:?}", killed_at.elapsed());
    // Keep the load on until the service is back on the new master for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let answers = load.await.unwrap();

    let slowest = answers.iter().max_by_key(|a| a.took).unwrap();
    assert!(slowest.took < Duration::from_millis(2500), "{slowest:?}");
    for a in &answers {
        assert!(matches!(a.status, 200 | 202 | 404 | 503), "{a:?}");
    }
    let failed = answers.iter().filter(|a| a.status == 503).count();
    eprintln!("{} requests during the failover: {} answered 503, slowest {:?}", answers.len(), failed, slowest.took);
    // Back to normal by itself: the last requests all worked.
    let tail = &answers[answers.len().saturating_sub(9)..];
    assert!(tail.iter().all(|a| a.status != 503), "{tail:?}");
    let read = send(&router, Mode::Direct, &aside, &Call::new("GET", Some("wt1"))).await;
    assert_eq!(read.header("x-cache"), Some("hit"), "the cache is used again");

    // No acknowledged write-behind write is lost.
    let accepted: Vec<String> = (0..20)
        .map(|i| format!("before{i}"))
        .chain(
            answers.iter().filter(|a| a.status == 202).map(|a| a.what.trim_start_matches("write-behind ").to_string()),
        )
        .collect();
    let started = Instant::now();
    loop {
        let mut missing = Vec::new();
        for key in &accepted {
            if t.sqlite.get(key).await.unwrap().is_none() {
                missing.push(key.clone());
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "acknowledged writes not applied: {missing:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{} acknowledged write-behind writes, all applied", accepted.len());
    assert!(workers.stop(Duration::from_secs(10)).await, "the background workers stop when asked");
}

/// Azure's clusters speak TLS on every node: the handler reaches every shard with TLS, trusting
/// the CA it is given, from the portal-style connection string of one node.
#[test]
fn every_node_of_a_tls_cluster_is_reached_with_tls() {
    let cluster = common::cluster::TlsRedisCluster::start(3);
    let ca = cluster.ca_path().display().to_string();
    let conn = format!("127.0.0.1:{},ssl=True,abortConnect=False", cluster.ports[0]);
    let handler = common::process::Handler::start(&[("RedisCache", &conn), ("SSL_CERT_FILE", &ca)]);
    for i in 0..30 {
        let path = format!("/api/write-through/tls{i}");
        assert_eq!(handler.request("PUT", &path, Some(&i.to_string())).unwrap().0, 200);
        let answer = handler.exchange("GET", &format!("/api/cache-aside/tls{i}"), &[], "").unwrap();
        assert_eq!((answer.status, answer.header("x-cache")), (200, Some("hit")), "tls{i}: {:?}", answer.body);
    }
}
