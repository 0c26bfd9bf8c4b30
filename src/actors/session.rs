//! `ChatSession`: one actor per WebSocket. It parses client frames into
//! commands (via `protocol.rs`), keeps the connection's state (lobby,
//! joining, in a room), enforces the per-connection rate limit and the
//! heartbeat, and writes the frames its room sends it.
//!
//! The socket itself is driven by its [`Transport`] from inside this actor:
//! a room's frames arrive as shared wire bytes and are queued by reference;
//! a client that falls too far behind is closed with 1008 by the transport
//! (see `ws/transport.rs` for the bound and the close rules).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::context::SessionContext;
use super::room::{Chat, Join, Leave, RoomActor, RoomClosing};
use super::room_manager::GetRoom;
use crate::connections::ConnectionSlot;
use crate::domain::{self, Nickname, RoomId, SocketId};
use crate::error::{Chain, ChatError};
use crate::protocol::{error_frame, parse_client_frame, ClientCommand, ClientFrame, ServerFrame};
use crate::rate_limit::TokenBucket;
use crate::store::StoreError;
use crate::telemetry::RateLimit;
use crate::ws::{CloseCode, Released, Transport, WsActor};

/// Client frames held while a join is in progress; beyond this a client is
/// sending faster than any chat needs.
const MAX_QUEUED_WHILE_JOINING: usize = 64;
/// What `joining` holds while the room of a `create` is being made (no
/// room has id 0).
const CREATING: RoomId = RoomId::new(0);
/// How often a join is retried when it races the room actor's shutdown.
const MAX_JOIN_ATTEMPTS: u32 = 20;
/// The close reason of a connection closed for `LOBBY_IDLE_SECS`
/// (docs/PROTOCOL.md).
pub const LOBBY_IDLE_REASON: &str = "idle in the lobby: no room joined";

/// How far a join request got.
enum JoinSent {
    /// The room queued the join; its outcome arrives as a `SessionEvent`.
    Accepted,
    /// The room's actor was stopping: ask the manager for a fresh one.
    RoomClosing,
    /// The manager found no such room (or could not ask the store).
    Refused(StoreError),
    /// The manager is gone (shutting down).
    ManagerGone,
}

/// What a room (or the manager) tells a session.
#[derive(Message)]
#[rtype(result = "()")]
pub enum SessionEvent {
    /// Frames of `room_id`, in order, as wire bytes: encoded once by the
    /// room and shared by all its members.
    Frames { room_id: RoomId, wire: Bytes },
    /// The join succeeded; `frame` is the `joined` frame (wire bytes).
    Joined {
        room_id: RoomId,
        room: Addr<RoomActor>,
        frame: Bytes,
    },
    /// The join failed; `frame` is the `error` frame (wire bytes).
    JoinFailed { room_id: RoomId, frame: Bytes },
    /// Removed from `room_id` by the room (too slow a reader, or the
    /// membership was lost): close the socket with `code`.
    Evicted {
        room_id: RoomId,
        code: CloseCode,
        reason: &'static str,
    },
    /// The explicit leave of `room_id` is recorded (or the wait for it
    /// ended): answer `left`.
    LeaveRecorded {
        room_id: RoomId,
        reference: Option<String>,
    },
    /// The room's actor was found stopped when a chat was sent to it; the
    /// chat (its `ref`) was not stored.
    RoomGone {
        room_id: RoomId,
        reference: Option<String>,
    },
    /// The server is shutting down.
    ServerShutdown,
    /// Time to ping, or to drop a client that has gone silent.
    Heartbeat,
}

/// The room a connection is in.
struct CurrentRoom {
    room_id: RoomId,
    room: Addr<RoomActor>,
}

