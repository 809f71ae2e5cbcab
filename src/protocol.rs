//! The protocol between a master and its workers, and with systemd: the names of its
//! environment variables and the descriptors it passes, in one place.
//!
//! * The child protocol of Go fasthttp's prefork, which this crate keeps: a worker is
//!   marked by [`CHILD_ENV`] and finds its listener on [`LISTENER_FD`]. A Rust worker and a
//!   Go fasthttp worker are interchangeable under either master.
//! * This crate's additions, set by its own master in exec mode and ignored by a fasthttp
//!   master: the slot ([`WORKER_ID_ENV`]), the readiness pipe ([`READY_FD_ENV`] on
//!   [`READY_FD`]), the heartbeat table ([`HEARTBEAT_FD_ENV`] on [`HEARTBEAT_FD`]), and the
//!   readiness report of a new master to the old one in a binary upgrade
//!   ([`UPGRADE_FD_ENV`]).
//! * systemd's socket activation ([`LISTEN_PID_ENV`], [`LISTEN_FDS_ENV`],
//!   [`LISTEN_FDNAMES_ENV`], from [`LISTEN_FDS_START`]), which a binary upgrade also uses to
//!   hand the sockets to the new master.
//!
//! The repository's `docs/protocol.md` describes each in full. The parsers of these
//! variables (crate-internal) are pure functions of the raw values: none reads the
//! environment itself, so they are tested and fuzzed with any input; a malformed value is
//! [`Error::InvalidEnv`], naming the variable, the value found and what was expected.

use std::os::fd::RawFd;

use crate::error::Error;

/// The descriptor an exec-mode worker finds its listener on (fasthttp's protocol).
pub const LISTENER_FD: RawFd = 3;
/// With reuseport in exec mode under a master that passes no socket on [`LISTENER_FD`]: the
/// address for the worker to bind (port 0 then means the same port in every worker). A
/// worker honours it; this crate's master does not set it (it passes each worker its socket).
pub(crate) const REUSEPORT_ADDR_ENV: &str = "PREFORK_REUSEPORT_ADDR";
/// The environment variable that names, in an exec-mode worker, the descriptor of the
/// master's heartbeat table (set only when the master has a `worker_timeout`).
pub const HEARTBEAT_FD_ENV: &str = "PREFORK_HEARTBEAT_FD";
/// The descriptor on which this crate's master passes the heartbeat table.
pub const HEARTBEAT_FD: RawFd = 5;

/// Marks a process as a prefork child: set to `1` by the master (ours, or Go fasthttp's).
pub const CHILD_ENV: &str = "FASTHTTP_PREFORK_CHILD";
/// The worker's slot, set by our master in exec mode.
pub const WORKER_ID_ENV: &str = "PREFORK_WORKER_ID";
/// The descriptor on which an exec-mode worker of our master reports that it is ready (this
/// crate's addition to the protocol; absent under a fasthttp master).
pub const READY_FD_ENV: &str = "PREFORK_READY_FD";
/// The descriptor our master puts the readiness pipe on.
pub const READY_FD: RawFd = 4;
/// The descriptor on which a new master started by a binary upgrade reports to the old one
/// that all its workers are ready (this crate's).
pub const UPGRADE_FD_ENV: &str = "PREFORK_UPGRADE_FD";
/// The descriptor on which a new master reads from its old master while that one is on
/// upgrade probation (this crate's): `HANDBACK` when the old master took the service back,
/// the end of the pipe when the probation ended.
pub const PROBATION_FD_ENV: &str = "PREFORK_PROBATION_FD";
/// systemd socket activation: the pid the passed descriptors are meant for.
pub const LISTEN_PID_ENV: &str = "LISTEN_PID";
/// systemd socket activation: how many descriptors were passed, from fd 3 on.
pub const LISTEN_FDS_ENV: &str = "LISTEN_FDS";
/// systemd socket activation: the passed descriptors' names, colon-separated.
pub const LISTEN_FDNAMES_ENV: &str = "LISTEN_FDNAMES";

/// The names of an exec-mode worker's listeners, colon-separated as `LISTEN_FDNAMES`, one per
/// descriptor from [`LISTENER_FD`] on (this crate's addition: set by its master for the
/// listeners of `Prefork::serve`; absent under `listen_and_serve`, whose one listener is on
/// fd 3 alone, and under a fasthttp master). Its count moves the readiness pipe and the
/// heartbeat table after the listeners (their variables name their numbers).
pub const LISTEN_FDNAMES_CHILD_ENV: &str = "PREFORK_LISTEN_FDNAMES";

/// The largest worker id `PREFORK_WORKER_ID` may carry.
pub(crate) const MAX_WORKER_ID: usize = 65_535;
/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: i32 = 3;
/// The most descriptors `LISTEN_FDS` may announce. Far more than any socket unit passes; a
/// larger count is taken for a corrupted environment rather than trusted (each announced
/// descriptor costs a name and a check).
pub(crate) const MAX_LISTEN_FDS: usize = 1024;
/// The longest descriptor name systemd allows (`FDNAME_MAX`).
pub(crate) const MAX_FDNAME_LEN: usize = 255;
/// The name systemd gives each descriptor when `LISTEN_FDNAMES` is not set.
pub(crate) const DEFAULT_FDNAME: &str = "unknown";

