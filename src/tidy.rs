//! Tidy checks over the source tree, in the spirit of rust-analyzer's `tidy.rs`: the rules in
//! ARCHITECTURE.md about which module may know what, checked on every `cargo test` so a change
//! that breaks one fails here instead of drifting unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Component edges that still form import cycles. Each is a debt to pay; the test fails if
/// one of them disappears without being removed here, so the list only shrinks. Empty since
/// issue #14: keep it so.
const KNOWN_CYCLE_EDGES: &[(&str, &str)] = &[];

/// Components every other one may import, which therefore import no component themselves:
/// the config (sections of every component live in it) and the shared model types.
const LEAF_COMPONENTS: &[&str] = &["config", "model"];

/// Imports that must not exist even without a cycle: the compactor works on the bucket and
/// the block list, never through the query path; the block format and TraceQL know no
/// component that does I/O.
const FORBIDDEN_EDGES: &[(&str, &str)] = &[
    ("compactor", "querier"),
    ("compactor", "frontend"),
    ("compactor", "api"),
    ("block", "backend"),
    ("block", "querier"),
    ("block", "ingester"),
    ("traceql", "block"),
    ("traceql", "querier"),
    ("model", "block"),
];

struct SourceFile {
    path: PathBuf,
    /// Path relative to the crate root, with `/` separators.
    rel: String,
    text: String,
}

impl SourceFile {
    /// The component (top-level folder under `src/`), or `None` outside `src/`.
    fn component(&self) -> Option<&str> {
        let rest = self.rel.strip_prefix("src/")?;
        rest.split_once('/').map(|(c, _)| c)
    }

    /// The lines that are not test code: a file named `tests.rs` or `*_tests.rs` is all test
    /// code; elsewhere everything from the first `#[cfg(test)]` on is.
    fn non_test_lines(&self) -> impl Iterator<Item = (usize, &str)> {
        let name = self.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let all_test = name == "tests.rs" || name.ends_with("_tests.rs") || name == "tidy.rs";
        self.text
            .lines()
            .enumerate()
            .take_while(move |(_, l)| !all_test && l.trim() != "#[cfg(test)]")
            .map(|(i, l)| (i + 1, l))
            .filter(|(_, l)| {
                let t = l.trim_start();
                !(t.starts_with("//") || t.starts_with("///"))
            })
    }
}

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<SourceFile>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read source file");
            let rel = path
                .strip_prefix(crate_root())
                .expect("under the crate root")
                .to_string_lossy()
                .replace('\\', "/");
            out.push(SourceFile { path, rel, text });
        }
    }
}

fn sources() -> Vec<SourceFile> {
    let mut files = Vec::new();
    for dir in ["src", "integration", "benches", "fuzz/fuzz_targets"] {
        rust_files(&crate_root().join(dir), &mut files);
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    assert!(files.len() > 50, "tidy found only {} files", files.len());
    files
}

/// Does `line` use the crate or module `name` (a `use` line or a `name::` path)?
fn mentions(line: &str, name: &str) -> bool {
    line.match_indices(name).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = &line[at + name.len()..];
        let starts_word = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'));
        starts_word
            && (after.starts_with("::") || after.starts_with(';') || after.starts_with(" as"))
    })
}

