//! The bench's own children (each bench binary includes this file with `#[path]`): signals,
//! parents, and the stray-reaper every bench runs at its end.

// Each binary uses a part of it.
#![allow(dead_code)]

use std::fs;
use std::io;

/// Sends `signal` to `pid`; whether it was sent.
pub fn kill(pid: u32, signal: i32) -> bool {
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
}

/// The parent pid of `pid` from `/proc/PID/stat`, if the process exists.
pub fn ppid_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 4 (ppid) follows the parenthesised command name, which may hold spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
}

/// `waitpid(pid)`, blocking, for a child that was just sent SIGKILL.
fn reap_blocking(pid: u32) {
    // SAFETY: waitpid with a null status pointer only reaps the given child.
    while unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) } == -1 {
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
}

/// Kills and reaps every process whose parent is the bench, except `keep` (children the bench
/// still tracks through `std::process::Child`); returns how many there were. With the bench
/// a subreaper, these are workers orphaned by a master that died.
pub fn reap_strays(keep: &[u32]) -> usize {
    let me = std::process::id();
    let mut strays = 0;
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if keep.contains(&pid) || ppid_of(pid) != Some(me) {
            continue;
        }
        strays += 1;
        kill(pid, libc::SIGKILL);
        reap_blocking(pid);
    }
    strays
}
