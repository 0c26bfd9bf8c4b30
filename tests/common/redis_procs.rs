//! Private Redis processes for fault tests: a `redis-server` (optionally
//! with a password or an ACL user, optionally a replica) and
//! `redis-server --sentinel` processes, each on a free loopback port with a
//! temp directory of its own. Dropping a handle SIGKILLs its process and
//! removes its directory, so nothing outlives a failing test. The machine's
//! shared Redis (6379) is never touched.
//!
//! Include it with `#[path = "../common/redis_procs.rs"] mod redis_procs;`.
#![allow(dead_code)] // each test crate uses a different part

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use deadpool_redis::redis;

/// How long a process may take to answer after its start.
const READY: Duration = Duration::from_secs(10);

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A fresh directory under the system temp dir, unique to this process.
fn temp_dir(kind: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("chat-{kind}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {dir:?}: {e}"));
    dir
}

/// Who may talk to a server: nobody special, a `requirepass` password, or
/// an ACL user (the default user then refuses every command).
#[derive(Debug, Clone, Default)]
pub enum Auth {
    #[default]
    Open,
    Password(String),
    User {
        name: String,
        password: String,
    },
}

impl Auth {
    /// `user:password@` or `:password@` for a `redis://` URL.
    pub fn url_part(&self) -> String {
        match self {
            Auth::Open => String::new(),
            Auth::Password(p) => format!(":{p}@"),
            Auth::User { name, password } => format!("{name}:{password}@"),
        }
    }

