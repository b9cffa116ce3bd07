//! The DPoP replay cache: the proofs accepted within the acceptance window.
//! Two generations of one period each, so an entry lives at least one
//! period. When full it fails closed (refuses new proofs) instead of
//! forgetting live ones: evicting would let a flood of proofs push out a
//! victim's `jti` and make its captured proof replayable.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a proof could not be remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Seen before within the window.
    Replayed,
    /// The cache is full.
    Full,
}

pub struct ReplayCache {
    generations: Mutex<Generations>,
    period: Duration,
    capacity: usize,
}

struct Generations {
    current: HashSet<[u8; 32]>,
    previous: HashSet<[u8; 32]>,
    /// When `current` began.
    started: Instant,
}

impl ReplayCache {
    /// Remember each proof for at least `period`, at most `capacity` at once.
    pub fn new(period: Duration, capacity: usize) -> Self {
        Self {
            generations: Mutex::new(Generations {
                current: HashSet::new(),
                previous: HashSet::new(),
                started: Instant::now(),
            }),
            period,
            capacity,
        }
    }

    /// Size and lifetime, to tell whether a successor may share this cache.
    pub fn shape(&self) -> (Duration, usize) {
        (self.period, self.capacity)
    }

    /// Remember `key`, unless it is already remembered or there is no room.
    /// Atomic: of two simultaneous copies, exactly one is accepted.
    pub fn insert(&self, key: [u8; 32], now: Instant) -> Result<(), Refused> {
        // A panic elsewhere while holding the lock leaves consistent sets.
        let mut g = self
            .generations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let age = now.saturating_duration_since(g.started);
        if age >= self.period.saturating_mul(2) {
            g.previous.clear();
            g.current.clear();
            g.started = now;
        } else if age >= self.period {
            g.previous = std::mem::take(&mut g.current);
            g.started += self.period;
        }
        if g.current.contains(&key) || g.previous.contains(&key) {
            return Err(Refused::Replayed);
        }
        if g.current.len() + g.previous.len() >= self.capacity {
            return Err(Refused::Full);
        }
        g.current.insert(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_refused_for_at_least_one_period_then_forgotten() {
        let period = Duration::from_secs(60);
        let cache = ReplayCache::new(period, 10);
        let t0 = Instant::now();
        assert_eq!(cache.insert([1; 32], t0), Ok(()));
        assert_eq!(cache.insert([1; 32], t0), Err(Refused::Replayed));
        // Still remembered a full period later (now in the previous generation).
        let t1 = t0 + period + Duration::from_secs(59);
        assert_eq!(cache.insert([1; 32], t1), Err(Refused::Replayed));
        assert_eq!(cache.insert([2; 32], t1), Ok(()));
        // Two periods on, the first key is gone; the second is still there.
        let t2 = t0 + period * 2 + Duration::from_secs(1);
        assert_eq!(cache.insert([1; 32], t2), Ok(()));
        assert_eq!(cache.insert([2; 32], t2), Err(Refused::Replayed));
    }

    #[test]
    fn a_full_cache_refuses_instead_of_forgetting() {
        let cache = ReplayCache::new(Duration::from_secs(60), 2);
        let now = Instant::now();
        assert_eq!(cache.insert([1; 32], now), Ok(()));
        assert_eq!(cache.insert([2; 32], now), Ok(()));
        assert_eq!(cache.insert([3; 32], now), Err(Refused::Full));
        assert_eq!(cache.insert([1; 32], now), Err(Refused::Replayed));
    }
}
