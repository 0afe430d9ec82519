//! The monitoring files, deploy/grafana/streamcap.json (a Grafana
//! dashboard) and deploy/prometheus/alerts.yaml (Prometheus alerting
//! rules), checked four ways.
//!
//! - `promtool`, from Debian's `prometheus` package, accepts the rules
//!   (`promtool check rules`) and passes their unit tests in
//!   deploy/prometheus/alerts.test.yaml (`promtool test rules`).
//! - Every series that a dashboard query, a dashboard variable or a rule
//!   selects is in a real `/metrics` scrape. The real binary runs six
//!   times: on SQLite, in memory with JWT authentication, in memory in
//!   shadow mode, and three instances on one real Redis. Their traffic
//!   makes every metric appear: grants, renewals, denials, releases,
//!   expiry, take-overs, a revoke-all, a 410, a 401, 429s from the user and
//!   the auth-failure buckets, a shed 503, sockets closed with 1000, 1006
//!   and 4410, notices sent, received and dropped (an instance is killed),
//!   store conflicts (two instances race for one user), and store errors,
//!   a degraded grant, a failing `/readyz` and an API 503 once Redis is
//!   killed. A selector passes when a scraped sample has its metric name
//!   and satisfies its label matchers (`=`, `!=`, `=~`, `!~`, regexes
//!   anchored as Prometheus anchors them), leaving out `job` and
//!   `instance`, which Prometheus adds when it scrapes. The labels a query
//!   groups by exist on the metrics it reads, and a panel's legend names
//!   only those. The one series not from streamcap is Prometheus' own
//!   `up`. [`EXCEPTIONS`] lists the selectors no cheap traffic can
//!   satisfy, each with its reason; for those, the metric and each label
//!   they match on must still be in the scrape.
//! - Every metric that src/metrics.rs registers is on a panel.
//! - The dashboard is well-formed for the `schemaVersion` it declares. No
//!   official JSON schema of Grafana's dashboard model is available
//!   offline, so [`check_dashboard`] checks, by hand, what Grafana's
//!   dashboard kind requires and what its schema migrations up to that
//!   version leave behind (Grafana runs only the migrations above the
//!   version a dashboard declares, so the dashboard must already have the
//!   shape the others produce): the top-level fields and their types; a `uid` Grafana
//!   accepts; variables of known types with unique names, every `$name`
//!   used being a variable or a Grafana built-in; panels of core (not
//!   Angular) plugin types with unique ids and titles, a grid position
//!   inside the 24 columns, no two overlapping, rows laid out as an
//!   expanded row expects; every data source a `{type, uid}` reference,
//!   never a name or null (schema 36); targets with unique `refId`s and a
//!   query; a unit, a description and well-formed thresholds on every
//!   panel; legends as objects without the `hidden` mode (schema 37); no
//!   table `displayMode` (38) and no `timeSeriesTable` `refIdToStat` (39).
//!   Fields Grafana fills in with defaults when absent are not required.
//! - docs/operations.md describes every panel and every alert, once each.
//!
//! The rules are YAML, read with PyYAML from the virtualenv that
//! ./scripts/test makes (it comes with kubernetes-validate). ./scripts/test
//! installs promtool and PyYAML; when either is missing, the tests fail and
//! say how to install it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Process;
use common::redis::RedisServer;
use common::ws::{close_code, expect, held_at, socket, stop};
use serde_json::{Value, json};

const DASHBOARD: &str = "deploy/grafana/streamcap.json";
const RULES: &str = "deploy/prometheus/alerts.yaml";
const RULE_TESTS: &str = "deploy/prometheus/alerts.test.yaml";

/// The schema version the dashboard declares, and that this test checks.
const SCHEMA_VERSION: u64 = 39;

/// Selectors that no cheap traffic satisfies, with the reason.
const EXCEPTIONS: &[(&str, &str)] = &[(
    r#"streamcap_http_request_duration_seconds_count{status="500"}"#,
    "only a bug answers 500 (a panicking handler); no request makes the binary panic on purpose",
)];

/// Series that Prometheus itself makes for every target.
const PROMETHEUS_SERIES: &[&str] = &["up"];

/// Labels that Prometheus attaches when it scrapes, absent from /metrics.
const TARGET_LABELS: &[&str] = &["job", "instance"];

const INSTALL_PROMTOOL: &str =
    "install Debian's prometheus package, which brings promtool (./scripts/test does: apt-get install prometheus)";
const INSTALL_PYYAML: &str = "run ./scripts/test once (it installs what the tests need), or install it by hand:\n    \
     python3 -m venv target/tools/venv && target/tools/venv/bin/pip install kubernetes-validate==1.37.0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// The rule file as JSON, read by PyYAML.
