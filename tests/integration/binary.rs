//! The `handler` binary as the host runs it: environment in, `127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT`
//! out. Start-up errors, readiness, TLS to Redis, passwords, and Redis being down at start.

use crate::common;

use common::process::{Handler, command};
use common::{RedisServer, TempDir, free_port};
use serde_json::json;

/// Runs the handler expecting it to refuse to start; returns (exit code, stderr).
fn failed_start(env: &[(&str, &str)]) -> (i32, String) {
    let dir = TempDir::new("handler-fail");
    let output = command(env, &dir, free_port()).output().expect("run handler");
    assert!(!output.status.success(), "the handler should not start with {env:?}");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn serves_both_modes_from_the_real_binary() {
    let redis = RedisServer::start();
    let handler = Handler::start(&[("RedisCache", &redis.connection_string())]);
    assert_eq!(handler.request("GET", "/", None).unwrap().0, 200);
    let (status, body) = handler.request("PUT", "/api/write-through/bin", Some("{\"n\":1}")).unwrap();
    assert_eq!((status, &body["value"]), (200, &json!({"n": 1})));
    let (status, body) = handler.request("GET", "/api/cache-aside/bin", None).unwrap();
    assert_eq!((status, &body["source"]), (200, &json!("cache")));
    let envelope = json!({"Data": {"req": {"Url": "http://localhost:7071/api/cache-aside/bin", "Method": "GET", "Headers": {}, "Query": {}, "Params": {"key": "bin"}}}, "Metadata": {}});
    let (status, body) = handler.request("POST", "/CacheAside", Some(&envelope.to_string())).unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["Outputs"]["res"]["statusCode"], "200");
    let (status, body) = handler.request("GET", "/api/health", None).unwrap();
    assert_eq!((status, &body["status"]), (200, &json!("healthy")));
}

