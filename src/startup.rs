//! Building and running the application: pick the store, start the room
//! manager, bind the listener (port 0 in tests, so the real port is
//! reported), mount the routes, and shut down cleanly on SIGINT/SIGTERM.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_http::{HttpService, KeepAlive};
use actix_server::{Server, ServerHandle};
use actix_service::{fn_service, map_config};
use actix_web::dev::AppConfig;
use actix_web::middleware::{from_fn, DefaultHeaders};
use actix_web::{web, App};
use handlebars::Handlebars;

use crate::actors::bus::{AnnounceRemoved, BridgeConfig, BridgeError, BusHealth, RedisBridge};
use crate::actors::context::{SessionContext, SessionLimits};
use crate::actors::open_sessions::OpenSessions;
use crate::actors::room::RoomConfig;
use crate::actors::room_manager::{RoomManager, Shutdown};
use crate::config::Settings;
use crate::connections::ConnectionLimiter;
use crate::error::Chain;
use crate::events::relay::{EventSource, MemorySource, Relay};
use crate::events::Events;
use crate::http::state::HttpState;
use crate::instance_lock::{InstanceLock, LockError, LockKeeper, Refusal, Role};
use crate::rate_limit::KeyedLimiter;
use crate::store::{may_heal, MeasuredStore, MemoryStore, MySqlStore, SharedStore, StoreError};
use crate::telemetry::{Metrics, UPKEEP_INTERVAL};
use crate::ws::TransportLimits;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot bind {address}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load template {path}")]
    Template {
        path: String,
        #[source]
        source: handlebars::TemplateError,
    },
    #[error("REDIS_URL (a cluster) needs MYSQL_URL: processes must share one store")]
    ClusterWithoutSharedStore,
    #[error("cannot open the store")]
    Store(#[source] StoreError),
    #[error("cannot set up the redis bus")]
    Bus(#[source] BridgeError),
    /// Another live process is in the way (see `instance_lock`): nothing
    /// was deleted. The binary exits with [`StartupError::REFUSED_EXIT`].
    #[error("refused, to protect a running process")]
    Refused(#[source] Refusal),
    #[error("cannot check the instance lock")]
    Lock(#[source] LockError),
}

impl StartupError {
    /// The exit code of a refused start (another live process in the way),
    /// so a supervisor can be told not to restart it (pm2
    /// `stop_exit_codes`, systemd `RestartPreventExitStatus`).
    pub const REFUSED_EXIT: u8 = 3;

    /// Whether waiting and restarting cannot help: another process is in
    /// the way.
    pub fn is_refusal(&self) -> bool {
        matches!(self, StartupError::Refused(_))
    }
}

impl From<LockError> for StartupError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Refused(r) => StartupError::Refused(r),
            e => StartupError::Lock(e),
        }
    }
}

/// A bound, running server.
pub struct Application {
    port: u16,
    /// The port of the `METRICS_ADDR` listener, if there is one.
    metrics_port: Option<u16>,
    server: Server,
    chat: Arc<SessionContext>,
    /// The instance lock (MySQL store), released by [`Stopper::stop`] once
    /// the members are removed.
    lock: SharedKeeper,
    /// Told why when another process took the instance lock.
    lock_lost: Option<tokio::sync::oneshot::Receiver<String>>,
    /// The domain-event relay (`AMQP_URL`), stopped by [`Stopper::stop`].
    relay: SharedRelay,
}

/// The event relay, shared by the application and its stoppers.
type SharedRelay = Arc<tokio::sync::Mutex<Option<Relay>>>;

/// How long a stopping server gives the event relay to publish what is
/// buffered (the departures of its members, say). With MySQL what is left
/// stays in the outbox for the next relay; without, it is lost.
const RELAY_DRAIN: Duration = Duration::from_secs(2);

