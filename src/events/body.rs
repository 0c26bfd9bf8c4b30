//! What an event is and the bytes it is published as: plain types and
//! functions, no I/O, so tests reach them without RabbitMQ or MySQL.
//!
//! The body is a JSON object (docs/PROTOCOL.md "Domain events"):
//! `type` (the routing key), `id` (unique per event, the same every time
//! the event is published), `roomId`, `seq` (the event's place in its
//! room's stream: 1, 2, 3, ... with no gap unless events were dropped),
//! `instance` (the process that made the change), `at` (RFC 3339) and the
//! `room`, `member` or `message` it concerns in the protocol's shapes.
//! The body is built once, when the event is recorded, and published
//! verbatim, so a repeated publish (after a missed confirm) is
//! byte-for-byte the same message.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::domain::{Member, Message, Room, RoomId};

/// The five kinds of event; each is its own routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    RoomCreated,
    RoomDeleted,
    MemberJoined,
    MemberLeft,
    MessageSent,
}

impl EventKind {
    /// The routing key, which is also the body's `type`.
    pub fn routing_key(self) -> &'static str {
        match self {
            EventKind::RoomCreated => "room.created",
            EventKind::RoomDeleted => "room.deleted",
            EventKind::MemberJoined => "member.joined",
            EventKind::MemberLeft => "member.left",
            EventKind::MessageSent => "message.sent",
        }
    }
}

/// The record an event concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Room(Room),
    Member(Member),
    Message(Message),
}

/// One change of one room, as the store records it, before it has an id
/// and a place in the room's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEvent {
    pub kind: EventKind,
    pub room_id: RoomId,
    pub at: DateTime<Utc>,
    pub subject: Subject,
}

impl DomainEvent {
    pub fn room_created(room: &Room) -> Self {
        DomainEvent {
            kind: EventKind::RoomCreated,
            room_id: room.id,
            at: room.created,
            subject: Subject::Room(room.clone()),
        }
    }

    /// `room` as it was when it was deleted (its `memberCount` is 0).
    pub fn room_deleted(room: &Room, at: DateTime<Utc>) -> Self {
        let mut room = room.clone();
        room.member_count = 0;
        DomainEvent {
            kind: EventKind::RoomDeleted,
            room_id: room.id,
            at,
            subject: Subject::Room(room),
        }
    }

    pub fn member_joined(room_id: RoomId, member: &Member) -> Self {
        DomainEvent {
            kind: EventKind::MemberJoined,
            room_id,
            at: member.joined_at,
            subject: Subject::Member(member.clone()),
        }
    }

    pub fn member_left(room_id: RoomId, member: &Member, at: DateTime<Utc>) -> Self {
        DomainEvent {
            kind: EventKind::MemberLeft,
            room_id,
            at,
            subject: Subject::Member(member.clone()),
        }
    }

    pub fn message_sent(message: &Message) -> Self {
        DomainEvent {
            kind: EventKind::MessageSent,
            room_id: message.room_id,
            at: message.sent_at,
            subject: Subject::Message(message.clone()),
        }
    }

    /// The published body of this event as the `seq`-th of its room, with
    /// the event id `id`, recorded by process `instance`.
    pub fn body(&self, id: &str, seq: u64, instance: &str) -> String {
        let mut body = json!({
            "type": self.kind.routing_key(),
            "id": id,
            "roomId": self.room_id,
            "seq": seq,
            "instance": instance,
            "at": self.at.to_rfc3339_opts(SecondsFormat::Secs, true),
        });
        let (field, value) = match &self.subject {
            Subject::Room(room) => ("room", serde_json::to_value(room)),
            Subject::Member(member) => ("member", serde_json::to_value(member)),
            Subject::Message(message) => ("message", serde_json::to_value(message)),
        };
        // The records are plain structs of strings and numbers: serializing
        // them cannot fail, but a failure would leave the field out rather
        // than panic.
        if let Ok(value) = value {
            body[field] = value;
        }
        body.to_string()
    }
}

/// A fresh event id: a random (v4) UUID, unique across processes, restarts
/// and clusters that share an exchange.
pub fn new_event_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MessageSeq;
    use serde_json::Value;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_000_000 + secs, 0).unwrap()
    }

    fn room() -> Room {
        Room {
            id: RoomId::new(7),
            title: "general".into(),
            member_count: 2,
            created: t(0),
        }
    }

    fn parse(body: &str) -> Value {
        serde_json::from_str(body).expect("a body is JSON")
    }

    #[test]
    fn routing_keys_are_the_documented_five() {
        let keys: Vec<_> = [
            EventKind::RoomCreated,
            EventKind::RoomDeleted,
            EventKind::MemberJoined,
            EventKind::MemberLeft,
            EventKind::MessageSent,
        ]
        .map(EventKind::routing_key)
        .to_vec();
        assert_eq!(
            keys,
            [
                "room.created",
                "room.deleted",
                "member.joined",
                "member.left",
                "message.sent"
            ]
        );
    }

    #[test]
    fn a_message_event_carries_every_documented_field() {
        let message = Message {
            id: MessageSeq::new(42),
            room_id: RoomId::new(7),
            nickname: "alice".into(),
            content: "hi \u{1F600}".into(),
            sent_at: t(2),
        };
        let body = parse(&DomainEvent::message_sent(&message).body("e-1", 5, "node-a"));
        assert_eq!(
            body,
            serde_json::json!({
                "type": "message.sent",
                "id": "e-1",
                "roomId": 7,
                "seq": 5,
                "instance": "node-a",
                "at": "2026-11-18T11:06:42Z",
                "message": {
                    "id": 42, "roomId": 7, "nickname": "alice",
                    "content": "hi \u{1F600}", "sentAt": "2026-11-18T11:06:42Z"
                }
            })
        );
    }

    #[test]
    fn room_and_member_events_carry_their_record() {
        let created = parse(&DomainEvent::room_created(&room()).body("a", 1, "i"));
        assert_eq!(created["type"], "room.created");
        assert_eq!(created["room"]["title"], "general");
        let deleted = parse(&DomainEvent::room_deleted(&room(), t(9)).body("b", 9, "i"));
        assert_eq!(deleted["type"], "room.deleted");
        assert_eq!(deleted["room"]["memberCount"], 0, "a deleted room is empty");
        assert_eq!(deleted["at"], "2026-11-18T11:06:49Z");
        let member = Member {
            nickname: "bob".into(),
            joined_at: t(1),
        };
        let joined = parse(&DomainEvent::member_joined(RoomId::new(7), &member).body("c", 2, "i"));
        assert_eq!(joined["type"], "member.joined");
        assert_eq!(joined["member"]["nickname"], "bob");
        assert_eq!(joined["member"]["joinedAt"], "2026-11-18T11:06:41Z");
        let left =
            parse(&DomainEvent::member_left(RoomId::new(7), &member, t(5)).body("d", 3, "i"));
        assert_eq!(left["type"], "member.left");
        assert_eq!(left["at"], "2026-11-18T11:06:45Z");
        assert_eq!(left["roomId"], 7);
    }

    #[test]
    fn event_ids_differ() {
        assert_ne!(new_event_id(), new_event_id());
    }
}
