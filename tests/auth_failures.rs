//! The limit on failed authentication per source address, end to end:
//! the real binary on every store, in JWT mode and in API-key mode, over
//! real sockets. Distinct sources over loopback come from a trusted proxy
//! (the test's own client on 127.0.0.1 sending `X-Forwarded-For`) and from
//! an untrusted peer (a client bound to 127.0.0.2, whose header is
//! ignored).
//!
//! The buckets refill at one token a second, so nothing here depends on
//! how fast the machine is: a check that needs an empty bucket empties it
//! again if a token came back in the meantime, and a refill is waited for
//! with a generous deadline.

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Process, Reply, STORES, binary};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use streamcap::store::StoreKind;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const SECRET: &str = "an-auth-failure-test-secret-of-32-bytes-or-more";
const SERVICE_KEY: &str = "svc-key-made-up-by-the-auth-failure-test";
const BURST: usize = 20;
const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Player tokens (HS256), no API keys.
    Jwt,
    /// API keys only (`--auth-mode none` with a key).
    ApiKey,
}

impl Mode {
    fn good(self) -> String {
        match self {
            Mode::Jwt => token(SECRET),
            Mode::ApiKey => SERVICE_KEY.to_owned(),
        }
    }

    /// A credential that fails: a token signed with another secret, so
    /// that the verifier does check its signature, or an unknown key.
    fn bad(self) -> String {
        match self {
            Mode::Jwt => token("another-secret-that-is-at-least-32-bytes-long"),
            Mode::ApiKey => "a-key-nobody-configured".to_owned(),
        }
    }
}

fn token(secret: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 300;
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(&header, &json!({"sub": "alice", "exp": exp}), &key).unwrap()
}

/// The binary on one store, with what that store needs kept alive.
struct Instance {
    process: Process,
    _redis: Option<common::redis::RedisServer>,
    _dir: tempfile::TempDir,
}

/// `streamcap serve` on `kind` in `mode`, refilling one failure a second
/// with a bucket of [`BURST`], trusting the proxy on 127.0.0.1 only. The
/// user and credential rate limits are off: this is about the other one.
fn start(kind: StoreKind, mode: Mode) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = binary();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--store", kind.name()]);
    cmd.args(["--auth-failure-rate-limit", "1", "--auth-failure-rate-burst", &BURST.to_string()]);
    cmd.args(["--trusted-proxies", "127.0.0.1/32", "--user-rate-limit", "0", "--credential-rate-limit", "0"]);
    match mode {
        Mode::Jwt => {
            cmd.args(["--auth-mode", "jwt"]).env("STREAMCAP_JWT_SECRET", SECRET);
        }
        Mode::ApiKey => {
            let digest: String = Sha256::digest(SERVICE_KEY).iter().map(|b| format!("{b:02x}")).collect();
            let file = dir.path().join("streamcap.toml");
            let keys = format!("[[auth.api_keys]]\nname = \"backend\"\nsha256 = \"{digest}\"\nscope = \"service\"\n");
            std::fs::write(&file, keys).unwrap();
            cmd.args(["--config", file.to_str().unwrap()]);
        }
    }
    let redis = store_args(kind, &mut cmd, &dir);
    Instance { process: Process::start_cmd(&mut cmd), _redis: redis, _dir: dir }
}

/// What `kind` needs on the command line: a data dir, a Redis server, or
/// a table on the shared DynamoDB Local.
fn store_args(kind: StoreKind, cmd: &mut Command, dir: &tempfile::TempDir) -> Option<common::redis::RedisServer> {
    match kind {
        StoreKind::Sqlite => {
            cmd.args(["--data-dir", dir.path().join("data").to_str().unwrap()]);
            None
        }
        StoreKind::Redis => {
            let redis = common::redis::RedisServer::start(&[]);
            cmd.args(["--redis-url", &redis.url()]);
            Some(redis)
        }
        #[cfg(feature = "dynamodb")]
        StoreKind::Dynamodb => {
            let local = common::dynamodb::DynamoLocal::shared();
            let table = common::dynamodb::table_name("authfail");
            let endpoint = local.endpoint();
            let created = binary()
                .envs(common::dynamodb::CLIENT_ENV)
                .args(["dynamodb", "create-table", "--dynamodb-table", &table, "--dynamodb-endpoint", &endpoint])
                .output()
                .unwrap();
            assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
            cmd.envs(common::dynamodb::CLIENT_ENV);
            cmd.args(["--dynamodb-table", &table, "--dynamodb-endpoint", &endpoint]);
            None
        }
        _ => None,
    }
}

