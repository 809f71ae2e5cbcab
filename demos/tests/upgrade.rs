//! Binary upgrade (`USR2`) of the `hello` example, deployed as a user would: the program is
//! `server` in a directory of its own, started from there; a deploy writes the new program
//! next to it and renames it over `server`, then sends USR2 to the master.
//!
//! * An upgrade under loopback load (new connections and keep-alive connections at once)
//!   loses no request and refuses or resets none: every answer comes from the old program or
//!   the new one (the new one greets differently), and the answers change to the new one.
//!   The old master and its workers are gone at the end; the new master serves with workers of
//!   its own in slots 0..n-1, and holds nothing but its standard streams, the listening
//!   sockets it was handed and descriptors of its own making (the readiness channel to the
//!   old master is closed once it reported). In fork mode with one shared listener and with
//!   one `SO_REUSEPORT` socket per worker, in exec mode, and with the socket passed by socket
//!   activation to the first master; and with `--run`, where the program binds its socket
//!   itself (or takes the one it was handed, `prefork::inherited_listeners`) and calls `run`,
//!   started directly or by socket activation.
//! * Rollback: a new program that exits at once, one that hangs before it is ready, and one
//!   that cannot be executed, and a new master that a sandbox keeps from checking the sockets
//!   it is handed (`getsockopt(SO_TYPE)` refused) leave the old master serving with the same
//!   workers, without a failed request; the failure is logged.
//! * A second USR2 during an upgrade is ignored (logged), and TERM during an upgrade stops
//!   both masters and every worker of either.
//! * Sandboxes: the same upgrade under a seccomp filter (installed before the first master
//!   starts, inherited by every process of both masters) that refuses `pidfd_send_signal`,
//!   `pidfd_open`, both (exec mode), or `close_range`: the masters fall back (`kill(2)`, the
//!   sigchld backend, descriptors marked one by one), and the upgrade completes as above; or
//!   `rename`, with a control socket: the new master's socket answers at its temporary path,
//!   with a warning, the upgrade completes, and no socket file is left at the end.

// The library's test support (`tests/support` of the repository): waits, signals, `/proc`,
// temporary directories, one failure style for every process test of the workspace.
#[path = "../../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::{
    Deploy, Hello, Load, Server, all_ok, bodies, children, finish_loads, get, hello_example,
    new_master_pid, ok_or_refused, quoted, require, started_workers,
};
use support::process::{kill, wait_for};
use support::procfs::{self, is_alive};
use support::seccomp::{Filter, Refusal};

/// Workers of every server here.
const WORKERS: usize = 3;

/// How the old program greets (the example's default) and how the new one does.
const OLD_GREETING: &str = "Hello";
const NEW_GREETING: &str = "Howdy";

/// The pause before a deploy, so that the old program serves under load first.
fn pace() {
    std::thread::sleep(Duration::from_millis(500));
}

/// Load from new connections and from keep-alive connections at once, for `secs` seconds,
/// once every client has had its first answer.
fn start_loads(addr: &str, secs: &str) -> [Load; 2] {
    ["new", "keepalive"].map(|conn| {
        Load::start(
            addr,
            &["--conn", conn, "--clients", "3", "--duration", secs],
        )
    })
}

/// The new program: the same build, greeting differently.
fn greeting_differently() -> String {
    format!(
        "#!/bin/sh\nHELLO_GREETING={NEW_GREETING} exec {} \"$@\"\n",
        quoted(&hello_example())
    )
}

/// Binds a listening socket on a free loopback port, puts it on fd 3 and executes the
/// program (`argv[1]`, with the rest of the arguments) with `LISTEN_FDS=1` and `LISTEN_PID`
/// set to its own pid, as systemd's socket activation does.
const SOCKET_ACTIVATION: &str = r#"import os, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(128)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[1], sys.argv[1:])
"#;

/// Starts `hello` from a deploy directory with `args` (through the socket-activation helper
/// when `activated`), loads it, deploys a new program and sends USR2; checks everything
/// listed in the module docs.
fn upgrades_under_load(tag: &str, args: &[&str], activated: bool) {
    upgrades_in_sandbox(tag, args, activated, &[]);
}

