//! Reading the script's reply: one string holding a MessagePack sequence,
//! laid out as `decide.lua`'s header describes, read straight into limiter
//! types. Only the few MessagePack forms that Redis's `cmsgpack` writes for
//! strings, integers and booleans are understood; anything else, or a
//! reply of the wrong shape, is `Unavailable`.

use super::super::StoreError;
use crate::limiter::{
    Acquire, Decision, Denial, Grant, Label, Lease, Limit, LimitSource, Op, Reply, RevokeReason, Rule, RuleHit,
    StreamId, Timestamp, Tombstone,
};
use crate::metrics;

/// Reads the script's reply to `op`.
pub(super) fn decode(op: Op, bytes: &[u8]) -> Result<Reply, StoreError> {
    let mut r = Reader(bytes);
    let kind = r.str()?;
    let reply = match (op, kind) {
        (Op::Acquire(req), _) => Reply::Decision(decision(req, kind, &mut r)?),
        (Op::Release(_), b"done") => {
            r.expired()?;
            Reply::Done
        }
        (Op::RevokeAll { .. }, b"revoked") => {
            r.expired()?;
            let mut streams = Vec::new();
            while !r.is_empty() {
                streams.push(r.stream()?);
            }
            Reply::Revoked(streams)
        }
        (Op::List { .. }, b"leases") => Reply::Leases { limit: r.limit()?, live: r.leases()? },
        (Op::GetLimit { fallback, source }, b"limit") if r.is_empty() => Reply::Limit { limit: fallback, source },
        (Op::GetLimit { .. } | Op::SetOverride(Some(_)), b"limit") => {
            Reply::Limit { limit: r.limit()?, source: LimitSource::Override }
        }
        (Op::SetOverride(None), b"done") => Reply::Done,
        (_, kind) => return Err(bad(format!("unexpected kind {:?}", String::from_utf8_lossy(kind)))),
    };
    if !r.is_empty() {
        return Err(bad("trailing values"));
    }
    Ok(reply)
}

fn decision(req: Acquire, kind: &[u8], r: &mut Reader<'_>) -> Result<Decision, StoreError> {
    r.expired()?;
    Ok(match kind {
        b"granted" => {
            let active_streams = r.count()?;
            let limit = r.limit()?;
            let lease = Lease {
                started_at: r.time()?,
                expires_at: r.time()?,
                stream_id: req.stream_id,
                device_id: req.device_id,
                content_id: req.content_id,
                device_class: req.device_class,
                content_kind: req.content_kind,
                plan: req.plan,
            };
            let would_deny = r.bool()?;
            let would_deny_rule = r.rule(&req.rules)?;
            let evicted = (0..r.count()?).map(|_| r.lease()).collect::<Result<_, _>>()?;
            let mut would_evict = Vec::new();
            while !r.is_empty() {
                would_evict.push(r.stream()?);
            }
            Decision::Granted(Grant { lease, active_streams, limit, evicted, would_deny, would_deny_rule, would_evict })
        }
        b"renewed" => {
            let active_streams = r.count()?;
            let limit = r.limit()?;
            let lease = Lease {
                started_at: r.time()?,
                expires_at: r.time()?,
                device_id: r.label(req.device_id.as_ref())?,
                content_id: r.label(req.content_id.as_ref())?,
                device_class: r.label(req.device_class.as_ref())?,
                content_kind: r.label(req.content_kind.as_ref())?,
                plan: r.label(req.plan.as_ref())?,
                stream_id: req.stream_id,
            };
            let would_deny = r.bool()?;
            let would_deny_rule = r.rule(&req.rules)?;
            let (evicted, would_evict) = (Vec::new(), Vec::new());
            Decision::Renewed(Grant { lease, active_streams, limit, evicted, would_deny, would_deny_rule, would_evict })
        }
        b"denied" => Decision::Denied(Denial { limit: r.limit()?, rule: r.rule(&req.rules)?, live: r.leases()? }),
        b"gone" => {
            let until = r.time()?;
            let reason = match r.opt_str()? {
                Some(by) => RevokeReason::EvictedBy(stream(by)?),
                None => RevokeReason::Revoked,
            };
            Decision::Gone(Tombstone { stream_id: req.stream_id, reason, until })
        }
        other => return Err(bad(format!("unexpected kind {:?}", String::from_utf8_lossy(other)))),
    })
}

fn bad(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("invalid script reply: {what}"))
}

fn text(b: &[u8]) -> Result<&str, StoreError> {
    std::str::from_utf8(b).map_err(|e| bad(format!("not UTF-8: {e}")))
}

