//! The load driver: N keep-alive connections, spread over a few client
//! threads, each thread a single-threaded tokio runtime whose connections
//! share one source of requests (for the mix: one pool of sessions).
//!
//! Three paces:
//! - **closed**: each connection sends the next request as soon as the last
//!   answer arrives, until the deadline. This finds the peak.
//! - **open**: a dispatcher thread releases requests on a fixed schedule
//!   into a queue, and any idle connection takes the next one, as a
//!   client's connection pool would. A request's latency counts from its
//!   release, so time spent waiting for a free connection counts (no
//!   coordinated omission). The schedule is not per connection: a
//!   connection that is still waiting for a slow answer delays only that
//!   one request, not every later one scheduled on it. The dispatcher is a
//!   plain OS thread that wakes at most every 0.25 ms and releases what is
//!   due: tokio's timer wakes at most once per millisecond and would
//!   release requests in bursts four times as big, while waking for every
//!   single request would cost the client more CPU, which on a shared
//!   machine the server would miss.
//! - **fill**: the connections share a counter and send each request of a
//!   fixed list once.
//!
//! Every loop is bounded by a deadline and by a request count, and every
//! request by a timeout.

mod client;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::procs;
use crate::workload::{Kind, Mix, MixParams};
use client::{Source, Tally, ThreadCtx, dispatch};

/// No request waits longer than this for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The open pace releases requests at most this often, in small batches.
const RELEASE_GRANULARITY: Duration = Duration::from_micros(250);
/// A safety bound on requests per connection in one phase.
const MAX_REQUESTS_PER_CONN: u64 = 50_000_000;

pub enum Work {
    Livez,
    Mix(MixParams),
    /// Lease `i` for `i` in `start..total`, over `users` users.
    Fill {
        start: u64,
        total: u64,
        users: u64,
    },
}

#[derive(Clone, Copy)]
pub enum Pace {
    Closed,
    /// Requests per second over all connections.
    Open(f64),
    Fill,
}

pub struct Plan {
    /// The servers; connection `i` of a thread goes to `addrs[i % len]`,
    /// and the sessions of a thread use any of its connections, as behind
    /// a load balancer without stickiness.
    pub addrs: Vec<SocketAddr>,
    pub connections: usize,
    pub threads: usize,
    pub work: Work,
    pub pace: Pace,
    /// How long the phase runs (for `Fill`: the most it may take).
    pub duration: Duration,
    /// Makes stream ids unique across phases.
    pub tag: String,
    pub seed: u64,
    /// Processes whose CPU time is sampled at the start and end.
    pub watch: Vec<u32>,
}

/// What a phase measured.
pub struct Outcome {
    pub wall: Duration,
    pub all: Histogram<u64>,
    pub by_kind: Vec<Histogram<u64>>,
    pub statuses: BTreeMap<(Kind, u16), u64>,
    pub io_errors: u64,
    pub first_error: Option<String>,
    /// Open pace: sends that went out over 1 ms after their slot because the
    /// connection was still waiting for the answer before.
    pub late: u64,
    /// Answered requests sent after the window, not measured: releases of
    /// the leases the mix still held.
    pub drained: u64,
    /// CPU seconds over the measured window: this process (the client),
    /// then each watched process.
    pub client_cpu: f64,
    pub watched_cpu: Vec<f64>,
    /// CPU seconds the whole machine was busy, and stolen by the
    /// hypervisor, over the same window (/proc/stat).
    pub machine_busy: f64,
    pub machine_steal: f64,
    /// Seconds the client's and each watched process's threads waited,
    /// runnable, for a CPU.
    pub client_wait: f64,
    pub watched_wait: Vec<f64>,
}

impl Outcome {
    pub fn requests(&self) -> u64 {
        self.all.len()
    }

