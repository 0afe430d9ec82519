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
//!
//! `procfs`: what /proc says about a process and the machine; `stores`:
//! redis-server and DynamoDB Local.

mod procfs;
mod stores;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub use procfs::{
    children_cpu_seconds, cpu_seconds, fsync_latency, machine_cpu_seconds, rss_bytes, runqueue_wait_seconds,
};
pub use stores::{DynamoLocal, Redis};

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

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
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
    fn turns_a_panic_into_its_message() {
        assert_eq!(quietly(|| 7), Ok(7));
        assert_eq!(quietly(|| -> u8 { panic!("no {}", "jar") }), Err("no jar".to_owned()));
    }
}
