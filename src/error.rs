//! One error type for everything a client can be told. Each variant maps to a
//! stable snake_case code (PROTOCOL.md) and, for REST, an HTTP status; the
//! cause of `Unavailable` is kept for the logs but never shown to clients.

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
    #[error("nickname \"{0}\" is already taken in this room")]
    NicknameTaken(String),
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("too many requests: {0}")]
    RateLimited(String),
    #[error("you are not in a room")]
    NotInRoom,
    #[error("service unavailable: {0}")]
    Unavailable(String),
}

impl ChatError {
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
            ChatError::NicknameTaken(_) => "nickname_taken",
            ChatError::PayloadTooLarge(_) => "payload_too_large",
            ChatError::RateLimited(_) => "rate_limited",
            ChatError::NotInRoom => "not_in_room",
            ChatError::Unavailable(_) => "unavailable",
        }
    }

    /// The text shown to clients. For `Unavailable` the cause (a database
    /// error, say) goes to the log only.
    pub fn client_message(&self) -> String {
        match self {
            ChatError::Unavailable(_) => {
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
            ChatError::RoomNotFound(_) | ChatError::NotFound => StatusCode::NOT_FOUND,
            ChatError::NicknameTaken(_) => StatusCode::CONFLICT,
            ChatError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ChatError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ChatError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ChatError::Unavailable(cause) = self {
            log::warn!("answering 503 unavailable: {cause}");
        }
        HttpResponse::build(self.status_code()).json(json!({ "error": self.to_json() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_hides_its_cause_from_clients() {
        let e = ChatError::Unavailable("mysql: access denied for secret_user".into());
        assert_eq!(e.code(), "unavailable");
        assert!(!e.client_message().contains("secret_user"));
        assert_eq!(e.status_code(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn every_code_has_the_documented_status() {
        let cases: Vec<(ChatError, u16)> = vec![
            (ChatError::InvalidJson("x".into()), 400),
            (ChatError::InvalidParameter("x".into()), 400),
            (ChatError::RoomNotFound(RoomId::new(1)), 404),
            (ChatError::NotFound, 404),
            (ChatError::NicknameTaken("a".into()), 409),
            (ChatError::PayloadTooLarge(65536), 413),
            (ChatError::RateLimited("x".into()), 429),
        ];
        for (e, status) in cases {
            assert_eq!(e.status_code().as_u16(), status, "{}", e.code());
        }
    }
}
