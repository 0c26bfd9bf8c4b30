//! `RedisBridge`: the cluster bus, one per process when `REDIS_URL` is set.
//!
//! One responsibility a file: this one holds the actor (its state, the
//! connection and its watchdog, the publish queue, the handlers);
//! `wire.rs` what travels on a room's channel; `liveness.rs` the liveness
//! key, the reaper and the declared-dead check; `repair.rs` the bounds on
//! repairs ([`ResyncThrottle`], [`LogLimiter`]); `health.rs` what `/health`
//! reads ([`BusHealth`]); `address.rs` where Redis is and what the bridge
//! may conclude from what it finds there.
//!
//! - **Per-room channels.** Room events go to `<prefix>:room:<id>`. A process
//!   subscribes to a room's channel only while it has a live room actor for
//!   it (local members), so Redis traffic grows with interest, not with the
//!   cluster's size. Subscriptions use one dedicated connection; publishes
//!   use the deadpool pool.
//! - **Order.** Publishes leave in the order they were asked for: one
//!   pipeline in flight at a time, on one connection. Receivers still never
//!   trust the bus for order: message ids are per-room sequences and each
//!   room actor reorders and fills gaps from the store (see `actors/room/`).
//! - **Liveness.** Each process renews `<prefix>:instance:<id>` (TTL
//!   `LIVENESS_TTL_SECS`) every `LIVENESS_REFRESH_MS`. Survivors look every
//!   `REAP_INTERVAL_MS` for instances that hold members in the store but have
//!   no key; one of them (a `SET NX` lock) removes those members, which
//!   deletes rooms left empty, and announces each removal on the room's
//!   channel. A missing key counts only once every live instance has had a
//!   full TTL plus the longest reconnection backoff to write it on this
//!   master (`address::reap_wait`: at a first connection the master's
//!   uptime tells; after an outage, counted from the reconnection), so
//!   instances that were merely cut off from Redis get time to come back
//!   and renew. The reap lock is released once the reap is done.
//! - **Outages.** When the subscription connection drops, the bridge
//!   reconnects with backoff, re-subscribes every room and tells each room to
//!   resynchronize from the store (messages after the last one delivered, the
//!   member list). Publishes made while down are dropped: the store has the
//!   data, and the resync brings it.
//! - **Partitions.** A process cut off from Redis while the others are not
//!   loses the events it publishes meanwhile, and the others notice nothing.
//!   So whichever side notices repairs both: on every (re)connection the
//!   bridge resyncs its own rooms and publishes a `resync` hint on the
//!   channel of every room it has, and of every room whose events it may
//!   have lost (`unsent`); a process that hears a hint resyncs its copy of
//!   that room from the store. A loss needs a broken connection, and a
//!   broken connection is noticed by the side it belongs to (a command that
//!   times out, a closed subscription), so the hint always comes. Hints and
//!   other repairs go through [`ResyncThrottle`]: at most one resync per room
//!   per [`RESYNC_MIN_GAP`].
//! - **Declared dead.** A process that has not renewed its liveness key for
//!   a full TTL must assume the others reaped its members (and maybe deleted
//!   their rooms). Until it is back on the bus it makes each of its rooms
//!   check its members against the store every `REAP_INTERVAL_MS`, so a
//!   member the store no longer has is closed with 1012 and rejoins, instead
//!   of chatting on in a room the others no longer list or that is gone.
//! - **Bad payloads.** A payload that does not decode (garbage, or an event
//!   kind from a newer version) is never fatal: it is counted
//!   ([`BusHealth::rejected_payloads`], shown by `/health`), logged at most
//!   once per [`REJECT_LOG_EVERY`] with the count, and the room it came on is
//!   resynced (throttled) in case it carried something that mattered.
//! - **Where Redis is.** `REDIS_URL`, or the master the Sentinels name
//!   (`REDIS_SENTINELS`), looked up again at every connection; the command
//!   pool is rebuilt for that master each time, so commands and the
//!   subscription always go to the same server (see `address.rs`).
//! - **Watchdog.** Every `LIVENESS_REFRESH_MS` the bridge PINGs the
//!   subscription connection and, with Sentinels, asks them which master
//!   they name and asks the master for its role. No answer within
//!   `REDIS_TIMEOUT` (a connection still open but blackholed), another
//!   master named, or a master demoted by a failover, counts as a lost
//!   connection: the bridge reconnects, and the rooms resynchronize.

