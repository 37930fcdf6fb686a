//! docs/openapi.yaml kept true: every route and method the host serves (the `function.json`
//! files) is an operation of the document or a `405` that says so, every operation is served, and
//! real answers of the handler, in every host mode, have a documented status, documented headers,
//! and a body that validates against the documented schema.
//!
//! The answers are validated by the small JSON Schema validator below, which knows exactly the
//! keywords the document uses (`schema_keywords_are_the_supported_subset` refuses any other), so
//! that nothing in the document is silently not checked.

use crate::common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use common::host::{Call, FunctionDef, MODES, Mode, Reply, send};
use common::{RedisServer, TestApp};
use regex_automata::dfa::regex::Regex;
use serde_json::{Value, json};

/// The operations' methods, as OpenAPI spells them.
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];

/// What the document may say ahead of the code: exactly these, and only while they are not served.
const NOT_YET_SERVED_OPERATIONS: [(&str, &str); 0] = [];
const NOT_YET_SERVED_SCHEMAS: [&str; 0] = [];

/// Headers every answer has, which the document leaves to HTTP.
const TRANSPORT_HEADERS: [&str; 4] = ["content-type", "content-length", "date", "transfer-encoding"];

fn load() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml");
    let text = std::fs::read_to_string(&path).expect("docs/openapi.yaml");
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("docs/openapi.yaml is not valid YAML: {e}"))
}

/// `/api/cache-aside/{key}` and `/api/dead-letters/{id}` alike: `/api/cache-aside/{}`.
fn shape(template: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in template.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            c => out.push(c),
        }
    }
    out
}

/// The document and what it takes to check answers against it.
struct OpenApi {
    doc: Value,
    regexes: RefCell<HashMap<String, Regex>>,
}

impl OpenApi {
    fn new(doc: Value) -> Self {
        Self { doc, regexes: RefCell::new(HashMap::new()) }
    }

