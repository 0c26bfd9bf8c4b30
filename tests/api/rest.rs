//! The REST API: every route, its success shape and every documented error
//! status, with the `{"error":{"code","message"}}` envelope checked on each.

use std::time::Duration;

use awc::http::header::HeaderMap;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::{both_stores, both_stores_with, memory_only_with};

/// Sends `n` chats from `client` and returns the echoed messages.
async fn send_numbered(client: &mut WsClient, n: usize) -> Vec<Value> {
    let contents: Vec<String> = (1..=n).map(|i| format!("m{i}")).collect();
    client.chat_all(&contents).await
}

both_stores_with!(
    health_reports_ok_with_store_bus_and_instance,
    |_| {},
    |app| {
        let (status, body) = app.get("/health").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "ok", "{body}");
        let store = if app.database().is_some() {
            "mysql"
        } else {
            "memory"
        };
        assert_eq!(body["store"], store, "{body}");
        assert_eq!(body["bus"], "local", "{body}");
        assert_eq!(
            body["instance"],
            app.settings.instance_id.as_str(),
            "{body}"
        );
    }
);

both_stores!(
    create_room_is_201_with_trimmed_title_no_members_and_utc_time,
    |app| {
        let (status, room) = app
            .post_raw(
                "/api/rooms",
                json!({"title": "  general chat \t "}).to_string(),
            )
            .await;
        assert_eq!(status, 201, "{room}");
        let keys: Vec<&str> = room
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in ["id", "title", "memberCount", "created"] {
            assert!(keys.contains(&key), "Room lacks {key}: {room}");
        }
        assert!(room["id"].as_u64().is_some_and(|id| id > 0), "{room}");
        assert_eq!(room["title"], "general chat");
        assert_eq!(room["memberCount"], 0);
        assert_recent_utc(&room["created"], Duration::from_secs(60));

        let (status, shown) = app.room(room["id"].as_u64().unwrap()).await;
        assert_eq!(status, 200, "{shown}");
        assert_eq!(shown, room, "GET shows the room as created");

        // A second room gets a different id.
        let other = app.create_room("other").await;
        assert_ne!(other["id"], room["id"]);
    }
);

both_stores!(list_rooms_is_newest_first, |app| {
    let (status, empty) = app.get("/api/rooms").await;
    assert_eq!(status, 200);
    assert_eq!(empty, json!([]), "a fresh server has no rooms");
    let a = app.create_room("a").await;
    let b = app.create_room("b").await;
    let c = app.create_room("c").await;
    let (status, list) = app.get("/api/rooms").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list, json!([c, b, a]), "newest first, full Room objects");
    let listed = ids(&list);
    assert!(listed.windows(2).all(|w| w[0] > w[1]), "{listed:?}");
});

both_stores!(get_room_is_200_or_404_room_not_found, |app| {
    let room = app.create_room("lookup").await;
    let id = room["id"].as_u64().unwrap();
    let (status, body) = app.room(id).await;
    assert_eq!(status, 200);
    assert_eq!(body, room);

    let (status, body) = app.room(999_999).await;
    assert_eq!(status, 404, "{body}");
    assert_error_envelope(&body, "room_not_found");
});

memory_only_with!(
    non_integer_room_id_is_400_invalid_parameter,
    |_| {},
    |app| {
        app.create_room("exists").await;
        for path in [
            "/api/rooms/abc",
            "/api/rooms/-1",
            "/api/rooms/1.5",
            "/api/rooms/1e3",
            "/api/rooms/99999999999999999999999",
            "/api/rooms/abc/members",
            "/api/rooms/-1/members",
            "/api/rooms/abc/messages",
            "/api/rooms/x1/messages?after=0",
        ] {
            let (status, body) = app.get(path).await;
            assert_eq!(status, 400, "GET {path}: {body}");
            assert_error_envelope(&body, "invalid_parameter");
        }
    }
);

