//! The `streamcap` binary: flags, environment and file into a `Config`,
//! subcommands, tracing, then `server::run` until SIGTERM or SIGINT, and
//! the exit code. Everything else lives in the library, so tests run the
//! very same code.

use std::process::ExitCode;

use streamcap::config::{self, Invocation};
use streamcap::http;
use streamcap::server::{self, Failure};
use tokio::runtime::{Builder, Runtime};

fn main() -> ExitCode {
    let config = match config::from_args(std::env::args_os()) {
        Ok(Invocation::Serve(c)) => c,
        Ok(Invocation::Printed) => return ExitCode::SUCCESS,
        Ok(Invocation::CreateDynamodbTable { table, endpoint }) => return create_dynamodb_table(&table, endpoint),
        Ok(Invocation::PrintOpenapi) => return print_openapi(),
        Err(e) => {
            eprintln!("streamcap: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = streamcap::telemetry::init(config.log_format);
    let runtime = match runtime(Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(server::run(*config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            match e {
                // A store that cannot work is a configuration error.
                Failure::Misconfigured(_) => ExitCode::from(2),
                Failure::Other(_) => ExitCode::FAILURE,
            }
        }
    }
}

fn runtime(mut builder: Builder) -> Result<Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("streamcap: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// `streamcap openapi`: the OpenAPI document on stdout.
fn print_openapi() -> ExitCode {
    match http::openapi().to_pretty_json() {
        Ok(doc) => {
            println!("{doc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("streamcap: cannot render the OpenAPI document: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `streamcap dynamodb create-table`: one line on stdout per step, an
/// error as one line on stderr; exit 2 when the table exists but cannot
/// serve streamcap.
#[cfg(feature = "dynamodb")]
fn create_dynamodb_table(table: &str, endpoint: Option<String>) -> ExitCode {
    use streamcap::store::{OpenFailure, dynamodb};
    let runtime = match runtime(Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut say = |line: &str| println!("{line}");
    let aws = &dynamodb::Aws::StandardChain;
    match runtime.block_on(dynamodb::create_table(table, endpoint.as_deref(), aws, &mut say)) {
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
