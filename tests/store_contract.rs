//! The `Store` contract, written once against `Arc<dyn Store>` and run
//! against both implementations: every test below exists as
//! `memory::<name>` and `mysql::<name>`.
//!
//! The MySQL tests need a server: `TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306`, no database path). Each test gets a fresh
//! database `chat_test_<pid>_<counter>_<nanos>` that is dropped when the
//! test ends, passed or failed. An unreachable server fails the tests; it
//! never skips them.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;

use chat_server::domain::{MessageSeq, Nickname, RoomId, RoomTitle, SocketId, TextLimits};
use chat_server::events::Events;
use chat_server::store::{
    LeaveOutcome, MemoryStore, MySqlStore, NewMember, NewMessage, SharedStore, StoreError,
};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Generates `memory::<test>` and `mysql::<test>` for each contract test.
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[actix_rt::test]
                async fn $name() {
                    super::$name(super::memory_store()).await;
                }
            )*
        }
        /// The memory store with events on: the contract holds, and the
        /// queue holds each room's events in order (see `check_streams`).
        mod memory_events {
            $(
                #[actix_rt::test]
                async fn $name() {
                    super::with_memory_events(super::$name).await;
                }
            )*
        }
        mod mysql {
            $(
                #[actix_rt::test]
                async fn $name() {
                    super::with_mysql(super::$name).await;
                }
            )*
        }
        /// The same with domain events on (`AMQP_URL`): the contract holds
        /// while every change also writes the outbox, and afterwards each
        /// room's outbox rows are its events in order (see
        /// `check_outbox`).
        mod mysql_events {
            $(
                #[actix_rt::test]
                async fn $name() {
                    super::with_mysql_events(super::$name).await;
                }
            )*
        }
    };
}

contract_tests!(
    ping_answers,
    create_get_and_list_newest_first,
    rooms_are_paged_newest_first_below_before,
    join_increments_count_and_lists_members_in_join_order,
    join_fails_for_a_missing_room,
    nickname_taken_is_exact_and_per_room,
    leave_decrements_and_unknown_sockets_are_not_members,
    last_leave_deletes_room_members_and_messages,
    message_ids_are_a_per_room_sequence,
    empty_batch_stores_nothing_and_consumes_no_id,
    messages_after_is_ascending_and_limited,
    recent_messages_are_the_last_n_ascending,
    delete_unjoined_rooms_deletes_only_old_memberless_rooms,
    remove_instance_members_removes_only_that_instance,
    remove_all_members_empties_every_room,
    emoji_round_trip,
    concurrent_join_then_leave_keeps_count_exact,
    concurrent_joins_then_concurrent_leaves,
    concurrent_last_two_leaves_delete_exactly_once,
    join_racing_last_leave_never_sees_half_a_room,
    concurrent_appends_get_gap_free_ids,
    concurrent_appends_to_many_rooms_keep_each_sequence,
    member_records_carry_sockets_and_instances_are_listed,
);

/// Large enough that the memory store's history cap never interferes.
fn memory_store() -> SharedStore {
    Arc::new(MemoryStore::new(100_000))
}

/// Base URL of the test server, without a database path.
fn mysql_base() -> (String, String) {
    let url = std::env::var("TEST_MYSQL_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "mysql://root@127.0.0.1:3306".to_owned());
    // Keep any `?options` after the database name we insert.
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b.to_owned(), format!("?{q}")),
        None => (url, String::new()),
    };
    (base.trim_end_matches('/').to_owned(), query)
}

fn unique_db_name() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("chat_test_{}_{n}_{nanos}", std::process::id())
}

/// Runs `test` against a `MySqlStore` on a fresh database and drops the
/// database afterwards, also when the test panics (the panic is resumed
/// after the clean-up).
async fn with_mysql<F, Fut>(test: F)
where
    F: FnOnce(SharedStore) -> Fut,
    Fut: Future<Output = ()>,
{
    with_mysql_db(|store, _db| test(store)).await;
}

/// Like `with_mysql`, with domain events recorded into the outbox; then
/// checks the outbox (`check_outbox`).
async fn with_mysql_events<F, Fut>(test: F)
where
    F: FnOnce(SharedStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let events = Arc::new(Events::for_mysql("contract", usize::MAX));
    with_mysql_db_events(Some(events), |store, db| async move {
        test(store).await;
        check_outbox(&db).await;
    })
    .await;
}

/// Runs `test` against a memory store with events on, then checks its
/// queue (`check_streams`).
async fn with_memory_events<F, Fut>(test: F)
where
    F: FnOnce(SharedStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let events = Arc::new(Events::for_memory("contract", usize::MAX));
    test(Arc::new(
        MemoryStore::new(100_000).with_events(events.clone()),
    ))
    .await;
    let rows = events
        .waiting()
        .into_iter()
        .map(|p| {
            let body: serde_json::Value = serde_json::from_str(&p.body).unwrap();
            let room = body["roomId"].as_u64().unwrap();
            let seq = body["seq"].as_u64().unwrap();
            (room, seq, p.routing_key, p.body)
        })
        .collect();
    check_streams(rows);
}

/// Per room, in outbox id order (the order the relay publishes), see
/// `check_streams`; and no sequence counter left for a deleted room.
async fn check_outbox(db: &str) {
    use mysql_async::prelude::Queryable;
    let mut conn = raw_conn(db).await;
    let rows: Vec<(u64, u64, String, String)> = conn
        .query("SELECT room_id, seq, routing_key, body FROM chatEventOutbox ORDER BY id")
        .await
        .unwrap();
    check_streams(rows);
    let orphans: Option<u64> = conn
        .query_first(
            "SELECT COUNT(*) FROM chatEventSeq s LEFT JOIN chatRoom r ON r.id = s.room_id \
             WHERE r.id IS NULL",
        )
        .await
        .unwrap();
    assert_eq!(orphans, Some(0), "sequence counters of deleted rooms");
    conn.disconnect().await.unwrap();
}

/// `(room, seq, routing key, body)` of buffered events in buffer order:
/// per room, seq 1, 2, 3, ... without a gap, `room.created` first, nothing
/// after `room.deleted`, message ids consecutive.
fn check_streams(rows: Vec<(u64, u64, String, String)>) {
    let mut rooms: std::collections::BTreeMap<u64, Vec<(u64, String, serde_json::Value)>> =
        Default::default();
    for (room, seq, key, body) in rows {
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["type"], key.as_str());
        assert_eq!(body["seq"], seq);
        assert_eq!(body["roomId"], room);
        rooms.entry(room).or_default().push((seq, key, body));
    }
    for (room, events) in &rooms {
        let seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "room {room}: seq in outbox order"
        );
        assert_eq!(events[0].1, "room.created", "room {room}");
        if let Some(end) = events.iter().position(|e| e.1 == "room.deleted") {
            assert_eq!(
                end,
                events.len() - 1,
                "room {room}: events after room.deleted"
            );
        }
        let ids: Vec<u64> = events
            .iter()
            .filter_map(|e| e.2["message"]["id"].as_u64())
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] + 1 == w[1]),
            "room {room}: message ids {ids:?}"
        );
    }
}

