//! `fanout`: one room of `--members` (default 1000), `--senders` of them
//! (default 4) sending. Phase 1 finds the highest sustained deliveries/s
//! (closed loop: each sender keeps at most `--window` chats unanswered);
//! phase 2 measures latency at `--rate-fraction` (default 0.5) of phase 1's
//! message rate, or at `--rate` chats/s per sender (then phase 1 is
//! skipped). Deliveries = messages × members (the sender's echo included).

use std::sync::Arc;

use serde_json::{json, Value};

use super::load::{self, Layout, Load, Mode, PhaseResult};
use super::Common;
use crate::stats::{latency_json, Stats};
use crate::Args;

pub const OPTIONS: &[&str] = &[
    "members",
    "senders",
    "window",
    "rate",
    "rate-fraction",
    "max-p99-ms",
    "probe-duration",
];

pub async fn run(common: &Common, args: &Args, stats: &Arc<Stats>) -> Result<Value, String> {
    let members = args.usize("members", 1000)?.max(1);
    let senders = args.usize("senders", 4)?.clamp(1, members);
    let drive = Drive::from_args(args)?;
    let layout = Layout::uniform(1, members, senders);
    let load = load::setup(common, layout, stats).await?;
    let mut out = drive.run(common, &load, senders, senders).await;
    out["parameters"] = json!({
        "members": members,
        "senders": senders,
        "rooms": 1,
        "window": drive.window,
        "max_p99_ms": drive.max_p99_ms,
        "rate_fraction": drive.fraction,
        "rate": drive.rate,
    });
    out["room_id"] = json!(load.room_ids.first());
    load.stop();
    Ok(out)
}

/// How a throughput-then-latency scenario drives its senders.
pub struct Drive {
    /// `--window`: fixed; `None` = probe for it.
    pub window: Option<u64>,
    pub fraction: f64,
    pub rate: Option<f64>,
    /// `--max-p99-ms`: probing stops at a window whose p99 exceeds this.
    pub max_p99_ms: f64,
    /// `--probe-duration`: seconds per probe.
    pub probe_secs: f64,
}

/// Windows tried when probing, smallest first.
const PROBE_WINDOWS: &[u64] = &[4, 8, 16, 32, 64, 128, 256];
/// Most chats a probe lets a room's senders have in flight: half the
/// server's default `SESSION_QUEUE_CAPACITY` (1024 queued batches), so a
/// server that evicts slow consumers never has a reason to evict the bench.
/// A larger `--window` can still be given explicitly.
const MAX_PROBE_BACKLOG_PER_ROOM: u64 = 512;
/// Tag reused by every probe (reset in between).
const PROBE_TAG: u8 = 3;

/// One probe's outcome.
struct Probe {
    window: u64,
    deliveries_per_sec: f64,
    p99_ms: f64,
    errors: u64,
}

