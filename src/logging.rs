//! Where the server's log lines go and what they look like (`LOG_FORMAT`).
//!
//! Everything the server says goes through the `log` macros to stderr,
//! filtered by `RUST_LOG` (env_logger's syntax) in either format:
//! - `text` (the default): env_logger's own human-readable lines.
//! - `json`: one JSON object per line, for a log system (Loki, Elastic,
//!   `jq`): `time` (RFC 3339, UTC, microseconds), `level`, `target`,
//!   `message`, `instance` (`INSTANCE_ID`, so the lines of a cluster's
//!   processes can be merged), then the record's key-values (`room`,
//!   `socket`, the access log's `method`, `path`, `status`...).
//!
//! Invariants, enforced here:
//! 1. In JSON mode every line the process writes to stderr is one JSON
//!    object: records of the server and of its libraries (the `log`
//!    records, and `tracing`'s, which actix turns into `log` records) go
//!    through [`json_line`]; a panic goes through the hook [`init`]
//!    installs; the binary's last words (a configuration error, a failed
//!    start) through [`fatal`]. Nothing else in the crate writes to stderr
//!    (`eprintln!` is only in `main.rs`'s text branch, via [`fatal`]).
//! 2. A line is one line: serde_json escapes the newlines of a multi-line
//!    message, and each line is handed to stderr in one write (env_logger
//!    buffers a record and writes it whole; [`write_line`] likewise), so the
//!    worker threads' lines never interleave.
//! 3. The fixed keys cannot be forged: a record's key-value named like one
//!    of them (`level`, `instance`...) is dropped, so a filter on `level` or
//!    `instance` sees what the server decided.
//!
//! Why env_logger with a format closure, not `tracing-subscriber`'s JSON
//! layer or `structured-logger`: env_logger is already the text logger (the
//! design card names it), so `RUST_LOG` means exactly the same in both
//! formats; its formatter hands us the `log` record with its key-values
//! (`log`'s `kv` feature), which `tracing-log`'s bridge would drop; and the
//! JSON is serde_json, already a dependency. The formatter is a plain
//! function of a record, unit-tested below.

use std::io::Write;
use std::sync::OnceLock;

use chrono::{DateTime, SecondsFormat, Utc};
use log::kv::{Key, Value, VisitSource};
use log::{Level, Record};
use serde_json::{Map, Value as Json};

/// `LOG_FORMAT`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// env_logger's human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `text` or `json` (any case); `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// The keys every JSON line has; a record's key-value of the same name is
/// dropped (invariant 3).
pub const FIXED_KEYS: [&str; 5] = ["time", "level", "target", "message", "instance"];

/// The format chosen at [`init`] (text until then).
static FORMAT: OnceLock<LogFormat> = OnceLock::new();
/// `INSTANCE_ID`, once the settings are read ([`set_instance`]); until
/// then JSON lines say `"instance": null` (only a configuration error can
/// be written that early, and it may be about `INSTANCE_ID` itself).
static INSTANCE: OnceLock<String> = OnceLock::new();

/// Installs the logger (env_logger with `RUST_LOG`, default `info`) in
/// `format`, and in JSON mode a panic hook that writes the panic as one
/// JSON line. Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let _ = FORMAT.set(format);
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder
            .write_style(env_logger::WriteStyle::Never)
            .format(|buf, record| {
                let line = json_line(Utc::now(), INSTANCE.get().map(String::as_str), record);
                buf.write_all(line.as_bytes())
            });
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(a panic payload that is not text)");
            let thread = std::thread::current();
            let backtrace = std::backtrace::Backtrace::capture();
            let captured = backtrace.status() == std::backtrace::BacktraceStatus::Captured;
            let line = panic_line(
                Utc::now(),
                INSTANCE.get().map(String::as_str),
                &PanicReport {
                    message,
                    location: info.location().map(ToString::to_string),
                    thread: thread.name().unwrap_or("<unnamed>"),
                    backtrace: captured.then(|| backtrace.to_string()),
                },
            );
            write_line(&line);
        }));
    }
    builder.init();
}

/// Records the instance id every later JSON line carries.
pub fn set_instance(id: &str) {
    let _ = INSTANCE.set(id.to_owned());
}

/// The binary's last words (a configuration error, a failed start): as is
/// in text mode, as an `ERROR` JSON line in JSON mode. Written whatever
/// `RUST_LOG` says: an operator must see why the process stopped.
pub fn fatal(message: &str) {
    match FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Text => eprintln!("{message}"),
        LogFormat::Json => {
            let instance = INSTANCE.get().map(String::as_str);
            let none = Map::new();
            let line = render(
                Utc::now(),
                instance,
                Level::Error,
                "chat_server",
                message,
                &none,
            );
            write_line(&line);
        }
    }
}

