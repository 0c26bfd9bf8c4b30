//! REST query strings (`after=&limit=`) and path segments (room ids). The
//! invariants are checked in `chat_server::fuzzing::parse_rest_query`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // actix hands the handlers the query as a `&str`.
    if let Ok(q) = std::str::from_utf8(data) {
        chat_server::fuzzing::parse_rest_query(q);
    }
});
