//! Repairs asked for by the bus, kept within bounds: [`ResyncThrottle`]
//! (at most one resync per room per period) and [`LogLimiter`] (at most one
//! log line per period for a repeated problem).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::domain::RoomId;

/// Rooms to resync on the bus's word, at most one resync per room per
/// `min_gap`: a burst of hints or bad payloads costs each room one store
/// read per period, not one per payload.
///
/// Invariant: every request is honoured, at once or at the first
/// [`ResyncThrottle::take_due`] after the room's gap has passed; `recent`
/// and `deferred` only hold rooms resynced within the last `min_gap`, so
/// they stay bounded by the rooms active in that period.
#[derive(Debug)]
pub struct ResyncThrottle {
    min_gap: Duration,
    recent: HashMap<RoomId, Instant>,
    deferred: HashSet<RoomId>,
}

impl ResyncThrottle {
    pub fn new(min_gap: Duration) -> Self {
        ResyncThrottle {
            min_gap,
            recent: HashMap::new(),
            deferred: HashSet::new(),
        }
    }

    /// True if `room` may resync now (and records it); otherwise it is
    /// deferred to a later `take_due`.
    pub fn request(&mut self, room: RoomId, now: Instant) -> bool {
        match self.recent.get(&room) {
            Some(at) if now.saturating_duration_since(*at) < self.min_gap => {
                self.deferred.insert(room);
                false
            }
            _ => {
                self.recent.insert(room, now);
                true
            }
        }
    }

    /// Deferred rooms whose gap has passed (recorded as resynced now); also
    /// forgets rooms whose gap has passed.
    pub fn take_due(&mut self, now: Instant) -> Vec<RoomId> {
        let gap = self.min_gap;
        self.recent
            .retain(|_, at| now.saturating_duration_since(*at) < gap);
        let due: Vec<RoomId> = self
            .deferred
            .iter()
            .filter(|r| !self.recent.contains_key(r))
            .copied()
            .collect();
        for room in &due {
            self.deferred.remove(room);
            self.recent.insert(*room, now);
        }
        due
    }

    /// The room has no actor here any more.
    pub fn forget(&mut self, room: RoomId) {
        self.recent.remove(&room);
        self.deferred.remove(&room);
    }
}

/// Logs a repeated problem at most once per `every`: the first occurrence
/// at once, then one line per period with how many occurred.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    unlogged: u64,
}

impl LogLimiter {
    pub fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            last: None,
            unlogged: 0,
        }
    }

    /// Counts one occurrence; `Some(n)` when a line is due, `n` being the
    /// occurrences it reports (this one included).
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        let due = self
            .last
            .is_none_or(|at| now.saturating_duration_since(at) >= self.every);
        if !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_resyncs_a_room_at_most_once_per_gap_and_never_forgets_one() {
        let gap = Duration::from_secs(1);
        let mut throttle = ResyncThrottle::new(gap);
        let (a, b) = (RoomId::new(1), RoomId::new(2));
        let t0 = Instant::now();
        assert!(throttle.request(a, t0), "a first request waits");
        assert!(throttle.request(b, t0));
        // A burst within the gap: deferred, not lost, and not repeated.
        for ms in [1, 10, 500] {
            assert!(!throttle.request(a, t0 + Duration::from_millis(ms)));
        }
        assert!(throttle
            .take_due(t0 + Duration::from_millis(900))
            .is_empty());
        assert_eq!(throttle.take_due(t0 + gap), vec![a]);
        assert!(throttle.take_due(t0 + gap * 3).is_empty(), "resynced twice");
        // Old entries are forgotten: the maps stay bounded.
        assert!(throttle.recent.is_empty() && throttle.deferred.is_empty());
        assert!(throttle.request(a, t0 + gap * 3));
        assert!(!throttle.request(a, t0 + gap * 3));
        throttle.forget(a);
        assert!(throttle.take_due(t0 + gap * 5).is_empty());
    }

    #[test]
    fn the_log_limiter_logs_the_first_then_one_line_per_period_with_the_count() {
        let every = Duration::from_secs(10);
        let mut limiter = LogLimiter::new(every);
        let t0 = Instant::now();
        assert_eq!(limiter.note(t0), Some(1));
        for s in 1..=9 {
            assert_eq!(limiter.note(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(limiter.note(t0 + every), Some(10));
        assert_eq!(limiter.note(t0 + every * 3), Some(1));
    }
}
