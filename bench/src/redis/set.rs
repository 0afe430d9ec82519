//! The unit of Redis CPU: `redis-benchmark`'s SETs on the same
//! redis-server, their CPU from /proc per SET. An error reply stops the
//! run: a ceiling measured on errors would be garbage.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{CmdStat, parse_commandstats};
use crate::Ctx;
use crate::procs::{self, Redis};
use crate::report::{SetCeiling, ratio, round1, round3};

/// `total_error_replies` from `INFO stats`.
fn error_replies(info: &str) -> Option<u64> {
    info.lines().find_map(|l| l.trim().strip_prefix("total_error_replies:")?.parse().ok())
}

/// The SET ceiling: `redis-benchmark -c <connections> -t set` of random
/// keys, no pipelining, on `r`. A short pilot sizes the run to last about
/// as long as the mix. A ceiling that could not be measured is a failure
/// of the run, never a number.
pub fn set_ceiling(ctx: &mut Ctx, r: &Redis) -> Option<SetCeiling> {
    set_ceiling_run(ctx, r).map_err(|e| ctx.failures.push(format!("redis-benchmark SET: {e}"))).ok()
}

fn set_ceiling_run(ctx: &mut Ctx, r: &Redis) -> Result<SetCeiling, String> {
    let args = |ctx: &Ctx, n: u64| {
        let mut a = common_args(ctx, r, n);
        a.extend(["-t".to_owned(), "set".to_owned()]);
        a
    };
    let pilot = benchmark(ctx, r, &args(ctx, 20_000), "SET", false, Duration::from_secs(120))?;
    let n = ((pilot.rps * ctx.mix.as_secs_f64()) as u64).clamp(50_000, 50_000_000);
    let limit = ctx.mix.mul_f64(4.0) + Duration::from_secs(60);
    let run = benchmark(ctx, r, &args(ctx, n), "SET", true, limit)?;
    let set = run.stats.get("set").copied().unwrap_or_default();
    let usec_per_call = ratio(set.usec as f64, set.calls as f64).ok_or("INFO commandstats counted no SET")?;
    eprintln!(
        "   {:<28} {:>9.0} req/s  p50 {:>8.1} µs  p99 {:>8.1} µs  (redis-server CPU {:.2} µs per SET; in Redis: {usec_per_call:.2} µs)",
        "redis-benchmark SET",
        run.rps,
        run.p50_ms * 1000.0,
        run.p99_ms * 1000.0,
        run.redis_cpu_us_per_request
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
    p50_ms: f64,
    p99_ms: f64,
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
    let (rps, _avg_ms, p50_ms, p99_ms, _max_ms) = parse_redis_csv(&out, test)?;
    Ok(BenchRun {
        command: std::iter::once("redis-benchmark".to_owned())
            .chain(args.iter().map(|a| procs::shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" "),
        rps,
        p50_ms,
        p99_ms,
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

    #[test]
    fn reads_error_replies() {
        assert_eq!(error_replies("# Stats\r\ntotal_error_replies:4\r\nunexpected_error_replies:0\r\n"), Some(4));
        assert_eq!(error_replies("# Stats\r\n"), None);
    }
}
