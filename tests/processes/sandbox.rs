//! The sandbox cases of `tests/processes.rs`: a seccomp filter, installed by the fixture
//! before it starts its master (and inherited by every worker, across `exec` too), refuses
//! the system calls of docs/security.md's list, as a container engine's or a hardened
//! systemd unit's profile does, or as a kernel without the call.
//!
//! [`REFUSALS`] is the table: for each call (or form of a call) the crate makes, where it is
//! on the path (the modes, the options that make it), under which backends, and what must
//! happen when it is refused. Each row runs with `EPERM` and with `ENOSYS` in each of its
//! modes, as a test named `BACKEND::MODE::sandbox_refusing_CALL_ERRNO`:
//!
//! * an optional call ([`Expect::Works`]): the whole lifecycle still works
//!   ([`lifecycle_in_sandbox`]: start, serve, respawn, HUP replaces every worker, TTOU, TERM
//!   ends within the grace period and a margin with nothing left), and the fallback is
//!   logged as the row says;
//! * a required call: the run fails with an error that names the call, and nothing is left
//!   (no child, no zombie, nothing in the fixture's process group): before any fork
//!   ([`Expect::FailsBeforeFork`]), at the first worker's start ([`Expect::FailsAtSpawn`]),
//!   once the first workers started, which the master KILLs and reaps
//!   ([`Expect::FailsAfterStart`]), in the worker that needs it, which stops the master
//!   ([`Expect::FatalInWorker`]), or in an exec-mode worker's `listen_and_serve`, whose error
//!   the crash-loop guard ends ([`Expect::FailsInExecWorker`]).
//!
//! Beside the table: `setitimer` refused while the master's TERM reaches its workers in their
//! decision window ([`term_in_first_window`], draining workers and others), and the master's
//! last resort after a failed event loop with `wait4` or every signal refused as well
//! ([`last_resort`]), both in fork and exec mode, with `EPERM` and `ENOSYS`.
//!
//! A row that does not depend on the backend (every call but the reaping and signalling
//! ones) runs under the default backend only, pidfd. [`ALL`] holds the other sandbox cases:
//! every signal refused, and a container engine's allowlist of before the pidfd calls.
//!
//! [`OPERATOR_REFUSALS`] is the table of the control socket's and the PID file's calls, made
//! by the master alone and so tried in fork mode (`pidfd::fork::sandbox_control_refusing_*`):
//! a required call fails the run before any fork with an error naming the path and the call,
//! leaving no socket file and no PID file; an optional one keeps the master serving and
//! supervising, and its answer to a client and its log are checked. Unix listeners' calls
//! are the listeners suite's (`tests/listeners/sandbox.rs`).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use crate::cases::{
    assert_all_alive, assert_exits, assert_worker_of, ready_master, start, started,
};
use crate::support::backend::{Backend, Mode};
use crate::support::control;
use crate::support::net::{all_ids, collect_ids};
use crate::support::notify::NotifySocket;
use crate::support::process::{Fixture, TempDir, files_in, kill};
use crate::support::procfs;
use crate::support::runner::{self, Case, Test, cases, test};

/// The other sandbox cases, each run under every backend.
pub const ALL: &[Case<Backend>] = cases![&Backend::ALL =>
    stop_ends_when_every_signal_is_refused,
    sandbox_container_allowlist_before_pidfds,
    sandbox_container_allowlist_before_pidfds_exec,
];

/// The grace period of the sandbox cases, and how much longer than it a stop may take.
const SANDBOX_GRACE: Duration = Duration::from_secs(2);
const SANDBOX_MARGIN: Duration = Duration::from_secs(8);

/// The errors each refusal is tried with, and how `strerror` says them.
const ERRNOS: [(&str, &str); 2] = [
    ("EPERM", "Operation not permitted"),
    ("ENOSYS", "Function not implemented"),
];

const BOTH: &[Mode] = &[Mode::Fork, Mode::Exec];
const FORK: &[Mode] = &[Mode::Fork];
const EXEC: &[Mode] = &[Mode::Exec];
const PIDFD: &[Backend] = &[Backend::Pidfd];
const SIGCHLD: &[Backend] = &[Backend::Sigchld];
const EVERY: &[Backend] = &Backend::ALL;

/// The privilege drop's options (root runs the tests; the case skips otherwise).
const DROP: &[(&str, &str)] = &[("FX_USER", "nobody"), ("FX_GROUP", "nogroup")];
/// The heartbeat table's option.
const HEARTBEAT: &[(&str, &str)] = &[("FX_TIMEOUT_MS", "60000")];
/// The library's own listener (`listen_and_serve`), for the calls it makes on it.
const LISTEN: &[(&str, &str)] = &[("FX_LISTEN", "1")];
const REUSEPORT: &[(&str, &str)] = &[("FX_LISTEN", "1"), ("FX_REUSEPORT", "1")];
/// `NOTIFY_SOCKET`, bound by the test (`NOTIFY` in a value is replaced by its name).
const NOTIFY: &[(&str, &str)] = &[("NOTIFY_SOCKET", "NOTIFY"), ("WATCHDOG_USEC", "200000")];

/// A log line's text: `{err}` stands for the refusal's `strerror`, `{how}` for `refused`
/// (`EPERM`) or `unavailable` (`ENOSYS`), as the pidfd fallback says it.
type Text = &'static str;

/// What the fallback of an optional call logs.
#[derive(Clone, Copy)]
pub enum Log {
    /// Nothing: the fallback is silent (made where nothing can log, or not worth a line).
    Silent,
    /// One line.
    Once(Text),
    /// One line under the pidfd backend, none under sigchld (which never makes the call).
    OnceUnderPidfd(Text),
    /// A line from every worker started (each makes the call for itself).
    EachWorker(Text),
}

