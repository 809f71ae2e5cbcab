//! The worker's shutdown notice: a `SIGTERM`/`SIGINT` handler that sets a flag and makes a
//! pipe readable.
//!
//! A worker reports that it is ready right before `serve`, and `serve` asks for the notice
//! ([`crate::Worker::shutdown`]) a moment later; a TERM from the master in between must not
//! end a worker that was about to drain. So the handler is in place before the report
//! (where TERM and INT still have their default action) and decides when a signal comes:
//!
//! * the worker asked for the notice: the flag is set and the pipe made readable (the drain);
//! * it did not, and the worker started [`DECISION_WINDOW`] or more ago (a forked worker
//!   counts from its fork, an exec-mode worker from the moment it arms the handler, a few
//!   microseconds before `serve`; either way `serve` is running): it never
//!   will; the default action is put back and the signal raised again, so TERM ends the
//!   worker as it always did;
//! * it did not yet, within the window: the request is kept (a later `shutdown` call sees it
//!   at once), and a one-shot timer (`setitimer`, `SIGALRM`) fires when the window ends: a
//!   worker that has not asked by then gets the signal's default action after all. (A
//!   program that uses `SIGALRM` itself should ask for the notice at the start of `serve`,
//!   which cancels that timer.)
//!
//! Where a sandbox refuses `setitimer` (`EPERM`, `EACCES`, or `ENOSYS` on a kernel without
//! it), no timer can end the window, and a TERM kept for a worker that never asks would wait
//! for the master's KILL. So without a timer nothing is kept: a TERM to a worker that has not
//! asked for the notice gets its default action at once, as it did before the window existed
//! (a worker that asks a moment later may then be ended instead of draining). The master
//! probes the call once before its first fork ([`probe_timer`], which changes no timer) and
//! logs the refusal; forked workers inherit the answer, and a handler whose `setitimer`
//! fails anyway (an exec-mode worker, which does not probe) falls back the same way.
//!
//! The pipe is never read: once the handler wrote its byte, the read end stays readable for
//! good, which is what `poll`, `epoll` and tokio's `AsyncFd` want from a level-triggered "it
//! happened" descriptor. It is created when the worker first asks for the notice, not
//! before: a signal that came earlier is on it at once.
//!
//! Starting a worker is kept cheap. In fork mode the master installs the handlers (this
//! module's TERM/INT handler and the do-nothing USR1/USR2 handler, each only where the
//! disposition is the default) once, while it blocks those signals itself, and its workers
//! inherit them ([`Inherited`]); a forked worker then only marks the time it is armed
//! ([`arm`]). An exec-mode worker starts with default dispositions and installs them itself
//! ([`arm_here`]).

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering, fence};

use super::signal::{
    ALARM, SavedAction, Signal, WorkerHandler, default_action_now, default_alarm_disposition,
    install_worker_handler, restore_disposition,
};

/// The worker's handlers, as [`install_worker_handler`] takes them: the notice (TERM, INT),
/// the end of its decision window (`SIGALRM`), and the one that does nothing (USR1, USR2).
const NOTICE: WorkerHandler = WorkerHandler::Notice;
const WINDOW_END: WorkerHandler = WorkerHandler::WindowEnd;
const NOTHING: WorkerHandler = WorkerHandler::Nothing;

/// Set by the handler; read by [`requested`].
static REQUESTED: AtomicBool = AtomicBool::new(false);
/// `(read end, write end)`, created once per process, when the worker first asks; the
/// handler writes to it once it is there (`OnceLock::get` is one atomic load).
static PIPE: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();
/// Whether the handler is installed.
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Whether the worker asked for the notice.
static SUBSCRIBED: AtomicBool = AtomicBool::new(false);
/// Whether the handler set a timer for a worker that has not asked yet.
static ALARMED: AtomicBool = AtomicBool::new(false);
/// The signal kept for a worker that has not asked yet, for [`on_window_end`].
static PENDING: AtomicI32 = AtomicI32::new(0);
/// `CLOCK_MONOTONIC` in nanoseconds from which the decision window runs (0: not a worker).
static ARMED_AT: AtomicU64 = AtomicU64::new(0);
/// Whether `setitimer` can end the decision window: false once [`probe_timer`] or the
/// handler found it refused, and then no TERM is kept.
static TIMER: AtomicBool = AtomicBool::new(true);

/// How long after its start a worker that has not asked for the notice may still
/// ask: a TERM within it is kept for the worker instead of ending it at once.
pub(crate) const DECISION_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);

/// The signals that request a drain: what the master sends (TERM), and what Ctrl-C sends
/// to a whole process group (INT).
const SIGNALS: [Signal; 2] = [Signal::Term, Signal::Int];

/// Whether a shutdown was requested. An atomic load.
#[inline]
pub(crate) fn requested() -> bool {
    REQUESTED.load(Ordering::Acquire)
}

/// The handlers a fork-mode master installs for its workers to inherit, put back as they
/// were when dropped. The master blocks these signals while it runs, so the handlers never
/// run in the master.
pub(crate) struct Inherited {
    saved: Vec<SavedAction>,
}

