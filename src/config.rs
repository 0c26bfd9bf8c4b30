//! Settings from the environment, loaded once at start-up. Every variable
//! and its default is here and nowhere else; README's configuration table
//! mirrors this file.

use std::time::Duration;

use crate::actors::bus::address::{
    parse_sentinels, BusAddress, SentinelAddress, DEFAULT_MASTER_NAME,
};
use crate::client_addr::TrustedProxies;
use crate::domain::TextLimits;
use crate::logging::LogFormat;
pub use crate::ws::origin::AllowedOrigins;

/// Everything the server can be configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HOST`: address to bind.
    pub host: String,
    /// `PORT`: TCP port; 0 picks a free one (tests).
    pub port: u16,
    /// `MYSQL_URL`: set = MySQL store, unset = in-memory store.
    pub mysql_url: Option<String>,
    /// `REDIS_URL`: set = cluster bus over Redis, unset = this process alone
    /// (unless `REDIS_SENTINELS` is set).
    pub redis_url: Option<String>,
    /// `REDIS_SENTINELS` (with `REDIS_MASTER_NAME`, `REDIS_SENTINEL_PASSWORD`,
    /// `REDIS_USERNAME`, `REDIS_PASSWORD`): set = cluster bus over the Redis
    /// master these Sentinels name. Exclusive with `REDIS_URL`.
    pub redis_sentinel: Option<SentinelAddress>,
    /// `INSTANCE_ID`: this process's name in a cluster.
    pub instance_id: String,
    /// `EMPTY_ROOM_GRACE_SECS`: how long a room nobody has joined lives.
    pub empty_room_grace: Duration,
    /// `MAX_TITLE_CHARS`, `MAX_NICKNAME_CHARS`, `MAX_CONTENT_CHARS`.
    pub limits: TextLimits,
    /// `MAX_FRAME_BYTES`: largest WebSocket frame (close 1009 above it).
    pub max_frame_bytes: usize,
    /// `MAX_BODY_BYTES`: largest REST body (413 above it).
    pub max_body_bytes: usize,
    /// `HISTORY_ON_JOIN`: messages sent in `joined.history`.
    pub history_on_join: usize,
    /// `MESSAGES_PAGE_MAX`: cap on `limit` for `GET .../messages`.
    pub messages_page_max: usize,
    /// `ROOMS_PAGE_MAX`: cap on `limit` for `GET /api/rooms`.
    pub rooms_page_max: usize,
    /// `MEMORY_HISTORY_LIMIT`: messages the memory store keeps per room.
    pub memory_history_limit: usize,
    /// `MEMORY_STORE_MAX_BYTES`: accounted bytes of history the memory
    /// store keeps across all rooms (the biggest room's oldest go first).
    pub memory_store_max_bytes: usize,
    /// `HEARTBEAT_INTERVAL_SECS`: how often the server pings each socket.
    pub heartbeat_interval: Duration,
    /// `CLIENT_TIMEOUT_SECS`: silence after which a socket is dropped.
    pub client_timeout: Duration,
    /// `WS_RATE_PER_SEC` / `WS_RATE_BURST`: client frames per connection.
    pub ws_rate_per_sec: f64,
    pub ws_rate_burst: f64,
    /// `WS_RATE_VIOLATIONS`: frames over the rate a connection may send
    /// (each answered `rate_limited`; the allowance refills at a tenth of
    /// this per second) before it is closed with 1008.
    pub ws_rate_violations: f64,
    /// `WS_FLOOD_COOLDOWN_SECS`: after a connection is closed for flooding,
    /// its address may not open a WebSocket for this long (429).
    pub ws_flood_cooldown: Duration,
    /// `WS_JOIN_RATE_PER_SEC` / `WS_JOIN_BURST`: `join` and `create`
    /// frames per connection, on a budget of their own.
    pub ws_join_rate_per_sec: f64,
    pub ws_join_burst: f64,
    /// `ROOM_CREATE_RATE_PER_SEC` / `ROOM_CREATE_BURST`: rooms per client IP.
    pub room_create_rate_per_sec: f64,
    pub room_create_burst: f64,
    /// `ROOM_QUEUE_MAX_MESSAGES` / `ROOM_QUEUE_MAX_BYTES`: chats a room
    /// holds while they wait to be stored; beyond either, a chat is refused
    /// with `rate_limited` (the room is busy).
    pub room_queue_max_messages: usize,
    pub room_queue_max_bytes: usize,
    /// `SESSION_QUEUE_CAPACITY`: events a session's mailbox holds; a room
    /// that finds it full (the session's thread is not keeping up) closes
    /// the session as a slow consumer.
    pub session_queue_capacity: usize,
    /// `SESSION_BUFFER_BYTES`: bytes of frames that may wait for a socket
    /// once the kernel's send buffer is full, before the client is closed
    /// as a slow consumer (1008).
    pub session_buffer_bytes: usize,
    /// `STORE_TIMEOUT_MS`: longest wait for one store call before answering
    /// `unavailable`.
    pub store_timeout: Duration,
    /// `STATIC_DIR` / `TEMPLATES_DIR`: where the page's files live.
    pub static_dir: String,
    pub templates_dir: String,
    /// `WORKERS`: HTTP worker threads (default: number of CPUs).
    pub workers: Option<usize>,
    /// `ROOM_THREADS`: threads hosting room actors (default: number of CPUs).
    pub room_threads: Option<usize>,
    /// `REDIS_PREFIX`: prefix of every Redis key and channel, so several
    /// clusters (or test runs) can share one Redis.
    pub redis_prefix: String,
    /// `LIVENESS_TTL_SECS`: an instance whose liveness key is older than
    /// this is dead; its members are reaped by the survivors.
    pub liveness_ttl: Duration,
    /// `LIVENESS_REFRESH_MS`: how often each instance renews its key.
    pub liveness_refresh: Duration,
    /// `REAP_INTERVAL_MS`: how often survivors look for dead instances.
    pub reap_interval: Duration,
    /// `GAP_TIMEOUT_MS`: how long a room waits for a missing message id
    /// before reading it from the store.
    pub gap_timeout: Duration,
    /// `TRUST_FORWARDED_FOR`: behind a proxy, key limits by the client's
    /// address in `X-Forwarded-For` (see `client_addr.rs`).
    pub trust_forwarded_for: bool,
    /// `TRUSTED_PROXIES`: the proxies whose `X-Forwarded-For` entries are
    /// believed (addresses and networks; default loopback).
    pub trusted_proxies: TrustedProxies,
    /// `MAX_CONNECTIONS_PER_ADDRESS`: open WebSockets one client address
    /// (keyed as the other limits, see `client_addr.rs`) may hold; the next
    /// handshake is refused with 429 `too_many_connections`.
    pub max_connections_per_address: usize,
    /// `MAX_CONNECTIONS`: open WebSockets of the whole process; the next
    /// handshake is refused with 503 `server_full`. Unset = derived at
    /// start-up from the open-file limit (see `fd_limit.rs`).
    pub max_connections: Option<usize>,
    /// `LOBBY_IDLE_SECS`: a WebSocket that has not been in a room for this
    /// long is closed (1000, "idle in the lobby").
    pub lobby_idle: Duration,
    /// `REQUEST_BODY_TIMEOUT_SECS`: longest a REST request body may take to
    /// arrive; beyond it 408 `request_timeout` and the connection is closed.
    pub request_body_timeout: Duration,
    /// `ALLOWED_ORIGINS`: the pages (`Origin`) that may open a WebSocket:
    /// unset = the server's own (`http(s)://` + the request's `Host`), `*`
    /// = any, or a comma-separated list of origins.
    pub allowed_origins: AllowedOrigins,
    /// `METRICS_ADDR`: where `GET /metrics` is served, as `ip:port` (port
    /// 0 picks a free one); unset = on the main port. Set, the main port
    /// answers `/metrics` with 404.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `LOG_FORMAT`: `text` (env_logger's lines) or `json` (one object per
    /// line); read first by `main`, [`log_format_from_env`], to set up the
    /// logger before anything is logged.
    pub log_format: LogFormat,
    /// `AMQP_URL` and the `EVENTS_*` settings: domain events published to
    /// RabbitMQ (`None`: no events, nothing recorded).
    pub events: Option<crate::events::EventsConfig>,
}

