//! The shared backend for many stateless instances: Redis, standalone or
//! Cluster.
//!
//! A decision runs the shared read-decide-write loop
//! ([`super::optimistic`]): one round trip reads the user's state and
//! Redis's clock (`GET` and `TIME`, pipelined), [`limiter::apply`] decides
//! in this process with Redis's time as "now", and at most one call of a
//! short compare-and-set script (`cas.lua`) stores the result, only if the
//! user's state is still the bytes that were read. The script holds no
//! rule. A lost race decides again; within one instance a user's
//! operations take turns, so races happen only between instances.
//!
//! All of a user's state lives under one hash tag, `sc:{user}:…`: the
//! state (`s`, in [`state`]'s format, with a copy of the override) and the
//! override itself (`o`, kept for good or until it ends). Both sit in one
//! cluster slot, so the read, the clock and the write for a user all go to
//! the primary that owns it. The override key is read only for a user with
//! no state. An override for good is a decimal string, as every release
//! wrote it; one that ends is a hash (`limit`, `until` in µs) that Redis
//! deletes a second after it ends. A release before override expiry reads
//! the key with `GET`, which fails on a hash, and does not know the state's
//! format 5 that carries such an override: it refuses that user (503)
//! rather than read the override as one for good. The state key expires by
//! itself a second or so after its last lease or tombstone ends; a write
//! that the key's deadline still covers keeps its expiry (`KEEPTTL`), which
//! costs Redis less than setting a new one.
//!
//! A write is one `EVALSHA` of `cas.lua` with both keys; a node that has
//! not got the script (`NOSCRIPT`, after a restart or `SCRIPT FLUSH`) gets
//! `SCRIPT LOAD` and the call is sent again. `ping` sends `PING`; `sweep`
//! does nothing. Messages between the instances that share the Redis go
//! over its pub/sub ([`bus`]); `tls` says what `rediss://` trusts.
//!
//! With `--redis-replica-acks` N ≥ 1, the write goes through [`acks`]
//! instead: on a connection of its own, followed by `WAIT`, and answered
//! only once N replicas have it.
//!
//! [`limiter::apply`]: crate::limiter::apply

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisWrite, ServerErrorKind, ToRedisArgs, Value};

use super::optimistic::{Change, Lost, Optimistic, Read, Shared};
use super::{Backend, BoxFuture, OpenError, OpenFailure, RedisMode, RedisTls, StoreError, Subscription, redact_url};
use crate::clock::Clock;
use crate::limiter::{Limit, Op, Override, Reply, Timestamp, UserId, UserState, Write};

mod acks;
mod bus;
#[cfg(test)]
pub(crate) mod harness;
mod state;
#[cfg(test)]
mod tests;
pub(crate) mod tls;

/// The compare-and-set script.
const CAS: &str = include_str!("cas.lua");

/// A key lives at least this long after the last lease or tombstone in it
/// ends, in µs.
const GRACE: i64 = 1_000_000;

