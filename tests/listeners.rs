//! Process-level tests of the listeners the crate owns: `Prefork::listen_and_serve` in fork
//! and exec mode, `SO_REUSEPORT`, bind errors, the exec-mode child protocol, systemd socket
//! activation, and interop with a foreign master. Real processes, observed through sockets,
//! `/proc`, exit codes and logs.
//!
//! This is a `harness = false` test binary with two roles. Started with `PREFORK_FIXTURE`
//! set, it is a fixture master (see `listeners/fixture.rs`); exec-mode workers are this
//! binary re-executed with the same arguments and environment, so the variable, not the
//! arguments, decides the role. Otherwise it is the driver: it runs every test (or those
//! named), one line each, then `N passed, M failed`, and exits non-zero on a failure.
//!
//! Arguments, as libtest (and so nextest) passes them: `--list` (with `--format terse`:
//! `NAME: test` lines; with `--ignored`: none), `--exact` (filters must equal the name),
//! `--skip FILTER`, any other argument is a substring filter; other flags are ignored.
//!
//! Every supervision case runs under both reaping backends (`PREFORK_BACKEND=pidfd` and
//! `sigchld`), and in fork and exec mode where both make sense.

#[path = "listeners/drive.rs"]
mod drive;
#[path = "listeners/fixture.rs"]
mod fixture;
#[path = "listeners/procfs.rs"]
mod procfs;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use drive::{
    DEADLINE, Fd3, Fixture, Serving, Spec, TestResult, ask, ask_at, ask_until_all,
    expect_answers_from, hold_all, kill, wait_until,
};

fn main() {
    if let Ok(scenario) = std::env::var(drive::FIXTURE_ENV) {
        fixture::main(&scenario);
    }
    std::process::exit(run_driver());
}

// ---------------------------------------------------------------------------------------
// The driver: test list, argument handling, reporting.

struct Test {
    name: String,
    run: Box<dyn Fn() -> TestResult>,
}

fn test(name: impl Into<String>, run: impl Fn() -> TestResult + 'static) -> Test {
    Test {
        name: name.into(),
        run: Box::new(run),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Pidfd,
    Sigchld,
}

impl Backend {
    const ALL: [Backend; 2] = [Backend::Pidfd, Backend::Sigchld];

    fn env(self) -> &'static str {
        match self {
            Backend::Pidfd => "pidfd",
            Backend::Sigchld => "sigchld",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Fork,
    Exec,
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::Fork, Mode::Exec];

    fn env(self) -> &'static str {
        match self {
            Mode::Fork => "fork",
            Mode::Exec => "exec",
        }
    }
}

fn tests() -> Vec<Test> {
    let mut t = Vec::new();
    for mode in Mode::ALL {
        for backend in Backend::ALL {
            t.push(test(
                format!("shared_listener::{}::{}", mode.env(), backend.env()),
                move || shared_listener(mode, backend),
            ));
        }
    }
    t.push(test("threaded_master::exec_serves", threaded_exec_serves));
    t.push(test(
        "threaded_master::auto_chooses_exec",
        threaded_auto_exec,
    ));
    t.push(test("threaded_master::fork_refused", threaded_fork_refused));
    t.push(test(
        "threaded_master::auto_single_threaded_forks",
        auto_single_threaded_forks,
    ));
    for backend in Backend::ALL {
        t.push(test(
            format!("threaded_master::sigterm_stops_all::{}", backend.env()),
            move || threaded_sigterm(backend),
        ));
    }
    for backend in Backend::ALL {
        t.push(test(
            format!("exec_supervision::respawn_same_slot::{}", backend.env()),
            move || exec_respawn(backend),
        ));
        t.push(test(
            format!("exec_supervision::master_killed::{}", backend.env()),
            move || exec_master_killed(backend),
        ));
    }
    for backend in Backend::ALL {
        t.push(test(
            format!("reuseport::fork_socket_per_slot::{}", backend.env()),
            move || reuseport_fork_per_slot(backend),
        ));
        t.push(test(
            format!("reuseport::fork_no_reset::{}", backend.env()),
            move || reuseport_fork_no_reset(backend),
        ));
        t.push(test(
            format!("reuseport::ttou_closes_retired_socket::{}", backend.env()),
            move || reuseport_ttou(backend),
        ));
    }
    t.push(test(
        "reuseport::exec_each_worker_binds",
        reuseport_exec_binds,
    ));
    t.push(test(
        "reuseport::exec_reference_unasserted",
        reuseport_exec_reference,
    ));
    for (name, mode, reuseport) in [
        ("fork", Mode::Fork, false),
        ("exec", Mode::Exec, false),
        ("fork_reuseport", Mode::Fork, true),
        ("exec_reuseport", Mode::Exec, true),
    ] {
        t.push(test(format!("bind_errors::busy_port::{name}"), move || {
            bind_busy(mode, reuseport)
        }));
    }
    t.push(test("bind_errors::malformed_addresses", bind_malformed));
    t.push(test("bind_errors::unresolvable_host", bind_unresolvable));
    t.push(test("bind_errors::tcp6_with_ipv4_address", || {
        bind_wrong_family("tcp6", "127.0.0.1:0", "IPv6")
    }));
    t.push(test("bind_errors::tcp4_with_ipv6_address", || {
        bind_wrong_family("tcp4", "[::1]:0", "IPv4")
    }));
    t.push(test("network::tcp6_loopback", network_tcp6));
    t.push(test(
        "network::tcp_empty_host_dual_stack",
        network_dual_stack,
    ));
    t.push(test("child_errors::fd3_not_open", || {
        child_fd3(Fd3Kind::Closed, &["fd 3", "not open"])
    }));
    t.push(test("child_errors::fd3_regular_file", || {
        child_fd3(Fd3Kind::DevNull, &["fd 3", "not a socket"])
    }));
    t.push(test("child_errors::fd3_tcp_not_listening", || {
        child_fd3(Fd3Kind::TcpConnected, &["fd 3", "not listening"])
    }));
    t.push(test("child_errors::fd3_udp_socket", || {
        child_fd3(Fd3Kind::Udp, &["fd 3", "not a TCP socket"])
    }));
    t.push(test("child_errors::fd3_unix_socket", || {
        child_fd3(Fd3Kind::Unix, &["fd 3", "not a TCP socket"])
    }));
    t.push(test("child_errors::child_flag_malformed", || {
        master_env_error(
            &[("FASTHTTP_PREFORK_CHILD", "yes")],
            false,
            "FASTHTTP_PREFORK_CHILD",
        )
    }));
    for (name, value) in [
        ("negative", "-1"),
        ("letters", "abc"),
        ("empty", ""),
        ("leading_zero", "01"),
    ] {
        t.push(test(
            format!("child_errors::worker_id_malformed::{name}"),
            move || child_env_error(&[("PREFORK_WORKER_ID", value)], "PREFORK_WORKER_ID"),
        ));
    }
    t.push(test("child_errors::reuseport_addr_malformed", || {
        child_env_error(
            &[("FX_REUSEPORT", "1"), ("PREFORK_REUSEPORT_ADDR", "nowhere")],
            "PREFORK_REUSEPORT_ADDR",
        )
    }));
    t.push(test("child_errors::listen_fds_malformed", || {
        master_env_error(&[("LISTEN_FDS", "x")], true, "LISTEN_FDS")
    }));
    t.push(test("child_errors::listen_fds_missing", || {
        master_env_error(&[], true, "LISTEN_FDS")
    }));
    for (name, value) in [("zero", "0"), ("letters", "abc"), ("negative", "-5")] {
        t.push(test(
            format!("child_errors::listen_pid_malformed::{name}"),
            move || {
                master_env_error(
                    &[("LISTEN_PID", value), ("LISTEN_FDS", "1")],
                    false,
                    "LISTEN_PID",
                )
            },
        ));
    }
    t.push(test("child_errors::listen_fdnames_wrong_count", || {
        master_env_error(
            &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "web:admin")],
            true,
            "LISTEN_FDNAMES",
        )
    }));
    t.push(test("child_errors::backend_malformed", || {
        master_env_error(&[("PREFORK_BACKEND", "epoll")], false, "PREFORK_BACKEND")
    }));
    for (name, mode, reuseport) in [
        ("fork", Mode::Fork, false),
        ("exec", Mode::Exec, false),
        ("fork_reuseport", Mode::Fork, true),
        ("exec_reuseport", Mode::Exec, true),
    ] {
        t.push(test(
            format!("systemd::serves_inherited::{name}"),
            move || systemd_serves(mode, reuseport),
        ));
    }
    t.push(test("systemd::fd3_not_open", systemd_fd3_closed));
    t.push(test("systemd::other_pid_ignored", systemd_other_pid));
    t.push(test("foreign_master::hello_example", foreign_master));
    t.push(test(
        "foreign_master::reuseport_child_binds_addr",
        foreign_reuseport_child,
    ));
    t
}

