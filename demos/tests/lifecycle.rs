//! Zero-downtime lifecycle: no lifecycle event of a master loses a request, shown with the
//! real examples under loopback load from `prefork-load` (one client mode opening a
//! connection per request and one keeping connections alive, at the same time):
//!
//! * `hello`, and the servers on `prefork_tokio` (`hyper`, `axum`, `tokio`), in fork and
//!   exec mode, with one shared listener and with one `SO_REUSEPORT` socket per worker:
//!   three rolling restarts (HUP), one worker less (TTOU) and one more (TTIN) answer every
//!   request; TERM under load refuses new connections once the port closes, and answers
//!   every request it took. The master logs each retirement at INFO, no crash, and exits 0.
//!   Some of them run as an unprivileged user (uid 65534, through `setpriv`).
//! * A binary upgrade (USR2) of `hyper`, `axum` and `tokio` under load answers every
//!   request, from the old generation or the new one, as root and unprivileged.
//! * USR1 is forwarded, and every worker keeps serving: the same processes before and after.
//! * A slow request in flight when HUP arrives, and one when TERM arrives, completes.
//!
//! A keep-alive connection the server closes between two requests is no failure (the
//! client sends the next request on a new connection); a request sent and never answered is.
//! Every wait is on something observable (a log line, an answer, `/proc`) and bounded; the
//! pauses between signals only spread them over the load.

// The library's test support (`tests/support` of the repository): waits, signals, `/proc`,
// temporary directories, one failure style for every process test of the workspace.
#[path = "../../tests/support/mod.rs"]
mod support;

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    Hello, Load, Server, all_ok, bodies, children, connect, example, finish_loads, hello_example,
    new_master_pid, ok_or_refused, read_response, require, send_get,
};
use support::process::{TempDir, kill, wait_for};
use support::procfs::is_alive;

/// Workers of every server here.
const WORKERS: usize = 3;

/// Clients of each load mode.
const CLIENTS: &str = "3";

/// The pause between two signals, so that each lands on a server under load.
fn pace() {
    std::thread::sleep(Duration::from_millis(300));
}

/// Load from new connections and from keep-alive connections at once, for `secs` seconds,
/// once every client has had its first answer.
fn start_loads(addr: &str, secs: &str) -> [Load; 2] {
    ["new", "keepalive"].map(|conn| {
        Load::start(
            addr,
            &["--conn", conn, "--clients", CLIENTS, "--duration", secs],
        )
    })
}

