//! The supervisor: a pure state machine with no system calls.
//!
//! Events go in (a worker was spawned, a worker exited, a signal arrived, time passed) and
//! [`Action`]s come out (spawn slot k, signal pid p, the master is ready). The driver
//! (`driver.rs`) performs the actions against the kernel and feeds back what happened.
//! Time is a [`Duration`] since an arbitrary epoch chosen by the caller, so tests and the fuzz
//! target can drive it with any sequence of events and instants.
//!
//! # Policies
//!
//! * Every exit the supervisor did not ask for is *unexpected* (exit code 0 included): the
//!   slot is respawned, and the exit is counted. More than `recover_threshold` unexpected
//!   exits within `recover_window` stops everything with [`Failure::OverRecovery`], so with
//!   threshold k at least k respawns happen first.
//! * The delay before a respawn is `recover_interval`, doubled for each further exit of the
//!   same slot that comes less than [`FAST_CRASH`] after its start, up to 32 × the interval.
//! * A worker that exits with [`crate::EXIT_FATAL`] is not respawned: everything stops
//!   gracefully and the run fails with [`Failure::WorkerFatal`].
//! * TERM/INT: TERM to every worker, KILL after `shutdown_grace`; a second TERM/INT kills at
//!   once. HUP: rolling restart, one slot at a time, the new worker started before the old one
//!   is told to stop. TTIN/TTOU: one worker more/less. USR1/USR2: forwarded to every worker.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// A worker that exits sooner than this after its start counts as crashing fast, which
/// doubles the delay before its slot's next respawn.
pub const FAST_CRASH: Duration = Duration::from_secs(1);

/// Exit code by which a worker reports a fatal start-up failure (see [`crate::EXIT_FATAL`]).
const EXIT_FATAL: i32 = crate::EXIT_FATAL;

/// The most a respawn delay grows to, as a multiple of `recover_interval`.
const MAX_BACKOFF_FACTOR: u32 = 32;

/// A delay before retrying a failed `fork`, used when `recover_interval` is shorter.
const SPAWN_RETRY_DELAY: Duration = Duration::from_millis(100);

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerExit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl std::fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            WorkerExit::Code(c) => write!(f, "exit code {c}"),
            WorkerExit::Signal(s) => write!(f, "signal {}", signal_name(s)),
        }
    }
}

/// The name of a signal (`SIGTERM`), or its number for the rare ones.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        17 => "SIGCHLD",
        18 => "SIGCONT",
        19 => "SIGSTOP",
        21 => "SIGTTIN",
        22 => "SIGTTOU",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

/// Signal numbers the supervisor reacts to (Linux values on every architecture we support).
pub mod sig {
    pub const HUP: i32 = 1;
    pub const INT: i32 = 2;
    pub const KILL: i32 = 9;
    pub const USR1: i32 = 10;
    pub const USR2: i32 = 12;
    pub const TERM: i32 = 15;
    pub const TTIN: i32 = 21;
    pub const TTOU: i32 = 22;
}

/// The supervisor's settings, validated by the builder.
#[derive(Debug, Clone)]
pub struct Config {
    pub workers: usize,
    pub recover_threshold: usize,
    pub recover_window: Duration,
    pub recover_interval: Duration,
    pub shutdown_grace: Duration,
}

/// Why a run failed, as far as the supervisor knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Too many unexpected exits within the window.
    OverRecovery { exits: usize },
    /// A worker reported a fatal start-up failure.
    WorkerFatal { slot: usize, pid: u32, code: i32 },
    /// The driver reported a failure of its own (a hook, a system call); it keeps the details.
    External,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a worker in `slot`. `recovers` is the pid it replaces after an unexpected exit.
    Spawn { slot: usize, recovers: Option<u32> },
    /// Send `signal` to the worker `pid`.
    Signal { pid: u32, signal: i32 },
    /// Every initial worker runs: the `on_master_ready` moment.
    Ready { pids: Vec<u32> },
    /// `slot` was taken out of service (TTOU): what the driver holds for it may go.
    Closed { slot: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    /// A spawn action is queued or being performed.
    Spawning {
        recovers: Option<u32>,
    },
    Running {
        pid: u32,
        started: Duration,
    },
    /// Waiting for its respawn time.
    Waiting {
        at: Duration,
        recovers: Option<u32>,
    },
    /// Taken out of service (TTOU, or the run is stopping).
    Closed,
}