/// What must happen where the call is refused.
#[derive(Clone, Copy)]
pub enum Expect {
    /// Optional: the lifecycle works, and the fallback logs this.
    Works(Log),
    /// Required: `run` fails before any fork with an error containing this.
    FailsBeforeFork(Text),
    /// Required: `run` fails at the first worker's start with an error containing this,
    /// having started no worker.
    FailsAtSpawn(Text),
    /// Required by each worker: the first to start logs this and exits with `EXIT_FATAL`,
    /// which stops the master.
    FatalInWorker(Text),
    /// Required by the master once its first workers started (the event loop): `run` fails
    /// with an error containing this, having KILLed and reaped every worker it started.
    FailsAfterStart(Text),
    /// Required by an exec-mode worker before `serve` (its inherited listener's check):
    /// `listen_and_serve` returns an error containing this in the worker, which the fixture
    /// exits with (code 2), and the crash-loop guard stops the master.
    FailsInExecWorker(Text),
}

/// One row of the table: a call refused (`FX_DENY`'s name, see
/// `support::seccomp::CALLS`), the backends and modes it is tried under, the fixture
/// options that put it on the path, and what must happen.
pub struct Refused {
    pub call: &'static str,
    pub backends: &'static [Backend],
    pub modes: &'static [Mode],
    pub opts: &'static [(&'static str, &'static str)],
    pub expect: Expect,
}

const fn row(
    call: &'static str,
    backends: &'static [Backend],
    modes: &'static [Mode],
    opts: &'static [(&'static str, &'static str)],
    expect: Expect,
) -> Refused {
    Refused {
        call,
        backends,
        modes,
        opts,
        expect,
    }
}

use Expect::{
    FailsAfterStart, FailsAtSpawn, FailsBeforeFork, FailsInExecWorker, FatalInWorker, Works,
};

/// The hint a refused required call's error carries.
const HINT: &str = "(refused: a system call filter must allow it; docs/security.md";