mod health;
mod liveness;
mod repair;
mod wire;

pub mod address;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use actix::prelude::*;
use deadpool_redis::redis::{self, aio::PubSubSink, AsyncCommands, IntoConnectionInfo};

use self::address::{BusAddress, ServerFacts};
pub use self::health::BusHealth;
use self::repair::{LogLimiter, ResyncThrottle};
use self::wire::Envelope;
pub use self::wire::RoomEvent;
use super::slices::Slices;
use crate::domain::RoomId;
use crate::error::Chain;
use crate::store::{SharedStore, StoreError};

/// Longest wait for a connection or a command before Redis counts as down.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);
/// Publishes queued while one pipeline is in flight; beyond this they are
/// dropped (receivers catch up from the store).
const MAX_QUEUED_PUBLISHES: usize = 100_000;
/// The presumed-dead checks tick about this often (a slice of the rooms
/// each time, see `liveness.rs`): coarser than the heartbeat's 5 ms, since
/// they start store reads only while cut off, and a process should not
/// wake 200 times a second for nothing.
const DEAD_CHECK_TICK: Duration = Duration::from_millis(50);

/// Shortest time between two resyncs of one room asked for by the bus
/// (hints, undecodable payloads); later requests wait for the next tick.
pub const RESYNC_MIN_GAP: Duration = Duration::from_secs(1);
/// Undecodable payloads are logged at most once per this period.
pub const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);
/// Most rooms remembered as having lost events during one outage; beyond
/// this only the rooms this process has get a hint (the others' own
/// resyncs still cover them once they notice).
const MAX_UNSENT_ROOMS: usize = 100_000;

/// What the bridge tells a room actor.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum BusSignal {
    /// An event from another process (or from this process's reaper).
    Event(RoomEvent),
    /// The bus was down: re-read messages and members from the store.
    Resync,
}

/// Register a room actor for its room's channel. The reply comes once the
/// subscription is in place (or immediately while Redis is down; a
/// `Resync` follows the reconnection).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub room_id: RoomId,
    pub room: Recipient<BusSignal>,
}

/// The room actor is stopping.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub room_id: RoomId,
}

/// Tell the other processes about `event` in `room_id`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    pub room_id: RoomId,
    pub event: RoomEvent,
}

/// Memberships this process removed without a room actor to announce them
/// (its own stale members, found at start-up): announced once connected.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AnnounceRemoved(pub Vec<crate::store::RemovedMember>);

/// Resolves once everything queued so far has been published (or Redis is
/// down, or `timeout` passed): lets a clean shutdown announce its departures
/// before the process exits.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    pub timeout: Duration,
}

/// Fixed settings of the bridge.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub address: BusAddress,
    pub prefix: String,
    pub instance_id: String,
    pub liveness_ttl: Duration,
    pub liveness_refresh: Duration,
    pub reap_interval: Duration,
    /// The process's metrics (publishes, receive lag, reaped instances).
    pub metrics: std::sync::Arc<crate::telemetry::Metrics>,
}

