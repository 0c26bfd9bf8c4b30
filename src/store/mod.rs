//! Persistence behind one trait, so the actors never know which store runs:
//! `memory` (the embedded default: no setup, one process) or `mysql` (durable,
//! shared by every process of a cluster).
//!
//! Invariants every implementation keeps, because the actors rely on them:
//! - **Counts never drift.** `add_member` and `remove_member` change the
//!   member row and the room's `join_member_count` in one transaction.
//! - **Exactly-once deletion.** A room is deleted only inside the transaction
//!   that takes its count to zero (`remove_member`, `remove_instance_members`,
//!   `remove_all_members`) or, for a room nobody ever joined, by
//!   `delete_unjoined_rooms` under the condition `join_member_count = 0`.
//!   Joins lock the same room row, so a join racing a deletion either lands
//!   in the live room or finds no room (`RoomNotFound`), never half of one.
//! - **Per-room sequence.** `append_messages` gives a batch the next
//!   consecutive ids of its room in the transaction that stores it, so ids
//!   are gap-free and increasing per room even with writers on many
//!   processes.

mod measured;
mod memory;
mod mysql;

pub(crate) use measured::MeasuredStore;
pub use memory::{
    first_room_id, message_bytes, MemoryStore, DEFAULT_MAX_BYTES, MESSAGE_OVERHEAD_BYTES,
    ROOM_IDS_PER_MILLI,
};
pub use mysql::{
    connect_creating_database, may_heal, schema_statements, sql_error_may_heal, MySqlStore,
    SWEEP_INDEX, SWEEP_SELECT,
};

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{Member, Message, MessageSeq, Nickname, Room, RoomId, RoomTitle, SocketId};
use crate::error::ChatError;

/// Why a store call failed. Only the first two are the client's doing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("room {0} not found")]
    RoomNotFound(RoomId),
    #[error("nickname {0:?} is taken")]
    NicknameTaken(String),
    /// The backing database failed, or did not answer, during `what` (an
    /// operation such as `"add_member"` or `"connecting"`). The cause is
    /// shared so that one failure can be reported to several callers (the
    /// message writer fails a whole group at once).
    #[error("store unavailable: {what}")]
    Unavailable {
        what: &'static str,
        #[source]
        cause: Arc<dyn Error + Send + Sync>,
    },
}

impl StoreError {
    /// `Unavailable` during `what`, because of `cause`.
    pub fn unavailable(what: &'static str, cause: impl Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable {
            what,
            cause: Arc::new(cause),
        }
    }
}

/// The cause of an `Unavailable` store call that ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no answer within {} ms", .after.as_millis())]
pub struct TimedOut {
    pub after: Duration,
}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::RoomNotFound(id) => ChatError::RoomNotFound(id),
            StoreError::NicknameTaken(n) => ChatError::NicknameTaken(n),
            unavailable @ StoreError::Unavailable { .. } => {
                ChatError::unavailable_because("store call failed", unavailable)
            }
        }
    }
}

/// Which store is running, as `/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    MySql,
}

impl StoreKind {
    /// The name `/health` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::MySql => "mysql",
        }
    }
}

/// A membership about to be stored. `socket_id` names the connection so
/// that a leave removes exactly that connection's row; `instance_id` names
/// the process so that a dead process's members can be reaped.
#[derive(Debug, Clone)]
pub struct NewMember {
    pub nickname: Nickname,
    pub socket_id: SocketId,
    pub instance_id: String,
    pub joined_at: DateTime<Utc>,
}

/// A successful join: the room with its new count, and the member as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOutcome {
    pub room: Room,
    pub member: Member,
    /// The membership's place in the store's join order (increasing across
    /// all rooms), so every process can list members in the same order.
    pub join_seq: u64,
}

/// What a leave did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaveOutcome {
    /// The member left; the room lives on with this many members.
    Left { nickname: String, remaining: u32 },
    /// The member was the last one: the room, its members and its messages
    /// are gone, deleted by this very call (and by no other).
    RoomDeleted { nickname: String },
    /// No such membership (already removed, e.g. by a reaper or a shutdown).
    NotMember,
}

/// One member removed in bulk (shutdown, crash reaping, start-up cleanup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedMember {
    pub room_id: RoomId,
    pub nickname: String,
    /// The connection the membership belonged to, so other processes can
    /// drop exactly that membership.
    pub socket_id: SocketId,
    /// True for the one removal that emptied, and so deleted, its room.
    pub room_deleted: bool,
}

/// A stored membership: the member and the connection it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub member: Member,
    pub socket_id: SocketId,
    /// See [`JoinOutcome::join_seq`].
    pub join_seq: u64,
}

/// A chat message about to be stored; the store assigns its id.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub nickname: String,
    pub content: String,
    pub sent_at: DateTime<Utc>,
}

/// Shared handle to whichever store runs.
pub type SharedStore = std::sync::Arc<dyn Store>;

