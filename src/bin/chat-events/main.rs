//! `chat-events`: the event archive. Reads the servers' domain events from
//! a durable RabbitMQ queue bound to the `chat.events` exchange and stores
//! each one, once, in the MySQL table `chatEvent`.
//!
//! Module map, following one event from the broker to its row:
//! - [`settings`] reads the environment (with the server's readers);
//! - [`broker`] connects to RabbitMQ, declares the queue (and its
//!   dead-letter queue) and hands out deliveries;
//! - [`event`] checks a delivery's body and turns it into a row, or says
//!   why it cannot be archived;
//! - [`batch`] groups events into transactions and decides what one
//!   acknowledgement covers;
//! - [`archive`] writes a batch to `chatEvent` in one transaction, ignoring
//!   event ids already there;
//! - [`consume`] is the loop that ties them together: acknowledge after
//!   commit, dead-letter bad bodies, retry with backoff, stop cleanly.
//!
//! Exit codes: 0 after SIGTERM or SIGINT, 2 for a setting that cannot be
//! used, 1 when MySQL or RabbitMQ refuse in a way waiting cannot fix (bad
//! credentials, a queue declared with other arguments) at start-up.

mod archive;
mod batch;
mod broker;
mod consume;
mod event;
mod settings;

use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use settings::ArchiveSettings;

#[tokio::main]
async fn main() -> ExitCode {
    // `info` unless RUST_LOG says otherwise; lapin's tracing spans (an
    // "io_loop;" line per connection) only from `warn`.
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .filter_module("tracing::span", log::LevelFilter::Warn)
        .parse_env(env_logger::Env::default())
        .init();
    let settings = match ArchiveSettings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let (stop_tx, stop) = watch::channel(false);
    if let Err(e) = watch_signals(stop_tx) {
        eprintln!("cannot start: cannot handle signals: {e}");
        return ExitCode::FAILURE;
    }
    log::info!(
        "chat-events archiving {} into chatEvent (queue {})",
        settings::EXCHANGE,
        settings.queue
    );
    match consume::run(&settings, stop).await {
        Ok(counts) => {
            log::info!(
                "chat-events stopped: {} events stored, {} already archived, {} dead-lettered",
                counts.stored,
                counts.repeated,
                counts.dead_lettered
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT set `stop`; SIGHUP is ignored (log rotation sends it
/// and there is nothing to reload), as in the server.
fn watch_signals(stop: watch::Sender<bool>) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => log::info!("SIGTERM: storing the batch in flight, then stopping"),
                _ = int.recv() => log::info!("SIGINT: storing the batch in flight, then stopping"),
                _ = hup.recv() => {
                    log::info!("SIGHUP ignored: nothing to reload; stop with SIGTERM or SIGINT");
                    continue;
                }
            }
            // The receivers live in `main` until it returns.
            let _ = stop.send(true);
        }
    });
    Ok(())
}