/// Like `with_mysql`, also passing `test` the name of the database.
async fn with_mysql_db<F, Fut>(test: F)
where
    F: FnOnce(SharedStore, String) -> Fut,
    Fut: Future<Output = ()>,
{
    with_mysql_db_events(None, test).await;
}

/// `with_mysql_db`, with `events` given to the store.
async fn with_mysql_db_events<F, Fut>(events: Option<Arc<Events>>, test: F)
where
    F: FnOnce(SharedStore, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let (base, query) = mysql_base();
    let db = unique_db_name();
    let url = format!("{base}/{db}{query}");
    let store = match MySqlStore::connect_with_events(&url, Duration::from_secs(20), events).await {
        Ok(store) => Arc::new(store),
        Err(e) => {
            drop_database(&base, &query, &db).await;
            panic!(
                "MySQL at {base} is not usable ({e}). These tests need a MySQL or \
                 MariaDB server: start one or point TEST_MYSQL_URL at it."
            )
        }
    };
    let shared: SharedStore = store.clone();
    let outcome = AssertUnwindSafe(test(shared, db.clone()))
        .catch_unwind()
        .await;
    store.disconnect().await;
    drop_database(&base, &query, &db).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A plain connection to a test database, for checks the trait cannot
/// express (e.g. orphan rows).
async fn raw_conn(db: &str) -> mysql_async::Conn {
    let (base, query) = mysql_base();
    mysql_async::Conn::from_url(format!("{base}/{db}{query}"))
        .await
        .unwrap_or_else(|e| panic!("raw connection to {db}: {e}"))
}

async fn drop_database(base: &str, query: &str, db: &str) {
    use mysql_async::prelude::Queryable;
    let cleanup = async {
        let mut conn = mysql_async::Conn::from_url(format!("{base}{query}")).await?;
        conn.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))
            .await?;
        conn.disconnect().await
    };
    match tokio::time::timeout(Duration::from_secs(30), cleanup).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("could not drop test database {db}: {e}"),
        Err(_) => eprintln!("dropping test database {db} timed out"),
    }
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000 + secs, 0).expect("valid time")
}

fn limits() -> TextLimits {
    TextLimits::default()
}

fn title(s: &str) -> RoomTitle {
    RoomTitle::parse(s, &limits()).expect("valid title")
}

fn member(nick: &str, socket: &str, instance: &str, at: i64) -> NewMember {
    NewMember {
        nickname: Nickname::parse(nick, &limits()).expect("valid nickname"),
        socket_id: SocketId::from(socket),
        instance_id: instance.to_owned(),
        joined_at: t(at),
    }
}

fn msg(nick: &str, content: &str, at: i64) -> NewMessage {
    NewMessage {
        nickname: nick.to_owned(),
        content: content.to_owned(),
        sent_at: t(at),
    }
}

fn sock(id: &str) -> SocketId {
    SocketId::from(id)
}

/// A room id `by` above `id`: one no test created.
fn beyond(id: RoomId, by: u64) -> RoomId {
    RoomId::new(id.get() + by)
}

/// A room id no test creates.
const NO_ROOM: RoomId = RoomId::new(4242);

async fn new_room(store: &SharedStore, name: &str) -> RoomId {
    store
        .create_room(&title(name), t(0))
        .await
        .expect("create")
        .id
}

async fn join(store: &SharedStore, room: RoomId, nick: &str, socket: &str) {
    store
        .add_member(room, &member(nick, socket, "inst-a", 1))
        .await
        .unwrap_or_else(|e| panic!("{nick} joins {room}: {e}"));
}

fn nicknames(members: &[chat_server::domain::Member]) -> Vec<&str> {
    members.iter().map(|m| m.nickname.as_str()).collect()
}

fn ids(messages: &[chat_server::domain::Message]) -> Vec<u64> {
    messages.iter().map(|m| m.id.get()).collect()
}

async fn assert_room_gone(store: &SharedStore, room: RoomId) {
    assert_eq!(store.room(room).await.expect("room"), None);
    assert!(!store
        .rooms(None, usize::MAX)
        .await
        .expect("rooms")
        .iter()
        .any(|r| r.id == room));
    assert!(matches!(
        store.members(room).await,
        Err(StoreError::RoomNotFound(id)) if id == room
    ));
    assert!(matches!(
        store.messages_after(room, MessageSeq::new(0), 50).await,
        Err(StoreError::RoomNotFound(id)) if id == room
    ));
    assert!(matches!(
        store.recent_messages(room, 50).await,
        Err(StoreError::RoomNotFound(id)) if id == room
    ));
    assert!(matches!(
        store.append_messages(room, &[msg("x", "late", 9)]).await,
        Err(StoreError::RoomNotFound(id)) if id == room
    ));
}

// ---------------------------------------------------------------------------
// Contract tests
// ---------------------------------------------------------------------------

async fn ping_answers(store: SharedStore) {
    store.ping().await.expect("ping");
}

async fn create_get_and_list_newest_first(store: SharedStore) {
    assert!(store.rooms(None, usize::MAX).await.unwrap().is_empty());
    let a = store.create_room(&title("first"), t(0)).await.unwrap();
    let b = store.create_room(&title("second"), t(1)).await.unwrap();
    let c = store.create_room(&title("  third  "), t(2)).await.unwrap();
    assert!(a.id < b.id && b.id < c.id, "ids increase");
    assert_eq!(
        (a.title.as_str(), a.member_count, a.created),
        ("first", 0, t(0))
    );
    assert_eq!(c.title, "third", "titles are stored trimmed");

    assert_eq!(store.room(b.id).await.unwrap(), Some(b.clone()));
    assert_eq!(store.room(beyond(c.id, 1000)).await.unwrap(), None);
    assert_eq!(store.rooms(None, usize::MAX).await.unwrap(), vec![c, b, a]);
}

async fn rooms_are_paged_newest_first_below_before(store: SharedStore) {
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(new_room(&store, &format!("room {i}")).await);
    }
    created.reverse(); // newest first
    let ids = |rooms: Vec<chat_server::domain::Room>| -> Vec<RoomId> {
        rooms.into_iter().map(|r| r.id).collect()
    };
    assert_eq!(ids(store.rooms(None, 3).await.unwrap()), created[..3]);
    assert_eq!(ids(store.rooms(None, 100).await.unwrap()), created);
    assert!(store.rooms(None, 0).await.unwrap().is_empty());
    // Walking the pages visits every room once, newest first.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = ids(store.rooms(before, 3).await.unwrap());
        assert!(page.len() <= 3, "{page:?}");
        let Some(&last) = page.last() else { break };
        seen.extend(page);
        before = Some(last);
    }
    assert_eq!(seen, created);
    // `before` need not be a room's id: ids below it, whatever exists.
    let between = beyond(created[4], 1);
    assert_eq!(
        ids(store.rooms(Some(between), 2).await.unwrap()),
        created[4..6]
    );
    assert!(store.rooms(Some(created[6]), 5).await.unwrap().is_empty());
    assert!(store
        .rooms(Some(RoomId::new(0)), 5)
        .await
        .unwrap()
        .is_empty());
    // A deleted room leaves no hole in a page.
    assert_eq!(store.delete_unjoined_rooms(t(1)).await.unwrap().len(), 7);
    assert!(store.rooms(None, 10).await.unwrap().is_empty());
}

