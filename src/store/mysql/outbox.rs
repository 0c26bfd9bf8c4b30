//! The transactional outbox of domain events (with `AMQP_URL`): the rows of
//! `chatEventOutbox` are written by the transactions that change rooms, and
//! read, published and deleted by the one process that holds the relay
//! lock.
//!
//! Invariants, enforced here and by the callers named:
//! - **Recorded with the change.** [`record`] runs inside the change's
//!   transaction, after the caller locked the rooms' `chatRoom` rows
//!   (`add_member_tx`, `remove_member_tx`, `remove_room_members_tx`,
//!   `remove_member_row_tx`, `delete_unjoined_rooms_tx` lock with
//!   `SELECT ... FOR UPDATE`; the message writer's `reserve` with its
//!   `UPDATE`; `create_room` inserts the row, which nobody else sees before
//!   the commit). The events commit or roll back with the change, and the
//!   next transaction of the same room can only insert its rows after this
//!   one committed, so **per room, outbox ids follow commit order**.
//! - **Gapless seq per room.** `chatEventSeq.last_seq` is advanced under
//!   the same room lock; its row is deleted with the room's `room.deleted`
//!   event, the room's last.
//! - **One relay.** Only the holder of the named lock `events relay`
//!   (taken with `GET_LOCK` on a connection of its own; MySQL frees it when
//!   that connection ends, so also when the process dies) reads, publishes
//!   and deletes rows, and it does all of that on that connection: once the
//!   connection is gone, so is its right to delete.
//! - **Deleted by id, never by high-water mark.** A lower id of another room
//!   may commit after a higher one was published; only the confirmed ids
//!   are deleted, and the next read finds the late one.
//! - **Bounded.** The relay deletes the oldest rows beyond
//!   `EVENTS_BUFFER_MAX` (by id span, which is at least the row count),
//!   every round, and counts them as dropped. Between two rounds (one poll
//!   interval) the processes may add more.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Error as SqlError, Opts, OptsBuilder, Params, Transaction, Value};
use tokio::sync::Mutex;

use super::{rows, SqlResult, MAX_ROWS_PER_INSERT, SESSION_SETUP};
use crate::domain::RoomId;
use crate::events::body::{new_event_id, DomainEvent, EventKind};
use crate::events::queue::Pending;
use crate::events::relay::{EventSource, SourceError};
use crate::events::Events;

