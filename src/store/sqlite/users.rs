//! The writer's copy of every user's state, kept packed so that a million
//! leases fit in well under a hundred bytes each.
//!
//! [`UserState`] holds every id as its own `Arc<str>`: five allocations
//! for a lease with two labels. Here a user's whole state is one byte
//! string, decoded into a `UserState` only while the rules run on it. The
//! map is split into shards so that the sweeper can walk it a piece at a
//! time, and each entry carries its earliest expiry so that the walk skips
//! users with nothing to sweep without touching their bytes.

use std::collections::HashMap;

use crate::limiter::{
    Holder, Label, Lease, Limit, Override, RevokeReason, StreamId, Timestamp, Tombstone, UserId, UserState,
};

/// How many pieces the map is split into; the sweeper's unit of progress.
pub(super) const SHARDS: usize = 64;

/// Every user with any lease, tombstone or override.
pub(super) struct Users {
    shards: Box<[HashMap<UserId, Packed>]>,
    /// Leases held, expired or not, over all users.
    leases: u64,
    /// Reused for encoding, so that a packed state costs exactly one
    /// allocation of its own size.
    scratch: Vec<u8>,
}

/// One user's state, packed. See [`encode`] for the layout.
pub(super) struct Packed {
    /// The earliest `expires_at` or `until` in `bytes`, the override's
    /// expiry included; `i64::MAX` if none.
    next_expiry: i64,
    bytes: Box<[u8]>,
}

/// Packed bytes that do not decode: only a bug can cause it, since every
/// packed state was encoded from valid values.
#[derive(Debug)]
pub(super) struct Undecodable;

impl Users {
    pub(super) fn new() -> Self {
        Self { shards: (0..SHARDS).map(|_| HashMap::new()).collect(), leases: 0, scratch: Vec::new() }
    }

    /// Leases held, live or expired but not yet swept.
    pub(super) fn leases(&self) -> u64 {
        self.leases
    }

    /// Users held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    /// Every user and their state.
    #[cfg(test)]
    pub(super) fn all(&self) -> Vec<(UserId, UserState)> {
        let all = self.shards.iter().flat_map(|s| s.iter());
        all.map(|(u, p)| (u.clone(), decode(&p.bytes).unwrap())).collect()
    }

    /// The user's state; empty for a user with nothing stored.
    pub(super) fn state(&self, user: &UserId) -> Result<UserState, Undecodable> {
        match self.shards[shard_of(user)].get(user) {
            Some(p) => decode(&p.bytes),
            None => Ok(UserState::default()),
        }
    }

    /// Stores `state` as the user's (dropping the user when it is empty)
    /// and returns what was stored before, for [`Users::restore`].
    pub(super) fn replace(&mut self, user: &UserId, state: &UserState) -> Option<Packed> {
        let new = (!state.is_empty()).then(|| {
            self.scratch.clear();
            let next_expiry = encode(state, &mut self.scratch);
            Packed { next_expiry, bytes: Box::from(&self.scratch[..]) }
        });
        self.put(user.clone(), new)
    }

    /// Puts back what [`Users::replace`] returned.
    pub(super) fn restore(&mut self, user: UserId, old: Option<Packed>) {
        self.put(user, old);
    }

    fn put(&mut self, user: UserId, new: Option<Packed>) -> Option<Packed> {
        self.leases += new.as_ref().map_or(0, Packed::leases);
        let shard = &mut self.shards[shard_of(&user)];
        let old = match new {
            Some(p) => shard.insert(user, p),
            None => shard.remove(&user),
        };
        self.leases -= old.as_ref().map_or(0, Packed::leases);
        old
    }

    /// Up to `max` users of one shard holding something that has expired
    /// at `now`.
    pub(super) fn expired_in(&self, shard: usize, now: Timestamp, max: usize) -> Vec<UserId> {
        self.shards[shard]
            .iter()
            .filter(|(_, p)| p.next_expiry <= now.as_micros())
            .map(|(u, _)| u.clone())
            .take(max)
            .collect()
    }

    /// Users in one shard, for bounding how much one sweep step scans.
    pub(super) fn shard_len(&self, shard: usize) -> usize {
        self.shards[shard].len()
    }
}

impl Packed {
    fn leases(&self) -> u64 {
        // The lease count comes first; see `encode`.
        Reader(&self.bytes).varint().unwrap_or(0)
    }
}

/// FNV-1a: picks a shard. Flooding one shard with crafted ids only makes
/// the sweeper's steps uneven; the shards themselves use the std hasher.
fn shard_of(user: &UserId) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.as_str().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % SHARDS as u64) as usize
}

