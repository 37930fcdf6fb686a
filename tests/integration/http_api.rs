//! The HTTP API through both host modes, built from the function.json files: answers, seed
//! compatibility, and every kind of bad input.

use crate::common;

use axum::body::Body;
use axum::http::Request;
use common::host::{Call, FunctionDef, MODES, Mode, raw, send};
use common::{RedisServer, TestApp};
use serde_json::{Value, json};

fn defs() -> (FunctionDef, FunctionDef, FunctionDef) {
    (FunctionDef::load("CacheAside"), FunctionDef::load("WriteThrough"), FunctionDef::load("Health"))
}

#[test]
fn function_json_files_match_the_design() {
    let (aside, through, health) = defs();
    assert_eq!(
        (aside.route.as_str(), aside.methods.clone()),
        ("cache-aside/{key?}", vec!["GET".to_string(), "POST".to_string()])
    );
    assert_eq!(through.route, "write-through/{key?}");
    assert_eq!(through.methods, vec!["PUT", "POST", "DELETE"]);
    assert_eq!(health.route, "health");
    assert_eq!(
        (aside.auth_level.as_str(), through.auth_level.as_str(), health.auth_level.as_str()),
        ("function", "function", "anonymous")
    );
    for def in [&aside, &through, &health] {
        assert_eq!(def.output, "res", "{} needs an http output binding", def.name);
        assert_eq!(
            def.json["bindings"].as_array().unwrap().len(),
            2,
            "exactly one trigger and one http output, or the host will not forward {}",
            def.name
        );
    }
    let host: Value =
        serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/host.json")).unwrap())
            .unwrap();
    assert_eq!(host["version"], "2.0");
    // The invocation payload carries every key intact; legacy forwarding loses some (keys.rs).
    assert_eq!(host["customHandler"]["enableForwardingHttpRequest"], false);
    assert_eq!(host["customHandler"]["description"]["defaultExecutablePath"], "handler");
    assert_eq!(host["extensionBundle"]["version"], "[4.*, 5.0.0)");
    let local: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/local.settings.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(local["Values"]["FUNCTIONS_WORKER_RUNTIME"], "custom");
    assert_eq!(local["Values"]["AzureWebJobsStorage"], "UseDevelopmentStorage=true");
    assert_eq!(local["Values"]["RedisCache"], "localhost:6379");
    for (name, _) in local["Values"].as_object().unwrap() {
        assert!(!name.contains("__"), "local.settings.json Values names must not contain `__`: {name}");
    }
}

#[tokio::test]
async fn write_through_then_cache_aside_in_both_modes() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let (aside, through, _) = defs();
    for mode in MODES {
        let key = format!("user:{mode:?}/ü ?#%");
        let missing = send(&router, mode, &aside, &Call::new("GET", Some(&key))).await;
        assert_eq!(missing.status, 404, "{mode:?}: {:?}", missing.body);
        assert_eq!(missing.body["error"]["code"], "not_found");
        assert_eq!(missing.header("x-cache"), Some("miss"));

        let value = json!({"name": "Ada", "tags": ["x", 1, null], "nested": {"ok": true}});
        let put = send(&router, mode, &through, &Call::new("PUT", Some(&key)).json(&value)).await;
        assert_eq!(put.status, 200, "{mode:?}: {:?}", put.body);
        assert_eq!(put.body["key"], key.as_str());
        assert_eq!(put.body["value"], value);
        let version = put.body["version"].as_u64().expect("version");

        let hit = send(&router, mode, &aside, &Call::new("GET", Some(&key))).await;
        assert_eq!(hit.status, 200);
        assert_eq!(hit.body, json!({"key": key, "value": value, "version": version, "source": "cache"}));
        assert_eq!(hit.header("x-cache"), Some("hit"));
        if mode == Mode::Payload {
            assert!(
                hit.logs.iter().any(|l| l.contains("hit")),
                "payload mode returns per-invocation Logs: {:?}",
                hit.logs
            );
        }

        let deleted = send(&router, mode, &through, &Call::new("DELETE", Some(&key))).await;
        assert_eq!(deleted.status, 200);
        assert_eq!(deleted.body["deleted"], true);
        assert!(deleted.body["version"].as_u64().unwrap() > version);
        let gone = send(&router, mode, &aside, &Call::new("GET", Some(&key))).await;
        assert_eq!(gone.status, 404);
    }
}