/// Writes one whole line to stderr in one call (invariant 2); a failed
/// write is dropped, as env_logger does.
fn write_line(line: &str) {
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `record` as one JSON object and a newline.
pub fn json_line(time: DateTime<Utc>, instance: Option<&str>, record: &Record) -> String {
    let mut fields = Fields(Map::new());
    // A visitor that never fails: `visit` cannot return an error.
    let _ = record.key_values().visit(&mut fields);
    let message = record.args().to_string();
    render(
        time,
        instance,
        record.level(),
        record.target(),
        &message,
        &fields.0,
    )
}

/// What a panic hook knows about a panic.
pub struct PanicReport<'a> {
    pub message: &'a str,
    /// `file:line:column`.
    pub location: Option<String>,
    pub thread: &'a str,
    /// With `RUST_BACKTRACE=1`.
    pub backtrace: Option<String>,
}

/// A panic as one JSON line: level `ERROR`, target `panic`, the payload in
/// `message`, and `location`, `thread` (and `backtrace`) as fields.
pub fn panic_line(time: DateTime<Utc>, instance: Option<&str>, panic: &PanicReport) -> String {
    let message = format!("panicked: {}", panic.message);
    let mut fields = Map::new();
    if let Some(location) = &panic.location {
        fields.insert("location".into(), Json::from(location.as_str()));
    }
    fields.insert("thread".into(), Json::from(panic.thread));
    if let Some(backtrace) = &panic.backtrace {
        fields.insert("backtrace".into(), Json::from(backtrace.as_str()));
    }
    render(time, instance, Level::Error, "panic", &message, &fields)
}

/// The line: the fixed keys first, in [`FIXED_KEYS`] order (a reader's eye
/// finds the time and level at the start), then `fields` (none of which is
/// a fixed key, see [`Fields`]), then a newline.
fn render(
    time: DateTime<Utc>,
    instance: Option<&str>,
    level: Level,
    target: &str,
    message: &str,
    fields: &Map<String, Json>,
) -> String {
    let fixed = [
        Json::from(time.to_rfc3339_opts(SecondsFormat::Micros, true)),
        Json::from(level.as_str()),
        Json::from(target),
        Json::from(message),
        instance.map_or(Json::Null, Json::from),
    ];
    let pairs = FIXED_KEYS
        .iter()
        .copied()
        .zip(fixed.iter())
        .chain(fields.iter().map(|(k, v)| (k.as_str(), v)));
    let mut line = String::with_capacity(160 + message.len());
    line.push('{');
    for (i, (key, value)) in pairs.enumerate() {
        if i > 0 {
            line.push(',');
        }
        // Strings, numbers, booleans and null always serialize; `Json`'s
        // `Display` is its compact JSON.
        line.push_str(&Json::from(key).to_string());
        line.push(':');
        line.push_str(&value.to_string());
    }
    line.push_str("}\n");
    line
}

/// Collects a record's key-values, numbers and booleans as such, anything
/// else as its `Display` text; one named like a fixed key is dropped
/// (invariant 3), and of a key given twice the last value is kept.
struct Fields(Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let key = key.as_str();
        if !FIXED_KEYS.contains(&key) {
            self.0.insert(key.to_owned(), json_value(&value));
        }
        Ok(())
    }
}

