//! The schema: applied when a table is missing, then checked against what
//! the server needs, before anything reads or writes a row.
//!
//! Invariants enforced here (each start, on the connection that prepares
//! the database, before the pool or any clean-up exists):
//! - **No foreign schema is touched.** Tables that exist but lack a column
//!   the server uses (the original Node.js service's `chatRoom` without
//!   `last_msg_id`, `chatMember` without `instance_id`, a `chatMsg` keyed by
//!   a table-wide id) stop start-up with [`SchemaMismatch`], which names
//!   what is wrong and what to do; no row is read, changed or deleted.
//! - **Every accepted text fits its column.** `MAX_TITLE_CHARS`,
//!   `MAX_NICKNAME_CHARS` and `MAX_CONTENT_CHARS` are checked against the
//!   columns' sizes in `information_schema` ([`MySqlStore::check_limits`]):
//!   a limit the schema cannot hold would turn every long enough request
//!   into a 503, so start-up stops instead ([`LimitsTooLarge`]).

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Error as SqlError};

use super::{first, rows, unavailable, MySqlStore, ER_DUP_KEYNAME, NO_PRIVILEGE};
use crate::domain::TextLimits;
use crate::store::StoreError;

/// The schema, applied at start-up when one of its tables is missing (each
/// statement is idempotent).
const SCHEMA: &str = include_str!("../../../sql/schema.sql");
/// The tables `SCHEMA` creates, in its order.
const TABLES: [&str; 5] = [
    "chatRoom",
    "chatMember",
    "chatMsg",
    "chatEventOutbox",
    "chatEventSeq",
];

pub(super) const SCHEMA_STEP: &str = "applying the schema";

/// Applies `SCHEMA` unless all its tables exist already (then no DDL runs,
/// and no privilege beyond reading and writing rows is needed), then checks
/// that the tables are ours (see [`schema_problems`]): tables of another
/// schema stop start-up before any row is touched.
///
/// The event tables (`chatEventOutbox`, `chatEventSeq`) are required only
/// `with_events` (`AMQP_URL`): a database set up before they existed, for
/// a user who may not create tables, keeps working without events.
pub(super) async fn ensure_schema(conn: &mut Conn, with_events: bool) -> Result<(), StoreError> {
    let mut present = present_tables(conn).await?;
    let database: String = conn
        .query_first::<Option<String>, _>("SELECT DATABASE()")
        .await
        .map_err(unavailable(CHECKING))?
        .flatten()
        .unwrap_or_default();
    let missing = missing_tables(&present, with_events);
    if !missing.is_empty() {
        // Tables of another schema are refused before any DDL: a database
        // holding the original service's three tables gets no table added
        // (the event tables came later than the three and may be missing
        // alone).
        let core_present = CORE_TABLES
            .iter()
            .all(|t| present.iter().any(|p| p.eq_ignore_ascii_case(t)));
        if core_present {
            check_tables(conn, &present, database.clone()).await?;
        }
        apply_schema(conn, &database, missing).await?;
        present = present_tables(conn).await?;
    }
    check_tables(conn, &present, database).await?;
    ensure_sweep_index(conn).await
}

/// The tables of the connection's database, as `information_schema` spells
/// them.
async fn present_tables(conn: &mut Conn) -> Result<Vec<String>, StoreError> {
    conn.query("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()")
        .await
        .map_err(unavailable(CHECKING))
}

/// The index the empty-room sweep reads (see [`super::SWEEP_SELECT`]).
pub const SWEEP_INDEX: &str = "ix_chatRoom_empty";

/// Adds [`SWEEP_INDEX`] (as `sql/schema.sql` declares it).
const ADD_SWEEP_INDEX: &str =
    "ALTER TABLE chatRoom ADD INDEX ix_chatRoom_empty (join_member_count, created)";

