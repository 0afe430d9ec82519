//! The documentation checked against the code it describes.
//!
//! - docs/configuration.md has one row per flag of `streamcap serve
//!   --help`, with the same environment variable and default, and no row
//!   for a flag that no longer exists;
//! - every `STREAMCAP_*` variable the help names is documented there, and
//!   every file key of the table is in streamcap.example.toml and back;
//! - docs/operations.md has one row per metric that src/metrics.rs names,
//!   and one per decision outcome and store op;
//! - every problem type the OpenAPI document lists is in docs/api.md;
//! - every relative link in README.md and docs/*.md points at a file, and
//!   at a heading, that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs the real binary with `args`, without any `STREAMCAP_*` variable of
/// the test's own environment (clap would print their values in the help).
fn streamcap(args: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamcap"));
    cmd.args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STREAMCAP_") {
            cmd.env_remove(name);
        }
    }
    let out = cmd.output().expect("run streamcap");
    assert!(out.status.success(), "streamcap {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// One option of `streamcap serve --help`.
#[derive(Debug)]
struct HelpOption {
    flag: String,
    env: Option<String>,
    default: Option<String>,
}

/// The options of `streamcap serve --help`, without `--help` itself.
fn serve_help() -> (String, Vec<HelpOption>) {
    let text = streamcap(&["serve", "--help"]);
    // An option starts a line with `-`; a wrapped description continues on
    // the lines after it.
    let mut entries: Vec<String> = Vec::new();
    let mut in_options = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if line.starts_with("Options:") {
            in_options = true;
        } else if in_options && trimmed.starts_with('-') {
            entries.push(trimmed.to_owned());
        } else if in_options && !trimmed.is_empty() && line.starts_with(' ') {
            if let Some(last) = entries.last_mut() {
                last.push(' ');
                last.push_str(trimmed);
            }
        } else if in_options && !line.starts_with(' ') && !trimmed.is_empty() {
            in_options = false;
        }
    }
    let options = entries
        .iter()
        .filter_map(|entry| {
            let flag = entry.split_whitespace().find(|w| w.starts_with("--"))?;
            let flag: String = flag.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            if flag == "--help" || flag == "--version" {
                return None;
            }
            let env = bracket(entry, "[env: ").map(|v| v.split('=').next().unwrap_or_default().to_owned());
            let default = bracket(entry, "[default: ");
            Some(HelpOption { flag, env, default })
        })
        .collect();
    (text, options)
}

/// The text after `open` up to its closing `]`.
fn bracket(text: &str, open: &str) -> Option<String> {
    let rest = &text[text.find(open)? + open.len()..];
    Some(rest[..rest.find(']')?].to_owned())
}

/// One row of the settings table in docs/configuration.md.
#[derive(Debug)]
struct SettingRow {
    flags: Vec<String>,
    env: Vec<String>,
    file_key: Option<String>,
    default: String,
}

const SETTINGS_HEADER: &str = "| flag | env var | file key | values | default |";

/// The rows of the table that starts with `header` in `markdown`, as cells.
fn table(markdown: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = markdown.lines().skip_while(|l| l.trim() != header);
    assert!(lines.next().is_some(), "no table headed {header:?}");
    lines
        .skip(1) // the |---| line
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(cells)
        .collect()
}

/// The cells of a table row: `| a | b |` gives `a`, `b`.
fn cells(row: &str) -> Vec<String> {
    row.trim().trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect()
}

/// The code spans of a table cell: `` `a` and `b` `` gives `a`, `b`.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

fn settings_table() -> Vec<SettingRow> {
    table(&read("docs/configuration.md"), SETTINGS_HEADER)
        .into_iter()
        .map(|cells| {
            assert_eq!(cells.len(), 5, "a settings row has five cells: {cells:?}");
            let flags = code_spans(&cells[0]).into_iter().filter(|s| s.starts_with("--")).collect();
            let env = code_spans(&cells[1]);
            let file_key = code_spans(&cells[2]).first().map(|k| file_key(k));
            let default = cells[4].replace('`', "");
            SettingRow { flags, env, file_key, default }
        })
        .collect()
}

