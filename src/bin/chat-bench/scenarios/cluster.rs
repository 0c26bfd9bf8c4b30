//! `cluster`: the cost of crossing processes. One room; `--senders`
//! (default 4) connect to `--url`; `--members` receivers (default 10)
//! connect to `--url2` and as many baseline receivers to `--url`. Senders
//! send `--rate` chats/s in total (default 10000). Both receiver groups sit
//! in the room at the same time and get the very same messages, so the
//! difference of their latencies is what the bus adds.

use std::sync::Arc;

use serde_json::{json, Value};

use super::load::{self, Layout, MemberSpec, Mode};
use super::Common;
use crate::stats::{latency_json, Stats};
use crate::Args;

pub const OPTIONS: &[&str] = &["members", "senders", "rate", "url2", "pid2"];

pub async fn run(common: &Common, args: &Args, stats: &Arc<Stats>) -> Result<Value, String> {
    if common.targets.len() < 2 {
        return Err("cluster needs --url2 (the process the receivers connect to)".into());
    }
    let receivers = args.usize("members", 10)?.max(1);
    let senders = args.usize("senders", 4)?.max(1);
    let rate = args.f64("rate", 10_000.0)?;
    if rate <= 0.0 {
        return Err("--rate must be positive".into());
    }
    let mut members: Vec<MemberSpec> = (0..senders)
        .map(|_| MemberSpec {
            url: 0,
            group: None,
            sender: true,
        })
        .collect();
    for (url, group) in [(0, 0), (1, 1)] {
        members.extend((0..receivers).map(|_| MemberSpec {
            url,
            group: Some(group),
            sender: false,
        }));
    }
    let load = load::setup(common, Layout { rooms: 1, members }, stats).await?;
    let pid2 = args.opt_u64("pid2")?.map(|p| p as u32);
    let cpu2 = crate::proc_stats::CpuSnapshot::take(pid2);
    let phase = load
        .run_phase(
            common,
            &format!("cross-process at {rate:.0} msgs/s"),
            1,
            Mode::Paced {
                per_sec: rate / senders as f64,
            },
        )
        .await;
    let server2_cpu = crate::proc_stats::CpuSnapshot::take(pid2).since(&cpu2).0;
    load.stop();
    let (base, remote) = (&phase.latency[0], &phase.latency[1]);
    let ms = |ns: u64| ns as f64 / 1e6;
    let added = |q: f64| {
        let d = ms(remote.quantile(q)) - ms(base.quantile(q));
        (d * 1000.0).round() / 1000.0
    };
    let added_max = ((ms(remote.max()) - ms(base.max())) * 1000.0).round() / 1000.0;
    let summary = vec![
        phase.summary(),
        format!(
            "added by crossing processes: p50 {:+.3} ms, p90 {:+.3} ms, p99 {:+.3} ms, max {:+.3} ms",
            added(0.5),
            added(0.9),
            added(0.99),
            added_max
        ),
    ];
    Ok(json!({
        "parameters": {
            "members": receivers,
            "receivers_per_group": receivers,
            "senders": senders,
            "rate": rate,
        },
        "duration_secs": phase.window_secs,
        "deliveries": phase.deliveries(),
        "deliveries_per_sec": (phase.deliveries_per_sec() * 10.0).round() / 10.0,
        "messages_per_sec": (phase.messages_per_sec() * 10.0).round() / 10.0,
        "server_cpu_us_per_delivery": phase.server_us_per_delivery(),
        "server2_cpu_seconds": server2_cpu,
        "latency_ms": latency_json(remote),
        "baseline_latency_ms": latency_json(base),
        "added_latency_ms": {
            "p50": added(0.5), "p90": added(0.9), "p99": added(0.99), "max": added_max,
        },
        "phases": [phase.to_json(&["same_process", "cross_process"])],
        "summary": summary,
    }))
}
