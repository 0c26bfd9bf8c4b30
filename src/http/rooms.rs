//! The room resource: list, create, show, members, message history.
//! Path and query values are parsed here by hand so that every malformed
//! one gets the contract's `invalid_parameter`, not actix's default text.

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::Value;

use super::state::HttpState;
use crate::actors::room_manager::GetMembers;
use crate::domain::{self, MessageSeq, RoomId, RoomTitle, TextLimits};
use crate::error::ChatError;
use crate::telemetry::RateLimit;

/// The header naming the `before` of the next page of `GET /api/rooms`.
pub const NEXT_BEFORE_HEADER: &str = "X-Next-Before";

/// `limit` of `GET /api/rooms` when absent (capped by `ROOMS_PAGE_MAX`).
pub const ROOMS_PAGE_DEFAULT: usize = 100;

/// `GET /api/rooms?before=&limit=`: one page of rooms, newest first, with
/// ids below `before`. When more rooms follow, `X-Next-Before` carries the
/// page's last id: the `before` of the next page.
pub async fn list_rooms(
    req: HttpRequest,
    app: web::Data<HttpState>,
) -> Result<HttpResponse, ChatError> {
    let mut before = None;
    let mut limit = ROOMS_PAGE_DEFAULT;
    for (key, value) in form_pairs(req.query_string()) {
        match key.as_str() {
            "before" => before = Some(RoomId::new(parse_count(&key, &value)?)),
            "limit" => limit = usize::try_from(parse_count(&key, &value)?).unwrap_or(usize::MAX),
            _ => {}
        }
    }
    let limit = limit.min(app.settings.rooms_page_max);
    // One more than the page tells whether another page follows.
    let mut rooms = app
        .chat
        .store
        .rooms(before, limit.saturating_add(1))
        .await?;
    let more = rooms.len() > limit;
    rooms.truncate(limit);
    let mut res = HttpResponse::Ok();
    if let (true, Some(last)) = (more, rooms.last()) {
        res.insert_header((NEXT_BEFORE_HEADER, last.id.get().to_string()));
    }
    Ok(res.json(rooms))
}

/// `POST /api/rooms` `{"title": "..."}`: 201 with the new, empty room. It
/// is deleted if nobody joins within the grace period (the manager's sweep).
pub async fn create_room(
    req: HttpRequest,
    body: web::Payload,
    app: web::Data<HttpState>,
) -> Result<HttpResponse, ChatError> {
    require_json(&req)?;
    let settings = &app.settings;
    let body = read_body(
        &req,
        body,
        settings.max_body_bytes,
        settings.request_body_timeout,
    )
    .await?;
    let title = parse_create_body(&body, &settings.limits)?;
    if let Some(ip) = super::client_key(req.headers(), req.peer_addr(), &app.settings) {
        if !app.chat.room_create_limiter.try_take(&ip) {
            app.chat.metrics.rate_limited(RateLimit::RoomCreates);
            return Err(ChatError::RateLimited(
                "too many rooms created; wait a moment".into(),
            ));
        }
    }
    let room = app.chat.store.create_room(&title, domain::now()).await?;
    Ok(HttpResponse::Created().json(room))
}

/// `GET /api/rooms/{id}`.
pub async fn get_room(
    path: web::Path<String>,
    app: web::Data<HttpState>,
) -> Result<HttpResponse, ChatError> {
    let id = parse_room_id(&path)?;
    match app.chat.store.room(id).await? {
        Some(room) => Ok(HttpResponse::Ok().json(room)),
        None => Err(ChatError::RoomNotFound(id)),
    }
}

/// `GET /api/rooms/{id}/members`: answered by the room's actor, not by a
/// database select.
pub async fn list_members(
    path: web::Path<String>,
    app: web::Data<HttpState>,
) -> Result<HttpResponse, ChatError> {
    let room_id = parse_room_id(&path)?;
    let members = app
        .chat
        .manager
        .send(GetMembers { room_id })
        .await
        .map_err(|e| ChatError::unavailable_because("the room manager did not answer", e))??;
    Ok(HttpResponse::Ok().json(members))
}

/// `GET /api/rooms/{id}/messages?after=&limit=`: ascending ids after
/// `after`; what a reconnecting client uses to catch up.
pub async fn list_messages(
    req: HttpRequest,
    path: web::Path<String>,
    app: web::Data<HttpState>,
) -> Result<HttpResponse, ChatError> {
    let room_id = parse_room_id(&path)?;
    let MessagesQuery { after, limit } = parse_messages_query(req.query_string())?;
    let limit = limit.min(app.settings.messages_page_max);
    let messages = app.chat.store.messages_after(room_id, after, limit).await?;
    if messages.is_empty() && app.chat.store.room(room_id).await?.is_none() {
        return Err(ChatError::RoomNotFound(room_id));
    }
    Ok(HttpResponse::Ok().json(messages))
}