#[tokio::test]
async fn both_modes_give_identical_answers() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let (aside, through, _) = defs();
    send(&router, Mode::Direct, &through, &Call::new("PUT", Some("same")).json(&json!([1, 2, 3]))).await;
    let calls = [
        (&aside, Call::new("GET", Some("same"))),
        (&aside, Call::new("GET", Some("absent"))),
        (&aside, Call::new("GET", None)),
        (&through, Call::new("PUT", Some("bad")).text("{not json", "application/json")),
        (&through, Call::new("GET", Some("x"))),
    ];
    for (def, call) in calls {
        // Warm the cache first so that both modes see the same cache state.
        send(&router, Mode::Direct, def, &call).await;
        let forwarded = send(&router, Mode::Direct, def, &call).await;
        let payload = send(&router, Mode::Payload, def, &call).await;
        assert_eq!((forwarded.status, &forwarded.body), (payload.status, &payload.body), "{} {:?}", def.name, call);
        assert_eq!(forwarded.header("x-cache"), payload.header("x-cache"));
        assert_eq!(forwarded.header("allow"), payload.header("allow"));
    }
}

#[tokio::test]
async fn seed_sample_request_bodies_still_work() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let (aside, through, _) = defs();
    for mode in MODES {
        // The C# sample's CacheRequest: {"Key", "ValueToInsert"}, any casing, POSTed without a route key.
        let key = format!("seed-{mode:?}");
        let written = send(
            &router,
            mode,
            &through,
            &Call::new("POST", None).json(&json!({"key": key, "valueToInsert": "Value from Database"})),
        )
        .await;
        assert_eq!(written.status, 200, "{:?}", written.body);
        assert_eq!(written.body["value"], "Value from Database");
        let written = send(
            &router,
            mode,
            &through,
            &Call::new("POST", None).json(&json!({"Key": key, "ValueToInsert": "second"})),
        )
        .await;
        assert_eq!(written.status, 200);
        // Reads: plain-text key in the body, as `req.ReadAsStringAsync()` in the sample…
        let read = send(&router, mode, &aside, &Call::new("POST", None).text(&key, "text/plain")).await;
        assert_eq!((read.status, &read.body["value"]), (200, &json!("second")));
        // …or the CacheRequest JSON, or ?key=.
        let read = send(&router, mode, &aside, &Call::new("POST", None).json(&json!({"KEY": key}))).await;
        assert_eq!(read.body["value"], "second");
        let read = send(&router, mode, &aside, &Call::new("GET", None).query("key", &key)).await;
        assert_eq!(read.body["value"], "second");
        // A body-only DELETE.
        let deleted = send(&router, mode, &through, &Call::new("DELETE", None).json(&json!({"Key": key}))).await;
        assert_eq!(deleted.status, 200);
    }
}

#[tokio::test]
async fn values_of_every_json_kind_and_text_round_trip() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let (aside, through, _) = defs();
    for (i, value) in [json!(null), json!(0), json!(-1.5), json!(true), json!("text"), json!(""), json!([]), json!({})]
        .into_iter()
        .enumerate()
    {
        let key = format!("kind-{i}");
        assert_eq!(
            send(&router, Mode::Payload, &through, &Call::new("PUT", Some(&key)).json(&value)).await.status,
            200
        );
        // Once from the store (cache cleared), once from the cache.
        redis.command("FLUSHALL").unwrap();
        for mode in MODES {
            let read = send(&router, mode, &aside, &Call::new("GET", Some(&key))).await;
            assert_eq!((read.status, &read.body["value"]), (200, &value), "{mode:?} {key}");
        }
    }
    // text/plain bodies are stored as JSON strings; binary bodies arrive base64 in payload mode.
    let put =
        send(&router, Mode::Payload, &through, &Call::new("PUT", Some("plain")).text("hello world", "text/plain"))
            .await;
    assert_eq!(put.body["value"], "hello world");
    let put = send(
        &router,
        Mode::Payload,
        &through,
        &Call::new("PUT", Some("octets")).text("{\"b\":2}", "application/octet-stream"),
    )
    .await;
    assert_eq!((put.status, &put.body["value"]), (200, &json!({"b": 2})));
}

