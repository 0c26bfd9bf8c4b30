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
    assert_error_envelope, nicknames, spawn_app_with, StoreMode, TestDatabase, WsClient,
};
use crate::procs::{free_port, redis_url};
use crate::wait::eventually;

pub(crate) const INSTANCES: u16 = 3;

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

/// A base port with `INSTANCES` free ports after it. Looked for below
/// Linux's ephemeral range (32768 and up), where outgoing connections take
/// no port: a benchmark or a busy test holding tens of thousands of
/// loopback connections fills that range, and then a run of free ports
/// next to one the system hands out is rare. Each candidate is checked by
/// binding every port of the run; calls in one process (tests run side by
/// side) and in different processes start at different places.
fn free_port_run() -> u16 {
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let start = (std::process::id() % 1000) * 20 + call * 100;
    for i in 0..1000 {
        let base = u16::try_from(12_000 + (start + i * 7) % 20_000).unwrap_or(12_000);
        if (0..INSTANCES).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no run of {INSTANCES} free ports");
}

/// pm2 with its own home, so the test never touches a user's pm2.
pub(crate) struct Pm2 {
    pub(crate) home: PathBuf,
    envs: Vec<(String, String)>,
}

impl Pm2 {
    pub(crate) fn run(&self, args: &[&str]) -> String {
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

pub(crate) async fn get(url: &str) -> (u16, Option<String>, String) {
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
pub(crate) struct Ops {
    // Held to be dropped (stopped) first: nginx, then pm2.
    _nginx: Nginx,
    pub(crate) pm2: Pm2,
    pub(crate) base: u16,
    pub(crate) front: String,
    /// The pm2 app prefix: instance `i` is `<app>-<i>`.
    pub(crate) app: String,
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

pub(crate) async fn start_ops(database: &TestDatabase, extra: &[(&str, &str)]) -> Ops {
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
        app,
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
async fn nginx_keeps_the_instances_metrics_to_the_monitoring_host() {
    require("nginx");
    let app = spawn_app_with(StoreMode::Memory, |_| {}).await;
    // The instance serves /metrics on its own port, to a scraper there.
    assert!(app
        .metrics()
        .await
        .contains("# TYPE chat_chats_stored_total counter"));
    let listen = free_port();
    let tmp = std::env::temp_dir().join(format!("chat-nginx-metrics-{listen}"));
    let _nginx = Nginx::start(&tmp, listen, [app.port; INSTANCES as usize]);
    eventually(Duration::from_secs(10), "nginx answering", || async move {
        get(&format!("http://127.0.0.1:{listen}/health")).await.0 == 200
    })
    .await;
    // Through nginx it is an unknown path, however it is spelled (nginx
    // decodes and merges slashes before it picks a location).
    for path in [
        "/metrics",
        "/metrics?format=text",
        "//metrics",
        "/%6Detrics",
    ] {
        let answer = raw(listen, &request("GET", path, listen, 0)).await;
        assert_json_error(&answer, 404, "not_found");
    }
    let (head, _) = raw(listen, &request("HEAD", "/metrics", listen, 0)).await;
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    // The instance behind it still answers the rest through nginx.
    let (head, _) = raw(listen, &request("GET", "/api/rooms", listen, 0)).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
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
