#![cfg(feature = "lambda")]
//! `streamcap-lambda` end to end. The real binary is started the way Lambda
//! starts a custom runtime and takes API Gateway HTTP API events (payload
//! format 2.0) from a minimal Lambda Runtime API written for this test
//! ([`runtime_api`]), against a real store. The scenario receives its
//! store as environment variables, so it runs unchanged on every store a
//! function may use.

mod common;

use std::any::Any;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::Reply;
use common::redis::RedisServer;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use runtime_api::{Outcome, RuntimeApi};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const JWT_SECRET: &str = "a-lambda-test-hs256-secret-of-32-bytes-or-more";
const SERVICE_KEY: &str = "svc-key-made-up-by-the-lambda-test";

/// A minimal Lambda Runtime API, version 2018-06-01, on a free loopback
/// port: what a runtime calls, and nothing of Lambda's scheduling.
///
/// - `GET /2018-06-01/runtime/invocation/next` waits for an event and
///   hands it out with the `Lambda-Runtime-Aws-Request-Id`,
///   `-Deadline-Ms`, `-Invoked-Function-Arn` and `-Trace-Id` headers;
/// - `POST …/invocation/{id}/response` and `…/invocation/{id}/error`
///   answer that invocation (202);
/// - `POST /2018-06-01/runtime/init/error` records an init failure (202).
mod runtime_api {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{SystemTime, UNIX_EPOCH};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use serde_json::{Value, json};
    use tokio::sync::{mpsc, oneshot};

    pub const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:streamcap";

    /// How the function answered one invocation.
    #[derive(Debug)]
    pub enum Outcome {
        /// The body of `…/response`: here, an API Gateway v2 response.
        Response(Value),
        /// `…/error`: the `Lambda-Runtime-Function-Error-Type` header and the body.
        Error { error_type: Option<String>, body: Value },
    }

    /// One `init/error` report.
    #[derive(Clone, Debug)]
    pub struct InitError {
        pub error_type: Option<String>,
        pub body: Value,
    }

    pub struct RuntimeApi {
        /// HOST:PORT, as `AWS_LAMBDA_RUNTIME_API` takes it.
        pub addr: SocketAddr,
        shared: Arc<Shared>,
        server: tokio::task::JoinHandle<()>,
    }

    struct Shared {
        queue: mpsc::UnboundedSender<Queued>,
        next: tokio::sync::Mutex<mpsc::UnboundedReceiver<Queued>>,
        waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
        polls: AtomicUsize,
        ids: AtomicU64,
        init_errors: Mutex<Vec<InitError>>,
    }

    struct Queued {
        id: String,
        event: Value,
        done: oneshot::Sender<Outcome>,
    }

    impl RuntimeApi {
        pub async fn start() -> RuntimeApi {
            let (queue, next) = mpsc::unbounded_channel();
            let shared = Arc::new(Shared {
                queue,
                next: tokio::sync::Mutex::new(next),
                waiting: Mutex::new(HashMap::new()),
                polls: AtomicUsize::new(0),
                ids: AtomicU64::new(0),
                init_errors: Mutex::new(Vec::new()),
            });
            let app = Router::new()
                .route("/2018-06-01/runtime/invocation/next", get(next_event))
                .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
                .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
                .route("/2018-06-01/runtime/init/error", post(init_error))
                .with_state(shared.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            RuntimeApi { addr, shared, server }
        }

        /// Queues `event` for the next poll; the receiver hears the answer.
        pub fn invoke(&self, event: Value) -> oneshot::Receiver<Outcome> {
            let n = self.shared.ids.fetch_add(1, Ordering::Relaxed);
            let id = format!("8476a536-e9f4-11e8-9739-{n:012x}");
            let (done, answer) = oneshot::channel();
            self.shared.queue.send(Queued { id, event, done }).unwrap_or_else(|_| panic!("the emulator stopped"));
            answer
        }

        /// How many times the function asked for an event.
        pub fn polls(&self) -> usize {
            self.shared.polls.load(Ordering::Relaxed)
        }

        pub fn init_errors(&self) -> Vec<InitError> {
            self.shared.init_errors.lock().unwrap().clone()
        }
    }

    impl Drop for RuntimeApi {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    async fn next_event(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
        shared.polls.fetch_add(1, Ordering::Relaxed);
        let Some(Queued { id, event, done }) = shared.next.lock().await.recv().await else {
            return (StatusCode::INTERNAL_SERVER_ERROR, HeaderMap::new(), String::new());
        };
        shared.waiting.lock().unwrap().insert(id.clone(), done);
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
        let mut headers = HeaderMap::new();
        let mut set = |name: &'static str, value: String| {
            headers.insert(name, value.parse().unwrap());
        };
        set("content-type", "application/json".into());
        set("lambda-runtime-aws-request-id", id);
        set("lambda-runtime-deadline-ms", (now_ms + 60_000).to_string());
        set("lambda-runtime-invoked-function-arn", FUNCTION_ARN.into());
        set("lambda-runtime-trace-id", format!("Root=1-{:08x}-{:024x};Parent={:016x};Sampled=0", now_ms as u32, 7, 9));
        (StatusCode::OK, headers, event.to_string())
    }

