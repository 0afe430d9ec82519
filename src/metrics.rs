//! Prometheus metrics. Every name starts with `streamcap_`; labels are
//! small closed sets (outcome, route template, method, status, close
//! code), never a user or stream id and never a credential.
//!
//! The recorder is process-global (the `metrics` facade is), installed once
//! by [`handle`]; code anywhere records through the helpers below.

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Decision outcomes, as the `outcome` label of `streamcap_decisions_total`.
pub const OUTCOMES: [&str; 8] = ["granted", "renewed", "denied", "evicted", "revoked", "released", "expired", "gone"];

/// The `route` label of requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

const HTTP_SECONDS: &str = "streamcap_http_request_duration_seconds";
const STORE_SECONDS: &str = "streamcap_store_operation_duration_seconds";

/// The recorder's handle, installing it on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // From 25 µs to 10 s: decisions take microseconds, fsyncs milliseconds.
        let buckets = [
            0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
            1.0, 2.5, 10.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_SECONDS.into()), &buckets)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STORE_SECONDS.into()), &buckets))
            .expect("bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program);
        // then ours still renders, it just sees nothing global.
        if ::metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only its own view");
        }
        describe();
        // Histogram samples are buffered until drained; drain them every few
        // seconds so memory stays flat even when nobody scrapes /metrics.
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        });
        handle
    })
}

fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("streamcap_decisions_total", "Lease decisions and lifecycle events by outcome.");
    describe_histogram!(HTTP_SECONDS, Unit::Seconds, "HTTP request latency by matched route.");
    describe_histogram!(STORE_SECONDS, Unit::Seconds, "Store operation latency, queueing included.");
    describe_gauge!("streamcap_live_leases", "Live leases in the store, as of the last sweep (memory and sqlite).");
    describe_counter!(
        "streamcap_store_errors_total",
        "Store operations that failed or timed out (503, or a degraded grant under on_store_error = allow)."
    );
    describe_counter!("streamcap_shadow_would_deny_total", "Shadow mode: grants that enforcement would have refused.");
    describe_counter!("streamcap_shadow_would_evict_total", "Shadow mode: evictions that enforcement would have made.");
    describe_counter!("streamcap_degraded_grants_total", "Grants made unchecked because the store was down.");
    describe_counter!("streamcap_auth_failures_total", "Requests refused with 401.");
    describe_counter!("streamcap_rate_limited_total", "Requests refused with 429, by bucket.");
    describe_counter!(
        "streamcap_requests_shed_total",
        "Requests refused with 503 overloaded because the concurrency limit was reached."
    );
    describe_counter!(
        "streamcap_store_conflicts_total",
        "Conditional writes (Redis, DynamoDB) that lost a race with another instance and were decided again."
    );
    describe_gauge!("streamcap_websockets_open", "WebSockets open on this instance, lease-holding or closing.");
    describe_counter!("streamcap_websocket_closes_total", "WebSockets closed, by close code.");
    describe_counter!(
        "streamcap_pushes_total",
        "Notices between instances about socket-held leases: sent, received by a socket, or dropped."
    );
    describe_counter!(
        "streamcap_admin_actions_total",
        "Changes made through the API with an admin credential, by action and outcome."
    );
    describe_counter!("streamcap_sqlite_commits_total", "SQLite group commits (one fsync each).");
    describe_counter!("streamcap_sqlite_jobs_total", "Operations carried by SQLite group commits.");
}

/// The text exposition of every metric.
pub fn render() -> String {
    handle().render()
}

/// Records a decision outcome, `n` times. `outcome` is one of [`OUTCOMES`].
pub fn decision(outcome: &'static str, n: u64) {
    if n == 0 {
        return;
    }
    let register = || counter!("streamcap_decisions_total", "outcome" => outcome);
    match OUTCOMES.iter().position(|o| *o == outcome) {
        Some(i) => handles().decisions[i].get(register).increment(n),
        None => register().increment(n),
    }
}

/// Store operations, as the `op` label of the store metrics.
pub const STORE_OPS: [&str; 7] = ["acquire", "release", "revoke_all", "revoke", "list", "get_limit", "set_override"];

pub fn store_operation(op: &'static str, ok: bool, took: Duration) {
    let h = handles();
    let i = STORE_OPS.iter().position(|o| *o == op);
    let seconds = || histogram!(STORE_SECONDS, "op" => op);
    match i {
        Some(i) => h.store_seconds[i].get(seconds).record(took.as_secs_f64()),
        None => seconds().record(took.as_secs_f64()),
    }
    if !ok {
        let errors = || counter!("streamcap_store_errors_total", "op" => op);
        match i {
            Some(i) => h.store_errors[i].get(errors).increment(1),
            None => errors().increment(1),
        }
    }
}

pub fn live_leases(n: u64) {
    gauge!("streamcap_live_leases").set(n as f64);
}

pub fn shadow(would_deny: bool, would_evict: usize) {
    if would_deny {
        handles().would_deny.get(|| counter!("streamcap_shadow_would_deny_total")).increment(1);
    }
    if would_evict > 0 {
        handles().would_evict.get(|| counter!("streamcap_shadow_would_evict_total")).increment(would_evict as u64);
    }
}

pub fn degraded_grant() {
    counter!("streamcap_degraded_grants_total").increment(1);
}

pub fn auth_failure() {
    handles().auth_failures.get(|| counter!("streamcap_auth_failures_total")).increment(1);
}

pub fn rate_limited(bucket: &'static str) {
    counter!("streamcap_rate_limited_total", "bucket" => bucket).increment(1);
}

