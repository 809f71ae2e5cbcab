//! The supervisor's calling protocol: construction, the queue of actions, and the events the
//! driver feeds in (a spawn's outcome, readiness, an exit, a signal, a timer, the upgrade's
//! events).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::action::{Action, Cause, Config, Exited, Failure, Ignored, Why};
use super::command::{Answer, Refusal};
use super::guard::{Guard, Tripped};
use super::state::{
    FAST_CRASH, Forwarded, MAX_BACKOFF_FACTOR, Phase, SPAWN_RETRY_DELAY, Slot, Stop, Supervisor,
};
use super::upgrade::NewMaster;
use crate::exit::{CountedExit, EXIT_FATAL, WorkerExit};
use crate::sys::signal::Signal;

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
            restarts_begun: 0,
            waiting: Vec::new(),
            handed_to: None,
            handover_slots: 0,
            rollback_asked: false,
            probation_off: false,
            rolling_back: None,
            old_master: None,
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
        if self.actions.is_empty() {
            // The end of a burst: the `scale`s whose count is reached are answered.
            self.check_scaled();
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
        matches!(
            self.phase,
            Phase::Stopping { .. } | Phase::Probation { .. } | Phase::Done(_)
        )
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
            Phase::Stopping {
                kill_at,
                give_up_at,
                ..
            } => kill_at.or(give_up_at),
            _ => None,
        };
        let upgrade = self.new_master.deadline();
        let probation = match self.phase {
            Phase::Probation { until } => Some(until),
            _ => None,
        };
        waits
            .chain(retire)
            .chain(stop)
            .chain(upgrade)
            .chain(probation)
            .min()
    }

    /// The new master of an upgrade ([`Action::StartUpgrade`]) runs as `pid`.
    pub(crate) fn on_upgrade_started(&mut self, pid: u32, now: Duration) {
        let timeout = self.cfg.upgrade_timeout;
        self.new_master.on_started(pid, now, timeout);
    }

    /// The new master of an upgrade ([`Action::StartUpgrade`]) could not be started.
    pub(crate) fn on_upgrade_failed(&mut self, _now: Duration) {
        self.new_master.on_start_failed(&mut self.actions);
        self.answer_upgrade_outcome();
    }

    /// The new master reported that it serves: unless it is too late, the old generation
    /// drains and the run ends.
    pub(crate) fn on_upgrade_ready(&mut self, now: Duration) {
        if self.is_stopping() {
            return;
        }
        let probation = !self.cfg.upgrade_probation.is_zero();
        if let Some(pid) = self.new_master.on_ready(probation) {
            self.actions.push_back(Action::HandedOver { pid });
            self.answer_upgrade_outcome();
            self.handed_to = Some(pid);
            self.handover_slots = self.active_slots();
            self.stop_with(now, Stop::HandOver, Ok(()));
        }
    }

    /// A child `pid` that is no worker was reaped: returns whether it was the new master.
    pub(crate) fn on_upgrade_exit(&mut self, pid: u32, exit: WorkerExit, now: Duration) -> bool {
        let on_probation = self.new_master == (NewMaster::Probation { pid });
        let ours = self.new_master.on_exit(pid, exit, &mut self.actions);
        self.answer_upgrade_outcome();
        if on_probation && self.rolling_back != Some(pid) {
            // Nothing is left to roll back to: the probation ends with the new master.
            self.rollback_asked = false;
            self.actions.push_back(Action::ProbationEnded { pid });
            self.answer_rollbacks(&Answer::Refused(Refusal::ProbationEnded { pid }));
        }
        if ours {
            self.maybe_done(now);
        }
        ours
    }

    /// How long an old master waits on probation after a handover (zero: none).
    pub(crate) fn upgrade_probation(&self) -> Duration {
        self.cfg.upgrade_probation
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
                    self.reloaded();
                }
            }
        }
        if self.phase == Phase::Starting
            && self.slots.iter().all(Slot::is_ready_or_closed)
            && !self.rolled_back(now)
        {
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
            self.maybe_done(now);
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
            // A slot in service at a handover with a probation keeps what the driver holds
            // for it: a rollback brings it back.
            let kept = matches!(self.new_master, NewMaster::Probation { .. })
                && r.slot < self.handover_slots;
            if self.slots[r.slot] == Slot::Closed && self.slot_unused(r.slot) && !kept {
                self.actions.push_back(Action::Closed { slot: r.slot });
            }
            self.maybe_done(now);
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
            self.maybe_done(now);
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
    pub(super) fn backoff(&self, streak: u32) -> Duration {
        let factor = 1u32
            << streak
                .saturating_sub(1)
                .min(MAX_BACKOFF_FACTOR.trailing_zeros());
        self.cfg.recover_interval.saturating_mul(factor)
    }

    /// Counts a boot failure; on going over the threshold, begins the fatal stop and returns
    /// true.
    pub(super) fn count_boot_failure(&mut self, now: Duration, exit: CountedExit) -> bool {
        let Some(Tripped { count, latest }) = self.guard.count(now, exit) else {
            return false;
        };
        self.stop(now, true, Err(Failure::OverRecovery { count, latest }));
        true
    }

    /// A signal reached the master.
    pub(crate) fn on_signal(&mut self, signal: Signal, now: Duration) {
        match signal {
            Signal::Term | Signal::Int => {
                // No upgrade probation after this stop, or the end of one under way.
                self.probation_off = true;
                match self.phase {
                    Phase::Probation { .. } => self.end_probation(),
                    Phase::Stopping {
                        kill_at: Some(_), ..
                    } => self.kill_all(now),
                    Phase::Stopping { .. } | Phase::Done(_) => {}
                    _ => self.stop(now, false, Ok(())),
                }
            }
            Signal::Usr2 if self.old_master.is_some() && !self.is_stopping() => {
                let pid = self.old_master.unwrap_or_default();
                let why = Ignored::Probation { pid };
                self.actions.push_back(Action::UpgradeIgnored { why });
            }
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
            Signal::Ttin | Signal::Ttou if self.changes_count(signal) => {
                if signal == Signal::Ttin {
                    self.add_slot();
                } else {
                    self.close_last_slot(now);
                }
                self.supersede_scale(None);
            }
            Signal::Hup if self.ask_rollback(now) => {}
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
                self.kill_remaining(Why::GraceExpired, now);
            }
        }
        if let Phase::Stopping {
            give_up_at: Some(t),
            ..
        } = self.phase
        {
            if t <= now {
                self.give_up();
            }
        }
        let timeout = self.cfg.upgrade_timeout;
        self.new_master.on_timer(now, timeout, &mut self.actions);
        self.answer_upgrade_outcome();
        self.probation_timer(now);
    }

    /// The respawns due by `now`.
    pub(super) fn spawn_due(&mut self, now: Duration) {
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
}
