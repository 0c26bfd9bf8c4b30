//! [`BusHealth`]: the bridge's state as `/health` reads it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Whether the bus is up, and what it rejected, readable from any thread
/// (`/health`).
#[derive(Debug, Clone, Default)]
pub struct BusHealth {
    up: Arc<AtomicBool>,
    rejected: Arc<AtomicU64>,
    presumed_dead: Arc<AtomicBool>,
}

impl BusHealth {
    /// True while subscribed and publishing.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub(super) fn set(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    /// Bus payloads received on a room channel that could not be decoded
    /// (malformed, or from another version), since start-up.
    pub fn rejected_payloads(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// True while this process, cut off from Redis for longer than the
    /// liveness TTL, presumes the others have reaped its members.
    pub fn presumed_dead(&self) -> bool {
        self.presumed_dead.load(Ordering::Relaxed)
    }

    pub(super) fn set_presumed_dead(&self, dead: bool) {
        self.presumed_dead.store(dead, Ordering::Relaxed);
    }

    pub(super) fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
}
