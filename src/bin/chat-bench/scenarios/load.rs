//! The message-load engine behind `fanout`, `rooms` and `cluster`: rooms of
//! members, some of them senders, driven through phases.
//!
//! - Every member is one socket with one reader task. The reader scans
//!   `message` frames for the id (order check) and our send stamp
//!   (latency), and commits counts once per socket read.
//! - A sender also has a writer task, driven by a [`Plan`] on a watch
//!   channel: `Closed` keeps at most `window` of its own chats unanswered
//!   (the echo carrying its `ref` answers one) and all senders together at
//!   most `window × senders` chats not yet at every receiver, so the
//!   offered load follows what the server (and every reader) absorbs;
//!   `Paced` sends at a fixed rate.
//! - A phase: warm-up (tag 0), measured window (tag n), then the senders
//!   stop and the window's messages are drained. Deliveries are counted by
//!   the tag in the content, so a message sent in the window counts even
//!   when it arrives after it.
//! - [`Load::close`] ends a load: every member sends a WebSocket close and
//!   waits for the server's, so a sweep (`scale`) can measure its next step
//!   without the previous step's sockets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Mutex as AsyncMutex, Notify, Semaphore};

use super::{await_ready, handle_control, seed, Common, Conn, Enter};
use crate::histogram::Histogram;
use crate::proc_stats::CpuSnapshot;
use crate::proto;
use crate::stats::{latency_json, now_ns, si, Stats, MAX_GROUPS, MAX_TAGS};
use crate::ws::{Msg, WsReader, WsWriter};

/// Most chats one paced writer sends in a single write when it is behind.
const MAX_BURST: u64 = 256;

/// One member of every room.
#[derive(Debug, Clone, Copy)]
pub struct MemberSpec {
    /// Index into `Common::targets` (0 = `--url`, 1 = `--url2`).
    pub url: usize,
    /// Receiver group its deliveries count in; `None` = not counted.
    pub group: Option<usize>,
    pub sender: bool,
}

/// `rooms` identical rooms; `members[0]` creates each room.
#[derive(Debug, Clone)]
pub struct Layout {
    pub rooms: usize,
    pub members: Vec<MemberSpec>,
}

impl Layout {
    /// `rooms` rooms of `size` members on the first URL, all counted in one
    /// group, the first `senders` of each room sending.
    pub fn uniform(rooms: usize, size: usize, senders: usize) -> Layout {
        Layout {
            rooms,
            members: (0..size)
                .map(|i| MemberSpec {
                    url: 0,
                    group: Some(0),
                    sender: i < senders,
                })
                .collect(),
        }
    }

    /// Members of group `g` in one room.
    fn group_size(&self, g: usize) -> u64 {
        self.members.iter().filter(|m| m.group == Some(g)).count() as u64
    }

    pub fn senders(&self) -> usize {
        self.rooms * self.members.iter().filter(|m| m.sender).count()
    }

    pub fn connections(&self) -> usize {
        self.rooms * self.members.len()
    }
}

/// How senders send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Idle,
    /// At most `window` own chats unanswered per sender.
    Closed {
        window: u64,
    },
    /// `per_sec` chats per second per sender.
    Paced {
        per_sec: f64,
    },
}

impl Mode {
    fn describe(&self) -> Value {
        match *self {
            Mode::Idle => json!({"mode": "idle"}),
            Mode::Closed { window } => json!({"mode": "closed_loop", "window": window}),
            Mode::Paced { per_sec } => {
                json!({"mode": "paced", "rate_per_sender": (per_sec * 10.0).round() / 10.0})
            }
        }
    }
}

/// What senders do now: mode, tag for content, and a cap on chats of the tag.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    tag: u8,
    mode: Mode,
    cap: u64,
}

/// A set-up load, ready to run phases.
pub struct Load {
    plan: watch::Sender<Plan>,
    stats: Arc<Stats>,
    layout: Layout,
    pub room_ids: Vec<u64>,
    /// Set to `true` by [`Load::close`]: every reader closes its socket.
    shutdown: watch::Sender<bool>,
    /// Every member task holds a sender; `recv` gives `None` once all ended.
    done: mpsc::Receiver<()>,
}

/// How long a member waits for the server's close frame (or end of
/// stream) after sending its own, when the load is closed.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// What a sender's reader tells its writer.
struct SenderLink {
    inflight: AtomicU64,
    notify: Notify,
}

