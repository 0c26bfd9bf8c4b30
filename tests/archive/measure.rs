//! A measurement, not a check (ignored by default): how fast `chat-events`
//! archives a backlog of 20,000 events with the default settings. `cargo
//! test --test archive archive_throughput -- --ignored --nocapture` prints
//! the rate (README, "Event archive").

use std::time::{Duration, Instant};

use crate::helpers::TestDatabase;
use crate::{count, event, wait_for_count, Archiver, Publisher, Vhost};

#[tokio::test]
#[ignore]
async fn archive_throughput() {
    const EVENTS: u64 = 20_000;
    let (vhost, db) = (Vhost::new(), TestDatabase::new());
    let mut archiver = Archiver::start(&vhost, &db, &[]);
    archiver.wait_consuming().await;
    archiver.kill();
    let publisher = Publisher::connect(&vhost).await;
    let bodies: Vec<Vec<u8>> = (1..=EVENTS)
        .map(|i| {
            event("message.sent", &format!("t{i}"), i % 50 + 1, Some(i))
                .to_string()
                .into_bytes()
        })
        .collect();
    publisher.publish_many("message.sent", &bodies).await;
    let start = Instant::now();
    let mut archiver = Archiver::start(&vhost, &db, &[]);
    wait_for_count(&db, EVENTS, Duration::from_secs(300)).await;
    let took = start.elapsed();
    println!(
        "{EVENTS} queued events archived in {:.2} s (process start included): {:.0} events/s",
        took.as_secs_f64(),
        EVENTS as f64 / took.as_secs_f64()
    );
    assert!(archiver.running());
    assert_eq!(count(&db).await, EVENTS);
    publisher.close().await;
}
