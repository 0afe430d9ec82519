//! streamcap on AWS Lambda: the router of [`http::app`], edge and all,
//! served through the Lambda Runtime API, for API Gateway HTTP API events
//! (payload format 2.0, converted by `lambda_http`) and function URLs; and
//! WebSocket-held leases for the events of an API Gateway WebSocket API
//! and its `$connect` authorizer (`socket`), which one function serves
//! beside the HTTP API. Each event is told apart by its fields.
//!
//! This module owns what differs from `serve`, and nothing else:
//!
//! - The configuration comes from the environment alone: the same
//!   `STREAMCAP_*` variables (and the file `STREAMCAP_CONFIG` names, which
//!   may be bundled with the function), read by `config`. No address is
//!   listened on.
//! - The store must be one that every instance shares and that expires
//!   state by itself, dynamodb or redis ([`STORES`]), so that no instance
//!   runs a sweeper: expiry happens on write, and key expiry or TTL clears
//!   the rest. Memory and sqlite are refused at start.
//! - Auth mode `none` is refused unless `STREAMCAP_INSECURE_NO_AUTH=true`:
//!   a function behind API Gateway has no loopback to hide on.
//! - The router sees the API's own path: the event's `rawPath`, without the
//!   prefix a named stage puts there (see `api_path`).
//! - The peer address of a request, for the limit on failed
//!   authentication, is the event's `requestContext.http.sourceIp`.
//!
//! - Leases held by WebSocket connections live `socket_lease_ttl`, and
//!   losses of such leases are posted to their connections through the
//!   `@connections` API at the endpoint `STREAMCAP_WEBSOCKET_ENDPOINT`
//!   names (`push`), before the invocation that decided them answers.
//!
//! It builds no HTTP response of its own: every answer, error or not, is
//! the router's. A refusal at start is one line on stderr, reported to the
//! Runtime API as an init error, and a non-zero exit before any event is
//! taken.

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Uri, header};
use axum::response::Response;
use lambda_http::lambda_runtime::{self, LambdaEvent};
use lambda_http::request::{LambdaRequest, RequestContext};
use lambda_http::{RequestExt, Service};
use serde_json::Value;
use tower::ServiceExt;

use crate::config::{self, Config, Invocation};
use crate::http::{self, AppState};
use crate::server;
use crate::store::{OpenFailure, Store, StoreKind};

mod push;
mod socket;

/// The stores a function may use. Both are shared by every instance, and
/// both expire state by themselves (Redis key expiry, DynamoDB's TTL
/// attribute), so `Store::open` starts no sweeper for them; a sweeper
/// would run in every frozen and thawed instance, and over DynamoDB it
/// would need a Scan that the function's IAM policy does not grant.
pub const STORES: [StoreKind; 2] = [StoreKind::Dynamodb, StoreKind::Redis];

/// The Runtime API's address, set by Lambda.
const RUNTIME_API: &str = "AWS_LAMBDA_RUNTIME_API";

/// Reads and checks the configuration: no arguments, the Lambda
/// environment present, the `STREAMCAP_*` settings valid, and the Lambda
/// rules (the store, auth) met. The error is one line for an operator.
pub fn configure<I>(mut args: I) -> Result<Config, String>
where
    I: Iterator<Item = std::ffi::OsString>,
{
    let program = args.next().unwrap_or_else(|| "streamcap-lambda".into());
    if args.next().is_some() {
        return Err("takes no arguments; it is configured by STREAMCAP_* environment variables".into());
    }
    check_environment()?;
    let config = match config::from_args([program]).map_err(|e| e.to_string())? {
        Invocation::Serve(config) => *config,
        Invocation::PrintOpenapi | Invocation::Printed | Invocation::CreateDynamodbTable { .. } => {
            return Err("takes no command".into());
        }
    };
    check(&config)?;
    Ok(config)
}

/// The variables Lambda sets for a function's runtime. `lambda_runtime`
/// panics without them; this says what is wrong in one line instead.
fn check_environment() -> Result<(), String> {
    for var in [RUNTIME_API, "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION"] {
        if std::env::var_os(var).is_none() {
            return Err(format!(
                "{var} is not set: streamcap-lambda runs inside AWS Lambda (or a Runtime API emulator), \
                 which sets it; to serve HTTP directly, run `streamcap serve`"
            ));
        }
    }
    let memory = "AWS_LAMBDA_FUNCTION_MEMORY_SIZE";
    match std::env::var(memory).map(|m| m.parse::<i32>()) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(format!("{memory} is not a number of megabytes")),
        Err(_) => Err(format!("{memory} is not set: streamcap-lambda runs inside AWS Lambda, which sets it")),
    }
}

