//! Every setting, declared once.
//!
//! A field below is a setting: its doc comment is its `--help` line, its
//! `#[arg]` gives the flag and env var, its name (inside the table its
//! struct stands for) is the file key, and its type says what it holds.
//! Types with a range or a set of names are read through [`Spelling`],
//! whose `check` is the domain constructor, the same for flags, env vars
//! and the file. The defaults are the `Default` impls.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Command};
use ipnet::IpNet;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

use super::ConfigError;
use crate::auth::{AuthMode, KeyScope, parse_sha256_hex};
use crate::limiter::{Limit, OnLimit, Ttl};
use crate::policy::{OnStoreError, Protection};
use crate::store::{RedisMode, StoreKind};
use crate::telemetry::LogFormat;

/// `streamcap [serve] [FLAGS]`, `streamcap openapi` and `streamcap dynamodb
/// create-table`. Built "for update": no flag is required, and each one
/// overwrites what the file set.
pub(super) fn command() -> Command {
    // The `about` goes last: `Settings`' doc comment would replace it.
    let serve = Settings::augment_args_for_update(Command::new("serve"))
        .about("Run the HTTP service (the default when no command is given)");
    let openapi = Command::new("openapi").about("Print the OpenAPI 3.1 document of the HTTP API and exit");
    // The table's settings are serve's own: the same flags, env vars and
    // file keys, declared once in `Settings`.
    let setting = |id: &str| serve.get_arguments().find(|a| a.get_id() == id).cloned().expect("a Settings field");
    let create_table = Command::new("create-table")
        .about(
            "Create the table of the dynamodb store (on-demand billing, partition key user_id, TTL on \
             expires_at), or check the one that exists, and print what was done",
        )
        .args([setting("config"), setting("dynamodb_table"), setting("dynamodb_endpoint")]);
    let dynamodb = Command::new("dynamodb")
        .about("Administer the DynamoDB table of the dynamodb store")
        .subcommand_required(true)
        .subcommand(create_table);
    // With no command, `streamcap [FLAGS]` is `streamcap serve [FLAGS]`.
    Settings::augment_args_for_update(Command::new("streamcap"))
        .version(env!("CARGO_PKG_VERSION"))
        .about("Concurrent-stream limits for video platforms")
        .args_conflicts_with_subcommands(true)
        .subcommands([serve, openapi, dynamodb])
}

