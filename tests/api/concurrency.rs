//! Real concurrency: many clients joining, chatting and leaving at the same
//! moment, in one room and in many rooms, and joins racing the deletion of
//! a room.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::both_stores_with;
use crate::helpers::*;
use crate::wait::{eventually, within};

/// Sends `contents` as chats (refs `"<tag>-<i>"`) without waiting for echoes.
async fn send_chats(c: &mut WsClient, tag: &str, contents: &[String]) {
    for (i, content) in contents.iter().enumerate() {
        c.send(json!({"type":"chat","content":content,"ref":format!("{tag}-{i}")}))
            .await;
    }
}

fn message_ids(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["message"]["id"].as_u64().unwrap_or_else(|| panic!("{f}")))
        .collect()
}

both_stores_with!(
    thirty_clients_join_chat_and_leave_one_room_at_once,
    |_| {},
    |app| {
        const N: usize = 30;
        const EACH: usize = 5;
        let id = app.create_room("crowd").await["id"].as_u64().unwrap();
        let app = &app;

        let joined = within(
            SCENARIO_TIMEOUT,
            "30 concurrent joins",
            join_all((0..N).map(|i| async move { app.join(id, &format!("user{i:02}")).await })),
        )
        .await;
        // Joins were serialized: each saw a distinct count, 1 through 30.
        let mut counts: Vec<u64> = joined
            .iter()
            .map(|(_, j)| j["room"]["memberCount"].as_u64().unwrap())
            .collect();
        counts.sort_unstable();
        assert_eq!(counts, (1..=N as u64).collect::<Vec<_>>());
        for (_, j) in &joined {
            let members = nicknames(&j["members"]);
            assert_eq!(
                members.len() as u64,
                j["room"]["memberCount"].as_u64().unwrap(),
                "{j}"
            );
            assert_eq!(
                members.last().unwrap(),
                j["you"]["nickname"].as_str().unwrap()
            );
        }
        let (status, room) = app.room(id).await;
        assert_eq!(status, 200);
        assert_eq!(room["memberCount"], N, "{room}");
        let names = app.member_names(id).await;
        assert_eq!(names.len(), N);
        let distinct: BTreeSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), N, "{names:?}");

        // Everyone chats at once; everyone receives all N * EACH messages.
        let mut clients: Vec<WsClient> = joined.into_iter().map(|(c, _)| c).collect();
        let received = within(
            SCENARIO_TIMEOUT,
            "30 clients chatting",
            join_all(clients.iter_mut().enumerate().map(|(i, c)| async move {
                let contents: Vec<String> = (0..EACH).map(|k| format!("u{i}-{k}")).collect();
                send_chats(c, "m", &contents).await;
                c.recv_message_frames(N * EACH).await
            })),
        )
        .await;
        for (i, frames) in received.iter().enumerate() {
            assert_eq!(
                message_ids(frames),
                (1..=(N * EACH) as u64).collect::<Vec<_>>(),
                "client {i}"
            );
            let own: Vec<&Value> = frames.iter().filter(|f| f.get("ref").is_some()).collect();
            assert_eq!(own.len(), EACH, "client {i} echoes");
            for f in own {
                assert_eq!(f["message"]["nickname"], format!("user{i:02}"));
            }
        }
        assert_eq!(app.messages(id, "limit=500").await.len(), N * EACH);

        // Everyone leaves at once.
        let lefts = within(
            SCENARIO_TIMEOUT,
            "30 concurrent leaves",
            join_all(clients.iter_mut().map(|c| c.leave())),
        )
        .await;
        assert!(lefts
            .iter()
            .all(|l| l["type"] == "left" && l["roomId"] == id));
        app.wait_room_gone(id, Duration::from_secs(5)).await;
        app.assert_room_gone(id).await;
        if let Some(db) = app.database() {
            assert_eq!(db.query_u64("SELECT COUNT(*) FROM chatMember").await, 0);
            assert_eq!(db.query_u64("SELECT COUNT(*) FROM chatMsg").await, 0);
            assert_eq!(db.query_u64("SELECT COUNT(*) FROM chatRoom").await, 0);
        }
        // The clients are all fine in the lobby.
        for c in clients.iter_mut() {
            c.assert_alive().await;
        }
    }
);

