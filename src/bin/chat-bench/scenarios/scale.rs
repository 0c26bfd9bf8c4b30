//! `scale`: how latency and CPU per delivery grow with the number of
//! sockets, at a fixed total message rate. A sweep of steps against one
//! running server:
//!
//! - rooms of `--room-size` (default 4) for each count in `--rooms`
//!   (default 100,500,1000,2000,4000): the "rooms" sweep;
//! - then rooms of each size in `--sizes` (default 2,4,16) holding
//!   `--sockets` sockets in all (default 4000): the "size" sweep. A step
//!   the rooms sweep already measured is not run twice.
//!
//! Each step opens its sockets (the first member of a room creates it, the
//! others join), sends `--rate` chats/s in all (default 10,000; one sender
//! per room unless `--senders`, paced and spread over the senders) for
//! `--warmup` + `--duration` seconds (at most `--count` chats), drains,
//! then closes every socket (a WebSocket close answered by the server's)
//! and waits `--pause` seconds (default 1) before the next step, so each
//! step measures only its own sockets.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::load::{self, Layout, Mode, PhaseResult};
use super::{check_fd_limits, Common};
use crate::stats::{latency_json, Stats};
use crate::Args;

pub const OPTIONS: &[&str] = &[
    "rate",
    "rooms",
    "room-size",
    "sizes",
    "sockets",
    "senders",
    "pause",
];

/// Longest wait for a step's sockets to close.
const CLOSE_LIMIT: Duration = Duration::from_secs(30);

/// One step of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// `"rooms"` (room count varies) or `"size"` (room size varies).
    pub sweep: &'static str,
    pub rooms: usize,
    pub room_size: usize,
}

impl Step {
    pub fn sockets(&self) -> usize {
        self.rooms * self.room_size
    }
}

/// The steps: `rooms` rooms of `room_size`, then `sockets` sockets in
/// rooms of each of `sizes` (rounded down to whole rooms, at least one),
/// skipping any (rooms, size) already in the list.
pub fn plan(rooms: &[usize], room_size: usize, sizes: &[usize], sockets: usize) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let candidates = rooms.iter().map(|&r| ("rooms", r, room_size)).chain(
        sizes
            .iter()
            .map(|&s| ("size", (sockets / s.max(1)).max(1), s)),
    );
    for (sweep, rooms, room_size) in candidates {
        if rooms == 0 || room_size == 0 {
            continue;
        }
        if !steps
            .iter()
            .any(|s| s.rooms == rooms && s.room_size == room_size)
        {
            steps.push(Step {
                sweep,
                rooms,
                room_size,
            });
        }
    }
    steps
}

/// `"100,500"` as `[100, 500]`; empty (or `none`) is no values.
pub fn parse_list(name: &str, v: &str) -> Result<Vec<usize>, String> {
    if v.trim().is_empty() || v.trim() == "none" {
        return Ok(Vec::new());
    }
    v.split(',')
        .map(|p| {
            p.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("--{name}: {p:?} is not a positive whole number"))
        })
        .collect()
}

/// The sweep's steps from the command line.
fn steps_from_args(args: &Args) -> Result<Vec<Step>, String> {
    let rooms = parse_list(
        "rooms",
        args.str("rooms").unwrap_or("100,500,1000,2000,4000"),
    )?;
    let sizes = parse_list("sizes", args.str("sizes").unwrap_or("2,4,16"))?;
    let room_size = args.usize("room-size", 4)?.max(1);
    let sockets = args.usize("sockets", 4000)?.max(1);
    let steps = plan(&rooms, room_size, &sizes, sockets);
    if steps.is_empty() {
        return Err("scale: no steps (--rooms and --sizes are both empty)".into());
    }
    Ok(steps)
}

/// The default `--timeout` of a sweep: per step, set-up (1 s per 500
/// sockets, at least 30 s), the phase, the close and the pause.
pub fn default_timeout(args: &Args, per_phase: f64) -> Result<f64, String> {
    let pause = args.f64("pause", 1.0)?.max(0.0);
    Ok(steps_from_args(args)?
        .iter()
        .map(|s| (s.sockets() as f64 / 500.0).max(30.0) + per_phase + pause + 10.0)
        .sum::<f64>()
        + 60.0)
}

