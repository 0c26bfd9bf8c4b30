//! The consumer loop: deliveries in, batches stored, acknowledgements out;
//! reconnection with backoff; the last batch stored at shutdown.
//!
//! Invariants, enforced here:
//! - **Acknowledged only once stored.** A delivery is acknowledged only
//!   after the transaction holding its row committed ([`flush`]), or
//!   rejected (dead-lettered) when its body cannot be archived. A crash at
//!   any point leaves unacknowledged deliveries, which RabbitMQ delivers
//!   again; storing them again adds nothing (see `archive.rs`). So a kill
//!   and restart loses and duplicates nothing.
//! - **Never blocked by one body.** A bad body is dead-lettered at once; a
//!   batch whose rows MySQL refuses is stored event by event, and the event
//!   refused alone is dead-lettered. Only an outage holds the queue, and
//!   then nothing is acknowledged or lost.
//! - **Never a hot loop.** Every retry (RabbitMQ or MySQL unreachable)
//!   waits a growing, jittered delay capped at `EVENTS_RETRY_MAX_MS`.
//! - **Retention.** With `EVENTS_RETENTION_DAYS`, a task deletes older
//!   events (by `at`) every `EVENTS_RETENTION_SWEEP_MS`, in chunks; without
//!   it the archive keeps everything.
//! - **Shutdown.** On SIGTERM or SIGINT the consumer is cancelled, the
//!   events already taken are stored (one attempt) and acknowledged, and
//!   the connection closed; deliveries not yet taken go back to the queue.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chat_server::Chain;
use chrono::{SubsecRound, Utc};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::archive::{Archive, StoreFailure};
use crate::batch::{Batch, Pending};
use crate::broker::{BrokerError, Subscription};
use crate::event;
use crate::settings::ArchiveSettings;

/// The first retry delay; each next one doubles (with jitter) up to
/// `EVENTS_RETRY_MAX_MS`.
const FIRST_RETRY: Duration = Duration::from_millis(200);

/// A connection that lasted this long starts the next reconnection's
/// backoff from the beginning; a shorter one keeps growing it, so a broker
/// that accepts and then drops connections is not hammered.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// What the archive did, logged at exit.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Events stored for the first time.
    pub stored: u64,
    /// Events already in the archive (redeliveries, republished events).
    pub repeated: u64,
    /// Deliveries rejected to the dead-letter queue.
    pub dead_lettered: u64,
}

/// Why `chat-events` stopped without being asked to.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error("MySQL refused: {}", Chain(.0))]
    MySql(chat_server::store::StoreError),
    #[error("RabbitMQ refused: {0}")]
    Broker(BrokerError),
}

/// Runs until `stop` turns true (then returns the counts) or a refusal
/// that waiting cannot fix happens before anything was consumed.
pub async fn run(
    settings: &ArchiveSettings,
    mut stop: watch::Receiver<bool>,
) -> Result<Counts, Fatal> {
    let mut counts = Counts::default();
    let Some(archive) = connect_archive(settings, &mut stop).await? else {
        return Ok(counts);
    };
    let sweeper = settings.retention.map(|keep| {
        let (archive, every, stop) = (archive.clone(), settings.retention_sweep, stop.clone());
        tokio::spawn(delete_old_events(archive, keep, every, stop))
    });
    let mut backoff = retry_delays(settings.retry_max);
    let mut consumed_before = false;
    while !*stop.borrow() {
        match Subscription::open(settings).await {
            Ok(subscription) => {
                log::info!(
                    "consuming {} (prefetch {}, batches of up to {})",
                    settings.queue,
                    settings.prefetch,
                    settings.batch_max
                );
                consumed_before = true;
                let started = Instant::now();
                match session(settings, &archive, subscription, &mut stop, &mut counts).await {
                    Ok(()) => break,
                    Err(e) => log::warn!("RabbitMQ connection lost: {e}"),
                }
                if started.elapsed() >= HEALTHY_SESSION {
                    backoff = retry_delays(settings.retry_max);
                }
            }
            Err(e) if !consumed_before && !e.may_heal() => {
                stop_sweeper(sweeper).await;
                archive.disconnect().await;
                return Err(Fatal::Broker(e));
            }
            Err(e) => log::warn!("cannot reach RabbitMQ: {e}"),
        }
        let delay = next_delay(&mut backoff, settings.retry_max);
        log::info!("next attempt to reach RabbitMQ in {} ms", delay.as_millis());
        if sleep_unless_stopped(delay, &mut stop).await {
            break;
        }
    }
    stop_sweeper(sweeper).await;
    archive.disconnect().await;
    Ok(counts)
}

