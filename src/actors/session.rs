//! `ChatSession`: one actor per WebSocket. It parses client frames into
//! commands (via `protocol.rs`), keeps the connection's state (lobby,
//! joining, in a room), enforces the per-connection rate limit and the
//! heartbeat, and writes the frames its room sends it.
//!
//! Backpressure: the session's mailbox is bounded
//! (`SESSION_QUEUE_CAPACITY`). actix-http polls this actor only while the
//! socket can take more bytes, so a client that stops reading stops the
//! mailbox from draining; the room then finds it full and closes the
//! session as a slow consumer instead of buffering without bound.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web_actors::ws::{self, CloseCode, CloseReason, ProtocolError, WebsocketContext};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use super::room::{Chat, Join, Leave, RoomActor, RoomClosing};
use super::room_manager::GetRoom;
use crate::domain::{self, Nickname, RoomId};
use crate::error::ChatError;
use crate::protocol::{error_frame, parse_client_frame, ClientCommand, ClientFrame, ServerFrame};
use crate::rate_limit::TokenBucket;
use crate::startup::AppState;

/// Client frames held while a join is in progress; beyond this a client is
/// sending faster than any chat needs.
const MAX_QUEUED_WHILE_JOINING: usize = 64;
/// How often a join is retried when it races the room actor's shutdown.
const MAX_JOIN_ATTEMPTS: u32 = 20;

/// What a room (or the manager) tells a session.
#[derive(Message)]
#[rtype(result = "()")]
pub enum SessionEvent {
    /// Frames of `room_id`, in order; shared bytes, serialized once.
    Frames {
        room_id: RoomId,
        frames: Arc<[ByteString]>,
    },
    /// The join succeeded; `frame` is the `joined` frame.
    Joined {
        room_id: RoomId,
        room: Addr<RoomActor>,
        frame: ByteString,
    },
    /// The join failed; `frame` is the `error` frame.
    JoinFailed { room_id: RoomId, frame: ByteString },
    /// Removed from `room_id` by the room (too slow a reader, or the
    /// membership was lost): close the socket with `code`.
    Evicted {
        room_id: RoomId,
        code: CloseCode,
        reason: &'static str,
    },
    /// The server is shutting down.
    ServerShutdown,
}

/// The room a connection is in.
struct CurrentRoom {
    room_id: RoomId,
    room: Addr<RoomActor>,
}

/// One WebSocket connection.
pub struct ChatSession {
    id: String,
    app: Arc<AppState>,
    peer: Option<IpAddr>,
    /// The room this connection is in. A join keeps it until the new room
    /// has accepted the member, so a failed join changes nothing.
    current: Option<CurrentRoom>,
    /// The room a `join`/`create` in flight is for (0 while the room of a
    /// `create` is being made).
    joining: Option<RoomId>,
    /// The room an explicit `leave` in flight is for: its `left` waits
    /// until the room has recorded the leave.
    leaving: Option<RoomId>,
    /// Counts join attempts, so a watchdog can tell its join from a later one.
    join_attempt: u64,
    last_heard: Instant,
    rate: TokenBucket,
    /// Frames received while a join is in progress, replayed after it.
    queued: VecDeque<ClientFrame>,
    /// A fragmented text message being reassembled.
    fragments: Option<BytesMut>,
}

impl ChatSession {
    /// A session for a freshly upgraded socket.
    pub fn new(id: String, app: Arc<AppState>, peer: Option<IpAddr>) -> Self {
        let s = &app.settings;
        let rate = TokenBucket::new(s.ws_rate_per_sec, s.ws_rate_burst);
        ChatSession {
            id,
            app,
            peer,
            current: None,
            joining: None,
            leaving: None,
            join_attempt: 0,
            last_heard: Instant::now(),
            rate,
            queued: VecDeque::new(),
            fragments: None,
        }
    }

    fn send_error(&self, ctx: &mut WebsocketContext<Self>, e: &ChatError, reference: Option<&str>) {
        ctx.text(error_frame(e, reference));
    }

