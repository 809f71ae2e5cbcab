//! A reference model of the driver and of the worker processes, shared by the unit tests
//! (`tests.rs`) and the fuzz target (`crate::fuzzing::supervisor`).
//!
//! [`Model`] drives a [`Supervisor`] the way the master's loop does: every action is
//! performed at once (a spawn is answered with a fresh pid, or a failure, before the next
//! action), each event is followed by the actions it caused, then `on_timer`, and time only
//! moves forward. It keeps its own table of the worker processes and its own account of the
//! policies (how each exit is judged, the crash-loop guard, the respawn delays, when a retiring
//! worker may be told, the outcome), and panics as soon as the supervisor disagrees with it or
//! an invariant breaks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::{
    Action, Answer, Cause, Client, Command, Config, CountedExit, EXIT_FATAL, Exited, FAST_CRASH,
    Failure, Ignored, MAX_BACKOFF_FACTOR, MAX_SCALE, REPORTED_EXITS, Refusal, Rollback,
    SPAWN_RETRY_DELAY, Slot, Supervisor, Why, WorkerExit, guard,
};
use crate::sys::signal::{self, Signal};

/// The pid of the first worker the model starts.
pub(crate) const FIRST_PID: u32 = 100;

/// A bound on the actions one burst may produce; more is an action storm.
const MAX_ACTIONS_PER_PUMP: usize = 100_000;

/// A live worker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proc {
    pub(crate) slot: usize,
    pub(crate) started: Duration,
    /// When it reported ready.
    pub(crate) ready: Option<Duration>,
    /// It no longer holds its slot: replaced by a rolling restart, or its slot was closed.
    pub(crate) retired: bool,
    /// It was sent TERM.
    pub(crate) term: bool,
    /// It was sent KILL.
    pub(crate) kill: bool,
    /// The earliest and the latest time its KILL may be due (it is due a grace period after
    /// its TERM, which the model knows within the burst of actions that carried it).
    kill_due: Option<(Duration, Duration)>,
    /// Signals forwarded to it.
    pub(crate) forwarded: Vec<Signal>,
    /// It was killed as stuck.
    pub(crate) stuck: bool,
    /// KILL does not end it (its signals are refused, or it is stuck in the kernel).
    pub(crate) unkillable: bool,
    /// How its exit will be judged since it was retired (replaced, recycled, its slot
    /// closed, or stuck).
    pub(crate) retire_cause: Option<Cause>,
}

impl Proc {
    /// Whether it was told to stop.
    pub(crate) fn told(&self) -> bool {
        self.term || self.kill
    }
}

/// A stop the model expects: when it began and whether it is graceful (TERM first).
#[derive(Debug, Clone, Copy)]
struct Stop {
    at: Duration,
    graceful: bool,
    /// The stop of a handed-over upgrade: graceful, without a `Stopping` action.
    handover: bool,
}

/// The new master of a binary upgrade, as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upgrade {
    /// None under way.
    Idle,
    /// Started as `pid`; it must be ready by `deadline`.
    Waiting { pid: u32, deadline: Duration },
    /// Told to go: rolled back (KILL), or stopped with the run (TERM, then KILL), not yet
    /// reaped.
    Going { pid: u32, term: bool, kill: bool },
    /// It serves, handed over to, and is watched through the upgrade probation.
    Probation { pid: u32 },
}

/// The upgrade probation of an old master, as the model sees it (the new master's pid in
/// each state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probation {
    /// None: no probation configured, no handover, or it ended.
    None,
    /// Handed over: the old workers drain. A rollback asked meanwhile (`asked`) begins once
    /// they are gone; after a stop or a failure (`off`) the probation ends then instead.
    Draining { pid: u32, asked: bool, off: bool },
    /// The old workers are gone: the run waits until `until`.
    Waiting { pid: u32, until: Duration },
    /// It ends now (its time ran out, a stop): `ProbationEnded` is due.
    Ending { pid: u32 },
    /// The rollback's workers start; the new master is handed back once they all serve.
    RollingBack { pid: u32 },
}

/// A respawn the model expects for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Respawn {
    at: Duration,
    recovers: Option<u32>,
}

/// The supervisor, the driver around it and the processes it starts. See the module docs.
pub(crate) struct Model {
    pub(crate) sup: Supervisor,
    cfg: Config,
    pub(crate) now: Duration,
    /// The time of the latest `on_timer` call.
    timer_at: Duration,
    /// When the current burst of actions began.
    burst_at: Duration,
    pub(crate) next_pid: u32,
    /// The process table: every spawned worker not yet reported exited.
    pub(crate) live: BTreeMap<u32, Proc>,
    /// Reported exited: pid → slot.
    pub(crate) reaped: BTreeMap<u32, usize>,
    /// Every action performed, in order.
    pub(crate) log: Vec<Action>,

    // How the driver and the processes behave.
    /// How many of the next spawns fail.
    pub(crate) spawn_failures: u32,
    /// The next spawn is followed by a failure of the driver (a failing `on_child_spawn`).
    pub(crate) fail_after_spawn: bool,
    /// The Ready action is followed by a failure of the driver (a failing `on_master_ready`).
    pub(crate) fail_after_ready: bool,
    /// Every new worker reports ready at once, after its spawn.
    pub(crate) auto_ready: bool,
    /// How long performing a spawn takes.
    pub(crate) spawn_cost: Duration,

    // What the model expects.
    /// Slots that exist: the initial ones plus those TTIN added.
    pub(crate) slots_created: usize,
    /// Slots in service: `0..active`.
    active: usize,
    /// TTIN signals not yet answered by a spawn.
    ttin_pending: usize,
    /// The Ready action was performed.
    pub(crate) ready_seen: bool,
    /// A Reloading action was not yet followed by Reloaded.
    reloading: bool,
    /// HUPs received while the run was going on.
    hups: usize,
    stop: Option<Stop>,
    /// The outcome the model expects, once a stop began.
    expected: Option<Result<(), Failure>>,
    stopping_seen: bool,
    /// Counted exits within the window, oldest first.
    counted: VecDeque<(Duration, CountedExit)>,
    /// Fast-exit streak per slot.
    streak: Vec<u32>,
    respawns: BTreeMap<usize, Respawn>,
    /// Slots out of service whose Closed action is still due.
    closing: BTreeSet<usize>,
    /// A signal being forwarded, and the workers still to receive it.
    forwarding: Option<(Signal, BTreeSet<u32>)>,
    /// Workers queued for recycling, not replaced yet: pid → slot.
    recycling: BTreeMap<u32, usize>,

    // The binary upgrade.
    /// The next start of a new master fails.
    pub(crate) upgrade_start_fails: bool,
    /// The new master.
    pub(crate) upgrade: Upgrade,
    /// Upgrade actions the model expects, in order, before the burst ends.
    upgrade_due: VecDeque<Action>,
    /// New masters handed over to.
    pub(crate) handovers: usize,
    /// Upgrades rolled back.
    pub(crate) rollbacks: usize,
    /// The stop gave up on unkillable workers (an Unreaped action).
    pub(crate) gave_up: bool,
    /// The upgrade probation.
    pub(crate) probation: Probation,
    /// Slots in service at the latest handover: a rollback starts that many workers.
    handover_slots: usize,
    /// When the latest hand-back told the new master to stop (its KILL is due the grace
    /// period and the margin later).
    handback_at: Option<Duration>,
    /// Rollbacks that handed the service back.
    pub(crate) handbacks: usize,

    // The operator's commands.
    /// Commands not answered yet: client → (command, length of the log when it came).
    pub(crate) clients: BTreeMap<Client, (Command, usize)>,
    pub(crate) next_client: Client,
    /// Every answer, in order.
    pub(crate) answers: Vec<(Client, Command, Answer)>,
}

