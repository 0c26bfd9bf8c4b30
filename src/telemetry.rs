//! The process's Prometheus metrics: every series the server exports, its
//! handles, and the text `GET /metrics` answers (README, "Watch it in
//! Prometheus", lists the series with their types and meaning).
//!
//! Built on `metrics` (the handle types) and `metrics-exporter-prometheus`
//! (the registry and the text format). No recorder is installed globally:
//! each [`Application`](crate::startup::Application) builds its own
//! [`Metrics`], registers every series once at start-up and hands the
//! ready handles to the parts that count. Tests start several servers in
//! one process, and each must count only its own chats (a global recorder
//! can be installed once per process, and the second server's counts would
//! land in the first one's registry); and a handle registered once costs
//! no key lookup per event, where the `counter!` macros hash the key into
//! the global registry at every call.
//!
//! Invariants, enforced here:
//! - **Bounded label cardinality.** Every label value comes from a fixed
//!   set declared in this file ([`RateLimit`], [`StoreOp`],
//!   [`ERROR_CODES`]), so the number of series is fixed at start-up; no
//!   label carries a room, a nickname or an address.
//! - **Cheap on the delivery path.** A counter handle is an atomic add (no
//!   allocation, no lock); the room adds a fan-out's counts once per
//!   fan-out, never once per socket. Gauges that can be read when scraped
//!   (open connections) are set then, not on every change.
//! - **Histograms stay bounded.** Each has fixed buckets, and
//!   [`Metrics::upkeep`] (run every [`UPKEEP_INTERVAL`] by `startup`)
//!   folds recorded values into them even when nobody scrapes, so
//!   unscraped samples never pile up.

use std::fmt;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// How often recorded histogram values are folded into their buckets.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The `Content-Type` of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets of the latency histograms, in seconds (0.5 ms to 10 s; a store
/// call is bounded by `STORE_TIMEOUT_MS`, 5 s by default).
const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of the message writer's group size, in chats (a group holds at
/// most 2000, see `store/mysql/writer.rs`).
const BATCH_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];

/// Why a client was answered `rate_limited` (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// Over `WS_RATE_PER_SEC` / `WS_RATE_BURST`.
    Frames,
    /// More than the frames a connection may queue while it joins.
    Joining,
    /// Over `WS_JOIN_RATE_PER_SEC` / `WS_JOIN_BURST`.
    Joins,
    /// Over `ROOM_CREATE_RATE_PER_SEC` / `ROOM_CREATE_BURST` (WebSocket or
    /// REST).
    RoomCreates,
    /// The room's mailbox or its queue of chats to store is full.
    RoomBusy,
    /// A handshake from an address just closed for flooding.
    FloodCooldown,
}

impl RateLimit {
    pub const ALL: [RateLimit; 6] = [
        RateLimit::Frames,
        RateLimit::Joining,
        RateLimit::Joins,
        RateLimit::RoomCreates,
        RateLimit::RoomBusy,
        RateLimit::FloodCooldown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RateLimit::Frames => "frames",
            RateLimit::Joining => "joining",
            RateLimit::Joins => "joins",
            RateLimit::RoomCreates => "room_creates",
            RateLimit::RoomBusy => "room_busy",
            RateLimit::FloodCooldown => "flood_cooldown",
        }
    }
}

/// A store call (the `operation` label): one per method of the
/// [`Store`](crate::store::Store) contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Ping,
    CreateRoom,
    Room,
    Rooms,
    AddMember,
    RemoveMember,
    MemberRecords,
    Members,
    InstancesWithMembers,
    AppendMessages,
    MessagesAfter,
    RecentMessages,
    DeleteUnjoinedRooms,
    RemoveInstanceMembers,
    RemoveAllMembers,
}

impl StoreOp {
    pub const ALL: [StoreOp; 15] = [
        StoreOp::Ping,
        StoreOp::CreateRoom,
        StoreOp::Room,
        StoreOp::Rooms,
        StoreOp::AddMember,
        StoreOp::RemoveMember,
        StoreOp::MemberRecords,
        StoreOp::Members,
        StoreOp::InstancesWithMembers,
        StoreOp::AppendMessages,
        StoreOp::MessagesAfter,
        StoreOp::RecentMessages,
        StoreOp::DeleteUnjoinedRooms,
        StoreOp::RemoveInstanceMembers,
        StoreOp::RemoveAllMembers,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Ping => "ping",
            StoreOp::CreateRoom => "create_room",
            StoreOp::Room => "room",
            StoreOp::Rooms => "rooms",
            StoreOp::AddMember => "add_member",
            StoreOp::RemoveMember => "remove_member",
            StoreOp::MemberRecords => "member_records",
            StoreOp::Members => "members",
            StoreOp::InstancesWithMembers => "instances_with_members",
            StoreOp::AppendMessages => "append_messages",
            StoreOp::MessagesAfter => "messages_after",
            StoreOp::RecentMessages => "recent_messages",
            StoreOp::DeleteUnjoinedRooms => "delete_unjoined_rooms",
            StoreOp::RemoveInstanceMembers => "remove_instance_members",
            StoreOp::RemoveAllMembers => "remove_all_members",
        }
    }
}

