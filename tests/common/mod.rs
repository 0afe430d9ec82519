//! The shared test harness: a streamcap server on a real socket, either
//! in-process ([`Server`]) or as the real binary ([`Process`]), real
//! Redis and DynamoDB Local processes ([`redis`], [`dynamodb`]), and the
//! runner of the headless-Chromium tests ([`browser`]).
#![allow(dead_code)] // each test crate uses a different part of it

#[path = "../../src/store/redis/harness.rs"]
pub mod redis;

#[cfg(feature = "dynamodb")]
#[path = "../../src/store/dynamodb/harness.rs"]
pub mod dynamodb;

pub mod browser;
pub mod two_instances;
pub mod ws;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;
use streamcap::auth::Authenticator;
use streamcap::clock::{Clock, SystemClock};
use streamcap::http::AppState;
use streamcap::limiter::{Limit, Ttl};
use streamcap::policy::Policy;
use streamcap::policy::Protection;
use streamcap::store::{Store, StoreConfig, StoreKind};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The stores every API test runs against. Redis runs standalone here; the
/// cluster has tests of its own. DynamoDB (a table of its own per server,
/// on one DynamoDB Local per test binary) when the feature is on.
#[cfg(not(feature = "dynamodb"))]
pub const STORES: [StoreKind; 3] = [StoreKind::Memory, StoreKind::Sqlite, StoreKind::Redis];
#[cfg(feature = "dynamodb")]
pub const STORES: [StoreKind; 4] = [StoreKind::Memory, StoreKind::Sqlite, StoreKind::Redis, StoreKind::Dynamodb];

/// An in-process server on 127.0.0.1:0, stopped on drop.
pub struct Server {
    pub base: String,
    pub store: Store,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
    pub redis: Option<redis::RedisServer>,
}

impl Server {
    pub async fn start(kind: StoreKind, limit: u32, ttl_secs: u32) -> Server {
        Self::with_policy(kind, Policy::uniform(Limit::new(limit).unwrap(), Ttl::from_secs(ttl_secs).unwrap())).await
    }

    pub async fn with_policy(kind: StoreKind, policy: Policy) -> Server {
        Self::with_everything(kind, policy, Authenticator::none(), Protection::unlimited()).await
    }

    pub async fn with_everything(
        kind: StoreKind,
        policy: Policy,
        auth: Authenticator,
        protection: Protection,
    ) -> Server {
        Self::with_clock(kind, policy, auth, protection, Arc::new(SystemClock)).await
    }

    /// A server whose store (memory, sqlite and dynamodb) and degraded
    /// grants read `clock`. Redis always reads its own clock (TIME), so a
    /// Redis server ignores it. A dynamodb server gets a new table, made by
    /// `create_table` (so with TTL: a manual clock must not be behind the
    /// real one, or DynamoDB Local deletes its items as expired).
    pub async fn with_clock(
        kind: StoreKind,
        policy: Policy,
        auth: Authenticator,
        protection: Protection,
        clock: Arc<dyn Clock>,
    ) -> Server {
        let redis = (kind == StoreKind::Redis).then(|| redis::RedisServer::start(&[]));
        let url = redis.as_ref().map(redis::RedisServer::url);
        let mut server = Self::serving(kind, url, policy, auth, protection, clock).await;
        server.redis = redis;
        server
    }

    /// A second instance on the Redis server that `first` started.
    pub async fn sharing_redis(first: &Server, policy: Policy) -> Server {
        let url = first.redis.as_ref().expect("the first server runs on its own Redis").url();
        let (auth, protection) = (Authenticator::none(), Protection::unlimited());
        Self::serving(StoreKind::Redis, Some(url), policy, auth, protection, Arc::new(SystemClock)).await
    }

