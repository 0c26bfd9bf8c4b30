//! `chat-events` settings from the environment, loaded once at start-up.
//! Every variable and its default is here; README's table for `chat-events`
//! mirrors this file. Values are read and refused by the server's own
//! readers ([`chat_server::config::Vars`]), so both binaries speak alike.

use std::str::FromStr;
use std::time::Duration;

use chat_server::config::{ConfigError, Vars};

/// The exchange the server publishes to (fixed by the protocol).
pub const EXCHANGE: &str = "chat.events";
/// Longest `EVENTS_RETENTION_DAYS`: a century.
const MAX_RETENTION_DAYS: usize = 36_500;
/// `EVENTS_QUEUE` unless set.
pub const DEFAULT_QUEUE: &str = "chat-events.archive";
/// Appended to the queue's name to name its dead-letter queue.
pub const DEAD_LETTER_SUFFIX: &str = ".dead";
/// Longest AMQP queue name (a short string) less the suffix above.
const MAX_QUEUE_BYTES: usize = 255 - DEAD_LETTER_SUFFIX.len();
/// Largest `EVENTS_MAX_BODY_BYTES`: a MEDIUMTEXT holds 16 MiB, and one
/// body must fit in one statement under MySQL 5.7's default 4 MiB
/// `max_allowed_packet` next to the rows batched with it.
const MAX_BODY_BYTES_LIMIT: usize = 2 << 20;

/// Everything `chat-events` can be configured with.
#[derive(Debug, Clone)]
pub struct ArchiveSettings {
    /// `AMQP_URL` (required): the RabbitMQ the servers publish to.
    pub amqp_url: String,
    /// `MYSQL_URL` (required): the database holding `chatEvent`.
    pub mysql_url: String,
    /// `EVENTS_QUEUE`: this consumer's durable queue, bound to
    /// `chat.events` with `#`. Its dead letters go to `<queue>.dead`.
    pub queue: String,
    /// `EVENTS_PREFETCH`: deliveries RabbitMQ sends before an ack
    /// (`basic.qos`); what the process holds in memory at most.
    pub prefetch: u16,
    /// `EVENTS_BATCH_MAX`: events stored per transaction at most.
    pub batch_max: usize,
    /// `EVENTS_BATCH_WAIT_MS`: the longest the first event of a batch waits
    /// for the batch to fill before it is stored anyway.
    pub batch_wait: Duration,
    /// `EVENTS_MAX_BODY_BYTES`: larger bodies are dead-lettered.
    pub max_body_bytes: usize,
    /// `EVENTS_QUEUE_MAX`: events the queue holds while nobody consumes
    /// (`x-max-length`); beyond it the oldest are dead-lettered.
    pub queue_max: u32,
    /// `EVENTS_DEAD_LETTER_MAX`: messages the dead-letter queue keeps
    /// (`x-max-length`); beyond it the oldest are dropped.
    pub dead_letter_max: u32,
    /// `STORE_TIMEOUT_MS`: longest wait for one MySQL call (connect, the
    /// insert transaction).
    pub store_timeout: Duration,
    /// `EVENTS_RETRY_MAX_MS`: cap of the backoff between two attempts to
    /// reach RabbitMQ or MySQL.
    pub retry_max: Duration,
    /// `EVENTS_RETENTION_DAYS`: events older than this (by `at`) are
    /// deleted; unset = kept forever.
    pub retention: Option<Duration>,
    /// `EVENTS_RETENTION_SWEEP_MS`: how often the old events are deleted.
    pub retention_sweep: Duration,
}

