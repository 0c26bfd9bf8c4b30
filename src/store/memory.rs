//! The embedded store: everything in one process's memory, behind one mutex.
//! The lock is held only for the few map operations of a call and never
//! across an `.await`, so it is as atomic as a MySQL transaction and as
//! cheap as a hash lookup.
//!
//! History is bounded twice, so that neither one busy room nor many of them
//! can grow the process without bound:
//! - per room, the last `MEMORY_HISTORY_LIMIT` messages are kept;
//! - across rooms, the history's accounted bytes (see [`message_bytes`])
//!   stay within `MEMORY_STORE_MAX_BYTES`. **Eviction order:** while over
//!   the budget, the oldest message of the room holding the most bytes is
//!   dropped, again and again. The biggest room pays first because that is
//!   where a flood lands: one client (or 24) filling rooms as fast as allowed
//!   trims its own rooms' history down to the size of the next biggest ones,
//!   while quiet rooms keep theirs. Dropping the globally oldest messages
//!   instead would let a flood wipe every quiet room's history. Rooms and
//!   members are never evicted, only history; a room's ids stay gap-free
//!   (only its oldest messages go), so `messages_after` still works.
//!
//! Room ids are unique across restarts: a store's first id is the start time
//! in milliseconds since the Unix epoch times 1024 (see [`first_room_id`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    JoinOutcome, LeaveOutcome, MemberRecord, NewMember, NewMessage, RemovedMember, Store,
    StoreError, StoreKind,
};
use crate::domain::{Member, Message, MessageSeq, Room, RoomId, RoomTitle, SocketId};
use crate::events::body::DomainEvent;
use crate::events::Events;
use std::sync::Arc;

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
    /// Accounted bytes of `messages` (sum of [`message_bytes`]).
    bytes: usize,
    /// The seq of the room's last domain event (with events on).
    event_seq: u64,
}

/// The default of `MEMORY_STORE_MAX_BYTES`: 256 MiB of history.
pub const DEFAULT_MAX_BYTES: usize = 256 << 20;

/// What one stored message costs besides its text, in bytes: the `Message`
/// itself in the room's `VecDeque` (about 80 bytes on 64-bit targets; a
/// ring buffer's capacity runs up to twice its length, so count it twice)
/// and the allocator's header and rounding on the two strings' heap blocks
/// (about 16 bytes each with glibc malloc). 208 covers that with room to
/// spare; a unit test keeps it above the struct's real size.
pub const MESSAGE_OVERHEAD_BYTES: usize = 208;

/// The bytes a stored message is accounted for: its content and nickname
/// (UTF-8 bytes; cloned strings have no spare capacity) plus the fixed
/// [`MESSAGE_OVERHEAD_BYTES`].
pub fn message_bytes(message: &Message) -> usize {
    message.content.len() + message.nickname.len() + MESSAGE_OVERHEAD_BYTES
}

/// How many room ids each millisecond of the clock reserves: a store
/// started at unix time `t` ms hands out ids from `t × 1024 + 1`.
pub const ROOM_IDS_PER_MILLI: u64 = 1024;

/// The first room id of a store started at `now`: milliseconds since the
/// Unix epoch × [`ROOM_IDS_PER_MILLI`] + 1. A later start begins above
/// every id an earlier run handed out unless that run created more than
/// 1024 rooms per millisecond of its life (about a million a second; room
/// creation is rate limited far below that), so a restart never reuses an
/// id. Ids stay below 2^53 (exact in JavaScript numbers) until the year
/// 2248. A clock set back between two runs could break this.
pub fn first_room_id(now: SystemTime) -> u64 {
    let millis = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    millis.saturating_mul(ROOM_IDS_PER_MILLI).saturating_add(1)
}

