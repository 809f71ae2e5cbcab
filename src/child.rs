//! What a worker process does between `fork` and `serve`, and how it exits.
//!
//! Right after `fork` the child holds copies of everything the master had: the epoll fd,
//! the signalfd, its siblings' pidfds, a blocked signal mask. Close-on-exec does not help
//! without an exec, so the child closes them itself and restores the mask and the
//! `SIGCHLD` disposition the process had before [`crate::Prefork::run`]. Before that, it
//! becomes a worker of its own: it takes its name (`prefork wK`), pins itself to its CPU
//! and drops its credentials, as the builder asks. It then arranges to learn of the
//! master's death, keeps its heartbeat cell, and runs `serve`. It never returns into the
//! caller's code: it leaves through [`std::process::exit`], which flushes std's buffered
//! output.

use std::any::Any;
use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{ExitCode, Termination};

use crate::config::{DeathHook, WorkerSetup};
use crate::listener::Listener;
use crate::protocol::{self, READY_FD_ENV};
use crate::sys::heartbeat::Heartbeats;
use crate::sys::{self, SigSet};
use crate::worker::Worker;

use crate::exit::{EXIT_FATAL, EXIT_PANIC};

use crate::protocol::HEARTBEAT_FD_ENV;

pub(crate) struct ChildSetup<'a> {
    pub(crate) slot: usize,
    pub(crate) master_pid: sys::Pid,
    /// This worker's listeners with their names (none for `run`).
    pub(crate) listeners: Vec<(String, Listener)>,
    /// The write end of the readiness pipe.
    pub(crate) ready: OwnedFd,
    /// The signal mask the process had before `run` (by reference: a `sigset_t` is 128
    /// bytes, and moving it would copy it onto a page of the worker's stack).
    pub(crate) old_mask: &'a SigSet,
    pub(crate) saved_chld: Option<&'a sys::SavedAction>,
    /// Read end of the master-death pipe and the user's callback.
    pub(crate) death_watch: Option<(OwnedFd, DeathHook)>,
    /// The master's heartbeat table, of which the worker keeps its own cell.
    pub(crate) heartbeat: Option<Heartbeats>,
    /// Name, CPU, credentials.
    pub(crate) setup: &'a WorkerSetup,
    /// `sys::notice::monotonic_ns()` read by the master just before the fork.
    pub(crate) forked_at: u64,
    /// The worker's name, built by the master (`None` with `worker_names(false)`).
    pub(crate) name: Option<&'a CStr>,
}

