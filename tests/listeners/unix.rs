//! The cases of `Prefork::listen` with `Prefork::serve` (the `serve` fixture): Unix domain
//! sockets (paths and abstract names), several named listeners, systemd activation by name,
//! the upgrade of a Unix socket, the real address of port 0; and `run` masters whose program
//! bound its own Unix socket (`FX_RUN=1`): served, handed over on `USR2`, left to the program.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::fixture::SERVE_ROLE;
use crate::support::backend::{Backend, Mode};
use std::io::{Read, Write};

use crate::support::net::{Answer, Conn, Load, Target, ask_target, try_ask_target};
use crate::support::process::{DEADLINE, Fixture, Spec, TempDir, kill, wait_for};
use crate::support::procfs;
use crate::support::runner::{Case, ONCE};

const MODES_AND_BACKENDS: &[(Mode, Backend)] = &[
    (Mode::Fork, Backend::Pidfd),
    (Mode::Fork, Backend::Sigchld),
    (Mode::Exec, Backend::Pidfd),
    (Mode::Exec, Backend::Sigchld),
];

const MODES: &[(Mode, Backend)] = &[(Mode::Fork, Backend::Pidfd), (Mode::Exec, Backend::Pidfd)];

/// `run` masters: fork mode only (an exec-mode worker of `run` inherits none of the
/// program's sockets), under each backend.
const RUN_BACKENDS: &[(Mode, Backend)] =
    &[(Mode::Fork, Backend::Pidfd), (Mode::Fork, Backend::Sigchld)];

/// The cases of each mode under each backend.
pub const UNDER_MODE_AND_BACKEND: &[Case<(Mode, Backend)>] = &[
    Case::new("unix::serves", MODES_AND_BACKENDS, |(m, b)| {
        unix_serves(m, b)
    }),
    Case::new(
        "unix::hup_ttou_term_under_load_lose_nothing",
        MODES_AND_BACKENDS,
        |(m, b)| unix_no_loss(m, b),
    ),
    Case::new(
        "unix::upgrade_keeps_the_socket",
        MODES_AND_BACKENDS,
        |(m, b)| unix_upgrade(m, b),
    ),
    Case::new("named::systemd_tcp_and_unix", MODES, |(m, b)| {
        systemd_two_named(m, b)
    }),
    Case::new("named::port_zero_everywhere", MODES, |(m, b)| {
        port_zero(m, b)
    }),
    Case::new("named::upgrade_tcp_and_unix", MODES, |(m, b)| {
        upgrade_named(m, b, false)
    }),
    Case::new("named::upgrade_two_reuseport_groups", MODES, |(m, b)| {
        upgrade_named(m, b, true)
    }),
    Case::new("run::serves_its_own_unix_socket", RUN_BACKENDS, |(_, b)| {
        run_serves(b)
    }),
    Case::new(
        "run::upgrade_hands_over_its_unix_socket",
        RUN_BACKENDS,
        |(_, b)| run_upgrade(b),
    ),
    Case::new(
        "named::reuseport_tcp_beside_shared_unix",
        MODES,
        |(m, b)| reuseport_beside_unix(m, b),
    ),
];

/// The cases that run once.
pub const RUN_ONCE: &[Case<()>] = &[
    Case::new("unix::systemd_socket", ONCE, |()| systemd_unix()),
    Case::new("named::systemd_name_missing", ONCE, |()| {
        systemd_mismatch("web", &["no socket named \"admin\""])
    }),
    Case::new("named::systemd_name_extra", ONCE, |()| {
        systemd_mismatch("web:admin:metrics", &["\"metrics\"", "matches no listener"])
    }),
    Case::new("unix::stale_file_replaced", ONCE, |()| stale_replaced()),
    Case::new("unix::live_socket_refused", ONCE, |()| live_refused()),
    Case::new("unix::regular_file_refused", ONCE, |()| regular_refused()),
    Case::new("unix::mode_follows_umask", ONCE, |()| {
        mode(None, "022", 0o755)
    }),
    Case::new("unix::unix_mode_sets_it", ONCE, |()| {
        mode(Some("660"), "022", 0o660)
    }),
    Case::new("unix::abstract_name", ONCE, |()| abstract_name()),
    Case::new("unix::listen_and_serve_refuses_unix", ONCE, |()| {
        listen_and_serve_refuses_unix()
    }),
    Case::new("unix::reuseport_refused", ONCE, |()| reuseport_refused()),
];

// ---------------------------------------------------------------------------------------