pub(super) struct RedisBackend {
    conn: Conn,
    /// How to connect again, for the subscription's own connection.
    urls: Vec<String>,
    mode: RedisMode,
    trust: tls::Trust,
    /// A cluster without sharded channels (Redis 6): notices are broadcast.
    unsharded: std::sync::atomic::AtomicBool,
    cas: redis::Script,
    /// Tests inject time; production leaves this `None` and reads Redis's
    /// own clock with TIME.
    test_clock: Option<Arc<dyn Clock>>,
    engine: Optimistic,
    /// With `--redis-replica-acks` N ≥ 1: the connections that write and
    /// then wait for N replicas.
    acks: Option<acks::Acks>,
}

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisBackend {
    /// Connects to `urls` (one URL, or the seed nodes of a cluster), over
    /// TLS for `rediss://` URLs. Every decision reads Redis's own clock.
    #[cfg(test)]
    pub(super) async fn open(urls: &[String], mode: RedisMode, tls: &RedisTls) -> Result<Self, OpenFailure> {
        Self::connect(urls, mode, tls, 0, None).await
    }

    /// Like `open`; with `replica_acks` ≥ 1, a decision that writes is
    /// answered only once that many replicas have the write ([`acks`]).
    pub(super) async fn open_acked(
        urls: &[String],
        mode: RedisMode,
        tls: &RedisTls,
        replica_acks: u32,
    ) -> Result<Self, OpenFailure> {
        Self::connect(urls, mode, tls, replica_acks, None).await
    }

    /// Like `open`, but decisions take this clock's time instead of
    /// Redis's: only tests can build such a backend.
    #[cfg(test)]
    pub(super) async fn open_with_clock(
        urls: &[String],
        mode: RedisMode,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OpenFailure> {
        Self::connect(urls, mode, &RedisTls::default(), 0, Some(clock)).await
    }

    /// Like `open_acked`, with this clock's time: only tests can build it.
    #[cfg(test)]
    pub(super) async fn open_acked_with_clock(
        urls: &[String],
        mode: RedisMode,
        replica_acks: u32,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OpenFailure> {
        Self::connect(urls, mode, &RedisTls::default(), replica_acks, Some(clock)).await
    }

    /// A server certificate that is not trusted is a misconfiguration
    /// (exit 2): trying again will not help.
    async fn connect(
        urls: &[String],
        mode: RedisMode,
        tls: &RedisTls,
        replica_acks: u32,
        test_clock: Option<Arc<dyn Clock>>,
    ) -> Result<Self, OpenFailure> {
        let shown = urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(",");
        let fail = |e: redis::RedisError| {
            let at = format!("cannot connect to redis ({}) at {shown}", mode.name());
            let text = e.to_string().replace('\n', " ");
            match tls::untrusted_certificate(&e) {
                Some(hint) => OpenFailure::Misconfigured(format!("{at}: TLS handshake failed: {text}; {hint}")),
                None => OpenFailure::Failed(OpenError(format!("{at}: {text}"))),
            }
        };
        let trust = tls::Trust::new(urls, tls);
        let conn = match mode {
            RedisMode::Standalone => {
                let [url] = urls else {
                    return Err(OpenError(format!("standalone redis takes one URL, got {}", urls.len())).into());
                };
                let client = trust.client(url).map_err(fail)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(2);
                Conn::Standalone(ConnectionManager::new_with_config(client, config).await.map_err(fail)?)
            }
            RedisMode::Cluster => {
                let builder = ClusterClientBuilder::new(urls.to_vec())
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(2))
                    .retries(3);
                let client = trust.cluster(builder).build().map_err(fail)?;
                Conn::Cluster(client.get_async_connection().await.map_err(fail)?)
            }
        };
        let acks = match replica_acks {
            0 => None,
            n => Some(acks::Acks::connect(urls, mode, &trust, n).await.map_err(fail)?),
        };
        Ok(Self {
            conn,
            urls: urls.to_vec(),
            mode,
            trust,
            unsharded: Default::default(),
            cas: redis::Script::new(CAS),
            test_clock,
            engine: Optimistic::new(),
            acks,
        })
    }

    /// Sends the commands of `pipe` as one round trip; in a cluster, to the
    /// node that owns the slot of its keys.
    async fn pipeline(&self, pipe: &Pipeline) -> Result<Vec<Value>, StoreError> {
        let sent = match self.conn.clone() {
            Conn::Standalone(mut c) => pipe.query_async(&mut c).await,
            Conn::Cluster(mut c) => pipe.query_async(&mut c).await,
        };
        sent.map_err(unavailable)
    }

    /// Runs the compare-and-set `cmd`, loading the script first wherever
    /// Redis has not got it (after a restart or SCRIPT FLUSH; on every
    /// node, in a cluster). True when it wrote.
    async fn compare_and_set(&self, cmd: &Cmd) -> Result<bool, StoreError> {
        match self.conn.clone() {
            Conn::Standalone(mut c) => self.eval(cmd, &mut c).await,
            Conn::Cluster(mut c) => self.eval(cmd, &mut c).await,
        }
    }

    async fn eval(&self, cmd: &Cmd, conn: &mut impl ConnectionLike) -> Result<bool, StoreError> {
        let reply = match cmd.query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.cas.load_async(conn).await.map_err(unavailable)?;
                cmd.query_async(conn).await
            }
            other => other,
        };
        match reply.map_err(unavailable)? {
            Value::Int(1) => Ok(true),
            Value::Int(0) => Ok(false),
            other => Err(StoreError::Unavailable(format!("invalid reply from the write script: {other:?}"))),
        }
    }

    /// The override key of a user with no state, and its value as the
    /// write script compares it: `None` when absent.
    async fn read_override(&self, user: &UserId) -> Result<(Option<Override>, Option<Vec<u8>>), StoreError> {
        let mut pipe = redis::pipe();
        // One of the two fails with WRONGTYPE, unless the key is absent.
        pipe.ignore_errors();
        pipe.cmd("GET").arg(UserKey(user, b'o'));
        pipe.cmd("HMGET").arg(UserKey(user, b'o')).arg("limit").arg("until");
        let mut values = self.pipeline(&pipe).await?.into_iter();
        let (raw, until) = match (values.next(), values.next()) {
            (Some(Value::Nil), _) => return Ok((None, None)),
            (Some(Value::BulkString(raw)), _) => (raw, None),
            (_, Some(Value::Array(fields))) => match &fields[..] {
                [Value::BulkString(limit), Value::BulkString(until)] => {
                    let raw = [&limit[..], b"@", &until[..]].concat();
                    let until = std::str::from_utf8(until).ok().and_then(|s| s.parse().ok());
                    let Some(until) = until else {
                        return Err(unreadable(
                            user,
                            'o',
                            format!("until {:?} is not a time", String::from_utf8_lossy(&raw)),
                        ));
                    };
                    (limit.clone(), Some((Timestamp::from_micros(until), raw)))
                }
                other => return Err(unreadable(user, 'o', format!("an override hash of {other:?}"))),
            },
            other => return Err(StoreError::Unavailable(format!("invalid reply to GET: {other:?}"))),
        };
        let limit = std::str::from_utf8(&raw).ok().and_then(|s| s.parse().ok()).and_then(Limit::new);
        match (limit, until) {
            (Some(limit), None) => Ok((Some(Override::permanent(limit)), Some(raw))),
            (Some(limit), Some((at, raw))) => Ok((Some(Override { limit, expires_at: Some(at) }), Some(raw))),
            (None, _) => {
                Err(unreadable(user, 'o', format!("override {:?} is not a limit", String::from_utf8_lossy(&raw))))
            }
        }
    }
}

