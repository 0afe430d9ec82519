//! Where a request comes from, for the limit on failed authentication: the
//! TCP peer, or, when the peer is a trusted proxy, the client that the
//! proxies name in `X-Forwarded-For`.
//!
//! `X-Forwarded-For` is read only from a trusted peer, and from the right:
//! each proxy appends the address it received the request from, so the
//! entries a client wrote itself are on the left, and only the part that
//! trusted proxies wrote can be believed. The source is the first entry,
//! walking leftwards, that is not a trusted proxy. An entry that is not an
//! address ends the walk: the source is then the last trusted hop seen,
//! the proxy that took the request from that unknown party. When every
//! entry is trusted, the source is the leftmost.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};
use ipnet::IpNet;

use super::AppState;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The source address of a request, when it is known and the limit on
/// failed authentication needs it. Unknown (`None`) without a peer address,
/// as for a router called in-process, which no limit then applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Source(pub(super) Option<IpAddr>);

impl Source {
    pub(super) fn of(parts: &Parts, state: &AppState) -> Self {
        // Nothing to look up when no bucket would be charged.
        if !state.rate.limits_auth_failures() || state.auth.is_open() {
            return Self(None);
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
        Self(peer.map(|peer| client(peer, &parts.headers, &state.protection.trusted_proxies)))
    }
}

impl FromRequestParts<Arc<AppState>> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        Ok(Self::of(parts, state))
    }
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy,
/// else the first untrusted hop of `X-Forwarded-For`, from the right.
pub(super) fn client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut last_trusted = peer;
    // Several header lines are one list, in order (RFC 9110, section 5.3).
    for line in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(line) = line.to_str() else { return last_trusted };
        for hop in line.rsplit(',') {
            let Some(hop) = hop_address(hop) else { return last_trusted };
            if !is_trusted(&hop) {
                return hop;
            }
            last_trusted = hop;
        }
    }
    last_trusted
}

/// One entry of `X-Forwarded-For`: an address, bare or with a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`), as proxies write them.
fn hop_address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(v6) = hop.strip_prefix('[').and_then(|rest| rest.split_once(']')) {
        let (ip, port) = v6;
        return (port.is_empty() || port.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok()))
            .then(|| ip.parse::<IpAddr>().ok())
            .flatten()
            .map(|ip| ip.to_canonical());
    }
    hop.parse::<SocketAddr>().ok().map(|addr| addr.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_str(line).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const LB: &str = "10.0.0.5";

    #[test]
    fn an_untrusted_peer_is_the_source_whatever_it_forwards() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(client(ip("203.0.113.9"), &xff(&["198.51.100.1"]), &trusted), ip("203.0.113.9"));
        assert_eq!(client(ip("203.0.113.9"), &xff(&[]), &[]), ip("203.0.113.9"));
        assert_eq!(client(ip(LB), &xff(&["198.51.100.1"]), &[]), ip(LB), "no proxy is trusted by default");
    }

    #[test]
    fn a_trusted_peer_names_the_first_untrusted_hop_from_the_right() {
        let trusted = nets(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        // The client wrote the first two entries itself; the proxies appended the rest.
        let h = xff(&["1.1.1.1, 2.2.2.2, 198.51.100.7, 10.1.2.3"]);
        assert_eq!(client(ip(LB), &h, &trusted), ip("198.51.100.7"));
        // Several header lines are one list.
        let h = xff(&["1.1.1.1", "198.51.100.7", "10.1.2.3, 2001:db8:ffff::1"]);
        assert_eq!(client(ip(LB), &h, &trusted), ip("198.51.100.7"));
        // No header: the peer itself.
        assert_eq!(client(ip(LB), &xff(&[]), &trusted), ip(LB));
        // Every hop trusted: the leftmost.
        assert_eq!(client(ip(LB), &xff(&["10.9.9.9, 10.1.1.1"]), &trusted), ip("10.9.9.9"));
    }

    #[test]
    fn hops_may_carry_ports_and_brackets_and_mapped_addresses_count_as_ipv4() {
        let trusted = nets(&["10.0.0.0/8"]);
        for hop in ["198.51.100.7:4711", " 198.51.100.7 ", "::ffff:198.51.100.7", "[::ffff:198.51.100.7]:80"] {
            assert_eq!(client(ip(LB), &xff(&[hop]), &trusted), ip("198.51.100.7"), "{hop}");
        }
        for hop in ["2001:db8::1", "[2001:db8::1]", "[2001:db8::1]:443"] {
            assert_eq!(client(ip(LB), &xff(&[hop]), &trusted), ip("2001:db8::1"), "{hop}");
        }
        // A dual-stack listener sees an IPv4 proxy as a mapped address.
        assert_eq!(client(ip("::ffff:10.0.0.5"), &xff(&["198.51.100.7"]), &trusted), ip("198.51.100.7"));
    }

    #[test]
    fn a_malformed_hop_ends_the_walk_at_the_last_trusted_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(client(ip(LB), &xff(&["198.51.100.7, unknown"]), &trusted), ip(LB));
        assert_eq!(client(ip(LB), &xff(&["198.51.100.7, garbage, 10.1.1.1"]), &trusted), ip("10.1.1.1"));
        assert_eq!(client(ip(LB), &xff(&["198.51.100.7,, 10.1.1.1"]), &trusted), ip("10.1.1.1"));
        assert_eq!(client(ip(LB), &xff(&["[2001:db8::1]:x"]), &trusted), ip(LB));
        // Garbage the client wrote, left of the hop a proxy vouches for, is never reached.
        assert_eq!(client(ip(LB), &xff(&["garbage, 198.51.100.7, 10.1.1.1"]), &trusted), ip("198.51.100.7"));
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_bytes(b"198.51.100.7, \xff").unwrap());
        assert_eq!(client(ip(LB), &h, &trusted), ip(LB), "not text");
    }
}
