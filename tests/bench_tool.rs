//! The `chat-bench` load generator against the real server, with tiny
//! parameters: each scenario runs as a child process with `--json`, and
//! the report's structure and values are checked (deliveries add up,
//! percentiles are ordered, nothing went wrong).

#[path = "api/helpers/mod.rs"]
mod helpers;
#[path = "common/wait.rs"]
mod wait;

use std::process::{Command, Output};

use helpers::{spawn_app_with, StoreMode, TestApp};
use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_chat-bench");

/// A memory-store server with limits a benchmark does not trip over.
async fn generous_app() -> TestApp {
    spawn_app_with(StoreMode::Memory, |s| {
        s.ws_rate_per_sec = 1e6;
        s.ws_rate_burst = 1e6;
        s.ws_join_rate_per_sec = 1e6;
        s.ws_join_burst = 1e6;
        s.room_create_rate_per_sec = 1e6;
        s.room_create_burst = 1e6;
    })
    .await
}

/// Runs the bench off the test thread (which serves the in-process server).
async fn run_bench(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(BENCH).args(&args).output())
        .await
        .expect("bench thread")
        .expect("run chat-bench")
}

/// Runs `scenario` against `app` with `--json`, asserts success, returns
/// the report.
async fn bench(app: &TestApp, scenario: &str, extra: &[&str]) -> Value {
    let mut args: Vec<String> = [
        scenario,
        "--url",
        &app.base,
        "--json",
        "--quiet",
        "--pid",
        &std::process::id().to_string(),
        "--timeout",
        "90",
        "--threads",
        "2",
        "--warmup",
        "0.2",
        "--drain",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = run_bench(args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chat-bench {scenario} failed: {stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}\nstderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(report["scenario"], scenario);
    for key in [
        "parameters",
        "duration_secs",
        "deliveries",
        "deliveries_per_sec",
        "latency_ms",
        "server_cpu_us_per_delivery",
        "bench_cpu_seconds",
        "rss_bytes",
        "rss_per_conn_bytes",
        "errors",
    ] {
        assert!(report.get(key).is_some(), "missing {key} in {report}");
    }
    report
}

/// No errors of any kind, and the run says so.
fn assert_clean(report: &Value) {
    assert_eq!(report["errors"]["total"], 0, "errors: {}", report["errors"]);
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["bench_cpu_seconds"].as_f64().unwrap() >= 0.0);
}

/// p50 <= p90 <= p99 <= max, all positive.
fn assert_ordered(latency: &Value) {
    let q: Vec<f64> = ["p50", "p90", "p99", "max"]
        .iter()
        .map(|k| {
            latency[k]
                .as_f64()
                .unwrap_or_else(|| panic!("latency {k} missing in {latency}"))
        })
        .collect();
    assert!(q[0] > 0.0, "{latency}");
    assert!(q.windows(2).all(|w| w[0] <= w[1]), "unordered {latency}");
    assert!(latency["count"].as_u64().unwrap() > 0);
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("chat-bench-{}-{name}", std::process::id()))
}

