//! The layering of every crate in the workspace, checked on its source:
//! no import cycle between top-level modules (a cycle may live inside one
//! folder, never between two; none inside the core's `topic/` either), and
//! no source file over 600 lines.
//!
//! A module imports another when its code names it: `crate::x`, a `use
//! crate::{x, …}` group, or a `super::` path that climbs out of its own
//! top-level module. Comments do not count: a doc link to a type above is a
//! pointer for the reader, not an import.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;

/// Top-level module → the top-level modules it imports.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The crates whose `src/` is checked, relative to the workspace root.
const CRATES: &[&str] = &[
    ".", "grammar", "macros", "nats", "durable", "benches", "demos", "checks",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("checks/ sits in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("readable directory").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file below `src/`: `conn/task.rs` is `[conn,
/// task]`, `conn/mod.rs` is `[conn]`, `lib.rs` is `[]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().expect("a file name");
    let stem = file.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// The code of a file without its comments (line comments and doc
/// comments; block comments are not used in this workspace).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal (a URL, say) keeps the line:
            // good enough, since such a line names no module.
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first names of each item of a `{a, b::c, …}` group (`group` starts
/// after its `{`).
fn group_items(group: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && !c.is_whitespace() => {
                out.push(ident_at(&group[i..]));
                item_start = false;
            }
            _ => {}
        }
    }
    out
}

/// The names a path continues with: one ident, or each item of a group.
fn first_names(after: &str) -> Vec<&str> {
    match after.strip_prefix('{') {
        Some(group) => group_items(group),
        None => vec![ident_at(after)],
    }
}

/// The top-level modules that `code`, in the module at `path`, names.
fn references(code: &str, path: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    // `crate::x` anywhere, and every item of `use crate::{a, b::c, …}`.
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        out.extend(first_names(after).into_iter().map(str::to_owned));
        rest = after;
    }
    // `super::…::x` that climbs to the crate root names the top-level `x`;
    // one that stays below it stays in this file's own top-level module.
    let mut rest = code;
    while let Some(at) = rest.find("super::") {
        let before_ok = at == 0 || {
            let prev = rest[..at].chars().next_back().unwrap_or(' ');
            !(prev.is_ascii_alphanumeric() || prev == '_' || prev == ':')
        };
        let mut after = &rest[at..];
        let mut climbs = 0;
        while let Some(next) = after.strip_prefix("super::") {
            climbs += 1;
            after = next;
        }
        if before_ok && climbs >= path.len() && !path.is_empty() {
            out.extend(first_names(after).into_iter().map(str::to_owned));
        }
        rest = &rest[at + "super::".len() * climbs.max(1)..];
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// Strongly connected components of more than one node (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !graph.contains_key(w) {
                continue;
            }
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// Each crate's top-level import graph, and its files with their lengths.
fn survey(krate: &str) -> (Graph, Vec<(PathBuf, usize)>) {
    let src = workspace_root().join(krate).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut graph = Graph::new();
    let mut lengths = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("readable source");
        let rel = file.strip_prefix(&src).expect("below src/");
        lengths.push((rel.to_path_buf(), text.lines().count()));
        let path = module_path(rel);
        let Some(top) = path.first() else { continue }; // lib.rs: the root
        let refs = references(&code(&text), &path);
        let edges = graph.entry(top.clone()).or_default();
        edges.extend(refs.into_iter().filter(|m| m != top));
    }
    (graph, lengths)
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let mut found = Vec::new();
    for krate in CRATES {
        let (graph, _) = survey(krate);
        for cycle in cycles(&graph) {
            found.push(format!("{krate}/src: {}", cycle.join(" ")));
        }
    }
    assert!(
        found.is_empty(),
        "modules that import each other in a cycle:\n{}",
        found.join("\n")
    );
}

/// The modules of one folder of a crate (`src/<folder>/`), each a file or
/// a sub-folder of it, and which of them each imports. Its `mod.rs` is the
/// folder's root and not a node, as `lib.rs` is not for a crate.
fn folder_graph(dir: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let paths: Vec<(PathBuf, Vec<String>)> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(dir).expect("below the folder");
            (f.clone(), module_path(rel))
        })
        .collect();
    let siblings: BTreeSet<String> = paths
        .iter()
        .filter_map(|(_, p)| p.first().cloned())
        .collect();
    let mut graph = Graph::new();
    for (file, path) in &paths {
        let Some(node) = path.first() else { continue };
        let text = fs::read_to_string(file).expect("readable source");
        let refs = references(&code(&text), path);
        let edges = graph.entry(node.clone()).or_default();
        edges.extend(
            refs.into_iter()
                .filter(|m| m != node && siblings.contains(m)),
        );
    }
    graph
}

/// The topic core, arranged by who owns the state: no two of its modules
/// import each other, directly or around a circle.
#[test]
fn no_import_cycle_inside_the_topic_folder() {
    let graph = folder_graph(&workspace_root().join("src/topic"));
    assert!(
        graph.contains_key("publish") && graph.contains_key("line"),
        "{graph:?}"
    );
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "modules of src/topic/ that import each other in a cycle: {found:?}"
    );
}

#[test]
fn no_source_file_over_600_lines() {
    let mut long = Vec::new();
    for krate in CRATES {
        let (_, lengths) = survey(krate);
        for (file, lines) in lengths {
            if lines > MAX_LINES {
                long.push(format!("{krate}/src/{}: {lines} lines", file.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}

/// The checker itself: it sees a cycle made on purpose, through each kind
/// of reference, and not one made only of comments.
#[test]
fn the_checker_sees_cycles() {
    let path = |p: &str| module_path(Path::new(p));
    let a = references("use crate::{b::{X, Y}, c};", &path("a.rs"));
    assert_eq!(a, BTreeSet::from(["b".to_owned(), "c".to_owned()]));
    let nested = references(
        "use super::super::proto::Frame; use super::Cmd;",
        &path("conn/task.rs"),
    );
    assert_eq!(nested, BTreeSet::from(["proto".to_owned()]));
    let from_mod = references("use super::stats::Stats;", &path("conn/mod.rs"));
    assert_eq!(from_mod, BTreeSet::from(["stats".to_owned()]));
    let grouped = references(
        "use super::super::{proto::Frame, wire};",
        &path("conn/task.rs"),
    );
    assert_eq!(
        grouped,
        BTreeSet::from(["proto".to_owned(), "wire".to_owned()])
    );
    assert!(references(&code("/// See [`crate::bus::Bus`]."), &path("a.rs")).is_empty());

    let graph = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
        ("d".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]);
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);

    // Inside a folder: the cycle `topic/` had, between the line of waiting
    // publishers and the publish path, is seen (a sub-folder is one node).
    let dir = std::env::temp_dir().join(format!("tidings-layers-{}", std::process::id()));
    fs::create_dir_all(dir.join("ring")).unwrap();
    fs::write(dir.join("mod.rs"), "mod line; mod publish; mod ring;").unwrap();
    fs::write(dir.join("line.rs"), "use super::publish::FullSub;").unwrap();
    fs::write(
        dir.join("publish.rs"),
        "use super::{line::Turn, TopicState};",
    )
    .unwrap();
    fs::write(dir.join("ring/mod.rs"), "use super::TopicState;").unwrap();
    fs::write(dir.join("ring/cursor.rs"), "use super::super::line::Turn;").unwrap();
    let graph = folder_graph(&dir);
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(cycles(&graph), vec![vec!["line", "publish"]]);
    assert_eq!(graph["ring"], BTreeSet::from(["line".to_owned()]));
}
