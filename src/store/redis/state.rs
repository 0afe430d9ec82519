//! A user's state as Redis keeps it in `sc:{user}:s`: format 3, 4 or 5,
//! one MessagePack sequence of plain values.
//!
//! First come the format, the number of leases, the number of tombstones,
//! the key's deadline (µs since the epoch) and a copy of the override
//! (false when there is none). Then, per lease, in (`started_at`, stream)
//! order: stream, `started_at`, `expires_at`, `device_id`, `content_id`,
//! `device_class`, `content_kind` and plan, with false for an absent
//! label, and in format 4 the holder (false when no socket holds it).
//! Then three values per tombstone: stream, `until`, and the evicting
//! stream or false for a revocation. Times are integers in µs; Lua reads
//! them exactly below 2^53 µs, the year 2255.
//!
//! Format 4 is written only for a user with a socket-held lease, and
//! format 3 otherwise, which is what releases before holders read and
//! write (the releases that decided inside Redis among them): instances
//! of both can share one Redis, and an older one refuses (503) only the
//! users whose streams a socket holds. Format 5 is format 4 with one more
//! value after the override: when it ends (µs). It is written only for a
//! user whose override has an expiry, so that every release before
//! override expiry refuses that user (an unknown format) rather than read
//! the override as one for good. Format 2, which an older script
//! wrote, is format 3 with five values per lease (no device class, content
//! kind or plan); it is read, and written back at the user's next change.
//! Only the forms that Lua's `cmsgpack` writes for strings, integers and
//! booleans are read; anything else, or a sequence of the wrong shape, is
//! refused and the key is never overwritten.

use crate::limiter::{Holder, Label, Lease, Limit, Override, RevokeReason, StreamId, Timestamp, Tombstone, UserState};

/// A decoded state and the key's deadline.
pub(super) struct Stored {
    pub state: UserState,
    /// The key expires at or before this time, µs since the epoch.
    pub deadline: i64,
}

/// Reads a stored state, format 2, 3, 4 or 5.
pub(super) fn decode(bytes: &[u8]) -> Result<Stored, String> {
    let mut r = Reader(bytes);
    let format = r.int()?;
    let per_lease = match format {
        2 => 5,
        3 => 8,
        4 | 5 => 9,
        other => return Err(format!("unknown state format {other}")),
    };
    let (nl, nt) = (r.count()?, r.count()?);
    let deadline = r.int()?;
    let limit_override = match r.item()? {
        Item::Bool(false) | Item::Nil => None,
        Item::Int(n) => Some(Override::permanent(limit(n)?)),
        _ => return Err("the override is not a number".into()),
    };
    let limit_override = match (format, limit_override) {
        (5, Some(o)) => Some(Override { expires_at: Some(r.time()?), ..o }),
        (5, None) => return Err("format 5 without an override".into()),
        (_, o) => o,
    };
    // Each lease takes at least 5 bytes, each tombstone 3: a count larger
    // than the bytes left is corrupt, and must not size an allocation.
    if nl.saturating_mul(5).saturating_add(nt.saturating_mul(3)) > bytes.len() {
        return Err(format!("{nl} leases and {nt} tombstones do not fit in {} bytes", bytes.len()));
    }
    let mut leases = Vec::with_capacity(nl);
    for _ in 0..nl {
        let (stream_id, started_at, expires_at) = (r.stream()?, r.time()?, r.time()?);
        let (device_id, content_id) = (r.label()?, r.label()?);
        let (device_class, content_kind, plan) =
            if per_lease >= 8 { (r.label()?, r.label()?, r.label()?) } else { (None, None, None) };
        let holder = if per_lease == 9 { r.holder()? } else { None };
        leases.push(Lease {
            stream_id,
            device_id,
            content_id,
            device_class,
            content_kind,
            plan,
            holder,
            started_at,
            expires_at,
        });
    }
    let mut tombstones = Vec::with_capacity(nt);
    for _ in 0..nt {
        let (stream_id, until) = (r.stream()?, r.time()?);
        let reason = match r.opt_str()? {
            Some(by) => RevokeReason::EvictedBy(stream(by)?),
            None => RevokeReason::Revoked,
        };
        tombstones.push(Tombstone { stream_id, reason, until });
    }
    if !r.0.is_empty() {
        return Err("values after the last tombstone".into());
    }
    Ok(Stored { state: UserState::new(leases, tombstones, limit_override), deadline })
}

