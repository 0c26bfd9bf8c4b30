//! A real Prometheus (Debian's `prometheus` package; `scripts/test.sh`
//! installs it when missing) scrapes the real binary every second, and
//! its HTTP API answers a query for the chats the test stored. Without
//! `prometheus` on the PATH this test fails, it never skips.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::helpers::{read_json, WsClient};
use super::wait::eventually;
use super::{free_port, Server};

/// Chats the test sends; Prometheus must report exactly this many stored.
const CHATS: usize = 3;

/// A Prometheus server in the foreground, scraping `target` every second,
/// its data in a directory of its own; killed (and the directory removed)
/// on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let version = Command::new("prometheus").arg("--version").output();
        if !version.is_ok_and(|o| o.status.success()) {
            panic!(
                "prometheus is not installed: `apt-get install prometheus` \
                 (scripts/test.sh does it when missing)"
            );
        }
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("chat-prometheus-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("a temporary directory");
        // The shape README's "Watch it in Prometheus" shows, with one
        // target and a one-second interval.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: chat\n    static_configs:\n      \
             - targets: ['{target}']\n"
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("a log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prometheus: {e}"));
        Prometheus { child, port, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The instant vector `query` returns, as `(labels, value)` pairs, or why
/// there is none yet.
async fn query(http: &awc::Client, port: u16, query: &str) -> Result<Vec<(Value, f64)>, String> {
    let url = format!("http://127.0.0.1:{port}/api/v1/query?query={query}");
    let res = http
        .get(url.as_str())
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let (status, body) = read_json(res).await;
    if status != 200 || body["status"] != "success" {
        return Err(format!("{status} {body}"));
    }
    let samples = body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(samples
        .into_iter()
        .filter_map(|s| {
            let value = s["value"][1].as_str()?.parse().ok()?;
            Some((s["metric"].clone(), value))
        })
        .collect())
}

#[actix_rt::test]
async fn a_real_prometheus_scrapes_the_server_and_answers_for_its_series() {
    let mut server = Server::start(&[]);
    server.wait_healthy().await;
    let room_id = server.create_room("watched").await;
    let mut client = WsClient::connect(server.port).await;
    client.join(room_id, "ann").await;
    let contents: Vec<String> = (1..=CHATS).map(|i| format!("m{i}")).collect();
    assert_eq!(client.chat_all(&contents).await.len(), CHATS);

    let target = format!("127.0.0.1:{}", server.port);
    let prometheus = Prometheus::start(&target);
    let http = awc::Client::builder()
        .timeout(Duration::from_secs(5))
        .finish();
    let (http, prom) = (&http, &prometheus);
    let target = target.as_str();
    // Prometheus starts, scrapes within a second, and answers: bounded.
    eventually(
        Duration::from_secs(60),
        "Prometheus reporting the chats stored",
        || async move {
            let found = query(http, prom.port, "chat_chats_stored_total").await?;
            match found.as_slice() {
                [(labels, value)] if labels["instance"] == target && labels["job"] == "chat" => {
                    if *value == CHATS as f64 {
                        Ok(())
                    } else {
                        Err(format!("value {value}, not {CHATS}"))
                    }
                }
                other => Err(format!("{other:?}; prometheus log:\n{}", prom.log())),
            }
        },
    )
    .await;
    // A histogram arrives whole: its count by operation can be queried.
    let appends = "chat_store_call_seconds_count{operation=\"append_messages\"}";
    let found = query(http, prom.port, &urlencode(appends))
        .await
        .expect("a query");
    assert!(found.iter().any(|(_, v)| *v >= 1.0), "{appends}: {found:?}");
    assert!(server.running(), "the server died while being scraped");
    let dir = prometheus.dir.clone();
    drop(prometheus);
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

/// `text` percent-encoded for a URL's query (PromQL has braces and quotes).
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
