//! `MEMORY_STORE_MAX_BYTES` holds on the real binary: sockets that each
//! create a room and send 1,000-character messages as fast as they are
//! answered cannot grow the process much beyond its budget, and a
//! bystander chatting in another room is still answered within a second.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::helpers::{client_thread, WsClient};
use super::Server;

/// The store's budget in this test: small, so that a few seconds of
/// flood exceed it many times over even on a slow machine (debug build).
const BUDGET: u64 = 2 << 20;
/// The flood goes on until this much content was stored...
const FLOOD_BYTES: u64 = 8 * BUDGET;
/// ... or this long has passed (then the test says the machine was slow).
const FLOOD_CAP: Duration = Duration::from_secs(30);
/// Sockets flooding, each in a room of its own.
const FLOODERS: usize = 8;
/// Chats each flooder has in flight at once.
const WINDOW: usize = 16;
/// Characters in each flooded message.
const CONTENT_CHARS: usize = 1000;
/// The longest a bystander's echo may take.
const ECHO_LIMIT: Duration = Duration::from_secs(1);

/// Resident memory of `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    kib * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

#[actix_rt::test]
async fn a_flood_of_rooms_stays_within_the_memory_budget_and_bystanders_are_served() {
    let budget = BUDGET.to_string();
    let mut server = Server::start(&[
        ("MEMORY_STORE_MAX_BYTES", budget.as_str()),
        ("WS_RATE_PER_SEC", "1000000"),
        ("WS_RATE_BURST", "1000000"),
        ("ROOM_CREATE_BURST", "100000"),
        ("WORKERS", "2"),
        ("RUST_LOG", "warn"),
    ]);
    server.wait_healthy().await;
    let (pid, port) = (server.child.id(), server.port);

    let done = Arc::new(AtomicBool::new(false));
    // The bystander, on a thread of its own like a browser elsewhere; it
    // chats every 100 ms until the flood is over.
    let stop = done.clone();
    let bystander = client_thread("bystander", move || async move {
        let mut ws = WsClient::connect(port).await;
        ws.create("bystander", "bea").await;
        let mut slowest = Duration::ZERO;
        let mut echoes = 0;
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let text = format!("still there? {echoes}");
            let echo = tokio::time::timeout(Duration::from_secs(10), ws.chat(&text))
                .await
                .unwrap_or_else(|_| panic!("no echo for {text:?} within 10 s"));
            assert_eq!(echo["message"]["content"], text.as_str(), "{echo}");
            slowest = slowest.max(sent.elapsed());
            echoes += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (echoes, slowest)
    });
    // Let the bystander's room exist before the baseline is read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = rss_bytes(pid);

    let finished = done.clone();
    let flood = client_thread("flooders", move || async move {
        let stored = Rc::new(Cell::new(0u64));
        let one = |i: usize| {
            let stored = stored.clone();
            async move {
                let mut ws = WsClient::connect(port).await;
                ws.create(&format!("flood {i}"), &format!("flooder{i}"))
                    .await;
                let contents: Vec<String> = (0..WINDOW)
                    .map(|k| format!("{:0>width$}", k + WINDOW * i, width = CONTENT_CHARS))
                    .collect();
                let start = Instant::now();
                while stored.get() < FLOOD_BYTES && start.elapsed() < FLOOD_CAP {
                    let echoed = ws.chat_all(&contents).await.len();
                    stored.set(stored.get() + (echoed * CONTENT_CHARS) as u64);
                }
            }
        };
        futures_util::future::join_all((0..FLOODERS).map(one)).await;
        finished.store(true, Ordering::Relaxed);
        stored.get()
    });

    // Peak resident memory while the flood runs, and a little after.
    let mut peak = baseline;
    let started = Instant::now();
    while !done.load(Ordering::Relaxed) && started.elapsed() < FLOOD_CAP * 2 {
        peak = peak.max(rss_bytes(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flooded = flood.result(Duration::from_secs(60)).await;
    let took = started.elapsed();
    for _ in 0..10 {
        peak = peak.max(rss_bytes(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (echoes, slowest) = bystander.result(Duration::from_secs(30)).await;

    let bound = baseline + 4 * BUDGET;
    eprintln!(
        "baseline {:.1} MiB, peak {:.1} MiB (bound {:.1} MiB); {:.1} MiB of content \
         flooded in {took:.1?}; bystander: {echoes} echoes, slowest {slowest:?}",
        mib(baseline),
        mib(peak),
        mib(bound),
        mib(flooded),
    );
    assert!(
        flooded >= FLOOD_BYTES,
        "the flood ({:.1} MiB in {FLOOD_CAP:?}) must exceed the bound it checks: too slow",
        mib(flooded)
    );
    assert!(
        peak <= bound,
        "resident memory {:.1} MiB exceeds baseline {:.1} MiB + 4 × the {:.1} MiB budget",
        mib(peak),
        mib(baseline),
        mib(BUDGET)
    );
    assert!(echoes >= 5, "the bystander chatted {echoes} times");
    assert!(
        slowest <= ECHO_LIMIT,
        "a bystander's echo took {slowest:?} (limit {ECHO_LIMIT:?})"
    );
    // Still serving, and still answering REST.
    let http = awc::Client::default();
    let res = http
        .get(format!("{}/health", server.base()))
        .send()
        .await
        .expect("health after the flood");
    assert_eq!(res.status().as_u16(), 200);
    assert!(server.running(), "{:?}", server.notable_lines());
    server.kill();
}
