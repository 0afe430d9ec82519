use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Error as _, IntoDeserializer, MapAccess, SeqAccess, Visitor};

use super::settings::{Settings, command, read_file};
use super::*;
use crate::limiter::OnLimit;

fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    match from_args(std::iter::once("streamcap").chain(args.iter().copied()))? {
        Invocation::Serve(c) => Ok(*c),
        Invocation::Printed | Invocation::PrintOpenapi | Invocation::CreateDynamodbTable { .. } => {
            panic!("not serve")
        }
    }
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

// These tests avoid the process environment (which tests share) and
// cover flag > file > default; env precedence is tested end to end
// against the binary in tests/process.rs.

#[test]
fn defaults() {
    let c = parse(&["serve"]).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080");
    assert_eq!(c.store.kind, StoreKind::Sqlite);
    assert_eq!(c.store.data_dir, PathBuf::from("./streamcap-data"));
    assert_eq!(c.policy.default_limit.get(), 3);
    assert_eq!(c.policy.lease_ttl.as_secs(), 60);
    assert_eq!(c.policy.on_limit, OnLimit::Reject);
    assert!(c.policy.enforce);
    assert!(c.policy.plans.is_empty());
}

#[test]
fn flags_win_over_the_file() {
    let f = file(
        "lease_ttl = 30\nstore = \"memory\"\n[limits]\ndefault = 7\non_limit = \"evict_oldest\"\nenforce = false\n",
    );
    let p = f.path().to_str().unwrap();
    let c = parse(&["serve", "--config", p, "--default-limit", "2", "--on-limit", "reject"]).unwrap();
    assert_eq!(c.policy.default_limit.get(), 2);
    assert_eq!(c.policy.lease_ttl.as_secs(), 30);
    assert_eq!(c.policy.on_limit, OnLimit::Reject);
    assert!(!c.policy.enforce);
    assert_eq!(c.store.kind, StoreKind::Memory);
    assert!(parse(&["serve", "--config", p, "--enforce", "true"]).unwrap().policy.enforce);
}

#[test]
fn plans_take_the_global_policy_unless_they_override_it() {
    let f = file(
        "[limits]\nplans = { basic = 1, standard = 2, premium = 4, suspended = 0 }\non_limit = \"reject\"\n\
         [limits.on_limit_by_plan]\nbasic = \"evict_oldest\"\n",
    );
    let c = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap();
    let plan = |n: &str| c.policy.plans[n];
    assert_eq!((plan("basic").limit.get(), plan("basic").on_limit), (1, OnLimit::EvictOldest));
    assert_eq!((plan("premium").limit.get(), plan("premium").on_limit), (4, OnLimit::Reject));
    assert_eq!(plan("suspended").limit.get(), 0);
}

#[test]
fn errors_are_one_line_and_name_the_culprit() {
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["serve".into(), "--default-limit".into(), "0".into()], "--default-limit"),
        (vec!["serve".into(), "--default-limit".into(), "1001".into()], "--default-limit"),
        (vec!["serve".into(), "--lease-ttl".into(), "86401".into()], "--lease-ttl"),
        (vec!["serve".into(), "--lease-ttl".into(), "abc".into()], "--lease-ttl"),
        (vec!["serve".into(), "--store".into(), "mongo".into()], "--store"),
        (vec!["serve".into(), "--redis-replica-acks".into(), "17".into()], "--redis-replica-acks"),
        (
            vec!["serve".into(), "--store".into(), "dynamodb".into(), "--dynamodb-table".into(), "a b".into()],
            if cfg!(feature = "dynamodb") { "--dynamodb-table" } else { "--store dynamodb is not built" },
        ),
        (
            vec!["serve".into(), "--store".into(), "dynamodb".into(), "--dynamodb-endpoint".into(), "localhost".into()],
            if cfg!(feature = "dynamodb") { "--dynamodb-endpoint" } else { "--store dynamodb is not built" },
        ),
        (
            vec!["serve".into(), "--store".into(), "redis".into(), "--redis-mode".into(), "sentinel".into()],
            "--redis-mode",
        ),
        (
            vec!["serve".into(), "--store".into(), "redis".into(), "--redis-url".into(), "http://x".into()],
            "--redis-url",
        ),
        (
            vec![
                "serve".into(),
                "--store".into(),
                "redis".into(),
                "--redis-url".into(),
                "redis://a:1,redis://b:2".into(),
            ],
            "--redis-mode cluster",
        ),
        (
            vec![
                "serve".into(),
                "--store".into(),
                "redis".into(),
                "--redis-url".into(),
                "rediss://h:1#insecure".into(),
            ],
            "--redis-tls-insecure",
        ),
        (
            vec![
                "serve".into(),
                "--store".into(),
                "redis".into(),
                "--redis-mode".into(),
                "cluster".into(),
                "--redis-url".into(),
                "rediss://a:1,redis://b:2".into(),
            ],
            "mixes rediss://",
        ),
        (vec!["serve".into(), "--on-store-error".into(), "maybe".into()], "--on-store-error"),
        (vec!["serve".into(), "--log-format".into(), "xml".into()], "--log-format"),
        (vec!["serve".into(), "--metrics-listen".into(), "nowhere".into()], "--metrics-listen"),
        (vec!["serve".into(), "--listen".into(), "nowhere".into()], "--listen"),
        (vec!["serve".into(), "--on-limit".into(), "evict_newest".into()], "--on-limit"),
        (vec!["serve".into(), "--enforce".into(), "maybe".into()], "--enforce"),
        (vec!["serve".into(), "--bogus".into()], "--bogus"),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let e = parse(&args).expect_err(&format!("{args:?} must fail")).0;
        assert!(e.contains(needle), "{args:?}: {e}");
        assert!(!e.contains('\n'), "{args:?}: {e:?}");
    }
}