/// Runs in the child right after `fork`; never returns.
pub(crate) fn run<F, T>(setup: ChildSetup<'_>, serve: F) -> !
where
    F: FnOnce(Vec<(String, Listener)>, Worker) -> T,
    T: Termination,
{
    let ChildSetup {
        slot,
        master_pid,
        listeners,
        ready,
        old_mask,
        saved_chld,
        death_watch,
        heartbeat,
        setup,
        forked_at,
        name,
    } = setup;
    // First, since changing credentials clears the parent-death signal.
    become_worker(slot, name, setup);
    match death_watch {
        None => die_with_master(Some(master_pid)),
        Some((fd, hook)) => watch_master(fd, hook, master_pid),
    }
    if let Some(saved) = saved_chld {
        let _ = sys::restore_disposition(saved);
    }
    // The handlers are the master's, inherited (see `sys::notice`); from here on a TERM is
    // kept for the worker that is about to report ready.
    sys::notice::arm(forked_at);
    sys::set_sigmask(old_mask);
    if let Some(table) = heartbeat {
        table.into_worker(slot);
    }
    let worker = Worker {
        id: slot,
        pid: sys::getpid(),
        master_pid: master_pid.get(),
    };
    report_ready(ready, worker.pid);
    finish(worker, |worker| serve(listeners, worker))
}

/// Runs `serve` in an exec-mode worker (started by any master speaking the protocol); never
/// returns.
///
/// The master set `PR_SET_PDEATHSIG(SIGKILL)` before exec. With an `on_master_death` hook,
/// the worker swaps that for a thread waiting on a pidfd of the master (Linux 5.3; on older
/// kernels the death signal stays and the hook does not run). Dropping credentials clears
/// the death signal, so a worker that drops them sets it again.
pub(crate) fn run_exec_child<F, T>(
    id: usize,
    on_master_death: Option<DeathHook>,
    setup: &WorkerSetup,
    serve: F,
) -> !
where
    F: FnOnce(Worker) -> T,
    T: Termination,
{
    let master = sys::getppid();
    let name = sys::identity::WorkerName::new(id);
    become_worker(id, setup.names.then(|| name.as_c_str()), setup);
    match on_master_death {
        Some(hook) => watch_master_pidfd(hook, master),
        None if setup.credentials.is_some() => die_with_master(master),
        None => {}
    }
    adopt_heartbeat(id);
    sys::notice::arm_here();
    let worker = Worker {
        id,
        pid: sys::getpid(),
        master_pid: master.map_or(0, sys::Pid::get),
    };
    let ready = std::env::var_os(READY_FD_ENV).map(|v| v.into_encoded_bytes());
    match protocol::parse_ready_fd(ready.as_deref()) {
        // Only a pipe: a stray variable must not make us write into some other file.
        Ok(Some(fd)) => match sys::check_pipe(fd) {
            Ok(true) => match sys::Designated::ReadyPipe(fd).take() {
                Some(fd) => report_ready(fd, worker.pid),
                None => log::warn!("{READY_FD_ENV}={fd} was taken already"),
            },
            Ok(false) => {
                log::warn!("{READY_FD_ENV}={fd} is not a pipe; not reporting readiness")
            }
            // The master waits for the report: without it this worker would never count as
            // serving.
            Err(e) => cannot_report(worker.pid, &format!("{READY_FD_ENV}={fd}: {e}")),
        },
        Ok(None) => {}
        Err(e) => log::warn!("{e}; not reporting readiness"),
    }
    finish(worker, serve)
}

/// Watches the master (`None`: outside this process's pid namespace) through a pidfd
/// (readable when it exits) on a thread of its own.
fn watch_master_pidfd(mut hook: DeathHook, master: Option<sys::Pid>) {
    let Some(master_pid) = master else {
        log::warn!(
            "cannot watch the master (outside this process's pid namespace); the worker dies \
             with it instead"
        );
        return;
    };
    let pidfd = match sys::pidfd_open(master_pid) {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!("cannot watch the master ({e}); the worker dies with it instead");
            return;
        }
    };
    // The pidfd refers to the master only if it was still our parent after opening it.
    if sys::getppid() != master {
        hook();
        std::process::exit(0);
    }
    let spawned = std::thread::Builder::new()
        .name("prefork-master-watch".to_owned())
        .spawn(move || {
            if let Err(e) = sys::wait_readable(pidfd.as_fd()) {
                log::error!("watching the master: {e}");
                return;
            }
            log::warn!("master {master_pid} died; running on_master_death");
            hook();
            std::process::exit(0);
        });
    match spawned {
        // Only now that someone watches is the kernel's death signal dropped.
        Ok(_) => {
            if let Err(e) = sys::set_parent_death_signal(None) {
                log::warn!("cannot clear PR_SET_PDEATHSIG: {e}");
            }
        }
        Err(e) => log::warn!(
            "cannot start the master watcher thread ({e}); the worker dies with the master instead"
        ),
    }
}

/// What every worker does for itself first, as its builder asks: takes its name
/// (`prefork wK`), pins itself to its CPU, drops its credentials. A worker that cannot drop
/// its credentials must not serve: it exits with [`EXIT_FATAL`], which stops the
/// master. A name or CPU that cannot be set is logged only.
fn become_worker(slot: usize, name: Option<&CStr>, setup: &WorkerSetup) {
    if let Some(name) = name {
        if let Err(e) = sys::identity::set_thread_name_c(name) {
            log::warn!("worker {slot} cannot name itself: {e}");
        }
    }
    if setup.affinity {
        let pinned = sys::identity::allowed_cpus().and_then(|cpus| match cpus.len() {
            0 => Err(std::io::Error::other("no CPU is allowed")),
            n => sys::identity::pin_process(cpus[slot % n]).map(|()| cpus[slot % n]),
        });
        match pinned {
            Ok(cpu) => log::debug!("worker {slot} pinned to CPU {cpu}"),
            Err(e) => log::warn!("worker {slot} cannot pin itself to a CPU: {e}"),
        }
    }
    if let Some(c) = &setup.credentials {
        if let Err(e) = sys::identity::drop_privileges(c) {
            let who = match &c.user {
                Some((user, _)) => format!("user {user}, group {}", c.group.0),
                None => format!("group {}", c.group.0),
            };
            let pid = sys::getpid();
            log::error!("worker {slot} (pid {pid}) cannot drop its privileges ({who}): {e}");
            eprintln!("worker {slot} (pid {pid}): fatal: cannot drop privileges to {who}: {e}");
            std::process::exit(EXIT_FATAL);
        }
    }
}

/// In an exec-mode worker: keeps its heartbeat cell from the table on the descriptor
/// `PREFORK_HEARTBEAT_FD` names, if set. A malformed value or an unusable descriptor is
/// logged; the worker then serves without a cell (its `heartbeat` does nothing, and the
/// master never judges it).
fn adopt_heartbeat(id: usize) {
    let Some(value) = std::env::var_os(HEARTBEAT_FD_ENV) else {
        return;
    };
    let Some(fd) = parse_fd(value.as_encoded_bytes()) else {
        log::warn!(
            "{HEARTBEAT_FD_ENV}={value:?} is not a descriptor number from 3 to 1023; \
             no heartbeat"
        );
        return;
    };
    let Some(owned) = sys::Designated::HeartbeatTable(fd).take() else {
        log::warn!("{HEARTBEAT_FD_ENV}={fd} is not open, or was taken already; no heartbeat");
        return;
    };
    if let Err(why) = sys::heartbeat::adopt(owned, id) {
        log::warn!("{HEARTBEAT_FD_ENV}={fd} is unusable: {why}; no heartbeat");
    }
}

