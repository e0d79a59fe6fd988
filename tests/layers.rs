//! The layers of docs/architecture.md, checked over the source text so the code cannot drift
//! from the picture: no module of the library names a layer above it (in code or in a doc
//! link), the library never names the binary's modules, and the files of one layer do not
//! import each other in a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each layer of the library and the layers it may use. Everything not listed is above it.
const ALLOWED: &[(&str, &[&str])] = &[
    ("kafka", &[]),
    ("model", &[]),
    ("codec", &["model"]),
    ("metrics", &["kafka"]),
    ("pipeline", &["codec", "model", "kafka", "metrics"]),
    ("dataset", &["codec", "model", "kafka"]),
    ("train", &["dataset", "codec", "model", "kafka"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The identifiers that follow `prefix` in `text` (`crate::` → `kafka`, `model`, ...).
fn names_after<'t>(text: &'t str, prefix: &str) -> Vec<&'t str> {
    text.match_indices(prefix)
        .filter(|(at, _)| {
            // `super::super::x` is matched from its first `super::` only.
            !text[..*at].ends_with("::")
        })
        .filter_map(|(at, _)| {
            let rest = &text[at + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (end > 0).then(|| &rest[..end])
        })
        .collect()
}

#[test]
fn no_layer_names_a_layer_above_it() {
    let layers: BTreeSet<&str> = ALLOWED.iter().map(|(l, _)| *l).collect();
    // The allowed arrows themselves have no circle: each layer may only use layers listed
    // before it.
    for (i, (layer, uses)) in ALLOWED.iter().enumerate() {
        for used in *uses {
            let at = ALLOWED.iter().position(|(l, _)| l == used).unwrap();
            assert!(at < i, "{layer} may use {used}, which is listed after it");
        }
    }
    let mut wrong = Vec::new();
    for (layer, uses) in ALLOWED {
        for file in rust_files(&src().join(layer)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for name in names_after(&text, "crate::") {
                let above = layers.contains(name) && name != *layer && !uses.contains(&name);
                if above || name == "cli" {
                    wrong.push(format!("{} names crate::{name}", file.display()));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows that point up:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_library_does_not_use_the_binary() {
    for file in rust_files(&src()) {
        let relative = file.strip_prefix(src()).unwrap();
        if relative.starts_with("cli") || relative == Path::new("main.rs") {
            continue;
        }
        let mut text = std::fs::read_to_string(&file).unwrap();
        // The environment variables the library reads are not switches of its own: the one a
        // user names for a SASL password (`sasl_password_env`), and the platform's
        // `SSL_CERT_FILE` for the system trust store, as every TLS client reads it.
        if relative == Path::new("kafka/security.rs") {
            text = text
                .replace("std::env::var(name)", "")
                .replace("std::env::var_os(\"SSL_CERT_FILE\")", "");
        }
        for forbidden in ["clap::", "toml::", "#[global_allocator]", "std::env::var"] {
            assert!(
                !text.contains(forbidden),
                "{} uses `{forbidden}`: flags, config files, the allocator and the environment belong to the binary (src/cli/)",
                relative.display()
            );
        }
    }
}

#[test]
fn files_of_a_layer_import_each_other_without_a_circle() {
    for (layer, _) in ALLOWED {
        let dir = src().join(layer);
        // Edges between sibling files (`super::file::` or `crate::layer::file::`); the
        // `mod.rs` files declare and re-export their children, so they are not nodes.
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in rust_files(&dir) {
            if file.file_name().is_some_and(|n| n == "mod.rs") {
                continue;
            }
            let folder = file.parent().unwrap();
            let node = file.strip_prefix(&dir).unwrap().with_extension("");
            let sibling = |name: &str| folder.join(format!("{name}.rs")).is_file();
            let text = std::fs::read_to_string(&file).unwrap();
            // Only the code before the unit tests: a test module may use anything.
            let code = text.split("#[cfg(test)]").next().unwrap_or(&text);
            let module_path = folder
                .strip_prefix(src())
                .unwrap()
                .to_string_lossy()
                .replace('/', "::");
            let mut targets: Vec<&str> = names_after(code, "super::");
            targets.extend(names_after(code, &format!("crate::{module_path}::")));
            for target in targets {
                if sibling(target) && folder.join(format!("{target}.rs")) != file {
                    let to = folder.strip_prefix(&dir).unwrap().join(target);
                    edges
                        .entry(node.display().to_string())
                        .or_default()
                        .insert(to.display().to_string());
                }
            }
        }
        if let Some(circle) = find_circle(&edges) {
            panic!(
                "src/{layer}: files import each other in a circle: {}",
                circle.join(" → ")
            );
        }
    }
}

/// A circle in `edges`, if there is one, as the path around it.
fn find_circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|start| visit(start, edges, &mut Vec::new(), &mut done))
}
