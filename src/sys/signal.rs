//! Signals: the typed signals the crate sends or reacts to, numbered by the platform's own
//! definitions (MIPS and SPARC number `USR1`, `TTIN` and others differently from x86 and
//! ARM, so no number is written by hand anywhere else); the signal mask and the signalfd the
//! master reads them from; dispositions; and the handlers that forward them through a pipe
//! in exec mode.
//!
//! Through nix (`sigprocmask`, `signalfd`, `sigaction`: rustix has no signalfd and
//! offers the other two only behind its unstable `runtime` feature), with libc for querying
//! a disposition (nix's `sigaction` always installs one) and for the forwarding handler's
//! `write(2)` on a bare descriptor number.

#![allow(unsafe_code)]

use std::io;
use std::mem::offset_of;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigmaskHow};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// A signal the master handles, forwards or sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Signal {
    Hup,
    Int,
    Quit,
    Kill,
    Usr1,
    Usr2,
    Term,
    Chld,
    Ttin,
    Ttou,
}

impl Signal {
    /// Every variant, for tables and tests.
    pub(crate) const ALL: [Signal; 10] = [
        Signal::Hup,
        Signal::Int,
        Signal::Quit,
        Signal::Kill,
        Signal::Usr1,
        Signal::Usr2,
        Signal::Term,
        Signal::Chld,
        Signal::Ttin,
        Signal::Ttou,
    ];

    /// The platform's number for this signal.
    pub(crate) fn raw(self) -> i32 {
        self.nix() as i32
    }

    /// The signal with this number, if it is one of ours.
    pub(crate) fn from_raw(raw: i32) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.raw() == raw)
    }

    /// The signal as nix spells it (signal masks, dispositions, signalfd).
    pub(crate) fn nix(self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal as N;
        match self {
            Signal::Hup => N::SIGHUP,
            Signal::Int => N::SIGINT,
            Signal::Quit => N::SIGQUIT,
            Signal::Kill => N::SIGKILL,
            Signal::Usr1 => N::SIGUSR1,
            Signal::Usr2 => N::SIGUSR2,
            Signal::Term => N::SIGTERM,
            Signal::Chld => N::SIGCHLD,
            Signal::Ttin => N::SIGTTIN,
            Signal::Ttou => N::SIGTTOU,
        }
    }

    /// The signal as rustix spells it (kill, pidfd_send_signal, the parent-death signal).
    pub(crate) fn rustix(self) -> rustix::process::Signal {
        use rustix::process::Signal as R;
        match self {
            Signal::Hup => R::HUP,
            Signal::Int => R::INT,
            Signal::Quit => R::QUIT,
            Signal::Kill => R::KILL,
            Signal::Usr1 => R::USR1,
            Signal::Usr2 => R::USR2,
            Signal::Term => R::TERM,
            Signal::Chld => R::CHILD,
            Signal::Ttin => R::TTIN,
            Signal::Ttou => R::TTOU,
        }
    }

    /// `SIGTERM`, …
    pub(crate) fn name(self) -> &'static str {
        self.nix().as_str()
    }
}

