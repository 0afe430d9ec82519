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
//! - `main` (this file): the command line, and the run in order: each
//!   store's phases, the footprints, the targets, the outputs.
//! - `throughput`: one store's phases against its ceilings.
//! - `footprint`: memory per lease and restart recovery.
//! - `dynamodb`: DynamoDB Local: the table, the JIT warm-up, two instances.
//! - `redis`: the Redis measurements: commandstats and MONITOR, the SET
//!   ceiling, the keyspace runs.
//! - `contention`: concurrent acquires for one user over two instances.
//! - `measure`: one window of load and its summary; rounds; server flags.
//! - `probe`: single requests: `/metrics` counters, the scraper.
//! - `load`: the driver: connections, client threads, closed/open/fill pace.
//! - `workload`: what is sent: `/livez`, the lease mix, the fill.
//! - `http`: a minimal HTTP/1.1 keep-alive client.
//! - `bare`: the bare server (`streamcap-bench bare-server`).
//! - `procs`: the processes: streamcap, the bare server, redis-server,
//!   redis-benchmark, DynamoDB Local; /proc.
//! - `host`: the machine and the build the report names.
//! - `dynamo_harness`, `redis_harness`: the tests' DynamoDB Local,
//!   redis-server and Redis Cluster helpers, shared with them.
//! - `targets`: each target with what was measured, one file per store.
//! - `report`: the results as JSON; `render`: the results as Markdown.

mod acks;
mod bare;
mod contention;
#[path = "../../src/store/dynamodb/harness.rs"]
mod dynamo_harness;
mod dynamodb;
mod footprint;
mod host;
mod http;
mod load;
mod measure;
mod probe;
mod procs;
mod redis;
#[path = "../../src/store/redis/harness.rs"]
mod redis_harness;
mod render;
mod report;
mod targets;
mod throughput;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use procs::CommandLog;
use report::{Params, Report, round1, round3};
use targets::RedisAsked;
use workload::Zipf;

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

/// The run's settings, resolved from the flags with the full or quick
/// defaults, and what it collects on the way: the commands it spawned and
/// its failures.
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
    let mut ctx = Ctx::new(cli.args);
    if let Some(path) = &ctx.args.from_json {
        return match render_from_json(path, &ctx.args.markdown) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("streamcap-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = check_binaries(&ctx.args) {
        eprintln!("streamcap-bench: {e}");
        return ExitCode::from(2);
    }
    if ctx.args.replica_acks {
        let done = acks::run(&mut ctx);
        return done.map_or_else(|e| (eprintln!("streamcap-bench: {e}"), ExitCode::FAILURE).1, |()| ExitCode::SUCCESS);
    }
    let report = run(&mut ctx);
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

impl Ctx {
    /// The durations and sizes `args` asks for, or the defaults of the
    /// full or the quick run.
    fn new(args: Args) -> Ctx {
        let quick = args.quick;
        let secs = |v: Option<f64>, full: f64, quick_v: f64| {
            Duration::from_secs_f64(v.unwrap_or(if quick { quick_v } else { full }))
        };
        Ctx {
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
        }
    }

    /// The parameters of the run, for the report.
    fn params(&self) -> Params {
        let args = &self.args;
        Params {
            connections: args.connections,
            client_threads: args.client_threads,
            users: args.users,
            zipf_exponent: args.zipf,
            zipf_top_user_share: round3(self.zipf.top_share()),
            sessions_per_connection: args.sessions,
            renewals_per_session: args.renewals,
            livez_seconds: self.livez.as_secs_f64(),
            mix_seconds: self.mix.as_secs_f64(),
            open_loop_seconds: self.open.as_secs_f64(),
            rounds: self.rounds,
            leases: self.leases,
            server_flags: SERVER_FLAGS.join(" "),
            baseline_server: args.baseline_server.as_ref().map(|b| b.display().to_string()),
            contention_rounds: args.contention_rounds,
        }
    }
}

/// Measures nothing: re-renders the Markdown section from a recorded JSON.
fn render_from_json(path: &Path, markdown: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let report = serde_json::from_str::<Report>(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc = std::fs::read_to_string(markdown).unwrap_or_else(|_| "# Benchmarks\n".into());
    let out = render::splice(&doc, &report.mode, &report.markdown());
    std::fs::write(markdown, out).map_err(|e| format!("{}: {e}", markdown.display()))
}

/// The server binaries must exist before anything starts.
fn check_binaries(args: &Args) -> Result<(), String> {
    if !args.server.is_file() {
        return Err(format!(
            "no server binary at {}; build it with `cargo build --release --workspace` (scripts/bench does)",
            args.server.display()
        ));
    }
    match args.baseline_server.as_ref().filter(|b| !b.is_file()) {
        Some(b) => {
            Err(format!("no baseline server binary at {}; scripts/bench --baseline REV builds one", b.display()))
        }
        None => Ok(()),
    }
}

/// Every measurement, in order: each store's phases, then the memory per
/// lease and the recovery; then the targets.
fn run(ctx: &mut Ctx) -> Report {
    let started = Instant::now();
    let loadavg_before = host::loadavg();
    let tmp = std::env::temp_dir();
    let fsync = procs::fsync_latency(&tmp).unwrap_or_else(|e| {
        ctx.failures.push(format!("fsync probe in {}: {e}", tmp.display()));
        (0.0, 0.0)
    });
    eprintln!("streamcap-bench: {} run; load average before: {loadavg_before}", ctx.mode);

    let mut stores = Vec::new();
    for store in ctx.args.stores.clone() {
        eprintln!("== {store}: throughput and latency");
        match throughput::store_run(ctx, &store) {
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
            match footprint::footprint_run(ctx, store, &mut recovery) {
                Ok(f) => footprint.push(f),
                Err(e) => ctx.failures.push(format!("{store} footprint: {e}")),
            }
        }
    }

    let asked = RedisAsked { baseline: ctx.args.baseline_server.is_some(), contention: ctx.args.contention_rounds > 0 };
    let targets = targets::targets(&ctx.args.stores, &stores, &footprint, &recovery, asked);
    Report {
        mode: ctx.mode.to_owned(),
        date: host::command_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
        machine: host::machine(&tmp, fsync, loadavg_before),
        build: host::build(&ctx.args.server),
        params: ctx.params(),
        commands: std::iter::once(host::invocation()).chain(ctx.commands.lines()).collect(),
        stores,
        footprint,
        recovery,
        targets,
        failures: ctx.failures.clone(),
        total_seconds: round1(started.elapsed().as_secs_f64()),
    }
}

/// Writes the JSON, and unless `--no-docs` the Markdown section.
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
        let out = render::splice(&doc, ctx.mode, &report.markdown());
        std::fs::write(&ctx.args.markdown, out)
            .map_err(|e| format!("cannot write {}: {e}", ctx.args.markdown.display()))?;
        eprintln!("streamcap-bench: updated the {} section of {}", ctx.mode, ctx.args.markdown.display());
    }
    Ok(())
}

/// The targets, one line each, for the terminal.
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
