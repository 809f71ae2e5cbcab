//! Unit tests of the upgrade probation (`probation.rs`), on both sides of a handover: the
//! supervisor driven directly, one event at a time, every worker ready as soon as it is
//! spawned.

use std::time::Duration;

use super::*;
use crate::sys::signal::Signal;

const SEC: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_secs(5);

fn cfg(workers: usize, probation: Duration) -> Config {
    Config {
        workers,
        recover_threshold: 3,
        recover_window: Duration::from_secs(60),
        recover_interval: Duration::ZERO,
        shutdown_grace: GRACE,
        upgrade_timeout: Duration::from_secs(60),
        upgrade_probation: probation,
    }
}

/// A supervisor and the processes it started: workers by pid, whether told to stop.
struct Run {
    sup: Supervisor,
    now: Duration,
    next_pid: u32,
    /// Live workers.
    live: Vec<u32>,
    /// Workers sent TERM or KILL.
    told: Vec<u32>,
    next_client: Client,
}

impl Run {
    fn new(cfg: Config) -> Run {
        let mut run = Run {
            sup: Supervisor::new(cfg),
            now: Duration::ZERO,
            next_pid: 100,
            live: Vec::new(),
            told: Vec::new(),
            next_client: 0,
        };
        run.settle();
        run
    }

    /// Performs every action queued (spawns start workers that are ready at once); returns
    /// them.
    fn settle(&mut self) -> Vec<Action> {
        let mut done = Vec::new();
        while let Some(action) = self.sup.next_action() {
            match &action {
                Action::Spawn { slot, .. } => {
                    let pid = self.next_pid;
                    self.next_pid += 1;
                    self.live.push(pid);
                    self.sup.on_spawned(*slot, pid, self.now);
                    self.sup.on_ready(pid, self.now);
                }
                Action::Signal { pid, .. } => self.told.push(*pid),
                Action::StartUpgrade => {
                    let pid = self.next_pid;
                    self.next_pid += 1;
                    self.sup.on_upgrade_started(pid, self.now);
                }
                _ => {}
            }
            done.push(action);
        }
        done
    }

    fn signal(&mut self, signal: Signal) -> Vec<Action> {
        self.sup.on_signal(signal, self.now);
        self.settle()
    }

    fn command(&mut self, command: Command) -> (Client, Vec<Action>) {
        let client = self.next_client;
        self.next_client += 1;
        self.sup.on_command(client, command, self.now);
        (client, self.settle())
    }

    fn answer(actions: &[Action], client: Client) -> Option<Answer> {
        actions.iter().find_map(|a| match a {
            Action::Answer { client: c, answer } if *c == client => Some(answer.clone()),
            _ => None,
        })
    }

    /// Every worker told to stop exits.
    fn told_exit(&mut self) -> Vec<Action> {
        let mut done = Vec::new();
        for pid in std::mem::take(&mut self.told) {
            if let Some(i) = self.live.iter().position(|&p| p == pid) {
                self.live.remove(i);
                self.sup.on_exit(pid, WorkerExit::Code(0), self.now);
                done.extend(self.settle());
            }
        }
        done
    }

    fn wake(&mut self, to: Duration) -> Vec<Action> {
        self.now = to;
        self.sup.on_timer(self.now);
        self.settle()
    }

    /// USR2, the new master ready, the old workers drained: returns the new master's pid
    /// and the actions since the workers began to exit.
    fn hand_over(&mut self) -> (u32, Vec<Action>) {
        self.signal(Signal::Usr2);
        let new = self.sup.new_master().expect("a new master");
        self.now += SEC;
        self.sup.on_upgrade_ready(self.now);
        let acts = self.settle();
        assert_eq!(acts[0], Action::HandedOver { pid: new });
        (new, self.told_exit())
    }
}

#[test]
fn without_a_probation_the_run_ends_once_the_old_workers_are_gone() {
    let mut run = Run::new(cfg(2, Duration::ZERO));
    let (new, acts) = run.hand_over();
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(run.sup.outcome(), Some(&Ok(())));
    assert_eq!(run.sup.new_master(), None, "{new} is not watched");
}

#[test]
fn with_a_probation_the_old_master_waits_then_ends_when_it_runs_out() {
    let mut run = Run::new(cfg(2, 30 * SEC));
    let (new, acts) = run.hand_over();
    let until = run.now + 30 * SEC;
    assert_eq!(acts, vec![Action::Probation { pid: new, until }]);
    assert_eq!(run.sup.outcome(), None);
    assert_eq!(run.sup.new_master(), Some(new), "still watched");
    assert_eq!(run.sup.state_name(), "probation");
    assert_eq!(run.sup.next_deadline(), Some(until));
    // Other commands are refused; status is answered.
    let (c, acts) = run.command(Command::Reload);
    assert_eq!(
        Run::answer(&acts, c),
        Some(Answer::Refused(Refusal::Probation { pid: new }))
    );
    let (c, acts) = run.command(Command::Status);
    assert_eq!(Run::answer(&acts, c), Some(Answer::Snapshot));
    // A USR2 is ignored.
    let acts = run.signal(Signal::Usr2);
    assert!(
        matches!(acts[..], [Action::UpgradeIgnored { .. }]),
        "{acts:?}"
    );
    assert!(run.wake(until - SEC).is_empty());
    assert_eq!(run.sup.outcome(), None);
    let acts = run.wake(until);
    assert_eq!(acts, vec![Action::ProbationEnded { pid: new }]);
    assert_eq!(run.sup.outcome(), Some(&Ok(())));
    assert_eq!(run.sup.new_master(), None);
}

