//! The WebSocket frame decoder: arbitrary bytes, split at arbitrary points,
//! under an arbitrary payload limit. The invariants are checked in
//! `chat_server::fuzzing::decode_frames`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Two bytes of limit (0..=65535), one of split seed, then the stream.
    if data.len() < 3 {
        return;
    }
    let max_payload = usize::from(u16::from_le_bytes([data[0], data[1]]));
    chat_server::fuzzing::decode_frames(&data[3..], max_payload, data[2]);
});