both_stores_with!(
    concurrent_senders_are_seen_in_one_gap_free_order_by_everyone,
    |_| {},
    |app| {
        const SENDERS: usize = 5;
        const EACH: usize = 20;
        const TOTAL: usize = SENDERS * EACH;
        let id = app.create_room("order").await["id"].as_u64().unwrap();
        let mut senders = Vec::new();
        for k in 0..SENDERS {
            senders.push(app.join(id, &format!("s{k}")).await.0);
        }
        let mut listeners = Vec::new();
        for k in 0..3 {
            listeners.push(app.join(id, &format!("l{k}")).await.0);
        }

        let sending = join_all(senders.iter_mut().enumerate().map(|(k, c)| async move {
            let contents: Vec<String> = (0..EACH).map(|i| format!("s{k}-{i}")).collect();
            send_chats(c, &format!("s{k}"), &contents).await;
            c.recv_message_frames(TOTAL).await
        }));
        let listening = join_all(listeners.iter_mut().map(|c| c.recv_message_frames(TOTAL)));
        let (sent_views, listened) = within(
            SCENARIO_TIMEOUT,
            "5 senders x 20 messages",
            futures_util::future::join(sending, listening),
        )
        .await;

        let expected_ids: Vec<u64> = (1..=TOTAL as u64).collect();
        let strip = |frames: &[Value]| -> Vec<Value> {
            frames.iter().map(|f| f["message"].clone()).collect()
        };
        let reference = strip(&listened[0]);
        for (n, frames) in listened.iter().enumerate() {
            assert_eq!(
                message_ids(frames),
                expected_ids,
                "listener {n}: ids 1..=100 in order"
            );
            assert!(
                frames.iter().all(|f| f.get("ref").is_none()),
                "listeners get no refs"
            );
            assert_eq!(strip(frames), reference, "listeners disagree");
        }
        for (k, frames) in sent_views.iter().enumerate() {
            assert_eq!(message_ids(frames), expected_ids, "sender {k}");
            assert_eq!(strip(frames), reference, "sender {k} saw another order");
            // Its own messages carry its refs and keep its send order.
            let own: Vec<(&str, &str)> = frames
                .iter()
                .filter(|f| f["message"]["nickname"] == format!("s{k}"))
                .map(|f| {
                    (
                        f["ref"].as_str().unwrap_or("<none>"),
                        f["message"]["content"].as_str().unwrap(),
                    )
                })
                .collect();
            let expected: Vec<(String, String)> = (0..EACH)
                .map(|i| (format!("s{k}-{i}"), format!("s{k}-{i}")))
                .collect();
            let own: Vec<(String, String)> = own
                .into_iter()
                .map(|(r, c)| (r.to_string(), c.to_string()))
                .collect();
            assert_eq!(
                own, expected,
                "sender {k}: own messages in send order, with refs"
            );
        }
        let stored = app.messages(id, "limit=500").await;
        assert_eq!(stored, reference, "stored history equals what members saw");
    }
);

both_stores_with!(
    of_twenty_racing_joins_with_one_nickname_exactly_one_wins,
    |_| {},
    |app| {
        let id = app.create_room("contested").await["id"].as_u64().unwrap();
        let mut clients = join_all((0..20).map(|_| app.ws())).await;
        let replies = within(
            SCENARIO_TIMEOUT,
            "20 racing joins",
            join_all(clients.iter_mut().map(|c| async move {
                c.send(json!({"type":"join","roomId":id,"nickname":"dup","ref":"j"}))
                    .await;
                c.reply_or_error("j").await
            })),
        )
        .await;
        let winners = replies.iter().filter(|r| r["type"] == "joined").count();
        assert_eq!(winners, 1, "{replies:?}");
        for r in replies.iter().filter(|r| r["type"] != "joined") {
            assert_error_frame(r, "nickname_taken", Some("j"));
        }
        assert_eq!(app.member_names(id).await, ["dup"]);
        assert_eq!(app.room(id).await.1["memberCount"], 1);
        // The losers are in the lobby and can still use the socket.
        for c in clients.iter_mut() {
            c.assert_alive().await;
        }
    }
);

