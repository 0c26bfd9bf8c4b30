//! Chats waiting to be stored: taken in as they arrive, stored in batches
//! of at most `max_batch` by one store step at a time. Plain Rust.
//!
//! Bounded: a room holds at most `max_messages` chats and `max_bytes` of
//! content waiting (`ROOM_QUEUE_MAX_MESSAGES`, `ROOM_QUEUE_MAX_BYTES`), so a
//! slow store or a flood that outruns it cannot grow the process. A chat
//! that does not fit is refused, never dropped silently: its author is told
//! (`rate_limited`) and it is not stored.

use super::fanout::Author;
use crate::store::NewMessage;

/// The chats a room has accepted but not yet handed to the store, oldest
/// first, each with its author.
#[derive(Debug)]
pub struct PendingChats {
    messages: Vec<NewMessage>,
    authors: Vec<Author>,
    /// Content bytes of `messages`.
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
}

/// A chat the queue had no room for, handed back with its author.
#[derive(Debug)]
pub struct QueueFull {
    pub author: Author,
    /// Chats already waiting.
    pub waiting: usize,
}

impl PendingChats {
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        PendingChats {
            messages: Vec::new(),
            authors: Vec::new(),
            bytes: 0,
            max_messages: max_messages.max(1),
            max_bytes,
        }
    }

    /// Queues a chat, or refuses it when the queue is full in count or
    /// bytes (a chat bigger than `max_bytes` on its own is accepted only
    /// into an empty queue, so every valid chat can be stored).
    pub fn push(&mut self, message: NewMessage, author: Author) -> Result<(), QueueFull> {
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
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// How many chats wait.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// The oldest chats, at most `max`, to store as one batch.
    pub fn take_batch(&mut self, max: usize) -> (Vec<NewMessage>, Vec<Author>) {
        let n = self.messages.len().min(max);
        let batch: Vec<NewMessage> = self.messages.drain(..n).collect();
        self.bytes -= batch.iter().map(|m| m.content.len()).sum::<usize>();
        (batch, self.authors.drain(..n).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SocketId;

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

    fn push(q: &mut PendingChats, i: usize, content: &str) -> Result<(), QueueFull> {
        let (m, a) = chat(i, content);
        q.push(m, a)
    }

    #[test]
    fn batches_take_the_oldest_chats_with_their_authors() {
        let mut pending = PendingChats::new(100, 1000);
        for i in 0..5 {
            push(&mut pending, i, &format!("c{i}")).unwrap();
        }
        let (batch, authors) = pending.take_batch(3);
        let contents: Vec<&str> = batch.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["c0", "c1", "c2"]);
        let refs: Vec<_> = authors.iter().map(|a| a.reference.as_deref()).collect();
        assert_eq!(refs, [Some("r0"), Some("r1"), Some("r2")]);
        let (rest, _) = pending.take_batch(10);
        assert_eq!(rest.len(), 2);
        assert!(pending.is_empty());
    }

    #[test]
    fn the_queue_is_bounded_in_count() {
        let mut q = PendingChats::new(3, 1 << 20);
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
        let mut q = PendingChats::new(100, 10);
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
}