/// The flags of `streamcap serve` and the top level of the `--config` file.
/// Unknown keys are an error.
#[derive(Args, Deserialize, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(super) struct Settings {
    /// TOML file with any of the keys below (flags and env win over it).
    #[arg(long, env = "STREAMCAP_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on, HOST:PORT [default: 127.0.0.1:8080]
    #[arg(long, env = "STREAMCAP_LISTEN", value_name = "ADDR")]
    pub listen: String,
    /// Lease store: memory, sqlite, redis or dynamodb [default: sqlite]
    #[arg(long, env = "STREAMCAP_STORE", value_name = "STORE", value_parser = flag::<StoreKind>)]
    #[serde(deserialize_with = "key")]
    pub store: StoreKind,
    /// Directory for the sqlite store [default: ./streamcap-data]
    #[arg(long, env = "STREAMCAP_DATA_DIR", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Redis URL, or comma-separated cluster seed URLs [default: redis://127.0.0.1:6379]
    #[arg(long, env = "STREAMCAP_REDIS_URL", value_name = "URL[,URL...]")]
    pub redis_url: String,
    /// standalone or cluster [default: standalone]
    // Text until `build`: checked only when Redis is the store.
    #[arg(long, env = "STREAMCAP_REDIS_MODE", value_name = "MODE")]
    pub redis_mode: String,
    /// PEM file of CA certificates to trust for rediss:// besides the system's roots
    #[arg(long, env = "STREAMCAP_REDIS_CA_FILE", value_name = "PATH")]
    pub redis_ca_file: Option<PathBuf>,
    /// Skip certificate verification for rediss:// (logs a loud warning; for tests only) [default: false]
    #[arg(long, env = "STREAMCAP_REDIS_TLS_INSECURE", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub redis_tls_insecure: bool,
    /// Replicas that must acknowledge each write before it is answered (WAIT), 0..=16; 0 = none [default: 0]
    #[arg(long, env = "STREAMCAP_REDIS_REPLICA_ACKS", value_name = "N", value_parser = flag::<ReplicaAcks>)]
    #[serde(deserialize_with = "key")]
    pub redis_replica_acks: ReplicaAcks,
    /// DynamoDB table of the dynamodb store [default: streamcap]
    #[arg(long, env = "STREAMCAP_DYNAMODB_TABLE", value_name = "TABLE")]
    pub dynamodb_table: String,
    /// DynamoDB endpoint URL instead of the region's, e.g. DynamoDB Local
    #[arg(long, env = "STREAMCAP_DYNAMODB_ENDPOINT", value_name = "URL")]
    pub dynamodb_endpoint: Option<String>,
    /// When the store cannot answer: deny (503) or allow (grant, "degraded": true) [default: deny]
    #[arg(long, env = "STREAMCAP_ON_STORE_ERROR", value_name = "POLICY", value_parser = flag::<OnStoreError>)]
    #[serde(deserialize_with = "key")]
    pub on_store_error: OnStoreError,
    #[command(flatten)]
    pub limits: LimitSettings,
    /// Seconds a lease lives without a heartbeat, 1..=86400 [default: 60]
    // --help lists it right after --default-limit: the same display order,
    // and clap breaks ties by name.
    #[arg(long, env = "STREAMCAP_LEASE_TTL", value_name = "SECONDS", value_parser = flag::<Ttl>, display_order = 7)]
    #[serde(deserialize_with = "key")]
    pub lease_ttl: Ttl,
    /// Seconds a lease held by an API Gateway WebSocket connection lives without a renewal (streamcap-lambda), 1..=86400 [default: --lease-ttl]
    #[arg(long, env = "STREAMCAP_SOCKET_LEASE_TTL", value_name = "SECONDS", value_parser = flag::<Ttl>)]
    #[serde(deserialize_with = "key_option")]
    pub socket_lease_ttl: Option<Ttl>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "STREAMCAP_LOG_FORMAT", value_name = "FORMAT", value_parser = flag::<LogFormat>)]
    #[serde(deserialize_with = "key")]
    pub log_format: LogFormat,
    /// Serve /metrics on this address only, instead of on --listen
    #[arg(long, env = "STREAMCAP_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Serve the demo player page at /demo (for trying streamcap out) [default: false]
    #[arg(long, env = "STREAMCAP_DEMO", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub demo: bool,
    /// Serve the support console at /console, for operators with an admin or service credential [default: false]
    #[arg(long, env = "STREAMCAP_CONSOLE", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub console: bool,
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub protection: ProtectionSettings,
}

/// The `[limits]` table.
#[derive(Args, Deserialize, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(super) struct LimitSettings {
    /// Live streams per user, 1..=1000 [default: 3]
    #[arg(id = "default_limit", long = "default-limit", env = "STREAMCAP_DEFAULT_LIMIT", value_name = "N",
          value_parser = flag::<DefaultLimit>)]
    #[serde(deserialize_with = "key")]
    pub default: DefaultLimit,
    // Plan name → limit. File only.
    #[arg(skip)]
    #[serde(deserialize_with = "key_map")]
    pub plans: BTreeMap<String, Limit>,
    /// On a full account: reject or evict_oldest [default: reject]
    #[arg(long, env = "STREAMCAP_ON_LIMIT", value_name = "POLICY", value_parser = flag::<OnLimit>)]
    #[serde(deserialize_with = "key")]
    pub on_limit: OnLimit,
    /// false = shadow mode: never deny or evict, only report [default: true]
    #[arg(long, env = "STREAMCAP_ENFORCE", value_name = "BOOL", action = clap::ArgAction::Set)]
    pub enforce: bool,
    // Plan name → its own on_limit. File only.
    #[arg(skip)]
    #[serde(deserialize_with = "key_map")]
    pub on_limit_by_plan: BTreeMap<String, OnLimit>,
    // The default rule set, `[[limits.rules]]`, in order. File only.
    #[arg(skip)]
    pub rules: Vec<RuleTable>,
    // Plan name → its own rule set, `[[limits.plan_rules.<plan>]]`. File only.
    #[arg(skip)]
    pub plan_rules: BTreeMap<String, Vec<RuleTable>>,
}

