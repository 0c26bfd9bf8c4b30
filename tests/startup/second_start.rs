//! A second start never destroys a running one (the instance lock and
//! bind-first, see `src/instance_lock.rs`), SIGHUP is ignored, and a
//! database the server cannot use (the original Node.js service's tables,
//! columns narrower than the limits) stops start-up with nothing changed.

use std::time::Duration;

use super::helpers::{TestDatabase, WsClient};
use super::wait::within;
use super::{as_admin, check_refused, Server};

/// The exit code of a refused start (`StartupError::REFUSED_EXIT`).
const REFUSED: i32 = 3;

/// A running server with a room where alice and bob chat.
struct Chatting {
    server: Server,
    room: u64,
    alice: WsClient,
    bob: WsClient,
}

impl Chatting {
    async fn start(vars: &[(&str, &str)]) -> Chatting {
        let mut server = Server::start(vars);
        server.wait_healthy().await;
        let room = server.create_room("running").await;
        let (alice, bob) = within(Duration::from_secs(20), "join and chat", async {
            let mut alice = WsClient::connect(server.port).await;
            alice.join(room, "alice").await;
            let mut bob = WsClient::connect(server.port).await;
            bob.join(room, "bob").await;
            alice.chat("before the second start").await;
            bob.recv_type("message").await;
            (alice, bob)
        })
        .await;
        Chatting {
            server,
            room,
            alice,
            bob,
        }
    }

    /// The room, its two members and its messages are all still there and
    /// chat still goes from alice to bob.
    async fn assert_intact(&mut self, database: &TestDatabase, messages: u64) {
        let room = self.room;
        let count = |sql: String| async move { database.query_u64(&sql).await };
        assert_eq!(
            count(format!("SELECT COUNT(*) FROM chatRoom WHERE id = {room}")).await,
            1,
            "the room was deleted"
        );
        assert_eq!(
            count(format!(
                "SELECT COUNT(*) FROM chatMember WHERE room_id = {room}"
            ))
            .await,
            2,
            "member rows were deleted"
        );
        assert_eq!(
            count(format!(
                "SELECT COUNT(*) FROM chatMsg WHERE room_id = {room}"
            ))
            .await,
            messages,
            "messages were deleted"
        );
        assert!(self.server.running(), "{:?}", self.server.lines());
        within(
            Duration::from_secs(10),
            "chat after the second start",
            async {
                let echo = self.alice.chat("after the second start").await;
                assert_eq!(echo["type"], "message", "{echo}");
                let seen = self.bob.recv_type("message").await;
                assert_eq!(
                    seen["message"]["content"], "after the second start",
                    "{seen}"
                );
            },
        )
        .await;
    }
}

