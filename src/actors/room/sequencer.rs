//! The sequencer: which message id a room delivers next, what waits for an
//! earlier id, and when a missing id must be read from the store. Plain
//! Rust, no actix: the room actor feeds it every message (stored here or
//! announced by another process) and arms a timer at [`Sequencer::gap_deadline`].
//!
//! Invariants, enforced here:
//! - **Every id, in order, once.** Ids are a room's gap-free sequence, so
//!   the sequencer only ever delivers `next`: an id below it was delivered
//!   already and is dropped, an id above it waits until every id between
//!   has arrived. What [`Sequencer::accept`] returns is therefore always the
//!   run `next, next+1, ...`, and no id is returned twice.
//! - **A gap is filled once per timeout.** While messages wait behind a
//!   missing id, the gap is due `gap_timeout` after it opened;
//!   [`Sequencer::take_fill`] hands out one read request when it is due and
//!   none while that read is in flight. A read that did not close the gap
//!   (the store failed) makes it due again one timeout after it finished.
//!   The store can always fill a gap: an id is only visible there once every
//!   lower id of the room is committed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::domain::{Message, MessageSeq};

/// Where the gap behind the waiting messages stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gap {
    /// Nothing waits.
    Closed,
    /// Messages wait; the missing ids are to be read at this instant.
    DueAt(Instant),
    /// A read of the missing ids is in flight.
    Filling,
}

/// Orders one room's messages. `A` is what travels with a message stored by
/// this process (its author, to echo the `ref`); remote messages carry none.
#[derive(Debug)]
pub struct Sequencer<A> {
    /// The id the next delivered message must have; `None` until the room's
    /// state is loaded (nothing can be delivered before: no member here has
    /// seen anything yet).
    next: Option<MessageSeq>,
    /// Messages that arrived ahead of `next`.
    waiting: BTreeMap<MessageSeq, (Message, Option<A>)>,
    gap: Gap,
    gap_timeout: Duration,
}

impl<A> Sequencer<A> {
    pub fn new(gap_timeout: Duration) -> Self {
        Sequencer {
            next: None,
            waiting: BTreeMap::new(),
            gap: Gap::Closed,
            gap_timeout,
        }
    }

    /// Whether [`load`](Self::load) has run.
    pub fn is_loaded(&self) -> bool {
        self.next.is_some()
    }

    /// Starts delivering after `last`, the newest id the store had when the
    /// room's state was read (`MessageSeq::ZERO` for a room with no
    /// messages). Messages accepted before this are ignored.
    pub fn load(&mut self, last: MessageSeq) {
        self.next = Some(last.next());
    }

    /// The newest id delivered (or loaded); reads to catch up start after it.
    pub fn last_delivered(&self) -> Option<MessageSeq> {
        self.next.map(MessageSeq::prev)
    }

    /// Takes in messages in any order, from any source, and returns the ones
    /// that can be delivered now, in id order (see the module comment).
    pub fn accept(
        &mut self,
        messages: impl IntoIterator<Item = (Message, Option<A>)>,
        now: Instant,
    ) -> Vec<(Message, Option<A>)> {
        let Some(mut next) = self.next else {
            return Vec::new();
        };
        for (message, author) in messages {
            if message.id >= next {
                // A duplicate of a waiting id keeps the first copy, which
                // for a message stored here is the one with its author.
                self.waiting.entry(message.id).or_insert((message, author));
            }
        }
        let mut ready = Vec::new();
        while let Some(entry) = self.waiting.remove(&next) {
            ready.push(entry);
            next = next.next();
        }
        self.next = Some(next);
        self.gap = match self.gap {
            Gap::Filling => Gap::Filling,
            _ if self.waiting.is_empty() => Gap::Closed,
            Gap::Closed => Gap::DueAt(now + self.gap_timeout),
            due @ Gap::DueAt(_) => due,
        };
        ready
    }

    /// When the missing ids should be read, if messages wait and no read is
    /// in flight: the room actor arms its timer for this instant.
    pub fn gap_deadline(&self) -> Option<Instant> {
        match self.gap {
            Gap::DueAt(at) => Some(at),
            Gap::Closed | Gap::Filling => None,
        }
    }

    /// If the gap is due at `now`, hands out the one read that fills it:
    /// every message after the returned id. `None` otherwise, and while that
    /// read is in flight.
    pub fn take_fill(&mut self, now: Instant) -> Option<MessageSeq> {
        match self.gap {
            Gap::DueAt(at) if at <= now => {
                self.gap = Gap::Filling;
                self.last_delivered()
            }
            _ => None,
        }
    }

