//! Chats waiting to be stored: taken in as they arrive, stored in batches
//! of at most `max_batch` by one store step at a time. Plain Rust.

use super::fanout::Author;
use crate::store::NewMessage;

/// The chats a room has accepted but not yet handed to the store, oldest
/// first, each with its author.
#[derive(Debug, Default)]
pub struct PendingChats {
    messages: Vec<NewMessage>,
    authors: Vec<Author>,
}

impl PendingChats {
    pub fn push(&mut self, message: NewMessage, author: Author) {
        self.messages.push(message);
        self.authors.push(author);
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The oldest chats, at most `max`, to store as one batch.
    pub fn take_batch(&mut self, max: usize) -> (Vec<NewMessage>, Vec<Author>) {
        let n = self.messages.len().min(max);
        (
            self.messages.drain(..n).collect(),
            self.authors.drain(..n).collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SocketId;

    fn chat(i: usize) -> (NewMessage, Author) {
        (
            NewMessage {
                nickname: "ann".into(),
                content: format!("c{i}"),
                sent_at: chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap(),
            },
            Author {
                socket_id: SocketId::from("i:1"),
                reference: Some(format!("r{i}")),
            },
        )
    }

    #[test]
    fn batches_take_the_oldest_chats_with_their_authors() {
        let mut pending = PendingChats::default();
        for i in 0..5 {
            let (m, a) = chat(i);
            pending.push(m, a);
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
}
