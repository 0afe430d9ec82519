//! Redis over TLS: the real binary on redis-server processes that speak
//! only TLS, standalone and a Cluster (`tls-cluster yes`), with a CA and a
//! server certificate the test makes with the openssl CLI. That CA is not
//! among the system's roots, so only `--redis-ca-file` makes it trusted.

mod common;

use std::process::ExitStatus;
use std::sync::Arc;

use common::redis::{RedisCluster, RedisServer, TlsFiles};
use common::{Process, Reply, binary, run_to_exit};
use serde_json::json;

/// Every server here requires it, as ElastiCache's AUTH token does; the
/// failure tests prove it is never printed.
const PASSWORD: &str = "tls-s3cret-token";

fn redis_args(urls: &str, mode: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["--store", "redis", "--redis-mode", mode, "--redis-url", urls].into_iter().map(str::to_owned).collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// An instance with a limit of 2; rate limits are off, as these tests are
/// about the store.
fn start(args: &[String]) -> Process {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend(["--default-limit", "2", "--user-rate-limit", "0", "--credential-rate-limit", "0"]);
    Process::start(&all)
}

/// Runs the binary with `args` until it gives up, and returns its exit
/// status and the one line that says why.
fn start_fails(args: &[String]) -> (ExitStatus, String, String) {
    let (status, err) = run_to_exit(binary().args(["serve", "--listen", "127.0.0.1:0"]).args(args));
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("cannot connect to redis")).collect();
    assert_eq!(lines.len(), 1, "one line says why: {err}");
    (status, lines[0].to_owned(), err)
}

/// Acquire, renew, release and a 409, for `user`, through `p`.
async fn decides(p: &Process, user: &str) {
    let client = reqwest::Client::new();
    let url = |s: &str| p.url(&format!("/v1/users/{user}/streams/{s}"));
    let put = |s: &str| {
        let req = client.put(url(s)).json(&json!({"device_id": "tv"}));
        async move { Reply::from(req.send().await.unwrap()).await }
    };
    assert_eq!(put("a").await.status, 201);
    assert_eq!(put("b").await.status, 201);
    put("c").await.assert_problem(409, "stream-limit-reached");
    let renewed = put("a").await;
    assert_eq!(renewed.status, 200, "{renewed:?}");
    let released = Reply::from(client.delete(url("b")).send().await.unwrap()).await;
    assert_eq!(released.status, 204, "{released:?}");
    assert_eq!(put("c").await.status, 201);
    let listed = Reply::from(client.get(p.url(&format!("/v1/users/{user}/streams"))).send().await.unwrap()).await;
    assert_eq!(listed.json()["active_streams"].as_array().map(Vec::len), Some(2), "{listed:?}");
}

