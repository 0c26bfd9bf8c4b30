//! Limits a hostile client cannot walk around: a flood is answered a
//! bounded number of times and then closed, joins have their own budget,
//! and a room's queue of chats waiting to be stored is bounded, with every
//! chat it cannot hold refused to its sender, never dropped silently.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use crate::wait::within;
use crate::{memory_only_with, store_tests};

/// 5 frames of burst, then 2/s; 10 frames over the rate are answered.
fn tight_rate_and_allowance(s: &mut chat_server::config::Settings) {
    s.ws_rate_burst = 5.0;
    s.ws_rate_per_sec = 2.0;
    s.ws_rate_violations = 10.0;
}

memory_only_with!(
    a_client_that_keeps_flooding_is_answered_then_closed_with_1008,
    tight_rate_and_allowance,
    |app| {
        let mut bystander = app.ws().await;
        let mut flooder = app.ws().await;
        const FLOOD: usize = 500;
        for i in 0..FLOOD {
            flooder
                .send(json!({"type":"ping","ref":format!("p{i}")}))
                .await;
        }
        let (mut pongs, mut limited) = (0, 0);
        let code = within(Duration::from_secs(10), "the flooder is closed", async {
            loop {
                match flooder.next().await {
                    Incoming::Json(v) if v["type"] == "pong" => pongs += 1,
                    Incoming::Json(v) => {
                        assert_error_frame(&v, "rate_limited", v["ref"].as_str());
                        limited += 1;
                    }
                    Incoming::Closed(code) => return code,
                }
            }
        })
        .await;
        assert_eq!(code, Some(1008), "closed as a policy violation");
        // The burst, then the allowance of answered violations, and not one
        // answer per flood frame.
        assert!((5..=7).contains(&pongs), "{pongs} pongs");
        assert!(
            (9..=12).contains(&limited),
            "{limited} rate_limited answers"
        );
        // Nobody else noticed.
        bystander.assert_alive().await;
    }
);

memory_only_with!(
    a_client_over_its_rate_for_a_moment_is_not_closed,
    tight_rate_and_allowance,
    |app| {
        let mut c = app.ws().await;
        // 5 in the burst, 5 over the rate: answered, within the allowance.
        for i in 0..10 {
            c.send(json!({"type":"ping","ref":format!("p{i}")})).await;
        }
        let mut limited = 0;
        for _ in 0..10 {
            let v = c.recv().await;
            if v["type"] == "error" {
                assert_error_frame(&v, "rate_limited", v["ref"].as_str());
                limited += 1;
            }
        }
        assert!(limited >= 4, "{limited}");
        // After a pause the client is in good standing again.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.assert_alive().await;
    }
);

memory_only_with!(
    joins_have_a_budget_of_their_own,
    |s| {
        s.ws_join_burst = 4.0;
        s.ws_join_rate_per_sec = 0.5;
    },
    |app| {
        let mut c = app.ws().await;
        for i in 0..10u64 {
            c.send(
                json!({"type":"join","roomId":900_000 + i,"nickname":"n","ref":format!("j{i}")}),
            )
            .await;
        }
        let mut codes = Vec::new();
        for i in 0..10 {
            let v = c.recv().await;
            assert_eq!(v["ref"], format!("j{i}"), "{v}");
            codes.push(v["code"].as_str().unwrap_or_default().to_owned());
        }
        assert_eq!(&codes[..4], ["room_not_found"; 4], "{codes:?}");
        assert_eq!(&codes[4..], ["rate_limited"; 6], "{codes:?}");
        // Other frames are on their own budget: still answered.
        c.assert_alive().await;
    }
);

store_tests!(
    a_full_room_queue_refuses_chats_and_stores_the_rest,
    |s| {
        s.ws_rate_per_sec = 1e6;
        s.ws_rate_burst = 1e6;
        s.room_queue_max_messages = 4;
    },
    |app| {
        let room = app.create_room("busy").await;
        let id = room["id"].as_u64().unwrap();
        let (mut sender, _) = app.join(id, "sender").await;
        let (mut reader, _) = app.join(id, "reader").await;
        sender.recv_type("memberJoined").await;
        const N: usize = 300;
        for i in 0..N {
            sender
                .send(json!({"type":"chat","content":format!("m{i}"),"ref":format!("c{i}")}))
                .await;
        }
        // Every chat gets exactly one answer: its echo or `rate_limited`.
        let (mut stored, mut refused) = (Vec::new(), HashSet::new());
        while stored.len() + refused.len() < N {
            let v = sender.recv().await;
            let reference = v["ref"].as_str().unwrap_or_default().to_owned();
            match v["type"].as_str() {
                Some("message") => stored.push(v["message"]["content"].clone()),
                Some("error") => {
                    assert_error_frame(&v, "rate_limited", Some(&reference));
                    assert!(refused.insert(reference), "answered twice: {v}");
                }
                _ => panic!("unexpected {v}"),
            }
        }
        assert!(
            !refused.is_empty(),
            "300 chats at once must overflow a queue of 4"
        );
        // What was answered with an echo is stored and delivered, in order;
        // what was refused is neither.
        let seen: Vec<Value> = reader
            .recv_messages(stored.len())
            .await
            .iter()
            .map(|m| m["content"].clone())
            .collect();
        assert_eq!(seen, stored);
        let kept: Vec<Value> = app
            .messages(id, "limit=500")
            .await
            .iter()
            .map(|m| m["content"].clone())
            .collect();
        assert_eq!(kept, stored);
        reader.expect_silence(Duration::from_millis(300)).await;
    },
    mysql: MySql
);

/// `POST /api/rooms` as if through nginx for the client chain `xff`.
async fn create_via_proxy(app: &TestApp, xff: &str) -> u16 {
    let res = app
        .http
        .post(format!("{}/api/rooms", app.base))
        .insert_header(("content-type", "application/json"))
        .insert_header(("x-forwarded-for", xff))
        .send_body(json!({"title": "t"}).to_string())
        .await
        .expect("request");
    res.status().as_u16()
}

/// Behind a proxy, with a room-creation burst of 5 and no refill to speak of.
fn behind_proxy(s: &mut chat_server::config::Settings) {
    s.trust_forwarded_for = true;
    s.room_create_burst = 5.0;
    s.room_create_rate_per_sec = 0.001;
}

memory_only_with!(
    forged_forwarded_entries_do_not_buy_fresh_buckets,
    behind_proxy,
    |app| {
        let mut statuses = Vec::new();
        for i in 0..10 {
            // The client writes its own entry first; nginx appends the
            // address it saw.
            let forged = format!("10.{i}.0.1, 203.0.113.9");
            statuses.push(create_via_proxy(&app, &forged).await);
        }
        assert_eq!(statuses, [201, 201, 201, 201, 201, 429, 429, 429, 429, 429]);
        // Another real client has a budget of its own.
        assert_eq!(create_via_proxy(&app, "10.0.0.1, 198.51.100.4").await, 201);
    }
);

memory_only_with!(ipv6_clients_share_a_budget_per_64, behind_proxy, |app| {
    let mut statuses = Vec::new();
    for i in 1..=10 {
        statuses.push(create_via_proxy(&app, &format!("2001:db8:5:6::{i:x}")).await);
    }
    assert_eq!(statuses, [201, 201, 201, 201, 201, 429, 429, 429, 429, 429]);
    assert_eq!(create_via_proxy(&app, "2001:db8:5:7::1").await, 201);
});
