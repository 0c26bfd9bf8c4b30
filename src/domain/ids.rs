//! Identifiers as types, so that a room id, a message id and a socket id
//! cannot be swapped without a compile error. Each serializes exactly as the
//! bare value it wraps (`serde(transparent)`), so the wire does not see them.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A room's id: assigned by the store, unique for the store's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoomId(u64);

impl RoomId {
    pub const fn new(id: u64) -> Self {
        RoomId(id)
    }

    /// The bare number, for the store's queries and Redis channel names.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A message id: a per-room sequence 1, 2, 3, ... assigned by the store in
/// the same transaction that stores the message. Being gap-free within a room
/// is what lets a receiver tell a missing message from a late one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageSeq(u64);

impl MessageSeq {
    /// "Before the first message": `messages_after(ZERO)` reads from the start.
    pub const ZERO: MessageSeq = MessageSeq(0);
    /// The id of a room's first message.
    pub const FIRST: MessageSeq = MessageSeq(1);

    pub const fn new(id: u64) -> Self {
        MessageSeq(id)
    }

    /// The bare number, for the store's queries.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The id after this one.
    pub const fn next(self) -> Self {
        MessageSeq(self.0 + 1)
    }

    /// The id before this one (`ZERO` stays `ZERO`).
    pub const fn prev(self) -> Self {
        MessageSeq(self.0.saturating_sub(1))
    }
}

impl fmt::Display for MessageSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One WebSocket connection, cluster-wide: `<instance>:<number>`. It names
/// a membership in the store (`chatMember.socket_id`) and on the bus, so a
/// leave removes exactly that connection's row. Cheap to clone: every chat
/// carries it from the session to its room.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SocketId(Arc<str>);

impl SocketId {
    /// The id of connection `number` of `instance`.
    pub fn new(instance: &str, number: u64) -> Self {
        SocketId(format!("{instance}:{number}").into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for SocketId {
    /// An id read back from the store or the bus.
    fn from(id: String) -> Self {
        SocketId(id.into())
    }
}

impl From<&str> for SocketId {
    fn from(id: &str) -> Self {
        SocketId(id.into())
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_serialize_as_their_bare_values() {
        assert_eq!(serde_json::to_string(&RoomId::new(7)).unwrap(), "7");
        assert_eq!(serde_json::to_string(&MessageSeq::new(42)).unwrap(), "42");
        let socket = SocketId::new("chat-0", 3);
        assert_eq!(serde_json::to_string(&socket).unwrap(), "\"chat-0:3\"");
        let back: SocketId = serde_json::from_str("\"chat-0:3\"").unwrap();
        assert_eq!(back, socket);
        let room: RoomId = serde_json::from_str("7").unwrap();
        assert_eq!(room, RoomId::new(7));
    }

    #[test]
    fn message_seq_steps() {
        assert_eq!(MessageSeq::ZERO.next(), MessageSeq::FIRST);
        assert_eq!(MessageSeq::ZERO.prev(), MessageSeq::ZERO);
        assert_eq!(MessageSeq::new(5).prev(), MessageSeq::new(4));
    }
}
