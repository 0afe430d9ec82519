//! The default backend: one SQLite file in WAL mode, written by one thread.
//!
//! Every operation is a job sent to the writer thread, which owns the only
//! connection. The writer takes all queued jobs at once, runs each inside
//! its own savepoint of one shared transaction, commits once (one fsync,
//! `synchronous=FULL`) and only then answers. That is group commit: a busy
//! server pays one fsync per batch, not per request, and nobody hears "yes"
//! before their lease is on disk. Because one thread runs every job in
//! order, each job sees the effect of all earlier ones: that is what makes a
//! decision atomic per user.
//!
//! A lock file in the data dir keeps a second process out.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::{mpsc, oneshot};

use super::{Backend, BoxFuture, OpenError, StoreError};
use crate::clock::Clock;
use crate::limiter::{
    self, InvalidId, Label, Lease, Limit, Op, Reply, RevokeReason, StreamId, Timestamp, Tombstone, UserId, UserState,
    Write,
};
use crate::metrics;

const DB_FILE: &str = "streamcap.db";
const LOCK_FILE: &str = "streamcap.lock";
/// The most jobs one transaction takes; bounds the latency of a batch.
const MAX_BATCH: usize = 1024;
/// How many queued jobs may wait for the writer before callers wait too.
const QUEUE: usize = 8192;
/// Rows of each kind one sweep job deletes, so sweeping never stalls the
/// writer for long.
const SWEEP_BATCH: u64 = 5_000;
/// Schema changes in order; `PRAGMA user_version` counts how many ran.
/// Never edit one that has shipped: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: leases, with times in ms since the Unix epoch (µs from 2 on).
    "CREATE TABLE leases (
        user_id    TEXT    NOT NULL,
        stream_id  TEXT    NOT NULL,
        device_id  TEXT,
        content_id TEXT,
        started_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (user_id, stream_id)
    ) WITHOUT ROWID;
    CREATE INDEX leases_by_expiry ON leases (expires_at);",
    // 2: times in µs since the Unix epoch, UTC; tombstones of evicted and
    // revoked streams; per-user overrides.
    "UPDATE leases SET started_at = started_at * 1000, expires_at = expires_at * 1000;
    CREATE TABLE tombstones (
        user_id      TEXT    NOT NULL,
        stream_id    TEXT    NOT NULL,
        evicted_by   TEXT,             -- NULL: revoked
        until        INTEGER NOT NULL,
        PRIMARY KEY (user_id, stream_id)
    ) WITHOUT ROWID;
    CREATE INDEX tombstones_by_expiry ON tombstones (until);
    CREATE TABLE overrides (
        user_id      TEXT    NOT NULL PRIMARY KEY,
        stream_limit INTEGER NOT NULL
    ) WITHOUT ROWID;",
];

pub(super) struct SqliteBackend {
    jobs: mpsc::Sender<Job>,
    #[cfg_attr(not(test), allow(dead_code))] // read by tests today, by metrics later
    stats: Arc<Stats>,
    // Held, never read: the OS lock on it lasts as long as this handle.
    _lock: File,
}

/// Counters the writer keeps, for tests and (later) metrics.
#[derive(Default)]
pub(super) struct Stats {
    pub(super) commits: AtomicU64,
    pub(super) jobs: AtomicU64,
}

enum Job {
    Execute {
        user: UserId,
        op: Op,
        reply: oneshot::Sender<Result<Reply, StoreError>>,
    },
    Sweep {
        reply: oneshot::Sender<Result<(u64, u64), StoreError>>,
    },
    CountLive {
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Ping {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Close {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Tells `holding`, then blocks the writer until `until`'s sender is
    /// dropped or sends.
    #[cfg(test)]
    Hold {
        holding: std::sync::mpsc::Sender<()>,
        until: std::sync::mpsc::Receiver<()>,
    },
}

impl SqliteBackend {
    pub(super) fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| OpenError(format!("cannot create data dir {}: {e}", dir.display())))?;
        let lock = lock_data_dir(dir)?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(|e| OpenError(format!("cannot open {}: {e}", path.display())))?;
        prepare(&conn).map_err(|e| OpenError(format!("cannot prepare {}: {e}", path.display())))?;

        let (jobs, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(Stats::default());
        let writer_stats = stats.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || Writer { conn, clock, stats: writer_stats }.run(rx))
            .map_err(|e| OpenError(format!("cannot start the sqlite writer thread: {e}")))?;
        Ok(Self { jobs, stats, _lock: lock })
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send(make(tx)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the sqlite writer has stopped".into())
}

fn lock_data_dir(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| OpenError(format!("cannot open lock file {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(OpenError(format!(
                "data dir {} is in use by another streamcap process (pid {}); stop it or choose another --data-dir",
                dir.display(),
                holder.trim()
            )));
        }
        Err(TryLockError::Error(e)) => {
            return Err(OpenError(format!("cannot lock {}: {e}", path.display())));
        }
    }
    // Informational only: the OS lock is what keeps others out.
    let _ = file.set_len(0).and_then(|()| write!(file, "{}", std::process::id()));
    Ok(file)
}

