//! Domain events published to RabbitMQ (with `AMQP_URL`): `room.created`,
//! `room.deleted`, `member.joined`, `member.left` and `message.sent` on the
//! durable topic exchange `chat.events` (docs/PROTOCOL.md "Domain events").
//!
//! How an event travels:
//! 1. The store records it **in the same atomic step as the change**: the
//!    MySQL store inserts a row into the `chatEventOutbox` table inside the
//!    change's transaction, after the room's `chatRoom` row is locked
//!    (`store/mysql/outbox.rs`); the memory store pushes it onto a
//!    [`queue::BoundedQueue`] under its own mutex. Its body ([`body`]) is
//!    built then, with its id and its place in the room's stream (`seq`).
//! 2. The relay ([`relay`]) publishes what is buffered, oldest first, with
//!    publisher confirms ([`publisher`]), and removes an event only once
//!    RabbitMQ confirmed it. With MySQL one process of the cluster relays:
//!    the one holding the relay's named lock.
//!
//! Invariants, and where they are enforced:
//! - **One room, one order, whichever process.** A room's changes are
//!   serialized by its `chatRoom` row lock (see `store/mysql/mod.rs`, "One
//!   lock order"), and each writes its outbox rows while holding it, so a
//!   room's outbox ids increase in commit order. The relay publishes in id
//!   order on one channel (RabbitMQ keeps a channel's order into a queue).
//! - **Chat never waits for RabbitMQ.** Recording an event is a row insert
//!   (MySQL) or a push under a mutex (memory); nothing in the chat path
//!   talks to RabbitMQ.
//! - **Bounded.** At most `EVENTS_BUFFER_MAX` events wait; beyond that the
//!   oldest are dropped and counted (`/health` `eventsDropped`). The seq
//!   gap tells a consumer how many of a room's events it missed.
//! - **At least once.** An event is removed from the buffer only after its
//!   confirm; a publish whose confirm was missed is repeated with the same
//!   body (the same `id`), so consumers deduplicate by `id`.

pub mod body;
pub(crate) mod publisher;
pub mod queue;
pub(crate) mod relay;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use self::body::{new_event_id, DomainEvent};
use self::queue::BoundedQueue;

/// The exchange every event goes to.
pub const EXCHANGE: &str = "chat.events";

/// The events settings (`AMQP_URL` and friends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    /// `AMQP_URL`: `amqp://user:pass@host:port/vhost`.
    pub url: String,
    /// `EVENTS_BUFFER_MAX`: events that may wait for RabbitMQ.
    pub buffer_max: usize,
    /// `EVENTS_POLL_MS`: how often the relay looks for events other
    /// processes recorded (its own wake it at once), and how often a
    /// process that does not relay tries to take over.
    pub poll: Duration,
    /// `EVENTS_PUBLISH_TIMEOUT_MS`: longest wait for a batch's confirms
    /// (and for connecting) before the connection is dropped and made
    /// anew.
    pub publish_timeout: Duration,
}

/// What the stores, the relay and `/health` share about events. One per
/// process.
#[derive(Debug)]
pub struct Events {
    instance: String,
    buffer_max: usize,
    /// True while connected to RabbitMQ with a confirming channel and the
    /// last publish (if any) was confirmed.
    connected: AtomicBool,
    /// True while the buffer is at its bound (events are being dropped).
    full: AtomicBool,
    /// Events this process dropped (buffer full), since it started.
    dropped: AtomicU64,
    /// Events waiting, as last seen by this process.
    buffered: AtomicU64,
    /// Wakes the relay after a change recorded events.
    wake: Notify,
    /// The memory store's buffer (`None` with MySQL: the outbox table is
    /// the buffer there).
    queue: Option<Mutex<BoundedQueue>>,
}

impl Events {
    /// Events recorded by `instance` into the MySQL outbox.
    pub fn for_mysql(instance: &str, buffer_max: usize) -> Self {
        Self::new(instance, buffer_max, None)
    }

    /// Events recorded by `instance` into an in-memory queue of at most
    /// `buffer_max` events (the memory store).
    pub fn for_memory(instance: &str, buffer_max: usize) -> Self {
        Self::new(
            instance,
            buffer_max,
            Some(Mutex::new(BoundedQueue::new(buffer_max))),
        )
    }

    fn new(instance: &str, buffer_max: usize, queue: Option<Mutex<BoundedQueue>>) -> Self {
        Events {
            instance: instance.to_owned(),
            buffer_max: buffer_max.max(1),
            connected: AtomicBool::new(false),
            full: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            buffered: AtomicU64::new(0),
            wake: Notify::new(),
            queue,
        }
    }

    /// The process the events are recorded by (`instance` in the body).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn buffer_max(&self) -> usize {
        self.buffer_max
    }

    /// Memory store: records `event` as the `seq`-th of its room. Called
    /// under the store's mutex, so events enter the queue in store order.
    pub fn push(&self, event: &DomainEvent, seq: u64) {
        let Some(queue) = &self.queue else {
            return;
        };
        let body = event.body(&new_event_id(), seq, &self.instance);
        let mut queue = lock(queue);
        if queue.push(event.kind.routing_key(), body) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.buffered.store(queue.len() as u64, Ordering::Relaxed);
        self.full.store(queue.is_full(), Ordering::Relaxed);
        drop(queue);
        self.wake();
    }

    /// Tells the relay that events were recorded.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until woken or `poll` has passed.
    pub(crate) async fn woken_or(&self, poll: Duration) {
        let _ = tokio::time::timeout(poll, self.wake.notified()).await;
    }

    /// A copy of the events waiting in the memory store's queue, oldest
    /// first (empty with MySQL, whose buffer is the outbox table). For
    /// diagnostics and tests.
    pub fn waiting(&self) -> Vec<queue::Pending> {
        self.queue().map(|q| q.peek(usize::MAX)).unwrap_or_default()
    }

    pub(crate) fn queue(&self) -> Option<MutexGuard<'_, BoundedQueue>> {
        self.queue.as_ref().map(lock)
    }

    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// Records what the relay saw of the buffer: `buffered` events waiting.
    pub(crate) fn set_buffered(&self, buffered: u64) {
        self.buffered.store(buffered, Ordering::Relaxed);
        self.full
            .store(buffered >= self.buffer_max as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Healthy: connected to RabbitMQ and the buffer is below its bound.
    pub fn is_up(&self) -> bool {
        self.connected.load(Ordering::Relaxed) && !self.full.load(Ordering::Relaxed)
    }

    /// Events this process dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events waiting for RabbitMQ, as last seen (the whole outbox with
    /// MySQL, refreshed every poll).
    pub fn buffered(&self) -> u64 {
        self.buffered.load(Ordering::Relaxed)
    }
}

fn lock(queue: &Mutex<BoundedQueue>) -> MutexGuard<'_, BoundedQueue> {
    // Every change to the queue is a few infallible steps: a poisoned lock
    // still guards a consistent queue.
    queue.lock().unwrap_or_else(|p| p.into_inner())
}