/// Runs the selected tests; the process exit code.
fn run_driver() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut list = false;
    let mut ignored = false;
    let mut exact = false;
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "--list" => list = true,
            "--ignored" => ignored = true,
            "--exact" => exact = true,
            "--skip" => {
                i += 1;
                if let Some(s) = args.get(i) {
                    skips.push(s.clone());
                }
            }
            // Flags that take a value, ignored with it.
            "--format" | "--test-threads" | "--color" | "--logfile" | "--shuffle-seed" | "-Z" => {
                i += 1
            }
            _ if a.starts_with('-') => {}
            _ => filters.push(a.to_owned()),
        }
        i += 1;
    }
    let selected: Vec<Test> = tests()
        .into_iter()
        .filter(|t| {
            let wanted = filters.is_empty()
                || filters.iter().any(|f| {
                    if exact {
                        t.name == *f
                    } else {
                        t.name.contains(f.as_str())
                    }
                });
            wanted && !skips.iter().any(|s| t.name.contains(s.as_str()))
        })
        .collect();
    if list {
        if !ignored {
            for t in &selected {
                println!("{}: test", t.name);
            }
        }
        return 0;
    }
    if ignored {
        println!("0 passed, 0 failed");
        return 0;
    }
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for t in &selected {
        let began = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.run)()))
            .unwrap_or_else(|p| {
                Err(format!(
                    "panicked: {}",
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default()
                ))
            });
        let transcript = drive::take_transcript();
        let secs = began.elapsed().as_secs_f64();
        match outcome {
            Ok(note) if note.starts_with("skipped") => {
                skipped += 1;
                println!("test {} ... {note}", t.name);
            }
            Ok(note) if note.is_empty() => {
                passed += 1;
                println!("test {} ... ok ({secs:.1}s)", t.name);
            }
            Ok(note) => {
                passed += 1;
                println!("test {} ... ok ({secs:.1}s): {note}", t.name);
            }
            Err(e) => {
                failed += 1;
                println!("test {} ... FAILED ({secs:.1}s): {e}", t.name);
                for line in transcript {
                    println!("    {line}");
                }
            }
        }
        let _ = std::io::stdout().flush();
    }
    let skipped_note = if skipped > 0 {
        format!(", {skipped} skipped")
    } else {
        String::new()
    };
    println!("{passed} passed, {failed} failed{skipped_note}");
    i32::from(failed > 0)
}

// ---------------------------------------------------------------------------------------
// Helpers shared by the tests.

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(msg()) }
}

fn spec(mode: Mode, backend: Backend, workers: usize) -> Spec {
    Spec::new()
        .env("FX_MODE", mode.env())
        .env("PREFORK_BACKEND", backend.env())
        .env("FX_WORKERS", workers.to_string())
}

/// The log line the master prints when it starts, naming mode and backend.
fn expect_mode_log(fx: &Fixture, mode: Mode, backend: Backend) -> Result<(), String> {
    let b = match backend {
        Backend::Pidfd => "Pidfd",
        Backend::Sigchld => "Sigchld",
    };
    fx.expect_log(&format!("({} mode, {b} backend)", mode.env()))
}