/// Descriptors passed by systemd socket activation: fds `3 .. 3 + count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenFds {
    /// How many descriptors were passed, `1..=MAX_LISTEN_FDS`.
    pub(crate) count: usize,
    /// One name per descriptor, in fd order: from `LISTEN_FDNAMES`, or `"unknown"` each.
    pub(crate) names: Vec<String>,
}

fn invalid(var: &'static str, value: &[u8], reason: impl Into<String>) -> Error {
    Error::InvalidEnv {
        var,
        value: String::from_utf8_lossy(value).into_owned(),
        reason: reason.into(),
    }
}

/// Parses a canonical decimal number: ASCII digits only, no sign, no whitespace, no leading
/// zero (except `0` itself), at most `max`. `None` for anything else, overflow included.
fn parse_decimal(value: &[u8], max: u64) -> Option<u64> {
    match value {
        [] => return None,
        [b'0'] => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    let mut n: u64 = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        if n > max {
            return None;
        }
    }
    Some(n)
}

/// Parses `FASTHTTP_PREFORK_CHILD`: absent or empty → `false`, exactly `1` → `true`.
///
/// Anything else (`0`, `true`, ` 1`, `1\n`) is an error. fasthttp itself treats every value
/// but `1` as "not a child"; refusing the others catches a typo that would otherwise make a
/// child run as a second master.
pub(crate) fn parse_child_flag(value: Option<&[u8]>) -> Result<bool, Error> {
    match value {
        None | Some(b"") => Ok(false),
        Some(b"1") => Ok(true),
        Some(v) => Err(invalid(
            CHILD_ENV,
            v,
            "expected \"1\" (a prefork child), or the variable unset or empty (not a child)",
        )),
    }
}

/// Parses `PREFORK_READY_FD`: absent, or a descriptor number from 3 to 1023.
pub(crate) fn parse_ready_fd(value: Option<&[u8]>) -> Result<Option<i32>, Error> {
    let Some(v) = value else {
        return Ok(None);
    };
    match parse_decimal(v, 1023) {
        Some(n) if n >= 3 => Ok(i32::try_from(n).ok()),
        _ => Err(invalid(
            READY_FD_ENV,
            v,
            "expected a descriptor number from 3 to 1023, digits only".to_owned(),
        )),
    }
}

/// Parses `PREFORK_UPGRADE_FD`: absent, or a descriptor number from 3 to 1027 (after at most
/// `MAX_LISTEN_FDS` sockets).
pub(crate) fn parse_upgrade_fd(value: Option<&[u8]>) -> Result<Option<i32>, Error> {
    let Some(v) = value else {
        return Ok(None);
    };
    let max = (LISTEN_FDS_START as u64) + MAX_LISTEN_FDS as u64;
    match parse_decimal(v, max) {
        Some(n) if n >= 3 => Ok(i32::try_from(n).ok()),
        _ => Err(invalid(
            UPGRADE_FD_ENV,
            v,
            format!("expected a descriptor number from 3 to {max}, digits only"),
        )),
    }
}

/// Parses `PREFORK_WORKER_ID`: absent → `None`; a canonical decimal number (digits only, no
/// sign, no whitespace, no leading zero except `0` itself) up to [`MAX_WORKER_ID`] →
/// `Some(id)`. Anything else, the empty string included, is an error.
pub(crate) fn parse_worker_id(value: Option<&[u8]>) -> Result<Option<usize>, Error> {
    let Some(v) = value else {
        return Ok(None);
    };
    match parse_decimal(v, MAX_WORKER_ID as u64) {
        // Cannot fail: the value is at most MAX_WORKER_ID, which is a usize.
        Some(n) => Ok(usize::try_from(n).ok()),
        None => Err(invalid(
            WORKER_ID_ENV,
            v,
            format!(
                "expected a worker id: a decimal number from 0 to {MAX_WORKER_ID}, digits only, \
                 without sign, whitespace or leading zeros"
            ),
        )),
    }
}

/// Whether `name` is a valid descriptor name: 1 to [`MAX_FDNAME_LEN`] bytes of printable
/// ASCII (`0x20..=0x7e`) other than `:`.
fn fdname_is_valid(name: &[u8]) -> bool {
    (1..=MAX_FDNAME_LEN).contains(&name.len())
        && name
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b':')
}

