//! One process cut off from Redis while the others are not, through a real
//! TCP fault proxy (`tests/common/fault_proxy.rs`) between node 1 and
//! Redis; and bus payloads that do not decode. See docs/RELIABILITY.md,
//! "One process cut off from Redis", "Cut off longer than the liveness
//! TTL" and "Bus payloads from another version, or malformed".

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fault_proxy::{Fault, FaultProxy};
use crate::helpers::{Incoming, WsClient};
use crate::procs::{heavy_test_lock, redis_url, Cluster};
use crate::wait::within;

/// Documented bound: member lists and counts agree on every process this
/// long after the network heals (REDIS_TIMEOUT 3 s + the 5 s backoff cap to be
/// back on the bus, then one store read per room; see RELIABILITY.md).
const CONVERGE: Duration = Duration::from_secs(10);
/// Members of a process cut off longer than the TTL are closed with 1012
/// within TTL + 2 × `REAP_INTERVAL_MS` of the cut (4 s with the test's
/// timings: TTL 3 s, refresh and reap every 500 ms), while it is still cut
/// off; this allows twice that for a loaded machine.
const DECLARED_DEAD_CLOSE: Duration = Duration::from_secs(8);
const FRAME: Duration = Duration::from_secs(10);

/// `host:port` of a `redis://[user:pass@]host:port[/db]` URL.
fn redis_addr(url: &str) -> String {
    let rest = url.trim_start_matches("redis://");
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// A member that records every message id it sees (history, then live).
struct Member {
    name: &'static str,
    node: usize,
    ws: WsClient,
    seen: Vec<u64>,
    refs: usize,
    /// Set once the server closed the socket: the close code.
    closed: Option<Option<u16>>,
}

impl Member {
    async fn enter(cluster: &Cluster, node: usize, room: u64, name: &'static str) -> Member {
        let mut ws = cluster.ws(node).await;
        let joined = ws.join(room, name).await;
        Self::from_joined(ws, node, name, &joined)
    }

    async fn create(
        cluster: &Cluster,
        node: usize,
        title: &str,
        name: &'static str,
    ) -> (Member, u64) {
        let mut ws = cluster.ws(node).await;
        let joined = ws.create(title, name).await;
        let room = joined["room"]["id"].as_u64().expect("room id");
        (Self::from_joined(ws, node, name, &joined), room)
    }

    fn from_joined(ws: WsClient, node: usize, name: &'static str, joined: &Value) -> Member {
        let seen = joined["history"]
            .as_array()
            .map(|h| h.iter().filter_map(|m| m["id"].as_u64()).collect())
            .unwrap_or_default();
        Member {
            name,
            node,
            ws,
            seen,
            refs: 0,
            closed: None,
        }
    }

    /// One incoming item within `wait`, recording messages and closes.
    async fn take(&mut self, wait: Duration) -> Option<Value> {
        if self.closed.is_some() {
            return None;
        }
        match self.ws.next_within(wait).await? {
            Incoming::Closed(code) => {
                self.closed = Some(code);
                None
            }
            Incoming::Json(v) => {
                if v["type"] == "message" {
                    if let Some(id) = v["message"]["id"].as_u64() {
                        self.seen.push(id);
                    }
                }
                Some(v)
            }
        }
    }

    /// Sends a chat and reads until its echo; returns the message id.
    async fn chat(&mut self, content: &str) -> u64 {
        self.refs += 1;
        let reference = format!("{}-{}", self.name, self.refs);
        self.ws
            .send(json!({"type":"chat","content":content,"ref":reference}))
            .await;
        loop {
            let v = self.take(FRAME).await.unwrap_or_else(|| {
                panic!(
                    "{} (node {}): no echo of {content:?} (closed: {:?})",
                    self.name, self.node, self.closed
                )
            });
            if v["ref"] == reference.as_str() {
                assert_eq!(v["type"], "message", "{}: {v}", self.name);
                return v["message"]["id"].as_u64().expect("message id");
            }
        }
    }

    /// Reads until message `last` arrived, within `limit`.
    async fn read_until(&mut self, last: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.seen.contains(&last) {
            let wait = deadline.saturating_duration_since(Instant::now());
            if self.take(wait).await.is_none() {
                panic!(
                    "{} (node {}): message {last} not received; saw {:?}, closed {:?}",
                    self.name, self.node, self.seen, self.closed
                );
            }
        }
    }

    /// Reads until the server closes the socket, within `limit`.
    async fn wait_closed(&mut self, limit: Duration) -> Option<u16> {
        let deadline = Instant::now() + limit;
        while self.closed.is_none() {
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                panic!(
                    "{} (node {}): not closed within {limit:?}",
                    self.name, self.node
                );
            }
            self.take(wait).await;
        }
        self.closed.flatten()
    }

    /// Every message exactly once, in id order, with no gap, through `last`.
    fn assert_complete(&self, last: u64) {
        let first = self.seen.first().copied().unwrap_or(1);
        let expected: Vec<u64> = (first..=last).collect();
        assert_eq!(
            self.seen, expected,
            "{} (node {}): messages not exactly once in order",
            self.name, self.node
        );
    }
}