fn rules() -> Value {
    let python = root().join("target/tools/venv/bin/python3");
    assert!(python.exists(), "{} is missing; {INSTALL_PYYAML}", python.display());
    let out = Command::new(&python)
        .args(["-c", "import json, sys, yaml\njson.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"])
        .arg(root().join(RULES))
        .output()
        .expect("run the virtualenv's python3");
    assert!(
        out.status.success(),
        "cannot read {RULES} as YAML (PyYAML: {INSTALL_PYYAML}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

/// Every alerting rule of the file.
fn alerts(rules: &Value) -> Vec<&Value> {
    let groups = rules["groups"].as_array().expect("groups");
    groups.iter().flat_map(|g| g["rules"].as_array().expect("rules").iter()).collect()
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}); {INSTALL_PROMTOOL}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let (ok, out) = promtool(&["check", "rules", RULES]);
    assert!(ok, "promtool check rules {RULES}:\n{out}");
    let count = alerts(&rules()).len();
    assert!(out.contains(&format!("SUCCESS: {count} rules found")), "{out}");
    let (ok, out) = promtool(&["test", "rules", RULE_TESTS]);
    assert!(ok, "promtool test rules {RULE_TESTS}:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_a_duration_a_severity_and_says_what_to_do() {
    let rules = rules();
    let alerts = alerts(&rules);
    assert!(alerts.len() >= 5, "too few alerts: {alerts:?}");
    let mut names = BTreeSet::new();
    for rule in alerts {
        let name = rule["alert"].as_str().unwrap_or_else(|| panic!("a rule without a name: {rule}"));
        assert!(names.insert(name), "{name} twice");
        assert!(name.starts_with("Streamcap"), "{name}: alert names start with Streamcap");
        assert!(rule["for"].is_string(), "{name}: no `for:`");
        let severity = rule["labels"]["severity"].as_str();
        assert!(matches!(severity, Some("critical" | "warning")), "{name}: severity {severity:?}");
        for key in ["summary", "description"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(text.len() > 20, "{name}: the {key} annotation is missing or too short: {text:?}");
        }
    }
}

/// One sample line of the text exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
}

/// The samples of a scrape.
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = line[..end].to_owned();
            let mut labels = BTreeMap::new();
            if line[end..].starts_with('{') {
                let mut chars = line[end + 1..].chars().peekable();
                loop {
                    let label: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    let label = label.trim_start_matches([',', ' ']).to_owned();
                    if label.starts_with('}') || label.is_empty() {
                        break;
                    }
                    assert_eq!(chars.next(), Some('"'), "a label value is quoted: {line}");
                    labels.insert(label, quoted(&mut chars));
                    if chars.peek() == Some(&'}') {
                        break;
                    }
                }
            }
            Sample { name, labels }
        })
        .collect()
}

/// The rest of a double-quoted string whose opening quote was read, with
/// its backslash escapes undone.
fn quoted(chars: &mut impl Iterator<Item = char>) -> String {
    let mut value = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => return value,
            '\\' => match chars.next() {
                Some('n') => value.push('\n'),
                Some(other) => value.push(other),
                None => break,
            },
            c => value.push(c),
        }
    }
    panic!("an unterminated string: {value}")
}

/// A vector selector of a PromQL expression: a metric name and its label
/// matchers.
#[derive(Debug, Clone)]
struct Selector {
    name: String,
    matchers: Vec<Matcher>,
}

#[derive(Debug, Clone)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let matchers: Vec<String> = self.matchers.iter().map(|m| format!("{}{}{:?}", m.label, m.op, m.value)).collect();
        write!(f, "{}{{{}}}", self.name, matchers.join(", "))
    }
}

/// What a PromQL expression reads and groups by.
#[derive(Debug, Default)]
struct Query {
    selectors: Vec<Selector>,
    /// The labels of every `by (...)` clause.
    grouping: BTreeSet<String>,
}

/// Reads `expr` as far as this test needs: the selectors (a name
/// starting with `streamcap_`, or any name followed by matchers) and the
/// labels of `by` clauses. String literals are skipped, so that a regex
/// never reads as a name.
fn query(expr: &str) -> Query {
    let mut q = Query::default();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let skip_space = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            let close = chars[i + 1..].iter().position(|d| *d == c).expect("a closed string literal");
            i += close + 2;
        } else if c == '$' {
            // A Grafana variable such as $__rate_interval: not a name.
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            skip_space(&mut j);
            if word == "by" && chars.get(j) == Some(&'(') {
                let close = chars[j..].iter().position(|d| *d == ')').expect("a closed by clause");
                let labels: String = chars[j + 1..j + close].iter().collect();
                q.grouping.extend(labels.split(',').map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()));
                i = j + close + 1;
            } else if chars.get(j) == Some(&'{') {
                let (matchers, end) = matchers(&chars, j + 1);
                q.selectors.push(Selector { name: word, matchers });
                i = end;
            } else if word.starts_with("streamcap_") {
                q.selectors.push(Selector { name: word, matchers: Vec::new() });
            }
        } else {
            i += 1;
        }
    }
    q
}

