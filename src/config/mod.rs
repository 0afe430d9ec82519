//! The one place that reads flags, environment and the TOML file.
//!
//! Every setting is declared once, in `settings.rs`: its flag, env var
//! (`STREAMCAP_<FLAG>`), file key, type and default. The file is read into
//! those settings, its gaps filled by the defaults; then clap overwrites
//! whatever a flag or env var set. Precedence is flag > env > file >
//! default. A value is checked as it is read, by its domain type's
//! constructor, so an error names the flag or key it came from; `build`
//! checks only what spans several settings and assembles the [`Config`].
//! Every error is one line, so `main` can print it and exit.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgMatches, FromArgMatches};

use crate::auth::{self, ApiKey, AuthMode, Authenticator, JwtConfig, JwtVerifier};
use crate::limiter::{Ttl, UserId};
use crate::policy::{OnStoreError, Plan, Policy, Protection};
use crate::store::{self, RedisMode, RedisTls, StoreConfig, StoreKind};
use crate::telemetry::LogFormat;

mod rules;
mod settings;

use settings::{AuthSettings, LimitSettings, Settings, Spelling};

/// A fully validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: String,
    /// A separate address for `/metrics`, if any.
    pub metrics_listen: Option<String>,
    pub log_format: LogFormat,
    pub store: StoreConfig,
    pub policy: Policy,
    pub auth: Arc<Authenticator>,
    /// Serving without authentication on a non-loopback address, on purpose.
    pub insecure_no_auth: bool,
    pub protection: Protection,
    /// Serve the demo page at `/demo`.
    pub demo: bool,
    /// Serve the support console at `/console`.
    pub console: bool,
    /// The TTL of leases held by API Gateway WebSocket connections, which
    /// renew over the socket and are released when it closes.
    pub socket_lease_ttl: Ttl,
}

/// A configuration error, as one line for an operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// What the command line asked for.
pub enum Invocation {
    Serve(Box<Config>),
    /// `streamcap openapi`.
    PrintOpenapi,
    /// `streamcap dynamodb create-table`: create or check this table.
    CreateDynamodbTable {
        table: String,
        endpoint: Option<String>,
    },
    /// `--help` or `--version`: already printed, exit 0.
    Printed,
}

/// Parses `args` (including the program name) and the environment.
pub fn from_args<I, T>(args: I) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = match settings::command().try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return Ok(Invocation::Printed);
        }
        Err(e) => return Err(one_line(e)),
    };
    let serve = match matches.subcommand() {
        Some(("openapi", _)) => return Ok(Invocation::PrintOpenapi),
        Some(("dynamodb", m)) => return dynamodb_command(m),
        Some((_serve, m)) => m,
        None => &matches,
    };
    build(settings(serve)?).map(|c| Invocation::Serve(Box::new(c)))
}

/// `streamcap dynamodb create-table`: the file, then the table's flags and
/// env vars, as for `serve`; the file's other keys are checked but unused.
fn dynamodb_command(matches: &ArgMatches) -> Result<Invocation, ConfigError> {
    let Some(("create-table", m)) = matches.subcommand() else {
        return Err(ConfigError("`streamcap dynamodb` takes a command: create-table".into()));
    };
    let mut s = match m.get_one::<PathBuf>("config") {
        Some(path) => settings::read_file(path)?,
        None => Settings::default(),
    };
    if let Some(table) = m.get_one::<String>("dynamodb_table") {
        s.dynamodb_table = table.clone();
    }
    if let Some(url) = m.get_one::<String>("dynamodb_endpoint") {
        s.dynamodb_endpoint = Some(url.clone());
    }
    let built = store::built_in();
    if !built.contains(&StoreKind::Dynamodb.name()) {
        return Err(ConfigError(format!(
            "`streamcap dynamodb create-table`: the dynamodb store is not built into this binary (available: {})",
            built.join(", ")
        )));
    }
    check_dynamodb(&s.dynamodb_table, s.dynamodb_endpoint.as_deref())?;
    Ok(Invocation::CreateDynamodbTable { table: s.dynamodb_table, endpoint: s.dynamodb_endpoint })
}