/// Checks that a worker is an exec-mode worker of slot `id`, not a forked copy: its
/// environment carries the child protocol, its command line is the master's, and it has
/// exactly descriptors 0-3, 3 being the listening socket `inode` (when given).
fn expect_exec_worker(
    fx: &Fixture,
    spec_args: &[String],
    pid: u32,
    id: usize,
    inode: Option<u64>,
) -> Result<(), String> {
    let env = procfs::environ(pid).ok_or_else(|| format!("cannot read environ of {pid}"))?;
    for (k, v) in [
        ("FASTHTTP_PREFORK_CHILD", "1".to_owned()),
        ("PREFORK_WORKER_ID", id.to_string()),
    ] {
        let got = procfs::environ_var(&env, k);
        check(got.as_deref() == Some(v.as_str()), || {
            format!("worker {pid}: /proc environ has {k}={got:?}, expected {v:?}")
        })?;
    }
    let master_cmd = procfs::cmdline(fx.pid).unwrap_or_default();
    let worker_cmd = procfs::cmdline(pid).unwrap_or_default();
    check(
        master_cmd.len() > 1 && worker_cmd == master_cmd && master_cmd[1..] == *spec_args,
        || format!("worker {pid} runs {worker_cmd:?}, master {master_cmd:?}"),
    )?;
    let ppid = procfs::stat(pid).map(|s| s.ppid);
    check(ppid == Some(fx.pid), || {
        format!(
            "worker {pid} has parent {ppid:?}, expected the master {}",
            fx.pid
        )
    })?;
    // Connections just closed by the client may still be open in the worker for a moment.
    let mut last = Vec::new();
    let ok = wait_until("the worker's descriptors to settle", || {
        last = procfs::fds(pid);
        let numbers: Vec<i32> = last.iter().map(|(fd, _)| *fd).collect();
        numbers == [0, 1, 2, 3]
            && procfs::socket_inode(&last[3].1).is_some_and(|i| inode.is_none_or(|want| want == i))
    });
    ok.map_err(|_| {
        format!(
            "worker {pid} has descriptors {last:?}, expected 0-2 and the listener ({inode:?}) on 3"
        )
    })
}

fn expect_not_exec_worker(pid: u32) -> Result<(), String> {
    let env = procfs::environ(pid).ok_or_else(|| format!("cannot read environ of {pid}"))?;
    let got = procfs::environ_var(&env, "FASTHTTP_PREFORK_CHILD");
    check(got.is_none(), || {
        format!("forked worker {pid} was executed with FASTHTTP_PREFORK_CHILD={got:?}")
    })
}

fn pids(serving: &[Serving]) -> Vec<u32> {
    serving.iter().map(|s| s.pid).collect()
}

// ---------------------------------------------------------------------------------------
// 1. One shared listener.

fn shared_listener(mode: Mode, backend: Backend) -> TestResult {
    let n = 3;
    let s = spec(mode, backend, n);
    let args = s.args().to_vec();
    let mut fx = s.start()?;
    let serving = fx.ready_serving()?;
    expect_mode_log(&fx, mode, backend)?;
    let port = serving[0].port;
    let inode = serving[0].inode;
    check(
        serving.iter().all(|s| s.port == port && s.inode == inode),
        || format!("workers do not share one listener: {serving:?}"),
    )?;
    let master_listeners = procfs::listeners_of(fx.pid, port);
    check(master_listeners == [inode], || {
        format!("master holds listeners {master_listeners:?}, expected [{inode}]")
    })?;
    let (held, answers) = hold_all(port, n)?;
    expect_answers_from(&answers, &serving)?;
    drop(held);
    for s in &serving {
        match mode {
            Mode::Exec => expect_exec_worker(&fx, &args, s.pid, s.id, Some(inode))?,
            Mode::Fork => {
                expect_not_exec_worker(s.pid)?;
                let mine = procfs::listeners_of(s.pid, port);
                check(mine == [inode], || {
                    format!(
                        "worker {} holds listeners {mine:?}, expected [{inode}]",
                        s.pid
                    )
                })?;
            }
        }
    }
    fx.stop(&pids(&serving))?;
    Ok(String::new())
}

// ---------------------------------------------------------------------------------------
// 2. A master that already runs a thread.

fn threaded_exec_serves() -> TestResult {
    let s = spec(Mode::Exec, Backend::Pidfd, 2).env("FX_THREAD", "1");
    let args = s.args().to_vec();
    let mut fx = s.start()?;
    let serving = fx.ready_serving()?;
    expect_mode_log(&fx, Mode::Exec, Backend::Pidfd)?;
    let (held, answers) = hold_all(serving[0].port, 2)?;
    expect_answers_from(&answers, &serving)?;
    drop(held);
    for s in &serving {
        expect_exec_worker(&fx, &args, s.pid, s.id, Some(s.inode))?;
    }
    fx.stop(&pids(&serving))?;
    Ok(String::new())
}

fn threaded_auto_exec() -> TestResult {
    let s = Spec::new()
        .env("FX_MODE", "auto")
        .env("FX_WORKERS", "2")
        .env("FX_THREAD", "1");
    let args = s.args().to_vec();
    let mut fx = s.start()?;
    let serving = fx.ready_serving()?;
    fx.expect_log("mode auto: 2 threads running, re-executing workers")?;
    fx.expect_log("(exec mode,")?;
    let (held, answers) = hold_all(serving[0].port, 2)?;
    expect_answers_from(&answers, &serving)?;
    drop(held);
    for s in &serving {
        expect_exec_worker(&fx, &args, s.pid, s.id, Some(s.inode))?;
    }
    fx.stop(&pids(&serving))?;
    Ok(String::new())
}