/// One `[[limits.rules]]` or `[[limits.plan_rules.<plan>]]` table as
/// written, each value with its line. Its keys are checked by
/// `config::rules`, not by serde, so that every error can name the rule
/// (its index and its name) as well as the key.
#[derive(Debug, Default, PartialEq)]
pub(super) struct RuleTable {
    /// In the order written.
    pub keys: Vec<RuleKey>,
}

#[derive(Debug, PartialEq)]
pub(super) struct RuleKey {
    pub key: String,
    pub value: toml::Value,
    /// Where the value starts in the file: a byte offset as read, which
    /// [`read_file`] turns into a line number.
    pub line: usize,
}

impl RuleTable {
    /// The keys a rule takes.
    pub const KEYS: &'static [&'static str] = &["name", "device_class", "content_kind", "per", "limit", "exempt"];

    pub fn get(&self, key: &str) -> Option<&RuleKey> {
        self.keys.iter().find(|k| k.key == key)
    }
}

impl<'de> Deserialize<'de> for RuleTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = RuleTable;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table with the keys of a rule")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RuleTable, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: toml::Spanned<toml::Value> = map.next_value()?;
                    let line = value.span().start;
                    keys.push(RuleKey { key, value: value.into_inner(), line });
                }
                // The order written, whatever order the reader hands them in.
                keys.sort_by_key(|k| k.line);
                Ok(RuleTable { keys })
            }
        }
        // A struct to serde, so that the keys it takes are known to it;
        // the visitor reads any key, and `config::rules` refuses the others.
        d.deserialize_struct("RuleTable", RuleTable::KEYS, Keys)
    }
}

/// The `[auth]` table.
#[derive(Args, Deserialize, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(super) struct AuthSettings {
    /// Player authentication: none or jwt [default: none]
    #[arg(id = "auth_mode", long = "auth-mode", env = "STREAMCAP_AUTH_MODE", value_name = "MODE",
          value_parser = flag::<AuthMode>)]
    #[serde(deserialize_with = "key")]
    pub mode: AuthMode,
    /// File holding the HS256 secret (or set STREAMCAP_JWT_SECRET)
    #[arg(long, env = "STREAMCAP_JWT_SECRET_FILE", value_name = "PATH")]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA)
    #[arg(long, env = "STREAMCAP_JWT_PUBLIC_KEY_FILE", value_name = "PATH")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// JWKS file with RS256, ES256 or EdDSA keys
    #[arg(long, env = "STREAMCAP_JWKS_FILE", value_name = "PATH")]
    pub jwks_file: Option<PathBuf>,
    /// Comma-separated allowlist: HS256, RS256, ES256, EdDSA [default: what the keys allow]
    #[arg(long, env = "STREAMCAP_JWT_ALGORITHMS", value_name = "LIST")]
    pub jwt_algorithms: Option<String>,
    /// Required `iss` claim
    #[arg(long, env = "STREAMCAP_JWT_ISSUER", value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim
    #[arg(long, env = "STREAMCAP_JWT_AUDIENCE", value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// Claim holding the user id [default: sub]
    #[arg(long, env = "STREAMCAP_JWT_USER_CLAIM", value_name = "CLAIM")]
    pub jwt_user_claim: String,
    /// Claim holding the plan [default: plan]
    #[arg(long, env = "STREAMCAP_JWT_PLAN_CLAIM", value_name = "CLAIM")]
    pub jwt_plan_claim: String,
    /// Allow auth mode none on a non-loopback address (logs a loud warning)
    #[arg(long, env = "STREAMCAP_INSECURE_NO_AUTH", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub insecure_no_auth: bool,
    // File only: a credential is never a flag.
    #[arg(skip)]
    pub api_keys: Vec<ApiKeySettings>,
}