/// Appends `state` to `out` and returns its earliest expiry. The layout,
/// with every count and length a LEB128 varint and every time 8 bytes
/// little-endian (µs since the epoch):
///
/// ```text
/// leases  tombstones  override (0: none, n+1: n)
/// [with an override: 0 (for good) | 1 expires_at]
/// leases × (started_at expires_at stream_id device_id? content_id?
///           device_class? content_kind? plan? holder?)
/// tombstones × (until stream_id evicted_by?)
/// ```
///
/// A string is its length then its bytes; an optional one is 0 for none,
/// else its length plus one, then its bytes.
fn encode(state: &UserState, out: &mut Vec<u8>) -> i64 {
    let mut next_expiry = i64::MAX;
    put_varint(out, state.leases().len() as u64);
    put_varint(out, state.tombstones().len() as u64);
    put_varint(out, state.limit_override().map_or(0, |o| u64::from(o.limit.get()) + 1));
    if let Some(o) = state.limit_override() {
        match o.expires_at {
            None => put_varint(out, 0),
            Some(at) => {
                next_expiry = next_expiry.min(at.as_micros());
                put_varint(out, 1);
                out.extend_from_slice(&at.as_micros().to_le_bytes());
            }
        }
    }
    for l in state.leases() {
        next_expiry = next_expiry.min(l.expires_at.as_micros());
        out.extend_from_slice(&l.started_at.as_micros().to_le_bytes());
        out.extend_from_slice(&l.expires_at.as_micros().to_le_bytes());
        put_str(out, l.stream_id.as_str());
        put_opt(out, l.device_id.as_ref().map(Label::as_str));
        put_opt(out, l.content_id.as_ref().map(Label::as_str));
        put_opt(out, l.device_class.as_ref().map(Label::as_str));
        put_opt(out, l.content_kind.as_ref().map(Label::as_str));
        put_opt(out, l.plan.as_ref().map(Label::as_str));
        put_opt(out, l.holder.as_ref().map(Holder::as_str));
    }
    for t in state.tombstones() {
        next_expiry = next_expiry.min(t.until.as_micros());
        out.extend_from_slice(&t.until.as_micros().to_le_bytes());
        put_str(out, t.stream_id.as_str());
        put_opt(
            out,
            match &t.reason {
                RevokeReason::EvictedBy(s) => Some(s.as_str()),
                RevokeReason::Revoked => None,
            },
        );
    }
    next_expiry
}