#[test]
fn file_errors_name_the_key() {
    for (text, needle) in [
        ("[limits]\ndefault = 0\n", "limits.default"),
        ("default_limit = 3\n", "default_limit"),
        ("[limits]\nplans = { basic = 1001 }\n", "limits.plans.basic"),
        ("[limits]\nplans = { \"b c\" = 1 }\n", "limits.plans.b c"),
        ("[limits]\non_limit = \"evict_all\"\n", "limits.on_limit"),
        ("[limits.on_limit_by_plan]\ngold = \"reject\"\n", "no plan \"gold\""),
        ("[limits]\nplans = { basic = 1 }\n[limits.on_limit_by_plan]\nbasic = \"nope\"\n", "on_limit_by_plan.basic"),
        ("[limits]\nenforce = \"yes\"\n", "line 2"),
        ("lease_ttl = 0\n", "lease_ttl"),
        ("colour = \"red\"\n", "colour"),
        ("default_limit = \"three\"\n", "line 1"),
        ("store = \"dynamodb\"\ndynamodb_table = \"x\"\n", "dynamodb"),
        ("store = \"redis\"\nredis_mode = \"ring\"\n", "--redis-mode"),
        ("redis_replica_acks = -1\n", "redis_replica_acks"),
    ] {
        let f = file(text);
        let e = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap_err().0;
        assert!(e.contains(needle), "{text}: {e}");
        assert!(!e.contains('\n'), "{e:?}");
    }
}

const RULES: &str = "[limits]\ndefault = 4\nplans = { basic = 1, premium = 6 }\n\n\
[[limits.rules]]\nname = \"tv\"\ndevice_class = \"tv\"\nlimit = 2\n\n\
[[limits.rules]]\nname = \"one-per-title\"\nper = \"content_id\"\nlimit = 1\n\n\
[[limits.rules]]\nname = \"downloads\"\ncontent_kind = \"download\"\nlimit = 10\nexempt = true\n\n\
[[limits.plan_rules.premium]]\nname = \"tv\"\ndevice_class = \"tv\"\nlimit = 4\n\n\
[limits.plan_rules]\nbasic = []\n";

#[test]
fn rules_keep_their_order_and_a_plan_set_replaces_the_default_set() {
    let f = file(RULES);
    let c = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap();
    let label = |s: &str| Some(crate::limiter::Label::new(s).unwrap());
    let rules = &c.policy.rules;
    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["tv", "one-per-title", "downloads"]);
    assert_eq!((rules[0].device_class.clone(), rules[0].limit.get(), rules[0].per_content), (label("tv"), 2, false));
    assert!(rules[1].per_content && rules[1].device_class.is_none() && rules[1].content_kind.is_none());
    assert_eq!((rules[2].content_kind.clone(), rules[2].limit.get(), rules[2].exempt), (label("download"), 10, true));
    assert!(!rules[0].exempt && !rules[1].exempt);
    let premium = &c.policy.plan_rules["premium"];
    assert_eq!((premium.len(), premium[0].limit.get()), (1, 4));
    assert!(c.policy.plan_rules["basic"].is_empty(), "basic = [] is a set without rules");
    assert_eq!(c.policy.resolve(Some("basic")).unwrap().rules.len(), 0);
    assert_eq!(c.policy.resolve(None).unwrap().rules.len(), 3);
    // Without rules in the file there are none.
    assert!(parse(&["serve"]).unwrap().policy.rules.is_empty());
}

