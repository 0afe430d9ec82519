//! The serverless backend: one DynamoDB item per user, shared by any number
//! of instances and Lambda functions.
//!
//! Each decision runs the shared read-decide-write loop
//! (`super::optimistic`): a strongly consistent `GetItem`, then
//! [`limiter::apply`] on the decoded state with this instance's clock, then
//! a `PutItem` (or a `DeleteItem`, when nothing is left) conditioned on the
//! version that was read. So the rules stay in `limiter`, and DynamoDB's
//! conditional write makes them atomic per user. Each item carries the id
//! of the write that stored it, so that a write the SDK sent again after it
//! had landed recognises itself.
//!
//! Expiry happens on write and DynamoDB's TTL deletes idle items
//! (`expires_at`); no decision depends on TTL, and no sweeper scans the
//! table. `item` documents the item's attributes.
//!
//! The client is the official AWS SDK with its retries and timeouts set
//! explicitly, all well inside the store's operation timeout. `ping` and
//! the check at open read a probe key that no user id can be.
//! [`create_table`] is the body of `streamcap dynamodb create-table`.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
    TimeToLiveSpecification, TimeToLiveStatus,
};

use super::optimistic::{Change, Lost, Optimistic, Read, Shared};
use super::{Backend, BoxFuture, OpenError, OpenFailure, Store, StoreConfig, StoreError};
use crate::clock::Clock;
use crate::limiter::{self, Op, Reply, UserId};

#[cfg(test)]
pub(crate) mod harness;
mod item;
#[cfg(test)]
mod tests;

use item::{KEY, TTL};

/// The key that `ping` and the open check read. `#` is not in the user id
/// alphabet, so no user's item can have it.
const PROBE_KEY: &str = "#streamcap-probe";

/// Where the AWS SDK finds its region and credentials.
#[derive(Clone, Default)]
pub enum Aws {
    /// The standard chain: environment, shared config and credentials
    /// files, web identity, the ECS container or EC2 instance role.
    #[default]
    StandardChain,
    /// Fixed values, reading nothing from the environment; for DynamoDB
    /// Local in tests.
    Static { region: String, access_key_id: String, secret_access_key: String },
}

impl std::fmt::Debug for Aws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::StandardChain => f.write_str("StandardChain"),
            Self::Static { region, .. } => write!(f, "Static {{ region: {region:?}, .. }}"),
        }
    }
}

/// Opens the dynamodb store of `config` with the region and credentials
/// of `aws`, and checks that its table exists with the right key schema.
/// [`Store::open`] is this with [`Aws::StandardChain`].
pub async fn open(config: &StoreConfig, aws: &Aws, clock: Arc<dyn Clock>) -> Result<Store, OpenFailure> {
    let backend = DynamoBackend::open(&config.dynamodb_table, config.dynamodb_endpoint.as_deref(), aws, clock).await?;
    Ok(Store::start(Box::new(backend), config))
}

pub(super) struct DynamoBackend {
    client: Client,
    table: String,
    clock: Arc<dyn Clock>,
    engine: Optimistic,
    writes: WriteIds,
}

impl DynamoBackend {
    pub(super) async fn open(
        table: &str,
        endpoint: Option<&str>,
        aws: &Aws,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OpenFailure> {
        let client = client(endpoint, aws).await?;
        let backend =
            Self { client, table: table.to_owned(), clock, engine: Optimistic::new(), writes: WriteIds::new() };
        backend.probe().await.map_err(|e| match e {
            Probe::Misconfigured(m) => OpenFailure::Misconfigured(m),
            Probe::Unavailable(m) => OpenFailure::Failed(OpenError(m)),
        })?;
        Ok(backend)
    }

    /// Reads the probe key: the table exists, its key schema is
    /// `user_id` (S) alone, and we may read it.
    async fn probe(&self) -> Result<(), Probe> {
        let got = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, AttributeValue::S(PROBE_KEY.into()))
            .consistent_read(true)
            .send()
            .await;
        match got {
            Ok(_) => Ok(()),
            Err(e) => Err(match e.as_service_error().and_then(|s| s.code()) {
                Some("ResourceNotFoundException") => Probe::Misconfigured(format!(
                    "dynamodb table {} does not exist (create it with `streamcap dynamodb create-table`)",
                    self.table
                )),
                Some("ValidationException") => Probe::Misconfigured(format!(
                    "dynamodb table {} does not have the key schema streamcap needs \
                     (partition key user_id, type S, no sort key): {}",
                    self.table,
                    e.as_service_error().and_then(|s| s.message()).unwrap_or("the key does not match")
                )),
                Some(code @ ("AccessDeniedException" | "UnrecognizedClientException")) => {
                    Probe::Misconfigured(format!("dynamodb table {}: {code}: {}", self.table, explain(&e)))
                }
                _ => Probe::Unavailable(format!("cannot read dynamodb table {}: {}", self.table, explain(&e))),
            }),
        }
    }