/// The cluster bus actor. See the module comment.
pub struct RedisBridge {
    config: BridgeConfig,
    /// Commands go here. Replaced at every connection by a pool for the
    /// master just found; used only while connected (`sink` is set), so
    /// never one for a previous master.
    pool: deadpool_redis::Pool,
    store: SharedStore,
    health: BusHealth,
    sink: Option<PubSubSink>,
    stream: Option<SpawnHandle>,
    connecting: bool,
    connected_at: Option<Instant>,
    backoff: Duration,
    /// Counts connections, so a late watchdog answer about an earlier
    /// connection is ignored.
    generation: u64,
    /// A watchdog round is in flight.
    pinging: bool,
    /// The master the current connection is on (host, port), if over TCP.
    server: Option<(String, u16)>,
    /// Whether this process was ever connected (see `address::reap_wait`).
    ever_connected: bool,
    /// How long after `connected_at` missing liveness keys mean death.
    reap_wait: Duration,
    subscribers: HashMap<RoomId, Recipient<BusSignal>>,
    /// The rooms of `subscribers` in slices, for the checks made while
    /// presumed declared dead: one slice per tick, every room once per
    /// `REAP_INTERVAL_MS` (see `check_declared_dead`).
    dead_checks: Slices<RoomId>,
    queue: Vec<(String, String)>,
    publishing: bool,
    /// Removals waiting for a connection to be announced.
    unannounced: Vec<crate::store::RemovedMember>,
    /// `Drain` requests waiting for the queue to empty.
    drain_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Rooms whose events may not have reached Redis since the last
    /// connection (dropped while down, or in a publish that failed): they
    /// get a resync hint on reconnection.
    unsent: HashSet<RoomId>,
    /// Resyncs asked for by the bus, throttled per room.
    throttle: ResyncThrottle,
    /// When the liveness key was last renewed (on connection or refresh);
    /// until the first renewal, when the bridge was made: the TTL a process
    /// may go unrenewed before it presumes itself declared dead counts from
    /// start-up, not from an instant before it (then the first check, 5 ms
    /// in, found a process still making its first connection "dead").
    renewed_at: Instant,
    /// The liveness key expired while this process was cut off: the others
    /// may have reaped its members.
    presumed_dead: bool,
    /// Rate limit of the "undecodable payload" log line.
    reject_log: LogLimiter,
}

