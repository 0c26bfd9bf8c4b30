//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz) and for the
//! property tests: each feeds arbitrary input to one of the crate's parsers
//! of untrusted bytes and panics when an invariant is broken, so "no panic"
//! means "no crash and every invariant held". Not part of the server's API.
//!
//! - [`decode_frames`]: the RFC 6455 decoder ([`crate::ws::frame::decode`]).
//! - [`parse_client_frame`]: WebSocket text frames
//!   ([`crate::protocol::parse_client_frame`]).
//! - [`parse_rest_query`], [`parse_create_body`]: the REST API's path, query
//!   and body parsing ([`crate::http::rooms`]).

use bytes::BytesMut;
use serde_json::{json, Value};

use crate::domain::TextLimits;
use crate::error::ChatError;
use crate::http::rooms;
use crate::protocol::{self, ClientCommand, ClientFrame, MAX_REF_CHARS};
use crate::ws::frame::{self, FrameError, OpCode};

/// Largest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;

/// Longest header a frame can have: 2 bytes, 8 of length, 4 of mask.
const MAX_HEADER: usize = 14;

/// Feeds `data` to the decoder as a socket would, in chunks whose sizes
/// follow from `split_seed` (0: all at once), decoding after each chunk
/// until the decoder wants more bytes or refuses the input, and checks that:
/// - a frame's payload is at most `max_payload` bytes (125 for control
///   frames), control frames are final, and the frame is exactly the bytes
///   it was decoded from (header, mask, unmasked payload): the decoder
///   consumed those bytes and no others;
/// - waiting for more bytes consumes nothing;
/// - the read buffer never grows beyond what the input put in it or what
///   one frame within the limit needs (an oversized length is refused from
///   the header, before anything is reserved for it);
/// - a refusal is the right one: `TooLarge` only for a data frame declared
///   over the limit.
///
/// Returns the number of frames decoded.
pub fn decode_frames(data: &[u8], max_payload: usize, split_seed: u8) -> usize {
    let mut buf = BytesMut::new();
    // Where the front of `buf` is in `data`.
    let mut pos = 0;
    let mut fed = 0;
    let mut frames = 0;
    // The most the input ever had in the buffer at once.
    let mut peak = 0;
    let mut rng = u32::from(split_seed) | 1;
    let one_frame = MAX_HEADER + max_payload.max(MAX_CONTROL);
    while fed < data.len() {
        let chunk = if split_seed == 0 {
            data.len()
        } else {
            // xorshift: chunks of 1..=2*seed bytes.
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            1 + (rng as usize) % (2 * usize::from(split_seed))
        };
        let end = (fed + chunk).min(data.len());
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
        peak = peak.max(buf.len());
        loop {
            let before = buf.len();
            assert_eq!(&buf[..], &data[pos..fed], "the buffer is the unread input");
            match frame::decode(&mut buf, max_payload) {
                Ok(Some(f)) => {
                    let consumed = before - buf.len();
                    check_frame(&data[pos..pos + consumed], &f, max_payload);
                    pos += consumed;
                    frames += 1;
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "waiting must not consume input");
                    break;
                }
                Err(e) => {
                    check_refusal(&data[pos..fed], &e, max_payload);
                    return frames;
                }
            }
            // Bytes' growth policy may double an allocation; anything
            // beyond that would be the decoder reserving for a frame over
            // the limit.
            let bound = 4 * one_frame.max(peak) + 64;
            assert!(
                buf.capacity() <= bound,
                "read buffer of {} bytes (bound {bound})",
                buf.capacity()
            );
        }
    }
    frames
}

/// The frame's header as written: (fin, opcode bits, declared length,
/// header length including the mask).
fn header_of(raw: &[u8]) -> (bool, u8, u64, usize) {
    let (fin, bits) = (raw[0] & 0x80 != 0, raw[0] & 0x0F);
    match raw[1] & 0x7F {
        126 => (
            fin,
            bits,
            u64::from(u16::from_be_bytes([raw[2], raw[3]])),
            8,
        ),
        127 => {
            let mut eight = [0u8; 8];
            eight.copy_from_slice(&raw[2..10]);
            (fin, bits, u64::from_be_bytes(eight), 14)
        }
        n => (fin, bits, u64::from(n), 6),
    }
}

