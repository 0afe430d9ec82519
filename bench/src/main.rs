//! `streamcap-bench`: starts the real `streamcap` binary and measures it.
//!
//! For each store (memory, sqlite, redis standalone) it measures, on one
//! server and over the same N keep-alive HTTP/1.1 connections: `/livez` (the
//! ceiling of the HTTP stack), the lease mix (closed loop, the peak), then
//! an open-loop phase at half that peak for the mix and for `/livez`. For
//! Redis it also runs `redis-benchmark` with the server's own Lua script
//! through EVALSHA at the same concurrency. Then, on fresh servers, it
//! measures resident memory per live lease (memory and sqlite) and the
//! restart recovery time (sqlite). Results go to JSON and to a Markdown
//! section of docs/benchmarks.md. Targets are reported, never asserted.
//!
//! # Layout
//! - `http`: a minimal HTTP/1.1 keep-alive client.
//! - `workload`: what is sent: `/livez`, the lease mix, the fill.
//! - `load`: the driver: connections, client threads, closed/open/fill pace.
//! - `procs`: the processes: streamcap, redis-server, redis-benchmark; /proc.
//! - `report`: the results as JSON and Markdown.

mod http;
mod load;
mod procs;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use load::{Pace, Plan, Work};
use procs::{CommandLog, Redis, Server};
use report::{
    Build, Footprint, Machine, Params, Phase, Recovery, RedisCeiling, Report, StoreReport, Target, int, round1, round3,
};
use workload::{MixParams, Zipf};

/// The server's own decision script, from the same tree as the binary.
const SCRIPT: &str = include_str!("../../src/store/redis/decide.lua");

