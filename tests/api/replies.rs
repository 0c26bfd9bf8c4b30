//! Direct replies that must always come: a `join` of the room the
//! connection is already in, and a `chat` sent right before `leave`.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::both_stores_with;
use crate::helpers::*;
use crate::transport::{handshake, text_frame, Raw};
use crate::wait::within;

/// Frames that a back-to-back scenario may take; far above what it needs.
const ENOUGH: Duration = Duration::from_secs(10);

both_stores_with!(
    rejoining_the_room_you_are_in_keeps_it_and_answers_joined,
    |_| {},
    |app| {
        // Alone in the room, with history: a retried join must not delete it.
        let (mut alice, a) = app.create_via_ws("A", "alice").await;
        let first = alice.chat("before").await["message"].clone();
        alice
            .send(json!({"type":"join","roomId":a,"nickname":"alice","ref":"again"}))
            .await;
        // The very next frame is the answer: no `left` before it.
        let joined = alice.recv().await;
        assert_eq!(joined["type"], "joined", "{joined}");
        assert_eq!(joined["ref"], "again");
        assert_eq!(joined_room_id(&joined), a);
        assert_eq!(joined["you"]["nickname"], "alice");
        assert_eq!(joined["room"]["memberCount"], 1);
        assert_eq!(nicknames(&joined["members"]), ["alice"]);
        assert_eq!(joined["history"], json!([first]));
        assert_eq!(app.room(a).await.0, 200, "the room is still there");
        assert_eq!(app.messages(a, "").await, vec![first.clone()]);

        // Two rejoins back to back (a client retrying a slow join): two
        // answers, and the others hear nothing.
        let (mut bob, _) = app.join(a, "bob").await;
        alice.recv_type("memberJoined").await;
        for r in ["r1", "r2"] {
            alice
                .send(json!({"type":"join","roomId":a,"nickname":"alice","ref":r}))
                .await;
        }
        for r in ["r1", "r2"] {
            let joined = alice.recv().await;
            assert_eq!(joined["type"], "joined", "{joined}");
            assert_eq!(joined["ref"], r);
            assert_eq!(nicknames(&joined["members"]), ["alice", "bob"]);
            assert_eq!(joined["you"], joined["members"][0], "the same membership");
        }
        bob.expect_silence(Duration::from_millis(300)).await;
        assert_eq!(app.member_names(a).await, ["alice", "bob"]);

        // Under another nickname: refused, and still in the room.
        let refused = alice
            .expect_error(
                json!({"type":"join","roomId":a,"nickname":"alicia"}),
                "invalid_nickname",
            )
            .await;
        assert!(
            refused["message"].as_str().unwrap_or("").contains("alice"),
            "{refused}"
        );
        let echo = alice.chat("still here").await;
        assert_eq!(bob.recv_type("message").await["message"], echo["message"]);
        assert_eq!(app.member_names(a).await, ["alice", "bob"]);
    }
);

both_stores_with!(
    a_chat_sent_right_before_leave_gets_its_echo_before_left,
    |_| {},
    |app| {
        let (mut bob, a) = app.create_via_ws("A", "bob").await;
        for i in 0..50 {
            // A raw client, so `chat` and `leave` reach the server in one
            // TCP segment and are read in one go.
            let mut first = handshake("/ws", "13").into_bytes();
            first.extend(text_frame(
                &json!({"type":"join","roomId":a,"nickname":"alice","ref":"j"}),
            ));
            let mut alice = Raw::open(app.port, &first).await;
            let (head, _) = alice.response().await;
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            let joined = alice.json().await;
            assert_eq!(joined["ref"], "j", "{joined}");
            let (chat, leave) = (format!("c{i}"), format!("l{i}"));
            let mut both = text_frame(&json!({"type":"chat","content":format!("m{i}"),"ref":chat}));
            both.extend(text_frame(&json!({"type":"leave","ref":leave})));
            alice.stream.write_all(&both).await.unwrap();
            // The chat's direct reply comes, and before `left`.
            let mut echo: Option<Value> = None;
            loop {
                let v = within(ENOUGH, "a reply", alice.json()).await;
                if v["ref"] == chat.as_str() {
                    assert_eq!(v["type"], "message", "round {i}: {v}");
                    echo = Some(v);
                } else if v["ref"] == leave.as_str() {
                    assert_eq!(v["type"], "left", "round {i}: {v}");
                    break;
                }
            }
            let echo = echo.unwrap_or_else(|| panic!("round {i}: `left` came, the echo never"));
            assert_eq!(echo["message"]["content"], format!("m{i}"));
            // The others got it too.
            let got = bob.recv_type("message").await;
            assert_eq!(got["message"], echo["message"]);
            bob.recv_type("memberLeft").await;
        }
        assert_eq!(app.messages(a, "limit=500").await.len(), 50);
        assert_eq!(app.member_names(a).await, ["bob"]);
    }
);
