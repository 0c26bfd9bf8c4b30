//! End to end: a real `chat-server` (MySQL store, `AMQP_URL` to the test's
//! vhost) publishes through RabbitMQ to a real `chat-events`, which stores
//! in `chatEvent`. A scripted chat over WebSocket is archived exactly, in
//! order; then `chat-events` is SIGKILLed in the middle of a burst of chats
//! and restarted, and every event of that room is still stored once, seq
//! gapless from 1 to the last seq the server gave the room.

use std::cell::Cell;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::future::join;
use serde_json::Value;

use crate::helpers::{joined_room_id, TestDatabase};
use crate::procs::{redis_url, Cluster};
use crate::rabbit::Listener;
use crate::{rows, Archiver, Row, Vhost};

/// Batches stored once a second, so at the kill the archiver holds events
/// it was sent but has neither stored nor acknowledged.
const SLOW_BATCHES: [(&str, &str); 3] = [
    ("EVENTS_PREFETCH", "100"),
    ("EVENTS_BATCH_MAX", "50"),
    ("EVENTS_BATCH_WAIT_MS", "1000"),
];

/// The archived events of `room`, ordered by `seq`.
async fn room_rows(db: &TestDatabase, room: u64) -> Vec<Row> {
    let mut mine: Vec<Row> = rows(db)
        .await
        .into_iter()
        .filter(|r| r.room_id == room)
        .collect();
    mine.sort_by_key(|r| r.seq);
    mine
}