/// The rules a Lambda function adds to `serve`'s.
fn check(config: &Config) -> Result<(), String> {
    let kind = config.store.kind;
    if !STORES.contains(&kind) {
        return Err(format!(
            "store {:?} cannot serve on Lambda: set STREAMCAP_STORE to dynamodb or redis \
             (a store that every instance shares and that expires leases by itself)",
            kind.name()
        ));
    }
    if config.auth.is_open() && !config.insecure_no_auth {
        return Err("refusing to serve without authentication on Lambda: set STREAMCAP_AUTH_MODE=jwt, \
                    or list API keys ([[auth.api_keys]] in the STREAMCAP_CONFIG file), \
                    or set STREAMCAP_INSECURE_NO_AUTH=true"
            .into());
    }
    Ok(())
}

/// Opens the store and serves invocations until the Runtime API fails.
/// A store that cannot be opened is reported as an init error.
pub async fn run(config: Config) -> Result<(), String> {
    if let Some(addr) = &config.metrics_listen {
        tracing::warn!(%addr, "STREAMCAP_METRICS_LISTEN is ignored on Lambda: a function listens on nothing");
    }
    let store = open(&config).await?;
    let mut state = server::state(store.clone(), &config, server::Host::Lambda);
    // One instance's counters, reached through a load balancer that picks
    // instances at random, would mislead; and the API is public.
    state.expose_metrics = false;
    let tidy = http::tidy(&state);
    let gateway = gateway(&state, &config).await;
    let served = serve(state, gateway).await;
    tidy.abort();
    server::close(&store, served.map_err(|e| format!("the Lambda Runtime API failed: {e}")))
        .await
        .map_err(|e| e.to_string())
}

/// The store, or the init error reported to the Runtime API: a missing
/// table is a configuration error; an unreachable store may heal, and
/// Lambda will try a new instance.
async fn open(config: &Config) -> Result<Store, String> {
    let store = match server::open(config).await {
        Ok(store) => store,
        Err(e) => {
            let kind = match e {
                OpenFailure::Misconfigured(_) => "Runtime.ConfigInvalid",
                OpenFailure::Failed(_) => "Runtime.InitError",
            };
            let e = e.to_string();
            report_init_error(kind, &e);
            return Err(e);
        }
    };
    if store.sweeps() {
        // `STORES` holds only stores that expire by themselves; a sweeper
        // would run in every frozen and thawed instance.
        let e =
            format!("store {:?} would need a background sweeper, which Lambda cannot run", config.store.kind.name());
        report_init_error("Runtime.ConfigInvalid", &e);
        return Err(e);
    }
    Ok(store)
}

/// The WebSocket side: the same state with leases that live
/// `socket_lease_ttl`, and the pusher that tells connections of losses.
async fn gateway(state: &AppState, config: &Config) -> Arc<socket::Gateway> {
    let pusher = push::Pusher::from_env().await;
    if !pusher.is_configured() {
        tracing::warn!(
            "{} is not set: WebSocket connections are not told when their leases are taken; \
             they learn at their next renewal",
            push::ENDPOINT
        );
    }
    // The same state, but leases live socket_lease_ttl: both the acquire
    // and its answer's `ttl_seconds` read the policy's TTL.
    let mut sockets = state.clone();
    sockets.policy = Arc::new(crate::policy::Policy { lease_ttl: config.socket_lease_ttl, ..(*state.policy).clone() });
    let gateway = Arc::new(socket::Gateway { state: sockets, pusher });
    let losses = gateway.clone();
    http::push_to_gateway(move |holder, message| losses.pusher.lost(holder, message));
    gateway
}

/// Takes invocations until the Runtime API fails: WebSocket events to the
/// gateway, the rest through the router.
async fn serve(state: AppState, gateway: Arc<socket::Gateway>) -> Result<(), lambda_runtime::Error> {
    let routed = lambda_http::Adapter::from(handler(http::app(state)));
    lambda_runtime::run(tower::service_fn(move |event: LambdaEvent<Value>| {
        let (gateway, mut routed) = (gateway.clone(), routed.clone());
        async move {
            let LambdaEvent { payload, context } = event;
            match socket::kind(&payload) {
                socket::Kind::Authorizer | socket::Kind::WebSocket => gateway.handle(payload).await,
                socket::Kind::Http => {
                    let request: LambdaRequest =
                        serde_json::from_value(payload).map_err(|e| format!("not an API Gateway event: {e}"))?;
                    let Ok(response) = routed.call(LambdaEvent::new(request, context)).await;
                    // A take-over through the HTTP API tells the
                    // connections that held the taken leases.
                    gateway.pusher.flush().await;
                    serde_json::to_value(response).map_err(|e| format!("the response: {e}"))
                }
            }
        }
    }))
    .await
}

