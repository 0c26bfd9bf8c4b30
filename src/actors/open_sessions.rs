//! The registry of this process's open WebSockets: the heartbeat ticks
//! every one of them, and shutdown closes each with 1001, including those in
//! no room.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use actix::WeakAddr;

use super::session::{ChatSession, SessionEvent};

/// Every open connection of this process, so that shutdown can close each
/// one with 1001, including those in no room. Weak: the registry never keeps
/// a session alive.
#[derive(Default)]
pub struct OpenSessions {
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    open: HashMap<u64, WeakAddr<ChatSession>>,
    /// Set once shutdown begins ([`OpenSessions::stop_admitting`]), never
    /// cleared.
    closing: bool,
}

impl OpenSessions {
    /// The registry, also after a panic elsewhere poisoned its lock (what it
    /// holds stays consistent: every change is one map operation or one
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
        self.registry().open.remove(&number);
    }

    /// How many connections are open.
    pub fn count(&self) -> usize {
        self.registry().open.len()
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

    /// Sends `event` to every open connection.
    fn tell_all(&self, event: impl Fn() -> SessionEvent) {
        let sessions: Vec<WeakAddr<ChatSession>> = self.registry().open.values().cloned().collect();
        for session in sessions.iter().filter_map(WeakAddr::upgrade) {
            session.do_send(event());
        }
    }

    /// The process's one heartbeat ticker: every `interval`, each open
    /// connection pings its client or drops it if it has gone silent. It
    /// holds the registry weakly and ends once the registry is dropped.
    pub fn run_heartbeat(registry: Weak<OpenSessions>, interval: Duration) {
        actix::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                registry.tell_all(|| SessionEvent::Heartbeat);
            }
        });
    }

    /// Tells every open connection the server is going away, then waits
    /// (at most `wait`) for them to finish closing. From then on no session
    /// is registered (see [`OpenSessions::insert`]).
    pub async fn close_all(&self, wait: Duration) {
        self.stop_admitting();
        self.tell_all(|| SessionEvent::ServerShutdown);
        let deadline = tokio::time::Instant::now() + wait;
        while self.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
