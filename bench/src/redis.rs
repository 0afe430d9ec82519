//! The Redis measurements: what a decision costs inside Redis, next to what
//! a `SET` costs there, both measured in the same run.
//!
//! - **Per decision.** `INFO commandstats` counts the calls of each command
//!   and the µs spent in them since `CONFIG RESETSTAT`. A script's time
//!   includes the commands it calls (which are also listed on their own, so
//!   they are not added again): the cost of the decisions in a window is the
//!   µs of the script-invocation commands (EVALSHA, EVAL, FCALL and their
//!   read-only forms) divided by the lease requests answered over HTTP.
//! - **Ceilings.** `redis-benchmark`, at the same concurrency as the HTTP
//!   phases, runs the server's own script through EVALSHA (one acquire) and
//!   plain `SET`s. An error reply stops redis-benchmark, and Redis must
//!   count no error reply afterwards, or the run fails: a ceiling measured
//!   on errors would be garbage.
//! - **Keyspace.** On a fresh redis-server, the cost per decision with
//!   10,000 users in Redis, then with 1,000,000 (quick: 100,000).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::load::{Pace, Work};
use crate::procs::{self, Redis, Server};
use crate::report::{Keyspace, KeyspacePoint, RedisCeiling, ScriptCost, SetCeiling, int, ratio, round1, round3};
use crate::workload::{MixParams, Zipf};
use crate::{Ctx, phase, server_args};

/// The server's own decision script, from the same tree as the binary.
const SCRIPT: &str = include_str!("../../tests/fixtures/previous-release/decide.lua");

/// What redis-benchmark sends after `EVALSHA <sha>`: the number of keys,
/// the keys, then the arguments, in decide.lua's argument format. One
/// acquire of a random stream for a random user, with the server's default
/// limit (3) and TTL (60 s), rejecting when the seats are taken;
/// redis-benchmark replaces each `__rand_int__` with its own random number
/// below `-r`. When the script's arguments change, change only this.
const EVALSHA_ACQUIRE_ARGS: &[&str] = &[
    "2",
    "sc:{u__rand_int__}:s",
    "sc:{u__rand_int__}:o",
    "acquire",
    "",
    "s__rand_int__",
    "3",
    "60000000",
    "reject",
    "1",
    "=tv-000001",
    "=title-00001",
];

/// The commands that run a script or a function. Each one's time includes
/// the commands the script calls.
const SCRIPT_COMMANDS: [&str; 6] = ["evalsha", "evalsha_ro", "eval", "eval_ro", "fcall", "fcall_ro"];

/// Users in Redis for the small keyspace; the large one is `--keyspace-users`.
pub const SMALL_KEYSPACE: u64 = 10_000;

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

/// The script-invocation commands, summed.
pub fn script_totals(stats: &BTreeMap<String, CmdStat>) -> CmdStat {
    SCRIPT_COMMANDS.iter().filter_map(|c| stats.get(*c)).fold(CmdStat::default(), |a, s| CmdStat {
        calls: a.calls + s.calls,
        usec: a.usec + s.usec,
        failed_calls: a.failed_calls + s.failed_calls,
        rejected_calls: a.rejected_calls + s.rejected_calls,
    })
}

/// `total_error_replies` from `INFO stats`.
fn error_replies(info: &str) -> Option<u64> {
    info.lines().find_map(|l| l.trim().strip_prefix("total_error_replies:")?.parse().ok())
}

/// The cost inside Redis of the `decisions` answered since the last
/// `CONFIG RESETSTAT`. `INFO commandstats` times a command by the clock,
/// so time the Redis thread spent preempted inside a script counts too:
/// on a busy machine this view reads high, and redis-server's CPU from
/// /proc is the second view.
pub fn script_cost(r: &Redis, decisions: u64) -> Result<ScriptCost, String> {
    let s = script_totals(&parse_commandstats(&r.cli(&["INFO", "commandstats"])?));
    Ok(ScriptCost {
        calls: s.calls,
        usec: s.usec,
        failed_calls: s.failed_calls,
        decisions,
        usec_per_decision: ratio(s.usec as f64, decisions as f64),
        calls_per_decision: ratio(s.calls as f64, decisions as f64),
        keys: None,
    })
}