/// Every call of docs/security.md's list that the crate makes, refused.
#[rustfmt::skip]
pub const REFUSALS: &[Refused] = &[
    // Reaping and signalling: under both backends, which make different calls.
    row("pidfd_open", EVERY, BOTH, &[], Works(Log::OnceUnderPidfd("pidfds {how} (pidfd_open: {err}"))),
    row("waitid_pidfd", EVERY, BOTH, &[], Works(Log::OnceUnderPidfd("pidfds {how} (waitid(P_PIDFD): {err}"))),
    row("pidfd_send_signal", EVERY, BOTH, &[], Works(Log::OnceUnderPidfd("pidfd_send_signal refused ({err}"))),
    row("waitid", EVERY, BOTH, &[], FailsBeforeFork("waitid failed: {err}")),
    // The pidfd backend signals through pidfds: kill(2) is not on its path.
    row("kill", PIDFD, BOTH, &[], Works(Log::Silent)),
    row("kill", SIGCHLD, BOTH, &[], FailsBeforeFork("kill failed: {err}")),
    // The event loop, made after the first forks, probed before them.
    row("epoll_create1", PIDFD, BOTH, &[], FailsBeforeFork("epoll_create1 failed: {err}")),
    row("signalfd4", PIDFD, BOTH, &[], FailsBeforeFork("signalfd failed: {err}")),
    // Starting workers.
    row("clone", PIDFD, FORK, &[], FailsAtSpawn("cannot start worker 0: fork: {err}")),
    row("clone", PIDFD, EXEC, &[], FailsAtSpawn(EXEC_FAILED)),
    row("execve", PIDFD, EXEC, &[], FailsAtSpawn(EXEC_FAILED)),
    // The exec-mode child marks descriptors close-on-exec one by one instead (it cannot log).
    row("close_range", PIDFD, EXEC, &[], Works(Log::Silent)),
    // The single-thread check before each fork (fork mode) counts /proc/self/task instead.
    row("unshare", PIDFD, FORK, &[], Works(Log::Once("unshare(CLONE_THREAD) refused ({err}"))),
    // The death signal: a forked worker serves without it; an exec-mode child cannot start.
    row("prctl_set_pdeathsig", PIDFD, FORK, &[], Works(Log::EachWorker("cannot set PR_SET_PDEATHSIG: {err}"))),
    row("prctl_set_pdeathsig", PIDFD, EXEC, &[], FailsAtSpawn(EXEC_FAILED)),
    row("prctl_set_name", PIDFD, BOTH, &[], Works(Log::EachWorker("cannot name itself: {err}"))),
    // Whether the master adopts orphans: a subreaper master is taken for none.
    row("prctl_get_child_subreaper", PIDFD, FORK, &[("FX_SUBREAPER", "1")], Works(Log::Silent)),
    // prctl as a whole: as PR_SET_PDEATHSIG (the names too, and NO_NEW_PRIVS is not asked for).
    row("prctl", PIDFD, FORK, &[], Works(Log::EachWorker("cannot set PR_SET_PDEATHSIG: {err}"))),
    row("prctl", PIDFD, EXEC, &[], FailsAtSpawn(EXEC_FAILED)),
    // The library's listeners: the stop's socket filter (then full sockets join the group,
    // logged at info; where that fails too, on a loaded machine, each backlog is cut to one,
    // with a warning), reuseport's steering filter.
    row("setsockopt_attach_filter", PIDFD, BOTH, LISTEN, Works(Log::Once("the kernel refused the socket filter"))),
    row("setsockopt_attach_reuseport_cbpf", PIDFD, BOTH, REUSEPORT, Works(Log::Once("cannot steer connections away from retired slots ({err}"))),
    row("sched_setaffinity", PIDFD, BOTH, &[("FX_AFFINITY", "1")], Works(Log::EachWorker("cannot pin itself to a CPU: {err}"))),
    // systemd's notification socket.
    row("socket_unix", PIDFD, FORK, NOTIFY, Works(Log::Once("cannot be used ({err}"))),
    row("sendto_addressed", PIDFD, FORK, NOTIFY, Works(Log::Once("cannot notify systemd ({err}"))),
    // The heartbeat table (`worker_timeout`), made before the first fork.
    row("memfd_create", PIDFD, FORK, HEARTBEAT, FailsBeforeFork(NO_TABLE)),
    row("ftruncate", PIDFD, FORK, HEARTBEAT, FailsBeforeFork(NO_TABLE)),
    row("mmap_shared", PIDFD, BOTH, HEARTBEAT, FailsBeforeFork(NO_TABLE)),
    // The privilege drop (`user`, `group`), in each worker.
    row("setgroups", PIDFD, BOTH, DROP, FatalInWorker("cannot drop its privileges (user nobody, group nogroup): setgroups: {err}")),
    row("setgid", PIDFD, BOTH, DROP, FatalInWorker("cannot drop its privileges (user nobody, group nogroup): setgid: {err}")),
    row("setuid", PIDFD, BOTH, DROP, FatalInWorker("cannot drop its privileges (user nobody, group nogroup): setuid: {err}")),
    // The event loop's wait: the master KILLs and reaps the workers it started (its last
    // resort; `wait4` and the signals refused too: `sandbox_last_resort_*`).
    row("epoll_pwait", PIDFD, BOTH, &[], FailsAfterStart("epoll_wait (epoll_pwait) failed: {err}")),
    // The event loop's set, made once the first workers started.
    row("epoll_ctl", PIDFD, BOTH, &[], FailsAfterStart("epoll_ctl failed: {err}")),
    // The readiness pipe, made before the first fork.
    row("pipe2", PIDFD, BOTH, &[], FailsBeforeFork("creating the readiness pipe failed: {err}")),
    // The master's signal mask, and the handlers: the workers' (fork mode) or the
    // forwarding ones (exec mode).
    row("rt_sigprocmask", PIDFD, BOTH, &[], FailsBeforeFork("blocking signals failed: {err}")),
    row("rt_sigaction", PIDFD, FORK, &[], FailsBeforeFork("installing the workers' signal handlers (rt_sigaction) failed: {err}")),
    row("rt_sigaction", PIDFD, EXEC, &[], FailsBeforeFork("installing signal handlers (rt_sigaction) failed: {err}")),
    // `read` and `write` on descriptors 3 and up (the standard streams carry the fixture's
    // report and log): the master's reads of its pipes and signalfd (which of them comes
    // first depends on the run) end the run; a worker that cannot write its readiness report
    // stops the master.
    row("read_fd3_up", PIDFD, BOTH, &[], FailsAfterStart("(read) failed: {err}")),
    row("write_fd3_up", PIDFD, BOTH, &[], FatalInWorker("cannot report readiness to the master: write: {err}")),
    // `fcntl`: not on the path of a forked worker nor of the listener (pipes and sockets are
    // made close-on-exec by their own calls); the exec-mode child's descriptors need it.
    row("fcntl", PIDFD, FORK, LISTEN, Works(Log::Silent)),
    row("fcntl", PIDFD, EXEC, &[], FailsAtSpawn(EXEC_FAILED)),
    // `fstat`: an exec-mode worker checks that its readiness descriptor is a pipe.
    row("fstat", PIDFD, FORK, &[], Works(Log::Silent)),
    row("fstat", PIDFD, EXEC, &[], FatalInWorker("cannot report readiness to the master: PREFORK_READY_FD=4: fstat: {err}")),
    // `getsockopt`, and the exec-mode worker's check of its inherited listener.
    row("getsockopt", PIDFD, FORK, LISTEN, Works(Log::Silent)),
    row("getsockopt", PIDFD, EXEC, &[], FailsInExecWorker("fd 3: getsockopt(SO_TYPE): {err}")),
    row("getsockopt_type", PIDFD, EXEC, &[], FailsInExecWorker("fd 3: getsockopt(SO_TYPE): {err}")),
    row("getsockopt_domain", PIDFD, EXEC, &[], FailsInExecWorker("fd 3: getsockopt(SO_DOMAIN): {err}")),
    row("getsockopt_acceptconn", PIDFD, EXEC, &[], FailsInExecWorker("fd 3: getsockopt(SO_ACCEPTCONN): {err}")),
    row("fcntl_getfd", PIDFD, EXEC, &[], FailsInExecWorker("fd 3: fcntl(F_GETFD): {err}")),
    // The listener of `listen_and_serve`, bound by the master in either mode.
    row("socket_inet", PIDFD, BOTH, LISTEN, FailsBeforeFork("cannot listen on 127.0.0.1:0: socket: {err}")),
    row("setsockopt_reuseaddr", PIDFD, BOTH, LISTEN, FailsBeforeFork("cannot listen on 127.0.0.1:0: setsockopt(SO_REUSEADDR): {err}")),
    row("setsockopt_reuseport", PIDFD, BOTH, REUSEPORT, FailsBeforeFork("cannot listen on 127.0.0.1:0: setsockopt(SO_REUSEPORT): {err}")),
    row("bind", PIDFD, BOTH, LISTEN, FailsBeforeFork("cannot listen on 127.0.0.1:0: bind: {err}")),
    row("listen", PIDFD, BOTH, LISTEN, FailsBeforeFork("cannot listen on 127.0.0.1:0: listen: {err}")),
    // With `reuseport` on port 0, the other slots' sockets take the first one's port.
    row("getsockname", PIDFD, BOTH, REUSEPORT, FailsBeforeFork("getsockname failed: {err}")),
    // Blocking mode: only for a socket systemd passed (the lifecycle must not need it).
    row("ioctl_fionbio", PIDFD, BOTH, LISTEN, Works(Log::Silent)),
    // The shutdown notice's decision window: without a timer, no TERM is kept (a TERM in
    // the window: `sandbox_refusing_setitimer_term_in_first_window_*`).
    row("setitimer", PIDFD, BOTH, &[], Works(Log::Once(NO_TIMER))),
    // The master's and each worker's own pid: read from /proc/self instead (the sigchld
    // backend's probe of `kill` signals the master by it); both refused, the master cannot
    // start. A worker's TERM goes to its pid where glibc's `raise` (`tgkill(getpid(),
    // gettid())`) fails; the tids of `cpu_affinity`'s pinning are read from /proc.
    row("getpid", EVERY, BOTH, &[], Works(Log::Silent)),
    row("getpid_and_readlinkat", PIDFD, BOTH, &[], FailsBeforeFork("getpid failed: {err}")),
    row("gettid", PIDFD, BOTH, &[("FX_AFFINITY", "1")], Works(Log::Silent)),
    // Every dropped descriptor: probed before the first fork (refused, std's
    // `Command::spawn` would wait forever on its own error pipe, and `read_dir` panic).
    row("close", PIDFD, BOTH, &[], FailsBeforeFork("close failed: {err}")),
];

