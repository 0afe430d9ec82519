//! Abuse resistance at the HTTP edge: token-bucket rate limits per user and
//! per credential, as configured in [`Protection`] (which lives in
//! `policy`, so that `config` builds it without depending on `http`), and
//! the header size limit the edge enforces.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::limiter::UserId;
use crate::policy::Protection;

/// Requests whose headers add up to more than this are refused with 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The per-user and per-credential buckets. Idle keys are dropped by
/// [`RateLimits::tidy`], so memory follows the active callers only.
pub struct RateLimits {
    // Keyed by the validated id itself: checking a user clones an `Arc`,
    // it does not copy the id.
    per_user: Option<DefaultKeyedRateLimiter<UserId>>,
    per_credential: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

fn limiter<K: Clone + Hash + Eq>(rate: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    let rate = NonZeroU32::new(rate)?;
    let burst = NonZeroU32::new(burst.max(rate.get())).unwrap_or(rate);
    Some(DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)))
}

impl RateLimits {
    pub fn new(p: &Protection) -> Self {
        Self {
            per_user: limiter(p.user_rate, p.user_burst),
            per_credential: limiter(p.credential_rate, p.credential_burst),
            clock: DefaultClock::default(),
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

    fn check<K: Clone + Hash + Eq>(
        &self,
        limiter: Option<&DefaultKeyedRateLimiter<K>>,
        key: &K,
    ) -> Result<(), Duration> {
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
    }

    /// Keys currently tracked, for tests and metrics.
    pub fn tracked(&self) -> usize {
        self.per_user.as_ref().map_or(0, |l| l.len()) + self.per_credential.as_ref().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    #[test]
    fn buckets_refuse_past_the_burst_and_tidy_forgets_idle_keys() {
        let p = Protection { user_rate: 1, user_burst: 3, credential_rate: 0, ..Protection::default() };
        let r = RateLimits::new(&p);
        for _ in 0..3 {
            assert!(r.check_user(&user("u")).is_ok());
        }
        let wait = r.check_user(&user("u")).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(r.check_user(&user("other")).is_ok(), "buckets are per key");
        assert!(r.check_credential(&"anything".to_owned()).is_ok(), "credential limits are off");
        assert_eq!(r.tracked(), 2);
    }
}
