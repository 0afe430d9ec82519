//! The Redis measurements: what a decision costs Redis, next to what a
//! `SET` costs there, both measured in the same run on the same
//! redis-server. The harness knows nothing of how the store talks to
//! Redis: it counts whatever commands the decisions send.
//!
//! - **redis-server CPU per decision.** The whole process's CPU from
//!   /proc (utime + stime) over the mix windows, divided by the decisions
//!   answered in them: commands, parsing and network together. The load
//!   driver reads it as the store process's CPU per request.
//! - **The SET ceiling.** `redis-benchmark -c 64 -t set` (no pipelining)
//!   on the same redis-server, its CPU from /proc per SET. An error reply
//!   stops redis-benchmark, and Redis must count no error reply afterwards,
//!   or the run fails: a ceiling measured on errors would be garbage.
//! - **Commands per decision.** `INFO commandstats` since `CONFIG
//!   RESETSTAT` gives each command's calls and µs. A script's µs include
//!   the commands it calls, and those are listed on their own too. A
//!   `MONITOR` sample taken during the warm-up tells which share of each
//!   command's calls ran inside a script (`[0 lua]`): that share of its
//!   µs is not added again, and those calls are not commands the decision
//!   sent.
//! - **Keyspace.** On a fresh redis-server, the commands per decision with
//!   10,000 users in Redis, then with 1,000,000 (quick: 100,000).
//!
//! `set`: the SET ceiling, from `redis-benchmark`.

mod set;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use crate::Ctx;
use crate::load::{Pace, Work};
use crate::measure::{phase, server_args};
use crate::procs::{self, Redis, Server};
use crate::report::{CommandCost, CommandUse, Keyspace, KeyspacePoint, int, ratio, round3};
use crate::workload::{MixParams, Zipf};
pub use set::set_ceiling;

/// Users in Redis for the small keyspace; the large one is `--keyspace-users`.
pub const SMALL_KEYSPACE: u64 = 10_000;

/// What the harness itself sends to Redis inside a measured window; not
/// part of any decision.
const HARNESS_COMMANDS: [&str; 3] = ["config|resetstat", "info", "dbsize"];

/// One command's line of `INFO commandstats`.
#[derive(Clone, Copy, Default, PartialEq, Debug)]
pub struct CmdStat {
    pub calls: u64,
    pub usec: u64,
    pub failed_calls: u64,
    pub rejected_calls: u64,
}

/// `cmdstat_<name>:calls=…,usec=…,…` lines, by command name (subcommands
/// as `config|get`).
pub fn parse_commandstats(info: &str) -> BTreeMap<String, CmdStat> {
    info.lines()
        .filter_map(|l| {
            let (name, fields) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let mut s = CmdStat::default();
            for (k, v) in fields.split(',').filter_map(|kv| kv.split_once('=')) {
                let v = || v.parse::<u64>().ok();
                match k {
                    "calls" => s.calls = v()?,
                    "usec" => s.usec = v()?,
                    "failed_calls" => s.failed_calls = v()?,
                    "rejected_calls" => s.rejected_calls = v()?,
                    _ => {}
                }
            }
            Some((name.to_ascii_lowercase(), s))
        })
        .collect()
}

/// Calls per command name seen by `MONITOR`: made by a client, or from
/// inside a script.
#[derive(Clone, Default, PartialEq, Debug)]
pub struct MonitorSample {
    /// name → (calls by clients, calls inside scripts).
    pub calls: BTreeMap<String, (u64, u64)>,
}

impl MonitorSample {
    /// Counts one line of `MONITOR` output: `1700000000.123456 [0
    /// 127.0.0.1:5000] "get" "k"` for a client's command, `… [0 lua]
    /// "get" "k"` for one a script called. Other lines (`OK`) are skipped.
    pub fn count(&mut self, line: &str) {
        let Some((_, rest)) = line.split_once(" [") else { return };
        let Some((source, args)) = rest.split_once("] \"") else { return };
        let Some((name, _)) = args.split_once('"') else { return };
        let inside = source.split_whitespace().nth(1) == Some("lua");
        let entry = self.calls.entry(name.to_ascii_lowercase()).or_default();
        if inside {
            entry.1 += 1;
        } else {
            entry.0 += 1;
        }
    }

