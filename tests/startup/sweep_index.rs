//! The empty-room sweep's index (`ix_chatRoom_empty`, change 5 in
//! `sql/schema.sql`): a database made before it existed gets it at
//! start-up, or, for a user who may not alter tables, a warning with the
//! statement to run; and with it the sweep's select reads only the rows it
//! returns, however many old rooms are joined (without it, every one).

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use chat_server::store::{SWEEP_INDEX, SWEEP_SELECT};

use super::helpers::TestDatabase;
use super::{as_admin, RowOnlyUser, Server};

async fn has_index(database: &TestDatabase) -> bool {
    database
        .query_u64(&format!(
            "SELECT COUNT(*) FROM information_schema.statistics \
             WHERE table_schema = '{}' AND index_name = '{SWEEP_INDEX}'",
            database.name
        ))
        .await
        > 0
}

/// A first start creates the database and its schema.
async fn create_schema(database: &TestDatabase) {
    let mut first = Server::start(&[("MYSQL_URL", database.url.as_str())]);
    first.wait_healthy().await;
    first.kill();
}

async fn drop_index(database: &TestDatabase) {
    as_admin(&[format!(
        "ALTER TABLE `{}`.chatRoom DROP INDEX {SWEEP_INDEX}",
        database.name
    )])
    .await;
}

#[actix_rt::test]
async fn a_database_without_the_sweep_index_gets_it_or_a_warning_naming_it() {
    let database = TestDatabase::new();
    create_schema(&database).await;
    assert!(has_index(&database).await, "a new database has it");
    drop_index(&database).await;

    let user = RowOnlyUser::create(&database).await;
    let mut limited = Server::start(&[("MYSQL_URL", user.url.as_str())]);
    limited.wait_healthy().await;
    let lines = limited.lines();
    assert!(
        lines.iter().any(|l| l.contains("WARN")
            && l.contains(SWEEP_INDEX)
            && l.contains("ALTER TABLE chatRoom ADD INDEX ix_chatRoom_empty")),
        "no warning naming the statement: {lines:#?}"
    );
    limited.kill();
    drop(user);
    assert!(!has_index(&database).await);

    let mut admin = Server::start(&[("MYSQL_URL", database.url.as_str())]);
    admin.wait_healthy().await;
    assert!(
        has_index(&database).await,
        "not added: {:#?}",
        admin.lines()
    );
    assert!(
        admin
            .lines()
            .iter()
            .any(|l| l.contains("added the index ix_chatRoom_empty")),
        "{:#?}",
        admin.lines()
    );
    admin.kill();
}

/// The sum of this session's `Handler_read_*` counters: index and table
/// rows the server read for this connection.
async fn rows_read(conn: &mut Conn) -> u64 {
    let counters: Vec<(String, String)> = conn
        .query("SHOW SESSION STATUS LIKE 'Handler_read%'")
        .await
        .expect("SHOW STATUS");
    counters
        .iter()
        .filter_map(|(_, value)| value.parse::<u64>().ok())
        .sum()
}

/// Rows read by the sweep's select on `conn`, net of what reading the
/// counters itself reads (measured the same way, with nothing between).
async fn sweep_reads(conn: &mut Conn) -> (u64, usize) {
    let a = rows_read(conn).await;
    let b = rows_read(conn).await;
    let overhead = b - a;
    let before = rows_read(conn).await;
    let found: Vec<(u64, String, u32, mysql_async::Value)> = conn
        .exec(SWEEP_SELECT, ("2025-01-01 00:00:00", 500u64))
        .await
        .expect("sweep select");
    let after = rows_read(conn).await;
    ((after - before).saturating_sub(overhead), found.len())
}

#[actix_rt::test]
async fn the_sweep_reads_only_the_rooms_it_returns() {
    const JOINED: usize = 3_000;
    let database = TestDatabase::new();
    create_schema(&database).await;
    let pool = mysql_async::Pool::new(database.url.as_str());
    let mut conn = pool.get_conn().await.expect("connect");
    // Old rooms that are joined (never candidates), interleaved in id
    // order with three old empty ones; two empty ones too new to sweep.
    let mut values: Vec<String> = (0..JOINED)
        .map(|i| format!("('joined', 1, '2020-01-01 00:00:{:02}')", i % 60))
        .collect();
    for at in [10, 1_500, 2_990] {
        values.insert(at, "('empty', 0, '2020-06-01 00:00:00')".into());
    }
    values.push("('fresh', 0, '2030-01-01 00:00:00')".into());
    values.push("('fresh', 0, '2030-01-02 00:00:00')".into());
    conn.query_drop(format!(
        "INSERT INTO chatRoom (title, join_member_count, created) VALUES {}",
        values.join(", ")
    ))
    .await
    .expect("insert rooms");
    conn.query_drop("ANALYZE TABLE chatRoom")
        .await
        .expect("analyze");

    let (with_index, found) = sweep_reads(&mut conn).await;
    assert_eq!(found, 3, "the three old empty rooms");
    assert!(
        with_index <= 20,
        "{with_index} rows read to find 3 candidates among {JOINED} joined rooms"
    );

    drop_index(&database).await;
    let (without, found) = sweep_reads(&mut conn).await;
    assert_eq!(found, 3);
    assert!(
        without >= JOINED as u64,
        "without the index the select should read every old room, read {without}: \
         is this test measuring anything?"
    );
    eprintln!("sweep select: {with_index} rows read with {SWEEP_INDEX}, {without} without");
    drop(conn);
    let _ = pool.disconnect().await;
}
