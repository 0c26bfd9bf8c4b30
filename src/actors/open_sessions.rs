//! The registry of this process's open WebSockets: the heartbeat ticks
//! every one of them, and shutdown closes each with 1001, including those in
//! no room.

use std::collections::HashMap;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use actix::WeakAddr;

use super::session::{ChatSession, SessionEvent};

/// Every open connection of this process, so that shutdown can close each
/// one with 1001, including those in no room. Weak: the registry never keeps
/// a session alive.
#[derive(Default)]
pub struct OpenSessions {
    open: Mutex<HashMap<u64, WeakAddr<ChatSession>>>,
}

impl OpenSessions {
    pub(super) fn insert(&self, number: u64, session: WeakAddr<ChatSession>) {
        if let Ok(mut open) = self.open.lock() {
            open.insert(number, session);
        }
    }

    pub(super) fn remove(&self, number: u64) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(&number);
        }
    }

    /// How many connections are open.
    pub fn count(&self) -> usize {
        self.open.lock().map_or(0, |open| open.len())
    }

    /// Sends `event` to every open connection.
    fn tell_all(&self, event: impl Fn() -> SessionEvent) {
        let sessions: Vec<WeakAddr<ChatSession>> = match self.open.lock() {
            Ok(open) => open.values().cloned().collect(),
            Err(_) => return,
        };
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
    /// (at most `wait`) for them to finish closing.
    pub async fn close_all(&self, wait: Duration) {
        self.tell_all(|| SessionEvent::ServerShutdown);
        let deadline = tokio::time::Instant::now() + wait;
        while self.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
