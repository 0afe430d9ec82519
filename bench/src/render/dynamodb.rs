//! The DynamoDB Local table: lost races and CPU per decision, with no
//! target.

use std::fmt::Write as _;

use super::us;
use crate::report::{Conflicts, DynamoReport, Phase, StoreReport, int};

/// The DynamoDB Local table: lost races per 1,000 decisions, and the CPU
/// of streamcap and of DynamoDB Local per decision, with one instance and
/// with two.
pub fn dynamodb_table(m: &mut String, s: &StoreReport, d: &DynamoReport) {
    let _ = writeln!(m, "\n#### DynamoDB Local: lost races and CPU per decision (no target)\n");
    let _ = writeln!(
        m,
        "{}, run by {} with `-inMemory` and the JVM's default settings, on the same two cores; table `{}` made \
         by `streamcap dynamodb create-table`. Before the measured phases the mix ran for {:.0} s, until DynamoDB \
         Local's CPU per decision had stopped falling as the JVM compiled its hot code ({:.0} µs in the last \
         2-s window). DynamoDB Local is a Java program that keeps its tables in SQLite: \
         it has none of AWS's network round trips, partitions, replication or throttling, and it takes CPU from \
         the server and the client here. These numbers show what streamcap does per decision (one consistent \
         `GetItem`, then a conditional `PutItem` or `DeleteItem` when something changed) and how often a \
         write loses a race; they are no forecast of AWS, so they have no target.\n",
        d.dynamodb_local, d.java, d.table, d.jit_warm_up_seconds, d.jit_warm_up_last_us_per_decision
    );
    let _ = writeln!(
        m,
        "\"Conflicts retried\" is the growth of `streamcap_store_conflicts_total` on `/metrics` over the phase \
         (summed over the instances): conditional writes that found another version than they had read, and \
         were decided again. Decisions are the lease requests answered over HTTP, including the releases sent \
         after each window. Within one instance a user's operations take turns, so only a second instance can \
         race: the last row runs the closed-loop mix with its connections alternating between two instances \
         on the table, so that each user's requests reach both. Its streamcap CPU is both instances'.\n"
    );
    let _ = writeln!(
        m,
        "| phase | instances | req/s | p99 µs | decisions | conflicts retried | per 1,000 decisions | streamcap CPU µs/req | DynamoDB Local CPU µs per decision | 5xx |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let row = |m: &mut String, what: &str, n: u32, p: &Phase, c: &Conflicts| {
        let _ = writeln!(
            m,
            "| {what} | {n} | {} | {} | {} | {} | **{}** | {} | {} | {} |",
            int(p.throughput),
            int(p.latency.p99_us),
            int(c.decisions as f64),
            int(c.conflicts as f64),
            c.per_1k_decisions.map_or("–".to_owned(), |r| format!("{r:.2}")),
            us(Some(p.cpu.server_us_per_request)),
            us(p.cpu.store_us_per_request),
            p.server_errors_5xx
        );
    };
    row(m, "lease mix, closed loop", 1, &s.mix, &d.mix_conflicts);
    row(m, "lease mix at half of peak, open loop", 1, &s.half_load_mix, &d.half_load_conflicts);
    if let Some(t) = &d.two_instances {
        row(m, "lease mix, closed loop", 2, &t.mix, &t.conflicts);
    }
}
