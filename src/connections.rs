//! How many WebSockets are open, in all and per client address, and the
//! caps on both. A handshake takes a [`ConnectionSlot`] before its `101` is
//! written; the slot lives in the connection's session actor and gives its
//! place back when dropped, however the connection ends (a close, a
//! timeout, an abrupt disconnect, a panic), so the counts cannot leak.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::error::ChatError;

/// The caps and the counts under them.
#[derive(Clone)]
pub struct ConnectionLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    max_total: usize,
    max_per_address: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Only addresses with at least one open connection.
    per_address: HashMap<IpAddr, usize>,
}

impl Inner {
    /// The counts stay consistent even if a holder panicked: every change
    /// is a single step.
    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One open connection's place; dropping it gives the place back.
pub struct ConnectionSlot {
    inner: Arc<Inner>,
    address: Option<IpAddr>,
}

impl ConnectionLimiter {
    /// At most `max_total` connections, and `max_per_address` from one
    /// address (a limit key: see `client_addr::limit_key`).
    pub fn new(max_total: usize, max_per_address: usize) -> Self {
        ConnectionLimiter {
            inner: Arc::new(Inner {
                max_total,
                max_per_address,
                counts: Mutex::new(Counts::default()),
            }),
        }
    }

    /// A place for a new connection from `address` (`None`: unknown, only
    /// the total applies), or the refusal to answer the handshake with:
    /// `TooManyConnections` (429) when the address holds its share,
    /// `ServerFull` (503) when the process does.
    pub fn try_acquire(&self, address: Option<IpAddr>) -> Result<ConnectionSlot, ChatError> {
        let mut counts = self.inner.counts();
        if let Some(ip) = address {
            if counts.per_address.get(&ip).copied().unwrap_or(0) >= self.inner.max_per_address {
                return Err(ChatError::TooManyConnections(self.inner.max_per_address));
            }
        }
        if counts.total >= self.inner.max_total {
            return Err(ChatError::ServerFull);
        }
        counts.total += 1;
        if let Some(ip) = address {
            *counts.per_address.entry(ip).or_default() += 1;
        }
        Ok(ConnectionSlot {
            inner: self.inner.clone(),
            address,
        })
    }

    /// Open connections in all (the `chat_connections_open` gauge).
    pub fn total(&self) -> usize {
        self.inner.counts().total
    }

    /// Open connections from `address`.
    #[cfg(test)]
    pub fn open_from(&self, address: IpAddr) -> usize {
        let counts = self.inner.counts();
        counts.per_address.get(&address).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.inner.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(ip) = self.address {
            if let Some(n) = counts.per_address.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.per_address.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn each_address_has_its_share_and_slots_come_back_on_drop() {
        let limiter = ConnectionLimiter::new(100, 2);
        let a1 = limiter.try_acquire(ip("10.0.0.1")).unwrap();
        let _a2 = limiter.try_acquire(ip("10.0.0.1")).unwrap();
        let e = limiter.try_acquire(ip("10.0.0.1")).err().unwrap();
        assert_eq!(e.code(), "too_many_connections");
        let _b = limiter.try_acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(limiter.total(), 3);
        drop(a1);
        assert_eq!(limiter.open_from(ip("10.0.0.1").unwrap()), 1);
        let _a3 = limiter.try_acquire(ip("10.0.0.1")).unwrap();
        assert_eq!(limiter.total(), 3);
    }

    #[test]
    fn the_total_is_capped_and_unknown_addresses_count_in_it() {
        let limiter = ConnectionLimiter::new(2, 10);
        let first = limiter.try_acquire(None).unwrap();
        let _second = limiter.try_acquire(ip("10.0.0.1")).unwrap();
        let e = limiter.try_acquire(ip("10.0.0.2")).err().unwrap();
        assert_eq!(e.code(), "server_full");
        drop(first);
        let _third = limiter.try_acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(limiter.total(), 2);
    }

    #[test]
    fn empty_addresses_are_forgotten() {
        let limiter = ConnectionLimiter::new(10, 10);
        let slots: Vec<_> = (0..3)
            .map(|_| limiter.try_acquire(ip("10.0.0.1")).unwrap())
            .collect();
        drop(slots);
        assert_eq!(limiter.total(), 0);
        assert!(limiter.inner.counts().per_address.is_empty());
    }
}
