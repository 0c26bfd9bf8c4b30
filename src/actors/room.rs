//! `RoomActor`: one per room with members on this process. It owns the
//! room's live state here (the member list, local and remote, in join order;
//! the recent-history ring; chats being stored; messages waiting for an
//! earlier id) and is this process's only writer of the room's memberships
//! and messages.
//!
//! Invariants, enforced here:
//! - **One store write at a time.** Joins, leaves and chat batches are
//!   steps in one queue (`steps`), run one after another. The actor keeps
//!   handling messages meanwhile (no `ctx.wait`, which would also freeze the
//!   step in flight, and with it the room row lock a MySQL transaction holds),
//!   but the store sees this room's writes from this process strictly in
//!   order: a leave is recorded before a later join of the same nickname, and
//!   the member list, the count and the `joined` snapshot never disagree.
//! - **Stored before delivered.** Chats queue in `pending_*` and are stored
//!   as one batch per step; a message is fanned out only after the store has
//!   given it its id.
//! - **Every id, in order, once.** Ids are a per-room sequence, so every
//!   message (stored here, or announced by another process over the bus)
//!   passes through `accept`: ids below `next_id` are duplicates and dropped,
//!   ids above it wait in `reorder` until the gap closes. A gap that does not
//!   close within `GAP_TIMEOUT_MS` is filled from the store (an id is only
//!   visible once every lower id of the room is committed, so the store can
//!   always fill it).
//! - **History then live, nothing twice.** `joined.history` is the ring of
//!   messages this actor has delivered, taken at the instant the member is
//!   added; every later message reaches the member live.
//! - **Bounded fan-out.** Each member gets at most one mailbox item per
//!   batch, sent with `try_send`; a session whose mailbox is full is a slow
//!   consumer and is removed and closed, so one stuck client costs the others
//!   nothing and the server's memory stays bounded.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::{Bytes, BytesMut};

use super::redis_bridge::{BusSignal, Publish, RedisBridge, RoomEvent, Subscribe, Unsubscribe};
use super::room_manager::{RoomManager, RoomStopped};
use super::session::SessionEvent;
use crate::domain::{
    self, Member, Message, MessageContent, MessageSeq, Nickname, RoomId, SocketId,
};
use crate::error::ChatError;
use crate::protocol::{error_frame, ServerFrame};
use crate::store::{
    JoinOutcome, LeaveOutcome, MemberRecord, NewMember, NewMessage, SharedStore, StoreError,
};

/// Most chats stored in one store call; bounds a batch's latency.
const MAX_BATCH: usize = 256;
/// Most messages read from the store in one gap fill or resync page.
const FILL_PAGE: usize = 500;
/// Longest pause between retries of a leave the store could not record.
const MAX_LEAVE_RETRY: Duration = Duration::from_secs(5);

/// Fixed per-process settings every room needs.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    pub instance_id: String,
    pub history_on_join: usize,
    pub gap_timeout: Duration,
    /// The cluster bus, when there is one.
    pub bus: Option<Addr<RedisBridge>>,
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

/// The process is shutting down: close every member's socket and stop. The
/// manager removes this process's memberships from the store in bulk.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseRoom;

/// A member of the room. `outbox` is `None` for members connected to other
/// processes, which this actor only lists.
struct MemberEntry {
    member: Member,
    /// Place in the store's join order: the list is kept sorted by it, so
    /// every process lists a room's members in the same order.
    join_seq: u64,
    socket_id: SocketId,
    outbox: Option<Recipient<SessionEvent>>,
}

/// Who sent a message stored by this actor, to echo the `ref` back.
struct Sender {
    socket_id: SocketId,
    reference: Option<String>,
}

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

