//! ARCHITECTURE.md checked against the code it maps.
//!
//! - every module that src/lib.rs declares has a section of the code map
//!   (`### \`src/NAME.rs\`` or `### \`src/NAME/\``), and so does every
//!   binary (src/main.rs, src/bin/*.rs);
//! - in the section of a directory module, each module that its `mod.rs`
//!   declares is named (`NAME.rs` or `NAME/`), and each file a bullet of
//!   the section names is one that `mod.rs` declares;
//! - every path a code-map heading names exists;
//! - the "Entry points" section names `main`, `lambda::run`, `http::app`,
//!   `Store::open` and `limiter::apply`, each with a file that defines it;
//! - the `//!` layout of src/lib.rs names every module;
//! - the document stays under 30,000 bytes, which bounds its characters.
//!
//! The checks read only files, so a module added without its paragraph,
//! or an entry point renamed or moved, fails here by name.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const MAX_BYTES: usize = 30_000;

/// The entry points the document must name, as it spells them.
const ENTRY_POINTS: [&str; 5] = ["main", "lambda::run", "http::app", "Store::open", "limiter::apply"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The text of `## title` up to the next `## ` heading.
fn part<'a>(markdown: &'a str, title: &str) -> &'a str {
    let head = format!("\n## {title}\n");
    let start = markdown.find(&head).unwrap_or_else(|| panic!("ARCHITECTURE.md has no `## {title}` section"));
    let body = &markdown[start + head.len()..];
    &body[..body.find("\n## ").unwrap_or(body.len())]
}