/// A setting that cannot be used: the variable, the value it was given and
/// what it accepts. Displayed as one line, `NAME=value: must be ...`, with
/// any password in a URL replaced by `***`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value}: {accepted}")]
pub struct ConfigError {
    /// The environment variable.
    pub name: &'static str,
    /// Its value as given (passwords masked, control characters escaped).
    pub value: String,
    /// What the variable accepts, starting with "must".
    pub accepted: String,
}

impl ConfigError {
    /// The error for `name=value`: `accepted` says what it must be.
    pub fn new(name: &'static str, value: &str, accepted: impl Into<String>) -> Self {
        ConfigError {
            name,
            value: printable(&mask_password(value)),
            accepted: accepted.into(),
        }
    }
}

/// The longest duration any setting accepts: a year. Longer ones would
/// overflow the timers' arithmetic (`Instant + Duration`) and mean nothing.
pub const MAX_SECS: u64 = 365 * 24 * 3600;
/// Widest title and nickname the MySQL columns (`VARCHAR(255)`) hold.
pub const MYSQL_MAX_NAME_CHARS: usize = 255;
/// Longest message the MySQL column (`TEXT`, 65,535 bytes) holds at 4 bytes
/// a character.
pub const MYSQL_MAX_CONTENT_CHARS: usize = 16_383;
/// Smallest `MEMORY_STORE_MAX_BYTES`: 1 MiB, room for a few hundred of the
/// largest messages, so a room's newest messages are never the ones evicted.
pub const MIN_MEMORY_STORE_BYTES: usize = 1 << 20;
/// Most threads `WORKERS` or `ROOM_THREADS` may ask for.
pub const MAX_THREADS: usize = 1024;

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `lookup`, so tests can supply their own map.
    /// Every variable is checked (one line each below); the first one that
    /// is set to something unusable is the error.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let defaults = TextLimits::default();
        let mysql_url = env.mysql_url("MYSQL_URL")?;
        // The MySQL columns bound the text limits; memory has no columns.
        let (max_name, max_content) = match mysql_url {
            Some(_) => (MYSQL_MAX_NAME_CHARS, MYSQL_MAX_CONTENT_CHARS),
            None => (usize::MAX, usize::MAX),
        };
        let settings = Settings {
            host: env.text("HOST", "127.0.0.1", usize::MAX)?,
            port: env.port("PORT", 3000)?,
            redis_url: env.redis_url("REDIS_URL")?,
            redis_sentinel: env.sentinel()?,
            mysql_url,
            instance_id: match env.value("INSTANCE_ID") {
                Some(_) => env.text("INSTANCE_ID", "", 255)?,
                None => generate_instance_id(),
            },
            empty_room_grace: env.secs("EMPTY_ROOM_GRACE_SECS", 60)?,
            limits: TextLimits {
                title: env.count("MAX_TITLE_CHARS", defaults.title, 1, max_name)?,
                nickname: env.count("MAX_NICKNAME_CHARS", defaults.nickname, 1, max_name)?,
                content: env.count("MAX_CONTENT_CHARS", defaults.content, 1, max_content)?,
            },
            max_frame_bytes: env.count("MAX_FRAME_BYTES", 64 * 1024, 1, usize::MAX)?,
            max_body_bytes: env.count("MAX_BODY_BYTES", 64 * 1024, 1, usize::MAX)?,
            // 0 is meaningful: no history in `joined`.
            history_on_join: env.count("HISTORY_ON_JOIN", 50, 0, usize::MAX)?,
            messages_page_max: env.count("MESSAGES_PAGE_MAX", 500, 1, usize::MAX)?,
            rooms_page_max: env.count("ROOMS_PAGE_MAX", 500, 1, usize::MAX)?,
            memory_history_limit: env.count("MEMORY_HISTORY_LIMIT", 10_000, 1, usize::MAX)?,
            memory_store_max_bytes: env.count(
                "MEMORY_STORE_MAX_BYTES",
                crate::store::DEFAULT_MAX_BYTES,
                MIN_MEMORY_STORE_BYTES,
                usize::MAX,
            )?,
            heartbeat_interval: env.secs("HEARTBEAT_INTERVAL_SECS", 10)?,
            client_timeout: env.secs("CLIENT_TIMEOUT_SECS", 30)?,
            ws_rate_per_sec: env.rate("WS_RATE_PER_SEC", 200.0)?,
            ws_rate_burst: env.burst("WS_RATE_BURST", 400.0)?,
            ws_rate_violations: env.burst("WS_RATE_VIOLATIONS", 50.0)?,
            ws_flood_cooldown: env.secs("WS_FLOOD_COOLDOWN_SECS", 10)?,
            ws_join_rate_per_sec: env.rate("WS_JOIN_RATE_PER_SEC", 2.0)?,
            ws_join_burst: env.burst("WS_JOIN_BURST", 10.0)?,
            room_create_rate_per_sec: env.rate("ROOM_CREATE_RATE_PER_SEC", 10.0)?,
            room_create_burst: env.burst("ROOM_CREATE_BURST", 1000.0)?,
            room_queue_max_messages: env.count("ROOM_QUEUE_MAX_MESSAGES", 2048, 1, usize::MAX)?,
            room_queue_max_bytes: env.count("ROOM_QUEUE_MAX_BYTES", 4 << 20, 1, usize::MAX)?,
            session_queue_capacity: env.count("SESSION_QUEUE_CAPACITY", 1024, 1, usize::MAX)?,
            session_buffer_bytes: env.count("SESSION_BUFFER_BYTES", 512 * 1024, 1, usize::MAX)?,
            store_timeout: env.millis("STORE_TIMEOUT_MS", 5000)?,
            static_dir: env.text("STATIC_DIR", "static", usize::MAX)?,
            templates_dir: env.text("TEMPLATES_DIR", "templates", usize::MAX)?,
            workers: env.threads("WORKERS")?,
            room_threads: env.threads("ROOM_THREADS")?,
            max_connections_per_address: env.count(
                "MAX_CONNECTIONS_PER_ADDRESS",
                64,
                1,
                usize::MAX,
            )?,
            max_connections: env.optional_count("MAX_CONNECTIONS", 1, usize::MAX)?,
            lobby_idle: env.secs("LOBBY_IDLE_SECS", 300)?,
            request_body_timeout: env.secs("REQUEST_BODY_TIMEOUT_SECS", 10)?,
            trust_forwarded_for: env.flag("TRUST_FORWARDED_FOR", false)?,
            trusted_proxies: match env.value("TRUSTED_PROXIES") {
                None => TrustedProxies::loopback(),
                Some(list) => TrustedProxies::parse(&list).map_err(|why| {
                    let accepted = format!(
                        "must be a comma-separated list of IP addresses and networks ({why})"
                    );
                    ConfigError::new("TRUSTED_PROXIES", &list, accepted)
                })?,
            },
            allowed_origins: match env.value("ALLOWED_ORIGINS") {
                None => AllowedOrigins::SameHost,
                Some(value) => AllowedOrigins::parse(&value).map_err(|why| {
                    let accepted =
                        format!("must be * or a comma-separated list of origins ({why})");
                    ConfigError::new("ALLOWED_ORIGINS", &value, accepted)
                })?,
            },
            metrics_addr: env.checked(
                "METRICS_ADDR",
                "must be an IP address and a port, like 127.0.0.1:9100 or [::1]:9100",
                |v| v.parse().ok(),
            )?,
            redis_prefix: env.text("REDIS_PREFIX", "chat", usize::MAX)?,
            liveness_ttl: env.secs("LIVENESS_TTL_SECS", 5)?,
            liveness_refresh: env.millis("LIVENESS_REFRESH_MS", 1000)?,
            reap_interval: env.millis("REAP_INTERVAL_MS", 2000)?,
            gap_timeout: env.millis("GAP_TIMEOUT_MS", 300)?,
            log_format: env.log_format()?,
            events: match env.amqp_url("AMQP_URL")? {
                None => None,
                Some(url) => Some(crate::events::EventsConfig {
                    url,
                    buffer_max: env.count("EVENTS_BUFFER_MAX", 100_000, 1, usize::MAX)?,
                    poll: env.millis("EVENTS_POLL_MS", 200)?,
                    publish_timeout: env.millis("EVENTS_PUBLISH_TIMEOUT_MS", 5000)?,
                }),
            },
        };
        settings.check_together()?;
        Ok(settings)
    }

    /// Rules between variables: each is reported on the second variable.
    fn check_together(&self) -> Result<(), ConfigError> {
        if self.client_timeout <= self.heartbeat_interval {
            // Idle clients only answer pings: they would all be dropped.
            return Err(ConfigError::new(
                "CLIENT_TIMEOUT_SECS",
                &self.client_timeout.as_secs().to_string(),
                format!(
                    "must be more than HEARTBEAT_INTERVAL_SECS ({})",
                    self.heartbeat_interval.as_secs()
                ),
            ));
        }
        if self.liveness_refresh >= self.liveness_ttl {
            // Every instance's key would expire between two renewals.
            return Err(ConfigError::new(
                "LIVENESS_REFRESH_MS",
                &self.liveness_refresh.as_millis().to_string(),
                format!(
                    "must be less than LIVENESS_TTL_SECS ({} s)",
                    self.liveness_ttl.as_secs()
                ),
            ));
        }
        let sentinels = |s: &SentinelAddress| {
            let list: Vec<String> = s
                .sentinels
                .iter()
                .map(|(h, p)| format!("{h}:{p}"))
                .collect();
            list.join(",")
        };
        if let (Some(_), Some(sentinel)) = (&self.redis_url, &self.redis_sentinel) {
            return Err(ConfigError::new(
                "REDIS_SENTINELS",
                &sentinels(sentinel),
                "must be unset when REDIS_URL is set: the bus is one Redis or the master \
                 the Sentinels name, not both",
            ));
        }
        if let (Some(sentinel), None) = (&self.redis_sentinel, &self.mysql_url) {
            return Err(ConfigError::new(
                "REDIS_SENTINELS",
                &sentinels(sentinel),
                "needs MYSQL_URL too: the processes of a cluster must share one store",
            ));
        }
        if let (Some(redis), None) = (&self.redis_url, &self.mysql_url) {
            return Err(ConfigError::new(
                "REDIS_URL",
                redis,
                "needs MYSQL_URL too: the processes of a cluster must share one store",
            ));
        }
        Ok(())
    }

    /// Where the cluster bus is, if there is one.
    pub fn bus_address(&self) -> Option<BusAddress> {
        match (&self.redis_url, &self.redis_sentinel) {
            (Some(url), _) => Some(BusAddress::Direct(url.clone())),
            (None, Some(s)) => Some(BusAddress::Sentinel(s.clone())),
            (None, None) => None,
        }
    }

    /// Settings for tests: an ephemeral port and defaults otherwise.
    pub fn for_tests() -> Self {
        let mut s = Self::from_lookup(|_| None).unwrap_or_else(|e| panic!("defaults parse: {e}"));
        s.port = 0;
        s.workers = Some(2);
        s
    }
}

