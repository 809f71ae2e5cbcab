//! The cases of `tests/listeners.rs`. Each starts fixtures (`listeners/fixture.rs`), drives
//! them and asserts what happened; a failed assertion panics (the fixtures are then killed,
//! with their whole process groups, and their output shown).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::fixture::ROLE;
use crate::support::backend::{Backend, Mode};
use crate::support::fixture::EXIT_ERR;
use crate::support::net::{Answer, ask, ask_at, ask_until_all, hold_all, local};
use crate::support::process::{
    DEADLINE, Fd3, Fixture, Spec, describe, kill, run_captured, wait_for, wait_until,
};
use crate::support::runner::{Case, ONCE, Variant};
use crate::support::{procfs, runner};

/// The listening sockets a case's master makes, and how its workers start: one shared
/// socket, or one per worker (`SO_REUSEPORT`), in fork or exec mode.
#[derive(Clone, Copy, Debug)]
pub struct Sockets {
    pub mode: Mode,
    pub reuseport: bool,
}

impl Variant for Sockets {
    /// `fork`, `exec`, `fork_reuseport`, `exec_reuseport`.
    fn name(self) -> String {
        let suffix = if self.reuseport { "_reuseport" } else { "" };
        format!("{}{suffix}", self.mode.name())
    }
}

/// Either mode, with a shared socket and with one per worker.
const SOCKETS: &[Sockets] = &[
    Sockets {
        mode: Mode::Fork,
        reuseport: false,
    },
    Sockets {
        mode: Mode::Exec,
        reuseport: false,
    },
    Sockets {
        mode: Mode::Fork,
        reuseport: true,
    },
    Sockets {
        mode: Mode::Exec,
        reuseport: true,
    },
];

/// Either mode under either backend.
const MODES_AND_BACKENDS: &[(Mode, Backend)] = &[
    (Mode::Fork, Backend::Pidfd),
    (Mode::Fork, Backend::Sigchld),
    (Mode::Exec, Backend::Pidfd),
    (Mode::Exec, Backend::Sigchld),
];

/// The cases of each mode under each backend.
pub const UNDER_MODE_AND_BACKEND: &[Case<(Mode, Backend)>] = &[Case::new(
    "shared_listener",
    MODES_AND_BACKENDS,
    |(mode, backend)| shared_listener(mode, backend),
)];

/// The cases of each reaping backend.
pub const UNDER_BACKEND: &[Case<Backend>] = &[
    Case::new(
        "threaded_master::sigterm_stops_all",
        &Backend::ALL,
        threaded_sigterm,
    ),
    Case::new(
        "exec_supervision::respawn_same_slot",
        &Backend::ALL,
        exec_respawn,
    ),
    Case::new(
        "exec_supervision::master_killed",
        &Backend::ALL,
        exec_master_killed,
    ),
    Case::new(
        "reuseport::fork_socket_per_slot",
        &Backend::ALL,
        reuseport_fork_per_slot,
    ),
    Case::new("reuseport::fork_no_reset", &Backend::ALL, |b| {
        reuseport_no_reset(Mode::Fork, b)
    }),
    Case::new("reuseport::exec_no_reset", &Backend::ALL, |b| {
        reuseport_no_reset(Mode::Exec, b)
    }),
    Case::new(
        "reuseport::ttou_closes_retired_socket",
        &Backend::ALL,
        reuseport_ttou,
    ),
];

/// The cases of each kind of listening sockets.
pub const UNDER_SOCKETS: &[Case<Sockets>] = &[
    Case::new("bind_errors::busy_port", SOCKETS, |s| {
        bind_busy(s.mode, s.reuseport)
    }),
    Case::new("systemd::serves_inherited", SOCKETS, |s| {
        systemd_serves(s.mode, s.reuseport)
    }),
];

