//! `RoomManager`: one per process. It maps room ids to live room actors,
//! starting one on demand and forgetting it when it stops, so a room actor
//! that fails or finishes never takes the manager (or other rooms) down.
//! It also owns what no single room can: the sweep that deletes rooms nobody
//! joined within the grace period, and the bulk cleanup at shutdown.
//!
//! Room actors are spread over a few arbiters (threads) so that busy rooms
//! do not queue behind each other on one thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::bus::{AnnounceRemoved, Drain};
use super::room::{CloseRoom, ListMembers, RoomActor, RoomConfig};
use crate::domain::{self, Member, RoomId};
use crate::error::{Chain, ChatError};
use crate::store::{SharedStore, StoreError};

/// Find the live actor of `room_id`, starting one if there is none and the
/// room exists. Existence is checked before anything starts, so a join to a
/// room id that does not exist costs one store read: no actor, no bus
/// subscription, no reads of history and members.
#[derive(Message)]
#[rtype(result = "Result<Addr<RoomActor>, StoreError>")]
pub struct GetRoom {
    pub room_id: RoomId,
}

/// Sent by a room actor as it stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomStopped {
    pub room_id: RoomId,
    pub generation: u64,
}

/// The members of a room, in join order; `RoomNotFound` if there is no
/// such room.
#[derive(Message)]
#[rtype(result = "Result<Vec<Member>, ChatError>")]
pub struct GetMembers {
    pub room_id: RoomId,
}

/// Why a join is refused while the process shuts down.
#[derive(Debug, thiserror::Error)]
#[error("the server is shutting down")]
struct ShuttingDown;

/// Close every room and remove this process's members from the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

struct LiveRoom {
    addr: Addr<RoomActor>,
    generation: u64,
}

/// The per-process registry of room actors.
pub struct RoomManager {
    store: SharedStore,
    config: Arc<RoomConfig>,
    grace: Duration,
    rooms: HashMap<RoomId, LiveRoom>,
    next_generation: u64,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    /// `Shutdown` has begun: no room actor is started any more.
    shutting_down: bool,
}

impl RoomManager {
    /// `room_threads` arbiters are started to host the room actors.
    pub fn new(
        store: SharedStore,
        config: RoomConfig,
        grace: Duration,
        room_threads: usize,
    ) -> Self {
        let arbiters = (0..room_threads.max(1))
            .map(|_| Arbiter::new().handle())
            .collect();
        RoomManager {
            store,
            config: Arc::new(config),
            grace,
            rooms: HashMap::new(),
            next_generation: 0,
            arbiters,
            next_arbiter: 0,
            shutting_down: false,
        }
    }

    fn live(&self, room_id: RoomId) -> Option<&Addr<RoomActor>> {
        self.rooms
            .get(&room_id)
            .map(|r| &r.addr)
            .filter(|a| a.connected())
    }

    /// How often the grace sweep runs: often enough that an unjoined room
    /// outlives its grace period by at most a quarter of it (max 5 s).
    fn sweep_interval(&self) -> Duration {
        (self.grace / 4).clamp(Duration::from_millis(200), Duration::from_secs(5))
    }

    /// Deletes rooms nobody joined within the grace period. The store's
    /// condition (`join_member_count = 0`) makes this safe against a join in
    /// the same instant: the join either lands first and the room stays, or
    /// finds the room gone.
    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let cutoff = domain::now() - chrono::Duration::from_std(self.grace).unwrap_or_default();
        let fut = async move { store.delete_unjoined_rooms(cutoff).await };
        ctx.spawn(fut.into_actor(self).map(|res, _, _| match res {
            // A backlog can be thousands of rooms: name a few.
            Ok(ids) if ids.len() > 20 => log::info!(
                "deleted {} unjoined rooms ({:?} ... {:?})",
                ids.len(),
                &ids[..10],
                &ids[ids.len() - 10..]
            ),
            Ok(ids) if !ids.is_empty() => log::info!("deleted unjoined rooms {ids:?}"),
            Ok(_) => {}
            Err(e) => log::warn!("empty-room sweep failed (will retry): {}", Chain(&e)),
        }));
    }
}

impl Actor for RoomManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16 * 1024);
        ctx.run_interval(self.sweep_interval(), |act, ctx| act.sweep(ctx));
    }
}

impl Handler<GetRoom> for RoomManager {
    type Result = ResponseActFuture<Self, Result<Addr<RoomActor>, StoreError>>;

    fn handle(&mut self, msg: GetRoom, _: &mut Self::Context) -> Self::Result {
        let room_id = msg.room_id;
        if self.shutting_down {
            let e = StoreError::unavailable("joining", ShuttingDown);
            return Box::pin(actix::fut::ready(Err(e)));
        }
        if let Some(addr) = self.live(room_id) {
            return Box::pin(actix::fut::ready(Ok(addr.clone())));
        }
        let store = self.store.clone();
        let exists = async move { store.room(room_id).await };
        Box::pin(exists.into_actor(self).map(move |found, act, ctx| {
            if found?.is_none() {
                return Err(StoreError::RoomNotFound(room_id));
            }
            if act.shutting_down {
                return Err(StoreError::unavailable("joining", ShuttingDown));
            }
            // Another join may have started the actor while the store was
            // asked.
            Ok(match act.live(room_id) {
                Some(addr) => addr.clone(),
                None => act.start_room(room_id, ctx),
            })
        }))
    }
}