impl From<Signal> for nix::sys::signal::Signal {
    fn from(signal: Signal) -> Self {
        signal.nix()
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of any signal number (`SIGSEGV`), or `signal N` for one the platform does not
/// name.
pub(crate) fn name_of(raw: i32) -> String {
    match nix::sys::signal::Signal::try_from(raw) {
        Ok(s) => s.as_str().to_owned(),
        Err(_) => format!("signal {raw}"),
    }
}

/// Whether a process killed by signal `raw` brought it on itself: a fault of its own code
/// (`SIGSEGV`, `SIGBUS`, `SIGILL`, `SIGFPE`, `SIGABRT` from a failed assertion or abort,
/// `SIGSYS`, `SIGTRAP`) or a resource limit it ran into (`SIGXCPU`, `SIGXFSZ`), as opposed to
/// a signal someone sent it (`SIGKILL` from the OOM killer or an operator, `SIGTERM`, …).
pub(crate) fn is_fault(raw: i32) -> bool {
    [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGABRT,
        libc::SIGSYS,
        libc::SIGTRAP,
        libc::SIGXCPU,
        libc::SIGXFSZ,
    ]
    .contains(&raw)
}

/// A signal set.
#[derive(Clone, Copy)]
pub(crate) struct SigSet(nix::sys::signal::SigSet);

impl SigSet {
    /// The set as libc spells it, for the async-signal-safe code between `fork` and `execve`.
    pub(crate) fn as_raw(&self) -> &libc::sigset_t {
        self.0.as_ref()
    }

    /// `sigemptyset(3)` and `sigaddset(3)`: the set of `signals`.
    pub(crate) fn of(signals: &[Signal]) -> SigSet {
        let mut set = nix::sys::signal::SigSet::empty();
        for signal in signals {
            set.add(signal.nix());
        }
        SigSet(set)
    }
}

/// What [`sigmask`] does with its set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MaskHow {
    /// `SIG_BLOCK`: blocks the set's signals as well.
    Block,
    /// `SIG_SETMASK`: the set becomes the mask.
    Set,
}

/// `sigprocmask(2)` (`rt_sigprocmask`): applies `how` to the calling thread's signal mask and
/// returns the previous mask. Async-signal-safe, no allocation (the pre-exec child calls
/// it).
///
/// On Linux, glibc's `sigprocmask` changes the calling thread's mask alone, exactly as
/// `pthread_sigmask` does, and reports a failure as `-1` and `errno`. nix's
/// `pthread_sigmask` takes `pthread_sigmask`'s return value (the error number itself) for
/// success, so a mask a sandbox refused to change would go unnoticed.
pub(crate) fn sigmask(how: MaskHow, set: &SigSet) -> io::Result<SigSet> {
    let how = match how {
        MaskHow::Block => SigmaskHow::SIG_BLOCK,
        MaskHow::Set => SigmaskHow::SIG_SETMASK,
    };
    let mut old = nix::sys::signal::SigSet::empty();
    nix::sys::signal::sigprocmask(how, Some(&set.0), Some(&mut old))?;
    Ok(SigSet(old))
}

/// `pthread_sigmask(SIG_SETMASK)` without reading the mask it replaces: a forked worker
/// restoring the caller's mask right after the fork, which has no use for the master's.
///
/// Unlike [`sigmask`] it cannot report a refusal (see there): it runs only where the master's
/// own `sigmask`, under the same system call filter, succeeded before the fork. It is the
/// call the worker's way to `serve` already makes (glibc's `sigprocmask` is a wrapper of
/// it), so a fresh worker maps no page of code for it that it would not map anyway: each
/// such page is a fault in every new worker.
#[inline]
pub(crate) fn set_sigmask(set: &SigSet) {
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&set.0), None);
}

/// `signalfd(2)` for `mask`, non-blocking and close-on-exec.
pub(crate) fn signalfd(mask: &SigSet) -> io::Result<OwnedFd> {
    let flags = SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC;
    Ok(SignalFd::with_flags(&mask.0, flags)?.into())
}