/// Adds the sweep's index to a `chatRoom` made before the index existed
/// (change 5 in `sql/schema.sql`). Without it everything works, but each
/// sweep makes the database read every old room; so a user who may not
/// alter the table gets a warning with the statement to run, not a refusal
/// to start.
async fn ensure_sweep_index(conn: &mut Conn) -> Result<(), StoreError> {
    let found: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.statistics \
             WHERE table_schema = DATABASE() AND LOWER(table_name) = 'chatroom' \
             AND index_name = ?",
            (SWEEP_INDEX,),
        )
        .await
        .map_err(unavailable(CHECKING))?;
    if found.unwrap_or(0) > 0 {
        return Ok(());
    }
    match conn.query_drop(ADD_SWEEP_INDEX).await {
        Ok(()) => {
            log::info!("added the index {SWEEP_INDEX} to chatRoom, for the empty-room sweep");
            Ok(())
        }
        Err(SqlError::Server(ref s)) if s.code == ER_DUP_KEYNAME => Ok(()),
        Err(SqlError::Server(ref s)) if NO_PRIVILEGE.contains(&s.code) => {
            log::warn!(
                "chatRoom lacks the index {SWEEP_INDEX} and this user may not add it \
                 (ERROR {}: {}): the empty-room sweep works, but reads every old room; \
                 an administrator can run: {ADD_SWEEP_INDEX}",
                s.code,
                s.message
            );
            Ok(())
        }
        Err(e) => Err(StoreError::unavailable(SCHEMA_STEP, e)),
    }
}

/// The tables `TABLES` began with; the rest were added later, for events.
const CORE_TABLES: [&str; 3] = ["chatRoom", "chatMember", "chatMsg"];

/// Checks that the tables present are ours (see [`schema_problems`]).
async fn check_tables(
    conn: &mut Conn,
    present: &[String],
    database: String,
) -> Result<(), StoreError> {
    let columns: Vec<(String, String)> = rows(
        conn,
        "SELECT table_name, column_name FROM information_schema.columns \
         WHERE table_schema = DATABASE()",
        (),
    )
    .await
    .map_err(unavailable(CHECKING))?;
    let message_key: Vec<String> = rows(
        conn,
        "SELECT column_name FROM information_schema.key_column_usage \
         WHERE table_schema = DATABASE() AND table_name = ? AND constraint_name = 'PRIMARY' \
         ORDER BY ordinal_position",
        (msg_table_name(present),),
    )
    .await
    .map_err(unavailable(CHECKING))?;
    let problems = schema_problems(&columns, &message_key);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StoreError::unavailable(
            CHECKING,
            SchemaMismatch { database, problems },
        ))
    }
}

const CHECKING: &str = "checking the schema";

/// How this server spells `chatMsg` (lower-case with
/// `lower_case_table_names`), for an exact comparison in
/// `information_schema`.
fn msg_table_name(present: &[String]) -> String {
    present
        .iter()
        .find(|t| t.eq_ignore_ascii_case("chatMsg"))
        .cloned()
        .unwrap_or_else(|| "chatMsg".to_owned())
}

/// Runs every statement of `SCHEMA` (each is idempotent).
async fn apply_schema(
    conn: &mut Conn,
    database: &str,
    missing: Vec<&'static str>,
) -> Result<(), StoreError> {
    for statement in schema_statements(SCHEMA) {
        if let Err(e) = conn.query_drop(statement).await {
            return Err(match e {
                SqlError::Server(ref s) if NO_PRIVILEGE.contains(&s.code) => {
                    StoreError::unavailable(
                        SCHEMA_STEP,
                        SchemaNotApplied {
                            database: database.to_owned(),
                            missing,
                            cause: e,
                        },
                    )
                }
                e => StoreError::unavailable(SCHEMA_STEP, e),
            });
        }
    }
    log::info!("created the missing tables {}", missing.join(", "));
    Ok(())
}

