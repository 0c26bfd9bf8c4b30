//! The scenarios and what they share: run-wide options, opening a socket
//! and joining a room, request/reply exchanges, and the hints printed when
//! the server pushes back.

pub mod churn;
pub mod cluster;
pub mod fanout;
pub mod flood;
pub mod idle;
pub mod load;
pub mod rooms;
pub mod scale;
pub mod soak;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::proc_stats;
use crate::proto;
use crate::stats::Stats;
use crate::ws::{self, Msg, Target, WsReader, WsWriter};

/// How long one request (join, leave, ping) may wait for its reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the server should be started with for a benchmark, quoted in
/// errors when it pushes back.
pub const SERVER_ENV_HINT: &str =
    "start the server with generous limits, e.g. WS_RATE_PER_SEC=1000000 WS_RATE_BURST=1000000 \
     WS_JOIN_RATE_PER_SEC=1000000 WS_JOIN_BURST=1000000 ROOM_CREATE_BURST=1000000 \
     MAX_CONNECTIONS_PER_ADDRESS=1000000 (see docs/bench/README.md)";

/// Options every scenario has.
#[derive(Debug, Clone)]
pub struct Common {
    /// `--url` and, for `cluster`, `--url2`.
    pub targets: Vec<Target>,
    /// `--pid`: the server process to read CPU and memory of.
    pub pid: Option<u32>,
    /// `--duration`: seconds of each measured window.
    pub duration: f64,
    /// `--warmup`: seconds of unmeasured load before each window.
    pub warmup: f64,
    /// `--drain`: longest wait for a window's messages after it closes.
    pub drain: f64,
    /// `--count`: most messages (or operations) per measured window.
    pub count: u64,
    /// `--size`: characters of chat content.
    pub size: usize,
    /// `--connect-concurrency`: connects + joins in flight during set-up.
    pub connect_concurrency: usize,
}

impl Common {
    pub fn target(&self, i: usize) -> &Target {
        &self.targets[i.min(self.targets.len() - 1)]
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }
}

/// A socket owned by one task: both halves, for request/reply exchanges.
pub struct Conn {
    pub rd: WsReader,
    pub wr: WsWriter,
}

/// The reply to a request, by its `ref`.
#[derive(Debug, Clone)]
pub struct Reply {
    pub kind: String,
    pub code: Option<String>,
    /// `room.id` of a `joined` reply.
    pub room_id: Option<u64>,
    /// The start of the frame, for error messages.
    pub text: String,
}