/// Largest stored message id of `room`, as node 0 serves it.
async fn last_stored(cluster: &Cluster, room: u64) -> u64 {
    let stored = cluster.stored_messages(0, room).await;
    let ids: Vec<u64> = stored.iter().filter_map(|m| m["id"].as_u64()).collect();
    let expected: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!(ids, expected, "stored ids of room {room}");
    ids.last().copied().unwrap_or(0)
}

#[actix_rt::test]
async fn a_process_cut_off_from_redis_for_a_few_seconds_agrees_with_the_others_after_the_heal() {
    cut_off_and_heal(Fault::Blackhole).await;
}

/// The same with the connections closed and refused rather than silent: the
/// cut-off process notices at once and retries with backoff.
#[actix_rt::test]
async fn a_process_whose_redis_connections_are_cut_agrees_with_the_others_after_the_heal() {
    cut_off_and_heal(Fault::Cut).await;
}

/// Node 1 loses Redis for 5 s through `fault` while members on both
/// processes join, leave and chat; after the heal both agree with the store
/// within `CONVERGE` and every member has every message once, in order.
async fn cut_off_and_heal(fault: Fault) {
    let _heavy = heavy_test_lock().await;
    within(Duration::from_secs(120), "the test", async {
        let redis = redis_url();
        let proxy = FaultProxy::start(&redis_addr(&redis));
        let through_proxy = format!("redis://{}", proxy.addr());
        // A partition shorter than the liveness TTL: nobody is reaped.
        let ttl = [("LIVENESS_TTL_SECS", "10")];
        let cluster = Cluster::start_logged_each(&[redis, through_proxy], &ttl).await;

        let (mut ann, room) = Member::create(&cluster, 0, "partition", "ann").await;
        let mut bob = Member::enter(&cluster, 1, room, "bob").await;
        let cat = Member::enter(&cluster, 1, room, "cat").await;
        let (mut uma, other) = Member::create(&cluster, 0, "other", "uma").await;
        let ulla = Member::enter(&cluster, 1, other, "ulla").await;
        cluster
            .wait_members_agree(&[0, 1], room, &["ann", "bob", "cat"], CONVERGE)
            .await;
        cluster
            .wait_members_agree(&[0, 1], other, &["uma", "ulla"], CONVERGE)
            .await;
        ann.chat("before 1").await;
        bob.chat("before 2").await;

        // Node 1 loses Redis: nothing it sends arrives, nothing comes back.
        proxy.set(fault);
        let cut = Instant::now();
        for i in 0..3 {
            bob.chat(&format!("bob during {i}")).await;
            ann.chat(&format!("ann during {i}")).await;
        }
        // Joins and leaves on both sides that the bus cannot carry.
        let mut dan = Member::enter(&cluster, 1, room, "dan").await;
        cat.ws.close().await;
        ulla.ws.close().await; // node 1 keeps no member of `other`
        let mut eve = Member::enter(&cluster, 0, room, "eve").await;
        dan.chat("dan during").await;
        eve.chat("eve during").await;
        // Hold the partition long enough for node 1 to notice (a command
        // times out after 3 s); the others notice nothing.
        tokio::time::sleep(Duration::from_secs(5).saturating_sub(cut.elapsed())).await;
        let (status, health) = cluster.get(1, "/health").await;
        eprintln!("node 1 during the cut: {status} {health}");

        proxy.set(Fault::Pass);
        let healed = Instant::now();
        let took = cluster
            .wait_members_agree(&[0, 1], room, &["ann", "bob", "dan", "eve"], CONVERGE)
            .await;
        cluster
            .wait_members_agree(&[0, 1], other, &["uma"], CONVERGE)
            .await;
        eprintln!(
            "{fault:?} of {:?}: member lists agree {:?} after the heal ({took:?} for the room)",
            healed - cut,
            healed.elapsed()
        );
        cluster.wait_healthy(1, CONVERGE).await;

        // Everyone speaks once more; each member ends with every message
        // exactly once, in order.
        let mut members = [ann, bob, dan, eve];
        for m in members.iter_mut() {
            m.chat(&format!("{} after", m.name)).await;
        }
        let last = last_stored(&cluster, room).await;
        for m in members.iter_mut() {
            m.read_until(last, CONVERGE).await;
            m.assert_complete(last);
        }
        uma.chat("uma after").await;
    })
    .await;
}

