//! Token buckets: one per WebSocket connection for client frames (floods),
//! and one per client address for room creation (rooms are cheap to ask for
//! and live for the grace period, so they are the thing worth rationing).

use std::collections::HashMap;
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

/// Buckets by key (a client address), shared by all workers. The map is
/// pruned of full buckets when it grows, so it stays as small as the set of
/// clients that are actually being limited.
pub struct KeyedLimiter<K> {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

/// Buckets kept before full ones are pruned.
const PRUNE_AT: usize = 10_000;

impl<K: Eq + Hash + Clone> KeyedLimiter<K> {
    /// Every key starts with a full bucket of `burst`.
    pub fn new(per_sec: f64, burst: f64) -> Self {
        KeyedLimiter {
            per_sec,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key`'s bucket has a token (a key never seen has a full
    /// bucket); takes none.
    pub fn has_token(&self, key: &K) -> bool {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.get(key).is_none_or(TokenBucket::has_token)
    }

    /// Takes one token from `key`'s bucket if there is one.
    pub fn try_take(&self, key: &K) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= PRUNE_AT {
            buckets.retain(|_, b| !b.is_full_at(now));
        }
        buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(self.per_sec, self.burst))
            .try_take_at(now)
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
}
