//! The real RabbitMQ the event tests publish to: a private vhost per test
//! (made and deleted with `rabbitmqctl`, so tests and other users of the
//! broker never see each other's events) and a [`Listener`], a consumer
//! with its own exclusive queue bound to `chat.events`, which records what
//! arrives in arrival order.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;

use crate::wait::eventually;

/// Where the broker listens (the server under test may be given a proxy
/// in front of it instead).
pub const BROKER: &str = "127.0.0.1:5672";

/// Declares the durable topic exchange `chat.events`, as the server does.
pub async fn declare_exchange(channel: &lapin::Channel) -> lapin::Result<()> {
    channel
        .exchange_declare(
            "chat.events".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// A vhost of its own, deleted on drop.
pub struct Vhost {
    pub name: String,
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run rabbitmqctl (is RabbitMQ installed?): {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Vhost {
    pub fn create() -> Vhost {
        let name = format!(
            "chat-events-test-{}-{:08x}",
            std::process::id(),
            uuid::Uuid::new_v4().as_u128() as u32
        );
        rabbitmqctl(&["-q", "add_vhost", &name]);
        rabbitmqctl(&[
            "-q",
            "set_permissions",
            "-p",
            &name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        Vhost { name }
    }

    /// The URL of this vhost at `addr` (`host:port`).
    pub fn url_at(&self, addr: &str) -> String {
        format!("amqp://guest:guest@{addr}/{}", self.name)
    }

    pub fn url(&self) -> String {
        self.url_at(BROKER)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
    }
}

/// One received event: its routing key and its body.
#[derive(Debug, Clone)]
pub struct Received {
    pub routing_key: String,
    pub body: Value,
}

/// A consumer on its own thread and runtime, bound to every routing key.
pub struct Listener {
    received: Arc<Mutex<Vec<Received>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl Listener {
    /// Declares `chat.events` (as the server does) and an exclusive queue
    /// bound to `#`, and starts consuming; returns once bound.
    pub fn start(url: &str) -> Listener {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let sink = received.clone();
        let url = url.to_owned();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                let setup = async {
                    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
                    let channel = conn.create_channel().await?;
                    declare_exchange(&channel).await?;
                    let queue = channel
                        .queue_declare(
                            "".into(),
                            QueueDeclareOptions {
                                exclusive: true,
                                auto_delete: true,
                                ..Default::default()
                            },
                            FieldTable::default(),
                        )
                        .await?;
                    channel
                        .queue_bind(
                            queue.name().clone(),
                            "chat.events".into(),
                            "#".into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await?;
                    let consumer = channel
                        .basic_consume(
                            queue.name().clone(),
                            "test".into(),
                            BasicConsumeOptions {
                                no_ack: true,
                                ..Default::default()
                            },
                            FieldTable::default(),
                        )
                        .await?;
                    Ok::<_, lapin::Error>((conn, channel, consumer))
                };
                let (_conn, _channel, mut consumer) = match setup.await {
                    Ok(parts) => parts,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while let Some(Ok(delivery)) = consumer.next().await {
                    let body = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
                    if let Ok(mut all) = sink.lock() {
                        all.push(Received {
                            routing_key: delivery.routing_key.to_string(),
                            body,
                        });
                    }
                }
            });
        });
        match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("listener on {BROKER}: {e}"),
            Err(e) => panic!("listener on {BROKER} not ready: {e}"),
        }
        Listener {
            received,
            _thread: thread,
        }
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The bodies received so far for `room`, in arrival order, with
    /// repeats (the same `id` again) left out.
    pub fn room(&self, room: u64) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        self.received()
            .into_iter()
            .filter(|r| r.body["roomId"] == room)
            .filter(|r| seen.insert(r.body["id"].as_str().unwrap_or("").to_owned()))
            .map(|r| r.body)
            .collect()
    }

    /// Waits until `room` has at least `n` events and returns them.
    pub async fn wait_room(&self, room: u64, n: usize, limit: Duration) -> Vec<Value> {
        eventually(limit, &format!("{n} events of room {room}"), || async {
            let got = self.room(room).len();
            if got >= n {
                Ok(())
            } else {
                Err(format!("{got} so far"))
            }
        })
        .await;
        self.room(room)
    }
}

/// The `type`s of `events`.
pub fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// The `seq`s of `events`.
pub fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().filter_map(|e| e["seq"].as_u64()).collect()
}