/// A file key as the table writes it (`listen`, `[limits] default`,
/// `[limits.on_limit_by_plan]`, `[[auth.api_keys]]`), dotted.
fn file_key(cell: &str) -> String {
    let cell = cell.trim();
    match cell.rsplit_once(']') {
        Some((table, "")) => table.trim_start_matches('[').trim_end_matches(']').to_owned(),
        Some((table, key)) => format!("{}.{}", table.trim_start_matches('['), key.trim()),
        None => cell.to_owned(),
    }
}

#[test]
fn every_flag_of_serve_help_has_exactly_one_row_in_configuration_md() {
    let (_, help) = serve_help();
    assert!(help.len() > 20, "parsed too few options from --help: {help:?}");
    let in_help: BTreeSet<&str> = help.iter().map(|o| o.flag.as_str()).collect();
    let rows = settings_table();
    let mut in_docs: BTreeMap<&str, usize> = BTreeMap::new();
    for row in &rows {
        for flag in &row.flags {
            *in_docs.entry(flag.as_str()).or_default() += 1;
        }
    }
    let missing: Vec<_> = in_help.iter().filter(|f| !in_docs.contains_key(*f)).collect();
    assert!(missing.is_empty(), "flags of `streamcap serve --help` missing from docs/configuration.md: {missing:?}");
    let gone: Vec<_> = in_docs.keys().filter(|f| !in_help.contains(*f)).collect();
    assert!(gone.is_empty(), "docs/configuration.md documents flags that no longer exist: {gone:?}");
    let twice: Vec<_> = in_docs.iter().filter(|(_, n)| **n > 1).map(|(f, _)| f).collect();
    assert!(twice.is_empty(), "flags with more than one row in docs/configuration.md: {twice:?}");
}

#[test]
fn each_flag_row_names_the_env_var_and_default_the_help_shows() {
    let (text, help) = serve_help();
    assert!(help.len() > 20, "parsed too few options from --help: {help:?}");
    let rows = settings_table();
    let (mut envs, mut defaults) = (0, 0);
    for option in &help {
        let row = rows
            .iter()
            .find(|r| r.flags.contains(&option.flag))
            .unwrap_or_else(|| panic!("{}: no row in docs/configuration.md", option.flag));
        if let Some(env) = &option.env {
            assert!(
                row.env.contains(env),
                "{}: the help says env {env}, docs/configuration.md says {:?}",
                option.flag,
                row.env
            );
            envs += 1;
        }
        if let Some(default) = &option.default {
            assert_eq!(
                &row.default, default,
                "{}: the default in docs/configuration.md differs from --help",
                option.flag
            );
            defaults += 1;
        }
    }
    // Every env var and default the help shows was compared with its row.
    assert_eq!(envs, text.matches("[env: ").count(), "env vars compared, of those in the help:\n{text}");
    assert_eq!(defaults, text.matches("[default: ").count(), "defaults compared, of those in the help:\n{text}");
}

#[test]
fn every_streamcap_env_var_of_the_help_is_in_configuration_md_and_back() {
    let (text, _) = serve_help();
    let in_help = env_vars(&text);
    assert!(in_help.contains("STREAMCAP_LISTEN"), "parsed no env vars from --help: {in_help:?}");
    let in_docs: BTreeSet<String> =
        settings_table().into_iter().flat_map(|r| r.env).filter(|e| e.starts_with("STREAMCAP_")).collect();
    let missing: Vec<_> = in_help.difference(&in_docs).collect();
    assert!(missing.is_empty(), "env vars of `streamcap serve --help` missing from docs/configuration.md: {missing:?}");
    let gone: Vec<_> = in_docs.difference(&in_help).collect();
    assert!(gone.is_empty(), "docs/configuration.md documents env vars that --help does not name: {gone:?}");
}