impl ArchiveSettings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `lookup`; the first unusable one is the error.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars::new(lookup);
        let amqp_url = vars
            .url(
                "AMQP_URL",
                "amqp://user:password@host:port/vhost",
                // lapin is built without TLS (as for the server), so
                // amqps:// could only fail later.
                &["amqp://"],
                |url| {
                    lapin::uri::AMQPUri::from_str(url)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                },
            )?
            .ok_or_else(|| required("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))?;
        let mysql_url = vars
            .mysql_url("MYSQL_URL")?
            .ok_or_else(|| required("MYSQL_URL", "mysql://root@127.0.0.1:3306/chat"))?;
        let queue = vars.text("EVENTS_QUEUE", DEFAULT_QUEUE, usize::MAX)?;
        if queue.len() > MAX_QUEUE_BYTES || queue.starts_with("amq.") {
            return Err(ConfigError::new(
                "EVENTS_QUEUE",
                &queue,
                format!(
                    "must be a queue name of at most {MAX_QUEUE_BYTES} bytes not starting \
                     with amq. (reserved by RabbitMQ)"
                ),
            ));
        }
        let prefetch = vars.count("EVENTS_PREFETCH", 512, 1, u16::MAX.into())?;
        let settings = ArchiveSettings {
            amqp_url,
            mysql_url,
            queue,
            // In range: `count` checked it against u16::MAX.
            prefetch: u16::try_from(prefetch).unwrap_or(u16::MAX),
            batch_max: vars.count("EVENTS_BATCH_MAX", 256, 1, u16::MAX.into())?,
            batch_wait: vars.millis("EVENTS_BATCH_WAIT_MS", 100)?,
            max_body_bytes: vars.count(
                "EVENTS_MAX_BODY_BYTES",
                1 << 20,
                1024,
                MAX_BODY_BYTES_LIMIT,
            )?,
            queue_max: count_u32(&vars, "EVENTS_QUEUE_MAX", 1_000_000)?,
            dead_letter_max: count_u32(&vars, "EVENTS_DEAD_LETTER_MAX", 100_000)?,
            store_timeout: vars.millis("STORE_TIMEOUT_MS", 5000)?,
            retry_max: vars.millis("EVENTS_RETRY_MAX_MS", 30_000)?,
            retention: match vars.value("EVENTS_RETENTION_DAYS") {
                None => None,
                Some(_) => {
                    let days = vars.count("EVENTS_RETENTION_DAYS", 0, 1, MAX_RETENTION_DAYS)?;
                    Some(Duration::from_secs(days as u64 * 24 * 3600))
                }
            },
            retention_sweep: vars.millis("EVENTS_RETENTION_SWEEP_MS", 60_000)?,
        };
        if settings.batch_max > usize::from(settings.prefetch) {
            // RabbitMQ never has more than `prefetch` unacknowledged
            // deliveries out, so a larger batch could never fill.
            return Err(ConfigError::new(
                "EVENTS_BATCH_MAX",
                &settings.batch_max.to_string(),
                format!(
                    "must be at most EVENTS_PREFETCH ({}): RabbitMQ sends no more \
                     unacknowledged events than that",
                    settings.prefetch
                ),
            ));
        }
        Ok(settings)
    }

    /// The dead-letter queue's name.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}{DEAD_LETTER_SUFFIX}", self.queue)
    }
}

/// A required variable that is unset.
fn required(name: &'static str, example: &str) -> ConfigError {
    ConfigError::new(name, "", format!("must be set (e.g. {example})"))
}

