//! Token buckets: one per WebSocket connection for client frames (floods),
//! and one per client address for room creation (rooms are cheap to ask for
//! and live for the grace period, so they are the thing worth rationing).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

/// A classic token bucket: `burst` tokens, refilled at `per_sec`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_sec: f64, burst: f64) -> Self {
        TokenBucket {
            per_sec,
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
            last: Instant::now(),
        }
    }

    /// Whether a token is there to take (takes none).
    pub fn has_token(&self) -> bool {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.per_sec >= 1.0
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    fn try_take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.per_sec >= self.burst
    }
}

/// Buckets by key (a client address), shared by all workers.
///
/// Invariant: a key is in `ring` exactly when it is in `buckets`. Each
/// `try_take` looks at the next [`PRUNE_STEP`] keys of the ring and drops
/// those whose bucket is full again (a full bucket is what a key never seen
/// gets, so dropping it changes no answer); the others go to the back. So a
/// call does a fixed amount of pruning work, never a pass over every key,
/// and since each call adds at most one key but looks at two, a key whose
/// bucket has refilled is gone within one turn of the ring: the map stays
/// within about twice the keys that took a token within the refill time
/// (`burst / per_sec`).
pub struct KeyedLimiter<K> {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<Keyed<K>>,
}

struct Keyed<K> {
    buckets: HashMap<K, TokenBucket>,
    ring: VecDeque<K>,
}

/// Keys of the ring each `try_take` looks at.
const PRUNE_STEP: usize = 2;

impl<K: Eq + Hash + Clone> KeyedLimiter<K> {
    /// Every key starts with a full bucket of `burst`.
    pub fn new(per_sec: f64, burst: f64) -> Self {
        KeyedLimiter {
            per_sec,
            burst,
            buckets: Mutex::new(Keyed {
                buckets: HashMap::new(),
                ring: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keyed<K>> {
        // Every change is a few infallible map operations: a poisoned lock
        // is still consistent.
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `key`'s bucket has a token (a key never seen has a full
    /// bucket); takes none.
    pub fn has_token(&self, key: &K) -> bool {
        self.lock()
            .buckets
            .get(key)
            .is_none_or(TokenBucket::has_token)
    }

    /// Takes one token from `key`'s bucket if there is one.
    pub fn try_take(&self, key: &K) -> bool {
        self.try_take_at(key, Instant::now())
    }

    fn try_take_at(&self, key: &K, now: Instant) -> bool {
        let mut keyed = self.lock();
        let Keyed { buckets, ring } = &mut *keyed;
        for _ in 0..PRUNE_STEP.min(ring.len()) {
            let Some(old) = ring.pop_front() else { break };
            if buckets.get(&old).is_some_and(|b| !b.is_full_at(now)) {
                ring.push_back(old);
            } else {
                buckets.remove(&old);
            }
        }
        let bucket = buckets.entry(key.clone()).or_insert_with(|| {
            ring.push_back(key.clone());
            TokenBucket::new(self.per_sec, self.burst)
        });
        bucket.try_take_at(now)
    }

    /// How many keys are held.
    #[cfg(test)]
    fn keys(&self) -> usize {
        let keyed = self.lock();
        assert_eq!(keyed.buckets.len(), keyed.ring.len(), "ring and map agree");
        keyed.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_the_burst_then_refills() {
        let start = Instant::now();
        let mut b = TokenBucket::new(2.0, 3.0);
        assert!(b.try_take_at(start));
        assert!(b.try_take_at(start));
        assert!(b.try_take_at(start));
        assert!(!b.try_take_at(start));
        assert!(b.try_take_at(start + Duration::from_millis(500)));
        assert!(!b.try_take_at(start + Duration::from_millis(500)));
    }

    #[test]
    fn keys_are_limited_independently() {
        let l = KeyedLimiter::new(0.0, 1.0);
        assert!(l.try_take(&"a"));
        assert!(!l.try_take(&"a"));
        assert!(l.try_take(&"b"));
    }

    #[test]
    fn idle_keys_are_pruned_a_few_per_call_and_active_ones_kept() {
        // One token per second, burst 2: a key used once is full again
        // after a second.
        let l = KeyedLimiter::new(1.0, 2.0);
        let t0 = Instant::now();
        for key in 0..20_000u32 {
            assert!(l.try_take_at(&key, t0));
        }
        // Each call looked at two keys, but none was full yet.
        assert_eq!(l.keys(), 20_000);
        // An active client keeps calling after the others went quiet: every
        // call drops at most PRUNE_STEP keys, never a pass over all of them.
        let later = t0 + Duration::from_secs(2);
        let active = 99_999u32;
        for call in 1..=10_000usize {
            let before = l.keys();
            let _ = l.try_take_at(&active, later);
            let after = l.keys();
            // PRUNE_STEP, written out: the test must not follow the constant.
            assert!(before - after.min(before) <= 2, "call {call}");
        }
        assert_eq!(l.keys(), 1, "only the active key is left");
        // A key that still has tokens missing is kept, and still limited.
        assert!(l.try_take_at(&1, later));
        assert!(l.try_take_at(&1, later));
        assert!(!l.try_take_at(&1, later));
        for _ in 0..10 {
            let _ = l.try_take_at(&active, later);
        }
        assert!(!l.try_take_at(&1, later), "not forgotten while empty");
    }
}