/// What the master logs where `setitimer` is refused.
const NO_TIMER: Text = "setitimer(ITIMER_REAL) refused ({err}";

/// How `run` fails where an exec-mode worker cannot be started.
const EXEC_FAILED: Text = "cannot start worker 0: starting the worker's program (fork; in the child pthread_sigmask, \
     prctl(PR_SET_PDEATHSIG), fcntl, dup2; execve): {err}";
/// How `run` fails where the heartbeat table cannot be made.
const NO_TABLE: Text = "creating the heartbeat table (memfd_create, ftruncate, \
                        fcntl(F_ADD_SEALS), mmap(MAP_SHARED)) failed: {err}";

/// The tests of [`REFUSALS`]: each row under each of its backends and modes, with each
/// errno of [`ERRNOS`].
pub fn tests() -> Vec<Test> {
    let mut tests = Vec::new();
    for refused in REFUSALS {
        for &b in refused.backends {
            for &mode in refused.modes {
                for (errno, text) in ERRNOS {
                    let name = format!(
                        "{}::{}::sandbox_refusing_{}_{}",
                        b.name(),
                        mode.name(),
                        refused.call,
                        errno.to_lowercase()
                    );
                    tests.push(test(name, move || refusal(b, mode, refused, errno, text)));
                }
            }
        }
    }
    for mode in [Mode::Fork, Mode::Exec] {
        for (what, deny, log) in LAST_RESORT {
            for (errno, text) in ERRNOS {
                let name = format!(
                    "pidfd::{}::sandbox_last_resort_refusing_{what}_{}",
                    mode.name(),
                    errno.to_lowercase()
                );
                tests.push(test(name, move || {
                    last_resort(mode, deny, log, errno, text)
                }));
            }
        }
        for drain in [false, true] {
            for (errno, text) in ERRNOS {
                let name = format!(
                    "pidfd::{}::sandbox_refusing_setitimer_term_in_first_window{}_{}",
                    mode.name(),
                    if drain { "_draining" } else { "" },
                    errno.to_lowercase()
                );
                tests.push(test(name, move || {
                    term_in_first_window(mode, drain, errno, text)
                }));
            }
        }
    }
    tests
}

/// The master's last resort after its event loop failed (`epoll_pwait` refused), with more
/// refused: the name in the test, the refusals beside `epoll_pwait` (`{e}`: the errno), and
/// what the master logs about them.
#[rustfmt::skip]
const LAST_RESORT: &[(&str, &str, &[Text])] = &[
    ("wait4", "wait4={e}", &["cannot wait for the killed children (wait4: {err}"]),
    ("every_signal", "kill={e},pidfd_send_signal={e}", &["cannot KILL child"]),
    ("wait4_and_every_signal", "wait4={e},kill={e},pidfd_send_signal={e}", &["cannot KILL child"]),
];

/// The master's last resort where its event loop fails (`epoll_pwait` refused, once the
/// first workers started) and more is refused (`deny`, see [`LAST_RESORT`]): without the
/// `wait4` that reaps the KILLed workers, or without any signal to KILL them with, the master
/// still exits, at once, with the error that names the loop's call, and logs what it could
/// not do (`logs`); its workers end (by the KILL, or, where no signal reaches them, by
/// their parent-death signal when the master exits), and nothing of the fixture's group is
/// left.
fn last_resort(mode: Mode, deny: &str, logs: &[Text], errno: &str, err: &str) {
    let deny = format!("epoll_pwait={errno},{}", deny.replace("{e}", errno));
    let mut opts = mode_opts(mode);
    opts.extend_from_slice(&[("FX_WORKERS", "2"), ("FX_DENY", &deny)]);
    let mut fx = start(Backend::Pidfd, &opts);
    let code = fx.finish();
    assert_eq!(
        code,
        crate::support::fixture::EXIT_ERR,
        "the master's exit code"
    );
    let results = fx.results();
    let want = fill("epoll_wait (epoll_pwait) failed: {err}", errno, err);
    assert!(
        results.len() == 1 && results[0].contains(&want) && results[0].contains(HINT),
        "the error names the loop's call: {results:?}"
    );
    for text in logs {
        fx.expect_log(&fill(text, errno, err));
    }
    let spawns = fx.spawns();
    assert!(!spawns.is_empty(), "the workers started first");
    fx.wait_gone(&spawns);
    fx.assert_group_empty();
}

/// The grace period of [`term_in_first_window`]: long, so that a worker the stop had to KILL
/// shows in its exit.
const LONG_GRACE: &str = "30000";