    /// The user's item, strongly consistent.
    async fn get_item(&self, user: &UserId) -> Result<Option<item::Stored>, StoreError> {
        let got = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, AttributeValue::S(user.as_str().into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(format!("dynamodb GetItem: {}", explain(&e))))?;
        match got.item {
            None => Ok(None),
            Some(item) => item::decode(user, &item).map(Some).map_err(|e| {
                tracing::error!(user = %user, error = %e, "unreadable dynamodb item; this user gets 503 until it is fixed");
                StoreError::Unavailable(format!("dynamodb item of user {user} is unreadable: {e}"))
            }),
        }
    }

    /// Writes `state` as the version after `expected` (`None`: the item
    /// must not exist yet), marked with `write_id`.
    async fn put(
        &self,
        user: &UserId,
        state: &limiter::UserState,
        expected: Option<u64>,
        write_id: &str,
    ) -> Result<(), Lost<Mark>> {
        let version = expected.map_or(1, |v| v + 1);
        let item = item::encode(user, state, version, write_id);
        let req = self.client.put_item().table_name(&self.table).set_item(Some(item));
        let req = match expected {
            None => req.condition_expression("attribute_not_exists(#k)").expression_attribute_names("#k", KEY),
            Some(v) => req
                .condition_expression("#v = :v")
                .expression_attribute_names("#v", item::VERSION)
                .expression_attribute_values(":v", AttributeValue::N(v.to_string())),
        };
        req.send().await.map(|_| ()).map_err(|e| self.lost(user, "PutItem", e))
    }

    async fn delete(&self, user: &UserId, expected: u64) -> Result<(), Lost<Mark>> {
        let sent = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(KEY, AttributeValue::S(user.as_str().into()))
            .condition_expression("#v = :v")
            .expression_attribute_names("#v", item::VERSION)
            .expression_attribute_values(":v", AttributeValue::N(expected.to_string()))
            .send()
            .await;
        sent.map(|_| ()).map_err(|e| self.lost(user, "DeleteItem", e))
    }

    fn lost<E, R>(&self, user: &UserId, op: &str, e: SdkError<E, R>) -> Lost<Mark>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let service = e.as_service_error();
        match service.and_then(|s| s.code()) {
            Some("ConditionalCheckFailedException") => Lost::Race(None),
            Some("ValidationException") if service.and_then(|s| s.message()).is_some_and(|m| m.contains("size")) => {
                tracing::error!(
                    user = %user,
                    "the dynamodb item of this user would exceed DynamoDB's 400 KB item size limit; \
                     its change was refused (503) and nothing was written"
                );
                Lost::Failed(StoreError::Unavailable(format!(
                    "dynamodb {op}: the item of user {user} would exceed the 400 KB item size limit: {}",
                    explain(&e)
                )))
            }
            _ => Lost::Failed(StoreError::Unavailable(format!("dynamodb {op}: {}", explain(&e)))),
        }
    }
}

/// The version an item was read at, and the id of the write that stored
/// it; `None` when there was no item.
type Seen = Option<(u64, Option<String>)>;

/// The version a write stores and its write id.
type Mark = (u64, String);

impl Shared for DynamoBackend {
    type Seen = Seen;
    type Mark = Mark;

    async fn read(&self, user: &UserId) -> Result<Read<Seen>, StoreError> {
        let stored = self.get_item(user).await?;
        // The clock is read after the item, as in one atomic step.
        let now = self.clock.now();
        Ok(match stored {
            Some(s) => Read { state: s.state, seen: Some((s.version, s.write_id)), now },
            None => Read { state: Default::default(), seen: None, now },
        })
    }

    async fn write(&self, user: &UserId, seen: &Seen, change: Change<'_>) -> Result<(), Lost<Mark>> {
        let write_id = self.writes.next();
        let version = seen.as_ref().map(|(v, _)| *v);
        let state = change.state;
        let (written, mark) = match version {
            None if state.is_empty() => return Ok(()),
            None => (self.put(user, state, None, &write_id).await, Some(1)),
            Some(v) if state.is_empty() => (self.delete(user, v).await, None),
            Some(v) => (self.put(user, state, Some(v), &write_id).await, Some(v + 1)),
        };
        written.map_err(|lost| match lost {
            Lost::Race(_) => Lost::Race(mark.map(|v| (v, write_id))),
            failed => failed,
        })
    }

