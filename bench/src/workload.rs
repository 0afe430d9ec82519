//! What the load generator sends: `/livez`, the realistic lease mix, and
//! the bulk fill that builds a million live leases.
//!
//! The mix models players behind a backend. There are `sessions` playback
//! sessions per connection, pooled per client thread. A session belongs to a
//! user drawn from a Zipf distribution (a few households watch a lot, most
//! watch a little), acquires a lease for a fresh stream id, renews it
//! `renewals` times and releases it. An acquire for a user whose seats are
//! all taken by other sessions gets 409, and that session ends. Nothing
//! here reads a clock or does I/O: the driver asks for the next request and
//! reports the status it got.

use std::io::Write as _;
use std::sync::Arc;

/// A small, fast, seedable PRNG (SplitMix64). Good enough to pick users.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Zipf over ranks 0..n with exponent `s`: P(rank k) ∝ 1/(k+1)^s.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 0..n {
            sum += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }

    /// The share of draws that land on the most popular rank.
    pub fn top_share(&self) -> f64 {
        self.cdf[0]
    }
}

/// Parameters of the mix.
#[derive(Clone)]
pub struct MixParams {
    pub zipf: Arc<Zipf>,
    pub renewals: u32,
    pub sessions: usize,
    /// User `k` of the Zipf ranks is `{user_prefix}{k}`: `u` for the mix's
    /// own users, `f` to act on the users a fill created.
    pub user_prefix: &'static str,
}

/// The kind of a request, for per-kind latency and status counts.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Kind {
    Livez,
    Acquire,
    Renew,
    Release,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Livez, Kind::Acquire, Kind::Renew, Kind::Release];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Livez => "livez",
            Kind::Acquire => "acquire",
            Kind::Renew => "renew",
            Kind::Release => "release",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Statuses the workload expects; anything else is counted as unexpected.
    pub fn expected(self, status: u16) -> bool {
        match self {
            Kind::Livez => status == 200,
            Kind::Acquire => status == 201 || status == 409,
            Kind::Renew => status == 200,
            Kind::Release => status == 204,
        }
    }
}

struct Session {
    user: usize,
    stream: u64,
    renewals_left: u32,
}

enum Slot {
    Empty,
    Held(Session),
    /// A request for this session is in flight; `Session` is what the slot
    /// holds if that request succeeds as expected.
    Busy(Kind, Session),
}

/// The playback sessions one client thread carries, shared by its
/// connections: any idle connection may send the next request of any
/// session that has none in flight.
pub struct Mix {
    params: MixParams,
    rng: Rng,
    /// Stream ids are unique per run: phase, thread and a counter.
    prefix: String,
    next_stream: u64,
    slots: Vec<Slot>,
}

/// Which session a request belongs to, to report its answer.
#[derive(Clone, Copy, Debug)]
pub struct Ticket(usize);

impl Mix {
    /// `sessions` in all (at least one more than the connections that
    /// share it, so a session with no request in flight always exists).
    pub fn new(params: MixParams, sessions: usize, seed: u64, prefix: String) -> Mix {
        let slots = (0..sessions.max(1)).map(|_| Slot::Empty).collect();
        Mix { params, rng: Rng::new(seed), prefix, next_stream: 0, slots }
    }

    /// Writes the next request into `out`; `None` when every session has a
    /// request in flight.
    pub fn next(&mut self, out: &mut Vec<u8>) -> Option<(Kind, Ticket)> {
        out.clear();
        let n = self.slots.len();
        let mut slot = self.rng.below(n);
        let mut tries = 0;
        while matches!(self.slots[slot], Slot::Busy(..)) {
            tries += 1;
            if tries > n {
                return None;
            }
            slot = if tries < 8 { self.rng.below(n) } else { (slot + 1) % n };
        }
        let (kind, session) = match std::mem::replace(&mut self.slots[slot], Slot::Empty) {
            Slot::Empty => {
                let user = self.params.zipf.sample(&mut self.rng);
                let stream = self.next_stream;
                self.next_stream += 1;
                put_acquire(out, self.lease(user, stream));
                (Kind::Acquire, Session { user, stream, renewals_left: self.params.renewals })
            }
            Slot::Held(s) if s.renewals_left > 0 => {
                put_renew(out, self.lease(s.user, s.stream));
                (Kind::Renew, Session { renewals_left: s.renewals_left - 1, ..s })
            }
            Slot::Held(s) => {
                put_release(out, self.lease(s.user, s.stream));
                (Kind::Release, s)
            }
            Slot::Busy(..) => unreachable!("skipped above"),
        };
        self.slots[slot] = Slot::Busy(kind, session);
        Some((kind, Ticket(slot)))
    }