/// One WebSocket connection.
pub struct ChatSession {
    /// This process's number for the connection (its key in the
    /// [`OpenSessions`](super::open_sessions::OpenSessions) registry).
    number: u64,
    /// The connection's id in the store and on the bus: instance and number.
    id: SocketId,
    cx: Arc<SessionContext>,
    peer: Option<IpAddr>,
    /// The room this connection is in. A join keeps it until the new room
    /// has accepted the member, so a failed join changes nothing.
    current: Option<CurrentRoom>,
    /// The room a `join`/`create` in flight is for (`CREATING` while the
    /// room of a `create` is being made).
    joining: Option<RoomId>,
    /// The room an explicit `leave` in flight is for: its `left` waits
    /// until the room has recorded the leave.
    leaving: Option<RoomId>,
    /// Counts join attempts, so a watchdog can tell its join from a later one.
    join_attempt: u64,
    /// The watchdog of the join in flight, cancelled once it is settled:
    /// actix polls every timer of an actor on each of its wake-ups, so a
    /// watchdog left to expire would be polled on every delivery for
    /// three store timeouts after each join.
    join_watchdog: Option<SpawnHandle>,
    /// Client frames; `violations` is the allowance of frames over it
    /// before the connection is closed (see `handle_text`).
    rate: TokenBucket,
    violations: TokenBucket,
    /// `join` and `create` frames, on a budget of their own: a join is the
    /// costliest thing a client can ask for.
    joins: TokenBucket,
    /// Frames received while a join is in progress, replayed after it.
    queued: VecDeque<ClientFrame>,
    transport: Transport,
    /// Set while a mailbox message is handled (see
    /// `Transport::send_from_handler`).
    in_handler: bool,
    /// Since when the connection has been in no room (`None` while in
    /// one); past `LOBBY_IDLE_SECS` the heartbeat closes it.
    lobby_since: Option<Instant>,
    /// This connection's place under `MAX_CONNECTIONS` and
    /// `MAX_CONNECTIONS_PER_ADDRESS`, given back when the actor is dropped,
    /// however the connection ended.
    _slot: ConnectionSlot,
}

impl ChatSession {
    /// A session for a freshly upgraded socket.
    pub fn new(
        cx: Arc<SessionContext>,
        peer: Option<IpAddr>,
        transport: Transport,
        slot: ConnectionSlot,
    ) -> Self {
        let (number, id) = cx.next_socket();
        let limits = &cx.limits;
        let rate = TokenBucket::new(limits.frames_per_sec, limits.frames_burst);
        let violations = TokenBucket::new(limits.rate_violations / 10.0, limits.rate_violations);
        let joins = TokenBucket::new(limits.joins_per_sec, limits.joins_burst);
        ChatSession {
            number,
            id,
            cx,
            peer,
            current: None,
            joining: None,
            leaving: None,
            join_attempt: 0,
            join_watchdog: None,
            rate,
            violations,
            joins,
            queued: VecDeque::new(),
            transport,
            in_handler: false,
            lobby_since: Some(Instant::now()),
            _slot: slot,
        }
    }

    /// On a heartbeat tick: a connection that has been in no room for
    /// `LOBBY_IDLE_SECS` (a join in flight does not count as a room, but
    /// holds the close off until it is answered) is closed with 1000.
    /// Returns whether it was.
    fn close_if_idle_in_lobby(&mut self, ctx: &mut Context<Self>) -> bool {
        if self.current.is_some() || self.busy() || !self.transport.is_open() {
            return false;
        }
        let since = *self.lobby_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.cx.limits.lobby_idle {
            return false;
        }
        log::debug!(socket = self.id.as_str(); "session {}: closing: idle in the lobby", self.id);
        self.close(ctx, CloseCode::Normal, LOBBY_IDLE_REASON);
        true
    }

    /// Queues wire bytes for the client. A client too far behind is being
    /// closed by the transport: give up the room at once.
    fn send(&mut self, wire: Bytes, ctx: &mut Context<Self>) {
        let sent = if self.in_handler {
            self.transport.send_from_handler(wire, ctx)
        } else {
            self.transport.send(wire, ctx)
        };
        if !sent {
            log::info!(socket = self.id.as_str(); "session {}: closing slow consumer", self.id);
            self.cx.metrics.slow_consumer_closes.increment(1);
            let _ = self.release(ctx);
        }
    }

    fn send_error(&mut self, ctx: &mut Context<Self>, e: &ChatError, reference: Option<&str>) {
        self.cx.metrics.error(e.code());
        self.send(error_frame(e, reference), ctx);
    }

    /// Answers `rate_limited` for `reason`, counted by reason.
    fn send_rate_limited(
        &mut self,
        ctx: &mut Context<Self>,
        reason: RateLimit,
        why: &str,
        reference: Option<&str>,
    ) {
        self.cx.metrics.rate_limited(reason);
        self.send_error(ctx, &ChatError::RateLimited(why.to_owned()), reference);
    }