impl Model {
    /// A supervisor with its initial spawns queued, nothing performed yet: set the driver's
    /// behaviour, then [`Model::settle`].
    pub(crate) fn new(cfg: Config) -> Model {
        Model {
            sup: Supervisor::new(cfg.clone()),
            now: Duration::ZERO,
            timer_at: Duration::ZERO,
            burst_at: Duration::ZERO,
            next_pid: FIRST_PID,
            live: BTreeMap::new(),
            reaped: BTreeMap::new(),
            log: Vec::new(),
            spawn_failures: 0,
            fail_after_spawn: false,
            fail_after_ready: false,
            auto_ready: true,
            spawn_cost: Duration::ZERO,
            slots_created: cfg.workers,
            active: cfg.workers,
            ttin_pending: 0,
            ready_seen: false,
            reloading: false,
            hups: 0,
            stop: None,
            expected: None,
            stopping_seen: false,
            counted: VecDeque::new(),
            streak: vec![0; cfg.workers],
            respawns: BTreeMap::new(),
            closing: BTreeSet::new(),
            forwarding: None,
            recycling: BTreeMap::new(),
            upgrade_start_fails: false,
            upgrade: Upgrade::Idle,
            upgrade_due: VecDeque::new(),
            handovers: 0,
            rollbacks: 0,
            gave_up: false,
            probation: Probation::None,
            handover_slots: 0,
            handback_at: None,
            handbacks: 0,
            clients: BTreeMap::new(),
            next_client: 0,
            answers: Vec::new(),
            cfg,
        }
    }

    pub(crate) fn advance(&mut self, d: Duration) {
        self.now = self.now.saturating_add(d);
    }

    /// Moves time to the next deadline, as the driver's `epoll_wait` timeout does.
    pub(crate) fn wake_at_deadline(&mut self) {
        if let Some(deadline) = self.sup.next_deadline() {
            self.now = self.now.max(deadline);
        }
    }

    // ---- Events. Each is followed by `settle`.

    /// A signal reaches the master.
    pub(crate) fn signal(&mut self, signal: Signal) {
        let running = self.ready_seen && self.stop.is_none();
        match signal {
            Signal::Term | Signal::Int => {
                self.probation_stop();
                if self.stop.is_some_and(|s| s.graceful) && self.sup_kill_pending() {
                    // A second TERM kills at once: the new master too, if it was only told.
                    if let Upgrade::Going {
                        pid,
                        term: true,
                        kill: false,
                    } = self.upgrade
                    {
                        self.upgrade_due.push_back(Action::SignalNewMaster {
                            pid,
                            signal: Signal::Kill,
                        });
                    }
                }
                self.expect_stop(true, Ok(()))
            }
            Signal::Usr2 => {
                let due = match self.upgrade {
                    _ if self.stop.is_some() => Action::UpgradeIgnored {
                        why: Ignored::Stopping,
                    },
                    Upgrade::Idle => Action::StartUpgrade,
                    Upgrade::Waiting { pid, .. }
                    | Upgrade::Going { pid, .. }
                    | Upgrade::Probation { pid } => Action::UpgradeIgnored {
                        why: Ignored::UnderWay { pid: Some(pid) },
                    },
                };
                self.upgrade_due.push_back(due);
            }
            Signal::Usr1 if self.stop.is_none() => {
                let pids = self.live.keys().copied().collect();
                self.forwarding = Some((signal, pids));
            }
            Signal::Ttin if running => self.ttin_pending += 1,
            Signal::Hup if self.rollback_asked() => {}
            Signal::Hup if self.stop.is_none() => self.hups += 1,
            _ => {}
        }
        self.sup.on_signal(signal, self.now);
        self.after_call();
    }

    /// A command of the operator reaches the master; returns its client.
    pub(crate) fn command(&mut self, command: Command) -> Client {
        let client = self.next_client;
        self.next_client += 1;
        self.clients.insert(client, (command, self.log.len()));
        let running = self.ready_seen && self.stop.is_none();
        if command == Command::Stop {
            self.probation_stop();
        }
        match command {
            // Otherwise it joins a rollback under way, or is refused.
            Command::Rollback => {
                self.rollback_asked();
            }
            Command::Stop if self.stop.is_none() => self.expect_stop(true, Ok(())),
            Command::Reload if self.stop.is_none() => self.hups += 1,
            Command::Scale(n) if running => {
                self.ttin_pending += n.clamp(1, MAX_SCALE).saturating_sub(self.active)
            }
            Command::Upgrade if self.stop.is_none() && self.upgrade == Upgrade::Idle => {
                self.upgrade_due.push_back(Action::StartUpgrade)
            }
            _ => {}
        }
        self.sup.on_command(client, command, self.now);
        self.after_call();
        client
    }

    /// An answer: to a client waiting, once, and what its command can be answered with.
    fn answered(&mut self, client: Client, answer: Answer) {
        let Some((command, since)) = self.clients.remove(&client) else {
            panic!("{answer:?} to client {client}, which waits for nothing");
        };
        let after = &self.log[since..];
        let serving = |pids: &[u32]| {
            for pid in pids {
                let p = self.live.get(pid);
                assert!(
                    p.is_some_and(|p| p.ready.is_some() && !p.retired && !p.told()),
                    "{answer:?} to {command:?}: {pid} is not a serving worker"
                );
            }
        };
        match (&answer, command) {
            (Answer::Snapshot, Command::Status | Command::Metrics) => {}
            (Answer::Stopping, Command::Stop) => {
                assert!(self.stop.is_some(), "{answer:?} without a stop")
            }
            (Answer::Reloaded { pids }, Command::Reload) => {
                assert!(self.stop.is_none(), "{answer:?} during a stop");
                serving(pids);
            }
            (Answer::Scaled { pids }, Command::Scale(n)) => {
                assert_eq!(
                    pids.len(),
                    n.clamp(1, MAX_SCALE),
                    "{answer:?} to {command:?}"
                );
                assert_eq!(
                    self.active,
                    pids.len(),
                    "{answer:?}: {} in service",
                    self.active
                );
                serving(pids);
            }
            (Answer::Upgraded { pid }, Command::Upgrade) => assert!(
                after.contains(&Action::HandedOver { pid: *pid }),
                "{answer:?} without a handover to it since the command"
            ),
            (Answer::RolledBack(why), Command::Upgrade) => assert!(
                after
                    .iter()
                    .any(|a| matches!(a, Action::RolledBack { why: w, .. } if w == why)),
                "{answer:?} without that rollback since the command"
            ),
            (Answer::Refused(Refusal::Stopping), _) => {
                assert!(self.stop.is_some(), "{answer:?} while the run goes on")
            }
            (Answer::Refused(Refusal::HandedOver { pid }), _) => assert!(
                self.log.contains(&Action::HandedOver { pid: *pid }),
                "{answer:?} without that handover"
            ),
            (Answer::Refused(Refusal::Starting), Command::Scale(_)) => {
                assert!(!self.ready_seen, "{answer:?} after the master was ready")
            }
            (Answer::Refused(Refusal::NoRollback), Command::Rollback) => {}
            (Answer::Restored { pids }, Command::Rollback) => {
                assert!(
                    after
                        .iter()
                        .any(|a| matches!(a, Action::HandBack { pids: p, .. } if p == pids)),
                    "{answer:?} without that hand-back since the command"
                );
                serving(pids);
            }
            (Answer::Refused(Refusal::Probation { pid }), _) => assert!(
                matches!(self.probation, Probation::Waiting { pid: p, .. } if p == *pid),
                "{answer:?} while {:?}",
                self.probation
            ),
            (Answer::Refused(Refusal::ProbationEnded { pid }), Command::Rollback) => assert!(
                after.contains(&Action::ProbationEnded { pid: *pid }),
                "{answer:?} without that end since the command"
            ),
            (Answer::Refused(Refusal::Superseded { .. }), Command::Scale(_)) => {}
            (Answer::Refused(Refusal::UpgradeUnderWay { .. }), Command::Upgrade) => {
                assert!(self.upgrade != Upgrade::Idle, "{answer:?} with no upgrade")
            }
            _ => panic!("{answer:?} is no answer to {command:?}"),
        }
        self.answers.push((client, command, answer));
    }