both_stores!(members_are_listed_in_join_order_from_the_live_room, |app| {
    let room = app.create_room("members").await;
    let id = room["id"].as_u64().unwrap();
    let (status, body) = app.get(&format!("/api/rooms/{id}/members")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!([]), "an unjoined room has no members");

    let (mut alice, _) = app.join(id, "alice").await;
    let (_bob, _) = app.join(id, "bob").await;
    let (_carol, _) = app.join(id, "carol").await;
    let (status, members) = app.get(&format!("/api/rooms/{id}/members")).await;
    assert_eq!(status, 200, "{members}");
    assert_eq!(nicknames(&members), ["alice", "bob", "carol"]);
    for m in members.as_array().unwrap() {
        assert_eq!(
            m.as_object().unwrap().len(),
            2,
            "Member is nickname + joinedAt: {m}"
        );
        assert_recent_utc(&m["joinedAt"], Duration::from_secs(60));
    }
    let (_, shown) = app.room(id).await;
    assert_eq!(shown["memberCount"], 3, "{shown}");

    // The first member leaves: the others keep their order.
    alice.leave().await;
    assert_eq!(app.member_names(id).await, ["bob", "carol"]);
    let (_, shown) = app.room(id).await;
    assert_eq!(shown["memberCount"], 2, "{shown}");

    let (status, body) = app.get("/api/rooms/999999/members").await;
    assert_eq!(status, 404, "{body}");
    assert_error_envelope(&body, "room_not_found");
});

both_stores!(messages_are_ascending_and_paged_by_after_and_limit, |app| {
    let room = app.create_room("history").await;
    let id = room["id"].as_u64().unwrap();
    let (mut alice, _) = app.join(id, "alice").await;
    assert_eq!(
        app.messages(id, "").await,
        Vec::<Value>::new(),
        "no messages yet"
    );

    let echoes = send_numbered(&mut alice, 7).await;
    let all = app.messages(id, "").await;
    assert_eq!(all, echoes, "stored messages equal the delivered ones");
    assert_eq!(ids(&json!(all)), (1..=7).collect::<Vec<u64>>());
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.as_object().unwrap().len(), 5, "Message shape: {m}");
        assert_eq!(m["roomId"], id);
        assert_eq!(m["nickname"], "alice");
        assert_eq!(m["content"], format!("m{}", i + 1));
        assert_recent_utc(&m["sentAt"], Duration::from_secs(60));
    }
    let page = |q: &'static str| {
        let app = &app;
        async move { ids(&json!(app.messages(id, q).await)) }
    };
    assert_eq!(page("after=3").await, [4, 5, 6, 7]);
    assert_eq!(page("limit=2").await, [1, 2]);
    assert_eq!(page("after=3&limit=2").await, [4, 5]);
    assert_eq!(page("limit=2&after=5").await, [6, 7]);
    assert_eq!(page("after=0&limit=50").await, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(page("after=7").await, Vec::<u64>::new());
    assert_eq!(page("after=1000").await, Vec::<u64>::new());
});

both_stores!(messages_default_to_after_0_and_limit_50, |app| {
    let (mut alice, id) = app.create_via_ws("busy", "alice").await;
    send_numbered(&mut alice, 55).await;
    let first = app.messages(id, "").await;
    assert_eq!(
        ids(&json!(first)),
        (1..=50).collect::<Vec<u64>>(),
        "default page"
    );
    let rest = app.messages(id, "after=50").await;
    assert_eq!(ids(&json!(rest)), (51..=55).collect::<Vec<u64>>());
    let everything = app.messages(id, "limit=500").await;
    assert_eq!(everything.len(), 55);
});

both_stores_with!(
    messages_limit_is_capped_at_messages_page_max,
    |s| s.messages_page_max = 5,
    |app| {
        let (mut alice, id) = app.create_via_ws("capped", "alice").await;
        send_numbered(&mut alice, 8).await;
        let got = |q: &'static str| {
            let app = &app;
            async move { ids(&json!(app.messages(id, q).await)) }
        };
        assert_eq!(got("limit=100").await, [1, 2, 3, 4, 5], "limit capped");
        assert_eq!(
            got("").await,
            [1, 2, 3, 4, 5],
            "the default limit is capped too"
        );
        assert_eq!(got("after=5&limit=100").await, [6, 7, 8]);
        assert_eq!(got("limit=3").await, [1, 2, 3], "a smaller limit is kept");
    }
);

