//! One user's item: how a [`UserState`] is written as DynamoDB attributes
//! and read back. Native maps keyed by stream id, so that an operator can
//! read an item with `aws dynamodb get-item`:
//!
//! | attribute | type | holds |
//! |---|---|---|
//! | `user_id` | S | the partition key |
//! | `version` | N | 1 on the first write, +1 on every write |
//! | `write_id` | S | which write made this version (detects our own write after an ambiguous failure) |
//! | `leases` | M | stream id → `{s: started_at, e: expires_at, d: device_id?, c: content_id?, dc: device_class?, ck: content_kind?, p: plan?, h: holder?}` |
//! | `tombstones` | M | stream id → `{u: until, by: evicting stream?}` (no `by`: revoked) |
//! | `override` | N | the per-user limit, if any |
//! | `override_until` | N | when that override ends, µs since the Unix epoch; absent when it is for good |
//! | `expires_at` | N | the TTL attribute: the last lease expiry, tombstone `until` or override end, epoch seconds rounded up; absent while there is an override for good |
//!
//! Times inside the maps are integers, microseconds since the Unix epoch,
//! as in `limiter`. Empty maps and absent labels are left out; an empty
//! label is an empty string. Reading is strict: an attribute or a field
//! streamcap does not know, or a value that is not valid, is a
//! [`DecodeError`], and the store answers `Unavailable` for that user
//! rather than guess (or overwrite what a later version wrote).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::limiter::{
    Holder, Label, Lease, Limit, Override, RevokeReason, StreamId, Timestamp, Tombstone, UserId, UserState,
};

/// The partition key attribute.
pub(crate) const KEY: &str = "user_id";
/// The TTL attribute.
pub(crate) const TTL: &str = "expires_at";
pub(super) const VERSION: &str = "version";
const WRITE_ID: &str = "write_id";
const LEASES: &str = "leases";
const TOMBSTONES: &str = "tombstones";
const OVERRIDE: &str = "override";
/// An attribute that releases before override expiry do not know, so they
/// refuse (503) an item that has one rather than read its override as
/// one for good.
const OVERRIDE_UNTIL: &str = "override_until";

pub(super) type Item = HashMap<String, AttributeValue>;

/// What a stored item holds besides the key.
#[derive(Debug, PartialEq)]
pub(super) struct Stored {
    pub state: UserState,
    pub version: u64,
    pub write_id: Option<String>,
}

/// Why an item could not be read.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub(super) struct DecodeError(String);

/// The item for `user` holding `state` as `version`, written by `write_id`.
pub(super) fn encode(user: &UserId, state: &UserState, version: u64, write_id: &str) -> Item {
    let mut item = Item::with_capacity(7);
    item.insert(KEY.into(), AttributeValue::S(user.as_str().into()));
    item.insert(VERSION.into(), number(version));
    item.insert(WRITE_ID.into(), AttributeValue::S(write_id.into()));
    if !state.leases().is_empty() {
        let leases = state.leases().iter().map(|l| (l.stream_id.as_str().to_owned(), lease(l))).collect();
        item.insert(LEASES.into(), AttributeValue::M(leases));
    }
    if !state.tombstones().is_empty() {
        let tombs = state.tombstones().iter().map(|t| (t.stream_id.as_str().to_owned(), tombstone(t))).collect();
        item.insert(TOMBSTONES.into(), AttributeValue::M(tombs));
    }
    if let Some(o) = state.limit_override() {
        item.insert(OVERRIDE.into(), number(o.limit.get()));
        if let Some(until) = o.expires_at {
            item.insert(OVERRIDE_UNTIL.into(), number(until.as_micros()));
        }
    }
    // An override for good keeps its item for good: no TTL.
    if state.limit_override().is_none_or(|o| o.expires_at.is_some())
        && let Some(secs) = ttl_seconds(state)
    {
        item.insert(TTL.into(), number(secs));
    }
    item
}

/// The latest lease expiry, tombstone end or override end, in epoch
/// seconds rounded up.
pub(super) fn ttl_seconds(state: &UserState) -> Option<i64> {
    let leases = state.leases().iter().map(|l| l.expires_at);
    let until = state.limit_override().and_then(|o| o.expires_at);
    let last = leases.chain(state.tombstones().iter().map(|t| t.until)).chain(until).max()?;
    Some(last.as_micros().div_euclid(1_000_000) + i64::from(last.as_micros().rem_euclid(1_000_000) != 0))
}