    /// Whether the run's stop still has its KILL to send (a second TERM then kills at once).
    fn sup_kill_pending(&self) -> bool {
        matches!(
            self.sup.phase,
            super::Phase::Stopping {
                kill_at: Some(_),
                ..
            }
        )
    }

    /// The new master reports that it serves.
    pub(crate) fn upgrade_ready(&mut self) {
        if let (Upgrade::Waiting { pid, .. }, None) = (self.upgrade, self.stop) {
            self.upgrade = Upgrade::Idle;
            if !self.cfg.upgrade_probation.is_zero() {
                self.upgrade = Upgrade::Probation { pid };
                self.probation = Probation::Draining {
                    pid,
                    asked: false,
                    off: false,
                };
                self.handover_slots = self.active;
            }
            self.handovers += 1;
            self.upgrade_due.push_back(Action::HandedOver { pid });
            self.stop = Some(Stop {
                at: self.now,
                graceful: true,
                handover: true,
            });
            self.expected = Some(Ok(()));
            self.respawns.clear();
            self.recycling.clear();
        }
        self.sup.on_upgrade_ready(self.now);
        self.after_call();
    }

    /// The new master, if one runs, exits with `how`.
    pub(crate) fn upgrade_exit(&mut self, how: WorkerExit) {
        let (pid, due) = match self.upgrade {
            Upgrade::Idle => {
                // Not the new master: a pid the supervisor does not know is no upgrade's.
                let pid = self.next_pid + 1000;
                let got = self.sup.on_upgrade_exit(pid, how, self.now);
                assert!(!got, "on_upgrade_exit of {pid}, no new master");
                self.after_call();
                return;
            }
            Upgrade::Waiting { pid, .. } => {
                self.rollbacks += 1;
                let why = Rollback::Exited(how);
                let pid_ = Some(pid);
                (pid, Action::RolledBack { pid: pid_, why })
            }
            Upgrade::Going { pid, .. } => {
                self.handback_at = None;
                (pid, Action::NewMasterExited { pid, exit: how })
            }
            Upgrade::Probation { pid } => {
                // A rollback under way goes on without it; else the probation ends with it.
                if !matches!(self.probation, Probation::RollingBack { .. }) {
                    self.probation = Probation::Ending { pid };
                }
                (pid, Action::NewMasterExited { pid, exit: how })
            }
        };
        self.upgrade = Upgrade::Idle;
        self.upgrade_due.push_back(due);
        let got = self.sup.on_upgrade_exit(pid, how, self.now);
        assert!(got, "on_upgrade_exit({pid}) of the new master");
        self.after_call();
    }

    /// Performs an upgrade action: the one the model expects next.
    fn perform_upgrade(&mut self, action: Action) {
        let due = self.upgrade_due.pop_front();
        assert_eq!(
            due.as_ref(),
            Some(&action),
            "the upgrade's action (expected {due:?}); state {:?}",
            self.upgrade
        );
        match action {
            Action::StartUpgrade => {
                assert!(self.stop.is_none(), "{action:?} during the stop");
                if std::mem::take(&mut self.upgrade_start_fails) {
                    self.rollbacks += 1;
                    self.upgrade_due.push_back(Action::RolledBack {
                        pid: None,
                        why: Rollback::ExecFailed,
                    });
                    self.sup.on_upgrade_failed(self.now);
                } else {
                    let pid = self.next_pid;
                    self.next_pid += 1;
                    let deadline = self.now.saturating_add(self.cfg.upgrade_timeout);
                    self.upgrade = Upgrade::Waiting { pid, deadline };
                    self.sup.on_upgrade_started(pid, self.now);
                    assert_eq!(
                        self.sup.new_master(),
                        Some(pid),
                        "the new master is tracked"
                    );
                }
                self.after_call();
            }
            Action::SignalNewMaster { pid, signal } => {
                let Upgrade::Going { pid: p, term, kill } = &mut self.upgrade else {
                    panic!("{action:?}: no new master is going");
                };
                assert_eq!(*p, pid, "{action:?}");
                match signal {
                    Signal::Term => {
                        assert!(!*term && !*kill, "{action:?}: told before");
                        *term = true;
                    }
                    Signal::Kill => {
                        assert!(!*kill, "{action:?}: a second KILL");
                        *kill = true;
                    }
                    _ => panic!("{action:?}: no such signal to a new master"),
                }
            }
            Action::HandedOver { .. }
            | Action::RolledBack { .. }
            | Action::UpgradeIgnored { .. }
            | Action::NewMasterExited { .. } => {}
            _ => unreachable!("not an upgrade action: {action:?}"),
        }
    }

    /// Before `on_timer(now)`: the upgrade actions its deadlines bring.
    fn upgrade_timer(&mut self) {
        let now = self.now;
        if let Probation::Waiting { pid, until } = self.probation {
            if until <= now {
                self.probation = Probation::Ending { pid };
            }
        }
        match self.upgrade {
            Upgrade::Waiting { pid, deadline } if deadline <= now => {
                self.rollbacks += 1;
                self.upgrade = Upgrade::Going {
                    pid,
                    term: false,
                    kill: false,
                };
                self.upgrade_due.push_back(Action::RolledBack {
                    pid: Some(pid),
                    why: Rollback::NotReady(self.cfg.upgrade_timeout),
                });
                self.upgrade_due.push_back(Action::SignalNewMaster {
                    pid,
                    signal: Signal::Kill,
                });
            }
            Upgrade::Going {
                pid,
                term: true,
                kill: false,
            } if now >= self.new_master_kill_due() => {
                self.upgrade_due.push_back(Action::SignalNewMaster {
                    pid,
                    signal: Signal::Kill,
                });
            }
            _ => {}
        }
    }

    /// Every live worker becomes unkillable: KILL no longer ends it.
    pub(crate) fn make_unkillable(&mut self) {
        for p in self.live.values_mut() {
            p.unkillable = true;
        }
    }

    /// The live worker `pid` reports that it is inside `serve`.
    pub(crate) fn ready(&mut self, pid: u32) {
        let now = self.now;
        let proc = self.live.get_mut(&pid).expect("ready of a live worker");
        assert!(proc.ready.is_none(), "{pid} reports ready twice");
        proc.ready = Some(now);
        self.sup.on_ready(pid, now);
        self.after_call();
    }

    /// The live worker `pid` was reaped: checks how the supervisor judges the exit.
    pub(crate) fn exit(&mut self, pid: u32, how: WorkerExit) -> Exited {
        let proc = self.live.remove(&pid).expect("exit of a live worker");
        self.recycling.remove(&pid);
        self.reaped.insert(pid, proc.slot);
        let cause = self.expected_cause(&proc, how);
        let got = self.sup.on_exit(pid, how, self.now);
        let want = Exited {
            slot: proc.slot,
            cause,
        };
        assert_eq!(
            got,
            Some(want),
            "on_exit({pid}, {how:?}) of {proc:?} at {:?}",
            self.now
        );
        self.after_exit(pid, &proc, how, cause);
        self.after_call();
        want
    }

