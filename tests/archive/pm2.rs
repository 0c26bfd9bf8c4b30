//! `pm2/ecosystem.events.config.js` as the README says to use it: pm2 (with
//! a home of its own) starts `chat-events`, which archives what is
//! published, and `pm2 stop` ends it cleanly (SIGTERM, its last log line).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::TestDatabase;
use crate::{event, wait_for_count, Publisher, Vhost};

struct Pm2 {
    home: PathBuf,
    envs: Vec<(String, String)>,
}

impl Pm2 {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("pm2")
            .args(args)
            .env("PM2_HOME", &self.home)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap_or_else(|e| panic!("pm2 {args:?}: {e} (is pm2 installed?)"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "pm2 {args:?} failed:\n{text}");
        text
    }

    /// The app's pm2 status (`online`, `stopped`, `errored`...).
    fn status(&self, app: &str) -> String {
        let list: serde_json::Value =
            serde_json::from_str(&self.run(&["jlist"])).expect("pm2 jlist is JSON");
        list.as_array()
            .into_iter()
            .flatten()
            .find(|a| a["name"] == app)
            .map(|a| a["pm2_env"]["status"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }
}

impl Drop for Pm2 {
    fn drop(&mut self) {
        let _ = Command::new("pm2")
            .arg("kill")
            .env("PM2_HOME", &self.home)
            .output();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

#[tokio::test]
async fn the_pm2_file_runs_the_archive_and_stops_it_cleanly() {
    let (vhost, db) = (Vhost::new(), TestDatabase::new());
    let app = format!("chat-events-test-{}", std::process::id());
    let home = std::env::temp_dir().join(format!("pm2-{app}"));
    let pm2 = Pm2 {
        home,
        envs: vec![
            ("AMQP_URL".into(), vhost.url()),
            ("MYSQL_URL".into(), db.url.clone()),
            ("CHAT_EVENTS_APP_NAME".into(), app.clone()),
            (
                "CHAT_EVENTS_BIN".into(),
                env!("CARGO_BIN_EXE_chat-events").into(),
            ),
        ],
    };
    pm2.run(&["start", "pm2/ecosystem.events.config.js"]);
    let publisher = Publisher::connect(&vhost).await;
    // The queue exists once chat-events declared it.
    let start = Instant::now();
    while publisher
        .queue_exists("chat-events.archive")
        .await
        .is_none()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "chat-events under pm2 declared no queue: {}",
            pm2.status(&app)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 1..=10 {
        publisher
            .publish(&event("member.joined", &format!("p{i}"), 9, Some(i)))
            .await;
    }
    wait_for_count(&db, 10, Duration::from_secs(20)).await;
    assert_eq!(pm2.status(&app), "online");
    pm2.run(&["stop", &app]);
    assert_eq!(
        pm2.status(&app),
        "stopped",
        "exit 0 on SIGTERM, not errored"
    );
    publisher.close().await;
}
