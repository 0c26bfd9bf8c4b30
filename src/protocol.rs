//! The WebSocket wire format, in one place: client frames are parsed here
//! into typed, validated commands, and every server frame is serialized
//! here. Nothing else in the server touches raw JSON of the socket.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::domain::{
    Member, Message, MessageContent, Nickname, Room, RoomId, RoomTitle, TextLimits,
};
use crate::error::ChatError;

/// Longest `ref` a client may attach; it is echoed back, so it is bounded.
pub const MAX_REF_CHARS: usize = 256;

/// What a client asked for, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand {
    /// Create a room and join it.
    Create {
        title: RoomTitle,
        nickname: Nickname,
    },
    /// Join an existing room (leaving the current one first).
    Join { room_id: RoomId, nickname: Nickname },
    /// Say something in the current room.
    Chat { content: MessageContent },
    /// Leave the current room.
    Leave,
    /// Liveness check from the client.
    Ping,
}

/// A parsed client frame: the command and the `ref` to echo in the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFrame {
    pub reference: Option<String>,
    pub command: ClientCommand,
}

/// A frame that could not be parsed: the error to send, with the frame's
/// `ref` when it could still be read.
#[derive(Debug)]
pub struct RejectedFrame {
    pub reference: Option<String>,
    pub error: ChatError,
}

/// Parses one text frame. Malformed JSON is `invalid_json`; a non-object, a
/// missing or unknown `type` or a bad `ref` is `invalid_message`; missing or
/// ill-typed fields get the code of the field (`invalid_title`, ...).
pub fn parse_client_frame(text: &str, limits: &TextLimits) -> Result<ClientFrame, RejectedFrame> {
    let value: Value = serde_json::from_str(text).map_err(|e| RejectedFrame {
        reference: None,
        error: ChatError::InvalidJson(e.to_string()),
    })?;
    let Value::Object(obj) = value else {
        return Err(RejectedFrame {
            reference: None,
            error: ChatError::InvalidMessage("a frame must be a JSON object".into()),
        });
    };
    let reference = match obj.get("ref") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if r.chars().count() <= MAX_REF_CHARS => Some(r.clone()),
        Some(_) => {
            return Err(RejectedFrame {
                reference: None,
                error: ChatError::InvalidMessage(format!(
                    "\"ref\" must be a string of at most {MAX_REF_CHARS} characters"
                )),
            })
        }
    };
    let reject = |error| RejectedFrame {
        reference: reference.clone(),
        error,
    };
    let command = match obj.get("type").and_then(Value::as_str) {
        Some("create") => ClientCommand::Create {
            title: RoomTitle::parse(
                text_field(&obj, "title", ChatError::InvalidTitle).map_err(reject)?,
                limits,
            )
            .map_err(reject)?,
            nickname: nickname_field(&obj, limits).map_err(reject)?,
        },
        Some("join") => ClientCommand::Join {
            room_id: room_id_field(&obj).map_err(reject)?,
            nickname: nickname_field(&obj, limits).map_err(reject)?,
        },
        Some("chat") => ClientCommand::Chat {
            content: MessageContent::parse(
                text_field(&obj, "content", ChatError::InvalidContent).map_err(reject)?,
                limits,
            )
            .map_err(reject)?,
        },
        Some("leave") => ClientCommand::Leave,
        Some("ping") => ClientCommand::Ping,
        Some(other) => {
            let shown: String = other.chars().take(40).collect();
            return Err(reject(ChatError::InvalidMessage(format!(
                "unknown type \"{shown}\""
            ))));
        }
        None => {
            return Err(reject(ChatError::InvalidMessage(
                "missing or non-string \"type\"".into(),
            )))
        }
    };
    Ok(ClientFrame { reference, command })
}

fn text_field<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
    error: fn(String) -> ChatError,
) -> Result<&'a str, ChatError> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(error(format!("{name} must be a string"))),
        None => Err(error(format!("{name} is required"))),
    }
}

fn nickname_field(obj: &Map<String, Value>, limits: &TextLimits) -> Result<Nickname, ChatError> {
    Nickname::parse(
        text_field(obj, "nickname", ChatError::InvalidNickname)?,
        limits,
    )
}

fn room_id_field(obj: &Map<String, Value>) -> Result<RoomId, ChatError> {
    match obj.get("roomId") {
        Some(Value::Number(n)) => n.as_u64().map(RoomId::new).ok_or_else(|| {
            ChatError::InvalidParameter("roomId must be a non-negative integer".into())
        }),
        Some(_) => Err(ChatError::InvalidParameter(
            "roomId must be a non-negative integer".into(),
        )),
        None => Err(ChatError::InvalidParameter("roomId is required".into())),
    }
}

