//! `chat-bench`: a load generator for any server implementing
//! `docs/PROTOCOL.md` (REST + WebSocket JSON frames), on loopback only.
//!
//! ```text
//! chat-bench <fanout|rooms|scale|idle|churn|cluster|flood|soak> --url http://127.0.0.1:3000 [options]
//! chat-bench chart <results.json ...> --out docs/bench/<name>.svg [--x members|sockets|room_size]
//! ```
//!
//! See `docs/bench/README.md` for every scenario, option and how to start
//! the server for a benchmark.

mod chart;
mod histogram;
mod proc_stats;
mod proto;
mod scenarios;
mod stats;
mod ws;

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use scenarios::Common;
use stats::Stats;

const USAGE: &str = "\
chat-bench: load generator for the chat server's wire contract (loopback only)

usage:
  chat-bench fanout  --url URL [--members 1000] [--senders 4] [--rate-fraction 0.5 | --rate R]
  chat-bench rooms   --url URL [--rooms 500] [--room-size 4] [--senders 1] [--rate-fraction 0.5 | --rate R]
                     (both: [--window W | --max-p99-ms 250] [--probe-duration 1])
  chat-bench scale   --url URL [--rate 10000] [--rooms 100,500,1000,2000,4000] [--room-size 4]
                     [--sizes 2,4,16] [--sockets 4000] [--senders 1] [--pause 1]
                     (one step per setting, fixed total rate; sockets closed between steps)
  chat-bench idle    --url URL [--conns 10000] [--room-size 10] [--sources N] [--settle 2]
                     [--chat-members M [--chat-senders 2] [--chat-rate 50]]
                     (with --chat-members: a room chatting alone, then beside the idle sockets)
  chat-bench churn   --url URL [--workers 16] [--rooms W]
  chat-bench cluster --url URL --url2 URL2 [--members 10] [--senders 4] [--rate 10000] [--pid2 PID]
  chat-bench flood   --url URL [--members 10] [--senders 2] [--rate 50] [--flooders 1]
                     (server with its default limits: a room chatting alone, then beside flooders)
  chat-bench soak    --url URL --pid PID [--workers 24] [--rooms 6] [--settle 3]
                     (clients join, chat, leave or drop; server memory and descriptors before/after)
  chat-bench chart   RESULT.json... --out FILE.svg [--x members] [--title TEXT]
                     (scale results: p50, p99 and CPU per delivery against --x sockets or room_size)

