//! What a session actor may reach, and nothing more: the store, the room
//! manager, its limits, the registry of open sessions, the connection caps,
//! the room-creation limiter and the metrics. Built once by `startup` and
//! shared by every session; the HTTP layer keeps its own state (templates,
//! settings, health) in `http`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;

use super::open_sessions::OpenSessions;
use super::room_manager::RoomManager;
use crate::connections::ConnectionLimiter;
use crate::domain::{SocketId, TextLimits};
use crate::rate_limit::KeyedLimiter;
use crate::store::SharedStore;
use crate::telemetry::Metrics;
use crate::ws::TransportLimits;

/// The per-connection limits a session enforces.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Longest title, nickname and message.
    pub text: TextLimits,
    /// Client frames per second (sustained) and in a burst.
    pub frames_per_sec: f64,
    pub frames_burst: f64,
    /// Frames over the rate a connection may send before it is closed
    /// with 1008; the allowance refills at a tenth of this per second.
    pub rate_violations: f64,
    /// `join`/`create` frames per second (sustained) and in a burst.
    pub joins_per_sec: f64,
    pub joins_burst: f64,
    /// Events the session's mailbox holds before a room treats the session
    /// as a slow consumer.
    pub queue_capacity: usize,
    /// The store's own bound on one call; a session waits a small multiple
    /// of it for a room's answer before giving up.
    pub store_timeout: Duration,
    /// Frame size, queued bytes and silence bounds of the socket itself.
    pub transport: TransportLimits,
    /// How long a connection may stay out of every room before it is
    /// closed (checked when the heartbeat visits the connection).
    pub lobby_idle: Duration,
    /// How often the heartbeat visits each connection
    /// (`HEARTBEAT_INTERVAL_SECS`).
    pub heartbeat_interval: Duration,
}

/// Shared by every session of the process.
pub struct SessionContext {
    /// This process's name; every socket id starts with it.
    pub instance_id: String,
    pub store: SharedStore,
    pub manager: Addr<RoomManager>,
    pub limits: SessionLimits,
    /// Rooms a client address may create (shared with `POST /api/rooms`).
    pub room_create_limiter: KeyedLimiter<IpAddr>,
    /// Every open session, for the heartbeat and for shutdown.
    pub sessions: Arc<OpenSessions>,
    /// Open connections, in all and per address, under their caps: each
    /// session holds one slot of it.
    pub connections: ConnectionLimiter,
    /// Addresses whose connection was just closed for flooding: one token
    /// each, refilled after `WS_FLOOD_COOLDOWN_SECS`; an address without
    /// its token is refused new WebSockets (`http::ws`), so a flooder that
    /// reconnects costs a refused handshake, not another flood.
    pub flood_penalties: KeyedLimiter<IpAddr>,
    /// The process's metrics (chats received, error answers...).
    pub metrics: Arc<Metrics>,
    next_number: AtomicU64,
}

impl SessionContext {
    // Each argument is a distinct part `startup` builds once and shares.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        instance_id: String,
        store: SharedStore,
        manager: Addr<RoomManager>,
        limits: SessionLimits,
        room_create_limiter: KeyedLimiter<IpAddr>,
        connections: ConnectionLimiter,
        flood_cooldown: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let sessions = Arc::new(OpenSessions::new(limits.heartbeat_interval));
        SessionContext {
            instance_id,
            store,
            manager,
            limits,
            room_create_limiter,
            sessions,
            connections,
            flood_penalties: KeyedLimiter::new(1.0 / flood_cooldown.as_secs_f64().max(1e-3), 1.0),
            metrics,
            next_number: AtomicU64::new(1),
        }
    }

    /// A fresh connection's number in this process and its cluster-wide id.
    pub fn next_socket(&self) -> (u64, SocketId) {
        let number = self.next_number.fetch_add(1, Ordering::Relaxed);
        (number, SocketId::new(&self.instance_id, number))
    }
}