/// `setitimer` refused (`errno`, `strerror`: `err`), and the master's TERM reaches its
/// workers in their decision window: the master stops itself from `on_master_ready`
/// (`FX_SELF_TERM`), a moment after the workers reported ready, before the window (100 ms
/// from a forked worker's fork, from an exec-mode worker's arming of its handler, right
/// before it reports) is over. With no timer to end the window, no TERM is kept for a worker
/// that has not asked for the shutdown notice: a non-draining worker ends by TERM's default
/// action at once, a draining one (`FX_DRAIN`, which asks at the start of `serve`) drains or
/// ends so, and none waits for the KILL at the end of the (long) grace period. The stop is
/// clean (every run `Ok`, no child, no zombie, nothing left of the group), and the refusal
/// was logged once, by the master.
fn term_in_first_window(mode: Mode, drain: bool, errno: &str, err: &str) {
    let deny = format!("setitimer={errno}");
    let mut opts = mode_opts(mode);
    opts.extend_from_slice(&[
        ("FX_WORKERS", "2"),
        ("FX_DENY", &deny),
        ("FX_GRACE_MS", LONG_GRACE),
        ("FX_SELF_TERM", "1"),
    ]);
    if drain {
        opts.push(("FX_DRAIN", "1"));
    }
    let started = Instant::now();
    let mut fx = start(Backend::Pidfd, &opts);
    fx.assert_clean_exit();
    let took = started.elapsed();
    let spawns = fx.spawns();
    assert_eq!(spawns.len(), 2, "two workers, none respawned: {spawns:?}");
    let exits = fx.exits();
    for pid in spawns {
        let exit = exits
            .iter()
            .find(|e| e.pid == pid)
            .unwrap_or_else(|| panic!("no exit line for worker {pid} in {exits:?}"));
        let drained = drain && exit.how == "Code(0)";
        assert!(
            exit.how == "Signal(SIGTERM)" || drained,
            "worker {pid} ended by the TERM (or drained), not by the grace period's KILL: {}",
            exit.how
        );
    }
    let logged = fill(NO_TIMER, errno, err);
    // The master's last line: its log is read in full from then on.
    fx.expect_log("master exiting cleanly");
    let n = fx.stderr().iter().filter(|l| l.contains(&logged)).count();
    assert_eq!(n, 1, "the master logs the refusal once");
    runner::note(format!("start to exit: {} ms", took.as_millis()));
}

/// `text` with `{err}` and `{how}` filled in for the refusal `errno` (`strerror`: `err`).
fn fill(text: Text, errno: &str, err: &str) -> String {
    let how = if errno == "ENOSYS" {
        "unavailable"
    } else {
        "refused"
    };
    text.replace("{err}", err).replace("{how}", how)
}

/// The options that start a fixture's workers in `mode`: exec mode needs the library's own
/// listener (`listen_and_serve`), which an exec'd worker finds on fd 3.
fn mode_opts(mode: Mode) -> Vec<(&'static str, &'static str)> {
    match mode {
        Mode::Fork => Vec::new(),
        Mode::Exec => vec![("FX_MODE", "exec"), ("FX_LISTEN", "1")],
    }
}

/// One test of the table: `refused.call` refused with `errno` (`strerror`: `err`) under `b`
/// and `mode`.
fn refusal(b: Backend, mode: Mode, refused: &Refused, errno: &str, err: &str) {
    if refused.opts == DROP && euid() != 0 {
        runner::skip("dropping privileges needs root");
        return;
    }
    // `A_and_B`: both refused.
    let deny = refused
        .call
        .split("_and_")
        .map(|call| format!("{call}={errno}"))
        .collect::<Vec<_>>()
        .join(",");
    let notify = refused
        .opts
        .iter()
        .any(|&(_, v)| v == "NOTIFY")
        .then(|| NotifySocket::at_path("sandbox"));
    let mut sandbox: Vec<(&str, &str)> = vec![("FX_DENY", &deny)];
    for &(name, value) in refused.opts {
        match &notify {
            Some(socket) if value == "NOTIFY" => sandbox.push((name, &socket.name)),
            _ => sandbox.push((name, value)),
        }
    }
    match refused.expect {
        Works(log) => {
            let fx = lifecycle_in_sandbox(b, mode, &sandbox);
            let stderr = fx.stderr();
            // What the master says at debug level (a repeated failure) does not count.
            let count = |text: Text| {
                let text = fill(text, errno, err);
                stderr
                    .iter()
                    .filter(|l| !l.starts_with("[DEBUG") && l.contains(&text))
                    .count()
            };
            match log {
                Log::Silent => {}
                Log::Once(text) => assert_eq!(
                    count(text),
                    1,
                    "the fallback is logged once: {:?}",
                    stderr
                        .iter()
                        .filter(|l| l.contains(&fill(text, errno, err)))
                        .collect::<Vec<_>>()
                ),
                Log::OnceUnderPidfd(text) => assert_eq!(
                    count(text),
                    usize::from(b == Backend::Pidfd),
                    "the fallback is logged once under pidfd only"
                ),
                Log::EachWorker(text) => {
                    let spawns = fx.spawns().len();
                    assert!(
                        count(text) >= spawns,
                        "each of the {spawns} workers logs {text:?}"
                    );
                }
            }
        }
        FailsBeforeFork(text) | FailsAtSpawn(text) | FailsAfterStart(text) => {
            let mut opts = mode_opts(mode);
            opts.push(("FX_WORKERS", "2"));
            opts.extend_from_slice(&sandbox);
            let mut fx = start(b, &opts);
            let display = fx.assert_failed_exit();
            let want = fill(text, errno, err);
            assert!(display.contains(&want), "error {display:?} says {want:?}");
            assert!(
                display.contains(HINT),
                "error {display:?} says that a sandbox refused it"
            );
            let spawns = fx.spawns();
            if matches!(refused.expect, FailsAfterStart(_)) {
                assert!(!spawns.is_empty(), "the workers started first");
                fx.wait_gone(&spawns);
            } else {
                assert!(spawns.is_empty(), "no worker started: {spawns:?}");
            }
        }
        FailsInExecWorker(text) => {
            let mut opts = mode_opts(mode);
            opts.push(("FX_WORKERS", "2"));
            opts.extend_from_slice(&sandbox);
            let mut fx = start(b, &opts);
            let display = fx.assert_failed_exit();
            assert!(
                display.contains("workers failed to boot"),
                "the crash-loop guard stops the master: {display}"
            );
            let want = fill(text, errno, err);
            fx.wait_stderr("the worker's error", |lines| {
                lines
                    .iter()
                    .any(|l| l.contains(&want) && l.contains(HINT))
                    .then_some(())
            });
        }
        FatalInWorker(text) => {
            let mut opts = mode_opts(mode);
            opts.push(("FX_WORKERS", "2"));
            opts.extend_from_slice(&sandbox);
            let mut fx = start(b, &opts);
            let display = fx.assert_failed_exit();
            assert!(
                display.contains("reported a fatal start-up failure"),
                "error: {display}"
            );
            fx.expect_log(&fill(text, errno, err));
        }
    }
    drop(notify);
}

