//! What the kernel says about a process: CPU time from `/proc/<pid>/stat`,
//! resident memory from `/proc/<pid>/status`, open-file limits. Linux only,
//! like the rest of the tool's measurements.

use std::io;
#[cfg(target_os = "linux")]
use std::os::raw::{c_int, c_long, c_ulong};

/// `pid` or this process.
fn proc_dir(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    }
}

/// User plus system CPU time of a process, in clock ticks.
pub fn cpu_ticks(pid: Option<u32>) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("{}/stat", proc_dir(pid)))?;
    parse_stat_cpu(&stat).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad stat"))
}

/// utime + stime (fields 14 and 15) of a `stat` line. The command name
/// (field 2) is in parentheses and may contain spaces, so fields are
/// counted after the last `)`.
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // `after` starts at field 3 (state); utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of a process, in bytes (`VmRSS`).
pub fn rss_bytes(pid: Option<u32>) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("{}/status", proc_dir(pid)))?;
    parse_status_kb(&status, "VmRSS:")
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS"))
}

/// A `Name:   1234 kB` line of `/proc/<pid>/status`, in kB.
pub fn parse_status_kb(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// How many descriptors a process has open (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> io::Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

/// The soft "Max open files" of another process, from `/proc/<pid>/limits`.
pub fn max_open_files(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(target_os = "linux")]
#[repr(C)]
struct RLimit {
    cur: c_ulong,
    max: c_ulong,
}

#[cfg(target_os = "linux")]
const RLIMIT_NOFILE: c_int = 7;
#[cfg(target_os = "linux")]
const SC_CLK_TCK: c_int = 2;

// The three libc calls this tool needs, declared by hand rather than
// pulling in a crate for them (std already links libc).
#[cfg(target_os = "linux")]
extern "C" {
    fn getrlimit(resource: c_int, rlim: *mut RLimit) -> c_int;
    fn setrlimit(resource: c_int, rlim: *const RLimit) -> c_int;
    fn sysconf(name: c_int) -> c_long;
}

/// Clock ticks per second for `/proc/<pid>/stat` (100 on Linux).
pub fn clk_tck() -> u64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf takes an integer and has no memory effects.
        let v = unsafe { sysconf(SC_CLK_TCK) };
        if v > 0 {
            return v as u64;
        }
    }
    100
}

/// Raises this process's soft open-file limit to its hard limit; returns
/// `(soft, hard)` after the attempt.
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    #[cfg(target_os = "linux")]
    {
        let mut lim = RLimit { cur: 0, max: 0 };
        // SAFETY: `lim` is a valid, writable rlimit struct for the call.
        if unsafe { getrlimit(RLIMIT_NOFILE, &mut lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.cur < lim.max {
            let wanted = RLimit {
                cur: lim.max,
                max: lim.max,
            };
            // SAFETY: `wanted` is a valid rlimit struct for the call.
            if unsafe { setrlimit(RLIMIT_NOFILE, &wanted) } == 0 {
                lim.cur = lim.max;
            }
        }
        // c_ulong is u64 on 64-bit Linux and u32 on 32-bit.
        #[allow(clippy::useless_conversion)]
        Ok((u64::from(lim.cur), u64::from(lim.max)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(io::Error::other("open-file limits are only read on Linux"))
    }
}

/// CPU seconds of the server (when its pid is known) and of this process.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    pub server_ticks: Option<u64>,
    pub bench_ticks: u64,
}

impl CpuSnapshot {
    pub fn take(server_pid: Option<u32>) -> Self {
        CpuSnapshot {
            server_ticks: server_pid.and_then(|p| cpu_ticks(Some(p)).ok()),
            bench_ticks: cpu_ticks(None).unwrap_or(0),
        }
    }

    /// Seconds used since `earlier`: (server, bench).
    pub fn since(&self, earlier: &CpuSnapshot) -> (Option<f64>, f64) {
        let tck = clk_tck() as f64;
        let server = match (self.server_ticks, earlier.server_ticks) {
            (Some(a), Some(b)) => Some(a.saturating_sub(b) as f64 / tck),
            _ => None,
        };
        let bench = self.bench_ticks.saturating_sub(earlier.bench_ticks) as f64 / tck;
        (server, bench)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "1234 (chat server) S 1 1234 1234 0 -1 4194304 500 0 0 0 \
                    250 75 0 0 20 0 9 0 100 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_cpu(line), Some(325));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn status_values_parse() {
        let status = "Name:\tchat-server\nVmPeak:\t  9000 kB\nVmRSS:\t   4321 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS:"), Some(4321));
        assert_eq!(parse_status_kb(status, "VmSwap:"), None);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(cpu_ticks(None).is_ok());
        assert!(rss_bytes(None).unwrap() > 0);
        assert!(clk_tck() > 0);
        let (soft, hard) = raise_nofile().unwrap();
        assert!(soft <= hard && soft > 0);
        assert!(max_open_files(std::process::id()).is_some());
    }
}
