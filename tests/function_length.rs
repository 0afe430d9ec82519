//! No function in `src/` or `bench/src/` is longer than [`MAX_LINES`]
//! lines, counted from the line of its `fn` keyword to the line of its
//! closing brace (doc comments and attributes not counted). Free
//! functions, methods, default bodies of trait methods and functions
//! nested in other functions all count; closures are part of the function
//! that holds them. Test code is not checked: `#[test]` functions, inline
//! `#[cfg(test)]` modules, and files that only `#[cfg(test)] mod` declares
//! (a file that the bench also compiles, through `#[path]`, is checked).
//!
//! The files are parsed with `syn`, whose spans (with proc-macro2's
//! `span-locations`) give each function's exact first and last line, so
//! braces in strings, comments and macros cannot mislead the count.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

const MAX_LINES: usize = 80;

/// Functions allowed over the limit, as `path::name`. An entry that is no
/// longer over the limit fails the test too, so the list only shrinks.
const ALLOWED: &[&str] = &[];

/// The source trees whose functions are checked, relative to the workspace.
const TREES: [&str; 2] = ["src", "bench/src"];

#[test]
fn no_function_is_longer_than_the_limit() {
    let root = canonical(Path::new(env!("CARGO_MANIFEST_DIR")));
    let mut files = Vec::new();
    for tree in TREES {
        rust_files(&root.join(tree), &mut files);
    }
    assert!(files.len() > 20, "found only {} Rust files under {TREES:?}", files.len());
    let parsed: Vec<(PathBuf, syn::File)> = files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", file.display()));
            (file, ast)
        })
        .collect();
    let tests_only = test_files(&parsed);
    assert!(tests_only.len() >= 5, "found only these test files: {tests_only:?}");
    let mut long = Vec::new();
    let mut counted = 0;
    for (file, ast) in parsed.iter().filter(|(file, _)| !tests_only.contains(file)) {
        let relative = file.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        let mut lengths = Lengths::default();
        lengths.visit_file(ast);
        counted += lengths.found.len();
        long.extend(
            lengths
                .found
                .into_iter()
                .filter(|(_, lines)| *lines > MAX_LINES)
                .map(|(name, lines)| (format!("{relative}::{name}"), lines)),
        );
    }
    assert!(counted > 500, "found only {counted} functions in {} files", parsed.len());

    let over: Vec<String> = long
        .iter()
        .filter(|(name, _)| !ALLOWED.contains(&name.as_str()))
        .map(|(name, lines)| format!("{name} ({lines} lines)"))
        .collect();
    let stale: Vec<&str> = ALLOWED.iter().copied().filter(|a| !long.iter().any(|(name, _)| name == a)).collect();
    assert!(
        over.is_empty(),
        "functions over {MAX_LINES} lines (split them into steps with names):\n  {}",
        over.join("\n  ")
    );
    assert!(
        stale.is_empty(),
        "allowed to be long but no longer over {MAX_LINES} lines (or gone); remove them from ALLOWED: {stale:?}"
    );
}

#[test]
fn counts_from_the_fn_keyword_to_the_closing_brace() {
    let text = r#"
/// Not counted.
#[inline]
pub fn three() {
    let s = "}}}";
}

impl Thing {
    fn method(&self) -> u32 { 1 }
}

trait T {
    fn declared(&self);
    fn with_default(&self) {
        /* { */
        fn nested() {}
    }
}

#[test]
fn a_test() {}

#[cfg(test)]
mod tests {
    fn helper() {}
}
"#;
    let mut lengths = Lengths::default();
    lengths.visit_file(&syn::parse_file(text).unwrap());
    assert_eq!(
        lengths.found,
        [
            ("three".to_owned(), 3),
            ("Thing::method".to_owned(), 1),
            ("with_default".to_owned(), 4),
            ("nested".to_owned(), 1),
        ]
    );
}

/// The files that only `#[cfg(test)] mod` declarations name: a file named
/// by any other declaration (with or without `#[path]`) is compiled into a
/// program, and files that no declaration names are crate roots.
fn test_files(parsed: &[(PathBuf, syn::File)]) -> HashSet<PathBuf> {
    let mut declared: HashMap<PathBuf, bool> = HashMap::new();
    for (file, ast) in parsed {
        for item in &ast.items {
            let syn::Item::Mod(m) = item else { continue };
            if m.content.is_some() {
                continue;
            }
            for target in module_files(file, m) {
                let only_tests = declared.entry(target).or_insert(true);
                *only_tests &= is_cfg_test(&m.attrs);
            }
        }
    }
    declared.into_iter().filter(|(_, only_tests)| *only_tests).map(|(file, _)| file).collect()
}