/// The cases that run once.
pub const RUN_ONCE: &[Case<()>] = &[
    Case::new("threaded_master::exec_serves", ONCE, |()| {
        threaded_exec_serves()
    }),
    Case::new("threaded_master::auto_chooses_exec", ONCE, |()| {
        threaded_auto_exec()
    }),
    Case::new("threaded_master::fork_refused", ONCE, |()| {
        threaded_fork_refused()
    }),
    Case::new("threaded_master::auto_single_threaded_forks", ONCE, |()| {
        auto_single_threaded_forks()
    }),
    Case::new("reuseport::exec_each_worker_binds", ONCE, |()| {
        reuseport_exec_binds()
    }),
    Case::new("bind_errors::malformed_addresses", ONCE, |()| {
        bind_malformed()
    }),
    Case::new("bind_errors::unresolvable_host", ONCE, |()| {
        bind_unresolvable()
    }),
    Case::new("bind_errors::tcp6_with_ipv4_address", ONCE, |()| {
        bind_wrong_family("tcp6", "127.0.0.1:0", "IPv6")
    }),
    Case::new("bind_errors::tcp4_with_ipv6_address", ONCE, |()| {
        bind_wrong_family("tcp4", "[::1]:0", "IPv4")
    }),
    Case::new("network::tcp6_loopback", ONCE, |()| network_tcp6()),
    Case::new("network::tcp_empty_host_dual_stack", ONCE, |()| {
        network_dual_stack()
    }),
    Case::new("child_errors::fd3_not_open", ONCE, |()| {
        child_fd3(Fd3Kind::Closed, &["fd 3", "not open"])
    }),
    Case::new("child_errors::fd3_regular_file", ONCE, |()| {
        child_fd3(Fd3Kind::DevNull, &["fd 3", "not a socket"])
    }),
    Case::new("child_errors::fd3_tcp_not_listening", ONCE, |()| {
        child_fd3(Fd3Kind::TcpConnected, &["fd 3", "not listening"])
    }),
    Case::new("child_errors::fd3_udp_socket", ONCE, |()| {
        child_fd3(Fd3Kind::Udp, &["fd 3", "not a TCP socket"])
    }),
    Case::new("child_errors::fd3_unix_socket", ONCE, |()| {
        child_fd3(Fd3Kind::Unix, &["fd 3", "not a TCP socket"])
    }),
    Case::new("child_errors::child_flag_malformed", ONCE, |()| {
        master_env_error(
            &[("FASTHTTP_PREFORK_CHILD", "yes")],
            false,
            "FASTHTTP_PREFORK_CHILD",
        )
    }),
    Case::new("child_errors::worker_id_malformed::negative", ONCE, |()| {
        child_env_error(&[("PREFORK_WORKER_ID", "-1")], "PREFORK_WORKER_ID")
    }),
    Case::new("child_errors::worker_id_malformed::letters", ONCE, |()| {
        child_env_error(&[("PREFORK_WORKER_ID", "abc")], "PREFORK_WORKER_ID")
    }),
    Case::new("child_errors::worker_id_malformed::empty", ONCE, |()| {
        child_env_error(&[("PREFORK_WORKER_ID", "")], "PREFORK_WORKER_ID")
    }),
    Case::new(
        "child_errors::worker_id_malformed::leading_zero",
        ONCE,
        |()| child_env_error(&[("PREFORK_WORKER_ID", "01")], "PREFORK_WORKER_ID"),
    ),
    Case::new("child_errors::reuseport_addr_malformed", ONCE, |()| {
        child_env_error(
            &[("FX_REUSEPORT", "1"), ("PREFORK_REUSEPORT_ADDR", "nowhere")],
            "PREFORK_REUSEPORT_ADDR",
        )
    }),
    Case::new("child_errors::listen_fds_malformed", ONCE, |()| {
        master_env_error(&[("LISTEN_FDS", "x")], true, "LISTEN_FDS")
    }),
    Case::new("child_errors::listen_fds_missing", ONCE, |()| {
        master_env_error(&[], true, "LISTEN_FDS")
    }),
    Case::new("child_errors::listen_pid_malformed::zero", ONCE, |()| {
        master_env_error(
            &[("LISTEN_PID", "0"), ("LISTEN_FDS", "1")],
            false,
            "LISTEN_PID",
        )
    }),
    Case::new("child_errors::listen_pid_malformed::letters", ONCE, |()| {
        master_env_error(
            &[("LISTEN_PID", "abc"), ("LISTEN_FDS", "1")],
            false,
            "LISTEN_PID",
        )
    }),
    Case::new("child_errors::listen_pid_malformed::negative", ONCE, |()| {
        master_env_error(
            &[("LISTEN_PID", "-5"), ("LISTEN_FDS", "1")],
            false,
            "LISTEN_PID",
        )
    }),
    Case::new("child_errors::listen_fdnames_wrong_count", ONCE, |()| {
        master_env_error(
            &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "web:admin")],
            true,
            "LISTEN_FDNAMES",
        )
    }),
    Case::new("child_errors::backend_malformed", ONCE, |()| {
        master_env_error(&[("PREFORK_BACKEND", "epoll")], false, "PREFORK_BACKEND")
    }),
    Case::new("systemd::fd3_not_open", ONCE, |()| systemd_fd3_closed()),
    Case::new("systemd::other_pid_ignored", ONCE, |()| systemd_other_pid()),
    Case::new("exec_worker_listener_is_cloexec", ONCE, |()| {
        exec_worker_listener_is_cloexec()
    }),
    Case::new(
        "nonblocking_inherited_listener_served_blocking",
        ONCE,
        |()| nonblocking_inherited_listener_served_blocking(),
    ),
    Case::new("foreign_master::hello_example", ONCE, |()| foreign_master()),
    Case::new("foreign_master::reuseport_child_binds_addr", ONCE, |()| {
        foreign_reuseport_child()
    }),
];

// ---------------------------------------------------------------------------------------
// Helpers shared by the tests.

/// A `listen` fixture with no option set.
fn fixture() -> Spec {
    Spec::new(ROLE)
}

/// A `listen` fixture in `mode` under `backend` with `workers` workers.
fn spec(mode: Mode, backend: Backend, workers: usize) -> Spec {
    fixture()
        .env("FX_MODE", mode.name())
        .backend(backend)
        .env("FX_WORKERS", workers.to_string())
}

/// One worker's `serving` line.
#[derive(Debug, Clone, Copy)]
pub struct Serving {
    pub id: usize,
    pub pid: u32,
    pub port: u16,
    pub inode: u64,
    /// The listener's descriptor in the worker.
    pub fd: i32,
    /// Whether `O_NONBLOCK` was set on the listener `serve` got.
    pub nonblocking: bool,
}

fn parse_serving(line: &str) -> Option<Serving> {
    let mut f = line.strip_prefix("serving ")?.split_whitespace();
    Some(Serving {
        id: f.next()?.parse().ok()?,
        pid: f.next()?.parse().ok()?,
        port: f.next()?.parse().ok()?,
        inode: f.next()?.parse().ok()?,
        fd: f.next()?.parse().ok()?,
        nonblocking: match f.next()? {
            "nonblocking" => true,
            "blocking" => false,
            _ => return None,
        },
    })
}

/// Waits for the `serving` line of each of `pids`, returned in the same order.
fn wait_serving(fx: &Fixture, pids: &[u32]) -> Vec<Serving> {
    fx.wait_lines(
        &format!("a `serving` line from each of {pids:?}"),
        |lines| {
            let all: Vec<Serving> = lines.iter().filter_map(|l| parse_serving(l)).collect();
            pids.iter()
                .map(|&p| all.iter().find(|s| s.pid == p).copied())
                .collect()
        },
    )
}

/// The `ready` pids once every worker serves, checking that worker k reports slot k.
fn ready_serving(fx: &Fixture) -> Vec<Serving> {
    let serving = wait_serving(fx, &fx.ready());
    for (k, s) in serving.iter().enumerate() {
        assert_eq!(
            s.id, k,
            "worker pid {} of slot {k} reports id {}",
            s.pid, s.id
        );
    }
    serving
}

/// The pids of `serving`.
fn pids(serving: &[Serving]) -> Vec<u32> {
    serving.iter().map(|s| s.pid).collect()
}

/// `(slot, pid)` of each of `serving`.
fn slots(serving: &[Serving]) -> Vec<(usize, u32)> {
    serving.iter().map(|s| (s.id, s.pid)).collect()
}

/// The socket inode of a worker's answer (`ID PID INODE[ EXTRA]`).
fn answer_inode(a: &Answer) -> Option<u64> {
    a.rest.split(' ').next()?.parse().ok()
}

/// The EXTRA of a worker's answer: what follows the inode.
fn answer_extra(a: &Answer) -> &str {
    a.rest.split_once(' ').map_or("", |(_, extra)| extra)
}

/// Waits for the `recover OLD NEW` line of `old`: the new pid.
fn recovered(fx: &Fixture, old: u32) -> u32 {
    fx.wait_recover_line(0, old).1
}

/// Waits for the `exit SLOT PID` line: how the worker ended (`Signal(SIGKILL)`, …).
fn exit_how(fx: &Fixture, slot: usize, pid: u32) -> String {
    fx.wait_field(&format!("exit {slot} {pid}"))
}

