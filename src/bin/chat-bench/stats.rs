//! Shared counters of a run: deliveries and latencies per measured phase
//! and receiver group, messages sent, errors by kind, and the progress line.
//! Connection tasks batch their updates (one commit per socket read), so
//! the hot path touches shared state rarely.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::histogram::Histogram;

/// Phase tags carried in chat content: 0 is "not measured" (warm-up,
/// drain), 1.. are measured phases.
pub const MAX_TAGS: usize = 4;
/// Receiver groups (e.g. same-process and cross-process receivers).
pub const MAX_GROUPS: usize = 2;
/// Histogram shards per (tag, group), so concurrent commits rarely contend.
const SHARDS: usize = 16;
/// Error descriptions kept verbatim for the report.
const MAX_SAMPLES: usize = 8;

static START: OnceLock<Instant> = OnceLock::new();

/// Marks the start of the run; monotonic timestamps count from here.
pub fn init_clock() {
    START.get_or_init(Instant::now);
}

/// Monotonic nanoseconds since the run started (the send time embedded in
/// chat content and compared on receipt).
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Errors by kind. A benchmark with any of these is suspect, and the
/// report says so instead of quietly counting fewer deliveries.
#[derive(Default)]
pub struct Errors {
    /// `error` frames with code `rate_limited` (the server's limits are
    /// too low for the load: see docs/bench/README.md).
    pub rate_limited: AtomicU64,
    /// Other `error` frames, by code.
    frames: Mutex<BTreeMap<String, u64>>,
    /// Connections the server closed (or reset) while the run needed them.
    pub closed: AtomicU64,
    /// Messages whose id was not the previous id + 1 on a connection.
    pub order: AtomicU64,
    /// Ids skipped on some connection (sum of gap sizes).
    pub missing_ids: AtomicU64,
    /// Messages whose id was not above the previous one on a connection
    /// (a repeat; also counted in `order`).
    pub duplicates: AtomicU64,
    /// Deliveries still missing when the drain timeout ran out.
    pub undelivered: AtomicU64,
    /// Frames that broke the WebSocket protocol or the wire contract.
    pub protocol: AtomicU64,
    /// Connects, upgrades, joins or requests that failed or timed out.
    pub requests: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Errors {
    /// Keeps the first few error descriptions for the report.
    pub fn sample(&self, what: impl FnOnce() -> String) {
        let mut s = lock(&self.samples);
        if s.len() < MAX_SAMPLES {
            s.push(what());
        }
    }

    /// Counts an `error` frame from the server.
    pub fn error_frame(&self, code: &str, frame: &[u8]) {
        if code == "rate_limited" {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
        } else {
            *lock(&self.frames).entry(code.to_string()).or_default() += 1;
        }
        self.sample(|| String::from_utf8_lossy(&frame[..frame.len().min(300)]).into_owned());
    }

    fn counters(&self) -> [(&'static str, u64); 8] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("rate_limited", g(&self.rate_limited)),
            ("closed", g(&self.closed)),
            ("order", g(&self.order)),
            ("missing_ids", g(&self.missing_ids)),
            ("duplicates", g(&self.duplicates)),
            ("undelivered", g(&self.undelivered)),
            ("protocol", g(&self.protocol)),
            ("requests", g(&self.requests)),
        ]
    }

    /// Every error counted (missing ids and duplicates are measures of
    /// `order`, not counted twice).
    pub fn total(&self) -> u64 {
        let frames: u64 = lock(&self.frames).values().sum();
        frames
            + self
                .counters()
                .iter()
                .filter(|(k, _)| *k != "missing_ids" && *k != "duplicates")
                .map(|(_, v)| v)
                .sum::<u64>()
    }

    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("total".into(), json!(self.total()));
        for (k, v) in self.counters() {
            m.insert(k.into(), json!(v));
        }
        m.insert("error_frames".into(), json!(*lock(&self.frames)));
        m.insert("samples".into(), json!(*lock(&self.samples)));
        Value::Object(m)
    }
}

/// Everything the connection tasks report into.
pub struct Stats {
    /// Deliveries per (tag, group).
    delivered: [[AtomicU64; MAX_GROUPS]; MAX_TAGS],
    /// Latency histograms per (tag, group, shard).
    hist: Vec<Mutex<Histogram>>,
    /// Chats written per tag.
    pub sent: [AtomicU64; MAX_TAGS],
    /// Chats of a tag the server answered with an `error` frame.
    pub rejected: [AtomicU64; MAX_TAGS],
    /// Everything received or done, for the progress line.
    pub progress: AtomicU64,
    pub errors: Errors,
    /// Set when the run is over: closes are then expected, not errors.
    pub stopping: AtomicBool,
    label: Mutex<String>,
}