fn auto_single_threaded_forks() -> TestResult {
    let mut fx = Spec::new()
        .env("FX_MODE", "auto")
        .env("FX_WORKERS", "2")
        .start()?;
    let serving = fx.ready_serving()?;
    fx.expect_log("mode auto: single-threaded, forking workers")?;
    fx.expect_log("(fork mode,")?;
    let (held, answers) = hold_all(serving[0].port, 2)?;
    expect_answers_from(&answers, &serving)?;
    drop(held);
    for s in &serving {
        expect_not_exec_worker(s.pid)?;
    }
    fx.stop(&pids(&serving))?;
    Ok(String::new())
}

fn threaded_fork_refused() -> TestResult {
    let mut fx = Spec::new()
        .env("FX_MODE", "fork")
        .env("FX_WORKERS", "2")
        .env("FX_THREAD", "1")
        .start()?;
    let (display, debug) = fx.expect_early_error()?;
    check(
        display.contains("cannot fork workers") && display.contains("2 threads"),
        || format!("unexpected error {display:?}"),
    )?;
    check(debug.contains("NotSingleThreaded"), || {
        format!("expected Error::NotSingleThreaded, got {debug}")
    })?;
    Ok(String::new())
}

/// SIGTERM to a master whose extra thread does not block it: the kernel may deliver it to
/// that thread; the master must still stop everything and exit 0. Several rounds.
fn threaded_sigterm(backend: Backend) -> TestResult {
    let rounds = 4;
    for round in 0..rounds {
        let mut fx = spec(Mode::Exec, backend, 2).env("FX_THREAD", "1").start()?;
        let serving = fx.ready_serving()?;
        let a = ask(serving[0].port, "id")?;
        check(serving.iter().any(|s| s.pid == a.pid), || {
            format!("round {round}: answer from unknown worker {a:?}")
        })?;
        // The extra thread's mask: SIGTERM must not be blocked there.
        let threads = thread_masks(fx.pid);
        check(
            threads.len() == 2
                && threads
                    .iter()
                    .any(|&(_, blk)| blk & (1 << (libc::SIGTERM - 1)) == 0),
            || format!("round {round}: expected a thread not blocking SIGTERM, got {threads:?}"),
        )?;
        fx.stop(&pids(&serving))
            .map_err(|e| format!("round {round}: {e}"))?;
        let stopped = fx.lines().iter().filter(|l| l.starts_with("exit ")).count();
        check(stopped == 2, || {
            format!("round {round}: {stopped} exit reports, expected 2")
        })?;
    }
    Ok(format!("{rounds} rounds"))
}

/// Each thread of `pid` with its blocked-signal mask.
fn thread_masks(pid: u32) -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
        let blk = status
            .lines()
            .find_map(|l| u64::from_str_radix(l.strip_prefix("SigBlk:")?.trim(), 16).ok())?;
        Some((tid, blk))
    })
    .collect()
}

// ---------------------------------------------------------------------------------------
// 3. Exec-mode supervision.

fn exec_respawn(backend: Backend) -> TestResult {
    let s = spec(Mode::Exec, backend, 2);
    let args = s.args().to_vec();
    let mut fx = s.start()?;
    let serving = fx.ready_serving()?;
    expect_mode_log(&fx, Mode::Exec, backend)?;
    let victim = serving[1];
    kill(victim.pid, libc::SIGKILL)?;
    let new = fx.recovered(victim.pid)?;
    fx.wait_line(&format!("exit 1 {}", victim.pid))
        .and_then(|how| check(how == "Signal(9)", || format!("exit reported as {how}")))?;
    let replacement = fx.serving(&[new])?[0];
    check(replacement.id == 1, || {
        format!("the replacement {new} serves as worker {}", replacement.id)
    })?;
    expect_exec_worker(&fx, &args, new, 1, Some(victim.inode))?;
    let now = [serving[0], replacement];
    let (held, answers) = hold_all(victim.port, 2)?;
    expect_answers_from(&answers, &now)?;
    drop(held);
    fx.stop(&pids(&now))?;
    for s in now {
        fx.wait_line(&format!("exit {} {}", s.id, s.pid))
            .and_then(|how| check(how == "Signal(15)", || format!("stop reported as {how}")))?;
    }
    Ok(String::new())
}

fn exec_master_killed(backend: Backend) -> TestResult {
    let mut fx = spec(Mode::Exec, backend, 2).start()?;
    let serving = fx.ready_serving()?;
    ask(serving[0].port, "id")?;
    fx.signal(libc::SIGKILL)?;
    fx.wait_exit(DEADLINE)?;
    fx.wait_gone(&pids(&serving))?;
    Ok(String::new())
}

// ---------------------------------------------------------------------------------------
// 4. SO_REUSEPORT.

fn reuseport_fork_per_slot(backend: Backend) -> TestResult {
    let n = 3;
    let mut fx = spec(Mode::Fork, backend, n)
        .env("FX_REUSEPORT", "1")
        .start()?;
    let serving = fx.ready_serving()?;
    let port = serving[0].port;
    let inodes: Vec<u64> = serving.iter().map(|s| s.inode).collect();
    let mut distinct = inodes.clone();
    distinct.sort_unstable();
    distinct.dedup();
    check(
        distinct.len() == n && serving.iter().all(|s| s.port == port),
        || format!("expected {n} sockets on one port: {serving:?}"),
    )?;
    // The master keeps every slot's socket, bound in slot order.
    let master = procfs::listeners_of(fx.pid, port);
    check(master == inodes, || {
        format!("master holds {master:?}, expected the workers' sockets in slot order {inodes:?}")
    })?;
    for s in &serving {
        let mine = procfs::listeners_of(s.pid, port);
        check(mine == [s.inode], || {
            format!(
                "worker {} holds {mine:?}, expected only its own socket {}",
                s.id, s.inode
            )
        })?;
    }
    let answers = ask_until_all(port, &serving)?;
    for (a, s) in answers.iter().zip(&serving) {
        check(a.inode == s.inode, || {
            format!("worker {} answered from socket {}", s.id, a.inode)
        })?;
    }
    // A replacement serves the socket of the slot it replaces.
    let victim = serving[1];
    kill(victim.pid, libc::SIGKILL)?;
    let new = fx.recovered(victim.pid)?;
    let replacement = fx.serving(&[new])?[0];
    check(
        replacement.id == 1 && replacement.inode == victim.inode,
        || {
            format!(
                "replacement {replacement:?} does not serve slot 1's socket {}",
                victim.inode
            )
        },
    )?;
    let now = [serving[0], replacement, serving[2]];
    ask_until_all(port, &now)?;
    let master = procfs::listeners_of(fx.pid, port);
    check(master == inodes, || {
        format!("after the respawn the master holds {master:?}")
    })?;
    fx.stop(&pids(&now))?;
    Ok(String::new())
}

