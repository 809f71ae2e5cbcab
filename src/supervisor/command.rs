//! The operator's commands (the control socket): each is an event, and each is answered
//! exactly once, by an [`Action::Answer`], as soon as its outcome is known.
//!
//! * `status` and `metrics`: at once (the driver answers from its snapshot).
//! * `stop`: at once, then the graceful stop begins, as TERM does; a `stop` during a stop is
//!   answered the same way and changes nothing (it never forces the stop, as a second TERM
//!   does).
//! * `reload`: as HUP, coalesced with HUPs and other `reload`s the same way; answered when the
//!   rolling restart that began at or after the command ends (every slot has a new ready
//!   worker), with the pids that serve then.
//! * `scale N`: TTIN or TTOU as many times as it takes, in one step; answered when N slots
//!   are in service and every one of them has a ready worker. A later `scale M` (M ≠ N), TTIN
//!   or TTOU supersedes it: it is answered then, with the refusal.
//! * `upgrade`: as USR2; while one is starting or waiting for its new master, the command
//!   joins it: every client waiting for an upgrade gets its outcome (the new master's pid, or
//!   the rollback and why).
//! * `rollback`: on an old master that handed over with an upgrade probation (while its old
//!   workers drain, or during the probation), as HUP there: its workers start again, and the
//!   command is answered once they all serve and the new master is handed back the service
//!   (with their pids). On a new master whose old master is on probation: forwarded to the
//!   old master (HUP), and answered when the old master hands the service back (or ends its
//!   probation without). Anywhere else: refused, there is nothing to roll back to.
//!
//! A stop (TERM, a failure, a handed-over upgrade) answers every command still waiting, so
//! no client is left without an answer.

use std::time::Duration;

use super::action::{Action, Rollback};
use super::state::{Phase, Slot, Supervisor};
use super::upgrade::NewMaster;
use crate::sys::signal::Signal;

/// A client of the control socket, as the driver numbers them.
pub(crate) type Client = u64;

/// The most workers `scale` may ask for.
pub(crate) const MAX_SCALE: usize = 4096;

/// A command of the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Status,
    Metrics,
    Reload,
    Upgrade,
    Rollback,
    /// Set the number of slots in service (1 to [`MAX_SCALE`]).
    Scale(usize),
    Stop,
}

/// The outcome of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `status` or `metrics`: the driver answers from its snapshot of the moment.
    Snapshot,
    /// `stop`: the graceful stop began (or was under way).
    Stopping,
    /// `reload`: every slot has a new, ready worker: these.
    Reloaded { pids: Vec<u32> },
    /// `scale`: this many slots are in service, each with a ready worker: these.
    Scaled { pids: Vec<u32> },
    /// `upgrade`: the new master `pid` serves; this master drains and exits.
    Upgraded { pid: u32 },
    /// `upgrade`: rolled back; the running workers keep serving.
    RolledBack(Rollback),
    /// `rollback` on the old master: these workers of the old program serve again, and the
    /// new master was told to stop.
    Restored { pids: Vec<u32> },
    /// `rollback` on the new master: the old master `pid` serves again; this master stops.
    HandedBack { pid: u32 },
    /// The command was not carried out, or not to its end.
    Refused(Refusal),
}

/// Why a command was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The initial workers are not all serving yet.
    Starting,
    /// The run stops (a stop began before the outcome was known).
    Stopping,
    /// The run handed over to the new master `pid` before the outcome was known.
    HandedOver { pid: u32 },
    /// An upgrade that is being rolled back or stopped is under way.
    UpgradeUnderWay { pid: Option<u32> },
    /// There is no old master to roll back to.
    NoRollback,
    /// This old master is on probation after it handed over to the new master `pid`: only
    /// `status`, `metrics`, `rollback` and `stop` apply.
    Probation { pid: u32 },
    /// This new master's old master `pid` is on probation: no upgrade until it ends.
    ProbationOf { pid: u32 },
    /// The old master `pid` ended its probation (or a stop began) before a rollback.
    ProbationEnded { pid: u32 },
    /// A later change of the worker count: to this many slots.
    Superseded { workers: usize },
}

/// A command waiting for its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waiting {
    /// Until the rolling restart number `restart` (counted by `restarts_begun`) ends.
    Reload {
        restart: u64,
    },
    Scale(usize),
    Upgrade,
    Rollback,
}

