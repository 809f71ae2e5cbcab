use super::*;

const MS: Duration = Duration::from_millis(1);

fn cfg(workers: usize) -> Config {
    Config {
        workers,
        recover_threshold: 3,
        recover_window: Duration::from_secs(60),
        recover_interval: Duration::ZERO,
        shutdown_grace: Duration::from_secs(5),
    }
}

/// A supervisor plus a fake process table: spawns get fresh pids.
struct Harness {
    sup: Supervisor,
    next_pid: u32,
    now: Duration,
    /// Every action seen, in order.
    log: Vec<Action>,
}

impl Harness {
    fn new(cfg: Config) -> Harness {
        let mut h = Harness {
            sup: Supervisor::new(cfg),
            next_pid: 100,
            now: Duration::ZERO,
            log: Vec::new(),
        };
        h.pump();
        h
    }

    /// Performs queued actions: spawns succeed with fresh pids; returns the signals sent.
    fn pump(&mut self) -> Vec<(u32, i32)> {
        let mut signals = Vec::new();
        while let Some(a) = self.sup.next_action() {
            self.log.push(a.clone());
            match a {
                Action::Spawn { slot, .. } => {
                    let pid = self.next_pid;
                    self.next_pid += 1;
                    self.sup.on_spawned(slot, pid, self.now);
                }
                Action::Signal { pid, signal } => signals.push((pid, signal)),
                Action::Ready { .. } | Action::Closed { .. } => {}
            }
        }
        signals
    }

    fn exit(&mut self, pid: u32, exit: WorkerExit) -> Option<usize> {
        self.sup.on_exit(pid, exit, self.now)
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.sup.on_timer(self.now);
    }

    fn pid_of(&self, slot: usize) -> u32 {
        self.sup
            .live_pids()
            .into_iter()
            .find(|&p| self.sup.slot_of(p) == Some(slot))
            .expect("slot has a live worker")
    }

    fn spawns(&self) -> usize {
        self.log
            .iter()
            .filter(|a| matches!(a, Action::Spawn { .. }))
            .count()
    }
}