/// A queue length: a whole number from 1 to 2^31 - 1 (RabbitMQ's signed
/// 32-bit `x-max-length`).
fn count_u32(
    vars: &Vars<impl Fn(&str) -> Option<String>>,
    name: &'static str,
    default: u32,
) -> Result<u32, ConfigError> {
    let max = i32::MAX as usize;
    let n = vars.count(name, default as usize, 1, max)?;
    // In range: `count` checked it against i32::MAX.
    Ok(u32::try_from(n).unwrap_or(i32::MAX as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const AMQP: (&str, &str) = ("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    const MYSQL: (&str, &str) = ("MYSQL_URL", "mysql://root@127.0.0.1:3306/chat");

    fn load(vars: &[(&str, &str)]) -> Result<ArchiveSettings, ConfigError> {
        let vars: HashMap<&str, &str> = vars.iter().copied().collect();
        ArchiveSettings::from_lookup(|k| vars.get(k).map(|v| v.to_string()))
    }

    fn refused(vars: &[(&str, &str)]) -> ConfigError {
        match load(vars) {
            Ok(s) => panic!("{vars:?} accepted: {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn defaults_need_only_the_two_urls() {
        let s = load(&[AMQP, MYSQL]).unwrap();
        assert_eq!(s.queue, "chat-events.archive");
        assert_eq!(s.dead_letter_queue(), "chat-events.archive.dead");
        assert_eq!((s.prefetch, s.batch_max), (512, 256));
        assert_eq!(s.batch_wait, Duration::from_millis(100));
        assert_eq!(s.max_body_bytes, 1 << 20);
        assert_eq!((s.queue_max, s.dead_letter_max), (1_000_000, 100_000));
        assert_eq!(s.store_timeout, Duration::from_secs(5));
        assert_eq!(s.retry_max, Duration::from_secs(30));
        assert_eq!(s.retention, None, "kept forever");
        assert_eq!(s.retention_sweep, Duration::from_secs(60));
    }

    #[test]
    fn retention_is_whole_days() {
        let s = load(&[AMQP, MYSQL, ("EVENTS_RETENTION_DAYS", "90")]).unwrap();
        assert_eq!(s.retention, Some(Duration::from_secs(90 * 86_400)));
        for bad in ["0", "-1", "1.5", "forever", "36501"] {
            let e = refused(&[AMQP, MYSQL, ("EVENTS_RETENTION_DAYS", bad)]);
            assert_eq!(e.name, "EVENTS_RETENTION_DAYS", "{e}");
        }
        let e = refused(&[AMQP, MYSQL, ("EVENTS_RETENTION_SWEEP_MS", "0")]);
        assert_eq!(e.name, "EVENTS_RETENTION_SWEEP_MS");
    }

    #[test]
    fn both_urls_are_required_and_checked() {
        assert_eq!(
            refused(&[MYSQL]).to_string(),
            "AMQP_URL=: must be set (e.g. amqp://guest:guest@127.0.0.1:5672/%2f)"
        );
        assert_eq!(refused(&[AMQP]).name, "MYSQL_URL");
        let e = refused(&[("AMQP_URL", "http://guest:s3cret@h:5672"), MYSQL]);
        assert!(e.accepted.contains("the scheme is not amqp://"), "{e}");
        let e = refused(&[("AMQP_URL", "amqps://h:5671"), MYSQL]);
        assert_eq!(e.name, "AMQP_URL", "no TLS: {e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = refused(&[("AMQP_URL", "amqp://h:notaport"), MYSQL]);
        assert_eq!(e.name, "AMQP_URL", "{e}");
        let e = refused(&[AMQP, ("MYSQL_URL", "mysql://root@127.0.0.1:3306")]);
        assert!(e.accepted.contains("no database name"), "{e}");
    }

    #[test]
    fn numbers_are_bounded() {
        for (name, bad) in [
            ("EVENTS_PREFETCH", "0"),
            ("EVENTS_PREFETCH", "65536"),
            ("EVENTS_BATCH_MAX", "0"),
            ("EVENTS_BATCH_WAIT_MS", "0"),
            ("EVENTS_MAX_BODY_BYTES", "1023"),
            ("EVENTS_MAX_BODY_BYTES", "2097153"),
            ("EVENTS_QUEUE_MAX", "0"),
            ("EVENTS_QUEUE_MAX", "2147483648"),
            ("EVENTS_DEAD_LETTER_MAX", "-1"),
            ("STORE_TIMEOUT_MS", "soon"),
            ("EVENTS_RETRY_MAX_MS", "0"),
        ] {
            let e = refused(&[AMQP, MYSQL, (name, bad)]);
            assert_eq!(e.name, name, "{e}");
            assert!(e.accepted.starts_with("must"), "{e}");
        }
        let s = load(&[AMQP, MYSQL, ("EVENTS_QUEUE_MAX", "2147483647")]).unwrap();
        assert_eq!(s.queue_max, i32::MAX as u32);
    }

    #[test]
    fn a_batch_never_exceeds_the_prefetch() {
        let e = refused(&[
            AMQP,
            MYSQL,
            ("EVENTS_PREFETCH", "10"),
            ("EVENTS_BATCH_MAX", "11"),
        ]);
        assert_eq!(
            e.to_string(),
            "EVENTS_BATCH_MAX=11: must be at most EVENTS_PREFETCH (10): RabbitMQ sends no \
             more unacknowledged events than that"
        );
        let s = load(&[
            AMQP,
            MYSQL,
            ("EVENTS_PREFETCH", "10"),
            ("EVENTS_BATCH_MAX", "10"),
        ])
        .unwrap();
        assert_eq!((s.prefetch, s.batch_max), (10, 10));
    }

    #[test]
    fn queue_names_fit_amqp() {
        let s = load(&[AMQP, MYSQL, ("EVENTS_QUEUE", " search.index ")]).unwrap();
        assert_eq!(s.queue, "search.index");
        assert_eq!(
            refused(&[AMQP, MYSQL, ("EVENTS_QUEUE", "amq.x")]).name,
            "EVENTS_QUEUE"
        );
        refused(&[AMQP, MYSQL, ("EVENTS_QUEUE", &"q".repeat(251))]);
        load(&[AMQP, MYSQL, ("EVENTS_QUEUE", &"q".repeat(250))]).unwrap();
        refused(&[AMQP, MYSQL, ("EVENTS_QUEUE", "a\nb")]);
    }
}