/// Why the bridge could not be built (a malformed URL).
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("invalid REDIS_URL or REDIS_SENTINELS")]
    Url(#[source] redis::RedisError),
    #[error("cannot set up the redis connection pool")]
    Pool(#[source] deadpool_redis::CreatePoolError),
}

/// Why talking to Redis (or, for the reaper, to the store) failed. The
/// bridge logs it and, for Redis, reconnects.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis error")]
    Redis(#[from] redis::RedisError),
    #[error("no redis connection from the pool")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("{what} timed out after {} ms", .after.as_millis())]
    TimedOut { what: &'static str, after: Duration },
    #[error("the subscription connection closed")]
    SubscriptionClosed,
    #[error("cannot set up the redis connection pool")]
    PoolSetup(#[from] deadpool_redis::CreatePoolError),
    #[error("the server is no longer the master")]
    NotMaster,
    #[error("the sentinels name another master")]
    MasterMoved,
    #[error("store call failed")]
    Store(#[from] StoreError),
}

/// Runs `call` for at most `REDIS_TIMEOUT`; `what` names it in the error.
async fn timed<T>(
    what: &'static str,
    call: impl Future<Output = Result<T, BusError>>,
) -> Result<T, BusError> {
    tokio::time::timeout(REDIS_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(BusError::TimedOut {
                what,
                after: REDIS_TIMEOUT,
            })
        })
}

impl RedisBridge {
    /// Validates the address and prepares the pool; connecting happens in
    /// the background once the actor runs, so a missing Redis delays
    /// nothing.
    pub fn new(
        config: BridgeConfig,
        store: SharedStore,
        health: BusHealth,
    ) -> Result<Self, BridgeError> {
        config.address.validate().map_err(BridgeError::Url)?;
        // A placeholder until the first connection finds the master.
        let placeholder = match &config.address {
            BusAddress::Direct(url) => url.as_str().into_connection_info(),
            BusAddress::Sentinel(s) => match s.sentinels.first() {
                Some((host, port)) => {
                    redis::ConnectionAddr::Tcp(host.clone(), *port).into_connection_info()
                }
                None => Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "no sentinels",
                ))),
            },
        }
        .map_err(BridgeError::Url)?;
        let pool = make_pool(placeholder).map_err(BridgeError::Pool)?;
        let settle = config.liveness_ttl + config.liveness_refresh + config.address.max_backoff();
        let dead_checks = Slices::new(Slices::<RoomId>::count_with_tick(
            config.reap_interval,
            DEAD_CHECK_TICK,
        ));
        Ok(RedisBridge {
            config,
            pool,
            store,
            health,
            sink: None,
            stream: None,
            connecting: false,
            connected_at: None,
            backoff: Duration::from_millis(100),
            generation: 0,
            pinging: false,
            server: None,
            ever_connected: false,
            reap_wait: settle,
            subscribers: HashMap::new(),
            dead_checks,
            queue: Vec::new(),
            publishing: false,
            unannounced: Vec::new(),
            drain_waiters: Vec::new(),
            unsent: HashSet::new(),
            throttle: ResyncThrottle::new(RESYNC_MIN_GAP),
            renewed_at: Instant::now(),
            presumed_dead: false,
            reject_log: LogLimiter::new(REJECT_LOG_EVERY),
        })
    }

    fn channel(&self, room_id: RoomId) -> String {
        format!("{}:room:{room_id}", self.config.prefix)
    }

    fn instance_key(&self, instance: &str) -> String {
        format!("{}:instance:{instance}", self.config.prefix)
    }

    fn room_of_channel(&self, channel: &str) -> Option<RoomId> {
        channel
            .strip_prefix(&self.config.prefix)?
            .strip_prefix(":room:")?
            .parse()
            .ok()
            .map(RoomId::new)
    }

    /// Opens the subscription connection, subscribes every current room and
    /// renews the liveness key; on failure, tries again after a backoff.
    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.connecting || self.sink.is_some() {
            return;
        }
        self.connecting = true;
        let rooms: Vec<RoomId> = self.subscribers.keys().copied().collect();
        let channels: Vec<String> = rooms.iter().map(|r| self.channel(*r)).collect();
        let address = self.config.address.clone();
        let key = self.instance_key(&self.config.instance_id);
        let ttl = self.config.liveness_ttl;
        let fut = timed("connecting", async move {
            // With Sentinels: the master they name now, confirmed by ROLE.
            let client = address.master_client().await?;
            let server = match client.get_connection_info().addr() {
                redis::ConnectionAddr::Tcp(host, port) => Some((host.clone(), *port)),
                _ => None,
            };
            let pool = make_pool(client.get_connection_info().clone())?;
            let (mut sink, stream) = client.get_async_pubsub().await?.split();
            if !channels.is_empty() {
                sink.subscribe(&channels).await?;
            }
            let mut conn = pool.get().await?;
            let () = conn.pset_ex(&key, "alive", ttl.as_millis() as u64).await?;
            let (info_server, info_replication): (String, String) = redis::pipe()
                .cmd("INFO")
                .arg("server")
                .cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await?;
            let facts = address::parse_server_facts(&format!("{info_server}\n{info_replication}"));
            Ok((sink, stream, pool, server, facts))
        });
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            act.connecting = false;
            match res {
                Ok((sink, stream, pool, server, facts)) => {
                    act.reap_wait =
                        address::reap_wait(!act.ever_connected, facts.as_ref(), act.settle());
                    log::info!(
                        "redis bus connected to {} ({} rooms subscribed; {}; \
                         missing liveness keys count after {:?})",
                        server
                            .as_ref()
                            .map_or("redis".into(), |(h, p)| format!("{h}:{p}")),
                        act.subscribers.len(),
                        describe(facts.as_ref()),
                        act.reap_wait,
                    );
                    act.ever_connected = true;
                    act.server = server;
                    act.generation += 1;
                    act.pool = pool;
                    act.sink = Some(sink);
                    act.stream = Some(ctx.add_stream(stream));
                    act.settle_subscriptions(rooms, ctx);
                    act.connected_at = Some(Instant::now());
                    act.backoff = Duration::from_millis(100);
                    act.health.set(true);
                    for room in act.subscribers.values() {
                        room.do_send(BusSignal::Resync);
                    }
                    let removed = std::mem::take(&mut act.unannounced);
                    act.announce(removed, ctx);
                    act.renewed(true);
                    act.hint_resync(ctx);
                    act.flush(ctx);
                }
                Err(e) => act.retry_later(&e, ctx),
            }
        }));
    }

    /// The connection subscribed the channels of `subscribed`, the rooms
    /// present when it began; rooms may have come or gone while it was being
    /// made (their `Subscribe` found no connection to subscribe on).
    ///
    /// Invariant: once connected, the subscription covers every room in
    /// `subscribers`. A room left out would never hear another process again
    /// (no event, so no gap to notice): it is subscribed now, and told to
    /// resync once its channel is in place, since what was published before
    /// that is only in the store.
    fn settle_subscriptions(&mut self, subscribed: Vec<RoomId>, ctx: &mut Context<Self>) {
        let subscribed: HashSet<RoomId> = subscribed.into_iter().collect();
        let late: Vec<RoomId> = self
            .subscribers
            .keys()
            .filter(|r| !subscribed.contains(r))
            .copied()
            .collect();
        let gone: Vec<String> = subscribed
            .iter()
            .filter(|r| !self.subscribers.contains_key(r))
            .map(|r| self.channel(*r))
            .collect();
        let Some(mut sink) = self.sink.clone() else {
            return;
        };
        if late.is_empty() && gone.is_empty() {
            return;
        }
        let channels: Vec<String> = late.iter().map(|r| self.channel(*r)).collect();
        let fut = timed("subscribing", async move {
            if !channels.is_empty() {
                sink.subscribe(&channels).await?;
            }
            if !gone.is_empty() {
                sink.unsubscribe(&gone).await?;
            }
            Ok(())
        });
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(()) => {
                for room in late.iter().filter_map(|r| act.subscribers.get(r)) {
                    room.do_send(BusSignal::Resync);
                }
            }
            Err(e) => act.disconnected(&e, ctx),
        }));
    }

    fn retry_later(&mut self, why: &BusError, ctx: &mut Context<Self>) {
        log::warn!(
            "redis bus unavailable ({}); retrying in {:?}",
            Chain(why),
            self.backoff
        );
        ctx.run_later(self.backoff, |act, ctx| act.connect(ctx));
        self.backoff = address::next_backoff(self.backoff, self.config.address.max_backoff());
    }

    /// A TTL, a renewal period and the longest reconnection backoff: time
    /// enough for every live instance to (re)write its liveness key.
    fn settle(&self) -> Duration {
        self.config.liveness_ttl + self.config.liveness_refresh + self.config.address.max_backoff()
    }

    /// One watchdog round (see the module comment): PING on the
    /// subscription connection, and with Sentinels, the master's role.
    fn watchdog(&mut self, ctx: &mut Context<Self>) {
        if self.pinging || self.connected_at.is_none() {
            return;
        }
        let Some(mut sink) = self.sink.clone() else {
            return;
        };
        let pool = self.pool.clone();
        let check_role = matches!(self.config.address, BusAddress::Sentinel(_));
        let address = self.config.address.clone();
        let server = self.server.clone();
        let generation = self.generation;
        self.pinging = true;
        let fut = timed("pinging the subscription connection", async move {
            let _: redis::Value = sink.ping().await?;
            if check_role {
                // 500 ms a Sentinel: even three that do not answer leave
                // the round within its limit (no answer proves nothing).
                let named = address.named_master(REDIS_TIMEOUT / 6).await;
                if address::master_moved(server.as_ref(), named.as_ref()) {
                    return Err(BusError::MasterMoved);
                }
                let mut conn = pool.get().await?;
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut conn)
                    .await?;
                if !address::reports_master(&info) {
                    return Err(BusError::NotMaster);
                }
            }
            Ok(())
        });
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.pinging = false;
            if act.generation != generation {
                return; // about a connection already replaced
            }
            if let Err(e) = res {
                act.disconnected(&e, ctx);
            }
        }));
    }

    /// Forgets the connection and starts reconnecting.
    fn disconnected(&mut self, why: &BusError, ctx: &mut Context<Self>) {
        if self.connected_at.is_none() {
            return; // already reconnecting
        }
        log::warn!("redis bus lost: {}", Chain(why));
        self.sink = None;
        if let Some(handle) = self.stream.take() {
            ctx.cancel_future(handle);
        }
        self.connected_at = None;
        self.health.set(false);
        let lost: Vec<RoomId> = self
            .queue
            .iter()
            .filter_map(|(channel, _)| self.room_of_channel(channel))
            .collect();
        self.mark_unsent(lost);
        self.queue.clear();
        self.wake_drained();
        self.retry_later(why, ctx);
    }

    /// Answers `Drain` requests once nothing is queued or in flight (or
    /// nothing can be: Redis is down).
    fn wake_drained(&mut self) {
        let idle = self.sink.is_none() || (!self.publishing && self.queue.is_empty());
        if idle {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// Sends everything queued as one pipeline, one pipeline at a time.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.publishing || self.queue.is_empty() || self.sink.is_none() {
            self.wake_drained();
            return;
        }
        self.publishing = true;
        let batch = std::mem::take(&mut self.queue);
        let rooms: Vec<RoomId> = batch
            .iter()
            .filter_map(|(channel, _)| self.room_of_channel(channel))
            .collect();
        let pool = self.pool.clone();
        let published = batch.len() as u64;
        let fut = timed("publishing", async move {
            let mut conn = pool.get().await?;
            let mut pipe = redis::pipe();
            for (channel, payload) in &batch {
                pipe.publish(channel, payload).ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
            Ok(())
        });
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.publishing = false;
            match res {
                Ok(()) => {
                    act.config.metrics.bus_publishes.increment(published);
                    act.flush(ctx)
                }
                Err(e) => {
                    // Maybe published, maybe not: the rooms get a hint.
                    act.mark_unsent(rooms);
                    act.disconnected(&e, ctx);
                }
            }
        }));
    }

    fn enqueue(&mut self, room_id: RoomId, event: RoomEvent, ctx: &mut Context<Self>) {
        if self.sink.is_none() {
            // Receivers resync from the store once told (see `hint_resync`).
            self.mark_unsent([room_id]);
            return;
        }
        if self.queue.len() >= MAX_QUEUED_PUBLISHES {
            log::warn!("redis publish queue full; dropping an event of room {room_id}");
            self.mark_unsent([room_id]);
            return;
        }
        let envelope = Envelope {
            origin: self.config.instance_id.clone(),
            room: room_id,
            sent_ms: Some(crate::telemetry::now_millis()),
            event,
        };
        match envelope.encode() {
            Ok(payload) => {
                self.queue.push((self.channel(room_id), payload));
                self.flush(ctx);
            }
            Err(e) => log::error!("cannot encode bus event: {e}"),
        }
    }

    /// Tells every process (this one included) that these memberships are
    /// gone.
    fn announce(&mut self, removed: Vec<crate::store::RemovedMember>, ctx: &mut Context<Self>) {
        if self.sink.is_none() {
            self.unannounced.extend(removed);
            return;
        }
        for r in removed {
            let event = RoomEvent::Left {
                socket_id: r.socket_id,
                nickname: r.nickname,
            };
            if let Some(room) = self.subscribers.get(&r.room_id) {
                room.do_send(BusSignal::Event(event.clone()));
            }
            self.enqueue(r.room_id, event, ctx);
        }
    }

    /// Remembers rooms whose events may not have reached the others.
    fn mark_unsent(&mut self, rooms: impl IntoIterator<Item = RoomId>) {
        for room in rooms {
            if self.unsent.len() >= MAX_UNSENT_ROOMS {
                return;
            }
            self.unsent.insert(room);
        }
    }

    /// Just (re)connected: publishes a `resync` hint on the channel of every
    /// room this process has and of every room whose events it may have
    /// lost, so the others re-read what they missed, whichever side noticed
    /// the fault. (This process's own rooms were told to resync already.)
    fn hint_resync(&mut self, ctx: &mut Context<Self>) {
        let mut rooms: HashSet<RoomId> = std::mem::take(&mut self.unsent);
        rooms.extend(self.subscribers.keys().copied());
        if !rooms.is_empty() {
            log::info!("redis bus: resync hint for {} rooms", rooms.len());
        }
        for room in rooms {
            self.enqueue(room, RoomEvent::Resync, ctx);
        }
    }

    /// Resyncs `room` now or at a later tick (see [`ResyncThrottle`]).
    fn resync_room(&mut self, room_id: RoomId) {
        if self.throttle.request(room_id, Instant::now()) {
            if let Some(room) = self.subscribers.get(&room_id) {
                room.do_send(BusSignal::Resync);
            }
        }
    }

    /// Sends the resyncs the throttle deferred and that are now due.
    fn resync_due(&mut self) {
        for room_id in self.throttle.take_due(Instant::now()) {
            if let Some(room) = self.subscribers.get(&room_id) {
                room.do_send(BusSignal::Resync);
            }
        }
    }

    /// A payload on `room_id`'s channel that does not decode: counted,
    /// logged (rate-limited), and the room resynced in case it mattered.
    fn rejected(&mut self, room_id: RoomId, why: &serde_json::Error) {
        self.health.count_rejected();
        if let Some(n) = self.reject_log.note(Instant::now()) {
            log::warn!(
                "ignored {n} undecodable bus payload(s) (malformed or from another version; \
                 {} since start-up); latest on room {room_id}: {why}",
                self.health.rejected_payloads()
            );
        }
        self.resync_room(room_id);
    }
}

