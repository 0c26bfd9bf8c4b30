//! Multi-process harness: real `chat-server` processes sharing a real
//! MariaDB database and a real Redis, each on its own loopback port.
//!
//! Every cluster gets a fresh database (dropped at the end) and its own
//! `REDIS_PREFIX`, so concurrent test runs never see each other's rooms,
//! channels or liveness keys.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{nicknames, read_json, TestDatabase, WsClient};
use crate::wait::eventually;

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

/// Serializes the timing-sensitive tests of this binary (they measure or
/// race against the liveness timings), so they do not compete for the two
/// cores with each other. Hold the guard for the whole test.
pub async fn heavy_test_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// One server process.
pub struct Node {
    pub port: u16,
    pub instance: String,
    child: Option<Child>,
    env: Vec<(String, String)>,
    /// The node's log lines, over all its runs, when captured.
    logs: Option<Arc<Mutex<Vec<String>>>>,
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
        Self::start_inner(n, redis, extra, false).await
    }

    /// Like `start_with`, but every node's log (stderr) is also kept in
    /// memory for `logs`, `count_in_logs` and `assert_no_errors` (and still
    /// printed when `CLUSTER_LOGS` is set).
    pub async fn start_logged(n: usize, redis: &str, extra: &[(&str, &str)]) -> Cluster {
        Self::start_inner(n, redis, extra, true).await
    }

    /// Like `start_logged`, but node `i` reaches Redis at `redis[i]` (one
    /// node through a fault proxy, say); `n` is `redis.len()`.
    pub async fn start_logged_each(redis: &[String], extra: &[(&str, &str)]) -> Cluster {
        Self::start_each(redis, extra, true).await
    }

    /// Like `start_logged`, but waits only until each node answers
    /// `/health`, whatever it says (a node that cannot reach its bus).
    pub async fn start_answering(n: usize, redis: &str, extra: &[(&str, &str)]) -> Cluster {
        Self::start_answering_each(&vec![redis.to_string(); n], extra).await
    }

    /// Like `start_answering`, but node `i` reaches Redis at `redis[i]`.
    pub async fn start_answering_each(redis: &[String], extra: &[(&str, &str)]) -> Cluster {
        let cluster = Self::spawn_all(redis, extra, true);
        for i in 0..redis.len() {
            let cluster = &cluster;
            eventually(
                Duration::from_secs(30),
                &format!("node {i} answers"),
                || async move { cluster.get(i, "/health").await.0 != 0 },
            )
            .await;
        }
        cluster
    }

    async fn start_inner(n: usize, redis: &str, extra: &[(&str, &str)], capture: bool) -> Cluster {
        Self::start_each(&vec![redis.to_string(); n], extra, capture).await
    }

    async fn start_each(redis_urls: &[String], extra: &[(&str, &str)], capture: bool) -> Cluster {
        let cluster = Self::spawn_all(redis_urls, extra, capture);
        for i in 0..redis_urls.len() {
            cluster.wait_healthy(i, Duration::from_secs(30)).await;
        }
        cluster
    }

    fn spawn_all(redis_urls: &[String], extra: &[(&str, &str)], capture: bool) -> Cluster {
        let redis = redis_urls.first().map(String::as_str).unwrap_or_default();
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
        for (i, redis) in redis_urls.iter().enumerate() {
            let instance = format!("node{i}-{}", std::process::id());
            let mut env: Vec<(String, String)> = vec![
                ("MYSQL_URL".into(), cluster.database.url.clone()),
                ("REDIS_URL".into(), redis.clone()),
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
                logs: capture.then(Default::default),
            };
            node.spawn();
            cluster.nodes.push(node);
        }
        cluster
    }

    /// `http://127.0.0.1:<port>` of node `i`.
    pub fn base(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].port)
    }

    /// GET on node `i`: status and JSON body.
    pub async fn get(&self, i: usize, path: &str) -> (u16, Value) {
        match self
            .http
            .get(format!("{}{path}", self.base(i)))
            .send()
            .await
        {
            Ok(res) => read_json(res).await,
            Err(_) => (0, Value::Null),
        }
    }

    /// Waits until node `i` answers `/health` with 200.
    pub async fn wait_healthy(&self, i: usize, limit: Duration) {
        let cluster = self;
        eventually(limit, &format!("node {i} healthy"), || async move {
            match cluster.get(i, "/health").await {
                (200, _) => Ok(()),
                (status, body) => Err(format!("{status} {body}")),
            }
        })
        .await;
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

    /// Kills node `i` and starts it again with `name` set to `value` (kept
    /// for later restarts).
    pub async fn restart_with(&mut self, i: usize, name: &str, value: &str) {
        self.nodes[i].kill();
        let env = &mut self.nodes[i].env;
        env.retain(|(k, _)| k != name);
        env.push((name.to_string(), value.to_string()));
        self.restart(i).await;
    }

    /// POST a JSON body to node `i`: status and JSON body.
    pub async fn post(&self, i: usize, path: &str, body: &Value) -> (u16, Value) {
        match self
            .http
            .post(format!("{}{path}", self.base(i)))
            .insert_header(("content-type", "application/json"))
            .send_body(body.to_string())
            .await
        {
            Ok(res) => read_json(res).await,
            Err(_) => (0, Value::Null),
        }
    }

    /// Creates a room over REST on node `i` (nobody joins it); its id.
    pub async fn create_room(&self, i: usize, title: &str) -> u64 {
        let (status, body) = self.post(i, "/api/rooms", &json!({ "title": title })).await;
        assert_eq!(status, 201, "create room on node {i}: {body}");
        body["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no id in {body}"))
    }

    /// Node `i`'s member list of `room` as nicknames; `None` unless 200.
    pub async fn member_names(&self, i: usize, room: u64) -> Option<Vec<String>> {
        let (status, body) = self.get(i, &format!("/api/rooms/{room}/members")).await;
        (status == 200).then(|| nicknames(&body))
    }

    /// Node `i`'s `memberCount` of `room`; `None` unless 200.
    pub async fn member_count(&self, i: usize, room: u64) -> Option<u64> {
        let (status, body) = self.get(i, &format!("/api/rooms/{room}")).await;
        (status == 200)
            .then(|| body["memberCount"].as_u64())
            .flatten()
    }

    /// Whether `GET /api/rooms/{room}` is 404 `room_not_found` on node `i`.
    pub async fn room_gone(&self, i: usize, room: u64) -> bool {
        let (status, body) = self.get(i, &format!("/api/rooms/{room}")).await;
        status == 404 && body["error"]["code"] == "room_not_found"
    }

    /// The stored messages of `room` as node `i` serves them (up to 500).
    pub async fn stored_messages(&self, i: usize, room: u64) -> Vec<Value> {
        let (status, body) = self
            .get(i, &format!("/api/rooms/{room}/messages?limit=500"))
            .await;
        assert_eq!(status, 200, "messages of room {room} on node {i}: {body}");
        body.as_array()
            .unwrap_or_else(|| panic!("messages not an array: {body}"))
            .clone()
    }

    /// Sends SIGTERM to node `i` (a clean shutdown) and waits at most
    /// `limit` for it to exit; returns how long it took.
    pub async fn terminate(&mut self, i: usize, limit: Duration) -> Duration {
        let node = &mut self.nodes[i];
        let child = node.child.as_mut().expect("node is running");
        let pid = child.id().to_string();
        let started = std::time::Instant::now();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid} failed");
        eventually(limit, "the node to exit after SIGTERM", || {
            let exited = child.try_wait().ok().flatten().is_some();
            async move { exited }
        })
        .await;
        node.child = None;
        started.elapsed()
    }

    /// Asserts every node whose process was not killed is still running.
    pub fn assert_running(&mut self) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let Some(child) = node.child.as_mut() {
                let status = child.try_wait().ok().flatten();
                assert!(status.is_none(), "node {i} exited: {status:?}");
            }
        }
    }

    /// Node `i`'s captured log lines (`start_logged` only).
    pub fn logs(&self, i: usize) -> Vec<String> {
        let logs = self.nodes[i]
            .logs
            .as_ref()
            .unwrap_or_else(|| panic!("node {i}: logs are captured only by start_logged"));
        logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// How many captured log lines, over every node, contain `needle`.
    pub fn count_in_logs(&self, needle: &str) -> usize {
        (0..self.nodes.len())
            .map(|i| self.logs(i).iter().filter(|l| l.contains(needle)).count())
            .sum()
    }

    /// Asserts no node logged an error or a panic.
    pub fn assert_no_errors(&self) {
        for i in 0..self.nodes.len() {
            let bad: Vec<String> = self
                .logs(i)
                .into_iter()
                .filter(|l| l.contains(" ERROR ") || l.contains("panicked"))
                .collect();
            assert!(
                bad.is_empty(),
                "node {i} logged errors:\n{}",
                bad.join("\n")
            );
        }
    }

    /// Polls until every node in `nodes` lists exactly `expected` (in that
    /// order) as the members of `room` and reports the same `memberCount`,
    /// both in `GET /api/rooms/{id}` and in `GET /api/rooms`; returns how
    /// long that took. Panics after `limit` with what each node showed.
    pub async fn wait_members_agree(
        &self,
        nodes: &[usize],
        room: u64,
        expected: &[&str],
        limit: Duration,
    ) -> Duration {
        let cluster = self;
        let count = expected.len() as u64;
        let what =
            format!("room {room}: nodes {nodes:?} agree on members {expected:?} (count {count})");
        eventually(limit, &what, || async move {
            let mut seen = Vec::new();
            for &i in nodes {
                let names = cluster.member_names(i, room).await;
                let single = cluster.member_count(i, room).await;
                let (_, list) = cluster.get(i, "/api/rooms").await;
                let listed = list.as_array().and_then(|rooms| {
                    rooms
                        .iter()
                        .find(|r| r["id"] == room)
                        .and_then(|r| r["memberCount"].as_u64())
                });
                seen.push((i, names, single, listed));
            }
            if seen.iter().all(|(_, names, single, listed)| {
                names.as_deref().is_some_and(|n| n == expected)
                    && *single == Some(count)
                    && *listed == Some(count)
            }) {
                Ok(())
            } else {
                Err(format!(
                    "(node, members, memberCount, count in /api/rooms): {seen:?}"
                ))
            }
        })
        .await
    }

    /// Polls until `GET /api/rooms/{room}` is 404 on every node in `nodes`;
    /// returns how long that took. Panics after `limit`.
    pub async fn wait_room_gone(&self, nodes: &[usize], room: u64, limit: Duration) -> Duration {
        let cluster = self;
        let what = format!("room {room} gone from nodes {nodes:?}");
        eventually(limit, &what, || async move {
            let mut alive = Vec::new();
            for &i in nodes {
                if !cluster.room_gone(i, room).await {
                    alive.push(i);
                }
            }
            if alive.is_empty() {
                Ok(())
            } else {
                Err(format!("still served by nodes {alive:?}"))
            }
        })
        .await
    }

    /// Captured log lines of every node at level WARN or ERROR, or with a
    /// panic (`start_logged` only), prefixed with the node's index.
    pub fn warnings(&self) -> Vec<String> {
        (0..self.nodes.len())
            .flat_map(|i| {
                self.logs(i)
                    .into_iter()
                    .filter(|l| {
                        l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked")
                    })
                    .map(move |l| format!("node {i}: {l}"))
            })
            .collect()
    }
}

impl Node {
    fn spawn(&mut self) {
        if self.port == 0 {
            self.port = free_port();
        }
        let print = std::env::var("CLUSTER_LOGS").is_ok();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PORT", self.port.to_string())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if self.logs.is_some() {
                Stdio::piped()
            } else if print {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chat-server: {e}"));
        if let (Some(logs), Some(stderr)) = (self.logs.clone(), child.stderr.take()) {
            // Ends by itself at EOF, when the process exits.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if print {
                        eprintln!("{line}");
                    }
                    if let Ok(mut logs) = logs.lock() {
                        logs.push(line);
                    }
                }
            });
        }
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