    fn landed(seen: &Seen, mark: &Mark) -> bool {
        matches!(seen, Some((v, Some(id))) if *v == mark.0 && *id == mark.1)
    }

    fn name(&self) -> &'static str {
        "dynamodb"
    }
}

impl Backend for DynamoBackend {
    fn execute<'a>(&'a self, user: &'a UserId, op: Op) -> BoxFuture<'a, Result<Reply, StoreError>> {
        Box::pin(self.engine.decide(self, user, op))
    }

    fn sweep(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async { Ok(0) })
    }

    /// Expired leases go on the user's next write; DynamoDB's TTL deletes
    /// items nobody writes any more. Nothing scans the table.
    fn expires_by_itself(&self) -> bool {
        true
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.probe().await.map_err(|e| match e {
                Probe::Misconfigured(m) | Probe::Unavailable(m) => StoreError::Unavailable(m),
            })
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Every answer was given after DynamoDB had accepted the write.
        Box::pin(async { Ok(()) })
    }
}

enum Probe {
    Misconfigured(String),
    Unavailable(String),
}

/// A one-line account of an SDK error: the service's code and message, or
/// the chain of causes (connect refused, timeout, no region...).
fn explain<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let Some(s) = e.as_service_error() {
        return match (s.code(), s.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_owned(),
            _ => s.to_string(),
        };
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.replace('\n', " ")
}

/// An SDK client with explicit retries and timeouts, all well inside the
/// store's 5 s per operation: three attempts per request (throttling and
/// server errors are retried), 1 s to connect, 1.5 s per attempt, 4 s in
/// all. Without a configured region, a custom endpoint (DynamoDB Local)
/// gets `us-east-1`; the real service needs one.
async fn client(endpoint: Option<&str>, aws: &Aws) -> Result<Client, OpenFailure> {
    let retries = RetryConfig::standard()
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(20))
        .with_max_backoff(Duration::from_millis(500));
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(1))
        .operation_attempt_timeout(Duration::from_millis(1500))
        .operation_timeout(Duration::from_secs(4))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).retry_config(retries).timeout_config(timeouts);
    if let Aws::Static { region, access_key_id, secret_access_key } = aws {
        loader = loader.region(Region::new(region.clone())).credentials_provider(Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "streamcap-static",
        ));
    }
    if let Some(url) = endpoint {
        loader = loader.endpoint_url(url);
    }
    let sdk = loader.load().await;
    let mut config = aws_sdk_dynamodb::config::Builder::from(&sdk);
    if sdk.region().is_none() {
        if endpoint.is_none() {
            return Err(OpenFailure::Misconfigured(
                "no AWS region is configured for the dynamodb store (set AWS_REGION, or a region in the AWS profile)"
                    .into(),
            ));
        }
        config = config.region(Region::new("us-east-1"));
    }
    Ok(Client::from_conf(config.build()))
}

/// Creates `table` as streamcap needs it, or checks the one that exists,
/// and makes sure TTL is on for `expires_at`. Reports each step through
/// `say`, one line each. A table with another key schema, or TTL on
/// another attribute, is `OpenFailure::Misconfigured`.
pub async fn create_table(
    table: &str,
    endpoint: Option<&str>,
    aws: &Aws,
    say: &mut (dyn FnMut(&str) + Send),
) -> Result<(), OpenFailure> {
    let client = client(endpoint, aws).await?;
    let status = describe_or_create(&client, table, say).await?;
    wait_until_active(&client, table, status, say).await?;
    enable_ttl(&client, table, say).await
}

/// A failure of one step of `create_table` on `table`.
fn table_failure(table: &str, what: &str, e: String) -> OpenFailure {
    OpenFailure::Failed(OpenError(format!("{what} {table}: {e}")))
}

