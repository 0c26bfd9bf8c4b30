//! The REST access log: one line per HTTP request the application answers
//! (WebSocket upgrades leave actix-http before it, see `http::ws`), with
//! the fields `method`, `path`, `status`, `duration_ms` and `client`.
//!
//! What is logged, and why:
//! - `path` without the query string: the query's values are the client's
//!   (cursors, limits today, perhaps a token tomorrow) and the path names
//!   the resource. At most [`PATH_MAX_CHARS`] characters, so a client's
//!   long path cannot make long lines.
//! - `client`: the address `client_addr` resolves (the peer, or behind a
//!   trusted proxy with `TRUST_FORWARDED_FOR` the client `X-Forwarded-For`
//!   names), the one the rate limits key on; without trust behind nginx it
//!   is nginx's own address, which is true but says little.
//! - `duration_ms`: from the request's arrival at the application to its
//!   response being ready (a static file's body is sent after it).
//! - The level ([`level`]): `GET`/`HEAD /health` answered 200 at `debug`,
//!   because pm2, nginx and the tests poll it (once a second would be 86,400
//!   lines a day of nothing); a `/health` that is not 200 and every other
//!   request at `info`. `RUST_LOG=info,chat_server::http::access_log=warn`
//!   silences the access log.

use std::borrow::Cow;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use log::Level;

use super::state::HttpState;
use crate::client_addr::client_address;

/// Longest `path` written (characters); a longer one is cut and ends in
/// `...`.
pub const PATH_MAX_CHARS: usize = 200;

/// Middleware (`from_fn`) around the whole application: times the request
/// and logs its answer.
pub async fn log_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = shown_path(req.path()).into_owned();
    let client = req.app_data::<web::Data<HttpState>>().and_then(|state| {
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok());
        let settings = &state.settings;
        let trusted = settings
            .trust_forwarded_for
            .then_some(&settings.trusted_proxies);
        client_address(forwarded, req.peer_addr().map(|a| a.ip()), trusted)
    });
    let answered = next.call(req).await;
    let status = match &answered {
        Ok(response) => response.status(),
        Err(e) => e.as_response_error().status_code(),
    }
    .as_u16();
    let duration_ms = elapsed_ms(started);
    let client = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    log::log!(
        level(&method, &path, status),
        method = method.as_str(),
        path = path.as_str(),
        status = status,
        duration_ms = duration_ms,
        client = client.as_str();
        "{method} {path} {status} {duration_ms} ms"
    );
    answered
}

/// The level of a request's line: see the module's doc.
pub fn level(method: &actix_web::http::Method, path: &str, status: u16) -> Level {
    let polled = (method == actix_web::http::Method::GET
        || method == actix_web::http::Method::HEAD)
        && path == "/health"
        && status == 200;
    if polled {
        Level::Debug
    } else {
        Level::Info
    }
}

/// `path`, cut to [`PATH_MAX_CHARS`] characters.
pub fn shown_path(path: &str) -> Cow<'_, str> {
    match path.char_indices().nth(PATH_MAX_CHARS) {
        None => Cow::Borrowed(path),
        Some((end, _)) => Cow::Owned(format!("{}...", &path[..end])),
    }
}

/// Milliseconds since `started`, to the microsecond.
fn elapsed_ms(started: Instant) -> f64 {
    (started.elapsed().as_micros() as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::Method;

    #[test]
    fn only_a_healthy_health_poll_is_debug() {
        assert_eq!(level(&Method::GET, "/health", 200), Level::Debug);
        assert_eq!(level(&Method::HEAD, "/health", 200), Level::Debug);
        // Something worth seeing: an unhealthy answer, another method.
        assert_eq!(level(&Method::GET, "/health", 503), Level::Info);
        assert_eq!(level(&Method::POST, "/health", 405), Level::Info);
        assert_eq!(level(&Method::GET, "/health/", 404), Level::Info);
        assert_eq!(level(&Method::GET, "/api/rooms", 200), Level::Info);
        assert_eq!(level(&Method::POST, "/api/rooms", 201), Level::Info);
    }

    #[test]
    fn a_long_path_is_cut_on_a_character_boundary() {
        assert_eq!(shown_path("/api/rooms/1"), "/api/rooms/1");
        let exact = "a".repeat(PATH_MAX_CHARS);
        assert_eq!(shown_path(&exact), exact.as_str());
        let long = "é".repeat(PATH_MAX_CHARS + 50);
        let shown = shown_path(&long);
        assert!(shown.ends_with("..."), "{shown}");
        assert_eq!(shown.chars().count(), PATH_MAX_CHARS + 3);
    }
}