/// Benchmark the real streamcap server and report ratios to ceilings.
#[derive(Parser, Debug)]
#[command(name = "streamcap-bench", version)]
struct Args {
    /// Short phases and 100,000 leases instead of 1,000,000 (under 2 minutes).
    #[arg(long)]
    quick: bool,
    /// The server binary (built by scripts/bench).
    #[arg(long, default_value = "target/release/streamcap")]
    server: PathBuf,
    /// Keep-alive HTTP/1.1 connections (and redis-benchmark clients).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Client threads, each a single-threaded runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Distinct users in the mix.
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Zipf exponent of user activity.
    #[arg(long, default_value_t = 0.8)]
    zipf: f64,
    /// Playback sessions each connection carries at once.
    #[arg(long, default_value_t = 16)]
    sessions: usize,
    /// Renewals per session between its acquire and its release.
    #[arg(long, default_value_t = 3)]
    renewals: u32,
    /// Live leases for the memory and recovery measurements [default: 1,000,000; quick: 100,000].
    #[arg(long)]
    leases: Option<u64>,
    /// Stores to measure.
    #[arg(long, value_delimiter = ',', default_value = "memory,sqlite,redis")]
    stores: Vec<String>,
    /// Skip the memory-per-lease and recovery measurements.
    #[arg(long)]
    no_footprint: bool,
    /// Seconds of closed-loop /livez [default: 8; quick: 2].
    #[arg(long)]
    livez_secs: Option<f64>,
    /// Seconds of closed-loop mix [default: 12; quick: 3].
    #[arg(long)]
    mix_secs: Option<f64>,
    /// Seconds of each open-loop phase [default: 8; quick: 2].
    #[arg(long)]
    open_secs: Option<f64>,
    /// Compared phases (/livez and mix) alternate in this many rounds [default: 4; quick: 1].
    #[arg(long)]
    rounds: Option<u32>,
    /// Where to write the JSON [default: bench/results/full.json or quick.json].
    #[arg(long)]
    json: Option<PathBuf>,
    /// The Markdown file whose generated section to replace.
    #[arg(long, default_value = "docs/benchmarks.md")]
    markdown: PathBuf,
    /// Write only the JSON.
    #[arg(long)]
    no_docs: bool,
    /// Measure nothing: re-render the Markdown section from a recorded JSON.
    #[arg(long, value_name = "JSON")]
    from_json: Option<PathBuf>,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Flags every server gets: no rate limits, so they cannot cap the run.
const SERVER_FLAGS: [&str; 4] = ["--user-rate-limit", "0", "--credential-rate-limit", "0"];

struct Ctx {
    args: Args,
    mode: &'static str,
    livez: Duration,
    mix: Duration,
    open: Duration,
    leases: u64,
    /// Compared phases alternate in this many rounds.
    rounds: u32,
    zipf: Arc<Zipf>,
    commands: CommandLog,
    failures: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let quick = args.quick;
    let secs = |v: Option<f64>, full: f64, quick_v: f64| {
        Duration::from_secs_f64(v.unwrap_or(if quick { quick_v } else { full }))
    };
    let mut ctx = Ctx {
        mode: if quick { "quick" } else { "full" },
        livez: secs(args.livez_secs, 8.0, 2.0),
        mix: secs(args.mix_secs, 12.0, 3.0),
        open: secs(args.open_secs, 8.0, 2.0),
        leases: args.leases.unwrap_or(if quick { 100_000 } else { 1_000_000 }),
        rounds: args.rounds.unwrap_or(if quick { 1 } else { 4 }),
        zipf: Arc::new(Zipf::new(args.users.max(1), args.zipf)),
        commands: CommandLog::default(),
        failures: Vec::new(),
        args,
    };
    if let Some(path) = &ctx.args.from_json {
        let rendered = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|text| serde_json::from_str::<Report>(&text).map_err(|e| format!("{}: {e}", path.display())))
            .and_then(|report| {
                let doc = std::fs::read_to_string(&ctx.args.markdown).unwrap_or_else(|_| "# Benchmarks\n".into());
                let out = report::splice(&doc, &report.mode, &report.markdown());
                std::fs::write(&ctx.args.markdown, out).map_err(|e| format!("{}: {e}", ctx.args.markdown.display()))
            });
        return match rendered {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("streamcap-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if !ctx.args.server.is_file() {
        eprintln!(
            "streamcap-bench: no server binary at {}; build it with `cargo build --release --workspace` (scripts/bench does)",
            ctx.args.server.display()
        );
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let loadavg_before = loadavg();
    let tmp = std::env::temp_dir();
    let (fsync_p50, fsync_max) = match procs::fsync_latency(&tmp) {
        Ok(v) => v,
        Err(e) => {
            ctx.failures.push(format!("fsync probe in {}: {e}", tmp.display()));
            (0.0, 0.0)
        }
    };
    eprintln!("streamcap-bench: {} run; load average before: {loadavg_before}", ctx.mode);

    let mut stores = Vec::new();
    for store in ctx.args.stores.clone() {
        eprintln!("== {store}: throughput and latency");
        match store_run(&mut ctx, &store) {
            Ok(r) => stores.push(r),
            Err(e) => ctx.failures.push(format!("{store}: {e}")),
        }
    }
    let mut footprint = Vec::new();
    let mut recovery = Vec::new();
    if !ctx.args.no_footprint {
        for store in ["memory", "sqlite"] {
            if !ctx.args.stores.iter().any(|s| s == store) {
                continue;
            }
            eprintln!("== {store}: memory per lease at {} leases", ctx.leases);
            match footprint_run(&mut ctx, store, &mut recovery) {
                Ok(f) => footprint.push(f),
                Err(e) => ctx.failures.push(format!("{store} footprint: {e}")),
            }
        }
    }

    let targets = targets(&stores, &footprint, &recovery);
    let report = Report {
        mode: ctx.mode.to_owned(),
        date: command_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
        machine: Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpu_model(),
            memory_total: mem_total(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
            data_dir_filesystem: filesystem_of(&tmp),
            fsync_p50_us: round1(fsync_p50),
            fsync_max_us: round1(fsync_max),
            loadavg_before,
            loadavg_after: loadavg(),
        },
        build: Build {
            server_binary: ctx.args.server.display().to_string(),
            git_revision: git_revision(),
            rustc: command_line("rustc", &["--version"]),
            redis_server: command_line("redis-server", &["--version"])
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        },
        params: Params {
            connections: ctx.args.connections,
            client_threads: ctx.args.client_threads,
            users: ctx.args.users,
            zipf_exponent: ctx.args.zipf,
            zipf_top_user_share: round3(ctx.zipf.top_share()),
            sessions_per_connection: ctx.args.sessions,
            renewals_per_session: ctx.args.renewals,
            livez_seconds: ctx.livez.as_secs_f64(),
            mix_seconds: ctx.mix.as_secs_f64(),
            open_loop_seconds: ctx.open.as_secs_f64(),
            rounds: ctx.rounds,
            leases: ctx.leases,
            server_flags: SERVER_FLAGS.join(" "),
        },
        commands: std::iter::once(invocation()).chain(ctx.commands.lines()).collect(),
        stores,
        footprint,
        recovery,
        targets,
        failures: ctx.failures.clone(),
        total_seconds: round1(started.elapsed().as_secs_f64()),
    };
    if let Err(e) = write_outputs(&ctx, &report) {
        eprintln!("streamcap-bench: {e}");
        return ExitCode::FAILURE;
    }
    println!("{}", summary(&report));
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("streamcap-bench: {} failure(s); see the report", report.failures.len());
        ExitCode::FAILURE
    }
}

fn server_args(store: &str, data_dir: Option<&Path>, redis: Option<&Redis>, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["--store".into(), store.into()];
    if let Some(d) = data_dir {
        a.extend(["--data-dir".into(), d.display().to_string()]);
    }
    if let Some(r) = redis {
        a.extend(["--redis-url".into(), r.url()]);
    }
    a.extend(SERVER_FLAGS.iter().map(|s| s.to_string()));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Runs one window of load. `tag` keeps stream ids unique across windows.
#[allow(clippy::too_many_arguments)]
fn measure(
    ctx: &Ctx,
    tag: &str,
    addr: std::net::SocketAddr,
    work: Work,
    pace: Pace,
    duration: Duration,
    watch: &[u32],
) -> Result<load::Outcome, String> {
    let plan = Plan {
        addr,
        connections: ctx.args.connections,
        threads: ctx.args.client_threads,
        work,
        pace,
        duration,
        tag: tag.to_owned(),
        seed: ctx.args.seed ^ tag.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))),
        watch: watch.to_vec(),
    };
    load::run(&plan)
}

