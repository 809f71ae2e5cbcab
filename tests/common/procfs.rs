//! Reading process state from `/proc`, for the driver (to observe masters and workers from
//! outside) and for the fixtures (to report their own state).
//!
//! Every reader tolerates processes vanishing mid-read: a process that cannot be read is
//! simply absent from the answer.

use std::fs;

#[path = "../support/stat.rs"]
mod stat;
pub use stat::{Stat, is_gone, stat};

/// A hexadecimal signal-set field of `/proc/PID/status` (`SigBlk`, `SigIgn`, `SigCgt`).
pub fn sigset_field(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        u64::from_str_radix(value.trim(), 16).ok()
    })
}

/// The bit of `signal` in a `/proc` signal set.
pub fn sig_bit(signal: i32) -> u64 {
    1 << (signal - 1)
}

/// The targets of every descriptor in `/proc/PID/fd` (`socket:[…]`, `anon_inode:[eventpoll]`).
pub fn fd_targets(pid: u32) -> Vec<String> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let target = fs::read_link(entry.ok()?.path()).ok()?;
        Some(target.to_string_lossy().into_owned())
    })
    .collect()
}

/// The number of descriptors open in `pid`.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Every process id in `/proc`.
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The children of `pid`, zombies included, with their state. (`/proc/PID/task/PID/children`
/// needs `CONFIG_PROC_CHILDREN`, so this scans every process's parent instead.)
pub fn children(pid: u32) -> Vec<(u32, Stat)> {
    all_pids()
        .into_iter()
        .filter_map(|p| Some((p, stat(p)?)))
        .filter(|(_, s)| s.ppid == pid)
        .collect()
}

/// The children of `pid` that still run.
pub fn live_children(pid: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = children(pid)
        .into_iter()
        .filter(|(_, s)| !s.is_dead())
        .map(|(p, _)| p)
        .collect();
    pids.sort_unstable();
    pids
}

/// The children of `pid` that exited and were not reaped.
pub fn zombie_children(pid: u32) -> Vec<u32> {
    children(pid)
        .into_iter()
        .filter(|(_, s)| s.is_dead())
        .map(|(p, _)| p)
        .collect()
}

/// The live (non-zombie) members of process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| stat(p).is_some_and(|s| s.pgrp == pgid && !s.is_dead()))
        .collect()
}