/// A `serve` fixture in `mode` under `backend` with `workers` workers and `listen`
/// (`FX_LISTEN`).
fn spec(mode: Mode, backend: Backend, workers: usize, listen: &str) -> Spec {
    Spec::new(SERVE_ROLE)
        .env("FX_MODE", mode.name())
        .backend(backend)
        .env("FX_WORKERS", workers.to_string())
        .env("FX_LISTEN", listen)
}

/// One `listener ID PID NAME ADDR INODE` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListenerLine {
    id: usize,
    pid: u32,
    name: String,
    addr: String,
    inode: u64,
}

fn parse_listener(line: &str) -> Option<ListenerLine> {
    let mut f = line.strip_prefix("listener ")?.split(' ');
    Some(ListenerLine {
        id: f.next()?.parse().ok()?,
        pid: f.next()?.parse().ok()?,
        name: f.next()?.to_owned(),
        addr: f.next()?.to_owned(),
        inode: f.next()?.parse().ok()?,
    })
}

/// The `listener` lines of each of `pids` once each of them printed `serving`.
fn listeners_of(fx: &Fixture, pids: &[u32]) -> Vec<ListenerLine> {
    fx.wait_lines(&format!("`serving` from each of {pids:?}"), |lines| {
        let serving = |p: u32| {
            lines.iter().any(|l| {
                l.strip_prefix("serving ")
                    .is_some_and(|r| r.ends_with(&format!(" {p}")))
            })
        };
        pids.iter().all(|&p| serving(p)).then(|| {
            lines
                .iter()
                .filter_map(|l| parse_listener(l))
                .filter(|l| pids.contains(&l.pid))
                .collect()
        })
    })
}

/// The first `ready` line's pids and their listener lines.
fn ready_listeners(fx: &Fixture) -> (Vec<u32>, Vec<ListenerLine>) {
    let pids = fx.ready();
    let lines = listeners_of(fx, &pids);
    (pids, lines)
}

/// The listener lines of `name`, one per worker of `pids`, sharing one address and socket.
fn one_listener(lines: &[ListenerLine], pids: &[u32], name: &str) -> (String, u64) {
    let of: Vec<&ListenerLine> = lines.iter().filter(|l| l.name == name).collect();
    assert_eq!(
        of.len(),
        pids.len(),
        "listener {name:?} of each worker: {lines:?}"
    );
    let (addr, inode) = (of[0].addr.clone(), of[0].inode);
    assert!(
        of.iter().all(|l| l.addr == addr && l.inode == inode),
        "the workers' listeners {name:?} differ: {of:?}"
    );
    (addr, inode)
}

/// One connection to each worker of `pids`: each asks its worker to hold it (the worker's
/// accept thread for that listener is then busy, so the next connection goes to another
/// worker); their answers, one per worker, after which the connections are closed.
fn answers_from_all(target: &Target, pids: &[u32]) -> Vec<Answer> {
    let mut held = Vec::new();
    let mut answers: Vec<Answer> = Vec::new();
    for _ in 0..pids.len() {
        let (stream, answer) = hold(target);
        assert!(
            pids.contains(&answer.pid) && !answers.iter().any(|a| a.pid == answer.pid),
            "answer {answer:?} on {target:?}: not one of the other workers of {pids:?} \
             (answers so far {answers:?})"
        );
        held.push(stream);
        answers.push(answer);
    }
    answers
}

/// With reuseport: new connections (each closed once answered) until every worker of `pids`
/// answered, at most 400; one answer per worker.
fn answers_by_hash(target: &Target, pids: &[u32]) -> Vec<Answer> {
    let mut seen: Vec<Answer> = Vec::new();
    for _ in 0..400 {
        let a = ask_target(target, "id");
        assert!(pids.contains(&a.pid), "answer {a:?} from none of {pids:?}");
        if !seen.iter().any(|s| s.pid == a.pid) {
            seen.push(a);
        }
        if seen.len() == pids.len() {
            return seen;
        }
    }
    panic!("not every worker of {pids:?} answered on {target:?}: {seen:?}")
}

/// A connection to `target` that the answering worker holds, and its answer.
fn hold(target: &Target) -> (Box<dyn Conn>, Answer) {
    let mut stream = target
        .connect_stream()
        .unwrap_or_else(|e| panic!("connect {target:?}: {e}"));
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    stream.write_all(b"hold\n").expect("send");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            other => panic!("reading the answer on {target:?}: {other:?} after {line:?}"),
        }
    }
    let text = String::from_utf8_lossy(&line).into_owned();
    let answer = Answer::parse(&text).unwrap_or_else(|| panic!("bad answer {text:?}"));
    (stream, answer)
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn inode_of(path: &Path) -> u64 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .ino()
}

