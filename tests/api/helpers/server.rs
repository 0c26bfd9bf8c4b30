//! The server under test: started in-process on a random port in either
//! store mode, reached over REST.
//!
//! MySQL mode creates a uniquely named database on `TEST_MYSQL_URL`
//! (default `mysql://root@127.0.0.1:3306`) and drops it when the `TestApp`
//! is dropped. If MySQL is not reachable, MySQL-mode tests fail: they never
//! pass silently.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chat_server::config::Settings;
use chat_server::startup::{Application, Stopper};
use serde_json::{json, Value};

use super::assertions::{assert_error_envelope, ids, joined_room_id, nicknames};
use super::ws_client::WsClient;
use crate::wait::{eventually, within};

/// Which store the server under test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Memory,
    MySql,
}

/// A running server plus what is needed to reach and clean it up.
pub struct TestApp {
    pub port: u16,
    /// The `METRICS_ADDR` listener's port, when the settings ask for one.
    pub metrics_port: Option<u16>,
    pub base: String,
    pub http: awc::Client,
    pub settings: Settings,
    stopper: Stopper,
    database: Option<TestDatabase>,
}

/// The base URL of the test MySQL server (no database name).
pub fn mysql_base_url() -> String {
    std::env::var("TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_string())
        .trim_end_matches('/')
        .to_string()
}

/// A uniquely named database, dropped on `Drop`.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDatabase {
    /// A fresh name; the server creates the database itself at start-up.
    pub fn new() -> Self {
        let name = format!(
            "chat_test_{}_{}_{:04x}",
            std::process::id(),
            DB_COUNTER.fetch_add(1, Ordering::Relaxed),
            rand_suffix()
        );
        let url = format!("{}/{}", mysql_base_url(), name);
        TestDatabase { name, url }
    }

    /// Runs a query returning one unsigned number (e.g. `SELECT COUNT(*)`)
    /// directly against this test database.
    pub async fn query_u64(&self, sql: &str) -> u64 {
        use mysql_async::prelude::Queryable;
        let pool = mysql_async::Pool::new(self.url.as_str());
        let mut conn = pool
            .get_conn()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name));
        let value: Option<u64> = conn
            .query_first(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        drop(conn);
        let _ = pool.disconnect().await;
        value.unwrap_or_else(|| panic!("{sql}: no row"))
    }
}

fn rand_suffix() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16)) as u16
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let base = mysql_base_url();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; use a runtime of our own on
        // another thread to run the async client to completion.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                use mysql_async::prelude::Queryable;
                let pool = mysql_async::Pool::new(base.as_str());
                let mut conn = pool.get_conn().await.map_err(|e| e.to_string())?;
                // The server under test may still hold connections (its
                // runtime is gone, so they never close by themselves), some
                // inside a transaction whose metadata locks would block the
                // DROP forever: end them first, and bound the wait anyway.
                let ids: Vec<u64> = conn
                    .exec(
                        "SELECT id FROM information_schema.processlist \
                         WHERE db = ? AND id <> CONNECTION_ID()",
                        (name.as_str(),),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                for id in ids {
                    let _ = conn.query_drop(format!("KILL {id}")).await;
                }
                conn.query_drop("SET SESSION lock_wait_timeout = 10")
                    .await
                    .map_err(|e| e.to_string())?;
                conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                    .await
                    .map_err(|e| e.to_string())?;
                drop(conn);
                pool.disconnect().await.map_err(|e| e.to_string())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "warning: could not drop test database {}: {dropped:?}",
                self.name
            );
        }
    }
}

/// Starts a server with test defaults, adjusted by `tweak`.
pub async fn spawn_app_with(mode: StoreMode, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut settings = Settings::for_tests();
    settings.instance_id = format!("test-{}", rand_suffix());
    let database = (mode == StoreMode::MySql).then(TestDatabase::new);
    settings.mysql_url = database.as_ref().map(|d| d.url.clone());
    tweak(&mut settings);
    let app = within(
        Duration::from_secs(30),
        &format!("server start (is MySQL at {} up?)", mysql_base_url()),
        Application::build(settings.clone()),
    )
    .await
    .unwrap_or_else(|e| panic!("server failed to start: {e}"));
    let port = app.port();
    let metrics_port = app.metrics_port();
    let stopper = app.stopper();
    actix_rt::spawn(app.run_until_stopped());
    TestApp {
        port,
        metrics_port,
        base: format!("http://127.0.0.1:{port}"),
        http: awc::Client::builder()
            .timeout(Duration::from_secs(15))
            .finish(),
        settings,
        stopper,
        database,
    }
}