/// One live room. See the module comment for the invariants.
pub struct RoomActor {
    room_id: RoomId,
    generation: u64,
    store: SharedStore,
    config: Arc<RoomConfig>,
    manager: Addr<RoomManager>,
    /// Members in join order, local and remote.
    members: Vec<MemberEntry>,
    /// The last `history_on_join` messages delivered, oldest first.
    history: VecDeque<Message>,
    /// The id the next delivered message must have; `None` until the first
    /// join loaded the room's state.
    next_id: Option<MessageSeq>,
    /// Messages that arrived ahead of `next_id`, with their local sender.
    reorder: BTreeMap<MessageSeq, (Message, Option<Sender>)>,
    gap_timer: Option<SpawnHandle>,
    /// Chats waiting to be stored.
    pending_senders: Vec<Sender>,
    pending_messages: Vec<NewMessage>,
    /// A batch step is queued or running.
    batch_queued: bool,
    /// Store writes waiting their turn, and whether one is running.
    steps: VecDeque<StoreStep>,
    step_running: bool,
    /// Leaves the store has not yet recorded (queued, running or waiting
    /// to be retried).
    unsynced_leaves: usize,
    /// Local members whose leave step is queued.
    leaving: std::collections::HashSet<SocketId>,
    /// Bus events that arrived before the first join read the room's state;
    /// replayed after it (duplicates are harmless: ids and sockets dedupe).
    early_events: Vec<RoomEvent>,
}

