//! The `streamcap-lambda` binary: the environment → Config (checked against
//! the Lambda rules) → tracing → `lambda::run`, which serves invocations
//! from the Lambda Runtime API. Everything else lives in the library, so
//! `streamcap serve` and the function run the very same router.

use std::process::ExitCode;

use streamcap::lambda;

fn main() -> ExitCode {
    let config = match lambda::configure(std::env::args_os()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("streamcap-lambda: {e}");
            lambda::report_init_error("Runtime.ConfigInvalid", &e);
            return ExitCode::from(2);
        }
    };
    let _telemetry = streamcap::telemetry::init(config.log_format);
    // One invocation at a time per instance: one thread is all it uses.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("streamcap-lambda: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(lambda::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
