//! The control socket (`Prefork::control_socket`) of a `master` fixture, asked by raw
//! clients (`support::control`): its file, who may use it, what it answers to good and bad
//! requests and to clients that send nothing, its stale and live paths, and the commands
//! that change the workers under a loopback load.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use crate::fixture::ROLE;
use crate::support::backend::Backend;
use crate::support::control::{exchange, is_error, is_ok, number, numbers, read_reply, request};
use crate::support::net::{Load, all_ids};
use crate::support::process::{Fixture, Spec, TempDir, wait_until};
use crate::support::runner::{Case, cases};
use crate::support::{procfs, runner};

/// The cases that supervise workers, under both backends.
pub const UNDER_BACKEND: &[Case<Backend>] = cases![&Backend::ALL =>
    control_status_metrics_and_stop,
    control_reload_and_scale_under_load,
    control_stop_under_load,
];

/// The cases of the socket alone, under one backend.
pub const SOCKET: &[Case<Backend>] = cases![&[Backend::Pidfd] =>
    control_stale_live_and_bad_paths,
    control_bad_requests_and_silent_clients,
    control_peer_of_another_uid_refused,
    control_in_exec_mode,
    control_idle_master_makes_no_wakeups,
    control_unprivileged_master,
];

/// A directory for the socket and the PID file, with their paths.
struct Paths {
    dir: TempDir,
    socket: PathBuf,
    pid: PathBuf,
}

impl Paths {
    fn new(tag: &str) -> Paths {
        let dir = TempDir::new(tag);
        let socket = dir.path().join("control.sock");
        let pid = dir.path().join("master.pid");
        Paths { dir, socket, pid }
    }

    fn socket_str(&self) -> &str {
        self.socket.to_str().expect("a UTF-8 path")
    }
}

/// A master with `workers` workers that all answered, its control socket at `paths.socket`
/// and its PID file at `paths.pid`, ready; `opts` beside.
fn controlled(b: Backend, paths: &Paths, workers: usize, opts: &[(&str, &str)]) -> (Fixture, u16) {
    let n = workers.to_string();
    let fx = Spec::new(ROLE)
        .backend(b)
        .envs(&[
            ("FX_WORKERS", &n),
            ("FX_CONTROL", paths.socket_str()),
            ("FX_PID_FILE", paths.pid.to_str().expect("a UTF-8 path")),
        ])
        .envs(opts)
        .start();
    let port = fx.wait_line("the port line", |l| l.strip_prefix("port ")?.parse().ok());
    all_ids(port, workers);
    fx.ready();
    (fx, port)
}

/// The inode of the listening Unix socket bound at `path` (`/proc/net/unix`).
fn listening_inode(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/unix").ok()?;
    let want = path.to_str()?;
    text.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() >= 8 && cols[7] == want).then(|| cols[6].parse().ok())?
    })
}

/// `(slot, pid, state)` of every worker in a status reply.
fn workers_of(reply: &str) -> BTreeSet<(u64, u64, String)> {
    let at = reply.find("\"workers\":[").expect("a workers field");
    reply[at..]
        .split("{\"slot\":")
        .skip(1)
        .filter_map(|w| {
            let slot = w.split(',').next()?.parse().ok()?;
            let pid = number(w, "pid")?;
            let state = w
                .split("\"state\":\"")
                .nth(1)?
                .split('"')
                .next()?
                .to_owned();
            Some((slot, pid, state))
        })
        .collect()
}

