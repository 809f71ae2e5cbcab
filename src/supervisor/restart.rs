//! Rolling restarts (HUP), recycling, stuck workers and retirements (TTOU): a worker is told
//! to drain only once its replacement, if it has one, is ready.

use std::time::Duration;

use super::action::{Action, Cause, Why};
use super::state::{Phase, Restart, Retiring, Slot, Supervisor};
use crate::sys::signal::Signal;

impl Supervisor {
    /// TTOU: takes the highest slot in service out of service and retires its worker.
    pub(super) fn close_last_slot(&mut self, now: Duration) {
        if self.close_last_slot_deferred(now) {
            self.advance_restart();
        }
    }

    /// [`Supervisor::close_last_slot`], except that where the slot was mid-restart the
    /// restart's next step is left to the caller: returns whether it is due. (`scale` closes
    /// several slots in one step and advances once, after the last one's actions, so that no
    /// spawn comes before them.)
    pub(super) fn close_last_slot_deferred(&mut self, now: Duration) -> bool {
        let mut advance = false;
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
                advance = true;
            }
        }
        if self.slot_unused(slot) {
            self.actions.push_back(Action::Closed { slot });
        }
        advance
    }

    /// Whether no live worker (running or retiring) belongs to `slot`.
    pub(super) fn slot_unused(&self, slot: usize) -> bool {
        self.slots[slot].pid().is_none() && self.retiring.values().all(|r| r.slot != slot)
    }

    /// Moves the worker `pid` of `slot` to the retiring ones, to be judged as `cause` (as
    /// [`Cause::Stuck`], and counted as told, when it was killed as stuck already).
    pub(super) fn retire(&mut self, pid: u32, slot: usize, cause: Cause, stuck: bool) {
        let retiring = Retiring {
            slot,
            kill_at: None,
            told: stuck,
            cause: if stuck { Cause::Stuck } else { cause },
        };
        self.retiring.insert(pid, retiring);
    }

    /// HUP: queues every running slot for replacement and starts the first. Returns whether
    /// a restart began (some slot had a worker to replace).
    pub(super) fn begin_restart(&mut self) -> bool {
        self.restart_queue = (0..self.slots.len())
            .filter(|&s| matches!(self.slots[s], Slot::Running { .. }))
            .map(|slot| Restart {
                slot,
                pid: None,
                cause: Cause::Replaced,
            })
            .collect();
        self.restarts_begun += 1;
        if self.restart_queue.is_empty() {
            // Nothing to replace (every slot waits for a respawn): done at once.
            self.answer_reloads();
            return false;
        }
        self.actions.push_back(Action::Reloading);
        self.reloading = true;
        self.advance_restart();
        true
    }

    /// Starts the restart of the next slot in the rolling-restart queue.
    pub(super) fn advance_restart(&mut self) {
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
            self.reloaded();
        }
        if self.restarting.is_none() && std::mem::take(&mut self.hup_pending) {
            self.begin_restart();
        }
    }

    /// Tells a retiring worker to drain (once), with its KILL deadline.
    pub(super) fn tell_retiring(&mut self, pid: u32, now: Duration) {
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
}
