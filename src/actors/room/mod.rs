//! `RoomActor`: one per room with members on this process, and this
//! process's only writer of the room's memberships and messages. The
//! deciding logic lives in plain parts, each testable on its own:
//!
//! - [`members`]: the member list, local and remote, in the store's join
//!   order;
//! - [`steps`]: the queue that runs the room's store writes one at a time;
//! - [`pending`]: chats waiting to be stored, taken in batches;
//! - [`sequencer`]: which id is delivered next, what waits for an earlier
//!   id, when a gap is read from the store;
//! - [`fanout`]: a delivered batch framed once, and what each member's
//!   socket gets (the author's `ref` included);
//! - [`history`]: the recent messages a `joined` carries.
//!
//! This file wires them together, in the order a chat flows: a member
//! joins; its chats queue and are stored as one batch per step; the stored
//! batch is published on the bus and goes through the sequencer, which also
//! takes the batches other processes publish; what the sequencer releases
//! is fanned out to the local members; members leave.
//!
//! Invariants, enforced here:
//! - **One store write at a time** (see `steps.rs`): the store sees this
//!   room's writes from this process strictly in order.
//! - **Stored before delivered.** A chat reaches anyone only once the store
//!   has given it its id, and through the sequencer, so every member gets
//!   every id once, in order (see `sequencer.rs`).
//! - **Published after stored.** A batch goes on the bus only once stored;
//!   a receiver that misses it fills the gap from the store.
//! - **History then live, nothing twice** (see `history.rs`).
//! - **Bounded fan-out.** Each member gets at most one mailbox item per
//!   batch, sent with `try_send`; a session whose mailbox is full is a slow
//!   consumer and is removed and closed, so one stuck client costs the others
//!   nothing and the server's memory stays bounded.
//! - **Every leave recorded.** A local member's leave is a step, retried
//!   with backoff while the store is down; the actor stays alive until every
//!   leave is recorded, so counts never drift.
//! - **Every chat answered in time, and truly** (see `pending.rs`): a chat
//!   with no answer `STORE_TIMEOUT_MS` (+ 200 ms, `ANSWER_GRACE`) after it
//!   reached the room is told
//!   `pending` if its batch is with the store (whose true answer follows
//!   whenever it comes), or refused `unavailable` if it still waits behind
//!   that batch (it is then never stored). One timer per room, set to the
//!   next such deadline, does this.
//! - **Every chat answered before its author leaves.** A leave step is
//!   queued behind batch steps for every chat waiting (`flush_all`), so a
//!   chat sent before `leave` gets its echo or error while its author is
//!   still a member.
//! - **A closing room finishes what it accepted.** `CloseRoom` refuses new
//!   chats and joins, and closes the members (1001) only in a step behind
//!   every batch: each accepted chat is stored and published, or refused,
//!   and answered first.
//! - **A departure checks for a gap.** When a remote member departs, the
//!   room reads the store after its last delivered id (coalesced, see
//!   `recheck.rs`), so a batch whose publication was lost is delivered even
//!   if nobody posts again.

mod fanout;
mod history;
mod members;
mod pending;
mod recheck;
mod sequencer;
mod steps;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;

use self::fanout::{Author, Fanout};
use self::history::RecentHistory;
use self::members::{MemberEntry, MemberList, Rejoin};
use self::pending::PendingChats;
use self::recheck::Recheck;
use self::sequencer::Sequencer;
use self::steps::{HasSteps, Step, StepFuture, StepQueue};
use super::bus::{BusSignal, Publish, RedisBridge, RoomEvent, Subscribe, Unsubscribe};
use super::room_manager::{RoomManager, RoomStopped};
use super::session::SessionEvent;
use crate::domain::{
    self, Member, Message, MessageContent, MessageSeq, Nickname, RoomId, SocketId,
};
use crate::error::{Chain, ChatError};
use crate::protocol::{error_frame, pending_frame, ServerFrame};
use crate::store::{
    JoinOutcome, LeaveOutcome, MemberRecord, NewMember, NewMessage, SharedStore, StoreError,
};
use crate::telemetry::{Metrics, RateLimit};
use crate::ws::CloseCode;

/// Most chats stored in one store call; bounds a batch's latency.
const MAX_BATCH: usize = 256;
/// Most messages read from the store in one gap fill or resync page.
const FILL_PAGE: usize = 500;
/// First and longest pause between retries of a leave the store could not
/// record.
const FIRST_LEAVE_RETRY: Duration = Duration::from_millis(100);
const MAX_LEAVE_RETRY: Duration = Duration::from_secs(5);
/// How much longer than `STORE_TIMEOUT_MS` a chat waits for the store
/// before it is told `pending` or refused (see `pending.rs`). The message
/// writer answers a chat within `STORE_TIMEOUT_MS` of its reaching the room
/// unless a `COMMIT` went unanswered (two halves: the batch before it, then
/// its own); this grace lets such an answer, due right at the timeout, win
/// the race with the timer, so `pending` goes out only when the store is
/// truly stuck. Small enough that the first answer still comes within
/// `STORE_TIMEOUT_MS` plus a second of sending.
const ANSWER_GRACE: Duration = Duration::from_millis(200);

/// Fixed per-process settings every room needs.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    pub instance_id: String,
    pub history_on_join: usize,
    /// Bounds of the chats waiting to be stored (see `pending.rs`).
    pub queue_max_messages: usize,
    pub queue_max_bytes: usize,
    pub gap_timeout: Duration,
    /// `STORE_TIMEOUT_MS`: bounds how long a chat waits for its first
    /// answer (see `pending.rs`), and how long a closing room waits for its
    /// last store writes.
    pub store_timeout: Duration,
    /// The cluster bus, when there is one.
    pub bus: Option<Addr<RedisBridge>>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
}

/// The room is shutting down; ask the manager for a fresh actor and retry.
#[derive(Debug, Clone, Copy)]
pub struct RoomClosing;