impl Supervisor {
    /// A command of the operator from `client`: answered now or once its outcome is known
    /// ([`Action::Answer`], exactly once per call).
    pub(crate) fn on_command(&mut self, client: Client, command: Command, now: Duration) {
        let refuse = |sup: &mut Supervisor, why| {
            sup.answer(client, Answer::Refused(why));
        };
        let stopping = self.is_stopping();
        match command {
            Command::Status | Command::Metrics => self.answer(client, Answer::Snapshot),
            Command::Stop => {
                self.answer(client, Answer::Stopping);
                self.probation_off = true;
                if let Phase::Probation { .. } = self.phase {
                    self.end_probation();
                } else if !stopping {
                    self.stop(now, false, Ok(()));
                }
            }
            Command::Rollback if self.ask_rollback(now) => {
                self.waiting.push((client, Waiting::Rollback));
            }
            Command::Rollback if self.rolling_back.is_some() => {
                self.waiting.push((client, Waiting::Rollback));
            }
            _ if matches!(self.phase, Phase::Probation { .. }) => {
                let pid = self.new_master.pid().unwrap_or_default();
                refuse(self, Refusal::Probation { pid })
            }
            _ if stopping => refuse(self, Refusal::Stopping),
            Command::Rollback => match self.old_master {
                Some(pid) => {
                    if !self.waiting.iter().any(|&(_, w)| w == Waiting::Rollback) {
                        self.actions.push_back(Action::AskRollback { pid });
                    }
                    self.waiting.push((client, Waiting::Rollback));
                }
                None => refuse(self, Refusal::NoRollback),
            },
            Command::Upgrade if self.old_master.is_some() => {
                let pid = self.old_master.unwrap_or_default();
                refuse(self, Refusal::ProbationOf { pid })
            }
            Command::Reload => {
                // The restart that answers it: the next one to begin.
                let restart = self.restarts_begun + 1;
                self.waiting.push((client, Waiting::Reload { restart }));
                if self.phase == Phase::Starting || self.restarting.is_some() {
                    // As a HUP then: one more restart follows the current one (or the start).
                    self.hup_pending = true;
                } else {
                    self.begin_restart();
                }
            }
            Command::Scale(_) if self.phase == Phase::Starting => refuse(self, Refusal::Starting),
            Command::Scale(n) => {
                let n = n.clamp(1, MAX_SCALE);
                self.supersede_scale(Some(n));
                self.waiting.push((client, Waiting::Scale(n)));
                while self.active_slots() < n {
                    self.add_slot();
                }
                let mut advance = false;
                while self.active_slots() > n {
                    advance |= self.close_last_slot_deferred(now);
                }
                if advance && self.restarting.is_none() {
                    self.advance_restart();
                }
                // Answered at the end of this burst, or once the new workers are ready.
            }
            Command::Upgrade => match self.new_master {
                NewMaster::Idle => {
                    self.new_master.on_usr2(false, &mut self.actions);
                    self.waiting.push((client, Waiting::Upgrade));
                }
                NewMaster::Starting | NewMaster::Waiting { .. } => {
                    self.waiting.push((client, Waiting::Upgrade));
                }
                NewMaster::Killed { pid }
                | NewMaster::Stopping { pid, .. }
                | NewMaster::Probation { pid } => {
                    refuse(self, Refusal::UpgradeUnderWay { pid: Some(pid) })
                }
            },
        }
    }

    /// Every `rollback` waiting gets `answer`.
    pub(super) fn answer_rollbacks(&mut self, answer: &Answer) {
        let mut answered = Vec::new();
        self.waiting.retain(|&(client, w)| {
            let take = w == Waiting::Rollback;
            if take {
                answered.push(client);
            }
            !take
        });
        for client in answered {
            self.answer(client, answer.clone());
        }
    }

    /// Queues the answer to `client`.
    pub(super) fn answer(&mut self, client: Client, answer: Answer) {
        self.actions.push_back(Action::Answer { client, answer });
    }

