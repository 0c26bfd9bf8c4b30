//! The metrics of a cluster's processes: each counts its own part of a
//! chat that crosses the bus (stored and published on one, received and
//! delivered on the other), and a survivor counts the dead instance it
//! reaps.

use std::time::Duration;

use crate::helpers::metric;
use crate::procs::Cluster;
use crate::wait::eventually;

/// `GET /metrics` of node `i`, as text (empty if it does not answer).
async fn scrape(cluster: &Cluster, i: usize) -> String {
    let url = format!("{}/metrics", cluster.base(i));
    match cluster.http.get(url.as_str()).send().await {
        Ok(mut res) if res.status().as_u16() == 200 => {
            let body = res.body().limit(1 << 24).await.unwrap_or_default();
            String::from_utf8_lossy(&body).into_owned()
        }
        _ => String::new(),
    }
}

#[actix_rt::test]
async fn each_process_counts_its_part_of_a_chat_across_the_bus_and_of_a_reap() {
    let mut cluster = Cluster::start(2).await;
    let mut ann = cluster.ws(0).await;
    let room = ann.create("metered", "ann").await["room"]["id"]
        .as_u64()
        .expect("room id");
    let mut bob = cluster.ws(1).await;
    bob.join(room, "bob").await;
    ann.recv_type("memberJoined").await;
    let contents: Vec<String> = (1..=3).map(|i| format!("m{i}")).collect();
    assert_eq!(ann.chat_all(&contents).await.len(), 3);
    assert_eq!(bob.recv_messages(3).await.len(), 3);

    let cluster_ref = &cluster;
    eventually(
        Duration::from_secs(10),
        "each node's counts",
        || async move {
            let (n0, n1) = (scrape(cluster_ref, 0).await, scrape(cluster_ref, 1).await);
            let v = |text: &str, series: &str| metric(text, series).unwrap_or(-1.0);
            // received, stored, delivered, deliveries, local members.
            let counts = |text: &str| {
                [
                    v(text, "chat_chats_received_total"),
                    v(text, "chat_chats_stored_total"),
                    v(text, "chat_chats_delivered_total"),
                    v(text, "chat_deliveries_total"),
                    v(text, "chat_members_local"),
                ]
            };
            let seen = (counts(&n0), counts(&n1));
            if seen != ([3.0, 3.0, 3.0, 3.0, 1.0], [0.0, 0.0, 3.0, 3.0, 1.0]) {
                return Err(format!("node 0, node 1: {seen:?}"));
            }
            // Node 0 published the batches (and its member's join); node 1
            // received them, each with its send time.
            let published = v(&n0, "chat_bus_publishes_total");
            let lags = v(&n1, "chat_bus_receive_lag_seconds_count");
            if published < 1.0 || lags < 1.0 {
                return Err(format!("published {published}, lags received {lags}"));
            }
            Ok(())
        },
    )
    .await;

    // Node 1 dies without a goodbye: node 0 reaps it, and counts it once.
    cluster.kill(1);
    let cluster_ref = &cluster;
    eventually(
        Duration::from_secs(20),
        "node 0 counting the reap",
        || async move {
            let text = scrape(cluster_ref, 0).await;
            match metric(&text, "chat_reaped_instances_total") {
                Some(1.0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    ann.recv_type("memberLeft").await;
}
