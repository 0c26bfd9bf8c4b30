//! `GET /metrics`: the Prometheus text format, counters that move by
//! exactly what a scripted chat did, and `METRICS_ADDR` moving the route
//! to a listener of its own.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;
use crate::wait::eventually;
use crate::{both_stores, memory_only_with};

/// Series a scripted chat moves, read from one scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    received: f64,
    stored: f64,
    delivered: f64,
    deliveries: f64,
    not_in_room: f64,
    room_not_found: f64,
    rate_limited_joins: f64,
}

impl Counts {
    fn read(text: &str) -> Counts {
        let get = |series: &str| {
            metric(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        };
        Counts {
            received: get("chat_chats_received_total"),
            stored: get("chat_chats_stored_total"),
            delivered: get("chat_chats_delivered_total"),
            deliveries: get("chat_deliveries_total"),
            not_in_room: get(r#"chat_errors_total{code="not_in_room"}"#),
            room_not_found: get(r#"chat_errors_total{code="room_not_found"}"#),
            rate_limited_joins: get(r#"chat_rate_limited_total{reason="joins"}"#),
        }
    }

    fn minus(self, before: Counts) -> Counts {
        Counts {
            received: self.received - before.received,
            stored: self.stored - before.stored,
            delivered: self.delivered - before.delivered,
            deliveries: self.deliveries - before.deliveries,
            not_in_room: self.not_in_room - before.not_in_room,
            room_not_found: self.room_not_found - before.room_not_found,
            rate_limited_joins: self.rate_limited_joins - before.rate_limited_joins,
        }
    }
}

/// Every line of `text` is a comment (`# HELP`/`# TYPE`) or a sample
/// `name{labels} value` with a number for value; every sample's family has
/// a `# TYPE`.
fn assert_prometheus_text(text: &str) {
    let mut typed = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "summary"].contains(&kind),
                "{line}"
            );
            typed.push(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample: series value");
        assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
        let name = series.split('{').next().unwrap_or(series);
        assert!(name.starts_with("chat_"), "{line}");
        assert!(
            typed.iter().any(|t| name.starts_with(t.as_str())),
            "{name} has no # TYPE before it"
        );
    }
    assert!(!typed.is_empty(), "no series:\n{text}");
}

both_stores!(metrics_answers_the_prometheus_text_format, |app| {
    let text = app.metrics().await;
    assert_prometheus_text(&text);
    for line in [
        "# TYPE chat_connections_open gauge",
        "# TYPE chat_chats_stored_total counter",
        "# TYPE chat_store_call_seconds histogram",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    // HEAD is answered wherever GET is; other methods are 405.
    let (status, _) = app.request("HEAD", "/metrics", None).await;
    assert_eq!(status, 200);
    let (status, body) = app.request("POST", "/metrics", Some(b"{}".to_vec())).await;
    assert_eq!(status, 405, "{body}");
    assert_error_envelope(&body, "method_not_allowed");
});

both_stores!(
    a_scripted_chat_moves_the_counters_by_exactly_what_happened,
    |app| {
        let before = Counts::read(&app.metrics().await);
        let room = app.create_room("metered").await;
        let room_id = room["id"].as_u64().expect("room id");
        let (mut ann, _) = app.join(room_id, "ann").await;
        let (mut bob, _) = app.join(room_id, "bob").await;
        let contents: Vec<String> = (1..=3).map(|i| format!("m{i}")).collect();
        let echoed = ann.chat_all(&contents).await;
        assert_eq!(echoed.len(), 3);
        assert_eq!(bob.recv_messages(3).await.len(), 3);
        // Errors, each answered once: over WebSocket and over REST.
        let mut lobby = app.ws().await;
        lobby
            .expect_error(json!({"type":"chat","content":"hi"}), "not_in_room")
            .await;
        let (status, _) = app.get("/api/rooms/999999999").await;
        assert_eq!(status, 404);
        // Joins of a missing room until one is over WS_JOIN_BURST (10, the
        // default; the budget refills at 2 a second, so a few more may pass).
        let mut missing = 0;
        for i in 0..40 {
            let reference = format!("j{i}");
            let join =
                json!({"type":"join","roomId":999_999_999u64,"nickname":"x","ref":reference});
            lobby.send(join).await;
            let answer = lobby.reply_or_error(&reference).await;
            match answer["code"].as_str() {
                Some("room_not_found") => missing += 1,
                Some("rate_limited") => break,
                _ => panic!("unexpected answer to a join of a missing room: {answer}"),
            }
        }
        assert!(
            (10..40).contains(&missing),
            "{missing} joins before the limit"
        );

        let expected = Counts {
            received: 4.0, // three chats in the room and one from the lobby
            stored: 3.0,
            delivered: 3.0,
            deliveries: 6.0, // three chats to two members
            not_in_room: 1.0,
            room_not_found: 1.0 + missing as f64,
            rate_limited_joins: 1.0,
        };
        let app = &app;
        eventually(
            Duration::from_secs(5),
            "the counters' deltas",
            || async move {
                let delta = Counts::read(&app.metrics().await).minus(before);
                if delta == expected {
                    Ok(())
                } else {
                    Err(format!("{delta:?}, expected {expected:?}"))
                }
            },
        )
        .await;

        let text = app.metrics().await;
        assert_eq!(metric(&text, "chat_rooms_active"), Some(1.0), "{text}");
        assert_eq!(metric(&text, "chat_members_local"), Some(2.0), "{text}");
        assert_eq!(metric(&text, "chat_connections_open"), Some(3.0), "{text}");
        let appends = r#"chat_store_call_seconds_count{operation="append_messages"}"#;
        assert!(metric(&text, appends).is_some_and(|n| n >= 1.0), "{text}");
        let writer_groups = metric(&text, "chat_writer_batch_chats_count").unwrap_or(0.0);
        if app.database().is_some() {
            // MySQL: each batch went through the message writer.
            assert!(writer_groups >= 1.0, "{text}");
        } else {
            assert_eq!(writer_groups, 0.0, "the memory store has no writer");
        }
    }
);

memory_only_with!(
    metrics_addr_moves_metrics_to_a_listener_of_its_own,
    |s: &mut chat_server::config::Settings| {
        s.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    },
    |app| {
        let own = app.metrics_port.expect("a metrics listener");
        assert_ne!(own, app.port);
        // The main port no longer serves it: 404 in the JSON envelope.
        let (status, body) = app.get("/metrics").await;
        assert_eq!(status, 404, "{body}");
        assert_error_envelope(&body, "not_found");
        // The listener of its own serves /metrics and nothing else.
        let text = app.metrics().await;
        assert_prometheus_text(&text);
        let not_found = r#"chat_errors_total{code="not_found"}"#;
        assert_eq!(metric(&text, not_found), Some(1.0), "the 404 above");
        let res = app
            .http
            .get(format!("http://127.0.0.1:{own}/health"))
            .send()
            .await
            .expect("GET /health on the metrics port");
        let (status, body) = read_json(res).await;
        assert_eq!(status, 404, "{body}");
        assert_error_envelope(&body, "not_found");
        // It counts what the main port serves.
        app.create_room("counted").await;
        let text = app.metrics().await;
        let creates = r#"chat_store_call_seconds_count{operation="create_room"}"#;
        assert_eq!(metric(&text, creates), Some(1.0), "{text}");
    }
);
