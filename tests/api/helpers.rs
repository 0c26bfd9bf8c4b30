//! Test harness: start the real server on a random port, in either store
//! mode, and talk to it over the wire with typed helpers.
//!
//! MySQL mode creates a uniquely named database on `TEST_MYSQL_URL`
//! (default `mysql://root@127.0.0.1:3306`) and drops it when the `TestApp`
//! is dropped. If MySQL is not reachable, MySQL-mode tests fail: they never
//! pass silently.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use actix_http::ws::{CloseCode, Codec, Frame, Message as WsMessage};
use awc::BoxedSocket;
use chat_server::config::Settings;
use chat_server::startup::{Application, Stopper};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::wait::{eventually, within};

/// How long any single expected frame may take.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Which store the server under test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Memory,
    MySql,
}

/// A running server plus what is needed to reach and clean it up.
pub struct TestApp {
    pub port: u16,
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
    let stopper = app.stopper();
    actix_rt::spawn(app.run_until_stopped());
    TestApp {
        port,
        base: format!("http://127.0.0.1:{port}"),
        http: awc::Client::builder()
            .timeout(Duration::from_secs(15))
            .finish(),
        settings,
        stopper,
        database,
    }
}

/// Starts a server with test defaults.
pub async fn spawn_app(mode: StoreMode) -> TestApp {
    spawn_app_with(mode, |_| {}).await
}

impl TestApp {
    /// GET `path`, returning status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let mut res = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let body = res.body().limit(1 << 24).await.unwrap_or_default();
        (
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    /// POST a raw body to `path`.
    pub async fn post_raw(&self, path: &str, body: impl Into<Vec<u8>>) -> (u16, Value) {
        let mut res = self
            .http
            .post(format!("{}{path}", self.base))
            .insert_header(("content-type", "application/json"))
            .send_body(body.into())
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let body = res.body().limit(1 << 24).await.unwrap_or_default();
        (
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
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

    /// Stops the server the way SIGTERM does.
    pub async fn stop(&self) {
        self.stopper.stop().await;
    }

    /// The database of a MySQL-mode app.
    pub fn database(&self) -> Option<&TestDatabase> {
        self.database.as_ref()
    }
}

/// `["alice", ...]` from a JSON array of members.
pub fn nicknames(members: &Value) -> Vec<String> {
    members
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {members}"))
        .iter()
        .map(|m| m["nickname"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A WebSocket client speaking JSON frames.
pub struct WsClient {
    framed: actix_codec::Framed<BoxedSocket, Codec>,
}

/// What the next item on a socket was.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    Closed(Option<u16>),
}

impl WsClient {
    /// Opens a WebSocket at `url`; also returns the `X-Chat-Instance`
    /// header of the upgrade response (which process took the socket).
    pub async fn connect_url(url: &str) -> (WsClient, Option<String>) {
        let (resp, framed) = awc::Client::new()
            .ws(url)
            .max_frame_size(1 << 22)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("ws connect to {url}: {e}"));
        let instance = resp
            .headers()
            .get("x-chat-instance")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (WsClient { framed }, instance)
    }

    /// Opens a WebSocket to `/ws` on a loopback port.
    pub async fn connect(port: u16) -> WsClient {
        let (_resp, framed) = awc::Client::new()
            .ws(format!("ws://127.0.0.1:{port}/ws"))
            .max_frame_size(1 << 22)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("ws connect to port {port}: {e}"));
        WsClient { framed }
    }

    /// Sends a JSON value as one text frame.
    pub async fn send(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    /// Sends raw text as one frame.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.framed
            .send(WsMessage::Text(text.into().into()))
            .await
            .unwrap_or_else(|e| panic!("ws send: {e}"));
    }

    /// Sends a raw websocket message (binary, close, ...).
    pub async fn send_raw(&mut self, msg: WsMessage) {
        let _ = self.framed.send(msg).await;
    }

    /// The next JSON frame or close, answering pings; panics after
    /// `FRAME_TIMEOUT`.
    pub async fn next(&mut self) -> Incoming {
        self.next_within(FRAME_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("no frame within {FRAME_TIMEOUT:?}"))
    }

    /// Like `next`, but `None` when nothing arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Incoming> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let item = tokio::time::timeout_at(deadline, self.framed.next())
                .await
                .ok()?;
            match item {
                Some(Ok(Frame::Text(bytes))) => {
                    let v = serde_json::from_slice(&bytes)
                        .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {bytes:?}"));
                    return Some(Incoming::Json(v));
                }
                Some(Ok(Frame::Ping(p))) => {
                    let _ = self.framed.send(WsMessage::Pong(p)).await;
                }
                Some(Ok(Frame::Close(reason))) => {
                    return Some(Incoming::Closed(reason.map(|r| u16::from(r.code))))
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Some(Incoming::Closed(None)),
            }
        }
    }

    /// The next JSON frame; panics on close.
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Incoming::Json(v) => v,
            Incoming::Closed(code) => panic!("socket closed ({code:?}) while expecting a frame"),
        }
    }