    fn close(&self, ctx: &mut WebsocketContext<Self>, code: CloseCode, why: &str) {
        ctx.close(Some(CloseReason {
            code,
            description: Some(why.to_owned()),
        }));
        ctx.stop();
    }

    /// Handles one complete text message from the client.
    fn on_text(&mut self, text: &str, ctx: &mut WebsocketContext<Self>) {
        let parsed = parse_client_frame(text, &self.app.settings.limits);
        if !self.rate.try_take() {
            // The reply still carries the frame's `ref` when it has one.
            let reference = match &parsed {
                Ok(frame) => frame.reference.as_deref(),
                Err(rejected) => rejected.reference.as_deref(),
            };
            let e = ChatError::RateLimited("too many frames; slow down".into());
            self.send_error(ctx, &e, reference);
            return;
        }
        match parsed {
            Ok(frame) => self.on_frame(frame, ctx),
            Err(rejected) => self.send_error(ctx, &rejected.error, rejected.reference.as_deref()),
        }
    }

    fn on_frame(&mut self, frame: ClientFrame, ctx: &mut WebsocketContext<Self>) {
        if self.busy() && frame.command != ClientCommand::Ping {
            if self.queued.len() >= MAX_QUEUED_WHILE_JOINING {
                let e = ChatError::RateLimited("too many frames while joining".into());
                self.send_error(ctx, &e, frame.reference.as_deref());
            } else {
                self.queued.push_back(frame);
            }
            return;
        }
        let reference = frame.reference;
        match frame.command {
            ClientCommand::Ping => ctx.text(
                ServerFrame::Pong {
                    reference: reference.as_deref(),
                }
                .to_text(),
            ),
            ClientCommand::Chat { content } => match &self.current {
                Some(current) if current.room.connected() => current.room.do_send(Chat {
                    session_id: self.id.clone(),
                    content,
                    reference,
                }),
                Some(current) => {
                    // The room's actor failed (a panic ends only that actor;
                    // the manager starts a fresh one on the next join). This
                    // connection is no longer in a room: say so.
                    let room_id = current.room_id;
                    log::error!("session {}: room {room_id} actor is gone", self.id);
                    self.current = None;
                    self.remove_membership_directly(room_id);
                    ctx.text(
                        ServerFrame::Left {
                            room_id,
                            reference: None,
                        }
                        .to_text(),
                    );
                    let e = ChatError::Unavailable(format!("room {room_id} failed"));
                    self.send_error(ctx, &e, reference.as_deref());
                }
                None => self.send_error(ctx, &ChatError::NotInRoom, reference.as_deref()),
            },
            ClientCommand::Leave => self.leave_and_confirm(reference, ctx),
            ClientCommand::Join { room_id, nickname } => {
                // Rejoining the room you are in: leave first, or the join
                // would collide with your own nickname.
                if self.current.as_ref().is_some_and(|c| c.room_id == room_id) {
                    self.leave_current(ctx);
                }
                self.begin_join(room_id, nickname, reference, 1, ctx);
            }
            ClientCommand::Create { title, nickname } => {
                let allowed = self
                    .peer
                    .is_none_or(|ip| self.app.room_create_limiter.try_take(&ip));
                if !allowed {
                    let e = ChatError::RateLimited("too many rooms created; wait a moment".into());
                    self.send_error(ctx, &e, reference.as_deref());
                    return;
                }
                self.joining = Some(0);
                let store = self.app.store.clone();
                let fut = async move { store.create_room(&title, domain::now()).await };
                ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
                    Ok(room) => act.begin_join(room.id, nickname, reference, 1, ctx),
                    Err(e) => act.join_failed(error_frame(&e.into(), reference.as_deref()), ctx),
                }));
            }
        }
    }

    /// An explicit `leave`: `left` is sent once the room has recorded it, so
    /// the client that reads `left` and then asks the REST API no longer
    /// finds itself listed. Frames sent meanwhile wait, as during a join.
    fn leave_and_confirm(&mut self, reference: Option<String>, ctx: &mut WebsocketContext<Self>) {
        let Some(CurrentRoom { room_id, room }) = self.current.take() else {
            self.send_error(ctx, &ChatError::NotInRoom, reference.as_deref());
            return;
        };
        let (done, recorded) = tokio::sync::oneshot::channel();
        room.do_send(Leave {
            session_id: self.id.clone(),
            done: Some(done),
        });
        self.leaving = Some(room_id);
        // Bounded: a store outage delays `left`, it never withholds it.
        let wait = self.app.settings.store_timeout * 2;
        let fut = async move {
            let _ = tokio::time::timeout(wait, recorded).await;
        };
        ctx.spawn(fut.into_actor(self).map(move |(), act, ctx| {
            let reference = reference.as_deref();
            ctx.text(ServerFrame::Left { room_id, reference }.to_text());
            act.leaving = None;
            act.replay_queued(ctx);
        }));
    }

    /// A join or an explicit leave is in flight: client frames wait.
    fn busy(&self) -> bool {
        self.joining.is_some() || self.leaving.is_some()
    }

    /// Leaves the current room, if any, as part of joining one: `left`
    /// (without `ref`, which belongs to the join) goes out at once, with no
    /// wait for the room to record it (see `leave_and_confirm`).
    fn leave_current(&mut self, ctx: &mut WebsocketContext<Self>) {
        let Some(CurrentRoom { room_id, room }) = self.current.take() else {
            return;
        };
        room.do_send(Leave {
            session_id: self.id.clone(),
            done: None,
        });
        ctx.text(
            ServerFrame::Left {
                room_id,
                reference: None,
            }
            .to_text(),
        );
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
        ctx: &mut WebsocketContext<Self>,
    ) {
        self.joining = Some(room_id);
        self.join_attempt += 1;
        let this_attempt = self.join_attempt;
        let manager = self.app.manager.clone();
        let join = Join {
            session_id: self.id.clone(),
            nickname: nickname.clone(),
            outbox: ctx.address().recipient(),
            reference: reference.clone(),
        };
        let fut = async move {
            let room = manager.send(GetRoom { room_id }).await?;
            Ok::<_, MailboxError>(room.send(join).await)
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let retry = match res {
                Ok(Ok(Ok(()))) => {
                    // The outcome arrives as a SessionEvent. Should the room
                    // die before answering, do not leave the client (and its
                    // queued frames) waiting forever.
                    let wait = act.app.settings.store_timeout * 3;
                    ctx.run_later(wait, move |act, ctx| {
                        if act.join_attempt == this_attempt && act.joining == Some(room_id) {
                            let e =
                                ChatError::Unavailable(format!("room {room_id} did not answer"));
                            act.join_failed(error_frame(&e, reference.as_deref()), ctx);
                        }
                    });
                    return;
                }
                Ok(Ok(Err(RoomClosing))) | Ok(Err(_)) => true,
                Err(_) => false,
            };
            if retry && attempt < MAX_JOIN_ATTEMPTS {
                ctx.run_later(
                    std::time::Duration::from_millis(5 * attempt as u64),
                    move |act, ctx| act.begin_join(room_id, nickname, reference, attempt + 1, ctx),
                );
            } else {
                let e = ChatError::Unavailable(format!("room {room_id} did not answer the join"));
                act.join_failed(error_frame(&e, reference.as_deref()), ctx);
            }
        }));
    }

    fn join_failed(&mut self, frame: ByteString, ctx: &mut WebsocketContext<Self>) {
        ctx.text(frame);
        self.joining = None;
        self.replay_queued(ctx);
    }

    /// Handles the frames that arrived while joining, in order, until one
    /// of them starts another join.
    fn replay_queued(&mut self, ctx: &mut WebsocketContext<Self>) {
        while !self.busy() {
            let Some(frame) = self.queued.pop_front() else {
                break;
            };
            self.on_frame(frame, ctx);
        }
    }

    fn heartbeat(&mut self, ctx: &mut WebsocketContext<Self>) {
        if self.last_heard.elapsed() > self.app.settings.client_timeout {
            log::debug!("session {}: heartbeat timeout", self.id);
            ctx.stop();
        } else {
            ctx.ping(b"");
        }
    }

    fn on_binary_or_text_fragment(&mut self, item: Item, ctx: &mut WebsocketContext<Self>) {
        let max = self.app.settings.max_frame_bytes;
        let (chunk, last): (Bytes, bool) = match item {
            Item::FirstText(b) => {
                self.fragments = Some(BytesMut::new());
                (b, false)
            }
            Item::FirstBinary(_) => {
                return self.close(
                    ctx,
                    CloseCode::Unsupported,
                    "binary frames are not supported",
                )
            }
            Item::Continue(b) => (b, false),
            Item::Last(b) => (b, true),
        };
        let Some(buf) = self.fragments.as_mut() else {
            return self.close(
                ctx,
                CloseCode::Protocol,
                "continuation without a first frame",
            );
        };
        if buf.len() + chunk.len() > max {
            return self.close(ctx, CloseCode::Size, "message too big");
        }
        buf.extend_from_slice(&chunk);
        if last {
            let whole = self.fragments.take().unwrap_or_default();
            match std::str::from_utf8(&whole) {
                Ok(text) => self.on_text(text, ctx),
                Err(_) => self.close(ctx, CloseCode::Invalid, "text is not UTF-8"),
            }
        }
    }
}

