//! MySQL outages against the real binary and a private MariaDB, frozen with
//! SIGSTOP while members chat and join: every chat gets a first answer in
//! time (`message`, `error`, or `pending` when the database has not
//! confirmed it), a `pending` is followed by exactly one final answer once
//! MySQL is back, and every answer is true (`message`: stored and delivered
//! to every member exactly once, in order; `error`: never stored, even
//! later); a join answered with an error leaves no member row; `/health`
//! answers within 3 s and says degraded; chat works again soon after
//! SIGCONT. Also: the empty-room sweep works off a large backlog in bounded
//! chunks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

use crate::helpers::{read_json, WsClient};
use crate::mariadb::PrivateMariaDb;
use crate::wait::{eventually, within};
use crate::Server;

/// `STORE_TIMEOUT_MS` of the server under test.
const STORE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long each freeze lasts: well past the store timeout.
const FREEZE: Duration = Duration::from_millis(3000);
/// Freezes per run, each at a different moment of the chatting.
const ROUNDS: usize = 4;
/// The latest a chat's first answer may come: `STORE_TIMEOUT_MS` + 1 s.
const ANSWER_LIMIT: Duration = Duration::from_millis(1500 + 1000);

/// One frame that carried a chat's `ref`.
#[derive(Debug, Clone)]
struct Reply {
    /// `message`, `error` or `pending`.
    kind: String,
    /// The id of a `message` echo.
    stored_as: Option<u64>,
    code: String,
    at: Instant,
}

/// One chat sent, and every frame its `ref` got.
#[derive(Debug)]
struct Sent {
    content: String,
    sent_at: Instant,
    replies: Vec<Reply>,
}

impl Sent {
    /// The final answer: the echo or the error (a `pending` is not one).
    fn last(&self) -> Option<&Reply> {
        self.replies.iter().find(|r| r.kind != "pending")
    }

    fn stored_as(&self) -> Option<u64> {
        self.last().and_then(|r| r.stored_as)
    }

    fn is_pending(&self) -> bool {
        self.replies.first().is_some_and(|r| r.kind == "pending")
    }

    /// Told `pending` and not answered for good yet.
    fn unresolved(&self) -> bool {
        !self.replies.is_empty() && self.last().is_none()
    }

    fn first_waited(&self) -> Duration {
        self.replies
            .first()
            .map_or(Duration::MAX, |r| r.at.duration_since(self.sent_at))
    }
}

/// One member: its socket, what its chats were answered, what it received.
struct Member {
    name: String,
    ws: WsClient,
    sent: Vec<Sent>,
    /// Index in `sent` by `ref`.
    refs: HashMap<String, usize>,
    /// Ids of every `message` frame, in arrival order.
    received: Vec<u64>,
}

impl Member {
    fn new(name: String, ws: WsClient) -> Member {
        Member {
            name,
            ws,
            sent: Vec::new(),
            refs: HashMap::new(),
            received: Vec::new(),
        }
    }

    /// Records one frame: a message's id, and the reply to a chat of ours.
    fn take(&mut self, frame: Value) {
        if frame["type"] == "message" {
            if let Some(id) = frame["message"]["id"].as_u64() {
                self.received.push(id);
            }
        }
        let Some(i) = frame["ref"].as_str().and_then(|r| self.refs.get(r)) else {
            return;
        };
        self.sent[*i].replies.push(Reply {
            kind: frame["type"].as_str().unwrap_or("").to_owned(),
            stored_as: (frame["type"] == "message")
                .then(|| frame["message"]["id"].as_u64())
                .flatten(),
            code: frame["code"].as_str().unwrap_or("").to_owned(),
            at: Instant::now(),
        });
    }

    /// Sends one chat and reads until its first answer (`pending` counts),
    /// keeping every other frame seen on the way.
    async fn chat(&mut self, content: String) -> &Sent {
        let i = self.sent.len();
        let reference = format!("r{i}");
        self.refs.insert(reference.clone(), i);
        self.sent.push(Sent {
            content: content.clone(),
            sent_at: Instant::now(),
            replies: Vec::new(),
        });
        self.ws
            .send(json!({"type": "chat", "content": content, "ref": reference}))
            .await;
        while self.sent[i].replies.is_empty() {
            let frame = self.ws.recv().await;
            self.take(frame);
        }
        &self.sent[i]
    }

