//! The real binary: durability across restarts and `kill -9`, the data-dir
//! lock, graceful shutdown, and the CLI/config contract.

mod common;

use common::{Process, binary, run_to_exit};
use serde_json::Value;

fn put(p: &Process, path: &str) -> (u16, Value) {
    client::call("PUT", &p.url(path))
}

/// A tiny blocking client, so these process tests need no async runtime.
mod client {
    use serde_json::Value;

    pub fn call(method: &str, url: &str) -> (u16, Value) {
        call_with(method, url, None)
    }

    pub fn call_with(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let client = ::reqwest::Client::new();
            let req = match method {
                "PUT" => client.put(url),
                "DELETE" => client.delete(url),
                _ => client.get(url),
            };
            let req = match body {
                Some(b) => req.json(&b),
                None => req,
            };
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let text = res.text().await.unwrap();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        })
    }
}

fn live(p: &Process, user: &str) -> Vec<(String, String)> {
    let (status, body) = client::call("GET", &p.url(&format!("/v1/users/{user}/streams")));
    assert_eq!(status, 200, "{body}");
    body["active_streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["stream_id"].as_str().unwrap().to_owned(), l["started_at"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn leases_survive_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let p = Process::start(&["--data-dir", data]);
    assert_eq!(put(&p, "/v1/users/u/streams/a").0, 201);
    assert_eq!(put(&p, "/v1/users/u/streams/b").0, 201);
    let before = live(&p, "u");
    let (status, log) = p.terminate();
    assert!(status.success(), "SIGTERM must exit 0: {status:?}\n{log}");
    assert!(log.contains("stopped cleanly"), "{log}");

    let p = Process::start(&["--data-dir", data]);
    assert_eq!(live(&p, "u"), before);
    // The restored leases still count against the limit.
    assert_eq!(put(&p, "/v1/users/u/streams/c").0, 201);
    assert_eq!(put(&p, "/v1/users/u/streams/d").0, 409);
}

#[test]
fn acknowledged_changes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let p = Process::start(&["--data-dir", data, "--default-limit", "2"]);
    let mut acked = Vec::new();
    for i in 0..20 {
        let user = format!("user{i}");
        assert_eq!(put(&p, &format!("/v1/users/{user}/streams/a")).0, 201);
        assert_eq!(put(&p, &format!("/v1/users/{user}/streams/b")).0, 201);
        assert_eq!(client::call("DELETE", &p.url(&format!("/v1/users/{user}/streams/a"))).0, 204);
        acked.push(user);
    }
    let renewed = put(&p, "/v1/users/user0/streams/b");
    assert_eq!(renewed.0, 200);
    let before: Vec<_> = acked.iter().map(|u| live(&p, u)).collect();
    p.kill9();

    let p = Process::start(&["--data-dir", data, "--default-limit", "2"]);
    let after: Vec<_> = acked.iter().map(|u| live(&p, u)).collect();
    assert_eq!(after, before);
    for state in &after {
        assert_eq!(state.len(), 1, "the release of `a` and the grant of `b` both survived");
        assert_eq!(state[0].0, "b");
    }
    let (_, body) = client::call("GET", &p.url("/v1/users/user0/streams"));
    assert_eq!(body["active_streams"][0]["expires_at"], renewed.1["expires_at"], "the renewal survived");
}

