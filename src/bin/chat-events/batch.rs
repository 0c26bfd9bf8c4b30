//! Which events are stored together, and what one acknowledgement may
//! cover: pure bookkeeping, reached by unit tests without a broker.
//!
//! Invariants, enforced here:
//! - **Bounded.** A batch holds at most `max_events` events (at most
//!   `EVENTS_PREFETCH`, so it is also bounded by what RabbitMQ sends
//!   unacknowledged) and is due `wait` after its first event arrived.
//! - **One ack covers exactly the batch.** Deliveries are pushed in the
//!   order of their tags, and every delivery not pushed here has been
//!   settled already (rejected as a bad body, or acknowledged with an
//!   earlier batch). So once rows of the batch commit, one `basic.ack` with
//!   `multiple` up to the highest tag among them settles them and nothing
//!   that is not stored.

use std::ops::Range;
use std::time::Duration;

use tokio::time::Instant;

use crate::event::Event;

/// One event and the delivery that brought it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub tag: u64,
    pub event: Event,
}

/// Events waiting to be stored together.
#[derive(Debug)]
pub struct Batch {
    max_events: usize,
    wait: Duration,
    pending: Vec<Pending>,
    /// When the batch must be stored even if not full.
    due: Option<Instant>,
}

impl Batch {
    pub fn new(max_events: usize, wait: Duration) -> Self {
        Batch {
            max_events: max_events.max(1),
            wait,
            pending: Vec::new(),
            due: None,
        }
    }

    /// Adds `event`, delivered with `tag` (higher than any pushed before).
    pub fn push(&mut self, tag: u64, event: Event, now: Instant) {
        debug_assert!(self.pending.last().is_none_or(|p| p.tag < tag));
        if self.pending.is_empty() {
            self.due = Some(now + self.wait);
        }
        self.pending.push(Pending { tag, event });
    }

    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.max_events
    }

    /// When the batch is due, if it holds anything.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Empties the batch, returning its events in tag order.
    pub fn take(&mut self) -> Vec<Pending> {
        self.due = None;
        std::mem::take(&mut self.pending)
    }
}

/// How a batch is split into `INSERT` statements (all in one
/// transaction): consecutive ranges, each of at least one event and, past
/// its first, at most `max_bytes` of bodies. Keeps every statement under
/// the server's `max_allowed_packet` whatever the batch size.
pub fn statements(events: &[Pending], max_bytes: usize) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, p) in events.iter().enumerate() {
        let size = p.event.body.len();
        if i > start && bytes + size > max_bytes {
            ranges.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < events.len() {
        ranges.push(start..events.len());
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDateTime;
    use proptest::prelude::*;

    fn event(body_len: usize) -> Event {
        Event {
            id: "e".into(),
            kind: "message.sent".into(),
            room_id: 1,
            instance: "i".into(),
            at: NaiveDateTime::default(),
            seq: None,
            body: "x".repeat(body_len),
        }
    }

    #[test]
    fn a_batch_is_due_a_wait_after_its_first_event_and_full_at_its_size() {
        let now = Instant::now();
        let wait = Duration::from_millis(100);
        let mut batch = Batch::new(2, wait);
        assert_eq!(batch.due(), None);
        assert!(batch.take().is_empty(), "nothing to store");
        batch.push(5, event(1), now);
        batch.push(6, event(1), now + Duration::from_millis(60));
        assert_eq!(batch.due(), Some(now + wait), "the first event's wait");
        assert!(batch.is_full());
        let tags: Vec<u64> = batch.take().iter().map(|p| p.tag).collect();
        assert_eq!(tags, [5, 6]);
        assert_eq!(batch.due(), None);
        assert!(batch.take().is_empty());
        batch.push(9, event(1), now + wait);
        assert_eq!(batch.due(), Some(now + wait * 2), "a new batch, a new wait");
        assert!(!batch.is_full());
    }

    #[test]
    fn statements_split_by_body_bytes() {
        let events: Vec<Pending> = [3, 3, 3, 10, 1]
            .iter()
            .enumerate()
            .map(|(i, &n)| Pending {
                tag: i as u64 + 1,
                event: event(n),
            })
            .collect();
        assert_eq!(statements(&events, 6), vec![0..2, 2..3, 3..4, 4..5]);
        assert_eq!(statements(&events, 100), vec![0..5]);
        assert_eq!(statements(&events[..0], 6), Vec::<Range<usize>>::new());
    }

    proptest! {
        /// The statements cover the batch once, in order, and each is
        /// within the bound unless it is a single oversized event.
        #[test]
        fn statements_cover_every_event_once(
            sizes in proptest::collection::vec(0usize..50, 0..40),
            max in 1usize..100,
        ) {
            let events: Vec<Pending> = sizes.iter().enumerate()
                .map(|(i, &n)| Pending { tag: i as u64, event: event(n) }).collect();
            let ranges = statements(&events, max);
            let mut next = 0;
            for r in &ranges {
                prop_assert_eq!(r.start, next);
                prop_assert!(r.end > r.start);
                let bytes: usize = sizes[r.clone()].iter().sum();
                prop_assert!(bytes <= max || r.len() == 1);
                next = r.end;
            }
            prop_assert_eq!(next, events.len());
        }
    }
}