    /// Follows local `$ref`s.
    fn resolve<'a>(&'a self, mut node: &'a Value) -> &'a Value {
        for _ in 0..16 {
            let Some(reference) = node.get("$ref").and_then(Value::as_str) else { return node };
            let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("only local $refs: {reference}"));
            node = self.doc.pointer(pointer).unwrap_or_else(|| panic!("{reference} points at nothing"));
        }
        panic!("$ref chain too long at {node}")
    }

    /// Every operation: (METHOD, path template) → operation.
    fn operations(&self) -> BTreeMap<(String, String), &Value> {
        let mut ops = BTreeMap::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for method in METHODS {
                if let Some(op) = item.get(method) {
                    ops.insert((method.to_ascii_uppercase(), path.clone()), op);
                }
            }
        }
        ops
    }

    /// The documented path whose shape is `shape`.
    fn path_for(&self, shape_of: &str) -> Option<String> {
        self.doc["paths"].as_object().unwrap().keys().find(|p| shape(p) == shape_of).cloned()
    }

    /// The methods documented on the path of shape `shape_of`.
    fn methods_of(&self, shape_of: &str) -> BTreeSet<String> {
        let Some(path) = self.path_for(shape_of) else { return BTreeSet::new() };
        METHODS.iter().filter(|m| self.doc["paths"][&path].get(**m).is_some()).map(|m| m.to_ascii_uppercase()).collect()
    }

    fn matches(&self, pattern: &str, text: &str) -> bool {
        let mut cache = self.regexes.borrow_mut();
        let regex = cache.entry(pattern.to_string()).or_insert_with(|| {
            Regex::new(pattern).unwrap_or_else(|e| panic!("pattern {pattern:?} does not compile: {e}"))
        });
        regex.is_match(text)
    }

    /// Validates `value` against `schema`; what does not hold goes to `errors`, located at `at`.
    fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        let Some(map) = schema.as_object() else {
            match schema {
                Value::Bool(true) => {}
                Value::Bool(false) => errors.push(format!("{at}: no value is allowed here")),
                other => panic!("not a schema at {at}: {other}"),
            }
            return;
        };
        for (keyword, arg) in map {
            match keyword.as_str() {
                "type" => {
                    let types: Vec<&str> = match arg {
                        Value::String(t) => vec![t.as_str()],
                        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                        _ => panic!("type must be a string or a list at {at}"),
                    };
                    if !types.iter().any(|t| has_type(value, t)) {
                        errors.push(failed(at, value, format!("not of type {types:?}")));
                    }
                }
                "enum" => {
                    if !arg.as_array().expect("enum is a list").contains(value) {
                        errors.push(failed(at, value, format!("not one of {arg}")));
                    }
                }
                "const" => {
                    if arg != value {
                        errors.push(failed(at, value, format!("not {arg}")));
                    }
                }
                "minimum" | "maximum" => {
                    if let Some(n) = value.as_f64() {
                        let bound = arg.as_f64().expect("a number");
                        if (keyword == "minimum" && n < bound) || (keyword == "maximum" && n > bound) {
                            errors.push(failed(at, value, format!("{keyword} is {bound}")));
                        }
                    }
                }
                "minLength" | "maxLength" => {
                    if let Some(s) = value.as_str() {
                        let (n, bound) = (s.chars().count() as u64, arg.as_u64().expect("a count"));
                        if (keyword == "minLength" && n < bound) || (keyword == "maxLength" && n > bound) {
                            errors.push(failed(at, value, format!("{keyword} is {bound}")));
                        }
                    }
                }
                "pattern" => {
                    let pattern = arg.as_str().expect("a pattern");
                    if let Some(s) = value.as_str()
                        && !self.matches(pattern, s)
                    {
                        errors.push(failed(at, value, format!("does not match {pattern:?}")));
                    }
                }
                "minItems" | "maxItems" => {
                    if let Some(items) = value.as_array() {
                        let (n, bound) = (items.len() as u64, arg.as_u64().expect("a count"));
                        if (keyword == "minItems" && n < bound) || (keyword == "maxItems" && n > bound) {
                            errors.push(failed(at, value, format!("{keyword} is {bound}")));
                        }
                    }
                }
                "items" => {
                    if let Some(items) = value.as_array() {
                        for (i, item) in items.iter().enumerate() {
                            self.validate(arg, item, &format!("{at}/{i}"), errors);
                        }
                    }
                }
                "required" => {
                    if let Some(object) = value.as_object() {
                        for name in arg.as_array().expect("required is a list").iter().filter_map(Value::as_str) {
                            if !object.contains_key(name) {
                                errors.push(failed(at, value, format!("\"{name}\" is required")));
                            }
                        }
                    }
                }
                "properties" => {
                    if let Some(object) = value.as_object() {
                        for (name, sub) in arg.as_object().expect("properties is a map") {
                            if let Some(v) = object.get(name) {
                                self.validate(sub, v, &format!("{at}/{name}"), errors);
                            }
                        }
                    }
                }
                "additionalProperties" => {
                    if let Some(object) = value.as_object() {
                        let declared = map.get("properties").and_then(Value::as_object);
                        for (name, v) in object {
                            if declared.is_some_and(|d| d.contains_key(name)) {
                                continue;
                            }
                            match arg {
                                Value::Bool(false) => errors.push(format!("{at}: \"{name}\" is not documented")),
                                _ => self.validate(arg, v, &format!("{at}/{name}"), errors),
                            }
                        }
                    }
                }
                "allOf" | "anyOf" | "oneOf" => {
                    let branches = arg.as_array().expect("a list of schemas");
                    let mut failures = Vec::new();
                    let passed = branches
                        .iter()
                        .filter(|branch| {
                            let mut own = Vec::new();
                            self.validate(branch, value, at, &mut own);
                            failures.extend(own.iter().cloned());
                            own.is_empty()
                        })
                        .count();
                    let ok = match keyword.as_str() {
                        "allOf" => passed == branches.len(),
                        "anyOf" => passed >= 1,
                        _ => passed == 1,
                    };
                    if !ok {
                        errors.push(format!("{at}: {keyword}: {passed} of {} branches hold", branches.len()));
                        errors.extend(failures);
                    }
                }
                "not" => {
                    let mut own = Vec::new();
                    self.validate(arg, value, at, &mut own);
                    if own.is_empty() {
                        errors.push(failed(at, value, format!("must not match {arg}")));
                    }
                }
                "$ref" => {} // resolved above
                keyword if ANNOTATIONS.contains(&keyword) || keyword.starts_with("x-") => {}
                other => panic!("the test's validator does not know the keyword {other:?} (at {at})"),
            }
        }
    }
}

/// The keywords the validator checks.
const ASSERTIONS: [&str; 19] = [
    "$ref",
    "type",
    "enum",
    "const",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "items",
    "required",
    "properties",
    "additionalProperties",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
];
/// Keywords that assert nothing (`format` is an annotation in JSON Schema 2020-12).
const ANNOTATIONS: [&str; 6] = ["description", "title", "default", "examples", "format", "deprecated"];

fn failed(at: &str, value: &Value, what: String) -> String {
    format!("{at}: {what} (got {value})")
}

