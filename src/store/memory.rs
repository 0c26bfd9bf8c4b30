//! The embedded store: everything in one process's memory, behind one mutex.
//! The lock is held only for the few map operations of a call and never
//! across an `.await`, so it is as atomic as a MySQL transaction and as
//! cheap as a hash lookup. History per room is capped (`MEMORY_HISTORY_LIMIT`)
//! so a long-lived busy room cannot grow the process without bound.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    JoinOutcome, LeaveOutcome, MemberRecord, NewMember, NewMessage, RemovedMember, Store,
    StoreError, StoreKind,
};
use crate::domain::{Member, Message, MessageSeq, Room, RoomId, RoomTitle, SocketId};

struct StoredMember {
    member: Member,
    join_seq: u64,
    socket_id: SocketId,
    instance_id: String,
}

struct StoredRoom {
    room: Room,
    members: Vec<StoredMember>,
    messages: VecDeque<Message>,
    last_seq: MessageSeq,
}

#[derive(Default)]
struct Inner {
    next_room_id: u64,
    next_join_seq: u64,
    rooms: BTreeMap<RoomId, StoredRoom>,
}

/// In-memory implementation of [`Store`].
pub struct MemoryStore {
    inner: Mutex<Inner>,
    history_limit: usize,
}

impl MemoryStore {
    /// `history_limit` bounds the messages kept per room (oldest dropped).
    pub fn new(history_limit: usize) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner {
                next_room_id: 1,
                next_join_seq: 1,
                rooms: BTreeMap::new(),
            }),
            history_limit: history_limit.max(1),
        }
    }

    /// Reads one room under the lock; `RoomNotFound` if it does not exist.
    fn read_room<T>(
        &self,
        room_id: RoomId,
        read: impl FnOnce(&StoredRoom) -> T,
    ) -> Result<T, StoreError> {
        let inner = self.lock();
        let room = inner
            .rooms
            .get(&room_id)
            .ok_or(StoreError::RoomNotFound(room_id))?;
        Ok(read(room))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied change
        // (every mutation is a few infallible map operations), so a poisoned
        // lock is still consistent and we keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Removes the member at `index` of `room_id`, deleting the room when it
    /// was the last one.
    fn remove_at(&mut self, room_id: RoomId, index: usize) -> RemovedMember {
        let mut deleted = false;
        let mut nickname = String::new();
        let mut socket_id = SocketId::from("");
        if let Some(room) = self.rooms.get_mut(&room_id) {
            let gone = room.members.remove(index);
            nickname = gone.member.nickname;
            socket_id = gone.socket_id;
            room.room.member_count = room.members.len() as u32;
            deleted = room.members.is_empty();
        }
        if deleted {
            self.rooms.remove(&room_id);
        }
        RemovedMember {
            room_id,
            nickname,
            socket_id,
            room_deleted: deleted,
        }
    }

    fn remove_where(&mut self, keep: impl Fn(&StoredMember) -> bool) -> Vec<RemovedMember> {
        let doomed: Vec<(RoomId, SocketId)> = self
            .rooms
            .iter()
            .flat_map(|(id, r)| {
                r.members
                    .iter()
                    .filter(|m| !keep(m))
                    .map(move |m| (*id, m.socket_id.clone()))
            })
            .collect();
        doomed
            .into_iter()
            .filter_map(|(room_id, socket)| {
                let index = self
                    .rooms
                    .get(&room_id)?
                    .members
                    .iter()
                    .position(|m| m.socket_id == socket)?;
                Some(self.remove_at(room_id, index))
            })
            .collect()
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Memory
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn create_room(
        &self,
        title: &RoomTitle,
        created: DateTime<Utc>,
    ) -> Result<Room, StoreError> {
        let mut inner = self.lock();
        let id = RoomId::new(inner.next_room_id);
        inner.next_room_id += 1;
        let room = Room {
            id,
            title: title.as_str().to_owned(),
            member_count: 0,
            created,
        };
        inner.rooms.insert(
            id,
            StoredRoom {
                room: room.clone(),
                members: Vec::new(),
                messages: VecDeque::new(),
                last_seq: MessageSeq::ZERO,
            },
        );
        Ok(room)
    }

    async fn room(&self, id: RoomId) -> Result<Option<Room>, StoreError> {
        Ok(self.lock().rooms.get(&id).map(|r| r.room.clone()))
    }

    async fn rooms(&self) -> Result<Vec<Room>, StoreError> {
        Ok(self
            .lock()
            .rooms
            .values()
            .rev()
            .map(|r| r.room.clone())
            .collect())
    }

    async fn add_member(
        &self,
        room_id: RoomId,
        new: &NewMember,
    ) -> Result<JoinOutcome, StoreError> {
        let mut inner = self.lock();
        let join_seq = inner.next_join_seq;
        let room = inner
            .rooms
            .get_mut(&room_id)
            .ok_or(StoreError::RoomNotFound(room_id))?;
        let nickname = new.nickname.as_str();
        if room.members.iter().any(|m| m.member.nickname == nickname) {
            return Err(StoreError::NicknameTaken(nickname.to_owned()));
        }
        let member = Member {
            nickname: nickname.to_owned(),
            joined_at: new.joined_at,
        };
        room.members.push(StoredMember {
            member: member.clone(),
            join_seq,
            socket_id: new.socket_id.clone(),
            instance_id: new.instance_id.clone(),
        });
        room.room.member_count = room.members.len() as u32;
        let room = room.room.clone();
        inner.next_join_seq += 1;
        Ok(JoinOutcome {
            room,
            member,
            join_seq,
        })
    }

    async fn remove_member(
        &self,
        room_id: RoomId,
        socket_id: &SocketId,
    ) -> Result<LeaveOutcome, StoreError> {
        let mut inner = self.lock();
        let Some(room) = inner.rooms.get(&room_id) else {
            return Ok(LeaveOutcome::NotMember);
        };
        let Some(index) = room.members.iter().position(|m| m.socket_id == *socket_id) else {
            return Ok(LeaveOutcome::NotMember);
        };
        let removed = inner.remove_at(room_id, index);
        Ok(if removed.room_deleted {
            LeaveOutcome::RoomDeleted {
                nickname: removed.nickname,
            }
        } else {
            let remaining = inner.rooms.get(&room_id).map_or(0, |r| r.room.member_count);
            LeaveOutcome::Left {
                nickname: removed.nickname,
                remaining,
            }
        })
    }

    async fn member_records(&self, room_id: RoomId) -> Result<Vec<MemberRecord>, StoreError> {
        self.read_room(room_id, |room| {
            room.members
                .iter()
                .map(|m| MemberRecord {
                    member: m.member.clone(),
                    socket_id: m.socket_id.clone(),
                    join_seq: m.join_seq,
                })
                .collect()
        })
    }

    async fn instances_with_members(&self) -> Result<Vec<String>, StoreError> {
        let inner = self.lock();
        let mut ids: Vec<String> = inner
            .rooms
            .values()
            .flat_map(|r| r.members.iter().map(|m| m.instance_id.clone()))
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn append_messages(
        &self,
        room_id: RoomId,
        batch: &[NewMessage],
    ) -> Result<Vec<Message>, StoreError> {
        let mut inner = self.lock();
        let room = inner
            .rooms
            .get_mut(&room_id)
            .ok_or(StoreError::RoomNotFound(room_id))?;
        let mut stored = Vec::with_capacity(batch.len());
        for m in batch {
            room.last_seq = room.last_seq.next();
            let msg = Message {
                id: room.last_seq,
                room_id,
                nickname: m.nickname.clone(),
                content: m.content.clone(),
                sent_at: m.sent_at,
            };
            room.messages.push_back(msg.clone());
            stored.push(msg);
        }
        while room.messages.len() > self.history_limit {
            room.messages.pop_front();
        }
        Ok(stored)
    }

    async fn messages_after(
        &self,
        room_id: RoomId,
        after: MessageSeq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.read_room(room_id, |room| {
            // Ids are consecutive, so the first wanted message's index is known.
            let first_kept = room.messages.front().map_or(1, |m| m.id.get());
            let skip = (after.get() + 1).saturating_sub(first_kept) as usize;
            room.messages
                .iter()
                .skip(skip)
                .take(limit)
                .cloned()
                .collect()
        })
    }

    async fn recent_messages(
        &self,
        room_id: RoomId,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.read_room(room_id, |room| {
            let skip = room.messages.len().saturating_sub(limit);
            room.messages.iter().skip(skip).cloned().collect()
        })
    }

    async fn delete_unjoined_rooms(
        &self,
        created_before: DateTime<Utc>,
    ) -> Result<Vec<RoomId>, StoreError> {
        let mut inner = self.lock();
        let doomed: Vec<RoomId> = inner
            .rooms
            .values()
            .filter(|r| r.members.is_empty() && r.room.created < created_before)
            .map(|r| r.room.id)
            .collect();
        for id in &doomed {
            inner.rooms.remove(id);
        }
        Ok(doomed)
    }

    async fn remove_instance_members(
        &self,
        instance_id: &str,
    ) -> Result<Vec<RemovedMember>, StoreError> {
        Ok(self.lock().remove_where(|m| m.instance_id != instance_id))
    }

    async fn remove_all_members(&self) -> Result<Vec<RemovedMember>, StoreError> {
        Ok(self.lock().remove_where(|_| false))
    }
}