    /// The read handed out by [`take_fill`](Self::take_fill) is over (its
    /// messages already went through [`accept`](Self::accept), or it
    /// failed). If messages still wait, the gap is due again one timeout
    /// from `now`.
    pub fn fill_finished(&mut self, now: Instant) {
        if self.gap == Gap::Filling {
            self.gap = if self.waiting.is_empty() {
                Gap::Closed
            } else {
                Gap::DueAt(now + self.gap_timeout)
            };
        }
    }

    /// Takes out every message waiting behind a gap, in id order (a room
    /// that closes answers their authors anyway: they are stored).
    pub fn take_waiting(&mut self) -> Vec<(Message, Option<A>)> {
        self.gap = match self.gap {
            Gap::Filling => Gap::Filling,
            _ => Gap::Closed,
        };
        std::mem::take(&mut self.waiting).into_values().collect()
    }

    /// How many messages wait behind a gap.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RoomId;
    use proptest::prelude::*;

    const TIMEOUT: Duration = Duration::from_millis(300);

    fn message(id: u64) -> Message {
        Message {
            id: MessageSeq::new(id),
            room_id: RoomId::new(1),
            nickname: "ann".into(),
            content: format!("m{id}"),
            sent_at: chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap(),
        }
    }

    fn arrivals(ids: &[u64]) -> Vec<(Message, Option<u64>)> {
        ids.iter().map(|&id| (message(id), None)).collect()
    }

    fn ids(ready: &[(Message, Option<u64>)]) -> Vec<u64> {
        ready.iter().map(|(m, _)| m.id.get()).collect()
    }

    fn loaded(last: u64) -> Sequencer<u64> {
        let mut s = Sequencer::new(TIMEOUT);
        s.load(MessageSeq::new(last));
        s
    }

    #[test]
    fn nothing_is_delivered_before_the_state_is_loaded() {
        let mut s: Sequencer<u64> = Sequencer::new(TIMEOUT);
        let t = Instant::now();
        assert!(s.accept(arrivals(&[1, 2]), t).is_empty());
        assert_eq!(s.last_delivered(), None);
        s.load(MessageSeq::new(2));
        assert_eq!(s.last_delivered(), Some(MessageSeq::new(2)));
        assert_eq!(ids(&s.accept(arrivals(&[3]), t)), vec![3]);
    }

    #[test]
    fn a_message_ahead_of_a_gap_waits_and_goes_out_once_the_gap_closes() {
        let mut s = loaded(0);
        let t = Instant::now();
        assert_eq!(ids(&s.accept(arrivals(&[1]), t)), vec![1]);
        assert!(s.accept(arrivals(&[3, 4]), t).is_empty());
        assert_eq!(s.waiting(), 2);
        assert_eq!(s.gap_deadline(), Some(t + TIMEOUT));
        assert_eq!(ids(&s.accept(arrivals(&[2]), t)), vec![2, 3, 4]);
        assert_eq!(s.gap_deadline(), None);
    }

    #[test]
    fn the_author_of_a_duplicate_is_the_first_arrival() {
        let mut s = loaded(0);
        let t = Instant::now();
        s.accept(vec![(message(2), Some(7))], t);
        let ready = s.accept(vec![(message(2), None), (message(1), None)], t);
        assert_eq!(ids(&ready), vec![1, 2]);
        assert_eq!(ready[1].1, Some(7));
    }

    #[test]
    fn the_gap_deadline_does_not_move_while_more_messages_wait() {
        let mut s = loaded(0);
        let t = Instant::now();
        s.accept(arrivals(&[3]), t);
        s.accept(arrivals(&[5]), t + Duration::from_millis(200));
        assert_eq!(s.gap_deadline(), Some(t + TIMEOUT));
    }

    #[test]
    fn a_failed_fill_is_due_again_one_timeout_after_it_finished() {
        let mut s = loaded(4);
        let t = Instant::now();
        s.accept(arrivals(&[7]), t);
        assert_eq!(s.take_fill(t + TIMEOUT), Some(MessageSeq::new(4)));
        assert_eq!(s.gap_deadline(), None, "no timer while the read is out");
        let done = t + Duration::from_secs(2);
        s.fill_finished(done);
        assert_eq!(s.gap_deadline(), Some(done + TIMEOUT));
        assert_eq!(s.take_fill(done), None);
        assert_eq!(s.take_fill(done + TIMEOUT), Some(MessageSeq::new(4)));
    }

    #[test]
    fn waiting_messages_can_be_taken_out() {
        let mut s = loaded(0);
        let t = Instant::now();
        s.accept(vec![(message(3), Some(7)), (message(2), None)], t);
        let out = s.take_waiting();
        assert_eq!(ids(&out), vec![2, 3]);
        assert_eq!(out[1].1, Some(7));
        assert_eq!(s.waiting(), 0);
        assert_eq!(s.gap_deadline(), None);
    }

