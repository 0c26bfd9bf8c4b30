//! HTTP routes: one module per resource. Every error leaves as the JSON
//! envelope of `error.rs`, including unknown paths (404), a known path's
//! other methods (405 with `Allow`) and the static files' errors.

pub mod access_log;
pub mod health;
pub mod metrics;
pub mod page;
pub mod rooms;
pub mod state;
pub mod ws;

use std::net::{IpAddr, SocketAddr};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::http::StatusCode;
use actix_web::middleware::{from_fn, Next};
use actix_web::{guard, web, HttpResponse, ResponseError};

use crate::client_addr::{client_address, limit_key};
use crate::config::Settings;
use crate::error::ChatError;

/// What a read-only path allows.
const GET_HEAD: &str = "GET, HEAD";

/// Headers on every HTTP response (nginx's site sets the same on the files
/// it serves itself): the page runs only its own script and style, talks
/// only to its own origin (`'self'` includes `ws:`/`wss:` to the same
/// host), and may not be framed, sniffed or leak its address.
pub const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
];

/// Mounts every route. Each path answers `HEAD` wherever it answers
/// `GET`, and any other method with 405 `method_not_allowed` and `Allow`.
/// `/metrics` is among them unless it has a listener of its own
/// (`METRICS_ADDR`); then it is an unknown path here (404).
pub fn configure(cfg: &mut web::ServiceConfig, static_dir: &str, with_metrics: bool) {
    if with_metrics {
        cfg.service(metrics_resource());
    }
    cfg.service(resource("/health", GET_HEAD).route(get_or_head().to(health::health)))
        .service(
            resource("/api/rooms", "GET, HEAD, POST")
                .route(get_or_head().to(rooms::list_rooms))
                .route(web::post().to(rooms::create_room)),
        )
        .service(resource("/api/rooms/{id}", GET_HEAD).route(get_or_head().to(rooms::get_room)))
        .service(
            resource("/api/rooms/{id}/members", GET_HEAD)
                .route(get_or_head().to(rooms::list_members)),
        )
        .service(
            resource("/api/rooms/{id}/messages", GET_HEAD)
                .route(get_or_head().to(rooms::list_messages)),
        )
        .service(resource("/ws", GET_HEAD).route(get_or_head().to(ws::not_an_upgrade)))
        .service(resource("/chat", GET_HEAD).route(get_or_head().to(page::chat_page)))
        .service(resource("/", GET_HEAD).route(get_or_head().to(page::redirect_to_chat)))
        .service(
            web::scope("/static")
                .wrap(from_fn(static_errors_as_json))
                .service(actix_files::Files::new("", static_dir)),
        )
        .default_service(web::to(not_found));
}

/// The routes of the `METRICS_ADDR` listener: `/metrics`, and 404 for
/// everything else.
pub fn configure_metrics_listener(cfg: &mut web::ServiceConfig) {
    cfg.service(metrics_resource())
        .default_service(web::to(not_found));
}

fn metrics_resource() -> actix_web::Resource {
    resource("/metrics", GET_HEAD).route(get_or_head().to(metrics::metrics))
}

/// A path whose other methods get 405 with `Allow: allow`.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        Err::<HttpResponse, _>(ChatError::MethodNotAllowed(allow))
    }))
}

/// A route for `GET` and `HEAD` (actix-web's `web::get()` is `GET` only;
/// actix-http leaves the body out of a `HEAD` answer).
fn get_or_head() -> actix_web::Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

async fn not_found() -> Result<HttpResponse, ChatError> {
    Err(ChatError::NotFound)
}

/// actix-files answers its errors in plain text (a missing file, a
/// malformed path, another method): they leave as the JSON envelope.
async fn static_errors_as_json(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let response = next.call(req).await?;
    let error = match response.status() {
        StatusCode::NOT_FOUND => ChatError::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ChatError::MethodNotAllowed(GET_HEAD),
        StatusCode::BAD_REQUEST => ChatError::InvalidParameter("malformed static file path".into()),
        _ => return Ok(response.map_into_left_body()),
    };
    let (req, _) = response.into_parts();
    Ok(ServiceResponse::new(req, error.error_response()).map_into_right_body())
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
