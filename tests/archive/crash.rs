//! Kills and stops: the archive holds each event exactly once after being
//! SIGKILLed mid-stream and restarted, and SIGTERM stores the batch in
//! flight before exiting 0.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::helpers::TestDatabase;
use crate::{count, event, rows, wait_for_count, Archiver, Publisher, Vhost};

/// Small batches, so a kill lands between many commits and acks.
const SMALL_BATCHES: [(&str, &str); 2] = [("EVENTS_PREFETCH", "60"), ("EVENTS_BATCH_MAX", "20")];

#[tokio::test]
async fn killed_mid_stream_and_restarted_the_archive_holds_each_event_exactly_once() {
    const EVENTS: u64 = 3000;
    let (vhost, db) = (Vhost::new(), TestDatabase::new());
    let mut archiver = Archiver::start(&vhost, &db, &SMALL_BATCHES);
    archiver.wait_consuming().await;
    archiver.kill();
    // Everything waits in the queue; then three processes in turn work
    // through it, the first two SIGKILLed mid-stream.
    let publisher = Publisher::connect(&vhost).await;
    for i in 1..=EVENTS {
        let room = i % 7 + 1;
        publisher
            .publish(&event("message.sent", &format!("e{i}"), room, Some(i)))
            .await;
    }
    let mut kills = Vec::new();
    for at in [400, 1500] {
        let mut archiver = Archiver::start(&vhost, &db, &SMALL_BATCHES);
        let mut seen = 0;
        for _ in 0..600 {
            seen = count(&db).await;
            if seen >= at {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            seen >= at,
            "only {seen} events stored: {:#?}",
            archiver.log()
        );
        archiver.kill();
        kills.push(count(&db).await);
    }
    assert!(
        kills[1] < EVENTS,
        "the second kill came after the end ({kills:?}): not mid-stream"
    );
    let _archiver = Archiver::start(&vhost, &db, &SMALL_BATCHES);
    wait_for_count(&db, EVENTS, Duration::from_secs(60)).await;
    let stored = rows(&db).await;
    let ids: BTreeSet<String> = stored.iter().map(|r| r.event_id.clone()).collect();
    let expected: BTreeSet<String> = (1..=EVENTS).map(|i| format!("e{i}")).collect();
    assert_eq!(
        ids, expected,
        "every event, none twice (killed at {kills:?})"
    );
    assert_eq!(publisher.ready_in("chat-events.archive").await, 0);
    assert_eq!(publisher.ready_in("chat-events.archive.dead").await, 0);
    publisher.close().await;
}

#[tokio::test]
async fn sigterm_stores_the_batch_in_flight_then_exits_0() {
    let (vhost, db) = (Vhost::new(), TestDatabase::new());
    // A batch would wait a minute to fill: only the shutdown stores it.
    let mut archiver = Archiver::start(
        &vhost,
        &db,
        &[
            ("EVENTS_BATCH_WAIT_MS", "60000"),
            ("EVENTS_BATCH_MAX", "100"),
        ],
    );
    archiver.wait_consuming().await;
    let publisher = Publisher::connect(&vhost).await;
    for i in 1..=5 {
        publisher
            .publish(&event("member.joined", &format!("j{i}"), 2, Some(i)))
            .await;
    }
    // Delivered to the archiver (none ready), not yet stored.
    for _ in 0..100 {
        if publisher.ready_in("chat-events.archive").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(publisher.ready_in("chat-events.archive").await, 0);
    assert_eq!(count(&db).await, 0, "the batch waits to fill");
    // SIGHUP (log rotation) changes nothing.
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &archiver.pid().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    archiver
        .wait_for_line("SIGHUP ignored", Duration::from_secs(5))
        .await;
    assert!(archiver.running());
    assert_eq!(count(&db).await, 0);
    let status = archiver
        .signal_and_wait("TERM", Duration::from_secs(10))
        .await;
    assert_eq!(status.code(), Some(0), "{:#?}", archiver.log());
    assert_eq!(count(&db).await, 5);
    assert_eq!(
        archiver.lines_with("5 events stored, 0 already archived, 0 dead-lettered"),
        1,
        "{:#?}",
        archiver.log()
    );
    // Acknowledged: nothing went back to the queue when it closed.
    assert_eq!(publisher.ready_in("chat-events.archive").await, 0);
    publisher.close().await;
}

/// With `LOG_FORMAT=json` (the server's logger), every line `chat-events`
/// writes is one JSON object, from start-up to SIGTERM, a dead-lettered
/// body and a configuration error included.
#[tokio::test]
async fn in_json_mode_every_line_is_a_json_object() {
    let (vhost, db) = (Vhost::new(), TestDatabase::new());
    let mut archiver = Archiver::start(&vhost, &db, &[("LOG_FORMAT", "json")]);
    archiver.wait_consuming().await;
    let publisher = Publisher::connect(&vhost).await;
    publisher.publish_raw("message.sent", b"not json").await;
    publisher
        .publish(&event("message.sent", "j1", 1, Some(1)))
        .await;
    wait_for_count(&db, 1, Duration::from_secs(20)).await;
    let status = archiver
        .signal_and_wait("TERM", Duration::from_secs(10))
        .await;
    assert_eq!(status.code(), Some(0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = archiver.log();
    assert!(log.len() >= 4, "{log:#?}");
    for line in &log {
        let json: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(
            json["instance"], "chat-events/chat-events.archive",
            "{line}"
        );
        assert!(
            json["level"].is_string() && json["message"].is_string(),
            "{line}"
        );
    }
    assert_eq!(archiver.lines_with("dead-lettering a delivery"), 1);
    assert_eq!(
        archiver.lines_with("chat-events stopped: 1 events stored"),
        1
    );

    let mut refused = Archiver::start(
        &vhost,
        &db,
        &[("LOG_FORMAT", "json"), ("EVENTS_PREFETCH", "0")],
    );
    assert_eq!(
        refused.wait_exit(Duration::from_secs(10)).await.code(),
        Some(2)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = refused.log();
    assert_eq!(log.len(), 1, "{log:#?}");
    let json: serde_json::Value = serde_json::from_str(&log[0]).expect("a JSON line");
    assert_eq!(json["level"], "ERROR");
    assert!(
        json["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("configuration error: EVENTS_PREFETCH=0")),
        "{json}"
    );
    publisher.close().await;
}
