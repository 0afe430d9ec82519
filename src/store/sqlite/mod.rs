//! The default backend: one SQLite file in WAL mode, written by one thread
//! that also keeps every user's state in memory.
//!
//! Every operation is a job sent to the writer thread, which owns the only
//! connection that writes rows and a packed copy of every user's leases,
//! tombstones and override, read from the file at open. A job runs the
//! rules on that copy and issues only the writes they return; no row is
//! read per request. The writer takes all queued jobs at once, runs them
//! in one transaction, commits once (one fsync, `synchronous=FULL`) and
//! only then answers, reads included. That is group commit: a busy server
//! pays one fsync per batch, not per request, and nobody hears an answer
//! before the commit that covers it. Because one thread runs every job in
//! order, each job sees the effect of all earlier ones: that is what makes
//! a decision atomic per user. If any statement or the commit fails, the
//! batch rolls back on disk and in memory and every job in it answers
//! `Unavailable`. The answers of a committed batch are sent by one task
//! inside the runtime.
//!
//! A second thread, the checkpointer, copies committed pages from the WAL
//! into the database file on a connection of its own, so that no commit
//! runs a checkpoint; it writes no row. The writer bounds the WAL if
//! the checkpointer falls behind (see `checkpoint`). Both threads stop
//! when the store closes or is dropped.
//!
//! The sweeper finds expired rows in memory and deletes them by primary
//! key, a bounded number per step. A lock file in the data dir keeps a
//! second streamcap out. Nothing else may write the file while streamcap
//! runs, because the writer would not see the change; reading it (an
//! online backup) is fine.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::{Backend, BoxFuture, OpenError, StoreError};
use crate::clock::Clock;
use crate::limiter::{Op, Reply, UserId};

mod checkpoint;
mod schema;
#[cfg(test)]
mod tests;
mod users;
mod writer;

use checkpoint::{Checkpoints, Limits};
use schema::Loaded;
use writer::Writer;

const DB_FILE: &str = "streamcap.db";
const LOCK_FILE: &str = "streamcap.lock";
/// How many queued jobs may wait for the writer before callers wait too.
const QUEUE: usize = 8192;

pub(super) struct SqliteBackend {
    jobs: mpsc::Sender<Job>,
    #[cfg_attr(not(test), allow(dead_code))] // read by tests today, by metrics later
    stats: Arc<Stats>,
    // Held, never read: the OS lock on it lasts as long as this handle.
    _lock: File,
}

/// Counters the writer and the checkpointer keep, for tests and (later)
/// metrics.
#[derive(Default)]
pub(super) struct Stats {
    pub(super) commits: AtomicU64,
    pub(super) jobs: AtomicU64,
    /// Checkpoints the checkpointer ran.
    pub(super) checkpoints: AtomicU64,
    /// Checkpoints the writer ran itself, because the WAL had grown long.
    pub(super) writer_checkpoints: AtomicU64,
    /// Times the WAL started over from its beginning.
    pub(super) wal_restarts: AtomicU64,
    /// Test hook: the checkpointer holds this during each run, so a test
    /// that holds it pauses the checkpointer.
    #[cfg(test)]
    pub(super) checkpointer_paused: std::sync::Mutex<()>,
}

/// What one sweep step did.
struct Swept {
    /// Expired leases it deleted.
    leases: u64,
    /// The shard the next step starts at, or `None` when the sweep is done.
    next: Option<usize>,
}

enum Job {
    Execute {
        user: UserId,
        op: Op,
        reply: oneshot::Sender<Result<Reply, StoreError>>,
    },
    Sweep {
        from: usize,
        reply: oneshot::Sender<Result<Swept, StoreError>>,
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
    /// Makes the commit of the next batch fail, as a full disk would.
    #[cfg(test)]
    FailNextCommit,
    /// Every user's state as the writer holds it.
    #[cfg(test)]
    Snapshot {
        reply: oneshot::Sender<Vec<(UserId, crate::limiter::UserState)>>,
    },
}

impl SqliteBackend {
    /// Opens (creating, migrating) the database and reads all of it into
    /// the writer's memory before returning. Must be called inside a tokio
    /// runtime, which delivers the answers.
    pub(super) fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<Self, OpenError> {
        Self::open_with(dir, clock, Limits::default())
    }

    /// [`SqliteBackend::open`], with the WAL sizes that trigger checkpoints.
    fn open_with(dir: &Path, clock: Arc<dyn Clock>, limits: Limits) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| OpenError(format!("cannot create data dir {}: {e}", dir.display())))?;
        let lock = lock_data_dir(dir)?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(|e| OpenError(format!("cannot open {}: {e}", path.display())))?;
        schema::prepare(&conn).map_err(|e| OpenError(format!("cannot prepare {}: {e}", path.display())))?;
        let started = std::time::Instant::now();
        let loaded = schema::load(&conn).map_err(|e| OpenError(format!("cannot read {}: {e}", path.display())))?;
        tracing::info!(
            leases = loaded.users.leases(),
            took_ms = started.elapsed().as_millis() as u64,
            "loaded the sqlite store"
        );
        if !loaded.corrupt.is_empty() {
            tracing::error!(
                users = loaded.corrupt.len(),
                first = loaded.corrupt.values().next().map(String::as_str),
                "users with corrupt rows answer unavailable until the rows are fixed and streamcap restarted"
            );
        }
        if loaded.unreachable > 0 {
            tracing::warn!(rows = loaded.unreachable, "rows with an invalid user_id are ignored");
        }

        let stats = Arc::new(Stats::default());
        let checkpointer =
            Connection::open(&path).map_err(|e| OpenError(format!("cannot open {}: {e}", path.display())))?;
        let checkpoints = Checkpoints::start(&conn, checkpointer, limits, stats.clone())
            .map_err(|e| OpenError(format!("cannot set up checkpoints of {}: {e}", path.display())))?;

        let (jobs, rx) = mpsc::channel(QUEUE);
        let (answers, batches) = mpsc::unbounded_channel();
        tokio::spawn(writer::deliver(batches));
        let writer = Writer::new(conn, checkpoints, clock, stats.clone(), loaded, answers);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer.run(rx))
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

impl Backend for SqliteBackend {
    fn execute<'a>(&'a self, user: &'a UserId, op: Op) -> BoxFuture<'a, Result<Reply, StoreError>> {
        Box::pin(self.call(move |reply| Job::Execute { user: user.clone(), op, reply }))
    }

    fn sweep(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let (mut from, mut leases) = (0, 0);
            loop {
                let step = self.call(|reply| Job::Sweep { from, reply }).await?;
                leases += step.leases;
                match step.next {
                    Some(next) => from = next,
                    None => return Ok(leases),
                }
            }
        })
    }

    /// The leases held, counted as they change: right after a sweep, the
    /// live ones.
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
