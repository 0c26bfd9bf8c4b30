//! MySQL or RabbitMQ unreachable, at start-up or mid-stream (through the
//! fault proxy): `chat-events` waits with a growing delay, never exits or
//! spins, and once the service is back every event is stored once.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::fault_proxy::{Fault, FaultProxy};
use crate::helpers::{mysql_base_url, TestDatabase};
use crate::{amqp_base_url, count, event, rows, wait_for_count, Archiver, Publisher, Vhost};

const LIMIT: Duration = Duration::from_secs(30);

/// `base` (a URL of 127.0.0.1:port) pointed at `proxy` instead.
fn through(base: &str, proxy: &FaultProxy) -> String {
    let (scheme, rest) = base.split_once("://").expect("a URL");
    let (userinfo, _) = rest.rsplit_once('@').expect("user@host");
    format!("{scheme}://{userinfo}@{}", proxy.addr())
}

async fn publish_range(publisher: &Publisher, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        publisher
            .publish(&event("message.sent", &format!("e{i}"), 4, Some(i)))
            .await;
    }
}

async fn assert_exactly(db: &TestDatabase, n: u64) {
    let ids: BTreeSet<String> = rows(db).await.into_iter().map(|r| r.event_id).collect();
    let expected: BTreeSet<String> = (1..=n).map(|i| format!("e{i}")).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn mysql_cut_mid_stream_delays_events_and_loses_none() {
    let (vhost, db) = (Vhost::new(), TestDatabase::new());
    let proxy = FaultProxy::start("127.0.0.1:3306");
    // `prefer_socket=false`: the driver would otherwise switch to the
    // server's Unix socket, around the proxy.
    let mysql = format!(
        "{}/{}?prefer_socket=false",
        through(&mysql_base_url(), &proxy),
        db.name
    );
    let amqp = vhost.url();
    let mut archiver = Archiver::start_with(&[
        ("AMQP_URL", &amqp),
        ("MYSQL_URL", &mysql),
        ("STORE_TIMEOUT_MS", "1000"),
        ("EVENTS_RETRY_MAX_MS", "500"),
        ("EVENTS_PREFETCH", "30"),
        ("EVENTS_BATCH_MAX", "10"),
        ("RUST_LOG", "info,chat_events=debug"),
    ]);
    archiver.wait_consuming().await;
    let publisher = Publisher::connect(&vhost).await;
    publish_range(&publisher, 1..=100).await;
    wait_for_count(&db, 100, LIMIT).await;
    // The rows are visible before the archiver has read MySQL's answer to
    // its COMMIT: cut before that, and it retries the last batch (stored
    // once all the same) and holds 10 more deliveries unacknowledged.
    archiver
        .wait_for_line("acknowledged up to 100", Duration::from_secs(10))
        .await;

    proxy.set(Fault::Cut);
    publish_range(&publisher, 101..=200).await;
    archiver
        .wait_for_line("cannot store", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(archiver.running(), "{:#?}", archiver.log());
    assert_eq!(count(&db).await, 100, "nothing stored while cut off");
    // The process holds EVENTS_PREFETCH events unacknowledged, no more:
    // the rest waits in RabbitMQ.
    assert_eq!(publisher.ready_in("chat-events.archive").await, 70);
    let attempts = archiver.lines_with("cannot store");
    assert!(
        attempts <= 12,
        "{attempts} attempts in about 2 s: a hot loop"
    );

    proxy.set(Fault::Pass);
    let healed = std::time::Instant::now();
    wait_for_count(&db, 200, LIMIT).await;
    eprintln!(
        "MySQL back: all stored {:?} after the heal",
        healed.elapsed()
    );
    assert_exactly(&db, 200).await;
    assert_eq!(publisher.ready_in("chat-events.archive").await, 0);
    publisher.close().await;
}

#[tokio::test]
async fn rabbitmq_cut_mid_stream_delays_events_and_loses_none() {
    let (vhost, db) = (Vhost::new(), TestDatabase::new());
    let proxy = FaultProxy::start("127.0.0.1:5672");
    let amqp = vhost.url_on(&through(&amqp_base_url(), &proxy));
    let mut archiver = Archiver::start_with(&[
        ("AMQP_URL", &amqp),
        ("MYSQL_URL", &db.url),
        ("EVENTS_RETRY_MAX_MS", "500"),
    ]);
    archiver.wait_consuming().await;
    // The test's own publisher goes straight to RabbitMQ.
    let publisher = Publisher::connect(&vhost).await;
    publish_range(&publisher, 1..=50).await;
    wait_for_count(&db, 50, LIMIT).await;

    proxy.set(Fault::Cut);
    publish_range(&publisher, 51..=100).await;
    archiver
        .wait_for_line("cannot reach RabbitMQ", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(archiver.running(), "{:#?}", archiver.log());
    assert_eq!(count(&db).await, 50);

    proxy.set(Fault::Pass);
    let healed = std::time::Instant::now();
    wait_for_count(&db, 100, LIMIT).await;
    eprintln!(
        "RabbitMQ back: all stored {:?} after the heal",
        healed.elapsed()
    );
    assert_exactly(&db, 100).await;
    publisher.close().await;
}

#[tokio::test]
async fn services_down_at_start_are_waited_for_without_a_hot_loop() {
    let (vhost, db) = (Vhost::new(), TestDatabase::new());
    // Nothing listens on the port of a proxy that is gone.
    let closed = {
        let proxy = FaultProxy::start("127.0.0.1:9");
        proxy.addr()
    };
    for (amqp, mysql, complaint) in [
        (
            format!("amqp://guest:guest@{closed}/{}", vhost.name),
            db.url.clone(),
            "cannot reach RabbitMQ",
        ),
        (
            vhost.url(),
            format!("mysql://root@{closed}/{}", db.name),
            "cannot reach MySQL",
        ),
    ] {
        let mut archiver = Archiver::start_with(&[
            ("AMQP_URL", &amqp),
            ("MYSQL_URL", &mysql),
            ("EVENTS_RETRY_MAX_MS", "1000"),
        ]);
        archiver
            .wait_for_line(complaint, Duration::from_secs(10))
            .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(archiver.running(), "{:#?}", archiver.log());
        let attempts = archiver.lines_with(complaint);
        // 200 ms doubling to 1 s, with jitter: about 5 attempts in 3 s.
        assert!(
            (2..=10).contains(&attempts),
            "{attempts} attempts in 3 s: {:#?}",
            archiver.log()
        );
        let status = archiver
            .signal_and_wait("TERM", Duration::from_secs(5))
            .await;
        assert_eq!(status.code(), Some(0), "{:#?}", archiver.log());
    }
}
