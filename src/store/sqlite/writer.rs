//! The writer thread: the only owner of the connection that writes rows,
//! and of every user's state. It runs jobs in batches, one transaction per
//! batch, and tells its [`Checkpoints`] after each commit.
//!
//! Each change to a user's state in memory pushes the user's previous
//! state onto an undo log. If a statement or the commit fails, the
//! transaction rolls back, the undo log restores every touched user's
//! committed state, and every job of the batch answers `Unavailable`. A
//! sweep runs in bounded steps ([`SWEEP_BATCH`] rows, [`SWEEP_SCAN`] users):
//! it calls [`limiter::expire`] on each user whose earliest expiry has
//! passed and deletes the rows it returns by primary key.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::Checkpoints;
use super::users::{Packed, SHARDS, Undecodable, Users};
use super::{Job, Stats, Swept};
use crate::clock::Clock;
use crate::limiter::{self, Holder, Label, Op, Reply, RevokeReason, Timestamp, UserId, Write};
use crate::metrics;
use crate::store::StoreError;

/// The most jobs one transaction takes; bounds the latency of a batch.
const MAX_BATCH: usize = 1024;
/// Rows one sweep step deletes at most, so sweeping never stalls the
/// writer for long.
pub(super) const SWEEP_BATCH: usize = 5_000;
/// Users one sweep step looks at: whole shards, and no further shard once
/// past this many.
const SWEEP_SCAN: usize = 100_000;

pub(super) struct Writer {
    conn: Connection,
    /// When the WAL is checkpointed, and by whom; owns the checkpointer.
    checkpoints: Checkpoints,
    clock: Arc<dyn Clock>,
    stats: Arc<Stats>,
    /// What the database holds, as of the last statement this thread ran.
    users: Users,
    /// Users whose rows did not load, and why. They answer `Unavailable`.
    corrupt: HashMap<UserId, String>,
    /// Each user this batch changed, with what they held before, oldest
    /// first: undoing it in reverse restores the state of the last commit.
    undo: Vec<(UserId, Option<Packed>)>,
    /// Answers held back until the batch has committed.
    answers: Vec<Answer>,
    /// Where committed batches' answers go.
    out: Answers,
    /// Leases this batch found expired, for the metric once it commits.
    expired: u64,
    /// Test hook: make the next commit fail.
    #[cfg(test)]
    fail_commit: bool,
}

/// A job's answer, held back until its transaction has committed. If the
/// batch fails, every one of them becomes that failure instead.
#[allow(
    clippy::large_enum_variant,
    reason = "one answer per job, moved once; boxing the reply would allocate on every request"
)]
pub(super) enum Answer {
    Execute(oneshot::Sender<Result<Reply, StoreError>>, Result<Reply, StoreError>),
    Sweep(oneshot::Sender<Result<Swept, StoreError>>, Result<Swept, StoreError>),
    Count(oneshot::Sender<Result<u64, StoreError>>, Result<u64, StoreError>),
    Ping(oneshot::Sender<Result<(), StoreError>>, Result<(), StoreError>),
}

/// Hands each committed batch's answers to a task inside the runtime,
/// which sends them. Waking a waiting task from this thread goes through
/// the runtime's remote queue and, as often as not, unparks a worker with
/// a system call; one such wake-up per batch is cheap, one per answer was
/// the largest cost of the whole writer. From inside the runtime, the
/// wake-ups go to a worker's local queue instead.
pub(super) type Answers = mpsc::UnboundedSender<Vec<Answer>>;