/// What a read saw of a user's keys.
pub(super) enum Seen {
    /// The state key's bytes, and the deadline they carry.
    State { raw: Vec<u8>, deadline: i64 },
    /// No state; the override key's bytes, if any.
    Absent { override_raw: Option<Vec<u8>> },
}

impl Shared for RedisBackend {
    type Seen = Seen;
    /// The state a write stored.
    type Mark = Vec<u8>;

    async fn read(&self, user: &UserId) -> Result<Read<Seen>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(UserKey(user, b's'));
        if self.test_clock.is_none() {
            pipe.cmd("TIME");
        }
        let mut values = self.pipeline(&pipe).await?.into_iter();
        let (state, time) = (values.next(), values.next());
        let now = match &self.test_clock {
            Some(clock) => clock.now(),
            None => redis_time(time)?,
        };
        match state {
            Some(Value::BulkString(raw)) => {
                let stored = state::decode(&raw).map_err(|e| unreadable(user, 's', e))?;
                Ok(Read { state: stored.state, seen: Seen::State { raw, deadline: stored.deadline }, now })
            }
            Some(Value::Nil) => {
                let (limit, override_raw) = self.read_override(user).await?;
                Ok(Read {
                    state: UserState::new(Vec::new(), Vec::new(), limit),
                    seen: Seen::Absent { override_raw },
                    now,
                })
            }
            other => Err(StoreError::Unavailable(format!("invalid reply to GET: {other:?}"))),
        }
    }

    async fn write(&self, user: &UserId, seen: &Seen, change: Change<'_>) -> Result<(), Lost<Vec<u8>>> {
        let state = change.state;
        let last = state.leases().iter().map(|l| l.expires_at).chain(state.tombstones().iter().map(|t| t.until)).max();
        // The key lives until a second after its last lease or tombstone
        // ends. A deadline that already covers that stays; otherwise it
        // moves one slack past it, so that the next renewals can keep it.
        let (new_state, expiry_ms) = match (seen, last) {
            (Seen::Absent { .. }, None) => (None, None),
            (Seen::State { deadline, .. }, last) if last.is_none_or(|l| l.as_micros() + GRACE <= *deadline) => {
                (Some(state::encode(state, *deadline)), None)
            }
            (_, last) => {
                let last = last.map_or(change.now.as_micros(), Timestamp::as_micros);
                let slack = match change.op {
                    Op::Acquire(a) => a.ttl.as_micros(),
                    Op::RevokeAll { ttl } | Op::Revoke { ttl, .. } => ttl.as_micros(),
                    _ => 0,
                };
                // In ms and relative, so that an injected test clock cannot
                // expire it early.
                let ms = (last - change.now.as_micros() + slack + 999).div_euclid(1000) + GRACE / 1000;
                (Some(state::encode(state, change.now.as_micros() + ms * 1000)), Some(ms))
            }
        };
        let new_override = change.outcome.writes.iter().find_map(|w| match w {
            Write::SetOverride(l) => Some(*l),
            _ => None,
        });

        let mut cmd = Cmd::with_capacity(10, 128 + new_state.as_ref().map_or(0, Vec::len) * 2);
        cmd.arg("EVALSHA").arg(self.cas.get_hash()).arg(2).arg(UserKey(user, b's')).arg(UserKey(user, b'o'));
        match seen {
            Seen::State { raw, .. } => cmd.arg(raw.as_slice()).arg(""),
            Seen::Absent { override_raw } => cmd.arg("").arg(override_raw.as_deref().unwrap_or_default()),
        };
        cmd.arg(new_state.as_deref().unwrap_or_default());
        match expiry_ms {
            Some(ms) => cmd.arg(ms),
            None => cmd.arg(""),
        };
        match new_override {
            None => cmd.arg(""),
            Some(None) => cmd.arg("-"),
            Some(Some(Override { limit, expires_at: None })) => cmd.arg(limit.get()),
            Some(Some(Override { limit, expires_at: Some(until) })) => {
                // Relative, as the state key's expiry is; never below the grace.
                let ms = (until.as_micros() - change.now.as_micros()).max(0).div_euclid(1000) + GRACE / 1000;
                cmd.arg(format!("{}@{}", limit.get(), until.as_micros())).arg(ms)
            }
        };
        let wrote = match &self.acks {
            Some(acks) => acks.compare_and_set(cmd, &self.cas).await,
            None => self.compare_and_set(&cmd).await,
        };
        match wrote {
            Ok(true) => Ok(()),
            // An acknowledged write is never sent twice, so the state read
            // next cannot be a repeat of it: decide again, and wait again.
            Ok(false) if self.acks.is_some() => Err(Lost::Race(None)),
            Ok(false) => Err(Lost::Race(new_state)),
            Err(e) => Err(Lost::Failed(e)),
        }
    }

    fn landed(seen: &Seen, mark: &Vec<u8>) -> bool {
        matches!(seen, Seen::State { raw, .. } if raw == mark)
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// Redis's TIME reply as a timestamp.
fn redis_time(reply: Option<Value>) -> Result<Timestamp, StoreError> {
    let part = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse::<i64>().ok()),
        _ => None,
    };
    match reply {
        Some(Value::Array(parts)) if parts.len() == 2 => match (part(&parts[0]), part(&parts[1])) {
            (Some(secs), Some(us)) => Ok(Timestamp::from_micros(secs * 1_000_000 + us)),
            _ => Err(StoreError::Unavailable(format!("invalid reply to TIME: {parts:?}"))),
        },
        other => Err(StoreError::Unavailable(format!("invalid reply to TIME: {other:?}"))),
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

/// A key that does not hold what streamcap writes: the user gets 503 and
/// the key is never overwritten.
fn unreadable(user: &UserId, kind: char, why: impl std::fmt::Display) -> StoreError {
    tracing::error!(user = %user, key = %format!("sc:{{{user}}}:{kind}"), error = %why,
        "unreadable redis key; this user gets 503 until it is fixed");
    StoreError::Unavailable(format!("redis key sc:{{{user}}}:{kind} is unreadable: {why}"))
}

/// The key `sc:{<user>}:<kind>` (`s` for the state, `o` for the override),
/// written straight into the command's buffer.
struct UserKey<'a>(&'a UserId, u8);