/// Opens every member's socket, room by room (the first member creates
/// the room, the others join it), with at most `connect_concurrency`
/// set-ups in flight. Every reader runs from the moment its member joins,
/// so set-up traffic (`memberJoined`) never backs up.
pub async fn setup(common: &Common, layout: Layout, stats: &Arc<Stats>) -> Result<Load, String> {
    let (plan_tx, plan_rx) = watch::channel(Plan {
        tag: 0,
        mode: Mode::Idle,
        cap: u64::MAX,
    });
    let total = layout.connections();
    let senders = layout.senders().max(1);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (room_tx, mut room_rx) = mpsc::unbounded_channel();
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::channel(1);
    let spawn = Spawner {
        common: common.clone(),
        stats: stats.clone(),
        plan: plan_rx,
        ready: ready_tx,
        sem,
        senders,
        receivers: layout.group_size(0) + layout.group_size(1),
        shutdown: shutdown_rx,
        _done: done_tx,
    };
    stats.set_label(format!("set-up: 0/{total} connected"));
    for r in 0..layout.rooms {
        let spawn = spawn.clone();
        let members = layout.members.clone();
        let room_tx = room_tx.clone();
        let sender_base = r * members.iter().filter(|m| m.sender).count();
        tokio::spawn(async move {
            let (id_tx, id_rx) = tokio::sync::oneshot::channel();
            let title = format!("bench-{r}");
            spawn.member(
                r,
                0,
                members[0],
                Enter::Create(title),
                sender_base,
                Some(id_tx),
            );
            let Ok(room_id) = id_rx.await else { return };
            let _ = room_tx.send((r, room_id));
            let mut sender_ix = sender_base + usize::from(members[0].sender);
            for (i, spec) in members.iter().enumerate().skip(1) {
                spawn.member(r, i, *spec, Enter::Join(room_id), sender_ix, None);
                sender_ix += usize::from(spec.sender);
            }
        });
    }
    drop(room_tx);
    let limit = Duration::from_secs(60 + total as u64 / 50);
    await_ready(&mut ready_rx, total, limit, stats).await?;
    let mut room_ids = vec![0; layout.rooms];
    while let Ok((r, id)) = room_rx.try_recv() {
        room_ids[r] = id;
    }
    Ok(Load {
        plan: plan_tx,
        stats: stats.clone(),
        layout,
        room_ids,
        shutdown: shutdown_tx,
        done: done_rx,
    })
}

#[derive(Clone)]
struct Spawner {
    common: Common,
    stats: Arc<Stats>,
    plan: watch::Receiver<Plan>,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    sem: Arc<Semaphore>,
    senders: usize,
    /// Counted receivers per room, for the closed loop's backlog bound.
    receivers: u64,
    shutdown: watch::Receiver<bool>,
    /// Dropped by each member task when it ends (see [`Load::close`]).
    _done: mpsc::Sender<()>,
}

impl Spawner {
    /// Starts member `i` of room `r`; `room_id` (for the creator) receives
    /// the new room's id.
    fn member(
        &self,
        r: usize,
        i: usize,
        spec: MemberSpec,
        enter: Enter,
        sender_ix: usize,
        room_id: Option<tokio::sync::oneshot::Sender<u64>>,
    ) {
        let s = self.clone();
        tokio::spawn(async move {
            let nickname = format!("b{i}");
            let target = s.common.target(spec.url).clone();
            let permit = s.sem.clone().acquire_owned().await;
            let joined = async {
                let mut conn = Conn::open(&target, None, seed(r * 100_000 + i, 1)).await?;
                let id = conn.enter(&enter, &nickname).await?;
                Ok::<_, String>((conn, id))
            }
            .await;
            drop(permit);
            let (conn, id) = match joined {
                Ok(v) => v,
                Err(e) => {
                    let _ = s
                        .ready
                        .send(Err(format!("room {r} member {nickname}: {e}")));
                    return;
                }
            };
            if let Some(tx) = room_id {
                let _ = tx.send(id);
            }
            let _ = s.ready.send(Ok(()));
            let Conn { rd, wr } = conn;
            let wr = Arc::new(AsyncMutex::new(wr));
            let link = spec.sender.then(|| {
                let link = Arc::new(SenderLink {
                    inflight: AtomicU64::new(0),
                    notify: Notify::new(),
                });
                tokio::spawn(writer(
                    wr.clone(),
                    s.plan.clone(),
                    link.clone(),
                    s.stats.clone(),
                    s.common.size,
                    sender_ix as f64 / s.senders as f64,
                    (s.senders as u64, s.receivers),
                ));
                link
            });
            let member = Member {
                group: spec.group,
                shard: r * 31 + i,
                link,
                stats: s.stats.clone(),
            };
            reader(rd, wr, member, s.shutdown.clone()).await;
            drop(s);
        });
    }
}