impl Inherited {
    /// Installs the notice handler for TERM and INT and the do-nothing handler for USR1 and
    /// USR2, each where the disposition is the default; call it with those signals blocked.
    /// Fails where `sigaction` does (a sandbox refusing `rt_sigaction`): without the handler
    /// no worker could drain.
    pub(crate) fn install() -> io::Result<Inherited> {
        // Dropped on a failure: what was installed goes back.
        let mut inherited = Inherited {
            saved: Vec::with_capacity(4),
        };
        install_handler(true, &mut inherited.saved)?;
        tame_forwarded_signals(&mut inherited.saved);
        Ok(inherited)
    }
}

impl Drop for Inherited {
    fn drop(&mut self) {
        for previous in self.saved.drain(..) {
            let _ = restore_disposition(&previous);
        }
        INSTALLED.store(false, Ordering::Release);
    }
}

/// Marks this process as a worker whose [`DECISION_WINDOW`] runs from `at` (a
/// [`monotonic_ns`] reading). A forked worker calls it before it unblocks the signals, with
/// the time the master read just before the fork (a clock reading of its own would cost the
/// worker the pages of the clock code, for microseconds that do not matter against the
/// window): its handlers, inherited from the master, are in place already.
pub(crate) fn arm(at: u64) {
    ARMED_AT.store(at.max(1), Ordering::Release);
}

/// Whether [`arm`] ran: this process is a worker.
pub(crate) fn armed() -> bool {
    ARMED_AT.load(Ordering::Acquire) != 0
}

/// What an exec-mode worker does before `serve` (it inherits no handler): makes `SIGUSR1`
/// and `SIGUSR2` harmless where they have their default action, installs the notice
/// handler where TERM and INT have theirs (a handler the program installed itself is left
/// alone), and arms it. See the module docs.
pub(crate) fn arm_here() {
    let mut ignored = Vec::new();
    tame_forwarded_signals(&mut ignored);
    arm(monotonic_ns());
    // Where sigaction is refused the master failed before it started any worker.
    let _ = install_handler(true, &mut ignored);
}

/// Asks for the notice: installs the handler if it is not armed yet (the first call in a
/// process), creates the pipe (the first call in a process) and returns its read end. A
/// TERM kept for the worker, or one that came before the pipe existed, is already on it.
///
/// # Panics
///
/// If the pipe cannot be created (no descriptor left).
pub(crate) fn install() -> BorrowedFd<'static> {
    let read = match notice_pipe() {
        Ok(read) => read,
        Err(e) => panic!("prefork: cannot create the shutdown-notice pipe: {e}"),
    };
    SUBSCRIBED.store(true, Ordering::Release);
    let _ = install_handler(false, &mut Vec::new());
    if ALARMED.swap(false, Ordering::AcqRel) {
        let _ = set_timer(0);
        // SIGALRM back to its default, as it was before the handler took it.
        let _ = default_alarm_disposition();
    }
    read
}

/// The notice pipe's read end, created on the first call. Once the handler can see the
/// pipe, a request it recorded before is written to the pipe here: the handler stores the
/// flag and then looks for the pipe, this function stores the pipe and then reads the flag,
/// each with a `SeqCst` fence in between, so one of the two writes the byte (or both: a
/// second byte is harmless).
fn notice_pipe() -> io::Result<BorrowedFd<'static>> {
    if PIPE.get().is_none() {
        let flags = rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK;
        let (read, write) = rustix::pipe::pipe_with(flags)?;
        // Two threads racing here: the loser's pipe is dropped.
        let (_, write) = PIPE.get_or_init(|| (read, write));
        fence(Ordering::SeqCst);
        if REQUESTED.load(Ordering::SeqCst) {
            let _ = rustix::io::write(write, &[1]);
        }
    }
    let (read, _) = PIPE.get().expect("created just above");
    Ok(borrow(read))
}