    pub fn lines(&self) -> u64 {
        self.calls.values().map(|(a, b)| a + b).sum()
    }

    /// The share of `name`'s calls made inside scripts. A subcommand
    /// (`config|get`) counts as its container, as `MONITOR` shows it.
    pub fn inside_share(&self, name: &str) -> f64 {
        let base = name.split('|').next().unwrap_or(name);
        match self.calls.get(base) {
            Some(&(outside, inside)) if outside + inside > 0 => inside as f64 / (outside + inside) as f64,
            _ => 0.0,
        }
    }
}

/// What the decisions of a window made Redis run, from `stats` (`INFO
/// commandstats` since `CONFIG RESETSTAT`), with the commands run inside
/// scripts told apart by `sample`.
pub fn command_cost(stats: &BTreeMap<String, CmdStat>, sample: &MonitorSample, decisions: u64) -> CommandCost {
    let per = |v: f64| ratio(v, decisions as f64);
    let ours = stats.iter().filter(|(name, _)| !HARNESS_COMMANDS.contains(&name.as_str()));
    let (mut sent, mut usec) = (0.0, 0.0);
    let commands: Vec<CommandUse> = ours
        .map(|(name, s)| {
            let inside = sample.inside_share(name);
            sent += s.calls as f64 * (1.0 - inside);
            usec += s.usec as f64 * (1.0 - inside);
            CommandUse {
                name: name.clone(),
                calls: s.calls,
                usec: s.usec,
                failed_calls: s.failed_calls,
                calls_per_decision: per(s.calls as f64),
                usec_per_decision: per(s.usec as f64),
                inside_scripts: round3(inside),
            }
        })
        .collect();
    CommandCost {
        decisions,
        sent_per_decision: per(sent),
        usec: usec.round() as u64,
        usec_per_decision: per(usec),
        failed_calls: commands.iter().map(|c| c.failed_calls).sum(),
        keys: None,
        monitor_sample_lines: Some(sample.lines()),
        commands,
    }
}

/// The commands of the `decisions` answered since the last `CONFIG
/// RESETSTAT`.
pub fn read_cost(r: &Redis, sample: &MonitorSample, decisions: u64) -> Result<CommandCost, String> {
    Ok(command_cost(&parse_commandstats(&r.cli(&["INFO", "commandstats"])?), sample, decisions))
}

/// `redis-cli MONITOR` running next to a workload, counting what it sees.
struct Monitor {
    child: Child,
    counts: Arc<Mutex<MonitorSample>>,
    reader: std::thread::JoinHandle<()>,
}

