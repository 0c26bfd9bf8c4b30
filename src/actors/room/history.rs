//! The recent history a `joined` frame carries: the last messages this room
//! delivered, oldest first. Plain Rust.
//!
//! Invariant (history then live, nothing twice): the ring holds exactly the
//! messages delivered before a member is added, and every later message
//! reaches that member live, because both happen in the same actor turn.

use std::collections::VecDeque;

use crate::domain::{Message, MessageSeq};

#[derive(Debug)]
pub struct RecentHistory {
    ring: VecDeque<Message>,
    keep: usize,
}

impl RecentHistory {
    /// Keeps the last `keep` messages (`HISTORY_ON_JOIN`; 0 keeps none).
    pub fn new(keep: usize) -> Self {
        RecentHistory {
            ring: VecDeque::with_capacity(keep.min(64)),
            keep,
        }
    }

    /// Starts from the newest messages the store had (ascending), keeping
    /// the last `keep`; returns the newest id, where delivery resumes.
    pub fn load(&mut self, stored: Vec<Message>) -> MessageSeq {
        let newest = stored.last().map_or(MessageSeq::ZERO, |m| m.id);
        let skip = stored.len().saturating_sub(self.keep);
        self.ring = stored.into_iter().skip(skip).collect();
        newest
    }

    /// Records a delivered message, dropping the oldest beyond `keep`.
    pub fn push(&mut self, message: Message) {
        if self.keep == 0 {
            return;
        }
        if self.ring.len() >= self.keep {
            self.ring.pop_front();
        }
        self.ring.push_back(message);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Message> {
        self.ring.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RoomId;

    fn message(id: u64) -> Message {
        Message {
            id: MessageSeq::new(id),
            room_id: RoomId::new(1),
            nickname: "ann".into(),
            content: String::new(),
            sent_at: chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap(),
        }
    }

    fn ids(h: &RecentHistory) -> Vec<u64> {
        h.iter().map(|m| m.id.get()).collect()
    }

    #[test]
    fn keeps_the_newest_messages_in_order() {
        let mut h = RecentHistory::new(3);
        assert_eq!(h.load((1..=5).map(message).collect()), MessageSeq::new(5));
        assert_eq!(ids(&h), [3, 4, 5]);
        h.push(message(6));
        assert_eq!(ids(&h), [4, 5, 6]);
        assert_eq!(RecentHistory::new(3).load(Vec::new()), MessageSeq::ZERO);
    }

    #[test]
    fn zero_keeps_nothing() {
        let mut h = RecentHistory::new(0);
        assert_eq!(h.load(vec![message(1)]), MessageSeq::new(1));
        h.push(message(2));
        assert!(ids(&h).is_empty());
    }
}
