//! `GET /ws`. actix-http hands every WebSocket upgrade request to
//! [`upgrade`] together with the socket; we answer the handshake ourselves
//! and give the socket to a new `ChatSession`, so no HTTP machinery (or its
//! buffers) stays behind for the connection's life. A `GET /ws` that does
//! not ask to upgrade reaches the ordinary route, [`not_an_upgrade`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::Actor;
use actix_codec::Framed;
use actix_http::{h1, HttpMessage, Request};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::actors::session::ChatSession;
use crate::error::ChatError;
use crate::startup::AppState;
use crate::ws::{handshake, Transport, TransportLimits};

/// Answers an upgrade request and, if it is a good WebSocket handshake on
/// `/ws`, starts the connection's session actor on this worker's thread.
pub async fn upgrade(
    app: Arc<AppState>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
) -> std::io::Result<()> {
    let parts = framed.into_parts();
    let mut io = parts.io;
    // Responses to requests the client pipelined before the upgrade, not
    // yet written by actix-http: they go first.
    if !parts.write_buf.is_empty() {
        io.write_all(&parts.write_buf).await?;
    }
    let response = match handshake::answer(req.head(), &app.settings.instance_id) {
        Ok(accepted) => accepted,
        Err(refused) => {
            io.write_all(&refused).await?;
            return io.shutdown().await;
        }
    };
    io.write_all(&response).await?;
    let settings = &app.settings;
    let limits = TransportLimits {
        max_message_bytes: settings.max_frame_bytes,
        max_queued_bytes: settings.session_buffer_bytes,
        client_timeout: settings.client_timeout,
    };
    let peer = super::client_ip(req.headers(), req.peer_addr(), settings);
    let number = app.next_session.fetch_add(1, Ordering::Relaxed);
    // Input the client sent right behind its handshake is the session's.
    let transport = Transport::new(io, &parts.read_buf, limits);
    ChatSession::new(number, app, peer, transport).start();
    Ok(())
}

/// A plain `GET /ws`: tell the client what was expected.
pub async fn not_an_upgrade() -> Result<actix_web::HttpResponse, ChatError> {
    Err(ChatError::InvalidParameter(
        "GET /ws must be a WebSocket upgrade (Upgrade: websocket)".into(),
    ))
}
