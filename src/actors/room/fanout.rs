//! The fan-out: a batch of delivered messages framed once for every member.
//! Plain Rust, no actix: it decides which bytes each member's socket gets;
//! the room actor hands them over.
//!
//! Every member gets the same `Bytes` (the batch serialized and framed
//! once, shared by reference), except an author who gave a `ref`: its copy
//! has its own messages framed again with the `ref`, at their places in the
//! batch, so the direct reply stays in order with everything else.

use bytes::{Bytes, BytesMut};

use crate::domain::{Message, SocketId};
use crate::protocol::ServerFrame;

/// Who sent a message this process stored: the `ref` goes back to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    pub socket_id: SocketId,
    pub reference: Option<String>,
}

/// One batch, framed for every member.
#[derive(Debug)]
pub struct Fanout {
    /// The batch as every member without a `ref` in it sees it.
    shared: Bytes,
    /// Authors with a `ref`, each with its own copy of the batch.
    personal: Vec<(SocketId, Bytes)>,
}

impl Fanout {
    /// Frames `batch` (delivered messages in id order, each with its author
    /// when stored here).
    pub fn frame(batch: &[(Message, Option<Author>)]) -> Fanout {
        let mut shared = BytesMut::new();
        let mut bounds = Vec::with_capacity(batch.len());
        for (message, _) in batch {
            let start = shared.len();
            ServerFrame::Message {
                message,
                reference: None,
            }
            .append_wire(&mut shared);
            bounds.push(start..shared.len());
        }
        let shared = shared.freeze();
        // Each author with a `ref`: the positions of its messages, with the
        // frame carrying the `ref`.
        let mut own: Vec<(&SocketId, Vec<(usize, Bytes)>)> = Vec::new();
        for (i, (message, author)) in batch.iter().enumerate() {
            let Some((socket_id, reference)) = author
                .as_ref()
                .and_then(|a| Some((&a.socket_id, a.reference.as_deref()?)))
            else {
                continue;
            };
            let frame = ServerFrame::Message {
                message,
                reference: Some(reference),
            }
            .to_wire();
            match own.iter_mut().find(|(s, _)| *s == socket_id) {
                Some((_, frames)) => frames.push((i, frame)),
                None => own.push((socket_id, vec![(i, frame)])),
            }
        }
        let personal = own
            .into_iter()
            .map(|(socket_id, frames)| {
                let mut wire = BytesMut::with_capacity(shared.len() + 64 * frames.len());
                for (i, range) in bounds.iter().enumerate() {
                    match frames.iter().find(|(at, _)| *at == i) {
                        Some((_, mine)) => wire.extend_from_slice(mine),
                        None => wire.extend_from_slice(&shared[range.clone()]),
                    }
                }
                (socket_id.clone(), wire.freeze())
            })
            .collect();
        Fanout { shared, personal }
    }

    /// What `socket_id` gets: its own copy if it wrote a message with a
    /// `ref` here (handed out once), else the shared bytes.
    pub fn wire_for(&mut self, socket_id: &SocketId) -> Bytes {
        match self.personal.iter().position(|(s, _)| s == socket_id) {
            Some(i) => self.personal.swap_remove(i).1,
            None => self.shared.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageSeq, RoomId};
    use serde_json::Value;

    fn message(id: u64, nickname: &str) -> Message {
        Message {
            id: MessageSeq::new(id),
            room_id: RoomId::new(3),
            nickname: nickname.into(),
            content: format!("m{id}"),
            sent_at: chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap(),
        }
    }

    fn author(socket: &str, reference: Option<&str>) -> Option<Author> {
        Some(Author {
            socket_id: SocketId::from(socket),
            reference: reference.map(str::to_owned),
        })
    }

    /// Splits server-to-client wire bytes (unmasked text frames) into the
    /// JSON of each frame.
    fn frames(mut wire: &[u8]) -> Vec<Value> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            assert_eq!(wire[0], 0x81, "a final, unfragmented text frame");
            let (len, header) = match wire[1] {
                126 => (u16::from_be_bytes([wire[2], wire[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(wire[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            out.push(serde_json::from_slice(&wire[header..header + len]).unwrap());
            wire = &wire[header + len..];
        }
        out
    }

    /// Each frame as `(id, ref)`.
    fn seen(wire: &Bytes) -> Vec<(u64, Option<String>)> {
        frames(wire)
            .into_iter()
            .map(|f| {
                assert_eq!(f["type"], "message");
                (
                    f["message"]["id"].as_u64().unwrap(),
                    f["ref"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }

    #[test]
    fn members_share_one_copy_of_the_batch() {
        let batch = vec![(message(1, "ann"), None), (message(2, "bob"), None)];
        let mut fanout = Fanout::frame(&batch);
        let a = fanout.wire_for(&SocketId::from("i:1"));
        let b = fanout.wire_for(&SocketId::from("i:2"));
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes, not a copy");
        assert_eq!(seen(&a), vec![(1, None), (2, None)]);
        let first = &frames(&a)[0];
        assert_eq!(first["message"]["nickname"], "ann");
        assert_eq!(first["message"]["roomId"], 3);
    }

    #[test]
    fn an_author_with_a_ref_gets_its_echo_in_place() {
        let batch = vec![
            (message(1, "ann"), author("i:1", Some("a1"))),
            (message(2, "bob"), None),
            (message(3, "ann"), author("i:1", Some("a2"))),
            (message(4, "cy"), author("i:3", Some("c1"))),
            (message(5, "ann"), author("i:1", None)),
        ];
        let mut fanout = Fanout::frame(&batch);
        assert_eq!(
            seen(&fanout.wire_for(&SocketId::from("i:1"))),
            vec![
                (1, Some("a1".into())),
                (2, None),
                (3, Some("a2".into())),
                (4, None),
                (5, None)
            ]
        );
        assert_eq!(
            seen(&fanout.wire_for(&SocketId::from("i:3"))),
            vec![
                (1, None),
                (2, None),
                (3, None),
                (4, Some("c1".into())),
                (5, None)
            ]
        );
        let everyone: Vec<_> = (1..=5).map(|id| (id, None)).collect();
        assert_eq!(seen(&fanout.wire_for(&SocketId::from("i:2"))), everyone);
    }

    #[test]
    fn an_author_without_a_ref_gets_the_shared_copy() {
        let batch = vec![(message(1, "ann"), author("i:1", None))];
        let mut fanout = Fanout::frame(&batch);
        let own = fanout.wire_for(&SocketId::from("i:1"));
        let other = fanout.wire_for(&SocketId::from("i:2"));
        assert_eq!(own.as_ptr(), other.as_ptr());
    }

    #[test]
    fn long_messages_are_framed_with_extended_lengths() {
        let mut long = message(1, "ann");
        long.content = "x".repeat(70_000);
        let batch = vec![(long, author("i:1", Some("r"))), (message(2, "bob"), None)];
        let mut fanout = Fanout::frame(&batch);
        assert_eq!(
            seen(&fanout.wire_for(&SocketId::from("i:1"))),
            vec![(1, Some("r".into())), (2, None)]
        );
        assert_eq!(
            seen(&fanout.wire_for(&SocketId::from("i:9"))),
            vec![(1, None), (2, None)]
        );
    }
}
