//! The process's open-file limit (`RLIMIT_NOFILE`): every socket is a file
//! descriptor, so it bounds how many connections the process can hold. At
//! start-up the soft limit is raised to the hard one (an unprivileged
//! process may), and `MAX_CONNECTIONS`, unless set, is derived from it.

/// Descriptors kept back from WebSockets when `MAX_CONNECTIONS` is derived:
/// the MySQL pool (`pool_max` defaults to 100), Redis, the listener, the
/// HTTP requests in flight, log and static files.
pub const RESERVED_FDS: u64 = 256;

/// The open-file limits, as found and as left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    /// The soft limit found at start-up.
    pub soft_before: u64,
    /// The soft limit in force now.
    pub soft: u64,
    /// The hard limit (the most the soft limit may be raised to).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (or as close as the
/// system allows) and returns the limits. `None` when they cannot be read
/// (not a Unix system); a failed raise is logged and leaves the soft limit
/// as it was.
pub fn raise_to_hard() -> Option<FileLimits> {
    let (soft_before, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            log::warn!("cannot read the open-file limit: {e}");
            return None;
        }
    };
    let soft = if soft_before < hard {
        // Capped where the system caps it (`RLIM_INFINITY` is not accepted
        // on every system).
        match rlimit::increase_nofile_limit(hard) {
            Ok(raised) => raised,
            Err(e) => {
                log::warn!("cannot raise the open-file limit from {soft_before} to {hard}: {e}");
                soft_before
            }
        }
    } else {
        soft_before
    };
    Some(FileLimits {
        soft_before,
        soft,
        hard,
    })
}

/// `MAX_CONNECTIONS` when it is not set: the soft limit less
/// [`RESERVED_FDS`], at least 1.
pub fn derived_max_connections(soft: u64) -> usize {
    usize::try_from(soft.saturating_sub(RESERVED_FDS))
        .unwrap_or(usize::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_cap_leaves_room_for_other_files() {
        assert_eq!(derived_max_connections(20_000), 19_744);
        assert_eq!(derived_max_connections(1024), 768);
        assert_eq!(derived_max_connections(100), 1);
        assert_eq!(derived_max_connections(u64::MAX), (u64::MAX - 256) as usize);
    }

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let limits = raise_to_hard().expect("limits on unix");
        assert!(limits.soft >= limits.soft_before);
        assert_eq!(
            rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap(),
            (limits.soft, limits.hard)
        );
        assert!(limits.soft <= limits.hard);
    }
}
