//! The RabbitMQ side of the relay: one connection, one channel in confirm
//! mode, the durable topic exchange `chat.events`.
//!
//! Client: `lapin` 4, the maintained AMQP 0-9-1 client for Rust, built with
//! only its `tokio` feature: it then runs its I/O on the Tokio runtime that
//! calls it (here the actix system's, which is Tokio), so no second runtime
//! or executor glue (`tokio-executor-trait`) is needed. No TLS backend is
//! built in (`amqp://` only), which keeps a C toolchain dependency
//! (aws-lc) out of the build.
//!
//! Its own reconnect ("auto recover") is left off: the relay drops a
//! connection at the first failure and makes a new one with backoff, so
//! what was published but not confirmed is simply published again, and
//! there is one recovery path to reason about.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use super::queue::Pending;
use super::EXCHANGE;

/// Why a publish or a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ did not answer within {} ms", .0.as_millis())]
    TimedOut(Duration),
    #[error("RabbitMQ refused (nack) an event")]
    Nacked,
}

/// A connection with a confirming channel on which `chat.events` exists.
pub struct Publisher {
    connection: Connection,
    channel: Channel,
    timeout: Duration,
}

impl Publisher {
    /// Connects to `url`, opens a channel in confirm mode and declares the
    /// exchange (durable, topic), all within `timeout`.
    pub async fn connect(url: &str, name: &str, timeout: Duration) -> Result<Self, PublishError> {
        let setup = async {
            let properties = ConnectionProperties::default().with_connection_name(name.into());
            let connection = Connection::connect(url, properties).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channel
                .exchange_declare(
                    EXCHANGE.into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, PublishError>(Publisher {
                connection,
                channel,
                timeout,
            })
        };
        tokio::time::timeout(timeout, setup)
            .await
            .map_err(|_| PublishError::TimedOut(timeout))?
    }

    /// Whether the connection and the channel are still open.
    pub fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Publishes `batch` in order (persistent, JSON) and waits for the
    /// confirms. Returns how many events, from the first, RabbitMQ
    /// confirmed, and the failure that stopped the rest, if any. Events after
    /// a failure may or may not have arrived: the caller publishes them
    /// again (consumers deduplicate by `id`).
    pub async fn publish(&self, batch: &[Pending]) -> (usize, Option<PublishError>) {
        let mut confirms = Vec::with_capacity(batch.len());
        for event in batch {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            let sent = self.channel.basic_publish(
                EXCHANGE.into(),
                event.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                event.body.as_bytes(),
                properties,
            );
            match tokio::time::timeout(self.timeout, sent).await {
                Ok(Ok(confirm)) => confirms.push(confirm),
                Ok(Err(e)) => return self.count(confirms, Some(e.into())).await,
                Err(_) => {
                    let late = PublishError::TimedOut(self.timeout);
                    return self.count(confirms, Some(late)).await;
                }
            }
        }
        self.count(confirms, None).await
    }

    /// Awaits `confirms` in order: how many from the first were acked, and
    /// the first failure (`failed` if it came before them).
    async fn count(
        &self,
        confirms: Vec<lapin::PublisherConfirm>,
        mut failed: Option<PublishError>,
    ) -> (usize, Option<PublishError>) {
        let mut acked = 0;
        for confirm in confirms {
            match tokio::time::timeout(self.timeout, confirm).await {
                Ok(Ok(Confirmation::Ack(_))) => acked += 1,
                Ok(Ok(Confirmation::Nack(_) | Confirmation::NotRequested)) => {
                    return (acked, Some(PublishError::Nacked));
                }
                Ok(Err(e)) => return (acked, Some(e.into())),
                Err(_) => return (acked, Some(PublishError::TimedOut(self.timeout))),
            }
        }
        (acked, failed.take())
    }

    /// Closes the connection (best effort, bounded).
    pub async fn close(self) {
        let closing = self.connection.close(200, "closing".into());
        let _ = tokio::time::timeout(self.timeout, closing).await;
    }
}
