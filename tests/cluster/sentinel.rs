//! The bus through Redis Sentinel, and Redis with a password.
//!
//! Failover: a private master, one replica and three Sentinels
//! (`tests/common/redis_procs.rs`); two processes find the master through
//! `REDIS_SENTINELS`. Members on both chat; the master is SIGKILLed. Cross-
//! process chat resumes within 10 s of the kill, `/health` says degraded
//! while the bus is down and ok after, and each member that stayed
//! connected ends with every acknowledged message exactly once, in id
//! order, as the store has them.
//!
//! Silence: a subscription connection that stays open but passes nothing
//! is noticed by the watchdog's PING and replaced; what was said meanwhile
//! arrives.
//!
//! Password: the cluster runs on a private Redis with `requirepass`, then
//! with an ACL user, both through `REDIS_URL`; a wrong password is a
//! degraded `/health` and a log line naming the cause, never a crash.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{Incoming, WsClient};
use crate::procs::{heavy_test_lock, Cluster};
use crate::redis_procs::{Auth, RedisProc, SentinelGroup};
use crate::wait::{eventually, within};
use deadpool_redis::redis;

const FRAME: Duration = Duration::from_secs(10);
/// The bound of the issue: cross-process chat back within 10 s of the kill.
const RESUME: Duration = Duration::from_secs(10);

/// A member recording every message it receives.
struct Member {
    name: &'static str,
    ws: WsClient,
    live: Vec<Value>,
    refs: usize,
}

impl Member {
    /// Takes one frame within `wait`: records messages, skips member
    /// events, panics on anything else. `None` when nothing came.
    async fn take(&mut self, wait: Duration) -> Option<Value> {
        match self.ws.next_within(wait).await? {
            Incoming::Closed(code) => panic!("{} was disconnected ({code:?})", self.name),
            Incoming::Json(v) => {
                match v["type"].as_str() {
                    Some("message") => self.live.push(v["message"].clone()),
                    Some("memberJoined" | "memberLeft") => {}
                    _ => panic!("{}: unexpected frame {v}", self.name),
                }
                Some(v)
            }
        }
    }

    /// Sends a chat and reads until its echo; the stored message.
    async fn chat(&mut self, content: &str) -> Value {
        self.refs += 1;
        let reference = format!("r{}", self.refs);
        self.ws
            .send(json!({"type": "chat", "content": content, "ref": reference}))
            .await;
        loop {
            let v = self
                .take(FRAME)
                .await
                .unwrap_or_else(|| panic!("{}: no answer to {content:?}", self.name));
            if v["ref"] == reference.as_str() {
                assert_eq!(
                    v["type"], "message",
                    "{}: {content:?} refused: {v}",
                    self.name
                );
                return v["message"].clone();
            }
        }
    }

    /// Reads until a message with `content` arrived, for at most `wait`.
    async fn heard(&mut self, content: &str, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if self.live.iter().any(|m| m["content"] == content) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.take(left).await.is_none() {
                return self.live.iter().any(|m| m["content"] == content);
            }
        }
    }

    /// Reads whatever arrives until `quiet` passes without a frame.
    async fn drain(&mut self, quiet: Duration) {
        while self.take(quiet).await.is_some() {}
    }
}

fn ids(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["id"].as_u64().unwrap_or(0))
        .collect()
}