fn control_status_metrics_and_stop(b: Backend) {
    let paths = Paths::new("control-status");
    let (mut fx, _port) = controlled(b, &paths, 3, &[("FX_DRAIN", "1")]);
    // The file: a socket, mode 0600, the master's user's.
    let meta = std::fs::symlink_metadata(&paths.socket).expect("the control socket's file");
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "its mode");
    assert_eq!(meta.uid(), my_uid(), "its owner");
    // The PID file names the master.
    let named = std::fs::read_to_string(&paths.pid).expect("the PID file");
    assert_eq!(named.trim(), fx.pid.to_string());

    let status = request(&paths.socket, "status");
    assert!(is_ok(&status), "{status}");
    assert_eq!(number(&status, "pid"), Some(u64::from(fx.pid)), "{status}");
    assert!(status.contains("\"generation\":0"), "{status}");
    assert!(
        status.contains(&format!("\"backend\":\"{}\"", b.name())),
        "{status}"
    );
    let workers = workers_of(&status);
    let live: BTreeSet<u64> = procfs::live_children(fx.pid)
        .into_iter()
        .map(u64::from)
        .collect();
    assert_eq!(workers.len(), 3, "{status}");
    for (slot, pid, state) in &workers {
        assert!(*slot < 3 && state == "serving", "{status}");
        assert!(
            live.contains(pid),
            "{pid} is no worker of the master: {status}"
        );
    }
    let metrics = request(&paths.socket, "metrics");
    assert!(is_ok(&metrics), "{metrics}");
    for line in [
        "# TYPE prefork_workers_serving gauge\\nprefork_workers_serving 3\\n",
        "prefork_workers_in_service 3\\n",
        "prefork_worker_serving{slot=\\\"2\\\"} 1\\n",
        "# TYPE prefork_restarts_total counter\\nprefork_restarts_total 0\\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // The master holds the socket, its workers do not.
    let inode = listening_inode(&paths.socket).expect("the socket in /proc/net/unix");
    assert!(procfs::socket_inodes(fx.pid).contains(&inode));
    for pid in procfs::live_children(fx.pid) {
        assert!(
            !procfs::socket_inodes(pid).contains(&inode),
            "worker {pid} holds the control socket"
        );
    }

    let stop = request(&paths.socket, "stop");
    assert!(is_ok(&stop) && stop.contains("\"stopping\":true"), "{stop}");
    fx.assert_clean_exit();
    assert!(!paths.socket.exists(), "the socket file is removed at exit");
    assert!(!paths.pid.exists(), "the PID file is removed at exit");
}

/// A master that runs as uid 65534 (dropped before it starts, as `User=` does): its control
/// socket and PID file are made in a directory that user may write, the socket is that
/// user's with mode 0600, root is served (as the master's own user would be), and both
/// files are removed at the stop it answers.
fn control_unprivileged_master(b: Backend) {
    if my_uid() != 0 {
        return runner::skip("needs root, to start a master as uid 65534");
    }
    // In the system's temporary directory: a checkout may be in a directory only its owner
    // can enter.
    let dir = TempDir::new_in(&std::env::temp_dir(), "control-unprivileged");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("opening the directory to uid 65534");
    let paths = Paths {
        socket: dir.path().join("control.sock"),
        pid: dir.path().join("master.pid"),
        dir,
    };
    let (mut fx, _port) = controlled(
        b,
        &paths,
        2,
        &[("FX_LISTEN", "1"), ("FX_MASTER_UID", "65534")],
    );
    let meta = std::fs::symlink_metadata(&paths.socket).expect("the control socket's file");
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "its mode");
    assert_eq!(meta.uid(), 65534, "its owner: the master's user");
    let pid_meta = std::fs::metadata(&paths.pid).expect("the PID file");
    assert_eq!(pid_meta.uid(), 65534, "the PID file's owner");
    let status = request(&paths.socket, "status");
    assert!(is_ok(&status), "root is served: {status}");
    assert_eq!(number(&status, "pid"), Some(u64::from(fx.pid)), "{status}");
    let stop = request(&paths.socket, "stop");
    assert!(is_ok(&stop), "{stop}");
    fx.assert_clean_exit();
    assert!(!paths.socket.exists(), "the socket file is removed at exit");
    assert!(!paths.pid.exists(), "the PID file is removed at exit");
}

/// The uid this test runs as.
fn my_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