/// Ask to join the room. The reply only says whether the room accepted the
/// request; the outcome (`joined` or an error) arrives at `outbox` in order
/// with the room's other frames.
#[derive(Message)]
#[rtype(result = "Result<(), RoomClosing>")]
pub struct Join {
    pub socket_id: SocketId,
    pub nickname: Nickname,
    pub outbox: Recipient<SessionEvent>,
    pub reference: Option<String>,
}

/// A chat from a member.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Chat {
    pub socket_id: SocketId,
    pub content: MessageContent,
    pub reference: Option<String>,
}

/// A member leaves, by request or because its connection closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub socket_id: SocketId,
    /// Completed once the leave is recorded (or found moot), so a client
    /// told `left` also sees it gone over REST.
    pub done: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The members on every process, in join order (answers
/// `GET /api/rooms/{id}/members`).
#[derive(Message)]
#[rtype(result = "Vec<Member>")]
pub struct ListMembers;

/// The process is shutting down: finish the store writes already queued
/// (every chat accepted is stored and published, and its author answered),
/// then close every member's socket with 1001 and stop. Resolves once the
/// room has stopped. The manager removes this process's memberships from
/// the store in bulk afterwards.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseRoom;

/// Why a member is being removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    /// It asked to leave, or its socket closed: record it in the store.
    Gone,
    /// Its mailbox was full: close it as a slow consumer and record it.
    SlowConsumer,
    /// The store no longer lists it (another process reaped it, or it left
    /// elsewhere): only forget it here.
    Forget,
    /// This process's membership was lost while cut off from the cluster:
    /// close the socket so the client rejoins.
    Lost,
}

/// What a successful first join loads besides the membership.
struct Snapshot {
    history: Vec<Message>,
    members: Vec<MemberRecord>,
}

/// Why the store is read for messages after the last one delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CatchUp {
    /// The sequencer asked for a gap to be filled.
    Gap,
    /// The bus was down: other processes may have stored messages.
    Resync,
    /// A remote member departed: its process may have stored messages whose
    /// announcement this process missed (it shut down, or died).
    Departure,
}

type Outbox = Recipient<SessionEvent>;

/// One live room. See the module comment for the invariants.
pub struct RoomActor {
    room_id: RoomId,
    generation: u64,
    store: SharedStore,
    config: Arc<RoomConfig>,
    manager: Addr<RoomManager>,
    members: MemberList<Outbox>,
    history: RecentHistory,
    sequencer: Sequencer<Author>,
    gap_timer: Option<SpawnHandle>,
    pending: PendingChats,
    /// Fires when the next chat without an answer has waited
    /// `store_timeout` (see `watch_answers`).
    answer_timer: Option<SpawnHandle>,
    /// Batch steps queued and not yet started.
    batches_queued: usize,
    steps: StepQueue<RoomActor>,
    /// Leaves the store has not yet recorded (queued, running or waiting
    /// to be retried).
    unsynced_leaves: usize,
    /// Local members whose leave step is queued.
    leaving: HashSet<SocketId>,
    /// Bus events that arrived before the first join read the room's state;
    /// replayed after it (duplicates are harmless: ids and sockets dedupe).
    early_events: Vec<RoomEvent>,
    /// The store check after a remote member's departure.
    departure_check: Recheck,
    /// Shutting down: no new joins or chats; the room stops once the store
    /// writes queued before are done.
    closing: bool,
    /// Local members last added to the process's members gauge (see
    /// `report_members`).
    members_reported: usize,
}

impl RoomActor {
    /// A room actor for `room_id`; `generation` tells this actor apart from
    /// an earlier one for the same room in the manager's bookkeeping.
    pub fn new(
        room_id: RoomId,
        generation: u64,
        store: SharedStore,
        config: Arc<RoomConfig>,
        manager: Addr<RoomManager>,
    ) -> Self {
        RoomActor {
            room_id,
            generation,
            store,
            history: RecentHistory::new(config.history_on_join),
            sequencer: Sequencer::new(config.gap_timeout),
            pending: PendingChats::new(
                config.queue_max_messages,
                config.queue_max_bytes,
                config.store_timeout + ANSWER_GRACE,
            ),
            answer_timer: None,
            config,
            manager,
            members: MemberList::default(),
            gap_timer: None,
            batches_queued: 0,
            steps: StepQueue::default(),
            unsynced_leaves: 0,
            leaving: HashSet::new(),
            early_events: Vec::new(),
            departure_check: Recheck::default(),
            closing: false,
            members_reported: 0,
        }
    }
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Joins and bus events arrive here; a burst into a popular room must
        // not be refused by actix's default mailbox of 16.
        ctx.set_mailbox_capacity(4096);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Whatever this room added to the gauge goes with it.
        self.config
            .metrics
            .members
            .decrement(self.members_reported as f64);
        self.members_reported = 0;
        if let Some(bus) = &self.config.bus {
            bus.do_send(Unsubscribe {
                room_id: self.room_id,
            });
        }
        self.manager.do_send(RoomStopped {
            room_id: self.room_id,
            generation: self.generation,
        });
    }
}

impl HasSteps for RoomActor {
    fn steps(&mut self) -> &mut StepQueue<Self> {
        &mut self.steps
    }

    fn steps_done(&mut self, ctx: &mut Context<Self>) {
        self.stop_if_idle(ctx);
    }
}

// ---------------------------------------------------------------------------
// 1. A member joins.
// ---------------------------------------------------------------------------

impl Handler<Join> for RoomActor {
    type Result = Result<(), RoomClosing>;

    fn handle(&mut self, msg: Join, ctx: &mut Self::Context) -> Self::Result {
        if ctx.state() != ActorState::Running || self.closing {
            return Err(RoomClosing);
        }
        let step: Step<Self> = Box::new(move |act, ctx| act.join_step(msg, ctx));
        StepQueue::enqueue(self, step, ctx);
        Ok(())
    }
}

