//! The layering of the sources, read from the files themselves: in `api/src` no module names
//! one of a layer above its own, and in the api, shared and worker crates no top-level modules
//! name each other in a circle. Comment lines are skipped; code is matched by its
//! `crate::`/`super::` paths (use trees included), so a glob re-export cannot hide an arrow.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

type TestResult = Result<(), Box<dyn std::error::Error>>;
/// Top-level module → the top-level modules its files name.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// `api/src`'s layers, bottom up: each top-level module and the ones it may name. A new
/// top-level module fails the test until it is placed here.
const API_LAYERS: &[(&str, &[&str])] = &[
    ("store", &[]),
    ("views", &["store"]),
    ("messaging", &["store"]),
    ("live", &["store", "views"]),
    ("reaper", &["store"]),
    ("retention", &["store"]),
    ("export", &["store", "views"]),
    ("http", &["store", "views", "messaging", "live", "export"]),
];

/// The crates whose top-level modules must not form a circle.
const NO_CIRCLES: &[&str] = &["api", "shared", "worker"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The module a file under `src` defines: `http/routes/admin.rs` is `http::routes::admin`,
/// `live/mod.rs` is `live`, `lib.rs` the root (empty).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The code of a file without its comments (line comments and doc comments, which is all
/// this codebase uses).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| line.find("//").map_or(line, |i| &line[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The paths of the use tree (or plain path) at the start of `s`: `a::{b, c::d}` gives
/// `a::b` and `a::c::d`.
fn use_paths(s: &[u8]) -> Vec<Vec<String>> {
    fn tree(s: &[u8], at: &mut usize) -> Vec<Vec<String>> {
        while *at < s.len() && s[*at].is_ascii_whitespace() {
            *at += 1;
        }
        if s.get(*at) == Some(&b'{') {
            *at += 1;
            let mut out = Vec::new();
            loop {
                while *at < s.len() && (s[*at].is_ascii_whitespace() || s[*at] == b',') {
                    *at += 1;
                }
                match s.get(*at) {
                    None => return out,
                    Some(b'}') => {
                        *at += 1;
                        return out;
                    }
                    Some(_) => {}
                }
                let before = *at;
                out.extend(tree(s, at));
                // Past an `as` alias to the next item.
                while *at < s.len() && s[*at] != b',' && s[*at] != b'}' {
                    *at += 1;
                }
                if *at == before {
                    *at += 1;
                }
            }
        }
        let start = *at;
        while *at < s.len() && (is_ident(s[*at]) || s[*at] == b'*') {
            *at += 1;
        }
        let ident = String::from_utf8_lossy(&s[start..*at]).into_owned();
        if ident.is_empty() {
            return vec![Vec::new()];
        }
        if s[*at..].starts_with(b"::") {
            *at += 2;
            let mut rest = tree(s, at);
            for path in &mut rest {
                path.insert(0, ident.clone());
            }
            rest
        } else {
            vec![vec![ident]]
        }
    }
    tree(s, &mut 0)
}

/// Every path in `code` that starts at `keyword` (`crate::` or `super::`), with the number of
/// leading `super::` for the latter.
fn paths_after<'a>(
    code: &'a str,
    keyword: &'a str,
) -> impl Iterator<Item = (usize, Vec<String>)> + 'a {
    let bytes = code.as_bytes();
    code.match_indices(keyword)
        .filter_map(move |(i, _)| {
            // `$crate::` is the crate too; `x::super::` or `my_crate::` are not a start.
            if i > 0 && (is_ident(bytes[i - 1]) || bytes[i - 1] == b':') {
                return None;
            }
            let mut at = i + keyword.len();
            let mut ups = 1;
            while keyword == "super::" && bytes[at..].starts_with(b"super::") {
                at += keyword.len();
                ups += 1;
            }
            Some(
                use_paths(&bytes[at..])
                    .into_iter()
                    .map(move |p| (ups, p))
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
}

/// The top-level modules of the crate at `src` and what each names, resolving names the crate
/// root re-exports (`pub use settings::Settings`) to the module they come from.
fn graph(src: &Path) -> Result<Graph, Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    rust_files(src, &mut files)?;
    files.sort();
    let tops: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_path(src, f).first().cloned())
        .filter(|m| m != "main")
        .collect();
    let lib = code(&std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default());
    let mut reexports = BTreeMap::new();
    for (i, _) in lib.match_indices("pub use ") {
        for path in use_paths(&lib.as_bytes()[i + "pub use ".len()..]) {
            let path: Vec<&String> = path
                .iter()
                .filter(|s| *s != "crate" && *s != "self")
                .collect();
            if let (Some(first), Some(last)) = (path.first(), path.last())
                && tops.contains(*first)
            {
                reexports.insert((*last).clone(), (*first).clone());
            }
        }
    }
    let top_of = |name: &String| {
        if tops.contains(name) {
            Some(name.clone())
        } else {
            reexports.get(name).cloned()
        }
    };
    let mut graph = Graph::new();
    for file in &files {
        let module = module_path(src, file);
        // The root wires the modules together; `main.rs` is a crate of its own.
        let Some(top) = module.first().filter(|m| *m != "main") else {
            continue;
        };
        let text = code(&std::fs::read_to_string(file)?);
        let named = graph.entry(top.clone()).or_default();
        for (_, path) in paths_after(&text, "crate::") {
            if let Some(target) = path.first().and_then(top_of) {
                named.insert(target);
            }
        }
        // Counted from the file's module: `super::` inside an inline `mod tests` then points one
        // level too high, which at worst names the file's own top-level module or a root item.
        for (ups, path) in paths_after(&text, "super::") {
            let Some(base) = module.len().checked_sub(ups) else {
                continue;
            };
            let target = match module[..base].first() {
                Some(first) => Some(first.clone()),
                None => path.first().and_then(top_of),
            };
            if let Some(target) = target {
                named.insert(target);
            }
        }
        named.remove(top);
    }
    Ok(graph)
}