fn has_type(value: &Value, t: &str) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
        other => panic!("unknown type {other:?}"),
    }
}

/// Checks real answers against the document and remembers which operations were covered.
struct Checker<'a> {
    api: &'a OpenApi,
    errors: Vec<String>,
    covered: BTreeSet<(String, String, String)>,
}

impl<'a> Checker<'a> {
    fn new(api: &'a OpenApi) -> Self {
        Self { api, errors: Vec::new(), covered: BTreeSet::new() }
    }

    /// Checks `reply`, the answer to `call` sent to `def` in `mode`.
    fn check(&mut self, mode: Mode, def: &FunctionDef, call: &Call, reply: &Reply) {
        let keyed = call.key.is_some();
        let base = def.route.replace("/{key?}", "").replace("/{key}", "");
        let shape_of = if keyed { format!("/api/{base}/{{}}") } else { format!("/api/{base}") };
        let what = format!("{mode:?} {} {shape_of} → {}", call.method, reply.status);
        let Some(path) = self.api.path_for(&shape_of) else {
            self.errors.push(format!("{what}: the path is not documented"));
            return;
        };
        let method = call.method.to_ascii_lowercase();
        let response = if reply.status == 405 {
            // Not an operation: the answer to a method the path does not take.
            let allowed: BTreeSet<String> =
                reply.header("allow").unwrap_or("").split(',').map(|m| m.trim().to_string()).collect();
            if allowed != self.api.methods_of(&shape_of) {
                self.errors.push(format!("{what}: Allow {allowed:?} is not the path's methods"));
            }
            if self.api.doc["paths"][&path].get(&method).is_some() {
                self.errors.push(format!("{what}: 405 to a documented operation"));
            }
            self.api.resolve(&self.api.doc["components"]["responses"]["MethodNotAllowed"])
        } else {
            let Some(op) = self.api.doc["paths"][&path].get(&method) else {
                self.errors.push(format!("{what}: {} {path} is not documented", call.method));
                return;
            };
            let Some(response) = op["responses"].get(reply.status.to_string()) else {
                self.errors.push(format!("{what}: status {} is not documented: {}", reply.status, reply.body));
                return;
            };
            self.covered.insert((call.method.clone(), path.clone(), reply.status.to_string()));
            self.api.resolve(response)
        };
        // Headers: each one documented, the required ones there, each value valid.
        let documented: BTreeMap<String, &Value> = response
            .get("headers")
            .and_then(Value::as_object)
            .map(|h| h.iter().map(|(n, v)| (n.to_ascii_lowercase(), self.api.resolve(v))).collect())
            .unwrap_or_default();
        for (name, value) in &reply.headers {
            if TRANSPORT_HEADERS.contains(&name.as_str()) {
                continue;
            }
            match documented.get(name) {
                None => self.errors.push(format!("{what}: header {name}: {value} is not documented")),
                Some(header) => self.api.validate(
                    &header["schema"],
                    &Value::String(value.clone()),
                    &format!("{what}: header {name}"),
                    &mut self.errors,
                ),
            }
        }
        for (name, header) in &documented {
            if header["required"] == true && reply.header(name).is_none() {
                self.errors.push(format!("{what}: required header {name} is missing"));
            }
        }
        // A text answer (the metrics): its media type documented, the body a string.
        if let Some(content_type) = reply.header("content-type").filter(|c| c.starts_with("text/plain")) {
            let documented = response["content"].as_object().is_some_and(|media| {
                media.keys().any(|m| content_type.starts_with(m.as_str()) || m.starts_with("text/plain"))
            });
            if !documented || !reply.body.is_string() {
                self.errors.push(format!("{what}: text answer of {content_type} not documented"));
            }
            return;
        }
        // Body: JSON, valid against the documented schema.
        let Some(content) = response["content"].get("application/json") else {
            self.errors.push(format!("{what}: no application/json content documented"));
            return;
        };
        if let Some(content_type) = reply.header("content-type")
            && !content_type.starts_with("application/json")
        {
            self.errors.push(format!("{what}: Content-Type {content_type}"));
        }
        self.api.validate(&content["schema"], &reply.body, &format!("{what}: body"), &mut self.errors);
    }

    /// Sends `call` to `def` in every mode and checks each answer; returns the direct-mode one.
    async fn send_all(&mut self, router: &axum::Router, def: &FunctionDef, call: &Call) -> Reply {
        let mut direct = None;
        for mode in MODES {
            let reply = send(router, mode, def, call).await;
            self.check(mode, def, call, &reply);
            if mode == Mode::Direct {
                direct = Some(reply);
            }
        }
        direct.expect("Direct is one of the modes")
    }

