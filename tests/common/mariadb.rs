//! A private MariaDB server for fault tests: its own data directory, its own
//! loopback port, started in well under a second, frozen and thawed with
//! SIGSTOP and SIGCONT, killed and removed on drop. Tests that stop a
//! database use this one and never the machine's shared server on 3306.
//!
//! The data directory starts empty: with `--skip-grant-tables` the server
//! needs no system tables (so no `mariadb-install-db`, which takes seconds),
//! and every connection is trusted. InnoDB creates its files on first start.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long the server may take to answer after it was started.
const START_LIMIT: Duration = Duration::from_secs(20);

/// One private `mariadbd`. Dropping it kills the process (SIGCONT first, in
/// case it is frozen) and removes its directory.
pub struct PrivateMariaDb {
    child: Child,
    dir: PathBuf,
    port: u16,
    frozen: bool,
}

impl PrivateMariaDb {
    /// Starts a server on a free loopback port and waits (bounded) until it
    /// accepts a query. Panics saying why if it does not.
    pub async fn start() -> PrivateMariaDb {
        let port = free_port();
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "chat-mariadb-{}-{port}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("create the MariaDB data directory");
        let log = std::fs::File::create(dir.join("mariadbd.log")).expect("create the log");
        let binary = ["/usr/sbin/mariadbd", "/usr/sbin/mysqld"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("mariadbd");
        let mut command = Command::new(binary);
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--skip-grant-tables")
            .arg("--skip-log-bin")
            .arg("--skip-name-resolve")
            .arg("--innodb-buffer-pool-size=32M")
            .arg("--innodb-log-file-size=16M")
            // No fsync per commit: these servers hold throw-away data.
            .arg("--innodb-flush-log-at-trx-commit=2")
            .arg("--max-connections=200");
        // mariadbd refuses to run as root unless told to.
        if is_root() {
            command.arg("--user=root");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let mut db = PrivateMariaDb {
            child,
            dir,
            port,
            frozen: false,
        };
        db.wait_ready().await;
        db
    }

    /// `mysql://root@127.0.0.1:<port>/<db>` for this server.
    pub fn url(&self, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{db}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP: the server keeps its sockets open but answers nothing.
    pub fn freeze(&mut self) {
        self.signal("-STOP");
        self.frozen = true;
    }

    /// SIGCONT: the server carries on where it stopped.
    pub fn thaw(&mut self) {
        self.signal("-CONT");
        self.frozen = false;
    }

    fn signal(&self, which: &str) {
        let status = Command::new("kill")
            .arg(which)
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {which} {} failed", self.child.id());
    }

    /// The server's log, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mariadbd.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        // No database: the data directory starts without any.
        let url = format!("mysql://root@127.0.0.1:{}", self.port);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mariadbd exited at start ({status}):\n{}", self.log());
            }
            let attempt = async {
                use mysql_async::prelude::Queryable;
                let mut conn = mysql_async::Conn::from_url(url.as_str()).await?;
                conn.query_drop("SELECT 1").await?;
                conn.disconnect().await
            };
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "mariadbd did not answer within {START_LIMIT:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        if self.frozen {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(self.child.id().to_string())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// What [`CommitTrap`] does to the next `COMMIT` it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trap {
    /// Pass everything.
    Off = 0,
    /// Forward the `COMMIT` (it commits) and lose its answer.
    AnswerLost = 1,
    /// Swallow the `COMMIT` (it never reaches the server).
    CommitLost = 2,
    /// Freeze the server (SIGSTOP to the pid given to
    /// [`CommitTrap::freeze_on_commit`]) just before forwarding the
    /// `COMMIT`: it reaches a frozen server, which commits it and answers
    /// once thawed. Nothing else changes: the connection relays on.
    FreezeServer = 3,
}

/// A TCP proxy in front of a MySQL server that, when armed, blackholes the
/// connection that sends the next `COMMIT` at exactly that moment: after
/// the `COMMIT` went through ([`Trap::AnswerLost`]) or before
/// ([`Trap::CommitLost`]). The connection stays open and silent both ways,
/// as through a network partition. Or it freezes the whole server right
/// as the `COMMIT` goes through ([`Trap::FreezeServer`]). One-shot: the
/// trap disarms itself.
pub struct CommitTrap {
    port: u16,
    mode: std::sync::Arc<std::sync::atomic::AtomicU8>,
    sprung: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// The server [`Trap::FreezeServer`] freezes.
    freeze_pid: std::sync::Arc<std::sync::atomic::AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl CommitTrap {
    pub async fn start(upstream: u16) -> CommitTrap {
        use std::sync::atomic::AtomicU8;
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let mode = Arc::new(AtomicU8::new(Trap::Off as u8));
        let sprung = Arc::new(AtomicU32::new(0));
        let freeze_pid = Arc::new(AtomicU32::new(0));
        let (m, s, f) = (mode.clone(), sprung.clone(), freeze_pid.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                tokio::spawn(relay(client, server, m.clone(), s.clone(), f.clone()));
            }
        });
        CommitTrap {
            port,
            mode,
            sprung,
            freeze_pid,
            task,
        }
    }

    /// The URL through the proxy. `prefer_socket=false`: the driver would
    /// otherwise switch to the server's Unix socket, around the proxy.
    pub fn url(&self, db: &str) -> String {
        format!(
            "mysql://root@127.0.0.1:{}/{db}?prefer_socket=false",
            self.port
        )
    }

    pub fn arm(&self, trap: Trap) {
        self.mode.store(trap as u8, Ordering::SeqCst);
    }

    /// Arms [`Trap::FreezeServer`]: the next `COMMIT` freezes `pid` (the
    /// caller thaws it, e.g. with [`PrivateMariaDb::thaw`]).
    pub fn freeze_on_commit(&self, pid: u32) {
        self.freeze_pid.store(pid, Ordering::SeqCst);
        self.arm(Trap::FreezeServer);
    }

    /// How many times the trap has sprung.
    pub fn sprung(&self) -> u32 {
        self.sprung.load(Ordering::SeqCst)
    }
}

impl Drop for CommitTrap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one connection, reading the client's side packet by packet.
async fn relay(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    mode: std::sync::Arc<std::sync::atomic::AtomicU8>,
    sprung: std::sync::Arc<AtomicU32>,
    freeze_pid: std::sync::Arc<AtomicU32>,
) {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let dark = Arc::new(AtomicBool::new(false));
    let dark_down = dark.clone();
    let down = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let Ok(n) = server_rx.read(&mut buf).await else {
                return;
            };
            if n == 0 || dark_down.load(Ordering::SeqCst) {
                // Silent: keep the socket, forward nothing more.
                std::future::pending::<()>().await;
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    // Client to server, one MySQL packet at a time: 3-byte length, 1-byte
    // sequence, payload. COM_QUERY is 0x03.
    loop {
        let mut header = [0u8; 4];
        if client_rx.read_exact(&mut header).await.is_err() {
            break;
        }
        let len =
            usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        let mut payload = vec![0u8; len];
        if client_rx.read_exact(&mut payload).await.is_err() {
            break;
        }
        let is_commit =
            payload.first() == Some(&0x03) && payload[1..].eq_ignore_ascii_case(b"COMMIT");
        let trap = mode.load(Ordering::SeqCst);
        if is_commit && trap == Trap::FreezeServer as u8 {
            mode.store(Trap::Off as u8, Ordering::SeqCst);
            let pid = freeze_pid.load(Ordering::SeqCst);
            let frozen = Command::new("kill")
                .arg("-STOP")
                .arg(pid.to_string())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(frozen, "kill -STOP {pid} failed");
            sprung.fetch_add(1, Ordering::SeqCst);
            // Relayed as usual below: the COMMIT waits in the frozen
            // server's socket.
        } else if is_commit && trap != Trap::Off as u8 {
            mode.store(Trap::Off as u8, Ordering::SeqCst);
            sprung.fetch_add(1, Ordering::SeqCst);
            dark.store(true, Ordering::SeqCst);
            if trap == Trap::AnswerLost as u8 {
                let _ = server_tx.write_all(&header).await;
                let _ = server_tx.write_all(&payload).await;
            }
            // Both ways silent from here, both sockets kept open.
            std::future::pending::<()>().await;
        }
        if server_tx.write_all(&header).await.is_err()
            || server_tx.write_all(&payload).await.is_err()
        {
            break;
        }
    }
    down.abort();
}
