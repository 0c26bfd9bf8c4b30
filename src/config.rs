//! Settings from the environment, loaded once at start-up. Every variable
//! and its default is here and nowhere else; README's configuration table
//! mirrors this file.

use std::time::Duration;

use crate::client_addr::TrustedProxies;
use crate::domain::TextLimits;
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
    /// `REDIS_URL`: set = cluster bus over Redis, unset = this process alone.
    pub redis_url: Option<String>,
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
    /// `MEMORY_HISTORY_LIMIT`: messages the memory store keeps per room.
    pub memory_history_limit: usize,
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
    /// `ALLOWED_ORIGINS`: the pages (`Origin`) that may open a WebSocket:
    /// unset = the server's own (`http(s)://` + the request's `Host`), `*`
    /// = any, or a comma-separated list of origins.
    pub allowed_origins: AllowedOrigins,
}

/// A variable that is set but cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?}: {why}")]
pub struct ConfigError {
    name: String,
    value: String,
    why: String,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `lookup`, so tests can supply their own map.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let defaults = TextLimits::default();
        Ok(Settings {
            host: env.string("HOST").unwrap_or_else(|| "127.0.0.1".into()),
            port: env.parse("PORT", 3000)?,
            mysql_url: env.string("MYSQL_URL"),
            redis_url: env.string("REDIS_URL"),
            instance_id: env
                .string("INSTANCE_ID")
                .unwrap_or_else(generate_instance_id),
            empty_room_grace: Duration::from_secs_f64(env.parse("EMPTY_ROOM_GRACE_SECS", 60.0)?),
            limits: TextLimits {
                title: env.parse("MAX_TITLE_CHARS", defaults.title)?,
                nickname: env.parse("MAX_NICKNAME_CHARS", defaults.nickname)?,
                content: env.parse("MAX_CONTENT_CHARS", defaults.content)?,
            },
            max_frame_bytes: env.parse("MAX_FRAME_BYTES", 64 * 1024)?,
            max_body_bytes: env.parse("MAX_BODY_BYTES", 64 * 1024)?,
            history_on_join: env.parse("HISTORY_ON_JOIN", 50)?,
            messages_page_max: env.parse("MESSAGES_PAGE_MAX", 500)?,
            memory_history_limit: env.parse("MEMORY_HISTORY_LIMIT", 10_000)?,
            heartbeat_interval: Duration::from_secs_f64(
                env.parse("HEARTBEAT_INTERVAL_SECS", 10.0)?,
            ),
            client_timeout: Duration::from_secs_f64(env.parse("CLIENT_TIMEOUT_SECS", 30.0)?),
            ws_rate_per_sec: env.parse("WS_RATE_PER_SEC", 200.0)?,
            ws_rate_burst: env.parse("WS_RATE_BURST", 400.0)?,
            ws_rate_violations: env.parse("WS_RATE_VIOLATIONS", 50.0)?,
            ws_join_rate_per_sec: env.parse("WS_JOIN_RATE_PER_SEC", 2.0)?,
            ws_join_burst: env.parse("WS_JOIN_BURST", 10.0)?,
            room_create_rate_per_sec: env.parse("ROOM_CREATE_RATE_PER_SEC", 10.0)?,
            room_create_burst: env.parse("ROOM_CREATE_BURST", 1000.0)?,
            room_queue_max_messages: env.parse("ROOM_QUEUE_MAX_MESSAGES", 2048)?,
            room_queue_max_bytes: env.parse("ROOM_QUEUE_MAX_BYTES", 4 * 1024 * 1024)?,
            session_queue_capacity: env.parse("SESSION_QUEUE_CAPACITY", 1024)?,
            session_buffer_bytes: env.parse("SESSION_BUFFER_BYTES", 512 * 1024)?,
            store_timeout: Duration::from_millis(env.parse("STORE_TIMEOUT_MS", 5000)?),
            static_dir: env.string("STATIC_DIR").unwrap_or_else(|| "static".into()),
            templates_dir: env
                .string("TEMPLATES_DIR")
                .unwrap_or_else(|| "templates".into()),
            workers: env.optional("WORKERS")?,
            room_threads: env.optional("ROOM_THREADS")?,
            trust_forwarded_for: env.parse("TRUST_FORWARDED_FOR", false)?,
            trusted_proxies: match env.string("TRUSTED_PROXIES") {
                None => TrustedProxies::loopback(),
                Some(list) => TrustedProxies::parse(&list).map_err(|why| ConfigError {
                    name: "TRUSTED_PROXIES".into(),
                    value: list,
                    why: format!(
                        "{why}; expected a comma-separated list of addresses and networks"
                    ),
                })?,
            },
            allowed_origins: match env.string("ALLOWED_ORIGINS") {
                None => AllowedOrigins::SameHost,
                Some(value) => AllowedOrigins::parse(&value).map_err(|why| ConfigError {
                    name: "ALLOWED_ORIGINS".into(),
                    value,
                    why,
                })?,
            },
            redis_prefix: env.string("REDIS_PREFIX").unwrap_or_else(|| "chat".into()),
            liveness_ttl: Duration::from_secs_f64(env.parse("LIVENESS_TTL_SECS", 5.0)?),
            liveness_refresh: Duration::from_millis(env.parse("LIVENESS_REFRESH_MS", 1000)?),
            reap_interval: Duration::from_millis(env.parse("REAP_INTERVAL_MS", 2000)?),
            gap_timeout: Duration::from_millis(env.parse("GAP_TIMEOUT_MS", 300)?),
        })
    }

    /// Settings for tests: an ephemeral port and defaults otherwise.
    pub fn for_tests() -> Self {
        let mut s = Self::from_lookup(|_| None).unwrap_or_else(|e| panic!("defaults parse: {e}"));
        s.port = 0;
        s.workers = Some(2);
        s
    }
}

struct Env<'a, F: Fn(&str) -> Option<String>>(&'a F);

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    fn string(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.trim().is_empty())
    }

    fn optional<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.string(name) {
            None => Ok(None),
            Some(value) => value
                .trim()
                .parse()
                .map(Some)
                .map_err(|e: T::Err| ConfigError {
                    name: name.into(),
                    value,
                    why: e.to_string(),
                }),
        }
    }

    fn parse<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        Ok(self.optional(name)?.unwrap_or(default))
    }
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
        assert!(s.instance_id.starts_with("chat-"));
        assert_eq!(s.allowed_origins, AllowedOrigins::SameHost);
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
        let vars: HashMap<&str, &str> = [
            ("PORT", "8080"),
            ("MAX_TITLE_CHARS", "10"),
            ("INSTANCE_ID", "a"),
        ]
        .into_iter()
        .collect();
        let s = Settings::from_lookup(|k| vars.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.limits.title, 10);
        assert_eq!(s.instance_id, "a");
        let err =
            Settings::from_lookup(|k| (k == "PORT").then(|| "eighty".to_string())).unwrap_err();
        assert!(err.to_string().contains("PORT"));
    }
}
