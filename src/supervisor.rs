//! The supervisor: a pure state machine with no system calls.
//!
//! # Calling protocol
//!
//! Events go in, [`Action`]s come out; time is a [`Duration`] since an epoch the caller
//! chooses, passed to every event. The driver:
//!
//! 1. creates the supervisor ([`Supervisor::new`]), which queues one spawn per slot;
//! 2. performs every queued action ([`Supervisor::next_action`] until `None`), reporting each
//!    spawn's outcome at once ([`Supervisor::on_spawned`] or [`Supervisor::on_spawn_failed`]);
//! 3. sleeps until an event or [`Supervisor::next_deadline`], then feeds what happened: a
//!    worker reported that it is inside `serve` ([`Supervisor::on_ready`]), a worker was
//!    reaped ([`Supervisor::on_exit`]), a signal arrived ([`Supervisor::on_signal`]), a
//!    deadline passed ([`Supervisor::on_timer`]), the driver itself failed
//!    ([`Supervisor::fail`]); after each event it performs the queued actions again;
//! 4. stops when [`Supervisor::outcome`] is `Some` (every worker is reaped).
//!
//! # The lifecycle of a worker
//!
//! spawning -> running (forked) -> ready (inside `serve`) -> retiring (asked to drain) ->
//! exited. A worker is asked to drain (TERM) only when its replacement, if it has one, is
//! ready, and is killed when the grace period ends.
//!
//! # Policies
//!
//! * An exit the master caused is never a crash: a retired or stopped worker, or one that
//!   died of a signal the master forwarded to it (USR1 left at its default action) is
//!   replaced, or not, without being counted.
//! * The crash-loop guard judges boot loops only: a worker that exits before it reported
//!   ready, or by itself (an exit code, or a fault such as `SIGSEGV`) within [`FAST_CRASH`]
//!   of being ready, is counted; more than `recover_threshold` such exits within
//!   `recover_window` stop everything with [`Failure::OverRecovery`]. A worker that served and
//!   was then killed from outside (an OOM kill, an operator's `kill`) is respawned without
//!   being counted. The guard's storage is fixed when it is built: above a threshold of
//!   [`guard::EXACT_UP_TO`] it counts the window in slices (see `guard.rs`).
//! * The delay before a respawn is `recover_interval`; each further exit of the same slot
//!   less than [`FAST_CRASH`] after its start doubles it, up to 32 times. With the default
//!   interval of zero, respawns are immediate, as nginx's: no tight loop can follow, since a
//!   worker that keeps failing by itself is a counted boot failure, and one killed from
//!   outside is respawned at the killer's pace.
//! * A worker that exits with [`crate::EXIT_FATAL`] is not respawned: everything stops
//!   gracefully and the run fails with [`Failure::WorkerFatal`].
//! * TERM/INT: TERM to every worker, KILL after `shutdown_grace`; a second TERM/INT kills at
//!   once. HUP: rolling restart, one slot at a time; a HUP during one queues one more. TTIN
//!   and TTOU: one slot more or less. USR1: forwarded to every worker.
//! * USR2: the binary upgrade ([`upgrade`]): the driver starts the new master
//!   ([`Action::StartUpgrade`], answered with [`Supervisor::on_upgrade_started`] or
//!   [`Supervisor::on_upgrade_failed`]); when it reports ready in time
//!   ([`Supervisor::on_upgrade_ready`]) the old generation drains and the run ends (no
//!   `Stopping`: the service goes on); when it exits first
//!   ([`Supervisor::on_upgrade_exit`]) or misses `upgrade_timeout` it is rolled back (killed)
//!   and the workers keep serving. A stop during an upgrade stops the new master too, and
//!   the outcome waits for it.
//! * Recycling ([`Supervisor::recycle`], for a worker past its lifetime or memory ceiling):
//!   that one slot is replaced as a rolling restart replaces it, through the same queue (the
//!   new worker is ready before the old one drains); never counted.
//! * A stuck worker ([`Supervisor::kill_stuck`], silent past its heartbeat timeout) is
//!   killed and respawned at once; never counted.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

pub(crate) use crate::exit::{CountedExit, EXIT_FATAL, WorkerExit};
use crate::sys::signal::Signal;
use guard::{Guard, Tripped};
use upgrade::NewMaster;