async fn join_increments_count_and_lists_members_in_join_order(store: SharedStore) {
    let room = store.create_room(&title("lobby"), t(0)).await.unwrap();
    let mut expected = Vec::new();
    for (i, nick) in ["zed", "amy", "Mo"].into_iter().enumerate() {
        let at = 10 + i as i64;
        let out = store
            .add_member(room.id, &member(nick, &format!("s{i}"), "inst-a", at))
            .await
            .unwrap();
        assert_eq!(out.room.id, room.id);
        assert_eq!(out.room.title, "lobby");
        assert_eq!(out.room.created, t(0));
        assert_eq!(out.room.member_count, i as u32 + 1);
        assert_eq!(out.member.nickname, nick);
        assert_eq!(out.member.joined_at, t(at));
        expected.push(out.member);
    }
    assert_eq!(store.room(room.id).await.unwrap().unwrap().member_count, 3);
    assert_eq!(store.members(room.id).await.unwrap(), expected);
    assert_eq!(
        store.rooms(None, usize::MAX).await.unwrap()[0].member_count,
        3
    );
}

async fn join_fails_for_a_missing_room(store: SharedStore) {
    let err = store
        .add_member(NO_ROOM, &member("amy", "s1", "inst-a", 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::RoomNotFound(NO_ROOM)), "{err:?}");
    assert!(matches!(
        store.members(NO_ROOM).await,
        Err(StoreError::RoomNotFound(NO_ROOM))
    ));
}

async fn nickname_taken_is_exact_and_per_room(store: SharedStore) {
    let r1 = new_room(&store, "one").await;
    let r2 = new_room(&store, "two").await;
    join(&store, r1, "alice", "s1").await;

    let err = store
        .add_member(r1, &member("alice", "s2", "inst-b", 2))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NicknameTaken(n) if n == "alice"),
        "{err:?}"
    );
    // Trimmed input is the same nickname.
    assert!(matches!(
        store
            .add_member(r1, &member("  alice ", "s2", "inst-b", 2))
            .await,
        Err(StoreError::NicknameTaken(_))
    ));
    // Exact comparison: case, accents and compatibility forms all differ.
    for (i, other) in ["Alice", "ALICE", "alicé", "ａlice", "alice2"]
        .into_iter()
        .enumerate()
    {
        store
            .add_member(r1, &member(other, &format!("x{i}"), "inst-b", 3))
            .await
            .unwrap_or_else(|e| panic!("{other:?} is not \"alice\": {e}"));
    }
    // Per room: the same nickname is free in another room.
    join(&store, r2, "alice", "s9").await;

    // The failed joins did not count.
    assert_eq!(store.room(r1).await.unwrap().unwrap().member_count, 6);
    assert_eq!(store.members(r1).await.unwrap().len(), 6);

    // Once alice leaves, the nickname is free again.
    store.remove_member(r1, &sock("s1")).await.unwrap();
    join(&store, r1, "alice", "s10").await;
    assert_eq!(store.room(r1).await.unwrap().unwrap().member_count, 6);
}

async fn leave_decrements_and_unknown_sockets_are_not_members(store: SharedStore) {
    let room = new_room(&store, "room").await;
    join(&store, room, "a", "sa").await;
    join(&store, room, "b", "sb").await;
    join(&store, room, "c", "sc").await;

    assert_eq!(
        store.remove_member(room, &sock("sb")).await.unwrap(),
        LeaveOutcome::Left {
            nickname: "b".into(),
            remaining: 2
        }
    );
    assert_eq!(store.room(room).await.unwrap().unwrap().member_count, 2);
    assert_eq!(
        nicknames(&store.members(room).await.unwrap()),
        vec!["a", "c"]
    );
    // Twice, an unknown socket, a socket of another room, a missing room.
    assert_eq!(
        store.remove_member(room, &sock("sb")).await.unwrap(),
        LeaveOutcome::NotMember
    );
    assert_eq!(
        store.remove_member(room, &sock("nobody")).await.unwrap(),
        LeaveOutcome::NotMember
    );
    let other = new_room(&store, "other").await;
    join(&store, other, "z", "sz").await;
    assert_eq!(
        store.remove_member(room, &sock("sz")).await.unwrap(),
        LeaveOutcome::NotMember
    );
    assert_eq!(
        store
            .remove_member(RoomId::new(9999), &sock("sa"))
            .await
            .unwrap(),
        LeaveOutcome::NotMember
    );
    assert_eq!(store.room(room).await.unwrap().unwrap().member_count, 2);
    assert_eq!(store.room(other).await.unwrap().unwrap().member_count, 1);
}

async fn last_leave_deletes_room_members_and_messages(store: SharedStore) {
    let room = new_room(&store, "doomed").await;
    let bystander = new_room(&store, "bystander").await;
    join(&store, room, "a", "sa").await;
    join(&store, room, "b", "sb").await;
    join(&store, bystander, "a", "sa2").await;
    store
        .append_messages(room, &[msg("a", "one", 2), msg("b", "two", 3)])
        .await
        .unwrap();
    store
        .append_messages(bystander, &[msg("a", "stay", 2)])
        .await
        .unwrap();

    assert!(matches!(
        store.remove_member(room, &sock("sa")).await.unwrap(),
        LeaveOutcome::Left { remaining: 1, .. }
    ));
    assert_eq!(
        store.remove_member(room, &sock("sb")).await.unwrap(),
        LeaveOutcome::RoomDeleted {
            nickname: "b".into()
        }
    );
    assert_room_gone(&store, room).await;
    assert!(matches!(
        store
            .add_member(room, &member("c", "sc", "inst-a", 5))
            .await,
        Err(StoreError::RoomNotFound(_))
    ));
    assert_eq!(
        store.remove_member(room, &sock("sb")).await.unwrap(),
        LeaveOutcome::NotMember
    );
    // The other room is untouched.
    assert_eq!(
        store.room(bystander).await.unwrap().unwrap().member_count,
        1
    );
    assert_eq!(
        ids(&store
            .messages_after(bystander, MessageSeq::new(0), 10)
            .await
            .unwrap()),
        vec![1]
    );
}

async fn message_ids_are_a_per_room_sequence(store: SharedStore) {
    let a = new_room(&store, "a").await;
    let b = new_room(&store, "b").await;

    let first = store
        .append_messages(a, &[msg("x", "a1", 5)])
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].id, MessageSeq::new(1));
    assert_eq!(first[0].room_id, a);
    assert_eq!(first[0].nickname, "x");
    assert_eq!(first[0].content, "a1");
    assert_eq!(first[0].sent_at, t(5));

    let batch = store
        .append_messages(a, &[msg("x", "a2", 6), msg("y", "a3", 7)])
        .await
        .unwrap();
    assert_eq!(ids(&batch), vec![2, 3]);
    assert_eq!(batch[1].nickname, "y");
    assert_eq!(batch[1].content, "a3");

    // Room b has its own sequence.
    let in_b = store
        .append_messages(
            b,
            &[msg("z", "b1", 8), msg("z", "b2", 8), msg("z", "b3", 8)],
        )
        .await
        .unwrap();
    assert_eq!(ids(&in_b), vec![1, 2, 3]);
    assert!(in_b.iter().all(|m| m.room_id == b));
    let more = store
        .append_messages(a, &[msg("x", "a4", 9)])
        .await
        .unwrap();
    assert_eq!(ids(&more), vec![4]);

    // What was returned is what is stored.
    let stored = store
        .messages_after(a, MessageSeq::new(0), 100)
        .await
        .unwrap();
    let mut returned = first;
    returned.extend(batch);
    returned.extend(more);
    assert_eq!(stored, returned);

    assert!(matches!(
        store
            .append_messages(
                beyond(RoomId::new(a.get() + b.get()), 100),
                &[msg("x", "nowhere", 1)]
            )
            .await,
        Err(StoreError::RoomNotFound(_))
    ));
}