fn stream(b: &[u8]) -> Result<StreamId, StoreError> {
    let s = text(b)?;
    StreamId::new(s).map_err(|e| bad(format!("stream id {s:?} {e}")))
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
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(bad("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A big-endian unsigned integer of `n` bytes.
    fn uint(&mut self, n: usize) -> Result<u64, StoreError> {
        Ok(self.take(n)?.iter().fold(0, |acc, &b| acc << 8 | u64::from(b)))
    }

    fn item(&mut self) -> Result<Item<'a>, StoreError> {
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
            0xcf => Item::Int(i64::try_from(self.uint(8)?).map_err(|_| bad("integer out of range"))?),
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
            other => return Err(bad(format!("unexpected MessagePack type {other:#04x}"))),
        };
        Ok(item)
    }

    fn int(&mut self) -> Result<i64, StoreError> {
        match self.item()? {
            Item::Int(n) => Ok(n),
            _ => Err(bad("expected an integer")),
        }
    }

    fn bool(&mut self) -> Result<bool, StoreError> {
        match self.item()? {
            Item::Bool(b) => Ok(b),
            _ => Err(bad("expected a boolean")),
        }
    }

    fn str(&mut self) -> Result<&'a [u8], StoreError> {
        self.opt_str()?.ok_or_else(|| bad("expected a string"))
    }

    /// A string, or nothing for false or nil.
    fn opt_str(&mut self) -> Result<Option<&'a [u8]>, StoreError> {
        match self.item()? {
            Item::Str(s) => Ok(Some(s)),
            Item::Bool(false) | Item::Nil => Ok(None),
            _ => Err(bad("expected a string")),
        }
    }

    fn count(&mut self) -> Result<u32, StoreError> {
        let n = self.int()?;
        u32::try_from(n).map_err(|_| bad(format!("count {n}")))
    }

    fn limit(&mut self) -> Result<Limit, StoreError> {
        let n = self.int()?;
        u32::try_from(n).ok().and_then(Limit::new).ok_or_else(|| bad(format!("limit {n}")))
    }

    fn time(&mut self) -> Result<Timestamp, StoreError> {
        self.int().map(Timestamp::from_micros)
    }

    fn stream(&mut self) -> Result<StreamId, StoreError> {
        stream(self.str()?)
    }

    /// A label, sharing `known`'s allocation when it is the same text.
    fn label(&mut self, known: Option<&Label>) -> Result<Option<Label>, StoreError> {
        let Some(b) = self.opt_str()? else { return Ok(None) };
        let s = text(b)?;
        match known {
            Some(k) if k.as_str() == s => Ok(Some(k.clone())),
            _ => Label::new(s).map(Some).map_err(|e| bad(format!("label {e}"))),
        }
    }

    fn lease(&mut self) -> Result<Lease, StoreError> {
        Ok(Lease {
            stream_id: self.stream()?,
            started_at: self.time()?,
            expires_at: self.time()?,
            device_id: self.label(None)?,
            content_id: self.label(None)?,
            device_class: self.label(None)?,
            content_kind: self.label(None)?,
            plan: self.label(None)?,
        })
    }

    /// A rule the script named (its name and limit), or `None` for false.
    /// It is one of the request's `rules`, whose name it shares.
    fn rule(&mut self, rules: &[Rule]) -> Result<Option<RuleHit>, StoreError> {
        let Some(name) = self.opt_str()? else { return Ok(None) };
        let limit = self.limit()?;
        let rule = rules.iter().find(|r| r.name.as_str().as_bytes() == name && r.limit == limit);
        let rule =
            rule.ok_or_else(|| bad(format!("rule {:?} is not one of the request's", String::from_utf8_lossy(name))))?;
        Ok(Some(RuleHit { name: rule.name.clone(), limit }))
    }

    /// Leases up to the end of the reply.
    fn leases(&mut self) -> Result<Vec<Lease>, StoreError> {
        let mut leases = Vec::new();
        while !self.is_empty() {
            leases.push(self.lease()?);
        }
        Ok(leases)
    }

    /// `expired`, counted into the metric.
    fn expired(&mut self) -> Result<(), StoreError> {
        let n = self.int()?;
        metrics::decision("expired", u64::try_from(n).unwrap_or(0));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MessagePack as `cmsgpack` writes it, for the cases the script uses.
    fn str(s: &str) -> Vec<u8> {
        let n = s.len();
        let mut out = match n {
            0..=31 => vec![0xa0 | n as u8],
            32..=255 => vec![0xd9, n as u8],
            _ => vec![0xda, (n >> 8) as u8, n as u8],
        };
        out.extend_from_slice(s.as_bytes());
        out
    }

    fn int(n: u64) -> Vec<u8> {
        match n {
            0..=127 => vec![n as u8],
            128..=255 => vec![0xcc, n as u8],
            256..=65_535 => vec![0xcd, (n >> 8) as u8, n as u8],
            65_536..=4_294_967_295 => [vec![0xce], (n as u32).to_be_bytes().to_vec()].concat(),
            _ => [vec![0xcf], n.to_be_bytes().to_vec()].concat(),
        }
    }

    fn list(limit: u32) -> Op {
        Op::List { limit: Limit::new(limit).unwrap() }
    }

    #[test]
    fn reads_every_integer_width_and_string_form() {
        let long = "é".repeat(100); // 200 bytes: str8
        let longer = "é".repeat(128); // 256 bytes: str16
        let times = [0, 127, 128, 255, 256, 65_535, 65_536, 4_294_967_295, 4_294_967_296, (1 << 53) - 1];
        for (i, t) in times.into_iter().enumerate() {
            let device = if i % 2 == 0 { &long } else { &longer };
            let labels = [str(device), vec![0xc2], str("tv"), vec![0xc2], str(&long[..64])];
            let bytes = [str("leases"), int(3), str("s"), int(t), int(t), labels.concat()].concat();
            let Reply::Leases { limit, live } = decode(list(1), &bytes).unwrap() else { panic!() };
            assert_eq!(limit.get(), 3);
            assert_eq!(live[0].started_at.as_micros(), t as i64);
            assert_eq!(live[0].device_id.as_ref().map(Label::as_str), Some(device.as_str()));
            assert_eq!(live[0].content_id, None);
            assert_eq!(live[0].device_class.as_ref().map(Label::as_str), Some("tv"));
            assert_eq!(live[0].content_kind, None);
            assert_eq!(live[0].plan.as_ref().map(Label::as_str), Some(&long[..64]));
        }
    }

    #[test]
    fn an_empty_label_is_a_label() {
        let bytes = [str("leases"), int(1), str("s"), int(1), int(2), str(""), vec![0xc2; 4]].concat();
        let Reply::Leases { live, .. } = decode(list(1), &bytes).unwrap() else { panic!() };
        assert_eq!(live[0].device_id, Some(Label::new("").unwrap()));
        assert_eq!(live[0].content_id, None);
    }

    #[test]
    fn a_named_rule_is_one_of_the_request_s() {
        let tv = Rule {
            name: Label::new("tv").unwrap(),
            device_class: Some(Label::new("tv").unwrap()),
            content_kind: None,
            per_content: false,
            limit: Limit::new(2).unwrap(),
            exempt: false,
        };
        let req = Acquire { rules: std::sync::Arc::from([tv.clone()]), ..Acquire::for_test("s", 4) };
        let lease = [str("a"), int(1), int(2), vec![0xc2; 2], str("tv"), vec![0xc2; 2]].concat();
        let denied = [str("denied"), int(0), int(4), str("tv"), int(2), lease].concat();
        match decode(Op::Acquire(req.clone()), &denied).unwrap() {
            Reply::Decision(Decision::Denied(d)) => {
                let rule = d.rule.unwrap();
                assert_eq!((rule.name.as_str(), rule.limit.get(), d.limit.get()), ("tv", 2, 4));
                assert_eq!(d.live[0].device_class.as_ref().map(Label::as_str), Some("tv"));
            }
            other => panic!("{other:?}"),
        }
        // The total: false, and nothing else.
        let total = [str("denied"), int(0), int(4), vec![0xc2]].concat();
        match decode(Op::Acquire(req.clone()), &total).unwrap() {
            Reply::Decision(Decision::Denied(d)) => assert_eq!((d.rule, d.live), (None, vec![])),
            other => panic!("{other:?}"),
        }
        let shadow = [str("granted"), int(0), int(3), int(4), int(1), int(2), vec![0xc3], str("tv"), int(2), int(0)];
        match decode(Op::Acquire(req.clone()), &shadow.concat()).unwrap() {
            Reply::Decision(Decision::Granted(g)) => {
                assert!(g.would_deny);
                assert_eq!(g.would_deny_rule.map(|r| r.name), Some(tv.name.clone()));
            }
            other => panic!("{other:?}"),
        }
        // A rule the request did not carry, or with another limit, is a broken reply.
        for (name, limit) in [("radio", 2), ("tv", 3)] {
            let bytes = [str("denied"), int(0), int(4), str(name), int(limit)].concat();
            assert!(matches!(decode(Op::Acquire(req.clone()), &bytes), Err(StoreError::Unavailable(_))), "{name}");
        }
    }

    #[test]
    fn malformed_replies_are_unavailable() {
        let lease = [str("s"), int(1), int(2), vec![0xc2; 5]].concat();
        let cases: [Vec<u8>; 7] = [
            vec![],
            [str("leases"), int(1), lease[..lease.len() - 1].to_vec()].concat(), // truncated
            [str("leases"), int(1001)].concat(),                                 // limit out of range
            [str("leases"), int(1), str("no spaces allowed")].concat(),
            [str("leases"), int(1), vec![0x91, 0x01]].concat(), // an array
            [str("done"), int(0)].concat(),                     // the wrong kind for a list
            [str("leases"), int(1), vec![0xcb], 1.5f64.to_be_bytes().to_vec()].concat(),
        ];
        for bytes in cases {
            assert!(matches!(decode(list(1), &bytes), Err(StoreError::Unavailable(_))), "{bytes:?}");
        }
    }
}