impl RoomActor {
    /// The store part of a join: on the room's first join, subscribe to the
    /// room's channel and only then read the room's state, so no event can
    /// fall between the two (an event from before the read is a duplicate,
    /// one after it is news); then the membership transaction.
    fn join_step(&mut self, msg: Join, ctx: &mut Context<Self>) -> StepFuture<Self> {
        // Rejoining is not leaving: a member that asks again for the room it
        // is in keeps its membership (a retried slow join must never delete
        // the room it is the only member of).
        if !self.leaving.contains(&msg.socket_id) {
            match self.members.rejoin(&msg.socket_id, msg.nickname.as_str()) {
                Rejoin::NotMember => {}
                Rejoin::Same(_) => return self.rejoin_step(msg),
                Rejoin::OtherNickname(member) => {
                    let error = ChatError::InvalidNickname(format!(
                        "nickname: you are in this room as \"{}\"; leave it first to join \
                         under another nickname",
                        member.nickname
                    ));
                    msg.outbox.do_send(SessionEvent::JoinFailed {
                        room_id: self.room_id,
                        frame: self.error_frame(&error, msg.reference.as_deref()),
                    });
                    return Box::pin(actix::fut::ready(()));
                }
            }
        }
        let store = self.store.clone();
        let room_id = self.room_id;
        let first = !self.sequencer.is_loaded();
        let subscribe = first
            .then(|| self.config.bus.clone())
            .flatten()
            .map(|bus| (bus, ctx.address().recipient()));
        // At least one message, so the next id is known even when no
        // history is sent.
        let history_limit = self.config.history_on_join.max(1);
        let new_member = NewMember {
            nickname: msg.nickname.clone(),
            socket_id: msg.socket_id.clone(),
            instance_id: self.config.instance_id.clone(),
            joined_at: domain::now(),
        };
        let fut = async move {
            let clustered = subscribe.is_some();
            if let Some((bus, room)) = subscribe {
                let _ = bus.send(Subscribe { room_id, room }).await;
            }
            let snapshot = if first {
                let history = store.recent_messages(room_id, history_limit).await?;
                let members = if clustered {
                    store.member_records(room_id).await?
                } else {
                    Vec::new() // alone: nobody else holds members
                };
                Some(Snapshot { history, members })
            } else {
                None
            };
            let outcome = store.add_member(room_id, &new_member).await?;
            Ok((snapshot, outcome))
        };
        Box::pin(
            fut.into_actor(self)
                .map(move |res, act, ctx| act.finish_join(msg, res, ctx)),
        )
    }

    /// A `join` from a member of this room under the same nickname: answered
    /// with `joined` as a first join would be (the room as the store has
    /// it, the members and the history as they are now), and nothing
    /// changes: no leave, no `memberJoined`, the same `joinedAt`.
    fn rejoin_step(&mut self, msg: Join) -> StepFuture<Self> {
        let store = self.store.clone();
        let room_id = self.room_id;
        let fut = async move { store.room(room_id).await };
        Box::pin(fut.into_actor(self).map(move |res, act, ctx| {
            let reference = msg.reference.as_deref();
            let room = match res {
                Ok(Some(room)) => room,
                Ok(None) => {
                    let error = ChatError::RoomNotFound(room_id);
                    msg.outbox.do_send(SessionEvent::JoinFailed {
                        room_id,
                        frame: act.error_frame(&error, reference),
                    });
                    return;
                }
                Err(e) => {
                    msg.outbox.do_send(SessionEvent::JoinFailed {
                        room_id,
                        frame: act.error_frame(&ChatError::from(e), reference),
                    });
                    return;
                }
            };
            // The membership may have been lost while the store was read.
            let Rejoin::Same(you) = act.members.rejoin(&msg.socket_id, msg.nickname.as_str())
            else {
                let error = ChatError::unavailable(format!("room {room_id}: membership ended"));
                msg.outbox.do_send(SessionEvent::JoinFailed {
                    room_id,
                    frame: act.error_frame(&error, reference),
                });
                return;
            };
            let members: Vec<&Member> = act.members.members().collect();
            let history: Vec<&Message> = act.history.iter().collect();
            let frame = ServerFrame::Joined {
                room: &room,
                you,
                members: &members,
                history: &history,
                reference,
            }
            .to_wire();
            let joined = SessionEvent::Joined {
                room_id,
                room: ctx.address(),
                frame,
            };
            if msg.outbox.try_send(joined).is_err() {
                act.remove_members(vec![(msg.socket_id, Removal::Gone)], ctx);
            }
        }))
    }

    /// Answers the join: the member goes into the list, the others hear
    /// `memberJoined`, the new member gets `joined` with the members and the
    /// history as they are at this instant.
    fn finish_join(
        &mut self,
        msg: Join,
        result: Result<(Option<Snapshot>, JoinOutcome), StoreError>,
        ctx: &mut Context<Self>,
    ) {
        let reference = msg.reference.as_deref();
        let outcome = match result {
            Ok((snapshot, outcome)) => {
                if let Some(snapshot) = snapshot {
                    self.load(snapshot, ctx);
                }
                outcome
            }
            Err(e) => {
                let error = ChatError::from(e);
                msg.outbox.do_send(SessionEvent::JoinFailed {
                    room_id: self.room_id,
                    frame: self.error_frame(&error, reference),
                });
                self.stop_if_idle(ctx);
                return;
            }
        };
        let announce = ServerFrame::MemberJoined {
            room_id: self.room_id,
            member: &outcome.member,
        }
        .to_wire();
        let mut removals = self.broadcast(&announce);
        self.members.insert(MemberEntry {
            member: outcome.member.clone(),
            join_seq: outcome.join_seq,
            socket_id: msg.socket_id.clone(),
            outbox: Some(msg.outbox.clone()),
        });
        self.publish(RoomEvent::Joined {
            socket_id: msg.socket_id.clone(),
            member: outcome.member.clone(),
            join_seq: outcome.join_seq,
        });
        let members: Vec<&Member> = self.members.members().collect();
        let history: Vec<&Message> = self.history.iter().collect();
        let frame = ServerFrame::Joined {
            room: &outcome.room,
            you: &outcome.member,
            members: &members,
            history: &history,
            reference,
        }
        .to_wire();
        let joined = SessionEvent::Joined {
            room_id: self.room_id,
            room: ctx.address(),
            frame,
        };
        if msg.outbox.try_send(joined).is_err() {
            removals.push((msg.socket_id, Removal::Gone));
        }
        self.remove_members(removals, ctx);
        self.stop_if_idle(ctx);
    }

