//! Resident memory per live lease on a fresh server, and for sqlite the
//! restarts after a crash and after a clean stop, timed to the first
//! correct decision.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::load::{Pace, Work};
use crate::measure::{phase, server_args};
use crate::probe::{Scraper, one_request};
use crate::procs::{self, Server};
use crate::report::{Footprint, Recovery, round1, round3};
use crate::{Ctx, workload};

/// RSS per live lease on a fresh server; for sqlite, then the restarts.
pub fn footprint_run(ctx: &mut Ctx, store: &str, recovery: &mut Vec<Recovery>) -> Result<Footprint, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data_dir = (store == "sqlite").then(|| dir.path().join("data"));
    // Leases that outlive the run, so none expires while we count.
    let args = server_args(store, data_dir.as_deref(), None, &["--lease-ttl", "86400"]);
    let server = Server::start(&ctx.args.server, &args, Duration::from_secs(60), &ctx.commands)?;
    let watch = [server.pid()];
    phase(ctx, "footprint warm-up livez", server.addr, Work::Livez, Pace::Closed, Duration::from_millis(500), &watch)?;
    // Scrape /metrics every second, as Prometheus would. Each scrape
    // drains the latency samples the server buffers per request (about 18
    // bytes each, kept until the next scrape); without it they would be
    // counted as lease memory.
    let scraper = Scraper::start(server.addr);
    std::thread::sleep(Duration::from_millis(1200));
    let rss_before = procs::rss_bytes(server.pid())?;
    let users = ctx.leases.div_ceil(3);
    let work = Work::Fill { start: 0, total: ctx.leases, users };
    let fill = phase(ctx, "fill", server.addr, work, Pace::Fill, Duration::from_secs(1800), &watch)?;
    std::thread::sleep(Duration::from_millis(1200));
    let rss_after = procs::rss_bytes(server.pid())?;
    let scrapes = scraper.stop();
    if scrapes == 0 {
        ctx.failures.push(format!("{store}: no /metrics scrape succeeded during the fill"));
    }
    let created = fill.statuses.get("acquire 201").copied().unwrap_or(0);
    let probe = one_request(server.addr, &workload::fill_probe_new(0))?;
    let disk = data_dir.as_deref().map(disk_bytes);
    let per_lease = (rss_after as f64 - rss_before as f64) / created.max(1) as f64;
    eprintln!(
        "   RSS {:.1} MiB -> {:.1} MiB for {created} leases: {per_lease:.0} bytes per lease",
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    let footprint = Footprint {
        store: store.to_owned(),
        leases_requested: ctx.leases,
        leases_created: created,
        users,
        fill,
        rss_before,
        rss_after,
        rss_bytes_per_lease: round1(per_lease),
        disk_bytes: disk,
        disk_bytes_per_lease: disk.map(|d| round1(d as f64 / created.max(1) as f64)),
        full_user_probe_status: probe,
    };
    if probe != 409 {
        ctx.failures.push(format!("{store}: a full user's next acquire gave {probe}, not 409"));
    }
    match data_dir {
        Some(d) if created == ctx.leases => recovery.extend(restarts(ctx, store, server, &d, created, users)?),
        Some(_) => {
            ctx.failures
                .push(format!("sqlite: only {created} of {} leases were created; recovery not measured", ctx.leases));
            server.terminate(Duration::from_secs(120))?;
        }
        None => {
            server.terminate(Duration::from_secs(120))?;
        }
    }
    Ok(footprint)
}

/// The bytes of the sqlite database in `data_dir`, with its WAL.
fn disk_bytes(data_dir: &Path) -> u64 {
    ["streamcap.db", "streamcap.db-wal", "streamcap.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(data_dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// Kills `server`, filled with `created` leases of `users` in
/// `data_dir`, and restarts it; then stops it cleanly and restarts it
/// again. Returns both recoveries.
fn restarts(
    ctx: &mut Ctx,
    store: &str,
    server: Server,
    data_dir: &Path,
    created: u64,
    users: u64,
) -> Result<[Recovery; 2], String> {
    let args = server_args(store, Some(data_dir), None, &["--lease-ttl", "86400"]);
    // A crash first (the WAL holds the tail), then a clean stop.
    server.kill9();
    let crash = restart(ctx, &args, created, users, "SIGKILL", None)?;
    eprintln!("   restart after SIGKILL: first decision after {:.3} s", crash.0.to_first_decision_seconds);
    let took = crash.1.terminate(Duration::from_secs(120))?;
    let clean = restart(ctx, &args, created, users, "SIGTERM", Some(took))?;
    eprintln!(
        "   restart after SIGTERM (shutdown {:.3} s): ready after {:.3} s, first decision after {:.3} s",
        took.as_secs_f64(),
        clean.0.to_ready_seconds,
        clean.0.to_first_decision_seconds
    );
    clean.1.terminate(Duration::from_secs(120))?;
    Ok([crash.0, clean.0])
}

/// Starts the server on an existing data dir and times it to its first
/// correct decision.
fn restart(
    ctx: &mut Ctx,
    args: &[String],
    leases: u64,
    users: u64,
    stop: &str,
    shutdown: Option<Duration>,
) -> Result<(Recovery, Server), String> {
    let server = Server::start(&ctx.args.server, args, Duration::from_secs(300), &ctx.commands)?;
    let deadline = server.spawned_at + Duration::from_secs(300);
    let to_ready = loop {
        if let Ok(200) = one_request(server.addr, workload::READYZ) {
            break server.spawned_at.elapsed();
        }
        if Instant::now() > deadline {
            return Err(format!("not ready within 300 s of a restart after {stop}:\n{}", server.tail()));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    // User f1 holds 3 leases: a new stream must be refused.
    let first = one_request(server.addr, &workload::fill_probe_new(1))?;
    let to_decision = server.spawned_at.elapsed();
    let renew = one_request(server.addr, &workload::fill_probe_renew(2, 1))?;
    let last_user = (leases - 1) % users;
    let last_full = leases / users + u64::from(last_user < leases % users) >= 3;
    let last = one_request(server.addr, &workload::fill_probe_new(last_user))?;
    let correct = first == 409 && renew == 200 && (last == 409) == last_full;
    if !correct {
        ctx.failures.push(format!(
            "sqlite restart after {stop}: wrong answers (full user {first}, renew {renew}, last user {last})"
        ));
    }
    let r = Recovery {
        store: "sqlite".into(),
        leases,
        stop: stop.into(),
        shutdown_seconds: shutdown.map(|d| round3(d.as_secs_f64())),
        to_listening_seconds: round3(server.to_listening.as_secs_f64()),
        to_ready_seconds: round3(to_ready.as_secs_f64()),
        to_first_decision_seconds: round3(to_decision.as_secs_f64()),
        first_decision_status: first,
        renew_status: renew,
        last_user_status: last,
        correct,
    };
    Ok((r, server))
}