/// `read(2)` of every pending signal from a non-blocking signalfd (retried on `EINTR`, until
/// `EAGAIN`).
pub(crate) fn read_signals(fd: BorrowedFd<'_>, out: &mut Vec<i32>) -> io::Result<()> {
    const SIZE: usize = size_of::<libc::signalfd_siginfo>();
    const SIGNO: usize = offset_of!(libc::signalfd_siginfo, ssi_signo);
    let mut buf = [0u8; SIZE * 8];
    loop {
        let n = match rustix::io::read(fd, &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        // The kernel writes whole records; `ssi_signo` is a u32 in native order.
        for info in buf[..n].chunks_exact(SIZE) {
            let signo = &info[SIGNO..SIGNO + 4];
            out.push(u32::from_ne_bytes([signo[0], signo[1], signo[2], signo[3]]) as i32);
        }
        if n == 0 || n % SIZE != 0 {
            return Ok(());
        }
    }
}

/// A signal disposition replaced by [`set_default_disposition`] or [`forward_signals`], to
/// be put back later.
pub(crate) struct SavedAction {
    signal: nix::sys::signal::Signal,
    action: SigAction,
}

impl SavedAction {
    /// Whether the replaced disposition was the default one.
    pub(crate) fn was_default(&self) -> bool {
        self.action.handler() == SigHandler::SigDfl
    }
}

/// A worker's own signal handler: one of the shutdown notice's (`sys::notice`), a closed
/// list, each with whether interrupted calls restart. Each of the three makes only
/// async-signal-safe calls (see signal-safety(7)) and saves and restores `errno` where it
/// makes a call that may set it (see each function), which is what makes it sound to
/// install ([`set_action`]); a new handler is a new variant, checked the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WorkerHandler {
    /// The notice (TERM, INT), `notice::on_signal`: atomics, `clock_gettime`, `write` to the
    /// notice pipe (errno kept), and through [`default_action_now`] `sigaction` and `raise`,
    /// or [`set_action`] and `setitimer` for the decision window. With `SA_RESTART`.
    Notice,
    /// The end of the decision window (`SIGALRM`), `notice::on_window_end`: an atomic load,
    /// then [`default_action_now`]. Without `SA_RESTART`.
    WindowEnd,
    /// The handler that does nothing (USR1, USR2), `notice::do_nothing`. With `SA_RESTART`.
    Nothing,
}

impl WorkerHandler {
    /// The function and whether interrupted calls restart.
    fn parts(self) -> (extern "C" fn(libc::c_int), bool) {
        match self {
            WorkerHandler::Notice => (super::notice::on_signal, true),
            WorkerHandler::WindowEnd => (super::notice::on_window_end, false),
            WorkerHandler::Nothing => (super::notice::do_nothing, true),
        }
    }
}

/// What [`set_action`] installs: nothing else can be.
enum Action<'a> {
    /// `SIG_DFL`.
    Default(nix::sys::signal::Signal),
    /// [`forward_signal`].
    Forward(nix::sys::signal::Signal),
    /// One of the worker's handlers.
    Worker(nix::sys::signal::Signal, WorkerHandler),
    /// A disposition saved earlier, put back.
    Restore(&'a SavedAction),
}

/// `sigaction(2)`: installs `action` and returns the disposition it replaced.
fn set_action(action: Action<'_>) -> io::Result<SavedAction> {
    let (signal, new) = match action {
        Action::Default(signal) => (
            signal,
            SigAction::new(
                SigHandler::SigDfl,
                SaFlags::empty(),
                nix::sys::signal::SigSet::empty(),
            ),
        ),
        Action::Forward(signal) => (
            signal,
            SigAction::new(
                SigHandler::Handler(forward_signal),
                SaFlags::SA_RESTART,
                nix::sys::signal::SigSet::empty(),
            ),
        ),
        Action::Worker(signal, worker) => {
            let (handler, restart) = worker.parts();
            let flags = if restart {
                SaFlags::SA_RESTART
            } else {
                SaFlags::empty()
            };
            (
                signal,
                SigAction::new(
                    SigHandler::Handler(handler),
                    flags,
                    nix::sys::signal::SigSet::empty(),
                ),
            )
        }
        Action::Restore(saved) => (saved.signal, saved.action),
    };
    // SAFETY: `Action` allows four kinds of dispositions, each sound to install: the
    // default one; `forward_signal`, which makes only async-signal-safe calls (an atomic
    // load, write(2) and errno's save and restore) and preserves errno; a worker's handler,
    // one of the worker's handlers, a closed list (`WorkerHandler`) whose every function is
    // async-signal-safe and errno-preserving (see each variant); or one the kernel returned
    // for this signal earlier, put back exactly as it was. sigaction itself is
    // async-signal-safe, so this may run in a handler.
    let old = unsafe { nix::sys::signal::sigaction(signal, &new) }?;
    Ok(SavedAction {
        signal,
        action: old,
    })
}

