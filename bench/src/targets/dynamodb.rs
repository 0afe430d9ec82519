//! The dynamodb store's row: its figures without a target, since
//! DynamoDB Local is not AWS.

use crate::report::{Conflicts, StoreReport, Target, int};

/// The dynamodb store's figures, reported without a target: DynamoDB
/// Local is not AWS.
pub fn dynamodb_row(s: Option<&StoreReport>) -> Target {
    let name = "dynamodb on DynamoDB Local: mix throughput, p99, lost races, CPU per decision";
    let measured = s.and_then(|s| {
        let d = s.dynamodb.as_ref()?;
        let per_1k = |c: &Conflicts| c.per_1k_decisions.map_or("–".to_owned(), |r| format!("{r:.2}"));
        let mut text = format!(
            "{} req/s ({:.2} × /livez), p99 {} µs (at half of peak: {} µs, {:.2} × /livez p99); {} lost races \
             per 1,000 decisions",
            int(s.mix.throughput),
            s.mix_to_livez,
            int(s.mix.latency.p99_us),
            int(s.half_load_mix.latency.p99_us),
            s.half_load_p99_ratio,
            per_1k(&d.mix_conflicts)
        );
        if let Some(two) = &d.two_instances {
            text += &format!(" ({} with two instances)", per_1k(&two.conflicts));
        }
        text += &format!(
            "; CPU per decision: streamcap {:.1} µs ({:.2} × bare /livez), DynamoDB Local {:.1} µs",
            s.mix.cpu.server_us_per_request,
            s.mix_cpu_to_bare.unwrap_or(0.0),
            s.mix.cpu.store_us_per_request.unwrap_or(0.0)
        );
        Some(text)
    });
    Target {
        name: name.into(),
        target: "no target (DynamoDB Local is not AWS)".into(),
        measured: measured.unwrap_or_else(|| "–".into()),
        met: None,
        reported_only: s.is_some_and(|s| s.dynamodb.is_some()),
    }
}
