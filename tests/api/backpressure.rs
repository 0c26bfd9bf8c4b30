//! Clients that stop cooperating: one that never answers the heartbeat, and
//! one that never reads while its room is busy. Both are removed; everyone
//! else is unaffected.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::both_stores_with;
use crate::helpers::*;
use crate::wait::within;

both_stores_with!(
    a_client_that_never_answers_pings_is_dropped,
    |s| {
        s.heartbeat_interval = Duration::from_millis(200);
        s.client_timeout = Duration::from_secs(1);
    },
    |app| {
        let (mut alice, id) = app.create_via_ws("heartbeat", "alice").await;
        // The zombie joins, then never reads again: the awc client answers
        // pings only while it is being read.
        let (zombie, _) = app.join(id, "zombie").await;
        let joined_at = Instant::now();
        alice.recv_type("memberJoined").await;

        let gone = within(
            Duration::from_secs(5),
            "zombie dropped",
            alice.recv_type("memberLeft"),
        )
        .await;
        assert_eq!(
            gone,
            json!({"type":"memberLeft","roomId":id,"nickname":"zombie"})
        );
        let after = joined_at.elapsed();
        assert!(
            after >= Duration::from_millis(900),
            "dropped after {after:?}, before the 1 s timeout"
        );
        assert_eq!(app.member_names(id).await, ["alice"]);
        assert_eq!(app.room(id).await.1["memberCount"], 1);

        // Alice, who answers pings while reading, is kept well past the
        // timeout.
        alice.expect_silence(Duration::from_millis(2500)).await;
        alice.assert_alive().await;
        assert_eq!(app.member_names(id).await, ["alice"]);
        alice.chat("still here").await;
        drop(zombie);
    }
);

/// What a client thread reports once it has seen the whole firehose.
#[derive(Debug)]
struct Report {
    /// Ids of the `message` frames received, in arrival order.
    ids: Vec<u64>,
    /// Nicknames of `memberLeft` frames received.
    left: Vec<String>,
}

/// What a member on its own thread does (see [`spawn_member`]).
struct Plan {
    port: u16,
    room_id: u64,
    nickname: &'static str,
    /// Chats to send, each `content`, keeping at most `window` unanswered.
    to_send: usize,
    window: usize,
    content: String,
    /// Messages to receive before reporting.
    expected: usize,
    /// Also wait until this member has been seen leaving.
    until_left: Option<&'static str>,
}

/// A member running on its own thread: joined, then reports, then stays
/// connected (and answers a ping) until `done` is sent.
struct Member {
    thread: ClientThread<()>,
    joined: tokio::sync::oneshot::Receiver<()>,
    report: tokio::sync::oneshot::Receiver<Report>,
    done: tokio::sync::oneshot::Sender<()>,
}

/// Starts a member on its own OS thread, reading as fast as it can
/// independently of the test thread.
fn spawn_member(plan: Plan) -> Member {
    use tokio::sync::oneshot::channel;
    let (joined_tx, joined) = channel();
    let (report_tx, report) = channel();
    let (done, done_rx) = channel::<()>();
    let thread = client_thread(plan.nickname, move || async move {
        let Plan {
            port,
            room_id,
            nickname,
            to_send,
            window,
            content,
            expected,
            until_left,
        } = plan;
        let mut c = WsClient::connect(port).await;
        c.join(room_id, nickname).await;
        let _ = joined_tx.send(());
        let chat = json!({"type":"chat","content":content,"ref":"f"});
        let (mut sent, mut echoed) = (0, 0);
        let mut r = Report {
            ids: Vec::new(),
            left: Vec::new(),
        };
        while sent < to_send.min(window) {
            c.send(chat.clone()).await;
            sent += 1;
        }
        let seen_leaving = |r: &Report| until_left.is_none_or(|n| r.left.iter().any(|l| l == n));
        while r.ids.len() < expected || !seen_leaving(&r) {
            let v = match c.next_within(Duration::from_secs(8)).await {
                Some(Incoming::Json(v)) => v,
                other => panic!(
                    "{nickname} stalled with {} of {expected} messages, saw {:?} leave: {other:?}",
                    r.ids.len(),
                    r.left
                ),
            };
            match v["type"].as_str() {
                Some("message") => {
                    r.ids.push(v["message"]["id"].as_u64().unwrap());
                    if v["ref"] == "f" {
                        echoed += 1;
                        if sent < to_send {
                            c.send(chat.clone()).await;
                            sent += 1;
                        }
                    }
                }
                Some("memberLeft") => r
                    .left
                    .push(v["nickname"].as_str().unwrap_or_default().into()),
                Some("error") => panic!("{nickname} got an error: {v}"),
                _ => {}
            }
        }
        assert_eq!(echoed, to_send, "{nickname}: every chat echoed");
        let _ = report_tx.send(r);
        let _ = done_rx.await;
        c.assert_alive().await;
    });
    Member {
        thread,
        joined,
        report,
        done,
    }
}