fn sock(dir: &TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// The early error of a fixture that failed before starting a worker.
fn early_error(fx: &mut Fixture) -> String {
    let display = fx.assert_failed_exit();
    let lines = fx.lines();
    assert!(
        !lines.iter().any(|l| l.starts_with("spawn ")),
        "a worker was started before the error: {lines:?}"
    );
    display
}

// ---------------------------------------------------------------------------------------

fn unix_serves(mode: Mode, backend: Backend) {
    let dir = TempDir::new("unix-serves");
    let path = sock(&dir, "app.sock");
    let addr = format!("unix:{}", path.display());
    let mut fx = spec(mode, backend, 2, &addr).start();
    let (pids, lines) = ready_listeners(&fx);
    let (got, inode) = one_listener(&lines, &pids, &addr);
    assert_eq!(got, addr, "local_addr of the Unix listener");
    assert!(is_socket(&path), "{} is not a socket", path.display());
    let answers = answers_from_all(&Target::Unix(path.clone()), &pids);
    for a in &answers {
        assert_eq!(a.rest, format!("{addr} {inode}"), "answer {a:?}");
    }
    for &pid in &pids {
        let env = procfs::environ(pid).unwrap_or_default();
        let var = |k| procfs::environ_var(&env, k);
        match mode {
            Mode::Exec => {
                assert_eq!(var("PREFORK_LISTEN_FDNAMES").as_deref(), Some("#0"));
                assert_eq!(var("PREFORK_READY_FD").as_deref(), Some("4"));
                let fd3 = procfs::fds(pid).into_iter().find(|(fd, _)| *fd == 3);
                assert_eq!(
                    fd3.and_then(|(_, t)| procfs::socket_inode(&t)),
                    Some(inode),
                    "worker {pid}'s fd 3"
                );
            }
            Mode::Fork => assert_eq!(var("PREFORK_LISTEN_FDNAMES"), None),
        }
    }
    fx.stop_with(libc::SIGTERM);
    assert!(!path.exists(), "the master left {} behind", path.display());
    fx.expect_log(&format!("removed the socket file {}", path.display()));
}

fn unix_no_loss(mode: Mode, backend: Backend) {
    let dir = TempDir::new("unix-load");
    let path = sock(&dir, "app.sock");
    let addr = format!("unix:{}", path.display());
    let n = 3;
    let mut fx = spec(mode, backend, n, &addr)
        .env("FX_GRACE_MS", "20000")
        .start();
    let (pids, _) = ready_listeners(&fx);
    let load = Load::start_at(Target::Unix(path.clone()), 4);
    load.wait_answered(50);
    // HUP: every slot gets a new worker, then the old one drains.
    fx.signal(libc::SIGHUP);
    let fresh = fx.wait_lines("a second worker in every slot", |lines| {
        let spawned: Vec<u32> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("spawn ")?.parse().ok())
            .filter(|p| !pids.contains(p))
            .collect();
        (spawned.len() >= n).then_some(spawned)
    });
    listeners_of(&fx, &fresh);
    fx.wait_gone(&pids);
    load.wait_answered(150);
    // TTOU: one slot fewer, its worker drains.
    fx.signal(libc::SIGTTOU);
    fx.wait_line("a retired worker's exit", |l| {
        l.strip_prefix("exit ").map(|_| ())
    });
    load.wait_answered(250);
    // TERM: the file goes first, the workers drain what is queued.
    fx.signal(libc::SIGTERM);
    fx.assert_clean_exit();
    let tally = load.stop();
    assert!(
        tally.lost.is_empty(),
        "{} requests lost (connected, never answered): {:?}",
        tally.lost.len(),
        tally.lost
    );
    assert!(tally.ok >= 250, "answered {}", tally.ok);
    assert!(!path.exists(), "{} left behind", path.display());
}