/// Every `STREAMCAP_*` name in `text`.
fn env_vars(text: &str) -> BTreeSet<String> {
    text.match_indices("STREAMCAP_")
        .map(|(at, _)| {
            text[at..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect()
        })
        .collect()
}

#[test]
fn the_file_keys_of_configuration_md_are_the_keys_of_the_example_file() {
    let in_docs: BTreeSet<String> = settings_table().into_iter().filter_map(|r| r.file_key).collect();
    assert!(in_docs.contains("limits.default"), "parsed no file keys: {in_docs:?}");
    let in_example = example_keys(&read("streamcap.example.toml"));
    assert!(in_example.contains("listen"), "parsed no keys from streamcap.example.toml: {in_example:?}");
    let missing: Vec<_> = in_example.difference(&in_docs).collect();
    assert!(missing.is_empty(), "keys of streamcap.example.toml missing from docs/configuration.md: {missing:?}");
    let gone: Vec<_> = in_docs.difference(&in_example).collect();
    assert!(gone.is_empty(), "file keys in docs/configuration.md that streamcap.example.toml lacks: {gone:?}");
}

/// The keys of the example file, dotted, whether set or commented out
/// (`# key = value`). A nested table such as `[limits.on_limit_by_plan]`
/// or `[[auth.api_keys]]` counts as one key: its entries are data.
fn example_keys(toml: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut table = String::new();
    for line in toml.lines() {
        let line = line.strip_prefix('#').map(|l| l.strip_prefix(' ').unwrap_or(l)).unwrap_or(line);
        if line.starts_with('[') {
            let name = line.trim().trim_start_matches('[').trim_end_matches(']').to_owned();
            if name.contains('.') {
                keys.insert(name.clone());
            }
            table = name;
            continue;
        }
        let Some((key, _)) = line.split_once('=') else { continue };
        let key = key.trim_end();
        let is_key = !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        if is_key && !table.contains('.') {
            keys.insert(if table.is_empty() { key.to_owned() } else { format!("{table}.{key}") });
        }
    }
    keys
}

#[test]
fn the_metrics_tables_of_operations_md_match_the_code() {
    let ops = read("docs/operations.md");
    let first_spans = |header: &str| -> Vec<String> {
        table(&ops, header).iter().filter_map(|row| code_spans(&row[0]).into_iter().next()).collect()
    };
    // Every metric is registered in src/metrics.rs under a literal name.
    let source = read("src/metrics.rs");
    let in_code: BTreeSet<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("streamcap_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(str::to_owned)
        .collect();
    assert!(in_code.len() > 10, "found too few metric names in src/metrics.rs: {in_code:?}");
    let metrics = first_spans("| metric | type | labels | meaning |");
    let in_docs: BTreeSet<String> = metrics.iter().cloned().collect();
    assert_eq!(in_docs.len(), metrics.len(), "a metric has two rows in docs/operations.md: {metrics:?}");
    let missing: Vec<_> = in_code.difference(&in_docs).collect();
    assert!(missing.is_empty(), "metrics of src/metrics.rs missing from docs/operations.md: {missing:?}");
    let gone: Vec<_> = in_docs.difference(&in_code).collect();
    assert!(gone.is_empty(), "docs/operations.md documents metrics the code no longer has: {gone:?}");

    let outcomes: BTreeSet<String> = first_spans("| `outcome` | counted |").into_iter().collect();
    let in_code: BTreeSet<String> = streamcap::metrics::OUTCOMES.iter().map(|o| o.to_string()).collect();
    assert_eq!(outcomes, in_code, "the decision outcomes in docs/operations.md differ from metrics::OUTCOMES");
    let sentence = ops.split("`op` is ").nth(1).and_then(|s| s.split(". ").next()).expect("an `op` is ... sentence");
    let ops_in_docs: BTreeSet<String> = code_spans(sentence).into_iter().collect();
    let in_code: BTreeSet<String> = streamcap::metrics::STORE_OPS.iter().map(|o| o.to_string()).collect();
    assert_eq!(ops_in_docs, in_code, "the store ops in docs/operations.md differ from metrics::STORE_OPS");
}

#[test]
fn every_problem_type_of_the_openapi_document_is_in_api_md() {
    let doc: serde_json::Value = serde_json::from_str(&streamcap(&["openapi"])).expect("OpenAPI JSON");
    let description = doc["info"]["description"].as_str().expect("info.description");
    let rows: Vec<Vec<String>> = description.lines().filter(|l| l.starts_with('|')).map(cells).collect();
    let in_openapi = problem_types(&rows);
    assert!(in_openapi.contains(&("409".into(), "stream-limit-reached".into())), "{in_openapi:?}");
    let in_docs = problem_types(&table(&read("docs/api.md"), "| status | `type` slug | when |"));
    let missing: Vec<_> = in_openapi.difference(&in_docs).collect();
    assert!(missing.is_empty(), "problem types of the OpenAPI document missing from docs/api.md: {missing:?}");
}

/// (status, slug) pairs from the rows of a `| status | slugs | ... |`
/// table; a cell may hold several slugs.
fn problem_types(rows: &[Vec<String>]) -> BTreeSet<(String, String)> {
    let mut types = BTreeSet::new();
    for row in rows {
        if row.len() < 2 || !row[0].starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        for slug in code_spans(&row[1]) {
            types.insert((row[0].clone(), slug));
        }
    }
    types
}

#[test]
fn relative_links_in_readme_and_docs_resolve() {
    let mut files = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).expect("docs/") {
        let path = entry.expect("docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read markdown");
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
            let shown = format!("{}: {target}", file.strip_prefix(root()).unwrap().display());
            if !resolved.exists() {
                broken.push(format!("{shown} (no such file)"));
            } else if !anchor.is_empty() && resolved.extension().is_some_and(|e| e == "md") {
                let headings = anchors(&std::fs::read_to_string(&resolved).expect("read link target"));
                if !headings.contains(anchor) {
                    broken.push(format!("{shown} (no such heading)"));
                }
            }
        }
    }
    assert!(checked > 50, "found only {checked} relative links; is the parser broken?");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The lines of `markdown` outside fenced code blocks.
fn prose(markdown: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    markdown.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The targets of the inline links `[text](target)` of `markdown`,
/// leaving out code.
fn links(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose(markdown) {
        // Drop code spans: what they show is not a link.
        let text: String = line.split('`').step_by(2).collect::<Vec<_>>().join("");
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            if let Some(end) = rest.find(')') {
                targets.push(rest[..end].to_owned());
            }
        }
    }
    targets
}

/// The anchors GitHub gives the headings of `markdown`: lower case,
/// punctuation dropped, spaces as `-`, and `-1`, `-2` ... on repeats.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    for line in prose(markdown) {
        let level = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&level) || !line[level..].starts_with(' ') {
            continue;
        }
        let slug: String = line[level..]
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let n = seen.entry(slug.clone()).or_default();
        anchors.insert(if *n == 0 { slug.clone() } else { format!("{slug}-{n}") });
        *n += 1;
    }
    anchors
}

#[test]
fn the_anchor_rules_match_github() {
    let md = "# Managed Redis: ElastiCache and MemoryDB\n```\n# not a heading\n```\n## `streamcap_*` metrics\n#### Targets\n#### Targets\n";
    let got = anchors(md);
    let want: BTreeSet<String> =
        ["managed-redis-elasticache-and-memorydb", "streamcap_-metrics", "targets", "targets-1"]
            .map(String::from)
            .into();
    assert_eq!(got, want);
    assert_eq!(file_key("[limits] default"), "limits.default");
    assert_eq!(file_key("[[auth.api_keys]]"), "auth.api_keys");
    assert_eq!(file_key("listen"), "listen");
}
