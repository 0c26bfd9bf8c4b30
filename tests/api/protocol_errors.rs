//! Bad input over the WebSocket: every `error` code with its `ref` echoed,
//! the connection staying open and served after each one, the documented
//! close codes, flood limiting that leaves other users unaffected, and
//! trimming of echoed values.

use std::time::Duration;

use actix_http::ws::Message as WsMessage;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::{both_stores_with, memory_only_with};

/// Sends `frame` with ref `"err"`, checks the `error` reply (code, message,
/// ref) and that the socket still answers a ping.
async fn rejects(c: &mut WsClient, frame: Value, code: &str) {
    let shown = frame.to_string();
    let err = c.expect_error(frame, code).await;
    assert_error_frame(&err, code, Some("err"));
    assert!(
        err.as_object().unwrap().len() == 4,
        "error frame for {shown}: {err}"
    );
    c.assert_alive().await;
}

/// Sends raw text and expects an `error` frame with `code` and no `ref`
/// (the frame's ref could not be read), then a working socket.
async fn rejects_raw(c: &mut WsClient, text: &str, code: &str) {
    c.send_text(text).await;
    let err = c.recv_type("error").await;
    assert_error_frame(&err, code, None);
    c.assert_alive().await;
}

memory_only_with!(
    malformed_json_is_invalid_json_and_socket_stays_open,
    |_| {},
    |app| {
        let mut c = app.ws().await;
        for text in [
            "{not json",
            "",
            "{\"type\":\"ping\"",
            "nul",
            "{\"type\":\"ping\",}",
        ] {
            rejects_raw(&mut c, text, "invalid_json").await;
        }
    }
);

memory_only_with!(
    non_object_or_missing_or_unknown_type_is_invalid_message_with_ref,
    |_| {},
    |app| {
        let mut c = app.ws().await;
        // Not an object: no ref can be read.
        for text in [
            "[1,2]",
            "\"ping\"",
            "42",
            "null",
            "true",
            "[{\"type\":\"ping\",\"ref\":\"err\"}]",
        ] {
            rejects_raw(&mut c, text, "invalid_message").await;
        }
        // An object whose ref is readable: the ref is echoed.
        rejects(&mut c, json!({}), "invalid_message").await;
        rejects(&mut c, json!({"content": "hi"}), "invalid_message").await;
        rejects(&mut c, json!({"type": "shout"}), "invalid_message").await;
        rejects(&mut c, json!({"type": "PING"}), "invalid_message").await;
        rejects(&mut c, json!({"type": ""}), "invalid_message").await;
        rejects(&mut c, json!({"type": 5}), "invalid_message").await;
        rejects(&mut c, json!({"type": null}), "invalid_message").await;
        rejects(&mut c, json!({"type": ["ping"]}), "invalid_message").await;
        // A non-string ref is itself invalid.
        for bad_ref in [json!(5), json!({"a": 1}), json!(["x"]), json!(true)] {
            let frame = json!({"type": "ping", "ref": bad_ref});
            rejects_raw(&mut c, &frame.to_string(), "invalid_message").await;
        }
    }
);

memory_only_with!(
    bad_title_on_create_is_invalid_title_with_ref,
    |_| {},
    |app| {
        let mut c = app.ws().await;
        for title in [
            json!(""),
            json!("   "),
            json!("x".repeat(51)),
            json!("é".repeat(51)),
            json!("a\u{0}b"),
            json!("a\u{1b}b"),
            json!("a\u{9f}b"),
            json!(7),
            json!(null),
        ] {
            rejects(
                &mut c,
                json!({"type":"create","title":title,"nickname":"ann"}),
                "invalid_title",
            )
            .await;
        }
        rejects(
            &mut c,
            json!({"type":"create","nickname":"ann"}),
            "invalid_title",
        )
        .await;
        let (_, list) = app.get("/api/rooms").await;
        assert_eq!(list, json!([]), "no room was created by a rejected create");
    }
);

both_stores_with!(bad_nickname_is_invalid_nickname_with_ref, |_| {}, |app| {
    let room = app.create_room("nicks").await;
    let id = room["id"].as_u64().unwrap();
    let mut c = app.ws().await;
    for nickname in [
        json!(""),
        json!(" \t "),
        json!("n".repeat(51)),
        json!("ü".repeat(51)),
        json!("bad\u{7}bell"),
        json!("bad\nline"),
        json!("bad\u{7f}del"),
        json!("bad\u{85}nel"),
        json!(12),
        json!(null),
    ] {
        rejects(
            &mut c,
            json!({"type":"join","roomId":id,"nickname":nickname}),
            "invalid_nickname",
        )
        .await;
        rejects(
            &mut c,
            json!({"type":"create","title":"t","nickname":nickname}),
            "invalid_nickname",
        )
        .await;
    }
    rejects(
        &mut c,
        json!({"type":"join","roomId":id}),
        "invalid_nickname",
    )
    .await;
    assert_eq!(app.member_names(id).await, Vec::<String>::new());

    // 50 characters (not bytes) is the boundary, and it is accepted.
    let fifty = "ü".repeat(50);
    let joined = c.join(id, &fifty).await;
    assert_eq!(joined["you"]["nickname"], fifty.as_str());
});

