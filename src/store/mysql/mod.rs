//! The durable store: MySQL (or MariaDB) through `mysql_async`, shared by
//! every process of a cluster.
//!
//! Each trait method is one short InnoDB transaction (the bulk removals are
//! one per room; message appends of many rooms share one, see `writer.rs`),
//! so the invariants of the `store` module hold even with many processes
//! writing at once:
//!
//! - **One lock order.** Every transaction that changes a room's members or
//!   messages first locks the room's `chatRoom` row (`SELECT ... FOR UPDATE`
//!   or the `UPDATE` of its counter) and only then touches `chatMember` or
//!   `chatMsg` rows. A message group locks its rooms' rows in ascending id
//!   order, every other transaction locks one room. Work on one room is
//!   therefore serialized on that row, and two transactions can never wait
//!   for each other in opposite orders.
//!   Deadlocks and lock wait timeouts (which InnoDB can still report, e.g.
//!   from foreign-key checks) are retried a few times.
//! - **READ COMMITTED.** Sessions run at READ COMMITTED, so locking reads
//!   lock only the rows they return (no gap locks on neighbouring rooms) and
//!   plain reads inside a transaction see what was committed before them.
//!   (Binary logging, if enabled, must then be ROW or MIXED, the defaults of
//!   MySQL 8 and MariaDB.)
//! - **Bounded waits.** Every public call runs under `op_timeout`; a slow or
//!   unreachable server becomes `StoreError::Unavailable` instead of a stuck
//!   actor. A call cut off mid-transaction is rolled back: `mysql_async`
//!   rolls back the connection before reusing it, and the server does so
//!   when a connection closes. A call cut off after its `COMMIT` was sent
//!   may have committed: `transact_until` reports that as
//!   `TxFailed::Unknown`, and the message writer and `add_member` resolve
//!   it (see `settle`) so that their answers stay true.
//!
//! Times are stored as UTC `DATETIME` (the session time zone is `+00:00`),
//! truncated to whole seconds as the domain supplies them.

mod outbox;
mod schema;
mod writer;

pub use outbox::OutboxSource;

use schema::{ensure_schema, SchemaNotApplied, SCHEMA_STEP};
pub use schema::{schema_statements, SWEEP_INDEX};
use writer::MessageWriter;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use mysql_async::prelude::{FromRow, Queryable};
use mysql_async::{
    from_row_opt, Conn, DriverError, Error as SqlError, FromRowError, Opts, OptsBuilder, Params,
    Pool, Row, Transaction, TxOpts, Value,
};

use super::{
    bounded, JoinOutcome, LeaveOutcome, MemberRecord, NewMember, NewMessage, RemovedMember, Store,
    StoreError, StoreKind, TimedOut,
};
use crate::domain::{Member, Message, MessageSeq, Room, RoomId, RoomTitle, SocketId};
use crate::events::body::DomainEvent;
use crate::events::Events;

/// `ER_BAD_DB_ERROR`: the database named in the URL does not exist.
const ER_BAD_DB_ERROR: u16 = 1049;
/// `ER_DUP_KEYNAME`: an index of that name exists (another process added
/// the sweep's index first, see `schema.rs`).
const ER_DUP_KEYNAME: u16 = 1061;
/// `ER_DUP_ENTRY`: a unique key was violated (here: room + nickname).
const ER_DUP_ENTRY: u16 = 1062;
/// `ER_LOCK_WAIT_TIMEOUT`: InnoDB gave up waiting for a row lock.
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
/// `ER_LOCK_DEADLOCK`: InnoDB chose this transaction as a deadlock victim.
const ER_LOCK_DEADLOCK: u16 = 1213;

/// How often a transaction is tried when it loses a lock conflict or its
/// connection turns out to be dead (e.g. after a server restart).
const TX_ATTEMPTS: u32 = 5;

/// Rows per multi-row `INSERT` of messages. A batch larger than this is
/// stored by several statements in the same transaction, which keeps each
/// statement well under `max_allowed_packet` (4 MiB on old servers) even
/// with long 4-byte-character messages.
const MAX_ROWS_PER_INSERT: usize = 200;

/// Prepared statements cached per pooled connection: every multi-row insert
/// shape plus the fixed statements. MariaDB allows 16,382 prepared
/// statements per server by default (`max_prepared_stmt_count`), enough for
/// about 50 such connections.
const STMT_CACHE_SIZE: usize = MAX_ROWS_PER_INSERT + 64;

/// How long a pooled connection above the pool's minimum may sit idle.
const IDLE_CONNECTION_TTL: Duration = Duration::from_secs(60);

/// Rooms the empty-room sweep deletes per transaction.
const SWEEP_CHUNK: usize = 500;

/// The empty-room sweep's candidates (cutoff, limit), oldest first.
/// Invariant: it reads only the rows it returns. The order is that of the
/// index `ix_chatRoom_empty (join_member_count, created)` (with the primary
/// key InnoDB appends), so MariaDB walks the index from its start and stops
/// after `limit` entries, however many rooms are old but joined; ordered by
/// id alone it examined every old room. Public for the test that counts the
/// rows it reads (tests/startup/sweep_index.rs).
pub const SWEEP_SELECT: &str = "SELECT id, title, join_member_count, created FROM chatRoom \
     WHERE join_member_count = 0 AND created < ? ORDER BY created, id LIMIT ? FOR UPDATE";

/// Ids per `IN (...)` list, far below the 65,535 placeholders a statement
/// may have.
const MAX_IDS_PER_STATEMENT: usize = 1000;

/// Run on every new connection: UTC for anything the server computes, and
/// READ COMMITTED (see the module comment).
const SESSION_SETUP: [&str; 2] = [
    "SET time_zone = '+00:00'",
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
];

const SELECT_ROOM: &str = "SELECT id, title, join_member_count, created FROM chatRoom WHERE id = ?";
const LOCK_ROOM: &str =
    "SELECT id, title, join_member_count, created FROM chatRoom WHERE id = ? FOR UPDATE";

type SqlResult<T> = Result<T, SqlError>;
/// A transaction body's result: the outer error is a database failure
/// (rolled back, maybe retried), the inner one a domain outcome such as
/// `RoomNotFound` (rolled back and returned as is).
type TxResult<T> = SqlResult<Result<T, StoreError>>;
type RoomRow = (u64, String, u32, NaiveDateTime);

/// MySQL implementation of [`Store`]. Cheap to share: it holds a pool.
pub struct MySqlStore {
    pool: Pool,
    opts: Opts,
    op_timeout: Duration,
    /// Stores every room's chat batches, many rooms per transaction.
    writer: MessageWriter,
    /// With `AMQP_URL`: every change also writes its domain events to the
    /// outbox, in its own transaction (see `outbox.rs`).
    events: Option<Arc<Events>>,
}

impl MySqlStore {
    /// Records the chats of each message-writer transaction in `histogram`
    /// from now on (`chat_writer_batch_chats`).
    pub fn record_writer_batches(&self, histogram: metrics::Histogram) {
        self.writer.record_group_sizes(histogram);
    }