/// Writes `state` with the key's `deadline`: in format 5 when its
/// override has an expiry, else in format 4 when a socket holds one of its
/// leases, else in format 3.
pub(super) fn encode(state: &UserState, deadline: i64) -> Vec<u8> {
    let mut leases: Vec<&Lease> = state.leases().iter().collect();
    leases.sort_unstable_by(|a, b| (a.started_at, &a.stream_id).cmp(&(b.started_at, &b.stream_id)));
    let until = state.limit_override().and_then(|o| o.expires_at);
    let held = until.is_some() || leases.iter().any(|l| l.holder.is_some());
    let tombstones = state.tombstones();
    let mut out = Vec::with_capacity(24 + 64 * leases.len() + 24 * tombstones.len());
    int(
        &mut out,
        if until.is_some() {
            5
        } else if held {
            4
        } else {
            3
        },
    );
    int(&mut out, leases.len() as i64);
    int(&mut out, tombstones.len() as i64);
    int(&mut out, deadline);
    match state.limit_override() {
        Some(o) => int(&mut out, i64::from(o.limit.get())),
        None => out.push(FALSE),
    }
    if let Some(until) = until {
        int(&mut out, until.as_micros());
    }
    for l in leases {
        bytes(&mut out, l.stream_id.as_str().as_bytes());
        int(&mut out, l.started_at.as_micros());
        int(&mut out, l.expires_at.as_micros());
        for label in [&l.device_id, &l.content_id, &l.device_class, &l.content_kind, &l.plan] {
            match label {
                Some(label) => bytes(&mut out, label.as_str().as_bytes()),
                None => out.push(FALSE),
            }
        }
        if held {
            match &l.holder {
                Some(h) => bytes(&mut out, h.as_str().as_bytes()),
                None => out.push(FALSE),
            }
        }
    }
    for t in tombstones {
        bytes(&mut out, t.stream_id.as_str().as_bytes());
        int(&mut out, t.until.as_micros());
        match &t.reason {
            RevokeReason::EvictedBy(by) => bytes(&mut out, by.as_str().as_bytes()),
            RevokeReason::Revoked => out.push(FALSE),
        }
    }
    out
}

const FALSE: u8 = 0xc2;