/// Every answer the test has seen, for the metrics.
#[derive(Default)]
struct Seen {
    unauthorized: u64,
    refused: u64,
}

impl Seen {
    fn count(&mut self, status: u16) {
        match status {
            401 => self.unauthorized += 1,
            429 => self.refused += 1,
            _ => {}
        }
    }
}

/// One client of the instance: through the trusted proxy (127.0.0.1) on
/// behalf of `forwarded_for`, or straight from another loopback address.
struct Client {
    http: reqwest::Client,
    base: String,
    forwarded_for: Option<String>,
}

impl Client {
    fn via_proxy(i: &Instance, forwarded_for: &str) -> Client {
        let http = reqwest::Client::new();
        Client { http, base: i.process.base.clone(), forwarded_for: Some(forwarded_for.to_owned()) }
    }

    /// A client on 127.0.0.2, which is no trusted proxy, claiming to
    /// forward for `forwarded_for`.
    fn untrusted(i: &Instance, forwarded_for: &str) -> Client {
        let http = reqwest::Client::builder().local_address(Some("127.0.0.2".parse::<IpAddr>().unwrap())).build();
        Client { http: http.unwrap(), base: i.process.base.clone(), forwarded_for: Some(forwarded_for.to_owned()) }
    }

    async fn get(&self, path: &str, credential: Option<&str>, seen: &mut Seen) -> Reply {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(from) = &self.forwarded_for {
            req = req.header("x-forwarded-for", from);
        }
        if let Some(c) = credential {
            req = req.bearer_auth(c);
        }
        let r = Reply::from(req.send().await.unwrap()).await;
        seen.count(r.status);
        r
    }

    async fn streams(&self, credential: Option<&str>, seen: &mut Seen) -> Reply {
        self.get("/v1/users/alice/streams", credential, seen).await
    }

    /// Sends bad credentials until the source is refused; returns the 401s
    /// that came first.
    async fn exhaust(&self, mode: Mode, seen: &mut Seen) -> usize {
        let bad = mode.bad();
        for failed in 0..BURST * 3 {
            let r = self.streams(Some(&bad), seen).await;
            match r.status {
                401 => {
                    r.assert_problem(401, "unauthorized");
                }
                429 => {
                    assert_rate_limited(&r);
                    return failed;
                }
                other => panic!("a bad credential got {other}: {r:?}"),
            }
        }
        panic!("{} bad credentials and still no 429", BURST * 3)
    }

    /// Asserts that a good credential from this (exhausted) source is
    /// refused. A token may come back between the refusal and the good
    /// request on a slow machine: then the bucket is emptied again.
    async fn assert_refused_even_when_good(&self, mode: Mode, seen: &mut Seen) {
        for _ in 0..10 {
            self.exhaust(mode, seen).await;
            let r = self.streams(Some(&mode.good()), seen).await;
            if r.status == 429 {
                assert_rate_limited(&r);
                return;
            }
            assert_eq!(r.status, 200, "{r:?}");
        }
        panic!("a good credential from an exhausted source was never refused");
    }
}

fn assert_rate_limited(r: &Reply) {
    let body = r.assert_problem(429, "rate-limited");
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!(retry >= 1, "{r:?}");
    assert_eq!(body["retry_after_seconds"], retry, "{body}");
}

