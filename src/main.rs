//! The `streamcap` binary: flags/env/file → Config → tracing → Store::open
//! → serve until SIGTERM/SIGINT → close the store. Everything else lives in
//! the library so tests run the very same code.

use std::process::ExitCode;
use std::sync::Arc;

use streamcap::clock::SystemClock;
use streamcap::config::{self, Config, Invocation};
use streamcap::http::{self, AppState};
use streamcap::shutdown;
use streamcap::store::{OpenFailure, Store, StoreKind};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    let config = match config::from_args(std::env::args_os()) {
        Ok(Invocation::Serve(c)) => c,
        Ok(Invocation::Printed) => return ExitCode::SUCCESS,
        Ok(Invocation::CreateDynamodbTable { table, endpoint }) => return create_dynamodb_table(&table, endpoint),
        Ok(Invocation::PrintOpenapi) => {
            return match http::openapi().to_pretty_json() {
                Ok(doc) => {
                    println!("{doc}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("streamcap: cannot render the OpenAPI document: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Err(e) => {
            eprintln!("streamcap: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = streamcap::telemetry::init(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("streamcap: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(*config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            e.exit_code()
        }
    }
}

/// Why `serve` stopped with an error.
enum Failure {
    /// The configuration names a store that cannot work (exit 2, as for
    /// any other configuration error).
    Misconfigured(String),
    Other(String),
}

impl Failure {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Misconfigured(_) => ExitCode::from(2),
            Self::Other(_) => ExitCode::FAILURE,
        }
    }
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

async fn run(config: Config) -> Result<(), Failure> {
    // The store first: when it cannot open, its error is the only line.
    let store = Store::open(&config.store, Arc::new(SystemClock)).await.map_err(|e| match e {
        OpenFailure::Misconfigured(m) => Failure::Misconfigured(m),
        OpenFailure::Failed(e) => Failure::Other(e.to_string()),
    })?;
    if config.auth.is_open() {
        if config.insecure_no_auth {
            tracing::warn!(
                listen = %config.listen,
                "!!! INSECURE: serving WITHOUT AUTHENTICATION on a non-loopback address (--insecure-no-auth). \
                 Anyone who can reach this port can release or revoke any user's streams."
            );
        } else {
            tracing::info!("auth mode none: open access, loopback only");
        }
    }
    let listener =
        TcpListener::bind(&config.listen).await.map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut state = AppState::new(store.clone(), config.policy, config.auth, config.protection);
    tracing::info!(
        %addr,
        instance = %state.instance,
        store = config.store.kind.name(),
        redis_mode = config.store.redis_mode.name(),
        on_store_error = state.policy.on_store_error.name(),
        default_limit = state.policy.default_limit.get(),
        lease_ttl = state.policy.lease_ttl.as_secs(),
        on_limit = state.policy.on_limit.name(),
        plans = state.policy.plans.len(),
        rules = state.policy.rules.len(),
        plan_rules = state.policy.plan_rules.len(),
        enforce = state.policy.enforce,
        "listening"
    );
    if config.store.kind == StoreKind::Dynamodb {
        tracing::info!(
            table = %config.store.dynamodb_table,
            endpoint = config.store.dynamodb_endpoint.as_deref().unwrap_or("the region's"),
            "dynamodb store"
        );
    }
    if !state.policy.enforce {
        tracing::warn!("shadow mode: limits are reported (would_deny) but not enforced");
    }
    // One signal stops every listener.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown::signal().await;
        stop.send_replace(true);
    });
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    state.demo = config.demo;
    if config.demo {
        tracing::info!(url = %format_args!("http://{addr}/demo"), "serving the demo page");
    }
    state.console = config.console;
    if config.console {
        tracing::info!(url = %format_args!("http://{addr}/console"), "serving the support console");
    }
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
    // Flush the store even if serving failed, then report.
    let closed = store.close().await;
    served.map_err(|e| format!("server error: {e}"))?;
    closed.map_err(|e| format!("closing the store: {e}"))?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// `streamcap dynamodb create-table`: one line on stdout per step, an
/// error as one line on stderr; exit 2 when the table exists but cannot
/// serve streamcap.
#[cfg(feature = "dynamodb")]
fn create_dynamodb_table(table: &str, endpoint: Option<String>) -> ExitCode {
    use streamcap::store::dynamodb;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("streamcap: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut say = |line: &str| println!("{line}");
    let done =
        runtime.block_on(dynamodb::create_table(table, endpoint.as_deref(), &dynamodb::Aws::StandardChain, &mut say));
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("streamcap: {e}");
            match e {
                OpenFailure::Misconfigured(_) => ExitCode::from(2),
                OpenFailure::Failed(_) => ExitCode::FAILURE,
            }
        }
    }
}

/// Config refuses the command when the dynamodb store is not built in.
#[cfg(not(feature = "dynamodb"))]
fn create_dynamodb_table(_: &str, _: Option<String>) -> ExitCode {
    eprintln!("streamcap: the dynamodb store is not built into this binary");
    ExitCode::from(2)
}