both_stores!(messages_bad_query_is_400_and_missing_room_404, |app| {
    let (mut alice, id) = app.create_via_ws("params", "alice").await;
    alice.chat("hello").await;
    for query in [
        "after=-1",
        "after=x",
        "after=1.5",
        "after=",
        "limit=1.5",
        "limit=-5",
        "limit=ten",
        "after=0&limit=abc",
    ] {
        let (status, body) = app.get(&format!("/api/rooms/{id}/messages?{query}")).await;
        assert_eq!(status, 400, "messages?{query}: {body}");
        assert_error_envelope(&body, "invalid_parameter");
    }
    let (status, body) = app.get("/api/rooms/999999/messages").await;
    assert_eq!(status, 404, "{body}");
    assert_error_envelope(&body, "room_not_found");
    let (status, body) = app.get("/api/rooms/999999/messages?after=0&limit=5").await;
    assert_eq!(status, 404, "{body}");
    assert_error_envelope(&body, "room_not_found");
});

memory_only_with!(
    post_room_with_invalid_json_is_400_invalid_json,
    |_| {},
    |app| {
        for body in [
            "{",
            "not json",
            "",
            "[]",
            "[{\"title\":\"a\"}]",
            "\"title\"",
            "42",
            "null",
        ] {
            let (status, reply) = app.post_raw("/api/rooms", body).await;
            assert_eq!(status, 400, "body {body:?}: {reply}");
            assert_error_envelope(&reply, "invalid_json");
        }
        let (_, list) = app.get("/api/rooms").await;
        assert_eq!(list, json!([]), "no room was created by a bad request");
    }
);

memory_only_with!(
    post_room_with_bad_title_is_400_invalid_title,
    |_| {},
    |app| {
        let bad = [
            json!({}),
            json!({"name": "x"}),
            json!({"title": null}),
            json!({"title": 5}),
            json!({"title": ["a"]}),
            json!({"title": ""}),
            json!({"title": "   "}),
            json!({"title": "x".repeat(51)}),
            json!({"title": "é".repeat(51)}),
            json!({"title": "a\u{1}b"}),
            json!({"title": "a\u{7f}b"}),
            json!({"title": "a\u{85}b"}),
            json!({"title": "two\nlines"}),
        ];
        for body in bad {
            let (status, reply) = app.post_raw("/api/rooms", body.to_string()).await;
            assert_eq!(status, 400, "body {body}: {reply}");
            assert_error_envelope(&reply, "invalid_title");
        }
        let (_, list) = app.get("/api/rooms").await;
        assert_eq!(list, json!([]), "no room was created by a bad request");

        // Boundaries: 50 characters (not bytes) after trimming are fine.
        for title in [
            "x".repeat(50),
            "é".repeat(50),
            format!("  {}  ", "y".repeat(50)),
        ] {
            let (status, room) = app
                .post_raw("/api/rooms", json!({"title": title}).to_string())
                .await;
            assert_eq!(status, 201, "title {title:?}: {room}");
            assert_eq!(room["title"], title.trim());
        }
    }
);