    /// Reads frames until `quiet` passes without one.
    async fn drain(&mut self, quiet: Duration) {
        while let Some(crate::helpers::Incoming::Json(frame)) = self.ws.next_within(quiet).await {
            self.take(frame);
        }
    }

    /// Reads frames until every chat told `pending` has its final answer,
    /// for at most `limit`.
    async fn await_finals(&mut self, limit: Duration) {
        let end = Instant::now() + limit;
        while self.sent.iter().any(Sent::unresolved) {
            let left = end.saturating_duration_since(Instant::now());
            match self.ws.next_within(left).await {
                Some(crate::helpers::Incoming::Json(frame)) => self.take(frame),
                _ => break,
            }
        }
    }
}

/// Checks what every chat was answered against what the store holds:
/// a first answer within `ANSWER_LIMIT`; either one final answer, or
/// `pending` then exactly one final answer; `message` means stored as
/// echoed, `error` (always `unavailable` here) means never stored. Returns
/// how many chats were told `pending`.
fn check_answers(all: &[&Sent], in_store: &BTreeMap<u64, String>) -> usize {
    let contents: HashSet<&str> = in_store.values().map(String::as_str).collect();
    for a in all {
        assert!(
            a.first_waited() <= ANSWER_LIMIT,
            "{}: first answer after {:?} (limit {ANSWER_LIMIT:?}): {a:?}",
            a.content,
            a.first_waited()
        );
        let kinds: Vec<&str> = a.replies.iter().map(|r| r.kind.as_str()).collect();
        assert!(
            matches!(
                kinds[..],
                ["message"] | ["error"] | ["pending", "message"] | ["pending", "error"]
            ),
            "{}: answered {kinds:?}; want one final answer, or pending then one",
            a.content
        );
        match a.stored_as() {
            Some(id) => assert_eq!(
                in_store.get(&id).map(String::as_str),
                Some(a.content.as_str()),
                "answered as message {id}, not stored so"
            ),
            None => {
                let code = a.last().map_or("", |r| r.code.as_str());
                assert_eq!(code, "unavailable", "{a:?}");
                assert!(
                    !contents.contains(a.content.as_str()),
                    "answered {code} but stored: {}",
                    a.content
                );
            }
        }
    }
    all.iter().filter(|a| a.is_pending()).count()
}

async fn health(base: &str) -> (u16, Value, Duration) {
    let http = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let started = Instant::now();
    let res = http
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /health: {e}"));
    let (status, body) = read_json(res).await;
    (status, body, started.elapsed())
}

/// Every stored message of `room`, by id, read straight from the database.
async fn stored(pool: &mysql_async::Pool, room: u64) -> BTreeMap<u64, String> {
    let mut conn = pool
        .get_conn()
        .await
        .expect("connect to the private MariaDB");
    let rows: Vec<(u64, String)> = conn
        .exec(
            "SELECT id, content FROM chatMsg WHERE room_id = ? ORDER BY id",
            (room,),
        )
        .await
        .expect("read chatMsg");
    rows.into_iter().collect()
}

