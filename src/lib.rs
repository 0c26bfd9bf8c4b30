//! A chat server on the actix actor model.
//!
//! Module map, following one chat message from a socket to the other
//! sockets (dependencies run one way: [`startup`] → [`http`] → [`actors`] →
//! [`store`], [`domain`]; [`ws`], [`protocol`], [`rate_limit`],
//! [`client_addr`] and [`error`] are leaves the layers above use):
//! - [`http::ws`] takes `GET /ws` upgrades over from actix-http and starts a
//!   [`actors::session::ChatSession`], one actor per socket, which drives
//!   its socket through [`ws`] (handshake, framing, bounded queues), parses
//!   frames ([`protocol`]) into validated commands ([`domain`]), applies the
//!   rate limit ([`rate_limit`]) and the heartbeat, and keeps the
//!   connection's state (lobby, joining, in a room). Sessions reach the rest
//!   of the server only through their [`actors::context::SessionContext`].
//! - [`actors::room_manager::RoomManager`], one per process, finds or
//!   starts the [`actors::room::RoomActor`] of a room and runs the empty-room
//!   sweep and shutdown.
//! - [`actors::room::RoomActor`], one per room with members here, queues
//!   chats and stores them in batches through the [`store`], one store write
//!   at a time; a stored batch is published on the bus
//!   ([`actors::bus::RedisBridge`], when there is a cluster) and
//!   enters the room's sequencer, where batches other processes published
//!   enter too; what the sequencer releases, every id once and in order, is
//!   framed once and fanned out to the members' sessions.
//! - [`store`] is the persistence contract with two implementations
//!   (embedded memory, MySQL); [`http::rooms`] serves the REST API from the
//!   store and the room actors.
//! - [`events`] (with `AMQP_URL`): the store records each change's domain
//!   events with the change itself (MySQL: the `chatEventOutbox` table in
//!   the same transaction; memory: a bounded queue under the store's lock),
//!   and one relay per database publishes them to RabbitMQ's `chat.events`
//!   with publisher confirms.
//! - [`telemetry`] holds the process's Prometheus series (`GET /metrics`);
//!   the parts above count into handles registered once at start-up.
//! - [`config`] reads every setting from the environment, [`startup`] wires
//!   it all together, [`error`] maps failures to the contract's codes.
//! - [`logging`] writes the `log` records as text or JSON lines
//!   (`LOG_FORMAT`); [`http`]'s access log adds one line per REST request.

// The library's public surface is what the binary and the test suites use:
// the settings, the application, the store contract and the domain types.
// Everything else is the crate's own, so the compiler reports dead code.
pub mod config;
pub mod domain;
pub mod events;
pub mod logging;
pub mod startup;
pub mod store;

pub(crate) mod actors;
pub(crate) mod client_addr;
pub(crate) mod connections;
pub(crate) mod error;
pub(crate) mod fd_limit;
pub(crate) mod http;
pub(crate) mod instance_lock;
pub(crate) mod protocol;
pub(crate) mod rate_limit;
pub(crate) mod telemetry;
pub(crate) mod ws;

/// Entry points for the fuzz targets (`fuzz/`): the parsers of untrusted
/// input, each with its invariants checked. Not an API of the server.
#[doc(hidden)]
pub mod fuzzing;

/// Prints an error with its whole chain of causes (the binary's last words).
pub use error::Chain;
/// The headers every HTTP response carries (the nginx site's test checks
/// that nginx sets the same on the files it serves).
pub use http::SECURITY_HEADERS;
