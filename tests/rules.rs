//! Rules end to end: the real binary, configured by a TOML file, over real
//! HTTP and WebSockets, on every store. The four examples of
//! docs/policies.md (TVs, live events, one screen per title, downloads),
//! the 409's fields, `evict_oldest` and take-over with scopes, shadow
//! mode, plan rule sets, renewals that change a stream's traits, races of
//! concurrent acquires, and a config refused at start.
//!
//! Every scenario runs once per store, as its own test (`memory::tv_rule`,
//! `redis::tv_rule`, ...), so that a failure names the store.

mod common;

use std::process::Command;

use common::{Process, Reply, STORES, binary, redis::RedisServer, run_to_exit};
use futures_util::StreamExt;
use serde_json::{Value, json};
use streamcap::store::StoreKind;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

/// The binary serving `toml` on `kind`, with the rate limits off (the
/// races send many requests for one user at once).
struct Served {
    process: Process,
    client: reqwest::Client,
    _redis: Option<RedisServer>,
    _dir: tempfile::TempDir,
}

fn serve(kind: StoreKind, toml: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("streamcap.toml");
    std::fs::write(&config, toml).unwrap();
    let mut cmd = binary();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--store", kind.name(), "--config", config.to_str().unwrap()]);
    cmd.args(["--user-rate-limit", "0", "--credential-rate-limit", "0"]);
    let mut redis = None;
    match kind {
        StoreKind::Sqlite => {
            cmd.args(["--data-dir", dir.path().join("data").to_str().unwrap()]);
        }
        StoreKind::Redis => {
            let server = RedisServer::start(&[]);
            cmd.args(["--redis-url", &server.url()]);
            redis = Some(server);
        }
        StoreKind::Dynamodb => dynamodb_table(&mut cmd),
        StoreKind::Memory => {}
    }
    let process = Process::start_cmd(&mut cmd);
    Served { process, client: reqwest::Client::new(), _redis: redis, _dir: dir }
}

/// A new table on the test binary's DynamoDB Local, made by `streamcap
/// dynamodb create-table`, for `cmd` to serve.
#[cfg(feature = "dynamodb")]
fn dynamodb_table(cmd: &mut Command) {
    use common::dynamodb::{CLIENT_ENV, DynamoLocal, table_name};
    let endpoint = DynamoLocal::shared().endpoint();
    let table = table_name("rules");
    let out = binary()
        .envs(CLIENT_ENV)
        .args(["dynamodb", "create-table", "--dynamodb-table", &table, "--dynamodb-endpoint", &endpoint])
        .output()
        .unwrap();
    assert!(out.status.success(), "create-table: {}", String::from_utf8_lossy(&out.stderr));
    cmd.envs(CLIENT_ENV).args(["--dynamodb-table", &table, "--dynamodb-endpoint", &endpoint]);
}

#[cfg(not(feature = "dynamodb"))]
fn dynamodb_table(_: &mut Command) {
    unreachable!("STORES has no dynamodb without the feature")
}

impl Served {
    fn url(&self, path: &str) -> String {
        self.process.url(path)
    }

    async fn put(&self, user: &str, stream: &str, body: Value) -> Reply {
        let url = self.url(&format!("/v1/users/{user}/streams/{stream}"));
        Reply::from(self.client.put(url).json(&body).send().await.unwrap()).await
    }

    /// A `PUT` that must grant (201) or renew (200); its body.
    async fn granted(&self, user: &str, stream: &str, body: Value) -> Value {
        let r = self.put(user, stream, body).await;
        assert!(r.status == 201 || r.status == 200, "{user}/{stream}: {r:?}");
        r.json()
    }

    /// A `PUT` that must be refused with 409; the problem.
    async fn refused(&self, user: &str, stream: &str, body: Value) -> Value {
        self.put(user, stream, body).await.assert_problem(409, "stream-limit-reached")
    }

    /// The user's live streams, oldest first, as listed.
    async fn list(&self, user: &str) -> Vec<Value> {
        let url = self.url(&format!("/v1/users/{user}/streams"));
        let r = Reply::from(self.client.get(url).send().await.unwrap()).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["active_streams"].as_array().unwrap().clone()
    }