both_stores!(
    post_room_title_refuses_format_characters_and_is_nfc,
    |app| {
        for title in [
            "evil\u{202E}gpj.exe",
            "\u{202E}",
            "gen\u{200B}eral",
            "general\u{FEFF}",
            "gen\u{AD}eral",
            "\u{2066}general\u{2069}",
        ] {
            let body = json!({ "title": title });
            let (status, reply) = app.post_raw("/api/rooms", body.to_string()).await;
            assert_eq!(status, 400, "title {title:?}: {reply}");
            assert_error_envelope(&reply, "invalid_title");
        }
        let (_, list) = app.get("/api/rooms").await;
        assert_eq!(list, json!([]), "no room was created by a refused title");

        // Stored, listed and shown in NFC; 50 characters counted after NFC.
        let room = app.create_room(" Cafe\u{301} ").await;
        assert_eq!(room["title"], "Caf\u{E9}");
        let (_, shown) = app.room(room["id"].as_u64().unwrap()).await;
        assert_eq!(shown["title"], "Caf\u{E9}");
        let room = app.create_room(&"e\u{301}".repeat(50)).await;
        assert_eq!(room["title"], "\u{E9}".repeat(50));
    }
);

memory_only_with!(post_room_needs_application_json_else_415, |_| {}, |app| {
    let json_body = json!({"title": "cross-site"}).to_string();
    let refused: [(Option<&str>, &str); 7] = [
        (None, json_body.as_str()),
        (Some("text/plain"), json_body.as_str()),
        (Some("text/plain;charset=UTF-8"), json_body.as_str()),
        (
            Some("application/x-www-form-urlencoded"),
            "title=cross-site",
        ),
        (
            Some("multipart/form-data; boundary=XyZ"),
            "--XyZ\r\ncontent-disposition: form-data; name=\"title\"\r\n\r\n\
                 cross-site\r\n--XyZ--\r\n",
        ),
        (Some("application/xml"), json_body.as_str()),
        (Some("application/jsonp"), json_body.as_str()),
    ];
    for (content_type, body) in refused {
        let (status, reply) = app.post_typed("/api/rooms", content_type, body).await;
        assert_eq!(status, 415, "{content_type:?}: {reply}");
        assert_error_envelope(&reply, "unsupported_media_type");
    }
    let (_, list) = app.get("/api/rooms").await;
    assert_eq!(list, json!([]), "no room was created by a refused type");

    // application/json, with or without parameters, in any case.
    for content_type in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
    ] {
        let (status, room) = app
            .post_typed("/api/rooms", Some(content_type), json_body.as_str())
            .await;
        assert_eq!(status, 201, "{content_type}: {room}");
        assert_eq!(room["title"], "cross-site");
    }
    let (_, list) = app.get("/api/rooms").await;
    assert_eq!(ids(&list).len(), 3);

    // The type is checked before the body: a bad JSON body of the wrong
    // type is 415, not 400.
    let (status, reply) = app.post_typed("/api/rooms", Some("text/plain"), "{").await;
    assert_eq!(status, 415, "{reply}");
    assert_error_envelope(&reply, "unsupported_media_type");
});

memory_only_with!(
    post_body_over_64_kib_is_413_payload_too_large,
    |_| {},
    |app| {
        // A valid JSON body of exactly `len` bytes.
        let body_of = |len: usize| {
            let frame = r#"{"title":"big","pad":""}"#;
            let body = format!(
                r#"{{"title":"big","pad":"{}"}}"#,
                "a".repeat(len - frame.len())
            );
            assert_eq!(body.len(), len);
            body
        };
        let (status, reply) = app.post_raw("/api/rooms", body_of(64 * 1024 + 1)).await;
        assert_eq!(status, 413, "{reply}");
        assert_error_envelope(&reply, "payload_too_large");
        let (status, reply) = app.post_raw("/api/rooms", body_of(1024 * 1024)).await;
        assert_eq!(status, 413, "{reply}");
        assert_error_envelope(&reply, "payload_too_large");

        // Without a Content-Length (chunked) the limit holds as well.
        let chunks: Vec<Vec<u8>> = body_of(80 * 1024)
            .into_bytes()
            .chunks(8 * 1024)
            .map(<[u8]>::to_vec)
            .collect();
        let (status, reply) = app.post_chunked("/api/rooms", chunks).await;
        assert_eq!(status, 413, "chunked: {reply}");
        assert_error_envelope(&reply, "payload_too_large");

        // Exactly 64 KiB is not over the limit.
        let (status, room) = app.post_raw("/api/rooms", body_of(64 * 1024)).await;
        assert_eq!(status, 201, "{room}");
        assert_eq!(room["title"], "big");
        let (_, list) = app.get("/api/rooms").await;
        assert_eq!(ids(&list).len(), 1, "only the in-limit body created a room");
    }
);