/// Every frame the server sends. Serialized once per event and shared by
/// all receivers (see `room.rs`), so building one is the only JSON work a
/// broadcast does.
#[derive(Debug, Serialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ServerFrame<'a> {
    Joined {
        room: &'a Room,
        you: &'a Member,
        members: &'a [&'a Member],
        history: &'a [&'a Message],
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    Message {
        message: &'a Message,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    MemberJoined {
        room_id: RoomId,
        member: &'a Member,
    },
    MemberLeft {
        room_id: RoomId,
        nickname: &'a str,
    },
    Left {
        room_id: RoomId,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// A chat the store has not confirmed within `STORE_TIMEOUT_MS` (its
    /// `COMMIT` got no answer yet). Not an error: it may still be stored.
    /// The final answer follows: the `message` echo or an `error`.
    Pending {
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
}

impl ServerFrame<'_> {
    /// The frame as text, ready to hand to any number of sockets.
    pub fn to_text(&self) -> ByteString {
        // Serializing these plain structs cannot fail (no maps with
        // non-string keys, no custom serializers that error).
        match serde_json::to_string(self) {
            Ok(s) => ByteString::from(s),
            Err(e) => {
                log::error!("server frame failed to serialize: {e}");
                ByteString::from_static(
                    r#"{"type":"error","code":"unavailable","message":"internal error"}"#,
                )
            }
        }
    }
}

impl ServerFrame<'_> {
    /// The frame as one WebSocket text frame, ready for the socket.
    pub fn to_wire(&self) -> Bytes {
        crate::ws::frame::text(&self.to_text())
    }

    /// Appends the frame, as a WebSocket text frame, to a batch that will be
    /// written to many sockets.
    pub fn append_wire(&self, batch: &mut BytesMut) {
        crate::ws::frame::encode_into(
            batch,
            crate::ws::frame::OpCode::Text,
            self.to_text().as_bytes(),
        );
    }
}

/// What a `pending` frame says.
pub const PENDING_TEXT: &str = "the database has not confirmed this message yet; \
     you will get its echo if it was stored, or an error if it was not";

/// A `pending` frame echoing `reference`, as wire bytes.
pub fn pending_frame(reference: Option<&str>) -> Bytes {
    ServerFrame::Pending {
        message: PENDING_TEXT,
        reference,
    }
    .to_wire()
}