    /// An exit the driver would never report for a worker (a pid reaped before, or an
    /// orphan's): ignored, and nothing changes.
    pub(crate) fn unknown_exit(&mut self, pid: u32) {
        if self.live.contains_key(&pid) {
            return;
        }
        let before = self.sup.live_pids();
        let outcome = self.sup.outcome().cloned();
        let got = self.sup.on_exit(pid, WorkerExit::Code(0), self.now);
        assert_eq!(got, None, "on_exit of unknown pid {pid}");
        assert_eq!(
            self.sup.live_pids(),
            before,
            "an unknown exit changed the workers"
        );
        assert_eq!(self.sup.outcome().cloned(), outcome);
        assert!(
            self.sup.actions.is_empty(),
            "an unknown exit made an action"
        );
    }

    /// The driver fails (a hook returned an error, a system call failed).
    pub(crate) fn fail(&mut self) {
        if let Probation::Waiting { pid, .. } = self.probation {
            // The probation ends with the run; the new master serves on.
            self.probation = Probation::Ending { pid };
        }
        self.expect_stop(false, Err(Failure::External));
        self.expected = Some(Err(Failure::External));
        self.sup.fail(self.now);
        self.after_call();
    }

    /// The master recycles `pid` (past its lifetime or memory ceiling): checks whether the
    /// supervisor takes it, and returns that.
    pub(crate) fn recycle(&mut self, pid: u32) -> bool {
        let eligible = self.ready_seen && self.serving(pid);
        let slot = self.live.get(&pid).map(|p| p.slot);
        let busy = slot.is_some_and(|slot| self.sup.restarting.is_some_and(|(s, _)| s == slot));
        let queued = slot.is_some_and(|slot| self.sup.restart_queue.iter().any(|r| r.slot == slot));
        let before = self.sup.live_pids();
        let took = self.sup.recycle(pid);
        assert_eq!(
            took,
            eligible && !busy,
            "recycle({pid}): eligible {eligible}, its slot being replaced {busy}"
        );
        if took && !queued {
            self.recycling.insert(pid, slot.expect("a live worker"));
        }
        if !took {
            assert_eq!(
                self.sup.live_pids(),
                before,
                "a refused recycling changed the workers"
            );
            assert!(
                self.sup.actions.is_empty(),
                "a refused recycling made an action"
            );
        }
        self.after_call();
        took
    }

    /// The master finds `pid` stuck: checks whether the supervisor kills it, and returns
    /// that.
    pub(crate) fn kill_stuck(&mut self, pid: u32) -> bool {
        let eligible = self.serving(pid);
        let took = self.sup.kill_stuck(pid);
        assert_eq!(took, eligible, "kill_stuck({pid})");
        if !took {
            assert!(
                self.sup.actions.is_empty(),
                "a refused stuck kill made an action"
            );
        }
        self.after_call();
        took
    }

    /// Whether `pid` is a live worker the master's health checks may judge: ready, holding
    /// its slot, not told to stop, not stuck, and the run is not stopping.
    fn serving(&self, pid: u32) -> bool {
        self.stop.is_none()
            && self
                .live
                .get(&pid)
                .is_some_and(|p| p.ready.is_some() && !p.retired && !p.told() && !p.stuck)
    }

    /// Every live worker that `which` selects exits with `how`, one event at a time.
    pub(crate) fn exit_all(&mut self, which: impl Fn(&Proc) -> bool, how: WorkerExit) {
        let pids: Vec<u32> = self
            .live
            .iter()
            .filter(|(_, p)| which(p))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in pids {
            self.exit(pid, how);
            self.pump();
        }
    }

    // ---- The driver's loop.

    /// After an event: performs the queued actions, runs `on_timer`, performs again; with
    /// `auto_ready`, new workers then report ready, each as an event. Checks the invariants.
    pub(crate) fn settle(&mut self) {
        loop {
            self.pump();
            self.timer_at = self.now;
            self.upgrade_timer();
            self.sup.on_timer(self.now);
            self.after_call();
            self.pump();
            if !self.auto_ready {
                break;
            }
            let fresh: Vec<u32> = self
                .live
                .iter()
                .filter(|(_, p)| p.ready.is_none() && !p.told())
                .map(|(&pid, _)| pid)
                .collect();
            if fresh.is_empty() {
                break;
            }
            for pid in fresh {
                self.ready(pid);
                self.pump();
            }
        }
        if let Some((signal, missed)) = self.forwarding.take() {
            assert!(
                missed.is_empty(),
                "{signal} was not forwarded to {missed:?}"
            );
        }
        self.check();
    }

    /// Performs every queued action, checking each.
    pub(crate) fn pump(&mut self) {
        self.burst_at = self.now;
        let mut n = 0;
        while let Some(action) = self.sup.next_action() {
            n += 1;
            assert!(n <= MAX_ACTIONS_PER_PUMP, "action storm: {action:?}");
            self.log.push(action.clone());
            self.perform(action);
        }
        self.ttin_pending = 0;
        assert!(
            self.upgrade_due.is_empty(),
            "upgrade actions due and not made: {:?} (state {:?})",
            self.upgrade_due,
            self.upgrade
        );
    }

    fn perform(&mut self, action: Action) {
        let stopping = self.sup.is_stopping();
        match action {
            Action::Spawn { slot, recovers } => self.spawn(slot, recovers),
            Action::Signal { pid, signal, why } => self.deliver(pid, signal, why),
            Action::Ready { ref pids } => {
                assert!(!self.ready_seen, "a second {action:?}");
                assert!(!stopping, "{action:?} after the stop began");
                self.ready_seen = true;
                let workers = self.cfg.workers;
                assert_eq!(pids.len(), workers, "{action:?}");
                let mut slots = BTreeSet::new();
                for pid in pids {
                    let Some(p) = self.live.get(pid) else {
                        panic!("{action:?}: {pid} is not a live worker");
                    };
                    assert!(p.ready.is_some(), "{action:?}: {pid} did not report ready");
                    slots.insert(p.slot);
                }
                assert_eq!(slots, (0..workers).collect(), "{action:?}");
                if self.fail_after_ready {
                    self.fail();
                }
            }
            Action::Reloading => {
                assert!(self.hups > 0, "{action:?} without a HUP");
                assert!(!stopping, "{action:?} after the stop began");
                assert!(!self.reloading, "{action:?} twice without Reloaded");
                self.reloading = true;
            }
            Action::Reloaded => {
                assert!(!stopping, "{action:?} after the stop began");
                assert!(self.reloading, "{action:?} without Reloading");
                self.reloading = false;
            }
            Action::Answer { client, answer } => self.answered(client, answer),
            Action::Unreaped { ref pids } => {
                assert!(stopping, "{action:?} while the run goes on");
                assert!(!self.gave_up, "a second {action:?}");
                let mut live: Vec<u32> = self.live.keys().copied().collect();
                if let Upgrade::Going { pid, .. } = self.upgrade {
                    live.push(pid);
                }
                live.sort_unstable();
                assert_eq!(*pids, live, "{action:?}: not every live child");
                assert!(!pids.is_empty(), "{action:?} with nothing alive");
                for pid in pids {
                    if let Some(p) = self.live.get(pid) {
                        assert!(p.kill, "{action:?}: {pid} was never sent KILL");
                    }
                }
                self.gave_up = true;
                if self.expected == Some(Ok(())) {
                    self.expected = Some(Err(Failure::Unreaped { pids: pids.clone() }));
                }
            }
            Action::StartUpgrade
            | Action::UpgradeIgnored { .. }
            | Action::SignalNewMaster { .. }
            | Action::HandedOver { .. }
            | Action::RolledBack { .. }
            | Action::NewMasterExited { .. } => self.perform_upgrade(action),
            Action::Probation { .. }
            | Action::ProbationEnded { .. }
            | Action::HandBack { .. }
            | Action::AskRollback { .. }
            | Action::HandedBack { .. } => self.perform_probation(action),
            Action::Stopping => {
                assert!(stopping, "{action:?} without a stop");
                assert!(!self.stopping_seen, "a second {action:?}");
                assert!(
                    self.stop.is_some_and(|s| s.graceful && !s.handover),
                    "{action:?} for a stop that is not graceful, or a handover"
                );
                self.stopping_seen = true;
            }
            // (A Steer queued with its TTIN's spawn may still come after a failing spawn hook
            // began the stop.)
            Action::Steer { active } => {
                if active > self.active {
                    assert_eq!(active, self.active + 1, "{action:?} from {}", self.active);
                    self.closing.remove(&self.active);
                    // A slot is made with its Steer; its Spawn may have been dropped by a
                    // stop that began first (a `scale` adds several in one step).
                    if active > self.slots_created {
                        self.slots_created = active;
                        self.streak.resize(active, 0);
                    }
                } else {
                    assert!(
                        active + 1 == self.active && active >= 1,
                        "{action:?} from {}",
                        self.active
                    );
                    self.closing.insert(active);
                    self.respawns.remove(&active);
                    for (pid, p) in self.live.iter_mut().filter(|(_, p)| p.slot == active) {
                        if !p.retired {
                            p.retired = true;
                            p.retire_cause = Some(if p.stuck {
                                Cause::Stuck
                            } else {
                                Cause::Retired
                            });
                        }
                        self.recycling.remove(pid);
                    }
                }
                self.active = active;
            }
            Action::Closed { slot } => {
                assert!(slot < self.slots_created, "{action:?}: no such slot");
                assert!(
                    slot >= self.active || stopping,
                    "{action:?}: the slot is in service"
                );
                let left: Vec<u32> = self.pids_in(slot).collect();
                assert!(left.is_empty(), "{action:?} while {left:?} live");
                let was_closing = self.closing.remove(&slot);
                assert!(
                    was_closing || stopping,
                    "{action:?}, but the slot was not closing"
                );
            }
        }
    }