#[actix_rt::test]
async fn a_second_start_on_the_same_port_exits_and_leaves_the_running_one_intact() {
    let database = TestDatabase::new();
    let url = database.url.as_str();
    let mut first = Chatting::start(&[("MYSQL_URL", url)]).await;
    let port = first.server.port.to_string();
    let mut second = Server::start(&[("MYSQL_URL", url), ("PORT", port.as_str())]);
    check_refused(
        &mut second,
        1,
        "cannot start: cannot bind ",
        &["Address already in use"],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    first.assert_intact(&database, 1).await;
}

#[actix_rt::test]
async fn a_second_start_without_redis_on_another_port_is_refused_and_deletes_nothing() {
    let database = TestDatabase::new();
    let url = database.url.as_str();
    let mut first = Chatting::start(&[("MYSQL_URL", url)]).await;
    let mut second = Server::start(&[("MYSQL_URL", url)]);
    check_refused(
        &mut second,
        REFUSED,
        "cannot start: refused, to protect a running process: ",
        &["REDIS_URL"],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    first.assert_intact(&database, 1).await;
}

#[actix_rt::test]
async fn a_duplicate_instance_id_with_redis_is_refused_and_deletes_nothing() {
    let database = TestDatabase::new();
    let url = database.url.as_str();
    let redis = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("h4dup{}", &database.name[database.name.len() - 4..]);
    let vars = [
        ("MYSQL_URL", url),
        ("REDIS_URL", redis.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
        ("INSTANCE_ID", "twin"),
    ];
    let mut first = Chatting::start(&vars).await;
    let mut second = Server::start(&vars);
    check_refused(
        &mut second,
        REFUSED,
        "cannot start: refused, to protect a running process: ",
        &["INSTANCE_ID=twin"],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    first.assert_intact(&database, 1).await;
    // A second process with its own id joins the cluster.
    let mut third = Server::start(&[
        ("MYSQL_URL", url),
        ("REDIS_URL", redis.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
        ("INSTANCE_ID", "other"),
    ]);
    third.wait_healthy().await;
    first.assert_intact(&database, 2).await;
}

#[actix_rt::test]
async fn a_sigkilled_solo_processs_rows_are_removed_by_the_next_start() {
    let database = TestDatabase::new();
    let url = database.url.as_str();
    let mut first = Chatting::start(&[("MYSQL_URL", url)]).await;
    let room = first.room;
    first.server.kill(); // SIGKILL: no goodbye, the rows stay
    let members = format!("SELECT COUNT(*) FROM chatMember WHERE room_id = {room}");
    assert_eq!(database.query_u64(&members).await, 2);
    // A new start, with another (random) instance id: the dead process's
    // lock is free, so its rows are provably stale.
    let mut next = Server::start(&[("MYSQL_URL", url)]);
    next.wait_healthy().await;
    assert_eq!(database.query_u64(&members).await, 0, "{:?}", next.lines());
    assert!(
        next.lines()
            .iter()
            .any(|l| l.contains("removed 2 stale members")),
        "{:?}",
        next.lines()
    );
}

#[actix_rt::test]
async fn sighup_is_ignored_and_chat_goes_on() {
    let database = TestDatabase::new();
    let url = database.url.as_str();
    let mut running = Chatting::start(&[("MYSQL_URL", url)]).await;
    let pid = running.server.child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", pid.as_str()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    super::wait::eventually(Duration::from_secs(5), "SIGHUP logged", || {
        let lines = running.server.lines();
        async move {
            if lines.iter().any(|l| l.contains("SIGHUP ignored")) {
                Ok(())
            } else {
                Err(format!("{lines:?}"))
            }
        }
    })
    .await;
    running.assert_intact(&database, 1).await;
}

/// The original service's tables, as its README creates them (utf8, INT
/// ids, a table-wide message id, the foreign key to the misspelled
/// `chatRoomt`), with a room, a member and a message.
fn legacy_schema(database: &str) -> Vec<String> {
    vec![
        format!("CREATE DATABASE `{database}` DEFAULT CHARACTER SET utf8 COLLATE utf8_general_ci"),
        format!("USE `{database}`"),
        "SET foreign_key_checks = 0".into(),
        "CREATE TABLE chatRoom (id INT NOT NULL AUTO_INCREMENT, title VARCHAR(50) NOT NULL, \
         join_member_count INT NOT NULL, created DATETIME DEFAULT CURRENT_TIMESTAMP, \
         PRIMARY KEY (id))"
            .into(),
        "CREATE TABLE chatMember (id INT NOT NULL AUTO_INCREMENT, nickname VARCHAR(50) NOT NULL, \
         room_id INT NOT NULL, socket_id VARCHAR(50), join_time DATETIME DEFAULT CURRENT_TIMESTAMP, \
         PRIMARY KEY (id), FOREIGN KEY (room_id) REFERENCES chatRoom (id))"
            .into(),
        "CREATE TABLE chatMsg (id INT NOT NULL AUTO_INCREMENT, room_id INT NOT NULL, \
         nickname VARCHAR(50) NOT NULL, content VARCHAR(100) NOT NULL, \
         chat_time DATETIME DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (id), \
         FOREIGN KEY (room_id) REFERENCES chatRoomt (id))"
            .into(),
        "INSERT INTO chatRoom (title, join_member_count) VALUES ('legacy room', 1)".into(),
        "INSERT INTO chatMember (nickname, room_id, socket_id) VALUES ('kim', 1, 'abc')".into(),
        "INSERT INTO chatMsg (room_id, nickname, content) VALUES (1, 'kim', 'annyeong')".into(),
        "SET foreign_key_checks = 1".into(),
    ]
}

#[actix_rt::test]
async fn the_original_services_database_is_refused_and_left_as_it_was() {
    let database = TestDatabase::new();
    as_admin(&legacy_schema(&database.name)).await;
    let mut server = Server::start(&[("MYSQL_URL", database.url.as_str())]);
    check_refused(
        &mut server,
        1,
        "cannot start: cannot open the store: ",
        &[
            &format!(
                "database `{}` holds tables the server cannot use",
                database.name
            ),
            "chatRoom lacks last_msg_id",
            "chatMember lacks instance_id",
            "chatMsg's primary key is (id), not (room_id, id)",
            "MYSQL_URL",
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    for (table, rows) in [("chatRoom", 1), ("chatMember", 1), ("chatMsg", 1)] {
        let n = database
            .query_u64(&format!("SELECT COUNT(*) FROM {table}"))
            .await;
        assert_eq!(n, rows, "{table}");
    }
    let columns = database
        .query_u64(&format!(
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = '{}'",
            database.name
        ))
        .await;
    assert_eq!(columns, 14, "a table was changed");
}

#[actix_rt::test]
async fn a_column_narrower_than_its_limit_is_refused() {
    let database = TestDatabase::new();
    let url = database.url.as_str();
    {
        let mut first = Server::start(&[("MYSQL_URL", url)]);
        first.wait_healthy().await;
    }
    as_admin(&[format!(
        "ALTER TABLE `{}`.chatRoom MODIFY title VARCHAR(60) NOT NULL",
        database.name
    )])
    .await;
    let mut server = Server::start(&[("MYSQL_URL", url), ("MAX_TITLE_CHARS", "100")]);
    check_refused(
        &mut server,
        1,
        "cannot start: cannot open the store: ",
        &[
            &format!(
                "database `{}` cannot hold what the settings allow",
                database.name
            ),
            "MAX_TITLE_CHARS=100 but chatRoom.title holds 60 characters",
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // A limit the column holds is fine.
    let mut fits = Server::start(&[("MYSQL_URL", url), ("MAX_TITLE_CHARS", "60")]);
    fits.wait_healthy().await;
}

/// The MySQL lock name of `INSTANCE_ID=id` on `database` (as
/// `src/instance_lock.rs` derives it; the format must stay stable, so that
/// processes of different versions agree).
fn instance_lock_name(database: &str, id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{database}\ninstance {id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("chat:{}", &hex[..40])
}

/// An administrator's connection (to `database`).
async fn admin_conn(database: &TestDatabase) -> mysql_async::Conn {
    mysql_async::Conn::new(
        mysql_async::Opts::from_url(&database.url).expect("the test database's URL"),
    )
    .await
    .expect("connect as admin")
}

/// Kills the connection that holds `name`; returns its id.
async fn kill_holder(admin: &mut mysql_async::Conn, name: &str) -> u64 {
    use mysql_async::prelude::Queryable;
    let holder: Option<Option<u64>> = admin
        .exec_first("SELECT IS_USED_LOCK(?)", (name,))
        .await
        .expect("IS_USED_LOCK");
    let holder = holder.flatten().expect("the running server holds its lock");
    admin
        .query_drop(format!("KILL CONNECTION {holder}"))
        .await
        .expect("KILL");
    holder
}

#[actix_rt::test]
async fn a_broken_lock_connection_is_replaced_and_the_lock_taken_again() {
    use mysql_async::prelude::Queryable;
    let database = TestDatabase::new();
    let url = database.url.as_str();
    let mut running = Chatting::start(&[("MYSQL_URL", url), ("INSTANCE_ID", "keeper")]).await;
    let name = instance_lock_name(&database.name, "keeper");
    let mut admin = admin_conn(&database).await;
    let killed = kill_holder(&mut admin, &name).await;
    super::wait::eventually(Duration::from_secs(10), "lock taken again", || {
        let lines = running.server.lines();
        async move {
            if lines.iter().any(|l| l.contains("instance lock held again")) {
                Ok(())
            } else {
                Err(format!("{lines:?}"))
            }
        }
    })
    .await;
    let holder: Option<Option<u64>> = admin
        .exec_first("SELECT IS_USED_LOCK(?)", (name.as_str(),))
        .await
        .expect("IS_USED_LOCK");
    let holder = holder.flatten();
    assert!(holder.is_some() && holder != Some(killed), "{holder:?}");
    running.assert_intact(&database, 1).await;
    // Held again: a duplicate is still refused.
    let mut twin = Server::start(&[("MYSQL_URL", url), ("INSTANCE_ID", "keeper")]);
    check_refused(
        &mut twin,
        REFUSED,
        "cannot start: refused, to protect a running process: ",
        &["INSTANCE_ID=keeper"],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let _ = admin.disconnect().await;
}

#[actix_rt::test]
async fn a_process_whose_lock_was_taken_meanwhile_shuts_down_cleanly() {
    use mysql_async::prelude::Queryable;
    let database = TestDatabase::new();
    let url = database.url.as_str();
    let mut running = Chatting::start(&[("MYSQL_URL", url), ("INSTANCE_ID", "usurped")]).await;
    let name = instance_lock_name(&database.name, "usurped");
    let mut admin = admin_conn(&database).await;
    kill_holder(&mut admin, &name).await;
    // Another process takes the lock before the server notices (waiting:
    // the killed connection's locks go a moment after the KILL; a waiter
    // gets the lock before the server's own `GET_LOCK(name, 0)` can).
    let got: Option<Option<i64>> = admin
        .exec_first("SELECT GET_LOCK(?, 5)", (name.as_str(),))
        .await
        .expect("GET_LOCK");
    assert_eq!(
        got.flatten(),
        Some(1),
        "the lock was not free after the kill"
    );
    let code = within(Duration::from_secs(15), "the server exits", async {
        loop {
            if let Some(status) = running.server.child.try_wait().expect("try_wait") {
                break status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(code, Some(1), "{:?}", running.server.lines());
    let lines = running.server.lines();
    assert!(
        lines.iter().any(|l| l.contains("lost the instance lock")),
        "{lines:?}"
    );
    // A clean shutdown: its members were told 1001 and their rows removed.
    assert_eq!(running.alice.close_code().await, Some(1001));
    let room = running.room;
    let members = format!("SELECT COUNT(*) FROM chatMember WHERE room_id = {room}");
    assert_eq!(database.query_u64(&members).await, 0);
    let _ = admin.disconnect().await;
}

#[actix_rt::test]
async fn processes_with_and_without_redis_never_share_a_database() {
    let redis = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    // A cluster process beside a running one without Redis.
    let database = TestDatabase::new();
    let url = database.url.as_str();
    let prefix = format!("h4mix{}", &database.name[database.name.len() - 4..]);
    let mut solo = Chatting::start(&[("MYSQL_URL", url)]).await;
    let mut clustered = Server::start(&[
        ("MYSQL_URL", url),
        ("REDIS_URL", redis.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
    ]);
    check_refused(
        &mut clustered,
        REFUSED,
        "cannot start: refused, to protect a running process: ",
        &["without REDIS_URL"],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    solo.assert_intact(&database, 1).await;

    // And one without Redis beside a running cluster process.
    let database = TestDatabase::new();
    let url = database.url.as_str();
    let mut clustered = Chatting::start(&[
        ("MYSQL_URL", url),
        ("REDIS_URL", redis.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
    ])
    .await;
    let mut solo = Server::start(&[("MYSQL_URL", url)]);
    check_refused(
        &mut solo,
        REFUSED,
        "cannot start: refused, to protect a running process: ",
        &["1 other live process(es)", "REDIS_URL"],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    clustered.assert_intact(&database, 1).await;
}

#[actix_rt::test]
async fn sighup_while_waiting_for_mysql_is_ignored_too() {
    // A loopback port where nothing listens: start-up waits for MySQL.
    let url = format!("mysql://root@127.0.0.1:{}/chat_down", super::free_port());
    let mut server = Server::start(&[("MYSQL_URL", url.as_str())]);
    super::wait::eventually(Duration::from_secs(10), "waiting for MySQL", || {
        let lines = server.lines();
        async move {
            if lines.iter().any(|l| l.contains("MySQL not ready")) {
                Ok(())
            } else {
                Err(format!("{lines:?}"))
            }
        }
    })
    .await;
    let pid = server.child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", pid.as_str()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        server.running(),
        "a SIGHUP stopped it: {:?}",
        server.lines()
    );
    assert!(
        server.lines().iter().any(|l| l.contains("SIGHUP ignored")),
        "{:?}",
        server.lines()
    );
}