fn unix_upgrade(mode: Mode, backend: Backend) {
    let dir = TempDir::new("unix-upgrade");
    let path = sock(&dir, "app.sock");
    let addr = format!("unix:{}", path.display());
    let mut fx = spec(mode, backend, 2, &addr)
        .env("FX_GRACE_MS", "20000")
        .env("FX_UPGRADE", "1")
        .start();
    let (old_pids, _) = ready_listeners(&fx);
    let before = inode_of(&path);
    let load = Load::start_at(Target::Unix(path.clone()), 3);
    load.wait_answered(30);
    fx.signal(libc::SIGUSR2);
    let old = fx.pid;
    let new: u32 = fx.wait_stderr("the new master's pid", |lines| {
        let prefix = format!("[INFO {old}] upgrade: new master ");
        lines.iter().find_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            rest.contains(" is serving")
                .then(|| rest.split(' ').next()?.parse().ok())
                .flatten()
        })
    });
    let status = fx.wait_exit();
    assert!(status.success(), "old master: {status:?}");
    fx.wait_gone(&old_pids);
    // The new master's workers answer.
    load.wait_answered(load.answered() + 30);
    assert!(
        is_socket(&path),
        "{} is gone after the upgrade",
        path.display()
    );
    assert_eq!(inode_of(&path), before, "the socket file was replaced");
    let a = ask_target(&Target::Unix(path.clone()), "id");
    assert!(!old_pids.contains(&a.pid), "an old worker answered: {a:?}");
    kill(new, libc::SIGTERM);
    wait_for("the new master removes the file and exits", || {
        !path.exists() && procfs::is_gone(new, old)
    });
    let tally = load.stop();
    assert!(tally.lost.is_empty(), "lost: {:?}", tally.lost);
}

fn systemd_unix() {
    let dir = TempDir::new("unix-systemd");
    let path = sock(&dir, "sd.sock");
    let inherited = UnixListener::bind(&path).expect("bind");
    let mut fx = spec(
        Mode::Fork,
        Backend::Pidfd,
        2,
        "web=unix:/nonexistent/dir/x.sock",
    )
    .env("LISTEN_FDS", "1")
    .env("LISTEN_FDNAMES", "web")
    .pass_fds(&[inherited.as_raw_fd()])
    .listen_pid_self()
    .start();
    let (pids, lines) = ready_listeners(&fx);
    let (got, _) = one_listener(&lines, &pids, "web");
    assert_eq!(got, format!("unix:{}", path.display()));
    answers_from_all(&Target::Unix(path.clone()), &pids);
    fx.stop_with(libc::SIGTERM);
    // systemd's socket: its file is systemd's to remove.
    assert!(is_socket(&path), "the master removed systemd's socket file");
}

fn systemd_two_named(mode: Mode, backend: Backend) {
    let dir = TempDir::new("named-systemd");
    let path = sock(&dir, "admin.sock");
    let web = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = web.local_addr().expect("addr").port();
    let admin = UnixListener::bind(&path).expect("bind");
    // In the opposite order of the sockets: matched by name.
    let mut fx = spec(
        mode,
        backend,
        2,
        "admin=unix:/nonexistent/a.sock web=192.0.2.1:9",
    )
    // With a heartbeat table, which goes after the readiness pipe.
    .env("FX_TIMEOUT_MS", "60000")
    .env("LISTEN_FDS", "2")
    .env("LISTEN_FDNAMES", "web:admin")
    .pass_fds(&[web.as_raw_fd(), admin.as_raw_fd()])
    .listen_pid_self()
    .start();
    let (pids, lines) = ready_listeners(&fx);
    let (web_addr, _) = one_listener(&lines, &pids, "web");
    let (admin_addr, _) = one_listener(&lines, &pids, "admin");
    assert_eq!(web_addr, format!("127.0.0.1:{port}"));
    assert_eq!(admin_addr, format!("unix:{}", path.display()));
    for a in answers_from_all(&Target::Tcp(port), &pids) {
        assert!(a.rest.starts_with("web "), "{a:?}");
    }
    for a in answers_from_all(&Target::Unix(path.clone()), &pids) {
        assert!(a.rest.starts_with("admin "), "{a:?}");
    }
    if mode == Mode::Exec {
        for &pid in &pids {
            let env = procfs::environ(pid).unwrap_or_default();
            assert_eq!(
                procfs::environ_var(&env, "PREFORK_LISTEN_FDNAMES").as_deref(),
                Some("admin:web")
            );
            assert_eq!(
                procfs::environ_var(&env, "PREFORK_READY_FD").as_deref(),
                Some("5")
            );
            assert_eq!(
                procfs::environ_var(&env, "PREFORK_HEARTBEAT_FD").as_deref(),
                Some("6")
            );
        }
        let complaints: Vec<String> = fx
            .stderr()
            .into_iter()
            .filter(|l| l.contains("heartbeat") || l.contains("readiness"))
            .collect();
        assert!(complaints.is_empty(), "{complaints:?}");
    }
    fx.stop_with(libc::SIGTERM);
}

