//! The control socket of the `hello` example, driven by its own client (`hello ctl --control
//! PATH COMMAND`), deployed as in `upgrade.rs`: the program is `server` in a directory of
//! its own; a deploy renames the next program over it.
//!
//! * `upgrade` under loopback load answers with the new master's pid once it serves (exit
//!   0), the PID file and the control socket name the new master, the old master exits, and
//!   no request fails; `stop` to the new master then removes both files.
//! * Every rollback cause is the answer (exit 1): the new program exits (`exited`, with its
//!   code), hangs (`not_ready`), cannot be executed (`exec_failed`); the old master keeps
//!   serving with the same workers, without a failed request, and the PID file still names
//!   it. While the hanging upgrade waits for its answer, a second client is answered at
//!   once, with the upgrade under way in its status.
//! * Upgrade probation (`--upgrade-probation`), under loopback load, without a failed
//!   request: `rollback` on the control socket (the new master's, which forwards it) brings
//!   the old program back (its greeting), the new master exits, the PID file and the control
//!   socket name the old master again; a second upgrade during the probation is refused;
//!   SIGHUP to the waiting old master rolls back the same way (in exec mode too, from the old
//!   executable, which the deploy renamed the new program over); without a rollback the old
//!   master exits once the probation ends, and the new master serves on.
//! * `reload` and `scale N` under load answer with the new workers' pids, without a failed
//!   request.

// The library's test support (`tests/support` of the repository).
#[path = "../../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::thread;

use common::{Deploy, Hello, Load, Server, all_ok, children, get, hello_example, quoted};
use support::process::wait_for;
use support::procfs::is_alive;

const WORKERS: usize = 3;

/// `hello ctl --control SOCKET WORDS...`: (exit code, the reply line).
fn ctl(socket: &Path, words: &[&str]) -> (i32, String) {
    let out = Command::new(hello_example())
        .arg("ctl")
        .arg("--control")
        .arg(socket)
        .args(words)
        .output()
        .expect("running hello ctl");
    let reply = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let code = out.status.code().expect("hello ctl exited");
    (code, reply)
}

fn reply(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
}

/// A server started from a deploy directory with its control socket and PID file there.
fn controlled(deploy: &Deploy, extra: &[&str]) -> (Server, std::path::PathBuf, std::path::PathBuf) {
    let socket = deploy.dir.path().join("control.sock");
    let pid_file = deploy.dir.path().join("hello.pid");
    let mut cmd = Command::new(&deploy.server);
    cmd.arg("--control")
        .arg(&socket)
        .arg("--pid-file")
        .arg(&pid_file)
        .args(extra);
    let server = Server::start(&mut cmd, WORKERS);
    wait_for("the PID file", || pid_file.exists());
    (server, socket, pid_file)
}

fn pid_in(file: &Path) -> u32 {
    std::fs::read_to_string(file)
        .expect("the PID file")
        .trim()
        .parse()
        .expect("a pid")
}

/// Per-request and keep-alive load for `secs` seconds.
fn loads(addr: &str, secs: &str) -> [Load; 2] {
    ["new", "keepalive"].map(|conn| {
        Load::start(
            addr,
            &["--conn", conn, "--clients", "3", "--duration", secs],
        )
    })
}

