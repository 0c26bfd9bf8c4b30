//! A scripted chat produces exactly the expected events, in order, with
//! the documented fields; in both store modes.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{joined_room_id, spawn_app_with, StoreMode};
use crate::rabbit::{seqs, types, Listener, Vhost};

async fn a_scripted_chat_publishes_exactly_its_events_in_order(mode: StoreMode) {
    let vhost = Vhost::create();
    let listener = Listener::start(&vhost.url());
    let url = vhost.url();
    let app = spawn_app_with(mode, |s| crate::events_to(s, &url, 1000)).await;
    let instance = app.settings.instance_id.clone();

    let mut alice = app.ws().await;
    let joined = alice.create("lobby", "alice").await;
    let room = joined_room_id(&joined);
    let (mut bob, _) = app.join(room, "bob").await;
    let hi = alice.chat("hi \u{1F600}").await;
    // How long after the sender's echo its event reaches a consumer (the
    // relay is woken by the commit; printed for docs/PROTOCOL.md).
    let echoed = tokio::time::Instant::now();
    while listener.room(room).len() < 4 && echoed.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    eprintln!(
        "{mode:?}: message.sent reached the consumer {:?} after the echo",
        echoed.elapsed()
    );
    // Alice's own `message` frame for Bob's chat is read by `chat`'s wait
    // for Bob's echo; the order is the store's either way.
    let yo = bob.chat("yo").await;
    bob.leave().await;
    alice.leave().await;

    let events = listener.wait_room(room, 8, Duration::from_secs(10)).await;
    assert_eq!(
        types(&events),
        [
            "room.created",
            "member.joined",
            "member.joined",
            "message.sent",
            "message.sent",
            "member.left",
            "member.left",
            "room.deleted"
        ],
        "{events:#?}"
    );
    assert_eq!(seqs(&events), (1..=8).collect::<Vec<_>>(), "gapless seq");
    // Exactly these: nothing more arrives for the room.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(listener.room(room).len(), 8, "{:#?}", listener.room(room));
    // Published under their type, never twice.
    let all = listener.received();
    let mine: Vec<_> = all.iter().filter(|r| r.body["roomId"] == room).collect();
    assert_eq!(mine.len(), 8, "no repeats in a healthy run");
    for r in &mine {
        assert_eq!(r.body["type"], r.routing_key.as_str());
    }

    let ids: HashSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), 8, "one id per event");
    for e in &events {
        assert_eq!(e["roomId"], room, "{e}");
        assert_eq!(e["instance"], instance.as_str(), "{e}");
        let at = e["at"].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(at).is_ok(),
            "`at` is RFC 3339: {e}"
        );
    }
    let room_of = |e: &Value| e["room"].clone();
    assert_eq!(room_of(&events[0])["id"], room);
    assert_eq!(room_of(&events[0])["title"], "lobby");
    assert_eq!(room_of(&events[0])["memberCount"], 0);
    assert_eq!(room_of(&events[7])["title"], "lobby");
    assert_eq!(room_of(&events[7])["memberCount"], 0);
    let nick = |e: &Value| e["member"]["nickname"].as_str().unwrap_or("?").to_owned();
    assert_eq!(
        [1, 2, 5, 6].map(|i| nick(&events[i])),
        ["alice", "bob", "bob", "alice"]
    );
    for i in [1, 2, 5, 6] {
        assert!(events[i]["member"]["joinedAt"].is_string(), "{}", events[i]);
    }
    assert_eq!(
        events[3]["message"], hi["message"],
        "the message as delivered"
    );
    assert_eq!(events[4]["message"], yo["message"]);

    let (status, health) = app.get("/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["events"], "rabbitmq");
    assert_eq!(health["eventsDropped"], 0);
    app.stop().await;
}

#[actix_rt::test]
async fn a_scripted_chat_publishes_exactly_its_events_in_order_memory() {
    a_scripted_chat_publishes_exactly_its_events_in_order(StoreMode::Memory).await;
}

#[actix_rt::test]
async fn a_scripted_chat_publishes_exactly_its_events_in_order_mysql() {
    a_scripted_chat_publishes_exactly_its_events_in_order(StoreMode::MySql).await;
}

#[actix_rt::test]
async fn without_amqp_url_nothing_is_recorded() {
    let app = spawn_app_with(StoreMode::MySql, |_| {}).await;
    let mut alice = app.ws().await;
    alice.create("quiet", "alice").await;
    alice.chat("hello").await;
    let (_, health) = app.get("/health").await;
    assert!(health.get("events").is_none(), "{health}");
    let db = app.database().expect("a MySQL app");
    assert_eq!(
        db.query_u64("SELECT COUNT(*) FROM chatEventOutbox").await,
        0
    );
    assert_eq!(db.query_u64("SELECT COUNT(*) FROM chatEventSeq").await, 0);
    app.stop().await;
}
