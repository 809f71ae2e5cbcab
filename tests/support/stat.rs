//! `/proc/PID/stat`, shared by the process-test binaries (each includes this file with
//! `#[path]`). A process that cannot be read is simply absent from the answer.

use std::fs;

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
