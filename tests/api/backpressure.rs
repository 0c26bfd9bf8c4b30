//! Clients that stop cooperating: one that never answers the heartbeat, and
//! one that never reads while its room is busy. Both are removed; everyone
//! else is unaffected.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::both_stores_with;
use crate::helpers::*;

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

/// A member on its own thread: joins `room_id` as `nickname`, sends
/// `to_send` chats of `content` keeping at most `window` unanswered,
/// reads until it has `expected` messages and saw `slow` leave, reports,
/// then stays connected until `done` fires.
#[allow(clippy::too_many_arguments)]
async fn firehose_member(
    port: u16,
    room_id: u64,
    nickname: &'static str,
    to_send: usize,
    window: usize,
    content: String,
    expected: usize,
    joined: tokio::sync::oneshot::Sender<()>,
    report: tokio::sync::oneshot::Sender<Report>,
    done: tokio::sync::oneshot::Receiver<()>,
) {
    let mut c = connect_ws(port).await;
    c.join(room_id, nickname).await;
    let _ = joined.send(());
    let (mut sent, mut echoed) = (0, 0);
    let mut r = Report {
        ids: Vec::new(),
        left: Vec::new(),
    };
    while sent < to_send.min(window) {
        c.send(json!({"type":"chat","content":content,"ref":"f"}))
            .await;
        sent += 1;
    }
    while r.ids.len() < expected || !r.left.iter().any(|n| n == "slow") {
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
                        c.send(json!({"type":"chat","content":content,"ref":"f"}))
                            .await;
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
    let _ = report.send(r);
    let _ = done.await;
    c.assert_alive().await;
}

both_stores_with!(
    a_member_that_never_reads_is_removed_and_others_get_every_message,
    |s| {
        s.session_queue_capacity = 8;
        s.ws_rate_per_sec = 100_000.0;
        s.ws_rate_burst = 100_000.0;
    },
    |app| {
        use tokio::sync::oneshot::channel;
        // 2000 messages of 1000 four-byte characters: 8 MB for each member,
        // more than the kernel buffers of a loopback socket can hold, so a
        // member that never reads must back up into the server.
        const TOTAL: usize = 3000;
        let content = "x".repeat(900);
        let id = app.create_room("firehose").await["id"].as_u64().unwrap();
        let port = app.port;

        let (l_joined, l_joined_rx) = channel();
        let (l_report, l_report_rx) = channel();
        let (l_done, l_done_rx) = channel();
        let listener = client_thread("listener", move || {
            firehose_member(
                port,
                id,
                "listener",
                0,
                0,
                String::new(),
                TOTAL,
                l_joined,
                l_report,
                l_done_rx,
            )
        });
        within(Duration::from_secs(10), "listener joins", l_joined_rx)
            .await
            .unwrap();
        // The slow member joins and then never reads again.
        let (mut slow, _) = app.join(id, "slow").await;
        let (s_joined, _s_joined_rx) = channel();
        let (s_report, s_report_rx) = channel();
        let (s_done, s_done_rx) = channel();
        let sender = client_thread("sender", move || {
            firehose_member(
                port, id, "sender", TOTAL, 64, content, TOTAL, s_joined, s_report, s_done_rx,
            )
        });

        let listened = within(SCENARIO_TIMEOUT, "listener report", l_report_rx).await;
        let sent = within(SCENARIO_TIMEOUT, "sender report", s_report_rx).await;
        let (Ok(listened), Ok(sent)) = (listened, sent) else {
            // A client thread panicked: surface its message.
            let (_, _) = (l_done.send(()), s_done.send(()));
            listener.result(Duration::from_secs(5)).await;
            sender.result(Duration::from_secs(5)).await;
            panic!("a client thread ended without reporting");
        };
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
        let _ = (l_done.send(()), s_done.send(()));
        listener.result(Duration::from_secs(10)).await;
        sender.result(Duration::from_secs(10)).await;
        // The evicted socket is closed by the server, not left hanging.
        let code = within(
            Duration::from_secs(10),
            "slow socket closed",
            slow.close_code(),
        )
        .await;
        eprintln!("slow consumer closed with {code:?}");
    }
);