    fn spawn(&mut self, slot: usize, recovers: Option<u32>) {
        let action = Action::Spawn { slot, recovers };
        assert!(
            !self.sup.is_stopping() && self.stop.is_none(),
            "{action:?} after the stop began"
        );
        if slot >= self.active {
            assert!(
                slot == self.active && self.ttin_pending > 0,
                "{action:?}: only {} slots are in service",
                self.active
            );
            self.ttin_pending -= 1;
            if slot == self.slots_created {
                self.slots_created += 1;
                self.streak.push(0);
            }
        }
        match self.respawns.remove(&slot) {
            Some(due) => {
                assert_eq!(recovers, due.recovers, "{action:?}: expected {due:?}");
                assert!(self.now >= due.at, "{action:?} before its time: {due:?}");
            }
            None => assert_eq!(recovers, None, "{action:?}: no respawn was due"),
        }
        if let Some(old) = recovers {
            assert!(!self.live.contains_key(&old), "{action:?}: {old} is alive");
            assert_eq!(
                self.reaped.get(&old),
                Some(&slot),
                "{action:?}: {old} was no worker of this slot"
            );
        }
        // A live worker still holding the slot is being replaced by a rolling restart.
        let holders: Vec<u32> = self
            .pids_in(slot)
            .filter(|pid| !self.live[pid].retired)
            .collect();
        if !holders.is_empty() {
            let holder = holders[0];
            let recycled = self.recycling.remove(&holder).is_some();
            assert!(
                holders.len() == 1 && recovers.is_none() && (self.hups > 0 || recycled),
                "{action:?}: the slot runs {holders:?}"
            );
            let p = self.live.get_mut(&holder).expect("live");
            p.retired = true;
            p.retire_cause = Some(if p.stuck {
                Cause::Stuck
            } else if recycled {
                Cause::Recycled
            } else {
                Cause::Replaced
            });
        }
        self.now = self.now.saturating_add(self.spawn_cost);
        if self.spawn_failures > 0 {
            self.spawn_failures -= 1;
            self.sup.on_spawn_failed(slot, self.now);
            if !self.ready_seen {
                self.expect_stop(false, Err(Failure::External));
            } else if self.stop.is_none() {
                let counted = CountedExit {
                    slot,
                    pid: 0,
                    exit: WorkerExit::Code(-1),
                    was_ready: false,
                };
                if !self.count(counted) {
                    let at = self.now + self.cfg.recover_interval.max(SPAWN_RETRY_DELAY);
                    self.respawns.insert(slot, Respawn { at, recovers });
                }
            }
            self.after_call();
            return;
        }
        let pid = self.next_pid;
        self.next_pid += 1;
        self.live.insert(
            pid,
            Proc {
                slot,
                started: self.now,
                ready: None,
                retired: false,
                term: false,
                kill: false,
                kill_due: None,
                forwarded: Vec::new(),
                stuck: false,
                unkillable: false,
                retire_cause: None,
            },
        );
        self.sup.on_spawned(slot, pid, self.now);
        self.after_call();
        assert_eq!(
            self.sup.slot_of(pid),
            Some(slot),
            "{action:?}: the new worker {pid} is not tracked (a leaked process)"
        );
        if self.fail_after_spawn {
            self.fail_after_spawn = false;
            self.fail();
        }
    }

    fn deliver(&mut self, pid: u32, signal: Signal, why: Why) {
        let action = Action::Signal { pid, signal, why };
        let stopping = self.sup.is_stopping();
        let stop = self.stop;
        let grace = self.cfg.shutdown_grace;
        let (burst_at, now) = (self.burst_at, self.now);
        // Whether the worker's slot has a ready worker that replaces it.
        let Some(p) = self.live.get(&pid) else {
            panic!("{action:?}: {pid} is not a live worker");
        };
        let slot = p.slot;
        let replaced = self.live.iter().any(|(&q, w)| {
            q != pid && w.slot == slot && !w.retired && !w.told() && w.ready.is_some()
        });
        let closed = slot >= self.active;
        let p = self.live.get_mut(&pid).expect("live");
        match (signal, why) {
            (Signal::Term, Why::Stop | Why::Retire) => {
                assert!(!p.term, "{action:?}: a second TERM");
                p.term = true;
                p.kill_due = Some(if why == Why::Stop {
                    let at = stop
                        .filter(|s| s.graceful && stopping)
                        .unwrap_or_else(|| panic!("{action:?} without a graceful stop"))
                        .at;
                    (at + grace, at + grace)
                } else {
                    assert!(!stopping, "{action:?} during the stop");
                    assert!(
                        closed || replaced,
                        "{action:?} before the replacement in slot {slot} is ready"
                    );
                    p.retired = true;
                    (burst_at + grace, now + grace)
                });
            }
            // A stuck worker killed before the stop and retired unTERMed: the stop's grace
            // period ends for it too.
            (Signal::Kill, Why::GraceExpired) if p.kill_due.is_none() && p.stuck => {
                let at = stop
                    .filter(|_| stopping)
                    .unwrap_or_else(|| panic!("{action:?} while the run goes on"))
                    .at;
                assert!(
                    now >= at + grace,
                    "{action:?} at {now:?}, before the stop's grace ends"
                );
            }
            (Signal::Kill, Why::GraceExpired) => {
                let Some((due, _)) = p.kill_due else {
                    panic!("{action:?}: no TERM was sent before");
                };
                assert!(
                    now >= due,
                    "{action:?} at {now:?}, before the grace ends at {due:?}"
                );
                p.kill = true;
            }
            (Signal::Kill, Why::Kill) => {
                assert!(stopping, "{action:?} while the run goes on");
                p.kill = true;
            }
            (Signal::Kill, Why::Stuck) => {
                assert!(!stopping, "{action:?} during the stop");
                assert!(
                    p.ready.is_some() && !p.retired && !p.told() && !p.stuck,
                    "{action:?}: {p:?} is not a serving worker"
                );
                p.kill = true;
                p.stuck = true;
            }
            (Signal::Usr1, Why::Forward) => {
                let Some((forwarding, to)) = &mut self.forwarding else {
                    panic!("{action:?}: no signal to forward");
                };
                assert_eq!(*forwarding, signal, "{action:?}");
                assert!(to.remove(&pid), "{action:?}: sent twice, or to a newcomer");
                p.forwarded.push(signal);
            }
            _ => panic!("{action:?}: the supervisor sends no such signal"),
        }
    }

