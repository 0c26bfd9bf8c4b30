//! RabbitMQ through `lapin`: one connection, one channel, one consumer on
//! the archive's durable queue.
//!
//! The topology is declared on every connection, so `chat-events` may start
//! before any server and survives a broker that lost it:
//! - the durable topic exchange `chat.events` (what the servers publish to);
//! - the dead-letter queue `<queue>.dead` (durable, `x-max-length` =
//!   `EVENTS_DEAD_LETTER_MAX`, oldest dropped beyond it);
//! - the durable queue `<queue>` (`x-max-length` = `EVENTS_QUEUE_MAX`),
//!   bound to `chat.events` with `#`, whose dead letters (bodies rejected
//!   as bad, and the oldest events when it overflows) go through the
//!   default exchange to `<queue>.dead`.
//!
//! RabbitMQ refuses to declare an existing queue with other arguments
//! (`PRECONDITION_FAILED`): changing `EVENTS_QUEUE_MAX` or
//! `EVENTS_DEAD_LETTER_MAX` for an existing queue means deleting the queue
//! first (or overriding with a RabbitMQ policy and keeping the settings).

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

use crate::settings::{ArchiveSettings, EXCHANGE};

/// Longest wait for the connection and the topology to be set up; an
/// unreachable or silent broker then counts as down and is tried again.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Reply code of a normal close.
const REPLY_SUCCESS: u16 = 200;

/// A consuming channel on the archive's queue.
pub struct Subscription {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
}

/// Why RabbitMQ could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    Amqp(#[from] lapin::Error),
    #[error("no answer within {} s", .0.as_secs())]
    TimedOut(Duration),
    #[error("RabbitMQ cancelled the consumer (the queue was deleted?)")]
    Cancelled,
}

impl BrokerError {
    /// Whether waiting may help: the broker is down, restarting or slow.
    /// It cannot when RabbitMQ refused what was asked (credentials, a
    /// missing vhost, a queue declared with other arguments): an operator
    /// has to act, so start-up stops with the reason.
    pub fn may_heal(&self) -> bool {
        match self {
            BrokerError::TimedOut(_) | BrokerError::Cancelled => true,
            BrokerError::Amqp(e) => !refusal(e),
        }
    }
}

/// `ACCESS_REFUSED` (403), `NOT_FOUND` (404), `PRECONDITION_FAILED` (406),
/// `NOT_ALLOWED` (530, e.g. an unknown vhost), and the authentication
/// failure RabbitMQ reports by closing the connection during the handshake.
fn refusal(e: &lapin::Error) -> bool {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            matches!(amqp.get_id(), 403 | 404 | 406 | 530)
        }
        lapin::ErrorKind::AuthProviderError(_) => true,
        _ => false,
    }
}

impl Subscription {
    /// Connects and declares the topology, then starts consuming with at
    /// most `EVENTS_PREFETCH` unacknowledged deliveries.
    pub async fn open(settings: &ArchiveSettings) -> Result<Subscription, BrokerError> {
        match tokio::time::timeout(OPEN_TIMEOUT, open(settings)).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::TimedOut(OPEN_TIMEOUT)),
        }
    }

    /// The next delivery; `Err` once the channel or connection is gone.
    pub async fn next(&mut self) -> Result<Delivery, BrokerError> {
        match self.consumer.next().await {
            Some(Ok(delivery)) => Ok(delivery),
            Some(Err(e)) => Err(e.into()),
            None => Err(BrokerError::Cancelled),
        }
    }

    /// Acknowledges every delivery up to `tag` (`multiple`).
    pub async fn ack_up_to(&self, tag: u64) -> Result<(), BrokerError> {
        let options = BasicAckOptions { multiple: true };
        Ok(self.channel.basic_ack(tag, options).await?)
    }

    /// Rejects one delivery without requeueing: RabbitMQ dead-letters it.
    pub async fn dead_letter(&self, tag: u64) -> Result<(), BrokerError> {
        let options = BasicRejectOptions { requeue: false };
        Ok(self.channel.basic_reject(tag, options).await?)
    }

    /// Stops deliveries (before the last batch is stored at shutdown).
    pub async fn cancel(&self) {
        let tag = self.consumer.tag();
        if let Err(e) = self
            .channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
        {
            log::debug!("cancelling the consumer: {e}");
        }
    }

    /// Closes the channel and the connection; deliveries not acknowledged
    /// go back to the queue.
    pub async fn close(self) {
        let closing = async {
            let _ = self.channel.close(REPLY_SUCCESS, "bye".into()).await;
            self.connection.close(REPLY_SUCCESS, "bye".into()).await
        };
        match tokio::time::timeout(OPEN_TIMEOUT, closing).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::debug!("closing the RabbitMQ connection: {e}"),
            Err(_) => log::warn!("closing the RabbitMQ connection timed out"),
        }
    }
}

async fn open(settings: &ArchiveSettings) -> Result<Subscription, BrokerError> {
    let name = format!(
        "chat-events {} (pid {})",
        settings.queue,
        std::process::id()
    );
    let properties = ConnectionProperties::default().with_connection_name(name.clone().into());
    let connection = Connection::connect(&settings.amqp_url, properties).await?;
    let channel = connection.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let dead = settings.dead_letter_queue();
    let mut dead_args = FieldTable::default();
    dead_args.insert("x-max-length".into(), max_length(settings.dead_letter_max));
    channel
        .queue_declare(dead.as_str().into(), durable, dead_args)
        .await?;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), max_length(settings.queue_max));
    // The default exchange routes by queue name.
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead.as_str().into()),
    );
    channel
        .queue_declare(settings.queue.as_str().into(), durable, args)
        .await?;
    channel
        .queue_bind(
            settings.queue.as_str().into(),
            EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            settings.queue.as_str().into(),
            name.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(Subscription {
        connection,
        channel,
        consumer,
    })
}

/// An `x-max-length` argument (RabbitMQ takes a signed 32-bit integer;
/// the settings keep it below 2^31).
fn max_length(n: u32) -> AMQPValue {
    AMQPValue::LongInt(i32::try_from(n).unwrap_or(i32::MAX))
}