    async fn serving(
        kind: StoreKind,
        redis_url: Option<String>,
        policy: Policy,
        auth: Authenticator,
        protection: Protection,
        clock: Arc<dyn Clock>,
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        #[cfg_attr(not(feature = "dynamodb"), allow(unused_mut))]
        let mut config = StoreConfig {
            redis_urls: redis_url.into_iter().collect(),
            sweep_interval: Duration::from_secs(1),
            ..StoreConfig::new(kind, dir.path().join("data"))
        };
        let store = match kind {
            #[cfg(feature = "dynamodb")]
            StoreKind::Dynamodb => {
                use streamcap::store::dynamodb as ddb;
                let local = dynamodb::DynamoLocal::shared();
                config.dynamodb_table = dynamodb::table_name("api");
                config.dynamodb_endpoint = Some(local.endpoint());
                let aws = dynamodb_aws();
                ddb::create_table(&config.dynamodb_table, Some(&local.endpoint()), &aws, &mut |_| {}).await.unwrap();
                ddb::open(&config, &aws, clock.clone()).await.unwrap()
            }
            _ => Store::open(&config, clock.clone()).await.unwrap(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let mut state = AppState::new(store.clone(), policy, Arc::new(auth), protection);
        state.clock = clock;
        let served = tokio::spawn(async move {
            streamcap::http::serve(listener, state, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Server {
            base,
            store,
            client: reqwest::Client::new(),
            stop: Some(stop),
            served: Some(served),
            _dir: dir,
            redis: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The `ws://` URL of `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{path}", self.base.replacen("http://", "ws://", 1))
    }

    /// Shuts the server down as a signal would, and waits until `serve`
    /// has returned. The store stays open, for the test to look at.
    pub async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            served.await.unwrap();
        }
    }

    pub async fn put(&self, path: &str, body: Option<Value>) -> Reply {
        let mut req = self.client.put(self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        Reply::from(req.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        Reply::from(self.client.get(self.url(path)).send().await.unwrap()).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        Reply::from(self.client.delete(self.url(path)).send().await.unwrap()).await
    }
}

/// Static credentials for DynamoDB Local, the ones the harness gives
/// child processes.
#[cfg(feature = "dynamodb")]
pub fn dynamodb_aws() -> streamcap::store::dynamodb::Aws {
    let env = |k: &str| dynamodb::CLIENT_ENV.iter().find(|(name, _)| *name == k).unwrap().1.to_owned();
    streamcap::store::dynamodb::Aws::Static {
        region: env("AWS_REGION"),
        access_key_id: env("AWS_ACCESS_KEY_ID"),
        secret_access_key: env("AWS_SECRET_ACCESS_KEY"),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What a token bucket that refills one token a second may grant: at least
/// its burst when it starts full, and at most one more for each second
/// since the first request. A test that needs a refusal sends requests
/// until one is refused and counts the grants on the way here, so that a
/// slow machine only means more grants before the refusal, while a bucket
/// that grants too many or refuses too soon still fails.
pub struct Bucket {
    burst: u64,
    since: Instant,
    granted: u64,
}

impl Bucket {
    /// A full bucket of `burst` tokens, made right before the first request.
    pub fn full(burst: u64) -> Bucket {
        Bucket { burst, since: Instant::now(), granted: 0 }
    }

    /// Counts a grant, for which the bucket must have had a token.
    pub fn granted(&mut self) {
        self.granted += 1;
        let elapsed = self.since.elapsed();
        assert!(
            self.granted <= self.burst + elapsed.as_secs() + 1,
            "{} grants in {elapsed:?} from a bucket of {} that refills one token a second",
            self.granted,
            self.burst
        );
        // Requests that each take a second or more would never empty it:
        // fail rather than loop.
        assert!(self.granted < self.burst + 100, "still no refusal after {} grants in {elapsed:?}", self.granted);
    }

    /// A refusal, which may come only once the burst is spent.
    pub fn refused(&self) {
        assert!(
            self.granted >= self.burst,
            "refused after {} grants from a full bucket of {}",
            self.granted,
            self.burst
        );
    }
}

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub async fn from(res: reqwest::Response) -> Reply {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        Reply { status, headers, text }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 9457 problem with `status` whose type ends in `slug`.
    pub fn assert_problem(&self, status: u16, slug: &str) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{self:?}");
        let body = self.json();
        let ty = body["type"].as_str().unwrap_or_else(|| panic!("no type: {body}"));
        assert!(ty.starts_with("https://") && ty.ends_with(slug), "type {ty} should end in {slug}");
        assert_eq!(body["status"], status, "{body}");
        assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
        assert!(body["detail"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
        body
    }
}

/// The real `streamcap` binary, run with its stderr captured.
pub struct Process {
    child: Child,
    pub base: String,
    log: Arc<Mutex<String>>,
}

pub fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamcap"));
    // Only what a test sets explicitly may configure the process.
    for (k, _) in std::env::vars() {
        if k.starts_with("STREAMCAP_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

/// `STREAMCAP_*` variable → its default, for every variable that
/// `streamcap serve --help` names (some only in a description, such as
/// STREAMCAP_JWT_SECRET): what a deployment manifest may set.
pub fn serve_help_variables() -> std::collections::BTreeMap<String, Option<String>> {
    let out = binary().args(["serve", "--help"]).output().expect("run streamcap serve --help");
    assert!(out.status.success(), "streamcap serve --help failed");
    let text = String::from_utf8(out.stdout).expect("UTF-8 help");
    // An option starts a line with `-` and may wrap onto the lines after it.
    let mut options: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('-') {
            options.push(String::new());
        }
        if let Some(option) = options.last_mut() {
            option.push(' ');
            option.push_str(line.trim());
        }
    }
    let between = |text: &str, open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        Some(text[start..start + text[start..].find(close)?].to_owned())
    };
    let mut vars = std::collections::BTreeMap::new();
    for option in &options {
        let default = between(option, "[default: ", "]");
        if let Some(env) = between(option, "[env: ", "=") {
            vars.insert(env, default);
        }
        let mut rest = option.as_str();
        while let Some(at) = rest.find("STREAMCAP_") {
            let end = rest[at..].find(|c: char| !(c.is_ascii_uppercase() || c == '_')).map_or(rest.len(), |e| at + e);
            vars.entry(rest[at..end].to_owned()).or_insert(None);
            rest = &rest[end..];
        }
    }
    assert!(vars.contains_key("STREAMCAP_STORE"), "the help should name STREAMCAP_STORE:\n{text}");
    vars
}

/// Authentication with player tokens signed with the HS256 `secret` (user
/// claim `sub`, plan claim `plan`), and `api_keys`.
pub fn hs256_auth(secret: &str, api_keys: Vec<streamcap::auth::ApiKey>) -> streamcap::auth::Authenticator {
    use streamcap::auth::{AuthMode, Authenticator, JwtConfig, JwtVerifier};
    let config = JwtConfig {
        secret: Some(secret.as_bytes().to_vec()),
        public_key_pem: None,
        jwks_json: None,
        algorithms: None,
        issuer: None,
        audience: None,
        user_claim: "sub".into(),
        plan_claim: "plan".into(),
    };
    Authenticator::new(AuthMode::Jwt, Some(JwtVerifier::new(config).unwrap()), api_keys)
}

impl Process {
    /// Starts `streamcap serve --listen 127.0.0.1:0 ARGS` and waits until it
    /// listens.
    pub fn start(args: &[&str]) -> Process {
        Self::start_cmd(binary().args(["serve", "--listen", "127.0.0.1:0"]).args(args))
    }

    pub fn start_cmd(cmd: &mut Command) -> Process {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                {
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
                // Logged first, so that the log holds the line once the
                // caller learns the address from it.
                if line.contains("listening")
                    && let Some(addr) = listening_addr(&line)
                {
                    let _ = tx.send(addr);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => Process { child, base: format!("http://{addr}"), log },
            Err(_) => {
                let _ = child.kill();
                panic!("streamcap did not start listening:\n{}", log.lock().unwrap());
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
        let status = wait_timeout(&mut self.child, Duration::from_secs(30));
        (status, self.log())
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary to completion (for start-up failures) and returns its
/// exit status and stderr.
pub fn run_to_exit(cmd: &mut Command) -> (ExitStatus, String) {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status, err)
}

pub fn data_dir_arg(dir: &Path) -> String {
    dir.to_str().unwrap().to_owned()
}

/// The address in a `listening` log line, text or JSON format.
fn listening_addr(line: &str) -> Option<String> {
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        return v["fields"]["addr"].as_str().map(str::to_owned);
    }
    line.split_whitespace().find_map(|w| w.strip_prefix("addr=")).map(str::to_owned)
}