both_stores_with!(
    bad_content_is_invalid_content_but_newline_and_tab_pass,
    |_| {},
    |app| {
        let (mut c, id) = app.create_via_ws("contents", "ann").await;
        for content in [
            json!(""),
            json!("  \n\t "),
            json!("c".repeat(1001)),
            json!("😀".repeat(1001)),
            json!("ctrl\u{1}char"),
            json!("esc\u{1b}[31m"),
            json!("cr\rreturn"),
            json!("c1\u{90}x"),
            json!(5),
            json!(null),
        ] {
            rejects(
                &mut c,
                json!({"type":"chat","content":content}),
                "invalid_content",
            )
            .await;
        }
        rejects(&mut c, json!({"type":"chat"}), "invalid_content").await;
        assert_eq!(
            app.messages(id, "").await,
            Vec::<Value>::new(),
            "nothing was stored"
        );

        // Newlines and tabs are content, and are echoed as sent.
        let multi = c.chat("line one\nline two\n\tindented").await;
        assert_eq!(
            multi["message"]["content"],
            "line one\nline two\n\tindented"
        );
        // Exactly 1000 characters (4000 bytes here) is accepted.
        let long = "😀".repeat(1000);
        let echo = c.chat(&long).await;
        assert_eq!(echo["message"]["content"], long.as_str());
        let stored = app.messages(id, "").await;
        assert_eq!(stored.len(), 2);
        assert_eq!(stored[0]["content"], "line one\nline two\n\tindented");
        assert_eq!(stored[1]["content"], long.as_str());
    }
);

memory_only_with!(bad_room_id_is_invalid_parameter_with_ref, |_| {}, |app| {
    let mut c = app.ws().await;
    for room_id in [
        json!("7"),
        json!(-1),
        json!(1.5),
        json!(null),
        json!([1]),
        json!({"id": 1}),
    ] {
        rejects(
            &mut c,
            json!({"type":"join","roomId":room_id,"nickname":"ann"}),
            "invalid_parameter",
        )
        .await;
    }
    rejects(
        &mut c,
        json!({"type":"join","nickname":"ann"}),
        "invalid_parameter",
    )
    .await;
});

both_stores_with!(
    joining_a_missing_room_is_room_not_found_with_ref,
    |_| {},
    |app| {
        let mut c = app.ws().await;
        rejects(
            &mut c,
            json!({"type":"join","roomId":999_999,"nickname":"ann"}),
            "room_not_found",
        )
        .await;
        // Still in the lobby: chatting is refused, and a valid join works.
        rejects(&mut c, json!({"type":"chat","content":"hi"}), "not_in_room").await;
        let room = app.create_room("real").await;
        let joined = c.join(room["id"].as_u64().unwrap(), "ann").await;
        assert_eq!(joined["room"]["memberCount"], 1);
    }
);

both_stores_with!(
    a_taken_nickname_is_nickname_taken_but_case_differs,
    |_| {},
    |app| {
        let (mut alice, id) = app.create_via_ws("names", "alice").await;
        let mut other = app.ws().await;
        rejects(
            &mut other,
            json!({"type":"join","roomId":id,"nickname":"alice"}),
            "nickname_taken",
        )
        .await;
        // Trimmed before comparing.
        rejects(
            &mut other,
            json!({"type":"join","roomId":id,"nickname":"  alice "}),
            "nickname_taken",
        )
        .await;
        assert_eq!(
            app.member_names(id).await,
            ["alice"],
            "the refused join left no trace"
        );
        alice.expect_silence(Duration::from_millis(200)).await;

        // Exact match only: a different case is another nickname.
        let joined = other.join(id, "Alice").await;
        assert_eq!(joined["you"]["nickname"], "Alice");
        assert_eq!(app.member_names(id).await, ["alice", "Alice"]);
        let seen = alice.recv_type("memberJoined").await;
        assert_eq!(seen["member"]["nickname"], "Alice");
    }
);