fn violations(files: &[SourceFile], components: &[&str], crates: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for f in files
        .iter()
        .filter(|f| f.component().is_some_and(|c| components.contains(&c)))
    {
        for (n, line) in f.non_test_lines() {
            for c in crates {
                if mentions(line, c) {
                    found.push(format!("{}:{n}: uses `{c}`: {}", f.rel, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn every_file_starts_with_a_module_comment() {
    let missing: Vec<_> = sources()
        .into_iter()
        .filter(|f| !f.text.starts_with("//!"))
        .map(|f| f.rel)
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading `//!` comment: {missing:#?}"
    );
}

#[test]
fn only_backend_uses_object_store() {
    let files = sources();
    let others: Vec<&str> = all_components(&files)
        .into_iter()
        .filter(|c| *c != "backend")
        .collect();
    let found = violations(&files, &others, &["object_store"]);
    assert!(
        found.is_empty(),
        "object_store outside src/backend/: {found:#?}"
    );
}

#[test]
fn pure_components_know_no_runtime_or_storage() {
    let files = sources();
    let found = violations(
        &files,
        &["block", "traceql", "model"],
        &[
            "tokio",
            "object_store",
            "futures",
            "async_trait",
            "axum",
            "tonic",
            "reqwest",
        ],
    );
    assert!(
        found.is_empty(),
        "async runtime or I/O in a pure component: {found:#?}"
    );
    let found = violations(
        &files,
        &["traceql"],
        &[
            "parquet",
            "arrow",
            "arrow_array",
            "arrow_schema",
            "arrow_buffer",
        ],
    );
    assert!(
        found.is_empty(),
        "traceql must know no columnar storage: {found:#?}"
    );
}

#[test]
fn only_api_and_receiver_build_or_parse_http_json_by_hand() {
    // Block metadata and the tenant index are typed serde structs; an untyped
    // `serde_json::Value` or `json!` outside api/ and receiver/ means another module is
    // speaking Tempo's HTTP shapes itself.
    let files = sources();
    let others: Vec<&str> = all_components(&files)
        .into_iter()
        .filter(|c| !matches!(*c, "api" | "receiver"))
        .collect();
    let mut found = Vec::new();
    for f in files
        .iter()
        .filter(|f| f.component().is_some_and(|c| others.contains(&c)))
    {
        for (n, line) in f.non_test_lines() {
            if line.contains("serde_json::Value") || line.contains("json!(") {
                found.push(format!("{}:{n}: {}", f.rel, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "JSON shapes handled outside api/ and receiver/: {found:#?}"
    );
}

fn all_components(files: &[SourceFile]) -> Vec<&str> {
    let set: BTreeSet<&str> = files.iter().filter_map(SourceFile::component).collect();
    set.into_iter().collect()
}

/// Component → components it imports (`crate::x` in non-test code).
fn import_graph(files: &[SourceFile]) -> BTreeMap<String, BTreeSet<String>> {
    let components: BTreeSet<&str> = all_components(files).into_iter().collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let Some(from) = f.component() else { continue };
        let edges = graph.entry(from.to_owned()).or_default();
        for (_, line) in f.non_test_lines() {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if name != from && components.contains(name.as_str()) {
                    edges.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle in `graph`, as the path of components that closes it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let from = path.iter().position(|p| p == next).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, graph, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node.as_str()) {
            if let Some(c) = visit(node, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_new_import_cycles_between_components() {
    let mut graph = import_graph(&sources());
    for (from, to) in KNOWN_CYCLE_EDGES {
        let removed = graph.get_mut(*from).is_some_and(|e| e.remove(*to));
        assert!(
            removed,
            "`{from}` no longer imports `{to}`: remove that pair from KNOWN_CYCLE_EDGES"
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle between components: {}", cycle.join(" -> "));
    }
}

#[test]
fn no_forbidden_imports() {
    let graph = import_graph(&sources());
    let found: Vec<String> = FORBIDDEN_EDGES
        .iter()
        .filter(|(from, to)| graph.get(*from).is_some_and(|e| e.contains(*to)))
        .map(|(from, to)| format!("{from} imports {to}"))
        .collect();
    assert!(found.is_empty(), "forbidden imports: {found:?}");
}

#[test]
fn leaf_components_import_no_component() {
    let graph = import_graph(&sources());
    let found: Vec<String> = LEAF_COMPONENTS
        .iter()
        .flat_map(|from| {
            graph
                .get(*from)
                .into_iter()
                .flatten()
                .map(move |to| format!("{from} imports {to}"))
        })
        .collect();
    assert!(found.is_empty(), "leaf components import others: {found:?}");
}

/// The modules `lib.rs` makes public: what `src/main.rs`, `integration/`, `benches/` and
/// `fuzz/` use. Every other module is private, so rustc's dead-code lint sees into it; a
/// module added here needs a user outside the crate.
const PUBLIC_MODULES: &[&str] = &[
    "alloc",
    "api",
    "app",
    "backend",
    "block",
    "blocklist",
    "cli",
    "config",
    "fuzzing",
    "ingester",
    "metrics",
    "model",
    "querier",
    "traceql",
];

#[test]
fn lib_exposes_only_the_modules_outside_users_need() {
    let lib = std::fs::read_to_string(crate_root().join("src/lib.rs")).expect("read lib.rs");
    let public: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert_eq!(public, PUBLIC_MODULES, "pub modules in lib.rs");
}

#[test]
fn cycle_finder_finds_cycles() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert!(mentions("use object_store::path::Path;", "object_store"));
    assert!(mentions("    tokio::spawn(x)", "tokio"));
    assert!(!mentions(
        "fn object_store_sections_parse() {",
        "object_store"
    ));
    assert!(!mentions("use crate::my_tokio::x;", "tokio"));
}
