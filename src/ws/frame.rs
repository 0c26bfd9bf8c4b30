//! RFC 6455 framing, server side: decoding the (masked) frames a client
//! sends and encoding the (unmasked) frames the server sends.
//!
//! Encoding writes header and payload into one buffer, so a room can encode
//! a batch of frames once and hand the same bytes to every member's socket.
//! Decoding checks a frame's declared length against the limit as soon as
//! the header has arrived, so an oversized frame is refused before its
//! payload is buffered.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Frame types (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Close codes the server uses (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: the conversation is over.
    Normal,
    /// 1001: the server is shutting down.
    Away,
    /// 1002: the client broke the framing rules.
    Protocol,
    /// 1003: a frame type the contract does not use (binary).
    Unsupported,
    /// 1007: a text message that is not UTF-8.
    Invalid,
    /// 1008: policy, here a client too slow to read its frames.
    Policy,
    /// 1009: a frame or message over `MAX_FRAME_BYTES`.
    Size,
    /// 1012: the server lost the connection's state; reconnect and rejoin.
    Restart,
}

impl CloseCode {
    /// The number on the wire.
    pub fn number(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::Away => 1001,
            CloseCode::Protocol => 1002,
            CloseCode::Unsupported => 1003,
            CloseCode::Invalid => 1007,
            CloseCode::Policy => 1008,
            CloseCode::Size => 1009,
            CloseCode::Restart => 1012,
        }
    }
}

/// Largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// One frame from the client, unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct InboundFrame {
    /// Last frame of its message (fragmented messages end with one).
    pub fin: bool,
    pub opcode: OpCode,
    /// Already unmasked.
    pub payload: BytesMut,
}

/// Why the client's bytes are not a valid frame.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Close with 1009.
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(u64),
    /// Close with 1002.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// Close with 1007: text that is not UTF-8.
    #[error("invalid data: {0}")]
    Invalid(&'static str),
}

/// Takes one whole frame off the front of `buf`, or returns `Ok(None)` when
/// more bytes are needed. `max_payload` bounds a data frame's payload.
pub fn decode(buf: &mut BytesMut, max_payload: usize) -> Result<Option<InboundFrame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol(
            "reserved bits set without an extension",
        ));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("client frames must be masked"));
    }
    let (len, mut header) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut eight = [0u8; 8];
            eight.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(eight), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() {
        if !fin {
            return Err(FrameError::Protocol("fragmented control frame"));
        }
        if len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(FrameError::Protocol("control frame over 125 bytes"));
        }
    } else if len > max_payload as u64 {
        return Err(FrameError::TooLarge(len));
    }
    // Bounded by `max_payload` (or 125) above, so this fits a usize.
    let len = len as usize;
    if buf.len() < header + 4 + len {
        buf.reserve(header + 4 + len - buf.len());
        return Ok(None);
    }
    let mask = [
        buf[header],
        buf[header + 1],
        buf[header + 2],
        buf[header + 3],
    ];
    header += 4;
    buf.advance(header);
    let mut payload = buf.split_to(len);
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
    Ok(Some(InboundFrame {
        fin,
        opcode,
        payload,
    }))
}

/// Appends one unmasked, final frame to `out`.
pub fn encode_into(out: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
    let len = payload.len();
    out.reserve(len + 10);
    out.put_u8(0x80 | opcode.bits());
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
}

/// One text frame, ready for the socket.
pub fn text(payload: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    encode_into(&mut out, OpCode::Text, payload.as_bytes());
    out.freeze()
}

/// A control frame (ping or pong); `payload` is cut to 125 bytes.
pub fn control(opcode: OpCode, payload: &[u8]) -> Bytes {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    let mut out = BytesMut::with_capacity(payload.len() + 2);
    encode_into(&mut out, opcode, payload);
    out.freeze()
}

/// A close frame with `code` and a reason cut to fit a control frame (on a
/// character boundary, so it stays valid UTF-8).
pub fn close(code: CloseCode, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.number().to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    control(OpCode::Close, &payload)
}