/// Writes `events` to the outbox, each with its room's next seq, inside the
/// caller's transaction (which holds the rooms' `chatRoom` row locks; see
/// the module comment). A `room.deleted` event ends its room's sequence.
pub(super) async fn record(
    tx: &mut Transaction<'static>,
    instance: &str,
    events: &[DomainEvent],
) -> SqlResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    // Rooms in ascending id order: the seq rows are locked in the same
    // order as the room rows (no lock cycle between writers).
    let mut counts: BTreeMap<RoomId, u64> = BTreeMap::new();
    for e in events {
        *counts.entry(e.room_id).or_default() += 1;
    }
    // Advance the counters that exist (an UPDATE by primary key takes no
    // gap locks at READ COMMITTED, so rooms never wait for each other
    // here), then create the missing ones (a new room, or one created while
    // events were off); no other transaction can create the same row
    // meanwhile, since it would need the same room's lock.
    let list = vec!["?"; counts.len()].join(", ");
    let ids: Vec<Value> = counts.keys().map(|r| Value::from(*r)).collect();
    let mut params = Vec::with_capacity(counts.len() * 3);
    for (room, n) in &counts {
        params.push(Value::from(*room));
        params.push(Value::from(*n));
    }
    params.extend(ids.iter().cloned());
    tx.exec_drop(
        format!(
            "UPDATE chatEventSeq SET last_seq = last_seq + CASE room_id {} END \
             WHERE room_id IN ({list})",
            " WHEN ? THEN ?".repeat(counts.len())
        )
        .as_str(),
        Params::Positional(params),
    )
    .await?;
    let mut lasts: Vec<(u64, u64)> = rows(
        tx,
        format!("SELECT room_id, last_seq FROM chatEventSeq WHERE room_id IN ({list})").as_str(),
        Params::Positional(ids),
    )
    .await?;
    let missing: Vec<(RoomId, u64)> = counts
        .iter()
        .filter(|(room, _)| !lasts.iter().any(|(id, _)| *id == room.get()))
        .map(|(room, n)| (*room, *n))
        .collect();
    if !missing.is_empty() {
        let mut params = Vec::with_capacity(missing.len() * 2);
        for (room, n) in &missing {
            params.push(Value::from(*room));
            params.push(Value::from(*n));
            lasts.push((room.get(), *n));
        }
        tx.exec_drop(
            format!(
                "INSERT INTO chatEventSeq (room_id, last_seq) VALUES {}",
                vec!["(?, ?)"; missing.len()].join(", ")
            )
            .as_str(),
            Params::Positional(params),
        )
        .await?;
    }
    let mut next: BTreeMap<RoomId, u64> = BTreeMap::new();
    for (room, last) in lasts {
        let room = RoomId::new(room);
        let n = counts.get(&room).copied().unwrap_or(0);
        next.insert(room, last.saturating_sub(n) + 1);
    }
    let mut planned = Vec::with_capacity(events.len());
    for e in events {
        let Some(seq) = next.get_mut(&e.room_id) else {
            return Err(SqlError::Other(
                "chatEventSeq lost a row inside its transaction".into(),
            ));
        };
        planned.push((e, *seq, e.body(&new_event_id(), *seq, instance)));
        *seq += 1;
    }
    for chunk in planned.chunks(MAX_ROWS_PER_INSERT) {
        let mut params = Vec::with_capacity(chunk.len() * 4);
        for (e, seq, body) in chunk {
            params.push(Value::from(e.room_id));
            params.push(Value::from(*seq));
            params.push(Value::from(e.kind.routing_key()));
            params.push(Value::from(body.as_str()));
        }
        tx.exec_drop(
            format!(
                "INSERT INTO chatEventOutbox (room_id, seq, routing_key, body) VALUES {}",
                vec!["(?, ?, ?, ?)"; chunk.len()].join(", ")
            )
            .as_str(),
            Params::Positional(params),
        )
        .await?;
    }
    let ended: Vec<Value> = events
        .iter()
        .filter(|e| e.kind == EventKind::RoomDeleted)
        .map(|e| Value::from(e.room_id))
        .collect();
    if !ended.is_empty() {
        tx.exec_drop(
            format!(
                "DELETE FROM chatEventSeq WHERE room_id IN ({})",
                vec!["?"; ended.len()].join(", ")
            )
            .as_str(),
            Params::Positional(ended),
        )
        .await?;
    }
    Ok(())
}

/// The outbox as the relay's source (see the module comment).
pub struct OutboxSource {
    opts: Opts,
    lock_name: String,
    op_timeout: Duration,
    /// The relay's own connection and whether it holds the lock.
    conn: Mutex<Option<(Conn, bool)>>,
}

impl OutboxSource {
    pub(super) fn new(opts: Opts, op_timeout: Duration) -> Self {
        let database = opts.db_name().unwrap_or_default().to_owned();
        OutboxSource {
            lock_name: crate::instance_lock::lock_name(&database, "events relay"),
            opts: OptsBuilder::from_opts(opts)
                .setup(SESSION_SETUP.to_vec())
                .into(),
            op_timeout,
            conn: Mutex::new(None),
        }
    }

    /// Runs `step` on the relay connection (opened if needed) within the
    /// operation timeout; any failure closes the connection, which also
    /// gives up the lock.
    async fn on_conn<T>(
        &self,
        step: impl for<'c> FnOnce(
            &'c mut Conn,
            &'c mut bool,
        ) -> futures_util::future::BoxFuture<'c, SqlResult<T>>,
    ) -> Result<T, SourceError> {
        let mut slot = self.conn.lock().await;
        let work = async {
            if slot.is_none() {
                *slot = Some((Conn::new(self.opts.clone()).await?, false));
            }
            match slot.as_mut() {
                Some((conn, held)) => step(conn, held).await,
                None => Err(SqlError::Other("no relay connection".into())),
            }
        };
        let result = match tokio::time::timeout(self.op_timeout, work).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => Err(Box::new(e) as SourceError),
            Err(_) => Err(format!(
                "MySQL did not answer within {} ms",
                self.op_timeout.as_millis()
            )
            .into()),
        };
        // Dropping the connection closes it: MySQL frees the lock.
        *slot = None;
        result
    }
}

