//! The report lines a fixture prints on stdout, one per event, and their parsers: the
//! fixture side writes them with the functions here, the test side reads them through
//! [`Fixture`](super::process::Fixture). Lines every fixture shares:
//!
//! | line | printed by | when |
//! |---|---|---|
//! | `master PID` | master | at start |
//! | `spawn PID` | `on_child_spawn` | every worker start |
//! | `ready PID…` | `on_master_ready` | pids in slot order |
//! | `recover OLD NEW` | `on_child_recover` | |
//! | `exit SLOT PID HOW` | `on_child_exit` | `HOW` is the `WorkerExit` debug form: `Code(101)`, `Signal(SIGKILL)` |
//! | `result ok` / `result err DISPLAY` + `debug DEBUG` | master | after each run |
//! | `children N zombies Z` | master | its own children (zombies included) after each run |
//! | `end CODE` | master | last line before it exits with CODE |
//!
//! Each fixture adds lines of its own (see its module).

use std::fmt::{Debug, Display};
use std::io::Write;

use prefork::Prefork;

use super::procfs;

// ---- The fixture side ---------------------------------------------------------------------

/// Prints one report line with one `write` and flushes it: the test sees it at once, lines
/// of the master and its workers (who share the pipe) never interleave, and no buffered
/// bytes are left to be duplicated by the next fork.
pub fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{}\n", line.as_ref()).as_bytes());
    let _ = out.flush();
}

/// Prints one line on stderr with one `write`, so lines of several processes do not
/// interleave.
pub fn complain(line: impl AsRef<str>) {
    let _ = std::io::stderr().write_all(format!("{}\n", line.as_ref()).as_bytes());
}

/// One `write(2)` to stdout, bypassing std's buffer: for signal handlers and for processes
/// forked behind the library's back.
pub fn write_raw(bytes: &[u8]) {
    // SAFETY: the pointer and length describe a live byte slice.
    unsafe { libc::write(1, bytes.as_ptr().cast(), bytes.len()) };
}

/// `spawn PID`.
pub fn spawned(pid: u32) {
    say(format!("spawn {pid}"));
}

/// `ready PID…`, from the `(slot, pid)` of every worker in slot order.
pub fn ready(workers: &[(usize, u32)]) {
    let list: Vec<String> = workers.iter().map(|(_, pid)| pid.to_string()).collect();
    say(format!("ready {}", list.join(" ")));
}

/// `recover OLD NEW`.
pub fn recovered(old: u32, new: u32) {
    say(format!("recover {old} {new}"));
}

/// `exit SLOT PID HOW`.
pub fn exited(slot: usize, pid: u32, how: impl Debug) {
    say(format!("exit {slot} {pid} {how:?}"));
}

/// `master PID`.
pub fn master() {
    say(format!("master {}", own_pid()));
}

/// `result ok`, or `result err DISPLAY` and `debug DEBUG`; whether the run was `Ok`.
pub fn result<E: Display + Debug>(result: &Result<(), E>) -> bool {
    match result {
        Ok(()) => {
            say("result ok");
            true
        }
        Err(e) => {
            say(format!("result err {e}"));
            say(format!("debug {e:?}"));
            false
        }
    }
}

/// `children N zombies Z`: this process's children, zombies included, and its zombies.
pub fn children() {
    let children = procfs::children(own_pid());
    let zombies = children.iter().filter(|(_, s)| s.is_dead()).count();
    say(format!("children {} zombies {zombies}", children.len()));
}

/// `end CODE`.
pub fn end(code: i32) {
    say(format!("end {code}"));
}

/// `p` with hooks that report `spawn`, `ready`, `recover` and `exit` and never fail.
pub fn hooks(p: Prefork) -> Prefork {
    p.on_child_spawn(|_slot, pid| {
        spawned(pid);
        Ok(())
    })
    .on_master_ready(|workers| {
        ready(workers);
        Ok(())
    })
    .on_child_recover(|_slot, old, new| {
        recovered(old, new);
        Ok(())
    })
    .on_child_exit(|slot, pid, how| {
        exited(slot, pid, how);
        Ok(())
    })
}

// ---- The test side ------------------------------------------------------------------------

/// A worker exit reported by an `exit` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub slot: usize,
    pub pid: u32,
    /// `Code(N)` or `Signal(N)`.
    pub how: String,
}

/// The pids of a `ready` line (after the prefix).
pub fn parse_pids(list: &str) -> Vec<u32> {
    list.split_whitespace()
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("a pid in the ready line {list:?}"))
        })
        .collect()
}

/// `recover OLD NEW`.
pub fn parse_recover(line: &str) -> Option<(u32, u32)> {
    let (old, new) = line.strip_prefix("recover ")?.split_once(' ')?;
    Some((old.parse().ok()?, new.parse().ok()?))
}

/// `exit SLOT PID HOW`.
pub fn parse_exit(line: &str) -> Option<Exit> {
    let mut parts = line.strip_prefix("exit ")?.split_whitespace();
    Some(Exit {
        slot: parts.next()?.parse().ok()?,
        pid: parts.next()?.parse().ok()?,
        how: parts.next()?.to_owned(),
    })
}

/// `children N zombies Z`.
pub fn parse_children(line: &str) -> Option<(usize, usize)> {
    let (n, z) = line.strip_prefix("children ")?.split_once(" zombies ")?;
    Some((n.parse().ok()?, z.parse().ok()?))
}

/// This process's pid: `std::process::id()`, or where a sandbox refuses `getpid` (which then
/// returns the negated errno, a "pid" of -1 for `EPERM`), the number `/proc/self` links to.
pub fn own_pid() -> u32 {
    let pid = std::process::id();
    if i32::try_from(pid).is_ok_and(|p| p > 0) {
        return pid;
    }
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|link| link.to_str()?.parse().ok())
        .expect("getpid refused, and /proc/self unreadable")
}
