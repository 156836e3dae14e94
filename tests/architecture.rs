//! Structural rules that keep the code shaped as ARCHITECTURE.md says.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn policy_is_free_of_hyper_http_and_tower() {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/policy"), &mut files);
    assert!(files.len() >= 8, "policy modules found: {files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for banned in ["hyper::", "hyper_util::", "http::", "tower::", "use hyper", "use http", "use tower"] {
            assert!(!text.contains(banned), "{} uses {banned}", f.display());
        }
    }
}

/// Module path of a source file: `src/store/mod.rs` → `store`, `src/store/redis.rs` → `store::redis`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// Expands the path that follows a `crate::` at `text[at..]`, groups included:
/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(text: &[u8], mut at: usize, prefix: String, out: &mut Vec<String>) -> usize {
    let mut path = prefix;
    loop {
        while at < text.len() && text[at].is_ascii_whitespace() {
            at += 1;
        }
        if at < text.len() && text[at] == b'{' {
            at += 1;
            loop {
                at = expand(text, at, path.clone(), out);
                while at < text.len() && (text[at].is_ascii_whitespace() || text[at] == b',') {
                    at += 1;
                }
                if at >= text.len() || text[at] == b'}' {
                    return at + 1;
                }
            }
        }
        let start = at;
        while at < text.len() && (text[at].is_ascii_alphanumeric() || text[at] == b'_') {
            at += 1;
        }
        if start == at {
            out.push(path);
            return at;
        }
        if !path.is_empty() {
            path.push_str("::");
        }
        path.push_str(std::str::from_utf8(&text[start..at]).unwrap());
        if text[at..].starts_with(b"::") {
            at += 2;
        } else {
            out.push(path);
            return at;
        }
    }
}

/// Which modules each module names through `crate::` paths (comments and `main.rs` left out).
fn import_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| !f.ends_with("main.rs"));
    let modules: std::collections::BTreeMap<String, std::path::PathBuf> =
        files.iter().map(|f| (module_of(&src, f), f.clone())).collect();
    let owner = |m: &str| m.to_owned();
    let mut graph = std::collections::BTreeMap::new();
    for (module, file) in &modules {
        let text: String = std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let bytes = text.as_bytes();
        let mut paths = Vec::new();
        let mut from = 0;
        while let Some(i) = text[from..].find("crate::") {
            let at = from + i;
            from = at + 7;
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue; // `tollgate_crate::` and the like
            }
            expand(bytes, at + 7, String::new(), &mut paths);
        }
        paths.extend(super_paths(module, &text));
        let edges: &mut std::collections::BTreeSet<String> = graph.entry(owner(module)).or_default();
        for p in paths {
            let mut target = p.as_str();
            while !target.is_empty() && !modules.contains_key(target) {
                target = target.rsplit_once("::").map_or("", |(head, _)| head);
            }
            let target = owner(target);
            if target != owner(module) {
                edges.insert(target);
            }
        }
    }
    graph
}

/// The paths named through `super::` (any number of them) in the text of `module`'s file, as
/// `crate::` paths. Inside the file's inline `mod tests` (at its end), `super` is the file's own
/// module; elsewhere it is the parent.
fn super_paths(module: &str, text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let tests_at = text.find("mod tests {").unwrap_or(text.len());
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("super::") {
        let at = from + i;
        from = at + 7;
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':') {
            continue; // the second `super::` of `super::super::`, or `not_super::`
        }
        let mut ups = 1;
        let mut rest = at + 7;
        while text[rest..].starts_with("super::") {
            ups += 1;
            rest += 7;
        }
        if at > tests_at {
            ups -= 1;
        }
        let mut parts: Vec<&str> = module.split("::").filter(|p| !p.is_empty()).collect();
        for _ in 0..ups {
            parts.pop();
        }
        expand(bytes, rest, parts.join("::"), &mut out);
    }
    out
}

