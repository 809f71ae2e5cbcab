//! Process ids: the pid type every function of `sys` takes and returns, and this process's
//! own pid, its thread's and its parent's, with the `/proc` fallbacks where a sandbox
//! refuses `getpid` or `gettid` (docs/security.md).

use std::fs;
use std::io;

/// A process id, as the functions here take it: from 1 to `i32::MAX`. Never 0, which
/// `kill(2)` reads as "my process group", nor a number above `i32::MAX`, which it reads as a
/// negative one: a group. Every function of `sys` takes and returns pids as `Pid`; the
/// supervisor's and the master's tables hold the numbers (`u32`), which become a `Pid` where
/// they meet `sys`, and wire formats write the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Pid(rustix::process::Pid);

impl Pid {
    /// `None` for 0 and for numbers above `i32::MAX`.
    pub(crate) fn new(pid: u32) -> Option<Pid> {
        i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .map(Pid)
    }

    /// The pid as rustix takes it, for the calls of `sys`.
    pub(super) fn rustix(self) -> rustix::process::Pid {
        self.0
    }

    /// The number.
    pub(crate) fn get(self) -> u32 {
        // Positive: `new` takes no other.
        self.0.as_raw_nonzero().get() as u32
    }
}

impl TryFrom<u32> for Pid {
    type Error = io::Error;

    /// `EINVAL` for what [`Pid::new`] refuses.
    fn try_from(pid: u32) -> io::Result<Pid> {
        Pid::new(pid).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }
}

impl std::fmt::Display for Pid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// `read(2)` of `/proc/PID/statm`: the resident set size of `pid` in bytes (the second
/// field, in pages).
pub(crate) fn rss_bytes(pid: Pid) -> io::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = text
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed statm"))?;
    Ok(pages.saturating_mul(rustix::param::page_size() as u64))
}

/// This process's pid as [`try_getpid`] last found it, for [`own_pid_cached`]: 0 until then,
/// and in a forked child until it asked (the parent's would be wrong there).
static OWN_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// `getpid(2)`, or where a sandbox refuses it, the number `/proc/self` links to
/// (`readlinkat`). A refused `getpid` returns the negated errno (a "pid" of -1 for `EPERM`),
/// never taken as a pid: `kill(2)` reads -1 as every process. The error, where both fail,
/// says both (`getpid`'s errno, then `/proc/self: …`).
pub(crate) fn try_getpid() -> io::Result<Pid> {
    let raw = nix::unistd::getpid().as_raw();
    let pid = match u32::try_from(raw).ok().and_then(Pid::new) {
        Some(pid) => pid,
        None => {
            // The kernel's answer as glibc passes it on: the negated errno.
            let refused = io::Error::from_raw_os_error(raw.checked_neg().unwrap_or(libc::EINVAL));
            proc_link_pid("/proc/self").map_err(|e| {
                io::Error::new(
                    refused.kind(),
                    format!(
                        "{refused}{}; /proc/self: {e}",
                        super::refused_hint(&refused)
                    ),
                )
            })?
        }
    };
    OWN_PID.store(pid.get() as i32, std::sync::atomic::Ordering::Relaxed);
    Ok(pid)
}

/// The leading number of the link `path` (`/proc/self`: `PID`; `/proc/thread-self`:
/// `PID/task/TID`).
fn proc_link_pid(path: &str) -> io::Result<Pid> {
    let link = rustix::fs::readlink(path, Vec::new())?;
    let text = link.to_string_lossy();
    text.split('/')
        .next()
        .and_then(|n| n.parse::<u32>().ok())
        .and_then(Pid::new)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{path} -> {text}")))
}

/// This process's pid: [`try_getpid`]. The master checks before its first fork that it can
/// learn it ([`probe_master_calls`]); its workers inherit its sandbox, so the check holds for
/// them too.
pub(crate) fn getpid() -> Pid {
    match try_getpid() {
        Ok(pid) => pid,
        Err(e) => panic!("getpid: {e}"),
    }
}

/// The pid [`try_getpid`] last found in this process, if it did: for a signal handler, which
/// cannot read `/proc`. Async-signal-safe.
pub(crate) fn own_pid_cached() -> Option<Pid> {
    u32::try_from(OWN_PID.load(std::sync::atomic::Ordering::Relaxed))
        .ok()
        .and_then(Pid::new)
}

/// `gettid(2)`, or where a sandbox refuses it, the last number of `/proc/thread-self`'s link;
/// `None` where both fail.
pub(crate) fn gettid() -> Option<Pid> {
    let raw = nix::unistd::gettid().as_raw();
    if let Some(tid) = u32::try_from(raw).ok().and_then(Pid::new) {
        return Some(tid);
    }
    let link = rustix::fs::readlink("/proc/thread-self", Vec::new()).ok()?;
    let text = link.to_string_lossy();
    text.rsplit('/')
        .next()?
        .parse::<u32>()
        .ok()
        .and_then(Pid::new)
}

/// `getppid(2)`; `None` when the parent is outside this process's pid namespace (0), or
/// where a sandbox refuses the call (the negated errno, never taken as a pid).
pub(crate) fn getppid() -> Option<Pid> {
    u32::try_from(nix::unistd::getppid().as_raw())
        .ok()
        .and_then(Pid::new)
}

/// In a freshly forked child: the parent's pid is no longer this process's; learnt again, for
/// the signal handlers ([`own_pid_cached`]).
pub(super) fn relearn_after_fork() {
    OWN_PID.store(0, std::sync::atomic::Ordering::Relaxed);
    let _ = try_getpid();
}