#[test]
fn a_rollback_starts_the_workers_again_then_hands_back_and_answers() {
    let mut run = Run::new(cfg(3, 30 * SEC));
    let (new, _) = run.hand_over();
    assert!(run.live.is_empty());
    let (client, acts) = run.command(Command::Rollback);
    let spawns = acts
        .iter()
        .filter(|a| matches!(a, Action::Spawn { .. }))
        .count();
    assert_eq!(spawns, 3, "{acts:?}");
    let pids = run.live.clone();
    let back = acts
        .iter()
        .position(|a| {
            *a == Action::HandBack {
                pid: new,
                pids: pids.clone(),
            }
        })
        .unwrap_or_else(|| panic!("a hand-back: {acts:?}"));
    let ready_at = acts
        .iter()
        .rposition(|a| matches!(a, Action::Spawn { .. }))
        .expect("spawns");
    assert!(back > ready_at, "once every worker serves: {acts:?}");
    assert!(
        !acts.iter().any(|a| matches!(a, Action::Ready { .. })),
        "no second Ready: {acts:?}"
    );
    assert_eq!(
        Run::answer(&acts, client),
        Some(Answer::Restored { pids: pids.clone() })
    );
    assert_eq!(run.sup.state_name(), "running");
    assert!(!run.sup.is_stopping());
    // The new master is watched until it exits, and killed if it outlasts its stop.
    assert_eq!(run.sup.new_master(), Some(new));
    let kill_at = run.now + GRACE + state::KILL_MARGIN;
    assert_eq!(run.sup.next_deadline(), Some(kill_at));
    let acts = run.wake(kill_at);
    assert_eq!(
        acts,
        vec![Action::SignalNewMaster {
            pid: new,
            signal: Signal::Kill
        }]
    );
    assert!(run.sup.on_upgrade_exit(new, WorkerExit::Code(0), run.now));
    let acts = run.settle();
    assert_eq!(
        acts,
        vec![Action::NewMasterExited {
            pid: new,
            exit: WorkerExit::Code(0)
        }]
    );
    // The old master serves as before: an upgrade may start again, a TERM stops it.
    assert_eq!(run.signal(Signal::Usr2), vec![Action::StartUpgrade]);
}

#[test]
fn hup_to_the_old_master_on_probation_rolls_back() {
    let mut run = Run::new(cfg(2, 30 * SEC));
    let (new, _) = run.hand_over();
    let acts = run.signal(Signal::Hup);
    assert!(
        acts.contains(&Action::HandBack {
            pid: new,
            pids: run.live.clone()
        }),
        "{acts:?}"
    );
    assert_eq!(run.live.len(), 2);
}

#[test]
fn a_rollback_asked_while_the_old_workers_drain_begins_once_they_are_gone() {
    let mut run = Run::new(cfg(2, 30 * SEC));
    run.signal(Signal::Usr2);
    let new = run.sup.new_master().expect("a new master");
    run.sup.on_upgrade_ready(run.now);
    run.settle();
    let (client, acts) = run.command(Command::Rollback);
    assert!(acts.is_empty(), "it waits for the drain: {acts:?}");
    let acts = run.told_exit();
    assert!(
        !acts.iter().any(|a| matches!(a, Action::Probation { .. })),
        "{acts:?}"
    );
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::HandBack { pid, .. } if *pid == new)),
        "{acts:?}"
    );
    assert!(matches!(
        Run::answer(&acts, client),
        Some(Answer::Restored { .. })
    ));
}

#[test]
fn a_stop_ends_the_probation_and_leaves_the_new_master_serving() {
    // TERM during the probation.
    let mut run = Run::new(cfg(1, 30 * SEC));
    let (new, _) = run.hand_over();
    let acts = run.signal(Signal::Term);
    assert_eq!(acts, vec![Action::ProbationEnded { pid: new }]);
    assert_eq!(run.sup.outcome(), Some(&Ok(())));
    // `stop` during the probation.
    let mut run = Run::new(cfg(1, 30 * SEC));
    let (new, _) = run.hand_over();
    let (client, acts) = run.command(Command::Stop);
    assert_eq!(Run::answer(&acts, client), Some(Answer::Stopping));
    assert!(
        acts.contains(&Action::ProbationEnded { pid: new }),
        "{acts:?}"
    );
    assert_eq!(run.sup.outcome(), Some(&Ok(())));
    // TERM while the old workers drain: no probation; the drain is forced, as any second
    // TERM, and the new master is not signalled.
    let mut run = Run::new(cfg(1, 30 * SEC));
    run.signal(Signal::Usr2);
    let new = run.sup.new_master().expect("a new master");
    run.sup.on_upgrade_ready(run.now);
    run.settle();
    let acts = run.signal(Signal::Term);
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::SignalNewMaster { .. })),
        "{acts:?}"
    );
    let acts = run.told_exit();
    assert_eq!(acts, vec![Action::ProbationEnded { pid: new }]);
    assert_eq!(run.sup.outcome(), Some(&Ok(())));
}

