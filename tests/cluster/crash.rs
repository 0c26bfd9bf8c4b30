//! Guarantee 5, crashes: when a process dies without saying goodbye (SIGKILL),
//! its members disappear from member lists and counts on the survivors
//! within 30 seconds, the survivors' members hear `memberLeft`, and rooms
//! left empty are deleted. A restarted process (same instance id) serves
//! again. With the default timings the cleanup takes under 10 s in every
//! window: right after the survivors started, and for a second death soon
//! after a restart under the same instance id.

use std::time::{Duration, Instant};

use crate::helpers::{nicknames, Incoming, WsClient};
use crate::procs::{heavy_test_lock, Cluster};
use crate::wait::within;

/// The guarantee's bound.
const LIMIT: Duration = Duration::from_secs(30);
const AGREE: Duration = Duration::from_secs(5);

/// Reads `ws` until a `memberLeft` arrived for each of `names` (in any
/// order), before `deadline`; returns when the last one came, measured from
/// `since`. Panics on anything but member events.
async fn await_member_left(
    who: &str,
    ws: &mut WsClient,
    names: &[&str],
    since: Instant,
    deadline: Instant,
) -> Duration {
    let mut missing: Vec<&str> = names.to_vec();
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.next_within(left).await {
            Some(Incoming::Json(v)) if v["type"] == "memberLeft" => {
                let name = v["nickname"].as_str().unwrap_or_default();
                assert!(
                    missing.contains(&name),
                    "{who}: unexpected or repeated memberLeft {v}"
                );
                missing.retain(|n| *n != name);
            }
            Some(Incoming::Json(v)) if v["type"] == "memberJoined" => {}
            Some(Incoming::Json(v)) => panic!("{who}: unexpected frame {v}"),
            Some(Incoming::Closed(code)) => panic!("{who}: socket closed ({code:?})"),
            None => panic!(
                "{who}: no memberLeft for {missing:?} within {:?} of the kill",
                deadline - since
            ),
        }
    }
    since.elapsed()
}

#[actix_rt::test]
async fn a_killed_process_members_vanish_from_the_survivors_and_its_rooms_are_deleted() {
    let _heavy = heavy_test_lock().await;
    within(Duration::from_secs(90), "the test", async {
        let mut cluster = Cluster::start(3).await;

        // Room `shared`: members on every node, two on the doomed node 2.
        let mut ann = cluster.ws(0).await;
        let shared = ann.create("shared", "ann").await["room"]["id"]
            .as_u64()
            .expect("room id");
        let mut bob = cluster.ws(1).await;
        bob.join(shared, "bob").await;
        let mut cat = cluster.ws(2).await;
        cat.join(shared, "cat").await;
        let mut cid = cluster.ws(2).await;
        cid.join(shared, "cid").await;
        // Room `doomed`: every member on node 2.
        let mut xia = cluster.ws(2).await;
        let doomed = xia.create("doomed", "xia").await["room"]["id"]
            .as_u64()
            .expect("room id");
        let mut yan = cluster.ws(2).await;
        yan.join(doomed, "yan").await;
        cluster
            .wait_members_agree(&[0, 1, 2], shared, &["ann", "bob", "cat", "cid"], AGREE)
            .await;
        cluster
            .wait_members_agree(&[0, 1, 2], doomed, &["xia", "yan"], AGREE)
            .await;

        cluster.kill(2);
        let killed = Instant::now();
        let deadline = killed + LIMIT;
        drop((cat, cid, xia, yan));

        let survivors = async {
            cluster
                .wait_members_agree(&[0, 1], shared, &["ann", "bob"], LIMIT)
                .await;
            let lists = killed.elapsed();
            cluster.wait_room_gone(&[0, 1], doomed, LIMIT).await;
            (lists, killed.elapsed())
        };
        let ((lists, all_rest), ann_heard, bob_heard) = futures_util::future::join3(
            survivors,
            await_member_left("ann", &mut ann, &["cat", "cid"], killed, deadline),
            await_member_left("bob", &mut bob, &["cat", "cid"], killed, deadline),
        )
        .await;
        eprintln!(
            "crash: after SIGKILL, survivors' member lists and counts were right after \
             {lists:?}, the empty room was gone after {all_rest:?}, memberLeft reached ann \
             after {ann_heard:?} and bob after {bob_heard:?}"
        );
        let slowest = all_rest.max(ann_heard).max(bob_heard);
        assert!(slowest < LIMIT, "took {slowest:?}");
        for i in [0, 1] {
            for path in [
                format!("/api/rooms/{doomed}/members"),
                format!("/api/rooms/{doomed}/messages"),
            ] {
                assert_eq!(cluster.get(i, &path).await.0, 404, "node {i}: {path}");
            }
        }
        // The room the survivors are in still works across them.
        let said = ann.chat("still here").await;
        assert_eq!(bob.recv_type("message").await["message"], said["message"]);

        // Node 2 comes back under the same instance id and serves again;
        // the old memberships are really gone (the nickname is free).
        cluster.restart(2).await;
        let (status, health) = cluster.get(2, "/health").await;
        assert_eq!(status, 200, "{health}");
        assert_eq!(health["instance"], cluster.nodes[2].instance.as_str());
        assert!(cluster.room_gone(2, doomed).await, "doomed room on node 2");
        let mut cat = cluster.ws(2).await;
        let joined = cat.join(shared, "cat").await;
        assert_eq!(nicknames(&joined["members"]), ["ann", "bob", "cat"]);
        assert_eq!(joined["room"]["memberCount"], 3);
        assert_eq!(joined["history"][0]["content"], "still here", "{joined}");
        for ws in [&mut ann, &mut bob] {
            assert_eq!(
                ws.recv_type("memberJoined").await["member"]["nickname"],
                "cat"
            );
        }
        cluster
            .wait_members_agree(&[0, 1, 2], shared, &["ann", "bob", "cat"], AGREE)
            .await;
        let said = cat.chat("back").await;
        assert_eq!(ann.recv_type("message").await["message"], said["message"]);
        assert_eq!(bob.recv_type("message").await["message"], said["message"]);
        cluster.assert_running();
    })
    .await;
}

