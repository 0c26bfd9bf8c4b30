//! One delivery's body, checked and turned into the row it becomes: the
//! pure part of the archive (no sockets, no database).
//!
//! Invariant, enforced by [`parse`]: an [`Event`] fits its `chatEvent` row
//! (lengths, ranges, a UTF-8 body of at most the configured size), so the
//! insert cannot fail because of what one event holds. A body that would
//! not fit is a [`BadEvent`] and is dead-lettered instead, never retried.

use chrono::{DateTime, Datelike, NaiveDateTime, SubsecRound};
use serde::Deserialize;

/// Widest `id` and `instance` (`VARCHAR(255)`).
pub const MAX_ID_CHARS: usize = 255;
/// Widest `type` (`VARCHAR(64)`).
pub const MAX_TYPE_CHARS: usize = 64;

/// An event as it is archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event's `id`, unique per event: the deduplication key.
    pub id: String,
    /// `type`, e.g. `message.sent`.
    pub kind: String,
    pub room_id: u64,
    pub instance: String,
    /// `at` in UTC, truncated to milliseconds (the column's precision).
    pub at: NaiveDateTime,
    /// The per-room sequence number, when the publisher gives one.
    pub seq: Option<u64>,
    /// The body exactly as received.
    pub body: String,
}

/// Why a body cannot be archived (logged, and the delivery dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadEvent {
    #[error("body of {size} bytes is over EVENTS_MAX_BODY_BYTES ({max})")]
    TooLarge { size: usize, max: usize },
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("body is not a JSON event: {0}")]
    NotAnEvent(String),
    #[error("{field}: {problem}")]
    BadField {
        field: &'static str,
        problem: String,
    },
}

/// The fields the archive reads; the rest of the body is kept as text.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    room_id: u64,
    instance: String,
    at: String,
    #[serde(default)]
    seq: Option<u64>,
}

/// The archived form of `body`, or why it has none. `max_body_bytes` is
/// `EVENTS_MAX_BODY_BYTES`.
pub fn parse(body: &[u8], max_body_bytes: usize) -> Result<Event, BadEvent> {
    if body.len() > max_body_bytes {
        return Err(BadEvent::TooLarge {
            size: body.len(),
            max: max_body_bytes,
        });
    }
    let text = std::str::from_utf8(body).map_err(|_| BadEvent::NotUtf8)?;
    let envelope: Envelope =
        serde_json::from_str(text).map_err(|e| BadEvent::NotAnEvent(e.to_string()))?;
    let bad = |field, problem: &str| BadEvent::BadField {
        field,
        problem: problem.to_owned(),
    };
    check_text(&envelope.id, MAX_ID_CHARS).map_err(|problem| bad("id", &problem))?;
    check_text(&envelope.kind, MAX_TYPE_CHARS).map_err(|problem| bad("type", &problem))?;
    check_text(&envelope.instance, MAX_ID_CHARS).map_err(|problem| bad("instance", &problem))?;
    let at = DateTime::parse_from_rfc3339(&envelope.at)
        .map_err(|_| bad("at", "must be an RFC 3339 time"))?
        .naive_utc()
        .trunc_subsecs(3);
    // DATETIME's range; an event from before year 1000 is a bad clock.
    if !(1000..=9999).contains(&at.year()) {
        return Err(bad("at", "must be a time between the years 1000 and 9999"));
    }
    Ok(Event {
        id: envelope.id,
        kind: envelope.kind,
        room_id: envelope.room_id,
        instance: envelope.instance,
        at,
        seq: envelope.seq,
        body: text.to_owned(),
    })
}

