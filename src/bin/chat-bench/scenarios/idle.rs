//! `idle`: `--conns` open connections (default 10000), each in a room of
//! `--room-size` (default 10), doing nothing. Measures the server's
//! resident memory per connection (`VmRSS` of `--pid` before connecting and
//! after), then checks every connection is still served with one
//! application `ping` each (its round trip is the reported latency), and
//! holds them for `--duration` seconds to show what idle sockets cost in CPU.
//!
//! With `--chat-members M`, a room of M members (`--chat-senders`, default
//! 2, each sending `--chat-rate` chats/s, default 50) is set up first and
//! measured alone, then measured again once the idle sockets are joined:
//! does the tail latency of a chatting room depend on how many silent
//! sockets the server holds? The report gives both latencies and the ratio
//! of their p99s (`chat`).
//!
//! One source address has ~28,000 ephemeral ports towards one server port;
//! past `PER_SOURCE` connections are spread over 127.0.0.2, .3, ...
//! (`--sources N` forces N addresses).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};

use super::load::{self, Layout, MemberSpec, Mode, PhaseResult};
use super::{await_ready, check_fd_limits, seed, Common, Conn, Enter};
use crate::proc_stats::{self, CpuSnapshot};
use crate::proto;
use crate::stats::{latency_json, now_ns, Stats};
use crate::ws::Msg;
use crate::Args;

pub const OPTIONS: &[&str] = &[
    "conns",
    "room-size",
    "sources",
    "settle",
    "chat-members",
    "chat-senders",
    "chat-rate",
];

/// Tags of the chatting room's two phases (tag 1 counts the pings).
const CHAT_ALONE_TAG: u8 = 2;
const CHAT_BESIDE_TAG: u8 = 3;
/// Receiver group of the chatting room (group 0 counts the pings).
const CHAT_GROUP: usize = 1;

/// Connections per source address before another one is used.
const PER_SOURCE: usize = 25_000;

