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
