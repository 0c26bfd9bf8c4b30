//! Integration tests: the real server on a random port, driven over HTTP
//! and WebSocket, in both store modes.

mod backpressure;
mod concurrency;
mod helpers;
mod protocol_errors;
mod rest;
mod rooms;
mod transport;
mod websocket;
