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

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::http::Conn;
use crate::procs;
use crate::workload::{self, Kind, Mix, MixParams};

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

#[derive(Default)]
struct Tally {
    all: Option<Histogram<u64>>,
    by_kind: Vec<Histogram<u64>>,
    statuses: BTreeMap<(Kind, u16), u64>,
    io_errors: u64,
    first_error: Option<String>,
    late: u64,
    drained: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally { all: Some(histogram()), by_kind: Kind::ALL.iter().map(|_| histogram()).collect(), ..Tally::default() }
    }

    fn record(&mut self, kind: Kind, status: u16, latency: Duration) {
        let ns = (latency.as_nanos() as u64).clamp(1_000, 60_000_000_000);
        if let Some(all) = &mut self.all {
            all.saturating_record(ns);
        }
        self.by_kind[kind.index()].saturating_record(ns);
        *self.statuses.entry((kind, status)).or_default() += 1;
    }

    fn error(&mut self, e: String) {
        self.io_errors += 1;
        self.first_error.get_or_insert(e);
    }

    fn merge(&mut self, other: Tally) {
        if let (Some(a), Some(b)) = (&mut self.all, &other.all) {
            let _ = a.add(b);
        }
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
    }
}

/// Where a thread's connections take their requests from.
enum Source {
    Livez,
    Mix(Mix),
    Fill { next: Arc<AtomicU64>, total: u64, users: u64 },
}

impl Source {
    /// The next request, written into `buf`; `None` when there is none now.
    fn next(&mut self, buf: &mut Vec<u8>) -> Option<(Kind, Option<workload::Ticket>)> {
        match self {
            Source::Livez => {
                if buf.as_slice() != workload::LIVEZ {
                    buf.clear();
                    buf.extend_from_slice(workload::LIVEZ);
                }
                Some((Kind::Livez, None))
            }
            Source::Mix(m) => m.next(buf).map(|(k, t)| (k, Some(t))),
            Source::Fill { next, total, users } => {
                let i = next.fetch_add(1, Ordering::Relaxed);
                (i < *total).then(|| {
                    workload::fill_request(buf, i, *users);
                    (Kind::Acquire, None)
                })
            }
        }
    }

    fn answered(&mut self, ticket: Option<workload::Ticket>, status: Option<u16>) {
        if let (Source::Mix(m), Some(t)) = (self, ticket) {
            m.answered(t, status);
        }
    }
}

/// Runs one phase to completion.
pub fn run(plan: &Plan) -> Result<Outcome, String> {
    let threads = plan.threads.clamp(1, plan.connections.max(1));
    // Threads connect, then meet here twice: once so the main thread can
    // start the clock with every connection open, once to read it.
    let start_gate = Arc::new(Barrier::new(threads + 1));
    let end_gate = Arc::new(Barrier::new(threads + 1));
    let start_at: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let fill_next = Arc::new(AtomicU64::new(match plan.work {
        Work::Fill { start, .. } => start,
        _ => 0,
    }));
    let results: Arc<Mutex<Vec<Result<Tally, String>>>> = Arc::new(Mutex::new(Vec::new()));

    let mut handles = Vec::new();
    let mut dispatchers = Vec::new();
    for t in 0..threads {
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
                let (start_at, duration) = (start_at.clone(), plan.duration);
                let handle = std::thread::Builder::new()
                    .name(format!("dispatch-{t}"))
                    .spawn(move || dispatch(&tx, rate, &start_at, duration))
                    .map_err(|e| format!("cannot start a dispatcher thread: {e}"))?;
                (Some(rx), Some(handle))
            }
            _ => (None, None),
        };
        dispatchers.extend(dispatcher);
        let ctx = ThreadCtx {
            addrs: plan.addrs.clone(),
            pace,
            releases,
            duration: plan.duration,
            connections,
            start_gate: start_gate.clone(),
            end_gate: end_gate.clone(),
            start_at: start_at.clone(),
            results: results.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("client-{t}"))
            .spawn(move || ctx.run(source))
            .map_err(|e| format!("cannot start a client thread: {e}"))?;
        handles.push(handle);
    }

    let sample = |watch: &[u32]| {
        (procs::cpu_seconds("self"), watch.iter().map(|p| procs::cpu_seconds(&p.to_string())).collect::<Vec<_>>())
    };
    let wait = |watch: &[u32]| {
        (
            procs::runqueue_wait_seconds("self"),
            watch.iter().map(|p| procs::runqueue_wait_seconds(&p.to_string())).collect::<Vec<_>>(),
        )
    };
    start_gate.wait();
    let wait0 = wait(&plan.watch);
    let machine0 = procs::machine_cpu_seconds();
    let cpu0 = sample(&plan.watch);
    let t0 = Instant::now();
    let _ = start_at.set(t0);
    start_gate.wait();
    end_gate.wait();
    let wall = t0.elapsed();
    let cpu1 = sample(&plan.watch);
    let machine1 = procs::machine_cpu_seconds();
    let wait1 = wait(&plan.watch);
    end_gate.wait();
    for h in handles {
        let _ = h.join();
    }
    for d in dispatchers {
        let _ = d.join();
    }

    let mut total = Tally::new();
    let collected = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    for r in collected {
        total.merge(r?);
    }
    Ok(Outcome {
        wall,
        all: total.all.take().unwrap_or_else(histogram),
        by_kind: std::mem::take(&mut total.by_kind),
        statuses: total.statuses,
        io_errors: total.io_errors,
        first_error: total.first_error,
        late: total.late,
        drained: total.drained,
        client_cpu: cpu1.0 - cpu0.0,
        watched_cpu: cpu1.1.iter().zip(&cpu0.1).map(|(a, b)| a - b).collect(),
        machine_busy: machine1.0 - machine0.0,
        machine_steal: machine1.1 - machine0.1,
        client_wait: wait1.0 - wait0.0,
        watched_wait: wait1.1.iter().zip(&wait0.1).map(|(a, b)| a - b).collect(),
    })
}