    /// Takes in the state a first join read from the store: the recent
    /// history (which also fixes the next expected id) and the members on
    /// other processes; then the bus events that arrived meanwhile.
    fn load(&mut self, snapshot: Snapshot, ctx: &mut Context<Self>) {
        let newest = self.history.load(snapshot.history);
        self.sequencer.load(newest);
        for record in snapshot.members {
            self.add_remote(record, ctx);
        }
        for event in std::mem::take(&mut self.early_events) {
            self.on_remote(event, ctx);
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Chats are stored in batches, then published and delivered.
// ---------------------------------------------------------------------------

impl Handler<Chat> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Chat, ctx: &mut Self::Context) {
        // A chat from a session this room no longer lists (it was evicted,
        // or its leave overtook the chat) is dropped: only members speak.
        let Some(entry) = self.members.get(&msg.socket_id) else {
            return;
        };
        if self.closing {
            // Too late to be stored before the process goes: refused, and
            // the author hears it before its socket is closed.
            let author = Author {
                socket_id: msg.socket_id,
                reference: msg.reference,
            };
            let error = ChatError::unavailable("the server is shutting down; not stored");
            let refused = self.tell_author(&author, &error);
            self.remove_members(refused.into_iter().collect(), ctx);
            return;
        }
        let message = NewMessage {
            nickname: entry.member.nickname.clone(),
            content: msg.content.into_string(),
            sent_at: domain::now(),
        };
        let author = Author {
            socket_id: msg.socket_id,
            reference: msg.reference,
        };
        if let Err(full) = self.pending.push(message, author, Instant::now()) {
            // Refused, not dropped: the author hears it and may retry.
            self.config.metrics.rate_limited(RateLimit::RoomBusy);
            let error = ChatError::RateLimited(format!(
                "the room is busy ({} messages wait to be stored); retry shortly",
                full.waiting
            ));
            let refused = self.tell_author(&full.author, &error);
            self.remove_members(refused.into_iter().collect(), ctx);
            return;
        }
        self.flush(ctx);
        self.watch_answers(ctx);
    }
}

impl RoomActor {
    /// Queues a batch step for the chats waiting, unless one is queued: the
    /// step takes whatever waits when its turn comes, so chats that arrive
    /// while a batch is being stored go together in the next one.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.batches_queued > 0 || self.pending.is_empty() {
            return;
        }
        self.queue_batch(ctx);
    }

    /// Queues batch steps for every chat waiting now, however many batches
    /// that takes, so they all run before a step queued next. A member's
    /// leave is queued behind this: every chat it sent before leaving is
    /// stored (or refused) and answered while it is still a member.
    fn flush_all(&mut self, ctx: &mut Context<Self>) {
        while self.batches_queued * MAX_BATCH < self.pending.len() {
            self.queue_batch(ctx);
        }
    }

    fn queue_batch(&mut self, ctx: &mut Context<Self>) {
        self.batches_queued += 1;
        let step: Step<Self> = Box::new(|act, _| act.batch_step());
        StepQueue::enqueue(self, step, ctx);
    }

    fn batch_step(&mut self) -> StepFuture<Self> {
        self.batches_queued -= 1;
        if self.pending.is_empty() {
            // An earlier batch took these chats already.
            return Box::pin(actix::fut::ready(()));
        }
        let batch = self.pending.take_batch(MAX_BATCH);
        let store = self.store.clone();
        let room_id = self.room_id;
        // Awaited however long the store takes: its answer is the truth
        // (see `MessageWriter::append`), and the step queue stays blocked
        // meanwhile, so no read overlaps this batch (see `catch_up`). The
        // authors hear `pending` in time meanwhile (`answer_overdue`).
        let fut = async move { store.append_messages(room_id, &batch).await };
        Box::pin(fut.into_actor(self).map(move |res, act, ctx| {
            let authors = act.pending.finish_batch();
            match res {
                Ok(stored) => {
                    act.config
                        .metrics
                        .chats_stored
                        .increment(stored.len() as u64);
                    // Published after stored: a process that misses this
                    // finds the batch in the store when it fills the gap.
                    act.publish(RoomEvent::Messages {
                        messages: stored.clone(),
                    });
                    let authored = stored.into_iter().zip(authors.into_iter().map(Some));
                    act.accept(authored.collect(), ctx);
                }
                Err(e) => act.reject(authors, e, ctx),
            }
            act.flush(ctx);
        }))
    }

    /// Keeps the answer timer set to the next moment a chat without an
    /// answer will have waited `store_timeout`. One timer per room: the
    /// deadlines come in arrival order and only move later as chats are
    /// answered, so a timer already set fires no later than needed (early
    /// at worst, and then it sets itself again).
    fn watch_answers(&mut self, ctx: &mut Context<Self>) {
        if self.answer_timer.is_some() {
            return;
        }
        let Some(deadline) = self.pending.next_deadline() else {
            return;
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        self.answer_timer = Some(ctx.run_later(wait, |act, ctx| {
            act.answer_timer = None;
            act.answer_overdue(ctx);
            act.watch_answers(ctx);
        }));
    }

    /// Gives every chat that has waited `store_timeout` without an answer a
    /// true first answer (see `pending.rs`): `pending` to the authors of
    /// the batch the store has not answered, `unavailable` to those waiting
    /// behind it, which are taken out of the queue and never stored.
    fn answer_overdue(&mut self, ctx: &mut Context<Self>) {
        let due = self.pending.overdue(Instant::now());
        let mut removals = Vec::new();
        if !due.pending.is_empty() {
            log::warn!(
                "room {}: the store has not confirmed {} chats within {} ms; \
                 their authors are told pending",
                self.room_id,
                due.pending.len(),
                self.config.store_timeout.as_millis()
            );
        }
        for author in &due.pending {
            if let Some(outbox) = self.members.outbox(&author.socket_id) {
                let wire = pending_frame(author.reference.as_deref());
                removals.extend(self.offer(&author.socket_id, outbox, wire));
            }
        }
        if !due.refused.is_empty() {
            let error = ChatError::unavailable(format!(
                "not stored: the room's earlier messages have waited more than {} ms \
                 for the database; retry shortly",
                self.config.store_timeout.as_millis()
            ));
            log::warn!(
                "room {}: {} chats refused unstored: {}",
                self.room_id,
                due.refused.len(),
                Chain(&error)
            );
            removals.extend(
                due.refused
                    .iter()
                    .filter_map(|author| self.tell_author(author, &error)),
            );
        }
        self.remove_members(removals, ctx);
        self.stop_if_idle(ctx);
    }

    /// Tells each author of a batch the store refused why.
    fn reject(&mut self, authors: Vec<Author>, e: StoreError, ctx: &mut Context<Self>) {
        let error = ChatError::from(e);
        log::warn!(
            room = self.room_id.get();
            "room {}: {} chats not stored: {}",
            self.room_id,
            authors.len(),
            Chain(&error)
        );
        let removals = authors
            .iter()
            .filter_map(|author| self.tell_author(author, &error))
            .collect();
        self.remove_members(removals, ctx);
        self.stop_if_idle(ctx);
    }

    /// Answers an author whose chat was not stored with `error` (and its
    /// `ref`), if it is still a local member; returns it if its mailbox
    /// refused.
    fn tell_author(&self, author: &Author, error: &ChatError) -> Option<(SocketId, Removal)> {
        let outbox = self.members.outbox(&author.socket_id)?;
        let wire = self.error_frame(error, author.reference.as_deref());
        self.offer(&author.socket_id, outbox, wire)
    }

    /// The one entrance for messages to be delivered, stored here or by
    /// other processes: the sequencer releases what can go out in order,
    /// and the gap timer follows its deadline.
    fn accept(&mut self, messages: Vec<(Message, Option<Author>)>, ctx: &mut Context<Self>) {
        let ready = self.sequencer.accept(messages, Instant::now());
        if !ready.is_empty() {
            self.deliver(ready, ctx);
        }
        self.watch_gap(ctx);
    }

    /// Fans delivered messages out to the local members (framed once, see
    /// `fanout.rs`) and records them in the recent history.
    fn deliver(&mut self, ready: Vec<(Message, Option<Author>)>, ctx: &mut Context<Self>) {
        // Counted once per fan-out, not per socket (see `telemetry`), and
        // before any member can see the chats.
        let chats = ready.len() as u64;
        self.config.metrics.chats_delivered.increment(chats);
        let mut fanout = Fanout::frame(&ready);
        let mut removals = Vec::new();
        let mut handed = 0u64;
        for (socket_id, outbox) in self.members.local() {
            let wire = fanout.wire_for(socket_id);
            match self.offer(socket_id, outbox, wire) {
                None => handed += 1,
                Some(removal) => removals.push(removal),
            }
        }
        self.config.metrics.deliveries.increment(chats * handed);
        for (message, _) in ready {
            self.history.push(message);
        }
        self.remove_members(removals, ctx);
        self.stop_if_idle(ctx);
    }
}

