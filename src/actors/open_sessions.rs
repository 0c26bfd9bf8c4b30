//! The registry of this process's open WebSockets: the heartbeat visits
//! each of them once per interval, a slice at a time, and shutdown closes
//! each with 1001, including those in no room.

use std::sync::{Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use actix::WeakAddr;

use super::session::{ChatSession, SessionEvent};
use super::slices::Slices;

/// The longest the heartbeat ticker sleeps through empty slices.
const MAX_SLEEP: Duration = Duration::from_millis(250);

/// Every open connection of this process, so that the heartbeat reaches
/// each one and shutdown can close each one with 1001, including those in
/// no room. Weak: the registry never keeps a session alive.
pub struct OpenSessions {
    registry: Mutex<Registry>,
    /// The heartbeat interval: every socket is visited once per interval.
    interval: Duration,
}

struct Registry {
    open: Slices<WeakAddr<ChatSession>>,
    /// Set once shutdown begins ([`OpenSessions::stop_admitting`]), never
    /// cleared.
    closing: bool,
}

impl OpenSessions {
    /// A registry for a heartbeat every `interval`, in
    /// [`Slices::count_for`] slices.
    pub fn new(interval: Duration) -> Self {
        OpenSessions {
            registry: Mutex::new(Registry {
                open: Slices::new(Slices::<()>::count_for(interval)),
                closing: false,
            }),
            interval,
        }
    }

    /// The registry, also after a panic elsewhere poisoned its lock (what it
    /// holds stays consistent: every change is one slice operation or one
    /// flag): a poisoned lock must not make the server refuse every socket.
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a session that has just started; `false` (not registered)
    /// once shutdown has begun: the session must close itself with 1001.
    /// Invariant: every session either is in the registry when `close_all`
    /// tells them all, or is refused here (both under the one lock), so no
    /// socket outlives a shutdown without its 1001.
    #[must_use]
    pub(super) fn insert(&self, number: u64, session: WeakAddr<ChatSession>) -> bool {
        let mut registry = self.registry();
        if registry.closing {
            return false;
        }
        registry.open.insert(number, session);
        true
    }

    pub(super) fn remove(&self, number: u64) {
        self.registry().open.remove(number);
    }

    /// How many connections are open.
    pub fn count(&self) -> usize {
        self.registry().open.sockets()
    }

    /// Whether shutdown has begun: a WebSocket handshake is then refused
    /// (503 `unavailable`) instead of opening a socket that would be closed
    /// at once.
    pub fn is_closing(&self) -> bool {
        self.registry().closing
    }

    /// Shutdown has begun: no new session from now on (handshakes are
    /// refused, see [`OpenSessions::is_closing`]). Idempotent.
    pub fn stop_admitting(&self) {
        self.registry().closing = true;
    }

    /// The time between two heartbeat ticks: the interval over the number
    /// of slices.
    fn tick_period(&self) -> Duration {
        let slices = self.registry().open.count();
        self.interval / u32::try_from(slices).unwrap_or(u32::MAX)
    }

    /// The process's one heartbeat ticker: every `interval / slices`, the
    /// connections of the next slice ping their clients or drop them if
    /// they have gone silent. Each connection is visited once per interval,
    /// always at the same phase, and one tick tells at most
    /// `ceil(peak open / slices)` connections (see [`Slices`]): with the
    /// default 10 s, 2,000 slices every 5 ms, so 16,000 sockets cost 8
    /// pings per tick instead of 16,000 every 10 s. It holds the registry
    /// weakly and ends once the registry is dropped.
    pub fn run_heartbeat(registry: Weak<OpenSessions>) {
        let Some(period) = registry.upgrade().map(|r| r.tick_period()) else {
            return;
        };
        actix::spawn(async move {
            // Reused from tick to tick: no allocation once it has grown to
            // a slice.
            let mut due: Vec<WeakAddr<ChatSession>> = Vec::new();
            // Ticks to take at the next wake-up: this one, plus the empty
            // slices slept through before it. A socket that arrived in one
            // of those meanwhile is visited then, at most `MAX_SLEEP` late,
            // once; each tick still takes one slice, in turn, so every
            // socket is visited once per `n` ticks (see `Slices`).
            let mut ticks = 1u32;
            // The most ticks one sleep may span.
            let longest = (MAX_SLEEP.as_nanos() / period.as_nanos().max(1)) as usize;
            let mut wake = tokio::time::Instant::now() + period;
            loop {
                tokio::time::sleep_until(wake).await;
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                due.clear();
                let skip = {
                    let mut registry = registry.registry();
                    for _ in 0..ticks {
                        registry.open.next_slice(&mut due);
                    }
                    registry.open.empty_ahead(longest.saturating_sub(1))
                };
                for session in due.iter().filter_map(WeakAddr::upgrade) {
                    session.do_send(SessionEvent::Heartbeat);
                }
                ticks = u32::try_from(skip).unwrap_or(0) + 1;
                // A late wake-up delays the next ones (no burst of catch-up).
                wake = (wake + period * ticks).max(tokio::time::Instant::now());
            }
        });
    }

    /// Tells every open connection the server is going away, then waits
    /// (at most `wait`) for them to finish closing. No session is admitted
    /// from the moment it is called.
    pub async fn close_all(&self, wait: Duration) {
        let sessions = {
            let mut registry = self.registry();
            registry.closing = true;
            registry.open.all()
        };
        for session in sessions.iter().filter_map(WeakAddr::upgrade) {
            session.do_send(SessionEvent::ServerShutdown);
        }
        let deadline = tokio::time::Instant::now() + wait;
        while self.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
