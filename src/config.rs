//! The one place that reads flags, environment and the TOML file.
//!
//! Precedence is flag > env (`STREAMCAP_<FLAG>`) > file (`--config`) >
//! default. clap handles the first two; the file fills what they left
//! empty. Every value is validated here, and every error is one line that
//! names the offending flag or key, so `main` can print it and exit.

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::auth::{self, ApiKey, AuthMode, Authenticator, JwtConfig, JwtVerifier, KeyScope, parse_sha256_hex};
use crate::http::protect::Protection;
use crate::limiter::{Limit, OnLimit, Ttl, UserId};
use crate::policy::{OnStoreError, Plan, Policy};
use crate::store::{self, RedisMode, StoreConfig, StoreKind};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./streamcap-data";
pub const DEFAULT_LIMIT: u32 = 3;
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_LEASE_TTL: u32 = 60;

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
}

/// How logs are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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
    /// `--help` or `--version`: already printed, exit 0.
    Printed,
}

#[derive(Parser, Debug)]
#[command(name = "streamcap", version, about = "Concurrent-stream limits for video platforms")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// With no command, `streamcap [FLAGS]` is `streamcap serve [FLAGS]`.
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the HTTP service (the default when no command is given).
    Serve(Box<ServeArgs>),
    /// Print the OpenAPI 3.1 document of the HTTP API and exit.
    Openapi,
}

#[derive(Args, Debug, Default)]
struct ServeArgs {
    /// TOML file with any of the keys below (flags and env win over it).
    #[arg(long, env = "STREAMCAP_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, HOST:PORT [default: 127.0.0.1:8080]
    #[arg(long, env = "STREAMCAP_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Lease store: memory, sqlite or redis [default: sqlite]
    #[arg(long, env = "STREAMCAP_STORE", value_name = "STORE")]
    store: Option<String>,
    /// Directory for the sqlite store [default: ./streamcap-data]
    #[arg(long, env = "STREAMCAP_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Redis URL, or comma-separated cluster seed URLs [default: redis://127.0.0.1:6379]
    #[arg(long, env = "STREAMCAP_REDIS_URL", value_name = "URL[,URL...]")]
    redis_url: Option<String>,
    /// standalone or cluster [default: standalone]
    #[arg(long, env = "STREAMCAP_REDIS_MODE", value_name = "MODE")]
    redis_mode: Option<String>,
    /// When the store cannot answer: deny (503) or allow (grant, "degraded": true) [default: deny]
    #[arg(long, env = "STREAMCAP_ON_STORE_ERROR", value_name = "POLICY")]
    on_store_error: Option<String>,
    /// Live streams per user, 1..=1000 [default: 3]
    #[arg(long, env = "STREAMCAP_DEFAULT_LIMIT", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(Limit::MAX)))]
    default_limit: Option<u32>,
    /// Seconds a lease lives without a heartbeat, 1..=86400 [default: 60]
    #[arg(long, env = "STREAMCAP_LEASE_TTL", value_name = "SECONDS",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(Ttl::MAX_SECONDS)))]
    lease_ttl: Option<u32>,
    /// On a full account: reject or evict_oldest [default: reject]
    #[arg(long, env = "STREAMCAP_ON_LIMIT", value_name = "POLICY")]
    on_limit: Option<String>,
    /// false = shadow mode: never deny or evict, only report [default: true]
    #[arg(long, env = "STREAMCAP_ENFORCE", value_name = "BOOL", action = clap::ArgAction::Set)]
    enforce: Option<bool>,

    /// Log format: text or json [default: text]
    #[arg(long, env = "STREAMCAP_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<String>,
    /// Serve /metrics on this address only, instead of on --listen
    #[arg(long, env = "STREAMCAP_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,

