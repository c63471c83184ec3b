//! What a child process holds, from /proc: open file descriptors and
//! memory (VmRSS now, VmHWM the peak), to check for leaks and bounds, and
//! its relay threads with their CPU time.
#![allow(dead_code)] // each test file uses a different part

use std::path::PathBuf;

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/fd: {e}"))
}

/// A `Vm*` line of /proc/PID/status, in KiB.
pub fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Current resident memory of `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    vm_kib(pid, "VmRSS")
}

/// Peak resident memory of `pid`, KiB.
pub fn hwm_kib(pid: u32) -> u64 {
    vm_kib(pid, "VmHWM")
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit, so a storm
/// of connections (both ends of each live in the test process) and the
/// wstap child (which inherits the limit) have room; returns the new soft
/// limit.
pub fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE")
}

/// The relay threads (`wstap-relay-N`) of `pid`: name and /proc task
/// directory.
pub fn relay_tasks(pid: u32) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/task: {e}"))
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            let name = name.trim();
            name.starts_with("wstap-relay")
                .then(|| (name.to_owned(), dir))
        })
        .collect()
}

/// CPU time (user + system, in clock ticks) of `pid`'s relay threads.
pub fn relay_cpu_ticks(pid: u32) -> u64 {
    relay_tasks(pid)
        .iter()
        .filter_map(|(_, dir)| {
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // the fields after the command name, which is in parentheses
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15, the 12th and 13th here
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}