    /// Records the answer (`None`: no answer) to the request of `ticket`.
    pub fn answered(&mut self, ticket: Ticket, status: Option<u16>) {
        let slot = &mut self.slots[ticket.0];
        *slot = match std::mem::replace(slot, Slot::Empty) {
            Slot::Busy(Kind::Acquire, s) if status == Some(201) => Slot::Held(s),
            Slot::Busy(Kind::Renew, s) if status == Some(200) => Slot::Held(s),
            // A release, a denial, anything unexpected or a lost answer ends
            // the session; a lease left behind expires on its own.
            _ => Slot::Empty,
        };
    }

    /// Releases for every session still holding a lease, so the next phase
    /// starts with free seats. Not measured.
    pub fn drain(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut slots = std::mem::take(&mut self.slots);
        for slot in &mut slots {
            if let Slot::Held(s) = std::mem::replace(slot, Slot::Empty) {
                let mut req = Vec::new();
                put_release(&mut req, self.lease(s.user, s.stream));
                out.push(req);
            }
        }
        self.slots = slots;
        out
    }

    fn lease(&self, user: usize, stream: u64) -> LeasePath<'_> {
        LeasePath { user_prefix: self.params.user_prefix, user, prefix: &self.prefix, stream }
    }
}

/// A session's lease: `/v1/users/{user_prefix}{user}/streams/{prefix}{stream}`.
struct LeasePath<'a> {
    user_prefix: &'a str,
    user: usize,
    prefix: &'a str,
    stream: u64,
}

impl std::fmt::Display for LeasePath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let LeasePath { user_prefix, user, prefix, stream } = self;
        write!(f, "/v1/users/{user_prefix}{user}/streams/{prefix}{stream}")
    }
}

