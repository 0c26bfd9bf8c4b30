//! A rolling restart, as an operator does it: the three instances of the
//! pm2 cluster file restarted one after another behind nginx while clients
//! chat through nginx. Each client behaves like the page: when its socket
//! closes it reconnects by itself, rejoins its room, and fills what it
//! missed from `GET /api/rooms/{id}/messages?after=`. Every client must end
//! with every message exactly once, in id order, and every answer it got
//! must be true (an echoed chat is stored, a refused one is not).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{client_thread, ClientThread, Incoming, TestDatabase, WsClient};
use crate::ops::{get, start_ops, Ops, INSTANCES};
use crate::procs::heavy_test_lock;
use crate::wait::{eventually, within};

/// Clients chatting through the restarts.
const CLIENTS: usize = 6;
/// Pause between two chats of one client.
const CHAT_EVERY: Duration = Duration::from_millis(150);
/// How long a client waits without any frame before it is sure it has
/// everything (after the chatting stopped).
const QUIET: Duration = Duration::from_secs(3);

/// What one client saw and was told.
#[derive(Debug, Default)]
struct Seen {
    nickname: String,
    /// Every message the client took in (live, `joined.history`, or
    /// fetched after a reconnection), in the order it took them in.
    messages: Vec<(u64, String)>,
    /// Chats answered with their echo: `(id, content)`.
    acked: Vec<(u64, String)>,
    /// Chats answered with an error: their content.
    refused: Vec<String>,
    /// Chats whose socket closed before any answer: their content.
    unanswered: Vec<String>,
    /// Close codes of the sockets the server closed.
    closes: Vec<Option<u16>>,
    /// Messages that arrived live with an id not after the last one taken
    /// in (a duplicate or a reordering).
    out_of_order: Vec<u64>,
}

impl Seen {
    fn last_id(&self) -> u64 {
        self.messages.last().map_or(0, |(id, _)| *id)
    }

    /// Takes in one message; ids not after the last one are either the
    /// expected overlap of a rejoin's history (`overlap_ok`) or a fault.
    fn take(&mut self, message: &Value, overlap_ok: bool) {
        let id = message["id"].as_u64().expect("message id");
        let content = message["content"].as_str().unwrap_or_default().to_owned();
        if id <= self.last_id() {
            if !overlap_ok {
                self.out_of_order.push(id);
            }
            return;
        }
        self.messages.push((id, content));
    }
}

