//! The WebSocket opening handshake (RFC 6455 §4.2), answered on a socket
//! that actix-http has handed over (see `http::ws`). Responses are written
//! as raw HTTP/1.1, since the HTTP machinery is no longer in the way.

use actix_http::header::{
    HeaderMap, ALLOW, CONNECTION, HOST, ORIGIN, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use actix_http::{Method, RequestHead};
use bytes::{BufMut, Bytes, BytesMut};

use super::origin::{origin_allowed, AllowedOrigins};
use crate::error::ChatError;

/// The path of the WebSocket endpoint.
pub const WS_PATH: &str = "/ws";

/// A refused handshake: the error code (for the error counter) and the
/// complete response to write.
#[derive(Debug)]
pub struct Refused {
    pub code: &'static str,
    pub response: Bytes,
}

/// Checks a request that asked to upgrade. `Ok` is the `101` response to
/// write before the first frame; `Err` holds a complete error response
/// (`404` for another path, `405` for another method, `400` for a
/// malformed handshake, `403` for an `Origin` that `allowed` refuses),
/// after which the connection is closed.
pub fn answer(
    head: &RequestHead,
    instance_id: &str,
    allowed: &AllowedOrigins,
) -> Result<Bytes, Refused> {
    let refuse = |error: ChatError| Refused {
        code: error.code(),
        response: error_response(&error, instance_id),
    };
    if head.uri.path() != WS_PATH {
        return Err(refuse(ChatError::NotFound));
    }
    if head.method == Method::HEAD {
        // HEAD /ws is served (as 400) like GET /ws: it cannot upgrade.
        return Err(refuse(ChatError::InvalidParameter(
            "a WebSocket handshake must be a GET".into(),
        )));
    }
    if head.method != Method::GET {
        return Err(refuse(ChatError::MethodNotAllowed("GET, HEAD")));
    }
    let key = check_headers(&head.headers)
        .map_err(|why| refuse(ChatError::InvalidParameter(why.into())))?;
    check_origin(&head.headers, allowed).map_err(refuse)?;
    let accept = actix_http::ws::hash_key(key);
    let mut out = BytesMut::with_capacity(192);
    out.put_slice(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ");
    out.put_slice(&accept);
    put_instance(&mut out, instance_id);
    out.put_slice(b"\r\n");
    Ok(out.freeze())
}

/// `Err(ForbiddenOrigin)` when the page that opens the socket is not one
/// `allowed` names (see `origin.rs`).
fn check_origin(headers: &HeaderMap, allowed: &AllowedOrigins) -> Result<(), ChatError> {
    let text = |name| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("(not text)"))
    };
    let origin = text(ORIGIN);
    if origin_allowed(origin, text(HOST), allowed) {
        Ok(())
    } else {
        Err(ChatError::ForbiddenOrigin(
            origin.unwrap_or_default().chars().take(200).collect(),
        ))
    }
}

/// The client's key, if the headers make a version 13 handshake.
fn check_headers(headers: &HeaderMap) -> Result<&[u8], &'static str> {
    let has_token = |name, token: &str| {
        headers.get_all(name).any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has_token(UPGRADE, "websocket") {
        return Err("the Upgrade header must be \"websocket\"");
    }
    if !has_token(CONNECTION, "upgrade") {
        return Err("the Connection header must include \"upgrade\"");
    }
    if headers.get(SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err("Sec-WebSocket-Version must be 13");
    }
    match headers.get(SEC_WEBSOCKET_KEY) {
        // A key is 16 random bytes in base64: 24 characters.
        Some(key) if key.len() == 24 => Ok(key.as_bytes()),
        _ => Err("Sec-WebSocket-Key is missing or malformed"),
    }
}

