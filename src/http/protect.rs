//! Abuse resistance at the HTTP edge: token-bucket rate limits per user and
//! per credential, as configured in [`Protection`] (which lives in
//! `policy`, so that `config` builds it without depending on `http`), and
//! the header size limit the edge enforces.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::policy::Protection;

/// Requests whose headers add up to more than this are refused with 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The per-user and per-credential buckets. Idle keys are dropped by
/// [`RateLimits::tidy`], so memory follows the active callers only.
pub struct RateLimits {
    per_user: Option<DefaultKeyedRateLimiter<String>>,
    per_credential: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

fn limiter(rate: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<String>> {
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
    pub fn check_credential(&self, key: &str) -> Result<(), Duration> {
        self.check(self.per_credential.as_ref(), key)
    }

    /// `Err(wait)` when the user has no token left.
    pub fn check_user(&self, user: &str) -> Result<(), Duration> {
        self.check(self.per_user.as_ref(), user)
    }

    fn check(&self, limiter: Option<&DefaultKeyedRateLimiter<String>>, key: &str) -> Result<(), Duration> {
        match limiter {
            None => Ok(()),
            Some(l) => l.check_key(&key.to_owned()).map_err(|not_until| not_until.wait_time_from(self.clock.now())),
        }
    }

    /// Forgets keys whose buckets have refilled: an idle caller costs nothing.
    pub fn tidy(&self) {
        for l in [&self.per_user, &self.per_credential].into_iter().flatten() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys currently tracked, for tests and metrics.
    pub fn tracked(&self) -> usize {
        [&self.per_user, &self.per_credential].into_iter().flatten().map(|l| l.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refuse_past_the_burst_and_tidy_forgets_idle_keys() {
        let p = Protection { user_rate: 1, user_burst: 3, credential_rate: 0, ..Protection::default() };
        let r = RateLimits::new(&p);
        for _ in 0..3 {
            assert!(r.check_user("u").is_ok());
        }
        let wait = r.check_user("u").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(r.check_user("other").is_ok(), "buckets are per key");
        assert!(r.check_credential("anything").is_ok(), "credential limits are off");
        assert_eq!(r.tracked(), 2);
    }
}
