//! streamcap enforces concurrent-stream limits for video platforms.
//!
//! A playback stream holds a *lease*: acquired when playback starts, renewed
//! by heartbeats, released when playback stops, and expired by itself when
//! heartbeats stop. At most `limit` leases per user are live at any instant,
//! however many requests race.
//!
//! # Layout
//!
//! Dependencies point one way: `http → store → limiter`, with `config`
//! building the pieces and [`server`] wiring them for both binaries.
//!
//! - [`limiter`]: the decision rules as pure functions of (state, op, now).
//!   No I/O.
//! - [`policy`]: plans, limits and on-limit behaviour, resolved per request,
//!   and the edge limits (`Protection`).
//! - [`clock`]: where "now" comes from; a manual clock for tests.
//! - [`store`]: the [`store::Store`] handle and its backends (memory,
//!   sqlite, redis, and dynamodb with the cargo feature `dynamodb`), each
//!   running the rules atomically per user.
//! - [`http`]: the only module that knows HTTP and JSON: routes, bodies,
//!   problem+json errors.
//! - [`auth`]: who is calling (JWT or API key) and what they may do.
//! - [`config`]: flags, environment and TOML file, merged and validated once.
//! - [`metrics`]: Prometheus names and the recorder; labels never carry ids.
//! - [`telemetry`]: log format and optional OTLP trace export.
//! - [`server`]: the server's life, once for both binaries: store, state,
//!   start line, warnings, serving and closing.
//! - [`shutdown`]: the SIGTERM/SIGINT future that starts a graceful stop.
//! - `lambda` (cargo feature `lambda`): the same router on AWS Lambda, for
//!   the `streamcap-lambda` binary.

pub mod auth;
pub mod clock;
pub mod config;
pub mod http;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod limiter;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod telemetry;
