//! Keys survive the real host: no write lands on a key other than the one the client named.
//!
//! The host emulation (`common::host`) does to each request what the Functions host does in each
//! mode (Kestrel's path decoding and dot-segment removal, routing, the payload envelope, the
//! reverse proxy's re-escaping, legacy forwarding's URL re-parse). For every key below, a client
//! that percent-encodes the key in the path, or sends it in `?key=`, must find its value stored
//! under exactly that key, or get a `4xx` and nothing written anywhere.

use crate::common;

use cachepatterns::ports::store::Store;
use common::host::{Call, FunctionDef, MODES, Mode, host_json_mode, send};
use common::{RedisServer, TestApp};
use serde_json::json;

/// What a write of `key` in the path must do.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// Stored under this key.
    Stored(&'static str),
    /// A 4xx; nothing written anywhere.
    Refused,
}

/// The keys, and what the path carries them to through the host (payload and proxy modes).
/// Without a host (direct), every key arrives exactly as encoded.
const TABLE: &[(&str, Expect)] = &[
    ("a?b", Expect::Stored("a?b")),
    ("a#b", Expect::Stored("a#b")),
    ("a\\b", Expect::Stored("a\\b")),
    ("a%41", Expect::Stored("a%41")),
    ("?x", Expect::Stored("?x")),
    ("#", Expect::Stored("#")),
    ("a/b", Expect::Stored("a/b")),
    ("a b", Expect::Stored("a b")),
    ("ü", Expect::Stored("ü")),
    ("日本語/キー", Expect::Stored("日本語/キー")),
    ("a+b", Expect::Stored("a+b")),
    ("+", Expect::Stored("+")),
    ("a%b", Expect::Stored("a%b")),
    ("%", Expect::Stored("%")),
    ("%25", Expect::Stored("%25")),
    ("100%", Expect::Stored("100%")),
    ("a/", Expect::Stored("a/")),
    ("/a", Expect::Stored("/a")),
    ("a/../b", Expect::Stored("a/../b")),
    ("a/./b", Expect::Stored("a/./b")),
    ("...", Expect::Stored("...")),
    ("  spaced  ", Expect::Stored("  spaced  ")),
    // Keys that read as JSON are still just text (found by the property test: `"x"` lost its quotes).
    ("\"quoted\"", Expect::Stored("\"quoted\"")),
    ("\"", Expect::Stored("\"")),
    ("[1,2]", Expect::Stored("[1,2]")),
    ("{\"a\":1}", Expect::Stored("{\"a\":1}")),
    ("\"[1]\"", Expect::Stored("\"[1]\"")),
    ("007", Expect::Stored("007")),
    ("true", Expect::Stored("true")),
    // Dot segments never reach a function: URLs drop them. They travel in `?key=`.
    (".", Expect::Refused),
    ("..", Expect::Refused),
    // The host cannot tell a literal `%2F` from an encoded `/`: in a path, `%2F` means `/`.
    ("%2F", Expect::Stored("/")),
    ("a%2Fb", Expect::Stored("a/b")),
    ("a%2fb", Expect::Stored("a/b")),
];

async fn rows(t: &TestApp) -> i64 {
    let path = t.sqlite.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        rusqlite::Connection::open(path).unwrap().query_row("SELECT count(*) FROM items", [], |r| r.get(0)).unwrap()
    })
    .await
    .unwrap()
}