    /// The pids of the workers that hold a slot, are ready and not killed as stuck, in slot
    /// order.
    pub(super) fn serving_pids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter_map(|s| match *s {
                Slot::Running {
                    pid,
                    ready: Some(_),
                    stuck: false,
                    ..
                } => Some(pid),
                _ => None,
            })
            .collect()
    }

    /// A rolling restart ended: [`Action::Reloaded`], and the `reload`s it completes are
    /// answered.
    pub(super) fn reloaded(&mut self) {
        self.actions.push_back(Action::Reloaded);
        self.answer_reloads();
    }

    /// The `reload`s that the latest restart begun completes are answered (it ended, or it
    /// had nothing to replace).
    pub(super) fn answer_reloads(&mut self) {
        let ended = self.restarts_begun;
        let pids = self.serving_pids();
        let mut answered = Vec::new();
        self.waiting.retain(|&(client, w)| match w {
            Waiting::Reload { restart } if restart <= ended => {
                answered.push(client);
                false
            }
            _ => true,
        });
        for client in answered {
            self.answer(client, Answer::Reloaded { pids: pids.clone() });
        }
    }

    /// After a step of the upgrade: when it queued the outcome (handed over, or rolled
    /// back), every `upgrade` waiting gets it.
    pub(super) fn answer_upgrade_outcome(&mut self) {
        if !self.waiting.iter().any(|&(_, w)| w == Waiting::Upgrade) {
            return;
        }
        let outcome = self.actions.iter().rev().find_map(upgrade_outcome);
        if let Some(answer) = outcome {
            self.upgrade_answered(&answer);
        }
    }

    /// The upgrade's outcome is known: every `upgrade` waiting gets it.
    fn upgrade_answered(&mut self, answer: &Answer) {
        let mut answered = Vec::new();
        self.waiting.retain(|&(client, w)| {
            let take = w == Waiting::Upgrade;
            if take {
                answered.push(client);
            }
            !take
        });
        for client in answered {
            self.answer(client, answer.clone());
        }
    }

    /// The worker count changes another way than to `to` (`None`: TTIN or TTOU): the
    /// `scale`s waiting for another count are answered as superseded.
    pub(super) fn supersede_scale(&mut self, to: Option<usize>) {
        let mut answered = Vec::new();
        self.waiting.retain(|&(client, w)| match w {
            Waiting::Scale(n) if Some(n) != to => {
                answered.push(client);
                false
            }
            _ => true,
        });
        if answered.is_empty() {
            return;
        }
        let workers = to.unwrap_or_else(|| self.active_slots());
        for client in answered {
            self.answer(client, Answer::Refused(Refusal::Superseded { workers }));
        }
    }

    /// At the end of a burst: the `scale`s whose count is reached (every slot in service has
    /// a ready worker) are answered.
    pub(super) fn check_scaled(&mut self) {
        if self.phase != Phase::Running || self.waiting.is_empty() {
            return;
        }
        let active = self.active_slots();
        let all_ready = self.slots.iter().filter(|s| **s != Slot::Closed).all(|s| {
            matches!(
                s,
                Slot::Running {
                    ready: Some(_),
                    stuck: false,
                    ..
                }
            )
        });
        if !all_ready {
            return;
        }
        let mut answered = Vec::new();
        self.waiting.retain(|&(client, w)| match w {
            Waiting::Scale(n) if n == active => {
                answered.push(client);
                false
            }
            _ => true,
        });
        if answered.is_empty() {
            return;
        }
        let pids = self.serving_pids();
        for client in answered {
            self.answer(client, Answer::Scaled { pids: pids.clone() });
        }
    }

    /// A stop began: every command still waiting is answered with why it will not complete
    /// (the handover's new master, or the stop).
    pub(super) fn answer_all_waiting(&mut self) {
        let why = match self.handed_to {
            Some(pid) => Refusal::HandedOver { pid },
            None => Refusal::Stopping,
        };
        for (client, _) in std::mem::take(&mut self.waiting) {
            self.answer(client, Answer::Refused(why));
        }
    }

    /// The retired workers still draining: `(slot, pid)`.
    pub(crate) fn draining(&self) -> Vec<(usize, u32)> {
        self.retiring
            .iter()
            .map(|(&pid, r)| (r.slot, pid))
            .collect()
    }

    /// Whether a rolling restart is under way.
    pub(crate) fn is_reloading(&self) -> bool {
        self.reloading || self.hup_pending
    }

    /// `starting`, `running` or `stopping`, for the status.
    pub(crate) fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Probation { .. } => "probation",
            Phase::Stopping { .. } | Phase::Done(_) => "stopping",
        }
    }

    /// Whether any command waits for its outcome.
    #[cfg_attr(not(any(test, fuzzing)), allow(dead_code))]
    pub(crate) fn commands_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// TTIN's step: one slot more in service, its worker queued.
    pub(super) fn add_slot(&mut self) {
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

    /// Whether `signal` changes the worker count now (TTIN, or TTOU with more than one slot).
    pub(super) fn changes_count(&self, signal: Signal) -> bool {
        self.phase == Phase::Running
            && match signal {
                Signal::Ttin => true,
                Signal::Ttou => self.active_slots() > 1,
                _ => false,
            }
    }
}

/// How an upgrade's [`Action`] answers the `upgrade`s waiting, if it does.
fn upgrade_outcome(action: &Action) -> Option<Answer> {
    match *action {
        Action::HandedOver { pid } => Some(Answer::Upgraded { pid }),
        Action::RolledBack { why, .. } => Some(Answer::RolledBack(why)),
        _ => None,
    }
}
