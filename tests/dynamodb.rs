//! The dynamodb store through the real binary, against real DynamoDB Local
//! processes: `streamcap dynamodb create-table`, the table check at start,
//! two instances racing on one table, `kill -9` of an instance, and a
//! DynamoDB outage.
#![cfg(feature = "dynamodb")]

mod common;

use std::process::{Command, Stdio};

use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
use common::dynamodb::{self, CLIENT_ENV, DynamoLocal};
use common::{Process, Reply, binary, run_to_exit, two_instances};
use serde_json::{Value, json};

/// The binary with DynamoDB Local's region and credentials.
fn streamcap() -> Command {
    let mut cmd = binary();
    cmd.envs(CLIENT_ENV);
    cmd
}

/// `streamcap dynamodb create-table ARGS`: exit code, stdout, stderr.
fn create_table(args: &[&str]) -> (Option<i32>, String, String) {
    let out = streamcap().args(["dynamodb", "create-table"]).args(args).stdin(Stdio::null()).output().unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// A new table made by `streamcap dynamodb create-table`.
fn new_table(local: &DynamoLocal) -> String {
    let table = dynamodb::table_name("it");
    let (code, out, err) = create_table(&["--dynamodb-table", &table, "--dynamodb-endpoint", &local.endpoint()]);
    assert_eq!(code, Some(0), "{out}{err}");
    table
}

/// `serve` on `table`; rate limits are off, as these tests are about the store.
fn serve(local: &DynamoLocal, table: &str, extra: &[&str]) -> Process {
    let endpoint = local.endpoint();
    let mut args = vec!["--store", "dynamodb", "--dynamodb-table", table, "--dynamodb-endpoint", &endpoint];
    args.extend(["--user-rate-limit", "0", "--credential-rate-limit", "0"]);
    args.extend(extra);
    Process::start_cmd(streamcap().args(["serve", "--listen", "127.0.0.1:0"]).args(&args))
}

async fn put(url: String, body: Value) -> Reply {
    Reply::from(reqwest::Client::new().put(url).json(&body).send().await.unwrap()).await
}

async fn get(url: String) -> Reply {
    Reply::from(reqwest::Client::new().get(url).send().await.unwrap()).await
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|l| l["stream_id"].as_str().unwrap().to_owned()).collect()).unwrap_or_default()
}

/// `streamcap_store_conflicts_total` of a running instance.
async fn conflicts(p: &Process) -> u64 {
    let text = get(p.url("/metrics")).await.text;
    let line = text.lines().find(|l| l.starts_with("streamcap_store_conflicts_total "));
    line.and_then(|l| l.split_whitespace().nth(1)).map_or(0, |n| n.parse::<f64>().unwrap() as u64)
}

async fn sdk_client(local: &DynamoLocal) -> aws_sdk_dynamodb::Client {
    let env = |k: &str| CLIENT_ENV.iter().find(|(name, _)| *name == k).unwrap().1;
    let creds = aws_sdk_dynamodb::config::Credentials::new(
        env("AWS_ACCESS_KEY_ID"),
        env("AWS_SECRET_ACCESS_KEY"),
        None,
        None,
        "test",
    );
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new(env("AWS_REGION")))
        .credentials_provider(creds)
        .endpoint_url(local.endpoint())
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// A table keyed by `keys` (name, type, hash or range), as a hand-rolled
/// deployment might have made it.
async fn foreign_table(local: &DynamoLocal, keys: &[(&str, ScalarAttributeType, KeyType)]) -> String {
    let table = dynamodb::table_name("foreign");
    let mut create = sdk_client(local).await.create_table().table_name(&table).billing_mode(BillingMode::PayPerRequest);
    for (name, ty, key) in keys {
        create = create
            .key_schema(KeySchemaElement::builder().attribute_name(*name).key_type(key.clone()).build().unwrap())
            .attribute_definitions(
                AttributeDefinition::builder().attribute_name(*name).attribute_type(ty.clone()).build().unwrap(),
            );
    }
    create.send().await.unwrap();
    table
}

