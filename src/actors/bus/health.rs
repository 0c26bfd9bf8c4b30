//! [`BusHealth`]: the bridge's state as `/health` reads it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Whether the bus is up, and what it rejected, readable from any thread
/// (`/health`).
#[derive(Debug, Clone, Default)]
pub struct BusHealth {
    up: Arc<AtomicBool>,
    rejected: Arc<AtomicU64>,
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

    pub(super) fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
}