/// A pool of command connections to one server.
fn make_pool(
    info: redis::ConnectionInfo,
) -> Result<deadpool_redis::Pool, deadpool_redis::CreatePoolError> {
    let mut pool_config = deadpool_redis::Config::from_connection_info(info);
    pool_config.pool = Some(deadpool_redis::PoolConfig {
        max_size: 4,
        timeouts: deadpool_redis::Timeouts {
            wait: Some(REDIS_TIMEOUT),
            create: Some(REDIS_TIMEOUT),
            recycle: Some(REDIS_TIMEOUT),
        },
        ..Default::default()
    });
    pool_config.create_pool(Some(deadpool_redis::Runtime::Tokio1))
}

/// The server facts for the connection log line.
fn describe(facts: Option<&ServerFacts>) -> String {
    match facts {
        Some(f) => format!(
            "run {}, up {} s{}{}",
            f.run_id,
            f.uptime.as_secs(),
            if f.is_master { "" } else { ", not a master" },
            if f.promoted { ", promoted replica" } else { "" },
        ),
        None => "server facts unknown".into(),
    }
}

impl Actor for RedisBridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64 * 1024);
        self.connect(ctx);
        ctx.run_interval(self.config.liveness_refresh, |act, ctx| {
            act.refresh_liveness(ctx)
        });
        ctx.run_interval(self.config.reap_interval, |act, ctx| act.reap(ctx));
        let slices = u32::try_from(self.dead_checks.count()).unwrap_or(u32::MAX);
        ctx.run_interval(self.config.reap_interval / slices, |act, _| {
            act.check_declared_dead()
        });
        ctx.run_interval(RESYNC_MIN_GAP / 4, |act, _| act.resync_due());
        ctx.run_interval(self.config.liveness_refresh, |act, ctx| act.watchdog(ctx));
    }
}

