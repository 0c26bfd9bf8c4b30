//! What lands in `chatEvent`: every event once, with its columns; a
//! repeated event id once; bad bodies dead-lettered without holding up the
//! events behind them; the queue's bound while nobody consumes.

use std::time::Duration;

use serde_json::json;

use crate::helpers::TestDatabase;
use crate::wait::eventually;
use crate::{event, rows, wait_for_count, Archiver, Publisher, Vhost};

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn every_event_is_stored_once_with_its_columns() {
    let (vhost, db) = (Vhost::new(), TestDatabase::new());
    let mut archiver = Archiver::start(&vhost, &db, &[]);
    archiver.wait_consuming().await;
    let publisher = Publisher::connect(&vhost).await;
    let script = [
        event("room.created", "ev-1", 7, Some(1)),
        event("member.joined", "ev-2", 7, Some(2)),
        event("message.sent", "ev-3", 7, Some(3)),
        event("member.left", "ev-4", 7, Some(4)),
        // `seq` may be absent.
        event("room.deleted", "ev-5", 7, None),
    ];
    for e in &script {
        publisher.publish(e).await;
    }
    wait_for_count(&db, 5, LIMIT).await;
    let stored = rows(&db).await;
    for (row, sent) in stored.iter().zip(&script) {
        assert_eq!(row.event_id, sent["id"].as_str().unwrap());
        assert_eq!(row.kind, sent["type"].as_str().unwrap());
        assert_eq!(row.room_id, 7);
        assert_eq!(row.instance, "chat-test-1");
        assert_eq!(row.at, "2026-11-24 10:00:01.250", "UTC, milliseconds kept");
        assert_eq!(row.seq, sent["seq"].as_u64());
        assert_eq!(&row.body, sent, "the whole body, emoji included");
    }

    // The same event id again (a republished event): nothing new. The
    // marker published after it shows it has been consumed.
    publisher.publish(&script[2]).await;
    let mut changed = script[0].clone();
    changed["roomId"] = json!(8);
    publisher.publish(&changed).await;
    publisher
        .publish(&event("message.sent", "marker", 7, Some(5)))
        .await;
    wait_for_count(&db, 6, LIMIT).await;
    let ids: Vec<String> = rows(&db).await.into_iter().map(|r| r.event_id).collect();
    assert_eq!(ids, ["ev-1", "ev-2", "ev-3", "ev-4", "ev-5", "marker"]);
    assert_eq!(rows(&db).await[0].room_id, 7, "the first copy is kept");
    publisher.close().await;
}

#[tokio::test]
async fn a_bad_body_is_dead_lettered_and_does_not_block_later_events() {
    let (vhost, db) = (Vhost::new(), TestDatabase::new());
    let mut archiver = Archiver::start(&vhost, &db, &[("EVENTS_MAX_BODY_BYTES", "2048")]);
    archiver.wait_consuming().await;
    let publisher = Publisher::connect(&vhost).await;
    publisher
        .publish(&event("room.created", "ok-1", 3, Some(1)))
        .await;
    let mut missing = event("member.joined", "bad-2", 3, Some(2));
    missing.as_object_mut().unwrap().remove("roomId");
    let mut too_long = event("message.sent", "bad-4", 3, Some(3));
    too_long["message"]["content"] = json!("x".repeat(3000));
    let bad: [Vec<u8>; 5] = [
        b"not json".to_vec(),
        missing.to_string().into_bytes(),
        b"\xff\xfe{}".to_vec(),
        too_long.to_string().into_bytes(),
        json!({"type": "message.sent", "id": "bad-5", "roomId": 3, "instance": "i",
               "at": "not a time"})
        .to_string()
        .into_bytes(),
    ];
    for body in &bad {
        publisher.publish_raw("message.sent", body).await;
    }
    publisher
        .publish(&event("room.deleted", "ok-2", 3, Some(4)))
        .await;
    wait_for_count(&db, 2, LIMIT).await;
    let ids: Vec<String> = rows(&db).await.into_iter().map(|r| r.event_id).collect();
    assert_eq!(ids, ["ok-1", "ok-2"]);
    assert_eq!(
        publisher.ready_in("chat-events.archive.dead").await,
        5,
        "each bad body is in the dead-letter queue"
    );
    assert_eq!(archiver.lines_with("dead-lettering a delivery"), 5);
    assert_eq!(publisher.ready_in("chat-events.archive").await, 0);
    publisher.close().await;
}