    // ---- The policies, as the model sees them.

    /// How the exit of `proc` must be judged.
    fn expected_cause(&self, proc: &Proc, how: WorkerExit) -> Cause {
        if let Some(cause) = proc.retire_cause {
            return cause;
        }
        if proc.stuck {
            return Cause::Stuck;
        }
        if self.stop.is_some() {
            return Cause::Requested;
        }
        if how == WorkerExit::Code(EXIT_FATAL) {
            return Cause::Fatal;
        }
        if let WorkerExit::Signal(s) = how {
            if proc.forwarded.iter().any(|f| f.raw() == s.raw()) {
                return Cause::Forwarded;
            }
        }
        let self_inflicted = match how {
            WorkerExit::Code(_) => true,
            WorkerExit::Signal(s) => signal::is_fault(s.raw()),
        };
        match proc.ready {
            None => Cause::BootFailure,
            Some(t) if self.now.saturating_sub(t) < FAST_CRASH && self_inflicted => {
                Cause::BootFailure
            }
            Some(_) => Cause::Crashed,
        }
    }

    fn after_exit(&mut self, pid: u32, proc: &Proc, how: WorkerExit, cause: Cause) {
        let slot = proc.slot;
        let delay = match cause {
            Cause::Requested | Cause::Replaced | Cause::Retired | Cause::Recycled => return,
            // Killed as stuck after its slot got a replacement, or during the stop.
            Cause::Stuck if self.stop.is_some() || proc.retired => return,
            Cause::Stuck => Duration::ZERO,
            Cause::Fatal => {
                let failure = Failure::WorkerFatal {
                    slot,
                    pid,
                    code: EXIT_FATAL,
                };
                self.expect_stop(true, Err(failure));
                return;
            }
            Cause::Forwarded => Duration::ZERO,
            Cause::BootFailure | Cause::Crashed => {
                if cause == Cause::BootFailure {
                    let counted = CountedExit {
                        slot,
                        pid,
                        exit: how,
                        was_ready: proc.ready.is_some(),
                    };
                    if self.count(counted) {
                        return;
                    }
                }
                let lived = self.now.saturating_sub(proc.started);
                self.streak[slot] = if lived < FAST_CRASH {
                    self.streak[slot].saturating_add(1)
                } else {
                    1
                };
                self.backoff(self.streak[slot])
            }
        };
        let due = Respawn {
            at: self.now.saturating_add(delay),
            recovers: Some(pid),
        };
        self.respawns.insert(slot, due);
    }

    /// The respawn delay after the `streak`-th fast exit in a row: the interval, doubling
    /// from the second on, up to 32 times (zero stays zero).
    fn backoff(&self, streak: u32) -> Duration {
        let factor = 2u32
            .saturating_pow(streak.saturating_sub(1))
            .min(MAX_BACKOFF_FACTOR);
        self.cfg.recover_interval.saturating_mul(factor)
    }

    /// Counts a boot failure; returns whether it is one too many.
    fn count(&mut self, exit: CountedExit) -> bool {
        let now = self.now;
        self.counted.push_back((now, exit));
        let window = self.cfg.recover_window;
        // Up to `EXACT_UP_TO`, an exit counts while it is less than `window` old; above it, the
        // window is counted in slices, and an exit counts while its slice reaches into it.
        let exact = self.cfg.recover_threshold <= guard::EXACT_UP_TO;
        let width = guard::slice_width(window);
        let first = guard::first_slice(now, window, width);
        let inside = |t: Duration| {
            if exact {
                now.saturating_sub(t) < window
            } else {
                !window.is_zero() && t.as_nanos() / width >= first
            }
        };
        // Time only moves forward: the exits that left the window are the oldest ones.
        while self.counted.front().is_some_and(|&(t, _)| !inside(t)) {
            self.counted.pop_front();
        }
        if self.counted.len() <= self.cfg.recover_threshold {
            return false;
        }
        let count = self.counted.len();
        let skip = count.saturating_sub(REPORTED_EXITS);
        let latest = self.counted.iter().skip(skip).map(|&(_, e)| e).collect();
        self.counted.clear();
        self.expect_stop(false, Err(Failure::OverRecovery { count, latest }));
        true
    }

    /// The model expects a stop to begin now, if none began before.
    fn expect_stop(&mut self, graceful: bool, result: Result<(), Failure>) {
        if let Probation::RollingBack { pid } = self.probation {
            // A stop during the rollback's start: the service stays with the new master.
            self.probation = Probation::Draining {
                pid,
                asked: false,
                off: true,
            };
        }
        if let (false, Some(_)) = (graceful, self.stop) {
            // A failure during a stop kills at once: the new master too, if only told.
            if let Upgrade::Going {
                pid,
                term: true,
                kill: false,
            } = self.upgrade
            {
                if self.sup_kill_pending() {
                    self.upgrade_due.push_back(Action::SignalNewMaster {
                        pid,
                        signal: Signal::Kill,
                    });
                }
            }
        }
        if let (
            false,
            None,
            Upgrade::Going {
                pid,
                term: true,
                kill: false,
            },
        ) = (graceful, self.stop, self.upgrade)
        {
            // A forced stop after a hand-back kills the new master still going (once).
            let kill = Action::SignalNewMaster {
                pid,
                signal: Signal::Kill,
            };
            if !self.upgrade_due.contains(&kill) {
                self.upgrade_due.push_back(kill);
            }
        }
        if self.stop.is_none() {
            // A new master not serving yet stops with the run.
            if let Upgrade::Waiting { pid, .. } = self.upgrade {
                self.upgrade = Upgrade::Going {
                    pid,
                    term: false,
                    kill: false,
                };
                let signal = if graceful { Signal::Term } else { Signal::Kill };
                self.upgrade_due
                    .push_back(Action::SignalNewMaster { pid, signal });
            }
            self.stop = Some(Stop {
                at: self.now,
                graceful,
                handover: false,
            });
            self.expected = Some(result);
            self.respawns.clear();
            self.recycling.clear();
        }
    }

    /// TERM or `stop` reach the master: no probation after the stop, or the end of one.
    fn probation_stop(&mut self) {
        match self.probation {
            Probation::Waiting { pid, .. } => self.probation = Probation::Ending { pid },
            Probation::Draining { pid, asked, .. } => {
                self.probation = Probation::Draining {
                    pid,
                    asked,
                    off: true,
                }
            }
            _ => {}
        }
    }