/// The effective uid of the test process.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The lifecycle a master must keep under a sandbox (`sandbox`: the `FX_*` variables of its
/// seccomp filter and the options that put the refused call on its path), two workers
/// started in `mode`: they serve; a killed worker is replaced in its slot; HUP replaces every
/// worker (each old one exits on the TERM it was sent); TTOU retires the last slot's worker
/// (it exits on TERM, the other keeps serving, nothing is respawned); TERM stops the master
/// within the grace period and a bounded margin, cleanly (every run `Ok`, no child, no
/// zombie, nothing left of its process group). Returns the fixture, exited, for the caller's
/// checks of its log.
pub fn lifecycle_in_sandbox(b: Backend, mode: Mode, sandbox: &[(&str, &str)]) -> Fixture {
    let grace = SANDBOX_GRACE.as_millis().to_string();
    let mut opts = mode_opts(mode);
    opts.push(("FX_GRACE_MS", &grace));
    opts.extend_from_slice(sandbox);
    let (mut fx, port, ids) = ready_master(b, 2, &opts);
    let victim = ids[&0];
    kill(victim, libc::SIGKILL);
    let respawned = fx.wait_recover(victim);
    assert_eq!(
        fx.wait_exit_line(victim).slot,
        0,
        "the killed worker's slot"
    );
    assert_worker_of(&fx, respawned);
    let old: BTreeSet<u32> = [respawned, ids[&1]].into();
    // The replacement serves before the HUP: a worker stopped before it started could not log
    // what each worker must (rows count every worker's lines).
    let serving = collect_ids(port, 2, |pid| old.contains(&pid));
    assert_eq!(
        serving.values().copied().collect::<BTreeSet<u32>>(),
        old,
        "the respawned worker serves beside the other"
    );

    fx.signal(libc::SIGHUP);
    fx.wait_stderr_count("rolling restart done", 1);
    for &pid in &old {
        let exit = fx.wait_exit_line(pid);
        assert_eq!(exit.how, "Signal(SIGTERM)", "how the replaced {pid} ended");
    }
    let new = collect_ids(port, 2, |pid| !old.contains(&pid));
    assert_all_alive(&fx, new.values().copied());

    fx.signal(libc::SIGTTOU);
    let exit = fx.wait_exit_line(new[&1]);
    assert_eq!(
        (exit.slot, exit.how.as_str()),
        (1, "Signal(SIGTERM)"),
        "TTOU retires the last slot's worker"
    );
    assert_eq!(
        all_ids(port, 1)[&0],
        new[&0],
        "the other worker keeps serving"
    );
    assert_eq!(procfs::live_children(fx.pid), [new[&0]], "one worker left");
    assert_eq!(
        fx.spawns().len(),
        5,
        "2 + 1 respawn + 2 by HUP; none after TTOU"
    );

    fx.signal(libc::SIGTERM);
    let asked = Instant::now();
    fx.wait_exit_within(SANDBOX_GRACE + SANDBOX_MARGIN);
    let took = asked.elapsed();
    fx.assert_clean_exit();
    assert_exits(&fx, [new[&0]], "Signal(SIGTERM)");
    assert!(
        fx.recovers().len() == 1,
        "only the killed worker was a recovery"
    );
    runner::note(format!("TERM to exit: {} ms", took.as_millis()));
    fx
}

/// A sandbox that refuses every signal the master sends (`kill` and `pidfd_send_signal`).
/// Under the pidfd backend the master starts (it signals through pidfds, and learns only at
/// the first signal that both ways are refused): TERM cannot reach the workers, nor can KILL
/// after the grace period, yet the stop ends within the grace period plus the margin after
/// KILL: the master gives up on the workers, names them in its error, and returns; the
/// workers end with it (their parent-death signal), leaving nothing behind. Under the
/// sigchld backend, which signals with `kill` only, the master refuses to start, naming the
/// call.
fn stop_ends_when_every_signal_is_refused(b: Backend) {
    let refuse = [
        ("FX_DENY", "kill=EPERM,pidfd_send_signal=EPERM"),
        ("FX_GRACE_MS", "500"),
    ];
    if b == Backend::Sigchld {
        let mut fx = start(b, &[&[("FX_WORKERS", "2")][..], &refuse].concat());
        let display = fx.assert_failed_exit();
        assert!(
            display.contains("kill failed: Operation not permitted") && display.contains(HINT),
            "error: {display}"
        );
        return;
    }
    let (mut fx, _port, ids) = started(b, 2, &refuse);
    let workers: Vec<u32> = ids.values().copied().collect();
    fx.signal(libc::SIGTERM);
    // It ends by itself: `finish` waits for the master's exit, within the test deadline.
    let code = fx.finish();
    assert_eq!(
        code,
        crate::support::fixture::EXIT_ERR,
        "the master's exit code"
    );
    let results = fx.results();
    assert!(
        results
            .iter()
            .any(|r| r.contains("still alive well after SIGKILL")
                && workers.iter().all(|p| r.contains(&p.to_string()))),
        "the error names the workers: {results:?}"
    );
    fx.expect_log("giving up on");
    fx.wait_gone(&workers);
    fx.assert_group_empty();
}

const OPEN_REFUSED: &str = "pidfds refused (pidfd_open: Operation not permitted";
const SIGNAL_REFUSED: &str = "pidfd_send_signal refused (";