fn control_stale_live_and_bad_paths(b: Backend) {
    let paths = Paths::new("control-paths");
    // A stale socket: bound, then its listener gone; the file stays.
    drop(UnixListener::bind(&paths.socket).expect("a socket to leave behind"));
    assert!(
        UnixStream::connect(&paths.socket).is_err(),
        "nobody listens"
    );
    let (mut fx, _) = controlled(b, &paths, 1, &[]);
    fx.expect_log("replacing the stale control socket");
    assert!(is_ok(&request(&paths.socket, "status")));

    // A live master at the path: a second one refuses to start, naming the path.
    let other_pid = paths.dir.path().join("other.pid");
    let mut second = Spec::new(ROLE)
        .backend(b)
        .envs(&[
            ("FX_WORKERS", "1"),
            ("FX_CONTROL", paths.socket_str()),
            ("FX_PID_FILE", other_pid.to_str().expect("UTF-8")),
        ])
        .start();
    let error = second.assert_failed_exit();
    assert!(
        error.contains(paths.socket_str()) && error.contains("another master answers"),
        "{error}"
    );
    assert!(
        !other_pid.exists(),
        "no PID file of the master that did not start"
    );
    // The first one still answers there.
    assert!(is_ok(&request(&paths.socket, "status")));

    // A missing directory, a file in the way, an unwritable PID file.
    let missing = paths.dir.path().join("missing").join("c.sock");
    let in_the_way = paths.dir.path().join("file");
    std::fs::write(&in_the_way, "").expect("a plain file");
    let bad_pid = paths.dir.path().join("missing").join("pid");
    let cases = [
        (
            ("FX_CONTROL", missing.to_str().expect("UTF-8")),
            "its directory does not exist",
        ),
        (
            ("FX_CONTROL", in_the_way.to_str().expect("UTF-8")),
            "not a socket",
        ),
        (
            ("FX_PID_FILE", bad_pid.to_str().expect("UTF-8")),
            "cannot write the PID file",
        ),
    ];
    for ((var, value), why) in cases {
        let mut bad = Spec::new(ROLE)
            .backend(b)
            .envs(&[("FX_WORKERS", "1"), (var, value)])
            .start();
        let error = bad.assert_failed_exit();
        assert!(error.contains(value) && error.contains(why), "{error}");
        assert!(bad.spawns().is_empty(), "nothing was forked");
    }
    assert!(in_the_way.exists(), "the plain file is left alone");

    fx.stop_with(libc::SIGTERM);
    assert!(!paths.socket.exists(), "removed at exit");
}

fn control_bad_requests_and_silent_clients(b: Backend) {
    let paths = Paths::new("control-requests");
    let (mut fx, _) = controlled(b, &paths, 1, &[]);
    let fds_before = procfs::fd_count(fx.pid).expect("the master's descriptors");
    // A client that never writes, and one that sends half a request and waits.
    let mut silent = crate::support::control::connect(&paths.socket);
    let mut half = crate::support::control::connect(&paths.socket);
    std::io::Write::write_all(&mut half, b"sta").expect("half a request");
    // Others are served meanwhile.
    let status = request(&paths.socket, "status");
    assert!(is_ok(&status), "{status}");
    let oversized = vec![b'x'; 5000];
    let bad: [(&[u8], bool, &str); 7] = [
        (b"\x00\xff\xfe\n", false, "not UTF-8"),
        (b"\n", false, "empty request"),
        (b"", true, "empty request"),
        (&oversized, false, "request too long"),
        (b"sta", true, "unknown command \\\"sta\\\""),
        (b"scale 0\n", false, "must be 1 to 4096"),
        (b"status please\n", false, "unexpected \\\"please\\\""),
    ];
    for (bytes, end, why) in bad {
        let reply = exchange(&paths.socket, bytes, end);
        assert!(is_error(&reply, why), "{bytes:?}: {reply}");
    }
    assert!(is_ok(&request(&paths.socket, "status")));
    // The two slow clients get their error at the deadline, and are closed.
    for stream in [&mut silent, &mut half] {
        let reply = read_reply(stream);
        assert!(
            is_error(&reply, "no complete request line within 10s"),
            "{reply}"
        );
    }
    wait_until("the master closed every client", || {
        let now = procfs::fd_count(fx.pid).unwrap_or(0);
        if now == fds_before {
            Ok(())
        } else {
            Err(format!("{now} descriptors, {fds_before} before"))
        }
    });
    fx.stop_with(libc::SIGTERM);
}

