//! How members leave across processes: a close handshake frees the
//! nickname everywhere before it is acknowledged; a clean shutdown (SIGTERM)
//! delivers everything it stored.

use std::time::Duration;

use actix_http::ws::{CloseCode, Message as WsMessage};
use serde_json::json;

use crate::helpers::WsClient;
use crate::procs::Cluster;
use crate::wait::within;

/// Sends a normal close and reads until the server's answer; returns its
/// code.
async fn close_handshake(mut client: WsClient) -> Option<u16> {
    client
        .send_raw(WsMessage::Close(Some(CloseCode::Normal.into())))
        .await;
    within(
        Duration::from_secs(15),
        "the server's close",
        client.close_code(),
    )
    .await
}

#[actix_rt::test]
async fn a_nickname_is_free_on_every_process_once_the_close_is_acknowledged() {
    let cluster = Cluster::start(2).await;
    // Bob keeps the room alive between the rounds.
    let mut bob = cluster.ws(1).await;
    let room = bob.create("handover", "bob").await["room"]["id"]
        .as_u64()
        .unwrap();
    let mut taken = Vec::new();
    for round in 0..50 {
        let mut here = cluster.ws(0).await;
        here.join(room, "sam").await;
        assert_eq!(close_handshake(here).await, Some(1000), "round {round}");
        // Straight after the acknowledgement, on the other process.
        let mut there = cluster.ws(1).await;
        there
            .send(json!({"type":"join","roomId":room,"nickname":"sam","ref":"j"}))
            .await;
        let reply = there.reply_or_error("j").await;
        if reply["type"] != "joined" {
            taken.push((round, reply));
        }
        close_handshake(there).await;
    }
    assert!(
        taken.is_empty(),
        "{} of 50 joins refused: {taken:?}",
        taken.len()
    );
    bob.assert_alive().await;
}
