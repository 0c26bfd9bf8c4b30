//! The WebSocket protocol: every message type, in both store modes.

use serde_json::json;

use crate::both_stores;
use crate::helpers::*;

both_stores!(create_join_chat_and_leave, |app| {
    let mut alice = app.ws().await;
    let joined = alice.create("general", "alice").await;
    assert_eq!(joined["type"], "joined");
    assert_eq!(joined["room"]["title"], "general");
    assert_eq!(joined["room"]["memberCount"], 1);
    assert_eq!(joined["you"]["nickname"], "alice");
    assert_eq!(nicknames(&joined["members"]), ["alice"]);
    let room_id = joined["room"]["id"].as_u64().unwrap();

    let (mut bob, joined) = app.join(room_id, "bob").await;
    assert_eq!(nicknames(&joined["members"]), ["alice", "bob"]);
    assert_eq!(joined["room"]["memberCount"], 2);
    let seen = alice.recv_type("memberJoined").await;
    assert_eq!(seen["member"]["nickname"], "bob");
    assert_eq!(seen["roomId"], room_id);

    let echo = alice.chat("hello 👋").await;
    assert_eq!(echo["type"], "message");
    assert_eq!(echo["message"]["id"], 1);
    assert_eq!(echo["message"]["nickname"], "alice");
    assert_eq!(echo["message"]["content"], "hello 👋");
    let got = bob.recv_type("message").await;
    assert_eq!(got["message"], echo["message"]);
    assert!(
        got.get("ref").is_none(),
        "only the sender's echo carries the ref"
    );

    bob.send(json!({"type":"leave","ref":"l"})).await;
    let left = bob.reply_to("l").await;
    assert_eq!(left, json!({"type":"left","roomId":room_id,"ref":"l"}));
    let gone = alice.recv_type("memberLeft").await;
    assert_eq!(
        gone,
        json!({"type":"memberLeft","roomId":room_id,"nickname":"bob"})
    );
    assert_eq!(app.member_names(room_id).await, ["alice"]);

    bob.send(json!({"type":"ping","ref":"p"})).await;
    assert_eq!(bob.reply_to("p").await, json!({"type":"pong","ref":"p"}));
});