#[actix_rt::test]
async fn a_process_killed_and_restarted_within_its_liveness_ttl_drops_its_old_members() {
    let _heavy = heavy_test_lock().await;
    within(Duration::from_secs(60), "the test", async {
        let mut cluster = Cluster::start(3).await;
        let mut ann = cluster.ws(0).await;
        let shared = ann.create("shared", "ann").await["room"]["id"]
            .as_u64()
            .expect("room id");
        let mut bob = cluster.ws(1).await;
        bob.join(shared, "bob").await;
        let mut cat = cluster.ws(2).await;
        cat.join(shared, "cat").await;
        let mut xia = cluster.ws(2).await;
        let doomed = xia.create("doomed", "xia").await["room"]["id"]
            .as_u64()
            .expect("room id");
        cluster
            .wait_members_agree(&[0, 1, 2], shared, &["ann", "bob", "cat"], AGREE)
            .await;

        // Back before its liveness key could expire: no survivor will ever
        // see the instance as dead, so the new process must clean up.
        cluster.kill(2);
        let killed = Instant::now();
        drop((cat, xia));
        cluster.restart(2).await;
        let restarted = killed.elapsed();
        let deadline = killed + LIMIT;

        let everywhere = async {
            cluster
                .wait_members_agree(&[0, 1, 2], shared, &["ann", "bob"], LIMIT)
                .await;
            cluster.wait_room_gone(&[0, 1, 2], doomed, LIMIT).await;
            killed.elapsed()
        };
        let (rest, ann_heard, bob_heard) = futures_util::future::join3(
            everywhere,
            await_member_left("ann", &mut ann, &["cat"], killed, deadline),
            await_member_left("bob", &mut bob, &["cat"], killed, deadline),
        )
        .await;
        eprintln!(
            "quick restart: node 2 back after {restarted:?}; lists, counts and the empty room \
             right everywhere after {rest:?}; memberLeft at ann after {ann_heard:?}, bob after \
             {bob_heard:?}"
        );
        let mut cat = cluster.ws(2).await;
        let joined = cat.join(shared, "cat").await;
        assert_eq!(nicknames(&joined["members"]), ["ann", "bob", "cat"]);
        assert_eq!(joined["room"]["memberCount"], 3);
        cluster.assert_running();
    })
    .await;
}

