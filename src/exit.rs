//! The ground floor: how a worker ended, and the exit codes every floor above shares (the
//! worker that exits with them, the supervisor that judges them, the errors that report
//! them). It imports nothing of the crate but the signal names.

use crate::sys::signal;

/// Exit code by which a worker reports a fatal start-up failure (bad configuration, a port it
/// cannot use): the master does not respawn it, stops every worker and returns
/// [`crate::Error::WorkerFatal`]. The same convention as gunicorn's exit code 3 for a worker
/// that failed to boot. See [`crate::Worker::exit_fatal`].
pub const EXIT_FATAL: i32 = 3;

/// Exit code of a worker whose `serve` panicked (the code Rust gives a panicking `main`).
pub const EXIT_PANIC: i32 = 101;

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerExit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl WorkerExit {
    /// Whether the worker ended by its own doing: an exit code, or a fault signal.
    pub(crate) fn self_inflicted(self) -> bool {
        match self {
            WorkerExit::Code(_) => true,
            WorkerExit::Signal(s) => signal::is_fault(s),
        }
    }
}

impl std::fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            WorkerExit::Code(c) => write!(f, "exit code {c}"),
            WorkerExit::Signal(s) => write!(f, "signal {}", signal::name_of(s)),
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
