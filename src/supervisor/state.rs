//! The supervisor's state: its slots, retiring workers, restart queue and phase, and the
//! constants of its policies. The machine's steps are in the sibling files: `events.rs` (the
//! calling protocol's events), `restart.rs` (rolling restarts, recycling, retirements),
//! `stop.rs` (the stop), `upgrade.rs` (the binary upgrade's sub-machine).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::action::{Action, Cause, Config, Failure};
use super::command::{Client, Waiting};
use super::guard::Guard;
use super::upgrade::NewMaster;
use crate::sys::signal::Signal;

/// A worker that exits sooner than this after its start counts as crashing fast (its slot's
/// respawn delay doubles), and one that exits by itself sooner than this after it reported
/// ready counts as a boot failure.
pub(crate) const FAST_CRASH: Duration = Duration::from_secs(1);

/// The most a respawn delay grows to, as a multiple of its base.
pub(crate) const MAX_BACKOFF_FACTOR: u32 = 32;

/// A delay before retrying a failed `fork`, used when `recover_interval` is shorter.
pub(crate) const SPAWN_RETRY_DELAY: Duration = Duration::from_millis(100);

/// How many counted exits a [`Failure::OverRecovery`] reports in detail (the latest ones).
pub(crate) const REPORTED_EXITS: usize = 16;

/// How long after its KILL a stop waits for the children still alive before it gives up on
/// them, so that a stop always ends: within `shutdown_grace` plus this.
pub(crate) const KILL_MARGIN: Duration = Duration::from_secs(5);

/// The signals the master forwarded to one worker, as a bit set over [`Signal::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Forwarded(pub(super) u16);

impl Forwarded {
    pub(super) fn bit(signal: Signal) -> u16 {
        let i = Signal::ALL.iter().position(|&s| s == signal).unwrap_or(0);
        1 << i
    }

    pub(super) fn add(&mut self, signal: Signal) {
        self.0 |= Forwarded::bit(signal);
    }

    pub(super) fn has(self, raw: i32) -> bool {
        Signal::from_raw(raw).is_some_and(|s| self.0 & Forwarded::bit(s) != 0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Slot {
    /// A spawn action is queued or being performed.
    Spawning { recovers: Option<u32> },
    Running {
        pid: u32,
        started: Duration,
        /// When it reported that it is inside `serve`.
        ready: Option<Duration>,
        forwarded: Forwarded,
        /// It was killed as stuck; its exit is [`Cause::Stuck`].
        stuck: bool,
    },
    /// Waiting for its respawn time.
    Waiting { at: Duration, recovers: Option<u32> },
    /// Taken out of service (TTOU, or the run is stopping).
    Closed,
}

/// A worker asked to stop (rolling restart, recycling, TTOU) while the run goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Retiring {
    pub(super) slot: usize,
    /// When it will be killed; `None` while it has not been told yet (its replacement is
    /// not ready) or after the KILL was sent.
    pub(super) kill_at: Option<Duration>,
    /// Whether it was told to drain (or was killed as stuck before it was retired).
    pub(super) told: bool,
    /// How its exit will be judged: [`Cause::Replaced`], [`Cause::Retired`],
    /// [`Cause::Recycled`], or [`Cause::Stuck`] for a stuck worker retired before its
    /// death was reaped.
    pub(super) cause: Cause,
}

/// One slot to replace in a rolling restart (HUP) or a recycling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Restart {
    pub(super) slot: usize,
    /// Replace only this worker (a recycling); `None` replaces whichever holds the slot.
    pub(super) pid: Option<u32>,
    /// [`Cause::Replaced`] or [`Cause::Recycled`].
    pub(super) cause: Cause,
}

/// How a stop begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// TERM to every worker (and `Stopping`), KILL after the grace period.
    Graceful,
    /// KILL to every worker.
    Kill,
    /// A binary upgrade handed over: TERM to every worker, KILL after the grace period,
    /// without `Stopping` (the service goes on in the new master).
    HandOver,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Phase {
    /// Initial workers are being spawned and are not all ready yet.
    Starting,
    Running,
    Stopping {
        kill_at: Option<Duration>,
        /// Once everything was sent KILL: when the stop gives up on what is still alive.
        give_up_at: Option<Duration>,
        result: Result<(), Failure>,
    },
    /// After a handover with an upgrade probation: every old worker is gone, and this master
    /// waits until `until` for a rollback (HUP, `rollback`), then ends.
    Probation {
        until: Duration,
    },
    Done(Result<(), Failure>),
}

/// The supervisor state machine. See the module docs for its calling protocol and policies.
#[derive(Debug)]
pub(crate) struct Supervisor {
    pub(super) cfg: Config,
    pub(super) slots: Vec<Slot>,
    /// Fast-crash streak per slot, for the respawn backoff.
    pub(super) streak: Vec<u32>,
    pub(super) retiring: BTreeMap<u32, Retiring>,
    /// The crash-loop guard: its storage is fixed when it is built.
    pub(super) guard: Guard,
    /// Slots still to replace: the current rolling restart, then queued recyclings.
    pub(super) restart_queue: VecDeque<Restart>,
    /// The slot being restarted and the pid it replaces.
    pub(super) restarting: Option<(usize, u32)>,
    /// A HUP arrived during a rolling restart: one more follows.
    pub(super) hup_pending: bool,
    /// A rolling restart began (Reloading) and its Reloaded is still due.
    pub(super) reloading: bool,
    pub(super) phase: Phase,
    /// The binary upgrade.
    pub(super) new_master: NewMaster,
    /// Rolling restarts begun so far (a `reload` waits for the end of one of them).
    pub(super) restarts_begun: u64,
    /// The operator's commands waiting for their outcome.
    pub(super) waiting: Vec<(Client, Waiting)>,
    /// The new master this run handed over to (until a rollback takes the service back).
    pub(super) handed_to: Option<u32>,
    /// The slots in service when the run handed over: a rollback starts that many workers.
    pub(super) handover_slots: usize,
    /// A rollback was asked while the old workers still drained: it begins once they are gone.
    pub(super) rollback_asked: bool,
    /// A stop (TERM, `stop`) came after the handover: no probation, or its end.
    pub(super) probation_off: bool,
    /// A rollback under way: its workers start, then the new master `pid` is handed back.
    pub(super) rolling_back: Option<u32>,
    /// On a new master: its old master, while that one is on probation.
    pub(super) old_master: Option<u32>,
    pub(super) actions: VecDeque<Action>,
}

impl Slot {
    pub(super) fn pid(&self) -> Option<u32> {
        match self {
            Slot::Running { pid, .. } => Some(*pid),
            _ => None,
        }
    }

    pub(super) fn is_ready_or_closed(&self) -> bool {
        matches!(self, Slot::Running { ready: Some(_), .. } | Slot::Closed)
    }
}