/// `app` as a `lambda_http` service. Each request gets the API's own path,
/// and a `Location` in the answer gets back the stage prefix the path lost.
/// (`lambda_runtime` runs each invocation inside a span named `Lambda
/// runtime invoke` with its `requestId`, so the edge's request span and
/// every log line under it name the invocation.)
fn handler(
    app: Router,
) -> impl Service<
    lambda_http::Request,
    Response = Response,
    Error = Infallible,
    Future: Future<Output = Result<Response, Infallible>> + Send,
> + Clone {
    tower::service_fn(move |mut req: lambda_http::Request| {
        let (stage, source) = match req.request_context_ref() {
            Some(RequestContext::ApiGatewayV2(context)) => {
                (context.stage.clone(), context.http.source_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()))
            }
            _ => (None, None),
        };
        // API Gateway's view of the client stands for the peer address
        // that `serve` gets from the connection: the source of the
        // request for the limit on failed authentication.
        if let Some(ip) = source {
            req.extensions_mut().insert(ConnectInfo(SocketAddr::new(ip, 0)));
        }
        let (path, prefix) = api_path(req.raw_http_path(), stage.as_deref());
        let prefix = prefix.map(str::to_owned);
        let uri = match req.uri().query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        // A raw path that is not a valid URI path cannot come over HTTP;
        // should one come, the router answers lambda_http's URI instead.
        if let Ok(uri) = Uri::try_from(uri) {
            *req.uri_mut() = uri;
        }
        let app = app.clone();
        async move {
            let Ok(mut res) = app.oneshot(req).await;
            if let Some(prefix) = prefix {
                restage_location(&mut res, &prefix);
            }
            Ok(res)
        }
    })
}

/// The API's own path of an event, and the stage prefix taken off it.
///
/// An HTTP API puts a named stage at the start of `rawPath`
/// (`/prod/v1/…` for the stage `prod`). The `$default` stage has no
/// prefix, and neither has a request through a custom domain's API
/// mapping, so the prefix is taken off only where it is there. (lambda_http's
/// own URI adds the stage where it is missing, which is why the router
/// does not see that URI's path.)
fn api_path<'a>(raw_path: &'a str, stage: Option<&str>) -> (&'a str, Option<&'a str>) {
    let path = if raw_path.is_empty() { "/" } else { raw_path };
    let Some(stage) = stage.filter(|s| !s.is_empty() && *s != "$default") else {
        return (path, None);
    };
    let prefix_len = 1 + stage.len();
    let has_prefix = path.strip_prefix('/').and_then(|p| p.strip_prefix(stage)).is_some_and(|rest| {
        // `/prod` or `/prod/…`, not `/production`.
        rest.is_empty() || rest.starts_with('/')
    });
    match has_prefix {
        true if path.len() == prefix_len => ("/", Some(path)),
        true => (&path[prefix_len..], Some(&path[..prefix_len])),
        false => (path, None),
    }
}

/// A path-absolute `Location` (`/v1/users/…`) names the API's own path;
/// the client reached the API under `prefix`, so it gets that back.
fn restage_location(res: &mut Response, prefix: &str) {
    let Some(location) = res.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()) else { return };
    if !location.starts_with('/') || location.starts_with("//") {
        return;
    }
    if let Ok(v) = HeaderValue::try_from(format!("{prefix}{location}")) {
        res.headers_mut().insert(header::LOCATION, v);
    }
}

/// Tells the Runtime API that initialization failed
/// (`POST /2018-06-01/runtime/init/error`), so that Lambda reports
/// `message` rather than a bare exit status. Best effort, and a no-op
/// outside Lambda: the process exits non-zero either way. Plain HTTP/1.1
/// over std, because it may run before there is an async runtime.
pub fn report_init_error(error_type: &str, message: &str) {
    let Ok(api) = std::env::var(RUNTIME_API) else { return };
    if let Err(e) = post_init_error(&api, error_type, message) {
        eprintln!("streamcap-lambda: could not report the init error to the Runtime API at {api}: {e}");
    }
}