// ---------------------------------------------------------------------------
// 3. Gaps are filled from the store.
// ---------------------------------------------------------------------------

impl RoomActor {
    /// Keeps the gap timer in step with the sequencer's deadline.
    fn watch_gap(&mut self, ctx: &mut Context<Self>) {
        match self.sequencer.gap_deadline() {
            Some(deadline) if self.gap_timer.is_none() => {
                let wait = deadline.saturating_duration_since(Instant::now());
                self.gap_timer = Some(ctx.run_later(wait, |act, ctx| {
                    act.gap_timer = None;
                    if let Some(after) = act.sequencer.take_fill(Instant::now()) {
                        act.config.metrics.gap_fills.increment(1);
                        log::debug!(
                            room = act.room_id.get();
                            "room {}: {} messages wait for id {}; reading it from the store",
                            act.room_id,
                            act.sequencer.waiting(),
                            after.next()
                        );
                        act.catch_up(after, CatchUp::Gap, ctx);
                    }
                    act.watch_gap(ctx);
                }));
            }
            Some(_) => {}
            None => {
                if let Some(timer) = self.gap_timer.take() {
                    ctx.cancel_future(timer);
                }
            }
        }
    }

    /// Reads from the store every message after `after` and feeds it through
    /// the sequencer, a page at a time.
    ///
    /// Invariant: a read never overlaps a batch of this room being stored.
    /// A read that saw a local batch's rows before the batch's own answer
    /// would deliver them without their authors, the sequencer would then
    /// drop the authored copies as duplicates, and the authors would never
    /// get their echo. So the read is a step: it runs after the store writes
    /// queued before it, and the batches queued after it wait for it (one
    /// indexed read).
    fn catch_up(&mut self, after: MessageSeq, why: CatchUp, ctx: &mut Context<Self>) {
        let step: Step<Self> = Box::new(move |act, _| act.catch_up_step(after, why));
        StepQueue::enqueue(self, step, ctx);
    }