pub async fn run(common: &Common, args: &Args, stats: &Arc<Stats>) -> Result<Value, String> {
    let conns = args.usize("conns", 10_000)?.max(1);
    let room_size = args.usize("room-size", 10)?.max(1);
    let settle = args.f64("settle", 2.0)?.max(0.0);
    let sources = match args.opt_u64("sources")? {
        Some(n) => (n as usize).clamp(1, 254),
        None => conns.div_ceil(PER_SOURCE),
    };
    let target = common.target(0).clone();
    if sources > 1 && !target.addr.is_ipv4() {
        return Err("more than one source address needs an IPv4 loopback --url".into());
    }
    let chat_members = args.usize("chat-members", 0)?;
    let chat_senders = args.usize("chat-senders", 2)?.clamp(1, chat_members.max(1));
    let chat_rate = args.f64("chat-rate", 50.0)?;
    if chat_members > 0 && chat_rate <= 0.0 {
        return Err("--chat-rate must be positive".into());
    }
    check_fd_limits(conns + chat_members, common.pid)?;
    if common.pid.is_none() {
        eprintln!("note: without --pid the server's memory cannot be measured");
    }
    let rss_before = common.pid.and_then(|p| proc_stats::rss_bytes(Some(p)).ok());

    // The chatting room, measured before any idle socket exists.
    let paced = Mode::Paced { per_sec: chat_rate };
    let chat = if chat_members > 0 {
        let layout = Layout {
            rooms: 1,
            members: (0..chat_members)
                .map(|i| MemberSpec {
                    url: 0,
                    group: Some(CHAT_GROUP),
                    sender: i < chat_senders,
                })
                .collect(),
        };
        let chat = load::setup(common, layout, stats).await?;
        let alone = chat
            .run_phase(common, "chat: room alone", CHAT_ALONE_TAG, paced)
            .await;
        Some((chat, alone))
    } else {
        None
    };

    // Connect and join, room by room.
    let rooms = conns.div_ceil(room_size);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (ping_tx, ping_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    stats.set_label(format!("set-up: 0/{conns} connected"));
    for r in 0..rooms {
        let in_room = room_size.min(conns - r * room_size);
        let ctx = Ctx {
            target: target.clone(),
            stats: stats.clone(),
            sem: sem.clone(),
            ready: ready_tx.clone(),
            ping: ping_rx.clone(),
            sources,
        };
        tokio::spawn(async move {
            let (id_tx, id_rx) = tokio::sync::oneshot::channel();
            ctx.clone().spawn(
                r * room_size,
                0,
                Enter::Create(format!("idle-{r}")),
                Some(id_tx),
            );
            let Ok(room_id) = id_rx.await else { return };
            for k in 1..in_room {
                ctx.clone()
                    .spawn(r * room_size + k, k, Enter::Join(room_id), None);
            }
        });
    }
    drop(ready_tx);
    let limit = Duration::from_secs(60 + conns as u64 / 50);
    await_ready(&mut ready_rx, conns, limit, stats).await?;

    stats.set_label(format!("{conns} connections: settling"));
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let rss_connected = common.pid.and_then(|p| proc_stats::rss_bytes(Some(p)).ok());

    // The same room beside the idle sockets (before they are pinged).
    // The room's sockets stay open (and silent) until the run ends.
    let mut chat_load = None;
    let chat = match chat {
        Some((chat, alone)) => {
            let name = format!("chat: room beside {conns} idle sockets");
            let beside = chat.run_phase(common, &name, CHAT_BESIDE_TAG, paced).await;
            chat_load = Some(chat);
            Some((alone, beside))
        }
        None => None,
    };

    // Hold: one ping per connection, then idle for the rest of --duration.
    stats.set_label(format!("{conns} connections: holding"));
    let cpu0 = CpuSnapshot::take(common.pid);
    let start = tokio::time::Instant::now();
    ping_tx.send_replace(true);
    tokio::time::sleep(common.duration()).await;
    let window = start.elapsed().as_secs_f64();
    let (server_cpu, bench_cpu) = CpuSnapshot::take(common.pid).since(&cpu0);
    let rss_after = common.pid.and_then(|p| proc_stats::rss_bytes(Some(p)).ok());
    stats.stopping.store(true, Ordering::Relaxed);
    drop(chat_load);

    let pongs = stats.delivered(1, 0);
    if pongs < conns as u64 {
        let missing = conns as u64 - pongs;
        stats
            .errors
            .undelivered
            .fetch_add(missing, Ordering::Relaxed);
        stats
            .errors
            .sample(|| format!("{missing} connections did not answer a ping within {window:.1} s"));
    }
    let rtt = stats.latency(1, 0);
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some((a as f64 - b as f64) / conns as f64),
        _ => None,
    };
    let mib = |b: Option<u64>| b.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0));
    let mut summary = vec![
        format!(
            "{conns} connections in {rooms} rooms of {room_size} from {sources} source address(es)"
        ),
        format!(
            "server RSS: before {}, connected {}, after ping + hold {} => {} per connection",
            mib(rss_before).unwrap_or("?".into()),
            mib(rss_connected).unwrap_or("?".into()),
            mib(rss_after).unwrap_or("?".into()),
            per_conn.map_or("? (needs --pid)".into(), |b| format!("{:.0} bytes", b)),
        ),
        format!(
            "ping round trip over all connections: p50 {:.2} p99 {:.2} max {:.2} ms ({} pongs); server CPU while holding: {}",
            rtt.quantile(0.5) as f64 / 1e6,
            rtt.quantile(0.99) as f64 / 1e6,
            rtt.max() as f64 / 1e6,
            pongs,
            server_cpu.map_or("?".into(), |s| format!("{:.2} s in {window:.1} s", s)),
        ),
    ];
    let chat_json = chat.as_ref().map(|(alone, beside)| {
        let ratio = chat_p99_ratio(alone, beside);
        summary.push(alone.summary());
        summary.push(beside.summary());
        summary.push(format!(
            "chatting room p99 beside {conns} idle sockets / alone = {}",
            ratio.map_or("n/a".into(), |r| format!("{r:.2}"))
        ));
        json!({
            "alone": alone.to_json(&["idle_pings", "members"]),
            "beside_idle": beside.to_json(&["idle_pings", "members"]),
            "alone_latency_ms": latency_json(&alone.latency_all()),
            "beside_idle_latency_ms": latency_json(&beside.latency_all()),
            "p99_ratio": ratio.map(|r| (r * 100.0).round() / 100.0),
        })
    });
    Ok(json!({
        "parameters": {
            "conns": conns,
            "room_size": room_size,
            "rooms": rooms,
            "sources": sources,
            "settle_secs": settle,
            "chat_members": chat_members,
            "chat_senders": (chat_members > 0).then_some(chat_senders),
            "chat_rate": (chat_members > 0).then_some(chat_rate),
        },
        "chat": chat_json,
        "duration_secs": window,
        "deliveries": pongs,
        "deliveries_per_sec": pongs as f64 / window.max(1e-9),
        "latency_ms": latency_json(&rtt),
        "server_cpu_us_per_delivery": Value::Null,
        "server_cpu_seconds": server_cpu,
        "hold_bench_cpu_seconds": bench_cpu,
        "rss_before_bytes": rss_before,
        "rss_connected_bytes": rss_connected,
        "rss_bytes": rss_after,
        "rss_per_conn_bytes": per_conn.map(|v| v.round()),
        "bench_rss_bytes": proc_stats::rss_bytes(None).ok(),
        "summary": summary,
    }))
}