impl Monitor {
    /// Starts `MONITOR` and waits (at most 10 s) until Redis has confirmed it.
    fn start(r: &Redis) -> Result<Monitor, String> {
        let bin = procs::which("redis-cli").ok_or("redis-cli is not installed (scripts/bench installs it)")?;
        let mut child = Command::new(bin)
            .args(["-h", "127.0.0.1", "-p", &r.port.to_string(), "MONITOR"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-cli MONITOR: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let counts = Arc::new(Mutex::new(MonitorSample::default()));
        let keep = counts.clone();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
                keep.lock().unwrap_or_else(|e| e.into_inner()).count(&line);
            }
        });
        let mut monitor = Monitor { child, counts, reader };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => Ok(monitor),
            Err(_) => {
                let _ = monitor.child.kill();
                let _ = monitor.child.wait();
                Err("redis-cli MONITOR did not answer within 10 s".into())
            }
        }
    }

    /// Stops it (by its PID) and returns what it counted.
    fn stop(mut self) -> MonitorSample {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
        std::mem::take(&mut *self.counts.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Runs the phase `run` while `MONITOR` watches `r`, and returns which
/// commands ran inside scripts. `MONITOR` costs Redis CPU: only warm-ups
/// run under it, never a measured window.
pub fn sample_while<T>(
    ctx: &mut Ctx,
    r: &Redis,
    run: impl FnOnce(&mut Ctx) -> Result<T, String>,
) -> Result<(T, MonitorSample), String> {
    let monitor = Monitor::start(r)?;
    let out = run(ctx);
    let sample = monitor.stop();
    let out = out?;
    if sample.lines() == 0 {
        return Err("MONITOR saw no command during the warm-up".into());
    }
    Ok((out, sample))
}

/// The commands per decision with `SMALL_KEYSPACE` users in Redis, then
/// with `--keyspace-users`. A fresh redis-server and server (leases live
/// a day, so none expires meanwhile); the fill gives every user one
/// lease, then the mix runs over those same users, Zipf-skewed as usual.
/// `sample` tells the commands run inside scripts apart (taken on the
/// same binary during the store's warm-up).
pub fn keyspace(ctx: &mut Ctx, sample: &MonitorSample) -> Result<Keyspace, String> {
    let redis = Redis::start(&ctx.commands)?;
    let args = server_args("redis", None, Some(&redis), &["--lease-ttl", "86400"]);
    let server = Server::start(&ctx.args.server, &args, Duration::from_secs(60), &ctx.commands)?;
    let watch = [server.pid(), redis.pid()];
    let mut points = Vec::new();
    let mut filled = 0;
    for users in [SMALL_KEYSPACE, ctx.keyspace_users.max(SMALL_KEYSPACE)] {
        let name = format!("fill to {} users", int(users as f64));
        let work = Work::Fill { start: filled, total: users, users };
        let fill = phase(ctx, &name, server.addr, work, Pace::Fill, Duration::from_secs(1800), &watch)?;
        let created = fill.statuses.get("acquire 201").copied().unwrap_or(0);
        if created != users - filled {
            ctx.failures.push(format!("redis keyspace: {created} of {} fill leases were created", users - filled));
        }
        filled = users;
        let work = Work::Mix(MixParams {
            zipf: Arc::new(Zipf::new(users as usize, ctx.args.zipf)),
            renewals: ctx.args.renewals,
            sessions: ctx.args.sessions.max(1),
            user_prefix: "f",
        });
        redis.cli(&["CONFIG", "RESETSTAT"])?;
        let name = format!("mix over {} users", int(users as f64));
        let mix = phase(ctx, &name, server.addr, work, Pace::Closed, ctx.mix, &watch)?;
        let mut commands = read_cost(&redis, sample, mix.requests + mix.drained)?;
        commands.keys = redis.cli(&["DBSIZE"])?.trim().parse().ok();
        eprintln!(
            "   {:<28} {} commands sent and {} µs in Redis per decision ({}), redis-server CPU {} µs per decision, {} keys",
            "",
            commands.sent_per_decision.map_or("–".into(), |v| format!("{v:.2}")),
            commands.usec_per_decision.map_or("–".into(), |v| format!("{v:.1}")),
            commands.summary(),
            mix.cpu.store_us_per_request.map_or("–".into(), |v| format!("{v:.1}")),
            commands.keys.unwrap_or(0)
        );
        points.push(KeyspacePoint {
            users,
            fill_seconds: fill.seconds,
            fill_throughput: fill.throughput,
            mix,
            commands,
        });
    }
    server.terminate(Duration::from_secs(60))?;
    let per = |p: Option<&KeyspacePoint>| p.and_then(|p| p.commands.usec_per_decision);
    let cpu = |p: Option<&KeyspacePoint>| p.and_then(|p| p.mix.cpu.store_us_per_request);
    let growth_of = |f: &dyn Fn(Option<&KeyspacePoint>) -> Option<f64>| match (f(points.first()), f(points.last())) {
        (Some(small), Some(large)) => ratio(large, small),
        _ => None,
    };
    let (growth, cpu_growth) = (growth_of(&per), growth_of(&cpu));
    Ok(Keyspace { points, growth, cpu_growth })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Redis 7 prints after a window in which each of 1,000 decisions
    /// sent one pipelined MGET and TIME, 500 of them then an EVALSHA of a
    /// script that called GET and SET (250 times each) and TIME (500
    /// times); the harness read the stats with CONFIG RESETSTAT and INFO.
    const COMMANDSTATS: &str = "# Commandstats\r\n\
        cmdstat_mget:calls=1000,usec=3000,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_time:calls=1500,usec=1500,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_evalsha:calls=500,usec=10000,usec_per_call=20.00,rejected_calls=0,failed_calls=2\r\n\
        cmdstat_get:calls=250,usec=250,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_set:calls=250,usec=500,usec_per_call=2.00,rejected_calls=1,failed_calls=0\r\n\
        cmdstat_config|resetstat:calls=1,usec=34,usec_per_call=34.00,rejected_calls=0,failed_calls=0\r\n";

    /// MONITOR lines of that workload: TIME both from the client and
    /// inside the script, GET and SET only inside it.
    const MONITOR: &str = "OK\n\
        1796615819.116604 [0 127.0.0.1:55528] \"mget\" \"sc:{u1}:s\" \"sc:{u1}:o\"\n\
        1796615819.116610 [0 127.0.0.1:55528] \"time\"\n\
        1796615819.116685 [0 127.0.0.1:55528] \"evalsha\" \"abc\" \"2\" \"sc:{u1}:s\" \"sc:{u1}:o\" \"x y\"\n\
        1796615819.116690 [0 lua] \"time\"\n\
        1796615819.116725 [0 lua] \"SET\" \"sc:{u1}:s\" \"a \\\"quoted\\\" value\"\n\
        1796615819.116742 [0 lua] \"get\" \"sc:{u1}:o\"\n\
        1796615819.128283 [0 unix:/tmp/redis.sock] \"mget\" \"a\" \"b\"\n\
        1796615819.128290 [0 127.0.0.1:55534] \"time\"\n\
        1796615819.161592 [0 127.0.0.1:55564] \"config\" \"resetstat\"\n";

    fn sample() -> MonitorSample {
        let mut s = MonitorSample::default();
        MONITOR.lines().for_each(|l| s.count(l));
        s
    }

    #[test]
    fn reads_commandstats() {
        let stats = parse_commandstats(COMMANDSTATS);
        assert_eq!(stats.len(), 6);
        assert_eq!(stats["evalsha"], CmdStat { calls: 500, usec: 10000, failed_calls: 2, rejected_calls: 0 });
        assert_eq!(stats["config|resetstat"].usec, 34);
        assert_eq!(stats["set"].rejected_calls, 1);
        assert!(parse_commandstats("# Commandstats\r\n").is_empty());
    }

    #[test]
    fn monitor_tells_calls_inside_scripts_apart() {
        let s = sample();
        assert_eq!(s.calls["mget"], (2, 0));
        assert_eq!(s.calls["time"], (2, 1));
        assert_eq!(s.calls["set"], (0, 1));
        assert_eq!(s.calls["evalsha"], (1, 0));
        assert_eq!(s.lines(), 9);
        assert_eq!(s.inside_share("get"), 1.0);
        assert!((s.inside_share("time") - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.inside_share("config|resetstat"), 0.0);
        assert_eq!(s.inside_share("never-seen"), 0.0);
    }

    #[test]
    fn a_decision_counts_each_command_it_sends_once() {
        // From the sample, a third of TIME's calls ran inside the script
        // (here it is exactly so: 500 of 1,500).
        let cost = command_cost(&parse_commandstats(COMMANDSTATS), &sample(), 1000);
        let names: Vec<&str> = cost.commands.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["evalsha", "get", "mget", "set", "time"], "the harness's CONFIG RESETSTAT is left out");
        let time = &cost.commands[4];
        assert_eq!((time.calls_per_decision, time.usec_per_decision), (Some(1.5), Some(1.5)));
        assert_eq!(time.inside_scripts, 0.333);
        // Sent: 1,000 MGET + 1,000 TIME + 500 EVALSHA.
        assert_eq!(cost.sent_per_decision, Some(2.5));
        // µs: MGET 3,000 + two thirds of TIME's 1,500 + EVALSHA 10,000 (which
        // holds GET's, SET's and the script's own TIME).
        assert_eq!(cost.usec, 14_000);
        assert_eq!(cost.usec_per_decision, Some(14.0));
        assert_eq!(cost.failed_calls, 2);
        assert_eq!(cost.monitor_sample_lines, Some(9));
        assert_eq!(command_cost(&BTreeMap::new(), &sample(), 0).usec_per_decision, None);
    }
}