    /// Closes the connection with `code`; the room is given up at once, the
    /// socket once the close frame is out.
    fn close(&mut self, ctx: &mut Context<Self>, code: CloseCode, why: &str) {
        self.transport.close(code, why, ctx);
        let _ = self.release(ctx);
    }

    /// Handles one complete text message from the client.
    ///
    /// Over the frame rate, the first frames are answered `rate_limited`
    /// (with their `ref`); a client that keeps sending past its allowance
    /// (`WS_RATE_VIOLATIONS` frames, refilled at a tenth of that per second)
    /// is closed with 1008, so a flood costs the server a bounded amount of
    /// work and of answers instead of one error frame per frame.
    fn handle_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        if !self.transport.is_open() {
            return;
        }
        let within_rate = self.rate.try_take();
        if !within_rate && !self.violations.try_take() {
            log::info!(
                socket = self.id.as_str();
                "session {}: closing: frame rate exceeded",
                self.id
            );
            self.transport
                .fail(CloseCode::Policy, "rate limit exceeded", ctx);
            if let Some(ip) = self.peer {
                self.cx.flood_penalties.try_take(&ip);
            }
            let _ = self.release(ctx);
            return;
        }
        let parsed = parse_client_frame(text, &self.cx.limits.text);
        if !within_rate {
            // The reply still carries the frame's `ref` when it has one.
            let reference = match &parsed {
                Ok(frame) => frame.reference.as_deref(),
                Err(rejected) => rejected.reference.as_deref(),
            };
            let why = "too many frames; slow down";
            self.send_rate_limited(ctx, RateLimit::Frames, why, reference);
            return;
        }
        match parsed {
            Ok(frame) => self.on_frame(frame, ctx),
            Err(rejected) => self.send_error(ctx, &rejected.error, rejected.reference.as_deref()),
        }
    }

    fn on_frame(&mut self, frame: ClientFrame, ctx: &mut Context<Self>) {
        if self.busy() && frame.command != ClientCommand::Ping {
            if self.queued.len() >= MAX_QUEUED_WHILE_JOINING {
                let why = "too many frames while joining";
                let reference = frame.reference.as_deref();
                self.send_rate_limited(ctx, RateLimit::Joining, why, reference);
            } else {
                self.queued.push_back(frame);
            }
            return;
        }
        let reference = frame.reference;
        match frame.command {
            ClientCommand::Ping => {
                let pong = ServerFrame::Pong {
                    reference: reference.as_deref(),
                };
                self.send(pong.to_wire(), ctx);
            }
            ClientCommand::Chat { content } => {
                self.cx.metrics.chats_received.increment(1);
                let Some(current) = &self.current else {
                    self.send_error(ctx, &ChatError::NotInRoom, reference.as_deref());
                    return;
                };
                let chat = Chat {
                    socket_id: self.id.clone(),
                    content,
                    reference,
                };
                // Within the room's mailbox bound: a room that cannot take
                // more is busy, and the sender hears it.
                match current.room.try_send(chat) {
                    Ok(()) => {}
                    Err(SendError::Full(chat)) => {
                        let why = "the room is busy; retry shortly";
                        let reference = chat.reference.as_deref();
                        self.send_rate_limited(ctx, RateLimit::RoomBusy, why, reference);
                    }
                    // Through the mailbox: what the room sent before it
                    // stopped (echoes, a shutdown's 1001) is there already
                    // and is handled first.
                    Err(SendError::Closed(chat)) => ctx.address().do_send(SessionEvent::RoomGone {
                        room_id: current.room_id,
                        reference: chat.reference,
                    }),
                }
            }
            ClientCommand::Leave => self.leave_and_confirm(reference, ctx),
            ClientCommand::Join { .. } | ClientCommand::Create { .. } if !self.joins.try_take() => {
                let why = "too many joins; wait a moment";
                self.send_rate_limited(ctx, RateLimit::Joins, why, reference.as_deref());
            }
            ClientCommand::Join { room_id, nickname } => {
                // Rejoining the room you are in is not leaving it: the room
                // answers `joined` again and keeps the membership (see
                // `RoomActor::join_step`).
                self.begin_join(room_id, nickname, reference, 1, ctx);
            }
            ClientCommand::Create { title, nickname } => {
                let allowed = self
                    .peer
                    .is_none_or(|ip| self.cx.room_create_limiter.try_take(&ip));
                if !allowed {
                    let why = "too many rooms created; wait a moment";
                    let reference = reference.as_deref();
                    self.send_rate_limited(ctx, RateLimit::RoomCreates, why, reference);
                    return;
                }
                self.joining = Some(CREATING);
                let store = self.cx.store.clone();
                let fut = async move { store.create_room(&title, domain::now()).await };
                ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
                    Ok(room) => act.begin_join(room.id, nickname, reference, 1, ctx),
                    Err(e) => act.join_error(&e.into(), reference.as_deref(), ctx),
                }));
            }
        }
    }

    /// The room's actor failed (a panic ends only that actor; the manager
    /// starts a fresh one on the next join). This connection is no longer in
    /// a room: say so, and answer the frame that found out.
    fn room_failed(&mut self, reference: Option<String>, ctx: &mut Context<Self>) {
        let Some(CurrentRoom { room_id, .. }) = self.current.take() else {
            return;
        };
        self.lobby_since = Some(Instant::now());
        log::error!(
            socket = self.id.as_str(),
            room = room_id.get();
            "session {}: room {room_id} actor is gone",
            self.id
        );
        self.remove_membership_directly(room_id);
        let left = ServerFrame::Left {
            room_id,
            reference: None,
        };
        self.send(left.to_wire(), ctx);
        let e = ChatError::unavailable(format!("room {room_id} failed"));
        self.send_error(ctx, &e, reference.as_deref());
    }

    /// An explicit `leave`: `left` is sent once the room has recorded it, so
    /// the client that reads `left` and then asks the REST API no longer
    /// finds itself listed. Frames sent meanwhile wait, as during a join.
    fn leave_and_confirm(&mut self, reference: Option<String>, ctx: &mut Context<Self>) {
        let Some(CurrentRoom { room_id, room }) = self.current.take() else {
            self.send_error(ctx, &ChatError::NotInRoom, reference.as_deref());
            return;
        };
        self.lobby_since = Some(Instant::now());
        let (done, recorded) = oneshot::channel();
        room.do_send(Leave {
            socket_id: self.id.clone(),
            done: Some(done),
        });
        self.leaving = Some(room_id);
        // Bounded: a store outage delays `left`, it never withholds it.
        let wait = self.cx.limits.store_timeout * 2;
        let fut = async move {
            let _ = tokio::time::timeout(wait, recorded).await;
        };
        // Through the mailbox, not straight from here: the room sent the
        // frames it had for this member (a chat's echo or error) before it
        // recorded the leave, so they are in the mailbox already and go out
        // before `left`.
        ctx.spawn(fut.into_actor(self).map(move |(), _, ctx| {
            ctx.address()
                .do_send(SessionEvent::LeaveRecorded { room_id, reference });
        }));
    }

    /// A join or an explicit leave is in flight: client frames wait.
    fn busy(&self) -> bool {
        self.joining.is_some() || self.leaving.is_some()
    }

    /// Leaves the current room, if any, as part of joining one: `left`
    /// (without `ref`, which belongs to the join) goes out at once, with no
    /// wait for the room to record it (see `leave_and_confirm`).
    fn leave_current(&mut self, ctx: &mut Context<Self>) {
        let Some(CurrentRoom { room_id, room }) = self.current.take() else {
            return;
        };
        self.lobby_since = Some(Instant::now());
        room.do_send(Leave {
            socket_id: self.id.clone(),
            done: None,
        });
        let left = ServerFrame::Left {
            room_id,
            reference: None,
        };
        self.send(left.to_wire(), ctx);
    }

    /// Asks the manager for the room's actor and the actor for a seat. If
    /// the actor turns out to be shutting down (it just lost its last
    /// member), a fresh one is requested.
    fn begin_join(
        &mut self,
        room_id: RoomId,
        nickname: Nickname,
        reference: Option<String>,
        attempt: u32,
        ctx: &mut Context<Self>,
    ) {
        self.joining = Some(room_id);
        self.join_attempt += 1;
        let this_attempt = self.join_attempt;
        let manager = self.cx.manager.clone();
        let join = Join {
            socket_id: self.id.clone(),
            nickname: nickname.clone(),
            outbox: ctx.address().recipient(),
            reference: reference.clone(),
        };
        let fut = async move {
            match manager.send(GetRoom { room_id }).await {
                Err(_) => JoinSent::ManagerGone,
                Ok(Err(e)) => JoinSent::Refused(e),
                Ok(Ok(room)) => match room.send(join).await {
                    Ok(Ok(())) => JoinSent::Accepted,
                    Ok(Err(RoomClosing)) | Err(_) => JoinSent::RoomClosing,
                },
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |sent, act, ctx| {
            let retry = match sent {
                JoinSent::Accepted => {
                    // The outcome arrives as a SessionEvent. Should the room
                    // die before answering, do not leave the client (and its
                    // queued frames) waiting forever.
                    // (Unless the answer came first: then nothing waits.)
                    if act.join_attempt != this_attempt || act.joining != Some(room_id) {
                        return;
                    }
                    let wait = act.cx.limits.store_timeout * 3;
                    let watchdog = ctx.run_later(wait, move |act, ctx| {
                        act.join_watchdog = None;
                        if act.join_attempt == this_attempt && act.joining == Some(room_id) {
                            let e =
                                ChatError::unavailable(format!("room {room_id} did not answer"));
                            act.join_error(&e, reference.as_deref(), ctx);
                        }
                    });
                    if let Some(old) = act.join_watchdog.replace(watchdog) {
                        ctx.cancel_future(old);
                    }
                    return;
                }
                JoinSent::Refused(e) => {
                    // No such room (or the store cannot say): nothing was
                    // started for it.
                    act.join_error(&e.into(), reference.as_deref(), ctx);
                    return;
                }
                JoinSent::RoomClosing => true,
                JoinSent::ManagerGone => false,
            };
            if retry && attempt < MAX_JOIN_ATTEMPTS {
                ctx.run_later(
                    std::time::Duration::from_millis(5 * attempt as u64),
                    move |act, ctx| act.begin_join(room_id, nickname, reference, attempt + 1, ctx),
                );
            } else {
                let e = ChatError::unavailable(format!("room {room_id} did not answer the join"));
                act.join_error(&e, reference.as_deref(), ctx);
            }
        }));
    }

    /// The join failed here (not in the room): answer `e`, counted.
    fn join_error(&mut self, e: &ChatError, reference: Option<&str>, ctx: &mut Context<Self>) {
        self.cx.metrics.error(e.code());
        self.join_failed(error_frame(e, reference), ctx);
    }

    fn join_failed(&mut self, frame: Bytes, ctx: &mut Context<Self>) {
        self.send(frame, ctx);
        self.join_settled(ctx);
        self.replay_queued(ctx);
    }

    /// The join in flight is over (answered, failed, or the connection is
    /// ending): no join is in flight, and its watchdog is cancelled.
    fn join_settled(&mut self, ctx: &mut Context<Self>) {
        self.joining = None;
        if let Some(watchdog) = self.join_watchdog.take() {
            ctx.cancel_future(watchdog);
        }
    }

    /// Handles the frames that arrived while joining, in order, until one
    /// of them starts another join.
    fn replay_queued(&mut self, ctx: &mut Context<Self>) {
        while !self.busy() {
            let Some(frame) = self.queued.pop_front() else {
                break;
            };
            self.on_frame(frame, ctx);
        }
    }
}