both_stores_with!(
    invisible_characters_make_a_nickname_invalid_not_a_new_one,
    |_| {},
    |app| {
        let (mut alice, id) = app.create_via_ws("lookalikes", "alice").await;
        let mut other = app.ws().await;
        for nickname in [
            "alice\u{200B}",
            "\u{200D}alice",
            "ali\u{200C}ce",
            "alice\u{2060}",
            "\u{FEFF}alice",
            "ali\u{AD}ce",
            "\u{202E}ecila",
            "\u{2067}alice\u{2069}",
        ] {
            rejects(
                &mut other,
                json!({"type":"join","roomId":id,"nickname":nickname}),
                "invalid_nickname",
            )
            .await;
            rejects(
                &mut other,
                json!({"type":"create","title":"t","nickname":nickname}),
                "invalid_nickname",
            )
            .await;
        }
        rejects(
            &mut other,
            json!({"type":"create","title":"look\u{200B}alikes","nickname":"bob"}),
            "invalid_title",
        )
        .await;
        assert_eq!(app.member_names(id).await, ["alice"]);
        alice.expect_silence(Duration::from_millis(200)).await;
    }
);

both_stores_with!(
    canonically_equivalent_nicknames_are_one_nickname,
    |_| {},
    |app| {
        let precomposed = "Jos\u{E9}";
        let decomposed = "Jose\u{301}";
        // Either spelling first; the other one is taken.
        for (first, second) in [(precomposed, decomposed), (decomposed, precomposed)] {
            let (mut holder, id) = app.create_via_ws("accents", first).await;
            let mut other = app.ws().await;
            rejects(
                &mut other,
                json!({"type":"join","roomId":id,"nickname":second}),
                "nickname_taken",
            )
            .await;
            // Shown in NFC whatever the spelling sent.
            assert_eq!(app.member_names(id).await, [precomposed]);
            holder.expect_silence(Duration::from_millis(200)).await;

            // Content is NFC too, and keeps the zero-width joiners of an
            // emoji sequence.
            let family = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}";
            let sent = holder.chat(&format!("cafe\u{301} {family}")).await;
            assert_eq!(sent["message"]["nickname"], precomposed, "{sent}");
            let expected = format!("caf\u{E9} {family}");
            assert_eq!(sent["message"]["content"], expected.as_str(), "{sent}");
            let stored = app.messages(id, "").await;
            assert_eq!(stored[0]["content"], expected.as_str());
            assert_eq!(stored[0]["nickname"], precomposed);
        }
    }
);

both_stores_with!(chat_or_leave_outside_a_room_is_not_in_room, |_| {}, |app| {
    let mut c = app.ws().await;
    rejects(
        &mut c,
        json!({"type":"chat","content":"hello?"}),
        "not_in_room",
    )
    .await;
    rejects(&mut c, json!({"type":"leave"}), "not_in_room").await;
    // After leaving a room, the connection is back in the lobby.
    let joined = c.create("room", "ann").await;
    let id = joined_room_id(&joined);
    c.leave().await;
    rejects(
        &mut c,
        json!({"type":"chat","content":"still here?"}),
        "not_in_room",
    )
    .await;
    rejects(&mut c, json!({"type":"leave"}), "not_in_room").await;
    app.wait_room_gone(id, Duration::from_secs(5)).await;
    app.assert_room_gone(id).await;
});

memory_only_with!(a_binary_frame_closes_with_1003, |_| {}, |app| {
    let (mut c, id) = app.create_via_ws("bin", "ann").await;
    let (mut watcher, _) = app.join(id, "watcher").await;
    c.send_raw(WsMessage::Binary(bytes::Bytes::from_static(
        b"\x00\x01binary",
    )))
    .await;
    assert_eq!(c.close_code().await, Some(1003));
    // The closed member is gone from the room; the other is unaffected.
    let left = watcher.recv_type("memberLeft").await;
    assert_eq!(left["nickname"], "ann");
    watcher.assert_alive().await;
    watcher.chat("still fine").await;
});

memory_only_with!(
    a_frame_over_max_frame_bytes_closes_with_1009,
    |s| s.max_frame_bytes = 1024,
    |app| {
        let (mut c, _) = app.create_via_ws("big", "ann").await;
        // Just under the limit is an ordinary frame.
        let ok = json!({"type":"ping","ref":"p","pad":"x".repeat(900)}).to_string();
        assert!(ok.len() < 1024);
        c.send_text(ok).await;
        assert_eq!(c.reply_to("p").await["type"], "pong");
        // Over it, the socket is closed with 1009 (message too big).
        let big = json!({"type":"chat","content":"y".repeat(2000)}).to_string();
        c.send_text(big).await;
        assert_eq!(c.close_code().await, Some(1009));
        // The server is fine.
        let mut other = app.ws().await;
        other.assert_alive().await;
    }
);

