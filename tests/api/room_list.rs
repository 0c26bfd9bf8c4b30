//! `GET /api/rooms` is paged: newest first, `limit` (default 100, capped by
//! `ROOMS_PAGE_MAX`), `before=<id>` as the cursor, and `X-Next-Before` when
//! more rooms follow the page.

use serde_json::Value;

use crate::helpers::*;
use crate::{both_stores_with, memory_only_with};

/// `GET path`: status, the `X-Next-Before` header (if any) and JSON body.
async fn list(app: &TestApp, path: &str) -> (u16, Option<u64>, Value) {
    let mut res = app
        .http
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let next = res.headers().get("x-next-before").map(|v| {
        let text = v.to_str().expect("ASCII header");
        text.parse()
            .unwrap_or_else(|_| panic!("X-Next-Before {text:?} is not an id"))
    });
    let body = res.body().limit(1 << 24).await.unwrap_or_default();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (res.status().as_u16(), next, json)
}

/// Creates `n` rooms over REST; their ids, newest first.
async fn create_rooms(app: &TestApp, n: usize) -> Vec<u64> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let room = app.create_room(&format!("room {i}")).await;
        ids.push(room["id"].as_u64().expect("id"));
    }
    ids.reverse();
    ids
}

both_stores_with!(
    paging_through_250_rooms_visits_each_once_newest_first,
    |_| {},
    |app| {
        let created = create_rooms(&app, 250).await;
        let mut seen: Vec<u64> = Vec::new();
        let mut path = "/api/rooms?limit=100".to_owned();
        let mut pages = Vec::new();
        loop {
            let (status, next, body) = list(&app, &path).await;
            assert_eq!(status, 200, "{path}: {body}");
            let page = ids(&body);
            pages.push(page.len());
            // Full Room objects, as before paging.
            assert!(body[0]["title"].is_string() && body[0]["created"].is_string());
            seen.extend(&page);
            match next {
                Some(before) => {
                    assert_eq!(Some(&before), page.last(), "the page's last id");
                    path = format!("/api/rooms?limit=100&before={before}");
                }
                None => break,
            }
        }
        assert_eq!(
            pages,
            [100, 100, 50],
            "the header is absent on the last page"
        );
        assert_eq!(seen, created, "every room once, newest first");

        // Without parameters: the first 100, and the cursor.
        let (status, next, body) = list(&app, "/api/rooms").await;
        assert_eq!(status, 200);
        assert_eq!(ids(&body), created[..100]);
        assert_eq!(next, Some(created[99]));
    }
);

memory_only_with!(
    limit_is_capped_by_rooms_page_max_and_the_header_only_says_more,
    |s| s.rooms_page_max = 5,
    |app| {
        let created = create_rooms(&app, 8).await;
        for path in ["/api/rooms?limit=1000", "/api/rooms"] {
            let (status, next, body) = list(&app, path).await;
            assert_eq!(status, 200, "{path}: {body}");
            assert_eq!(ids(&body), created[..5], "{path}");
            assert_eq!(next, Some(created[4]), "{path}");
        }
        // Exactly the rest: no header.
        let path = format!("/api/rooms?before={}&limit=3", created[4]);
        let (_, next, body) = list(&app, &path).await;
        assert_eq!((ids(&body), next), (created[5..].to_vec(), None));
        // One fewer than the rest: the header.
        let path = format!("/api/rooms?before={}&limit=2", created[4]);
        let (_, next, body) = list(&app, &path).await;
        assert_eq!(
            (ids(&body), next),
            (created[5..7].to_vec(), Some(created[6]))
        );
        // `limit=0` is an empty page; `before` below every id too.
        for path in ["/api/rooms?limit=0", "/api/rooms?before=0"] {
            let (status, next, body) = list(&app, path).await;
            assert_eq!((status, next, ids(&body)), (200, None, vec![]), "{path}");
        }
    }
);

memory_only_with!(
    bad_limit_or_before_is_400_invalid_parameter,
    |_| {},
    |app| {
        create_rooms(&app, 2).await;
        for query in [
            "limit=-1",
            "limit=1.5",
            "limit=ten",
            "limit=",
            "limit=99999999999999999999999",
            "before=-3",
            "before=abc",
            "before=",
            "before=1e3",
            "limit=10&before=x",
        ] {
            let (status, next, body) = list(&app, &format!("/api/rooms?{query}")).await;
            assert_eq!(status, 400, "{query}: {body}");
            assert_error_envelope(&body, "invalid_parameter");
            assert_eq!(next, None, "{query}");
        }
    }
);