    async fn response(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
        answer(&shared, &id, Outcome::Response(parse(&body)))
    }

    async fn error(
        State(shared): State<Arc<Shared>>,
        Path(id): Path<String>,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        answer(&shared, &id, Outcome::Error { error_type: error_type(&headers), body: parse(&body) })
    }

    async fn init_error(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
        shared.init_errors.lock().unwrap().push(InitError { error_type: error_type(&headers), body: parse(&body) });
        StatusCode::ACCEPTED
    }

    /// 202 for an invocation that is waiting, 400 for any other id.
    fn answer(shared: &Shared, id: &str, outcome: Outcome) -> StatusCode {
        match shared.waiting.lock().unwrap().remove(id) {
            Some(done) => {
                let _ = done.send(outcome);
                StatusCode::ACCEPTED
            }
            None => StatusCode::BAD_REQUEST,
        }
    }

    fn error_type(headers: &HeaderMap) -> Option<String> {
        headers.get("lambda-runtime-function-error-type").and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    fn parse(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap_or_else(|_| json!({ "unparsed": String::from_utf8_lossy(body) }))
    }
}

/// What the function is deployed with: its store and its settings, as
/// environment variables, and whatever must stay alive meanwhile.
struct Deployment {
    env: Vec<(String, String)>,
    _keep: Vec<Box<dyn Any>>,
}

impl Deployment {
    fn new(env: &[(&str, &str)]) -> Deployment {
        Deployment { env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), _keep: Vec::new() }
    }

    fn with(mut self, key: &str, value: &str) -> Deployment {
        self.env.push((key.into(), value.into()));
        self
    }

