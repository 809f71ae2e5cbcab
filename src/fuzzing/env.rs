//! The fuzz target of the environment protocol's parsers.

use crate::error::Error;
use crate::protocol::{
    self, CHILD_ENV, DEFAULT_FDNAME, LISTEN_FDNAMES_ENV, LISTEN_FDS_ENV, LISTEN_PID_ENV, ListenFds,
    MAX_FDNAME_LEN, MAX_LISTEN_FDS, MAX_WORKER_ID, WORKER_ID_ENV,
};

/// The pid `env` passes as ours unless the input asks for `LISTEN_PID`'s own value.
const ENV_OUR_PID: u32 = 4242;

/// Fuzzes the parsers of [`crate::protocol`].
///
/// Input: one flag byte, then up to five fields separated by `0xFF` bytes, in order:
/// `FASTHTTP_PREFORK_CHILD`, `PREFORK_WORKER_ID`, `LISTEN_PID`, `LISTEN_FDS`,
/// `LISTEN_FDNAMES`. Flag bits 0 to 4 say whether each variable is set (a set variable with
/// no field left is set to the empty string). With bit 5 our pid is `LISTEN_PID` read
/// leniently (`str::parse::<u32>`, so `+7` gives 7), else 4242.
///
/// Each parser's result is compared with a simple reference implementation, every error's
/// `Display` is checked, and every field also goes through every single-value parser.
pub fn env(data: &[u8]) {
    let (flags, rest) = match data.split_first() {
        Some((&f, rest)) => (f, rest),
        None => (0, &[][..]),
    };
    let mut fields = rest.split(|&b| b == 0xFF);
    let mut vars: [Option<&[u8]>; 5] = [None; 5];
    for (i, var) in vars.iter_mut().enumerate() {
        let field = fields.next();
        if flags & (1 << i) != 0 {
            *var = Some(field.unwrap_or(&[]));
        }
    }
    let [child, worker_id, listen_pid, listen_fds, listen_fdnames] = vars;
    let our_pid = match listen_pid {
        Some(v) if flags & 0x20 != 0 => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(ENV_OUR_PID),
        _ => ENV_OUR_PID,
    };

    check_child_flag(child);
    check_worker_id(worker_id);
    check_listen_fds(listen_pid, listen_fds, listen_fdnames, our_pid);

    // Every field through every parser: more shapes for the same code.
    for v in vars.iter().flatten() {
        check_child_flag(Some(v));
        check_worker_id(Some(v));
        check_listen_fds(Some(v), Some(v), Some(v), our_pid);
        check_listen_fds(listen_pid, Some(v), Some(v), our_pid);
        check_listen_fds(listen_pid, listen_fds, Some(v), our_pid);
        check_child_fdnames(Some(v));
        check_listen_addr(v);
    }
}

/// `PREFORK_LISTEN_FDNAMES` against its reference: unset or empty is none, else every
/// colon-separated part a valid descriptor name, at most [`MAX_LISTEN_FDS`] of them.
fn check_child_fdnames(v: Option<&[u8]>) {
    let got = protocol::parse_child_fdnames(v);
    let want: Option<Vec<String>> = match v {
        None | Some(b"") => None,
        Some(all) => {
            let parts: Vec<&[u8]> = all.split(|&b| b == b':').collect();
            let valid = parts.len() <= MAX_LISTEN_FDS
                && parts.iter().all(|p| {
                    (1..=MAX_FDNAME_LEN).contains(&p.len())
                        && p.iter().all(|&b| (0x20..=0x7e).contains(&b) && b != b':')
                });
            if !valid {
                let e = got.expect_err("an invalid PREFORK_LISTEN_FDNAMES was accepted");
                check_env_error(&e, protocol::LISTEN_FDNAMES_CHILD_ENV, all);
                return;
            }
            Some(
                parts
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect(),
            )
        }
    };
    assert_eq!(
        got.expect("a valid value"),
        want,
        "parse_child_fdnames({v:?})"
    );
}

/// The builder's address parser: a `unix:` address is a path or an abstract name that
/// fits `sockaddr_un`, or a reason; anything else is left to the TCP resolver.
fn check_listen_addr(v: &[u8]) {
    let Ok(text) = std::str::from_utf8(v) else {
        return;
    };
    match crate::listener::parse_unix(text) {
        None => assert!(!text.starts_with("unix:")),
        Some(Err(reason)) => assert!(!reason.is_empty()),
        Some(Ok(crate::listener::UnixAddr::Path(p))) => {
            use std::os::unix::ffi::OsStrExt;
            let bytes = p.as_os_str().as_bytes();
            assert!(!bytes.is_empty() && bytes.len() <= crate::listener::UNIX_PATH_MAX);
            assert!(!bytes.contains(&0) && !bytes.starts_with(b"@"));
            assert_eq!(&v[5..], bytes);
        }
        Some(Ok(crate::listener::UnixAddr::Abstract(name))) => {
            assert!(!name.is_empty() && name.len() <= crate::listener::UNIX_PATH_MAX);
            assert_eq!(&v[6..], &name[..]);
        }
    }
}

