//! Chats waiting to be stored, and the batch being stored: taken in as they
//! arrive, stored in batches of at most `max_batch` by one store step at a
//! time, and answered in time. Plain Rust.
//!
//! Bounded: a room holds at most `max_messages` chats and `max_bytes` of
//! content waiting (`ROOM_QUEUE_MAX_MESSAGES`, `ROOM_QUEUE_MAX_BYTES`), so a
//! slow store or a flood that outruns it cannot grow the process. A chat
//! that does not fit is refused, never dropped silently: its author is told
//! (`rate_limited`) and it is not stored.
//!
//! Answered in time: every chat gets a first answer within `bound`
//! (`STORE_TIMEOUT_MS`) of reaching the room, and every answer is true.
//! The store's own answer is always true but may come late: a batch whose
//! `COMMIT` was sent and not answered is answered only once the database
//! tells whether it committed. So, once a chat has waited `bound`
//! ([`PendingChats::overdue`]):
//! - in the batch being stored, its author is told `pending` (not confirmed
//!   yet), once; the store's answer (echo or error) follows when it comes;
//! - still waiting behind that batch, it is refused (`unavailable`) and
//!   taken out of the queue: it was never handed to the store and never
//!   will be, so "not stored" is true.

use std::time::{Duration, Instant};

use super::fanout::Author;
use crate::store::NewMessage;

/// The chats a room has accepted and not yet answered for good: those not
/// yet handed to the store, oldest first, and the batch the store is
/// storing, each chat with its author and the moment it arrived.
#[derive(Debug)]
pub struct PendingChats {
    messages: Vec<NewMessage>,
    authors: Vec<Author>,
    arrived: Vec<Instant>,
    /// Content bytes of `messages`.
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    /// The batch handed to the store and not answered yet, in arrival order
    /// (a room has one batch in flight at a time).
    in_flight: Vec<(Author, Instant)>,
    /// How many of `in_flight`, from the front, were told `pending`. A
    /// prefix: they arrived in order, so they become overdue in order.
    told: usize,
    /// How long a chat may wait for its first answer.
    bound: Duration,
}

/// A chat the queue had no room for, handed back with its author.
#[derive(Debug)]
pub struct QueueFull {
    pub author: Author,
    /// Chats already waiting.
    pub waiting: usize,
}

/// The chats that have waited `bound` without an answer, by what their
/// authors are to be told now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Overdue {
    /// In the batch being stored: told `pending`; the store's answer
    /// follows.
    pub pending: Vec<Author>,
    /// Never handed to the store, and now taken out of the queue: refused.
    pub refused: Vec<Author>,
}

impl PendingChats {
    pub fn new(max_messages: usize, max_bytes: usize, bound: Duration) -> Self {
        PendingChats {
            messages: Vec::new(),
            authors: Vec::new(),
            arrived: Vec::new(),
            bytes: 0,
            max_messages: max_messages.max(1),
            max_bytes,
            in_flight: Vec::new(),
            told: 0,
            bound,
        }
    }

    /// Queues a chat that arrived at `now`, or refuses it when the queue is
    /// full in count or bytes (a chat bigger than `max_bytes` on its own is
    /// accepted only into an empty queue, so every valid chat can be
    /// stored).
    pub fn push(
        &mut self,
        message: NewMessage,
        author: Author,
        now: Instant,
    ) -> Result<(), QueueFull> {
        let size = message.content.len();
        let fits = self.messages.len() < self.max_messages
            && (self.messages.is_empty() || self.bytes + size <= self.max_bytes);
        if !fits {
            return Err(QueueFull {
                author,
                waiting: self.messages.len(),
            });
        }
        self.bytes += size;
        self.messages.push(message);
        self.authors.push(author);
        self.arrived.push(now);
        Ok(())
    }

