//! WebSocket text frames from clients (JSON commands). The invariants are
//! checked in `chat_server::fuzzing::parse_client_frame`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Text frames reach the parser only once they are valid UTF-8.
    if let Ok(text) = std::str::from_utf8(data) {
        chat_server::fuzzing::parse_client_frame(text);
    }
});
