//! The Redis targets: redis-server's CPU per decision against a SET's,
//! the commands per decision, flat in the number of users; against the
//! baseline, when one ran; and the concurrent acquires for one user.

use super::{RedisAsked, missing};
use crate::contention;
use crate::report::{Phase, StoreReport, Target, int, ratio};

/// The Redis targets: redis-server's CPU per decision against a SET's;
/// the commands per decision, flat in the number of users; against the
/// baseline, when one ran; and the concurrent acquires.
pub fn redis_targets(s: Option<&StoreReport>, asked: RedisAsked, t: &mut Vec<Target>) {
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
        contention_targets(s, t);
    }
}

/// The concurrent acquires for one user, on standalone Redis and on a
/// Redis Cluster: exactly the limit granted in each round.
fn contention_targets(s: Option<&StoreReport>, t: &mut Vec<Target>) {
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