struct ThreadCtx {
    addrs: Vec<SocketAddr>,
    pace: Pace,
    /// Open pace: release times, from this thread's dispatcher.
    releases: Option<tokio::sync::mpsc::UnboundedReceiver<Instant>>,
    duration: Duration,
    connections: usize,
    start_gate: Arc<Barrier>,
    end_gate: Arc<Barrier>,
    start_at: Arc<OnceLock<Instant>>,
    results: Arc<Mutex<Vec<Result<Tally, String>>>>,
}

/// What a thread's connection tasks share. Single-threaded: a `RefCell`
/// is never borrowed across an `await`.
struct Shared {
    source: RefCell<Source>,
    tally: RefCell<Tally>,
    /// Open pace: release times of requests no connection has taken yet.
    queue: RefCell<VecDeque<Instant>>,
    released: tokio::sync::Notify,
    dispatching: Cell<bool>,
}

impl ThreadCtx {
    fn run(mut self, source: Source) {
        let releases = self.releases.take();
        let result = self.drive(source, releases);
        self.results.lock().unwrap_or_else(|e| e.into_inner()).push(result);
    }

    fn drive(
        &self,
        source: Source,
        releases: Option<tokio::sync::mpsc::UnboundedReceiver<Instant>>,
    ) -> Result<Tally, String> {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                // Still meet the others at both gates, or they would wait forever.
                for gate in [&self.start_gate, &self.start_gate, &self.end_gate, &self.end_gate] {
                    gate.wait();
                }
                return Err(format!("cannot start a client runtime: {e}"));
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let mut conns = Vec::new();
            let mut connect_error = None;
            if self.addrs.is_empty() {
                connect_error = Some("no server address".to_owned());
            }
            for addr in self.addrs.iter().copied().cycle().take(self.connections) {
                match Conn::connect(addr).await {
                    Ok(c) => conns.push((addr, c)),
                    Err(e) => {
                        connect_error = Some(format!("cannot connect to {addr}: {e}"));
                        break;
                    }
                }
            }
            let shared = Rc::new(Shared {
                source: RefCell::new(source),
                tally: RefCell::new(Tally::new()),
                queue: RefCell::new(VecDeque::new()),
                released: tokio::sync::Notify::new(),
                dispatching: Cell::new(true),
            });
            self.start_gate.wait();
            self.start_gate.wait();
            let start = *self.start_at.get().expect("set before the second gate");
            let end = start + self.duration;
            let mut tasks = Vec::new();
            if connect_error.is_none() {
                if let Some(mut releases) = releases {
                    // Moves releases from the dispatcher thread to the queue.
                    let shared = shared.clone();
                    tasks.push(tokio::task::spawn_local(async move {
                        while let Some(at) = releases.recv().await {
                            shared.queue.borrow_mut().push_back(at);
                            shared.released.notify_one();
                        }
                        shared.dispatching.set(false);
                        shared.released.notify_waiters();
                        None
                    }));
                }
                for (addr, conn) in conns {
                    let shared = shared.clone();
                    let pace = self.pace;
                    tasks.push(tokio::task::spawn_local(async move { drive(&shared, addr, conn, pace, end).await }));
                }
            }
            let mut open = Vec::new();
            for t in tasks {
                if let Ok(Some(conn)) = t.await {
                    open.push(conn);
                }
            }
            self.end_gate.wait();
            self.end_gate.wait();
            // Not measured: release what the mix still holds.
            let leftovers = match &mut *shared.source.borrow_mut() {
                Source::Mix(m) => m.drain(),
                _ => Vec::new(),
            };
            let mut drained = 0;
            if let Some(conn) = open.first_mut() {
                for req in leftovers {
                    if !matches!(tokio::time::timeout(REQUEST_TIMEOUT, conn.roundtrip(&req)).await, Ok(Ok(_))) {
                        break;
                    }
                    drained += 1;
                }
            }
            shared.tally.borrow_mut().drained += drained;
            match connect_error {
                Some(e) => Err(e),
                None => Ok(std::mem::replace(&mut *shared.tally.borrow_mut(), Tally::new())),
            }
        })
    }
}