impl Reply {
    fn from_frame(p: &[u8]) -> Reply {
        let s = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        let kind = s(proto::frame_type(p)).unwrap_or_default();
        let room_id = if kind == "joined" {
            ws::find(p, br#""room""#).and_then(|i| proto::u64_field(p, br#""id""#, i))
        } else {
            None
        };
        Reply {
            code: s(proto::str_field(p, br#""code""#, 0)),
            room_id,
            text: String::from_utf8_lossy(&p[..p.len().min(300)]).into_owned(),
            kind,
        }
    }

    /// A one-line description of an `error` reply, with a hint for
    /// `rate_limited`.
    pub fn describe(&self) -> String {
        match self.code.as_deref() {
            Some("rate_limited") => format!("rate_limited ({}); {SERVER_ENV_HINT}", self.text),
            Some(code) => format!("{code} ({})", self.text),
            None => self.text.clone(),
        }
    }
}

impl Conn {
    /// Opens a WebSocket to `/ws`.
    pub async fn open(target: &Target, source: Option<IpAddr>, seed: u64) -> Result<Conn, String> {
        let (rd, wr) = ws::connect(target, "/ws", source, seed)
            .await
            .map_err(|e| connect_error(target, source, &e))?;
        Ok(Conn { rd, wr })
    }

    /// Sends `frame` and reads until the frame whose `ref` is `reference`,
    /// answering pings and skipping everything else.
    pub async fn request(&mut self, frame: &[u8], reference: &str) -> Result<Reply, String> {
        self.wr
            .send_text(frame)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let want = format!(r#""ref":"{reference}""#);
        let fut = async {
            loop {
                while let Some(msg) = self.rd.next_msg().map_err(|e| e.to_string())? {
                    match msg {
                        Msg::Text(p) => {
                            let bytes = self.rd.bytes(p);
                            if ws::find(bytes, want.as_bytes()).is_some()
                                || proto::str_field(bytes, br#""ref""#, 0)
                                    == Some(reference.as_bytes())
                            {
                                return Ok(Reply::from_frame(bytes));
                            }
                        }
                        Msg::Ping(p) => {
                            let payload = self.rd.bytes(p).to_vec();
                            self.wr
                                .send_pong(&payload)
                                .await
                                .map_err(|e| format!("pong: {e}"))?;
                        }
                        Msg::Close(code) => return Err(format!("server closed ({code:?})")),
                        Msg::Pong | Msg::Binary => {}
                    }
                }
                match self.rd.fill().await {
                    Ok(0) => return Err("server closed the connection".to_string()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
        };
        tokio::time::timeout(REPLY_TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no reply to {reference:?} within {REPLY_TIMEOUT:?}"
                ))
            })
    }

    /// Joins (or creates) a room; the room id on success.
    pub async fn enter(&mut self, how: &Enter, nickname: &str) -> Result<u64, String> {
        let frame = match how {
            Enter::Create(title) => proto::create_frame(title, nickname, "j"),
            Enter::Join(id) => proto::join_frame(*id, nickname, "j"),
        };
        let reply = self.request(&frame, "j").await?;
        match (reply.kind.as_str(), reply.room_id) {
            ("joined", Some(id)) => Ok(id),
            ("error", _) => Err(format!("{nickname}: {}", reply.describe())),
            _ => Err(format!("{nickname}: unexpected reply {}", reply.text)),
        }
    }
}

/// How a member gets into its room.
#[derive(Debug, Clone)]
pub enum Enter {
    /// `create` with this title (the room's first member).
    Create(String),
    /// `join` this room id.
    Join(u64),
}

/// A connect error with the likely cause.
pub fn connect_error(target: &Target, source: Option<IpAddr>, e: &std::io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(24) => " (too many open files: raise `ulimit -n`, or use fewer connections)",
        Some(99) => " (out of local ports: use --sources to spread connections over 127.0.0.x)",
        Some(111) => " (connection refused: is the server running on that port?)",
        _ => "",
    };
    let from = source.map(|s| format!(" from {s}")).unwrap_or_default();
    format!("connect to {}{from}: {e}{hint}", target.addr)
}

/// `GET /health`: the server's self-description (`instance`, `store`,
/// `bus`), or an error when it cannot be reached.
pub async fn health(target: &Target) -> Result<Value, String> {
    let (status, body) = ws::http_get(target, "/health")
        .await
        .map_err(|e| connect_error(target, None, &e))?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status != 200 {
        return Err(format!(
            "GET /health on {} answered {status}: {}",
            target.addr,
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(v)
}

/// Answers a ping or notes a close for a connection that otherwise only
/// reads; `false` when the connection is over.
pub async fn handle_control(
    msg: Msg,
    rd: &WsReader,
    wr: &tokio::sync::Mutex<WsWriter>,
    stats: &Stats,
) -> bool {
    match msg {
        Msg::Ping(p) => {
            let payload = rd.bytes(p).to_vec();
            if let Err(e) = wr.lock().await.send_pong(&payload).await {
                stats.connection_lost(|| format!("pong failed: {e}"));
                return false;
            }
            true
        }
        Msg::Close(code) => {
            stats.connection_lost(|| format!("server closed a connection with code {code:?}"));
            let _ = wr.lock().await.send_close(code.unwrap_or(1000)).await;
            false
        }
        Msg::Binary => {
            stats.errors.protocol.fetch_add(1, Ordering::Relaxed);
            true
        }
        Msg::Pong | Msg::Text(_) => true,
    }
}

/// Waits for `n` set-up results on `rx`, failing on the first error (with
/// what went wrong) or when set-up takes longer than `limit`.
pub async fn await_ready(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<(), String>>,
    n: usize,
    limit: Duration,
    stats: &Arc<Stats>,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    for done in 0..n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(()))) => {
                if done % 256 == 0 {
                    stats.set_label(format!("set-up: {done}/{n} connected"));
                }
            }
            Ok(Some(Err(e))) => {
                stats.errors.requests.fetch_add(1, Ordering::Relaxed);
                return Err(format!("set-up failed: {e}"));
            }
            Ok(None) => return Err("set-up failed: tasks ended early".into()),
            Err(_) => {
                return Err(format!(
                    "set-up timed out: only {done} of {n} connections joined within {limit:?}"
                ))
            }
        }
    }
    Ok(())
}

/// File descriptors the bench needs besides its connections.
const SPARE_FDS: u64 = 64;

/// Fails early, with the fix, when the bench or the server cannot hold
/// `conns` sockets.
pub fn check_fd_limits(conns: usize, pid: Option<u32>) -> Result<(), String> {
    let needed = conns as u64 + SPARE_FDS;
    match proc_stats::raise_nofile() {
        Ok((soft, hard)) if soft < needed => {
            return Err(format!(
                "{conns} connections need about {needed} open files, but this process may only \
                 open {soft} (RLIMIT_NOFILE soft {soft}, hard {hard}). Raise the hard limit \
                 (`ulimit -Hn`, limits.conf, or systemd LimitNOFILE) or use fewer connections."
            ))
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: could not read or raise RLIMIT_NOFILE: {e}"),
    }
    if let Some(limit) = pid.and_then(proc_stats::max_open_files) {
        if limit < conns as u64 + 16 {
            return Err(format!(
                "the server (pid {}) may only open {limit} files, fewer than {conns} connections; \
                 start it with a higher `ulimit -n` or use fewer connections",
                pid.unwrap_or(0)
            ));
        }
    }
    Ok(())
}

/// A seed per connection, so masking keys differ.
pub fn seed(i: usize, salt: u64) -> u64 {
    (i as u64) ^ salt.rotate_left(32) ^ crate::stats::now_ns()
}