/// [`upgrades_under_load`], with the first master (and so every process it starts, the new
/// master included: seccomp filters survive fork and exec) under a seccomp filter that
/// refuses `deny` (`CALL=ERRNO`, as `support::seccomp::Refusal::parse` reads them), as a
/// sandbox's profile does. Returns the log of both masters.
fn upgrades_in_sandbox(tag: &str, args: &[&str], activated: bool, deny: &[&str]) -> String {
    upgrades_checked(tag, args, activated, deny, &mut |_| {})
}

/// [`upgrades_in_sandbox`], with `during` called with the new master's pid once it serves
/// alone (the old master and its workers gone), before it is stopped.
fn upgrades_checked(
    tag: &str,
    args: &[&str],
    activated: bool,
    deny: &[&str],
    during: &mut dyn FnMut(u32),
) -> String {
    let deploy = Deploy::new(tag);
    let staged = deploy.stage(&greeting_differently(), 0o755);
    let mut cmd = if activated {
        require("python3");
        let mut cmd = Command::new("python3");
        cmd.args(["-c", SOCKET_ACTIVATION]).arg(&deploy.server);
        cmd
    } else {
        Command::new(&deploy.server)
    };
    cmd.args(args);
    sandboxed(&mut cmd, deny);
    let mut server = Server::start(&mut cmd, WORKERS);
    let old = server.pid();
    let old_workers = children(old);
    assert_eq!(old_workers.len(), WORKERS, "workers: {old_workers:?}");
    let listeners: BTreeSet<String> = procfs::fd_targets(old)
        .into_iter()
        .filter(|t| t.starts_with("socket:") && !is_unix_socket(t))
        .collect();
    let expected = if args.contains(&"--reuseport") {
        WORKERS
    } else {
        1
    };
    assert_eq!(listeners.len(), expected, "listeners: {listeners:?}");

    let loads = start_loads(&server.addr, "5");
    pace();
    deploy.replace(&staged);
    server.signal(libc::SIGUSR2);
    let started = format!("[INFO {old}] upgrade: new master ");
    let line = server.log_line(|l| l.starts_with(&started) && l.contains(" started;"));
    let new = new_master_pid(&line);
    server.adopt(new);
    // The readiness channel, as the new master got it: the write end of a pipe, on the
    // descriptor after the sockets. It may be closed already, if the new master was quick.
    let channel_fd = 3 + listeners.len() as i32;
    let channel = procfs::open_fds(new)
        .into_iter()
        .find(|f| f.fd == channel_fd && f.target.starts_with("pipe:") && f.write_only())
        .map(|f| f.target);

    let serving = format!("[INFO {old}] upgrade: new master {new} is serving");
    server.log_line(|l| l.starts_with(&serving));
    // Once it reported, it closes the channel (right after it logs that it did).
    if let Some(channel) = &channel {
        wait_for("the new master closes its readiness channel", || {
            procfs::open_fds(new).iter().all(|f| &f.target != channel)
        });
    }
    let held = procfs::open_fds(new);
    let status = server.wait_master();
    assert!(status.success(), "old master: {status}\n{}", server.log());
    wait_for("the old workers exit", || {
        old_workers.iter().all(|&pid| !is_alive(pid))
    });

    let reports = finish_loads(&server, loads, "the upgrade");
    let answered = reports.each_ref().map(all_ok);

    // The new master's workers: fresh processes, slots 0..n-1, as its log says.
    let new_workers = children(new);
    assert_eq!(new_workers.len(), WORKERS, "new workers: {new_workers:?}");
    assert!(
        new_workers.is_disjoint(&old_workers),
        "old {old_workers:?}, new {new_workers:?}"
    );
    let slots = started_workers(&server.log_lines(), new);
    assert_eq!(
        slots.keys().copied().collect::<Vec<_>>(),
        (0..WORKERS).collect::<Vec<_>>(),
        "slots of the new master:\n{}",
        server.log()
    );
    assert_eq!(
        slots.values().copied().collect::<BTreeSet<_>>(),
        new_workers,
        "workers of the new master:\n{}",
        server.log()
    );

    // Every answer came from the old program or from the new one, and both answered.
    let mut from = [0u64; 2];
    for report in &reports {
        for (body, n) in bodies(report) {
            let hello = Hello::parse(&body).unwrap_or_else(|| panic!("answer {body:?}"));
            let (i, workers) = match hello.greeting.as_str() {
                OLD_GREETING => (0, &old_workers),
                NEW_GREETING => (1, &new_workers),
                _ => panic!("answer from neither program: {body:?}"),
            };
            assert!(workers.contains(&hello.pid), "answer {body:?}");
            from[i] += n;
        }
    }
    assert!(from[0] > 0 && from[1] > 0, "answers (old, new): {from:?}");
    // Only the new program answers now.
    for _ in 0..2 * WORKERS {
        let (status, _, body) = get(&server.addr, "/");
        assert_eq!(status, 200, "{body}");
        let hello = Hello::parse(&body).unwrap_or_else(|| panic!("answer {body:?}"));
        assert_eq!(hello.greeting, NEW_GREETING, "{body}");
        assert!(new_workers.contains(&hello.pid), "{body}");
    }

    // What the new master held once it took over.
    for fd in held.iter().filter(|f| f.fd > 2) {
        assert!(
            fd.close_on_exec(),
            "inheritable descriptor: {fd:?}\n{held:#?}"
        );
        let target = fd.target.as_str();
        if is_unix_socket(target) {
            // Its control socket (`--control`): the listeners are TCP sockets.
            assert!(args.contains(&"--control"), "unix socket {fd:?}\n{held:#?}");
        } else if target.starts_with("socket:") {
            assert!(listeners.contains(target), "socket {fd:?}\n{held:#?}");
        } else if target.starts_with("pipe:") {
            // Its own: the readiness pipe of its workers.
            assert_ne!(
                channel.as_deref(),
                Some(target),
                "the readiness channel is open"
            );
        } else {
            let own = [
                "anon_inode:[eventpoll]",
                "anon_inode:[signalfd]",
                "anon_inode:[pidfd]",
                "anon_inode:[timerfd]",
            ];
            assert!(
                own.contains(&target) || target.starts_with("pidfd:"),
                "unexpected descriptor {fd:?}\n{held:#?}"
            );
        }
    }
    let sockets: BTreeSet<String> = held
        .iter()
        .filter(|f| f.target.starts_with("socket:") && !is_unix_socket(&f.target))
        .map(|f| f.target.clone())
        .collect();
    assert_eq!(sockets, listeners, "sockets of the new master:\n{held:#?}");
    during(new);

    kill(new, libc::SIGTERM);
    let (_, log) = server.wait_exit();
    // Its log ended as it exited; it is gone (or a zombie of an init that does not reap).
    wait_for("the new master exits", || !is_alive(new));
    wait_for("the new workers exit", || {
        new_workers.iter().all(|&pid| !is_alive(pid))
    });
    assert!(
        log.contains(&format!(
            "[INFO {new}] all workers stopped; master exiting cleanly"
        )),
        "{log}"
    );
    assert!(
        !log.contains("exited:"),
        "a worker exited by itself:\n{log}"
    );
    println!(
        "upgrade {tag}: {} + {} answered (new, keep-alive), {} by the old program, {} by the new one",
        answered[0], answered[1], from[0], from[1]
    );
    log
}