fn control_peer_of_another_uid_refused(b: Backend) {
    if my_uid() != 0 {
        return runner::skip("needs root, to run a client as uid 65534");
    }
    if std::process::Command::new("python3")
        .arg("-c")
        .arg("")
        .status()
        .is_err()
    {
        return runner::skip("needs python3 for the unprivileged client");
    }
    let paths = Paths::new("control-peer");
    let (mut fx, _) = controlled(b, &paths, 1, &[]);
    std::fs::set_permissions(paths.dir.path(), std::fs::Permissions::from_mode(0o711))
        .expect("a directory others may traverse");
    // The master answers a peer it refuses as soon as it accepts it, and closes: the
    // request may then meet a closed socket (EPIPE), and the reply is read all the same.
    let as_nobody = || {
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import socket, sys\n\
                 s = socket.socket(socket.AF_UNIX)\n\
                 s.connect(sys.argv[1])\n\
                 try:\n\
                 \x20   s.sendall(b'status\\n')\n\
                 except BrokenPipeError:\n\
                 \x20   pass\n\
                 print(s.makefile().readline().strip())\n",
            )
            .arg(&paths.socket)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("running the client");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The file's mode keeps others out.
    let (ok, _, err) = as_nobody();
    assert!(!ok && err.contains("PermissionError"), "{err}");
    // Past the mode (opened up here on purpose), the master's own check refuses the peer.
    std::fs::set_permissions(&paths.socket, std::fs::Permissions::from_mode(0o666))
        .expect("opening the socket up");
    let (ok, reply, err) = as_nobody();
    assert!(ok, "{err}");
    assert!(
        is_error(
            reply.trim(),
            "permission denied: uid 65534 may not use this control socket"
        ),
        "{reply}"
    );
    fx.wait_stderr_line("the refusal logged at WARN", |l| {
        (l.starts_with("[WARN ") && l.contains("refused a client of uid 65534")).then_some(())
    });
    // Its own user is served as before.
    assert!(is_ok(&request(&paths.socket, "status")));
    fx.stop_with(libc::SIGTERM);
}

fn control_reload_and_scale_under_load(b: Backend) {
    let paths = Paths::new("control-load");
    let (mut fx, port) = controlled(b, &paths, 3, &[("FX_DRAIN", "1")]);
    let before: BTreeSet<u64> = procfs::live_children(fx.pid)
        .into_iter()
        .map(u64::from)
        .collect();
    let load = Load::start(port, 8);
    load.wait_answered(50);

    let reload = request(&paths.socket, "reload");
    assert!(is_ok(&reload), "{reload}");
    let pids: BTreeSet<u64> = numbers(&reload, "pids")
        .expect("pids")
        .into_iter()
        .collect();
    assert_eq!(pids.len(), 3, "{reload}");
    assert!(
        pids.is_disjoint(&before),
        "new workers: {reload}, old {before:?}"
    );
    // They serve: the status says so, with the same pids.
    let status = request(&paths.socket, "status");
    let serving: BTreeSet<u64> = workers_of(&status)
        .into_iter()
        .filter(|w| w.2 == "serving")
        .map(|w| w.1)
        .collect();
    assert_eq!(serving, pids, "{status}");

    for n in [5usize, 2] {
        let reply = request(&paths.socket, &format!("scale {n}"));
        assert!(is_ok(&reply), "{reply}");
        assert_eq!(number(&reply, "workers"), Some(n as u64), "{reply}");
        let pids = numbers(&reply, "pids").expect("pids");
        assert_eq!(pids.len(), n, "{reply}");
        let live: BTreeSet<u64> = procfs::live_children(fx.pid)
            .into_iter()
            .map(u64::from)
            .collect();
        assert!(pids.iter().all(|p| live.contains(p)), "{reply}");
    }
    load.wait_answered(100);
    let tally = load.stop();
    assert!(tally.ok > 0 && tally.lost.is_empty(), "{tally:?}");
    assert_eq!((tally.refused, tally.unconnected), (0, 0), "{tally:?}");

    let stop = request(&paths.socket, "stop");
    assert!(is_ok(&stop), "{stop}");
    fx.assert_clean_exit();
}