/// The matchers of a selector from `at` (just past its `{`), and the index
/// past its `}`.
fn matchers(chars: &[char], mut at: usize) -> (Vec<Matcher>, usize) {
    let mut found = Vec::new();
    loop {
        while chars[at].is_whitespace() || chars[at] == ',' {
            at += 1;
        }
        if chars[at] == '}' {
            return (found, at + 1);
        }
        let start = at;
        while chars[at].is_ascii_alphanumeric() || chars[at] == '_' {
            at += 1;
        }
        let label: String = chars[start..at].iter().collect();
        while chars[at].is_whitespace() {
            at += 1;
        }
        let op_start = at;
        while matches!(chars[at], '=' | '!' | '~') {
            at += 1;
        }
        let op: String = chars[op_start..at].iter().collect();
        while chars[at].is_whitespace() {
            at += 1;
        }
        assert_eq!(chars[at], '"', "a matcher's value is double-quoted: {}", chars.iter().collect::<String>());
        let mut rest = chars[at + 1..].iter().copied();
        let value = quoted(&mut rest);
        at = chars.len() - rest.count();
        assert!(matches!(op.as_str(), "=" | "!=" | "=~" | "!~"), "unknown matcher {label}{op}{value:?}");
        found.push(Matcher { label, op, value });
    }
}

/// Whether `value` satisfies `m`; regexes are anchored, as in Prometheus.
fn satisfies(m: &Matcher, value: Option<&str>) -> bool {
    let value = value.unwrap_or("");
    let regex = || {
        regex_lite::Regex::new(&format!("^(?:{})$", m.value))
            .unwrap_or_else(|e| panic!("{}=~{:?} is not a regex: {e}", m.label, m.value))
    };
    match m.op.as_str() {
        "=" => value == m.value,
        "!=" => value != m.value,
        "=~" => regex().is_match(value),
        "!~" => !regex().is_match(value),
        op => panic!("unknown matcher {op}"),
    }
}

/// Whether a scraped sample is one that `sel` selects, leaving out the
/// labels Prometheus adds.
fn selects(sel: &Selector, sample: &Sample) -> bool {
    sample.name == sel.name
        && sel
            .matchers
            .iter()
            .filter(|m| !TARGET_LABELS.contains(&m.label.as_str()))
            .all(|m| satisfies(m, sample.labels.get(&m.label).map(String::as_str)))
}

/// An expression of the dashboard or the rules, with where it comes from.
struct Expression {
    from: String,
    expr: String,
    /// The labels the panel's legend names (`{{route}}`).
    legend: BTreeSet<String>,
}

/// Every query of the dashboard (panel targets and variables) and every
/// rule expression.
fn expressions(dashboard: &Value, rules: &Value) -> Vec<Expression> {
    let mut all = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let legend = target["legendFormat"].as_str().unwrap_or_default();
            all.push(Expression {
                from: format!("panel {:?}", panel["title"]),
                expr: target["expr"].as_str().unwrap_or_default().to_owned(),
                legend: legend
                    .split("{{")
                    .skip(1)
                    .filter_map(|s| Some(s.split_once("}}")?.0.trim().to_owned()))
                    .collect(),
            });
        }
    }
    for variable in dashboard["templating"]["list"].as_array().expect("templating.list") {
        if variable["type"] == "query" {
            let query = variable["query"].as_str().or(variable["query"]["query"].as_str()).unwrap_or_default();
            let from = format!("variable {}", variable["name"]);
            all.push(Expression { from, expr: query.to_owned(), legend: BTreeSet::new() });
        }
    }
    for rule in alerts(rules) {
        let from = format!("alert {}", rule["alert"]);
        all.push(Expression { from, expr: rule["expr"].as_str().expect("expr").to_owned(), legend: BTreeSet::new() });
    }
    all
}

/// Every panel, those of collapsed rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

#[test]
fn the_query_reader_finds_selectors_matchers_and_groupings() {
    let q = query(
        r#"histogram_quantile(0.99, sum by (route, le) (rate(streamcap_x_bucket{job=~"$job", route=~"/v1/(users/\\{user_id\\}|me)", status!="200"}[$__rate_interval])))
           / on (job) sum(rate(streamcap_y_total[5m])) and up{job="streamcap"} == 0 or vector(0)"#,
    );
    let shown: Vec<String> = q.selectors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            r#"streamcap_x_bucket{job=~"$job", route=~"/v1/(users/\\{user_id\\}|me)", status!="200"}"#,
            "streamcap_y_total{}",
            r#"up{job="streamcap"}"#
        ]
    );
    assert_eq!(q.grouping, BTreeSet::from(["route".to_owned(), "le".to_owned()]));
    let route = &q.selectors[0].matchers[1];
    assert!(satisfies(route, Some("/v1/users/{user_id}")) && satisfies(route, Some("/v1/me")));
    assert!(!satisfies(route, Some("/v1/users/{user_id}/streams")), "regexes are anchored");
    let scrape = samples("# TYPE a counter\na_total{route=\"/v1/{x}\",le=\"+Inf\"} 3\nb 1\n");
    assert_eq!(scrape.len(), 2);
    assert_eq!(scrape[0].labels["route"], "/v1/{x}");
    assert_eq!(scrape[0].labels["le"], "+Inf");
    assert_eq!(scrape[1].name, "b");
}