/// Every cycle's members, as strongly connected components of more than one module (Tarjan).
fn cycles(graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        index: std::collections::HashMap<&'a str, usize>,
        low: std::collections::HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: std::collections::HashSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
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
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: Default::default(),
        low: Default::default(),
        stack: Vec::new(),
        on_stack: Default::default(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_import_cycles_between_modules() {
    let graph = import_graph();
    assert!(graph.len() > 30, "modules found: {}", graph.len());
    let found = cycles(&graph);
    let edges: Vec<String> = found
        .iter()
        .flat_map(|c| {
            c.iter().flat_map(|m| graph[m].iter().filter(|t| c.contains(t)).map(move |t| format!("{m} -> {t}")))
        })
        .collect();
    assert!(
        found.is_empty(),
        "import cycles (modules reaching one another through crate:: paths): {found:#?}\nedges inside them: {edges:#?}"
    );
}

/// The wing of a module: its first path segment (`""` for lib.rs).
fn wing_of(module: &str) -> String {
    module.split("::").next().unwrap_or("").to_string()
}

/// Which wings each wing imports (unit-test files reaching `dev`'s fixtures left out, as in the
/// rank check; lib.rs, which wires the wings together, too).
fn wing_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut wings: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    for (module, edges) in import_graph() {
        if module.is_empty() {
            continue;
        }
        let from = wing_of(&module);
        let set = wings.entry(from.clone()).or_default();
        for e in edges {
            let to = wing_of(&e);
            let test_fixture = module.ends_with("::tests") && to == "dev";
            if to != from && !to.is_empty() && !test_fixture {
                set.insert(to);
            }
        }
    }
    wings
}

#[test]
fn no_import_cycles_between_wings() {
    let graph = wing_graph();
    assert!(graph.len() >= 10, "wings found: {graph:?}");
    let found = cycles(&graph);
    assert!(found.is_empty(), "wings reaching one another: {found:#?}\nwing imports: {graph:#?}");
}

#[test]
fn super_paths_resolve_against_the_parent_and_the_file_in_its_tests() {
    let text = "use super::x::Y;\nuse super::super::z;\nmod tests {\n use super::*;\n}";
    assert_eq!(super_paths("a::b::c", text), ["a::b::x::Y", "a::z", "a::b::c"]);
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    let mut g = std::collections::BTreeMap::new();
    let set = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<std::collections::BTreeSet<_>>();
    g.insert("a".to_string(), set(&["b"]));
    g.insert("b".to_string(), set(&["c"]));
    g.insert("c".to_string(), set(&["a"]));
    g.insert("d".to_string(), set(&["a"]));
    assert_eq!(cycles(&g), vec![vec!["a".to_string(), "b".to_string(), "c".to_string()]]);
    let mut paths = Vec::new();
    let text = b"store::{Intent, redis::{A, B}, MonthTotals};";
    expand(text, 0, String::new(), &mut paths);
    assert_eq!(paths, ["store::Intent", "store::redis::A", "store::redis::B", "store::MonthTotals"]);
}

#[test]
fn policy_never_imports_config_or_the_wings_above_it() {
    let graph = import_graph();
    for (module, edges) in &graph {
        if module == "policy" || module.starts_with("policy::") {
            for e in edges {
                assert!(e.starts_with("policy") || e == "ids", "{module} imports crate::{e}");
            }
        }
    }
}

/// The wings, lowest first: a module may import its own wing and the ones before it.
/// `""` is `lib.rs`, which wires the wings together; `dev` (the mock platform, the demo, test
/// fixtures) sits on top, and unit tests may use its fixtures.
const WINGS: &[&str] = &[
    "ids",
    // Accepting connections imports nothing of ours: the ground floor.
    "server",
    "policy",
    "config",
    "store",
    "upstream",
    "observe",
    // The floor of shared state: what the front door, the paid path, background and admin share.
    "core",
    "paid",
    "gateway",
    "background",
    "admin",
    "",
    "dev",
];

/// Imports that still run up, each with the reason it is there. The list may only shrink.
const UPWARD_ALLOWED: &[(&str, &str, &str)] = &[];

/// Is `module` the allowed `from` (itself, or a file under it)?
fn under(module: &str, wing: &str) -> bool {
    module == wing || module.starts_with(&format!("{wing}::"))
}

fn wing_rank(module: &str) -> usize {
    let wing = module.split("::").next().unwrap_or("");
    WINGS
        .iter()
        .position(|w| *w == wing)
        .unwrap_or_else(|| panic!("module {module} is in no wing; add its wing to WINGS"))
}

#[test]
fn no_wing_imports_a_wing_above_it() {
    let graph = import_graph();
    let mut upward = Vec::new();
    for (module, edges) in &graph {
        for e in edges {
            let test_fixture = module.ends_with("::tests") && e.starts_with("dev");
            let allowed = UPWARD_ALLOWED.iter().any(|(from, to, _)| under(module, from) && under(e, to));
            if wing_rank(e) > wing_rank(module) && !test_fixture && !allowed {
                upward.push(format!("{module} -> {e}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports that run up the wings (lowest first: {WINGS:?}): {upward:#?}");
}

/// Every access-line `outcome` and `cause` the code can write is listed in docs/reference.md
/// (four were missing: `auth_throttled`, `forbidden`, `quoted`, `webhook_received`).
#[test]
fn every_outcome_and_cause_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let reference = std::fs::read_to_string(root.join("docs/reference.md")).unwrap();
    let row = |name: &str| {
        reference
            .lines()
            .find(|l| l.starts_with(&format!("| {name}")))
            .unwrap_or_else(|| panic!("no {name} row in docs/reference.md"))
            .to_string()
    };
    let (outcomes, causes) = (row("`status`, `outcome`"), row("`cause`"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let quoted = |text: &str, from: usize, to: usize| -> Vec<String> {
        text[from..to]
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|w| w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .map(String::from)
            .collect()
    };
    let mut named: Vec<(String, &str)> = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // `outcome = "…"` and `r.outcome`-style refusals (`(408, "header_timeout")`).
        for (i, _) in text.match_indices("outcome = \"") {
            named.extend(quoted(&text, i, i + text[i..].find('\n').unwrap()).into_iter().map(|o| (o, "outcome")));
        }
        if f.ends_with("server/mod.rs") {
            for (i, _) in
                text.match_indices("refuse(").chain(text.match_indices("Some((4")).chain(text.match_indices("Err(("))
            {
                named.extend(quoted(&text, i, i + text[i..].find(')').unwrap()).into_iter().map(|o| (o, "outcome")));
            }
        }
        if f.ends_with("core/error.rs") {
            for (what, start) in [("outcome", "pub fn outcome("), ("cause", "pub fn cause(")] {
                let a = text.find(start).unwrap();
                let b = a + text[a..].find("\n    }\n").unwrap();
                named.extend(quoted(&text, a, b).into_iter().map(|o| (o, what)));
            }
        }
    }
    assert!(named.len() > 30, "{named:?}");
    let missing: Vec<String> = named
        .iter()
        .filter(|(n, what)| !(if *what == "cause" { &causes } else { &outcomes }).contains(&format!("`{n}`")))
        .map(|(n, what)| format!("{what} {n}"))
        .collect();
    assert!(missing.is_empty(), "not in docs/reference.md: {missing:?}");
}

/// Every relative link in the README and docs/ points at a file that exists (one in
/// docs/reference.md pointed at docs/docs/operations.md).
#[test]
fn relative_links_in_the_docs_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    pages.extend(
        std::fs::read_dir(root.join("docs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "md")),
    );
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        assert!(!text.contains("../shared"), "{} points outside the repository", page.display());
        for (i, _) in text.match_indices("](") {
            let target = &text[i + 2..i + 2 + text[i + 2..].find(')').unwrap_or(0)];
            let path = target.split('#').next().unwrap_or("");
            if path.is_empty() || path.contains("://") || path.starts_with("mailto:") {
                continue;
            }
            if !page.parent().unwrap().join(path).exists() {
                broken.push(format!("{}: {target}", page.strip_prefix(root).unwrap().display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}
