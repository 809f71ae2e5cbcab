//! The binary upgrade's decisions (USR2): a sub-machine of the [`Supervisor`](super::Supervisor),
//! fed through its calling protocol.
//!
//! ```text
//!            USR2 (running, none under way)
//!   Idle ──────────────────────────────► Starting ── exec failed ──► Idle (RolledBack)
//!    ▲                                      │ started(pid)
//!    │                                      ▼
//!    │   exited before ready (RolledBack)  Waiting(pid, deadline) ── ready ──► handed over:
//!    ├────────────────────────────────────  │  │                              the old workers
//!    │                                      │  │ a stop (TERM, a failure)     drain, the run
//!    │   exited (NewMasterExited)           │  ▼                              ends; the new
//!    ├───────────────────────── Stopping(pid, kill_at) ── kill_at ──► KILL    master serves
//!    │                                      │
//!    │   exited (NewMasterExited)           │ deadline passed: KILL (RolledBack)
//!    └───────────────────────── Killed(pid) ◄┘
//! ```
//!
//! With an upgrade probation, `ready` leads to `Probation(pid)` instead: the new master serves
//! and stays watched through the probation (see `probation.rs`); the run's stop leaves it
//! alone.
//!
//! A second USR2 while one is under way, or during a stop, is ignored. The run's outcome
//! waits until the new master is handed over or gone: a master never returns while a new
//! master it started and did not hand over to is alive.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Action, Ignored, Rollback, WorkerExit};
use crate::sys::signal::Signal;

/// Where the upgrade stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NewMaster {
    /// No upgrade under way.
    Idle,
    /// The start was asked for ([`Action::StartUpgrade`]); its outcome is due.
    Starting,
    /// The new master runs and has until `deadline` to report that it serves.
    Waiting { pid: u32, deadline: Duration },
    /// It missed its deadline and was sent KILL; its exit is due.
    Killed { pid: u32 },
    /// The run stops: it was sent TERM, and KILL at `kill_at` (`None` once sent).
    Stopping { pid: u32, kill_at: Option<Duration> },
    /// It serves: this master handed over, and watches it through the upgrade probation.
    /// The run's stop leaves it alone.
    Probation { pid: u32 },
}

impl NewMaster {
    /// The new master's pid while it is ours to watch.
    pub(crate) fn pid(self) -> Option<u32> {
        match self {
            NewMaster::Waiting { pid, .. }
            | NewMaster::Killed { pid }
            | NewMaster::Stopping { pid, .. }
            | NewMaster::Probation { pid } => Some(pid),
            NewMaster::Idle | NewMaster::Starting => None,
        }
    }

    /// Whether nothing of the upgrade is left to wait for.
    pub(crate) fn is_idle(self) -> bool {
        self == NewMaster::Idle
    }

    /// When [`NewMaster::on_timer`] has something to do.
    pub(crate) fn deadline(self) -> Option<Duration> {
        match self {
            NewMaster::Waiting { deadline, .. } => Some(deadline),
            NewMaster::Stopping { kill_at, .. } => kill_at,
            _ => None,
        }
    }

    /// USR2: starts an upgrade unless `stopping` or one is under way.
    pub(crate) fn on_usr2(&mut self, stopping: bool, actions: &mut VecDeque<Action>) {
        let ignored = match *self {
            _ if stopping => Ignored::Stopping,
            NewMaster::Idle => {
                *self = NewMaster::Starting;
                actions.push_back(Action::StartUpgrade);
                return;
            }
            NewMaster::Starting => Ignored::UnderWay { pid: None },
            NewMaster::Waiting { pid, .. }
            | NewMaster::Killed { pid }
            | NewMaster::Stopping { pid, .. }
            | NewMaster::Probation { pid } => Ignored::UnderWay { pid: Some(pid) },
        };
        actions.push_back(Action::UpgradeIgnored { why: ignored });
    }

    /// The driver started the new master as `pid`: it has `timeout` to be ready.
    pub(crate) fn on_started(&mut self, pid: u32, now: Duration, timeout: Duration) {
        if *self == NewMaster::Starting {
            *self = NewMaster::Waiting {
                pid,
                deadline: now.saturating_add(timeout),
            };
        }
    }

