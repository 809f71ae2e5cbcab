//! The sandbox cases of a Unix listener (`Prefork::listen("unix:PATH")`, the `serve`
//! fixture): a seccomp filter installed before the master binds anything (`FX_DENY`, see
//! `support::seccomp`) refuses one call of the listener's at a time, with `EPERM` and with
//! `ENOSYS`, as `tests/processes/sandbox.rs` does for the other calls of the crate. The
//! master alone makes these calls (an exec-mode worker inherits the bound socket), so they
//! run in fork mode, under the default backend: tests named
//! `pidfd::fork::sandbox_unix_refusing_CALL[_stale]_ERRNO`.
//!
//! A required call: the run fails before any fork with an error naming the listener and the
//! call, and leaves no child, no zombie and no socket file (a stale file the test put at the
//! path stays as it was). An optional one: the master serves, HUP replaces the workers, TERM
//! ends the run cleanly, and the file is removed at exit, or left with a warning.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;

use crate::fixture::SERVE_ROLE;
use crate::support::backend::Backend;
use crate::support::net::{Target, ask_target};
use crate::support::process::{Spec, TempDir, files_in};
use crate::support::runner::{Test, test};

/// The errors each refusal is tried with, and how `strerror` says them.
const ERRNOS: [(&str, &str); 2] = [
    ("EPERM", "Operation not permitted"),
    ("ENOSYS", "Function not implemented"),
];

/// The hint a refused call's error carries.
const HINT: &str = "(refused: a system call filter must allow it; docs/security.md";

type Text = &'static str;

/// What must happen where the call is refused.
#[derive(Clone, Copy)]
enum Expect {
    /// Required: the run fails before any fork with an error containing this (`{addr}`: the
    /// listener's address).
    Fails(Text),
    /// Optional: the lifecycle works; the file is removed at exit, or (`Some`) left with this
    /// warning, logged once.
    Works(Option<Text>),
}

/// One row: the call refused (`FX_DENY`'s name), whether a stale socket file is put at the
/// path first, whether the listener has a mode (`unix_mode`), what must happen.
struct Row {
    call: &'static str,
    stale: bool,
    mode: bool,
    expect: Expect,
}

const fn row(call: &'static str, stale: bool, mode: bool, expect: Expect) -> Row {
    Row {
        call,
        stale,
        mode,
        expect,
    }
}

use Expect::{Fails, Works};

#[rustfmt::skip]
const ROWS: &[Row] = &[
    row("socket_unix_stream", false, false, Fails("cannot listen on {addr}: socket(AF_UNIX, SOCK_STREAM): {err}")),
    row("bind", false, false, Fails("cannot listen on {addr}: bind: {err}")),
    row("fchmodat", false, true, Fails("cannot listen on {addr}: chmod (fchmodat): {err}")),
    row("listen", false, false, Fails("cannot listen on {addr}: listen: {err}")),
    row("connect", true, false, Fails("cannot listen on {addr}: connect (is a server listening on the socket already?): {err}")),
    row("unlink", true, false, Fails("cannot listen on {addr}: unlink: {err}")),
    row("unlink", false, false, Works(Some("cannot remove the socket file {path}: unlink: {err}"))),
    // std looks at a file with statx, and with newfstatat where statx is refused.
    row("statx", false, false, Works(None)),
    row("newfstatat", false, false, Works(None)),
    // A call refused after the listener was bound: its file goes with the failed run.
    row("epoll_create1", false, false, Fails("epoll_create1 failed: {err}")),
];

/// The tests of [`ROWS`], each with each errno.
pub fn tests() -> Vec<Test> {
    let mut tests = Vec::new();
    for r in ROWS {
        for (errno, text) in ERRNOS {
            let stale = if r.stale { "_stale" } else { "" };
            let name = format!(
                "pidfd::fork::sandbox_unix_refusing_{}{stale}_{}",
                r.call,
                errno.to_lowercase()
            );
            tests.push(test(name, move || refusal(r, errno, text)));
        }
    }
    tests.push(test(
        "pidfd::fork::unix_files_removed_when_a_later_listener_fails",
        unix_files_removed_when_a_later_listener_fails,
    ));
    tests
}

