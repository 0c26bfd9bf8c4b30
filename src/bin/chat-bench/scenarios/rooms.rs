//! `rooms`: many small rooms chatting at once (default 500 rooms of 4,
//! one sender per room). Same two phases as `fanout`: the highest total
//! deliveries/s, then latency at a fraction of it (or at `--rate` chats/s
//! per sender).

use std::sync::Arc;

use serde_json::{json, Value};

use super::fanout::Drive;
use super::load::{self, Layout};
use super::Common;
use crate::stats::Stats;
use crate::Args;

pub const OPTIONS: &[&str] = &[
    "rooms",
    "room-size",
    "senders",
    "window",
    "rate",
    "rate-fraction",
    "max-p99-ms",
    "probe-duration",
];

pub async fn run(common: &Common, args: &Args, stats: &Arc<Stats>) -> Result<Value, String> {
    let rooms = args.usize("rooms", 500)?.max(1);
    let size = args.usize("room-size", 4)?.max(1);
    let senders = args.usize("senders", 1)?.clamp(1, size);
    let drive = Drive::from_args(args)?;
    let layout = Layout::uniform(rooms, size, senders);
    let load = load::setup(common, layout, stats).await?;
    let mut out = drive.run(common, &load, rooms * senders, senders).await;
    out["parameters"] = json!({
        "rooms": rooms,
        "room_size": size,
        "members": size,
        "senders_per_room": senders,
        "connections": rooms * size,
        "window": drive.window,
        "max_p99_ms": drive.max_p99_ms,
        "rate_fraction": drive.fraction,
        "rate": drive.rate,
    });
    load.stop();
    Ok(out)
}
