//! `flood`: does a client flooding the server slow the others down? A room
//! of `--members` (default 10) with `--senders` (default 2) chatting at
//! `--rate` chats/s each (default 50) is measured twice: alone (phase 1),
//! then beside `--flooders` clients (default 1) that send `ping` frames as
//! fast as the socket takes them, reconnecting whenever the server closes
//! them (phase 2). The report gives both latencies, the ratio of their
//! p99s, and what the flooders managed. Run the server with its default
//! limits: they are what is being measured.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::load::{self, Layout, Mode};
use super::{Common, Conn};
use crate::histogram::Histogram;
use crate::stats::{latency_json, Stats};
use crate::ws::{Msg, Target};
use crate::Args;

pub const OPTIONS: &[&str] = &["members", "senders", "rate", "flooders"];

/// Frames a flooder writes per syscall.
const FLOOD_BATCH: usize = 64;

pub async fn run(common: &Common, args: &Args, stats: &Arc<Stats>) -> Result<Value, String> {
    let members = args.usize("members", 10)?.max(2);
    let senders = args.usize("senders", 2)?.clamp(1, members);
    let rate = args.f64("rate", 50.0)?;
    if rate <= 0.0 {
        return Err("--rate must be positive".into());
    }
    let flooders = args.usize("flooders", 1)?.max(1);
    let layout = Layout::uniform(1, members, senders);
    let load = load::setup(common, layout, stats).await?;
    let paced = Mode::Paced { per_sec: rate };
    let alone = load
        .run_phase(common, "phase 1: without the flood", 1, paced)
        .await;
    let flood = Flood::start(common.target(0).clone(), flooders);
    let beside = load
        .run_phase(common, "phase 2: beside the flood", 2, paced)
        .await;
    let flood = flood.stop().await;
    load.stop();

    let (h1, h2) = (alone.latency_all(), beside.latency_all());
    let p99 = |h: &Histogram| h.quantile(0.99) as f64 / 1e6;
    let ratio = (h1.count() > 0 && h2.count() > 0).then(|| p99(&h2) / p99(&h1).max(1e-3));
    let summary = vec![
        alone.summary(),
        beside.summary(),
        format!(
            "flood: {} frames ({:.0}/s) over {} connections ({} closed by the server), {} KiB answered; p99 beside the flood / alone = {}",
            flood.frames,
            flood.frames as f64 / flood.secs.max(1e-9),
            flood.connections,
            flood.closed,
            flood.bytes_received / 1024,
            ratio.map_or("n/a".into(), |r| format!("{r:.2}")),
        ),
    ];
    Ok(json!({
        "parameters": {
            "members": members,
            "senders": senders,
            "rate": rate,
            "flooders": flooders,
        },
        "deliveries": beside.deliveries(),
        "deliveries_per_sec": (beside.deliveries_per_sec() * 10.0).round() / 10.0,
        "server_cpu_us_per_delivery": beside
            .server_us_per_delivery()
            .map(|v| (v * 1000.0).round() / 1000.0),
        "baseline_latency_ms": latency_json(&h1),
        "latency_ms": latency_json(&h2),
        "p99_ratio": ratio.map(|r| (r * 100.0).round() / 100.0),
        "flood": {
            "frames": flood.frames,
            "frames_per_sec": (flood.frames as f64 / flood.secs.max(1e-9)).round(),
            "connections": flood.connections,
            "closed_by_server": flood.closed,
            "connect_errors": flood.connect_errors,
            "bytes_received": flood.bytes_received,
            "secs": (flood.secs * 100.0).round() / 100.0,
        },
        "duration_secs": alone.window_secs + beside.window_secs,
        "phases": [alone.to_json(&["members"]), beside.to_json(&["members"])],
        "summary": summary,
    }))
}

/// What the flooders did.
struct FloodReport {
    frames: u64,
    connections: u64,
    closed: u64,
    connect_errors: u64,
    bytes_received: u64,
    secs: f64,
}

#[derive(Default)]
struct FloodCounters {
    frames: AtomicU64,
    connections: AtomicU64,
    closed: AtomicU64,
    connect_errors: AtomicU64,
    bytes_received: AtomicU64,
}

/// The flooding clients, running until stopped.
struct Flood {
    stop: Arc<AtomicBool>,
    counters: Arc<FloodCounters>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Flood {
    fn start(target: Target, flooders: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(FloodCounters::default());
        let tasks = (0..flooders)
            .map(|i| {
                let (target, stop, counters) = (target.clone(), stop.clone(), counters.clone());
                tokio::spawn(flood(target, i as u64, stop, counters))
            })
            .collect();
        Flood {
            stop,
            counters,
            tasks,
            started: Instant::now(),
        }
    }

    async fn stop(self) -> FloodReport {
        self.stop.store(true, Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        for task in self.tasks {
            // A write blocked on a server that stopped reading ends with
            // the runtime; do not wait for it forever.
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FloodReport {
            frames: get(&c.frames),
            connections: get(&c.connections),
            closed: get(&c.closed),
            connect_errors: get(&c.connect_errors),
            bytes_received: get(&c.bytes_received),
            secs,
        }
    }
}

/// One flooder: connect, write pings as fast as the socket takes them while
/// a reader drains the answers, and connect again once the server closes.
async fn flood(target: Target, seed: u64, stop: Arc<AtomicBool>, counters: Arc<FloodCounters>) {
    let frame = crate::proto::ping_frame("f");
    let mut attempt = 0u64;
    while !stop.load(Ordering::Relaxed) {
        attempt += 1;
        let conn = match Conn::open(&target, None, seed * 1_000_003 + attempt).await {
            Ok(c) => c,
            Err(_) => {
                counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let Conn { mut rd, mut wr } = conn;
        let gone = Arc::new(AtomicBool::new(false));
        let reader = {
            let (gone, counters) = (gone.clone(), counters.clone());
            tokio::spawn(async move {
                loop {
                    match rd.fill().await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            counters
                                .bytes_received
                                .fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                    let mut closed = false;
                    while let Ok(Some(msg)) = rd.next_msg() {
                        closed |= matches!(msg, Msg::Close(_));
                    }
                    if closed {
                        break;
                    }
                }
                gone.store(true, Ordering::Relaxed);
            })
        };
        while !stop.load(Ordering::Relaxed) && !gone.load(Ordering::Relaxed) {
            for _ in 0..FLOOD_BATCH {
                wr.queue_text(&frame);
            }
            // Not cut short by a timeout: half a frame would break the
            // framing, which is another test.
            match wr.flush().await {
                Ok(()) => {
                    counters
                        .frames
                        .fetch_add(FLOOD_BATCH as u64, Ordering::Relaxed);
                }
                Err(_) => break,
            }
        }
        if gone.load(Ordering::Relaxed) {
            counters.closed.fetch_add(1, Ordering::Relaxed);
        }
        reader.abort();
    }
}
