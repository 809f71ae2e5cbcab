//! What a worker process does between `fork` and `serve`, and how it exits.
//!
//! Right after `fork` the child holds copies of everything the master had: the epoll fd,
//! the signalfd, its siblings' pidfds, a blocked signal mask. Close-on-exec does not help
//! without an exec, so the child closes them itself and restores the mask and the
//! `SIGCHLD` disposition the process had before [`crate::Prefork::run`]. It then arranges to
//! learn of the master's death and runs `serve`. It never returns into the caller's code: it
//! leaves through [`std::process::exit`], which flushes std's buffered output.

use std::any::Any;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{ExitCode, Termination};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::DeathHook;
use crate::protocol::{self, READY_FD_ENV};
use crate::sys::{self, SigSet};
use crate::worker::Worker;

/// Set in a worker process right after `fork`.
pub(crate) static IS_CHILD: AtomicBool = AtomicBool::new(false);

/// Exit code of a worker whose `serve` panicked (the code Rust gives a panicking `main`).
pub const EXIT_PANIC: i32 = 101;

pub(crate) struct ChildSetup<'a> {
    pub(crate) slot: usize,
    pub(crate) master_pid: u32,
    /// This worker's listener (`None` for `run`).
    pub(crate) listener: Option<TcpListener>,
    /// The write end of the readiness pipe.
    pub(crate) ready: OwnedFd,
    pub(crate) old_mask: SigSet,
    pub(crate) saved_chld: Option<&'a sys::SavedAction>,
    /// Read end of the master-death pipe and the user's callback.
    pub(crate) death_watch: Option<(OwnedFd, DeathHook)>,
}

/// Runs in the child right after `fork`; never returns.
pub(crate) fn run<F, T>(setup: ChildSetup<'_>, serve: F) -> !
where
    F: FnOnce(Option<TcpListener>, Worker) -> T,
    T: Termination,
{
    IS_CHILD.store(true, Ordering::Relaxed);
    let ChildSetup {
        slot,
        master_pid,
        listener,
        ready,
        old_mask,
        saved_chld,
        death_watch,
    } = setup;
    match death_watch {
        None => die_with_master(master_pid),
        Some((fd, hook)) => watch_master(fd, hook, master_pid),
    }
    if let Some(saved) = saved_chld {
        let _ = sys::restore_disposition(saved);
    }
    let _ = sys::sigmask(libc::SIG_SETMASK, &old_mask);
    prepare_worker();
    let worker = Worker {
        id: slot,
        pid: sys::getpid(),
        master_pid,
    };
    report_ready(ready, worker.pid);
    finish(worker, |worker| serve(listener, worker))
}

/// Runs `serve` in an exec-mode worker (started by any master speaking the protocol); never
/// returns.
///
/// The master set `PR_SET_PDEATHSIG(SIGKILL)` before exec. With an `on_master_death` hook,
/// the worker swaps that for a thread waiting on a pidfd of the master (Linux 5.3; on older
/// kernels the death signal stays and the hook does not run).
pub(crate) fn run_exec_child<F, T>(id: usize, on_master_death: Option<DeathHook>, serve: F) -> !
where
    F: FnOnce(Worker) -> T,
    T: Termination,
{
    IS_CHILD.store(true, Ordering::Relaxed);
    let master_pid = sys::getppid();
    if let Some(hook) = on_master_death {
        watch_master_pidfd(hook, master_pid);
    }
    prepare_worker();
    let worker = Worker {
        id,
        pid: sys::getpid(),
        master_pid,
    };
    let ready = std::env::var_os(READY_FD_ENV).map(|v| v.into_encoded_bytes());
    match protocol::parse_ready_fd(ready.as_deref()) {
        // Only a pipe: a stray variable must not make us write into some other file.
        Ok(Some(fd)) if sys::is_pipe(fd) => match sys::take_inherited(fd) {
            Some(fd) => report_ready(fd, worker.pid),
            None => log::warn!("{READY_FD_ENV}={fd} was taken already"),
        },
        Ok(Some(fd)) => log::warn!("{READY_FD_ENV}={fd} is not a pipe; not reporting readiness"),
        Ok(None) => {}
        Err(e) => log::warn!("{e}; not reporting readiness"),
    }
    finish(worker, serve)
}

/// Watches the master through a pidfd (readable when it exits) on a thread of its own.
fn watch_master_pidfd(mut hook: DeathHook, master_pid: u32) {
    let pidfd = match sys::pidfd_open(master_pid) {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!("cannot watch the master ({e}); the worker dies with it instead");
            return;
        }
    };
    // The pidfd refers to the master only if it was still our parent after opening it.
    if sys::getppid() != master_pid {
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
            if let Err(e) = sys::set_parent_death_signal(0) {
                log::warn!("cannot clear PR_SET_PDEATHSIG: {e}");
            }
        }
        Err(e) => log::warn!(
            "cannot start the master watcher thread ({e}); the worker dies with the master instead"
        ),
    }
}

/// What every worker does before `serve`: creates the shutdown notice's pipe, so that
/// [`Worker::shutdown`] cannot fail later (without a descriptor to spare the worker cannot
/// do its work anyway), and makes `SIGUSR1` and `SIGUSR2` harmless where they still have
/// their default action (terminate): the master forwards them to every worker.
fn prepare_worker() {
    if let Err(e) = sys::notice::prepare() {
        log::error!("worker cannot create its shutdown-notice pipe: {e}");
        sys::exit_now(1);
    }
    sys::notice::tame_forwarded_signals();
}

/// Tells the master that this worker is about to enter `serve` (its pid on the readiness
/// pipe, one atomic write), then closes the pipe.
fn report_ready(fd: OwnedFd, pid: u32) {
    if let Err(e) = sys::write_pid(fd.as_fd(), pid) {
        log::warn!("cannot report readiness to the master: {e}");
    }
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
/// `prctl` would not deliver the signal, and the child would have been reparented already.
///
/// The death signal is tied to the *thread* that forked us: the master's supervising thread,
/// which lives exactly as long as the master's event loop.
fn die_with_master(master_pid: u32) {
    if let Err(e) = sys::set_parent_death_signal(libc::SIGKILL) {
        log::error!("cannot set PR_SET_PDEATHSIG: {e}");
    }
    if sys::getppid() != master_pid {
        sys::exit_now(1);
    }
}

/// Starts a thread that blocks on the master-death pipe (readable, as end-of-file, only when
/// the master's write end closes, i.e. when the master dies), then runs the user's callback
/// and exits the worker.
fn watch_master(fd: OwnedFd, mut hook: DeathHook, master_pid: u32) {
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
        die_with_master(master_pid);
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