#[test]
fn bad_settings_stop_start_up_with_one_line_naming_the_setting() {
    for (env, setting) in [
        (vec![], "RedisCache"),
        (vec![("RedisCache", "localhost"), ("CacheTtlSeconds", "five")], "CacheTtlSeconds"),
        (vec![("RedisCache", "localhost"), ("MaxValueBytes", "-1")], "MaxValueBytes"),
        (vec![("RedisCache", "localhost"), ("RefreshAheadFactor", "2")], "RefreshAheadFactor"),
        (vec![("RedisCache", "host:6380,password=s3cr+t/=,ssl=maybe")], "RedisCache"),
        (vec![("RedisCache", "host:99999,password=s3cr+t/=")], "RedisCache"),
    ] {
        let (code, stderr) = failed_start(&env);
        assert_eq!(code, 1, "{env:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one line: {stderr}");
        assert!(lines[0].contains(&format!("`{setting}`")), "the line names {setting}: {stderr}");
        assert!(!stderr.contains("s3cr+t"), "a secret leaked: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_port_in_use_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, stderr) = failed_start(&[("RedisCache", "localhost"), ("FUNCTIONS_CUSTOMHANDLER_PORT", &port)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("FUNCTIONS_CUSTOMHANDLER_PORT"), "{stderr}");
}

#[test]
fn starts_while_redis_is_down_and_serves_from_the_store() {
    let port = free_port();
    let handler = Handler::start(&[("RedisCache", &format!("127.0.0.1:{port},abortConnect=False"))]);
    let (status, body) = handler.request("PUT", "/api/write-through/k", Some("\"v\"")).unwrap();
    assert_eq!((status, &body["value"]), (200, &json!("v")));
    let (status, body) = handler.request("GET", "/api/cache-aside/k", None).unwrap();
    assert_eq!((status, &body["source"]), (200, &json!("store")));
    let (status, body) = handler.request("GET", "/api/health", None).unwrap();
    assert_eq!((status, &body["redis"]["status"]), (503, &json!("down")));
}

#[test]
fn tls_to_redis_with_the_portal_connection_string() {
    let redis = RedisServer::start_tls();
    let tls_port = redis.tls_port.unwrap();
    let ca = redis.ca_path().display().to_string();
    let conn = format!("localhost:{tls_port},ssl=True,abortConnect=False");
    // Trusting the generated CA (as SSL_CERT_FILE), the connection works.
    let handler = Handler::start(&[("RedisCache", &conn), ("SSL_CERT_FILE", &ca)]);
    let (status, body) = handler.request("GET", "/api/health", None).unwrap();
    assert_eq!((status, &body["redis"]["status"]), (200, &json!("up")), "{body}");
    assert!(body["redis"]["target"].as_str().unwrap().starts_with("rediss://"));
    handler.request("PUT", "/api/write-through/tls", Some("[1]")).unwrap();
    let (status, body) = handler.request("GET", "/api/cache-aside/tls", None).unwrap();
    assert_eq!((status, &body["source"]), (200, &json!("cache")));
    drop(handler);
    // Without trusting it, the certificate is refused: TLS is really verified.
    let untrusted = Handler::start(&[("RedisCache", &conn), ("SSL_CERT_FILE", "/nonexistent-ca.pem")]);
    let (status, body) = untrusted.request("GET", "/api/health", None).unwrap();
    assert_eq!((status, &body["redis"]["status"]), (503, &json!("down")), "{body}");
    // The rediss:// URL form works too.
    let url = Handler::start(&[("RedisCache", &format!("rediss://localhost:{tls_port}")), ("SSL_CERT_FILE", &ca)]);
    assert_eq!(url.request("GET", "/api/health", None).unwrap().0, 200);
}

#[test]
fn passwords_with_base64_characters_authenticate_and_never_leak() {
    let redis = RedisServer::start();
    let password = "Ab+/cd==";
    redis.command(&format!("CONFIG SET requirepass {password}")).unwrap();
    let good = Handler::start(&[(
        "RedisCache",
        &format!("127.0.0.1:{},password={password},ssl=False,abortConnect=False", redis.port),
    )]);
    let (status, body) = good.request("GET", "/api/health", None).unwrap();
    assert_eq!((status, &body["redis"]["status"]), (200, &json!("up")), "{body}");
    let bad =
        Handler::start(&[("RedisCache", &format!("127.0.0.1:{},password=wrong+/=,abortConnect=False", redis.port))]);
    let (status, body) = bad.request("GET", "/api/health", None).unwrap();
    assert_eq!(status, 503);
    let text = body.to_string();
    assert!(!text.contains("wrong+/=") && !text.contains(password), "no secret in answers: {text}");
}

#[cfg(feature = "eventhubs")]
#[test]
fn event_hubs_settings_switch_write_behind_to_event_hubs() {
    let redis = RedisServer::start();
    // No Event Hubs namespace is reachable here: the queue is configured but down, which must
    // surface as 503 (nothing accepted) and in the health report, never as a hang.
    let handler = Handler::start(&[
        ("RedisCache", &redis.connection_string()),
        ("EventHubConnection__fullyQualifiedNamespace", "cachepatterns-test.invalid"),
        ("EventHubName", "writes"),
    ]);
    let (status, body) = handler.request("PUT", "/api/write-behind/k", Some("1")).unwrap();
    assert_eq!((status, &body["error"]["code"]), (503, &json!("queue_unavailable")), "{body}");
    let (status, body) = handler.request("GET", "/api/health", None).unwrap();
    assert_eq!(
        (status, &body["queue"]["kind"], &body["queue"]["status"]),
        (503, &json!("eventhubs"), &json!("down")),
        "{body}"
    );
    let (code, stderr) = failed_start(&[
        ("RedisCache", "localhost"),
        ("EventHubConnection", "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=s3cr+t="),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("EventHubConnection") && !stderr.contains("s3cr+t"), "{stderr}");
}

/// Checks a handler started on Azure without a usable store: Health `503` naming the store
/// settings, store-backed functions `503 store_not_configured`, and (once stopped) one ERROR line
/// naming `CosmosDBConnection` / `CosmosDBConnection__accountEndpoint`, which it returns.
fn assert_degraded_without_a_store(handler: &mut Handler) -> String {
    let (status, body) = handler.request("GET", "/api/health", None).unwrap();
    assert_eq!((status, &body["store"]["status"]), (503, &json!("down")), "{body}");
    let error = body["store"]["error"].as_str().unwrap();
    assert!(error.contains("CosmosDBConnection__accountEndpoint") && error.contains("CosmosDBConnection "), "{error}");
    for (method, path, body) in [
        ("PUT", "/api/write-through/k", Some("1")),
        ("PUT", "/api/write-behind/k", Some("1")),
        ("GET", "/api/cache-aside/k", None),
    ] {
        let (status, reply) = handler.request(method, path, body).unwrap();
        assert_eq!((status, &reply["error"]["code"]), (503, &json!("store_not_configured")), "{method} {path}");
    }
    let stderr = handler.stop();
    let errors: Vec<&str> =
        stderr.lines().filter(|l| l.contains(" ERROR ") && l.contains("no backing store is configured")).collect();
    assert_eq!(errors.len(), 1, "one error line at start-up: {stderr}");
    let line = errors[0];
    assert!(line.contains("CosmosDBConnection__accountEndpoint") && line.contains("CosmosDBConnection "), "{line}");
    line.to_string()
}

/// On Azure with no store setting the handler must not exit (the host would give up and take every
/// function down) nor write under the read-only app root: it runs degraded and says why.
#[test]
fn on_azure_without_a_store_it_runs_degraded_and_writes_nothing_under_the_app_root() {
    let redis = RedisServer::start();
    let mut handler = Handler::start_on_azure(&[("RedisCache", &redis.connection_string())]);
    assert_degraded_without_a_store(&mut handler);
    let left: Vec<_> = std::fs::read_dir(handler.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "nothing may be written under the app root: {left:?}");
}

/// On Azure SQLite is never used, even at an explicit absolute `LocalStorePath` outside the app
/// root (writable there, but a file per instance): the handler runs degraded exactly as with no
/// store, and its one error line says the path is ignored and why.
#[test]
fn on_azure_local_store_path_is_ignored_and_it_runs_degraded_as_without_a_store() {
    let redis = RedisServer::start();
    let outside = TempDir::new("store-outside-the-app-root");
    let path = outside.path().join("store.db");
    let mut handler = Handler::start_on_azure(&[
        ("RedisCache", &redis.connection_string()),
        ("LocalStorePath", path.to_str().unwrap()),
    ]);
    let line = assert_degraded_without_a_store(&mut handler);
    assert!(line.contains("LocalStorePath") && line.contains("ignored on Azure"), "{line}");
    assert!(line.contains("a file per instance"), "says why: {line}");
    let written: Vec<_> = std::fs::read_dir(outside.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(written.is_empty(), "no SQLite file: {written:?}");
    let left: Vec<_> = std::fs::read_dir(handler.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "nothing may be written under the app root: {left:?}");
}

/// On Azure a setting the handler cannot work with is one error line and 503s naming it, not an
/// exit: Health says which setting, and queued Event Hubs batches and store changes are kept for a
/// retry.
#[test]
fn on_azure_a_bad_setting_is_served_as_503_naming_it() {
    let redis = RedisServer::start();
    let mut handler =
        Handler::start_on_azure(&[("RedisCache", &redis.connection_string()), ("CacheTtlSeconds", "ten")]);
    let (status, body) = handler.request("GET", "/api/health", None).unwrap();
    assert_eq!(status, 503);
    assert!(body["problem"].as_str().unwrap().contains("CacheTtlSeconds"), "{body}");
    let (status, body) = handler.request("PUT", "/api/write-through/k", Some("1")).unwrap();
    assert_eq!((status, &body["error"]["code"]), (503, &json!("misconfigured")));
    let envelope = json!({"Data": {"events": "[]"}, "Metadata": {}});
    assert_eq!(handler.request("POST", "/EventHubConsumer", Some(&envelope.to_string())).unwrap().0, 500);
    let changes = json!({"Data": {"documents": "[]"}, "Metadata": {}});
    assert_eq!(
        handler.request("POST", "/StoreChanges", Some(&changes.to_string())).unwrap().0,
        500,
        "store changes wait for the configuration to be fixed"
    );
    let stderr = handler.stop();
    assert_eq!(stderr.lines().filter(|l| l.contains("CacheTtlSeconds")).count(), 1, "{stderr}");
}

/// The port is bound before any dependency is contacted: a Cosmos DB account that does not answer
/// (the client may take 30 s) does not keep the host waiting for the port.
#[test]
fn on_azure_the_port_answers_while_cosmos_connects() {
    let redis = RedisServer::start();
    let hole = common::Blackhole::start();
    let started = std::time::Instant::now();
    let handler = Handler::start_on_azure(&[
        ("RedisCache", &redis.connection_string()),
        ("CosmosDBConnection", &format!("AccountEndpoint=https://127.0.0.1:{}/;AccountKey=a2V5;", hole.port)),
    ]);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "GET / took {:?}", started.elapsed());
    let (status, body) = handler.request("GET", "/api/health", None).unwrap();
    assert_eq!((status, &body["store"]["status"]), (503, &json!("down")), "{body}");
    assert!(body["store"]["error"].as_str().unwrap().contains("not connected yet"), "{body}");
    let (status, body) = handler.request("PUT", "/api/write-through/k", Some("1")).unwrap();
    assert_eq!((status, &body["error"]["code"]), (503, &json!("store_unavailable")), "{body}");
}