#[test]
fn a_bad_rule_is_refused_in_one_line_naming_the_rule_and_the_line() {
    let long = "x".repeat(65);
    let at = |line: usize| format!("(line {line})");
    let tv = |body: &str| {
        format!("[[limits.rules]]\nname = \"ok\"\ndevice_class = \"phone\"\nlimit = 1\n\n[[limits.rules]]\n{body}")
    };
    let cases: Vec<(String, Vec<String>)> = vec![
        (tv("name = \"tv\"\ndevice_class = \"tv\"\nlimit = -1\n"), vec![
            "limits.rules[1] (\"tv\") in ".into(), at(9), "limit -1 is out of range 0..=1000".into()]),
        (tv("name = \"tv\"\ndevice_class = \"tv\"\nlimit = 1001\n"), vec![
            "limits.rules[1] (\"tv\")".into(), at(9), "limit 1001 is out of range 0..=1000".into()]),
        (tv("name = \"t v\"\ndevice_class = \"tv\"\nlimit = 1\n"), vec![
            "limits.rules[1] (\"t v\")".into(), at(7), "1 to 64 characters".into()]),
        (tv(&format!("name = \"{long}\"\ndevice_class = \"tv\"\nlimit = 1\n")), vec![
            format!("limits.rules[1] (\"{long}\")"), at(7), "1 to 64 characters".into()]),
        (tv("name = \"ok\"\ndevice_class = \"tv\"\nlimit = 1\n"), vec![
            "limits.rules[1] (\"ok\")".into(), at(7), "name \"ok\" is already the name of rule 0".into()]),
        (tv("name = \"tv\"\ndevice_class = \"tv\"\nlimit = 1\ncolour = \"red\"\n"), vec![
            "limits.rules[1] (\"tv\")".into(), at(10), "unknown key \"colour\"".into()]),
        (tv("name = \"t\"\nper = \"title\"\nlimit = 1\n"), vec![
            "limits.rules[1] (\"t\")".into(), at(8), "per \"title\" is not \"content_id\"".into()]),
        (tv("name = \"t\"\nlimit = 1\nexempt = true\n"), vec![
            "limits.rules[1] (\"t\")".into(), at(9), "an exempt rule needs device_class or content_kind".into()]),
        (tv("name = \"tv\"\ndevice_class = \"tv\"\nlimit = \"2\"\n"), vec![
            "limits.rules[1] (\"tv\")".into(), at(9), "limit must be an integer, not string \"2\"".into()]),
        (tv("name = \"tv\"\ndevice_class = 7\nlimit = 2\n"), vec![
            "limits.rules[1] (\"tv\")".into(), at(8), "device_class must be a string, not integer 7".into()]),
        (tv("name = \"tv\"\ndevice_class = \"tv\"\nlimit = 2\nexempt = 1\n"), vec![
            "limits.rules[1] (\"tv\")".into(), at(10), "exempt must be true or false".into()]),
        (tv("name = 3\ndevice_class = \"tv\"\nlimit = 2\n"), vec![
            "limits.rules[1] in ".into(), at(7), "name must be a string, not integer 3".into()]),
        (tv("device_class = \"tv\"\nlimit = 2\n"), vec!["limits.rules[1] in ".into(), at(7), "name is required".into()]),
        (tv("name = \"tv\"\ndevice_class = \"tv\"\n"), vec![
            "limits.rules[1] (\"tv\")".into(), at(7), "limit is required".into()]),
        (tv("name = \"all\"\nlimit = 2\n"), vec![
            "limits.rules[1] (\"all\")".into(), at(7), "counts every stream, as the total does".into()]),
        (
            "[limits]\nplans = { basic = 1 }\n[[limits.plan_rules.gold]]\nname = \"tv\"\ndevice_class = \"tv\"\nlimit = 1\n".into(),
            vec!["limits.plan_rules.gold in ".into(), at(4), "no plan \"gold\" in limits.plans".into()],
        ),
        (
            "[limits]\nplans = { basic = 1 }\n[[limits.plan_rules.basic]]\nname = \"tv\"\ndevice_class = \"tv\"\nlimit = -3\n".into(),
            vec!["limits.plan_rules.basic[0] (\"tv\") in ".into(), at(6), "limit -3 is out of range".into()],
        ),
        ("[limits]\nrules = 3\n".into(), vec!["limits.rules in ".into(), at(2)]),
    ];
    for (text, needles) in cases {
        let f = file(&text);
        let e = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap_err().0;
        for needle in needles {
            assert!(e.contains(&needle), "{text}\n{needle:?} not in {e}");
        }
        assert!(!e.contains('\n'), "{e:?}");
    }
}

#[test]
fn a_rule_that_counts_every_stream_is_allowed_only_beside_an_exempt_rule() {
    let text = "[[limits.rules]]\nname = \"downloads\"\ncontent_kind = \"download\"\nlimit = 10\nexempt = true\n\
                [[limits.rules]]\nname = \"everything\"\nlimit = 12\n";
    let f = file(text);
    let c = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap();
    assert_eq!(c.policy.rules.len(), 2);
}

/// The settings `args` ask for, before `build`.
fn settings_of(args: &[&str]) -> Result<Settings, ConfigError> {
    let args = std::iter::once("streamcap").chain(args.iter().copied());
    let matches = command().try_get_matches_from(args).map_err(one_line)?;
    settings(matches.subcommand_matches("serve").unwrap_or(&matches))
}