#[test]
fn a_second_process_on_the_same_data_dir_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let first = Process::start(&["--data-dir", data]);
    let (status, err) = run_to_exit(binary().args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data]));
    assert!(!status.success());
    assert!(err.contains("in use by another streamcap process"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // The first one is unharmed.
    assert_eq!(put(&first, "/v1/users/u/streams/a").0, 201);
}

#[test]
fn invalid_configuration_exits_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad_file = dir.path().join("bad.toml");
    std::fs::write(&bad_file, "listen = \"127.0.0.1:0\"\ndefualt_limit = 3\n").unwrap();
    let range_file = dir.path().join("range.toml");
    std::fs::write(&range_file, "lease_ttl = 0\n").unwrap();

    type Env<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Vec<&str>, Env, &str)> = vec![
        (vec!["serve", "--default-limit", "0"], vec![], "--default-limit"),
        (vec!["--lease-ttl", "forever"], vec![], "--lease-ttl"),
        (vec!["serve", "--store", "cassandra"], vec![], "--store"),
        (vec!["serve", "--what"], vec![], "--what"),
        (vec!["serve"], vec![("STREAMCAP_DEFAULT_LIMIT", "1001")], "--default-limit"),
        (vec!["serve", "--config", bad_file.to_str().unwrap()], vec![], "defualt_limit"),
        (vec!["serve", "--config", range_file.to_str().unwrap()], vec![], "lease_ttl"),
        (vec!["serve", "--config", "/nonexistent/streamcap.toml"], vec![], "/nonexistent/streamcap.toml"),
    ];
    for (args, env, needle) in cases {
        let mut cmd = binary();
        cmd.args(&args).envs(env.iter().copied());
        let (status, err) = run_to_exit(&mut cmd);
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line, got {err:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
    }
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("streamcap.toml");
    std::fs::write(&file, "store = \"memory\"\nlease_ttl = 30\n[limits]\ndefault = 4\n").unwrap();
    let limit_of = |p: &Process| {
        let (_, body) = client::call("GET", &p.url("/v1/users/u/streams"));
        body["limit"].as_u64().unwrap()
    };
    let cfg = file.to_str().unwrap();

    let p = Process::start(&["--store", "memory"]);
    assert_eq!(limit_of(&p), 3, "default");
    let p = Process::start(&["--config", cfg]);
    assert_eq!(limit_of(&p), 4, "file over default");
    assert_eq!(put(&p, "/v1/users/u/streams/a").1["ttl_seconds"], 30);
    let p = Process::start_cmd(
        binary().args(["serve", "--listen", "127.0.0.1:0", "--config", cfg]).env("STREAMCAP_DEFAULT_LIMIT", "5"),
    );
    assert_eq!(limit_of(&p), 5, "env over file");
    let p = Process::start_cmd(
        binary()
            .args(["serve", "--listen", "127.0.0.1:0", "--default-limit", "6"])
            .env("STREAMCAP_CONFIG", cfg)
            .env("STREAMCAP_DEFAULT_LIMIT", "5"),
    );
    assert_eq!(limit_of(&p), 6, "flag over env");
    assert_eq!(put(&p, "/v1/users/u/streams/a").1["ttl_seconds"], 30, "the file still fills the rest");
}

#[test]
fn no_arguments_means_serve_with_defaults() {
    // Run in a scratch directory so the default ./streamcap-data lands there.
    // The default port may be taken on a shared machine, so only the env
    // moves the listener; everything else is the built-in default.
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start_cmd(binary().current_dir(dir.path()).env("STREAMCAP_LISTEN", "127.0.0.1:0"));
    assert_eq!(put(&p, "/v1/users/u/streams/a").1["limit"], 3);
    assert!(p.log().contains("store=\"sqlite\"") || p.log().contains("store=sqlite"), "{}", p.log());
    let (status, _) = p.terminate();
    assert!(status.success());
    assert!(dir.path().join("streamcap-data").join("streamcap.db").exists());
}

#[test]
fn overrides_and_tombstones_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let p = Process::start(&["--data-dir", data]);
    let (status, _) = client::call_with("PUT", &p.url("/v1/users/u/limit"), Some(serde_json::json!({"limit": 5})));
    assert_eq!(status, 200);
    assert_eq!(put(&p, "/v1/users/u/streams/a").0, 201);
    let (status, body) = client::call("DELETE", &p.url("/v1/users/u/streams"));
    assert_eq!((status, body), (200, serde_json::json!({"revoked": ["a"]})));
    p.kill9();

    let p = Process::start(&["--data-dir", data]);
    let (_, limit) = client::call("GET", &p.url("/v1/users/u/limit"));
    assert_eq!(limit, serde_json::json!({"user_id": "u", "limit": 5, "source": "override"}));
    let (status, problem) = put(&p, "/v1/users/u/streams/a");
    assert_eq!((status, problem["reason"].as_str()), (410, Some("revoked")));
}