    /// Player authentication: none or jwt [default: none]
    #[arg(long, env = "STREAMCAP_AUTH_MODE", value_name = "MODE")]
    auth_mode: Option<String>,
    /// File holding the HS256 secret (or set STREAMCAP_JWT_SECRET)
    #[arg(long, env = "STREAMCAP_JWT_SECRET_FILE", value_name = "PATH")]
    jwt_secret_file: Option<PathBuf>,
    /// PEM public key: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA)
    #[arg(long, env = "STREAMCAP_JWT_PUBLIC_KEY_FILE", value_name = "PATH")]
    jwt_public_key_file: Option<PathBuf>,
    /// JWKS file with RS256, ES256 or EdDSA keys
    #[arg(long, env = "STREAMCAP_JWKS_FILE", value_name = "PATH")]
    jwks_file: Option<PathBuf>,
    /// Comma-separated allowlist: HS256, RS256, ES256, EdDSA [default: what the keys allow]
    #[arg(long, env = "STREAMCAP_JWT_ALGORITHMS", value_name = "LIST")]
    jwt_algorithms: Option<String>,
    /// Required `iss` claim
    #[arg(long, env = "STREAMCAP_JWT_ISSUER", value_name = "ISS")]
    jwt_issuer: Option<String>,
    /// Required `aud` claim
    #[arg(long, env = "STREAMCAP_JWT_AUDIENCE", value_name = "AUD")]
    jwt_audience: Option<String>,
    /// Claim holding the user id [default: sub]
    #[arg(long, env = "STREAMCAP_JWT_USER_CLAIM", value_name = "CLAIM")]
    jwt_user_claim: Option<String>,
    /// Claim holding the plan [default: plan]
    #[arg(long, env = "STREAMCAP_JWT_PLAN_CLAIM", value_name = "CLAIM")]
    jwt_plan_claim: Option<String>,
    /// Allow auth mode none on a non-loopback address (logs a loud warning)
    #[arg(long, env = "STREAMCAP_INSECURE_NO_AUTH", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    insecure_no_auth: Option<bool>,

    /// Requests per second per user, 0 = off [default: 20]
    #[arg(long, env = "STREAMCAP_USER_RATE_LIMIT", value_name = "RPS")]
    user_rate_limit: Option<u32>,
    /// Bucket size per user: requests allowed at once [default: 40]
    #[arg(long, env = "STREAMCAP_USER_RATE_BURST", value_name = "N")]
    user_rate_burst: Option<u32>,
    /// Requests per second per credential, 0 = off [default: 2000]
    #[arg(long, env = "STREAMCAP_CREDENTIAL_RATE_LIMIT", value_name = "RPS")]
    credential_rate_limit: Option<u32>,
    /// Bucket size per credential: requests allowed at once [default: 4000]
    #[arg(long, env = "STREAMCAP_CREDENTIAL_RATE_BURST", value_name = "N")]
    credential_rate_burst: Option<u32>,
    /// Seconds before a request is abandoned with 408, 1..=300 [default: 10]
    #[arg(long, env = "STREAMCAP_REQUEST_TIMEOUT", value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=300))]
    request_timeout: Option<u64>,
    /// Requests in flight before new ones are shed with 503 [default: 1024]
    #[arg(long, env = "STREAMCAP_MAX_CONCURRENT_REQUESTS", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_concurrent_requests: Option<u64>,
}

/// The keys of the `--config` file. Unknown keys are an error.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    store: Option<String>,
    data_dir: Option<PathBuf>,
    redis_url: Option<String>,
    redis_mode: Option<String>,
    on_store_error: Option<String>,
    lease_ttl: Option<u32>,
    log_format: Option<String>,
    metrics_listen: Option<String>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    auth: FileAuth,
    #[serde(default)]
    protection: FileProtection,
}

/// The `[auth]` table.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    mode: Option<String>,
    jwt_secret_file: Option<PathBuf>,
    jwt_public_key_file: Option<PathBuf>,
    jwks_file: Option<PathBuf>,
    jwt_algorithms: Option<String>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    jwt_user_claim: Option<String>,
    jwt_plan_claim: Option<String>,
    insecure_no_auth: Option<bool>,
    #[serde(default)]
    api_keys: Vec<FileApiKey>,
}

/// One `[[auth.api_keys]]` entry: the SHA-256 of the key, never the key.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileApiKey {
    name: String,
    sha256: String,
    scope: String,
}