/// Checks the key schema of `table` when it exists, else creates it;
/// returns its status.
async fn describe_or_create(
    client: &Client,
    table: &str,
    say: &mut (dyn FnMut(&str) + Send),
) -> Result<Option<TableStatus>, OpenFailure> {
    let fail = |what: &str, e: String| table_failure(table, what, e);
    let described = client.describe_table().table_name(table).send().await;
    match described {
        Ok(out) => {
            let t = out.table.ok_or_else(|| fail("cannot describe table", "no description in the answer".into()))?;
            check_schema(table, t.key_schema(), t.attribute_definitions())?;
            say(&format!("table {table} already exists with partition key user_id (S)"));
            Ok(t.table_status)
        }
        Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("ResourceNotFoundException") => {
            let created = client
                .create_table()
                .table_name(table)
                .billing_mode(BillingMode::PayPerRequest)
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(KEY)
                        .key_type(KeyType::Hash)
                        .build()
                        .map_err(|e| fail("cannot create table", e.to_string()))?,
                )
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(KEY)
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .map_err(|e| fail("cannot create table", e.to_string()))?,
                )
                .send()
                .await
                .map_err(|e| fail("cannot create table", explain(&e)))?;
            say(&format!("created table {table} (on-demand billing, partition key user_id of type S)"));
            Ok(created.table_description.and_then(|t| t.table_status))
        }
        Err(e) => Err(fail("cannot describe table", explain(&e))),
    }
}

/// Polls `table` until it is ACTIVE: a new table takes a few seconds to
/// become so on AWS.
async fn wait_until_active(
    client: &Client,
    table: &str,
    mut status: Option<TableStatus>,
    say: &mut (dyn FnMut(&str) + Send),
) -> Result<(), OpenFailure> {
    let fail = |what: &str, e: String| table_failure(table, what, e);
    let deadline = Instant::now() + Duration::from_secs(300);
    while status != Some(TableStatus::Active) {
        if Instant::now() > deadline {
            return Err(fail("gave up waiting for table", format!("still {status:?} after 5 minutes")));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let out = client.describe_table().table_name(table).send().await;
        status = out.map_err(|e| fail("cannot describe table", explain(&e)))?.table.and_then(|t| t.table_status);
        if status == Some(TableStatus::Active) {
            say(&format!("table {table} is ACTIVE"));
        }
    }
    Ok(())
}

/// Turns TTL on for `expires_at`, unless it is on already; TTL on another
/// attribute is `OpenFailure::Misconfigured`.
async fn enable_ttl(client: &Client, table: &str, say: &mut (dyn FnMut(&str) + Send)) -> Result<(), OpenFailure> {
    let fail = |what: &str, e: String| table_failure(table, what, e);
    let ttl = client.describe_time_to_live().table_name(table).send().await;
    let ttl = ttl.map_err(|e| fail("cannot read the TTL setting of table", explain(&e)))?;
    let ttl = ttl.time_to_live_description;
    let on = matches!(
        ttl.as_ref().and_then(|t| t.time_to_live_status.as_ref()),
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
    );
    match ttl.as_ref().and_then(|t| t.attribute_name.as_deref()) {
        Some(TTL) if on => say(&format!("TTL is already enabled on {TTL}")),
        Some(other) if on => {
            return Err(OpenFailure::Misconfigured(format!(
                "table {table} has TTL on attribute {other}, but streamcap's items expire by {TTL}; \
                 disable TTL on the table and run this command again"
            )));
        }
        _ => {
            let spec = TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(TTL)
                .build()
                .map_err(|e| fail("cannot enable TTL on table", e.to_string()))?;
            let updated = client.update_time_to_live().table_name(table).time_to_live_specification(spec).send().await;
            updated.map_err(|e| fail("cannot enable TTL on table", explain(&e)))?;
            say(&format!("enabled TTL on {TTL}"));
        }
    }
    Ok(())
}

fn check_schema(table: &str, keys: &[KeySchemaElement], attributes: &[AttributeDefinition]) -> Result<(), OpenFailure> {
    let type_of = |name: &str| attributes.iter().find(|a| a.attribute_name() == name).map(|a| a.attribute_type());
    let right = matches!(keys, [k] if k.attribute_name() == KEY && *k.key_type() == KeyType::Hash)
        && type_of(KEY) == Some(&ScalarAttributeType::S);
    if right {
        return Ok(());
    }
    let found: Vec<String> = keys
        .iter()
        .map(|k| {
            let ty = type_of(k.attribute_name()).map_or("?", |t| t.as_str());
            let role = if *k.key_type() == KeyType::Hash { "partition" } else { "sort" };
            format!("{role} key {} ({ty})", k.attribute_name())
        })
        .collect();
    Err(OpenFailure::Misconfigured(format!(
        "table {table} exists with {}; streamcap needs partition key user_id (S) and no sort key",
        found.join(" and ")
    )))
}

/// Write ids: a random prefix for this process and a counter.
struct WriteIds {
    prefix: u64,
    next: AtomicU64,
}

impl WriteIds {
    fn new() -> Self {
        Self { prefix: RandomState::new().hash_one(std::process::id()) >> 16, next: AtomicU64::new(0) }
    }

    fn next(&self) -> String {
        format!("{:012x}-{:x}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}