/// `EVENTS_QUEUE_MAX` bounds what waits while the archive is down: the
/// oldest events beyond it go to the dead-letter queue (itself bounded by
/// `EVENTS_DEAD_LETTER_MAX`), the newest are archived once it is back.
#[tokio::test]
async fn the_queue_keeps_at_most_its_bound_while_nobody_consumes() {
    let (vhost, db) = (Vhost::new(), TestDatabase::new());
    let vars = [
        ("EVENTS_QUEUE_MAX", "5"),
        ("EVENTS_DEAD_LETTER_MAX", "2"),
        ("EVENTS_QUEUE", "bounded"),
    ];
    let mut archiver = Archiver::start(&vhost, &db, &vars);
    archiver.wait_consuming().await;
    let status = archiver
        .signal_and_wait("TERM", Duration::from_secs(10))
        .await;
    assert!(status.success(), "{status}");
    let publisher = Publisher::connect(&vhost).await;
    for i in 1..=8 {
        publisher
            .publish(&event("message.sent", &format!("m{i}"), 1, Some(i)))
            .await;
    }
    assert_eq!(publisher.ready_in("bounded").await, 5);
    // m1, m2 and m3 overflowed; the dead-letter queue keeps the newest 2.
    // RabbitMQ dead-letters after confirming the publish, so the count may
    // lag behind the confirm for a moment (seen once in CI: 1).
    let sender = &publisher;
    eventually(Duration::from_secs(5), "2 in bounded.dead", || async move {
        match sender.ready_in("bounded.dead").await {
            2 => Ok(()),
            n => Err(format!("{n} in bounded.dead")),
        }
    })
    .await;
    let mut archiver = Archiver::start(&vhost, &db, &vars);
    archiver.wait_consuming().await;
    wait_for_count(&db, 5, LIMIT).await;
    let ids: Vec<String> = rows(&db).await.into_iter().map(|r| r.event_id).collect();
    assert_eq!(ids, ["m4", "m5", "m6", "m7", "m8"]);
    publisher.close().await;
}

/// `EVENTS_RETENTION_DAYS` bounds the table: events older than it go,
/// newer ones stay.
#[tokio::test]
async fn events_older_than_the_retention_are_deleted() {
    let (vhost, db) = (Vhost::new(), TestDatabase::new());
    let mut archiver = Archiver::start(
        &vhost,
        &db,
        &[
            ("EVENTS_RETENTION_DAYS", "30"),
            ("EVENTS_RETENTION_SWEEP_MS", "200"),
        ],
    );
    archiver.wait_consuming().await;
    let publisher = Publisher::connect(&vhost).await;
    let now = chrono::Utc::now();
    for (id, days_ago) in [("400d", 400), ("31d", 31), ("29d", 29), ("now", 0)] {
        let mut e = event("message.sent", id, 5, None);
        e["at"] = json!((now - chrono::TimeDelta::days(days_ago)).to_rfc3339());
        publisher.publish(&e).await;
    }
    let start = std::time::Instant::now();
    loop {
        let ids: Vec<String> = rows(&db).await.into_iter().map(|r| r.event_id).collect();
        if ids == ["29d", "now"] {
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "chatEvent holds {ids:?}: {:#?}",
            archiver.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(archiver.lines_with("older than 30 days") >= 1);
    publisher.close().await;
}
