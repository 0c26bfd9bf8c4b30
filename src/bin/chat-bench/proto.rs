//! The wire contract as the bench needs it: building client frames by hand
//! and pulling single fields out of server frames with byte scans instead
//! of parsing whole JSON trees (a fan-out receives millions of frames).
//!
//! Chat content carries the measurement: `p<tag>t<nanos> xxx...` where
//! `tag` is the phase (0 = not measured) and `nanos` the monotonic send
//! time since the bench started. Nicknames and contents are ours, so they
//! never contain quotes or backslashes that would need JSON escapes.

use std::io::Write;

use crate::ws::{find, find_from};

/// `{"type":"chat","content":"p<tag>t<nanos> xx..","ref":"s<tag>"}`, with
/// the content padded with `x` to `size` characters.
pub fn chat_frame(out: &mut Vec<u8>, tag: u8, sent_ns: u64, size: usize) {
    out.clear();
    out.extend_from_slice(br#"{"type":"chat","content":""#);
    let content_start = out.len();
    let _ = write!(out, "p{tag}t{sent_ns} ");
    while out.len() - content_start < size {
        out.push(b'x');
    }
    let _ = write!(out, r#"","ref":"s{tag}"}}"#);
}

/// `{"type":"join","roomId":..,"nickname":"..","ref":".."}`.
pub fn join_frame(room_id: u64, nickname: &str, reference: &str) -> Vec<u8> {
    format!(r#"{{"type":"join","roomId":{room_id},"nickname":"{nickname}","ref":"{reference}"}}"#)
        .into_bytes()
}

/// `{"type":"create","title":"..","nickname":"..","ref":".."}`.
pub fn create_frame(title: &str, nickname: &str, reference: &str) -> Vec<u8> {
    format!(r#"{{"type":"create","title":"{title}","nickname":"{nickname}","ref":"{reference}"}}"#)
        .into_bytes()
}

/// `{"type":"leave","ref":".."}`.
pub fn leave_frame(reference: &str) -> Vec<u8> {
    format!(r#"{{"type":"leave","ref":"{reference}"}}"#).into_bytes()
}

/// `{"type":"ping","ref":".."}`.
pub fn ping_frame(reference: &str) -> Vec<u8> {
    format!(r#"{{"type":"ping","ref":"{reference}"}}"#).into_bytes()
}

/// The raw value of string field `"key":"..."` (first occurrence at or
/// after `from`), up to the next unescaped quote.
pub fn str_field<'a>(p: &'a [u8], key: &[u8], from: usize) -> Option<&'a [u8]> {
    let at = find_key(p, key, from, b'"')?;
    let rest = &p[at..];
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            b'\\' => i += 2,
            b'"' => return Some(&rest[..i]),
            _ => i += 1,
        }
    }
    None
}

/// The unsigned integer field `"key":123` (first occurrence at or after
/// `from`).
pub fn u64_field(p: &[u8], key: &[u8], from: usize) -> Option<u64> {
    let at = find_key(p, key, from, b':')?;
    parse_u64(&p[at..]).map(|(v, _)| v)
}

/// Finds `"key":` followed by `open` (`"` for strings) and returns the
/// index just past it (for `:`, just past the colon and any spaces).
fn find_key(p: &[u8], key: &[u8], from: usize, open: u8) -> Option<usize> {
    let mut at = from;
    loop {
        let i = find_from(p, key, at)?;
        let mut j = i + key.len();
        // key is given as `"name"`; allow `: ` spacing from other servers.
        while j < p.len() && p[j] == b' ' {
            j += 1;
        }
        if p.get(j) == Some(&b':') {
            j += 1;
            while j < p.len() && p[j] == b' ' {
                j += 1;
            }
            if open == b':' {
                return Some(j);
            }
            if p.get(j) == Some(&open) {
                return Some(j + 1);
            }
        }
        at = i + 1;
    }
}

/// Leading decimal digits of `s`: value and how many bytes they took.
pub fn parse_u64(s: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        n += 1;
    }
    (n > 0).then_some((v, n))
}

/// The frame's `type`, as raw bytes.
pub fn frame_type(p: &[u8]) -> Option<&[u8]> {
    str_field(p, br#""type""#, 0)
}

/// What a `message` frame tells the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageInfo {
    pub id: Option<u64>,
    /// (tag, send nanos) when the content is one of ours.
    pub stamp: Option<(u8, u64)>,
}

/// How this project's server lays out a `message` frame; other layouts go
/// through the generic scan.
const MESSAGE_PREFIX: &[u8] = br#"{"type":"message","message":{"id":"#;

/// Reads the message id and our send stamp from a `message` frame.
///
/// Fast path: the layout this project's server writes
/// (`{"type":"message","message":{"id":N,"roomId":N,"nickname":"..","content":"..`),
/// walked once from the front. Anything else falls back to key searches:
/// the first `"id":` after `"message"` (the message's own; `roomId` does
/// not match a case-sensitive `"id"`) and the first `"content":"`.
pub fn message_info(p: &[u8]) -> MessageInfo {
    if let Some(info) = message_info_fast(p) {
        return info;
    }
    let from = find(p, br#""message""#).map_or(0, |i| i + 9);
    let id = u64_field(p, br#""id""#, from);
    let stamp = find_key(p, br#""content""#, from, b'"').and_then(|at| parse_stamp(&p[at..]));
    MessageInfo { id, stamp }
}

fn message_info_fast(p: &[u8]) -> Option<MessageInfo> {
    let rest = p.strip_prefix(MESSAGE_PREFIX)?;
    let (id, n) = parse_u64(rest)?;
    let rest = rest[n..].strip_prefix(br#","roomId":"#)?;
    let (_, n) = parse_u64(rest)?;
    let rest = rest[n..].strip_prefix(br#","nickname":""#)?;
    // Nicknames may contain escaped quotes; skip to the unescaped one.
    let mut i = 0;
    loop {
        match *rest.get(i)? {
            b'\\' => i += 2,
            b'"' => break,
            _ => i += 1,
        }
    }
    let content = rest[i + 1..].strip_prefix(br#","content":""#)?;
    Some(MessageInfo {
        id: Some(id),
        stamp: parse_stamp(content),
    })
}

/// `p<tag>t<nanos>...` → (tag, nanos).
pub fn parse_stamp(content: &[u8]) -> Option<(u8, u64)> {
    if content.len() < 4 || content[0] != b'p' || content[2] != b't' {
        return None;
    }
    let tag = content[1].checked_sub(b'0').filter(|t| *t <= 9)?;
    parse_u64(&content[3..]).map(|(t, _)| (tag, t))
}

/// `s<tag>` refs of our chats → the tag.
pub fn chat_ref_tag(p: &[u8]) -> Option<u8> {
    let r = str_field(p, br#""ref""#, 0)?;
    match r {
        [b's', d] if d.is_ascii_digit() => Some(d - b'0'),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_frames_are_valid_json_with_padded_content() {
        let mut out = Vec::new();
        chat_frame(&mut out, 2, 123_456_789, 40);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "chat");
        assert_eq!(v["ref"], "s2");
        let content = v["content"].as_str().unwrap();
        assert_eq!(content.len(), 40);
        assert!(content.starts_with("p2t123456789 x"));
        assert_eq!(parse_stamp(content.as_bytes()), Some((2, 123_456_789)));
        // A size smaller than the stamp keeps the stamp whole.
        chat_frame(&mut out, 1, 5, 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["content"], "p1t5 ");
        for f in [
            join_frame(7, "b1", "j"),
            create_frame("bench", "b0", "c"),
            leave_frame("l"),
            ping_frame("k"),
        ] {
            assert!(serde_json::from_slice::<serde_json::Value>(&f).is_ok());
        }
    }

    #[test]
    fn message_frames_yield_id_and_stamp() {
        let f = br#"{"type":"message","message":{"id":42,"roomId":7,"nickname":"b1","content":"p1t999 xx","sentAt":"2026-11-24T10:00:02Z"},"ref":"s1"}"#;
        assert_eq!(frame_type(f), Some(&b"message"[..]));
        assert_eq!(
            message_info(f),
            MessageInfo {
                id: Some(42),
                stamp: Some((1, 999))
            }
        );
        assert_eq!(chat_ref_tag(f), Some(1));
        assert!(message_info_fast(f).is_some(), "this server's layout");
        // An escaped quote in a nickname does not end it early.
        let q = br#"{"type":"message","message":{"id":5,"roomId":7,"nickname":"a\",\"content\":\"x","content":"p2t77","sentAt":"x"}}"#;
        assert_eq!(
            message_info(q),
            MessageInfo {
                id: Some(5),
                stamp: Some((2, 77))
            }
        );
        assert!(message_info_fast(q).is_some());
        // Field order and spacing of another server.
        let g = br#"{ "message": { "roomId": 7, "content": "hello \"x\"", "id": 3 }, "type": "message" }"#;
        assert_eq!(frame_type(g), Some(&b"message"[..]));
        assert_eq!(
            message_info(g),
            MessageInfo {
                id: Some(3),
                stamp: None
            }
        );
        assert_eq!(chat_ref_tag(g), None);
    }

    #[test]
    fn fields_of_other_frames() {
        let e = br#"{"type":"error","code":"rate_limited","message":"slow down","ref":"s2"}"#;
        assert_eq!(frame_type(e), Some(&b"error"[..]));
        assert_eq!(str_field(e, br#""code""#, 0), Some(&b"rate_limited"[..]));
        assert_eq!(chat_ref_tag(e), Some(2));
        let j = br#"{"type":"joined","room":{"id":12,"title":"t","memberCount":1},"ref":"j"}"#;
        assert_eq!(u64_field(j, br#""id""#, 0), Some(12));
        assert_eq!(str_field(j, br#""ref""#, 0), Some(&b"j"[..]));
        assert_eq!(u64_field(j, br#""nope""#, 0), None);
        assert_eq!(parse_u64(b"18446744073709551616"), None, "overflow");
        assert_eq!(parse_stamp(b"hello"), None);
        assert_eq!(parse_stamp(b"pxt1"), None);
    }
}
