//! `LOG_FORMAT=json`: every line the real binary writes to stderr, from
//! start-up to shutdown, libraries' lines and its last words included, is
//! one JSON object with the fixed keys; the REST access log is there with
//! its fields; and a `LOG_FORMAT` that is neither `text` nor `json` stops
//! start-up with exit code 2.

use std::time::Duration;

use serde_json::Value;

use super::helpers::{TestDatabase, WsClient};
use super::wait::{eventually, within};
use super::{check_refused, Server, EXIT_LIMIT};

/// The instance id the JSON lines must carry.
const INSTANCE: &str = "json-logs-1";

/// Each line as a JSON object with `time` (RFC 3339, UTC), `level`,
/// `target`, `message` and `instance` as `instance`; panics naming the
/// first line that is not.
fn parse_all(lines: &[String], instance: Value) -> Vec<Value> {
    let all = || lines.join("\n");
    lines
        .iter()
        .map(|line| {
            let Ok(Value::Object(o)) = serde_json::from_str::<Value>(line) else {
                panic!("not a JSON object: {line:?}\nall lines:\n{}", all());
            };
            let time = o["time"].as_str().unwrap_or_default();
            assert!(
                chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.ends_with('Z'),
                "time is not RFC 3339 UTC: {line}"
            );
            assert!(
                ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                    .contains(&o["level"].as_str().unwrap_or("")),
                "level: {line}"
            );
            assert!(o["target"].is_string(), "target: {line}");
            assert!(o["message"].is_string(), "message: {line}");
            assert_eq!(o.get("instance"), Some(&instance), "instance: {line}");
            // A `Value` answers a missing key with `null` (a `Map` panics).
            Value::Object(o)
        })
        .collect()
}

fn message(o: &Value) -> &str {
    o["message"].as_str().unwrap_or_default()
}

/// Sends SIGTERM and waits for the exit; its code.
async fn terminate(server: &mut Server) -> Option<i32> {
    let pid = server.child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", pid.as_str()])
        .status()
        .expect("kill -TERM");
    assert!(sent.success());
    wait_exit(server).await
}

#[actix_rt::test]
async fn every_line_is_json_with_the_instance_from_start_up_to_shutdown() {
    // MySQL and `debug`: the libraries (actix, mysql_async) have their
    // say too, and the /health polls are logged.
    let database = TestDatabase::new();
    let mut server = Server::start(&[
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "debug"),
        ("INSTANCE_ID", INSTANCE),
        ("MYSQL_URL", database.url.as_str()),
    ]);
    server.wait_healthy().await;
    let room = server.create_room("json logs").await;
    let http = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let listed = http
        .get(format!(
            "{}/api/rooms?limit=7&cursor=private-value",
            server.base()
        ))
        .send()
        .await
        .expect("GET /api/rooms");
    assert_eq!(listed.status().as_u16(), 200);
    within(Duration::from_secs(20), "chat over a WebSocket", async {
        let mut alice = WsClient::connect(server.port).await;
        alice.join(room, "alice").await;
        let echo = alice.chat("hello in JSON").await;
        assert_eq!(echo["message"]["content"], "hello in JSON", "{echo}");
        alice.leave().await;
        alice.close().await;
    })
    .await;
    // The last member left: the room actor's line names the room.
    eventually(
        Duration::from_secs(10),
        "the room's deletion logged",
        || {
            let lines = server.lines();
            async move {
                lines.iter().any(|l| {
                    l.contains("last member left") && l.contains(&format!("\"room\":{room}"))
                })
            }
        },
    )
    .await;

    let code = terminate(&mut server).await;
    let lines = server.lines();
    assert_eq!(code, Some(0), "{}", lines.join("\n"));
    let records = parse_all(&lines, Value::from(INSTANCE));
    let find = |what: &str, pred: &dyn Fn(&Value) -> bool| {
        records
            .iter()
            .find(|o| pred(o))
            .unwrap_or_else(|| panic!("no line {what} in:\n{}", lines.join("\n")))
            .clone()
    };

    // Start-up and shutdown.
    find("listening", &|o| {
        message(o).starts_with(&format!("chat-server {INSTANCE} listening on"))
    });
    find("signal received", &|o| {
        message(o) == "signal received, shutting down"
    });
    let last_own = records
        .iter()
        .rev()
        .find(|o| o["target"] == "chat_server")
        .expect("a line of the binary");
    assert_eq!(message(last_own), format!("chat-server {INSTANCE} stopped"));
    // A library's line.
    find("from actix_server", &|o| {
        o["target"]
            .as_str()
            .unwrap_or("")
            .starts_with("actix_server")
    });

    // The access log.
    let created = find("POST /api/rooms", &|o| {
        o["method"] == "POST" && o["path"] == "/api/rooms"
    });
    assert_eq!(created["level"], "INFO", "{created:?}");
    assert_eq!(created["status"], 201, "{created:?}");
    assert!(
        created["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{created:?}"
    );
    assert_eq!(created["client"], "127.0.0.1", "{created:?}");
    let listed = find("GET /api/rooms", &|o| {
        o["method"] == "GET" && o["path"].as_str().unwrap_or("").starts_with("/api/rooms")
    });
    assert_eq!(listed["path"], "/api/rooms", "no query string: {listed:?}");
    assert!(
        !lines.iter().any(|l| l.contains("private-value")),
        "a query value was logged"
    );
    // The polls of /health are there, at debug.
    let health = find("GET /health", &|o| o["path"] == "/health");
    assert_eq!(health["level"], "DEBUG", "{health:?}");
    assert_eq!(health["status"], 200, "{health:?}");
}

