//! The server's life, written once for both binaries: the store opened,
//! the state built and announced in one start line, the warnings an
//! operator must see, the tidy loop, and the store closed at the end.
//!
//! [`run`] is the whole of `streamcap serve` on a listener it binds;
//! `lambda::run` uses [`open`], [`state`] and [`close`] around the Lambda
//! Runtime API instead. Neither parses flags or picks exit codes: that is
//! the binaries' part.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::http::{self, AppState};
use crate::shutdown;
use crate::store::{OpenFailure, Store, StoreKind};

/// Why serving stopped with an error, or never started.
#[derive(Debug)]
pub enum Failure {
    /// The configuration names a store that cannot work: a configuration
    /// error like any other.
    Misconfigured(String),
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Misconfigured(m) | Self::Other(m) => f.write_str(m),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self::Other(message)
    }
}

impl From<OpenFailure> for Failure {
    fn from(e: OpenFailure) -> Self {
        match e {
            OpenFailure::Misconfigured(m) => Self::Misconfigured(m),
            OpenFailure::Failed(e) => Self::Other(e.to_string()),
        }
    }
}

/// Where the state is served from, as the start line tells it.
#[derive(Clone, Copy, Debug)]
pub enum Host {
    /// `streamcap serve`, listening on this address.
    Listener(SocketAddr),
    /// `streamcap-lambda`, taking invocations from the Runtime API.
    Lambda,
}

/// Opens the configured store on the wall clock.
pub async fn open(config: &Config) -> Result<Store, OpenFailure> {
    Store::open(&config.store, Arc::new(SystemClock)).await
}

/// The state both binaries serve, announced in the one start line, with
/// the insecure-mode and shadow-mode warnings. It takes the policy,
/// credentials and limits out of `config`.
pub fn state(store: Store, config: &Config, host: Host) -> AppState {
    warn_if_open(config, host);
    let mut state = AppState::new(store, config.policy.clone(), config.auth.clone(), config.protection.clone());
    state.demo = config.demo;
    state.console = config.console;
    announce(&state, config, host);
    if !state.policy.enforce {
        tracing::warn!("shadow mode: limits are reported (would_deny) but not enforced");
    }
    state
}

fn warn_if_open(config: &Config, host: Host) {
    if !config.auth.is_open() {
        return;
    }
    match host {
        Host::Listener(_) if !config.insecure_no_auth => {
            tracing::info!("auth mode none: open access, loopback only");
        }
        Host::Listener(_) => tracing::warn!(
            listen = %config.listen,
            "!!! INSECURE: serving WITHOUT AUTHENTICATION on a non-loopback address (--insecure-no-auth). \
             Anyone who can reach this port can release or revoke any user's streams."
        ),
        Host::Lambda => tracing::warn!(
            "!!! INSECURE: serving WITHOUT AUTHENTICATION on Lambda (STREAMCAP_INSECURE_NO_AUTH=true). \
             Anyone who can reach the function's API can acquire, release or revoke any user's streams."
        ),
    }
}

/// The start line: what this process serves, with which store and policy.
fn announce(state: &AppState, config: &Config, host: Host) {
    let policy = &state.policy;
    let (addr, socket_lease_ttl, message) = match host {
        Host::Listener(addr) => (Some(addr), None, "listening"),
        Host::Lambda => (None, Some(config.socket_lease_ttl.as_secs()), "serving Lambda invocations"),
    };
    tracing::info!(
        addr = addr.map(tracing::field::display),
        instance = %state.instance,
        store = config.store.kind.name(),
        redis_mode = config.store.redis_mode.name(),
        on_store_error = policy.on_store_error.name(),
        default_limit = policy.default_limit.get(),
        lease_ttl = policy.lease_ttl.as_secs(),
        socket_lease_ttl,
        on_limit = policy.on_limit.name(),
        plans = policy.plans.len(),
        rules = policy.rules.len(),
        plan_rules = policy.plan_rules.len(),
        enforce = policy.enforce,
        "{message}"
    );
    if config.store.kind == StoreKind::Dynamodb {
        tracing::info!(
            table = %config.store.dynamodb_table,
            endpoint = config.store.dynamodb_endpoint.as_deref().unwrap_or("the region's"),
            "dynamodb store"
        );
    }
}

/// Closes the store, even when serving failed, then reports the first
/// failure: serving's, else closing's.
pub async fn close(store: &Store, served: Result<(), String>) -> Result<(), Failure> {
    let closed = store.close().await;
    served?;
    closed.map_err(|e| format!("closing the store: {e}"))?;
    Ok(())
}

/// `streamcap serve`: opens the store, binds the listeners, serves until
/// SIGTERM or SIGINT, lets in-flight requests finish and closes the store.
pub async fn run(config: Config) -> Result<(), Failure> {
    // The store first: when it cannot open, its error is the only line.
    let store = open(&config).await?;
    let listener =
        TcpListener::bind(&config.listen).await.map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut state = state(store.clone(), &config, Host::Listener(addr));
    for (on, page, what) in [(config.demo, "demo", "the demo page"), (config.console, "console", "the support console")]
    {
        if on {
            tracing::info!(url = %format_args!("http://{addr}/{page}"), "serving {what}");
        }
    }
    let until_stopped = stop_on_signal();
    let metrics_server = match &config.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
            let metrics_addr = l.local_addr().map_err(|e| e.to_string())?;
            tracing::info!(addr = %metrics_addr, "serving /metrics");
            state.expose_metrics = false;
            Some(tokio::spawn(http::serve_metrics(l, until_stopped())))
        }
        None => None,
    };
    let served = http::serve(listener, state, until_stopped()).await;
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    close(&store, served.map_err(|e| format!("server error: {e}"))).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// One signal stops every listener: each call of the returned function is
/// a future that resolves once SIGTERM or SIGINT has arrived.
fn stop_on_signal() -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown::signal().await;
        stop.send_replace(true);
    });
    move || {
        let mut stopped = stopped.clone();
        Box::pin(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
    }
}
