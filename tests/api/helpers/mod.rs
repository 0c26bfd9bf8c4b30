//! Test harness: start the real server on a random port, in either store
//! mode, and talk to it over the wire with typed helpers.
//!
//! - [`server`]: `TestApp`, `TestDatabase`, `spawn_app*` and REST calls;
//! - [`ws_client`]: `WsClient`, `Incoming`, `ClientThread`;
//! - [`assertions`]: checks of and values taken from JSON answers.
//!
//! Everything is re-exported here. The `api`, `cluster` and `bench_tool`
//! test crates all include this module and each uses only part of it,
//! hence the module-wide `dead_code` allowance.

#![allow(dead_code)]

mod assertions;
mod server;
mod ws_client;

// Not every crate uses something of each part.
#[allow(unused_imports)]
pub use assertions::*;
pub use server::*;
#[allow(unused_imports)]
pub use ws_client::*;

use std::time::Duration;

/// Upper bound for a whole concurrent scenario (`join_all` of many clients).
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs a test body once per store mode, as two `#[actix_rt::test]`s.
#[macro_export]
macro_rules! both_stores {
    ($name:ident, |$app:ident| $body:block) => {
        $crate::both_stores_with!($name, |_| {}, |$app| $body);
    };
}

/// Like `both_stores!`, with settings adjusted by `$tweak`
/// (a `|settings: &mut Settings| ...` closure).
#[macro_export]
macro_rules! both_stores_with {
    ($name:ident, $tweak:expr, |$app:ident| $body:block) => {
        $crate::store_tests!($name, $tweak, |$app| $body, memory: Memory, mysql: MySql);
    };
}

/// A memory-mode-only test (for store-independent behavior), with settings
/// adjusted by `$tweak`; named `$name::memory` like the two-mode tests so
/// `cargo test --test api memory` selects it.
#[macro_export]
macro_rules! memory_only_with {
    ($name:ident, $tweak:expr, |$app:ident| $body:block) => {
        $crate::store_tests!($name, $tweak, |$app| $body, memory: Memory);
    };
}

/// The expansion of the macros above: a module `$name` with one
/// `#[actix_rt::test]` per `$test: $mode`, each running `$body` against a
/// fresh server in that store mode.
#[doc(hidden)]
#[macro_export]
macro_rules! store_tests {
    ($name:ident, $tweak:expr, |$app:ident| $body:block, $($test:ident: $mode:ident),+) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[actix_rt::test]
                async fn $test() {
                    let $app = $crate::helpers::spawn_app_with(
                        $crate::helpers::StoreMode::$mode,
                        $tweak,
                    )
                    .await;
                    $body
                }
            )+
        }
    };
}
