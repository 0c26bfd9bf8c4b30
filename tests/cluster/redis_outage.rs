//! Guarantees 2 and 3 through a Redis outage: the cluster runs on a Redis of
//! its own, which this test kills and restarts. While it is down, `/health`
//! says `degraded` (failing `redis`), every process keeps serving its own
//! members in order, and joins still work; once it is back, every member
//! that stayed connected has every stored message exactly once, in id order
//! with no gap, and every process lists the members that joined meanwhile
//! (and no longer lists those who left meanwhile).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{Incoming, WsClient};
use crate::procs::{heavy_test_lock, Cluster};
use crate::redis_procs::{Auth, RedisProc};
use crate::wait::{eventually, within};

const ALL: [usize; 3] = [0, 1, 2];
/// How long the processes may take to notice Redis is gone.
const NOTICE: Duration = Duration::from_secs(5);
/// How long, from Redis's return, everything may take to be whole again.
const RECOVER: Duration = Duration::from_secs(15);
const FRAME: Duration = Duration::from_secs(10);

/// A member that records every message it receives.
struct Member {
    name: &'static str,
    node: usize,
    ws: WsClient,
    /// Messages received live, in arrival order.
    live: Vec<Value>,
    /// The `joined` frame's history.
    history: Vec<Value>,
    /// `+name` / `-name` for each `memberJoined` / `memberLeft`.
    events: Vec<String>,
    refs: usize,
}

impl Member {
    async fn join(cluster: &Cluster, node: usize, room: u64, name: &'static str) -> Member {
        let mut ws = cluster.ws(node).await;
        let joined = ws.join(room, name).await;
        let history = joined["history"].as_array().cloned().unwrap_or_default();
        Member {
            name,
            node,
            ws,
            live: Vec::new(),
            history,
            events: Vec::new(),
            refs: 0,
        }
    }

    /// Takes one incoming item within `wait`: records messages, skips
    /// member events, panics on anything else (an error, a closed socket).
    /// False when nothing came.
    async fn take(&mut self, wait: Duration) -> Option<Value> {
        match self.ws.next_within(wait).await {
            None => None,
            Some(Incoming::Closed(code)) => {
                panic!(
                    "{} (node {}) was disconnected ({code:?})",
                    self.name, self.node
                )
            }
            Some(Incoming::Json(v)) => {
                match v["type"].as_str() {
                    Some("message") => self.live.push(v["message"].clone()),
                    Some("memberJoined") => self.events.push(format!(
                        "+{}",
                        v["member"]["nickname"].as_str().unwrap_or("?")
                    )),
                    Some("memberLeft") => self
                        .events
                        .push(format!("-{}", v["nickname"].as_str().unwrap_or("?"))),
                    _ => panic!("{}: unexpected frame {v}", self.name),
                }
                Some(v)
            }
        }
    }

    /// Sends a chat and reads (recording) until its echo; returns it.
    async fn chat(&mut self, content: &str) -> Value {
        self.refs += 1;
        let reference = format!("r{}", self.refs);
        self.ws
            .send(json!({"type":"chat","content":content,"ref":reference}))
            .await;
        loop {
            let v = self
                .take(FRAME)
                .await
                .unwrap_or_else(|| panic!("{}: no echo of {content:?}", self.name));
            if v["ref"] == reference.as_str() {
                return v["message"].clone();
            }
        }
    }

    /// Reads until `n` messages were received live, before `deadline`.
    async fn read_until(&mut self, n: usize, deadline: Instant) {
        while self.live.len() < n {
            let wait = deadline.saturating_duration_since(Instant::now());
            if self.take(wait).await.is_none() {
                panic!(
                    "{} (node {}): {} of {n} messages by the deadline; ids {:?}",
                    self.name,
                    self.node,
                    self.live.len(),
                    ids(&self.live)
                );
            }
        }
    }

    /// Reads whatever arrives until `quiet` passes without a frame.
    async fn drain(&mut self, quiet: Duration) {
        while self.take(quiet).await.is_some() {}
    }

