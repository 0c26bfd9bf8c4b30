//! The `chat-server` binary: settings from the environment, then the
//! application until a signal stops it.

use chat_server::config::Settings;
use chat_server::startup::{Application, StartupError};
use chat_server::Chain;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    chat_server::startup::ignore_sighup();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
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
            eprintln!("cannot start: {}", Chain(&e));
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
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server error: {}", Chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