fn systemd_mismatch(names: &str, needles: &[&str]) {
    let dir = TempDir::new("named-mismatch");
    let count = names.split(':').count();
    let mut held: Vec<TcpListener> = Vec::new();
    for _ in 0..count {
        held.push(TcpListener::bind("127.0.0.1:0").expect("bind"));
    }
    let fds: Vec<i32> = held.iter().map(|l| l.as_raw_fd()).collect();
    let admin = format!("admin=unix:{}", sock(&dir, "a.sock").display());
    let mut fx = spec(
        Mode::Fork,
        Backend::Pidfd,
        1,
        &format!("web=127.0.0.1:0 {admin}"),
    )
    .env("LISTEN_FDS", count.to_string())
    .env("LISTEN_FDNAMES", names)
    .pass_fds(&fds)
    .listen_pid_self()
    .start();
    let display = early_error(&mut fx);
    assert!(display.contains("LISTEN_FDNAMES"), "{display}");
    for needle in needles {
        assert!(display.contains(needle), "{display:?} lacks {needle:?}");
    }
}

fn stale_replaced() {
    let dir = TempDir::new("unix-stale");
    let path = sock(&dir, "app.sock");
    drop(UnixListener::bind(&path).expect("bind"));
    assert!(is_socket(&path), "the stale file exists");
    let addr = format!("unix:{}", path.display());
    let mut fx = spec(Mode::Fork, Backend::Pidfd, 1, &addr).start();
    let (pids, _) = ready_listeners(&fx);
    fx.expect_log("removing the stale socket file");
    answers_from_all(&Target::Unix(path.clone()), &pids);
    fx.stop_with(libc::SIGTERM);
}

fn live_refused() {
    let dir = TempDir::new("unix-live");
    let path = sock(&dir, "app.sock");
    let live = UnixListener::bind(&path).expect("bind");
    let inode = inode_of(&path);
    let mut fx = spec(
        Mode::Fork,
        Backend::Pidfd,
        1,
        &format!("unix:{}", path.display()),
    )
    .start();
    let display = early_error(&mut fx);
    assert!(
        display.contains(&path.display().to_string()) && display.contains("a server is listening"),
        "{display}"
    );
    assert_eq!(inode_of(&path), inode, "the live socket's file was touched");
    std::os::unix::net::UnixStream::connect(&path).expect("the live socket still answers");
    drop(live);
}

fn regular_refused() {
    let dir = TempDir::new("unix-regular");
    let path = sock(&dir, "app.sock");
    std::fs::write(&path, "data").expect("write");
    let mut fx = spec(
        Mode::Fork,
        Backend::Pidfd,
        1,
        &format!("unix:{}", path.display()),
    )
    .start();
    let display = early_error(&mut fx);
    assert!(
        display.contains(&path.display().to_string()) && display.contains("not a socket"),
        "{display}"
    );
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "data");
}

