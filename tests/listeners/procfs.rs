//! Reading process and socket state from `/proc`, to observe masters and workers from
//! outside. Every reader tolerates processes vanishing mid-read: what cannot be read is
//! simply absent from the answer.

use std::fs;

#[path = "../support/stat.rs"]
mod stat;
pub use stat::{is_gone, stat};

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

/// The value of `name` in `/proc/PID/environ`, if present.
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

/// Every open descriptor of `pid` with its target (`socket:[123]`, `pipe:[…]`, a path),
/// sorted by descriptor number.
pub fn fds(pid: u32) -> Vec<(i32, String)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut out: Vec<(i32, String)> = dir
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(entry.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect();
    out.sort_unstable();
    out
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
