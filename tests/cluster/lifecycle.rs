//! Guarantee 4, room lifecycle, across processes: member lists and counts
//! agree everywhere; a room whose last members leave on two processes at
//! once is deleted (with its members and messages) exactly once; a join
//! racing that deletion gets a live room or `room_not_found`; a room nobody
//! joins goes away after the grace period on every process.

use std::time::{Duration, Instant};

use actix_http::ws::{CloseCode, Message as WsMessage};
use futures_util::future::join;
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

use crate::helpers::{nicknames, WsClient};
use crate::procs::{redis_url, Cluster};
use crate::wait::within;

const ALL: [usize; 3] = [0, 1, 2];
const AGREE: Duration = Duration::from_secs(5);
const ROUNDS: usize = 15;

/// `sql` (one `?` for the room id) answering one number.
async fn count(conn: &mut mysql_async::Conn, sql: &str, room: u64) -> u64 {
    conn.exec_first::<u64, _, _>(sql, (room,))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or(0)
}

/// Rows of `room` left in each table (rooms, members, messages), read
/// directly from the database.
async fn rows_left(conn: &mut mysql_async::Conn, room: u64) -> (u64, u64, u64) {
    (
        count(conn, "SELECT COUNT(*) FROM chatRoom WHERE id = ?", room).await,
        count(
            conn,
            "SELECT COUNT(*) FROM chatMember WHERE room_id = ?",
            room,
        )
        .await,
        count(conn, "SELECT COUNT(*) FROM chatMsg WHERE room_id = ?", room).await,
    )
}

/// Sends `leave` or closes the socket; with `leave`, the reply must be
/// `left` (an `error` panics).
async fn leave_or_close(mut ws: WsClient, close: bool) {
    if close {
        ws.close().await;
    } else {
        let left = ws.leave().await;
        assert_eq!(left["type"], "left", "{left}");
    }
}

/// Sends `leave` (ref `bye`) or a close frame, without waiting.
async fn send_leave_or_close(ws: &mut WsClient, close: bool) {
    if close {
        ws.send_raw(WsMessage::Close(Some(CloseCode::Normal.into())))
            .await;
    } else {
        ws.send(json!({"type":"leave","ref":"bye"})).await;
    }
}

/// After `send_leave_or_close`: a leave must be answered by `left`.
async fn expect_left(mut ws: WsClient, closed: bool) {
    if !closed {
        let left = ws.reply_or_error("bye").await;
        assert_eq!(left["type"], "left", "{left}");
    }
}

#[actix_rt::test]
async fn member_lists_and_counts_agree_on_every_process_after_joins_and_leaves() {
    within(Duration::from_secs(60), "the test", async {
        let cluster = Cluster::start(3).await;
        let room = cluster.create_room(0, "lists").await;
        let mut clients: Vec<(String, WsClient)> = Vec::new();
        let mut expected: Vec<String> = Vec::new();
        for (name, node) in [
            ("ann", 0),
            ("bob", 1),
            ("cat", 2),
            ("dan", 0),
            ("eve", 1),
            ("fay", 2),
        ] {
            let mut ws = cluster.ws(node).await;
            let joined = ws.join(room, name).await;
            expected.push(name.to_string());
            assert_eq!(nicknames(&joined["members"]), expected, "{name}'s joined");
            assert_eq!(joined["room"]["memberCount"], expected.len(), "{joined}");
            clients.push((name.to_string(), ws));
            let want: Vec<&str> = expected.iter().map(String::as_str).collect();
            cluster.wait_members_agree(&ALL, room, &want, AGREE).await;
        }

        // Leaves and closes spread over the nodes, with one more join.
        for (name, close) in [("bob", false), ("fay", true), ("ann", false), ("dan", true)] {
            let i = clients
                .iter()
                .position(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name} not connected"));
            let (_, ws) = clients.remove(i);
            leave_or_close(ws, close).await;
            expected.retain(|n| n != name);
            let want: Vec<&str> = expected.iter().map(String::as_str).collect();
            cluster.wait_members_agree(&ALL, room, &want, AGREE).await;
            if name == "fay" {
                let mut gus = cluster.ws(2).await;
                let joined = gus.join(room, "gus").await;
                expected.push("gus".into());
                assert_eq!(nicknames(&joined["members"]), expected, "{joined}");
                clients.push(("gus".into(), gus));
                let want: Vec<&str> = expected.iter().map(String::as_str).collect();
                cluster.wait_members_agree(&ALL, room, &want, AGREE).await;
            }
        }
        assert_eq!(expected, ["cat", "eve", "gus"]);

        // Every remaining member heard every change, in the order it
        // happened (each change was complete everywhere before the next).
        for (name, ws) in clients.iter_mut() {
            let mut events = Vec::new();
            while let Some(crate::helpers::Incoming::Json(v)) =
                ws.next_within(Duration::from_millis(300)).await
            {
                match v["type"].as_str() {
                    Some("memberJoined") => events.push(format!(
                        "+{}",
                        v["member"]["nickname"].as_str().unwrap_or("?")
                    )),
                    Some("memberLeft") => {
                        events.push(format!("-{}", v["nickname"].as_str().unwrap_or("?")))
                    }
                    _ => panic!("{name}: unexpected frame {v}"),
                }
            }
            let all = [
                "+dan", "+eve", "+fay", "-bob", "-fay", "+gus", "-ann", "-dan",
            ];
            let from = match name.as_str() {
                "cat" => 0,
                "eve" => 2,
                _ => 6, // gus
            };
            assert_eq!(events, all[from..], "{name}'s member events");
        }
    })
    .await;
}