impl Application {
    /// Connects the store, starts the actors and binds the listener.
    /// Must run inside an actix system.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let settings = Arc::new(settings);
        // Checked before anything starts, so a bad setup fails cleanly.
        let mut templates = Handlebars::new();
        let template_path = format!("{}/chat.hbs", settings.templates_dir);
        templates
            .register_template_file("chat", &template_path)
            .map_err(|e| StartupError::Template {
                path: template_path.clone(),
                source: e,
            })?;
        if settings.bus_address().is_some() && settings.mysql_url.is_none() {
            // Each process's memory store would be a different world.
            return Err(StartupError::ClusterWithoutSharedStore);
        }
        // Invariant: the port is ours before the store is touched. A second
        // start on a busy port fails here, having read and deleted nothing.
        // The socket is bound but not listening until the server is ready:
        // connections to it are refused (not queued) while MySQL is waited
        // for, so a balancer tries another process.
        let address = format!("{}:{}", settings.host, settings.port);
        let bind_error = |source| StartupError::Bind {
            address: address.clone(),
            source,
        };
        let socket = reserve_port(&address).map_err(bind_error)?;
        let local_addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| bind_error(std::io::Error::other("no local address")))?;
        let port = local_addr.port();
        // The metrics listener's port is taken now too (same invariant).
        let metrics_socket = match settings.metrics_addr {
            None => None,
            Some(addr) => {
                let address = addr.to_string();
                let socket = reserve_port(&address).map_err(|source| StartupError::Bind {
                    address: address.clone(),
                    source,
                })?;
                Some((address, socket))
            }
        };

        // Every series of this server; its own registry, see `telemetry`.
        let metrics = Arc::new(Metrics::new());
        // Domain events: recorded by the store, published by the relay.
        let events = settings.events.as_ref().map(|config| {
            let events = match settings.mysql_url {
                Some(_) => Events::for_mysql(&settings.instance_id, config.buffer_max),
                None => Events::for_memory(&settings.instance_id, config.buffer_max),
            };
            Arc::new(events)
        });
        let Opened { store, mysql, lock } = connect_store(&settings, events.clone()).await?;
        if let Some(mysql) = &mysql {
            mysql.record_writer_batches(metrics.writer_batch.clone());
        }
        let store: SharedStore = Arc::new(MeasuredStore::new(store, metrics.clone()));
        let close = || async {
            if let Some(mysql) = &mysql {
                mysql.disconnect().await;
            }
        };
        // Everything that can refuse the start runs before any actor starts
        // (an actor dropped unpolled panics when the runtime goes away).
        let listener = match listen(socket) {
            Ok(listener) => listener,
            Err(e) => {
                close().await;
                return Err(bind_error(e));
            }
        };
        let metrics_listener = match metrics_socket.map(|(address, socket)| {
            listen(socket).map_err(|source| StartupError::Bind { address, source })
        }) {
            None => None,
            Some(Ok(listener)) => Some(listener),
            Some(Err(e)) => {
                close().await;
                return Err(e);
            }
        };
        let metrics_port = metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
        let mut lock = lock;
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());

        let bus_health = BusHealth::default();
        let bus = match settings.bus_address() {
            None => None,
            Some(address) => {
                let config = BridgeConfig {
                    address,
                    prefix: settings.redis_prefix.clone(),
                    instance_id: settings.instance_id.clone(),
                    liveness_ttl: settings.liveness_ttl,
                    liveness_refresh: settings.liveness_refresh,
                    reap_interval: settings.reap_interval,
                    metrics: metrics.clone(),
                };
                match RedisBridge::new(config, store.clone(), bus_health.clone()) {
                    Ok(bridge) => Some(bridge),
                    Err(e) => {
                        close().await;
                        return Err(StartupError::Bus(e));
                    }
                }
            }
        };

        // Memberships the store holds of a dead process: this instance id's
        // earlier life (a crash, or a restart quicker than the liveness TTL)
        // and, without a bus, every instance whose lock is free. Only rows
        // the instance lock proves dead are deleted (`instance_lock`,
        // invariant 2); a live process's rows are never touched, and one in
        // the way was refused above or is refused here.
        let stale = match lock.as_mut() {
            None => Ok(Vec::new()),
            Some(lock) => remove_dead_members(&*store, lock).await,
        };
        let removed = match stale {
            Ok(removed) => removed,
            Err(StartupError::Refused(r)) => {
                close().await;
                return Err(StartupError::Refused(r));
            }
            Err(e) => {
                log::warn!("could not clear stale members: {}", Chain(&e));
                Vec::new()
            }
        };
        let bus = bus.map(|bridge| bridge.start());
        if !removed.is_empty() {
            log::info!("removed {} stale members of an earlier run", removed.len());
            if let Some(bus) = &bus {
                bus.do_send(AnnounceRemoved(removed));
            }
        }
        let (lock, lock_lost) = match lock {
            Some(lock) => {
                let (keeper, lost) = lock.keep();
                (Some(keeper), Some(lost))
            }
            None => (None, None),
        };
        let lock = Arc::new(tokio::sync::Mutex::new(lock));
        let relay = match (&settings.events, &events) {
            (Some(config), Some(events)) => {
                let source: Box<dyn EventSource> = match &mysql {
                    Some(mysql) => Box::new(mysql.event_source()),
                    None => Box::new(MemorySource(events.clone())),
                };
                Some(Relay::start(config.clone(), events.clone(), source))
            }
            _ => None,
        };
        let relay = Arc::new(tokio::sync::Mutex::new(relay));

        let manager = RoomManager::new(
            store.clone(),
            RoomConfig {
                instance_id: settings.instance_id.clone(),
                history_on_join: settings.history_on_join,
                queue_max_messages: settings.room_queue_max_messages,
                queue_max_bytes: settings.room_queue_max_bytes,
                gap_timeout: settings.gap_timeout,
                store_timeout: settings.store_timeout,
                bus: bus.clone(),
                metrics: metrics.clone(),
            },
            settings.empty_room_grace,
            settings.room_threads.unwrap_or(cpus),
        )
        .start();

        let connections = ConnectionLimiter::new(
            max_connections(&settings),
            settings.max_connections_per_address,
        );
        let chat = Arc::new(SessionContext::new(
            settings.instance_id.clone(),
            store,
            manager,
            session_limits(&settings),
            KeyedLimiter::new(
                settings.room_create_rate_per_sec,
                settings.room_create_burst,
            ),
            connections,
            settings.ws_flood_cooldown,
            metrics.clone(),
        ));
        run_upkeep(Arc::downgrade(&metrics));
        OpenSessions::run_heartbeat(Arc::downgrade(&chat.sessions));
        let state = Arc::new(HttpState {
            settings: settings.clone(),
            chat: chat.clone(),
            templates,
            bus_health: bus.as_ref().map(|_| bus_health.clone()),
            events,
        });

        let app_state = state.clone();
        let metrics_here = settings.metrics_addr.is_none();
        let server = Server::build()
            .workers(settings.workers.unwrap_or(cpus))
            .disable_signals()
            .shutdown_timeout(5)
            .listen("chat", listener, move || {
                let data = web::Data::from(app_state.clone());
                let static_dir = app_state.settings.static_dir.clone();
                let instance = app_state.settings.instance_id.clone();
                // Which process answered (for operators behind a balancer),
                // and the page's security policy (`http::SECURITY_HEADERS`).
                let headers = crate::http::SECURITY_HEADERS.iter().fold(
                    DefaultHeaders::new().add(("X-Chat-Instance", instance.as_str())),
                    |headers, &header| headers.add(header),
                );
                let app = App::new()
                    .app_data(data)
                    .wrap(headers)
                    .wrap(from_fn(crate::http::metrics::count_errors))
                    // Outermost: its duration and status are the client's.
                    .wrap(from_fn(crate::http::access_log::log_request))
                    .configure(|cfg| crate::http::configure(cfg, &static_dir, metrics_here));
                let ws_state = app_state.clone();
                HttpService::build()
                    .keep_alive(KeepAlive::Timeout(Duration::from_secs(5)))
                    .client_request_timeout(Duration::from_secs(5))
                    .client_disconnect_timeout(Duration::from_secs(1))
                    // Chat frames are small and latency matters: do not let
                    // Nagle's algorithm hold them back waiting for the
                    // client's delayed ACK.
                    .tcp_nodelay(true)
                    .local_addr(local_addr)
                    // WebSocket upgrades leave actix-http with their socket.
                    .upgrade(fn_service(move |(req, framed)| {
                        let state = ws_state.clone();
                        async move {
                            if let Err(e) = crate::http::ws::upgrade(state, req, framed).await {
                                log::debug!("WebSocket handshake not completed: {e}");
                            }
                            Ok::<(), actix_http::Error>(())
                        }
                    }))
                    .finish(map_config(app, |_| AppConfig::default()))
                    .tcp()
            })
            .map_err(bind_error)?;
        let server = match metrics_listener {
            None => server,
            Some(listener) => {
                let metrics_state = state.clone();
                server
                    .listen("metrics", listener, move || {
                        let data = web::Data::from(metrics_state.clone());
                        let app = App::new()
                            .app_data(data)
                            .configure(crate::http::configure_metrics_listener);
                        HttpService::build()
                            .keep_alive(KeepAlive::Timeout(Duration::from_secs(5)))
                            .client_request_timeout(Duration::from_secs(5))
                            .finish(map_config(app, |_| AppConfig::default()))
                            .tcp()
                    })
                    .map_err(bind_error)?
            }
        };
        if let (Some(addr), Some(port)) = (settings.metrics_addr, metrics_port) {
            log::info!("metrics on http://{}:{port}/metrics", addr.ip());
        }
        let server = server.run();
        Ok(Application {
            port,
            metrics_port,
            server,
            chat,
            lock,
            lock_lost,
            relay,
        })
    }

    /// The port actually bound (useful with `PORT=0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the `METRICS_ADDR` listener (`None` without one:
    /// `/metrics` is on [`Application::port`]).
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_port
    }

    /// A handle that stops the server the way a signal does.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            handle: self.server.handle(),
            chat: self.chat.clone(),
            lock: self.lock.clone(),
            relay: self.relay.clone(),
        }
    }

    /// Serves until stopped (see [`Stopper`]), until SIGINT/SIGTERM, or
    /// until another process took the instance lock (then the result is an
    /// error saying so).
    pub async fn run_until_stopped(mut self) -> std::io::Result<()> {
        let stopper = self.stopper();
        let lost = self.lock_lost.take();
        let (why_tx, why_rx) = tokio::sync::oneshot::channel::<String>();
        actix_web::rt::spawn(async move {
            let lost = async move {
                match lost {
                    Some(rx) => match rx.await {
                        Ok(why) => why,
                        // The keeper stopped: the server is stopping anyway.
                        Err(_) => std::future::pending().await,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = wait_for_signal() => log::info!("signal received, shutting down"),
                why = lost => {
                    log::error!("shutting down: lost the instance lock ({why})");
                    let _ = why_tx.send(why);
                }
            }
            stopper.stop().await;
        });
        let served = self.server.await;
        stop_relay(&self.relay).await;
        release(&self.lock).await;
        if let Ok(why) = why_rx.await {
            return Err(std::io::Error::other(format!(
                "lost the instance lock: {why}"
            )));
        }
        served
    }
}

/// Stops a running application cleanly: members are removed from the
/// store and told the server is going away (close 1001) before the
/// listener closes.
#[derive(Clone)]
pub struct Stopper {
    handle: ServerHandle,
    chat: Arc<SessionContext>,
    lock: SharedKeeper,
    relay: SharedRelay,
}

impl Stopper {
    /// Runs the shutdown sequence: new WebSockets are refused, rooms record
    /// their members' departure, then every socket (in a room or not) is
    /// closed with 1001, then the listener and the HTTP workers stop, then
    /// the instance lock is released.
    pub async fn stop(&self) {
        // New WebSockets are refused from here on (503 `unavailable`): a
        // socket opened now could only be closed again.
        self.chat.sessions.stop_admitting();
        if let Err(e) = self.chat.manager.send(Shutdown).await {
            log::warn!("room manager did not answer shutdown: {e}");
        }
        self.chat.sessions.close_all(Duration::from_secs(3)).await;
        self.handle.stop(true).await;
        // After the members' departures were recorded.
        stop_relay(&self.relay).await;
        // Last: while the lock is held no other start deletes our rows, and
        // once `stop` returns a new process may start on the database.
        release(&self.lock).await;
    }
}

/// Stops the event relay, if running (once; later calls do nothing).
async fn stop_relay(relay: &SharedRelay) {
    let relay = relay.lock().await.take();
    if let Some(relay) = relay {
        relay.stop(RELAY_DRAIN).await;
    }
}

/// Folds the recorded histogram values into their buckets every
/// [`UPKEEP_INTERVAL`] (see `telemetry`), until the metrics are dropped
/// with the application.
fn run_upkeep(metrics: std::sync::Weak<Metrics>) {
    actix_web::rt::spawn(async move {
        loop {
            actix_web::rt::time::sleep(UPKEEP_INTERVAL).await;
            match metrics.upgrade() {
                Some(metrics) => metrics.upkeep(),
                None => return,
            }
        }
    });
}

/// The instance lock's keeper, shared by the application and its stoppers.
type SharedKeeper = Arc<tokio::sync::Mutex<Option<LockKeeper>>>;

/// Releases the instance lock, if held (once; later calls do nothing).
async fn release(lock: &SharedKeeper) {
    let keeper = lock.lock().await.take();
    if let Some(keeper) = keeper {
        keeper.release().await;
    }
}

/// Ignores SIGHUP from now on, with a log line each time it comes. The
/// binary calls this first thing, so a HUP never kills it, not even while
/// it waits for MySQL.
///
/// SIGHUP is what log rotation and `systemctl reload` send, and the server
/// has no log file to reopen and no setting it could reload, so a HUP must
/// not end every chat. (With the default action SIGHUP killed the process
/// outright: clients saw 1006 and the member rows stayed behind.)
pub fn ignore_sighup() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                actix_web::rt::spawn(async move {
                    while hup.recv().await.is_some() {
                        log::info!(
                            "SIGHUP ignored: nothing to reload; stop with SIGTERM or SIGINT"
                        );
                    }
                });
            }
            Err(e) => log::warn!("cannot handle SIGHUP (it will stop the process): {e}"),
        }
    }
}