/// A worker that exits sooner than this after its start counts as crashing fast (its slot's
/// respawn delay doubles), and one that exits by itself sooner than this after it reported
/// ready counts as a boot failure.
pub(crate) const FAST_CRASH: Duration = Duration::from_secs(1);

/// The most a respawn delay grows to, as a multiple of its base.
const MAX_BACKOFF_FACTOR: u32 = 32;

/// A delay before retrying a failed `fork`, used when `recover_interval` is shorter.
const SPAWN_RETRY_DELAY: Duration = Duration::from_millis(100);

/// How many counted exits a [`Failure::OverRecovery`] reports in detail (the latest ones).
pub(crate) const REPORTED_EXITS: usize = 16;

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
}

/// Why a USR2 was not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ignored {
    /// The run is stopping.
    Stopping,
    /// An upgrade is under way (to this new master, once it started).
    UnderWay { pid: Option<u32> },
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

/// The signals the master forwarded to one worker, as a bit set over [`Signal::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Forwarded(u16);

impl Forwarded {
    fn bit(signal: Signal) -> u16 {
        let i = Signal::ALL.iter().position(|&s| s == signal).unwrap_or(0);
        1 << i
    }

    fn add(&mut self, signal: Signal) {
        self.0 |= Forwarded::bit(signal);
    }

    fn has(self, raw: i32) -> bool {
        Signal::from_raw(raw).is_some_and(|s| self.0 & Forwarded::bit(s) != 0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
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
struct Retiring {
    slot: usize,
    /// When it will be killed; `None` while it has not been told yet (its replacement is
    /// not ready) or after the KILL was sent.
    kill_at: Option<Duration>,
    /// Whether it was told to drain (or was killed as stuck before it was retired).
    told: bool,
    /// How its exit will be judged: [`Cause::Replaced`], [`Cause::Retired`],
    /// [`Cause::Recycled`], or [`Cause::Stuck`] for a stuck worker retired before its
    /// death was reaped.
    cause: Cause,
}

/// One slot to replace in a rolling restart (HUP) or a recycling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Restart {
    slot: usize,
    /// Replace only this worker (a recycling); `None` replaces whichever holds the slot.
    pid: Option<u32>,
    /// [`Cause::Replaced`] or [`Cause::Recycled`].
    cause: Cause,
}

/// How a stop begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// TERM to every worker (and `Stopping`), KILL after the grace period.
    Graceful,
    /// KILL to every worker.
    Kill,
    /// A binary upgrade handed over: TERM to every worker, KILL after the grace period,
    /// without `Stopping` (the service goes on in the new master).
    HandOver,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Initial workers are being spawned and are not all ready yet.
    Starting,
    Running,
    Stopping {
        kill_at: Option<Duration>,
        result: Result<(), Failure>,
    },
    Done(Result<(), Failure>),
}

/// The supervisor state machine. See the module docs for its calling protocol and policies.
#[derive(Debug)]
pub(crate) struct Supervisor {
    cfg: Config,
    slots: Vec<Slot>,
    /// Fast-crash streak per slot, for the respawn backoff.
    streak: Vec<u32>,
    retiring: BTreeMap<u32, Retiring>,
    /// The crash-loop guard: its storage is fixed when it is built.
    guard: Guard,
    /// Slots still to replace: the current rolling restart, then queued recyclings.
    restart_queue: VecDeque<Restart>,
    /// The slot being restarted and the pid it replaces.
    restarting: Option<(usize, u32)>,
    /// A HUP arrived during a rolling restart: one more follows.
    hup_pending: bool,
    /// A rolling restart began (Reloading) and its Reloaded is still due.
    reloading: bool,
    phase: Phase,
    /// The binary upgrade.
    new_master: NewMaster,
    actions: VecDeque<Action>,
}

impl Supervisor {
    /// A supervisor that starts with every slot queued for spawning.
    pub(crate) fn new(cfg: Config) -> Supervisor {
        let n = cfg.workers;
        let mut sup = Supervisor {
            slots: vec![Slot::Spawning { recovers: None }; n],
            streak: vec![0; n],
            retiring: BTreeMap::new(),
            guard: Guard::new(cfg.recover_threshold, cfg.recover_window),
            restart_queue: VecDeque::new(),
            restarting: None,
            hup_pending: false,
            reloading: false,
            phase: Phase::Starting,
            new_master: NewMaster::Idle,
            actions: VecDeque::new(),
            cfg,
        };
        for slot in 0..n {
            sup.actions.push_back(Action::Spawn {
                slot,
                recovers: None,
            });
        }
        sup
    }