impl Actor for ChatSession {
    type Context = WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.app.settings.session_queue_capacity);
        ctx.run_interval(self.app.settings.heartbeat_interval, |act, ctx| {
            act.heartbeat(ctx)
        });
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        // A join still in flight is cleaned up by the room: its `Joined`
        // event finds this mailbox closed and the room removes the member.
        if let Some(current) = self.current.take() {
            if current.room.connected() {
                current.room.do_send(Leave {
                    session_id: self.id.clone(),
                    done: None,
                });
            } else {
                self.remove_membership_directly(current.room_id);
            }
        }
        Running::Stop
    }
}

impl ChatSession {
    /// With its room actor gone, nobody else will record this leave: do it
    /// here so counts stay right (the next actor reads the store).
    fn remove_membership_directly(&self, room_id: RoomId) {
        let store = self.app.store.clone();
        let id = self.id.clone();
        actix_web::rt::spawn(async move {
            if let Err(e) = store.remove_member(room_id, &id).await {
                log::warn!("could not remove {id} from failed room {room_id}: {e}");
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
        match event {
            SessionEvent::Frames { room_id, frames } => {
                if self.in_room(room_id) {
                    for frame in frames.iter() {
                        ctx.text(frame.clone());
                    }
                }
            }
            SessionEvent::Joined {
                room_id,
                room,
                frame,
            } => {
                if self.joining == Some(room_id) {
                    // One room at a time: the old room is left only now
                    // that the new one has accepted.
                    self.leave_current(ctx);
                    ctx.text(frame);
                    self.current = Some(CurrentRoom { room_id, room });
                    self.joining = None;
                    self.replay_queued(ctx);
                } else {
                    // Stale: give the seat back.
                    room.do_send(Leave {
                        session_id: self.id.clone(),
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
            SessionEvent::ServerShutdown => {
                self.current = None;
                self.close(ctx, CloseCode::Away, "server shutting down");
            }
        }
    }
}

impl StreamHandler<Result<ws::Message, ProtocolError>> for ChatSession {
    fn handle(&mut self, item: Result<ws::Message, ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match item {
            Ok(ws::Message::Text(text)) => self.on_text(&text, ctx),
            Ok(ws::Message::Binary(_)) => self.close(
                ctx,
                CloseCode::Unsupported,
                "binary frames are not supported",
            ),
            Ok(ws::Message::Continuation(item)) => self.on_binary_or_text_fragment(item, ctx),
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(ProtocolError::Overflow) => self.close(ctx, CloseCode::Size, "frame too large"),
            Err(e) => {
                log::debug!("session {}: protocol error: {e}", self.id);
                self.close(ctx, CloseCode::Protocol, "protocol error");
            }
        }
    }
}