    fn catch_up_step(&mut self, after: MessageSeq, why: CatchUp) -> StepFuture<Self> {
        let store = self.store.clone();
        let room_id = self.room_id;
        let fut = async move { store.messages_after(room_id, after, FILL_PAGE).await };
        Box::pin(fut.into_actor(self).map(move |res, act, ctx| {
            let more = match res {
                Ok(messages) => {
                    let full_page = messages.len() == FILL_PAGE;
                    act.accept(messages.into_iter().map(|m| (m, None)).collect(), ctx);
                    full_page
                }
                Err(StoreError::RoomNotFound(_)) => false,
                Err(e) => {
                    log::warn!(
                        room = room_id.get();
                        "room {room_id}: catching up ({why:?}) failed: {}",
                        Chain(&e)
                    );
                    false
                }
            };
            match (more, act.sequencer.last_delivered()) {
                (true, Some(last)) => act.catch_up(last, why, ctx),
                _ if why == CatchUp::Gap => {
                    act.sequencer.fill_finished(Instant::now());
                    act.watch_gap(ctx);
                }
                _ if why == CatchUp::Departure && act.departure_check.finished() => {
                    act.start_departure_check(ctx);
                }
                _ => {}
            }
        }))
    }
}

// ---------------------------------------------------------------------------
// 4. What other processes announce on the bus.
// ---------------------------------------------------------------------------

impl Handler<BusSignal> for RoomActor {
    type Result = ();

    fn handle(&mut self, signal: BusSignal, ctx: &mut Self::Context) {
        let loaded = self.sequencer.is_loaded();
        match signal {
            BusSignal::Event(event) if !loaded => self.early_events.push(event),
            BusSignal::Event(event) => self.on_remote(event, ctx),
            // Not loaded yet: the first join's read is the resync.
            BusSignal::Resync if !loaded => {}
            BusSignal::Resync => self.resync(ctx),
        }
    }
}

impl RoomActor {
    fn on_remote(&mut self, event: RoomEvent, ctx: &mut Context<Self>) {
        match event {
            // Remote batches enter at the sequencer, like local ones.
            RoomEvent::Messages { messages } => {
                self.accept(messages.into_iter().map(|m| (m, None)).collect(), ctx)
            }
            RoomEvent::Joined {
                socket_id,
                member,
                join_seq,
            } => self.add_remote(
                MemberRecord {
                    member,
                    socket_id,
                    join_seq,
                },
                ctx,
            ),
            RoomEvent::Left { socket_id, .. } => {
                // A local membership announced as gone was reaped while this
                // process was unreachable: the store no longer has it.
                let why = if self.members.is_local(&socket_id) {
                    Removal::Lost
                } else {
                    Removal::Forget
                };
                self.remove_members(vec![(socket_id, why)], ctx);
                self.stop_if_idle(ctx);
            }
            // The bridge turns hints into `BusSignal::Resync`; one that
            // gets here means the same.
            RoomEvent::Resync => self.resync(ctx),
        }
    }

    /// Adds a member announced by the store or another process, replacing an
    /// older membership of the same nickname (nicknames are unique in the
    /// store, so a newer membership means the older one ended).
    fn add_remote(&mut self, record: MemberRecord, ctx: &mut Context<Self>) {
        if self.members.contains(&record.socket_id) {
            return;
        }
        if let Some(old) = self.members.remote_named(&record.member.nickname) {
            let old = old.clone();
            self.remove_members(vec![(old, Removal::Forget)], ctx);
        }
        let frame = ServerFrame::MemberJoined {
            room_id: self.room_id,
            member: &record.member,
        }
        .to_wire();
        let refused = self.broadcast(&frame);
        self.members.insert(MemberEntry::remote(record));
        self.remove_members(refused, ctx);
    }

    /// After a bus outage: deliver what other processes stored meanwhile and
    /// bring the member list in line with the store.
    fn resync(&mut self, ctx: &mut Context<Self>) {
        if let Some(last) = self.sequencer.last_delivered() {
            self.catch_up(last, CatchUp::Resync, ctx);
        }
        let store = self.store.clone();
        let room_id = self.room_id;
        let step: Step<Self> = Box::new(move |act, _| {
            let fut = async move { store.member_records(room_id).await };
            Box::pin(
                fut.into_actor(act)
                    .map(|res, act, ctx| act.reconcile(res, ctx)),
            )
        });
        StepQueue::enqueue(self, step, ctx);
    }

    /// Brings the member list in line with the store's records. A local
    /// member the store no longer has was reaped while this process was cut
    /// off: its socket is closed so the client rejoins.
    fn reconcile(&mut self, res: Result<Vec<MemberRecord>, StoreError>, ctx: &mut Context<Self>) {
        let records = match res {
            Ok(records) => records,
            Err(StoreError::RoomNotFound(_)) => Vec::new(),
            Err(e) => {
                log::warn!(
                    room = self.room_id.get();
                    "room {}: member resync failed: {}",
                    self.room_id,
                    Chain(&e)
                );
                return;
            }
        };
        let gone: Vec<(SocketId, Removal)> = self
            .members
            .entries()
            .filter(|m| !records.iter().any(|r| r.socket_id == m.socket_id))
            .map(|m| {
                let why = if m.outbox.is_some() {
                    Removal::Lost
                } else {
                    Removal::Forget
                };
                (m.socket_id.clone(), why)
            })
            .collect();
        self.remove_members(gone, ctx);
        for record in records {
            self.add_remote(record, ctx);
        }
        self.stop_if_idle(ctx);
    }
}

// ---------------------------------------------------------------------------
// 5. Members leave.
// ---------------------------------------------------------------------------

impl Handler<Leave> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Self::Context) {
        let local = self.members.is_local(&msg.socket_id);
        if local {
            self.remove_members(vec![(msg.socket_id, Removal::Gone)], ctx);
        }
        if let Some(done) = msg.done {
            // Answered once the leave step (queued just above, or earlier)
            // has run: steps run in order.
            let step: Step<Self> = Box::new(move |_, _| {
                let _ = done.send(());
                Box::pin(actix::fut::ready(()))
            });
            StepQueue::enqueue(self, step, ctx);
        }
        self.stop_if_idle(ctx);
    }
}

