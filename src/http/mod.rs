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

use crate::client_addr::{client_address, limit_key};
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

/// The key of the limits by client address (see [`crate::client_addr`]):
/// the peer, or behind a trusted proxy the rightmost `X-Forwarded-For` hop
/// it did not write itself; IPv6 clients by their /64.
pub fn client_key(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    settings: &Settings,
) -> Option<IpAddr> {
    let forwarded = headers
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok());
    let trusted = settings
        .trust_forwarded_for
        .then_some(&settings.trusted_proxies);
    client_address(forwarded, peer.map(|a| a.ip()), trusted).map(limit_key)
}