fn mode(unix_mode: Option<&str>, umask: &str, want: u32) {
    let dir = TempDir::new("unix-mode");
    let path = sock(&dir, "app.sock");
    let mut s = spec(
        Mode::Fork,
        Backend::Pidfd,
        1,
        &format!("unix:{}", path.display()),
    )
    .env("FX_UMASK", umask);
    if let Some(m) = unix_mode {
        s = s.env("FX_UNIX_MODE", m);
    }
    let mut fx = s.start();
    ready_listeners(&fx);
    let got = std::fs::symlink_metadata(&path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(got, want, "mode {got:o}, expected {want:o}");
    fx.stop_with(libc::SIGTERM);
}

fn abstract_name() {
    let name = format!("prefork-test-{}-abstract", std::process::id());
    let addr = format!("unix:@{name}");
    let mut fx = spec(Mode::Fork, Backend::Pidfd, 2, &addr).start();
    let (pids, lines) = ready_listeners(&fx);
    let (got, _) = one_listener(&lines, &pids, &addr);
    assert_eq!(got, addr);
    answers_from_all(&Target::Unix(PathBuf::from(format!("@{name}"))), &pids);
    fx.stop_with(libc::SIGTERM);
    let target = Target::Unix(PathBuf::from(format!("@{name}")));
    assert!(
        try_ask_target(&target, "id").is_err(),
        "the abstract socket answers after the master exited"
    );
}

fn listen_and_serve_refuses_unix() {
    let mut fx = Spec::new(crate::fixture::ROLE)
        .env("FX_ADDR", "unix:/nonexistent/app.sock")
        .start();
    let display = early_error(&mut fx);
    assert!(
        display.contains("unix:/nonexistent/app.sock") && display.contains("Prefork::serve"),
        "{display}"
    );
}

fn reuseport_refused() {
    let mut fx = spec(Mode::Fork, Backend::Pidfd, 1, "unix:/nonexistent/x.sock")
        .env("FX_REUSEPORT", "1")
        .start();
    let display = early_error(&mut fx);
    assert!(
        display.contains("unix:/nonexistent/x.sock") && display.contains("SO_REUSEPORT"),
        "{display}"
    );
}

fn port_zero(mode: Mode, backend: Backend) {
    let dir = TempDir::new("port-zero");
    let path = sock(&dir, "app.sock");
    let unix = format!("unix:{}", path.display());
    let mut fx = spec(mode, backend, 3, &format!("127.0.0.1:0 {unix}")).start();
    let (pids, lines) = ready_listeners(&fx);
    let (tcp, _) = one_listener(&lines, &pids, "127.0.0.1:0");
    let port: u16 = tcp
        .strip_prefix("127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("address {tcp:?}"));
    assert_ne!(port, 0, "a worker reports port 0");
    one_listener(&lines, &pids, &unix);
    let status = fx.wait_field("status-listeners");
    assert_eq!(
        status,
        format!("127.0.0.1:0=127.0.0.1:{port} {unix}={unix}")
    );
    fx.expect_log(&format!("listening on 127.0.0.1:{port} (127.0.0.1:0)"));
    answers_from_all(&Target::Tcp(port), &pids);
    answers_from_all(&Target::Unix(path.clone()), &pids);
    fx.stop_with(libc::SIGTERM);
}

/// `reuseport` with a TCP and a Unix listener: the TCP listener is one socket per worker
/// (each worker's has an inode of its own), the Unix one is shared (one inode), and both
/// answer from every worker.
fn reuseport_beside_unix(mode: Mode, backend: Backend) {
    let dir = TempDir::new("reuseport-beside-unix");
    let path = sock(&dir, "app.sock");
    let unix = format!("unix:{}", path.display());
    let mut fx = spec(mode, backend, 3, &format!("web=127.0.0.1:0 local={unix}"))
        .env("FX_REUSEPORT", "1")
        .start();
    let (pids, lines) = ready_listeners(&fx);
    let web: Vec<&ListenerLine> = lines.iter().filter(|l| l.name == "web").collect();
    assert_eq!(
        web.len(),
        pids.len(),
        "a web listener per worker: {lines:?}"
    );
    let mut inodes: Vec<u64> = web.iter().map(|l| l.inode).collect();
    inodes.sort_unstable();
    inodes.dedup();
    assert_eq!(
        inodes.len(),
        pids.len(),
        "each worker has a reuseport socket of its own: {web:?}"
    );
    let port: u16 = web[0]
        .addr
        .strip_prefix("127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("address {:?}", web[0].addr));
    assert!(
        web.iter().all(|l| l.addr == web[0].addr),
        "one address for the group: {web:?}"
    );
    let (addr, _) = one_listener(&lines, &pids, "local");
    assert_eq!(addr, unix, "the Unix listener's address");
    answers_from_all(&Target::Unix(path.clone()), &pids);
    let answer = ask_target(&Target::Tcp(port), "id");
    assert!(
        pids.contains(&answer.pid),
        "answer {answer:?} from {pids:?}"
    );
    fx.stop_with(libc::SIGTERM);
}

/// USR2 with two named listeners: the new master serves each under its name, on the same
/// addresses (the port picked for `:0`, the same socket file).
fn upgrade_named(mode: Mode, backend: Backend, reuseport: bool) {
    let dir = TempDir::new("named-upgrade");
    let path = sock(&dir, "admin.sock");
    let listen = if reuseport {
        "web=127.0.0.1:0 admin=127.0.0.1:0".to_owned()
    } else {
        format!("web=127.0.0.1:0 admin=unix:{}", path.display())
    };
    let mut s = spec(mode, backend, 2, &listen).env("FX_UPGRADE", "1");
    if reuseport {
        s = s.env("FX_REUSEPORT", "1");
    }
    let mut fx = s.start();
    let (old_pids, lines) = ready_listeners(&fx);
    let (web, web_inode) = one_listener_or_group(&lines, &old_pids, "web", reuseport);
    let (admin, _) = one_listener_or_group(&lines, &old_pids, "admin", reuseport);
    let before = (!reuseport).then(|| inode_of(&path));
    fx.signal(libc::SIGUSR2);
    let old = fx.pid;
    let new: u32 = fx.wait_stderr("the new master serving", |lines| {
        let prefix = format!("[INFO {old}] upgrade: new master ");
        lines.iter().find_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            rest.contains(" is serving")
                .then(|| rest.split(' ').next()?.parse().ok())
                .flatten()
        })
    });
    let status = fx.wait_exit();
    assert!(status.success(), "old master: {status:?}");
    fx.wait_gone(&old_pids);
    let new_pids: Vec<u32> = fx.wait_lines("the new master's two workers", |lines| {
        let pids: Vec<u32> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("serving ")?.split(' ').nth(1)?.parse().ok())
            .filter(|p| !old_pids.contains(p))
            .collect();
        (pids.len() >= 2).then_some(pids)
    });
    let lines = listeners_of(&fx, &new_pids);
    let (web_now, web_inode_now) = one_listener_or_group(&lines, &new_pids, "web", reuseport);
    let (admin_now, _) = one_listener_or_group(&lines, &new_pids, "admin", reuseport);
    assert_eq!(
        (&web_now, &admin_now),
        (&web, &admin),
        "addresses after the upgrade"
    );
    if !reuseport {
        assert_eq!(web_inode_now, web_inode, "the web socket after the upgrade");
        assert_eq!(
            Some(inode_of(&path)),
            before,
            "the admin socket file was replaced"
        );
    } else {
        fx.expect_log("serving the 2 reuseport sockets passed by the old master for web");
        fx.expect_log("serving the 2 reuseport sockets passed by the old master for admin");
    }
    let port = |a: &str| -> u16 { a.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap() };
    let web_target = Target::Tcp(port(&web));
    let admin_target = if reuseport {
        Target::Tcp(port(&admin))
    } else {
        Target::Unix(path.clone())
    };
    for (target, name) in [(&web_target, "web "), (&admin_target, "admin ")] {
        let answers = if reuseport {
            // Each connection goes to the socket its hash picks: a held one would wait
            // behind the worker it holds.
            answers_by_hash(target, &new_pids)
        } else {
            answers_from_all(target, &new_pids)
        };
        for a in answers {
            assert!(a.rest.starts_with(name), "{a:?} on {target:?}");
        }
    }
    kill(new, libc::SIGTERM);
    wait_for("the new master exits", || procfs::is_gone(new, old));
    if !reuseport {
        assert!(
            !path.exists(),
            "the new master left {} behind",
            path.display()
        );
    }
}