memory_only_with!(unknown_path_is_404_not_found_with_envelope, |_| {}, |app| {
    for path in [
        "/nope",
        "/api",
        "/api/nope",
        "/api/rooms/1/nope",
        "/api/rooms/1/members/x",
        "/ws/x",
    ] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, 404, "GET {path}: {body}");
        assert_error_envelope(&body, "not_found");
    }
    let (status, body) = app.post_raw("/nope", "{}").await;
    assert_eq!(status, 404, "POST /nope: {body}");
    assert_error_envelope(&body, "not_found");
});

/// Sends `method path` (no body): status, headers and raw body.
async fn exchange(app: &TestApp, method: &str, path: &str) -> (u16, HeaderMap, Vec<u8>) {
    let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut res = app
        .http
        .request(method.clone(), format!("{}{path}", app.base))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let body = res.body().limit(1 << 24).await.unwrap_or_default();
    (res.status().as_u16(), res.headers().clone(), body.to_vec())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

memory_only_with!(
    a_wrong_method_on_a_known_path_is_405_with_allow_and_envelope,
    |_| {},
    |app| {
        for (method, path, allow) in [
            ("DELETE", "/api/rooms/1", "GET, HEAD"),
            ("PUT", "/api/rooms", "GET, HEAD, POST"),
            ("DELETE", "/api/rooms", "GET, HEAD, POST"),
            ("POST", "/health", "GET, HEAD"),
            ("POST", "/api/rooms/1/members", "GET, HEAD"),
            ("PATCH", "/api/rooms/1/messages", "GET, HEAD"),
            ("POST", "/chat", "GET, HEAD"),
            ("POST", "/", "GET, HEAD"),
            ("POST", "/ws", "GET, HEAD"),
            ("OPTIONS", "/health", "GET, HEAD"),
            ("POST", "/static/chat.js", "GET, HEAD"),
            ("DELETE", "/static/missing.js", "GET, HEAD"),
        ] {
            let (status, headers, body) = exchange(&app, method, path).await;
            let text = String::from_utf8_lossy(&body);
            assert_eq!(status, 405, "{method} {path}: {text}");
            assert_eq!(header(&headers, "allow"), allow, "{method} {path}");
            let body: Value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
            assert_error_envelope(&body, "method_not_allowed");
        }
    }
);

memory_only_with!(head_is_answered_wherever_get_is, |_| {}, |app| {
    let room = app.create_room("heads").await["id"].as_u64().unwrap();
    for path in [
        "/health".to_string(),
        "/api/rooms".to_string(),
        format!("/api/rooms/{room}"),
        format!("/api/rooms/{room}/members"),
        format!("/api/rooms/{room}/messages"),
        "/api/rooms/999999".to_string(),
        "/chat".to_string(),
        "/".to_string(),
        "/ws".to_string(),
        "/static/chat.js".to_string(),
        "/static/missing.js".to_string(),
        "/nope".to_string(),
    ] {
        let (get_status, get_headers, _) = exchange(&app, "GET", &path).await;
        let (status, headers, body) = exchange(&app, "HEAD", &path).await;
        assert_eq!(status, get_status, "HEAD {path}");
        assert_eq!(
            header(&headers, "content-type"),
            header(&get_headers, "content-type"),
            "HEAD {path}"
        );
        assert!(body.is_empty(), "HEAD {path} has a body");
    }
    let (status, _, _) = exchange(&app, "HEAD", "/health").await;
    assert_eq!(status, 200);
});

memory_only_with!(static_file_errors_use_the_json_envelope, |_| {}, |app| {
    for (path, status, code) in [
        ("/static/missing.js", 404, "not_found"),
        ("/static/no/such/dir/", 404, "not_found"),
        ("/static/", 404, "not_found"),
        ("/static/.hidden", 400, "invalid_parameter"),
        ("/static/*x", 400, "invalid_parameter"),
    ] {
        let (got, headers, body) = exchange(&app, "GET", path).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(got, status, "GET {path}: {text}");
        assert!(
            header(&headers, "content-type").starts_with("application/json"),
            "GET {path}: {headers:?}"
        );
        let body: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("GET {path}: not JSON: {text}"));
        assert_error_envelope(&body, code);
    }
});

