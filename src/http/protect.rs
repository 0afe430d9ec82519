//! Abuse resistance at the HTTP edge: token-bucket rate limits per user and
//! per credential, the bucket of failed authentications per source address
//! ([`AuthFailures`]), as configured in [`Protection`] (which lives in
//! `policy`, so that `config` builds it without depending on `http`), and
//! the header size limit the edge enforces.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::limiter::UserId;
use crate::policy::Protection;

/// Requests whose headers add up to more than this are refused with 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The per-user and per-credential buckets, and the failed
/// authentications per source. Idle keys are dropped by
/// [`RateLimits::tidy`], so memory follows the active callers only.
/// The buckets read the clock `C`: the monotonic clock, unless a test
/// passes one it moves.
pub struct RateLimits<C: Clock = DefaultClock> {
    // Keyed by the validated id itself: checking a user clones an `Arc`,
    // it does not copy the id.
    per_user: Option<Keyed<UserId, C>>,
    per_credential: Option<Keyed<String, C>>,
    auth_failures: Option<AuthFailures>,
    clock: C,
}

/// Token buckets by key, on the clock `C`.
type Keyed<K, C> = RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

fn limiter<K: Clone + Hash + Eq, C: Clock + Clone>(rate: u32, burst: u32, clock: &C) -> Option<Keyed<K, C>> {
    let rate = NonZeroU32::new(rate)?;
    let burst = NonZeroU32::new(burst.max(rate.get())).unwrap_or(rate);
    let quota = Quota::per_second(rate).allow_burst(burst);
    Some(RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock.clone()))
}

impl RateLimits {
    pub fn new(p: &Protection) -> Self {
        Self::with_clock(p, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    /// The limits of `p`, with the buckets on `clock`.
    fn with_clock(p: &Protection, clock: C) -> Self {
        Self {
            per_user: limiter(p.user_rate, p.user_burst, &clock),
            per_credential: limiter(p.credential_rate, p.credential_burst, &clock),
            auth_failures: AuthFailures::new(p.auth_failure_rate, p.auth_failure_burst, MAX_SOURCES),
            clock,
        }
    }

    /// Whether failed authentications are limited at all.
    pub fn limits_auth_failures(&self) -> bool {
        self.auth_failures.is_some()
    }

    /// `Err(wait)` when `source` has failed authentication so often that
    /// its bucket is empty. Charges nothing.
    pub fn check_source(&self, source: IpAddr) -> Result<(), Duration> {
        self.auth_failures.as_ref().map_or(Ok(()), |f| f.check(source, Instant::now()))
    }

    /// Charges one failed authentication to `source`.
    pub fn charge_source(&self, source: IpAddr) {
        if let Some(f) = &self.auth_failures {
            f.charge(source, Instant::now());
        }
    }

    /// `Err(wait)` when the credential has no token left.
    pub fn check_credential(&self, key: &String) -> Result<(), Duration> {
        self.check(self.per_credential.as_ref(), key)
    }

    /// `Err(wait)` when the user has no token left.
    pub fn check_user(&self, user: &UserId) -> Result<(), Duration> {
        self.check(self.per_user.as_ref(), user)
    }

    fn check<K: Clone + Hash + Eq>(&self, limiter: Option<&Keyed<K, C>>, key: &K) -> Result<(), Duration> {
        match limiter {
            None => Ok(()),
            Some(l) => l.check_key(key).map_err(|not_until| not_until.wait_time_from(self.clock.now())),
        }
    }

    /// Forgets keys whose buckets have refilled: an idle caller costs nothing.
    pub fn tidy(&self) {
        if let Some(l) = &self.per_user {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_credential {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(f) = &self.auth_failures {
            f.forget_refilled(Instant::now());
        }
    }

    /// Keys currently tracked, for tests and metrics.
    pub fn tracked(&self) -> usize {
        self.per_user.as_ref().map_or(0, |l| l.len())
            + self.per_credential.as_ref().map_or(0, |l| l.len())
            + self.auth_failures.as_ref().map_or(0, AuthFailures::len)
    }
}

/// At most this many sources are tracked at once: with 24 bytes an entry,
/// some 3.2 MiB of tables at most.
pub const MAX_SOURCES: usize = 100_000;

/// Failed authentications per source: a token bucket per source address
/// (an IPv6 source by its /64), with a check that charges nothing.
///
/// The bucket is kept as GCRA keeps it, as the one instant at which it
/// will be full again; a source with a full bucket is not stored at all.
/// A failure moves that instant one emission interval later. A source is
/// refused while the instant lies more than `burst - 1` intervals ahead,
/// that is while its bucket holds less than one token. (`governor`, used
/// for the other buckets, has no check that leaves the bucket alone, and
/// its keyed store has no upper bound.)
///
/// The table is split into shards, each a map behind a mutex that no one
/// holds across an await, and holds at most [`MAX_SOURCES`] sources in
/// all. A shard that is full first forgets its refilled sources; if none
/// has refilled, it forgets the one closest to refilling, which costs that
/// source at most one more burst of tries.
pub struct AuthFailures {
    shards: Box<[Mutex<HashMap<SourceKey, u64>>]>,
    per_shard: usize,
    /// Sources tracked in all shards, so that a check finds an empty
    /// table without taking a lock.
    tracked: AtomicUsize,
    /// Keyed hashing: sources are chosen by whoever sends the requests.
    hasher: RandomState,
    /// Nanoseconds between two tokens.
    interval: u64,
    /// How far ahead of now the full-again instant may lie while a token
    /// is left: `burst - 1` intervals.
    tolerance: u64,
    epoch: Instant,
}

/// A source as the table keys it: an IPv4 address, or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl SourceKey {
    /// The key of `ip`. An IPv4-mapped IPv6 address is its IPv4 address,
    /// and an IPv6 address counts by its /64, the block a single host or
    /// subscriber usually holds whole.
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                Self::V6(prefix)
            }
        }
    }
}