/// Draws `report` with `chat-bench chart` (default options); the SVG.
async fn chart(report: &Value, name: &str) -> String {
    let json_path = temp_path(&format!("{name}.json"));
    let svg_path = temp_path(&format!("{name}.svg"));
    std::fs::write(&json_path, report.to_string()).unwrap();
    let out = run_bench(vec![
        "chart".into(),
        json_path.display().to_string(),
        "--out".into(),
        svg_path.display().to_string(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let _ = std::fs::remove_file(json_path);
    let _ = std::fs::remove_file(svg_path);
    svg
}

#[actix_rt::test]
async fn fanout_reports_throughput_then_latency_and_charts() {
    let app = generous_app().await;
    let r = bench(
        &app,
        "fanout",
        &[
            "--members",
            "20",
            "--senders",
            "2",
            "--duration",
            "1",
            "--probe-duration",
            "0.3",
        ],
    )
    .await;
    assert_clean(&r);
    assert_eq!(r["parameters"]["members"], 20);
    // The in-flight window was probed for, and the chosen one was probed.
    let probes = r["probes"].as_array().unwrap();
    assert!(!probes.is_empty(), "{r}");
    let window = r["window"].as_u64().unwrap();
    assert!(probes.iter().any(|p| p["window"] == window), "{r}");
    assert_eq!(r["parameters"]["senders"], 2);
    let phases = r["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2, "throughput and latency phases");
    for p in phases {
        // Every accepted chat reached all 20 members, the sender included.
        let messages = p["messages"].as_u64().unwrap();
        assert!(messages > 0, "{p}");
        assert_eq!(p["deliveries"].as_u64().unwrap(), messages * 20, "{p}");
        assert_ordered(&p["latency_ms"]);
        assert!(p["server_cpu_seconds"].as_f64().is_some());
    }
    assert_eq!(r["deliveries"], phases[0]["deliveries"]);
    assert!(r["deliveries_per_sec"].as_f64().unwrap() > 0.0);
    assert_ordered(&r["latency_ms"]);
    assert!(r["server_cpu_us_per_delivery"].as_f64().unwrap() >= 0.0);
    // Phase 2 ran at about half of phase 1's message rate.
    let (m1, m2) = (
        phases[0]["messages_per_sec"].as_f64().unwrap(),
        phases[1]["messages_per_sec"].as_f64().unwrap(),
    );
    assert!(m2 < m1 * 0.8, "phase 2 at {m2}/s vs phase 1 {m1}/s");

    // The report charts.
    let svg = chart(&r, "fanout").await;
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
}

#[actix_rt::test]
async fn rooms_counts_deliveries_per_room() {
    let app = generous_app().await;
    let r = bench(
        &app,
        "rooms",
        &[
            "--rooms",
            "10",
            "--room-size",
            "3",
            "--duration",
            "1",
            "--window",
            "4",
        ],
    )
    .await;
    assert_clean(&r);
    assert_eq!(r["parameters"]["connections"], 30);
    // A fixed --window skips probing.
    assert_eq!(r["window"], 4);
    assert_eq!(r["probes"].as_array().unwrap().len(), 0);
    for p in r["phases"].as_array().unwrap() {
        let messages = p["messages"].as_u64().unwrap();
        assert!(messages > 0, "{p}");
        assert_eq!(p["deliveries"].as_u64().unwrap(), messages * 3, "{p}");
    }
    assert!(r["deliveries"].as_u64().unwrap() > 0);
    assert_ordered(&r["latency_ms"]);
}

#[actix_rt::test]
async fn idle_measures_memory_per_connection() {
    let app = generous_app().await;
    let r = bench(
        &app,
        "idle",
        &[
            "--conns",
            "50",
            "--room-size",
            "10",
            "--duration",
            "0.5",
            "--settle",
            "0.2",
        ],
    )
    .await;
    assert_clean(&r);
    assert_eq!(r["parameters"]["rooms"], 5);
    assert!(r["rss_bytes"].as_u64().unwrap() > 0);
    // The test process hosts other tests' servers too, so only the shape
    // of the per-connection figure is checked.
    assert!(r["rss_per_conn_bytes"].as_f64().is_some(), "{r}");
    // Every connection answered its ping.
    assert_eq!(r["deliveries"], 50);
    assert_ordered(&r["latency_ms"]);
}

#[actix_rt::test]
async fn idle_measures_a_chatting_room_alone_then_beside_idle_sockets() {
    let app = generous_app().await;
    let r = bench(
        &app,
        "idle",
        &[
            "--conns",
            "40",
            "--duration",
            "0.5",
            "--settle",
            "0.2",
            "--chat-members",
            "4",
            "--chat-rate",
            "40",
        ],
    )
    .await;
    assert_clean(&r);
    assert_eq!(r["deliveries"], 40, "every idle socket answered its ping");
    for phase in ["alone", "beside_idle"] {
        let p = &r["chat"][phase];
        let messages = p["messages"].as_u64().unwrap();
        assert!(messages > 0, "{p}");
        assert_eq!(p["deliveries"].as_u64().unwrap(), messages * 4, "{p}");
        assert_eq!(p["deliveries_by_group"]["idle_pings"], 0, "{p}");
        assert_ordered(&r["chat"][format!("{phase}_latency_ms")]);
    }
    assert!(r["chat"]["p99_ratio"].as_f64().unwrap() > 0.0, "{r}");
}

#[actix_rt::test]
async fn scale_sweeps_steps_with_fresh_sockets_and_charts_them() {
    let app = generous_app().await;
    let r = bench(
        &app,
        "scale",
        &[
            "--rooms",
            "5,10",
            "--sizes",
            "2",
            "--sockets",
            "20",
            "--rate",
            "200",
            "--duration",
            "1",
            "--pause",
            "0.2",
        ],
    )
    .await;
    assert_clean(&r);
    let steps = r["steps"].as_array().unwrap();
    let shape: Vec<(String, u64, u64, u64)> = steps
        .iter()
        .map(|s| {
            (
                s["sweep"].as_str().unwrap().to_string(),
                s["rooms"].as_u64().unwrap(),
                s["room_size"].as_u64().unwrap(),
                s["sockets"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("rooms".to_string(), 5, 4, 20),
            ("rooms".to_string(), 10, 4, 40),
            ("size".to_string(), 10, 2, 20),
        ]
    );
    for s in steps {
        let (messages, size) = (
            s["messages"].as_u64().unwrap(),
            s["room_size"].as_u64().unwrap(),
        );
        // About 200 chats in the 1 s window, whatever the number of rooms.
        assert!((100..=300).contains(&messages), "{s}");
        assert_eq!(s["deliveries"].as_u64().unwrap(), messages * size, "{s}");
        assert_eq!(s["expected_deliveries"], s["deliveries"], "{s}");
        assert_eq!(s["lost"], 0, "{s}");
        assert_eq!(s["duplicates"], 0, "{s}");
        assert_eq!(s["errors"], 0, "{s}");
        assert!(s["server_cpu_us_per_delivery"].as_f64().is_some(), "{s}");
        // The server answered every member's close (no 5 s close timeout).
        assert!(s["close_secs"].as_f64().unwrap() < 5.0, "{s}");
        assert_ordered(&s["latency_ms"]);
    }
    // Headline figures are the rooms sweep's largest step.
    assert_eq!(r["deliveries"], steps[1]["deliveries"]);
    assert!(r["p99_growth"].as_f64().is_some(), "{r}");

    let svg = chart(&r, "scale").await;
    assert_eq!(svg.matches("<polyline").count(), 3, "p50, p99, CPU: {svg}");
    assert_eq!(svg.matches("<circle").count(), 6, "2 rooms-sweep steps × 3");
}

#[actix_rt::test]
async fn churn_joins_and_leaves() {
    let app = generous_app().await;
    let r = bench(&app, "churn", &["--workers", "4", "--duration", "1"]).await;
    assert_clean(&r);
    let (joins, leaves) = (r["joins"].as_u64().unwrap(), r["leaves"].as_u64().unwrap());
    assert!(joins > 0 && leaves > 0, "{r}");
    assert!(joins.abs_diff(leaves) <= 4, "each worker alternates: {r}");
    assert_eq!(r["operations"].as_u64().unwrap(), joins + leaves);
    assert!(r["operations_per_sec"].as_f64().unwrap() > 0.0);
    assert_ordered(&r["latency_ms"]);
    assert_ordered(&r["join_latency_ms"]);
    assert_ordered(&r["leave_latency_ms"]);
}

#[actix_rt::test]
async fn flood_measures_a_room_beside_a_flooding_client() {
    // Default limits: how the server sheds the flood is what is measured.
    let app = spawn_app_with(StoreMode::Memory, |_| {}).await;
    let r = bench(
        &app,
        "flood",
        &[
            "--duration",
            "1",
            "--members",
            "4",
            "--senders",
            "1",
            "--rate",
            "20",
        ],
    )
    .await;
    assert_clean(&r);
    assert_ordered(&r["baseline_latency_ms"]);
    assert_ordered(&r["latency_ms"]);
    assert!(r["p99_ratio"].as_f64().unwrap() > 0.0, "{r}");
    let flood = &r["flood"];
    assert!(flood["frames"].as_u64().unwrap() > 450, "{flood}");
    assert!(
        flood["closed_by_server"].as_u64().unwrap() >= 1,
        "the server closes a client that keeps flooding: {flood}"
    );
}

#[actix_rt::test]
async fn soak_compares_memory_and_descriptors_before_and_after() {
    let app = spawn_app_with(StoreMode::Memory, |_| {}).await;
    let r = bench(
        &app,
        "soak",
        &[
            "--duration",
            "1",
            "--workers",
            "4",
            "--rooms",
            "2",
            "--settle",
            "0.5",
        ],
    )
    .await;
    assert_clean(&r);
    assert!(r["left_properly"].as_u64().unwrap() > 0, "{r}");
    assert!(r["dropped_without_close"].as_u64().unwrap() > 0, "{r}");
    for key in [
        "rss_before_bytes",
        "rss_after_bytes",
        "fds_before",
        "fds_after",
    ] {
        assert!(r[key].as_u64().unwrap() > 0, "{key}: {r}");
    }
    assert!(r["rss_growth_pct"].is_number() && r["fds_growth_pct"].is_number());
}

#[actix_rt::test]
async fn cluster_compares_against_a_same_process_baseline() {
    let app = generous_app().await;
    let r = bench(
        &app,
        "cluster",
        &[
            "--url2",
            &app.base,
            "--members",
            "3",
            "--senders",
            "2",
            "--rate",
            "200",
            "--duration",
            "1",
        ],
    )
    .await;
    assert_clean(&r);
    let p = &r["phases"][0];
    let messages = p["messages"].as_u64().unwrap();
    assert!(messages > 50, "about 200 msgs/s for 1 s: {p}");
    // Senders are not counted; 3 + 3 receivers are.
    assert_eq!(p["deliveries"].as_u64().unwrap(), messages * 6);
    assert_ordered(&r["latency_ms"]);
    assert_ordered(&r["baseline_latency_ms"]);
    for k in ["p50", "p90", "p99", "max"] {
        assert!(r["added_latency_ms"][k].is_number(), "{r}");
    }
}

#[actix_rt::test]
async fn rate_limits_are_reported_not_hidden() {
    // Default limits: 200 frames/s per connection, burst 400.
    let app = spawn_app_with(StoreMode::Memory, |_| {}).await;
    let args: Vec<String> = [
        "fanout",
        "--url",
        &app.base,
        "--json",
        "--quiet",
        "--members",
        "5",
        "--senders",
        "1",
        "--warmup",
        "0.5",
        "--duration",
        "1",
        "--rate",
        "2000",
        "--timeout",
        "60",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run_bench(args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["errors"]["rate_limited"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["ok"], false);
    // Rejected chats, and chats written after the server closed the
    // flooding sender (it does past its allowance), are not miscounted as
    // lost deliveries.
    assert_eq!(r["errors"]["undelivered"], 0, "{r}");
    assert!(stderr.contains("WS_RATE_PER_SEC"), "{stderr}");
}

#[test]
fn refuses_non_loopback_urls() {
    let out = Command::new(BENCH)
        .args(["fanout", "--url", "http://10.1.2.3:3000", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("non-loopback"));
    assert!(out.stdout.is_empty());
}

#[test]
fn unknown_options_are_rejected() {
    let out = Command::new(BENCH)
        .args(["fanout", "--memberz", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--memberz"));
}