/// 1 to `max` characters, none of them control characters.
fn check_text(value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const MAX: usize = 1 << 20;

    fn sent() -> serde_json::Value {
        json!({
            "type": "message.sent",
            "id": "chat-1-abc-17",
            "roomId": 7,
            "instance": "chat-1-abc",
            "at": "2026-11-24T10:00:02.123456+01:00",
            "seq": 17,
            "message": {"id": 42, "roomId": 7, "nickname": "alice", "content": "hi",
                        "sentAt": "2026-11-24T09:00:02Z"}
        })
    }

    fn parsed(body: &serde_json::Value) -> Result<Event, BadEvent> {
        parse(body.to_string().as_bytes(), MAX)
    }

    #[test]
    fn a_documented_event_becomes_its_row() {
        let body = sent().to_string();
        let event = parse(body.as_bytes(), MAX).unwrap();
        assert_eq!(event.id, "chat-1-abc-17");
        assert_eq!(event.kind, "message.sent");
        assert_eq!((event.room_id, event.seq), (7, Some(17)));
        assert_eq!(event.instance, "chat-1-abc");
        assert_eq!(
            event.at.to_string(),
            "2026-11-24 09:00:02.123",
            "UTC, to the millisecond"
        );
        assert_eq!(event.body, body, "kept byte for byte");
    }

    #[test]
    fn seq_is_optional() {
        let mut body = sent();
        body.as_object_mut().unwrap().remove("seq");
        assert_eq!(parsed(&body).unwrap().seq, None);
        body["seq"] = json!(null);
        assert_eq!(parsed(&body).unwrap().seq, None);
        body["seq"] = json!(-1);
        assert!(matches!(parsed(&body), Err(BadEvent::NotAnEvent(_))));
    }

    #[test]
    fn missing_or_mistyped_fields_are_named() {
        for field in ["id", "type", "roomId", "instance", "at"] {
            let mut body = sent();
            body.as_object_mut().unwrap().remove(field);
            match parsed(&body) {
                Err(BadEvent::NotAnEvent(why)) => assert!(why.contains(field), "{why}"),
                other => panic!("without {field}: {other:?}"),
            }
        }
        for (field, value) in [
            ("roomId", json!("7")),
            ("roomId", json!(7.5)),
            ("roomId", json!(-7)),
            ("id", json!(17)),
            ("at", json!(1_700_000_000)),
        ] {
            let mut body = sent();
            body[field] = value.clone();
            assert!(
                matches!(parsed(&body), Err(BadEvent::NotAnEvent(_))),
                "{field}={value}"
            );
        }
    }

    #[test]
    fn values_that_would_not_fit_their_column_are_refused() {
        for (field, value, name) in [
            ("id", json!(""), "id"),
            ("id", json!("x".repeat(256)), "id"),
            ("type", json!("t".repeat(65)), "type"),
            ("instance", json!("a\nb"), "instance"),
            ("at", json!("yesterday"), "at"),
            ("at", json!("0999-12-31T23:59:59Z"), "at"),
        ] {
            let mut body = sent();
            body[field] = value;
            match parsed(&body) {
                Err(BadEvent::BadField { field, .. }) => assert_eq!(field, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        let mut body = sent();
        body["id"] = json!("é".repeat(255));
        assert!(parsed(&body).is_ok(), "255 characters, not bytes");
    }

    #[test]
    fn bodies_that_are_not_events_are_refused() {
        assert_eq!(parse(b"\xff\xfe", MAX), Err(BadEvent::NotUtf8));
        for body in [&b"not json"[..], b"[1,2]", b"\"text\"", b"{}", b""] {
            assert!(
                matches!(parse(body, MAX), Err(BadEvent::NotAnEvent(_))),
                "{body:?}"
            );
        }
        let body = sent().to_string();
        assert_eq!(
            parse(body.as_bytes(), body.len() - 1),
            Err(BadEvent::TooLarge {
                size: body.len(),
                max: body.len() - 1
            })
        );
    }

    proptest! {
        /// Whatever arrives, `parse` answers (no panic), and what it
        /// accepts fits the row.
        #[test]
        fn any_body_is_accepted_only_if_it_fits(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(event) = parse(&body, 256) {
                prop_assert!(event.body.len() <= 256);
                prop_assert!(!event.id.is_empty() && event.id.chars().count() <= MAX_ID_CHARS);
            }
        }

        #[test]
        fn any_valid_event_round_trips(
            id in "[a-zA-Z0-9:-]{1,255}",
            room in any::<u64>(),
            seq in proptest::option::of(any::<u64>()),
            millis in 0i64..253_402_300_799_000,
        ) {
            let at = DateTime::from_timestamp_millis(millis).unwrap();
            let body = json!({"type": "member.joined", "id": id, "roomId": room,
                              "instance": "i", "at": at.to_rfc3339(), "seq": seq});
            let event = parsed(&body).unwrap();
            prop_assert_eq!(event.id, id);
            prop_assert_eq!((event.room_id, event.seq), (room, seq));
            prop_assert_eq!(event.at, at.naive_utc());
        }
    }
}