struct Inner {
    next_room_id: u64,
    next_join_seq: u64,
    rooms: BTreeMap<RoomId, StoredRoom>,
    /// Accounted bytes of all history (sum of the rooms' `bytes`).
    total_bytes: usize,
    /// `(bytes, room)` of every room holding messages, so the biggest room
    /// is found at once.
    by_bytes: BTreeSet<(usize, RoomId)>,
    /// With `AMQP_URL`: where each change's domain events go, pushed under
    /// this store's mutex, so they are queued in the order the changes
    /// happened.
    events: Option<Arc<Events>>,
    /// `(created, room)` of every room without members, oldest first, so
    /// the empty-room sweep finds what it deletes without walking every
    /// room. Invariant: holds exactly the rooms whose `members` is empty
    /// (kept by `create_room`, `add_member` and `delete_room`; a room
    /// whose last member leaves is deleted at once, so that is the only way
    /// out besides a first join).
    unjoined: BTreeSet<(DateTime<Utc>, RoomId)>,
}

/// Rooms the empty-room sweep deletes under one hold of the lock (then it
/// lets other callers in before the next chunk), as the MySQL store deletes
/// in transactions of `SWEEP_CHUNK` rooms.
const SWEEP_CHUNK: usize = 500;

/// In-memory implementation of [`Store`].
pub struct MemoryStore {
    inner: Mutex<Inner>,
    history_limit: usize,
    max_bytes: usize,
}

