//! Real `redis-server` processes for tests: standalone or a Cluster, on free
//! loopback ports, each in its own temp dir, stopped by PID on drop. Tests
//! never touch a Redis they did not start here. A server or cluster may
//! speak TLS only, with certificates made by the `openssl` CLI
//! ([`TlsFiles`]).
//!
//! Shared by the unit tests (as `store::redis::harness`) and the integration
//! tests (through `#[path]`), so it uses only std and `tempfile`.
#![allow(dead_code)] // each test crate uses a different part of it

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// One `redis-server` process.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    /// The certificates of a server that speaks only TLS.
    tls: Option<Arc<TlsFiles>>,
    /// Its `requirepass`, if any.
    password: Option<String>,
    _dir: tempfile::TempDir,
}

/// A test CA, a certificate it signed for 127.0.0.1 and localhost (the
/// server's), and a second CA that signed nothing here, all made with the
/// `openssl` CLI in a temp dir of their own.
pub struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    pub fn generate() -> Arc<TlsFiles> {
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new(binary("openssl")).args(args).current_dir(dir.path()).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        for (name, subject) in [("ca", "/CN=streamcap test CA"), ("other-ca", "/CN=another test CA")] {
            let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
            openssl(
                &[&["req", "-x509"], &ec[..], &["-keyout", &key, "-out", &crt, "-days", "2", "-subj", subject]]
                    .concat(),
            );
        }
        openssl(
            &[&["req"], &ec[..], &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]].concat(),
        );
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        Arc::new(TlsFiles { dir })
    }

    /// The CA that signed the server's certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A CA that did not.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.crt")
    }

    fn server_args(&self) -> Vec<String> {
        let path = |name: &str| self.dir.path().join(name).to_str().unwrap().to_owned();
        let mut args =
            vec!["--tls-cert-file".to_owned(), path("server.crt"), "--tls-key-file".into(), path("server.key")];
        args.extend(["--tls-ca-cert-file".into(), path("ca.crt"), "--tls-auth-clients".into(), "no".into()]);
        args
    }
}

fn binary(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()));
    let package = if name == "openssl" { "openssl" } else { "redis-server" };
    found
        .unwrap_or_else(|| panic!("{name} is not installed; ./scripts/test installs it (apt-get install -y {package})"))
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
    cli_with(port, None, None, args)
}

/// `redis-cli`, over TLS with `ca` and with a password when given.
fn cli_with(port: u16, ca: Option<&Path>, password: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new(binary("redis-cli"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(ca) = ca {
        cmd.arg("--tls").arg("--cacert").arg(ca);
    }
    if let Some(password) = password {
        cmd.args(["-a", password, "--no-auth-warning"]);
    }
    let out = cmd.args(args).stdin(Stdio::null()).output().unwrap();
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
        Self::spawn(port, None, None, extra)
    }

    /// A server that speaks only TLS, with the certificate `tls` made, and
    /// with `requirepass` (and `masterauth`, for a cluster's replicas)
    /// when `password` is given.
    pub fn start_tls(tls: &Arc<TlsFiles>, password: Option<&str>, extra: &[&str]) -> RedisServer {
        Self::spawn(free_port(), Some(tls.clone()), password, extra)
    }

    fn spawn(port: u16, tls: Option<Arc<TlsFiles>>, password: Option<&str>, extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let mut listen = vec!["--port".to_owned(), port.to_string()];
        if let Some(tls) = &tls {
            listen = vec!["--port".into(), "0".into(), "--tls-port".into(), port.to_string()];
            listen.extend(tls.server_args());
        }
        if let Some(password) = password {
            listen.extend(["--requirepass".into(), password.into(), "--masterauth".into(), password.into()]);
        }
        let child = Command::new(binary("redis-server"))
            .args(listen)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning"])
            .args(extra)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let password = password.map(str::to_owned);
        let server = RedisServer { child, port, tls, password, _dir: dir };
        wait_until(&format!("redis-server on port {port}"), Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok() && server.cli(&["PING"]).contains("PONG")
        });
        server
    }

    /// `redis-cli` on this server, over TLS and with its password if it
    /// has them.
    pub fn cli(&self, args: &[&str]) -> String {
        cli_with(self.port, self.tls.as_ref().map(|t| t.ca()).as_deref(), self.password.as_deref(), args)
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://:PASSWORD@127.0.0.1:PORT`
    /// for a TLS server with a password.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        let auth = self.password.as_ref().map(|p| format!(":{p}@")).unwrap_or_default();
        format!("{scheme}://{auth}127.0.0.1:{}", self.port)
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
        assert!(self.cli(&["FLUSHALL"]).contains("OK"));
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

const CLUSTER_ARGS: [&str; 8] = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "1000",
    // A replica may take over even if it lagged a little.
    "--cluster-replica-validity-factor",
    "0",
];

impl RedisCluster {
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let nodes = (0..masters * (1 + replicas)).map(|_| RedisServer::start(&CLUSTER_ARGS)).collect();
        Self::create(nodes, replicas)
    }

    /// A cluster that speaks only TLS, between its nodes too
    /// (`tls-cluster`, `tls-replication`), with `password` on every node
    /// when given.
    pub fn start_tls(tls: &Arc<TlsFiles>, password: Option<&str>, masters: usize, replicas: usize) -> RedisCluster {
        let mut args = CLUSTER_ARGS.to_vec();
        args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
        let nodes = (0..masters * (1 + replicas)).map(|_| RedisServer::start_tls(tls, password, &args)).collect();
        Self::create(nodes, replicas)
    }

    fn create(nodes: Vec<RedisServer>, replicas: usize) -> RedisCluster {
        let addrs: Vec<String> = nodes.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        let replicas = replicas.to_string();
        args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        let out = nodes[0].cli(&args);
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
                s.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") && {
                    let info = s.cli(&["INFO", "replication"]);
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
        let slot: u16 = node.cli(&["CLUSTER", "KEYSLOT", key]).trim().parse().unwrap();
        for line in node.cli(&["CLUSTER", "NODES"]).lines() {
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
        let node = &self.nodes[master];
        let info = node.cli(&["INFO", "replication"]);
        let target: u64 = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("master_repl_offset:")?.parse().ok())
            .expect("master_repl_offset");
        wait_until("replicas to catch up", limit, || {
            // slaveN:ip=...,port=...,state=online,offset=123,lag=0
            let info = node.cli(&["INFO", "replication"]);
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
            if s.cli(&["INFO", "replication"]).contains("role:master") {
                s.flushall();
            }
        }
    }
}