/// Parses `PREFORK_LISTEN_FDNAMES`: `Ok(None)` when unset or empty, else its names (1 to
/// [`MAX_LISTEN_FDS`] of them, each a valid descriptor name as in `LISTEN_FDNAMES`).
pub(crate) fn parse_child_fdnames(value: Option<&[u8]>) -> Result<Option<Vec<String>>, Error> {
    let Some(all) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let parts: Vec<&[u8]> = all.split(|&b| b == b':').collect();
    if parts.len() > MAX_LISTEN_FDS {
        return Err(invalid(
            LISTEN_FDNAMES_CHILD_ENV,
            all,
            format!("at most {MAX_LISTEN_FDS} names"),
        ));
    }
    let mut names = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        if !fdname_is_valid(part) {
            return Err(invalid(
                LISTEN_FDNAMES_CHILD_ENV,
                all,
                format!(
                    "name {} (for fd {}) is invalid: expected 1 to {MAX_FDNAME_LEN} bytes of \
                     printable ASCII without ':'",
                    i + 1,
                    LISTENER_FD as usize + i
                ),
            ));
        }
        names.push(String::from_utf8_lossy(part).into_owned());
    }
    Ok(Some(names))
}

/// Whether `name` may name a listener: a valid descriptor name (see [`fdname_is_valid`]).
pub(crate) fn listener_name_is_valid(name: &str) -> bool {
    fdname_is_valid(name.as_bytes())
}

/// Parses the systemd socket-activation variables as `sd_listen_fds(3)` does, strictly.
///
/// * `LISTEN_PID` unset → `Ok(None)`: no socket activation (`LISTEN_FDS` is then ignored).
/// * `LISTEN_PID` not a canonical decimal pid (`1..=2147483647`) → error naming it.
/// * `LISTEN_PID` another process's pid → `Ok(None)`: the variables are not meant for us
///   (typically inherited from a parent that was activated).
/// * `LISTEN_FDS` unset while `LISTEN_PID` names us → error naming `LISTEN_FDS`.
/// * `LISTEN_FDS` not a canonical decimal number up to [`MAX_LISTEN_FDS`] → error; `0` →
///   `Ok(None)`.
/// * `LISTEN_FDNAMES` unset or empty → each descriptor is named `"unknown"`, as systemd does.
///   Otherwise it must hold exactly `count` colon-separated names, each 1 to 255 bytes of
///   printable ASCII without `:`; else an error naming `LISTEN_FDNAMES`. (systemd itself
///   also accepts empty names; no socket unit produces one.)
pub(crate) fn parse_listen_fds(
    listen_pid: Option<&[u8]>,
    listen_fds: Option<&[u8]>,
    listen_fdnames: Option<&[u8]>,
    our_pid: u32,
) -> Result<Option<ListenFds>, Error> {
    let Some(pid) = listen_pid else {
        return Ok(None);
    };
    let pid = match parse_decimal(pid, i32::MAX as u64) {
        Some(n) if n > 0 => n,
        _ => {
            return Err(invalid(
                LISTEN_PID_ENV,
                pid,
                "expected a process id: a decimal number from 1 to 2147483647, digits only, \
                 without sign, whitespace or leading zeros",
            ));
        }
    };
    if pid != u64::from(our_pid) {
        return Ok(None);
    }
    let Some(fds) = listen_fds else {
        return Err(invalid(
            LISTEN_FDS_ENV,
            b"",
            format!(
                "the variable is unset, but LISTEN_PID={pid} names this process: expected the \
                 number of passed descriptors"
            ),
        ));
    };
    let Some(count) = parse_decimal(fds, MAX_LISTEN_FDS as u64) else {
        return Err(invalid(
            LISTEN_FDS_ENV,
            fds,
            format!(
                "expected the number of passed descriptors: a decimal number from 0 to \
                 {MAX_LISTEN_FDS}, digits only, without sign, whitespace or leading zeros"
            ),
        ));
    };
    // At most MAX_LISTEN_FDS, so it fits a usize and 3 + count fits an fd number.
    let count = count as usize;
    if count == 0 {
        return Ok(None);
    }
    let names = match listen_fdnames {
        None | Some(b"") => vec![DEFAULT_FDNAME.to_owned(); count],
        Some(all) => {
            let parts: Vec<&[u8]> = all.split(|&b| b == b':').collect();
            if parts.len() != count {
                return Err(invalid(
                    LISTEN_FDNAMES_ENV,
                    all,
                    format!(
                        "expected {count} colon-separated descriptor name{} (LISTEN_FDS={count}), \
                         found {}",
                        if count == 1 { "" } else { "s" },
                        parts.len()
                    ),
                ));
            }
            let mut names = Vec::with_capacity(count);
            for (i, part) in parts.iter().enumerate() {
                if !fdname_is_valid(part) {
                    return Err(invalid(
                        LISTEN_FDNAMES_ENV,
                        all,
                        format!(
                            "name {} (for fd {}) is invalid: expected 1 to {MAX_FDNAME_LEN} \
                             bytes of printable ASCII without ':'",
                            i + 1,
                            LISTEN_FDS_START as usize + i
                        ),
                    ));
                }
                // Printable ASCII: always valid UTF-8.
                names.push(String::from_utf8_lossy(part).into_owned());
            }
            names
        }
    };
    Ok(Some(ListenFds { count, names }))
}

#[cfg(test)]
mod tests;