fn check_frame(raw: &[u8], f: &frame::InboundFrame, max_payload: usize) {
    let (fin, bits, declared, header) = header_of(raw);
    assert_eq!(raw[0] & 0x70, 0, "reserved bits accepted");
    assert_ne!(raw[1] & 0x80, 0, "unmasked frame accepted");
    assert_eq!(f.fin, fin);
    let control = matches!(f.opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
    let expected = match bits {
        0x0 => OpCode::Continuation,
        0x1 => OpCode::Text,
        0x2 => OpCode::Binary,
        0x8 => OpCode::Close,
        0x9 => OpCode::Ping,
        0xA => OpCode::Pong,
        other => panic!("opcode {other:#x} accepted"),
    };
    assert_eq!(f.opcode, expected);
    if control {
        assert!(f.fin, "fragmented control frame accepted");
        assert!(f.payload.len() <= MAX_CONTROL, "control payload over 125");
    } else {
        assert!(
            f.payload.len() <= max_payload,
            "payload of {} bytes over the limit {max_payload}",
            f.payload.len()
        );
    }
    assert_eq!(
        declared,
        f.payload.len() as u64,
        "payload of another length"
    );
    assert_eq!(raw.len(), header + f.payload.len(), "consumed other bytes");
    let mask = &raw[header - 4..header];
    let unmasked = raw[header..]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4]);
    assert!(
        unmasked.eq(f.payload.iter().copied()),
        "payload not unmasked"
    );
}

fn check_refusal(raw: &[u8], e: &FrameError, max_payload: usize) {
    assert!(raw.len() >= 2, "refused before a header arrived");
    if let FrameError::TooLarge(n) = e {
        let (_, bits, declared, _) = header_of(raw);
        assert!(bits & 0x8 == 0, "TooLarge for a control frame");
        assert_eq!(*n, declared);
        assert!(declared > max_payload as u64, "TooLarge within the limit");
    }
}

/// Tight limits, so that the fuzzer reaches the length checks with short
/// inputs too.
const TIGHT: TextLimits = TextLimits {
    title: 3,
    nickname: 2,
    content: 5,
};

/// The error codes a client frame may be refused with.
const FRAME_CODES: &[&str] = &[
    "invalid_json",
    "invalid_message",
    "invalid_title",
    "invalid_nickname",
    "invalid_content",
    "invalid_parameter",
];

/// Parses `text` as a client frame with the default limits and with tight
/// ones, and checks that an accepted frame's text fields obey the limits
/// (non-empty, trimmed, NFC, within the length, no forbidden characters),
/// that the frame re-serialized is accepted again as the same frame, and
/// that a refusal has a documented code and a bounded `ref` and message.
pub fn parse_client_frame(text: &str) {
    for limits in [TextLimits::default(), TIGHT] {
        match protocol::parse_client_frame(text, &limits) {
            Ok(f) => {
                check_client_frame(&f, &limits);
                let again = serialize_client_frame(&f);
                match protocol::parse_client_frame(&again, &limits) {
                    Ok(g) => assert_eq!(f, g, "{again}"),
                    Err(r) => panic!("{again} refused: {}", r.error),
                }
            }
            Err(r) => {
                if let Some(reference) = &r.reference {
                    assert!(reference.chars().count() <= MAX_REF_CHARS);
                }
                check_error(&r.error, FRAME_CODES);
            }
        }
    }
}

fn check_client_frame(f: &ClientFrame, limits: &TextLimits) {
    if let Some(reference) = &f.reference {
        assert!(reference.chars().count() <= MAX_REF_CHARS, "ref too long");
    }
    match &f.command {
        ClientCommand::Create { title, nickname } => {
            check_text(title.as_str(), limits.title, false);
            check_text(nickname.as_str(), limits.nickname, false);
        }
        ClientCommand::Join { nickname, .. } => {
            check_text(nickname.as_str(), limits.nickname, false);
        }
        ClientCommand::Chat { content } => check_text(content.as_str(), limits.content, true),
        ClientCommand::Leave | ClientCommand::Ping => {}
    }
}

/// A client frame as a client would write it.
fn serialize_client_frame(f: &ClientFrame) -> String {
    let mut v = match &f.command {
        ClientCommand::Create { title, nickname } => {
            json!({"type": "create", "title": title.as_str(), "nickname": nickname.as_str()})
        }
        ClientCommand::Join { room_id, nickname } => {
            json!({"type": "join", "roomId": room_id.get(), "nickname": nickname.as_str()})
        }
        ClientCommand::Chat { content } => json!({"type": "chat", "content": content.as_str()}),
        ClientCommand::Leave => json!({"type": "leave"}),
        ClientCommand::Ping => json!({"type": "ping"}),
    };
    if let Some(reference) = &f.reference {
        v["ref"] = Value::String(reference.clone());
    }
    v.to_string()
}