/// The task that sends the answers of each batch, in order.
pub(super) async fn deliver(mut batches: mpsc::UnboundedReceiver<Vec<Answer>>) {
    while let Some(batch) = batches.recv().await {
        for answer in batch {
            answer.send();
        }
    }
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        checkpoints: Checkpoints,
        clock: Arc<dyn Clock>,
        stats: Arc<Stats>,
        loaded: super::Loaded,
        out: Answers,
    ) -> Self {
        Self {
            conn,
            checkpoints,
            clock,
            stats,
            users: loaded.users,
            corrupt: loaded.corrupt,
            undo: Vec::new(),
            answers: Vec::new(),
            out,
            expired: 0,
            #[cfg(test)]
            fail_commit: false,
        }
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Job>) {
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
        // The checkpointer closes its connection first, so that the
        // writer's is the last and closing it removes the WAL.
        self.checkpoints.stop();
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

    /// Runs `batch` in one transaction and answers its jobs once it has
    /// committed. If any statement or the commit fails, the transaction
    /// rolls back, every user it touched gets their last committed state
    /// back, and every job of the batch answers `Unavailable`: memory and
    /// disk agree, and nobody hears of a change that did not commit.
    fn run_batch(&mut self, batch: &mut Vec<Job>, close: &mut Vec<oneshot::Sender<Result<(), StoreError>>>) {
        let mut failure = self.sql("BEGIN").err().map(|e| format!("sqlite begin failed: {e}"));
        for job in batch.drain(..) {
            let now = self.clock.now();
            match job {
                Job::Execute { user, op, reply } => {
                    let r = self.unless_failed(&mut failure, |w| w.execute(user, op, now));
                    self.answers.push(Answer::Execute(reply, r));
                }
                Job::Sweep { from, reply } => {
                    let r = self.unless_failed(&mut failure, |w| w.sweep(from, now).map(Ok));
                    self.answers.push(Answer::Sweep(reply, r));
                }
                Job::CountLive { reply } => self.answers.push(Answer::Count(reply, Ok(self.users.leases()))),
                Job::Ping { reply } => self.answers.push(Answer::Ping(reply, Ok(()))),
                Job::Close { reply } => close.push(reply),
                #[cfg(test)]
                Job::Hold { holding, until } => {
                    let _ = holding.send(());
                    let _ = until.recv();
                }
                #[cfg(test)]
                Job::FailNextCommit => self.fail_commit = true,
                #[cfg(test)]
                Job::Snapshot { reply } => drop(reply.send(self.users.all())),
            }
        }
        let outcome = match failure {
            None => self.commit(),
            Some(e) => Err(e),
        };
        let jobs = self.answers.len() as u64;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.jobs.fetch_add(jobs, Ordering::Relaxed);
        metrics::sqlite_commit(jobs);
        let committed = outcome.is_ok();
        match outcome {
            Ok(()) => {
                self.undo.clear();
                metrics::decision("expired", std::mem::take(&mut self.expired));
            }
            Err(e) => {
                tracing::error!(error = %e, jobs, "sqlite batch failed; answering unavailable");
                self.roll_back();
                for answer in &mut self.answers {
                    answer.fail(&e);
                }
            }
        }
        if !self.answers.is_empty() {
            let answers = std::mem::replace(&mut self.answers, Vec::with_capacity(jobs as usize));
            // Fails only once the runtime is gone, and with it every caller.
            let _ = self.out.send(answers);
        }
        if committed {
            self.checkpoints.after_commit(&self.conn);
        }
    }

    /// Runs `job` unless the batch has already failed; a job that fails
    /// the batch records why in `failure`. The job's own answer (`Ok` of
    /// the result) may still be an error for that job alone.
    fn unless_failed<T>(
        &mut self,
        failure: &mut Option<String>,
        job: impl FnOnce(&mut Self) -> Result<Result<T, StoreError>, String>,
    ) -> Result<T, StoreError> {
        if failure.is_none() {
            match job(self) {
                Ok(answer) => return answer,
                Err(e) => *failure = Some(e),
            }
        }
        Err(StoreError::Unavailable("the batch failed".into()))
    }

    fn commit(&mut self) -> Result<(), String> {
        #[cfg(test)]
        if std::mem::take(&mut self.fail_commit) {
            return Err("sqlite commit failed: injected by a test".into());
        }
        self.sql("COMMIT").map_err(|e| format!("sqlite commit failed: {e}"))
    }

    /// Undoes the open transaction on disk and in memory.
    fn roll_back(&mut self) {
        // SQLite may already have rolled back by itself (after an I/O
        // error, say); then there is nothing to undo on disk.
        if !self.conn.is_autocommit()
            && let Err(e) = self.sql("ROLLBACK")
        {
            tracing::error!(error = %e, "sqlite rollback failed");
        }
        while let Some((user, old)) = self.undo.pop() {
            self.users.restore(user, old);
        }
        self.expired = 0;
    }

    /// Runs a statement without parameters, prepared once.
    fn sql(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    /// One operation: the rules on the user's state in memory, then only
    /// the writes they return.
    fn execute(&mut self, user: UserId, op: Op, now: Timestamp) -> Result<Result<Reply, StoreError>, String> {
        if !self.corrupt.is_empty()
            && let Some(why) = self.corrupt.get(&user)
        {
            // Only this user is affected; the batch goes on.
            return Ok(Err(StoreError::Unavailable(why.clone())));
        }
        let mut state = self.users.state(&user).map_err(|Undecodable| undecodable(&user))?;
        let outcome = limiter::apply(&mut state, op, now);
        if !outcome.writes.is_empty() {
            for write in &outcome.writes {
                persist(&self.conn, &user, write).map_err(|e| format!("sqlite: {e}"))?;
            }
            let old = self.users.replace(&user, &state);
            self.undo.push((user, old));
        }
        self.expired += outcome.expired as u64;
        Ok(Ok(outcome.reply))
    }

    /// One step of a sweep: from shard `from` on, deletes what has expired
    /// until about [`SWEEP_BATCH`] rows went (one user's rows past it at
    /// most) or [`SWEEP_SCAN`] users were looked at, and says where the
    /// next step starts.
    fn sweep(&mut self, from: usize, now: Timestamp) -> Result<Swept, String> {
        let (mut rows, mut leases, mut scanned) = (0, 0, 0);
        for shard in from..SHARDS {
            if scanned >= SWEEP_SCAN {
                return Ok(Swept { leases, next: Some(shard) });
            }
            scanned += self.users.shard_len(shard);
            for user in self.users.expired_in(shard, now, SWEEP_BATCH - rows) {
                if rows >= SWEEP_BATCH {
                    break;
                }
                let mut state = self.users.state(&user).map_err(|Undecodable| undecodable(&user))?;
                let writes = limiter::expire(&mut state, now);
                for write in &writes {
                    persist(&self.conn, &user, write).map_err(|e| format!("sqlite: {e}"))?;
                }
                rows += writes.len();
                leases += writes.iter().filter(|w| matches!(w, Write::DeleteLease(_))).count() as u64;
                let old = self.users.replace(&user, &state);
                self.undo.push((user, old));
            }
            if rows >= SWEEP_BATCH {
                // This shard may hold more; the next step looks again.
                return Ok(Swept { leases, next: Some(shard) });
            }
        }
        Ok(Swept { leases, next: None })
    }
}

impl Answer {
    fn send(self) {
        // A caller may have given up (timeout); nobody to tell then.
        match self {
            Answer::Execute(tx, r) => drop(tx.send(r)),
            Answer::Sweep(tx, r) => drop(tx.send(r)),
            Answer::Count(tx, r) => drop(tx.send(r)),
            Answer::Ping(tx, r) => drop(tx.send(r)),
        }
    }

    fn fail(&mut self, why: &str) {
        let e = || StoreError::Unavailable(why.to_owned());
        match self {
            Answer::Execute(_, r) => *r = Err(e()),
            Answer::Sweep(_, r) => *r = Err(e()),
            Answer::Count(_, r) => *r = Err(e()),
            Answer::Ping(_, r) => *r = Err(e()),
        }
    }
}

fn undecodable(user: &UserId) -> String {
    format!("the in-memory state of user {user} does not decode (a bug)")
}

fn persist(conn: &Connection, user: &UserId, write: &Write) -> rusqlite::Result<()> {
    let u = user.as_str();
    match write {
        Write::PutLease(l) => {
            conn.prepare_cached(
                "INSERT INTO leases (user_id, stream_id, device_id, content_id, started_at, expires_at,
                                     device_class, content_kind, plan, holder)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (user_id, stream_id) DO UPDATE SET
                    device_id = excluded.device_id, content_id = excluded.content_id,
                    started_at = excluded.started_at, expires_at = excluded.expires_at,
                    device_class = excluded.device_class, content_kind = excluded.content_kind,
                    plan = excluded.plan, holder = excluded.holder",
            )?
            .execute(params![
                u,
                l.stream_id.as_str(),
                l.device_id.as_ref().map(Label::as_str),
                l.content_id.as_ref().map(Label::as_str),
                l.started_at.as_micros(),
                l.expires_at.as_micros(),
                l.device_class.as_ref().map(Label::as_str),
                l.content_kind.as_ref().map(Label::as_str),
                l.plan.as_ref().map(Label::as_str),
                l.holder.as_ref().map(Holder::as_str),
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
        Write::SetOverride(Some(o)) => {
            conn.prepare_cached(
                "INSERT INTO overrides (user_id, stream_limit, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id) DO UPDATE SET
                    stream_limit = excluded.stream_limit, expires_at = excluded.expires_at",
            )?
            .execute(params![u, o.limit.get(), o.expires_at.map(Timestamp::as_micros)])?;
        }
        Write::SetOverride(None) => {
            conn.prepare_cached("DELETE FROM overrides WHERE user_id = ?1")?.execute([u])?;
        }
    }
    Ok(())
}
