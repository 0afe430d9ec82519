//! One client thread: a single-threaded runtime whose connections share
//! one source of requests and one tally; for the open pace, the
//! dispatcher thread that releases requests on schedule.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{MAX_REQUESTS_PER_CONN, Pace, RELEASE_GRANULARITY, REQUEST_TIMEOUT, histogram};
use crate::http::Conn;
use crate::workload::{self, Kind, Mix};

#[derive(Default)]
pub(super) struct Tally {
    pub(super) all: Option<Histogram<u64>>,
    pub(super) by_kind: Vec<Histogram<u64>>,
    pub(super) statuses: BTreeMap<(Kind, u16), u64>,
    pub(super) io_errors: u64,
    pub(super) first_error: Option<String>,
    pub(super) late: u64,
    pub(super) drained: u64,
}

impl Tally {
    pub(super) fn new() -> Tally {
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

    pub(super) fn merge(&mut self, other: Tally) {
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
pub(super) enum Source {
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

pub(super) struct ThreadCtx {
    pub(super) addrs: Vec<SocketAddr>,
    pub(super) pace: Pace,
    /// Open pace: release times, from this thread's dispatcher.
    pub(super) releases: Option<UnboundedReceiver<Instant>>,
    pub(super) duration: Duration,
    pub(super) connections: usize,
    pub(super) start_gate: Arc<Barrier>,
    pub(super) end_gate: Arc<Barrier>,
    pub(super) start_at: Arc<OnceLock<Instant>>,
    pub(super) results: Arc<Mutex<Vec<Result<Tally, String>>>>,
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
    pub(super) fn run(mut self, source: Source) {
        let releases = self.releases.take();
        let result = self.drive(source, releases);
        self.results.lock().unwrap_or_else(|e| e.into_inner()).push(result);
    }

    fn drive(&self, source: Source, releases: Option<UnboundedReceiver<Instant>>) -> Result<Tally, String> {
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
            let (conns, connect_error) = self.connect().await;
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
                if let Some(releases) = releases {
                    tasks.push(tokio::task::spawn_local(relay(shared.clone(), releases)));
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
            drain(&shared, open.first_mut()).await;
            match connect_error {
                Some(e) => Err(e),
                None => Ok(std::mem::replace(&mut *shared.tally.borrow_mut(), Tally::new())),
            }
        })
    }
}

impl ThreadCtx {
    /// This thread's connections, spread over the servers; on an error,
    /// those made before it and the error.
    async fn connect(&self) -> (Vec<(SocketAddr, Conn)>, Option<String>) {
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
        (conns, connect_error)
    }
}

/// Moves releases from the dispatcher thread to the queue; when the
/// dispatcher is done, wakes every connection waiting for one.
async fn relay(shared: Rc<Shared>, mut releases: UnboundedReceiver<Instant>) -> Option<Conn> {
    while let Some(at) = releases.recv().await {
        shared.queue.borrow_mut().push_back(at);
        shared.released.notify_one();
    }
    shared.dispatching.set(false);
    shared.released.notify_waiters();
    None
}

/// Not measured: releases what the mix still holds, on `conn`, and counts
/// the answered releases as drained.
async fn drain(shared: &Shared, conn: Option<&mut Conn>) {
    let leftovers = match &mut *shared.source.borrow_mut() {
        Source::Mix(m) => m.drain(),
        _ => Vec::new(),
    };
    let mut drained = 0;
    if let Some(conn) = conn {
        for req in leftovers {
            if !matches!(tokio::time::timeout(REQUEST_TIMEOUT, conn.roundtrip(&req)).await, Ok(Ok(_))) {
                break;
            }
            drained += 1;
        }
    }
    shared.tally.borrow_mut().drained += drained;
}

/// The open pace's schedule, on its own thread: one release every
/// 1/`rate` s from the start until `duration` has passed. Releases that
/// fall due while it sleeps (it oversleeps by tens of µs) go out together.
pub(super) fn dispatch(
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