/// What a member's reader counts into.
struct Member {
    /// Receiver group; `None` = deliveries not counted.
    group: Option<usize>,
    /// Histogram shard.
    shard: usize,
    /// Set for a sender: its writer waits on the echoes counted here.
    link: Option<Arc<SenderLink>>,
    stats: Arc<Stats>,
}

/// Reads a member's socket until it closes, or until `shutdown` turns
/// `true` (then it closes the socket itself, see [`close_socket`]).
async fn reader(
    mut rd: WsReader,
    wr: Arc<AsyncMutex<WsWriter>>,
    member: Member,
    mut shutdown: watch::Receiver<bool>,
) {
    let Member {
        group,
        shard,
        link,
        stats,
    } = member;
    let mut last_id: u64 = 0;
    let mut counts = [0u64; MAX_TAGS];
    let mut lat: Vec<(u8, u64)> = Vec::with_capacity(64);
    loop {
        let read = tokio::select! {
            r = rd.fill() => r,
            closing = async { shutdown.wait_for(|&stop| stop).await.is_ok() } => {
                // `false`: the Load was dropped without closing; the
                // scenario is over, so there is nobody to report to.
                if closing {
                    close_socket(&mut rd, &wr).await;
                }
                return;
            }
        };
        match read {
            Ok(0) => return stats.connection_lost(|| "server closed a member's socket".into()),
            Ok(_) => {}
            Err(e) => return stats.connection_lost(|| format!("read: {e}")),
        }
        let now = now_ns();
        let mut echoes = 0;
        loop {
            let msg = match rd.next_msg() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    stats.errors.protocol.fetch_add(1, Ordering::Relaxed);
                    stats.errors.sample(|| format!("protocol: {e}"));
                    return;
                }
            };
            let Msg::Text(p) = msg else {
                if !handle_control(msg, &rd, &wr, &stats).await {
                    return;
                }
                continue;
            };
            let f = rd.bytes(p);
            match proto::frame_type(f) {
                Some(b"message") => {
                    let info = proto::message_info(f);
                    if let Some(id) = info.id {
                        if last_id != 0 && id != last_id + 1 {
                            stats.errors.order.fetch_add(1, Ordering::Relaxed);
                            if id <= last_id {
                                stats.errors.duplicates.fetch_add(1, Ordering::Relaxed);
                            }
                            if id > last_id {
                                stats
                                    .errors
                                    .missing_ids
                                    .fetch_add(id - last_id - 1, Ordering::Relaxed);
                            }
                            stats.errors.sample(|| {
                                format!("message id {id} after {last_id} on one connection")
                            });
                        }
                        last_id = last_id.max(id);
                    }
                    if let (Some(_), Some((tag, sent))) = (group, info.stamp) {
                        let tag = usize::from(tag).min(MAX_TAGS - 1);
                        counts[tag] += 1;
                        if tag > 0 {
                            lat.push((tag as u8, now.saturating_sub(sent)));
                        }
                    }
                    if link.is_some() && proto::chat_ref_tag(f).is_some() {
                        echoes += 1;
                    }
                }
                Some(b"error") => {
                    let code = proto::str_field(f, br#""code""#, 0).unwrap_or(b"?");
                    stats.errors.error_frame(&String::from_utf8_lossy(code), f);
                    if let Some(tag) = proto::chat_ref_tag(f) {
                        let tag = usize::from(tag).min(MAX_TAGS - 1);
                        stats.rejected[tag].fetch_add(1, Ordering::Relaxed);
                        echoes += 1;
                    }
                }
                Some(_) => {}
                None => {
                    stats.errors.protocol.fetch_add(1, Ordering::Relaxed);
                    stats
                        .errors
                        .sample(|| format!("frame without a type: {}", String::from_utf8_lossy(f)));
                }
            }
        }
        if let Some(g) = group {
            if counts.iter().any(|&c| c > 0) {
                stats.commit(g, shard, &counts, &lat);
                counts = [0; MAX_TAGS];
                lat.clear();
            }
        }
        if let Some(link) = &link {
            if echoes > 0 {
                let _ = link
                    .inflight
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                        Some(v.saturating_sub(echoes))
                    });
                link.notify.notify_one();
            }
        }
    }
}

