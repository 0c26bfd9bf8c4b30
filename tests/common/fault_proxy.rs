//! A TCP fault proxy for the tests: put it between one process and a
//! service (Redis, MySQL) and make the network between them fail for real.
//!
//! The proxy listens on a free `127.0.0.1` port and forwards every
//! connection to `target`. At run time it can be switched to:
//! - [`Fault::Pass`]: forward both ways;
//! - [`Fault::Cut`]: close every connection, and close new ones at once (the
//!   peer sees the connection end, as when a firewall resets it);
//! - [`Fault::Blackhole`]: accept new connections and stop moving bytes on
//!   every connection, both ways: nothing is answered, nothing is closed.
//!   Bytes already sent wait in the sockets' buffers and move on once the
//!   proxy passes again, as TCP retransmission delivers them after a real
//!   partition heals (a connection the peer gave up on meanwhile is closed
//!   after its last bytes, like a socket closed with data in flight);
//! - [`Fault::Delay`]: forward, each chunk after the given latency.
//!
//! The proxy runs on a thread and runtime of its own, so a test that blocks
//! its own thread (waiting on a child process, say) never stalls it. It stops
//! (closing every connection) when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Cut,
    Blackhole,
    Delay(Duration),
}

/// A running proxy. See the module comment.
pub struct FaultProxy {
    addr: SocketAddr,
    control: watch::Sender<Fault>,
    accepted: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy to `target` (`host:port`) in [`Fault::Pass`] mode.
    pub fn start(target: &str) -> FaultProxy {
        let target: SocketAddr = target
            .parse()
            .unwrap_or_else(|e| panic!("fault proxy target {target}: {e}"));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("fault proxy cannot bind: {e}"));
        let addr = std_listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fault proxy address: {e}"));
        std_listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("fault proxy: {e}"));
        let (control, mode) = watch::channel(Fault::Pass);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("fault proxy runtime: {e}"));
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener)
                    .unwrap_or_else(|e| panic!("fault proxy listener: {e}"));
                tokio::select! {
                    _ = stopped => {}
                    () = accept_loop(listener, target, mode, counter) => {}
                }
            });
            // Dropping the runtime drops every connection task: all close.
        });
        FaultProxy {
            addr,
            control,
            accepted,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the proxy to `fault`; takes effect on every connection at
    /// once.
    pub fn set(&self, fault: Fault) {
        self.control.send_replace(fault);
    }

    /// How many connections the proxy has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<Fault>,
    accepted: Arc<AtomicUsize>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if *mode.borrow() == Fault::Cut {
            drop(client); // refused: closed at once
            continue;
        }
        accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(relay(client, target, mode.clone()));
    }
}

/// Waits while the proxy blackholes; false once it cuts (or stops).
async fn passable(mode: &mut watch::Receiver<Fault>) -> bool {
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Fault::Pass | Fault::Delay(_) => return true,
            Fault::Cut => return false,
            Fault::Blackhole => {
                if mode.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

async fn relay(client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Fault>) {
    // A connection accepted while blackholed waits before reaching the
    // target: nothing answers it.
    if !passable(&mut mode).await {
        return;
    }
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    // Either direction ending (EOF, error, cut) ends the connection.
    tokio::select! {
        () = pump(client_read, upstream_write, mode.clone()) => {}
        () = pump(upstream_read, client_write, mode) => {}
    }
}

/// Moves bytes from `from` to `to` while the proxy lets them through.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Fault>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !passable(&mut mode).await {
            return;
        }
        // Read, but stop reading as soon as the mode changes, so a
        // blackhole or a cut takes hold on idle connections too.
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // What was read waits out a blackhole, or dies with a cut.
        if !passable(&mut mode).await {
            return;
        }
        let now = *mode.borrow();
        if let Fault::Delay(latency) = now {
            tokio::time::sleep(latency).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;
    use std::time::Instant;

    /// An echo server on a thread; returns its address.
    fn echo_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect(proxy: &FaultProxy) -> StdStream {
        let s = StdStream::connect(proxy.addr()).expect("connect to proxy");
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        s
    }

    /// Sends `msg` and reads the echo; `None` on timeout, EOF or error.
    fn echo(s: &mut StdStream, msg: &[u8]) -> Option<Vec<u8>> {
        s.write_all(msg).ok()?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).ok()?;
        Some(got)
    }

    #[test]
    fn passes_blackholes_heals_and_cuts() {
        let proxy = FaultProxy::start(&echo_server().to_string());
        let mut s = connect(&proxy);
        assert_eq!(echo(&mut s, b"one").as_deref(), Some(&b"one"[..]));

        // Blackhole: an open connection gets no answer, a new one neither.
        proxy.set(Fault::Blackhole);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(echo(&mut s, b"two"), None, "answered through a blackhole");
        let mut fresh = connect(&proxy);
        assert_eq!(echo(&mut fresh, b"new"), None, "a new connection answered");

        // Healed: what was held arrives, and traffic flows again.
        proxy.set(Fault::Pass);
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("t");
        let mut held = [0u8; 3];
        s.read_exact(&mut held).expect("held bytes after the heal");
        assert_eq!(&held, b"two");
        assert_eq!(echo(&mut s, b"three").as_deref(), Some(&b"three"[..]));
        fresh
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("t");
        fresh
            .read_exact(&mut held)
            .expect("held bytes of the new one");
        assert_eq!(&held, b"new");

        // Cut: the open connection ends, a new one is closed at once.
        proxy.set(Fault::Cut);
        let mut buf = [0u8; 8];
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("t");
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "still open");
        let mut refused = connect(&proxy);
        assert!(matches!(refused.read(&mut buf), Ok(0) | Err(_)));
        assert_eq!(proxy.accepted(), 2, "a connection was accepted while cut");

        proxy.set(Fault::Pass);
        let mut again = connect(&proxy);
        assert_eq!(echo(&mut again, b"back").as_deref(), Some(&b"back"[..]));
    }

    #[test]
    fn delays_each_way() {
        let proxy = FaultProxy::start(&echo_server().to_string());
        proxy.set(Fault::Delay(Duration::from_millis(200)));
        let mut s = connect(&proxy);
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("t");
        let start = Instant::now();
        assert_eq!(echo(&mut s, b"slow").as_deref(), Some(&b"slow"[..]));
        let took = start.elapsed();
        // 200 ms on the way there and 200 ms on the way back.
        assert!(took >= Duration::from_millis(400), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }
}