/// The close code in a close frame payload, if it has one.
pub fn close_code_of(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

/// Checks a client's close frame payload (RFC 6455 §5.5.1, §7.4): empty, or
/// a code a peer may send followed by a UTF-8 reason.
pub fn check_close_payload(payload: &[u8]) -> Result<(), FrameError> {
    if payload.is_empty() {
        return Ok(());
    }
    let Some(code) = close_code_of(payload) else {
        return Err(FrameError::Protocol("close payload of one byte"));
    };
    let sendable = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
    if !sendable {
        return Err(FrameError::Protocol("close code a peer may not send"));
    }
    std::str::from_utf8(&payload[2..])
        .map(|_| ())
        .map_err(|_| FrameError::Invalid("close reason is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame as a browser would send it.
    fn masked(first: u8, payload: &[u8]) -> BytesMut {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = BytesMut::new();
        out.put_u8(first);
        let len = payload.len();
        if len < 126 {
            out.put_u8(0x80 | len as u8);
        } else if len <= 65535 {
            out.put_u8(0x80 | 126);
            out.put_u16(len as u16);
        } else {
            out.put_u8(0x80 | 127);
            out.put_u64(len as u64);
        }
        out.put_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn decodes_masked_frames_of_every_length_form() {
        for len in [0usize, 5, 125, 126, 200, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut buf = masked(0x81, &payload);
            buf.extend_from_slice(&masked(0x89, b"p"));
            let f = decode(&mut buf, 1 << 20).unwrap().unwrap();
            assert_eq!((f.fin, f.opcode), (true, OpCode::Text));
            assert_eq!(&f.payload[..], &payload[..], "length {len}");
            let ping = decode(&mut buf, 1 << 20).unwrap().unwrap();
            assert_eq!((ping.opcode, &ping.payload[..]), (OpCode::Ping, &b"p"[..]));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn waits_for_the_rest_of_a_frame_byte_by_byte() {
        let whole = masked(0x81, &[b'x'; 300]);
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            assert_eq!(
                decode(&mut buf, 1000).unwrap(),
                None,
                "decoded early at {i}"
            );
            buf.put_u8(*byte);
        }
        assert_eq!(decode(&mut buf, 1000).unwrap().unwrap().payload.len(), 300);
    }

    #[test]
    fn refuses_an_oversized_frame_from_its_header_alone() {
        let mut buf = masked(0x81, &[b'x'; 2000]);
        buf.truncate(4);
        assert_eq!(decode(&mut buf, 1000), Err(FrameError::TooLarge(2000)));
    }

    #[test]
    fn refuses_frames_that_break_the_rules() {
        let unmasked = &mut BytesMut::from(&[0x81u8, 0x01, b'x'][..]);
        assert!(matches!(decode(unmasked, 10), Err(FrameError::Protocol(_))));
        assert!(matches!(
            decode(&mut masked(0xC1, b"x"), 10),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            decode(&mut masked(0x83, b"x"), 10),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            decode(&mut masked(0x09, b"x"), 10),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            decode(&mut masked(0x89, &[0; 126]), 1000),
            Err(FrameError::Protocol(_))
        ));
    }

    #[test]
    fn encodes_unmasked_frames() {
        assert_eq!(&text("hi")[..], &[0x81, 2, b'h', b'i']);
        let long = "y".repeat(300);
        let t = text(&long);
        assert_eq!(&t[..4], &[0x81, 126, 1, 44]);
        assert_eq!(t.len(), 304);
        let huge = "z".repeat(70_000);
        let t = text(&huge);
        assert_eq!(t[1], 127);
        assert_eq!(t.len(), 70_010);
        assert_eq!(&control(OpCode::Pong, b"ab")[..], &[0x8A, 2, b'a', b'b']);
    }

    #[test]
    fn client_close_payloads_are_checked() {
        assert_eq!(check_close_payload(b""), Ok(()));
        assert_eq!(check_close_payload(&[0x03, 0xE8]), Ok(()));
        assert_eq!(check_close_payload(b"\x0f\xa0bye"), Ok(()));
        assert!(matches!(
            check_close_payload(&[0x03]),
            Err(FrameError::Protocol(_))
        ));
        for code in [999u16, 1004, 1005, 1006, 1015, 2000, 5000] {
            assert!(
                matches!(
                    check_close_payload(&code.to_be_bytes()),
                    Err(FrameError::Protocol(_))
                ),
                "{code}"
            );
        }
        assert!(matches!(
            check_close_payload(&[0x03, 0xE8, 0xff]),
            Err(FrameError::Invalid(_))
        ));
    }

    #[test]
    fn close_frames_carry_the_code_and_a_utf8_reason_that_fits() {
        let c = close(CloseCode::Policy, "slow");
        assert_eq!(&c[..], &[0x88, 6, 0x03, 0xF0, b's', b'l', b'o', b'w']);
        let c = close(CloseCode::Away, &"é".repeat(100));
        assert!(c.len() - 2 <= 125);
        assert!(std::str::from_utf8(&c[4..]).is_ok());
        assert_eq!(close_code_of(&c[2..]), Some(1001));
        assert_eq!(close_code_of(b""), None);
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// One frame a client may send: a data frame of any size (each
        /// length form), final or not, or a control frame (final, at most
        /// 125 bytes).
        fn any_frame() -> impl Strategy<Value = (OpCode, bool, Vec<u8>)> {
            let data_len = prop_oneof![
                4 => 0usize..=130,
                2 => 120usize..=300,
                1 => 65_530usize..=65_540,
                1 => 65_536usize..=66_000,
            ];
            let data = (
                prop::sample::select(vec![OpCode::Continuation, OpCode::Text, OpCode::Binary]),
                any::<bool>(),
                data_len.prop_flat_map(|n| prop::collection::vec(any::<u8>(), n)),
            );
            let control = (
                prop::sample::select(vec![OpCode::Close, OpCode::Ping, OpCode::Pong]),
                Just(true),
                prop::collection::vec(any::<u8>(), 0..=125),
            );
            prop_oneof![3 => data, 1 => control]
        }

        /// The frame as a client sends it: the server's encoder, then the
        /// FIN bit as asked and the payload masked with `key`.
        fn client_bytes(opcode: OpCode, fin: bool, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
            let mut out = BytesMut::new();
            encode_into(&mut out, opcode, payload);
            let header = out.len() - payload.len();
            let mut bytes = out.to_vec();
            if !fin {
                bytes[0] &= 0x7F;
            }
            bytes[1] |= 0x80;
            let masked: Vec<u8> = bytes
                .split_off(header)
                .into_iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            bytes.extend_from_slice(&key);
            bytes.extend(masked);
            bytes
        }

        /// Feeds `stream` cut at `cuts` (positions, any order), decoding
        /// after each piece until more bytes are needed.
        fn decode_in_pieces(
            stream: &[u8],
            cuts: &[usize],
            max: usize,
        ) -> Result<Vec<InboundFrame>, FrameError> {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let (mut buf, mut fed, mut frames) = (BytesMut::new(), 0, Vec::new());
            for cut in cuts {
                buf.extend_from_slice(&stream[fed..cut]);
                fed = cut;
                while let Some(f) = decode(&mut buf, max)? {
                    frames.push(f);
                }
            }
            assert!(buf.is_empty(), "{} bytes left over", buf.len());
            Ok(frames)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn frames_round_trip_whatever_the_split(
                frames in prop::collection::vec((any_frame(), any::<[u8; 4]>()), 1..5),
                cuts in prop::collection::vec(any::<usize>(), 0..8),
            ) {
                let mut stream = Vec::new();
                for ((opcode, fin, payload), key) in &frames {
                    stream.extend(client_bytes(*opcode, *fin, payload, *key));
                }
                let decoded = decode_in_pieces(&stream, &cuts, 70_000).unwrap();
                prop_assert_eq!(decoded.len(), frames.len());
                for (f, ((opcode, fin, payload), _)) in decoded.iter().zip(&frames) {
                    prop_assert_eq!((f.opcode, f.fin), (*opcode, *fin));
                    prop_assert_eq!(&f.payload[..], &payload[..]);
                }
            }

            #[test]
            fn a_frame_over_the_limit_is_refused_at_its_header(
                ((opcode, fin, payload), key) in (any_frame(), any::<[u8; 4]>()),
                max in 0usize..400,
                cuts in prop::collection::vec(any::<usize>(), 0..4),
            ) {
                let stream = client_bytes(opcode, fin, &payload, key);
                let result = decode_in_pieces(&stream, &cuts, max);
                if opcode.is_control() || payload.len() <= max {
                    prop_assert_eq!(result.unwrap().len(), 1);
                } else {
                    prop_assert_eq!(result.unwrap_err(), FrameError::TooLarge(payload.len() as u64));
                }
            }

            #[test]
            fn unmasked_frames_are_refused(
                (opcode, _, payload) in any_frame(),
            ) {
                let mut out = BytesMut::new();
                encode_into(&mut out, opcode, &payload);
                prop_assert!(matches!(decode(&mut out, 70_000), Err(FrameError::Protocol(_))));
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Never panics, never returns a payload over the limit, and
            /// every frame is exactly the bytes it consumed (the checks of
            /// `fuzzing::decode_frames`).
            #[test]
            fn arbitrary_bytes_keep_the_decoder_invariants(
                data in prop::collection::vec(any::<u8>(), 0..600),
                max in 0usize..300,
                seed in any::<u8>(),
            ) {
                crate::fuzzing::decode_frames(&data, max, seed);
            }

            /// The same, with inputs that are mostly well-formed headers.
            #[test]
            fn plausible_streams_keep_the_decoder_invariants(
                frames in prop::collection::vec((any::<u8>(), 0u8..=255, any::<[u8; 4]>(), prop::collection::vec(any::<u8>(), 0..40)), 0..6),
                max in 0usize..300,
                seed in any::<u8>(),
            ) {
                let mut data = Vec::new();
                for (b0, b1, key, rest) in frames {
                    data.push(b0 & 0x8F);
                    data.push(b1 | 0x80);
                    if b1 & 0x7F == 126 {
                        data.extend_from_slice(&[0, 130]);
                    }
                    data.extend_from_slice(&key);
                    data.extend(rest);
                }
                crate::fuzzing::decode_frames(&data, max, seed);
            }
        }
    }
}