both_stores_with!(
    twenty_rooms_chatting_in_parallel_stay_separate_and_exact,
    |_| {},
    |app| {
        const ROOMS: usize = 20;
        const MEMBERS: usize = 3;
        const EACH: usize = 5;
        let mut room_ids = Vec::new();
        for r in 0..ROOMS {
            room_ids.push(
                app.create_room(&format!("room {r}")).await["id"]
                    .as_u64()
                    .unwrap(),
            );
        }
        let app = &app;
        let seats: Vec<(u64, String)> = room_ids
            .iter()
            .flat_map(|&id| (0..MEMBERS).map(move |m| (id, format!("m{m}"))))
            .collect();
        let mut clients = within(
            SCENARIO_TIMEOUT,
            "60 concurrent joins",
            join_all(
                seats
                    .iter()
                    .map(|(id, nick)| async move { app.join(*id, nick).await.0 }),
            ),
        )
        .await;
        for &id in &room_ids {
            assert_eq!(app.room(id).await.1["memberCount"], MEMBERS, "room {id}");
        }

        let received = within(
            SCENARIO_TIMEOUT,
            "20 rooms chatting",
            join_all(
                clients
                    .iter_mut()
                    .zip(&seats)
                    .map(|(c, (id, nick))| async move {
                        let contents: Vec<String> =
                            (0..EACH).map(|k| format!("{id}/{nick}/{k}")).collect();
                        send_chats(c, "m", &contents).await;
                        c.recv_message_frames(MEMBERS * EACH).await
                    }),
            ),
        )
        .await;
        let mut per_room: HashMap<u64, Vec<Value>> = HashMap::new();
        for (frames, (id, nick)) in received.iter().zip(&seats) {
            let ids = message_ids(frames);
            assert_eq!(
                ids,
                (1..=(MEMBERS * EACH) as u64).collect::<Vec<_>>(),
                "{nick} in {id}"
            );
            for f in frames {
                assert_eq!(
                    f["message"]["roomId"], *id,
                    "a message leaked across rooms: {f}"
                );
                let content = f["message"]["content"].as_str().unwrap();
                assert!(content.starts_with(&format!("{id}/")), "{f}");
            }
            let messages: Vec<Value> = frames.iter().map(|f| f["message"].clone()).collect();
            match per_room.get(id) {
                Some(first) => assert_eq!(&messages, first, "members of room {id} disagree"),
                None => {
                    per_room.insert(*id, messages);
                }
            }
        }
        for &id in &room_ids {
            assert_eq!(
                app.messages(id, "limit=500").await,
                per_room[&id],
                "room {id} stored"
            );
            // Joined concurrently: any order, but exactly these three.
            let mut names = app.member_names(id).await;
            names.sort();
            assert_eq!(names, ["m0", "m1", "m2"], "room {id}");
        }
        // Nobody receives anything more.
        join_all(
            clients
                .iter_mut()
                .map(|c| c.expect_silence(Duration::from_millis(200))),
        )
        .await;
    }
);

both_stores_with!(
    a_join_racing_the_last_leave_gets_a_live_room_or_room_not_found,
    |_| {},
    |app| {
        let mut outcomes: HashMap<&str, usize> = HashMap::new();
        for round in 0..20 {
            let (mut a, id) = app.create_via_ws(&format!("race {round}"), "a").await;
            let mut b = app.ws().await;
            // Shift a's departure by 0..=600 µs so that the join lands at
            // different points of the leave and the room's deletion.
            let shift = Duration::from_micros(150 * (round % 5) as u64);
            let a_goes = async {
                let start = std::time::Instant::now();
                while start.elapsed() < shift {
                    tokio::task::yield_now().await;
                }
                if round % 4 == 3 {
                    drop(a); // disconnect instead of leave
                    None
                } else {
                    a.send(json!({"type":"leave","ref":"l"})).await;
                    Some(a.reply_to("l").await)
                }
            };
            let b_joins = async {
                b.send(json!({"type":"join","roomId":id,"nickname":"b","ref":"j"}))
                    .await;
                b.reply_or_error("j").await
            };
            let (left, reply) = if round % 2 == 0 {
                within(
                    SCENARIO_TIMEOUT,
                    "race",
                    futures_util::future::join(a_goes, b_joins),
                )
                .await
            } else {
                let (reply, left) = within(
                    SCENARIO_TIMEOUT,
                    "race",
                    futures_util::future::join(b_joins, a_goes),
                )
                .await;
                (left, reply)
            };
            if let Some(left) = left {
                assert_eq!(left["type"], "left", "round {round}: {left}");
            }
            match reply["type"].as_str() {
                Some("joined") => {
                    let count = reply["room"]["memberCount"].as_u64().unwrap();
                    let members = nicknames(&reply["members"]);
                    match count {
                        1 => assert_eq!(members, ["b"], "round {round}: {reply}"),
                        2 => assert_eq!(members, ["a", "b"], "round {round}: {reply}"),
                        _ => panic!("round {round}: impossible count: {reply}"),
                    }
                    *outcomes
                        .entry(if count == 1 {
                            "joined-after"
                        } else {
                            "joined-before"
                        })
                        .or_default() += 1;
                    // The room is live, with b alone once a's leave is through.
                    let app = &app;
                    let alone = json!([reply["you"].clone()]);
                    let alone = &alone;
                    eventually(Duration::from_secs(5), "b alone in the room", || async move {
                    app.get(&format!("/api/rooms/{id}/members")).await.1 == *alone
                })
                .await;
                    let (status, room) = app.room(id).await;
                    assert_eq!(
                        status, 200,
                        "round {round}: b joined a room that is gone: {room}"
                    );
                    assert_eq!(room["memberCount"], 1, "round {round}: {room}");
                    let echo = b.chat("made it").await;
                    assert_eq!(echo["message"]["roomId"], id);
                    b.leave().await;
                    app.wait_room_gone(id, Duration::from_secs(5)).await;
                }
                _ => {
                    assert_error_frame(&reply, "room_not_found", Some("j"));
                    *outcomes.entry("room_not_found").or_default() += 1;
                    let (status, room) = app.room(id).await;
                    assert_eq!(
                        status, 404,
                        "round {round}: join refused but room exists: {room}"
                    );
                    b.assert_alive().await;
                }
            }
        }
        eprintln!("join/leave race outcomes: {outcomes:?}");
    }
);
