//! Unit tests of the protocol's parsers: every variable absent, valid, at its bounds and
//! malformed, and the errors naming the variable and the value.

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
