//! The `chat-server` binary: the log format, then the settings from the
//! environment, then the application until a signal stops it.

use chat_server::config::{log_format_from_env, Settings};
use chat_server::logging;
use chat_server::startup::{Application, StartupError};
use chat_server::Chain;

/// mimalloc instead of glibc's allocator: see `Cargo.toml` and the profile
/// in docs/PERFORMANCE.md (Small rooms: CPU per delivery).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    // The logger comes first, so every later line (a configuration error
    // included) is in the chosen format; only a bad LOG_FORMAT itself is
    // reported in plain text.
    let format = match log_format_from_env() {
        Ok(format) => format,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    logging::init(format);
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            logging::fatal(&format!("configuration error: {e}"));
            return std::process::ExitCode::from(2);
        }
    };
    logging::set_instance(&settings.instance_id);
    chat_server::startup::ignore_sighup();
    let (host, store, instance) = (
        settings.host.clone(),
        if settings.mysql_url.is_some() {
            "mysql"
        } else {
            "memory"
        },
        settings.instance_id.clone(),
    );
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            logging::fatal(&format!("cannot start: {}", Chain(&e)));
            // Let any actor that did start run once while the runtime is
            // alive: one dropped unpolled at exit panics ("no reactor
            // running").
            actix_web::rt::task::yield_now().await;
            return std::process::ExitCode::from(if e.is_refusal() {
                StartupError::REFUSED_EXIT
            } else {
                1
            });
        }
    };
    log::info!(
        "chat-server {instance} listening on http://{host}:{} (store: {store})",
        app.port()
    );
    match app.run_until_stopped().await {
        Ok(()) => {
            log::info!("chat-server {instance} stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            logging::fatal(&format!("server error: {}", Chain(&e)));
            std::process::ExitCode::FAILURE
        }
    }
}
