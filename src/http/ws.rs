//! `GET /ws`: upgrades the connection and hands it to a new `ChatSession`.
//! The codec's frame limit is the configured `MAX_FRAME_BYTES`; a larger
//! frame surfaces in the session as an overflow and closes with 1009.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

use crate::actors::session::ChatSession;
use crate::startup::AppState;

/// Starts a session actor for this socket.
pub async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    app: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let n = app.next_session.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}:{n}", app.settings.instance_id);
    let peer = super::client_ip(&req, &app);
    let session = ChatSession::new(id, app.clone().into_inner(), peer);
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(app.settings.max_frame_bytes)
        .start()
}