/// Defaults, then the file if there is one, then flags and env.
fn settings(matches: &ArgMatches) -> Result<Settings, ConfigError> {
    let mut s = match matches.get_one::<PathBuf>("config") {
        Some(path) => settings::read_file(path)?,
        None => Settings::default(),
    };
    s.update_from_arg_matches(matches).map_err(one_line)?;
    Ok(s)
}

/// clap's first line names the flag and the problem; the rest is usage
/// advice that would break the one-line contract.
fn one_line(e: clap::Error) -> ConfigError {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    ConfigError(first.trim_start_matches("error: ").to_owned())
}

fn build(s: Settings) -> Result<Config, ConfigError> {
    let in_file = |key: &str| match &s.config {
        Some(p) => format!("{key} in {}", p.display()),
        None => key.to_owned(),
    };
    let listen = resolve("--listen", &s.listen)?;
    if let Some(addr) = &s.metrics_listen {
        resolve("--metrics-listen", addr)?;
    }
    let store = build_store(&s)?;
    let policy = build_policy(s.limits, s.lease_ttl, s.on_store_error, &in_file)?;
    let insecure_no_auth = s.auth.insecure_no_auth;
    let auth = build_auth(s.auth, &in_file)?;
    if auth.is_open()
        && !insecure_no_auth
        && let Some(addr) = listen.iter().find(|a| !a.ip().is_loopback())
    {
        return Err(ConfigError(format!(
            "refusing to serve without authentication on non-loopback address {addr}; \
             configure --auth-mode jwt or [[auth.api_keys]], or pass --insecure-no-auth"
        )));
    }
    Ok(Config {
        listen: s.listen,
        metrics_listen: s.metrics_listen,
        log_format: s.log_format,
        store,
        policy,
        auth: Arc::new(auth),
        insecure_no_auth,
        protection: s.protection.into(),
        demo: s.demo,
        console: s.console,
        socket_lease_ttl: s.socket_lease_ttl.unwrap_or(s.lease_ttl),
    })
}