/// The value of one series of the instance's `/metrics`, 0 when absent.
async fn metric(i: &Instance, series: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", i.process.base)).await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')));
    line.and_then(|l| l.rsplit(' ').next()).map_or(0, |n| n.parse::<f64>().unwrap() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_lock_out_their_source_and_no_other_until_it_refills() {
    for kind in STORES {
        for mode in [Mode::Jwt, Mode::ApiKey] {
            let i = start(kind, mode);
            let mut seen = Seen::default();
            let at = format!("{kind:?} {mode:?}");
            let a = Client::via_proxy(&i, "198.51.100.7");
            let b = Client::via_proxy(&i, "198.51.100.8");

            // A full bucket takes at least a burst of failures.
            let failed = a.exhaust(mode, &mut seen).await;
            assert!(failed >= BURST, "{at}: refused after {failed} failures");
            // Now even a good credential is refused, unread.
            a.assert_refused_even_when_good(mode, &mut seen).await;
            // Without a credential there is nothing to refuse: the usual 401.
            a.streams(None, &mut seen).await.assert_problem(401, "unauthorized");
            // Routes without authentication are open to the source.
            for path in ["/livez", "/readyz", "/metrics"] {
                assert_eq!(a.get(path, None, &mut seen).await.status, 200, "{at} {path}");
            }
            // Another source is not slowed, and its failures are its own.
            assert_eq!(b.streams(Some(&mode.good()), &mut seen).await.status, 200, "{at}");
            b.streams(Some(&mode.bad()), &mut seen).await.assert_problem(401, "unauthorized");
            assert_eq!(b.streams(Some(&mode.good()), &mut seen).await.status, 200, "{at}");

            // The bucket refills: a good credential gets through again.
            let deadline = Instant::now() + WAIT;
            loop {
                let r = a.streams(Some(&mode.good()), &mut seen).await;
                if r.status == 200 {
                    break;
                }
                assert_rate_limited(&r);
                assert!(Instant::now() < deadline, "{at}: still refused after {WAIT:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }

            // A peer that is no trusted proxy is the source, whatever it
            // forwards for: a new X-Forwarded-For for every try changes nothing.
            let mut failed = 0;
            let refused = loop {
                let c = Client::untrusted(&i, &format!("203.0.113.{}", failed % 250));
                let r = c.streams(Some(&mode.bad()), &mut seen).await;
                if r.status == 429 {
                    break r;
                }
                r.assert_problem(401, "unauthorized");
                failed += 1;
                assert!(failed < BURST * 3, "{at}: the untrusted peer was never refused");
            };
            assert_rate_limited(&refused);
            assert!(failed >= BURST, "{at}: refused after {failed} failures");
            let c = Client::untrusted(&i, "198.51.100.99");
            c.assert_refused_even_when_good(mode, &mut seen).await;
            // ...while the trusted proxy still speaks for its own clients.
            let d = Client::via_proxy(&i, "198.51.100.99");
            assert_eq!(d.streams(Some(&mode.good()), &mut seen).await.status, 200, "{at}");

            // Every 401 and every refusal is counted, with no address in a label.
            assert!(seen.refused > 0);
            assert_eq!(metric(&i, "streamcap_auth_failures_total").await, seen.unauthorized, "{at}");
            let refusals = metric(&i, "streamcap_rate_limited_total{bucket=\"auth_failure\"}").await;
            assert_eq!(refusals, seen.refused, "{at}");
            let text = reqwest::get(format!("{}/metrics", i.process.base)).await.unwrap().text().await.unwrap();
            assert!(!text.contains("198.51.100") && !text.contains("127.0.0.2"), "an address in the metrics");
        }
    }
}

/// The `ws://` URL of the instance's socket route for alice's stream.
fn socket_url(i: &Instance, stream: &str) -> String {
    format!("{}/v1/users/alice/streams/{stream}/socket", i.process.base.replacen("http://", "ws://", 1))
}

/// Connects a socket from behind the trusted proxy, on behalf of `from`,
/// with `credential` as a bearer subprotocol (as a browser sends it), and
/// returns its first message and its close code (none when it holds a
/// lease: then it is closed by the client).
async fn socket(i: &Instance, from: &str, stream: &str, credential: &str) -> (Value, Option<u16>) {
    let mut req = socket_url(i, stream).into_client_request().unwrap();
    let headers = req.headers_mut();
    headers.insert("x-forwarded-for", HeaderValue::from_str(from).unwrap());
    let protocols = format!("streamcap.v1, streamcap.bearer.{credential}");
    headers.insert("sec-websocket-protocol", HeaderValue::from_str(&protocols).unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut first = None;
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("an answer in time") {
            Some(Ok(Message::Text(text))) if first.is_none() => {
                let m: Value = serde_json::from_str(text.as_str()).unwrap();
                if m["type"] == "granted" {
                    ws.close(None).await.unwrap();
                    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
                    return (m, None);
                }
                first = Some(m);
            }
            Some(Ok(Message::Close(Some(frame)))) => return (first.unwrap(), Some(u16::from(frame.code))),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn assert_socket_refused(m: &Value, code: Option<u16>, slug: &str) {
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["problem_type"], format!("https://streamcap.dev/problems/{slug}"), "{m}");
    assert_eq!(code, Some(4000 + m["status"].as_u64().unwrap() as u16), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_are_charged_and_refused_like_the_put() {
    for kind in STORES {
        let mode = Mode::Jwt;
        let i = start(kind, mode);
        let from = "198.51.100.20";
        // Bad socket credentials empty the source's bucket, as bad PUTs do.
        let mut failed = 0;
        let (m, code) = loop {
            let (m, code) = socket(&i, from, "tv", &mode.bad()).await;
            if m["status"] != 401 {
                break (m, code);
            }
            assert_socket_refused(&m, code, "unauthorized");
            failed += 1;
            assert!(failed < BURST * 3, "{kind:?}: sockets were never refused");
        };
        assert!(failed >= BURST, "{kind:?}: refused after {failed} failures");
        assert_socket_refused(&m, code, "rate-limited");
        assert_eq!(code, Some(4429));
        assert!(m["retry_after_seconds"].as_u64().unwrap() >= 1, "{m}");
        // A good credential is refused too, and so is a PUT; a token may
        // come back meanwhile on a slow machine, so empty the bucket again
        // until the refusal is seen.
        let mut seen = Seen::default();
        let proxy = Client::via_proxy(&i, from);
        let refused = 'tries: {
            for _ in 0..10 {
                proxy.exhaust(mode, &mut seen).await;
                let (m, code) = socket(&i, from, "tv", &mode.good()).await;
                if code == Some(4429) {
                    break 'tries m;
                }
                assert_eq!(m["type"], "granted", "{m}");
            }
            panic!("{kind:?}: a good socket credential from an exhausted source was never refused");
        };
        assert_socket_refused(&refused, Some(4429), "rate-limited");
        // Another source connects.
        let (m, code) = socket(&i, "198.51.100.21", "tv", &mode.good()).await;
        assert_eq!((m["type"].as_str(), code), (Some("granted"), None), "{m}");
    }
}

#[test]
fn the_limits_can_be_turned_off_and_misconfigured_proxies_are_refused_at_start() {
    let mut cmd = binary();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--store", "memory", "--auth-mode", "jwt"]);
    cmd.env("STREAMCAP_JWT_SECRET", SECRET).env("STREAMCAP_AUTH_FAILURE_RATE_LIMIT", "0");
    let p = Process::start_cmd(&mut cmd);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let statuses = rt.block_on(async {
        let c = reqwest::Client::new();
        let mut statuses = Vec::new();
        for credential in std::iter::repeat_n(Mode::Jwt.bad(), BURST * 2).chain([Mode::Jwt.good()]) {
            let r = c.get(p.url("/v1/users/alice/streams")).bearer_auth(credential).send().await.unwrap();
            statuses.push(r.status().as_u16());
        }
        statuses
    });
    assert_eq!(statuses[..BURST * 2], [401; BURST * 2], "a rate of 0 turns the limit off");
    assert_eq!(statuses[BURST * 2], 200);

    let (status, err) = common::run_to_exit(binary().args(["serve", "--trusted-proxies", "10.0.0.1/8"]));
    assert_eq!(status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--trusted-proxies") && err.contains("write 10.0.0.0/8"), "{err}");
    let (status, err) = common::run_to_exit(binary().env("STREAMCAP_TRUSTED_PROXIES", "10.0.0.0/8,nonsense"));
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--trusted-proxies") && err.contains("\"nonsense\" is not a CIDR"), "{err}");
}
