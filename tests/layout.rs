//! The host's module graph has no cycles: shared types sit below their
//! users. Reads `host/src` as text (the `use crate::…` and `super::…` paths
//! outside comments and test modules) and fails naming any cycle it finds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name (`pool::lifecycle`) → source, for every file under `dir`.
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            let mut next = prefix.to_vec();
            next.push(stem);
            modules(&path, &next, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut name = prefix.to_vec();
            if !matches!(stem.as_str(), "mod" | "lib" | "main") {
                name.push(stem);
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            let code: String = text
                .lines()
                .map(|l| l.split("//").next().unwrap())
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(name.join("::"), code);
        }
    }
}

/// The module a path like `crate::pool::retry::Verdict` names, if any.
fn resolve(from: &str, path: &str, known: &BTreeMap<String, String>) -> Option<String> {
    let segs: Vec<&str> = path.split("::").collect();
    let mut cand: Vec<String> = match segs[0] {
        "crate" => Vec::new(),
        "super" => {
            let mut m: Vec<String> = from.split("::").map(String::from).collect();
            m.pop();
            m
        }
        _ => return None,
    };
    cand.extend(segs[1..].iter().map(|s| s.to_string()));
    (1..=cand.len())
        .rev()
        .map(|n| cand[..n].join("::"))
        .find(|k| known.contains_key(k))
}

#[test]
fn the_host_has_no_import_cycles() {
    let mut known = BTreeMap::new();
    modules(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut known,
    );
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in &known {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(['c', 's']) {
            rest = &rest[at..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            rest = &rest[path.len().max(1)..];
            if !(path.starts_with("crate::") || path.starts_with("super::")) {
                continue;
            }
            if let Some(target) = resolve(module, &path, &known) {
                let related = target == *module
                    || module.starts_with(&format!("{target}::"))
                    || target.starts_with(&format!("{module}::"));
                if !related {
                    edges.entry(module.clone()).or_default().insert(target);
                }
            }
        }
    }
    // A cycle exists iff some module reaches itself.
    let mut cycles = Vec::new();
    for start in known.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = edges.get(start).into_iter().flatten().cloned().collect();
        while let Some(m) = stack.pop() {
            if m == *start {
                cycles.push(start.clone());
                break;
            }
            if seen.insert(m.clone()) {
                stack.extend(edges.get(&m).into_iter().flatten().cloned());
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules on an import cycle: {cycles:?}\nedges: {edges:#?}"
    );
    assert!(known.len() > 30, "read only {} modules", known.len());
}
