//! HTTP routes: one module per resource. Every error leaves as the JSON
//! envelope of `error.rs`, including unknown paths.

pub mod health;
pub mod page;
pub mod rooms;
pub mod state;
pub mod ws;

use std::net::{IpAddr, SocketAddr};

use actix_web::http::header::HeaderMap;
use actix_web::{web, HttpResponse};

use crate::config::Settings;
use crate::error::ChatError;

/// Mounts every route.
pub fn configure(cfg: &mut web::ServiceConfig, static_dir: &str) {
    cfg.route("/health", web::get().to(health::health))
        .route("/api/rooms", web::get().to(rooms::list_rooms))
        .route("/api/rooms", web::post().to(rooms::create_room))
        .route("/api/rooms/{id}", web::get().to(rooms::get_room))
        .route(
            "/api/rooms/{id}/members",
            web::get().to(rooms::list_members),
        )
        .route(
            "/api/rooms/{id}/messages",
            web::get().to(rooms::list_messages),
        )
        .route("/ws", web::get().to(ws::not_an_upgrade))
        .route("/chat", web::get().to(page::chat_page))
        .route("/", web::get().to(page::redirect_to_chat))
        .service(actix_files::Files::new("/static", static_dir))
        .default_service(web::to(not_found));
}

async fn not_found() -> Result<HttpResponse, ChatError> {
    Err(ChatError::NotFound)
}

/// The address rate limits are keyed by: the peer, or the first
/// `X-Forwarded-For` hop when `TRUST_FORWARDED_FOR` says a proxy (nginx)
/// sits in front and sets it.
pub fn client_ip(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    settings: &Settings,
) -> Option<IpAddr> {
    if settings.trust_forwarded_for {
        let forwarded = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    peer.map(|a| a.ip())
}