    /// HUP or `rollback` reach the master: returns whether the probation takes it (a
    /// rollback begins now, or once the old workers are gone).
    fn rollback_asked(&mut self) -> bool {
        match self.probation {
            Probation::Waiting { pid, .. } => {
                self.begin_rollback(pid);
                true
            }
            Probation::Draining {
                pid, off: false, ..
            } if self.expected == Some(Ok(())) => {
                self.probation = Probation::Draining {
                    pid,
                    asked: true,
                    off: false,
                };
                true
            }
            _ => false,
        }
    }

    /// The rollback begins: the run goes on again, its workers to start.
    fn begin_rollback(&mut self, pid: u32) {
        self.probation = Probation::RollingBack { pid };
        self.reloading = false;
        self.stop = None;
        self.expected = None;
        self.ready_seen = false;
        self.stopping_seen = false;
        self.respawns.clear();
        self.recycling.clear();
    }

    /// Performs an action of the upgrade probation.
    fn perform_probation(&mut self, action: Action) {
        match action {
            Action::Probation { pid, until } => {
                assert_eq!(
                    self.probation,
                    Probation::Draining {
                        pid,
                        asked: false,
                        off: false
                    },
                    "{action:?}"
                );
                assert!(
                    self.live.is_empty(),
                    "{action:?} while {:?} live",
                    self.live
                );
                assert_eq!(self.expected, Some(Ok(())), "{action:?}");
                assert_eq!(
                    until,
                    self.now.saturating_add(self.cfg.upgrade_probation),
                    "{action:?}"
                );
                self.probation = Probation::Waiting { pid, until };
            }
            Action::ProbationEnded { pid } => {
                let due = match self.probation {
                    Probation::Ending { pid: p } => p == pid,
                    Probation::Draining { pid: p, off, .. } => {
                        p == pid
                            && self.live.is_empty()
                            && (off || matches!(self.expected, Some(Err(_))))
                    }
                    _ => false,
                };
                assert!(due, "{action:?} while {:?}", self.probation);
                assert!(
                    matches!(self.upgrade, Upgrade::Probation { pid: p } if p == pid)
                        || self.upgrade == Upgrade::Idle,
                    "{action:?} with {:?}",
                    self.upgrade
                );
                self.probation = Probation::None;
                self.upgrade = Upgrade::Idle;
            }
            Action::HandBack { pid, ref pids } => {
                assert_eq!(self.probation, Probation::RollingBack { pid }, "{action:?}");
                let mut got = pids.clone();
                got.sort_unstable();
                let serving: Vec<u32> = self
                    .live
                    .iter()
                    .filter(|(_, p)| p.ready.is_some() && !p.told() && !p.retired && !p.stuck)
                    .map(|(&pid, _)| pid)
                    .collect();
                assert_eq!(got, serving, "{action:?}: not every serving worker");
                assert_eq!(pids.len(), self.handover_slots, "{action:?}");
                self.ready_seen = true;
                self.probation = Probation::None;
                self.handbacks += 1;
                if self.upgrade == (Upgrade::Probation { pid }) {
                    self.upgrade = Upgrade::Going {
                        pid,
                        term: true,
                        kill: false,
                    };
                    self.handback_at = Some(self.now);
                }
            }
            _ => panic!("{action:?}: the model plays an old master, never a new one"),
        }
    }

    /// When the new master sent TERM must be sent KILL: the grace period after the stop,
    /// or after a hand-back the grace period and the margin, whichever comes first.
    fn new_master_kill_due(&self) -> Duration {
        let handback = self
            .handback_at
            .map(|t| t + self.cfg.shutdown_grace + super::state::KILL_MARGIN);
        let stop = self.stop.map(|s| s.at + self.cfg.shutdown_grace);
        handback
            .into_iter()
            .chain(stop)
            .min()
            .expect("told with the stop or a hand-back")
    }

    /// After every call into the supervisor: it stops when the model expects it to.
    fn after_call(&mut self) {
        if let Probation::Draining {
            pid,
            asked: true,
            off: false,
        } = self.probation
        {
            // Once the old workers are gone, the rollback asked during the drain begins.
            let ok = self.expected == Some(Ok(()));
            if self.live.is_empty() && ok && self.upgrade == (Upgrade::Probation { pid }) {
                self.begin_rollback(pid);
            }
        }
        assert_eq!(
            self.sup.is_stopping(),
            self.stop.is_some(),
            "the supervisor's stop disagrees with the model (expected outcome {:?})",
            self.expected
        );
    }