/// One store write of the room, built when its turn comes (so it sees the
/// state left by the steps before it).
type StoreStep = Box<dyn FnOnce(&mut RoomActor, &mut Context<RoomActor>) -> StepFuture>;
type StepFuture = actix::fut::LocalBoxActorFuture<RoomActor, ()>;

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
            config,
            manager,
            members: Vec::new(),
            history: VecDeque::new(),
            next_id: None,
            reorder: BTreeMap::new(),
            gap_timer: None,
            pending_senders: Vec::new(),
            pending_messages: Vec::new(),
            batch_queued: false,
            steps: VecDeque::new(),
            step_running: false,
            unsynced_leaves: 0,
            early_events: Vec::new(),
            leaving: std::collections::HashSet::new(),
        }
    }

    fn position(&self, socket_id: &SocketId) -> Option<usize> {
        self.members.iter().position(|m| m.socket_id == *socket_id)
    }

    fn local(&self) -> impl Iterator<Item = (&MemberEntry, &Recipient<SessionEvent>)> {
        self.members
            .iter()
            .filter_map(|m| m.outbox.as_ref().map(|o| (m, o)))
    }

    fn publish(&self, event: RoomEvent) {
        if let Some(bus) = &self.config.bus {
            bus.do_send(Publish {
                room_id: self.room_id,
                event,
            });
        }
    }

    /// Offers one batch of frames (wire bytes) to a local member without
    /// waiting; returns the member if its mailbox refused.
    fn offer(
        &self,
        socket_id: &SocketId,
        outbox: &Recipient<SessionEvent>,
        wire: Bytes,
    ) -> Option<(SocketId, Removal)> {
        let event = SessionEvent::Frames {
            room_id: self.room_id,
            wire,
        };
        match outbox.try_send(event) {
            Ok(()) => None,
            Err(SendError::Full(_)) => Some((socket_id.to_owned(), Removal::SlowConsumer)),
            Err(SendError::Closed(_)) => Some((socket_id.to_owned(), Removal::Gone)),
        }
    }

    /// Sends `frame` to every local member; returns those whose mailbox
    /// refused it.
    fn broadcast(&self, wire: &Bytes) -> Vec<(SocketId, Removal)> {
        self.local()
            .filter_map(|(m, outbox)| self.offer(&m.socket_id, outbox, wire.clone()))
            .collect()
    }

    /// Puts a member in its place in the join order (events from other
    /// processes can arrive after a later local join).
    fn insert_member(&mut self, entry: MemberEntry) {
        let at = self
            .members
            .partition_point(|m| m.join_seq <= entry.join_seq);
        self.members.insert(at, entry);
    }

    /// Adds a member announced by the store or another process, replacing an
    /// older membership of the same nickname (nicknames are unique in the
    /// store, so a newer membership means the older one ended).
    fn add_remote(&mut self, record: MemberRecord, ctx: &mut Context<Self>) {
        if self.position(&record.socket_id).is_some() {
            return;
        }
        let mut removals = Vec::new();
        if let Some(old) = self
            .members
            .iter()
            .find(|m| m.member.nickname == record.member.nickname && m.outbox.is_none())
        {
            removals.push((old.socket_id.clone(), Removal::Forget));
        }
        self.remove_members(removals, ctx);
        let frame = ServerFrame::MemberJoined {
            room_id: self.room_id,
            member: &record.member,
        }
        .to_wire();
        let refused = self.broadcast(&frame);
        self.insert_member(MemberEntry {
            member: record.member,
            join_seq: record.join_seq,
            socket_id: record.socket_id,
            outbox: None,
        });
        self.remove_members(refused, ctx);
    }

    /// Removes members. A local member that left, disconnected or reads
    /// too slowly leaves through a step (`leave_step`), in order with the
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
                    let local = self
                        .position(&socket_id)
                        .and_then(|i| self.members[i].outbox.as_ref());
                    let Some(outbox) = local else {
                        continue;
                    };
                    if why == Removal::SlowConsumer {
                        log::info!("room {}: closing slow consumer {socket_id}", self.room_id);
                        outbox.do_send(SessionEvent::Evicted {
                            room_id: self.room_id,
                            code: crate::ws::CloseCode::Policy,
                            reason: "slow consumer: not reading fast enough",
                        });
                    }
                    if self.leaving.insert(socket_id.clone()) {
                        self.unsynced_leaves += 1;
                        self.leave_step(socket_id, ctx);
                    }
                }
                Removal::Forget | Removal::Lost => self.drop_entry(&socket_id, why, ctx),
            }
        }
    }

    /// Takes a member out of the list (if listed) and tells the local
    /// members.
    fn drop_entry(&mut self, socket_id: &SocketId, why: Removal, ctx: &mut Context<Self>) {
        let Some(index) = self.position(socket_id) else {
            return;
        };
        let gone = self.members.remove(index);
        if let (Some(outbox), Removal::Lost) = (&gone.outbox, why) {
            outbox.do_send(SessionEvent::Evicted {
                room_id: self.room_id,
                code: crate::ws::CloseCode::Restart,
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

    /// Queues a store write behind the ones already waiting.
    fn enqueue_step(&mut self, step: StoreStep, ctx: &mut Context<Self>) {
        self.steps.push_back(step);
        self.run_next_step(ctx);
    }

    fn run_next_step(&mut self, ctx: &mut Context<Self>) {
        if self.step_running {
            return;
        }
        let Some(step) = self.steps.pop_front() else {
            self.stop_if_idle(ctx);
            return;
        };
        self.step_running = true;
        let fut = step(self, ctx);
        ctx.spawn(fut.map(|(), act, ctx| {
            act.step_running = false;
            act.run_next_step(ctx);
        }));
    }

    /// A local member's leave, as a step: record it in the store, then drop
    /// it from the list and tell the others, so that whoever sees
    /// `memberLeft` also sees the new count over REST.
    fn leave_step(&mut self, socket_id: SocketId, ctx: &mut Context<Self>) {
        let step: StoreStep = Box::new(move |act: &mut RoomActor, _: &mut Context<RoomActor>| {
            act.store_leave(socket_id, Duration::from_millis(100))
        });
        self.enqueue_step(step, ctx);
    }

    /// Records a leave in the store, retried with backoff while the store is
    /// unavailable, because a lost leave would leave the count too high (the
    /// member is dropped from the list on the first attempt either way: its
    /// socket is gone). `unsynced_leaves` keeps the actor alive until every
    /// leave is recorded.
    fn store_leave(&mut self, socket_id: SocketId, backoff: Duration) -> StepFuture {
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
                    if matches!(outcome, LeaveOutcome::RoomDeleted { .. }) {
                        log::info!("room {room_id}: last member left, room deleted");
                    }
                    let nickname = match outcome {
                        LeaveOutcome::Left { nickname, .. }
                        | LeaveOutcome::RoomDeleted { nickname } => Some(nickname),
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
                    log::warn!("room {room_id}: leave of {socket_id} not recorded, retrying: {e}");
                    ctx.run_later(backoff, move |act, ctx| {
                        let next = (backoff * 2).min(MAX_LEAVE_RETRY);
                        let retry: StoreStep = Box::new(move |act: &mut RoomActor, _| {
                            act.store_leave(socket_id, next)
                        });
                        act.enqueue_step(retry, ctx);
                    });
                }
            }
        }))
    }

    /// Stops once nothing is left to do here: no local member, no store
    /// write queued or running, no chat waiting, no leave waiting to be
    /// recorded. Joins that reach the mailbox after this point find it
    /// closed and ask the manager for a fresh actor.
    fn stop_if_idle(&mut self, ctx: &mut Context<Self>) {
        if self.local().next().is_none()
            && !self.step_running
            && self.steps.is_empty()
            && self.pending_messages.is_empty()
            && self.unsynced_leaves == 0
        {
            ctx.stop();
        }
    }

    /// The store part of a join: on the room's first join, subscribe to the
    /// room's channel and only then read the room's state, so no event can
    /// fall between the two (an event from before the read is a duplicate,
    /// one after it is news); then the membership transaction.
    fn join_step(&mut self, msg: Join, ctx: &mut Context<Self>) -> StepFuture {
        let store = self.store.clone();
        let room_id = self.room_id;
        let first = self.next_id.is_none();
        let subscribe = first
            .then(|| self.config.bus.clone())
            .flatten()
            .map(|bus| (bus, ctx.address().recipient()));
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
                    frame: error_frame(&error, reference),
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
        self.insert_member(MemberEntry {
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
        let members: Vec<&Member> = self.members.iter().map(|m| &m.member).collect();
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
    /// other processes.
    fn load(&mut self, snapshot: Snapshot, ctx: &mut Context<Self>) {
        self.next_id = Some(
            snapshot
                .history
                .last()
                .map_or(MessageSeq::FIRST, |m| m.id.next()),
        );
        let keep = snapshot
            .history
            .len()
            .saturating_sub(self.config.history_on_join);
        self.history = snapshot.history.into_iter().skip(keep).collect();
        for record in snapshot.members {
            self.add_remote(record, ctx);
        }
        for event in std::mem::take(&mut self.early_events) {
            self.on_remote(event, ctx);
        }
    }

    /// Queues a batch step for the chats waiting, unless one is queued.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.batch_queued || self.pending_messages.is_empty() {
            return;
        }
        self.batch_queued = true;
        let step: StoreStep = Box::new(|act: &mut RoomActor, _ctx: &mut Context<RoomActor>| {
            act.batch_queued = false;
            let n = act.pending_messages.len().min(MAX_BATCH);
            let batch: Vec<NewMessage> = act.pending_messages.drain(..n).collect();
            let senders: Vec<Sender> = act.pending_senders.drain(..n).collect();
            let store = act.store.clone();
            let room_id = act.room_id;
            let fut = async move { store.append_messages(room_id, &batch).await };
            Box::pin(fut.into_actor(act).map(move |res, act, ctx| {
                match res {
                    Ok(messages) => {
                        act.publish(RoomEvent::Messages {
                            messages: messages.clone(),
                        });
                        let tagged = messages.into_iter().zip(senders.into_iter().map(Some));
                        act.accept(tagged.collect(), ctx);
                    }
                    Err(e) => act.reject(senders, e, ctx),
                }
                act.flush(ctx);
            }))
        });
        self.enqueue_step(step, ctx);
    }

    /// Tells each sender of a batch the store refused why.
    fn reject(&mut self, senders: Vec<Sender>, e: StoreError, ctx: &mut Context<Self>) {
        let error = ChatError::from(e);
        log::warn!(
            "room {}: {} chats not stored: {error}",
            self.room_id,
            senders.len()
        );
        let mut removals = Vec::new();
        for s in &senders {
            if let Some(outbox) = self
                .position(&s.socket_id)
                .and_then(|i| self.members[i].outbox.as_ref())
            {
                let wire = error_frame(&error, s.reference.as_deref());
                removals.extend(self.offer(&s.socket_id, outbox, wire));
            }
        }
        self.remove_members(removals, ctx);
        self.stop_if_idle(ctx);
    }

    /// The one entrance for messages to be delivered, from here or from
    /// other processes: drops ids already delivered, holds ids ahead of a
    /// gap, and delivers the run that starts at `next_id`.
    fn accept(&mut self, messages: Vec<(Message, Option<Sender>)>, ctx: &mut Context<Self>) {
        let Some(mut next) = self.next_id else {
            return; // not loaded: no member here has seen anything yet
        };
        for (message, sender) in messages {
            if message.id >= next {
                self.reorder.entry(message.id).or_insert((message, sender));
            }
        }
        let mut ready = Vec::new();
        while let Some(entry) = self.reorder.remove(&next) {
            ready.push(entry);
            next = next.next();
        }
        self.next_id = Some(next);
        if !ready.is_empty() {
            self.deliver(ready, ctx);
        }
        self.watch_gap(ctx);
    }

    /// While messages wait behind a missing id, arms a timer that reads the
    /// missing ids from the store.
    fn watch_gap(&mut self, ctx: &mut Context<Self>) {
        if self.reorder.is_empty() {
            if let Some(timer) = self.gap_timer.take() {
                ctx.cancel_future(timer);
            }
            return;
        }
        if self.gap_timer.is_none() {
            self.gap_timer = Some(ctx.run_later(self.config.gap_timeout, |act, ctx| {
                act.gap_timer = None;
                act.catch_up(ctx);
            }));
        }
    }

    /// Reads from the store every message after the last one delivered and
    /// feeds it through `accept`; used for gaps and after a bus outage.
    fn catch_up(&mut self, ctx: &mut Context<Self>) {
        let Some(next) = self.next_id else {
            return;
        };
        let store = self.store.clone();
        let room_id = self.room_id;
        let fut = async move { store.messages_after(room_id, next.prev(), FILL_PAGE).await };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(messages) => {
                let full_page = messages.len() == FILL_PAGE;
                act.accept(messages.into_iter().map(|m| (m, None)).collect(), ctx);
                if full_page {
                    act.catch_up(ctx);
                }
            }
            Err(StoreError::RoomNotFound(_)) => {}
            Err(e) => {
                log::warn!("room {room_id}: catching up failed, retrying: {e}");
                act.watch_gap(ctx);
            }
        }));
    }

    /// Fans delivered messages out: the batch is serialized and framed once
    /// and the same bytes go to every local member; only a sender that gave
    /// a `ref` gets its own copy, with its echo.
    fn deliver(&mut self, ready: Vec<(Message, Option<Sender>)>, ctx: &mut Context<Self>) {
        let mut shared = BytesMut::new();
        let mut bounds = Vec::with_capacity(ready.len());
        for (message, _) in &ready {
            let start = shared.len();
            let frame = ServerFrame::Message {
                message,
                reference: None,
            };
            frame.append_wire(&mut shared);
            bounds.push(start..shared.len());
        }
        let shared = shared.freeze();
        // Senders with a `ref`, each with the positions of its own messages.
        let mut personal: Vec<(&SocketId, Vec<(usize, Bytes)>)> = Vec::new();
        for (i, (message, sender)) in ready.iter().enumerate() {
            let Some((session, reference)) = sender
                .as_ref()
                .and_then(|s| Some((&s.socket_id, s.reference.as_deref()?)))
            else {
                continue;
            };
            let own = ServerFrame::Message {
                message,
                reference: Some(reference),
            }
            .to_wire();
            match personal.iter_mut().find(|(s, _)| *s == session) {
                Some((_, own_frames)) => own_frames.push((i, own)),
                None => personal.push((session, vec![(i, own)])),
            }
        }
        let batch = |own: &[(usize, Bytes)]| -> Bytes {
            let mut wire = BytesMut::with_capacity(shared.len() + 64 * own.len());
            for (i, range) in bounds.iter().enumerate() {
                match own.iter().find(|(at, _)| *at == i) {
                    Some((_, mine)) => wire.extend_from_slice(mine),
                    None => wire.extend_from_slice(&shared[range.clone()]),
                }
            }
            wire.freeze()
        };
        let mut removals = Vec::new();
        for (m, outbox) in self.local() {
            let wire = match personal.iter().position(|(s, _)| **s == m.socket_id) {
                Some(p) => batch(&personal.swap_remove(p).1),
                None => shared.clone(),
            };
            removals.extend(self.offer(&m.socket_id, outbox, wire));
        }
        let keep = self.config.history_on_join;
        for (message, _) in ready {
            if keep > 0 {
                if self.history.len() >= keep {
                    self.history.pop_front();
                }
                self.history.push_back(message);
            }
        }
        self.remove_members(removals, ctx);
        self.stop_if_idle(ctx);
    }

    /// After a bus outage: deliver what other processes stored meanwhile and
    /// bring the member list in line with the store.
    fn resync(&mut self, ctx: &mut Context<Self>) {
        self.catch_up(ctx);
        let store = self.store.clone();
        let room_id = self.room_id;
        let step: StoreStep =
            Box::new(move |act: &mut RoomActor, _ctx: &mut Context<RoomActor>| {
                let fut = async move { store.member_records(room_id).await };
                Box::pin(
                    fut.into_actor(act)
                        .map(|res, act, ctx| act.reconcile(res, ctx)),
                )
            });
        self.enqueue_step(step, ctx);
    }

    /// Brings the member list in line with the store's records. A local
    /// member the store no longer has was reaped while this process was cut
    /// off: its socket is closed so the client rejoins.
    fn reconcile(&mut self, res: Result<Vec<MemberRecord>, StoreError>, ctx: &mut Context<Self>) {
        let records = match res {
            Ok(records) => records,
            Err(StoreError::RoomNotFound(_)) => Vec::new(),
            Err(e) => {
                log::warn!("room {}: member resync failed: {e}", self.room_id);
                return;
            }
        };
        let gone: Vec<(SocketId, Removal)> = self
            .members
            .iter()
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

    fn on_remote(&mut self, event: RoomEvent, ctx: &mut Context<Self>) {
        match event {
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
                let why = match self.position(&socket_id) {
                    Some(i) if self.members[i].outbox.is_some() => Removal::Lost,
                    _ => Removal::Forget,
                };
                self.remove_members(vec![(socket_id, why)], ctx);
                self.stop_if_idle(ctx);
            }
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

impl Handler<Join> for RoomActor {
    type Result = Result<(), RoomClosing>;

    fn handle(&mut self, msg: Join, ctx: &mut Self::Context) -> Self::Result {
        if ctx.state() != ActorState::Running {
            return Err(RoomClosing);
        }
        let step: StoreStep = Box::new(move |act: &mut RoomActor, ctx: &mut Context<RoomActor>| {
            act.join_step(msg, ctx)
        });
        self.enqueue_step(step, ctx);
        Ok(())
    }
}

impl Handler<Chat> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Chat, ctx: &mut Self::Context) {
        // A chat from a session this room no longer lists (it was evicted,
        // or its leave overtook the chat) is dropped: only members speak.
        let Some(i) = self.position(&msg.socket_id) else {
            return;
        };
        self.pending_messages.push(NewMessage {
            nickname: self.members[i].member.nickname.clone(),
            content: msg.content.into_string(),
            sent_at: domain::now(),
        });
        self.pending_senders.push(Sender {
            socket_id: msg.socket_id,
            reference: msg.reference,
        });
        self.flush(ctx);
    }
}