impl ToRedisArgs for UserKey<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        let mut w = out.writer_for_next_arg();
        // Writing into the command's own buffer cannot fail.
        let _ = w.write_all(b"sc:{").and_then(|()| w.write_all(self.0.as_str().as_bytes()));
        let _ = w.write_all(&[b'}', b':', self.1]);
    }
}

impl Backend for RedisBackend {
    fn execute<'a>(&'a self, user: &'a UserId, op: Op) -> BoxFuture<'a, Result<Reply, StoreError>> {
        Box::pin(self.engine.decide(self, user, op))
    }

    fn sweep(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async { Ok(0) })
    }

    /// Keys expire by themselves (PX on write).
    fn expires_by_itself(&self) -> bool {
        true
    }

    fn clock_owner(&self) -> &'static str {
        if self.test_clock.is_some() { "instance" } else { "redis" }
    }

    fn carries_messages(&self) -> bool {
        true
    }

    fn publish<'a>(&'a self, to: &'a str, message: Vec<u8>) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.publish_to(to, message))
    }

    fn subscribe<'a>(&'a self, me: &'a str) -> BoxFuture<'a, Result<Option<Subscription>, StoreError>> {
        Box::pin(async move { self.subscribe_to(me).await.map(Some) })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match self.conn.clone() {
                Conn::Standalone(mut c) => {
                    redis::cmd("PING").query_async::<String>(&mut c).await.map_err(unavailable)?;
                }
                // Ready when this instance can reach the cluster. A shard that
                // is failing over answers 503 for its users only; turning
                // every instance unready for it would take all users down.
                Conn::Cluster(mut c) => {
                    redis::cmd("PING").query_async::<String>(&mut c).await.map_err(unavailable)?;
                }
            }
            Ok(())
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Nothing is buffered here: every answer was already written by Redis.
        Box::pin(async { Ok(()) })
    }
}
