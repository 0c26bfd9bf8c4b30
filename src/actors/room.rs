//! `RoomActor`: one per room with members on this process. It owns the
//! room's live state (members in join order, the recent-history ring, the
//! queue of chats being stored) and is the only writer of that room's
//! membership and messages from this process.
//!
//! Ordering invariants, enforced here:
//! - **Membership changes are serialized.** Joins and leaves run their store
//!   transaction under `ctx.wait`, so the actor handles nothing else until
//!   the store has answered; the member list, the count and the `joined`
//!   snapshot can never disagree.
//! - **Stored before delivered, in id order.** Chats queue in `pending`; at
//!   most one batch is being stored at a time, and a batch is fanned out only
//!   after the store has given it its ids. Batches complete in the order they
//!   were started, so every member sees ids strictly increasing.
//! - **History then live, nothing twice.** The `joined` snapshot's history is
//!   the ring of messages this actor has delivered, taken at the instant the
//!   member is added; every later message reaches the member live.
//! - **Bounded fan-out.** Each member gets at most one mailbox item per
//!   batch, sent with `try_send`; a session whose mailbox is full is a slow
//!   consumer and is removed and closed, so one stuck client costs the others
//!   nothing and the server's memory stays bounded.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;

use super::room_manager::{RoomManager, RoomStopped};
use super::session::SessionEvent;
use crate::domain::{self, Member, Message, MessageContent, Nickname, Room, RoomId};
use crate::error::ChatError;
use crate::protocol::{error_frame, ServerFrame};
use crate::store::{LeaveOutcome, NewMember, NewMessage, SharedStore, StoreError};

/// Most chats stored in one store call; bounds a batch's latency.
const MAX_BATCH: usize = 256;
/// Longest pause between retries of a leave the store could not record.
const MAX_LEAVE_RETRY: Duration = Duration::from_secs(5);

/// Fixed per-process settings every room needs.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    pub instance_id: String,
    pub history_on_join: usize,
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
    pub session_id: String,
    pub nickname: Nickname,
    pub outbox: Recipient<SessionEvent>,
    pub reference: Option<String>,
}

/// A chat from a member.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Chat {
    pub session_id: String,
    pub content: MessageContent,
    pub reference: Option<String>,
}

/// A member leaves, by request or because its connection closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub session_id: String,
}

/// The members, in join order (answers `GET /api/rooms/{id}/members`).
#[derive(Message)]
#[rtype(result = "Vec<Member>")]
pub struct ListMembers;

/// The process is shutting down: close every member's socket and stop. The
/// manager removes this process's memberships from the store in bulk.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseRoom;

struct MemberEntry {
    member: Member,
    session_id: String,
    outbox: Recipient<SessionEvent>,
}

struct PendingChat {
    session_id: String,
    reference: Option<String>,
}

/// Why a member is being removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    /// It asked to leave, or its socket closed.
    Gone,
    /// Its mailbox was full: it is closed as a slow consumer.
    SlowConsumer,
}