/// Makes `cmd`'s process install a seccomp filter that refuses `deny` (`CALL=ERRNO`, as
/// `support::seccomp::Refusal::parse` reads them) before it executes the program: every
/// process it starts inherits it, across `exec` too. Nothing where `deny` is empty.
fn sandboxed(cmd: &mut Command, deny: &[&str]) {
    if deny.is_empty() {
        return;
    }
    let refusals: Vec<Refusal> = deny
        .iter()
        .map(|r| Refusal::parse(r).unwrap_or_else(|| panic!("unknown refusal {r:?}")))
        .collect();
    // Built here: the child only installs it.
    let filter = Filter::deny(&refusals);
    // SAFETY: between fork and exec the child makes two prctl calls on memory prepared
    // before the fork (`install` allocates nothing), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || filter.install());
    }
}

/// Whether a descriptor's target (`socket:[INODE]`) is a Unix socket (a control socket's,
/// where the listeners are TCP sockets).
fn is_unix_socket(target: &str) -> bool {
    target
        .strip_prefix("socket:[")
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|inode| inode.parse::<u64>().ok())
        .is_some_and(|inode| procfs::unix_socket_inodes().contains(&inode))
}

/// A sandbox that refuses `pidfd_send_signal` (`EPERM`): both masters signal their workers
/// through `kill(2)`, decided and logged once each, and the upgrade completes as
/// [`upgrades_under_load`] checks (no request lost, the new master serves, the old one and
/// its workers are gone, the new one stops cleanly).
#[test]
fn upgrade_fork_shared_refusing_pidfd_send_signal() {
    let log = upgrades_in_sandbox("no-pidfd-signal", &[], false, &["pidfd_send_signal=EPERM"]);
    assert!(log.contains("pidfd_send_signal refused ("), "{log}");
}

