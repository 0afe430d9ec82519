//! No module imports a sibling that imports it back.
//!
//! Every file of the library under src/ (not the binaries) is parsed with
//! `syn`; each `use` tree and each path in its code (`crate::…`,
//! `super::…`, `self::…`) is resolved to the module it names. Where a file
//! of module `a` names something under module `b` and `a` and `b` are
//! siblings (two modules declared by the same parent), `a` depends on `b`.
//! A file counts for the module it belongs to and for every ancestor, so
//! `http::socket::registry` naming `http::notice` makes `http::socket`
//! depend on `http::notice`. A parent naming its children, or a child
//! naming its parent's own items (`super::AppState`), is not a sibling
//! dependency. Code under `#[cfg(test)]` is left out: a test may reach
//! wherever it must.
//!
//! The test fails on every cycle among the siblings of any module, the
//! crate's top level included (two modules importing each other, or a
//! longer ring), naming its modules and, for
//! each step, one file and path that makes it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// A module's path from the crate root: `[]` is the crate, `["http",
/// "socket"]` is `crate::http::socket`.
type ModPath = Vec<String>;

/// Why a module depends on a sibling: the file and the path it names.
type Evidence = (String, String);

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library file under src/ with its module path. src/main.rs and
/// src/bin/ are crates of their own.
fn library_files() -> Vec<(PathBuf, ModPath)> {
    let mut out = Vec::new();
    walk(&src(), &mut out);
    out.retain(|path| {
        let relative = path.strip_prefix(src()).expect("under src");
        relative != Path::new("main.rs") && !relative.starts_with("bin")
    });
    out.into_iter()
        .map(|path| {
            let relative = path.strip_prefix(src()).expect("under src").with_extension("");
            let mut module: ModPath = relative.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            (path, module)
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules the parent `module` declares with `mod NAME;`.
fn children(files: &BTreeMap<ModPath, syn::File>, module: &ModPath) -> BTreeSet<String> {
    let Some(file) = files.get(module) else { return BTreeSet::new() };
    file.items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Mod(m) if m.content.is_none() => Some(m.ident.to_string()),
            _ => None,
        })
        .collect()
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(|l| l.tokens.to_string().contains("test")))
}

/// The paths a file names, as written, outside test-only code.
#[derive(Default)]
struct Paths(Vec<Vec<String>>);

impl Paths {
    fn tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.push_with(prefix, &n.ident),
            syn::UseTree::Rename(r) => self.push_with(prefix, &r.ident),
            syn::UseTree::Glob(_) => self.0.push(prefix.clone()),
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.tree(prefix, t)),
        }
    }

    fn push_with(&mut self, prefix: &[String], ident: &syn::Ident) {
        let mut path = prefix.to_vec();
        if ident != "self" {
            path.push(ident.to_string());
        }
        self.0.push(path);
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_test_only(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_test_only(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if !is_test_only(&u.attrs) {
            self.tree(&mut Vec::new(), &u.tree);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.0.push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }
}

/// The module path a written path starts from, or `None` for a path that
/// does not start at `crate`, `super` or `self` (a local name or another
/// crate).
fn resolve(module: &ModPath, written: &[String]) -> Option<ModPath> {
    let first = written.first()?;
    let (mut base, rest) = match first.as_str() {
        "crate" => (Vec::new(), &written[1..]),
        "self" => (module.clone(), &written[1..]),
        "super" => {
            let supers = written.iter().take_while(|s| *s == "super").count();
            let base = module[..module.len().checked_sub(supers)?].to_vec();
            (base, &written[supers..])
        }
        _ => return None,
    };
    base.extend(rest.iter().cloned());
    Some(base)
}

/// Sibling dependencies: (parent, from, to) → one piece of evidence.
fn dependencies() -> BTreeMap<(ModPath, String, String), Evidence> {
    let mut parsed = BTreeMap::new();
    let mut names = BTreeMap::new();
    for (path, module) in library_files() {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()));
        let shown = path.strip_prefix(src().parent().expect("root")).expect("under root").display().to_string();
        names.insert(module.clone(), shown);
        parsed.insert(module, file);
    }
    let mut out = BTreeMap::new();
    for (module, file) in &parsed {
        let mut paths = Paths::default();
        paths.visit_file(file);
        for written in &paths.0 {
            let Some(target) = resolve(module, written) else { continue };
            let common = module.iter().zip(&target).take_while(|(a, b)| a == b).count();
            let (Some(from), Some(to)) = (module.get(common), target.get(common)) else { continue };
            let parent = module[..common].to_vec();
            if !children(&parsed, &parent).contains(to) {
                continue; // an item of the parent, not a sibling module
            }
            out.entry((parent, from.clone(), to.clone()))
                .or_insert_with(|| (names[module].clone(), written.join("::")));
        }
    }
    out
}

/// One cycle through `start` in `graph`, if there is one: the modules in
/// order, ending where they begin.
fn cycle_through(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    // Breadth-first from start's targets back to start keeps the ring short.
    let mut came_from: BTreeMap<String, String> = BTreeMap::new();
    let mut frontier = vec![start.to_string()];
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for node in frontier {
            for to in graph.get(&node).into_iter().flatten() {
                if came_from.contains_key(to) {
                    continue;
                }
                came_from.insert(to.clone(), node.clone());
                if to == start {
                    let mut ring = vec![start.to_string()];
                    let mut at = came_from[start].clone();
                    while at != start {
                        ring.push(at.clone());
                        at = came_from[&at].clone();
                    }
                    ring.push(start.to_string());
                    ring.reverse();
                    return Some(ring);
                }
                next.push(to.clone());
            }
        }
        frontier = next;
    }
    None
}

fn cycles() -> Vec<String> {
    let deps = dependencies();
    let mut graphs: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (parent, from, to) in deps.keys() {
        graphs.entry(parent.clone()).or_default().entry(from.clone()).or_default().insert(to.clone());
    }
    let mut found = Vec::new();
    let mut seen: BTreeSet<BTreeSet<String>> = BTreeSet::new();
    for (parent, graph) in &graphs {
        for start in graph.keys() {
            let Some(ring) = cycle_through(graph, start) else { continue };
            if !seen.insert(ring.iter().cloned().collect()) {
                continue;
            }
            let prefix = if parent.is_empty() { "crate".to_string() } else { format!("crate::{}", parent.join("::")) };
            let steps: Vec<String> = ring
                .windows(2)
                .map(|pair| {
                    let (file, path) = &deps[&(parent.clone(), pair[0].clone(), pair[1].clone())];
                    format!("  {} → {}: {file} names {path}", pair[0], pair[1])
                })
                .collect();
            found.push(format!("in {prefix}: {}\n{}", ring.join(" → "), steps.join("\n")));
        }
    }
    found
}

#[test]
fn no_module_imports_a_sibling_that_imports_it_back() {
    let found = cycles();
    assert!(found.is_empty(), "import cycles between sibling modules:\n{}", found.join("\n"));
}

#[test]
fn the_check_sees_the_dependencies_it_must() {
    // Guards the parser: if these known one-way dependencies went unseen,
    // an empty cycle list would prove nothing.
    let deps = dependencies();
    for (parent, from, to) in
        [(vec!["http"], "handlers", "access"), (vec![], "http", "store"), (vec![], "store", "limiter")]
    {
        let parent: ModPath = parent.into_iter().map(String::from).collect();
        assert!(
            deps.contains_key(&(parent.clone(), from.to_string(), to.to_string())),
            "no dependency {from} → {to} under {parent:?} was found; the parser misses imports"
        );
    }
}