async fn empty_batch_stores_nothing_and_consumes_no_id(store: SharedStore) {
    let room = new_room(&store, "quiet").await;
    assert!(store.append_messages(room, &[]).await.unwrap().is_empty());
    assert!(matches!(
        store.append_messages(beyond(room, 100), &[]).await,
        Err(StoreError::RoomNotFound(_))
    ));
    let stored = store
        .append_messages(room, &[msg("x", "hi", 1)])
        .await
        .unwrap();
    assert_eq!(ids(&stored), vec![1]);
}

async fn messages_after_is_ascending_and_limited(store: SharedStore) {
    let room = new_room(&store, "history").await;
    let other = new_room(&store, "noise").await;
    assert!(store
        .messages_after(room, MessageSeq::new(0), 50)
        .await
        .unwrap()
        .is_empty());
    for chunk in [1..4, 4..5, 5..11] {
        let batch: Vec<NewMessage> = chunk
            .clone()
            .map(|i| msg("n", &format!("m{i}"), i))
            .collect();
        store.append_messages(room, &batch).await.unwrap();
        store.append_messages(other, &batch).await.unwrap();
    }

    let all = store
        .messages_after(room, MessageSeq::new(0), 50)
        .await
        .unwrap();
    assert_eq!(ids(&all), (1..=10).collect::<Vec<_>>());
    assert!(all.iter().all(|m| m.room_id == room));
    assert!(all.iter().all(|m| m.content == format!("m{}", m.id)));
    assert_eq!(
        ids(&store
            .messages_after(room, MessageSeq::new(3), 4)
            .await
            .unwrap()),
        vec![4, 5, 6, 7]
    );
    assert_eq!(
        ids(&store
            .messages_after(room, MessageSeq::new(8), 50)
            .await
            .unwrap()),
        vec![9, 10]
    );
    assert!(store
        .messages_after(room, MessageSeq::new(10), 50)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .messages_after(room, MessageSeq::new(500), 50)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .messages_after(room, MessageSeq::new(0), 0)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .messages_after(room, MessageSeq::new(0), 1)
            .await
            .unwrap()[0]
            .id,
        MessageSeq::new(1)
    );
    assert!(matches!(
        store
            .messages_after(
                beyond(RoomId::new(room.get() + other.get()), 100),
                MessageSeq::ZERO,
                0
            )
            .await,
        Err(StoreError::RoomNotFound(_))
    ));
}

async fn recent_messages_are_the_last_n_ascending(store: SharedStore) {
    let room = new_room(&store, "recent").await;
    let other = new_room(&store, "other").await;
    assert!(store.recent_messages(room, 5).await.unwrap().is_empty());
    let batch: Vec<NewMessage> = (1..=10).map(|i| msg("n", &format!("m{i}"), i)).collect();
    store.append_messages(room, &batch).await.unwrap();
    store.append_messages(other, &batch[..2]).await.unwrap();

    assert_eq!(
        ids(&store.recent_messages(room, 3).await.unwrap()),
        vec![8, 9, 10]
    );
    let all = store.recent_messages(room, 50).await.unwrap();
    assert_eq!(ids(&all), (1..=10).collect::<Vec<_>>());
    assert_eq!(all[9].content, "m10");
    assert!(store.recent_messages(room, 0).await.unwrap().is_empty());
    assert_eq!(
        ids(&store.recent_messages(other, 50).await.unwrap()),
        vec![1, 2]
    );
    assert!(matches!(
        store
            .recent_messages(beyond(RoomId::new(room.get() + other.get()), 100), 0)
            .await,
        Err(StoreError::RoomNotFound(_))
    ));
}