/// One `[[auth.api_keys]]` entry: the SHA-256 of the key, never the key.
#[derive(Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct ApiKeySettings {
    pub name: String,
    #[serde(deserialize_with = "key")]
    pub sha256: Sha256,
    #[serde(deserialize_with = "key")]
    pub scope: KeyScope,
}

/// The `[protection]` table.
#[derive(Args, Deserialize, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(super) struct ProtectionSettings {
    /// Requests per second per user, 0 = off [default: 20]
    #[arg(long, env = "STREAMCAP_USER_RATE_LIMIT", value_name = "RPS")]
    user_rate_limit: u32,
    /// Bucket size per user: requests allowed at once [default: 40]
    #[arg(long, env = "STREAMCAP_USER_RATE_BURST", value_name = "N")]
    user_rate_burst: u32,
    /// Requests per second per credential, 0 = off [default: 2000]
    #[arg(long, env = "STREAMCAP_CREDENTIAL_RATE_LIMIT", value_name = "RPS")]
    credential_rate_limit: u32,
    /// Bucket size per credential: requests allowed at once [default: 4000]
    #[arg(long, env = "STREAMCAP_CREDENTIAL_RATE_BURST", value_name = "N")]
    credential_rate_burst: u32,
    /// Failed authentications per second per source address, 0 = off [default: 10]
    #[arg(long, env = "STREAMCAP_AUTH_FAILURE_RATE_LIMIT", value_name = "RPS")]
    auth_failure_rate_limit: u32,
    /// Bucket size per source address: failures allowed at once [default: 20]
    #[arg(long, env = "STREAMCAP_AUTH_FAILURE_RATE_BURST", value_name = "N")]
    auth_failure_rate_burst: u32,
    /// Proxies whose X-Forwarded-For names the client: CIDRs, comma-separated or repeated
    #[arg(long, env = "STREAMCAP_TRUSTED_PROXIES", value_name = "CIDR[,CIDR...]", value_delimiter = ',',
          value_parser = flag::<TrustedProxy>)]
    #[serde(deserialize_with = "key_list")]
    trusted_proxies: Vec<TrustedProxy>,
    /// Seconds before a request is abandoned with 408, 1..=300 [default: 10]
    #[arg(long, env = "STREAMCAP_REQUEST_TIMEOUT", value_name = "SECONDS", value_parser = flag::<RequestTimeout>)]
    #[serde(deserialize_with = "key")]
    request_timeout: RequestTimeout,
    /// Requests in flight before new ones are shed with 503 [default: 1024]
    #[arg(long, env = "STREAMCAP_MAX_CONCURRENT_REQUESTS", value_name = "N",
          value_parser = flag::<MaxConcurrentRequests>)]
    #[serde(deserialize_with = "key")]
    max_concurrent_requests: MaxConcurrentRequests,
    /// Browser origins whose pages may call the API (CORS) and open its sockets: comma-separated or repeated
    #[arg(long, env = "STREAMCAP_CORS_ALLOWED_ORIGINS", value_name = "ORIGIN[,ORIGIN...]", value_delimiter = ',',
          value_parser = flag::<AllowedOrigin>)]
    #[serde(deserialize_with = "key_list")]
    cors_allowed_origins: Vec<AllowedOrigin>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            config: None,
            listen: "127.0.0.1:8080".into(),
            store: StoreKind::Sqlite,
            data_dir: "./streamcap-data".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_mode: RedisMode::Standalone.name().into(),
            redis_ca_file: None,
            redis_tls_insecure: false,
            redis_replica_acks: ReplicaAcks(0),
            dynamodb_table: "streamcap".into(),
            dynamodb_endpoint: None,
            on_store_error: OnStoreError::Deny,
            limits: LimitSettings::default(),
            lease_ttl: Ttl::from_secs(60).expect("in range"),
            socket_lease_ttl: None,
            log_format: LogFormat::Text,
            metrics_listen: None,
            demo: false,
            console: false,
            auth: AuthSettings::default(),
            protection: ProtectionSettings::default(),
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            default: DefaultLimit::check(3).expect("in range"),
            plans: BTreeMap::new(),
            on_limit: OnLimit::Reject,
            enforce: true,
            on_limit_by_plan: BTreeMap::new(),
            rules: Vec::new(),
            plan_rules: BTreeMap::new(),
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            jwt_secret_file: None,
            jwt_public_key_file: None,
            jwks_file: None,
            jwt_algorithms: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_user_claim: "sub".into(),
            jwt_plan_claim: "plan".into(),
            insecure_no_auth: false,
            api_keys: Vec::new(),
        }
    }
}