#[test]
fn spawns_every_slot_then_reports_ready_once() {
    let h = Harness::new(cfg(3));
    let spawns: Vec<_> = h.log[..3].to_vec();
    assert_eq!(
        spawns,
        (0..3)
            .map(|slot| Action::Spawn {
                slot,
                recovers: None
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(
        h.log[3],
        Action::Ready {
            pids: vec![100, 101, 102]
        }
    );
    assert_eq!(h.log.len(), 4);
    assert_eq!(
        h.sup.next_deadline(),
        None,
        "an idle supervisor has no timer"
    );
}

#[test]
fn crashed_worker_is_respawned_in_its_slot() {
    let mut h = Harness::new(cfg(2));
    assert_eq!(h.exit(101, WorkerExit::Signal(9)), Some(1));
    h.pump();
    assert_eq!(
        h.log.last(),
        Some(&Action::Spawn {
            slot: 1,
            recovers: Some(101)
        })
    );
    assert_eq!(h.pid_of(1), 102);
    assert_eq!(h.sup.slot_of(102), Some(1));
}

#[test]
fn clean_exit_zero_is_unexpected_and_respawned() {
    let mut h = Harness::new(cfg(1));
    h.exit(100, WorkerExit::Code(0));
    h.pump();
    assert_eq!(h.sup.live_pids(), vec![101]);
}

#[test]
fn unknown_pid_is_ignored() {
    let mut h = Harness::new(cfg(1));
    assert_eq!(h.exit(4242, WorkerExit::Code(0)), None);
    assert!(h.pump().is_empty());
    assert_eq!(h.sup.live_pids(), vec![100]);
}

#[test]
fn threshold_allows_k_respawns_then_over_recovery() {
    let mut h = Harness::new(cfg(2));
    for _ in 0..3 {
        let pid = h.pid_of(0);
        h.exit(pid, WorkerExit::Code(1));
        h.pump();
        assert!(h.sup.outcome().is_none());
    }
    assert_eq!(h.spawns(), 2 + 3, "three respawns with threshold 3");
    let pid = h.pid_of(0);
    h.exit(pid, WorkerExit::Code(1));
    let signals = h.pump();
    assert_eq!(signals, vec![(101, sig::KILL)], "the survivor is killed");
    assert_eq!(h.spawns(), 5, "no fourth respawn");
    assert!(h.sup.outcome().is_none(), "not done while a worker lives");
    h.exit(101, WorkerExit::Signal(9));
    assert_eq!(
        h.sup.outcome(),
        Some(&Err(Failure::OverRecovery { exits: 4 }))
    );
}

#[test]
fn exits_outside_the_window_are_forgotten() {
    let mut h = Harness::new(cfg(1));
    for _ in 0..10 {
        let pid = h.pid_of(0);
        h.exit(pid, WorkerExit::Code(1));
        h.pump();
        h.advance(Duration::from_secs(30));
    }
    assert!(
        h.sup.outcome().is_none(),
        "two exits per minute stay under threshold 3"
    );
    assert_eq!(h.sup.live_pids().len(), 1);
}

#[test]
fn threshold_zero_stops_at_first_exit() {
    let mut c = cfg(1);
    c.recover_threshold = 0;
    let mut h = Harness::new(c);
    h.exit(100, WorkerExit::Code(1));
    h.pump();
    assert_eq!(
        h.sup.outcome(),
        Some(&Err(Failure::OverRecovery { exits: 1 }))
    );
}

#[test]
fn recover_interval_delays_and_backs_off_fast_crashes() {
    let mut c = cfg(1);
    c.recover_interval = 100 * MS;
    c.recover_threshold = 100;
    let mut h = Harness::new(c);
    // First fast crash: wait one interval.
    h.exit(100, WorkerExit::Code(1));
    h.pump();
    assert_eq!(h.sup.live_pids(), Vec::<u32>::new());
    assert_eq!(h.sup.next_deadline(), Some(100 * MS));
    h.advance(99 * MS);
    h.pump();
    assert_eq!(h.spawns(), 1);
    h.advance(MS);
    h.pump();
    assert_eq!(h.spawns(), 2);
    // Second fast crash of the same slot: twice the interval.
    h.exit(101, WorkerExit::Code(1));
    assert_eq!(h.sup.next_deadline(), Some(h.now + 200 * MS));
    h.advance(200 * MS);
    h.pump();
    // A worker that ran long resets the backoff.
    h.advance(Duration::from_secs(10));
    let pid = h.pid_of(0);
    h.exit(pid, WorkerExit::Code(1));
    assert_eq!(h.sup.next_deadline(), Some(h.now + 100 * MS));
}

#[test]
fn backoff_is_capped() {
    let mut c = cfg(1);
    c.recover_interval = MS;
    c.recover_threshold = 1000;
    let mut h = Harness::new(c);
    for _ in 0..20 {
        let pid = h.pid_of(0);
        h.exit(pid, WorkerExit::Code(1));
        let wait = h.sup.next_deadline().unwrap() - h.now;
        assert!(wait <= 32 * MS, "delay {wait:?} is capped at 32 intervals");
        h.advance(wait);
        h.pump();
    }
}

#[test]
fn term_stops_gracefully_then_kills_after_grace() {
    let mut h = Harness::new(cfg(2));
    h.sup.on_signal(sig::TERM, h.now);
    assert_eq!(h.pump(), vec![(100, sig::TERM), (101, sig::TERM)]);
    h.exit(100, WorkerExit::Signal(sig::TERM));
    h.pump();
    assert_eq!(h.sup.next_deadline(), Some(Duration::from_secs(5)));
    h.advance(Duration::from_secs(5));
    assert_eq!(h.pump(), vec![(101, sig::KILL)]);
    assert!(h.sup.outcome().is_none());
    h.exit(101, WorkerExit::Signal(sig::KILL));
    assert_eq!(h.sup.outcome(), Some(&Ok(())));
    assert_eq!(h.spawns(), 2, "nothing respawned during the stop");
}

#[test]
fn second_term_kills_at_once() {
    let mut h = Harness::new(cfg(1));
    h.sup.on_signal(sig::INT, h.now);
    assert_eq!(h.pump(), vec![(100, sig::TERM)]);
    h.sup.on_signal(sig::TERM, h.now);
    assert_eq!(h.pump(), vec![(100, sig::KILL)]);
    assert_eq!(h.sup.next_deadline(), None);
}

#[test]
fn term_during_pending_respawn_cancels_it() {
    let mut c = cfg(2);
    c.recover_interval = Duration::from_secs(1);
    let mut h = Harness::new(c);
    h.exit(100, WorkerExit::Code(1));
    h.sup.on_signal(sig::TERM, h.now);
    assert_eq!(h.pump(), vec![(101, sig::TERM)]);
    h.exit(101, WorkerExit::Code(0));
    assert_eq!(h.sup.outcome(), Some(&Ok(())));
    h.advance(Duration::from_secs(2));
    h.pump();
    assert_eq!(h.spawns(), 2);
}

#[test]
fn fatal_exit_code_stops_without_respawn() {
    let mut h = Harness::new(cfg(2));
    h.exit(100, WorkerExit::Code(crate::EXIT_FATAL));
    assert_eq!(h.pump(), vec![(101, sig::TERM)]);
    h.exit(101, WorkerExit::Code(0));
    assert_eq!(
        h.sup.outcome(),
        Some(&Err(Failure::WorkerFatal {
            slot: 0,
            pid: 100,
            code: crate::EXIT_FATAL
        }))
    );
    assert_eq!(h.spawns(), 2);
}

#[test]
fn failure_kills_everything() {
    let mut h = Harness::new(cfg(2));
    h.sup.fail(h.now);
    assert_eq!(h.pump(), vec![(100, sig::KILL), (101, sig::KILL)]);
    h.exit(100, WorkerExit::Signal(9));
    h.exit(101, WorkerExit::Signal(9));
    assert_eq!(h.sup.outcome(), Some(&Err(Failure::External)));
}

#[test]
fn failure_during_initial_spawn_drops_queued_spawns() {
    let mut sup = Supervisor::new(cfg(3));
    assert_eq!(
        sup.next_action(),
        Some(Action::Spawn {
            slot: 0,
            recovers: None
        })
    );
    sup.on_spawned(0, 100, Duration::ZERO);
    // A hook failed for the first worker.
    sup.fail(Duration::ZERO);
    assert_eq!(
        sup.next_action(),
        Some(Action::Signal {
            pid: 100,
            signal: sig::KILL
        })
    );
    assert_eq!(sup.next_action(), None, "queued spawns are dropped");
    sup.on_exit(100, WorkerExit::Signal(9), Duration::ZERO);
    assert_eq!(sup.outcome(), Some(&Err(Failure::External)));
}

#[test]
fn initial_spawn_failure_fails_the_run() {
    let mut sup = Supervisor::new(cfg(2));
    sup.next_action();
    sup.on_spawned(0, 100, Duration::ZERO);
    sup.next_action();
    sup.on_spawn_failed(1, Duration::ZERO);
    assert_eq!(
        sup.next_action(),
        Some(Action::Signal {
            pid: 100,
            signal: sig::KILL
        })
    );
    sup.on_exit(100, WorkerExit::Signal(9), Duration::ZERO);
    assert_eq!(sup.outcome(), Some(&Err(Failure::External)));
}

#[test]
fn later_spawn_failure_is_retried() {
    let mut sup = Supervisor::new(cfg(1));
    sup.next_action();
    sup.on_spawned(0, 100, Duration::ZERO);
    sup.next_action(); // Ready
    sup.on_exit(100, WorkerExit::Code(1), Duration::ZERO);
    assert_eq!(
        sup.next_action(),
        Some(Action::Spawn {
            slot: 0,
            recovers: Some(100)
        })
    );
    sup.on_spawn_failed(0, Duration::ZERO);
    assert_eq!(sup.next_action(), None);
    assert_eq!(sup.next_deadline(), Some(SPAWN_RETRY_DELAY));
    sup.on_timer(SPAWN_RETRY_DELAY);
    assert_eq!(
        sup.next_action(),
        Some(Action::Spawn {
            slot: 0,
            recovers: Some(100)
        })
    );
}

#[test]
fn usr1_is_forwarded_to_every_worker() {
    let mut h = Harness::new(cfg(2));
    h.sup.on_signal(sig::USR1, h.now);
    assert_eq!(h.pump(), vec![(100, sig::USR1), (101, sig::USR1)]);
}

#[test]
fn ttin_adds_and_ttou_removes_a_worker() {
    let mut h = Harness::new(cfg(2));
    h.sup.on_signal(sig::TTIN, h.now);
    h.pump();
    assert_eq!(h.sup.slot_of(102), Some(2));
    h.sup.on_signal(sig::TTOU, h.now);
    assert_eq!(h.pump(), vec![(102, sig::TERM)]);
    assert!(h.log.contains(&Action::Closed { slot: 2 }));
    h.exit(102, WorkerExit::Signal(sig::TERM));
    h.pump();
    assert_eq!(h.sup.active_slots(), 2);
    assert_eq!(h.spawns(), 3, "a retired worker is not respawned");
    // Never below one worker.
    h.sup.on_signal(sig::TTOU, h.now);
    h.sup.on_signal(sig::TTOU, h.now);
    h.sup.on_signal(sig::TTOU, h.now);
    let signals = h.pump();
    assert_eq!(signals.len(), 1);
    assert_eq!(h.sup.active_slots(), 1);
}

#[test]
fn retired_worker_ignoring_term_is_killed_after_grace() {
    let mut h = Harness::new(cfg(2));
    h.sup.on_signal(sig::TTOU, h.now);
    assert_eq!(h.pump(), vec![(101, sig::TERM)]);
    h.advance(Duration::from_secs(5));
    assert_eq!(h.pump(), vec![(101, sig::KILL)]);
}

#[test]
fn hup_restarts_one_slot_at_a_time() {
    let mut h = Harness::new(cfg(2));
    h.sup.on_signal(sig::HUP, h.now);
    // New worker for slot 0 first, then TERM to the old one.
    assert_eq!(h.pump(), vec![(100, sig::TERM)]);
    assert_eq!(h.sup.slot_of(102), Some(0));
    assert_eq!(h.sup.live_pids().len(), 3, "old worker still draining");
    h.exit(100, WorkerExit::Code(0));
    assert_eq!(h.pump(), vec![(101, sig::TERM)]);
    assert_eq!(h.sup.slot_of(103), Some(1));
    h.exit(101, WorkerExit::Code(0));
    assert!(h.pump().is_empty());
    let mut live = h.sup.live_pids();
    live.sort();
    assert_eq!(live, vec![102, 103]);
    assert!(h.sup.outcome().is_none());
    assert!(
        h.sup.recent.is_empty(),
        "restart exits are not counted as crashes"
    );
}

#[test]
fn term_during_rolling_restart_stops_old_and_new() {
    let mut h = Harness::new(cfg(1));
    h.sup.on_signal(sig::HUP, h.now);
    assert_eq!(h.pump(), vec![(100, sig::TERM)]);
    h.sup.on_signal(sig::TERM, h.now);
    let mut signals = h.pump();
    signals.sort();
    assert_eq!(signals, vec![(100, sig::TERM), (101, sig::TERM)]);
    h.exit(100, WorkerExit::Code(0));
    h.exit(101, WorkerExit::Code(0));
    assert_eq!(h.sup.outcome(), Some(&Ok(())));
}

#[test]
fn signal_names() {
    assert_eq!(signal_name(15), "SIGTERM");
    assert_eq!(signal_name(9), "SIGKILL");
    assert_eq!(signal_name(64), "signal 64");
    assert_eq!(WorkerExit::Code(101).to_string(), "exit code 101");
    assert_eq!(WorkerExit::Signal(11).to_string(), "signal SIGSEGV");
}

#[test]
fn stop_keeps_a_retiring_workers_earlier_kill_deadline() {
    let mut h = Harness::new(cfg(2));
    h.advance(Duration::from_secs(10));
    h.sup.on_signal(sig::TTOU, h.now);
    assert_eq!(h.pump(), vec![(101, sig::TERM)]);
    h.advance(Duration::from_secs(4));
    h.sup.on_signal(sig::TERM, h.now);
    h.pump();
    // The retired worker's KILL stays due at 15 s, not at the stop's 19 s.
    assert_eq!(h.sup.next_deadline(), Some(Duration::from_secs(15)));
    h.advance(Duration::from_secs(1));
    assert_eq!(h.pump(), vec![(101, sig::KILL)]);
}

#[test]
fn restart_tells_the_old_worker_once() {
    let mut h = Harness::new(cfg(1));
    h.advance(Duration::from_secs(10));
    h.sup.on_signal(sig::HUP, h.now);
    assert_eq!(h.pump(), vec![(100, sig::TERM)]);
    // The replacement crashes while the old worker drains, and is respawned.
    h.advance(Duration::from_secs(2));
    h.exit(101, WorkerExit::Signal(11));
    let signals = h.pump();
    assert!(
        signals.is_empty(),
        "the old worker is not told again: {signals:?}"
    );
    assert_eq!(h.sup.next_deadline(), Some(Duration::from_secs(15)));
}