/// A request shed at the edge (503 `overloaded`): every permit of the
/// concurrency limit was taken. Other 503s (the store) are not counted here.
pub fn shed() {
    handles().shed.get(|| counter!("streamcap_requests_shed_total")).increment(1);
}

/// A conditional write that found another version than it had read; the
/// operation runs again (or gives up after its last try).
pub fn store_conflict() {
    handles().store_conflicts.get(|| counter!("streamcap_store_conflicts_total")).increment(1);
}

/// The `code` label of `streamcap_websocket_closes_total`: the close codes a
/// socket ends with. Any other code counts as `other`.
pub const CLOSE_CODES: [&str; 12] =
    ["1000", "1001", "1005", "1006", "4400", "4401", "4403", "4409", "4410", "4429", "4503", "other"];

pub fn websocket_opened() {
    handles().websockets_open.get(|| gauge!("streamcap_websockets_open")).increment(1.0);
}

/// A socket ended with close code `code` (1006 when no close frame was
/// exchanged).
pub fn websocket_closed(code: u16) {
    let h = handles();
    h.websockets_open.get(|| gauge!("streamcap_websockets_open")).decrement(1.0);
    let i = CLOSE_CODES.iter().position(|c| c.parse::<u16>() == Ok(code)).unwrap_or(CLOSE_CODES.len() - 1);
    h.websocket_closes[i].get(|| counter!("streamcap_websocket_closes_total", "code" => CLOSE_CODES[i])).increment(1);
}

/// The `event` label of `streamcap_pushes_total`: a notice this instance
/// published and some instance received (`sent`), one that reached a socket
/// here (`received`), and one that reached no socket (`dropped`: nobody
/// subscribed, publishing failed, or the socket had already gone).
pub const PUSH_EVENTS: [&str; 3] = ["sent", "received", "dropped"];

/// Counts one push `event`, one of [`PUSH_EVENTS`].
pub fn push(event: &'static str) {
    let i = PUSH_EVENTS.iter().position(|e| *e == event).unwrap_or(PUSH_EVENTS.len() - 1);
    handles().pushes[i].get(|| counter!("streamcap_pushes_total", "event" => PUSH_EVENTS[i])).increment(1);
}

/// The `action` label of `streamcap_admin_actions_total`: the changes an
/// admin credential makes through the API.
pub const ADMIN_ACTIONS: [&str; 4] = ["set_override", "clear_override", "revoke_stream", "revoke_all"];

/// The `outcome` label of `streamcap_admin_actions_total`: `ok` when the
/// change was made (or there was nothing to change), `unavailable` when
/// the store failed.
pub const ADMIN_OUTCOMES: [&str; 2] = ["ok", "unavailable"];

/// Counts one admin `action` (one of [`ADMIN_ACTIONS`]) with its outcome.
pub fn admin_action(action: &'static str, ok: bool) {
    let a = ADMIN_ACTIONS.iter().position(|x| *x == action).unwrap_or(0);
    let o = usize::from(!ok);
    let register =
        || counter!("streamcap_admin_actions_total", "action" => ADMIN_ACTIONS[a], "outcome" => ADMIN_OUTCOMES[o]);
    handles().admin_actions[a * ADMIN_OUTCOMES.len() + o].get(register).increment(1);
}

pub fn sqlite_commit(jobs: u64) {
    let h = handles();
    h.sqlite_commits.get(|| counter!("streamcap_sqlite_commits_total")).increment(1);
    h.sqlite_jobs.get(|| counter!("streamcap_sqlite_jobs_total")).increment(jobs);
}

/// The latency histogram of one route template, method and status. The
/// caller keeps the handle: registering looks labels up, recording does not.
pub fn http_seconds(route: &str, method: &str, status: &str) -> Histogram {
    handle();
    histogram!(HTTP_SECONDS, "route" => route.to_owned(), "method" => method.to_owned(), "status" => status.to_owned())
}

/// A metric handle registered on first use, so that a series appears only
/// once it has something to show, as with the `metrics` macros.
struct Slot<T>(OnceLock<T>);

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self(OnceLock::new())
    }
}

impl<T> Slot<T> {
    fn get(&self, register: impl FnOnce() -> T) -> &T {
        self.0.get_or_init(register)
    }
}

/// Handles of the fixed-label metrics, registered on first use.
#[derive(Default)]
struct Handles {
    decisions: [Slot<Counter>; OUTCOMES.len()],
    store_seconds: [Slot<Histogram>; STORE_OPS.len()],
    store_errors: [Slot<Counter>; STORE_OPS.len()],
    would_deny: Slot<Counter>,
    would_evict: Slot<Counter>,
    auth_failures: Slot<Counter>,
    shed: Slot<Counter>,
    store_conflicts: Slot<Counter>,
    websockets_open: Slot<Gauge>,
    websocket_closes: [Slot<Counter>; CLOSE_CODES.len()],
    pushes: [Slot<Counter>; PUSH_EVENTS.len()],
    admin_actions: [Slot<Counter>; ADMIN_ACTIONS.len() * ADMIN_OUTCOMES.len()],
    sqlite_commits: Slot<Counter>,
    sqlite_jobs: Slot<Counter>,
}

fn handles() -> &'static Handles {
    static HANDLES: OnceLock<Handles> = OnceLock::new();
    HANDLES.get_or_init(|| {
        // Handles taken before the recorder exists would record nowhere.
        handle();
        Handles::default()
    })
}