/// The samples of `/metrics` at `base`.
async fn scrape(base: &str) -> String {
    reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap()
}

/// A sample's value in a scrape, 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

/// Scrapes `base` until `done` holds, for up to 20 s.
async fn scrape_until(base: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(base).await;
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}: not within 20 s. /metrics of {base}:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ws(p: &Process, path: &str) -> String {
    format!("{}{path}", p.base.replacen("http://", "ws://", 1))
}

async fn put(p: &Process, path: &str, body: Value) -> u16 {
    let r = reqwest::Client::new().put(p.url(path)).json(&body).send().await.unwrap();
    r.status().as_u16()
}

async fn get(p: &Process, path: &str, token: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new().get(p.url(path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap().status().as_u16()
}

/// One instance on SQLite with 2 s leases, a limit of 1 and room for one
/// request in flight: decisions of every local kind, expiry and the
/// live-lease count, sockets closed with 1000 and 1006, a user's 429 and
/// a shed 503 on an API route.
async fn sqlite_traffic(data: &Path) -> String {
    let data = data.to_str().unwrap();
    let p = Process::start(&[
        "--store",
        "sqlite",
        "--data-dir",
        data,
        "--lease-ttl",
        "2",
        "--default-limit",
        "1",
        "--max-concurrent-requests",
        "1",
    ]);
    let stream = |user: &str, s: &str| format!("/v1/users/{user}/streams/{s}");
    assert_eq!(put(&p, &stream("ann", "tv"), json!({})).await, 201);
    assert_eq!(put(&p, &stream("ann", "tv"), json!({})).await, 200);
    assert_eq!(put(&p, &stream("ann", "phone"), json!({})).await, 409);
    let released = reqwest::Client::new().delete(p.url(&stream("ann", "tv"))).send().await.unwrap();
    assert_eq!(released.status(), 204);
    // Left to expire: the sweeper removes it and counts the live leases.
    assert_eq!(put(&p, &stream("bob", "tv"), json!({})).await, 201);

    let (player, _) = held_at(&ws(&p, &socket("cat", "tv"))).await;
    stop(player).await;
    // A connection that ends without a close frame: 1006.
    let (dropped, _) = held_at(&ws(&p, &socket("dan", "tv"))).await;
    drop(dropped);

    // One user's bucket (40 requests, 20 a second) runs dry.
    let mut refused = false;
    for _ in 0..500 {
        if get(&p, "/v1/users/greedy/streams", None).await == 429 {
            refused = true;
            break;
        }
    }
    assert!(refused, "no 429 from the user bucket after 500 requests");

    // The only slot is held by a PUT whose body is still owed; it asks for
    // a 100 Continue, which comes once the handler reads the body, so past
    // the edge. Meanwhile another API request is shed.
    let addr = p.base.trim_start_matches("http://").to_owned();
    let mut held = TcpStream::connect(&addr).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    held.write_all(
        b"PUT /v1/users/eve/streams/tv HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
          content-length: 2\r\nexpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    assert!(read_head(&mut held).starts_with("HTTP/1.1 100 Continue\r\n"));
    assert_eq!(get(&p, "/v1/users/fred/streams", None).await, 503);
    held.write_all(b"{}").unwrap();
    assert!(read_head(&mut held).starts_with("HTTP/1.1 201"));
    drop(held);

    scrape_until(&p.base, "expiry, the live-lease count and a 1006 close", |text| {
        value(text, "streamcap_decisions_total{outcome=\"expired\"}") >= 1.0
            && text.contains("streamcap_live_leases ")
            && text.contains("streamcap_websocket_closes_total{code=\"1006\"}")
    })
    .await
}

/// Reads one response head, up to its blank line.
fn read_head(c: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = c.read(&mut byte).expect("an answer before the read timeout");
        assert!(n > 0, "the connection closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// One instance in shadow mode: a grant that enforcement would refuse,
/// and a take-over that it would make.
async fn shadow_traffic() -> String {
    let p = Process::start(&["--store", "memory", "--enforce", "false", "--default-limit", "1"]);
    let stream = |s: &str| format!("/v1/users/gil/streams/{s}");
    assert_eq!(put(&p, &stream("a"), json!({})).await, 201);
    assert_eq!(put(&p, &stream("b"), json!({})).await, 201);
    assert_eq!(put(&p, &stream("c"), json!({"evict": ["a", "b"]})).await, 201);
    scrape(&p.base).await
}

/// One instance with JWT authentication, and a source that keeps sending
/// a bad token: 401s, then 429s from its auth-failure bucket.
async fn auth_traffic(dir: &Path) -> String {
    let secret = dir.join("jwt.secret");
    std::fs::write(&secret, "a-monitoring-test-secret-of-32-bytes-or-more").unwrap();
    let p = Process::start(&[
        "--store",
        "memory",
        "--auth-mode",
        "jwt",
        "--jwt-secret-file",
        secret.to_str().unwrap(),
        "--auth-failure-rate-limit",
        "1",
        "--auth-failure-rate-burst",
        "2",
    ]);
    assert_eq!(get(&p, "/v1/users/hal/streams", Some("not-a-token")).await, 401);
    let mut refused = false;
    for _ in 0..100 {
        if get(&p, "/v1/users/hal/streams", Some("not-a-token")).await == 429 {
            refused = true;
            break;
        }
    }
    assert!(refused, "no 429 from the auth-failure bucket");
    scrape(&p.base).await
}

/// Three instances on one Redis that allow degraded grants: a take-over
/// and a revoke-all on B reach sockets on A, a 410, a notice to a killed
/// instance C, races between A and B for one user until one is counted
/// as a conflict, and then Redis dies under A.
async fn redis_traffic() -> Vec<String> {
    let mut redis = RedisServer::start(&[]);
    let url = redis.url();
    let start = || {
        Process::start(&[
            "--store",
            "redis",
            "--redis-url",
            &url,
            "--default-limit",
            "100",
            "--on-store-error",
            "allow",
            "--user-rate-limit",
            "0",
            "--credential-rate-limit",
            "0",
        ])
    };
    let (a, b, c) = (start(), start(), start());
    let stream = |user: &str, s: &str| format!("/v1/users/{user}/streams/{s}");

    let (mut tv, _) = held_at(&ws(&a, &socket("ida", "tv"))).await;
    assert_eq!(put(&b, &stream("ida", "phone"), json!({"evict": ["tv"]})).await, 201);
    expect(&mut tv, "revoked").await;
    assert_eq!(close_code(&mut tv).await, 4410);
    assert_eq!(put(&b, &stream("ida", "tv"), json!({})).await, 410);
    let (mut tv, _) = held_at(&ws(&a, &socket("jim", "tv"))).await;
    let revoked = reqwest::Client::new().delete(b.url("/v1/users/jim/streams")).send().await.unwrap();
    assert_eq!(revoked.status(), 200);
    expect(&mut tv, "revoked").await;
    assert_eq!(close_code(&mut tv).await, 4410);

    // C dies holding a socket's lease; B's take-over tells nobody.
    let (_kim, _) = held_at(&ws(&c, &socket("kim", "tv"))).await;
    c.kill9();
    assert_eq!(put(&b, &stream("kim", "phone"), json!({"evict": ["tv"]})).await, 201);
    scrape_until(&b.base, "a dropped notice", |text| text.contains("streamcap_pushes_total{event=\"dropped\"}")).await;

    // Each instance decides one user's requests one at a time; two
    // instances writing the same user race, and a lost race is counted.
    let conflicts = |text: &str| value(text, "streamcap_store_conflicts_total");
    let mut round = 0;
    while conflicts(&scrape(&a.base).await) + conflicts(&scrape(&b.base).await) == 0.0 {
        assert!(round < 20, "20 rounds of 32 racing acquires and no conflict counted");
        let mut racing = tokio::task::JoinSet::new();
        for i in 0..32 {
            let url = [&a, &b][i % 2].url(&stream(&format!("race-{round}"), &format!("s{i}")));
            racing.spawn(async move { reqwest::Client::new().put(url).json(&json!({})).send().await });
        }
        while let Some(res) = racing.join_next().await {
            let status = res.unwrap().unwrap().status().as_u16();
            assert!(matches!(status, 201 | 503), "a racing acquire got {status}");
        }
        round += 1;
    }

    // Redis dies: a degraded grant, a 503 on a read, a failing /readyz.
    redis.kill9();
    assert_eq!(put(&a, &stream("lea", "tv"), json!({})).await, 201);
    assert_eq!(get(&a, "/v1/users/lea/streams", None).await, 503);
    assert_eq!(get(&a, "/readyz", None).await, 503);
    let a_text = scrape_until(&a.base, "store errors and a degraded grant", |text| {
        text.contains("streamcap_store_errors_total") && text.contains("streamcap_degraded_grants_total")
    })
    .await;
    vec![a_text, scrape(&b.base).await]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_dashboard_and_the_rules_select_is_in_a_real_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let mut texts = vec![sqlite_traffic(&dir.path().join("data")).await];
    texts.push(shadow_traffic().await);
    texts.push(auth_traffic(dir.path()).await);
    texts.extend(redis_traffic().await);
    let scraped: Vec<Sample> = texts.iter().flat_map(|t| samples(t)).collect();
    let names: BTreeSet<&str> = scraped.iter().map(|s| s.name.as_str()).collect();
    assert!(names.iter().all(|n| n.starts_with("streamcap_")), "{names:?}");

    let (dashboard, rules) = (dashboard(), rules());
    let expressions = expressions(&dashboard, &rules);
    assert!(expressions.len() > 30, "found too few expressions: {}", expressions.len());
    let mut missing = Vec::new();
    let mut excepted_used = BTreeSet::new();
    for e in &expressions {
        let q = query(&e.expr);
        assert!(!q.selectors.is_empty(), "{}: no selector found in {:?}", e.from, e.expr);
        for sel in &q.selectors {
            for m in sel.matchers.iter().filter(|m| m.value.contains('$')) {
                assert!(
                    TARGET_LABELS.contains(&m.label.as_str()),
                    "{}: a variable in the {} matcher of {sel}; only job and instance are left to the variables",
                    e.from,
                    m.label
                );
            }
            if PROMETHEUS_SERIES.contains(&sel.name.as_str()) {
                continue;
            }
            let shown = sel.to_string();
            if let Some((_, why)) = EXCEPTIONS.iter().find(|(s, _)| *s == shown) {
                excepted_used.insert(shown.clone());
                // The metric and the labels it matches on are real; only
                // that value is out of reach.
                for m in &sel.matchers {
                    assert!(
                        scraped.iter().any(|s| s.name == sel.name && s.labels.contains_key(&m.label)),
                        "{}: {shown} (excepted: {why}) names a label the scrape lacks",
                        e.from
                    );
                }
                continue;
            }
            if !scraped.iter().any(|s| selects(sel, s)) {
                missing.push(format!("{}: {shown}", e.from));
            }
        }
        let metrics: BTreeSet<&str> = q.selectors.iter().map(|s| s.name.as_str()).collect();
        for label in q.grouping.iter().filter(|l| !TARGET_LABELS.contains(&l.as_str())) {
            assert!(
                scraped.iter().any(|s| metrics.contains(s.name.as_str()) && s.labels.contains_key(label)),
                "{}: groups by {label}, which none of {metrics:?} has",
                e.from
            );
        }
        let unknown: Vec<&String> = e.legend.difference(&q.grouping).collect();
        assert!(unknown.is_empty(), "{}: the legend names {unknown:?}, which the query does not group by", e.from);
    }
    assert!(missing.is_empty(), "selected series that no scrape has:\n{}", missing.join("\n"));
    let unused: Vec<&str> = EXCEPTIONS.iter().map(|(s, _)| *s).filter(|s| !excepted_used.contains(*s)).collect();
    assert!(unused.is_empty(), "exceptions no expression uses any more: {unused:?}");
}

#[test]
fn every_metric_of_the_code_is_on_a_panel() {
    // Every metric is registered in src/metrics.rs under a literal name.
    let source = read("src/metrics.rs");
    let in_code: BTreeSet<&str> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("streamcap_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    assert!(in_code.len() > 10, "found too few metric names in src/metrics.rs: {in_code:?}");
    let dashboard = dashboard();
    let mut on_panels = BTreeSet::new();
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            for sel in query(target["expr"].as_str().unwrap_or_default()).selectors {
                let name = sel.name;
                let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
                on_panels.insert(base.to_owned());
                on_panels.insert(name);
            }
        }
    }
    let missing: Vec<&&str> = in_code.iter().filter(|m| !on_panels.contains(**m)).collect();
    assert!(missing.is_empty(), "metrics no panel shows: {missing:?}");
}

/// What the dashboard must be for Grafana at `schemaVersion` 39; the
/// module documentation lists it. Returns the problems found.
fn check_dashboard(d: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |p: String| problems.push(p);

    // Top level.
    let uid = d["uid"].as_str().unwrap_or_default();
    if uid.is_empty() || uid.len() > 40 || !uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        problem(format!("uid {uid:?}: 1 to 40 letters, digits, - or _"));
    }
    if d["schemaVersion"].as_u64() != Some(SCHEMA_VERSION) {
        problem(format!("schemaVersion {} is not {SCHEMA_VERSION}", d["schemaVersion"]));
    }
    for key in ["title", "timezone", "refresh"] {
        if !d[key].is_string() || (key == "title" && d[key] == "") {
            problem(format!("{key} should be a string, is {}", d[key]));
        }
    }
    if !d["id"].is_null() {
        problem("id should be null: an id belongs to one Grafana's database".into());
    }
    if !d["editable"].is_boolean() {
        problem("editable should be a boolean".into());
    }
    if !matches!(d["graphTooltip"].as_u64(), Some(0..=2)) {
        problem(format!("graphTooltip {} is not 0, 1 or 2", d["graphTooltip"]));
    }
    if !(d["time"]["from"].is_string() && d["time"]["to"].is_string()) {
        problem(format!("time should be {{from, to}} strings: {}", d["time"]));
    }
    if !d["version"].is_u64() {
        problem("version should be an unsigned integer".into());
    }
    if !d["tags"].as_array().is_some_and(|t| t.iter().all(Value::is_string)) {
        problem("tags should be a list of strings".into());
    }
    if d.get("fiscalYearStartMonth").is_some_and(|m| !matches!(m.as_u64(), Some(0..=11))) {
        problem("fiscalYearStartMonth should be 0 to 11".into());
    }
    for a in d["annotations"]["list"].as_array().unwrap_or(&Vec::new()) {
        if !(a["name"].is_string() && a["enable"].is_boolean() && a["iconColor"].is_string()) {
            problem(format!("an annotation needs name, enable and iconColor: {a}"));
        }
    }

    // Variables.
    let builtins = ["__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms"];
    let mut variables = BTreeSet::new();
    let types = ["query", "adhoc", "constant", "datasource", "interval", "textbox", "custom", "system"];
    for v in d["templating"]["list"].as_array().unwrap_or(&Vec::new()) {
        let name = v["name"].as_str().unwrap_or_default();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            problem(format!("variable name {name:?}"));
        }
        if !variables.insert(name.to_owned()) {
            problem(format!("variable {name} twice"));
        }
        if !types.contains(&v["type"].as_str().unwrap_or_default()) {
            problem(format!("variable {name}: type {}", v["type"]));
        }
        if !matches!(v["hide"].as_u64(), Some(0..=2)) {
            problem(format!("variable {name}: hide {} is not 0, 1 or 2", v["hide"]));
        }
        if v["type"] == "query" && !(v["query"].is_string() || v["query"].is_object()) {
            problem(format!("variable {name}: no query"));
        }
        if v["type"] == "query" && !matches!(v["refresh"].as_u64(), Some(1 | 2)) {
            problem(format!("variable {name}: refresh {} never loads its values", v["refresh"]));
        }
        if v["type"] == "datasource" && !v["query"].is_string() {
            problem(format!("variable {name}: a data source variable names its plugin in query"));
        }
    }
    let text = d.to_string();
    for (at, _) in text.match_indices('$') {
        let rest = text[at + 1..].trim_start_matches('{');
        let used: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        // A `$` that names nothing (a regex's end) is no reference.
        if !used.is_empty() && !variables.contains(&used) && !builtins.contains(&used.as_str()) {
            problem(format!("${used} is neither a variable nor a Grafana built-in"));
        }
    }

    // Data sources: references, never names or null (schema 36).
    fn datasources<'a>(v: &'a Value, found: &mut Vec<&'a Value>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    if k == "datasource" {
                        found.push(child);
                    }
                    datasources(child, found);
                }
            }
            Value::Array(list) => list.iter().for_each(|child| datasources(child, found)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    datasources(d, &mut refs);
    for r in refs {
        if !(r["type"].is_string() && r["uid"].is_string()) {
            problem(format!("a data source should be a {{type, uid}} reference, is {r}"));
        }
    }

    // Panels.
    let core = [
        "row",
        "timeseries",
        "stat",
        "gauge",
        "bargauge",
        "table",
        "text",
        "heatmap",
        "histogram",
        "piechart",
        "barchart",
        "state-timeline",
        "status-history",
        "logs",
    ];
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    let top = d["panels"].as_array().cloned().unwrap_or_default();
    if top.is_empty() {
        problem("no panels".into());
    }
    for (i, p) in top.iter().enumerate() {
        let title = p["title"].as_str().unwrap_or_default().to_owned();
        let kind = p["type"].as_str().unwrap_or_default();
        if title.is_empty() {
            problem(format!("panel {i} has no title"));
        }
        if !titles.insert(title.clone()) {
            problem(format!("two panels are called {title:?}"));
        }
        if !core.contains(&kind) {
            problem(format!("{title}: type {kind:?} is not a core (React) panel"));
        }
        if !p["id"].as_u64().is_some_and(|id| id > 0 && ids.insert(id)) {
            problem(format!("{title}: id {} is missing, zero or repeated", p["id"]));
        }
        let g = &p["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| g[k].as_u64().unwrap_or(u64::MAX));
        if h == 0 || h == u64::MAX || !(1..=24).contains(&w) || x > 23 || x + w > 24 || y == u64::MAX {
            problem(format!("{title}: gridPos {g} is outside the 24-column grid"));
        } else {
            for (other, [oh, ow, ox, oy]) in &boxes {
                if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                    problem(format!("{title} overlaps {other}"));
                }
            }
            boxes.push((title.clone(), [h, w, x, y]));
        }
        if kind == "row" {
            // An expanded row holds no panels: those below it, up to the
            // next row, are its own.
            if !(p["collapsed"] == false && p["panels"].as_array().is_some_and(Vec::is_empty)) {
                problem(format!("row {title}: should be expanded with an empty panels list"));
            }
            if (w, h, x) != (24, 1, 0) {
                problem(format!("row {title}: a row spans the 24 columns, 1 high"));
            }
            continue;
        }
        if !p["datasource"].is_object() {
            problem(format!("{title}: no data source"));
        }
        if p["description"].as_str().is_none_or(|s| s.len() < 20) {
            problem(format!("{title}: no description"));
        }
        let defaults = &p["fieldConfig"]["defaults"];
        if defaults["unit"].as_str().is_none_or(str::is_empty) {
            problem(format!("{title}: no unit"));
        }
        let steps = defaults["thresholds"]["steps"].as_array().cloned().unwrap_or_default();
        let mode = defaults["thresholds"]["mode"].as_str();
        let ascending = steps.iter().skip(1).map(|s| s["value"].as_f64()).collect::<Option<Vec<f64>>>();
        if !matches!(mode, Some("absolute" | "percentage"))
            || steps.first().is_none_or(|s| !s["value"].is_null())
            || ascending.is_none_or(|v| v.windows(2).any(|w| w[0] >= w[1]))
            || steps.iter().any(|s| !s["color"].is_string())
        {
            problem(format!("{title}: thresholds need a mode and colored steps from null (-Infinity) upwards"));
        }
        if defaults["custom"].get("displayMode").is_some() {
            problem(format!("{title}: custom.displayMode is the table option schema 38 replaced"));
        }
        let legend = &p["options"]["legend"];
        let list_or_table = matches!(legend["displayMode"].as_str(), Some("list" | "table"));
        if !legend.is_null() && (!legend["showLegend"].is_boolean() || !list_or_table) {
            problem(format!("{title}: a legend is {{displayMode: list|table, showLegend}} (schema 37): {legend}"));
        }
        for t in p["transformations"].as_array().unwrap_or(&Vec::new()) {
            if t["id"] == "timeSeriesTable" && t["options"].get("refIdToStat").is_some() {
                problem(format!("{title}: refIdToStat is the option schema 39 replaced"));
            }
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problem(format!("{title}: no targets"));
        }
        let mut ref_ids = BTreeSet::new();
        for t in &targets {
            let ref_id = t["refId"].as_str().unwrap_or_default();
            if ref_id.is_empty() || !ref_ids.insert(ref_id.to_owned()) {
                problem(format!("{title}: refId {ref_id:?} is empty or repeated"));
            }
            if t["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                problem(format!("{title}: target {ref_id} has no expr"));
            }
            if t["datasource"] != p["datasource"] {
                problem(format!("{title}: target {ref_id} queries another data source than its panel"));
            }
        }
    }
    problems
}