/// Every circle of `graph`, each as the modules along it (first and last the same), once per
/// edge that closes it.
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for (from, targets) in graph {
        for to in targets {
            // The shortest way back from `to` to `from`, if any.
            let mut came_from: BTreeMap<&String, &String> = BTreeMap::new();
            let mut queue = VecDeque::from([to]);
            let mut seen = BTreeSet::from([to]);
            while let Some(node) = queue.pop_front() {
                if node == from {
                    let mut back = Vec::new();
                    let mut at = node;
                    while at != to {
                        back.push(at.clone());
                        at = came_from[at];
                    }
                    back.push(to.clone());
                    back.reverse();
                    found.push([vec![from.clone()], back].concat());
                    break;
                }
                for next in graph.get(node).into_iter().flatten() {
                    if seen.insert(next) {
                        came_from.insert(next, node);
                        queue.push_back(next);
                    }
                }
            }
        }
    }
    found
}

#[test]
fn api_modules_name_only_layers_below_their_own() -> TestResult {
    let graph = graph(&workspace().join("api/src"))?;
    let allowed: BTreeMap<&str, &[&str]> = API_LAYERS.iter().copied().collect();
    // The reading must find the arrows that are known to be there, or it proves nothing.
    assert!(graph["http"].contains("store") && graph["live"].contains("views"));
    let mut wrong = Vec::new();
    for (from, targets) in &graph {
        let Some(may) = allowed.get(from.as_str()) else {
            wrong.push(format!("`{from}` has no place in API_LAYERS"));
            continue;
        };
        for to in targets {
            if !may.contains(&to.as_str()) {
                wrong.push(format!("`{from}` names `{to}`, which is not below it"));
            }
        }
    }
    assert!(wrong.is_empty(), "api/src layering:\n{}", wrong.join("\n"));
    Ok(())
}

#[test]
fn top_level_modules_form_no_circle() -> TestResult {
    let mut wrong = Vec::new();
    for krate in NO_CIRCLES {
        let graph = graph(&workspace().join(krate).join("src"))?;
        for circle in circles(&graph) {
            wrong.push(format!("{krate}/src: {}", circle.join(" → ")));
        }
    }
    assert!(wrong.is_empty(), "import circles:\n{}", wrong.join("\n"));
    Ok(())
}

#[test]
fn the_reading_follows_use_trees_super_and_reexports() -> TestResult {
    let paths: Vec<Vec<String>> = use_paths(b"a::{b, c::{d, e as f}, *};")
        .into_iter()
        .collect();
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(joined, ["a::b", "a::c::d", "a::c::e", "a::*"]);
    let text = code("use super::super::x::Y; // crate::hidden\nlet v = $crate::z::W;");
    let found: Vec<(usize, String)> = paths_after(&text, "super::")
        .chain(paths_after(&text, "crate::"))
        .map(|(n, p)| (n, p.join("::")))
        .collect();
    assert_eq!(found, [(2, "x::Y".to_owned()), (1, "z::W".to_owned())]);
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]
        .into_iter()
        .fold(Graph::new(), |mut g, (from, to)| {
            g.entry(from.into()).or_default().insert(to.into());
            g
        });
    let found = circles(&graph);
    assert!(found.contains(&vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    assert!(found.iter().all(|c| !c.contains(&"d".to_owned())));
    Ok(())
}
