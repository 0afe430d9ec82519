//! What /proc says: a process's resident memory, CPU time and run-queue
//! wait; the machine's busy and stolen CPU; and the data dir's fsync
//! latency.

use std::path::Path;
use std::time::{Duration, Instant};

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

#[cfg(test)]
mod tests {
    use super::*;

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
