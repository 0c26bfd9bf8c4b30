//! Liveness: this process renews its key, reaps the instances whose key is
//! gone, and notices when it must itself have been declared dead (see the
//! module comment of [`super`]). Methods of [`RedisBridge`], called by its
//! timers and on connection.

use std::time::{Duration, Instant};

use actix::prelude::*;
use deadpool_redis::redis::{self, AsyncCommands};

use super::{timed, BusError, BusSignal, RedisBridge};
use crate::error::Chain;

/// How long one survivor holds the right to reap a given dead instance, at
/// most: the reaper releases the lock as soon as it is done, so a second
/// death of an instance restarted under the same id is reaped at once.
const REAP_LOCK: Duration = Duration::from_secs(30);
/// Deletes the reap lock `KEYS[1]` only if `ARGV[1]` still holds it.
const RELEASE_LOCK: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

impl RedisBridge {
    /// The liveness key was renewed just now (`connected`: on a new
    /// connection).
    pub(super) fn renewed(&mut self, connected: bool) {
        self.renewed_at = Instant::now();
        if connected && self.presumed_dead {
            log::warn!(
                "redis bus: back after being presumed dead; rooms check their members \
                 against the store"
            );
        }
        self.presumed_dead = false;
    }

    /// While cut off: once the liveness key must have expired, the others
    /// may reap this process's members at any moment, so every room checks
    /// its members against the store (a member the store no longer has is
    /// closed with 1012), every `REAP_INTERVAL_MS` until reconnected.
    /// Called every `REAP_INTERVAL_MS / slices`: each call tells one slice
    /// of the rooms, so each room is told once per interval and one call
    /// starts at most `ceil(peak rooms / slices)` store reads, not one per
    /// room of the process at once.
    pub(super) fn check_declared_dead(&mut self) {
        if self.sink.is_some() {
            return;
        }
        if self.renewed_at.elapsed() < self.config.liveness_ttl {
            return;
        }
        if !self.presumed_dead {
            self.presumed_dead = true;
            log::warn!(
                "redis bus: liveness key not renewed for {:?} (LIVENESS_TTL_SECS): \
                 presumed declared dead; rooms close members the store no longer has",
                self.config.liveness_ttl
            );
        }
        let mut due = Vec::new();
        self.dead_checks.next_slice(&mut due);
        for room in due.iter().filter_map(|r| self.subscribers.get(r)) {
            room.do_send(BusSignal::Resync);
        }
    }

    pub(super) fn refresh_liveness(&mut self, ctx: &mut Context<Self>) {
        if self.sink.is_none() {
            return;
        }
        let pool = self.pool.clone();
        let key = self.instance_key(&self.config.instance_id);
        let ttl = self.config.liveness_ttl.as_millis() as u64;
        let fut = timed("refreshing liveness", async move {
            let mut conn = pool.get().await?;
            conn.pset_ex::<_, _, ()>(&key, "alive", ttl).await?;
            Ok(())
        });
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(()) => act.renewed(false),
            Err(e) => act.disconnected(&e, ctx),
        }));
    }

    /// Finds instances that hold members but have no liveness key, and
    /// removes their members (one survivor per dead instance, by lock).
    pub(super) fn reap(&mut self, ctx: &mut Context<Self>) {
        // Invariant: a missing key counts only once every live instance has
        // had time to write it on this master (`address::reap_wait`):
        // after a Redis outage every key may be gone and the others may
        // still be in their reconnection backoff.
        let settled = self
            .connected_at
            .is_some_and(|t| t.elapsed() >= self.reap_wait);
        if !settled {
            return;
        }
        let store = self.store.clone();
        let pool = self.pool.clone();
        let me = self.config.instance_id.clone();
        let prefix = self.config.prefix.clone();
        let reaped_instances = self.config.metrics.reaped_instances.clone();
        let fut = async move {
            let mut reaped = Vec::new();
            let instances = store.instances_with_members().await?;
            let mut conn = pool.get().await?;
            for instance in instances.into_iter().filter(|i| *i != me) {
                let alive: bool = conn.exists(format!("{prefix}:instance:{instance}")).await?;
                if alive {
                    continue;
                }
                let lock: Option<String> = redis::cmd("SET")
                    .arg(format!("{prefix}:reap:{instance}"))
                    .arg(&me)
                    .arg("NX")
                    .arg("PX")
                    .arg(REAP_LOCK.as_millis() as u64)
                    .query_async(&mut conn)
                    .await?;
                if lock.is_none() {
                    continue; // another survivor is on it
                }
                let removed = store.remove_instance_members(&instance).await;
                // Released at once, done or not: the instance may come back
                // under the same id and die again, and its second death
                // must not wait for the lock to expire.
                let released: Result<i64, _> = redis::cmd("EVAL")
                    .arg(RELEASE_LOCK)
                    .arg(1)
                    .arg(format!("{prefix}:reap:{instance}"))
                    .arg(&me)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = released {
                    log::warn!("reaper: cannot release the lock on {instance}: {e}");
                }
                let removed = removed?;
                reaped_instances.increment(1);
                log::warn!(
                    "instance {instance} is gone: removed its {} members",
                    removed.len()
                );
                reaped.extend(removed);
            }
            Ok::<_, BusError>(reaped)
        };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(reaped) => act.announce(reaped, ctx),
            Err(e) => log::warn!("reaper: {}", Chain(&e)),
        }));
    }
}
