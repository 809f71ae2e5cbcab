//! The upgrade probation's decisions, on both sides of a handover.
//!
//! On the old master (`upgrade_probation` above zero): once the new master serves, the old
//! workers drain as in any handover, but the new master stays watched
//! ([`NewMaster::Probation`]) and, once they are gone, the run waits
//! ([`Phase::Probation`]) instead of ending:
//!
//! ```text
//!   handover ──► drain (Stopping) ── workers gone ──► Probation(until) ── until, TERM, stop,
//!                  │ HUP, rollback: asked               │ HUP, rollback    the new master's
//!                  └─────────── once they are gone ────►│                  exit ──► Done
//!                                                       ▼
//!                         Starting (the old program's workers, rolling back)
//!                                                       │ all ready
//!                                                       ▼
//!                         Running: HandBack to the new master (it stops; KILL after
//!                         the grace period and the margin), `rollback` answered
//! ```
//!
//! A stop during the rollback's start (TERM, a failure) leaves the service to the new master,
//! and the run ends.
//!
//! On the new master (its driver tells it, [`Supervisor::on_probation`]): no upgrade while
//! the old master is on probation; `rollback` is forwarded to the old master
//! ([`Action::AskRollback`]) and answered when it hands the service back
//! ([`Supervisor::on_handed_back`]) or ends its probation ([`Supervisor::on_probation_ended`]).

use std::time::Duration;

use super::action::Action;
use super::command::{Answer, Refusal};
use super::state::{KILL_MARGIN, Phase, Slot, Stop, Supervisor};
use super::upgrade::NewMaster;

impl Supervisor {
    /// A rollback was asked (HUP, `rollback`): returns whether this master rolls back (now,
    /// or once its old workers are gone).
    pub(super) fn ask_rollback(&mut self, now: Duration) -> bool {
        let NewMaster::Probation { .. } = self.new_master else {
            return false;
        };
        match self.phase {
            Phase::Probation { .. } => {
                self.roll_back(now);
                true
            }
            // Not after a failure: the run ends with it.
            Phase::Stopping { result: Ok(()), .. }
                if self.handed_to.is_some() && !self.probation_off =>
            {
                self.rollback_asked = true;
                true
            }
            _ => false,
        }
    }

    /// The rollback begins: the slots in service at the handover start workers again.
    fn roll_back(&mut self, _now: Duration) {
        let NewMaster::Probation { pid } = self.new_master else {
            return;
        };
        self.rolling_back = Some(pid);
        self.rollback_asked = false;
        self.phase = Phase::Starting;
        let n = self.handover_slots.max(1);
        while self.slots.len() < n {
            self.slots.push(Slot::Closed);
            self.streak.push(0);
        }
        // A rolling restart the handover cut short is over: its Reloaded never comes.
        self.reloading = false;
        for slot in 0..n {
            self.slots[slot] = Slot::Spawning { recovers: None };
            self.actions.push_back(Action::Spawn {
                slot,
                recovers: None,
            });
        }
    }

    /// Every worker of the rollback serves: the new master is handed the service back, and
    /// the `rollback`s waiting are answered. Returns whether this was a rollback's end.
    pub(super) fn rolled_back(&mut self, now: Duration) -> bool {
        let Some(pid) = self.rolling_back.take() else {
            return false;
        };
        self.phase = Phase::Running;
        self.handed_to = None;
        let kill_at = now
            .saturating_add(self.cfg.shutdown_grace)
            .saturating_add(KILL_MARGIN);
        if self.new_master == (NewMaster::Probation { pid }) {
            self.new_master = NewMaster::Stopping {
                pid,
                kill_at: Some(kill_at),
            };
        }
        let pids = self.serving_pids();
        self.actions.push_back(Action::HandBack {
            pid,
            pids: pids.clone(),
        });
        self.answer_rollbacks(&Answer::Restored { pids });
        true
    }

    /// Once the old workers are gone after a handover: whether the run waits on probation
    /// instead of ending (or rolls back at once, when asked during the drain).
    pub(super) fn begin_probation(&mut self, now: Duration, ok: bool) -> bool {
        let NewMaster::Probation { pid } = self.new_master else {
            return false;
        };
        if !ok || self.probation_off {
            self.end_probation();
            return false;
        }
        if self.rollback_asked {
            self.roll_back(now);
        } else {
            let until = now.saturating_add(self.cfg.upgrade_probation);
            self.phase = Phase::Probation { until };
            self.actions.push_back(Action::Probation { pid, until });
        }
        true
    }

    /// The probation ends without a rollback: the new master is no longer watched, and the
    /// run ends (at once when it waited on probation).
    pub(super) fn end_probation(&mut self) {
        if let NewMaster::Probation { pid } = self.new_master {
            self.new_master = NewMaster::Idle;
            self.actions.push_back(Action::ProbationEnded { pid });
            self.answer_rollbacks(&Answer::Refused(Refusal::ProbationEnded { pid }));
        }
        self.rolling_back = None;
        self.rollback_asked = false;
        if let Phase::Probation { .. } = self.phase {
            self.phase = Phase::Done(Ok(()));
        }
    }

    /// Time has reached `now`: a probation whose time is up ends.
    pub(super) fn probation_timer(&mut self, now: Duration) {
        if let Phase::Probation { until } = self.phase {
            if until <= now {
                self.end_probation();
            }
        }
    }

    /// On a new master: its old master `pid` is on probation (the driver learned it at the
    /// start): no upgrade until it ends; `rollback` is forwarded to it.
    pub(crate) fn on_probation(&mut self, pid: u32) {
        self.old_master = Some(pid);
    }

    /// On a new master: the old master's probation ended (it exited): upgrades are possible
    /// again, and a `rollback` waiting is answered with the refusal.
    pub(crate) fn on_probation_ended(&mut self) {
        if let Some(pid) = self.old_master.take() {
            self.answer_rollbacks(&Answer::Refused(Refusal::ProbationEnded { pid }));
        }
    }

    /// On a new master: the old master took the service back (its workers serve again). The
    /// `rollback`s waiting are answered, and this run's workers drain as in a handover.
    pub(crate) fn on_handed_back(&mut self, now: Duration) {
        let Some(pid) = self.old_master.take() else {
            return;
        };
        if self.is_stopping() {
            return;
        }
        self.actions.push_back(Action::HandedBack { pid });
        self.answer_rollbacks(&Answer::HandedBack { pid });
        self.handed_to = Some(pid);
        self.stop_with(now, Stop::HandOver, Ok(()));
    }

    /// On a new master: its old master while that one is on probation.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn old_master(&self) -> Option<u32> {
        self.old_master
    }
}
