//! The event archive, `chat-events`, as a real process against the
//! machine's real RabbitMQ (127.0.0.1:5672, guest/guest; `TEST_AMQP_URL`
//! overrides the host part) and MariaDB (`TEST_MYSQL_URL`).
//!
//! Each test gets a RabbitMQ vhost of its own (created with `rabbitmqctl`,
//! deleted afterwards), so the `chat.events` exchange it publishes to is
//! its own and no other test's or server's events reach it, and a uniquely
//! named database. Events are published by the test in the documented
//! format (docs/PROTOCOL.md, "Domain events"), with publisher confirms.

#[path = "../common/fault_proxy.rs"]
#[allow(dead_code)]
mod fault_proxy;
#[path = "../api/helpers/mod.rs"]
mod helpers;
#[path = "../cluster/procs.rs"]
#[allow(dead_code)]
mod procs;
#[path = "../events/rabbit.rs"]
#[allow(dead_code)]
mod rabbit;
#[path = "../common/wait.rs"]
#[allow(dead_code)]
mod wait;

mod crash;
mod end_to_end;
mod measure;
mod outages;
mod pm2;
mod startup;
mod stored;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

use helpers::TestDatabase;

/// The broker's address, without a vhost.
fn amqp_base_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".to_string())
        .trim_end_matches('/')
        .to_string()
}

/// `rabbitmqctl` with `args`; panics with its output if it fails.
fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl {args:?}: {e} (is rabbitmq-server installed?)"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A RabbitMQ vhost of the test's own, where `guest` may do anything;
/// deleted (with its exchanges and queues) on drop.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    #[allow(clippy::new_without_default)] // creating one has effects
    pub fn new() -> Vhost {
        let name = format!(
            "chat-archive-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Vhost { name }
    }

    /// The AMQP URL of this vhost on `base` (`amqp://user:pass@host:port`).
    pub fn url_on(&self, base: &str) -> String {
        format!("{base}/{}", self.name)
    }

    pub fn url(&self) -> String {
        self.url_on(&amqp_base_url())
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let out = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("warning: could not delete vhost {}: {out:?}", self.name);
        }
    }
}

/// Publishes events to `chat.events` in a vhost, each confirmed.
pub struct Publisher {
    connection: Connection,
    channel: Channel,
}

impl Publisher {
    pub async fn connect(vhost: &Vhost) -> Publisher {
        let connection = Connection::connect(&vhost.url(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("connect to RabbitMQ vhost {}: {e}", vhost.name));
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        rabbit::declare_exchange(&channel)
            .await
            .expect("declare chat.events");
        Publisher {
            connection,
            channel,
        }
    }

    /// Publishes `body` with `routing_key`; returns once RabbitMQ confirmed.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        self.publish_many(routing_key, &[body.to_vec()]).await;
    }

    /// Publishes every body with `routing_key`, waiting for the confirms
    /// only at the end.
    pub async fn publish_many(&self, routing_key: &str, bodies: &[Vec<u8>]) {
        let mut confirms = Vec::with_capacity(bodies.len());
        for body in bodies {
            let confirm = self
                .channel
                .basic_publish(
                    "chat.events".into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirmation = confirm.await.expect("confirm");
            assert!(confirmation.is_ack(), "{confirmation:?}");
        }
    }

    /// Publishes an event with its `type` as routing key.
    pub async fn publish(&self, event: &Value) {
        let key = event["type"].as_str().expect("type");
        self.publish_raw(key, event.to_string().as_bytes()).await;
    }

    /// Messages ready in `queue` (not delivered to a consumer).
    pub async fn ready_in(&self, queue: &str) -> u32 {
        let q = self
            .channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("queue {queue}: {e}"));
        q.message_count()
    }

    /// Messages ready in `queue`, or `None` if it does not exist (asked on
    /// a channel of its own: RabbitMQ closes the channel of a passive
    /// declaration that fails).
    pub async fn queue_exists(&self, queue: &str) -> Option<u32> {
        let channel = self.connection.create_channel().await.expect("channel");
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let found = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .ok()
            .map(|q| q.message_count());
        let _ = channel.close(200, "bye".into()).await;
        found
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "bye".into()).await;
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

/// An event in the documented format. `seq` is left out when `None`.
pub fn event(kind: &str, id: &str, room: u64, seq: Option<u64>) -> Value {
    let mut body = json!({
        "type": kind,
        "id": id,
        "roomId": room,
        "instance": "chat-test-1",
        "at": "2026-11-24T10:00:01.250Z",
    });
    let concerned = match kind {
        "room.created" | "room.deleted" => json!({"room": {"id": room, "title": "general",
            "memberCount": 0, "created": "2026-11-24T10:00:00Z"}}),
        "member.joined" | "member.left" => json!({"member": {"nickname": "alice",
            "joinedAt": "2026-11-24T10:00:01Z"}}),
        _ => json!({"message": {"id": seq.unwrap_or(1), "roomId": room, "nickname": "alice",
            "content": "hi 👋", "sentAt": "2026-11-24T10:00:01Z"}}),
    };
    for (k, v) in concerned.as_object().expect("object") {
        body[k] = v.clone();
    }
    if let Some(seq) = seq {
        body["seq"] = json!(seq);
    }
    body
}

/// One `chatEvent` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub event_id: String,
    pub kind: String,
    pub room_id: u64,
    pub instance: String,
    /// `at` as MariaDB prints it: `2026-11-24 10:00:01.250`.
    pub at: String,
    pub seq: Option<u64>,
    pub body: Value,
}

