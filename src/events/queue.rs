//! The memory store's event buffer: a bounded queue in event order. A plain
//! type with no I/O, so its bound and its drop count are unit-tested.
//!
//! Invariants, enforced here:
//! - **Bounded.** It never holds more than `max` events: pushing onto a
//!   full queue first drops the oldest event, and counts it.
//! - **Order.** Events leave in the order they were pushed; `confirm`
//!   removes a prefix only, so what stays is always a suffix of the stream.

use std::collections::VecDeque;

/// One event waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its place in this queue (increasing), so a confirmation names a
    /// prefix even after older events were dropped meanwhile.
    pub key: u64,
    pub routing_key: String,
    pub body: String,
}

#[derive(Debug)]
pub struct BoundedQueue {
    max: usize,
    next_key: u64,
    events: VecDeque<Pending>,
    dropped: u64,
}

impl BoundedQueue {
    /// A queue of at most `max` (at least one) events.
    pub fn new(max: usize) -> Self {
        BoundedQueue {
            max: max.max(1),
            next_key: 1,
            events: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Appends an event; when full, the oldest one is dropped first
    /// (returns true then).
    pub fn push(&mut self, routing_key: &str, body: String) -> bool {
        let dropped = self.events.len() >= self.max;
        if dropped {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(Pending {
            key: self.next_key,
            routing_key: routing_key.to_owned(),
            body,
        });
        self.next_key += 1;
        dropped
    }

    /// The oldest `n` events (copies: they stay until confirmed).
    pub fn peek(&self, n: usize) -> Vec<Pending> {
        self.events.iter().take(n).cloned().collect()
    }

    /// Removes every event up to and including `key` (published and
    /// confirmed).
    pub fn confirm(&mut self, key: u64) {
        while self.events.front().is_some_and(|e| e.key <= key) {
            self.events.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.events.len() >= self.max
    }

    /// Events dropped because the queue was full, since it was made.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bodies(q: &BoundedQueue) -> Vec<String> {
        q.peek(usize::MAX).into_iter().map(|e| e.body).collect()
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let mut q = BoundedQueue::new(2);
        assert!(!q.push("k", "a".into()));
        assert!(!q.push("k", "b".into()));
        assert!(q.is_full());
        assert!(q.push("k", "c".into()));
        assert_eq!(bodies(&q), ["b", "c"]);
        assert_eq!(q.dropped(), 1);
    }

    #[test]
    fn confirming_removes_a_prefix_only() {
        let mut q = BoundedQueue::new(10);
        for b in ["a", "b", "c"] {
            q.push("k", b.into());
        }
        let batch = q.peek(2);
        q.push("k", "d".into());
        q.confirm(batch[1].key);
        assert_eq!(bodies(&q), ["c", "d"]);
        // A stale confirmation (its events were dropped meanwhile) removes
        // nothing newer.
        q.confirm(batch[0].key);
        assert_eq!(bodies(&q), ["c", "d"]);
    }

    proptest! {
        /// Whatever is pushed, confirmed and dropped, the queue holds at
        /// most `max` events, in push order, the newest ones not yet
        /// confirmed, and pushed = confirmed + dropped + held.
        #[test]
        fn bounded_ordered_and_accounted(
            max in 1usize..8,
            ops in proptest::collection::vec(0u8..3, 0..200),
        ) {
            let mut q = BoundedQueue::new(max);
            let mut pushed = 0u64;
            let mut confirmed = 0u64;
            for op in ops {
                if op < 2 {
                    q.push("k", pushed.to_string());
                    pushed += 1;
                } else {
                    let batch = q.peek(2);
                    if let Some(last) = batch.last() {
                        q.confirm(last.key);
                        confirmed += batch.len() as u64;
                    }
                }
                prop_assert!(q.len() <= max);
                let held: Vec<u64> = bodies(&q).iter().map(|b| b.parse().unwrap()).collect();
                prop_assert!(held.windows(2).all(|w| w[0] + 1 == w[1]));
                if let Some(last) = held.last() {
                    prop_assert_eq!(*last, pushed - 1);
                }
                prop_assert_eq!(pushed, confirmed + q.dropped() + q.len() as u64);
            }
        }
    }
}
