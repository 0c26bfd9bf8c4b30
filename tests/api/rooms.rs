//! Room lifecycle: one room per connection, deletion when the last member
//! leaves or disconnects, the empty-room grace period, history on join,
//! per-room message ids, catching up with `after=`, identity, and clean
//! shutdown.

use std::time::Duration;

use serde_json::{json, Value};

use crate::both_stores_with;
use crate::helpers::*;
use crate::wait::within;

/// How long a deletion that follows a leave may take to become visible.
const DELETE_WITHIN: Duration = Duration::from_secs(5);

fn numbered(prefix: &str, range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

both_stores_with!(
    joining_another_room_first_leaves_the_current_one,
    |_| {},
    |app| {
        let (mut alice, a) = app.create_via_ws("A", "alice").await;
        let (mut carol, _) = app.join(a, "carol").await;
        alice.recv_type("memberJoined").await;
        let (mut bob, b) = app.create_via_ws("B", "bob").await;

        alice
            .send(json!({"type":"join","roomId":b,"nickname":"alice","ref":"switch"}))
            .await;
        // First `left` for A (no ref: the ref belongs to the join), then `joined`.
        let left = alice.recv().await;
        assert_eq!(left, json!({"type":"left","roomId":a}));
        let joined = alice.recv().await;
        assert_eq!(joined["type"], "joined", "{joined}");
        assert_eq!(joined["ref"], "switch");
        assert_eq!(joined_room_id(&joined), b);
        assert_eq!(nicknames(&joined["members"]), ["bob", "alice"]);

        let gone = carol.recv_type("memberLeft").await;
        assert_eq!(
            gone,
            json!({"type":"memberLeft","roomId":a,"nickname":"alice"})
        );
        let came = bob.recv_type("memberJoined").await;
        assert_eq!(came["roomId"], b);
        assert_eq!(came["member"]["nickname"], "alice");
        assert_eq!(app.member_names(a).await, ["carol"]);
        assert_eq!(app.member_names(b).await, ["bob", "alice"]);
        assert_eq!(app.room(a).await.1["memberCount"], 1);
        assert_eq!(app.room(b).await.1["memberCount"], 2);

        // Alice now speaks in B only.
        let echo = alice.chat("hi B").await;
        assert_eq!(echo["message"]["roomId"], b);
        assert_eq!(bob.recv_type("message").await["message"], echo["message"]);
        carol.expect_silence(Duration::from_millis(300)).await;
        assert_eq!(app.messages(a, "").await, Vec::<Value>::new());

        // `create` also leaves the current room first; carol was A's last
        // member, so A is deleted.
        carol
            .send(json!({"type":"create","title":"C","nickname":"carol","ref":"c"}))
            .await;
        assert_eq!(carol.recv().await, json!({"type":"left","roomId":a}));
        assert_eq!(carol.reply_to("c").await["type"], "joined");
        app.wait_room_gone(a, DELETE_WITHIN).await;
        app.assert_room_gone(a).await;
    }
);

both_stores_with!(the_same_nickname_may_be_used_in_two_rooms, |_| {}, |app| {
    let (mut sam1, a) = app.create_via_ws("A", "sam").await;
    let (mut sam2, b) = app.create_via_ws("B", "sam").await;
    assert_eq!(app.member_names(a).await, ["sam"]);
    assert_eq!(app.member_names(b).await, ["sam"]);
    let e1 = sam1.chat("in A").await;
    let e2 = sam2.chat("in B").await;
    assert_eq!(
        (
            e1["message"]["roomId"].as_u64(),
            e1["message"]["nickname"].as_str()
        ),
        (Some(a), Some("sam"))
    );
    assert_eq!(
        (
            e2["message"]["roomId"].as_u64(),
            e2["message"]["nickname"].as_str()
        ),
        (Some(b), Some("sam"))
    );
    sam1.expect_silence(Duration::from_millis(200)).await;
});

both_stores_with!(the_last_member_leaving_deletes_the_room, |_| {}, |app| {
    let (mut alice, id) = app.create_via_ws("short-lived", "alice").await;
    let (mut bob, _) = app.join(id, "bob").await;
    alice.chat("one").await;
    bob.leave().await;
    // Not the last: the room lives on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, room) = app.room(id).await;
    assert_eq!(status, 200, "{room}");
    assert_eq!(room["memberCount"], 1);
    assert_eq!(app.messages(id, "").await.len(), 1);

    let left = alice.leave().await;
    assert_eq!(left["roomId"], id);
    app.wait_room_gone(id, DELETE_WITHIN).await;
    app.assert_room_gone(id).await;
    if let Some(db) = app.database() {
        let sql = format!("SELECT COUNT(*) FROM chatMsg WHERE room_id = {id}");
        assert_eq!(
            db.query_u64(&sql).await,
            0,
            "messages deleted with the room"
        );
    }
    // Rejoining the deleted room is refused; the socket still works.
    let err = alice
        .expect_error(
            json!({"type":"join","roomId":id,"nickname":"alice"}),
            "room_not_found",
        )
        .await;
    assert_error_frame(&err, "room_not_found", Some("err"));
    alice.assert_alive().await;
});

both_stores_with!(
    the_last_member_disconnecting_deletes_the_room,
    |_| {},
    |app| {
        // Dropped without a close frame.
        let (mut dropper, dropped_room) = app.create_via_ws("dropped", "d").await;
        dropper.chat("bye").await;
        // Closed politely with a close frame.
        let (closer, closed_room) = app.create_via_ws("closed", "c").await;
        // A room with two members where one disconnects survives.
        let (mut stayer, shared) = app.create_via_ws("shared", "stay").await;
        let (goer, _) = app.join(shared, "go").await;
        stayer.recv_type("memberJoined").await;

        drop(dropper);
        closer.close().await;
        drop(goer);

        let left = stayer.recv_type("memberLeft").await;
        assert_eq!(
            left,
            json!({"type":"memberLeft","roomId":shared,"nickname":"go"})
        );
        app.wait_room_gone(dropped_room, DELETE_WITHIN).await;
        app.wait_room_gone(closed_room, DELETE_WITHIN).await;
        app.assert_room_gone(dropped_room).await;
        app.assert_room_gone(closed_room).await;
        assert_eq!(app.member_names(shared).await, ["stay"]);
        assert_eq!(app.room(shared).await.1["memberCount"], 1);
    }
);

both_stores_with!(
    an_unjoined_room_is_deleted_after_the_grace_period_but_a_joined_one_lives,
    |s| s.empty_room_grace = Duration::from_secs(1),
    |app| {
        let created = std::time::Instant::now();
        let lonely = app.create_room("nobody comes").await;
        let lonely = lonely["id"].as_u64().unwrap();
        let busy = app.create_room("somebody comes").await;
        let busy = busy["id"].as_u64().unwrap();
        let (mut member, _) = app.join(busy, "early").await;

        // Within the grace period the unjoined room exists (only checked
        // if this machine got here within the grace period).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, _) = app.room(lonely).await;
        let age = created.elapsed();
        if age < Duration::from_millis(950) {
            assert_eq!(
                status, 200,
                "deleted {age:?} after creation, before its 1 s grace period"
            );
        }
        // After it, the unjoined one goes (grace 1 s + sweep + second rounding).
        app.wait_room_gone(lonely, Duration::from_secs(5)).await;
        app.assert_room_gone(lonely).await;
        // The joined one outlives the grace period while its member stays.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (status, room) = app.room(busy).await;
        assert_eq!(status, 200, "a joined room was swept: {room}");
        assert_eq!(room["memberCount"], 1);
        member.chat("still here").await;
        member.leave().await;
        app.wait_room_gone(busy, DELETE_WITHIN).await;
    }
);

both_stores_with!(
    joining_returns_the_last_history_on_join_messages_then_live_ones,
    |s| s.history_on_join = 3,
    |app| {
        let (mut alice, id) = app.create_via_ws("history", "alice").await;
        let (_x, fresh) = app.create_via_ws("fresh", "x").await;
        let (_c, joined) = app.join(fresh, "y").await;
        assert_eq!(
            joined["history"],
            json!([]),
            "a room without messages has no history"
        );

        let sent = alice.chat_all(&numbered("m", 1..=5)).await;
        let (mut bob, joined) = app.join(id, "bob").await;
        let history = joined["history"].as_array().unwrap().clone();
        assert_eq!(ids(&json!(history)), [3, 4, 5], "the last 3, ascending");
        assert_eq!(
            &history[..],
            &sent[2..],
            "history messages are the stored ones"
        );

        // Live messages continue at the next id, with nothing repeated.
        let next = alice.chat("m6").await;
        assert_eq!(next["message"]["id"], 6);
        let live = bob.recv_messages(1).await;
        assert_eq!(live[0], next["message"]);
        bob.expect_silence(Duration::from_millis(200)).await;
        assert_eq!(app.messages(id, "").await.len(), 6);
    }
);

both_stores_with!(
    history_then_live_messages_have_no_gap_and_no_duplicate,
    |s| s.history_on_join = 3,
    |app| {
        let (mut alice, id) = app.create_via_ws("racing", "alice").await;
        const N: u64 = 100;
        let contents = numbered("r", 1..=N as usize);
        // Four members join at different moments while alice's messages are
        // being stored and delivered.
        let sending = alice.chat_all(&contents);
        let app = &app;
        let joining = futures_util::future::join_all((0..4u64).map(|k| async move {
            tokio::time::sleep(Duration::from_millis(1 + 4 * k)).await;
            app.join(id, &format!("late{k}")).await
        }));
        let (sent, joiners) = within(
            SCENARIO_TIMEOUT,
            "chat while joining",
            futures_util::future::join(sending, joining),
        )
        .await;
        assert_eq!(sent.len(), N as usize);
        for (k, (mut c, joined)) in joiners.into_iter().enumerate() {
            let history = ids(&joined["history"]);
            let mut seen = history.clone();
            let last = history.last().copied().unwrap_or(0);
            // Exactly the last min(3, last) messages at the moment of joining.
            let first_kept = last.saturating_sub(2).max(1);
            let expected_history: Vec<u64> = (first_kept..=last).collect();
            assert_eq!(history, expected_history, "late{k}: history is the last 3");
            for m in c.recv_messages((N - last) as usize).await {
                seen.push(m["id"].as_u64().unwrap());
            }
            let expected: Vec<u64> = (seen[0]..=N).collect();
            assert_eq!(
                seen, expected,
                "late{k}: history + live must be contiguous, without repeats"
            );
            if history.is_empty() {
                assert_eq!(
                    seen[0], 1,
                    "late{k}: empty history but messages were missed"
                );
            }
            // No message arrives twice (other joiners' memberJoined may).
            while let Some(Incoming::Json(v)) = c.next_within(Duration::from_millis(100)).await {
                assert_ne!(v["type"], "message", "late{k}: extra message {v}");
            }
        }
    }
);

both_stores_with!(
    message_ids_start_at_1_and_increase_per_room_independently,
    |_| {},
    |app| {
        let (mut a, room_a) = app.create_via_ws("A", "a").await;
        let (mut b, room_b) = app.create_via_ws("B", "b").await;
        let mut ids_a = Vec::new();
        let mut ids_b = Vec::new();
        for step in ["a", "b", "a", "a", "b", "a", "b", "b", "b"] {
            if step == "a" {
                ids_a.push(a.chat("x").await["message"]["id"].as_u64().unwrap());
            } else {
                ids_b.push(b.chat("y").await["message"]["id"].as_u64().unwrap());
            }
        }
        assert_eq!(ids_a, [1, 2, 3, 4]);
        assert_eq!(ids_b, [1, 2, 3, 4, 5]);
        assert_eq!(ids(&json!(app.messages(room_a, "").await)), [1, 2, 3, 4]);
        assert_eq!(ids(&json!(app.messages(room_b, "").await)), [1, 2, 3, 4, 5]);
    }
);

both_stores_with!(a_delivered_message_is_already_stored, |_| {}, |app| {
    let (mut alice, id) = app.create_via_ws("durable", "alice").await;
    let (mut bob, _) = app.join(id, "bob").await;
    for i in 1..=10 {
        let echo = alice.chat(&format!("d{i}")).await;
        let got = bob.recv_messages(1).await.remove(0);
        assert_eq!(got, echo["message"]);
        // As soon as it has been delivered, it can be fetched.
        let stored = app.messages(id, &format!("after={}&limit=1", i - 1)).await;
        assert_eq!(
            stored,
            vec![got],
            "message {i} delivered before it was stored"
        );
    }
});

both_stores_with!(
    after_returns_exactly_what_a_disconnected_member_missed,
    |_| {},
    |app| {
        let (mut alice, id) = app.create_via_ws("catch-up", "alice").await;
        let (mut bob, _) = app.join(id, "bob").await;
        alice.chat_all(&numbered("before", 1..=2)).await;
        let seen = bob.recv_messages(2).await;
        let last_seen = seen.last().unwrap()["id"].as_u64().unwrap();
        assert_eq!(last_seen, 2);

        drop(bob);
        let gone = alice.recv_type("memberLeft").await;
        assert_eq!(gone["nickname"], "bob");
        let missed = alice.chat_all(&numbered("missed", 1..=3)).await;

        // Bob comes back: `after=` gives exactly the messages he missed.
        let caught_up = app.messages(id, &format!("after={last_seen}")).await;
        assert_eq!(caught_up, missed);
        assert_eq!(ids(&json!(caught_up)), [3, 4, 5]);
        let (mut bob, joined) = app.join(id, "bob").await;
        assert_eq!(ids(&joined["history"]), [1, 2, 3, 4, 5]);
        // And from then on he is live again.
        let after = alice.chat("welcome back").await;
        assert_eq!(bob.recv_messages(1).await[0], after["message"]);
        assert_eq!(after["message"]["id"], 6);
    }
);

both_stores_with!(
    a_client_cannot_choose_its_nickname_or_ids_on_chat,
    |_| {},
    |app| {
        let (mut alice, id) = app.create_via_ws("identity", "alice").await;
        let (mut bob, _) = app.join(id, "bob").await;
        alice
            .send(json!({
                "type": "chat",
                "content": "I am bob",
                "nickname": "bob",
                "roomId": id + 1000,
                "id": 999,
                "sentAt": "2000-01-01T00:00:00Z",
                "ref": "spoof"
            }))
            .await;
        let echo = alice.reply_to("spoof").await;
        let message = &echo["message"];
        assert_eq!(message["nickname"], "alice", "{echo}");
        assert_eq!(message["roomId"], id);
        assert_eq!(message["id"], 1);
        assert_ne!(message["sentAt"], "2000-01-01T00:00:00Z");
        assert_eq!(bob.recv_messages(1).await[0]["nickname"], "alice");
        assert_eq!(app.messages(id, "").await[0]["nickname"], "alice");
    }
);

both_stores_with!(
    clean_shutdown_closes_sockets_with_1001_and_removes_members,
    |_| {},
    |app| {
        let (mut alice, x) = app.create_via_ws("X", "alice").await;
        let (mut bob, _) = app.join(x, "bob").await;
        let (mut carol, y) = app.create_via_ws("Y", "carol").await;
        // Dave is connected but in no room.
        let mut dave = app.ws().await;
        dave.assert_alive().await;
        alice.chat("before shutdown").await;
        if let Some(db) = app.database() {
            assert_eq!(db.query_u64("SELECT COUNT(*) FROM chatMember").await, 3);
        }

        within(Duration::from_secs(15), "app.stop()", app.stop()).await;
        for (name, c) in [
            ("alice", &mut alice),
            ("bob", &mut bob),
            ("carol", &mut carol),
            ("dave", &mut dave),
        ] {
            assert_eq!(
                c.close_code().await,
                Some(1001),
                "{name} should see 1001 going away"
            );
        }

        if let Some(db) = app.database() {
            // The store holds no member of the stopped process, and the rooms
            // they emptied are deleted with their messages.
            assert_eq!(db.query_u64("SELECT COUNT(*) FROM chatMember").await, 0);
            let rooms = format!("SELECT COUNT(*) FROM chatRoom WHERE id IN ({x}, {y})");
            assert_eq!(db.query_u64(&rooms).await, 0, "emptied rooms deleted");
            assert_eq!(db.query_u64("SELECT COUNT(*) FROM chatMsg").await, 0);

            // A new process on the same database sees no trace of them.
            let url = db.url.clone();
            let next = spawn_app_with(StoreMode::MySql, move |s| s.mysql_url = Some(url)).await;
            let (status, list) = next.get("/api/rooms").await;
            assert_eq!(status, 200, "{list}");
            for room in list.as_array().unwrap() {
                assert_eq!(
                    room["memberCount"], 0,
                    "stale members after restart: {list}"
                );
            }
            assert!(
                !ids(&list).contains(&x) && !ids(&list).contains(&y),
                "{list}"
            );
            next.stop().await;
        }
    }
);
