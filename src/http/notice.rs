//! Telling another instance that one of its sockets lost its lease.
//!
//! Every socket's lease carries a holder token, `<instance>~<socket>`:
//! the id of the instance that holds the socket and the socket's number
//! there. When a decision on this instance evicts, revokes or takes over a
//! lease whose holder is another instance's, that instance is sent a
//! notice through the store ([`crate::store::Store::publish`]), and the
//! socket it names says `revoked` and closes, as it would had the decision
//! been made where it lives. Notices are best effort: one that is lost
//! leaves the socket to learn at its next renewal, within ttl/3. Nothing
//! here decides: a notice only tells what a decision already did.
//!
//! A lease held by an API Gateway WebSocket connection (streamcap-lambda)
//! has the holder `apigw~<connection>` ([`GATEWAY`]): its notice is the
//! `revoked` message itself, handed to the pusher that
//! [`push_to_gateway`] installed, which posts it to the connection.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::limiter::{Holder, StreamId, UserId};
use crate::metrics;
use crate::store::{Store, Subscription};

use super::dto::{RevokedMessage, SocketMessage};

/// The "instance" of the holder tokens of API Gateway WebSocket
/// connections: `apigw~<connection>`.
pub const GATEWAY: &str = "apigw";

/// Where the losses of connection-held leases go: the holder, and the
/// `revoked` message for it.
type GatewayPush = Box<dyn Fn(&Holder, String) + Send + Sync>;

static GATEWAY_PUSH: OnceLock<GatewayPush> = OnceLock::new();

/// Installs the pusher of connection-held leases' losses (once per
/// process: streamcap-lambda's). Without one they are dropped, and the
/// connection learns at its next renewal.
pub fn push_to_gateway(push: impl Fn(&Holder, String) + Send + Sync + 'static) {
    let _ = GATEWAY_PUSH.set(Box::new(push));
}

/// The `revoked` message a socket gets for `loss` of `stream`.
pub(super) fn revoked_message(stream: &StreamId, loss: &Loss) -> String {
    let (reason, by) = match loss {
        Loss::Evicted(by) => ("evicted_by_new_stream", Some(by.as_str().to_owned())),
        Loss::Revoked => ("revoked", None),
        Loss::Replaced => ("replaced", Some(stream.as_str().to_owned())),
    };
    let revoked = RevokedMessage { reason: reason.to_owned(), by_stream_id: by };
    serde_json::to_string(&SocketMessage::Revoked(revoked)).expect("messages serialize")
}

/// Why a socket lost its lease to someone else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Loss {
    /// Evict-oldest or a take-over gave the seat to this stream.
    Evicted(StreamId),
    /// A revoke-all.
    Revoked,
    /// A newer socket for the same stream holds the lease now.
    Replaced,
}

/// This instance's name, as holder tokens and notices carry it.
#[derive(Clone, Debug)]
pub struct InstanceId(Arc<str>);

