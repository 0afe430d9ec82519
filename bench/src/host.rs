//! The machine and the build a run reports: CPU model, memory, kernel,
//! filesystem, load average, revisions and versions of the tools.

use std::path::Path;

use crate::procs;
use crate::report::{Build, Machine, round1};

/// The machine, at the end of a run that started with `loadavg_before`;
/// `fsync` is the median and worst write + fdatasync in `tmp`, in µs.
pub fn machine(tmp: &Path, fsync: (f64, f64), loadavg_before: String) -> Machine {
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: cpu_model(),
        memory_total: mem_total(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        data_dir_filesystem: filesystem_of(tmp),
        fsync_p50_us: round1(fsync.0),
        fsync_max_us: round1(fsync.1),
        loadavg_before,
        loadavg_after: loadavg(),
    }
}

/// The server binary and the versions it was built and run with.
pub fn build(server: &Path) -> Build {
    Build {
        server_binary: server.display().to_string(),
        git_revision: git_revision(),
        rustc: command_line("rustc", &["--version"]),
        redis_server: command_line("redis-server", &["--version"])
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The first line of `java -version` (which writes to stderr).
pub fn java_version() -> String {
    std::process::Command::new("java")
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stderr).lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// How this run was started: `scripts/bench` passes its own command line.
pub fn invocation() -> String {
    std::env::var("STREAMCAP_BENCH_COMMAND")
        .unwrap_or_else(|_| std::env::args().map(|a| procs::shell_quote(&a)).collect::<Vec<_>>().join(" "))
}

pub fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn git_revision() -> String {
    let rev = command_line("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty { format!("{rev} (with uncommitted changes)") } else { rev }
}

/// "ext4 on /dev/vda (/tmp)": the filesystem type and source of `dir`.
fn filesystem_of(dir: &Path) -> String {
    let out = command_line("findmnt", &["-n", "-o", "FSTYPE,SOURCE", "-T", &dir.display().to_string()]);
    let mut f = out.split_whitespace();
    match (f.next(), f.next()) {
        (Some(t), Some(s)) => format!("{t} on {s} ({})", dir.display()),
        _ => dir.display().to_string(),
    }
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The CPU's model: `lscpu`'s "Model name" (in the C locale, so the
/// label is English), else /proc/cpuinfo's "model name".
fn cpu_model() -> String {
    let lscpu = std::process::Command::new("lscpu")
        .env("LC_ALL", "C")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| lscpu_model(&String::from_utf8_lossy(&o.stdout)));
    lscpu
        .or_else(|| {
            let c = std::fs::read_to_string("/proc/cpuinfo").ok()?;
            c.lines().find_map(|l| Some(l.strip_prefix("model name")?.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// "Model name:   AMD EPYC 7B13" from `lscpu`'s output (not "BIOS Model
/// name").
fn lscpu_model(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("Model name:"))
        .map(str::trim)
        .filter(|m| !m.is_empty() && *m != "-")
        .map(str::to_owned)
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib: f64 = m
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_model_name_from_lscpu() {
        let out = "Architecture:                            x86_64\n\
                   Vendor ID:                               AuthenticAMD\n\
                   BIOS Model name:                         pc-q35-8.2  CPU @ 2.0GHz\n\
                   Model name:                              AMD EPYC 7B13\n\
                   CPU family:                              25\n";
        assert_eq!(lscpu_model(out).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(lscpu_model("Model name:   -\n"), None);
        assert_eq!(lscpu_model("Architecture: aarch64\n"), None);
    }
}