    /// Adds another window of the same workload (a later round).
    pub fn merge(&mut self, other: Outcome) {
        self.wall += other.wall;
        let _ = self.all.add(&other.all);
        for (a, b) in self.by_kind.iter_mut().zip(&other.by_kind) {
            let _ = a.add(b);
        }
        for (k, n) in other.statuses {
            *self.statuses.entry(k).or_default() += n;
        }
        self.io_errors += other.io_errors;
        self.late += other.late;
        self.drained += other.drained;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.client_cpu += other.client_cpu;
        self.machine_busy += other.machine_busy;
        self.machine_steal += other.machine_steal;
        self.client_wait += other.client_wait;
        for (a, b) in self.watched_wait.iter_mut().zip(other.watched_wait) {
            *a += b;
        }
        for (a, b) in self.watched_cpu.iter_mut().zip(other.watched_cpu) {
            *a += b;
        }
    }

    pub fn unexpected(&self) -> u64 {
        self.statuses.iter().filter(|((k, s), _)| !k.expected(*s)).map(|(_, n)| n).sum()
    }

    pub fn server_errors(&self) -> u64 {
        self.statuses.iter().filter(|((_, s), _)| *s >= 500).map(|(_, n)| n).sum()
    }
}

/// Latencies in nanoseconds, up to a minute, to 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Runs one phase to completion.
pub fn run(plan: &Plan) -> Result<Outcome, String> {
    let threads = plan.threads.clamp(1, plan.connections.max(1));
    let gates = Gates {
        // Threads connect, then meet here twice: once so the main thread can
        // start the clock with every connection open, once to read it.
        start: Arc::new(Barrier::new(threads + 1)),
        end: Arc::new(Barrier::new(threads + 1)),
        start_at: Arc::new(OnceLock::new()),
        results: Arc::new(Mutex::new(Vec::new())),
    };
    let fill_next = Arc::new(AtomicU64::new(match plan.work {
        Work::Fill { start, .. } => start,
        _ => 0,
    }));
    let mut handles = Vec::new();
    let mut dispatchers = Vec::new();
    for t in 0..threads {
        let (handle, dispatcher) = spawn_client(plan, t, threads, &fill_next, &gates)?;
        handles.push(handle);
        dispatchers.extend(dispatcher);
    }
    let usage = measure_window(&plan.watch, &gates);
    for h in handles {
        let _ = h.join();
    }
    for d in dispatchers {
        let _ = d.join();
    }

    let mut total = Tally::new();
    let collected = std::mem::take(&mut *gates.results.lock().unwrap_or_else(|e| e.into_inner()));
    for r in collected {
        total.merge(r?);
    }
    Ok(Outcome {
        wall: usage.wall,
        all: total.all.take().unwrap_or_else(histogram),
        by_kind: std::mem::take(&mut total.by_kind),
        statuses: total.statuses,
        io_errors: total.io_errors,
        first_error: total.first_error,
        late: total.late,
        drained: total.drained,
        client_cpu: usage.client_cpu,
        watched_cpu: usage.watched_cpu,
        machine_busy: usage.machine_busy,
        machine_steal: usage.machine_steal,
        client_wait: usage.client_wait,
        watched_wait: usage.watched_wait,
    })
}

/// Where the main thread and the client threads meet, and what the
/// client threads hand back.
struct Gates {
    start: Arc<Barrier>,
    end: Arc<Barrier>,
    start_at: Arc<OnceLock<Instant>>,
    results: Arc<Mutex<Vec<Result<Tally, String>>>>,
}

/// Starts client thread `t` of `threads`, with its share of the
/// connections and of an open-loop rate, and for the open pace its
/// dispatcher thread.
fn spawn_client(
    plan: &Plan,
    t: usize,
    threads: usize,
    fill_next: &Arc<AtomicU64>,
    gates: &Gates,
) -> Result<(JoinHandle<()>, Option<JoinHandle<()>>), String> {
    let connections = (0..plan.connections).filter(|c| c % threads == t).count();
    let source = match &plan.work {
        Work::Livez => Source::Livez,
        Work::Mix(p) => Source::Mix(Mix::new(
            p.clone(),
            // One more than the connections, so a free session always exists.
            (p.sessions * connections).max(connections + 1),
            plan.seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            format!("{}t{t}-", plan.tag),
        )),
        Work::Fill { total, users, .. } => Source::Fill { next: fill_next.clone(), total: *total, users: *users },
    };
    // This thread's share of an open-loop rate.
    let pace = match plan.pace {
        Pace::Open(rate) => Pace::Open(rate * connections as f64 / plan.connections as f64),
        p => p,
    };
    let (releases, dispatcher) = match pace {
        Pace::Open(rate) => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let (start_at, duration) = (gates.start_at.clone(), plan.duration);
            let handle = std::thread::Builder::new()
                .name(format!("dispatch-{t}"))
                .spawn(move || dispatch(&tx, rate, &start_at, duration))
                .map_err(|e| format!("cannot start a dispatcher thread: {e}"))?;
            (Some(rx), Some(handle))
        }
        _ => (None, None),
    };
    let ctx = ThreadCtx {
        addrs: plan.addrs.clone(),
        pace,
        releases,
        duration: plan.duration,
        connections,
        start_gate: gates.start.clone(),
        end_gate: gates.end.clone(),
        start_at: gates.start_at.clone(),
        results: gates.results.clone(),
    };
    let handle = std::thread::Builder::new()
        .name(format!("client-{t}"))
        .spawn(move || ctx.run(source))
        .map_err(|e| format!("cannot start a client thread: {e}"))?;
    Ok((handle, dispatcher))
}

