//! The targets, each with what was measured: reported, never asserted.
//! A store's targets are listed when it was asked for, "not measured"
//! when it failed. One file per store with targets of its own.

mod dynamodb;
mod redis;
#[cfg(test)]
mod tests;

use crate::report::{Footprint, Phase, Recovery, StoreReport, Target, int};
use dynamodb::dynamodb_row;
use redis::redis_targets;

/// A target whose measurement is missing (its store or phase failed).
fn missing(name: &str, target: &str) -> Target {
    Target { name: name.into(), target: target.into(), measured: "–".into(), met: None, reported_only: false }
}

/// What the Redis run was asked for beyond the store itself, so that a
/// part that failed is listed as not measured.
#[derive(Clone, Copy, Default)]
pub struct RedisAsked {
    pub baseline: bool,
    pub contention: bool,
}

/// The targets, each with what was measured. Reported, never asserted.
pub fn targets(
    requested: &[String],
    stores: &[StoreReport],
    footprint: &[Footprint],
    recovery: &[Recovery],
    redis: RedisAsked,
) -> Vec<Target> {
    let store = |name: &str| stores.iter().find(|s| s.store == name);
    // A store's targets are listed when it was asked for: "not measured" if it failed.
    let asked = |name: &str| requested.iter().any(|s| s == name);
    let mut t = Vec::new();
    t.extend(livez_target(requested, stores));
    for (name, goal, limit, label) in MIX_CPU.into_iter().filter(|m| asked(m.0)) {
        t.push(match store(name).and_then(|s| cpu_vs_bare(s, &s.mix, s.mix_cpu_to_bare)) {
            Some((r, measured)) => Target {
                name: label.into(),
                target: goal.into(),
                measured,
                met: Some(r <= limit),
                reported_only: false,
            },
            None => missing(label, goal),
        });
        if name == "sqlite" {
            t.push(sqlite_throughput(store("sqlite")));
        }
    }
    if asked("redis") {
        redis_targets(store("redis"), redis, &mut t);
    }
    t.extend(stores.iter().filter(|s| s.store != "dynamodb").map(half_load_target));
    t.extend(footprint.iter().map(|f| Target {
        name: format!("{}: RSS per live lease at {} leases", f.store, int(f.leases_created as f64)),
        target: "≤ 300 bytes".into(),
        measured: format!("{:.0} bytes", f.rss_bytes_per_lease),
        met: Some(f.rss_bytes_per_lease <= 300.0),
        reported_only: false,
    }));
    t.extend(recovery.iter().filter(|r| r.stop == "SIGTERM").map(|r| Target {
        name: format!("sqlite: restart recovery with {} leases", int(r.leases as f64)),
        target: "≤ 3 s".into(),
        measured: format!("{:.3} s to the first correct decision", r.to_first_decision_seconds),
        met: Some(r.correct && r.to_first_decision_seconds <= 3.0),
        reported_only: false,
    }));
    if asked("dynamodb") {
        t.push(dynamodb_row(store("dynamodb")));
    }
    t
}

/// The mix's server CPU per request against the bare server's, by store:
/// the store, the goal, the limit of the ratio, the target's name.
const MIX_CPU: [(&str, &str, f64, &str); 3] = [
    ("memory", "≤ 2 × bare", 2.0, "memory: mix CPU per request vs bare"),
    ("sqlite", "≤ 3 × bare", 3.0, "sqlite: durable mix CPU per request vs bare"),
    ("redis", "≤ 2.5 × bare", 2.5, "redis: streamcap's mix CPU per request vs bare"),
];

/// CPU per request ÷ the bare server's: "2.31 × (20.6 vs 8.9 µs)".
fn cpu_vs_bare(s: &StoreReport, p: &Phase, r: Option<f64>) -> Option<(f64, String)> {
    let (r, bare) = (r?, s.bare_livez.as_ref()?);
    let text = format!("{r:.2} × ({:.1} vs {:.1} µs)", p.cpu.server_us_per_request, bare.cpu.server_us_per_request);
    Some((r, text))
}

/// streamcap's `/livez` against the bare server's, every store in one
/// row; DynamoDB Local is not AWS, so its store is left out.
fn livez_target(requested: &[String], stores: &[StoreReport]) -> Option<Target> {
    let livez: Vec<(&str, Option<(f64, String)>)> = requested
        .iter()
        .filter(|name| *name != "dynamodb")
        .map(|name| {
            let s = stores.iter().find(|s| s.store == *name);
            (name.as_str(), s.and_then(|s| cpu_vs_bare(s, &s.livez, s.livez_cpu_to_bare)))
        })
        .collect();
    if livez.is_empty() {
        return None;
    }
    let measured: Vec<String> =
        livez.iter().map(|(s, r)| format!("{s} {}", r.as_ref().map_or("–", |r| r.1.as_str()))).collect();
    let all: Option<Vec<f64>> = livez.iter().map(|(_, r)| r.as_ref().map(|r| r.0)).collect();
    Some(Target {
        name: "streamcap /livez CPU per request vs bare, every store".into(),
        target: "≤ 1.4 × bare".into(),
        measured: measured.join("; "),
        met: all.map(|a| a.iter().all(|&r| r <= 1.4)),
        reported_only: false,
    })
}

/// sqlite's durable mix against its own `/livez`.
fn sqlite_throughput(s: Option<&StoreReport>) -> Target {
    let label = "sqlite: durable mix throughput vs /livez";
    match s {
        Some(s) => Target {
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
        },
        None => missing(label, "≥ 0.7 × /livez"),
    }
}

/// The mix's p99 at half of the peak against `/livez`'s at the same rate.
fn half_load_target(s: &StoreReport) -> Target {
    Target {
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
    }
}