fn decode(bytes: &[u8]) -> Result<UserState, Undecodable> {
    let mut r = Reader(bytes);
    let (leases, tombstones, limit) = (r.len()?, r.len()?, r.varint()?);
    let limit_override = match limit {
        0 => None,
        n => {
            let limit = u32::try_from(n - 1).ok().and_then(Limit::new).ok_or(Undecodable)?;
            let expires_at = match r.varint()? {
                0 => None,
                1 => Some(r.time()?),
                _ => return Err(Undecodable),
            };
            Some(Override { limit, expires_at })
        }
    };
    // One spare seat: an acquire pushes a lease.
    let mut ls = Vec::with_capacity(leases + 1);
    for _ in 0..leases {
        let started_at = r.time()?;
        let expires_at = r.time()?;
        ls.push(Lease {
            stream_id: r.stream()?,
            device_id: r.label()?,
            content_id: r.label()?,
            device_class: r.label()?,
            content_kind: r.label()?,
            plan: r.label()?,
            holder: r.holder()?,
            started_at,
            expires_at,
        });
    }
    let mut ts = Vec::with_capacity(tombstones);
    for _ in 0..tombstones {
        let until = r.time()?;
        let stream_id = r.stream()?;
        let reason = match r.opt()? {
            Some(by) => RevokeReason::EvictedBy(StreamId::new(by).map_err(|_| Undecodable)?),
            None => RevokeReason::Revoked,
        };
        ts.push(Tombstone { stream_id, reason, until });
    }
    if !r.0.is_empty() {
        return Err(Undecodable);
    }
    Ok(UserState::new(ls, ts, limit_override))
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => put_varint(out, 0),
        Some(s) => {
            put_varint(out, s.len() as u64 + 1);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, Undecodable> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first().ok_or(Undecodable)?;
            self.0 = rest;
            n |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err(Undecodable)
    }

    fn len(&mut self) -> Result<usize, Undecodable> {
        usize::try_from(self.varint()?).map_err(|_| Undecodable)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Undecodable> {
        if n > self.0.len() {
            return Err(Undecodable);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn time(&mut self) -> Result<Timestamp, Undecodable> {
        let b = self.bytes(8)?;
        Ok(Timestamp::from_micros(i64::from_le_bytes(b.try_into().map_err(|_| Undecodable)?)))
    }

    fn str(&mut self) -> Result<&'a str, Undecodable> {
        let n = self.len()?;
        std::str::from_utf8(self.bytes(n)?).map_err(|_| Undecodable)
    }

    fn opt(&mut self) -> Result<Option<&'a str>, Undecodable> {
        match self.len()? {
            0 => Ok(None),
            n => std::str::from_utf8(self.bytes(n - 1)?).map(Some).map_err(|_| Undecodable),
        }
    }

    fn stream(&mut self) -> Result<StreamId, Undecodable> {
        StreamId::new(self.str()?).map_err(|_| Undecodable)
    }

    fn label(&mut self) -> Result<Option<Label>, Undecodable> {
        self.opt()?.map(Label::new).transpose().map_err(|_| Undecodable)
    }

    fn holder(&mut self) -> Result<Option<Holder>, Undecodable> {
        self.opt()?.map(Holder::new).transpose().map_err(|_| Undecodable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> StreamId {
        StreamId::new(s).unwrap()
    }

    fn sample() -> UserState {
        let label = |l: Option<&str>| l.map(|l| Label::new(l).unwrap());
        let lease = |s: &str, labels: [Option<&str>; 6], t: i64| Lease {
            stream_id: sid(s),
            device_id: label(labels[0]),
            content_id: label(labels[1]),
            device_class: label(labels[2]),
            content_kind: label(labels[3]),
            plan: label(labels[4]),
            holder: labels[5].map(|h| Holder::new(h).unwrap()),
            started_at: Timestamp::from_micros(t),
            expires_at: Timestamp::from_micros(t + 60_000_000),
        };
        let long = "é".repeat(128);
        UserState::new(
            vec![
                lease(
                    "a",
                    [Some("tv"), Some("title-1"), Some("tv"), Some("live"), Some("premium"), Some("sock-1")],
                    1_700_000_000_000_001,
                ),
                lease("b", [None, Some(""), None, Some("download"), None, None], -5),
                lease("c", [None, None, Some("mobile"), None, Some(""), None], 3),
                lease(
                    &"x".repeat(128),
                    [Some(&long), None, Some(&long), Some(&long), Some(&long), Some(&"h".repeat(128))],
                    i64::MAX - 60_000_000,
                ),
            ],
            vec![
                Tombstone {
                    stream_id: sid("c"),
                    reason: RevokeReason::EvictedBy(sid("a")),
                    until: Timestamp::from_micros(7),
                },
                Tombstone {
                    stream_id: sid("d"),
                    reason: RevokeReason::Revoked,
                    until: Timestamp::from_micros(i64::MIN),
                },
            ],
            Limit::new(1000).map(Override::permanent),
        )
    }

    #[test]
    fn a_packed_state_decodes_to_the_same_state() {
        for state in [
            sample(),
            UserState::new(Vec::new(), Vec::new(), Limit::new(0).map(Override::permanent)),
            UserState::new(
                Vec::new(),
                sample().tombstones().to_vec(),
                Some(Override { limit: Limit::new(2).unwrap(), expires_at: Some(Timestamp::from_micros(-3)) }),
            ),
            UserState::new(sample().leases().to_vec(), Vec::new(), None),
            UserState::new(Vec::new(), sample().tombstones().to_vec(), None),
        ] {
            let mut bytes = Vec::new();
            let next = encode(&state, &mut bytes);
            assert_eq!(decode(&bytes).unwrap(), state);
            let earliest = state
                .leases()
                .iter()
                .map(|l| l.expires_at.as_micros())
                .chain(state.tombstones().iter().map(|t| t.until.as_micros()))
                .chain(state.limit_override().and_then(|o| o.expires_at).map(|t| t.as_micros()))
                .min()
                .unwrap_or(i64::MAX);
            assert_eq!(next, earliest);
        }
    }

    #[test]
    fn truncated_or_padded_bytes_do_not_decode() {
        let mut bytes = Vec::new();
        encode(&sample(), &mut bytes);
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "a prefix of {n} bytes decoded");
        }
        bytes.push(0);
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn varints_round_trip() {
        for n in [0, 1, 127, 128, 300, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, n);
            let mut r = Reader(&out);
            assert_eq!(r.varint().unwrap(), n);
            assert!(r.0.is_empty());
        }
    }

    #[test]
    fn the_map_counts_leases_and_drops_empty_users() {
        let mut users = Users::new();
        let (u, v) = (UserId::new("u").unwrap(), UserId::new("v").unwrap());
        assert!(users.replace(&u, &sample()).is_none());
        users.replace(&v, &UserState::new(sample().leases()[..1].to_vec(), Vec::new(), None));
        assert_eq!((users.leases(), users.len()), (5, 2));
        assert_eq!(users.state(&u).unwrap(), sample());

        let old = users.replace(&u, &UserState::default());
        assert_eq!((users.leases(), users.len()), (1, 1));
        assert_eq!(users.state(&u).unwrap(), UserState::default());
        users.restore(u.clone(), old);
        assert_eq!((users.leases(), users.len()), (5, 2));
        assert_eq!(users.state(&u).unwrap(), sample());

        let now = Timestamp::from_micros(10);
        let shard = shard_of(&u);
        // `u`'s earliest expiry is i64::MIN (tombstone d); `v`'s is in 2023.
        assert!(users.expired_in(shard, now, 10).contains(&u));
        assert!(!users.expired_in(shard_of(&v), now, 10).contains(&v));
    }
}
