//! The WebSocket transport at the byte level: the handshake the server
//! answers itself, framing rules, and input that arrives together with the
//! handshake. A raw TCP client, so nothing smooths over what the server
//! really sends.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::memory_only_with;
use crate::wait::within;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A handshake to `/ws` with `Host: host` and, when given, `Origin`.
fn handshake_from(host: &str, origin: Option<&str>) -> String {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\n{origin}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

pub(crate) fn handshake(path: &str, version: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
}

/// A client frame: masked, as RFC 6455 requires of clients.
fn masked(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0xa1, 0x0b, 0x7c, 0x42];
    let mut out = vec![first_byte];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 65535 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

pub(crate) fn text_frame(v: &Value) -> Vec<u8> {
    masked(0x81, v.to_string().as_bytes())
}

/// A raw connection and what it has received but not yet parsed.
pub(crate) struct Raw {
    pub(crate) stream: TcpStream,
    input: Vec<u8>,
}

impl Raw {
    /// Connects and sends `first` (a handshake, maybe with frames behind
    /// it) in one write.
    pub(crate) async fn open(port: u16, first: &[u8]) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        Raw::start(stream, first).await
    }

    /// [`Raw::open`] with a small receive buffer, so that what the client
    /// does not read backs up into the server quickly.
    async fn open_small_window(port: u16, first: &[u8]) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket
            .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap();
        Raw::start(stream, first).await
    }

    async fn start(mut stream: TcpStream, first: &[u8]) -> Raw {
        stream.write_all(first).await.unwrap();
        Raw {
            stream,
            input: Vec::new(),
        }
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = within(
            Duration::from_secs(5),
            "bytes from the server",
            self.stream.read(&mut chunk),
        )
        .await
        .unwrap_or(0);
        self.input.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The response head (status line and headers) and any body given by
    /// Content-Length.
    pub(crate) async fn response(&mut self) -> (String, String) {
        loop {
            if let Some(end) = self.input.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.input[..end].to_vec()).unwrap();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |n| n.trim().parse().unwrap());
                while self.input.len() < end + 4 + length {
                    assert!(self.fill().await, "connection closed inside the body");
                }
                let body = String::from_utf8(self.input[end + 4..end + 4 + length].to_vec());
                self.input.drain(..end + 4 + length);
                return (head, body.unwrap());
            }
            assert!(self.fill().await, "connection closed before the response");
        }
    }

    /// The next server frame: (first byte, payload). Server frames are
    /// never masked.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.input.len() >= 2 {
                assert_eq!(self.input[1] & 0x80, 0, "server frames must not be masked");
                let (len, at) = match self.input[1] & 0x7f {
                    126 if self.input.len() >= 4 => (
                        u16::from_be_bytes([self.input[2], self.input[3]]) as usize,
                        4,
                    ),
                    127 if self.input.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.input[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.input.len() >= at + len {
                    let first = self.input[0];
                    let payload = self.input[at..at + len].to_vec();
                    self.input.drain(..at + len);
                    return Some((first, payload));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next JSON text frame, skipping pings.
    pub(crate) async fn json(&mut self) -> Value {
        loop {
            let (first, payload) = self.frame().await.expect("closed while expecting JSON");
            match first {
                0x81 => return serde_json::from_slice(&payload).unwrap(),
                0x89 => continue,
                other => panic!("unexpected frame {other:#x}: {payload:?}"),
            }
        }
    }

    /// Reads until the close frame; returns its code, then checks the
    /// server ends the TCP connection.
    async fn close_code(&mut self) -> u16 {
        loop {
            let (first, payload) = self.frame().await.expect("closed without a close frame");
            if first == 0x88 {
                assert!(payload.len() >= 2, "close frame without a code");
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                // Answer the close as a client does; the server then ends
                // the connection.
                let _ = self.stream.write_all(&masked(0x88, &payload[..2])).await;
                within(Duration::from_secs(5), "end of connection", async {
                    while self.fill().await {}
                })
                .await;
                return code;
            }
        }
    }
}

memory_only_with!(
    a_frame_sent_right_behind_the_handshake_is_served,
    |_| {},
    |app| {
        let mut first = handshake("/ws", "13").into_bytes();
        first.extend(text_frame(&json!({"type":"ping","ref":"early"})));
        first.extend(masked(0x89, b"hello"));
        let mut raw = Raw::open(app.port, &first).await;
        let (head, _) = raw.response().await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(
            head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head}"
        );
        assert!(head.contains(&format!("x-chat-instance: {}", app.settings.instance_id)));
        assert_eq!(raw.json().await, json!({"type":"pong","ref":"early"}));
        assert_eq!(raw.frame().await, Some((0x8A, b"hello".to_vec())));
    }
);

memory_only_with!(
    handshakes_the_server_refuses_get_json_errors,
    |_| {},
    |app| {
        let cases = [
            (handshake("/api/rooms", "13"), "404", "not_found"),
            (handshake("/ws", "8"), "400", "invalid_parameter"),
            (
                handshake("/ws", "13").replacen("GET", "POST", 1),
                "405",
                "method_not_allowed",
            ),
            (
                "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
                    .to_string(),
                "400",
                "invalid_parameter",
            ),
        ];
        for (request, status, code) in cases {
            let mut raw = Raw::open(app.port, request.as_bytes()).await;
            let (head, body) = raw.response().await;
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
            assert!(head.contains("content-type: application/json"), "{head}");
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_error_envelope(&body, code);
        }
        // A GET /ws that does not ask to upgrade is an ordinary request.
        let (status, body) = app.get("/ws").await;
        assert_eq!(status, 400);
        assert_error_envelope(&body, "invalid_parameter");
        // The server is unharmed.
        app.ws().await.assert_alive().await;
    }
);

memory_only_with!(fragments_are_joined_into_one_message, |_| {}, |app| {
    let mut raw = Raw::open(app.port, handshake("/ws", "13").as_bytes()).await;
    raw.response().await;
    let text = json!({"type":"ping","ref":"in three parts"}).to_string();
    let (a, rest) = text.split_at(5);
    let (b, c) = rest.split_at(7);
    let mut bytes = masked(0x01, a.as_bytes());
    // A ping between fragments is allowed and answered at once.
    bytes.extend(masked(0x89, b"mid"));
    bytes.extend(masked(0x00, b.as_bytes()));
    bytes.extend(masked(0x80, c.as_bytes()));
    raw.stream.write_all(&bytes).await.unwrap();
    assert_eq!(raw.frame().await, Some((0x8A, b"mid".to_vec())));
    assert_eq!(
        raw.json().await,
        json!({"type":"pong","ref":"in three parts"})
    );
});

memory_only_with!(
    broken_framing_closes_with_the_matching_code,
    |s| s.max_frame_bytes = 1000,
    |app| {
        let unmasked = [0x81u8, 0x02, b'{', b'}'].to_vec();
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("unmasked frame", unmasked, 1002),
            ("reserved bit", masked(0xC1, b"{}"), 1002),
            ("continuation first", masked(0x80, b"x"), 1002),
            ("not UTF-8", masked(0x81, &[0xff, 0xfe]), 1007),
            ("binary", masked(0x82, b"x"), 1003),
            ("one frame too big", masked(0x81, &[b' '; 1001]), 1009),
            (
                "fragments too big together",
                [masked(0x01, &[b' '; 600]), masked(0x80, &[b' '; 600])].concat(),
                1009,
            ),
        ];
        for (what, bytes, code) in cases {
            let mut raw = Raw::open(app.port, handshake("/ws", "13").as_bytes()).await;
            raw.response().await;
            raw.stream.write_all(&bytes).await.unwrap();
            assert_eq!(raw.close_code().await, code, "{what}");
        }
        app.ws().await.assert_alive().await;
    }
);

