//! Domain-event tests (docs/PROTOCOL.md "Domain events"): the real server
//! publishing to the real RabbitMQ (a private vhost per test), with a real
//! consumer bound to `chat.events`; in-process servers for both stores, and
//! real `chat-server` processes of a cluster (MySQL + Redis).

#[path = "../common/fault_proxy.rs"]
mod fault_proxy;
#[path = "../api/helpers/mod.rs"]
mod helpers;
#[path = "../cluster/procs.rs"]
#[allow(dead_code)]
mod procs;
mod rabbit;
#[path = "../common/wait.rs"]
#[allow(dead_code)]
mod wait;

mod cluster;
mod outage;
mod scripted;

use std::time::Duration;

use chat_server::config::Settings;
use chat_server::events::EventsConfig;

/// Events on, to `url`, with quick test timings and a buffer of `max`.
pub fn events_to(settings: &mut Settings, url: &str, max: usize) {
    settings.events = Some(EventsConfig {
        url: url.to_owned(),
        buffer_max: max,
        poll: Duration::from_millis(100),
        publish_timeout: Duration::from_millis(1000),
    });
}