/// Expects `listen_and_serve` to have failed before any worker was started (see
/// `Fixture::assert_failed_exit`); its error's `Display` and `Debug` forms.
fn expect_early_error(fx: &mut Fixture) -> (String, String) {
    let display = fx.assert_failed_exit();
    let lines = fx.lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("spawn ") || l.starts_with("serving ")),
        "a worker was started before the error: {lines:?}"
    );
    let debug = fx.debugs().concat();
    (display, debug)
}

/// The log line the master prints when it starts, naming mode and backend.
fn expect_mode_log(fx: &Fixture, mode: Mode, backend: Backend) {
    fx.expect_log(&format!(
        "({} mode, {} backend)",
        mode.name(),
        backend.log_name()
    ));
}

/// Checks that a worker is an exec-mode worker of slot `id`, not a forked copy: its
/// environment carries the child protocol, its command line is the master's, and it
/// inherited exactly descriptors 0-3, 3 being the listening socket `inode` (when given).
/// Besides those it may only hold pipes of its own (the library's shutdown-notice pipe):
/// close-on-exec, and nothing the master holds (the readiness pipe's write end, fd 4 at the
/// exec, is closed once the worker serves).
fn expect_exec_worker(fx: &Fixture, spec_args: &[String], pid: u32, id: usize, inode: Option<u64>) {
    let env = procfs::environ(pid).unwrap_or_else(|| panic!("cannot read environ of {pid}"));
    for (k, v) in [
        ("FASTHTTP_PREFORK_CHILD", "1".to_owned()),
        ("PREFORK_WORKER_ID", id.to_string()),
        ("PREFORK_READY_FD", "4".to_owned()),
    ] {
        let got = procfs::environ_var(&env, k);
        assert!(
            got.as_deref() == Some(v.as_str()),
            "worker {pid}: /proc environ has {k}={got:?}, expected {v:?}"
        );
    }
    let master_cmd = procfs::cmdline(fx.pid).unwrap_or_default();
    let worker_cmd = procfs::cmdline(pid).unwrap_or_default();
    assert!(
        master_cmd.len() > 1 && worker_cmd == master_cmd && master_cmd[1..] == *spec_args,
        "worker {pid} runs {worker_cmd:?}, master {master_cmd:?}"
    );
    let ppid = procfs::stat(pid).map(|s| s.ppid);
    assert!(
        ppid == Some(fx.pid),
        "worker {pid} has parent {ppid:?}, expected the master {}",
        fx.pid
    );
    // Connections just closed by the client may still be open in the worker for a moment.
    wait_until("the worker's descriptors to settle", || {
        let fds = procfs::fds(pid);
        let master = procfs::fd_targets(fx.pid);
        let inherited: Vec<i32> = fds
            .iter()
            .map(|(fd, _)| *fd)
            .filter(|&fd| fd <= 3)
            .collect();
        let foreign: Vec<&(i32, String)> = fds
            .iter()
            .filter(|(fd, target)| {
                *fd > 3
                    && !(target.starts_with("pipe:[")
                        && !master.contains(target)
                        && procfs::fd_flags(pid, *fd).is_some_and(|f| f & libc::O_CLOEXEC != 0))
            })
            .collect();
        let listener = fds.iter().find(|(fd, _)| *fd == 3);
        if inherited == [0, 1, 2, 3]
            && listener
                .and_then(|(_, t)| procfs::socket_inode(t))
                .is_some_and(|i| inode.is_none_or(|want| want == i))
            && foreign.is_empty()
        {
            Ok(())
        } else {
            Err(format!(
                "worker {pid} has descriptors {fds:?}, expected 0-2, the listener ({inode:?}) \
                 on 3, and otherwise only close-on-exec pipes the master does not hold \
                 (the master holds {master:?})"
            ))
        }
    });
}

fn expect_not_exec_worker(pid: u32) {
    let env = procfs::environ(pid).unwrap_or_else(|| panic!("cannot read environ of {pid}"));
    let got = procfs::environ_var(&env, "FASTHTTP_PREFORK_CHILD");
    assert!(
        got.is_none(),
        "forked worker {pid} was executed with FASTHTTP_PREFORK_CHILD={got:?}"
    );
}

/// Checks that the answers come from exactly the workers `serving` (worker k from slot k).
fn expect_answers_from(answers: &[Answer], serving: &[Serving]) {
    let got: Vec<(usize, u32)> = answers.iter().map(|a| (a.id, a.pid)).collect();
    let want = slots(serving);
    assert_eq!(got, want, "answers from (id, pid)");
}

/// Holds one connection per worker (see `net::hold_all`) with `hold`; checks they were
/// answered by exactly the workers `serving` and releases them.
fn expect_each_serves(port: u16, serving: &[Serving]) {
    let (held, answers) = hold_all(port, serving.len(), "hold");
    expect_answers_from(&answers, serving);
    drop(held);
}

// ---------------------------------------------------------------------------------------
// 1. One shared listener.

pub fn shared_listener(mode: Mode, backend: Backend) {
    let n = 3;
    let s = spec(mode, backend, n);
    let args = s.args().to_vec();
    let mut fx = s.start();
    let serving = ready_serving(&fx);
    expect_mode_log(&fx, mode, backend);
    let port = serving[0].port;
    let inode = serving[0].inode;
    assert!(
        serving.iter().all(|s| s.port == port && s.inode == inode),
        "workers do not share one listener: {serving:?}"
    );
    let master_listeners = procfs::listeners_of(fx.pid, port);
    assert!(
        master_listeners == [inode],
        "master holds listeners {master_listeners:?}, expected [{inode}]"
    );
    expect_each_serves(port, &serving);
    for s in &serving {
        match mode {
            Mode::Exec => expect_exec_worker(&fx, &args, s.pid, s.id, Some(inode)),
            Mode::Fork => {
                expect_not_exec_worker(s.pid);
                let mine = procfs::listeners_of(s.pid, port);
                assert!(
                    mine == [inode],
                    "worker {} holds listeners {mine:?}, expected [{inode}]",
                    s.pid
                );
            }
        }
    }
    fx.stop_with(libc::SIGTERM);
}

// ---------------------------------------------------------------------------------------
// 2. A master that already runs a thread.

pub fn threaded_exec_serves() {
    let s = spec(Mode::Exec, Backend::Pidfd, 2).env("FX_THREAD", "1");
    let args = s.args().to_vec();
    let mut fx = s.start();
    let serving = ready_serving(&fx);
    expect_mode_log(&fx, Mode::Exec, Backend::Pidfd);
    expect_each_serves(serving[0].port, &serving);
    for s in &serving {
        expect_exec_worker(&fx, &args, s.pid, s.id, Some(s.inode));
    }
    fx.stop_with(libc::SIGTERM);
}