pub async fn run(common: &Common, args: &Args, stats: &Arc<Stats>) -> Result<Value, String> {
    let steps = steps_from_args(args)?;
    let rate = args.f64("rate", 10_000.0)?;
    if rate <= 0.0 {
        return Err("--rate must be positive".into());
    }
    let senders = args.usize("senders", 1)?.max(1);
    let pause = args.f64("pause", 1.0)?.max(0.0);
    let most = steps.iter().map(Step::sockets).max().unwrap_or(0);
    check_fd_limits(most, common.pid)?;

    let mut results: Vec<Value> = Vec::new();
    let mut summary = Vec::new();
    let mut incomplete: Option<String> = None;
    for (i, step) in steps.iter().enumerate() {
        let name = format!(
            "step {}/{}: {} rooms of {}",
            i + 1,
            steps.len(),
            step.rooms,
            step.room_size
        );
        stats.reset();
        let errors_before = stats.errors.total();
        let duplicates_before = stats.errors.duplicates.load(Ordering::Relaxed);
        let senders = senders.min(step.room_size);
        let t0 = Instant::now();
        let layout = Layout::uniform(step.rooms, step.room_size, senders);
        let load = match load::setup(common, layout, stats).await {
            Ok(l) => l,
            Err(e) => {
                // The sweep stops; the steps so far are reported.
                stats.errors.requests.fetch_add(1, Ordering::Relaxed);
                stats.errors.sample(|| format!("{name}: {e}"));
                incomplete = Some(format!("{name}: {e}"));
                break;
            }
        };
        let setup_secs = t0.elapsed().as_secs_f64();
        let per_sender = rate / (step.rooms * senders) as f64;
        let phase = load
            .run_phase(
                common,
                &name,
                1,
                Mode::Paced {
                    per_sec: per_sender,
                },
            )
            .await;
        stats.set_label(format!("{name} (closing)"));
        let t1 = Instant::now();
        let closed = load.close(CLOSE_LIMIT).await;
        let close_secs = t1.elapsed().as_secs_f64();
        let errors = stats.errors.total() - errors_before;
        let duplicates = stats.errors.duplicates.load(Ordering::Relaxed) - duplicates_before;
        let row = step_json(
            step, senders, &phase, errors, duplicates, setup_secs, close_secs,
        );
        summary.push(step_line(&row));
        results.push(row);
        if let Err(e) = closed {
            stats.errors.requests.fetch_add(1, Ordering::Relaxed);
            stats.errors.sample(|| format!("{name}: {e}"));
            incomplete = Some(format!("{name}: {e}"));
            break;
        }
        if i + 1 < steps.len() && pause > 0.0 {
            stats.set_label(format!("{name} (pause)"));
            tokio::time::sleep(Duration::from_secs_f64(pause)).await;
        }
    }
    // Headline figures: the rooms sweep's largest step, and how its p99
    // compares with the smallest step's (the issue's "within 3x" target).
    let rooms_sweep: Vec<&Value> = results.iter().filter(|r| r["sweep"] == "rooms").collect();
    let p99 = |r: &Value| r["latency_ms"]["p99"].as_f64();
    let growth = match (rooms_sweep.first(), rooms_sweep.last()) {
        (Some(a), Some(b)) if rooms_sweep.len() > 1 => match (p99(a), p99(b)) {
            (Some(x), Some(y)) if x > 0.0 => Some((y / x * 100.0).round() / 100.0),
            _ => None,
        },
        _ => None,
    };
    if let Some(g) = growth {
        summary.push(format!(
            "p99 at {} sockets / p99 at {} sockets = {g:.2}",
            rooms_sweep
                .last()
                .map_or(0, |r| r["sockets"].as_u64().unwrap_or(0)),
            rooms_sweep
                .first()
                .map_or(0, |r| r["sockets"].as_u64().unwrap_or(0)),
        ));
    }
    let headline = rooms_sweep.last().copied().or(results.last());
    let field = |k: &str| headline.map_or(Value::Null, |r| r[k].clone());
    Ok(json!({
        "parameters": {
            "rate": rate,
            "rooms": args.str("rooms").unwrap_or("100,500,1000,2000,4000"),
            "room_size": args.usize("room-size", 4)?.max(1),
            "sizes": args.str("sizes").unwrap_or("2,4,16"),
            "sockets": args.usize("sockets", 4000)?.max(1),
            "senders_per_room": senders,
            "pause_secs": pause,
            "steps": steps.len(),
        },
        "steps": results,
        "p99_growth": growth,
        "incomplete": incomplete,
        "duration_secs": results.iter().filter_map(|r| r["duration_secs"].as_f64()).sum::<f64>(),
        "deliveries": field("deliveries"),
        "deliveries_per_sec": field("deliveries_per_sec"),
        "latency_ms": field("latency_ms"),
        "server_cpu_us_per_delivery": field("server_cpu_us_per_delivery"),
        "summary": summary,
    }))
}