/// What a validated text promises (see `domain::validated`).
fn check_text(s: &str, max: usize, is_content: bool) {
    let len = s.chars().count();
    assert!(
        len >= 1 && len <= max,
        "{len} characters, limit {max}: {s:?}"
    );
    assert_eq!(s, s.trim(), "not trimmed: {s:?}");
    assert!(unicode_normalization::is_nfc(s), "not NFC: {s:?}");
    for c in s.chars() {
        let control = matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}');
        if control {
            assert!(is_content && (c == '\n' || c == '\t'), "control in {s:?}");
        }
    }
}

/// A refusal has one of `codes` and a message of bounded size: error
/// messages quote at most a bounded part of the input.
fn check_error(e: &ChatError, codes: &[&str]) {
    assert!(codes.contains(&e.code()), "unexpected code {}", e.code());
    let message = e.client_message();
    assert!(message.len() <= 512, "message of {} bytes", message.len());
}

/// Parses `q` as the query of `GET /api/rooms/{id}/messages` and as a path
/// segment (room id), and checks that decoding never lengthens the text and
/// that a count or id is accepted exactly when it is written as a
/// non-negative integer that fits 64 bits, with that value.
pub fn parse_rest_query(q: &str) {
    let pairs = rooms::form_pairs(q);
    let decoded: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(decoded <= q.len(), "decoding lengthened the query");
    for (key, value) in pairs.iter().filter(|(k, _)| k == "after" || k == "limit") {
        let parsed = rooms::parse_count(key, value);
        assert_eq!(parsed.as_ref().ok().copied(), integer_written(value));
        if let Err(e) = parsed {
            check_error(&e, &["invalid_parameter"]);
        }
    }
    // The last `after` and `limit` win; a bad one refuses the query.
    let last = |name: &str| pairs.iter().rev().find(|(k, _)| k == name);
    let bad = pairs
        .iter()
        .any(|(k, v)| (k == "after" || k == "limit") && integer_written(v).is_none());
    match rooms::parse_messages_query(q) {
        Ok(parsed) => {
            assert!(!bad, "a bad count was accepted in {q:?}");
            let after = last("after").map_or(Some(0), |(_, v)| integer_written(v));
            let limit = last("limit").map_or(Some(50), |(_, v)| integer_written(v));
            assert_eq!(Some(parsed.after.get()), after);
            assert_eq!(Some(parsed.limit as u64), limit);
        }
        Err(e) => {
            assert!(bad, "{q:?} refused: {e}");
            check_error(&e, &["invalid_parameter"]);
        }
    }
    match rooms::parse_room_id(q) {
        Ok(id) => assert_eq!(Some(id.get()), integer_written(q)),
        Err(e) => {
            assert_eq!(integer_written(q), None, "{q:?} refused");
            check_error(&e, &["invalid_parameter"]);
        }
    }
}

/// The value of `s` if it is a decimal integer (an optional `+`, then
/// digits) that fits a u64: computed digit by digit, not with `parse`.
fn integer_written(s: &str) -> Option<u64> {
    let digits = s.strip_prefix('+').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.bytes().try_fold(0u64, |n, b| {
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Parses `body` as the body of `POST /api/rooms` with the default and with
/// tight limits, and checks that an accepted title obeys the limits and that
/// `{"title": <it>}` is accepted again as the same title, and that a refusal
/// is `invalid_json` or `invalid_title` with a bounded message.
pub fn parse_create_body(body: &[u8]) {
    for limits in [TextLimits::default(), TIGHT] {
        match rooms::parse_create_body(body, &limits) {
            Ok(title) => {
                check_text(title.as_str(), limits.title, false);
                let again = json!({ "title": title.as_str() }).to_string();
                let reparsed = rooms::parse_create_body(again.as_bytes(), &limits);
                assert_eq!(reparsed.ok().as_ref(), Some(&title), "{again}");
            }
            Err(e) => check_error(&e, &["invalid_json", "invalid_title"]),
        }
    }
}