async fn delete_unjoined_rooms_deletes_only_old_memberless_rooms(store: SharedStore) {
    let old_empty = store
        .create_room(&title("old empty"), t(0))
        .await
        .unwrap()
        .id;
    let old_empty2 = store
        .create_room(&title("old empty 2"), t(10))
        .await
        .unwrap()
        .id;
    let old_joined = store
        .create_room(&title("old joined"), t(0))
        .await
        .unwrap()
        .id;
    let at_cutoff = store
        .create_room(&title("at cutoff"), t(50))
        .await
        .unwrap()
        .id;
    let young = store.create_room(&title("young"), t(100)).await.unwrap().id;
    join(&store, old_joined, "a", "sa").await;
    store
        .append_messages(old_empty, &[msg("ghost", "boo", 1)])
        .await
        .unwrap();

    let mut deleted = store.delete_unjoined_rooms(t(50)).await.unwrap();
    deleted.sort_unstable();
    assert_eq!(deleted, vec![old_empty, old_empty2]);
    assert_room_gone(&store, old_empty).await;
    assert_room_gone(&store, old_empty2).await;
    for live in [old_joined, at_cutoff, young] {
        assert!(store.room(live).await.unwrap().is_some(), "room {live}");
    }
    assert_eq!(store.members(old_joined).await.unwrap().len(), 1);

    // Nothing left to sweep at that cutoff.
    assert!(store.delete_unjoined_rooms(t(50)).await.unwrap().is_empty());
    // A later cutoff takes the rest of the memberless rooms only.
    let mut later = store.delete_unjoined_rooms(t(1000)).await.unwrap();
    later.sort_unstable();
    assert_eq!(later, vec![at_cutoff, young]);
    assert_eq!(
        store
            .rooms(None, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![old_joined]
    );
}

async fn remove_instance_members_removes_only_that_instance(store: SharedStore) {
    let r1 = new_room(&store, "mixed").await;
    let r2 = new_room(&store, "all dead").await;
    let r3 = new_room(&store, "all alive").await;
    let add = |room: RoomId, nick: &'static str, inst: &'static str| {
        let store = store.clone();
        async move {
            store
                .add_member(room, &member(nick, &format!("{inst}:{nick}"), inst, 1))
                .await
                .unwrap();
        }
    };
    add(r1, "a", "dead").await;
    add(r1, "b", "alive").await;
    add(r1, "a2", "dead").await;
    add(r2, "c", "dead").await;
    add(r2, "d", "dead").await;
    add(r3, "e", "alive").await;
    add(r3, "f", "dead-not").await;
    store
        .append_messages(r2, &[msg("c", "bye", 2)])
        .await
        .unwrap();

    let removed = store.remove_instance_members("dead").await.unwrap();
    // The exact shape: every dead member once, and exactly one removal per
    // deleted room flagged `room_deleted`.
    let mut who: Vec<(RoomId, String)> = removed
        .iter()
        .map(|r| (r.room_id, r.nickname.clone()))
        .collect();
    who.sort();
    assert_eq!(
        who,
        vec![
            (r1, "a".to_owned()),
            (r1, "a2".to_owned()),
            (r2, "c".to_owned()),
            (r2, "d".to_owned()),
        ]
    );
    assert_eq!(
        removed
            .iter()
            .filter(|r| r.room_deleted)
            .map(|r| r.room_id)
            .collect::<Vec<_>>(),
        vec![r2]
    );
    assert!(!removed.iter().any(|r| r.room_id == r1 && r.room_deleted));

    let r1_now = store.room(r1).await.unwrap().unwrap();
    assert_eq!(r1_now.member_count, 1);
    assert_eq!(nicknames(&store.members(r1).await.unwrap()), vec!["b"]);
    assert_room_gone(&store, r2).await;
    assert_eq!(store.room(r3).await.unwrap().unwrap().member_count, 2);
    assert_eq!(nicknames(&store.members(r3).await.unwrap()), vec!["e", "f"]);

    // Idempotent; the removed sockets are no longer members.
    assert!(store
        .remove_instance_members("dead")
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .remove_instance_members("nobody")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.remove_member(r1, &sock("dead:a")).await.unwrap(),
        LeaveOutcome::NotMember
    );
}

async fn remove_all_members_empties_every_room(store: SharedStore) {
    let r1 = new_room(&store, "two").await;
    let r2 = new_room(&store, "one").await;
    let unjoined = new_room(&store, "unjoined").await;
    join(&store, r1, "a", "s1").await;
    store
        .add_member(r1, &member("b", "s2", "inst-b", 1))
        .await
        .unwrap();
    join(&store, r2, "c", "s3").await;
    store
        .append_messages(r1, &[msg("a", "x", 2)])
        .await
        .unwrap();

    let removed = store.remove_all_members().await.unwrap();
    assert_eq!(removed.len(), 3);
    let mut who: Vec<(RoomId, String)> = removed
        .iter()
        .map(|r| (r.room_id, r.nickname.clone()))
        .collect();
    who.sort();
    assert_eq!(
        who,
        vec![(r1, "a".into()), (r1, "b".into()), (r2, "c".into())]
    );
    for room in [r1, r2] {
        assert_eq!(
            removed
                .iter()
                .filter(|r| r.room_id == room && r.room_deleted)
                .count(),
            1,
            "room {room} deleted exactly once: {removed:?}"
        );
        assert_room_gone(&store, room).await;
    }
    // A room nobody joined is left to the grace-period sweep.
    assert_eq!(store.room(unjoined).await.unwrap().unwrap().member_count, 0);
    assert!(store.remove_all_members().await.unwrap().is_empty());
}

async fn emoji_round_trip(store: SharedStore) {
    // Four-byte characters, at the default length limits.
    let long_title = "🦀".repeat(50);
    let room = store.create_room(&title(&long_title), t(0)).await.unwrap();
    assert_eq!(room.title, long_title);
    let party = store
        .create_room(&title("🎉 파티 party"), t(1))
        .await
        .unwrap();

    let nick = "😀".repeat(50);
    store
        .add_member(party.id, &member(&nick, "s1", "inst-a", 2))
        .await
        .unwrap();
    store
        .add_member(party.id, &member("🦀crab", "s2", "inst-a", 2))
        .await
        .unwrap();
    // Different emoji are different nicknames.
    store
        .add_member(party.id, &member("🦞crab", "s3", "inst-a", 2))
        .await
        .unwrap();
    assert!(matches!(
        store.add_member(party.id, &member("🦀crab", "s4", "inst-a", 2)).await,
        Err(StoreError::NicknameTaken(n)) if n == "🦀crab"
    ));

    let content = "hello 👋🏽 世界\nsecond line\twith tab 🧑‍🤝‍🧑";
    let long_content = "💬".repeat(1000);
    store
        .append_messages(
            party.id,
            &[msg("🦀crab", content, 3), msg(&nick, &long_content, 4)],
        )
        .await
        .unwrap();

    assert_eq!(
        store.room(room.id).await.unwrap().unwrap().title,
        long_title
    );
    assert_eq!(
        store.room(party.id).await.unwrap().unwrap().title,
        "🎉 파티 party"
    );
    assert_eq!(
        nicknames(&store.members(party.id).await.unwrap()),
        vec![nick.as_str(), "🦀crab", "🦞crab"]
    );
    let history = store.recent_messages(party.id, 10).await.unwrap();
    assert_eq!(history[0].nickname, "🦀crab");
    assert_eq!(history[0].content, content);
    assert_eq!(history[1].nickname, nick);
    assert_eq!(history[1].content, long_content);
    assert_eq!(
        store
            .messages_after(party.id, MessageSeq::ZERO, 10)
            .await
            .unwrap(),
        history
    );
}

// ---------------------------------------------------------------------------
// Concurrency tests: tasks run on the runtime at the same time, and with
// MySQL each uses its own pooled connection, so the database really sees
// the transactions interleave.
// ---------------------------------------------------------------------------

async fn concurrent_join_then_leave_keeps_count_exact(store: SharedStore) {
    let room = new_room(&store, "busy").await;
    join(&store, room, "keeper", "keeper").await;
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let nick = format!("user{i}");
                let sock = format!("sock{i}");
                let out = store
                    .add_member(room, &member(&nick, &sock, "inst-a", 2))
                    .await
                    .unwrap_or_else(|e| panic!("{nick} join: {e}"));
                assert!(out.room.member_count >= 2 && out.room.member_count <= 21);
                match store
                    .remove_member(room, &SocketId::from(sock.as_str()))
                    .await
                {
                    Ok(LeaveOutcome::Left {
                        nickname,
                        remaining,
                    }) => {
                        assert_eq!(nickname, nick);
                        assert!((1..=20).contains(&remaining), "{remaining}");
                    }
                    other => panic!("{nick} leave: {other:?}"),
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task panicked");
    }
    assert_eq!(store.room(room).await.unwrap().unwrap().member_count, 1);
    assert_eq!(
        nicknames(&store.members(room).await.unwrap()),
        vec!["keeper"]
    );
}

async fn concurrent_joins_then_concurrent_leaves(store: SharedStore) {
    let room = new_room(&store, "wave").await;
    join(&store, room, "keeper", "keeper").await;
    let run = |leave: bool| {
        let barrier = Arc::new(tokio::sync::Barrier::new(20));
        (0..20)
            .map(|i| {
                let store = store.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    let sock = format!("sock{i}");
                    if leave {
                        let out = store
                            .remove_member(room, &SocketId::from(sock.as_str()))
                            .await
                            .unwrap();
                        assert!(matches!(out, LeaveOutcome::Left { .. }), "{out:?}");
                    } else {
                        store
                            .add_member(room, &member(&format!("user{i}"), &sock, "inst-a", 2))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect::<Vec<_>>()
    };
    for task in run(false) {
        task.await.expect("join task");
    }
    assert_eq!(store.room(room).await.unwrap().unwrap().member_count, 21);
    let members = store.members(room).await.unwrap();
    let names: BTreeSet<String> = members.iter().map(|m| m.nickname.clone()).collect();
    let expected: BTreeSet<String> = std::iter::once("keeper".to_owned())
        .chain((0..20).map(|i| format!("user{i}")))
        .collect();
    assert_eq!(members.len(), 21);
    assert_eq!(names, expected);
    assert_eq!(members[0].nickname, "keeper");

    for task in run(true) {
        task.await.expect("leave task");
    }
    assert_eq!(store.room(room).await.unwrap().unwrap().member_count, 1);
    assert_eq!(
        nicknames(&store.members(room).await.unwrap()),
        vec!["keeper"]
    );
}

async fn concurrent_last_two_leaves_delete_exactly_once(store: SharedStore) {
    for round in 0..30 {
        let room = new_room(&store, &format!("pair {round}")).await;
        join(&store, room, "a", "sa").await;
        join(&store, room, "b", "sb").await;
        store
            .append_messages(room, &[msg("a", "hi", 2)])
            .await
            .unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let leave = |id: &'static str| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store.remove_member(room, &sock(id)).await
            })
        };
        let (x, y) = (leave("sa"), leave("sb"));
        let outcomes = [
            x.await.expect("task").expect("leave a"),
            y.await.expect("task").expect("leave b"),
        ];
        let deleted = outcomes
            .iter()
            .filter(|o| matches!(o, LeaveOutcome::RoomDeleted { .. }))
            .count();
        let left = outcomes
            .iter()
            .filter(|o| matches!(o, LeaveOutcome::Left { remaining: 1, .. }))
            .count();
        assert_eq!(
            (deleted, left),
            (1, 1),
            "round {round}: exactly one leave deletes the room: {outcomes:?}"
        );
        assert_room_gone(&store, room).await;
    }
}

async fn join_racing_last_leave_never_sees_half_a_room(store: SharedStore) {
    let mut seen = BTreeSet::new();
    for round in 0..30 {
        let room = new_room(&store, &format!("race {round}")).await;
        join(&store, room, "last", "s-last").await;
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let leaver = {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store.remove_member(room, &sock("s-last")).await
            })
        };
        let joiner = {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .add_member(room, &member("newcomer", "s-new", "inst-b", 3))
                    .await
            })
        };
        let left = leaver.await.expect("task").expect("leave");
        let joined = joiner.await.expect("task");
        let now = store.room(room).await.unwrap();
        match (&joined, &left, &now) {
            // The join came first: the leave left it behind in a live room.
            (Ok(out), LeaveOutcome::Left { remaining: 1, .. }, Some(r)) => {
                assert_eq!(out.room.member_count, 2, "round {round}");
                assert_eq!(r.member_count, 1, "round {round}");
                assert_eq!(
                    nicknames(&store.members(room).await.unwrap()),
                    vec!["newcomer"]
                );
                seen.insert("join first");
            }
            // The leave came first and deleted the room; the join found none.
            (Err(StoreError::RoomNotFound(_)), LeaveOutcome::RoomDeleted { .. }, None) => {
                assert_room_gone(&store, room).await;
                seen.insert("leave first");
            }
            other => panic!("round {round}: inconsistent outcome {other:?}"),
        }
        // Either way no room is left with a member but no count, or the
        // reverse.
        if let Some(r) = now {
            assert_eq!(
                r.member_count as usize,
                store.members(room).await.unwrap().len()
            );
        }
    }
    eprintln!("join/leave race outcomes seen: {seen:?}");
}