    /// Sends `call` in one mode only (for calls whose answer depends on the state they change).
    async fn send_once(&mut self, router: &axum::Router, mode: Mode, def: &FunctionDef, call: &Call) -> Reply {
        let reply = send(router, mode, def, call).await;
        self.check(mode, def, call, &reply);
        reply
    }

    fn assert_clean(&self) {
        assert!(
            self.errors.is_empty(),
            "answers that docs/openapi.yaml does not describe:\n{}",
            self.errors.join("\n")
        );
    }
}

/// The HTTP functions, from their `function.json` files (what the host serves).
fn http_functions() -> Vec<FunctionDef> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("function.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .iter()
        .map(|name| FunctionDef::load(name))
        .filter(|def| def.json["bindings"].as_array().unwrap().iter().any(|b| b["type"] == "httpTrigger"))
        .collect()
}

/// Every (METHOD, path shape) the host routes to a function, with the function.
fn host_routes() -> BTreeMap<(String, String), FunctionDef> {
    let mut routes = BTreeMap::new();
    for def in http_functions() {
        let base = def.route.replace("/{key?}", "").replace("/{key}", "");
        let mut shapes = Vec::new();
        if !def.route.contains("{key}") {
            shapes.push(format!("/api/{base}"));
        }
        if def.route.contains("{key") {
            shapes.push(format!("/api/{base}/{{}}"));
        }
        for shape_of in shapes {
            for method in &def.methods {
                routes.insert((method.clone(), shape_of.clone()), def.clone());
            }
        }
    }
    routes
}

#[test]
fn schema_keywords_are_the_supported_subset() {
    let doc = load();
    assert_eq!(doc["openapi"], "3.1.0");
    let api = OpenApi::new(doc.clone());
    // Every schema in the document, wherever it is.
    fn walk(node: &Value, at: &str, in_schema: bool, found: &mut Vec<(String, Value)>) {
        match node {
            Value::Object(map) if in_schema => {
                found.push((at.to_string(), node.clone()));
                for (k, v) in map {
                    let child_is_schema = matches!(k.as_str(), "items" | "not" | "additionalProperties");
                    match k.as_str() {
                        "properties" => {
                            for (name, sub) in v.as_object().expect("properties is a map") {
                                walk(sub, &format!("{at}/properties/{name}"), true, found);
                            }
                        }
                        "allOf" | "anyOf" | "oneOf" => {
                            for (i, sub) in v.as_array().expect("a list").iter().enumerate() {
                                walk(sub, &format!("{at}/{k}/{i}"), true, found);
                            }
                        }
                        _ if child_is_schema => walk(v, &format!("{at}/{k}"), true, found),
                        _ => {}
                    }
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    let is_schema = k == "schema" || at == "/components/schemas";
                    walk(v, &format!("{at}/{k}"), is_schema, found);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, &format!("{at}/{i}"), false, found);
                }
            }
            _ => {}
        }
    }
    let mut schemas = Vec::new();
    walk(&doc, "", false, &mut schemas);
    assert!(schemas.len() > 50, "the walk finds the schemas: {}", schemas.len());
    for (at, schema) in &schemas {
        for keyword in schema.as_object().unwrap().keys() {
            assert!(
                ASSERTIONS.contains(&keyword.as_str())
                    || ANNOTATIONS.contains(&keyword.as_str())
                    || keyword.starts_with("x-"),
                "{at}: the keyword {keyword:?} is not one the test validates; teach it to tests/integration/openapi.rs"
            );
        }
        if let Some(reference) = schema.get("$ref") {
            api.resolve(&json!({"$ref": reference}));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            assert!(pattern.starts_with('^') && pattern.ends_with('$') || pattern == "\\S", "{at}: anchor {pattern:?}");
        }
    }
    // Every $ref anywhere resolves, and every operation has an id, a summary and responses.
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"").skip(1).map(|rest| &rest[..rest.find('"').unwrap()]) {
        api.resolve(&json!({"$ref": reference}));
    }
    let mut ids = BTreeSet::new();
    for ((method, path), op) in api.operations() {
        let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(ids.insert(id.to_string()), "operationId {id} twice");
        assert!(op["summary"].is_string(), "{method} {path} has no summary");
        assert!(!op["responses"].as_object().unwrap().is_empty(), "{method} {path} has no responses");
        // Status codes are strings (YAML would read 200 as a number), each a real status.
        for status in op["responses"].as_object().unwrap().keys() {
            assert!(status.len() == 3 && status.parse::<u16>().is_ok_and(|s| (200..600).contains(&s)), "{status}");
        }
    }
    // Links name operations that exist.
    for ((_, path), op) in api.operations() {
        for response in op["responses"].as_object().unwrap().values() {
            for (name, link) in api.resolve(response).get("links").and_then(Value::as_object).into_iter().flatten() {
                let target = link["operationId"].as_str().unwrap();
                assert!(ids.contains(target), "{path}: link {name} names {target}, which is no operation");
            }
        }
        assert!(op.get("links").is_none(), "{path}: links belong in a response, not in the operation");
    }
}

