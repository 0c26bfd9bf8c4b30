//! Cluster tests: several real `chat-server` processes, one real MariaDB
//! database, one real Redis. Each test is named after the guarantee it
//! checks (docs/PROTOCOL.md, "Guarantees").

#[path = "../common/fault_proxy.rs"]
mod fault_proxy;
#[path = "../api/helpers/mod.rs"]
mod helpers;
mod procs;
#[path = "../common/redis_procs.rs"]
mod redis_procs;
#[path = "../common/wait.rs"]
mod wait;

mod crash;
mod cross_process;
mod goodbyes;
mod lifecycle;
mod member_lists;
mod metrics;
mod ops;
mod order;
mod page_rolling;
mod partition;
mod redis_outage;
mod rolling;
mod sentinel;