    /// The driver could not start the new master.
    pub(crate) fn on_start_failed(&mut self, actions: &mut VecDeque<Action>) {
        if *self == NewMaster::Starting {
            *self = NewMaster::Idle;
            actions.push_back(Action::RolledBack {
                pid: None,
                why: Rollback::ExecFailed,
            });
        }
    }

    /// The new master reported that it serves: returns its pid when this hands over (the
    /// old generation is to drain), `None` when the report comes too late (after a KILL or a
    /// stop) or from nothing under way. With a `probation` it stays watched.
    pub(crate) fn on_ready(&mut self, probation: bool) -> Option<u32> {
        let NewMaster::Waiting { pid, .. } = *self else {
            return None;
        };
        *self = if probation {
            NewMaster::Probation { pid }
        } else {
            NewMaster::Idle
        };
        Some(pid)
    }

    /// A child `pid` exited: returns whether it was the new master (and then what it
    /// means).
    pub(crate) fn on_exit(
        &mut self,
        pid: u32,
        exit: WorkerExit,
        actions: &mut VecDeque<Action>,
    ) -> bool {
        if self.pid() != Some(pid) {
            return false;
        }
        let action = match *self {
            NewMaster::Waiting { .. } => Action::RolledBack {
                pid: Some(pid),
                why: Rollback::Exited(exit),
            },
            _ => Action::NewMasterExited { pid, exit },
        };
        *self = NewMaster::Idle;
        actions.push_back(action);
        true
    }

    /// Time has reached `now`: a missed deadline rolls back, a stop's grace ends in KILL.
    pub(crate) fn on_timer(
        &mut self,
        now: Duration,
        timeout: Duration,
        actions: &mut VecDeque<Action>,
    ) {
        match *self {
            NewMaster::Waiting { pid, deadline } if deadline <= now => {
                *self = NewMaster::Killed { pid };
                actions.push_back(Action::RolledBack {
                    pid: Some(pid),
                    why: Rollback::NotReady(timeout),
                });
                actions.push_back(Action::SignalNewMaster {
                    pid,
                    signal: Signal::Kill,
                });
            }
            NewMaster::Stopping {
                pid,
                kill_at: Some(t),
            } if t <= now => {
                *self = NewMaster::Stopping { pid, kill_at: None };
                actions.push_back(Action::SignalNewMaster {
                    pid,
                    signal: Signal::Kill,
                });
            }
            _ => {}
        }
    }

    /// The run stops: a new master that is not serving yet stops too, gracefully (TERM,
    /// KILL after `grace`) unless `kill`.
    pub(crate) fn on_stop(
        &mut self,
        now: Duration,
        grace: Duration,
        kill: bool,
        actions: &mut VecDeque<Action>,
    ) {
        let (pid, told) = match *self {
            NewMaster::Waiting { pid, .. } => (pid, false),
            NewMaster::Stopping { pid, kill_at } => {
                if kill_at.is_none() {
                    // Sent KILL already.
                    return;
                }
                (pid, true)
            }
            // The stop dropped the queued start.
            NewMaster::Starting => {
                *self = NewMaster::Idle;
                return;
            }
            // Killed already; or serving, and none of this run's stop.
            NewMaster::Killed { .. } | NewMaster::Idle | NewMaster::Probation { .. } => return,
        };
        if kill {
            *self = NewMaster::Stopping { pid, kill_at: None };
            actions.push_back(Action::SignalNewMaster {
                pid,
                signal: Signal::Kill,
            });
        } else if !told {
            *self = NewMaster::Stopping {
                pid,
                kill_at: Some(now.saturating_add(grace)),
            };
            actions.push_back(Action::SignalNewMaster {
                pid,
                signal: Signal::Term,
            });
        } else if let NewMaster::Stopping {
            kill_at: Some(t), ..
        } = self
        {
            // Told already (handed back): KILL no later than this stop's grace period.
            *t = (*t).min(now.saturating_add(grace));
        }
    }
}
