//! The `streamcap` binary: flags/env/file → Config → tracing → Store::open
//! → serve until SIGTERM/SIGINT → close the store. Everything else lives in
//! the library so tests run the very same code.

use std::process::ExitCode;
use std::sync::Arc;

use streamcap::clock::SystemClock;
use streamcap::config::{self, Config, Invocation};
use streamcap::http::{self, AppState};
use streamcap::shutdown;
use streamcap::store::Store;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = match config::from_args(std::env::args_os()) {
        Ok(Invocation::Serve(c)) => c,
        Ok(Invocation::Printed) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("streamcap: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
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
    let store = Store::open(&config.store, Arc::new(SystemClock)).await.map_err(|e| e.to_string())?;
    let listener =
        TcpListener::bind(&config.listen).await.map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        %addr,
        store = config.store.kind.name(),
        default_limit = config.policy.default_limit.get(),
        lease_ttl = config.policy.lease_ttl.as_secs(),
        on_limit = config.policy.on_limit.name(),
        plans = config.policy.plans.len(),
        enforce = config.policy.enforce,
        "listening"
    );
    if !config.policy.enforce {
        tracing::warn!("shadow mode: limits are reported (would_deny) but not enforced");
    }
    let state = AppState::new(store.clone(), config.policy, config.auth, config.protection);
    let served = http::serve(listener, state, shutdown::signal()).await;
    // Flush the store even if serving failed, then report.
    let closed = store.close().await;
    served.map_err(|e| format!("server error: {e}"))?;
    closed.map_err(|e| format!("closing the store: {e}"))?;
    tracing::info!("stopped cleanly");
    Ok(())
}