/// Every error code of the contract (docs/PROTOCOL.md), the values of the
/// `code` label; `ChatError::code` returns one of these.
pub const ERROR_CODES: [&str; 19] = [
    "invalid_json",
    "invalid_title",
    "invalid_nickname",
    "invalid_content",
    "invalid_parameter",
    "invalid_message",
    "room_not_found",
    "not_found",
    "method_not_allowed",
    "forbidden_origin",
    "nickname_taken",
    "payload_too_large",
    "unsupported_media_type",
    "rate_limited",
    "not_in_room",
    "too_many_connections",
    "server_full",
    "request_timeout",
    "unavailable",
];

/// The series' names (README lists them).
pub mod names {
    pub const CONNECTIONS: &str = "chat_connections_open";
    pub const ROOMS: &str = "chat_rooms_active";
    pub const MEMBERS: &str = "chat_members_local";
    pub const CHATS_RECEIVED: &str = "chat_chats_received_total";
    pub const CHATS_STORED: &str = "chat_chats_stored_total";
    pub const CHATS_DELIVERED: &str = "chat_chats_delivered_total";
    pub const DELIVERIES: &str = "chat_deliveries_total";
    pub const SLOW_CONSUMERS: &str = "chat_slow_consumer_closes_total";
    pub const RATE_LIMITED: &str = "chat_rate_limited_total";
    pub const ERRORS: &str = "chat_errors_total";
    pub const STORE_SECONDS: &str = "chat_store_call_seconds";
    pub const WRITER_BATCH: &str = "chat_writer_batch_chats";
    pub const BUS_PUBLISHES: &str = "chat_bus_publishes_total";
    pub const BUS_LAG: &str = "chat_bus_receive_lag_seconds";
    pub const GAP_FILLS: &str = "chat_gap_fills_total";
    pub const REAPED: &str = "chat_reaped_instances_total";
}

