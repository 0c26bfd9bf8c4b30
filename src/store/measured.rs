//! `MeasuredStore`: any store, with the latency of each call recorded in
//! the `chat_store_call_seconds` histogram under its operation (see
//! `telemetry.rs`). A decorator, so neither store knows about metrics and
//! every caller (rooms, sessions, REST, the bus's reaper, `/health`) is
//! measured the same way. Failed and timed-out calls are recorded too: an
//! operator looking at a slow store wants to see those most.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    JoinOutcome, LeaveOutcome, MemberRecord, NewMember, NewMessage, RemovedMember, SharedStore,
    Store, StoreError, StoreKind,
};
use crate::domain::{Member, Message, MessageSeq, Room, RoomId, RoomTitle, SocketId};
use crate::telemetry::{Metrics, StoreOp};

/// A store whose calls are timed.
pub struct MeasuredStore {
    inner: SharedStore,
    metrics: Arc<Metrics>,
}

impl MeasuredStore {
    pub fn new(inner: SharedStore, metrics: Arc<Metrics>) -> Self {
        MeasuredStore { inner, metrics }
    }

    async fn timed<T>(&self, op: StoreOp, call: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let result = call.await;
        self.metrics.store_call(op, started.elapsed());
        result
    }
}

#[async_trait]
impl Store for MeasuredStore {
    fn kind(&self) -> StoreKind {
        self.inner.kind()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed(StoreOp::Ping, self.inner.ping()).await
    }

    async fn create_room(
        &self,
        title: &RoomTitle,
        created: DateTime<Utc>,
    ) -> Result<Room, StoreError> {
        let call = self.inner.create_room(title, created);
        self.timed(StoreOp::CreateRoom, call).await
    }

    async fn room(&self, id: RoomId) -> Result<Option<Room>, StoreError> {
        self.timed(StoreOp::Room, self.inner.room(id)).await
    }

    async fn rooms(&self, before: Option<RoomId>, limit: usize) -> Result<Vec<Room>, StoreError> {
        self.timed(StoreOp::Rooms, self.inner.rooms(before, limit))
            .await
    }

    async fn add_member(
        &self,
        room_id: RoomId,
        member: &NewMember,
    ) -> Result<JoinOutcome, StoreError> {
        let call = self.inner.add_member(room_id, member);
        self.timed(StoreOp::AddMember, call).await
    }

    async fn remove_member(
        &self,
        room_id: RoomId,
        socket_id: &SocketId,
    ) -> Result<LeaveOutcome, StoreError> {
        let call = self.inner.remove_member(room_id, socket_id);
        self.timed(StoreOp::RemoveMember, call).await
    }

    async fn member_records(&self, room_id: RoomId) -> Result<Vec<MemberRecord>, StoreError> {
        let call = self.inner.member_records(room_id);
        self.timed(StoreOp::MemberRecords, call).await
    }

    async fn members(&self, room_id: RoomId) -> Result<Vec<Member>, StoreError> {
        self.timed(StoreOp::Members, self.inner.members(room_id))
            .await
    }

    async fn instances_with_members(&self) -> Result<Vec<String>, StoreError> {
        let call = self.inner.instances_with_members();
        self.timed(StoreOp::InstancesWithMembers, call).await
    }

    async fn append_messages(
        &self,
        room_id: RoomId,
        batch: &[NewMessage],
    ) -> Result<Vec<Message>, StoreError> {
        let call = self.inner.append_messages(room_id, batch);
        self.timed(StoreOp::AppendMessages, call).await
    }

    async fn messages_after(
        &self,
        room_id: RoomId,
        after: MessageSeq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let call = self.inner.messages_after(room_id, after, limit);
        self.timed(StoreOp::MessagesAfter, call).await
    }

    async fn recent_messages(
        &self,
        room_id: RoomId,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let call = self.inner.recent_messages(room_id, limit);
        self.timed(StoreOp::RecentMessages, call).await
    }

    async fn delete_unjoined_rooms(
        &self,
        created_before: DateTime<Utc>,
    ) -> Result<Vec<RoomId>, StoreError> {
        let call = self.inner.delete_unjoined_rooms(created_before);
        self.timed(StoreOp::DeleteUnjoinedRooms, call).await
    }

    async fn remove_instance_members(
        &self,
        instance_id: &str,
    ) -> Result<Vec<RemovedMember>, StoreError> {
        let call = self.inner.remove_instance_members(instance_id);
        self.timed(StoreOp::RemoveInstanceMembers, call).await
    }

    async fn remove_all_members(&self) -> Result<Vec<RemovedMember>, StoreError> {
        let call = self.inner.remove_all_members();
        self.timed(StoreOp::RemoveAllMembers, call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[actix_rt::test]
    async fn each_call_is_recorded_under_its_operation_and_answered_unchanged() {
        let metrics = Arc::new(Metrics::new());
        let store = MeasuredStore::new(Arc::new(MemoryStore::new(10)), metrics.clone());
        let title =
            RoomTitle::parse("lobby", &crate::domain::TextLimits::default()).expect("a title");
        let room = store
            .create_room(&title, Utc::now())
            .await
            .expect("created");
        assert_eq!(store.room(room.id).await.expect("read"), Some(room));
        assert!(store
            .room(RoomId::new(999_999))
            .await
            .expect("read")
            .is_none());
        let text = metrics.render(0);
        let count = |op: &str| {
            let series = format!("chat_store_call_seconds_count{{operation=\"{op}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .map(|v| v.trim().to_owned())
        };
        assert_eq!(count("create_room").as_deref(), Some("1"), "{text}");
        assert_eq!(count("room").as_deref(), Some("2"), "{text}");
        assert_eq!(count("ping").as_deref(), Some("0"), "{text}");
    }
}