#[test]
fn the_dashboard_is_well_formed_for_its_schema_version() {
    let d = dashboard();
    let problems = check_dashboard(&d);
    assert!(problems.is_empty(), "{DASHBOARD}:\n{}", problems.join("\n"));
    // The data source is chosen on import, never fixed.
    let ds = json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    for panel in panels(&d).into_iter().filter(|p| p["type"] != "row") {
        assert_eq!(panel["datasource"], ds, "{}", panel["title"]);
    }
    let variables = d["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource" && v["query"] == "prometheus")
    );
}

/// The first panel that is not a row.
fn first_panel(d: &mut Value) -> &mut Value {
    d["panels"].as_array_mut().unwrap().iter_mut().find(|p| p["type"] != "row").unwrap()
}

#[test]
fn the_dashboard_check_finds_what_grafana_would_refuse() {
    type Change = fn(&mut Value);
    let cases: [(&str, Change); 8] = [
        ("a data source by name", |d| first_panel(d)["datasource"] = json!("Prometheus")),
        ("an Angular graph panel", |d| first_panel(d)["type"] = json!("graph")),
        ("a panel past column 24", |d| first_panel(d)["gridPos"]["x"] = json!(22)),
        ("a hidden legend", |d| first_panel(d)["options"]["legend"] = json!({"displayMode": "hidden"})),
        ("an undefined variable", |d| first_panel(d)["targets"][0]["expr"] = json!("rate(x{job=~\"$cluster\"}[5m])")),
        ("a target without a query", |d| first_panel(d)["targets"][0]["expr"] = json!("")),
        ("another schema version", |d| d["schemaVersion"] = json!(27)),
        ("a uid too long", |d| d["uid"] = json!("x".repeat(41))),
    ];
    let good = dashboard();
    for (what, change) in cases {
        let mut d = good.clone();
        change(&mut d);
        assert!(!check_dashboard(&d).is_empty(), "the check missed {what}");
    }
}

