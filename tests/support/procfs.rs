//! Process, descriptor and socket state read from `/proc`: the tests observe masters and
//! workers from outside with it, and the fixtures report their own state with it.
//!
//! Every reader tolerates processes vanishing mid-read: a process (or descriptor) that
//! cannot be read is simply absent from the answer.

use std::ffi::{CStr, CString};
use std::fs;

/// The names in the directory at `path` (`.` and `..` left out); `None` where it cannot be
/// opened. Through libc's `opendir`, `readdir` and `closedir`, whose failure is ignored:
/// std's `ReadDir` panics where `closedir` fails (`unexpected error during closedir`), and
/// the fixtures must report their state under a sandbox that refuses `close`.
pub fn dir_names(path: &str) -> Option<Vec<String>> {
    let path = CString::new(path).ok()?;
    // SAFETY: `path` is a valid C string; the result is checked for null.
    let dir = unsafe { libc::opendir(path.as_ptr()) };
    if dir.is_null() {
        return None;
    }
    let mut names = Vec::new();
    loop {
        // SAFETY: `dir` is an open directory stream, used by this thread alone.
        let entry = unsafe { libc::readdir(dir) };
        if entry.is_null() {
            break;
        }
        // SAFETY: `entry` points to a dirent that stays valid until the next readdir on
        // `dir`; `d_name` is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        let name = name.to_string_lossy();
        if name != "." && name != ".." {
            names.push(name.into_owned());
        }
    }
    // SAFETY: `dir` is open and not used after this; a failure (a refused `close`) leaves
    // the descriptor open, which is all it can do.
    unsafe { libc::closedir(dir) };
    Some(names)
}

// ---- /proc/PID/stat: state, parent, process group ----------------------------------------

/// The fields of `/proc/PID/stat` the tests use.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    /// `R`, `S`, `T`, `Z`, …
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
}

impl Stat {
    /// Whether the process has ended (a zombie waiting to be reaped, or being torn down).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// `/proc/PID/stat`, or `None` if there is no such process.
pub fn stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Stat { state, ppid, pgrp })
}

/// Whether `pid`, a member of process group `pgid`, has ended: no such process, a zombie,
/// or a reused pid that belongs to another group.
pub fn is_gone(pid: u32, pgid: u32) -> bool {
    match stat(pid) {
        None => true,
        Some(s) => s.is_dead() || s.pgrp != pgid,
    }
}

/// Whether `pid` is a live process: not gone, not a zombie (an orphan reparented to an
/// init that does not reap stays a zombie).
pub fn is_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| !s.is_dead())
}

// ---- Processes: children, zombies, process groups ----------------------------------------

/// Every process id in `/proc`.
pub fn all_pids() -> Vec<u32> {
    dir_names("/proc")
        .unwrap_or_default()
        .iter()
        .filter_map(|name| name.parse().ok())
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

/// The children of `pid` that still run, sorted.
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

// ---- /proc/PID/status: signal sets, threads ----------------------------------------------

/// The value of `field` (`SigBlk`, `Threads`, …) in a `status` file, trimmed.
fn status_field_at(path: &str, field: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        Some(value.trim().to_owned())
    })
}

/// The value of `field` in `/proc/PID/status`, trimmed.
pub fn status_field(pid: u32, field: &str) -> Option<String> {
    status_field_at(&format!("/proc/{pid}/status"), field)
}

/// A hexadecimal signal-set field of `/proc/PID/status` (`SigBlk`, `SigIgn`, `SigCgt`).
/// `SigBlk` is the mask of the process's main thread; see [`thread_masks`] for the others.
pub fn sigset_field(pid: u32, field: &str) -> Option<u64> {
    u64::from_str_radix(&status_field(pid, field)?, 16).ok()
}

/// The bit of `signal` in a `/proc` signal set.
pub fn sig_bit(signal: i32) -> u64 {
    1 << (signal - 1)
}