/// As [`one_listener`]; with reuseport, each worker has a socket of its own in one group
/// (one address, inodes that differ): the address, and the inode 0.
fn one_listener_or_group(
    lines: &[ListenerLine],
    pids: &[u32],
    name: &str,
    reuseport: bool,
) -> (String, u64) {
    if !reuseport {
        return one_listener(lines, pids, name);
    }
    let of: Vec<&ListenerLine> = lines.iter().filter(|l| l.name == name).collect();
    assert_eq!(
        of.len(),
        pids.len(),
        "listener {name:?} of each worker: {lines:?}"
    );
    assert!(
        of.iter().all(|l| l.addr == of[0].addr),
        "the workers' listeners {name:?} differ in address: {of:?}"
    );
    (of[0].addr.clone(), 0)
}

// ---------------------------------------------------------------------------------------
// `run` masters: the program binds its own sockets (`FX_RUN=1`).

/// A `serve` fixture with `FX_RUN=1`: the program binds `listen` itself (std's
/// `TcpListener::bind`, `UnixListener::bind`) or takes what an old master handed it, and
/// calls `run`.
fn run_spec(backend: Backend, workers: usize, listen: &str) -> Spec {
    spec(Mode::Fork, backend, workers, listen).env("FX_RUN", "1")
}

/// The socket file of a `run` master after it exited: the program bound it, so it is the
/// program's (std's `UnixListener` does not remove it either): the master leaves it where
/// it was, the same file (`inode`), and nothing listens on it any more.
fn assert_left_to_the_program(path: &Path, inode: u64, log: &[String]) {
    assert!(
        is_socket(path),
        "a run master removed its program's socket file {}",
        path.display()
    );
    assert_eq!(inode_of(path), inode, "the socket file was replaced");
    match UnixStream::connect(path) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!(
            "{} after the master exited: {other:?}, expected ECONNREFUSED",
            path.display()
        ),
    }
    let removals: Vec<&String> = log.iter().filter(|l| l.contains("socket file")).collect();
    assert!(
        removals.is_empty(),
        "the master touched the file: {removals:?}"
    );
}

