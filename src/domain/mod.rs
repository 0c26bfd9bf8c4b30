//! The chat's vocabulary: validated input types and the three records the
//! protocol exchanges (`Room`, `Member`, `Message`), serialized exactly as
//! docs/PROTOCOL.md shows them.

mod ids;
mod validated;

pub use ids::{MessageSeq, RoomId, SocketId};
pub use validated::{MessageContent, Nickname, RoomTitle, TextLimits};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};

/// Times go over the wire as RFC 3339 UTC with second precision
/// (`2026-11-24T10:00:00Z`), the form docs/PROTOCOL.md shows.
pub fn serialize_time<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// The current time truncated to whole seconds, so what the memory store
/// keeps is exactly what MySQL's DATETIME columns would give back.
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

// Deserialize (RFC 3339 in, any precision) is for the cluster bus, which
// carries these records between processes.

/// A chat room as listed by the REST API and sent in `joined`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Room {
    pub id: RoomId,
    pub title: String,
    pub member_count: u32,
    #[serde(serialize_with = "serialize_time")]
    pub created: DateTime<Utc>,
}

/// A member of a room as the protocol shows it; which connection it belongs
/// to stays on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub nickname: String,
    #[serde(serialize_with = "serialize_time")]
    pub joined_at: DateTime<Utc>,
}

/// A stored chat message; `id` is the room's sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: MessageSeq,
    pub room_id: RoomId,
    pub nickname: String,
    pub content: String,
    #[serde(serialize_with = "serialize_time")]
    pub sent_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_serialize_in_camel_case_with_rfc3339_times() {
        let t = DateTime::from_timestamp(1_795_000_000, 0).unwrap();
        let room = Room {
            id: RoomId::new(7),
            title: "general".into(),
            member_count: 2,
            created: t,
        };
        let json = serde_json::to_value(&room).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":7,"title":"general","memberCount":2,"created":"2026-11-18T11:06:40Z"})
        );
        let msg = Message {
            id: MessageSeq::new(42),
            room_id: RoomId::new(7),
            nickname: "alice".into(),
            content: "hi".into(),
            sent_at: t,
        };
        let json = serde_json::to_value(&msg).unwrap();
        assert_eq!(json["roomId"], 7);
        assert_eq!(json["sentAt"], "2026-11-18T11:06:40Z");
    }
}
