//! Where "now" comes from. The rules never read a clock; stores ask one of
//! these inside their atomic step and pass the answer to the rules, so tests
//! can move time by hand instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::limiter::Timestamp;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// Wall-clock time, which is what lease expiry is defined against.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
        Timestamp::from_micros(i64::try_from(us).unwrap_or(i64::MAX))
    }
}

/// A clock that only moves when told to. Clones share one time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        Self(Arc::new(AtomicI64::new(start.as_micros())))
    }

    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms * 1000, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.0.load(Ordering::SeqCst))
    }
}

/// What this host's clock rests on, for `/readyz`: lease expiry is judged
/// against it (by every store but Redis, which reads its own), so an
/// operator running several instances wants to see it is synchronized.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeSource {
    /// The kernel's clocksource, e.g. `tsc` or `kvm-clock` (Linux only).
    pub clocksource: Option<String>,
    /// Whether the kernel considers the clock synchronized (by NTP,
    /// chrony or a hypervisor), and its maximum error in milliseconds.
    pub synchronized: Option<bool>,
    pub max_error_ms: Option<f64>,
}

impl TimeSource {
    /// Reads the kernel's view: one small file and one read-only
    /// `adjtimex(2)`, cheap enough for every readiness probe.
    pub fn read() -> TimeSource {
        #[cfg(target_os = "linux")]
        {
            let clocksource =
                std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty());
            // SAFETY: `timex` is plain data, zeroed is a valid value, and
            // `modes == 0` asks the kernel only to read, never to adjust.
            let (state, tx) = unsafe {
                let mut tx: libc::timex = std::mem::zeroed();
                (libc::adjtimex(&mut tx), tx)
            };
            let (synchronized, max_error_ms) = if state < 0 {
                (None, None)
            } else {
                (
                    Some(state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0),
                    Some(tx.maxerror as f64 / 1000.0),
                )
            };
            TimeSource { clocksource, synchronized, max_error_ms }
        }
        #[cfg(not(target_os = "linux"))]
        TimeSource { clocksource: None, synchronized: None, max_error_ms: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_time_source_is_read_on_linux() {
        let t = TimeSource::read();
        // Every Linux kernel exposes both; their values depend on the host.
        assert!(t.clocksource.is_some(), "{t:?}");
        assert!(t.synchronized.is_some() && t.max_error_ms.is_some_and(|e| e >= 0.0), "{t:?}");
    }
}