fn json_value(value: &Value) -> Json {
    if let Some(b) = value.to_bool() {
        Json::Bool(b)
    } else if let Some(n) = value.to_u64() {
        Json::from(n)
    } else if let Some(n) = value.to_i64() {
        Json::from(n)
    } else if let Some(n) = value.to_f64().and_then(serde_json::Number::from_f64) {
        Json::Number(n)
    } else {
        Json::from(value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-29T18:02:14.123456Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn parsed(line: &str) -> Map<String, Json> {
        assert!(line.ends_with('\n'), "{line:?}");
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        match serde_json::from_str(line) {
            Ok(Json::Object(o)) => o,
            other => panic!("not an object: {other:?} from {line:?}"),
        }
    }

    #[test]
    fn a_record_is_one_object_with_the_fixed_keys() {
        let line = json_line(
            at(),
            Some("chat-1"),
            &Record::builder()
                .level(Level::Warn)
                .target("chat_server::actors::room")
                .args(format_args!("room {}: member resync failed", 7))
                .build(),
        );
        assert!(
            line.starts_with(r#"{"time":"2026-11-29T18:02:14.123456Z","level":"WARN","target":"#),
            "the fixed keys come first, in order: {line}"
        );
        let o = parsed(&line);
        assert_eq!(o["time"], "2026-11-29T18:02:14.123456Z");
        assert_eq!(o["level"], "WARN");
        assert_eq!(o["target"], "chat_server::actors::room");
        assert_eq!(o["message"], "room 7: member resync failed");
        assert_eq!(o["instance"], "chat-1");
        assert_eq!(o.len(), FIXED_KEYS.len(), "{o:?}");
    }

    #[test]
    fn key_values_become_typed_fields() {
        let kvs: [(&str, Value); 5] = [
            ("room", Value::from(42u64)),
            ("socket", Value::from("chat-1:9")),
            ("delta", Value::from(-3i64)),
            ("duration_ms", Value::from(1.25f64)),
            ("ok", Value::from(true)),
        ];
        let record = Record::builder()
            .level(Level::Info)
            .args(format_args!("x"))
            .key_values(&kvs)
            .build();
        let o = parsed(&json_line(at(), Some("i"), &record));
        assert_eq!(o["room"], 42);
        assert_eq!(o["socket"], "chat-1:9");
        assert_eq!(o["delta"], -3);
        assert_eq!(o["duration_ms"], 1.25);
        assert_eq!(o["ok"], true);
    }

    #[test]
    fn the_macros_key_values_reach_the_formatter() {
        // What `log::info!(room = id, socket = s; ...)` builds, checked
        // through the real macro into a logger that keeps the line.
        struct Keep(std::sync::Mutex<Vec<String>>);
        impl log::Log for Keep {
            fn enabled(&self, _: &log::Metadata) -> bool {
                true
            }
            fn log(&self, record: &Record) {
                self.0
                    .lock()
                    .unwrap()
                    .push(json_line(at(), Some("i"), record));
            }
            fn flush(&self) {}
        }
        let keep = Keep(std::sync::Mutex::new(Vec::new()));
        // The macros check the global level first (`Off` with no logger
        // installed); no logger is installed in unit tests, so this only
        // lets the macro through to `keep`.
        log::set_max_level(log::LevelFilter::Info);
        let socket = crate::domain::SocketId::new("chat-1", 5);
        log::info!(logger: keep, room = 3u64, socket = socket.as_str(); "room 3: hello");
        let lines = keep.0.into_inner().unwrap();
        let o = parsed(&lines[0]);
        assert_eq!(o["room"], 3);
        assert_eq!(o["socket"], "chat-1:5");
        assert_eq!(o["message"], "room 3: hello");
    }

    #[test]
    fn a_multi_line_message_stays_one_line_and_round_trips() {
        let text = "first\nsecond \"quoted\"\r\n\ttab \u{1F600} \u{7}";
        let line = json_line(
            at(),
            None,
            &Record::builder()
                .level(Level::Error)
                .args(format_args!("{text}"))
                .build(),
        );
        let o = parsed(&line);
        assert_eq!(o["message"], text);
        assert_eq!(o["instance"], Json::Null);
    }

    #[test]
    fn fields_cannot_forge_the_fixed_keys() {
        let kvs: [(&str, Value); 3] = [
            ("level", Value::from("DEBUG")),
            ("instance", Value::from("someone-else")),
            ("room", Value::from(1u64)),
        ];
        let record = Record::builder()
            .level(Level::Error)
            .args(format_args!("x"))
            .key_values(&kvs)
            .build();
        let o = parsed(&json_line(at(), Some("me"), &record));
        assert_eq!(o["level"], "ERROR");
        assert_eq!(o["instance"], "me");
        assert_eq!(o["room"], 1);
    }

    #[test]
    fn a_non_finite_number_is_written_as_text() {
        let kvs: [(&str, Value); 1] = [("ratio", Value::from(f64::NAN))];
        let record = Record::builder()
            .args(format_args!("x"))
            .key_values(&kvs)
            .build();
        let o = parsed(&json_line(at(), None, &record));
        assert_eq!(o["ratio"], "NaN");
    }

    #[test]
    fn a_panic_is_one_error_line_with_where_it_happened() {
        let line = panic_line(
            at(),
            Some("chat-2"),
            &PanicReport {
                message: "index out of bounds\nsecond line",
                location: Some("src/x.rs:1:2".into()),
                thread: "actix-rt|system:0|arbiter:1",
                backtrace: Some("0: a\n1: b".into()),
            },
        );
        let o = parsed(&line);
        assert_eq!(o["level"], "ERROR");
        assert_eq!(o["target"], "panic");
        assert_eq!(o["message"], "panicked: index out of bounds\nsecond line");
        assert_eq!(o["instance"], "chat-2");
        assert_eq!(o["location"], "src/x.rs:1:2");
        assert_eq!(o["thread"], "actix-rt|system:0|arbiter:1");
        assert_eq!(o["backtrace"], "0: a\n1: b");
    }

    #[test]
    fn log_format_accepts_text_and_json_only() {
        assert_eq!(LogFormat::parse("json"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("JSON"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("text"), Some(LogFormat::Text));
        for bad in ["", "xml", "jsonl", "json "] {
            assert_eq!(LogFormat::parse(bad), None, "{bad:?}");
        }
    }
}