/// The lines the master `pid` logged at `level`.
fn master_lines(log: &str, level: &str, pid: u32) -> Vec<String> {
    let prefix = format!("[{level} {pid}] ");
    log.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Who runs the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum User {
    /// The test's user (root in CI).
    Same,
    /// uid and gid 65534 (`nobody`), as `User=` in a systemd unit or `runAsNonRoot` would
    /// run it, through `setpriv`.
    Unprivileged,
}

/// The command that runs `program` with `args` as `user`, and the directory it runs from
/// (keep it while the program runs). The unprivileged user runs a copy in a directory of the
/// system's temporary directory, readable by all: the checkout may be in a directory only
/// its owner can enter.
fn command(program: &Path, args: &[&str], user: User) -> (Command, Option<TempDir>) {
    use std::os::unix::fs::PermissionsExt;
    let (mut cmd, dir) = match user {
        User::Same => (Command::new(program), None),
        User::Unprivileged => {
            require("setpriv");
            let dir = TempDir::new("unprivileged");
            let open = std::fs::Permissions::from_mode(0o755);
            std::fs::set_permissions(dir.path(), open.clone()).expect("open the directory");
            let copy = dir
                .path()
                .join(program.file_name().expect("a program name"));
            std::fs::copy(program, &copy).expect("copy the program");
            std::fs::set_permissions(&copy, open).expect("make the copy executable");
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(copy);
            (cmd, Some(dir))
        }
    };
    cmd.args(args);
    (cmd, dir)
}

/// HUP three times, TTOU, TTIN, all under load, then TERM under load of its own.
fn survives_the_lifecycle(program: &Path, args: &[&str]) {
    survives_the_lifecycle_as(program, args, User::Same);
}

fn survives_the_lifecycle_as(program: &Path, args: &[&str], user: User) {
    let (mut cmd, _dir) = command(program, args, user);
    let mut server = Server::start(&mut cmd, WORKERS);
    let master = server.pid();
    let info = format!("[INFO {master}] ");

    let loads = start_loads(&server.addr, "6");
    for _ in 0..3 {
        pace();
        server.signal(libc::SIGHUP);
        server.log_line(|l| l.starts_with(&info) && l.contains("rolling restart done"));
    }
    let last = WORKERS - 1;
    pace();
    server.signal(libc::SIGTTOU);
    let slot = format!("worker {last} (pid ");
    server.log_line(|l| l.starts_with(&info) && l.contains(&slot) && l.contains(" stopped: "));
    server.skip_lines();
    pace();
    server.signal(libc::SIGTTIN);
    server.log_line(|l| l.starts_with(&format!("{info}worker {last} started (pid ")));
    server.line(|l| l.starts_with(&format!("worker {last} serving ")));
    let [new, keepalive] = finish_loads(&server, loads, "the lifecycle");
    let during = [all_ok(&new), all_ok(&keepalive)];

    // The stop, under load of its own: every request the server took is answered, and the
    // rest are refused once the port closes.
    let loads = start_loads(&server.addr, "2");
    pace();
    server.signal(libc::SIGTERM);
    let [new, keepalive] = loads.map(Load::finish);
    let stop = [ok_or_refused(&new), ok_or_refused(&keepalive)];
    let (status, log) = server.wait_exit();
    assert!(status.success(), "master: {status}\n{log}");

    // Retired by the three rolling restarts and the TTOU, each logged at INFO; every worker
    // (those retired and those stopped by TERM) exited 0; no crash, no warning.
    let info_lines = master_lines(&log, "INFO", master);
    let retired = info_lines
        .iter()
        .filter(|l| l.contains(") retired: asked to drain"))
        .count();
    assert_eq!(retired, 3 * WORKERS + 1, "retirements:\n{log}");
    let stopped: Vec<_> = info_lines
        .iter()
        .filter(|l| l.contains(" stopped: "))
        .collect();
    assert!(
        stopped.iter().all(|l| l.contains(" stopped: exit code 0")),
        "a worker did not exit 0:\n{log}"
    );
    assert_eq!(stopped.len(), 4 * WORKERS + 1, "worker exits:\n{log}");
    let warnings = master_lines(&log, "WARN", master);
    assert!(warnings.is_empty(), "warnings: {warnings:#?}\n{log}");
    assert!(
        !log.contains("exited:"),
        "a worker exited by itself:\n{log}"
    );
    println!(
        "{} {args:?} ({user:?} user): lifecycle under load: {} + {} answered (new, keep-alive); stop under load: {:?} + {:?} (answered, refused)",
        program.file_name().unwrap_or_default().to_string_lossy(),
        during[0],
        during[1],
        stop[0],
        stop[1],
    );
}

#[test]
fn hello_fork_shared_loses_no_request() {
    survives_the_lifecycle(&hello_example(), &[]);
}

#[test]
fn hello_fork_reuseport_loses_no_request() {
    survives_the_lifecycle(&hello_example(), &["--reuseport"]);
}

#[test]
fn hello_exec_shared_loses_no_request() {
    survives_the_lifecycle(&hello_example(), &["--mode", "exec"]);
}

#[test]
fn hello_exec_reuseport_loses_no_request() {
    survives_the_lifecycle(&hello_example(), &["--mode", "exec", "--reuseport"]);
}

// The servers on `prefork_tokio`: every mode and listener kind, and an unprivileged user.

#[test]
fn hyper_fork_shared_loses_no_request() {
    survives_the_lifecycle(&example("hyper"), &[]);
}

#[test]
fn hyper_fork_reuseport_loses_no_request() {
    survives_the_lifecycle(&example("hyper"), &["--reuseport"]);
}

#[test]
fn hyper_exec_shared_loses_no_request() {
    survives_the_lifecycle(&example("hyper"), &["--mode", "exec"]);
}

#[test]
fn hyper_exec_reuseport_loses_no_request() {
    survives_the_lifecycle(&example("hyper"), &["--mode", "exec", "--reuseport"]);
}

// Unprivileged: where the kernel refuses the stop's socket filter to the master, full sockets
// in the listeners' reuseport group hold new connections off (docs/design.md, "A graceful stop
// without privilege"); a shared socket is made a group of one at the bind for it. Both kinds
// of listener, both modes.

#[test]
fn hello_unprivileged_fork_shared_loses_no_request() {
    survives_the_lifecycle_as(&hello_example(), &[], User::Unprivileged);
}

#[test]
fn hello_unprivileged_exec_shared_loses_no_request() {
    survives_the_lifecycle_as(&hello_example(), &["--mode", "exec"], User::Unprivileged);
}

#[test]
fn hyper_unprivileged_fork_shared_loses_no_request() {
    survives_the_lifecycle_as(&example("hyper"), &[], User::Unprivileged);
}

#[test]
fn axum_unprivileged_exec_shared_loses_no_request() {
    survives_the_lifecycle_as(&example("axum"), &["--mode", "exec"], User::Unprivileged);
}

#[test]
fn hyper_unprivileged_fork_reuseport_loses_no_request() {
    survives_the_lifecycle_as(&example("hyper"), &["--reuseport"], User::Unprivileged);
}

#[test]
fn hyper_unprivileged_exec_reuseport_loses_no_request() {
    survives_the_lifecycle_as(
        &example("hyper"),
        &["--mode", "exec", "--reuseport"],
        User::Unprivileged,
    );
}

#[test]
fn axum_fork_shared_loses_no_request() {
    survives_the_lifecycle(&example("axum"), &[]);
}

#[test]
fn axum_fork_reuseport_loses_no_request() {
    survives_the_lifecycle(&example("axum"), &["--reuseport"]);
}

#[test]
fn axum_exec_shared_loses_no_request() {
    survives_the_lifecycle(&example("axum"), &["--mode", "exec"]);
}

#[test]
fn axum_exec_reuseport_loses_no_request() {
    survives_the_lifecycle(&example("axum"), &["--mode", "exec", "--reuseport"]);
}

#[test]
fn axum_unprivileged_fork_reuseport_loses_no_request() {
    survives_the_lifecycle_as(&example("axum"), &["--reuseport"], User::Unprivileged);
}

#[test]
fn axum_unprivileged_exec_reuseport_loses_no_request() {
    survives_the_lifecycle_as(
        &example("axum"),
        &["--mode", "exec", "--reuseport"],
        User::Unprivileged,
    );
}

#[test]
fn tokio_exec_shared_loses_no_request() {
    survives_the_lifecycle(&example("tokio"), &["--mode", "exec"]);
}

#[test]
fn tokio_exec_reuseport_loses_no_request() {
    survives_the_lifecycle(&example("tokio"), &["--mode", "exec", "--reuseport"]);
}

#[test]
fn tokio_unprivileged_fork_reuseport_loses_no_request() {
    survives_the_lifecycle_as(&example("tokio"), &["--reuseport"], User::Unprivileged);
}

/// The worker pid in an answer (`... worker N (pid P)`).
fn answer_pid(body: &str) -> u32 {
    body.trim_end()
        .rsplit_once("(pid ")
        .and_then(|(_, pid)| pid.strip_suffix(')'))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in the answer {body:?}"))
}

/// USR2 under load (new and keep-alive connections): the same program starts as a new
/// master, serves, and the old master drains its workers and exits; every request is
/// answered, by an old worker or a new one, and both generations answered.
fn upgrades_without_loss(program: &Path, args: &[&str], user: User) {
    let (mut cmd, _dir) = command(program, args, user);
    let mut server = Server::start(&mut cmd, WORKERS);
    let old = server.pid();
    let old_workers = children(old);
    assert_eq!(old_workers.len(), WORKERS, "workers: {old_workers:?}");
    let loads = start_loads(&server.addr, "4");
    pace();
    server.signal(libc::SIGUSR2);
    let started = format!("[INFO {old}] upgrade: new master ");
    let line = server.log_line(|l| l.starts_with(&started) && l.contains(" started;"));
    let new = new_master_pid(&line);
    server.adopt(new);
    let serving = format!("[INFO {old}] upgrade: new master {new} is serving");
    server.log_line(|l| l.starts_with(&serving));
    let status = server.wait_master();
    assert!(status.success(), "old master: {status}\n{}", server.log());
    wait_for("the old workers exit", || {
        old_workers.iter().all(|&pid| !is_alive(pid))
    });
    let reports = finish_loads(&server, loads, "the upgrade");
    let answered = reports.each_ref().map(all_ok);
    let new_workers = children(new);
    assert_eq!(new_workers.len(), WORKERS, "new workers: {new_workers:?}");
    let mut from = [0u64; 2];
    for report in &reports {
        for (body, n) in bodies(report) {
            let pid = answer_pid(&body);
            if old_workers.contains(&pid) {
                from[0] += n;
            } else {
                assert!(
                    new_workers.contains(&pid),
                    "answer from neither generation: {body:?}"
                );
                from[1] += n;
            }
        }
    }
    assert!(from[0] > 0 && from[1] > 0, "answers (old, new): {from:?}");
    kill(new, libc::SIGTERM);
    let (_, log) = server.wait_exit();
    wait_for("the new master exits", || !is_alive(new));
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
    for master in [old, new] {
        let warnings = master_lines(&log, "WARN", master);
        assert!(warnings.is_empty(), "warnings: {warnings:#?}\n{log}");
    }
    println!(
        "{} {args:?} ({user:?} user): upgrade under load: {} + {} answered (new, keep-alive), {} by the old generation, {} by the new one",
        program.file_name().unwrap_or_default().to_string_lossy(),
        answered[0],
        answered[1],
        from[0],
        from[1]
    );
}

#[test]
fn hyper_upgrade_fork_shared_loses_no_request() {
    upgrades_without_loss(&example("hyper"), &[], User::Same);
}

#[test]
fn hyper_upgrade_exec_reuseport_unprivileged_loses_no_request() {
    upgrades_without_loss(
        &example("hyper"),
        &["--mode", "exec", "--reuseport"],
        User::Unprivileged,
    );
}

#[test]
fn hyper_upgrade_exec_shared_unprivileged_loses_no_request() {
    upgrades_without_loss(&example("hyper"), &["--mode", "exec"], User::Unprivileged);
}

#[test]
fn axum_upgrade_fork_reuseport_unprivileged_loses_no_request() {
    upgrades_without_loss(&example("axum"), &["--reuseport"], User::Unprivileged);
}

#[test]
fn axum_upgrade_fork_reuseport_loses_no_request() {
    upgrades_without_loss(&example("axum"), &["--reuseport"], User::Same);
}

#[test]
fn axum_upgrade_exec_shared_loses_no_request() {
    upgrades_without_loss(&example("axum"), &["--mode", "exec"], User::Same);
}

#[test]
fn tokio_upgrade_fork_shared_unprivileged_loses_no_request() {
    upgrades_without_loss(&example("tokio"), &[], User::Unprivileged);
}

#[test]
fn tokio_fork_shared_loses_no_request() {
    survives_the_lifecycle(&example("tokio"), &[]);
}

#[test]
fn tokio_fork_reuseport_loses_no_request() {
    survives_the_lifecycle(&example("tokio"), &["--reuseport"]);
}

/// Whether `pid` has a handler for SIGUSR1 (`SigCgt` in `/proc/PID/status`).
fn catches_usr1(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let caught = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("a SigCgt line");
    caught & (1 << (10 - 1)) != 0
}

#[test]
fn usr1_keeps_every_worker_serving() {
    let mut server = Server::start(&mut Command::new(hello_example()), WORKERS);
    let master = server.pid();
    let before = children(master);
    assert_eq!(before.len(), WORKERS, "workers: {before:?}");
    for &pid in &before {
        assert!(catches_usr1(pid), "worker {pid} has no SIGUSR1 handler");
    }
    let loads = start_loads(&server.addr, "4");
    pace();
    server.signal(libc::SIGUSR1);
    server.log_line(|l| l == format!("[INFO {master}] SIGUSR1: forwarding to the workers"));
    let reports = loads.map(Load::finish);
    let answered = reports.each_ref().map(all_ok);
    assert_eq!(children(master), before, "the workers changed");
    for report in &reports {
        for body in bodies(report).keys() {
            let hello = Hello::parse(body).unwrap_or_else(|| panic!("answer {body:?}"));
            assert!(before.contains(&hello.pid), "answer from {hello:?}");
        }
    }
    server.signal(libc::SIGTERM);
    let (status, log) = server.wait_exit();
    assert!(status.success(), "master: {status}\n{log}");
    assert!(
        !log.contains("ended by the"),
        "a worker died of USR1:\n{log}"
    );
    let warnings = master_lines(&log, "WARN", master);
    assert!(warnings.is_empty(), "warnings: {warnings:#?}\n{log}");
    println!(
        "USR1 under load: {} + {} answered (new, keep-alive)",
        answered[0], answered[1]
    );
}

/// `GET /slow?ms=1500` is in flight when HUP arrives, and another when TERM arrives: both
/// complete with 200.
fn slow_request_completes(program: &Path) {
    let mut server = Server::start(&mut Command::new(program), 2);
    let master = server.pid();
    for (signal, number) in [("HUP", libc::SIGHUP), ("TERM", libc::SIGTERM)] {
        let mut slow = connect(&server.addr);
        send_get(&mut slow, "/slow?ms=1500");
        server.line(|l| l.contains("slow request"));
        server.signal(number);
        let (status, head, body) = read_response(&mut slow);
        assert_eq!(status, 200, "after {signal}: {head}{body}");
        assert!(body.starts_with("slept 1500 ms"), "after {signal}: {body}");
        if signal == "HUP" {
            server.log_line(|l| {
                l == format!(
                    "[INFO {master}] rolling restart done: every slot has a new worker serving"
                )
            });
        }
    }
    let (status, log) = server.wait_exit();
    assert!(status.success(), "master: {status}\n{log}");
    let stopped: Vec<_> = log.lines().filter(|l| l.contains(" stopped: ")).collect();
    assert_eq!(stopped.len(), 4, "worker exits:\n{log}");
    assert!(
        stopped.iter().all(|l| l.contains(" stopped: exit code 0")),
        "a worker did not exit 0:\n{log}"
    );
}

#[test]
fn hello_slow_request_survives_hup_and_term() {
    slow_request_completes(&hello_example());
}

#[test]
fn tokio_slow_request_survives_hup_and_term() {
    slow_request_completes(&example("tokio"));
}

#[test]
fn hyper_slow_request_survives_hup_and_term() {
    slow_request_completes(&example("hyper"));
}

#[test]
fn axum_slow_request_survives_hup_and_term() {
    slow_request_completes(&example("axum"));
}