    /// Reads frames until one has `type == kind`; returns it.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Asserts that no JSON frame arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(Incoming::Json(v)) = self.next_within(wait).await {
            panic!("expected no frame, got {v}");
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            if let Incoming::Closed(code) = self.next().await {
                return code;
            }
        }
    }

    /// Sends `join` and waits for `joined`, panicking on `error`.
    pub async fn join(&mut self, room_id: u64, nickname: &str) -> Value {
        self.send(json!({"type":"join","roomId":room_id,"nickname":nickname,"ref":"j"}))
            .await;
        self.reply_to("j").await
    }

    /// Sends `create` and waits for `joined`.
    pub async fn create(&mut self, title: &str, nickname: &str) -> Value {
        self.send(json!({"type":"create","title":title,"nickname":nickname,"ref":"c"}))
            .await;
        self.reply_to("c").await
    }

    /// Sends a chat with `ref` and waits for its echo.
    pub async fn chat(&mut self, content: &str) -> Value {
        self.send(json!({"type":"chat","content":content,"ref":"m"}))
            .await;
        self.reply_to("m").await
    }

    /// Reads until the frame carrying `ref`; panics if it is an error.
    pub async fn reply_to(&mut self, reference: &str) -> Value {
        let v = self.reply_or_error(reference).await;
        assert_ne!(v["type"], "error", "request {reference} failed: {v}");
        v
    }

    /// Reads until the frame carrying `ref`, error or not.
    pub async fn reply_or_error(&mut self, reference: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["ref"] == reference {
                return v;
            }
        }
    }

    /// Sends a frame and expects an `error` reply with `code`.
    pub async fn expect_error(&mut self, mut frame: Value, code: &str) -> Value {
        frame["ref"] = json!("err");
        self.send(frame).await;
        let v = self.reply_or_error("err").await;
        assert_eq!(v["type"], "error", "expected error {code}, got {v}");
        assert_eq!(v["code"], code, "{v}");
        v
    }

    /// Closes the socket politely.
    pub async fn close(mut self) {
        let _ = self
            .framed
            .send(WsMessage::Close(Some(CloseCode::Normal.into())))
            .await;
    }
}

