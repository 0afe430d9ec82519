use super::*;
use crate::report::samples;
use crate::summary;

fn met(t: &[Target], name: &str) -> Option<bool> {
    t.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no target {name:?}")).met
}

#[test]
fn targets_compare_cpu_with_the_bare_server_and_redis_with_a_set() {
    let all = ["memory", "sqlite", "redis"].map(String::from);
    let stores = [samples::store("memory", 11.0, 16.0), samples::store("sqlite", 11.0, 24.8), samples::redis_store()];
    let t = targets(&all, &stores, &[], &[], RedisAsked::default());
    // Bare: 8 µs. /livez 11 µs is 1.375 ×; redis's 12 µs is 1.5 ×.
    let livez = t.iter().find(|t| t.name.starts_with("streamcap /livez")).unwrap();
    assert_eq!(livez.met, Some(false));
    assert!(livez.measured.starts_with("memory 1.38 × (11.0 vs 8.0 µs); sqlite 1.38 ×"), "{}", livez.measured);
    assert_eq!(met(&t, "memory: mix CPU per request vs bare"), Some(true));
    assert_eq!(met(&t, "sqlite: durable mix CPU per request vs bare"), Some(false));
    assert_eq!(met(&t, "sqlite: durable mix throughput vs /livez"), Some(true));
    assert_eq!(met(&t, "redis: streamcap's mix CPU per request vs bare"), Some(true));
    // redis-server: 10 µs per decision against 5 µs per SET.
    let set = t.iter().find(|t| t.name == "redis: redis-server CPU per decision vs a SET").unwrap();
    assert_eq!((set.met, set.target.as_str()), (Some(false), "≤ 1.5 × SET"));
    assert_eq!(set.measured, "2.00 × (10.0 vs 5.0 µs, whole process from /proc)");
    let commands = t.iter().find(|t| t.name == "redis: commands per decision (INFO commandstats)").unwrap();
    assert!(commands.reported_only, "{}", commands.measured);
    assert_eq!(commands.measured, "evalsha 1.00 (inside scripts: hget 2.00, time 1.00); 12.00 µs inside Redis");
    // 14 vs 12 µs: 1.17 ×, flat.
    assert_eq!(met(&t, "redis: µs inside Redis per decision, 1,000,000 vs 10,000 users"), Some(true));
    assert!(!t.iter().any(|t| t.name.contains("EVALSHA")));
    // Neither a baseline nor the concurrent acquires were asked for.
    assert!(!t.iter().any(|t| t.name.contains("baseline") || t.name.contains("concurrent")));
}

#[test]
fn targets_set_the_current_redis_store_against_the_baseline() {
    let asked = RedisAsked { baseline: true, contention: true };
    let t = targets(&["redis".into()], &[samples::redis_store_with_baseline()], &[], &[], asked);
    let row = |name: &str| t.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no {name}"));
    let cpu = row("redis vs baseline v1.0 (abc): redis-server CPU per decision");
    assert_eq!((cpu.met, cpu.measured.as_str()), (Some(true), "0.25 × (10.0 vs 40.0 µs)"));
    let own = row("redis vs baseline v1.0 (abc): streamcap CPU per decision");
    assert_eq!((own.met, own.measured.as_str()), (Some(true), "1.05 × (20.0 vs 19.0 µs)"));
    let rate = row("redis vs baseline v1.0 (abc): Redis mix throughput");
    assert_eq!((rate.met, rate.measured.as_str()), (Some(true), "1.20 × (60,000 vs 50,000 req/s)"));
    let cluster = row("redis cluster: 64 concurrent acquires for one user over 2 instances");
    assert_eq!(cluster.met, Some(true));
    assert_eq!(cluster.measured, "2 rounds: 6 granted (per round: 3, 3), 122 × 409, 0 × 503, 0 other; 1 retries");
    assert_eq!(met(&t, "redis standalone: 64 concurrent acquires for one user over 2 instances"), Some(true));
    // Asked for, but the baseline and the acquires failed: not measured.
    let t = targets(&["redis".into()], &[samples::redis_store()], &[], &[], asked);
    assert_eq!(met(&t, "redis vs baseline: redis-server CPU per decision"), None);
    assert_eq!(met(&t, "redis standalone: 64 concurrent acquires for one user over 2 instances"), None);
    // Cheaper than the baseline meets it; more than 20 % dearer does not.
    let mut s = samples::redis_store_with_baseline();
    s.mix.cpu.server_us_per_request = 10.0;
    let t = targets(&["redis".into()], &[s], &[], &[], asked);
    assert_eq!(met(&t, "redis vs baseline v1.0 (abc): streamcap CPU per decision"), Some(true));
    let mut s = samples::redis_store_with_baseline();
    s.mix.cpu.server_us_per_request = 23.0;
    let t = targets(&["redis".into()], &[s], &[], &[], asked);
    assert_eq!(met(&t, "redis vs baseline v1.0 (abc): streamcap CPU per decision"), Some(false));
}

#[test]
fn dynamodb_is_reported_without_a_target() {
    let asked = ["memory", "dynamodb"].map(String::from);
    let stores = [samples::store("memory", 10.0, 15.0), samples::dynamodb_store()];
    let t = targets(&asked, &stores, &[], &[], RedisAsked::default());
    let row = t.iter().find(|t| t.name.starts_with("dynamodb on DynamoDB Local")).unwrap();
    assert!(row.reported_only && row.met.is_none(), "{}", row.measured);
    assert_eq!(row.target, "no target (DynamoDB Local is not AWS)");
    assert_eq!(
        row.measured,
        "60,000 req/s (0.75 × /livez), p99 2,000 µs (at half of peak: 2,000 µs, 4.50 × /livez p99); 0.00 lost \
         races per 1,000 decisions (0.50 with two instances); CPU per decision: streamcap 40.0 µs (5.00 × bare \
         /livez), DynamoDB Local 300.0 µs"
    );
    // In no target: not in the /livez one, no p99 one.
    assert_eq!(met(&t, "streamcap /livez CPU per request vs bare, every store"), Some(true));
    assert!(!t.iter().any(|t| t.name.starts_with("dynamodb:")), "{:?}", t.iter().map(|t| &t.name).collect::<Vec<_>>());
    let mut report = samples::report(Vec::new());
    report.targets = t;
    assert!(summary(&report).contains("reported"));
    // Asked for but failed: not measured.
    let t = targets(&asked, &stores[..1], &[], &[], RedisAsked::default());
    let row = t.iter().find(|t| t.name.starts_with("dynamodb on DynamoDB Local")).unwrap();
    assert!(!row.reported_only && row.met.is_none() && row.measured == "–");
    // dynamodb alone: its row and nothing else.
    let t = targets(&["dynamodb".into()], &stores[1..], &[], &[], RedisAsked::default());
    assert_eq!(t.len(), 1, "{:?}", t.iter().map(|t| &t.name).collect::<Vec<_>>());
}

#[test]
fn a_store_asked_for_but_not_measured_is_listed_as_such() {
    let asked = ["memory", "redis"].map(String::from);
    let t = targets(&asked, &[samples::store("memory", 10.0, 15.0)], &[], &[], RedisAsked::default());
    assert_eq!(met(&t, "streamcap /livez CPU per request vs bare, every store"), None);
    assert_eq!(met(&t, "redis: streamcap's mix CPU per request vs bare"), None);
    assert_eq!(met(&t, "redis: redis-server CPU per decision vs a SET"), None);
    assert!(!t.iter().any(|t| t.name.starts_with("sqlite")));
}