impl Stats {
    pub fn new() -> Arc<Self> {
        Arc::new(Stats {
            delivered: Default::default(),
            hist: (0..MAX_TAGS * MAX_GROUPS * SHARDS)
                .map(|_| Mutex::new(Histogram::new()))
                .collect(),
            sent: Default::default(),
            rejected: Default::default(),
            progress: AtomicU64::new(0),
            errors: Errors::default(),
            stopping: AtomicBool::new(false),
            label: Mutex::new(String::new()),
        })
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// A connection ended unexpectedly (unless the run is over).
    pub fn connection_lost(&self, what: impl FnOnce() -> String) {
        if !self.stopping() {
            self.errors.closed.fetch_add(1, Ordering::Relaxed);
            self.errors.sample(what);
        }
    }

    pub fn delivered(&self, tag: usize, group: usize) -> u64 {
        self.delivered[tag][group].load(Ordering::Relaxed)
    }

    /// Chats accepted by the server that have not yet reached all
    /// `receivers` counted members of their room (every tag together).
    pub fn outstanding(&self, receivers: u64) -> u64 {
        if receivers == 0 {
            return 0;
        }
        let mut accepted = 0u64;
        let mut delivered = 0u64;
        for t in 0..MAX_TAGS {
            accepted += self.sent[t]
                .load(Ordering::Relaxed)
                .saturating_sub(self.rejected[t].load(Ordering::Relaxed));
            for d in &self.delivered[t] {
                delivered += d.load(Ordering::Relaxed);
            }
        }
        accepted.saturating_sub(delivered / receivers)
    }

    /// Forgets everything counted under `tag` (between probes that reuse
    /// it; call only once its messages have drained).
    pub fn reset_tag(&self, tag: usize) {
        for d in &self.delivered[tag] {
            d.store(0, Ordering::Relaxed);
        }
        self.sent[tag].store(0, Ordering::Relaxed);
        self.rejected[tag].store(0, Ordering::Relaxed);
        for group in 0..MAX_GROUPS {
            let base = (tag * MAX_GROUPS + group) * SHARDS;
            for shard in &self.hist[base..base + SHARDS] {
                *lock(shard) = Histogram::new();
            }
        }
    }

    /// Forgets every tag's counts (between the steps of a sweep, once the
    /// previous step's sockets are closed). Errors are kept: they are the
    /// run's.
    pub fn reset(&self) {
        for tag in 0..MAX_TAGS {
            self.reset_tag(tag);
        }
    }

    /// Merged latency histogram of (tag, group).
    pub fn latency(&self, tag: usize, group: usize) -> Histogram {
        let mut h = Histogram::new();
        let base = (tag * MAX_GROUPS + group) * SHARDS;
        for shard in &self.hist[base..base + SHARDS] {
            h.merge(&lock(shard));
        }
        h
    }

    /// Commits what one socket read produced: deliveries per tag and the
    /// latencies (tag, nanoseconds) of this group.
    pub fn commit(&self, group: usize, shard: usize, counts: &[u64; MAX_TAGS], lat: &[(u8, u64)]) {
        let mut total = 0;
        for (tag, &n) in counts.iter().enumerate() {
            if n > 0 {
                self.delivered[tag][group].fetch_add(n, Ordering::Relaxed);
                total += n;
            }
        }
        self.progress.fetch_add(total, Ordering::Relaxed);
        let shard = shard % SHARDS;
        for tag in 1..MAX_TAGS {
            let mut values = lat
                .iter()
                .filter(|(t, _)| usize::from(*t) == tag)
                .peekable();
            if values.peek().is_none() {
                continue;
            }
            let mut h = lock(&self.hist[(tag * MAX_GROUPS + group) * SHARDS + shard]);
            for &(_, v) in values {
                h.record(v);
            }
        }
    }

    /// Sets the progress line's label (the current phase).
    pub fn set_label(&self, label: impl Into<String>) {
        *lock(&self.label) = label.into();
    }

    /// Prints a progress line on stderr until the run ends: updated in
    /// place (`\r`) on a terminal, one line every 5 s otherwise.
    pub fn spawn_progress(self: &Arc<Self>, unit: &'static str) -> tokio::task::JoinHandle<()> {
        let stats = self.clone();
        tokio::spawn(async move {
            let tty = std::io::stderr().is_terminal();
            let every = if tty {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(5)
            };
            let start = Instant::now();
            let mut last = (start, stats.progress.load(Ordering::Relaxed));
            loop {
                tokio::time::sleep(every).await;
                if stats.stopping() {
                    break;
                }
                let now = Instant::now();
                let n = stats.progress.load(Ordering::Relaxed);
                let rate = (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                last = (now, n);
                let line = format!(
                    "[{:6.1}s] {:<34} {:>12} {unit} {:>10}/s  errors {}",
                    start.elapsed().as_secs_f64(),
                    lock(&stats.label).as_str(),
                    n,
                    si(rate),
                    stats.errors.total()
                );
                let mut err = std::io::stderr().lock();
                let _ = if tty {
                    write!(err, "\r{line}\x1b[K")
                } else {
                    writeln!(err, "{line}")
                };
                let _ = err.flush();
            }
            if tty {
                let _ = write!(std::io::stderr(), "\r\x1b[K");
            }
        })
    }
}

/// `1234567.0` as `1.23M`.
pub fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// `{p50, p90, p99, max, mean, count}` in milliseconds, or null when empty.
pub fn latency_json(h: &Histogram) -> Value {
    if h.count() == 0 {
        return Value::Null;
    }
    let ms = |ns: u64| (ns as f64 / 1e3).round() / 1e3;
    json!({
        "p50": ms(h.quantile(0.50)),
        "p90": ms(h.quantile(0.90)),
        "p99": ms(h.quantile(0.99)),
        "max": ms(h.max()),
        "mean": ((h.mean() / 1e3).round() / 1e3),
        "count": h.count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_counts_and_records_by_tag_and_group() {
        let stats = Stats::new();
        stats.commit(0, 3, &[5, 2, 0, 0], &[(1, 1_000_000), (1, 3_000_000)]);
        stats.commit(1, 40, &[0, 1, 0, 0], &[(1, 7_000_000)]);
        assert_eq!(stats.delivered(0, 0), 5);
        assert_eq!(stats.delivered(1, 0), 2);
        assert_eq!(stats.delivered(1, 1), 1);
        assert_eq!(stats.progress.load(Ordering::Relaxed), 8);
        assert_eq!(stats.latency(1, 0).count(), 2);
        assert_eq!(stats.latency(1, 1).max(), 7_000_000);
        assert_eq!(stats.latency(2, 0).count(), 0);
        let j = latency_json(&stats.latency(1, 0));
        assert_eq!(j["max"], 3.0);
        assert_eq!(j["count"], 2);
        stats.sent[1].store(4, Ordering::Relaxed);
        // 4 chats to rooms of 1 receiver, 2 + 1 + 5 (tag 0) delivered.
        assert_eq!(stats.outstanding(1), 0);
        stats.sent[0].store(10, Ordering::Relaxed);
        assert_eq!(stats.outstanding(1), 6);
        assert_eq!(stats.outstanding(2), 10);
        assert_eq!(stats.outstanding(0), 0);
        stats.reset_tag(1);
        assert_eq!(stats.delivered(1, 0), 0);
        assert_eq!(stats.latency(1, 1).count(), 0);
        assert_eq!(stats.delivered(0, 0), 5, "other tags kept");
        stats.errors.closed.fetch_add(1, Ordering::Relaxed);
        stats.reset();
        assert_eq!(stats.delivered(0, 0), 0);
        assert_eq!(stats.outstanding(1), 0);
        assert_eq!(stats.errors.total(), 1, "errors are the run's");
    }

    #[test]
    fn errors_total_and_json() {
        let e = Errors::default();
        assert_eq!(e.total(), 0);
        e.error_frame("rate_limited", br#"{"type":"error","code":"rate_limited"}"#);
        e.error_frame("nickname_taken", b"{}");
        e.missing_ids.fetch_add(10, Ordering::Relaxed);
        e.order.fetch_add(1, Ordering::Relaxed);
        e.duplicates.fetch_add(1, Ordering::Relaxed);
        assert_eq!(e.total(), 3, "duplicates are a kind of order error");
        let j = e.to_json();
        assert_eq!(j["rate_limited"], 1);
        assert_eq!(j["error_frames"]["nickname_taken"], 1);
        assert_eq!(j["missing_ids"], 10);
        assert_eq!(j["duplicates"], 1);
        assert_eq!(j["total"], 3);
    }

    #[test]
    fn si_formats() {
        assert_eq!(si(950.0), "950");
        assert_eq!(si(12_345.0), "12.3k");
        assert_eq!(si(2_500_000.0), "2.50M");
    }
}
