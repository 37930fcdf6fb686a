//! Property tests of everything that takes untrusted input: the host's invocation envelopes, the
//! lenient decoders, settings and connection strings, keys, and request bodies end to end.
//!
//! Each property runs the number of cases its `ProptestConfig` says; the totals are in
//! `docs/reliability.md`. A failure prints the smallest input that breaks the property.

use crate::common;

use std::cell::OnceCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::OnceLock;

use cachepatterns::adapters::redis::RedisTarget;
use cachepatterns::config::{Settings, SettingsError};
use cachepatterns::domain::key::{Key, MAX_KEY_BYTES};
use cachepatterns::http::host::lenient;
use cachepatterns::http::host::payload::{self, Invocation};
use cachepatterns::ports::store::Store;
use common::host::{Call, FunctionDef, MODES, Mode, send};
use common::{RedisServer, TestApp};
use proptest::prelude::*;
use serde_json::{Value, json};

/// `RedisCache` alone, parsed as start-up parses it.
fn redis_target(raw: &str) -> Result<RedisTarget, SettingsError> {
    Settings::from_map(&HashMap::from([("RedisCache".to_string(), raw.to_string())])).map(|settings| settings.redis)
}

/// `n` cases per property; failures are reported, not written to a regressions file.
fn cases(n: u32) -> ProptestConfig {
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::hash_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid key: 1–512 bytes of UTF-8 without control characters, with a bias to the characters
/// that paths, JSON and Redis treat specially.
fn key() -> impl Strategy<Value = String> {
    let special =
        prop::sample::select(vec!['/', '\\', '?', '#', '%', '+', ' ', '.', '{', '}', '"', '\'', 'ü', '🙂', ':']);
    let char_ = prop_oneof![3 => any::<char>().prop_filter("not control", |c| !c.is_control()), 1 => special];
    prop::collection::vec(char_, 1..40)
        .prop_map(|chars| chars.into_iter().collect::<String>())
        .prop_filter("fits", |k| k.len() <= MAX_KEY_BYTES)
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
}

/// One Redis and one app per end-to-end property, shared by its cases (each case uses its own
/// keys). Held by the test's thread, so that they are dropped, and the Redis stopped, when the test
/// ends: a `static` is never dropped, and left a `redis-server` running after every test run.
fn app() -> Rc<(RedisServer, TestApp, axum::Router)> {
    thread_local! {
        static APP: OnceCell<Rc<(RedisServer, TestApp, axum::Router)>> = const { OnceCell::new() };
    }
    APP.with(|app| {
        app.get_or_init(|| {
            let redis = RedisServer::start();
            let t = runtime().block_on(async { TestApp::new(&redis, &[("MaxValueBytes", "4096")]) });
            let router = t.app.router();
            Rc::new((redis, t, router))
        })
        .clone()
    })
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Any bytes at all: the envelope parser answers, it never panics.
    #[test]
    fn envelope_parsing_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Invocation::parse(&bytes);
        let _ = payload::http_call(&bytes, "req", "cache-aside");
    }

    /// Any JSON shaped like an envelope: decoding the HTTP trigger answers, it never panics.
    #[test]
    fn http_trigger_decoding_never_panics(data in json_value(), metadata in json_value(), req in json_value()) {
        let body = json!({"Data": {"req": req, "other": data}, "Metadata": metadata}).to_string();
        let _ = payload::http_call(body.as_bytes(), "req", "cache-aside");
        if let Ok(invocation) = Invocation::parse(body.as_bytes()) {
            let _ = invocation.metadata("RetryContext");
        }
    }

    /// The lenient decoders accept anything.
    #[test]
    fn lenient_decoders_never_panic(value in json_value()) {
        let unwrapped = lenient::unwrap(&value);
        let _ = (lenient::text(&unwrapped), lenient::object(&value), lenient::array(&value));
        let _ = lenient::timestamp(&value);
    }

    /// Keys: exactly 1–512 bytes without control characters are accepted, unchanged.
    #[test]
    fn keys_are_accepted_exactly_when_valid(raw in any::<String>()) {
        let valid = !raw.is_empty() && raw.len() <= MAX_KEY_BYTES && !raw.chars().any(char::is_control);
        match Key::new(raw.clone()) {
            Ok(key) => { prop_assert!(valid); prop_assert_eq!(key.as_str(), raw.as_str()); }
            Err(_) => prop_assert!(!valid),
        }
    }

    /// Connection strings: parsing answers without panicking, and an error never repeats the
    /// password it was given.
    #[test]
    fn connection_strings_never_panic_or_leak(raw in any::<String>(), secret in "[A-Za-z0-9+/=]{12,40}") {
        let _ = redis_target(&raw);
        for candidate in [format!("{raw},password={secret}"), format!("redis://u:{secret}@{raw}"), format!("{raw}:6380,password={secret},ssl=bogus")] {
            if let Err(e) = redis_target(&candidate) {
                prop_assert!(!e.to_string().contains(&secret), "{e}");
            }
        }
    }

    /// The portal's connection string round-trips host, port, TLS and a password of any base64.
    #[test]
    fn portal_connection_strings_round_trip(host in "[a-z][a-z0-9-]{0,20}(\\.[a-z0-9-]{1,10}){0,3}", port in 1u16.., password in "[A-Za-z0-9+/]{1,40}={0,2}", tls in any::<bool>()) {
        let raw = format!("{host}:{port},password={password},ssl={},abortConnect=False", if tls { "True" } else { "False" });
        let target = redis_target(&raw).unwrap();
        prop_assert_eq!((target.host.as_str(), target.port, target.tls, target.password.as_deref()), (host.as_str(), port, tls, Some(password.as_str())));
        if password.len() >= 12 {
            prop_assert!(!target.describe().contains(&password), "{}", target.describe());
        }
    }

    /// Any value for any setting: start-up either works or names the setting at fault, and never
    /// prints a secret.
    #[test]
    fn settings_never_panic_and_errors_name_a_setting(
        values in prop::collection::hash_map(prop::sample::select(vec![
            "RedisCache", "RedisCache__hostName", "RedisInstanceName", "CosmosDBConnection",
            "CosmosDBConnection__accountEndpoint", "CacheTtlSeconds", "CacheTtlJitterPercent",
            "NegativeCacheTtlSeconds", "RefreshAheadFactor", "RefreshAheadSchedule", "FailSafeMaxStaleSeconds",
            "FailSafeSoftTimeoutMs", "MaxValueBytes", "EventHubConnection__fullyQualifiedNamespace",
            "EventHubName", "WriteBehindRetryWindowSeconds", "TombstoneRetentionSeconds", "FUNCTIONS_CUSTOMHANDLER_PORT",
        ]), any::<String>(), 0..8),
    ) {
        let map: HashMap<String, String> = values.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        if let Err(e) = Settings::from_map(&map) {
            prop_assert!(!e.name.is_empty());
            let prefix = format!("setting `{}`", e.name);
            prop_assert!(e.to_string().starts_with(&prefix), "{}", e);
        }
    }
}