pub fn threaded_auto_exec() {
    let s = fixture()
        .env("FX_MODE", "auto")
        .env("FX_WORKERS", "2")
        .env("FX_THREAD", "1");
    let args = s.args().to_vec();
    let mut fx = s.start();
    let serving = ready_serving(&fx);
    fx.expect_log("mode auto: 2 threads running, re-executing workers");
    fx.expect_log("(exec mode,");
    expect_each_serves(serving[0].port, &serving);
    for s in &serving {
        expect_exec_worker(&fx, &args, s.pid, s.id, Some(s.inode));
    }
    fx.stop_with(libc::SIGTERM);
}

pub fn auto_single_threaded_forks() {
    let mut fx = fixture()
        .env("FX_MODE", "auto")
        .env("FX_WORKERS", "2")
        .start();
    let serving = ready_serving(&fx);
    fx.expect_log("mode auto: single-threaded, forking workers");
    fx.expect_log("(fork mode,");
    expect_each_serves(serving[0].port, &serving);
    for s in &serving {
        expect_not_exec_worker(s.pid);
    }
    fx.stop_with(libc::SIGTERM);
}

pub fn threaded_fork_refused() {
    let mut fx = fixture()
        .env("FX_MODE", "fork")
        .env("FX_WORKERS", "2")
        .env("FX_THREAD", "1")
        .start();
    let (display, debug) = expect_early_error(&mut fx);
    assert!(
        display.contains("cannot fork workers") && display.contains("2 threads"),
        "unexpected error {display:?}"
    );
    assert!(
        debug.contains("NotSingleThreaded"),
        "expected Error::NotSingleThreaded, got {debug}"
    );
}

/// SIGTERM to a master whose extra thread does not block it: the kernel may deliver it to
/// that thread; the master must still stop everything and exit 0. Several rounds.
pub fn threaded_sigterm(backend: Backend) {
    let rounds = 4;
    for round in 0..rounds {
        let mut fx = spec(Mode::Exec, backend, 2).env("FX_THREAD", "1").start();
        let serving = ready_serving(&fx);
        let a = ask(serving[0].port, "id");
        assert!(
            serving.iter().any(|s| s.pid == a.pid),
            "round {round}: answer from unknown worker {a:?}"
        );
        // The extra thread's mask: SIGTERM must not be blocked there.
        let threads = procfs::thread_masks(fx.pid);
        assert!(
            threads.len() == 2
                && threads
                    .iter()
                    .any(|&(_, blk)| blk & procfs::sig_bit(libc::SIGTERM) == 0),
            "round {round}: expected a thread not blocking SIGTERM, got {threads:?}"
        );
        fx.stop_with(libc::SIGTERM);
        let stopped = fx.lines().iter().filter(|l| l.starts_with("exit ")).count();
        assert!(
            stopped == 2,
            "round {round}: {stopped} exit reports, expected 2"
        );
    }
    runner::note(format!("{rounds} rounds"));
}

// ---------------------------------------------------------------------------------------
// 3. Exec-mode supervision.

pub fn exec_respawn(backend: Backend) {
    let s = spec(Mode::Exec, backend, 2);
    let args = s.args().to_vec();
    let mut fx = s.start();
    let serving = ready_serving(&fx);
    expect_mode_log(&fx, Mode::Exec, backend);
    let victim = serving[1];
    kill(victim.pid, libc::SIGKILL);
    let new = recovered(&fx, victim.pid);
    let how = exit_how(&fx, 1, victim.pid);
    assert!(how == "Signal(SIGKILL)", "exit reported as {how}");
    let replacement = wait_serving(&fx, &[new])[0];
    assert!(
        replacement.id == 1,
        "the replacement {new} serves as worker {}",
        replacement.id
    );
    expect_exec_worker(&fx, &args, new, 1, Some(victim.inode));
    let now = [serving[0], replacement];
    expect_each_serves(victim.port, &now);
    fx.stop_with(libc::SIGTERM);
    for s in now {
        let how = exit_how(&fx, s.id, s.pid);
        assert!(how == "Signal(SIGTERM)", "stop reported as {how}");
    }
}

pub fn exec_master_killed(backend: Backend) {
    let mut fx = spec(Mode::Exec, backend, 2).start();
    let serving = ready_serving(&fx);
    ask(serving[0].port, "id");
    fx.signal(libc::SIGKILL);
    fx.wait_exit();
    fx.wait_gone(&pids(&serving));
}

// ---------------------------------------------------------------------------------------
// 4. SO_REUSEPORT.

pub fn reuseport_fork_per_slot(backend: Backend) {
    let n = 3;
    let mut fx = spec(Mode::Fork, backend, n)
        .env("FX_REUSEPORT", "1")
        .start();
    let serving = ready_serving(&fx);
    let port = serving[0].port;
    let inodes: Vec<u64> = serving.iter().map(|s| s.inode).collect();
    let mut distinct = inodes.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() == n && serving.iter().all(|s| s.port == port),
        "expected {n} sockets on one port: {serving:?}"
    );
    // The master keeps every slot's socket, bound in slot order.
    let master = procfs::listeners_of(fx.pid, port);
    assert!(
        master == inodes,
        "master holds {master:?}, expected the workers' sockets in slot order {inodes:?}"
    );
    for s in &serving {
        let mine = procfs::listeners_of(s.pid, port);
        assert!(
            mine == [s.inode],
            "worker {} holds {mine:?}, expected only its own socket {}",
            s.id,
            s.inode
        );
    }
    let answers = ask_until_all(port, &slots(&serving));
    for (a, s) in answers.iter().zip(&serving) {
        assert!(
            answer_inode(a) == Some(s.inode),
            "worker {} answered from socket {:?}",
            s.id,
            answer_inode(a)
        );
    }
    // A replacement serves the socket of the slot it replaces.
    let victim = serving[1];
    kill(victim.pid, libc::SIGKILL);
    let new = recovered(&fx, victim.pid);
    let replacement = wait_serving(&fx, &[new])[0];
    assert!(
        replacement.id == 1 && replacement.inode == victim.inode,
        "replacement {replacement:?} does not serve slot 1's socket {}",
        victim.inode
    );
    let now = [serving[0], replacement, serving[2]];
    ask_until_all(port, &slots(&now));
    let master = procfs::listeners_of(fx.pid, port);
    assert!(
        master == inodes,
        "after the respawn the master holds {master:?}"
    );
    fx.stop_with(libc::SIGTERM);
}

