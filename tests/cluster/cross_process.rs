//! Chat and member lists across processes.

use std::time::Duration;

use crate::helpers::nicknames;
use crate::procs::Cluster;
use crate::wait::eventually;

#[actix_rt::test]
async fn members_on_three_processes_chat_and_see_each_other() {
    let cluster = Cluster::start(3).await;
    let mut a = cluster.ws(0).await;
    let joined = a.create("cross", "ann").await;
    let room = joined["room"]["id"].as_u64().unwrap();
    let mut b = cluster.ws(1).await;
    let jb = b.join(room, "bob").await;
    assert_eq!(nicknames(&jb["members"]), ["ann", "bob"]);
    assert_eq!(
        a.recv_type("memberJoined").await["member"]["nickname"],
        "bob"
    );
    let mut c = cluster.ws(2).await;
    let jc = c.join(room, "cat").await;
    assert_eq!(nicknames(&jc["members"]), ["ann", "bob", "cat"]);
    assert_eq!(jc["room"]["memberCount"], 3);
    assert_eq!(
        a.recv_type("memberJoined").await["member"]["nickname"],
        "cat"
    );
    assert_eq!(
        b.recv_type("memberJoined").await["member"]["nickname"],
        "cat"
    );

    for i in 0..3 {
        let (status, members) = cluster.get(i, &format!("/api/rooms/{room}/members")).await;
        assert_eq!(status, 200);
        assert_eq!(nicknames(&members), ["ann", "bob", "cat"], "node {i}");
        let (_, r) = cluster.get(i, &format!("/api/rooms/{room}")).await;
        assert_eq!(r["memberCount"], 3, "node {i}");
    }

    let sent = b.chat("hello from node 1").await;
    assert_eq!(a.recv_type("message").await["message"], sent["message"]);
    assert_eq!(c.recv_type("message").await["message"], sent["message"]);

    c.close().await;
    assert_eq!(a.recv_type("memberLeft").await["nickname"], "cat");
    assert_eq!(b.recv_type("memberLeft").await["nickname"], "cat");
    eventually(
        Duration::from_secs(5),
        "cat gone from every node's list",
        || async {
            let mut all = true;
            for i in 0..3 {
                let (_, m) = cluster.get(i, &format!("/api/rooms/{room}/members")).await;
                all &= nicknames(&m) == ["ann", "bob"];
            }
            all
        },
    )
    .await;
}

/// Interest-based fan-out: only processes with members in a room subscribe
/// to its channel, so a busy room costs nothing on the others.
#[actix_rt::test]
async fn only_processes_with_members_in_a_room_subscribe_to_its_channel() {
    use deadpool_redis::redis;
    let cluster = Cluster::start(3).await;
    let mut a = cluster.ws(0).await;
    let room = a.create("interest", "ann").await["room"]["id"]
        .as_u64()
        .unwrap();
    let mut b = cluster.ws(1).await;
    b.join(room, "bob").await;
    let channel = format!("{}:room:{room}", cluster.prefix);
    let client = redis::Client::open(cluster.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let subscribers = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let channel = channel.clone();
        async move {
            let (_, n): (String, u64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .unwrap();
            n
        }
    };
    eventually(Duration::from_secs(5), "nodes 0 and 1 subscribed", || {
        let f = subscribers(&mut conn);
        async move { f.await == 2 }
    })
    .await;
    // Node 2 gets a member: it subscribes; the member leaves: it stops.
    let mut c = cluster.ws(2).await;
    c.join(room, "cat").await;
    eventually(Duration::from_secs(5), "node 2 subscribed", || {
        let f = subscribers(&mut conn);
        async move { f.await == 3 }
    })
    .await;
    c.close().await;
    eventually(Duration::from_secs(5), "node 2 unsubscribed", || {
        let f = subscribers(&mut conn);
        async move { f.await == 2 }
    })
    .await;
    let sent = a.chat("still here").await;
    assert_eq!(b.recv_type("message").await["message"], sent["message"]);
}