/// Deletes the events older than `keep` (`EVENTS_RETENTION_DAYS`) now and
/// every `every`, until `stop`. A failure is logged and the next sweep
/// tries again; the archive's writes do not wait for it.
async fn delete_old_events(
    archive: Archive,
    keep: Duration,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let days = keep.as_secs() / 86_400;
    loop {
        let cutoff = chrono::TimeDelta::from_std(keep)
            .ok()
            .and_then(|keep| Utc::now().naive_utc().checked_sub_signed(keep));
        if let Some(cutoff) = cutoff {
            match archive.delete_before(cutoff).await {
                Ok(0) => {}
                Ok(n) => log::info!("deleted {n} events older than {days} days"),
                Err(e) => log::warn!(
                    "cannot delete events older than {days} days: {}; next sweep in {} ms",
                    Chain(&e),
                    every.as_millis()
                ),
            }
        }
        if sleep_unless_stopped(every, &mut stop).await {
            return;
        }
    }
}

/// Ends the retention sweep (a `DELETE` cut off is rolled back or done:
/// each is one statement).
async fn stop_sweeper(sweeper: Option<tokio::task::JoinHandle<()>>) {
    if let Some(task) = sweeper {
        task.abort();
        let _ = task.await;
    }
}

/// Connects to MySQL, waiting with backoff while it is down; `None` if
/// stopped meanwhile.
async fn connect_archive(
    settings: &ArchiveSettings,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Archive>, Fatal> {
    let mut backoff = retry_delays(settings.retry_max);
    loop {
        match Archive::connect(&settings.mysql_url, settings.store_timeout).await {
            Ok(archive) => return Ok(Some(archive)),
            Err(e) if !chat_server::store::may_heal(&e) => return Err(Fatal::MySql(e)),
            Err(e) => {
                let delay = next_delay(&mut backoff, settings.retry_max);
                log::warn!(
                    "cannot reach MySQL: {}; next attempt in {} ms",
                    Chain(&e),
                    delay.as_millis()
                );
                if sleep_unless_stopped(delay, stop).await {
                    return Ok(None);
                }
            }
        }
    }
}

/// Consumes on one connection. `Ok` once stopped (everything taken is
/// stored or left unacknowledged for redelivery), `Err` if the connection
/// is lost.
async fn session(
    settings: &ArchiveSettings,
    archive: &Archive,
    mut subscription: Subscription,
    stop: &mut watch::Receiver<bool>,
    counts: &mut Counts,
) -> Result<(), BrokerError> {
    let mut batch = Batch::new(settings.batch_max, settings.batch_wait);
    let mut flusher = Flusher {
        settings,
        archive,
        counts,
    };
    loop {
        let due = batch.due();
        tokio::select! {
            biased;
            _ = stop.changed() => {
                subscription.cancel().await;
                flusher.flush(&mut batch, &subscription, stop).await?;
                subscription.close().await;
                return Ok(());
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                if flusher.flush(&mut batch, &subscription, stop).await? == Flushed::Abandoned {
                    subscription.close().await;
                    return Ok(());
                }
            }
            delivery = subscription.next() => {
                let delivery = delivery?;
                match event::parse(&delivery.data, settings.max_body_bytes) {
                    Ok(event) => {
                        batch.push(delivery.delivery_tag, event, Instant::now());
                        if batch.is_full()
                            && flusher.flush(&mut batch, &subscription, stop).await? == Flushed::Abandoned
                        {
                            subscription.close().await;
                            return Ok(());
                        }
                    }
                    Err(bad) => {
                        log::warn!(
                            "dead-lettering a delivery (routing key {:?}, {} bytes) to {}: {bad}",
                            delivery.routing_key.as_str(),
                            delivery.data.len(),
                            settings.dead_letter_queue()
                        );
                        subscription.dead_letter(delivery.delivery_tag).await?;
                        flusher.counts.dead_lettered += 1;
                    }
                }
            }
        }
    }
}

/// How a flush ended.
#[derive(Debug, PartialEq, Eq)]
enum Flushed {
    /// Every event is stored and acknowledged (or dead-lettered).
    Done,
    /// Stopped while MySQL was failing: the rest stays unacknowledged and
    /// RabbitMQ delivers it again.
    Abandoned,
}

struct Flusher<'a> {
    settings: &'a ArchiveSettings,
    archive: &'a Archive,
    counts: &'a mut Counts,
}

