//! `churn`: join and leave as fast as the server allows (meant for the
//! MySQL store, where each is a transaction). `--rooms` rooms (default: one
//! per worker) each keep an anchor member so they are never deleted;
//! `--workers` connections (default 16) each repeat join → `joined`,
//! leave → `left` on room `worker % rooms`. Reports joins + leaves per
//! second and the latency of each request. `--rooms 1` measures contention
//! on one room.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use super::{await_ready, handle_control, seed, Common, Conn, Enter};
use crate::histogram::Histogram;
use crate::proc_stats::CpuSnapshot;
use crate::proto;
use crate::stats::{latency_json, now_ns, si, Stats};
use crate::ws::Msg;
use crate::Args;

pub const OPTIONS: &[&str] = &["workers", "rooms"];

/// The measured window in monotonic nanos; `end` is `u64::MAX` while open.
struct Window {
    start: AtomicU64,
    end: AtomicU64,
    ops: AtomicU64,
}

impl Window {
    fn contains(&self, t: u64) -> bool {
        t >= self.start.load(Ordering::Relaxed) && t < self.end.load(Ordering::Relaxed)
    }
}

pub async fn run(common: &Common, args: &Args, stats: &Arc<Stats>) -> Result<Value, String> {
    let workers = args.usize("workers", 16)?.max(1);
    let rooms = args.usize("rooms", workers)?.clamp(1, workers);
    let target = common.target(0).clone();

    // Anchors: one member per room that stays, so rooms never empty.
    let room_ids = start_anchors(common, rooms, "churn", stats).await?;

    // Workers.
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let window = Arc::new(Window {
        start: AtomicU64::new(u64::MAX),
        end: AtomicU64::new(u64::MAX),
        ops: AtomicU64::new(0),
    });
    let (wready_tx, mut wready_rx) = mpsc::unbounded_channel();
    let mut handles = Vec::with_capacity(workers);
    for w in 0..workers {
        let room_id = room_ids[w % rooms];
        let (target, stats, window, ready, sem) = (
            target.clone(),
            stats.clone(),
            window.clone(),
            wready_tx.clone(),
            sem.clone(),
        );
        handles.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let conn = Conn::open(&target, None, seed(w, 4)).await;
            drop(permit);
            let conn = match conn {
                Ok(c) => {
                    let _ = ready.send(Ok(()));
                    c
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("worker {w}: {e}")));
                    return None;
                }
            };
            Some(worker(conn, room_id, format!("b{w}"), window, stats).await)
        }));
    }
    drop(wready_tx);
    await_ready(&mut wready_rx, workers, Duration::from_secs(60), stats).await?;

    // Warm-up, then the measured window.
    stats.set_label("churn (warm-up)");
    tokio::time::sleep(Duration::from_secs_f64(common.warmup)).await;
    stats.set_label("churn");
    let cpu0 = CpuSnapshot::take(common.pid);
    let start = tokio::time::Instant::now();
    window.start.store(now_ns(), Ordering::Relaxed);
    let end = start + common.duration();
    while tokio::time::Instant::now() < end && window.ops.load(Ordering::Relaxed) < common.count {
        tokio::time::sleep_until(end.min(tokio::time::Instant::now() + Duration::from_millis(10)))
            .await;
    }
    window.end.store(now_ns(), Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    let (server_cpu, bench_cpu) = CpuSnapshot::take(common.pid).since(&cpu0);
    stats.set_label("churn (finishing)");
    stats.stopping.store(true, Ordering::Relaxed);

    let mut join_h = Histogram::new();
    let mut leave_h = Histogram::new();
    for h in handles {
        match tokio::time::timeout(Duration::from_secs(35), h).await {
            Ok(Ok(Some((j, l)))) => {
                join_h.merge(&j);
                leave_h.merge(&l);
            }
            Ok(_) => {}
            Err(_) => {
                stats.errors.requests.fetch_add(1, Ordering::Relaxed);
                stats
                    .errors
                    .sample(|| "a worker did not finish its request".into());
            }
        }
    }
    let ops = join_h.count() + leave_h.count();
    let mut all = join_h.clone();
    all.merge(&leave_h);
    let per_sec = ops as f64 / secs.max(1e-9);
    let us_per_op = server_cpu.filter(|_| ops > 0).map(|s| s * 1e6 / ops as f64);
    let summary = vec![format!(
        "churn: {secs:.2} s, {} joins + {} leaves = {}/s, join p50 {:.2} p99 {:.2} ms, leave p50 {:.2} p99 {:.2} ms{}, bench CPU {:.2} cores",
        join_h.count(),
        leave_h.count(),
        si(per_sec),
        join_h.quantile(0.5) as f64 / 1e6,
        join_h.quantile(0.99) as f64 / 1e6,
        leave_h.quantile(0.5) as f64 / 1e6,
        leave_h.quantile(0.99) as f64 / 1e6,
        match (server_cpu, us_per_op) {
            (Some(s), Some(us)) => format!(", server CPU {:.2} cores = {us:.1} µs/op", s / secs),
            _ => String::new(),
        },
        bench_cpu / secs,
    )];
    Ok(json!({
        "parameters": { "workers": workers, "rooms": rooms },
        "duration_secs": secs,
        "operations": ops,
        "operations_per_sec": (per_sec * 10.0).round() / 10.0,
        "joins": join_h.count(),
        "leaves": leave_h.count(),
        "deliveries": ops,
        "deliveries_per_sec": (per_sec * 10.0).round() / 10.0,
        "latency_ms": latency_json(&all),
        "join_latency_ms": latency_json(&join_h),
        "leave_latency_ms": latency_json(&leave_h),
        "server_cpu_seconds": server_cpu,
        "server_cpu_us_per_delivery": us_per_op,
        "summary": summary,
    }))
}