/// A descriptor number as the protocol writes it: canonical decimal, 3 to 1023.
fn parse_fd(value: &[u8]) -> Option<i32> {
    let canonical = !value.is_empty()
        && value.len() <= 4
        && value.iter().all(u8::is_ascii_digit)
        && (value[0] != b'0');
    let n: i32 = std::str::from_utf8(value)
        .ok()
        .filter(|_| canonical)?
        .parse()
        .ok()?;
    (3..=1023).contains(&n).then_some(n)
}

/// Tells the master that this worker is about to enter `serve` (its pid on the readiness
/// pipe, one atomic write), then closes the pipe. Where a sandbox refuses the `write`, the
/// worker could never count as serving: a fatal start-up failure ([`cannot_report`]).
fn report_ready(fd: OwnedFd, pid: sys::Pid) {
    if let Err(e) = sys::write_pid(fd.as_fd(), pid) {
        if sys::is_refused(&e) {
            cannot_report(pid, &sys::named("write", e).to_string());
        }
        log::warn!("cannot report readiness to the master: {e}");
    }
}

/// A worker that a sandbox keeps from reporting ready: it logs why and exits with
/// `EXIT_FATAL`, which stops the master.
fn cannot_report(pid: sys::Pid, why: &str) -> ! {
    log::error!("worker (pid {pid}) cannot report readiness to the master: {why}");
    std::process::exit(EXIT_FATAL)
}

/// Runs `serve` and exits with its outcome: 0, 1 for an error, [`EXIT_PANIC`] for a panic.
fn finish<F, T>(worker: Worker, serve: F) -> !
where
    F: FnOnce(Worker) -> T,
    T: Termination,
{
    let code = match catch_unwind(AssertUnwindSafe(|| serve(worker).report())) {
        Ok(code) => exit_code(code),
        Err(payload) => {
            log::error!(
                "worker {} (pid {}) panicked: {}",
                worker.id,
                worker.pid,
                panic_message(payload.as_ref())
            );
            EXIT_PANIC
        }
    };
    std::process::exit(code)
}

/// `PR_SET_PDEATHSIG` with `SIGKILL`, then a `getppid()` check: a master that died before the
/// `prctl` would not deliver the signal, and the child would have been reparented already;
/// the worker then exits with 1 before serving, through std's `exit` as every worker ends
/// ([`finish`]; the master flushed std's stdout before the fork, so nothing prints twice).
///
/// The death signal is tied to the *thread* that forked us: the master's supervising thread,
/// which lives exactly as long as the master's event loop.
fn die_with_master(master: Option<sys::Pid>) {
    if let Err(e) = sys::set_parent_death_signal(Some(sys::signal::Signal::Kill)) {
        log::error!("cannot set PR_SET_PDEATHSIG: {e}");
    }
    if sys::getppid() != master {
        std::process::exit(1);
    }
}

/// Starts a thread that blocks on the master-death pipe (readable, as end-of-file, only when
/// the master's write end closes, i.e. when the master dies), then runs the user's callback
/// and exits the worker.
fn watch_master(fd: OwnedFd, mut hook: DeathHook, master_pid: sys::Pid) {
    let watcher = std::thread::Builder::new()
        .name("prefork-master-watch".to_owned())
        .spawn(move || {
            if let Err(e) = sys::wait_readable(fd.as_fd()) {
                log::error!("watching the master: {e}");
                return;
            }
            log::warn!("master {master_pid} died; running on_master_death");
            hook();
            std::process::exit(0);
        });
    if let Err(e) = watcher {
        log::error!(
            "cannot start the master watcher thread ({e}); the worker will be killed with the master instead"
        );
        die_with_master(Some(master_pid));
    }
}

/// The numeric code of an [`ExitCode`] (std keeps it opaque; the codes a worker can produce
/// are 0..=255).
fn exit_code(code: ExitCode) -> i32 {
    (0..=255u8)
        .find(|&c| ExitCode::from(c) == code)
        .map_or(1, i32::from)
}

/// The message of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn heartbeat_fds_are_canonical_decimals_from_3_to_1023() {
        assert_eq!(super::parse_fd(b"5"), Some(5));
        assert_eq!(super::parse_fd(b"1023"), Some(1023));
        for bad in [
            &b""[..],
            b"2",
            b"05",
            b"+5",
            b" 5",
            b"5\n",
            b"1024",
            b"99999",
            b"x",
        ] {
            assert_eq!(super::parse_fd(bad), None, "{bad:?}");
        }
    }
}