fn refusal(r: &Row, errno: &str, err: &str) {
    let dir = TempDir::new("sandbox-unix");
    let path = dir.path().join("app.sock");
    let path_str = path.to_str().expect("UTF-8");
    let addr = format!("unix:{path_str}");
    let stale_ino = r.stale.then(|| {
        drop(UnixListener::bind(&path).expect("a stale socket file"));
        std::fs::symlink_metadata(&path)
            .expect("the stale file")
            .ino()
    });
    let fill = |text: Text| {
        text.replace("{err}", err)
            .replace("{path}", path_str)
            .replace("{addr}", &addr)
    };
    let mut spec = Spec::new(SERVE_ROLE)
        .backend(Backend::Pidfd)
        .env("FX_WORKERS", "2")
        .env("FX_GRACE_MS", "2000")
        .env("FX_LISTEN", &addr)
        .env("FX_DENY", format!("{}={errno}", r.call));
    if r.mode {
        spec = spec.env("FX_UNIX_MODE", "660");
    }
    let mut fx = spec.start();
    match r.expect {
        Fails(text) => {
            let display = fx.assert_failed_exit();
            let want = fill(text);
            assert!(display.contains(&want), "error {display:?} says {want:?}");
            assert!(
                display.contains(HINT),
                "error {display:?} says that a sandbox refused it"
            );
            assert!(
                fx.spawns().is_empty(),
                "no worker started: {:?}",
                fx.spawns()
            );
            let left = files_in(dir.path());
            match stale_ino {
                None => assert!(left.is_empty(), "files left: {left:?}"),
                Some(ino) => {
                    assert_eq!(left, ["app.sock".to_owned()].into(), "files left");
                    let now = std::fs::symlink_metadata(&path)
                        .expect("the stale file")
                        .ino();
                    assert_eq!(now, ino, "the stale socket file, untouched");
                }
            }
        }
        Works(warning) => {
            let pids = fx.ready();
            let target = Target::Unix(path.clone());
            let answer = ask_target(&target, "id");
            assert!(
                pids.contains(&answer.pid),
                "{answer:?} from one of {pids:?}"
            );
            fx.signal(libc::SIGHUP);
            fx.wait_stderr_count("rolling restart done", 1);
            fx.wait_gone(&pids);
            let answer = ask_target(&target, "id");
            assert!(!pids.contains(&answer.pid), "{answer:?} from a new worker");
            fx.stop_with(libc::SIGTERM);
            match warning {
                None => {
                    assert!(!path.exists(), "the master left {path_str} behind");
                    fx.expect_log(&format!("removed the socket file {path_str}"));
                }
                Some(text) => {
                    let text = fill(text);
                    let n = fx.stderr().iter().filter(|l| l.contains(&text)).count();
                    assert_eq!(n, 1, "logged once: {text:?}");
                    assert!(path.exists(), "the file that cannot be removed is left");
                }
            }
        }
    }
}

/// Two Unix listeners, the second in a directory that does not exist: the run fails naming
/// it, before any fork, and the first one's socket file is removed.
pub fn unix_files_removed_when_a_later_listener_fails() {
    let dir = TempDir::new("sandbox-unix-two");
    let first = dir.path().join("a.sock");
    let second = dir.path().join("missing").join("b.sock");
    let listen = format!("unix:{} unix:{}", first.display(), second.display());
    let mut fx = Spec::new(SERVE_ROLE)
        .backend(Backend::Pidfd)
        .env("FX_WORKERS", "2")
        .env("FX_LISTEN", &listen)
        .start();
    let display = fx.assert_failed_exit();
    let want = format!("cannot listen on unix:{}: bind: ", second.display());
    assert!(display.contains(&want), "error {display:?} says {want:?}");
    assert!(
        fx.spawns().is_empty(),
        "no worker started: {:?}",
        fx.spawns()
    );
    let left = files_in(dir.path());
    assert!(left.is_empty(), "files left: {left:?}");
}