/// The persistence contract. Every method is one transaction (or one atomic
/// step of the memory store); see the module comment for the invariants.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which implementation this is.
    fn kind(&self) -> StoreKind;

    /// Cheap liveness check for `/health`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Inserts a room with no members.
    async fn create_room(
        &self,
        title: &RoomTitle,
        created: DateTime<Utc>,
    ) -> Result<Room, StoreError>;

    /// One room, if it exists.
    async fn room(&self, id: RoomId) -> Result<Option<Room>, StoreError>;

    /// One page of rooms, newest first (by id, descending): at most
    /// `limit` rooms whose id is below `before` (all rooms when `None`).
    /// The next page is the one before the last id of this one.
    async fn rooms(&self, before: Option<RoomId>, limit: usize) -> Result<Vec<Room>, StoreError>;

    /// Adds a member and increments the count in one transaction.
    /// Errors: `RoomNotFound`, `NicknameTaken` (exact, case-sensitive match).
    async fn add_member(
        &self,
        room_id: RoomId,
        member: &NewMember,
    ) -> Result<JoinOutcome, StoreError>;

    /// Removes the membership of `socket_id` and decrements the count; the
    /// call that takes the count to zero deletes the room.
    async fn remove_member(
        &self,
        room_id: RoomId,
        socket_id: &SocketId,
    ) -> Result<LeaveOutcome, StoreError>;

    /// Members in join order, with the connection each belongs to. The
    /// actors answer member lists from their own state; this is for building
    /// that state when a room actor starts or resynchronizes.
    async fn member_records(&self, room_id: RoomId) -> Result<Vec<MemberRecord>, StoreError>;

    /// Members in join order (`RoomNotFound` if there is no such room).
    async fn members(&self, room_id: RoomId) -> Result<Vec<Member>, StoreError> {
        Ok(self
            .member_records(room_id)
            .await?
            .into_iter()
            .map(|r| r.member)
            .collect())
    }

    /// The instances that hold at least one membership, so survivors can
    /// check each one's liveness.
    async fn instances_with_members(&self) -> Result<Vec<String>, StoreError>;

    /// Stores a batch in order, giving it the room's next consecutive ids.
    /// `RoomNotFound` if the room is gone.
    async fn append_messages(
        &self,
        room_id: RoomId,
        batch: &[NewMessage],
    ) -> Result<Vec<Message>, StoreError>;

    /// Messages with id > `after`, ascending, at most `limit`.
    async fn messages_after(
        &self,
        room_id: RoomId,
        after: MessageSeq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;

    /// The last `limit` messages, ascending.
    async fn recent_messages(
        &self,
        room_id: RoomId,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;

    /// Deletes rooms created before `created_before` that have no members
    /// (the empty-room grace period); returns their ids.
    async fn delete_unjoined_rooms(
        &self,
        created_before: DateTime<Utc>,
    ) -> Result<Vec<RoomId>, StoreError>;

    /// Removes every member that `instance_id` holds (clean shutdown, or a
    /// survivor reaping a dead process), deleting rooms that become empty.
    async fn remove_instance_members(
        &self,
        instance_id: &str,
    ) -> Result<Vec<RemovedMember>, StoreError>;

    /// Removes every member of every instance, deleting the rooms they were
    /// in. Run at start-up by a process configured to run alone: whatever
    /// members the store still holds belong to a previous run that died.
    async fn remove_all_members(&self) -> Result<Vec<RemovedMember>, StoreError>;
}

/// Runs `call` for at most `limit`; past that, it is `Unavailable` during
/// `what`, caused by [`TimedOut`].
pub async fn bounded<T>(
    limit: std::time::Duration,
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::unavailable(what, TimedOut { after: limit })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Chain;

    fn driver_error() -> StoreError {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused by 10.0.0.7");
        StoreError::unavailable("add_member", io)
    }

    #[test]
    fn unavailable_keeps_its_cause() {
        let e = driver_error();
        assert_eq!(e.to_string(), "store unavailable: add_member");
        assert_eq!(
            Chain(&e).to_string(),
            "store unavailable: add_member: refused by 10.0.0.7"
        );
        // Clones share the cause.
        assert_eq!(Chain(&e.clone()).to_string(), Chain(&e).to_string());
    }

    #[test]
    fn a_timeout_says_how_long() {
        let e = StoreError::unavailable(
            "ping",
            TimedOut {
                after: Duration::from_millis(1500),
            },
        );
        assert_eq!(
            Chain(&e).to_string(),
            "store unavailable: ping: no answer within 1500 ms"
        );
    }

    #[test]
    fn chat_error_keeps_the_store_error_as_its_source_but_hides_it() {
        let chat = ChatError::from(driver_error());
        assert_eq!(chat.code(), "unavailable");
        let source = chat.source().expect("the store error is kept");
        assert!(
            matches!(
                source.downcast_ref::<StoreError>(),
                Some(StoreError::Unavailable {
                    what: "add_member",
                    ..
                })
            ),
            "{source:?}"
        );
        assert_eq!(
            Chain(&chat).to_string(),
            "service unavailable: store call failed: store unavailable: add_member: \
             refused by 10.0.0.7"
        );
        assert_eq!(
            chat.to_json(),
            serde_json::json!({
                "code": "unavailable",
                "message": "a backing service is unavailable; please retry shortly",
            })
        );
    }

    #[test]
    fn client_errors_convert_as_before() {
        assert!(matches!(
            ChatError::from(StoreError::RoomNotFound(RoomId::new(4))),
            ChatError::RoomNotFound(id) if id == RoomId::new(4)
        ));
        assert!(matches!(
            ChatError::from(StoreError::NicknameTaken("ann".into())),
            ChatError::NicknameTaken(n) if n == "ann"
        ));
    }
}