/// A lease's field names: one or two letters, since every lease of an
/// item repeats them and DynamoDB counts them toward the item's size.
const STARTED_AT: &str = "s";
const EXPIRES_AT: &str = "e";
const DEVICE_ID: &str = "d";
const CONTENT_ID: &str = "c";
const DEVICE_CLASS: &str = "dc";
const CONTENT_KIND: &str = "ck";
const PLAN: &str = "p";
const HOLDER: &str = "h";

fn lease(l: &Lease) -> AttributeValue {
    let mut m = HashMap::with_capacity(7);
    m.insert(STARTED_AT.into(), number(l.started_at.as_micros()));
    m.insert(EXPIRES_AT.into(), number(l.expires_at.as_micros()));
    for (name, value) in [
        (DEVICE_ID, &l.device_id),
        (CONTENT_ID, &l.content_id),
        (DEVICE_CLASS, &l.device_class),
        (CONTENT_KIND, &l.content_kind),
        (PLAN, &l.plan),
    ] {
        if let Some(v) = value {
            m.insert(name.into(), AttributeValue::S(v.as_str().into()));
        }
    }
    if let Some(h) = &l.holder {
        m.insert(HOLDER.into(), AttributeValue::S(h.as_str().into()));
    }
    AttributeValue::M(m)
}

fn tombstone(t: &Tombstone) -> AttributeValue {
    let mut m = HashMap::with_capacity(2);
    m.insert("u".into(), number(t.until.as_micros()));
    if let RevokeReason::EvictedBy(by) = &t.reason {
        m.insert("by".into(), AttributeValue::S(by.as_str().into()));
    }
    AttributeValue::M(m)
}

fn number(n: impl ToString) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

/// Reads the item of `user`.
pub(super) fn decode(user: &UserId, item: &Item) -> Result<Stored, DecodeError> {
    let mut version = None;
    let mut write_id = None;
    let mut leases = Vec::new();
    let mut tombstones = Vec::new();
    let mut limit_override = None;
    let mut override_until = None;
    for (name, value) in item {
        match name.as_str() {
            KEY => {
                if string(name, value)? != user.as_str() {
                    return Err(DecodeError(format!("{KEY} is not {:?}", user.as_str())));
                }
            }
            VERSION => version = Some(integer(name, value)?),
            WRITE_ID => write_id = Some(string(name, value)?.to_owned()),
            LEASES => {
                for (stream, value) in map(name, value)? {
                    let at = format!("{LEASES}.{stream}");
                    leases.push(decode_lease(&at, stream_id(&at, stream)?, map(&at, value)?)?);
                }
            }
            TOMBSTONES => {
                for (stream, value) in map(name, value)? {
                    let at = format!("{TOMBSTONES}.{stream}");
                    tombstones.push(decode_tombstone(&at, stream_id(&at, stream)?, map(&at, value)?)?);
                }
            }
            OVERRIDE => {
                let n: i64 = integer(name, value)?;
                let limit = u32::try_from(n).ok().and_then(Limit::new);
                limit_override = Some(limit.ok_or_else(|| DecodeError(format!("{OVERRIDE} {n} is out of range")))?);
            }
            OVERRIDE_UNTIL => override_until = Some(Timestamp::from_micros(integer(name, value)?)),
            // Derived from the rest; never read back.
            TTL => {
                integer::<i64>(name, value)?;
            }
            other => return Err(DecodeError(format!("unknown attribute {other:?}"))),
        }
    }
    let version = version.ok_or_else(|| DecodeError(format!("no {VERSION}")))?;
    let limit_override = match (limit_override, override_until) {
        (Some(limit), expires_at) => Some(Override { limit, expires_at }),
        (None, None) => None,
        (None, Some(_)) => return Err(DecodeError(format!("{OVERRIDE_UNTIL} without {OVERRIDE}"))),
    };
    Ok(Stored { state: UserState::new(leases, tombstones, limit_override), version, write_id })
}

