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

/// Parses `PREFORK_WORKER_ID`: absent → `None`; a canonical decimal number (digits only, no
/// sign, no whitespace, no leading zero except `0` itself) up to [`MAX_WORKER_ID`] →
/// `Some(id)`. Anything else, the empty string included, is an error.
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
mod tests {
    use super::*;

    fn env_err(r: Result<impl std::fmt::Debug, Error>) -> (&'static str, String, String) {
        match r {
            Err(Error::InvalidEnv { var, value, reason }) => (var, value, reason),
            other => panic!("expected InvalidEnv, got {other:?}"),
        }
    }

    fn var_of(r: Result<impl std::fmt::Debug, Error>) -> &'static str {
        env_err(r).0
    }

    // ---- FASTHTTP_PREFORK_CHILD

    #[test]
    fn child_flag_absent_or_empty_is_false() {
        assert!(!parse_child_flag(None).unwrap());
        assert!(!parse_child_flag(Some(b"")).unwrap());
    }

    #[test]
    fn child_flag_one_is_true() {
        assert!(parse_child_flag(Some(b"1")).unwrap());
    }

    #[test]
    fn child_flag_anything_else_is_an_error() {
        for v in [
            &b"0"[..],
            b" 1",
            b"1 ",
            b"1\n",
            b"true",
            b"yes",
            b"01",
            b"11",
            b"+1",
            b"\xff",
            b"1\0",
        ] {
            let (var, value, reason) = env_err(parse_child_flag(Some(v)));
            assert_eq!(var, CHILD_ENV);
            assert_eq!(value, String::from_utf8_lossy(v));
            assert!(reason.contains("\"1\""), "{reason}");
        }
    }

    #[test]
    fn child_flag_error_display_names_variable_and_value() {
        let msg = parse_child_flag(Some(b"true")).unwrap_err().to_string();
        assert!(msg.contains("FASTHTTP_PREFORK_CHILD"), "{msg}");
        assert!(msg.contains("\"true\""), "{msg}");
    }

    // ---- PREFORK_WORKER_ID

    #[test]
    fn worker_id_absent_is_none() {
        assert_eq!(parse_worker_id(None).unwrap(), None);
    }

    #[test]
    fn worker_id_valid_values() {
        for (v, n) in [
            (&b"0"[..], 0),
            (b"1", 1),
            (b"7", 7),
            (b"10", 10),
            (b"1024", 1024),
            (b"65535", 65535),
        ] {
            assert_eq!(parse_worker_id(Some(v)).unwrap(), Some(n), "{v:?}");
        }
    }

    #[test]
    fn worker_id_malformed_values() {
        for v in [
            &b""[..],
            b" ",
            b"00",
            b"01",
            b"007",
            b"+1",
            b"-1",
            b"-0",
            b" 1",
            b"1 ",
            b"1\n",
            b"1.0",
            b"1e3",
            b"0x10",
            b"one",
            b"\xd9\xa1", // ARABIC-INDIC DIGIT ONE: a digit, but not ASCII
            b"65536",
            b"99999999999999999999999999",
            b"18446744073709551616",
        ] {
            let (var, value, reason) = env_err(parse_worker_id(Some(v)));
            assert_eq!(var, WORKER_ID_ENV, "{v:?}");
            assert_eq!(value, String::from_utf8_lossy(v));
            assert!(reason.contains("65535"), "{reason}");
        }
    }

    #[test]
    fn worker_id_invalid_utf8_is_reported_lossily() {
        let (_, value, _) = env_err(parse_worker_id(Some(b"1\xff")));
        assert_eq!(value, "1\u{fffd}");
    }

    // ---- systemd socket activation

    const PID: u32 = 4242;

    fn listen(
        pid: Option<&str>,
        fds: Option<&str>,
        names: Option<&str>,
    ) -> Result<Option<ListenFds>, Error> {
        parse_listen_fds(
            pid.map(str::as_bytes),
            fds.map(str::as_bytes),
            names.map(str::as_bytes),
            PID,
        )
    }

    #[test]
    fn listen_pid_absent_means_no_activation_whatever_else_is_set() {
        assert_eq!(listen(None, None, None).unwrap(), None);
        assert_eq!(listen(None, Some("2"), Some("a:b")).unwrap(), None);
        assert_eq!(listen(None, Some("garbage"), Some("::")).unwrap(), None);
    }

    #[test]
    fn listen_pid_malformed_is_an_error_naming_it() {
        for v in [
            "",
            "0",
            "00",
            "04242",
            "+4242",
            "-4242",
            " 4242",
            "4242 ",
            "4242\n",
            "pid",
            "2147483648",
            "4294967296",
            "99999999999999999999",
        ] {
            let (var, value, reason) = env_err(listen(Some(v), Some("1"), None));
            assert_eq!(var, LISTEN_PID_ENV, "{v:?}");
            assert_eq!(value, v);
            assert!(reason.contains("process id"), "{reason}");
        }
    }

    #[test]
    fn listen_pid_of_another_process_is_ignored() {
        assert_eq!(listen(Some("1"), Some("1"), None).unwrap(), None);
        assert_eq!(listen(Some("4243"), Some("3"), None).unwrap(), None);
        // Not for us, so the other variables are not looked at.
        assert_eq!(listen(Some("4243"), None, None).unwrap(), None);
        assert_eq!(listen(Some("4243"), Some("x"), Some(":")).unwrap(), None);
        assert_eq!(listen(Some("2147483647"), Some("1"), None).unwrap(), None);
    }

    #[test]
    fn listen_pid_at_the_top_of_the_range_matches() {
        let r = parse_listen_fds(Some(b"2147483647"), Some(b"1"), None, i32::MAX as u32);
        assert_eq!(r.unwrap().unwrap().count, 1);
    }

    #[test]
    fn listen_fds_absent_for_us_is_an_error() {
        let (var, value, reason) = env_err(listen(Some("4242"), None, None));
        assert_eq!(var, LISTEN_FDS_ENV);
        assert_eq!(value, "");
        assert!(reason.contains("unset"), "{reason}");
        assert!(reason.contains("LISTEN_PID=4242"), "{reason}");
    }

    #[test]
    fn listen_fds_malformed_or_too_large_is_an_error() {
        for v in [
            "",
            "-1",
            "+1",
            " 1",
            "1 ",
            "01",
            "00",
            "1.5",
            "two",
            "1025",
            "65536",
            "4294967299",
        ] {
            let (var, value, reason) = env_err(listen(Some("4242"), Some(v), None));
            assert_eq!(var, LISTEN_FDS_ENV, "{v:?}");
            assert_eq!(value, v);
            assert!(reason.contains("1024"), "{reason}");
        }
    }

    #[test]
    fn listen_fds_zero_is_no_activation() {
        assert_eq!(listen(Some("4242"), Some("0"), None).unwrap(), None);
        assert_eq!(listen(Some("4242"), Some("0"), Some("a")).unwrap(), None);
    }

    #[test]
    fn listen_fds_without_names_defaults_to_unknown() {
        let fds = listen(Some("4242"), Some("3"), None).unwrap().unwrap();
        assert_eq!(fds.count, 3);
        assert_eq!(fds.names, ["unknown", "unknown", "unknown"]);
        // An empty LISTEN_FDNAMES counts as unset, as in sd_listen_fds_with_names.
        let fds = listen(Some("4242"), Some("2"), Some("")).unwrap().unwrap();
        assert_eq!(fds.names, ["unknown", "unknown"]);
    }

    #[test]
    fn listen_fds_at_the_bound() {
        let fds = listen(Some("4242"), Some("1024"), None).unwrap().unwrap();
        assert_eq!(fds.count, MAX_LISTEN_FDS);
        assert_eq!(fds.names.len(), MAX_LISTEN_FDS);
    }

    #[test]
    fn listen_fdnames_valid() {
        let fds = listen(Some("4242"), Some("1"), Some("http"))
            .unwrap()
            .unwrap();
        assert_eq!(
            fds,
            ListenFds {
                count: 1,
                names: vec!["http".into()],
            }
        );
        let fds = listen(Some("4242"), Some("3"), Some("web.socket:admin:x y~!"))
            .unwrap()
            .unwrap();
        assert_eq!(fds.names, ["web.socket", "admin", "x y~!"]);
        let long = "n".repeat(MAX_FDNAME_LEN);
        let fds = listen(Some("4242"), Some("1"), Some(&long))
            .unwrap()
            .unwrap();
        assert_eq!(fds.names, [long]);
    }

    #[test]
    fn listen_fdnames_wrong_count_is_an_error() {
        for (fds, names) in [
            ("1", "a:b"),
            ("2", "a"),
            ("3", "a:b"),
            ("1", ":"),
            ("2", "a:b:"),
        ] {
            let (var, value, reason) = env_err(listen(Some("4242"), Some(fds), Some(names)));
            assert_eq!(var, LISTEN_FDNAMES_ENV, "{fds} {names}");
            assert_eq!(value, names);
            assert!(reason.contains(&format!("expected {fds} ")), "{reason}");
        }
    }

    #[test]
    fn listen_fdnames_invalid_name_is_an_error() {
        let long = "n".repeat(MAX_FDNAME_LEN + 1);
        for (fds, names) in [
            ("2", ":b"),
            ("2", "a:"),
            ("3", "a::c"),
            ("1", "tab\there"),
            ("1", "nl\n"),
            ("1", "del\x7f"),
            ("1", "caf\u{e9}"),
            ("1", long.as_str()),
        ] {
            let (var, _, reason) = env_err(listen(Some("4242"), Some(fds), Some(names)));
            assert_eq!(var, LISTEN_FDNAMES_ENV, "{names:?}");
            assert!(reason.contains("printable ASCII"), "{reason}");
        }
        let (_, _, reason) = env_err(listen(Some("4242"), Some("3"), Some("a::c")));
        assert!(reason.contains("name 2 (for fd 4)"), "{reason}");
    }

    #[test]
    fn listen_fdnames_non_utf8_is_an_error_not_a_panic() {
        let r = parse_listen_fds(Some(b"4242"), Some(b"1"), Some(b"\xff\xfe"), PID);
        assert_eq!(var_of(r), LISTEN_FDNAMES_ENV);
    }

    #[test]
    fn child_fdnames() {
        assert_eq!(parse_child_fdnames(None).unwrap(), None);
        assert_eq!(parse_child_fdnames(Some(b"")).unwrap(), None);
        assert_eq!(
            parse_child_fdnames(Some(b"web:#1:admin")).unwrap(),
            Some(vec!["web".to_owned(), "#1".to_owned(), "admin".to_owned()])
        );
        for bad in [&b"web::admin"[..], b":", b"a\x01", b"web:"] {
            let e = parse_child_fdnames(Some(bad)).unwrap_err();
            assert_eq!(var_of(Err::<(), _>(e)), LISTEN_FDNAMES_CHILD_ENV, "{bad:?}");
        }
    }

    #[test]
    fn listen_errors_display_the_variable() {
        for r in [
            listen(Some("x"), None, None),
            listen(Some("4242"), None, None),
            listen(Some("4242"), Some("x"), None),
            listen(Some("4242"), Some("1"), Some("a:b")),
        ] {
            let Err(e) = r else {
                panic!("expected an error")
            };
            let msg = e.to_string();
            assert!(
                msg.starts_with("invalid environment variable LISTEN_"),
                "{msg}"
            );
        }
    }
}