/// The two redis-benchmark ceilings, EVALSHA then SET. A ceiling that
/// could not be measured is a failure of the run, never a number.
pub fn ceilings(ctx: &mut Ctx, r: &Redis, mix: Option<&ScriptCost>) -> (Option<RedisCeiling>, Option<SetCeiling>) {
    let evalsha = evalsha_ceiling(ctx, r, mix)
        .map_err(|e| {
            ctx.failures.push(format!(
                "redis-benchmark EVALSHA: {e} (is EVALSHA_ACQUIRE_ARGS in bench/src/redis.rs in decide.lua's argument format?)"
            ))
        })
        .ok();
    // As many SETs as the EVALSHA ceiling sent decisions.
    let n = evalsha.as_ref().map_or(200_000, |c| c.requests);
    let set = set_ceiling(ctx, r, n).map_err(|e| ctx.failures.push(format!("redis-benchmark SET: {e}"))).ok();
    (evalsha, set)
}

fn cached_scripts(r: &Redis) -> Result<u64, String> {
    let info = r.cli(&["INFO", "memory"])?;
    info.lines()
        .find_map(|l| l.strip_prefix("number_of_cached_scripts:")?.trim().parse().ok())
        .ok_or_else(|| "INFO memory has no number_of_cached_scripts".into())
}

/// `redis-benchmark` running the server's script through EVALSHA, at the
/// same concurrency as the HTTP phases, over `--users` random users.
fn evalsha_ceiling(ctx: &mut Ctx, r: &Redis, mix: Option<&ScriptCost>) -> Result<RedisCeiling, String> {
    // The server loaded its script already. If ours is the same text, Redis
    // still caches exactly one script after we load it.
    let before = cached_scripts(r)?;
    let sha = r.cli(&["SCRIPT", "LOAD", SCRIPT])?;
    let same_script = before == 1 && cached_scripts(r)? == 1;
    if !same_script {
        ctx.failures.push(format!(
            "redis: the script redis-benchmark runs ({sha}) differs from the server's (cached scripts: {before} before loading it)"
        ));
    }
    let args = |ctx: &Ctx, n: u64| -> Vec<String> {
        let mut a = common_args(ctx, r, n);
        a.extend(["EVALSHA".to_owned(), sha.clone()]);
        a.extend(EVALSHA_ACQUIRE_ARGS.iter().map(|s| s.to_string()));
        a
    };
    // A short pilot sizes the real run to last about as long as the mix.
    let pilot = benchmark(ctx, r, &args(ctx, 20_000), "EVALSHA", false, Duration::from_secs(120))?;
    let n = ((pilot.rps * ctx.mix.as_secs_f64()) as u64).clamp(20_000, 50_000_000);
    let limit = ctx.mix.mul_f64(4.0) + Duration::from_secs(60);
    let run = benchmark(ctx, r, &args(ctx, n), "EVALSHA", true, limit)?;
    let ceiling_us = run.stats.get("evalsha").and_then(|s| ratio(s.usec as f64, s.calls as f64));
    eprintln!(
        "   {:<28} {:>9.0} req/s  p50 {:>8.1} µs  p99 {:>8.1} µs  (in Redis: {} µs/call; mix: {} µs/decision)",
        "redis-benchmark EVALSHA",
        run.rps,
        run.p50_ms * 1000.0,
        run.p99_ms * 1000.0,
        ceiling_us.map_or("–".into(), |v| format!("{v:.1}")),
        mix.and_then(|m| m.usec_per_decision).map_or("–".into(), |v| format!("{v:.1}")),
    );
    Ok(RedisCeiling {
        command: run.command,
        requests: n,
        throughput: round1(run.rps),
        avg_ms: run.avg_ms,
        p50_ms: run.p50_ms,
        p99_ms: run.p99_ms,
        max_ms: run.max_ms,
        benchmark_cpu_cores: run.benchmark_cores,
        redis_cores: run.redis_cores,
        evalsha_us_in_redis: ceiling_us,
        mix_evalsha_us_in_redis: mix.and_then(|m| ratio(m.usec as f64, m.calls as f64)),
        same_script_as_server: same_script,
        redis_cpu_us_per_call: Some(run.redis_cpu_us_per_request),
    })
}

/// `redis-benchmark -t set`: `n` SETs of random keys, the same concurrency.
fn set_ceiling(ctx: &mut Ctx, r: &Redis, n: u64) -> Result<SetCeiling, String> {
    let mut args = common_args(ctx, r, n);
    args.extend(["-t".to_owned(), "set".to_owned()]);
    let run = benchmark(ctx, r, &args, "SET", true, Duration::from_secs(300))?;
    let set = run.stats.get("set").copied().unwrap_or_default();
    let usec_per_call = ratio(set.usec as f64, set.calls as f64).ok_or("INFO commandstats counted no SET")?;
    eprintln!(
        "   {:<28} {:>9.0} req/s  p50 {:>8.1} µs  p99 {:>8.1} µs  (in Redis: {usec_per_call:.2} µs/call)",
        "redis-benchmark SET",
        run.rps,
        run.p50_ms * 1000.0,
        run.p99_ms * 1000.0
    );
    Ok(SetCeiling {
        command: run.command,
        requests: n,
        throughput: round1(run.rps),
        p50_ms: run.p50_ms,
        p99_ms: run.p99_ms,
        usec_per_call,
        redis_cpu_us_per_call: run.redis_cpu_us_per_request,
        redis_cores: run.redis_cores,
        benchmark_cpu_cores: run.benchmark_cores,
    })
}