/// A sandbox that refuses `pidfd_open` (`EPERM`): both masters run on the sigchld backend
/// (the old one watches the new master by `SIGCHLD` too), logged, and the upgrade completes.
#[test]
fn upgrade_fork_shared_refusing_pidfd_open() {
    let log = upgrades_in_sandbox("no-pidfd", &[], false, &["pidfd_open=EPERM"]);
    assert!(
        log.contains("pidfds refused (pidfd_open: Operation not permitted"),
        "{log}"
    );
    assert!(!log.contains("cannot open a pidfd"), "{log}");
}

/// A sandbox that refuses `getpid` (`EPERM`): both masters take their pid from `/proc/self`
/// (the new master's child too, for `LISTEN_PID` before `execve`), never from the -1 the
/// refused call returns, and the upgrade completes as [`upgrades_under_load`] checks (the
/// example's log lines name each process by the same fallback).
#[test]
fn upgrade_fork_shared_refusing_getpid() {
    upgrades_in_sandbox("no-getpid", &[], false, &["getpid=EPERM"]);
}

/// A sandbox that refuses `close_range` (`EPERM`): the new master's child marks the old
/// master's descriptors close-on-exec one by one before `execve` instead (it cannot log), and
/// the upgrade completes; the new master holds only what [`upgrades_under_load`] allows.
#[test]
fn upgrade_fork_shared_refusing_close_range() {
    upgrades_in_sandbox("no-close-range", &[], false, &["close_range=EPERM"]);
}

