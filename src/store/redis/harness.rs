//! Real `redis-server` processes for tests: standalone or a Cluster, on free
//! loopback ports, each in its own temp dir, stopped by PID on drop. Tests
//! never touch a Redis they did not start here.
//!
//! Shared by the unit tests (as `store::redis::harness`) and the integration
//! tests (through `#[path]`), so it uses only std and `tempfile`.
#![allow(dead_code)] // each test crate uses a different part of it

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// One `redis-server` process.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

fn binary(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()));
    found.unwrap_or_else(|| {
        panic!("{name} is not installed; ./scripts/test installs it (apt-get install -y redis-server)")
    })
}

/// A port that is free now, and whose cluster bus port (+10000) is too.
fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Runs `redis-cli -p PORT ARGS` and returns its output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(binary("redis-cli"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(50));
    }
}

impl RedisServer {
    pub fn start(extra: &[&str]) -> RedisServer {
        Self::start_on(free_port(), extra)
    }

    /// Starts on a given port, e.g. to bring a killed server back.
    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(binary("redis-server"))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning"])
            // DEBUG SLEEP lets tests stall the store on purpose.
            .args(["--enable-debug-command", "yes"])
            .args(extra)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = RedisServer { child, port, _dir: dir };
        wait_until(&format!("redis-server on port {port}"), Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok() && cli(port, &["PING"]).contains("PONG")
        });
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, like a crashed host.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn flushall(&self) {
        assert!(cli(self.port, &["FLUSHALL"]).contains("OK"));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A Redis Cluster of `masters` primaries with `replicas` replicas each.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let n = masters * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| {
                RedisServer::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    // A replica may take over even if it lagged a little.
                    "--cluster-replica-validity-factor",
                    "0",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        let replicas = replicas.to_string();
        args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        let out = cli(nodes[0].port, &args);
        assert!(out.contains("[OK] All 16384 slots covered"), "cluster create failed:\n{out}");
        let cluster = RedisCluster { nodes };
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Every live node reports `cluster_state:ok` and every replica is in sync.
    pub fn wait_healthy(&self, limit: Duration) {
        wait_until("a healthy cluster", limit, || {
            self.live_nodes().all(|s| {
                cli(s.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok") && {
                    let info = cli(s.port, &["INFO", "replication"]);
                    info.contains("role:master") || info.contains("master_link_status:up")
                }
            })
        });
    }

    fn live_nodes(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|s| TcpStream::connect(("127.0.0.1", s.port)).is_ok())
    }

    /// The index of the node that is primary for `key` now.
    pub fn master_of(&self, key: &str) -> usize {
        let node = self.live_nodes().next().unwrap();
        let slot: u16 = cli(node.port, &["CLUSTER", "KEYSLOT", key]).trim().parse().unwrap();
        for line in cli(node.port, &["CLUSTER", "NODES"]).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let owns = f[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap()).contains(&slot),
                None => r.parse::<u16>().ok() == Some(slot),
            });
            if owns {
                let port: u16 = f[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
                return self.nodes.iter().position(|s| s.port == port).unwrap();
            }
        }
        panic!("no primary owns slot {slot}");
    }

    /// Waits until every replica of node `master` has applied all it wrote,
    /// as `WAIT` would for the writer's own connection.
    pub fn wait_replicated(&self, master: usize, limit: Duration) {
        let port = self.nodes[master].port;
        let info = cli(port, &["INFO", "replication"]);
        let target: u64 = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("master_repl_offset:")?.parse().ok())
            .expect("master_repl_offset");
        wait_until("replicas to catch up", limit, || {
            // slaveN:ip=...,port=...,state=online,offset=123,lag=0
            let info = cli(port, &["INFO", "replication"]);
            let offsets: Vec<u64> = info
                .lines()
                .filter(|l| l.starts_with("slave"))
                .filter_map(|l| l.trim().split(',').find_map(|kv| kv.strip_prefix("offset=")?.parse().ok()))
                .collect();
            !offsets.is_empty() && offsets.iter().all(|&o| o >= target)
        });
    }

    pub fn flushall(&self) {
        for s in self.live_nodes() {
            if cli(s.port, &["INFO", "replication"]).contains("role:master") {
                s.flushall();
            }
        }
    }
}
