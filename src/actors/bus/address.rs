//! Where the cluster bus lives and what the bridge may conclude from what it
//! finds there: plain functions and types, wired together by
//! [`super::RedisBridge`].
//!
//! - **Address.** Either one Redis (`REDIS_URL`) or a master found through
//!   Sentinels (`REDIS_SENTINELS`, `REDIS_MASTER_NAME`). The master is looked
//!   up afresh at every (re)connection, so a failover is followed by the
//!   reconnection the bridge makes anyway when its connection drops. The
//!   look-up itself is the `redis` crate's Sentinel client: it asks the
//!   Sentinels in order for the master of that name and confirms with `ROLE`
//!   on the master that it is one.
//! - **Trusting liveness keys.** Whether a missing liveness key means a dead
//!   instance depends on whether Redis may have lost the keys: see
//!   [`reap_wait`].

use std::time::Duration;

use deadpool_redis::redis::{
    self,
    sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType},
    ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo,
};

/// The default `REDIS_MASTER_NAME`, as in Redis's example sentinel.conf.
pub const DEFAULT_MASTER_NAME: &str = "mymaster";

/// Where to find the master through Sentinels.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelAddress {
    /// `REDIS_SENTINELS`: asked in this order.
    pub sentinels: Vec<(String, u16)>,
    /// `REDIS_MASTER_NAME`.
    pub master_name: String,
    /// `REDIS_SENTINEL_PASSWORD`: the Sentinels' `requirepass`.
    pub sentinel_password: Option<String>,
    /// `REDIS_USERNAME`: the ACL user on the master (default user if unset).
    pub username: Option<String>,
    /// `REDIS_PASSWORD`: the master's password (its `requirepass`, or the
    /// ACL user's).
    pub password: Option<String>,
}

impl std::fmt::Debug for SentinelAddress {
    // Passwords never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelAddress")
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "***"),
            )
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// How the bridge reaches the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusAddress {
    /// `REDIS_URL`: one Redis, credentials in the URL.
    Direct(String),
    /// `REDIS_SENTINELS`: whichever master the Sentinels name.
    Sentinel(SentinelAddress),
}

impl BusAddress {
    /// Checks what can be checked without the network (the URL parses, the
    /// Sentinel list is usable).
    pub fn validate(&self) -> redis::RedisResult<()> {
        match self {
            BusAddress::Direct(url) => redis::Client::open(url.as_str()).map(|_| ()),
            BusAddress::Sentinel(s) => sentinel_client(s).map(|_| ()),
        }
    }

    /// A client for the current master: the URL's Redis, or the master the
    /// Sentinels name now (confirmed by `ROLE`).
    pub async fn master_client(&self) -> redis::RedisResult<redis::Client> {
        match self {
            BusAddress::Direct(url) => redis::Client::open(url.as_str()),
            BusAddress::Sentinel(s) => sentinel_client(s)?.async_get_client().await,
        }
    }

    /// With Sentinels, the master the first Sentinel that answers (each
    /// given `per_sentinel` at most) names now; `None` without Sentinels or
    /// when none answers. The watchdog compares it with the server the
    /// bridge is on: after a failover, the old master may stay up and keep
    /// serving for a while before it is demoted.
    pub async fn named_master(&self, per_sentinel: Duration) -> Option<(String, u16)> {
        let BusAddress::Sentinel(s) = self else {
            return None;
        };
        for info in sentinel_infos(s).ok()? {
            let ask = async {
                let client = redis::Client::open(info)?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&s.master_name)
                    .query_async::<Option<(String, String)>>(&mut conn)
                    .await
            };
            if let Ok(Ok(Some((ip, port)))) = tokio::time::timeout(per_sentinel, ask).await {
                if let Ok(port) = port.parse() {
                    return Some((ip, port));
                }
            }
        }
        None
    }

    /// The longest pause between two reconnection attempts. With Sentinels
    /// a failover is expected and the Sentinels answer at once, so the
    /// bridge looks again every second; one Redis gets more slack.
    pub fn max_backoff(&self) -> Duration {
        match self {
            BusAddress::Direct(_) => Duration::from_secs(5),
            BusAddress::Sentinel(_) => Duration::from_secs(1),
        }
    }
}

/// A fresh Sentinel client (no cached connections: each look-up after a
/// failure starts clean).
fn sentinel_client(s: &SentinelAddress) -> redis::RedisResult<SentinelClient> {
    let sentinels = sentinel_infos(s)?;
    let mut master = RedisConnectionInfo::default();
    if let Some(u) = &s.username {
        master = master.set_username(u);
    }
    if let Some(p) = &s.password {
        master = master.set_password(p);
    }
    SentinelClient::build(
        sentinels,
        s.master_name.clone(),
        Some(SentinelNodeConnectionInfo::default().set_redis_connection_info(master)),
        SentinelServerType::Master,
    )
}