impl Drive {
    pub fn from_args(args: &Args) -> Result<Drive, String> {
        let fraction = args.f64("rate-fraction", 0.5)?;
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err("--rate-fraction must be in (0, 1]".into());
        }
        let rate = args.opt_f64("rate")?;
        if rate.is_some_and(|r| r <= 0.0) {
            return Err("--rate must be positive".into());
        }
        Ok(Drive {
            window: args.opt_u64("window")?.map(|w| w.max(1)),
            fraction,
            rate,
            max_p99_ms: args.f64("max-p99-ms", 250.0)?.max(0.001),
            probe_secs: args.f64("probe-duration", 1.0)?.max(0.05),
        })
    }

    /// Finds the in-flight window per sender with the highest deliveries/s
    /// whose p99 stays under `--max-p99-ms`: short closed-loop probes with
    /// doubling windows, stopping when the p99 limit is crossed, errors
    /// appear, or a larger window no longer adds 5%.
    async fn probe_window(
        &self,
        common: &Common,
        load: &Load,
        senders_per_room: u64,
    ) -> (u64, Vec<Probe>) {
        let mut c = common.clone();
        c.warmup = (self.probe_secs / 2.0).min(common.warmup.max(0.1));
        c.duration = self.probe_secs;
        c.drain = common.drain.min(5.0);
        let mut probes: Vec<Probe> = Vec::new();
        let mut best: Option<(u64, f64)> = None;
        for &window in PROBE_WINDOWS {
            if !probes.is_empty() && window * senders_per_room > MAX_PROBE_BACKLOG_PER_ROOM {
                break;
            }
            let errors_before = load.stats().errors.total();
            let p = load
                .run_phase(
                    &c,
                    &format!("probe: window {window}"),
                    PROBE_TAG,
                    Mode::Closed { window },
                )
                .await;
            load.stats().reset_tag(usize::from(PROBE_TAG));
            let h = p.latency_all();
            let probe = Probe {
                window,
                deliveries_per_sec: p.deliveries_per_sec(),
                p99_ms: h.quantile(0.99) as f64 / 1e6,
                errors: load.stats().errors.total() - errors_before,
            };
            let acceptable = probe.errors == 0 && probe.p99_ms <= self.max_p99_ms;
            let gain = best.map_or(f64::INFINITY, |(_, d)| probe.deliveries_per_sec / d);
            if acceptable && gain > 1.0 {
                best = Some((window, probe.deliveries_per_sec));
            }
            probes.push(probe);
            if !acceptable || gain < 1.05 {
                break;
            }
        }
        (best.map_or(PROBE_WINDOWS[0], |(w, _)| w), probes)
    }

    /// Phase 1 (unless `--rate`): closed loop, highest rate; phase 2: paced
    /// at the chosen rate, for latency. Returns the report's measurement
    /// fields.
    pub async fn run(
        &self,
        common: &Common,
        load: &Load,
        senders: usize,
        senders_per_room: usize,
    ) -> Value {
        let mut phases: Vec<PhaseResult> = Vec::new();
        let mut probes = Vec::new();
        let mut window = self.window;
        let per_sender = match self.rate {
            Some(r) => r,
            None => {
                let w = match self.window {
                    Some(w) => w,
                    None => {
                        let (w, p) = self
                            .probe_window(common, load, senders_per_room as u64)
                            .await;
                        probes = p;
                        w
                    }
                };
                window = Some(w);
                let p1 = load
                    .run_phase(
                        common,
                        &format!("phase 1: max throughput (window {w})"),
                        1,
                        Mode::Closed { window: w },
                    )
                    .await;
                let r = p1.messages_per_sec() * self.fraction / senders as f64;
                phases.push(p1);
                r
            }
        };
        let name = match self.rate {
            Some(r) => format!("phase 2: latency at {r:.0} msgs/s per sender"),
            None => format!("phase 2: latency at {:.0}% of max", self.fraction * 100.0),
        };
        let p2 = if per_sender > 0.0 {
            Some(
                load.run_phase(
                    common,
                    &name,
                    2,
                    Mode::Paced {
                        per_sec: per_sender,
                    },
                )
                .await,
            )
        } else {
            None
        };
        let latency = p2.as_ref().map(|p| latency_json(&p.latency_all()));
        phases.extend(p2);
        // Throughput figures come from phase 1 (the highest rate) when it ran.
        let throughput = phases.first();
        let round = |v: f64| (v * 10.0).round() / 10.0;
        let mut summary: Vec<String> = probes
            .iter()
            .map(|p| {
                format!(
                    "probe window {}: {:.0} deliveries/s, p99 {:.2} ms{}",
                    p.window,
                    p.deliveries_per_sec,
                    p.p99_ms,
                    if p.errors > 0 { ", errors" } else { "" }
                )
            })
            .collect();
        summary.extend(phases.iter().map(|p| p.summary()));
        json!({
            "window": window,
            "probes": probes.iter().map(|p| json!({
                "window": p.window,
                "deliveries_per_sec": round(p.deliveries_per_sec),
                "p99_ms": (p.p99_ms * 1000.0).round() / 1000.0,
                "errors": p.errors,
            })).collect::<Vec<_>>(),
            "duration_secs": phases.iter().map(|p| p.window_secs).sum::<f64>(),
            "deliveries": throughput.map(|p| p.deliveries()),
            "deliveries_per_sec": throughput.map(|p| round(p.deliveries_per_sec())),
            "messages_per_sec": throughput.map(|p| round(p.messages_per_sec())),
            "server_cpu_us_per_delivery": throughput
                .and_then(|p| p.server_us_per_delivery())
                .map(|v| (v * 1000.0).round() / 1000.0),
            "latency_ms": latency.unwrap_or(Value::Null),
            "latency_rate_per_sender": round(per_sender),
            "phases": phases.iter().map(|p| p.to_json(&["members"])).collect::<Vec<_>>(),
            "summary": summary,
        })
    }
}