/// SIGTTOU retires the highest slot: the master must close that slot's socket too, or the
/// kernel keeps handing it connections that nobody accepts.
fn reuseport_ttou(backend: Backend) -> TestResult {
    let n = 3;
    let mut fx = spec(Mode::Fork, backend, n)
        .env("FX_REUSEPORT", "1")
        .start()?;
    let serving = fx.ready_serving()?;
    let port = serving[0].port;
    let retired = serving[n - 1];
    fx.signal(libc::SIGTTOU)?;
    fx.wait_gone(&[retired.pid])?;
    let kept: Vec<u64> = serving[..n - 1].iter().map(|s| s.inode).collect();
    wait_until("the master to close the retired slot's socket", || {
        procfs::listeners_of(fx.pid, port) == kept
    })?;
    let answered = AtomicUsize::new(0);
    let total = 30;
    let mut lost = Vec::new();
    for _ in 0..total {
        match one_request(drive::local(port), &answered) {
            Outcome::Answered(a) => check(a.id < n - 1, || {
                format!("answered by retired slot {}: {a:?}", a.id)
            })?,
            other => lost.push(format!("{other:?}")),
        }
    }
    check(lost.is_empty(), || {
        format!(
            "{} of {total} requests not answered after TTOU: {lost:?}",
            lost.len()
        )
    })?;
    fx.stop(&pids(&serving[..n - 1]))?;
    Ok(format!(
        "{total} answered by the {} remaining workers",
        n - 1
    ))
}

#[derive(Debug)]
enum Outcome {
    Answered(drive::Answer),
    Reset(String),
    Timeout,
}

/// Sends one request and waits for the answer.
fn one_request(addr: SocketAddr, answered: &AtomicUsize) -> Outcome {
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
        Ok(s) => s,
        Err(e) => return Outcome::Reset(format!("connect: {e}")),
    };
    let _ = stream.set_read_timeout(Some(DEADLINE));
    if let Err(e) = stream.write_all(b"id\n") {
        return Outcome::Reset(format!("send: {e}"));
    }
    let mut text = String::new();
    match stream.read_to_string(&mut text) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Outcome::Timeout;
        }
        Err(e) => return Outcome::Reset(e.to_string()),
    }
    let mut f = text.split_whitespace();
    let parsed = (|| {
        Some(drive::Answer {
            id: f.next()?.parse().ok()?,
            pid: f.next()?.parse().ok()?,
            inode: f.next()?.parse().ok()?,
            extra: String::new(),
        })
    })();
    match parsed {
        Some(a) => {
            answered.fetch_add(1, Ordering::SeqCst);
            Outcome::Answered(a)
        }
        None => Outcome::Reset(format!("end of stream after {text:?}")),
    }
}

struct StopKill {
    total: usize,
    queued: usize,
    answered: usize,
    by_replacement: usize,
    reset: Vec<String>,
    timeouts: usize,
}

/// Stops worker 1 (SIGSTOP), sends `total` requests, waits until every request not queued
/// on the stopped worker's socket is answered, kills the stopped worker and collects what
/// became of every request.
fn stop_then_kill(mode: Mode, backend: Backend) -> Result<StopKill, String> {
    let total = 50;
    let mut fx = spec(mode, backend, 3).env("FX_REUSEPORT", "1").start()?;
    let serving = fx.ready_serving()?;
    let port = serving[0].port;
    ask_until_all(port, &serving)?;
    let victim = serving[1];
    kill(victim.pid, libc::SIGSTOP)?;
    wait_until("the worker to stop", || {
        procfs::stat(victim.pid).is_some_and(|s| s.state == 'T')
    })?;
    let answered = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..total)
        .map(|_| {
            let answered = Arc::clone(&answered);
            std::thread::spawn(move || one_request(drive::local(port), &answered))
        })
        .collect();
    // Every request lands either on a running worker's socket (answered) or in the stopped
    // worker's accept queue.
    let mut queued = 0;
    wait_until("every request to be answered or queued", || {
        queued = procfs::queued(port, victim.inode).unwrap_or(0) as usize;
        answered.load(Ordering::SeqCst) + queued == total
    })
    .map_err(|e| {
        format!(
            "{e}: {} answered, {queued} queued",
            answered.load(Ordering::SeqCst)
        )
    })?;
    kill(victim.pid, libc::SIGKILL)?;
    let new = fx.recovered(victim.pid)?;
    let outcomes: Vec<Outcome> = threads
        .into_iter()
        .map(|t| {
            t.join()
                .unwrap_or(Outcome::Reset("client thread panicked".to_owned()))
        })
        .collect();
    let mut r = StopKill {
        total,
        queued,
        answered: 0,
        by_replacement: 0,
        reset: Vec::new(),
        timeouts: 0,
    };
    for o in outcomes {
        match o {
            Outcome::Answered(a) => {
                r.answered += 1;
                if a.pid == new {
                    r.by_replacement += 1;
                }
            }
            Outcome::Reset(e) => r.reset.push(e),
            Outcome::Timeout => r.timeouts += 1,
        }
    }
    let now = fx.serving(&[new])?;
    fx.stop(&[serving[0].pid, now[0].pid, serving[2].pid])?;
    Ok(r)
}