/// The first cells of the table headed `header` in `markdown`.
fn first_cells(markdown: &str, header: &str) -> Vec<String> {
    let mut lines = markdown.lines().skip_while(|l| l.trim() != header);
    assert!(lines.next().is_some(), "no table headed {header:?}");
    lines
        .skip(1)
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|row| row.trim().trim_matches('|').split('|').next().unwrap_or_default().trim().replace('`', ""))
        .collect()
}

#[test]
fn operations_md_describes_every_panel_and_every_alert_once() {
    let ops = read("docs/operations.md");
    for file in [DASHBOARD, RULES] {
        assert!(ops.contains(&format!("../{file}")), "docs/operations.md does not link {file}");
    }
    let d = dashboard();
    let in_dashboard: Vec<String> = panels(&d)
        .into_iter()
        .filter(|p| p["type"] != "row")
        .map(|p| p["title"].as_str().unwrap().to_owned())
        .collect();
    let in_docs = first_cells(&ops, "| panel | what it tells |");
    assert_eq!(in_docs, in_dashboard, "docs/operations.md's panel table, in dashboard order");
    let rules = rules();
    let in_rules: Vec<String> = alerts(&rules).iter().map(|r| r["alert"].as_str().unwrap().to_owned()).collect();
    let in_docs = first_cells(&ops, "| alert | severity | fires when | why there |");
    assert_eq!(in_docs, in_rules, "docs/operations.md's alert table, in the file's order");
}