/// The `[protection]` table.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileProtection {
    user_rate_limit: Option<u32>,
    user_rate_burst: Option<u32>,
    credential_rate_limit: Option<u32>,
    credential_rate_burst: Option<u32>,
    request_timeout: Option<u64>,
    max_concurrent_requests: Option<u64>,
}

/// The `[limits]` table.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    default: Option<u32>,
    #[serde(default)]
    plans: BTreeMap<String, u32>,
    on_limit: Option<String>,
    enforce: Option<bool>,
    #[serde(default)]
    on_limit_by_plan: BTreeMap<String, String>,
}

/// Parses `args` (including the program name) and the environment.
pub fn from_args<I, T>(args: I) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return Ok(Invocation::Printed);
        }
        Err(e) => {
            // clap's first line names the flag and the problem; the rest is
            // usage advice that would break the one-line contract.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            return Err(ConfigError(first.trim_start_matches("error: ").to_owned()));
        }
    };
    let args = match cli.command {
        Some(Command::Serve(a)) => *a,
        Some(Command::Openapi) => return Ok(Invocation::PrintOpenapi),
        None => cli.serve,
    };
    build(args).map(|c| Invocation::Serve(Box::new(c)))
}

fn build(args: ServeArgs) -> Result<Config, ConfigError> {
    let file = match &args.config {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    let insecure_no_auth = args.insecure_no_auth.or(file.auth.insecure_no_auth).unwrap_or(false);
    let args_auth = AuthArgs {
        mode: args.auth_mode.clone(),
        secret_file: args.jwt_secret_file.clone(),
        public_key_file: args.jwt_public_key_file.clone(),
        jwks_file: args.jwks_file.clone(),
        algorithms: args.jwt_algorithms.clone(),
        issuer: args.jwt_issuer.clone(),
        audience: args.jwt_audience.clone(),
        user_claim: args.jwt_user_claim.clone(),
        plan_claim: args.jwt_plan_claim.clone(),
    };
    let in_file = |key: &str| match &args.config {
        Some(p) => format!("{key} in {}", p.display()),
        None => key.to_owned(),
    };

    let listen = args.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    match listen.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(_)) => {}
        Ok(None) => return Err(ConfigError(format!("--listen {listen:?} resolves to no address"))),
        Err(e) => return Err(ConfigError(format!("--listen {listen:?} is not a HOST:PORT address: {e}"))),
    }

    let store_name = args.store.or(file.store).unwrap_or_else(|| "sqlite".to_owned());
    let kind = StoreKind::parse(&store_name).ok_or_else(|| {
        ConfigError(format!("--store {store_name:?} is not a known store (memory, sqlite, redis, dynamodb)"))
    })?;
    if !store::built_in().contains(&kind.name()) {
        return Err(ConfigError(format!(
            "--store {} is not built into this binary (available: {})",
            kind.name(),
            store::built_in().join(", ")
        )));
    }

    // Redis settings are checked only when Redis is the store.
    let redis_url = args.redis_url.or(file.redis_url).unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned());
    let redis_urls: Vec<String> =
        redis_url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
    let mode_name = args.redis_mode.or(file.redis_mode).unwrap_or_else(|| "standalone".to_owned());
    let redis_mode = RedisMode::parse(&mode_name)
        .ok_or_else(|| ConfigError(format!("--redis-mode {mode_name:?} is not standalone or cluster")));
    let redis_mode = match kind {
        StoreKind::Redis => {
            let mode = redis_mode?;
            check_redis_urls(&redis_urls, mode)?;
            mode
        }
        _ => redis_mode.unwrap_or(RedisMode::Standalone),
    };
    let on_store_error = match args.on_store_error.or(file.on_store_error).as_deref() {
        None | Some("deny") => OnStoreError::Deny,
        Some("allow") => OnStoreError::Allow,
        Some(other) => return Err(ConfigError(format!("--on-store-error {other:?} is not deny or allow"))),
    };

    let limits = file.limits;
    let limit = match args.default_limit {
        Some(n) => n,
        None => ranged(limits.default, DEFAULT_LIMIT, 1, Limit::MAX, &in_file("limits.default"))?,
    };
    let ttl = match args.lease_ttl {
        Some(n) => n,
        None => ranged(file.lease_ttl, DEFAULT_LEASE_TTL, 1, Ttl::MAX_SECONDS, &in_file("lease_ttl"))?,
    };
    let default_limit =
        Limit::new(limit).ok_or_else(|| ConfigError(format!("default_limit {limit} is out of range")))?;
    let lease_ttl = Ttl::from_secs(ttl).ok_or_else(|| ConfigError(format!("lease_ttl {ttl} is out of range")))?;

    let on_limit = match (args.on_limit, limits.on_limit) {
        (Some(flag), _) => parse_on_limit(&flag, "--on-limit")?,
        (None, Some(key)) => parse_on_limit(&key, &in_file("limits.on_limit"))?,
        (None, None) => OnLimit::Reject,
    };
    let mut plans = BTreeMap::new();
    for (name, n) in limits.plans {
        let key = in_file(&format!("limits.plans.{name}"));
        if UserId::new(&name).is_err() {
            return Err(ConfigError(format!("{key}: a plan name is 1-128 characters of [A-Za-z0-9._~:@-]")));
        }
        let limit =
            Limit::new(n).ok_or_else(|| ConfigError(format!("{key}: {n} is out of range 0..={}", Limit::MAX)))?;
        plans.insert(name, Plan { limit, on_limit });
    }
    for (name, policy) in limits.on_limit_by_plan {
        let key = in_file(&format!("limits.on_limit_by_plan.{name}"));
        let policy = parse_on_limit(&policy, &key)?;
        match plans.get_mut(&name) {
            Some(plan) => plan.on_limit = policy,
            None => return Err(ConfigError(format!("{key}: no plan {name:?} in limits.plans"))),
        }
    }

    let auth = build_auth(&args_auth, file.auth, &in_file)?;
    if auth.is_open() {
        let public: Vec<_> = listen
            .to_socket_addrs()
            .map_err(|e| ConfigError(format!("--listen {listen:?}: {e}")))?
            .filter(|a| !a.ip().is_loopback())
            .collect();
        if let Some(addr) = public.first()
            && !insecure_no_auth
        {
            return Err(ConfigError(format!(
                "refusing to serve without authentication on non-loopback address {addr}; \
                 configure --auth-mode jwt or [[auth.api_keys]], or pass --insecure-no-auth"
            )));
        }
    }
    let defaults = Protection::default();
    let fp = file.protection;
    let protection = Protection {
        user_rate: args.user_rate_limit.or(fp.user_rate_limit).unwrap_or(defaults.user_rate),
        user_burst: args.user_rate_burst.or(fp.user_rate_burst).unwrap_or(defaults.user_burst),
        credential_rate: args.credential_rate_limit.or(fp.credential_rate_limit).unwrap_or(defaults.credential_rate),
        credential_burst: args.credential_rate_burst.or(fp.credential_rate_burst).unwrap_or(defaults.credential_burst),
        request_timeout: match args.request_timeout.or(fp.request_timeout) {
            None => defaults.request_timeout,
            Some(n @ 1..=300) => Duration::from_secs(n),
            Some(n) => {
                return Err(ConfigError(format!(
                    "{}: {n} is out of range 1..=300",
                    in_file("protection.request_timeout")
                )));
            }
        },
        max_concurrent_requests: match args.max_concurrent_requests.or(fp.max_concurrent_requests) {
            None => defaults.max_concurrent_requests,
            Some(n @ 1..=1_000_000) => n as usize,
            Some(n) => {
                return Err(ConfigError(format!(
                    "{}: {n} is out of range 1..=1000000",
                    in_file("protection.max_concurrent_requests")
                )));
            }
        },
    };

    let log_format = match args.log_format.or(file.log_format).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => return Err(ConfigError(format!("--log-format {other:?} is not text or json"))),
    };
    let metrics_listen = args.metrics_listen.or(file.metrics_listen);
    if let Some(addr) = &metrics_listen {
        match addr.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(_)) => {}
            _ => return Err(ConfigError(format!("--metrics-listen {addr:?} is not a HOST:PORT address"))),
        }
    }

    Ok(Config {
        listen,
        metrics_listen,
        log_format,
        store: StoreConfig {
            kind,
            data_dir: args.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            redis_urls,
            redis_mode,
            // Often enough that the file stays small, rarely enough to cost nothing.
            sweep_interval: Duration::from_secs(u64::from(ttl / 2).clamp(1, 30)),
            op_timeout: Duration::from_secs(5),
        },
        policy: Policy {
            default_limit,
            on_limit,
            plans,
            enforce: args.enforce.or(limits.enforce).unwrap_or(true),
            lease_ttl,
            on_store_error,
        },
        auth: Arc::new(auth),
        insecure_no_auth,
        protection,
    })
}