impl Handler<Leave> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Self::Context) {
        let local = self
            .position(&msg.socket_id)
            .is_some_and(|i| self.members[i].outbox.is_some());
        if let Some(done) = msg.done {
            // Answered once the leave step (queued by `remove_members`
            // below, or already queued) has run: steps run in order.
            let step: StoreStep = Box::new(move |_: &mut RoomActor, _: &mut Context<RoomActor>| {
                let _ = done.send(());
                Box::pin(actix::fut::ready(()))
            });
            if local {
                self.remove_members(vec![(msg.socket_id, Removal::Gone)], ctx);
            }
            self.enqueue_step(step, ctx);
        } else if local {
            self.remove_members(vec![(msg.socket_id, Removal::Gone)], ctx);
        }
        self.stop_if_idle(ctx);
    }
}

impl Handler<ListMembers> for RoomActor {
    type Result = MessageResult<ListMembers>;

    fn handle(&mut self, _: ListMembers, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.members.iter().map(|m| m.member.clone()).collect())
    }
}

impl Handler<BusSignal> for RoomActor {
    type Result = ();

    fn handle(&mut self, signal: BusSignal, ctx: &mut Self::Context) {
        match signal {
            BusSignal::Event(event) if self.next_id.is_none() => self.early_events.push(event),
            BusSignal::Event(event) => self.on_remote(event, ctx),
            // Not loaded yet: the first join's read is the resync.
            BusSignal::Resync if self.next_id.is_none() => {}
            BusSignal::Resync => self.resync(ctx),
        }
    }
}

impl Handler<CloseRoom> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: CloseRoom, ctx: &mut Self::Context) {
        for m in self.members.drain(..) {
            if let Some(outbox) = m.outbox {
                outbox.do_send(SessionEvent::ServerShutdown);
            }
        }
        ctx.stop();
    }
}