fn control_in_exec_mode(b: Backend) {
    let paths = Paths::new("control-exec");
    let (mut fx, _) = controlled(
        b,
        &paths,
        2,
        &[("FX_LISTEN", "1"), ("FX_MODE", "exec"), ("FX_DRAIN", "1")],
    );
    let status = request(&paths.socket, "status");
    assert!(
        is_ok(&status) && status.contains("\"mode\":\"exec\""),
        "{status}"
    );
    // The exec-mode workers did not inherit it (close-on-exec).
    let inode = listening_inode(&paths.socket).expect("the socket in /proc/net/unix");
    let workers = procfs::live_children(fx.pid);
    assert_eq!(workers.len(), 2);
    for pid in workers {
        assert!(
            !procfs::socket_inodes(pid).contains(&inode),
            "worker {pid} holds the control socket"
        );
    }
    let reload = request(&paths.socket, "reload");
    assert!(is_ok(&reload), "{reload}");
    assert_eq!(
        numbers(&reload, "pids").map(|p| p.len()),
        Some(2),
        "{reload}"
    );
    let stop = request(&paths.socket, "stop");
    assert!(is_ok(&stop), "{stop}");
    fx.assert_clean_exit();
    assert!(!paths.socket.exists());
}

/// `stop` under load, on the library's own sockets (one per slot): the reply comes, then
/// the graceful stop loses no connection the kernel accepted.
fn control_stop_under_load(b: Backend) {
    let paths = Paths::new("control-stop");
    let (mut fx, port) = controlled(
        b,
        &paths,
        3,
        &[("FX_LISTEN", "1"), ("FX_REUSEPORT", "1"), ("FX_DRAIN", "1")],
    );
    let load = Load::start(port, 8);
    load.wait_answered(100);
    let stop = request(&paths.socket, "stop");
    assert!(is_ok(&stop) && stop.contains("\"stopping\":true"), "{stop}");
    fx.assert_clean_exit();
    let tally = load.stop();
    assert!(tally.ok > 0 && tally.lost.is_empty(), "{tally:?}");
    assert!(!paths.socket.exists() && !paths.pid.exists());
}

/// The master's context switches so far (`voluntary_ctxt_switches` and
/// `nonvoluntary_ctxt_switches` of its status).
fn switches(pid: u32) -> u64 {
    ["voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"]
        .iter()
        .map(|f| {
            procfs::status_field(pid, f)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .expect("a context switch count")
        })
        .sum()
}

/// Once its clients are served, a master with a control socket sleeps without a timer: no
/// context switch at all while nothing happens.
fn control_idle_master_makes_no_wakeups(b: Backend) {
    let paths = Paths::new("control-idle");
    let (mut fx, _) = controlled(b, &paths, 2, &[]);
    assert!(is_ok(&request(&paths.socket, "status")));
    assert!(is_ok(&request(&paths.socket, "metrics")));
    // The master's last replies and log lines are out once its output is quiet.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = switches(fx.pid);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let after = switches(fx.pid);
    assert_eq!(
        after,
        before,
        "the idle master woke up {} times",
        after - before
    );
    fx.stop_with(libc::SIGTERM);
}
