//! `GET /ws`. actix-http hands every WebSocket upgrade request to
//! [`upgrade`] together with the socket; we answer the handshake ourselves
//! and give the socket to a new `ChatSession`, so no HTTP machinery (or its
//! buffers) stays behind for the connection's life. A `GET /ws` that does
//! not ask to upgrade reaches the ordinary route, [`not_an_upgrade`].

use std::sync::Arc;

use actix::Actor;
use actix_codec::Framed;
use actix_http::{h1, HttpMessage, Request};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::state::HttpState;
use crate::actors::session::ChatSession;
use crate::error::ChatError;
use crate::ws::{handshake, Transport};

/// Answers an upgrade request and, if it is a good WebSocket handshake on
/// `/ws`, starts the connection's session actor on this worker's thread.
pub async fn upgrade(
    app: Arc<HttpState>,
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
    let response = match handshake::answer(
        req.head(),
        &app.settings.instance_id,
        &app.settings.allowed_origins,
    ) {
        Ok(accepted) => accepted,
        Err(refused) => {
            io.write_all(&refused).await?;
            return io.shutdown().await;
        }
    };
    io.write_all(&response).await?;
    let peer = super::client_key(req.headers(), req.peer_addr(), &app.settings);
    let chat = app.chat.clone();
    // Input the client sent right behind its handshake is the session's.
    let transport = Transport::new(io, &parts.read_buf, chat.limits.transport);
    ChatSession::new(chat, peer, transport).start();
    Ok(())
}

/// A plain `GET /ws`: tell the client what was expected.
pub async fn not_an_upgrade() -> Result<actix_web::HttpResponse, ChatError> {
    Err(ChatError::InvalidParameter(
        "GET /ws must be a WebSocket upgrade (Upgrade: websocket)".into(),
    ))
}
