//! The instance lock: MySQL named locks (`GET_LOCK`), held on a dedicated
//! connection for the life of the process, that tell a live process from a
//! dead one. They decide which member rows start-up may delete and which
//! starts are refused.
//!
//! Lock names are server-wide, so every name hashes the database name with
//! what it guards (`chat:` and 40 hex digits of SHA-256: 45 characters,
//! under MySQL's 64, whatever the length of the database or instance id):
//! - `instance <INSTANCE_ID>`: held by the one process running as that id;
//! - `node <k>` (`k` below [`NODE_SLOTS`]): each process holds one, so a
//!   process can count the other live processes on the database;
//! - `solo`: held by a process without a bus (neither `REDIS_URL` nor
//!   `REDIS_SENTINELS`);
//! - `events relay` (not taken here, but named the same way): held by the
//!   one process that publishes the domain-event outbox
//!   (`store/mysql/outbox.rs`).
//!
//! Invariants (a lock is taken before any member row of this process is
//! written and held until the process ends; MySQL releases it when the
//! connection closes, so also when the process is SIGKILLed):
//! 1. **One live process per instance id and database.** A start whose
//!    instance lock is held elsewhere is refused ([`Refusal::InstanceHeld`])
//!    before it deletes anything.
//! 2. **Only provably dead rows are deleted.** Start-up deletes the rows of
//!    its own instance id (it holds that lock, so the rows' writer is a dead
//!    earlier life) and, without a bus, the rows of other ids whose lock is
//!    free ([`InstanceLock::dead_instances`]); a held lock is a live process
//!    and a refusal.
//! 3. **No process without a bus beside another live process.** A process
//!    without a bus takes `solo` and its node slot, then finds every other
//!    slot free; a cluster process takes its slot, then finds `solo` free.
//!    Each takes its own lock before looking at the other's, so of two
//!    starts at the same moment at least one sees the other and is refused.
//!
//! The connection can break (a MySQL outage or restart): then the locks are
//! gone and [`InstanceLock::keep`] takes them again on a new connection. If
//! another process took them meanwhile (a second start during the outage),
//! this process cannot know which of its rows survive and reports the lock
//! lost: the caller shuts down. While the locks are gone the invariants rest
//! on nobody starting; that window is as long as the outage.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Error as SqlError, Opts};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

/// How many processes may share one database (node slots).
pub const NODE_SLOTS: usize = 64;
/// How often the holder checks that its connection still holds the locks.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long the holder waits for a lock still held by its own broken
/// connection (the server has not noticed the close yet) before it treats
/// the lock as taken by someone else.
const GHOST_LIMIT: Duration = Duration::from_secs(60);

/// Whether the process runs with a bus (`REDIS_URL` or `REDIS_SENTINELS`)
/// or alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Solo,
    Cluster,
}

/// Why a start is refused: another live process is in the way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "another live process runs as INSTANCE_ID={0} on this database (it holds the \
         instance lock): give each process its own INSTANCE_ID, or stop the other first"
    )]
    InstanceHeld(String),
    #[error(
        "another process runs on this database without REDIS_URL: processes that share a \
         database need the Redis bus (set REDIS_URL or REDIS_SENTINELS on all of them), or stop the other first"
    )]
    SoloRunning,
    #[error(
        "{0} other live process(es) use this database and this one has no REDIS_URL: \
         processes that share a database need the Redis bus (set REDIS_URL or REDIS_SENTINELS on all of them), \
         or give this one its own database"
    )]
    OthersRunning(u64),
    #[error("all {NODE_SLOTS} process slots of this database are taken")]
    NoSlot,
}

/// A failure to take the locks.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    #[error("cannot take the instance lock")]
    Sql(#[from] SqlError),
    #[error("cannot take the instance lock: no answer within {} ms", .0.as_millis())]
    TimedOut(Duration),
}

/// The lock names for one database and instance id.
#[derive(Debug, Clone)]
struct Names {
    instance: String,
    solo: String,
    slots: Vec<String>,
}

impl Names {
    fn new(database: &str, instance_id: &str) -> Names {
        Names {
            instance: lock_name(database, &format!("instance {instance_id}")),
            solo: lock_name(database, "solo"),
            slots: (0..NODE_SLOTS)
                .map(|k| lock_name(database, &format!("node {k}")))
                .collect(),
        }
    }
}