fn prepare(conn: &Connection) -> Result<(), String> {
    let sql = |e: rusqlite::Error| e.to_string();
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("journal_mode is {mode}, WAL is required"));
    }
    // FULL: a commit returns only after the WAL is fsynced, so an answer
    // survives a power cut, not only a process crash.
    conn.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sql)?;
    if version > MIGRATIONS.len() {
        return Err(format!(
            "schema version {version} is newer than this binary understands ({}); upgrade streamcap",
            MIGRATIONS.len()
        ));
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.unchecked_transaction().map_err(sql)?;
        tx.execute_batch(migration).map_err(sql)?;
        tx.pragma_update(None, "user_version", i + 1).map_err(sql)?;
        tx.commit().map_err(sql)?;
    }
    Ok(())
}

struct Writer {
    conn: Connection,
    clock: Arc<dyn Clock>,
    stats: Arc<Stats>,
}

/// A job's answer, held back until its transaction has committed.
type Pending = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

fn hold_back<T: Send + 'static>(tx: oneshot::Sender<Result<T, StoreError>>, result: Result<T, StoreError>) -> Pending {
    Box::new(move |commit| {
        let answer = match commit {
            Ok(()) => result,
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        };
        // The caller may have given up (timeout); nobody to tell then.
        let _ = tx.send(answer);
    })
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut close_replies = Vec::new();
        while close_replies.is_empty() {
            let Some(first) = rx.blocking_recv() else { break };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.run_batch(&mut batch, &mut close_replies);
        }
        rx.close();
        let result = self
            .conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .map_err(|e| StoreError::Unavailable(format!("final checkpoint failed: {e}")));
        if let Err(e) = &result {
            tracing::error!(error = %e, "closing the sqlite store");
        }
        drop(self.conn);
        for reply in close_replies {
            let _ = reply.send(result.as_ref().map(|_| ()).map_err(|e| StoreError::Unavailable(e.to_string())));
        }
    }

    fn run_batch(&mut self, batch: &mut Vec<Job>, close: &mut Vec<oneshot::Sender<Result<(), StoreError>>>) {
        let mut pending: Vec<Pending> = Vec::with_capacity(batch.len());
        let commit = match self.conn.transaction() {
            Ok(mut tx) => {
                for job in batch.drain(..) {
                    let now = self.clock.now();
                    match job {
                        Job::Execute { user, op, reply } => {
                            pending.push(hold_back(reply, execute(&mut tx, &user, op, now)))
                        }
                        Job::Sweep { reply } => pending.push(hold_back(reply, sweep(&tx, now))),
                        Job::CountLive { reply } => pending.push(hold_back(reply, count_live(&tx, now))),
                        Job::Ping { reply } => pending.push(hold_back(reply, ping(&tx))),
                        Job::Close { reply } => close.push(reply),
                        #[cfg(test)]
                        Job::Hold { holding, until } => {
                            let _ = holding.send(());
                            let _ = until.recv();
                        }
                    }
                }
                tx.commit().map_err(|e| StoreError::Unavailable(format!("sqlite commit failed: {e}")))
            }
            Err(e) => {
                batch.clear();
                Err(StoreError::Unavailable(format!("sqlite begin failed: {e}")))
            }
        };
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.jobs.fetch_add(pending.len() as u64, Ordering::Relaxed);
        metrics::sqlite_commit(pending.len() as u64);
        if let Err(e) = &commit {
            tracing::error!(error = %e, jobs = pending.len(), "sqlite batch failed; answering unavailable");
        }
        for p in pending {
            p(commit.as_ref().map(|_| ()));
        }
    }
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