#[test]
fn every_table_names_the_key_and_line_of_a_bad_value() {
    let digest = "ab".repeat(32);
    for (text, needles) in [
        ("[limits]\nfoo = 1\n".to_owned(), vec!["limits.foo in", "(line 2)", "unknown field `foo`"]),
        (
            "\n[protection]\nrequest_timeout = 301\n".into(),
            vec!["protection.request_timeout in", "(line 3)", "1..=300"],
        ),
        (
            "[protection]\nmax_concurrent_requests = 0\n".into(),
            vec!["protection.max_concurrent_requests", "1..=1000000"],
        ),
        ("[protection]\nuser_rate_limit = -1\n".into(), vec!["protection.user_rate_limit", "(line 2)"]),
        ("[auth]\nmode = \"oauth\"\n".into(), vec!["auth.mode in", "(line 2)", "\"oauth\" is not none or jwt"]),
        ("store = \"mongo\"\n".into(), vec!["store in", "\"mongo\" is not memory, sqlite, redis or dynamodb"]),
        ("log_format = \"xml\"\n".into(), vec!["log_format in", "(line 1)", "\"xml\" is not text or json"]),
        ("on_store_error = \"maybe\"\n".into(), vec!["on_store_error in", "\"maybe\" is not deny or allow"]),
        ("listen = \n".into(), vec!["config file", "(line 1)"]),
        (
            "[[auth.api_keys]]\nname = \"a\"\nsha256 = \"00\"\nscope = \"service\"\n".into(),
            vec!["auth.api_keys[0].sha256 in", "(line 3)", "64 hex digits"],
        ),
        (
            format!("[[auth.api_keys]]\nname = \"a\"\nsha256 = \"{digest}\"\nscope = \"root\"\n"),
            vec!["auth.api_keys[0].scope in", "(line 4)", "\"root\" is not service or admin"],
        ),
        (
            format!("[[auth.api_keys]]\nname = \"\"\nsha256 = \"{digest}\"\nscope = \"admin\"\n"),
            vec!["auth.api_keys[0] in", "name must not be empty"],
        ),
        (
            format!(
                "[[auth.api_keys]]\nname = \"a\"\nsha256 = \"{digest}\"\nscope = \"admin\"\n\
                 [[auth.api_keys]]\nname = \"b\"\nsha256 = \"{digest}\"\nscope = \"service\"\n"
            ),
            vec!["auth.api_keys[1] in", "listed twice"],
        ),
    ] {
        let f = file(&text);
        let e = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap_err().0;
        for needle in needles {
            assert!(e.contains(needle), "{text}: {needle:?} not in {e}");
        }
        assert!(!e.contains('\n'), "{e:?}");
    }
}

#[test]
fn flags_are_checked_by_the_same_constructors_as_keys() {
    for (args, needles) in [
        (["--request-timeout", "301"], ["--request-timeout", "1..=300"]),
        (["--max-concurrent-requests", "0"], ["--max-concurrent-requests", "1..=1000000"]),
        (["--auth-mode", "oauth"], ["--auth-mode", "\"oauth\" is not none or jwt"]),
        (["--store", "mongo"], ["--store", "\"mongo\" is not memory, sqlite, redis or dynamodb"]),
        (["--default-limit", "0"], ["--default-limit", "0 is out of range 1..=1000"]),
        (["--lease-ttl", "0"], ["--lease-ttl", "0 is out of range 1..=86400"]),
    ] {
        let e = parse(&["serve", args[0], args[1]]).unwrap_err().0;
        for needle in needles {
            assert!(e.contains(needle), "{args:?}: {needle:?} not in {e}");
        }
    }
}

#[test]
fn redis_settings_are_checked_only_when_redis_is_the_store() {
    let c = parse(&["serve", "--store", "memory", "--redis-mode", "ring", "--redis-url", "http://x"]).unwrap();
    assert_eq!(c.store.kind, StoreKind::Memory);
    let c = parse(&["serve", "--store", "redis", "--redis-mode", "cluster", "--redis-url", "redis://a:1, redis://b:2"])
        .unwrap();
    assert_eq!(c.store.redis_mode, RedisMode::Cluster);
    assert_eq!(c.store.redis_urls, ["redis://a:1", "redis://b:2"]);
    assert_eq!(c.store.redis_replica_acks, 0, "no replica acknowledgements unless asked for");
}

#[test]
fn replica_acks_come_from_the_flag_or_the_file() {
    let c = parse(&["serve", "--store", "redis", "--redis-replica-acks", "2"]).unwrap();
    assert_eq!(c.store.redis_replica_acks, 2);
    let f = file("store = \"redis\"\nredis_replica_acks = 16\n");
    let c = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap();
    assert_eq!(c.store.redis_replica_acks, 16);
    let c = parse(&["serve", "--config", f.path().to_str().unwrap(), "--redis-replica-acks", "1"]).unwrap();
    assert_eq!(c.store.redis_replica_acks, 1, "the flag wins over the file");
}

#[test]
fn the_file_fills_every_table_and_flags_override_each() {
    let digest = "ab".repeat(32);
    let f = file(&format!(
        "log_format = \"json\"\non_store_error = \"allow\"\n[auth]\ninsecure_no_auth = true\n\
         [[auth.api_keys]]\nname = \"ops\"\nsha256 = \"{digest}\"\nscope = \"admin\"\n\
         [protection]\nuser_rate_limit = 5\nrequest_timeout = 30\nmax_concurrent_requests = 7\n"
    ));
    let p = f.path().to_str().unwrap();
    let c = parse(&["serve", "--config", p]).unwrap();
    assert_eq!((c.log_format, c.policy.on_store_error), (LogFormat::Json, OnStoreError::Allow));
    assert!(c.insecure_no_auth && !c.auth.is_open());
    assert_eq!(c.protection.user_rate, 5);
    assert_eq!(c.protection.user_burst, Protection::default().user_burst);
    assert_eq!(c.protection.request_timeout, Duration::from_secs(30));
    assert_eq!(c.protection.max_concurrent_requests, 7);
    let c = parse(&["serve", "--config", p, "--request-timeout", "2", "--log-format", "text"]).unwrap();
    assert_eq!((c.protection.request_timeout, c.log_format), (Duration::from_secs(2), LogFormat::Text));
    assert_eq!(c.protection.max_concurrent_requests, 7);
}