memory_only_with!(page_and_files_carry_the_security_headers, |_| {}, |app| {
    for path in [
        "/chat",
        "/static/chat.js",
        "/static/favicon.svg",
        "/static/missing",
    ] {
        let (_, headers, _) = exchange(&app, "GET", path).await;
        let csp = header(&headers, "content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(
                csp.contains(directive),
                "{path}: CSP {csp:?} lacks {directive}"
            );
        }
        assert!(!csp.contains("unsafe"), "{path}: CSP {csp:?}");
        assert_eq!(header(&headers, "x-frame-options"), "DENY", "{path}");
        assert_eq!(
            header(&headers, "x-content-type-options"),
            "nosniff",
            "{path}"
        );
        assert_eq!(header(&headers, "referrer-policy"), "no-referrer", "{path}");
    }
    // The policy allows no inline script or style: the page has none.
    let (_, _, html) = app.get_text("/chat").await;
    for tag in html.split("<script").skip(1) {
        let open = &tag[..tag.find('>').unwrap()];
        assert!(
            open.contains("src="),
            "inline script in /chat: <script{open}>"
        );
    }
    let lower = html.to_lowercase();
    assert!(!lower.contains("<style"), "inline style element in /chat");
    assert!(
        !lower.contains(" style="),
        "inline style attribute in /chat"
    );
    assert!(
        !lower.contains(" onclick=")
            && !lower.contains(" onload=")
            && !lower.contains("javascript:"),
        "inline event handler in /chat"
    );
});

memory_only_with!(
    room_creation_beyond_the_burst_is_429_rate_limited,
    |s| {
        s.room_create_burst = 2.0;
        s.room_create_rate_per_sec = 0.001;
    },
    |app| {
        app.create_room("one").await;
        app.create_room("two").await;
        let (status, body) = app
            .post_raw("/api/rooms", json!({"title":"three"}).to_string())
            .await;
        assert_eq!(status, 429, "{body}");
        assert_error_envelope(&body, "rate_limited");
        let (_, list) = app.get("/api/rooms").await;
        assert_eq!(
            ids(&list).len(),
            2,
            "the refused room was not created: {list}"
        );

        // The WebSocket `create` shares the same per-client budget.
        let mut c = app.ws().await;
        let err = c
            .expect_error(
                json!({"type":"create","title":"four","nickname":"n"}),
                "rate_limited",
            )
            .await;
        assert_error_frame(&err, "rate_limited", Some("err"));
        c.assert_alive().await;
        let (_, list) = app.get("/api/rooms").await;
        assert_eq!(ids(&list).len(), 2, "{list}");
    }
);

memory_only_with!(chat_page_is_served_as_html, |_| {}, |app| {
    let (status, content_type, body) = app.get_text("/chat").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("text/html"),
        "content type {content_type:?}"
    );
    assert!(
        body.to_lowercase().contains("<html"),
        "not an HTML page: {body:.200}"
    );
    assert!(
        !body.contains("{{"),
        "template placeholders left unrendered"
    );
});

memory_only_with!(chat_script_is_served_from_static, |_| {}, |app| {
    let (status, content_type, body) = app.get_text("/static/chat.js").await;
    assert_eq!(
        status, 200,
        "GET /static/chat.js ({content_type}): {body:.200}"
    );
    assert!(
        content_type.contains("javascript"),
        "content type {content_type:?}"
    );
    assert!(!body.trim().is_empty(), "chat.js is empty");
});
