//! `--redis-replica-acks`: what replica acknowledgements guarantee, with
//! the real binary and real redis-server processes (a primary with one
//! replica, and a 3+3 Cluster whose primary is killed with `kill -9`).
//!
//! A replica is made to lag by stopping its process (SIGSTOP) and closing
//! its link from the primary (`CLIENT KILL TYPE replica`), so that what the
//! primary writes from then on reaches no replica.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Process;
use common::redis::{RedisCluster, RedisServer};
use serde_json::{Value, json};

/// A started instance; rate limits are off, as these tests are about the
/// store, and leases outlive the test.
fn start(store: &[String], acks: u32) -> Process {
    let mut args: Vec<&str> = store.iter().map(String::as_str).collect();
    let acks = acks.to_string();
    args.extend(["--redis-replica-acks", &acks, "--lease-ttl", "600", "--default-limit", "10"]);
    args.extend(["--user-rate-limit", "0", "--credential-rate-limit", "0"]);
    Process::start(&args)
}

/// SIGSTOP or SIGCONT to one process.
fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

/// Stops `replica` and cuts it off `primary`: from now on, nothing the
/// primary writes reaches it until [`resume`].
fn lag(primary: &RedisServer, replica: &RedisServer) {
    signal(replica.pid(), "-STOP");
    let killed = primary.cli(&["CLIENT", "KILL", "TYPE", "replica"]);
    assert!(killed.trim().parse::<u32>().is_ok_and(|n| n >= 1), "no replica link to close: {killed}");
}

fn resume(replica: &RedisServer) {
    signal(replica.pid(), "-CONT");
}

async fn put(client: &reqwest::Client, url: String) -> (u16, Value) {
    let r = client.put(url).json(&json!({})).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The user's live streams, asking again while the store answers 503.
async fn live(client: &reqwest::Client, p: &Process, user: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client.get(p.url(&format!("/v1/users/{user}/streams"))).send().await.unwrap();
        if r.status() == 200 {
            let body: Value = r.json().await.unwrap();
            return body["active_streams"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["stream_id"].as_str().unwrap().to_owned())
                .collect();
        }
        assert_eq!(r.status(), 503, "listing {user}");
        assert!(Instant::now() < deadline, "{user}'s streams still 503 after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `replica` is in sync with its primary.
fn wait_synced(replica: &RedisServer) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replica.cli(&["INFO", "replication"]).contains("master_link_status:up") {
        assert!(Instant::now() < deadline, "the replica did not sync");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// With one replica and `--redis-replica-acks 1`: a 201 means the replica
/// has the lease; a replica that does not answer makes writes 503 but not
/// reads; the write stays, and the retry is a renewal once the replica is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_write_is_on_the_replica_and_an_unacknowledged_one_is_503() {
    let primary = RedisServer::start(&[]);
    let port = primary.port.to_string();
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &port]);
    wait_synced(&replica);
    let store = vec!["--store".to_owned(), "redis".into(), "--redis-url".into(), primary.url()];
    let p = start(&store, 1);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let url = |user: &str, s: &str| p.url(&format!("/v1/users/{user}/streams/{s}"));

    // Answered only once the replica has it: it is there right away.
    for i in 0..20 {
        let (status, body) = put(&client, url("alice", &format!("tv-{i}"))).await;
        assert_eq!(status, 201, "{body}");
        let stored = replica.cli(&["GET", "sc:{alice}:s"]);
        assert!(stored.contains(&format!("tv-{i}")), "the replica lacks tv-{i} after its 201: {stored:?}");
        let (status, body) = put(&client, url("alice", &format!("tv-{i}"))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(client.delete(url("alice", &format!("tv-{i}"))).send().await.unwrap().status(), 204);
    }
    assert_eq!(put(&client, url("bob", "phone")).await.0, 201);

    // The replica stops answering: the write is made but not acknowledged.
    lag(&primary, &replica);
    let pending = tokio::spawn({
        let (client, url) = (client.clone(), url("alice", "laptop"));
        async move { put(&client, url).await }
    });
    // WAIT holds only the connection of that write: reads keep coming
    // back from the shared connection while it waits. Were they queued
    // behind the WAIT, at most one could finish before it.
    let mut reads = 0;
    while !pending.is_finished() {
        assert_eq!(live(&client, &p, "bob").await, ["phone"]);
        reads += 1;
    }
    let (status, body) = pending.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"].as_str().unwrap().rsplit('/').next(), Some("store-unavailable"), "{body}");
    eprintln!("{reads} reads answered while one write waited for its replica");
    assert!(reads >= 2, "reads waited behind the write's WAIT: only {reads} while it was pending");
    assert!(p.log().contains("acknowledged by 0 of the 1 replicas"), "{}", p.log());

    // The write stood on the primary; once the replica is back, the retry
    // renews the lease, and that renewal is acknowledged.
    resume(&replica);
    wait_synced(&replica);
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, body) = put(&client, url("alice", "laptop")).await;
        if status == 200 {
            break body;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "the retry never succeeded: {body}");
    };
    assert_eq!(body["active_streams"], 1, "{body}");
    assert!(replica.cli(&["GET", "sc:{alice}:s"]).contains("laptop"));
}