/// One job inside its own savepoint: if any statement fails, this job's
/// changes roll back and the rest of the batch goes on.
fn execute(tx: &mut Transaction<'_>, user: &UserId, op: Op, now: Timestamp) -> Result<Reply, StoreError> {
    let sp = tx.savepoint().map_err(unavailable)?;
    let mut state = load(&sp, user)?;
    let outcome = limiter::apply(&mut state, op, now);
    for write in &outcome.writes {
        persist(&sp, user, write).map_err(unavailable)?;
    }
    sp.commit().map_err(unavailable)?;
    metrics::decision("expired", outcome.expired as u64);
    Ok(outcome.reply)
}

fn load(conn: &Connection, user: &UserId) -> Result<UserState, StoreError> {
    let id = |column: &'static str, raw: String| StreamId::new(&raw).map_err(|e| corrupt(user, column, e));
    let label = |column: &'static str, raw: Option<String>| {
        raw.map(|r| Label::new(&r)).transpose().map_err(|e| corrupt(user, column, e))
    };

    let mut stmt = conn
        .prepare_cached(
            "SELECT stream_id, device_id, content_id, started_at, expires_at FROM leases WHERE user_id = ?1",
        )
        .map_err(unavailable)?;
    let mut rows = stmt.query([user.as_str()]).map_err(unavailable)?;
    let mut leases = Vec::new();
    while let Some(r) = rows.next().map_err(unavailable)? {
        leases.push(Lease {
            stream_id: id("stream_id", r.get(0).map_err(unavailable)?)?,
            device_id: label("device_id", r.get(1).map_err(unavailable)?)?,
            content_id: label("content_id", r.get(2).map_err(unavailable)?)?,
            started_at: Timestamp::from_micros(r.get(3).map_err(unavailable)?),
            expires_at: Timestamp::from_micros(r.get(4).map_err(unavailable)?),
        });
    }

    let mut stmt = conn
        .prepare_cached("SELECT stream_id, evicted_by, until FROM tombstones WHERE user_id = ?1")
        .map_err(unavailable)?;
    let mut rows = stmt.query([user.as_str()]).map_err(unavailable)?;
    let mut tombstones = Vec::new();
    while let Some(r) = rows.next().map_err(unavailable)? {
        let by: Option<String> = r.get(1).map_err(unavailable)?;
        tombstones.push(Tombstone {
            stream_id: id("stream_id", r.get(0).map_err(unavailable)?)?,
            reason: match by {
                Some(by) => RevokeReason::EvictedBy(id("evicted_by", by)?),
                None => RevokeReason::Revoked,
            },
            until: Timestamp::from_micros(r.get(2).map_err(unavailable)?),
        });
    }

    let limit: Option<u32> = conn
        .prepare_cached("SELECT stream_limit FROM overrides WHERE user_id = ?1")
        .and_then(|mut s| s.query_row([user.as_str()], |r| r.get(0)).optional())
        .map_err(unavailable)?;
    let limit_override = match limit {
        Some(n) => Some(Limit::new(n).ok_or_else(|| {
            StoreError::Unavailable(format!("corrupt row for user {user}: stream_limit {n} out of range"))
        })?),
        None => None,
    };
    Ok(UserState::new(leases, tombstones, limit_override))
}

fn corrupt(user: &UserId, column: &str, e: InvalidId) -> StoreError {
    StoreError::Unavailable(format!("corrupt row for user {user}: {column} {e}"))
}

