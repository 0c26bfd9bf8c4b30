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
//! - **Every answer is true.** `Ok` means committed; an error means not
//!   stored, now or later (the `COMMIT` was never sent). A `COMMIT` sent
//!   but not answered is resolved against the database before anyone is
//!   answered (`store_group_truly`).
//! - **Answers in time.** A request is answered within half the store
//!   timeout, queued or in a group, except after an unanswered `COMMIT`.
//! - **Events with the messages** (`AMQP_URL`). A group's `message.sent`
//!   outbox rows are written in its transaction, after `reserve` locked its
//!   rooms' rows (see `outbox.rs`): they exist exactly when the messages do,
//!   also after an unanswered `COMMIT` resolved either way.
//! - **Supervised.** A writer task that dies is started again; until then
//!   `is_running` is false and the store's `ping` (so `/health`) fails.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::NaiveDateTime;
use mysql_async::prelude::Queryable;
use mysql_async::{Error as SqlError, Params, Pool, Transaction, Value};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::Instant;

use super::{
    from_db, rows, settle, to_db, transact_until, TxFailed, TxResult, MAX_ROWS_PER_INSERT,
    SETTLE_KILL_AFTER,
};
use crate::domain::{Message, MessageSeq, RoomId};
use crate::events::body::DomainEvent;
use crate::events::Events;
use crate::store::{NewMessage, StoreError};

/// Most chats in one group transaction; more wait for the next.
const MAX_GROUP_ROWS: usize = 2000;

/// The operation an append that fails is `Unavailable` during.
const APPEND: &str = "append_messages";

/// How long a writer task that died stays down before it is started again
/// (and `/health` says degraded meanwhile).
pub(super) const RESTART_DELAY: Duration = Duration::from_millis(500);

/// Pause between two attempts to find out whether a group whose `COMMIT`
/// got no answer was stored.
const RESOLVE_RETRY: Duration = Duration::from_millis(200);

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

/// The writer task is down (it died and waits to be restarted).
#[derive(Debug, thiserror::Error)]
#[error("the message writer is restarting")]
pub(super) struct WriterDown;

/// One room's batch waiting for a group.
struct Request {
    room_id: RoomId,
    batch: Vec<NewMessage>,
    /// Past this, the request is answered `Unavailable` instead of joining
    /// a group, and a group holding it gives up before committing.
    deadline: Instant,
    reply: oneshot::Sender<Outcome>,
}

/// What the writer task is asked to do.
enum Job {
    Append(Request),
    /// Tests only: make the task die, as a bug would.
    #[cfg(test)]
    Crash,
}

/// The handle rooms' appends go through.
pub(super) struct MessageWriter {
    requests: mpsc::UnboundedSender<Job>,
    op_timeout: Duration,
    /// False from the moment the writer task died until it runs again.
    running: Arc<AtomicBool>,
    /// Where the size of each group is recorded, once set (see
    /// `MySqlStore::record_writer_batches`).
    group_sizes: GroupSizes,
}

/// The histogram of chats per group, if the server asked for one.
pub(super) type GroupSizes = Arc<OnceLock<metrics::Histogram>>;

impl MessageWriter {
    /// Starts the writer task under a supervisor that starts it again
    /// (after [`RESTART_DELAY`]) whenever it dies; both end when the handle
    /// is dropped.
    /// With `events`, each group also records a `message.sent` per message
    /// in the outbox, in its transaction (see `outbox.rs`).
    pub(super) fn start(pool: Pool, op_timeout: Duration, events: Option<Arc<Events>>) -> Self {
        let (requests, queue) = mpsc::unbounded_channel();
        let running = Arc::new(AtomicBool::new(true));
        let group_sizes = GroupSizes::default();
        tokio::spawn(supervise(
            pool,
            op_timeout,
            Arc::new(Mutex::new(queue)),
            running.clone(),
            events,
            group_sizes.clone(),
        ));
        MessageWriter {
            requests,
            op_timeout,
            running,
            group_sizes,
        }
    }

    /// Records the number of chats of every group from now on in
    /// `histogram` (the first histogram given stays).
    pub(super) fn record_group_sizes(&self, histogram: metrics::Histogram) {
        let _ = self.group_sizes.set(histogram);
    }

