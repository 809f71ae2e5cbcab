//! The supervisor's vocabulary: its settings, the actions it asks for, and how it judges an
//! exit. What the driver and the supervisor say to each other.

use std::time::Duration;

use super::WorkerExit;
use super::command::{Answer, Client};
use crate::exit::CountedExit;
use crate::sys::signal::Signal;

/// The supervisor's settings, validated by the builder.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) recover_threshold: usize,
    pub(crate) recover_window: Duration,
    pub(crate) recover_interval: Duration,
    pub(crate) shutdown_grace: Duration,
    /// How long a new master started by USR2 gets to report that it serves.
    pub(crate) upgrade_timeout: Duration,
    /// How long an old master waits, its workers gone, after it handed over to a new master
    /// (zero: it exits once they are gone).
    pub(crate) upgrade_probation: Duration,
}

/// Why a run failed, as far as the supervisor knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Too many boot failures within the window: how many, and the latest of them.
    OverRecovery {
        count: usize,
        latest: Vec<CountedExit>,
    },
    /// A worker reported a fatal start-up failure.
    WorkerFatal { slot: usize, pid: u32, code: i32 },
    /// The driver reported a failure of its own (a hook, a system call); it keeps the details.
    External,
    /// These children were sent KILL and were still not reaped [`KILL_MARGIN`] later (their
    /// signals refused, or stuck in the kernel): the run ends without them, and they end with
    /// the master (`PR_SET_PDEATHSIG`).
    ///
    /// [`KILL_MARGIN`]: super::state::KILL_MARGIN
    Unreaped { pids: Vec<u32> },
}

/// Why the supervisor sends a signal: the driver logs accordingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// The graceful stop of the whole run.
    Stop,
    /// The worker is retired: replaced by a rolling restart, or its slot closed (TTOU).
    Retire,
    /// A signal the master received, forwarded.
    Forward,
    /// The worker did not exit within the grace period.
    GraceExpired,
    /// A forced stop: a second TERM, or a failure.
    Kill,
    /// The worker is stuck (its heartbeat stopped): it is killed and replaced.
    Stuck,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub(crate) enum Action {
    /// Start a worker in `slot`. `recovers` is the pid it replaces after an unexpected exit.
    Spawn { slot: usize, recovers: Option<u32> },
    /// Send `signal` to the worker `pid`.
    Signal { pid: u32, signal: Signal, why: Why },
    /// Every initial worker is ready: the `on_master_ready` moment (systemd `READY=1`).
    Ready { pids: Vec<u32> },
    /// A rolling restart began (systemd `RELOADING=1`).
    Reloading,
    /// A rolling restart finished: every slot has a new, ready worker (`READY=1`).
    Reloaded,
    /// A graceful stop began (systemd `STOPPING=1`).
    Stopping,
    /// The number of slots in service changed to `active` (slots `0..active`, TTIN/TTOU):
    /// new connections go to those slots only.
    Steer { active: usize },
    /// `slot` is out of service and its last worker is gone: what the driver holds for it
    /// may go.
    Closed { slot: usize },
    /// USR2: start the new master of a binary upgrade, then report the result at once
    /// ([`Supervisor::on_upgrade_started`] or [`Supervisor::on_upgrade_failed`]).
    StartUpgrade,
    /// USR2 was not acted on.
    UpgradeIgnored { why: Ignored },
    /// Send `signal` to the new master `pid`.
    SignalNewMaster { pid: u32, signal: Signal },
    /// The new master `pid` serves: the old workers drain (they are sent TERM next), and
    /// the run ends when they are gone, with no `Stopping` (the service goes on in `pid`).
    HandedOver { pid: u32 },
    /// The upgrade failed and the running workers keep serving; a new master that missed
    /// its deadline is sent KILL next.
    RolledBack { pid: Option<u32>, why: Rollback },
    /// The new master `pid`, stopped with the run or killed after a rollback, was reaped.
    NewMasterExited { pid: u32, exit: WorkerExit },
    /// The stop gave up on these children: sent KILL, not reaped within the margin. The
    /// driver stops watching them (without waiting) and the run ends.
    Unreaped { pids: Vec<u32> },
    /// The old workers are gone after a handover: this master waits until `until` for a
    /// rollback, its sockets open and the new master `pid` still watched.
    Probation { pid: u32, until: Duration },
    /// The probation ended without a rollback (its time ran out, a stop, or the new master
    /// exited): the driver stops watching the new master `pid` (it serves on, or is gone) and
    /// the run ends.
    ProbationEnded { pid: u32 },
    /// A rollback's workers all serve (`pids`): the driver tells the new master `pid` that the
    /// service is handed back (it stops without touching the shared sockets), and takes back
    /// the control socket's path and the PID file. The new master is watched until it exits.
    HandBack { pid: u32, pids: Vec<u32> },
    /// On a new master on probation: ask the old master `pid` to roll back (HUP).
    AskRollback { pid: u32 },
    /// On a new master on probation: the old master `pid` took the service back. The driver
    /// leaves the shared sockets, the control socket's path and the PID file as they are; the
    /// workers drain (they are sent TERM next) and the run ends without `Stopping`.
    HandedBack { pid: u32 },
    /// Answer the operator's command from `client` (see [`Supervisor::on_command`]).
    Answer { client: Client, answer: Answer },
}

/// Why a USR2 was not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ignored {
    /// The run is stopping.
    Stopping,
    /// An upgrade is under way (to this new master, once it started).
    UnderWay { pid: Option<u32> },
    /// This master is a new master whose old master `pid` is on probation.
    Probation { pid: u32 },
}

/// Why an upgrade was rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rollback {
    /// The new program could not be started (the driver logs the system's error).
    ExecFailed,
    /// The new master exited before it was ready.
    Exited(WorkerExit),
    /// The new master was not ready within this timeout.
    NotReady(Duration),
}

/// How the exit of a worker is judged, returned by [`Supervisor::on_exit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The master stopped it: the graceful (or forced) stop of the run.
    Requested,
    /// It was replaced by a rolling restart (HUP).
    Replaced,
    /// Its slot was taken out of service (TTOU).
    Retired,
    /// It was recycled ([`Supervisor::recycle`]): replaced like a rolling restart does.
    Recycled,
    /// It was killed as stuck ([`Supervisor::kill_stuck`]); replaced at once, not counted.
    Stuck,
    /// It died of a signal the master forwarded to it; replaced, not counted.
    Forwarded,
    /// It served, then died from outside; replaced, not counted.
    Crashed,
    /// It exited before it was ready, or by itself just after: counted.
    BootFailure,
    /// It exited with [`crate::EXIT_FATAL`]: the run stops.
    Fatal,
}

/// A reaped worker: its slot and how its exit is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exited {
    pub(crate) slot: usize,
    pub(crate) cause: Cause,
}