/// Every column the server reads or writes, by table (as in `SCHEMA`).
const COLUMNS: [(&str, &[&str]); 3] = [
    (
        "chatRoom",
        &["id", "title", "join_member_count", "last_msg_id", "created"],
    ),
    (
        "chatMember",
        &[
            "id",
            "nickname",
            "room_id",
            "socket_id",
            "instance_id",
            "join_time",
        ],
    ),
    (
        "chatMsg",
        &["id", "room_id", "nickname", "content", "chat_time"],
    ),
];

/// What makes existing tables unusable, in words for an operator: a column
/// of `COLUMNS` that is missing, or a `chatMsg` whose primary key is not the
/// per-room sequence `(room_id, id)` (the original service's table-wide
/// AUTO_INCREMENT id would make the second room's first message collide
/// with the first room's). `columns` are `(table, column)` pairs and
/// `message_key` the columns of `chatMsg`'s primary key, in order; names
/// compare without regard to case, as MySQL's do.
pub(super) fn schema_problems(columns: &[(String, String)], message_key: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for (table, wanted) in COLUMNS {
        let lacking: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|w| {
                !columns
                    .iter()
                    .any(|(t, c)| t.eq_ignore_ascii_case(table) && c.eq_ignore_ascii_case(w))
            })
            .collect();
        if !lacking.is_empty() {
            problems.push(format!("{table} lacks {}", lacking.join(", ")));
        }
    }
    let key: Vec<String> = message_key.iter().map(|c| c.to_ascii_lowercase()).collect();
    if key != ["room_id", "id"] {
        problems.push(format!(
            "chatMsg's primary key is ({}), not (room_id, id)",
            message_key.join(", ")
        ));
    }
    problems
}

/// Existing tables are not the server's: refused, never changed.
#[derive(Debug, thiserror::Error)]
#[error(
    "database `{database}` holds tables the server cannot use ({}); they look like the \
     original Node.js service's. The server changes no table it did not create: point \
     MYSQL_URL at a new database (the server creates it with sql/schema.sql), or move the \
     data over first (README, \"Moving from the original service\")",
    .problems.join("; ")
)]
pub(super) struct SchemaMismatch {
    database: String,
    problems: Vec<String>,
}

/// A text column the limits are checked against, from
/// `information_schema.columns` (sizes are absent for non-text columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TextColumn {
    pub table: String,
    pub column: String,
    /// `character_maximum_length`: characters (VARCHAR) or bytes (TEXT).
    pub max_chars: Option<u64>,
    /// `character_octet_length`: bytes.
    pub max_bytes: Option<u64>,
    pub charset: Option<String>,
    /// The character set's longest character, in bytes.
    pub bytes_per_char: Option<u64>,
}

impl TextColumn {
    /// How many characters the column holds whatever they are: every one
    /// may take the character set's longest encoding.
    fn capacity(&self) -> Option<u64> {
        let by_bytes = match (self.max_bytes, self.bytes_per_char) {
            (Some(bytes), Some(per)) if per > 0 => Some(bytes / per),
            _ => None,
        };
        match (self.max_chars, by_bytes) {
            (Some(c), Some(b)) => Some(c.min(b)),
            (c, b) => c.or(b),
        }
    }
}

/// Where each limit is stored: (table, column, setting).
const LIMITED: [(&str, &str, &str); 4] = [
    ("chatRoom", "title", "MAX_TITLE_CHARS"),
    ("chatMember", "nickname", "MAX_NICKNAME_CHARS"),
    ("chatMsg", "nickname", "MAX_NICKNAME_CHARS"),
    ("chatMsg", "content", "MAX_CONTENT_CHARS"),
];

fn limit_of(limits: &TextLimits, setting: &str) -> usize {
    match setting {
        "MAX_TITLE_CHARS" => limits.title,
        "MAX_NICKNAME_CHARS" => limits.nickname,
        _ => limits.content,
    }
}

