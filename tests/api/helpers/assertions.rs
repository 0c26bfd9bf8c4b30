//! Checks of, and values taken from, the JSON the server answers with.

use std::time::Duration;

use serde_json::Value;

/// Asserts `body` is the contract's error envelope
/// `{"error":{"code":<code>,"message":<non-empty string>}}` and nothing else.
pub fn assert_error_envelope(body: &Value, code: &str) {
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not a JSON object: {body}"));
    assert_eq!(
        obj.len(),
        1,
        "error envelope has extra top-level keys: {body}"
    );
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no \"error\" object in {body}"));
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = error.get("message").and_then(Value::as_str);
    assert!(
        message.is_some_and(|m| !m.trim().is_empty()),
        "error.message must be a non-empty string: {body}"
    );
}

/// Asserts `frame` is a WebSocket `error` frame with `code`, a non-empty
/// message and `ref` equal to `reference` (absent when `None`).
pub fn assert_error_frame(frame: &Value, code: &str, reference: Option<&str>) {
    assert_eq!(frame["type"], "error", "expected an error frame: {frame}");
    assert_eq!(frame["code"], code, "{frame}");
    assert!(
        frame["message"]
            .as_str()
            .is_some_and(|m| !m.trim().is_empty()),
        "error frame needs a message: {frame}"
    );
    match reference {
        Some(r) => assert_eq!(frame["ref"], r, "ref not echoed: {frame}"),
        None => assert!(frame.get("ref").is_none(), "unexpected ref: {frame}"),
    }
}

/// Asserts `value` is an RFC 3339 UTC time (`...Z`) within `slack` of now.
pub fn assert_recent_utc(value: &Value, slack: Duration) {
    let s = value
        .as_str()
        .unwrap_or_else(|| panic!("time is not a string: {value}"));
    assert!(s.ends_with('Z'), "time {s:?} is not UTC with a Z suffix");
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("time {s:?} is not RFC 3339: {e}"));
    let age = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_milliseconds()
        .abs();
    assert!(
        age <= slack.as_millis() as i64,
        "time {s:?} is {age} ms away from now"
    );
}

/// `["alice", ...]` from a JSON array of members.
pub fn nicknames(members: &Value) -> Vec<String> {
    members
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {members}"))
        .iter()
        .map(|m| m["nickname"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The `id`s of a JSON array of rooms or messages.
pub fn ids(items: &Value) -> Vec<u64> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {items}"))
        .iter()
        .map(|m| m["id"].as_u64().unwrap_or_else(|| panic!("no id in {m}")))
        .collect()
}

/// Room id of a `joined` frame.
pub fn joined_room_id(joined: &Value) -> u64 {
    joined["room"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no room id in {joined}"))
}

/// The value of one series in Prometheus text: `series` is the name and
/// its labels exactly as rendered (`chat_errors_total{code="not_found"}`);
/// `None` if there is no such sample line.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