impl StreamHandler<redis::Msg> for RedisBridge {
    fn handle(&mut self, msg: redis::Msg, _: &mut Self::Context) {
        let Some(room_id) = self.room_of_channel(msg.get_channel_name()) else {
            return;
        };
        // Invariant: nothing a payload says can stop the bridge or a room;
        // what does not decode is counted and repaired (see `rejected`).
        let envelope = match Envelope::decode(msg.get_payload_bytes()) {
            Ok(e) => e,
            Err(e) => return self.rejected(room_id, &e),
        };
        if envelope.origin == self.config.instance_id || envelope.room != room_id {
            return;
        }
        if let Some(sent_ms) = envelope.sent_ms {
            self.config.metrics.bus_received(sent_ms);
        }
        match envelope.event {
            RoomEvent::Resync => self.resync_room(room_id),
            event => {
                if let Some(room) = self.subscribers.get(&room_id) {
                    room.do_send(BusSignal::Event(event));
                }
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The subscription connection closed: Redis went away.
        self.stream = None;
        self.disconnected(&BusError::SubscriptionClosed, ctx);
    }
}

impl Handler<Subscribe> for RedisBridge {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        let channel = self.channel(msg.room_id);
        self.subscribers.insert(msg.room_id, msg.room);
        self.dead_checks.insert(msg.room_id.get(), msg.room_id);
        let sink = self.sink.clone();
        Box::pin(
            async move {
                if let Some(mut sink) = sink {
                    let subscribe = async move { Ok(sink.subscribe(&channel).await?) };
                    timed("subscribing", subscribe).await?;
                }
                Ok::<(), BusError>(())
            }
            .into_actor(self)
            .map(|res, act, ctx| {
                if let Err(e) = res {
                    act.disconnected(&e, ctx);
                }
            }),
        )
    }
}

impl Handler<Unsubscribe> for RedisBridge {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, ctx: &mut Self::Context) {
        self.subscribers.remove(&msg.room_id);
        self.dead_checks.remove(msg.room_id.get());
        self.throttle.forget(msg.room_id);
        if let Some(mut sink) = self.sink.clone() {
            let channel = self.channel(msg.room_id);
            ctx.spawn(
                async move {
                    let _ = tokio::time::timeout(REDIS_TIMEOUT, sink.unsubscribe(&channel)).await;
                }
                .into_actor(self),
            );
        }
    }
}

