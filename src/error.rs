//! One error type for everything a client can be told. Each variant maps to a
//! stable snake_case code (docs/PROTOCOL.md) and, for REST, an HTTP status; the
//! cause of `Unavailable` is kept for the logs but never shown to clients.
//! [`Chain`] prints an error with all its causes, for those logs.

use std::error::Error;
use std::fmt;

use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use serde_json::json;

use crate::domain::RoomId;

/// A failure a client can see, over REST or as a WebSocket `error` frame.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("invalid {0}")]
    InvalidTitle(String),
    #[error("invalid {0}")]
    InvalidNickname(String),
    #[error("invalid {0}")]
    InvalidContent(String),
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    #[error("room {0} not found")]
    RoomNotFound(RoomId),
    #[error("not found")]
    NotFound,
    /// A known path asked with a method it does not serve; the value is the
    /// `Allow` header (`"GET, HEAD"`).
    #[error("method not allowed; this path allows {0}")]
    MethodNotAllowed(&'static str),
    /// A WebSocket handshake from a page whose `Origin` is not allowed
    /// (`ALLOWED_ORIGINS`); the value is that origin.
    #[error("origin {0:?} may not open a WebSocket here")]
    ForbiddenOrigin(String),
    #[error("nickname \"{0}\" is already taken in this room")]
    NicknameTaken(String),
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("too many requests: {0}")]
    RateLimited(String),
    #[error("you are not in a room")]
    NotInRoom,
    /// A WebSocket handshake from an address that already holds
    /// `MAX_CONNECTIONS_PER_ADDRESS` (the value) open sockets.
    #[error("too many open connections from your address (at most {0})")]
    TooManyConnections(usize),
    /// A WebSocket handshake while the process holds `MAX_CONNECTIONS`
    /// open sockets.
    #[error("the server is full; please retry shortly")]
    ServerFull,
    /// A request body that did not arrive within `REQUEST_BODY_TIMEOUT_SECS`
    /// (the value, in seconds).
    #[error("the request body did not arrive within {0} s")]
    RequestTimeout(u64),
    /// A backing service (the store, an actor) failed. `reason` says what
    /// could not be done and `source` is the underlying error, if any; both
    /// are for the logs only (see [`ChatError::client_message`]).
    #[error("service unavailable: {reason}")]
    Unavailable {
        reason: String,
        #[source]
        source: Option<Box<dyn Error + Send + Sync>>,
    },
}

impl ChatError {
    /// `Unavailable` with no underlying error (an actor did not answer, say).
    pub fn unavailable(reason: impl Into<String>) -> Self {
        ChatError::Unavailable {
            reason: reason.into(),
            source: None,
        }
    }

    /// `Unavailable` caused by `source`, which the logs show in full.
    pub fn unavailable_because(
        reason: impl Into<String>,
        source: impl Error + Send + Sync + 'static,
    ) -> Self {
        ChatError::Unavailable {
            reason: reason.into(),
            source: Some(Box::new(source)),
        }
    }

    /// The stable code clients switch on.
    pub fn code(&self) -> &'static str {
        match self {
            ChatError::InvalidJson(_) => "invalid_json",
            ChatError::InvalidTitle(_) => "invalid_title",
            ChatError::InvalidNickname(_) => "invalid_nickname",
            ChatError::InvalidContent(_) => "invalid_content",
            ChatError::InvalidParameter(_) => "invalid_parameter",
            ChatError::InvalidMessage(_) => "invalid_message",
            ChatError::RoomNotFound(_) => "room_not_found",
            ChatError::NotFound => "not_found",
            ChatError::MethodNotAllowed(_) => "method_not_allowed",
            ChatError::ForbiddenOrigin(_) => "forbidden_origin",
            ChatError::NicknameTaken(_) => "nickname_taken",
            ChatError::PayloadTooLarge(_) => "payload_too_large",
            ChatError::UnsupportedMediaType(_) => "unsupported_media_type",
            ChatError::RateLimited(_) => "rate_limited",
            ChatError::NotInRoom => "not_in_room",
            ChatError::TooManyConnections(_) => "too_many_connections",
            ChatError::ServerFull => "server_full",
            ChatError::RequestTimeout(_) => "request_timeout",
            ChatError::Unavailable { .. } => "unavailable",
        }
    }

    /// The text shown to clients. For `Unavailable` the cause (a database
    /// error, say) goes to the log only.
    pub fn client_message(&self) -> String {
        match self {
            ChatError::Unavailable { .. } => {
                "a backing service is unavailable; please retry shortly".to_owned()
            }
            other => other.to_string(),
        }
    }

    /// `{"code": ..., "message": ...}`, the body of both REST errors and
    /// WebSocket `error` frames.
    pub fn to_json(&self) -> serde_json::Value {
        json!({"code": self.code(), "message": self.client_message()})
    }
}