/// The CPU and run-queue time of the measured window.
struct Usage {
    wall: Duration,
    client_cpu: f64,
    watched_cpu: Vec<f64>,
    machine_busy: f64,
    machine_steal: f64,
    client_wait: f64,
    watched_wait: Vec<f64>,
}

/// Starts the clock once every client thread has connected, and reads
/// the CPU of this process, of the `watch`ed ones and of the machine
/// around the window.
fn measure_window(watch: &[u32], gates: &Gates) -> Usage {
    let sample = |watch: &[u32]| {
        (procs::cpu_seconds("self"), watch.iter().map(|p| procs::cpu_seconds(&p.to_string())).collect::<Vec<_>>())
    };
    let wait = |watch: &[u32]| {
        (
            procs::runqueue_wait_seconds("self"),
            watch.iter().map(|p| procs::runqueue_wait_seconds(&p.to_string())).collect::<Vec<_>>(),
        )
    };
    gates.start.wait();
    let wait0 = wait(watch);
    let machine0 = procs::machine_cpu_seconds();
    let cpu0 = sample(watch);
    let t0 = Instant::now();
    let _ = gates.start_at.set(t0);
    gates.start.wait();
    gates.end.wait();
    let wall = t0.elapsed();
    let cpu1 = sample(watch);
    let machine1 = procs::machine_cpu_seconds();
    let wait1 = wait(watch);
    gates.end.wait();
    Usage {
        wall,
        client_cpu: cpu1.0 - cpu0.0,
        watched_cpu: cpu1.1.iter().zip(&cpu0.1).map(|(a, b)| a - b).collect(),
        machine_busy: machine1.0 - machine0.0,
        machine_steal: machine1.1 - machine0.1,
        client_wait: wait1.0 - wait0.0,
        watched_wait: wait1.1.iter().zip(&wait0.1).map(|(a, b)| a - b).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A server that answers `/livez` and counts the requests it got.
    fn counting_server(rt: &tokio::runtime::Runtime) -> (SocketAddr, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let app = axum::Router::new().route(
            "/livez",
            axum::routing::get(move || {
                seen.fetch_add(1, Ordering::Relaxed);
                async { r#"{"status":"ok"}"# }
            }),
        );
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move { axum::serve(listener, app).await });
        (addr, count)
    }

    #[test]
    fn spreads_the_connections_over_the_servers() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (a, a_count) = counting_server(&rt);
        let (b, b_count) = counting_server(&rt);
        let plan = Plan {
            addrs: vec![a, b],
            connections: 4,
            threads: 1,
            work: Work::Livez,
            pace: Pace::Closed,
            duration: Duration::from_millis(200),
            tag: "t".into(),
            seed: 1,
            watch: Vec::new(),
        };
        let out = run(&plan).unwrap();
        let (a_n, b_n) = (a_count.load(Ordering::Relaxed), b_count.load(Ordering::Relaxed));
        assert!(a_n > 0 && b_n > 0, "{a_n} and {b_n} requests");
        assert_eq!(out.requests(), (a_n + b_n) as u64);
        assert_eq!(out.io_errors, 0, "{:?}", out.first_error);
    }
}