proptest! {
    #![proptest_config(cases(300))]

    /// End to end through the router in both host modes: any valid key and any JSON value are
    /// written and read back unchanged, under exactly that key.
    #[test]
    fn any_key_and_value_round_trip_in_every_mode(key in key(), value in json_value()) {
        let shared = app();
        let (_, t, router) = &*shared;
        let (through, aside) = (FunctionDef::load("WriteThrough"), FunctionDef::load("CacheAside"));
        // Through the host, a path cannot carry `.`, `..` or a literal `%2F` (README, "Keys in
        // URLs"): those go in `?key=`, every other key goes both ways.
        let path_ok = key != "." && key != ".." && !key.to_ascii_lowercase().contains("%2f");
        runtime().block_on(async {
            for mode in MODES {
                for in_path in [true, false] {
                    if in_path && mode != Mode::Direct && !path_ok {
                        continue;
                    }
                    let call = |method| if in_path { Call::new(method, Some(&key)) } else { Call::new(method, None).query("key", &key) };
                    let put = send(router, mode, &through, &call("PUT").json(&value)).await;
                    if put.status == 413 {
                        continue; // larger than MaxValueBytes
                    }
                    assert_eq!((put.status, &put.body["key"]), (200, &json!(key)), "{key:?} {mode:?} in path {in_path}: {}", put.body);
                    let read = send(router, mode, &aside, &call("GET")).await;
                    assert_eq!((read.status, &read.body["key"], &read.body["value"]), (200, &json!(key), &value), "{key:?} {mode:?}");
                    let stored = t.sqlite.get(&key).await.unwrap().unwrap();
                    assert_eq!(stored.value.as_ref(), Some(&value));
                }
            }
        });
    }

    /// Any body bytes with any content type: a write answers 200, 400 or 413, never a 5xx.
    #[test]
    fn any_body_is_a_clear_answer(body in prop::collection::vec(any::<u8>(), 0..600), text in any::<bool>(), key in key()) {
        let shared = app();
        let (_, _, router) = &*shared;
        let through = FunctionDef::load("WriteThrough");
        let mut call = Call::new("PUT", Some(&key));
        call.body = body;
        call.headers.push(("Content-Type".into(), if text { "text/plain" } else { "application/json" }.into()));
        let reply = runtime().block_on(send(router, Mode::Direct, &through, &call));
        prop_assert!(matches!(reply.status, 200 | 400 | 413), "{} {}", reply.status, reply.body);
    }
}