/// Waits for SIGINT or SIGTERM, the signals that stop the server (clean
/// shutdown: members removed, sockets closed with 1001). SIGHUP: see
/// [`ignore_sighup`].
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Raises the open-file limit to the hard limit and settles
/// `MAX_CONNECTIONS`: as set, or the soft limit less what MySQL, Redis and
/// the listener need. Both are logged, so an operator sees what the
/// process can hold.
fn max_connections(settings: &Settings) -> usize {
    let limits = crate::fd_limit::raise_to_hard();
    let (max, how) = match (settings.max_connections, limits) {
        (Some(max), _) => (max, "set"),
        (None, Some(limits)) => (
            crate::fd_limit::derived_max_connections(limits.soft),
            "the soft open-file limit less 256",
        ),
        (None, None) => (usize::MAX, "no open-file limit known"),
    };
    match limits {
        Some(l) => log::info!(
            "open-file limit: soft {} (was {}), hard {}; MAX_CONNECTIONS {max} ({how}); \
             MAX_CONNECTIONS_PER_ADDRESS {}",
            l.soft,
            l.soft_before,
            l.hard,
            settings.max_connections_per_address
        ),
        None => log::info!(
            "open-file limit unknown; MAX_CONNECTIONS {max} ({how}); \
             MAX_CONNECTIONS_PER_ADDRESS {}",
            settings.max_connections_per_address
        ),
    }
    if let (Some(l), Some(set)) = (limits, settings.max_connections) {
        if set as u64 > l.soft.saturating_sub(crate::fd_limit::RESERVED_FDS) {
            log::warn!(
                "MAX_CONNECTIONS {set} leaves fewer than {} of the {} open files for MySQL, \
                 Redis and the listener: raise the hard limit (ulimit -Hn, LimitNOFILE=)",
                crate::fd_limit::RESERVED_FDS,
                l.soft
            );
        }
    }
    max
}

