//! The body of `POST /api/rooms`, any bytes. The invariants are checked in
//! `chat_server::fuzzing::parse_create_body`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chat_server::fuzzing::parse_create_body(data);
});