async fn concurrent_appends_get_gap_free_ids(store: SharedStore) {
    const TASKS: usize = 8;
    const BATCHES: usize = 12;
    let room = new_room(&store, "firehose").await;
    let other = new_room(&store, "other").await;
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let mut mine = Vec::new();
                for b in 0..BATCHES {
                    // Batch sizes 1, 2, 3 so that ranges of different widths
                    // interleave.
                    let batch: Vec<NewMessage> = (0..=(task + b) % 3)
                        .map(|k| msg(&format!("t{task}"), &format!("t{task}-b{b}-m{k}"), 1))
                        .collect();
                    let stored = store.append_messages(room, &batch).await.unwrap();
                    assert_eq!(stored.len(), batch.len());
                    // A batch gets consecutive ids, in order.
                    for pair in stored.windows(2) {
                        assert_eq!(pair[1].id, pair[0].id.next());
                    }
                    for (s, m) in stored.iter().zip(&batch) {
                        assert_eq!(s.content, m.content);
                    }
                    mine.extend(stored);
                }
                mine
            })
        })
        .collect();
    let mut returned = Vec::new();
    for task in tasks {
        returned.extend(task.await.expect("append task"));
    }
    returned.sort_by_key(|m| m.id);
    let total = returned.len() as u64;
    assert_eq!(
        ids(&returned),
        (1..=total).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );

    let stored = store
        .messages_after(room, MessageSeq::new(0), 10_000)
        .await
        .unwrap();
    assert_eq!(stored, returned, "the store holds exactly what it returned");
    // The other room's sequence is untouched.
    let next = store
        .append_messages(other, &[msg("x", "y", 1)])
        .await
        .unwrap();
    assert_eq!(ids(&next), vec![1]);
}

/// Appends `batches` batches to each of `rooms` from one task per room, all
/// at once, and checks every room ends with ids 1..=n, each task's messages
/// in the order it sent them. Returns how many appends `missing` refused.
async fn append_to_rooms_at_once(
    stores: &[SharedStore],
    rooms: &[RoomId],
    missing: RoomId,
    batches: usize,
) -> usize {
    let targets: Vec<RoomId> = rooms.iter().copied().chain([missing]).collect();
    let tasks = targets.len() * stores.len();
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks));
    let mut handles = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for &room in &targets {
            let store = store.clone();
            let barrier = barrier.clone();
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut refused = 0;
                for b in 0..batches {
                    let batch: Vec<NewMessage> = (0..=b % 4)
                        .map(|k| msg(&format!("s{s}"), &format!("s{s}-r{room}-b{b}-m{k}"), 1))
                        .collect();
                    match store.append_messages(room, &batch).await {
                        Ok(stored) => {
                            assert_ne!(room, missing, "stored in a room that does not exist");
                            assert_eq!(stored.len(), batch.len());
                            for (got, sent) in stored.iter().zip(&batch) {
                                assert_eq!((got.room_id, &got.content), (room, &sent.content));
                            }
                            for pair in stored.windows(2) {
                                assert_eq!(pair[1].id, pair[0].id.next());
                            }
                        }
                        Err(StoreError::RoomNotFound(r)) => {
                            assert_eq!((r, room), (missing, missing));
                            refused += 1;
                        }
                        Err(e) => panic!("append to room {room}: {e}"),
                    }
                }
                refused
            }));
        }
    }
    let mut refused = 0;
    for handle in handles {
        refused += handle.await.expect("append task");
    }
    let per_room: u64 = (0..batches).map(|b| (b % 4 + 1) as u64).sum::<u64>() * stores.len() as u64;
    for &room in rooms {
        let stored = stores[0]
            .messages_after(room, MessageSeq::new(0), 100_000)
            .await
            .unwrap();
        assert_eq!(
            ids(&stored),
            (1..=per_room).collect::<Vec<_>>(),
            "room {room}: no gaps, no duplicates"
        );
        // Each writer's messages are in the order it sent them.
        for s in 0..stores.len() {
            let mine: Vec<&str> = stored
                .iter()
                .filter(|m| m.nickname == format!("s{s}"))
                .map(|m| m.content.as_str())
                .collect();
            let mut sorted = mine.clone();
            sorted.sort_by_key(|c| batch_number(c));
            assert_eq!(mine, sorted, "room {room}: writer s{s} out of order");
        }
    }
    refused
}