/// Runs a test body once per store mode, as two `#[actix_rt::test]`s.
#[macro_export]
macro_rules! both_stores {
    ($name:ident, |$app:ident| $body:block) => {
        mod $name {
            use super::*;
            #[actix_rt::test]
            async fn memory() {
                let $app = $crate::helpers::spawn_app($crate::helpers::StoreMode::Memory).await;
                $body
            }
            #[actix_rt::test]
            async fn mysql() {
                let $app = $crate::helpers::spawn_app($crate::helpers::StoreMode::MySql).await;
                $body
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Additions for the per-area test modules (rest, protocol_errors, rooms,
// concurrency, backpressure). Existing helpers above are unchanged.
// ---------------------------------------------------------------------------

/// Upper bound for a whole concurrent scenario (`join_all` of many clients).
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(20);

/// Asserts `body` is the contract's error envelope
/// `{"error":{"code":<code>,"message":<non-empty string>}}` and nothing else.
pub fn assert_error_envelope(body: &Value, code: &str) {
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not a JSON object: {body}"));
    assert_eq!(
        obj.len(),
        1,
        "error envelope has extra top-level keys: {body}"
    );
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no \"error\" object in {body}"));
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = error.get("message").and_then(Value::as_str);
    assert!(
        message.is_some_and(|m| !m.trim().is_empty()),
        "error.message must be a non-empty string: {body}"
    );
}

/// Asserts `frame` is a WebSocket `error` frame with `code`, a non-empty
/// message and `ref` equal to `reference` (absent when `None`).
pub fn assert_error_frame(frame: &Value, code: &str, reference: Option<&str>) {
    assert_eq!(frame["type"], "error", "expected an error frame: {frame}");
    assert_eq!(frame["code"], code, "{frame}");
    assert!(
        frame["message"]
            .as_str()
            .is_some_and(|m| !m.trim().is_empty()),
        "error frame needs a message: {frame}"
    );
    match reference {
        Some(r) => assert_eq!(frame["ref"], r, "ref not echoed: {frame}"),
        None => assert!(frame.get("ref").is_none(), "unexpected ref: {frame}"),
    }
}

/// Asserts `value` is an RFC 3339 UTC time (`...Z`) within `slack` of now.
pub fn assert_recent_utc(value: &Value, slack: Duration) {
    let s = value
        .as_str()
        .unwrap_or_else(|| panic!("time is not a string: {value}"));
    assert!(s.ends_with('Z'), "time {s:?} is not UTC with a Z suffix");
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("time {s:?} is not RFC 3339: {e}"));
    let age = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_milliseconds()
        .abs();
    assert!(
        age <= slack.as_millis() as i64,
        "time {s:?} is {age} ms away from now"
    );
}

/// The `id`s of a JSON array of rooms or messages.
pub fn ids(items: &Value) -> Vec<u64> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {items}"))
        .iter()
        .map(|m| m["id"].as_u64().unwrap_or_else(|| panic!("no id in {m}")))
        .collect()
}

/// Room id of a `joined` frame.
pub fn joined_room_id(joined: &Value) -> u64 {
    joined["room"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no room id in {joined}"))
}

impl TestApp {
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
        let mut res = sent.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let body = res.body().limit(1 << 24).await.unwrap_or_default();
        (
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
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
        let mut res = self
            .http
            .post(format!("{}{path}", self.base))
            .insert_header(("content-type", "application/json"))
            .send_stream(stream)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let body = res.body().limit(1 << 24).await.unwrap_or_default();
        (
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
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

impl TestDatabase {
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

impl WsClient {
    /// Sends `ping` with a fresh ref and asserts the `pong` echoing it:
    /// the connection is open and still served.
    pub async fn assert_alive(&mut self) {
        self.send(json!({"type":"ping","ref":"alive?"})).await;
        let v = self.reply_or_error("alive?").await;
        assert_eq!(v, json!({"type":"pong","ref":"alive?"}));
    }

    /// Reads until `n` `message` frames arrived; returns their `message`
    /// objects in arrival order (other frames are skipped).
    pub async fn recv_messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = self.recv().await;
            if v["type"] == "message" {
                out.push(v["message"].clone());
            }
        }
        out
    }

    /// Sends each of `contents` as a chat (refs `"c0"`, `"c1"`, ...) without
    /// waiting, then reads until every echo arrived; returns the echoed
    /// messages in send order. Panics on an error reply.
    pub async fn chat_all(&mut self, contents: &[String]) -> Vec<Value> {
        for (i, content) in contents.iter().enumerate() {
            self.send(json!({"type":"chat","content":content,"ref":format!("c{i}")}))
                .await;
        }
        let mut echoes = vec![Value::Null; contents.len()];
        let mut got = 0;
        while got < contents.len() {
            let v = self.recv().await;
            let Some(r) = v["ref"].as_str() else { continue };
            assert_ne!(v["type"], "error", "chat failed: {v}");
            if let Some(i) = r.strip_prefix('c').and_then(|i| i.parse::<usize>().ok()) {
                if v["type"] == "message" && echoes[i].is_null() {
                    echoes[i] = v["message"].clone();
                    got += 1;
                }
            }
        }
        echoes
    }

    /// Sends `leave` and waits for `left`.
    pub async fn leave(&mut self) -> Value {
        self.send(json!({"type":"leave","ref":"bye"})).await;
        self.reply_to("bye").await
    }
}

/// Like `both_stores!`, with settings adjusted by `$tweak`
/// (a `|settings: &mut Settings| ...` closure).
#[macro_export]
macro_rules! both_stores_with {
    ($name:ident, $tweak:expr, |$app:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[actix_rt::test]
            async fn memory() {
                let $app =
                    $crate::helpers::spawn_app_with($crate::helpers::StoreMode::Memory, $tweak)
                        .await;
                $body
            }
            #[actix_rt::test]
            async fn mysql() {
                let $app =
                    $crate::helpers::spawn_app_with($crate::helpers::StoreMode::MySql, $tweak)
                        .await;
                $body
            }
        }
    };
}

/// A memory-mode-only test (for store-independent behavior), with settings
/// adjusted by `$tweak`; named `$name::memory` like the two-mode tests so
/// `cargo test --test api memory` selects it.
#[macro_export]
macro_rules! memory_only_with {
    ($name:ident, $tweak:expr, |$app:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[actix_rt::test]
            async fn memory() {
                let $app =
                    $crate::helpers::spawn_app_with($crate::helpers::StoreMode::Memory, $tweak)
                        .await;
                $body
            }
        }
    };
}

/// Opens a WebSocket to `/ws` on `port` (usable on any thread that runs an
/// actix system, unlike `TestApp::ws`).
pub async fn connect_ws(port: u16) -> WsClient {
    let (_resp, framed) = awc::Client::new()
        .ws(format!("ws://127.0.0.1:{port}/ws"))
        .max_frame_size(1 << 22)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("ws connect: {e}"));
    WsClient { framed }
}

/// Runs `body` on its own OS thread with its own actix system, like a
/// client in another process, so it reads at its own pace regardless of
/// what the test thread does. Await the returned receiver for its result;
/// a panic in `body` surfaces as a panic of the awaiting test.
pub fn client_thread<T, F, Fut>(name: &str, body: F) -> ClientThread<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = name.to_string();
    let thread_name = name.clone();
    let handle = std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let value = actix_rt::System::new().block_on(body());
            let _ = tx.send(value);
        })
        .unwrap_or_else(|e| panic!("spawn client thread: {e}"));
    ClientThread {
        name,
        rx,
        handle: Some(handle),
    }
}

