//! The Bicep template under `infra/` parses, and what actually reaches the function app
//! (`siteConfig.appSettings` of the site, followed through modules and variables by
//! `scripts/check_infra.py`) is complete in every case that changes it: each write-behind queue and
//! each allowed plan. Complete means:
//!
//! - the host's own settings on Azure (custom runtime, identity-based host storage, Application
//!   Insights without local auth), the one list typed here because no code of this repository names it;
//! - every `%Setting%` a `function.json` refers to (the host fails to index a function whose
//!   placeholder does not resolve), and the identity-based settings of every `connection` an enabled
//!   function's trigger uses;
//! - what the handler reads, taken from `src/config`: the keyless Redis and Cosmos DB settings, a
//!   `…__clientId` for each identity-based connection in use (the app runs as a user-assigned
//!   identity only), and the Event Hubs namespace setting exactly when write-behind uses Event Hubs
//!   (under the Redis Stream its presence would switch the handler to Event Hubs);
//! - and the real `handler`, started as on Azure with each distinct set of settings (stand-ins for
//!   values only known once deployed), neither answers `misconfigured` nor runs without a store, and
//!   uses the queue the case asks for.
//!
//! Parsing uses `tree-sitter-bicep` (PyPI); no Azure is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::common::TempDir;
use crate::common::process::Handler;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The parameter that picks the write-behind queue, and its value for Event Hubs.
const QUEUE_PARAMETER: &str = "writeBehindQueue";
const QUEUE_EVENT_HUBS: &str = "eventHubs";

/// The host's settings on Azure (with the value they must have, where one is required). The host,
/// not the handler, reads these, so no code here names them.
const HOST_ON_AZURE: &[(&str, Option<&str>)] = &[
    ("FUNCTIONS_WORKER_RUNTIME", Some("custom")),
    ("FUNCTIONS_EXTENSION_VERSION", Some("~4")),
    // Host storage through the user-assigned identity (no connection string).
    ("AzureWebJobsStorage__accountName", None),
    ("AzureWebJobsStorage__credential", Some("managedidentity")),
    ("AzureWebJobsStorage__clientId", None),
    // Application Insights with local auth off: the host authenticates with the identity.
    ("APPLICATIONINSIGHTS_CONNECTION_STRING", None),
    ("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", None),
];

fn check_infra(args: &[&str]) -> std::process::Output {
    let output = Command::new("python3")
        .arg(Path::new(ROOT).join("scripts/check_infra.py"))
        .args(args)
        .output()
        .expect("python3 runs scripts/check_infra.py");
    assert_ne!(
        output.status.code(),
        Some(2),
        "the Bicep parser is missing: pip install tree-sitter tree-sitter-bicep ({})",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `const NAME: &str = "value";` in a file under `src/config/`.
fn code_constant(file: &str, name: &str) -> String {
    let source = std::fs::read_to_string(Path::new(ROOT).join("src/config").join(file)).unwrap();
    let marker = format!("const {name}: &str = \"");
    let start = source.find(&marker).unwrap_or_else(|| panic!("{marker}…\" in src/config/{file}")) + marker.len();
    source[start..].split('"').next().unwrap().to_string()
}

/// The connections the handler authenticates with an identity: every `"X__clientId"` the settings
/// code reads.
fn handler_identity_connections() -> BTreeSet<String> {
    let mut prefixes = BTreeSet::new();
    for entry in std::fs::read_dir(Path::new(ROOT).join("src/config")).unwrap() {
        let source = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for (i, part) in source.split('"').enumerate() {
            if let Some(prefix) = part.strip_suffix("__clientId")
                && i % 2 == 1
                && !prefix.is_empty()
                && prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                prefixes.insert(prefix.to_string());
            }
        }
    }
    assert!(prefixes.contains("RedisCache") && prefixes.contains("CosmosDBConnection"), "{prefixes:?}");
    prefixes
}

/// One function folder: its name and `function.json`.
fn functions() -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(ROOT).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("function.json")) else { continue };
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        found.push((name, serde_json::from_str(&text).expect("function.json is JSON")));
    }
    assert!(found.len() > 5, "{found:?}");
    found
}

