//! Checkpoints: copying committed pages from the WAL into the database
//! file, off the writer's path.
//!
//! A checkpoint copies pages and fsyncs the database file, which takes
//! several commits' time. Left to itself, SQLite runs one inside the
//! commit that takes the WAL past 1000 pages, and every job queued behind
//! that commit waits for it. Here the writer's connection never
//! checkpoints by itself. A thread of its own, the checkpointer, runs
//! `PRAGMA wal_checkpoint(PASSIVE)` on a second connection each time the
//! writer has appended [`Limits::every`] pages. A passive checkpoint takes
//! no lock that a commit needs, so the writer keeps committing meanwhile,
//! and it copies only pages of committed transactions: the checkpointer
//! writes no row and changes nothing that a reader could see.
//!
//! The WAL starts over from its beginning only at a commit that finds all
//! of it copied. Under sustained load, commits keep coming while the
//! checkpointer copies, so it never quite catches up, and the WAL would
//! grow without bound. Once the WAL holds [`Limits::finish_at`] pages, the
//! writer therefore copies the rest itself, right after a checkpointer run
//! that left little to copy, and the next commit starts the WAL over. If
//! that moment has not come by [`Limits::force_at`] pages (the
//! checkpointer is slow or stuck), the writer copies whatever is left.
//! Either happens after the batch's answers are out, never inside a
//! commit.
//!
//! A reader (an online backup) pins the WAL: no checkpoint may copy past
//! its snapshot, and the WAL cannot start over while it reads. Meanwhile
//! the WAL grows with the writes, and after each attempt that could not
//! copy everything the writer waits until the WAL has grown by as much
//! again. Once the reader is done, the WAL starts over, and the commit
//! that does so truncates the file back to `force_at` pages
//! (`journal_size_limit`).

use std::cell::Cell;
use std::ffi::c_int;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use rusqlite::Connection;
use rusqlite::hooks::Wal;

use super::Stats;

/// When checkpoints happen, in WAL pages (frames).
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// The checkpointer runs each time the writer has appended this many
    /// pages: SQLite's own default.
    pub(super) every: u32,
    /// From this many pages on, the writer copies what the checkpointer
    /// left, at the first commit after a checkpointer run that left at
    /// most a quarter of `every`.
    pub(super) finish_at: u32,
    /// From this many pages on, the writer copies whatever is left.
    pub(super) force_at: u32,
}

impl Default for Limits {
    /// A WAL of up to about 16 MiB in the usual cycle, 32 MiB at most
    /// unless a reader pins it (with 4 KiB pages).
    fn default() -> Self {
        Self { every: 1000, finish_at: 4000, force_at: 8000 }
    }
}

/// The writer's side of checkpointing: how long the WAL is, and when to
/// ask the checkpointer or copy pages itself. Dropping it stops the
/// checkpointer.
pub(super) struct Checkpoints {
    limits: Limits,
    stats: Arc<Stats>,
    /// Asks the checkpointer for a run; `None` once it is told to stop.
    /// Each request carries the WAL's generation.
    runs: Option<SyncSender<u64>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    /// Pages in the WAL after the last commit that wrote any.
    pages: u32,
    /// How many times the WAL has started over. A run asked for in an
    /// earlier generation says nothing about this one.
    generation: u64,
    /// Pages of this generation known to be copied into the file.
    copied: u32,
    /// A run was asked for and has not reported back.
    running: bool,
    /// The WAL size at which the checkpointer is asked next.
    next_run: u32,
    /// The writer copies the rest from this size on (see [`Limits`]).
    finish_at: u32,
    force_at: u32,
}

/// A checkpointer run, reported back to the writer.
struct Done {
    generation: u64,
    result: rusqlite::Result<Outcome>,
}

/// What `PRAGMA wal_checkpoint(PASSIVE)` answers.
struct Outcome {
    /// Another connection was checkpointing: nothing was done.
    busy: bool,
    /// Pages in the WAL, and how many of them are now in the file.
    pages: i64,
    copied: i64,
}

thread_local! {
    /// Pages in the WAL after this thread's last commit that wrote any;
    /// set by [`on_commit`] inside the commit.
    static COMMITTED: Cell<Option<u32>> = const { Cell::new(None) };
}

/// The writer connection's WAL hook, called inside each commit that wrote
/// pages, on the committing thread. Installing it removes SQLite's
/// automatic checkpoint, which is a WAL hook too.
fn on_commit(_: &Wal, pages: c_int) -> rusqlite::Result<()> {
    COMMITTED.set(Some(u32::try_from(pages).unwrap_or(0)));
    Ok(())
}