/// A worker that was asked to stop (rolling restart, TTOU) while the run goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retiring {
    slot: usize,
    kill_at: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Initial workers are being spawned.
    Starting,
    Running,
    Stopping {
        kill_at: Option<Duration>,
        result: Result<(), Failure>,
    },
    Done(Result<(), Failure>),
}

/// The supervisor state machine. See the module docs for its policies.
#[derive(Debug)]
pub struct Supervisor {
    cfg: Config,
    slots: Vec<Slot>,
    /// Fast-crash streak per slot, for the respawn backoff.
    streak: Vec<u32>,
    retiring: BTreeMap<u32, Retiring>,
    /// Times of recent unexpected exits, oldest first.
    recent: VecDeque<Duration>,
    /// Slots still to restart in the current rolling restart.
    restart_queue: VecDeque<usize>,
    /// The slot being restarted and the pid it replaces.
    restarting: Option<(usize, u32)>,
    phase: Phase,
    actions: VecDeque<Action>,
}

impl Supervisor {
    /// A supervisor that starts with every slot queued for spawning.
    pub fn new(cfg: Config) -> Supervisor {
        let n = cfg.workers;
        let mut sup = Supervisor {
            slots: vec![Slot::Spawning { recovers: None }; n],
            streak: vec![0; n],
            retiring: BTreeMap::new(),
            recent: VecDeque::new(),
            restart_queue: VecDeque::new(),
            restarting: None,
            phase: Phase::Starting,
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
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The outcome, once every worker is gone after a stop.
    pub fn outcome(&self) -> Option<&Result<(), Failure>> {
        match &self.phase {
            Phase::Done(r) => Some(r),
            _ => None,
        }
    }

    /// Whether a stop has begun.
    pub fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. } | Phase::Done(_))
    }

    /// The worker slot a live pid belongs to.
    pub fn slot_of(&self, pid: u32) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| matches!(s, Slot::Running { pid: p, .. } if *p == pid))
            .or_else(|| self.retiring.get(&pid).map(|r| r.slot))
    }

    /// Pids of every live worker, retiring ones included.
    pub fn live_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .slots
            .iter()
            .filter_map(|s| match s {
                Slot::Running { pid, .. } => Some(*pid),
                _ => None,
            })
            .collect();
        pids.extend(self.retiring.keys());
        pids
    }

    /// Number of slots ever created (in service or not).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Number of slots in service (not closed).
    pub fn active_slots(&self) -> usize {
        self.slots.iter().filter(|s| **s != Slot::Closed).count()
    }

    /// The earliest instant at which [`Supervisor::on_timer`] has something to do.
    pub fn next_deadline(&self) -> Option<Duration> {
        let waits = self.slots.iter().filter_map(|s| match s {
            Slot::Waiting { at, .. } => Some(*at),
            _ => None,
        });
        let retire = self.retiring.values().filter_map(|r| r.kill_at);
        let stop = match self.phase {
            Phase::Stopping { kill_at, .. } => kill_at,
            _ => None,
        };
        waits.chain(retire).chain(stop).min()
    }

    /// The driver started the worker for `slot` as `pid`.
    pub fn on_spawned(&mut self, slot: usize, pid: u32, now: Duration) {
        let Some(state) = self.slots.get_mut(slot) else {
            return;
        };
        if !matches!(state, Slot::Spawning { .. }) {
            return;
        }
        *state = Slot::Running { pid, started: now };
        if self.is_stopping() {
            // Stop began while this spawn was in flight: stop the newcomer too.
            let signal = match self.phase {
                Phase::Stopping { kill_at: None, .. } => sig::KILL,
                _ => sig::TERM,
            };
            self.actions.push_back(Action::Signal { pid, signal });
            return;
        }
        if self.restarting.map(|(s, _)| s) == Some(slot) {
            let (_, old) = self.restarting.expect("checked just above");
            // Told once: a replacement that crashed and came back does not restart the old
            // worker's grace period.
            if let Some(r) = self.retiring.get_mut(&old).filter(|r| r.kill_at.is_none()) {
                r.kill_at = Some(now.saturating_add(self.cfg.shutdown_grace));
                self.actions.push_back(Action::Signal {
                    pid: old,
                    signal: sig::TERM,
                });
            }
        }
        if self.phase == Phase::Starting
            && self
                .slots
                .iter()
                .all(|s| matches!(s, Slot::Running { .. } | Slot::Closed))
        {
            self.phase = Phase::Running;
            self.actions.push_back(Action::Ready {
                pids: self.live_pids(),
            });
        }
    }

    /// The driver could not start a worker for `slot` (fork failed). Before the master is
    /// ready this fails the run; later it counts as an unexpected exit and is retried.
    pub fn on_spawn_failed(&mut self, slot: usize, now: Duration) {
        let Some(Slot::Spawning { recovers }) = self.slots.get(slot).cloned() else {
            return;
        };
        if self.phase == Phase::Starting {
            self.slots[slot] = Slot::Closed;
            self.stop(now, true, Err(Failure::External));
            return;
        }
        self.slots[slot] = Slot::Closed;
        if self.is_stopping() {
            self.maybe_done();
            return;
        }
        if self.count_unexpected(now) {
            return;
        }
        let delay = self.cfg.recover_interval.max(SPAWN_RETRY_DELAY);
        self.slots[slot] = Slot::Waiting {
            at: now + delay,
            recovers,
        };
    }

    /// A worker was reaped. Returns its slot, or `None` for a pid that is not a worker.
    pub fn on_exit(&mut self, pid: u32, exit: WorkerExit, now: Duration) -> Option<usize> {
        if let Some(r) = self.retiring.remove(&pid) {
            if self.restarting.map(|(_, old)| old) == Some(pid) {
                self.restarting = None;
                self.advance_restart();
            }
            self.maybe_done();
            return Some(r.slot);
        }
        let slot = self
            .slots
            .iter()
            .position(|s| matches!(s, Slot::Running { pid: p, .. } if *p == pid))?;
        let Slot::Running { started, .. } = self.slots[slot] else {
            unreachable!("matched Running just above")
        };
        self.slots[slot] = Slot::Closed;
        if self.is_stopping() {
            self.maybe_done();
            return Some(slot);
        }
        if exit == WorkerExit::Code(EXIT_FATAL) {
            self.stop(
                now,
                false,
                Err(Failure::WorkerFatal {
                    slot,
                    pid,
                    code: EXIT_FATAL,
                }),
            );
            return Some(slot);
        }
        if self.count_unexpected(now) {
            return Some(slot);
        }
        let lived = now.saturating_sub(started);
        self.streak[slot] = if lived < FAST_CRASH {
            self.streak[slot].saturating_add(1)
        } else {
            1
        };
        let factor = 1u32 << (self.streak[slot] - 1).min(MAX_BACKOFF_FACTOR.trailing_zeros());
        let delay = self.cfg.recover_interval.saturating_mul(factor);
        self.slots[slot] = Slot::Waiting {
            at: now.saturating_add(delay),
            recovers: Some(pid),
        };
        if delay.is_zero() {
            self.on_timer(now);
        }
        Some(slot)
    }

    /// Counts an unexpected exit; on going over the threshold, begins the fatal stop and
    /// returns true.
    fn count_unexpected(&mut self, now: Duration) -> bool {
        self.recent.push_back(now);
        while let Some(&t) = self.recent.front() {
            if now.saturating_sub(t) >= self.cfg.recover_window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() > self.cfg.recover_threshold {
            let exits = self.recent.len();
            self.stop(now, true, Err(Failure::OverRecovery { exits }));
            return true;
        }
        false
    }

    /// A signal reached the master.
    pub fn on_signal(&mut self, signal: i32, now: Duration) {
        match signal {
            sig::TERM | sig::INT => match self.phase {
                Phase::Stopping {
                    kill_at: Some(_), ..
                } => self.kill_all(),
                Phase::Stopping { .. } | Phase::Done(_) => {}
                _ => self.stop(now, false, Ok(())),
            },
            sig::USR1 | sig::USR2 if !self.is_stopping() => {
                for pid in self.live_pids() {
                    self.actions.push_back(Action::Signal { pid, signal });
                }
            }
            sig::TTIN if self.phase == Phase::Running => {
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
            }
            sig::TTOU if self.phase == Phase::Running && self.active_slots() > 1 => {
                let slot = self
                    .slots
                    .iter()
                    .rposition(|s| *s != Slot::Closed)
                    .expect("more than one active slot");
                self.restart_queue.retain(|&s| s != slot);
                self.actions.push_back(Action::Closed { slot });
                match std::mem::replace(&mut self.slots[slot], Slot::Closed) {
                    Slot::Running { pid, .. } => self.retire(pid, slot, now),
                    Slot::Spawning { .. } => self
                        .actions
                        .retain(|a| !matches!(a, Action::Spawn { slot: s, .. } if *s == slot)),
                    _ => {}
                }
                if let Some((s, old)) = self.restarting {
                    if s == slot {
                        // The slot was mid-restart: its old worker may not be told yet.
                        self.restarting = None;
                        if self.retiring.get(&old).is_some_and(|r| r.kill_at.is_none()) {
                            self.retire(old, slot, now);
                        }
                        self.advance_restart();
                    }
                }
            }
            sig::HUP if self.phase == Phase::Running && self.restarting.is_none() => {
                self.restart_queue = (0..self.slots.len())
                    .filter(|&s| matches!(self.slots[s], Slot::Running { .. }))
                    .collect();
                self.advance_restart();
            }
            _ => {}
        }
    }

    /// Starts the restart of the next slot in the rolling-restart queue.
    fn advance_restart(&mut self) {
        if self.is_stopping() {
            self.restart_queue.clear();
            return;
        }
        while let Some(slot) = self.restart_queue.pop_front() {
            if let Slot::Running { pid, .. } = self.slots[slot] {
                self.retiring.insert(
                    pid,
                    Retiring {
                        slot,
                        kill_at: None,
                    },
                );
                self.restarting = Some((slot, pid));
                self.slots[slot] = Slot::Spawning { recovers: None };
                self.actions.push_back(Action::Spawn {
                    slot,
                    recovers: None,
                });
                return;
            }
        }
    }

    fn retire(&mut self, pid: u32, slot: usize, now: Duration) {
        self.retiring.insert(
            pid,
            Retiring {
                slot,
                kill_at: Some(now.saturating_add(self.cfg.shutdown_grace)),
            },
        );
        self.actions.push_back(Action::Signal {
            pid,
            signal: sig::TERM,
        });
    }

    /// Time has reached `now`: due respawns, and KILLs after a grace period.
    pub fn on_timer(&mut self, now: Duration) {
        if !self.is_stopping() {
            for slot in 0..self.slots.len() {
                if let Slot::Waiting { at, recovers } = self.slots[slot] {
                    if at <= now {
                        self.slots[slot] = Slot::Spawning { recovers };
                        self.actions.push_back(Action::Spawn { slot, recovers });
                    }
                }
            }
        }
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
                signal: sig::KILL,
            });
        }
        if let Phase::Stopping {
            kill_at: Some(t), ..
        } = self.phase
        {
            if t <= now {
                self.kill_all();
            }
        }
    }

    /// The driver failed (a hook returned an error, a system call failed): kill everything.
    pub fn fail(&mut self, now: Duration) {
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
        self.actions
            .retain(|a| !matches!(a, Action::Spawn { .. } | Action::Ready { .. }));
        self.restart_queue.clear();
        self.restarting = None;
        for s in self.slots.iter_mut() {
            // A spawning slot's action was queued, and has just been dropped.
            if matches!(s, Slot::Waiting { .. } | Slot::Spawning { .. }) {
                *s = Slot::Closed;
            }
        }
        let signal = if kill { sig::KILL } else { sig::TERM };
        for pid in self.live_pids() {
            self.actions.push_back(Action::Signal { pid, signal });
        }
        // A retiring worker keeps an earlier KILL deadline; one not yet told gets the stop's.
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
        if let Phase::Stopping { kill_at, .. } = &mut self.phase {
            *kill_at = None;
        }
        for pid in self.live_pids() {
            self.actions.push_back(Action::Signal {
                pid,
                signal: sig::KILL,
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
        if !busy && self.retiring.is_empty() {
            self.phase = Phase::Done(result.clone());
        }
    }
}

#[cfg(test)]
mod tests;
