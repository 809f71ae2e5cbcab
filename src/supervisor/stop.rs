//! The stop: graceful (TERM, KILL after the grace period), forced (KILL), or the handover of
//! a binary upgrade; and the outcome once every worker (and a new master) is gone.

use std::time::Duration;

use super::action::{Action, Failure, Why};
use super::state::{KILL_MARGIN, Phase, Slot, Stop, Supervisor};
use super::upgrade::NewMaster;
use crate::sys::signal::Signal;

impl Supervisor {
    /// The driver failed (a hook returned an error, a system call failed): kill everything.
    pub(crate) fn fail(&mut self, now: Duration) {
        match &mut self.phase {
            Phase::Stopping { result, .. } => {
                *result = Err(Failure::External);
                self.kill_all(now);
            }
            Phase::Done(result) => *result = Err(Failure::External),
            _ => self.stop(now, true, Err(Failure::External)),
        }
    }

    /// Begins a stop: TERM (or KILL when `kill`) to every live worker.
    pub(super) fn stop(&mut self, now: Duration, kill: bool, result: Result<(), Failure>) {
        let how = if kill { Stop::Kill } else { Stop::Graceful };
        self.stop_with(now, how, result);
    }

    /// Begins a stop of the kind `how`.
    pub(super) fn stop_with(&mut self, now: Duration, how: Stop, result: Result<(), Failure>) {
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
        // A rollback whose workers were starting is over: the service stays with the new
        // master (a `rollback` is no longer joined, see `answer_all_waiting`).
        self.rolling_back = None;
        self.answer_all_waiting();
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
            give_up_at: kill.then(|| now.saturating_add(KILL_MARGIN)),
            result,
        };
        self.maybe_done(now);
    }

    pub(super) fn kill_all(&mut self, now: Duration) {
        self.kill_remaining(Why::Kill, now);
    }

    /// KILL to every live worker (and the new master, for a forced stop); the stop gives up
    /// on what is still alive [`KILL_MARGIN`] later.
    pub(super) fn kill_remaining(&mut self, why: Why, now: Duration) {
        if let Phase::Stopping {
            kill_at,
            give_up_at,
            ..
        } = &mut self.phase
        {
            *kill_at = None;
            give_up_at.get_or_insert(now.saturating_add(KILL_MARGIN));
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

    /// The stop's margin after KILL has passed: every child still alive is given up on, and
    /// the run ends (with [`Failure::Unreaped`] unless it had already failed).
    pub(super) fn give_up(&mut self) {
        let Phase::Stopping { result, .. } = &self.phase else {
            return;
        };
        let mut pids = self.live_pids();
        // A new master on probation serves: none of the stop's.
        if !matches!(self.new_master, NewMaster::Probation { .. }) {
            pids.extend(self.new_master.pid());
        }
        pids.sort_unstable();
        let result = match result {
            Ok(()) => Err(Failure::Unreaped { pids: pids.clone() }),
            Err(failure) => Err(failure.clone()),
        };
        self.actions.push_back(Action::Unreaped { pids });
        self.phase = Phase::Done(result);
    }

    pub(super) fn maybe_done(&mut self, now: Duration) {
        if let Phase::Probation { .. } = self.phase {
            // The new master exited during the probation: nothing is left to roll back to.
            if self.new_master.is_idle() {
                self.end_probation();
            }
            return;
        }
        let Phase::Stopping { result, .. } = &self.phase else {
            return;
        };
        let result = result.clone();
        let busy = self
            .slots
            .iter()
            .any(|s| matches!(s, Slot::Running { .. } | Slot::Spawning { .. }));
        if busy || !self.retiring.is_empty() {
            return;
        }
        if self.begin_probation(now, result.is_ok()) {
            return;
        }
        if self.new_master.is_idle() {
            self.phase = Phase::Done(result);
        }
    }
}