    fn pids_in(&self, slot: usize) -> impl Iterator<Item = u32> + '_ {
        self.live
            .iter()
            .filter(move |(_, p)| p.slot == slot)
            .map(|(&pid, _)| pid)
    }

    /// The invariants that hold whenever every action has been performed.
    pub(crate) fn check(&self) {
        let sup = &self.sup;
        let stopping = sup.is_stopping();
        assert_eq!(stopping, self.stop.is_some(), "stop");

        // The commands: those answered at once were, none is left without an answer by a
        // stop, and the supervisor waits for exactly the model's.
        for (client, (command, _)) in &self.clients {
            assert!(
                matches!(
                    command,
                    Command::Reload | Command::Scale(_) | Command::Upgrade | Command::Rollback
                ),
                "{command:?} of client {client} was not answered at once"
            );
        }
        // (A rollback asked while the old workers drain waits for them, even when a stop
        // came since: it is answered when the probation ends, once they are gone.)
        let asked = matches!(self.probation, Probation::Draining { asked: true, .. });
        assert!(
            !stopping
                || self
                    .clients
                    .values()
                    .all(|(c, _)| asked && *c == Command::Rollback),
            "the stop left clients without an answer: {:?}",
            self.clients
        );
        assert_eq!(
            sup.commands_waiting(),
            self.clients.len(),
            "commands waiting"
        );

        // The process table.
        let mut live = sup.live_pids();
        live.sort_unstable();
        let n = live.len();
        live.dedup();
        assert_eq!(live.len(), n, "a pid is live twice: {:?}", sup.live_pids());
        let model: Vec<u32> = self.live.keys().copied().collect();
        assert_eq!(
            live, model,
            "the supervisor's workers differ from the processes"
        );
        for (&pid, p) in &self.live {
            let in_slot = sup.slots.iter().filter(|s| s.pid() == Some(pid)).count();
            let retiring = sup.retiring.get(&pid);
            assert_eq!(
                in_slot + usize::from(retiring.is_some()),
                1,
                "{pid} must have exactly one slot or retiring entry"
            );
            assert_eq!(sup.slot_of(pid), Some(p.slot), "slot of {pid}");
            assert_eq!(
                retiring.map(|r| r.slot),
                p.retired.then_some(p.slot),
                "{pid}"
            );
            if !p.retired && !stopping {
                assert!(
                    p.slot < self.active,
                    "{pid} holds slot {} out of service",
                    p.slot
                );
                assert!(
                    !p.told() || p.stuck,
                    "{pid} was told to stop but holds its slot"
                );
            }
            if !p.told() {
                assert!(!stopping, "{pid} was not told to stop during the stop");
            }
        }
        for slot in 0..self.slots_created {
            let holders = self.pids_in(slot).filter(|q| !self.live[q].retired).count();
            assert!(holders <= 1, "{holders} workers hold slot {slot}");
        }

        // The workers the health checks judge, and whether each is alone in its slot.
        let mut judged = sup.serving();
        judged.sort_unstable_by_key(|&(_, pid, _)| pid);
        let want: Vec<(usize, u32, bool)> = self
            .live
            .iter()
            .filter(|&(&pid, _)| self.serving(pid))
            .map(|(&pid, p)| {
                let alone = self.pids_in(p.slot).all(|q| q == pid);
                (p.slot, pid, alone)
            })
            .collect();
        assert_eq!(judged, want, "the workers the health checks judge");

        // Retiring workers: told once their replacement is ready, one restart at a time.
        let untold: Vec<u32> = self
            .live
            .iter()
            .filter(|(_, p)| p.retired && !p.told())
            .map(|(&pid, _)| pid)
            .collect();
        assert!(
            untold.len() <= 1,
            "several retiring workers wait: {untold:?}"
        );
        for pid in untold {
            let slot = self.live[&pid].slot;
            let ready = self
                .pids_in(slot)
                .any(|q| !self.live[&q].retired && self.live[&q].ready.is_some());
            assert!(
                !ready,
                "{pid} was not told although its replacement in slot {slot} is ready"
            );
        }

        // KILL deadlines.
        for (&pid, p) in &self.live {
            if let (Some((_, due)), false) = (p.kill_due, p.kill) {
                assert!(
                    self.timer_at < due,
                    "{pid}: its KILL was due at {due:?}, it is {:?}",
                    self.timer_at
                );
                assert!(
                    sup.next_deadline().is_some_and(|d| d <= due),
                    "{pid} was sent TERM, but no KILL is scheduled by {due:?}"
                );
            }
        }
        if let Some(d) = sup.next_deadline() {
            assert!(
                d > self.timer_at,
                "on_timer({:?}) left {d:?} due",
                self.timer_at
            );
        }

        // Slots.
        assert_eq!(sup.slot_count(), self.slots_created, "slots created");
        if !stopping {
            assert_eq!(sup.active_slots(), self.active, "slots in service");
            for (i, s) in sup.slots.iter().enumerate() {
                assert_eq!(*s == Slot::Closed, i >= self.active, "slot {i}: {s:?}");
            }
            for (&slot, due) in &self.respawns {
                assert!(slot < self.active, "respawn of slot {slot}, out of service");
                assert!(
                    due.at > self.timer_at,
                    "slot {slot} was due for respawn at {:?}; it is {:?}",
                    due.at,
                    self.timer_at
                );
                assert!(
                    sup.next_deadline().is_some_and(|d| d <= due.at),
                    "no timer for the respawn of slot {slot} at {:?}",
                    due.at
                );
            }
            for &slot in &self.closing {
                assert!(
                    self.pids_in(slot).next().is_some(),
                    "slot {slot} was closed and its workers are gone, but no Closed action"
                );
            }
            let all_ready = (0..self.cfg.workers).all(|slot| {
                self.pids_in(slot)
                    .any(|q| !self.live[&q].retired && self.live[&q].ready.is_some())
            });
            assert!(
                self.ready_seen || !all_ready,
                "every initial worker is ready, but no Ready action"
            );
            let restart_over =
                sup.restarting.is_none() && sup.restart_queue.is_empty() && !sup.hup_pending;
            assert!(
                !(self.reloading && restart_over),
                "the rolling restart is over, but no Reloaded action"
            );
        } else if self.stop.is_some_and(|s| s.graceful && !s.handover) {
            assert!(
                self.stopping_seen,
                "a graceful stop without a Stopping action"
            );
        }

        // The new master: watched, on a deadline, and never left behind by the outcome.
        assert_eq!(
            sup.new_master(),
            match self.upgrade {
                Upgrade::Idle => None,
                Upgrade::Waiting { pid, .. }
                | Upgrade::Going { pid, .. }
                | Upgrade::Probation { pid } => Some(pid),
            },
            "the new master"
        );
        match self.probation {
            Probation::Draining {
                asked: false,
                off: false,
                ..
            } => assert!(
                !self.live.is_empty() || self.expected != Some(Ok(())) || self.gave_up,
                "the old workers are gone, but no probation began"
            ),
            Probation::Waiting { until, .. } => {
                assert!(self.timer_at < until, "the probation's end passed");
                assert!(
                    sup.next_deadline().is_some_and(|d| d <= until),
                    "no timer for the probation's end {until:?}"
                );
            }
            Probation::Ending { .. } => panic!("the probation's end is due, but no ProbationEnded"),
            _ => {}
        }
        match self.upgrade {
            Upgrade::Waiting { deadline, .. } => {
                assert!(self.timer_at < deadline, "the upgrade's deadline passed");
                assert!(
                    sup.next_deadline().is_some_and(|d| d <= deadline),
                    "no timer for the upgrade's deadline {deadline:?}"
                );
            }
            Upgrade::Going {
                term: true,
                kill: false,
                ..
            } => {
                let due = self.new_master_kill_due();
                assert!(
                    sup.next_deadline().is_some_and(|d| d <= due),
                    "the new master was sent TERM, but no KILL is scheduled by {due:?}"
                );
            }
            _ => {}
        }

        // The outcome.
        match sup.outcome() {
            Some(got) => {
                assert!(
                    self.live.is_empty() || self.gave_up,
                    "an outcome while {:?} live",
                    self.live
                );
                assert!(
                    self.upgrade == Upgrade::Idle || self.gave_up,
                    "an outcome while the new master lives"
                );
                assert_eq!(Some(got), self.expected.as_ref(), "outcome");
            }
            None => assert!(
                !(stopping && self.live.is_empty() && self.upgrade == Upgrade::Idle),
                "every worker is gone after the stop, but no outcome"
            ),
        }
    }

    /// Ends the run as an operator does: TERM, then the workers exit when killed (and on
    /// TERM too with `exit_on_term`). The outcome must come within the grace period.
    pub(crate) fn finish(&mut self, exit_on_term: bool) {
        if self.sup.outcome().is_some() {
            return;
        }
        let start = self.now;
        self.signal(Signal::Term);
        self.settle();
        // A round reaps the workers that obey, or wakes at the next deadline, which KILLs at
        // least one more: a deadline per live worker plus the stop's own, two rounds each.
        let rounds = 2 * (self.live.len() + 3);
        for _ in 0..rounds {
            if self.sup.outcome().is_some() {
                break;
            }
            let before = self.live.len();
            let upgrade = self.upgrade;
            self.exit_all(
                |p| p.kill && !p.unkillable,
                WorkerExit::Signal(crate::exit::Signal::KILL),
            );
            if exit_on_term {
                self.exit_all(|p| p.term && !p.unkillable, WorkerExit::Code(0));
            }
            match self.upgrade {
                Upgrade::Going { kill: true, .. } => {
                    self.upgrade_exit(WorkerExit::Signal(crate::exit::Signal::KILL));
                    self.pump();
                }
                Upgrade::Going { term: true, .. } if exit_on_term => {
                    self.upgrade_exit(WorkerExit::Code(0));
                    self.pump();
                }
                _ => {}
            }
            if self.live.len() == before && self.upgrade == upgrade {
                assert!(
                    self.sup.next_deadline().is_some(),
                    "workers {:?} live (new master {:?}), none was killed, and no deadline",
                    self.live,
                    self.upgrade
                );
                self.wake_at_deadline();
            }
            self.settle();
        }
        assert!(
            self.sup.outcome().is_some(),
            "no outcome after TERM and every exit: {:?}",
            self.live
        );
        let bound = self.cfg.shutdown_grace + super::state::KILL_MARGIN;
        assert!(
            self.now.saturating_sub(start) <= bound,
            "the stop took {:?}, more than the grace period and the margin after KILL",
            self.now.saturating_sub(start)
        );
        if self.live.values().all(|p| !p.unkillable) && !self.gave_up {
            assert!(
                self.now.saturating_sub(start) <= self.cfg.shutdown_grace,
                "the stop took {:?}, more than the grace period",
                self.now.saturating_sub(start)
            );
        }
    }

    /// How many Spawn actions were performed so far.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn spawns(&self) -> usize {
        self.log
            .iter()
            .filter(|a| matches!(a, Action::Spawn { .. }))
            .count()
    }
}