/// One step's row of the report.
fn step_json(
    step: &Step,
    senders: usize,
    p: &PhaseResult,
    errors: u64,
    duplicates: u64,
    setup_secs: f64,
    close_secs: f64,
) -> Value {
    let round = |v: f64, d: f64| (v * d).round() / d;
    let expected: u64 = p.expected.iter().sum();
    let delivered = p.deliveries();
    json!({
        "sweep": step.sweep,
        "rooms": step.rooms,
        "room_size": step.room_size,
        "sockets": step.sockets(),
        "senders": step.rooms * senders,
        "duration_secs": round(p.window_secs, 1000.0),
        "messages": p.sent - p.rejected,
        "messages_per_sec": round(p.messages_per_sec(), 10.0),
        "deliveries": delivered,
        "deliveries_per_sec": round(p.deliveries_per_sec(), 10.0),
        "expected_deliveries": expected,
        "lost": expected.saturating_sub(delivered),
        "duplicates": duplicates,
        "errors": errors,
        "latency_ms": latency_json(&p.latency_all()),
        "server_cpu_us_per_delivery": p.server_us_per_delivery().map(|v| round(v, 1000.0)),
        "server_cpu_cores": p.server_cpu_secs.map(|s| round(s / p.window_secs.max(1e-9), 100.0)),
        "bench_cpu_cores": round(p.bench_cpu_secs / p.window_secs.max(1e-9), 100.0),
        "setup_secs": round(setup_secs, 100.0),
        "close_secs": round(close_secs, 100.0),
    })
}

/// One line of the human summary for a step's row.
fn step_line(r: &Value) -> String {
    let l = &r["latency_ms"];
    let ms = |k: &str| l[k].as_f64().map_or("?".into(), |v| format!("{v:.2}"));
    format!(
        "{:>6} sockets ({} rooms of {}): {:.0} msgs/s, {:.0} deliveries/s, p50 {} p90 {} p99 {} max {} ms, server CPU {} µs/delivery, lost {} dup {} errors {}",
        r["sockets"],
        r["rooms"],
        r["room_size"],
        r["messages_per_sec"].as_f64().unwrap_or(0.0),
        r["deliveries_per_sec"].as_f64().unwrap_or(0.0),
        ms("p50"),
        ms("p90"),
        ms("p99"),
        ms("max"),
        r["server_cpu_us_per_delivery"]
            .as_f64()
            .map_or("?".into(), |v| format!("{v:.2}")),
        r["lost"],
        r["duplicates"],
        r["errors"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_is_the_issues_sweep() {
        let steps = plan(&[100, 500, 1000, 2000, 4000], 4, &[2, 4, 16], 4000);
        let got: Vec<(&str, usize, usize)> = steps
            .iter()
            .map(|s| (s.sweep, s.rooms, s.room_size))
            .collect();
        // 1000 rooms of 4 = 4000 sockets is measured once, in the rooms sweep.
        assert_eq!(
            got,
            [
                ("rooms", 100, 4),
                ("rooms", 500, 4),
                ("rooms", 1000, 4),
                ("rooms", 2000, 4),
                ("rooms", 4000, 4),
                ("size", 2000, 2),
                ("size", 250, 16),
            ]
        );
        assert_eq!(steps[4].sockets(), 16_000);
    }

    #[test]
    fn plan_rounds_to_whole_rooms_and_skips_empty_steps() {
        let steps = plan(&[0, 3], 2, &[7, 100], 50);
        assert_eq!(
            steps,
            [
                Step {
                    sweep: "rooms",
                    rooms: 3,
                    room_size: 2
                },
                Step {
                    sweep: "size",
                    rooms: 7,
                    room_size: 7
                },
                Step {
                    sweep: "size",
                    rooms: 1,
                    room_size: 100
                },
            ]
        );
        assert!(plan(&[], 4, &[], 10).is_empty());
    }

    #[test]
    fn lists_parse() {
        assert_eq!(parse_list("rooms", "100, 500").unwrap(), [100, 500]);
        assert!(parse_list("sizes", "").unwrap().is_empty());
        assert!(parse_list("sizes", "none").unwrap().is_empty());
        assert!(parse_list("rooms", "10,x").is_err());
        assert!(parse_list("rooms", "0").is_err());
    }
}
