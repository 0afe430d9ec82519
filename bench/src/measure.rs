//! One window of load and its summary: the server's flags, the windows
//! of a phase (alternating in rounds with the phases it is compared
//! with), the failures a phase shows, and the workloads it sends.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::dynamodb::DYNAMODB_TABLE;
use crate::load::{self, Pace, Plan, Work};
use crate::procs::{DynamoLocal, Redis};
use crate::report::Phase;
use crate::workload::MixParams;
use crate::{Ctx, SERVER_FLAGS};

pub fn server_args(store: &str, data_dir: Option<&Path>, redis: Option<&Redis>, extra: &[&str]) -> Vec<String> {
    server_args_with(store, data_dir, redis, None, extra)
}

pub fn server_args_with(
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
    addr: SocketAddr,
    work: Work,
    pace: Pace,
    duration: Duration,
    watch: &[u32],
) -> Result<load::Outcome, String> {
    measure_on(ctx, tag, &[addr], work, pace, duration, watch)
}

/// [`measure`] over the connections alternating between `addrs`.
pub fn measure_on(
    ctx: &Ctx,
    tag: &str,
    addrs: &[SocketAddr],
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
pub fn finish(ctx: &mut Ctx, name: &str, pace: Pace, out: &load::Outcome) -> Result<Phase, String> {
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
pub fn phase(
    ctx: &mut Ctx,
    name: &str,
    addr: SocketAddr,
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
pub type MakeWork<'a> = &'a dyn Fn(&Ctx) -> Work;

/// One of the workloads that `interleaved` alternates.
pub struct Spec<'a> {
    pub name: &'a str,
    /// The server it goes to, and the processes whose CPU is read: the
    /// first one is "the server" of the phase.
    pub addr: SocketAddr,
    pub watch: &'a [u32],
    pub work: MakeWork<'a>,
    pub pace: Pace,
    pub duration: Duration,
}

/// Workloads measured in alternating rounds, so that a disturbance from
/// outside (another process on the machine) hits them all alike. Each
/// round gives each workload `duration / rounds`; every other round runs
/// them in reverse order, so that over an even number of rounds none of
/// them always comes first or last.
pub fn interleaved(ctx: &mut Ctx, specs: &[Spec<'_>]) -> Result<Vec<Phase>, String> {
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

pub fn mix(ctx: &Ctx) -> Work {
    Work::Mix(MixParams {
        zipf: ctx.zipf.clone(),
        renewals: ctx.args.renewals,
        sessions: ctx.args.sessions.max(1),
        user_prefix: "u",
    })
}

/// Adds up the CPU of the first `n` watched processes, the instances of
/// one server, so that they count as the phase's server.
pub fn servers_as_one(mut out: load::Outcome, n: usize) -> load::Outcome {
    let fold = |v: &mut Vec<f64>| {
        let n = n.min(v.len());
        let sum: f64 = v.drain(..n).sum();
        v.insert(0, sum);
    };
    fold(&mut out.watched_cpu);
    fold(&mut out.watched_wait);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_other_round_runs_the_workloads_in_reverse() {
        assert_eq!(round_order(3, 0), [0, 1, 2]);
        assert_eq!(round_order(3, 1), [2, 1, 0]);
        assert_eq!(round_order(3, 2), [0, 1, 2]);
        assert!(round_order(0, 1).is_empty());
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
}
