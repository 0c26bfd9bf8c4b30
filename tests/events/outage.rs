//! RabbitMQ unreachable (the fault proxy between the server and the
//! broker): chat is unaffected, `/health` names `events` degraded, the
//! buffered events arrive in order after healing, and beyond the bound
//! (`EVENTS_BUFFER_MAX`) events are dropped, counted, and seen as a seq gap.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::fault_proxy::{Fault, FaultProxy};
use crate::helpers::{joined_room_id, spawn_app_with, StoreMode, TestApp, WsClient};
use crate::rabbit::{seqs, types, Listener, Vhost, BROKER};
use crate::wait::eventually;

/// The buffer bound of these tests.
const MAX: usize = 20;
/// Slowest a chat may be answered while RabbitMQ is away (a healthy answer
/// takes milliseconds; this leaves room for a loaded CI machine, and is
/// far below the publish timeout plus reconnect backoff a chat would wait
/// if it depended on RabbitMQ).
const CHAT_ANSWER: Duration = Duration::from_millis(800);

async fn health(app: &TestApp) -> (u16, Value) {
    app.get("/health").await
}

async fn wait_events_degraded(app: &TestApp) {
    eventually(Duration::from_secs(15), "/health names events", || async {
        let (status, body) = health(app).await;
        if status == 503 && body["failing"] == serde_json::json!(["events"]) {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
}

async fn wait_healthy(app: &TestApp) {
    eventually(Duration::from_secs(15), "/health ok again", || async {
        let (status, body) = health(app).await;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
}

/// Sends each of `contents` and checks it is answered in chat time.
async fn chat_quickly(client: &mut WsClient, contents: &[String]) {
    for content in contents {
        let sent = Instant::now();
        let echo = client.chat(content).await;
        assert_eq!(echo["message"]["content"], content.as_str());
        assert!(
            sent.elapsed() < CHAT_ANSWER,
            "a chat took {:?} while RabbitMQ was away",
            sent.elapsed()
        );
    }
}

fn contents(of: &[Value]) -> Vec<String> {
    of.iter()
        .filter_map(|e| e["message"]["content"].as_str().map(str::to_owned))
        .collect()
}

async fn rabbitmq_away_leaves_chat_alone_and_events_wait_in_a_bounded_buffer(mode: StoreMode) {
    let vhost = Vhost::create();
    let listener = Listener::start(&vhost.url());
    let proxy = FaultProxy::start(BROKER);
    let url = vhost.url_at(&proxy.addr().to_string());
    let app = spawn_app_with(mode, |s| crate::events_to(s, &url, MAX)).await;
    let mut alice = app.ws().await;
    let room = joined_room_id(&alice.create("outage", "alice").await);
    listener.wait_room(room, 2, Duration::from_secs(10)).await;
    let (status, body) = health(&app).await;
    assert_eq!(status, 200, "{body}");

    // 1. RabbitMQ stops answering (a partition: nothing is closed).
    proxy.set(Fault::Blackhole);
    let first: Vec<String> = (1..=5).map(|i| format!("during {i}")).collect();
    chat_quickly(&mut alice, &first).await;
    wait_events_degraded(&app).await;
    // (With MySQL the count is the outbox as the relay last saw it.)
    eventually(Duration::from_secs(10), "5 events buffered", || async {
        let (_, body) = health(&app).await;
        if body["eventsBuffered"] == 5 && body["eventsDropped"] == 0 {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;
    assert_eq!(listener.room(room).len(), 2, "nothing got through");

    // Healed: the buffered events arrive, in order, by themselves.
    proxy.set(Fault::Pass);
    let events = listener.wait_room(room, 7, Duration::from_secs(20)).await;
    assert_eq!(contents(&events), first);
    assert_eq!(seqs(&events), (1..=7).collect::<Vec<_>>());
    wait_healthy(&app).await;

    // 2. RabbitMQ refuses connections, and more events come than the
    //    buffer holds: the oldest are dropped and counted.
    proxy.set(Fault::Cut);
    let burst: Vec<String> = (1..=MAX as u32 + 10)
        .map(|i| format!("burst {i}"))
        .collect();
    chat_quickly(&mut alice, &burst).await;
    wait_events_degraded(&app).await;
    eventually(Duration::from_secs(10), "the drop is counted", || async {
        let (_, body) = health(&app).await;
        if body["eventsDropped"] == 10 && body["eventsBuffered"] == MAX {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;
    if let Some(db) = app.database() {
        let rows = db.query_u64("SELECT COUNT(*) FROM chatEventOutbox").await;
        assert_eq!(rows, MAX as u64, "the outbox holds the bound");
    }
    assert_eq!(listener.room(room).len(), 7);

    proxy.set(Fault::Pass);
    let events = listener
        .wait_room(room, 7 + MAX, Duration::from_secs(20))
        .await;
    let after: Vec<Value> = events[7..].to_vec();
    assert_eq!(
        contents(&after),
        burst[10..].to_vec(),
        "the newest {MAX}, in order"
    );
    assert_eq!(
        seqs(&after),
        (18..18 + MAX as u64).collect::<Vec<_>>(),
        "the 10 dropped show as a seq gap"
    );
    assert!(types(&after).iter().all(|t| t == "message.sent"));
    wait_healthy(&app).await;
    let (_, body) = health(&app).await;
    assert_eq!(body["eventsDropped"], 10, "{body}");

    // Publishing carries on as usual.
    alice.leave().await;
    let events = listener
        .wait_room(room, 9 + MAX, Duration::from_secs(10))
        .await;
    assert_eq!(
        types(&events[7 + MAX..]),
        ["member.left", "room.deleted"],
        "{events:#?}"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn rabbitmq_away_leaves_chat_alone_and_events_wait_in_a_bounded_buffer_memory() {
    rabbitmq_away_leaves_chat_alone_and_events_wait_in_a_bounded_buffer(StoreMode::Memory).await;
}

#[actix_rt::test]
async fn rabbitmq_away_leaves_chat_alone_and_events_wait_in_a_bounded_buffer_mysql() {
    rabbitmq_away_leaves_chat_alone_and_events_wait_in_a_bounded_buffer(StoreMode::MySql).await;
}
