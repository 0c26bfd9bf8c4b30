//! Guarantee 2, order: message ids increase within a room, and every member
//! on every process receives every message of the room, none skipped, in
//! increasing id order, even when senders on different processes send at
//! the same moment.
//!
//! Every client runs on its own thread with its own actix system (like a
//! client in another process), and all of them start sending or listening
//! at one barrier, so the three senders of a room really race each other
//! through three processes, in two rooms at once.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Barrier;

use crate::helpers::{client_thread, ClientThread, Incoming, WsClient};
use crate::procs::{heavy_test_lock, Cluster};
use crate::wait::within;

const NODES: usize = 3;
const PER_SENDER: usize = 50;
const TOTAL: usize = NODES * PER_SENDER;
const ROOMS: usize = 2;

/// What one client saw: every `message` frame in arrival order, with the
/// `ref` it carried.
struct Seen {
    nickname: String,
    room: u64,
    sender: bool,
    messages: Vec<(Value, Option<String>)>,
}

fn content(nickname: &str, j: usize) -> String {
    format!("{nickname} #{j}")
}

/// Reads `message` frames until `TOTAL` arrived, then makes sure no further
/// message follows.
async fn read_all(ws: &mut WsClient) -> Vec<(Value, Option<String>)> {
    let mut messages = Vec::with_capacity(TOTAL);
    while messages.len() < TOTAL {
        let frame = ws.recv().await;
        assert_ne!(frame["type"], "error", "error frame: {frame}");
        if frame["type"] == "message" {
            let reference = frame["ref"].as_str().map(str::to_owned);
            messages.push((frame["message"].clone(), reference));
        }
    }
    while let Some(Incoming::Json(frame)) = ws.next_within(Duration::from_millis(500)).await {
        assert_ne!(
            frame["type"], "message",
            "a message beyond the {TOTAL} sent arrived: {frame}"
        );
    }
    messages
}

/// A client on its own thread: joins `room` on `port`, waits at `start`,
/// then (if `sender`) sends its `PER_SENDER` chats as fast as it can, and
/// reads every message of the room.
fn client(
    port: u16,
    room: u64,
    nickname: String,
    sender: bool,
    start: Arc<Barrier>,
) -> ClientThread<Seen> {
    client_thread(&nickname.clone(), move || async move {
        let mut ws = WsClient::connect(port).await;
        let joined = ws.join(room, &nickname).await;
        assert_eq!(joined["history"], json!([]), "{nickname}: {joined}");
        let others = format!("{nickname}: the other clients getting ready");
        within(Duration::from_secs(30), &others, start.wait()).await;
        if sender {
            for j in 0..PER_SENDER {
                ws.send(
                    json!({"type":"chat","content":content(&nickname, j),"ref":format!("s{j}")}),
                )
                .await;
            }
        }
        let messages = read_all(&mut ws).await;
        ws.close().await;
        Seen {
            nickname,
            room,
            sender,
            messages,
        }
    })
}

fn check(seen: &Seen, senders: &[String]) {
    let who = format!("{} in room {}", seen.nickname, seen.room);
    let ids: Vec<u64> = seen
        .messages
        .iter()
        .map(|(m, _)| m["id"].as_u64().unwrap_or(0))
        .collect();
    let expected: Vec<u64> = (1..=TOTAL as u64).collect();
    assert_eq!(ids, expected, "{who}: ids not exactly 1..={TOTAL} in order");
    for (m, reference) in &seen.messages {
        assert_eq!(
            m["roomId"], seen.room,
            "{who}: message of another room: {m}"
        );
        let own = m["nickname"] == seen.nickname.as_str();
        match reference {
            Some(r) => {
                assert!(
                    seen.sender && own,
                    "{who}: someone else's message carried ref {r}: {m}"
                );
                let j: usize = r
                    .strip_prefix('s')
                    .and_then(|j| j.parse().ok())
                    .unwrap_or_else(|| panic!("{who}: unknown ref {r}"));
                assert_eq!(
                    m["content"],
                    content(&seen.nickname, j),
                    "{who}: echo with the wrong ref"
                );
            }
            None => assert!(!own, "{who}: own message echoed without its ref: {m}"),
        }
    }
    for sender in senders {
        let contents: Vec<&str> = seen
            .messages
            .iter()
            .filter(|(m, _)| m["nickname"] == sender.as_str())
            .map(|(m, _)| m["content"].as_str().unwrap_or_default())
            .collect();
        let expected: Vec<String> = (0..PER_SENDER).map(|j| content(sender, j)).collect();
        assert_eq!(
            contents, expected,
            "{who}: {sender}'s messages not all there in send order"
        );
    }
}

