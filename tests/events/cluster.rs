//! Two processes of a cluster (MySQL + Redis) with members of one room on
//! both, chatting and joining at the same time, publish one stream for the
//! room in the order of the store: seq gapless and increasing, message ids
//! increasing, every join before its leave, whichever process made the
//! change (docs/PROTOCOL.md "Domain events").

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::future::{join, join_all};
use serde_json::Value;

use crate::helpers::joined_room_id;
use crate::procs::{redis_url, Cluster};
use crate::rabbit::{seqs, types, Listener, Vhost};

const SENDERS: usize = 4;
const PER_SENDER: usize = 25;
const JOINERS: usize = 4;

#[actix_rt::test]
async fn two_processes_publish_one_stream_per_room_in_store_order() {
    let vhost = Vhost::create();
    let listener = Listener::start(&vhost.url());
    let url = vhost.url();
    let mut cluster = Cluster::start_logged(
        2,
        &redis_url(),
        &[("AMQP_URL", url.as_str()), ("EVENTS_POLL_MS", "100")],
    )
    .await;
    let room = cluster.create_room(0, "together").await;

    // Two senders on each process.
    let mut senders = Vec::new();
    for k in 0..SENDERS {
        let mut ws = cluster.ws(k % 2).await;
        ws.join(room, &format!("s{k}")).await;
        senders.push(ws);
    }
    // All of them chat at once while others join and leave on both
    // processes.
    let chats = join_all(senders.iter_mut().enumerate().map(|(k, ws)| async move {
        let contents: Vec<String> = (0..PER_SENDER).map(|j| format!("s{k} #{j}")).collect();
        ws.chat_all(&contents).await
    }));
    let churn = join_all((0..JOINERS).map(|k| {
        let cluster = &cluster;
        async move {
            let mut ws = cluster.ws(k % 2).await;
            ws.join(room, &format!("j{k}")).await;
            ws.leave().await;
        }
    }));
    let _ = join(chats, churn).await;
    let stored = cluster.stored_messages(1, room).await;
    assert_eq!(stored.len(), SENDERS * PER_SENDER);
    for ws in &mut senders {
        ws.leave().await;
    }

    let members = SENDERS + JOINERS;
    let total = 1 + members + SENDERS * PER_SENDER + members + 1;
    let events = listener
        .wait_room(room, total, Duration::from_secs(30))
        .await;
    assert_eq!(events.len(), total, "{:#?}", types(&events));
    let kinds = types(&events);
    assert_eq!(kinds.first().map(String::as_str), Some("room.created"));
    assert_eq!(kinds.last().map(String::as_str), Some("room.deleted"));
    assert_eq!(
        seqs(&events),
        (1..=total as u64).collect::<Vec<_>>(),
        "seq is gapless and increasing in arrival order"
    );

    // The messages, in arrival order, are the store's, in id order.
    let sent: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "message.sent")
        .map(|e| &e["message"])
        .collect();
    assert_eq!(sent.len(), stored.len());
    for (got, want) in sent.iter().zip(&stored) {
        assert_eq!(*got, want, "message events follow the store's ids");
    }

    // Every member joined once, then left once.
    let mut joined_at: HashMap<String, usize> = HashMap::new();
    let mut left_at: HashMap<String, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let nick = e["member"]["nickname"].as_str().unwrap_or("?").to_owned();
        match e["type"].as_str() {
            Some("member.joined") => assert!(joined_at.insert(nick, i).is_none()),
            Some("member.left") => assert!(left_at.insert(nick, i).is_none()),
            _ => {}
        }
    }
    assert_eq!(joined_at.len(), members);
    for (nick, joined) in &joined_at {
        let left = left_at.get(nick).copied();
        assert!(
            left.is_some_and(|left| left > *joined),
            "{nick} joined at {joined}, left at {left:?}"
        );
    }

    // Both processes produced events of the one stream.
    let instances: HashSet<&str> = events
        .iter()
        .filter_map(|e| e["instance"].as_str())
        .collect();
    let nodes: HashSet<&str> = cluster.nodes.iter().map(|n| n.instance.as_str()).collect();
    assert_eq!(instances, nodes);

    // Each event was published once (a healthy run has no repeats).
    let published = listener
        .received()
        .iter()
        .filter(|r| r.body["roomId"] == room)
        .count();
    assert_eq!(published, total, "events published more than once");

    // Exactly one process relays; both are healthy.
    for i in 0..2 {
        let (status, body) = cluster.get(i, "/health").await;
        assert_eq!(status, 200, "node {i}: {body}");
        assert_eq!(body["events"], "rabbitmq");
    }
    assert_eq!(
        cluster.count_in_logs("this process runs the relay"),
        1,
        "one relay"
    );
    cluster.assert_no_errors();

    // The relay dies (SIGKILL): the other process takes over, and the
    // next room's stream arrives whole and in order.
    let relay = (0..2)
        .find(|&i| {
            cluster
                .logs(i)
                .iter()
                .any(|l| l.contains("this process runs the relay"))
        })
        .expect("a relay");
    let survivor = 1 - relay;
    cluster.kill(relay);
    let mut ws = cluster.ws(survivor).await;
    let next = joined_room_id(&ws.create("after", "z").await);
    let contents: Vec<String> = (0..10).map(|j| format!("after #{j}")).collect();
    ws.chat_all(&contents).await;
    ws.leave().await;
    let events = listener.wait_room(next, 14, Duration::from_secs(30)).await;
    assert_eq!(seqs(&events), (1..=14).collect::<Vec<_>>());
    assert_eq!(
        types(&events).last().map(String::as_str),
        Some("room.deleted")
    );
    assert!(cluster
        .logs(survivor)
        .iter()
        .any(|l| l.contains("this process runs the relay")));
}