/// (a) The routes: what the host serves is documented or refused with `405`, what is documented
/// is served, and what is documented ahead of the code is exactly what is not served yet.
#[tokio::test]
async fn every_route_and_method_is_documented_and_every_operation_is_served() {
    let api = OpenApi::new(load());
    let routes = host_routes();
    let ops = api.operations();
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();

    // What is specified ahead of the code: exactly these.
    let unserved_ops: BTreeSet<(String, String)> =
        ops.iter().filter(|(_, op)| op.get("x-not-yet-served") == Some(&json!(true))).map(|(k, _)| k.clone()).collect();
    let expected: BTreeSet<(String, String)> =
        NOT_YET_SERVED_OPERATIONS.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(unserved_ops, expected, "operations marked x-not-yet-served");
    let unserved_schemas: BTreeSet<&str> = api.doc["components"]["schemas"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, s)| s.get("x-not-yet-served") == Some(&json!(true)))
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(unserved_schemas, NOT_YET_SERVED_SCHEMAS.into_iter().collect(), "schemas marked x-not-yet-served");

    // Every documented operation is routed by the host, and the handler runs it (no 405).
    for ((method, path), op) in &ops {
        let route = routes.get(&(method.clone(), shape(path)));
        if unserved_ops.contains(&(method.clone(), path.clone())) {
            assert!(route.is_none(), "{method} {path} is served now: remove its x-not-yet-served");
            // Straight to the handler (no function routes it): the FunctionDef only carries the call.
            let direct =
                send(&router, Mode::Direct, &FunctionDef::load("Health"), &Call::new(method, None).path(path)).await;
            assert_eq!(direct.status, 404, "{method} {path} is answered now: remove its x-not-yet-served");
            continue;
        }
        let def = route.unwrap_or_else(|| {
            panic!("{method} {path} ({}) is documented, but no function serves it", op["operationId"])
        });
        let key = path.contains('{').then_some(if def.name == "DeadLetters" { "1-0" } else { "k" });
        for mode in MODES {
            let reply = send(&router, mode, def, &Call::new(method, key)).await;
            assert_ne!(reply.status, 405, "{mode:?} {method} {path}: the handler refuses a documented operation");
        }
    }
    // Every route and method the host serves is an operation, or refused with 405 naming the
    // path's operations.
    for ((method, shape_of), def) in &routes {
        let documented = api.methods_of(shape_of);
        assert!(!documented.is_empty(), "{shape_of} ({}) is not in docs/openapi.yaml", def.name);
        if documented.contains(method) {
            continue;
        }
        let key = shape_of.ends_with("{}").then_some("k");
        for mode in MODES {
            let reply = send(&router, mode, def, &Call::new(method, key)).await;
            let allowed: BTreeSet<String> =
                reply.header("allow").unwrap_or("").split(',').map(|m| m.trim().to_string()).collect();
            assert_eq!(
                (reply.status, allowed),
                (405, documented.clone()),
                "{mode:?} {method} {shape_of} is routed by the host but not documented: document it, or refuse it with 405"
            );
        }
    }

    // The bulk read answers what BulkReadAnswer says.
    let aside = FunctionDef::load("CacheAside");
    send(&router, Mode::Direct, &FunctionDef::load("WriteThrough"), &Call::new("PUT", Some("k")).json(&json!(1))).await;
    let bulk =
        send(&router, Mode::Direct, &aside, &Call::new("POST", None).json(&json!({"keys": ["k", "absent"]}))).await;
    let mut errors = Vec::new();
    api.validate(&json!({"$ref": "#/components/schemas/BulkReadAnswer"}), &bulk.body, "bulk", &mut errors);
    assert_eq!((bulk.status, errors), (200, Vec::<String>::new()), "{}", bulk.body);
}

/// A value to write and read back.
fn sample() -> Value {
    json!({"name": "Ada", "list": [1, "two", null], "nested": {"ok": true}})
}