fn reuseport_fork_no_reset(backend: Backend) -> TestResult {
    let r = stop_then_kill(Mode::Fork, backend)?;
    check(r.queued > 0, || {
        format!(
            "none of {} requests landed on the stopped worker's socket",
            r.total
        )
    })?;
    check(
        r.answered == r.total && r.reset.is_empty() && r.timeouts == 0,
        || {
            format!(
                "{} of {} answered, {} reset ({:?}), {} timed out",
                r.answered,
                r.total,
                r.reset.len(),
                r.reset.first(),
                r.timeouts
            )
        },
    )?;
    check(r.by_replacement == r.queued, || {
        format!(
            "{} requests were queued on the stopped worker's socket but its replacement answered {}",
            r.queued, r.by_replacement
        )
    })?;
    Ok(format!(
        "{} of {} queued on the stopped worker's socket, all answered by its replacement, 0 reset",
        r.queued, r.total
    ))
}

/// The same in exec mode, where each worker binds its own socket: reported, not asserted.
fn reuseport_exec_reference() -> TestResult {
    let r = stop_then_kill(Mode::Exec, Backend::Pidfd)?;
    Ok(format!(
        "reference: {} of {} queued on the killed worker's own socket; {} answered, {} reset, {} timed out",
        r.queued,
        r.total,
        r.answered,
        r.reset.len(),
        r.timeouts
    ))
}

fn reuseport_exec_binds() -> TestResult {
    let n = 2;
    let s = spec(Mode::Exec, Backend::Pidfd, n).env("FX_REUSEPORT", "1");
    let args = s.args().to_vec();
    let mut fx = s.start()?;
    let serving = fx.ready_serving()?;
    let port = serving[0].port;
    check(
        serving.iter().all(|s| s.port == port) && serving[0].inode != serving[1].inode,
        || format!("expected one socket per worker on one port: {serving:?}"),
    )?;
    let master = procfs::listeners_of(fx.pid, port);
    check(master.is_empty(), || {
        format!("the exec-mode master holds listeners {master:?}; each worker should bind its own")
    })?;
    for s in &serving {
        expect_exec_worker(&fx, &args, s.pid, s.id, Some(s.inode))?;
        let env = procfs::environ(s.pid).unwrap_or_default();
        let addr = procfs::environ_var(&env, "PREFORK_REUSEPORT_ADDR");
        check(addr == Some(format!("127.0.0.1:{port}")), || {
            format!("worker {} has PREFORK_REUSEPORT_ADDR={addr:?}", s.pid)
        })?;
    }
    ask_until_all(port, &serving)?;
    fx.stop(&pids(&serving))?;
    Ok(String::new())
}

// ---------------------------------------------------------------------------------------
// 5. Bind errors, before any fork.

fn bind_busy(mode: Mode, reuseport: bool) -> TestResult {
    let busy = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = busy.local_addr().map_err(|e| e.to_string())?.to_string();
    let mut s = spec(mode, Backend::Pidfd, 2).env("FX_ADDR", &addr);
    if reuseport {
        s = s.env("FX_REUSEPORT", "1");
    }
    let mut fx = s.start()?;
    let (display, debug) = fx.expect_early_error()?;
    check(
        display.starts_with(&format!("cannot listen on {addr}:")) && display.contains("in use"),
        || format!("unexpected error {display:?}"),
    )?;
    check(debug.contains("Listen"), || {
        format!("expected Error::Listen, got {debug}")
    })?;
    drop(busy);
    Ok(String::new())
}

fn bind_malformed() -> TestResult {
    for addr in [
        "127.0.0.1",
        "127.0.0.1:99999",
        ":http",
        "localhost:port",
        "[::1:80",
    ] {
        let mut fx = Spec::new().env("FX_ADDR", addr).start()?;
        let (display, debug) = fx
            .expect_early_error()
            .map_err(|e| format!("{addr:?}: {e}"))?;
        check(
            display.starts_with(&format!("cannot listen on {addr}:")),
            || format!("{addr:?}: the error does not name the address: {display:?}"),
        )?;
        check(debug.contains("Listen"), || {
            format!("{addr:?}: expected Error::Listen, got {debug}")
        })?;
    }
    Ok(String::new())
}

fn bind_unresolvable() -> TestResult {
    let addr = "no-such-host.invalid:80";
    let mut fx = Spec::new().env("FX_ADDR", addr).start()?;
    // Name resolution may wait for a slow resolver: allow a minute.
    fx.wait_exit(Duration::from_secs(60))?;
    let (display, debug) = fx.expect_early_error()?;
    check(
        display.starts_with(&format!("cannot listen on {addr}:")),
        || format!("the error does not name the address: {display:?}"),
    )?;
    check(debug.contains("Listen"), || {
        format!("expected Error::Listen, got {debug}")
    })?;
    Ok(String::new())
}

fn bind_wrong_family(network: &str, addr: &str, family: &str) -> TestResult {
    let mut fx = Spec::new()
        .env("FX_NETWORK", network)
        .env("FX_ADDR", addr)
        .start()?;
    let (display, _) = fx.expect_early_error()?;
    check(
        display.starts_with(&format!("cannot listen on {addr}:")) && display.contains(family),
        || format!("unclear error {display:?}"),
    )?;
    Ok(display)
}

/// Whether this machine has IPv6 loopback.
fn has_ipv6() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

fn network_tcp6() -> TestResult {
    if !has_ipv6() {
        return Ok("skipped (no IPv6 loopback)".to_owned());
    }
    let mut fx = Spec::new()
        .env("FX_NETWORK", "tcp6")
        .env("FX_ADDR", "[::1]:0")
        .env("FX_WORKERS", "2")
        .start()?;
    let serving = fx.ready_serving()?;
    let a = ask_at(
        SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], serving[0].port)),
        "id",
    )?;
    check(serving.iter().any(|s| s.pid == a.pid), || {
        format!("answer from {a:?}")
    })?;
    fx.stop(&pids(&serving))?;
    Ok(String::new())
}