/// GET through nginx, as JSON.
pub(crate) async fn get_json(url: &str) -> Option<Value> {
    let (status, _, body) = get(url).await;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

/// The messages of `room` after `after`, every page, through `front`.
pub(crate) async fn messages_after(front: &str, room: u64, mut after: u64) -> Option<Vec<Value>> {
    let mut all = Vec::new();
    loop {
        let url = format!("http://{front}/api/rooms/{room}/messages?after={after}&limit=500");
        let page = get_json(&url).await?;
        let page = page.as_array()?.clone();
        let Some(last) = page.last() else {
            return Some(all);
        };
        after = last["id"].as_u64()?;
        all.extend(page);
    }
}

/// Connects through nginx and joins `room` as `nickname`, retrying (an
/// instance going down refuses, a nickname may still be held for a moment):
/// at most `limit`. On success the client has taken in the joined history
/// and everything between its last message and that history.
async fn rejoin(
    ws_url: &str,
    front: &str,
    room: u64,
    seen: &mut Seen,
    limit: Duration,
) -> WsClient {
    let deadline = Instant::now() + limit;
    loop {
        assert!(
            Instant::now() < deadline,
            "{} could not rejoin room {room} within {limit:?}",
            seen.nickname
        );
        let connect = WsClient::try_connect_url(ws_url);
        let Ok(Ok((mut client, _))) = tokio::time::timeout(Duration::from_secs(3), connect).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let join = json!({"type":"join","roomId":room,"nickname":seen.nickname,"ref":"j"});
        if !client.try_send(join).await {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let joined = loop {
            match client.next_within(Duration::from_secs(5)).await {
                Some(Incoming::Json(v)) if v["ref"] == "j" => break Some(v),
                Some(Incoming::Json(_)) => {}
                _ => break None,
            }
        };
        let Some(joined) = joined.filter(|v| v["type"] == "joined") else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        // What it missed: the part older than the history from the REST
        // API, then the history. Live messages follow the history.
        // (An empty history means the room had no messages at all when it
        // answered: everything after it arrives live.)
        let history = joined["history"].as_array().cloned().unwrap_or_default();
        let first = history.first().and_then(|m| m["id"].as_u64());
        if let Some(first) = first.filter(|first| *first > seen.last_id() + 1) {
            let Some(missed) = messages_after(front, room, seen.last_id()).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            for m in missed.iter().filter(|m| m["id"].as_u64() < Some(first)) {
                seen.take(m, true);
            }
        }
        for m in &history {
            seen.take(m, true);
        }
        return client;
    }
}

/// Creates a room through `front` (REST); returns its id.
pub(crate) async fn create_room(front: &str, title: &str) -> u64 {
    let mut res = awc::Client::new()
        .post(format!("http://{front}/api/rooms"))
        .send_json(&json!({ "title": title }))
        .await
        .expect("POST /api/rooms");
    let body: Value = res.json().await.expect("room JSON");
    assert_eq!(res.status().as_u16(), 201, "{body}");
    body["id"].as_u64().expect("room id")
}

/// A member that only listens, connected straight to the instances at
/// `ports` (not through nginx): the first, then, after its socket closes,
/// the next (the last one again after that), until `release` turns true.
async fn hold_room(
    ports: Vec<u16>,
    front: String,
    room: u64,
    nickname: String,
    mut release: tokio::sync::watch::Receiver<bool>,
) {
    let mut seen = Seen {
        nickname,
        ..Seen::default()
    };
    let url = |n: usize| format!("ws://127.0.0.1:{}/ws", ports[n.min(ports.len() - 1)]);
    let mut client = rejoin(&url(0), &front, room, &mut seen, Duration::from_secs(30)).await;
    let mut closes = 0;
    while !*release.borrow() {
        tokio::select! {
            _ = release.changed() => {}
            incoming = client.next_within(Duration::from_secs(1)) => {
                if let Some(Incoming::Closed(_)) = incoming {
                    closes += 1;
                    client = rejoin(&url(closes), &front, room, &mut seen, Duration::from_secs(30))
                        .await;
                }
            }
        }
    }
}

/// One client: chats every `CHAT_EVERY` until `stop` turns true, reconnecting
/// whenever the server closes its socket, then listens until `QUIET`.
async fn chat_through_restarts(
    front: String,
    room: u64,
    nickname: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen {
        nickname,
        ..Seen::default()
    };
    let ws_url = format!("ws://{front}/ws");
    let mut client = rejoin(&ws_url, &front, room, &mut seen, Duration::from_secs(30)).await;
    let mut pending: BTreeMap<String, String> = BTreeMap::new();
    let mut sent = 0u64;
    let mut next_chat = Instant::now();
    loop {
        let chatting = !*stop.borrow();
        if chatting && Instant::now() >= next_chat {
            let content = format!("{}-{sent}", seen.nickname);
            let reference = format!("r{sent}");
            pending.insert(reference.clone(), content.clone());
            let chat = json!({"type":"chat","content":content,"ref":reference});
            if !client.try_send(chat).await {
                // Closed under the send: the close frame, if any, is read
                // below like any other.
                next_chat = Instant::now() + CHAT_EVERY;
                sent += 1;
                continue;
            }
            sent += 1;
            next_chat = Instant::now() + CHAT_EVERY;
        }
        let wait = if chatting {
            next_chat.saturating_duration_since(Instant::now())
        } else {
            QUIET
        };
        match client.next_within(wait).await {
            Some(Incoming::Json(v)) => {
                if v["type"] == "message" {
                    seen.take(&v["message"], false);
                }
                let Some(reference) = v["ref"].as_str() else {
                    continue;
                };
                let Some(content) = pending.remove(reference) else {
                    continue;
                };
                if v["type"] == "message" {
                    let id = v["message"]["id"].as_u64().expect("echo id");
                    seen.acked.push((id, content));
                } else {
                    seen.refused.push(content);
                }
            }
            Some(Incoming::Closed(code)) => {
                seen.closes.push(code);
                seen.unanswered
                    .extend(std::mem::take(&mut pending).into_values());
                client = rejoin(&ws_url, &front, room, &mut seen, Duration::from_secs(30)).await;
            }
            None if chatting => {}
            None => break,
        }
    }
    seen.unanswered.extend(pending.into_values());
    seen
}

/// Two listeners that keep `room` populated through a rolling restart,
/// connected straight to instances that are not being restarted at that
/// moment (one on instance 2, then 0; one on instance 1, then 0).
pub(crate) struct Keepers {
    release: tokio::sync::watch::Sender<bool>,
    threads: Vec<ClientThread<()>>,
}

impl Keepers {
    /// Starts both and waits until the room counts them.
    pub(crate) async fn start(ops: &Ops, room: u64) -> Keepers {
        let (front, base) = (ops.front.clone(), ops.base);
        let (release, released) = tokio::sync::watch::channel(false);
        let threads = [(base + 2, "keeper2"), (base + 1, "keeper1")]
            .into_iter()
            .map(|(port, nickname)| {
                let (front, released) = (front.clone(), released.clone());
                client_thread(nickname, move || {
                    hold_room(vec![port, base], front, room, nickname.into(), released)
                })
            })
            .collect();
        eventually(Duration::from_secs(30), "the keepers in the room", || {
            let url = format!("http://{front}/api/rooms/{room}");
            async move { get_json(&url).await.is_some_and(|r| r["memberCount"] == 2) }
        })
        .await;
        Keepers { release, threads }
    }

    /// Lets both go and waits (bounded) until they have.
    pub(crate) async fn release(self) {
        let _ = self.release.send(true);
        for keeper in self.threads {
            keeper.result(Duration::from_secs(60)).await;
        }
    }
}

/// `pm2 restart` of each instance in turn, each once the one before answers
/// `/health` again, with a second between them. Returns each instance's
/// name and how long it took from `pm2 restart` to healthy.
pub(crate) async fn restart_one_after_another(ops: &Ops) -> Vec<(String, Duration)> {
    let mut restarted = Vec::new();
    for i in 0..INSTANCES {
        let name = format!("{}-{i}", ops.app);
        let begun = Instant::now();
        ops.pm2.run(&["restart", &name]);
        let url = format!("http://127.0.0.1:{}/health", ops.base + i);
        eventually(Duration::from_secs(30), &format!("{name} back"), || {
            let url = url.clone();
            async move { get(&url).await.0 == 200 }
        })
        .await;
        restarted.push((name, begun.elapsed()));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    restarted
}

/// The room outlives every restart because the contract deletes a room
/// whose last member leaves, and a shutdown is every local member leaving:
/// [`Keepers`] keep it populated, while the clients under test go through
/// nginx, wherever it sends them.
#[actix_rt::test]
async fn a_rolling_restart_behind_nginx_loses_nothing_and_every_client_comes_back() {
    let _heavy = heavy_test_lock().await;
    let database = TestDatabase::new();
    let ops = start_ops(&database, &[]).await;
    let front = ops.front.clone();
    let room = create_room(&front, "rolling").await;
    let keepers = Keepers::start(&ops, room).await;

    // Chatting starts, then the instances restart one after another, each
    // once the previous one serves again; chatting goes on for two seconds
    // after the last restart.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (front, stop) = (front.clone(), stopped.clone());
            client_thread(&format!("roller{i}"), move || {
                chat_through_restarts(front, room, format!("roller{i}"), stop)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = restart_one_after_another(&ops).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop.send(true);
    let mut results = Vec::new();
    for client in clients {
        results.push(client.result(Duration::from_secs(60)).await);
    }

    let stored = stored_messages(&front, room).await;
    keepers.release().await;
    let stored_contents: BTreeSet<&str> = stored.iter().map(|(_, c)| c.as_str()).collect();

    let mut report = Vec::new();
    for seen in &results {
        let name = &seen.nickname;
        assert!(
            seen.out_of_order.is_empty(),
            "{name} got messages twice or out of order: {:?}",
            seen.out_of_order
        );
        // Everything from its first message on, exactly once, in order.
        let first = seen.messages.first().map_or(0, |(id, _)| *id);
        let expected: Vec<&(u64, String)> = stored.iter().filter(|(id, _)| *id >= first).collect();
        let got: Vec<&(u64, String)> = seen.messages.iter().collect();
        assert_eq!(
            got.len(),
            expected.len(),
            "{name} has {} messages from id {first}, the store {}",
            got.len(),
            expected.len()
        );
        assert!(got == expected, "{name}'s messages differ from the store's");
        for (id, content) in &seen.acked {
            assert!(
                stored.iter().any(|(i, c)| i == id && c == content),
                "{name}'s acknowledged chat {id} {content:?} is not stored"
            );
        }
        for content in &seen.refused {
            assert!(
                !stored_contents.contains(content.as_str()),
                "{name}'s chat {content:?} was refused but is stored"
            );
        }
        assert!(
            !seen.closes.is_empty(),
            "{name} was never disconnected: the restarts missed it"
        );
        for code in &seen.closes {
            assert!(
                matches!(code, Some(1001) | Some(1012)),
                "{name}'s socket was closed with {code:?}, not a clean going-away"
            );
        }
        report.push(format!(
            "{name}: {} messages, {} acked, {} refused, {} unanswered, closes {:?}",
            seen.messages.len(),
            seen.acked.len(),
            seen.refused.len(),
            seen.unanswered.len(),
            seen.closes
        ));
    }
    eprintln!(
        "rolling restart: {} messages stored; restarts {restarted:?}\n{}",
        stored.len(),
        report.join("\n")
    );
    drop(ops);
}

/// Every message of `room` read through nginx, as (id, content), in id
/// order (bounded to 10 s).
pub(crate) async fn stored_messages(front: &str, room: u64) -> Vec<(u64, String)> {
    let stored = within(
        Duration::from_secs(10),
        "the stored messages",
        messages_after(front, room, 0),
    )
    .await
    .expect("stored messages through nginx");
    stored
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().expect("id"),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}