/// Every series of one server, registered once.
pub struct Metrics {
    handle: PrometheusHandle,
    /// Open WebSocket connections; set when scraped.
    connections: Gauge,
    /// Room actors running on this process.
    pub rooms: Gauge,
    /// Members connected to this process, over all its rooms.
    pub members: Gauge,
    /// Valid `chat` frames from this process's clients.
    pub chats_received: Counter,
    /// Chats this process stored (given an id by the store).
    pub chats_stored: Counter,
    /// Chats released to this process's members (once per chat per
    /// process, wherever it was stored).
    pub chats_delivered: Counter,
    /// Chats times the local members each was handed to.
    pub deliveries: Counter,
    /// Connections closed for not reading fast enough.
    pub slow_consumer_closes: Counter,
    rate_limited: [Counter; RateLimit::ALL.len()],
    errors: [Counter; ERROR_CODES.len()],
    store_seconds: [Histogram; StoreOp::ALL.len()],
    /// Chats per transaction of the MySQL message writer.
    pub writer_batch: Histogram,
    /// Events this process published on the cluster bus.
    pub bus_publishes: Counter,
    /// From an event's publication to its arrival here.
    pub bus_receive_lag: Histogram,
    /// Gap fills: reads of a missing id from the store.
    pub gap_fills: Counter,
    /// Dead instances whose members this process removed.
    pub reaped_instances: Counter,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every series at zero.
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new();
        let builder = [
            (names::STORE_SECONDS, &SECONDS_BUCKETS[..]),
            (names::BUS_LAG, &SECONDS_BUCKETS[..]),
            (names::WRITER_BATCH, &BATCH_BUCKETS[..]),
        ]
        .into_iter()
        .fold(builder, |builder, (name, buckets)| {
            // Only an empty bucket list is refused, and none is.
            match builder.set_buckets_for_metric(Matcher::Full(name.into()), buckets) {
                Ok(b) => b,
                Err(e) => unreachable!("fixed buckets for {name}: {e}"),
            }
        });
        let recorder = builder.build_recorder();
        let r = Registrar(&recorder);
        use names::*;
        let metrics = Metrics {
            handle: recorder.handle(),
            connections: r.gauge(CONNECTIONS, "Open WebSocket connections"),
            rooms: r.gauge(ROOMS, "Rooms with an actor on this process"),
            members: r.gauge(MEMBERS, "Room members connected to this process"),
            chats_received: r.counter(CHATS_RECEIVED, "Valid chat frames from clients"),
            chats_stored: r.counter(CHATS_STORED, "Chats this process stored"),
            chats_delivered: r.counter(
                CHATS_DELIVERED,
                "Chats released to this process's members, once per chat",
            ),
            deliveries: r.counter(
                DELIVERIES,
                "Chats handed to a member's connection, once per chat and member",
            ),
            slow_consumer_closes: r.counter(
                SLOW_CONSUMERS,
                "Connections closed for not reading fast enough",
            ),
            rate_limited: RateLimit::ALL.map(|reason| {
                r.labelled_counter(
                    RATE_LIMITED,
                    "Answers rate_limited, by reason",
                    "reason",
                    reason.as_str(),
                )
            }),
            errors: ERROR_CODES.map(|code| {
                r.labelled_counter(
                    ERRORS,
                    "Error answers (REST and WebSocket), by code",
                    "code",
                    code,
                )
            }),
            store_seconds: StoreOp::ALL.map(|op| {
                r.histogram(
                    STORE_SECONDS,
                    Unit::Seconds,
                    "Store call latency, by operation",
                    Some(("operation", op.as_str())),
                )
            }),
            writer_batch: r.histogram(
                WRITER_BATCH,
                Unit::Count,
                "Chats per transaction of the MySQL message writer",
                None,
            ),
            bus_publishes: r.counter(BUS_PUBLISHES, "Events published on the cluster bus"),
            bus_receive_lag: r.histogram(
                BUS_LAG,
                Unit::Seconds,
                "From a bus event's publication to its arrival here",
                None,
            ),
            gap_fills: r.counter(GAP_FILLS, "Missing message ids read from the store"),
            reaped_instances: r
                .counter(REAPED, "Dead instances whose members this process removed"),
        };
        metrics.handle.run_upkeep();
        metrics
    }

    /// Counts an answer `rate_limited` for `reason`.
    pub fn rate_limited(&self, reason: RateLimit) {
        self.rate_limited[reason as usize].increment(1);
    }

    /// Counts an error answer with `code` (one of [`ERROR_CODES`]).
    pub fn error(&self, code: &str) {
        match ERROR_CODES.iter().position(|c| *c == code) {
            Some(i) => self.errors[i].increment(1),
            None => debug_assert!(false, "error code {code} not in ERROR_CODES"),
        }
    }

    /// Records how long a store call took.
    pub fn store_call(&self, op: StoreOp, took: Duration) {
        self.store_seconds[op as usize].record(took.as_secs_f64());
    }

    /// Records a bus event's lag, from its send time (`sent_ms`, ms since
    /// the epoch, the sender's clock) to now.
    pub fn bus_received(&self, sent_ms: u64) {
        self.bus_receive_lag
            .record(lag_seconds(sent_ms, now_millis()));
    }

    /// Folds recorded histogram values into their buckets.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text, with `open_connections` as the connections
    /// gauge.
    pub fn render(&self, open_connections: usize) -> String {
        self.connections.set(open_connections as f64);
        self.handle.render()
    }
}

/// Milliseconds since the Unix epoch, by this machine's clock (what the
/// bus envelope carries as its send time).
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Seconds from `sent_ms` to `now_ms`; zero when the sender's clock is
/// ahead of ours (clocks of different hosts differ a little).
pub fn lag_seconds(sent_ms: u64, now_ms: u64) -> f64 {
    now_ms.saturating_sub(sent_ms) as f64 / 1000.0
}

/// Registers series with a recorder, with their help text.
struct Registrar<'a, R: Recorder>(&'a R);