/// The `[auth]` settings that come as flags or env.
struct AuthArgs {
    mode: Option<String>,
    secret_file: Option<PathBuf>,
    public_key_file: Option<PathBuf>,
    jwks_file: Option<PathBuf>,
    algorithms: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    user_claim: Option<String>,
    plan_claim: Option<String>,
}

fn build_auth(args: &AuthArgs, file: FileAuth, in_file: &dyn Fn(&str) -> String) -> Result<Authenticator, ConfigError> {
    let mode = match args.mode.clone().or(file.mode).as_deref() {
        None | Some("none") => AuthMode::None,
        Some("jwt") => AuthMode::Jwt,
        Some(other) => return Err(ConfigError(format!("--auth-mode {other:?} is not none or jwt"))),
    };
    let mut api_keys = Vec::new();
    for (i, k) in file.api_keys.into_iter().enumerate() {
        let at = in_file(&format!("auth.api_keys[{i}]"));
        let sha256 = parse_sha256_hex(&k.sha256)
            .ok_or_else(|| ConfigError(format!("{at}: sha256 must be 64 hex digits (the SHA-256 of the key)")))?;
        let scope = match k.scope.as_str() {
            "service" => KeyScope::Service,
            "admin" => KeyScope::Admin,
            other => return Err(ConfigError(format!("{at}: scope {other:?} is not service or admin"))),
        };
        if k.name.is_empty() {
            return Err(ConfigError(format!("{at}: name must not be empty")));
        }
        if let Some(other) = api_keys.iter().find(|o: &&ApiKey| o.sha256 == sha256 || o.name == k.name) {
            return Err(ConfigError(format!("{at}: the same key or name as {:?} is listed twice", other.name)));
        }
        api_keys.push(ApiKey { name: k.name, sha256, scope });
    }
    let read = |flag: &str, path: &Option<PathBuf>| -> Result<Option<Vec<u8>>, ConfigError> {
        path.as_ref()
            .map(|p| std::fs::read(p).map_err(|e| ConfigError(format!("{flag}: cannot read {}: {e}", p.display()))))
            .transpose()
    };
    let secret_file = args.secret_file.clone().or(file.jwt_secret_file);
    let public_key_file = args.public_key_file.clone().or(file.jwt_public_key_file);
    let jwks_file = args.jwks_file.clone().or(file.jwks_file);
    let jwt = match mode {
        AuthMode::None => None,
        AuthMode::Jwt => {
            // The secret's value may come from the environment; it is never a flag.
            let secret = match read("--jwt-secret-file", &secret_file)? {
                Some(bytes) => Some(trim_newline(bytes)),
                None => std::env::var("STREAMCAP_JWT_SECRET").ok().map(String::into_bytes),
            };
            let jwks_json = read("--jwks-file", &jwks_file)?
                .map(|b| String::from_utf8(b).map_err(|_| ConfigError("--jwks-file is not UTF-8 JSON".into())))
                .transpose()?;
            let algorithms = args
                .algorithms
                .clone()
                .or(file.jwt_algorithms)
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
                public_key_pem: read("--jwt-public-key-file", &public_key_file)?,
                jwks_json,
                algorithms,
                issuer: args.issuer.clone().or(file.jwt_issuer),
                audience: args.audience.clone().or(file.jwt_audience),
                user_claim: args.user_claim.clone().or(file.jwt_user_claim).unwrap_or_else(|| "sub".into()),
                plan_claim: args.plan_claim.clone().or(file.jwt_plan_claim).unwrap_or_else(|| "plan".into()),
            };
            Some(JwtVerifier::new(cfg).map_err(ConfigError)?)
        }
    };
    Ok(Authenticator::new(mode, jwt, api_keys))
}