memory_only_with!(
    a_client_close_is_answered_and_the_socket_ends,
    |_| {},
    |app| {
        let mut raw = Raw::open(app.port, handshake("/ws", "13").as_bytes()).await;
        raw.response().await;
        raw.stream
            .write_all(&masked(0x88, &1000u16.to_be_bytes()))
            .await
            .unwrap();
        let (first, payload) = raw.frame().await.expect("a close frame in answer");
        assert_eq!(first, 0x88);
        assert_eq!(&payload[..2], &1000u16.to_be_bytes());
        // Then the server ends the connection.
        within(Duration::from_secs(5), "end of connection", async {
            while raw.fill().await {}
        })
        .await;
    }
);

memory_only_with!(
    a_client_that_pings_without_reading_is_closed_as_a_slow_consumer,
    |s| {
        s.session_buffer_bytes = 64 * 1024;
        s.client_timeout = Duration::from_secs(5);
    },
    |app| {
        let mut raw = Raw::open_small_window(app.port, handshake("/ws", "13").as_bytes()).await;
        raw.response().await;
        // 60,000 pings of 125 bytes ask for 7.6 MB of pongs: more than the
        // server's socket buffer and this client's small receive buffer
        // hold, so the pongs back up in the server, where they are bounded
        // like any frame.
        let ping = masked(0x89, &[b'p'; 125]);
        let burst: Vec<u8> = ping.repeat(1000);
        for _ in 0..60 {
            raw.stream.write_all(&burst).await.unwrap();
        }
        // Reading now, the client finds its pongs, then the 1008 close.
        let code = within(Duration::from_secs(20), "the close frame", raw.close_code()).await;
        assert_eq!(code, 1008);
        app.ws().await.assert_alive().await;
    }
);