impl MemoryStore {
    /// `history_limit` bounds the messages kept per room (oldest dropped);
    /// all history together is bounded by [`DEFAULT_MAX_BYTES`] (see
    /// [`MemoryStore::with_max_bytes`]); room ids start from the clock
    /// (see [`first_room_id`]).
    pub fn new(history_limit: usize) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner {
                next_room_id: first_room_id(SystemTime::now()),
                next_join_seq: 1,
                rooms: BTreeMap::new(),
                total_bytes: 0,
                by_bytes: BTreeSet::new(),
                events: None,
                unjoined: BTreeSet::new(),
            }),
            history_limit: history_limit.max(1),
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// The same store with all history bounded by `max_bytes` accounted
    /// bytes (`MEMORY_STORE_MAX_BYTES`).
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The same store recording every change's domain events into
    /// `events`' queue (`AMQP_URL`).
    pub fn with_events(self, events: Arc<Events>) -> Self {
        self.lock().events = Some(events);
        self
    }

    /// The same store handing out room ids from `first` (tests).
    pub fn with_first_room_id(self, first: u64) -> Self {
        self.lock().next_room_id = first;
        self
    }

    /// Accounted bytes of all stored history (see [`message_bytes`]).
    pub fn history_bytes(&self) -> usize {
        self.lock().total_bytes
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
    /// Queues `event` as its room's next (the room must still exist).
    /// Invariant: called under the store's mutex, right after the change
    /// it describes, so the queue holds events in the order of the changes.
    fn emit(&mut self, event: DomainEvent) {
        let (Some(events), Some(room)) = (&self.events, self.rooms.get_mut(&event.room_id)) else {
            return;
        };
        room.event_seq += 1;
        events.push(&event, room.event_seq);
    }

    /// Records that `room_id` now holds `after` bytes instead of `before`.
    fn reindex(&mut self, room_id: RoomId, before: usize, after: usize) {
        if before == after {
            return;
        }
        if before > 0 {
            self.by_bytes.remove(&(before, room_id));
        }
        if after > 0 {
            self.by_bytes.insert((after, room_id));
        }
        self.total_bytes = self.total_bytes - before + after;
    }

    /// Removes a room with its history from the accounting and the map.
    fn delete_room(&mut self, room_id: RoomId) {
        if let Some(room) = self.rooms.remove(&room_id) {
            self.reindex(room_id, room.bytes, 0);
            self.unjoined.remove(&(room.room.created, room_id));
        }
    }

    /// Deletes at most `limit` rooms without members created before
    /// `cutoff`, oldest first; the work is proportional to what it deletes,
    /// not to the number of rooms.
    fn delete_unjoined_chunk(&mut self, cutoff: DateTime<Utc>, limit: usize) -> Vec<RoomId> {
        let doomed: Vec<RoomId> = self
            .unjoined
            .iter()
            .take_while(|(created, _)| *created < cutoff)
            .take(limit)
            .map(|(_, id)| *id)
            .collect();
        let at = crate::domain::now();
        for id in &doomed {
            if let Some(room) = self.rooms.get(id).map(|r| r.room.clone()) {
                if self.events.is_some() {
                    self.emit(DomainEvent::room_deleted(&room, at));
                }
            }
            self.delete_room(*id);
        }
        doomed
    }

    /// Drops the oldest message of the room holding the most bytes until
    /// all history fits in `max_bytes` (see the module comment).
    fn evict_to(&mut self, max_bytes: usize) {
        while self.total_bytes > max_bytes {
            let Some(&(before, room_id)) = self.by_bytes.last() else {
                return;
            };
            let Some(room) = self.rooms.get_mut(&room_id) else {
                // Cannot happen: deleted rooms leave the index.
                self.by_bytes.remove(&(before, room_id));
                continue;
            };
            if let Some(gone) = room.messages.pop_front() {
                room.bytes -= message_bytes(&gone);
            } else {
                room.bytes = 0;
            }
            let after = room.bytes;
            self.reindex(room_id, before, after);
        }
    }

    /// Removes the member at `index` of `room_id`, deleting the room when it
    /// was the last one.
    fn remove_at(&mut self, room_id: RoomId, index: usize) -> RemovedMember {
        let mut deleted = false;
        let mut nickname = String::new();
        let mut socket_id = SocketId::from("");
        let mut events = Vec::new();
        if let Some(room) = self.rooms.get_mut(&room_id) {
            let gone = room.members.remove(index);
            room.room.member_count = room.members.len() as u32;
            deleted = room.members.is_empty();
            if self.events.is_some() {
                let at = crate::domain::now();
                events.push(DomainEvent::member_left(room_id, &gone.member, at));
                if deleted {
                    events.push(DomainEvent::room_deleted(&room.room, at));
                }
            }
            nickname = gone.member.nickname;
            socket_id = gone.socket_id;
        }
        for event in events {
            self.emit(event);
        }
        if deleted {
            self.delete_room(room_id);
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
        inner.unjoined.insert((created, id));
        inner.rooms.insert(
            id,
            StoredRoom {
                room: room.clone(),
                members: Vec::new(),
                messages: VecDeque::new(),
                last_seq: MessageSeq::ZERO,
                bytes: 0,
                event_seq: 0,
            },
        );
        if inner.events.is_some() {
            inner.emit(DomainEvent::room_created(&room));
        }
        Ok(room)
    }

    async fn room(&self, id: RoomId) -> Result<Option<Room>, StoreError> {
        Ok(self.lock().rooms.get(&id).map(|r| r.room.clone()))
    }

    async fn rooms(&self, before: Option<RoomId>, limit: usize) -> Result<Vec<Room>, StoreError> {
        let inner = self.lock();
        let below = match before {
            Some(before) => inner.rooms.range(..before),
            None => inner.rooms.range(..),
        };
        Ok(below
            .rev()
            .take(limit)
            .map(|(_, r)| r.room.clone())
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
        let first = room.members.is_empty();
        room.members.push(StoredMember {
            member: member.clone(),
            join_seq,
            socket_id: new.socket_id.clone(),
            instance_id: new.instance_id.clone(),
        });
        room.room.member_count = room.members.len() as u32;
        let room = room.room.clone();
        if first {
            inner.unjoined.remove(&(room.created, room_id));
        }
        inner.next_join_seq += 1;
        if inner.events.is_some() {
            inner.emit(DomainEvent::member_joined(room_id, &member));
        }
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
        let before = room.bytes;
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
            room.bytes += message_bytes(&msg);
            room.messages.push_back(msg.clone());
            stored.push(msg);
        }
        while room.messages.len() > self.history_limit {
            if let Some(gone) = room.messages.pop_front() {
                room.bytes -= message_bytes(&gone);
            }
        }
        let after = room.bytes;
        inner.reindex(room_id, before, after);
        inner.evict_to(self.max_bytes);
        if inner.events.is_some() {
            for m in &stored {
                inner.emit(DomainEvent::message_sent(m));
            }
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
        // In chunks, the lock released between them: a backlog of any size
        // never holds the one lock every room's writes take for longer
        // than `SWEEP_CHUNK` deletions.
        let mut deleted = Vec::new();
        loop {
            let chunk = self
                .lock()
                .delete_unjoined_chunk(created_before, SWEEP_CHUNK);
            let done = chunk.len() < SWEEP_CHUNK;
            deleted.extend(chunk);
            if done {
                return Ok(deleted);
            }
            tokio::task::yield_now().await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RoomTitle, TextLimits};

    fn title(s: &str) -> RoomTitle {
        RoomTitle::parse(s, &TextLimits::default()).expect("title")
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_000_000 + secs, 0).expect("time")
    }

    /// A message whose accounted size is exactly `bytes`.
    fn sized(nick: &str, bytes: usize) -> NewMessage {
        let content = "x".repeat(bytes - nick.len() - MESSAGE_OVERHEAD_BYTES);
        NewMessage {
            nickname: nick.to_owned(),
            content,
            sent_at: at(1),
        }
    }

    async fn ids_of(store: &MemoryStore, room: RoomId) -> Vec<u64> {
        store
            .messages_after(room, MessageSeq::ZERO, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id.get())
            .collect()
    }

    #[test]
    fn the_overhead_covers_a_stored_message() {
        // The struct twice (ring buffer slack) and two heap headers.
        let real = 2 * std::mem::size_of::<Message>() + 2 * 16;
        assert!(real <= MESSAGE_OVERHEAD_BYTES, "{real}");
        let m = Message {
            id: MessageSeq::new(1),
            room_id: RoomId::new(1),
            nickname: "ann".into(),
            content: "héllo".into(),
            sent_at: at(0),
        };
        assert_eq!(message_bytes(&m), 3 + 6 + MESSAGE_OVERHEAD_BYTES);
    }

    #[actix_rt::test]
    async fn history_stays_within_the_budget_and_the_biggest_room_pays_first() {
        let store = MemoryStore::new(10_000).with_max_bytes(10_000);
        let quiet = store.create_room(&title("quiet"), at(0)).await.unwrap().id;
        let busy = store.create_room(&title("busy"), at(0)).await.unwrap().id;
        // The quiet room's two messages are the oldest of all.
        store
            .append_messages(quiet, &[sized("q", 1000), sized("q", 1000)])
            .await
            .unwrap();
        for _ in 0..20 {
            store
                .append_messages(busy, &[sized("b", 500)])
                .await
                .unwrap();
            assert!(store.history_bytes() <= 10_000, "{}", store.history_bytes());
        }
        // 2,000 quiet + 16 × 500 busy = 10,000: the busy room lost its 4
        // oldest, the quiet room nothing although its messages are older.
        assert_eq!(store.history_bytes(), 10_000);
        assert_eq!(ids_of(&store, quiet).await, [1, 2]);
        assert_eq!(ids_of(&store, busy).await, (5..=20).collect::<Vec<_>>());
        // Ids go on where they were; paging after an evicted id still works.
        let after = store
            .messages_after(busy, MessageSeq::new(2), 3)
            .await
            .unwrap();
        assert_eq!(
            after.iter().map(|m| m.id.get()).collect::<Vec<_>>(),
            [5, 6, 7]
        );

        // A message in the quiet room goes over the budget too, but busy
        // (8,000 bytes against 3,000) is still the biggest: busy pays.
        store
            .append_messages(quiet, &[sized("q", 1000)])
            .await
            .unwrap();
        assert_eq!(ids_of(&store, quiet).await, [1, 2, 3]);
        assert_eq!(ids_of(&store, busy).await, (7..=20).collect::<Vec<_>>());
        assert_eq!(store.history_bytes(), 3000 + 14 * 500);
    }

    #[actix_rt::test]
    async fn eviction_evens_out_the_biggest_rooms_and_rooms_survive() {
        let store = MemoryStore::new(10_000).with_max_bytes(6_000);
        let a = store.create_room(&title("a"), at(0)).await.unwrap().id;
        let b = store.create_room(&title("b"), at(0)).await.unwrap().id;
        for _ in 0..4 {
            store.append_messages(a, &[sized("a", 1000)]).await.unwrap();
        }
        // a holds 4,000; b grows to 2,000 and then is the smaller: a pays.
        for _ in 0..3 {
            store.append_messages(b, &[sized("b", 1000)]).await.unwrap();
        }
        assert_eq!(ids_of(&store, a).await, [2, 3, 4]);
        assert_eq!(ids_of(&store, b).await, [1, 2, 3]);
        // Now b is the biggest (4,000 against 3,000): b pays, a keeps all.
        store.append_messages(b, &[sized("b", 1000)]).await.unwrap();
        assert_eq!(ids_of(&store, b).await, [2, 3, 4]);
        assert_eq!(ids_of(&store, a).await, [2, 3, 4]);
        assert_eq!(store.history_bytes(), 6000);

        // A room whose whole history goes is still there: only history is
        // evicted, never rooms (or members).
        let big = store.create_room(&title("big"), at(0)).await.unwrap().id;
        store
            .append_messages(big, &[sized("g", 5000)])
            .await
            .unwrap();
        assert_eq!(ids_of(&store, big).await, [0u64; 0]);
        assert!(store.room(big).await.unwrap().is_some());
        assert_eq!(store.history_bytes(), 6000);
    }

    #[actix_rt::test]
    async fn deleted_rooms_and_the_per_room_limit_give_their_bytes_back() {
        let store = MemoryStore::new(2).with_max_bytes(1 << 20);
        let room = store.create_room(&title("r"), at(0)).await.unwrap().id;
        for _ in 0..5 {
            store
                .append_messages(room, &[sized("r", 1000)])
                .await
                .unwrap();
        }
        assert_eq!(store.history_bytes(), 2000, "only the last 2 are kept");
        store.delete_unjoined_rooms(at(10)).await.unwrap();
        assert_eq!(store.history_bytes(), 0);
        assert!(store.lock().by_bytes.is_empty());
    }

    #[actix_rt::test]
    async fn room_ids_start_from_the_clock_and_increase() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_795_000_000_123);
        assert_eq!(first_room_id(t), 1_795_000_000_123 * 1024 + 1);
        // Exact in a JavaScript number for two centuries and more.
        let year_2248 = UNIX_EPOCH + std::time::Duration::from_secs(8_790_000_000);
        assert!(first_room_id(year_2248) < 1 << 53);

        let first = MemoryStore::new(10);
        let a = first.create_room(&title("a"), at(0)).await.unwrap().id;
        let b = first.create_room(&title("b"), at(0)).await.unwrap().id;
        assert!(a < b);
        std::thread::sleep(std::time::Duration::from_millis(2));
        // A restart: a new store, a millisecond or more later.
        let second = MemoryStore::new(10);
        let c = second.create_room(&title("c"), at(0)).await.unwrap().id;
        assert!(c > b, "{c} after {b}");
        assert!(c.get() < 1 << 53);
    }

    #[actix_rt::test]
    async fn a_restart_never_reuses_an_id_of_a_busy_earlier_run() {
        // A run started at ms t that created 1024 rooms (its whole first
        // millisecond's share), restarted at t + 1 ms.
        let t = 1_795_000_000_000u64;
        let earlier = MemoryStore::new(10).with_first_room_id(t * 1024 + 1);
        let mut seen = BTreeSet::new();
        for _ in 0..1024 {
            seen.insert(earlier.create_room(&title("e"), at(0)).await.unwrap().id);
        }
        let restart = UNIX_EPOCH + std::time::Duration::from_millis(t + 1);
        let later = MemoryStore::new(10).with_first_room_id(first_room_id(restart));
        for _ in 0..1024 {
            let id = later.create_room(&title("l"), at(0)).await.unwrap().id;
            assert!(seen.insert(id), "{id} handed out twice");
        }
    }

    #[actix_rt::test]
    async fn pages_of_rooms_are_newest_first_below_before() {
        let store = MemoryStore::new(10).with_first_room_id(1);
        for i in 0..5 {
            store
                .create_room(&title(&format!("r{i}")), at(0))
                .await
                .unwrap();
        }
        let ids = |rooms: Vec<Room>| rooms.iter().map(|r| r.id.get()).collect::<Vec<_>>();
        assert_eq!(ids(store.rooms(None, 2).await.unwrap()), [5, 4]);
        assert_eq!(
            ids(store.rooms(Some(RoomId::new(4)), 2).await.unwrap()),
            [3, 2]
        );
        assert_eq!(
            ids(store.rooms(Some(RoomId::new(2)), 2).await.unwrap()),
            [1]
        );
        assert_eq!(
            ids(store.rooms(Some(RoomId::new(1)), 2).await.unwrap()),
            [0u64; 0]
        );
        assert_eq!(ids(store.rooms(None, 0).await.unwrap()), [0u64; 0]);
    }

    /// `add_member` for a test: `nick` from `socket` on instance "a".
    async fn join(store: &MemoryStore, room: RoomId, nick: &str) {
        let new = NewMember {
            nickname: crate::domain::Nickname::parse(nick, &TextLimits::default()).unwrap(),
            socket_id: SocketId::from(format!("a:{nick}").as_str()),
            instance_id: "a".into(),
            joined_at: at(1),
        };
        store.add_member(room, &new).await.unwrap();
    }

    #[actix_rt::test]
    async fn the_sweep_reads_only_unjoined_rooms_in_chunks_and_spares_the_rest() {
        let store = MemoryStore::new(10);
        let mut old = Vec::new();
        for _ in 0..1_200 {
            old.push(store.create_room(&title("old"), at(0)).await.unwrap().id);
        }
        let young = store.create_room(&title("young"), at(20)).await.unwrap().id;
        join(&store, old[0], "kept").await;
        join(&store, old[1], "gone").await;
        store
            .remove_member(old[1], &SocketId::from("a:gone"))
            .await
            .unwrap();
        // The index holds exactly the rooms without members.
        {
            let inner = store.lock();
            let unjoined: BTreeSet<RoomId> = inner.unjoined.iter().map(|(_, id)| *id).collect();
            let empty: BTreeSet<RoomId> = inner
                .rooms
                .values()
                .filter(|r| r.members.is_empty())
                .map(|r| r.room.id)
                .collect();
            assert_eq!(unjoined, empty);
            assert_eq!(unjoined.len(), 1_199, "old[0] joined, old[1] deleted");
        }
        // One hold of the lock deletes at most a chunk, oldest first.
        let chunk = store.lock().delete_unjoined_chunk(at(10), SWEEP_CHUNK);
        assert_eq!(chunk, old[2..2 + SWEEP_CHUNK]);
        // One call works the backlog off, chunk by chunk.
        let rest = store.delete_unjoined_rooms(at(10)).await.unwrap();
        assert_eq!(rest, old[2 + SWEEP_CHUNK..]);
        let left: Vec<RoomId> = store.lock().rooms.keys().copied().collect();
        assert_eq!(left, [old[0], young], "the joined and the young room stay");
        assert_eq!(store.lock().unjoined.len(), 1, "only the young room");
        assert!(store
            .delete_unjoined_rooms(at(10))
            .await
            .unwrap()
            .is_empty());
    }
}