/// Refuses, with 415 `unsupported_media_type`, a body whose `Content-Type`
/// is missing or is not `application/json` (parameters such as
/// `; charset=utf-8` allowed). A browser page of another site can send
/// `text/plain`, form or multipart bodies without a CORS preflight, but not
/// `application/json`: this is what keeps such pages from creating rooms.
fn require_json(req: &HttpRequest) -> Result<(), ChatError> {
    let Some(value) = req.headers().get(actix_web::http::header::CONTENT_TYPE) else {
        return Err(ChatError::UnsupportedMediaType(
            "Content-Type: application/json is required (none was sent)".into(),
        ));
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    match essence {
        Some(e) if e.eq_ignore_ascii_case("application/json") => Ok(()),
        Some(e) => {
            let shown: String = e.chars().take(80).collect();
            Err(ChatError::UnsupportedMediaType(format!(
                "Content-Type must be application/json, not {shown:?}"
            )))
        }
        None => Err(ChatError::UnsupportedMediaType(
            "Content-Type must be application/json".into(),
        )),
    }
}

/// The body of `POST /api/rooms`, already read (and bounded by
/// `read_body`): a JSON object whose `title` is a valid room title.
pub(crate) fn parse_create_body(body: &[u8], limits: &TextLimits) -> Result<RoomTitle, ChatError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ChatError::InvalidJson(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(ChatError::InvalidJson("body must be a JSON object".into()));
    };
    match obj.get("title") {
        Some(Value::String(t)) => RoomTitle::parse(t, limits),
        Some(_) => Err(ChatError::InvalidTitle("title must be a string".into())),
        None => Err(ChatError::InvalidTitle("title is required".into())),
    }
}

/// The query of `GET /api/rooms/{id}/messages`, before the page cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MessagesQuery {
    /// Messages after this id (`after=`, default 0: from the start).
    pub after: MessageSeq,
    /// At most this many (`limit=`, default 50); the caller caps it.
    pub limit: usize,
}

/// Parses `after=&limit=` (the last of repeated keys wins, unknown keys are
/// ignored); a value that is not a non-negative integer is
/// `invalid_parameter`.
pub(crate) fn parse_messages_query(query: &str) -> Result<MessagesQuery, ChatError> {
    let mut q = MessagesQuery {
        after: MessageSeq::ZERO,
        limit: 50,
    };
    for (key, value) in form_pairs(query) {
        match key.as_str() {
            "after" => q.after = MessageSeq::new(parse_count(&key, &value)?),
            "limit" => q.limit = parse_count(&key, &value)? as usize,
            _ => {}
        }
    }
    Ok(q)
}

pub(crate) fn parse_room_id(raw: &str) -> Result<RoomId, ChatError> {
    raw.parse().map(RoomId::new).map_err(|_| {
        ChatError::InvalidParameter(format!("room id {:?} is not an integer", shown(raw)))
    })
}

pub(crate) fn parse_count(key: &str, value: &str) -> Result<u64, ChatError> {
    value.parse().map_err(|_| {
        ChatError::InvalidParameter(format!(
            "{} must be a non-negative integer, got {:?}",
            shown(key),
            shown(value)
        ))
    })
}

/// Longest part of a client's value quoted back in an error message.
const SHOWN_CHARS: usize = 40;

/// At most `SHOWN_CHARS` characters of `raw`, for an error message: a
/// request must not make the server answer with all of a long value (found
/// by fuzzing: a path of control characters, each escaped to six bytes).
fn shown(raw: &str) -> String {
    match raw.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}...", &raw[..end]),
        None => raw.to_owned(),
    }
}