fn post_init_error(api: &str, error_type: &str, message: &str) -> std::io::Result<()> {
    let body = serde_json::json!({ "errorType": error_type, "errorMessage": message, "stackTrace": [] }).to_string();
    let request = format!(
        "POST /2018-06-01/runtime/init/error HTTP/1.1\r\nHost: {api}\r\n\
         Lambda-Runtime-Function-Error-Type: {error_type}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let addr =
        api.to_socket_addrs()?.next().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(request.as_bytes())?;
    let mut head = Vec::new();
    stream.take(64).read_to_end(&mut head)?;
    let status = String::from_utf8_lossy(&head).split_whitespace().nth(1).unwrap_or("").to_owned();
    if !status.starts_with('2') {
        let status = if status.is_empty() { "no status".to_owned() } else { status };
        return Err(std::io::Error::other(format!("answered {status}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::{get, put};

    use super::*;

    #[test]
    fn a_named_stage_prefix_is_taken_off_the_path_and_the_default_stage_has_none() {
        assert_eq!(api_path("/v1/users/a/streams", Some("$default")), ("/v1/users/a/streams", None));
        assert_eq!(api_path("/v1/users/a/streams", None), ("/v1/users/a/streams", None));
        assert_eq!(api_path("/prod/v1/users/a/streams", Some("prod")), ("/v1/users/a/streams", Some("/prod")));
        assert_eq!(api_path("/prod", Some("prod")), ("/", Some("/prod")));
        // A custom domain's mapping leaves the stage out of rawPath.
        assert_eq!(api_path("/v1/users/a/streams", Some("prod")), ("/v1/users/a/streams", None));
        // Only a whole segment is a prefix.
        assert_eq!(api_path("/production/livez", Some("prod")), ("/production/livez", None));
        assert_eq!(api_path("", None), ("/", None));
    }

    /// An HTTP API (payload 2.0) event, parsed as `lambda_http` parses it.
    fn event(stage: &str, method: &str, raw_path: &str, query: &str) -> lambda_http::Request {
        let event = serde_json::json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": raw_path,
            "rawQueryString": query,
            "headers": { "host": "abc123.execute-api.eu-west-1.amazonaws.com" },
            "requestContext": {
                "apiId": "abc123",
                "domainName": "abc123.execute-api.eu-west-1.amazonaws.com",
                "http": { "method": method, "path": raw_path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1" },
                "requestId": "req-1",
                "routeKey": "$default",
                "stage": stage,
            },
            "isBase64Encoded": false,
        });
        lambda_http::request::from_str(&event.to_string()).unwrap()
    }

    /// A router that answers with the path and query it saw, and a
    /// `Location` on PUT.
    fn echo() -> Router {
        let seen = |uri: Uri| async move { uri.path_and_query().map(|p| p.to_string()).unwrap_or_default() };
        let created = |uri: Uri| async move {
            Response::builder().status(201).header(header::LOCATION, uri.path()).body(Body::empty()).unwrap()
        };
        Router::new().route("/v1/users/{user}/streams", get(seen)).route("/v1/users/{user}/streams/{s}", put(created))
    }

    async fn call(req: lambda_http::Request) -> Response {
        handler(echo()).oneshot(req).await.unwrap()
    }

    async fn text(res: Response) -> String {
        String::from_utf8(axum::body::to_bytes(res.into_body(), 1 << 16).await.unwrap().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_router_sees_the_raw_path_and_query_without_the_stage() {
        let res = call(event("$default", "GET", "/v1/users/alice/streams", "plan=gold")).await;
        assert_eq!(text(res).await, "/v1/users/alice/streams?plan=gold");
        let res = call(event("prod", "GET", "/prod/v1/users/alice/streams", "")).await;
        assert_eq!(text(res).await, "/v1/users/alice/streams");
    }

    #[tokio::test]
    async fn the_source_ip_of_the_event_is_the_peer_address_the_router_sees() {
        let peer = |ConnectInfo(addr): ConnectInfo<SocketAddr>| async move { addr.ip().to_string() };
        let app = Router::new().route("/peer", get(peer));
        let res = handler(app).oneshot(event("$default", "GET", "/peer", "")).await.unwrap();
        assert_eq!(text(res).await, "192.0.2.1");
    }

    #[tokio::test]
    async fn a_location_gets_the_stage_prefix_back() {
        let res = call(event("prod", "PUT", "/prod/v1/users/alice/streams/tv", "")).await;
        assert_eq!(res.headers()[header::LOCATION], "/prod/v1/users/alice/streams/tv");
        let res = call(event("$default", "PUT", "/v1/users/alice/streams/tv", "")).await;
        assert_eq!(res.headers()[header::LOCATION], "/v1/users/alice/streams/tv");
    }
}