#[test]
fn create_table_says_what_it_did_and_can_run_again() {
    let local = DynamoLocal::shared();
    let table = dynamodb::table_name("admin");
    let endpoint = local.endpoint();
    let (code, out, err) = create_table(&["--dynamodb-table", &table, "--dynamodb-endpoint", &endpoint]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        format!(
            "created table {table} (on-demand billing, partition key user_id of type S)\nenabled TTL on expires_at\n"
        )
    );
    assert_eq!(err, "");
    // Again, with the settings from the environment and a config file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("streamcap.toml");
    std::fs::write(&file, format!("store = \"dynamodb\"\ndynamodb_endpoint = \"{endpoint}\"\n")).unwrap();
    let out = streamcap()
        .args(["dynamodb", "create-table", "--config", file.to_str().unwrap()])
        .env("STREAMCAP_DYNAMODB_TABLE", &table)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("table {table} already exists with partition key user_id (S)\nTTL is already enabled on expires_at\n")
    );
    // The table serves.
    let p = serve(local, &table, &[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert_eq!(rt.block_on(put(p.url("/v1/users/u/streams/a"), json!({}))).status, 201);
}

/// `serve` never creates a table. A missing one, or one with another key
/// schema, is a configuration error: one line and exit code 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_2_with_one_line_when_the_table_is_missing_or_keyed_otherwise() {
    let local = DynamoLocal::shared();
    use KeyType::{Hash, Range};
    use ScalarAttributeType::{N, S};
    let cases = [
        ("does-not-exist-anywhere".to_owned(), "does not exist (create it with `streamcap dynamodb create-table`)"),
        (foreign_table(local, &[("pk", S, Hash)]).await, "does not have the key schema"),
        (foreign_table(local, &[("user_id", N, Hash)]).await, "does not have the key schema"),
        (foreign_table(local, &[("user_id", S, Hash), ("sk", S, Range)]).await, "does not have the key schema"),
    ];
    for (table, needle) in &cases {
        let (status, err) = run_to_exit(streamcap().args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "dynamodb",
            "--dynamodb-table",
            table,
            "--dynamodb-endpoint",
            &local.endpoint(),
        ]));
        assert_eq!(status.code(), Some(2), "{table}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{table}: one line, got {err:?}");
        assert!(err.contains(needle) && err.contains(table.as_str()), "{table}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // create-table refuses to adopt a table keyed otherwise.
    for (table, _) in &cases[1..] {
        let (code, out, err) = create_table(&["--dynamodb-table", table, "--dynamodb-endpoint", &local.endpoint()]);
        assert_eq!(code, Some(2), "{out}{err}");
        assert!(err.contains("streamcap needs partition key user_id (S) and no sort key"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err:?}");
    }
}

#[test]
fn an_unreachable_endpoint_at_start_is_one_line() {
    let port = DynamoLocal::start().port; // started and stopped: nothing listens now
    let endpoint = format!("http://127.0.0.1:{port}");
    let (status, err) = run_to_exit(streamcap().args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "dynamodb",
        "--dynamodb-endpoint",
        &endpoint,
    ]));
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(err.contains("cannot read dynamodb table streamcap") && err.contains("onnect"), "{err}");
    let (code, _, err) = create_table(&["--dynamodb-endpoint", &endpoint]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_table_keep_every_user_atomic() {
    let local = DynamoLocal::shared();
    let table = new_table(local);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("streamcap.toml");
    std::fs::write(&config, two_instances::CONFIG).unwrap();
    let a = serve(local, &table, &["--config", config.to_str().unwrap()]);
    let b = serve(local, &table, &["--config", config.to_str().unwrap()]);

    two_instances::acquires_grant_exactly_the_limit(&a.url(""), &b.url("")).await;
    let raced = conflicts(&a).await + conflicts(&b).await;
    eprintln!("64 acquires on two instances: {raced} conflicts retried");

    two_instances::evictions_keep_the_limit(&a.url(""), &b.url("")).await;
    eprintln!(
        "64 evicting acquires on two instances: {} conflicts retried",
        conflicts(&a).await + conflicts(&b).await - raced
    );
}

/// Every answer is sent after DynamoDB accepted the write, so killing an
/// instance loses nothing it acknowledged: grants, renewals, releases,
/// overrides and tombstones are all there for the next instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_kill_9_of_an_instance() {
    let local = DynamoLocal::shared();
    let table = new_table(local);
    let p = serve(local, &table, &["--default-limit", "2"]);
    let url = |path: &str| p.url(path);
    let client = reqwest::Client::new();
    for i in 0..10 {
        let user = format!("/v1/users/user{i}/streams");
        assert_eq!(put(url(&format!("{user}/a")), json!({"device_id": "tv"})).await.status, 201);
        assert_eq!(put(url(&format!("{user}/b")), json!({})).await.status, 201);
        assert_eq!(client.delete(url(&format!("{user}/a"))).send().await.unwrap().status(), 204);
    }
    let renewed = put(url("/v1/users/user0/streams/b"), json!({})).await;
    assert_eq!(renewed.status, 200);
    let r = Reply::from(client.put(url("/v1/users/o/limit")).json(&json!({"limit": 5})).send().await.unwrap()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(put(url("/v1/users/o/streams/x"), json!({})).await.status, 201);
    let revoked = Reply::from(client.delete(url("/v1/users/o/streams")).send().await.unwrap()).await;
    assert_eq!(revoked.json(), json!({"revoked": ["x"]}));
    let mut before = Vec::new();
    for i in 0..10 {
        before.push(get(url(&format!("/v1/users/user{i}/streams"))).await.json());
    }
    p.kill9();

    let p = serve(local, &table, &["--default-limit", "2"]);
    for (i, was) in before.iter().enumerate() {
        let now = get(p.url(&format!("/v1/users/user{i}/streams"))).await.json();
        assert_eq!(&now, was);
        assert_eq!(ids(&now["active_streams"]), ["b"], "the release of a and the grant of b both survived");
    }
    let list = get(p.url("/v1/users/user0/streams")).await.json();
    assert_eq!(list["active_streams"][0]["expires_at"], renewed.json()["expires_at"], "the renewal survived");
    let limit = get(p.url("/v1/users/o/limit")).await.json();
    assert_eq!(limit, json!({"user_id": "o", "limit": 5, "source": "override"}));
    let gone = put(p.url("/v1/users/o/streams/x"), json!({})).await;
    assert_eq!((gone.status, gone.json()["reason"].as_str()), (410, Some("revoked")));
}

/// DynamoDB gone: 503 store-unavailable with Retry-After under `deny`, a
/// degraded grant under `allow`, `/readyz` 503, reads never guessed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamodb_outage_is_503_or_degraded_as_configured() {
    let mut local = DynamoLocal::start();
    let table = new_table(&local);
    let deny = serve(&local, &table, &[]);
    let allow = serve(&local, &table, &["--on-store-error", "allow"]);
    assert_eq!(put(deny.url("/v1/users/u/streams/a"), json!({})).await.status, 201);
    for p in [&deny, &allow] {
        assert_eq!(get(p.url("/readyz")).await.status, 200);
    }
    local.kill9();

    let r = put(deny.url("/v1/users/u/streams/b"), json!({})).await;
    r.assert_problem(503, "store-unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = put(allow.url("/v1/users/u/streams/c"), json!({"device_id": "tv"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let body = r.json();
    assert_eq!((body["degraded"].clone(), body["active_streams"].clone()), (json!(true), Value::Null), "{body}");
    assert_eq!(body["device_id"], "tv");
    for p in [&deny, &allow] {
        get(p.url("/readyz")).await.assert_problem(503, "store-unavailable");
        get(p.url("/v1/users/u/streams")).await.assert_problem(503, "store-unavailable");
        let r = Reply::from(reqwest::Client::new().delete(p.url("/v1/users/u/streams/a")).send().await.unwrap()).await;
        r.assert_problem(503, "store-unavailable");
    }
    assert!(deny.log().contains("store unavailable"), "{}", deny.log());

    // DynamoDB comes back on the same address (empty: it ran in memory),
    // and the table is made again: both serve again without a restart.
    let local = DynamoLocal::start_on(local.port);
    let (code, out, err) = create_table(&["--dynamodb-table", &table, "--dynamodb-endpoint", &local.endpoint()]);
    assert_eq!(code, Some(0), "{out}{err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = put(deny.url("/v1/users/u/streams/b"), json!({})).await;
        if r.status == 201 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no recovery: {r:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let r = put(allow.url("/v1/users/u/streams/c"), json!({})).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r.json().get("degraded").is_none(), "{r:?}");
    assert_eq!(get(deny.url("/readyz")).await.status, 200);
}
