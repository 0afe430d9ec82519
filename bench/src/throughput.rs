//! Throughput, latency and CPU for one store, against its ceilings: the
//! bare server's `/livez` and streamcap's own, in alternating rounds,
//! then the open-loop phases at half of the peak; with the Redis and
//! DynamoDB Local measurements that go with them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::load::{Pace, Work};
use crate::measure::{MakeWork, Spec, interleaved, mix, phase, server_args, server_args_with};
use crate::probe::conflicts;
use crate::procs::{self, DynamoLocal, Redis, Server};
use crate::report::{Conflicts, Phase, RedisBaseline, StoreReport, int, ratio, round1, round3};
use crate::{Ctx, contention, dynamo_harness, dynamodb, host, redis};

/// Throughput, latency and CPU for one store, with its ceilings.
pub fn store_run(ctx: &mut Ctx, store: &str) -> Result<StoreReport, String> {
    let loadavg_before = host::loadavg();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let fsync = procs::fsync_latency(dir.path())?;
    eprintln!("   load average {loadavg_before}; fsync p50 {:.0} µs, worst {:.0} µs", fsync.0, fsync.1);
    let rig = Rig::start(ctx, store, dir.path())?;
    let bare = Server::start_bare(Duration::from_secs(60), &ctx.commands)?;
    let bare_watch: Vec<u32> = std::iter::once(bare.pid()).chain(rig.store_pid()).collect();
    let Warmed { sample, baseline, jit } = rig.warm_up(ctx, bare.addr, &bare_watch)?;
    let closed = closed_loop(ctx, &rig, (bare, &bare_watch), baseline, sample.as_ref())?;
    let open = open_loop(ctx, &rig, closed.mix.throughput)?;
    let dynamodb = match (&rig.dynamo, closed.conflicts, open.conflicts) {
        (Some(d), Some(mix), Some(half_load)) => {
            let on = dynamodb::Rig { local: d, server: &rig.server, args: &rig.args, env: rig.env };
            Some(dynamodb::report(ctx, on, [mix, half_load], jit.unwrap_or_default()))
        }
        _ => None,
    };
    let redis_set = rig.redis.as_ref().and_then(|r| redis::set_ceiling(ctx, r));
    rig.server.terminate(Duration::from_secs(60))?;
    drop((rig.redis, rig.dynamo));
    let redis_keyspace = match &sample {
        Some(sample) if !ctx.args.no_keyspace => {
            eprintln!("== redis: commands per decision at 10,000 and {} users", int(ctx.keyspace_users as f64));
            redis::keyspace(ctx, sample).map_err(|e| ctx.failures.push(format!("redis keyspace: {e}"))).ok()
        }
        _ => None,
    };
    let redis_contention = if store == "redis" { contention_run(ctx) } else { Vec::new() };
    let Closed { bare_livez, livez, mix, redis_commands, redis_baseline, .. } = closed;
    let to_bare = |p: &Phase| ratio(p.cpu.server_us_per_request, bare_livez.cpu.server_us_per_request);
    Ok(StoreReport {
        store: store.to_owned(),
        loadavg_before,
        fsync_before_us: (round1(fsync.0), round1(fsync.1)),
        mix_to_livez: round3(mix.throughput / livez.throughput),
        half_load_p99_ratio: round3(open.mix.latency.p99_us / open.livez.latency.p99_us.max(0.1)),
        livez_cpu_to_bare: to_bare(&livez),
        mix_cpu_to_bare: to_bare(&mix),
        bare_livez: Some(bare_livez),
        livez,
        mix,
        half_load_mix: open.mix,
        half_load_livez: open.livez,
        redis_commands,
        redis_set,
        redis_keyspace,
        redis_baseline,
        redis_contention,
        dynamodb,
    })
}

/// The server under test and the store's own process, if it has one.
struct Rig {
    server: Server,
    /// The server's flags, for a second instance.
    args: Vec<String>,
    env: &'static [(&'static str, &'static str)],
    redis: Option<Redis>,
    dynamo: Option<DynamoLocal>,
    /// The server, then the store's process.
    watch: Vec<u32>,
}

/// What the warm-up leaves for the measured phases.
struct Warmed {
    /// Redis: which commands run inside scripts (`MONITOR`).
    sample: Option<redis::MonitorSample>,
    baseline: Option<Baseline>,
    /// DynamoDB Local: the JIT warm-up's seconds and last µs per decision.
    jit: Option<(f64, f64)>,
}