impl<R: Recorder> Registrar<'_, R> {
    const METADATA: Metadata<'static> =
        Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

    fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        self.0
            .describe_counter(KeyName::from_const_str(name), None, help.into());
        self.0
            .register_counter(&Key::from_static_name(name), &Self::METADATA)
    }

    fn labelled_counter(
        &self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        value: &'static str,
    ) -> Counter {
        self.0
            .describe_counter(KeyName::from_const_str(name), None, help.into());
        let key = Key::from_parts(name, vec![Label::from_static_parts(label, value)]);
        self.0.register_counter(&key, &Self::METADATA)
    }

    fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        self.0
            .describe_gauge(KeyName::from_const_str(name), None, help.into());
        self.0
            .register_gauge(&Key::from_static_name(name), &Self::METADATA)
    }

    fn histogram(
        &self,
        name: &'static str,
        unit: Unit,
        help: &'static str,
        label: Option<(&'static str, &'static str)>,
    ) -> Histogram {
        self.0
            .describe_histogram(KeyName::from_const_str(name), Some(unit), help.into());
        let labels = label
            .map(|(k, v)| vec![Label::from_static_parts(k, v)])
            .unwrap_or_default();
        self.0
            .register_histogram(&Key::from_parts(name, labels), &Self::METADATA)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line `series` (name and labels exactly as
    /// rendered), if there is one.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn every_series_is_rendered_at_zero_with_its_type_before_anything_happens() {
        let text = Metrics::new().render(0);
        for (name, kind) in [
            (names::CONNECTIONS, "gauge"),
            (names::ROOMS, "gauge"),
            (names::MEMBERS, "gauge"),
            (names::CHATS_RECEIVED, "counter"),
            (names::CHATS_STORED, "counter"),
            (names::CHATS_DELIVERED, "counter"),
            (names::DELIVERIES, "counter"),
            (names::SLOW_CONSUMERS, "counter"),
            (names::RATE_LIMITED, "counter"),
            (names::ERRORS, "counter"),
            (names::STORE_SECONDS, "histogram"),
            (names::WRITER_BATCH, "histogram"),
            (names::BUS_PUBLISHES, "counter"),
            (names::BUS_LAG, "histogram"),
            (names::GAP_FILLS, "counter"),
            (names::REAPED, "counter"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} is not a {kind}:\n{text}"
            );
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no help"
            );
        }
        assert_eq!(sample(&text, names::CHATS_STORED), Some(0.0));
        assert_eq!(
            sample(&text, "chat_errors_total{code=\"nickname_taken\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "chat_rate_limited_total{reason=\"room_busy\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "chat_store_call_seconds_count{operation=\"append_messages\"}"
            ),
            Some(0.0)
        );
    }

    #[test]
    fn counts_land_on_their_own_label_and_histograms_in_their_buckets() {
        let m = Metrics::new();
        m.chats_stored.increment(3);
        m.error("nickname_taken");
        m.error("nickname_taken");
        m.rate_limited(RateLimit::Joins);
        m.store_call(StoreOp::AppendMessages, Duration::from_millis(3));
        m.writer_batch.record(40.0);
        let text = m.render(7);
        assert_eq!(sample(&text, names::CONNECTIONS), Some(7.0));
        assert_eq!(sample(&text, names::CHATS_STORED), Some(3.0));
        assert_eq!(
            sample(&text, "chat_errors_total{code=\"nickname_taken\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "chat_errors_total{code=\"not_found\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "chat_rate_limited_total{reason=\"joins\"}"),
            Some(1.0)
        );
        let op = "operation=\"append_messages\"";
        assert_eq!(
            sample(
                &text,
                &format!("chat_store_call_seconds_bucket{{{op},le=\"0.0025\"}}")
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("chat_store_call_seconds_bucket{{{op},le=\"0.005\"}}")
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "chat_writer_batch_chats_bucket{le=\"64\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "chat_writer_batch_chats_sum"), Some(40.0));
    }

    #[test]
    fn two_registries_count_apart() {
        // Servers in one test process must not see each other's counts.
        let (a, b) = (Metrics::new(), Metrics::new());
        a.chats_received.increment(5);
        assert_eq!(sample(&a.render(0), names::CHATS_RECEIVED), Some(5.0));
        assert_eq!(sample(&b.render(0), names::CHATS_RECEIVED), Some(0.0));
    }

    #[test]
    fn the_series_count_is_fixed_whatever_is_counted() {
        // Bounded cardinality: counting never creates a series.
        let m = Metrics::new();
        let count = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
        let before = count(&m.render(0));
        for code in ERROR_CODES {
            m.error(code);
        }
        for reason in RateLimit::ALL {
            m.rate_limited(reason);
        }
        for op in StoreOp::ALL {
            m.store_call(op, Duration::from_secs(1));
        }
        m.bus_received(now_millis());
        assert_eq!(count(&m.render(3)), before);
    }

    #[test]
    fn lag_is_never_negative() {
        assert_eq!(lag_seconds(1_000, 3_500), 2.5);
        assert_eq!(lag_seconds(5_000, 3_500), 0.0);
    }

    #[test]
    fn labels_are_listed_in_their_enums_order() {
        // `as usize` indexes the handle arrays.
        for (i, r) in RateLimit::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, op) in StoreOp::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i);
        }
    }
}
