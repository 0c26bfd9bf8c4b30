//! The actors. A chat message enters at a [`session::ChatSession`] (one per
//! WebSocket), goes to its [`room::RoomActor`] (one per live room), which
//! stores it, publishes the stored batch on the [`bus::RedisBridge`]
//! (the cluster bus, when there is one) and passes it through its sequencer,
//! where the batches other processes publish come in too; the sequencer
//! releases every id once, in order, to the sessions of the room's members.
//! The [`room_manager::RoomManager`] (one per process) finds or starts room
//! actors and owns what outlives them: the empty-room sweep and shutdown.
//! Sessions see the rest of the server through one
//! [`context::SessionContext`]; [`open_sessions`] is the registry the
//! heartbeat and shutdown walk.

pub mod bus;
pub mod context;
pub mod open_sessions;
pub mod room;
pub mod room_manager;
pub mod session;
pub mod slices;