impl Rig {
    /// Starts the store's process (redis-server, or DynamoDB Local with its
    /// table), then the server on it; sqlite's data dir is under `dir`.
    fn start(ctx: &mut Ctx, store: &str, dir: &Path) -> Result<Rig, String> {
        let redis = if store == "redis" { Some(Redis::start(&ctx.commands)?) } else { None };
        let dynamo = if store == "dynamodb" { Some(dynamodb::start(ctx)?) } else { None };
        let env: &[(&str, &str)] = if dynamo.is_some() { &dynamo_harness::CLIENT_ENV } else { &[] };
        let data_dir = (store == "sqlite").then(|| dir.join("data"));
        let args = server_args_with(store, data_dir.as_deref(), redis.as_ref(), dynamo.as_ref(), &[]);
        let server = Server::start_with_env(&ctx.args.server, &args, env, Duration::from_secs(60), &ctx.commands)?;
        let mut rig = Rig { server, args, env, redis, dynamo, watch: Vec::new() };
        rig.watch = std::iter::once(rig.server.pid()).chain(rig.store_pid()).collect();
        Ok(rig)
    }

    /// The store's own process: redis-server, or DynamoDB Local's Java.
    fn store_pid(&self) -> Option<u32> {
        self.redis.as_ref().map(Redis::pid).or(self.dynamo.as_ref().map(DynamoLocal::pid))
    }

    /// Warms up connections, allocators, page cache, the Redis script
    /// cache; for DynamoDB Local, the JVM's JIT compiler, which needs
    /// longer. Starts the baseline, when there is one.
    fn warm_up(&self, ctx: &mut Ctx, bare: SocketAddr, bare_watch: &[u32]) -> Result<Warmed, String> {
        let (addr, watch) = (self.server.addr, &self.watch[..]);
        let warm = Duration::from_millis(if ctx.args.quick { 500 } else { 1500 });
        phase(ctx, "warm-up bare livez", bare, Work::Livez, Pace::Closed, warm, bare_watch)?;
        phase(ctx, "warm-up livez", addr, Work::Livez, Pace::Closed, warm, watch)?;
        // On Redis, under MONITOR: which commands run inside scripts.
        let warm_up_mix = |ctx: &mut Ctx| phase(ctx, "warm-up mix", addr, mix(ctx), Pace::Closed, warm, watch);
        let sample = match &self.redis {
            Some(r) => Some(redis::sample_while(ctx, r, warm_up_mix)?.1),
            None => {
                warm_up_mix(ctx)?;
                None
            }
        };
        let baseline = match (&self.redis, ctx.args.baseline_server.clone()) {
            (Some(_), Some(bin)) => Some(Baseline::start(ctx, bin, warm)?),
            _ => None,
        };
        let jit = match self.dynamo {
            Some(_) => Some(dynamodb::jit_warm_up(ctx, addr, watch)?),
            None => None,
        };
        Ok(Warmed { sample, baseline, jit })
    }
}

/// The closed-loop phases, and what the store counted during the mix.
struct Closed {
    bare_livez: Phase,
    livez: Phase,
    mix: Phase,
    /// DynamoDB: the lost races of the mix.
    conflicts: Option<Conflicts>,
    redis_commands: Option<crate::report::CommandCost>,
    redis_baseline: Option<RedisBaseline>,
}

/// The bare server's `/livez`, streamcap's `/livez` and the mix (and the
/// baseline's mix) in alternating rounds; stops the bare server.
fn closed_loop(
    ctx: &mut Ctx,
    rig: &Rig,
    (bare, bare_watch): (Server, &[u32]),
    baseline: Option<Baseline>,
    sample: Option<&redis::MonitorSample>,
) -> Result<Closed, String> {
    let (addr, watch) = (rig.server.addr, &rig.watch[..]);
    let (livez_d, mix_d) = (ctx.livez, ctx.mix);
    for r in rig.redis.iter().chain(baseline.as_ref().map(|b| &b.redis)) {
        r.cli(&["CONFIG", "RESETSTAT"])?;
    }
    // Only the mix reaches the store: the /livez windows between its
    // rounds change no counter.
    let conflicts_before = rig.dynamo.as_ref().map(|_| conflicts(&[addr])).transpose()?;
    let livez_work: MakeWork<'_> = &|_| Work::Livez;
    let closed = Pace::Closed;
    let mut specs = vec![
        Spec {
            name: "bare livez",
            addr: bare.addr,
            watch: bare_watch,
            work: livez_work,
            pace: closed,
            duration: livez_d,
        },
        Spec { name: "livez", addr, watch, work: livez_work, pace: closed, duration: livez_d },
        Spec { name: "mix", addr, watch, work: &mix, pace: closed, duration: mix_d },
    ];
    // The baseline's mix windows alternate with the current server's.
    if let Some(b) = &baseline {
        let (addr, watch) = (b.server.addr, &b.watch[..]);
        specs.push(Spec { name: "baseline mix", addr, watch, work: &mix, pace: closed, duration: mix_d });
    }
    let mut phases = interleaved(ctx, &specs)?.into_iter();
    let mut next = || phases.next().ok_or("a phase is missing");
    let (bare_livez, livez, mix_phase) = (next()?, next()?, next()?);
    let baseline_mix = if baseline.is_some() { Some(next()?) } else { None };
    bare.terminate(Duration::from_secs(60))?;
    let decisions = mix_phase.requests + mix_phase.drained;
    let conflicts = match conflicts_before {
        Some(before) => Some(Conflicts::new(conflicts(&[addr])?.saturating_sub(before), decisions)),
        None => None,
    };
    // /livez sends Redis nothing: what Redis counted is the mix's.
    let redis_commands = match (&rig.redis, sample) {
        (Some(r), Some(sample)) => Some(redis::read_cost(r, sample, decisions)?),
        _ => None,
    };
    let redis_baseline = match (baseline, baseline_mix) {
        (Some(b), Some(mix)) => Some(b.finish(ctx, mix)?),
        _ => None,
    };
    Ok(Closed { bare_livez, livez, mix: mix_phase, conflicts, redis_commands, redis_baseline })
}