/// What HOST:PORT stands for: at least one address.
fn resolve(flag: &str, addr: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| ConfigError(format!("{flag} {addr:?} is not a HOST:PORT address: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(ConfigError(format!("{flag} {addr:?} resolves to no address")));
    }
    Ok(addrs)
}

/// A store streamcap knows but this binary was built without (its cargo
/// feature off) is refused with a message that says so.
fn check_built_in(kind: StoreKind, built_in: &[&str]) -> Result<(), ConfigError> {
    if built_in.contains(&kind.name()) {
        return Ok(());
    }
    Err(ConfigError(format!(
        "--store {} is not built into this binary (available: {})",
        kind.name(),
        built_in.join(", ")
    )))
}

fn build_store(s: &Settings) -> Result<StoreConfig, ConfigError> {
    let kind = s.store;
    check_built_in(kind, &store::built_in())?;
    // Redis settings are checked only when Redis is the store.
    let redis_urls: Vec<String> =
        s.redis_url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
    let redis_mode = RedisMode::check(s.redis_mode.clone());
    let (redis_mode, redis_tls) = match kind {
        StoreKind::Redis => {
            let mode = redis_mode.map_err(|e| ConfigError(format!("--redis-mode {e}")))?;
            check_redis_urls(&redis_urls, mode)?;
            (mode, build_redis_tls(s, &redis_urls)?)
        }
        _ => (redis_mode.unwrap_or(RedisMode::Standalone), RedisTls::default()),
    };
    if kind == StoreKind::Dynamodb {
        check_dynamodb(&s.dynamodb_table, s.dynamodb_endpoint.as_deref())?;
    }
    Ok(StoreConfig {
        kind,
        data_dir: s.data_dir.clone(),
        redis_urls,
        redis_mode,
        redis_tls,
        redis_replica_acks: s.redis_replica_acks.0,
        dynamodb_table: s.dynamodb_table.clone(),
        dynamodb_endpoint: s.dynamodb_endpoint.clone(),
        // Often enough that the file stays small, rarely enough to cost nothing.
        sweep_interval: Duration::from_secs(u64::from(s.lease_ttl.as_secs() / 2).clamp(1, 30)),
        op_timeout: Duration::from_secs(5),
    })
}

/// The TLS settings apply to `rediss://` URLs only. Given with plain URLs
/// they are refused rather than ignored: an operator who names a CA file
/// believes the traffic is encrypted. Verification off and a CA to verify
/// with contradict each other, so they are refused together too.
fn build_redis_tls(s: &Settings, urls: &[String]) -> Result<RedisTls, ConfigError> {
    let given = match (&s.redis_ca_file, s.redis_tls_insecure) {
        (None, false) => return Ok(RedisTls::default()),
        (Some(_), true) => {
            return Err(ConfigError(
                "--redis-ca-file and --redis-tls-insecure contradict each other: \
                 the one verifies certificates with that CA, the other verifies nothing"
                    .into(),
            ));
        }
        (Some(_), false) => "--redis-ca-file",
        (None, true) => "--redis-tls-insecure",
    };
    if !urls[0].starts_with("rediss://") {
        return Err(ConfigError(format!(
            "{given} applies to TLS connections, but --redis-url {:?} is not a rediss:// URL",
            store::redact_url(&urls[0])
        )));
    }
    let ca = match &s.redis_ca_file {
        Some(path) => Some((path.clone(), read_redis_ca_file(path)?)),
        None => None,
    };
    Ok(RedisTls { ca, insecure: s.redis_tls_insecure })
}

#[cfg(feature = "redis")]
fn read_redis_ca_file(path: &std::path::Path) -> Result<Vec<Vec<u8>>, ConfigError> {
    store::read_redis_ca_file(path).map_err(ConfigError)
}

/// Only a binary with the redis store reaches Redis settings.
#[cfg(not(feature = "redis"))]
fn read_redis_ca_file(_: &std::path::Path) -> Result<Vec<Vec<u8>>, ConfigError> {
    Err(ConfigError("--redis-ca-file: the redis store is not built into this binary".into()))
}

/// DynamoDB's own rules for table names, checked here so that a typo is a
/// one-line error at start rather than an SDK validation error later.
fn check_dynamodb(table: &str, endpoint: Option<&str>) -> Result<(), ConfigError> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if !(3..=255).contains(&table.len()) || !table.chars().all(valid_char) {
        return Err(ConfigError(format!(
            "--dynamodb-table {table:?}: a table name is 3 to 255 characters of a-z, A-Z, 0-9, '_', '-' and '.'"
        )));
    }
    if let Some(url) = endpoint
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(ConfigError(format!("--dynamodb-endpoint {url:?} is not an http:// or https:// URL")));
    }
    Ok(())
}

/// One scheme for all URLs: a cluster's nodes are reached all over TLS or
/// all without. A URL fragment is refused: the redis crate reads
/// `#insecure` as "skip verification", which only the loud
/// `--redis-tls-insecure` may say.
fn check_redis_urls(urls: &[String], mode: RedisMode) -> Result<(), ConfigError> {
    if urls.is_empty() {
        return Err(ConfigError("--redis-url is empty".into()));
    }
    for url in urls {
        let shown = store::redact_url(url);
        if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://")) {
            return Err(ConfigError(format!("--redis-url {shown:?} is not a redis:// or rediss:// URL")));
        }
        if url.contains('#') {
            return Err(ConfigError(format!(
                "--redis-url {shown:?}: '#' starts a URL fragment, which is not accepted: write a '#' in a \
                 password as %23; to skip certificate verification, pass --redis-tls-insecure"
            )));
        }
    }
    if urls.iter().any(|u| u.starts_with("rediss://")) && !urls.iter().all(|u| u.starts_with("rediss://")) {
        return Err(ConfigError("--redis-url mixes rediss:// (TLS) and plain URLs; use one scheme for all".into()));
    }
    if mode == RedisMode::Standalone && urls.len() > 1 {
        return Err(ConfigError("--redis-url lists several nodes; that needs --redis-mode cluster".into()));
    }
    Ok(())
}

