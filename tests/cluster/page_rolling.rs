//! The chat page itself, in real headless Chromium, through a rolling
//! restart: the three instances of the pm2 cluster file behind nginx
//! (`ops.rs`), restarted one after another as `rolling.rs` does, while two
//! pages (`tests/browser/rolling.e2e.mjs`, node + playwright-core) chat
//! through nginx in one room, each on another instance. Nobody touches the
//! pages after they joined except to type a message and press Enter: each
//! page must notice its socket closing, reconnect and rejoin by itself,
//! and end with exactly what the store has.
//!
//! `scripts/test.sh` installs node, Chromium and the npm package before
//! `cargo test`; without them this test fails, it never skips.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::helpers::TestDatabase;
use crate::ops::start_ops;
use crate::procs::heavy_test_lock;
use crate::rolling::{create_room, get_json, restart_one_after_another, stored_messages, Keepers};
use crate::wait::within;

const TITLE: &str = "rolling in Chromium";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM_PATH").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}

/// Fails (never skips) when what the page test runs on is missing.
fn require_browser_tools() {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let hint = "run `bash scripts/test.sh`, which installs it";
    assert!(node, "node is not installed: {hint}");
    assert!(
        chromium().exists(),
        "Chromium is not at {} (CHROMIUM_PATH): {hint}",
        chromium().display()
    );
    assert!(
        repo()
            .join("tests/browser/node_modules/playwright-core")
            .exists(),
        "tests/browser/node_modules/playwright-core is missing: {hint}"
    );
}

/// `node tests/browser/rolling.e2e.mjs`: its JSON events from stdout, its
/// stderr kept for the failure message, stopped (SIGTERM, then SIGKILL)
/// on drop.
struct PageDriver {
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::UnboundedReceiver<Value>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl PageDriver {
    fn spawn(front: &str, room: u64) -> PageDriver {
        let mut child = Command::new("node")
            .arg(repo().join("tests/browser/rolling.e2e.mjs"))
            .arg(format!("http://{front}"))
            .arg(room.to_string())
            .arg(TITLE)
            .env("CHROMIUM_PATH", chromium())
            .current_dir(repo())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node: {e}"));
        let (tx, events) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let event = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"event": "output", "line": line}));
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        let kept = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                kept.push(line);
                if kept.len() > 200 {
                    kept.remove(0);
                }
            }
        });
        PageDriver {
            stdin: child.stdin.take(),
            child,
            events,
            stderr,
        }
    }

    fn stderr_tail(&self) -> String {
        let kept = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        kept[kept.len().saturating_sub(40)..].join("\n")
    }

    /// Waits (at most `limit`) for the event named `name`; panics on an
    /// `error` event, on the script's end, or when `limit` passes.
    async fn next(&mut self, name: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv()).await;
            match event {
                Ok(Some(event)) if event["event"] == name => return event,
                Ok(Some(event)) if event["event"] == "error" => panic!(
                    "the page script failed: {}\n{}",
                    event["message"].as_str().unwrap_or_default(),
                    self.stderr_tail()
                ),
                Ok(Some(_)) => {}
                Ok(None) => panic!(
                    "the page script ended before \"{name}\" ({:?})\n{}",
                    self.child.try_wait(),
                    self.stderr_tail()
                ),
                Err(_) => panic!(
                    "no \"{name}\" from the page script within {limit:?}\n{}",
                    self.stderr_tail()
                ),
            }
        }
    }

    /// Tells the script `word` ("stop": stop chatting and report; "quit":
    /// close the pages and end).
    fn tell(&mut self, word: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(format!("{word}\n").as_bytes());
            let _ = stdin.flush();
        }
    }
}