/// Installs `on_signal` for TERM and INT, once; with `only_over_default`, only where the
/// disposition is still the default. The dispositions it replaced go to `saved`.
fn install_handler(only_over_default: bool, saved: &mut Vec<SavedAction>) -> io::Result<()> {
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    for signal in SIGNALS {
        // It replaces the default disposition of TERM/INT (or, when asked for the notice
        // explicitly, whatever was there), which is the point. sigaction fails for these
        // valid, catchable signals only where a sandbox refuses it.
        match install_worker_handler(signal, NOTICE) {
            Ok(previous) if only_over_default && !previous.was_default() => {
                // The handler the program installed stays.
                let _ = restore_disposition(&previous);
            }
            Ok(previous) => saved.push(previous),
            Err(e) => {
                INSTALLED.store(false, Ordering::Release);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// `setitimer(ITIMER_REAL)`: one `SIGALRM` in `micros` microseconds (0: none); whether the
/// kernel took it. Async-signal-safe.
fn set_timer(micros: u64) -> bool {
    let value = libc::timeval {
        tv_sec: (micros / 1_000_000) as libc::time_t,
        tv_usec: (micros % 1_000_000) as libc::suseconds_t,
    };
    setitimer(value, None).is_ok()
}

/// `setitimer(ITIMER_REAL)` with `value` (no interval), the previous timer written to `old`
/// if given. Async-signal-safe.
fn setitimer(value: libc::timeval, old: Option<&mut libc::itimerval>) -> io::Result<()> {
    let timer = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: value,
    };
    let old = old.map_or(std::ptr::null_mut(), |old| old as *mut libc::itimerval);
    // SAFETY: setitimer reads one itimerval from this frame and writes one to `old`, a null
    // pointer (allowed) or a live exclusive reference. It is a plain system call, safe in a
    // signal handler.
    if unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, old) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `setitimer(ITIMER_REAL)` can be used, asked once by the master before its first
/// fork (forked workers inherit the answer). The probe changes no timer: it passes a value
/// the kernel rejects with `EINVAL` (`tv_usec` of a million, refused since Linux 2.6.22)
/// after a system call filter let the call through; a filter's refusal (or a kernel without
/// the call) comes back instead, and then no TERM is kept for a worker's decision window
/// (see the module docs). An old kernel that took the value has its previous timer put back.
pub(crate) fn probe_timer() -> io::Result<()> {
    let invalid = libc::timeval {
        tv_sec: 0,
        tv_usec: 1_000_000,
    };
    let mut old = libc::itimerval {
        it_interval: invalid,
        it_value: invalid,
    };
    let result = match setitimer(invalid, Some(&mut old)) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(e) => Err(e),
        Ok(()) => {
            let _ = setitimer(old.it_value, None);
            Ok(())
        }
    };
    TIMER.store(result.is_ok(), Ordering::Release);
    result
}

/// The decision window ended with a signal kept for a worker: if it has not asked for the
/// notice, the signal gets its default action now.
pub(super) extern "C" fn on_window_end(_: libc::c_int) {
    if SUBSCRIBED.load(Ordering::Acquire) {
        return;
    }
    default_action_now(PENDING.load(Ordering::Acquire));
}

/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds; async-signal-safe.
///
/// Through nix, that is libc, whose vDSO entry the dynamic loader resolved when the program
/// started: rustix would look the vDSO up on its first call, in every worker, writing pages
/// of its own before `serve`.
pub(crate) fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(now) => (now.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(now.tv_nsec() as u64),
        // CLOCK_MONOTONIC is always there.
        Err(_) => 0,
    }
}

fn borrow(fd: &'static OwnedFd) -> BorrowedFd<'static> {
    use std::os::fd::AsFd;
    fd.as_fd()
}

pub(super) extern "C" fn on_signal(signal: libc::c_int) {
    let errno = nix::errno::Errno::last_raw();
    if !SUBSCRIBED.load(Ordering::Acquire) {
        let running = monotonic_ns().saturating_sub(ARMED_AT.load(Ordering::Acquire));
        if running >= DECISION_WINDOW.as_nanos() as u64 || !TIMER.load(Ordering::Acquire) {
            // A worker that does not drain, or no timer to end the window: TERM ends it, as
            // by default.
            default_action_now(signal);
            return;
        }
        PENDING.store(signal, Ordering::Release);
        if !ALARMED.swap(true, Ordering::AcqRel) {
            let _ = install_worker_handler(ALARM, WINDOW_END);
            let left = (DECISION_WINDOW.as_nanos() as u64).saturating_sub(running);
            if !set_timer(left / 1_000 + 1) {
                // Refused here (an exec-mode worker does not probe): nothing would end the
                // window, so the signal is not kept.
                TIMER.store(false, Ordering::Release);
                ALARMED.store(false, Ordering::Release);
                let _ = default_alarm_disposition();
                default_action_now(signal);
                return;
            }
        }
        nix::errno::Errno::set_raw(errno);
    }
    REQUESTED.store(true, Ordering::SeqCst);
    fence(Ordering::SeqCst);
    let Some((_, write)) = PIPE.get() else {
        // No pipe yet: `notice_pipe` writes the byte when it creates it.
        return;
    };
    // The pipe lives for the rest of the process (it is in a static); a full pipe (already
    // notified) just makes the write fail.
    let _ = rustix::io::write(write, &[1]);
    nix::errno::Errno::set_raw(errno);
}

/// Gives `SIGUSR1` and `SIGUSR2` a handler that does nothing, where they have their default
/// action (which terminates the process); the dispositions it replaced go to `saved`. A
/// handler, unlike `SIG_IGN`, is reset by `exec`, so programs the worker starts get the
/// default back. A handler the program installed before the fork, or installs later, takes
/// precedence.
fn tame_forwarded_signals(saved: &mut Vec<SavedAction>) {
    for signal in [Signal::Usr1, Signal::Usr2] {
        if let Ok(previous) = install_worker_handler(signal, NOTHING) {
            if previous.was_default() {
                saved.push(previous);
            } else {
                // The handler the program installed stays.
                let _ = restore_disposition(&previous);
            }
        }
    }
}

pub(super) extern "C" fn do_nothing(_: libc::c_int) {}
