//! `soak`: clients come and go for `--duration` seconds, and afterwards the
//! server must be back where it started. `--rooms` rooms (default 6) each
//! keep an anchor member; `--workers` clients (default 24) each repeat:
//! connect, join a room, chat 1 to 5 messages (each waiting for its echo),
//! then either leave and close properly or drop the connection with no
//! close frame at all. The server's resident memory and open descriptors
//! are read after a first round of the same load (`--warmup` seconds) has
//! settled, and again `--settle` seconds (default 3) after the measured
//! round; the report gives both and their growth.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::churn::start_anchors;
use super::{seed, Common, Conn, Enter};
use crate::proc_stats::{open_fds, rss_bytes};
use crate::proto;
use crate::stats::Stats;
use crate::ws::Rng;
use crate::Args;

pub const OPTIONS: &[&str] = &["workers", "rooms", "settle"];

/// What the workers did.
#[derive(Default)]
struct Counters {
    cycles: AtomicU64,
    chats: AtomicU64,
    polite: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

pub async fn run(common: &Common, args: &Args, stats: &Arc<Stats>) -> Result<Value, String> {
    let workers = args.usize("workers", 24)?.max(1);
    let rooms = args.usize("rooms", 6)?.max(1);
    let settle = args.f64("settle", 3.0)?.max(0.0);
    let pid = common
        .pid
        .ok_or("soak needs --pid: it compares the server's memory and descriptors")?;
    let target = common.target(0).clone();

    // Anchors: one member per room that stays, so rooms never empty.
    let room_ids = start_anchors(common, rooms, "soak", stats).await?;
    let room_ids = Arc::new(room_ids);

    // The baseline is the server after a first round of the same load
    // (`--warmup` seconds, then `--settle`): what a soak looks for is growth
    // that does not stop, not the allocator's first reservations.
    if common.warmup > 0.0 {
        stats.set_label("soak (warm-up)");
        let warmup = Arc::new(Counters::default());
        churn_for(workers, &target, &room_ids, &warmup, common.warmup).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let before = Snapshot::take(pid)?;

    stats.set_label("soak");
    let counters = Arc::new(Counters::default());
    let secs = churn_for(workers, &target, &room_ids, &counters, common.duration).await;
    stats.set_label("soak (settling)");
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let after = Snapshot::take(pid)?;
    stats.stopping.store(true, Ordering::Relaxed);

    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let cycles = get(&counters.cycles);
    let growth = |a: u64, b: u64| ((b as f64 / a.max(1) as f64 - 1.0) * 1000.0).round() / 10.0;
    let rss_growth = growth(before.rss, after.rss);
    let fds_growth = growth(before.fds, after.fds);
    if get(&counters.failed) > 0 {
        stats
            .errors
            .requests
            .fetch_add(get(&counters.failed), Ordering::Relaxed);
        stats
            .errors
            .sample(|| format!("{} soak cycles failed", get(&counters.failed)));
    }
    let summary = vec![format!(
        "soak: {secs:.1} s, {cycles} connections ({:.0}/s; {} left properly, {} dropped without a close), {} chats; \
         server RSS {:.1} MiB -> {:.1} MiB ({rss_growth:+.1}%), open descriptors {} -> {} ({fds_growth:+.1}%)",
        cycles as f64 / secs.max(1e-9),
        get(&counters.polite),
        get(&counters.dropped),
        get(&counters.chats),
        before.rss as f64 / 1048576.0,
        after.rss as f64 / 1048576.0,
        before.fds,
        after.fds,
    )];
    Ok(json!({
        "parameters": { "workers": workers, "rooms": rooms, "settle_secs": settle },
        "duration_secs": secs,
        "cycles": cycles,
        "cycles_per_sec": (cycles as f64 / secs.max(1e-9) * 10.0).round() / 10.0,
        "left_properly": get(&counters.polite),
        "dropped_without_close": get(&counters.dropped),
        "chats": get(&counters.chats),
        "deliveries": get(&counters.chats),
        "deliveries_per_sec": (get(&counters.chats) as f64 / secs.max(1e-9) * 10.0).round() / 10.0,
        "latency_ms": Value::Null,
        "server_cpu_us_per_delivery": Value::Null,
        "rss_before_bytes": before.rss,
        "rss_after_bytes": after.rss,
        "rss_growth_pct": rss_growth,
        "fds_before": before.fds,
        "fds_after": after.fds,
        "fds_growth_pct": fds_growth,
        "summary": summary,
    }))
}

/// Runs the workers for `secs` seconds; returns how long they ran.
async fn churn_for(
    workers: usize,
    target: &crate::ws::Target,
    rooms: &Arc<Vec<u64>>,
    counters: &Arc<Counters>,
    secs: f64,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (target, rooms, stop, counters) = (
                target.clone(),
                rooms.clone(),
                stop.clone(),
                counters.clone(),
            );
            tokio::spawn(worker(w, target, rooms, stop, counters))
        })
        .collect();
    let start = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(35), h).await;
    }
    start.elapsed().as_secs_f64()
}

/// The server's resident memory and open descriptors.
struct Snapshot {
    rss: u64,
    fds: u64,
}

impl Snapshot {
    fn take(pid: u32) -> Result<Snapshot, String> {
        Ok(Snapshot {
            rss: rss_bytes(Some(pid)).map_err(|e| format!("RSS of {pid}: {e}"))?,
            fds: open_fds(pid).map_err(|e| format!("descriptors of {pid}: {e}"))?,
        })
    }
}

/// One client's life, over and over until `stop`.
async fn worker(
    w: usize,
    target: crate::ws::Target,
    rooms: Arc<Vec<u64>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) {
    let mut rng = Rng::new(seed(w, 6));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // A fresh nickname each time: the previous life of this worker may
        // still be leaving the room.
        n += 1;
        let nickname = format!("s{w}-{n}");
        let cycle = async {
            let mut conn = Conn::open(&target, None, rng.next_u64()).await?;
            let room = rooms[(rng.next_u64() % rooms.len() as u64) as usize];
            conn.enter(&Enter::Join(room), &nickname).await?;
            for i in 0..=rng.next_u64() % 5 {
                let chat = format!(r#"{{"type":"chat","content":"soak {w} {i}","ref":"c"}}"#);
                let reply = conn.request(chat.as_bytes(), "c").await?;
                if reply.kind != "message" {
                    return Err(format!("chat answered {}", reply.describe()));
                }
                counters.chats.fetch_add(1, Ordering::Relaxed);
            }
            if rng.next_u64().is_multiple_of(2) {
                conn.request(&proto::leave_frame("l"), "l").await?;
                let _ = conn.wr.send_close(1000).await;
                counters.polite.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // Dropped here: a polite client after its close frame, the
            // others with no close at all.
            Ok::<_, String>(())
        };
        match cycle.await {
            Ok(()) => {
                counters.cycles.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
