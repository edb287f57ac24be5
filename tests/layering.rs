//! The source's dependency rule, checked from the files themselves:
//! dependencies point one way,
//!
//! ```text
//! cmd ─▶ serve ─▶ ingest ─▶ lifecycle ─▶ analytics ─▶ notify ─▶ db ─▶ embedded ─▶ kernel, pgtext, exit
//! ```
//!
//! a module imports only from its own folder or from a folder below it, and
//! the files of one folder do not import each other in a cycle. The pure
//! `kernel` is a crate of its own (`crates/kernel`, re-exported as
//! `tripload::kernel`): the compiler keeps tripload out of it; this file
//! checks that it depends only on small pure crates, does no I/O and has no
//! cycle between its files either. Comments and `#[cfg(test)]` modules
//! are not imports (a test may use anything).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules, lowest first. `gen` (the synthetic data generator)
/// stands beside `kernel`: it imports nothing from the crate.
const LAYERS: &[&[&str]] = &[
    &["kernel", "gen", "exit", "pgtext"],
    &["embedded"],
    &["db"],
    &["notify"],
    &["analytics"],
    &["lifecycle"],
    &["ingest"],
    &["serve"],
    &["cmd"],
];

/// Imports against the rule that are known and owned by other work, with
/// the reason; the test fails when one of them is gone, so the list shrinks.
const KNOWN: &[(&str, &str, &str)] = &[];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]` modules.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<i32> = None;
    let mut depth = 0i32;
    let mut test_attr = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        let line = match line.find(" // ") {
            Some(i) => &line[..i],
            None => line,
        };
        let opens = line.matches('{').count() as i32;
        let closes = line.matches('}').count() as i32;
        if skip_depth.is_none() && test_attr && t.starts_with("mod ") {
            skip_depth = Some(depth);
        }
        test_attr = t.starts_with("#[cfg(test)]");
        depth += opens - closes;
        match skip_depth {
            Some(d) if depth <= d && closes > 0 => skip_depth = None,
            Some(_) => {}
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// `(folder or top-level file, file within it)` of a path under `src/`.
fn place(rel: &Path) -> (String, String) {
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    match parts.as_slice() {
        [file] => (file.clone(), "mod".into()),
        [folder, file, ..] => (folder.clone(), file.clone()),
        [] => unreachable!("a file has a name"),
    }
}

/// Every `crate::a::b` (as `(a, b)`, `b` empty when absent) in `code`, and
/// every `super::b` (as `("super", b)`).
fn paths(code: &str) -> Vec<(String, String)> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (prefix, tag) in [("crate::", None), ("super::", Some("super"))] {
        for (i, _) in code.match_indices(prefix) {
            let before = code[..i].chars().last();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &code[i + prefix.len()..];
            let first = ident(rest);
            match tag {
                Some(t) => out.push((t.to_string(), first)),
                None => {
                    let second = rest[first.len()..]
                        .strip_prefix("::")
                        .map(ident)
                        .unwrap_or_default();
                    out.push((first, second));
                }
            }
        }
    }
    out
}

#[test]
fn dependencies_point_one_way() {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 20, "found the sources in {}", root.display());
    let mut problems = Vec::new();
    let mut known_seen = BTreeSet::new();
    // folder → file → sibling files it imports.
    let mut siblings: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&root).expect("under src");
        let (module, file) = place(rel);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(own) = layer(&module) else {
            problems.push(format!(
                "src/{}: module `{module}` has no layer in tests/layering.rs",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).expect("readable source");
        let code = code(&text);
        let folder = f.parent().expect("in a folder");
        let is_file = |name: &str| !name.is_empty() && folder.join(format!("{name}.rs")).exists();
        for (to, sub) in paths(&code) {
            if to == "super" {
                if file != "mod" && sub != file && is_file(&sub) && sub != "mod" {
                    siblings
                        .entry(module.clone())
                        .or_default()
                        .entry(file.clone())
                        .or_default()
                        .insert(sub);
                }
                continue;
            }
            if to == module {
                if file != "mod" && is_file(&sub) && sub != file {
                    siblings
                        .entry(module.clone())
                        .or_default()
                        .entry(file.clone())
                        .or_default()
                        .insert(sub);
                }
                continue;
            }
            let Some(theirs) = layer(&to) else { continue };
            if theirs < own {
                continue;
            }
            let name = rel.display().to_string();
            if let Some(k) = KNOWN.iter().find(|k| k.0 == name && k.1 == to) {
                known_seen.insert(k.0);
                continue;
            }
            problems.push(format!(
                "src/{name}: `{module}` imports crate::{to}::{sub}, which is not below it ({})",
                "cmd → ingest → analytics → notify → db → embedded → kernel"
            ));
        }
    }
    for k in KNOWN {
        if !known_seen.contains(k.0) {
            problems.push(format!(
                "{} no longer imports {}: remove it from KNOWN in tests/layering.rs",
                k.0, k.1
            ));
        }
    }
    for (module, graph) in &siblings {
        if let Some(cycle) = find_cycle(graph) {
            problems.push(format!(
                "src/{module}/: files import each other in a cycle: {cycle}"
            ));
        }
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "\n  {}", problems.join("\n  "));
}

/// A cycle in `graph` (as `a → b → a`), if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<String> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<String> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle.join(" → "));
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// What the kernel crate may depend on: small crates that do no I/O.
const KERNEL_DEPENDENCIES: &[&str] = &[
    "geo-types",
    "memchr",
    "rustc-hash",
    "thiserror",
    "xxhash-rust",
];

/// What the kernel's code may not name (tests aside).
const KERNEL_FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::net",
    "std::process",
    "std::env",
    "std::thread",
    "std::io",
];

fn kernel_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/kernel")
}

/// The names under `[dependencies]` in a Cargo.toml.
fn dependencies(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[dependencies]";
        } else if inside && !line.is_empty() && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once('=') {
                out.push(name.trim().to_string());
            }
        }
    }
    out
}

#[test]
fn kernel_is_a_pure_crate() {
    let dir = kernel_dir();
    let manifest =
        std::fs::read_to_string(dir.join("Cargo.toml")).expect("crates/kernel/Cargo.toml");
    let deps = dependencies(&manifest);
    assert!(!deps.is_empty(), "read the kernel's dependencies");
    let mut problems: Vec<String> = deps
        .iter()
        .filter(|d| !KERNEL_DEPENDENCIES.contains(&d.as_str()))
        .map(|d| {
            format!("crates/kernel/Cargo.toml: depends on `{d}` (allowed: {KERNEL_DEPENDENCIES:?})")
        })
        .collect();
    let mut files = Vec::new();
    rust_files(&dir.join("src"), &mut files);
    assert!(
        files.len() >= 8,
        "found the kernel's sources in {}",
        dir.display()
    );
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let name = f
            .file_stem()
            .expect("a file name")
            .to_string_lossy()
            .to_string();
        let code = code(&std::fs::read_to_string(f).expect("readable source"));
        for bad in KERNEL_FORBIDDEN {
            if code.contains(bad) {
                problems.push(format!(
                    "crates/kernel/src/{name}.rs: uses {bad} (the kernel does no I/O)"
                ));
            }
        }
        for (to, _) in paths(&code) {
            if to != "super" && to != name && name != "lib" {
                graph.entry(name.clone()).or_default().insert(to);
            }
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        problems.push(format!(
            "crates/kernel/src/: files import each other in a cycle: {cycle}"
        ));
    }
    assert!(problems.is_empty(), "\n  {}", problems.join("\n  "));
}

#[test]
fn the_kernel_check_reads_dependencies() {
    let manifest = "[package]\nname = \"k\"\n\n[dependencies]\nmemchr = \"2\"\n# a comment\ntokio = { version = \"1\" }\n\n[dev-dependencies]\nchrono = \"0.4\"\n";
    assert_eq!(dependencies(manifest), vec!["memchr", "tokio"]);
}

#[test]
fn the_check_sees_a_wrong_import_and_a_cycle() {
    let bad = "use crate::ingest::copy;\n// crate::cmd::x in a comment\n#[cfg(test)]\nmod tests {\n    use crate::db::x;\n}\n";
    let found = paths(&code(bad));
    assert_eq!(found, vec![("ingest".to_string(), "copy".to_string())]);
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(find_cycle(&g).as_deref(), Some("a → b → a"));
    g.remove("b");
    assert_eq!(find_cycle(&g), None);
}