fn persist(conn: &Connection, user: &UserId, write: &Write) -> rusqlite::Result<()> {
    let u = user.as_str();
    match write {
        Write::PutLease(l) => {
            conn.prepare_cached(
                "INSERT INTO leases (user_id, stream_id, device_id, content_id, started_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (user_id, stream_id) DO UPDATE SET
                    device_id = excluded.device_id, content_id = excluded.content_id,
                    started_at = excluded.started_at, expires_at = excluded.expires_at",
            )?
            .execute(params![
                u,
                l.stream_id.as_str(),
                l.device_id.as_ref().map(Label::as_str),
                l.content_id.as_ref().map(Label::as_str),
                l.started_at.as_micros(),
                l.expires_at.as_micros(),
            ])?;
        }
        Write::DeleteLease(stream) => {
            conn.prepare_cached("DELETE FROM leases WHERE user_id = ?1 AND stream_id = ?2")?
                .execute([u, stream.as_str()])?;
        }
        Write::PutTombstone(t) => {
            let by = match &t.reason {
                RevokeReason::EvictedBy(s) => Some(s.as_str()),
                RevokeReason::Revoked => None,
            };
            conn.prepare_cached(
                "INSERT INTO tombstones (user_id, stream_id, evicted_by, until) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, stream_id) DO UPDATE SET
                    evicted_by = excluded.evicted_by, until = excluded.until",
            )?
            .execute(params![u, t.stream_id.as_str(), by, t.until.as_micros()])?;
        }
        Write::DeleteTombstone(stream) => {
            conn.prepare_cached("DELETE FROM tombstones WHERE user_id = ?1 AND stream_id = ?2")?
                .execute([u, stream.as_str()])?;
        }
        Write::SetOverride(Some(limit)) => {
            conn.prepare_cached(
                "INSERT INTO overrides (user_id, stream_limit) VALUES (?1, ?2)
                 ON CONFLICT (user_id) DO UPDATE SET stream_limit = excluded.stream_limit",
            )?
            .execute(params![u, limit.get()])?;
        }
        Write::SetOverride(None) => {
            conn.prepare_cached("DELETE FROM overrides WHERE user_id = ?1")?.execute([u])?;
        }
    }
    Ok(())
}

/// Deletes up to [`SWEEP_BATCH`] expired leases and as many expired
/// tombstones; returns how many of each went.
fn sweep(conn: &Connection, now: Timestamp) -> Result<(u64, u64), StoreError> {
    let mut deleted = [0u64; 2];
    for (n, sql) in deleted.iter_mut().zip([
        "DELETE FROM leases WHERE (user_id, stream_id) IN
            (SELECT user_id, stream_id FROM leases WHERE expires_at <= ?1 LIMIT ?2)",
        "DELETE FROM tombstones WHERE (user_id, stream_id) IN
            (SELECT user_id, stream_id FROM tombstones WHERE until <= ?1 LIMIT ?2)",
    ]) {
        *n = conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params![now.as_micros(), SWEEP_BATCH as i64]))
            .map_err(unavailable)? as u64;
    }
    Ok((deleted[0], deleted[1]))
}

fn count_live(conn: &Connection, now: Timestamp) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT count(*) FROM leases WHERE expires_at > ?1")
        .and_then(|mut s| s.query_row([now.as_micros()], |r| r.get::<_, i64>(0)))
        .map(|n| n as u64)
        .map_err(unavailable)
}

fn ping(conn: &Connection) -> Result<(), StoreError> {
    conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).optional().map_err(unavailable)?;
    Ok(())
}

impl Backend for SqliteBackend {
    fn execute<'a>(&'a self, user: &'a UserId, op: Op) -> BoxFuture<'a, Result<Reply, StoreError>> {
        Box::pin(self.call(move |reply| Job::Execute { user: user.clone(), op, reply }))
    }