/// How to reach each Sentinel, in the configured order.
fn sentinel_infos(s: &SentinelAddress) -> redis::RedisResult<Vec<redis::ConnectionInfo>> {
    s.sentinels
        .iter()
        .map(|(host, port)| {
            let info = ConnectionAddr::Tcp(host.clone(), *port).into_connection_info()?;
            let mut redis_info = RedisConnectionInfo::default();
            if let Some(p) = &s.sentinel_password {
                redis_info = redis_info.set_password(p);
            }
            Ok(info.set_redis_settings(redis_info))
        })
        .collect()
}

/// Whether the bridge must leave the server it is on (`connected`): the
/// Sentinels name another master. No answer from them (`named` is `None`)
/// proves nothing: the bridge stays, and the role check still applies.
pub fn master_moved(connected: Option<&(String, u16)>, named: Option<&(String, u16)>) -> bool {
    matches!((connected, named), (Some(c), Some(n)) if c != n)
}

/// Parses `REDIS_SENTINELS`: `host:port[,host:port...]`, at least one,
/// blanks around entries ignored, IPv6 hosts in brackets (`[::1]:26379`).
pub fn parse_sentinels(list: &str) -> Result<Vec<(String, u16)>, String> {
    let mut out = Vec::new();
    for entry in list.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err("an entry is empty".into());
        }
        let Some((host, port)) = entry.rsplit_once(':') else {
            return Err(format!("{entry} has no :port"));
        };
        let host = match host.strip_prefix('[') {
            Some(v6) => v6
                .strip_suffix(']')
                .ok_or_else(|| format!("{entry}: unclosed ["))?,
            None if host.contains(':') => {
                return Err(format!("{entry}: put an IPv6 address in brackets"))
            }
            None => host,
        };
        if host.is_empty() {
            return Err(format!("{entry} has no host"));
        }
        let port: u16 = match port.parse() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("{entry}: {port} is not a port from 1 to 65535")),
        };
        out.push((host.to_owned(), port));
    }
    Ok(out)
}

/// What the bridge learns about the master it connected to (`INFO server`
/// and `INFO replication`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// `run_id`: changes with every start of the Redis process.
    pub run_id: String,
    /// `uptime_in_seconds`.
    pub uptime: Duration,
    /// `role:master`.
    pub is_master: bool,
    /// A replica promoted to master (`second_repl_offset` is not -1): it
    /// may have missed renewals during the failover, and its uptime says
    /// nothing about how long it has been master.
    pub promoted: bool,
}

/// Reads [`ServerFacts`] from the text of `INFO` sections; `None` when a
/// field is missing (an unknown server: trust nothing).
pub fn parse_server_facts(info: &str) -> Option<ServerFacts> {
    let field = |name: &str| {
        info.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(str::trim)
        })
    };
    Some(ServerFacts {
        run_id: field("run_id")?.to_owned(),
        uptime: Duration::from_secs(field("uptime_in_seconds")?.parse().ok()?),
        is_master: field("role")? == "master",
        promoted: field("second_repl_offset").is_some_and(|o| o != "-1"),
    })
}

/// How long after a connection the bridge must wait before a missing
/// liveness key may count as a dead instance.
///
/// Invariant: a key is trusted only when every live instance has had
/// `settle` (a TTL, a renewal period and the longest reconnection backoff)
/// to write it on this very master since the master last lost keys.
/// - After an outage this process saw (`first_connection` false), Redis may
///   have restarted, frozen or failed over for everyone: the others may
///   still be reconnecting, so wait the full `settle`.
/// - At this process's first connection, the master itself tells: a Redis
///   up for `uptime` has kept its keys for that long, so wait only for what
///   is left of `settle`. A promoted replica, something not a master, or a
///   server that did not say (`facts` is `None`) gets the full `settle`.
///
/// This is what lets a process started next to a crashing one clean it up
/// within a TTL instead of after `settle` plus a TTL.
pub fn reap_wait(
    first_connection: bool,
    facts: Option<&ServerFacts>,
    settle: Duration,
) -> Duration {
    match facts {
        Some(f) if first_connection && f.is_master && !f.promoted => {
            settle.saturating_sub(f.uptime)
        }
        _ => settle,
    }
}

/// Whether `INFO replication` text says the server is a master. A master
/// demoted by a failover keeps open connections that no longer hear what
/// the others publish: the bridge checks this on every watchdog round.
pub fn reports_master(replication_info: &str) -> bool {
    replication_info.lines().any(|l| l.trim() == "role:master")
}