/// One live room. See the module comment for the invariants.
pub struct RoomActor {
    room_id: RoomId,
    generation: u64,
    store: SharedStore,
    config: Arc<RoomConfig>,
    manager: Addr<RoomManager>,
    /// The room as the store last reported it (count included).
    room: Option<Room>,
    members: Vec<MemberEntry>,
    /// The last `history_on_join` messages delivered, oldest first.
    history: VecDeque<Message>,
    history_loaded: bool,
    /// Chats waiting for the batch in flight to finish.
    pending_chats: Vec<PendingChat>,
    pending_messages: Vec<NewMessage>,
    /// A batch is being stored.
    writing: bool,
    /// Leaves the store has not yet recorded (it was unavailable).
    unsynced_leaves: usize,
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
            config,
            manager,
            room: None,
            members: Vec::new(),
            history: VecDeque::new(),
            history_loaded: false,
            pending_chats: Vec::new(),
            pending_messages: Vec::new(),
            writing: false,
            unsynced_leaves: 0,
        }
    }

    fn position(&self, session_id: &str) -> Option<usize> {
        self.members.iter().position(|m| m.session_id == session_id)
    }

    /// Sends `frame` to every member but `except`; returns the members whose
    /// mailbox refused it.
    fn broadcast(&self, frame: &ByteString, except: Option<&str>) -> Vec<(String, Removal)> {
        let frames: Arc<[ByteString]> = Arc::from(vec![frame.clone()]);
        self.members
            .iter()
            .filter(|m| Some(m.session_id.as_str()) != except)
            .filter_map(|m| self.offer(m, frames.clone()))
            .collect()
    }

    /// Offers one batch of frames to a member without waiting.
    fn offer(&self, m: &MemberEntry, frames: Arc<[ByteString]>) -> Option<(String, Removal)> {
        let event = SessionEvent::Frames {
            room_id: self.room_id,
            frames,
        };
        match m.outbox.try_send(event) {
            Ok(()) => None,
            Err(SendError::Full(_)) => Some((m.session_id.clone(), Removal::SlowConsumer)),
            Err(SendError::Closed(_)) => Some((m.session_id.clone(), Removal::Gone)),
        }
    }

    /// Removes members (and, through `memberLeft`, possibly more that turn
    /// out to be gone), recording each leave in the store.
    fn remove_members(&mut self, mut queue: Vec<(String, Removal)>, ctx: &mut Context<Self>) {
        while let Some((session_id, why)) = queue.pop() {
            let Some(index) = self.position(&session_id) else {
                continue;
            };
            let gone = self.members.remove(index);
            if why == Removal::SlowConsumer {
                log::info!(
                    "room {}: closing slow consumer {}",
                    self.room_id,
                    gone.session_id
                );
                gone.outbox.do_send(SessionEvent::Evicted {
                    room_id: self.room_id,
                });
            }
            let frame = ServerFrame::MemberLeft {
                room_id: self.room_id,
                nickname: &gone.member.nickname,
            }
            .to_text();
            queue.extend(self.broadcast(&frame, None));
            self.record_leave(gone.session_id, Duration::from_millis(100), ctx);
        }
        self.stop_if_idle(ctx);
    }

    /// Records a leave in the store, holding the mailbox until it is done so
    /// a following join sees it; retried with backoff while the store is
    /// unavailable, because a lost leave would leave the count too high.
    /// `unsynced_leaves` counts leaves not yet recorded, and keeps the actor
    /// alive until they are.
    fn record_leave(&mut self, session_id: String, backoff: Duration, ctx: &mut Context<Self>) {
        self.unsynced_leaves += 1;
        let store = self.store.clone();
        let room_id = self.room_id;
        let sid = session_id.clone();
        let fut = async move { store.remove_member(room_id, &sid).await };
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| {
            act.unsynced_leaves -= 1;
            match res {
                Ok(LeaveOutcome::Left { remaining, .. }) => {
                    if let Some(room) = act.room.as_mut() {
                        room.member_count = remaining;
                    }
                }
                Ok(LeaveOutcome::RoomDeleted { .. }) => {
                    log::info!("room {room_id}: last member left, room deleted");
                    act.room = None;
                }
                Ok(LeaveOutcome::NotMember) => {}
                Err(e) => {
                    log::warn!("room {room_id}: leave of {session_id} not recorded, retrying: {e}");
                    act.unsynced_leaves += 1;
                    ctx.run_later(backoff, move |act, ctx| {
                        act.unsynced_leaves -= 1;
                        act.record_leave(session_id, (backoff * 2).min(MAX_LEAVE_RETRY), ctx);
                    });
                }
            }
            act.stop_if_idle(ctx);
        }));
    }

    /// Stops once nothing is left to do: no members, no batch in flight, no
    /// leave waiting to be recorded. Joins queued behind this point see the
    /// mailbox closed and ask the manager for a fresh actor.
    fn stop_if_idle(&mut self, ctx: &mut Context<Self>) {
        if self.members.is_empty()
            && !self.writing
            && self.pending_chats.is_empty()
            && self.unsynced_leaves == 0
        {
            ctx.stop();
        }
    }

    fn finish_join(
        &mut self,
        msg: Join,
        result: Result<(Option<Vec<Message>>, crate::store::JoinOutcome), StoreError>,
        ctx: &mut Context<Self>,
    ) {
        let reference = msg.reference.as_deref();
        let outcome = match result {
            Ok((history, outcome)) => {
                if let Some(history) = history {
                    self.history = history.into();
                    self.history_loaded = true;
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
        .to_text();
        let refused = self.broadcast(&announce, None);
        self.members.push(MemberEntry {
            member: outcome.member.clone(),
            session_id: msg.session_id.clone(),
            outbox: msg.outbox.clone(),
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
        .to_text();
        self.room = Some(outcome.room);
        let joined = SessionEvent::Joined {
            room_id: self.room_id,
            room: ctx.address(),
            frame,
        };
        let mut removals = refused;
        if msg.outbox.try_send(joined).is_err() {
            removals.push((msg.session_id, Removal::Gone));
        }
        if !removals.is_empty() {
            self.remove_members(removals, ctx);
        }
    }

    /// Starts storing the next batch if none is in flight.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.writing {
            return;
        }
        if self.pending_messages.is_empty() {
            self.stop_if_idle(ctx);
            return;
        }
        let n = self.pending_messages.len().min(MAX_BATCH);
        let batch: Vec<NewMessage> = self.pending_messages.drain(..n).collect();
        let senders: Vec<PendingChat> = self.pending_chats.drain(..n).collect();
        self.writing = true;
        let store = self.store.clone();
        let room_id = self.room_id;
        let fut = async move { store.append_messages(room_id, &batch).await };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.writing = false;
            act.deliver(senders, res, ctx);
            act.flush(ctx);
        }));
    }

    /// Fans a stored batch out: each message serialized once and shared by
    /// every member; only a sender that gave a `ref` gets its own copy of
    /// its echo.
    fn deliver(
        &mut self,
        senders: Vec<PendingChat>,
        result: Result<Vec<Message>, StoreError>,
        ctx: &mut Context<Self>,
    ) {
        let messages = match result {
            Ok(messages) => messages,
            Err(e) => {
                let error = ChatError::from(e);
                log::warn!(
                    "room {}: {} chats not stored: {error}",
                    self.room_id,
                    senders.len()
                );
                let mut removals = Vec::new();
                for s in &senders {
                    if let Some(i) = self.position(&s.session_id) {
                        let frames = Arc::from(vec![error_frame(&error, s.reference.as_deref())]);
                        removals.extend(self.offer(&self.members[i], frames));
                    }
                }
                self.remove_members(removals, ctx);
                return;
            }
        };
        let shared: Vec<ByteString> = messages
            .iter()
            .map(|message| {
                ServerFrame::Message {
                    message,
                    reference: None,
                }
                .to_text()
            })
            .collect();
        let mut personal: Vec<(&str, Vec<ByteString>)> = Vec::new();
        for (i, (sender, message)) in senders.iter().zip(&messages).enumerate() {
            let Some(reference) = sender.reference.as_deref() else {
                continue;
            };
            let own = ServerFrame::Message {
                message,
                reference: Some(reference),
            }
            .to_text();
            match personal.iter_mut().find(|(s, _)| *s == sender.session_id) {
                Some((_, frames)) => frames[i] = own,
                None => {
                    let mut frames = shared.clone();
                    frames[i] = own;
                    personal.push((&sender.session_id, frames));
                }
            }
        }
        let shared: Arc<[ByteString]> = Arc::from(shared);
        let mut removals = Vec::new();
        for m in &self.members {
            let frames = match personal.iter().position(|(s, _)| *s == m.session_id) {
                Some(p) => Arc::from(personal.swap_remove(p).1),
                None => shared.clone(),
            };
            removals.extend(self.offer(m, frames));
        }
        for message in messages {
            if self.history.len() >= self.config.history_on_join {
                self.history.pop_front();
            }
            if self.config.history_on_join > 0 {
                self.history.push_back(message);
            }
        }
        if !removals.is_empty() {
            self.remove_members(removals, ctx);
        }
    }
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Joins are answered from this mailbox; a burst of joins into a
        // popular room must not be refused by actix's default of 16.
        ctx.set_mailbox_capacity(4096);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
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
        let store = self.store.clone();
        let room_id = self.room_id;
        let history_wanted = (!self.history_loaded).then_some(self.config.history_on_join);
        let new_member = NewMember {
            nickname: msg.nickname.clone(),
            socket_id: msg.session_id.clone(),
            instance_id: self.config.instance_id.clone(),
            joined_at: domain::now(),
        };
        let fut = async move {
            let history = match history_wanted {
                Some(limit) => Some(store.recent_messages(room_id, limit).await?),
                None => None,
            };
            let outcome = store.add_member(room_id, &new_member).await?;
            Ok((history, outcome))
        };
        ctx.wait(
            fut.into_actor(self)
                .map(move |res, act, ctx| act.finish_join(msg, res, ctx)),
        );
        Ok(())
    }
}

impl Handler<Chat> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Chat, ctx: &mut Self::Context) {
        // A chat from a session this room no longer lists (it was evicted,
        // or its leave overtook the chat) is dropped: only members speak.
        let Some(i) = self.position(&msg.session_id) else {
            return;
        };
        self.pending_messages.push(NewMessage {
            nickname: self.members[i].member.nickname.clone(),
            content: msg.content.into_string(),
            sent_at: domain::now(),
        });
        self.pending_chats.push(PendingChat {
            session_id: msg.session_id,
            reference: msg.reference,
        });
        self.flush(ctx);
    }
}

impl Handler<Leave> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Self::Context) {
        self.remove_members(vec![(msg.session_id, Removal::Gone)], ctx);
    }
}

impl Handler<ListMembers> for RoomActor {
    type Result = MessageResult<ListMembers>;

    fn handle(&mut self, _: ListMembers, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.members.iter().map(|m| m.member.clone()).collect())
    }
}

impl Handler<CloseRoom> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: CloseRoom, ctx: &mut Self::Context) {
        for m in self.members.drain(..) {
            m.outbox.do_send(SessionEvent::ServerShutdown);
        }
        ctx.stop();
    }
}