/// SIGTTOU retires the highest slot: the master must close that slot's socket too, or the
/// kernel keeps handing it connections that nobody accepts.
pub fn reuseport_ttou(backend: Backend) {
    let n = 3;
    let mut fx = spec(Mode::Fork, backend, n)
        .env("FX_REUSEPORT", "1")
        .start();
    let serving = ready_serving(&fx);
    let port = serving[0].port;
    let retired = serving[n - 1];
    fx.signal(libc::SIGTTOU);
    fx.wait_gone(&[retired.pid]);
    let kept: Vec<u64> = serving[..n - 1].iter().map(|s| s.inode).collect();
    wait_for("the master to close the retired slot's socket", || {
        procfs::listeners_of(fx.pid, port) == kept
    });
    let answered = AtomicUsize::new(0);
    let total = 30;
    let mut lost = Vec::new();
    for _ in 0..total {
        match one_request(local(port), &answered) {
            Outcome::Answered(a) => {
                assert!(a.id < n - 1, "answered by retired slot {}: {a:?}", a.id)
            }
            other => lost.push(format!("{other:?}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {total} requests not answered after TTOU: {lost:?}",
        lost.len()
    );
    fx.stop_with(libc::SIGTERM);
    runner::note(format!(
        "{total} answered by the {} remaining workers",
        n - 1
    ));
}

#[derive(Debug)]
enum Outcome {
    Answered(Answer),
    Reset(String),
    Timeout,
}

/// Sends one request and waits for the answer; never panics (it runs on threads of its
/// own too).
fn one_request(addr: SocketAddr, answered: &AtomicUsize) -> Outcome {
    use std::io::{Read, Write};
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
    match Answer::parse(&text).filter(|a| answer_inode(a).is_some()) {
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
fn stop_then_kill(mode: Mode, backend: Backend) -> StopKill {
    let total = 50;
    let mut fx = spec(mode, backend, 3).env("FX_REUSEPORT", "1").start();
    let serving = ready_serving(&fx);
    let port = serving[0].port;
    ask_until_all(port, &slots(&serving));
    let victim = serving[1];
    kill(victim.pid, libc::SIGSTOP);
    wait_for("the worker to stop", || {
        procfs::stat(victim.pid).is_some_and(|s| s.state == 'T')
    });
    let answered = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..total)
        .map(|_| {
            let answered = Arc::clone(&answered);
            std::thread::spawn(move || one_request(local(port), &answered))
        })
        .collect();
    // Every request lands either on a running worker's socket (answered) or in the stopped
    // worker's accept queue.
    let queued = wait_until("every request to be answered or queued", || {
        let queued = procfs::queued(port, victim.inode).unwrap_or(0) as usize;
        let done = answered.load(Ordering::SeqCst);
        if done + queued == total {
            Ok(queued)
        } else {
            Err(format!("{done} answered, {queued} queued"))
        }
    });
    kill(victim.pid, libc::SIGKILL);
    let new = recovered(&fx, victim.pid);
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
    // The replacement serves before the stop.
    wait_serving(&fx, &[new]);
    fx.stop_with(libc::SIGTERM);
    r
}

/// With one socket per slot, nothing queued on a worker's socket is lost when the worker
/// dies: the master holds the socket and hands it to the replacement (forked, or executed
/// with it on fd 3), which answers every request queued there; no request is reset.
pub fn reuseport_no_reset(mode: Mode, backend: Backend) {
    let r = stop_then_kill(mode, backend);
    assert!(
        r.queued > 0,
        "none of {} requests landed on the stopped worker's socket",
        r.total
    );
    assert!(
        r.answered == r.total && r.reset.is_empty() && r.timeouts == 0,
        "{} of {} answered, {} reset ({:?}), {} timed out",
        r.answered,
        r.total,
        r.reset.len(),
        r.reset.first(),
        r.timeouts
    );
    assert!(
        r.by_replacement == r.queued,
        "{} requests were queued on the stopped worker's socket but its replacement answered {}",
        r.queued,
        r.by_replacement
    );
    runner::note(format!(
        "{} of {} queued on the stopped worker's socket, all answered by its replacement, 0 reset",
        r.queued, r.total
    ));
}

/// Exec mode with reuseport: one socket per slot on one port. The master binds and keeps
/// them, in slot order, and hands each exec-mode worker its slot's socket on fd 3 (masters
/// before 0.2 had each worker bind its own, at `PREFORK_REUSEPORT_ADDR`).
pub fn reuseport_exec_binds() {
    let n = 2;
    let s = spec(Mode::Exec, Backend::Pidfd, n).env("FX_REUSEPORT", "1");
    let args = s.args().to_vec();
    let mut fx = s.start();
    let serving = ready_serving(&fx);
    let port = serving[0].port;
    assert!(
        serving.iter().all(|s| s.port == port) && serving[0].inode != serving[1].inode,
        "expected one socket per worker on one port: {serving:?}"
    );
    let inodes: Vec<u64> = serving.iter().map(|s| s.inode).collect();
    let master = procfs::listeners_of(fx.pid, port);
    assert!(
        master == inodes,
        "the exec-mode master holds listeners {master:?}, expected the workers' sockets in \
         slot order {inodes:?}"
    );
    for s in &serving {
        expect_exec_worker(&fx, &args, s.pid, s.id, Some(s.inode));
        let env = procfs::environ(s.pid).unwrap_or_default();
        let addr = procfs::environ_var(&env, "PREFORK_REUSEPORT_ADDR");
        assert!(
            addr.is_none(),
            "worker {} has PREFORK_REUSEPORT_ADDR={addr:?}",
            s.pid
        );
    }
    ask_until_all(port, &slots(&serving));
    fx.stop_with(libc::SIGTERM);
}

// ---------------------------------------------------------------------------------------
// 5. Bind errors, before any fork.

pub fn bind_busy(mode: Mode, reuseport: bool) {
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("local_addr").to_string();
    let mut s = spec(mode, Backend::Pidfd, 2).env("FX_ADDR", &addr);
    if reuseport {
        s = s.env("FX_REUSEPORT", "1");
    }
    let mut fx = s.start();
    let (display, debug) = expect_early_error(&mut fx);
    assert!(
        display.starts_with(&format!("cannot listen on {addr}:")) && display.contains("in use"),
        "unexpected error {display:?}"
    );
    assert!(
        debug.contains("Listen"),
        "expected Error::Listen, got {debug}"
    );
    drop(busy);
}

pub fn bind_malformed() {
    for addr in [
        "127.0.0.1",
        "127.0.0.1:99999",
        ":http",
        "localhost:port",
        "[::1:80",
    ] {
        let mut fx = fixture().env("FX_ADDR", addr).start();
        let (display, debug) = expect_early_error(&mut fx);
        assert!(
            display.starts_with(&format!("cannot listen on {addr}:")),
            "{addr:?}: the error does not name the address: {display:?}"
        );
        assert!(
            debug.contains("Listen"),
            "{addr:?}: expected Error::Listen, got {debug}"
        );
    }
}

pub fn bind_unresolvable() {
    let addr = "no-such-host.invalid:80";
    let mut fx = fixture().env("FX_ADDR", addr).start();
    // Name resolution may wait for a slow resolver: allow a minute.
    fx.wait_exit_within(Duration::from_secs(60));
    let (display, debug) = expect_early_error(&mut fx);
    assert!(
        display.starts_with(&format!("cannot listen on {addr}:")),
        "the error does not name the address: {display:?}"
    );
    assert!(
        debug.contains("Listen"),
        "expected Error::Listen, got {debug}"
    );
}

pub fn bind_wrong_family(network: &str, addr: &str, family: &str) {
    let mut fx = fixture()
        .env("FX_NETWORK", network)
        .env("FX_ADDR", addr)
        .start();
    let (display, _) = expect_early_error(&mut fx);
    assert!(
        display.starts_with(&format!("cannot listen on {addr}:")) && display.contains(family),
        "unclear error {display:?}"
    );
    runner::note(display);
}

/// Whether this machine has IPv6 loopback.
fn has_ipv6() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

const LOOPBACK6: [u16; 8] = [0, 0, 0, 0, 0, 0, 0, 1];

pub fn network_tcp6() {
    if !has_ipv6() {
        return runner::skip("no IPv6 loopback");
    }
    let mut fx = fixture()
        .env("FX_NETWORK", "tcp6")
        .env("FX_ADDR", "[::1]:0")
        .env("FX_WORKERS", "2")
        .start();
    let serving = ready_serving(&fx);
    let a = ask_at(SocketAddr::from((LOOPBACK6, serving[0].port)), "id");
    assert!(serving.iter().any(|s| s.pid == a.pid), "answer from {a:?}");
    fx.stop_with(libc::SIGTERM);
}

pub fn network_dual_stack() {
    if !has_ipv6() {
        return runner::skip("no IPv6 loopback");
    }
    let mut fx = fixture()
        .env("FX_NETWORK", "tcp")
        .env("FX_ADDR", ":0")
        .env("FX_WORKERS", "2")
        .start();
    let serving = ready_serving(&fx);
    let port = serving[0].port;
    // `[::]` without IPV6_V6ONLY: reachable over IPv4 and IPv6.
    ask(port, "id");
    ask_at(SocketAddr::from((LOOPBACK6, port)), "id");
    fx.stop_with(libc::SIGTERM);
}

// ---------------------------------------------------------------------------------------
// 6. Errors of a process started as a worker (and of the protocol variables).

pub enum Fd3Kind {
    Closed,
    DevNull,
    TcpConnected,
    Udp,
    Unix,
}

/// Expects the fixture, started as an exec-mode worker, to fail in `listen_and_serve`
/// without serving; its error's `Display` and `Debug` forms.
fn expect_child_error(fx: &mut Fixture) -> (String, String) {
    fx.expect_exit(EXIT_ERR);
    let display = fx.wait_field("child-result");
    let display = display
        .strip_prefix("err ")
        .unwrap_or_else(|| panic!("listen_and_serve did not fail: {display}"))
        .to_owned();
    let debug = fx.wait_field("child-debug");
    let lines = fx.lines();
    assert!(
        !lines.iter().any(|l| {
            l.starts_with("serving ") || l.starts_with("spawn ") || l.starts_with("master ")
        }),
        "the failing worker served or acted as a master: {lines:?}"
    );
    (display, debug)
}

pub fn child_fd3(kind: Fd3Kind, needles: &[&str]) {
    // Held until the fixture has exited.
    let mut keep: Vec<Box<dyn AsRawFd>> = Vec::new();
    let fd3 = match kind {
        Fd3Kind::Closed => Fd3::Closed,
        Fd3Kind::DevNull => {
            let f = std::fs::File::open("/dev/null").expect("open /dev/null");
            let fd = f.as_raw_fd();
            keep.push(Box::new(f));
            Fd3::Dup(fd)
        }
        Fd3Kind::TcpConnected => {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let s = TcpStream::connect(l.local_addr().expect("local_addr")).expect("connect");
            let fd = s.as_raw_fd();
            keep.push(Box::new(l));
            keep.push(Box::new(s));
            Fd3::Dup(fd)
        }
        Fd3Kind::Udp => {
            let u = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
            let fd = u.as_raw_fd();
            keep.push(Box::new(u));
            Fd3::Dup(fd)
        }
        Fd3Kind::Unix => {
            let u = std::os::unix::net::UnixDatagram::unbound().expect("a Unix socket");
            let fd = u.as_raw_fd();
            keep.push(Box::new(u));
            Fd3::Dup(fd)
        }
    };
    let mut fx = fixture()
        .env("FASTHTTP_PREFORK_CHILD", "1")
        .env("PREFORK_WORKER_ID", "0")
        .fd3(fd3)
        .start();
    let (display, debug) = expect_child_error(&mut fx);
    for n in needles {
        assert!(
            display.contains(n),
            "the error {display:?} does not say {n:?}"
        );
    }
    assert!(
        debug.contains("InheritedListener"),
        "expected Error::InheritedListener, got {debug}"
    );
    fx.wait_stderr("stderr to explain the error", |lines| {
        lines
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n)))
            .then_some(())
    });
    drop(keep);
}

/// A malformed variable read by a worker: a clear error naming it, exit non-zero.
pub fn child_env_error(vars: &[(&str, &str)], var: &str) {
    let mut fx = fixture()
        .env("FASTHTTP_PREFORK_CHILD", "1")
        .envs(vars)
        .start();
    let (display, debug) = expect_child_error(&mut fx);
    assert!(
        display.contains(&format!("invalid environment variable {var}=")),
        "the error does not name {var}: {display:?}"
    );
    assert!(
        debug.contains("InvalidEnv"),
        "expected Error::InvalidEnv, got {debug}"
    );
}

/// A malformed variable read by a master: a clear error naming it before any fork.
pub fn master_env_error(vars: &[(&str, &str)], listen_pid_self: bool, var: &str) {
    let mut s = fixture().env("FX_WORKERS", "2").envs(vars);
    if listen_pid_self {
        s = s.listen_pid_self();
    }
    let mut fx = s.start();
    let (display, debug) = expect_early_error(&mut fx);
    assert!(
        display.contains(&format!("invalid environment variable {var}=")),
        "the error does not name {var}: {display:?}"
    );
    assert!(
        debug.contains("InvalidEnv"),
        "expected Error::InvalidEnv, got {debug}"
    );
}

// ---------------------------------------------------------------------------------------
// 7. systemd socket activation.

/// The socket inode of this process's descriptor `fd`.
fn own_socket_inode(fd: i32) -> u64 {
    procfs::fds(std::process::id())
        .into_iter()
        .find(|(f, _)| *f == fd)
        .and_then(|(_, t)| procfs::socket_inode(&t))
        .unwrap_or_else(|| panic!("cannot find the socket inode of this process's fd {fd}"))
}

pub fn systemd_serves(mode: Mode, reuseport: bool) {
    let n = 2;
    let inherited = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = inherited.local_addr().expect("local_addr").port();
    let inode = own_socket_inode(inherited.as_raw_fd());
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
    let mut fx = s.start();
    let serving = ready_serving(&fx);
    fx.expect_log("serving the socket passed by systemd (fd 3, name \"web\")");
    assert!(
        serving.iter().all(|s| s.port == port && s.inode == inode),
        "workers do not serve the inherited socket {inode} on port {port}: {serving:?}"
    );
    // Every worker, asked for its live environment.
    let (held, answers) = hold_all(port, n, "hold env LISTEN_PID,LISTEN_FDS,LISTEN_FDNAMES");
    expect_answers_from(&answers, &serving);
    drop(held);
    for a in &answers {
        let want = " LISTEN_PID unset LISTEN_FDS unset LISTEN_FDNAMES unset";
        assert!(
            answer_extra(a) == want.trim_start(),
            "worker {} sees {:?}",
            a.pid,
            answer_extra(a)
        );
    }
    for s in &serving {
        if mode == Mode::Exec {
            expect_exec_worker(&fx, &args, s.pid, s.id, Some(inode));
            let env = procfs::environ(s.pid).unwrap_or_default();
            let leaked: Vec<&String> = env.iter().filter(|e| e.starts_with("LISTEN_")).collect();
            assert!(
                leaked.is_empty(),
                "worker {} was executed with {leaked:?}",
                s.pid
            );
        }
    }
    fx.stop_with(libc::SIGTERM);
    drop(inherited);
}

pub fn systemd_fd3_closed() {
    let mut fx = fixture()
        .env("LISTEN_FDS", "1")
        .fd3(Fd3::Closed)
        .listen_pid_self()
        .start();
    let (display, debug) = expect_early_error(&mut fx);
    assert!(
        display.contains("fd 3") && display.contains("not open"),
        "unclear error {display:?}"
    );
    assert!(
        debug.contains("InheritedListener"),
        "expected Error::InheritedListener, got {debug}"
    );
}

/// `LISTEN_PID` naming another process: the variables are not for us; `addr` is bound.
pub fn systemd_other_pid() {
    let mut fx = fixture()
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .env("FX_WORKERS", "1")
        .start();
    let serving = ready_serving(&fx);
    fx.expect_log("master ready");
    let lines = fx.stderr();
    assert!(
        !lines.iter().any(|l| l.contains("systemd")),
        "the master took LISTEN_PID=1 for itself: {lines:?}"
    );
    ask(serving[0].port, "id");
    fx.stop_with(libc::SIGTERM);
}

// ---------------------------------------------------------------------------------------
// 8. The listener a worker gets.

/// `O_CLOEXEC` in a `/proc/PID/fdinfo/FD` `flags:` field: the descriptor is close-on-exec.
const FDINFO_CLOEXEC: i32 = libc::O_CLOEXEC;

/// The listener `serve` gets is close-on-exec, so that a program a worker starts does not
/// inherit the listening socket: in exec mode without reuseport (the worker finds it on fd
/// 3, which had to survive its own exec, so the worker must set `FD_CLOEXEC` again), and in
/// fork mode. Every descriptor of the worker that refers to the listening socket is checked,
/// through `/proc/PID/fdinfo`; both modes are reported.
pub fn exec_worker_listener_is_cloexec() {
    let n = 2;
    let mut problems = Vec::new();
    for mode in [Mode::Exec, Mode::Fork] {
        let mut fx = spec(mode, Backend::Pidfd, n).start();
        let serving = ready_serving(&fx);
        expect_mode_log(&fx, mode, Backend::Pidfd);
        for s in &serving {
            let fds = procfs::fds_of_socket(s.pid, s.inode);
            assert!(
                fds.contains(&s.fd),
                "{mode:?} mode: worker {} reports its listener on fd {}, but its descriptors \
                 of the listening socket {} are {fds:?}",
                s.pid,
                s.fd,
                s.inode
            );
            for fd in fds {
                let flags = procfs::fd_flags(s.pid, fd)
                    .unwrap_or_else(|| panic!("cannot read /proc/{}/fdinfo/{fd}", s.pid));
                if flags & FDINFO_CLOEXEC == 0 {
                    problems.push(format!(
                        "{mode:?} mode: worker {} (pid {}) holds the listening socket on fd \
                         {fd} without FD_CLOEXEC (fdinfo flags 0{flags:o}; serve got fd {})",
                        s.id, s.pid, s.fd
                    ));
                }
            }
        }
        fx.stop_with(libc::SIGTERM);
    }
    assert!(
        problems.is_empty(),
        "a program started by a worker would inherit the listening socket:\n{}",
        problems.join("\n")
    );
}

/// Checks that worker `s` was handed its listener in blocking mode: as the fixture saw it
/// (`fcntl(F_GETFL)` in `serve`) and as `/proc/PID/fdinfo` shows it.
fn expect_blocking(what: &str, s: &Serving) {
    assert!(
        !s.nonblocking,
        "{what}: worker {} (pid {}) got its listener (fd {}) with O_NONBLOCK set",
        s.id, s.pid, s.fd
    );
    let flags = procfs::fd_flags(s.pid, s.fd)
        .unwrap_or_else(|| panic!("cannot read /proc/{}/fdinfo/{}", s.pid, s.fd));
    assert!(
        flags & libc::O_NONBLOCK == 0,
        "{what}: worker {} (pid {}) serves fd {} with O_NONBLOCK set (fdinfo flags 0{flags:o})",
        s.id,
        s.pid,
        s.fd
    );
}

/// A listening socket of this process in non-blocking mode, as systemd passes it with
/// `NonBlocking=yes`; its port and inode.
fn nonblocking_listener() -> (TcpListener, u16, u64) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener
        .set_nonblocking(true)
        .expect("set the listener non-blocking");
    let port = listener.local_addr().expect("local_addr").port();
    let inode = own_socket_inode(listener.as_raw_fd());
    (listener, port, inode)
}