/// More acknowledgements than there are replicas: every write is 503,
/// and reads are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_acks_than_replicas_refuse_every_write_but_not_reads() {
    let primary = RedisServer::start(&[]);
    let port = primary.port.to_string();
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &port]);
    wait_synced(&replica);
    let store = vec!["--store".to_owned(), "redis".into(), "--redis-url".into(), primary.url()];
    let p = start(&store, 2);
    let client = reqwest::Client::new();
    let (status, body) = put(&client, p.url("/v1/users/carol/streams/tv")).await;
    assert_eq!(status, 503, "{body}");
    assert!(p.log().contains("acknowledged by 1 of the 2 replicas"), "{}", p.log());
    // The write stood on the primary and reached the one replica there is.
    assert_eq!(live(&client, &p, "carol").await, ["tv"]);
    let r = client.get(p.url("/v1/users/carol/limit")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// Grants made under load, by user, and when.
#[derive(Default)]
struct Grants {
    /// user → true when the grant was answered while the replica lagged
    /// (from just before it was cut off until its primary was killed).
    acknowledged: BTreeMap<String, bool>,
    unavailable: usize,
    unavailable_while_lagging: usize,
}

/// Four loops per instance, each starting a stream for a new user as soon
/// as the last one was answered.
struct Load {
    lagging: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(&'static str, Grants)>>,
}

impl Load {
    /// `acked` runs with `--redis-replica-acks 1`, `plain` without.
    fn start(client: &reqwest::Client, acked: &Arc<Process>, plain: &Arc<Process>) -> Load {
        let lagging = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (name, p) in [("acked", acked), ("plain", plain)] {
            for _ in 0..4 {
                let (p, client, lagging, stop, next) =
                    (p.clone(), client.clone(), lagging.clone(), stop.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    let mut grants = Grants::default();
                    while !stop.load(Ordering::Relaxed) {
                        let user = format!("{name}{}", next.fetch_add(1, Ordering::Relaxed));
                        let (status, body) = put(&client, p.url(&format!("/v1/users/{user}/streams/s"))).await;
                        let during = lagging.load(Ordering::Relaxed);
                        match status {
                            201 => {
                                grants.acknowledged.insert(user, during);
                            }
                            503 => {
                                grants.unavailable += 1;
                                grants.unavailable_while_lagging += usize::from(during);
                            }
                            _ => panic!("{user}: {status} {body}"),
                        }
                    }
                    (name, grants)
                }));
            }
        }
        Load { lagging, stop, tasks }
    }

    fn lagging(&self, now: bool) {
        self.lagging.store(now, Ordering::Relaxed);
    }

    /// Stops the loops and looks up, through `reader`, every grant they
    /// were answered: none of `acked` may be lost; those of `plain` that
    /// were are counted and printed.
    async fn finish(self, what: &str, client: &reqwest::Client, reader: &Process) {
        self.stop.store(true, Ordering::Relaxed);
        // name → (lost, lost of those answered while lagging, answered, 503s)
        let mut tally = BTreeMap::<&str, (usize, usize, usize, usize)>::new();
        for task in self.tasks {
            let (name, grants) = task.await.unwrap();
            let entry = tally.entry(name).or_default();
            for (user, during) in &grants.acknowledged {
                let streams = live(client, reader, user).await;
                if streams != ["s"] {
                    assert_eq!(name, "plain", "{what}: {user}'s acknowledged grant was lost: {streams:?}");
                    entry.0 += 1;
                    entry.1 += usize::from(*during);
                }
            }
            entry.2 += grants.acknowledged.len();
            entry.3 += grants.unavailable;
            eprintln!(
                "{what}, {name}: {} acknowledged ({} while the replica lagged), {} answered 503 ({} while it lagged)",
                grants.acknowledged.len(),
                grants.acknowledged.values().filter(|d| **d).count(),
                grants.unavailable,
                grants.unavailable_while_lagging
            );
        }
        let (a, p) = (tally["acked"], tally["plain"]);
        eprintln!(
            "{what}, with --redis-replica-acks 1: {} of {} acknowledged grants lost ({} answered 503)",
            a.0, a.2, a.3
        );
        eprintln!(
            "{what}, without acks: {} of {} acknowledged grants lost, {} of them answered while the replica lagged \
             ({} answered 503)",
            p.0, p.2, p.1, p.3
        );
        assert_eq!(a.0, 0);
        assert!(a.2 > 0 && p.2 > 0, "no load went through");
    }
}

