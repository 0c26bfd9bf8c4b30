//! Bounded waiting, shared by the test crates (`api`, `cluster`,
//! `bench_tool`): [`within`] bounds one future, [`eventually`] polls a
//! condition until it holds. Neither lets a test hang: each panics naming
//! what did not happen in time.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How long [`eventually`] sleeps between two checks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Awaits `fut`; panics naming `what` if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {limit:?}"))
}

/// What one check of [`eventually`] found: `true` or `Ok(())` once the
/// condition holds; `false`, or `Err(what was seen instead)`, until then.
pub trait Check {
    fn holds(self) -> Result<(), String>;
}

impl Check for bool {
    fn holds(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err(String::new())
        }
    }
}

impl Check for Result<(), String> {
    fn holds(self) -> Result<(), String> {
        self
    }
}

/// Runs `check` every [`POLL_INTERVAL`] until it holds and returns how long
/// that took; panics naming `what` (and what the last check saw, when it
/// says) once `limit` has passed.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Check,
{
    let start = Instant::now();
    loop {
        let seen = match check().await.holds() {
            Ok(()) => return start.elapsed(),
            Err(seen) => seen,
        };
        if start.elapsed() >= limit {
            if seen.is_empty() {
                panic!("{what}: still not true after {limit:?}");
            }
            panic!("{what}: still not true after {limit:?}; last seen: {seen}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