    fn server_args(&self) -> Vec<String> {
        match self {
            Auth::Open => vec![],
            Auth::Password(p) => vec!["--requirepass".into(), p.clone()],
            // One directive per `--user`, its words as separate arguments.
            Auth::User { name, password } => [
                "--user",
                name,
                "on",
                &format!(">{password}"),
                "~*",
                "&*",
                "+@all",
                "--user",
                "default",
                "off",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        }
    }
}

/// One `redis-server` (or `redis-server --sentinel`) child process.
pub struct RedisProc {
    pub port: u16,
    pub auth: Auth,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisProc {
    /// A Redis master without persistence.
    pub fn server(auth: Auth) -> RedisProc {
        Self::start_server(auth, &[])
    }

    /// A replica of `master` (which it authenticates to with its `auth`).
    pub fn replica_of(master: &RedisProc) -> RedisProc {
        let mut extra = vec![
            "--replicaof".to_string(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ];
        match &master.auth {
            Auth::Open => {}
            Auth::Password(p) => extra.extend(["--masterauth".into(), p.clone()]),
            Auth::User { name, password } => extra.extend([
                "--masteruser".into(),
                name.clone(),
                "--masterauth".into(),
                password.clone(),
            ]),
        }
        Self::start_server(master.auth.clone(), &extra)
    }

    fn start_server(auth: Auth, extra: &[String]) -> RedisProc {
        let dir = temp_dir("redis");
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--dir".into(), dir.display().to_string()]);
        args.extend(auth.server_args());
        args.extend(extra.iter().cloned());
        let mut p = RedisProc {
            port: free_port(),
            auth,
            args,
            dir,
            child: None,
        };
        p.spawn();
        p
    }

    /// A Sentinel watching `master` as `name`, deciding with `quorum`,
    /// calling the master down after `down_after`; with `password`, it
    /// requires it from clients (and gives it to the other Sentinels).
    pub fn sentinel(
        master: &RedisProc,
        name: &str,
        quorum: u32,
        down_after: Duration,
        password: Option<&str>,
    ) -> RedisProc {
        let dir = temp_dir("sentinel");
        let mut conf = format!(
            "bind 127.0.0.1\n\
             dir {dir}\n\
             sentinel monitor {name} 127.0.0.1 {port} {quorum}\n\
             sentinel down-after-milliseconds {name} {down}\n\
             sentinel failover-timeout {name} {failover}\n\
             sentinel parallel-syncs {name} 1\n",
            dir = dir.display(),
            port = master.port,
            down = down_after.as_millis(),
            failover = (down_after * 3).as_millis(),
        );
        match &master.auth {
            Auth::Open => {}
            Auth::Password(p) => conf.push_str(&format!("sentinel auth-pass {name} {p}\n")),
            Auth::User {
                name: user,
                password,
            } => conf.push_str(&format!(
                "sentinel auth-user {name} {user}\nsentinel auth-pass {name} {password}\n"
            )),
        }
        if let Some(p) = password {
            conf.push_str(&format!("requirepass {p}\nsentinel sentinel-pass {p}\n"));
        }
        let file = dir.join("sentinel.conf");
        std::fs::write(&file, conf).unwrap_or_else(|e| panic!("cannot write {file:?}: {e}"));
        let mut p = RedisProc {
            port: free_port(),
            auth: password.map_or(Auth::Open, |p| Auth::Password(p.into())),
            args: vec![file.display().to_string(), "--sentinel".into()],
            dir,
            child: None,
        };
        p.spawn();
        p
    }

    /// `redis://[auth@]127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://{}127.0.0.1:{}", self.auth.url_part(), self.port)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the process (again, on the same port) and waits until it
    /// answers `PING`.
    pub fn spawn(&mut self) {
        // The config file comes first for a sentinel, so the port goes last.
        let child = Command::new("redis-server")
            .args(&self.args)
            .args(["--port", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + READY;
        loop {
            match self.query::<String>(&mut redis::cmd("PING")) {
                Ok(pong) if pong == "PONG" => return,
                seen => assert!(
                    Instant::now() < deadline,
                    "redis on port {} not ready: {seen:?}",
                    self.port
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs one command on a fresh connection (bounded by a short timeout).
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        cmd.query(&mut conn)
    }

    /// SIGKILL: every connection drops, nothing is said.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The `role` field of `INFO replication` (`master` or `slave`).
    pub fn role(&self) -> Option<String> {
        let info: String = self.query(redis::cmd("INFO").arg("replication")).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("role:"))
            .map(|r| r.trim().to_owned())
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A master, one replica and three Sentinels (quorum 2), ready: every
/// Sentinel knows the replica and the two other Sentinels, so a failover
/// can start as soon as the master is down.
pub struct SentinelGroup {
    pub name: String,
    pub master: RedisProc,
    pub replica: RedisProc,
    pub sentinels: Vec<RedisProc>,
}

impl SentinelGroup {
    pub fn start(auth: Auth, down_after: Duration) -> SentinelGroup {
        Self::start_with(auth, None, down_after)
    }

    /// Like `start`, with Sentinels that require `sentinel_password`.
    pub fn start_with(
        auth: Auth,
        sentinel_password: Option<&str>,
        down_after: Duration,
    ) -> SentinelGroup {
        let name = "mymaster".to_string();
        let master = RedisProc::server(auth);
        let replica = RedisProc::replica_of(&master);
        let sentinels: Vec<RedisProc> = (0..3)
            .map(|_| RedisProc::sentinel(&master, &name, 2, down_after, sentinel_password))
            .collect();
        let group = SentinelGroup {
            name,
            master,
            replica,
            sentinels,
        };
        group.wait_ready(Duration::from_secs(30));
        group
    }

    /// `REDIS_SENTINELS` for these Sentinels.
    pub fn sentinels_setting(&self) -> String {
        let addrs: Vec<String> = self.sentinels.iter().map(|s| s.addr()).collect();
        addrs.join(",")
    }

    /// Every Sentinel's view of the master, as `(ip, port)`.
    pub fn masters_seen(&self) -> Vec<Option<(String, u16)>> {
        self.sentinels
            .iter()
            .map(|s| {
                let addr: Option<(String, String)> = s
                    .query(
                        redis::cmd("SENTINEL")
                            .arg("get-master-addr-by-name")
                            .arg(&self.name),
                    )
                    .ok()
                    .flatten();
                addr.and_then(|(ip, port)| Some((ip, port.parse().ok()?)))
            })
            .collect()
    }

    fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let mut seen = Vec::new();
            for s in &self.sentinels {
                let fields: redis::RedisResult<std::collections::HashMap<String, String>> =
                    s.query(redis::cmd("SENTINEL").arg("master").arg(&self.name));
                let counts = fields.ok().map(|f| {
                    (
                        f.get("num-slaves").cloned().unwrap_or_default(),
                        f.get("num-other-sentinels").cloned().unwrap_or_default(),
                        f.get("flags").cloned().unwrap_or_default(),
                    )
                });
                seen.push(counts);
            }
            let replica_synced = self
                .replica
                .query::<String>(redis::cmd("INFO").arg("replication"))
                .is_ok_and(|i| i.contains("master_link_status:up"));
            let ready = replica_synced
                && seen.iter().all(|c| {
                    c.as_ref()
                        .is_some_and(|(r, s, f)| r == "1" && s == "2" && f == "master")
                });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sentinels not ready after {limit:?}: replica synced {replica_synced}, \
                 (replicas, other sentinels, flags) per sentinel: {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
