//! `GET /ws`. actix-http hands every WebSocket upgrade request to
//! [`upgrade`] together with the socket; we answer the handshake ourselves
//! and give the socket to a new `ChatSession`, so no HTTP machinery (or its
//! buffers) stays behind for the connection's life. A `GET /ws` that does
//! not ask to upgrade reaches the ordinary route, [`not_an_upgrade`].
//!
//! Before its `101`, a handshake takes a place under `MAX_CONNECTIONS` and
//! `MAX_CONNECTIONS_PER_ADDRESS` (see `connections.rs`); without one it is
//! refused with the JSON envelope (429 `too_many_connections`, 503
//! `server_full`), and once shutdown has begun it is refused with 503
//! `unavailable`. Whatever is written here, the `101` or a refusal, must
//! be taken by the client within [`HANDSHAKE_WRITE_TIMEOUT`], or the socket
//! is dropped: a client that never reads cannot hold it.

use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use actix_codec::Framed;
use actix_http::{h1, HttpMessage, Request};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::state::HttpState;
use crate::actors::session::ChatSession;
use crate::error::ChatError;
use crate::telemetry::RateLimit;
use crate::ws::{handshake, Transport};

/// The longest the handshake's answer (with responses pipelined before
/// it) may take to be written.
pub const HANDSHAKE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers an upgrade request and, if it is a good WebSocket handshake on
/// `/ws` and the connection caps allow one more, starts the connection's
/// session actor on this worker's thread.
pub async fn upgrade(
    app: Arc<HttpState>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
) -> std::io::Result<()> {
    let parts = framed.into_parts();
    let mut io = parts.io;
    // Responses to requests the client pipelined before the upgrade, not
    // yet written by actix-http, go first.
    let pipelined = &parts.write_buf[..];
    let instance = &app.settings.instance_id;
    let response = match handshake::answer(req.head(), instance, &app.settings.allowed_origins) {
        Ok(accepted) => accepted,
        Err(refused) => {
            app.chat.metrics.error(refused.code);
            let response = refused.response;
            return write_then_shut(&mut io, &[pipelined, &response], HANDSHAKE_WRITE_TIMEOUT)
                .await;
        }
    };
    let peer = super::client_key(req.headers(), req.peer_addr(), &app.settings);
    let cooling = peer.is_some_and(|ip| !app.chat.flood_penalties.has_token(&ip));
    // A handshake that arrives once shutdown has begun (on a connection
    // accepted before, such as a proxy's keep-alive connection, or before
    // the listener closes) gets no socket: it would only be closed again.
    // 503 lets a proxy try another instance (nginx/chat.conf).
    let admitted = if app.chat.sessions.is_closing() {
        Err(ChatError::unavailable("the server is shutting down"))
    } else if cooling {
        app.chat.metrics.rate_limited(RateLimit::FloodCooldown);
        Err(ChatError::RateLimited(
            "this address was just closed for flooding; retry in a few seconds".into(),
        ))
    } else {
        app.chat.connections.try_acquire(peer)
    };
    let slot = match admitted {
        Ok(slot) => slot,
        Err(refusal) => {
            log_refusal(&refusal, peer);
            app.chat.metrics.error(refusal.code());
            let refused = handshake::error_response(&refusal, instance);
            return write_then_shut(&mut io, &[pipelined, &refused], HANDSHAKE_WRITE_TIMEOUT).await;
        }
    };
    write_within(&mut io, &[pipelined, &response], HANDSHAKE_WRITE_TIMEOUT).await?;
    let chat = app.chat.clone();
    // Input the client sent right behind its handshake is the session's.
    let transport = Transport::new(io, &parts.read_buf, chat.limits.transport);
    ChatSession::new(chat, peer, transport, slot).start();
    Ok(())
}

fn log_refusal(refusal: &ChatError, peer: Option<std::net::IpAddr>) {
    let who = peer.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
    log::info!(client = who.as_str(); "WebSocket from {who} refused: {refusal}");
}

/// Writes `parts` whole, in order, or fails with `TimedOut` once
/// `deadline` has passed (a client that does not read).
async fn write_within<W: AsyncWrite + Unpin>(
    io: &mut W,
    parts: &[&[u8]],
    deadline: Duration,
) -> std::io::Result<()> {
    let write = async {
        for part in parts {
            io.write_all(part).await?;
        }
        Ok(())
    };
    match tokio::time::timeout(deadline, write).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the client did not take the handshake's answer within {deadline:?}"),
        )),
    }
}

/// [`write_within`], then the socket is shut for writing (the answer was a
/// refusal: `connection: close`).
async fn write_then_shut<W: AsyncWrite + Unpin>(
    io: &mut W,
    parts: &[&[u8]],
    deadline: Duration,
) -> std::io::Result<()> {
    write_within(io, parts, deadline).await?;
    match tokio::time::timeout(deadline, io.shutdown()).await {
        Ok(shut) => shut,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// A plain `GET /ws`: tell the client what was expected.
pub async fn not_an_upgrade() -> Result<actix_web::HttpResponse, ChatError> {
    Err(ChatError::InvalidParameter(
        "GET /ws must be a WebSocket upgrade (Upgrade: websocket)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A peer whose receive side holds 64 bytes and who never reads: a
    /// 200-byte answer cannot be written, and the write gives up in time.
    #[tokio::test]
    async fn a_client_that_never_reads_cannot_hold_the_handshake() {
        let (mut server, _client) = tokio::io::duplex(64);
        let answer = vec![b'x'; 200];
        let started = tokio::time::Instant::now();
        let e = write_within(&mut server, &[&answer], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
        let e = write_then_shut(
            &mut server,
            &[b"HTTP/1.1 ", &answer],
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_client_that_reads_gets_the_whole_answer() {
        let (mut server, mut client) = tokio::io::duplex(64);
        let answer: Vec<u8> = (0..200u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.map(|_| got)
        });
        write_then_shut(
            &mut server,
            &[&answer[..10], &answer[10..]],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        drop(server);
        assert_eq!(reader.await.unwrap().unwrap(), answer);
    }
}