    fn sweep(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut leases = 0;
            loop {
                let (l, t) = self.call(|reply| Job::Sweep { reply }).await?;
                leases += l;
                if l < SWEEP_BATCH && t < SWEEP_BATCH {
                    return Ok(leases);
                }
            }
        })
    }

    fn live_leases(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        Box::pin(async move { self.call(|reply| Job::CountLive { reply }).await.map(Some) })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.call(|reply| Job::Ping { reply }))
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match self.call(|reply| Job::Close { reply }).await {
                // Already closed by an earlier call.
                Err(_) if self.jobs.is_closed() => Ok(()),
                r => r,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::limiter::{Acquire, Decision, Limit, OnLimit, Ttl};
    use crate::store::{Store, conformance};

    const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

    fn open(dir: &Path, clock: &ManualClock) -> Store {
        Store::for_test(Box::new(SqliteBackend::open(dir, Arc::new(clock.clone())).unwrap()))
    }

    fn req(stream: &str) -> Acquire {
        Acquire {
            stream_id: StreamId::new(stream).unwrap(),
            device_id: Some(Label::new("tv").unwrap()),
            content_id: None,
            limit: Limit::new(3).unwrap(),
            ttl: Ttl::from_secs(60).unwrap(),
            on_limit: OnLimit::Reject,
            evict: Vec::new(),
            enforce: true,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        conformance::suite(&open(dir.path(), &clock), &clock).await;
    }

    #[test]
    fn differential_against_the_memory_store() {
        conformance::differential(64, |clock| async move {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path(), &clock);
            (store, Box::new(dir) as Box<dyn std::any::Any>)
        });
    }

    #[tokio::test]
    async fn leases_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let user = UserId::new("u").unwrap();
        let store = open(dir.path(), &clock);
        store.acquire(&user, req("a")).await.unwrap();
        store.acquire(&user, req("b")).await.unwrap();
        store.release(&user, StreamId::new("b").unwrap()).await.unwrap();
        store.close().await.unwrap();
        drop(store);

        let store = open(dir.path(), &clock);
        let (_, live) = store.list(&user, Limit::new(3).unwrap()).await.unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].stream_id.as_str(), "a");
        assert_eq!(live[0].device_id, Some(Label::new("tv").unwrap()));
        assert_eq!(live[0].started_at, T0);
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_dir_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let _first = SqliteBackend::open(dir.path(), Arc::new(clock.clone())).unwrap();
        let err = SqliteBackend::open(dir.path(), Arc::new(clock)).err().expect("second open must fail");
        assert!(err.0.contains("in use by another streamcap process"), "{err}");
    }

    #[tokio::test]
    async fn closed_store_answers_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let store = open(dir.path(), &clock);
        store.close().await.unwrap();
        store.close().await.unwrap();
        let user = UserId::new("u").unwrap();
        assert!(matches!(store.acquire(&user, req("a")).await, Err(StoreError::Unavailable(_))));
        assert!(store.ping().await.is_err());
    }

    #[tokio::test]
    async fn an_older_schema_is_migrated_in_place_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO leases VALUES ('u', 'old', NULL, NULL, ?1, ?2)",
                // Schema 1 kept milliseconds.
                params![T0.as_millis(), T0.plus(Ttl::from_secs(60).unwrap()).as_millis()],
            )
            .unwrap();
        }
        let clock = ManualClock::new(T0);
        let store = open(dir.path(), &clock);
        let user = UserId::new("u").unwrap();
        let (_, live) = store.list(&user, Limit::new(3).unwrap()).await.unwrap();
        assert_eq!(live[0].stream_id.as_str(), "old");
        assert_eq!(live[0].started_at, T0, "times were converted to µs");
        store.set_override(&user, Limit::new(2)).await.unwrap();
        store.close().await.unwrap();
        drop(store);

        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len());
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = SqliteBackend::open(dir.path(), Arc::new(clock)).err().expect("newer schema must be refused");
        assert!(err.0.contains("newer than this binary"), "{err}");
    }

    /// Jobs that queue up while the writer is busy share one commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let backend = SqliteBackend::open(dir.path(), Arc::new(clock.clone())).unwrap();
        let (jobs, stats) = (backend.jobs.clone(), backend.stats.clone());
        let (release_writer, until) = std::sync::mpsc::channel();
        let (holding, held) = std::sync::mpsc::channel();
        jobs.send(Job::Hold { holding, until }).await.unwrap();
        tokio::task::spawn_blocking(move || held.recv()).await.unwrap().unwrap();
        let store = Store::for_test(Box::new(backend));

        let mut calls = tokio::task::JoinSet::new();
        for i in 0..50 {
            let store = store.clone();
            calls.spawn(async move {
                let user = UserId::new(&format!("user{i}")).unwrap();
                store.acquire(&user, req("s")).await.unwrap()
            });
        }
        // Wait until all 50 are queued behind the held writer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while jobs.max_capacity() - jobs.capacity() < 50 {
            assert!(std::time::Instant::now() < deadline, "requests never queued up");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(stats.commits.load(Ordering::SeqCst), 0);
        drop(release_writer);
        while let Some(d) = calls.join_next().await {
            assert!(matches!(d.unwrap(), Decision::Granted(_)));
        }
        // One commit for the held batch, one for all 50 queued requests.
        assert_eq!(stats.commits.load(Ordering::SeqCst), 2);
        assert_eq!(stats.jobs.load(Ordering::SeqCst), 50);
    }
}
