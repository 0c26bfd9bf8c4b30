//! The actors. A chat message enters at a [`session::ChatSession`] (one per
//! WebSocket), goes to its [`room::RoomActor`] (one per live room), which
//! stores it and fans it out to the sessions of its members. The
//! [`room_manager::RoomManager`] (one per process) finds or starts room
//! actors and owns what outlives them: the empty-room sweep and shutdown.

pub mod context;
pub mod open_sessions;
pub mod redis_bridge;
pub mod room;
pub mod room_manager;
pub mod session;