/// Waits until the archive holds `n` events of `room` (panics if it holds
/// more, or fewer after `limit`), and returns them ordered by `seq`.
async fn wait_room_rows(db: &TestDatabase, room: u64, n: usize, limit: Duration) -> Vec<Row> {
    let start = Instant::now();
    loop {
        let have = room_rows(db, room).await;
        let seqs: Vec<Option<u64>> = have.iter().map(|r| r.seq).collect();
        assert!(
            have.len() <= n,
            "room {room}: {} rows, not {n}; seqs {seqs:?}",
            have.len()
        );
        if have.len() == n {
            return have;
        }
        assert!(
            start.elapsed() < limit,
            "room {room}: {} rows, not {n}, after {limit:?}; seqs {seqs:?}",
            have.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kinds(rows: &[Row]) -> Vec<&str> {
    rows.iter().map(|r| r.kind.as_str()).collect()
}

#[actix_rt::test]
async fn a_chat_reaches_the_archive_once_in_order_across_a_killed_archiver() {
    const BURST: usize = 200;
    let (vhost, archive_db) = (Vhost::new(), TestDatabase::new());
    let url = vhost.url();
    // The archive's queue is bound before the server publishes anything.
    let mut archiver = Archiver::start(&vhost, &archive_db, &SLOW_BATCHES);
    archiver.wait_consuming().await;
    let listener = Listener::start(&url);
    let cluster = Cluster::start_logged(
        1,
        &redis_url(),
        &[("AMQP_URL", url.as_str()), ("EVENTS_POLL_MS", "100")],
    )
    .await;
    let instance = cluster.nodes[0].instance.clone();

    // The scripted chat: create, a second member, chats, both leave (the
    // last leave deletes the room).
    let mut alice = cluster.ws(0).await;
    let room = joined_room_id(&alice.create("lobby", "alice").await);
    let mut bob = cluster.ws(0).await;
    bob.join(room, "bob").await;
    let mut sent = vec![alice.chat("hi \u{1F600}").await];
    sent.push(bob.chat("yo").await);
    sent.push(alice.chat("bye then").await);
    bob.leave().await;
    alice.leave().await;
    cluster
        .wait_room_gone(&[0], room, Duration::from_secs(10))
        .await;

    let events = wait_room_rows(&archive_db, room, 9, Duration::from_secs(30)).await;
    assert_eq!(
        kinds(&events),
        [
            "room.created",
            "member.joined",
            "member.joined",
            "message.sent",
            "message.sent",
            "message.sent",
            "member.left",
            "member.left",
            "room.deleted"
        ],
        "{events:#?}"
    );
    let seqs: Vec<Option<u64>> = events.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=9).map(Some).collect::<Vec<_>>(), "gapless seq");
    let ids: HashSet<&str> = events.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len(), 9, "each event id once");
    for r in &events {
        assert_eq!(r.instance, instance, "{r:?}");
        assert_eq!(r.body["roomId"], room, "{r:?}");
        assert_eq!(r.body["id"], r.event_id.as_str(), "{r:?}");
        assert_eq!(r.body["type"], r.kind.as_str(), "{r:?}");
    }
    for (r, frame) in events[3..6].iter().zip(&sent) {
        assert_eq!(
            r.body["message"], frame["message"],
            "the message as delivered"
        );
    }
    let contents: Vec<&Value> = events[3..6]
        .iter()
        .map(|r| &r.body["message"]["content"])
        .collect();
    assert_eq!(contents, ["hi \u{1F600}", "yo", "bye then"]);

    // The burst: chat-events is SIGKILLed while chats are still being sent
    // and restarted; what it had not acknowledged is delivered again.
    let room = joined_room_id(&alice.create("burst", "alice").await);
    bob.join(room, "bob").await;
    let chatted = Cell::new(0usize);
    let killed = Cell::new(None);
    let chats = async {
        for i in 0..BURST {
            alice.chat(&format!("burst #{i}")).await;
            chatted.set(i + 1);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let crash = async {
        let start = Instant::now();
        // The first batch of the room is stored; more are on their way.
        while room_rows(&archive_db, room).await.is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the burst is not archived: {:#?}",
                archiver.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        archiver.kill();
        killed.set(Some((
            chatted.get(),
            room_rows(&archive_db, room).await.len(),
        )));
        tokio::time::sleep(Duration::from_millis(300)).await;
        archiver = Archiver::start(&vhost, &archive_db, &SLOW_BATCHES);
        archiver.wait_consuming().await;
    };
    join(chats, crash).await;
    let (chatted_at_kill, stored_at_kill) = killed.get().expect("killed");
    assert!(
        chatted_at_kill < BURST,
        "killed after the burst ({chatted_at_kill} of {BURST} chats sent): not mid-stream"
    );
    assert!(
        stored_at_kill < 3 + chatted_at_kill,
        "nothing was in flight at the kill ({stored_at_kill} stored, {chatted_at_kill} chats)"
    );
    bob.leave().await;
    alice.leave().await;
    cluster
        .wait_room_gone(&[0], room, Duration::from_secs(10))
        .await;

    // What the server published for the room, as an independent consumer
    // of the exchange saw it (repeats left out): created, 2 joins, the
    // burst, 2 leaves, deleted.
    let start = Instant::now();
    let published = loop {
        let seen = listener.room(room);
        if seen.iter().any(|e| e["type"] == "room.deleted") {
            break seen;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no room.deleted published for room {room}: {} events",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let published_ids: HashSet<&str> = published.iter().filter_map(|e| e["id"].as_str()).collect();
    let published = published.len();
    assert_eq!(published, 1 + 2 + BURST + 2 + 1);
    let events = wait_room_rows(&archive_db, room, published, Duration::from_secs(60)).await;
    let ids: HashSet<&str> = events.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len(), published, "each event id once");
    assert_eq!(ids, published_ids, "the events the server published");
    let seqs: Vec<Option<u64>> = events.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (1..=published as u64).map(Some).collect::<Vec<_>>(),
        "gapless seq (killed with {stored_at_kill} stored, {chatted_at_kill} chats sent)"
    );
    assert_eq!(kinds(&events).first(), Some(&"room.created"));
    assert_eq!(kinds(&events).last(), Some(&"room.deleted"));
    let burst: Vec<&str> = events
        .iter()
        .filter(|r| r.kind == "message.sent")
        .map(|r| r.body["message"]["content"].as_str().unwrap_or("?"))
        .collect();
    let expected: Vec<String> = (0..BURST).map(|i| format!("burst #{i}")).collect();
    assert_eq!(burst, expected, "the burst's messages, in order");
    // Nothing more arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(room_rows(&archive_db, room).await.len(), published);
    cluster.assert_no_errors();
    eprintln!(
        "end to end: chat-events killed after {chatted_at_kill} of {BURST} chats, \
         {stored_at_kill} of {published} events stored"
    );
}