/// A listener inherited non-blocking is handed to `serve` in blocking mode, and workers
/// whose `serve` fails on an `accept` error (as `stream?` does; `FX_ACCEPT_ERRORS=fail`)
/// serve without crash-looping: under systemd socket activation with `NonBlocking=yes` (fd 3
/// with `O_NONBLOCK`, `LISTEN_PID`/`LISTEN_FDS=1`) in fork and exec mode, and in an exec-mode
/// worker whose fd 3 a foreign master left non-blocking.
pub fn nonblocking_inherited_listener_served_blocking() {
    let n = 2;
    for mode in Mode::ALL {
        let what = format!("systemd, NonBlocking=yes, {mode:?} mode");
        let (inherited, port, inode) = nonblocking_listener();
        let mut fx = spec(mode, Backend::Pidfd, n)
            .env("FX_ADDR", "192.0.2.1:9")
            .env("LISTEN_FDS", "1")
            .env("FX_ACCEPT_ERRORS", "fail")
            .fd3(Fd3::Dup(inherited.as_raw_fd()))
            .listen_pid_self()
            .start();
        let serving = ready_serving(&fx);
        fx.expect_log("serving the socket passed by systemd (fd 3");
        assert!(
            serving.iter().all(|s| s.port == port && s.inode == inode),
            "{what}: workers do not serve the inherited socket {inode}: {serving:?}"
        );
        for s in &serving {
            expect_blocking(&what, s);
        }
        // Two rounds, each worker holding a connection: the same workers answer both, after
        // going back to `accept` with nothing queued.
        expect_each_serves(port, &serving);
        expect_each_serves(port, &serving);
        fx.stop_with(libc::SIGTERM);
        assert!(
            fx.recovers().is_empty(),
            "{what}: workers were respawned: {:?}",
            fx.recovers()
        );
        assert_eq!(fx.spawns(), pids(&serving), "{what}: workers started");
        let mut exits: Vec<(usize, u32, String)> = fx
            .exits()
            .into_iter()
            .map(|e| (e.slot, e.pid, e.how))
            .collect();
        exits.sort();
        let stopped: Vec<(usize, u32, String)> = serving
            .iter()
            .map(|s| (s.id, s.pid, "Signal(SIGTERM)".to_owned()))
            .collect();
        assert_eq!(
            exits, stopped,
            "{what}: the workers' exits, all of them by the stop"
        );
        drop(inherited);
    }

    let what = "exec-mode worker of a foreign master, fd 3 non-blocking";
    let (inherited, port, inode) = nonblocking_listener();
    let mut fx = fixture()
        .env("FASTHTTP_PREFORK_CHILD", "1")
        .env("PREFORK_WORKER_ID", "0")
        .env("FX_ACCEPT_ERRORS", "fail")
        .fd3(Fd3::Dup(inherited.as_raw_fd()))
        .start();
    let s = wait_serving(&fx, &[fx.pid])[0];
    assert!(
        s.id == 0 && s.inode == inode,
        "{what}: does not serve the inherited socket {inode} as worker 0: {s:?}"
    );
    expect_blocking(what, &s);
    // One request after the other: between two, the worker waits in `accept`.
    for _ in 0..3 {
        let a = ask(port, "id");
        assert!(a.pid == fx.pid && a.id == 0, "{what}: answer {a:?}");
    }
    fx.signal(libc::SIGTERM);
    let status = fx.wait_exit();
    assert!(
        std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGTERM),
        "{what}: the worker ended with {}, not by the SIGTERM sent after its requests",
        describe(status)
    );
    drop(inherited);
}