#[test]
fn ctl_upgrade_answers_with_the_new_master_under_load() {
    let deploy = Deploy::new("ctl-upgrade");
    let staged = deploy.stage(
        &format!(
            "#!/bin/sh\nHELLO_GREETING=Howdy exec {} \"$@\"\n",
            quoted(&hello_example())
        ),
        0o755,
    );
    let (mut server, socket, pid_file) = controlled(&deploy, &[]);
    let old = server.pid();
    assert_eq!(pid_in(&pid_file), old);
    let old_workers = children(old);
    let running = loads(&server.addr, "4");
    thread::sleep(std::time::Duration::from_millis(500));
    deploy.replace(&staged);
    let (code, line) = ctl(&socket, &["upgrade"]);
    assert_eq!(code, 0, "{line}\n{}", server.log());
    let r = reply(&line);
    assert_eq!(
        (r["v"].as_u64(), r["ok"].as_bool()),
        (Some(1), Some(true)),
        "{line}"
    );
    let new = r["pid"].as_u64().expect("the new master's pid") as u32;
    server.adopt(new);
    assert_ne!(new, old);
    // Once answered, the path and the PID file name the new master.
    assert_eq!(pid_in(&pid_file), new);
    let (code, line) = ctl(&socket, &["status"]);
    assert_eq!(code, 0, "{line}");
    let status = reply(&line);
    assert_eq!(
        status["master"]["pid"].as_u64(),
        Some(u64::from(new)),
        "{line}"
    );
    assert_eq!(status["master"]["generation"].as_u64(), Some(1), "{line}");
    let status = server.wait_master();
    assert!(status.success(), "old master: {status}\n{}", server.log());
    wait_for("the old workers exit", || {
        old_workers.iter().all(|&pid| !is_alive(pid))
    });
    for report in running.map(Load::finish) {
        all_ok(&report);
    }
    let (code, line) = ctl(&socket, &["stop"]);
    assert_eq!(code, 0, "{line}");
    let (_, log) = server.wait_exit();
    wait_for("the new master exits", || !is_alive(new));
    assert!(!socket.exists(), "the socket is removed\n{log}");
    assert!(!pid_file.exists(), "the PID file is removed\n{log}");
}

/// Deploys `program` (with `mode`), asks `hello ctl upgrade`, and checks that it fails with
/// `reason` and a message containing `why`, and that the old master serves on unchanged.
/// With `second`, a `status` asked while the upgrade waits is answered at once.
fn ctl_rolls_back(
    tag: &str,
    program: &str,
    mode: u32,
    timeout: &str,
    reason: &str,
    why: &str,
    second: bool,
) {
    let deploy = Deploy::new(tag);
    let staged = deploy.stage(program, mode);
    let (mut server, socket, pid_file) = controlled(&deploy, &["--upgrade-timeout", timeout]);
    let master = server.pid();
    let workers = children(master);
    let running = loads(&server.addr, "4");
    deploy.replace(&staged);
    let upgrade = {
        let socket = socket.clone();
        thread::spawn(move || ctl(&socket, &["upgrade"]))
    };
    if second {
        // The upgrade waits for its new master; another client is served meanwhile.
        let under_way = wait_for_status(&socket, |s| s["upgrade"]["new_master"].is_u64());
        assert_eq!(under_way["master"]["pid"].as_u64(), Some(u64::from(master)));
    }
    let (code, line) = upgrade.join().expect("the upgrade client");
    assert_eq!(code, 1, "{line}\n{}", server.log());
    let r = reply(&line);
    assert_eq!(r["ok"].as_bool(), Some(false), "{line}");
    assert_eq!(r["rolled_back"].as_bool(), Some(true), "{line}");
    assert_eq!(r["reason"].as_str(), Some(reason), "{line}");
    let error = r["error"].as_str().expect("an error");
    assert!(
        error.starts_with("rolled back: ") && error.contains(why),
        "{line}"
    );
    for report in running.map(Load::finish) {
        all_ok(&report);
    }
    assert_eq!(children(master), workers, "the same workers serve");
    assert_eq!(
        pid_in(&pid_file),
        master,
        "the PID file names the old master"
    );
    let (code, line) = ctl(&socket, &["status"]);
    assert_eq!(code, 0, "{line}");
    assert_eq!(
        reply(&line)["master"]["pid"].as_u64(),
        Some(u64::from(master))
    );
    let (code, _) = ctl(&socket, &["stop"]);
    assert_eq!(code, 0);
    let (status, log) = server.wait_exit();
    assert!(status.success(), "master: {status}\n{log}");
    assert!(!socket.exists() && !pid_file.exists(), "{log}");
}

/// Asks `status` until `want` accepts it.
fn wait_for_status(socket: &Path, want: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_for("a status that shows it", || {
        let (code, line) = ctl(socket, &["status"]);
        assert_eq!(code, 0, "{line}");
        last = reply(&line);
        want(&last)
    });
    last
}

#[test]
fn ctl_upgrade_rolled_back_when_the_new_program_exits() {
    ctl_rolls_back(
        "ctl-exits",
        "#!/bin/sh\nexit 3\n",
        0o755,
        "30",
        "exited",
        "exit code 3",
        false,
    );
}

#[test]
fn ctl_upgrade_rolled_back_when_the_new_program_hangs_and_others_are_served() {
    ctl_rolls_back(
        "ctl-hangs",
        "#!/bin/sh\nexec sleep 60\n",
        0o755,
        "2",
        "not_ready",
        "was not ready within 2s",
        true,
    );
}

