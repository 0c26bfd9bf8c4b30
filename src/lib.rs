//! A chat server on the actix actor model.
//!
//! Module map (follow one chat message top to bottom):
//! - [`http::ws`] takes `GET /ws` upgrades over from actix-http and starts a
//!   [`actors::session::ChatSession`], one actor per socket, which drives
//!   the socket through [`ws`] (handshake, framing, bounded queues); it
//!   parses frames ([`protocol`]) into validated
//!   commands ([`domain`]), applies the rate limit ([`rate_limit`]) and the
//!   heartbeat, and keeps the connection's state (lobby, joining, in a room).
//! - [`actors::room_manager::RoomManager`], one per process, finds or
//!   starts the [`actors::room::RoomActor`] of a room and runs the empty-room
//!   sweep and shutdown.
//! - [`actors::room::RoomActor`], one per room with members here, owns the
//!   member list, the recent history and the message sequence: it stores
//!   each batch of chats through the [`store`] and only then fans the
//!   serialized frames out to its members' sessions.
//! - [`store`] is the persistence contract with two implementations
//!   (embedded memory, MySQL); [`http::rooms`] serves the REST API from the
//!   store and the room actors.
//! - [`config`] reads every setting from the environment, [`startup`] wires
//!   it all together, [`error`] maps failures to the contract's codes.

pub mod actors;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod protocol;
pub mod rate_limit;
pub mod startup;
pub mod store;
pub mod ws;