    /// Connects, creating the database named in `url` if it does not exist
    /// and applying `sql/schema.sql` if one of its tables is missing, so
    /// that a fresh server needs no manual set-up. When the tables exist no
    /// DDL is run, so a user with only SELECT, INSERT, UPDATE and DELETE on
    /// the database can run the server. `op_timeout` bounds each step here
    /// and every later call.
    ///
    /// Errors are `StoreError::Unavailable` (bad URL, unreachable server,
    /// missing privileges); [`may_heal`] tells whether retrying can help.
    pub async fn connect(url: &str, op_timeout: Duration) -> Result<MySqlStore, StoreError> {
        Self::connect_with_events(url, op_timeout, None).await
    }

    /// [`MySqlStore::connect`], and with `events` every change also records
    /// its domain events in the outbox (see `outbox.rs`).
    pub async fn connect_with_events(
        url: &str,
        op_timeout: Duration,
        events: Option<Arc<Events>>,
    ) -> Result<MySqlStore, StoreError> {
        let opts = parse_url(url)?;

        // One dedicated connection prepares the database before the pool
        // exists, so the pool never holds connections to a missing database.
        let mut conn = bounded(op_timeout, "connecting", open_creating_db(&opts)).await?;
        let schema = ensure_schema(&mut conn, events.is_some());
        let applied = bounded(op_timeout, SCHEMA_STEP, schema).await;
        // A failed disconnect only leaks a connection the server will close.
        let _ = tokio::time::timeout(op_timeout, conn.disconnect()).await;
        applied?;

        // Connections are not reset when they go back to the pool: a reset
        // would drop the prepared-statement cache and cost a round trip on
        // every call, and `mysql_async` already rolls back any transaction
        // left open. The session setup then only has to run once per
        // connection.
        let mut pool_opts = opts.pool_opts().clone().with_reset_connection(false);
        // With the driver's default (no idle TTL) the pool keeps only `min`
        // idle connections and closes every other one the moment it comes
        // back: under load that was ~30 new connections a second, each with
        // its handshake, session setup and an empty statement cache. Idle
        // connections above `min` now live a minute (unless the URL sets
        // `inactive_connection_ttl`).
        if pool_opts.inactive_connection_ttl().is_zero() {
            pool_opts = pool_opts.with_inactive_connection_ttl(IDLE_CONNECTION_TTL);
        }
        // Room for every shape of the multi-row insert (one per row count)
        // beside the other statements: with the driver's default of 32,
        // batches of varying size evicted each other and nearly every batch
        // paid a PREPARE round trip.
        let stmt_cache = opts.stmt_cache_size().max(STMT_CACHE_SIZE);
        let builder = OptsBuilder::from_opts(opts.clone())
            .setup(SESSION_SETUP.to_vec())
            .stmt_cache_size(stmt_cache)
            .pool_opts(pool_opts);
        let pool = Pool::new(builder);
        let store = MySqlStore {
            writer: MessageWriter::start(pool.clone(), op_timeout, events.clone()),
            pool,
            opts,
            op_timeout,
            events,
        };
        // Fail now, not on the first request, if pooled connections cannot
        // be set up.
        if let Err(e) = store.ping().await {
            store.disconnect().await;
            return Err(e);
        }
        Ok(store)
    }

    /// The outbox as the event relay reads it (on a connection of its own,
    /// under the relay lock).
    pub fn event_source(&self) -> OutboxSource {
        OutboxSource::new(self.opts.clone(), self.op_timeout)
    }

    /// The recording process's id when events are on.
    fn events_by(&self) -> Option<&str> {
        self.events.as_deref().map(Events::instance)
    }

    /// Wakes the event relay after a change that recorded events committed.
    fn wake_relay(&self) {
        if let Some(events) = &self.events {
            events.wake();
        }
    }

    /// Closes the pool's connections (clean shutdown, tests). Later calls
    /// fail with `Unavailable`. Waits at most `op_timeout`.
    pub async fn disconnect(&self) {
        let pool = self.pool.clone();
        match tokio::time::timeout(self.op_timeout, pool.disconnect()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("closing the MySQL pool: {e}"),
            Err(_) => log::warn!("closing the MySQL pool timed out"),
        }
    }