/// The plans take the global `on_limit` unless `on_limit_by_plan` names
/// them, and the default rules unless `plan_rules` gives them their own.
fn build_policy(
    limits: LimitSettings,
    lease_ttl: Ttl,
    on_store_error: OnStoreError,
    in_file: &dyn Fn(&str) -> String,
) -> Result<Policy, ConfigError> {
    let on_limit = limits.on_limit;
    let mut plans = BTreeMap::new();
    for (name, limit) in limits.plans {
        if UserId::new(&name).is_err() {
            let key = in_file(&format!("limits.plans.{name}"));
            return Err(ConfigError(format!("{key}: a plan name is 1-128 characters of [A-Za-z0-9._~:@-]")));
        }
        plans.insert(name, Plan { limit, on_limit });
    }
    for (name, on_limit) in limits.on_limit_by_plan {
        let Some(plan) = plans.get_mut(&name) else {
            let key = in_file(&format!("limits.on_limit_by_plan.{name}"));
            return Err(ConfigError(format!("{key}: no plan {name:?} in limits.plans")));
        };
        plan.on_limit = on_limit;
    }
    let (rules, plan_rules) = rules::build(limits.rules, limits.plan_rules, &|plan| plans.contains_key(plan), in_file)?;
    Ok(Policy {
        default_limit: limits.default.0,
        on_limit,
        plans,
        rules,
        plan_rules,
        enforce: limits.enforce,
        lease_ttl,
        on_store_error,
    })
}

fn build_auth(a: AuthSettings, in_file: &dyn Fn(&str) -> String) -> Result<Authenticator, ConfigError> {
    let mut api_keys: Vec<ApiKey> = Vec::new();
    for (i, k) in a.api_keys.into_iter().enumerate() {
        let at = in_file(&format!("auth.api_keys[{i}]"));
        if k.name.is_empty() {
            return Err(ConfigError(format!("{at}: name must not be empty")));
        }
        if let Some(other) = api_keys.iter().find(|o| o.sha256 == k.sha256.0 || o.name == k.name) {
            return Err(ConfigError(format!("{at}: the same key or name as {:?} is listed twice", other.name)));
        }
        api_keys.push(ApiKey { name: k.name, sha256: k.sha256.0, scope: k.scope });
    }
    // The jwt_* settings are read only in jwt mode.
    let jwt = match a.mode {
        AuthMode::None => None,
        AuthMode::Jwt => {
            let read = |flag: &str, path: &Option<PathBuf>| {
                path.as_ref()
                    .map(|p| {
                        std::fs::read(p).map_err(|e| ConfigError(format!("{flag}: cannot read {}: {e}", p.display())))
                    })
                    .transpose()
            };
            // The secret's value may come from the environment; it is never a flag.
            let secret = match read("--jwt-secret-file", &a.jwt_secret_file)? {
                Some(bytes) => Some(trim_newline(bytes)),
                None => std::env::var("STREAMCAP_JWT_SECRET").ok().map(String::into_bytes),
            };
            let jwks_json = read("--jwks-file", &a.jwks_file)?
                .map(|b| String::from_utf8(b).map_err(|_| ConfigError("--jwks-file is not UTF-8 JSON".into())))
                .transpose()?;
            let algorithms = a
                .jwt_algorithms
                .map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(|a| {
                            auth::jwt_algorithm(a).ok_or_else(|| {
                                ConfigError(format!("--jwt-algorithms: {a:?} is not one of HS256, RS256, ES256, EdDSA"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            let cfg = JwtConfig {
                secret,
                public_key_pem: read("--jwt-public-key-file", &a.jwt_public_key_file)?,
                jwks_json,
                algorithms,
                issuer: a.jwt_issuer,
                audience: a.jwt_audience,
                user_claim: a.jwt_user_claim,
                plan_claim: a.jwt_plan_claim,
            };
            Some(JwtVerifier::new(cfg).map_err(ConfigError)?)
        }
    };
    Ok(Authenticator::new(a.mode, jwt, api_keys))
}

fn trim_newline(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    bytes
}

#[cfg(test)]
mod tests;
