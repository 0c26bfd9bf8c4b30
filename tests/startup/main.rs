//! Start-up of the real `chat-server` binary: settings that cannot work and
//! MySQL refusals that waiting cannot change stop it at once, with one line
//! saying why and a non-zero exit code (2: configuration, 1: cannot start);
//! a MySQL that is merely down is waited for; a user with only row
//! privileges on an existing schema can run it.

#[path = "../api/helpers/mod.rs"]
mod helpers;
#[path = "../common/wait.rs"]
mod wait;

#[path = "../common/mariadb.rs"]
mod mariadb;

mod json_logs;
mod memory_budget;
mod mysql_outage;
mod prometheus;
mod second_start;
mod sweep_index;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use serde_json::json;

use helpers::{mysql_base_url, read_json, TestDatabase, WsClient};
use wait::{eventually, within};

/// How long a refused start-up may take: a few seconds, on a busy machine.
const EXIT_LIMIT: Duration = Duration::from_secs(10);

/// One `chat-server` process, with only the environment given (nothing is
/// inherited, so a developer's `MYSQL_URL` cannot leak in). Its stderr is
/// collected; it is killed on drop.
struct Server {
    child: Child,
    /// When it was spawned: limits on its exit count from here.
    started: Instant,
    port: u16,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(vars: &[(&str, &str)]) -> Server {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_chat-server"));
        command
            .env_clear()
            .env("PORT", port.to_string())
            .env("WORKERS", "1")
            .env("ROOM_THREADS", "1")
            .env("RUST_LOG", "info");
        // Later values win: a test may override PORT and the rest.
        command.envs(vars.iter().copied());
        let mut child = command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chat-server: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (lines, pipe) = (stderr.clone(), child.stderr.take().expect("piped"));
        // Ends by itself at EOF, when the process exits or is killed.
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if std::env::var("STARTUP_LOGS").is_ok() {
                    eprintln!("{line}");
                }
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
        });
        Server {
            child,
            started: Instant::now(),
            port,
            stderr,
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    fn lines(&self) -> Vec<String> {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Every stderr line but `env_logger`'s INFO and DEBUG lines.
    fn notable_lines(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| !(l.starts_with('[') && (l.contains(" INFO ") || l.contains(" DEBUG "))))
            .collect()
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn wait_healthy(&mut self) {
        let url = format!("{}/health", self.base());
        let http = awc::Client::builder()
            .timeout(Duration::from_secs(2))
            .finish();
        let server = &*self;
        eventually(Duration::from_secs(30), "server healthy", || {
            let (http, url) = (&http, &url);
            async move {
                match http.get(url.as_str()).send().await {
                    Ok(res) => match read_json(res).await {
                        (200, _) => Ok(()),
                        (status, body) => Err(format!("{status} {body}")),
                    },
                    Err(e) => Err(format!("{e}; stderr: {:?}", server.lines())),
                }
            }
        })
        .await;
    }

    /// `POST /api/rooms` with `title`; the new room's id.
    async fn create_room(&self, title: &str) -> u64 {
        let http = awc::Client::builder()
            .timeout(Duration::from_secs(10))
            .finish();
        let res = http
            .post(format!("{}/api/rooms", self.base()))
            .insert_header(("content-type", "application/json"))
            .send_body(json!({ "title": title }).to_string())
            .await
            .expect("POST /api/rooms");
        let (status, room) = read_json(res).await;
        assert_eq!(status, 201, "{room}");
        room["id"].as_u64().expect("room id")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// `mysql://user:password@host:port/database` with the test server's host
/// and port.
fn mysql_url(user: &str, password: &str, database: &str) -> String {
    let base = mysql_base_url();
    let host = base.rsplit('@').next().expect("host");
    let host = host.trim_start_matches("mysql://");
    format!("mysql://{user}:{password}@{host}/{database}")
}

/// The test server's user (`root` unless `TEST_MYSQL_URL` says otherwise).
fn admin_user() -> String {
    let base = mysql_base_url();
    let rest = base.trim_start_matches("mysql://");
    match rest.rsplit_once('@') {
        Some((userinfo, _)) => userinfo.split(':').next().unwrap_or("root").to_owned(),
        None => "root".to_owned(),
    }
}

/// Runs statements as the test server's administrator.
async fn as_admin(statements: &[String]) {
    let pool = mysql_async::Pool::new(mysql_base_url().as_str());
    let mut conn = pool
        .get_conn()
        .await
        .unwrap_or_else(|e| panic!("connect as admin: {e}"));
    for sql in statements {
        conn.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    drop(conn);
    let _ = pool.disconnect().await;
}

/// The client host the test MySQL server sees for our connections (the
/// driver may switch from TCP to the server's Unix socket: `localhost`).
async fn our_host_as_seen_by_mysql() -> String {
    let pool = mysql_async::Pool::new(mysql_base_url().as_str());
    let mut conn = pool.get_conn().await.expect("connect as admin");
    let host: Option<String> = conn
        .query_first("SELECT SUBSTRING_INDEX(USER(), '@', -1)")
        .await
        .expect("USER()");
    drop(conn);
    let _ = pool.disconnect().await;
    host.expect("a host")
}

/// A MySQL user with only SELECT, INSERT, UPDATE and DELETE on one
/// database, as an account for every host our connections may come from
/// (so no anonymous `''@localhost` account takes precedence); dropped on
/// drop.
struct RowOnlyUser {
    accounts: Vec<String>,
    url: String,
}

impl RowOnlyUser {
    async fn create(database: &TestDatabase) -> RowOnlyUser {
        let mut hosts = vec![our_host_as_seen_by_mysql().await];
        for host in ["localhost", "127.0.0.1"] {
            if !hosts.iter().any(|h| h == host) {
                hosts.push(host.to_owned());
            }
        }
        let name = format!("chat_rows_{}", &database.name[database.name.len() - 12..]);
        let password = "rows-only-pw";
        let accounts: Vec<String> = hosts.iter().map(|h| format!("'{name}'@'{h}'")).collect();
        let mut statements = Vec::new();
        for account in &accounts {
            statements.push(format!("CREATE USER {account} IDENTIFIED BY '{password}'"));
            statements.push(format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON `{}`.* TO {account}",
                database.name
            ));
        }
        as_admin(&statements).await;
        RowOnlyUser {
            accounts,
            url: mysql_url(&name, password, &database.name),
        }
    }
}

impl Drop for RowOnlyUser {
    fn drop(&mut self) {
        let sql = format!("DROP USER IF EXISTS {}", self.accounts.join(", "));
        // Drop may run inside the test's runtime: use one of our own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(as_admin(&[sql])))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop MySQL users {:?}", self.accounts);
        }
    }
}

/// Starts the server with `vars` and checks it stops within `EXIT_LIMIT`
/// with `code`, having printed exactly one line besides INFO logs: the one
/// starting with `prefix` and containing every `needle`.
async fn assert_refused(vars: &[(&str, &str)], code: i32, prefix: &str, needles: &[&str]) {
    let mut server = Server::start(vars);
    if let Err(e) = check_refused(&mut server, code, prefix, needles).await {
        panic!("{vars:?}: {e}");
    }
}

/// What `assert_refused` checks, on a started server; `Err` says what went
/// wrong (with the server's stderr).
async fn check_refused(
    server: &mut Server,
    code: i32,
    prefix: &str,
    needles: &[&str],
) -> Result<(), String> {
    let exit = loop {
        if let Some(status) = server.child.try_wait().expect("try_wait") {
            // Let the reader thread see EOF.
            tokio::time::sleep(Duration::from_millis(200)).await;
            break status.code();
        }
        if server.started.elapsed() > EXIT_LIMIT {
            server.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let all = server.lines();
    let stderr = all.join("\n");
    if exit.is_none() {
        return Err(format!(
            "still running after {EXIT_LIMIT:?}; stderr:\n{stderr}"
        ));
    }
    if all.iter().any(|l| l.contains("panicked")) {
        return Err(format!("panicked:\n{stderr}"));
    }
    if exit != Some(code) {
        return Err(format!("exit code {exit:?}, not {code}; stderr:\n{stderr}"));
    }
    let notable = server.notable_lines();
    let [line] = notable.as_slice() else {
        return Err(format!("not one line:\n{stderr}"));
    };
    if !line.starts_with(prefix) {
        return Err(format!("{line:?} does not start with {prefix:?}"));
    }
    match needles.iter().find(|n| !line.contains(*n)) {
        Some(needle) => Err(format!("{needle:?} not in {line:?}")),
        None => Ok(()),
    }
}

#[actix_rt::test]
async fn invalid_settings_stop_start_up_with_one_line_naming_the_variable() {
    // Nothing is connected to: the URLs are refused before that.
    let cases: &[(&str, &str)] = &[
        ("HEARTBEAT_INTERVAL_SECS", "0"),
        ("EMPTY_ROOM_GRACE_SECS", "-1"),
        ("WORKERS", "0"),
        ("ROOM_THREADS", "0"),
        ("WS_RATE_PER_SEC", "NaN"),
        ("ROOM_CREATE_BURST", "inf"),
        ("PORT", "70000"),
        ("METRICS_ADDR", "localhost:9100"),
        ("STORE_TIMEOUT_MS", "0"),
        ("MESSAGES_PAGE_MAX", "0"),
        ("TRUST_FORWARDED_FOR", "maybe"),
        ("MYSQL_URL", "redis://127.0.0.1:6379/chat"),
        ("MYSQL_URL", "mysql://root@127.0.0.1:3306"),
        (
            "MYSQL_URL",
            "mysql://root@127.0.0.1:3306/chat?pool_min=20&pool_max=5",
        ),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("REDIS_SENTINELS", "127.0.0.1:0"),
    ];
    // All at once (each should stop at once), then each checked; every
    // case that fails is reported.
    let mut servers: Vec<Server> = cases
        .iter()
        .map(|&(name, value)| Server::start(&[(name, value)]))
        .collect();
    let mut failures = Vec::new();
    for (server, &(name, value)) in servers.iter_mut().zip(cases) {
        let prefix = format!("configuration error: {name}={value}: must ");
        if let Err(e) = check_refused(server, 2, &prefix, &[]).await {
            failures.push(format!("{name}={value}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[actix_rt::test]
async fn redis_url_and_sentinels_together_stop_start_up() {
    let mut server = Server::start(&[
        ("MYSQL_URL", "mysql://root@127.0.0.1:3306/chat"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("REDIS_SENTINELS", "127.0.0.1:26379"),
    ]);
    let prefix = "configuration error: REDIS_SENTINELS=127.0.0.1:26379: must be unset when \
                  REDIS_URL is set";
    check_refused(&mut server, 2, prefix, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[actix_rt::test]
async fn a_wrong_mysql_password_stops_start_up_with_its_cause() {
    let password = "certainly-not-the-password";
    let url = mysql_url(&admin_user(), password, "chat_wrong_password");
    let mut server = Server::start(&[("MYSQL_URL", url.as_str())]);
    let checked = check_refused(
        &mut server,
        1,
        "cannot start: cannot open the store: ",
        &["ERROR 1045", "Access denied"],
    )
    .await;
    checked.unwrap_or_else(|e| panic!("{e}"));
    let all = server.lines().join("\n");
    assert!(!all.contains(password), "the password was printed: {all}");
}

#[actix_rt::test]
async fn a_mysql_that_is_down_is_waited_for() {
    // A loopback port where nothing listens: connection refused.
    let url = format!("mysql://root@127.0.0.1:{}/chat_down", free_port());
    let mut server = Server::start(&[("MYSQL_URL", url.as_str())]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        server.running(),
        "gave up on a MySQL that is only down: {:?}",
        server.lines()
    );
    let lines = server.lines();
    assert!(
        lines.iter().any(|l| l.contains("MySQL not ready")),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("panicked")), "{lines:?}");
    server.kill();
}

#[actix_rt::test]
async fn a_user_with_only_row_privileges_runs_the_server_on_an_existing_schema() {
    let database = TestDatabase::new();
    // A first start as the administrator creates the database and schema.
    {
        let mut first = Server::start(&[("MYSQL_URL", database.url.as_str())]);
        first.wait_healthy().await;
    }
    let user = RowOnlyUser::create(&database).await;
    let mut server = Server::start(&[("MYSQL_URL", user.url.as_str())]);
    server.wait_healthy().await;

    let room_id = server.create_room("least privilege").await;
    within(Duration::from_secs(20), "join and chat", async {
        let mut ws = WsClient::connect(server.port).await;
        ws.join(room_id, "alice").await;
        let echo = ws.chat("hello with row privileges only").await;
        assert_eq!(
            echo["message"]["content"], "hello with row privileges only",
            "{echo}"
        );
    })
    .await;
    let stored = database
        .query_u64(&format!(
            "SELECT COUNT(*) FROM chatMsg WHERE room_id = {room_id}"
        ))
        .await;
    assert_eq!(stored, 1);

    let lines = server.lines();
    assert!(server.running(), "{lines:?}");
    assert_eq!(server.notable_lines(), Vec::<String>::new(), "{lines:?}");
    server.kill();
    drop(user);
}

#[actix_rt::test]
async fn a_missing_schema_the_user_cannot_create_says_what_to_run() {
    let database = TestDatabase::new();
    as_admin(&[format!("CREATE DATABASE `{}`", database.name)]).await;
    let user = RowOnlyUser::create(&database).await;
    assert_refused(
        &[("MYSQL_URL", user.url.as_str())],
        1,
        "cannot start: ",
        &[
            &format!(
                "database `{}` lacks the tables chatRoom, chatMember, chatMsg",
                database.name
            ),
            "sql/schema.sql",
            "ERROR 1142",
        ],
    )
    .await;
    drop(user);
}

#[actix_rt::test]
async fn the_log_names_the_file_limits_and_the_connection_caps() {
    // Started with a low soft limit (inherited from this process), the
    // server raises it to the hard one.
    let (soft_here, hard_here) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("limits");
    let low = 1000.min(hard_here);
    rlimit::setrlimit(rlimit::Resource::NOFILE, low, hard_here).expect("lower the soft limit");
    let mut server = Server::start(&[("MAX_CONNECTIONS_PER_ADDRESS", "7")]);
    rlimit::setrlimit(rlimit::Resource::NOFILE, soft_here, hard_here).expect("restore it");
    server.wait_healthy().await;
    let lines = server.lines();
    let line = lines
        .iter()
        .find(|l| l.contains("open-file limit: soft "))
        .unwrap_or_else(|| panic!("no open-file limit line: {lines:?}"));
    let number_after = |label: &str| -> u64 {
        let rest = &line[line
            .find(label)
            .unwrap_or_else(|| panic!("{label}: {line}"))
            + label.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number after {label}: {line}"))
    };
    let (soft, hard) = (number_after("soft "), number_after("hard "));
    assert_eq!(number_after("was "), low, "{line}");
    assert_eq!(hard, hard_here, "{line}");
    assert_eq!(
        soft, hard,
        "the soft limit is raised to the hard one: {line}"
    );
    assert_eq!(
        number_after("MAX_CONNECTIONS "),
        soft.saturating_sub(256).max(1),
        "{line}"
    );
    assert_eq!(number_after("MAX_CONNECTIONS_PER_ADDRESS "), 7, "{line}");
    server.kill();
    let mut set = Server::start(&[("MAX_CONNECTIONS", "100")]);
    set.wait_healthy().await;
    let lines = set.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("MAX_CONNECTIONS 100 (set)")),
        "{lines:?}"
    );
}