#[actix_rt::test]
async fn a_process_cut_off_longer_than_the_liveness_ttl_closes_the_members_it_lost_with_1012() {
    let _heavy = heavy_test_lock().await;
    within(Duration::from_secs(120), "the test", async {
        let redis = redis_url();
        let proxy = FaultProxy::start(&redis_addr(&redis));
        let through_proxy = format!("redis://{}", proxy.addr());
        let cluster = Cluster::start_logged_each(&[redis, through_proxy], &[]).await;

        let (mut ann, room) = Member::create(&cluster, 0, "shared", "ann").await;
        let mut bob = Member::enter(&cluster, 1, room, "bob").await;
        // A room whose only member is on node 1: the survivor's reaper
        // deletes it, with its history, while vic is still connected.
        let (mut vic, lonely) = Member::create(&cluster, 1, "lonely", "vic").await;
        vic.chat("vic alone").await;
        cluster
            .wait_members_agree(&[0, 1], room, &["ann", "bob"], CONVERGE)
            .await;
        ann.chat("hello").await;
        bob.read_until(1, FRAME).await;

        proxy.set(Fault::Blackhole);
        let cut = Instant::now();
        // Still cut off: node 1 must not go on serving members the store no
        // longer has. They are closed with 1012 (service restart).
        let bob_code = bob.wait_closed(DECLARED_DEAD_CLOSE).await;
        let vic_code = vic.wait_closed(DECLARED_DEAD_CLOSE).await;
        let closed_after = cut.elapsed();
        assert_eq!(bob_code, Some(1012), "bob's close code");
        assert_eq!(vic_code, Some(1012), "vic's close code");
        eprintln!("cut off: members closed with 1012 after {closed_after:?}");

        // Both processes' views match the store, even while still cut off.
        cluster
            .wait_members_agree(&[0, 1], room, &["ann"], CONVERGE)
            .await;
        cluster.wait_room_gone(&[0, 1], lonely, CONVERGE).await;

        proxy.set(Fault::Pass);
        let healed = Instant::now();
        // The clients rejoin cleanly: bob finds his room, vic finds his gone.
        let mut bob = Member::enter(&cluster, 1, room, "bob").await;
        let mut ws = cluster.ws(1).await;
        ws.expect_error(
            json!({"type":"join","roomId":lonely,"nickname":"vic"}),
            "room_not_found",
        )
        .await;
        cluster
            .wait_members_agree(&[0, 1], room, &["ann", "bob"], CONVERGE)
            .await;
        eprintln!(
            "after the heal: member lists agree after {:?}",
            healed.elapsed()
        );
        cluster.wait_healthy(1, CONVERGE).await;
        let from_ann = ann.chat("after, from ann").await;
        bob.read_until(from_ann, CONVERGE).await;
        let from_bob = bob.chat("after, from bob").await;
        ann.read_until(from_bob, CONVERGE).await;
        assert!(
            cluster.count_in_logs("presumed declared dead") >= 1,
            "node 1 did not log that it presumed itself dead"
        );
    })
    .await;
}

/// A plain Redis client that publishes raw bytes.
struct Publisher {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Publisher {
    fn connect(url: &str) -> Publisher {
        let stream = TcpStream::connect(redis_addr(url)).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Publisher { reader, stream }
    }