/// An `error` frame for `error`, echoing `reference`, as wire bytes.
pub fn error_frame(error: &ChatError, reference: Option<&str>) -> Bytes {
    ServerFrame::Error {
        code: error.code(),
        message: &error.client_message(),
        reference,
    }
    .to_wire()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClientFrame, RejectedFrame> {
        parse_client_frame(text, &TextLimits::default())
    }

    fn code(text: &str) -> &'static str {
        parse(text).unwrap_err().error.code()
    }

    #[test]
    fn parses_every_command() {
        let f =
            parse(r#"{"type":"create","title":" lobby ","nickname":"ann","ref":"r1"}"#).unwrap();
        assert_eq!(f.reference.as_deref(), Some("r1"));
        match f.command {
            ClientCommand::Create { title, nickname } => {
                assert_eq!(title.as_str(), "lobby");
                assert_eq!(nickname.as_str(), "ann");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(r#"{"type":"join","roomId":7,"nickname":"bo"}"#)
                .unwrap()
                .command,
            ClientCommand::Join { room_id, .. } if room_id == RoomId::new(7)
        ));
        assert!(matches!(
            parse(r#"{"type":"chat","content":"hi\nthere"}"#)
                .unwrap()
                .command,
            ClientCommand::Chat { .. }
        ));
        assert_eq!(
            parse(r#"{"type":"leave"}"#).unwrap().command,
            ClientCommand::Leave
        );
        assert_eq!(
            parse(r#"{"type":"ping"}"#).unwrap().command,
            ClientCommand::Ping
        );
    }

    #[test]
    fn bad_frames_get_the_documented_codes() {
        assert_eq!(code("{not json"), "invalid_json");
        assert_eq!(code("[1,2]"), "invalid_message");
        assert_eq!(code("\"chat\""), "invalid_message");
        assert_eq!(code(r#"{"content":"x"}"#), "invalid_message");
        assert_eq!(code(r#"{"type":"shout"}"#), "invalid_message");
        assert_eq!(code(r#"{"type":5}"#), "invalid_message");
        assert_eq!(code(r#"{"type":"ping","ref":12}"#), "invalid_message");
        assert_eq!(
            code(r#"{"type":"join","roomId":"7","nickname":"a"}"#),
            "invalid_parameter"
        );
        assert_eq!(
            code(r#"{"type":"join","roomId":-1,"nickname":"a"}"#),
            "invalid_parameter"
        );
        assert_eq!(
            code(r#"{"type":"join","roomId":1.5,"nickname":"a"}"#),
            "invalid_parameter"
        );
        assert_eq!(code(r#"{"type":"join","roomId":1}"#), "invalid_nickname");
        assert_eq!(
            code(r#"{"type":"join","roomId":1,"nickname":7}"#),
            "invalid_nickname"
        );
        assert_eq!(code(r#"{"type":"create","nickname":"a"}"#), "invalid_title");
        assert_eq!(code(r#"{"type":"chat","content":""}"#), "invalid_content");
        assert_eq!(code(r#"{"type":"chat","content":null}"#), "invalid_content");
        let long = "x".repeat(1001);
        assert_eq!(
            code(&format!(r#"{{"type":"chat","content":"{long}"}}"#)),
            "invalid_content"
        );
    }

    #[test]
    fn errors_keep_the_ref_when_it_was_readable() {
        let r = parse(r#"{"type":"chat","content":"","ref":"abc"}"#).unwrap_err();
        assert_eq!(r.reference.as_deref(), Some("abc"));
    }

    #[test]
    fn server_frames_match_the_contract() {
        let t = chrono::DateTime::from_timestamp(0, 0).unwrap();
        let msg = Message {
            id: crate::domain::MessageSeq::new(1),
            room_id: RoomId::new(2),
            nickname: "a".into(),
            content: "<b>".into(),
            sent_at: t,
        };
        let text = ServerFrame::Message {
            message: &msg,
            reference: Some("r"),
        }
        .to_text();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["ref"], "r");
        assert_eq!(v["message"]["roomId"], 2);
        let text = ServerFrame::MemberLeft {
            room_id: RoomId::new(3),
            nickname: "bo",
        }
        .to_text();
        assert_eq!(
            &*text,
            r#"{"type":"memberLeft","roomId":3,"nickname":"bo"}"#
        );
        let text = ServerFrame::Pong { reference: None }.to_text();
        assert_eq!(&*text, r#"{"type":"pong"}"#);
        let text = ServerFrame::Pending {
            message: PENDING_TEXT,
            reference: Some("c1"),
        }
        .to_text();
        assert_eq!(
            &*text,
            r#"{"type":"pending","message":"the database has not confirmed this message yet; you will get its echo if it was stored, or an error if it was not","ref":"c1"}"#
        );
    }

    mod properties {
        use proptest::prelude::*;
        use serde_json::json;

        use super::super::*;

        /// Text rich in what the validation trims, normalizes or refuses.
        fn field_text() -> impl Strategy<Value = String> {
            let tricky = prop::sample::select(vec![
                'a', 'Z', ' ', '\t', '\n', '\r', '\u{0}', '\u{85}', '\u{A0}', '\u{301}',
                '\u{200B}', '\u{202E}', '\u{FEFF}', '\u{FB2C}', '\u{1100}', '\u{1161}', '"', '\\',
                '😀',
            ]);
            prop::collection::vec(prop_oneof![3 => tricky, 1 => any::<char>()], 0..60)
                .prop_map(|cs| cs.into_iter().collect())
        }

        /// Any JSON value for a field: usually a string, sometimes another
        /// type or absent (null).
        fn field_value() -> impl Strategy<Value = Value> {
            prop_oneof![
                6 => field_text().prop_map(Value::String),
                1 => any::<i64>().prop_map(Value::from),
                1 => any::<u64>().prop_map(Value::from),
                1 => any::<f64>().prop_map(|f| json!(f)),
                1 => any::<bool>().prop_map(Value::Bool),
                1 => Just(Value::Null),
            ]
        }

        /// Objects shaped like client frames, with fields of any type.
        fn frame_like() -> impl Strategy<Value = String> {
            (
                prop::sample::select(vec!["create", "join", "chat", "leave", "ping", "shout", ""]),
                prop::collection::vec(
                    (
                        prop::sample::select(vec![
                            "title", "nickname", "content", "roomId", "ref", "type",
                        ]),
                        field_value(),
                    ),
                    0..5,
                ),
            )
                .prop_map(|(kind, fields)| {
                    let mut obj = serde_json::Map::new();
                    obj.insert("type".into(), Value::from(kind));
                    for (k, v) in fields {
                        obj.insert(k.into(), v);
                    }
                    Value::Object(obj).to_string()
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Never panics; an accepted frame's fields obey the limits and
            /// it re-serializes to the same frame; a refusal has a
            /// documented code (the checks of `fuzzing::parse_client_frame`).
            #[test]
            fn arbitrary_text_keeps_the_parser_invariants(text in any::<String>()) {
                crate::fuzzing::parse_client_frame(&text);
            }

            #[test]
            fn frame_like_objects_keep_the_parser_invariants(text in frame_like()) {
                crate::fuzzing::parse_client_frame(&text);
            }

            /// Chats of any text: accepted exactly when the text, normalized
            /// and trimmed, is 1..=limit characters without forbidden
            /// controls, and then within the limit.
            #[test]
            fn chats_obey_the_content_limit(content in field_text(), max in 1usize..20) {
                let limits = TextLimits { title: max, nickname: max, content: max };
                let text = json!({"type": "chat", "content": content}).to_string();
                let parsed = parse_client_frame(&text, &limits);
                let expected = MessageContent::parse(&content, &limits);
                match (parsed, expected) {
                    (Ok(f), Ok(c)) => {
                        prop_assert_eq!(&f.command, &ClientCommand::Chat { content: c.clone() });
                        prop_assert!(c.as_str().chars().count() <= max);
                    }
                    (Err(r), Err(e)) => prop_assert_eq!(r.error.code(), e.code()),
                    (p, e) => prop_assert!(false, "frame {:?} but content {:?}", p.is_ok(), e),
                }
            }
        }
    }
}