/// Each thread of `pid` with its blocked-signal mask (`SigBlk` of `/proc/PID/task/TID`).
pub fn thread_masks(pid: u32) -> Vec<(u32, u64)> {
    let Some(names) = dir_names(&format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    names
        .iter()
        .filter_map(|name| {
            let tid: u32 = name.parse().ok()?;
            let blk = status_field_at(&format!("/proc/{pid}/task/{tid}/status"), "SigBlk")?;
            Some((tid, u64::from_str_radix(&blk, 16).ok()?))
        })
        .collect()
}

// ---- Descriptors --------------------------------------------------------------------------

/// Every open descriptor of `pid` with its target (`socket:[123]`, `pipe:[…]`,
/// `anon_inode:[eventpoll]`, a path), sorted by descriptor number.
pub fn fds(pid: u32) -> Vec<(i32, String)> {
    let Some(names) = dir_names(&format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut out: Vec<(i32, String)> = names
        .iter()
        .filter_map(|name| {
            let fd = name.parse().ok()?;
            let target = fs::read_link(format!("/proc/{pid}/fd/{name}")).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect();
    out.sort_unstable();
    out
}

/// One open descriptor of a process: its number, its target (as in [`fds`]) and its
/// `fdinfo` flags (as in [`fd_flags`]).
#[derive(Debug, Clone)]
pub struct OpenFd {
    pub fd: i32,
    pub target: String,
    pub flags: i32,
}

impl OpenFd {
    /// `O_CLOEXEC` (the kernel shows `FD_CLOEXEC` so in `fdinfo`).
    pub fn close_on_exec(&self) -> bool {
        self.flags & libc::O_CLOEXEC != 0
    }

    /// Opened for writing only (the write end of a pipe).
    pub fn write_only(&self) -> bool {
        self.flags & libc::O_ACCMODE == libc::O_WRONLY
    }
}

/// [`fds`] with each descriptor's flags (those that close while they are read are left
/// out).
pub fn open_fds(pid: u32) -> Vec<OpenFd> {
    fds(pid)
        .into_iter()
        .filter_map(|(fd, target)| {
            let flags = fd_flags(pid, fd)?;
            Some(OpenFd { fd, target, flags })
        })
        .collect()
}

/// The targets of every descriptor of `pid`, in descriptor order.
pub fn fd_targets(pid: u32) -> Vec<String> {
    fds(pid).into_iter().map(|(_, target)| target).collect()
}

/// The number of descriptors open in `pid`.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(dir_names(&format!("/proc/{pid}/fd"))?.len())
}

/// The `flags:` field of `/proc/PID/fdinfo/FD`: the file status flags of the open file
/// description (`O_NONBLOCK`, …) and, for this descriptor, `O_CLOEXEC` when `FD_CLOEXEC` is
/// set. Printed in octal by the kernel.
pub fn fd_flags(pid: u32, fd: i32) -> Option<i32> {
    let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    text.lines().find_map(|line| {
        let value = line.strip_prefix("flags:")?;
        i32::from_str_radix(value.trim(), 8).ok()
    })
}

/// The inode of a `socket:[INODE]` descriptor target.
pub fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The socket inodes `pid` holds, in descriptor order.
pub fn socket_inodes(pid: u32) -> Vec<u64> {
    fds(pid)
        .iter()
        .filter_map(|(_, t)| socket_inode(t))
        .collect()
}

/// The descriptors of `pid` that refer to socket `inode`.
pub fn fds_of_socket(pid: u32, inode: u64) -> Vec<i32> {
    fds(pid)
        .into_iter()
        .filter(|(_, t)| socket_inode(t) == Some(inode))
        .map(|(fd, _)| fd)
        .collect()
}

// ---- Listening TCP sockets ----------------------------------------------------------------

/// A listening TCP socket as `/proc/net/tcp{,6}` shows it.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    pub inode: u64,
    /// The accept queue: connections the kernel completed that nobody accepted yet.
    pub queued: u32,
}

/// Every listening TCP socket (IPv4 and IPv6) on `port`.
pub fn listening(port: u16) -> Vec<Listening> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some(p) = f[1].rsplit(':').next() else {
                continue;
            };
            if u16::from_str_radix(p, 16).ok() != Some(port) {
                continue;
            }
            // For a listening socket, rx_queue is the accept queue's length.
            let queued = f[4]
                .split(':')
                .nth(1)
                .and_then(|q| u32::from_str_radix(q, 16).ok())
                .unwrap_or(0);
            if let Ok(inode) = f[9].parse() {
                out.push(Listening { inode, queued });
            }
        }
    }
    out
}

/// The accept queue length of the listening socket `inode` on `port`.
pub fn queued(port: u16, inode: u64) -> Option<u32> {
    listening(port)
        .into_iter()
        .find(|l| l.inode == inode)
        .map(|l| l.queued)
}

/// The inodes of the listening sockets on `port` that `pid` holds, in descriptor order.
pub fn listeners_of(pid: u32, port: u16) -> Vec<u64> {
    let on_port: Vec<u64> = listening(port).iter().map(|l| l.inode).collect();
    socket_inodes(pid)
        .into_iter()
        .filter(|i| on_port.contains(i))
        .collect()
}

// ---- Unix sockets -------------------------------------------------------------------------

/// The inodes of every unix socket in this network namespace (`/proc/net/unix`).
pub fn unix_socket_inodes() -> Vec<u64> {
    let Ok(text) = fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(6)?.parse().ok())
        .collect()
}

/// The inodes of the unix sockets `pid` holds, in descriptor order.
pub fn unix_sockets_of(pid: u32) -> Vec<u64> {
    let unix = unix_socket_inodes();
    socket_inodes(pid)
        .into_iter()
        .filter(|i| unix.contains(i))
        .collect()
}

// ---- Environment and command line ---------------------------------------------------------

/// The `NAME=VALUE` entries of `/proc/PID/environ` (the environment the process was
/// executed with: later `setenv`/`unsetenv` calls do not show there).
pub fn environ(pid: u32) -> Option<Vec<String>> {
    let bytes = fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        bytes
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// The value of `name` in an environment read by [`environ`], if present.
pub fn environ_var(env: &[String], name: &str) -> Option<String> {
    env.iter()
        .find_map(|e| e.strip_prefix(name)?.strip_prefix('=').map(str::to_owned))
}

/// `/proc/PID/cmdline`, split into its arguments.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(&bytes);
    Some(
        bytes
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}