/// A 3+3 cluster, two instances: one with `--redis-replica-acks 1`, one
/// without. Both start streams for new users without pause while the
/// replica of one primary lags, that primary is killed with `kill -9`,
/// and the replica is promoted. Every stream the first answered 201 is
/// there afterwards; the ones the second answered 201 and the cluster
/// lost are counted and printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_loses_no_acknowledged_grant() {
    let mut cluster = RedisCluster::start(3, 1);
    let store = vec![
        "--store".to_owned(),
        "redis".into(),
        "--redis-mode".into(),
        "cluster".into(),
        "--redis-url".into(),
        cluster.urls().join(","),
    ];
    let acked = Arc::new(start(&store, 1));
    let plain = Arc::new(start(&store, 0));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();

    let victim = cluster.master_of("sc:{victim}:s");
    let info = cluster.nodes[victim].cli(&["INFO", "replication"]);
    let replica_port: u16 = info
        .lines()
        .find_map(|l| l.strip_prefix("slave0:")?.split(',').find_map(|kv| kv.strip_prefix("port=")?.parse().ok()))
        .unwrap_or_else(|| panic!("the victim has no replica: {info}"));
    let replica = cluster.nodes.iter().position(|s| s.port == replica_port).unwrap();

    let load = Load::start(&client, &acked, &plain);
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.lagging(true);
    lag(&cluster.nodes[victim], &cluster.nodes[replica]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.nodes[victim].kill9();
    load.lagging(false);
    resume(&cluster.nodes[replica]);
    // The replica takes over at once rather than after the node timeout.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.nodes[replica].cli(&["INFO", "replication"]).contains("role:master") {
        cluster.nodes[replica].cli(&["CLUSTER", "FAILOVER", "FORCE"]);
        assert!(Instant::now() < deadline, "the replica was not promoted");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.wait_healthy(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.finish("cluster", &client, &plain).await;
}

/// The same with one primary and its replica: after the `kill -9`, the
/// replica is promoted by hand (`REPLICAOF NO ONE`, as Sentinel would) and
/// a new instance on it looks up every grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_standalone_primary_loses_no_acknowledged_grant() {
    let mut primary = RedisServer::start(&[]);
    let port = primary.port.to_string();
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &port]);
    wait_synced(&replica);
    let store = vec!["--store".to_owned(), "redis".into(), "--redis-url".into(), primary.url()];
    let acked = Arc::new(start(&store, 1));
    let plain = Arc::new(start(&store, 0));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();

    let load = Load::start(&client, &acked, &plain);
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.lagging(true);
    lag(&primary, &replica);
    tokio::time::sleep(Duration::from_secs(2)).await;
    primary.kill9();
    load.lagging(false);
    resume(&replica);
    assert!(replica.cli(&["REPLICAOF", "NO", "ONE"]).contains("OK"));
    let reader = start(&["--store".to_owned(), "redis".into(), "--redis-url".into(), replica.url()], 0);
    load.finish("standalone", &client, &reader).await;
}
