//! What the Redis store's run adds: the commands a decision made Redis
//! run, the SET ceiling, the keyspace runs, the baseline server and the
//! concurrent acquires for one user.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::Phase;

/// What the decisions of a window made Redis run: `INFO commandstats`
/// since `CONFIG RESETSTAT`, less the harness's own commands.
#[derive(Serialize, Deserialize, Clone, Default, Debug)]
#[serde(default)]
pub struct CommandCost {
    /// Lease requests answered over HTTP in the window, including the
    /// releases sent after each round for the sessions still open.
    pub decisions: u64,
    /// Every command Redis ran, by name, with the share of its calls that
    /// ran inside a script.
    pub commands: Vec<CommandUse>,
    /// Commands the store sent per decision: the calls made inside
    /// scripts are not counted.
    pub sent_per_decision: Option<f64>,
    /// µs inside Redis, each µs once: a script's µs hold those of the
    /// commands it called, which are not added again.
    pub usec: u64,
    pub usec_per_decision: Option<f64>,
    pub failed_calls: u64,
    /// `DBSIZE` at the end of the window (keyspace runs only: after the
    /// mix, whose sessions end released, only the fill's leases are left).
    pub keys: Option<u64>,
    /// The `MONITOR` lines that told the calls inside scripts apart.
    pub monitor_sample_lines: Option<u64>,
}

/// One command of [`CommandCost`].
#[derive(Serialize, Deserialize, Clone, Default, Debug)]
pub struct CommandUse {
    /// As `INFO commandstats` names it, lowercase (`config|get`).
    pub name: String,
    pub calls: u64,
    pub usec: u64,
    pub failed_calls: u64,
    pub calls_per_decision: Option<f64>,
    pub usec_per_decision: Option<f64>,
    /// The share of its calls made from inside a script (a `MONITOR`
    /// sample): those calls' µs are inside the script's.
    pub inside_scripts: f64,
}

impl CommandCost {
    /// "mget 1.00 + time 1.00 + evalsha 0.50 (inside scripts: get 0.25,
    /// time 0.50)": calls per decision, those sent first.
    pub fn summary(&self) -> String {
        let part = |inside: bool| -> Vec<String> {
            let mut v: Vec<(f64, &str)> = self
                .commands
                .iter()
                .map(|c| {
                    let share = if inside { c.inside_scripts } else { 1.0 - c.inside_scripts };
                    (c.calls_per_decision.unwrap_or(0.0) * share, c.name.as_str())
                })
                .filter(|(n, _)| *n >= 0.005)
                .collect();
            v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
            v.iter().map(|(n, name)| format!("{name} {n:.2}")).collect()
        };
        let (sent, inside) = (part(false), part(true));
        let mut text = if sent.is_empty() { "–".to_owned() } else { sent.join(" + ") };
        if !inside.is_empty() {
            let _ = write!(text, " (inside scripts: {})", inside.join(", "));
        }
        text
    }
}

/// The closed-loop mix on a baseline server binary (a previous release),
/// with its own redis-server, its rounds alternating with the current
/// server's.
#[derive(Serialize, Deserialize)]
pub struct RedisBaseline {
    /// The binary, and what it was built from (`scripts/bench --baseline`).
    pub server_binary: String,
    pub label: String,
    pub mix: Phase,
    pub commands: Option<CommandCost>,
}

/// Concurrent acquires of fresh streams for one user, spread over two
/// instances on one Redis, in rounds (a fresh user each round).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Contention {
    /// "current" or "baseline".
    pub server: String,
    /// "standalone" or "cluster (3 masters)".
    pub redis: String,
    pub instances: usize,
    /// Acquires sent at once in each round.
    pub concurrent: usize,
    /// The user's limit: the grants each round must give.
    pub limit: u64,
    pub rounds: Vec<ContentionRound>,
}

/// One round of [`Contention`]: the statuses, and the growth of
/// `streamcap_store_conflicts_total` summed over the instances.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct ContentionRound {
    pub granted: u64,
    pub denied_409: u64,
    pub unavailable_503: u64,
    /// Any other status, or no answer.
    pub other: u64,
    pub retries: u64,
}

impl Contention {
    pub fn total(&self) -> ContentionRound {
        self.rounds.iter().fold(ContentionRound::default(), |a, r| ContentionRound {
            granted: a.granted + r.granted,
            denied_409: a.denied_409 + r.denied_409,
            unavailable_503: a.unavailable_503 + r.unavailable_503,
            other: a.other + r.other,
            retries: a.retries + r.retries,
        })
    }

    /// Whether every round granted exactly the limit.
    pub fn grants_equal_limit(&self) -> bool {
        !self.rounds.is_empty() && self.rounds.iter().all(|r| r.granted == self.limit)
    }

    /// "15 granted (3 in each of 5 rounds), 305 × 409, 0 × 503, 0 other; 0 retries".
    pub fn describe(&self) -> String {
        let t = self.total();
        let per_round: Vec<String> = self.rounds.iter().map(|r| r.granted.to_string()).collect();
        format!(
            "{} granted (per round: {}), {} × 409, {} × 503, {} other; {} retries",
            t.granted,
            per_round.join(", "),
            t.denied_409,
            t.unavailable_503,
            t.other,
            t.retries
        )
    }
}

#[derive(Serialize, Deserialize)]
pub struct SetCeiling {
    pub command: String,
    pub requests: u64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// µs per SET inside Redis (`INFO commandstats`).
    pub usec_per_call: f64,
    /// redis-server's CPU from /proc over the run, per SET and in cores.
    pub redis_cpu_us_per_call: f64,
    pub redis_cores: f64,
    pub benchmark_cpu_cores: f64,
}

#[derive(Serialize, Deserialize)]
pub struct Keyspace {
    /// Smallest keyspace first.
    pub points: Vec<KeyspacePoint>,
    /// µs inside Redis per decision at the largest keyspace ÷ at the
    /// smallest.
    pub growth: Option<f64>,
    /// The same for redis-server's CPU per decision.
    #[serde(default)]
    pub cpu_growth: Option<f64>,
}

#[derive(Serialize, Deserialize)]
pub struct KeyspacePoint {
    /// Users in Redis, each holding one lease from the fill.
    pub users: u64,
    pub fill_seconds: f64,
    pub fill_throughput: f64,
    /// The mix over those users.
    pub mix: Phase,
    #[serde(alias = "cost")]
    pub commands: CommandCost,
}