/// The production timings (`LIVENESS_TTL_SECS`, `LIVENESS_REFRESH_MS`,
/// `REAP_INTERVAL_MS` at their defaults), for the crash-cleanup bounds.
const DEFAULT_TIMINGS: [(&str, &str); 3] = [
    ("LIVENESS_TTL_SECS", "5"),
    ("LIVENESS_REFRESH_MS", "1000"),
    ("REAP_INTERVAL_MS", "2000"),
];
/// The bound for crash cleanup, in every window.
const CLEANUP: Duration = Duration::from_secs(10);

/// Puts `name` on node 2 into `room` (where ann is, on node 0), waits until
/// every node lists them, SIGKILLs node 2 and returns how long until nodes
/// 0 and 1 list only ann again and ann heard the `memberLeft`.
async fn kill_and_time_cleanup(
    cluster: &mut Cluster,
    room: u64,
    ann: &mut WsClient,
    name: &str,
) -> Duration {
    let mut victim = cluster.ws(2).await;
    victim.join(room, name).await;
    assert_eq!(
        ann.recv_type("memberJoined").await["member"]["nickname"],
        name
    );
    cluster
        .wait_members_agree(&[0, 1, 2], room, &["ann", name], AGREE)
        .await;
    cluster.kill(2);
    let killed = Instant::now();
    drop(victim);
    let (_, heard) = futures_util::future::join(
        cluster.wait_members_agree(&[0, 1], room, &["ann"], LIMIT),
        await_member_left("ann", ann, &[name], killed, killed + LIMIT),
    )
    .await;
    killed.elapsed().max(heard)
}

#[actix_rt::test]
async fn a_process_killed_right_after_the_survivors_started_is_cleaned_up_within_10_s() {
    let _heavy = heavy_test_lock().await;
    within(Duration::from_secs(60), "the test", async {
        // The survivors connect to a Redis that has been up for long: its
        // keys are trustworthy at once, no need to wait a TTL and a backoff.
        let mut cluster =
            Cluster::start_with(3, &crate::procs::redis_url(), &DEFAULT_TIMINGS).await;
        let started = Instant::now();
        let mut ann = cluster.ws(0).await;
        let room = ann.create("early", "ann").await["room"]["id"]
            .as_u64()
            .expect("room id");
        let took = kill_and_time_cleanup(&mut cluster, room, &mut ann, "cat").await;
        eprintln!(
            "crash right after start (default timings): node 2 killed {:?} after the \
             cluster was up; survivors' lists right and memberLeft heard after {took:?}",
            started.elapsed() - took
        );
        assert!(took < CLEANUP, "cleaned up after {took:?}");
        cluster.assert_running();
    })
    .await;
}

#[actix_rt::test]
async fn a_process_that_dies_again_soon_after_a_restart_is_cleaned_up_within_10_s() {
    let _heavy = heavy_test_lock().await;
    within(Duration::from_secs(90), "the test", async {
        let mut cluster =
            Cluster::start_with(3, &crate::procs::redis_url(), &DEFAULT_TIMINGS).await;
        let mut ann = cluster.ws(0).await;
        let room = ann.create("twice", "ann").await["room"]["id"]
            .as_u64()
            .expect("room id");
        let first = kill_and_time_cleanup(&mut cluster, room, &mut ann, "cat").await;
        // pm2 restarts the crashed instance under the same INSTANCE_ID; it
        // dies again soon after. The reap lock of the first death must not
        // hold up the second.
        cluster.restart(2).await;
        let second = kill_and_time_cleanup(&mut cluster, room, &mut ann, "cid").await;
        eprintln!(
            "crash, restart under the same id, crash again (default timings): first death \
             cleaned up after {first:?}, second after {second:?}"
        );
        assert!(first < CLEANUP, "first death cleaned up after {first:?}");
        assert!(second < CLEANUP, "second death cleaned up after {second:?}");
        cluster.assert_running();
    })
    .await;
}
