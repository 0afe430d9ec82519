//! The Redis tables: CPU per decision against a SET, the commands per
//! decision, the baseline side by side, and the concurrent acquires.

use std::fmt::Write as _;

use super::{times, us};
use crate::report::{CommandCost, Contention, Phase, RedisBaseline, StoreReport, int, ratio};

/// The Redis tables: redis-server's CPU and the µs inside Redis per
/// decision next to a SET's, the commands per decision, the baseline
/// side by side, and the concurrent acquires for one user.
pub fn redis_tables(m: &mut String, s: &StoreReport, users: usize, zipf: f64, host: &str) {
    cost_table(m, s, users, zipf, host);
    commands_table(m, s, host);
    if let Some(b) = &s.redis_baseline {
        baseline_table(m, s, b, host);
    }
    if !s.redis_contention.is_empty() {
        contention_table(m, &s.redis_contention, host);
    }
}

/// redis-server's CPU and the µs inside Redis per decision next to a
/// SET's, for the mix, the baseline's mix and the keyspace runs.
fn cost_table(m: &mut String, s: &StoreReport, users: usize, zipf: f64, host: &str) {
    let _ = writeln!(m, "\n#### Redis: CPU per decision vs a SET\n");
    let _ = writeln!(
        m,
        "{host} \"redis-server CPU\" is the whole process's CPU (utime + stime from /proc) over the closed-loop \
         mix windows, divided by the decisions answered in them (a decision is one lease request answered over \
         HTTP): commands, parsing and network together, what sizes a Redis deployment. The SET is \
         `redis-benchmark -c {} -t set` (no pipelining) on the same redis-server in the same run, measured the \
         same way. \"Commands sent\" and \"µs inside Redis\" come from `INFO commandstats` after `CONFIG \
         RESETSTAT`; the commands a script calls are listed by Redis on their own and inside the script's µs, \
         and a `MONITOR` sample of the warm-up tells them apart, so each µs counts once and only the commands \
         the store sent count as sent. commandstats times commands by the clock, so on a busy machine it reads \
         high. The keyspace rows run on a fresh redis-server whose users each hold one lease, the mix acting on \
         those users.\n",
        s.mix.connections
    );
    let _ = writeln!(
        m,
        "| workload | users | keys in Redis | decisions or requests | redis-server CPU µs per decision | ÷ SET | commands sent per decision | µs inside Redis per decision | ÷ SET |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    let set = s.redis_set.as_ref();
    let (set_in, set_cpu) = (set.map(|c| c.usec_per_call), set.map(|c| c.redis_cpu_us_per_call));
    let row = |m: &mut String, what: &str, users: &str, n: u64, cpu: Option<f64>, c: Option<&CommandCost>| {
        let inside = c.and_then(|c| c.usec_per_decision);
        let _ = writeln!(
            m,
            "| {what} | {users} | {} | {} | {} | {} | {} | {} | {} |",
            c.and_then(|c| c.keys).map_or("–".to_owned(), |k| int(k as f64)),
            int(n as f64),
            us(cpu),
            times(cpu.zip(set_cpu).and_then(|(a, b)| ratio(a, b))),
            c.and_then(|c| c.sent_per_decision).map_or("–".to_owned(), |v| format!("{v:.2}")),
            inside.map_or("–".to_owned(), |v| format!("{v:.2}")),
            times(inside.zip(set_in).and_then(|(a, b)| ratio(a, b))),
        );
    };
    let random = format!("{} random", int(users as f64));
    if let Some(c) = set {
        let _ = writeln!(
            m,
            "| `redis-benchmark` SET | {random} | – | {} | {:.1} | 1.00 × | 1.00 | {:.2} | 1.00 × |",
            int(c.requests as f64),
            c.redis_cpu_us_per_call,
            c.usec_per_call
        );
    }
    let zipf_users = |n: u64| format!("{} (Zipf {zipf})", int(n as f64));
    let decisions = |c: Option<&CommandCost>, p: &Phase| c.map_or(p.requests + p.drained, |c| c.decisions);
    let current = s.redis_commands.as_ref();
    let label = if s.redis_baseline.is_some() { "HTTP lease mix, current" } else { "HTTP lease mix" };
    row(m, label, &zipf_users(users as u64), decisions(current, &s.mix), s.mix.cpu.store_us_per_request, current);
    if let Some(b) = &s.redis_baseline {
        let what = format!("HTTP lease mix, baseline {}", b.label);
        let c = b.commands.as_ref();
        row(m, &what, &zipf_users(users as u64), decisions(c, &b.mix), b.mix.cpu.store_us_per_request, c);
    }
    if let Some(k) = &s.redis_keyspace {
        for p in &k.points {
            let c = Some(&p.commands);
            let what = "HTTP lease mix, keyspace";
            row(m, what, &zipf_users(p.users), p.commands.decisions, p.mix.cpu.store_us_per_request, c);
        }
        if let (Some(a), Some(b), Some(g)) = (k.points.first(), k.points.last(), k.growth) {
            let (cpu_a, cpu_b) = (a.mix.cpu.store_us_per_request, b.mix.cpu.store_us_per_request);
            let _ = writeln!(
                m,
                "\nFrom {} to {} users in Redis, the µs per decision inside Redis went from {} to {}: {g:.2} × \
                 (redis-server CPU per decision: {} to {}, {}).",
                int(a.users as f64),
                int(b.users as f64),
                us(a.commands.usec_per_decision),
                us(b.commands.usec_per_decision),
                us(cpu_a),
                us(cpu_b),
                times(cpu_b.zip(cpu_a).and_then(|(b, a)| ratio(b, a)))
            );
        }
    }
}

/// Every command per decision of each window, the calls made inside
/// scripts apart.
fn commands_table(m: &mut String, s: &StoreReport, host: &str) {
    let current = s.redis_commands.as_ref();
    let label = if s.redis_baseline.is_some() { "HTTP lease mix, current" } else { "HTTP lease mix" };
    let mut windows: Vec<(String, &CommandCost)> = Vec::new();
    if let Some(c) = current {
        windows.push((label.to_owned(), c));
    }
    if let Some(b) = &s.redis_baseline
        && let Some(c) = &b.commands
    {
        windows.push((format!("HTTP lease mix, baseline {}", b.label), c));
    }
    for p in s.redis_keyspace.iter().flat_map(|k| &k.points) {
        windows.push((format!("keyspace, {} users", int(p.users as f64)), &p.commands));
    }
    if windows.iter().any(|(_, c)| !c.commands.is_empty()) {
        let _ = writeln!(m, "\n#### Redis: commands per decision (`INFO commandstats`)\n");
        let _ = writeln!(
            m,
            "{host} Every command Redis counted in the window except the harness's own (`CONFIG RESETSTAT`, \
             `INFO`, `DBSIZE`), per decision. \"Inside scripts\" is the share of a command's calls that a script \
             made (from `MONITOR` during the warm-up, which shows them as `[0 lua]`); their µs are inside the \
             script command's µs. The total counts each µs once and, as sent, only the calls the store made.\n"
        );
        let _ = writeln!(
            m,
            "| workload | command | calls per decision | inside scripts | µs per decision | failed calls |\n|---|---|---:|---:|---:|---:|"
        );
        for (what, c) in &windows {
            for u in &c.commands {
                let _ = writeln!(
                    m,
                    "| {what} | `{}` | {} | {:.0} % | {} | {} |",
                    u.name,
                    u.calls_per_decision.map_or("–".to_owned(), |v| format!("{v:.3}")),
                    u.inside_scripts * 100.0,
                    u.usec_per_decision.map_or("–".to_owned(), |v| format!("{v:.2}")),
                    int(u.failed_calls as f64)
                );
            }
            let _ = writeln!(
                m,
                "| {what} | **total** | {} sent | | **{}** | {} |",
                c.sent_per_decision.map_or("–".to_owned(), |v| format!("{v:.3}")),
                c.usec_per_decision.map_or("–".to_owned(), |v| format!("{v:.2}")),
                int(c.failed_calls as f64)
            );
        }
    }
}

/// The baseline and the current server side by side, from the same
/// rounds.
fn baseline_table(m: &mut String, s: &StoreReport, b: &RedisBaseline, host: &str) {
    let _ = writeln!(m, "\n#### Redis: against the baseline {}\n", b.label);
    let _ = writeln!(
        m,
        "{host} The baseline is `{}`, run on a redis-server of its own next to the current server's; the two \
         servers' mix windows alternate in the same closed-loop rounds, so drift on the machine affects both \
         alike. CPU per decision is per request answered in the windows, from /proc.\n",
        b.server_binary
    );
    let _ = writeln!(m, "| | baseline | current | current ÷ baseline | target |\n|---|---:|---:|---:|---|");
    let row = |m: &mut String, what: &str, base: Option<f64>, cur: Option<f64>, digits: usize, target: &str| {
        let fmt = |v: Option<f64>| match v {
            Some(v) if digits == 0 => int(v),
            Some(v) => format!("{v:.digits$}"),
            None => "–".to_owned(),
        };
        let r = times(cur.zip(base).and_then(|(c, b)| ratio(c, b)));
        let _ = writeln!(m, "| {what} | {} | {} | {r} | {target} |", fmt(base), fmt(cur));
    };
    let (bm, cm) = (&b.mix, &s.mix);
    row(m, "redis-server CPU µs per decision", bm.cpu.store_us_per_request, cm.cpu.store_us_per_request, 1, "≤ 0.4 ×");
    row(
        m,
        "streamcap CPU µs per decision",
        Some(bm.cpu.server_us_per_request),
        Some(cm.cpu.server_us_per_request),
        1,
        "≤ 1.2 ×",
    );
    row(m, "mix throughput, req/s", Some(bm.throughput), Some(cm.throughput), 0, "≥ 1 ×");
    let (bc, cc) = (b.commands.as_ref(), s.redis_commands.as_ref());
    let field = |c: Option<&CommandCost>, f: fn(&CommandCost) -> Option<f64>| c.and_then(f);
    row(
        m,
        "commands sent per decision",
        field(bc, |c| c.sent_per_decision),
        field(cc, |c| c.sent_per_decision),
        2,
        "–",
    );
    row(
        m,
        "µs inside Redis per decision",
        field(bc, |c| c.usec_per_decision),
        field(cc, |c| c.usec_per_decision),
        2,
        "–",
    );
    row(m, "mix p99 µs", Some(bm.latency.p99_us), Some(cm.latency.p99_us), 0, "–");
    let _ = writeln!(
        m,
        "\nCommands per decision: baseline {}; current {}.",
        bc.map_or("–".to_owned(), CommandCost::summary),
        cc.map_or("–".to_owned(), CommandCost::summary)
    );
}

/// The concurrent acquires for one user over two instances.
fn contention_table(m: &mut String, runs: &[Contention], host: &str) {
    let first = &runs[0];
    let _ = writeln!(
        m,
        "\n#### Redis: {} concurrent acquires for one user over {} instances\n",
        first.concurrent, first.instances
    );
    let _ = writeln!(
        m,
        "{host} Each round, a fresh user; {} connections, alternating between {} streamcap instances on the same \
         Redis, each send an acquire of a stream of their own at once. Exactly the limit ({}) must be granted. \
         Retries are the growth of `streamcap_store_conflicts_total` on the instances' `/metrics` over the round: \
         writes that found another version than they had read and were decided again.\n",
        first.concurrent, first.instances, first.limit
    );
    let _ = writeln!(
        m,
        "| server | Redis | rounds | granted | granted per round | 409 | 503 | other | retries |\n|---|---|---:|---:|---|---:|---:|---:|---:|"
    );
    for c in runs {
        let t = c.total();
        let per_round: Vec<String> = c.rounds.iter().map(|r| r.granted.to_string()).collect();
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {}{} | {} | {} | {} | {} |",
            c.server,
            c.redis,
            c.rounds.len(),
            t.granted,
            per_round.join(", "),
            if c.grants_equal_limit() { "" } else { " (**not the limit**)" },
            t.denied_409,
            t.unavailable_503,
            t.other,
            t.retries
        );
    }
}