    /// No chat waits to be handed to the store (a batch may be in flight).
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// How many chats wait to be handed to the store.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// The oldest chats, at most `max`, to store as one batch; they are in
    /// flight until [`finish_batch`](Self::finish_batch).
    ///
    /// Invariant: one batch in flight at a time (the room's store steps run
    /// one at a time); a batch taken while one is in flight joins it, so no
    /// author is ever forgotten.
    pub fn take_batch(&mut self, max: usize) -> Vec<NewMessage> {
        let n = self.messages.len().min(max);
        let batch: Vec<NewMessage> = self.messages.drain(..n).collect();
        self.bytes -= batch.iter().map(|m| m.content.len()).sum::<usize>();
        let authors = self.authors.drain(..n).zip(self.arrived.drain(..n));
        self.in_flight.extend(authors);
        batch
    }

    /// The store answered the batch in flight: its authors, in order, to be
    /// given that answer.
    pub fn finish_batch(&mut self) -> Vec<Author> {
        self.told = 0;
        self.in_flight.drain(..).map(|(author, _)| author).collect()
    }

    /// The chats that have waited `bound` by `now` and have had no answer:
    /// those in flight are marked told (each is returned once), those still
    /// queued are taken out of the queue.
    pub fn overdue(&mut self, now: Instant) -> Overdue {
        let due = |arrived: &Instant| *arrived + self.bound <= now;
        let told = self.told
            + self.in_flight[self.told..]
                .iter()
                .take_while(|(_, arrived)| due(arrived))
                .count();
        let pending = self.in_flight[self.told..told]
            .iter()
            .map(|(author, _)| author.clone())
            .collect();
        self.told = told;
        let n = self.arrived.iter().take_while(|a| due(a)).count();
        self.arrived.drain(..n);
        let dropped: usize = self.messages.drain(..n).map(|m| m.content.len()).sum();
        self.bytes -= dropped;
        let refused = self.authors.drain(..n).collect();
        Overdue { pending, refused }
    }

    /// When the next chat without an answer becomes overdue, if any: the
    /// oldest chat in flight not yet told, else the oldest queued.
    pub fn next_deadline(&self) -> Option<Instant> {
        let oldest = match self.in_flight.get(self.told) {
            Some((_, arrived)) => Some(arrived),
            None => self.arrived.first(),
        };
        oldest.map(|arrived| *arrived + self.bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SocketId;

    const BOUND: Duration = Duration::from_millis(1500);

    fn chat(i: usize, content: &str) -> (NewMessage, Author) {
        (
            NewMessage {
                nickname: "ann".into(),
                content: content.into(),
                sent_at: chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap(),
            },
            Author {
                socket_id: SocketId::from("i:1"),
                reference: Some(format!("r{i}")),
            },
        )
    }

    fn push_at(
        q: &mut PendingChats,
        i: usize,
        content: &str,
        at: Instant,
    ) -> Result<(), QueueFull> {
        let (m, a) = chat(i, content);
        q.push(m, a, at)
    }

    fn push(q: &mut PendingChats, i: usize, content: &str) -> Result<(), QueueFull> {
        push_at(q, i, content, Instant::now())
    }

    fn refs(authors: &[Author]) -> Vec<&str> {
        authors
            .iter()
            .map(|a| a.reference.as_deref().unwrap_or(""))
            .collect()
    }

    #[test]
    fn batches_take_the_oldest_chats_with_their_authors() {
        let mut pending = PendingChats::new(100, 1000, BOUND);
        for i in 0..5 {
            push(&mut pending, i, &format!("c{i}")).unwrap();
        }
        let batch = pending.take_batch(3);
        let contents: Vec<&str> = batch.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["c0", "c1", "c2"]);
        assert_eq!(refs(&pending.finish_batch()), ["r0", "r1", "r2"]);
        assert!(pending.finish_batch().is_empty(), "answered once");
        let rest = pending.take_batch(10);
        assert_eq!(rest.len(), 2);
        assert!(pending.is_empty());
        assert_eq!(refs(&pending.finish_batch()), ["r3", "r4"]);
    }

    #[test]
    fn the_queue_is_bounded_in_count() {
        let mut q = PendingChats::new(3, 1 << 20, BOUND);
        for i in 0..3 {
            push(&mut q, i, "x").unwrap();
        }
        let full = push(&mut q, 3, "x").unwrap_err();
        assert_eq!(full.author.reference.as_deref(), Some("r3"));
        assert_eq!(full.waiting, 3);
        q.take_batch(1);
        push(&mut q, 4, "x").unwrap();
    }

    #[test]
    fn the_queue_is_bounded_in_bytes() {
        let mut q = PendingChats::new(100, 10, BOUND);
        push(&mut q, 0, "12345").unwrap();
        push(&mut q, 1, "12345").unwrap();
        assert!(push(&mut q, 2, "1").is_err(), "10 bytes wait already");
        q.take_batch(1);
        push(&mut q, 3, "1234").unwrap();
        assert!(push(&mut q, 4, "12").is_err());
        q.take_batch(10);
        // One chat larger than the whole budget still goes into an empty
        // queue: every valid chat can be stored.
        push(&mut q, 5, &"x".repeat(50)).unwrap();
        assert!(push(&mut q, 6, "x").is_err());
    }

    #[test]
    fn a_batch_in_flight_past_the_bound_is_told_pending_once_in_arrival_order() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut q = PendingChats::new(100, 1000, BOUND);
        push_at(&mut q, 0, "a", ms(0)).unwrap();
        push_at(&mut q, 1, "b", ms(400)).unwrap();
        q.take_batch(10);
        assert_eq!(q.next_deadline(), Some(ms(1500)));
        assert_eq!(q.overdue(ms(1499)), Overdue::default(), "not yet");
        let due = q.overdue(ms(1500));
        assert_eq!(refs(&due.pending), ["r0"]);
        assert!(due.refused.is_empty(), "in flight: never refused");
        assert_eq!(q.next_deadline(), Some(ms(1900)));
        assert!(q.overdue(ms(1600)).pending.is_empty(), "told once");
        assert_eq!(refs(&q.overdue(ms(5000)).pending), ["r1"]);
        assert_eq!(q.next_deadline(), None, "everyone has a first answer");
        // The store's answer still goes to both.
        assert_eq!(refs(&q.finish_batch()), ["r0", "r1"]);
        assert_eq!(q.overdue(ms(9000)), Overdue::default());
    }