    async fn live(&self, user: &str) -> Vec<String> {
        ids(&Value::Array(self.list(user).await))
    }
}

fn ids(list: &Value) -> Vec<String> {
    let list = list.as_array().unwrap_or_else(|| panic!("not a list: {list}"));
    list.iter().map(|l| l["stream_id"].as_str().unwrap().to_owned()).collect()
}

const TV: &str = "[limits]\ndefault = 4\n\n[[limits.rules]]\nname = \"tv\"\ndevice_class = \"tv\"\nlimit = 2\n";

/// "4 streams, but at most 2 on TVs": the third TV is refused by the rule,
/// with the TVs listed; other devices fill the total, and the fifth
/// stream is refused by the total with exactly the body of a refusal
/// without rules.
async fn tv_rule(kind: StoreKind) {
    let s = serve(kind, TV);
    let tv = json!({"device_class": "tv", "device_id": "living-room"});
    let first = s.granted("u", "tv-1", tv.clone()).await;
    assert_eq!((first["device_class"].as_str(), first["device_id"].as_str()), (Some("tv"), Some("living-room")));
    assert!(first.get("content_kind").is_none(), "absent traits are omitted: {first}");
    assert!(first.get("rule").is_none() && first.get("would_deny").is_none(), "{first}");
    s.granted("u", "tv-2", json!({"device_class": "tv"})).await;

    let p = s.refused("u", "tv-3", tv.clone()).await;
    assert_eq!((p["rule"].as_str(), p["rule_limit"].as_u64(), p["limit"].as_u64()), (Some("tv"), Some(2), Some(4)));
    assert_eq!(ids(&p["active_streams"]), ["tv-1", "tv-2"]);
    assert_eq!(p["active_streams"][0]["device_class"], "tv");
    assert_eq!(
        p["detail"],
        "user u already has 2 of 2 streams active under rule \"tv\"; stop one of them to start another"
    );

    for phone in ["phone-1", "phone-2"] {
        s.granted("u", phone, json!({"device_class": "phone"})).await;
    }
    let p = s.refused("u", "phone-3", json!({"device_class": "phone"})).await;
    assert!(p.get("rule").is_none() && p.get("rule_limit").is_none(), "the total refused: {p}");
    let keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["active_streams", "detail", "limit", "status", "title", "type"]);
    assert_eq!(p["detail"], "user u already has 4 of 4 streams active; stop one to start another");
    // Refusals changed nothing; the listing shows each stream's traits.
    let list = s.list("u").await;
    assert_eq!(ids(&Value::Array(list.clone())), ["tv-1", "tv-2", "phone-1", "phone-2"]);
    let classes: Vec<&str> = list.iter().map(|l| l["device_class"].as_str().unwrap()).collect();
    assert_eq!(classes, ["tv", "tv", "phone", "phone"]);
    // A renewal keeps the traits when it names none.
    let renewed = s.granted("u", "tv-1", json!({})).await;
    assert_eq!(renewed["device_class"], "tv");
    // Another user has seats of their own.
    s.granted("v", "tv-1", tv).await;
}

const LIVE: &str =
    "[limits]\ndefault = 3\n\n[[limits.rules]]\nname = \"one-live-event\"\ncontent_kind = \"live\"\nlimit = 1\n";

/// "1 live event at a time, VOD unaffected".
async fn live_rule(kind: StoreKind) {
    let s = serve(kind, LIVE);
    let live = json!({"content_kind": "live", "content_id": "final"});
    s.granted("u", "match", live.clone()).await;
    let p = s.refused("u", "match-2", json!({"content_kind": "live", "content_id": "semi"})).await;
    assert_eq!((p["rule"].as_str(), p["rule_limit"].as_u64()), (Some("one-live-event"), Some(1)));
    assert_eq!(ids(&p["active_streams"]), ["match"]);
    assert_eq!(p["active_streams"][0]["content_kind"], "live");
    s.granted("u", "movie", json!({"content_kind": "vod"})).await;
    s.granted("u", "series", json!({"content_kind": "vod"})).await;
    // The total (3) is full now; it, not the rule, refuses more VOD.
    let p = s.refused("u", "film", json!({"content_kind": "vod"})).await;
    assert!(p.get("rule").is_none(), "{p}");
    // Once the live event stops, another may start.
    let url = s.url("/v1/users/u/streams/match");
    assert_eq!(s.client.delete(url).send().await.unwrap().status(), 204);
    s.granted("u", "match-2", live).await;
}