/// `sigaction(2)` query of `SIGCHLD`: whether the kernel reaps this process's exited children
/// by itself (`SIG_IGN`, or an action carrying `SA_NOCLDWAIT`).
///
/// Through libc: nix's `sigaction` always installs a new action, and swapping one in to
/// read the old would briefly change how children are reaped.
pub(crate) fn children_auto_reaped() -> io::Result<bool> {
    // Any valid sigaction: the call overwrites it.
    let mut old = libc::sigaction::from(SigAction::new(
        SigHandler::SigDfl,
        SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    ));
    // SAFETY: a null new action only queries; `old` is a sigaction owned by this frame,
    // writable for the kernel to fill in.
    if unsafe { libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(old.sa_sigaction == libc::SIG_IGN || old.sa_flags & libc::SA_NOCLDWAIT != 0)
}

/// `sigaction(2)`: sets `signal` to `SIG_DFL` and returns the previous disposition.
pub(crate) fn set_default_disposition(signal: Signal) -> io::Result<SavedAction> {
    set_action(Action::Default(signal.nix()))
}

/// The timer signal of the worker's decision window (`sys::notice`): no signal the crate
/// handles, so it is not a [`Signal`].
pub(super) const ALARM: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGALRM;

/// `sigaction(2)`: sets [`ALARM`] back to `SIG_DFL`.
pub(super) fn default_alarm_disposition() -> io::Result<SavedAction> {
    set_action(Action::Default(ALARM))
}

/// `sigaction(2)`: installs one of the worker's handlers for `signal` (one of ours, or
/// [`ALARM`]); returns the previous disposition.
pub(super) fn install_worker_handler(
    signal: impl Into<nix::sys::signal::Signal>,
    handler: WorkerHandler,
) -> io::Result<SavedAction> {
    set_action(Action::Worker(signal.into(), handler))
}

/// Puts back the default disposition of `signal`, the number a handler was called with, and
/// raises it: from a handler, where the signal is blocked until the handler returns, it is
/// then delivered with its default action (for TERM, the end of the process).
/// Async-signal-safe.
pub(super) fn default_action_now(signal: libc::c_int) {
    if let Ok(s) = nix::sys::signal::Signal::try_from(signal) {
        let _ = set_action(Action::Default(s));
        if nix::sys::signal::raise(s).is_err() {
            // glibc's `raise` is `tgkill(getpid(), gettid())`, which fails where a sandbox
            // refuses either: the signal then goes to this process by the pid it learnt
            // (a worker learns it at its start); without one it is not sent, and the
            // master's KILL at the end of the grace period ends the worker.
            if let Some(pid) = super::pid::own_pid_cached() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.get() as i32), s);
            }
        }
    }
}

/// `sigaction(2)`: puts back a disposition saved by [`set_default_disposition`],
/// [`install_worker_handler`] or [`forward_signals`].
pub(crate) fn restore_disposition(saved: &SavedAction) -> io::Result<()> {
    set_action(Action::Restore(saved))?;
    Ok(())
}

/// Write end of the pipe that [`forward_signal`] writes signal numbers to (-1: none).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// `write(2)` of the signal number to the forwarding pipe: the signal handler used while the
/// master shares its process with other threads (the kernel may deliver a process-directed
/// signal to any thread that does not block it), so the master's epoll learns of it. Only
/// async-signal-safe calls; `errno` is preserved.
extern "C" fn forward_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let errno = nix::errno::Errno::last_raw();
    let byte = signal as u8;
    // SAFETY: one byte from a local; the number is the pipe's write end, kept open until
    // stop_forwarding has put the old dispositions back; a full pipe just makes the write
    // fail.
    unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
    nix::errno::Errno::set_raw(errno);
}