/// Every `%Name%` in a JSON value's strings.
fn placeholders(value: &Value, names: &mut BTreeSet<String>) {
    match value {
        Value::String(text) => {
            for (i, part) in text.split('%').enumerate() {
                if i % 2 == 1 && !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    names.insert(part.to_string());
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| placeholders(v, names)),
        Value::Object(map) => map.values().for_each(|v| placeholders(v, names)),
        _ => {}
    }
}

/// The identity-based setting that names the service a trigger's connection points at.
fn service_setting(trigger: &str) -> Option<&'static str> {
    match trigger {
        "cosmosDBTrigger" => Some("accountEndpoint"),
        "eventHubTrigger" => Some("fullyQualifiedNamespace"),
        _ => None,
    }
}

/// One evaluated combination of parameters: their values and the settings the site gets
/// (`{"value": …}`, or `{"expression": …}` for what is known only once deployed).
struct Case {
    parameters: Value,
    settings: BTreeMap<String, Value>,
}

impl Case {
    fn value(&self, name: &str) -> Option<&str> {
        self.settings.get(name).and_then(|s| s["value"].as_str())
    }

    fn event_hubs(&self) -> bool {
        self.parameters[QUEUE_PARAMETER] == QUEUE_EVENT_HUBS
    }

    /// The settings as the handler would see them, with stand-ins for deployment-time values.
    fn environment(&self) -> BTreeMap<String, String> {
        self.settings
            .iter()
            .map(|(name, setting)| {
                let value = setting["value"].as_str().map(str::to_string).unwrap_or_else(|| stand_in(name));
                (name.clone(), value)
            })
            .collect()
    }
}

/// A value for a setting the template computes at deployment (an endpoint, a client id): shaped like
/// the real one, pointing nowhere.
fn stand_in(name: &str) -> String {
    let suffix = name.rsplit("__").next().unwrap_or(name);
    match suffix {
        "hostName" => "cachepatterns.invalid:10000".into(),
        "accountEndpoint" => "https://cachepatterns.invalid:443/".into(),
        "fullyQualifiedNamespace" => "cachepatterns.invalid".into(),
        "clientId" => "00000000-0000-0000-0000-000000000000".into(),
        "APPLICATIONINSIGHTS_CONNECTION_STRING" => {
            "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://cachepatterns.invalid/"
                .into()
        }
        _ => "stand-in".into(),
    }
}