    fn keep(mut self, thing: impl Any) -> Deployment {
        self._keep.push(Box::new(thing));
        self
    }
}

/// A real `redis-server` of this test's own.
fn redis() -> Deployment {
    let redis = RedisServer::start(&[]);
    Deployment::new(&[("STREAMCAP_STORE", "redis"), ("STREAMCAP_REDIS_URL", &redis.url())]).keep(redis)
}

/// A table of this test's own on the test binary's shared DynamoDB Local,
/// made by `streamcap dynamodb create-table` as an operator would.
#[cfg(feature = "dynamodb")]
fn dynamodb() -> Deployment {
    use common::dynamodb::{CLIENT_ENV, DynamoLocal, table_name};
    let endpoint = DynamoLocal::shared().endpoint();
    let table = table_name("lambda");
    let deployment = Deployment::new(&CLIENT_ENV)
        .with("STREAMCAP_STORE", "dynamodb")
        .with("STREAMCAP_DYNAMODB_TABLE", &table)
        .with("STREAMCAP_DYNAMODB_ENDPOINT", &endpoint);
    let made = Command::new(env!("CARGO_BIN_EXE_streamcap"))
        .args(["dynamodb", "create-table"])
        .env_clear()
        .envs(deployment.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(made.status.success(), "create-table: {}", String::from_utf8_lossy(&made.stderr));
    deployment
}

/// JWT (HS256, the secret in `STREAMCAP_JWT_SECRET`) and one service API
/// key, whose digest comes in the file `STREAMCAP_CONFIG` names, as a file
/// bundled with the function would.
fn with_auth(deployment: Deployment) -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let digest: String = Sha256::digest(SERVICE_KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let file = dir.path().join("streamcap.toml");
    std::fs::write(
        &file,
        format!("[[auth.api_keys]]\nname = \"backend\"\nsha256 = \"{digest}\"\nscope = \"service\"\n"),
    )
    .unwrap();
    deployment
        .with("STREAMCAP_AUTH_MODE", "jwt")
        .with("STREAMCAP_JWT_SECRET", JWT_SECRET)
        .with("STREAMCAP_CONFIG", file.to_str().unwrap())
        .keep(dir)
}

/// The binary with only the environment Lambda gives a function, pointed at
/// `api`, plus `env`. Nothing of the test's own environment leaks in.
fn command(api: Option<&RuntimeApi>, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamcap-lambda"));
    cmd.env_clear().env("RUST_LOG", "info");
    if let Some(api) = api {
        cmd.env("AWS_LAMBDA_RUNTIME_API", api.addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "streamcap")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/streamcap")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "2026/01/01/[$LATEST]0123456789abcdef")
            .env("AWS_REGION", "us-east-1");
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// A running function process, killed by PID on drop.
struct Function {
    api: Arc<RuntimeApi>,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Function {
    async fn start(deployment: &Deployment) -> Function {
        Self::start_on(Arc::new(RuntimeApi::start().await), deployment)
    }

    /// The function on a Runtime API that something else (a WebSocket
    /// API) also invokes it through.
    fn start_on(api: Arc<RuntimeApi>, deployment: &Deployment) -> Function {
        let (child, log) = spawn(&mut command(Some(&api), &deployment.env));
        Function { api, child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// One invocation, answered by the function. Fails if the process
    /// exits first, or if no answer comes within a minute.
    async fn invoke(&mut self, event: Value) -> Outcome {
        let mut answer = self.api.invoke(event);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            tokio::select! {
                outcome = &mut answer => return outcome.expect("the emulator dropped the invocation"),
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    if let Some(status) = self.child.try_wait().unwrap() {
                        panic!("streamcap-lambda exited ({status}) during an invocation:\n{}", self.log());
                    }
                    assert!(Instant::now() < deadline, "no answer to an invocation within 60 s:\n{}", self.log());
                }
            }
        }
    }

    /// An HTTP request through API Gateway and the function.
    async fn call(&mut self, req: Http) -> Reply {
        match self.invoke(req.event()).await {
            Outcome::Response(res) => reply(&res),
            other => panic!("the invocation failed: {other:?}\n{}", self.log()),
        }
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd`, collecting its stderr.
fn spawn(cmd: &mut Command) -> (Child, Arc<Mutex<String>>) {
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    (child, log)
}

/// Runs a function that must exit at start, before it asks for any event:
/// its status, its stderr, and the Runtime API it was given (to see what
/// it reported).
async fn run_to_exit(deployment: &Deployment, with_runtime_api: bool) -> (ExitStatus, String, RuntimeApi) {
    let api = RuntimeApi::start().await;
    let (mut child, log) = spawn(&mut command(with_runtime_api.then_some(&api), &deployment.env));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let serving = api.polls() > 0;
        if serving || Instant::now() > deadline {
            let _ = child.kill();
            let why = if serving { "asked for an event instead of exiting" } else { "did not exit within 30 s" };
            panic!("streamcap-lambda {why}:\n{}", log.lock().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The reader thread sees EOF once the process is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&log) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = log.lock().unwrap().clone();
    (status, log, api)
}

/// Asserts a refusal at start, before any event is asked for: exit 2,
/// `expected` on stderr in one line without a panic, and the same message
/// reported as an init error.
async fn assert_refused(deployment: &Deployment, expected: &str) {
    let (status, stderr, api) = run_to_exit(deployment, true).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("streamcap-lambda: ") && stderr.contains(expected), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let reported = api.init_errors();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0].error_type.as_deref(), Some("Runtime.ConfigInvalid"));
    assert_eq!(reported[0].body["errorType"], "Runtime.ConfigInvalid");
    let message = reported[0].body["errorMessage"].as_str().unwrap();
    assert!(stderr.trim_end().ends_with(message), "{message:?} vs {stderr:?}");
}

/// One HTTP request, as API Gateway hands it to the function.
struct Http {
    method: &'static str,
    target: String,
    stage: &'static str,
    headers: BTreeMap<String, String>,
    body: Option<Value>,
    base64: bool,
}

impl Http {
    fn new(method: &'static str, target: &str) -> Http {
        Http { method, target: target.into(), stage: "$default", headers: BTreeMap::new(), body: None, base64: false }
    }

    fn get(target: &str) -> Http {
        Self::new("GET", target)
    }

    fn put(target: &str) -> Http {
        Self::new("PUT", target)
    }

    fn delete(target: &str) -> Http {
        Self::new("DELETE", target)
    }

    fn bearer(self, credential: &str) -> Http {
        self.header("authorization", &format!("Bearer {credential}"))
    }

    fn header(mut self, name: &str, value: &str) -> Http {
        self.headers.insert(name.into(), value.into());
        self
    }

    fn json(mut self, body: Value) -> Http {
        self.body = Some(body);
        self.header("content-type", "application/json")
    }

    /// With the body base64-encoded, as API Gateway sends bodies it does
    /// not take for text.
    fn base64(mut self) -> Http {
        self.base64 = true;
        self
    }

    /// Through a named stage: the path, which must start with it, is what
    /// API Gateway puts in `rawPath`.
    fn stage(mut self, stage: &'static str) -> Http {
        self.stage = stage;
        self
    }

    /// The API Gateway HTTP API event, payload format 2.0.
    fn event(&self) -> Value {
        let (path, query) = self.target.split_once('?').unwrap_or((&self.target, ""));
        let host = "abc123.execute-api.us-east-1.amazonaws.com";
        let mut headers = json!({
            "host": host,
            "user-agent": "streamcap-lambda-test",
            "x-forwarded-for": "192.0.2.7",
            "x-forwarded-proto": "https",
        });
        for (k, v) in &self.headers {
            headers[k] = json!(v);
        }
        let mut event = json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": query,
            "headers": headers,
            "requestContext": {
                "accountId": "123456789012",
                "apiId": "abc123",
                "domainName": host,
                "domainPrefix": "abc123",
                "http": {
                    "method": self.method,
                    "path": path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": "192.0.2.7",
                    "userAgent": "streamcap-lambda-test",
                },
                "requestId": "JKJaXmPLvHcESHA=",
                "routeKey": "$default",
                "stage": self.stage,
                "time": "01/Jan/2026:00:00:00 +0000",
                "timeEpoch": 1_767_225_600_000_u64,
            },
            "isBase64Encoded": self.base64,
        });
        if let Some(body) = &self.body {
            let text = body.to_string();
            event["body"] = match self.base64 {
                true => json!(base64::engine::general_purpose::STANDARD.encode(text)),
                false => json!(text),
            };
        }
        event
    }
}

/// An API Gateway v2 response, as the client would get it.
fn reply(res: &Value) -> Reply {
    let status = res["statusCode"].as_u64().unwrap_or_else(|| panic!("no statusCode: {res}")) as u16;
    let mut headers = HeaderMap::new();
    for (name, value) in res["headers"].as_object().into_iter().flatten() {
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
        headers.insert(name, HeaderValue::from_str(value.as_str().unwrap()).unwrap());
    }
    let text = match res.get("body").and_then(Value::as_str) {
        Some(b) if res["isBase64Encoded"] == true => {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
        }
        Some(b) => b.to_owned(),
        None => String::new(),
    };
    Reply { status, headers, text }
}

fn token(sub: &str, secret: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 300;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": sub, "exp": exp }),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array().unwrap().iter().map(|l| l["stream_id"].as_str().unwrap()).collect()
}

fn assert_401(r: &Reply) {
    r.assert_problem(401, "unauthorized");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer"), "WWW-Authenticate: {challenge:?}");
}

/// Acquire, renew, refusal, release and auth failures, through API Gateway
/// events, on the store `deployment` names.
async fn acquire_renew_refuse_release_and_auth(deployment: Deployment) {
    let deployment = with_auth(deployment)
        .with("STREAMCAP_DEFAULT_LIMIT", "2")
        .with("STREAMCAP_LOG_FORMAT", "json")
        // The edge logs each finished request at debug.
        .with("RUST_LOG", "info,streamcap=debug");
    let mut f = Function::start(&deployment).await;
    let alice = token("alice", JWT_SECRET);
    let tv = "/v1/users/alice/streams/tv";

    // Acquire: 201, the lease, and where it lives.
    let r = f.call(Http::put(tv).bearer(&alice).json(json!({ "device_id": "tv-1" }))).await;
    assert_eq!(r.status, 201, "{r:?}\n{}", f.log());
    assert_eq!(r.header("location"), Some(tv));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-request-id").map(str::len), Some(36), "{r:?}");
    let lease = r.json();
    assert_eq!((lease["user_id"].as_str(), lease["stream_id"].as_str()), (Some("alice"), Some("tv")));
    assert_eq!(lease["device_id"], "tv-1");
    assert_eq!((lease["active_streams"].as_u64(), lease["limit"].as_u64()), (Some(1), Some(2)));
    assert_eq!(lease["ttl_seconds"], 60);

    // Renew: 200, same start, same metadata.
    let r = f.call(Http::put(tv).bearer(&alice)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["started_at"], lease["started_at"]);
    assert_eq!(r.json()["device_id"], "tv-1");
    assert_eq!(r.json()["active_streams"], 1);

    // Full, then refused: 409 with the limit and the live streams.
    let phone = Http::put("/v1/users/alice/streams/phone").bearer(&alice).json(json!({ "device_id": "phone-1" }));
    let r = f.call(phone.base64()).await;
    assert_eq!((r.status, r.json()["active_streams"].as_u64()), (201, Some(2)), "{r:?}");
    let r = f.call(Http::put("/v1/users/alice/streams/laptop").bearer(&alice)).await;
    let problem = r.assert_problem(409, "stream-limit-reached");
    assert_eq!(problem["limit"], 2);
    assert_eq!(ids(&problem["active_streams"]), ["tv", "phone"]);
    assert_eq!(problem["active_streams"][0]["device_id"], "tv-1");
    assert_eq!(problem["active_streams"][1]["device_id"], "phone-1");

    // Release: 204 with no body, twice; the seat is free again.
    for _ in 0..2 {
        let r = f.call(Http::delete("/v1/users/alice/streams/phone").bearer(&alice)).await;
        assert_eq!((r.status, r.text.as_str()), (204, ""), "{r:?}");
    }
    let r = f.call(Http::put("/v1/users/alice/streams/laptop").bearer(&alice)).await;
    assert_eq!(r.status, 201, "{r:?}");

    // The API key from the bundled file acts for any user.
    let r = f.call(Http::get("/v1/users/alice/streams").bearer(SERVICE_KEY)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(ids(&r.json()["active_streams"]), ["tv", "laptop"]);

    // Auth failures: 401 problems with a Bearer challenge, 403 for
    // another user's streams; none reaches the store.
    assert_401(&f.call(Http::put(tv)).await);
    assert_401(&f.call(Http::put(tv).bearer(&token("alice", "another-secret-that-is-32-bytes-long!!"))).await);
    assert_401(&f.call(Http::get("/v1/users/alice/streams").bearer("not-a-configured-key")).await);
    f.call(Http::put(tv).bearer(&token("bob", JWT_SECRET))).await.assert_problem(403, "forbidden");

    // Through a named stage: the router sees the API's path, and the
    // Location carries the stage the client called.
    let r = f.call(Http::put("/prod/v1/users/carol/streams/x").stage("prod").bearer(&token("carol", JWT_SECRET))).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("location"), Some("/prod/v1/users/carol/streams/x"));

    // The rest of the router: the request id echoed, the store ready,
    // problems for unknown paths; /metrics is not served on Lambda.
    let r = f.call(Http::get("/readyz").header("x-request-id", "lambda-test-7")).await;
    assert_eq!((r.status, r.header("x-request-id")), (200, Some("lambda-test-7")), "{r:?}");
    f.call(Http::get("/nowhere")).await.assert_problem(404, "not-found");
    f.call(Http::get("/metrics")).await.assert_problem(404, "not-found");

    // An event that is not an HTTP API request fails that invocation only.
    match f.invoke(json!({ "hello": "world" })).await {
        Outcome::Error { error_type, body } => {
            assert!(error_type.is_some() && body["errorMessage"].is_string(), "{error_type:?} {body}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.call(Http::get("/livez")).await.status, 200);

    // JSON log lines, each request inside a span that names its
    // invocation; no secret in them.
    let log = f.log();
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("{l}"))).collect();
    assert!(lines.iter().any(|l| l["fields"]["message"] == "serving Lambda invocations"), "{log}");
    let finished: Vec<&Value> = lines.iter().filter(|l| l["fields"]["message"] == "request finished").collect();
    assert!(!finished.is_empty(), "{log}");
    for line in finished {
        let invocation = &line["spans"][0];
        assert_eq!(invocation["name"], "Lambda runtime invoke", "{line}");
        assert!(invocation["requestId"].as_str().unwrap().starts_with("8476a536-e9f4-11e8-9739-"), "{line}");
        assert_eq!(line["span"]["name"], "request", "{line}");
    }
    for secret in [JWT_SECRET, SERVICE_KEY, alice.as_str()] {
        assert!(!log.contains(secret), "a secret reached the log:\n{log}");
    }
}

#[tokio::test]
async fn on_redis_acquire_renew_refuse_release_and_auth() {
    acquire_renew_refuse_release_and_auth(redis()).await;
}

#[cfg(feature = "dynamodb")]
#[tokio::test]
async fn on_dynamodb_acquire_renew_refuse_release_and_auth() {
    acquire_renew_refuse_release_and_auth(dynamodb()).await;
}

#[tokio::test]
async fn the_memory_store_is_refused_at_start() {
    assert_refused(
        &with_auth(Deployment::new(&[("STREAMCAP_STORE", "memory")])),
        "store \"memory\" cannot serve on Lambda",
    )
    .await;
}

#[tokio::test]
async fn the_sqlite_store_is_refused_at_start_also_as_the_default() {
    let expected = "store \"sqlite\" cannot serve on Lambda: set STREAMCAP_STORE to dynamodb or redis";
    assert_refused(&with_auth(Deployment::new(&[("STREAMCAP_STORE", "sqlite")])), expected).await;
    assert_refused(&with_auth(Deployment::new(&[])), expected).await;
}

#[tokio::test]
async fn no_authentication_is_refused_without_insecure_no_auth() {
    // The store is never reached: the refusal comes first.
    let nowhere = Deployment::new(&[("STREAMCAP_STORE", "redis"), ("STREAMCAP_REDIS_URL", "redis://127.0.0.1:1")]);
    assert_refused(&nowhere, "refusing to serve without authentication on Lambda").await;
    assert_refused(&nowhere.with("STREAMCAP_INSECURE_NO_AUTH", "false"), "STREAMCAP_INSECURE_NO_AUTH=true").await;
}

#[tokio::test]
async fn no_authentication_serves_with_insecure_no_auth_and_a_loud_warning() {
    let deployment = redis().with("STREAMCAP_INSECURE_NO_AUTH", "true");
    let mut f = Function::start(&deployment).await;
    let r = f.call(Http::put("/v1/users/dave/streams/tv")).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(f.log().contains("!!! INSECURE: serving WITHOUT AUTHENTICATION on Lambda"), "{}", f.log());
}

#[tokio::test]
async fn an_unreachable_store_is_reported_as_an_init_error() {
    let deployment =
        with_auth(Deployment::new(&[("STREAMCAP_STORE", "redis"), ("STREAMCAP_REDIS_URL", "redis://127.0.0.1:1")]));
    let (status, stderr, api) = run_to_exit(&deployment, true).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect to redis"), "{stderr}");
    let reported = api.init_errors();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0].error_type.as_deref(), Some("Runtime.InitError"));
    assert!(reported[0].body["errorMessage"].as_str().unwrap().contains("cannot connect to redis"), "{reported:?}");
}

#[tokio::test]
async fn outside_lambda_it_says_so_in_one_line() {
    let deployment =
        with_auth(Deployment::new(&[("STREAMCAP_STORE", "redis"), ("STREAMCAP_REDIS_URL", "redis://127.0.0.1:1")]));
    let (status, stderr, _) = run_to_exit(&deployment, false).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("streamcap-lambda: AWS_LAMBDA_RUNTIME_API is not set"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[cfg(feature = "dynamodb")]
#[tokio::test]
async fn a_missing_table_is_reported_as_a_configuration_error() {
    use common::dynamodb::{CLIENT_ENV, DynamoLocal};
    let deployment = with_auth(
        Deployment::new(&CLIENT_ENV)
            .with("STREAMCAP_STORE", "dynamodb")
            .with("STREAMCAP_DYNAMODB_TABLE", "no-such-table")
            .with("STREAMCAP_DYNAMODB_ENDPOINT", &DynamoLocal::shared().endpoint()),
    );
    let (status, stderr, api) = run_to_exit(&deployment, true).await;
    assert_ne!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("no-such-table") && stderr.contains("does not exist"), "{stderr}");
    let reported = api.init_errors();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0].error_type.as_deref(), Some("Runtime.ConfigInvalid"), "{reported:?}");
}

#[path = "common/gateway.rs"]
mod gateway;

/// A player's WebSocket through the API Gateway WebSocket front.
mod player {
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::{self, Message};

    use crate::common::ws::WAIT;
    pub use crate::common::ws::Ws;

    /// Connects with `query` and the subprotocols `protocols`: the socket,
    /// and the subprotocol chosen; or the status that refused the upgrade.
    pub async fn connect(url: &str, query: &str, protocols: &str) -> Result<(Ws, Option<String>), u16> {
        let mut req = format!("{url}?{query}").into_client_request().unwrap();
        if !protocols.is_empty() {
            req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(protocols).unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, res)) => {
                let chosen = res.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_owned());
                Ok((ws, chosen))
            }
            Err(tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
            Err(e) => panic!("{url}?{query}: {e}"),
        }
    }

    /// A browser's subprotocols: `streamcap.v1` and the bearer token.
    pub fn bearer(token: &str) -> String {
        format!("streamcap.v1, streamcap.bearer.{token}")
    }

    pub async fn send(ws: &mut Ws, kind: &str) {
        ws.send(Message::text(json!({ "type": kind }).to_string())).await.unwrap();
    }

    /// Sends `kind` and reads the answer, which must be of type `answer`.
    pub async fn ask(ws: &mut Ws, kind: &str, answer: &str) -> Value {
        send(ws, kind).await;
        crate::common::ws::expect(ws, answer).await
    }

    /// Waits for the server to close the socket (a `DeleteConnection`).
    pub async fn closed(ws: &mut Ws) {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => panic!("not closed within {WAIT:?}"),
            Ok(Some(Ok(Message::Close(_))) | None | Some(Err(_))) => {}
            Ok(Some(Ok(other))) => panic!("expected the close, got {other:?}"),
        }
    }
}

/// The function behind both an HTTP API and a WebSocket API, on the store
/// `deployment` names: one Runtime API feeds it both kinds of events.
struct Stack {
    f: Function,
    ws: gateway::WebSocketApi,
    /// The store and the files the function uses, alive as long as it.
    _deployment: Deployment,
}

impl Stack {
    async fn start(deployment: Deployment) -> Stack {
        let api = Arc::new(RuntimeApi::start().await);
        let invoker = api.clone();
        let invoke: gateway::Invoke = Arc::new(move |event| {
            let answer = invoker.invoke(event);
            Box::pin(async move {
                match answer.await {
                    Ok(Outcome::Response(value)) => Ok(value),
                    Ok(Outcome::Error { body, .. }) => Err(body),
                    Err(_) => Err(json!({ "errorMessage": "the emulator dropped the invocation" })),
                }
            })
        });
        let ws = gateway::WebSocketApi::start(invoke).await;
        let deployment = deployment
            .with("STREAMCAP_WEBSOCKET_ENDPOINT", &ws.endpoint())
            // The SDK signs the @connections calls; the front takes any signature.
            .with("AWS_ACCESS_KEY_ID", "streamcaptest")
            .with("AWS_SECRET_ACCESS_KEY", "streamcaptest")
            .with("AWS_EC2_METADATA_DISABLED", "true");
        Stack { f: Function::start_on(api, &deployment), ws, _deployment: deployment }
    }

    /// The streams of `user` that the store holds live, through the HTTP API.
    async fn live(&mut self, user: &str) -> Vec<String> {
        let r = self.f.call(Http::get(&format!("/v1/users/{user}/streams")).bearer(SERVICE_KEY)).await;
        assert_eq!(r.status, 200, "{r:?}");
        ids(&r.json()["active_streams"]).into_iter().map(str::to_owned).collect()
    }

    /// Waits until the front has invoked `$disconnect` `n` times in all.
    /// Whatever the test asks the function next is queued after them.
    async fn disconnects(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ws.counts().invocations.get("$disconnect").copied().unwrap_or(0) < n {
            assert!(Instant::now() < deadline, "no $disconnect: {:?}", self.ws.counts());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The TTL of connection-held leases in these tests: short, so that a
/// lease outlives it only by being renewed, and a lost `$disconnect`
/// expires within the test.
const SOCKET_TTL: u64 = 3;

/// Socket-held leases through an API Gateway WebSocket API, end to end:
/// refusals at the connect, grant and refusal, renewal past the TTL, a
/// take-over from the HTTP API pushed to the socket, a `$disconnect` that
/// releases, a stale one that does not, and a lost one that expires.
async fn socket_held_leases(deployment: Deployment) {
    let deployment = with_auth(deployment)
        .with("STREAMCAP_DEFAULT_LIMIT", "2")
        .with("STREAMCAP_SOCKET_LEASE_TTL", &SOCKET_TTL.to_string());
    let mut s = Stack::start(deployment).await;
    let url = s.ws.url();
    let alice = token("alice", JWT_SECRET);
    let me = player::bearer(&alice);

    // A bad token, no credential, another user's stream, a bad id and a
    // foreign subprotocol refuse the upgrade with the `PUT`'s status.
    let forged = player::bearer(&token("alice", "another-secret-that-is-32-bytes-long!!"));
    assert_eq!(player::connect(&url, "stream=tv", &forged).await.err(), Some(401), "{}", s.f.log());
    assert_eq!(player::connect(&url, "stream=tv", "streamcap.v1").await.err(), Some(401));
    assert_eq!(player::connect(&url, "stream=tv&user=bob", &me).await.err(), Some(403));
    assert_eq!(player::connect(&url, "stream=bad%20id", &me).await.err(), Some(400));
    assert_eq!(player::connect(&url, "stream=tv", "chat").await.err(), Some(400));
    assert_eq!(player::connect(&url, "stream=tv&colour=red", &me).await.err(), Some(400));

    // Granted: `start` answers with the `PUT`'s body, for the socket TTL;
    // the subprotocol chosen is streamcap.v1, never the bearer one.
    let (mut tv, chosen) = player::connect(&url, "stream=tv&device_id=tv-1", &me).await.unwrap();
    assert_eq!(chosen.as_deref(), Some("streamcap.v1"));
    let granted = player::ask(&mut tv, "start", "granted").await;
    assert_eq!((granted["user_id"].as_str(), granted["stream_id"].as_str()), (Some("alice"), Some("tv")), "{granted}");
    assert_eq!(granted["ttl_seconds"], SOCKET_TTL);
    assert_eq!(granted["device_id"], "tv-1");

    // Renewed over the socket past its TTL: the lease lives on.
    let renewals = SOCKET_TTL * 2;
    for _ in 0..renewals {
        tokio::time::sleep(Duration::from_millis(SOCKET_TTL * 1000 / 3)).await;
        let renewed = player::ask(&mut tv, "renew", "renewed").await;
        assert_eq!(renewed["active_streams"], 1, "{renewed}");
    }
    assert_eq!(s.live("alice").await, ["tv"]);
    // Anything else is an error, and the socket stays open.
    let error = player::ask(&mut tv, "dance", "error").await;
    assert_eq!(error["status"], 400, "{error}");

    // A service's connect acts for any user; the account is then full, and
    // the next stream is refused and closed.
    let service = format!("Bearer {SERVICE_KEY}");
    let mut req = format!("{url}?stream=phone&user=alice").into_client_request().unwrap();
    req.headers_mut().insert("authorization", service.parse().unwrap());
    let (mut phone, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(player::ask(&mut phone, "start", "granted").await["active_streams"], 2);
    let (mut laptop, _) = player::connect(&url, "stream=laptop", &me).await.unwrap();
    let refused = player::ask(&mut laptop, "start", "refused").await;
    assert_eq!(refused["status"], 409, "{refused}");
    assert_eq!(refused["limit"], 2, "{refused}");
    player::closed(&mut laptop).await;

    // A take-over through the HTTP API is pushed to the socket at once.
    let r =
        s.f.call(Http::put("/v1/users/alice/streams/laptop").bearer(&alice).json(json!({ "evict": ["phone"] }))).await;
    assert_eq!(r.status, 201, "{r:?}");
    let revoked = common::ws::expect(&mut phone, "revoked").await;
    assert_eq!(
        (revoked["reason"].as_str(), revoked["by_stream_id"].as_str()),
        (Some("evicted_by_new_stream"), Some("laptop"))
    );
    player::closed(&mut phone).await;
    let mut seen = 3; // laptop's refusal, phone's revocation: two deletes; and the tv's close to come
    s.disconnects(seen - 1).await;

    // Closing the socket releases its lease.
    common::ws::stop(tv).await;
    s.disconnects(seen).await;
    assert_eq!(s.live("alice").await, ["laptop"]);

    // A new connection for the same stream takes the lease over from the
    // old one (as a player does at API Gateway's two-hour limit), and the
    // old one's late $disconnect does not release it.
    let (mut old, _) = player::connect(&url, "stream=tv", &me).await.unwrap();
    let first = player::ask(&mut old, "start", "granted").await;
    let (mut new, _) = player::connect(&url, "stream=tv", &me).await.unwrap();
    let second = player::ask(&mut new, "start", "granted").await;
    assert_eq!(second["started_at"], first["started_at"], "the same lease: {second}");
    let replaced = common::ws::expect(&mut old, "revoked").await;
    assert_eq!((replaced["reason"].as_str(), replaced["by_stream_id"].as_str()), (Some("replaced"), Some("tv")));
    player::closed(&mut old).await;
    seen += 1;
    s.disconnects(seen).await;
    assert_eq!(s.live("alice").await, ["laptop", "tv"]);
    player::ask(&mut new, "renew", "renewed").await;

    // A $disconnect that never comes: the lease expires at its TTL.
    s.ws.lose_disconnects(true);
    common::ws::stop(new).await;
    assert_eq!(s.live("alice").await, ["laptop", "tv"]);
    tokio::time::sleep(Duration::from_secs(SOCKET_TTL + 1)).await;
    assert_eq!(s.live("alice").await, ["laptop"]);
    assert_eq!(s.ws.counts().invocations.get("$disconnect").copied(), Some(seen));
    s.ws.lose_disconnects(false);

    // What one viewer's socket costs, counted at the front: a connection
    // with its start, three renewals and its close.
    let before = s.ws.counts();
    let (mut viewer, _) = player::connect(&url, "stream=counted", &me).await.unwrap();
    player::ask(&mut viewer, "start", "granted").await;
    for _ in 0..3 {
        player::ask(&mut viewer, "renew", "renewed").await;
    }
    common::ws::stop(viewer).await;
    s.disconnects(seen + 1).await;
    let after = s.ws.counts();
    let delta = |route: &str| after.invocations.get(route).unwrap_or(&0) - before.invocations.get(route).unwrap_or(&0);
    let counted = [delta("authorizer"), delta("$connect"), delta("$default"), delta("$disconnect")];
    let messages = (after.messages_in - before.messages_in, after.messages_out - before.messages_out);
    assert_eq!(counted, [1, 1, 4, 1], "invocations: authorizer, $connect, $default, $disconnect");
    assert_eq!(messages, (4, 4), "messages in and out");
    let per_renewal = (1, 1, 1);
    let per_connection = (counted.iter().sum::<u64>() - 3, messages.0 - 3, messages.1 - 3);
    eprintln!(
        "counted: a renewal is {} invocation, {} message in and {} out; a connection adds {} invocations, \
         {} message in and {} out",
        per_renewal.0, per_renewal.1, per_renewal.2, per_connection.0, per_connection.1, per_connection.2
    );

    let log = s.f.log();
    assert!(!log.contains("panicked") && !log.contains("posting to a WebSocket connection failed"), "{log}");
    for secret in [JWT_SECRET, SERVICE_KEY, alice.as_str()] {
        assert!(!log.contains(secret), "a secret reached the log:\n{log}");
    }
}

/// The JavaScript client in its lambda-websocket mode, its node tests
/// (clients/js/test-lambda/) against the function behind the WebSocket
/// front, on Redis.
#[tokio::test]
async fn the_js_client_holds_leases_in_lambda_socket_mode() {
    let limit = 2;
    let deployment = with_auth(redis())
        .with("STREAMCAP_DEFAULT_LIMIT", &limit.to_string())
        .with("STREAMCAP_SOCKET_LEASE_TTL", &SOCKET_TTL.to_string());
    let s = Stack::start(deployment).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut node = Command::new("node");
    let version =
        Command::new("node").arg("--version").output().expect("node is not installed; ./scripts/test installs it");
    let major: u32 = String::from_utf8_lossy(&version.stdout)
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    if major < 22 {
        node.arg("--experimental-websocket");
    }
    node.args([
        "--test",
        "--test-reporter=tap",
        "--test-timeout=120000",
        "clients/js/test-lambda/lambda-socket.test.js",
    ])
    .current_dir(root)
    .env("STREAMCAP_LAMBDA_SOCKET_URL", s.ws.url())
    .env("STREAMCAP_LAMBDA_JWT_SECRET", JWT_SECRET)
    .env("STREAMCAP_LAMBDA_SOCKET_TTL", SOCKET_TTL.to_string())
    .env("STREAMCAP_LAMBDA_LIMIT", limit.to_string());
    // The front and the emulator run on this test's runtime meanwhile.
    let out = tokio::task::spawn_blocking(move || node.output().expect("run node")).await.unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the JS client's lambda tests failed ({}); TAP above; the function's log:\n{}",
        out.status,
        s.f.log()
    );
}

#[tokio::test]
async fn on_redis_socket_held_leases() {
    socket_held_leases(redis()).await;
}

#[cfg(feature = "dynamodb")]
#[tokio::test]
async fn on_dynamodb_socket_held_leases() {
    socket_held_leases(dynamodb()).await;
}