/// A whole HTTP error response with the contract's JSON envelope.
pub fn error_response(error: &ChatError, instance_id: &str) -> Bytes {
    use actix_web::ResponseError;
    let status = error.status_code();
    let body = serde_json::json!({ "error": error.to_json() }).to_string();
    let mut out = BytesMut::with_capacity(256 + body.len());
    out.put_slice(
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .as_bytes(),
    );
    if let ChatError::MethodNotAllowed(allow) = error {
        out.put_slice(b"\r\n");
        out.put_slice(ALLOW.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(allow.as_bytes());
    }
    put_instance(&mut out, instance_id);
    out.put_slice(b"\r\n");
    out.put_slice(body.as_bytes());
    out.freeze()
}

/// Ends the header line in progress and adds `X-Chat-Instance`, which every
/// response carries (operators behind a balancer see which process answered).
fn put_instance(out: &mut BytesMut, instance_id: &str) {
    out.put_slice(b"\r\nx-chat-instance: ");
    // A header value must not break the response: drop control characters.
    out.extend(instance_id.bytes().filter(|b| !b.is_ascii_control()));
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::header::{HeaderName, HeaderValue};
    use actix_http::Uri;

    fn head(method: Method, path: &str, headers: &[(&str, &str)]) -> RequestHead {
        let mut head = RequestHead::default();
        head.method = method;
        head.uri = path.parse::<Uri>().unwrap();
        for (name, value) in headers {
            head.headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        head
    }

    const GOOD: &[(&str, &str)] = &[
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    fn text(b: Result<Bytes, Refused>) -> (bool, String) {
        match b {
            Ok(b) => (true, String::from_utf8(b.to_vec()).unwrap()),
            Err(refused) => {
                let text = String::from_utf8(refused.response.to_vec()).unwrap();
                let code = format!("\"code\":\"{}\"", refused.code);
                assert!(text.contains(&code), "{code} not in {text}");
                (false, text)
            }
        }
    }

    #[test]
    fn accepts_the_rfc_example_with_its_accept_key() {
        let (ok, response) = text(answer(&head(Method::GET, "/ws?x=1", GOOD), "a1", &SAME));
        assert!(ok);
        assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(response.contains("\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(response.contains("\r\nx-chat-instance: a1\r\n"));
        assert!(response.ends_with("\r\n\r\n"));
    }

    const SAME: AllowedOrigins = AllowedOrigins::SameHost;

    #[test]
    fn other_paths_are_not_found_and_other_methods_not_allowed() {
        let (ok, response) = text(answer(&head(Method::GET, "/api/rooms", GOOD), "a", &SAME));
        assert!(!ok);
        assert!(response.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(response.ends_with(r#""code":"not_found","message":"not found"}}"#));
        let (ok, response) = text(answer(&head(Method::POST, "/ws", GOOD), "a", &SAME));
        assert!(!ok);
        assert!(response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(response.contains("\r\nallow: GET, HEAD\r\n"), "{response}");
        assert!(response.contains(r#""code":"method_not_allowed""#));
    }

    #[test]
    fn a_foreign_origin_is_refused_with_403() {
        fn with(origin: &'static str) -> Vec<(&'static str, &'static str)> {
            let mut headers = GOOD.to_vec();
            headers.push(("host", "chat.example:8080"));
            headers.push(("origin", origin));
            headers
        }
        let (ok, response) = text(answer(
            &head(Method::GET, "/ws", &with("http://evil.example")),
            "a",
            &SAME,
        ));
        assert!(!ok);
        assert!(
            response.starts_with("HTTP/1.1 403 Forbidden\r\n"),
            "{response}"
        );
        let (head_part, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head_part.contains(&format!("content-length: {}", body.len())));
        assert!(body.contains(r#""code":"forbidden_origin""#), "{body}");
        let (ok, _) = text(answer(
            &head(Method::GET, "/ws", &with("http://chat.example:8080")),
            "a",
            &SAME,
        ));
        assert!(ok);
        let (ok, _) = text(answer(
            &head(Method::GET, "/ws", &with("http://evil.example")),
            "a",
            &AllowedOrigins::Any,
        ));
        assert!(ok);
    }

    #[test]
    fn malformed_handshakes_get_a_400_with_content_length() {
        let mut bad_version = GOOD.to_vec();
        bad_version[2] = ("sec-websocket-version", "8");
        let mut no_key = GOOD.to_vec();
        no_key.pop();
        for headers in [bad_version, no_key] {
            let (ok, response) = text(answer(&head(Method::GET, "/ws", &headers), "a", &SAME));
            assert!(!ok);
            assert!(response.starts_with("HTTP/1.1 400 Bad Request\r\n"));
            let (head, body) = response.split_once("\r\n\r\n").unwrap();
            assert!(head.contains(&format!("content-length: {}", body.len())));
            assert!(body.contains("invalid_parameter"));
        }
    }
}