memory_only_with!(a_malformed_close_frame_is_a_protocol_error, |_| {}, |app| {
    for (payload, code) in [
        (vec![0x03], 1002),
        (1005u16.to_be_bytes().to_vec(), 1002),
        ([&1000u16.to_be_bytes()[..], &[0xff]].concat(), 1007),
    ] {
        let mut raw = Raw::open(app.port, handshake("/ws", "13").as_bytes()).await;
        raw.response().await;
        raw.stream.write_all(&masked(0x88, &payload)).await.unwrap();
        let (first, answer) = raw.frame().await.expect("a close frame in answer");
        assert_eq!(first, 0x88);
        assert_eq!(&answer[..2], &u16::to_be_bytes(code), "{payload:?}");
    }
});

/// Opens a raw handshake and returns the response head and body.
async fn handshake_answer(port: u16, host: &str, origin: Option<&str>) -> (String, String) {
    let mut raw = Raw::open(port, handshake_from(host, origin).as_bytes()).await;
    raw.response().await
}

/// Asserts a handshake answer is 403 `forbidden_origin` in the envelope.
fn assert_forbidden_origin((head, body): (String, String)) {
    assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_error_envelope(&body, "forbidden_origin");
}

fn assert_switched((head, _): (String, String)) {
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
}

memory_only_with!(
    a_handshake_from_another_origin_is_403_forbidden_origin,
    |_| {},
    |app| {
        let host = format!("127.0.0.1:{}", app.port);
        // Another site's page: another host, port or scheme, or "null".
        for origin in [
            "http://evil.example".to_string(),
            format!("http://127.0.0.2:{}", app.port),
            format!("http://127.0.0.1:{}", app.port + 1),
            "null".to_string(),
        ] {
            assert_forbidden_origin(handshake_answer(app.port, &host, Some(&origin)).await);
        }
        // The server's own page, and a client that is not a browser.
        let own = format!("http://{host}");
        assert_switched(handshake_answer(app.port, &host, Some(&own)).await);
        assert_switched(handshake_answer(app.port, &host, None).await);
        // Behind a TLS proxy the page is https on the same host.
        assert_switched(
            handshake_answer(app.port, "chat.example", Some("https://chat.example")).await,
        );
    }
);

memory_only_with!(
    allowed_origins_star_accepts_any_origin,
    |s| s.allowed_origins = chat_server::config::AllowedOrigins::Any,
    |app| {
        let host = format!("127.0.0.1:{}", app.port);
        assert_switched(handshake_answer(app.port, &host, Some("http://evil.example")).await);
        assert_switched(handshake_answer(app.port, &host, Some("null")).await);
    }
);

memory_only_with!(
    allowed_origins_list_replaces_the_same_host_default,
    |s| {
        s.allowed_origins =
            chat_server::config::AllowedOrigins::parse("https://chat.example").unwrap()
    },
    |app| {
        let host = format!("127.0.0.1:{}", app.port);
        assert_switched(handshake_answer(app.port, &host, Some("https://chat.example")).await);
        assert_forbidden_origin(
            handshake_answer(app.port, &host, Some(&format!("http://{host}"))).await,
        );
        assert_switched(handshake_answer(app.port, &host, None).await);
    }
);
