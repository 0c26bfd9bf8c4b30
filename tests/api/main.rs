//! Integration tests: the real server on a random port, driven over HTTP
//! and WebSocket, in both store modes.

mod helpers;
#[path = "../common/wait.rs"]
mod wait;

mod backpressure;
mod concurrency;
mod connections;
mod limits;
mod metrics;
mod protocol_errors;
mod replies;
mod rest;
mod room_list;
mod rooms;
mod transport;
mod websocket;