/// The open pace's schedule, on its own thread: one release every
/// 1/`rate` s from the start until `duration` has passed. Releases that
/// fall due while it sleeps (it oversleeps by tens of µs) go out together.
fn dispatch(
    tx: &tokio::sync::mpsc::UnboundedSender<Instant>,
    rate: f64,
    start_at: &OnceLock<Instant>,
    duration: Duration,
) {
    // The start is set once every connection is open; wait for it (bounded).
    let mut start = None;
    for _ in 0..600_000 {
        start = start_at.get().copied();
        if start.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let Some(start) = start else { return };
    let end = start + duration;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let mut last_wake = Instant::now();
    for n in 0..u64::MAX {
        let slot = start + interval.mul_f64(n as f64);
        if slot >= end {
            break;
        }
        let now = Instant::now();
        if now < slot {
            // Wake at most every RELEASE_GRANULARITY: each wake-up costs the
            // client CPU that the server, on the same cores, would miss.
            let wake = slot.max(last_wake + RELEASE_GRANULARITY);
            std::thread::sleep(wake - now);
            last_wake = Instant::now();
        }
        if tx.send(Instant::now()).is_err() {
            break;
        }
    }
}

/// One connection's loop, to `addr`. Returns the connection, if it is
/// still open.
async fn drive(shared: &Shared, addr: SocketAddr, conn: Conn, pace: Pace, end: Instant) -> Option<Conn> {
    let mut conn = Some(conn);
    let mut buf = Vec::with_capacity(512);
    for _ in 0..MAX_REQUESTS_PER_CONN {
        let origin = match pace {
            Pace::Open(_) => {
                let released = shared.queue.borrow_mut().pop_front();
                match released {
                    Some(at) => {
                        if at.elapsed() > Duration::from_millis(1) {
                            shared.tally.borrow_mut().late += 1;
                        }
                        at
                    }
                    None if shared.dispatching.get() => {
                        shared.released.notified().await;
                        continue;
                    }
                    None => break,
                }
            }
            Pace::Closed | Pace::Fill => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
        };
        let next = shared.source.borrow_mut().next(&mut buf);
        let Some((kind, ticket)) = next else {
            if matches!(pace, Pace::Fill) {
                break;
            }
            // Every session is busy: wait for an answer on another connection.
            tokio::task::yield_now().await;
            continue;
        };
        let Some(c) = conn.as_mut() else {
            shared.source.borrow_mut().answered(ticket, None);
            conn = reconnect(addr, end).await;
            continue;
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, c.roundtrip(&buf)).await {
            Ok(Ok((status, keep_alive))) => {
                shared.tally.borrow_mut().record(kind, status, origin.elapsed());
                shared.source.borrow_mut().answered(ticket, Some(status));
                if !keep_alive {
                    conn = reconnect(addr, end).await;
                }
            }
            Ok(Err(e)) => {
                shared.tally.borrow_mut().error(format!("{} request: {e}", kind.name()));
                shared.source.borrow_mut().answered(ticket, None);
                conn = reconnect(addr, end).await;
            }
            Err(_) => {
                shared
                    .tally
                    .borrow_mut()
                    .error(format!("{} request: no answer within {REQUEST_TIMEOUT:?}", kind.name()));
                shared.source.borrow_mut().answered(ticket, None);
                conn = reconnect(addr, end).await;
            }
        }
    }
    conn
}

async fn reconnect(addr: SocketAddr, end: Instant) -> Option<Conn> {
    for _ in 0..100 {
        if let Ok(c) = Conn::connect(addr).await {
            return Some(c);
        }
        if Instant::now() >= end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

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