/// A certificate the instance does not trust stops it at start: exit 2,
/// as for any misconfiguration, and one line that names the URL with its
/// password masked and says what to do.
fn refused_for_its_certificate(args: &[String], shown_url: &str) {
    let (status, line, err) = start_fails(args);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(line.contains(shown_url), "the URL is named: {line}");
    assert!(line.contains("invalid peer certificate") && line.contains("--redis-ca-file"), "{line}");
    assert!(!err.contains(PASSWORD), "the password must not be printed: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_over_tls_decides_with_the_ca_file_and_refuses_an_untrusted_certificate() {
    let tls = TlsFiles::generate();
    // Also on 127.0.0.2, an address that the certificate does not name.
    let redis = RedisServer::start_tls(&tls, Some(PASSWORD), &["--bind", "127.0.0.1", "127.0.0.2"]);
    let url = redis.url();
    assert!(url.starts_with("rediss://:"), "{url}");
    let ca = tls.ca().to_str().unwrap().to_owned();

    let p = start(&redis_args(&url, "standalone", &["--redis-ca-file", &ca]));
    decides(&p, "alice").await;
    assert!(p.log().contains("redis over TLS"), "{}", p.log());
    // By a name that the certificate lists.
    let by_name = start(&redis_args(&url.replace("127.0.0.1", "localhost"), "standalone", &["--redis-ca-file", &ca]));
    decides(&by_name, "alice-by-name").await;

    let shown = format!("rediss://:***@127.0.0.1:{}", redis.port);
    // The system's roots alone do not know the test CA.
    refused_for_its_certificate(&redis_args(&url, "standalone", &[]), &shown);
    // Nor does another CA.
    let other = tls.other_ca().to_str().unwrap().to_owned();
    refused_for_its_certificate(&redis_args(&url, "standalone", &["--redis-ca-file", &other]), &shown);
    // A certificate that does not name the host in the URL.
    let elsewhere = url.replace("127.0.0.1", "127.0.0.2");
    let (status, line, _) = start_fails(&redis_args(&elsewhere, "standalone", &["--redis-ca-file", &ca]));
    assert_eq!(status.code(), Some(2), "{line}");
    assert!(line.contains("not valid for name"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_insecure_skips_verification_and_says_so_loudly() {
    let tls = TlsFiles::generate();
    let redis = RedisServer::start_tls(&tls, Some(PASSWORD), &[]);
    let p = start(&redis_args(&redis.url(), "standalone", &["--redis-tls-insecure"]));
    decides(&p, "bob").await;
    let log = p.log();
    let warning = log.lines().find(|l| l.contains("INSECURE")).unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(warning.contains("WARN") && warning.contains("--redis-tls-insecure"), "{warning}");
}

/// One TLS cluster for every cluster case: it takes the longest to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_decides_with_the_ca_file_and_refuses_an_untrusted_certificate() {
    let tls: Arc<TlsFiles> = TlsFiles::generate();
    let cluster = RedisCluster::start_tls(&tls, Some(PASSWORD), 3, 0);
    // One seed: the others are learnt from the cluster, and reached over TLS too.
    let seed = cluster.nodes[0].url();
    let ca = tls.ca().to_str().unwrap().to_owned();

    let a = start(&redis_args(&seed, "cluster", &["--redis-ca-file", &ca]));
    let b = start(&redis_args(&cluster.urls().join(","), "cluster", &["--redis-ca-file", &ca]));
    // Users on each of the three primaries.
    let users = ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"];
    let masters: std::collections::BTreeSet<usize> =
        users.iter().map(|u| cluster.master_of(&format!("sc:{{{u}}}:s"))).collect();
    assert_eq!(masters.len(), 3, "the users span every primary");
    for (i, user) in users.iter().enumerate() {
        decides(if i % 2 == 0 { &a } else { &b }, user).await;
    }
    // What one instance granted, the other sees.
    let listed = Reply::from(reqwest::get(b.url("/v1/users/u0/streams")).await.unwrap()).await;
    assert_eq!(listed.json()["active_streams"].as_array().map(Vec::len), Some(2), "{listed:?}");

    let shown = format!("rediss://:***@127.0.0.1:{}", cluster.nodes[0].port);
    refused_for_its_certificate(&redis_args(&seed, "cluster", &[]), &shown);
    let other = tls.other_ca().to_str().unwrap().to_owned();
    refused_for_its_certificate(&redis_args(&seed, "cluster", &["--redis-ca-file", &other]), &shown);

    let insecure = start(&redis_args(&seed, "cluster", &["--redis-tls-insecure"]));
    decides(&insecure, "carol").await;
    assert!(insecure.log().contains("INSECURE"), "{}", insecure.log());
}

/// Settings that cannot work are refused before anything starts, each
/// with one line that names the culprit.
#[test]
fn tls_settings_that_cannot_work_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "just some text\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let (not_pem, missing) = (not_pem.to_str().unwrap(), missing.to_str().unwrap());
    let tls_url = format!("rediss://:{PASSWORD}@127.0.0.1:1");
    let plain_url = format!("redis://:{PASSWORD}@127.0.0.1:1");
    for (args, needle) in [
        (redis_args(&tls_url, "standalone", &["--redis-ca-file", not_pem]), not_pem),
        (redis_args(&tls_url, "standalone", &["--redis-ca-file", missing]), missing),
        (redis_args(&plain_url, "standalone", &["--redis-ca-file", not_pem]), "not a rediss:// URL"),
        (redis_args(&plain_url, "standalone", &["--redis-tls-insecure"]), "not a rediss:// URL"),
        (redis_args(&format!("{tls_url}#insecure"), "standalone", &[]), "--redis-tls-insecure"),
    ] {
        let (status, err) = run_to_exit(binary().args(["serve", "--listen", "127.0.0.1:0"]).args(&args));
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains(PASSWORD), "{args:?}: {err}");
    }
}
