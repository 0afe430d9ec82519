//! Races for one user across two instances that share a store (Redis,
//! DynamoDB): the store alone must keep the user atomic, since neither
//! instance knows what the other decided.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::Reply;

/// The configuration both instances run with: a limit of 3, and a plan
/// `evictor` with a limit of 2 that evicts the oldest stream.
pub const CONFIG: &str =
    "[limits]\ndefault = 3\nplans = { evictor = 2 }\n[limits.on_limit_by_plan]\nevictor = \"evict_oldest\"\n";

async fn put(url: String, body: Value) -> Reply {
    Reply::from(reqwest::Client::new().put(url).json(&body).send().await.unwrap()).await
}

async fn get(url: String) -> Reply {
    Reply::from(reqwest::Client::new().get(url).send().await.unwrap()).await
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|l| l["stream_id"].as_str().unwrap().to_owned()).collect()).unwrap_or_default()
}

/// 64 concurrent acquires for one user, alternating between the instances
/// at `a` and `b` (base URLs): exactly 3 are granted, and both instances
/// then list the same 3 streams.
pub async fn acquires_grant_exactly_the_limit(a: &str, b: &str) {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..64 {
        let url = if i % 2 == 0 { a } else { b }.to_owned();
        set.spawn(async move { put(format!("{url}/v1/users/racer/streams/s{i}"), json!({})).await });
    }
    let mut statuses = Vec::new();
    while let Some(r) = set.join_next().await {
        let r = r.unwrap();
        if r.status == 409 {
            r.assert_problem(409, "stream-limit-reached");
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 201).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 409).count(), 61, "{statuses:?}");
    for base in [a, b] {
        let list = get(format!("{base}/v1/users/racer/streams")).await.json();
        assert_eq!(ids(&list["active_streams"]).len(), 3, "both instances see the same state");
    }
}

/// 64 concurrent evict-oldest and take-over acquires for one user across
/// the two instances keep the limit, and every grant is accounted for:
/// each granted stream is either still live or was evicted, once.
pub async fn evictions_keep_the_limit(a: &str, b: &str) {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..64 {
        let url = if i % 2 == 0 { a } else { b }.to_owned();
        let body = if i % 3 == 0 {
            json!({"plan": "evictor", "evict": [format!("e{}", i - 1), format!("e{}", i + 1)]})
        } else {
            json!({"plan": "evictor"})
        };
        set.spawn(async move { put(format!("{url}/v1/users/crowd/streams/e{i}"), body).await });
    }
    let (mut granted, mut evicted) = (BTreeSet::new(), BTreeSet::new());
    while let Some(r) = set.join_next().await {
        let r = r.unwrap();
        match r.status {
            201 => {
                let body = r.json();
                assert!(body["active_streams"].as_u64().unwrap() <= 2, "{body}");
                granted.insert(body["stream_id"].as_str().unwrap().to_owned());
                for e in ids(&body["evicted"]) {
                    assert!(evicted.insert(e), "evicted twice");
                }
            }
            409 => {
                r.assert_problem(409, "stream-limit-reached");
            }
            other => panic!("{other}: {r:?}"),
        }
    }
    let list = get(format!("{a}/v1/users/crowd/streams")).await.json();
    let live: BTreeSet<String> = ids(&list["active_streams"]).into_iter().collect();
    assert!(live.len() <= 2, "{live:?}");
    assert_eq!(live.union(&evicted).cloned().collect::<BTreeSet<_>>(), granted);
    assert!(live.is_disjoint(&evicted));
}
