//! The `chatEvent` table in MySQL: created if missing, and written one
//! batch per transaction.
//!
//! Invariants, enforced here:
//! - **Once per event id.** The insert is `ON DUPLICATE KEY UPDATE` on the
//!   unique `event_id` (a no-op update), so storing a batch again, after a
//!   crash between commit and ack or a redelivery, adds nothing. Not
//!   `INSERT IGNORE`: that would also turn a value that does not fit into a
//!   silently truncated row.
//! - **All or nothing.** A batch's statements run in one transaction: its
//!   rows are all committed or none are, so the caller acknowledges the
//!   batch only after [`Archive::store`] returned `Ok`.
//! - **Bounded waits.** Every call runs under `STORE_TIMEOUT_MS`; a call
//!   cut off is reported as transient, and storing the batch again is safe
//!   whether or not its COMMIT got through (first invariant).

use std::time::Duration;

use chat_server::store::{
    bounded, connect_creating_database, schema_statements, StoreError, TimedOut,
};
use chrono::NaiveDateTime;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Error as SqlError, Opts, OptsBuilder, Params, Pool, TxOpts, Value};

use crate::batch::{statements, Pending};

/// The table's definition (idempotent), applied at start-up and before a
/// retry.
const SCHEMA: &str = include_str!("../../../sql/events.sql");

/// Body bytes per `INSERT` statement: with `EVENTS_MAX_BODY_BYTES` at most
/// 2 MiB, a statement stays under MySQL 5.7's default 4 MiB
/// `max_allowed_packet` (MariaDB's is 16 MiB).
const STATEMENT_BYTES: usize = 1 << 20;

/// Rows one retention `DELETE` removes at most.
pub const DELETE_CHUNK: u64 = 10_000;

/// Run on every new connection: times are UTC, and a value that does not
/// fit its column is an error, never a truncation.
const SESSION_SETUP: [&str; 2] = [
    "SET time_zone = '+00:00'",
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'",
];

/// Server errors about one row's values (`ER_BAD_NULL_ERROR` 1048,
/// `ER_WARN_DATA_OUT_OF_RANGE` 1264, `ER_TRUNCATED_WRONG_VALUE` 1292,
/// `ER_INVALID_CHARACTER_STRING` 1300, `ER_TRUNCATED_WRONG_VALUE_FOR_FIELD`
/// 1366, `ER_DATA_TOO_LONG` 1406, MariaDB's `ER_CONSTRAINT_FAILED` 4025):
/// storing the same rows again fails again. `event::parse` is meant to make
/// them impossible; if one still happens, the batch is stored event by
/// event and the event that fails alone is dead-lettered.
const ROW_ERRORS: [u16; 7] = [1048, 1264, 1292, 1300, 1366, 1406, 4025];

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreFailure {
    /// The database is down, slow, or refused for a reason that waiting
    /// (or an operator) can fix: try the same batch again later.
    #[error("{0}")]
    Transient(StoreError),
    /// The rows themselves were refused: trying them again will not help.
    #[error("rows refused: {0}")]
    Rows(SqlError),
}

/// The archive table, through a pool of connections.
#[derive(Clone)]
pub struct Archive {
    pool: Pool,
    timeout: Duration,
}