const TITLE: &str =
    "[limits]\ndefault = 4\n\n[[limits.rules]]\nname = \"one-per-title\"\nper = \"content_id\"\nlimit = 1\n";

/// "The same title on at most 1 screen": per title; streams without a
/// content id are outside the rule; a renewal that moves a stream onto a
/// title already playing is the same 409 and leaves it as it was.
async fn title_rule(kind: StoreKind) {
    let s = serve(kind, TITLE);
    s.granted("u", "a", json!({"content_id": "movie-42", "device_id": "tv"})).await;
    let p = s.refused("u", "b", json!({"content_id": "movie-42"})).await;
    assert_eq!((p["rule"].as_str(), p["rule_limit"].as_u64()), (Some("one-per-title"), Some(1)));
    assert_eq!(ids(&p["active_streams"]), ["a"]);
    s.granted("u", "b", json!({"content_id": "movie-7"})).await;
    s.granted("u", "c", json!({})).await;
    s.granted("u", "d", json!({})).await;

    let p = s.refused("u", "b", json!({"content_id": "movie-42"})).await;
    assert_eq!((p["rule"].as_str(), ids(&p["active_streams"])), (Some("one-per-title"), vec!["a".to_owned()]));
    let b = s.list("u").await.into_iter().find(|l| l["stream_id"] == "b").unwrap();
    assert_eq!(b["content_id"], "movie-7", "the refused renewal left the lease as it was");
    // Renewing on its own title is fine.
    assert_eq!(s.put("u", "b", json!({"content_id": "movie-7"})).await.status, 200);
}

const DOWNLOADS: &str = "[limits]\ndefault = 2\n\n[[limits.rules]]\nname = \"downloads\"\n\
                         content_kind = \"download\"\nlimit = 3\nexempt = true\n";

/// "Downloads don't count": they fill their own rule, not the total, and
/// a refusal by the total lists only the streams that count toward it.
async fn exempt_rule(kind: StoreKind) {
    let s = serve(kind, DOWNLOADS);
    s.granted("u", "watch-1", json!({})).await;
    for d in ["dl-1", "dl-2", "dl-3"] {
        let body = s.granted("u", d, json!({"content_kind": "download"})).await;
        assert_eq!(body["limit"], 2);
    }
    s.granted("u", "watch-2", json!({})).await;
    let p = s.refused("u", "watch-3", json!({})).await;
    assert!(p.get("rule").is_none(), "{p}");
    assert_eq!(ids(&p["active_streams"]), ["watch-1", "watch-2"], "only the streams that count");
    assert_eq!(p["detail"], "user u already has 2 of 2 streams active; stop one to start another");
    let p = s.refused("u", "dl-4", json!({"content_kind": "download"})).await;
    assert_eq!((p["rule"].as_str(), p["rule_limit"].as_u64()), (Some("downloads"), Some(3)));
    assert_eq!(ids(&p["active_streams"]), ["dl-1", "dl-2", "dl-3"]);
    assert_eq!(s.live("u").await.len(), 5);
}