/// p99 of the chatting room beside the idle sockets over its p99 alone.
fn chat_p99_ratio(alone: &PhaseResult, beside: &PhaseResult) -> Option<f64> {
    let (a, b) = (alone.latency_all(), beside.latency_all());
    (a.count() > 0 && b.count() > 0)
        .then(|| b.quantile(0.99) as f64 / (a.quantile(0.99) as f64).max(1e3))
}

#[derive(Clone)]
struct Ctx {
    target: crate::ws::Target,
    stats: Arc<Stats>,
    sem: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    ping: watch::Receiver<bool>,
    sources: usize,
}

impl Ctx {
    /// Connection `i` (member `k` of its room): join, then idle, answering
    /// pings, and send one application ping when told to.
    fn spawn(
        self,
        i: usize,
        k: usize,
        enter: Enter,
        room_id: Option<tokio::sync::oneshot::Sender<u64>>,
    ) {
        tokio::spawn(async move {
            let source = (self.sources > 1)
                .then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % self.sources) as u8)));
            let permit = self.sem.clone().acquire_owned().await;
            let joined = async {
                let mut conn = Conn::open(&self.target, source, seed(i, 2)).await?;
                let id = conn.enter(&enter, &format!("b{k}")).await?;
                Ok::<_, String>((conn, id))
            }
            .await;
            drop(permit);
            let mut conn = match joined {
                Ok((conn, id)) => {
                    if let Some(tx) = room_id {
                        let _ = tx.send(id);
                    }
                    let _ = self.ready.send(Ok(()));
                    conn
                }
                Err(e) => {
                    let _ = self.ready.send(Err(format!("connection {i}: {e}")));
                    return;
                }
            };
            idle_loop(&mut conn, self.ping, &self.stats, i).await;
        });
    }
}

enum Event {
    Read(std::io::Result<usize>),
    Ping,
    Done,
}

async fn idle_loop(conn: &mut Conn, mut ping: watch::Receiver<bool>, stats: &Stats, i: usize) {
    let mut sent_at: Option<u64> = None;
    loop {
        let event = tokio::select! {
            r = conn.rd.fill() => Event::Read(r),
            r = ping.changed(), if sent_at.is_none() => {
                if r.is_ok() { Event::Ping } else { Event::Done }
            }
        };
        match event {
            Event::Done => return,
            Event::Ping => {
                sent_at = Some(now_ns());
                if let Err(e) = conn.wr.send_text(&proto::ping_frame("k")).await {
                    return stats.connection_lost(|| format!("ping: {e}"));
                }
            }
            Event::Read(Ok(0)) => {
                return stats.connection_lost(|| "server closed an idle connection".into())
            }
            Event::Read(Err(e)) => return stats.connection_lost(|| format!("read: {e}")),
            Event::Read(Ok(_)) => loop {
                let msg = match conn.rd.next_msg() {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        stats.errors.protocol.fetch_add(1, Ordering::Relaxed);
                        return stats.errors.sample(|| format!("protocol: {e}"));
                    }
                };
                match msg {
                    Msg::Text(p) => {
                        let f = conn.rd.bytes(p);
                        if proto::frame_type(f) == Some(b"pong") {
                            if let Some(t0) = sent_at {
                                stats.commit(0, i, &[0, 1, 0, 0], &[(1, now_ns() - t0)]);
                            }
                        }
                    }
                    Msg::Ping(p) => {
                        let payload = conn.rd.bytes(p).to_vec();
                        if let Err(e) = conn.wr.send_pong(&payload).await {
                            return stats.connection_lost(|| format!("pong: {e}"));
                        }
                    }
                    Msg::Close(code) => {
                        return stats.connection_lost(|| {
                            format!("server closed an idle connection ({code:?})")
                        })
                    }
                    Msg::Pong | Msg::Binary => {}
                }
            },
        }
    }
}