#[test]
fn the_defaults_shown_in_help_are_the_built_in_defaults() {
    let cli = command();
    let serve = cli.find_subcommand("serve").unwrap();
    let mut shown = 0;
    for arg in serve.get_arguments() {
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let Some((value, _)) = help.split_once("[default: ").and_then(|(_, rest)| rest.split_once(']')) else {
            continue;
        };
        let flag = format!("--{}", arg.get_long().unwrap());
        if flag == "--jwt-algorithms" || flag == "--socket-lease-ttl" {
            // "what the keys allow" and "--lease-ttl" describe the default;
            // they are not values (the socket TTL's has a test of its own).
            continue;
        }
        assert_eq!(settings_of(&["serve", &flag, value]).unwrap(), Settings::default(), "{flag} {value}");
        shown += 1;
    }
    assert!(shown >= 20, "only {shown} defaults found in --help");
}

#[test]
fn the_example_file_is_a_valid_config_that_names_every_key_and_changes_nothing() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("streamcap.example.toml");
    parse(&["serve", "--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(read_file(&path).unwrap(), Settings::default(), "the example sets only defaults");

    let (keys, maps) = file_keys();
    assert!(keys.contains("limits.default") && keys.contains("auth.api_keys.scope"), "{keys:?}");
    let named = keys_named_in(&std::fs::read_to_string(&path).unwrap());
    let missing: Vec<_> = keys.difference(&named).collect();
    assert!(missing.is_empty(), "streamcap.example.toml does not mention {missing:?}");
    // Keys under a map are names the operator chooses, such as a plan;
    // below them, what the map holds (a plan's rules).
    let under_a_map = |k: &str| k.match_indices('.').any(|(i, _)| maps.contains(&k[..i]));
    let unknown: Vec<_> = named.iter().filter(|k| !keys.contains(*k) && !under_a_map(k)).collect();
    assert!(unknown.is_empty(), "streamcap.example.toml mentions keys that do not exist: {unknown:?}");
}

/// `table.key` for every key and table the text sets or shows in a comment
/// (`key = …`, `# key = …`, `[table]`, `# [[table]]`).
fn keys_named_in(text: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let mut table = String::new();
    for line in text.lines() {
        let line = line.strip_prefix('#').map_or(line, |l| l.strip_prefix(' ').unwrap_or(l));
        if let Some(header) = line.strip_prefix('[') {
            table = header.trim_start_matches('[').split(']').next().unwrap_or_default().to_owned();
            named.insert(table.clone());
        } else if let Some((key, _)) = line.split_once(" = ")
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            named.insert(if table.is_empty() { key.to_owned() } else { format!("{table}.{key}") });
        }
    }
    named
}

/// Every key the file accepts, as `table.key`, and which of them hold maps
/// of the operator's names. Taken from `Settings`' own `Deserialize`, so
/// there is no list to keep: a probe walks down one path of tables and
/// reports what it finds at the end.
fn file_keys() -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut keys, mut maps) = (BTreeSet::new(), BTreeSet::new());
    let mut todo = vec![Vec::<&'static str>::new()];
    while let Some(path) = todo.pop() {
        let found = Cell::new(None);
        let _ = Settings::deserialize(Probe { path: &path, found: &found });
        match found.get() {
            Some(Found::Table(fields)) => {
                for &field in fields {
                    let field_path = [path.as_slice(), &[field]].concat();
                    keys.insert(field_path.join("."));
                    todo.push(field_path);
                }
            }
            Some(Found::Map) => {
                maps.insert(path.join("."));
            }
            None => {}
        }
    }
    (keys, maps)
}

#[derive(Clone, Copy)]
enum Found {
    Table(&'static [&'static str]),
    Map,
}

struct Probe<'a> {
    path: &'a [&'static str],
    found: &'a Cell<Option<Found>>,
}

type ProbeError = serde::de::value::Error;