/// The acquire body: labels of a realistic size, stored with the lease.
fn put_acquire(out: &mut Vec<u8>, lease: LeasePath<'_>) {
    let body = acquire_body(lease.user, lease.stream);
    let _ = write!(
        out,
        "PUT {lease} HTTP/1.1\r\nhost: bench\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
}

/// An acquire of `stream` for `user`, with the labels of a mix acquire.
pub fn acquire(user: &str, stream: &str) -> Vec<u8> {
    let body = acquire_body(0, 0);
    let mut out = Vec::new();
    let _ = write!(
        out,
        "PUT /v1/users/{user}/streams/{stream} HTTP/1.1\r\nhost: bench\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    out
}

fn acquire_body(user: usize, stream: u64) -> String {
    format!(r#"{{"device_id":"tv-{:06}","content_id":"title-{:05}"}}"#, user % 1_000_000, stream % 50_000)
}

fn put_renew(out: &mut Vec<u8>, lease: LeasePath<'_>) {
    let _ = write!(out, "PUT {lease} HTTP/1.1\r\nhost: bench\r\ncontent-length: 0\r\n\r\n");
}

fn put_release(out: &mut Vec<u8>, lease: LeasePath<'_>) {
    let _ = write!(out, "DELETE {lease} HTTP/1.1\r\nhost: bench\r\n\r\n");
}

pub const LIVEZ: &[u8] = b"GET /livez HTTP/1.1\r\nhost: bench\r\n\r\n";
pub const READYZ: &[u8] = b"GET /readyz HTTP/1.1\r\nhost: bench\r\n\r\n";

/// The fill: lease `i` of `total` belongs to user `f{i % users}` and is
/// that user's stream `s{i / users}`, so consecutive requests hit different
/// users and every user ends up with `total / users` live leases.
pub fn fill_request(out: &mut Vec<u8>, i: u64, users: u64) {
    out.clear();
    let (user, stream) = (i % users, i / users);
    let body = acquire_body(user as usize, stream);
    let _ = write!(
        out,
        "PUT /v1/users/f{user}/streams/s{stream} HTTP/1.1\r\nhost: bench\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
}

/// An acquire of a stream that user `f{user}` does not hold.
pub fn fill_probe_new(user: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = write!(out, "PUT /v1/users/f{user}/streams/probe HTTP/1.1\r\nhost: bench\r\ncontent-length: 0\r\n\r\n");
    out
}

/// A renew of a stream the fill gave user `f{user}`.
pub fn fill_probe_renew(user: u64, stream: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = write!(out, "PUT /v1/users/f{user}/streams/s{stream} HTTP/1.1\r\nhost: bench\r\ncontent-length: 0\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = Rng::new(7);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        // Rank 0 should get about 1/H(1000) ≈ 13 % of the draws, rank 999 almost none.
        assert!(counts[0] > 10_000 && counts[0] < 16_000, "{}", counts[0]);
        assert!(counts[0] > 5 * counts[9]);
        assert!(counts[999] < 100);
    }

    #[test]
    fn a_session_acquires_renews_and_releases() {
        let params = MixParams { zipf: Arc::new(Zipf::new(10, 1.0)), renewals: 2, sessions: 1, user_prefix: "u" };
        let mut mix = Mix::new(params, 1, 1, "t-".into());
        let mut buf = Vec::new();
        let mut kinds = Vec::new();
        for status in [201, 200, 200, 204, 409, 201] {
            let (kind, ticket) = mix.next(&mut buf).unwrap();
            // The only session is busy until its answer comes.
            assert!(mix.next(&mut Vec::new()).is_none());
            kinds.push(kind);
            mix.answered(ticket, Some(status));
        }
        use Kind::*;
        assert_eq!(kinds, [Acquire, Renew, Renew, Release, Acquire, Acquire]);
        assert_eq!(mix.drain().len(), 1);
        assert!(mix.drain().is_empty());
    }

    #[test]
    fn busy_sessions_are_skipped() {
        let params = MixParams { zipf: Arc::new(Zipf::new(10, 1.0)), renewals: 1, sessions: 4, user_prefix: "u" };
        let mut mix = Mix::new(params, 4, 3, "t-".into());
        let tickets: Vec<Ticket> = (0..4).map(|_| mix.next(&mut Vec::new()).unwrap().1).collect();
        let mut seen: Vec<usize> = tickets.iter().map(|t| t.0).collect();
        seen.sort();
        assert_eq!(seen, [0, 1, 2, 3]);
        assert!(mix.next(&mut Vec::new()).is_none());
        mix.answered(tickets[2], Some(201));
        assert_eq!(mix.next(&mut Vec::new()).map(|(k, t)| (k, t.0)), Some((Kind::Renew, tickets[2].0)));
    }

    #[test]
    fn requests_are_well_formed() {
        let mut buf = Vec::new();
        fill_request(&mut buf, 7, 3);
        let text = String::from_utf8(buf).unwrap();
        assert!(text.starts_with("PUT /v1/users/f1/streams/s2 HTTP/1.1\r\n"), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }

    #[test]
    fn an_acquire_names_its_user_and_stream() {
        let text = String::from_utf8(acquire("c-x-0", "s7")).unwrap();
        assert!(text.starts_with("PUT /v1/users/c-x-0/streams/s7 HTTP/1.1\r\n"), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }

    #[test]
    fn the_mix_can_act_on_the_users_a_fill_created() {
        let params = MixParams { zipf: Arc::new(Zipf::new(1, 1.0)), renewals: 1, sessions: 1, user_prefix: "f" };
        let mut mix = Mix::new(params, 1, 1, "k-".into());
        let mut buf = Vec::new();
        let (_, ticket) = mix.next(&mut buf).unwrap();
        assert!(buf.starts_with(b"PUT /v1/users/f0/streams/k-0 HTTP/1.1\r\n"), "{}", String::from_utf8_lossy(&buf));
        mix.answered(ticket, Some(201));
        assert_eq!(mix.drain(), [b"DELETE /v1/users/f0/streams/k-0 HTTP/1.1\r\nhost: bench\r\n\r\n".to_vec()]);
    }
}