impl ResponseError for ChatError {
    fn status_code(&self) -> StatusCode {
        match self {
            ChatError::InvalidJson(_)
            | ChatError::InvalidTitle(_)
            | ChatError::InvalidNickname(_)
            | ChatError::InvalidContent(_)
            | ChatError::InvalidParameter(_)
            | ChatError::InvalidMessage(_)
            | ChatError::NotInRoom => StatusCode::BAD_REQUEST,
            ChatError::ForbiddenOrigin(_) => StatusCode::FORBIDDEN,
            ChatError::RoomNotFound(_) | ChatError::NotFound => StatusCode::NOT_FOUND,
            ChatError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ChatError::NicknameTaken(_) => StatusCode::CONFLICT,
            ChatError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ChatError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ChatError::RateLimited(_) | ChatError::TooManyConnections(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ChatError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ChatError::ServerFull => StatusCode::SERVICE_UNAVAILABLE,
            ChatError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ChatError::Unavailable { .. } = self {
            log::warn!("answering 503: {}", Chain(self));
        }
        let mut response = HttpResponse::build(self.status_code());
        if let ChatError::MethodNotAllowed(allow) = self {
            response.insert_header((actix_web::http::header::ALLOW, *allow));
        }
        if let ChatError::RequestTimeout(_) = self {
            // The rest of the body may never come: do not wait for it to
            // read the next request.
            response.force_close();
        }
        let mut response = response.json(json!({ "error": self.to_json() }));
        // For the error counter (`http::metrics::count_errors`).
        response.extensions_mut().insert(AnsweredCode(self.code()));
        response
    }
}

/// The code of the error a REST response carries, kept in the response's
/// extensions so a middleware can count answers by code without parsing
/// bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnsweredCode(pub &'static str);

/// Displays an error followed by its causes, outermost first, joined with
/// ": " (`a: b: c`), so that one log line tells the whole story.
///
/// Some libraries (`mysql_async`, `redis`) both print their cause in their
/// own message and return it from `source()`; a cause whose text already
/// appears in the message before it is therefore not repeated (its own
/// causes still are).
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !shown.contains(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            next = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test error: `text`, caused by `cause`.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    fn layers(texts: &[&'static str]) -> Layer {
        let (first, rest) = texts.split_first().expect("at least one layer");
        Layer(first, (!rest.is_empty()).then(|| Box::new(layers(rest))))
    }

    #[test]
    fn chain_joins_every_cause() {
        assert_eq!(Chain(&layers(&["a"])).to_string(), "a");
        assert_eq!(Chain(&layers(&["a", "b", "c"])).to_string(), "a: b: c");
    }

    #[test]
    fn chain_does_not_repeat_a_cause_its_error_already_printed() {
        // As mysql_async's `Io(IoError::Io(io::Error))` does.
        let e = layers(&[
            "Input/output error: Input/output error: refused",
            "Input/output error: refused",
            "refused",
        ]);
        assert_eq!(
            Chain(&e).to_string(),
            "Input/output error: Input/output error: refused"
        );
        let e = layers(&["outer: inner", "inner", "root"]);
        assert_eq!(Chain(&e).to_string(), "outer: inner: root");
    }

    #[test]
    fn unavailable_hides_its_cause_from_clients() {
        let e = ChatError::unavailable_because(
            "store call failed",
            layers(&["mysql: access denied for secret_user"]),
        );
        assert_eq!(e.code(), "unavailable");
        assert_eq!(
            e.client_message(),
            "a backing service is unavailable; please retry shortly"
        );
        assert!(!e.to_json().to_string().contains("secret_user"));
        assert_eq!(e.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        // The logs still get it.
        assert!(Chain(&e).to_string().contains("secret_user"));
    }

    #[test]
    fn every_code_has_the_documented_status() {
        let cases: Vec<(ChatError, u16)> = vec![
            (ChatError::InvalidJson("x".into()), 400),
            (ChatError::InvalidParameter("x".into()), 400),
            (ChatError::RoomNotFound(RoomId::new(1)), 404),
            (ChatError::ForbiddenOrigin("http://evil.test".into()), 403),
            (ChatError::NotFound, 404),
            (ChatError::MethodNotAllowed("GET, HEAD"), 405),
            (ChatError::NicknameTaken("a".into()), 409),
            (ChatError::PayloadTooLarge(65536), 413),
            (ChatError::UnsupportedMediaType("x".into()), 415),
            (ChatError::RateLimited("x".into()), 429),
            (ChatError::TooManyConnections(64), 429),
            (ChatError::ServerFull, 503),
            (ChatError::RequestTimeout(10), 408),
        ];
        for (e, status) in cases {
            assert_eq!(e.status_code().as_u16(), status, "{}", e.code());
        }
    }

    #[test]
    fn method_not_allowed_names_the_allowed_methods() {
        let e = ChatError::MethodNotAllowed("GET, HEAD, POST");
        assert_eq!(e.code(), "method_not_allowed");
        let response = e.error_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok()),
            Some("GET, HEAD, POST")
        );
    }

    #[test]
    fn every_code_is_a_label_of_the_error_counter_and_rest_answers_carry_it() {
        let all = [
            ChatError::InvalidJson("x".into()),
            ChatError::InvalidTitle("x".into()),
            ChatError::InvalidNickname("x".into()),
            ChatError::InvalidContent("x".into()),
            ChatError::InvalidParameter("x".into()),
            ChatError::InvalidMessage("x".into()),
            ChatError::RoomNotFound(RoomId::new(1)),
            ChatError::NotFound,
            ChatError::MethodNotAllowed("GET"),
            ChatError::ForbiddenOrigin("x".into()),
            ChatError::NicknameTaken("x".into()),
            ChatError::PayloadTooLarge(1),
            ChatError::UnsupportedMediaType("x".into()),
            ChatError::RateLimited("x".into()),
            ChatError::NotInRoom,
            ChatError::TooManyConnections(1),
            ChatError::ServerFull,
            ChatError::RequestTimeout(1),
            ChatError::unavailable("x"),
        ];
        let codes: Vec<&str> = all.iter().map(ChatError::code).collect();
        assert_eq!(codes, crate::telemetry::ERROR_CODES);
        for e in &all {
            let response = e.error_response();
            assert_eq!(
                response.extensions().get::<AnsweredCode>(),
                Some(&AnsweredCode(e.code()))
            );
        }
    }
}