/// The pause before the next reconnection attempt: doubled, at most `max`.
pub fn next_backoff(current: Duration, max: Duration) -> Duration {
    (current * 2).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(11);

    fn facts(uptime: u64, is_master: bool, promoted: bool) -> ServerFacts {
        ServerFacts {
            run_id: "abc".into(),
            uptime: Duration::from_secs(uptime),
            is_master,
            promoted,
        }
    }

    #[test]
    fn sentinel_lists_parse_in_order() {
        assert_eq!(
            parse_sentinels("10.0.0.1:26379, sentinel-b:26380,[::1]:26381").unwrap(),
            [
                ("10.0.0.1".to_string(), 26379),
                ("sentinel-b".to_string(), 26380),
                ("::1".to_string(), 26381)
            ]
        );
        for bad in [
            "",
            "a:1,",
            "host",
            ":26379",
            "host:0",
            "host:70000",
            "host:x",
            "::1:26379",
            "[::1:26379",
        ] {
            assert!(parse_sentinels(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn server_facts_come_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:f00d\r\nuptime_in_seconds:42\r\n\
                    # Replication\r\nrole:master\r\nconnected_slaves:1\r\n\
                    master_replid2:0000000000000000000000000000000000000000\r\n\
                    second_repl_offset:-1\r\n";
        assert_eq!(
            parse_server_facts(info),
            Some(ServerFacts {
                run_id: "f00d".into(),
                uptime: Duration::from_secs(42),
                is_master: true,
                promoted: false,
            })
        );
        let promoted = info.replace("second_repl_offset:-1", "second_repl_offset:1234");
        assert!(parse_server_facts(&promoted).unwrap().promoted);
        let replica = info.replace("role:master", "role:slave");
        assert!(!parse_server_facts(&replica).unwrap().is_master);
        assert_eq!(parse_server_facts("role:master\r\nrun_id:x\r\n"), None);
        assert_eq!(
            parse_server_facts("run_id:x\r\nuptime_in_seconds:soon\r\nrole:master"),
            None
        );
    }

    #[test]
    fn a_first_connection_to_a_long_running_master_trusts_keys_at_once() {
        assert_eq!(
            reap_wait(true, Some(&facts(3600, true, false)), SETTLE),
            Duration::ZERO
        );
    }

    #[test]
    fn a_recently_started_redis_is_waited_for_the_rest_of_settle() {
        let wait = reap_wait(true, Some(&facts(4, true, false)), SETTLE);
        assert_eq!(wait, Duration::from_secs(7));
        assert_eq!(
            reap_wait(true, Some(&facts(0, true, false)), SETTLE),
            SETTLE
        );
    }

    #[test]
    fn after_an_outage_or_a_failover_or_without_facts_the_full_settle_applies() {
        // Redis may have frozen or restarted for everyone meanwhile.
        assert_eq!(
            reap_wait(false, Some(&facts(3600, true, false)), SETTLE),
            SETTLE
        );
        // A promoted replica: its uptime is not its time as master.
        assert_eq!(
            reap_wait(true, Some(&facts(3600, true, true)), SETTLE),
            SETTLE
        );
        assert_eq!(
            reap_wait(true, Some(&facts(3600, false, false)), SETTLE),
            SETTLE
        );
        assert_eq!(reap_wait(true, None, SETTLE), SETTLE);
    }

    #[test]
    fn only_role_master_is_a_master() {
        assert!(reports_master(
            "# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"
        ));
        assert!(!reports_master(
            "# Replication\r\nrole:slave\r\nmaster_host:10.0.0.2\r\n"
        ));
        assert!(!reports_master(""));
    }

    #[test]
    fn only_a_different_named_master_moves_the_bridge() {
        let a = ("10.0.0.1".to_string(), 6379);
        let b = ("10.0.0.2".to_string(), 6379);
        assert!(master_moved(Some(&a), Some(&b)));
        assert!(!master_moved(Some(&a), Some(&a)));
        assert!(!master_moved(Some(&a), None));
        assert!(!master_moved(None, Some(&b)));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let max = Duration::from_secs(1);
        assert_eq!(
            next_backoff(Duration::from_millis(100), max),
            Duration::from_millis(200)
        );
        assert_eq!(next_backoff(Duration::from_millis(800), max), max);
        assert_eq!(next_backoff(max, max), max);
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let address = BusAddress::Sentinel(SentinelAddress {
            sentinels: vec![("s".into(), 26379)],
            master_name: DEFAULT_MASTER_NAME.into(),
            sentinel_password: Some("sentinel-secret".into()),
            username: Some("chat".into()),
            password: Some("master-secret".into()),
        });
        let shown = format!("{address:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(address.validate().is_ok());
    }
}
