//! Per-caller rate limits: a GCRA token bucket (one atomic per caller, no
//! lock) keyed by the principal's `sub` (or `client_id`), or by the client
//! address on public routes. Buckets of callers idle long enough to have
//! refilled are forgotten.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::sync::Cache;

/// Most callers tracked per route; beyond that the least used are dropped
/// (they come back with a full bucket).
const MAX_CALLERS: u64 = 100_000;

/// `requests` per `per`, with bursts of up to `burst`.
pub struct RateLimiter {
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// How far ahead of now a caller's schedule may run: the burst.
    tolerance: u64,
    epoch: Instant,
    /// Per caller: the theoretical arrival time of its next request.
    callers: Cache<String, Arc<AtomicU64>>,
    /// `requests` and `per`, for `Debug`.
    describe: (u64, Duration),
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("requests", &self.describe.0)
            .field("per", &self.describe.1)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// `requests` per `per`, as configured.
    pub fn rate(&self) -> (u64, Duration) {
        self.describe
    }

    /// `requests` ≥ 1 per `per` > 0, `burst` ≥ 1 (checked at config load).
    pub fn new(requests: u64, per: Duration, burst: u64) -> Self {
        let interval = u64::try_from(per.as_nanos() / u128::from(requests.max(1)))
            .unwrap_or(u64::MAX)
            .max(1);
        let tolerance = interval.saturating_mul(burst.max(1) - 1);
        // A caller idle this long has a full bucket again: nothing to keep.
        let refill = Duration::from_nanos(interval.saturating_add(tolerance));
        Self {
            interval,
            tolerance,
            epoch: Instant::now(),
            callers: Cache::builder()
                .max_capacity(MAX_CALLERS)
                .time_to_idle(refill.max(Duration::from_secs(1)))
                .build(),
            describe: (requests, per),
        }
    }

    /// Does `other` enforce the same limit? Then a reload keeps this one's
    /// buckets, so a config change never hands every caller a fresh burst.
    pub fn same_limit(&self, other: &RateLimiter) -> bool {
        self.interval == other.interval && self.tolerance == other.tolerance
    }

    /// Take one request for `caller`: `Err(wait)` when over the limit.
    pub fn check(&self, caller: &str) -> Result<(), Duration> {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let slot = match self.callers.get(caller) {
            Some(slot) => slot,
            None => self
                .callers
                .get_with_by_ref(caller, || Arc::new(AtomicU64::new(0))),
        };
        let mut tat = slot.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > self.tolerance {
                return Err(Duration::from_nanos(start - now - self.tolerance));
            }
            match slot.compare_exchange_weak(
                tat,
                start.saturating_add(self.interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_applies_per_caller() {
        let limiter = RateLimiter::new(2, Duration::from_secs(60), 3);
        for _ in 0..3 {
            assert!(limiter.check("alice").is_ok());
        }
        let wait = limiter.check("alice").expect_err("over the burst");
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert!(limiter.check("bob").is_ok(), "callers are counted apart");
    }
}