const SHARDS: usize = 16;

impl AuthFailures {
    /// `None` when `rate` is 0 (off). A burst below the rate is raised to
    /// the rate, as for the other buckets.
    pub fn new(rate: u32, burst: u32, capacity: usize) -> Option<Self> {
        let rate = NonZeroU32::new(rate)?;
        let burst = u64::from(burst.max(rate.get()));
        let interval = (1_000_000_000 / u64::from(rate.get())).max(1);
        Some(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            tracked: AtomicUsize::new(0),
            hasher: RandomState::new(),
            interval,
            tolerance: (burst - 1) * interval,
            epoch: Instant::now(),
        })
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn shard(&self, key: &SourceKey) -> std::sync::MutexGuard<'_, HashMap<SourceKey, u64>> {
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        // A map of plain numbers is valid whatever a panicking holder left.
        self.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Err(wait)` while `source` has less than one token left.
    pub fn check(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let key = SourceKey::of(source);
        let Some(full_at) = self.shard(&key).get(&key).copied() else { return Ok(()) };
        let refused_until = full_at.saturating_sub(self.tolerance);
        match refused_until.checked_sub(self.nanos(now)) {
            Some(wait) if wait > 0 => Err(Duration::from_nanos(wait)),
            _ => Ok(()),
        }
    }

    /// Takes one token from `source`'s bucket (none left: the bucket stays
    /// empty, refilling from now on as usual).
    pub fn charge(&self, source: IpAddr, now: Instant) {
        let key = SourceKey::of(source);
        let now = self.nanos(now);
        let mut shard = self.shard(&key);
        if let Some(full_at) = shard.get_mut(&key) {
            // Never more than one burst ahead: failures past the point of
            // refusal do not lengthen it.
            *full_at = ((*full_at).max(now) + self.interval).min(now + self.tolerance + self.interval);
            return;
        }
        if shard.len() >= self.per_shard {
            self.make_room(&mut shard, now);
        }
        shard.insert(key, now + self.interval);
        self.tracked.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets the refilled sources of a full shard, or else the one
    /// closest to refilling.
    fn make_room(&self, shard: &mut HashMap<SourceKey, u64>, now: u64) {
        let before = shard.len();
        shard.retain(|_, full_at| *full_at > now);
        if shard.len() >= self.per_shard
            && let Some(first) = shard.iter().min_by_key(|(_, full_at)| **full_at).map(|(k, _)| *k)
        {
            shard.remove(&first);
        }
        self.tracked.fetch_sub(before - shard.len(), Ordering::Relaxed);
    }

    /// Forgets every source whose bucket is full again.
    pub fn forget_refilled(&self, now: Instant) {
        let now = self.nanos(now);
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let before = shard.len();
            shard.retain(|_, full_at| *full_at > now);
            shard.shrink_to_fit();
            self.tracked.fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
    }

    /// Sources tracked now.
    pub fn len(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    #[test]
    fn buckets_refuse_past_the_burst_and_tidy_forgets_idle_keys() {
        let p = Protection { user_rate: 1, user_burst: 3, credential_rate: 0, ..Protection::default() };
        let clock = FakeRelativeClock::default();
        let r = RateLimits::with_clock(&p, clock.clone());
        for _ in 0..3 {
            assert!(r.check_user(&user("u")).is_ok());
        }
        assert_eq!(r.check_user(&user("u")), Err(Duration::from_secs(1)), "one token comes back after 1/rate");
        assert!(r.check_user(&user("other")).is_ok(), "buckets are per key");
        assert!(r.check_credential(&"anything".to_owned()).is_ok(), "credential limits are off");
        assert_eq!(r.tracked(), 2);
        r.tidy();
        assert_eq!(r.tracked(), 2, "neither bucket is full again");
        // other's one token is back after 1 s; u's three after 3 s.
        clock.advance(Duration::from_secs(2));
        r.tidy();
        assert_eq!(r.tracked(), 1, "the idle key is forgotten, the busy one kept");
        assert_eq!(r.check_user(&user("other")), Ok(()), "a forgotten key starts with a full bucket");
        clock.advance(Duration::from_secs(2));
        r.tidy();
        assert_eq!(r.tracked(), 0);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn failures_empty_a_source_bucket_that_refills_and_checks_charge_nothing() {
        let f = AuthFailures::new(2, 5, MAX_SOURCES).unwrap();
        let t0 = Instant::now();
        let a = ip("198.51.100.7");
        for _ in 0..100 {
            assert_eq!(f.check(a, t0), Ok(()), "checking alone never empties a bucket");
        }
        for _ in 0..4 {
            f.charge(a, t0);
        }
        assert_eq!(f.check(a, t0), Ok(()), "one token left after burst - 1 failures");
        f.charge(a, t0);
        let wait = f.check(a, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500), "one token comes back after 1/rate");
        // More failures (that passed the check at once) do not lengthen the wait.
        for _ in 0..10 {
            f.charge(a, t0);
        }
        assert_eq!(f.check(a, t0), Err(Duration::from_millis(500)));
        assert_eq!(f.check(ip("198.51.100.8"), t0), Ok(()), "buckets are per source");
        assert_eq!(f.check(a, t0 + Duration::from_millis(499)), Err(Duration::from_millis(1)));
        assert_eq!(f.check(a, t0 + Duration::from_millis(500)), Ok(()));
        // Refilled completely after burst / rate, then forgotten.
        f.forget_refilled(t0 + Duration::from_millis(2499));
        assert_eq!(f.len(), 1);
        f.forget_refilled(t0 + Duration::from_millis(2500));
        assert!(f.is_empty());
    }

    #[test]
    fn ipv6_sources_count_by_their_64_and_mapped_ipv4_by_the_ipv4_address() {
        let f = AuthFailures::new(1, 1, MAX_SOURCES).unwrap();
        let t0 = Instant::now();
        f.charge(ip("2001:db8:1:2::1"), t0);
        assert!(f.check(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), t0).is_err(), "same /64");
        assert!(f.check(ip("2001:db8:1:3::1"), t0).is_ok(), "another /64");
        f.charge(ip("::ffff:192.0.2.1"), t0);
        assert!(f.check(ip("192.0.2.1"), t0).is_err());
        assert_eq!(SourceKey::of(ip("::ffff:192.0.2.1")), SourceKey::V4([192, 0, 2, 1]));
    }

    #[test]
    fn the_table_never_holds_more_than_its_capacity() {
        let capacity = 64;
        let f = AuthFailures::new(1, 3, capacity).unwrap();
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            f.charge(IpAddr::from(i.to_be_bytes()), t0);
            assert!(f.len() <= capacity, "{} sources tracked", f.len());
        }
        let tracked: usize = f.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert_eq!(tracked, f.len(), "the count follows the shards");
        // A full table still limits a newcomer.
        let newcomer = ip("203.0.113.1");
        for _ in 0..3 {
            f.charge(newcomer, t0);
        }
        assert!(f.check(newcomer, t0).is_err());
    }

    #[test]
    fn a_rate_of_zero_turns_the_limit_off() {
        assert!(AuthFailures::new(0, 20, MAX_SOURCES).is_none());
        let r = RateLimits::new(&Protection { auth_failure_rate: 0, ..Protection::default() });
        r.charge_source(ip("192.0.2.1"));
        assert!(!r.limits_auth_failures() && r.check_source(ip("192.0.2.1")).is_ok());
    }
}