fn network_dual_stack() -> TestResult {
    if !has_ipv6() {
        return Ok("skipped (no IPv6 loopback)".to_owned());
    }
    let mut fx = Spec::new()
        .env("FX_NETWORK", "tcp")
        .env("FX_ADDR", ":0")
        .env("FX_WORKERS", "2")
        .start()?;
    let serving = fx.ready_serving()?;
    let port = serving[0].port;
    // `[::]` without IPV6_V6ONLY: reachable over IPv4 and IPv6.
    ask(port, "id")?;
    ask_at(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port)), "id")?;
    fx.stop(&pids(&serving))?;
    Ok(String::new())
}

// ---------------------------------------------------------------------------------------
// 6. Errors of a process started as a worker (and of the protocol variables).

enum Fd3Kind {
    Closed,
    DevNull,
    TcpConnected,
    Udp,
    Unix,
}

/// Expects the fixture, started as an exec-mode worker, to fail in `listen_and_serve`
/// without serving; its error's `Display` and `Debug` forms.
fn expect_child_error(fx: &mut Fixture) -> Result<(String, String), String> {
    fx.expect_exit(fixture::EXIT_ERR)?;
    let display = fx.wait_line("child-result")?;
    let display = display
        .strip_prefix("err ")
        .ok_or_else(|| format!("listen_and_serve did not fail: {display}"))?
        .to_owned();
    let debug = fx.wait_line("child-debug")?;
    let lines = fx.lines();
    check(
        !lines.iter().any(|l| {
            l.starts_with("serving ") || l.starts_with("spawn ") || l.starts_with("master ")
        }),
        || format!("the failing worker served or acted as a master: {lines:?}"),
    )?;
    Ok((display, debug))
}

fn child_fd3(kind: Fd3Kind, needles: &[&str]) -> TestResult {
    // Held until the fixture has exited.
    let mut keep: Vec<Box<dyn AsRawFd>> = Vec::new();
    let fd3 = match kind {
        Fd3Kind::Closed => Fd3::Closed,
        Fd3Kind::DevNull => {
            let f = std::fs::File::open("/dev/null").map_err(|e| e.to_string())?;
            let fd = f.as_raw_fd();
            keep.push(Box::new(f));
            Fd3::Dup(fd)
        }
        Fd3Kind::TcpConnected => {
            let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let s = TcpStream::connect(l.local_addr().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let fd = s.as_raw_fd();
            keep.push(Box::new(l));
            keep.push(Box::new(s));
            Fd3::Dup(fd)
        }
        Fd3Kind::Udp => {
            let u = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let fd = u.as_raw_fd();
            keep.push(Box::new(u));
            Fd3::Dup(fd)
        }
        Fd3Kind::Unix => {
            let u = std::os::unix::net::UnixDatagram::unbound().map_err(|e| e.to_string())?;
            let fd = u.as_raw_fd();
            keep.push(Box::new(u));
            Fd3::Dup(fd)
        }
    };
    let mut fx = Spec::new()
        .env("FASTHTTP_PREFORK_CHILD", "1")
        .env("PREFORK_WORKER_ID", "0")
        .fd3(fd3)
        .start()?;
    let (display, debug) = expect_child_error(&mut fx)?;
    for n in needles {
        check(display.contains(n), || {
            format!("the error {display:?} does not say {n:?}")
        })?;
    }
    check(debug.contains("InheritedListener"), || {
        format!("expected Error::InheritedListener, got {debug}")
    })?;
    fx.wait_stderr("stderr to explain the error", |lines| {
        lines
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n)))
            .then_some(())
    })?;
    drop(keep);
    Ok(String::new())
}

/// A malformed variable read by a worker: a clear error naming it, exit non-zero.
fn child_env_error(vars: &[(&str, &str)], var: &str) -> TestResult {
    let mut s = Spec::new().env("FASTHTTP_PREFORK_CHILD", "1");
    for (k, v) in vars {
        s = s.env(k, *v);
    }
    let mut fx = s.start()?;
    let (display, debug) = expect_child_error(&mut fx)?;
    check(
        display.contains(&format!("invalid environment variable {var}=")),
        || format!("the error does not name {var}: {display:?}"),
    )?;
    check(debug.contains("InvalidEnv"), || {
        format!("expected Error::InvalidEnv, got {debug}")
    })?;
    Ok(String::new())
}

/// A malformed variable read by a master: a clear error naming it before any fork.
fn master_env_error(vars: &[(&str, &str)], listen_pid_self: bool, var: &str) -> TestResult {
    let mut s = Spec::new().env("FX_WORKERS", "2");
    for (k, v) in vars {
        s = s.env(k, *v);
    }
    if listen_pid_self {
        s = s.listen_pid_self();
    }
    let mut fx = s.start()?;
    let (display, debug) = fx.expect_early_error()?;
    check(
        display.contains(&format!("invalid environment variable {var}=")),
        || format!("the error does not name {var}: {display:?}"),
    )?;
    check(debug.contains("InvalidEnv"), || {
        format!("expected Error::InvalidEnv, got {debug}")
    })?;
    Ok(String::new())
}

// ---------------------------------------------------------------------------------------
// 7. systemd socket activation.

