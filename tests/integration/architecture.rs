//! The layers hold (docs/architecture.md): who may import whom, and no import cycles between
//! source files. Read from the sources themselves, so a new `use` that breaks a rule fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each layer and the layers it may import (itself always).
const RULES: [(&str, &[&str]); 8] = [
    ("domain", &[]),
    ("telemetry", &[]),
    ("ports", &["domain"]),
    ("patterns", &["ports", "domain", "telemetry"]),
    ("adapters", &["ports", "domain", "telemetry"]),
    ("http", &["patterns", "ports", "domain", "telemetry"]),
    ("config", &["adapters", "patterns", "ports", "domain"]),
    ("startup", &["http", "config", "adapters", "patterns", "ports", "domain", "telemetry"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, as a path relative to `src/` with `/` separators.
fn files(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(src()).expect("under src").to_string_lossy().replace('\\', "/");
            out.push(relative);
        }
    }
}

/// The module path of a file: `patterns/mod.rs` → `[patterns]`, `ports/cache.rs` → `[ports, cache]`.
fn module_of(file: &str) -> Vec<String> {
    let trimmed = file.trim_end_matches(".rs");
    let mut parts: Vec<String> = trimmed.split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib" || p == "main") {
        parts.pop();
    }
    parts
}

/// The file that holds module `path` (the longest prefix that is a file).
fn file_of(path: &[String], known: &BTreeSet<String>) -> Option<String> {
    (1..=path.len()).rev().find_map(|n| {
        let joined = path[..n].join("/");
        [format!("{joined}.rs"), format!("{joined}/mod.rs")].into_iter().find(|f| known.contains(f))
    })
}

/// The code of a file without comments and string literals (so paths in docs do not count).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut in_string = false;
        let mut previous = ' ';
        for c in line.chars() {
            if c == '"' && previous != '\\' {
                in_string = !in_string;
            } else if !in_string {
                out.push(c);
            }
            previous = c;
        }
        out.push('\n');
    }
    out
}

/// The modules a file refers to: `crate::a::b` and `super::a` paths, `use` groups included.
fn references(file: &str, text: &str) -> Vec<Vec<String>> {
    let module = module_of(file);
    let is_mod_file = file.ends_with("mod.rs") || file == "lib.rs" || file == "main.rs";
    let code = code(text);
    let mut found = Vec::new();
    let word_at = |i: usize, word: &str| code[i..].starts_with(word) && (i == 0 || !is_ident(bytes_at(&code, i - 1)));
    let mut i = 0;
    while i < code.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let (base, skip) = if word_at(i, "crate::") {
            (Vec::new(), "crate::".len())
        } else if word_at(i, "super::") {
            // `super` of a mod.rs is its parent folder's module; of a file, its folder's module.
            let mut parent = module.clone();
            if !is_mod_file || !parent.is_empty() {
                parent.pop();
            }
            (parent, "super::".len())
        } else {
            i += 1;
            continue;
        };
        let rest: Vec<char> = code[i + skip..].chars().collect();
        for path in use_tree(&rest, &mut 0) {
            let mut full = base.clone();
            full.extend(path);
            found.push(full);
        }
        i += skip;
    }
    found
}

/// The paths of a use tree at `text[*at..]`: `a::b::{c, d::{e, f}}` gives `a::b::c`, `a::b::d::e`
/// and `a::b::d::f`; a plain path ends at the first character that cannot continue it.
fn use_tree(text: &[char], at: &mut usize) -> Vec<Vec<String>> {
    let mut prefix = Vec::new();
    loop {
        while text.get(*at).is_some_and(|c| c.is_whitespace()) {
            *at += 1;
        }
        if text.get(*at) == Some(&'{') {
            *at += 1;
            let mut paths = Vec::new();
            loop {
                for tail in use_tree(text, at) {
                    let mut path = prefix.clone();
                    path.extend(tail);
                    paths.push(path);
                }
                while text.get(*at).is_some_and(|c| c.is_whitespace()) {
                    *at += 1;
                }
                match text.get(*at) {
                    Some(',') => *at += 1,
                    Some('}') => {
                        *at += 1;
                        return paths;
                    }
                    _ => return paths,
                }
                while text.get(*at).is_some_and(|c| c.is_whitespace()) {
                    *at += 1;
                }
                if text.get(*at) == Some(&'}') {
                    *at += 1;
                    return paths;
                }
            }
        }
        let start = *at;
        while text.get(*at).is_some_and(|c| is_ident(*c)) {
            *at += 1;
        }
        if *at == start {
            return vec![prefix];
        }
        let segment: String = text[start..*at].iter().collect();
        if segment != "self" {
            prefix.push(segment);
        }
        if text.get(*at) == Some(&':') && text.get(*at + 1) == Some(&':') {
            *at += 2;
        } else {
            return vec![prefix];
        }
    }
}