/// What the settings allow that the columns cannot hold, in words for an
/// operator: a limit above a column's capacity in characters of its
/// character set's longest encoding, or a column that is not utf8mb4 (it
/// cannot store characters outside the Basic Multilingual Plane, which
/// every text may contain). A column not found is left to
/// [`schema_problems`].
pub(super) fn limit_problems(columns: &[TextColumn], limits: &TextLimits) -> Vec<String> {
    let mut problems = Vec::new();
    for (table, name, setting) in LIMITED {
        let Some(column) = columns
            .iter()
            .find(|c| c.table.eq_ignore_ascii_case(table) && c.column.eq_ignore_ascii_case(name))
        else {
            continue;
        };
        if let Some(charset) = column.charset.as_deref() {
            if !charset.eq_ignore_ascii_case("utf8mb4") {
                problems.push(format!(
                    "{table}.{name} is {charset}, not utf8mb4: emoji and other characters \
                     outside the Basic Multilingual Plane cannot be stored"
                ));
            }
        }
        let limit = limit_of(limits, setting);
        if let Some(capacity) = column.capacity() {
            if limit as u64 > capacity {
                problems.push(format!(
                    "{setting}={limit} but {table}.{name} holds {capacity} characters"
                ));
            }
        }
    }
    problems
}

/// The settings allow texts the schema cannot store.
#[derive(Debug, thiserror::Error)]
#[error(
    "database `{database}` cannot hold what the settings allow: {}. Lower the setting, or \
     widen the column (sql/schema.sql shows the server's types)",
    .problems.join("; ")
)]
pub(super) struct LimitsTooLarge {
    database: String,
    problems: Vec<String>,
}

impl MySqlStore {
    /// Checks that every text the limits allow fits its column (see
    /// [`limit_problems`]); run once at start-up, before any client is
    /// served. A refusal names the setting, the column and its size; it is
    /// not healed by waiting ([`super::may_heal`] is false).
    pub async fn check_limits(&self, limits: &TextLimits) -> Result<(), StoreError> {
        type ColumnRow = (
            String,
            String,
            Option<u64>,
            Option<u64>,
            Option<String>,
            Option<u64>,
        );
        let (database, columns) = self
            .with_conn(CHECKING, true, |mut conn| async move {
                let database: Option<Option<String>> =
                    first(&mut conn, "SELECT DATABASE()", ()).await?;
                let columns: Vec<ColumnRow> = rows(
                    &mut conn,
                    "SELECT c.table_name, c.column_name, c.character_maximum_length, \
                     c.character_octet_length, c.character_set_name, s.maxlen \
                     FROM information_schema.columns c \
                     LEFT JOIN information_schema.character_sets s \
                     ON s.character_set_name = c.character_set_name \
                     WHERE c.table_schema = DATABASE()",
                    (),
                )
                .await?;
                Ok((database.flatten().unwrap_or_default(), columns))
            })
            .await?;
        let columns: Vec<TextColumn> = columns
            .into_iter()
            .map(
                |(table, column, max_chars, max_bytes, charset, bytes_per_char)| TextColumn {
                    table,
                    column,
                    max_chars,
                    max_bytes,
                    charset,
                    bytes_per_char,
                },
            )
            .collect();
        let problems = limit_problems(&columns, limits);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StoreError::unavailable(
                CHECKING,
                LimitsTooLarge { database, problems },
            ))
        }
    }
}

/// The tables of `TABLES` not in `present` (compared without regard to
/// case, as servers with `lower_case_table_names` store them lower-case).
fn missing_tables(present: &[String], with_events: bool) -> Vec<&'static str> {
    TABLES
        .into_iter()
        .filter(|t| with_events || CORE_TABLES.contains(t))
        .filter(|t| !present.iter().any(|p| p.eq_ignore_ascii_case(t)))
        .collect()
}

/// The schema is incomplete and this user may not complete it.
#[derive(Debug, thiserror::Error)]
#[error(
    "database `{database}` lacks the tables {} and this user may not create them: \
     have an administrator apply sql/schema.sql (mysql {database} < sql/schema.sql)",
    .missing.join(", ")
)]
pub(super) struct SchemaNotApplied {
    pub(super) database: String,
    pub(super) missing: Vec<&'static str>,
    #[source]
    pub(super) cause: SqlError,
}

