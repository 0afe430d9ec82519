//! The results of a run, as JSON (serde): what each store measured, the
//! memory per lease and the recovery, and the targets. `render` turns
//! them into Markdown. Fields added since runs were first recorded have
//! serde defaults, so that older JSON still reads.

mod dynamodb;
mod phase;
mod redis;
#[cfg(test)]
pub mod samples;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use dynamodb::{Conflicts, DynamoReport, TwoInstances};
pub use phase::Phase;
#[cfg(test)]
pub use phase::{Cpu, Latency};
pub use redis::{
    CommandCost, CommandUse, Contention, ContentionRound, Keyspace, KeyspacePoint, RedisBaseline, SetCeiling,
};

#[derive(Serialize, Deserialize)]
pub struct Report {
    pub mode: String,
    pub date: String,
    pub machine: Machine,
    pub build: Build,
    pub params: Params,
    pub commands: Vec<String>,
    pub stores: Vec<StoreReport>,
    pub footprint: Vec<Footprint>,
    pub recovery: Vec<Recovery>,
    pub targets: Vec<Target>,
    pub failures: Vec<String>,
    pub total_seconds: f64,
}

#[derive(Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub memory_total: String,
    pub kernel: String,
    /// Where the sqlite data dirs live, and its 4 KiB write + fdatasync
    /// latency (median, worst of 100), measured at the start of the run.
    pub data_dir_filesystem: String,
    pub fsync_p50_us: f64,
    pub fsync_max_us: f64,
    pub loadavg_before: String,
    pub loadavg_after: String,
}

#[derive(Serialize, Deserialize)]
pub struct Build {
    pub server_binary: String,
    pub git_revision: String,
    pub rustc: String,
    pub redis_server: String,
}

#[derive(Serialize, Deserialize)]
pub struct Params {
    pub connections: usize,
    pub client_threads: usize,
    pub users: usize,
    pub zipf_exponent: f64,
    pub zipf_top_user_share: f64,
    pub sessions_per_connection: usize,
    pub renewals_per_session: u32,
    pub livez_seconds: f64,
    pub mix_seconds: f64,
    pub open_loop_seconds: f64,
    /// Compared phases alternate in this many rounds.
    pub rounds: u32,
    pub leases: u64,
    pub server_flags: String,
    /// The baseline server binary the Redis mix also ran on, if any.
    #[serde(default)]
    pub baseline_server: Option<String>,
    /// Rounds of concurrent acquires for one user (0: none).
    #[serde(default)]
    pub contention_rounds: u32,
}

#[derive(Serialize, Deserialize)]
pub struct StoreReport {
    pub store: String,
    /// Conditions right before this store's phases: the load average and
    /// the data-dir filesystem's fsync latency (median, worst; µs).
    pub loadavg_before: String,
    pub fsync_before_us: (f64, f64),
    pub livez: Phase,
    pub mix: Phase,
    /// mix throughput / livez throughput on the same server.
    pub mix_to_livez: f64,
    pub half_load_mix: Phase,
    pub half_load_livez: Phase,
    /// half-load mix p99 / half-load livez p99.
    pub half_load_p99_ratio: f64,
    /// The bare server's `/livez`, measured in the same rounds as `livez`
    /// and `mix`. (Runs recorded before it existed have none of the fields
    /// below.)
    pub bare_livez: Option<Phase>,
    /// Server CPU µs per request ÷ the bare server's, for streamcap's
    /// `/livez` and for the mix (streamcap's own process).
    pub livez_cpu_to_bare: Option<f64>,
    pub mix_cpu_to_bare: Option<f64>,
    /// Redis: the commands the closed-loop mix's decisions sent. (Runs
    /// recorded before it existed hold the script commands' µs only, as
    /// `redis_decision`.)
    #[serde(alias = "redis_decision")]
    pub redis_commands: Option<CommandCost>,
    /// Redis: redis-benchmark's SETs, the unit of Redis CPU.
    pub redis_set: Option<SetCeiling>,
    /// Redis: the cost per decision at a small and at a large keyspace.
    pub redis_keyspace: Option<Keyspace>,
    /// Redis: the closed-loop mix on a baseline server binary, in the same
    /// rounds as `mix`.
    #[serde(default)]
    pub redis_baseline: Option<RedisBaseline>,
    /// Redis: concurrent acquires for one user over two instances.
    #[serde(default)]
    pub redis_contention: Vec<Contention>,
    /// DynamoDB (Local): lost races, and the mix on two instances.
    pub dynamodb: Option<DynamoReport>,
}

impl StoreReport {
    /// Every measured phase, in the order they ran: closed loop, open
    /// loop, then the keyspace mixes.
    pub fn measured_phases(&self) -> Vec<&Phase> {
        let mut v: Vec<&Phase> = self.bare_livez.iter().collect();
        v.extend([&self.livez, &self.mix]);
        v.extend(self.redis_baseline.iter().map(|b| &b.mix));
        v.extend([&self.half_load_mix, &self.half_load_livez]);
        v.extend(self.redis_keyspace.iter().flat_map(|k| k.points.iter().map(|p| &p.mix)));
        v.extend(self.dynamodb.iter().flat_map(|d| d.two_instances.iter().map(|t| &t.mix)));
        v
    }
}

#[derive(Serialize, Deserialize)]
pub struct Footprint {
    pub store: String,
    pub leases_requested: u64,
    pub leases_created: u64,
    pub users: u64,
    pub fill: Phase,
    pub rss_before: u64,
    pub rss_after: u64,
    pub rss_bytes_per_lease: f64,
    pub disk_bytes: Option<u64>,
    pub disk_bytes_per_lease: Option<f64>,
    pub full_user_probe_status: u16,
}

#[derive(Serialize, Deserialize)]
pub struct Recovery {
    pub store: String,
    pub leases: u64,
    /// "SIGTERM" (clean shutdown, then restart) or "SIGKILL" (crash).
    pub stop: String,
    pub shutdown_seconds: Option<f64>,
    pub to_listening_seconds: f64,
    pub to_ready_seconds: f64,
    pub to_first_decision_seconds: f64,
    pub first_decision_status: u16,
    pub renew_status: u16,
    pub last_user_status: u16,
    pub correct: bool,
}

#[derive(Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
    /// A row with no target: the measurement is reported only.
    #[serde(default)]
    pub reported_only: bool,
}

/// An integer with thousands separators, for tables.
pub fn int(n: f64) -> String {
    let s = format!("{:.0}", n);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `a / b` to 3 decimals, when `b` is positive and both are finite.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| round3(a / b))
}

impl Report {
    /// The host, as each table of ratios names it: every ratio is of two
    /// figures measured on this CPU in this run.
    pub fn host(&self) -> String {
        format!("Host: {}, {} CPUs.", self.machine.cpu_model, self.machine.nproc)
    }
}