fn common_args(ctx: &Ctx, r: &Redis, n: u64) -> Vec<String> {
    let (port, c, u) = (r.port.to_string(), ctx.args.connections.to_string(), ctx.args.users.to_string());
    ["-h", "127.0.0.1", "-p", &port, "-c", &c, "-n", &n.to_string(), "-r", &u, "--csv"].map(String::from).to_vec()
}

/// One redis-benchmark run on an empty keyspace.
struct BenchRun {
    command: String,
    rps: f64,
    avg_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    benchmark_cores: f64,
    redis_cores: f64,
    redis_cpu_us_per_request: f64,
    stats: BTreeMap<String, CmdStat>,
}

/// Runs redis-benchmark on an empty keyspace with fresh statistics and
/// checks that Redis answered no error and counted every request of `test`.
fn benchmark(
    ctx: &mut Ctx,
    r: &Redis,
    args: &[String],
    test: &str,
    record: bool,
    limit: Duration,
) -> Result<BenchRun, String> {
    let bench =
        procs::which("redis-benchmark").ok_or("redis-benchmark is not installed (scripts/bench installs it)")?;
    r.cli(&["FLUSHALL"])?;
    r.cli(&["CONFIG", "RESETSTAT"])?;
    if record {
        ctx.commands.record("redis-benchmark", args);
    }
    let (kids0, redis0, t) = (procs::children_cpu_seconds(), procs::cpu_seconds(&r.pid().to_string()), Instant::now());
    let out = procs::run_bounded(&bench, args, limit)?;
    let wall = t.elapsed().as_secs_f64();
    let (kids1, redis1) = (procs::children_cpu_seconds(), procs::cpu_seconds(&r.pid().to_string()));
    let stats = parse_commandstats(&r.cli(&["INFO", "commandstats"])?);
    let errors = error_replies(&r.cli(&["INFO", "stats"])?).ok_or("INFO stats has no total_error_replies")?;
    if errors > 0 {
        let kinds = r.cli(&["INFO", "errorstats"])?.lines().skip(1).collect::<Vec<_>>().join(", ");
        return Err(format!("Redis answered {errors} error replies ({kinds})"));
    }
    let n: u64 = args.iter().skip_while(|a| *a != "-n").nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
    let calls = stats.get(&test.to_ascii_lowercase()).map_or(0, |s| s.calls);
    if calls < n {
        return Err(format!("Redis counted {calls} {test} calls for {n} requests"));
    }
    let (rps, avg_ms, p50_ms, p99_ms, max_ms) = parse_redis_csv(&out, test)?;
    Ok(BenchRun {
        command: std::iter::once("redis-benchmark".to_owned())
            .chain(args.iter().map(|a| procs::shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" "),
        rps,
        avg_ms,
        p50_ms,
        p99_ms,
        max_ms,
        benchmark_cores: round3((kids1 - kids0) / wall),
        redis_cores: round3((redis1 - redis0) / wall),
        redis_cpu_us_per_request: round1((redis1 - redis0) * 1e6 / n.max(1) as f64),
        stats,
    })
}

/// rps, avg, p50, p99 and max (ms) of `test` from `redis-benchmark --csv`.
/// The test name of a command holds the command, commas and quotes
/// included, so read from the end.
pub fn parse_redis_csv(out: &str, test: &str) -> Result<(f64, f64, f64, f64, f64), String> {
    let line = out
        .lines()
        .rfind(|l| l.strip_prefix('"').is_some_and(|l| l.starts_with(test)))
        .ok_or_else(|| format!("no {test} result in: {out}"))?;
    let f: Vec<f64> = line
        .rsplitn(8, ',')
        .take(7)
        .map(|v| v.trim_matches('"').parse::<f64>().map_err(|e| format!("{v}: {e}")))
        .collect::<Result<_, _>>()?;
    // Reversed: max, p99, p95, p50, min, avg, rps.
    Ok((f[6], f[5], f[3], f[1], f[0]))
}

/// The cost per decision with `SMALL_KEYSPACE` users in Redis, then with
/// `--keyspace-users`. A fresh redis-server and server (leases live a
/// day, so none expires meanwhile); the fill gives every user one lease,
/// then the mix runs over those same users, Zipf-skewed as usual.
pub fn keyspace(ctx: &mut Ctx) -> Result<Keyspace, String> {
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
        let mut cost = script_cost(&redis, mix.requests + mix.drained)?;
        cost.keys = redis.cli(&["DBSIZE"])?.trim().parse().ok();
        eprintln!(
            "   {:<28} {} µs per decision inside Redis, {} keys",
            "",
            cost.usec_per_decision.map_or("–".into(), |v| format!("{v:.1}")),
            cost.keys.unwrap_or(0)
        );
        points.push(KeyspacePoint { users, fill_seconds: fill.seconds, fill_throughput: fill.throughput, mix, cost });
    }
    server.terminate(Duration::from_secs(60))?;
    let per = |p: Option<&KeyspacePoint>| p.and_then(|p| p.cost.usec_per_decision);
    let growth = match (per(points.first()), per(points.last())) {
        (Some(small), Some(large)) => ratio(large, small),
        _ => None,
    };
    Ok(Keyspace { points, growth })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"EVALSHA abc 2 sc:{u__rand_int__}:s acquire  {\"stream\":\"s\",\"limit\":3}\",\"38461.54\",\"1.548\",\"0.440\",\"1.463\",\"2.399\",\"2.967\",\"5.439\"\n";
        assert_eq!(parse_redis_csv(out, "EVALSHA").unwrap(), (38461.54, 1.548, 1.463, 2.967, 5.439));
        assert!(parse_redis_csv(out, "SET").is_err());
        let set = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"SET\",\"55555.56\",\"0.048\",\"0.016\",\"0.047\",\"0.071\",\"0.095\",\"0.231\"\n";
        assert_eq!(parse_redis_csv(set, "SET").unwrap(), (55555.56, 0.048, 0.047, 0.095, 0.231));
        assert!(parse_redis_csv("nothing", "SET").is_err());
    }

    /// What Redis 7 prints, with a script that called HGETALL, GET and HSET.
    const COMMANDSTATS: &str = "# Commandstats\r\n\
        cmdstat_evalsha:calls=1000,usec=23500,usec_per_call=23.50,rejected_calls=0,failed_calls=2\r\n\
        cmdstat_eval:calls=2,usec=100,usec_per_call=50.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_fcall_ro:calls=8,usec=400,usec_per_call=50.00,rejected_calls=1,failed_calls=0\r\n\
        cmdstat_hgetall:calls=1010,usec=3030,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_hset:calls=900,usec=900,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_config|resetstat:calls=1,usec=34,usec_per_call=34.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_set:calls=200000,usec=260000,usec_per_call=1.30,rejected_calls=0,failed_calls=0\r\n";

    #[test]
    fn reads_commandstats() {
        let stats = parse_commandstats(COMMANDSTATS);
        assert_eq!(stats.len(), 7);
        assert_eq!(stats["evalsha"], CmdStat { calls: 1000, usec: 23500, failed_calls: 2, rejected_calls: 0 });
        assert_eq!(stats["config|resetstat"].usec, 34);
        assert_eq!(stats["set"].calls, 200_000);
        assert!(parse_commandstats("# Commandstats\r\n").is_empty());
    }

    #[test]
    fn a_decision_costs_its_script_calls_only() {
        // The commands the scripts called are inside the scripts' time: not added again.
        let total = script_totals(&parse_commandstats(COMMANDSTATS));
        assert_eq!(total, CmdStat { calls: 1010, usec: 24000, failed_calls: 2, rejected_calls: 1 });
        assert_eq!(script_totals(&BTreeMap::new()), CmdStat::default());
    }

    #[test]
    fn reads_error_replies() {
        assert_eq!(error_replies("# Stats\r\ntotal_error_replies:4\r\nunexpected_error_replies:0\r\n"), Some(4));
        assert_eq!(error_replies("# Stats\r\n"), None);
    }

    #[test]
    fn evalsha_args_name_their_keys() {
        let keys: usize = EVALSHA_ACQUIRE_ARGS[0].parse().unwrap();
        assert!(keys < EVALSHA_ACQUIRE_ARGS.len());
        assert!(EVALSHA_ACQUIRE_ARGS[1..=keys].iter().all(|k| k.starts_with("sc:{")), "{EVALSHA_ACQUIRE_ARGS:?}");
    }
}
