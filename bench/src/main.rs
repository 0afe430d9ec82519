//! `streamcap-bench`: starts the real `streamcap` binary and measures it.
//!
//! For each store (memory, sqlite, redis standalone, dynamodb on DynamoDB
//! Local) it measures, over N
//! keep-alive HTTP/1.1 connections, in alternating rounds: the bare server's
//! `/livez` (axum, one route, no layers: the ceiling of the HTTP stack),
//! streamcap's `/livez` and the lease mix (closed loop, the peak); then an
//! open-loop phase at half that peak for the mix and for `/livez`. Each
//! result is set against those ceilings, server CPU per request against the
//! bare server's. For Redis it also measures redis-server's CPU per
//! decision against a `SET` from `redis-benchmark` on the same
//! redis-server, every command a decision sends (`INFO commandstats`),
//! with 10,000 and with 1,000,000 users in Redis as well, and 64
//! concurrent acquires for one user over two instances on a standalone
//! Redis and on a Redis Cluster; with `--baseline-server`, it runs the
//! mix on a previous build too, in the same rounds, and sets the two side
//! by side. For dynamodb it starts DynamoDB Local, makes the table with `streamcap
//! dynamodb create-table`, reads DynamoDB Local's CPU per decision and the
//! lost races per 1,000 decisions (from `/metrics`), and runs the mix
//! once more over two instances on the table; these have no targets,
//! since DynamoDB Local is not AWS. Then, on
//! fresh servers, it measures resident memory per live lease (memory and
//! sqlite) and the restart recovery time (sqlite). Results go to JSON and
//! to a Markdown section of docs/benchmarks.md. Targets are reported,
//! never asserted.
//!
//! # Layout
//! - `bare`: the bare server (`streamcap-bench bare-server`).
//! - `http`: a minimal HTTP/1.1 keep-alive client.
//! - `workload`: what is sent: `/livez`, the lease mix, the fill.
//! - `load`: the driver: connections, client threads, closed/open/fill pace.
//! - `procs`: the processes: streamcap, the bare server, redis-server,
//!   redis-benchmark, DynamoDB Local; /proc.
//! - `dynamo_harness`: the tests' DynamoDB Local helpers (where the jar
//!   is, the SDK's environment), shared with them.
//! - `redis`: the Redis measurements: commandstats and MONITOR, the SET
//!   ceiling, the keyspace runs.
//! - `redis_harness`: the tests' redis-server and Redis Cluster helpers,
//!   shared with them.
//! - `contention`: concurrent acquires for one user over two instances.
//! - `report`: the results as JSON and Markdown.

mod acks;
mod bare;
mod contention;
#[path = "../../src/store/dynamodb/harness.rs"]
mod dynamo_harness;
mod http;
mod load;
mod procs;
mod redis;
#[path = "../../src/store/redis/harness.rs"]
mod redis_harness;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use load::{Pace, Plan, Work};
use procs::{CommandLog, DynamoLocal, Redis, Server};
use report::{
    Build, Conflicts, DynamoReport, Footprint, Machine, Params, Phase, Recovery, RedisBaseline, Report, StoreReport,
    Target, TwoInstances, int, ratio, round1, round3,
};
use workload::{MixParams, Zipf};

