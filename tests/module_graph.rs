//! The library's module graph runs one way: the composition root (`cli`,
//! `startup`) → `configuration` → components → the storage layer → `keys`.
//! Read from the sources: every `crate::<module>` a file names (outside its
//! `#[cfg(test)]` part) is an edge from the file's module to that one. A
//! cycle, a component that reads the whole `Settings`, or a `keys` that
//! reaches up fails here, naming the files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that may see `configuration`: those that build settings into
/// components, and `configuration` itself.
const COMPOSITION_ROOT: &[&str] = &["cli", "configuration", "startup"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("src")
        .map(|entry| entry.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The graph node of a source file: its top-level module, except that the
/// storage layer's `keys` is a node of its own (the bottom of the graph).
fn node_of(relative: &Path) -> Option<String> {
    let parts: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [only] if only == "lib" || only == "main" => None,
        [store, keys] if store == "store" && keys == "keys" => Some("keys".to_owned()),
        [first, ..] => Some(first.clone()),
        [] => None,
    }
}

/// The node a `crate::` path names; lib.rs's aliases point into `store`.
fn node_named(path: &str) -> String {
    let mut segments = path.split("::").map(str::trim);
    let first = segments.next().unwrap_or_default();
    let second = segments.next().unwrap_or_default();
    match (first, second) {
        ("keys", _) | ("store", "keys") => "keys".to_owned(),
        ("cache", _) => "store".to_owned(),
        (first, _) => first.to_owned(),
    }
}

/// Every path `source` names after `crate::`, a grouped import
/// (`crate::{store, upload::Take}`, over several lines too) giving one
/// path per member.
fn crate_paths(source: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // The members at the group's own depth; a nested group names
            // its root before its brace (`store::{self, Role}`).
            let (mut depth, mut member, mut end) = (0usize, String::new(), group.len());
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = i;
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        paths.push(std::mem::take(&mut member));
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 && c != '}' {
                    member.push(c);
                }
            }
            paths.push(member);
            rest = &group[end..];
            continue;
        }
        let end = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(after.len());
        paths.push(after[..end].to_owned());
        rest = &after[end..];
    }
    paths
        .iter()
        // `configuration as cfg` names `configuration`.
        .map(|path| {
            let path = path.split(" as ").next().unwrap_or_default();
            path.trim().trim_end_matches(':').to_owned()
        })
        .filter(|path| !path.is_empty())
        .collect()
}

/// The part of a source file the graph reads: its lines up to its test
/// module, without comment lines.
fn code_of(source: &str) -> String {
    source
        .lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// node → (node it imports → the files that do).
fn graph() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&root).expect("under src").to_path_buf();
        if relative.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let Some(from) = node_of(&relative) else {
            continue;
        };
        let source = std::fs::read_to_string(&file).expect("read");
        let entry = edges.entry(from.clone()).or_default();
        for path in crate_paths(&code_of(&source)) {
            let to = node_named(&path);
            if to != from {
                entry
                    .entry(to)
                    .or_default()
                    .insert(relative.display().to_string());
            }
        }
    }
    edges
}

#[test]
fn grouped_and_nested_imports_are_read_as_edges() {
    let paths = crate_paths(
        "use crate::{\n    store::{self, Role},\n    upload,\n    configuration as cfg,\n};\nuse crate::keys::EventKind;",
    );
    assert_eq!(
        paths,
        ["store", "upload", "configuration", "keys::EventKind"]
    );
    let nodes: Vec<String> = paths.iter().map(|p| node_named(p)).collect();
    assert_eq!(nodes, ["store", "upload", "configuration", "keys"]);
}

#[test]
fn the_module_graph_has_no_cycle() {
    let edges = graph();
    assert!(edges.len() > 10, "{edges:?}");
    // Depth-first search; a node met again on the current path is a cycle.
    fn visit<'a>(
        node: &'a str,
        edges: &'a BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|n| n.to_string()).collect();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for next in edges.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            let through: Vec<String> = cycle
                .windows(2)
                .map(|pair| {
                    format!(
                        "{} → {} in {:?}",
                        pair[0], pair[1], edges[&pair[0]][&pair[1]]
                    )
                })
                .collect();
            panic!("import cycle {cycle:?}:\n{}", through.join("\n"));
        }
    }
}

#[test]
fn only_the_composition_root_reads_the_configuration() {
    let edges = graph();
    let readers: Vec<String> = edges
        .iter()
        .filter(|(from, to)| {
            to.contains_key("configuration") && !COMPOSITION_ROOT.contains(&from.as_str())
        })
        .map(|(from, to)| format!("{from} in {:?}", to["configuration"]))
        .collect();
    assert!(
        readers.is_empty(),
        "components take their own settings section, not `configuration`: {readers:?}"
    );
}

#[test]
fn keys_and_the_leaves_import_nothing_of_the_crate() {
    let edges = graph();
    for leaf in ["keys", "files", "shutdown", "schedule"] {
        let imports = edges.get(leaf).cloned().unwrap_or_default();
        assert!(imports.is_empty(), "{leaf} imports {imports:?}");
    }
    let event: BTreeSet<&String> = edges["event"].keys().collect();
    assert_eq!(
        event,
        BTreeSet::from([&"keys".to_owned()]),
        "the event rules sit on keys only"
    );
}