/// Summarises a phase (one or more merged windows) and lists its failures.
fn finish(ctx: &mut Ctx, name: &str, pace: Pace, out: &load::Outcome) -> Result<Phase, String> {
    let (pace_name, rate) = match pace {
        Pace::Closed => ("closed", None),
        Pace::Open(r) => ("open", Some(r)),
        Pace::Fill => ("fill", None),
    };
    let p = Phase::from(name, pace_name, ctx.args.connections, rate, out);
    eprintln!(
        "   {name:<28} {:>9.0} req/s  p50 {:>8.1} µs  p99 {:>8.1} µs  p99.9 {:>8.1} µs  client {:.2} / server {:.2} cores",
        p.throughput, p.latency.p50_us, p.latency.p99_us, p.latency.p999_us, p.cpu.client_cores, p.cpu.server_cores
    );
    if p.server_errors_5xx > 0 {
        ctx.failures.push(format!("{name}: {} responses with a 5xx status", p.server_errors_5xx));
    }
    if p.unexpected_statuses > 0 {
        let odd: Vec<String> = out
            .statuses
            .iter()
            .filter(|((k, s), _)| !k.expected(*s))
            .map(|((k, s), n)| format!("{} {s} ×{n}", k.name()))
            .collect();
        ctx.failures.push(format!("{name}: unexpected statuses: {}", odd.join(", ")));
    }
    if p.io_errors > 0 {
        ctx.failures.push(format!(
            "{name}: {} requests failed without an answer (first: {})",
            p.io_errors,
            p.first_error.clone().unwrap_or_default()
        ));
    }
    if p.requests == 0 {
        return Err(format!("{name}: no request was answered"));
    }
    Ok(p)
}

/// One window, summarised.
fn phase(
    ctx: &mut Ctx,
    name: &str,
    addr: std::net::SocketAddr,
    work: Work,
    pace: Pace,
    duration: Duration,
    watch: &[u32],
) -> Result<Phase, String> {
    let tag: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    let out = measure(ctx, &tag, addr, work, pace, duration, watch)?;
    finish(ctx, name, pace, &out)
}

/// A workload, built per window.
type MakeWork<'a> = &'a dyn Fn(&Ctx) -> Work;