#[actix_rt::test]
async fn last_two_leaves_on_two_processes_delete_the_room_once() {
    within(Duration::from_secs(90), "the test", async {
        let cluster = Cluster::start_logged(3, &redis_url(), &[]).await;
        let pool = mysql_async::Pool::new(cluster.database.url.as_str());
        let mut conn = pool.get_conn().await.expect("connect to the test database");
        let mut rooms = Vec::new();
        for round in 0..ROUNDS {
            let mut a = cluster.ws(0).await;
            let joined = a.create(&format!("last-{round}"), "a").await;
            let room = joined["room"]["id"].as_u64().expect("room id");
            let mut b = cluster.ws(1).await;
            b.join(room, "b").await;
            a.recv_type("memberJoined").await;
            let said = a.chat("about to go").await;
            assert_eq!(b.recv_type("message").await["message"], said["message"]);
            assert_eq!(rows_left(&mut conn, room).await, (1, 2, 1));

            // 0: both leave, 1: both close, 2: one of each.
            let (close_a, close_b) = match round % 3 {
                0 => (false, false),
                1 => (true, true),
                _ => (false, true),
            };
            // Back to back; one round in five exactly together, the others
            // one or the other a little ahead, to sweep the race window.
            let offset_us = ((round % 5) as i64 - 2) * 150;
            let gap = Duration::from_micros(offset_us.unsigned_abs());
            if offset_us <= 0 {
                send_leave_or_close(&mut a, close_a).await;
                std::thread::sleep(gap);
                send_leave_or_close(&mut b, close_b).await;
            } else {
                send_leave_or_close(&mut b, close_b).await;
                std::thread::sleep(gap);
                send_leave_or_close(&mut a, close_a).await;
            }
            join(expect_left(a, close_a), expect_left(b, close_b)).await;

            cluster.wait_room_gone(&ALL, room, AGREE).await;
            for i in ALL {
                let (status, body) = cluster.get(i, &format!("/api/rooms/{room}/members")).await;
                assert_eq!(status, 404, "round {round}: members on node {i}: {body}");
                let (_, list) = cluster.get(i, "/api/rooms").await;
                assert!(
                    !list
                        .as_array()
                        .is_some_and(|l| l.iter().any(|r| r["id"] == room)),
                    "round {round}: room {room} still listed on node {i}"
                );
            }
            assert_eq!(
                rows_left(&mut conn, room).await,
                (0, 0, 0),
                "round {round}: rows of room {room} left (rooms, members, messages)"
            );
            rooms.push(room);
        }
        drop(conn);
        let _ = pool.disconnect().await;

        // Exactly one process deleted each room; nobody logged a problem.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for room in rooms {
            let deletions =
                cluster.count_in_logs(&format!("room {room}: last member left, room deleted"));
            assert_eq!(deletions, 1, "room {room} deleted {deletions} times");
        }
        let warnings = cluster.warnings();
        assert!(
            warnings.is_empty(),
            "problems logged:\n{}",
            warnings.join("\n")
        );
        let mut cluster = cluster;
        cluster.assert_running();
    })
    .await;
}