/// An integer in the shortest form, as `cmsgpack` writes it.
fn int(out: &mut Vec<u8>, n: i64) {
    match n {
        0..=0x7f => out.push(n as u8),
        0x80..=0xff => out.extend_from_slice(&[0xcc, n as u8]),
        0x100..=0xffff => out.extend_from_slice(&[0xcd, (n >> 8) as u8, n as u8]),
        0x1_0000..=0xffff_ffff => {
            out.push(0xce);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        0x1_0000_0000.. => {
            out.push(0xcf);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        _ => {
            out.push(0xd3);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// Bytes as a MessagePack string, which Lua reads as a string.
fn bytes(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    match n {
        0..=31 => out.push(0xa0 | n as u8),
        32..=0xff => out.extend_from_slice(&[0xd9, n as u8]),
        0x100..=0xffff => out.extend_from_slice(&[0xda, (n >> 8) as u8, n as u8]),
        _ => {
            out.push(0xdb);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(s);
}

fn text(b: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|e| format!("not UTF-8: {e}"))
}

fn stream(b: &[u8]) -> Result<StreamId, String> {
    let s = text(b)?;
    StreamId::new(s).map_err(|e| format!("stream id {s:?} {e}"))
}

fn limit(n: i64) -> Result<Limit, String> {
    u32::try_from(n).ok().and_then(Limit::new).ok_or_else(|| format!("limit {n}"))
}

/// One MessagePack value, as `cmsgpack` writes them.
enum Item<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    Str(&'a [u8]),
}

/// The unread rest of a MessagePack sequence.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A big-endian unsigned integer of `n` bytes.
    fn uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self.take(n)?.iter().fold(0, |acc, &b| acc << 8 | u64::from(b)))
    }

    fn item(&mut self) -> Result<Item<'a>, String> {
        let tag = self.take(1)?[0];
        let item = match tag {
            0x00..=0x7f => Item::Int(i64::from(tag)),
            0xe0..=0xff => Item::Int(i64::from(tag as i8)),
            0xc0 => Item::Nil,
            0xc2 => Item::Bool(false),
            0xc3 => Item::Bool(true),
            0xcc => Item::Int(self.uint(1)? as i64),
            0xcd => Item::Int(self.uint(2)? as i64),
            0xce => Item::Int(self.uint(4)? as i64),
            0xcf => Item::Int(i64::try_from(self.uint(8)?).map_err(|_| "integer out of range")?),
            0xd0 => Item::Int(i64::from(self.uint(1)? as u8 as i8)),
            0xd1 => Item::Int(i64::from(self.uint(2)? as u16 as i16)),
            0xd2 => Item::Int(i64::from(self.uint(4)? as u32 as i32)),
            0xd3 => Item::Int(self.uint(8)? as i64),
            0xa0..=0xbf => Item::Str(self.take(usize::from(tag & 0x1f))?),
            0xd9 | 0xc4 => {
                let n = self.uint(1)?;
                Item::Str(self.take(n as usize)?)
            }
            0xda | 0xc5 => {
                let n = self.uint(2)?;
                Item::Str(self.take(n as usize)?)
            }
            0xdb | 0xc6 => {
                let n = self.uint(4)?;
                Item::Str(self.take(n as usize)?)
            }
            other => return Err(format!("unexpected MessagePack type {other:#04x}")),
        };
        Ok(item)
    }

    fn int(&mut self) -> Result<i64, String> {
        match self.item()? {
            Item::Int(n) => Ok(n),
            _ => Err("expected an integer".into()),
        }
    }

    fn count(&mut self) -> Result<usize, String> {
        let n = self.int()?;
        usize::try_from(n).map_err(|_| format!("count {n}"))
    }

    fn time(&mut self) -> Result<Timestamp, String> {
        self.int().map(Timestamp::from_micros)
    }

    /// A string, or nothing for false or nil.
    fn opt_str(&mut self) -> Result<Option<&'a [u8]>, String> {
        match self.item()? {
            Item::Str(s) => Ok(Some(s)),
            Item::Bool(false) | Item::Nil => Ok(None),
            _ => Err("expected a string".into()),
        }
    }

    fn stream(&mut self) -> Result<StreamId, String> {
        stream(self.opt_str()?.ok_or("expected a stream id")?)
    }

    fn holder(&mut self) -> Result<Option<Holder>, String> {
        let Some(b) = self.opt_str()? else { return Ok(None) };
        let s = text(b)?;
        Holder::new(s).map(Some).map_err(|e| format!("holder {s:?} {e}"))
    }

    fn label(&mut self) -> Result<Option<Label>, String> {
        let Some(b) = self.opt_str()? else { return Ok(None) };
        let s = text(b)?;
        Label::new(s).map(Some).map_err(|e| format!("label {s:?} {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(s: &str) -> Option<Label> {
        Some(Label::new(s).unwrap())
    }

    fn lease(stream: &str, started: i64, labels: [Option<Label>; 5]) -> Lease {
        let [device_id, content_id, device_class, content_kind, plan] = labels;
        Lease {
            stream_id: StreamId::new(stream).unwrap(),
            device_id,
            content_id,
            device_class,
            content_kind,
            plan,
            holder: None,
            started_at: Timestamp::from_micros(started),
            expires_at: Timestamp::from_micros(started + 60_000_000),
        }
    }

    fn held(l: Lease, h: &str) -> Lease {
        Lease { holder: Some(Holder::new(h).unwrap()), ..l }
    }

    fn tombstone(stream: &str, until: i64, by: Option<&str>) -> Tombstone {
        let reason = by.map_or(RevokeReason::Revoked, |b| RevokeReason::EvictedBy(StreamId::new(b).unwrap()));
        Tombstone { stream_id: StreamId::new(stream).unwrap(), reason, until: Timestamp::from_micros(until) }
    }

    /// Every value survives a round trip, whatever its width: labels of
    /// every string form (an empty one is still a label), times of every
    /// integer form up to 2^53 - 1, and leases come back in start order.
    #[test]
    fn a_state_round_trips_with_every_width() {
        let long = "é".repeat(100); // 200 bytes: str8
        let longer = "é".repeat(128); // 256 bytes: str16
        let times = [0, 127, 128, 255, 256, 65_535, 65_536, 4_294_967_295, 4_294_967_296, (1 << 53) - 1];
        let leases: Vec<Lease> = times
            .iter()
            .rev()
            .enumerate()
            .map(|(i, &t)| {
                let device = if i % 2 == 0 { long.as_str() } else { longer.as_str() };
                lease(&format!("s{i}"), t, [label(device), None, label("tv"), label(""), label(&long[..64])])
            })
            .collect();
        let tombstones = vec![tombstone("gone", 5, Some("s1")), tombstone("revoked", 1 << 40, None)];
        let state = UserState::new(leases.clone(), tombstones, Limit::new(1000).map(Override::permanent));
        let bytes = encode(&state, (1 << 53) - 1);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.deadline, (1 << 53) - 1);
        let mut sorted = leases;
        sorted.sort_by_key(|l| l.started_at);
        assert_eq!(
            back.state,
            UserState::new(sorted, state.tombstones().to_vec(), Limit::new(1000).map(Override::permanent))
        );
        // Encoding what was decoded gives the same bytes.
        assert_eq!(encode(&back.state, back.deadline), bytes);
    }

    /// Format 2, as the earlier script wrote it: five values per lease.
    #[test]
    fn format_2_is_read_as_leases_without_class_kind_or_plan() {
        let mut v = Vec::new();
        for n in [2, 1, 1, 99_000_000] {
            int(&mut v, n);
        }
        v.push(FALSE);
        bytes(&mut v, b"tv-1");
        int(&mut v, 1_000_000);
        int(&mut v, 61_000_000);
        bytes(&mut v, b"living-room");
        v.push(FALSE);
        bytes(&mut v, b"old");
        int(&mut v, 2_000_000);
        v.push(FALSE);
        let got = decode(&v).unwrap();
        let mut expected = lease("tv-1", 1_000_000, [label("living-room"), None, None, None, None]);
        expected.expires_at = Timestamp::from_micros(61_000_000);
        assert_eq!(got.state.leases(), [expected]);
        assert_eq!(got.state.tombstones(), [tombstone("old", 2_000_000, None)]);
        assert_eq!((got.deadline, got.state.limit_override()), (99_000_000, None));
        assert_eq!(encode(&got.state, got.deadline)[0], 3, "written back as format 3");
    }

    /// A state no socket holds a lease of is written in format 3, value for
    /// value what releases before holders wrote; one with a held lease in
    /// format 4, which adds the holder (false when none) to every lease.
    /// Each reads back as it was written.
    #[test]
    fn only_a_held_lease_makes_format_4() {
        let tv = lease("tv", 1_000_000, [label("living-room"), None, label("tv"), None, None]);
        let phone = lease("phone", 2_000_000, Default::default());
        let tombstones = vec![tombstone("old", 5, None)];
        let plain =
            UserState::new(vec![tv.clone(), phone.clone()], tombstones.clone(), Limit::new(3).map(Override::permanent));
        let mut expected = Vec::new();
        for n in [3, 2, 1, 99] {
            int(&mut expected, n);
        }
        int(&mut expected, 3);
        let lease_values = |out: &mut Vec<u8>, l: &Lease| {
            bytes(out, l.stream_id.as_str().as_bytes());
            int(out, l.started_at.as_micros());
            int(out, l.expires_at.as_micros());
            for v in [&l.device_id, &l.content_id, &l.device_class, &l.content_kind, &l.plan] {
                match v {
                    Some(v) => bytes(out, v.as_str().as_bytes()),
                    None => out.push(FALSE),
                }
            }
        };
        let (mut tv_values, mut phone_values) = (Vec::new(), Vec::new());
        lease_values(&mut tv_values, &tv);
        lease_values(&mut phone_values, &phone);
        let mut tomb_values = Vec::new();
        bytes(&mut tomb_values, b"old");
        int(&mut tomb_values, 5);
        tomb_values.push(FALSE);
        let format_3 = [&expected[..], &tv_values, &phone_values, &tomb_values].concat();
        assert_eq!(encode(&plain, 99), format_3);
        assert_eq!(decode(&format_3).unwrap().state, plain);

        let state = UserState::new(vec![held(tv, "sock-1"), phone], tombstones, Limit::new(3).map(Override::permanent));
        let mut format_4 = vec![4];
        format_4.extend_from_slice(&expected[1..]);
        format_4.extend_from_slice(&tv_values);
        bytes(&mut format_4, b"sock-1");
        format_4.extend_from_slice(&phone_values);
        format_4.push(FALSE);
        format_4.extend_from_slice(&tomb_values);
        assert_eq!(encode(&state, 99), format_4);
        let back = decode(&format_4).unwrap();
        assert_eq!((back.state, back.deadline), (state, 99));
    }

    /// An override with an expiry makes format 5: format 4 (a holder, or
    /// false, per lease) with the expiry after the override. It reads back
    /// as it was written, and a user whose override is for good goes back
    /// to format 3.
    #[test]
    fn only_an_override_with_an_expiry_makes_format_5() {
        let tv = lease("tv", 1_000_000, [label("living-room"), None, None, None, None]);
        let until = Timestamp::from_micros(5_000_000_000);
        let ending = Override { limit: Limit::new(2).unwrap(), expires_at: Some(until) };
        let state = UserState::new(vec![tv.clone()], vec![tombstone("old", 5, None)], Some(ending));
        let bytes = encode(&state, 99);
        let mut head = Vec::new();
        for n in [5, 1, 1, 99, 2, 5_000_000_000] {
            int(&mut head, n);
        }
        assert_eq!(bytes[..head.len()], head[..]);
        let back = decode(&bytes).unwrap();
        assert_eq!((back.state, back.deadline), (state, 99));
        let good = UserState::new(vec![tv], vec![], Limit::new(2).map(Override::permanent));
        assert_eq!(encode(&good, 99)[0], 3);
        // Format 5 must carry an override.
        let mut none = encode(&UserState::default(), 99);
        none[0] = 5;
        assert!(decode(&none).is_err());
    }

    #[test]
    fn malformed_states_are_refused() {
        let good = encode(&UserState::new(vec![lease("s", 1, Default::default())], vec![], None), 9);
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            good[..good.len() - 1].to_vec(),                       // truncated
            [good.clone(), vec![0x01]].concat(),                   // trailing values
            [vec![0x06], good[1..].to_vec()].concat(),             // a later format
            [vec![0x04], good[1..].to_vec()].concat(),             // format 4 without holders
            [vec![0x03, 0x7f, 0x7f], good[3..].to_vec()].concat(), // counts that cannot fit
            [vec![0x91], good.clone()].concat(),                   // an array
        ];
        // An override out of range, and a stream id that is not one.
        let mut v = good.clone();
        v[4] = 0xcd;
        v.splice(5..5, [0x03, 0xe9]);
        cases.push(v);
        let mut v = good.clone();
        v[6] = b' ';
        cases.push(v);
        // A holder that is not one, or not a string.
        let with_holder = encode(&UserState::new(vec![held(lease("s", 1, Default::default()), "h")], vec![], None), 9);
        let at = with_holder.len() - 2;
        assert_eq!(with_holder[at..], [0xa1, b'h']);
        cases.push([&with_holder[..at], &[0xa1, b'/'][..]].concat());
        cases.push([&with_holder[..at], &[0xa0][..]].concat());
        cases.push([&with_holder[..at], &[0x07][..]].concat());
        cases.push([&with_holder[..at], &[0xc3][..]].concat());
        for bytes in cases {
            assert!(decode(&bytes).is_err(), "{bytes:?}");
        }
    }
}