#[tokio::test]
async fn bad_input_gets_a_json_error_and_the_service_keeps_serving() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[("MaxValueBytes", "64")]);
    let router = t.app.router();
    let (aside, through, health) = defs();
    let long_key = "k".repeat(513);
    let cases: Vec<(&FunctionDef, Call, u16, &str)> = vec![
        (&through, Call::new("PUT", Some("k")).text("{\"a\":", "application/json"), 400, "bad_body"),
        (&through, Call::new("PUT", Some("k")), 400, "bad_body"),
        (&through, Call::new("POST", None).json(&json!({"ValueToInsert": 1})), 400, "bad_key"),
        (&through, Call::new("POST", None).json(&json!({"Key": "k"})), 400, "bad_body"),
        (&through, Call::new("POST", None).json(&json!([1])), 400, "bad_body"),
        (&through, Call::new("PUT", Some(&long_key)).json(&json!(1)), 400, "bad_key"),
        (&through, Call::new("PUT", Some("ctl\u{7}")).json(&json!(1)), 400, "bad_key"),
        (&through, Call::new("PUT", Some("big")).json(&json!("x".repeat(100))), 413, "value_too_large"),
        (
            &through,
            Call::new("POST", None).json(&json!({"Key": "big", "ValueToInsert": "x".repeat(100)})),
            413,
            "value_too_large",
        ),
        (&through, Call::new("GET", Some("k")), 405, "method_not_allowed"),
        (&aside, Call::new("DELETE", Some("k")), 405, "method_not_allowed"),
        (&aside, Call::new("GET", None), 400, "bad_key"),
        (&aside, Call::new("POST", None).json(&json!({"NotKey": 1})), 400, "bad_key"),
        (&aside, Call::new("GET", Some("tab\there")), 400, "bad_key"),
        (&health, Call::new("POST", None), 405, "method_not_allowed"),
    ];
    for mode in MODES {
        for (def, call, status, code) in &cases {
            let reply = send(&router, mode, def, call).await;
            assert_eq!(reply.status, *status, "{mode:?} {} {call:?}: {}", def.name, reply.body);
            assert_eq!(reply.body["error"]["code"], *code, "{mode:?} {} {call:?}", def.name);
            assert!(reply.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
            if *status == 405 {
                assert!(reply.header("allow").is_some(), "405 names the allowed methods");
            }
        }
    }
    // Still serving.
    let ok = send(&router, Mode::Direct, &through, &Call::new("PUT", Some("fine")).json(&json!(1))).await;
    assert_eq!(ok.status, 200);
}

/// Found by scripts/api-fuzz.sh: a `405` said `Allow: GET, POST, DELETE` for `api/dead-letters`
/// (DELETE needs an id) and `Allow: DELETE, POST` for `api/cache/{key}` (POST takes no key).
#[tokio::test]
async fn a_405_allows_what_the_path_takes() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let (dead_letters, invalidate, aside) =
        (FunctionDef::load("DeadLetters"), FunctionDef::load("CacheInvalidate"), FunctionDef::load("CacheAside"));
    let cases = [
        (&dead_letters, None, "GET, POST"),
        (&dead_letters, Some("1-0"), "GET, POST, DELETE"),
        (&invalidate, None, "DELETE, POST"),
        (&invalidate, Some("k"), "DELETE"),
        (&aside, None, "GET, POST"),
        (&aside, Some("k"), "GET, POST"),
    ];
    for mode in [Mode::Direct, Mode::Proxied] {
        for (def, key, allow) in cases {
            let reply = send(&router, mode, def, &Call::new("PATCH", key)).await;
            assert_eq!((reply.status, reply.header("allow")), (405, Some(allow)), "{mode:?} {} {key:?}", def.name);
        }
    }
    for mode in MODES {
        let reply = send(&router, mode, &dead_letters, &Call::new("DELETE", None)).await;
        assert_eq!((reply.status, reply.header("allow")), (405, Some("GET, POST")), "{mode:?}");
        let reply = send(&router, mode, &invalidate, &Call::new("POST", Some("k")).json(&json!({"keys": ["k"]}))).await;
        assert_eq!((reply.status, reply.header("allow")), (405, Some("DELETE")), "{mode:?}");
    }
}