impl RoomManager {
    /// Starts the actor of `room_id` on the next room thread.
    fn start_room(&mut self, room_id: RoomId, ctx: &mut Context<Self>) -> Addr<RoomActor> {
        self.next_generation += 1;
        let generation = self.next_generation;
        let slot = self.next_arbiter % self.arbiters.len();
        self.next_arbiter = self.next_arbiter.wrapping_add(1);
        if !self.arbiters[slot].spawn(async {}) {
            // The thread is gone; rooms must not be started into the void.
            log::error!("room thread {slot} stopped; starting a new one");
            self.arbiters[slot] = Arbiter::new().handle();
        }
        let arbiter = &self.arbiters[slot];
        let (store, config, manager) = (self.store.clone(), self.config.clone(), ctx.address());
        let addr = RoomActor::start_in_arbiter(arbiter, move |_| {
            RoomActor::new(room_id, generation, store, config, manager)
        });
        self.rooms.insert(
            room_id,
            LiveRoom {
                addr: addr.clone(),
                generation,
            },
        );
        self.config.metrics.rooms.set(self.rooms.len() as f64);
        addr
    }
}

impl Handler<RoomStopped> for RoomManager {
    type Result = ();

    fn handle(&mut self, msg: RoomStopped, _: &mut Self::Context) {
        // Only forget the actor that stopped: a newer one may already serve
        // the same room.
        if self
            .rooms
            .get(&msg.room_id)
            .is_some_and(|r| r.generation == msg.generation)
        {
            self.rooms.remove(&msg.room_id);
            self.config.metrics.rooms.set(self.rooms.len() as f64);
        }
    }
}

impl Handler<GetMembers> for RoomManager {
    type Result = ResponseFuture<Result<Vec<Member>, ChatError>>;

    fn handle(&mut self, msg: GetMembers, _: &mut Self::Context) -> Self::Result {
        let live = self.live(msg.room_id).cloned();
        let store = self.store.clone();
        let room_id = msg.room_id;
        Box::pin(async move {
            if let Some(addr) = live {
                if let Ok(members) = addr.send(ListMembers).await {
                    if !members.is_empty() {
                        return Ok(members);
                    }
                }
            }
            // No live actor: no member on this process, so no state here to
            // answer from. The store has the members of other processes (and
            // tells whether the room exists at all).
            Ok(store.members(room_id).await?)
        })
    }
}

impl Handler<Shutdown> for RoomManager {
    type Result = ResponseFuture<()>;

    /// In this order: every room finishes the chats it accepted (stored,
    /// published, answered) and closes its members' sockets; then this
    /// process's memberships are removed and announced; then the bus is
    /// drained, so every batch stored here was handed to Redis before the
    /// bus closes. The wait for the rooms is bounded by 2 × `STORE_TIMEOUT_MS`.
    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) -> Self::Result {
        self.shutting_down = true;
        let closing: Vec<_> = self
            .rooms
            .values()
            .map(|room| room.addr.send(CloseRoom))
            .collect();
        let wait = self.config.store_timeout * 2;
        let store = self.store.clone();
        let instance = self.config.instance_id.clone();
        let bus = self.config.bus.clone();
        Box::pin(async move {
            let rooms = closing.len();
            let all = futures_util::future::join_all(closing);
            if tokio::time::timeout(wait, all).await.is_err() {
                log::warn!(
                    "shutdown: not every one of {rooms} rooms finished its store writes \
                     within {} ms",
                    wait.as_millis()
                );
            }
            match store.remove_instance_members(&instance).await {
                Ok(removed) => {
                    log::info!("shutdown: removed {} members", removed.len());
                    // Tell the other processes before this one goes away.
                    if let Some(bus) = bus {
                        let _ = bus.send(AnnounceRemoved(removed)).await;
                        let _ = bus
                            .send(Drain {
                                timeout: Duration::from_secs(2),
                            })
                            .await;
                    }
                }
                Err(e) => log::warn!(
                    "shutdown: could not remove this instance's members: {}",
                    Chain(&e)
                ),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RoomTitle, TextLimits};
    use crate::store::MemoryStore;

    /// How many room actors the manager keeps.
    #[derive(Message)]
    #[rtype(result = "usize")]
    struct LiveRooms;

    impl Handler<LiveRooms> for RoomManager {
        type Result = usize;

        fn handle(&mut self, _: LiveRooms, _: &mut Self::Context) -> usize {
            self.rooms.len()
        }
    }

    #[actix_rt::test]
    async fn a_join_to_a_missing_room_starts_nothing() {
        let store: SharedStore = Arc::new(MemoryStore::new(100));
        let config = RoomConfig {
            instance_id: "test".into(),
            history_on_join: 5,
            queue_max_messages: 10,
            queue_max_bytes: 1000,
            gap_timeout: Duration::from_millis(300),
            store_timeout: Duration::from_secs(5),
            bus: None,
            metrics: Default::default(),
        };
        let manager = RoomManager::new(store.clone(), config, Duration::from_secs(60), 1).start();
        let missing = RoomId::new(42);
        let found = manager.send(GetRoom { room_id: missing }).await.unwrap();
        assert!(
            matches!(found, Err(StoreError::RoomNotFound(id)) if id == missing),
            "{found:?}"
        );
        assert_eq!(
            manager.send(LiveRooms).await.unwrap(),
            0,
            "no actor started"
        );

        let title = RoomTitle::parse("here", &TextLimits::default()).unwrap();
        let room = store.create_room(&title, domain::now()).await.unwrap();
        let first = manager.send(GetRoom { room_id: room.id }).await.unwrap();
        let again = manager.send(GetRoom { room_id: room.id }).await.unwrap();
        assert_eq!(first.unwrap(), again.unwrap(), "one actor per room");
        assert_eq!(manager.send(LiveRooms).await.unwrap(), 1);
    }
}