/// Benchmark the real streamcap server and report ratios to ceilings.
#[derive(Parser, Debug)]
#[command(name = "streamcap-bench", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: Args,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the bare-server ceiling (the harness starts it itself).
    #[command(hide = true)]
    BareServer {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

#[derive(clap::Args, Debug)]
struct Args {
    /// Short phases and 100,000 leases and Redis users instead of 1,000,000 (about 2 minutes).
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
    /// Stores to measure (dynamodb runs against DynamoDB Local and needs a server built with the dynamodb feature).
    #[arg(long, value_delimiter = ',', default_value = "memory,sqlite,redis,dynamodb")]
    stores: Vec<String>,
    /// Skip the memory-per-lease and recovery measurements.
    #[arg(long)]
    no_footprint: bool,
    /// Users in Redis for the large keyspace of the Redis cost per decision (the small one has 10,000) [default: 1,000,000; quick: 100,000].
    #[arg(long)]
    keyspace_users: Option<u64>,
    /// Skip the Redis keyspace measurement.
    #[arg(long)]
    no_keyspace: bool,
    /// A baseline server binary (a previous release; scripts/bench --baseline REV builds one): its Redis mix runs in the same rounds as the current server's, and its concurrent acquires after them.
    #[arg(long, value_name = "PATH")]
    baseline_server: Option<PathBuf>,
    /// What the baseline is, for the report [default: its path].
    #[arg(long, value_name = "TEXT", requires = "baseline_server")]
    baseline_label: Option<String>,
    /// Rounds of 64 concurrent acquires for one user over two instances, on standalone Redis and on a Redis Cluster (0 skips them).
    #[arg(long, default_value_t = 5)]
    contention_rounds: u32,
    /// Seconds of closed-loop /livez [default: 8; quick: 2].
    #[arg(long)]
    livez_secs: Option<f64>,
    /// Seconds of closed-loop mix [default: 12; quick: 3].
    #[arg(long)]
    mix_secs: Option<f64>,
    /// Seconds of each open-loop phase [default: 8; quick: 2].
    #[arg(long)]
    open_secs: Option<f64>,
    /// Compared phases (bare /livez, /livez and the mix, and the baseline's mix; the two open-loop phases) alternate in this many rounds, every other one in reverse order [default: 4; quick: 1, or 2 with a baseline].
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
    /// Measure only what --redis-replica-acks 1 costs: the Redis mix with and without it, on a primary with one replica (writes bench/results/acks.json).
    #[arg(long)]
    replica_acks: bool,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Flags every server gets: no rate limits, so they cannot cap the run.
const SERVER_FLAGS: [&str; 4] = ["--user-rate-limit", "0", "--credential-rate-limit", "0"];

/// The table the dynamodb store uses in DynamoDB Local.
const DYNAMODB_TABLE: &str = "streamcap-bench";

struct Ctx {
    args: Args,
    mode: &'static str,
    livez: Duration,
    mix: Duration,
    open: Duration,
    leases: u64,
    /// Users in Redis for the large keyspace.
    keyspace_users: u64,
    /// Compared phases alternate in this many rounds.
    rounds: u32,
    zipf: Arc<Zipf>,
    commands: CommandLog,
    failures: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::BareServer { listen }) = cli.command {
        return match bare::serve(listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("streamcap-bench bare-server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = cli.args;
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
        keyspace_users: args.keyspace_users.unwrap_or(if quick { 100_000 } else { 1_000_000 }),
        // With a baseline, at least two rounds, so that neither server's
        // mix always runs first.
        rounds: args.rounds.unwrap_or(match (quick, args.baseline_server.is_some()) {
            (false, _) => 4,
            (true, false) => 1,
            (true, true) => 2,
        }),
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
    if let Some(b) = ctx.args.baseline_server.as_ref().filter(|b| !b.is_file()) {
        eprintln!(
            "streamcap-bench: no baseline server binary at {}; scripts/bench --baseline REV builds one",
            b.display()
        );
        return ExitCode::from(2);
    }
    if ctx.args.replica_acks {
        let done = acks::run(&mut ctx);
        return done.map_or_else(|e| (eprintln!("streamcap-bench: {e}"), ExitCode::FAILURE).1, |()| ExitCode::SUCCESS);
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

    let asked = RedisAsked { baseline: ctx.args.baseline_server.is_some(), contention: ctx.args.contention_rounds > 0 };
    let targets = targets(&ctx.args.stores, &stores, &footprint, &recovery, asked);
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
            baseline_server: ctx.args.baseline_server.as_ref().map(|b| b.display().to_string()),
            contention_rounds: ctx.args.contention_rounds,
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
    server_args_with(store, data_dir, redis, None, extra)
}

fn server_args_with(
    store: &str,
    data_dir: Option<&Path>,
    redis: Option<&Redis>,
    dynamo: Option<&DynamoLocal>,
    extra: &[&str],
) -> Vec<String> {
    let mut a: Vec<String> = vec!["--store".into(), store.into()];
    if let Some(d) = data_dir {
        a.extend(["--data-dir".into(), d.display().to_string()]);
    }
    if let Some(r) = redis {
        a.extend(["--redis-url".into(), r.url()]);
    }
    if let Some(d) = dynamo {
        a.extend(["--dynamodb-endpoint".into(), d.endpoint(), "--dynamodb-table".into(), DYNAMODB_TABLE.into()]);
    }
    a.extend(SERVER_FLAGS.iter().map(|s| s.to_string()));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Runs one window of load. `tag` keeps stream ids unique across windows.
fn measure(
    ctx: &Ctx,
    tag: &str,
    addr: std::net::SocketAddr,
    work: Work,
    pace: Pace,
    duration: Duration,
    watch: &[u32],
) -> Result<load::Outcome, String> {
    measure_on(ctx, tag, &[addr], work, pace, duration, watch)
}

/// [`measure`] over the connections alternating between `addrs`.
fn measure_on(
    ctx: &Ctx,
    tag: &str,
    addrs: &[std::net::SocketAddr],
    work: Work,
    pace: Pace,
    duration: Duration,
    watch: &[u32],
) -> Result<load::Outcome, String> {
    let plan = Plan {
        addrs: addrs.to_vec(),
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

/// One of the workloads that `interleaved` alternates.
struct Spec<'a> {
    name: &'a str,
    /// The server it goes to, and the processes whose CPU is read: the
    /// first one is "the server" of the phase.
    addr: std::net::SocketAddr,
    watch: &'a [u32],
    work: MakeWork<'a>,
    pace: Pace,
    duration: Duration,
}

/// Workloads measured in alternating rounds, so that a disturbance from
/// outside (another process on the machine) hits them all alike. Each
/// round gives each workload `duration / rounds`; every other round runs
/// them in reverse order, so that over an even number of rounds none of
/// them always comes first or last.
fn interleaved(ctx: &mut Ctx, specs: &[Spec<'_>]) -> Result<Vec<Phase>, String> {
    let rounds = ctx.rounds.max(1);
    let mut merged: Vec<Option<load::Outcome>> = specs.iter().map(|_| None).collect();
    for round in 0..rounds {
        for i in round_order(specs.len(), round) {
            let (spec, merged) = (&specs[i], &mut merged[i]);
            let tag = format!("{}r{round}", spec.name.chars().filter(char::is_ascii_alphanumeric).collect::<String>());
            let window = spec.duration.div_f64(f64::from(rounds));
            let out = measure(ctx, &tag, spec.addr, (spec.work)(ctx), spec.pace, window, spec.watch)?;
            match merged {
                Some(m) => m.merge(out),
                None => *merged = Some(out),
            }
        }
    }
    specs.iter().zip(merged).map(|(spec, out)| finish(ctx, spec.name, spec.pace, &out.ok_or("no rounds")?)).collect()
}

/// The order of `n` workloads in round `round`: as given, and reversed in
/// odd rounds.
fn round_order(n: usize, round: u32) -> Vec<usize> {
    if round.is_multiple_of(2) { (0..n).collect() } else { (0..n).rev().collect() }
}

fn mix(ctx: &Ctx) -> Work {
    Work::Mix(MixParams {
        zipf: ctx.zipf.clone(),
        renewals: ctx.args.renewals,
        sessions: ctx.args.sessions.max(1),
        user_prefix: "u",
    })
}

/// Throughput, latency and CPU for one store, with its ceilings.
fn store_run(ctx: &mut Ctx, store: &str) -> Result<StoreReport, String> {
    let loadavg_before = loadavg();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let fsync = procs::fsync_latency(dir.path())?;
    eprintln!("   load average {loadavg_before}; fsync p50 {:.0} µs, worst {:.0} µs", fsync.0, fsync.1);
    let redis = if store == "redis" { Some(Redis::start(&ctx.commands)?) } else { None };
    let dynamo = if store == "dynamodb" { Some(start_dynamodb(ctx)?) } else { None };
    let env: &[(&str, &str)] = if dynamo.is_some() { &dynamo_harness::CLIENT_ENV } else { &[] };
    let data_dir = (store == "sqlite").then(|| dir.path().join("data"));
    let args = server_args_with(store, data_dir.as_deref(), redis.as_ref(), dynamo.as_ref(), &[]);
    let server = Server::start_with_env(&ctx.args.server, &args, env, Duration::from_secs(60), &ctx.commands)?;
    let bare = Server::start_bare(Duration::from_secs(60), &ctx.commands)?;
    // The store's own process: redis-server, or DynamoDB Local's Java.
    let store_pid = redis.as_ref().map(Redis::pid).or(dynamo.as_ref().map(DynamoLocal::pid));
    let watch: Vec<u32> = std::iter::once(server.pid()).chain(store_pid).collect();
    let bare_watch: Vec<u32> = std::iter::once(bare.pid()).chain(store_pid).collect();
    let addr = server.addr;

    // Warm up: connections, allocators, page cache, the Redis script cache;
    // for DynamoDB Local, the JVM's JIT compiler, which needs longer.
    let warm = Duration::from_millis(if ctx.args.quick { 500 } else { 1500 });
    phase(ctx, "warm-up bare livez", bare.addr, Work::Livez, Pace::Closed, warm, &bare_watch)?;
    phase(ctx, "warm-up livez", addr, Work::Livez, Pace::Closed, warm, &watch)?;
    // On Redis, under MONITOR: which commands run inside scripts.
    let warm_up_mix = |ctx: &mut Ctx| phase(ctx, "warm-up mix", addr, mix(ctx), Pace::Closed, warm, &watch);
    let sample = match &redis {
        Some(r) => Some(redis::sample_while(ctx, r, warm_up_mix)?.1),
        None => {
            warm_up_mix(ctx)?;
            None
        }
    };
    let baseline = match (&redis, ctx.args.baseline_server.clone()) {
        (Some(_), Some(bin)) => Some(Baseline::start(ctx, bin, warm)?),
        _ => None,
    };
    let warmed = match dynamo {
        Some(_) => Some(jit_warm_up(ctx, addr, &watch)?),
        None => None,
    };

    let (livez_d, mix_d, open_d) = (ctx.livez, ctx.mix, ctx.open);
    for r in redis.iter().chain(baseline.as_ref().map(|b| &b.redis)) {
        r.cli(&["CONFIG", "RESETSTAT"])?;
    }
    // Only the mix reaches the store: the /livez windows between its
    // rounds change no counter.
    let conflicts_before = dynamo.as_ref().map(|_| conflicts(&[addr])).transpose()?;
    let livez_work: MakeWork<'_> = &|_| Work::Livez;
    let closed = Pace::Closed;
    let mut specs = vec![
        Spec {
            name: "bare livez",
            addr: bare.addr,
            watch: &bare_watch,
            work: livez_work,
            pace: closed,
            duration: livez_d,
        },
        Spec { name: "livez", addr, watch: &watch, work: livez_work, pace: closed, duration: livez_d },
        Spec { name: "mix", addr, watch: &watch, work: &mix, pace: closed, duration: mix_d },
    ];
    // The baseline's mix windows alternate with the current server's.
    if let Some(b) = &baseline {
        let (addr, watch) = (b.server.addr, &b.watch[..]);
        specs.push(Spec { name: "baseline mix", addr, watch, work: &mix, pace: closed, duration: mix_d });
    }
    let mut phases = interleaved(ctx, &specs)?.into_iter();
    let mut next = || phases.next().ok_or("a phase is missing");
    let (bare_livez, livez, mix_phase) = (next()?, next()?, next()?);
    let baseline_mix = if baseline.is_some() { Some(next()?) } else { None };
    bare.terminate(Duration::from_secs(60))?;
    let mix_conflicts = match conflicts_before {
        Some(before) => {
            Some(Conflicts::new(conflicts(&[addr])?.saturating_sub(before), mix_phase.requests + mix_phase.drained))
        }
        None => None,
    };
    // /livez sends Redis nothing: what Redis counted is the mix's.
    let redis_commands = match (&redis, &sample) {
        (Some(r), Some(sample)) => Some(redis::read_cost(r, sample, mix_phase.requests + mix_phase.drained)?),
        _ => None,
    };
    let redis_baseline = match (baseline, baseline_mix) {
        (Some(b), Some(mix)) => Some(b.finish(ctx, mix)?),
        _ => None,
    };

    let half = Pace::Open(mix_phase.throughput / 2.0);
    let conflicts_before = dynamo.as_ref().map(|_| conflicts(&[addr])).transpose()?;
    let phases = interleaved(
        ctx,
        &[
            Spec { name: "half-load mix", addr, watch: &watch, work: &mix, pace: half, duration: open_d },
            Spec { name: "half-load livez", addr, watch: &watch, work: livez_work, pace: half, duration: open_d },
        ],
    )?;
    let [half_mix, half_livez] = <[Phase; 2]>::try_from(phases).map_err(|_| "expected two phases")?;
    let half_conflicts = match conflicts_before {
        Some(before) => {
            Some(Conflicts::new(conflicts(&[addr])?.saturating_sub(before), half_mix.requests + half_mix.drained))
        }
        None => None,
    };
    let dynamodb = match (&dynamo, mix_conflicts, half_conflicts) {
        (Some(d), Some(mix_conflicts), Some(half_load_conflicts)) => {
            eprintln!(
                "   lost races per 1,000 decisions: {} closed loop, {} at half load",
                mix_conflicts.per_1k_decisions.unwrap_or(0.0),
                half_load_conflicts.per_1k_decisions.unwrap_or(0.0)
            );
            let two_instances = two_instances(ctx, d, &server, &args, env)
                .map_err(|e| ctx.failures.push(format!("dynamodb, two instances: {e}")))
                .ok();
            let (warm_up_seconds, warm_up_us) = warmed.unwrap_or_default();
            Some(DynamoReport {
                dynamodb_local: d.version.clone(),
                java: java_version(),
                table: DYNAMODB_TABLE.into(),
                jit_warm_up_seconds: warm_up_seconds,
                jit_warm_up_last_us_per_decision: warm_up_us,
                mix_conflicts,
                half_load_conflicts,
                two_instances,
            })
        }
        _ => None,
    };

    let redis_set = redis.as_ref().and_then(|r| redis::set_ceiling(ctx, r));
    server.terminate(Duration::from_secs(60))?;
    drop(redis);
    drop(dynamo);
    let redis_keyspace = match &sample {
        Some(sample) if !ctx.args.no_keyspace => {
            eprintln!("== redis: commands per decision at 10,000 and {} users", int(ctx.keyspace_users as f64));
            redis::keyspace(ctx, sample).map_err(|e| ctx.failures.push(format!("redis keyspace: {e}"))).ok()
        }
        _ => None,
    };
    let redis_contention = if store == "redis" && ctx.args.contention_rounds > 0 {
        eprintln!(
            "== redis: {} concurrent acquires for one user over {} instances, {} rounds",
            contention::CONCURRENT,
            contention::INSTANCES,
            ctx.args.contention_rounds
        );
        let (current, baseline, rounds) =
            (ctx.args.server.clone(), ctx.args.baseline_server.clone(), ctx.args.contention_rounds);
        let mut binaries = vec![("current", current.as_path())];
        binaries.extend(baseline.as_deref().map(|b| ("baseline", b)));
        contention::run(ctx, &binaries, rounds)
    } else {
        Vec::new()
    };
    let to_bare = |p: &Phase| ratio(p.cpu.server_us_per_request, bare_livez.cpu.server_us_per_request);
    Ok(StoreReport {
        store: store.to_owned(),
        loadavg_before,
        fsync_before_us: (round1(fsync.0), round1(fsync.1)),
        mix_to_livez: round3(mix_phase.throughput / livez.throughput),
        half_load_p99_ratio: round3(half_mix.latency.p99_us / half_livez.latency.p99_us.max(0.1)),
        livez_cpu_to_bare: to_bare(&livez),
        mix_cpu_to_bare: to_bare(&mix_phase),
        bare_livez: Some(bare_livez),
        livez,
        mix: mix_phase,
        half_load_mix: half_mix,
        half_load_livez: half_livez,
        redis_commands,
        redis_set,
        redis_keyspace,
        redis_baseline,
        redis_contention,
        dynamodb,
    })
}

/// The baseline server on a redis-server of its own, warmed up like the
/// current one.
struct Baseline {
    bin: PathBuf,
    redis: Redis,
    server: Server,
    /// The baseline server, then its redis-server.
    watch: Vec<u32>,
    sample: redis::MonitorSample,
}

impl Baseline {
    fn start(ctx: &mut Ctx, bin: PathBuf, warm: Duration) -> Result<Baseline, String> {
        let redis = Redis::start(&ctx.commands)?;
        let args = server_args("redis", None, Some(&redis), &[]);
        let server = Server::start(&bin, &args, Duration::from_secs(60), &ctx.commands)?;
        let watch = vec![server.pid(), redis.pid()];
        let addr = server.addr;
        let warm_up = |ctx: &mut Ctx| phase(ctx, "warm-up baseline mix", addr, mix(ctx), Pace::Closed, warm, &watch);
        let (_, sample) = redis::sample_while(ctx, &redis, warm_up)?;
        Ok(Baseline { bin, redis, server, watch, sample })
    }

    /// Reads its commands after its `mix` windows and stops it.
    fn finish(self, ctx: &Ctx, mix: Phase) -> Result<RedisBaseline, String> {
        let commands = redis::read_cost(&self.redis, &self.sample, mix.requests + mix.drained)?;
        self.server.terminate(Duration::from_secs(60))?;
        let server_binary = self.bin.display().to_string();
        Ok(RedisBaseline {
            label: ctx.args.baseline_label.clone().unwrap_or_else(|| server_binary.clone()),
            server_binary,
            mix,
            commands: Some(commands),
        })
    }
}

/// DynamoDB Local's JIT warm-up: windows of the mix until its CPU per
/// decision stops falling.
const JIT_WINDOW: Duration = Duration::from_secs(2);
const JIT_MAX_WINDOWS: usize = 30;

/// Runs the mix in 2-s windows until DynamoDB Local's CPU per decision
/// has settled: the mean of the last three windows within 5 % of the mean
/// of the three before (so at least 12 s; at most 60 s). The JVM compiles
/// its hot code over tens of seconds of load, and until it has, DynamoDB
/// Local's cost per decision falls by more than half. Returns the
/// warm-up's seconds and its last window's µs per decision.
fn jit_warm_up(ctx: &mut Ctx, addr: std::net::SocketAddr, watch: &[u32]) -> Result<(f64, f64), String> {
    let started = Instant::now();
    let mut costs: Vec<f64> = Vec::new();
    for i in 0..JIT_MAX_WINDOWS {
        let p = phase(ctx, &format!("warm-up DynamoDB Local {i}"), addr, mix(ctx), Pace::Closed, JIT_WINDOW, watch)?;
        let cost = p.cpu.store_us_per_request.unwrap_or(0.0);
        eprintln!("      DynamoDB Local {cost:.0} µs per decision");
        costs.push(cost);
        if settled(&costs) {
            break;
        }
    }
    Ok((round1(started.elapsed().as_secs_f64()), costs.last().copied().unwrap_or(0.0)))
}

/// Whether the mean of the last three costs is within 5 % of the mean of
/// the three before.
fn settled(costs: &[f64]) -> bool {
    let [.., a, b, c, d, e, f] = costs else { return false };
    let (before, last) = ((a + b + c) / 3.0, (d + e + f) / 3.0);
    last >= before * 0.95
}

/// Starts DynamoDB Local and makes the table with `streamcap dynamodb
/// create-table`, as an operator would.
fn start_dynamodb(ctx: &mut Ctx) -> Result<DynamoLocal, String> {
    let local = DynamoLocal::start(&ctx.commands)?;
    let args: Vec<String> = ["dynamodb", "create-table", "--dynamodb-table", DYNAMODB_TABLE, "--dynamodb-endpoint"]
        .iter()
        .map(|s| s.to_string())
        .chain([local.endpoint()])
        .collect();
    let env = dynamo_harness::CLIENT_ENV;
    ctx.commands.record(&procs::with_env(&env, &ctx.args.server.display().to_string()), &args);
    let out = procs::run_bounded_with_env(&ctx.args.server, &args, &env, Duration::from_secs(60))
        .map_err(|e| format!("streamcap dynamodb create-table: {e}"))?;
    eprintln!("   {} on port {}: {}", local.version, local.port, out.trim().replace('\n', "; "));
    Ok(local)
}

/// The closed-loop mix over two instances on the table: `first` (already
/// warm) and a second one started with the same `args`; the connections
/// alternate between them.
fn two_instances(
    ctx: &mut Ctx,
    dynamo: &DynamoLocal,
    first: &Server,
    args: &[String],
    env: &[(&str, &str)],
) -> Result<TwoInstances, String> {
    eprintln!("== dynamodb: the mix over two instances on one table");
    let second = Server::start_with_env(&ctx.args.server, args, env, Duration::from_secs(60), &ctx.commands)?;
    let addrs = [first.addr, second.addr];
    // Both instances count as "the server"; DynamoDB Local is the store.
    let watch = [first.pid(), second.pid(), dynamo.pid()];
    let warm = Duration::from_millis(if ctx.args.quick { 500 } else { 1500 });
    let out = measure_on(ctx, "warmuptwo", &addrs, mix(ctx), Pace::Closed, warm, &watch)?;
    finish(ctx, "warm-up mix, two instances", Pace::Closed, &servers_as_one(out, 2))?;
    let before = conflicts(&addrs)?;
    let window = ctx.mix;
    let out = measure_on(ctx, "mixtwo", &addrs, mix(ctx), Pace::Closed, window, &watch)?;
    let mix = finish(ctx, "mix, two instances", Pace::Closed, &servers_as_one(out, 2))?;
    let conflicts = Conflicts::new(conflicts(&addrs)?.saturating_sub(before), mix.requests + mix.drained);
    eprintln!("   lost races per 1,000 decisions: {}", conflicts.per_1k_decisions.unwrap_or(0.0));
    second.terminate(Duration::from_secs(60))?;
    Ok(TwoInstances { mix, conflicts })
}

/// Adds up the CPU of the first `n` watched processes, the instances of
/// one server, so that they count as the phase's server.
fn servers_as_one(mut out: load::Outcome, n: usize) -> load::Outcome {
    let fold = |v: &mut Vec<f64>| {
        let n = n.min(v.len());
        let sum: f64 = v.drain(..n).sum();
        v.insert(0, sum);
    };
    fold(&mut out.watched_cpu);
    fold(&mut out.watched_wait);
    out
}

/// `streamcap_store_conflicts_total`, summed over the servers at `addrs`.
fn conflicts(addrs: &[std::net::SocketAddr]) -> Result<u64, String> {
    let mut sum = 0;
    for &addr in addrs {
        let text = metrics_text(addr)?;
        sum += counter(&text, "streamcap_store_conflicts_total")
            .ok_or_else(|| format!("no streamcap metrics in the /metrics of {addr}"))?;
    }
    Ok(sum)
}

/// The value of a counter without labels in a Prometheus text page. A
/// counter appears once it was first incremented, so a page that shows
/// streamcap's metrics but not this one counts 0, and so does an empty
/// page (a server that has recorded nothing yet, not even a scrape); a
/// page with other text gives `None`.
fn counter(text: &str, name: &str) -> Option<u64> {
    let value = text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' '));
    match value {
        Some(v) => v.trim().parse::<f64>().ok().map(|v| v as u64),
        None => (text.trim().is_empty() || text.lines().any(|l| l.starts_with("streamcap_"))).then_some(0),
    }
}

/// One `GET /metrics`, its body as text.
fn metrics_text(addr: std::net::SocketAddr) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut c = http::Conn::connect(addr).await.map_err(|e| format!("/metrics of {addr}: {e}"))?;
        match tokio::time::timeout(load::REQUEST_TIMEOUT, c.fetch(METRICS)).await {
            Ok(Ok((200, body))) => String::from_utf8(body).map_err(|_| format!("/metrics of {addr}: not UTF-8")),
            Ok(Ok((status, _))) => Err(format!("/metrics of {addr} answered {status}")),
            Ok(Err(e)) => Err(format!("/metrics of {addr}: {e}")),
            Err(_) => Err(format!("/metrics of {addr}: no answer in time")),
        }
    })
}

/// The first line of `java -version` (which writes to stderr).
fn java_version() -> String {
    std::process::Command::new("java")
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stderr).lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
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
    let work = Work::Fill { start: 0, total: ctx.leases, users };
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

/// A target whose measurement is missing (its store or phase failed).
fn missing(name: &str, target: &str) -> Target {
    Target { name: name.into(), target: target.into(), measured: "–".into(), met: None, reported_only: false }
}

/// What the Redis run was asked for beyond the store itself, so that a
/// part that failed is listed as not measured.
#[derive(Clone, Copy, Default)]
struct RedisAsked {
    baseline: bool,
    contention: bool,
}

/// The targets, each with what was measured. Reported, never asserted.
fn targets(
    requested: &[String],
    stores: &[StoreReport],
    footprint: &[Footprint],
    recovery: &[Recovery],
    redis: RedisAsked,
) -> Vec<Target> {
    let mut t = Vec::new();
    let store = |name: &str| stores.iter().find(|s| s.store == name);
    // A store's targets are listed when it was asked for: "not measured" if it failed.
    let asked = |name: &str| requested.iter().any(|s| s == name);
    // CPU per request ÷ the bare server's: "2.31 × (20.6 vs 8.9 µs)".
    let cpu = |s: &StoreReport, p: &Phase, r: Option<f64>| -> Option<(f64, String)> {
        let (r, bare) = (r?, s.bare_livez.as_ref()?);
        let text = format!("{r:.2} × ({:.1} vs {:.1} µs)", p.cpu.server_us_per_request, bare.cpu.server_us_per_request);
        Some((r, text))
    };

    // DynamoDB Local is not AWS: its row has no target (see the end).
    let livez_name = "streamcap /livez CPU per request vs bare, every store";
    let livez: Vec<(&str, Option<(f64, String)>)> = requested
        .iter()
        .filter(|name| *name != "dynamodb")
        .map(|name| (name.as_str(), store(name).and_then(|s| cpu(s, &s.livez, s.livez_cpu_to_bare))))
        .collect();
    let measured: Vec<String> =
        livez.iter().map(|(s, r)| format!("{s} {}", r.as_ref().map_or("–", |r| r.1.as_str()))).collect();
    let all: Option<Vec<f64>> = livez.iter().map(|(_, r)| r.as_ref().map(|r| r.0)).collect();
    if !livez.is_empty() {
        t.push(Target {
            name: livez_name.into(),
            target: "≤ 1.4 × bare".into(),
            measured: measured.join("; "),
            met: all.map(|a| a.iter().all(|&r| r <= 1.4)),
            reported_only: false,
        });
    }
    for (name, goal, limit, label) in [
        ("memory", "≤ 2 × bare", 2.0, "memory: mix CPU per request vs bare"),
        ("sqlite", "≤ 3 × bare", 3.0, "sqlite: durable mix CPU per request vs bare"),
        ("redis", "≤ 2.5 × bare", 2.5, "redis: streamcap's mix CPU per request vs bare"),
    ] {
        if !asked(name) {
            continue;
        }
        match store(name).and_then(|s| cpu(s, &s.mix, s.mix_cpu_to_bare)) {
            Some((r, measured)) => t.push(Target {
                name: label.into(),
                target: goal.into(),
                measured,
                met: Some(r <= limit),
                reported_only: false,
            }),
            None => t.push(missing(label, goal)),
        }
        if name == "sqlite" {
            let label = "sqlite: durable mix throughput vs /livez";
            match store("sqlite") {
                Some(s) => t.push(Target {
                    name: label.into(),
                    target: "≥ 0.7 × /livez".into(),
                    measured: format!(
                        "{:.2} × ({} vs {} req/s)",
                        s.mix_to_livez,
                        int(s.mix.throughput),
                        int(s.livez.throughput)
                    ),
                    met: Some(s.mix_to_livez >= 0.7),
                    reported_only: false,
                }),
                None => t.push(missing(label, "≥ 0.7 × /livez")),
            }
        }
    }

    if asked("redis") {
        redis_targets(store("redis"), redis, &mut t);
    }
    for s in stores.iter().filter(|s| s.store != "dynamodb") {
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
            reported_only: false,
        });
    }
    for f in footprint {
        t.push(Target {
            name: format!("{}: RSS per live lease at {} leases", f.store, int(f.leases_created as f64)),
            target: "≤ 300 bytes".into(),
            measured: format!("{:.0} bytes", f.rss_bytes_per_lease),
            met: Some(f.rss_bytes_per_lease <= 300.0),
            reported_only: false,
        });
    }
    for r in recovery.iter().filter(|r| r.stop == "SIGTERM") {
        t.push(Target {
            name: format!("sqlite: restart recovery with {} leases", int(r.leases as f64)),
            target: "≤ 3 s".into(),
            measured: format!("{:.3} s to the first correct decision", r.to_first_decision_seconds),
            met: Some(r.correct && r.to_first_decision_seconds <= 3.0),
            reported_only: false,
        });
    }
    if asked("dynamodb") {
        t.push(dynamodb_row(store("dynamodb")));
    }
    t
}

/// The dynamodb store's figures, reported without a target: DynamoDB
/// Local is not AWS.
fn dynamodb_row(s: Option<&StoreReport>) -> Target {
    let name = "dynamodb on DynamoDB Local: mix throughput, p99, lost races, CPU per decision";
    let measured = s.and_then(|s| {
        let d = s.dynamodb.as_ref()?;
        let per_1k = |c: &Conflicts| c.per_1k_decisions.map_or("–".to_owned(), |r| format!("{r:.2}"));
        let mut text = format!(
            "{} req/s ({:.2} × /livez), p99 {} µs (at half of peak: {} µs, {:.2} × /livez p99); {} lost races \
             per 1,000 decisions",
            int(s.mix.throughput),
            s.mix_to_livez,
            int(s.mix.latency.p99_us),
            int(s.half_load_mix.latency.p99_us),
            s.half_load_p99_ratio,
            per_1k(&d.mix_conflicts)
        );
        if let Some(two) = &d.two_instances {
            text += &format!(" ({} with two instances)", per_1k(&two.conflicts));
        }
        text += &format!(
            "; CPU per decision: streamcap {:.1} µs ({:.2} × bare /livez), DynamoDB Local {:.1} µs",
            s.mix.cpu.server_us_per_request,
            s.mix_cpu_to_bare.unwrap_or(0.0),
            s.mix.cpu.store_us_per_request.unwrap_or(0.0)
        );
        Some(text)
    });
    Target {
        name: name.into(),
        target: "no target (DynamoDB Local is not AWS)".into(),
        measured: measured.unwrap_or_else(|| "–".into()),
        met: None,
        reported_only: s.is_some_and(|s| s.dynamodb.is_some()),
    }
}

/// The Redis targets: redis-server's CPU per decision against a SET's;
/// the commands per decision, flat in the number of users; against the
/// baseline, when one ran; and the concurrent acquires.
fn redis_targets(s: Option<&StoreReport>, asked: RedisAsked, t: &mut Vec<Target>) {
    let label = "redis: redis-server CPU per decision vs a SET";
    let per_decision = s.and_then(|s| {
        let d = s.mix.cpu.store_us_per_request?;
        let set = s.redis_set.as_ref()?.redis_cpu_us_per_call;
        Some((ratio(d, set)?, d, set))
    });
    match per_decision {
        Some((r, d, set)) => t.push(Target {
            name: label.into(),
            target: "≤ 1.5 × SET".into(),
            measured: format!("{r:.2} × ({d:.1} vs {set:.1} µs, whole process from /proc)"),
            met: Some(r <= 1.5),
            reported_only: false,
        }),
        None => t.push(missing(label, "≤ 1.5 × SET")),
    }
    let label = "redis: commands per decision (INFO commandstats)";
    match s.and_then(|s| s.redis_commands.as_ref()) {
        Some(c) => t.push(Target {
            name: label.into(),
            target: "no target".into(),
            measured: format!(
                "{}; {} µs inside Redis",
                c.summary(),
                c.usec_per_decision.map_or("–".to_owned(), |v| format!("{v:.2}"))
            ),
            met: None,
            reported_only: true,
        }),
        None => t.push(missing(label, "no target")),
    }
    let keyspace = s.and_then(|s| s.redis_keyspace.as_ref());
    let flat = keyspace.and_then(|k| {
        let (small, large) = (k.points.first()?, k.points.last()?);
        Some((k.growth?, small, large))
    });
    match flat {
        Some((g, small, large)) => t.push(Target {
            name: format!(
                "redis: µs inside Redis per decision, {} vs {} users",
                int(large.users as f64),
                int(small.users as f64)
            ),
            target: "flat: ≤ 1.25 ×".into(),
            measured: format!(
                "{g:.2} × ({:.2} vs {:.2} µs; redis-server CPU {:.1} vs {:.1} µs)",
                large.commands.usec_per_decision.unwrap_or(0.0),
                small.commands.usec_per_decision.unwrap_or(0.0),
                large.mix.cpu.store_us_per_request.unwrap_or(0.0),
                small.mix.cpu.store_us_per_request.unwrap_or(0.0)
            ),
            met: Some(g <= 1.25),
            reported_only: false,
        }),
        None => t.push(missing("redis: µs inside Redis per decision, by users in Redis", "flat: ≤ 1.25 ×")),
    }
    if asked.baseline {
        baseline_targets(s, t);
    }
    if asked.contention {
        let runs: Vec<_> = s.iter().flat_map(|s| &s.redis_contention).filter(|c| c.server == "current").collect();
        for redis in ["standalone", "cluster"] {
            let label = format!(
                "redis {redis}: {} concurrent acquires for one user over {} instances",
                contention::CONCURRENT,
                contention::INSTANCES
            );
            let goal = format!("grants = the limit ({}) each round", contention::LIMIT);
            match runs.iter().find(|c| c.redis.starts_with(redis)) {
                Some(c) => t.push(Target {
                    name: label,
                    target: goal,
                    measured: format!("{} rounds: {}", c.rounds.len(), c.describe()),
                    met: Some(c.grants_equal_limit()),
                    reported_only: false,
                }),
                None => t.push(missing(&label, &goal)),
            }
        }
    }
}

/// The current server against the baseline, from the same rounds.
fn baseline_targets(s: Option<&StoreReport>, t: &mut Vec<Target>) {
    let pair = s.and_then(|s| Some((s, s.redis_baseline.as_ref()?)));
    let label = |what: &str| match pair {
        Some((_, b)) => format!("redis vs baseline {}: {what}", b.label),
        None => format!("redis vs baseline: {what}"),
    };
    for v in VERSUS_BASELINE {
        let measured = pair.and_then(|(s, b)| {
            let (cur, base) = ((v.figure)(&s.mix)?, (v.figure)(&b.mix)?);
            let r = ratio(cur, base)?;
            let fmt = |x: f64| if v.unit == "req/s" { int(x) } else { format!("{x:.1}") };
            Some((r, format!("{r:.2} × ({} vs {} {})", fmt(cur), fmt(base), v.unit)))
        });
        match measured {
            Some((r, text)) => t.push(Target {
                name: label(v.what),
                target: v.goal.into(),
                measured: text,
                met: Some((v.met)(r)),
                reported_only: false,
            }),
            None => t.push(missing(&label(v.what), v.goal)),
        }
    }
}

/// One figure of the mix set against the baseline's: current ÷ baseline,
/// and whether that ratio meets the goal.
struct Versus {
    what: &'static str,
    goal: &'static str,
    figure: fn(&Phase) -> Option<f64>,
    met: fn(f64) -> bool,
    unit: &'static str,
}

const VERSUS_BASELINE: [Versus; 3] = [
    Versus {
        what: "redis-server CPU per decision",
        goal: "≤ 0.4 × baseline",
        figure: |p| p.cpu.store_us_per_request,
        met: |r| r <= 0.4,
        unit: "µs",
    },
    Versus {
        what: "streamcap CPU per decision",
        goal: "≤ 1.2 × baseline",
        figure: |p| Some(p.cpu.server_us_per_request),
        met: |r| r <= 1.2,
        unit: "µs",
    },
    Versus {
        what: "Redis mix throughput",
        goal: "≥ baseline",
        figure: |p| Some(p.throughput),
        met: |r| r >= 1.0,
        unit: "req/s",
    },
];

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
    let mut s = format!("streamcap-bench ({} run, {}). {}\n", r.mode, r.date, r.host());
    for t in &r.targets {
        let met = match t.met {
            _ if t.reported_only => "reported",
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        s.push_str(&format!("  {:<58} {:<18} {:<44} {met}\n", t.name, t.target, t.measured));
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
    use report::samples;

    fn met(t: &[Target], name: &str) -> Option<bool> {
        t.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no target {name:?}")).met
    }

    #[test]
    fn targets_compare_cpu_with_the_bare_server_and_redis_with_a_set() {
        let all = ["memory", "sqlite", "redis"].map(String::from);
        let stores =
            [samples::store("memory", 11.0, 16.0), samples::store("sqlite", 11.0, 24.8), samples::redis_store()];
        let t = targets(&all, &stores, &[], &[], RedisAsked::default());
        // Bare: 8 µs. /livez 11 µs is 1.375 ×; redis's 12 µs is 1.5 ×.
        let livez = t.iter().find(|t| t.name.starts_with("streamcap /livez")).unwrap();
        assert_eq!(livez.met, Some(false));
        assert!(livez.measured.starts_with("memory 1.38 × (11.0 vs 8.0 µs); sqlite 1.38 ×"), "{}", livez.measured);
        assert_eq!(met(&t, "memory: mix CPU per request vs bare"), Some(true));
        assert_eq!(met(&t, "sqlite: durable mix CPU per request vs bare"), Some(false));
        assert_eq!(met(&t, "sqlite: durable mix throughput vs /livez"), Some(true));
        assert_eq!(met(&t, "redis: streamcap's mix CPU per request vs bare"), Some(true));
        // redis-server: 10 µs per decision against 5 µs per SET.
        let set = t.iter().find(|t| t.name == "redis: redis-server CPU per decision vs a SET").unwrap();
        assert_eq!((set.met, set.target.as_str()), (Some(false), "≤ 1.5 × SET"));
        assert_eq!(set.measured, "2.00 × (10.0 vs 5.0 µs, whole process from /proc)");
        let commands = t.iter().find(|t| t.name == "redis: commands per decision (INFO commandstats)").unwrap();
        assert!(commands.reported_only, "{}", commands.measured);
        assert_eq!(commands.measured, "evalsha 1.00 (inside scripts: hget 2.00, time 1.00); 12.00 µs inside Redis");
        // 14 vs 12 µs: 1.17 ×, flat.
        assert_eq!(met(&t, "redis: µs inside Redis per decision, 1,000,000 vs 10,000 users"), Some(true));
        assert!(!t.iter().any(|t| t.name.contains("EVALSHA")));
        // Neither a baseline nor the concurrent acquires were asked for.
        assert!(!t.iter().any(|t| t.name.contains("baseline") || t.name.contains("concurrent")));
    }

    #[test]
    fn targets_set_the_current_redis_store_against_the_baseline() {
        let asked = RedisAsked { baseline: true, contention: true };
        let t = targets(&["redis".into()], &[samples::redis_store_with_baseline()], &[], &[], asked);
        let row = |name: &str| t.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no {name}"));
        let cpu = row("redis vs baseline v1.0 (abc): redis-server CPU per decision");
        assert_eq!((cpu.met, cpu.measured.as_str()), (Some(true), "0.25 × (10.0 vs 40.0 µs)"));
        let own = row("redis vs baseline v1.0 (abc): streamcap CPU per decision");
        assert_eq!((own.met, own.measured.as_str()), (Some(true), "1.05 × (20.0 vs 19.0 µs)"));
        let rate = row("redis vs baseline v1.0 (abc): Redis mix throughput");
        assert_eq!((rate.met, rate.measured.as_str()), (Some(true), "1.20 × (60,000 vs 50,000 req/s)"));
        let cluster = row("redis cluster: 64 concurrent acquires for one user over 2 instances");
        assert_eq!(cluster.met, Some(true));
        assert_eq!(cluster.measured, "2 rounds: 6 granted (per round: 3, 3), 122 × 409, 0 × 503, 0 other; 1 retries");
        assert_eq!(met(&t, "redis standalone: 64 concurrent acquires for one user over 2 instances"), Some(true));
        // Asked for, but the baseline and the acquires failed: not measured.
        let t = targets(&["redis".into()], &[samples::redis_store()], &[], &[], asked);
        assert_eq!(met(&t, "redis vs baseline: redis-server CPU per decision"), None);
        assert_eq!(met(&t, "redis standalone: 64 concurrent acquires for one user over 2 instances"), None);
        // Cheaper than the baseline meets it; more than 20 % dearer does not.
        let mut s = samples::redis_store_with_baseline();
        s.mix.cpu.server_us_per_request = 10.0;
        let t = targets(&["redis".into()], &[s], &[], &[], asked);
        assert_eq!(met(&t, "redis vs baseline v1.0 (abc): streamcap CPU per decision"), Some(true));
        let mut s = samples::redis_store_with_baseline();
        s.mix.cpu.server_us_per_request = 23.0;
        let t = targets(&["redis".into()], &[s], &[], &[], asked);
        assert_eq!(met(&t, "redis vs baseline v1.0 (abc): streamcap CPU per decision"), Some(false));
    }

    #[test]
    fn every_other_round_runs_the_workloads_in_reverse() {
        assert_eq!(round_order(3, 0), [0, 1, 2]);
        assert_eq!(round_order(3, 1), [2, 1, 0]);
        assert_eq!(round_order(3, 2), [0, 1, 2]);
        assert!(round_order(0, 1).is_empty());
    }

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

    #[test]
    fn dynamodb_is_reported_without_a_target() {
        let asked = ["memory", "dynamodb"].map(String::from);
        let stores = [samples::store("memory", 10.0, 15.0), samples::dynamodb_store()];
        let t = targets(&asked, &stores, &[], &[], RedisAsked::default());
        let row = t.iter().find(|t| t.name.starts_with("dynamodb on DynamoDB Local")).unwrap();
        assert!(row.reported_only && row.met.is_none(), "{}", row.measured);
        assert_eq!(row.target, "no target (DynamoDB Local is not AWS)");
        assert_eq!(
            row.measured,
            "60,000 req/s (0.75 × /livez), p99 2,000 µs (at half of peak: 2,000 µs, 4.50 × /livez p99); 0.00 lost \
             races per 1,000 decisions (0.50 with two instances); CPU per decision: streamcap 40.0 µs (5.00 × bare \
             /livez), DynamoDB Local 300.0 µs"
        );
        // In no target: not in the /livez one, no p99 one.
        assert_eq!(met(&t, "streamcap /livez CPU per request vs bare, every store"), Some(true));
        assert!(
            !t.iter().any(|t| t.name.starts_with("dynamodb:")),
            "{:?}",
            t.iter().map(|t| &t.name).collect::<Vec<_>>()
        );
        let mut report = samples::report(Vec::new());
        report.targets = t;
        assert!(summary(&report).contains("reported"));
        // Asked for but failed: not measured.
        let t = targets(&asked, &stores[..1], &[], &[], RedisAsked::default());
        let row = t.iter().find(|t| t.name.starts_with("dynamodb on DynamoDB Local")).unwrap();
        assert!(!row.reported_only && row.met.is_none() && row.measured == "–");
        // dynamodb alone: its row and nothing else.
        let t = targets(&["dynamodb".into()], &stores[1..], &[], &[], RedisAsked::default());
        assert_eq!(t.len(), 1, "{:?}", t.iter().map(|t| &t.name).collect::<Vec<_>>());
    }

    #[test]
    fn the_jit_warm_up_ends_when_the_cost_stops_falling() {
        assert!(!settled(&[900.0, 800.0, 700.0, 600.0, 500.0]));
        assert!(!settled(&[900.0, 800.0, 700.0, 600.0, 500.0, 450.0]));
        assert!(!settled(&[600.0, 500.0, 450.0, 460.0, 440.0, 470.0]), "still 12 % down");
        assert!(settled(&[500.0, 450.0, 460.0, 440.0, 470.0, 455.0]));
        // Noise upwards counts as settled too.
        assert!(settled(&[1.0, 400.0, 400.0, 400.0, 500.0, 500.0, 500.0]));
    }

    #[test]
    fn reads_a_counter_from_the_metrics_page() {
        let page = "# TYPE streamcap_store_conflicts_total counter\nstreamcap_store_conflicts_total 17\n\
                    streamcap_store_conflicts_total_other 3\nstreamcap_decisions_total{outcome=\"granted\"} 5\n";
        assert_eq!(counter(page, "streamcap_store_conflicts_total"), Some(17));
        // Not incremented yet: absent from a page that has streamcap's metrics.
        assert_eq!(
            counter("streamcap_decisions_total{outcome=\"granted\"} 5\n", "streamcap_store_conflicts_total"),
            Some(0)
        );
        assert_eq!(counter("<html>not metrics</html>", "streamcap_store_conflicts_total"), None);
        // A fresh server's first page.
        assert_eq!(counter("", "streamcap_store_conflicts_total"), Some(0));
    }

    #[test]
    fn two_instances_count_as_one_server() {
        let mut out = load::Outcome {
            wall: Duration::from_secs(1),
            all: hdrhistogram::Histogram::new(3).unwrap(),
            by_kind: Vec::new(),
            statuses: Default::default(),
            io_errors: 0,
            first_error: None,
            late: 0,
            drained: 0,
            client_cpu: 0.5,
            watched_cpu: vec![0.25, 0.5, 0.75],
            machine_busy: 2.0,
            machine_steal: 0.0,
            client_wait: 0.0,
            watched_wait: vec![0.125, 0.125, 0.5],
        };
        out = servers_as_one(out, 2);
        assert_eq!(out.watched_cpu, [0.75, 0.75]);
        assert_eq!(out.watched_wait, [0.25, 0.5]);
    }

    #[test]
    fn a_store_asked_for_but_not_measured_is_listed_as_such() {
        let asked = ["memory", "redis"].map(String::from);
        let t = targets(&asked, &[samples::store("memory", 10.0, 15.0)], &[], &[], RedisAsked::default());
        assert_eq!(met(&t, "streamcap /livez CPU per request vs bare, every store"), None);
        assert_eq!(met(&t, "redis: streamcap's mix CPU per request vs bare"), None);
        assert_eq!(met(&t, "redis: redis-server CPU per decision vs a SET"), None);
        assert!(!t.iter().any(|t| t.name.starts_with("sqlite")));
    }
}