#[tokio::test]
async fn envelope_level_errors_and_readiness() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[("MaxValueBytes", "1024")]);
    let router = t.app.router();
    let post = |uri: &str, body: &str| {
        Request::builder()
            .method("POST")
            .uri(uri)
            .header("Content-Type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };

    let (status, headers, body) = raw(&router, Request::builder().uri("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, 200, "GET / answers at once for the host's readiness probe");
    assert!(headers["content-type"].starts_with("application/json"));
    assert!(!body.is_empty());

    for (uri, body, status, code) in [
        ("/CacheAside", "{not json", 400, "bad_envelope"),
        ("/CacheAside", "[]", 400, "bad_envelope"),
        ("/CacheAside", "{\"Data\":{}}", 400, "bad_envelope"),
        ("/CacheAside", "{\"Data\":{\"req\":{\"Url\":\"http://x/api/cache-aside/k\"}}}", 400, "bad_envelope"),
        ("/NoSuchFunction", "{}", 404, "unknown_function"),
        ("/api/no-such-route/k", "", 404, "not_found"),
        ("/a/b/c", "", 404, "not_found"),
    ] {
        let (got, headers, bytes) = raw(&router, post(uri, body)).await;
        assert_eq!(got, status, "{uri} {body}");
        assert!(headers["content-type"].starts_with("application/json"));
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["error"]["code"], code, "{uri}: {json}");
    }
    let (status, _, _) =
        raw(&router, Request::builder().method("GET").uri("/CacheAside").body(Body::empty()).unwrap()).await;
    assert_eq!(status, 405);
    // A forwarded body over the limit is refused with 413 before it is buffered whole.
    let huge = "x".repeat(200 * 1024);
    let (status, _, bytes) =
        raw(&router, Request::builder().method("PUT").uri("/api/write-through/k").body(Body::from(huge)).unwrap())
            .await;
    assert_eq!(status, 413);
    assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap()["error"]["code"], "value_too_large");
}

#[tokio::test]
async fn host_quirks_are_decoded() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let (aside, through, _) = defs();
    send(&router, Mode::Direct, &through, &Call::new("PUT", Some("a-b")).json(&json!("slash"))).await;

    let mut envelope = common::host::envelope(&aside, &Call::new("GET", Some("a-b")));
    let req = &mut envelope["Data"][aside.trigger.as_str()];
    // Double-encoded method, headers as a JSON string, Params absent: the key comes from the Url
    // (as it has no `%` escape, which would be ambiguous there).
    req["Method"] = json!("\"GET\"");
    req["Headers"] = json!(req["Headers"].to_string());
    req.as_object_mut().unwrap().remove("Params");
    // The old (pre-2020) host sent Query as a JSON string.
    req["Query"] = json!("{}");
    let request = Request::builder().method("POST").uri("/CacheAside").body(Body::from(envelope.to_string())).unwrap();
    let (status, _, bytes) = raw(&router, request).await;
    assert_eq!(status, 200);
    let reply = common::host::unwrap_http_output(&serde_json::from_slice(&bytes).unwrap(), &aside.output);
    assert_eq!((reply.status, &reply.body["value"]), (200, &json!("slash")));

    // The whole trigger value as a JSON string, keys in other casings.
    let envelope = common::host::envelope(&aside, &Call::new("GET", Some("a-b")));
    let req_text = envelope["Data"][aside.trigger.as_str()]
        .to_string()
        .replace("\"Method\"", "\"method\"")
        .replace("\"Url\"", "\"url\"");
    let odd = json!({"data": {aside.trigger.as_str(): req_text}, "metadata": {}});
    let request = Request::builder().method("POST").uri("/cacheaside").body(Body::from(odd.to_string())).unwrap();
    let (status, _, bytes) = raw(&router, request).await;
    assert_eq!(status, 200);
    let reply = common::host::unwrap_http_output(&serde_json::from_slice(&bytes).unwrap(), &aside.output);
    assert_eq!(reply.body["value"], "slash");
}