/// A `run` master serving a Unix socket (and a TCP one) that its program bound: every
/// worker answers on both; TERM leaves the file to the program.
fn run_serves(backend: Backend) {
    let dir = TempDir::new("run-unix");
    let path = sock(&dir, "app.sock");
    let addr = format!("unix:{}", path.display());
    let mut fx = run_spec(backend, 2, &format!("web=127.0.0.1:0 local={addr}")).start();
    let (pids, lines) = ready_listeners(&fx);
    let (got, inode) = one_listener(&lines, &pids, "local");
    assert_eq!(got, addr, "local_addr of the Unix listener");
    assert!(is_socket(&path), "{} is not a socket", path.display());
    let file = inode_of(&path);
    for a in answers_from_all(&Target::Unix(path.clone()), &pids) {
        assert_eq!(a.rest, format!("local {inode}"), "answer {a:?}");
    }
    let (web, _) = one_listener(&lines, &pids, "web");
    let port: u16 = web
        .strip_prefix("127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("address {web:?}"));
    for a in answers_from_all(&Target::Tcp(port), &pids) {
        assert!(a.rest.starts_with("web "), "answer {a:?}");
    }
    fx.stop_with(libc::SIGTERM);
    assert_left_to_the_program(&path, file, &fx.stderr());
}

/// USR2 of a `run` master whose program bound a Unix socket, under a per-request load over
/// that socket: the old master hands the socket over (the new program takes it with
/// `inherited_sockets`, named `prefork`), the new master's workers serve the same socket
/// (same socket inode) at the same file (same inode), and no request is lost, refused or
/// left unconnected. The load stops before the new master's TERM: a `run` master's stop
/// leaves its program's sockets as they are, so a connection queued after the workers
/// drained would be reset when the program exits. After that TERM the file is still there
/// (the program's).
fn run_upgrade(backend: Backend) {
    let dir = TempDir::new("run-upgrade");
    let path = sock(&dir, "app.sock");
    let addr = format!("unix:{}", path.display());
    let mut fx = run_spec(backend, 2, &addr)
        .env("FX_GRACE_MS", "20000")
        .env("FX_UPGRADE", "1")
        .start();
    let (old_pids, lines) = ready_listeners(&fx);
    let (_, socket) = one_listener(&lines, &old_pids, &addr);
    let before = inode_of(&path);
    let load = Load::start_at(Target::Unix(path.clone()), 3);
    load.wait_answered(30);
    fx.signal(libc::SIGUSR2);
    let old = fx.pid;
    let new: u32 = fx.wait_stderr("the new master's pid", |lines| {
        let prefix = format!("[INFO {old}] upgrade: new master ");
        lines.iter().find_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            rest.contains(" is serving")
                .then(|| rest.split(' ').next()?.parse().ok())
                .flatten()
        })
    });
    let status = fx.wait_exit();
    assert!(status.success(), "old master: {status:?}");
    fx.wait_gone(&old_pids);
    let new_pids: Vec<u32> = fx.wait_lines("the new master's two workers", |lines| {
        let pids: Vec<u32> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("serving ")?.split(' ').nth(1)?.parse().ok())
            .filter(|p| !old_pids.contains(p))
            .collect();
        (pids.len() >= 2).then_some(pids)
    });
    let lines = listeners_of(&fx, &new_pids);
    let (now, socket_now) = one_listener(&lines, &new_pids, "prefork");
    assert_eq!(now, addr, "the new workers' listener");
    assert_eq!(socket_now, socket, "the new workers serve another socket");
    assert!(
        is_socket(&path),
        "{} is gone after the upgrade",
        path.display()
    );
    assert_eq!(inode_of(&path), before, "the socket file was replaced");
    load.wait_answered(load.answered() + 30);
    for a in answers_from_all(&Target::Unix(path.clone()), &new_pids) {
        assert_eq!(a.rest, format!("prefork {socket}"), "answer {a:?}");
    }
    let tally = load.stop();
    assert!(tally.lost.is_empty(), "lost: {:?}", tally.lost);
    assert_eq!(
        (tally.refused, tally.unconnected),
        (0, 0),
        "refused and unconnected requests: {tally:?}"
    );
    kill(new, libc::SIGTERM);
    wait_for("the new master exits", || procfs::is_gone(new, old));
    assert_left_to_the_program(&path, before, &fx.stderr());
}