/// `sigaction(2)`: installs [`forward_signal`] for `signals`, writing to `pipe_write`;
/// returns the previous dispositions for [`stop_forwarding`]. On failure, puts back what it
/// had installed.
pub(crate) fn forward_signals(
    signals: &[Signal],
    pipe_write: RawFd,
) -> io::Result<Vec<SavedAction>> {
    SIGNAL_PIPE.store(pipe_write, Ordering::Relaxed);
    let mut saved = Vec::new();
    for signal in signals {
        match set_action(Action::Forward(signal.nix())) {
            Ok(old) => saved.push(old),
            Err(e) => {
                stop_forwarding(&saved);
                return Err(e);
            }
        }
    }
    Ok(saved)
}

/// `sigaction(2)`: puts back the dispositions replaced by [`forward_signals`] and stops
/// forwarding.
pub(crate) fn stop_forwarding(saved: &[SavedAction]) {
    for s in saved {
        let _ = restore_disposition(s);
    }
    SIGNAL_PIPE.store(-1, Ordering::Relaxed);
}

/// `read(2)` of the signal numbers [`forward_signal`] wrote, until the pipe is empty.
pub(crate) fn read_forwarded(fd: BorrowedFd<'_>, out: &mut Vec<i32>) -> io::Result<()> {
    let mut buf = [0u8; 64];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(0) | Err(rustix::io::Errno::AGAIN) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            // A pipe left readable would wake the loop again at once, for ever.
            Err(e) => return Err(e.into()),
            Ok(n) => out.extend(buf[..n].iter().map(|&b| i32::from(b))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Signal;

    /// Pins every variant to libc's constant for the target it is compiled for.
    #[test]
    fn numbers_are_the_platforms() {
        let expected = [
            (Signal::Hup, libc::SIGHUP),
            (Signal::Int, libc::SIGINT),
            (Signal::Quit, libc::SIGQUIT),
            (Signal::Kill, libc::SIGKILL),
            (Signal::Usr1, libc::SIGUSR1),
            (Signal::Usr2, libc::SIGUSR2),
            (Signal::Term, libc::SIGTERM),
            (Signal::Chld, libc::SIGCHLD),
            (Signal::Ttin, libc::SIGTTIN),
            (Signal::Ttou, libc::SIGTTOU),
        ];
        assert_eq!(expected.len(), Signal::ALL.len());
        for (signal, raw) in expected {
            assert_eq!(signal.raw(), raw, "{signal}");
            assert_eq!(signal.rustix().as_raw(), raw, "{signal}");
            assert_eq!(Signal::from_raw(raw), Some(signal));
        }
        assert_eq!(Signal::from_raw(libc::SIGSEGV), None);
        assert_eq!(super::name_of(libc::SIGSEGV), "SIGSEGV");
        assert_eq!(Signal::Ttin.name(), "SIGTTIN");
        assert!(super::is_fault(libc::SIGSEGV));
        assert!(!super::is_fault(libc::SIGKILL));
    }

    /// A signal blocked in this thread and raised at it waits on the signalfd.
    #[test]
    fn signalfd_reads_a_blocked_signal() {
        use std::os::fd::AsFd;
        let set = super::SigSet::of(&[Signal::Usr2]);
        let old = super::sigmask(super::MaskHow::Block, &set).unwrap();
        let fd = super::signalfd(&set).unwrap();
        let mut got = Vec::new();
        super::read_signals(fd.as_fd(), &mut got).unwrap();
        assert!(got.is_empty());
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGUSR2).unwrap();
        super::read_signals(fd.as_fd(), &mut got).unwrap();
        super::sigmask(super::MaskHow::Set, &old).unwrap();
        assert_eq!(got, [libc::SIGUSR2]);
        assert!(super::children_auto_reaped().is_ok());
    }

    #[test]
    fn forwarded_numbers_are_read_back() {
        use std::os::fd::AsFd;
        let (read, write) = crate::sys::pipe_nonblocking().unwrap();
        rustix::io::write(&write, &[libc::SIGHUP as u8, libc::SIGTERM as u8]).unwrap();
        let mut got = Vec::new();
        super::read_forwarded(read.as_fd(), &mut got).unwrap();
        assert_eq!(got, [libc::SIGHUP, libc::SIGTERM]);
    }
}