fn systemd_serves(mode: Mode, reuseport: bool) -> TestResult {
    let n = 2;
    let inherited = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let port = inherited.local_addr().map_err(|e| e.to_string())?.port();
    let inode = procfs::fds(std::process::id())
        .into_iter()
        .find(|(fd, _)| *fd == inherited.as_raw_fd())
        .and_then(|(_, t)| procfs::socket_inode(&t))
        .ok_or("cannot find the launcher socket's inode")?;
    // An address the master could not bind: it must not try.
    let mut s = spec(mode, Backend::Pidfd, n)
        .env("FX_ADDR", "192.0.2.1:9")
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "web")
        .fd3(Fd3::Dup(inherited.as_raw_fd()))
        .listen_pid_self();
    if reuseport {
        s = s.env("FX_REUSEPORT", "1");
    }
    let args = s.args().to_vec();
    let mut fx = s.start()?;
    let serving = fx.ready_serving()?;
    fx.expect_log("serving the socket passed by systemd (fd 3, name \"web\")")?;
    check(
        serving.iter().all(|s| s.port == port && s.inode == inode),
        || format!("workers do not serve the inherited socket {inode} on port {port}: {serving:?}"),
    )?;
    // Every worker, asked for its live environment.
    let (held, answers) =
        drive::hold_all_with(port, n, "hold env LISTEN_PID,LISTEN_FDS,LISTEN_FDNAMES")?;
    expect_answers_from(&answers, &serving)?;
    drop(held);
    for a in &answers {
        let want = " LISTEN_PID unset LISTEN_FDS unset LISTEN_FDNAMES unset";
        check(a.extra == want.trim_start(), || {
            format!("worker {} sees {:?}", a.pid, a.extra)
        })?;
    }
    for s in &serving {
        if mode == Mode::Exec {
            expect_exec_worker(&fx, &args, s.pid, s.id, Some(inode))?;
            let env = procfs::environ(s.pid).unwrap_or_default();
            let leaked: Vec<&String> = env.iter().filter(|e| e.starts_with("LISTEN_")).collect();
            check(leaked.is_empty(), || {
                format!("worker {} was executed with {leaked:?}", s.pid)
            })?;
        }
    }
    fx.stop(&pids(&serving))?;
    drop(inherited);
    Ok(String::new())
}

fn systemd_fd3_closed() -> TestResult {
    let mut fx = Spec::new()
        .env("LISTEN_FDS", "1")
        .fd3(Fd3::Closed)
        .listen_pid_self()
        .start()?;
    let (display, debug) = fx.expect_early_error()?;
    check(
        display.contains("fd 3") && display.contains("not open"),
        || format!("unclear error {display:?}"),
    )?;
    check(debug.contains("InheritedListener"), || {
        format!("expected Error::InheritedListener, got {debug}")
    })?;
    Ok(String::new())
}

/// `LISTEN_PID` naming another process: the variables are not for us; `addr` is bound.
fn systemd_other_pid() -> TestResult {
    let mut fx = Spec::new()
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .env("FX_WORKERS", "1")
        .start()?;
    let serving = fx.ready_serving()?;
    fx.expect_log("master ready")?;
    let lines = fx.stderr_lines();
    check(!lines.iter().any(|l| l.contains("systemd")), || {
        format!("the master took LISTEN_PID=1 for itself: {lines:?}")
    })?;
    ask(serving[0].port, "id")?;
    fx.stop(&pids(&serving))?;
    Ok(String::new())
}

// ---------------------------------------------------------------------------------------
// 8. A foreign master (Python) running the hello example as its child.

fn foreign_master() -> TestResult {
    if Command::new("python3").arg("--version").output().is_err() {
        return Ok("skipped (python3 not found)".to_owned());
    }
    let hello = hello_example()?;
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let script = manifest.join("tests").join("foreign_master.py");
    let (status, stdout, stderr) = drive::run_captured(
        Command::new("python3").arg(&script).arg(&hello),
        Duration::from_secs(120),
    )?;
    check(status.success(), || {
        format!(
            "foreign_master.py failed ({}):\n{stdout}{stderr}",
            drive::describe(status)
        )
    })?;
    Ok(stdout.lines().last().unwrap_or("").to_owned())
}

/// A reuseport worker started as a fasthttp master starts it: no fd 3, no
/// `PREFORK_REUSEPORT_ADDR`, no `PREFORK_WORKER_ID`. It binds `addr` itself and serves as
/// worker 0.
fn foreign_reuseport_child() -> TestResult {
    let mut fx = Spec::new()
        .env("FASTHTTP_PREFORK_CHILD", "1")
        .env("FX_REUSEPORT", "1")
        .fd3(Fd3::Closed)
        .start()?;
    let serving = fx.serving(&[fx.pid])?[0];
    check(serving.id == 0, || {
        format!("serves as worker {}", serving.id)
    })?;
    let mine = procfs::listeners_of(fx.pid, serving.port);
    check(mine == [serving.inode], || {
        format!(
            "holds listeners {mine:?}, expected its own {}",
            serving.inode
        )
    })?;
    let a = ask(serving.port, "id")?;
    check(a.pid == fx.pid && a.id == 0, || format!("answer {a:?}"))?;
    let lines = fx.lines();
    check(
        !lines
            .iter()
            .any(|l| l.starts_with("master ") || l.starts_with("spawn ")),
        || format!("the worker acted as a master: {lines:?}"),
    )?;
    fx.signal(libc::SIGTERM)?;
    let status = fx.wait_exit(DEADLINE)?;
    check(
        std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGTERM),
        || format!("the worker ended with {}", drive::describe(status)),
    )?;
    Ok(String::new())
}

/// The `hello` example next to this test binary (`target/PROFILE/examples/hello`). Under
/// cargo (which sets `CARGO` for the tests it runs) it is built first, since
/// `cargo test --test listeners` alone does not build examples and a stale one would test old
/// code; cargo does not hold its build lock while tests run.
fn hello_example() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/PROFILE/deps/listeners-HASH
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or("cannot locate the target directory")?;
    let hello = profile_dir.join("examples").join("hello");
    let cargo = std::env::var_os("CARGO");
    if cargo.is_none() && hello.is_file() {
        return Ok(hello);
    }
    let mut cmd = Command::new(cargo.unwrap_or_else(|| "cargo".into()));
    cmd.args(["build", "--quiet", "--example", "hello"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // target/debug holds the dev (and test) profile; other profiles have their own folder.
    match profile_dir.file_name().and_then(|p| p.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    let (status, _, stderr) = drive::run_captured(&mut cmd, Duration::from_secs(600))?;
    check(status.success(), || {
        format!("cargo build --example hello failed: {stderr}")
    })?;
    check(hello.is_file(), || {
        format!(
            "cargo built the hello example, but not at {}",
            hello.display()
        )
    })?;
    Ok(hello)
}