/// A `chatEvent` row as selected by [`rows`].
type RawRow = (String, String, u64, String, String, Option<u64>, String);

/// Every row of `chatEvent`, in arrival order (empty if the table does not
/// exist yet).
pub async fn rows(db: &TestDatabase) -> Vec<Row> {
    let pool = mysql_async::Pool::new(db.url.as_str());
    let result = async {
        let mut conn = pool.get_conn().await?;
        let rows: Vec<RawRow> = conn
            .query(
                "SELECT event_id, type, room_id, instance, CAST(at AS CHAR), seq, body \
                 FROM chatEvent ORDER BY id",
            )
            .await?;
        Ok::<_, mysql_async::Error>(rows)
    }
    .await;
    let _ = pool.disconnect().await;
    match result {
        Ok(rows) => rows
            .into_iter()
            .map(|(event_id, kind, room_id, instance, at, seq, body)| Row {
                event_id,
                kind,
                room_id,
                instance,
                at,
                seq,
                body: serde_json::from_str(&body).expect("body is JSON"),
            })
            .collect(),
        Err(mysql_async::Error::Server(e)) if e.code == 1146 || e.code == 1049 => Vec::new(),
        Err(e) => panic!("reading chatEvent: {e}"),
    }
}

/// The number of rows in `chatEvent` (0 while it does not exist).
pub async fn count(db: &TestDatabase) -> u64 {
    let pool = mysql_async::Pool::new(db.url.as_str());
    let result: Result<Option<u64>, _> = async {
        let mut conn = pool.get_conn().await?;
        conn.query_first("SELECT COUNT(*) FROM chatEvent").await
    }
    .await;
    let _ = pool.disconnect().await;
    match result {
        Ok(n) => n.unwrap_or(0),
        Err(mysql_async::Error::Server(e)) if e.code == 1146 || e.code == 1049 => 0,
        Err(e) => panic!("counting chatEvent: {e}"),
    }
}

/// A `chat-events` process with only the environment given; stderr is
/// collected (and echoed with `ARCHIVE_LOGS=1`); killed on drop.
pub struct Archiver {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Archiver {
    /// Starts `chat-events` for `vhost` and `db`, plus `vars`.
    pub fn start(vhost: &Vhost, db: &TestDatabase, vars: &[(&str, &str)]) -> Archiver {
        let amqp = vhost.url();
        let mut all = vec![("AMQP_URL", amqp.as_str()), ("MYSQL_URL", db.url.as_str())];
        all.extend_from_slice(vars);
        Archiver::start_with(&all)
    }

    /// Starts `chat-events` with exactly `vars` (and RUST_LOG=info).
    pub fn start_with(vars: &[(&str, &str)]) -> Archiver {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chat-events"));
        let level = std::env::var("ARCHIVE_RUST_LOG").unwrap_or_else(|_| "info".into());
        command.env_clear().env("RUST_LOG", level);
        command.envs(vars.iter().copied());
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chat-events: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (lines, pipe) = (stderr.clone(), child.stderr.take().expect("piped"));
        // Ends by itself at EOF, when the process exits or is killed.
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if std::env::var("ARCHIVE_LOGS").is_ok() {
                    eprintln!("chat-events: {line}");
                }
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
        });
        Archiver { child, stderr }
    }

    pub fn log(&self) -> Vec<String> {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Lines of its log containing `text`.
    pub fn lines_with(&self, text: &str) -> usize {
        self.log().iter().filter(|l| l.contains(text)).count()
    }

    /// Waits until its log has a line containing `text`.
    pub async fn wait_for_line(&mut self, text: &str, limit: Duration) {
        let start = Instant::now();
        while self.lines_with(text) == 0 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "chat-events exited ({status}) before logging {text:?}: {:#?}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < limit,
                "chat-events did not log {text:?} within {limit:?}: {:#?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until it consumes (its queue exists and is bound).
    pub async fn wait_consuming(&mut self) {
        self.wait_for_line("consuming", Duration::from_secs(20))
            .await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (e.g. "TERM") and waits at most `limit` for the exit.
    pub async fn signal_and_wait(&mut self, signal: &str, limit: Duration) -> ExitStatus {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal} failed");
        self.wait_exit(limit).await
    }

    /// Waits at most `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "chat-events still running after {limit:?}: {:#?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `chatEvent` holds `n` rows; panics with what it holds after
/// `limit`.
pub async fn wait_for_count(db: &TestDatabase, n: u64, limit: Duration) {
    let start = Instant::now();
    loop {
        let have = count(db).await;
        if have == n {
            return;
        }
        assert!(
            have < n,
            "chatEvent holds {have} rows, more than the {n} expected"
        );
        assert!(
            start.elapsed() < limit,
            "chatEvent holds {have} rows, not {n}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