/// `LOG_FORMAT` alone, from the process environment: `main` sets up the
/// logger with it before the other settings are read (so their errors are
/// written in that format).
pub fn log_format_from_env() -> Result<LogFormat, ConfigError> {
    Env(&|k: &str| std::env::var(k).ok()).log_format()
}

/// Reads and checks variables, one helper per kind of value. A variable
/// that is unset or blank takes its default.
struct Env<'a, F: Fn(&str) -> Option<String>>(&'a F);

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    /// The trimmed value, if set and not blank.
    fn value(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// `value`, or the error `accepted` if `parse` refuses it.
    fn checked<T>(
        &self,
        name: &'static str,
        accepted: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.value(name) {
            None => Ok(None),
            Some(v) => parse(&v)
                .map(Some)
                .ok_or_else(|| ConfigError::new(name, &v, accepted)),
        }
    }

    /// Free text of at most `max_chars` characters, without control
    /// characters.
    fn text(
        &self,
        name: &'static str,
        default: &str,
        max_chars: usize,
    ) -> Result<String, ConfigError> {
        let accepted = match max_chars {
            usize::MAX => "must be text without control characters".to_owned(),
            max => format!("must be at most {max} characters, without control characters"),
        };
        let ok = |v: &str| {
            (v.chars().count() <= max_chars && !v.chars().any(char::is_control))
                .then(|| v.to_owned())
        };
        Ok(self
            .checked(name, &accepted, ok)?
            .unwrap_or_else(|| default.to_owned()))
    }

    /// A whole number from `min` to `max`.
    fn count(
        &self,
        name: &'static str,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<usize, ConfigError> {
        let accepted = format!("must be a whole number {}", range(min, max));
        let ok = |v: &str| v.parse().ok().filter(|n| (min..=max).contains(n));
        Ok(self.checked(name, &accepted, ok)?.unwrap_or(default))
    }

    /// A whole number from `min` to `max`, or `None` when unset (the
    /// default is worked out later, e.g. from the machine).
    fn optional_count(
        &self,
        name: &'static str,
        min: usize,
        max: usize,
    ) -> Result<Option<usize>, ConfigError> {
        let accepted = format!("must be a whole number {}", range(min, max));
        self.checked(name, &accepted, |v| {
            v.parse().ok().filter(|n| (min..=max).contains(n))
        })
    }

    /// A number of threads; unset means one per CPU.
    fn threads(&self, name: &'static str) -> Result<Option<usize>, ConfigError> {
        let accepted = format!("must be a whole number {}", range(1, MAX_THREADS));
        self.checked(name, &accepted, |v| {
            v.parse().ok().filter(|n| (1..=MAX_THREADS).contains(n))
        })
    }

    /// A TCP port; 0 lets the system pick one.
    fn port(&self, name: &'static str, default: u16) -> Result<u16, ConfigError> {
        let accepted = "must be a port number from 0 to 65535 (0 = any free port)";
        Ok(self
            .checked(name, accepted, |v| v.parse().ok())?
            .unwrap_or(default))
    }

    /// A duration in whole seconds, at least one.
    fn secs(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        let accepted = format!("must be a whole number of seconds {}", range(1, MAX_SECS));
        let ok = |v: &str| v.parse().ok().filter(|n| (1..=MAX_SECS).contains(n));
        Ok(Duration::from_secs(
            self.checked(name, &accepted, ok)?.unwrap_or(default),
        ))
    }

    /// A duration in whole milliseconds, at least one.
    fn millis(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        let max = MAX_SECS * 1000;
        let accepted = format!("must be a whole number of milliseconds {}", range(1, max));
        let ok = |v: &str| v.parse().ok().filter(|n| (1..=max).contains(n));
        Ok(Duration::from_millis(
            self.checked(name, &accepted, ok)?.unwrap_or(default),
        ))
    }

    /// A rate per second: a finite number above zero.
    fn rate(&self, name: &'static str, default: f64) -> Result<f64, ConfigError> {
        let ok = |v: &str| v.parse().ok().filter(|r: &f64| r.is_finite() && *r > 0.0);
        Ok(self
            .checked(name, "must be a finite number > 0", ok)?
            .unwrap_or(default))
    }

    /// A burst: a finite number of at least one (one frame or room).
    fn burst(&self, name: &'static str, default: f64) -> Result<f64, ConfigError> {
        let ok = |v: &str| v.parse().ok().filter(|b: &f64| b.is_finite() && *b >= 1.0);
        Ok(self
            .checked(name, "must be a finite number >= 1", ok)?
            .unwrap_or(default))
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`, any case).
    fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        let ok = |v: &str| match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        };
        Ok(self
            .checked(name, "must be true or false", ok)?
            .unwrap_or(default))
    }

    /// `text` or `json`, any case.
    fn log_format(&self) -> Result<LogFormat, ConfigError> {
        Ok(self
            .checked("LOG_FORMAT", "must be text or json", LogFormat::parse)?
            .unwrap_or_default())
    }

    /// A `mysql://` URL naming a database, whose options the driver accepts.
    fn mysql_url(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        let shape = "mysql://user:password@host:port/database[?options]";
        self.url(
            name,
            shape,
            &["mysql://"],
            |url| match mysql_async::Opts::from_url(url) {
                Err(e) => Err(e.to_string()),
                Ok(opts) if opts.db_name().is_none_or(str::is_empty) => {
                    Err("no database name".into())
                }
                Ok(_) => Ok(()),
            },
        )
    }

    /// A `redis://` (or `rediss://`) URL the client accepts.
    fn redis_url(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        use deadpool_redis::redis::IntoConnectionInfo;
        let shape = "redis://[:password@]host[:port][/db]";
        self.url(name, shape, &["redis://", "rediss://"], |url| {
            url.into_connection_info()
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    /// An `amqp://` URL lapin accepts (no `amqps://`: the server is built
    /// without a TLS backend).
    fn amqp_url(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        let shape = "amqp://user:pass@host:port/vhost";
        self.url(name, shape, &["amqp://"], |url| {
            url.parse::<lapin::uri::AMQPUri>().map(|_| ())
        })
    }

    /// A URL with one of `schemes` that `accepts` takes; refused as `must be
    /// <shape>: <why>`.
    fn url(
        &self,
        name: &'static str,
        shape: &str,
        schemes: &[&str],
        accepts: impl FnOnce(&str) -> Result<(), String>,
    ) -> Result<Option<String>, ConfigError> {
        let Some(url) = self.value(name) else {
            return Ok(None);
        };
        let why = if schemes.iter().any(|s| url.starts_with(s)) {
            match accepts(&url) {
                Ok(()) => return Ok(Some(url)),
                Err(why) => why,
            }
        } else {
            format!("the scheme is not {}", schemes.join(" or "))
        };
        Err(ConfigError::new(
            name,
            &url,
            format!("must be {shape}: {why}"),
        ))
    }

    /// `REDIS_SENTINELS` and the settings that only apply with it.
    fn sentinel(&self) -> Result<Option<SentinelAddress>, ConfigError> {
        const CREDENTIALS: [&str; 3] = [
            "REDIS_SENTINEL_PASSWORD",
            "REDIS_USERNAME",
            "REDIS_PASSWORD",
        ];
        let master_name = self.text("REDIS_MASTER_NAME", DEFAULT_MASTER_NAME, usize::MAX)?;
        let Some(list) = self.value("REDIS_SENTINELS") else {
            if let Some(name) = CREDENTIALS.into_iter().find(|n| self.value(n).is_some()) {
                return Err(ConfigError::new(
                    name,
                    "***",
                    "must be unset without REDIS_SENTINELS (with REDIS_URL, the \
                     credentials go in the URL: redis://user:password@host:port)",
                ));
            }
            return Ok(None);
        };
        let sentinels = parse_sentinels(&list).map_err(|why| {
            ConfigError::new(
                "REDIS_SENTINELS",
                &list,
                format!("must be a comma-separated list of host:port ({why})"),
            )
        })?;
        Ok(Some(SentinelAddress {
            sentinels,
            master_name,
            sentinel_password: self.value("REDIS_SENTINEL_PASSWORD"),
            username: self.value("REDIS_USERNAME"),
            password: self.value("REDIS_PASSWORD"),
        }))
    }
}

/// The readers behind [`Settings`], for the project's other binaries
/// (`chat-events`), so their variables are parsed and refused exactly as
/// the server's are: blank means unset, and each refusal is one
/// [`ConfigError`] line with any password masked.
pub struct Vars<F: Fn(&str) -> Option<String>>(F);

impl<F: Fn(&str) -> Option<String>> Vars<F> {
    /// Variables read through `lookup` (`std::env::var(..).ok()`, or a map
    /// in tests).
    pub fn new(lookup: F) -> Self {
        Vars(lookup)
    }

    /// The trimmed value, if set and not blank.
    pub fn value(&self, name: &str) -> Option<String> {
        Env(&self.0).value(name)
    }

    /// Text of at most `max_chars` characters, without control characters.
    pub fn text(
        &self,
        name: &'static str,
        default: &str,
        max_chars: usize,
    ) -> Result<String, ConfigError> {
        Env(&self.0).text(name, default, max_chars)
    }

    /// A whole number from `min` to `max`.
    pub fn count(
        &self,
        name: &'static str,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<usize, ConfigError> {
        Env(&self.0).count(name, default, min, max)
    }

    /// A duration in whole milliseconds, at least one.
    pub fn millis(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        Env(&self.0).millis(name, default)
    }

    /// A `mysql://` URL naming a database, as `MYSQL_URL` of the server.
    pub fn mysql_url(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        Env(&self.0).mysql_url(name)
    }

    /// A URL with one of `schemes` that `accepts` takes; refused as `must be
    /// <shape>: <why>`.
    pub fn url(
        &self,
        name: &'static str,
        shape: &str,
        schemes: &[&str],
        accepts: impl FnOnce(&str) -> Result<(), String>,
    ) -> Result<Option<String>, ConfigError> {
        Env(&self.0).url(name, shape, schemes, accepts)
    }
}

/// `from 1 to 10`, or `>= 1` when there is no upper bound.
fn range<N: PartialEq + std::fmt::Display + Bounded>(min: N, max: N) -> String {
    if max == N::MAX {
        format!(">= {min}")
    } else {
        format!("from {min} to {max}")
    }
}

/// Integer types with a largest value (`range` says nothing about it).
trait Bounded {
    const MAX: Self;
}

impl Bounded for usize {
    const MAX: Self = usize::MAX;
}

impl Bounded for u64 {
    const MAX: Self = u64::MAX;
}

/// `scheme://user:***@host...`: a URL's password masked, for messages.
fn mask_password(value: &str) -> String {
    let Some(scheme_end) = value.find("://").map(|i| i + 3) else {
        return value.to_owned();
    };
    let rest = &value[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return value.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &value[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => value.to_owned(),
    }
}

/// Control characters (newlines...) escaped, so an error stays one line.
fn printable(value: &str) -> String {
    value
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// A name that is unique enough across a cluster's lifetime: host-ish
/// prefix, pid and random suffix.
fn generate_instance_id() -> String {
    format!(
        "chat-{}-{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Settings from `vars` only.
    fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let vars: HashMap<&str, &str> = vars.iter().copied().collect();
        Settings::from_lookup(|k| vars.get(k).map(|v| v.to_string()))
    }

    /// The error for `name=value` alone; panics if it is accepted or the
    /// error names another variable.
    fn refused(name: &str, value: &str) -> ConfigError {
        let err = match load(&[(name, value)]) {
            Ok(_) => panic!("{name}={value:?} was accepted"),
            Err(e) => e,
        };
        assert_eq!(err.name, name, "{err}");
        let line = err.to_string();
        assert!(!line.contains('\n'), "{line:?}");
        assert!(line.starts_with(&format!("{name}=")), "{line}");
        assert!(err.accepted.starts_with("must"), "{line}");
        err
    }

    fn accepted(vars: &[(&str, &str)]) -> Settings {
        load(vars).unwrap_or_else(|e| panic!("{vars:?} refused: {e}"))
    }

    #[test]
    fn defaults_match_the_protocol() {
        let s = Settings::from_lookup(|_| None).unwrap();
        assert_eq!(s.port, 3000);
        assert_eq!(s.host, "127.0.0.1");
        assert!(s.mysql_url.is_none() && s.redis_url.is_none());
        assert_eq!(s.empty_room_grace, Duration::from_secs(60));
        assert_eq!(s.limits, TextLimits::default());
        assert_eq!(s.max_frame_bytes, 65536);
        assert_eq!(s.history_on_join, 50);
        assert_eq!(s.messages_page_max, 500);
        assert_eq!(s.rooms_page_max, 500);
        assert_eq!(s.memory_store_max_bytes, 268_435_456);
        assert!(s.instance_id.starts_with("chat-"));
        assert_eq!(s.allowed_origins, AllowedOrigins::SameHost);
        assert_eq!(s.max_connections_per_address, 64);
        assert_eq!(s.max_connections, None, "derived from the file limit");
        assert_eq!(s.lobby_idle, Duration::from_secs(300));
        assert_eq!(s.request_body_timeout, Duration::from_secs(10));
        let s = accepted(&[
            ("MAX_CONNECTIONS", "8"),
            ("MAX_CONNECTIONS_PER_ADDRESS", "5"),
        ]);
        assert_eq!(
            (s.max_connections, s.max_connections_per_address),
            (Some(8), 5)
        );
    }

    #[test]
    fn metrics_addr_is_an_ip_and_port_and_anything_else_is_refused() {
        assert_eq!(accepted(&[]).metrics_addr, None, "default: the main port");
        let s = accepted(&[("METRICS_ADDR", " 127.0.0.1:9100 ")]);
        assert_eq!(s.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
        let s = accepted(&[("METRICS_ADDR", "[::1]:0")]);
        assert_eq!(s.metrics_addr, Some("[::1]:0".parse().unwrap()));
        for bad in [
            "9100",
            "localhost:9100",
            "127.0.0.1",
            "127.0.0.1:99999",
            ":9100",
        ] {
            let e = refused("METRICS_ADDR", bad);
            assert!(e.accepted.contains("IP address and a port"), "{e}");
        }
    }

    #[test]
    fn log_format_is_text_unless_json_and_nothing_else() {
        assert_eq!(accepted(&[]).log_format, LogFormat::Text);
        assert_eq!(
            accepted(&[("LOG_FORMAT", "json")]).log_format,
            LogFormat::Json
        );
        assert_eq!(
            accepted(&[("LOG_FORMAT", " Text ")]).log_format,
            LogFormat::Text
        );
        let err = refused("LOG_FORMAT", "xml");
        assert_eq!(err.to_string(), "LOG_FORMAT=xml: must be text or json");
    }

    #[test]
    fn events_are_off_without_amqp_url_and_have_documented_defaults() {
        assert_eq!(accepted(&[]).events, None);
        // Without AMQP_URL the EVENTS_* settings are not read.
        assert_eq!(accepted(&[("EVENTS_BUFFER_MAX", "x")]).events, None);
        let s = accepted(&[("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")]);
        assert_eq!(
            s.events,
            Some(crate::events::EventsConfig {
                url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
                buffer_max: 100_000,
                poll: Duration::from_millis(200),
                publish_timeout: Duration::from_millis(5000),
            })
        );
        let e = refused("AMQP_URL", "http://127.0.0.1");
        assert!(e.accepted.contains("amqp://"), "{e}");
        let e = load(&[("AMQP_URL", "amqp://127.0.0.1"), ("EVENTS_BUFFER_MAX", "0")]).unwrap_err();
        assert_eq!(e.name, "EVENTS_BUFFER_MAX");
        // The password never reaches the message.
        let e = refused("AMQP_URL", "amqp://u:secret@host:notaport");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn allowed_origins_is_a_list_or_star_and_bad_ones_are_reported() {
        let s = Settings::from_lookup(|k| {
            (k == "ALLOWED_ORIGINS").then(|| "https://a.example, http://b.example:8080".into())
        })
        .unwrap();
        assert_eq!(
            s.allowed_origins,
            AllowedOrigins::List(vec![
                "https://a.example".into(),
                "http://b.example:8080".into()
            ])
        );
        let s = Settings::from_lookup(|k| (k == "ALLOWED_ORIGINS").then(|| "*".into())).unwrap();
        assert_eq!(s.allowed_origins, AllowedOrigins::Any);
        let err = Settings::from_lookup(|k| (k == "ALLOWED_ORIGINS").then(|| "a.example".into()))
            .unwrap_err();
        assert!(err.to_string().contains("ALLOWED_ORIGINS"), "{err}");
    }

    #[test]
    fn variables_override_defaults_and_bad_values_are_reported() {
        let s = accepted(&[
            ("PORT", "8080"),
            ("MAX_TITLE_CHARS", "10"),
            ("INSTANCE_ID", " a "),
            ("HOST", ""),
        ]);
        assert_eq!(s.port, 8080);
        assert_eq!(s.limits.title, 10);
        assert_eq!(s.instance_id, "a");
        assert_eq!(s.host, "127.0.0.1", "blank means unset");
        assert_eq!(
            refused("PORT", "eighty").to_string(),
            "PORT=eighty: must be a port number from 0 to 65535 (0 = any free port)"
        );
    }

    #[test]
    fn durations_in_seconds_are_whole_and_positive() {
        assert_eq!(
            refused("HEARTBEAT_INTERVAL_SECS", "0").to_string(),
            "HEARTBEAT_INTERVAL_SECS=0: must be a whole number of seconds from 1 to 31536000"
        );
        for name in [
            "HEARTBEAT_INTERVAL_SECS",
            "CLIENT_TIMEOUT_SECS",
            "EMPTY_ROOM_GRACE_SECS",
            "LIVENESS_TTL_SECS",
            "LOBBY_IDLE_SECS",
            "REQUEST_BODY_TIMEOUT_SECS",
        ] {
            for bad in ["0", "-1", "NaN", "inf", "1.5", "ten", "31536001", "1e400"] {
                refused(name, bad);
            }
        }
        let s = accepted(&[
            ("EMPTY_ROOM_GRACE_SECS", "1"),
            ("CLIENT_TIMEOUT_SECS", "31536000"),
        ]);
        assert_eq!(s.empty_room_grace, Duration::from_secs(1));
        assert_eq!(s.client_timeout, Duration::from_secs(MAX_SECS));
    }

    #[test]
    fn durations_in_milliseconds_are_whole_and_positive() {
        for name in [
            "STORE_TIMEOUT_MS",
            "LIVENESS_REFRESH_MS",
            "REAP_INTERVAL_MS",
            "GAP_TIMEOUT_MS",
        ] {
            for bad in ["0", "-5", "NaN", "0.5", "18446744073709551615"] {
                refused(name, bad);
            }
        }
        assert_eq!(
            accepted(&[("GAP_TIMEOUT_MS", "1")]).gap_timeout,
            Duration::from_millis(1)
        );
    }

    #[test]
    fn counts_have_their_lower_bound() {
        for name in [
            "MAX_TITLE_CHARS",
            "MAX_NICKNAME_CHARS",
            "MAX_CONTENT_CHARS",
            "MAX_FRAME_BYTES",
            "MAX_BODY_BYTES",
            "MESSAGES_PAGE_MAX",
            "ROOMS_PAGE_MAX",
            "MEMORY_HISTORY_LIMIT",
            "SESSION_QUEUE_CAPACITY",
            "SESSION_BUFFER_BYTES",
            "MAX_CONNECTIONS_PER_ADDRESS",
            "MAX_CONNECTIONS",
        ] {
            let e = refused(name, "0");
            assert_eq!(e.accepted, "must be a whole number >= 1", "{e}");
            for bad in ["-1", "1.0", "many", "99999999999999999999999"] {
                refused(name, bad);
            }
        }
        assert_eq!(
            refused("MEMORY_STORE_MAX_BYTES", "1048575").to_string(),
            "MEMORY_STORE_MAX_BYTES=1048575: must be a whole number >= 1048576"
        );
        for bad in ["-1", "8MiB", "1e9", "99999999999999999999999"] {
            refused("MEMORY_STORE_MAX_BYTES", bad);
        }
        let s = accepted(&[
            ("MEMORY_STORE_MAX_BYTES", "8388608"),
            ("ROOMS_PAGE_MAX", "7"),
        ]);
        assert_eq!((s.memory_store_max_bytes, s.rooms_page_max), (8 << 20, 7));
        refused("HISTORY_ON_JOIN", "-1");
        assert_eq!(accepted(&[("HISTORY_ON_JOIN", "0")]).history_on_join, 0);
    }

    #[test]
    fn mysql_columns_bound_the_text_limits() {
        let url = ("MYSQL_URL", "mysql://u@h/db");
        assert_eq!(
            accepted(&[url, ("MAX_TITLE_CHARS", "255")]).limits.title,
            255
        );
        assert_eq!(accepted(&[("MAX_TITLE_CHARS", "256")]).limits.title, 256);
        let e = load(&[url, ("MAX_NICKNAME_CHARS", "256")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "MAX_NICKNAME_CHARS=256: must be a whole number from 1 to 255"
        );
        let e = load(&[url, ("MAX_CONTENT_CHARS", "16384")]).unwrap_err();
        assert_eq!(e.name, "MAX_CONTENT_CHARS");
    }

    #[test]
    fn thread_counts_are_at_least_one() {
        for name in ["WORKERS", "ROOM_THREADS"] {
            assert_eq!(
                refused(name, "0").to_string(),
                format!("{name}=0: must be a whole number from 1 to 1024")
            );
            refused(name, "1025");
            refused(name, "-2");
        }
        let s = accepted(&[("WORKERS", "3")]);
        assert_eq!((s.workers, s.room_threads), (Some(3), None));
    }

    #[test]
    fn rates_and_bursts_are_finite_and_positive() {
        for name in ["WS_RATE_PER_SEC", "ROOM_CREATE_RATE_PER_SEC"] {
            for bad in ["NaN", "nan", "inf", "-inf", "0", "-1", "1e999", "fast"] {
                assert_eq!(refused(name, bad).accepted, "must be a finite number > 0");
            }
        }
        for name in ["WS_RATE_BURST", "ROOM_CREATE_BURST"] {
            for bad in ["NaN", "inf", "0", "0.5", "-1"] {
                assert_eq!(refused(name, bad).accepted, "must be a finite number >= 1");
            }
        }
        let s = accepted(&[("WS_RATE_PER_SEC", "0.5"), ("WS_RATE_BURST", "1")]);
        assert_eq!((s.ws_rate_per_sec, s.ws_rate_burst), (0.5, 1.0));
    }

    #[test]
    fn ports_are_in_range() {
        for bad in ["70000", "-1", "65536", "http"] {
            refused("PORT", bad);
        }
        assert_eq!(accepted(&[("PORT", "0")]).port, 0);
        assert_eq!(accepted(&[("PORT", "65535")]).port, 65535);
    }

    #[test]
    fn flags_are_true_or_false() {
        assert!(accepted(&[("TRUST_FORWARDED_FOR", "TRUE")]).trust_forwarded_for);
        assert!(!accepted(&[("TRUST_FORWARDED_FOR", "0")]).trust_forwarded_for);
        assert_eq!(
            refused("TRUST_FORWARDED_FOR", "maybe").accepted,
            "must be true or false"
        );
    }

    #[test]
    fn texts_have_no_control_characters_and_fit_their_column() {
        refused("INSTANCE_ID", &"x".repeat(256));
        let e = refused("REDIS_PREFIX", "a\nb");
        assert_eq!(e.value, "a\\nb", "escaped, so the error stays one line");
        assert_eq!(
            accepted(&[("INSTANCE_ID", &"x".repeat(255))])
                .instance_id
                .len(),
            255
        );
    }

    #[test]
    fn mysql_urls_name_a_database_and_parse() {
        let ok = accepted(&[("MYSQL_URL", "mysql://u:p@127.0.0.1:3306/chat?pool_max=50")]);
        assert_eq!(
            ok.mysql_url.as_deref(),
            Some("mysql://u:p@127.0.0.1:3306/chat?pool_max=50")
        );
        for (bad, why) in [
            ("redis://127.0.0.1:6379/chat", "the scheme is not mysql://"),
            ("127.0.0.1:3306/chat", "the scheme is not mysql://"),
            ("mysql://root@127.0.0.1:3306", "no database name"),
            ("mysql://root@127.0.0.1:3306/", "no database name"),
            (
                "mysql://root@127.0.0.1/chat?pool_min=20&pool_max=5",
                "pool_min (20) > pool_max (5)",
            ),
            ("mysql://root@127.0.0.1/chat?pool_max=many", "pool_max"),
            // The driver's pool_min defaults to 10.
            (
                "mysql://root@127.0.0.1/chat?pool_max=5",
                "pool_min (10) > pool_max (5)",
            ),
            (
                "mysql://root@127.0.0.1/chat?no_such_option=1",
                "no_such_option",
            ),
            ("mysql://root@[::1/chat", "URL parse error"),
        ] {
            let e = refused("MYSQL_URL", bad);
            assert!(e.accepted.starts_with("must be mysql://"), "{e}");
            assert!(e.accepted.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn passwords_never_reach_the_message() {
        let e = refused("MYSQL_URL", "redis://admin:s3cret@db:3306/chat");
        assert_eq!(e.value, "redis://admin:***@db:3306/chat");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = refused("REDIS_URL", "http://:s3cret@cache:6379");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert_eq!(mask_password("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(
            mask_password("mysql://u:p@h/db?x=a@b"),
            "mysql://u:***@h/db?x=a@b"
        );
        assert_eq!(mask_password("plain"), "plain");
    }

    #[test]
    fn redis_urls_have_a_redis_scheme() {
        let mysql = ("MYSQL_URL", "mysql://u@h/db");
        let s = accepted(&[mysql, ("REDIS_URL", "redis://127.0.0.1:6379/2")]);
        assert_eq!(s.redis_url.as_deref(), Some("redis://127.0.0.1:6379/2"));
        for bad in [
            "http://127.0.0.1:6379",
            "127.0.0.1:6379",
            "redis://127.0.0.1:6379/notadb",
        ] {
            let e = load(&[mysql, ("REDIS_URL", bad)]).unwrap_err();
            assert_eq!(e.name, "REDIS_URL", "{e}");
        }
    }

    #[test]
    fn sentinels_name_the_bus_instead_of_a_url() {
        let mysql = ("MYSQL_URL", "mysql://u:p@127.0.0.1:3306/chat");
        let s = accepted(&[
            mysql,
            ("REDIS_SENTINELS", "10.0.0.1:26379, 10.0.0.2:26379"),
            ("REDIS_SENTINEL_PASSWORD", "s3cret"),
            ("REDIS_PASSWORD", "m4ster"),
        ]);
        let Some(BusAddress::Sentinel(sentinel)) = s.bus_address() else {
            panic!("no sentinel address: {s:?}");
        };
        assert_eq!(sentinel.master_name, "mymaster");
        assert_eq!(sentinel.sentinels[1], ("10.0.0.2".to_string(), 26379));
        assert_eq!(sentinel.sentinel_password.as_deref(), Some("s3cret"));
        assert_eq!(sentinel.password.as_deref(), Some("m4ster"));
        assert_eq!(sentinel.username, None);
        let s = accepted(&[
            mysql,
            ("REDIS_SENTINELS", "s:1"),
            ("REDIS_MASTER_NAME", "chat"),
        ]);
        assert!(
            matches!(s.bus_address(), Some(BusAddress::Sentinel(a)) if a.master_name == "chat")
        );
        let s = accepted(&[mysql, ("REDIS_URL", "redis://127.0.0.1")]);
        assert!(matches!(s.bus_address(), Some(BusAddress::Direct(_))));
        assert!(accepted(&[]).bus_address().is_none());

        let e = load(&[mysql, ("REDIS_SENTINELS", "s:1,nope")]).unwrap_err();
        assert_eq!(e.name, "REDIS_SENTINELS");
        assert!(
            e.accepted
                .starts_with("must be a comma-separated list of host:port"),
            "{e}"
        );
        let e = load(&[
            mysql,
            ("REDIS_URL", "redis://127.0.0.1"),
            ("REDIS_SENTINELS", "s:1"),
        ])
        .unwrap_err();
        assert_eq!(e.name, "REDIS_SENTINELS");
        assert!(
            e.accepted
                .starts_with("must be unset when REDIS_URL is set"),
            "{e}"
        );
        let e = load(&[("REDIS_SENTINELS", "s:1")]).unwrap_err();
        assert_eq!(e.to_string(), "REDIS_SENTINELS=s:1: needs MYSQL_URL too: the processes of a cluster must share one store");
        // Credentials without Sentinels belong in REDIS_URL; never echoed.
        for name in [
            "REDIS_PASSWORD",
            "REDIS_USERNAME",
            "REDIS_SENTINEL_PASSWORD",
        ] {
            let e = load(&[mysql, ("REDIS_URL", "redis://h"), (name, "s3cret")]).unwrap_err();
            assert_eq!(e.name, name);
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn settings_that_contradict_each_other_are_refused() {
        let e = load(&[
            ("HEARTBEAT_INTERVAL_SECS", "30"),
            ("CLIENT_TIMEOUT_SECS", "30"),
        ])
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "CLIENT_TIMEOUT_SECS=30: must be more than HEARTBEAT_INTERVAL_SECS (30)"
        );
        let e = load(&[("LIVENESS_TTL_SECS", "1"), ("LIVENESS_REFRESH_MS", "1000")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "LIVENESS_REFRESH_MS=1000: must be less than LIVENESS_TTL_SECS (1 s)"
        );
        let e = load(&[("REDIS_URL", "redis://127.0.0.1")]).unwrap_err();
        assert_eq!(e.name, "REDIS_URL");
    }
}