/// Checks an `InvalidEnv` error: the expected variable, the value found, a reason, and a
/// `Display` that names them.
fn check_env_error(err: &Error, want_var: &str, want_value: &[u8]) {
    let Error::InvalidEnv { var, value, reason } = err else {
        panic!("expected Error::InvalidEnv for {want_var}, got {err:?}");
    };
    assert_eq!(*var, want_var, "error names the wrong variable: {err:?}");
    assert_eq!(
        *value,
        String::from_utf8_lossy(want_value),
        "error reports the wrong value"
    );
    assert!(!reason.is_empty(), "error without a reason: {err:?}");
    let msg = err.to_string();
    assert!(!msg.is_empty());
    assert!(
        msg.starts_with(&format!("invalid environment variable {var}=")),
        "{msg}"
    );
    assert!(msg.ends_with(reason.as_str()), "{msg}");
}

/// The reference for the strict decimal format: what `str::parse` accepts, minus a leading
/// `+` and non-canonical forms, up to `max`.
fn reference_decimal(v: &[u8], max: u64) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    let n: u64 = s.parse().ok()?;
    (n.to_string() == s && n <= max).then_some(n)
}

fn check_child_flag(v: Option<&[u8]>) {
    let got = protocol::parse_child_flag(v);
    match (v, got) {
        (None | Some(b""), Ok(false)) | (Some(b"1"), Ok(true)) => {}
        (Some(v), Err(e)) if v != b"" && v != b"1" => check_env_error(&e, CHILD_ENV, v),
        (v, got) => panic!("parse_child_flag({v:?}) = {got:?}"),
    }
}

fn check_worker_id(v: Option<&[u8]>) {
    let got = protocol::parse_worker_id(v);
    let Some(v) = v else {
        assert!(matches!(got, Ok(None)), "absent id: {got:?}");
        return;
    };
    match (reference_decimal(v, MAX_WORKER_ID as u64), got) {
        (Some(want), Ok(Some(n))) => assert_eq!(n as u64, want, "id {v:?}"),
        (None, Err(e)) => check_env_error(&e, WORKER_ID_ENV, v),
        (want, got) => panic!("parse_worker_id({v:?}) = {got:?}, expected {want:?}"),
    }
}

/// What `parse_listen_fds` must return, computed the simple way: `Ok(Some)`, `Ok(None)`, or
/// the variable the error must name.
fn reference_listen_fds(
    pid: Option<&[u8]>,
    fds: Option<&[u8]>,
    names: Option<&[u8]>,
    our_pid: u32,
) -> Result<Option<ListenFds>, (&'static str, Vec<u8>)> {
    let Some(pid) = pid else { return Ok(None) };
    let pid = match reference_decimal(pid, i32::MAX as u64) {
        Some(p) if p > 0 => p,
        _ => return Err((LISTEN_PID_ENV, pid.to_vec())),
    };
    if pid != u64::from(our_pid) {
        return Ok(None);
    }
    let Some(fds) = fds else {
        return Err((LISTEN_FDS_ENV, Vec::new()));
    };
    let Some(count) = reference_decimal(fds, MAX_LISTEN_FDS as u64) else {
        return Err((LISTEN_FDS_ENV, fds.to_vec()));
    };
    let count = count as usize;
    if count == 0 {
        return Ok(None);
    }
    let names = match names {
        None | Some(b"") => vec![DEFAULT_FDNAME.to_owned(); count],
        Some(all) => {
            let s = String::from_utf8_lossy(all);
            let names: Vec<String> = s.split(':').map(str::to_owned).collect();
            let valid = |n: &String| {
                !n.is_empty()
                    && n.len() <= MAX_FDNAME_LEN
                    && n.chars().all(|c| (' '..='~').contains(&c) && c != ':')
            };
            if names.len() != count || !names.iter().all(valid) {
                return Err((LISTEN_FDNAMES_ENV, all.to_vec()));
            }
            names
        }
    };
    Ok(Some(ListenFds { count, names }))
}

fn check_listen_fds(pid: Option<&[u8]>, fds: Option<&[u8]>, names: Option<&[u8]>, our_pid: u32) {
    let got = protocol::parse_listen_fds(pid, fds, names, our_pid);
    if let Ok(Some(l)) = &got {
        assert_eq!(l.names.len(), l.count, "one name per descriptor: {l:?}");
        assert!((1..=MAX_LISTEN_FDS).contains(&l.count), "count {}", l.count);
    }
    match (reference_listen_fds(pid, fds, names, our_pid), got) {
        (Ok(want), Ok(got)) => {
            assert_eq!(got, want, "parse_listen_fds({pid:?}, {fds:?}, {names:?})")
        }
        (Err((var, value)), Err(e)) => check_env_error(&e, var, &value),
        (want, got) => panic!(
            "parse_listen_fds({pid:?}, {fds:?}, {names:?}, {our_pid}) = {got:?}, expected \
             {want:?}"
        ),
    }
}