impl<'de> serde::Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        if name.starts_with("$__serde_spanned") {
            // A value the file reader keeps with its place in the file.
            return Err(ProbeError::custom("a value"));
        }
        match self.path.split_first() {
            None => {
                self.found.set(Some(Found::Table(fields)));
                Err(ProbeError::custom("found"))
            }
            Some((key, rest)) => visitor.visit_map(Entry(Some(key), Some(Probe { path: rest, found: self.found }))),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeError> {
        if self.path.is_empty() {
            self.found.set(Some(Found::Map));
        }
        Err(ProbeError::custom("found"))
    }

    /// An array of tables: probe its element.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_seq(Element(Some(self)))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_some(self)
    }

    /// Anything else is a value, not a table.
    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeError> {
        Err(ProbeError::custom("a value"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct newtype_struct tuple tuple_struct enum identifier ignored_any
    }
}

/// A table with one key, whose value is probed further.
struct Entry<'a>(Option<&'static str>, Option<Probe<'a>>);

impl<'de> MapAccess<'de> for Entry<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, ProbeError> {
        self.0.take().map(|key| seed.deserialize(key.into_deserializer())).transpose()
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, ProbeError> {
        seed.deserialize(self.1.take().expect("a value follows its key"))
    }
}

/// An array with one element, which is probed.
struct Element<'a>(Option<Probe<'a>>);

impl<'de> SeqAccess<'de> for Element<'_> {
    type Error = ProbeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, ProbeError> {
        self.0.take().map(|probe| seed.deserialize(probe)).transpose()
    }
}

#[test]
fn a_known_store_left_out_of_the_build_is_named_as_such() {
    assert!(super::check_built_in(StoreKind::Redis, &["memory", "sqlite", "redis"]).is_ok());
    let e = super::check_built_in(StoreKind::Redis, &["memory", "sqlite"]).unwrap_err().0;
    assert_eq!(e, "--store redis is not built into this binary (available: memory, sqlite)");
}

fn create_table(args: &[&str]) -> Result<(String, Option<String>), ConfigError> {
    let args = ["streamcap", "dynamodb", "create-table"].into_iter().chain(args.iter().copied());
    match from_args(args)? {
        Invocation::CreateDynamodbTable { table, endpoint } => Ok((table, endpoint)),
        _ => panic!("not create-table"),
    }
}

/// `streamcap dynamodb create-table` reads the table's settings as serve
/// does: flag over file over default.
#[test]
fn create_table_takes_the_table_settings_of_serve() {
    if !cfg!(feature = "dynamodb") {
        let err = create_table(&[]).unwrap_err().0;
        assert!(err.contains("not built into this binary"), "{err}");
        return;
    }
    assert_eq!(create_table(&[]).unwrap(), ("streamcap".into(), None));
    let f =
        file("store = \"dynamodb\"\ndynamodb_table = \"from-file\"\ndynamodb_endpoint = \"http://127.0.0.1:8000\"\n");
    let p = f.path().to_str().unwrap();
    assert_eq!(create_table(&["--config", p]).unwrap(), ("from-file".into(), Some("http://127.0.0.1:8000".into())));
    let flagged = create_table(&["--config", p, "--dynamodb-table", "from-flag"]).unwrap();
    assert_eq!(flagged, ("from-flag".into(), Some("http://127.0.0.1:8000".into())));
    let err = create_table(&["--dynamodb-table", "a b"]).unwrap_err().0;
    assert!(err.contains("--dynamodb-table"), "{err}");
    let err = create_table(&["--dynamodb-endpoint", "localhost:8000"]).unwrap_err().0;
    assert!(err.contains("--dynamodb-endpoint"), "{err}");
    // Only the table's settings are flags of this command.
    let err = create_table(&["--default-limit", "3"]).unwrap_err().0;
    assert!(err.contains("--default-limit"), "{err}");
    let err = from_args(["streamcap", "dynamodb"]).err().map(|e| e.0).unwrap_or_default();
    assert!(err.contains("create-table") || err.contains("subcommand"), "{err}");
}

/// The demo page is off unless asked for, and comes under the same rule as
/// the API: no authentication on a non-loopback address is refused.
#[test]
fn the_demo_is_off_by_default_and_refused_without_auth_off_loopback() {
    assert!(!parse(&["serve"]).unwrap().demo);
    assert!(parse(&["serve", "--demo"]).unwrap().demo);
    assert!(!parse(&["serve", "--demo", "false"]).unwrap().demo);
    let f = file("demo = true\n");
    let p = f.path().to_str().unwrap();
    assert!(parse(&["serve", "--config", p]).unwrap().demo);
    assert!(!parse(&["serve", "--config", p, "--demo", "false"]).unwrap().demo);

    let e = parse(&["serve", "--demo", "--listen", "0.0.0.0:8080"]).unwrap_err().0;
    assert!(e.contains("refusing to serve without authentication on non-loopback address 0.0.0.0:8080"), "{e}");
    let c = parse(&["serve", "--demo", "--listen", "0.0.0.0:8080", "--insecure-no-auth"]).unwrap();
    assert!(c.demo && c.insecure_no_auth);
}

/// The support console is off unless asked for, by flag, variable or file
/// key, and a flag overrides the file.
#[test]
fn the_console_is_off_by_default() {
    assert!(!parse(&["serve"]).unwrap().console);
    assert!(parse(&["serve", "--console"]).unwrap().console);
    assert!(!parse(&["serve", "--console", "false"]).unwrap().console);
    let f = file("console = true\n");
    let p = f.path().to_str().unwrap();
    assert!(parse(&["serve", "--config", p]).unwrap().console);
    assert!(!parse(&["serve", "--config", p, "--console", "false"]).unwrap().console);
    assert!(parse(&["serve", "--console", "maybe"]).unwrap_err().0.contains("--console"));
}