/// `Protection::default()` holds these defaults.
impl Default for ProtectionSettings {
    fn default() -> Self {
        let p = Protection::default();
        Self {
            user_rate_limit: p.user_rate,
            user_rate_burst: p.user_burst,
            credential_rate_limit: p.credential_rate,
            credential_rate_burst: p.credential_burst,
            auth_failure_rate_limit: p.auth_failure_rate,
            auth_failure_rate_burst: p.auth_failure_burst,
            trusted_proxies: p.trusted_proxies.into_iter().map(TrustedProxy).collect(),
            request_timeout: RequestTimeout(p.request_timeout),
            max_concurrent_requests: MaxConcurrentRequests(p.max_concurrent_requests),
            cors_allowed_origins: p.cors_allowed_origins.into_iter().map(AllowedOrigin).collect(),
        }
    }
}

impl From<ProtectionSettings> for Protection {
    fn from(p: ProtectionSettings) -> Self {
        Self {
            user_rate: p.user_rate_limit,
            user_burst: p.user_rate_burst,
            credential_rate: p.credential_rate_limit,
            credential_burst: p.credential_rate_burst,
            auth_failure_rate: p.auth_failure_rate_limit,
            auth_failure_burst: p.auth_failure_rate_burst,
            trusted_proxies: p.trusted_proxies.into_iter().map(|t| t.0).collect(),
            request_timeout: p.request_timeout.0,
            max_concurrent_requests: p.max_concurrent_requests.0,
            cors_allowed_origins: p.cors_allowed_origins.into_iter().map(|o| o.0).collect(),
        }
    }
}

/// The limit without a plan: a [`Limit`], but at least 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct DefaultLimit(pub Limit);

/// How long a request may take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct RequestTimeout(Duration);

/// How many requests may be in flight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct MaxConcurrentRequests(usize);

/// How many replicas must acknowledge a Redis write.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct ReplicaAcks(pub u32);

/// An API key's digest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Sha256(pub [u8; 32]);

/// A network of trusted proxies: a CIDR, or one address.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct TrustedProxy(pub IpNet);

/// A browser origin, as browsers send it in `Origin`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct AllowedOrigin(pub String);

/// How a type is written in a flag, an env var or the file. Flags and env
/// vars are read through [`flag`], file keys through [`key`]; both end in
/// `check`, the one place its values are validated.
pub(super) trait Spelling: Sized {
    /// What the file holds: text or a number.
    type Raw: FromStr<Err: Display> + DeserializeOwned;
    fn check(raw: Self::Raw) -> Result<Self, String>;
}

macro_rules! spelling {
    ($($ty:ty: $raw:ty => $check:expr;)*) => {$(
        impl Spelling for $ty {
            type Raw = $raw;
            fn check(raw: $raw) -> Result<Self, String> {
                $check(raw)
            }
        }
    )*};
}