/// `chat:` and the first 40 hex digits of SHA-256 of the database name and
/// `what` (a newline between them: neither a database nor an instance id
/// mixes them up).
pub(crate) fn lock_name(database: &str, what: &str) -> String {
    let digest = Sha256::digest(format!("{database}\n{what}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("chat:{}", &hex[..40])
}

/// What the holder does after its connection broke and a new one looked at
/// the instance lock (`holder`: the connection id `IS_USED_LOCK` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Regain {
    /// Free: take it.
    Take,
    /// Still held by our old connection: wait for the server to drop it.
    Wait,
    /// Held by another connection: another process took it.
    Lost,
}

fn regain(holder: Option<u64>, old_connection: u64, waited: Duration) -> Regain {
    match holder {
        None => Regain::Take,
        Some(id) if id == old_connection && waited < GHOST_LIMIT => Regain::Wait,
        Some(_) => Regain::Lost,
    }
}

/// The locks of this process, on their own connection.
pub struct InstanceLock {
    conn: Conn,
    opts: Opts,
    names: Names,
    role: Role,
    instance_id: String,
    timeout: Duration,
}

impl InstanceLock {
    /// Connects and takes the locks for `instance_id` in `role` (see the
    /// module's invariants); every step is bounded by `timeout`.
    pub async fn acquire(
        url: &str,
        instance_id: &str,
        role: Role,
        timeout: Duration,
    ) -> Result<InstanceLock, LockError> {
        let opts = Opts::from_url(url).map_err(SqlError::from)?;
        let database = opts.db_name().unwrap_or_default().to_owned();
        let names = Names::new(&database, instance_id);
        let conn = bounded(timeout, Conn::new(opts.clone())).await?;
        let mut lock = InstanceLock {
            conn,
            opts,
            names,
            role,
            instance_id: instance_id.to_owned(),
            timeout,
        };
        let taken = bounded(
            timeout,
            take_all(&mut lock.conn, &lock.names, role, instance_id),
        )
        .await?;
        taken?;
        Ok(lock)
    }

    /// Of the instance ids that have member rows, those whose rows start-up
    /// may delete: this process's own id, and (without a bus) every id whose
    /// instance lock is free. A held lock of another id is a live process
    /// sharing the database without a bus: a refusal.
    pub async fn dead_instances(&mut self, ids: &[String]) -> Result<Vec<String>, LockError> {
        let mut dead = Vec::new();
        for id in ids {
            if *id == self.instance_id {
                dead.push(id.clone());
                continue;
            }
            if self.role == Role::Cluster {
                // Others' rows are the bus's reaper's to judge.
                continue;
            }
            let name = lock_name(
                self.opts.db_name().unwrap_or_default(),
                &format!("instance {id}"),
            );
            let holder: Option<Option<u64>> = bounded(
                self.timeout,
                self.conn.exec_first("SELECT IS_USED_LOCK(?)", (name,)),
            )
            .await?;
            match holder.flatten() {
                None => dead.push(id.clone()),
                Some(_) => return Err(Refusal::OthersRunning(1).into()),
            }
        }
        Ok(dead)
    }

    /// Keeps the locks for the life of the process: checks them every
    /// [`CHECK_EVERY`] and takes them again on a new connection when the old
    /// one broke. Returns a handle that releases them, and a receiver that
    /// is told why if another process took them meanwhile.
    pub fn keep(self) -> (LockKeeper, oneshot::Receiver<String>) {
        let (lost_tx, lost_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = actix_web::rt::spawn(self.run(stop_rx, lost_tx));
        (
            LockKeeper {
                stop: Some(stop_tx),
                task: Some(task),
            },
            lost_rx,
        )
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>, lost: oneshot::Sender<String>) {
        loop {
            tokio::select! {
                _ = &mut stop => break,
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
            let check = bounded(
                self.timeout,
                self.conn.exec_first::<Option<u64>, _, _>(
                    "SELECT IS_USED_LOCK(?) = CONNECTION_ID()",
                    (self.names.instance.clone(),),
                ),
            )
            .await;
            if matches!(check, Ok(Some(Some(1)))) {
                continue;
            }
            log::warn!("the connection holding the instance lock failed; taking it again");
            let old = self.conn.id() as u64;
            let regained = tokio::select! {
                _ = &mut stop => break,
                r = self.regain(old) => r,
            };
            if let Err(why) = regained {
                log::error!("lost the instance lock: {why}; shutting down");
                let _ = lost.send(why);
                return;
            }
            log::info!("instance lock held again");
        }
        let _ = bounded(self.timeout, self.conn.query_drop("DO RELEASE_ALL_LOCKS()")).await;
        let _ = bounded(self.timeout, self.conn.disconnect()).await;
    }

    /// Takes the locks on a new connection, retrying while MySQL is away;
    /// `Err` says who took them meanwhile.
    async fn regain(&mut self, old: u64) -> Result<(), String> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.try_regain(old, started.elapsed()).await {
                Ok(Some(Ok(()))) => return Ok(()),
                Ok(Some(Err(refusal))) => return Err(refusal.to_string()),
                Ok(None) => {}
                Err(e) => log::debug!("instance lock not taken yet: {e}"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One attempt: `Ok(None)` to wait for our old connection to go away.
    async fn try_regain(
        &mut self,
        old: u64,
        waited: Duration,
    ) -> Result<Option<Result<(), Refusal>>, LockError> {
        let mut conn = bounded(self.timeout, Conn::new(self.opts.clone())).await?;
        let holder: Option<Option<u64>> = bounded(
            self.timeout,
            conn.exec_first("SELECT IS_USED_LOCK(?)", (self.names.instance.clone(),)),
        )
        .await?;
        match regain(holder.flatten(), old, waited) {
            Regain::Wait => return Ok(None),
            Regain::Lost => return Ok(Some(Err(Refusal::InstanceHeld(self.instance_id.clone())))),
            Regain::Take => {}
        }
        let taken = bounded(
            self.timeout,
            take_all(&mut conn, &self.names, self.role, &self.instance_id),
        )
        .await?;
        if taken.is_ok() {
            self.conn = conn;
        }
        Ok(Some(taken))
    }
}

/// Releases the locks when the process stops.
pub struct LockKeeper {
    stop: Option<oneshot::Sender<()>>,
    task: Option<actix_web::rt::task::JoinHandle<()>>,
}

impl LockKeeper {
    /// Releases the locks and closes their connection (clean shutdown).
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Takes the locks of `role` on `conn` and checks the others' (invariants
/// 1 and 3). On a refusal the caller drops `conn`, which releases whatever
/// was taken.
async fn take_all(
    conn: &mut Conn,
    names: &Names,
    role: Role,
    instance_id: &str,
) -> Result<Result<(), Refusal>, SqlError> {
    if !get_lock(conn, &names.instance).await? {
        return Ok(Err(Refusal::InstanceHeld(instance_id.to_owned())));
    }
    let mut slot = None;
    for (k, name) in names.slots.iter().enumerate() {
        if get_lock(conn, name).await? {
            slot = Some(k);
            break;
        }
    }
    if slot.is_none() {
        return Ok(Err(Refusal::NoSlot));
    }
    match role {
        Role::Solo => {
            if !get_lock(conn, &names.solo).await? {
                return Ok(Err(Refusal::SoloRunning));
            }
            let others = other_slots_held(conn, names).await?;
            if others > 0 {
                return Ok(Err(Refusal::OthersRunning(others)));
            }
        }
        Role::Cluster => {
            let holder: Option<Option<u64>> = conn
                .exec_first("SELECT IS_USED_LOCK(?)", (names.solo.clone(),))
                .await?;
            if holder.flatten().is_some() {
                return Ok(Err(Refusal::SoloRunning));
            }
        }
    }
    Ok(Ok(()))
}

/// `GET_LOCK(name, 0)`: whether this connection now holds it.
async fn get_lock(conn: &mut Conn, name: &str) -> Result<bool, SqlError> {
    let got: Option<Option<i64>> = conn.exec_first("SELECT GET_LOCK(?, 0)", (name,)).await?;
    Ok(got.flatten() == Some(1))
}

/// How many node slots other connections hold.
async fn other_slots_held(conn: &mut Conn, names: &Names) -> Result<u64, SqlError> {
    let union = vec!["SELECT IS_USED_LOCK(?) AS h"; names.slots.len()].join(" UNION ALL ");
    let sql =
        format!("SELECT COUNT(*) FROM ({union}) s WHERE h IS NOT NULL AND h <> CONNECTION_ID()");
    let count: Option<u64> = conn.exec_first(sql, names.slots.clone()).await?;
    Ok(count.unwrap_or(0))
}

async fn bounded<T, E: Into<LockError>>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, LockError> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(LockError::TimedOut(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_mysql_and_differ_by_database_and_id() {
        let long = "x".repeat(300);
        let a = Names::new("chat", "node-1");
        let b = Names::new("chat2", "node-1");
        let c = Names::new("chat", &long);
        for name in [&a.instance, &a.solo, &a.slots[63], &c.instance] {
            assert!(name.len() <= 64, "{name}");
            assert!(name.starts_with("chat:"), "{name}");
        }
        assert_ne!(a.instance, b.instance);
        assert_ne!(a.solo, b.solo);
        assert_ne!(a.instance, c.instance);
        assert_eq!(a.solo, Names::new("chat", "other").solo);
        assert_eq!(a.slots.len(), NODE_SLOTS);
        // Stable across builds: processes of different versions agree.
        assert_eq!(
            lock_name("chat", "solo"),
            format!("chat:{}", &hex_sha256("chat\nsolo")[..40])
        );
    }

    fn hex_sha256(s: &str) -> String {
        Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn a_lock_held_by_our_old_connection_is_waited_for_then_given_up() {
        let short = Duration::from_secs(1);
        assert_eq!(regain(None, 7, short), Regain::Take);
        assert_eq!(regain(Some(7), 7, short), Regain::Wait);
        assert_eq!(regain(Some(8), 7, short), Regain::Lost);
        assert_eq!(regain(Some(7), 7, GHOST_LIMIT), Regain::Lost);
        assert_eq!(regain(None, 7, GHOST_LIMIT * 2), Regain::Take);
    }

    #[test]
    fn refusals_say_what_to_do() {
        let held = Refusal::InstanceHeld("node-1".into()).to_string();
        assert!(held.contains("INSTANCE_ID=node-1"), "{held}");
        assert!(Refusal::OthersRunning(2).to_string().contains("REDIS_URL"));
        assert!(Refusal::SoloRunning.to_string().contains("REDIS_URL"));
    }
}