#[test]
fn the_new_master_exiting_during_the_probation_ends_it() {
    let mut run = Run::new(cfg(1, 30 * SEC));
    let (new, _) = run.hand_over();
    assert!(run.sup.on_upgrade_exit(new, WorkerExit::Code(0), run.now));
    let acts = run.settle();
    assert_eq!(
        acts,
        vec![
            Action::NewMasterExited {
                pid: new,
                exit: WorkerExit::Code(0)
            },
            Action::ProbationEnded { pid: new }
        ]
    );
    assert_eq!(run.sup.outcome(), Some(&Ok(())));
}

#[test]
fn a_failed_rollback_leaves_the_service_to_the_new_master() {
    let mut run = Run::new(cfg(1, 30 * SEC));
    let (new, _) = run.hand_over();
    run.sup.on_signal(Signal::Hup, run.now);
    // The rollback's spawn fails: the run ends, the new master serves on.
    let Some(Action::Spawn { slot, .. }) = run.sup.next_action() else {
        panic!("a spawn");
    };
    run.sup.on_spawn_failed(slot, run.now);
    let acts = run.settle();
    assert!(
        acts.contains(&Action::ProbationEnded { pid: new }),
        "{acts:?}"
    );
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::SignalNewMaster { .. } | Action::HandBack { .. })),
        "{acts:?}"
    );
    assert!(matches!(run.sup.outcome(), Some(Err(_))));
}

#[test]
fn rollback_without_a_probation_is_refused() {
    let mut run = Run::new(cfg(1, Duration::ZERO));
    let (c, acts) = run.command(Command::Rollback);
    assert_eq!(
        Run::answer(&acts, c),
        Some(Answer::Refused(Refusal::NoRollback))
    );
}

// ---- The new master's side.

#[test]
fn a_new_master_on_probation_refuses_upgrades_and_forwards_rollback() {
    let mut run = Run::new(cfg(2, 30 * SEC));
    run.sup.on_probation(42);
    assert_eq!(run.sup.old_master(), Some(42));
    let acts = run.signal(Signal::Usr2);
    assert_eq!(
        acts,
        vec![Action::UpgradeIgnored {
            why: Ignored::Probation { pid: 42 }
        }]
    );
    let (c, acts) = run.command(Command::Upgrade);
    assert_eq!(
        Run::answer(&acts, c),
        Some(Answer::Refused(Refusal::ProbationOf { pid: 42 }))
    );
    let (first, acts) = run.command(Command::Rollback);
    assert_eq!(acts, vec![Action::AskRollback { pid: 42 }]);
    let (second, acts) = run.command(Command::Rollback);
    assert!(acts.is_empty(), "joins the first: {acts:?}");
    run.sup.on_handed_back(run.now);
    let acts = run.settle();
    assert_eq!(acts[0], Action::HandedBack { pid: 42 });
    for c in [first, second] {
        assert_eq!(Run::answer(&acts, c), Some(Answer::HandedBack { pid: 42 }));
    }
    // Its workers drain without a `Stopping` (the service goes on in the old master).
    assert!(!acts.contains(&Action::Stopping), "{acts:?}");
    let mut told = run.told.clone();
    told.sort_unstable();
    assert_eq!(told, run.live, "{acts:?}");
    run.told_exit();
    assert_eq!(run.sup.outcome(), Some(&Ok(())));
}

#[test]
fn a_new_master_whose_old_master_ended_its_probation_upgrades_again() {
    let mut run = Run::new(cfg(1, 30 * SEC));
    run.sup.on_probation(42);
    let (c, _) = run.command(Command::Rollback);
    run.sup.on_probation_ended();
    let acts = run.settle();
    assert_eq!(
        Run::answer(&acts, c),
        Some(Answer::Refused(Refusal::ProbationEnded { pid: 42 }))
    );
    let (c, acts) = run.command(Command::Rollback);
    assert_eq!(
        Run::answer(&acts, c),
        Some(Answer::Refused(Refusal::NoRollback))
    );
    assert_eq!(run.signal(Signal::Usr2), vec![Action::StartUpgrade]);
    // A hand-back after the end changes nothing.
    run.sup.on_handed_back(run.now);
    assert!(run.settle().is_empty());
}

#[test]
fn a_driver_failure_during_the_probation_ends_it_with_the_failure() {
    let mut run = Run::new(cfg(1, 30 * SEC));
    let (new, _) = run.hand_over();
    run.sup.fail(run.now);
    let acts = run.settle();
    assert_eq!(acts, vec![Action::ProbationEnded { pid: new }]);
    assert_eq!(run.sup.outcome(), Some(&Err(Failure::External)));
}