impl Actor for ChatSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.cx.limits.queue_capacity);
        let registered = self
            .cx
            .sessions
            .insert(self.number, ctx.address().downgrade());
        Transport::start(ctx);
        if !registered {
            // Opened while the server shuts down (its handshake passed just
            // before): closed like every other socket.
            self.close(ctx, CloseCode::Away, "server shutting down");
        }
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        let _ = self.release(ctx);
        self.cx.sessions.remove(self.number);
        Running::Stop
    }
}

impl WsActor for ChatSession {
    fn transport(&mut self) -> &mut Transport {
        &mut self.transport
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        self.handle_text(text, ctx);
    }

    /// The client's close is answered once its leave is recorded (as an
    /// explicit `leave` is), so a nickname is free everywhere once the close
    /// is acknowledged. Bounded: a store outage delays the answer by at most
    /// 2 × `STORE_TIMEOUT_MS`, never withholds it.
    fn on_closing(&mut self, ctx: &mut Context<Self>) -> Option<Released> {
        let recorded = self.release(ctx)?;
        let wait = self.cx.limits.store_timeout * 2;
        Some(Box::pin(async move {
            let _ = tokio::time::timeout(wait, recorded).await;
        }))
    }
}

impl ChatSession {
    /// Gives up the room this connection is in, once: the connection is
    /// ending. A join still in flight is cleaned up by the room: its
    /// `Joined` event finds this mailbox closed (or the session no longer
    /// joining) and the room removes the member. Returns, when a room was
    /// left, what completes once the room has recorded the leave.
    fn release(&mut self, ctx: &mut Context<Self>) -> Option<oneshot::Receiver<()>> {
        self.join_settled(ctx);
        self.queued.clear();
        let current = self.current.take()?;
        if current.room.connected() {
            let (done, recorded) = oneshot::channel();
            current.room.do_send(Leave {
                socket_id: self.id.clone(),
                done: Some(done),
            });
            Some(recorded)
        } else {
            self.remove_membership_directly(current.room_id);
            None
        }
    }