/// Every case the checker evaluates for the template in `infra`, varying the queue and the plan.
fn cases(infra: &Path) -> Result<Vec<Case>, String> {
    let infra = infra.to_str().unwrap();
    let output = check_infra(&["--infra", infra, "--cases", "--vary", "planSku", QUEUE_PARAMETER]);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let domains = &report["domains"];
    let plans = domains["planSku"].as_array().map_or(0, Vec::len);
    let queues: Vec<&str> = domains[QUEUE_PARAMETER].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(plans >= 1 && queues.contains(&QUEUE_EVENT_HUBS) && queues.len() == 2, "{domains}");
    let cases: Vec<Case> = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| Case {
            parameters: case["parameters"].clone(),
            settings: case["settings"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
        .collect();
    let product: usize = domains.as_object().unwrap().values().map(|v| v.as_array().unwrap().len()).product();
    assert_eq!(cases.len(), product, "one case per combination: {domains}");
    Ok(cases)
}

/// What is wrong with the settings of one case, by the rules in this module's comment.
fn static_problems(case: &Case) -> Vec<String> {
    let mut problems = Vec::new();
    let mut require = |name: &str, value: Option<&str>, why: &str| match (case.settings.get(name), value) {
        (None, _) => problems.push(format!("{name} is missing ({why})")),
        (Some(_), Some(expected)) if case.value(name) != Some(expected) => {
            problems.push(format!("{name} must be {expected:?} ({why}), not {}", case.settings[name]))
        }
        _ => {}
    };
    for (name, value) in HOST_ON_AZURE {
        require(name, *value, "the Functions host on Azure");
    }
    for (function, definition) in functions() {
        let mut names = BTreeSet::new();
        placeholders(&definition, &mut names);
        for name in names {
            require(&name, None, &format!("{function}/function.json reads %{name}%"));
        }
        if case.value(&format!("AzureWebJobs.{function}.Disabled")) == Some("true") {
            continue;
        }
        for binding in definition["bindings"].as_array().unwrap() {
            let Some(connection) = binding["connection"].as_str() else { continue };
            let trigger = binding["type"].as_str().unwrap_or_default();
            let why = format!("{function}'s {trigger} connects with {connection}");
            let service =
                service_setting(trigger).unwrap_or_else(|| panic!("which setting names the service of {trigger}?"));
            require(&format!("{connection}__{service}"), None, &why);
            require(&format!("{connection}__credential"), Some("managedidentity"), &why);
            require(&format!("{connection}__clientId"), None, &why);
        }
    }
    require(&code_constant("redis.rs", "REDIS_HOST_NAME"), None, "the handler's keyless Redis (src/config/redis.rs)");
    require(
        &code_constant("cosmos.rs", "COSMOS_IDENTITY_ENDPOINT"),
        None,
        "the handler's keyless store (src/config/cosmos.rs)",
    );
    for prefix in handler_identity_connections() {
        if case.settings.keys().any(|name| name.starts_with(&format!("{prefix}__"))) {
            require(&format!("{prefix}__clientId"), None, "the handler picks the user-assigned identity by client id");
        }
    }
    let namespace = code_constant("event_hubs.rs", "NAMESPACE");
    if case.event_hubs() {
        require(&namespace, None, "write-behind on Event Hubs (src/config/event_hubs.rs)");
    } else if case.settings.contains_key(&namespace) {
        problems.push(format!("{namespace} is set with the Redis Stream queue: it switches the handler to Event Hubs"));
    }
    problems.into_iter().map(|p| format!("{}: {p}", case.parameters)).collect()
}

/// Starts the real handler as on Azure with the case's settings and says what is wrong with them.
fn handler_problems(case: &Case) -> Vec<String> {
    if case.event_hubs() && !cfg!(feature = "eventhubs") {
        return Vec::new(); // no Event Hubs client in this build to start with
    }
    let environment = case.environment();
    let mut env: Vec<(&str, &str)> = environment.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // The platform's managed identity endpoint, refusing at once: tokens fail fast, nothing waits.
    env.extend([("IDENTITY_ENDPOINT", "http://127.0.0.1:9/msi/token"), ("IDENTITY_HEADER", "stand-in")]);
    let mut handler = Handler::start_on_azure(&env);
    let (_, health) = handler.request("GET", "/api/health", None).expect("GET /api/health");
    let stderr = handler.stop();
    let mut problems = Vec::new();
    if let Some(problem) = health.get("problem") {
        problems.push(format!("the handler answers 503 misconfigured: {problem}"));
    }
    let store_error = health["store"]["error"].as_str().unwrap_or_default();
    if stderr.contains("no backing store is configured") || store_error.contains("no backing store") {
        problems.push(format!("the handler runs without a store: {store_error}"));
    }
    let queue = health["queue"]["kind"].as_str().unwrap_or_default();
    let expected = if case.event_hubs() { "eventhubs" } else { "redis-streams" };
    if health.get("problem").is_none() && queue != expected {
        problems.push(format!("the handler's write-behind queue is {queue:?}, expected {expected:?}: {health}"));
    }
    problems.into_iter().map(|p| format!("{}: {p}", case.parameters)).collect()
}

/// Every problem with the template in `infra`: the checker's own, then each case's.
fn problems(infra: &Path) -> Vec<String> {
    let cases = match cases(infra) {
        Ok(cases) => cases,
        Err(stderr) => return vec![stderr],
    };
    let mut problems: Vec<String> = cases.iter().flat_map(static_problems).collect();
    // The plan does not change what the handler reads: start it once per distinct set of settings.
    let mut started = BTreeSet::new();
    for case in &cases {
        if started.insert(case.environment()) {
            problems.extend(handler_problems(case));
        }
    }
    problems
}

#[test]
fn every_case_of_the_template_sets_what_the_host_and_the_handler_need_on_azure() {
    let problems = problems(&Path::new(ROOT).join("infra"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A copy of `infra/` with `edit` applied to `main.bicep`.
fn broken_copy(edit: impl Fn(&str) -> String) -> TempDir {
    let dir = TempDir::new("infra");
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
            }
        }
    };
    let infra = Path::new(ROOT).join("infra");
    copy(&infra, dir.path());
    copy(&infra.join("modules"), &dir.path().join("modules"));
    let main = dir.path().join("main.bicep");
    let text = std::fs::read_to_string(&main).unwrap();
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit must change main.bicep");
    std::fs::write(&main, edited).unwrap();
    dir
}

#[test]
fn the_checker_can_fail() {
    // Settings kept in a variable that no longer reaches the site count for nothing.
    let unreached = broken_copy(|text| text.replacen("  commonAppSettings,\n", "", 1));
    let found = problems(unreached.path()).join("\n");
    for name in ["RedisCache__hostName", "CosmosDBConnection__accountEndpoint", "RefreshAheadSchedule", "EventHubName"]
    {
        assert!(found.contains(&format!("{name} is missing")), "{name}: {found}");
    }
    assert!(found.contains("answers 503 misconfigured"), "the handler itself notices: {found}");

    // The Event Hubs namespace under the Redis Stream queue.
    let switched = broken_copy(|text| {
        text.replacen(
            "  { name: 'AzureWebJobs.EventHubConsumer.Disabled', value: 'true' }\n",
            "  { name: 'AzureWebJobs.EventHubConsumer.Disabled', value: 'true' }\n  { name: 'EventHubConnection__fullyQualifiedNamespace', value: 'placeholder.servicebus.windows.net' }\n",
            1,
        )
    });
    let found = problems(switched.path()).join("\n");
    assert!(found.contains("is set with the Redis Stream queue"), "{found}");

    // A setting's name the checker cannot read is a failure, not a silent gap.
    let opaque = broken_copy(|text| {
        text.replacen("{ name: 'EventHubName', value", "{ name: toUpper(eventHubs!.name), value", 1)
    });
    let found = problems(opaque.path()).join("\n");
    assert!(found.contains("not a plain string"), "{found}");

    // A nested `config` resource would replace every app setting at deployment: not followed.
    let nested = broken_copy(|text| text.to_string() + "\n");
    let module = nested.path().join("modules").join("functionapp.bicep");
    let site = std::fs::read_to_string(&module).unwrap();
    let edited = site.replacen(
        "  kind: 'functionapp,linux'\n",
        "  kind: 'functionapp,linux'\n  resource settings 'config' = {\n    name: 'appsettings'\n    properties: {}\n  }\n",
        1,
    );
    assert_ne!(edited, site, "the edit must change the site");
    std::fs::write(&module, edited).unwrap();
    let found = problems(nested.path()).join("\n");
    assert!(found.contains("nested config resource"), "{found}");

    // By hand, the same rules from the command line.
    let output = check_infra(&["--required", "NoSuchSetting"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("NoSuchSetting"));
}

#[test]
fn the_app_settings_never_carry_a_secret() {
    let output = check_infra(&["--app-settings"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let settings: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    for (name, value) in settings.as_object().unwrap() {
        let text = value.to_string().to_ascii_lowercase();
        for secret in ["accountkey", "sharedaccesskey", "password", "listkeys"] {
            assert!(!text.contains(secret), "{name} = {value}: no keys in app settings");
        }
    }
    assert_eq!(settings["FUNCTIONS_WORKER_RUNTIME"], "custom", "{settings}");
}