/// (b) Real answers, in every host mode, against their documented statuses, headers and schemas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_match_the_document() {
    let api = OpenApi::new(load());
    let mut c = Checker::new(&api);
    let mut redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let f = |name: &str| FunctionDef::load(name);
    let (aside, ahead, through, behind) = (f("CacheAside"), f("RefreshAheadRead"), f("WriteThrough"), f("WriteBehind"));
    let (invalidate, clear, dead_letters, health) =
        (f("CacheInvalidate"), f("CacheClear"), f("DeadLetters"), f("Health"));

    // Writes, then reads: hits, misses, the key-less forms and the seed's bodies.
    c.send_all(&router, &through, &Call::new("PUT", Some("user/1 ü?")).query("tags", "a,b").json(&sample())).await;
    c.send_all(&router, &through, &Call::new("POST", Some("post")).text("plain text", "text/plain")).await;
    c.send_all(&router, &through, &Call::new("PUT", None).query("key", ".").query("ttl", "60").json(&json!(null)))
        .await;
    c.send_all(&router, &through, &Call::new("POST", None).json(&json!({"Key": "seed", "ValueToInsert": [1, 2]})))
        .await;
    c.send_all(&router, &behind, &Call::new("PUT", Some("wb")).json(&json!({"n": 1}))).await;
    c.send_all(&router, &behind, &Call::new("POST", Some("wb-post")).json(&json!(2))).await;
    c.send_all(&router, &behind, &Call::new("PUT", None).query("key", "wb-q").json(&json!("v"))).await;
    c.send_all(&router, &behind, &Call::new("POST", None).json(&json!({"key": "wb-seed", "valueToInsert": 3}))).await;
    for key in ["user/1 ü?", "post", "wb", "missing"] {
        c.send_all(&router, &aside, &Call::new("GET", Some(key))).await;
        c.send_all(&router, &aside, &Call::new("POST", Some(key))).await;
        c.send_all(&router, &ahead, &Call::new("GET", Some(key))).await;
    }
    c.send_all(&router, &aside, &Call::new("GET", None).query("key", ".")).await;
    c.send_all(&router, &ahead, &Call::new("GET", None).query("key", "seed")).await;
    c.send_all(&router, &aside, &Call::new("POST", None).text("seed", "text/plain")).await;
    c.send_all(&router, &aside, &Call::new("POST", None).json(&json!({"Key": "seed"}))).await;
    c.send_all(&router, &aside, &Call::new("POST", None).json(&json!("nothing here"))).await;
    // Bulk reads: hits, an absent key; a bad one.
    c.send_all(&router, &aside, &Call::new("POST", None).json(&json!({"keys": ["seed", "user/1 ü?", "absent"]}))).await;
    c.send_all(&router, &aside, &Call::new("POST", None).json(&json!({"keys": []}))).await;
    // The metrics, as Prometheus text.
    c.send_all(&router, &f("Metrics"), &Call::new("GET", None)).await;
    // A read that reloads from the store after the cache lost the entry.
    redis.command("FLUSHALL").unwrap();
    c.send_all(&router, &aside, &Call::new("GET", Some("seed"))).await;

    // Deletes.
    c.send_all(&router, &through, &Call::new("DELETE", Some("post"))).await;
    c.send_all(&router, &through, &Call::new("DELETE", None).query("key", "seed")).await;
    c.send_all(&router, &behind, &Call::new("DELETE", Some("wb"))).await;
    c.send_all(&router, &behind, &Call::new("DELETE", None).query("key", "wb-q")).await;

    // Bad input: 400, 405, 413.
    c.send_all(&router, &aside, &Call::new("GET", Some("ctl\u{7}"))).await;
    c.send_all(&router, &aside, &Call::new("GET", None)).await;
    c.send_all(&router, &ahead, &Call::new("GET", Some(&"k".repeat(513)))).await;
    c.send_all(&router, &through, &Call::new("PUT", Some("k")).text("{not json", "application/json")).await;
    c.send_all(&router, &through, &Call::new("PUT", Some("k")).query("tags", ",").json(&json!(1))).await;
    c.send_all(&router, &through, &Call::new("POST", Some("k")).query("ttl", "0").json(&json!(1))).await;
    c.send_all(&router, &through, &Call::new("POST", None).json(&json!({"Key": "k"}))).await;
    c.send_all(&router, &behind, &Call::new("PUT", Some("k"))).await;
    c.send_all(&router, &behind, &Call::new("POST", None).json(&json!([1]))).await;
    c.send_all(&router, &through, &Call::new("GET", Some("k"))).await;
    c.send_all(&router, &aside, &Call::new("DELETE", None)).await;
    c.send_all(&router, &health, &Call::new("POST", None)).await;
    c.send_all(&router, &clear, &Call::new("DELETE", None)).await;
    c.send_all(&router, &dead_letters, &Call::new("DELETE", None)).await;
    c.send_all(&router, &invalidate, &Call::new("POST", Some("k")).json(&json!({"keys": ["k"]}))).await;
    c.send_all(&router, &through, &Call::new("PUT", Some("k")).chunked().json(&json!(1))).await;
    {
        let small = TestApp::new(&redis, &[("MaxValueBytes", "64")]);
        let small_router = small.app.router();
        let big = json!("x".repeat(100));
        for (def, call) in [
            (&through, Call::new("PUT", Some("big")).json(&big)),
            (&through, Call::new("POST", None).json(&json!({"Key": "big", "ValueToInsert": big}))),
            (&behind, Call::new("POST", Some("big")).json(&big)),
            (&behind, Call::new("PUT", None).query("key", "big").json(&big)),
        ] {
            c.send_all(&small_router, def, &call).await;
        }
    }

    // Invalidation: keys, tags, 403 for everything, the admin clear.
    c.send_all(&router, &invalidate, &Call::new("DELETE", Some("user/1 ü?")).query("hard", "true")).await;
    c.send_all(&router, &invalidate, &Call::new("DELETE", None).query("key", "wb-post")).await;
    c.send_all(&router, &invalidate, &Call::new("POST", None).json(&json!({"keys": ["a"]}))).await;
    c.send_all(&router, &invalidate, &Call::new("POST", None).json(&json!({"keys": ["a", "b"], "hard": true}))).await;
    c.send_all(&router, &invalidate, &Call::new("POST", None).json(&json!({"tags": ["b", " a "]}))).await;
    c.send_all(&router, &invalidate, &Call::new("POST", None).json(&json!({"all": true}))).await;
    c.send_all(&router, &invalidate, &Call::new("POST", None).json(&json!({"tags": ["a,b"]}))).await;
    c.send_all(&router, &invalidate, &Call::new("DELETE", Some("k")).query("hard", "maybe")).await;
    c.send_all(&router, &clear, &Call::new("POST", None)).await;

    // Dead letters: list, page, one, replay (422 for poison, 200 for a real event), discard.
    for poison in ["not json", "[]", "{}"] {
        t.record_dead_letter(poison).await;
    }
    let event = json!({"key": "dl", "op": "upsert", "value": 1, "version": 1, "ts": "2026-01-01T00:00:00Z"});
    let good = t.record_dead_letter(&event.to_string()).await;
    let list = c.send_all(&router, &dead_letters, &Call::new("GET", None)).await;
    let first = list.body["items"][0]["id"].as_str().unwrap().to_string();
    let page =
        c.send_all(&router, &dead_letters, &Call::new("GET", None).query("count", "2").query("after", &first)).await;
    assert_eq!(page.body["items"].as_array().map(Vec::len), Some(2), "{}", page.body);
    c.send_all(&router, &dead_letters, &Call::new("GET", None).query("count", "0")).await;
    c.send_all(&router, &dead_letters, &Call::new("GET", None).query("after", "yesterday")).await;
    c.send_all(&router, &dead_letters, &Call::new("GET", Some(&first))).await;
    c.send_all(&router, &dead_letters, &Call::new("GET", Some("1-0"))).await;
    c.send_all(&router, &dead_letters, &Call::new("GET", Some("not-an-id"))).await;
    c.send_all(&router, &dead_letters, &Call::new("POST", Some("1-0"))).await;
    c.send_all(&router, &dead_letters, &Call::new("DELETE", Some("1-0"))).await;
    let poison = c.send_once(&router, Mode::Payload, &dead_letters, &Call::new("POST", Some(&first))).await;
    assert_eq!(poison.status, 422, "{}", poison.body);
    let replayed = c.send_once(&router, Mode::Proxied, &dead_letters, &Call::new("POST", Some(good.as_str()))).await;
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    let discarded = c.send_once(&router, Mode::Direct, &dead_letters, &Call::new("DELETE", Some(&first))).await;
    assert_eq!(discarded.status, 200, "{}", discarded.body);
    c.send_all(&router, &dead_letters, &Call::new("POST", None).query("count", "1")).await;
    c.send_all(&router, &dead_letters, &Call::new("POST", None)).await;

    // Health, up and down; a read with nothing usable while the store is down.
    let up = c.send_all(&router, &health, &Call::new("GET", None)).await;
    assert_eq!(up.status, 200, "{}", up.body);
    t.store.set_failing(true);
    let down = c.send_all(&router, &health, &Call::new("GET", None)).await;
    assert_eq!(down.status, 503, "{}", down.body);
    let unavailable = c.send_all(&router, &aside, &Call::new("GET", Some("never-cached"))).await;
    assert_eq!(unavailable.status, 503, "{}", unavailable.body);
    c.send_all(&router, &through, &Call::new("PUT", Some("k")).json(&json!(1))).await;
    t.store.set_failing(false);

    // Redis gone: reads bypass it, writes go through, write-behind and dead letters are 503,
    // invalidations wait (202).
    redis.stop();
    c.send_all(&router, &aside, &Call::new("GET", Some("user/1 ü?"))).await;
    c.send_all(&router, &through, &Call::new("PUT", Some("k")).json(&json!(2))).await;
    c.send_all(&router, &behind, &Call::new("PUT", Some("k")).json(&json!(3))).await;
    c.send_all(&router, &dead_letters, &Call::new("GET", None)).await;
    c.send_all(&router, &invalidate, &Call::new("DELETE", Some("k"))).await;
    c.send_all(&router, &invalidate, &Call::new("POST", None).json(&json!({"keys": ["a", "b"]}))).await;
    c.send_all(&router, &invalidate, &Call::new("POST", None).json(&json!({"tags": ["t"]}))).await;
    c.send_all(&router, &clear, &Call::new("POST", None)).await;
    c.send_all(&router, &health, &Call::new("GET", None)).await;

    c.assert_clean();
    // Every served operation was checked, and the statuses that matter most with it.
    let covered_ops: BTreeSet<(String, String)> = c.covered.iter().map(|(m, p, _)| (m.clone(), p.clone())).collect();
    for ((method, path), op) in api.operations() {
        if op.get("x-not-yet-served").is_none() {
            assert!(covered_ops.contains(&(method.clone(), path.clone())), "{method} {path} was not checked");
        }
    }
    let statuses: BTreeSet<&str> = c.covered.iter().map(|(_, _, s)| s.as_str()).collect();
    for status in ["200", "202", "400", "403", "404", "411", "413", "422", "503"] {
        assert!(statuses.contains(status), "no {status} answer was checked: {statuses:?}");
    }
}