/// The limits every session enforces, from the settings.
fn session_limits(settings: &Settings) -> SessionLimits {
    SessionLimits {
        text: settings.limits,
        frames_per_sec: settings.ws_rate_per_sec,
        frames_burst: settings.ws_rate_burst,
        rate_violations: settings.ws_rate_violations,
        joins_per_sec: settings.ws_join_rate_per_sec,
        joins_burst: settings.ws_join_burst,
        queue_capacity: settings.session_queue_capacity,
        store_timeout: settings.store_timeout,
        lobby_idle: settings.lobby_idle,
        heartbeat_interval: settings.heartbeat_interval,
        transport: TransportLimits {
            max_message_bytes: settings.max_frame_bytes,
            max_queued_bytes: settings.session_buffer_bytes,
            client_timeout: settings.client_timeout,
        },
    }
}

/// The store, and for MySQL the concrete store (to close it) and the
/// instance lock.
struct Opened {
    store: SharedStore,
    mysql: Option<Arc<MySqlStore>>,
    lock: Option<InstanceLock>,
}

/// Picks the store from the settings. A MySQL that is down or not ready is
/// retried until it answers: an operator starting the chat before the
/// database should see it come up by itself, not crash-loop. A refusal that
/// waiting cannot change (authentication, privileges, a bad URL or option,
/// a schema that is not ours or too narrow for the limits, see
/// [`may_heal`]) stops start-up at once with its cause. With MySQL the
/// instance lock is taken before anything reads a member row (see
/// `instance_lock`).
async fn connect_store(
    settings: &Settings,
    events: Option<Arc<Events>>,
) -> Result<Opened, StartupError> {
    let Some(url) = settings.mysql_url.as_deref() else {
        let mut memory = MemoryStore::new(settings.memory_history_limit)
            .with_max_bytes(settings.memory_store_max_bytes);
        if let Some(events) = events {
            memory = memory.with_events(events);
        }
        return Ok(Opened {
            store: Arc::new(memory),
            mysql: None,
            lock: None,
        });
    };
    let mut backoff = Duration::from_millis(250);
    let mysql =
        loop {
            let connected =
                match MySqlStore::connect_with_events(url, settings.store_timeout, events.clone())
                    .await
                {
                    Ok(store) => match store.check_limits(&settings.limits).await {
                        Ok(()) => Ok(store),
                        Err(e) => {
                            store.disconnect().await;
                            Err(e)
                        }
                    },
                    Err(e) => Err(e),
                };
            match connected {
                Ok(store) => break Arc::new(store),
                Err(e) if !may_heal(&e) => return Err(StartupError::Store(e)),
                Err(e) => {
                    log::warn!("MySQL not ready ({}); retrying in {backoff:?}", Chain(&e));
                    actix_web::rt::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
    // A bus by URL or through Sentinels makes a cluster process.
    let role = match settings.bus_address() {
        Some(_) => Role::Cluster,
        None => Role::Solo,
    };
    match InstanceLock::acquire(url, &settings.instance_id, role, settings.store_timeout).await {
        Ok(lock) => Ok(Opened {
            store: mysql.clone(),
            mysql: Some(mysql),
            lock: Some(lock),
        }),
        Err(e) => {
            mysql.disconnect().await;
            Err(e.into())
        }
    }
}

/// Deletes the member rows of every instance the lock proves dead (see
/// `InstanceLock::dead_instances`); a live one is a refusal.
async fn remove_dead_members(
    store: &dyn crate::store::Store,
    lock: &mut InstanceLock,
) -> Result<Vec<crate::store::RemovedMember>, StartupError> {
    let ids = store
        .instances_with_members()
        .await
        .map_err(StartupError::Store)?;
    let dead = lock.dead_instances(&ids).await?;
    let mut removed = Vec::new();
    for id in dead {
        removed.extend(
            store
                .remove_instance_members(&id)
                .await
                .map_err(StartupError::Store)?,
        );
    }
    Ok(removed)
}

/// Binds `address` (each address it resolves to in turn) without
/// listening: the port is taken, connections to it are refused.
fn reserve_port(address: &str) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::ToSocketAddrs;
    let mut last = None;
    for addr in address.to_socket_addrs()? {
        let bound = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .and_then(|socket| {
                // As std's TcpListener: a restart may bind while connections
                // of the previous process linger in TIME_WAIT. Linux still
                // refuses the bind while another socket listens on the port.
                socket.set_reuse_address(true)?;
                socket.bind(&addr.into())?;
                Ok(socket)
            });
        match bound {
            Ok(socket) => return Ok(socket),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address to bind")
    }))
}

/// Starts listening on a socket from [`reserve_port`].
fn listen(socket: socket2::Socket) -> std::io::Result<TcpListener> {
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Pending connections the kernel queues before the server accepts them
/// (actix's own default).
const LISTEN_BACKLOG: i32 = 2048;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    fn settings(vars: &[(&str, &str)]) -> Settings {
        Settings::from_lookup(|k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        })
        .expect("valid settings")
    }

    #[actix_rt::test]
    async fn a_missing_template_keeps_its_cause() {
        let Err(e) = Application::build(settings(&[("TEMPLATES_DIR", "/nonexistent")])).await
        else {
            panic!("started without templates");
        };
        assert!(
            matches!(&e, StartupError::Template { path, .. } if path == "/nonexistent/chat.hbs"),
            "{e:?}"
        );
        let cause = e.source().expect("the handlebars error");
        let chain = Chain(&e).to_string();
        assert!(
            chain.starts_with("cannot load template /nonexistent/chat.hbs: "),
            "{chain}"
        );
        assert!(chain.contains(&cause.to_string()), "{chain}");
    }

    #[actix_rt::test]
    async fn a_cluster_needs_a_shared_store() {
        // The environment cannot say this (see `config`), code still can.
        let mut cluster = settings(&[]);
        cluster.redis_url = Some("redis://127.0.0.1:6379".into());
        let Err(e) = Application::build(cluster).await else {
            panic!("started a cluster on a memory store");
        };
        assert!(
            matches!(e, StartupError::ClusterWithoutSharedStore),
            "{e:?}"
        );
    }
}