impl InstanceId {
    /// The host's name (letters, digits, `.` and `-`, at most 64 of them)
    /// and a random suffix, so that two processes on one host differ.
    pub fn generate() -> InstanceId {
        let host = hostname();
        let host: String =
            host.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')).take(64).collect();
        let host = if host.is_empty() { "streamcap".to_owned() } else { host };
        let suffix = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), std::process::id()) as u32;
        InstanceId(format!("{host}-{suffix:08x}").into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The holder token of this instance's socket number `socket`.
    pub(super) fn holder(&self, socket: u64) -> Holder {
        Holder::new(&format!("{}~{socket}", self.0)).expect("an instance id and a number make a valid holder")
    }

    /// The socket number of `holder`, when it is one of this instance's.
    pub(super) fn socket_of(&self, holder: &Holder) -> Option<u64> {
        let (instance, socket) = holder.as_str().rsplit_once('~')?;
        if instance == &*self.0 { socket.parse().ok() } else { None }
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// A notice as it travels: JSON, read only by streamcap.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Wire<'a> {
    user: &'a str,
    stream: &'a str,
    holder: &'a str,
    /// `evicted`, `revoked` or `replaced`.
    lost: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    by: Option<&'a str>,
}

/// A notice this instance received: which socket lost which lease, how.
#[derive(Debug, PartialEq)]
pub(super) struct Notice {
    pub user: UserId,
    pub stream: StreamId,
    pub socket: u64,
    pub loss: Loss,
}

/// Sends a notice to the instance that holds `holder`, in the background;
/// does nothing for a holder of this instance's (the registry tells those
/// sockets itself) or a store that carries no messages.
pub(super) fn send(store: &Store, me: &InstanceId, user: &UserId, stream: &StreamId, holder: &Holder, loss: &Loss) {
    let Some((to, _)) = holder.as_str().rsplit_once('~') else { return };
    if to == GATEWAY {
        match GATEWAY_PUSH.get() {
            Some(push) => push(holder, revoked_message(stream, loss)),
            None => metrics::push("dropped"),
        }
        return;
    }
    if to == me.as_str() || !store.carries_messages() {
        return;
    }
    let (lost, by) = match loss {
        Loss::Evicted(by) => ("evicted", Some(by.as_str())),
        Loss::Revoked => ("revoked", None),
        Loss::Replaced => ("replaced", None),
    };
    let wire = Wire { user: user.as_str(), stream: stream.as_str(), holder: holder.as_str(), lost, by };
    let message = serde_json::to_vec(&wire).expect("a notice serializes");
    let (store, to) = (store.clone(), to.to_owned());
    tokio::spawn(async move {
        match store.publish(&to, message).await {
            Ok(0) => metrics::push("dropped"),
            Ok(_) => metrics::push("sent"),
            Err(e) => {
                tracing::warn!(error = %e, instance = %to, "a notice to another instance was not sent; its socket learns at its next renewal");
                metrics::push("dropped");
            }
        }
    });
}

/// Reads a notice addressed to `me`; `None` for anything else.
fn read(me: &InstanceId, bytes: &[u8]) -> Option<Notice> {
    let wire: Wire<'_> = serde_json::from_slice(bytes).ok()?;
    let socket = me.socket_of(&Holder::new(wire.holder).ok()?)?;
    let loss = match (wire.lost, wire.by) {
        ("evicted", Some(by)) => Loss::Evicted(StreamId::new(by).ok()?),
        ("revoked", None) => Loss::Revoked,
        ("replaced", None) => Loss::Replaced,
        _ => return None,
    };
    Some(Notice { user: UserId::new(wire.user).ok()?, stream: StreamId::new(wire.stream).ok()?, socket, loss })
}

/// Hands each notice of `subscription` to `deliver`, which says whether a
/// socket took it, until the subscription ends.
pub(super) async fn receive(me: InstanceId, mut subscription: Subscription, deliver: impl Fn(Notice) -> bool) {
    while let Some(bytes) = subscription.recv().await {
        match read(&me, &bytes).map(&deliver) {
            Some(true) => metrics::push("received"),
            Some(false) => metrics::push("dropped"),
            None => tracing::warn!(bytes = bytes.len(), "ignored a notice that is not one of this instance's"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_names_its_instance_and_socket() {
        let me = InstanceId("web-1-0000abcd".into());
        let other = InstanceId("web-2-0000abcd".into());
        let holder = me.holder(17);
        assert_eq!(holder.as_str(), "web-1-0000abcd~17");
        assert_eq!(me.socket_of(&holder), Some(17));
        assert_eq!(other.socket_of(&holder), None);
        assert_eq!(me.socket_of(&Holder::new("web-1-0000abcd~x").unwrap()), None);
        let generated = InstanceId::generate();
        assert!(Holder::new(&format!("{generated}~{}", u64::MAX)).is_ok(), "{generated}");
        assert!(!generated.as_str().contains('~'));
    }

    #[test]
    fn a_notice_reads_back_only_where_it_is_addressed() {
        let me = InstanceId("a-1".into());
        let ids = |u: &str, s: &str| (UserId::new(u).unwrap(), StreamId::new(s).unwrap());
        let (user, stream) = ids("alice", "tv-1");
        let holder = me.holder(3);
        for (loss, lost, by) in [
            (Loss::Evicted(StreamId::new("phone-1").unwrap()), "evicted", Some("phone-1")),
            (Loss::Revoked, "revoked", None),
            (Loss::Replaced, "replaced", None),
        ] {
            let wire = Wire { user: "alice", stream: "tv-1", holder: holder.as_str(), lost, by };
            let bytes = serde_json::to_vec(&wire).unwrap();
            let notice = read(&me, &bytes).unwrap();
            assert_eq!(notice, Notice { user: user.clone(), stream: stream.clone(), socket: 3, loss });
            assert_eq!(read(&InstanceId("b-1".into()), &bytes), None, "another instance's");
        }
        for bad in [&b"{}"[..], b"not json", br#"{"user":"a","stream":"s","holder":"a-1~3","lost":"evicted"}"#] {
            assert_eq!(read(&me, bad), None);
        }
    }
}