#[actix_rt::test]
async fn a_join_racing_the_last_leave_gets_a_live_room_or_room_not_found() {
    within(Duration::from_secs(90), "the test", async {
        let cluster = Cluster::start_logged(3, &redis_url(), &[]).await;
        let pool = mysql_async::Pool::new(cluster.database.url.as_str());
        let mut conn = pool.get_conn().await.expect("connect to the test database");
        let (mut won, mut lost_before, mut not_found) = (0, 0, 0);
        for round in 0..ROUNDS {
            let mut a = cluster.ws(0).await;
            let joined = a.create(&format!("race-{round}"), "a").await;
            let room = joined["room"]["id"].as_u64().expect("room id");
            let mut b = cluster.ws(1).await;

            // Both frames leave here back to back; the second is held back
            // by a few hundred microseconds that vary per round (the leave
            // first in early rounds, the join first in later ones), so the
            // rounds sweep the whole window in which the two race.
            let leave = json!({"type":"leave","ref":"bye"});
            let join_frame = json!({"type":"join","roomId":room,"nickname":"b","ref":"j"});
            let offset_us = (round as i64 - 5) * 200;
            let gap = Duration::from_micros(offset_us.unsigned_abs());
            if offset_us < 0 {
                a.send(leave).await;
                std::thread::sleep(gap);
                b.send(join_frame).await;
            } else {
                b.send(join_frame).await;
                std::thread::sleep(gap);
                a.send(leave).await;
            }
            let left = a.reply_or_error("bye").await;
            assert_eq!(left["type"], "left", "round {round}: a's leave: {left}");
            let reply = b.reply_or_error("j").await;

            match reply["type"].as_str() {
                Some("joined") => {
                    assert_eq!(reply["room"]["id"], room, "{reply}");
                    let members = nicknames(&reply["members"]);
                    let member_count = &reply["room"]["memberCount"];
                    // The join landed after the leave (a fresh room of one),
                    // or just before it (a still had its seat).
                    if members == ["b"] && *member_count == 1 {
                        won += 1;
                    } else if members == ["a", "b"] && *member_count == 2 {
                        lost_before += 1;
                    } else {
                        panic!("round {round}: joined a half-deleted room? {reply}");
                    }
                    cluster.wait_members_agree(&ALL, room, &["b"], AGREE).await;
                    let (rooms, members, _) = rows_left(&mut conn, room).await;
                    assert_eq!(
                        (rooms, members),
                        (1, 1),
                        "round {round}: rows of room {room}"
                    );
                    let stored = count(
                        &mut conn,
                        "SELECT join_member_count FROM chatRoom WHERE id = ?",
                        room,
                    )
                    .await;
                    assert_eq!(stored, 1, "round {round}: stored join_member_count");
                    // b chats and leaves: the room works, then goes.
                    let said = b.chat("still here").await;
                    assert_eq!(said["message"]["roomId"], room);
                    b.leave().await;
                }
                Some("error") => {
                    assert_eq!(reply["code"], "room_not_found", "round {round}: {reply}");
                    not_found += 1;
                    b.assert_alive().await;
                }
                _ => panic!("round {round}: unexpected reply to the join: {reply}"),
            }
            cluster.wait_room_gone(&ALL, room, AGREE).await;
            assert_eq!(
                rows_left(&mut conn, room).await,
                (0, 0, 0),
                "round {round}: rows of room {room} left (rooms, members, messages)"
            );
        }
        drop(conn);
        let _ = pool.disconnect().await;
        eprintln!(
            "join racing last leave: joined a fresh room {won}x, joined before the leave \
             {lost_before}x, room_not_found {not_found}x"
        );
        let warnings = cluster.warnings();
        assert!(
            warnings.is_empty(),
            "problems logged:\n{}",
            warnings.join("\n")
        );
        let mut cluster = cluster;
        cluster.assert_running();
    })
    .await;
}

#[actix_rt::test]
async fn a_room_nobody_joins_is_deleted_after_the_grace_period_on_every_process() {
    within(Duration::from_secs(40), "the test", async {
        let cluster = Cluster::start_with(3, &redis_url(), &[("EMPTY_ROOM_GRACE_SECS", "1")]).await;
        // Creation times are whole seconds: create just after a second
        // starts, so the room surely lives long enough to be seen.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let to_next_second = Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos()));
        tokio::time::sleep(to_next_second + Duration::from_millis(20)).await;

        let created = Instant::now();
        let unjoined = cluster.create_room(0, "nobody comes").await;
        let joined_room = cluster.create_room(1, "somebody comes").await;
        let mut member = cluster.ws(2).await;
        member.join(joined_room, "early").await;
        for i in ALL {
            let (status, body) = cluster.get(i, &format!("/api/rooms/{unjoined}")).await;
            assert_eq!(status, 200, "node {i}: {body}");
            assert_eq!(body["memberCount"], 0, "node {i}: {body}");
            let members: Value = cluster
                .get(i, &format!("/api/rooms/{unjoined}/members"))
                .await
                .1;
            assert_eq!(members, json!([]), "node {i}");
        }

        let took = cluster
            .wait_room_gone(&ALL, unjoined, Duration::from_secs(10))
            .await;
        eprintln!("grace: unjoined room gone on every node {took:?} after its creation");
        for i in ALL {
            let (status, _) = cluster
                .get(i, &format!("/api/rooms/{unjoined}/messages"))
                .await;
            assert_eq!(status, 404, "node {i}: messages of the deleted room");
        }
        // The room somebody joined in time stays, well past the grace.
        let past_grace = Duration::from_millis(2500).saturating_sub(created.elapsed());
        tokio::time::sleep(past_grace).await;
        cluster
            .wait_members_agree(&ALL, joined_room, &["early"], AGREE)
            .await;
        member.assert_alive().await;
    })
    .await;
}