fn bytes_at(code: &str, i: usize) -> char {
    code[..=i].chars().last().unwrap_or(' ')
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// file → the files it imports from (not counting a module's own children: declaring and
/// re-exporting them is structure, not a dependency).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let known: BTreeSet<String> = all.iter().cloned().collect();
    let mut graph = BTreeMap::new();
    for file in &all {
        let text = std::fs::read_to_string(src().join(file)).expect("read source");
        let own = module_of(file);
        let targets: BTreeSet<String> = references(file, &text)
            .iter()
            .filter_map(|path| file_of(path, &known))
            .filter(|target| target != file)
            .filter(|target| !(module_of(target).starts_with(&own) && module_of(target).len() > own.len()))
            .collect();
        graph.insert(file.clone(), targets);
    }
    graph
}

fn layer(file: &str) -> &str {
    file.split('/').next().unwrap_or(file).trim_end_matches(".rs")
}

#[test]
fn every_layer_imports_only_the_layers_below_it() {
    let rules: BTreeMap<&str, &[&str]> = RULES.into_iter().collect();
    let mut broken = Vec::new();
    for (file, targets) in graph() {
        let from = layer(&file);
        let Some(allowed) = rules.get(from) else { continue };
        for target in targets {
            let to = layer(&target);
            if to != from && !allowed.contains(&to) && rules.contains_key(to) {
                broken.push(format!("{file} ({from}) imports {target} ({to})"));
            }
        }
    }
    assert!(broken.is_empty(), "layer rules broken:\n{}", broken.join("\n"));
    // The rule table covers every folder of src/.
    let mut all = Vec::new();
    files(&src(), &mut all);
    for file in all.iter().filter(|f| f.contains('/')) {
        assert!(rules.contains_key(layer(file)), "{file} is in no layer of the rule table");
    }
}

#[test]
fn there_is_no_import_cycle_between_files() {
    let graph = graph();
    // Depth-first search with colours: grey = on the current path.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(node, 1);
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let start = path.iter().position(|p| *p == next).unwrap_or(0);
                    let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(cycle) = visit(next, graph, state, path) {
                        return Some(cycle);
                    }
                }
            }
        }
        path.pop();
        state.insert(node, 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node.as_str()) {
            let cycle = visit(node, &graph, &mut state, &mut Vec::new());
            assert!(cycle.is_none(), "import cycle: {}", cycle.unwrap_or_default().join(" -> "));
        }
    }
    assert!(graph.len() > 40, "the sources were read ({} files)", graph.len());
}

#[test]
fn the_checker_reads_paths_from_code_not_from_comments_or_strings() {
    // The parser finds both kinds of path, and not the ones in comments or strings.
    let text = "use crate::ports::store::Store;\n// crate::http::x\nlet s = \"crate::config\";\nuse super::Core;\n";
    let found = references("patterns/read_path.rs", text);
    assert_eq!(
        found,
        vec![vec!["ports".to_string(), "store".into(), "Store".into()], vec!["patterns".into(), "Core".into()]]
    );
    // Groups are expanded, nested ones too.
    let grouped = references(
        "patterns/apply.rs",
        "use crate::{http::X, ports::{cache::Cache, self}};\nuse super::{read_path, Core};",
    );
    let names: Vec<String> = grouped.iter().map(|p| p.join("::")).collect();
    assert_eq!(names, ["http::X", "ports::cache::Cache", "ports", "patterns::read_path", "patterns::Core"]);
    let known: BTreeSet<String> = ["ports/store.rs", "ports/mod.rs", "patterns/mod.rs"].map(String::from).into();
    assert_eq!(file_of(&found[0], &known).as_deref(), Some("ports/store.rs"));
    assert_eq!(file_of(&found[1], &known).as_deref(), Some("patterns/mod.rs"));
}
