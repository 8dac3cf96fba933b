//! The host's module graph has no cycles: shared types sit below their
//! users. Reads `host/src` as text (every `crate::…` and `super::…` path
//! outside comments and test modules, in `use` lines or written inline in
//! code) and fails naming any cycle it finds.
//!
//! A module depends on its submodules (it declares them and re-exports
//! from them), so `a → b` and `b::c → a` is a cycle; a submodule's use of
//! its own ancestors (`super::…`) is not.

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

/// Every `crate::…` or `super::…` path in `code`, wherever it is written
/// (a `use` line or inline in an expression); a group such as
/// `crate::{a::X, b}` gives one path per member.
fn paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(['c', 's']) {
        // Only at the start of a word: `xcrate::` is not a path.
        let starts_word = code[..code.len() - rest.len() + at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        rest = &rest[at..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        rest = &rest[path.len().max(1)..];
        if !starts_word || !(path.starts_with("crate::") || path.starts_with("super::")) {
            continue;
        }
        if path.ends_with("::") && rest.starts_with('{') {
            found.extend(group(&rest[1..]).into_iter().map(|m| format!("{path}{m}")));
        } else {
            found.push(path);
        }
    }
    found
}

/// The members of a `{…}` group (the text after its `{`), nested groups
/// flattened: `a::{B, c::D}, e` gives `a::B`, `a::c::D`, `e`.
fn group(text: &str) -> Vec<String> {
    let mut members = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                members.push(text[start..i].to_string());
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                members.push(text[start..i].to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    members
        .iter()
        .flat_map(|m| {
            let m: String = m.chars().filter(|c| !c.is_whitespace()).collect();
            match m.split_once("::{") {
                Some((head, tail)) => group(tail)
                    .into_iter()
                    .map(|t| format!("{head}::{t}"))
                    .collect(),
                None => vec![m],
            }
        })
        .filter(|m| !m.is_empty() && m != "self")
        .collect()
}

/// A shortest path of edges from `start` back to itself, if there is one.
fn path_back(start: &str, edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut frontier = std::collections::VecDeque::from([start]);
    while let Some(m) = frontier.pop_front() {
        for next in edges.get(m).into_iter().flatten() {
            if next == start {
                let mut path = vec![start.to_string()];
                let mut at = m;
                while at != start {
                    path.push(at.to_string());
                    at = came_from[at];
                }
                path.push(start.to_string());
                let last = path.len() - 1;
                path[1..last].reverse();
                return Some(path);
            }
            if !came_from.contains_key(next.as_str()) {
                came_from.insert(next, m);
                frontier.push_back(next);
            }
        }
    }
    None
}

#[test]
fn paths_are_found_inline_and_in_groups() {
    let code =
        "use crate::{a::X, b::{C, d::E}};\nfn f() { crate::f::G.max(super::h::I) }\nlet xcrate::z;";
    assert_eq!(
        paths(code),
        [
            "crate::a::X",
            "crate::b::C",
            "crate::b::d::E",
            "crate::f::G",
            "super::h::I"
        ]
    );
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
        for path in paths(code) {
            if let Some(target) = resolve(module, &path, &known) {
                let own_ancestor = target == *module || module.starts_with(&format!("{target}::"));
                if !own_ancestor {
                    edges.entry(module.clone()).or_default().insert(target);
                }
            }
        }
    }
    for module in known.keys() {
        if let Some((parent, _)) = module.rsplit_once("::")
            && known.contains_key(parent)
        {
            edges
                .entry(parent.to_string())
                .or_default()
                .insert(module.clone());
        }
    }
    // A cycle exists iff some module reaches itself; name each by its path.
    let mut cycles = BTreeSet::new();
    for start in known.keys() {
        if let Some(path) = path_back(start, &edges) {
            cycles.insert(path.join(" → "));
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles:\n{}",
        cycles.into_iter().collect::<Vec<_>>().join("\n")
    );
    assert!(known.len() > 30, "read only {} modules", known.len());
}