    /// Contents of the received messages sent by `sender`.
    fn contents_from(&self, sender: &str) -> Vec<String> {
        self.live
            .iter()
            .filter(|m| m["nickname"] == sender)
            .map(|m| m["content"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

fn ids(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["id"].as_u64().unwrap_or(0))
        .collect()
}

/// Polls every node's `/health` until `healthy` matches; returns how long.
async fn wait_health(cluster: &Cluster, healthy: bool, limit: Duration) -> Duration {
    let what = format!(
        "/health {} on every node",
        if healthy { "ok" } else { "degraded (redis)" }
    );
    eventually(limit, &what, || async move {
        let mut states = Vec::new();
        for i in ALL {
            states.push(cluster.get(i, "/health").await);
        }
        let done = states.iter().all(|(status, body)| {
            let failing = body["failing"].as_array().cloned().unwrap_or_default();
            if healthy {
                *status == 200 && body["status"] == "ok"
            } else {
                *status == 503 && body["status"] == "degraded" && failing.contains(&json!("redis"))
            }
        });
        if done {
            Ok(())
        } else {
            Err(format!("{states:?}"))
        }
    })
    .await
}

#[actix_rt::test]
async fn members_keep_chatting_through_a_redis_outage_and_miss_nothing_after_it() {
    let _heavy = heavy_test_lock().await;
    within(Duration::from_secs(90), "the test", async {
        let mut redis = RedisProc::server(Auth::Open);
        let mut cluster = Cluster::start_logged(3, &redis.url(), &[]).await;

        let mut ann = cluster.ws(0).await;
        let room = ann.create("outage", "ann").await["room"]["id"]
            .as_u64()
            .expect("room id");
        let mut members = vec![Member {
            name: "ann",
            node: 0,
            ws: ann,
            live: Vec::new(),
            history: Vec::new(),
            events: Vec::new(),
            refs: 0,
        }];
        for (node, name) in [(0, "amy"), (1, "bob"), (2, "cat")] {
            members.push(Member::join(&cluster, node, room, name).await);
        }
        // One more on node 2, who will leave while Redis is down.
        let mut cid = cluster.ws(2).await;
        cid.join(room, "cid").await;
        cluster
            .wait_members_agree(&ALL, room, &["ann", "amy", "bob", "cat", "cid"], RECOVER)
            .await;
        for m in members.iter_mut() {
            m.chat(&format!("before {}", m.name)).await;
        }
        let deadline = Instant::now() + FRAME;
        for m in members.iter_mut() {
            m.read_until(4, deadline).await;
        }

        // Redis goes away.
        redis.kill();
        let noticed = wait_health(&cluster, false, NOTICE).await;
        eprintln!("redis outage: every node reported degraded after {noticed:?}");

        // Members keep chatting; one more joins on node 1.
        const ROUNDS: usize = 3;
        let mut dot = None;
        for round in 0..ROUNDS {
            for m in members.iter_mut() {
                m.chat(&format!("down {} {round}", m.name)).await;
            }
            if round == 0 {
                dot = Some(Member::join(&cluster, 1, room, "dot").await);
                let left = cid.leave().await;
                assert_eq!(left["type"], "left", "{left}");
            }
        }
        let mut dot = dot.expect("dot joined");
        assert_eq!(dot.history.last().map(|m| &m["roomId"]), Some(&json!(room)));
        for m in members.iter_mut() {
            m.drain(Duration::from_millis(500)).await;
        }
        dot.drain(Duration::from_millis(500)).await;
        // Each process served its own members: every message sent on a
        // node reached that node's members, in send order.
        for m in &members {
            for sender in members.iter().filter(|s| s.node == m.node) {
                let sent: Vec<String> = std::iter::once(format!("before {}", sender.name))
                    .chain((0..ROUNDS).map(|r| format!("down {} {r}", sender.name)))
                    .collect();
                assert_eq!(
                    m.contents_from(sender.name),
                    sent,
                    "{} did not get {}'s messages (same node) while Redis was down",
                    m.name,
                    sender.name
                );
            }
        }
        let bob_later: Vec<String> = (1..ROUNDS).map(|r| format!("down bob {r}")).collect();
        assert_eq!(dot.contents_from("bob"), bob_later, "dot, after joining");
        wait_health(&cluster, false, NOTICE).await;
        cluster.assert_running();

        // Redis returns, empty, on the same port.
        redis.spawn();
        let back = Instant::now();
        let healthy = wait_health(&cluster, true, RECOVER).await;
        eprintln!("redis outage: every node healthy {healthy:?} after Redis returned");

        // The member who joined during the outage is listed everywhere, the
        // one who left is listed nowhere.
        let everyone = ["ann", "amy", "bob", "cat", "dot"];
        cluster
            .wait_members_agree(
                &ALL,
                room,
                &everyone,
                RECOVER.saturating_sub(back.elapsed()),
            )
            .await;
        eprintln!(
            "redis outage: member lists agreed {:?} after Redis returned",
            back.elapsed()
        );

        let stored = cluster.stored_messages(0, room).await;
        assert_eq!(stored.len(), 4 + 4 * ROUNDS, "stored messages");
        assert_eq!(ids(&stored), (1..=stored.len() as u64).collect::<Vec<_>>());
        let deadline = back + RECOVER;
        for m in members.iter_mut() {
            m.read_until(stored.len(), deadline).await;
        }
        let first = dot.history.len();
        dot.read_until(stored.len() - first, deadline).await;
        let caught_up = back.elapsed();
        for m in members.iter_mut() {
            m.drain(Duration::from_millis(300)).await;
            assert!(
                m.live == stored,
                "{} (node {}) did not get every stored message exactly once in order: \
                 got ids {:?}, stored {:?}",
                m.name,
                m.node,
                ids(&m.live),
                ids(&stored)
            );
        }
        dot.drain(Duration::from_millis(300)).await;
        let dot_all: Vec<Value> = dot.history.iter().chain(&dot.live).cloned().collect();
        assert!(
            dot_all == stored,
            "dot (joined on node 1 during the outage): history {:?} then live {:?}, \
             stored {:?}",
            ids(&dot.history),
            ids(&dot.live),
            ids(&stored)
        );

        eprintln!("redis outage: members caught up {caught_up:?} after Redis returned");

        // Everybody heard once of the join and of the leave made during the
        // outage (late, for members on other nodes: from the resync).
        for m in members.iter().chain([&dot]) {
            for event in ["+dot", "-cid"] {
                let heard = m.events.iter().filter(|e| *e == event).count();
                let expected = usize::from(!(m.name == "dot" && event == "+dot"));
                assert_eq!(
                    heard, expected,
                    "{}: {event} heard {heard} times: {:?}",
                    m.name, m.events
                );
            }
        }

        // The bus carries live traffic again.
        members.push(dot);
        let said = members[4].chat("after the outage").await;
        for m in members.iter_mut() {
            let want = stored.len() + 1 - m.history.len();
            m.read_until(want, Instant::now() + FRAME).await;
            assert_eq!(m.live.last(), Some(&said), "{}", m.name);
        }
        cluster.assert_running();
        cluster.assert_no_errors();
        eprintln!(
            "redis outage: warnings logged (expected while Redis was down):\n{}",
            cluster.warnings().join("\n")
        );
    })
    .await;
}