// ---------------------------------------------------------------------------------------
// 9. A foreign master (Python) running the hello example as its child.

pub fn foreign_master() {
    if Command::new("python3").arg("--version").output().is_err() {
        return runner::skip("python3 not found");
    }
    let hello = hello_example();
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let script = manifest.join("tests").join("foreign_master.py");
    let (status, stdout, stderr) = run_captured(
        Command::new("python3").arg(&script).arg(&hello),
        Duration::from_secs(120),
    );
    assert!(
        status.success(),
        "foreign_master.py failed ({}):\n{stdout}{stderr}",
        describe(status)
    );
    runner::note(stdout.lines().last().unwrap_or(""));
}

/// A reuseport worker started as a fasthttp master starts it: no fd 3, no
/// `PREFORK_REUSEPORT_ADDR`, no `PREFORK_WORKER_ID`. It binds `addr` itself and serves as
/// worker 0.
pub fn foreign_reuseport_child() {
    let mut fx = fixture()
        .env("FASTHTTP_PREFORK_CHILD", "1")
        .env("FX_REUSEPORT", "1")
        .fd3(Fd3::Closed)
        .start();
    let serving = wait_serving(&fx, &[fx.pid])[0];
    assert!(serving.id == 0, "serves as worker {}", serving.id);
    let mine = procfs::listeners_of(fx.pid, serving.port);
    assert!(
        mine == [serving.inode],
        "holds listeners {mine:?}, expected its own {}",
        serving.inode
    );
    let a = ask(serving.port, "id");
    assert!(a.pid == fx.pid && a.id == 0, "answer {a:?}");
    let lines = fx.lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("master ") || l.starts_with("spawn ")),
        "the worker acted as a master: {lines:?}"
    );
    fx.signal(libc::SIGTERM);
    let status = fx.wait_exit();
    assert!(
        std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGTERM),
        "the worker ended with {}",
        describe(status)
    );
}

/// The `hello` example next to this test binary (`target/PROFILE/examples/hello`). Under
/// cargo (which sets `CARGO` for the tests it runs) it is built first, since
/// `cargo test --test listeners` alone does not build examples and a stale one would test old
/// code; cargo does not hold its build lock while tests run.
fn hello_example() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/PROFILE/deps/listeners-HASH
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the target directory");
    let hello = profile_dir.join("examples").join("hello");
    let cargo = std::env::var_os("CARGO");
    if cargo.is_none() && hello.is_file() {
        return hello;
    }
    let mut cmd = Command::new(cargo.unwrap_or_else(|| "cargo".into()));
    cmd.args([
        "build",
        "--quiet",
        "--example",
        "hello",
        "--features",
        "control-client",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    // target/debug holds the dev (and test) profile; other profiles have their own folder.
    match profile_dir.file_name().and_then(|p| p.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    let (status, _, stderr) = run_captured(&mut cmd, Duration::from_secs(600));
    assert!(
        status.success(),
        "cargo build --example hello failed: {stderr}"
    );
    assert!(
        hello.is_file(),
        "cargo built the hello example, but not at {}",
        hello.display()
    );
    hello
}