common options:
  --url URL               server (default http://127.0.0.1:3000; loopback only)
  --pid PID               server process: CPU per delivery, memory (idle)
  --duration S            seconds per measured window (default 5)
  --warmup S              unmeasured seconds before each window (default 1)
  --drain S               longest wait for a window's messages after it (default 10)
  --count N               most messages / operations per window (default 10000000)
  --timeout S             hard limit for the whole run (default: from the durations)
  --size N                chat content length in characters (default 64)
  --connect-concurrency N connects + joins in flight during set-up (default 256)
  --threads N             bench worker threads (default: number of CPUs)
  --label TEXT            free text stored in the JSON (series name for charts)
  --json                  print one JSON object with the results on stdout
  --quiet                 no progress line

Start the server with WS_RATE_PER_SEC=1000000 WS_RATE_BURST=1000000 WS_JOIN_RATE_PER_SEC=1000000
WS_JOIN_BURST=1000000 ROOM_CREATE_BURST=1000000 for benchmarks (see docs/bench/README.md).
";

/// Options of every scenario.
const COMMON_OPTIONS: &[&str] = &[
    "url",
    "pid",
    "duration",
    "warmup",
    "drain",
    "count",
    "timeout",
    "size",
    "connect-concurrency",
    "threads",
    "label",
];
const FLAGS: &[&str] = &["json", "quiet", "help"];

/// Parsed command line: `--name value` options, flags and positionals.
#[derive(Debug, Default)]
pub struct Args {
    values: BTreeMap<String, String>,
    flags: BTreeSet<String>,
    positional: Vec<String>,
}

impl Args {
    pub fn parse(argv: &[String]) -> Result<Args, String> {
        let mut args = Args::default();
        let mut it = argv.iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                args.positional.push(a.clone());
                continue;
            };
            if let Some((n, v)) = name.split_once('=') {
                args.values.insert(n.to_string(), v.to_string());
            } else if FLAGS.contains(&name) {
                args.flags.insert(name.to_string());
            } else {
                let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                args.values.insert(name.to_string(), v.clone());
            }
        }
        Ok(args)
    }

    /// Rejects options not in `known` (typos would silently run defaults).
    fn check(&self, known: &[&[&str]]) -> Result<(), String> {
        for name in self.values.keys() {
            if !known.iter().any(|k| k.contains(&name.as_str())) {
                return Err(format!("unknown option --{name} (see --help)"));
            }
        }
        Ok(())
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(name)
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn parsed<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        self.str(name)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| format!("--{name}: cannot parse {v:?}"))
            })
            .transpose()
    }

    pub fn opt_f64(&self, name: &str) -> Result<Option<f64>, String> {
        match self.parsed::<f64>(name)? {
            Some(v) if !v.is_finite() => Err(format!("--{name} must be a finite number")),
            v => Ok(v),
        }
    }

    pub fn f64(&self, name: &str, default: f64) -> Result<f64, String> {
        Ok(self.opt_f64(name)?.unwrap_or(default))
    }

    pub fn opt_u64(&self, name: &str) -> Result<Option<u64>, String> {
        self.parsed(name)
    }

    pub fn u64(&self, name: &str, default: u64) -> Result<u64, String> {
        Ok(self.opt_u64(name)?.unwrap_or(default))
    }

    pub fn usize(&self, name: &str, default: usize) -> Result<usize, String> {
        Ok(self.parsed(name)?.unwrap_or(default))
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(scenario) = argv.first().cloned() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let args = match Args::parse(&argv[1..]) {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    if args.flag("help") || scenario == "--help" || scenario == "-h" || scenario == "help" {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if scenario == "chart" {
        if let Err(e) = args.check(&[&["out", "x", "title"]]) {
            return usage_error(&e);
        }
        let Some(out) = args.str("out") else {
            return usage_error("chart needs --out FILE.svg");
        };
        return match chart::run(
            &args.positional,
            out,
            args.str("x"),
            args.str("title").unwrap_or(""),
        ) {
            Ok(msg) => {
                eprintln!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("chat-bench chart: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let options: &[&str] = match scenario.as_str() {
        "fanout" => scenarios::fanout::OPTIONS,
        "rooms" => scenarios::rooms::OPTIONS,
        "scale" => scenarios::scale::OPTIONS,
        "idle" => scenarios::idle::OPTIONS,
        "churn" => scenarios::churn::OPTIONS,
        "cluster" => scenarios::cluster::OPTIONS,
        "flood" => scenarios::flood::OPTIONS,
        "soak" => scenarios::soak::OPTIONS,
        other => return usage_error(&format!("unknown scenario {other:?}")),
    };
    if let Err(e) = args.check(&[COMMON_OPTIONS, options]) {
        return usage_error(&e);
    }
    if !args.positional.is_empty() {
        return usage_error(&format!("unexpected argument {:?}", args.positional[0]));
    }
    let (common, timeout, threads) = match common_options(&scenario, &args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("chat-bench: {e}");
            return ExitCode::from(2);
        }
    };
    stats::init_clock();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json_out = args.flag("json");
    let quiet = args.flag("quiet");
    let code = runtime.block_on(run(
        &scenario, &args, common, timeout, threads, json_out, quiet,
    ));
    // Sockets are closed by dropping the runtime; do not wait for tasks.
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}

fn usage_error(e: &str) -> ExitCode {
    eprintln!("chat-bench: {e}\n\n{USAGE}");
    ExitCode::from(2)
}

/// The options every scenario shares, the hard timeout and thread count.
fn common_options(scenario: &str, args: &Args) -> Result<(Common, Duration, usize), String> {
    let url = args.str("url").unwrap_or("http://127.0.0.1:3000");
    let mut targets = vec![ws::Target::parse(url)?];
    if let Some(url2) = args.str("url2") {
        targets.push(ws::Target::parse(url2)?);
    }
    let pid = args.opt_u64("pid")?.map(|p| p as u32);
    if let Some(p) = pid {
        proc_stats::cpu_ticks(Some(p))
            .map_err(|e| format!("--pid {p}: cannot read /proc/{p}/stat: {e}"))?;
    }
    let common = Common {
        targets,
        pid,
        duration: args.f64("duration", 5.0)?.max(0.01),
        warmup: args.f64("warmup", 1.0)?.max(0.0),
        drain: args.f64("drain", 10.0)?.max(0.0),
        count: args.u64("count", 10_000_000)?.max(1),
        size: args.usize("size", 64)?.clamp(1, 1000),
        connect_concurrency: args.usize("connect-concurrency", 256)?.max(1),
    };
    // Two measured phases at most, plus set-up and the drains.
    let per_phase = common.warmup + common.duration + common.drain;
    let default_timeout = if scenario == "scale" {
        scenarios::scale::default_timeout(args, per_phase)?
    } else {
        120.0 + 3.0 * per_phase
    }
    .max(300.0);
    let timeout = args.f64("timeout", default_timeout)?;
    if timeout <= 0.0 {
        return Err("--timeout must be positive".into());
    }
    let threads = args.usize("threads", 0)?;
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        threads
    };
    Ok((common, Duration::from_secs_f64(timeout), threads))
}

async fn run(
    scenario: &str,
    args: &Args,
    common: Common,
    timeout: Duration,
    threads: usize,
    json_out: bool,
    quiet: bool,
) -> ExitCode {
    let stats = Stats::new();
    let cpu0 = proc_stats::CpuSnapshot::take(None);
    let wall = std::time::Instant::now();
    let mut report = json!({
        "scenario": scenario,
        "label": args.str("label").unwrap_or(scenario),
        "url": args.str("url").unwrap_or("http://127.0.0.1:3000"),
        "url2": args.str("url2"),
        "pid": common.pid,
        "common": {
            "duration_secs": common.duration,
            "warmup_secs": common.warmup,
            "drain_secs": common.drain,
            "count": common.count,
            "size": common.size,
            "timeout_secs": timeout.as_secs_f64(),
            "bench_threads": threads,
        },
    });
    let progress = (!quiet).then(|| {
        stats.spawn_progress(match scenario {
            "churn" => "ops",
            "idle" => "pongs",
            _ => "deliveries",
        })
    });
    let outcome = tokio::time::timeout(timeout, async {
        let mut servers = Vec::new();
        for t in &common.targets {
            servers.push(scenarios::health(t).await?);
        }
        report["server"] = servers.first().cloned().unwrap_or(Value::Null);
        if servers.len() > 1 {
            report["server2"] = servers[1].clone();
        }
        match scenario {
            "fanout" => scenarios::fanout::run(&common, args, &stats).await,
            "rooms" => scenarios::rooms::run(&common, args, &stats).await,
            "scale" => scenarios::scale::run(&common, args, &stats).await,
            "idle" => scenarios::idle::run(&common, args, &stats).await,
            "churn" => scenarios::churn::run(&common, args, &stats).await,
            "cluster" => scenarios::cluster::run(&common, args, &stats).await,
            "flood" => scenarios::flood::run(&common, args, &stats).await,
            "soak" => scenarios::soak::run(&common, args, &stats).await,
            other => Err(format!("unknown scenario {other}")),
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "hard timeout: the run took longer than {:.0} s (--timeout)",
            timeout.as_secs_f64()
        ))
    });
    stats.stopping.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let (_, bench_cpu) = proc_stats::CpuSnapshot::take(None).since(&cpu0);
    let failure = match outcome {
        Ok(Value::Object(fields)) => {
            for (k, v) in fields {
                report[k] = v;
            }
            None
        }
        Ok(_) => Some("scenario returned no results".to_string()),
        Err(e) => Some(e),
    };
    for key in [
        "parameters",
        "duration_secs",
        "deliveries",
        "deliveries_per_sec",
        "latency_ms",
        "server_cpu_us_per_delivery",
        "rss_bytes",
        "rss_per_conn_bytes",
    ] {
        if report.get(key).is_none() {
            report[key] = Value::Null;
        }
    }
    report["bench_cpu_seconds"] = json!((bench_cpu * 100.0).round() / 100.0);
    report["wall_secs"] = json!((wall.elapsed().as_secs_f64() * 100.0).round() / 100.0);
    report["errors"] = stats.errors.to_json();
    report["ok"] = json!(failure.is_none() && stats.errors.total() == 0);
    if let Some(e) = &failure {
        report["error"] = json!(e);
    }
    print_summary(&report, json_out, &stats);
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_else(|_| report.to_string())
        );
    }
    if failure.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The human summary: on stdout, or on stderr when stdout carries JSON.
fn print_summary(report: &Value, to_stderr: bool, stats: &Arc<Stats>) {
    let mut text = String::new();
    let server = &report["server"];
    text.push_str(&format!(
        "chat-bench {}  {}  (server {} store={} bus={})\n",
        report["scenario"].as_str().unwrap_or("?"),
        report["url"].as_str().unwrap_or("?"),
        server["instance"].as_str().unwrap_or("?"),
        server["store"].as_str().unwrap_or("?"),
        server["bus"].as_str().unwrap_or("?"),
    ));
    if let Some(p) = report["parameters"].as_object() {
        let params: Vec<String> = p
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        text.push_str(&format!("parameters: {}\n", params.join(" ")));
    }
    for line in report["summary"].as_array().into_iter().flatten() {
        text.push_str(&format!("  {}\n", line.as_str().unwrap_or("")));
    }
    text.push_str(&format!(
        "bench CPU {:.2} s over {:.1} s wall\n",
        report["bench_cpu_seconds"].as_f64().unwrap_or(0.0),
        report["wall_secs"].as_f64().unwrap_or(0.0)
    ));
    let total = stats.errors.total();
    if total == 0 {
        text.push_str("errors: none\n");
    } else {
        text.push_str(&format!("WARNING: {total} errors: {}\n", report["errors"]));
        if stats.errors.rate_limited.load(Ordering::Relaxed) > 0 {
            text.push_str(&format!(
                "the server rate-limited the bench, so the numbers are not the server's capacity: {}\n",
                scenarios::SERVER_ENV_HINT
            ));
        }
    }
    if let Some(e) = report["error"].as_str() {
        text.push_str(&format!("FAILED: {e}\n"));
    }
    if to_stderr {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_flags_and_positionals() {
        let a = Args::parse(&argv("--members 20 --json --rate=5 a.json --quiet b.json")).unwrap();
        assert_eq!(a.usize("members", 1).unwrap(), 20);
        assert_eq!(a.f64("rate", 0.0).unwrap(), 5.0);
        assert_eq!(a.u64("senders", 4).unwrap(), 4);
        assert!(a.flag("json") && a.flag("quiet"));
        assert_eq!(a.positional, ["a.json", "b.json"]);
        assert!(a.check(&[&["members", "rate"]]).is_ok());
        assert!(a.check(&[&["members"]]).is_err());
        assert!(Args::parse(&argv("--members")).is_err());
        assert!(Args::parse(&argv("--members x"))
            .unwrap()
            .usize("members", 1)
            .is_err());
    }

    #[test]
    fn common_options_refuse_remote_urls() {
        let a = Args::parse(&argv("--url http://192.168.1.5:3000")).unwrap();
        assert!(common_options("fanout", &a)
            .unwrap_err()
            .contains("non-loopback"));
        let a = Args::parse(&argv("--url http://127.0.0.1:1 --duration 2")).unwrap();
        let (c, timeout, threads) = common_options("fanout", &a).unwrap();
        assert_eq!(c.duration, 2.0);
        assert!(timeout >= Duration::from_secs(300));
        assert!(threads >= 1);
    }
}
