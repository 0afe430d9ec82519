//! What `--redis-replica-acks 1` costs: the lease mix on two servers that
//! share one redis-server primary with one replica (a second
//! redis-server, `REPLICAOF` the first), one without acknowledgements and
//! one waiting for the replica after every write, in alternating rounds.
//! Throughput and p99 of each, and the ratio of the two, go to stderr as a
//! Markdown table and to `bench/results/acks.json`; nothing is asserted.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Ctx;
use crate::host::{command_line, loadavg, machine};
use crate::load::Pace;
use crate::measure::{Spec, interleaved, mix, server_args};
use crate::procs::{Redis, Server, fsync_latency};
use crate::report::{Machine, Phase, round1, round3};

#[derive(Serialize)]
struct AcksReport {
    date: String,
    machine: Machine,
    connections: usize,
    rounds: u32,
    mix_seconds: f64,
    without: Phase,
    with_one: Phase,
    throughput_ratio: f64,
    p99_ratio: f64,
}

/// Runs the comparison and writes its report.
pub fn run(ctx: &mut Ctx) -> Result<(), String> {
    let loadavg_before = loadavg();
    let tmp = std::env::temp_dir();
    let fsync = fsync_latency(&tmp)?;
    let primary = Redis::start(&ctx.commands)?;
    let replica = Redis::start(&ctx.commands)?;
    replica.cli(&["REPLICAOF", "127.0.0.1", &primary.port.to_string()])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replica.cli(&["INFO", "replication"])?.contains("master_link_status:up") {
        if Instant::now() > deadline {
            return Err("the replica did not sync within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let limit = Duration::from_secs(60);
    let start = |acks: &str| {
        let args = server_args("redis", None, Some(&primary), &["--redis-replica-acks", acks]);
        Server::start(&ctx.args.server, &args, limit, &ctx.commands)
    };
    let (plain, acked) = (start("0")?, start("1")?);
    let watch = |s: &Server| vec![s.pid(), primary.pid(), replica.pid()];
    let (plain_watch, acked_watch) = (watch(&plain), watch(&acked));
    let warm = Duration::from_millis(if ctx.args.quick { 500 } else { 1500 });
    let closed = Pace::Closed;
    let specs = |duration| {
        [
            Spec { name: "mix, acks 0", addr: plain.addr, watch: &plain_watch, work: &mix, pace: closed, duration },
            Spec { name: "mix, acks 1", addr: acked.addr, watch: &acked_watch, work: &mix, pace: closed, duration },
        ]
    };
    interleaved(ctx, &specs(warm))?;
    let mut phases = interleaved(ctx, &specs(ctx.mix))?.into_iter();
    let (without, with_one) = (phases.next().ok_or("no phase")?, phases.next().ok_or("no phase")?);
    let report = AcksReport {
        date: command_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
        machine: machine(&tmp, fsync, loadavg_before),
        connections: ctx.args.connections,
        rounds: ctx.rounds,
        mix_seconds: ctx.mix.as_secs_f64(),
        throughput_ratio: round3(with_one.throughput / without.throughput),
        p99_ratio: round3(with_one.latency.p99_us / without.latency.p99_us),
        without,
        with_one,
    };
    eprintln!("\n| `--redis-replica-acks` | mix throughput | p50 | p99 |\n|---|---|---|---|");
    for (n, p) in [("0", &report.without), ("1", &report.with_one)] {
        eprintln!(
            "| {n} | {:.0} decisions/s | {} µs | {} µs |",
            p.throughput,
            round1(p.latency.p50_us),
            round1(p.latency.p99_us)
        );
    }
    eprintln!(
        "\nwith acks 1: {} × the throughput, {} × the p99 ({}, {} connections, {} rounds of {} s each)",
        report.throughput_ratio,
        report.p99_ratio,
        report.machine.cpu_model,
        report.connections,
        report.rounds,
        report.mix_seconds
    );
    let path = ctx.args.json.clone().unwrap_or_else(|| "bench/results/acks.json".into());
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))
}