    /// Whether the writer task is running (for `/health`).
    pub(super) fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Stores `batch` in `room_id`, numbered after everything the room
    /// already has. The queue is bounded in practice: each room has at most
    /// one batch in flight.
    ///
    /// The answer is always true, and it comes from the writer:
    /// - `Ok`: stored (committed);
    /// - an error: not stored, now or later.
    ///
    /// It comes within half of `op_timeout` of the call (a request still
    /// queued at its deadline is refused unwritten; a group gives up before
    /// its earliest deadline). Half, because a room has one batch in flight
    /// at a time: a chat that arrives meanwhile waits for that batch (at
    /// most half) and then for its own (at most half), so it is answered
    /// within `op_timeout` of reaching the room. The one exception: a group whose `COMMIT` was
    /// sent but not answered in time. Its requests are answered once the
    /// database tells whether it committed (see `resolve`), however long
    /// that takes. The caller must not give up earlier: a batch reported as
    /// failed but committed would reach the room later through the gap fill,
    /// after its senders were told it failed. The room keeps its answers in
    /// time meanwhile without claiming an outcome: it tells the authors
    /// `pending`, and refuses the chats it has not handed over yet (see
    /// `actors/room/pending.rs`).
    pub(super) async fn append(&self, room_id: RoomId, batch: Vec<NewMessage>) -> Outcome {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            room_id,
            batch,
            deadline: Instant::now() + self.op_timeout / 2,
            reply,
        };
        if self.requests.send(Job::Append(request)).is_err() {
            return Err(StoreError::unavailable(APPEND, WriterError::Stopped));
        }
        answer
            .await
            .unwrap_or_else(|e| Err(StoreError::unavailable(APPEND, WriterError::Dropped(e))))
    }

    /// Tests only: makes the writer task die.
    #[cfg(test)]
    fn crash(&self) {
        let _ = self.requests.send(Job::Crash);
    }
}

/// Runs the writer task, and runs it again whenever it dies (a panic), after
/// [`RESTART_DELAY`], with `running` false in between. Requests the dead
/// task held are answered `Unavailable` (their reply channels close); those
/// still queued are served by the next task. Ends when every handle is gone.
async fn supervise(
    pool: Pool,
    op_timeout: Duration,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>,
    running: Arc<AtomicBool>,
    events: Option<Arc<Events>>,
    group_sizes: GroupSizes,
) {
    loop {
        running.store(true, Ordering::SeqCst);
        let task = tokio::spawn(run(
            pool.clone(),
            op_timeout,
            queue.clone(),
            events.clone(),
            group_sizes.clone(),
        ));
        match task.await {
            Ok(()) => return,
            Err(e) => {
                // Invariant: `running` is false from here until the next
                // task is spawned, so `/health` never calls a dead writer
                // healthy.
                running.store(false, Ordering::SeqCst);
                log::error!(
                    "the message writer died ({e}); restarting it in {} ms",
                    RESTART_DELAY.as_millis()
                );
                tokio::time::sleep(RESTART_DELAY).await;
            }
        }
    }
}

/// The writer task: takes what waits, stores it as one group, answers.
/// While a group is in flight it keeps reading the queue and refuses each
/// request that reaches its deadline unwritten, so a stuck database delays
/// no answer beyond the deadline (except an unknown commit, see
/// `MessageWriter::append`).
async fn run(
    pool: Pool,
    op_timeout: Duration,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>,
    events: Option<Arc<Events>>,
    group_sizes: GroupSizes,
) {
    let mut queue = queue.lock().await;
    // In arrival order, hence in deadline order.
    let mut waiting: VecDeque<Request> = VecDeque::new();
    let mut open = true;
    loop {
        if waiting.is_empty() {
            if !open {
                return;
            }
            match queue.recv().await {
                Some(job) => take(job, &mut waiting),
                None => return,
            }
        }
        while let Ok(job) = queue.try_recv() {
            take(job, &mut waiting);
        }
        refuse_late(&mut waiting, op_timeout);
        let group = next_group(&mut waiting);
        let Some(deadline) = group.iter().map(|r| r.deadline).min() else {
            continue;
        };
        if let Some(sizes) = group_sizes.get() {
            sizes.record(group.iter().map(|r| r.batch.len()).sum::<usize>() as f64);
        }
        let outcomes = {
            let by = events.as_deref().map(Events::instance);
            let work = store_group_truly(&pool, &group, deadline, op_timeout, by);
            tokio::pin!(work);
            loop {
                let next_deadline = waiting.front().map(|r| r.deadline);
                tokio::select! {
                    biased;
                    outcomes = &mut work => break outcomes,
                    job = queue.recv(), if open => match job {
                        Some(job) => take(job, &mut waiting),
                        None => open = false,
                    },
                    () = sleep_until(next_deadline) => refuse_late(&mut waiting, op_timeout),
                }
            }
        };
        for (request, outcome) in group.into_iter().zip(outcomes) {
            let _ = request.reply.send(outcome);
        }
        if let Some(events) = &events {
            events.wake();
        }
    }
}

