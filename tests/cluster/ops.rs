//! The operator's setup, run for real: the cluster ecosystem file under
//! pm2, nginx in front (the repository's site config, rendered with test
//! ports), chat through nginx with clients on different instances, and
//! `pm2 restart` of one instance. `scripts/test.sh` installs pm2 (npm) and
//! nginx (apt) when missing; without them this test fails, it never skips.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    assert_error_envelope, nicknames, spawn_app_with, Incoming, StoreMode, TestDatabase, WsClient,
};
use crate::procs::{free_port, redis_url};
use crate::wait::eventually;

const INSTANCES: u16 = 3;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is not installed: run `bash scripts/test.sh`, which installs it"
    );
}

/// A base port with `INSTANCES` free ports after it.
fn free_port_run() -> u16 {
    for _ in 0..200 {
        let base = free_port();
        if base < 65000
            && (1..INSTANCES).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
    panic!("no run of {INSTANCES} free ports");
}

/// pm2 with its own home, so the test never touches a user's pm2.
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
            .current_dir(repo())
            .output()
            .unwrap_or_else(|e| panic!("pm2 {args:?}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "pm2 {args:?} failed:\n{text}");
        text
    }
}

impl Drop for Pm2 {
    fn drop(&mut self) {
        let _ = Command::new("pm2")
            .arg("kill")
            .env("PM2_HOME", &self.home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // CHAT_OPS_KEEP=1 keeps pm2's home with the instances' logs.
        if std::env::var_os("CHAT_OPS_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.home);
        } else {
            eprintln!("pm2 home kept: {}", self.home.display());
        }
    }
}

/// nginx running the repository's site config in the foreground.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Renders the site with nginx on `listen` and the site's three
    /// upstream servers at `upstreams` (the same port may repeat).
    fn start(dir: &Path, listen: u16, upstreams: [u16; INSTANCES as usize]) -> Nginx {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let site = std::fs::read_to_string(repo().join("nginx/chat.conf")).unwrap();
        let mut site = site
            .replace(
                "listen 127.0.0.1:8080;",
                &format!("listen 127.0.0.1:{listen};"),
            )
            .replace(
                "/opt/chat-server/static/",
                &format!("{}/", repo().join("static").display()),
            );
        for (i, port) in (0..).zip(upstreams) {
            site = site.replace(
                &format!("server 127.0.0.1:{};", 3001 + i),
                &format!("server 127.0.0.1:{port};"),
            );
            site = site.replace(
                &format!("server 127.0.0.1:{} ", 3001 + i),
                &format!("server 127.0.0.1:{port} "),
            );
        }
        std::fs::write(dir.join("chat.conf"), site).unwrap();
        let d = dir.display();
        let main = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  include /etc/nginx/mime.types;\n  access_log off;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               include {d}/chat.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        // Workers run as an unprivileged user when started by root.
        let _ = Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(dir)
            .status();
        let check = Command::new("nginx")
            .arg("-t")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "nginx -t rejected the site config:\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nginx: {e}"));
        Nginx {
            child,
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, so the master stops its workers: after a SIGKILL of the
        // master the workers lived on, still listening.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn get(url: &str) -> (u16, Option<String>, String) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(5))
        .finish();
    match client.get(url).send().await {
        Ok(mut res) => {
            let instance = res
                .headers()
                .get("x-chat-instance")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = res.body().limit(1 << 20).await.unwrap_or_default();
            (
                res.status().as_u16(),
                instance,
                String::from_utf8_lossy(&body).into_owned(),
            )
        }
        Err(_) => (0, None, String::new()),
    }
}

/// The cluster ecosystem file under its own pm2 (`INSTANCES` instances on
/// `base`, `base + 1`, ...) and nginx in front on `front`.
struct Ops {
    // Held to be dropped (stopped) first: nginx, then pm2.
    _nginx: Nginx,
    pm2: Pm2,
    base: u16,
    front: String,
    /// Dropped last: the directory pm2's and nginx's lie in.
    _tmp: TmpDir,
}

/// Removes its directory on drop (unless `CHAT_OPS_KEEP` is set).
struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        if std::env::var_os("CHAT_OPS_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn start_ops(database: &TestDatabase, extra: &[(&str, &str)]) -> Ops {
    require("pm2");
    require("nginx");
    let base = free_port_run();
    let listen = free_port();
    let app = format!("chatops{}", std::process::id());
    let tmp = std::env::temp_dir().join(format!("{app}-{base}"));
    let mut envs: Vec<(String, String)> = vec![
        ("CHAT_BIN".into(), env!("CARGO_BIN_EXE_chat-server").into()),
        ("CHAT_INSTANCES".into(), INSTANCES.to_string()),
        ("CHAT_BASE_PORT".into(), base.to_string()),
        ("CHAT_APP_NAME".into(), app.clone()),
        ("MYSQL_URL".into(), database.url.clone()),
        ("REDIS_URL".into(), redis_url()),
        ("REDIS_PREFIX".into(), format!("chattest-{}", database.name)),
        ("WORKERS".into(), "1".into()),
        ("ROOM_THREADS".into(), "1".into()),
        ("LIVENESS_TTL_SECS".into(), "3".into()),
        ("LIVENESS_REFRESH_MS".into(), "500".into()),
    ];
    envs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let pm2 = Pm2 {
        home: tmp.join("pm2"),
        envs,
    };
    pm2.run(&["start", "pm2/ecosystem.cluster.config.js"]);
    for i in 0..INSTANCES {
        let url = format!("http://127.0.0.1:{}/health", base + i);
        eventually(
            Duration::from_secs(30),
            &format!("instance {i} healthy"),
            || {
                let url = url.clone();
                async move { get(&url).await.0 == 200 }
            },
        )
        .await;
    }
    let nginx = Nginx::start(&tmp.join("nginx"), listen, [base, base + 1, base + 2]);
    let front = format!("127.0.0.1:{listen}");
    eventually(Duration::from_secs(10), "nginx answering", || {
        let url = format!("http://{front}/health");
        async move { get(&url).await.0 == 200 }
    })
    .await;
    Ops {
        _nginx: nginx,
        pm2,
        base,
        front,
        _tmp: TmpDir(tmp),
    }
}

#[actix_rt::test]
async fn three_instances_under_pm2_behind_nginx_act_as_one_and_survive_a_restart() {
    let database = TestDatabase::new();
    let ops = start_ops(&database, &[]).await;
    let (pm2, front, base) = (&ops.pm2, ops.front.clone(), ops.base);

    // nginx serves the page's files itself, and proxies the page.
    let (status, instance, body) = get(&format!("http://{front}/static/chat.js")).await;
    assert_eq!(status, 200);
    assert!(
        instance.is_none(),
        "static files must come from nginx, not an instance"
    );
    assert!(!body.is_empty());
    let (status, _, body) = get(&format!("http://{front}/chat")).await;
    assert_eq!(status, 200);
    assert!(body.contains("<html") || body.contains("<!DOCTYPE") || body.contains("<!doctype"));

    // Sockets through nginx land on different instances (least_conn).
    let mut clients: Vec<(WsClient, String)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..9 {
        let (c, instance) = WsClient::connect_url(&format!("ws://{front}/ws")).await;
        let instance = instance.expect("upgrade response names its instance");
        if seen.insert(instance.clone()) {
            clients.push((c, instance));
        }
        if seen.len() == INSTANCES as usize {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        INSTANCES as usize,
        "sockets did not spread: {seen:?}"
    );

    let joined = clients[0].0.create("ops", "n0").await;
    let room = joined["room"]["id"].as_u64().unwrap();
    for (i, (c, _)) in clients.iter_mut().enumerate().skip(1) {
        c.join(room, &format!("n{i}")).await;
    }
    let sent = clients[2].0.chat("through nginx").await;
    for (c, _) in clients.iter_mut().take(2) {
        assert_eq!(c.recv_type("message").await["message"], sent["message"]);
    }
    let (_, _, members) = get(&format!("http://{front}/api/rooms/{room}/members")).await;
    let members: serde_json::Value = serde_json::from_str(&members).unwrap();
    assert_eq!(nicknames(&members), ["n0", "n1", "n2"]);

    // Restart the instance that holds n1: its socket is closed cleanly
    // (1001), the others see n1 leave, and n1 comes back through nginx.
    let victim = clients[1].1.clone();
    pm2.run(&["restart", &victim]);
    assert_eq!(clients[1].0.close_code().await, Some(1001));
    assert_eq!(clients[0].0.recv_type("memberLeft").await["nickname"], "n1");
    assert_eq!(clients[2].0.recv_type("memberLeft").await["nickname"], "n1");
    let mut back = None;
    for _ in 0..20 {
        let (mut c, _) = WsClient::connect_url(&format!("ws://{front}/ws")).await;
        c.send(serde_json::json!({"type":"join","roomId":room,"nickname":"n1","ref":"r"}))
            .await;
        let reply = c.reply_or_error("r").await;
        if reply["type"] == "joined" {
            back = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut back = back.expect("n1 could rejoin through nginx after the restart");
    let again = clients[0].0.chat("welcome back").await;
    assert_eq!(back.recv_type("message").await["message"], again["message"]);
    assert_eq!(
        clients[2].0.recv_type("message").await["message"],
        again["message"]
    );
    let restarted = format!("http://127.0.0.1:{}/health", base + 1);
    assert_eq!(
        get(&restarted).await.0,
        200,
        "the restarted instance serves again"
    );
    drop(ops);
}

/// Sends a raw HTTP/1.1 request to nginx on `port` and returns the response
/// head (lower-cased header names) and body, once the body announced by
/// `Content-Length` (or, for a `101`, the head) is in, or nginx closes.
async fn raw(port: u16, request: &[u8]) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    let mut input = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
        let n = match read {
            Ok(n) => n.unwrap_or(0),
            Err(_) => panic!(
                "no complete answer within 10 s; got:\n{}",
                String::from_utf8_lossy(&input)
            ),
        };
        input.extend_from_slice(&chunk[..n]);
        if n == 0 || complete(&input) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&input).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let head = head
        .lines()
        .enumerate()
        .map(|(i, line)| match line.split_once(':') {
            Some((name, value)) if i > 0 => format!("{}:{value}", name.to_ascii_lowercase()),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    (head, body.to_owned())
}

/// Whether `input` holds a whole response: a `101` head, or a head and
/// the `Content-Length` bytes it announces.
fn complete(input: &[u8]) -> bool {
    let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&input[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok());
    head.starts_with("http/1.1 101") || length.is_some_and(|n| input.len() >= end + 4 + n)
}

fn request(method: &str, path: &str, port: u16, body: usize) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {body}\r\n\r\n"
    )
    .into_bytes();
    out.resize(out.len() + body, b'x');
    out
}

/// Asserts `head`/`body` is a `status` answer with the JSON envelope `code`.
fn assert_json_error((head, body): &(String, String), status: u16, code: &str) {
    assert!(
        head.starts_with(&format!("HTTP/1.1 {status} ")),
        "{head}\n\n{body}"
    );
    assert!(
        head.contains("\r\ncontent-type: application/json"),
        "{head}\n\n{body}"
    );
    let json: Value = serde_json::from_str(body)
        .unwrap_or_else(|_| panic!("not the JSON envelope:\n{head}\n\n{body}"));
    assert_error_envelope(&json, code);
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(str::trim)
}

#[actix_rt::test]
async fn nginx_answers_its_own_errors_in_the_json_envelope() {
    require("nginx");
    // The site's three upstream ports, with nothing listening on them.
    let base = free_port_run();
    let listen = free_port();
    let tmp = std::env::temp_dir().join(format!("chat-nginx-errors-{listen}"));
    let _nginx = Nginx::start(&tmp, listen, [base, base + 1, base + 2]);
    eventually(Duration::from_secs(10), "nginx answering", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", listen))
            .await
            .is_ok()
    })
    .await;

    // No instance answers: 502, not nginx's HTML page.
    for path in ["/health", "/api/rooms", "/chat"] {
        let answer = raw(listen, &request("GET", path, listen, 0)).await;
        assert_json_error(&answer, 502, "unavailable");
    }
    // A body over MAX_BODY_BYTES never reaches an instance; one at the
    // limit does (and finds none).
    let answer = raw(
        listen,
        &request("POST", "/api/rooms", listen, 64 * 1024 + 1),
    )
    .await;
    assert_json_error(&answer, 413, "payload_too_large");
    let answer = raw(listen, &request("POST", "/api/rooms", listen, 64 * 1024)).await;
    assert_json_error(&answer, 502, "unavailable");

    // The static files nginx serves itself: errors in the envelope too,
    // and the instances' security headers on the files.
    for path in ["/static/missing.js", "/static/"] {
        let answer = raw(listen, &request("GET", path, listen, 0)).await;
        assert_json_error(&answer, 404, "not_found");
    }
    let answer = raw(listen, &request("POST", "/static/chat.js", listen, 2)).await;
    assert_json_error(&answer, 405, "method_not_allowed");
    assert_eq!(
        header(&answer.0, "allow"),
        Some("GET, HEAD"),
        "{}",
        answer.0
    );
    let (head, body) = raw(listen, &request("GET", "/static/chat.js", listen, 0)).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(!body.is_empty());
    for (name, value) in chat_server::SECURITY_HEADERS {
        assert_eq!(
            header(&head, &name.to_ascii_lowercase()),
            Some(value),
            "nginx's {name} differs from the instances'"
        );
    }
}

#[actix_rt::test]
async fn through_nginx_the_pages_own_origin_may_open_a_socket_and_others_may_not() {
    require("nginx");
    let app = spawn_app_with(StoreMode::Memory, |_| {}).await;
    let listen = free_port();
    let tmp = std::env::temp_dir().join(format!("chat-nginx-origin-{listen}"));
    let _nginx = Nginx::start(&tmp, listen, [app.port; INSTANCES as usize]);
    eventually(Duration::from_secs(10), "nginx answering", || async move {
        get(&format!("http://127.0.0.1:{listen}/health")).await.0 == 200
    })
    .await;
    let handshake = |origin: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{listen}\r\nOrigin: {origin}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    // The page nginx serves is http://127.0.0.1:<listen>: its socket opens.
    let (head, _) = raw(
        listen,
        handshake(&format!("http://127.0.0.1:{listen}")).as_bytes(),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // Another site's page gets the instance's 403, passed through.
    let answer = raw(listen, handshake("http://evil.example").as_bytes()).await;
    assert_json_error(&answer, 403, "forbidden_origin");
    // The page itself comes with its security policy through nginx.
    let (head, _) = raw(listen, &request("GET", "/chat", listen, 0)).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        header(&head, "content-security-policy").is_some_and(|v| v.contains("connect-src 'self'")),
        "{head}"
    );
}

/// One scripted client of the rolling-restart test: it chats, and when its
/// socket closes it reconnects through nginx, rejoins under its nickname
/// and fetches what it missed (`GET .../messages?after=<last id>`), as the
/// page does.
struct Rejoining {
    nick: String,
    ws: Option<WsClient>,
    /// Every message id it has, in the order it got them.
    log: Vec<u64>,
    /// Ids received live on the current socket.
    live: Vec<u64>,
    /// Chats answered with `message`: stored.
    acked: Vec<u64>,
    /// Close codes read from the socket.
    closes: Vec<Option<u16>>,
    /// Sockets found closed by a failed send instead.
    send_failures: usize,
    problems: Vec<String>,
    sent: usize,
}

impl Rejoining {
    fn last(&self) -> u64 {
        self.log.last().copied().unwrap_or(0)
    }

    /// Takes ids fetched from the store (or `joined.history`): the ones
    /// after the last it has.
    fn catch_up(&mut self, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            if id > self.last() {
                self.log.push(id);
            }
        }
    }

    /// A message frame on the live socket: in order and without a gap or a
    /// repeat on this socket; ids it already fetched are skipped.
    fn on_live(&mut self, id: u64) {
        if self.live.contains(&id) {
            self.problems
                .push(format!("{}: id {id} twice on one socket", self.nick));
            return;
        }
        self.live.push(id);
        if id <= self.last() {
            return;
        }
        if id != self.last() + 1 {
            self.problems.push(format!(
                "{}: gap on a live socket: {} then {id}",
                self.nick,
                self.last()
            ));
        }
        self.log.push(id);
    }

    /// Connects through nginx, joins and catches up, retrying for a while
    /// (an instance may be stopping, nginx may still pick it).
    async fn rejoin(&mut self, front: &str, room: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut why = String::new();
        while tokio::time::Instant::now() < deadline {
            match WsClient::try_connect_url(&format!("ws://{front}/ws")).await {
                Err(e) => why = e,
                Ok((mut ws, instance)) => {
                    let join = serde_json::json!({
                        "type": "join", "roomId": room, "nickname": self.nick, "ref": "j"
                    });
                    if !ws.try_send(join).await {
                        why = "send failed".into();
                    } else {
                        match joined_reply(&mut ws).await {
                            Ok(joined) => {
                                let history = joined["history"]
                                    .as_array()
                                    .map(|h| h.iter().filter_map(|m| m["id"].as_u64()).collect())
                                    .unwrap_or_else(Vec::new);
                                self.catch_up(history);
                                let missed = fetch_after(front, room, self.last()).await;
                                self.catch_up(missed);
                                self.live.clear();
                                self.ws = Some(ws);
                                return;
                            }
                            Err(e) => why = format!("{instance:?}: {e}"),
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "{} could not rejoin through nginx within 30 s; last: {why}",
            self.nick
        );
    }

    /// Handles what arrived, without waiting.
    async fn drain(&mut self) {
        let Some(mut ws) = self.ws.take() else {
            return;
        };
        loop {
            match ws.next_within(Duration::from_millis(1)).await {
                None => {
                    self.ws = Some(ws);
                    return;
                }
                Some(Incoming::Json(v)) => {
                    if v["type"] == "message" {
                        let id = v["message"]["id"].as_u64().unwrap_or(0);
                        if v["ref"].is_string() {
                            self.acked.push(id);
                        }
                        self.on_live(id);
                    }
                }
                Some(Incoming::Closed(code)) => {
                    self.closes.push(code);
                    return;
                }
            }
        }
    }

    async fn chat(&mut self) {
        let Some(ws) = self.ws.as_mut() else { return };
        self.sent += 1;
        let chat = serde_json::json!({
            "type": "chat",
            "content": format!("{} {}", self.nick, self.sent),
            "ref": format!("m{}", self.sent)
        });
        if !ws.try_send(chat).await {
            // The server closed between the drain and this send: the close
            // frame cannot be read from a socket whose write failed, so
            // this close has no code to check.
            self.ws = None;
            self.send_failures += 1;
        }
    }
}

/// The `joined` answer to ref `j`, or what came instead.
async fn joined_reply(ws: &mut WsClient) -> Result<Value, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_within(left).await {
            None => return Err("no answer within 5 s".into()),
            Some(Incoming::Json(v)) if v["ref"] == "j" => {
                return if v["type"] == "joined" {
                    Ok(v)
                } else {
                    Err(v.to_string())
                };
            }
            Some(Incoming::Json(_)) => {}
            Some(Incoming::Closed(code)) => return Err(format!("closed {code:?}")),
        }
    }
}

/// Every stored message id of `room` after `after`, through nginx, paged.
async fn fetch_after(front: &str, room: u64, mut after: u64) -> Vec<u64> {
    let mut ids = Vec::new();
    for _ in 0..100 {
        let url = format!("http://{front}/api/rooms/{room}/messages?after={after}&limit=500");
        let (status, _, body) = get(&url).await;
        assert_eq!(status, 200, "{url}: {body}");
        let page: Value = serde_json::from_str(&body).expect("a JSON page");
        let page: Vec<u64> = page
            .as_array()
            .expect("an array")
            .iter()
            .filter_map(|m| m["id"].as_u64())
            .collect();
        match page.last() {
            Some(&last) => {
                after = last;
                ids.extend(page);
            }
            None => return ids,
        }
    }
    panic!("more than 100 pages");
}

/// Whether `port` answers `/health` with 200 (a blocking check, for the
/// restarting thread).
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut answer = String::new();
    s.write_all(request.as_bytes()).is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

/// Rolling restart (issue 10): `pm2 restart` of each instance in turn,
/// each once the one before serves again, while nine scripted clients chat
/// through nginx (one chat each every 300 ms). A client whose socket closes
/// reconnects through nginx, rejoins under its nickname and fetches what
/// it missed. At the end every client must hold every stored message once,
/// in id order, with no gap or repeat on any live socket, every close must
/// carry 1001 or 1012, and every acknowledged chat must be stored.
///
/// Fails today (4 of 4 runs) for shutdown defects outside start-up
/// (docs/RELIABILITY.md, "Rolling restart"): the clients that reconnect
/// gather on the instances that are up, so the last instance restarted
/// often holds every member of the room, and its clean shutdown deletes the
/// room it leaves empty, with its history (the rejoin gets
/// `room_not_found`); some sockets end without a close frame; a join
/// accepted during a shutdown leaves a member row behind (the next start
/// removes it). In the runs that reached the final check no message was
/// missing or repeated.
#[actix_rt::test]
#[ignore = "needs the shutdown fix from h5 (a clean shutdown deletes the room its members leave empty; sockets closed without a close frame)"]
async fn a_rolling_restart_behind_nginx_loses_no_message_and_every_client_rejoins() {
    let database = TestDatabase::new();
    let ops = start_ops(&database, &[]).await;
    let front = ops.front.clone();

    let mut first = None;
    let mut clients = Vec::new();
    for i in 0..9 {
        let mut c = Rejoining {
            nick: format!("r{i}"),
            ws: None,
            log: Vec::new(),
            live: Vec::new(),
            acked: Vec::new(),
            closes: Vec::new(),
            send_failures: 0,
            problems: Vec::new(),
            sent: 0,
        };
        let room = match first {
            Some(room) => room,
            None => {
                let (mut ws, _) = WsClient::connect_url(&format!("ws://{front}/ws")).await;
                let joined = ws.create("rolling", "r0").await;
                let room = joined["room"]["id"].as_u64().expect("room id");
                c.ws = Some(ws);
                first = Some(room);
                clients.push(c);
                continue;
            }
        };
        c.rejoin(&front, room).await;
        clients.push(c);
    }
    let room = first.expect("a room");

    // Restart the three instances one after another, each once the one
    // before serves again, while everyone chats.
    let names: Vec<String> = (0..INSTANCES)
        .map(|i| format!("chatops{}-{i}", std::process::id()))
        .collect();
    let (home, base) = (ops.pm2.home.clone(), ops.base);
    let restarts = std::thread::spawn(move || {
        for (i, name) in (0..).zip(&names) {
            std::thread::sleep(Duration::from_millis(1500));
            let out = Command::new("pm2")
                .args(["restart", name])
                .env("PM2_HOME", &home)
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("pm2 restart {name}: {out:?}"));
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !healthy(base + i) {
                if std::time::Instant::now() > deadline {
                    return Err(format!("{name} not healthy 30 s after its restart"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok::<(), String>(())
    });
    let started = tokio::time::Instant::now();
    let mut quiet_since = None;
    let mut next_chat = tokio::time::Instant::now();
    loop {
        let done = restarts.is_finished();
        if done && quiet_since.is_none() {
            quiet_since = Some(tokio::time::Instant::now());
        }
        // Two seconds of chat after the last restart, then silence.
        let chatting = quiet_since.is_none_or(|t| t.elapsed() < Duration::from_secs(2));
        if quiet_since.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the rolling restart took over 120 s"
        );
        for c in clients.iter_mut() {
            if c.ws.is_none() {
                c.rejoin(&front, room).await;
            }
        }
        for c in clients.iter_mut() {
            c.drain().await;
        }
        if chatting && tokio::time::Instant::now() >= next_chat {
            for c in clients.iter_mut() {
                c.chat().await;
            }
            next_chat += Duration::from_millis(300);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    restarts
        .join()
        .expect("the restarting thread")
        .unwrap_or_else(|e| panic!("{e}"));

    let stored = fetch_after(&front, room, 0).await;
    assert!(stored.len() > 50, "too little chat: {}", stored.len());
    let mut problems = Vec::new();
    for c in &clients {
        problems.extend(c.problems.iter().cloned());
        if c.closes.is_empty() && c.send_failures == 0 {
            // Its instance was restarted too: every client was on one.
            problems.push(format!("{}: never closed", c.nick));
        }
        for code in &c.closes {
            if !matches!(code, Some(1001) | Some(1012)) {
                problems.push(format!("{}: closed with {code:?}", c.nick));
            }
        }
        if c.log != stored {
            let missing: Vec<_> = stored.iter().filter(|id| !c.log.contains(id)).collect();
            problems.push(format!(
                "{}: ends with {} messages, the store has {}; missing {missing:?}",
                c.nick,
                c.log.len(),
                stored.len()
            ));
        }
        for id in &c.acked {
            if !stored.contains(id) {
                problems.push(format!("{}: acknowledged id {id} is not stored", c.nick));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    drop(ops);
}
