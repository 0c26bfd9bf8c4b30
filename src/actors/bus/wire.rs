//! What travels on the bus: the events of a room and the envelope that
//! carries one on the room's channel, as JSON.

use serde::{Deserialize, Serialize};

use crate::domain::{Member, Message, RoomId, SocketId};

/// What happens in a room, as other processes need to hear it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum RoomEvent {
    /// Messages stored by the origin, ids consecutive.
    Messages { messages: Vec<Message> },
    /// A member joined on the origin; `socket` identifies the membership,
    /// `join_seq` its place in the store's join order.
    Joined {
        #[serde(rename = "socket")]
        socket_id: SocketId,
        member: Member,
        join_seq: u64,
    },
    /// A membership ended (left, disconnected or reaped).
    Left {
        #[serde(rename = "socket")]
        socket_id: SocketId,
        nickname: String,
    },
    /// A hint: the origin may have missed, or failed to deliver, events of
    /// this room; re-read its messages and members from the store. (A peer
    /// of an older version cannot decode it, logs it and goes on.)
    Resync,
}

/// One payload on a room's channel: `event` in `room`, from the process
/// `origin` (which ignores its own), published at `sent` (milliseconds
/// since the Unix epoch, by the origin's clock; for the receive-lag
/// histogram). `sent` is optional both ways: an envelope of an older
/// version has none and decodes, and an older peer ignores it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Envelope {
    pub(super) origin: String,
    pub(super) room: RoomId,
    #[serde(rename = "sent", default, skip_serializing_if = "Option::is_none")]
    pub(super) sent_ms: Option<u64>,
    pub(super) event: RoomEvent,
}

impl Envelope {
    /// The payload to publish.
    pub(super) fn encode(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }

    /// A received payload; an error for anything that is not an envelope
    /// of a known event kind (garbage, or a kind from a newer version).
    pub(super) fn decode(payload: &[u8]) -> serde_json::Result<Envelope> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_decode_every_kind_and_reject_unknown_ones_without_panicking() {
        let hint = Envelope {
            origin: "a".into(),
            room: RoomId::new(7),
            sent_ms: None,
            event: RoomEvent::Resync,
        };
        let wire = hint.encode().expect("encode");
        assert_eq!(wire, r#"{"origin":"a","room":7,"event":{"kind":"resync"}}"#);
        let back = Envelope::decode(wire.as_bytes()).expect("decode");
        assert_eq!(back.event, RoomEvent::Resync);
        for bad in [
            r#"{"origin":"a","room":7,"event":{"kind":"typing","who":"x"}}"#,
            r#"{"origin":"a","room":7}"#,
            r#"{"origin":"a","room":"seven","event":{"kind":"resync"}}"#,
            "\u{0}\u{ff}not json",
            "",
        ] {
            assert!(Envelope::decode(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_send_time_travels_and_envelopes_without_one_still_decode() {
        let sent = Envelope {
            origin: "a".into(),
            room: RoomId::new(7),
            sent_ms: Some(1_795_000_000_123),
            event: RoomEvent::Resync,
        };
        let wire = sent.encode().expect("encode");
        assert_eq!(
            wire,
            r#"{"origin":"a","room":7,"sent":1795000000123,"event":{"kind":"resync"}}"#
        );
        let back = Envelope::decode(wire.as_bytes()).expect("decode");
        assert_eq!(back.sent_ms, Some(1_795_000_000_123));
        // What a process of the previous version publishes.
        let old = r#"{"origin":"a","room":7,"event":{"kind":"resync"}}"#;
        let back = Envelope::decode(old.as_bytes()).expect("an old envelope decodes");
        assert_eq!((back.sent_ms, back.event), (None, RoomEvent::Resync));
    }
}
