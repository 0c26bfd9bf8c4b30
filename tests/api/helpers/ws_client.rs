//! A WebSocket client speaking the chat's JSON frames, and clients that
//! run on threads of their own.

use std::time::Duration;

use actix_http::ws::{CloseCode, Codec, Frame, Message as WsMessage};
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::wait::{eventually, within};

/// How long any single expected frame may take.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// Like `connect_url`, but a failed handshake is an `Err` (for clients
    /// that reconnect while processes restart).
    pub async fn try_connect_url(url: &str) -> Result<(WsClient, Option<String>), String> {
        let (resp, framed) = awc::Client::new()
            .ws(url)
            .max_frame_size(1 << 22)
            .connect()
            .await
            .map_err(|e| format!("ws connect to {url}: {e}"))?;
        let instance = resp
            .headers()
            .get("x-chat-instance")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((WsClient { framed }, instance))
    }

    /// Like `send`, but `false` instead of a panic when the socket is gone.
    pub async fn try_send(&mut self, value: Value) -> bool {
        self.framed
            .send(WsMessage::Text(value.to_string().into()))
            .await
            .is_ok()
    }

    /// Opens a WebSocket to `/ws` on a loopback port (on any thread that
    /// runs an actix system).
    pub async fn connect(port: u16) -> WsClient {
        Self::connect_url(&format!("ws://127.0.0.1:{port}/ws"))
            .await
            .0
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

    /// Sends `ping` with a fresh ref and asserts the `pong` echoing it:
    /// the connection is open and still served.
    pub async fn assert_alive(&mut self) {
        self.send(json!({"type":"ping","ref":"alive?"})).await;
        let v = self.reply_or_error("alive?").await;
        assert_eq!(v, json!({"type":"pong","ref":"alive?"}));
    }

    /// Reads until `n` `message` frames arrived; returns the whole frames
    /// (so a sender can see which ones carry its refs) in arrival order
    /// (other frames are skipped).
    pub async fn recv_message_frames(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = self.recv().await;
            if v["type"] == "message" {
                out.push(v);
            }
        }
        out
    }

    /// Like `recv_message_frames`, but returns the frames' `message`
    /// objects.
    pub async fn recv_messages(&mut self, n: usize) -> Vec<Value> {
        let frames = self.recv_message_frames(n).await;
        frames
            .into_iter()
            .map(|mut f| f["message"].take())
            .collect()
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
        let handle = &self.handle;
        let ended = format!("client thread {} ended", self.name);
        eventually(Duration::from_secs(10), &ended, || async move {
            handle
                .as_ref()
                .is_none_or(std::thread::JoinHandle::is_finished)
        })
        .await;
        self.reraise();
    }

    /// The client's result; panics if it panicked or took longer than
    /// `limit`.
    pub async fn result(mut self, limit: Duration) -> T {
        let what = format!("client thread {}'s result", self.name);
        match within(limit, &what, &mut self.rx).await {
            Ok(value) => value,
            // The sender was dropped: the body panicked.
            Err(_) => self.reraise(),
        }
    }

    /// Re-raises the panic of a body that ended without a result.
    fn reraise(&mut self) -> ! {
        if let Some(Err(panic)) = self.handle.take().map(std::thread::JoinHandle::join) {
            std::panic::resume_unwind(panic);
        }
        panic!("client thread {} ended without a result", self.name);
    }
}
