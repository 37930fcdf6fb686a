//! The Bicep template under `infra/` parses, and sets every app setting the app needs on Azure:
//! the ones the handler requires there, and every `%Setting%` a `function.json` refers to (the
//! host fails to index a function whose placeholder does not resolve).
//!
//! Parsing uses `tree-sitter-bicep` (PyPI) through `scripts/check_infra.py`; no Azure is needed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// What the handler reads on Azure, in the identity-based forms the template uses.
const HANDLER_ON_AZURE: &[&str] = &[
    "RedisCache__hostName",
    "RedisCache__clientId",
    "CosmosDBConnection__accountEndpoint",
    "CosmosDBConnection__clientId",
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
];

/// Every `%Name%` in the function folders' `function.json` files.
fn function_json_placeholders() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path().join("function.json");
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        for (i, part) in text.split('%').enumerate() {
            if i % 2 == 1 && !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                names.insert(part.to_string());
            }
        }
    }
    names
}

fn check_infra(args: &[&str]) -> std::process::Output {
    let output = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check_infra.py"))
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

#[test]
fn the_template_parses_and_sets_every_setting_the_app_needs() {
    let placeholders = function_json_placeholders();
    assert!(placeholders.contains("RefreshAheadSchedule") && placeholders.contains("EventHubName"), "{placeholders:?}");
    let mut required: Vec<&str> = HANDLER_ON_AZURE.to_vec();
    required.extend(placeholders.iter().map(String::as_str));
    let mut args = vec!["--required"];
    args.extend(&required);
    let output = check_infra(&args);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_checker_can_fail() {
    let output = check_infra(&["--required", "NoSuchSetting"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("NoSuchSetting"));
}

#[test]
fn the_app_settings_never_carry_a_secret() {
    let output = check_infra(&["--app-settings"]);
    assert!(output.status.success());
    let settings: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    for (name, value) in settings.as_object().unwrap() {
        let text = value.to_string().to_ascii_lowercase();
        for secret in ["accountkey", "sharedaccesskey", "password", "listkeys"] {
            assert!(!text.contains(secret), "{name} = {value}: no keys in app settings");
        }
    }
    assert_eq!(settings["FUNCTIONS_WORKER_RUNTIME"], "custom", "{settings}");
}