/// Polls `/health` on nodes 0 and 1 until it says ok (`healthy`) or
/// degraded naming redis; returns how long that took.
async fn wait_health(cluster: &Cluster, healthy: bool, limit: Duration) -> Duration {
    let what = format!(
        "/health {}",
        if healthy { "ok" } else { "degraded (redis)" }
    );
    eventually(limit, &what, || async move {
        let mut states = Vec::new();
        for i in [0, 1] {
            states.push(cluster.get(i, "/health").await);
        }
        let done = states.iter().all(|(status, body)| {
            if healthy {
                *status == 200 && body["status"] == "ok"
            } else {
                let failing = body["failing"].as_array().cloned().unwrap_or_default();
                *status == 503 && failing.contains(&json!("redis"))
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

/// ann on node 0 and bob on node 1 in one new room, each seeing the other.
async fn two_members(cluster: &Cluster) -> (u64, Member, Member) {
    let mut ws = cluster.ws(0).await;
    let room = ws.create("bus", "ann").await["room"]["id"]
        .as_u64()
        .expect("room id");
    let ann = Member {
        name: "ann",
        ws,
        live: Vec::new(),
        refs: 0,
    };
    let mut ws = cluster.ws(1).await;
    ws.join(room, "bob").await;
    let bob = Member {
        name: "bob",
        ws,
        live: Vec::new(),
        refs: 0,
    };
    cluster
        .wait_members_agree(&[0, 1], room, &["ann", "bob"], Duration::from_secs(5))
        .await;
    (room, ann, bob)
}

/// Each says `tag` once and hears the other within `wait`.
async fn exchange(ann: &mut Member, bob: &mut Member, tag: &str, wait: Duration) -> bool {
    let (a, b) = (format!("{tag}-ann"), format!("{tag}-bob"));
    ann.chat(&a).await;
    bob.chat(&b).await;
    bob.heard(&a, wait).await && ann.heard(&b, wait).await
}

/// Both members end with exactly the stored messages, in id order.
async fn assert_complete(cluster: &Cluster, room: u64, members: &mut [&mut Member]) {
    let stored = cluster.stored_messages(0, room).await;
    for m in members.iter_mut() {
        m.drain(Duration::from_millis(1500)).await;
        assert_eq!(
            ids(&m.live),
            ids(&stored),
            "{}: received ids differ from the stored ones",
            m.name
        );
    }
}

#[actix_rt::test]
async fn chat_resumes_within_10_s_of_a_sentinel_failover_and_nothing_is_lost() {
    let _heavy = heavy_test_lock().await;
    within(Duration::from_secs(120), "the test", async {
        let mut group = SentinelGroup::start(Auth::Open, Duration::from_millis(1000));
        let sentinels = group.sentinels_setting();
        let cluster = Cluster::start_logged(2, "", &[("REDIS_SENTINELS", &sentinels)]).await;
        let (room, mut ann, mut bob) = two_members(&cluster).await;
        assert!(exchange(&mut ann, &mut bob, "before", FRAME).await);

        group.master.kill();
        let killed = Instant::now();
        let degraded = wait_health(&cluster, false, Duration::from_secs(5)).await;

        // Keep chatting; find when a chat reaches the other process again.
        let mut round = 0;
        let resumed = loop {
            round += 1;
            if exchange(
                &mut ann,
                &mut bob,
                &format!("r{round}"),
                Duration::from_millis(300),
            )
            .await
            {
                break killed.elapsed();
            }
            assert!(
                killed.elapsed() < RESUME + Duration::from_secs(5),
                "no cross-process chat {:?} after the kill; sentinels see {:?}",
                killed.elapsed(),
                group.masters_seen()
            );
        };
        let healthy = killed.elapsed() + wait_health(&cluster, true, RESUME).await;
        assert_eq!(group.replica.role().as_deref(), Some("master"));
        assert!(exchange(&mut ann, &mut bob, "after", FRAME).await);
        assert_complete(&cluster, room, &mut [&mut ann, &mut bob]).await;
        eprintln!(
            "sentinel failover: /health degraded {degraded:?} after the SIGKILL of the \
             master, cross-process chat back after {resumed:?}, /health ok after {healthy:?}; \
             {} messages, each member got all of them once, in id order",
            ann.live.len()
        );
        assert!(resumed < RESUME, "chat resumed only after {resumed:?}");
        let connected =
            cluster.count_in_logs(&format!("connected to 127.0.0.1:{}", group.replica.port));
        assert!(connected >= 2, "both processes moved to the new master");
        cluster.assert_no_errors();
    })
    .await;
}

#[actix_rt::test]
async fn the_bus_works_with_a_password_and_with_an_acl_user() {
    for auth in [
        Auth::Password("pa55word".into()),
        Auth::User {
            name: "chat".into(),
            password: "s3cret".into(),
        },
    ] {
        let redis = RedisProc::server(auth.clone());
        let cluster = Cluster::start_logged(2, &redis.url(), &[]).await;
        let (room, mut ann, mut bob) = two_members(&cluster).await;
        assert!(
            exchange(&mut ann, &mut bob, "hello", FRAME).await,
            "{auth:?}: no cross-process chat"
        );
        assert_complete(&cluster, room, &mut [&mut ann, &mut bob]).await;
        cluster.assert_no_errors();
    }
}

#[actix_rt::test]
async fn a_wrong_redis_password_is_a_degraded_health_and_a_clear_log() {
    let redis = RedisProc::server(Auth::Password("right".into()));
    let wrong = format!("redis://:not-the-pw-42@127.0.0.1:{}", redis.port);
    let mut cluster = Cluster::start_answering(1, &wrong, &[]).await;
    let (status, body) = cluster.get(0, "/health").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["failing"], json!(["redis"]), "{body}");
    eventually(Duration::from_secs(5), "the cause in the log", || async {
        cluster
            .logs(0)
            .iter()
            .any(|l| l.contains("redis bus unavailable") && l.contains("authentication failed"))
    })
    .await;
    assert!(
        !cluster.logs(0).iter().any(|l| l.contains("not-the-pw-42")),
        "the password reached the log"
    );
    cluster.assert_running();
}

#[actix_rt::test]
async fn a_manual_failover_moves_both_processes_to_the_new_master() {
    // The old master stays up and becomes a replica: connections left on
    // it would hear nothing the others publish.
    let _heavy = heavy_test_lock().await;
    within(Duration::from_secs(120), "the test", async {
        let group = SentinelGroup::start(Auth::Open, Duration::from_millis(1000));
        let sentinels = group.sentinels_setting();
        let cluster = Cluster::start_logged(2, "", &[("REDIS_SENTINELS", &sentinels)]).await;
        let (room, mut ann, mut bob) = two_members(&cluster).await;
        assert!(exchange(&mut ann, &mut bob, "before", FRAME).await);

        let _: String = group.sentinels[0]
            .query(redis::cmd("SENTINEL").arg("FAILOVER").arg(&group.name))
            .unwrap_or_else(|e| panic!("SENTINEL FAILOVER: {e}"));
        let asked = Instant::now();
        let new_master = Some(("127.0.0.1".to_string(), group.replica.port));
        eventually(RESUME, "the sentinels name the new master", || async {
            group.masters_seen().iter().all(|m| *m == new_master)
        })
        .await;
        let switched = asked.elapsed();
        let mut round = 0;
        let resumed = loop {
            round += 1;
            let tag = format!("r{round}");
            let on_new = format!("connected to 127.0.0.1:{}", group.replica.port);
            let moved = cluster.count_in_logs(&on_new) >= 2;
            // Chat on throughout; count only an exchange made once both
            // processes are on the new master.
            if exchange(&mut ann, &mut bob, &tag, Duration::from_millis(300)).await && moved {
                break asked.elapsed();
            }
            assert!(
                asked.elapsed() < RESUME * 2,
                "the processes did not leave the old master"
            );
        };
        // Sentinel demotes the old master (and closes its connections) only
        // seconds later: the watchdog, not the demotion, moved the processes.
        let old_role = group.master.role();
        wait_health(&cluster, true, RESUME).await;
        assert!(exchange(&mut ann, &mut bob, "after", FRAME).await);
        assert_complete(&cluster, room, &mut [&mut ann, &mut bob]).await;
        let moved =
            cluster.count_in_logs(&format!("connected to 127.0.0.1:{}", group.replica.port));
        eprintln!(
            "manual failover: sentinels switched after {switched:?}; both processes on the \
             new master and chatting across after {resumed:?}, the old master's role then: \
             {old_role:?}; {moved} connections to the new master logged"
        );
        assert!(moved >= 2, "both processes moved to the new master");
        assert!(resumed < RESUME, "chat resumed only after {resumed:?}");
        assert!(
            cluster.count_in_logs("the sentinels name another master") >= 2,
            "the watchdog did not move the processes"
        );
        cluster.assert_no_errors();
    })
    .await;
}

/// A TCP relay to one port that can silence one of its connections: the
/// connection stays open, but nothing passes either way any more (a
/// blackhole, as a half-dead NAT entry or a frozen peer gives).
struct SilenceProxy {
    port: u16,
    silenced: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl SilenceProxy {
    fn start(target: u16) -> SilenceProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let proxy = SilenceProxy {
            port,
            silenced: Default::default(),
            streams: Default::default(),
            stop: Default::default(),
        };
        let (silenced, streams, stop) = (
            proxy.silenced.clone(),
            proxy.streams.clone(),
            proxy.stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let flag = Arc::new(AtomicBool::new(false));
                silenced.lock().unwrap().push(flag.clone());
                let mut all = streams.lock().unwrap();
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 {
                                let _ = to.shutdown(std::net::Shutdown::Write);
                                return;
                            }
                            if !flag.load(Ordering::Relaxed) && to.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
                all.push(client);
                all.push(server);
            }
        });
        proxy
    }

    /// From now on the `n`th connection (from 0) passes nothing.
    fn silence(&self, n: usize) {
        self.silenced.lock().unwrap()[n].store(true, Ordering::Relaxed);
    }

    fn connections(&self) -> usize {
        self.silenced.lock().unwrap().len()
    }
}

impl Drop for SilenceProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(streams) = self.streams.lock() {
            for s in streams.iter() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

#[actix_rt::test]
async fn a_subscription_connection_that_goes_silent_is_replaced() {
    let _heavy = heavy_test_lock().await;
    within(Duration::from_secs(60), "the test", async {
        let redis = RedisProc::server(Auth::Open);
        let proxy = SilenceProxy::start(redis.port);
        let mut cluster = Cluster::start_logged(2, &redis.url(), &[]).await;
        // Node 1 through the proxy: its first connection is the
        // subscription (the command pool connects after it).
        let through = format!("redis://127.0.0.1:{}", proxy.port);
        cluster.restart_with(1, "REDIS_URL", &through).await;
        assert!(proxy.connections() >= 2, "node 1 is not using the proxy");
        let (room, mut ann, mut bob) = two_members(&cluster).await;
        assert!(exchange(&mut ann, &mut bob, "before", FRAME).await);

        // The subscription stays open but hears nothing; publishing (on
        // the pool's connections) still works.
        proxy.silence(0);
        let silenced = Instant::now();
        ann.chat("into-the-void").await;
        assert!(
            bob.heard("into-the-void", Duration::from_secs(10)).await,
            "bob never got the chat sent while his process's subscription was silent"
        );
        let healed = silenced.elapsed();
        assert!(exchange(&mut ann, &mut bob, "after", FRAME).await);
        assert_complete(&cluster, room, &mut [&mut ann, &mut bob]).await;
        eprintln!(
            "silent subscription: replaced, and the chat sent into it delivered, \
             {healed:?} after it went silent"
        );
        assert!(
            cluster.count_in_logs("pinging the subscription connection timed out") >= 1,
            "the watchdog did not notice"
        );
        cluster.assert_no_errors();
    })
    .await;
}

#[actix_rt::test]
async fn passwords_for_the_sentinels_and_for_the_master_are_used() {
    let _heavy = heavy_test_lock().await;
    within(Duration::from_secs(60), "the test", async {
        let group = SentinelGroup::start_with(
            Auth::User {
                name: "chat".into(),
                password: "m4ster".into(),
            },
            Some("s3ntinel"),
            Duration::from_millis(1000),
        );
        let sentinels = group.sentinels_setting();
        let cluster = Cluster::start_logged(
            2,
            "",
            &[
                ("REDIS_SENTINELS", &sentinels),
                ("REDIS_SENTINEL_PASSWORD", "s3ntinel"),
                ("REDIS_USERNAME", "chat"),
                ("REDIS_PASSWORD", "m4ster"),
            ],
        )
        .await;
        let (room, mut ann, mut bob) = two_members(&cluster).await;
        assert!(exchange(&mut ann, &mut bob, "hello", FRAME).await);
        assert_complete(&cluster, room, &mut [&mut ann, &mut bob]).await;
        let warnings = cluster.warnings();
        assert!(
            !warnings
                .iter()
                .any(|l| l.contains("m4ster") || l.contains("s3ntinel")),
            "a password reached the log: {warnings:?}"
        );
        cluster.assert_no_errors();
    })
    .await;
}