// Names come from the enums' own lists, ranges from the domain constructors.
spelling! {
    StoreKind: String => |s: String| one_of(&s, StoreKind::ALL.map(|k| (k.name(), k)));
    RedisMode: String => |s: String| one_of(&s, RedisMode::ALL.map(|m| (m.name(), m)));
    OnStoreError: String => |s: String| one_of(&s, OnStoreError::ALL.map(|p| (p.name(), p)));
    OnLimit: String => |s: String| one_of(&s, OnLimit::ALL.map(|p| (p.name(), p)));
    LogFormat: String => |s: String| one_of(&s, LogFormat::ALL.map(|f| (f.name(), f)));
    AuthMode: String => |s: String| one_of(&s, [("none", AuthMode::None), ("jwt", AuthMode::Jwt)]);
    KeyScope: String => |s: String| one_of(&s, [("service", KeyScope::Service), ("admin", KeyScope::Admin)]);
    Limit: u32 => |n| Limit::new(n).ok_or_else(|| out_of_range(n, 0..=Limit::MAX));
    DefaultLimit: u32 => |n| {
        Limit::new(n).filter(|_| n >= 1).map(DefaultLimit).ok_or_else(|| out_of_range(n, 1..=Limit::MAX))
    };
    Ttl: u32 => |n| Ttl::from_secs(n).ok_or_else(|| out_of_range(n, 1..=Ttl::MAX_SECONDS));
    RequestTimeout: u64 => |n| in_range(n, 1..=300).map(|n| RequestTimeout(Duration::from_secs(n)));
    MaxConcurrentRequests: u64 => |n| in_range(n, 1..=1_000_000).map(|n| MaxConcurrentRequests(n as usize));
    ReplicaAcks: u64 => |n| in_range(n, 0..=16).map(|n| ReplicaAcks(n as u32));
    Sha256: String => |s: String| {
        parse_sha256_hex(&s).map(Sha256).ok_or_else(|| "must be 64 hex digits (the SHA-256 of the key)".to_owned())
    };
    TrustedProxy: String => |s: String| cidr(&s).map(TrustedProxy);
    AllowedOrigin: String => |s: String| origin(&s).map(AllowedOrigin);
}

/// An origin exactly as a browser serializes it in `Origin`: `http` or
/// `https`, `://`, a host, and a port only when it is not the scheme's
/// default; lowercase, with no path, not even `/`. Anything else could
/// never equal what a browser sends, so it is refused rather than kept as
/// an entry that silently matches nothing.
pub(super) fn origin(s: &str) -> Result<String, String> {
    let s = s.trim();
    let lower = s.to_ascii_lowercase();
    let example = "an origin such as https://player.example.com or http://localhost:3000";
    let (scheme, rest) = lower.split_once("://").ok_or_else(|| format!("{s:?} is not {example}"))?;
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return Err(format!("{s:?} is not {example}: the scheme must be http or https")),
    };
    if rest.contains(['/', '?', '#', '@', '*']) {
        return Err(format!("{s:?} is not {example}: an origin has no path, query, user or wildcard"));
    }
    // An IPv6 address is bracketed, and has colons of its own.
    let (host, port) = match rest.find(']') {
        Some(end) if rest.starts_with('[') => (&rest[..=end], &rest[end + 1..]),
        _ => rest.find(':').map_or((rest, ""), |at| rest.split_at(at)),
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
    };
    if !host_ok {
        return Err(format!("{s:?} is not {example}: {host:?} is not a host name or address"));
    }
    let port = (!port.is_empty()).then(|| port.strip_prefix(':').unwrap_or("x"));
    match port {
        Some(p) if p == default_port => {
            Err(format!("{s:?}: browsers leave out the scheme's default port; write {scheme}://{host}"))
        }
        Some(p) if p.parse::<u16>().map_or(true, |n| n == 0) || p.starts_with('0') => {
            Err(format!("{s:?} is not {example}: {p:?} is not a port"))
        }
        _ => Ok(lower),
    }
}