/// The statements of a schema file: whole-line `--` comments dropped, the
/// rest split on `;`.
pub fn schema_statements(schema: &str) -> Vec<String> {
    let code: String = schema
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .map(|line| format!("{line}\n"))
        .collect();
    code.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Chain;

    #[test]
    fn schema_splits_into_its_tables() {
        let statements = schema_statements(SCHEMA);
        assert_eq!(statements.len(), TABLES.len(), "{statements:#?}");
        for (s, table) in statements.iter().zip(TABLES) {
            assert!(
                s.starts_with(&format!("CREATE TABLE IF NOT EXISTS {table} (")),
                "{s}"
            );
            assert!(s.contains("ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"), "{s}");
        }
    }

    #[test]
    fn missing_tables_are_found_whatever_their_case() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(missing_tables(&[], true), TABLES.to_vec());
        assert_eq!(missing_tables(&[], false), CORE_TABLES.to_vec());
        assert!(missing_tables(&names(&["chatRoom", "chatMember", "chatMsg"]), false).is_empty());
        let all = [
            "chatRoom",
            "chatMember",
            "chatMsg",
            "chatEventOutbox",
            "chatEventSeq",
        ];
        assert!(missing_tables(&names(&[&all[..], &["x"]].concat()), true).is_empty());
        assert!(missing_tables(
            &names(&[
                "chatroom",
                "CHATMEMBER",
                "chatmsg",
                "chateventoutbox",
                "CHATEVENTSEQ"
            ]),
            true
        )
        .is_empty());
        assert_eq!(
            missing_tables(&names(&["chatRoom", "chatMsg", "chatEventOutbox"]), true),
            ["chatMember", "chatEventSeq"]
        );
    }

    #[test]
    fn a_schema_this_user_cannot_apply_says_what_to_run() {
        let e = StoreError::unavailable(
            SCHEMA_STEP,
            SchemaNotApplied {
                database: "chat".into(),
                missing: vec!["chatRoom", "chatMsg"],
                cause: server_error(1142),
            },
        );
        let chain = Chain(&e).to_string();
        assert!(chain.contains("sql/schema.sql"), "{chain}");
        assert!(
            chain.contains("database `chat` lacks the tables chatRoom, chatMsg and"),
            "{chain}"
        );
        assert!(chain.contains("ERROR 1142"), "{chain}");
    }

    fn server_error(code: u16) -> SqlError {
        SqlError::Server(mysql_async::ServerError {
            code,
            message: format!("error {code}"),
            state: "HY000".into(),
        })
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(t, c)| (t.to_string(), c.to_string()))
            .collect()
    }

    fn ours() -> Vec<(String, String)> {
        COLUMNS
            .iter()
            .flat_map(|(t, cs)| cs.iter().map(move |c| (t.to_string(), c.to_string())))
            .collect()
    }

    fn key(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn our_schema_has_no_problems_whatever_the_case() {
        assert_eq!(
            schema_problems(&ours(), &key(&["room_id", "id"])),
            Vec::<String>::new()
        );
        let lower: Vec<(String, String)> = ours()
            .into_iter()
            .map(|(t, c)| (t.to_lowercase(), c.to_uppercase()))
            .collect();
        assert!(schema_problems(&lower, &key(&["ROOM_ID", "ID"])).is_empty());
        // A column of our own beside them is no problem.
        let mut more = ours();
        more.push(("chatRoom".into(), "topic".into()));
        assert!(schema_problems(&more, &key(&["room_id", "id"])).is_empty());
    }

    #[test]
    fn the_original_services_tables_are_named_with_what_they_lack() {
        // The original README's tables.
        let legacy = pairs(&[
            ("chatRoom", "id"),
            ("chatRoom", "title"),
            ("chatRoom", "join_member_count"),
            ("chatRoom", "created"),
            ("chatMember", "id"),
            ("chatMember", "nickname"),
            ("chatMember", "room_id"),
            ("chatMember", "socket_id"),
            ("chatMember", "join_time"),
            ("chatMsg", "id"),
            ("chatMsg", "room_id"),
            ("chatMsg", "nickname"),
            ("chatMsg", "content"),
            ("chatMsg", "chat_time"),
        ]);
        assert_eq!(
            schema_problems(&legacy, &key(&["id"])),
            [
                "chatRoom lacks last_msg_id",
                "chatMember lacks instance_id",
                "chatMsg's primary key is (id), not (room_id, id)",
            ]
        );
        let e = StoreError::unavailable(
            CHECKING,
            SchemaMismatch {
                database: "chatDb".into(),
                problems: schema_problems(&legacy, &key(&["id"])),
            },
        );
        let chain = Chain(&e).to_string();
        assert!(chain.contains("database `chatDb` holds tables the server cannot use (chatRoom lacks last_msg_id; "), "{chain}");
        assert!(chain.contains("MYSQL_URL"), "{chain}");
        assert!(!super::super::may_heal(&e), "{chain}");
    }

    fn column(
        table: &str,
        name: &str,
        chars: u64,
        bytes: u64,
        charset: &str,
        per: u64,
    ) -> TextColumn {
        TextColumn {
            table: table.into(),
            column: name.into(),
            max_chars: Some(chars),
            max_bytes: Some(bytes),
            charset: Some(charset.into()),
            bytes_per_char: Some(per),
        }
    }

    /// The text columns of `sql/schema.sql` as MariaDB reports them.
    fn our_text_columns() -> Vec<TextColumn> {
        vec![
            column("chatRoom", "title", 255, 1020, "utf8mb4", 4),
            column("chatMember", "nickname", 255, 1020, "utf8mb4", 4),
            column("chatMsg", "nickname", 255, 1020, "utf8mb4", 4),
            column("chatMsg", "content", 65535, 65535, "utf8mb4", 4),
        ]
    }

    #[test]
    fn our_columns_hold_the_largest_limits_the_settings_accept() {
        let limits = TextLimits {
            title: crate::config::MYSQL_MAX_NAME_CHARS,
            nickname: crate::config::MYSQL_MAX_NAME_CHARS,
            content: crate::config::MYSQL_MAX_CONTENT_CHARS,
        };
        assert_eq!(
            limit_problems(&our_text_columns(), &limits),
            Vec::<String>::new()
        );
        assert!(limit_problems(&our_text_columns(), &TextLimits::default()).is_empty());
    }

    #[test]
    fn a_narrower_column_or_another_charset_is_named_with_the_setting() {
        let mut columns = our_text_columns();
        columns[0] = column("chatRoom", "title", 60, 240, "utf8mb4", 4);
        columns[3] = column("chatMsg", "content", 100, 300, "utf8mb3", 3);
        let limits = TextLimits {
            title: 100,
            nickname: 50,
            content: 1000,
        };
        assert_eq!(
            limit_problems(&columns, &limits),
            [
                "MAX_TITLE_CHARS=100 but chatRoom.title holds 60 characters",
                "chatMsg.content is utf8mb3, not utf8mb4: emoji and other characters \
                 outside the Basic Multilingual Plane cannot be stored",
                "MAX_CONTENT_CHARS=1000 but chatMsg.content holds 100 characters",
            ]
        );
        // TEXT counts bytes: 16,384 four-byte characters do not fit.
        let limits = TextLimits {
            content: 16_384,
            ..TextLimits::default()
        };
        assert_eq!(
            limit_problems(&our_text_columns(), &limits),
            ["MAX_CONTENT_CHARS=16384 but chatMsg.content holds 16383 characters"]
        );
        // Exactly full is fine.
        let limits = TextLimits {
            title: 60,
            ..TextLimits::default()
        };
        columns[3] = our_text_columns()[3].clone();
        assert!(limit_problems(&columns, &limits).is_empty());
    }
}