/// The open-loop phases at half of the closed-loop mix's throughput.
struct Open {
    mix: Phase,
    livez: Phase,
    /// DynamoDB: the lost races of the mix.
    conflicts: Option<Conflicts>,
}

/// The mix and `/livez` at half of `peak`, alternating in rounds.
fn open_loop(ctx: &mut Ctx, rig: &Rig, peak: f64) -> Result<Open, String> {
    let (addr, watch, open_d) = (rig.server.addr, &rig.watch[..], ctx.open);
    let livez_work: MakeWork<'_> = &|_| Work::Livez;
    let half = Pace::Open(peak / 2.0);
    let conflicts_before = rig.dynamo.as_ref().map(|_| conflicts(&[addr])).transpose()?;
    let phases = interleaved(
        ctx,
        &[
            Spec { name: "half-load mix", addr, watch, work: &mix, pace: half, duration: open_d },
            Spec { name: "half-load livez", addr, watch, work: livez_work, pace: half, duration: open_d },
        ],
    )?;
    let [mix, livez] = <[Phase; 2]>::try_from(phases).map_err(|_| "expected two phases")?;
    let conflicts = match conflicts_before {
        Some(before) => Some(Conflicts::new(conflicts(&[addr])?.saturating_sub(before), mix.requests + mix.drained)),
        None => None,
    };
    Ok(Open { mix, livez, conflicts })
}

/// Concurrent acquires for one user over two instances, on the current
/// server and on the baseline, when asked for.
fn contention_run(ctx: &mut Ctx) -> Vec<crate::report::Contention> {
    if ctx.args.contention_rounds == 0 {
        return Vec::new();
    }
    eprintln!(
        "== redis: {} concurrent acquires for one user over {} instances, {} rounds",
        contention::CONCURRENT,
        contention::INSTANCES,
        ctx.args.contention_rounds
    );
    let (current, baseline, rounds) =
        (ctx.args.server.clone(), ctx.args.baseline_server.clone(), ctx.args.contention_rounds);
    let mut binaries = vec![("current", current.as_path())];
    binaries.extend(baseline.as_deref().map(|b| ("baseline", b)));
    contention::run(ctx, &binaries, rounds)
}

/// The baseline server on a redis-server of its own, warmed up like the
/// current one.
struct Baseline {
    bin: PathBuf,
    redis: Redis,
    server: Server,
    /// The baseline server, then its redis-server.
    watch: Vec<u32>,
    sample: redis::MonitorSample,
}

impl Baseline {
    fn start(ctx: &mut Ctx, bin: PathBuf, warm: Duration) -> Result<Baseline, String> {
        let redis = Redis::start(&ctx.commands)?;
        let args = server_args("redis", None, Some(&redis), &[]);
        let server = Server::start(&bin, &args, Duration::from_secs(60), &ctx.commands)?;
        let watch = vec![server.pid(), redis.pid()];
        let addr = server.addr;
        let warm_up = |ctx: &mut Ctx| phase(ctx, "warm-up baseline mix", addr, mix(ctx), Pace::Closed, warm, &watch);
        let (_, sample) = redis::sample_while(ctx, &redis, warm_up)?;
        Ok(Baseline { bin, redis, server, watch, sample })
    }

    /// Reads its commands after its `mix` windows and stops it.
    fn finish(self, ctx: &Ctx, mix: Phase) -> Result<RedisBaseline, String> {
        let commands = redis::read_cost(&self.redis, &self.sample, mix.requests + mix.drained)?;
        self.server.terminate(Duration::from_secs(60))?;
        let server_binary = self.bin.display().to_string();
        Ok(RedisBaseline {
            label: ctx.args.baseline_label.clone().unwrap_or_else(|| server_binary.clone()),
            server_binary,
            mix,
            commands: Some(commands),
        })
    }
}