/// The `b` of a content written by `append_to_rooms_at_once`.
fn batch_number(content: &str) -> usize {
    content
        .split("-b")
        .nth(1)
        .and_then(|rest| rest.split('-').next())
        .and_then(|b| b.parse().ok())
        .unwrap_or(usize::MAX)
}

async fn concurrent_appends_to_many_rooms_keep_each_sequence(store: SharedStore) {
    // Enough rooms at once that the MySQL store's writer puts several in
    // one transaction, and one room that does not exist among them.
    let mut rooms = Vec::new();
    for i in 0..12 {
        rooms.push(new_room(&store, &format!("busy {i}")).await);
    }
    let missing = beyond(rooms.iter().max().copied().unwrap_or(RoomId::new(0)), 1000);
    let refused = append_to_rooms_at_once(std::slice::from_ref(&store), &rooms, missing, 15).await;
    assert_eq!(refused, 15, "every append to the missing room is refused");
}

// ---------------------------------------------------------------------------
// Memory-only tests: the embedded store's own bounds.
// ---------------------------------------------------------------------------

mod memory_only {
    use super::*;
    use chat_server::store::{message_bytes, MESSAGE_OVERHEAD_BYTES};

    /// A message whose accounted size is `bytes`.
    fn sized(nick: &str, bytes: usize) -> NewMessage {
        msg(
            nick,
            &"m".repeat(bytes - nick.len() - MESSAGE_OVERHEAD_BYTES),
            3,
        )
    }

    /// Accounted bytes of a room's history, read through the trait.
    async fn stored_bytes(store: &SharedStore, room: RoomId) -> usize {
        let all = store
            .messages_after(room, MessageSeq::new(0), usize::MAX)
            .await;
        all.unwrap().iter().map(message_bytes).sum()
    }

    #[actix_rt::test]
    async fn history_stays_within_the_byte_budget_biggest_room_first() {
        const BUDGET: usize = 64 * 1024;
        let store: SharedStore = Arc::new(MemoryStore::new(100_000).with_max_bytes(BUDGET));
        let bystander = new_room(&store, "bystander").await;
        join(&store, bystander, "bea", "s-bea").await;
        store
            .append_messages(bystander, &[sized("bea", 2000), sized("bea", 2000)])
            .await
            .unwrap();
        let mut flooded = Vec::new();
        for i in 0..4 {
            let room = new_room(&store, &format!("flood {i}")).await;
            join(&store, room, "fl", &format!("s-fl{i}")).await;
            flooded.push(room);
        }
        for round in 0..200 {
            for &room in &flooded {
                let batch = [sized("fl", 1000), sized("fl", 1000)];
                store.append_messages(room, &batch).await.unwrap();
            }
            let mut total = stored_bytes(&store, bystander).await;
            for &room in &flooded {
                total += stored_bytes(&store, room).await;
            }
            assert!(total <= BUDGET, "round {round}: {total} > {BUDGET}");
        }
        // The bystander's messages are the oldest of all, yet its room was
        // never the biggest: it keeps its whole history.
        let kept = store
            .messages_after(bystander, MessageSeq::new(0), 10)
            .await
            .unwrap();
        assert_eq!(ids(&kept), [1, 2]);
        // The flooded rooms kept their newest messages, evened out.
        for &room in &flooded {
            let kept = store.recent_messages(room, 1000).await.unwrap();
            assert_eq!(kept.last().unwrap().id.get(), 400, "newest kept");
            let bytes = stored_bytes(&store, room).await;
            assert!((12_000..=16_000).contains(&bytes), "room {room}: {bytes}");
        }
        // Rooms and members are never evicted.
        assert_eq!(store.rooms(None, 100).await.unwrap().len(), 5);
        assert_eq!(nicknames(&store.members(flooded[0]).await.unwrap()), ["fl"]);
    }