impl Handler<AnnounceRemoved> for RedisBridge {
    type Result = ();

    fn handle(&mut self, msg: AnnounceRemoved, ctx: &mut Self::Context) {
        self.announce(msg.0, ctx);
    }
}

impl Handler<Drain> for RedisBridge {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Drain, _: &mut Self::Context) -> Self::Result {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.drain_waiters.push(done);
        self.wake_drained();
        Box::pin(async move {
            let _ = tokio::time::timeout(msg.timeout, wait).await;
        })
    }
}

impl Handler<Publish> for RedisBridge {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) {
        self.enqueue(msg.room_id, msg.event, ctx);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn a_bad_url_keeps_the_redis_error() {
        let config = BridgeConfig {
            address: BusAddress::Direct("foo://nowhere".into()),
            prefix: "chat".into(),
            instance_id: "a".into(),
            liveness_ttl: Duration::from_secs(5),
            liveness_refresh: Duration::from_secs(1),
            reap_interval: Duration::from_secs(2),
            metrics: Default::default(),
        };
        let store: SharedStore = Arc::new(MemoryStore::new(10));
        let Err(e) = RedisBridge::new(config, store, BusHealth::default()) else {
            panic!("a foo:// URL was accepted");
        };
        assert!(matches!(e, BridgeError::Url(_)), "{e:?}");
        let chain = Chain(&e).to_string();
        let head = "invalid REDIS_URL or REDIS_SENTINELS: ";
        assert!(chain.starts_with(head), "{chain}");
        assert!(chain.len() > head.len(), "{chain}");
    }