/// Under an allowlist that mimics a container engine's default profile of before the pidfd
/// calls were listed (`FX_ALLOWLIST=container`: `support::backend::CONTAINER`, the calls of
/// docs/security.md less the pidfd ones; everything else `EPERM`), the master keeps its
/// whole lifecycle ([`lifecycle_in_sandbox`]); under the pidfd backend it falls back to
/// sigchld at the first worker, logged once, and never tries `pidfd_send_signal` (it has no
/// pidfd to send through). x86_64 only (a list of call numbers is one architecture's).
fn container_allowlist_before_pidfds(b: Backend, mode: Mode) {
    if !cfg!(target_arch = "x86_64") {
        runner::skip("the allowlist filter is x86_64 only");
        return;
    }
    let fx = lifecycle_in_sandbox(b, mode, &[("FX_ALLOWLIST", "container")]);
    let stderr = fx.stderr();
    let fallbacks = stderr.iter().filter(|l| l.contains(OPEN_REFUSED)).count();
    assert_eq!(
        fallbacks,
        usize::from(b == Backend::Pidfd),
        "the fallback is logged once under pidfd only"
    );
    assert!(
        !stderr.iter().any(|l| l.contains(SIGNAL_REFUSED)),
        "no pidfd to signal through: {stderr:?}"
    );
}

fn sandbox_container_allowlist_before_pidfds(b: Backend) {
    container_allowlist_before_pidfds(b, Mode::Fork);
}

fn sandbox_container_allowlist_before_pidfds_exec(b: Backend) {
    container_allowlist_before_pidfds(b, Mode::Exec);
}

// ---- The control socket and the PID file -----------------------------------------------------

/// What a sandbox's refusal of a call of the control socket or the PID file must do (the
/// master makes them, in either mode: they run in fork mode).
#[derive(Clone, Copy)]
pub enum Operator {
    /// Required: `run` fails before any fork with an error containing this (after the path),
    /// and leaves no file behind but what `leaves` names.
    Fails { text: Text, leaves: Leftover },
    /// Optional: the master serves, `status` on the control socket gets `answer`, HUP
    /// replaces the workers, TERM ends the run cleanly; `logs` are logged once each, and
    /// the files are left at exit where `left` says so.
    Works {
        answer: Answer,
        logs: &'static [Text],
        left: bool,
    },
}

/// The files a failed run leaves in its directory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Leftover {
    Nothing,
    /// The stale socket file the test put at the path, untouched.
    TheStaleSocket,
    /// The PID file check's temporary file (`unlink` refused: nothing can remove it).
    TheTemporary,
}

/// What a `status` request on the control socket gets.
#[derive(Clone, Copy)]
pub enum Answer {
    Ok,
    /// An error reply containing this.
    Error(Text),
    /// Nothing while the master runs (the client is never accepted).
    Nothing,
    /// No reply: the master closes the client (its request sent) while it runs.
    Closed,
}

/// One row: the call refused, whether a stale socket file is put at the control socket's
/// path first, whether a PID file is asked for too, what must happen.
pub struct OperatorRefused {
    pub call: &'static str,
    pub stale: bool,
    pub pid_file: bool,
    pub expect: Operator,
}

const fn op(call: &'static str, stale: bool, pid_file: bool, expect: Operator) -> OperatorRefused {
    OperatorRefused {
        call,
        stale,
        pid_file,
        expect,
    }
}

const fn fails(text: Text) -> Operator {
    Operator::Fails {
        text,
        leaves: Leftover::Nothing,
    }
}

/// Every call of the control socket and the PID file, refused.
#[rustfmt::skip]
pub const OPERATOR_REFUSALS: &[OperatorRefused] = &[
    op("socket_unix_stream", false, true, fails("cannot make the control socket: socket(AF_UNIX, SOCK_STREAM): {err}")),
    op("bind", false, true, fails("cannot make the control socket: bind: {err}")),
    op("fchmodat", false, true, fails("cannot make the control socket: chmod (fchmodat): {err}")),
    op("listen", false, true, fails("cannot make the control socket: listen: {err}")),
    op("connect", true, true, Operator::Fails {
        text: "cannot look at the control socket's path: connect (is a server listening on the socket already?): {err}",
        leaves: Leftover::TheStaleSocket,
    }),
    op("openat_creat", false, true, fails("cannot write the PID file: open: {err}")),
    op("unlink", false, true, Operator::Fails {
        text: "cannot write the PID file: unlink: {err}",
        leaves: Leftover::TheTemporary,
    }),
    op("unlink", true, false, Operator::Fails {
        text: "cannot remove the stale control socket: unlink: {err}",
        leaves: Leftover::TheStaleSocket,
    }),
    op("unlink", false, false, Operator::Works {
        answer: Answer::Ok,
        logs: &["cannot remove the control socket {socket}: unlink: {err}"],
        left: true,
    }),
    op("rename", false, true, Operator::Works {
        answer: Answer::Ok,
        logs: &["cannot write the PID file {pid}: rename: {err}"],
        left: false,
    }),
    op("accept4_nonblock", false, true, Operator::Works {
        answer: Answer::Nothing,
        logs: &["accept failed: accept4: {err}"],
        left: false,
    }),
    op("getsockopt_peercred", false, true, Operator::Works {
        answer: Answer::Error("cannot tell who the client is: getsockopt(SO_PEERCRED): {err}"),
        logs: &["refused a client: cannot tell who it is: getsockopt(SO_PEERCRED): {err}"],
        left: false,
    }),
    op("shutdown", false, true, Operator::Works { answer: Answer::Ok, logs: &[], left: false }),
    op("recvfrom_dontwait", false, true, Operator::Works {
        answer: Answer::Closed,
        logs: &["control socket {socket}: cannot read a request: recv: {err}"],
        left: false,
    }),
    op("sendto_dontwait", false, true, Operator::Works {
        answer: Answer::Closed,
        logs: &["control socket {socket}: cannot send a reply: send: {err}"],
        left: false,
    }),
];