    #[actix_rt::test]
    async fn room_ids_are_never_reused_by_a_restarted_store() {
        let mut seen = BTreeSet::new();
        let mut last = None;
        for _run in 0..3 {
            let store: SharedStore = Arc::new(MemoryStore::new(10));
            for i in 0..50 {
                let id = new_room(&store, &format!("r{i}")).await;
                assert!(last.is_none_or(|l| id > l), "{id} after {last:?}");
                assert!(id.get() < 1 << 53, "exact in JavaScript: {id}");
                assert!(seen.insert(id), "{id} reused");
                last = Some(id);
            }
            // The next run starts at least a millisecond later.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

// ---------------------------------------------------------------------------
// MySQL-only tests: what the trait cannot express.
// ---------------------------------------------------------------------------

mod mysql_only {
    use super::*;
    use chat_server::Chain;
    use mysql_async::prelude::Queryable;

    async fn count(conn: &mut mysql_async::Conn, sql: &str) -> u64 {
        conn.query_first::<u64, _>(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or(0)
    }

    #[actix_rt::test]
    async fn the_event_tables_are_needed_only_with_events() {
        with_mysql_db(|store, db| async move {
            let (base, query) = mysql_base();
            let url = format!("{base}/{db}{query}");
            let tables_sql = format!(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{db}'"
            );
            let tables_sql = tables_sql.as_str();
            let mut conn = raw_conn(&db).await;
            // A database set up before the event tables existed.
            conn.query_drop("DROP TABLE chatEventOutbox, chatEventSeq")
                .await
                .unwrap();
            assert_eq!(count(&mut conn, tables_sql).await, 3);
            // Without events no DDL runs (a user without CREATE still starts).
            let plain = MySqlStore::connect(&url, Duration::from_secs(20))
                .await
                .expect("connect without events");
            assert_eq!(count(&mut conn, tables_sql).await, 3);
            plain.disconnect().await;
            // With events the missing tables are created.
            let events = Arc::new(Events::for_mysql("t", 10));
            let eventful =
                MySqlStore::connect_with_events(&url, Duration::from_secs(20), Some(events))
                    .await
                    .expect("connect with events");
            assert_eq!(count(&mut conn, tables_sql).await, 5);
            eventful.disconnect().await;
            drop(store);
            conn.disconnect().await.unwrap();
        })
        .await;
    }

    #[actix_rt::test]
    async fn schema_is_idempotent_and_utf8mb4() {
        with_mysql_db(|store, db| async move {
            let room = new_room(&store, "kept").await;
            // A second process starting on the same database.
            let (base, query) = mysql_base();
            let again =
                MySqlStore::connect(&format!("{base}/{db}{query}"), Duration::from_secs(20))
                    .await
                    .expect("second connect");
            let again: SharedStore = Arc::new(again);
            assert_eq!(again.room(room).await.unwrap().unwrap().title, "kept");

            let mut conn = raw_conn(&db).await;
            let charset: Option<String> = conn
                .exec_first(
                    "SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA \
                     WHERE SCHEMA_NAME = ?",
                    (db.as_str(),),
                )
                .await
                .unwrap();
            assert_eq!(charset.as_deref(), Some("utf8mb4"));
            let tables = count(
                &mut conn,
                &format!(
                    "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{db}' \
                     AND ENGINE = 'InnoDB' AND TABLE_COLLATION LIKE 'utf8mb4%'"
                ),
            )
            .await;
            assert_eq!(
                tables, 5,
                "chatRoom, chatMember, chatMsg, chatEventOutbox, chatEventSeq"
            );
            conn.disconnect().await.unwrap();
        })
        .await;
    }

    #[actix_rt::test]
    async fn two_processes_writing_the_same_rooms_never_deadlock_or_collide() {
        with_mysql_db(|store, db| async move {
            // A second store on the same database is a second process, with
            // its own message writer grouping rooms in its own transactions.
            let (base, query) = mysql_base();
            let other =
                MySqlStore::connect(&format!("{base}/{db}{query}"), Duration::from_secs(20))
                    .await
                    .expect("second connect");
            let other: SharedStore = Arc::new(other);
            let mut rooms = Vec::new();
            for i in 0..8 {
                rooms.push(new_room(&store, &format!("shared {i}")).await);
            }
            let missing = beyond(rooms.iter().max().copied().unwrap_or(RoomId::new(0)), 1000);
            let refused =
                append_to_rooms_at_once(&[store.clone(), other.clone()], &rooms, missing, 12).await;
            assert_eq!(refused, 24);
        })
        .await;
    }

    #[actix_rt::test]
    async fn deleting_a_room_leaves_no_orphan_rows() {
        with_mysql_db(|store, db| async move {
            let mut conn = raw_conn(&db).await;
            for round in 0..5 {
                let room = new_room(&store, &format!("r{round}")).await;
                join(&store, room, "a", "sa").await;
                join(&store, room, "b", "sb").await;
                store
                    .append_messages(room, &[msg("a", "1", 1), msg("b", "2", 2)])
                    .await
                    .unwrap();
                let (x, y) = (
                    tokio::spawn({
                        let s = store.clone();
                        async move { s.remove_member(room, &sock("sa")).await }
                    }),
                    tokio::spawn({
                        let s = store.clone();
                        async move { s.remove_member(room, &sock("sb")).await }
                    }),
                );
                x.await.unwrap().unwrap();
                y.await.unwrap().unwrap();
            }
            assert_eq!(count(&mut conn, "SELECT COUNT(*) FROM chatRoom").await, 0);
            assert_eq!(count(&mut conn, "SELECT COUNT(*) FROM chatMember").await, 0);
            assert_eq!(count(&mut conn, "SELECT COUNT(*) FROM chatMsg").await, 0);
            // Counts equal member rows for every live room.
            let live = new_room(&store, "live").await;
            join(&store, live, "a", "sa").await;
            let drift = count(
                &mut conn,
                "SELECT COUNT(*) FROM chatRoom r WHERE r.join_member_count <> \
                 (SELECT COUNT(*) FROM chatMember m WHERE m.room_id = r.id)",
            )
            .await;
            assert_eq!(drift, 0);
            conn.disconnect().await.unwrap();
        })
        .await;
    }

    #[actix_rt::test]
    async fn a_held_lock_times_out_as_unavailable_and_the_store_recovers() {
        let (base, query) = mysql_base();
        let db = unique_db_name();
        let url = format!("{base}/{db}{query}");
        let store = MySqlStore::connect(&url, Duration::from_millis(500))
            .await
            .unwrap_or_else(|e| panic!("MySQL at {base} is not usable: {e}"));
        let store = Arc::new(store);
        let shared: SharedStore = store.clone();
        let outcome = AssertUnwindSafe(async {
            let room = new_room(&shared, "locked").await;
            let mut conn = raw_conn(&db).await;
            let mut tx = conn
                .start_transaction(mysql_async::TxOpts::default())
                .await
                .unwrap();
            let _: Option<u64> = tx
                .exec_first("SELECT id FROM chatRoom WHERE id = ? FOR UPDATE", (room,))
                .await
                .unwrap();
            let err = shared
                .add_member(room, &member("a", "sa", "inst-a", 1))
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
            tx.rollback().await.unwrap();
            conn.disconnect().await.unwrap();
            // The abandoned attempt did not half-happen, and the store works.
            join(&shared, room, "a", "sa").await;
            assert_eq!(shared.room(room).await.unwrap().unwrap().member_count, 1);
        })
        .catch_unwind()
        .await;
        store.disconnect().await;
        drop_database(&base, &query, &db).await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    #[actix_rt::test]
    async fn an_unreachable_server_is_unavailable() {
        // Port 1 on localhost: connection refused at once.
        let err = MySqlStore::connect("mysql://root@127.0.0.1:1/chat", Duration::from_secs(5))
            .await
            .err()
            .expect("no server on port 1");
        assert!(
            matches!(
                &err,
                StoreError::Unavailable {
                    what: "connecting",
                    ..
                }
            ),
            "{err:?}"
        );
        // The driver's error is kept as the cause, for the logs.
        let cause = std::error::Error::source(&err).expect("the driver error");
        assert!(
            Chain(&err).to_string().contains(&cause.to_string()),
            "{err:?}"
        );
        let err = MySqlStore::connect("postgres://nope", Duration::from_secs(5))
            .await
            .err()
            .expect("not a MySQL URL");
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        let (base, query) = mysql_base();
        let err = MySqlStore::connect(&format!("{base}{query}"), Duration::from_secs(5))
            .await
            .err()
            .expect("a URL without a database");
        assert!(
            matches!(&err, StoreError::Unavailable { .. })
                && Chain(&err).to_string().contains("must name a database"),
            "{err:?}"
        );
    }
}

async fn member_records_carry_sockets_and_instances_are_listed(store: SharedStore) {
    let room = new_room(&store, "records").await;
    assert!(store.instances_with_members().await.unwrap().is_empty());
    store
        .add_member(room, &member("ann", "i1:1", "i1", 1))
        .await
        .unwrap();
    store
        .add_member(room, &member("bob", "i2:7", "i2", 2))
        .await
        .unwrap();
    let records = store.member_records(room).await.unwrap();
    let got: Vec<(String, SocketId)> = records
        .iter()
        .map(|r| (r.member.nickname.clone(), r.socket_id.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("ann".to_owned(), sock("i1:1")),
            ("bob".to_owned(), sock("i2:7"))
        ]
    );
    assert_eq!(
        store.instances_with_members().await.unwrap(),
        vec!["i1".to_owned(), "i2".to_owned()]
    );
    // A bulk removal names the socket of each membership it ended, so other
    // processes can drop exactly that membership.
    let removed = store.remove_instance_members("i2").await.unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].socket_id, sock("i2:7"));
    assert_eq!(
        store.instances_with_members().await.unwrap(),
        vec!["i1".to_owned()]
    );
    assert!(matches!(
        store.member_records(beyond(room, 1000)).await,
        Err(StoreError::RoomNotFound(_))
    ));
}