/// Two workloads measured in alternating rounds, so that a disturbance
/// from outside (another process on the machine) hits both alike.
fn interleaved(
    ctx: &mut Ctx,
    names: [&str; 2],
    addr: std::net::SocketAddr,
    works: [MakeWork<'_>; 2],
    paces: [Pace; 2],
    durations: [Duration; 2],
    watch: &[u32],
) -> Result<[Phase; 2], String> {
    let rounds = ctx.rounds.max(1);
    let mut merged: [Option<load::Outcome>; 2] = [None, None];
    for round in 0..rounds {
        for i in 0..2 {
            let tag = format!("{}r{round}", names[i].chars().filter(char::is_ascii_alphanumeric).collect::<String>());
            let window = durations[i].div_f64(f64::from(rounds));
            let out = measure(ctx, &tag, addr, works[i](ctx), paces[i], window, watch)?;
            match &mut merged[i] {
                Some(m) => m.merge(out),
                None => merged[i] = Some(out),
            }
        }
    }
    let [a, b] = merged;
    let (a, b) = (a.ok_or("no rounds")?, b.ok_or("no rounds")?);
    Ok([finish(ctx, names[0], paces[0], &a)?, finish(ctx, names[1], paces[1], &b)?])
}

fn mix(ctx: &Ctx) -> Work {
    Work::Mix(MixParams { zipf: ctx.zipf.clone(), renewals: ctx.args.renewals, sessions: ctx.args.sessions.max(1) })
}

/// Throughput and latency for one store, with its ceilings.
fn store_run(ctx: &mut Ctx, store: &str) -> Result<StoreReport, String> {
    let loadavg_before = loadavg();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let fsync = procs::fsync_latency(dir.path())?;
    eprintln!("   load average {loadavg_before}; fsync p50 {:.0} µs, worst {:.0} µs", fsync.0, fsync.1);
    let redis = if store == "redis" { Some(Redis::start(&ctx.commands)?) } else { None };
    let data_dir = (store == "sqlite").then(|| dir.path().join("data"));
    let args = server_args(store, data_dir.as_deref(), redis.as_ref(), &[]);
    let server = Server::start(&ctx.args.server, &args, Duration::from_secs(60), &ctx.commands)?;
    let mut watch = vec![server.pid()];
    watch.extend(redis.as_ref().map(Redis::pid));
    let addr = server.addr;

    // Warm up: connections, allocator, page cache, the Redis script cache.
    let warm = Duration::from_millis(if ctx.args.quick { 500 } else { 1500 });
    phase(ctx, "warm-up livez", addr, Work::Livez, Pace::Closed, warm, &watch)?;
    phase(ctx, "warm-up mix", addr, mix(ctx), Pace::Closed, warm, &watch)?;

    let (livez_d, mix_d, open_d) = (ctx.livez, ctx.mix, ctx.open);
    if let Some(r) = &redis {
        r.cli(&["CONFIG", "RESETSTAT"])?;
    }
    let [livez, mix_phase] = interleaved(
        ctx,
        ["livez", "mix"],
        addr,
        [&|_| Work::Livez, &mix],
        [Pace::Closed, Pace::Closed],
        [livez_d, mix_d],
        &watch,
    )?;
    let mix_evalsha_us = match &redis {
        Some(r) => evalsha_usec_per_call(r)?,
        None => None,
    };
    let half = Pace::Open(mix_phase.throughput / 2.0);
    let [half_mix, half_livez] = interleaved(
        ctx,
        ["half-load mix", "half-load livez"],
        addr,
        [&mix, &|_| Work::Livez],
        [half, half],
        [open_d, open_d],
        &watch,
    )?;

    let redis_ceiling = match &redis {
        Some(r) => Some(redis_ceiling(ctx, r, mix_evalsha_us)?),
        None => None,
    };
    server.terminate(Duration::from_secs(60))?;
    let mix_to_evalsha = redis_ceiling.as_ref().map(|c| round3(mix_phase.throughput / c.throughput));
    Ok(StoreReport {
        store: store.to_owned(),
        loadavg_before,
        fsync_before_us: (round1(fsync.0), round1(fsync.1)),
        mix_to_livez: round3(mix_phase.throughput / livez.throughput),
        half_load_p99_ratio: round3(half_mix.latency.p99_us / half_livez.latency.p99_us.max(0.1)),
        livez,
        mix: mix_phase,
        half_load_mix: half_mix,
        half_load_livez: half_livez,
        redis_ceiling,
        mix_to_evalsha,
    })
}

/// Microseconds per EVALSHA call inside Redis since the last CONFIG RESETSTAT.
fn evalsha_usec_per_call(r: &Redis) -> Result<Option<f64>, String> {
    let stats = r.cli(&["INFO", "commandstats"])?;
    Ok(stats.lines().find_map(|l| {
        l.strip_prefix("cmdstat_evalsha:")?.split(',').find_map(|kv| kv.strip_prefix("usec_per_call="))?.parse().ok()
    }))
}

fn cached_scripts(r: &Redis) -> Result<u64, String> {
    let info = r.cli(&["INFO", "memory"])?;
    info.lines()
        .find_map(|l| l.strip_prefix("number_of_cached_scripts:")?.trim().parse().ok())
        .ok_or_else(|| "INFO memory has no number_of_cached_scripts".into())
}

/// `redis-benchmark` running the server's script through EVALSHA, at the
/// same concurrency as the HTTP phases, over `users` random users.
fn redis_ceiling(ctx: &mut Ctx, r: &Redis, mix_evalsha_us: Option<f64>) -> Result<RedisCeiling, String> {
    let bench =
        procs::which("redis-benchmark").ok_or("redis-benchmark is not installed (scripts/bench installs it)")?;
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
    let json = r#"{"stream":"s__rand_int__","limit":3,"ttl":"60000000","on_limit":"reject","evict":[],"enforce":true}"#;
    let args = |n: u64| -> Vec<String> {
        let port = r.port.to_string();
        let (c, n, u) = (ctx.args.connections.to_string(), n.to_string(), ctx.args.users.to_string());
        ["-h", "127.0.0.1", "-p", &port, "-c", &c, "-n", &n, "-r", &u, "--csv", "EVALSHA", &sha, "2"]
            .iter()
            .map(|s| s.to_string())
            .chain(["sc:{u__rand_int__}:s", "sc:{u__rand_int__}:o", "acquire", "", json].map(String::from))
            .collect()
    };
    // A short pilot sizes the real run to last about as long as the mix.
    r.cli(&["FLUSHALL"])?;
    let pilot = parse_redis_csv(&procs::run_bounded(&bench, &args(20_000), Duration::from_secs(120))?)?;
    r.cli(&["FLUSHALL"])?;
    r.cli(&["CONFIG", "RESETSTAT"])?;
    let n = ((pilot.0 * ctx.mix.as_secs_f64()) as u64).clamp(20_000, 50_000_000);
    let full = args(n);
    ctx.commands.record("redis-benchmark", &full);
    let (kids0, redis0, t) = (procs::children_cpu_seconds(), procs::cpu_seconds(&r.pid().to_string()), Instant::now());
    let limit = ctx.mix.mul_f64(4.0) + Duration::from_secs(60);
    let out = procs::run_bounded(&bench, &full, limit)?;
    let wall = t.elapsed().as_secs_f64();
    let (kids1, redis1) = (procs::children_cpu_seconds(), procs::cpu_seconds(&r.pid().to_string()));
    let (rps, avg, p50, p99, max) = parse_redis_csv(&out)?;
    let ceiling_us = evalsha_usec_per_call(r)?;
    eprintln!(
        "   {:<28} {rps:>9.0} req/s  p50 {:>8.1} µs  p99 {:>8.1} µs  (in Redis: {:?} µs/call; mix: {:?} µs/call)",
        "redis-benchmark EVALSHA",
        p50 * 1000.0,
        p99 * 1000.0,
        ceiling_us,
        mix_evalsha_us
    );
    Ok(RedisCeiling {
        command: std::iter::once("redis-benchmark".to_owned())
            .chain(full.iter().map(|a| procs::shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" "),
        requests: n,
        throughput: round1(rps),
        avg_ms: avg,
        p50_ms: p50,
        p99_ms: p99,
        max_ms: max,
        benchmark_cpu_cores: round3((kids1 - kids0) / wall),
        redis_cores: round3((redis1 - redis0) / wall),
        evalsha_us_in_redis: ceiling_us,
        mix_evalsha_us_in_redis: mix_evalsha_us,
        same_script_as_server: same_script,
    })
}

/// rps, avg, p50, p99 and max (ms) from `redis-benchmark --csv`. The test
/// name holds the command, commas and quotes included, so read from the end.
fn parse_redis_csv(out: &str) -> Result<(f64, f64, f64, f64, f64), String> {
    let line = out.lines().rfind(|l| l.starts_with("\"EVALSHA")).ok_or_else(|| format!("no result in: {out}"))?;
    let f: Vec<f64> = line
        .rsplitn(8, ',')
        .take(7)
        .map(|v| v.trim_matches('"').parse::<f64>().map_err(|e| format!("{v}: {e}")))
        .collect::<Result<_, _>>()?;
    // Reversed: max, p99, p95, p50, min, avg, rps.
    Ok((f[6], f[5], f[3], f[1], f[0]))
}

/// Scrapes `GET /metrics` once a second until stopped, like Prometheus.
struct Scraper {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

const METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nhost: bench\r\n\r\n";

impl Scraper {
    fn start(addr: std::net::SocketAddr) -> Scraper {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut ok = 0;
            // Bounded: at most an hour of scrapes.
            for _ in 0..36_000 {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                if one_request(addr, METRICS) == Ok(200) {
                    ok += 1;
                }
                for _ in 0..10 {
                    if flag.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            ok
        });
        Scraper { stop, handle }
    }

    /// Stops scraping; returns how many scrapes succeeded.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

/// One request on a fresh connection, for probes outside the load phases.
fn one_request(addr: std::net::SocketAddr, req: &[u8]) -> Result<u16, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut c = http::Conn::connect(addr).await.map_err(|e| e.to_string())?;
        match tokio::time::timeout(load::REQUEST_TIMEOUT, c.roundtrip(req)).await {
            Ok(Ok((status, _))) => Ok(status),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".into()),
        }
    })
}

/// RSS per live lease on a fresh server; for sqlite, then the restarts.
fn footprint_run(ctx: &mut Ctx, store: &str, recovery: &mut Vec<Recovery>) -> Result<Footprint, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data_dir = (store == "sqlite").then(|| dir.path().join("data"));
    // Leases that outlive the run, so none expires while we count.
    let args = server_args(store, data_dir.as_deref(), None, &["--lease-ttl", "86400"]);
    let server = Server::start(&ctx.args.server, &args, Duration::from_secs(60), &ctx.commands)?;
    let watch = [server.pid()];
    phase(ctx, "footprint warm-up livez", server.addr, Work::Livez, Pace::Closed, Duration::from_millis(500), &watch)?;
    // Scrape /metrics every second, as Prometheus would. Each scrape
    // drains the latency samples the server buffers per request (about 18
    // bytes each, kept until the next scrape); without it they would be
    // counted as lease memory.
    let scraper = Scraper::start(server.addr);
    std::thread::sleep(Duration::from_millis(1200));
    let rss_before = procs::rss_bytes(server.pid())?;
    let users = ctx.leases.div_ceil(3);
    let work = Work::Fill { total: ctx.leases, users };
    let fill = phase(ctx, "fill", server.addr, work, Pace::Fill, Duration::from_secs(1800), &watch)?;
    std::thread::sleep(Duration::from_millis(1200));
    let rss_after = procs::rss_bytes(server.pid())?;
    let scrapes = scraper.stop();
    if scrapes == 0 {
        ctx.failures.push(format!("{store}: no /metrics scrape succeeded during the fill"));
    }
    let created = fill.statuses.get("acquire 201").copied().unwrap_or(0);
    let probe = one_request(server.addr, &workload::fill_probe_new(0))?;
    let disk = data_dir.as_ref().map(|d| {
        ["streamcap.db", "streamcap.db-wal", "streamcap.db-shm"]
            .iter()
            .filter_map(|f| std::fs::metadata(d.join(f)).ok())
            .map(|m| m.len())
            .sum::<u64>()
    });
    let per_lease = (rss_after as f64 - rss_before as f64) / created.max(1) as f64;
    eprintln!(
        "   RSS {:.1} MiB -> {:.1} MiB for {created} leases: {per_lease:.0} bytes per lease",
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    let footprint = Footprint {
        store: store.to_owned(),
        leases_requested: ctx.leases,
        leases_created: created,
        users,
        fill,
        rss_before,
        rss_after,
        rss_bytes_per_lease: round1(per_lease),
        disk_bytes: disk,
        disk_bytes_per_lease: disk.map(|d| round1(d as f64 / created.max(1) as f64)),
        full_user_probe_status: probe,
    };
    if probe != 409 {
        ctx.failures.push(format!("{store}: a full user's next acquire gave {probe}, not 409"));
    }
    match data_dir {
        Some(d) if created == ctx.leases => {
            let args = server_args(store, Some(&d), None, &["--lease-ttl", "86400"]);
            // A crash first (the WAL holds the tail), then a clean stop.
            server.kill9();
            let crash = restart(ctx, &args, created, users, "SIGKILL", None)?;
            eprintln!("   restart after SIGKILL: first decision after {:.3} s", crash.0.to_first_decision_seconds);
            let took = crash.1.terminate(Duration::from_secs(120))?;
            let clean = restart(ctx, &args, created, users, "SIGTERM", Some(took))?;
            eprintln!(
                "   restart after SIGTERM (shutdown {:.3} s): ready after {:.3} s, first decision after {:.3} s",
                took.as_secs_f64(),
                clean.0.to_ready_seconds,
                clean.0.to_first_decision_seconds
            );
            clean.1.terminate(Duration::from_secs(120))?;
            recovery.push(crash.0);
            recovery.push(clean.0);
        }
        Some(_) => {
            ctx.failures
                .push(format!("sqlite: only {created} of {} leases were created; recovery not measured", ctx.leases));
            server.terminate(Duration::from_secs(120))?;
        }
        None => {
            server.terminate(Duration::from_secs(120))?;
        }
    }
    Ok(footprint)
}

/// Starts the server on an existing data dir and times it to its first
/// correct decision.
fn restart(
    ctx: &mut Ctx,
    args: &[String],
    leases: u64,
    users: u64,
    stop: &str,
    shutdown: Option<Duration>,
) -> Result<(Recovery, Server), String> {
    let server = Server::start(&ctx.args.server, args, Duration::from_secs(300), &ctx.commands)?;
    let deadline = server.spawned_at + Duration::from_secs(300);
    let to_ready = loop {
        if let Ok(200) = one_request(server.addr, workload::READYZ) {
            break server.spawned_at.elapsed();
        }
        if Instant::now() > deadline {
            return Err(format!("not ready within 300 s of a restart after {stop}:\n{}", server.tail()));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    // User f1 holds 3 leases: a new stream must be refused.
    let first = one_request(server.addr, &workload::fill_probe_new(1))?;
    let to_decision = server.spawned_at.elapsed();
    let renew = one_request(server.addr, &workload::fill_probe_renew(2, 1))?;
    let last_user = (leases - 1) % users;
    let last_full = leases / users + u64::from(last_user < leases % users) >= 3;
    let last = one_request(server.addr, &workload::fill_probe_new(last_user))?;
    let correct = first == 409 && renew == 200 && (last == 409) == last_full;
    if !correct {
        ctx.failures.push(format!(
            "sqlite restart after {stop}: wrong answers (full user {first}, renew {renew}, last user {last})"
        ));
    }
    let r = Recovery {
        store: "sqlite".into(),
        leases,
        stop: stop.into(),
        shutdown_seconds: shutdown.map(|d| round3(d.as_secs_f64())),
        to_listening_seconds: round3(server.to_listening.as_secs_f64()),
        to_ready_seconds: round3(to_ready.as_secs_f64()),
        to_first_decision_seconds: round3(to_decision.as_secs_f64()),
        first_decision_status: first,
        renew_status: renew,
        last_user_status: last,
        correct,
    };
    Ok((r, server))
}

fn targets(stores: &[StoreReport], footprint: &[Footprint], recovery: &[Recovery]) -> Vec<Target> {
    let mut t = Vec::new();
    let store = |name: &str| stores.iter().find(|s| s.store == name);
    match store("sqlite") {
        Some(s) => t.push(Target {
            name: "sqlite durable mix throughput vs /livez".into(),
            target: "≥ 0.5 × /livez".into(),
            measured: format!(
                "{:.2} × ({} vs {} req/s)",
                s.mix_to_livez,
                int(s.mix.throughput),
                int(s.livez.throughput)
            ),
            met: Some(s.mix_to_livez >= 0.5),
        }),
        None => {
            t.push(Target {
                name: "sqlite vs /livez".into(), target: "≥ 0.5".into(), measured: "–".into(), met: None
            })
        }
    }
    match store("redis").and_then(|s| Some((s, s.redis_ceiling.as_ref()?))) {
        Some((s, c)) => t.push(Target {
            name: "redis mix throughput vs EVALSHA ceiling".into(),
            target: "≥ 0.5 × EVALSHA".into(),
            measured: format!(
                "{:.2} × ({} vs {} req/s)",
                s.mix_to_evalsha.unwrap_or(0.0),
                int(s.mix.throughput),
                int(c.throughput)
            ),
            met: s.mix_to_evalsha.map(|r| r >= 0.5),
        }),
        None => {
            t.push(Target {
                name: "redis vs EVALSHA".into(), target: "≥ 0.5".into(), measured: "–".into(), met: None
            })
        }
    }
    for s in stores {
        t.push(Target {
            name: format!("{}: p99 at half of peak vs /livez p99", s.store),
            target: "≤ 3 × /livez p99".into(),
            measured: format!(
                "{:.2} × ({} vs {} µs at {} req/s)",
                s.half_load_p99_ratio,
                int(s.half_load_mix.latency.p99_us),
                int(s.half_load_livez.latency.p99_us),
                int(s.half_load_mix.offered_rate.unwrap_or(0.0))
            ),
            met: Some(s.half_load_p99_ratio <= 3.0),
        });
    }
    for f in footprint {
        t.push(Target {
            name: format!("{}: RSS per live lease at {} leases", f.store, int(f.leases_created as f64)),
            target: "≤ 300 bytes".into(),
            measured: format!("{:.0} bytes", f.rss_bytes_per_lease),
            met: Some(f.rss_bytes_per_lease <= 300.0),
        });
    }
    for r in recovery.iter().filter(|r| r.stop == "SIGTERM") {
        t.push(Target {
            name: format!("sqlite: restart recovery with {} leases", int(r.leases as f64)),
            target: "≤ 3 s".into(),
            measured: format!("{:.3} s to the first correct decision", r.to_first_decision_seconds),
            met: Some(r.correct && r.to_first_decision_seconds <= 3.0),
        });
    }
    t
}

fn write_outputs(ctx: &Ctx, report: &Report) -> Result<(), String> {
    let json_path = ctx.args.json.clone().unwrap_or_else(|| PathBuf::from(format!("bench/results/{}.json", ctx.mode)));
    if let Some(dir) = json_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, json + "\n").map_err(|e| format!("cannot write {}: {e}", json_path.display()))?;
    eprintln!("streamcap-bench: wrote {}", json_path.display());
    if !ctx.args.no_docs {
        let doc = std::fs::read_to_string(&ctx.args.markdown).unwrap_or_else(|_| "# Benchmarks\n".into());
        let out = report::splice(&doc, ctx.mode, &report.markdown());
        std::fs::write(&ctx.args.markdown, out)
            .map_err(|e| format!("cannot write {}: {e}", ctx.args.markdown.display()))?;
        eprintln!("streamcap-bench: updated the {} section of {}", ctx.mode, ctx.args.markdown.display());
    }
    Ok(())
}

fn summary(r: &Report) -> String {
    let mut s = format!("streamcap-bench ({} run, {}):\n", r.mode, r.date);
    for t in &r.targets {
        let met = match t.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        s.push_str(&format!("  {:<52} {:<18} {:<44} {met}\n", t.name, t.target, t.measured));
    }
    s
}

/// How this run was started: `scripts/bench` passes its own command line.
fn invocation() -> String {
    std::env::var("STREAMCAP_BENCH_COMMAND")
        .unwrap_or_else(|_| std::env::args().map(|a| procs::shell_quote(&a)).collect::<Vec<_>>().join(" "))
}

fn command_line(program: &str, args: &[&str]) -> String {
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|_| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| Some(l.strip_prefix("model name")?.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| "unknown".into())
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
    fn reads_redis_benchmark_csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"EVALSHA abc 2 sc:{u__rand_int__}:s acquire  {\"stream\":\"s\",\"limit\":3}\",\"38461.54\",\"1.548\",\"0.440\",\"1.463\",\"2.399\",\"2.967\",\"5.439\"\n";
        assert_eq!(parse_redis_csv(out).unwrap(), (38461.54, 1.548, 1.463, 2.967, 5.439));
        assert!(parse_redis_csv("nothing").is_err());
    }
}