/// Writes `key` in `mode` (in the path, or in `?key=`) and checks where the value landed.
async fn check(t: &TestApp, router: &axum::Router, mode: Mode, key: &str, in_query: bool, expect: &Expect) {
    let (through, aside) = (FunctionDef::load("WriteThrough"), FunctionDef::load("CacheAside"));
    let value = json!(format!("value of {key:?} in {mode:?}, query {in_query}"));
    let call = if in_query { Call::new("PUT", None).query("key", key) } else { Call::new("PUT", Some(key)) };
    let before = rows(t).await;
    let put = send(router, mode, &through, &call.json(&value)).await;
    let case = format!("key {key:?} {} in {mode:?}", if in_query { "in ?key=" } else { "in the path" });
    match expect {
        Expect::Stored(stored) => {
            assert_eq!((put.status, &put.body["key"]), (200, &json!(stored)), "{case}: {}", put.body);
            assert_eq!(t.sqlite.get(stored).await.unwrap().and_then(|r| r.value), Some(value.clone()), "{case}");
            let read_call =
                if in_query { Call::new("GET", None).query("key", key) } else { Call::new("GET", Some(key)) };
            let read = send(router, mode, &aside, &read_call).await;
            assert_eq!((read.status, &read.body["key"], &read.body["value"]), (200, &json!(stored), &value), "{case}");
        }
        Expect::Refused => {
            assert!((400..500).contains(&put.status), "{case}: {} {}", put.status, put.body);
            assert_eq!(rows(t).await, before, "{case}: nothing may be written anywhere");
            if put.status == 400 {
                let message = put.body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("?key="), "{case}: the 400 says how to send the key: {message}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_key_lands_on_itself_through_the_host_and_without_it() {
    assert_eq!(host_json_mode(), Mode::Payload, "host.json selects the invocation payload");
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    for (key, through_host) in TABLE {
        for mode in MODES {
            // Without the host, the path is decoded exactly once: every key is exact.
            let expect = if mode == Mode::Direct { Expect::Stored(key) } else { through_host.clone() };
            check(&t, &router, mode, key, false, &expect).await;
            // In `?key=` every key is exact, in every mode.
            check(&t, &router, mode, key, true, &Expect::Stored(key)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paths_a_client_builds_by_hand() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let through = FunctionDef::load("WriteThrough");
    for mode in MODES {
        // A trailing `/` ends the path: it is not part of the key.
        let put =
            send(&router, mode, &through, &Call::new("PUT", None).path("/api/write-through/k/").json(&json!(1))).await;
        assert_eq!((put.status, &put.body["key"]), (200, &json!("k")), "{mode:?}");
        // Unencoded `/` in a key: the host routes one segment only, so nothing is written.
        let (x, y) = (format!("x-{mode:?}"), format!("x-{mode:?}/y"));
        let path = format!("/api/write-through/{y}");
        let put = send(&router, mode, &through, &Call::new("PUT", None).path(&path).json(&json!(1))).await;
        if mode != Mode::Direct {
            assert_eq!(put.status, 404, "{mode:?}");
            assert!(t.sqlite.get(&y).await.unwrap().is_none() && t.sqlite.get(&x).await.unwrap().is_none());
        }
        // `..` in the middle removes the segment before it: the host sees another path.
        let put =
            send(&router, mode, &through, &Call::new("PUT", None).path("/api/write-through/q/../r").json(&json!(2)))
                .await;
        if mode != Mode::Direct {
            assert_eq!((put.status, &put.body["key"]), (200, &json!("r")), "{mode:?}: the path names r");
        }
    }
}

/// The host's legacy forwarding (`enableForwardingHttpRequest: true`) re-parses the decoded path
/// as a URL: these keys would arrive as other keys, which is why `host.json` does not use it. A
/// request forwarded that way (the host's version header, no proxy invocation id) has its path
/// key refused, with the way out; `?key=` is re-encoded properly and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn legacy_forwarding_refuses_path_keys_it_would_change() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let (through, aside) = (FunctionDef::load("WriteThrough"), FunctionDef::load("CacheAside"));
    for (key, arrives_as) in [("a?b", "a"), ("a#b", "a"), ("a\\b", "a/b"), ("a%2541", "aA"), ("plain", "plain")] {
        let path = format!("/api/write-through/{}", common::host::encode_segment(key).replace("%25", "%"));
        let put = send(&router, Mode::Forwarded, &through, &Call::new("PUT", None).path(&path).json(&json!(key))).await;
        let message = put.body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!((put.status, &put.body["error"]["code"]), (400, &json!("bad_key")), "{key:?}: {}", put.body);
        assert!(message.contains("enableForwardingHttpRequest") && message.contains("?key="), "{message}");
        assert!(t.sqlite.get(arrives_as).await.unwrap().is_none(), "{key:?} landed on {arrives_as:?}");
        let read_path = path.replace("/write-through/", "/cache-aside/");
        let read = send(&router, Mode::Forwarded, &aside, &Call::new("GET", None).path(&read_path)).await;
        assert_eq!(read.status, 400, "reads of another key's value are refused too");
    }
    assert_eq!(rows(&t).await, 0, "nothing written");
    for key in ["a?b", "a#b", "a\\b", "a%41"] {
        let put =
            send(&router, Mode::Forwarded, &through, &Call::new("PUT", None).query("key", key).json(&json!(key))).await;
        assert_eq!((put.status, &put.body["key"]), (200, &json!(key)), "?key= survives forwarding");
    }
}

/// A body sent chunked is dropped by the host (it forwards a body only with a Content-Length):
/// the client is told, instead of an empty value being written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunked_body_is_refused_with_411_where_the_host_drops_it() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let (through, behind, aside) =
        (FunctionDef::load("WriteThrough"), FunctionDef::load("WriteBehind"), FunctionDef::load("CacheAside"));
    for mode in [Mode::Direct, Mode::Payload, Mode::Proxied, Mode::Forwarded] {
        for def in [&through, &behind] {
            let key = format!("chunked-{}-{mode:?}", def.name);
            // Legacy forwarding refuses keys in the path: the key goes in the query there.
            let call = if mode == Mode::Forwarded {
                Call::new("PUT", None).query("key", &key)
            } else {
                Call::new("PUT", Some(&key))
            };
            let call = call.json(&json!({"big": "enough"})).chunked();
            let reply = send(&router, mode, def, &call).await;
            match mode {
                // No host, or the proxy (it streams): the body arrives.
                Mode::Direct | Mode::Proxied => {
                    assert!(reply.status == 200 || reply.status == 202, "{mode:?}: {}", reply.body)
                }
                Mode::Payload | Mode::Forwarded => {
                    assert_eq!(
                        (reply.status, &reply.body["error"]["code"]),
                        (411, &json!("length_required")),
                        "{mode:?}"
                    );
                    assert!(t.sqlite.get(&key).await.unwrap().is_none());
                }
            }
        }
        // The seed's body-only read form too.
        let mut call = Call::new("POST", None).text("k", "text/plain").chunked();
        call.key = None;
        let reply = send(&router, mode, &aside, &call).await;
        if matches!(mode, Mode::Payload | Mode::Forwarded) {
            assert_eq!(reply.status, 411, "{mode:?}");
        }
    }
}

/// A path whose key segment arrived empty (`…/write-through/`, which is what a client or the host
/// makes of the key `.`) names no key: the body's own key must not be taken instead, or a write
/// meant for `.` lands on whatever key the value happens to name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_emptied_key_segment_never_takes_the_key_from_the_body() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let (through, behind, aside) =
        (FunctionDef::load("WriteThrough"), FunctionDef::load("WriteBehind"), FunctionDef::load("CacheAside"));
    let victim = json!({"key": "victim", "value": "pwned", "Key": "victim", "ValueToInsert": "pwned"});
    let put = send(&router, Mode::Direct, &through, &Call::new("PUT", Some("victim")).json(&json!("mine"))).await;
    assert_eq!(put.status, 200);
    for mode in [Mode::Direct, Mode::Payload, Mode::Proxied] {
        // In direct mode the path is sent as a client that removed the `.` would send it.
        let emptied = |method: &str| {
            let call = Call::new(method, Some("."));
            if mode == Mode::Direct { call.path("/api/write-through/") } else { call }
        };
        for (def, method) in [(&through, "PUT"), (&through, "POST"), (&behind, "PUT"), (&through, "DELETE")] {
            let mut call = emptied(method).json(&victim);
            if def.name == "WriteBehind" && mode == Mode::Direct {
                call = call.path("/api/write-behind/");
            }
            let reply = send(&router, mode, def, &call).await;
            let case = format!("{method} {} of `.` in {mode:?}", def.name);
            assert_eq!(
                (reply.status, &reply.body["error"]["code"]),
                (400, &json!("bad_key")),
                "{case}: {}",
                reply.body
            );
            let message = reply.body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("?key="), "{case}: the 400 says how to send the key: {message}");
        }
        let mut read = Call::new("POST", Some(".")).json(&json!({"Key": "victim"}));
        if mode == Mode::Direct {
            read = read.path("/api/cache-aside/");
        }
        let reply = send(&router, mode, &aside, &read).await;
        assert_eq!(reply.status, 400, "a read of `.` in {mode:?} does not read the body's key: {}", reply.body);
    }
    assert_eq!(t.sqlite.get("victim").await.unwrap().and_then(|r| r.value), Some(json!("mine")));
    // The bare route (no `/` after it) keeps the seed's body-only forms.
    let seed = Call::new("POST", None).json(&json!({"Key": "seeded", "ValueToInsert": 1}));
    for mode in MODES {
        assert_eq!(send(&router, mode, &through, &seed).await.status, 200, "{mode:?}");
    }
}

/// `?key=` given twice: the host joins the values with a comma in payload mode (`a,b`), a direct
/// call would take the first: neither is the key the client meant, so the request is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_given_twice_in_the_query_is_refused() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let (through, aside) = (FunctionDef::load("WriteThrough"), FunctionDef::load("CacheAside"));
    for mode in MODES {
        let put =
            send(&router, mode, &through, &Call::new("PUT", None).query("key", "a").query("key", "b").json(&json!(1)))
                .await;
        assert_eq!((put.status, &put.body["error"]["code"]), (400, &json!("bad_key")), "{mode:?}: {}", put.body);
        let get = send(&router, mode, &aside, &Call::new("GET", None).query("key", "a").query("KEY", "b")).await;
        assert_eq!(get.status, 400, "{mode:?}");
    }
    assert_eq!(rows(&t).await, 0, "nothing written");
}

/// `?tags=a&tags=b` tags the entry with both, in every mode: the host joins them as `a,b`, and the
/// handler takes every occurrence (it took only the first, so invalidating `b` missed the entry).
/// A `ttl` given twice is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tags_given_twice_in_the_query_are_both_kept() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let (through, aside, invalidate) =
        (FunctionDef::load("WriteThrough"), FunctionDef::load("CacheAside"), FunctionDef::load("CacheInvalidate"));
    for mode in MODES {
        let key = format!("twice-tagged-{mode:?}");
        let tag = format!("second-{mode:?}");
        let put = Call::new("PUT", Some(&key)).query("tags", "first").query("tags", &tag).json(&json!(1));
        assert_eq!(send(&router, mode, &through, &put).await.status, 200, "{mode:?}");
        assert_eq!(send(&router, mode, &aside, &Call::new("GET", Some(&key))).await.header("x-cache"), Some("hit"));
        let evict = send(&router, mode, &invalidate, &Call::new("POST", None).json(&json!({"tags": [tag]}))).await;
        assert_eq!(evict.status, 200, "{mode:?}: {}", evict.body);
        let read = send(&router, mode, &aside, &Call::new("GET", Some(&key))).await;
        assert_eq!(read.header("x-cache"), Some("miss"), "{mode:?}: the second tag was kept");
        let ttl = Call::new("PUT", Some(&key)).query("ttl", "60").query("ttl", "3600").json(&json!(2));
        let reply = send(&router, mode, &through, &ttl).await;
        assert_eq!((reply.status, &reply.body["error"]["code"]), (400, &json!("bad_ttl")), "{mode:?}");
    }
}