/// A self-signed CA certificate, good for a century.
const CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBhDCCASugAwIBAgIUE/8eWoltOXrr1Q00UupEG0HAQjYwCgYIKoZIzj0EAwIw\n\
FzEVMBMGA1UEAwwMdW5pdC10ZXN0LWNhMCAXDTI2MTEzMDA1MjEwNFoYDzIxMjYx\n\
MTA2MDUyMTA0WjAXMRUwEwYDVQQDDAx1bml0LXRlc3QtY2EwWTATBgcqhkjOPQIB\n\
BggqhkjOPQMBBwNCAASFCnsv5TSgUGyT2e1LZhkZrDjrG19Yndp/x8rEbFOAOetC\n\
DmzFL+b8GdoOmSa4y6RynALsil6j3EHemqM1bfZOo1MwUTAdBgNVHQ4EFgQUYD01\n\
Gzgyw0lctYFbgVTAHvnUcQMwHwYDVR0jBBgwFoAUYD01Gzgyw0lctYFbgVTAHvnU\n\
cQMwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiBHgAuOmvrcc7A+\n\
z0t9SXq2yOT8FPK6s5xVDwMxMLjPqAIgWwPzDzpLBfz4vPZnWUPFZjgEYA+Lxflb\n\
ym4E0PJHlCo=\n\
-----END CERTIFICATE-----\n\
";

#[test]
fn redis_tls_settings_come_with_rediss_urls_only() {
    let redis = |extra: &[&str]| {
        let mut args = vec!["serve", "--store", "redis"];
        args.extend(extra);
        parse(&args)
    };
    // rediss:// alone trusts the system's roots.
    let c = redis(&["--redis-url", "rediss://:pw@h:1"]).unwrap();
    assert_eq!(c.store.redis_tls, RedisTls::default());

    let ca = file(&format!("# the test CA\n{CA_PEM}"));
    let ca_path = ca.path().to_str().unwrap();
    let c = redis(&["--redis-url", "rediss://h:1", "--redis-ca-file", ca_path]).unwrap();
    let (path, certs) = c.store.redis_tls.ca.clone().unwrap();
    assert_eq!((path.as_path(), certs.len(), c.store.redis_tls.insecure), (ca.path(), 1, false));
    // The same from the file, and the insecure switch.
    let f = file(&format!("store = \"redis\"\nredis_url = \"rediss://h:1\"\nredis_ca_file = {ca_path:?}\n"));
    let c = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap();
    assert_eq!(c.store.redis_tls.ca.map(|(p, _)| p), Some(ca.path().to_path_buf()));
    let f = file("store = \"redis\"\nredis_url = \"rediss://h:1\"\nredis_tls_insecure = true\n");
    let c = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap();
    assert_eq!(c.store.redis_tls, RedisTls { ca: None, insecure: true });
    // Other stores ignore the Redis settings, as ever.
    let c = parse(&["serve", "--store", "memory", "--redis-ca-file", "/nowhere", "--redis-tls-insecure"]).unwrap();
    assert_eq!(c.store.redis_tls, RedisTls::default());

    let not_pem = file("not a certificate\n");
    let key_only = file("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    let broken = file("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n");
    let (not_pem, key_only, broken) =
        (not_pem.path().to_str().unwrap(), key_only.path().to_str().unwrap(), broken.path().to_str().unwrap());
    for (args, needle) in [
        (vec!["--redis-url", "rediss://h:1", "--redis-ca-file", not_pem], not_pem),
        (vec!["--redis-url", "rediss://h:1", "--redis-ca-file", key_only], key_only),
        (vec!["--redis-url", "rediss://h:1", "--redis-ca-file", broken], broken),
        (vec!["--redis-url", "rediss://h:1", "--redis-ca-file", "/nowhere/ca.pem"], "/nowhere/ca.pem"),
        (vec!["--redis-url", "redis://:pw@h:1", "--redis-ca-file", ca_path], "not a rediss:// URL"),
        (vec!["--redis-url", "redis://:pw@h:1", "--redis-tls-insecure"], "not a rediss:// URL"),
        (vec!["--redis-url", "rediss://h:1", "--redis-tls-insecure", "--redis-ca-file", ca_path], "contradict"),
    ] {
        let e = redis(&args).expect_err(&format!("{args:?} must fail")).0;
        assert!(e.contains(needle), "{args:?}: {e}");
        assert!(!e.contains('\n') && !e.contains("pw@"), "{args:?}: {e:?}");
    }
}

#[test]
fn trusted_proxies_come_as_a_list_from_flags_or_the_file_and_are_checked_as_cidrs() {
    let shown = |c: Config| c.protection.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>();
    let c = parse(&["serve"]).unwrap();
    assert_eq!((c.protection.auth_failure_rate, c.protection.auth_failure_burst), (10, 20));
    assert!(c.protection.trusted_proxies.is_empty(), "no proxy is trusted by default");
    let c = parse(&["serve", "--trusted-proxies", "10.0.0.0/8, 192.168.1.7", "--trusted-proxies", "fd00::/8"]);
    assert_eq!(shown(c.unwrap()), ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]);
    let f = file("[protection]\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\"]\nauth_failure_rate_limit = 0\n");
    let c = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap();
    assert_eq!(c.protection.auth_failure_rate, 0);
    assert_eq!(shown(c), ["10.0.0.0/8", "2001:db8::/32"]);
    let f = file("[protection]\ntrusted_proxies = \"10.0.0.0/8,127.0.0.1\"\n");
    let c = parse(&["serve", "--config", f.path().to_str().unwrap(), "--auth-failure-rate-burst", "5"]).unwrap();
    assert_eq!(c.protection.auth_failure_burst, 5);
    assert_eq!(shown(c), ["10.0.0.0/8", "127.0.0.1/32"], "the file may spell the list as the env var does");

    for (bad, needle) in [
        ("10.0.0.1/8", "\"10.0.0.1/8\" has bits set past its prefix: write 10.0.0.0/8"),
        ("10.0.0.0/33", "\"10.0.0.0/33\" is not a CIDR"),
        ("proxy.internal", "\"proxy.internal\" is not a CIDR"),
        ("", "\"\" is not a CIDR"),
    ] {
        let e = parse(&["serve", "--trusted-proxies", bad]).unwrap_err().to_string();
        assert!(e.contains("--trusted-proxies") && e.contains(needle), "{bad}: {e}");
        let f = file(&format!("[protection]\ntrusted_proxies = [\"{bad}\"]\n"));
        let e = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap_err().to_string();
        assert!(e.contains("protection.trusted_proxies") && e.contains("(line 2)") && e.contains(needle), "{e}");
    }
    let f = file("[protection]\ntrusted_proxies = 10\n");
    let e = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap_err().to_string();
    assert!(e.contains("an array of strings, or one comma-separated string"), "{e}");
}