fn take(job: Job, waiting: &mut VecDeque<Request>) {
    match job {
        Job::Append(request) => waiting.push_back(request),
        #[cfg(test)]
        Job::Crash => panic!("message writer crash requested by a test"),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Refuses, unwritten, every request that reached its deadline (its senders
/// are told it failed, and it indeed was not and will not be stored), and
/// drops those whose caller is gone.
fn refuse_late(waiting: &mut VecDeque<Request>, op_timeout: Duration) {
    let now = Instant::now();
    let (late, rest): (Vec<Request>, Vec<Request>) = waiting
        .drain(..)
        .filter(|r| !r.reply.is_closed())
        .partition(|r| r.deadline <= now);
    waiting.extend(rest);
    for request in late {
        let why = WriterError::Backlog(op_timeout / 2);
        let _ = request
            .reply
            .send(Err(StoreError::unavailable(APPEND, why)));
    }
}

/// The oldest waiting requests, up to `MAX_GROUP_ROWS` rows (at least one).
fn next_group(waiting: &mut VecDeque<Request>) -> Vec<Request> {
    let mut rows = 0;
    let mut group = Vec::new();
    while let Some(request) = waiting.front() {
        if !group.is_empty() && rows + request.batch.len() > MAX_GROUP_ROWS {
            break;
        }
        rows += request.batch.len();
        group.extend(waiting.pop_front());
    }
    group
}

/// Stores `group` in one transaction that gives up (uncommitted) at
/// `deadline`, and returns one true outcome per request.
///
/// Invariant: an error outcome means "not stored, and never will be". When
/// the `COMMIT` was sent but got no answer, that is not known yet: then this
/// waits until the database tells (see [`resolve`]) rather than guess.
async fn store_group_truly(
    pool: &Pool,
    group: &[Request],
    deadline: Instant,
    op_timeout: Duration,
    events: Option<&str>,
) -> Vec<Outcome> {
    let call = transact_until(pool, APPEND, deadline, |mut tx| async move {
        let r = store_group(&mut tx, group, events).await;
        (tx, r)
    });
    match call.await {
        Ok(outcomes) => outcomes,
        Err(TxFailed::NotStored(e)) => group.iter().map(|_| Err(e.clone())).collect(),
        Err(TxFailed::Unknown {
            value,
            conn_id,
            cause,
        }) => {
            log::warn!(
                "the COMMIT of {} chat batches got no answer ({}); \
                 waiting for MySQL to tell whether they were stored",
                group.len(),
                crate::error::Chain(&cause)
            );
            let committed = resolve(pool, conn_id, &value, op_timeout).await;
            log::warn!(
                "the unanswered COMMIT of {} chat batches is resolved: {}",
                group.len(),
                if committed.is_empty() {
                    "not stored"
                } else {
                    "stored"
                }
            );
            settle_outcomes(value, &committed, &cause)
        }
    }
}

/// The outcomes of a group whose commit was in doubt, once `committed`
/// (the rooms whose rows were found as written) is known: nothing found
/// means the transaction did not commit, and every request failed with
/// `cause`; otherwise it committed (it is atomic), and a room whose rows
/// are missing was deleted since.
fn settle_outcomes(
    planned: Vec<Outcome>,
    committed: &HashSet<RoomId>,
    cause: &StoreError,
) -> Vec<Outcome> {
    planned
        .into_iter()
        .map(|outcome| match outcome {
            Ok(_) if committed.is_empty() => Err(cause.clone()),
            Ok(messages) => match messages.first() {
                Some(m) if !committed.contains(&m.room_id) => {
                    Err(StoreError::RoomNotFound(m.room_id))
                }
                _ => Ok(messages),
            },
            Err(e) => Err(e),
        })
        .collect()
}

/// Finds out whether the transaction of connection `conn_id`, whose
/// `COMMIT` got no answer, stored the messages in `planned`: returns the
/// rooms whose rows are there exactly as planned (empty: not stored). Tries
/// every [`RESOLVE_RETRY`], each attempt bounded by `op_timeout`, until the
/// database answers; there is no other bound, because until it answers the
/// truth is not known (a frozen server may still commit when it resumes).
///
/// A transaction's rows are recognised by content: the same ids, nicknames,
/// texts and times. After a rollback another process could only produce the
/// same rows by storing, under the same ids, the same texts from the same
/// nicknames in the same second, which needs the nickname's member (held by
/// this process) to have left and joined elsewhere meanwhile.
async fn resolve(
    pool: &Pool,
    conn_id: u32,
    planned: &[Outcome],
    op_timeout: Duration,
) -> HashSet<RoomId> {
    let mut by_room: BTreeMap<RoomId, Vec<&Message>> = BTreeMap::new();
    for m in planned.iter().flatten().flatten() {
        by_room.entry(m.room_id).or_default().push(m);
    }
    if by_room.is_empty() {
        return HashSet::new();
    }
    let kill_from = Instant::now() + SETTLE_KILL_AFTER;
    loop {
        let attempt = committed_rooms(pool, conn_id, &by_room, kill_from);
        match tokio::time::timeout(op_timeout, attempt).await {
            Ok(Ok(found)) => return found,
            Ok(Err(e)) => log::debug!("resolving an unanswered COMMIT: {e}"),
            Err(_) => log::debug!("resolving an unanswered COMMIT: no answer yet"),
        }
        tokio::time::sleep(RESOLVE_RETRY).await;
    }
}

/// One attempt of [`resolve`]: once the old transaction has ended (see
/// [`settle`]), with its rooms' rows locked, reads each room's planned id
/// range and compares it with what was planned.
async fn committed_rooms(
    pool: &Pool,
    conn_id: u32,
    by_room: &BTreeMap<RoomId, Vec<&Message>>,
    kill_from: Instant,
) -> Result<HashSet<RoomId>, SqlError> {
    let rooms: Vec<RoomId> = by_room.keys().copied().collect();
    let mut tx = settle(pool, conn_id, &rooms, kill_from).await?;
    let mut found = HashSet::new();
    for (&room_id, planned) in by_room {
        let (Some(first), Some(last)) = (planned.first(), planned.last()) else {
            continue;
        };
        let stored: Vec<(u64, String, String, NaiveDateTime)> = rows(
            &mut tx,
            "SELECT id, nickname, content, chat_time FROM chatMsg \
             WHERE room_id = ? AND id BETWEEN ? AND ? ORDER BY id",
            (room_id, first.id, last.id),
        )
        .await?;
        let same = stored.len() == planned.len()
            && stored.iter().zip(planned).all(|((id, nick, text, at), m)| {
                *id == m.id.get()
                    && *nick == m.nickname
                    && *text == m.content
                    && *at == to_db(m.sent_at)
            });
        if same {
            found.insert(room_id);
        }
    }
    let _ = tx.rollback().await;
    Ok(found)
}

/// One group's transaction: reserve each room's ids, insert every row, and
/// say for each request what it got.
async fn store_group(
    tx: &mut Transaction<'static>,
    group: &[Request],
    events: Option<&str>,
) -> TxResult<Vec<Outcome>> {
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
    if let Some(instance) = events {
        // The rooms' rows were locked by `reserve` above (see `outbox.rs`);
        // a room's messages are recorded in id order.
        let sent: Vec<DomainEvent> = all.iter().map(|m| DomainEvent::message_sent(m)).collect();
        super::outbox::record(tx, instance, &sent).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Chain;

    fn one_chat() -> Vec<NewMessage> {
        vec![NewMessage {
            nickname: "ann".into(),
            content: "hello".into(),
            sent_at: chrono::Utc::now(),
        }]
    }

    /// Polls `f` every 5 ms for at most `limit`.
    async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        f()
    }

    #[tokio::test]
    async fn a_writer_that_dies_is_restarted_and_reported_down_meanwhile() {
        // Nothing listens on port 1: an append the writer task takes fails
        // at connecting, which shows a task is there to take it.
        let pool = Pool::from_url("mysql://root@127.0.0.1:1/chat").expect("a valid URL");
        let writer = MessageWriter::start(pool, Duration::from_millis(300), None);
        assert!(writer.is_running());

        writer.crash();
        assert!(
            until(Duration::from_secs(2), || !writer.is_running()).await,
            "a dead writer must be reported down"
        );
        // Sent while it is down: kept in the queue for the next task.
        let answer = writer.append(RoomId::new(1), one_chat());
        let (answer, up) = tokio::join!(answer, async {
            until(RESTART_DELAY + Duration::from_secs(2), || {
                writer.is_running()
            })
            .await
        });
        assert!(
            up,
            "the writer must be running again after its restart delay"
        );
        let e = answer.expect_err("no database: the append cannot succeed");
        let chain = Chain(&e).to_string();
        assert!(
            !chain.contains("stopped") && !chain.contains("dropped"),
            "the restarted writer must take the request: {chain}"
        );

        // And it keeps serving after that.
        let e = writer
            .append(RoomId::new(1), one_chat())
            .await
            .expect_err("no database");
        let chain = Chain(&e).to_string();
        assert!(
            chain.starts_with("store unavailable: append_messages"),
            "{chain}"
        );
        assert!(!chain.contains("stopped"), "{chain}");
    }

    #[tokio::test]
    async fn a_queued_request_is_refused_at_its_deadline_while_a_group_hangs() {
        // A listener that accepts and never answers: the first group hangs
        // at connecting until its deadline; what waits behind it is refused
        // at its own deadline, not after the group.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let url = format!("mysql://root@127.0.0.1:{port}/chat");
        let pool = Pool::from_url(url.as_str()).expect("a valid URL");
        let limit = Duration::from_millis(400);
        let writer = MessageWriter::start(pool, limit, None);
        let started = Instant::now();
        let first = writer.append(RoomId::new(1), one_chat());
        let second = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let sent = Instant::now();
            let r = writer.append(RoomId::new(2), one_chat()).await;
            (r, sent.elapsed())
        };
        let (first, (second, waited)) = tokio::join!(first, second);
        assert!(first.is_err() && second.is_err());
        assert!(started.elapsed() < limit * 2, "{:?}", started.elapsed());
        assert!(
            waited <= limit / 2 + Duration::from_millis(150),
            "answered {waited:?} after it was sent; the writer's budget is {:?}",
            limit / 2
        );
        drop(listener);
    }

    #[test]
    fn a_doubtful_group_is_stored_only_where_its_rows_were_found() {
        let msg = |room: u64, id: u64| Message {
            id: MessageSeq::new(id),
            room_id: RoomId::new(room),
            nickname: "ann".into(),
            content: "hi".into(),
            sent_at: from_db(to_db(chrono::Utc::now())),
        };
        let cause = StoreError::unavailable(
            APPEND,
            crate::store::TimedOut {
                after: Duration::from_secs(1),
            },
        );
        let planned = || {
            vec![
                Ok(vec![msg(1, 5)]),
                Ok(vec![msg(2, 9), msg(2, 10)]),
                Err(StoreError::RoomNotFound(RoomId::new(3))),
            ]
        };
        // Nothing found: not committed, every request failed.
        let none = settle_outcomes(planned(), &HashSet::new(), &cause);
        assert!(none.iter().all(|o| o.is_err()));
        // Found: committed; a room whose rows are gone was deleted since.
        let found = settle_outcomes(planned(), &HashSet::from([RoomId::new(2)]), &cause);
        assert!(matches!(&found[0], Err(StoreError::RoomNotFound(r)) if r.get() == 1));
        assert_eq!(found[1].as_ref().map(Vec::len).ok(), Some(2));
        assert!(matches!(&found[2], Err(StoreError::RoomNotFound(_))));
    }
}