/// Reads one lease. Only `s` and `e` are required: a lease written before
/// device classes, content kinds and plans existed has none of them.
fn decode_lease(at: &str, stream_id: StreamId, m: &Item) -> Result<Lease, DecodeError> {
    let (mut started, mut expires) = (None, None);
    let (mut device_id, mut content_id, mut device_class, mut content_kind, mut plan) = (None, None, None, None, None);
    let mut holder = None;
    for (name, value) in m {
        let at = || format!("{at}.{name}");
        match name.as_str() {
            STARTED_AT => started = Some(Timestamp::from_micros(integer(&at(), value)?)),
            EXPIRES_AT => expires = Some(Timestamp::from_micros(integer(&at(), value)?)),
            DEVICE_ID => device_id = Some(label(&at(), value)?),
            CONTENT_ID => content_id = Some(label(&at(), value)?),
            DEVICE_CLASS => device_class = Some(label(&at(), value)?),
            CONTENT_KIND => content_kind = Some(label(&at(), value)?),
            PLAN => plan = Some(label(&at(), value)?),
            HOLDER => {
                let text = string(&at(), value)?;
                let h = Holder::new(text).map_err(|e| DecodeError(format!("{}: holder {text:?} {e}", at())))?;
                holder = Some(h);
            }
            _ => return Err(DecodeError(format!("unknown field {}", at()))),
        }
    }
    let missing = |f: &str| DecodeError(format!("{at} has no {f}"));
    Ok(Lease {
        stream_id,
        device_id,
        content_id,
        device_class,
        content_kind,
        plan,
        holder,
        started_at: started.ok_or_else(|| missing(STARTED_AT))?,
        expires_at: expires.ok_or_else(|| missing(EXPIRES_AT))?,
    })
}

fn decode_tombstone(at: &str, stream_id: StreamId, m: &Item) -> Result<Tombstone, DecodeError> {
    let (mut until, mut reason) = (None, RevokeReason::Revoked);
    for (name, value) in m {
        let at = || format!("{at}.{name}");
        match name.as_str() {
            "u" => until = Some(Timestamp::from_micros(integer(&at(), value)?)),
            "by" => reason = RevokeReason::EvictedBy(stream_id_value(&at(), value)?),
            _ => return Err(DecodeError(format!("unknown field {}", at()))),
        }
    }
    let until = until.ok_or_else(|| DecodeError(format!("{at} has no u")))?;
    Ok(Tombstone { stream_id, reason, until })
}

fn string<'a>(at: &str, v: &'a AttributeValue) -> Result<&'a str, DecodeError> {
    v.as_s().map(String::as_str).map_err(|_| DecodeError(format!("{at} is not a string")))
}

fn integer<T: std::str::FromStr>(at: &str, v: &AttributeValue) -> Result<T, DecodeError> {
    let n = v.as_n().map_err(|_| DecodeError(format!("{at} is not a number")))?;
    n.parse().map_err(|_| DecodeError(format!("{at} = {n} is not an integer in range")))
}

fn map<'a>(at: &str, v: &'a AttributeValue) -> Result<&'a Item, DecodeError> {
    v.as_m().map_err(|_| DecodeError(format!("{at} is not a map")))
}

fn label(at: &str, v: &AttributeValue) -> Result<Label, DecodeError> {
    Label::new(string(at, v)?).map_err(|e| DecodeError(format!("{at}: {e}")))
}

fn stream_id(at: &str, s: &str) -> Result<StreamId, DecodeError> {
    StreamId::new(s).map_err(|e| DecodeError(format!("{at}: stream id {e}")))
}