#[async_trait]
impl EventSource for OutboxSource {
    async fn prepare(&self, events: &Events) -> Result<bool, SourceError> {
        let name = self.lock_name.clone();
        let max = events.buffer_max() as u64;
        let (relaying, buffered, dropped) = self
            .on_conn(|conn, held| {
                Box::pin(async move {
                    let was_held = *held;
                    *held = if was_held {
                        // Still ours? (A server restart frees it.)
                        let mine: Option<Option<i64>> = conn
                            .exec_first("SELECT IS_USED_LOCK(?) = CONNECTION_ID()", (&name,))
                            .await?;
                        mine.flatten() == Some(1)
                    } else {
                        let got: Option<Option<i64>> =
                            conn.exec_first("SELECT GET_LOCK(?, 0)", (&name,)).await?;
                        got.flatten() == Some(1)
                    };
                    if *held && !was_held {
                        // Sequence rows of rooms deleted while events were
                        // off (nothing deletes them then).
                        conn.query_drop(
                            "DELETE s FROM chatEventSeq s LEFT JOIN chatRoom r \
                             ON r.id = s.room_id WHERE r.id IS NULL",
                        )
                        .await?;
                    }
                    let span: Option<(Option<u64>, Option<u64>)> = conn
                        .query_first("SELECT MIN(id), MAX(id) FROM chatEventOutbox")
                        .await?;
                    let (low, high) = match span {
                        Some((Some(low), Some(high))) => (low, high),
                        _ => return Ok((*held, 0, 0)),
                    };
                    let span = high - low + 1;
                    if !*held || span <= max {
                        return Ok((*held, span, 0));
                    }
                    // Keep the newest `max` ids; drop the oldest.
                    conn.exec_drop("DELETE FROM chatEventOutbox WHERE id <= ?", (high - max,))
                        .await?;
                    Ok((true, max, conn.affected_rows()))
                })
            })
            .await?;
        if dropped > 0 {
            events.count_dropped(dropped);
            log::warn!(
                "events: the outbox reached EVENTS_BUFFER_MAX ({max}); dropped the oldest \
                 {dropped} events"
            );
        }
        events.set_buffered(buffered);
        Ok(relaying)
    }

    async fn next_batch(&self, max: usize) -> Result<Vec<Pending>, SourceError> {
        let limit = max as u64;
        let found: Vec<(u64, String, String)> = self
            .on_conn(|conn, _| {
                Box::pin(async move {
                    rows(
                        conn,
                        "SELECT id, routing_key, body FROM chatEventOutbox ORDER BY id LIMIT ?",
                        (limit,),
                    )
                    .await
                })
            })
            .await?;
        // Published under the routing key stored with it, which is the
        // body's `type`.
        let batch = found
            .into_iter()
            .map(|(key, routing_key, body)| Pending {
                key,
                routing_key,
                body,
            })
            .collect();
        Ok(batch)
    }

    async fn confirmed(&self, events: &Events, batch: &[Pending]) -> Result<(), SourceError> {
        let ids: Vec<Value> = batch.iter().map(|p| Value::from(p.key)).collect();
        let n = ids.len() as u64;
        self.on_conn(|conn, _| {
            Box::pin(async move {
                conn.exec_drop(
                    format!(
                        "DELETE FROM chatEventOutbox WHERE id IN ({})",
                        vec!["?"; ids.len()].join(", ")
                    )
                    .as_str(),
                    Params::Positional(ids),
                )
                .await
            })
        })
        .await?;
        events.set_buffered(events.buffered().saturating_sub(n));
        Ok(())
    }
}