impl RoomActor {
    /// Removes members. A local member that left, disconnected or reads
    /// too slowly leaves through a step (`store_leave`), in order with the
    /// room's other store writes, so a `joined` snapshot never lists a member
    /// the store has already dropped or misses one it still counts. Members
    /// the store no longer has (`Forget`, `Lost`) are dropped at once.
    /// Callers that may have removed the last local member call
    /// `stop_if_idle` afterwards (not here: a first join removes stale remote
    /// entries before its own member is in the list).
    fn remove_members(&mut self, queue: Vec<(SocketId, Removal)>, ctx: &mut Context<Self>) {
        for (socket_id, why) in queue {
            match why {
                Removal::Gone | Removal::SlowConsumer => {
                    let Some(outbox) = self.members.outbox(&socket_id) else {
                        continue;
                    };
                    if why == Removal::SlowConsumer {
                        log::info!(
                            room = self.room_id.get(),
                            socket = socket_id.as_str();
                            "room {}: closing slow consumer {socket_id}",
                            self.room_id
                        );
                        self.config.metrics.slow_consumer_closes.increment(1);
                        outbox.do_send(SessionEvent::Evicted {
                            room_id: self.room_id,
                            code: CloseCode::Policy,
                            reason: "slow consumer: not reading fast enough",
                        });
                    }
                    if self.leaving.insert(socket_id.clone()) {
                        self.unsynced_leaves += 1;
                        self.flush_all(ctx);
                        let step: Step<Self> =
                            Box::new(move |act, _| act.store_leave(socket_id, FIRST_LEAVE_RETRY));
                        StepQueue::enqueue(self, step, ctx);
                    }
                }
                Removal::Forget | Removal::Lost => self.drop_entry(&socket_id, why, ctx),
            }
        }
    }

    /// Records a local member's leave in the store, then drops it from the
    /// list and tells the others, so that whoever sees `memberLeft` also
    /// sees the new count over REST. Retried with backoff while the store is
    /// unavailable, because a lost leave would leave the count too high (the
    /// member is dropped from the list on the first attempt either way: its
    /// socket is gone). `unsynced_leaves` keeps the actor alive until every
    /// leave is recorded.
    fn store_leave(&mut self, socket_id: SocketId, backoff: Duration) -> StepFuture<Self> {
        let store = self.store.clone();
        let room_id = self.room_id;
        let sid = socket_id.clone();
        let fut = async move { store.remove_member(room_id, &sid).await };
        Box::pin(fut.into_actor(self).map(move |res, act, ctx| {
            if act.leaving.remove(&socket_id) {
                act.drop_entry(&socket_id, Removal::Gone, ctx);
            }
            match res {
                Ok(outcome) => {
                    act.unsynced_leaves -= 1;
                    let nickname = match outcome {
                        LeaveOutcome::Left { nickname, .. } => Some(nickname),
                        LeaveOutcome::RoomDeleted { nickname } => {
                            log::info!(
                                room = room_id.get();
                                "room {room_id}: last member left, room deleted"
                            );
                            Some(nickname)
                        }
                        LeaveOutcome::NotMember => None,
                    };
                    if let Some(nickname) = nickname {
                        act.publish(RoomEvent::Left {
                            socket_id,
                            nickname,
                        });
                    }
                }
                Err(e) => {
                    log::warn!(
                        room = room_id.get(),
                        socket = socket_id.as_str();
                        "room {room_id}: leave of {socket_id} not recorded, retrying: {}",
                        Chain(&e)
                    );
                    ctx.run_later(backoff, move |act, ctx| {
                        let next = (backoff * 2).min(MAX_LEAVE_RETRY);
                        let retry: Step<Self> =
                            Box::new(move |act, _| act.store_leave(socket_id, next));
                        StepQueue::enqueue(act, retry, ctx);
                    });
                }
            }
        }))
    }

    /// Takes a member out of the list (if listed) and tells the local
    /// members.
    fn drop_entry(&mut self, socket_id: &SocketId, why: Removal, ctx: &mut Context<Self>) {
        let Some(gone) = self.members.remove(socket_id) else {
            return;
        };
        if gone.outbox.is_none() {
            self.check_after_departure(ctx);
        }
        if let (Some(outbox), Removal::Lost) = (&gone.outbox, why) {
            outbox.do_send(SessionEvent::Evicted {
                room_id: self.room_id,
                code: CloseCode::Restart,
                reason: "membership lost while the cluster was unreachable; rejoin",
            });
        }
        let frame = ServerFrame::MemberLeft {
            room_id: self.room_id,
            nickname: &gone.member.nickname,
        }
        .to_wire();
        let refused = self.broadcast(&frame);
        self.remove_members(refused, ctx);
    }

    /// A remote member departed (left, closed, or its process shut down or
    /// was reaped). A batch its process stored may never have reached this
    /// process over the bus (published into a bus that was going down, or
    /// lost with the process), and in a room where nobody posts again no
    /// later message would reveal the gap. So the store is read once for
    /// anything after the last id delivered here.
    ///
    /// Load: one indexed read of the room's messages after the last id
    /// (normally empty) per departure, coalesced per room to at most one
    /// read running and one more queued (see `recheck.rs`), so a process
    /// leaving with many members in a room costs that room two reads.
    fn check_after_departure(&mut self, ctx: &mut Context<Self>) {
        if self.sequencer.is_loaded() && self.departure_check.request() {
            self.start_departure_check(ctx);
        }
    }

    fn start_departure_check(&mut self, ctx: &mut Context<Self>) {
        match self.sequencer.last_delivered() {
            Some(last) => self.catch_up(last, CatchUp::Departure, ctx),
            None => {
                self.departure_check.finished();
            }
        }
    }

    /// Stops once nothing is left to do here: no local member, no store
    /// write queued or running, no chat waiting, no leave waiting to be
    /// recorded. Joins that reach the mailbox after this point find it
    /// closed and ask the manager for a fresh actor.
    fn stop_if_idle(&mut self, ctx: &mut Context<Self>) {
        self.report_members();
        if !self.members.has_local()
            && self.steps.is_idle()
            && self.pending.is_empty()
            && self.unsynced_leaves == 0
        {
            ctx.stop();
        }
    }
}