fn stream_id_value(at: &str, v: &AttributeValue) -> Result<StreamId, DecodeError> {
    stream_id(at, string(at, v)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    fn sample() -> UserState {
        let lease = |s: &str, d: Option<&str>| Lease {
            stream_id: StreamId::new(s).unwrap(),
            device_id: d.map(|d| Label::new(d).unwrap()),
            content_id: Some(Label::new("").unwrap()),
            device_class: d.map(|_| Label::new("tv").unwrap()),
            content_kind: d.map(|_| Label::new("live").unwrap()),
            plan: d.map(|_| Label::new("premium").unwrap()),
            holder: d.map(|_| Holder::new("sock-1").unwrap()),
            started_at: Timestamp::from_micros(1_700_000_000_000_001),
            expires_at: Timestamp::from_micros(1_700_000_060_000_001),
        };
        let tomb = |s: &str, reason| Tombstone {
            stream_id: StreamId::new(s).unwrap(),
            reason,
            until: Timestamp::from_micros(1_700_000_120_500_000),
        };
        UserState::new(
            vec![lease("tv", Some("living room")), lease("phone", None)],
            vec![
                tomb("old", RevokeReason::Revoked),
                tomb("older", RevokeReason::EvictedBy(StreamId::new("tv").unwrap())),
            ],
            None,
        )
    }

    fn sorted(mut s: Stored) -> Stored {
        let mut leases = s.state.leases().to_vec();
        leases.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
        let mut tombs = s.state.tombstones().to_vec();
        tombs.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
        s.state = UserState::new(leases, tombs, s.state.limit_override());
        s
    }

    #[test]
    fn what_is_written_is_read_back() {
        let u = user("alice");
        let state = sample();
        let item = encode(&u, &state, 7, "w1");
        assert_eq!(item[TTL], AttributeValue::N("1700000121".into()), "the tombstone's end, rounded up");
        let back = decode(&u, &item).unwrap();
        let expected = Stored { state, version: 7, write_id: Some("w1".into()) };
        assert_eq!(sorted(back), sorted(expected));

        let with_override =
            UserState::new(sample().leases().to_vec(), Vec::new(), Limit::new(0).map(Override::permanent));
        let item = encode(&u, &with_override, 1, "w2");
        assert!(!item.contains_key(TTL), "an override keeps the item for good");
        assert_eq!(decode(&u, &item).unwrap().state.limit_override(), Limit::new(0).map(Override::permanent));
        // An override that ends keeps the item until then, and no longer.
        let until = Timestamp::from_micros(4_000_000_000_000_001);
        let ending = Override { limit: Limit::new(2).unwrap(), expires_at: Some(until) };
        let item = encode(&u, &UserState::new(sample().leases().to_vec(), Vec::new(), Some(ending)), 1, "w3");
        assert_eq!(item.get(TTL), Some(&number(4_000_000_001_i64)));
        assert_eq!(item.get(OVERRIDE_UNTIL), Some(&number(until.as_micros())));
        assert_eq!(decode(&u, &item).unwrap().state.limit_override(), Some(ending));
    }

    /// The attributes are written under their short names, each only
    /// when the lease has it; an item written before they existed reads
    /// with none of them.
    #[test]
    fn lease_attributes_have_short_names_and_may_be_absent() {
        let u = user("alice");
        let item = encode(&u, &sample(), 1, "w");
        let leases = item[LEASES].as_m().unwrap();
        let fields = |s: &str| {
            let mut names: Vec<&str> = leases[s].as_m().unwrap().keys().map(String::as_str).collect();
            names.sort_unstable();
            names
        };
        assert_eq!(fields("tv"), ["c", "ck", "d", "dc", "e", "h", "p", "s"]);
        assert_eq!(fields("phone"), ["c", "e", "s"]);
        let tv = leases["tv"].as_m().unwrap();
        let s = |v: &str| AttributeValue::S(v.into());
        assert_eq!((&tv["dc"], &tv["ck"], &tv["p"], &tv["h"]), (&s("tv"), &s("live"), &s("premium"), &s("sock-1")));

        let n = |v: &str| AttributeValue::N(v.into());
        let old_lease = [("s", n("1")), ("e", n("2")), ("d", s("tv")), ("c", s("m"))];
        let old_item: Item = [
            (KEY.to_owned(), s("alice")),
            (VERSION.to_owned(), n("3")),
            (
                LEASES.to_owned(),
                AttributeValue::M(
                    [(
                        "a".to_owned(),
                        AttributeValue::M(old_lease.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
                    )]
                    .into(),
                ),
            ),
        ]
        .into();
        let back = decode(&u, &old_item).unwrap();
        let l = &back.state.leases()[0];
        assert_eq!(
            (l.device_id.as_ref().map(Label::as_str), l.content_id.as_ref().map(Label::as_str)),
            (Some("tv"), Some("m"))
        );
        assert_eq!((&l.device_class, &l.content_kind, &l.plan, &l.holder), (&None, &None, &None, &None));
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        let at = |us| {
            let t = Tombstone {
                stream_id: StreamId::new("a").unwrap(),
                reason: RevokeReason::Revoked,
                until: Timestamp::from_micros(us),
            };
            ttl_seconds(&UserState::new(Vec::new(), vec![t], None))
        };
        assert_eq!(at(2_000_000), Some(2));
        assert_eq!(at(2_000_001), Some(3));
        assert_eq!(ttl_seconds(&UserState::default()), None);
    }

    /// Every way an item can be malformed is a decode error naming the
    /// attribute, never a panic.
    #[test]
    fn malformed_items_are_errors_that_name_the_attribute() {
        let u = user("alice");
        let good = encode(&u, &sample(), 3, "w");
        let n = |s: &str| AttributeValue::N(s.into());
        let s = |s: &str| AttributeValue::S(s.into());
        let m = |pairs: &[(&str, AttributeValue)]| {
            AttributeValue::M(pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect())
        };
        let long = "x".repeat(129);
        let cases: Vec<(&str, Option<AttributeValue>, &str)> = vec![
            ("user_id", Some(s("bob")), "user_id"),
            ("user_id", Some(n("1")), "user_id"),
            ("version", None, "no version"),
            ("version", Some(s("1")), "version"),
            ("version", Some(n("-1")), "version"),
            ("version", Some(n("1.5")), "version"),
            ("leases", Some(s("x")), "leases"),
            ("leases", Some(m(&[("a", s("x"))])), "leases.a"),
            ("leases", Some(m(&[("a", m(&[("s", n("1"))]))])), "leases.a has no e"),
            ("leases", Some(m(&[("a", m(&[("s", n("1")), ("e", n("99999999999999999999"))]))])), "leases.a.e"),
            ("leases", Some(m(&[("a b", m(&[("s", n("1")), ("e", n("2"))]))])), "leases.a b"),
            ("leases", Some(m(&[(&long, m(&[("s", n("1")), ("e", n("2"))]))])), "stream id"),
            ("leases", Some(m(&[("a", m(&[("s", n("1")), ("e", n("2")), ("d", n("3"))]))])), "leases.a.d"),
            ("leases", Some(m(&[("a", m(&[("s", n("1")), ("e", n("2")), ("x", n("3"))]))])), "leases.a.x"),
            ("leases", Some(m(&[("a", m(&[("s", n("1")), ("e", n("2")), ("c", s(&"é".repeat(129)))]))])), "leases.a.c"),
            ("leases", Some(m(&[("a", m(&[("s", n("1")), ("e", n("2")), ("dc", n("3"))]))])), "leases.a.dc"),
            ("leases", Some(m(&[("a", m(&[("s", n("1")), ("e", n("2")), ("ck", s(&long))]))])), "leases.a.ck"),
            ("leases", Some(m(&[("a", m(&[("s", n("1")), ("e", n("2")), ("p", m(&[]))]))])), "leases.a.p"),
            ("leases", Some(m(&[("a", m(&[("s", n("1")), ("e", n("2")), ("h", n("3"))]))])), "leases.a.h"),
            ("leases", Some(m(&[("a", m(&[("s", n("1")), ("e", n("2")), ("h", s(""))]))])), "leases.a.h: holder"),
            ("leases", Some(m(&[("a", m(&[("s", n("1")), ("e", n("2")), ("h", s("a/b"))]))])), "leases.a.h: holder"),
            ("leases", Some(m(&[("a", m(&[("s", n("1")), ("e", n("2")), ("h", s(&long))]))])), "leases.a.h: holder"),
            ("tombstones", Some(m(&[("a", m(&[]))])), "tombstones.a has no u"),
            ("tombstones", Some(m(&[("a", m(&[("u", n("1")), ("by", s("no/slash"))]))])), "tombstones.a.by"),
            ("override", Some(n("1001")), "override"),
            ("override", Some(n("-3")), "override"),
            ("override_until", Some(s("soon")), "override_until"),
            ("expires_at", Some(s("soon")), "expires_at"),
            ("surprise", Some(n("1")), "surprise"),
        ];
        for (name, value, needle) in cases {
            let mut item = good.clone();
            match value {
                Some(v) => item.insert(name.into(), v),
                None => item.remove(name),
            };
            let err = decode(&u, &item).expect_err(needle).to_string();
            assert!(err.contains(needle), "{name}: {err:?} should name {needle:?}");
        }
        assert!(decode(&u, &good).is_ok());
    }
}
