//! The message writer: one task per process that stores the chat batches of
//! every room, as many rooms per transaction as are waiting.
//!
//! Why: one transaction per room batch cost MariaDB a `START TRANSACTION`,
//! an `UPDATE`, an `INSERT` and a `COMMIT` for every room with something to
//! say, and on a 2-core machine MariaDB's CPU, not the network, bounded
//! throughput. A batch that arrives while a transaction is in flight waits
//! for the next one, which takes everything waiting by then: the busier
//! the server, the bigger the groups, the fewer the transactions.
//!
//! Invariants, enforced here:
//! - **Stored before delivered.** A room hears back only after the
//!   transaction holding its batch has committed (or failed as a whole).
//! - **Per-room order and disjoint ids.** A room's `last_msg_id` is
//!   advanced by the group's total for that room under the row lock, and
//!   the room's requests take consecutive ranges in arrival order. A room
//!   actor has one batch in flight at a time, so its batches are numbered in
//!   the order it sent them.
//! - **No deadlock between writers.** A group locks its rooms' rows with one
//!   `UPDATE ... WHERE id IN (...)`, which InnoDB walks in primary-key order;
//!   every other transaction locks one room only. So writers of several
//!   processes never wait for each other in a cycle (and a lock conflict
//!   is retried by `transact_on` anyway).
//! - **A room that is gone fails alone.** Its requests get `RoomNotFound`;
//!   the rest of the group is stored.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Error as SqlError, Params, Pool, Transaction, Value};
use tokio::sync::{mpsc, oneshot};

use super::{bounded, from_db, to_db, transact_on, TxResult, MAX_ROWS_PER_INSERT};
use crate::domain::{Message, MessageSeq, RoomId};
use crate::store::{NewMessage, StoreError};

/// Most chats in one group transaction; more wait for the next.
const MAX_GROUP_ROWS: usize = 2000;

/// The operation an append that fails is `Unavailable` during.
const APPEND: &str = "append_messages";

type Outcome = Result<Vec<Message>, StoreError>;

/// Why the writer did not store a request (the cause of its `Unavailable`).
#[derive(Debug, thiserror::Error)]
enum WriterError {
    #[error("the message writer has stopped")]
    Stopped,
    #[error("the message writer dropped the request")]
    Dropped(#[source] oneshot::error::RecvError),
    #[error("the batch waited more than {} ms for the message writer", .0.as_millis())]
    Backlog(Duration),
}

/// One room's batch waiting for a group.
struct Request {
    room_id: RoomId,
    batch: Vec<NewMessage>,
    /// Past this, the request is answered `Unavailable` instead of joining
    /// a group.
    deadline: Instant,
    reply: oneshot::Sender<Outcome>,
}

/// The handle rooms' appends go through.
pub(super) struct MessageWriter {
    requests: mpsc::UnboundedSender<Request>,
    op_timeout: Duration,
}

impl MessageWriter {
    /// Starts the writer task; it ends when the handle is dropped.
    pub(super) fn start(pool: Pool, op_timeout: Duration) -> Self {
        let (requests, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, op_timeout, queue));
        MessageWriter {
            requests,
            op_timeout,
        }
    }

    /// Stores `batch` in `room_id`, numbered after everything the room
    /// already has. The queue is bounded in practice: each room has at most
    /// one batch in flight.
    ///
    /// The answer always comes from the writer: a request still queued at
    /// its deadline (`op_timeout` after it was made) is refused unwritten,
    /// and a group's transaction is bounded by `op_timeout`, so the answer
    /// comes within twice that. The caller must not give up earlier: a
    /// batch reported as failed but committed would reach the room later
    /// through the gap fill, after its senders were told it failed.
    pub(super) async fn append(&self, room_id: RoomId, batch: Vec<NewMessage>) -> Outcome {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            room_id,
            batch,
            deadline: Instant::now() + self.op_timeout,
            reply,
        };
        if self.requests.send(request).is_err() {
            return Err(StoreError::unavailable(APPEND, WriterError::Stopped));
        }
        answer
            .await
            .unwrap_or_else(|e| Err(StoreError::unavailable(APPEND, WriterError::Dropped(e))))
    }
}