#[test]
fn ctl_upgrade_rolled_back_when_the_new_program_cannot_be_executed() {
    ctl_rolls_back(
        "ctl-not-executable",
        "#!/bin/sh\nexit 0\n",
        0o644,
        "30",
        "exec_failed",
        "could not be started",
        false,
    );
}

#[test]
fn ctl_reload_and_scale_answer_with_the_new_workers_under_load() {
    let deploy = Deploy::new("ctl-reload");
    let (mut server, socket, _) = controlled(&deploy, &[]);
    let master = server.pid();
    let before = children(master);
    let running = loads(&server.addr, "4");
    let (code, line) = ctl(&socket, &["reload"]);
    assert_eq!(code, 0, "{line}");
    let pids: BTreeSet<u32> = reply(&line)["pids"]
        .as_array()
        .expect("pids")
        .iter()
        .map(|p| p.as_u64().expect("a pid") as u32)
        .collect();
    assert_eq!(pids.len(), WORKERS, "{line}");
    assert!(pids.is_disjoint(&before), "{line}");
    for n in [5usize, 2] {
        let (code, line) = ctl(&socket, &["scale", &n.to_string()]);
        assert_eq!(code, 0, "{line}");
        assert_eq!(reply(&line)["workers"].as_u64(), Some(n as u64), "{line}");
    }
    for report in running.map(Load::finish) {
        all_ok(&report);
    }
    let (code, line) = ctl(&socket, &["scale", "0"]);
    assert_eq!(code, 1, "{line}");
    let (code, _) = ctl(&socket, &["stop"]);
    assert_eq!(code, 0);
    let (status, log) = server.wait_exit();
    assert!(status.success(), "master: {status}\n{log}");
}

/// The next program for the probation cases: the same build, greeting `Howdy`.
fn howdy(deploy: &Deploy) -> std::path::PathBuf {
    deploy.stage(
        &format!(
            "#!/bin/sh\nHELLO_GREETING=Howdy exec {} \"$@\"\n",
            quoted(&hello_example())
        ),
        0o755,
    )
}

/// The greeting of an answer from `addr`.
fn greeting(addr: &str) -> String {
    let (code, _, body) = get(addr, "/");
    assert_eq!(code, 200, "{body}");
    Hello::parse(&body)
        .unwrap_or_else(|| panic!("an answer of hello: {body:?}"))
        .greeting
}

/// Starts a server with an upgrade probation of `probation` seconds under load, upgrades
/// it with `hello ctl upgrade`, and waits until the old master is on probation (its workers
/// gone, itself alive). Returns the server, the loads, the control socket, the PID file,
/// and the old and new masters' pids.
fn upgraded_on_probation(
    deploy: &Deploy,
    probation: &str,
    secs: &str,
    extra: &[&str],
) -> (
    Server,
    [Load; 2],
    std::path::PathBuf,
    std::path::PathBuf,
    u32,
    u32,
) {
    let staged = howdy(deploy);
    let mut args = vec!["--upgrade-probation", probation];
    args.extend_from_slice(extra);
    let (server, socket, pid_file) = controlled(deploy, &args);
    let old = server.pid();
    let running = loads(&server.addr, secs);
    thread::sleep(std::time::Duration::from_millis(500));
    deploy.replace(&staged);
    let (code, line) = ctl(&socket, &["upgrade"]);
    assert_eq!(code, 0, "{line}\n{}", server.log());
    let new = reply(&line)["pid"].as_u64().expect("the new master's pid") as u32;
    server.adopt(new);
    assert_eq!(pid_in(&pid_file), new);
    server.log_line(|l| l.contains("upgrade probation: the old workers are gone"));
    assert!(is_alive(old), "the old master waits\n{}", server.log());
    assert_eq!(
        children(old),
        BTreeSet::from([new]),
        "the old master's only child is the new master"
    );
    assert_eq!(greeting(&server.addr), "Howdy");
    (server, running, socket, pid_file, old, new)
}