// ---------------------------------------------------------------------------
// 6. Reads and shutdown.
// ---------------------------------------------------------------------------

impl Handler<ListMembers> for RoomActor {
    type Result = ResponseFuture<Vec<Member>>;

    /// Answered as a step, once the store writes queued before it are done:
    /// a member whose leave is being recorded (maybe deleting the room) is
    /// not listed after the store has dropped it, nor dropped before.
    fn handle(&mut self, _: ListMembers, ctx: &mut Self::Context) -> Self::Result {
        let (answer, listed) = tokio::sync::oneshot::channel();
        let step: Step<Self> = Box::new(move |act, _| {
            let _ = answer.send(act.members.members().cloned().collect());
            Box::pin(actix::fut::ready(()))
        });
        StepQueue::enqueue(self, step, ctx);
        // A room closed for shutdown drops the step: nobody is listed here.
        Box::pin(async move { listed.await.unwrap_or_default() })
    }
}

impl Handler<CloseRoom> for RoomActor {
    type Result = ResponseFuture<()>;

    /// Everything accepted before the close is finished first: every chat
    /// waiting goes into a batch step, and the close is a step behind them,
    /// so each accepted chat is stored and published (or refused), and its
    /// author gets the echo (or the error) before the 1001. Chats and joins
    /// arriving from now on are refused. Bounded by the steps queued, each
    /// bounded by `STORE_TIMEOUT_MS`; the manager also bounds its wait.
    fn handle(&mut self, _: CloseRoom, ctx: &mut Self::Context) -> Self::Result {
        let (closed, wait) = tokio::sync::oneshot::channel::<()>();
        self.closing = true;
        self.flush_all(ctx);
        let step: Step<Self> = Box::new(move |act, _| {
            // A batch stored here may wait behind an id another process
            // stored and this one has not received yet: read the gap now
            // rather than after the gap timeout, so those echoes go out.
            let after = (act.sequencer.waiting() > 0)
                .then(|| act.sequencer.last_delivered())
                .flatten();
            let (store, room_id) = (act.store.clone(), act.room_id);
            let fill = async move {
                let mut read = Vec::new();
                let Some(mut after) = after else {
                    return read;
                };
                // Bounded: a few pages, each within the store timeout.
                for _ in 0..8 {
                    match store.messages_after(room_id, after, FILL_PAGE).await {
                        Ok(page) => {
                            let full = page.len() == FILL_PAGE;
                            after = page.last().map_or(after, |m| m.id);
                            read.extend(page);
                            if !full {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
                read
            };
            Box::pin(fill.into_actor(act).map(move |read, act, ctx| {
                act.accept(read.into_iter().map(|m| (m, None)).collect(), ctx);
                act.close_members();
                ctx.stop();
                let _ = closed.send(());
            }))
        });
        StepQueue::enqueue(self, step, ctx);
        // A room that stops before its close step runs (its last member
        // left meanwhile) drops `closed`: that ends the wait too.
        Box::pin(async move {
            let _ = wait.await;
        })
    }
}

impl RoomActor {
    /// The last act of a closing room: a chat stored here that still waits
    /// behind a gap (the store could not be read) is stored, so its author
    /// gets its echo even out of order; then every local member is told the
    /// server is going away (1001).
    fn close_members(&mut self) {
        for (message, author) in self.sequencer.take_waiting() {
            let Some(author) = author else { continue };
            if let Some(outbox) = self.members.outbox(&author.socket_id) {
                let wire = ServerFrame::Message {
                    message: &message,
                    reference: author.reference.as_deref(),
                }
                .to_wire();
                let _ = outbox.try_send(SessionEvent::Frames {
                    room_id: self.room_id,
                    wire,
                });
            }
        }
        for m in self.members.drain() {
            if let Some(outbox) = m.outbox {
                outbox.do_send(SessionEvent::ServerShutdown);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Sending.
// ---------------------------------------------------------------------------

impl RoomActor {
    fn publish(&self, event: RoomEvent) {
        if let Some(bus) = &self.config.bus {
            bus.do_send(Publish {
                room_id: self.room_id,
                event,
            });
        }
    }

    /// Offers wire bytes to a local member without waiting; returns the
    /// member if its mailbox refused.
    fn offer(
        &self,
        socket_id: &SocketId,
        outbox: &Outbox,
        wire: Bytes,
    ) -> Option<(SocketId, Removal)> {
        let event = SessionEvent::Frames {
            room_id: self.room_id,
            wire,
        };
        match outbox.try_send(event) {
            Ok(()) => None,
            Err(SendError::Full(_)) => Some((socket_id.clone(), Removal::SlowConsumer)),
            Err(SendError::Closed(_)) => Some((socket_id.clone(), Removal::Gone)),
        }
    }

    /// The `error` frame answering `error`, counted by code.
    fn error_frame(&self, error: &ChatError, reference: Option<&str>) -> Bytes {
        self.config.metrics.error(error.code());
        error_frame(error, reference)
    }

    /// Brings the process's members gauge in line with this room's local
    /// members (called wherever the room may stop, which every change of
    /// the member list reaches; `stopped` takes the rest back).
    fn report_members(&mut self) {
        let now = self.members.local_count();
        if now != self.members_reported {
            let members = &self.config.metrics.members;
            members.increment(now as f64 - self.members_reported as f64);
            self.members_reported = now;
        }
    }

    /// Sends `wire` to every local member; returns those whose mailbox
    /// refused it.
    fn broadcast(&self, wire: &Bytes) -> Vec<(SocketId, Removal)> {
        self.members
            .local()
            .filter_map(|(socket_id, outbox)| self.offer(socket_id, outbox, wire.clone()))
            .collect()
    }
}
