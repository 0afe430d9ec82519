//! The dynamodb store on DynamoDB Local: the table, made as an operator
//! would; the JVM's warm-up; and the mix over two instances on the table.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::load::Pace;
use crate::measure::{finish, measure_on, mix, phase, servers_as_one};
use crate::probe::conflicts;
use crate::procs::{self, DynamoLocal, Server};
use crate::report::{Conflicts, DynamoReport, TwoInstances, round1};
use crate::{Ctx, dynamo_harness, host};

/// The table the dynamodb store uses in DynamoDB Local.
pub const DYNAMODB_TABLE: &str = "streamcap-bench";

/// The server under test on DynamoDB Local, with its flags and
/// environment, for a second instance.
pub struct Rig<'a> {
    pub local: &'a DynamoLocal,
    pub server: &'a Server,
    pub args: &'a [String],
    pub env: &'a [(&'a str, &'a str)],
}

/// The dynamodb store's report: the lost races of the closed-loop and
/// the half-load mix (`[mix, half_load]`), the mix over two instances,
/// and the JIT warm-up's seconds and last µs per decision.
pub fn report(ctx: &mut Ctx, rig: Rig<'_>, [mix, half_load]: [Conflicts; 2], jit: (f64, f64)) -> DynamoReport {
    eprintln!(
        "   lost races per 1,000 decisions: {} closed loop, {} at half load",
        mix.per_1k_decisions.unwrap_or(0.0),
        half_load.per_1k_decisions.unwrap_or(0.0)
    );
    let two_instances = two_instances(ctx, rig.local, rig.server, rig.args, rig.env)
        .map_err(|e| ctx.failures.push(format!("dynamodb, two instances: {e}")))
        .ok();
    DynamoReport {
        dynamodb_local: rig.local.version.clone(),
        java: host::java_version(),
        table: DYNAMODB_TABLE.into(),
        jit_warm_up_seconds: jit.0,
        jit_warm_up_last_us_per_decision: jit.1,
        mix_conflicts: mix,
        half_load_conflicts: half_load,
        two_instances,
    }
}

/// DynamoDB Local's JIT warm-up: windows of the mix until its CPU per
/// decision stops falling.
const JIT_WINDOW: Duration = Duration::from_secs(2);

const JIT_MAX_WINDOWS: usize = 30;

/// Runs the mix in 2-s windows until DynamoDB Local's CPU per decision
/// has settled: the mean of the last three windows within 5 % of the mean
/// of the three before (so at least 12 s; at most 60 s). The JVM compiles
/// its hot code over tens of seconds of load, and until it has, DynamoDB
/// Local's cost per decision falls by more than half. Returns the
/// warm-up's seconds and its last window's µs per decision.
pub fn jit_warm_up(ctx: &mut Ctx, addr: SocketAddr, watch: &[u32]) -> Result<(f64, f64), String> {
    let started = Instant::now();
    let mut costs: Vec<f64> = Vec::new();
    for i in 0..JIT_MAX_WINDOWS {
        let p = phase(ctx, &format!("warm-up DynamoDB Local {i}"), addr, mix(ctx), Pace::Closed, JIT_WINDOW, watch)?;
        let cost = p.cpu.store_us_per_request.unwrap_or(0.0);
        eprintln!("      DynamoDB Local {cost:.0} µs per decision");
        costs.push(cost);
        if settled(&costs) {
            break;
        }
    }
    Ok((round1(started.elapsed().as_secs_f64()), costs.last().copied().unwrap_or(0.0)))
}

/// Whether the mean of the last three costs is within 5 % of the mean of
/// the three before.
fn settled(costs: &[f64]) -> bool {
    let [.., a, b, c, d, e, f] = costs else { return false };
    let (before, last) = ((a + b + c) / 3.0, (d + e + f) / 3.0);
    last >= before * 0.95
}

/// Starts DynamoDB Local and makes the table with `streamcap dynamodb
/// create-table`, as an operator would.
pub fn start(ctx: &mut Ctx) -> Result<DynamoLocal, String> {
    let local = DynamoLocal::start(&ctx.commands)?;
    let args: Vec<String> = ["dynamodb", "create-table", "--dynamodb-table", DYNAMODB_TABLE, "--dynamodb-endpoint"]
        .iter()
        .map(|s| s.to_string())
        .chain([local.endpoint()])
        .collect();
    let env = dynamo_harness::CLIENT_ENV;
    ctx.commands.record(&procs::with_env(&env, &ctx.args.server.display().to_string()), &args);
    let out = procs::run_bounded_with_env(&ctx.args.server, &args, &env, Duration::from_secs(60))
        .map_err(|e| format!("streamcap dynamodb create-table: {e}"))?;
    eprintln!("   {} on port {}: {}", local.version, local.port, out.trim().replace('\n', "; "));
    Ok(local)
}

/// The closed-loop mix over two instances on the table: `first` (already
/// warm) and a second one started with the same `args`; the connections
/// alternate between them.
fn two_instances(
    ctx: &mut Ctx,
    dynamo: &DynamoLocal,
    first: &Server,
    args: &[String],
    env: &[(&str, &str)],
) -> Result<TwoInstances, String> {
    eprintln!("== dynamodb: the mix over two instances on one table");
    let second = Server::start_with_env(&ctx.args.server, args, env, Duration::from_secs(60), &ctx.commands)?;
    let addrs = [first.addr, second.addr];
    // Both instances count as "the server"; DynamoDB Local is the store.
    let watch = [first.pid(), second.pid(), dynamo.pid()];
    let warm = Duration::from_millis(if ctx.args.quick { 500 } else { 1500 });
    let out = measure_on(ctx, "warmuptwo", &addrs, mix(ctx), Pace::Closed, warm, &watch)?;
    finish(ctx, "warm-up mix, two instances", Pace::Closed, &servers_as_one(out, 2))?;
    let before = conflicts(&addrs)?;
    let window = ctx.mix;
    let out = measure_on(ctx, "mixtwo", &addrs, mix(ctx), Pace::Closed, window, &watch)?;
    let mix = finish(ctx, "mix, two instances", Pace::Closed, &servers_as_one(out, 2))?;
    let conflicts = Conflicts::new(conflicts(&addrs)?.saturating_sub(before), mix.requests + mix.drained);
    eprintln!("   lost races per 1,000 decisions: {}", conflicts.per_1k_decisions.unwrap_or(0.0));
    second.terminate(Duration::from_secs(60))?;
    Ok(TwoInstances { mix, conflicts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jit_warm_up_ends_when_the_cost_stops_falling() {
        assert!(!settled(&[900.0, 800.0, 700.0, 600.0, 500.0]));
        assert!(!settled(&[900.0, 800.0, 700.0, 600.0, 500.0, 450.0]));
        assert!(!settled(&[600.0, 500.0, 450.0, 460.0, 440.0, 470.0]), "still 12 % down");
        assert!(settled(&[500.0, 450.0, 460.0, 440.0, 470.0, 455.0]));
        // Noise upwards counts as settled too.
        assert!(settled(&[1.0, 400.0, 400.0, 400.0, 500.0, 500.0, 500.0]));
    }
}