/// Rate-limit settings for the flood tests: 5 frames of burst, then 2/s.
fn tight_rate(s: &mut chat_server::config::Settings) {
    s.ws_rate_burst = 5.0;
    s.ws_rate_per_sec = 2.0;
}

both_stores_with!(
    a_flood_is_rate_limited_without_affecting_other_users,
    tight_rate,
    |app| {
        let room = app.create_room("flood").await;
        let id = room["id"].as_u64().unwrap();
        let (mut alice, _) = app.join(id, "alice").await;
        let (mut bob, _) = app.join(id, "bob").await;
        let (mut mallory, _) = app.join(id, "mallory").await;
        alice.recv_type("memberJoined").await;
        alice.recv_type("memberJoined").await;
        bob.recv_type("memberJoined").await;

        const FLOOD: usize = 40;
        for i in 0..FLOOD {
            mallory
                .send(json!({"type":"chat","content":format!("spam {i}"),"ref":format!("s{i}")}))
                .await;
        }
        // Every flood frame gets exactly one reply: its echo or `rate_limited`.
        let (mut accepted, mut limited) = (Vec::new(), 0);
        while accepted.len() + limited < FLOOD {
            let v = mallory.recv().await;
            match v["type"].as_str() {
                Some("message") if v.get("ref").is_some() => accepted.push(v["message"].clone()),
                Some("error") => {
                    assert_eq!(v["code"], "rate_limited", "{v}");
                    limited += 1;
                }
                _ => {}
            }
        }
        assert!(
            limited >= FLOOD - 10,
            "only {limited} of {FLOOD} frames were limited"
        );
        assert!(!accepted.is_empty(), "the burst allows some frames through");

        // Bob, on his own budget, chats normally while mallory is limited.
        let bob_echo = bob.chat("business as usual").await;
        assert_eq!(bob_echo["message"]["nickname"], "bob");
        // Alice saw exactly the accepted flood messages and bob's, in order.
        let seen = alice.recv_messages(accepted.len() + 1).await;
        assert_eq!(&seen[..accepted.len()], &accepted[..]);
        assert_eq!(seen[accepted.len()], bob_echo["message"]);
        let stored = app.messages(id, "limit=500").await;
        assert_eq!(stored, seen, "only the accepted messages were stored");

        // Mallory is still connected and recovers once the bucket refills.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        mallory.assert_alive().await;
        assert_eq!(app.member_names(id).await, ["alice", "bob", "mallory"]);
    }
);

memory_only_with!(rate_limited_errors_echo_the_ref, tight_rate, |app| {
    let mut c = app.ws().await;
    for i in 0..20 {
        c.send(json!({"type":"ping","ref":format!("p{i}")})).await;
    }
    let mut limited = 0;
    for i in 0..20 {
        let v = c.recv().await;
        let expected = format!("p{i}");
        // docs/PROTOCOL.md: the direct reply to a frame carrying `ref`, an
        // `error` included, carries the same `ref`.
        assert_eq!(v["ref"], expected.as_str(), "reply {i} lacks its ref: {v}");
        if v["type"] == "error" {
            assert_error_frame(&v, "rate_limited", Some(&expected));
            limited += 1;
        }
    }
    assert!(limited >= 10, "{limited}");
});

both_stores_with!(values_are_trimmed_in_echoes_and_joined, |_| {}, |app| {
    let mut alice = app.ws().await;
    let joined = alice.create("  padded title  ", "\t alice  ").await;
    assert_eq!(joined["room"]["title"], "padded title");
    assert_eq!(joined["you"]["nickname"], "alice");
    assert_eq!(nicknames(&joined["members"]), ["alice"]);
    let id = joined_room_id(&joined);

    let mut bob = app.ws().await;
    bob.send(json!({"type":"join","roomId":id,"nickname":"  bob ","ref":"j"}))
        .await;
    let joined = bob.reply_to("j").await;
    assert_eq!(joined["you"]["nickname"], "bob");
    assert_eq!(nicknames(&joined["members"]), ["alice", "bob"]);
    let seen = alice.recv_type("memberJoined").await;
    assert_eq!(seen["member"]["nickname"], "bob");

    let echo = alice.chat("   hello there \n ").await;
    assert_eq!(echo["message"]["content"], "hello there");
    let got = bob.recv_type("message").await;
    assert_eq!(got["message"]["content"], "hello there");

    let (_, room) = app.room(id).await;
    assert_eq!(room["title"], "padded title");
    assert_eq!(app.member_names(id).await, ["alice", "bob"]);
    assert_eq!(app.messages(id, "").await[0]["content"], "hello there");
});
