//! How members leave across processes: a close handshake frees the
//! nickname everywhere before it is acknowledged; a clean shutdown (SIGTERM)
//! delivers everything it stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_http::ws::{CloseCode, Message as WsMessage};
use serde_json::{json, Value};

use crate::helpers::{client_thread, Incoming, WsClient};
use crate::procs::Cluster;
use crate::wait::{eventually, within};

/// Sends a normal close and reads until the server's answer; returns its
/// code.
async fn close_handshake(mut client: WsClient) -> Option<u16> {
    client
        .send_raw(WsMessage::Close(Some(CloseCode::Normal.into())))
        .await;
    within(
        Duration::from_secs(15),
        "the server's close",
        client.close_code(),
    )
    .await
}

#[actix_rt::test]
async fn a_nickname_is_free_on_every_process_once_the_close_is_acknowledged() {
    let cluster = Cluster::start(2).await;
    // Bob keeps the room alive between the rounds.
    let mut bob = cluster.ws(1).await;
    let room = bob.create("handover", "bob").await["room"]["id"]
        .as_u64()
        .unwrap();
    let mut taken = Vec::new();
    for round in 0..50 {
        let mut here = cluster.ws(0).await;
        here.join(room, "sam").await;
        assert_eq!(close_handshake(here).await, Some(1000), "round {round}");
        // Straight after the acknowledgement, on the other process.
        let mut there = cluster.ws(1).await;
        there
            .send(json!({"type":"join","roomId":room,"nickname":"sam","ref":"j"}))
            .await;
        let reply = there.reply_or_error("j").await;
        if reply["type"] != "joined" {
            taken.push((round, reply));
        }
        close_handshake(there).await;
    }
    assert!(
        taken.is_empty(),
        "{} of 50 joins refused: {taken:?}",
        taken.len()
    );
    bob.assert_alive().await;
}

/// What a sender on the process being stopped saw: each chat it sent (by
/// content) and the direct reply it got, if any, then the close code.
struct SenderLog {
    sent: Vec<String>,
    replies: HashMap<String, Value>,
    close: Option<u16>,
}

/// Chats as fast as the server answers (up to `WINDOW` unanswered chats in
/// flight) until the server closes the socket.
async fn chat_until_closed(port: u16, room: u64, name: String) -> SenderLog {
    const WINDOW: usize = 16;
    let mut client = WsClient::connect(port).await;
    client.join(room, &name).await;
    let mut log = SenderLog {
        sent: Vec::new(),
        replies: HashMap::new(),
        close: None,
    };
    loop {
        while log.sent.len() - log.replies.len() < WINDOW {
            let content = format!("{name}-{}", log.sent.len());
            client
                .send(json!({"type":"chat","content":content,"ref":content}))
                .await;
            log.sent.push(content);
        }
        match client.next_within(Duration::from_secs(20)).await {
            Some(Incoming::Json(v)) => {
                if let Some(r) = v["ref"].as_str() {
                    log.replies.insert(r.to_string(), v.clone());
                }
            }
            Some(Incoming::Closed(code)) => {
                log.close = code;
                return log;
            }
            None => panic!("{name}: the server went silent"),
        }
    }
}

/// Reads every message of its room until `stop`; `got` gets their ids.
async fn listen(
    port: u16,
    room: u64,
    name: String,
    got: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    joined: Arc<AtomicUsize>,
) {
    let mut client = WsClient::connect(port).await;
    client.join(room, &name).await;
    joined.fetch_add(1, Ordering::SeqCst);
    while !stop.load(Ordering::Relaxed) {
        match client.next_within(Duration::from_millis(100)).await {
            Some(Incoming::Json(v)) if v["type"] == "message" => {
                got.lock().unwrap().push(v["message"].clone());
            }
            Some(Incoming::Json(_)) | None => {}
            Some(Incoming::Closed(code)) => panic!("{name} closed: {code:?}"),
        }
    }
}