/// The check fails when an answer drifts from the document: here the document loses a field of
/// the read answer, then a header, then a status, and real answers no longer pass.
#[tokio::test]
async fn a_drift_between_the_answers_and_the_document_fails_the_check() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[]);
    let router = t.app.router();
    let (aside, through) = (FunctionDef::load("CacheAside"), FunctionDef::load("WriteThrough"));
    send(&router, Mode::Direct, &through, &Call::new("PUT", Some("k")).json(&json!(1))).await;
    let read = Call::new("GET", Some("k"));
    let hit = send(&router, Mode::Direct, &aside, &read).await;
    let missing = send(&router, Mode::Direct, &aside, &Call::new("GET", Some("absent"))).await;

    let errors_with = |change: &dyn Fn(&mut Value)| {
        let mut doc = load();
        change(&mut doc);
        let api = OpenApi::new(doc);
        let mut c = Checker::new(&api);
        c.check(Mode::Direct, &aside, &read, &hit);
        c.check(Mode::Direct, &aside, &Call::new("GET", Some("absent")), &missing);
        c.errors
    };
    assert_eq!(errors_with(&|_| {}), Vec::<String>::new(), "the real document describes both answers");
    let errors = errors_with(&|doc| {
        doc["components"]["schemas"]["ReadAnswer"]["properties"].as_object_mut().unwrap().remove("source");
    });
    assert!(errors.iter().any(|e| e.contains("\"source\" is not documented")), "{errors:?}");
    let errors = errors_with(&|doc| {
        doc["components"]["schemas"]["Source"]["enum"] = json!(["store", "stale"]);
    });
    assert!(errors.iter().any(|e| e.contains("not one of")), "{errors:?}");
    let errors = errors_with(&|doc| {
        doc["components"]["responses"]["Read"]["headers"].as_object_mut().unwrap().remove("x-cache");
    });
    assert!(errors.iter().any(|e| e.contains("header x-cache: hit is not documented")), "{errors:?}");
    let errors = errors_with(&|doc| {
        doc["paths"]["/api/cache-aside/{key}"]["get"]["responses"].as_object_mut().unwrap().remove("404");
    });
    assert!(errors.iter().any(|e| e.contains("status 404 is not documented")), "{errors:?}");
}
