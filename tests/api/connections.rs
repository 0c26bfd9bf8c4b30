//! Caps on open WebSockets (per client address and in all), the lobby idle
//! timeout, and deadlines for slow clients. Raw TCP clients, so a refusal
//! is seen exactly as written and a client can be bound to another
//! loopback address (Linux routes all of 127/8 to `lo`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::*;
use crate::memory_only_with;
use crate::wait::{eventually, within};

const HANDSHAKE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A TCP connection from `source` (a loopback address) to the server.
async fn connect_from(source: [u8; 4], port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(source)), 0))
        .unwrap();
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}

/// Reads an HTTP response head and its Content-Length body.
async fn read_response(stream: &mut TcpStream) -> (u16, String, Value) {
    let mut input = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&input[..end]).into_owned();
            let status = head[9..12].parse().unwrap();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            while input.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed inside the body: {head}");
                input.extend_from_slice(&chunk[..n]);
            }
            let body =
                serde_json::from_slice(&input[end + 4..end + 4 + length]).unwrap_or(Value::Null);
            return (status, head, body);
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a response: {input:?}");
        input.extend_from_slice(&chunk[..n]);
    }
}

/// A WebSocket handshake from `source`: the socket and the answer's status
/// and body.
async fn handshake_from(source: [u8; 4], port: u16) -> (TcpStream, u16, Value) {
    let mut stream = connect_from(source, port).await;
    stream.write_all(HANDSHAKE).await.unwrap();
    let (status, _, body) = within(
        Duration::from_secs(5),
        "the handshake's answer",
        read_response(&mut stream),
    )
    .await;
    (stream, status, body)
}

/// An open WebSocket from `source`; panics unless the answer is 101.
async fn open_from(source: [u8; 4], port: u16) -> TcpStream {
    let (stream, status, body) = handshake_from(source, port).await;
    assert_eq!(status, 101, "{body}");
    stream
}

/// A masked close frame (1000), as a polite client sends.
const CLOSE_FRAME: [u8; 8] = [0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2];

const HOME: [u8; 4] = [127, 0, 0, 1];
const NEIGHBOUR: [u8; 4] = [127, 0, 0, 2];