    fn publish(&mut self, channel: &str, payload: &[u8]) {
        let mut cmd = Vec::new();
        cmd.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n");
        cmd.extend_from_slice(format!("${}\r\n{channel}\r\n", channel.len()).as_bytes());
        cmd.extend_from_slice(format!("${}\r\n", payload.len()).as_bytes());
        cmd.extend_from_slice(payload);
        cmd.extend_from_slice(b"\r\n");
        self.stream.write_all(&cmd).expect("publish");
        let mut reply = String::new();
        self.reader.read_line(&mut reply).expect("publish reply");
        assert!(reply.starts_with(':'), "PUBLISH answered {reply:?}");
    }
}

#[actix_rt::test]
async fn malformed_and_unknown_bus_payloads_are_counted_and_stall_nothing() {
    let _heavy = heavy_test_lock().await;
    within(Duration::from_secs(90), "the test", async {
        let cluster = Cluster::start_logged(2, &redis_url(), &[]).await;
        let (mut ann, room) = Member::create(&cluster, 0, "noisy", "ann").await;
        let mut bob = Member::enter(&cluster, 1, room, "bob").await;
        cluster
            .wait_members_agree(&[0, 1], room, &["ann", "bob"], CONVERGE)
            .await;
        let channel = format!("{}:room:{room}", cluster.prefix);
        let mut publisher = Publisher::connect(&cluster.redis_url);
        let bad: Vec<Vec<u8>> = vec![
            b"\xff\xfe not json".to_vec(),
            b"{".to_vec(),
            b"null".to_vec(),
            json!({"origin":"future","room":room,"event":{"kind":"typing","who":"zed"}})
                .to_string()
                .into_bytes(),
            json!({"origin":"future","room":room,"event":{"kind":"messages","messages":"no"}})
                .to_string()
                .into_bytes(),
            json!({"origin":"future","room":room,"event":{"kind":"left"}})
                .to_string()
                .into_bytes(),
        ];
        let hint = json!({"origin":"future","room":room,"event":{"kind":"resync"}}).to_string();
        let rounds = 20;
        for i in 0..rounds {
            for payload in &bad {
                publisher.publish(&channel, payload);
            }
            publisher.publish(&channel, hint.as_bytes());
            ann.chat(&format!("ann {i}")).await;
            bob.chat(&format!("bob {i}")).await;
        }
        let last = last_stored(&cluster, room).await;
        assert_eq!(last, 2 * rounds as u64);
        for m in [&mut ann, &mut bob] {
            m.read_until(last, CONVERGE).await;
            m.assert_complete(last);
        }
        let sent = (rounds * bad.len()) as u64;
        for i in 0..2 {
            let (status, health) = cluster.get(i, "/health").await;
            assert_eq!(status, 200, "node {i}: {health}");
            let rejected = health["busRejected"].as_u64();
            assert_eq!(rejected, Some(sent), "node {i}: {health}");
        }
        // Logged, but not once per payload.
        let lines = cluster.count_in_logs("undecodable bus payload");
        assert!(
            (2..=6).contains(&lines),
            "{lines} log lines for {sent} payloads"
        );
        cluster
            .wait_members_agree(&[0, 1], room, &["ann", "bob"], CONVERGE)
            .await;
        cluster.assert_no_errors();
    })
    .await;
}

/// A room a process starts while its connection to Redis is still being
/// made (at start-up, or reconnecting) must be subscribed once the
/// connection is up: the connection subscribes the rooms present when it
/// began, and a room left out would never hear the other processes. Node
/// 1's Redis is slowed down (150 ms per packet each way) so that its first
/// connection takes a second or two; bob joins on node 1 meanwhile.
#[actix_rt::test]
async fn a_room_started_while_the_bus_connects_hears_the_other_processes() {
    let _heavy = heavy_test_lock().await;
    within(Duration::from_secs(90), "the test", async {
        let redis = redis_url();
        let proxy = FaultProxy::start(&redis_addr(&redis));
        proxy.set(Fault::Delay(Duration::from_millis(150)));
        let through_proxy = format!("redis://{}", proxy.addr());
        let cluster = Cluster::start_answering_each(&[redis, through_proxy], &[]).await;
        cluster.wait_healthy(0, FRAME).await;

        let (mut ann, room) = Member::create(&cluster, 0, "late", "ann").await;
        let bob = Member::enter(&cluster, 1, room, "bob").await;
        // The precondition of the test: bob's room started before node 1's
        // first connection to Redis was made.
        let (status, health) = cluster.get(1, "/health").await;
        assert_eq!(
            status, 503,
            "node 1 was already on the bus when bob joined; the test did not \
             exercise the window: {health}"
        );
        proxy.set(Fault::Pass);
        cluster.wait_healthy(1, Duration::from_secs(20)).await;

        let mut bob = bob;
        let id = ann.chat("are you there?").await;
        let deadline = Instant::now() + FRAME;
        while !bob.seen.contains(&id) && Instant::now() < deadline {
            bob.take(deadline.saturating_duration_since(Instant::now()))
                .await;
        }
        assert!(
            bob.seen.contains(&id),
            "bob on node 1 never got ann's message {id} from node 0"
        );
    })
    .await;
}