#[actix_rt::test]
async fn a_frozen_mysql_gets_true_answers_in_time_and_chat_resumes_after_it() {
    let mut db = PrivateMariaDb::start().await;
    let timeout_ms = STORE_TIMEOUT.as_millis().to_string();
    let url = db.url("chat");
    let mut server = Server::start(&[
        ("MYSQL_URL", url.as_str()),
        ("STORE_TIMEOUT_MS", timeout_ms.as_str()),
        // The clients send as fast as they are answered.
        ("WS_RATE_PER_SEC", "100000"),
        ("WS_RATE_BURST", "100000"),
        ("WS_JOIN_RATE_PER_SEC", "100000"),
        ("WS_JOIN_BURST", "100000"),
    ]);
    server.wait_healthy().await;
    let base = server.base();
    let pool = mysql_async::Pool::new(url.as_str());

    // Three members in one room.
    let mut members = Vec::new();
    let mut first = WsClient::connect(server.port).await;
    let joined = first.create("outage", "m0").await;
    let room = joined["room"]["id"].as_u64().expect("room id");
    members.push(first);
    for i in 1..3 {
        let mut ws = WsClient::connect(server.port).await;
        ws.join(room, &format!("m{i}")).await;
        members.push(ws);
    }
    let mut members: Vec<Member> = members
        .into_iter()
        .enumerate()
        .map(|(i, ws)| Member::new(format!("m{i}"), ws))
        .collect();
    // A socket that joins and leaves again and again, in a room of its own
    // (kept alive by a member that stays).
    let mut holder = WsClient::connect(server.port).await;
    let lobby = holder.create("joins", "holder").await["room"]["id"]
        .as_u64()
        .expect("room id");
    let mut joiner = WsClient::connect(server.port).await;
    let mut refused_joins: Vec<String> = Vec::new();
    let mut health_waits = Vec::new();
    let mut recoveries = Vec::new();

    for round in 0..ROUNDS {
        // Freeze at a different moment of the chatting each round.
        let freeze_after = Duration::from_millis(40 + 97 * round as u64);
        let round_started = Instant::now();
        let stop_at = round_started + freeze_after + FREEZE + Duration::from_millis(1500);
        let thawed_at = std::cell::Cell::new(None::<Instant>);
        let chatting = members.iter_mut().map(|m| {
            let name = m.name.clone();
            async move {
                let mut n = 0;
                // The next chat goes once the last has its first answer: after
                // a `pending`, it is sent while the batch before is unresolved.
                while Instant::now() < stop_at {
                    m.chat(format!("{name} round {round} chat {n}")).await;
                    n += 1;
                }
            }
        });
        let chatting = futures_util::future::join_all(chatting);
        let joining = async {
            let mut k = 0;
            while Instant::now() < stop_at {
                let nick = format!("j{round}x{k}");
                k += 1;
                joiner
                    .send(json!({"type": "join", "roomId": lobby, "nickname": nick, "ref": "j"}))
                    .await;
                let reply = joiner.reply_or_error("j").await;
                if reply["type"] == "error" {
                    refused_joins.push(nick);
                } else {
                    joiner.send(json!({"type": "leave", "ref": "l"})).await;
                    joiner.reply_or_error("l").await;
                }
            }
        };
        let fault = async {
            tokio::time::sleep(freeze_after).await;
            db.freeze();
            let frozen_at = Instant::now();
            // /health while frozen: within 3 s, degraded.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (status, body, waited) = health(&base).await;
            assert_eq!(status, 503, "health while MySQL is frozen: {body}");
            assert_eq!(body["status"], "degraded", "{body}");
            assert!(waited < Duration::from_secs(3), "/health took {waited:?}");
            health_waits.push(waited);
            tokio::time::sleep(FREEZE.saturating_sub(frozen_at.elapsed())).await;
            db.thaw();
            thawed_at.set(Some(Instant::now()));
        };
        within(
            Duration::from_secs(60),
            "a round of chatting through a freeze",
            async { futures_util::join!(chatting, joining, fault) },
        )
        .await;
        let thawed = thawed_at.get().expect("thawed");
        // Recovery: the first chat stored (and answered so) after SIGCONT.
        let recovered = members
            .iter()
            .flat_map(|m| &m.sent)
            .filter(|a| a.stored_as().is_some())
            .filter_map(|a| a.last().map(|r| r.at))
            .filter(|answered| *answered >= thawed)
            .min();
        if let Some(at) = recovered {
            recoveries.push(at.duration_since(thawed));
        }
    }
    // One more chat each once all is well, then read what is left.
    eventually(Duration::from_secs(5), "health ok after SIGCONT", || {
        let base = base.clone();
        async move { health(&base).await.0 == 200 }
    })
    .await;
    for m in members.iter_mut() {
        let name = m.name.clone();
        within(
            Duration::from_secs(10),
            "a chat after the outage",
            m.chat(format!("{name} after")),
        )
        .await;
        let last = m.sent.last().expect("an answer");
        assert!(
            last.stored_as().is_some(),
            "chat after the outage: {last:?}"
        );
    }
    for m in members.iter_mut() {
        // Every `pending` has had its final answer by now (MySQL answered
        // the chats after it); wait a little in case, then read the rest.
        m.await_finals(Duration::from_secs(10)).await;
        m.drain(Duration::from_millis(700)).await;
    }

    // Every chat answered in time (first answer), every answer true, even
    // after waiting longer.
    let doubtful = server
        .lines()
        .iter()
        .filter(|l| l.contains("got no answer"))
        .count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for m in members.iter_mut() {
        m.drain(Duration::from_millis(100)).await;
    }
    let all: Vec<&Sent> = members.iter().flat_map(|m| &m.sent).collect();
    let slowest = all
        .iter()
        .map(|a| a.first_waited())
        .max()
        .unwrap_or_default();
    let in_store = stored(&pool, room).await;
    let told_pending = check_answers(&all, &in_store);
    // Delivered to every member exactly once, in order: each member got
    // every stored message (all were sent after everyone joined).
    let ids: Vec<u64> = in_store.keys().copied().collect();
    for m in &members {
        assert_eq!(
            m.received, ids,
            "{} did not receive the stored messages exactly once in order",
            m.name
        );
    }
    // No member row for a join answered with an error.
    let leftover = eventually(Duration::from_secs(5), "no rows for refused joins", || {
        let pool = pool.clone();
        let refused = refused_joins.clone();
        async move {
            let mut conn = pool.get_conn().await.map_err(|e| e.to_string())?;
            let names: Vec<String> = conn
                .query("SELECT nickname FROM chatMember")
                .await
                .map_err(|e| e.to_string())?;
            let ghosts: Vec<&String> = names.iter().filter(|n| refused.contains(n)).collect();
            if ghosts.is_empty() {
                Ok(())
            } else {
                Err(format!("member rows of refused joins: {ghosts:?}"))
            }
        }
    })
    .await;

    let stored_n = all.iter().filter(|a| a.stored_as().is_some()).count();
    eprintln!(
        "mysql outage: {} chats ({} stored, {} refused), slowest first answer {:?}, \
         {} unanswered COMMITs, {} chats told pending; {} joins refused (no rows left, \
         checked in {:?}); /health while frozen {:?}; first stored chat after SIGCONT {:?}",
        all.len(),
        stored_n,
        all.len() - stored_n,
        slowest,
        doubtful,
        told_pending,
        refused_joins.len(),
        leftover,
        health_waits,
        recoveries,
    );
    assert!(stored_n > 0 && stored_n < all.len(), "both outcomes occur");
    for r in &recoveries {
        assert!(
            *r < Duration::from_secs(5),
            "chat resumed {r:?} after SIGCONT"
        );
    }
    drop(joiner);
    drop(holder);
    let _ = pool.disconnect().await;
    server.kill();
}

