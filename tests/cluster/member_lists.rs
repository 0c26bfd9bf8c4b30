//! `GET /api/rooms/{id}/members` lists the members on every server process,
//! in join order, even on a process that has no member of the room itself
//! (and so no room actor to ask).

use std::time::Duration;

use serde_json::json;

use crate::helpers::nicknames;
use crate::procs::Cluster;
use crate::wait::within;

const ALL: [usize; 3] = [0, 1, 2];

#[actix_rt::test]
async fn members_are_listed_by_a_process_without_a_local_member_in_join_order() {
    within(Duration::from_secs(40), "the test", async {
        let cluster = Cluster::start(3).await;
        // Created on node 2, which never gets a member of its own.
        let room = cluster.create_room(2, "elsewhere").await;
        let mut clients = Vec::new();
        for (name, node) in [("ann", 0), ("bob", 1), ("cat", 0), ("dan", 1)] {
            let mut ws = cluster.ws(node).await;
            ws.join(room, name).await;
            clients.push(ws);
        }
        // The joins are committed before `joined` is sent: no waiting.
        let (status, members) = cluster.get(2, &format!("/api/rooms/{room}/members")).await;
        assert_eq!(status, 200, "{members}");
        assert_eq!(nicknames(&members), ["ann", "bob", "cat", "dan"]);
        for m in members.as_array().into_iter().flatten() {
            assert!(m["joinedAt"].is_string(), "member without joinedAt: {m}");
        }
        assert_eq!(cluster.member_count(2, room).await, Some(4));
        cluster
            .wait_members_agree(
                &ALL,
                room,
                &["ann", "bob", "cat", "dan"],
                Duration::from_secs(5),
            )
            .await;

        // A member comes and goes on node 2: afterwards it again has no
        // local member, and still lists everyone else.
        let mut eve = cluster.ws(2).await;
        eve.join(room, "eve").await;
        cluster
            .wait_members_agree(
                &ALL,
                room,
                &["ann", "bob", "cat", "dan", "eve"],
                Duration::from_secs(5),
            )
            .await;
        eve.leave().await;
        cluster
            .wait_members_agree(
                &ALL,
                room,
                &["ann", "bob", "cat", "dan"],
                Duration::from_secs(5),
            )
            .await;

        // A leave elsewhere shows on node 2 too, order kept.
        clients.remove(1).leave().await;
        cluster
            .wait_members_agree(&ALL, room, &["ann", "cat", "dan"], Duration::from_secs(5))
            .await;
        let (_, members) = cluster.get(2, &format!("/api/rooms/{room}/members")).await;
        assert_eq!(nicknames(&members), ["ann", "cat", "dan"]);
    })
    .await;
}

/// The members of `room` in join order, as the store recorded the joins.
async fn stored_order(conn: &mut mysql_async::Conn, room: u64) -> Vec<String> {
    use mysql_async::prelude::Queryable;
    conn.exec(
        "SELECT nickname FROM chatMember WHERE room_id = ? ORDER BY id",
        (room,),
    )
    .await
    .unwrap_or_else(|e| panic!("members of room {room}: {e}"))
}

#[actix_rt::test]
async fn joins_at_the_same_moment_on_two_processes_are_listed_in_one_join_order_everywhere() {
    within(Duration::from_secs(40), "the test", async {
        let cluster = Cluster::start(3).await;
        let pool = mysql_async::Pool::new(cluster.database.url.as_str());
        let mut conn = pool.get_conn().await.expect("connect to the test database");
        for round in 0..20 {
            let mut ann = cluster.ws(2).await;
            let room = ann.create(&format!("order-{round}"), "ann").await["room"]["id"]
                .as_u64()
                .expect("room id");
            let mut bob = cluster.ws(0).await;
            let mut cat = cluster.ws(1).await;
            futures_util::future::join(
                bob.send(json!({"type":"join","roomId":room,"nickname":"bob","ref":"j"})),
                cat.send(json!({"type":"join","roomId":room,"nickname":"cat","ref":"j"})),
            )
            .await;
            bob.reply_to("j").await;
            cat.reply_to("j").await;
            let order = stored_order(&mut conn, room).await;
            let order: Vec<&str> = order.iter().map(String::as_str).collect();
            cluster
                .wait_members_agree(&ALL, room, &order, Duration::from_secs(3))
                .await;
            bob.close().await;
            cat.close().await;
            ann.close().await;
        }
        drop(conn);
        let _ = pool.disconnect().await;
    })
    .await;
}