/// Sends a WebSocket close (1000) and reads, discarding everything, until
/// the server's close frame or the end of the stream, for at most
/// [`CLOSE_WAIT`]: once it returns, the server has seen this member go.
async fn close_socket(rd: &mut WsReader, wr: &AsyncMutex<WsWriter>) {
    if wr.lock().await.send_close(1000).await.is_err() {
        return;
    }
    let drain = async {
        loop {
            match rd.fill().await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            while let Ok(Some(msg)) = rd.next_msg() {
                if let Msg::Close(_) = msg {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
}

/// Takes up to `n` sends of `tag` from the cap; how many were granted.
fn reserve(stats: &Stats, plan: &Plan, n: u64) -> u64 {
    let sent = &stats.sent[usize::from(plan.tag)];
    if plan.tag == 0 {
        sent.fetch_add(n, Ordering::Relaxed);
        return n;
    }
    let mut granted = 0;
    let _ = sent.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
        granted = n.min(plan.cap.saturating_sub(cur));
        Some(cur + granted)
    });
    granted
}

/// A sender's writing side: follows the plan until the channel closes.
async fn writer(
    wr: Arc<AsyncMutex<WsWriter>>,
    mut plan_rx: watch::Receiver<Plan>,
    link: Arc<SenderLink>,
    stats: Arc<Stats>,
    size: usize,
    offset: f64,
    (senders, receivers): (u64, u64),
) {
    let mut plan = *plan_rx.borrow_and_update();
    let mut frame = Vec::with_capacity(size + 64);
    // Paced schedule: start time and chats sent since.
    let mut sched = (now_ns(), 0u64);
    loop {
        if plan_rx.has_changed().unwrap_or(true) {
            let Ok(()) = plan_rx.changed().await else {
                return;
            };
            let next = *plan_rx.borrow_and_update();
            if let Mode::Paced { per_sec } = next.mode {
                if next.mode != plan.mode {
                    // Spread senders over one interval instead of all at once.
                    sched = (now_ns() + (offset * 1e9 / per_sec) as u64, 0);
                }
            }
            plan = next;
        }
        let mut backlogged = false;
        let n = match plan.mode {
            Mode::Idle => 0,
            Mode::Closed { window } => {
                // Own chats unanswered, and all senders' chats not yet at
                // every receiver: the echo alone does not bound the backlog
                // of the other receivers' sockets.
                let own = window.saturating_sub(link.inflight.load(Ordering::Acquire));
                let all = (window * senders).saturating_sub(stats.outstanding(receivers));
                backlogged = own > 0 && all == 0;
                own.min(all)
            }
            Mode::Paced { per_sec } => {
                let elapsed = now_ns().saturating_sub(sched.0) as f64 / 1e9;
                ((elapsed * per_sec) as u64)
                    .saturating_sub(sched.1)
                    .min(MAX_BURST)
            }
        };
        let n = if n > 0 { reserve(&stats, &plan, n) } else { 0 };
        if n > 0 {
            let t = now_ns();
            let mut w = wr.lock().await;
            for _ in 0..n {
                proto::chat_frame(&mut frame, plan.tag, t, size);
                w.queue_text(&frame);
            }
            link.inflight.fetch_add(n, Ordering::AcqRel);
            sched.1 += n;
            if let Err(e) = w.flush().await {
                stats.connection_lost(|| format!("send: {e}"));
                return;
            }
            continue;
        }
        // Nothing to send now: wait for an echo, the next paced slot or a
        // new plan.
        let wait = match plan.mode {
            Mode::Paced { per_sec } => {
                let due = sched.0 + ((sched.1 + 1) as f64 * 1e9 / per_sec) as u64;
                Duration::from_nanos(due.saturating_sub(now_ns()))
            }
            _ if backlogged => Duration::from_millis(1),
            _ => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = link.notify.notified(), if matches!(plan.mode, Mode::Closed { .. }) => {}
            _ = tokio::time::sleep(wait) => {}
            r = plan_rx.changed() => {
                if r.is_err() {
                    return;
                }
                // Picked up at the top of the loop.
                plan_rx.mark_changed();
            }
        }
    }
}

/// What one phase measured.
pub struct PhaseResult {
    pub name: String,
    pub mode: Mode,
    pub window_secs: f64,
    pub sent: u64,
    pub rejected: u64,
    pub delivered: [u64; MAX_GROUPS],
    pub expected: [u64; MAX_GROUPS],
    pub latency: Vec<Histogram>,
    pub server_cpu_secs: Option<f64>,
    pub bench_cpu_secs: f64,
}

impl PhaseResult {
    pub fn deliveries(&self) -> u64 {
        self.delivered.iter().sum()
    }

    /// The latency of every counted group together.
    pub fn latency_all(&self) -> Histogram {
        let mut all = Histogram::new();
        for h in &self.latency {
            all.merge(h);
        }
        all
    }

    pub fn deliveries_per_sec(&self) -> f64 {
        self.deliveries() as f64 / self.window_secs.max(1e-9)
    }

    /// Chats accepted per second, all senders together.
    pub fn messages_per_sec(&self) -> f64 {
        (self.sent - self.rejected) as f64 / self.window_secs.max(1e-9)
    }

    pub fn server_us_per_delivery(&self) -> Option<f64> {
        let d = self.deliveries();
        self.server_cpu_secs
            .filter(|_| d > 0)
            .map(|s| s * 1e6 / d as f64)
    }

    pub fn to_json(&self, group_names: &[&str]) -> Value {
        let mut latency = serde_json::Map::new();
        let mut delivered = serde_json::Map::new();
        for (g, name) in group_names.iter().enumerate() {
            latency.insert(name.to_string(), latency_json(&self.latency[g]));
            delivered.insert(name.to_string(), json!(self.delivered[g]));
        }
        let all = self.latency_all();
        let round = |v: f64, d: f64| (v * d).round() / d;
        json!({
            "name": self.name,
            "send": self.mode.describe(),
            "duration_secs": round(self.window_secs, 1000.0),
            "messages": self.sent - self.rejected,
            "messages_per_sec": round(self.messages_per_sec(), 10.0),
            "rejected": self.rejected,
            "deliveries": self.deliveries(),
            "deliveries_per_sec": round(self.deliveries_per_sec(), 10.0),
            "deliveries_by_group": delivered,
            "expected_deliveries": self.expected.iter().sum::<u64>(),
            "latency_ms": latency_json(&all),
            "latency_ms_by_group": latency,
            "server_cpu_seconds": self.server_cpu_secs.map(|s| round(s, 100.0)),
            "server_cpu_cores": self.server_cpu_secs.map(|s| round(s / self.window_secs.max(1e-9), 100.0)),
            "server_cpu_us_per_delivery": self.server_us_per_delivery().map(|v| round(v, 1000.0)),
            "bench_cpu_seconds": round(self.bench_cpu_secs, 100.0),
            "bench_cpu_cores": round(self.bench_cpu_secs / self.window_secs.max(1e-9), 100.0),
        })
    }

    /// One line for the human summary.
    pub fn summary(&self) -> String {
        let all = self.latency_all();
        let ms = |ns: u64| ns as f64 / 1e6;
        let cpu = match (self.server_cpu_secs, self.server_us_per_delivery()) {
            (Some(s), Some(us)) => format!(
                ", server CPU {:.2} cores = {us:.3} µs/delivery",
                s / self.window_secs
            ),
            _ => String::new(),
        };
        format!(
            "{}: {:.2} s, {} msgs ({}/s), {} deliveries ({}/s), latency p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms{cpu}, bench CPU {:.2} cores",
            self.name,
            self.window_secs,
            self.sent - self.rejected,
            si(self.messages_per_sec()),
            self.deliveries(),
            si(self.deliveries_per_sec()),
            ms(all.quantile(0.5)),
            ms(all.quantile(0.9)),
            ms(all.quantile(0.99)),
            ms(all.max()),
            self.bench_cpu_secs / self.window_secs,
        )
    }
}

impl Load {
    /// Runs one phase: warm-up, the measured window (until `--duration`
    /// or `--count`), then a drain of the window's messages.
    pub async fn run_phase(&self, common: &Common, name: &str, tag: u8, mode: Mode) -> PhaseResult {
        let tag_ix = usize::from(tag);
        if common.warmup > 0.0 {
            self.stats.set_label(format!("{name} (warm-up)"));
            self.plan.send_replace(Plan {
                tag: 0,
                mode,
                cap: u64::MAX,
            });
            tokio::time::sleep(Duration::from_secs_f64(common.warmup)).await;
        }
        self.stats.set_label(name.to_string());
        let cpu0 = CpuSnapshot::take(common.pid);
        let start = tokio::time::Instant::now();
        self.plan.send_replace(Plan {
            tag,
            mode,
            cap: common.count,
        });
        let end = start + common.duration();
        while tokio::time::Instant::now() < end
            && self.stats.sent[tag_ix].load(Ordering::Relaxed) < common.count
        {
            tokio::time::sleep_until(
                end.min(tokio::time::Instant::now() + Duration::from_millis(10)),
            )
            .await;
        }
        self.plan.send_replace(Plan {
            tag: 0,
            mode: Mode::Idle,
            cap: 0,
        });
        let window_secs = start.elapsed().as_secs_f64();
        let cpu1 = CpuSnapshot::take(common.pid);
        let (server_cpu_secs, bench_cpu_secs) = cpu1.since(&cpu0);

        // Drain: wait for every accepted chat of the window to reach every
        // counted member.
        self.stats.set_label(format!("{name} (drain)"));
        let drain_end = tokio::time::Instant::now() + Duration::from_secs_f64(common.drain);
        // Each accepted chat reaches every counted member of its room.
        let expected = |s: &Stats| -> [u64; MAX_GROUPS] {
            let sent = s.sent[tag_ix].load(Ordering::Relaxed);
            let accepted = sent.saturating_sub(s.rejected[tag_ix].load(Ordering::Relaxed));
            std::array::from_fn(|g| accepted * self.layout.group_size(g))
        };
        loop {
            let e = expected(&self.stats);
            let done = (0..MAX_GROUPS).all(|g| self.stats.delivered(tag_ix, g) >= e[g]);
            if done || tokio::time::Instant::now() >= drain_end || self.stats.stopping() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let expected = expected(&self.stats);
        let delivered: [u64; MAX_GROUPS] = std::array::from_fn(|g| self.stats.delivered(tag_ix, g));
        let missing: u64 = (0..MAX_GROUPS)
            .map(|g| expected[g].saturating_sub(delivered[g]))
            .sum();
        // Chats written into a connection the server closed were never
        // accepted: the loss is reported as `closed`, not as deliveries.
        let lost_connections = self.stats.errors.closed.load(Ordering::Relaxed) > 0;
        if missing > 0 && !lost_connections {
            self.stats
                .errors
                .undelivered
                .fetch_add(missing, Ordering::Relaxed);
            self.stats.errors.sample(|| {
                format!(
                    "{name}: {missing} deliveries still missing {:.1} s after the window",
                    common.drain
                )
            });
        }
        PhaseResult {
            name: name.to_string(),
            mode,
            window_secs,
            sent: self.stats.sent[tag_ix].load(Ordering::Relaxed),
            rejected: self.stats.rejected[tag_ix].load(Ordering::Relaxed),
            delivered,
            expected,
            latency: (0..MAX_GROUPS)
                .map(|g| self.stats.latency(tag_ix, g))
                .collect(),
            server_cpu_secs,
            bench_cpu_secs,
        }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Closes every member's socket (a WebSocket close each, answered by
    /// the server's) and waits until all member tasks have ended, for at
    /// most `limit`. Senders stop first; nothing is counted as lost.
    pub async fn close(self, limit: Duration) -> Result<(), String> {
        let Load {
            plan,
            shutdown,
            mut done,
            ..
        } = self;
        // Dropping the plan ends every writer.
        drop(plan);
        shutdown.send_replace(true);
        // Every member task holds a `done` sender: `None` once all ended.
        match tokio::time::timeout(limit, done.recv()).await {
            Ok(_) => Ok(()),
            Err(_) => Err(format!(
                "closing the sockets took longer than {:.0} s",
                limit.as_secs_f64()
            )),
        }
    }

    /// Stops the senders (readers keep running until the process exits).
    pub fn stop(&self) {
        self.stats.stopping.store(true, Ordering::Relaxed);
        self.plan.send_replace(Plan {
            tag: 0,
            mode: Mode::Idle,
            cap: 0,
        });
    }
}
