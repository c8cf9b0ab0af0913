//! The crate's layers, held against its imports (docs/architecture.md draws them).
//!
//! Every `crate::MODULE` a source file names is an import of that top-level module. A module
//! may import from its own layer or a lower one, never from a higher one; the imports between
//! top-level modules form no circle; and every source file opens with a `//!` comment saying
//! what it owns and, in a `May not:` line, what it may not touch. Reads the source as text: no
//! build, no engine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → layer (1 is the ground). Keep in step with docs/architecture.md.
const LAYERS: &[(&str, u8)] = &[
    ("main", 5),
    ("commands", 5),
    ("run", 4),
    ("snapshot", 3),
    ("images", 3),
    ("agent", 3),
    ("extract", 3),
    ("scope", 3),
    ("sources", 3),
    ("verify", 3),
    ("land", 3),
    ("proxy", 3),
    ("engine", 2),
    ("state", 2),
    ("change", 2),
    ("record", 2),
    ("project", 2),
    ("config", 1),
    ("git", 1),
    ("output", 1),
    ("error", 1),
    ("cli", 1),
    ("failpoint", 1),
    ("timings", 1),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The crate's source files (the benchmark binary under `src/bin` is a crate of its own).
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            if path != src().join("bin") {
                files(&path, out);
            }
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to.
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules `text` names as `crate::NAME`, outside comments.
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue; // e.g. `$crate::` or a longer identifier
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Module → the modules it imports, with one file that shows each import.
fn graph() -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let mut all = vec![];
    files(&src(), &mut all);
    let mut g: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for path in all {
        let text = std::fs::read_to_string(&path).unwrap();
        let module = module_of(&path);
        let entry = g.entry(module.clone()).or_default();
        for dep in imports(&text) {
            if dep != module {
                entry.entry(dep).or_insert_with(|| path.clone());
            }
        }
    }
    g
}

fn layer(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| {
            panic!("module {module} has no layer: add it to LAYERS and to docs/architecture.md")
        })
}

#[test]
fn every_module_has_a_layer_and_imports_only_its_own_layer_or_lower() {
    let mut upward = vec![];
    for (module, deps) in graph() {
        for (dep, file) in deps {
            if layer(&dep) > layer(&module) {
                upward.push(format!(
                    "{} (layer {}) imports {dep} (layer {})",
                    file.display(),
                    layer(&module),
                    layer(&dep)
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that run back up:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_modules_import_each_other_in_no_circle() {
    let g = graph();
    // Depth-first search; a module met again while still on the path closes a circle.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeMap<String, PathBuf>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut circle = path[i..].to_vec();
            circle.push(m.to_string());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for dep in g.get(m).into_iter().flat_map(|d| d.keys()) {
            if let Some(c) = visit(dep, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(circle) = visit(m, &g, &mut vec![], &mut done) {
            panic!(
                "modules import each other in a circle: {}",
                circle.join(" -> ")
            );
        }
    }
}

#[test]
fn every_source_file_opens_with_what_it_owns_and_what_it_may_not_touch() {
    let mut all = vec![];
    files(&src(), &mut all);
    let missing: Vec<_> = all
        .iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            let opening: Vec<&str> = text.lines().take_while(|l| l.starts_with("//!")).collect();
            // Test-only files hold `#[cfg(test)]` bodies and say nothing of their own.
            !p.ends_with("tests.rs")
                && (opening.len() < 3 || !opening.iter().any(|l| l.starts_with("//! May not: ")))
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files whose `//!` opening comment does not say what they own and, in a line \
         starting `May not: `, what they may not touch:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_import_reader_finds_what_a_file_names() {
    let text = "use crate::engine::{self, Engine};\n// crate::commands in a comment\nlet x = crate::record::Status::Landed; // and crate::run\n$crate::output::x();";
    let found: Vec<_> = imports(text).into_iter().collect();
    assert_eq!(found, ["engine", "record"]);
}
