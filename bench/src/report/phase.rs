//! One phase of load as reported: requests, latency and CPU.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::{round1, round3};
use crate::load::Outcome;
use crate::workload::Kind;

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