/// MySQL frozen exactly while a chat's `COMMIT` is on its way (the proxy
/// freezes the server just before it forwards the `COMMIT`), and kept
/// frozen well past `STORE_TIMEOUT_MS`: the chat's author is told
/// `pending` in time, and gets exactly one final answer after SIGCONT;
/// chats sent to the same room meanwhile, by the other member and by the
/// author after its `pending`, are answered in time too (refused: they were
/// never stored). Every answer is true and every stored chat reaches both
/// members once, in order.
#[actix_rt::test]
async fn a_commit_frozen_in_flight_is_told_pending_in_time_and_then_the_truth() {
    use crate::mariadb::CommitTrap;
    const LONG_FREEZE: Duration = Duration::from_millis(4000);

    let mut db = PrivateMariaDb::start().await;
    let trap = CommitTrap::start(db.port()).await;
    let timeout_ms = STORE_TIMEOUT.as_millis().to_string();
    let url = trap.url("chat");
    let mut server = Server::start(&[
        ("MYSQL_URL", url.as_str()),
        ("STORE_TIMEOUT_MS", timeout_ms.as_str()),
        ("WS_RATE_PER_SEC", "100000"),
        ("WS_RATE_BURST", "100000"),
    ]);
    server.wait_healthy().await;
    let pool = mysql_async::Pool::new(db.url("chat").as_str());

    let mut ann = WsClient::connect(server.port).await;
    let room = ann.create("frozen commit", "ann").await["room"]["id"]
        .as_u64()
        .expect("room id");
    let mut bob = WsClient::connect(server.port).await;
    bob.join(room, "bob").await;
    let mut ann = Member::new("ann".into(), ann);
    let mut bob = Member::new("bob".into(), bob);
    // One chat each before the fault, stored as usual.
    ann.chat("ann before".into()).await;
    bob.chat("bob before".into()).await;

    // The next COMMIT freezes MySQL: ann's chat. MySQL is thawed
    // LONG_FREEZE later, whatever the clients got meanwhile.
    trap.freeze_on_commit(db.pid());
    let during = async {
        let first = ann.chat("ann frozen".into()).await.replies[0].clone();
        // Sent while the frozen batch is unresolved.
        ann.chat("ann after pending".into()).await;
        first
    };
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        bob.chat("bob meanwhile".into()).await.replies[0].clone()
    };
    let fault = async {
        eventually(Duration::from_secs(5), "the trap freezes MySQL", || {
            let n = trap.sprung();
            async move {
                if n == 1 {
                    Ok(())
                } else {
                    Err(format!("sprung {n} times"))
                }
            }
        })
        .await;
        tokio::time::sleep(LONG_FREEZE).await;
        db.thaw();
    };
    let ((ann_first, bob_first), ()) = within(
        Duration::from_secs(20),
        "chats into a room whose COMMIT is frozen",
        async { futures_util::join!(async { futures_util::join!(during, meanwhile) }, fault) },
    )
    .await;
    assert_eq!(trap.sprung(), 1, "the trap must have frozen one COMMIT");
    // Checked in full below; these say at once what went wrong.
    assert_eq!(ann_first.kind, "pending", "{:?}", ann.sent[1]);
    assert_eq!(bob_first.kind, "error", "{:?}", bob.sent[1]);
    assert_eq!(bob_first.code, "unavailable", "{bob_first:?}");
    for sent in [&ann.sent[1], &bob.sent[1], &ann.sent[2]] {
        assert!(
            sent.first_waited() <= ANSWER_LIMIT,
            "{}: first answer after {:?}, limit {ANSWER_LIMIT:?}",
            sent.content,
            sent.first_waited()
        );
    }

    // The frozen chat's final answer, and normal service again.
    ann.await_finals(Duration::from_secs(15)).await;
    assert!(
        !ann.sent[1].unresolved(),
        "no final answer within 15 s of SIGCONT: {:?}",
        ann.sent[1]
    );
    let after = within(
        Duration::from_secs(10),
        "a chat after SIGCONT",
        bob.chat("bob after".into()),
    )
    .await;
    assert!(after.stored_as().is_some(), "{after:?}");
    ann.drain(Duration::from_millis(700)).await;
    bob.drain(Duration::from_millis(700)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ann.drain(Duration::from_millis(100)).await;
    bob.drain(Duration::from_millis(100)).await;

    let in_store = stored(&pool, room).await;
    let all: Vec<&Sent> = ann.sent.iter().chain(&bob.sent).collect();
    let told_pending = check_answers(&all, &in_store);
    assert_eq!(told_pending, 1, "only the frozen chat is pending: {all:#?}");
    let ids: Vec<u64> = in_store.keys().copied().collect();
    for m in [&ann, &bob] {
        assert_eq!(
            m.received, ids,
            "{} did not receive the stored messages exactly once in order",
            m.name
        );
    }
    let frozen = &ann.sent[1];
    eprintln!(
        "COMMIT frozen in flight (STORE_TIMEOUT_MS={}): pending after {:?}, final {} after \
         {:?} (MySQL frozen for {LONG_FREEZE:?}); the chat sent meanwhile refused after {:?}, \
         the one after pending answered {} after {:?}",
        STORE_TIMEOUT.as_millis(),
        frozen.first_waited(),
        frozen.last().map_or("none", |r| r.kind.as_str()),
        frozen
            .last()
            .map(|r| r.at.duration_since(frozen.sent_at))
            .unwrap_or_default(),
        bob.sent[1].first_waited(),
        ann.sent[2].replies[0].kind,
        ann.sent[2].first_waited(),
    );
    let _ = pool.disconnect().await;
    server.kill();
}