impl Drop for PageDriver {
    fn drop(&mut self) {
        // SIGTERM first: the script closes Chromium on it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(8);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn id_content(m: &Value) -> (u64, String) {
    (
        m[0].as_u64().expect("message id"),
        m[1].as_str().unwrap_or_default().to_owned(),
    )
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// The rolling restart of `rolling.rs` with two Chromium pages instead of
/// scripted clients; the room is kept populated by the same [`Keepers`]
/// (the contract deletes an emptied room, and a restart empties what its
/// instance holds).
#[actix_rt::test]
async fn the_page_in_chromium_rejoins_by_itself_through_a_rolling_restart_and_loses_nothing() {
    let _heavy = heavy_test_lock().await;
    require_browser_tools();
    let begun = Instant::now();
    let database = TestDatabase::new();
    let ops = start_ops(&database, &[]).await;
    let front = ops.front.clone();
    let room = create_room(&front, TITLE).await;
    let keepers = Keepers::start(&ops, room).await;

    let mut pages = PageDriver::spawn(&front, room);
    let ready = pages.next("ready", Duration::from_secs(60)).await;
    let landed: Vec<String> = list(&ready["pages"])
        .iter()
        .map(|p| p["instance"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        landed.len() == 2 && landed[0] != landed[1],
        "the two pages did not land on different instances: {landed:?}"
    );
    pages.next("chatting", Duration::from_secs(30)).await;

    // Chatting, then each instance restarted in turn; chatting goes on for
    // two seconds after the last one serves again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = restart_one_after_another(&ops).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    pages.tell("stop");
    let result = pages.next("result", Duration::from_secs(60)).await;

    let stored = stored_messages(&front, room).await;
    let members = within(
        Duration::from_secs(10),
        "the room's members",
        get_json(&format!("http://{front}/api/rooms/{room}/members")),
    )
    .await
    .expect("members through nginx");
    let mut members: Vec<String> = list(&members)
        .iter()
        .map(|m| m["nickname"].as_str().unwrap_or_default().to_owned())
        .collect();
    members.sort();
    assert_eq!(
        members,
        ["ann", "ben", "keeper1", "keeper2"],
        "the room's members over REST at the end"
    );
    // The pages are still in the room: the REST reads above saw them.
    pages.tell("quit");
    drop(pages);
    keepers.release().await;

    let by_id: BTreeMap<u64, &str> = stored.iter().map(|(i, c)| (*i, c.as_str())).collect();
    let contents: BTreeSet<&str> = by_id.values().copied().collect();
    assert_eq!(
        contents.len(),
        stored.len(),
        "a message is stored twice: {stored:?}"
    );
    let pages_seen = list(&result["pages"]);
    assert_eq!(pages_seen.len(), 2, "{result}");
    // Every page's list, by id, for the cross-page check below.
    let lists: Vec<Vec<(u64, String)>> = pages_seen
        .iter()
        .map(|p| list(&p["dom"]["messages"]).iter().map(id_content).collect())
        .collect();

    let mut report = Vec::new();
    for page in pages_seen {
        let name = page["name"].as_str().unwrap_or_default();
        let dom = &page["dom"];

        // Never reloaded: one load, and a mark set after joining is still
        // there.
        assert_eq!(page["loads"], 1, "{name}'s page was loaded again");
        assert_eq!(dom["sameDocument"], true, "{name}'s page is a new document");

        // Closed by a restart at least once, cleanly, and back by itself:
        // after every close, a new socket joined the room, the last one is
        // open and in it.
        let sockets = list(&page["sockets"]);
        assert_eq!(
            page["socketsSeenByPage"].as_u64(),
            Some(sockets.len() as u64),
            "{name}: the sockets the browser and the page saw differ: {page}"
        );
        let closes: Vec<&Value> = sockets
            .iter()
            .filter(|s| s["closed"] == true && s["status"] == 101)
            .map(|s| &s["closeCode"])
            .collect();
        assert!(
            !closes.is_empty(),
            "{name} was never disconnected: the restarts missed it ({sockets:?})"
        );
        for code in &closes {
            assert!(
                matches!(code.as_u64(), Some(1001 | 1012)),
                "{name}: a socket was closed with {code}, not a going-away: {sockets:?}"
            );
        }
        let last = sockets.last().expect("a socket");
        assert!(
            last["closed"] == false && last["joined"] == true && last["status"] == 101,
            "{name}'s last socket is not open and in the room: {sockets:?}"
        );
        for (i, s) in sockets.iter().enumerate() {
            if s["closed"] == true && s["joined"] == true {
                assert!(
                    sockets[i + 1..].iter().any(|l| l["joined"] == true),
                    "{name} did not rejoin after socket {i} closed: {sockets:?}"
                );
            }
        }

        // The page's list: exactly the store's messages, once each, in id
        // order (both pages joined before the first message).
        let got: Vec<(u64, String)> = list(&dom["messages"]).iter().map(id_content).collect();
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "{name}'s messages are not in strictly ascending id order: {:?}",
            got.iter().map(|(id, _)| id).collect::<Vec<_>>()
        );
        assert!(
            got == stored,
            "{name}'s page shows {} messages, the store has {}; missing {:?}, extra {:?}",
            got.len(),
            stored.len(),
            stored
                .iter()
                .filter(|m| !got.contains(m))
                .collect::<Vec<_>>(),
            got.iter()
                .filter(|m| !stored.contains(m))
                .collect::<Vec<_>>()
        );

        // Every acknowledged chat is stored with its content and appears
        // exactly once on every page; a refused one is stored only if the
        // page sent it again and that was acknowledged.
        let acked: Vec<(u64, String)> = list(&page["acked"]).iter().map(id_content).collect();
        assert!(!acked.is_empty(), "{name} had no chat acknowledged");
        for (id, content) in &acked {
            assert_eq!(
                by_id.get(id).copied(),
                Some(content.as_str()),
                "{name}'s acknowledged chat {id} {content:?} is not in REST history"
            );
            for (other, shown) in pages_seen.iter().zip(&lists) {
                let copies = shown.iter().filter(|(i, _)| i == id).count();
                assert!(
                    copies == 1 && shown.contains(&(*id, content.clone())),
                    "{name}'s acknowledged chat {id} is on {}'s page {copies} times",
                    other["name"]
                );
            }
        }
        let refused: Vec<&str> = list(&page["refused"])
            .iter()
            .map(|r| r[1].as_str().unwrap_or_default())
            .collect();
        for content in &refused {
            assert!(
                !contents.contains(content) || acked.iter().any(|(_, c)| c == content),
                "{name}'s chat {content:?} was refused but is stored"
            );
        }

        // At the end: online, in the room, who is there as REST says, no
        // error or notice shown, nothing the CSP blocked, no script error.
        assert_eq!(dom["conn"], "online", "{name}'s connection state");
        assert_eq!(dom["inRoom"], true, "{name} is not in the room view");
        assert_eq!(dom["title"], TITLE, "{name}'s room title");
        assert_eq!(
            dom["composerOffline"], false,
            "{name}'s composer is offline"
        );
        assert!(
            dom["errors"]
                .as_object()
                .is_some_and(serde_json::Map::is_empty),
            "{name}'s page shows an error or notice at the end: {}",
            dom["errors"]
        );
        let mut shown_members: Vec<String> = list(&dom["members"])
            .iter()
            .map(|m| m.as_str().unwrap_or_default().to_owned())
            .collect();
        shown_members.sort();
        assert_eq!(shown_members, members, "{name}'s member list");
        assert!(
            list(&page["csp"]).is_empty(),
            "{name}: Content Security Policy violations: {}",
            page["csp"]
        );
        assert!(
            list(&page["pageErrors"]).is_empty(),
            "{name}: page errors: {}",
            page["pageErrors"]
        );

        let path: Vec<String> = sockets
            .iter()
            .map(|s| {
                format!(
                    "{}{}",
                    s["instance"].as_str().unwrap_or("-"),
                    s["closeCode"]
                        .as_u64()
                        .map_or_else(String::new, |c| format!("({c})"))
                )
            })
            .collect();
        let notices: BTreeSet<&str> = list(&dom["shown"])
            .iter()
            .filter_map(|s| s["text"].as_str().filter(|t| !t.is_empty()))
            .collect();
        // How long each outage lasted as the person saw it: from "Connection
        // lost" to "Back online." in the room's notice.
        let mut lost_at = None;
        let mut outages = Vec::new();
        for shown in list(&dom["shown"]) {
            let (text, at) = (
                shown["text"].as_str().unwrap_or_default(),
                shown["at"].as_u64(),
            );
            if text.starts_with("Connection lost") {
                lost_at = lost_at.or(at);
            } else if text == "Back online." {
                if let (Some(lost), Some(back)) = (lost_at.take(), at) {
                    outages.push(format!("{} ms", back.saturating_sub(lost)));
                }
            }
        }
        report.push(format!(
            "{name}: sockets {}; offline {outages:?}; {} acked, {} refused, {} unanswered; shown {notices:?}",
            path.join(" -> "),
            acked.len(),
            refused.len(),
            list(&page["unanswered"]).len(),
        ));
    }
    assert_eq!(
        result["settled"], true,
        "the pages did not settle: {result}"
    );
    eprintln!(
        "page rolling restart: {} messages stored; restarts {restarted:?}; pages settled {} ms \
         after the chatting stopped; {:.1} s in all\n{}",
        stored.len(),
        result["settleMs"],
        begun.elapsed().as_secs_f64(),
        report.join("\n")
    );
    drop(ops);
}