/// A sandbox that refuses `rename` (`EPERM`, and nothing else of the upgrade: without a PID
/// file only the new master's control socket is renamed), with a control socket
/// (`--control`): the new master cannot take the socket's path over. It warns, naming the
/// call, and its socket answers at its temporary path (`PATH.PID.new`) instead; the old
/// master removes its own file at the path when it exits, and the upgrade completes as
/// [`upgrades_under_load`] checks (no request lost). While the new master serves, the path is
/// free and its temporary path answers `status` with its pid; when it exits, it removes its
/// file there: nothing is left in the socket's directory.
#[test]
fn upgrade_fork_shared_refusing_rename_of_the_control_socket() {
    let dir = support::process::TempDir::new("upgrade-rename");
    let socket = dir.path().join("control.sock");
    let path = socket.to_str().expect("UTF-8").to_owned();
    let mut staged = None;
    let log = upgrades_checked(
        "no-rename",
        &["--control", &path],
        false,
        &["rename=EPERM"],
        &mut |new| {
            let at = dir.path().join(format!("control.sock.{new}.new"));
            assert!(!socket.exists(), "the old master removed its socket file");
            let reply = prefork::control::request_line(&at, "status")
                .unwrap_or_else(|e| panic!("status at {}: {e}", at.display()));
            assert!(
                reply.contains("\"ok\":true") && reply.contains(&format!("\"pid\":{new}")),
                "the new master answers at its temporary path: {reply}"
            );
            staged = Some(at);
        },
    );
    let at = staged.expect("the new master served");
    let warning = format!(
        "cannot move the control socket {} to {path}: rename: Operation not permitted",
        at.display()
    );
    assert_eq!(
        log.lines().filter(|l| l.contains(&warning)).count(),
        1,
        "warned once, naming the call:\n{log}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("the socket's directory")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert!(left.is_empty(), "files left: {left:?}\n{log}");
}

/// Exec mode, with both pidfd calls refused (`ENOSYS`, as on an old kernel).
#[test]
fn upgrade_exec_refusing_pidfd_calls() {
    let log = upgrades_in_sandbox(
        "exec-no-pidfd",
        &["--mode", "exec"],
        false,
        &["pidfd_open=ENOSYS", "pidfd_send_signal=ENOSYS"],
    );
    assert!(
        log.contains("pidfds unavailable (pidfd_open: Function not implemented"),
        "{log}"
    );
}

#[test]
fn upgrade_fork_shared() {
    upgrades_under_load("fork-shared", &[], false);
}

#[test]
fn upgrade_fork_reuseport() {
    upgrades_under_load("fork-reuseport", &["--reuseport"], false);
}

#[test]
fn upgrade_exec() {
    upgrades_under_load("exec", &["--mode", "exec"], false);
}

#[test]
fn upgrade_socket_activated() {
    upgrades_under_load("activated", &[], true);
}

#[test]
fn upgrade_run_with_its_own_socket() {
    upgrades_under_load("run", &["--run"], false);
}

#[test]
fn upgrade_run_socket_activated() {
    upgrades_under_load("run-activated", &["--run"], true);
}

/// Deploys `program` (a script, with `mode`) and sends USR2 under load: the upgrade fails
/// with a log line containing `why`, and the old master keeps serving with the same workers
/// and without a failed request.
fn rolls_back(tag: &str, program: &str, mode: u32, upgrade_timeout: &str, why: &str) -> String {
    rolls_back_in_sandbox(tag, program, mode, upgrade_timeout, why, &[])
}

/// [`rolls_back`], with the first master (and so the new one) under a seccomp filter that
/// refuses `deny` (see [`sandboxed`]). Returns the log.
fn rolls_back_in_sandbox(
    tag: &str,
    program: &str,
    mode: u32,
    upgrade_timeout: &str,
    why: &str,
    deny: &[&str],
) -> String {
    let deploy = Deploy::new(tag);
    let staged = deploy.stage(program, mode);
    let mut cmd = Command::new(&deploy.server);
    cmd.args(["--upgrade-timeout", upgrade_timeout]);
    sandboxed(&mut cmd, deny);
    let mut server = Server::start(&mut cmd, WORKERS);
    let master = server.pid();
    let workers = children(master);
    assert_eq!(workers.len(), WORKERS, "workers: {workers:?}");

    let loads = start_loads(&server.addr, "4");
    pace();
    deploy.replace(&staged);
    server.signal(libc::SIGUSR2);
    let failed = server.log_line(|l| l.starts_with(&format!("[ERROR {master}] upgrade failed: ")));
    assert!(failed.contains(why), "{failed}");
    // A new master that was started is gone.
    let started = format!("[INFO {master}] upgrade: new master ");
    let new = server
        .log_lines()
        .iter()
        .find(|l| l.starts_with(&started) && l.contains(" started;"))
        .map(|l| new_master_pid(l));
    if let Some(new) = new {
        wait_for("the failed new master is gone", || !is_alive(new));
    }
    let reports = finish_loads(&server, loads, "the rollback");
    let answered = reports.each_ref().map(all_ok);
    assert_eq!(children(master), workers, "the workers changed");
    for report in &reports {
        for body in bodies(report).keys() {
            let hello = Hello::parse(body).unwrap_or_else(|| panic!("answer {body:?}"));
            assert_eq!(hello.greeting, OLD_GREETING, "{body}");
            assert!(workers.contains(&hello.pid), "{body}");
        }
    }
    server.signal(libc::SIGTERM);
    let (status, log) = server.wait_exit();
    assert!(status.success(), "master: {status}\n{log}");
    assert!(
        !log.contains("exited:"),
        "a worker exited by itself:\n{log}"
    );
    println!(
        "rollback {tag}: {} + {} answered (new, keep-alive); {failed}",
        answered[0], answered[1]
    );
    log
}

/// A sandbox that refuses `getsockopt(SO_TYPE)`, which only a new master makes here (it
/// checks the sockets the old master hands it; the first master binds its own): the new
/// master cannot start, and says which call failed; the old master rolls the upgrade back
/// and serves on with the same workers, without a failed request.
#[test]
fn rollback_when_the_new_master_cannot_check_its_sockets() {
    let log = rolls_back_in_sandbox(
        "no-sockopt",
        &greeting_differently(),
        0o755,
        "30",
        "before it was ready",
        &["getsockopt_type=EPERM"],
    );
    assert!(
        log.contains("getsockopt(SO_TYPE): Operation not permitted"),
        "the new master names the call:\n{log}"
    );
}

#[test]
fn rollback_when_the_new_program_exits() {
    rolls_back(
        "exits",
        "#!/bin/sh\nexit 1\n",
        0o755,
        "30",
        "exited (exit code 1) before it was ready",
    );
}

#[test]
fn rollback_when_the_new_program_hangs() {
    rolls_back(
        "hangs",
        "#!/bin/sh\nexec sleep 60\n",
        0o755,
        "1",
        "was not ready within 1s",
    );
}

#[test]
fn rollback_when_the_new_program_is_not_executable() {
    rolls_back(
        "not-executable",
        "#!/bin/sh\nexit 0\n",
        0o644,
        "30",
        "cannot execute",
    );
}

/// A new master that serves but never reports ready (it drops the channel's name) keeps the
/// upgrade under way: a second USR2 is ignored, and TERM to the old master stops both.
#[test]
fn second_usr2_ignored_and_term_stops_both_masters() {
    let deploy = Deploy::new("term");
    let never_ready = format!(
        "#!/bin/sh\nunset PREFORK_UPGRADE_FD\nHELLO_GREETING={NEW_GREETING} exec {} \"$@\"\n",
        quoted(&hello_example())
    );
    let staged = deploy.stage(&never_ready, 0o755);
    let mut cmd = Command::new(&deploy.server);
    cmd.args(["--upgrade-timeout", "30"]);
    let mut server = Server::start(&mut cmd, WORKERS);
    let old = server.pid();
    let old_workers = children(old);

    let loads = start_loads(&server.addr, "3");
    pace();
    deploy.replace(&staged);
    server.signal(libc::SIGUSR2);
    let started = format!("[INFO {old}] upgrade: new master ");
    let line = server.log_line(|l| l.starts_with(&started) && l.contains(" started;"));
    let new = new_master_pid(&line);
    server.adopt(new);
    server.log_line(|l| l.starts_with(&format!("[INFO {new}] master ready: ")));
    let new_workers = children(new);
    assert_eq!(new_workers.len(), WORKERS, "new workers: {new_workers:?}");

    server.signal(libc::SIGUSR2);
    server.log_line(|l| {
        l == format!("[INFO {old}] SIGUSR2: ignored, the upgrade to pid {new} is under way")
    });
    server.signal(libc::SIGTERM);
    server.log_line(|l| l == format!("[INFO {old}] stopping the new master {new} too"));
    let reports = loads.map(Load::finish);
    let counts = reports.each_ref().map(ok_or_refused);
    let (status, log) = server.wait_exit();
    assert!(status.success(), "old master: {status}\n{log}");
    let all: Vec<u32> = [old, new]
        .into_iter()
        .chain(old_workers)
        .chain(new_workers)
        .collect();
    wait_for("every process of either master exits", || {
        all.iter().all(|&pid| !is_alive(pid))
    });
    assert!(
        log.contains(&format!(
            "[INFO {new}] all workers stopped; master exiting cleanly"
        )),
        "{log}"
    );
    println!(
        "TERM during an upgrade: {:?} + {:?} (answered, refused; new, keep-alive)",
        counts[0], counts[1]
    );
}