impl Checkpoints {
    /// Turns the automatic checkpoints of `writer` off and starts the
    /// checkpointer on `conn`, a second connection to the same file.
    pub(super) fn start(
        writer: &Connection,
        conn: Connection,
        limits: Limits,
        stats: Arc<Stats>,
    ) -> Result<Self, String> {
        let sql = |e: rusqlite::Error| e.to_string();
        writer.wal_hook(Some(on_commit));
        let page_size: i64 = writer.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(sql)?;
        // A frame is a page and a 24-byte header; the WAL has a 32-byte one.
        let bytes = i64::from(limits.force_at) * (page_size + 24) + 32;
        writer.pragma_update(None, "journal_size_limit", bytes).map_err(sql)?;
        // A checkpoint fsyncs the WAL before it copies and the file after,
        // so that no page is lost when the WAL starts over.
        conn.pragma_update(None, "synchronous", "FULL").map_err(sql)?;

        let (runs, requests) = mpsc::sync_channel(1);
        let (report, done) = mpsc::channel();
        let for_thread = stats.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpointer".into())
            .spawn(move || checkpointer(conn, requests, report, for_thread))
            .map_err(|e| format!("cannot start the sqlite checkpointer thread: {e}"))?;
        Ok(Self {
            limits,
            stats,
            runs: Some(runs),
            done,
            thread: Some(thread),
            pages: 0,
            generation: 0,
            copied: 0,
            running: false,
            next_run: limits.every,
            finish_at: limits.finish_at,
            force_at: limits.force_at,
        })
    }

    /// Called by the writer after each batch that committed, once the
    /// batch's answers are out.
    pub(super) fn after_commit(&mut self, writer: &Connection) {
        let Some(pages) = COMMITTED.take() else {
            // The batch wrote nothing.
            return;
        };
        if pages < self.pages {
            self.started_over();
        }
        self.pages = pages;
        while let Ok(done) = self.done.try_recv() {
            self.running = false;
            if let (true, Ok(o)) = (done.generation == self.generation, &done.result)
                && !o.busy
            {
                self.copied = self.copied.max(clamp(o.copied));
            }
        }
        let left = pages.saturating_sub(self.copied);
        let little = !self.running && left <= self.limits.every / 4;
        if pages >= self.force_at || (pages >= self.finish_at && little) {
            self.finish(writer);
        } else if pages >= self.next_run && !self.running {
            self.run();
        }
    }

    /// Stops the checkpointer, after its current run if one is going,
    /// and closes its connection.
    pub(super) fn stop(&mut self) {
        self.runs = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the sqlite checkpointer panicked");
        }
    }

    fn run(&mut self) {
        let Some(runs) = &self.runs else { return };
        if runs.try_send(self.generation).is_ok() {
            self.running = true;
            self.next_run = self.pages.saturating_add(self.limits.every);
        }
    }

    /// Copies what is left on the writer's connection. Only the batch
    /// after it waits for it.
    fn finish(&mut self, writer: &Connection) {
        match checkpoint(writer) {
            // The checkpointer, or someone else, is checkpointing; the
            // next commit tries again.
            Ok(o) if o.busy => return,
            Ok(o) => {
                self.stats.writer_checkpoints.fetch_add(1, Ordering::Relaxed);
                self.copied = clamp(o.copied);
                if o.copied < o.pages {
                    tracing::warn!(
                        pages = o.pages,
                        copied = o.copied,
                        "a reader keeps the sqlite WAL from being checkpointed; it grows until the reader is done"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, pages = self.pages, "sqlite checkpoint failed"),
        }
        // The next commit starts the WAL over unless a reader still uses
        // it. Until then, try again only once the WAL has grown by as much
        // again.
        self.finish_at = self.pages.saturating_add(self.limits.finish_at);
        self.force_at = self.pages.saturating_add(self.limits.force_at);
    }

    fn started_over(&mut self) {
        self.stats.wal_restarts.fetch_add(1, Ordering::Relaxed);
        self.generation += 1;
        self.copied = 0;
        self.next_run = self.limits.every;
        self.finish_at = self.limits.finish_at;
        self.force_at = self.limits.force_at;
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The checkpointer thread: one passive checkpoint per request, until the
/// writer stops asking.
fn checkpointer(conn: Connection, requests: Receiver<u64>, report: Sender<Done>, stats: Arc<Stats>) {
    while let Ok(generation) = requests.recv() {
        #[cfg(test)]
        let _paused = stats.checkpointer_paused.lock();
        let result = checkpoint(&conn);
        match &result {
            Ok(o) if !o.busy => drop(stats.checkpoints.fetch_add(1, Ordering::Relaxed)),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "sqlite checkpoint failed; the writer checkpoints if the WAL grows long")
            }
        }
        if report.send(Done { generation, result }).is_err() {
            break;
        }
    }
}

fn checkpoint(conn: &Connection) -> rusqlite::Result<Outcome> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok(Outcome { busy: r.get::<_, i64>(0)? != 0, pages: r.get(1)?, copied: r.get(2)? })
    })
}

fn clamp(pages: i64) -> u32 {
    u32::try_from(pages.max(0)).unwrap_or(u32::MAX)
}