/// Creates `rooms` rooms titled `<title>-<n>`, each with an anchor member
/// that stays connected (reading and dropping the room's traffic) until the
/// run ends, so the rooms never empty; returns their ids, in order.
pub(super) async fn start_anchors(
    common: &Common,
    rooms: usize,
    title: &str,
    stats: &Arc<Stats>,
) -> Result<Vec<u64>, String> {
    let target = common.target(0).clone();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (id_tx, mut id_rx) = mpsc::unbounded_channel();
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    stats.set_label("set-up: anchors");
    for r in 0..rooms {
        let (target, stats, ready, id_tx, sem) = (
            target.clone(),
            stats.clone(),
            ready_tx.clone(),
            id_tx.clone(),
            sem.clone(),
        );
        let title = format!("{title}-{r}");
        tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let joined = async {
                let mut conn = Conn::open(&target, None, seed(r, 3)).await?;
                let id = conn.enter(&Enter::Create(title), "anchor").await?;
                Ok::<_, String>((conn, id))
            }
            .await;
            drop(permit);
            match joined {
                Ok((conn, id)) => {
                    let _ = id_tx.send((r, id));
                    let _ = ready.send(Ok(()));
                    anchor(conn, stats).await;
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("anchor of room {r}: {e}")));
                }
            }
        });
    }
    drop(ready_tx);
    await_ready(&mut ready_rx, rooms, Duration::from_secs(60), stats).await?;
    let mut room_ids = vec![0u64; rooms];
    while let Ok((r, id)) = id_rx.try_recv() {
        room_ids[r] = id;
    }
    Ok(room_ids)
}

/// An anchor member: reads (and drops) the room's traffic until the end.
async fn anchor(conn: Conn, stats: Arc<Stats>) {
    let Conn { mut rd, wr } = conn;
    let wr = tokio::sync::Mutex::new(wr);
    loop {
        match rd.fill().await {
            Ok(0) => return stats.connection_lost(|| "server closed an anchor".into()),
            Ok(_) => {}
            Err(e) => return stats.connection_lost(|| format!("anchor read: {e}")),
        }
        loop {
            match rd.next_msg() {
                Ok(Some(msg @ (Msg::Ping(_) | Msg::Close(_) | Msg::Binary))) => {
                    if !handle_control(msg, &rd, &wr, &stats).await {
                        return;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    stats.errors.protocol.fetch_add(1, Ordering::Relaxed);
                    return stats.errors.sample(|| format!("protocol: {e}"));
                }
            }
        }
    }
}

/// Repeats join + leave until the run stops; latencies of the requests
/// that started inside the window.
async fn worker(
    mut conn: Conn,
    room_id: u64,
    nickname: String,
    window: Arc<Window>,
    stats: Arc<Stats>,
) -> (Histogram, Histogram) {
    let mut join_h = Histogram::new();
    let mut leave_h = Histogram::new();
    let join = proto::join_frame(room_id, &nickname, "j");
    let leave = proto::leave_frame("l");
    while !stats.stopping() {
        for step in 0..2 {
            let (frame, reference, want, hist) = if step == 0 {
                (&join, "j", "joined", &mut join_h)
            } else {
                (&leave, "l", "left", &mut leave_h)
            };
            let t0 = now_ns();
            let reply = match conn.request(frame, reference).await {
                Ok(r) => r,
                Err(e) => {
                    if stats.stopping() {
                        return (join_h, leave_h);
                    }
                    stats.errors.requests.fetch_add(1, Ordering::Relaxed);
                    stats.errors.sample(|| format!("{nickname}: {e}"));
                    return (join_h, leave_h);
                }
            };
            let t1 = now_ns();
            if reply.kind == want {
                if window.contains(t0) {
                    hist.record(t1 - t0);
                    window.ops.fetch_add(1, Ordering::Relaxed);
                }
                stats.progress.fetch_add(1, Ordering::Relaxed);
            } else {
                let code = reply.code.clone().unwrap_or_else(|| reply.kind.clone());
                stats.errors.error_frame(&code, reply.text.as_bytes());
                if code == "rate_limited" {
                    // Do not hammer a limiter; the report says what to change.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                break;
            }
        }
    }
    (join_h, leave_h)
}