/// Every stored message of `room`, from node `i`, in id order.
async fn all_stored(cluster: &Cluster, i: usize, room: u64) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    loop {
        let after = all.last().map_or(0, |m| m["id"].as_u64().unwrap());
        let (status, page) = cluster
            .get(
                i,
                &format!("/api/rooms/{room}/messages?after={after}&limit=500"),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let page = page.as_array().unwrap().clone();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

#[actix_rt::test]
async fn a_clean_shutdown_delivers_everything_it_stored_and_answers_every_sender() {
    let _heavy = crate::procs::heavy_test_lock().await;
    // Senders flood: no frame rate limit in the way.
    let unlimited = [("WS_RATE_PER_SEC", "1000000"), ("WS_RATE_BURST", "1000000")];
    let mut cluster = Cluster::start_with(2, &crate::procs::redis_url(), &unlimited).await;
    for round in 0..3 {
        // The room lives on node 1, which survives; nobody posts there once
        // node 0 is told to stop.
        let mut keeper = cluster.ws(1).await;
        let room = keeper.create(&format!("quiet {round}"), "keeper").await["room"]["id"]
            .as_u64()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let joined = Arc::new(AtomicUsize::new(0));
        let mut listeners = Vec::new();
        for l in 0..2 {
            let got = Arc::new(Mutex::new(Vec::new()));
            let (port, name, g, s, j) = (
                cluster.nodes[1].port,
                format!("ear{l}"),
                got.clone(),
                stop.clone(),
                joined.clone(),
            );
            let thread = client_thread(&name.clone(), move || listen(port, room, name, g, s, j));
            listeners.push((got, thread));
        }
        // The listeners record live messages only: they must be in the room
        // before the first chat.
        eventually(Duration::from_secs(10), "the listeners joined", || {
            let n = joined.load(Ordering::SeqCst);
            async move { n == 2 }
        })
        .await;
        // Hard chat on node 1 too, until just before the SIGTERM.
        let mut local = cluster.ws(1).await;
        local.join(room, "local").await;
        let mut senders = Vec::new();
        for k in 0..4 {
            let (port, name) = (cluster.nodes[0].port, format!("r{round}s{k}"));
            senders.push(client_thread(&name.clone(), move || {
                chat_until_closed(port, room, name)
            }));
        }
        let contents: Vec<String> = (0..100).map(|i| format!("local-{round}-{i}")).collect();
        local.chat_all(&contents).await;
        tokio::time::sleep(Duration::from_millis(300)).await;

        let took = cluster.terminate(0, Duration::from_secs(20)).await;
        let sigterm = std::time::Instant::now();
        let mut logs = Vec::new();
        for s in senders {
            logs.push(s.result(Duration::from_secs(20)).await);
        }

        let stored = all_stored(&cluster, 1, room).await;
        let by_content: HashMap<&str, &Value> = stored
            .iter()
            .map(|m| (m["content"].as_str().unwrap(), m))
            .collect();
        let waited = eventually(
            Duration::from_secs(10),
            "the survivors to have every stored message",
            || {
                // On failure, say how each listener differs from the store.
                let differences: Vec<String> = listeners
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (got, _))| {
                        let got = got.lock().unwrap();
                        (*got != stored).then(|| {
                            let ids = |ms: &[Value]| -> Vec<u64> {
                                ms.iter().filter_map(|m| m["id"].as_u64()).collect()
                            };
                            let (have, want) = (ids(&got), ids(&stored));
                            let missing: Vec<_> = want
                                .iter()
                                .filter(|id| !have.contains(id))
                                .take(10)
                                .collect();
                            let first_off = have.iter().zip(&want).position(|(a, b)| a != b);
                            format!(
                                "listener {i}: {} messages, the store {}; first \
                                 difference at {first_off:?}; missing {missing:?}",
                                have.len(),
                                want.len()
                            )
                        })
                    })
                    .collect();
                let result = if differences.is_empty() {
                    Ok(())
                } else {
                    Err(differences.join("; "))
                };
                async move { result }
            },
        )
        .await;
        let mut from_stopped = 0;
        for log in &logs {
            assert_eq!(
                log.close,
                Some(1001),
                "a sender's socket closed with {:?}",
                log.close
            );
            for content in &log.sent {
                let in_store = by_content.get(content.as_str());
                match (log.replies.get(content), in_store) {
                    (Some(reply), Some(m)) => {
                        assert_eq!(
                            reply["type"], "message",
                            "{content} stored, answered {reply}"
                        );
                        assert_eq!(&&reply["message"], m);
                        from_stopped += 1;
                    }
                    (Some(reply), None) => {
                        assert_eq!(
                            reply["type"], "error",
                            "{content} not stored, answered {reply}"
                        )
                    }
                    (None, Some(m)) => {
                        panic!("{content} stored as {m} but its sender got no answer")
                    }
                    (None, None) => {}
                }
            }
        }
        assert!(from_stopped > 0, "node 0's senders stored nothing");
        // Every member on the survivor gets everything stored, once, in
        // order, without anyone posting again.
        println!(
            "round {round}: {} stored ({from_stopped} from the stopped node); \
             SIGTERM to exit {took:?}; survivors complete {:?} after exit (waited {waited:?})",
            stored.len(),
            sigterm.elapsed()
        );
        stop.store(true, Ordering::Relaxed);
        for (_, thread) in listeners {
            thread.result(Duration::from_secs(10)).await;
        }
        keeper.assert_alive().await;
        cluster.restart(0).await;
    }
}