impl Archive {
    /// Connects to the database `url` names, creating the database and
    /// the table if missing. Errors are `Unavailable`; [`may_heal`] says
    /// whether waiting can help.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Archive, StoreError> {
        let opts =
            Opts::from_url(url).map_err(|e| StoreError::unavailable("reading MYSQL_URL", e))?;
        let mut conn = bounded(timeout, "connecting", connect_creating_database(url)).await?;
        let created = bounded(timeout, "creating chatEvent", async {
            create_table(&mut conn)
                .await
                .map_err(|e| StoreError::unavailable("creating chatEvent", e))
        })
        .await;
        // A failed disconnect only leaks a connection the server will close.
        let _ = tokio::time::timeout(timeout, conn.disconnect()).await;
        created?;
        let builder = OptsBuilder::from_opts(opts).setup(SESSION_SETUP.to_vec());
        Ok(Archive {
            pool: Pool::new(builder),
            timeout,
        })
    }

    /// Creates the table again if it is missing (someone dropped it while
    /// the archive ran); called before a batch is tried again.
    pub async fn ensure_table(&self) -> Result<(), StoreError> {
        const WHAT: &str = "creating chatEvent";
        bounded(self.timeout, WHAT, async {
            let created = async {
                let mut conn = self.pool.get_conn().await?;
                create_table(&mut conn).await
            };
            created.await.map_err(|e| StoreError::unavailable(WHAT, e))
        })
        .await
    }

    /// Stores `events` in one transaction, received at `received`; returns
    /// how many were new (the rest were already archived).
    pub async fn store(
        &self,
        events: &[Pending],
        received: NaiveDateTime,
    ) -> Result<u64, StoreFailure> {
        let insert = async {
            let mut conn = self.pool.get_conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await?;
            let mut new = 0;
            for range in statements(events, STATEMENT_BYTES) {
                let rows = &events[range];
                tx.exec_drop(insert_sql(rows.len()), insert_params(rows, received))
                    .await?;
                new += tx.affected_rows();
            }
            tx.commit().await?;
            Ok::<u64, SqlError>(new)
        };
        match tokio::time::timeout(self.timeout, insert).await {
            Ok(Ok(new)) => Ok(new),
            Ok(Err(SqlError::Server(e))) if ROW_ERRORS.contains(&e.code) => {
                Err(StoreFailure::Rows(SqlError::Server(e)))
            }
            Ok(Err(e)) => Err(StoreFailure::Transient(StoreError::unavailable(
                "storing events",
                e,
            ))),
            Err(_) => Err(StoreFailure::Transient(StoreError::unavailable(
                "storing events",
                TimedOut {
                    after: self.timeout,
                },
            ))),
        }
    }

    /// Deletes events whose `at` is before `cutoff` (UTC), in chunks of
    /// [`DELETE_CHUNK`] rows (each its own statement, so no transaction
    /// holds many locks); returns how many went. Each chunk runs under the
    /// store timeout.
    pub async fn delete_before(&self, cutoff: NaiveDateTime) -> Result<u64, StoreError> {
        const WHAT: &str = "deleting old events";
        let mut deleted = 0;
        loop {
            let chunk = bounded(self.timeout, WHAT, async {
                let result = async {
                    let mut conn = self.pool.get_conn().await?;
                    conn.exec_drop(
                        "DELETE FROM chatEvent WHERE at < ? ORDER BY at LIMIT ?",
                        (cutoff, DELETE_CHUNK),
                    )
                    .await?;
                    Ok::<u64, SqlError>(conn.affected_rows())
                };
                result.await.map_err(|e| StoreError::unavailable(WHAT, e))
            })
            .await?;
            deleted += chunk;
            if chunk < DELETE_CHUNK {
                return Ok(deleted);
            }
        }
    }

    /// Closes the pool's connections (shutdown), waiting at most the
    /// store timeout.
    pub async fn disconnect(&self) {
        match tokio::time::timeout(self.timeout, self.pool.clone().disconnect()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("closing the MySQL pool: {e}"),
            Err(_) => log::warn!("closing the MySQL pool timed out"),
        }
    }
}

/// `INSERT ... VALUES (...), (...)` for `rows` rows.
fn insert_sql(rows: usize) -> String {
    let row = "(?, ?, ?, ?, ?, ?, ?, ?)";
    let values = vec![row; rows].join(", ");
    format!(
        "INSERT INTO chatEvent (event_id, type, room_id, instance, at, seq, body, received) \
         VALUES {values} ON DUPLICATE KEY UPDATE event_id = event_id"
    )
}

fn insert_params(rows: &[Pending], received: NaiveDateTime) -> Params {
    let mut values = Vec::with_capacity(rows.len() * 8);
    for Pending { event, .. } in rows {
        values.extend([
            Value::from(event.id.as_str()),
            Value::from(event.kind.as_str()),
            Value::from(event.room_id),
            Value::from(event.instance.as_str()),
            Value::from(event.at),
            Value::from(event.seq),
            Value::from(event.body.as_str()),
            Value::from(received),
        ]);
    }
    Params::Positional(values)
}

/// Runs `sql/events.sql` statement by statement.
async fn create_table(conn: &mut Conn) -> Result<(), SqlError> {
    for sql in schema_statements(SCHEMA) {
        conn.query_drop(sql).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_insert_has_a_placeholder_per_value_and_ignores_known_ids() {
        let sql = insert_sql(3);
        assert_eq!(sql.matches('?').count(), 24);
        assert!(sql.ends_with("ON DUPLICATE KEY UPDATE event_id = event_id"));
    }

    #[test]
    fn the_schema_is_one_idempotent_statement() {
        let statements = schema_statements(SCHEMA);
        assert_eq!(statements.len(), 1, "{statements:#?}");
        assert!(statements[0].starts_with("CREATE TABLE IF NOT EXISTS chatEvent"));
    }
}