memory_only_with!(
    an_address_over_its_share_is_refused_and_gets_it_back_after_closes,
    |s| s.max_connections_per_address = 5,
    |app| {
        let mut open = Vec::new();
        for _ in 0..5 {
            open.push(open_from(HOME, app.port).await);
        }
        let (_, status, body) = handshake_from(HOME, app.port).await;
        assert_eq!(status, 429, "{body}");
        assert_error_envelope(&body, "too_many_connections");
        // Another address is not affected.
        let _neighbour = open_from(NEIGHBOUR, app.port).await;
        // One closes politely, one just disconnects: both places return.
        let mut polite = open.pop().unwrap();
        polite.write_all(&CLOSE_FRAME).await.unwrap();
        drop(open.pop());
        let mut more = Vec::new();
        let mut last = String::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while more.len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "two places not returned within 5 s; last answer: {last}"
            );
            let (stream, status, body) = handshake_from(HOME, app.port).await;
            match status {
                101 => more.push(stream),
                _ => {
                    last = format!("{status} {body}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let (_, status, _) = handshake_from(HOME, app.port).await;
        assert_eq!(status, 429, "full again with 5");
        drop(polite);
    }
);

memory_only_with!(
    the_process_over_max_connections_is_refused_with_503,
    |s| {
        s.max_connections = Some(8);
        s.max_connections_per_address = 1000;
    },
    |app| {
        let mut open = Vec::new();
        for i in 0..8 {
            let source = if i % 2 == 0 { HOME } else { NEIGHBOUR };
            open.push(open_from(source, app.port).await);
        }
        for source in [HOME, [127, 0, 0, 3]] {
            let (_, status, body) = handshake_from(source, app.port).await;
            assert_eq!(status, 503, "{body}");
            assert_error_envelope(&body, "server_full");
        }
        drop(open.pop());
        let port = app.port;
        eventually(Duration::from_secs(5), "a place returned", || async move {
            let (_, status, body) = handshake_from(HOME, port).await;
            match status {
                101 => Ok(()),
                _ => Err(format!("{status} {body}")),
            }
        })
        .await;
    }
);

memory_only_with!(
    a_socket_that_never_joins_is_closed_after_the_lobby_timeout,
    |s| {
        s.lobby_idle = Duration::from_secs(1);
        s.heartbeat_interval = Duration::from_secs(1);
        s.client_timeout = Duration::from_secs(10);
    },
    |app| {
        let room = app.create_room("stay").await;
        let room_id = room["id"].as_u64().unwrap();
        let (mut member, _) = app.join(room_id, "member").await;
        let mut idle = app.ws().await;
        let started = std::time::Instant::now();
        let code = within(Duration::from_secs(4), "the idle socket is closed", async {
            idle.close_code().await
        })
        .await;
        assert_eq!(code, Some(1000));
        assert!(started.elapsed() < Duration::from_millis(3500));
        // Well past the lobby timeout, the member is still served.
        tokio::time::sleep(Duration::from_secs(1)).await;
        member.assert_alive().await;
        // Once it leaves, its lobby clock starts.
        member.leave().await;
        let code = within(
            Duration::from_secs(4),
            "the member, gone to the lobby",
            async { member.close_code().await },
        )
        .await;
        assert_eq!(code, Some(1000));
    }
);

memory_only_with!(
    a_trickled_rest_body_is_cut_off_with_408,
    |s| s.request_body_timeout = Duration::from_secs(2),
    |app| {
        let mut stream = connect_from(HOME, app.port).await;
        let body = br#"{"title":"a room whose body never ends"}"#;
        let head = format!(
            "POST /api/rooms HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = std::time::Instant::now();
        let (mut reader, mut writer) = stream.into_split();
        // One byte a second, for longer than the test waits.
        let trickle = actix_rt::spawn(async move {
            for b in body.iter() {
                if writer.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut input = Vec::new();
        within(
            Duration::from_secs(4),
            "the trickled body is cut off",
            async {
                let mut chunk = [0u8; 1024];
                while let Ok(n) = reader.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    input.extend_from_slice(&chunk[..n]);
                }
            },
        )
        .await;
        trickle.abort();
        let text = String::from_utf8_lossy(&input);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains(r#""code":"request_timeout""#), "{text}");
        assert!(started.elapsed() >= Duration::from_millis(1900));
    }
);

memory_only_with!(
    a_handshake_whose_head_never_ends_is_dropped,
    |_| {},
    |app| {
        let mut stream = connect_from(HOME, app.port).await;
        stream
            .write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
            .await
            .unwrap();
        // actix-http's client_request_timeout (5 s) bounds the head.
        let mut rest = Vec::new();
        within(
            Duration::from_secs(8),
            "the half-open handshake is dropped",
            async {
                let _ = stream.read_to_end(&mut rest).await;
            },
        )
        .await;
        let text = String::from_utf8_lossy(&rest);
        assert!(!text.starts_with("HTTP/1.1 101"), "{text}");
    }
);

memory_only_with!(
    an_address_closed_for_flooding_is_refused_for_the_cooldown,
    |s| {
        s.ws_rate_burst = 5.0;
        s.ws_rate_per_sec = 2.0;
        s.ws_rate_violations = 5.0;
        s.ws_flood_cooldown = Duration::from_secs(2);
    },
    |app| {
        let mut flooder = app.ws().await;
        for i in 0..200 {
            flooder
                .send(serde_json::json!({"type":"ping","ref":format!("p{i}")}))
                .await;
        }
        let code = within(
            Duration::from_secs(10),
            "the flooder is closed",
            flooder.close_code(),
        )
        .await;
        assert_eq!(code, Some(1008));
        // Reconnecting at once buys no fresh flood.
        let (_refused, status, body) = handshake_from(HOME, app.port).await;
        assert_eq!(status, 429, "{body}");
        assert_error_envelope(&body, "rate_limited");
        // Nobody else is affected.
        let _neighbour = open_from(NEIGHBOUR, app.port).await;
        // After the cooldown the address is welcome again.
        tokio::time::sleep(Duration::from_millis(2300)).await;
        let _back = open_from(HOME, app.port).await;
    }
);

memory_only_with!(
    a_websocket_asked_for_once_shutdown_has_begun_is_refused_with_503,
    |_| {},
    |app| {
        // A client that never answers the server's close frame holds the
        // shutdown in the phase that closes every socket (at most 3 s),
        // while the listener still accepts.
        let mut holdout = open_from(HOME, app.port).await;
        // Its session is running once it answers a ping (a text frame,
        // masked with a zero key).
        let ping = br#"{"type":"ping"}"#;
        let mut frame = vec![0x81, 0x80 | ping.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(ping);
        holdout.write_all(&frame).await.unwrap();
        let mut head = [0u8; 2];
        within(
            Duration::from_secs(5),
            "the pong",
            holdout.read_exact(&mut head),
        )
        .await
        .unwrap();
        let mut pong = vec![0u8; usize::from(head[1])];
        holdout.read_exact(&mut pong).await.unwrap();
        assert!(String::from_utf8_lossy(&pong).contains("pong"), "{pong:?}");
        let port = app.port;
        let late = async move {
            let mut head = [0u8; 4];
            within(
                Duration::from_secs(10),
                "the holdout's close frame",
                holdout.read_exact(&mut head),
            )
            .await
            .unwrap();
            assert_eq!(
                (head[0], &head[2..]),
                (0x88, &[0x03, 0xe9][..]),
                "a close frame with 1001"
            );
            // Shutdown has begun: a new socket would only be closed again
            // (or, before the fix, left open with no 1001 when the process
            // exits: browsers saw 1006).
            let (_, status, body) = handshake_from(NEIGHBOUR, port).await;
            (status, body)
        };
        let (_, (status, body)) = tokio::join!(
            within(Duration::from_secs(15), "app.stop()", app.stop()),
            late
        );
        assert_eq!(status, 503, "{body}");
        assert_error_envelope(&body, "unavailable");
    }
);