#[actix_rt::test]
async fn order_holds_for_concurrent_senders_on_three_processes_in_two_rooms() {
    let _heavy = heavy_test_lock().await;
    within(Duration::from_secs(60), "the test", async {
        let cluster = Cluster::start(NODES).await;
        let mut rooms = Vec::new();
        for r in 0..ROOMS {
            rooms.push(cluster.create_room(r % NODES, &format!("order-{r}")).await);
        }
        // One more member per room, held here, keeps the room alive after
        // the threads' clients close, for the history check; it is checked
        // like the others.
        let mut keepers = Vec::new();
        for (r, &room) in rooms.iter().enumerate() {
            let mut keeper = cluster.ws(r % NODES).await;
            keeper.join(room, "keeper").await;
            keepers.push(keeper);
        }
        let start = Arc::new(Barrier::new(ROOMS * NODES * 2));
        let mut clients = Vec::new();
        for &room in &rooms {
            for node in 0..NODES {
                let port = cluster.nodes[node].port;
                for (prefix, sender) in [("sender", true), ("listener", false)] {
                    let nickname = format!("{prefix}{node}");
                    clients.push(client(port, room, nickname, sender, start.clone()));
                }
            }
        }
        let mut seen = Vec::new();
        for c in clients {
            seen.push(c.result(Duration::from_secs(45)).await);
        }

        for (keeper, &room) in keepers.iter_mut().zip(&rooms) {
            let messages = read_all(keeper).await;
            seen.push(Seen {
                nickname: "keeper".into(),
                room,
                sender: false,
                messages,
            });
        }
        let senders: Vec<String> = (0..NODES).map(|n| format!("sender{n}")).collect();
        for s in &seen {
            check(s, &senders);
        }
        for &room in &rooms {
            for node in 0..NODES {
                let stored = cluster.stored_messages(node, room).await;
                for s in seen.iter().filter(|s| s.room == room) {
                    let got: Vec<Value> = s.messages.iter().map(|(m, _)| m.clone()).collect();
                    assert!(
                        stored == got,
                        "room {room}: history on node {node} differs from what {} saw \
                         ({} stored, {} seen)",
                        s.nickname,
                        stored.len(),
                        got.len()
                    );
                }
            }
            // How much the senders really raced (informative only).
            let stored = cluster.stored_messages(0, room).await;
            let switches = stored
                .windows(2)
                .filter(|w| w[0]["nickname"] != w[1]["nickname"])
                .count();
            eprintln!("order: room {room}: the sender changed {switches} times in {TOTAL} ids");
        }
    })
    .await;
}

/// Reads `ws` until a `message` frame with `content` arrives within `wait`;
/// false if it does not (other frames are skipped).
async fn hears(ws: &mut WsClient, content: &str, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_within(left).await {
            Some(Incoming::Json(v)) if v["type"] == "message" => {
                if v["message"]["content"] == content {
                    return true;
                }
            }
            Some(Incoming::Json(_)) => {}
            Some(Incoming::Closed(_)) | None => return false,
        }
    }
}

#[actix_rt::test]
async fn a_member_joining_as_the_last_local_member_leaves_still_gets_every_message() {
    within(Duration::from_secs(60), "the test", async {
        let cluster = Cluster::start(3).await;
        let mut ann = cluster.ws(0).await;
        let room = ann.create("handover", "ann").await["room"]["id"]
            .as_u64()
            .expect("room id");
        for round in 0..15 {
            // Node 1's only member of the room leaves while another joins
            // there: the room's actor on node 1 stops and a new one starts
            // (or the old one keeps going), racing each other.
            let mut old = cluster.ws(1).await;
            old.join(room, &format!("old{round}")).await;
            let mut new = cluster.ws(1).await;
            let name = format!("new{round}");
            let leave = json!({"type":"leave","ref":"bye"});
            let join = json!({"type":"join","roomId":room,"nickname":name,"ref":"j"});
            let offset_us = (round as i64 - 7) * 200;
            let gap = Duration::from_micros(offset_us.unsigned_abs());
            if offset_us < 0 {
                old.send(leave).await;
                std::thread::sleep(gap);
                new.send(join).await;
            } else {
                new.send(join).await;
                std::thread::sleep(gap);
                old.send(leave).await;
            }
            old.reply_to("bye").await;
            new.reply_to("j").await;

            let content = format!("round {round}");
            ann.chat(&content).await;
            assert!(
                hears(&mut new, &content, Duration::from_secs(3)).await,
                "round {round}: {name} on node 1 never got a message sent on node 0"
            );
            cluster
                .wait_members_agree(&[0, 1, 2], room, &["ann", &name], Duration::from_secs(3))
                .await;
            new.leave().await;
        }
    })
    .await;
}