/// `evict_oldest` evicts the oldest stream of the full rule's scope, not
/// the user's oldest stream; that stream then answers 410.
async fn evict_oldest_in_scope(kind: StoreKind) {
    let s = serve(kind, &TV.replace("default = 4\n", "default = 4\non_limit = \"evict_oldest\"\n"));
    s.granted("u", "phone-1", json!({"device_class": "phone"})).await;
    s.granted("u", "tv-1", json!({"device_class": "tv"})).await;
    s.granted("u", "tv-2", json!({"device_class": "tv"})).await;
    let r = s.put("u", "tv-3", json!({"device_class": "tv"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let body = r.json();
    assert_eq!(ids(&body["evicted"]), ["tv-1"]);
    assert_eq!(body["evicted"][0]["device_class"], "tv");
    assert_eq!(s.live("u").await, ["phone-1", "tv-2", "tv-3"]);
    let p = s.put("u", "tv-1", json!({"device_class": "tv"})).await.assert_problem(410, "stream-revoked");
    assert_eq!(p["by_stream_id"], "tv-3");
}

/// Take-over must free a seat in every full scope: naming a phone frees
/// the total but not the TV rule, so a new TV is refused by the rule and
/// nothing changes; naming a TV and a phone frees both.
async fn take_over_frees_every_full_scope(kind: StoreKind) {
    let s = serve(kind, &TV.replace("default = 4", "default = 3"));
    s.granted("u", "tv-1", json!({"device_class": "tv"})).await;
    s.granted("u", "tv-2", json!({"device_class": "tv"})).await;
    s.granted("u", "phone-1", json!({"device_class": "phone"})).await;

    let p = s.refused("u", "tv-3", json!({"device_class": "tv", "evict": ["phone-1"]})).await;
    assert_eq!((p["rule"].as_str(), ids(&p["active_streams"])), (Some("tv"), vec!["tv-1".to_owned(), "tv-2".into()]));
    assert_eq!(s.live("u").await, ["tv-1", "tv-2", "phone-1"], "a refused take-over evicts nobody");

    let r = s.put("u", "tv-3", json!({"device_class": "tv", "evict": ["tv-1"]})).await;
    assert_eq!((r.status, ids(&r.json()["evicted"])), (201, vec!["tv-1".to_owned()]), "{r:?}");
    let r = s.put("u", "tv-4", json!({"device_class": "tv", "evict": ["tv-2", "phone-1"]})).await;
    assert_eq!((r.status, ids(&r.json()["evicted"])), (201, vec!["tv-2".to_owned(), "phone-1".into()]), "{r:?}");
    assert_eq!(s.live("u").await, ["tv-3", "tv-4"]);
}

/// Shadow mode grants everything and names the rule that would have
/// refused; a stream the total would have refused names none.
async fn shadow_names_the_rule(kind: StoreKind) {
    let s = serve(kind, &TV.replace("default = 4\n", "default = 4\nenforce = false\n"));
    s.granted("u", "tv-1", json!({"device_class": "tv"})).await;
    s.granted("u", "tv-2", json!({"device_class": "tv"})).await;
    let r = s.put("u", "tv-3", json!({"device_class": "tv"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let body = r.json();
    assert_eq!((body["enforced"].as_bool(), body["would_deny"].as_bool()), (Some(false), Some(true)));
    assert_eq!((body["rule"].as_str(), body["rule_limit"].as_u64()), (Some("tv"), Some(2)));
    s.granted("u", "phone-1", json!({})).await;
    let body = s.granted("u", "phone-2", json!({})).await;
    assert_eq!(body["would_deny"], true, "five streams on a total of 4: {body}");
    assert!(body.get("rule").is_none() && body.get("rule_limit").is_none(), "{body}");
    let body = s.granted("v", "phone-1", json!({})).await;
    assert_eq!(body["would_deny"], false);
    assert!(body.get("rule").is_none(), "{body}");
}

const PLANS: &str = "[limits]\ndefault = 4\nplans = { basic = 2, premium = 6 }\n\n\
                     [[limits.rules]]\nname = \"tv\"\ndevice_class = \"tv\"\nlimit = 1\n\n\
                     [limits.plan_rules]\nbasic = []\n\n\
                     [[limits.plan_rules.premium]]\nname = \"tv\"\ndevice_class = \"tv\"\nlimit = 3\n";

/// A plan's own set replaces the default set; an empty one means no rules.
async fn plan_rules_replace_the_default_set(kind: StoreKind) {
    let s = serve(kind, PLANS);
    let tv = |plan: Option<&str>| match plan {
        Some(plan) => json!({"device_class": "tv", "plan": plan}),
        None => json!({"device_class": "tv"}),
    };
    s.granted("d", "tv-1", tv(None)).await;
    let p = s.refused("d", "tv-2", tv(None)).await;
    assert_eq!((p["rule"].as_str(), p["rule_limit"].as_u64(), p["limit"].as_u64()), (Some("tv"), Some(1), Some(4)));

    for i in 1..=3 {
        s.granted("p", &format!("tv-{i}"), tv(Some("premium"))).await;
    }
    let p = s.refused("p", "tv-4", tv(Some("premium"))).await;
    assert_eq!((p["rule"].as_str(), p["rule_limit"].as_u64(), p["limit"].as_u64()), (Some("tv"), Some(3), Some(6)));

    s.granted("b", "tv-1", tv(Some("basic"))).await;
    s.granted("b", "tv-2", tv(Some("basic"))).await;
    let p = s.refused("b", "tv-3", tv(Some("basic"))).await;
    assert!(p.get("rule").is_none(), "basic has no rules; its total refused: {p}");
    // The default user's premium heartbeat is judged by premium's rules: a
    // renewal without a change of traits always renews.
    assert_eq!(s.put("d", "tv-1", tv(Some("premium"))).await.status, 200);
}

/// 62 TV and 2 other acquires at once, total 4, TV rule 2: exactly 2 TVs
/// and the 2 others are granted, on every interleaving. Each acquire is
/// one atomic decision, so no more than 2 TVs are ever live; then the
/// total can only be full (4) with both others live, so neither other is
/// ever refused, and a TV is refused exactly when 2 TVs are live, which
/// the first 2 TVs judged make so. Then 32 TVs and 32 others at once: at
/// most 2 TVs, and exactly 4 streams, since an other is refused only by a
/// full total.
async fn concurrent_acquires(kind: StoreKind) {
    let s = serve(kind, TV);
    let race = |user: &'static str, tvs: usize, others: usize| {
        let s = &s;
        async move {
            let puts = (0..tvs + others).map(|i| {
                let (stream, class) = if i < tvs { (format!("tv-{i}"), "tv") } else { (format!("other-{i}"), "phone") };
                async move { (class, s.put(user, &stream, json!({"device_class": class})).await) }
            });
            let answers = futures_util::future::join_all(puts).await;
            let mut granted = (0, 0);
            for (class, r) in answers {
                match r.status {
                    201 if class == "tv" => granted.0 += 1,
                    201 => granted.1 += 1,
                    409 => {
                        let p = r.assert_problem(409, "stream-limit-reached");
                        match p["rule"].as_str() {
                            Some(rule) => assert_eq!((class, rule, ids(&p["active_streams"]).len()), ("tv", "tv", 2)),
                            None => assert_eq!(ids(&p["active_streams"]).len(), 4, "{p}"),
                        }
                    }
                    _ => panic!("{r:?}"),
                }
            }
            let live = s.list(user).await;
            let live_tvs = live.iter().filter(|l| l["device_class"] == "tv").count();
            assert_eq!((live_tvs, live.len() - live_tvs), granted, "the grants are what is live");
            granted
        }
    };
    assert_eq!(race("a", 62, 2).await, (2, 2));
    let (tvs, others) = race("b", 32, 32).await;
    assert!(tvs <= 2 && tvs + others == 4, "{tvs} TVs and {others} others");
}

/// A WebSocket takes the traits as query parameters; the second TV gets
/// `refused` naming the rule, then the close 4409. A bad trait is 4400.
async fn websocket_refused_names_the_rule(kind: StoreKind) {
    let s = serve(kind, &TV.replace("limit = 2", "limit = 1"));
    let ws = |path: &str| s.url(path).replacen("http://", "ws://", 1);
    let (mut first, _) = connect_async(ws("/v1/users/u/streams/tv-1/socket?device_class=tv")).await.unwrap();
    let granted = next_json(&mut first).await;
    assert_eq!((granted["type"].as_str(), granted["device_class"].as_str()), (Some("granted"), Some("tv")));

    let (mut second, _) =
        connect_async(ws("/v1/users/u/streams/tv-2/socket?device_class=tv&content_kind=vod")).await.unwrap();
    let refused = next_json(&mut second).await;
    assert_eq!(refused["type"], "refused", "{refused}");
    assert_eq!((refused["rule"].as_str(), refused["rule_limit"].as_u64()), (Some("tv"), Some(1)));
    assert_eq!((refused["limit"].as_u64(), refused["status"].as_u64()), (Some(4), Some(409)));
    assert_eq!(ids(&refused["active_streams"]), ["tv-1"]);
    assert_eq!(refused["problem_type"], "https://streamcap.dev/problems/stream-limit-reached");
    assert_eq!(close_code(&mut second).await, Some(4409));

    let (mut bad, _) = connect_async(ws("/v1/users/u/streams/x/socket?content_kind=a%20b")).await.unwrap();
    let error = next_json(&mut bad).await;
    assert_eq!((error["type"].as_str(), error["status"].as_u64()), (Some("error"), Some(400)));
    assert!(error["detail"].as_str().unwrap().starts_with("content_kind "), "{error}");
    assert_eq!(close_code(&mut bad).await, Some(4400));
    // The phone's seat is still there for the first socket's user.
    s.granted("u", "phone-1", json!({"device_class": "phone"})).await;
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn close_code(ws: &mut Ws) -> Option<u16> {
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Close(frame) = m {
            return frame.map(|f| f.code.into());
        }
    }
    None
}

/// Traits are labels of the id alphabet; anything else is the same 400 as
/// any malformed field, and changes nothing.
async fn bad_traits_are_400(kind: StoreKind) {
    let s = serve(kind, TV);
    for (body, field) in [
        (json!({"device_class": "smart tv"}), "device_class"),
        (json!({"device_class": ""}), "device_class"),
        (json!({"content_kind": "x".repeat(129)}), "content_kind"),
        (json!({"content_kind": 3}), "invalid JSON body"),
    ] {
        let p = s.put("u", "s", body).await.assert_problem(400, "invalid-request");
        assert!(p["detail"].as_str().unwrap().starts_with(field), "{p}");
    }
    assert!(s.live("u").await.is_empty());
}

/// Each scenario as one test per store: `memory::tv_rule`, ...
macro_rules! per_store {
    ($($scenario:ident),* $(,)?) => {
        const COVERED: &[StoreKind] = &[
            StoreKind::Memory,
            StoreKind::Sqlite,
            StoreKind::Redis,
            #[cfg(feature = "dynamodb")]
            StoreKind::Dynamodb,
        ];
        per_store!(@store memory, Memory, $($scenario),*);
        per_store!(@store sqlite, Sqlite, $($scenario),*);
        per_store!(@store redis, Redis, $($scenario),*);
        #[cfg(feature = "dynamodb")]
        per_store!(@store dynamodb, Dynamodb, $($scenario),*);
    };
    (@store $module:ident, $kind:ident, $($scenario:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(streamcap::store::StoreKind::$kind).await
                }
            )*
        }
    };
}

per_store!(
    tv_rule,
    live_rule,
    title_rule,
    exempt_rule,
    evict_oldest_in_scope,
    take_over_frees_every_full_scope,
    shadow_names_the_rule,
    plan_rules_replace_the_default_set,
    concurrent_acquires,
    websocket_refused_names_the_rule,
    bad_traits_are_400,
);

#[test]
fn every_store_has_its_tests() {
    assert_eq!(COVERED, STORES);
}

/// A config whose rule cannot be met stops the binary at start, exit 2,
/// with one line naming the rule and its line.
#[test]
fn a_bad_rule_stops_the_binary_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("streamcap.toml");
    std::fs::write(&config, TV.replace("limit = 2", "limit = -1")).unwrap();
    let (status, err) =
        run_to_exit(binary().args(["serve", "--store", "memory", "--config", config.to_str().unwrap()]));
    assert_eq!(status.code(), Some(2), "{err}");
    let expected = format!(
        "streamcap: limits.rules[0] (\"tv\") in {} (line 7): limit -1 is out of range 0..=1000\n",
        config.display()
    );
    assert_eq!(err, expected);
}