    #[test]
    fn a_fill_that_closes_the_gap_leaves_nothing_due() {
        let mut s = loaded(0);
        let t = Instant::now();
        s.accept(arrivals(&[2]), t);
        let after = s.take_fill(t + TIMEOUT).expect("due");
        assert_eq!(after, MessageSeq::ZERO);
        assert_eq!(ids(&s.accept(arrivals(&[1, 2]), t + TIMEOUT)), vec![1, 2]);
        s.fill_finished(t + TIMEOUT);
        assert_eq!(s.gap_deadline(), None);
        assert_eq!(s.take_fill(t + TIMEOUT * 10), None);
    }

    /// A room's ids `last+1 ..= last+n` arriving in any order, each at least
    /// once, with duplicates and with late copies of ids delivered before
    /// `last` mixed in.
    fn arrival_orders() -> impl Strategy<Value = (u64, u64, Vec<u64>)> {
        (0u64..20, 1u64..40).prop_flat_map(|(last, n)| {
            let fresh: Vec<u64> = (last + 1..=last + n).collect();
            let extra = prop::collection::vec(1..=last + n, 0..20);
            (Just(last), Just(n), Just(fresh), extra).prop_flat_map(|(last, n, fresh, extra)| {
                let all: Vec<u64> = fresh.into_iter().chain(extra).collect();
                (Just(last), Just(n), Just(all).prop_shuffle())
            })
        })
    }

    proptest! {
        /// Every id is delivered exactly once and in order, whatever order,
        /// duplication and lateness the arrivals had, and in whatever
        /// groups they came.
        #[test]
        fn every_id_is_delivered_once_in_order(
            (last, n, order) in arrival_orders(),
            cut in prop::collection::vec(any::<bool>(), 0..60),
        ) {
            let mut s = loaded(last);
            let t = Instant::now();
            let mut delivered = Vec::new();
            let mut group = Vec::new();
            for (i, id) in order.iter().enumerate() {
                group.push(*id);
                if cut.get(i).copied().unwrap_or(true) {
                    delivered.extend(ids(&s.accept(arrivals(&group), t)));
                    group.clear();
                }
            }
            delivered.extend(ids(&s.accept(arrivals(&group), t)));
            prop_assert_eq!(delivered, (last + 1..=last + n).collect::<Vec<_>>());
            prop_assert_eq!(s.waiting(), 0);
            prop_assert_eq!(s.gap_deadline(), None);
        }

        /// A missing id leads to exactly one fill request, and only once
        /// the timeout has passed; the fill then delivers the rest in order.
        #[test]
        fn a_missing_id_leads_to_exactly_one_fill_after_the_timeout(
            (last, n, order) in arrival_orders(),
            pick in any::<prop::sample::Index>(),
            polls in prop::collection::vec(0u64..1000, 1..30),
        ) {
            let missing = last + 1 + pick.index(n as usize) as u64;
            let mut s = loaded(last);
            let t = Instant::now();
            let mut delivered = Vec::new();
            let mut fills = Vec::new();
            for id in order.iter().filter(|&&id| id != missing) {
                delivered.extend(ids(&s.accept(arrivals(&[*id]), t)));
            }
            prop_assert_eq!(&delivered, &(last + 1..missing).collect::<Vec<_>>());
            // The timer may fire at any time; polls before the deadline get
            // nothing, and of all the polls after it exactly one gets a read.
            let mut polls = polls;
            polls.sort_unstable();
            for ms in polls {
                let now = t + Duration::from_millis(ms);
                if let Some(after) = s.take_fill(now) {
                    prop_assert!(now >= t + TIMEOUT, "fill before the timeout");
                    fills.push(after);
                }
            }
            let waits = missing < last + n;
            if waits {
                // Whatever the polls did, once the deadline is past the read
                // is (or already was) handed out exactly once.
                if let Some(after) = s.take_fill(t + TIMEOUT) {
                    fills.push(after);
                }
                prop_assert_eq!(fills.len(), 1);
                prop_assert_eq!(fills[0], MessageSeq::new(missing - 1));
                prop_assert_eq!(s.take_fill(t + TIMEOUT * 100), None);
                // The read returns everything after `fills[0]`.
                let read: Vec<u64> = (missing..=last + n).collect();
                delivered.extend(ids(&s.accept(arrivals(&read), t + TIMEOUT)));
                s.fill_finished(t + TIMEOUT);
            } else {
                // The missing id is the newest: nothing waits, nothing to fill.
                prop_assert!(fills.is_empty());
                delivered.extend(ids(&s.accept(arrivals(&[missing]), t)));
            }
            prop_assert_eq!(delivered, (last + 1..=last + n).collect::<Vec<_>>());
            prop_assert_eq!(s.gap_deadline(), None);
            prop_assert_eq!(s.take_fill(t + TIMEOUT * 1000), None);
        }
    }
}
