//! The ground floor: how a worker ended, and the exit codes every floor above shares (the
//! worker that exits with them, the supervisor that judges them, the errors that report
//! them). It imports nothing of the crate but the signal names.

use crate::sys::signal as sys_signal;

/// Exit code by which a worker reports a fatal start-up failure (bad configuration, a port it
/// cannot use): the master does not respawn it, stops every worker and returns
/// [`crate::Error::WorkerFatal`]. The same convention as gunicorn's exit code 3 for a worker
/// that failed to boot. See [`crate::Worker::exit_fatal`].
pub const EXIT_FATAL: i32 = 3;

/// Exit code of a worker whose `serve` panicked (the code Rust gives a panicking `main`).
pub const EXIT_PANIC: i32 = 101;

/// A signal, as one ended a worker: its number on this platform, shown by its name.
///
/// Signal numbers differ between architectures (MIPS and SPARC number `SIGUSR1` and others
/// differently), so the constants come from the platform's own headers and a number is
/// compared as such, never written by hand. `Display` and `Debug` show the name
/// (`SIGTERM`), or `signal N` for a number without one (a real-time signal).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(i32);

impl Signal {
    /// `SIGKILL`: the end of a grace period, the OOM killer, an operator's `kill -9`.
    pub const KILL: Signal = Signal(libc::SIGKILL);
    /// `SIGTERM`: a stop or drain the worker did not catch.
    pub const TERM: Signal = Signal(libc::SIGTERM);
    /// `SIGINT`: Ctrl-C reaching the whole process group.
    pub const INT: Signal = Signal(libc::SIGINT);
    /// `SIGHUP`.
    pub const HUP: Signal = Signal(libc::SIGHUP);
    /// `SIGUSR1`: forwarded by the master to every worker.
    pub const USR1: Signal = Signal(libc::SIGUSR1);
    /// `SIGUSR2`.
    pub const USR2: Signal = Signal(libc::SIGUSR2);
    /// `SIGSEGV`: a fault of the worker's own code.
    pub const SEGV: Signal = Signal(libc::SIGSEGV);
    /// `SIGABRT`: `abort`, a failed assertion in C code.
    pub const ABRT: Signal = Signal(libc::SIGABRT);

    /// The signal numbered `raw` on this platform (any number the kernel reports).
    pub const fn from_raw(raw: i32) -> Signal {
        Signal(raw)
    }

    /// Its number on this platform.
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// Its name (`SIGTERM`), if it has one.
    pub fn name(self) -> Option<&'static str> {
        nix::sys::signal::Signal::try_from(self.0)
            .ok()
            .map(|s| s.as_str())
    }

    /// Whether a process killed by it brought it on itself: a fault of its own code or a
    /// resource limit it ran into, as opposed to a signal someone sent it.
    pub(crate) fn is_fault(self) -> bool {
        sys_signal::is_fault(self.0)
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "signal {}", self.0),
        }
    }
}

impl std::fmt::Debug for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerExit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(Signal),
}

impl WorkerExit {
    /// Whether the worker ended by its own doing: an exit code, or a fault signal.
    pub(crate) fn self_inflicted(self) -> bool {
        match self {
            WorkerExit::Code(_) => true,
            WorkerExit::Signal(s) => s.is_fault(),
        }
    }
}

impl std::fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            WorkerExit::Code(c) => write!(f, "exit code {c}"),
            WorkerExit::Signal(s) => match s.name() {
                Some(name) => write!(f, "signal {name}"),
                None => write!(f, "{s}"),
            },
        }
    }
}

/// A worker exit counted by the crash-loop guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CountedExit {
    /// The worker's slot.
    pub slot: usize,
    /// Its pid.
    pub pid: u32,
    /// How it ended.
    pub exit: WorkerExit,
    /// Whether it had reported ready (it was inside `serve`).
    pub was_ready: bool,
}

impl std::fmt::Display for CountedExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = if self.was_ready {
            "just after it was ready"
        } else {
            "before it was ready"
        };
        write!(
            f,
            "worker {} (pid {}): {} {when}",
            self.slot, self.pid, self.exit
        )
    }
}