impl Member {
    /// Waits until the member has joined.
    async fn joined(&mut self) {
        let joined = within(Duration::from_secs(10), "member joins", &mut self.joined).await;
        if joined.is_err() {
            self.thread.take_panic().await;
        }
    }

    /// The member's report; re-raises its panic if it failed.
    async fn report(&mut self) -> Report {
        match within(SCENARIO_TIMEOUT, "member report", &mut self.report).await {
            Ok(report) => report,
            Err(_) => {
                self.thread.take_panic().await;
                unreachable!()
            }
        }
    }

    /// Lets the member check its socket still works and end.
    async fn finish(self) {
        let _ = self.done.send(());
        self.thread.result(Duration::from_secs(10)).await;
    }
}

both_stores_with!(
    a_member_that_never_reads_is_removed_and_others_get_every_message,
    |s| {
        s.session_buffer_bytes = 64 * 1024;
        s.ws_rate_per_sec = 100_000.0;
        s.ws_rate_burst = 100_000.0;
    },
    |app| {
        // 2000 messages of 1000 four-byte characters: 8 MB for each member,
        // more than the kernel buffers of a loopback socket can hold, so a
        // member that never reads must back up into the server.
        const TOTAL: usize = 2000;
        let id = app.create_room("firehose").await["id"].as_u64().unwrap();
        let mut listener = spawn_member(Plan {
            port: app.port,
            room_id: id,
            nickname: "listener",
            to_send: 0,
            window: 0,
            content: String::new(),
            expected: TOTAL,
            until_left: Some("slow"),
        });
        listener.joined().await;
        // The slow member joins and then never reads again.
        let (mut slow, _) = app.join(id, "slow").await;
        let mut sender = spawn_member(Plan {
            port: app.port,
            room_id: id,
            nickname: "sender",
            to_send: TOTAL,
            // At most 4 chats unanswered: the sender is a reader that keeps up.
            window: 4,
            content: "😀".repeat(1000),
            expected: TOTAL,
            until_left: Some("slow"),
        });

        let listened = listener.report().await;
        let sent = sender.report().await;
        let expected: Vec<u64> = (1..=TOTAL as u64).collect();
        assert_eq!(listened.ids, expected, "the listener missed messages");
        assert_eq!(sent.ids, expected, "the sender missed messages");
        assert_eq!(listened.left, ["slow"]);
        assert_eq!(sent.left, ["slow"]);
        assert_eq!(app.member_names(id).await, ["listener", "sender"]);
        assert_eq!(app.room(id).await.1["memberCount"], 2);

        // The server keeps working for everyone else.
        let (mut late, joined) = app.join(id, "late").await;
        assert_eq!(joined["room"]["memberCount"], 3);
        let echo = late.chat("hello after the storm").await;
        assert_eq!(echo["message"]["id"], TOTAL as u64 + 1);
        listener.finish().await;
        sender.finish().await;
        // The evicted socket is closed by the server, not left hanging.
        let code = within(
            Duration::from_secs(10),
            "slow socket closed",
            slow.close_code(),
        )
        .await;
        assert!(code.is_some(), "closed without a close code");
    }
);

both_stores_with!(
    a_burst_larger_than_the_session_buffer_does_not_evict_readers,
    |s| {
        s.session_buffer_bytes = 4096;
        s.ws_rate_per_sec = 100_000.0;
        s.ws_rate_burst = 100_000.0;
    },
    |app| {
        // Small messages (the socket buffers never fill) sent 32 at a time
        // by one member, while another reads as fast as it can on its own
        // thread: a burst of 32 frames of about 200 bytes is more than the
        // 4 KiB session buffer, but it never has to wait in it, since the
        // kernel takes it. Neither member is a slow consumer, so neither
        // may be evicted.
        const TOTAL: usize = 640;
        let id = app.create_room("burst").await["id"].as_u64().unwrap();
        let mut listener = spawn_member(Plan {
            port: app.port,
            room_id: id,
            nickname: "listener",
            to_send: 0,
            window: 0,
            content: String::new(),
            expected: TOTAL,
            until_left: None,
        });
        listener.joined().await;
        let mut sender = spawn_member(Plan {
            port: app.port,
            room_id: id,
            nickname: "sender",
            to_send: TOTAL,
            window: 32,
            content: "burst ".repeat(20),
            expected: TOTAL,
            until_left: None,
        });
        let listened = listener.report().await;
        let sent = sender.report().await;
        let expected: Vec<u64> = (1..=TOTAL as u64).collect();
        assert_eq!(listened.ids, expected);
        assert_eq!(sent.ids, expected);
        assert_eq!(listened.left, Vec::<String>::new(), "nobody was evicted");
        assert_eq!(app.member_names(id).await, ["listener", "sender"]);
        listener.finish().await;
        sender.finish().await;
    }
);