#[actix_rt::test]
async fn the_empty_room_sweep_works_off_a_large_backlog() {
    use chat_server::store::{MySqlStore, Store};
    const BACKLOG: u64 = 20_000;
    let db = PrivateMariaDb::start().await;
    let url = db.url("chat");
    // Short, so that one transaction for the whole backlog cannot make it
    // (it takes about 200 ms here); a chunk of 500 rooms takes about 15.
    let limit = Duration::from_millis(100);
    // The schema first, with time to spare.
    MySqlStore::connect(&url, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
        .disconnect()
        .await;
    let mut store = None;
    for _ in 0..20 {
        if let Ok(s) = MySqlStore::connect(&url, limit).await {
            store = Some(s);
            break;
        }
    }
    let store = store.expect("connect with a 100 ms limit");
    let pool = mysql_async::Pool::new(url.as_str());
    let mut conn = pool.get_conn().await.expect("connect");
    conn.query_drop("SET SESSION max_recursive_iterations = 100000")
        .await
        .expect("allow a long recursive insert");
    conn.query_drop(format!(
        "INSERT INTO chatRoom (title, join_member_count, last_msg_id, created) \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {BACKLOG}) \
         SELECT CONCAT('empty ', i), 0, 0, '2020-01-01 00:00:00' FROM n"
    ))
    .await
    .expect("insert the backlog");
    assert_eq!(count(&mut conn).await, BACKLOG);

    // Sweeps as the room manager runs them, until none is left. A sweep may
    // fail now and then on a busy machine (the next one retries), but they
    // must get through the backlog.
    let started = Instant::now();
    let (mut deleted, mut sweeps, mut failed) = (0, 0, 0);
    while deleted < BACKLOG as usize {
        sweeps += 1;
        match within(
            Duration::from_secs(5),
            "one sweep",
            store.delete_unjoined_rooms(chrono::Utc::now()),
        )
        .await
        {
            Ok(gone) => deleted += gone.len(),
            Err(_) => failed += 1,
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{deleted} of {BACKLOG} rooms deleted in {sweeps} sweeps ({failed} failed)"
        );
    }
    assert_eq!(count(&mut conn).await, 0);
    eprintln!(
        "sweep: {BACKLOG} empty rooms deleted in {:?} by {sweeps} sweeps ({failed} failed)",
        started.elapsed()
    );
    drop(conn);
    let _ = pool.disconnect().await;
    store.disconnect().await;
}

async fn count(conn: &mut mysql_async::Conn) -> u64 {
    conn.query_first::<u64, _>("SELECT COUNT(*) FROM chatRoom")
        .await
        .expect("count")
        .unwrap_or(0)
}

/// A `COMMIT` whose answer never comes, for real, through a proxy that
/// blackholes the connection at that moment: the store finds out what
/// happened before it answers. A chat is `Ok` exactly when stored; a join
/// answered with an error leaves no member row.
#[actix_rt::test]
async fn an_unanswered_commit_is_resolved_before_the_answer() {
    use crate::mariadb::{CommitTrap, Trap};
    use chat_server::domain::{Nickname, SocketId};
    use chat_server::store::{MySqlStore, NewMember, NewMessage, Store};

    let db = PrivateMariaDb::start().await;
    let trap = CommitTrap::start(db.port()).await;
    let limit = Duration::from_millis(700);
    let store = MySqlStore::connect(&trap.url("chat"), limit)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let direct = mysql_async::Pool::new(db.url("chat").as_str());
    let limits = chat_server::domain::TextLimits {
        title: 50,
        nickname: 50,
        content: 1000,
    };
    let title = chat_server::domain::RoomTitle::parse("trap", &limits).expect("title");
    let room = store
        .create_room(&title, chrono::Utc::now())
        .await
        .expect("create");
    let member = |n: &str| NewMember {
        nickname: Nickname::parse(n, &limits).expect("nickname"),
        socket_id: SocketId::from(format!("test:{n}")),
        instance_id: "test".into(),
        joined_at: chrono::Utc::now(),
    };
    store
        .add_member(room.id, &member("ann"))
        .await
        .expect("join");
    let chat = |text: &str| {
        vec![NewMessage {
            nickname: "ann".into(),
            content: text.into(),
            sent_at: chrono::Utc::now(),
        }]
    };

    // The COMMIT reaches MySQL, its answer is lost: stored, so `Ok`.
    trap.arm(Trap::AnswerLost);
    let started = Instant::now();
    let got = within(
        Duration::from_secs(10),
        "an append whose COMMIT answer is lost",
        store.append_messages(room.id, &chat("answer lost")),
    )
    .await;
    assert_eq!(trap.sprung(), 1, "the trap must have caught the COMMIT");
    let stored_msgs = got.unwrap_or_else(|e| panic!("committed, yet answered {e}"));
    assert_eq!(stored_msgs[0].id.get(), 1);
    let answer_lost_after = started.elapsed();

    // The COMMIT never reaches MySQL: not stored, so an error; and the
    // transaction it left open is ended (its connection killed), so the
    // room goes on with the same ids.
    trap.arm(Trap::CommitLost);
    let started = Instant::now();
    let got = within(
        Duration::from_secs(10),
        "an append whose COMMIT is lost",
        store.append_messages(room.id, &chat("commit lost")),
    )
    .await;
    assert_eq!(trap.sprung(), 2);
    assert!(got.is_err(), "not committed, yet answered {got:?}");
    let commit_lost_after = started.elapsed();
    let next = within(
        Duration::from_secs(10),
        "the next append",
        store.append_messages(room.id, &chat("next")),
    )
    .await
    .expect("the next append");
    assert_eq!(next[0].id.get(), 2, "id 2 was never taken");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let in_store = stored(&direct, room.id.get()).await;
    assert_eq!(
        in_store.values().map(String::as_str).collect::<Vec<_>>(),
        ["answer lost", "next"]
    );

    // Joins: answered `unavailable`, and no row stays behind, whether the
    // COMMIT went through (the row is removed) or not.
    for (mode, name) in [(Trap::AnswerLost, "bob"), (Trap::CommitLost, "cy")] {
        trap.arm(mode);
        let got = within(
            Duration::from_secs(10),
            "a join whose COMMIT has no answer",
            store.add_member(room.id, &member(name)),
        )
        .await;
        assert!(
            got.is_err(),
            "{mode:?}: a doubtful join must not be answered joined"
        );
        let pool = direct.clone();
        eventually(
            Duration::from_secs(5),
            "no member row for the refused join",
            || {
                let pool = pool.clone();
                async move {
                    let mut conn = pool.get_conn().await.map_err(|e| e.to_string())?;
                    let rows: Vec<(String, u32)> = conn
                        .query(
                            "SELECT m.nickname, r.join_member_count FROM chatMember m \
                         JOIN chatRoom r ON r.id = m.room_id ORDER BY m.id",
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    if rows == [("ann".to_owned(), 1)] {
                        Ok(())
                    } else {
                        Err(format!("{rows:?}"))
                    }
                }
            },
        )
        .await;
    }
    eprintln!(
        "unanswered COMMIT (STORE_TIMEOUT_MS=700): stored chat answered after {answer_lost_after:?}, \
         unstored chat after {commit_lost_after:?}"
    );
    let _ = direct.disconnect().await;
}