/// The file a `mod name;` in `file` loads: its `#[path]`, else `name.rs`
/// or `name/mod.rs` beside a `mod.rs`, `main.rs` or `lib.rs`, and under a
/// directory named after any other file.
fn module_files(file: &Path, m: &syn::ItemMod) -> Vec<PathBuf> {
    let dir = file.parent().unwrap();
    let explicit = m.attrs.iter().find(|a| a.path().is_ident("path")).and_then(|a| match &a.meta {
        syn::Meta::NameValue(syn::MetaNameValue {
            value: syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }),
            ..
        }) => Some(s.value()),
        _ => None,
    });
    if let Some(p) = explicit {
        return vec![canonical(&dir.join(p))];
    }
    let stem = file.file_stem().unwrap().to_string_lossy();
    let base = if ["mod", "main", "lib"].contains(&stem.as_ref()) { dir.to_owned() } else { dir.join(&*stem) };
    let name = m.ident.to_string();
    [base.join(format!("{name}.rs")), base.join(name).join("mod.rs")].iter().map(|p| canonical(p)).collect()
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_owned())
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test"))
}

/// `#[test]`, `#[tokio::test]` and the like.
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| a.path().segments.last().is_some_and(|s| s.ident == "test"))
}

#[test]
fn a_file_is_test_code_when_only_cfg_test_declares_it() {
    let root = canonical(Path::new(env!("CARGO_MANIFEST_DIR")));
    let parse = |relative: &str| {
        let path = root.join(relative);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {relative}: {e}"));
        (path, syn::parse_file(&text).unwrap())
    };
    // src/store/redis/mod.rs declares `harness` and `tests` under
    // #[cfg(test)]; the bench's main.rs declares the harness again, through
    // #[path], for real.
    let redis = parse("src/store/redis/mod.rs");
    let tests = root.join("src/store/redis/tests.rs");
    let harness = root.join("src/store/redis/harness.rs");
    let only_redis = test_files(std::slice::from_ref(&redis));
    assert!(only_redis.contains(&tests) && only_redis.contains(&harness), "{only_redis:?}");
    let with_bench = test_files(&[redis, parse("bench/src/main.rs")]);
    assert!(with_bench.contains(&tests) && !with_bench.contains(&harness), "{with_bench:?}");
}

/// Every `*.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(canonical(&path));
        }
    }
}

/// The functions of a file with a body, and their lengths in lines.
#[derive(Default)]
struct Lengths {
    /// The type of the `impl` block being visited, if any.
    self_type: Option<String>,
    found: Vec<(String, usize)>,
}

impl Lengths {
    fn record(&mut self, name: String, fn_token: &syn::token::Fn, body: &syn::Block) {
        let first = fn_token.span.start().line;
        let last = body.brace_token.span.close().end().line;
        self.found.push((name, last + 1 - first));
    }
}

impl<'ast> Visit<'ast> for Lengths {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_cfg_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if is_test(&f.attrs) {
            return;
        }
        self.record(f.sig.ident.to_string(), &f.sig.fn_token, &f.block);
        // Functions nested in a method are not the impl type's.
        let outer = self.self_type.take();
        syn::visit::visit_item_fn(self, f);
        self.self_type = outer;
    }

    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        let name = match &*i.self_ty {
            syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
            _ => None,
        };
        let outer = std::mem::replace(&mut self.self_type, name);
        syn::visit::visit_item_impl(self, i);
        self.self_type = outer;
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        let name = match &self.self_type {
            Some(t) => format!("{t}::{}", f.sig.ident),
            None => f.sig.ident.to_string(),
        };
        self.record(name, &f.sig.fn_token, &f.block);
        let outer = self.self_type.take();
        syn::visit::visit_impl_item_fn(self, f);
        self.self_type = outer;
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(body) = &f.default {
            self.record(f.sig.ident.to_string(), &f.sig.fn_token, body);
        }
        syn::visit::visit_trait_item_fn(self, f);
    }
}

/// The binary keeps to flags, subcommands and exit codes; the server's
/// life is `streamcap::server`, shared with the Lambda binary.
#[test]
fn the_binary_stays_thin() {
    let main = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/main.rs")).unwrap();
    let lines = main.lines().count();
    assert!(
        lines < 100,
        "src/main.rs has {lines} lines; move what is not flags, subcommands or exit codes to the library"
    );
}
