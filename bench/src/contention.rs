//! Concurrent acquires for one user over two streamcap instances on one
//! Redis: a standalone redis-server, then a Redis Cluster of three
//! masters (started by the tests' std-only harness, `redis_harness`).
//!
//! Each round takes a fresh user. `CONCURRENT` connections, alternating
//! between the instances, are opened first; then each sends one acquire
//! of a stream of its own, all released at once. Exactly the user's limit
//! must be granted, however the store resolves the race. The retries it
//! took are the growth of `streamcap_store_conflicts_total` summed over
//! both instances' `/metrics`. Nothing here is timed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::http::Conn;
use crate::load::REQUEST_TIMEOUT;
use crate::probe::conflicts;
use crate::procs::{self, Redis, Server};
use crate::redis_harness::RedisCluster;
use crate::report::{Contention, ContentionRound};
use crate::{Ctx, SERVER_FLAGS, workload};

/// Acquires sent at once in each round.
pub const CONCURRENT: usize = 64;
/// streamcap instances the connections alternate between.
pub const INSTANCES: usize = 2;
/// Masters of the Redis Cluster (no replicas).
pub const CLUSTER_MASTERS: usize = 3;
/// The server's default limit, which every harness user has.
pub const LIMIT: u64 = 3;

/// Each binary (a label such as "current", and its path) on a standalone
/// redis-server, then on a Redis Cluster, for `rounds` rounds each. A
/// Redis or server that does not start is a failure of the run.
pub fn run(ctx: &mut Ctx, binaries: &[(&str, &Path)], rounds: u32) -> Vec<Contention> {
    let mut out = Vec::new();
    match Redis::start(&ctx.commands) {
        Ok(redis) => {
            let args = ["--store".to_owned(), "redis".into(), "--redis-url".into(), redis.url()];
            for &(label, bin) in binaries {
                match on_redis(ctx, label, bin, "standalone", &args, rounds) {
                    Ok(c) => out.push(c),
                    Err(e) => ctx.failures.push(format!("redis concurrent acquires, {label}, standalone: {e}")),
                }
            }
        }
        Err(e) => ctx.failures.push(format!("redis concurrent acquires: {e}")),
    }
    let redis = format!("cluster ({CLUSTER_MASTERS} masters)");
    match procs::quietly(|| RedisCluster::start(CLUSTER_MASTERS, 0)) {
        Ok(cluster) => {
            let ports: Vec<String> = cluster.nodes.iter().map(|n| n.port.to_string()).collect();
            ctx.commands.record(
                &format!(
                    "# a Redis Cluster of {CLUSTER_MASTERS} masters on ports {}: RedisCluster::start({CLUSTER_MASTERS}, 0) of \
                     src/store/redis/harness.rs (redis-server --cluster-enabled yes …, then redis-cli --cluster create)",
                    ports.join(", ")
                ),
                &[],
            );
            let args = ["--store", "redis", "--redis-mode", "cluster", "--redis-url"]
                .map(String::from)
                .into_iter()
                .chain([cluster.urls().join(",")])
                .collect::<Vec<_>>();
            for &(label, bin) in binaries {
                match on_redis(ctx, label, bin, &redis, &args, rounds) {
                    Ok(c) => out.push(c),
                    Err(e) => ctx.failures.push(format!("redis concurrent acquires, {label}, {redis}: {e}")),
                }
            }
        }
        Err(e) => ctx.failures.push(format!("redis concurrent acquires: cannot start a Redis Cluster: {e}")),
    }
    out
}

/// `rounds` rounds of one binary on one Redis, whose store flags are
/// `store_args`.
fn on_redis(
    ctx: &mut Ctx,
    label: &str,
    bin: &Path,
    redis: &str,
    store_args: &[String],
    rounds: u32,
) -> Result<Contention, String> {
    let args: Vec<String> = store_args.iter().cloned().chain(SERVER_FLAGS.iter().map(|s| s.to_string())).collect();
    let servers = (0..INSTANCES)
        .map(|_| Server::start(bin, &args, Duration::from_secs(60), &ctx.commands))
        .collect::<Result<Vec<_>, _>>()?;
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let mut result = Contention {
        server: label.to_owned(),
        redis: redis.to_owned(),
        instances: INSTANCES,
        concurrent: CONCURRENT,
        limit: LIMIT,
        rounds: Vec::new(),
    };
    // Users unique to the binary and the Redis, so that no round sees
    // another's leases.
    let tag: String = format!("{label}-{redis}").chars().filter(char::is_ascii_alphanumeric).collect();
    for r in 0..rounds {
        let round = one_round(&addrs, &format!("c-{tag}-{r}"))?;
        if round.granted != LIMIT || round.other > 0 {
            ctx.failures.push(format!(
                "redis concurrent acquires, {label}, {redis}, round {r}: {} granted for a limit of {LIMIT}, {} other \
                 answers",
                round.granted, round.other
            ));
        }
        result.rounds.push(round);
    }
    eprintln!("   {label:<8} {redis:<20} {}", result.describe());
    for s in servers {
        s.terminate(Duration::from_secs(60))?;
    }
    Ok(result)
}

/// One round: `CONCURRENT` acquires for `user`, with the conflicts counted
/// before and after.
fn one_round(addrs: &[SocketAddr], user: &str) -> Result<ContentionRound, String> {
    let before = conflicts(addrs)?;
    let statuses = burst(addrs, user)?;
    let retries = conflicts(addrs)?.saturating_sub(before);
    Ok(tally(&statuses, retries))
}

fn tally(statuses: &[Option<u16>], retries: u64) -> ContentionRound {
    let count = |s: u16| statuses.iter().filter(|&&x| x == Some(s)).count() as u64;
    let (granted, denied_409, unavailable_503) = (count(201), count(409), count(503));
    let other = statuses.len() as u64 - granted - denied_409 - unavailable_503;
    ContentionRound { granted, denied_409, unavailable_503, other, retries }
}

/// Opens the connections (alternating between `addrs`), then sends one
/// acquire on each, all released by one barrier; returns each answer's
/// status (`None`: no answer).
fn burst(addrs: &[SocketAddr], user: &str) -> Result<Vec<Option<u16>>, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut conns = Vec::with_capacity(CONCURRENT);
        for i in 0..CONCURRENT {
            let addr = addrs[i % addrs.len()];
            conns.push(Conn::connect(addr).await.map_err(|e| format!("connect to {addr}: {e}"))?);
        }
        let gate = Arc::new(tokio::sync::Barrier::new(CONCURRENT));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, mut conn) in conns.into_iter().enumerate() {
            let (gate, request) = (gate.clone(), workload::acquire(user, &format!("s{i}")));
            tasks.spawn(async move {
                gate.wait().await;
                match tokio::time::timeout(REQUEST_TIMEOUT, conn.fetch(&request)).await {
                    Ok(Ok((status, _))) => Some(status),
                    _ => None,
                }
            });
        }
        let mut statuses = Vec::with_capacity(CONCURRENT);
        while let Some(status) = tasks.join_next().await {
            statuses.push(status.map_err(|e| e.to_string())?);
        }
        Ok(statuses)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_answer_once() {
        let statuses = [Some(201), Some(409), Some(201), Some(503), None, Some(500), Some(201), Some(409)];
        assert_eq!(
            tally(&statuses, 2),
            ContentionRound { granted: 3, denied_409: 2, unavailable_503: 1, other: 2, retries: 2 }
        );
        assert_eq!(tally(&[], 0), ContentionRound::default());
    }
}
