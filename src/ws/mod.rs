//! Our WebSocket transport. actix-http answers every other request; a
//! WebSocket upgrade is handed to us with the bare socket (see `http::ws`),
//! and from then on [`handshake`], [`frame`] and [`transport`] are all that
//! stands between a session actor and its TCP connection. This is where a
//! connection's memory and its write syscalls are decided: see
//! `transport.rs` for why it is not actix-http's WebSocket stream.

pub mod frame;
pub mod handshake;
pub mod origin;
pub mod transport;

pub use frame::CloseCode;
pub use transport::{Released, Transport, TransportLimits, WsActor};