/// The `### ` sections of the code map: (the paths in the heading's code
/// spans, the section's text without the heading).
fn sections(code_map: &str) -> Vec<(Vec<String>, String)> {
    let mut out: Vec<(Vec<String>, String)> = Vec::new();
    for line in code_map.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            let paths = code_spans(heading).into_iter().filter(|s| s.contains('/') || s.contains('.')).collect();
            out.push((paths, String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

fn code_spans(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The names of `mod NAME;` declarations, whatever their visibility and
/// attributes. Inline modules (`mod tests { … }`) are not files.
fn declared_modules(rust: &str) -> BTreeSet<String> {
    rust.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix("pub(crate) ").or_else(|| line.strip_prefix("pub(super) ")).unwrap_or(line);
            let rest = rest.strip_prefix("pub ").unwrap_or(rest);
            let name = rest.strip_prefix("mod ")?.strip_suffix(';')?;
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_').then(|| name.to_string())
        })
        .collect()
}

/// How the document names module `name` of directory `dir`: `name.rs` if
/// that file exists (a directory beside it holds assets, as `http/demo/`
/// does), else `name/`.
fn file_name(dir: &Path, name: &str) -> String {
    if dir.join(format!("{name}.rs")).is_file() { format!("{name}.rs") } else { format!("{name}/") }
}

/// The file names that start the bullets of a section (`- \`x.rs\`: …`),
/// except the directory's own `mod.rs`.
fn bullet_files(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter_map(|line| line.strip_prefix("- `"))
        .filter_map(|rest| rest.split('`').next())
        .filter(|name| (name.ends_with(".rs") || name.ends_with('/')) && *name != "mod.rs")
        .map(str::to_string)
        .collect()
}

/// What is wrong with the code map: top-level modules and binaries without
/// a section, direct children of a directory module the section leaves
/// out or names wrongly, and headings naming paths that do not exist.
fn code_map_problems(doc: &str, src_root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let sections = sections(part(doc, "Code map"));
    let headed: BTreeSet<&str> = sections.iter().flat_map(|(paths, _)| paths.iter().map(String::as_str)).collect();
    let lib = std::fs::read_to_string(src_root.join("src/lib.rs")).expect("read src/lib.rs");
    let mut wanted: Vec<String> =
        declared_modules(&lib).iter().map(|m| format!("src/{}", file_name(&src_root.join("src"), m))).collect();
    wanted.push("src/main.rs".into());
    if let Ok(bins) = std::fs::read_dir(src_root.join("src/bin")) {
        for bin in bins.flatten() {
            wanted.push(format!("src/bin/{}", bin.file_name().to_string_lossy()));
        }
    }
    for path in &wanted {
        if !headed.contains(path.as_str()) {
            problems.push(format!("`{path}` has no `### ` section in the code map"));
        }
    }
    for (paths, body) in &sections {
        for path in paths {
            let on_disk = src_root.join(path);
            if !on_disk.exists() {
                problems.push(format!("the code map names `{path}`, which does not exist"));
                continue;
            }
            if !(path.starts_with("src/") && path.ends_with('/')) {
                continue;
            }
            let Ok(module) = std::fs::read_to_string(on_disk.join("mod.rs")) else { continue };
            let children: BTreeSet<String> =
                declared_modules(&module).iter().map(|name| file_name(&on_disk, name)).collect();
            let named: BTreeSet<String> = code_spans(body).into_iter().collect();
            for child in children.difference(&named) {
                problems.push(format!("the section of `{path}` does not name its module `{child}`"));
            }
            for bullet in bullet_files(body).difference(&children) {
                problems.push(format!(
                    "the section of `{path}` has a bullet for `{bullet}`, which its mod.rs does not declare"
                ));
            }
        }
    }
    problems
}

/// Problems with the document's claim that `item` (`name`,
/// `module::name` or `Type::name`) is defined in `shown`.
fn entry_point_problems(item: &str, src_root: &Path, shown: &str) -> Vec<String> {
    let Ok(code) = std::fs::read_to_string(src_root.join(shown)) else {
        return vec![format!("`{item}`: `{shown}` does not exist")];
    };
    let (owner, name) = match item.rsplit_once("::") {
        Some((owner, name)) => (Some(owner), name),
        None => (None, item),
    };
    let Some(at) = code.find(&format!("fn {name}(")) else {
        return vec![format!("`{item}`: `{shown}` defines no `fn {name}`")];
    };
    match owner {
        // A type's method: inside the braces of `impl Type`.
        Some(ty) if ty.starts_with(char::is_uppercase) => {
            let inside = code.find(&format!("impl {ty} {{")).is_some_and(|b| {
                let open = b + code[b..].find('{').unwrap_or(0);
                block_end(&code, open).is_some_and(|close| open < at && at < close)
            });
            if inside { vec![] } else { vec![format!("`{item}`: `fn {name}` in `{shown}` is not in `impl {ty}`")] }
        }
        // A module's function: public, in the module's own file, or in a
        // file of the module's directory that the module re-exports.
        Some(module) => {
            let mut problems = Vec::new();
            let before = &code[..at];
            if !before.ends_with("pub ") && !before.ends_with("pub async ") {
                problems.push(format!("`{item}`: `fn {name}` in `{shown}` is not `pub`"));
            }
            let own = format!("src/{module}.rs");
            let dir = format!("src/{module}/");
            if shown != own && !shown.starts_with(&dir) {
                problems.push(format!("`{item}`: `{shown}` is not a file of module `{module}`"));
            } else if shown.starts_with(&dir) && shown != format!("{dir}mod.rs") {
                let reexported = std::fs::read_to_string(src_root.join(format!("{dir}mod.rs"))).is_ok_and(|m| {
                    m.lines().any(|l| {
                        let l = l.trim_start();
                        l.starts_with("pub use")
                            && l.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| w == name)
                    })
                });
                if !reexported {
                    problems.push(format!("`{item}`: `{dir}mod.rs` does not re-export `{name}`"));
                }
            }
            problems
        }
        None => vec![],
    }
}

/// The index of the `}` that closes the `{` at `open`.
fn block_end(code: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The entry points the document lists (`- \`item\` in \`path\``), checked
/// against the files, and the required ones it leaves out.
fn entry_points_problems(doc: &str, src_root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut listed = BTreeSet::new();
    for line in part(doc, "Entry points").lines() {
        let Some(rest) = line.strip_prefix("- `") else { continue };
        let spans = code_spans(&format!("`{rest}"));
        let (Some(item), Some(path)) = (spans.first(), spans.get(1)) else {
            problems.push(format!("entry point line without `item` in `path`: {line}"));
            continue;
        };
        listed.insert(item.clone());
        problems.extend(entry_point_problems(item, src_root, path));
    }
    for item in ENTRY_POINTS {
        if !listed.contains(item) {
            problems.push(format!("the Entry points section does not list `{item}`"));
        }
    }
    problems
}

#[test]
fn every_module_and_binary_has_its_paragraph_in_the_code_map() {
    let problems = code_map_problems(&read("ARCHITECTURE.md"), &root());
    assert!(problems.is_empty(), "ARCHITECTURE.md's code map is out of date:\n{}", problems.join("\n"));
}

#[test]
fn every_entry_point_is_defined_where_the_document_says() {
    let problems = entry_points_problems(&read("ARCHITECTURE.md"), &root());
    assert!(problems.is_empty(), "ARCHITECTURE.md's entry points are out of date:\n{}", problems.join("\n"));
}

#[test]
fn the_layout_of_lib_rs_names_every_module() {
    let lib = read("src/lib.rs");
    let layout: String = lib.lines().filter_map(|l| l.strip_prefix("//!")).collect::<Vec<_>>().join("\n");
    let named: BTreeSet<String> = code_spans(&layout).into_iter().collect();
    let missing: Vec<String> = declared_modules(&lib).into_iter().filter(|m| !named.contains(m)).collect();
    assert!(missing.is_empty(), "src/lib.rs's `//!` layout does not name {missing:?}");
}

#[test]
fn the_document_stays_short() {
    let bytes = read("ARCHITECTURE.md").len();
    assert!(bytes <= MAX_BYTES, "ARCHITECTURE.md has {bytes} bytes; keep it under {MAX_BYTES}");
}

/// The checks themselves, on a small tree made for the test: they must
/// catch a module without its paragraph, a paragraph without its module,
/// and a renamed or moved entry point.
#[test]
fn the_checks_catch_what_they_are_for() {
    let dir = tempfile::tempdir().expect("temp dir");
    let at = |p: &str, text: &str| {
        let path = dir.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    at("src/lib.rs", "//! [`store`], [`limiter`]\npub mod store;\n#[cfg(feature = \"x\")]\npub mod limiter;\n");
    at("src/main.rs", "fn main() {}\n");
    at(
        "src/store/mod.rs",
        "mod memory;\n#[cfg(test)]\nmod conformance;\npub struct Store;\nimpl Store {\n    pub async fn open() {}\n}\nmod tests {\n}\n",
    );
    at("src/store/memory.rs", "");
    at("src/store/conformance.rs", "");
    at("src/limiter/mod.rs", "mod rules;\npub use rules::{apply, expire};\n");
    at("src/limiter/rules.rs", "pub fn apply() {}\n");
    let doc = "# A\n\n## Entry points\n\n- `main` in `src/main.rs`: x.\n- `Store::open` in `src/store/mod.rs`.\n- `limiter::apply` in `src/limiter/rules.rs`.\n\n## Code map\n\n### `src/limiter/`\n\n`rules.rs` decides.\n\n### `src/store/`\n\n- `memory.rs`: a map.\n- `conformance.rs`: the suite.\n\n### `src/main.rs`\n\nThin.\n\n## Cross-cutting concerns\n";
    assert_eq!(code_map_problems(doc, dir.path()), Vec::<String>::new());
    let entry = entry_points_problems(doc, dir.path());
    assert_eq!(entry.len(), 2, "{entry:?}");
    assert!(entry.iter().all(|p| p.contains("does not list")), "{entry:?}");

    // Assets in a directory beside a module's file, and the directory's own
    // `mod.rs` in a bullet, are no modules.
    at("src/store/memory/data.txt", "");
    let with_mod = doc.replace("- `memory.rs`: a map.", "- `memory.rs`: a map.\n- `mod.rs`: the handle.");
    assert_eq!(code_map_problems(&with_mod, dir.path()), Vec::<String>::new());

    // A new module without its paragraph.
    at(
        "src/store/mod.rs",
        "mod memory;\nmod sqlite;\nmod conformance;\npub struct Store;\nimpl Store {\n    pub async fn open() {}\n}\n",
    );
    at("src/store/sqlite/mod.rs", "");
    assert_eq!(code_map_problems(doc, dir.path()), ["the section of `src/store/` does not name its module `sqlite/`"]);
    // A new top-level module without its section.
    at("src/lib.rs", "pub mod store;\npub mod limiter;\npub(crate) mod clock;\n");
    at("src/clock.rs", "");
    assert!(
        code_map_problems(doc, dir.path())
            .contains(&"`src/clock.rs` has no `### ` section in the code map".to_string())
    );
    // A paragraph for a module that went away.
    let gone = doc.replace("- `memory.rs`: a map.", "- `memory.rs`: a map.\n- `old.rs`: gone.");
    assert!(
        code_map_problems(&gone, dir.path()).iter().any(|p| p.contains("`old.rs`, which its mod.rs does not declare"))
    );

    // An entry point renamed, and one moved out of its type.
    at("src/limiter/rules.rs", "pub fn decide() {}\n");
    at("src/store/mod.rs", "pub struct Store;\nimpl Store {}\npub async fn open() {}\n");
    let entry = entry_points_problems(doc, dir.path());
    assert!(entry.contains(&"`limiter::apply`: `src/limiter/rules.rs` defines no `fn apply`".to_string()), "{entry:?}");
    assert!(
        entry.contains(&"`Store::open`: `fn open` in `src/store/mod.rs` is not in `impl Store`".to_string()),
        "{entry:?}"
    );
    // A module's function that its module does not re-export.
    at("src/limiter/rules.rs", "pub fn apply() {}\n");
    at("src/limiter/mod.rs", "mod rules;\npub use rules::expire;\n");
    let entry = entry_points_problems(doc, dir.path());
    assert!(entry.iter().any(|p| p.contains("does not re-export `apply`")), "{entry:?}");
}