#[actix_rt::test]
async fn an_invalid_log_format_stops_start_up_with_exit_code_2() {
    for value in ["xml", "jsonl"] {
        let mut server = Server::start(&[("LOG_FORMAT", value)]);
        let prefix = format!("configuration error: LOG_FORMAT={value}: must be text or json");
        check_refused(&mut server, 2, &prefix, &[])
            .await
            .unwrap_or_else(|e| panic!("LOG_FORMAT={value}: {e}"));
    }
}

#[actix_rt::test]
async fn in_json_the_last_words_of_a_failed_start_are_one_json_line() {
    // A bad setting (exit 2, before the instance id is known) and a start
    // that fails later (exit 1: the page's template is missing).
    struct Case {
        vars: &'static [(&'static str, &'static str)],
        code: i32,
        prefix: &'static str,
        instance: Value,
    }
    let cases = [
        Case {
            vars: &[("PORT", "70000"), ("INSTANCE_ID", INSTANCE)],
            code: 2,
            prefix: "configuration error: PORT=70000: must ",
            instance: Value::Null,
        },
        Case {
            vars: &[("TEMPLATES_DIR", "/nonexistent"), ("INSTANCE_ID", INSTANCE)],
            code: 1,
            prefix: "cannot start: cannot load template /nonexistent/chat.hbs",
            instance: Value::from(INSTANCE),
        },
    ];
    for Case {
        vars,
        code,
        prefix,
        instance,
    } in cases
    {
        let mut vars = vars.to_vec();
        vars.push(("LOG_FORMAT", "json"));
        let mut server = Server::start(&vars);
        let exit = wait_exit(&mut server).await;
        let lines = server.lines();
        assert_eq!(exit, Some(code), "{vars:?}: {lines:?}");
        let records = parse_all(&lines, instance);
        let errors: Vec<_> = records.iter().filter(|o| o["level"] == "ERROR").collect();
        let [error] = errors.as_slice() else {
            panic!("{vars:?}: not one ERROR line: {lines:?}");
        };
        assert!(message(error).starts_with(prefix), "{vars:?}: {error:?}");
        assert!(!lines.iter().any(|l| l.contains("panicked")), "{lines:?}");
    }
}

/// Waits (at most [`EXIT_LIMIT`]) for the server to exit; its exit code.
async fn wait_exit(server: &mut Server) -> Option<i32> {
    let status = within(EXIT_LIMIT, "exit", async {
        loop {
            if let Some(status) = server.child.try_wait().expect("try_wait") {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    status.code()
}