    /// Runs `call` under the operation timeout.
    async fn bounded<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        bounded(self.op_timeout, what, call).await
    }

    /// Runs `body` on a pooled connection outside any explicit transaction,
    /// under the operation timeout; a failure is `Unavailable` during
    /// `what`. With `idempotent`, a dead connection (the server restarted
    /// since the pool opened it) is replaced and the body run again; a write
    /// that may already have happened is not repeated.
    async fn with_conn<T, F, Fut>(
        &self,
        what: &'static str,
        idempotent: bool,
        mut body: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Conn) -> Fut + Send,
        Fut: Future<Output = SqlResult<T>> + Send,
        T: Send,
    {
        let call = async move {
            let mut attempt = 1;
            loop {
                let result = match self.pool.get_conn().await {
                    Ok(conn) => body(conn).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(value) => return Ok(value),
                    Err(e) if idempotent && is_broken_connection(&e) && attempt < TX_ATTEMPTS => {
                        log::debug!("MySQL connection lost during {what} ({e}); retrying");
                        attempt += 1;
                    }
                    Err(e) => return Err(StoreError::unavailable(what, e)),
                }
            }
        };
        self.bounded(what, call).await
    }

    /// Runs `body` in a transaction: commits when it returns `Ok(Ok(_))`,
    /// rolls back otherwise; a database failure or the operation timeout is
    /// `Unavailable` during `what`. A lock conflict (deadlock victim, lock wait
    /// timeout) or a connection that died before the commit was sent rolls
    /// the whole attempt back, so running it again is safe; that happens up
    /// to `TX_ATTEMPTS` times. A failed commit is never repeated: it may have
    /// succeeded.
    ///
    /// `body` takes the transaction by value and hands it back, which lets
    /// its future borrow the caller's arguments without higher-ranked
    /// lifetimes.
    async fn transact<T, F, Fut>(&self, what: &'static str, body: F) -> Result<T, StoreError>
    where
        F: FnMut(Transaction<'static>) -> Fut + Send,
        Fut: Future<Output = (Transaction<'static>, TxResult<T>)> + Send,
        T: Send,
    {
        let deadline = Instant::now() + self.op_timeout;
        transact_until(&self.pool, what, deadline, body)
            .await
            .map_err(TxFailed::into_error)
    }

    /// Bulk removal shared by `remove_instance_members` (`Some(instance)`)
    /// and `remove_all_members` (`None`): one transaction per affected room,
    /// rooms in ascending id order, so no transaction holds more than one
    /// room lock and joins elsewhere are not held up.
    async fn remove_members_where(
        &self,
        what: &'static str,
        instance: Option<&str>,
    ) -> Result<Vec<RemovedMember>, StoreError> {
        let room_ids: Vec<RoomId> = self
            .with_conn(what, true, |mut conn| async move {
                match instance {
                    Some(instance) => {
                        rows(
                            &mut conn,
                            "SELECT DISTINCT room_id FROM chatMember \
                             WHERE instance_id = ? ORDER BY room_id",
                            (instance,),
                        )
                        .await
                    }
                    None => {
                        rows(
                            &mut conn,
                            "SELECT DISTINCT room_id FROM chatMember ORDER BY room_id",
                            (),
                        )
                        .await
                    }
                }
            })
            .await?
            .into_iter()
            .map(RoomId::new)
            .collect();
        let mut removed = Vec::new();
        let events = self.events_by();
        for room_id in room_ids {
            let gone = self
                .transact(what, |mut tx| async move {
                    let r = remove_room_members_tx(&mut tx, room_id, instance, events).await;
                    (tx, r)
                })
                .await;
            self.wake_relay();
            removed.extend(gone?);
        }
        Ok(removed)
    }
}

#[async_trait]
impl Store for MySqlStore {
    fn kind(&self) -> StoreKind {
        StoreKind::MySql
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A dead writer means no chat can be stored: not healthy, however
        // well the database answers.
        if !self.writer.is_running() {
            return Err(StoreError::unavailable("ping", writer::WriterDown));
        }
        self.with_conn("ping", true, |mut conn| async move { conn.ping().await })
            .await
    }

    async fn create_room(
        &self,
        title: &RoomTitle,
        created: DateTime<Utc>,
    ) -> Result<Room, StoreError> {
        let title = title.as_str();
        let created = to_db(created);
        if let Some(instance) = self.events_by() {
            // With events: the room and its `room.created` in one
            // transaction (a retry after a lost connection is safe: the
            // attempt that lost it was rolled back).
            let room = self
                .transact("create_room", |mut tx| async move {
                    let r = create_room_tx(&mut tx, title, created, instance).await;
                    (tx, r)
                })
                .await?;
            self.wake_relay();
            return Ok(room);
        }
        // A single autocommitted INSERT; not repeated on a lost connection,
        // since the room may already exist then.
        self.with_conn("create_room", false, |mut conn| async move {
            conn.exec_drop(
                "INSERT INTO chatRoom (title, join_member_count, last_msg_id, created) \
                 VALUES (?, 0, 0, ?)",
                (title, created),
            )
            .await?;
            let id = conn
                .last_insert_id()
                .ok_or_else(|| SqlError::Other("INSERT returned no room id".into()))?;
            Ok(Room {
                id: RoomId::new(id),
                title: title.to_owned(),
                member_count: 0,
                created: from_db(created),
            })
        })
        .await
    }

    async fn room(&self, id: RoomId) -> Result<Option<Room>, StoreError> {
        self.with_conn("room", true, |mut conn| async move {
            let row: Option<RoomRow> = first(&mut conn, SELECT_ROOM, (id,)).await?;
            Ok(row.map(room_from_row))
        })
        .await
    }

    async fn rooms(&self, before: Option<RoomId>, limit: usize) -> Result<Vec<Room>, StoreError> {
        // Both walk the primary key backwards from `before`: a page costs
        // `limit` rows however many rooms there are.
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        self.with_conn("rooms", true, |mut conn| async move {
            let page: Vec<RoomRow> = match before {
                Some(before) => {
                    rows(
                        &mut conn,
                        "SELECT id, title, join_member_count, created FROM chatRoom \
                         WHERE id < ? ORDER BY id DESC LIMIT ?",
                        (before, limit),
                    )
                    .await?
                }
                None => {
                    rows(
                        &mut conn,
                        "SELECT id, title, join_member_count, created FROM chatRoom \
                         ORDER BY id DESC LIMIT ?",
                        (limit,),
                    )
                    .await?
                }
            };
            Ok(page.into_iter().map(room_from_row).collect())
        })
        .await
    }

    async fn add_member(
        &self,
        room_id: RoomId,
        member: &NewMember,
    ) -> Result<JoinOutcome, StoreError> {
        const WHAT: &str = "add_member";
        let deadline = Instant::now() + self.op_timeout;
        let events = self.events_by();
        let call = transact_until(&self.pool, WHAT, deadline, |mut tx| async move {
            let r = add_member_tx(&mut tx, room_id, member, events).await;
            (tx, r)
        });
        match call.await {
            Ok(outcome) => {
                self.wake_relay();
                Ok(outcome)
            }
            Err(TxFailed::NotStored(e)) => Err(e),
            Err(TxFailed::Unknown {
                value,
                conn_id,
                cause,
            }) => {
                // The join is answered `unavailable` now, so it must not
                // stay stored: the row, if the commit went through, is
                // removed as soon as the database answers (see
                // `undo_join`). Invariant: a join answered with an error
                // leaves no member row behind once MySQL answers again.
                tokio::spawn(undo_join(
                    self.pool.clone(),
                    self.op_timeout,
                    conn_id,
                    room_id,
                    value.join_seq,
                    member.socket_id.clone(),
                    self.events.clone(),
                ));
                Err(cause)
            }
        }
    }

    async fn remove_member(
        &self,
        room_id: RoomId,
        socket_id: &SocketId,
    ) -> Result<LeaveOutcome, StoreError> {
        let events = self.events_by();
        let left = self
            .transact("remove_member", |mut tx| async move {
                let r = remove_member_tx(&mut tx, room_id, socket_id, events).await;
                (tx, r)
            })
            .await;
        self.wake_relay();
        left
    }

    async fn member_records(&self, room_id: RoomId) -> Result<Vec<MemberRecord>, StoreError> {
        let call = self.with_conn("members", true, |mut conn| async move {
            let found: Vec<(String, NaiveDateTime, String, u64)> = rows(
                &mut conn,
                "SELECT nickname, join_time, socket_id, id FROM chatMember \
                 WHERE room_id = ? ORDER BY id",
                (room_id,),
            )
            .await?;
            // Member rows imply the room (foreign key); only an empty answer
            // needs the room looked up.
            let exists = !found.is_empty() || room_exists(&mut conn, room_id).await?;
            Ok(exists.then_some(found))
        });
        let found = call.await?.ok_or(StoreError::RoomNotFound(room_id))?;
        Ok(found
            .into_iter()
            .map(|(nickname, joined, socket_id, join_seq)| MemberRecord {
                member: Member {
                    nickname,
                    joined_at: from_db(joined),
                },
                socket_id: SocketId::from(socket_id),
                join_seq,
            })
            .collect())
    }

    async fn instances_with_members(&self) -> Result<Vec<String>, StoreError> {
        self.with_conn("instances_with_members", true, |mut conn| async move {
            rows(
                &mut conn,
                "SELECT DISTINCT instance_id FROM chatMember ORDER BY instance_id",
                (),
            )
            .await
        })
        .await
    }

    async fn append_messages(
        &self,
        room_id: RoomId,
        batch: &[NewMessage],
    ) -> Result<Vec<Message>, StoreError> {
        if batch.is_empty() {
            // Nothing to number; still say whether the room exists.
            return match self.room(room_id).await? {
                Some(_) => Ok(Vec::new()),
                None => Err(StoreError::RoomNotFound(room_id)),
            };
        }
        // No outer timeout: the writer answers within op_timeout / 2, or,
        // after a COMMIT that got no answer, once it knows the outcome (see
        // `MessageWriter::append`); cutting the wait shorter could report
        // as failed a batch that then commits.
        self.writer.append(room_id, batch.to_vec()).await
    }

    async fn messages_after(
        &self,
        room_id: RoomId,
        after: MessageSeq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.read_messages(
            "messages_after",
            room_id,
            "SELECT id, nickname, content, chat_time FROM chatMsg \
             WHERE room_id = ? AND id > ? ORDER BY id ASC LIMIT ?",
            after,
            limit,
        )
        .await
    }

    async fn recent_messages(
        &self,
        room_id: RoomId,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let mut newest_first = self
            .read_messages(
                "recent_messages",
                room_id,
                "SELECT id, nickname, content, chat_time FROM chatMsg \
                 WHERE room_id = ? AND id > ? ORDER BY id DESC LIMIT ?",
                MessageSeq::ZERO,
                limit,
            )
            .await?;
        newest_first.reverse();
        Ok(newest_first)
    }

    async fn delete_unjoined_rooms(
        &self,
        created_before: DateTime<Utc>,
    ) -> Result<Vec<RoomId>, StoreError> {
        // In chunks of `SWEEP_CHUNK` rooms, oldest first, one transaction
        // each: a backlog of any size is worked off in steps that each fit
        // in `op_timeout` (one transaction for all of them could time out
        // on every sweep and never finish). One call stops starting chunks
        // after `op_timeout`, so it ends within about twice that; the next
        // sweep goes on where it stopped.
        const WHAT: &str = "delete_unjoined_rooms";
        let cutoff = to_db(created_before);
        let started = Instant::now();
        let mut deleted = Vec::new();
        let events = self.events_by();
        loop {
            let chunk = self
                .transact(WHAT, |mut tx| async move {
                    let r = delete_unjoined_rooms_tx(&mut tx, cutoff, SWEEP_CHUNK, events).await;
                    (tx, r)
                })
                .await;
            self.wake_relay();
            match chunk {
                Ok((candidates, gone)) => {
                    deleted.extend(gone);
                    if candidates < SWEEP_CHUNK || started.elapsed() >= self.op_timeout {
                        return Ok(deleted);
                    }
                }
                // What earlier chunks deleted is deleted: report it.
                Err(e) if !deleted.is_empty() => {
                    log::warn!(
                        "empty-room sweep stopped after {} rooms: {}",
                        deleted.len(),
                        crate::error::Chain(&e)
                    );
                    return Ok(deleted);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn remove_instance_members(
        &self,
        instance_id: &str,
    ) -> Result<Vec<RemovedMember>, StoreError> {
        const WHAT: &str = "remove_instance_members";
        self.bounded(WHAT, self.remove_members_where(WHAT, Some(instance_id)))
            .await
    }

    async fn remove_all_members(&self) -> Result<Vec<RemovedMember>, StoreError> {
        const WHAT: &str = "remove_all_members";
        self.bounded(WHAT, self.remove_members_where(WHAT, None))
            .await
    }
}

impl MySqlStore {
    /// Shared by `messages_after` and `recent_messages`: `sql` takes
    /// `(room_id, after, limit)` and walks the primary key (room_id, id), so
    /// a page costs `limit` rows however long the history is.
    async fn read_messages(
        &self,
        what: &'static str,
        room_id: RoomId,
        sql: &'static str,
        after: MessageSeq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let found = self
            .with_conn(what, true, |mut conn| async move {
                let found: Vec<(u64, String, String, NaiveDateTime)> =
                    rows(&mut conn, sql, (room_id, after, limit)).await?;
                // Messages imply the room (foreign key); only an empty page
                // needs the room looked up.
                let exists = !found.is_empty() || room_exists(&mut conn, room_id).await?;
                Ok(exists.then_some(found))
            })
            .await?
            .ok_or(StoreError::RoomNotFound(room_id))?;
        Ok(found
            .into_iter()
            .map(|(id, nickname, content, sent_at)| Message {
                id: MessageSeq::new(id),
                room_id,
                nickname,
                content,
                sent_at: from_db(sent_at),
            })
            .collect())
    }
}

/// `create_room`'s transaction with events on: insert the room (its row is
/// locked by the insert and invisible to others until the commit), then
/// record `room.created`.
async fn create_room_tx(
    tx: &mut Transaction<'static>,
    title: &str,
    created: NaiveDateTime,
    instance: &str,
) -> TxResult<Room> {
    tx.exec_drop(
        "INSERT INTO chatRoom (title, join_member_count, last_msg_id, created) \
         VALUES (?, 0, 0, ?)",
        (title, created),
    )
    .await?;
    let id = tx
        .last_insert_id()
        .ok_or_else(|| SqlError::Other("INSERT returned no room id".into()))?;
    let room = Room {
        id: RoomId::new(id),
        title: title.to_owned(),
        member_count: 0,
        created: from_db(created),
    };
    outbox::record(tx, instance, &[DomainEvent::room_created(&room)]).await?;
    Ok(Ok(room))
}

/// `add_member`'s transaction: lock the room row, insert the member (the
/// unique key decides `NicknameTaken`), count it.
async fn add_member_tx(
    tx: &mut Transaction<'static>,
    room_id: RoomId,
    new: &NewMember,
    events: Option<&str>,
) -> TxResult<JoinOutcome> {
    let Some(row) = first::<RoomRow, _, _>(tx, LOCK_ROOM, (room_id,)).await? else {
        return Ok(Err(StoreError::RoomNotFound(room_id)));
    };
    let nickname = new.nickname.as_str();
    let joined_at = to_db(new.joined_at);
    let inserted = tx
        .exec_drop(
            "INSERT INTO chatMember (nickname, room_id, socket_id, instance_id, join_time) \
             VALUES (?, ?, ?, ?, ?)",
            (
                nickname,
                room_id,
                new.socket_id.as_str(),
                new.instance_id.as_str(),
                joined_at,
            ),
        )
        .await;
    match inserted {
        Err(SqlError::Server(e)) if e.code == ER_DUP_ENTRY => {
            return Ok(Err(StoreError::NicknameTaken(nickname.to_owned())));
        }
        other => other?,
    }
    let join_seq = tx.last_insert_id().unwrap_or_default();
    tx.exec_drop(
        "UPDATE chatRoom SET join_member_count = join_member_count + 1 WHERE id = ?",
        (room_id,),
    )
    .await?;
    let mut room = room_from_row(row);
    // The row is locked, so the count read above plus this join is exact.
    room.member_count += 1;
    let member = Member {
        nickname: nickname.to_owned(),
        joined_at: from_db(joined_at),
    };
    if let Some(instance) = events {
        // After the room row lock (`LOCK_ROOM` above): see `outbox.rs`.
        let joined = DomainEvent::member_joined(room_id, &member);
        outbox::record(tx, instance, &[joined]).await?;
    }
    Ok(Ok(JoinOutcome {
        room,
        member,
        join_seq,
    }))
}

/// `remove_member`'s transaction: lock the room row, delete the member,
/// then either decrement the count or, if it reaches zero, delete the room
/// (members and messages go with it by `ON DELETE CASCADE`).
async fn remove_member_tx(
    tx: &mut Transaction<'static>,
    room_id: RoomId,
    socket_id: &SocketId,
    events: Option<&str>,
) -> TxResult<LeaveOutcome> {
    let Some(row) = first::<RoomRow, _, _>(tx, LOCK_ROOM, (room_id,)).await? else {
        return Ok(Ok(LeaveOutcome::NotMember));
    };
    let room = room_from_row(row);
    let member: Option<(u64, String, NaiveDateTime)> = first(
        tx,
        "SELECT id, nickname, join_time FROM chatMember WHERE room_id = ? AND socket_id = ? \
         ORDER BY id LIMIT 1 FOR UPDATE",
        (room_id, socket_id),
    )
    .await?;
    let Some((member_id, nickname, joined)) = member else {
        return Ok(Ok(LeaveOutcome::NotMember));
    };
    tx.exec_drop("DELETE FROM chatMember WHERE id = ?", (member_id,))
        .await?;
    let remaining = room.member_count.saturating_sub(1);
    set_member_count(tx, room_id, remaining).await?;
    if let Some(instance) = events {
        let gone = [(nickname.clone(), joined)];
        record_departures(tx, instance, &room, &gone, remaining == 0).await?;
    }
    if remaining == 0 {
        Ok(Ok(LeaveOutcome::RoomDeleted { nickname }))
    } else {
        Ok(Ok(LeaveOutcome::Left {
            nickname,
            remaining,
        }))
    }
}

/// How a transaction run by [`transact_until`] failed.
pub(super) enum TxFailed<T> {
    /// Not committed, and it never will be: the server refused or rolled it
    /// back, or it was cut off before `COMMIT` was sent (a transaction whose
    /// `COMMIT` is never sent cannot commit; the server rolls it back when
    /// the connection ends). Reporting the error is the truth.
    NotStored(StoreError),
    /// `COMMIT` was sent but its answer never came (timed out, or the
    /// connection broke): the transaction may have committed or not, and
    /// only the server can tell. `value` is what the body returned,
    /// `conn_id` the server's id of the connection that sent `COMMIT`.
    Unknown {
        value: T,
        conn_id: u32,
        cause: StoreError,
    },
}

impl<T> TxFailed<T> {
    /// For callers that have nothing to resolve: the error as it stands.
    /// (`Unknown` then reports as failed a transaction that may have
    /// committed; only callers whose writes are harmless either way may do
    /// this.)
    fn into_error(self) -> StoreError {
        match self {
            TxFailed::NotStored(e) | TxFailed::Unknown { cause: e, .. } => e,
        }
    }
}

/// Runs `body` in a transaction on `pool` and commits it, all before
/// `deadline`: commits when it returns `Ok(Ok(_))`, rolls back otherwise. A
/// lock conflict (deadlock victim, lock wait timeout) or a connection that
/// died before the commit was sent rolls the whole attempt back, so running
/// it again is safe; that happens up to `TX_ATTEMPTS` times. A failed or
/// unanswered commit is never repeated: it may have succeeded, and it is
/// reported as [`TxFailed::Unknown`].
///
/// Invariant: every failure other than `Unknown` is a transaction whose
/// `COMMIT` was never sent (or was answered with an error), so it is not
/// stored now and never will be.
pub(super) async fn transact_until<T, F, Fut>(
    pool: &Pool,
    what: &'static str,
    deadline: Instant,
    mut body: F,
) -> Result<T, TxFailed<T>>
where
    F: FnMut(Transaction<'static>) -> Fut + Send,
    Fut: Future<Output = (Transaction<'static>, TxResult<T>)> + Send,
    T: Send,
{
    let limit = deadline.saturating_duration_since(Instant::now());
    let timed_out = || StoreError::unavailable(what, TimedOut { after: limit });
    let mut attempt = 1;
    loop {
        let started = tokio::time::timeout_at(deadline, pool.start_transaction(TxOpts::default()));
        let failure = match started.await {
            Err(_) => return Err(TxFailed::NotStored(timed_out())),
            Ok(Err(e)) => e,
            // Cut off here, the transaction is dropped uncommitted.
            Ok(Ok(tx)) => match tokio::time::timeout_at(deadline, body(tx)).await {
                Err(_) => return Err(TxFailed::NotStored(timed_out())),
                Ok((tx, Ok(Ok(value)))) => {
                    let conn_id = tx.id();
                    return match tokio::time::timeout_at(deadline, tx.commit()).await {
                        Ok(Ok(())) => Ok(value),
                        Ok(Err(e)) => Err(TxFailed::Unknown {
                            value,
                            conn_id,
                            cause: StoreError::unavailable(what, e),
                        }),
                        Err(_) => Err(TxFailed::Unknown {
                            value,
                            conn_id,
                            cause: timed_out(),
                        }),
                    };
                }
                Ok((tx, Ok(Err(outcome)))) => {
                    // Nothing worth keeping was written; a failed or slow
                    // rollback leaves it to the pool or the server.
                    let _ = tokio::time::timeout_at(deadline, tx.rollback()).await;
                    return Err(TxFailed::NotStored(outcome));
                }
                Ok((tx, Err(e))) => {
                    // Release the locks now rather than when the pool
                    // recycles the connection.
                    let _ = tokio::time::timeout_at(deadline, tx.rollback()).await;
                    e
                }
            },
        };
        let retry = is_lock_conflict(&failure) || is_broken_connection(&failure);
        if !retry || attempt >= TX_ATTEMPTS {
            return Err(TxFailed::NotStored(StoreError::unavailable(what, failure)));
        }
        log::debug!("MySQL transaction attempt {attempt} of {what} failed ({failure}); retrying");
        let pause = backoff(attempt);
        if Instant::now() + pause >= deadline {
            return Err(TxFailed::NotStored(timed_out()));
        }
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

/// `NOWAIT` refused a locking read because another transaction holds the
/// row (MariaDB reports `ER_LOCK_WAIT_TIMEOUT`, MySQL 8 `ER_LOCK_NOWAIT`).
const LOCK_HELD: [u16; 2] = [ER_LOCK_WAIT_TIMEOUT, 3572];
/// `ER_NO_SUCH_THREAD`: `KILL` named a connection that is gone.
const ER_NO_SUCH_THREAD: u16 = 1094;
/// How long [`settle`] waits for the old transaction's locks before it
/// kills that transaction's connection.
pub(super) const SETTLE_KILL_AFTER: Duration = Duration::from_secs(1);
/// Pause between two locking reads of [`settle`].
const SETTLE_POLL: Duration = Duration::from_millis(50);

/// After a `COMMIT` that got no answer on connection `conn_id`: waits until
/// that transaction has ended, committed or rolled back, and returns a new
/// transaction holding the locks on the `chatRoom` rows of `room_ids`
/// (which the old transaction had locked, so it holds them until it ends;
/// what it wrote can then be read, and nobody changes it meanwhile).
///
/// The locking read uses `NOWAIT` (MariaDB 10.3+, MySQL 8) and is repeated
/// every `SETTLE_POLL`. A server that was frozen ends the old transaction
/// as soon as it runs again. One cut off from the old connection (a network
/// partition) may keep it open for hours, so from `kill_from` on (the
/// caller's first attempt plus `SETTLE_KILL_AFTER`) that connection is
/// killed; a transaction whose `COMMIT` the server has not
/// read is then rolled back. The caller bounds the wait.
async fn settle(
    pool: &Pool,
    conn_id: u32,
    room_ids: &[RoomId],
    kill_from: Instant,
) -> SqlResult<Transaction<'static>> {
    let ids = room_ids
        .iter()
        .map(RoomId::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!("SELECT id FROM chatRoom WHERE id IN ({ids}) ORDER BY id FOR UPDATE NOWAIT");
    let mut killed = false;
    loop {
        let mut tx = pool.start_transaction(TxOpts::default()).await?;
        match tx.query_drop(sql.as_str()).await {
            Ok(()) => return Ok(tx),
            Err(SqlError::Server(e)) if LOCK_HELD.contains(&e.code) => {
                let own = tx.id();
                let _ = tx.rollback().await;
                if !killed && own != conn_id && Instant::now() >= kill_from {
                    let mut conn = pool.get_conn().await?;
                    if conn.id() != conn_id {
                        match conn.query_drop(format!("KILL CONNECTION {conn_id}")).await {
                            Ok(()) => log::warn!(
                                "killed MySQL connection {conn_id}: its COMMIT got no answer \
                                 and it still holds its locks"
                            ),
                            Err(SqlError::Server(e)) if e.code == ER_NO_SUCH_THREAD => {}
                            Err(e) => return Err(e),
                        }
                        killed = true;
                    }
                }
                tokio::time::sleep(SETTLE_POLL).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Pause between two attempts of [`undo_join`].
const UNDO_RETRY: Duration = Duration::from_millis(200);

/// Removes the membership `member_id` (of connection `socket_id` in
/// `room_id`) that an `add_member` whose `COMMIT` got no answer on
/// connection `conn_id` may have stored, as a leave would (the count goes
/// down; a room left empty is deleted). Tries until the database answers;
/// each attempt waits for the old transaction to end first (see
/// [`settle`]), so it sees the row if, and only if, that commit went
/// through. Repeating it is harmless: a second attempt finds no row.
async fn undo_join(
    pool: Pool,
    op_timeout: Duration,
    conn_id: u32,
    room_id: RoomId,
    member_id: u64,
    socket_id: SocketId,
    events: Option<Arc<Events>>,
) {
    let kill_from = Instant::now() + SETTLE_KILL_AFTER;
    let by = events.as_deref().map(Events::instance);
    let attempt = || async {
        let mut tx = settle(&pool, conn_id, &[room_id], kill_from).await?;
        let r = remove_member_row_tx(&mut tx, room_id, member_id, &socket_id, by).await;
        match r {
            Ok(removed) => {
                tx.commit().await?;
                Ok(removed)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    };
    loop {
        match tokio::time::timeout(op_timeout, attempt()).await {
            Ok(Ok(true)) => {
                if let Some(events) = &events {
                    events.wake();
                }
                log::warn!(
                    "removed member {member_id} of room {room_id}: its join was answered \
                     unavailable but its COMMIT had gone through"
                );
                return;
            }
            Ok(Ok(false)) => return,
            Ok(Err(e)) => log::debug!("undoing a join of room {room_id}: {e}"),
            Err(_) => log::debug!("undoing a join of room {room_id}: no answer yet"),
        }
        tokio::time::sleep(UNDO_RETRY).await;
    }
}

/// [`undo_join`]'s transaction body (the room row is locked already):
/// deletes the member row if it is there, and counts it out. True if it was.
async fn remove_member_row_tx(
    tx: &mut Transaction<'static>,
    room_id: RoomId,
    member_id: u64,
    socket_id: &SocketId,
    events: Option<&str>,
) -> SqlResult<bool> {
    let Some(row) = first::<RoomRow, _, _>(tx, LOCK_ROOM, (room_id,)).await? else {
        return Ok(false);
    };
    let room = room_from_row(row);
    let member: Option<(String, NaiveDateTime)> = first(
        tx,
        "SELECT nickname, join_time FROM chatMember WHERE id = ? AND room_id = ? \
         AND socket_id = ? FOR UPDATE",
        (member_id, room_id, socket_id),
    )
    .await?;
    let Some(member) = member else {
        return Ok(false);
    };
    tx.exec_drop("DELETE FROM chatMember WHERE id = ?", (member_id,))
        .await?;
    let remaining = room.member_count.saturating_sub(1);
    set_member_count(tx, room_id, remaining).await?;
    if let Some(instance) = events {
        record_departures(tx, instance, &room, &[member], remaining == 0).await?;
    }
    Ok(true)
}

/// Records that the members `gone` (nickname, join time) left `room` (as it
/// was locked at the start of the transaction), and that it was deleted if
/// `deleted`, in the caller's transaction, which holds the room's row lock.
async fn record_departures(
    tx: &mut Transaction<'static>,
    instance: &str,
    room: &Room,
    gone: &[(String, NaiveDateTime)],
    deleted: bool,
) -> SqlResult<()> {
    let at = crate::domain::now();
    let mut events: Vec<DomainEvent> = gone
        .iter()
        .map(|(nickname, joined)| {
            let member = Member {
                nickname: nickname.clone(),
                joined_at: from_db(*joined),
            };
            DomainEvent::member_left(room.id, &member, at)
        })
        .collect();
    if deleted {
        events.push(DomainEvent::room_deleted(room, at));
    }
    outbox::record(tx, instance, &events).await
}

/// One chunk of `delete_unjoined_rooms`: lock the oldest `limit`
/// candidates, then delete them with the member-count condition checked
/// again in the `DELETE`. Returns how many candidates there were and which
/// rooms were deleted.
async fn delete_unjoined_rooms_tx(
    tx: &mut Transaction<'static>,
    cutoff: NaiveDateTime,
    limit: usize,
    events: Option<&str>,
) -> TxResult<(usize, Vec<RoomId>)> {
    let locked: Vec<RoomRow> = rows(
        tx,
        SWEEP_SELECT,
        (cutoff, u64::try_from(limit).unwrap_or(u64::MAX)),
    )
    .await?;
    let candidates: Vec<u64> = locked.iter().map(|r| r.0).collect();
    let mut deleted = Vec::with_capacity(candidates.len());
    for chunk in candidates.chunks(MAX_IDS_PER_STATEMENT) {
        let list = placeholders(chunk.len());
        let ids: Vec<Value> = chunk.iter().map(|id| Value::from(*id)).collect();
        tx.exec_drop(
            format!("DELETE FROM chatRoom WHERE join_member_count = 0 AND id IN ({list})").as_str(),
            Params::Positional(ids.clone()),
        )
        .await?;
        if tx.affected_rows() == chunk.len() as u64 {
            deleted.extend_from_slice(chunk);
        } else {
            // Cannot happen while the rows are locked, but report only what
            // was really deleted if it ever does.
            let survivors: Vec<u64> = rows(
                tx,
                format!("SELECT id FROM chatRoom WHERE id IN ({list})").as_str(),
                Params::Positional(ids),
            )
            .await?;
            deleted.extend(chunk.iter().filter(|id| !survivors.contains(id)));
        }
    }
    if let Some(instance) = events {
        // The rooms' rows were locked by the `FOR UPDATE` above.
        let at = crate::domain::now();
        let gone: Vec<DomainEvent> = locked
            .into_iter()
            .filter(|r| deleted.contains(&r.0))
            .map(|r| DomainEvent::room_deleted(&room_from_row(r), at))
            .collect();
        outbox::record(tx, instance, &gone).await?;
    }
    Ok(Ok((
        candidates.len(),
        deleted.into_iter().map(RoomId::new).collect(),
    )))
}

/// One room of a bulk removal: lock the room row, delete the chosen members
/// (`instance` = `None`: all of them), fix the count, and delete the room
/// if none remain. The last removed member carries `room_deleted`.
async fn remove_room_members_tx(
    tx: &mut Transaction<'static>,
    room_id: RoomId,
    instance: Option<&str>,
    events: Option<&str>,
) -> TxResult<Vec<RemovedMember>> {
    let Some(row) = first::<RoomRow, _, _>(tx, LOCK_ROOM, (room_id,)).await? else {
        // Deleted since we listed it; its members went with it.
        return Ok(Ok(Vec::new()));
    };
    let room = room_from_row(row);
    let count = room.member_count;
    let doomed: Vec<(String, String, NaiveDateTime)> = match instance {
        Some(instance) => {
            let found = rows(
                tx,
                "SELECT nickname, socket_id, join_time FROM chatMember \
                 WHERE room_id = ? AND instance_id = ? ORDER BY id FOR UPDATE",
                (room_id, instance),
            )
            .await?;
            tx.exec_drop(
                "DELETE FROM chatMember WHERE room_id = ? AND instance_id = ?",
                (room_id, instance),
            )
            .await?;
            found
        }
        None => {
            let found = rows(
                tx,
                "SELECT nickname, socket_id, join_time FROM chatMember WHERE room_id = ? \
                 ORDER BY id FOR UPDATE",
                (room_id,),
            )
            .await?;
            tx.exec_drop("DELETE FROM chatMember WHERE room_id = ?", (room_id,))
                .await?;
            found
        }
    };
    if doomed.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    let removed = u32::try_from(doomed.len()).unwrap_or(u32::MAX);
    let remaining = match instance {
        Some(_) => count.saturating_sub(removed),
        None => 0,
    };
    set_member_count(tx, room_id, remaining).await?;
    if let Some(by) = events {
        let gone: Vec<(String, NaiveDateTime)> = doomed
            .iter()
            .map(|(nickname, _, joined)| (nickname.clone(), *joined))
            .collect();
        record_departures(tx, by, &room, &gone, remaining == 0).await?;
    }
    let last = doomed.len() - 1;
    Ok(Ok(doomed
        .into_iter()
        .enumerate()
        .map(|(i, (nickname, socket_id, _))| RemovedMember {
            room_id,
            nickname,
            socket_id: SocketId::from(socket_id),
            room_deleted: remaining == 0 && i == last,
        })
        .collect()))
}

/// One connection to the database `url` names, creating the database first
/// (utf8mb4) if it does not exist, as [`MySqlStore::connect`] does; for the
/// project's other binaries (`chat-events`), which keep tables of their own.
/// Errors are `Unavailable`; [`may_heal`] tells whether waiting can help.
pub async fn connect_creating_database(url: &str) -> Result<Conn, StoreError> {
    open_creating_db(&parse_url(url)?).await
}

/// Opens one connection to the database in `opts`, creating the database
/// first if the server says it does not exist.
async fn open_creating_db(opts: &Opts) -> Result<Conn, StoreError> {
    const CONNECTING: &str = "connecting";
    const CREATING: &str = "creating the database";
    match Conn::new(opts.clone()).await {
        Ok(conn) => Ok(conn),
        Err(SqlError::Server(e)) if e.code == ER_BAD_DB_ERROR => {
            let Some(db) = opts.db_name() else {
                return Err(StoreError::unavailable(CONNECTING, SqlError::Server(e)));
            };
            let server_only = OptsBuilder::from_opts(opts.clone()).db_name(None::<String>);
            let mut conn = Conn::new(server_only)
                .await
                .map_err(unavailable(CONNECTING))?;
            conn.query_drop(format!(
                "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
                quote_identifier(db)
            ))
            .await
            .map_err(unavailable(CREATING))?;
            log::info!("created MySQL database {db:?}");
            conn.query_drop(format!("USE {}", quote_identifier(db)))
                .await
                .map_err(unavailable(CONNECTING))?;
            Ok(conn)
        }
        Err(e) => Err(StoreError::unavailable(CONNECTING, e)),
    }
}

/// A MySQL identifier in backquotes, with backquotes inside doubled.
fn quote_identifier(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `?, ?, ?` for an `IN` list of `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Records that `room_id` has `remaining` members after a removal, inside
/// the removal's transaction: a room left with none is deleted with its
/// messages (the cascade), exactly once, since the caller holds the room's
/// row lock.
async fn set_member_count(
    tx: &mut Transaction<'static>,
    room_id: RoomId,
    remaining: u32,
) -> SqlResult<()> {
    if remaining == 0 {
        tx.exec_drop("DELETE FROM chatRoom WHERE id = ?", (room_id,))
            .await
    } else {
        tx.exec_drop(
            "UPDATE chatRoom SET join_member_count = ? WHERE id = ?",
            (remaining, room_id),
        )
        .await
    }
}

/// Runs a statement and converts every row, turning a row of an unexpected
/// shape into an error instead of the panic `mysql_async`'s typed helpers
/// would raise.
async fn rows<T, Q, P>(q: &mut Q, sql: &str, params: P) -> SqlResult<Vec<T>>
where
    T: FromRow + Send + 'static,
    Q: Queryable,
    P: Into<Params> + Send,
{
    let raw: Vec<Row> = q.exec(sql, params).await?;
    raw.into_iter()
        .map(|row| {
            from_row_opt(row).map_err(|FromRowError(row)| DriverError::FromRow { row }.into())
        })
        .collect()
}

/// The first row of a statement, if any (see [`rows`]).
async fn first<T, Q, P>(q: &mut Q, sql: &str, params: P) -> SqlResult<Option<T>>
where
    T: FromRow + Send + 'static,
    Q: Queryable,
    P: Into<Params> + Send,
{
    Ok(rows(q, sql, params).await?.into_iter().next())
}

/// Whether the room exists (a plain read: callers use it only to tell an
/// empty answer from a missing room).
async fn room_exists<Q: Queryable>(q: &mut Q, room_id: RoomId) -> SqlResult<bool> {
    let found: Option<u64> = first(q, "SELECT id FROM chatRoom WHERE id = ?", (room_id,)).await?;
    Ok(found.is_some())
}

fn room_from_row((id, title, member_count, created): RoomRow) -> Room {
    Room {
        id: RoomId::new(id),
        title,
        member_count,
        created: from_db(created),
    }
}

// The identifiers go into queries as the numbers and strings they wrap.
impl From<RoomId> for Value {
    fn from(id: RoomId) -> Value {
        Value::from(id.get())
    }
}

impl From<MessageSeq> for Value {
    fn from(id: MessageSeq) -> Value {
        Value::from(id.get())
    }
}

impl From<&SocketId> for Value {
    fn from(id: &SocketId) -> Value {
        Value::from(id.as_str())
    }
}

/// What a `DATETIME` column stores: UTC, whole seconds (MySQL would round a
/// fraction, not truncate it).
fn to_db(t: DateTime<Utc>) -> NaiveDateTime {
    t.trunc_subsecs(0).naive_utc()
}

fn from_db(t: NaiveDateTime) -> DateTime<Utc> {
    t.and_utc()
}

/// For `map_err`: a database failure during `what`.
fn unavailable(what: &'static str) -> impl FnOnce(SqlError) -> StoreError {
    move |e| StoreError::unavailable(what, e)
}

/// Why a MySQL URL cannot be used although it parses.
#[derive(Debug, thiserror::Error)]
#[error("the MySQL URL must name a database: mysql://user:pass@host:port/db")]
struct NoDatabaseInUrl;

/// The connection options in `url`, which must name a database.
fn parse_url(url: &str) -> Result<Opts, StoreError> {
    const WHAT: &str = "reading the MySQL URL";
    let opts = Opts::from_url(url).map_err(|e| StoreError::unavailable(WHAT, e))?;
    if opts.db_name().is_none() {
        return Err(StoreError::unavailable(WHAT, NoDatabaseInUrl));
    }
    Ok(opts)
}

/// Server errors meaning "this user may not do that": waiting will not
/// change it. `ER_DBACCESS_DENIED_ERROR`, `ER_ACCESS_DENIED_ERROR`,
/// `ER_TABLEACCESS_DENIED_ERROR`, `ER_COLUMNACCESS_DENIED_ERROR`,
/// `ER_SPECIFIC_ACCESS_DENIED_ERROR`.
const NO_PRIVILEGE: [u16; 5] = [1044, 1045, 1142, 1143, 1227];

/// Server errors that go away by themselves: too many connections
/// (`ER_CON_COUNT_ERROR` 1040, `ER_TOO_MANY_USER_CONNECTIONS` 1203,
/// `ER_USER_LIMIT_REACHED` 1226), a server shutting down or starting
/// (`ER_SERVER_SHUTDOWN` 1053), out of memory or resources (1037, 1041),
/// network trouble (`ER_NET_*` 1158–1161, aborted connections 1152, 1184),
/// a killed connection or query (1927, 1317, MySQL's 4031 idle timeout) and
/// lock conflicts (1205, 1213).
const TRANSIENT_SERVER_ERRORS: [u16; 17] = [
    1037, 1040, 1041, 1053, 1152, 1158, 1159, 1160, 1161, 1184, 1203, 1205, 1213, 1226, 1317, 1927,
    4031,
];

/// Whether a failure to connect (from [`MySqlStore::connect`]) may go away
/// by waiting: the server is unreachable, not answering, starting, shutting
/// down or out of connections. It cannot when the server refused something
/// that only an administrator can change (authentication, privileges, a
/// database that cannot be created, a schema this user cannot apply) or the
/// URL is wrong. The first cause in the chain that says decides; an error
/// of unknown kind does not heal, so start-up stops with it rather than
/// retrying forever.
pub fn may_heal(e: &StoreError) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = match e {
        StoreError::Unavailable { cause, .. } => Some(cause.as_ref()),
        _ => None,
    };
    while let Some(cause) = next {
        if let Some(sql) = cause.downcast_ref::<SqlError>() {
            return sql_error_may_heal(sql);
        }
        if cause.is::<TimedOut>() {
            return true;
        }
        if cause.is::<SchemaNotApplied>() || cause.is::<NoDatabaseInUrl>() {
            return false;
        }
        next = cause.source();
    }
    false
}

/// [`may_heal`] for one driver error.
pub fn sql_error_may_heal(e: &SqlError) -> bool {
    match e {
        // Refused, reset, unreachable, name not resolved (yet): all may
        // change while we wait.
        SqlError::Io(_) | SqlError::Driver(DriverError::ConnectionClosed) => true,
        SqlError::Server(s) => TRANSIENT_SERVER_ERRORS.contains(&s.code),
        SqlError::Driver(_) | SqlError::Url(_) | SqlError::Other(_) => false,
    }
}

/// InnoDB rolled back (deadlock) or gave up on (lock wait timeout) this
/// transaction's lock request; trying again is expected to succeed.
fn is_lock_conflict(e: &SqlError) -> bool {
    matches!(e, SqlError::Server(s) if s.code == ER_LOCK_DEADLOCK || s.code == ER_LOCK_WAIT_TIMEOUT)
}

/// The connection itself failed (typically a pooled connection the server
/// closed); another connection may well work.
fn is_broken_connection(e: &SqlError) -> bool {
    matches!(
        e,
        SqlError::Io(_) | SqlError::Driver(DriverError::ConnectionClosed)
    )
}

/// A short, growing pause with a little jitter, so that two transactions
/// that just deadlocked do not collide again in lockstep.
fn backoff(attempt: u32) -> Duration {
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 5_000_000);
    Duration::from_millis(5 * u64::from(attempt)) + Duration::from_nanos(u64::from(jitter))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Chain;

    #[test]
    fn a_driver_error_stays_in_the_chain() {
        let e = unavailable("ping")(SqlError::Driver(DriverError::ConnectionClosed));
        assert!(
            matches!(&e, StoreError::Unavailable { what: "ping", .. }),
            "{e:?}"
        );
        let chain = Chain(&e).to_string();
        assert!(chain.starts_with("store unavailable: ping: "), "{chain}");
        assert!(
            chain.contains("Connection to the server is closed."),
            "{chain}"
        );
        // mysql_async prints the cause in its own message too: once is enough.
        assert_eq!(
            chain.matches("Connection to the server").count(),
            1,
            "{chain}"
        );
    }

    #[test]
    fn bad_urls_say_why() {
        let e = parse_url("postgres://nope").unwrap_err();
        let chain = Chain(&e).to_string();
        assert!(
            chain.starts_with("store unavailable: reading the MySQL URL: "),
            "{chain}"
        );
        assert!(chain.contains("postgres"), "{chain}");
        let e = parse_url("mysql://root@127.0.0.1:3306").unwrap_err();
        assert!(
            Chain(&e).to_string().contains("must name a database"),
            "{e:?}"
        );
        assert!(parse_url("mysql://root@127.0.0.1:3306/chat").is_ok());
    }

    #[tokio::test]
    async fn a_slow_call_times_out_with_its_limit() {
        let limit = Duration::from_millis(5);
        let e = bounded(limit, "ping", std::future::pending::<Result<(), _>>())
            .await
            .unwrap_err();
        assert_eq!(
            Chain(&e).to_string(),
            "store unavailable: ping: no answer within 5 ms"
        );
    }

    fn server_error(code: u16) -> SqlError {
        SqlError::Server(mysql_async::ServerError {
            code,
            message: format!("error {code}"),
            state: "HY000".into(),
        })
    }

    #[test]
    fn waiting_helps_only_against_outages() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let heal = [
            StoreError::unavailable("connecting", SqlError::from(refused)),
            unavailable("connecting")(SqlError::Driver(DriverError::ConnectionClosed)),
            StoreError::unavailable(
                "connecting",
                TimedOut {
                    after: Duration::from_secs(1),
                },
            ),
            unavailable("connecting")(server_error(1040)), // too many connections
            unavailable("connecting")(server_error(1053)), // shutting down
        ];
        for e in &heal {
            assert!(may_heal(e), "{}", Chain(e));
        }
        let stop = [
            unavailable("connecting")(server_error(1045)), // access denied
            unavailable("connecting")(server_error(1044)), // no access to the database
            unavailable("creating the database")(server_error(1044)),
            unavailable("connecting")(server_error(1049)), // unknown database
            unavailable("connecting")(server_error(1130)), // host not allowed
            StoreError::unavailable(
                SCHEMA_STEP,
                SchemaNotApplied {
                    database: "chat".into(),
                    missing: vec!["chatMsg"],
                    cause: server_error(1142),
                },
            ),
            parse_url("mysql://root@127.0.0.1:3306").unwrap_err(),
            parse_url("redis://127.0.0.1/chat").unwrap_err(),
            parse_url("mysql://root@127.0.0.1/chat?pool_min=20&pool_max=5").unwrap_err(),
            unavailable("connecting")(SqlError::Driver(DriverError::CleartextPluginDisabled)),
            StoreError::RoomNotFound(RoomId::new(1)),
        ];
        for e in &stop {
            assert!(!may_heal(e), "{}", Chain(e));
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("chat"), "`chat`");
        assert_eq!(quote_identifier("a`b"), "`a``b`");
    }

    #[test]
    fn times_are_truncated_to_whole_seconds() {
        let t = DateTime::from_timestamp(1_795_000_000, 999_999_999).unwrap();
        assert_eq!(
            from_db(to_db(t)),
            DateTime::from_timestamp(1_795_000_000, 0).unwrap()
        );
    }
}