#[test]
fn cors_allowed_origins_come_as_a_list_and_are_checked_as_browsers_spell_origins() {
    let c = parse(&["serve"]).unwrap();
    assert!(c.protection.cors_allowed_origins.is_empty(), "no origin is allowed by default");
    let c = parse(&["serve", "--cors-allowed-origins", "https://Player.example.com, http://localhost:3000"]);
    let c = parse(&["serve", "--cors-allowed-origins", "http://[::1]:8080"]).map(|d| (c, d));
    let (c, d) = c.unwrap();
    assert_eq!(c.unwrap().protection.cors_allowed_origins, ["https://player.example.com", "http://localhost:3000"]);
    assert_eq!(d.protection.cors_allowed_origins, ["http://[::1]:8080"]);
    let f = file("[protection]\ncors_allowed_origins = [\"https://a.example\", \"http://127.0.0.1:5173\"]\n");
    let c = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap();
    assert_eq!(c.protection.cors_allowed_origins, ["https://a.example", "http://127.0.0.1:5173"]);

    for (bad, needle) in [
        ("https://a.example/", "no path"),
        ("https://*.example.com", "wildcard"),
        ("*", "is not an origin"),
        ("a.example", "is not an origin"),
        ("ftp://a.example", "http or https"),
        ("https://a.example:443", "write https://a.example"),
        ("http://a.example:80", "write http://a.example"),
        ("http://a.example:99999", "is not a port"),
        ("http://a_b.example", "is not a host"),
        ("http://[::1", "is not a host"),
    ] {
        let e = parse(&["serve", "--cors-allowed-origins", bad]).unwrap_err().to_string();
        assert!(e.contains("--cors-allowed-origins") && e.contains(needle), "{bad}: {e}");
        let f = file(&format!("[protection]\ncors_allowed_origins = [\"{bad}\"]\n"));
        let e = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap_err().to_string();
        assert!(e.contains("protection.cors_allowed_origins") && e.contains(needle), "{bad}: {e}");
    }
}

#[test]
fn the_socket_lease_ttl_defaults_to_the_lease_ttl_and_is_set_like_any_setting() {
    assert_eq!(parse(&["serve", "--lease-ttl", "45"]).unwrap().socket_lease_ttl.as_secs(), 45);
    let c = parse(&["serve", "--lease-ttl", "45", "--socket-lease-ttl", "900"]).unwrap();
    assert_eq!((c.policy.lease_ttl.as_secs(), c.socket_lease_ttl.as_secs()), (45, 900));
    let f = file("socket_lease_ttl = 600\n");
    let c = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap();
    assert_eq!((c.policy.lease_ttl.as_secs(), c.socket_lease_ttl.as_secs()), (60, 600));
    let e = parse(&["serve", "--socket-lease-ttl", "0"]).err().unwrap().to_string();
    assert!(e.contains("--socket-lease-ttl"), "{e}");
    let f = file("socket_lease_ttl = 0\n");
    let e = parse(&["serve", "--config", f.path().to_str().unwrap()]).err().unwrap().to_string();
    assert!(e.contains("socket_lease_ttl"), "{e}");
}