    #[test]
    fn chats_waiting_behind_a_batch_past_the_bound_are_refused_and_leave_the_queue() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut q = PendingChats::new(3, 1000, BOUND);
        push_at(&mut q, 0, "stuck", ms(0)).unwrap();
        q.take_batch(10);
        push_at(&mut q, 1, "12345", ms(100)).unwrap();
        push_at(&mut q, 2, "12345", ms(700)).unwrap();
        let due = q.overdue(ms(1600));
        assert_eq!(refs(&due.pending), ["r0"]);
        assert_eq!(refs(&due.refused), ["r1"]);
        assert_eq!(q.len(), 1, "the refused chat is gone for good");
        assert_eq!(q.next_deadline(), Some(ms(2200)));
        let due = q.overdue(ms(2200));
        assert!(due.pending.is_empty());
        assert_eq!(refs(&due.refused), ["r2"]);
        assert!(q.is_empty());
        assert!(q.take_batch(10).is_empty(), "nothing refused is stored");
        // Count and bytes are freed.
        for i in 3..6 {
            push_at(&mut q, i, &"x".repeat(300), ms(2300)).unwrap();
        }
        // The stuck batch is answered at last: only its own author hears.
        assert_eq!(refs(&q.finish_batch()), ["r0"]);
    }

    #[test]
    fn chats_answered_in_time_get_nothing_more() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut q = PendingChats::new(100, 1000, BOUND);
        push_at(&mut q, 0, "a", ms(0)).unwrap();
        q.take_batch(10);
        push_at(&mut q, 1, "b", ms(200)).unwrap();
        q.finish_batch(); // answered at 700 ms
        q.take_batch(10);
        assert_eq!(q.next_deadline(), Some(ms(1700)));
        q.finish_batch(); // answered at 1400 ms
        assert_eq!(q.next_deadline(), None);
        assert_eq!(q.overdue(ms(10_000)), Overdue::default());
    }
}