/// A client running on its own thread (see [`client_thread`]).
pub struct ClientThread<T> {
    name: String,
    rx: tokio::sync::oneshot::Receiver<T>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl<T> ClientThread<T> {
    /// For a client whose body failed: re-raises its panic (waiting at
    /// most 10 s for the thread to end).
    pub async fn take_panic(&mut self) {
        let name = self.name.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.handle.as_ref().is_some_and(|h| !h.is_finished()) {
            if tokio::time::Instant::now() >= deadline {
                panic!("client thread {name} is stuck");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(Err(panic)) = self.handle.take().map(std::thread::JoinHandle::join) {
            std::panic::resume_unwind(panic);
        }
        panic!("client thread {name} ended without a result");
    }

    /// The client's result; panics if it panicked or took longer than
    /// `limit`.
    pub async fn result(mut self, limit: Duration) -> T {
        let name = self.name.clone();
        match tokio::time::timeout(limit, &mut self.rx).await {
            Ok(Ok(value)) => value,
            Ok(Err(_)) => {
                // The sender was dropped: the body panicked. Re-raise it.
                let handle = self.handle.take();
                match handle.map(std::thread::JoinHandle::join) {
                    Some(Err(panic)) => std::panic::resume_unwind(panic),
                    _ => panic!("client thread {name} ended without a result"),
                }
            }
            Err(_) => panic!("client thread {name}: no result within {limit:?}"),
        }
    }
}
