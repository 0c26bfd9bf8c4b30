//! Multi-process harness: real `chat-server` processes sharing a real
//! MariaDB database and a real Redis, each on its own loopback port.
//!
//! Every cluster gets a fresh database (dropped at the end) and its own
//! `REDIS_PREFIX`, so concurrent test runs never see each other's rooms,
//! channels or liveness keys.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{TestDatabase, WsClient};

/// The local Redis the suite uses unless `TEST_REDIS_URL` says otherwise.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// One server process.
pub struct Node {
    pub port: u16,
    pub instance: String,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

/// N processes of the binary on one database and one Redis prefix.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub database: TestDatabase,
    pub prefix: String,
    pub redis_url: String,
    pub http: awc::Client,
}

impl Cluster {
    /// Starts `n` processes with the default fast-test timings.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, &redis_url(), &[]).await
    }

    /// Starts `n` processes on `redis`, with extra environment `extra`.
    pub async fn start_with(n: usize, redis: &str, extra: &[(&str, &str)]) -> Cluster {
        let database = TestDatabase::new();
        let prefix = format!("chattest-{}", database.name);
        let mut cluster = Cluster {
            nodes: Vec::new(),
            database,
            prefix,
            redis_url: redis.to_string(),
            http: awc::Client::builder()
                .timeout(Duration::from_secs(10))
                .finish(),
        };
        for i in 0..n {
            let instance = format!("node{i}-{}", std::process::id());
            let mut env: Vec<(String, String)> = vec![
                ("MYSQL_URL".into(), cluster.database.url.clone()),
                ("REDIS_URL".into(), redis.to_string()),
                ("REDIS_PREFIX".into(), cluster.prefix.clone()),
                ("INSTANCE_ID".into(), instance.clone()),
                ("HOST".into(), "127.0.0.1".into()),
                ("WORKERS".into(), "1".into()),
                ("ROOM_THREADS".into(), "1".into()),
                ("LIVENESS_TTL_SECS".into(), "3".into()),
                ("LIVENESS_REFRESH_MS".into(), "500".into()),
                ("REAP_INTERVAL_MS".into(), "500".into()),
                ("RUST_LOG".into(), "warn,chat_server=info".into()),
            ];
            for (k, v) in extra {
                env.retain(|(key, _)| key != k);
                env.push((k.to_string(), v.to_string()));
            }
            let mut node = Node {
                port: 0,
                instance,
                child: None,
                env,
            };
            node.spawn();
            cluster.nodes.push(node);
        }
        for i in 0..n {
            cluster.wait_healthy(i, Duration::from_secs(30)).await;
        }
        cluster
    }

    /// `http://127.0.0.1:<port>` of node `i`.
    pub fn base(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].port)
    }

    /// GET on node `i`: status and JSON body.
    pub async fn get(&self, i: usize, path: &str) -> (u16, serde_json::Value) {
        match self
            .http
            .get(format!("{}{path}", self.base(i)))
            .send()
            .await
        {
            Ok(mut res) => {
                let body = res.body().limit(1 << 24).await.unwrap_or_default();
                (
                    res.status().as_u16(),
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                )
            }
            Err(_) => (0, serde_json::Value::Null),
        }
    }

    /// Waits until node `i` answers `/health` with 200.
    pub async fn wait_healthy(&self, i: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self.get(i, "/health").await;
            if status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} not healthy within {within:?}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A WebSocket to node `i`.
    pub async fn ws(&self, i: usize) -> WsClient {
        WsClient::connect(self.nodes[i].port).await
    }

    /// Kills node `i` with SIGKILL (no goodbye).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again with the same port and instance id.
    pub async fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.wait_healthy(i, Duration::from_secs(30)).await;
    }
}

impl Node {
    fn spawn(&mut self) {
        if self.port == 0 {
            self.port = free_port();
        }
        let child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PORT", self.port.to_string())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var("CLUSTER_LOGS").is_ok() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chat-server: {e}"));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 100 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