/// The tests of [`OPERATOR_REFUSALS`], each with each errno of [`ERRNOS`], named
/// `pidfd::fork::sandbox_control_refusing_CALL[_stale|_no_pid_file]_ERRNO`.
pub fn operator_tests() -> Vec<Test> {
    let mut tests = Vec::new();
    for refused in OPERATOR_REFUSALS {
        for (errno, text) in ERRNOS {
            let mut call = refused.call.to_owned();
            if refused.stale {
                call.push_str("_stale");
            }
            if !refused.pid_file {
                call.push_str("_no_pid_file");
            }
            let name = format!(
                "pidfd::fork::sandbox_control_refusing_{call}_{}",
                errno.to_lowercase()
            );
            tests.push(test(name, move || operator_refusal(refused, errno, text)));
        }
    }
    tests
}

/// One test of [`OPERATOR_REFUSALS`]: `refused.call` refused with `errno` (`strerror`: `err`),
/// a master in fork mode with a control socket (and a PID file where the row says).
fn operator_refusal(refused: &OperatorRefused, errno: &str, err: &str) {
    let dir = TempDir::new("sandbox-control");
    let socket = dir.path().join("control.sock");
    let pid = dir.path().join("master.pid");
    let (socket_str, pid_str) = (
        socket.to_str().expect("UTF-8"),
        pid.to_str().expect("UTF-8"),
    );
    let stale_ino = refused.stale.then(|| {
        drop(UnixListener::bind(&socket).expect("a stale socket file"));
        std::fs::symlink_metadata(&socket)
            .expect("the stale file")
            .ino()
    });
    let deny = format!("{}={errno}", refused.call);
    let grace = SANDBOX_GRACE.as_millis().to_string();
    let mut opts = vec![
        ("FX_DENY", deny.as_str()),
        ("FX_CONTROL", socket_str),
        ("FX_GRACE_MS", &grace),
    ];
    if refused.pid_file {
        opts.push(("FX_PID_FILE", pid_str));
    }
    let fill_paths = |text: Text| {
        fill(text, errno, err)
            .replace("{socket}", socket_str)
            .replace("{pid}", pid_str)
    };
    match refused.expect {
        Operator::Fails { text, leaves } => {
            opts.push(("FX_WORKERS", "2"));
            let mut fx = start(Backend::Pidfd, &opts);
            let display = fx.assert_failed_exit();
            let path = if text.contains("PID file") {
                pid_str
            } else {
                socket_str
            };
            let want = format!("{path}: {}", fill_paths(text));
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
            match leaves {
                Leftover::Nothing => assert!(left.is_empty(), "files left: {left:?}"),
                Leftover::TheStaleSocket => {
                    assert_eq!(left, ["control.sock".to_owned()].into(), "files left");
                    let ino = std::fs::symlink_metadata(&socket)
                        .expect("the stale file")
                        .ino();
                    assert_eq!(Some(ino), stale_ino, "the stale socket file, untouched");
                }
                Leftover::TheTemporary => {
                    assert_eq!(left.len(), 1, "files left: {left:?}");
                    let name = left.iter().next().expect("one");
                    assert!(
                        name.starts_with("master.pid.") && name.ends_with(".tmp"),
                        "the PID file check's temporary file, only: {left:?}"
                    );
                }
            }
        }
        Operator::Works { answer, logs, left } => {
            let (mut fx, port, ids) = ready_master(Backend::Pidfd, 2, &opts);
            match answer {
                Answer::Ok => {
                    let reply = control::request(&socket, "status");
                    assert!(control::is_ok(&reply), "status: {reply}");
                }
                Answer::Error(text) => {
                    // Refused at once, before its request is read: it sends none (a request
                    // left unread would reset the connection under the reply).
                    let reply = control::read_reply(&mut control::connect(&socket));
                    assert!(
                        control::is_error(&reply, &fill(text, errno, err)),
                        "status: {reply}"
                    );
                }
                Answer::Closed => {
                    // The request sent, the master closes the client without a reply (a
                    // request left unread may reset the connection instead of ending it).
                    let mut client = control::connect(&socket);
                    client.write_all(b"status\n").expect("sending the request");
                    let mut got = Vec::new();
                    match client.read_to_end(&mut got) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                        Err(e) => panic!("the master closes the client, not {e}"),
                    }
                    assert!(
                        got.is_empty(),
                        "no reply: {:?}",
                        String::from_utf8_lossy(&got)
                    );
                    fx.expect_log(&fill_paths(logs[0]));
                }
                Answer::Nothing => {}
            }
            // A client the master never accepts waits, while HTTP is served.
            let mut waiting = matches!(answer, Answer::Nothing).then(|| {
                let mut client = control::connect(&socket);
                client.write_all(b"status\n").expect("sending the request");
                client
            });
            if waiting.is_some() {
                fx.expect_log(&fill_paths(logs[0]));
            }
            fx.signal(libc::SIGHUP);
            fx.wait_stderr_count("rolling restart done", 1);
            let old: BTreeSet<u32> = ids.values().copied().collect();
            collect_ids(port, 2, |p| !old.contains(&p));
            fx.signal(libc::SIGTERM);
            fx.wait_exit_within(SANDBOX_GRACE + SANDBOX_MARGIN);
            fx.assert_clean_exit();
            if let Some(client) = &mut waiting {
                let mut got = String::new();
                let _ = client.read_to_string(&mut got);
                assert!(got.is_empty(), "a client never accepted got {got:?}");
            }
            let stderr = fx.stderr();
            for text in logs {
                let text = fill_paths(text);
                let n = stderr
                    .iter()
                    .filter(|l| !l.starts_with("[DEBUG") && l.contains(&text))
                    .count();
                assert_eq!(n, 1, "logged once: {text:?}");
            }
            let files = files_in(dir.path());
            if left {
                assert!(
                    files.contains("control.sock"),
                    "the socket file is left: {files:?}"
                );
            } else {
                assert!(files.is_empty(), "files left at exit: {files:?}");
            }
        }
    }
}