async fn run(pool: Pool, op_timeout: Duration, mut queue: mpsc::UnboundedReceiver<Request>) {
    while let Some(first) = queue.recv().await {
        let mut rows = first.batch.len();
        let mut group = vec![first];
        while rows < MAX_GROUP_ROWS {
            match queue.try_recv() {
                Ok(request) => {
                    rows += request.batch.len();
                    group.push(request);
                }
                Err(_) => break,
            }
        }
        // A request that waited past its deadline is refused unwritten (its
        // senders are told it failed, and it indeed was not stored).
        let now = Instant::now();
        let (late, ready): (Vec<Request>, Vec<Request>) =
            group.into_iter().partition(|r| r.deadline <= now);
        for request in late {
            let why = WriterError::Backlog(op_timeout);
            let _ = request
                .reply
                .send(Err(StoreError::unavailable(APPEND, why)));
        }
        let group: Vec<Request> = ready.into_iter().filter(|r| !r.reply.is_closed()).collect();
        if group.is_empty() {
            continue;
        }
        let call = transact_on(&pool, APPEND, |mut tx| {
            let group = &group;
            async move {
                let r = store_group(&mut tx, group).await;
                (tx, r)
            }
        });
        match bounded(op_timeout, APPEND, call).await {
            Ok(outcomes) => {
                for (request, outcome) in group.into_iter().zip(outcomes) {
                    let _ = request.reply.send(outcome);
                }
            }
            Err(e) => {
                for request in group {
                    let _ = request.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One group's transaction: reserve each room's ids, insert every row, and
/// say for each request what it got.
async fn store_group(tx: &mut Transaction<'static>, group: &[Request]) -> TxResult<Vec<Outcome>> {
    let mut totals: BTreeMap<RoomId, u64> = BTreeMap::new();
    for r in group {
        *totals.entry(r.room_id).or_default() += r.batch.len() as u64;
    }
    let lasts = reserve(tx, &totals).await?;
    // The first free id of each room that exists.
    let mut next: HashMap<RoomId, u64> = HashMap::with_capacity(lasts.len());
    for (room_id, last) in lasts {
        let total = totals.get(&room_id).copied().unwrap_or(0);
        let Some(first) = last.checked_sub(total).map(|b| b + 1) else {
            return Err(SqlError::Other(
                "chatRoom.last_msg_id is smaller than the batch just counted".into(),
            ));
        };
        next.insert(room_id, first);
    }
    let outcomes: Vec<Outcome> = group
        .iter()
        .map(|r| {
            let Some(id) = next.get_mut(&r.room_id) else {
                return Err(StoreError::RoomNotFound(r.room_id));
            };
            let stored = r
                .batch
                .iter()
                .zip(*id..)
                .map(|(m, id)| Message {
                    id: MessageSeq::new(id),
                    room_id: r.room_id,
                    nickname: m.nickname.clone(),
                    content: m.content.clone(),
                    sent_at: from_db(to_db(m.sent_at)),
                })
                .collect();
            *id += r.batch.len() as u64;
            Ok(stored)
        })
        .collect();
    let all: Vec<&Message> = outcomes.iter().flatten().flatten().collect();
    for chunk in all.chunks(MAX_ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO chatMsg (id, room_id, nickname, content, chat_time) VALUES {}",
            vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        let mut params = Vec::with_capacity(chunk.len() * 5);
        for m in chunk {
            params.push(Value::from(m.id));
            params.push(Value::from(m.room_id));
            params.push(Value::from(m.nickname.as_str()));
            params.push(Value::from(m.content.as_str()));
            params.push(Value::from(to_db(m.sent_at)));
        }
        tx.exec_drop(sql.as_str(), Params::Positional(params))
            .await?;
    }
    Ok(Ok(outcomes))
}

/// Advances each room's `last_msg_id` by its total, locking the rows, and
/// returns the new values of the rooms that exist.
async fn reserve(
    tx: &mut Transaction<'static>,
    totals: &BTreeMap<RoomId, u64>,
) -> Result<Vec<(RoomId, u64)>, SqlError> {
    if let [(&room_id, &total)] = totals.iter().collect::<Vec<_>>()[..] {
        // One room: `LAST_INSERT_ID(expr)` hands the new value back in the
        // OK packet, with no `SELECT` round trip.
        tx.exec_drop(
            "UPDATE chatRoom SET last_msg_id = LAST_INSERT_ID(last_msg_id + ?) WHERE id = ?",
            (total, room_id),
        )
        .await?;
        if tx.affected_rows() == 0 {
            return Ok(Vec::new());
        }
        return match tx.last_insert_id() {
            Some(last) => Ok(vec![(room_id, last)]),
            None => Err(SqlError::Other(
                "the server did not report the new last_msg_id".into(),
            )),
        };
    }
    // Ids and counts are integers, so they are written into the statement:
    // its text varies with the rooms, and preparing it would not pay off.
    let ids = totals
        .keys()
        .map(RoomId::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let cases: String = totals
        .iter()
        .map(|(id, n)| format!(" WHEN {id} THEN {n}"))
        .collect();
    tx.query_drop(format!(
        "UPDATE chatRoom SET last_msg_id = last_msg_id + CASE id{cases} END WHERE id IN ({ids})"
    ))
    .await?;
    let lasts: Vec<(u64, u64)> = tx
        .query(format!(
            "SELECT id, last_msg_id FROM chatRoom WHERE id IN ({ids})"
        ))
        .await?;
    Ok(lasts
        .into_iter()
        .map(|(id, last)| (RoomId::new(id), last))
        .collect())
}