    /// Before its first connection a process counts the TTL from its own
    /// start: it is not "declared dead" while it is still connecting (a
    /// spurious warning, and a resync of every room, at each start-up).
    #[test]
    fn the_liveness_ttl_counts_from_start_up_until_the_first_renewal() {
        let ttl = Duration::from_millis(200);
        let config = BridgeConfig {
            address: BusAddress::Direct("redis://127.0.0.1:1".into()),
            prefix: "chat".into(),
            instance_id: "a".into(),
            liveness_ttl: ttl,
            liveness_refresh: Duration::from_millis(50),
            reap_interval: Duration::from_millis(100),
            metrics: Default::default(),
        };
        let store: SharedStore = Arc::new(MemoryStore::new(10));
        let Ok(mut bridge) = RedisBridge::new(config, store, BusHealth::default()) else {
            panic!("a plain redis:// URL was refused");
        };
        bridge.check_declared_dead();
        assert!(!bridge.presumed_dead, "dead at once, before any connection");
        std::thread::sleep(ttl + Duration::from_millis(20));
        bridge.check_declared_dead();
        assert!(bridge.presumed_dead, "still unconnected a TTL after start");
        bridge.renewed(true);
        assert!(!bridge.presumed_dead);
    }

    #[test]
    fn bus_errors_chain_their_causes() {
        let timeout = BusError::TimedOut {
            what: "publishing",
            after: REDIS_TIMEOUT,
        };
        assert_eq!(
            Chain(&timeout).to_string(),
            "publishing timed out after 3000 ms"
        );
        let store = BusError::from(StoreError::unavailable(
            "instances_with_members",
            crate::store::TimedOut {
                after: Duration::from_millis(5),
            },
        ));
        assert_eq!(
            Chain(&store).to_string(),
            "store call failed: store unavailable: instances_with_members: \
             no answer within 5 ms"
        );
    }
}
