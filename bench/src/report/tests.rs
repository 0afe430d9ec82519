use super::*;
use crate::report::samples;

#[test]
fn concurrent_acquires_must_grant_exactly_the_limit() {
    let s = samples::redis_store_with_baseline();
    let c = &s.redis_contention[1];
    assert!(c.grants_equal_limit());
    assert_eq!(c.total(), ContentionRound { granted: 6, denied_409: 122, unavailable_503: 0, other: 0, retries: 1 });
    assert_eq!(c.describe(), "6 granted (per round: 3, 3), 122 × 409, 0 × 503, 0 other; 1 retries");
    let mut over = c.clone();
    over.rounds[0].granted = 4;
    assert!(!over.grants_equal_limit());
    over.rounds.clear();
    assert!(!over.grants_equal_limit(), "no round is no evidence");
}

#[test]
fn summarises_the_commands_of_a_decision() {
    assert_eq!(samples::cost(10, 100).summary(), "evalsha 1.00 (inside scripts: hget 2.00, time 1.00)");
    let mut c = samples::cost(10, 100);
    c.commands[2].inside_scripts = 0.5;
    assert_eq!(c.summary(), "evalsha 1.00 + time 0.50 (inside scripts: hget 2.00, time 0.50)");
    assert_eq!(CommandCost::default().summary(), "–");
}

#[test]
fn reads_the_script_cost_of_older_runs_as_their_commands() {
    // The shape runs recorded before every command was counted had:
    // the script commands' calls and µs only.
    let old = r#"{"calls": 100, "usec": 800, "failed_calls": 1, "decisions": 100, "usec_per_decision": 8.0,
                  "calls_per_decision": 1.0, "keys": 5}"#;
    let c: CommandCost = serde_json::from_str(old).unwrap();
    assert_eq!((c.decisions, c.usec, c.usec_per_decision, c.keys), (100, 800, Some(8.0), Some(5)));
    assert!(c.commands.is_empty() && c.sent_per_decision.is_none());
    let mut json = serde_json::to_value(samples::redis_store()).unwrap();
    let store = json.as_object_mut().unwrap();
    let commands = store.remove("redis_commands").unwrap();
    store.insert("redis_decision".into(), commands);
    for field in ["redis_baseline", "redis_contention"] {
        assert!(store.remove(field).is_some(), "{field}");
    }
    let point = &mut store["redis_keyspace"]["points"][0];
    let commands = point.as_object_mut().unwrap().remove("commands").unwrap();
    point.as_object_mut().unwrap().insert("cost".into(), commands);
    let s: StoreReport = serde_json::from_value(json).unwrap();
    assert_eq!(s.redis_commands.unwrap().usec_per_decision, Some(12.0));
    assert_eq!(s.redis_keyspace.unwrap().points[0].commands.usec_per_decision, Some(12.0));
    assert!(s.redis_baseline.is_none() && s.redis_contention.is_empty());
}

#[test]
fn counts_lost_races_per_thousand_decisions() {
    assert_eq!(Conflicts::new(3, 2_000).per_1k_decisions, Some(1.5));
    assert_eq!(Conflicts::new(0, 2_000).per_1k_decisions, Some(0.0));
    assert_eq!(Conflicts::new(0, 0).per_1k_decisions, None);
}

#[test]
fn reads_the_store_process_cpu_of_older_runs() {
    let mut json = serde_json::to_value(samples::phase("mix", 10, 5.0, Some(7.0)).cpu).unwrap();
    let cpu = json.as_object_mut().unwrap();
    let cores = cpu.remove("store_cores").unwrap();
    let per_request = cpu.remove("store_us_per_request").unwrap();
    cpu.insert("redis_cores".into(), cores);
    cpu.insert("redis_us_per_request".into(), per_request);
    let old: Cpu = serde_json::from_value(json).unwrap();
    assert_eq!((old.store_cores, old.store_us_per_request), (Some(0.0), Some(7.0)));
}

#[test]
fn thousands() {
    assert_eq!(int(0.0), "0");
    assert_eq!(int(999.4), "999");
    assert_eq!(int(1234567.0), "1,234,567");
    assert_eq!(int(-1000.0), "-1,000");
}
