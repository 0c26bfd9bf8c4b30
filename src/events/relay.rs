//! The relay: one task per process that moves buffered events to RabbitMQ.
//!
//! Each round it (1) lets the source do its part (with MySQL: hold or try
//! to take the relay's named lock, and keep the outbox within its bound),
//! (2) makes sure it has a confirming connection (reconnecting with
//! exponential backoff, `backon`'s, from 100 ms up to 5 s, with jitter),
//! and (3) if this process relays, publishes the oldest waiting events and
//! removes the confirmed ones. It sleeps when there is nothing to do until
//! a local change wakes it or the poll interval (`EVENTS_POLL_MS`) passes,
//! which is how events recorded by other processes are found.
//!
//! Invariants, enforced here:
//! - **Removed only when confirmed.** `confirmed` is called with the
//!   prefix of a batch that RabbitMQ acked, never more.
//! - **In order.** A batch is the oldest waiting events in buffer order,
//!   published in that order on one channel; after a failure the
//!   connection is dropped and the next batch starts again from the oldest
//!   unconfirmed event.
//! - **Chat is unaffected.** The relay runs on its own task and only reads
//!   and removes buffered events; recording never waits for it.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::publisher::Publisher;
use super::queue::Pending;
use super::{Events, EventsConfig};
use crate::error::Chain;

/// Most events published before their confirms are awaited.
pub const BATCH: usize = 256;

/// A failure of a source, with its cause.
pub type SourceError = Box<dyn Error + Send + Sync>;

/// Where the relay finds the events to publish.
#[async_trait]
pub trait EventSource: Send + Sync + 'static {
    /// Run every round, connected to RabbitMQ or not: keeps the buffer
    /// within its bound and says whether this process relays.
    async fn prepare(&self, events: &Events) -> Result<bool, SourceError>;
    /// The oldest `max` waiting events, oldest first.
    async fn next_batch(&self, max: usize) -> Result<Vec<Pending>, SourceError>;
    /// Removes `batch` (a prefix of the last `next_batch`): RabbitMQ has
    /// confirmed it.
    async fn confirmed(&self, events: &Events, batch: &[Pending]) -> Result<(), SourceError>;
}

/// The memory store's queue as a source: this process always relays.
pub struct MemorySource(pub Arc<Events>);

#[async_trait]
impl EventSource for MemorySource {
    async fn prepare(&self, _: &Events) -> Result<bool, SourceError> {
        // The queue keeps its bound itself, at every push.
        Ok(true)
    }

    async fn next_batch(&self, max: usize) -> Result<Vec<Pending>, SourceError> {
        Ok(self.0.queue().map(|q| q.peek(max)).unwrap_or_default())
    }

    async fn confirmed(&self, events: &Events, batch: &[Pending]) -> Result<(), SourceError> {
        if let (Some(mut queue), Some(last)) = (self.0.queue(), batch.last()) {
            queue.confirm(last.key);
            events.set_buffered(queue.len() as u64);
        }
        Ok(())
    }
}

/// A running relay.
pub struct Relay {
    task: JoinHandle<()>,
    events: Arc<Events>,
}

impl Relay {
    /// Starts the relay task on the current Tokio runtime.
    pub fn start(config: EventsConfig, events: Arc<Events>, source: Box<dyn EventSource>) -> Self {
        let task = tokio::spawn(run(config, events.clone(), source));
        Relay { task, events }
    }

    /// Stops the relay, first giving it up to `drain` to publish what is
    /// buffered (the members' departures at shutdown, say). With MySQL,
    /// what is left stays in the outbox for the next relay.
    pub async fn stop(self, drain: Duration) {
        let end = Instant::now() + drain;
        while self.events.buffered() > 0 && self.events.is_up() && Instant::now() < end {
            self.events.wake();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The exponential backoff between connection attempts.
fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

async fn run(config: EventsConfig, events: Arc<Events>, source: Box<dyn EventSource>) {
    let mut publisher: Option<Publisher> = None;
    let mut delays = backoff();
    let mut next_connect = Instant::now();
    // Log a failing state once, not every round.
    let mut source_failing = false;
    let mut amqp_failing = false;
    let mut relaying = false;
    loop {
        match source.prepare(&events).await {
            Ok(now_relaying) => {
                if now_relaying != relaying {
                    log::info!(
                        "events: this process {} the relay",
                        if now_relaying {
                            "runs"
                        } else {
                            "no longer runs"
                        }
                    );
                }
                relaying = now_relaying;
                source_failing = false;
            }
            Err(e) => {
                if !source_failing {
                    log::warn!("events: the buffer cannot be read: {}", Chain(e.as_ref()));
                }
                source_failing = true;
                relaying = false;
            }
        }

        if publisher.as_ref().is_some_and(|p| !p.is_open()) {
            if let Some(p) = publisher.take() {
                p.close().await;
            }
            events.set_connected(false);
            log::warn!("events: the RabbitMQ connection closed; reconnecting");
            next_connect = Instant::now() + delays.next().unwrap_or(Duration::from_secs(5));
        }
        if publisher.is_none() && Instant::now() >= next_connect {
            let name = format!("chat-server {}", events.instance());
            match Publisher::connect(&config.url, &name, config.publish_timeout).await {
                Ok(p) => {
                    publisher = Some(p);
                    events.set_connected(true);
                    delays = backoff();
                    if amqp_failing {
                        log::info!("events: connected to RabbitMQ again");
                    }
                    amqp_failing = false;
                }
                Err(e) => {
                    events.set_connected(false);
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    if !amqp_failing {
                        log::warn!(
                            "events: cannot reach RabbitMQ ({}); retrying with backoff, \
                             events wait in the buffer (at most {})",
                            Chain(&e),
                            events.buffer_max()
                        );
                    }
                    amqp_failing = true;
                    next_connect = Instant::now() + delay;
                }
            }
        }

        let Some(p) = publisher.as_ref() else {
            // Not connected: keep the bound (next round's `prepare`), and
            // do not spin on every local wake.
            let until_connect = next_connect.saturating_duration_since(Instant::now());
            tokio::time::sleep(until_connect.min(config.poll)).await;
            continue;
        };
        if !relaying {
            tokio::time::sleep(config.poll).await;
            continue;
        }
        let batch = match source.next_batch(BATCH).await {
            Ok(batch) => batch,
            Err(e) => {
                log::warn!("events: reading the buffer failed: {}", Chain(e.as_ref()));
                tokio::time::sleep(config.poll).await;
                continue;
            }
        };
        if batch.is_empty() {
            events.woken_or(config.poll).await;
            continue;
        }
        let (acked, failure) = p.publish(&batch).await;
        if acked > 0 {
            if let Err(e) = source.confirmed(&events, &batch[..acked]).await {
                // They stay buffered and are published again: duplicates,
                // which consumers drop by id.
                log::warn!(
                    "events: removing {acked} confirmed events failed: {}",
                    Chain(e.as_ref())
                );
            }
        }
        if let Some(e) = failure {
            log::warn!(
                "events: publishing failed after {acked} of {} events ({}); reconnecting",
                batch.len(),
                Chain(&e)
            );
            amqp_failing = true;
            events.set_connected(false);
            if let Some(p) = publisher.take() {
                p.close().await;
            }
            next_connect = Instant::now() + delays.next().unwrap_or(Duration::from_secs(5));
        }
    }
}