/// A CIDR such as `10.0.0.0/8` or `fd00::/8`, or a single address (a /32
/// or a /128). Host bits set after the prefix are refused rather than
/// dropped: `10.0.0.1/8` is more likely a typo than a wish.
pub(super) fn cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = s.parse().map_err(|_| format!("{s:?} is not a CIDR such as 10.0.0.0/8 or fd00::/8"))?;
    if net.trunc() != net {
        return Err(format!("{s:?} has bits set past its prefix: write {}", net.trunc()));
    }
    Ok(net)
}

/// Reads a flag or env var (a clap value parser).
fn flag<T: Spelling>(s: &str) -> Result<T, String> {
    T::check(s.parse().map_err(|e: <T::Raw as FromStr>::Err| e.to_string())?)
}

/// Reads a file key (a serde `deserialize_with`).
fn key<'de, D: Deserializer<'de>, T: Spelling>(d: D) -> Result<T, D::Error> {
    T::check(T::Raw::deserialize(d)?).map_err(D::Error::custom)
}

/// Reads a file key whose default is another setting's value.
fn key_option<'de, D: Deserializer<'de>, T: Spelling>(d: D) -> Result<Option<T>, D::Error> {
    key(d).map(Some)
}

/// Reads a table whose keys the operator names, such as `limits.plans`.
fn key_map<'de, D: Deserializer<'de>, T: Spelling>(d: D) -> Result<BTreeMap<String, T>, D::Error> {
    struct Value<T>(T);
    impl<'de, T: Spelling> Deserialize<'de> for Value<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            key(d).map(Value)
        }
    }
    Ok(BTreeMap::<String, Value<T>>::deserialize(d)?.into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// Reads a list key: an array of strings, or one comma-separated string
/// as the flag and env var take it.
fn key_list<'de, D: Deserializer<'de>, T: Spelling<Raw = String>>(d: D) -> Result<Vec<T>, D::Error> {
    struct List;
    impl<'de> serde::de::Visitor<'de> for List {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of strings, or one comma-separated string")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vec<String>, E> {
            Ok(text.split(',').filter(|s| !s.trim().is_empty()).map(str::to_owned).collect())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(items)
        }
    }
    let items = d.deserialize_any(List)?;
    items.into_iter().map(|s| T::check(s).map_err(D::Error::custom)).collect()
}

/// `s` if it names one of `names`; the error lists them.
fn one_of<T: Copy, const N: usize>(s: &str, names: [(&str, T); N]) -> Result<T, String> {
    if let Some(&(_, value)) = names.iter().find(|(name, _)| *name == s) {
        return Ok(value);
    }
    let names = names.map(|(name, _)| name);
    let list = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    };
    Err(format!("{s:?} is not {list}"))
}

fn in_range(n: u64, range: RangeInclusive<u64>) -> Result<u64, String> {
    if range.contains(&n) { Ok(n) } else { Err(out_of_range(n, range)) }
}

fn out_of_range<N: Display>(n: N, range: RangeInclusive<N>) -> String {
    format!("{n} is out of range {}..={}", range.start(), range.end())
}

/// Reads the `--config` file; a key it leaves out keeps its default. An
/// error names the key and its line.
pub(super) fn read_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    let error = |key: String, e: toml::de::Error| {
        let at = match key.as_str() {
            "" | "." => format!("config file {}", path.display()),
            key => format!("{key} in {}", path.display()),
        };
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let line = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        ConfigError(format!("{at}{line}: {}", e.message().trim()))
    };
    let file = toml::Deserializer::parse(&text).map_err(|e| error(String::new(), e))?;
    let mut settings: Settings =
        serde_path_to_error::deserialize(file).map_err(|e| error(e.path().to_string(), e.into_inner()))?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let limits = &mut settings.limits;
    for table in limits.rules.iter_mut().chain(limits.plan_rules.values_mut().flatten()) {
        for key in &mut table.keys {
            key.line = line_of(key.line);
        }
    }
    Ok(settings)
}