fn trim_newline(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    bytes
}

fn check_redis_urls(urls: &[String], mode: RedisMode) -> Result<(), ConfigError> {
    if urls.is_empty() {
        return Err(ConfigError("--redis-url is empty".into()));
    }
    for url in urls {
        if url.starts_with("rediss://") {
            return Err(ConfigError(format!(
                "--redis-url {:?}: TLS (rediss://) is not built into this binary yet",
                store::redact_url(url)
            )));
        }
        if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
            return Err(ConfigError(format!("--redis-url {:?} is not a redis:// URL", store::redact_url(url))));
        }
    }
    if mode == RedisMode::Standalone && urls.len() > 1 {
        return Err(ConfigError("--redis-url lists several nodes; that needs --redis-mode cluster".into()));
    }
    Ok(())
}

fn parse_on_limit(value: &str, name: &str) -> Result<OnLimit, ConfigError> {
    OnLimit::parse(value)
        .ok_or_else(|| ConfigError(format!("{name} {value:?} is not a known policy ({})", OnLimit::NAMES)))
}

fn ranged(v: Option<u32>, default: u32, min: u32, max: u32, name: &str) -> Result<u32, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => Err(ConfigError(format!("{name}: {n} is out of range {min}..={max}"))),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        ConfigError(format!("config file {}{at}: {}", path.display(), e.message().trim()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        match from_args(std::iter::once("streamcap").chain(args.iter().copied()))? {
            Invocation::Serve(c) => Ok(*c),
            Invocation::Printed | Invocation::PrintOpenapi => panic!("printed something"),
        }
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    // These tests avoid the process environment (which tests share) and
    // cover flag > file > default; env precedence is tested end to end
    // against the binary in tests/process.rs.

    #[test]
    fn defaults() {
        let c = parse(&["serve"]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.store.kind, StoreKind::Sqlite);
        assert_eq!(c.store.data_dir, PathBuf::from("./streamcap-data"));
        assert_eq!(c.policy.default_limit.get(), 3);
        assert_eq!(c.policy.lease_ttl.as_secs(), 60);
        assert_eq!(c.policy.on_limit, OnLimit::Reject);
        assert!(c.policy.enforce);
        assert!(c.policy.plans.is_empty());
    }

    #[test]
    fn flags_win_over_the_file() {
        let f = file(
            "lease_ttl = 30\nstore = \"memory\"\n[limits]\ndefault = 7\non_limit = \"evict_oldest\"\nenforce = false\n",
        );
        let p = f.path().to_str().unwrap();
        let c = parse(&["serve", "--config", p, "--default-limit", "2", "--on-limit", "reject"]).unwrap();
        assert_eq!(c.policy.default_limit.get(), 2);
        assert_eq!(c.policy.lease_ttl.as_secs(), 30);
        assert_eq!(c.policy.on_limit, OnLimit::Reject);
        assert!(!c.policy.enforce);
        assert_eq!(c.store.kind, StoreKind::Memory);
        assert!(parse(&["serve", "--config", p, "--enforce", "true"]).unwrap().policy.enforce);
    }

    #[test]
    fn plans_take_the_global_policy_unless_they_override_it() {
        let f = file(
            "[limits]\nplans = { basic = 1, standard = 2, premium = 4, suspended = 0 }\non_limit = \"reject\"\n\
             [limits.on_limit_by_plan]\nbasic = \"evict_oldest\"\n",
        );
        let c = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap();
        let plan = |n: &str| c.policy.plans[n];
        assert_eq!((plan("basic").limit.get(), plan("basic").on_limit), (1, OnLimit::EvictOldest));
        assert_eq!((plan("premium").limit.get(), plan("premium").on_limit), (4, OnLimit::Reject));
        assert_eq!(plan("suspended").limit.get(), 0);
    }

    #[test]
    fn errors_are_one_line_and_name_the_culprit() {
        let cases: Vec<(Vec<String>, &str)> = vec![
            (vec!["serve".into(), "--default-limit".into(), "0".into()], "--default-limit"),
            (vec!["serve".into(), "--default-limit".into(), "1001".into()], "--default-limit"),
            (vec!["serve".into(), "--lease-ttl".into(), "86401".into()], "--lease-ttl"),
            (vec!["serve".into(), "--lease-ttl".into(), "abc".into()], "--lease-ttl"),
            (vec!["serve".into(), "--store".into(), "mongo".into()], "--store"),
            (vec!["serve".into(), "--store".into(), "dynamodb".into()], "not built into this binary"),
            (
                vec!["serve".into(), "--store".into(), "redis".into(), "--redis-mode".into(), "sentinel".into()],
                "--redis-mode",
            ),
            (
                vec!["serve".into(), "--store".into(), "redis".into(), "--redis-url".into(), "http://x".into()],
                "--redis-url",
            ),
            (
                vec![
                    "serve".into(),
                    "--store".into(),
                    "redis".into(),
                    "--redis-url".into(),
                    "redis://a:1,redis://b:2".into(),
                ],
                "--redis-mode cluster",
            ),
            (
                vec!["serve".into(), "--store".into(), "redis".into(), "--redis-url".into(), "rediss://h:1".into()],
                "TLS",
            ),
            (vec!["serve".into(), "--on-store-error".into(), "maybe".into()], "--on-store-error"),
            (vec!["serve".into(), "--log-format".into(), "xml".into()], "--log-format"),
            (vec!["serve".into(), "--metrics-listen".into(), "nowhere".into()], "--metrics-listen"),
            (vec!["serve".into(), "--listen".into(), "nowhere".into()], "--listen"),
            (vec!["serve".into(), "--on-limit".into(), "evict_newest".into()], "--on-limit"),
            (vec!["serve".into(), "--enforce".into(), "maybe".into()], "--enforce"),
            (vec!["serve".into(), "--bogus".into()], "--bogus"),
        ];
        for (args, needle) in cases {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let e = parse(&args).expect_err(&format!("{args:?} must fail")).0;
            assert!(e.contains(needle), "{args:?}: {e}");
            assert!(!e.contains('\n'), "{args:?}: {e:?}");
        }
    }

    #[test]
    fn file_errors_name_the_key() {
        for (text, needle) in [
            ("[limits]\ndefault = 0\n", "limits.default"),
            ("default_limit = 3\n", "default_limit"),
            ("[limits]\nplans = { basic = 1001 }\n", "limits.plans.basic"),
            ("[limits]\nplans = { \"b c\" = 1 }\n", "limits.plans.b c"),
            ("[limits]\non_limit = \"evict_all\"\n", "limits.on_limit"),
            ("[limits.on_limit_by_plan]\ngold = \"reject\"\n", "no plan \"gold\""),
            (
                "[limits]\nplans = { basic = 1 }\n[limits.on_limit_by_plan]\nbasic = \"nope\"\n",
                "on_limit_by_plan.basic",
            ),
            ("[limits]\nenforce = \"yes\"\n", "line 2"),
            ("lease_ttl = 0\n", "lease_ttl"),
            ("colour = \"red\"\n", "colour"),
            ("default_limit = \"three\"\n", "line 1"),
            ("store = \"dynamodb\"\n", "not built into this binary"),
            ("store = \"redis\"\nredis_mode = \"ring\"\n", "--redis-mode"),
        ] {
            let f = file(text);
            let e = parse(&["serve", "--config", f.path().to_str().unwrap()]).unwrap_err().0;
            assert!(e.contains(needle), "{text}: {e}");
            assert!(!e.contains('\n'), "{e:?}");
        }
    }
}