/// After a rollback: the old master serves the old program again under its PID file and
/// control socket, the new master is gone, no request failed; then `stop` ends it all.
fn rolled_back(
    mut server: Server,
    running: [Load; 2],
    socket: &Path,
    pid_file: &Path,
    old: u32,
    new: u32,
) {
    wait_for("the new master exits", || !is_alive(new));
    assert_eq!(pid_in(pid_file), old, "the PID file names the old master");
    let (code, line) = ctl(socket, &["status"]);
    assert_eq!(code, 0, "{line}");
    let status = reply(&line);
    assert_eq!(
        status["master"]["pid"].as_u64(),
        Some(u64::from(old)),
        "{line}"
    );
    assert_eq!(children(old).len(), WORKERS, "{line}");
    assert_eq!(greeting(&server.addr), "Hello");
    for report in running.map(Load::finish) {
        all_ok(&report);
    }
    let (code, _) = ctl(socket, &["stop"]);
    assert_eq!(code, 0);
    let (status, log) = server.wait_exit();
    assert!(status.success(), "master: {status}\n{log}");
    assert!(!socket.exists() && !pid_file.exists(), "{log}");
}

#[test]
fn ctl_rollback_during_the_upgrade_probation_brings_the_old_program_back_under_load() {
    let deploy = Deploy::new("ctl-rollback");
    let (server, running, socket, pid_file, old, new) =
        upgraded_on_probation(&deploy, "60", "6", &[]);
    // A second upgrade waits until the probation ends.
    let (code, line) = ctl(&socket, &["upgrade"]);
    assert_eq!(code, 1, "{line}");
    let error = reply(&line)["error"].as_str().expect("an error").to_owned();
    assert!(
        error.contains("probation") && error.contains(&old.to_string()),
        "{line}"
    );
    // The new master's socket forwards the rollback to the old master.
    let (code, line) = ctl(&socket, &["rollback"]);
    assert_eq!(code, 0, "{line}\n{}", server.log());
    let r = reply(&line);
    assert_eq!(r["rolled_back"].as_bool(), Some(true), "{line}");
    assert_eq!(r["pid"].as_u64(), Some(u64::from(old)), "{line}");
    rolled_back(server, running, &socket, &pid_file, old, new);
}

#[test]
fn hup_to_the_old_master_on_probation_rolls_back_under_load() {
    let deploy = Deploy::new("hup-rollback");
    let (server, running, socket, pid_file, old, new) =
        upgraded_on_probation(&deploy, "60", "6", &[]);
    server.signal(libc::SIGHUP);
    server.log_line(|l| l.contains("control socket") && l.contains("taken back"));
    rolled_back(server, running, &socket, &pid_file, old, new);
}

#[test]
fn hup_rollback_in_exec_mode_runs_the_old_executable_again() {
    // The deploy renamed the new program over the path: the old master's workers come from
    // `/proc/self/exe`, the old file.
    let deploy = Deploy::new("hup-rollback-exec");
    let (server, running, socket, pid_file, old, new) =
        upgraded_on_probation(&deploy, "60", "6", &["--mode", "exec"]);
    server.signal(libc::SIGHUP);
    server.log_line(|l| l.contains("control socket") && l.contains("taken back"));
    rolled_back(server, running, &socket, &pid_file, old, new);
}

#[test]
fn without_a_rollback_the_old_master_exits_when_the_probation_ends() {
    let deploy = Deploy::new("probation-ends");
    let (mut server, running, socket, pid_file, old, new) =
        upgraded_on_probation(&deploy, "3", "6", &[]);
    let status = server.wait_master();
    assert!(status.success(), "old master: {status}\n{}", server.log());
    assert!(is_alive(new));
    assert_eq!(pid_in(&pid_file), new);
    let (code, line) = ctl(&socket, &["status"]);
    assert_eq!(code, 0, "{line}");
    assert_eq!(
        reply(&line)["master"]["pid"].as_u64(),
        Some(u64::from(new)),
        "{line}"
    );
    // Nothing to roll back to any more; upgrades are possible again (not tried here).
    let (code, line) = ctl(&socket, &["rollback"]);
    assert_eq!(code, 1, "{line}");
    assert_eq!(greeting(&server.addr), "Howdy");
    for report in running.map(Load::finish) {
        all_ok(&report);
    }
    let _ = old;
    let (code, _) = ctl(&socket, &["stop"]);
    assert_eq!(code, 0);
    let (_, log) = server.wait_exit();
    wait_for("the new master exits", || !is_alive(new));
    assert!(!socket.exists() && !pid_file.exists(), "{log}");
}
