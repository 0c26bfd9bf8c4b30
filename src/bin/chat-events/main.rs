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
//! Logging is the server's ([`chat_server::logging`]: `LOG_FORMAT` text or
//! json, `RUST_LOG`).
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

use chat_server::config::log_format_from_env;
use chat_server::logging;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use settings::ArchiveSettings;

#[tokio::main]
async fn main() -> ExitCode {
    // The server's logger (`LOG_FORMAT` text or json, `RUST_LOG`), first,
    // so every later line is in the chosen format.
    let format = match log_format_from_env() {
        Ok(format) => format,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(format);
    let settings = match ArchiveSettings::from_env() {
        Ok(s) => s,
        Err(e) => {
            logging::fatal(&format!("configuration error: {e}"));
            return ExitCode::from(2);
        }
    };
    // The `instance` of its JSON lines.
    logging::set_instance(&format!("chat-events/{}", settings.queue));
    let (stop_tx, stop) = watch::channel(false);
    if let Err(e) = watch_signals(stop_tx) {
        logging::fatal(&format!("cannot start: cannot handle signals: {e}"));
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
            logging::fatal(&format!("cannot start: {e}"));
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
