//! The worker's shutdown notice: a `SIGTERM`/`SIGINT` handler that sets a flag and makes a
//! pipe readable.
//!
//! The handler is installed only when the worker first asks for the notice
//! ([`crate::Worker::shutdown`]); until then TERM has its default action and ends the worker,
//! as it always did. The pipe is never read: once the handler wrote its byte, the read end
//! stays readable for good, which is what `poll`, `epoll` and tokio's `AsyncFd` want from a
//! level-triggered "it happened" descriptor.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet};

use super::signal::Signal;

/// Set by the handler; read by [`requested`].
static REQUESTED: AtomicBool = AtomicBool::new(false);
/// The pipe's write end, for the handler (-1 before [`install`]).
static WRITE_FD: AtomicI32 = AtomicI32::new(-1);
/// `(read end, write end)`, created once per process.
static PIPE: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();
/// Whether the handler is installed.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The signals that request a drain: what the master sends (TERM), and what Ctrl-C sends
/// to a whole process group (INT).
const SIGNALS: [Signal; 2] = [Signal::Term, Signal::Int];

/// Whether a shutdown was requested. An atomic load.
pub(crate) fn requested() -> bool {
    REQUESTED.load(Ordering::Acquire)
}

/// Creates the notice pipe (once per process). A worker does this before `serve`, so that
/// asking for the notice later cannot fail.
pub(crate) fn prepare() -> io::Result<()> {
    if PIPE.get().is_none() {
        let flags = rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK;
        let (read, write) = rustix::pipe::pipe_with(flags)?;
        // Two threads racing here: the loser's pipe is dropped.
        let (_, write) = PIPE.get_or_init(|| (read, write));
        WRITE_FD.store(write.as_raw_fd(), Ordering::Release);
    }
    Ok(())
}

/// Installs the handler (the first call in a process) and returns the notice descriptor.
///
/// # Panics
///
/// If [`prepare`] never ran and the pipe cannot be created now (no descriptor left).
pub(crate) fn install() -> BorrowedFd<'static> {
    if let Err(e) = prepare() {
        panic!("prefork: cannot create the shutdown-notice pipe: {e}");
    }
    let (read, _) = PIPE.get().expect("prepared just above");
    if !INSTALLED.swap(true, Ordering::AcqRel) {
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for signal in SIGNALS {
            // SAFETY: `on_signal` makes only async-signal-safe calls (atomic operations and
            // `write(2)`) and preserves `errno`; replacing the default disposition of
            // TERM/INT is what asking for the notice means. sigaction cannot fail for these
            // valid, catchable signals.
            let _ = unsafe { nix::sys::signal::sigaction(signal.nix(), &action) };
        }
    }
    borrow(read)
}

fn borrow(fd: &'static OwnedFd) -> BorrowedFd<'static> {
    use std::os::fd::AsFd;
    fd.as_fd()
}

extern "C" fn on_signal(_: libc::c_int) {
    REQUESTED.store(true, Ordering::Release);
    let fd = WRITE_FD.load(Ordering::Acquire);
    if fd < 0 {
        return;
    }
    // SAFETY: `__errno_location` returns this thread's errno slot, always valid.
    let errno = unsafe { *libc::__errno_location() };
    let byte = 1u8;
    // SAFETY: one byte from a local to a descriptor that lives for the rest of the process
    // (it is in a static); a full pipe (already notified) just makes the write fail.
    unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Gives `SIGUSR1` and `SIGUSR2` a handler that does nothing, where they have their default
/// action (which terminates the process). A handler, unlike `SIG_IGN`, is reset by `exec`,
/// so programs the worker starts get the default back. A handler the program installed
/// before the fork, or installs later, takes precedence.
pub(crate) fn tame_forwarded_signals() {
    let noop = SigAction::new(
        SigHandler::Handler(do_nothing),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::Usr1, Signal::Usr2] {
        // SAFETY: `do_nothing` does nothing, which is async-signal-safe; the previous action
        // is put back at once unless it was the default.
        let previous = unsafe { nix::sys::signal::sigaction(signal.nix(), &noop) };
        if let Ok(previous) = previous {
            if previous.handler() != SigHandler::SigDfl {
                // SAFETY: restores exactly what was installed before.
                let _ = unsafe { nix::sys::signal::sigaction(signal.nix(), &previous) };
            }
        }
    }
}

extern "C" fn do_nothing(_: libc::c_int) {}