impl Flusher<'_> {
    /// Stores the batch and acknowledges it (see the module invariants).
    /// While MySQL fails, tries again with backoff; once stopping, only
    /// once.
    async fn flush(
        &mut self,
        batch: &mut Batch,
        subscription: &Subscription,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Flushed, BrokerError> {
        let events = batch.take();
        let mut rest: &[Pending] = &events;
        let mut one_by_one = false;
        let mut backoff = retry_delays(self.settings.retry_max);
        while !rest.is_empty() {
            let chunk = if one_by_one { &rest[..1] } else { rest };
            let received = Utc::now().naive_utc().trunc_subsecs(3);
            match self.archive.store(chunk, received).await {
                Ok(new) => {
                    let last = chunk[chunk.len() - 1].tag;
                    // Every delivery up to `last` is in this batch or
                    // already settled (batch.rs), so `multiple` acks
                    // exactly what was just committed.
                    subscription.ack_up_to(last).await?;
                    let total = chunk.len() as u64;
                    self.counts.stored += new.min(total);
                    self.counts.repeated += total - new.min(total);
                    log::debug!("stored {total} events ({new} new), acknowledged up to {last}");
                    rest = &rest[chunk.len()..];
                }
                Err(StoreFailure::Rows(e)) if chunk.len() > 1 => {
                    log::warn!(
                        "MySQL refused a batch of {} events ({e}); storing them one by one",
                        chunk.len()
                    );
                    one_by_one = true;
                }
                Err(StoreFailure::Rows(e)) => {
                    log::warn!(
                        "MySQL refused event {:?} ({e}); dead-lettering it to {}",
                        chunk[0].event.id,
                        self.settings.dead_letter_queue()
                    );
                    subscription.dead_letter(chunk[0].tag).await?;
                    self.counts.dead_lettered += 1;
                    rest = &rest[1..];
                }
                Err(StoreFailure::Transient(e)) => {
                    if *stop.borrow() {
                        log::warn!(
                            "stopping with {} events not stored ({}): RabbitMQ delivers them again",
                            rest.len(),
                            Chain(&e)
                        );
                        return Ok(Flushed::Abandoned);
                    }
                    let delay = next_delay(&mut backoff, self.settings.retry_max);
                    log::warn!(
                        "cannot store {} events: {}; next attempt in {} ms",
                        rest.len(),
                        Chain(&e),
                        delay.as_millis()
                    );
                    if sleep_unless_stopped(delay, stop).await {
                        log::warn!(
                            "stopping with {} events not stored: RabbitMQ delivers them again",
                            rest.len()
                        );
                        return Ok(Flushed::Abandoned);
                    }
                    // In case the table was dropped meanwhile; a failure
                    // here shows again in the next attempt.
                    let _ = self.archive.ensure_table().await;
                }
            }
        }
        Ok(Flushed::Done)
    }
}

/// Growing, jittered delays capped at `max`.
fn retry_delays(max: Duration) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(FIRST_RETRY.min(max))
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The next delay of `backoff`, never above `max` (jitter included).
fn next_delay(backoff: &mut ExponentialBackoff, max: Duration) -> Duration {
    backoff.next().unwrap_or(max).min(max)
}

/// Sleeps `delay`; `true` if `stop` turned true first (or already was).
async fn sleep_unless_stopped(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_to_their_cap_and_never_pass_it() {
        let max = Duration::from_secs(2);
        let mut backoff = retry_delays(max);
        let delays: Vec<Duration> = (0..20).map(|_| next_delay(&mut backoff, max)).collect();
        assert!(
            delays.iter().all(|d| *d >= FIRST_RETRY && *d <= max),
            "{delays:?}"
        );
        assert!(
            delays[10..].iter().all(|d| *d >= max / 2),
            "grown: {delays:?}"
        );
        let tiny = Duration::from_millis(1);
        assert_eq!(next_delay(&mut retry_delays(tiny), tiny), tiny);
    }
}