    /// The next action to perform, if any.
    pub(crate) fn next_action(&mut self) -> Option<Action> {
        if self.actions.is_empty()
            && self.phase == Phase::Running
            && self.restarting.is_none()
            && std::mem::take(&mut self.hup_pending)
        {
            // A HUP that arrived before every initial worker was ready: its restart begins
            // after the Ready action (and its hook) went through.
            self.begin_restart();
        }
        self.actions.pop_front()
    }

    /// The outcome, once every worker is gone after a stop.
    pub(crate) fn outcome(&self) -> Option<&Result<(), Failure>> {
        match &self.phase {
            Phase::Done(r) => Some(r),
            _ => None,
        }
    }

    /// Whether a stop has begun.
    pub(crate) fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. } | Phase::Done(_))
    }

    /// The worker slot a live pid belongs to.
    pub(crate) fn slot_of(&self, pid: u32) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| matches!(s, Slot::Running { pid: p, .. } if *p == pid))
            .or_else(|| self.retiring.get(&pid).map(|r| r.slot))
    }

    /// Pids of every live worker, retiring ones included.
    pub(crate) fn live_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.slots.iter().filter_map(Slot::pid).collect();
        pids.extend(self.retiring.keys());
        pids
    }

    /// Number of slots ever created (in service or not).
    #[cfg_attr(not(any(test, fuzzing)), allow(dead_code))]
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Number of slots in service (not closed).
    pub(crate) fn active_slots(&self) -> usize {
        self.slots.iter().filter(|s| **s != Slot::Closed).count()
    }

    /// How many of the live workers reported ready, and how many are live.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn ready_count(&self) -> (usize, usize) {
        let running = self.slots.iter().filter(|s| s.pid().is_some());
        let ready = running
            .clone()
            .filter(|s| matches!(s, Slot::Running { ready: Some(_), .. }))
            .count();
        (ready, running.count() + self.retiring.len())
    }

    /// The earliest instant at which [`Supervisor::on_timer`] has something to do.
    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        let waits = self.slots.iter().filter_map(|s| match s {
            Slot::Waiting { at, .. } => Some(*at),
            _ => None,
        });
        let retire = self.retiring.values().filter_map(|r| r.kill_at);
        let stop = match self.phase {
            Phase::Stopping { kill_at, .. } => kill_at,
            _ => None,
        };
        let upgrade = self.new_master.deadline();
        waits.chain(retire).chain(stop).chain(upgrade).min()
    }

    /// The new master of an upgrade ([`Action::StartUpgrade`]) runs as `pid`.
    pub(crate) fn on_upgrade_started(&mut self, pid: u32, now: Duration) {
        let timeout = self.cfg.upgrade_timeout;
        self.new_master.on_started(pid, now, timeout);
    }

    /// The new master of an upgrade ([`Action::StartUpgrade`]) could not be started.
    pub(crate) fn on_upgrade_failed(&mut self, _now: Duration) {
        self.new_master.on_start_failed(&mut self.actions);
    }

    /// The new master reported that it serves: unless it is too late, the old generation
    /// drains and the run ends.
    pub(crate) fn on_upgrade_ready(&mut self, now: Duration) {
        if self.is_stopping() {
            return;
        }
        if let Some(pid) = self.new_master.on_ready() {
            self.actions.push_back(Action::HandedOver { pid });
            self.stop_with(now, Stop::HandOver, Ok(()));
        }
    }

    /// A child `pid` that is no worker was reaped: returns whether it was the new master.
    pub(crate) fn on_upgrade_exit(&mut self, pid: u32, exit: WorkerExit, _now: Duration) -> bool {
        let ours = self.new_master.on_exit(pid, exit, &mut self.actions);
        if ours {
            self.maybe_done();
        }
        ours
    }

    /// How long a new master gets to report that it serves.
    pub(crate) fn upgrade_timeout(&self) -> Duration {
        self.cfg.upgrade_timeout
    }

    /// The new master of an upgrade under way, if it runs.
    #[cfg_attr(not(any(test, fuzzing)), allow(dead_code))]
    pub(crate) fn new_master(&self) -> Option<u32> {
        self.new_master.pid()
    }

    /// The driver started the worker for `slot` as `pid`.
    pub(crate) fn on_spawned(&mut self, slot: usize, pid: u32, now: Duration) {
        let Some(state) = self.slots.get_mut(slot) else {
            return;
        };
        if !matches!(state, Slot::Spawning { .. }) {
            return;
        }
        *state = Slot::Running {
            pid,
            started: now,
            ready: None,
            forwarded: Forwarded::default(),
            stuck: false,
        };
        if self.is_stopping() {
            // Stop began while this spawn was in flight: stop the newcomer too.
            let (signal, why) = match self.phase {
                Phase::Stopping { kill_at: None, .. } => (Signal::Kill, Why::Kill),
                _ => (Signal::Term, Why::Stop),
            };
            self.actions.push_back(Action::Signal { pid, signal, why });
        }
    }

    /// The worker `pid` reported that it is inside `serve`.
    pub(crate) fn on_ready(&mut self, pid: u32, now: Duration) {
        let Some(slot) = self.slots.iter().position(|s| s.pid() == Some(pid)) else {
            return;
        };
        let Slot::Running { ready, .. } = &mut self.slots[slot] else {
            unreachable!("found by pid just above")
        };
        if ready.is_some() {
            return;
        }
        *ready = Some(now);
        if self.is_stopping() {
            return;
        }
        if let Some((s, old)) = self.restarting {
            if s == slot {
                self.tell_retiring(old, now);
                let rolling = self
                    .restart_queue
                    .iter()
                    .any(|r| r.cause == Cause::Replaced);
                if !rolling && std::mem::take(&mut self.reloading) {
                    self.actions.push_back(Action::Reloaded);
                }
            }
        }
        if self.phase == Phase::Starting && self.slots.iter().all(Slot::is_ready_or_closed) {
            self.phase = Phase::Running;
            self.actions.push_back(Action::Ready {
                pids: self.slots.iter().filter_map(Slot::pid).collect(),
            });
            // A HUP that came before this moment restarts once the Ready action is
            // performed (see `next_action`).
        }
    }

    /// The driver could not start a worker for `slot` (fork failed). Before the master is
    /// ready this fails the run; later it counts as a boot failure and is retried.
    pub(crate) fn on_spawn_failed(&mut self, slot: usize, now: Duration) {
        let Some(Slot::Spawning { recovers }) = self.slots.get(slot).cloned() else {
            return;
        };
        self.slots[slot] = Slot::Closed;
        if self.phase == Phase::Starting {
            self.stop(now, true, Err(Failure::External));
            return;
        }
        if self.is_stopping() {
            self.maybe_done();
            return;
        }
        let counted = CountedExit {
            slot,
            pid: 0,
            exit: WorkerExit::Code(-1),
            was_ready: false,
        };
        if self.count_boot_failure(now, counted) {
            return;
        }
        let delay = self.cfg.recover_interval.max(SPAWN_RETRY_DELAY);
        self.slots[slot] = Slot::Waiting {
            at: now + delay,
            recovers,
        };
    }

    /// A worker was reaped. Returns its slot and how the exit is judged, or `None` for a pid
    /// that is not a worker.
    pub(crate) fn on_exit(&mut self, pid: u32, exit: WorkerExit, now: Duration) -> Option<Exited> {
        if let Some(r) = self.retiring.remove(&pid) {
            if self.restarting.map(|(_, old)| old) == Some(pid) {
                self.restarting = None;
                self.advance_restart();
            }
            if self.slots[r.slot] == Slot::Closed && self.slot_unused(r.slot) {
                self.actions.push_back(Action::Closed { slot: r.slot });
            }
            self.maybe_done();
            return Some(Exited {
                slot: r.slot,
                cause: r.cause,
            });
        }
        let slot = self.slots.iter().position(|s| s.pid() == Some(pid))?;
        let Slot::Running {
            started,
            ready,
            forwarded,
            stuck,
            ..
        } = self.slots[slot]
        else {
            unreachable!("found by pid just above")
        };
        self.slots[slot] = Slot::Closed;
        let exited = |cause| Some(Exited { slot, cause });
        if self.is_stopping() {
            self.maybe_done();
            return exited(if stuck {
                Cause::Stuck
            } else {
                Cause::Requested
            });
        }
        if stuck {
            // The master killed it: replaced at once, not counted, its backoff untouched.
            self.slots[slot] = Slot::Waiting {
                at: now,
                recovers: Some(pid),
            };
            self.spawn_due(now);
            return exited(Cause::Stuck);
        }
        if exit == WorkerExit::Code(EXIT_FATAL) {
            let failure = Failure::WorkerFatal {
                slot,
                pid,
                code: EXIT_FATAL,
            };
            self.stop(now, false, Err(failure));
            return exited(Cause::Fatal);
        }
        let cause = match exit {
            WorkerExit::Signal(s) if forwarded.has(s.raw()) => Cause::Forwarded,
            _ => match ready {
                None => Cause::BootFailure,
                Some(t) if now.saturating_sub(t) < FAST_CRASH && exit.self_inflicted() => {
                    Cause::BootFailure
                }
                Some(_) => Cause::Crashed,
            },
        };
        if cause == Cause::BootFailure {
            let counted = CountedExit {
                slot,
                pid,
                exit,
                was_ready: ready.is_some(),
            };
            if self.count_boot_failure(now, counted) {
                return exited(cause);
            }
        }
        let delay = if cause == Cause::Forwarded {
            Duration::ZERO
        } else {
            let lived = now.saturating_sub(started);
            self.streak[slot] = if lived < FAST_CRASH {
                self.streak[slot].saturating_add(1)
            } else {
                1
            };
            self.backoff(self.streak[slot])
        };
        self.slots[slot] = Slot::Waiting {
            at: now.saturating_add(delay),
            recovers: Some(pid),
        };
        if delay.is_zero() {
            self.spawn_due(now);
        }
        exited(cause)
    }

    /// The respawn delay after the `streak`-th fast exit in a row of one slot.
    fn backoff(&self, streak: u32) -> Duration {
        let factor = 1u32
            << streak
                .saturating_sub(1)
                .min(MAX_BACKOFF_FACTOR.trailing_zeros());
        self.cfg.recover_interval.saturating_mul(factor)
    }

    /// Counts a boot failure; on going over the threshold, begins the fatal stop and returns
    /// true.
    fn count_boot_failure(&mut self, now: Duration, exit: CountedExit) -> bool {
        let Some(Tripped { count, latest }) = self.guard.count(now, exit) else {
            return false;
        };
        self.stop(now, true, Err(Failure::OverRecovery { count, latest }));
        true
    }

    /// A signal reached the master.
    pub(crate) fn on_signal(&mut self, signal: Signal, now: Duration) {
        match signal {
            Signal::Term | Signal::Int => match self.phase {
                Phase::Stopping {
                    kill_at: Some(_), ..
                } => self.kill_all(),
                Phase::Stopping { .. } | Phase::Done(_) => {}
                _ => self.stop(now, false, Ok(())),
            },
            Signal::Usr2 => {
                let stopping = self.is_stopping();
                self.new_master.on_usr2(stopping, &mut self.actions);
            }
            Signal::Usr1 if !self.is_stopping() => {
                for s in self.slots.iter_mut() {
                    if let Slot::Running { forwarded, .. } = s {
                        forwarded.add(signal);
                    }
                }
                for pid in self.live_pids() {
                    let why = Why::Forward;
                    self.actions.push_back(Action::Signal { pid, signal, why });
                }
            }
            Signal::Ttin if self.phase == Phase::Running => {
                let slot = match self.slots.iter().position(|s| *s == Slot::Closed) {
                    Some(slot) => slot,
                    None => {
                        self.slots.push(Slot::Closed);
                        self.streak.push(0);
                        self.slots.len() - 1
                    }
                };
                self.slots[slot] = Slot::Spawning { recovers: None };
                self.actions.push_back(Action::Spawn {
                    slot,
                    recovers: None,
                });
                self.actions.push_back(Action::Steer {
                    active: self.active_slots(),
                });
            }
            Signal::Ttou if self.phase == Phase::Running && self.active_slots() > 1 => {
                self.close_last_slot(now);
            }
            Signal::Hup if self.phase == Phase::Running => {
                if self.restarting.is_some() {
                    self.hup_pending = true;
                } else {
                    self.begin_restart();
                }
            }
            // Before every initial worker is ready: the restart follows once they are.
            Signal::Hup if self.phase == Phase::Starting => self.hup_pending = true,
            _ => {}
        }
    }

    /// TTOU: takes the highest slot in service out of service and retires its worker.
    fn close_last_slot(&mut self, now: Duration) {
        let slot = self
            .slots
            .iter()
            .rposition(|s| *s != Slot::Closed)
            .expect("more than one active slot");
        self.restart_queue.retain(|r| r.slot != slot);
        let previous = std::mem::replace(&mut self.slots[slot], Slot::Closed);
        self.actions.push_back(Action::Steer {
            active: self.active_slots(),
        });
        match previous {
            Slot::Running { pid, stuck, .. } => {
                self.retire(pid, slot, Cause::Retired, stuck);
                self.tell_retiring(pid, now);
            }
            Slot::Spawning { .. } => self
                .actions
                .retain(|a| !matches!(a, Action::Spawn { slot: s, .. } if *s == slot)),
            _ => {}
        }
        if let Some((s, old)) = self.restarting {
            if s == slot {
                // The slot was mid-restart: its old worker may not be told yet.
                self.restarting = None;
                self.tell_retiring(old, now);
                self.advance_restart();
            }
        }
        if self.slot_unused(slot) {
            self.actions.push_back(Action::Closed { slot });
        }
    }

    /// Whether no live worker (running or retiring) belongs to `slot`.
    fn slot_unused(&self, slot: usize) -> bool {
        self.slots[slot].pid().is_none() && self.retiring.values().all(|r| r.slot != slot)
    }

    /// Moves the worker `pid` of `slot` to the retiring ones, to be judged as `cause` (as
    /// [`Cause::Stuck`], and counted as told, when it was killed as stuck already).
    fn retire(&mut self, pid: u32, slot: usize, cause: Cause, stuck: bool) {
        let retiring = Retiring {
            slot,
            kill_at: None,
            told: stuck,
            cause: if stuck { Cause::Stuck } else { cause },
        };
        self.retiring.insert(pid, retiring);
    }

    /// HUP: queues every running slot for replacement and starts the first.
    fn begin_restart(&mut self) {
        self.restart_queue = (0..self.slots.len())
            .filter(|&s| matches!(self.slots[s], Slot::Running { .. }))
            .map(|slot| Restart {
                slot,
                pid: None,
                cause: Cause::Replaced,
            })
            .collect();
        if self.restart_queue.is_empty() {
            return;
        }
        self.actions.push_back(Action::Reloading);
        self.reloading = true;
        self.advance_restart();
    }

    /// Starts the restart of the next slot in the rolling-restart queue.
    fn advance_restart(&mut self) {
        if self.is_stopping() {
            self.restart_queue.clear();
            self.hup_pending = false;
            return;
        }
        while let Some(next) = self.restart_queue.pop_front() {
            let slot = next.slot;
            if let Slot::Running { pid, stuck, .. } = self.slots[slot] {
                if next.pid.is_some_and(|p| p != pid) {
                    // The worker to recycle is gone already.
                    continue;
                }
                self.retire(pid, slot, next.cause, stuck);
                self.restarting = Some((slot, pid));
                self.slots[slot] = Slot::Spawning { recovers: None };
                self.actions.push_back(Action::Spawn {
                    slot,
                    recovers: None,
                });
                return;
            }
        }
        // The queue ran out another way than by the last replacement being ready (a slot
        // closed or waiting to respawn, an old worker gone early): the restart is over.
        if self.restarting.is_none() && std::mem::take(&mut self.reloading) {
            self.actions.push_back(Action::Reloaded);
        }
        if self.restarting.is_none() && std::mem::take(&mut self.hup_pending) {
            self.begin_restart();
        }
    }

    /// Tells a retiring worker to drain (once), with its KILL deadline.
    fn tell_retiring(&mut self, pid: u32, now: Duration) {
        let grace = self.cfg.shutdown_grace;
        if let Some(r) = self.retiring.get_mut(&pid).filter(|r| !r.told) {
            r.told = true;
            r.kill_at = Some(now.saturating_add(grace));
            self.actions.push_back(Action::Signal {
                pid,
                signal: Signal::Term,
                why: Why::Retire,
            });
        }
    }

    /// Recycles the worker `pid` (past its lifetime, or over its memory ceiling): its slot is
    /// replaced as a rolling restart replaces it, after the slots already queued. Only a
    /// ready worker that holds its slot, is not stuck, and whose slot is not being replaced
    /// already is recycled, and only while the run goes on and the master is ready. Returns
    /// whether the worker will be replaced (`true` also when its slot is queued already).
    pub(crate) fn recycle(&mut self, pid: u32) -> bool {
        if self.phase != Phase::Running {
            return false;
        }
        let Some(slot) = self.slots.iter().position(|s| {
            matches!(s, Slot::Running { pid: p, ready: Some(_), stuck: false, .. } if *p == pid)
        }) else {
            return false;
        };
        if self.restarting.is_some_and(|(s, _)| s == slot) {
            // Its predecessor is still draining: later.
            return false;
        }
        if self.restart_queue.iter().any(|r| r.slot == slot) {
            return true;
        }
        self.restart_queue.push_back(Restart {
            slot,
            pid: Some(pid),
            cause: Cause::Recycled,
        });
        if self.restarting.is_none() {
            self.advance_restart();
        }
        true
    }

    /// Kills the worker `pid` as stuck (its heartbeat stopped): KILL now; its exit is
    /// [`Cause::Stuck`] and its slot is respawned at once. Only a ready worker that holds its
    /// slot is judged, and only while the run goes on. Returns whether it is killed.
    pub(crate) fn kill_stuck(&mut self, pid: u32) -> bool {
        if self.is_stopping() {
            return false;
        }
        let found = self.slots.iter_mut().find_map(|s| match s {
            Slot::Running {
                pid: p,
                ready: Some(_),
                stuck,
                ..
            } if *p == pid && !*stuck => Some(stuck),
            _ => None,
        });
        let Some(stuck) = found else {
            return false;
        };
        *stuck = true;
        self.actions.push_back(Action::Signal {
            pid,
            signal: Signal::Kill,
            why: Why::Stuck,
        });
        true
    }

    /// The workers the master watches for health: `(slot, pid, alone)` for every ready
    /// worker that holds its slot and is not stuck, while the run goes on; `alone` is false
    /// while an older worker of the same slot is still draining.
    pub(crate) fn serving(&self) -> Vec<(usize, u32, bool)> {
        if self.is_stopping() {
            return Vec::new();
        }
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| match *s {
                Slot::Running {
                    pid,
                    ready: Some(_),
                    stuck: false,
                    ..
                } => {
                    let alone = self.retiring.values().all(|r| r.slot != slot);
                    Some((slot, pid, alone))
                }
                _ => None,
            })
            .collect()
    }

    /// Per slot (every slot ever created): the pid of the worker that holds it, if any, and
    /// whether that worker is ready; `None` for a slot out of service.
    pub(crate) fn holders(&self) -> impl Iterator<Item = Option<(Option<u32>, bool)>> + '_ {
        self.slots.iter().map(|s| match *s {
            Slot::Closed => None,
            Slot::Running { pid, ready, .. } => Some((Some(pid), ready.is_some())),
            Slot::Spawning { .. } | Slot::Waiting { .. } => Some((None, false)),
        })
    }

    /// Time has reached `now`: due respawns, and KILLs after a grace period.
    pub(crate) fn on_timer(&mut self, now: Duration) {
        self.spawn_due(now);
        let due: Vec<u32> = self
            .retiring
            .iter()
            .filter(|(_, r)| r.kill_at.is_some_and(|t| t <= now))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in due {
            if let Some(r) = self.retiring.get_mut(&pid) {
                r.kill_at = None;
            }
            self.actions.push_back(Action::Signal {
                pid,
                signal: Signal::Kill,
                why: Why::GraceExpired,
            });
        }
        if let Phase::Stopping {
            kill_at: Some(t), ..
        } = self.phase
        {
            if t <= now {
                self.kill_remaining(Why::GraceExpired);
            }
        }
        let timeout = self.cfg.upgrade_timeout;
        self.new_master.on_timer(now, timeout, &mut self.actions);
    }

    /// The respawns due by `now`.
    fn spawn_due(&mut self, now: Duration) {
        if self.is_stopping() {
            return;
        }
        for slot in 0..self.slots.len() {
            if let Slot::Waiting { at, recovers } = self.slots[slot] {
                if at <= now {
                    self.slots[slot] = Slot::Spawning { recovers };
                    self.actions.push_back(Action::Spawn { slot, recovers });
                }
            }
        }
    }

    /// The driver failed (a hook returned an error, a system call failed): kill everything.
    pub(crate) fn fail(&mut self, now: Duration) {
        match &mut self.phase {
            Phase::Stopping { result, .. } => {
                *result = Err(Failure::External);
                self.kill_all();
            }
            Phase::Done(result) => *result = Err(Failure::External),
            _ => self.stop(now, true, Err(Failure::External)),
        }
    }

    /// Begins a stop: TERM (or KILL when `kill`) to every live worker.
    fn stop(&mut self, now: Duration, kill: bool, result: Result<(), Failure>) {
        let how = if kill { Stop::Kill } else { Stop::Graceful };
        self.stop_with(now, how, result);
    }

    /// Begins a stop of the kind `how`.
    fn stop_with(&mut self, now: Duration, how: Stop, result: Result<(), Failure>) {
        let kill = how == Stop::Kill;
        self.actions.retain(|a| {
            !matches!(
                a,
                Action::Spawn { .. }
                    | Action::Ready { .. }
                    | Action::Reloading
                    | Action::Reloaded
                    | Action::StartUpgrade
            )
        });
        let grace = self.cfg.shutdown_grace;
        self.new_master.on_stop(now, grace, kill, &mut self.actions);
        self.restart_queue.clear();
        self.restarting = None;
        self.hup_pending = false;
        for s in self.slots.iter_mut() {
            // A spawning slot's action was queued, and has just been dropped.
            if matches!(s, Slot::Waiting { .. } | Slot::Spawning { .. }) {
                *s = Slot::Closed;
            }
        }
        let (signal, why) = match how {
            Stop::Kill => (Signal::Kill, Why::Kill),
            Stop::Graceful => {
                self.actions.push_back(Action::Stopping);
                (Signal::Term, Why::Stop)
            }
            Stop::HandOver => (Signal::Term, Why::Stop),
        };
        for pid in self.live_pids() {
            // A retiring worker already told keeps its earlier KILL deadline.
            if !kill && self.retiring.get(&pid).is_some_and(|r| r.told) {
                continue;
            }
            if let Some(r) = self.retiring.get_mut(&pid) {
                r.told = true;
            }
            self.actions.push_back(Action::Signal { pid, signal, why });
        }
        self.phase = Phase::Stopping {
            kill_at: if kill {
                None
            } else {
                Some(now.saturating_add(self.cfg.shutdown_grace))
            },
            result,
        };
        self.maybe_done();
    }

    fn kill_all(&mut self) {
        self.kill_remaining(Why::Kill);
    }

    fn kill_remaining(&mut self, why: Why) {
        if let Phase::Stopping { kill_at, .. } = &mut self.phase {
            *kill_at = None;
        }
        if why == Why::Kill {
            self.new_master
                .on_stop(Duration::ZERO, Duration::ZERO, true, &mut self.actions);
        }
        for r in self.retiring.values_mut() {
            r.kill_at = None;
        }
        for pid in self.live_pids() {
            self.actions.push_back(Action::Signal {
                pid,
                signal: Signal::Kill,
                why,
            });
        }
    }

    fn maybe_done(&mut self) {
        let Phase::Stopping { result, .. } = &self.phase else {
            return;
        };
        let busy = self
            .slots
            .iter()
            .any(|s| matches!(s, Slot::Running { .. } | Slot::Spawning { .. }));
        if !busy && self.retiring.is_empty() && self.new_master.is_idle() {
            self.phase = Phase::Done(result.clone());
        }
    }
}

impl Slot {
    fn pid(&self) -> Option<u32> {
        match self {
            Slot::Running { pid, .. } => Some(*pid),
            _ => None,
        }
    }

    fn is_ready_or_closed(&self) -> bool {
        matches!(self, Slot::Running { ready: Some(_), .. } | Slot::Closed)
    }
}

mod guard;
#[cfg(any(test, fuzzing))]
pub(crate) mod model;
#[cfg(test)]
mod tests;
mod upgrade;