    /// With its room actor gone, nobody else will record this leave: do it
    /// here so counts stay right (the next actor reads the store).
    fn remove_membership_directly(&self, room_id: RoomId) {
        let store = self.cx.store.clone();
        let id = self.id.clone();
        actix_web::rt::spawn(async move {
            if let Err(e) = store.remove_member(room_id, &id).await {
                log::warn!(
                    socket = id.as_str(),
                    room = room_id.get();
                    "could not remove {id} from failed room {room_id}: {}",
                    Chain(&e)
                );
            }
        });
    }

    fn in_room(&self, room_id: RoomId) -> bool {
        self.current.as_ref().is_some_and(|c| c.room_id == room_id)
    }
}

impl Handler<SessionEvent> for ChatSession {
    type Result = ();

    fn handle(&mut self, event: SessionEvent, ctx: &mut Self::Context) {
        self.in_handler = true;
        self.handle_event(event, ctx);
        self.in_handler = false;
    }
}

impl ChatSession {
    fn handle_event(&mut self, event: SessionEvent, ctx: &mut Context<Self>) {
        match event {
            SessionEvent::Frames { room_id, wire } => {
                // While an explicit leave is being recorded the connection
                // is still a member: what the room sends before it records
                // the leave (the echo or the error of a chat sent just
                // before `leave`) reaches the client before `left`.
                if self.in_room(room_id) || self.leaving == Some(room_id) {
                    self.send(wire, ctx);
                }
            }
            SessionEvent::Joined {
                room_id,
                room,
                frame,
            } => {
                if self.joining == Some(room_id) {
                    // One room at a time: the old room is left only now
                    // that the new one has accepted (a rejoin of the room
                    // this connection is in leaves nothing).
                    if !self.in_room(room_id) {
                        self.leave_current(ctx);
                    }
                    self.send(frame, ctx);
                    self.current = Some(CurrentRoom { room_id, room });
                    self.lobby_since = None;
                    self.join_settled(ctx);
                    self.replay_queued(ctx);
                } else if !self.in_room(room_id) {
                    // Stale: give the seat back (unless it is the seat this
                    // connection holds: a late answer to a rejoin).
                    room.do_send(Leave {
                        socket_id: self.id.clone(),
                        done: None,
                    });
                }
            }
            SessionEvent::JoinFailed { room_id, frame } => {
                if self.joining == Some(room_id) {
                    self.join_failed(frame, ctx);
                }
            }
            SessionEvent::Evicted {
                room_id,
                code,
                reason,
            } => {
                if self.in_room(room_id) {
                    self.current = None;
                    self.close(ctx, code, reason);
                }
            }
            SessionEvent::LeaveRecorded { room_id, reference } => {
                if self.leaving == Some(room_id) {
                    let reference = reference.as_deref();
                    self.send(ServerFrame::Left { room_id, reference }.to_wire(), ctx);
                    self.leaving = None;
                    self.replay_queued(ctx);
                }
            }
            SessionEvent::RoomGone { room_id, reference } => {
                if self.in_room(room_id) {
                    self.room_failed(reference, ctx);
                } else {
                    let e = ChatError::unavailable(format!("room {room_id} is closed; not stored"));
                    self.send_error(ctx, &e, reference.as_deref());
                }
            }
            SessionEvent::ServerShutdown => {
                self.current = None;
                self.close(ctx, CloseCode::Away, "server shutting down");
            }
            SessionEvent::Heartbeat => {
                if !self.close_if_idle_in_lobby(ctx) {
                    Transport::heartbeat(self, ctx);
                }
            }
        }
    }
}