/// A response's status and JSON body (`Null` when the body is not JSON).
pub async fn read_json<S>(mut res: awc::ClientResponse<S>) -> (u16, Value)
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>>,
{
    let body = res.body().limit(1 << 24).await.unwrap_or_default();
    (
        res.status().as_u16(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

impl TestApp {
    /// GET `path`, returning status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        read_json(res).await
    }

    /// POST a raw body to `path` as `application/json`.
    pub async fn post_raw(&self, path: &str, body: impl Into<Vec<u8>>) -> (u16, Value) {
        self.request("POST", path, Some(body.into())).await
    }

    /// POST /api/rooms and return the room, asserting 201.
    pub async fn create_room(&self, title: &str) -> Value {
        let (status, body) = self
            .post_raw("/api/rooms", json!({ "title": title }).to_string())
            .await;
        assert_eq!(status, 201, "create room: {body}");
        body
    }

    /// Opens a WebSocket to `/ws`.
    pub async fn ws(&self) -> WsClient {
        WsClient::connect(self.port).await
    }

    /// Opens a socket and joins `room_id` as `nickname`, returning the
    /// client and the `joined` frame.
    pub async fn join(&self, room_id: u64, nickname: &str) -> (WsClient, Value) {
        let mut c = self.ws().await;
        let joined = c.join(room_id, nickname).await;
        (c, joined)
    }

    /// Members of a room over REST, as nicknames in order.
    pub async fn member_names(&self, room_id: u64) -> Vec<String> {
        let (status, body) = self.get(&format!("/api/rooms/{room_id}/members")).await;
        assert_eq!(status, 200, "members: {body}");
        nicknames(&body)
    }

    /// `GET /metrics` (on the `METRICS_ADDR` listener when there is one):
    /// the Prometheus text, asserting 200 and its content type.
    pub async fn metrics(&self) -> String {
        let port = self.metrics_port.unwrap_or(self.port);
        let url = format!("http://127.0.0.1:{port}/metrics");
        let mut res = self
            .http
            .get(url.as_str())
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let body = res.body().limit(1 << 24).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(res.status().as_u16(), 200, "GET {url}: {text}");
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        text
    }

    /// Stops the server the way SIGTERM does.
    pub async fn stop(&self) {
        self.stopper.stop().await;
    }

    /// The database of a MySQL-mode app.
    pub fn database(&self) -> Option<&TestDatabase> {
        self.database.as_ref()
    }

    /// Any method on `path` with an optional body; status and JSON body.
    pub async fn request(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> (u16, Value) {
        let method = awc::http::Method::from_bytes(method.as_bytes())
            .unwrap_or_else(|e| panic!("bad method {method}: {e}"));
        let req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .insert_header(("content-type", "application/json"));
        let sent = match body {
            Some(b) => req.send_body(b).await,
            None => req.send().await,
        };
        read_json(sent.unwrap_or_else(|e| panic!("{method} {path}: {e}"))).await
    }

    /// POST `body` to `path` with the given `Content-Type` header, or with
    /// none; status and JSON body.
    pub async fn post_typed(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(ct) = content_type {
            req = req.insert_header(("content-type", ct));
        }
        let res = req
            .send_body(body.into())
            .await
            .unwrap_or_else(|e| panic!("POST {path} ({content_type:?}): {e}"));
        read_json(res).await
    }

    /// GET `path` as text: status, content type and body.
    pub async fn get_text(&self, path: &str) -> (u16, String, String) {
        let mut res = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = res.body().limit(1 << 24).await.unwrap_or_default();
        (
            res.status().as_u16(),
            content_type,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// POST `path` with a chunked body (no Content-Length).
    pub async fn post_chunked(&self, path: &str, chunks: Vec<Vec<u8>>) -> (u16, Value) {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from(c))),
        );
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .insert_header(("content-type", "application/json"))
            .send_stream(stream)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        read_json(res).await
    }

    /// GET a room's messages with `query` (e.g. `"after=3&limit=2"`),
    /// asserting 200.
    pub async fn messages(&self, room_id: u64, query: &str) -> Vec<Value> {
        let (status, body) = self
            .get(&format!("/api/rooms/{room_id}/messages?{query}"))
            .await;
        assert_eq!(status, 200, "messages?{query}: {body}");
        body.as_array()
            .unwrap_or_else(|| panic!("messages not an array: {body}"))
            .clone()
    }

    /// GET /api/rooms/{id}: status and body.
    pub async fn room(&self, room_id: u64) -> (u16, Value) {
        self.get(&format!("/api/rooms/{room_id}")).await
    }

    /// Asserts a room is gone everywhere the REST API shows it.
    pub async fn assert_room_gone(&self, room_id: u64) {
        let (status, body) = self.room(room_id).await;
        assert_eq!(status, 404, "room {room_id} should be gone: {body}");
        assert_error_envelope(&body, "room_not_found");
        let (status, body) = self.get(&format!("/api/rooms/{room_id}/messages")).await;
        assert_eq!(
            status, 404,
            "messages of room {room_id} should be gone: {body}"
        );
        let (status, body) = self.get(&format!("/api/rooms/{room_id}/members")).await;
        assert_eq!(
            status, 404,
            "members of room {room_id} should be gone: {body}"
        );
        let (status, list) = self.get("/api/rooms").await;
        assert_eq!(status, 200);
        assert!(
            !ids(&list).contains(&room_id),
            "room {room_id} still listed: {list}"
        );
    }

    /// Polls until `GET /api/rooms/{id}` answers 404.
    pub async fn wait_room_gone(&self, room_id: u64, limit: Duration) {
        let app = self;
        eventually(limit, &format!("room {room_id} deleted"), || async move {
            app.room(room_id).await.0 == 404
        })
        .await;
    }

    /// A room created over WebSocket by a fresh client.
    pub async fn create_via_ws(&self, title: &str, nickname: &str) -> (WsClient, u64) {
        let mut c = self.ws().await;
        let joined = c.create(title, nickname).await;
        (c, joined_room_id(&joined))
    }
}