/// Decodes `a=1&b=2` (percent-decoding included), ignoring empty pieces.
pub(crate) fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'%' if i + 2 < bytes.len() => hex(bytes[i + 1]).zip(hex(bytes[i + 2])),
            _ => None,
        };
        match (bytes[i], decoded) {
            (_, Some((hi, lo))) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a request body up to `limit` bytes; beyond it, 413
/// `payload_too_large` without reading the rest. A body still incomplete
/// after `deadline` (trickled, or promised and never sent) is 408
/// `request_timeout`, and the connection is closed (see `ChatError`'s
/// `error_response`): actix-http bounds only the request head.
async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<web::BytesMut, ChatError> {
    match tokio::time::timeout(deadline, read_body_untimed(req, payload, limit)).await {
        Ok(read) => read,
        Err(_) => Err(ChatError::RequestTimeout(deadline.as_secs())),
    }
}

async fn read_body_untimed(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ChatError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ChatError::PayloadTooLarge(limit));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ChatError::InvalidJson(format!("could not read body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ChatError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_are_decoded() {
        let pairs = form_pairs("after=10&limit=%35&x&&y=a+b");
        assert_eq!(
            pairs,
            vec![
                ("after".into(), "10".into()),
                ("limit".into(), "5".into()),
                ("x".into(), "".into()),
                ("y".into(), "a b".into())
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%C3%A9%"), "é%");
        assert_eq!(percent_decode("é%2"), "é%2");
    }

    #[test]
    fn only_json_bodies_are_accepted() {
        use actix_web::test::TestRequest;
        let with = |ct: &str| TestRequest::default().insert_header(("content-type", ct));
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
            " application/json ",
        ] {
            assert!(require_json(&with(ok).to_http_request()).is_ok(), "{ok}");
        }
        for refused in [
            "",
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "application/json-seq",
            "application/problem+json",
            "text/json",
        ] {
            let err = require_json(&with(refused).to_http_request()).unwrap_err();
            assert_eq!(err.code(), "unsupported_media_type", "{refused}");
        }
        let err = require_json(&TestRequest::default().to_http_request()).unwrap_err();
        assert_eq!(err.code(), "unsupported_media_type");
    }

    #[test]
    fn counts_reject_negative_and_non_integers() {
        assert!(parse_count("after", "-1").is_err());
        assert!(parse_count("after", "1.5").is_err());
        assert!(parse_count("after", "").is_err());
        assert_eq!(parse_count("after", "7").unwrap(), 7);
    }

    /// Found by fuzzing (rest_query): an id or count of many control
    /// characters was quoted back whole, each escaped to `\u{1f}`.
    #[test]
    fn error_messages_quote_a_bounded_part_of_the_value() {
        let long = format!("18 4{}4ez2", "\u{1f}".repeat(96));
        for err in [
            parse_room_id(&long).unwrap_err(),
            parse_count("after", &long).unwrap_err(),
            parse_count(&long, &long).unwrap_err(),
        ] {
            assert_eq!(err.code(), "invalid_parameter");
            assert!(err.client_message().len() < 600, "{err}");
            assert!(err.client_message().contains("18 4"), "{err}");
        }
        assert_eq!(shown("abc"), "abc");
        assert_eq!(shown(&"é".repeat(41)), format!("{}...", "é".repeat(40)));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// `n` written as a client might: plain, with leading zeros or a
        /// plus sign, or with some digits percent-encoded.
        fn written(n: u64) -> impl Strategy<Value = String> {
            (
                0usize..3,
                any::<bool>(),
                prop::collection::vec(any::<bool>(), 20),
            )
                .prop_map(move |(zeros, plus, encode)| {
                    let digits: String = format!("{}{n}", "0".repeat(zeros))
                        .chars()
                        .zip(encode.iter().cycle())
                        .map(|(c, &e)| if e { format!("%3{c}") } else { c.to_string() })
                        .collect();
                    if plus {
                        format!("%2B{digits}")
                    } else {
                        digits
                    }
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Never panics; a count is accepted exactly when it is a
            /// non-negative integer that fits 64 bits, with that value (the
            /// checks of `fuzzing::parse_rest_query`).
            #[test]
            fn arbitrary_queries_keep_the_parser_invariants(q in any::<String>()) {
                crate::fuzzing::parse_rest_query(&q);
            }

            #[test]
            fn query_like_strings_keep_the_parser_invariants(
                q in "((after|limit|x|%61fter|)(=|)([0-9+%-]|%3[0-9]|%[0-9A-Fa-f]{0,2}|[a-z ]){0,8}&?){0,4}",
            ) {
                crate::fuzzing::parse_rest_query(&q);
            }

            #[test]
            fn accepted_counts_are_the_integers_written(
                (after, a) in any::<u64>().prop_flat_map(|n| (Just(n), written(n))),
                (limit, l) in any::<u64>().prop_flat_map(|n| (Just(n), written(n))),
                noise in "[a-z]{0,5}",
            ) {
                let q = format!("{noise}=1&limit={l}&&after={a}&{noise}");
                let parsed = parse_messages_query(&q).unwrap();
                prop_assert_eq!(parsed, MessagesQuery { after: MessageSeq::new(after), limit: limit as usize });
                prop_assert_eq!(parse_room_id(&after.to_string()).unwrap(), RoomId::new(after));
            }

            #[test]
            fn arbitrary_bodies_keep_the_parser_invariants(
                body in prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..64),
                    any::<String>().prop_map(|t| serde_json::json!({"title": t}).to_string().into_bytes()),
                ],
            ) {
                crate::fuzzing::parse_create_body(&body);
            }
        }
    }
}
