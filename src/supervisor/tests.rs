//! Unit tests of the supervisor, each driven through the reference model (`model.rs`), which
//! checks every step against its own account of the policies.

use super::model::Model;
use super::*;
use std::time::Duration;

use crate::sys::signal::Signal;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

const KILL: WorkerExit = WorkerExit::Signal(crate::exit::Signal::KILL);
const TERM: WorkerExit = WorkerExit::Signal(crate::exit::Signal::TERM);
const SEGV: WorkerExit = WorkerExit::Signal(crate::exit::Signal::SEGV);

fn cfg(workers: usize) -> Config {
    Config {
        workers,
        recover_threshold: 3,
        recover_window: Duration::from_secs(60),
        recover_interval: Duration::ZERO,
        shutdown_grace: Duration::from_secs(5),
        upgrade_timeout: Duration::from_secs(60),
        upgrade_probation: Duration::ZERO,
    }
}

/// The model, stepped one event at a time; each step returns the actions it caused.
struct Harness {
    m: Model,
    /// The actions of the latest step.
    last: Vec<Action>,
}

impl Harness {
    /// Workers report ready as soon as they are spawned.
    fn new(cfg: Config) -> Harness {
        Harness::with(cfg, true)
    }

    /// Workers report ready only through [`Harness::ready`].
    fn manual(cfg: Config) -> Harness {
        Harness::with(cfg, false)
    }

    fn with(cfg: Config, auto_ready: bool) -> Harness {
        let mut m = Model::new(cfg);
        m.auto_ready = auto_ready;
        let mut h = Harness {
            m,
            last: Vec::new(),
        };
        h.settle();
        h
    }

    fn settle(&mut self) -> Vec<Action> {
        let start = self.m.log.len();
        self.m.settle();
        self.last = self.m.log[start..].to_vec();
        self.last.clone()
    }

    fn signal(&mut self, signal: Signal) -> Vec<Action> {
        self.m.signal(signal);
        self.settle()
    }

    fn ready(&mut self, pid: u32) -> Vec<Action> {
        self.m.ready(pid);
        self.settle()
    }

    /// The worker `pid` exits: how the supervisor judged it (the actions are in `last`).
    fn exit(&mut self, pid: u32, how: WorkerExit) -> Exited {
        let exited = self.m.exit(pid, how);
        self.settle();
        exited
    }

    fn fail(&mut self) -> Vec<Action> {
        self.m.fail();
        self.settle()
    }

    /// The master recycles `pid`: whether the supervisor took it (actions in `last`).
    fn recycle(&mut self, pid: u32) -> bool {
        let took = self.m.recycle(pid);
        self.settle();
        took
    }

    /// The master finds `pid` stuck: whether the supervisor kills it (actions in `last`).
    fn stuck(&mut self, pid: u32) -> bool {
        let took = self.m.kill_stuck(pid);
        self.settle();
        took
    }

    fn advance(&mut self, d: Duration) -> Vec<Action> {
        self.m.advance(d);
        self.settle()
    }

    /// Sleeps until the next deadline.
    fn wake(&mut self) -> Vec<Action> {
        self.m.wake_at_deadline();
        self.settle()
    }

    fn now(&self) -> Duration {
        self.m.now
    }

    /// The signals sent in the latest step.
    fn signals(&self) -> Vec<(u32, Signal, Why)> {
        signals(&self.last)
    }

    /// The worker holding `slot`.
    fn pid_of(&self, slot: usize) -> u32 {
        match self.m.sup.slots[slot] {
            Slot::Running { pid, .. } => pid,
            ref s => panic!("slot {slot} has no worker: {s:?}"),
        }
    }

    fn live(&self) -> Vec<u32> {
        self.m.live.keys().copied().collect()
    }

    fn spawns(&self) -> usize {
        self.m.spawns()
    }

    fn outcome(&self) -> Option<&Result<(), Failure>> {
        self.m.sup.outcome()
    }

    fn counted(&self) -> usize {
        self.m.sup.guard.counted(self.now())
    }
}

fn signals(actions: &[Action]) -> Vec<(u32, Signal, Why)> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::Signal { pid, signal, why } => Some((pid, signal, why)),
            _ => None,
        })
        .collect()
}

fn spawn(slot: usize, recovers: Option<u32>) -> Action {
    Action::Spawn { slot, recovers }
}

fn sig(pid: u32, signal: Signal, why: Why) -> Action {
    Action::Signal { pid, signal, why }
}

fn exited(slot: usize, cause: Cause) -> Exited {
    Exited { slot, cause }
}

// ---- Start-up.

#[test]
fn spawns_every_slot_then_reports_ready_once_all_are_ready() {
    let mut h = Harness::manual(cfg(3));
    assert_eq!(h.last, vec![spawn(0, None), spawn(1, None), spawn(2, None)]);
    assert!(h.ready(100).is_empty());
    assert!(h.ready(101).is_empty());
    assert_eq!(
        h.ready(102),
        vec![Action::Ready {
            pids: vec![100, 101, 102]
        }]
    );
    // A second report changes nothing.
    h.m.sup.on_ready(101, h.now());
    assert_eq!(h.m.sup.next_action(), None);
    assert_eq!(
        h.m.sup.next_deadline(),
        None,
        "an idle supervisor has no timer"
    );
}

#[test]
fn ready_waits_for_the_replacement_of_a_worker_that_failed_to_boot() {
    let mut h = Harness::manual(cfg(2));
    h.ready(100);
    assert_eq!(
        h.exit(101, WorkerExit::Code(1)),
        exited(1, Cause::BootFailure)
    );
    assert_eq!(h.last, vec![spawn(1, Some(101))]);
    assert_eq!(
        h.ready(102),
        vec![Action::Ready {
            pids: vec![100, 102]
        }]
    );
}

#[test]
fn failure_during_initial_spawn_drops_queued_spawns() {
    let mut sup = Supervisor::new(cfg(3));
    assert_eq!(sup.next_action(), Some(spawn(0, None)));
    sup.on_spawned(0, 100, Duration::ZERO);
    // A hook failed for the first worker.
    sup.fail(Duration::ZERO);
    assert_eq!(sup.next_action(), Some(sig(100, Signal::Kill, Why::Kill)));
    assert_eq!(sup.next_action(), None, "queued spawns are dropped");
    sup.on_exit(100, KILL, Duration::ZERO);
    assert_eq!(sup.outcome(), Some(&Err(Failure::External)));
}

#[test]
fn initial_spawn_failure_fails_the_run() {
    let mut m = Model::new(cfg(2));
    m.spawn_failures = 1;
    m.settle();
    // Slot 0 failed; slot 1's spawn was dropped by the stop.
    assert_eq!(m.log, vec![spawn(0, None)]);
    assert_eq!(m.sup.outcome(), Some(&Err(Failure::External)));

    let mut sup = Supervisor::new(cfg(2));
    let _ = sup.next_action();
    sup.on_spawned(0, 100, Duration::ZERO);
    let _ = sup.next_action();
    sup.on_spawn_failed(1, Duration::ZERO);
    assert_eq!(sup.next_action(), Some(sig(100, Signal::Kill, Why::Kill)));
    assert_eq!(
        sup.next_action(),
        None,
        "no Stopping: it is no graceful stop"
    );
    sup.on_exit(100, KILL, Duration::ZERO);
    assert_eq!(sup.outcome(), Some(&Err(Failure::External)));
}

// ---- Exits and respawns.

#[test]
fn crashed_worker_is_respawned_in_its_slot() {
    let mut h = Harness::new(cfg(2));
    h.advance(10 * SEC);
    assert_eq!(h.exit(101, KILL), exited(1, Cause::Crashed));
    assert_eq!(h.last, vec![spawn(1, Some(101))]);
    assert_eq!(h.pid_of(1), 102);
    assert_eq!(h.m.sup.slot_of(102), Some(1));
    assert_eq!(h.counted(), 0, "a worker that served is not counted");
}

#[test]
fn exit_code_zero_is_unexpected_and_respawned() {
    let mut h = Harness::new(cfg(1));
    // Right after it was ready: a boot failure.
    assert_eq!(
        h.exit(100, WorkerExit::Code(0)),
        exited(0, Cause::BootFailure)
    );
    assert_eq!(h.live(), vec![101]);
    // After serving: replaced, not counted.
    h.advance(10 * SEC);
    assert_eq!(h.exit(101, WorkerExit::Code(0)), exited(0, Cause::Crashed));
    assert_eq!(h.live(), vec![102]);
    assert_eq!(h.counted(), 1);
}

#[test]
fn unknown_pid_is_ignored() {
    let mut h = Harness::new(cfg(1));
    h.m.unknown_exit(4242);
    h.settle();
    assert!(h.last.is_empty());
    assert_eq!(h.live(), vec![100]);
}

#[test]
fn exit_before_ready_is_a_boot_failure_and_counted() {
    let mut c = cfg(1);
    c.recover_threshold = 10;
    let mut h = Harness::manual(c);
    h.ready(100);
    h.advance(10 * SEC);
    assert_eq!(h.exit(100, KILL), exited(0, Cause::Crashed));
    // Its replacement never reports ready: any exit is a boot failure, even a KILL from
    // outside, even long after the start.
    h.advance(10 * SEC);
    assert_eq!(h.exit(101, KILL), exited(0, Cause::BootFailure));
    assert_eq!(
        h.exit(102, WorkerExit::Code(0)),
        exited(0, Cause::BootFailure)
    );
    assert_eq!(h.counted(), 2);
}

#[test]
fn self_inflicted_exit_right_after_ready_is_a_boot_failure() {
    let mut c = cfg(1);
    c.recover_threshold = 10;
    c.recover_interval = 10 * MS;
    let mut h = Harness::new(c);
    assert_eq!(
        h.exit(100, WorkerExit::Code(101)),
        exited(0, Cause::BootFailure)
    );
    h.wake();
    h.advance(500 * MS);
    assert_eq!(h.exit(101, SEGV), exited(0, Cause::BootFailure));
    h.wake();
    h.advance(999 * MS);
    let pid = h.pid_of(0);
    assert_eq!(
        h.exit(pid, WorkerExit::Code(101)),
        exited(0, Cause::BootFailure)
    );
    // FAST_CRASH after ready, it served.
    h.wake();
    h.advance(FAST_CRASH);
    let pid = h.pid_of(0);
    assert_eq!(
        h.exit(pid, WorkerExit::Code(101)),
        exited(0, Cause::Crashed)
    );
    assert_eq!(h.counted(), 3);
    let latest = h.m.sup.guard.last();
    assert_eq!(
        latest,
        Some(CountedExit {
            slot: 0,
            pid: 102,
            exit: WorkerExit::Code(101),
            was_ready: true
        })
    );
}

#[test]
fn killed_from_outside_after_serving_is_crashed_not_counted() {
    let mut c = cfg(1);
    c.recover_threshold = 0;
    let mut h = Harness::new(c);
    h.advance(FAST_CRASH + SEC);
    assert_eq!(h.exit(100, KILL), exited(0, Cause::Crashed));
    assert_eq!(h.last, vec![spawn(0, Some(100))], "respawned at once");
    assert_eq!(h.outcome(), None);
    assert_eq!(h.counted(), 0);
}

#[test]
fn kills_from_outside_just_after_ready_never_stop_the_run() {
    let mut c = cfg(1);
    c.recover_threshold = 3;
    let mut h = Harness::new(c);
    for i in 0..200 {
        if h.m.sup.slots[0].pid().is_none() {
            h.wake();
        }
        h.advance(10 * MS);
        let pid = h.pid_of(0);
        assert_eq!(h.exit(pid, KILL), exited(0, Cause::Crashed), "kill {i}");
        assert_eq!(h.outcome(), None);
    }
    assert_eq!(h.counted(), 0);
    assert!(!h.m.sup.is_stopping());
}

#[test]
fn threshold_allows_k_respawns_then_over_recovery() {
    let mut h = Harness::new(cfg(2));
    let mut exits = Vec::new();
    for _ in 0..3 {
        let pid = h.pid_of(0);
        assert_eq!(
            h.exit(pid, WorkerExit::Code(1)),
            exited(0, Cause::BootFailure)
        );
        exits.push(pid);
        assert_eq!(h.outcome(), None);
        if h.m.sup.slots[0].pid().is_none() {
            h.wake(); // backoff
        }
    }
    assert_eq!(h.spawns(), 2 + 3, "three respawns with threshold 3");
    let pid = h.pid_of(0);
    exits.push(pid);
    h.exit(pid, WorkerExit::Code(1));
    assert_eq!(
        h.last,
        vec![sig(101, Signal::Kill, Why::Kill)],
        "the survivor is killed, with no Stopping"
    );
    assert_eq!(h.spawns(), 5, "no fourth respawn");
    assert_eq!(h.outcome(), None, "not done while a worker lives");
    assert_eq!(h.exit(101, KILL), exited(1, Cause::Requested));
    let latest: Vec<CountedExit> = exits
        .iter()
        .map(|&pid| CountedExit {
            slot: 0,
            pid,
            exit: WorkerExit::Code(1),
            was_ready: true,
        })
        .collect();
    assert_eq!(
        h.outcome(),
        Some(&Err(Failure::OverRecovery { count: 4, latest }))
    );
}

#[test]
fn over_recovery_reports_the_latest_exits_only() {
    let mut c = cfg(1);
    c.recover_threshold = 2 * REPORTED_EXITS;
    let mut h = Harness::new(c);
    let mut pids = Vec::new();
    while h.outcome().is_none() {
        if h.m.sup.slots[0].pid().is_none() {
            h.wake();
        }
        let pid = h.pid_of(0);
        pids.push(pid);
        h.exit(pid, WorkerExit::Code(1));
    }
    let count = 2 * REPORTED_EXITS + 1;
    assert_eq!(pids.len(), count);
    let Some(Err(Failure::OverRecovery { count: n, latest })) = h.outcome() else {
        panic!("{:?}", h.outcome());
    };
    assert_eq!(*n, count);
    let reported: Vec<u32> = latest.iter().map(|e| e.pid).collect();
    assert_eq!(
        reported,
        pids[count - REPORTED_EXITS..],
        "the latest, oldest first"
    );
}

#[test]
fn exits_outside_the_window_are_forgotten() {
    let mut h = Harness::manual(cfg(1));
    h.ready(100);
    for _ in 0..10 {
        let pid = h.pid_of(0);
        assert_eq!(
            h.exit(pid, WorkerExit::Code(1)),
            exited(0, Cause::BootFailure)
        );
        h.advance(30 * SEC);
    }
    assert_eq!(
        h.outcome(),
        None,
        "two exits per minute stay under threshold 3"
    );
    assert_eq!(h.live().len(), 1);
}

#[test]
fn threshold_zero_stops_at_first_boot_failure() {
    let mut c = cfg(1);
    c.recover_threshold = 0;
    let mut h = Harness::new(c);
    h.exit(100, WorkerExit::Code(1));
    let latest = vec![CountedExit {
        slot: 0,
        pid: 100,
        exit: WorkerExit::Code(1),
        was_ready: true,
    }];
    assert_eq!(
        h.outcome(),
        Some(&Err(Failure::OverRecovery { count: 1, latest }))
    );
}

/// `n` boot failures of the one worker, `gap` apart, each respawned at once; returns the
/// largest heap the guard held after any of them.
fn boot_failures(h: &mut Harness, n: usize, gap: Duration) -> usize {
    let mut widest = 0;
    for _ in 0..n {
        h.advance(gap);
        let pid = h.pid_of(0);
        assert_eq!(h.exit(pid, WorkerExit::Code(1)).cause, Cause::BootFailure);
        widest = widest.max(h.m.sup.guard.heap_bytes());
    }
    widest
}

/// The guard's storage is sized when it is built and never grows, however many exits it
/// counts: the old deque of exit instants grew with each exit inside the window, to 128 Ki
/// entries (5 MiB) here.
#[test]
fn guard_storage_does_not_grow_with_exits_inside_the_window() {
    let mut c = cfg(1);
    c.recover_threshold = 1_000_000;
    c.recover_window = 60 * SEC;
    let mut h = Harness::manual(c);
    let built = h.m.sup.guard.heap_bytes();
    assert!(built <= 16 << 10, "{built} bytes when built");
    let widest = boot_failures(&mut h, 100_000, Duration::from_micros(100));
    assert_eq!(h.outcome(), None);
    assert_eq!(h.counted(), 100_000, "every exit is inside the window");
    assert_eq!(
        widest, built,
        "the guard grew from {built} to {widest} bytes"
    );
}

#[test]
fn guard_storage_is_the_threshold_at_most() {
    // The largest threshold judged exactly, and about that many exits inside the window.
    let mut c = cfg(1);
    c.recover_threshold = guard::EXACT_UP_TO;
    c.recover_window = 10 * SEC;
    let mut h = Harness::manual(c);
    let built = h.m.sup.guard.heap_bytes();
    let room = guard::EXACT_UP_TO * size_of::<Duration>();
    assert!(built <= room + REPORTED_EXITS * size_of::<CountedExit>());
    let widest = boot_failures(&mut h, 100_000, 10 * MS);
    assert_eq!(h.outcome(), None);
    assert_eq!(h.counted(), 1000);
    assert_eq!(widest, built);
    // A threshold of 3 keeps 3 instants, exits once a second or all at once.
    let mut h = Harness::manual(cfg(1));
    let built = h.m.sup.guard.heap_bytes();
    assert!(built <= 3 * size_of::<Duration>() + REPORTED_EXITS * size_of::<CountedExit>());
    assert_eq!(boot_failures(&mut h, 3, SEC), built);
    assert_eq!(h.counted(), 3);
    assert_eq!(boot_failures(&mut h, 1, Duration::ZERO), built);
    assert!(h.outcome().is_some());
}

#[test]
fn counted_exits_leave_the_window() {
    let mut c = cfg(1);
    c.recover_threshold = 1_000_000_000;
    c.recover_window = 10 * SEC;
    let mut h = Harness::manual(c);
    let built = h.m.sup.guard.heap_bytes();
    let widest = boot_failures(&mut h, 10_000, SEC);
    assert_eq!(h.outcome(), None);
    // Sliced (the threshold is high): the exit exactly `window` old is in a slice that still
    // reaches into it.
    assert!(
        h.counted() <= 11,
        "{} counted within the window",
        h.counted()
    );
    assert_eq!(widest, built);
}

/// Above `EXACT_UP_TO` the window is counted in slices: runs at about the threshold's rate,
/// each checked exit by exit against the model's brute-force rule, trip and report included.
#[test]
fn sliced_guard_agrees_with_the_model() {
    let mut trips = 0;
    for seed in 1..=16u64 {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut c = cfg(1 + next(3) as usize);
        let threshold = guard::EXACT_UP_TO + 1 + next(1000) as usize;
        c.recover_threshold = threshold;
        c.recover_window = Duration::from_millis(1 + next(5000));
        let mean = c.recover_window.as_nanos() as u64 / threshold as u64;
        let mut m = Model::new(c);
        m.auto_ready = next(2) == 0;
        m.settle();
        for _ in 0..4 * threshold {
            if m.sup.outcome().is_some() {
                trips += 1;
                break;
            }
            // Gaps around the mean: the count hovers near the threshold.
            m.advance(Duration::from_nanos(next(2 * mean + 2)));
            let live: Vec<u32> = m.live.keys().copied().collect();
            let pid = live[next(live.len() as u64) as usize];
            m.exit(pid, [KILL, SEGV, WorkerExit::Code(1)][next(3) as usize]);
            m.settle();
        }
        m.finish(true);
    }
    assert!(trips > 0, "no run went over the threshold");
    assert!(trips < 16, "every run went over the threshold");
}

/// The sliced count holds every exit of the last `window`, and none older than one slice
/// more.
#[test]
fn sliced_guard_counts_the_window_and_at_most_one_slice_more() {
    let window = 100 * MS;
    let width = Duration::from_nanos(guard::slice_width(window) as u64);
    let mut g = guard::Guard::new(usize::MAX, window);
    let mut times = Vec::new();
    let mut now = Duration::ZERO;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..10_000u32 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Bursts, gaps around a slice, and now and then a pause longer than the window.
        now += match rng % 100 {
            0 => window + width * (rng % 3) as u32,
            1..=30 => Duration::ZERO,
            _ => Duration::from_nanos(rng % (2 * width.as_nanos() as u64)),
        };
        let exit = CountedExit {
            slot: 0,
            pid: i,
            exit: WorkerExit::Code(1),
            was_ready: false,
        };
        assert_eq!(g.count(now, exit), None);
        times.push(now);
        let within = |d: Duration| times.len() - times.partition_point(|&t| now - t >= d);
        let counted = g.counted(now);
        assert!(within(window) <= counted, "exit {i}: {counted} counted");
        assert!(
            counted <= within(window + width),
            "exit {i}: {counted} counted"
        );
    }
}

#[test]
fn recover_interval_delays_and_backs_off_fast_crashes() {
    let mut c = cfg(1);
    c.recover_interval = 100 * MS;
    c.recover_threshold = 100;
    let mut h = Harness::new(c);
    // First fast crash: wait one interval.
    h.exit(100, WorkerExit::Code(1));
    assert!(h.last.is_empty());
    assert_eq!(h.live(), Vec::<u32>::new());
    assert_eq!(h.m.sup.next_deadline(), Some(100 * MS));
    assert!(h.advance(99 * MS).is_empty());
    assert_eq!(h.advance(MS), vec![spawn(0, Some(100))]);
    // Second fast crash of the same slot: twice the interval.
    h.exit(101, WorkerExit::Code(1));
    assert_eq!(h.m.sup.next_deadline(), Some(h.now() + 200 * MS));
    h.advance(200 * MS);
    // A worker that ran long resets the backoff.
    h.advance(10 * SEC);
    let pid = h.pid_of(0);
    h.exit(pid, WorkerExit::Code(1));
    assert_eq!(h.m.sup.next_deadline(), Some(h.now() + 100 * MS));
}

#[test]
fn backoff_is_capped() {
    let mut c = cfg(1);
    c.recover_interval = MS;
    c.recover_threshold = 1000;
    let mut h = Harness::new(c);
    let mut waits = Vec::new();
    for _ in 0..10 {
        let pid = h.pid_of(0);
        h.exit(pid, WorkerExit::Code(1));
        let wait = h.m.sup.next_deadline().unwrap() - h.now();
        waits.push(wait.as_millis());
        h.advance(wait);
    }
    assert_eq!(waits, [1, 2, 4, 8, 16, 32, 32, 32, 32, 32]);
}

#[test]
fn zero_interval_respawns_at_once_every_time() {
    let mut c = cfg(1);
    c.recover_threshold = 1000;
    let mut h = Harness::new(c);
    h.advance(10 * SEC);
    // Killed from outside, over and over, each soon after its start: never delayed.
    for _ in 0..8 {
        let pid = h.pid_of(0);
        h.exit(pid, WorkerExit::Signal(crate::exit::Signal::KILL));
        assert_eq!(h.last, vec![spawn(0, Some(pid))], "respawned at once");
        h.advance(Duration::from_millis(5));
    }
    assert_eq!(h.m.sup.next_deadline(), None, "no respawn waits");
}

#[test]
fn later_spawn_failure_is_counted_and_retried() {
    let mut h = Harness::new(cfg(1));
    h.advance(10 * SEC);
    h.m.spawn_failures = 1;
    h.exit(100, KILL);
    assert_eq!(h.last, vec![spawn(0, Some(100))]);
    assert_eq!(h.live(), Vec::<u32>::new());
    assert_eq!(h.counted(), 1, "the failed fork is counted");
    assert_eq!(h.m.sup.next_deadline(), Some(h.now() + SPAWN_RETRY_DELAY));
    assert_eq!(h.advance(SPAWN_RETRY_DELAY), vec![spawn(0, Some(100))]);
    assert_eq!(h.live(), vec![101]);
}

#[test]
fn fatal_exit_code_stops_without_respawn() {
    let mut h = Harness::new(cfg(2));
    assert_eq!(
        h.exit(100, WorkerExit::Code(crate::EXIT_FATAL)),
        exited(0, Cause::Fatal)
    );
    assert_eq!(
        h.last,
        vec![Action::Stopping, sig(101, Signal::Term, Why::Stop)]
    );
    h.exit(101, WorkerExit::Code(0));
    assert_eq!(
        h.outcome(),
        Some(&Err(Failure::WorkerFatal {
            slot: 0,
            pid: 100,
            code: crate::EXIT_FATAL
        }))
    );
    assert_eq!(h.spawns(), 2);
}

// ---- Forwarded signals.

#[test]
fn usr1_is_forwarded_to_every_worker() {
    let mut h = Harness::manual(cfg(2));
    h.ready(100);
    h.ready(101);
    h.signal(Signal::Usr1);
    assert_eq!(
        h.signals(),
        vec![
            (100, Signal::Usr1, Why::Forward),
            (101, Signal::Usr1, Why::Forward)
        ]
    );
    // A retiring worker too.
    h.signal(Signal::Hup);
    h.signal(Signal::Usr1);
    let mut to: Vec<u32> = h.signals().iter().map(|s| s.0).collect();
    to.sort_unstable();
    assert_eq!(to, vec![100, 101, 102]);
}

#[test]
fn death_by_a_forwarded_signal_is_respawned_at_once_and_not_counted() {
    let mut c = cfg(1);
    c.recover_threshold = 0;
    c.recover_interval = SEC;
    let mut h = Harness::new(c);
    let usr1 = WorkerExit::Signal(crate::exit::Signal::USR1);
    for _ in 0..10 {
        h.signal(Signal::Usr1);
        let pid = h.pid_of(0);
        assert_eq!(h.exit(pid, usr1), exited(0, Cause::Forwarded));
        assert_eq!(h.last, vec![spawn(0, Some(pid))], "no delay, no backoff");
    }
    assert_eq!(h.counted(), 0);
    assert_eq!(h.outcome(), None);
    // A worker started after the forward was not sent USR1 by the master.
    h.advance(10 * SEC);
    let pid = h.pid_of(0);
    assert_eq!(h.exit(pid, usr1), exited(0, Cause::Crashed));
}

// ---- Stopping.

#[test]
fn term_stops_gracefully_then_kills_after_grace() {
    let mut h = Harness::new(cfg(2));
    assert_eq!(
        h.signal(Signal::Term),
        vec![
            Action::Stopping,
            sig(100, Signal::Term, Why::Stop),
            sig(101, Signal::Term, Why::Stop)
        ]
    );
    assert_eq!(h.exit(100, TERM), exited(0, Cause::Requested));
    assert_eq!(h.m.sup.next_deadline(), Some(5 * SEC));
    assert_eq!(
        h.advance(5 * SEC),
        vec![sig(101, Signal::Kill, Why::GraceExpired)]
    );
    assert_eq!(h.outcome(), None);
    h.exit(101, KILL);
    assert_eq!(h.outcome(), Some(&Ok(())));
    assert_eq!(h.spawns(), 2, "nothing respawned during the stop");
}

#[test]
fn second_term_kills_at_once() {
    let mut h = Harness::new(cfg(1));
    assert_eq!(
        h.signal(Signal::Int),
        vec![Action::Stopping, sig(100, Signal::Term, Why::Stop)]
    );
    assert_eq!(
        h.signal(Signal::Term),
        vec![sig(100, Signal::Kill, Why::Kill)]
    );
    // Nothing is due but the stop's end: the margin after KILL, when it would give up.
    assert_eq!(
        h.m.sup.next_deadline(),
        Some(h.now() + super::state::KILL_MARGIN)
    );
}

#[test]
fn term_during_pending_respawn_cancels_it() {
    let mut c = cfg(2);
    c.recover_interval = SEC;
    let mut h = Harness::new(c);
    h.exit(100, WorkerExit::Code(1));
    h.signal(Signal::Term);
    assert_eq!(h.signals(), vec![(101, Signal::Term, Why::Stop)]);
    h.exit(101, WorkerExit::Code(0));
    assert_eq!(h.outcome(), Some(&Ok(())));
    assert!(h.advance(2 * SEC).is_empty());
    assert_eq!(h.spawns(), 2);
}

#[test]
fn failure_kills_everything() {
    let mut h = Harness::new(cfg(2));
    assert_eq!(
        h.fail(),
        vec![
            sig(100, Signal::Kill, Why::Kill),
            sig(101, Signal::Kill, Why::Kill)
        ]
    );
    h.exit(100, KILL);
    h.exit(101, KILL);
    assert_eq!(h.outcome(), Some(&Err(Failure::External)));
}

#[test]
fn run_ends_within_the_grace_period() {
    for exit_on_term in [false, true] {
        let mut h = Harness::new(cfg(3));
        h.advance(10 * SEC);
        h.signal(Signal::Ttou);
        h.advance(2 * SEC);
        h.signal(Signal::Hup);
        let start = h.now();
        h.m.finish(exit_on_term);
        assert_eq!(h.outcome(), Some(&Ok(())));
        let took = h.now() - start;
        let want = if exit_on_term {
            Duration::ZERO
        } else {
            5 * SEC
        };
        assert_eq!(took, want, "exit on TERM: {exit_on_term}");
    }
}

// ---- Rolling restarts.

#[test]
fn hup_restarts_one_slot_at_a_time() {
    let mut h = Harness::manual(cfg(2));
    h.ready(100);
    h.ready(101);
    assert_eq!(
        h.signal(Signal::Hup),
        vec![Action::Reloading, spawn(0, None)]
    );
    assert_eq!(h.m.sup.slot_of(102), Some(0));
    assert_eq!(h.live().len(), 3, "the old worker still serves");
    // TERM to the old worker once its replacement is ready.
    assert_eq!(h.ready(102), vec![sig(100, Signal::Term, Why::Retire)]);
    // The next slot once the old worker is gone.
    assert_eq!(h.exit(100, WorkerExit::Code(0)), exited(0, Cause::Replaced));
    assert_eq!(h.last, vec![spawn(1, None)]);
    assert_eq!(
        h.ready(103),
        vec![sig(101, Signal::Term, Why::Retire), Action::Reloaded]
    );
    h.exit(101, TERM);
    assert!(h.last.is_empty());
    assert_eq!(h.live(), vec![102, 103]);
    assert_eq!(h.outcome(), None);
    assert_eq!(h.counted(), 0, "restart exits are not counted");
}

#[test]
fn hup_before_every_worker_is_ready_restarts_once_they_are() {
    let mut h = Harness::manual(cfg(2));
    h.ready(100);
    assert!(h.signal(Signal::Hup).is_empty(), "nothing to restart yet");
    let ready = Action::Ready {
        pids: vec![100, 101],
    };
    assert_eq!(h.ready(101), vec![ready, Action::Reloading, spawn(0, None)]);
}

#[test]
fn restart_terms_the_old_worker_only_after_its_replacement_is_ready() {
    let mut h = Harness::manual(cfg(1));
    h.ready(100);
    h.signal(Signal::Hup);
    // Long past any grace period: the old worker serves on, untold.
    assert!(h.advance(60 * SEC).is_empty());
    assert!(!h.m.live[&100].told());
    assert_eq!(
        h.ready(101),
        vec![sig(100, Signal::Term, Why::Retire), Action::Reloaded]
    );
    assert_eq!(h.m.sup.next_deadline(), Some(h.now() + 5 * SEC));
}

#[test]
fn replacement_failing_to_boot_is_respawned_and_the_old_worker_told_once() {
    let mut h = Harness::manual(cfg(1));
    h.ready(100);
    h.advance(10 * SEC);
    h.signal(Signal::Hup);
    assert_eq!(
        h.exit(101, WorkerExit::Code(1)),
        exited(0, Cause::BootFailure)
    );
    assert_eq!(
        h.last,
        vec![spawn(0, Some(101))],
        "no TERM to the old worker"
    );
    assert_eq!(
        h.ready(102),
        vec![sig(100, Signal::Term, Why::Retire), Action::Reloaded]
    );
    let deadline = h.now() + 5 * SEC;
    // The ready replacement then crashes while the old worker drains: respawned, and the
    // old worker is not told again.
    h.advance(2 * SEC);
    assert_eq!(h.exit(102, SEGV), exited(0, Cause::Crashed));
    assert_eq!(h.last, vec![spawn(0, Some(102))]);
    assert!(h.ready(103).is_empty(), "the old worker is not told again");
    assert_eq!(h.m.sup.next_deadline(), Some(deadline));
}

#[test]
fn hup_emits_reloading_then_reloaded() {
    let mut h = Harness::new(cfg(2));
    assert_eq!(
        h.signal(Signal::Hup),
        vec![
            Action::Reloading,
            spawn(0, None),
            sig(100, Signal::Term, Why::Retire)
        ]
    );
    h.exit(100, TERM);
    assert_eq!(
        h.last,
        vec![
            spawn(1, None),
            sig(101, Signal::Term, Why::Retire),
            Action::Reloaded
        ]
    );
    h.exit(101, TERM);
    assert!(h.last.is_empty());
}

#[test]
fn hups_during_a_restart_queue_exactly_one_more() {
    let mut h = Harness::new(cfg(2));
    h.signal(Signal::Hup);
    assert!(h.signal(Signal::Hup).is_empty());
    assert!(h.signal(Signal::Hup).is_empty());
    h.exit(100, TERM);
    assert!(h.last.contains(&Action::Reloaded));
    assert!(h.signal(Signal::Hup).is_empty(), "still draining 101");
    h.exit(101, TERM);
    // The second restart begins.
    assert_eq!(
        h.last,
        vec![
            Action::Reloading,
            spawn(0, None),
            sig(102, Signal::Term, Why::Retire)
        ]
    );
    h.exit(102, TERM);
    assert_eq!(
        h.last,
        vec![
            spawn(1, None),
            sig(103, Signal::Term, Why::Retire),
            Action::Reloaded
        ]
    );
    h.exit(103, TERM);
    assert!(h.last.is_empty(), "no third restart");
    assert_eq!(h.spawns(), 6);
    assert_eq!(h.live(), vec![104, 105]);
}

#[test]
fn restart_ends_with_reloaded_when_its_last_slot_waits_to_respawn() {
    let mut c = cfg(2);
    c.recover_interval = SEC;
    let mut h = Harness::new(c);
    h.advance(10 * SEC);
    h.signal(Signal::Hup);
    assert_eq!(h.exit(101, KILL), exited(1, Cause::Crashed));
    assert!(h.last.is_empty(), "slot 1 waits for its respawn");
    // Slot 1 is skipped: it gets a new worker anyway.
    h.exit(100, TERM);
    assert_eq!(h.last, vec![Action::Reloaded]);
    assert_eq!(h.advance(SEC), vec![spawn(1, Some(101))]);
}

#[test]
fn restart_ends_with_reloaded_when_the_old_worker_exits_untold() {
    let mut h = Harness::manual(cfg(1));
    h.ready(100);
    h.signal(Signal::Hup);
    assert_eq!(h.exit(100, SEGV), exited(0, Cause::Replaced));
    assert_eq!(h.last, vec![Action::Reloaded]);
    assert!(h.ready(101).is_empty(), "no second Reloaded");
    assert_eq!(h.counted(), 0);
}

#[test]
fn term_during_rolling_restart_stops_old_and_new() {
    let mut h = Harness::manual(cfg(1));
    h.ready(100);
    h.signal(Signal::Hup);
    h.signal(Signal::Term);
    let mut sent = h.signals();
    sent.sort_unstable_by_key(|s| s.0);
    assert_eq!(
        sent,
        vec![
            (100, Signal::Term, Why::Stop),
            (101, Signal::Term, Why::Stop)
        ]
    );
    assert!(!h.last.contains(&Action::Reloaded));
    h.exit(100, WorkerExit::Code(0));
    h.exit(101, WorkerExit::Code(0));
    assert_eq!(h.outcome(), Some(&Ok(())));
}

#[test]
fn stop_keeps_a_retiring_workers_earlier_kill_deadline() {
    let mut h = Harness::new(cfg(2));
    h.advance(10 * SEC);
    h.signal(Signal::Ttou);
    assert_eq!(h.signals(), vec![(101, Signal::Term, Why::Retire)]);
    h.advance(4 * SEC);
    h.signal(Signal::Term);
    assert_eq!(h.signals(), vec![(100, Signal::Term, Why::Stop)]);
    // The retired worker's KILL stays due at 15 s, not at the stop's 19 s.
    assert_eq!(h.m.sup.next_deadline(), Some(15 * SEC));
    assert_eq!(
        h.advance(SEC),
        vec![sig(101, Signal::Kill, Why::GraceExpired)]
    );
}

// ---- TTIN and TTOU.

#[test]
fn ttin_adds_and_ttou_removes_a_worker() {
    let mut h = Harness::new(cfg(2));
    assert_eq!(
        h.signal(Signal::Ttin),
        vec![spawn(2, None), Action::Steer { active: 3 }]
    );
    assert_eq!(h.m.sup.slot_of(102), Some(2));
    assert_eq!(
        h.signal(Signal::Ttou),
        vec![
            Action::Steer { active: 2 },
            sig(102, Signal::Term, Why::Retire)
        ]
    );
    assert_eq!(h.exit(102, TERM), exited(2, Cause::Retired));
    assert_eq!(h.last, vec![Action::Closed { slot: 2 }]);
    assert_eq!(h.m.sup.active_slots(), 2);
    assert_eq!(h.spawns(), 3, "a retired worker is not respawned");
    // Never below one worker.
    h.signal(Signal::Ttou);
    h.signal(Signal::Ttou);
    h.signal(Signal::Ttou);
    assert_eq!(signals(&h.m.log).len(), 2);
    assert_eq!(h.m.sup.active_slots(), 1);
}

#[test]
fn ttin_reopening_a_closing_slot_takes_back_its_closed() {
    let mut h = Harness::new(cfg(2));
    h.signal(Signal::Ttou);
    assert_eq!(h.signals(), vec![(101, Signal::Term, Why::Retire)]);
    assert_eq!(
        h.signal(Signal::Ttin),
        vec![spawn(1, None), Action::Steer { active: 2 }]
    );
    assert_eq!(h.exit(101, TERM), exited(1, Cause::Retired));
    assert!(h.last.is_empty(), "slot 1 is in service again: no Closed");
    assert_eq!(h.pid_of(1), 102);
}

#[test]
fn retired_worker_ignoring_term_is_killed_after_grace() {
    let mut h = Harness::new(cfg(2));
    h.signal(Signal::Ttou);
    assert_eq!(h.signals(), vec![(101, Signal::Term, Why::Retire)]);
    assert_eq!(
        h.advance(5 * SEC),
        vec![sig(101, Signal::Kill, Why::GraceExpired)]
    );
    assert_eq!(h.exit(101, KILL), exited(1, Cause::Retired));
    assert_eq!(h.last, vec![Action::Closed { slot: 1 }]);
}

#[test]
fn ttou_of_the_slot_being_restarted_ends_the_restart() {
    let mut h = Harness::manual(cfg(2));
    h.ready(100);
    h.ready(101);
    h.signal(Signal::Hup);
    h.ready(102);
    h.exit(100, TERM);
    assert_eq!(h.last, vec![spawn(1, None)]);
    // Slot 1 is closed before its replacement (103) is ready: both go.
    assert_eq!(
        h.signal(Signal::Ttou),
        vec![
            Action::Steer { active: 1 },
            sig(103, Signal::Term, Why::Retire),
            sig(101, Signal::Term, Why::Retire),
            Action::Reloaded
        ]
    );
    h.exit(103, TERM);
    assert!(h.last.is_empty());
    h.exit(101, TERM);
    assert_eq!(h.last, vec![Action::Closed { slot: 1 }]);
}

// ---- Recycling and stuck workers.

#[test]
fn recycling_replaces_one_slot_like_a_rolling_restart() {
    let mut h = Harness::manual(cfg(2));
    h.ready(100);
    h.ready(101);
    h.advance(10 * SEC);
    assert!(h.recycle(100));
    assert_eq!(h.last, vec![spawn(0, None)], "no Reloading for a recycling");
    assert_eq!(
        h.m.sup.serving(),
        vec![(1, 101, true)],
        "the newcomer is not ready"
    );
    // The old worker serves on, untold, until its replacement is ready.
    assert!(h.advance(60 * SEC).is_empty());
    assert_eq!(h.ready(102), vec![sig(100, Signal::Term, Why::Retire)]);
    assert_eq!(
        h.m.sup.serving(),
        vec![(0, 102, false), (1, 101, true)],
        "102 shares its slot with the draining 100"
    );
    assert_eq!(h.exit(100, WorkerExit::Code(0)), exited(0, Cause::Recycled));
    assert!(h.last.is_empty(), "no respawn, no Reloaded");
    assert_eq!(h.live(), vec![101, 102]);
    assert_eq!(h.counted(), 0);
}

#[test]
fn recycling_is_refused_for_a_worker_not_serving() {
    let mut h = Harness::manual(cfg(2));
    assert!(!h.recycle(100), "not ready, and the master is not ready");
    h.ready(100);
    assert!(!h.recycle(100), "the master is not ready yet");
    h.ready(101);
    assert!(!h.recycle(4242), "no such worker");
    assert!(h.recycle(100));
    assert!(!h.recycle(102), "the replacement is not ready");
    h.ready(102);
    assert!(!h.recycle(100), "already retired");
    assert!(
        !h.recycle(102),
        "its slot is being replaced: 100 still drains"
    );
    h.exit(100, TERM);
    assert!(h.recycle(102), "100 is gone");
    h.signal(Signal::Term);
    assert!(!h.recycle(101), "the run stops");
}

#[test]
fn recyclings_queue_and_replace_one_slot_at_a_time() {
    let mut h = Harness::new(cfg(3));
    assert!(h.recycle(100));
    assert_eq!(
        h.last,
        vec![spawn(0, None), sig(100, Signal::Term, Why::Retire)]
    );
    assert!(h.recycle(101));
    assert!(h.recycle(102));
    assert!(h.last.is_empty(), "queued behind slot 0");
    assert!(h.recycle(101), "queued already");
    h.exit(100, TERM);
    assert_eq!(
        h.last,
        vec![spawn(1, None), sig(101, Signal::Term, Why::Retire)]
    );
    h.exit(101, TERM);
    assert_eq!(
        h.last,
        vec![spawn(2, None), sig(102, Signal::Term, Why::Retire)]
    );
    assert_eq!(h.exit(102, TERM), exited(2, Cause::Recycled));
    assert!(h.last.is_empty());
    assert_eq!(h.spawns(), 6);
}

#[test]
fn a_worker_gone_before_its_recycling_is_not_replaced_twice() {
    let mut h = Harness::new(cfg(2));
    assert!(h.recycle(100));
    assert!(h.recycle(101));
    h.advance(10 * SEC);
    // 101 crashes while queued: respawned at once, as any crash.
    assert_eq!(h.exit(101, KILL), exited(1, Cause::Crashed));
    assert_eq!(h.last, vec![spawn(1, Some(101))]);
    let fresh = h.pid_of(1);
    h.exit(100, TERM);
    assert!(
        h.last.is_empty(),
        "the fresh worker of slot 1 is not recycled"
    );
    assert_eq!(h.pid_of(1), fresh);
}

#[test]
fn a_hup_during_a_recycling_restarts_every_slot_after_it() {
    let mut h = Harness::new(cfg(2));
    assert!(h.recycle(101));
    assert!(
        h.signal(Signal::Hup).is_empty(),
        "queued behind the recycling"
    );
    assert_eq!(h.exit(101, TERM), exited(1, Cause::Recycled));
    assert_eq!(
        h.last,
        vec![
            Action::Reloading,
            spawn(0, None),
            sig(100, Signal::Term, Why::Retire)
        ]
    );
    h.exit(100, TERM);
    // 102 replaced the recycled 101; 103 replaced 100.
    assert_eq!(
        h.last,
        vec![
            spawn(1, None),
            sig(102, Signal::Term, Why::Retire),
            Action::Reloaded
        ]
    );
}

#[test]
fn a_recycling_during_a_hup_waits_and_the_hup_ends_first() {
    let mut h = Harness::new(cfg(2));
    h.signal(Signal::Hup);
    // Slot 0 is being replaced; slot 1 is queued by the HUP already.
    assert!(h.recycle(101), "queued by the HUP");
    h.exit(100, TERM);
    assert_eq!(h.exit(101, TERM), exited(1, Cause::Replaced));
    // The new worker of slot 0 is recycled after the rolling restart.
    let new0 = h.pid_of(0);
    assert!(h.recycle(new0));
    assert_eq!(
        h.last,
        vec![spawn(0, None), sig(new0, Signal::Term, Why::Retire)]
    );
    assert_eq!(h.exit(new0, TERM), exited(0, Cause::Recycled));
}

#[test]
fn reloaded_comes_when_the_rolling_restart_ends_even_with_a_recycling_queued() {
    let mut h = Harness::manual(cfg(2));
    h.ready(100);
    h.ready(101);
    h.signal(Signal::Hup);
    h.ready(102);
    h.exit(100, TERM);
    // Slot 1 is being replaced by the HUP; the new worker of slot 0 is recycled after it.
    assert!(h.recycle(102));
    assert_eq!(
        h.ready(103),
        vec![sig(101, Signal::Term, Why::Retire), Action::Reloaded]
    );
    h.exit(101, TERM);
    assert_eq!(h.last, vec![spawn(0, None)]);
}

#[test]
fn a_stuck_worker_is_killed_and_respawned_at_once_without_counting() {
    let mut c = cfg(2);
    c.recover_interval = 5 * SEC;
    c.recover_threshold = 0;
    let mut h = Harness::new(c);
    assert!(h.stuck(101));
    assert_eq!(h.last, vec![sig(101, Signal::Kill, Why::Stuck)]);
    assert_eq!(h.m.sup.serving(), vec![(0, 100, true)], "no longer judged");
    assert!(!h.stuck(101), "killed once");
    // Dies within a second of its start: no backoff, no count, no recover_interval.
    assert_eq!(h.exit(101, KILL), exited(1, Cause::Stuck));
    assert_eq!(h.last, vec![spawn(1, Some(101))]);
    assert_eq!(h.counted(), 0);
    assert_eq!(h.outcome(), None);
}

#[test]
fn only_serving_workers_are_killed_as_stuck() {
    let mut h = Harness::manual(cfg(1));
    assert!(!h.stuck(100), "not ready");
    h.ready(100);
    assert!(!h.stuck(4242), "no such worker");
    h.signal(Signal::Hup);
    assert!(!h.stuck(101), "the replacement is not ready");
    h.ready(101);
    assert!(!h.stuck(100), "retired");
    h.signal(Signal::Term);
    assert!(!h.stuck(101), "the run stops");
}

#[test]
fn a_stuck_worker_whose_slot_is_replaced_before_it_dies_is_not_told_again() {
    let mut h = Harness::new(cfg(2));
    assert!(h.stuck(100));
    // A HUP before the stuck worker's death is reaped: its slot gets a new worker, and the
    // stuck one, killed already, is not sent TERM.
    assert_eq!(
        h.signal(Signal::Hup),
        vec![Action::Reloading, spawn(0, None)]
    );
    assert_eq!(h.exit(100, KILL), exited(0, Cause::Stuck));
    assert_eq!(
        h.last,
        vec![
            spawn(1, None),
            sig(101, Signal::Term, Why::Retire),
            Action::Reloaded
        ]
    );
    // TTOU of a stuck worker's slot: retired as stuck, no TERM either.
    let mut h = Harness::new(cfg(2));
    assert!(h.stuck(101));
    assert_eq!(h.signal(Signal::Ttou), vec![Action::Steer { active: 1 }]);
    assert_eq!(h.exit(101, KILL), exited(1, Cause::Stuck));
    assert_eq!(h.last, vec![Action::Closed { slot: 1 }]);
}

#[test]
fn a_stuck_worker_dying_during_the_stop_is_still_stuck() {
    let mut h = Harness::new(cfg(2));
    assert!(h.stuck(100));
    h.signal(Signal::Term);
    assert_eq!(h.exit(100, KILL), exited(0, Cause::Stuck));
    assert!(h.last.is_empty(), "no respawn during the stop");
    assert_eq!(h.exit(101, TERM), exited(1, Cause::Requested));
    assert_eq!(h.outcome(), Some(&Ok(())));
}

/// Many runs of pseudo-random events, recyclings and stuck kills included, each checked
/// step by step by the model (the fuzz target's events, plus these two).
#[test]
fn random_runs_with_recycling_and_stuck_kills_agree_with_the_model() {
    for seed in 1..=1000u64 {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut c = cfg(1 + next(4) as usize);
        c.recover_threshold = next(12) as usize;
        c.recover_interval = Duration::from_millis(10 * next(20));
        c.shutdown_grace = Duration::from_millis(100 * (1 + next(30)));
        let mut m = Model::new(c);
        m.auto_ready = next(3) != 0;
        m.settle();
        for _ in 0..80 {
            if m.sup.outcome().is_some() {
                break;
            }
            let live: Vec<u32> = m.live.keys().copied().collect();
            let pick = |r: u64| live.get(r as usize % live.len().max(1)).copied();
            m.advance(Duration::from_millis(50 * next(8)));
            match next(20) {
                0 => m.advance(Duration::from_secs(next(3))),
                1 => m.wake_at_deadline(),
                2 | 3 => {
                    let how = [KILL, TERM, SEGV, WorkerExit::Code(0), WorkerExit::Code(1)]
                        [next(5) as usize];
                    if let Some(pid) = pick(next(64)) {
                        m.exit(pid, how);
                    }
                }
                4 => m.signal(Signal::Hup),
                5 if m.sup.active_slots() < 8 => m.signal(Signal::Ttin),
                6 => m.signal(Signal::Ttou),
                7 => m.signal(Signal::Usr1),
                8 if next(8) == 0 => m.signal(Signal::Term),
                9 | 10 => {
                    let waiting: Vec<u32> = m
                        .live
                        .iter()
                        .filter(|(_, p)| p.ready.is_none())
                        .map(|(&pid, _)| pid)
                        .collect();
                    if let Some(&pid) = waiting.get(next(8) as usize % waiting.len().max(1)) {
                        m.ready(pid);
                    }
                }
                11..=13 => {
                    if let Some(pid) = pick(next(64)) {
                        m.recycle(pid);
                    }
                }
                14 | 15 => {
                    if let Some(pid) = pick(next(64)) {
                        m.kill_stuck(pid);
                    }
                }
                16 => m.exit_all(|p| p.term, WorkerExit::Code(0)),
                17 => m.exit_all(|p| p.kill, KILL),
                _ => {}
            }
            m.settle();
        }
        m.finish(next(2) == 0);
    }
}

// ---- Display.

#[test]
fn exits_display() {
    assert_eq!(WorkerExit::Code(101).to_string(), "exit code 101");
    assert_eq!(SEGV.to_string(), "signal SIGSEGV");
    let counted = CountedExit {
        slot: 2,
        pid: 77,
        exit: WorkerExit::Code(1),
        was_ready: false,
    };
    assert_eq!(
        counted.to_string(),
        "worker 2 (pid 77): exit code 1 before it was ready"
    );
}

// ---- The binary upgrade (USR2).

impl Harness {
    fn upgrade_ready(&mut self) -> Vec<Action> {
        self.m.upgrade_ready();
        self.settle()
    }

    fn upgrade_exit(&mut self, how: WorkerExit) -> Vec<Action> {
        self.m.upgrade_exit(how);
        self.settle()
    }
}

#[test]
fn an_upgrade_that_serves_hands_over_and_the_old_workers_drain() {
    let mut h = Harness::new(cfg(2));
    assert_eq!(h.signal(Signal::Usr2), vec![Action::StartUpgrade]);
    let new = h.m.sup.new_master().expect("a new master");
    let acts = h.upgrade_ready();
    assert_eq!(acts[0], Action::HandedOver { pid: new });
    assert!(!acts.contains(&Action::Stopping), "{acts:?}");
    let mut told: Vec<u32> = h.signals().iter().map(|s| s.0).collect();
    told.sort_unstable();
    assert_eq!(told, h.live(), "every old worker drains");
    assert!(
        h.signals()
            .iter()
            .all(|s| s.1 == Signal::Term && s.2 == Why::Stop)
    );
    for pid in h.live() {
        h.exit(pid, WorkerExit::Code(0));
    }
    assert_eq!(h.outcome(), Some(&Ok(())));
}

#[test]
fn a_new_master_that_exits_first_is_rolled_back_and_the_workers_keep_serving() {
    let mut h = Harness::new(cfg(2));
    let before = h.live();
    h.signal(Signal::Usr2);
    let new = h.m.sup.new_master().expect("a new master");
    let acts = h.upgrade_exit(WorkerExit::Code(1));
    assert_eq!(
        acts,
        vec![Action::RolledBack {
            pid: Some(new),
            why: Rollback::Exited(WorkerExit::Code(1))
        }]
    );
    assert_eq!(h.live(), before, "the same workers serve");
    assert!(!h.m.sup.is_stopping());
    // A later USR2 starts a new upgrade.
    assert_eq!(h.signal(Signal::Usr2), vec![Action::StartUpgrade]);
}

#[test]
fn a_new_master_late_past_the_timeout_is_killed_and_rolled_back() {
    let mut c = cfg(1);
    c.upgrade_timeout = 3 * SEC;
    let mut h = Harness::new(c);
    h.signal(Signal::Usr2);
    let new = h.m.sup.new_master().expect("a new master");
    assert_eq!(h.m.sup.next_deadline(), Some(h.now() + 3 * SEC));
    let acts = h.wake();
    assert_eq!(
        acts,
        vec![
            Action::RolledBack {
                pid: Some(new),
                why: Rollback::NotReady(3 * SEC)
            },
            Action::SignalNewMaster {
                pid: new,
                signal: Signal::Kill
            },
        ]
    );
    // Readiness after the KILL changes nothing; the exit is logged as a stop.
    assert_eq!(h.upgrade_ready(), vec![]);
    assert!(!h.m.sup.is_stopping());
    let acts = h.upgrade_exit(WorkerExit::Signal(crate::exit::Signal::KILL));
    assert_eq!(
        acts,
        vec![Action::NewMasterExited {
            pid: new,
            exit: WorkerExit::Signal(crate::exit::Signal::KILL)
        }]
    );
}

#[test]
fn a_new_program_that_cannot_start_is_rolled_back() {
    let mut h = Harness::new(cfg(1));
    h.m.upgrade_start_fails = true;
    let acts = h.signal(Signal::Usr2);
    assert_eq!(
        acts,
        vec![
            Action::StartUpgrade,
            Action::RolledBack {
                pid: None,
                why: Rollback::ExecFailed
            }
        ]
    );
    assert_eq!(h.m.sup.new_master(), None);
}

#[test]
fn a_second_usr2_during_an_upgrade_or_a_stop_is_ignored() {
    let mut h = Harness::new(cfg(1));
    h.signal(Signal::Usr2);
    let new = h.m.sup.new_master();
    assert_eq!(
        h.signal(Signal::Usr2),
        vec![Action::UpgradeIgnored {
            why: Ignored::UnderWay { pid: new }
        }]
    );
    h.upgrade_exit(WorkerExit::Code(1));
    h.signal(Signal::Term);
    assert_eq!(
        h.signal(Signal::Usr2)[..1],
        [Action::UpgradeIgnored {
            why: Ignored::Stopping
        }]
    );
}

#[test]
fn term_during_an_upgrade_stops_both_masters_and_waits_for_the_new_one() {
    let mut h = Harness::new(cfg(2));
    h.signal(Signal::Usr2);
    let new = h.m.sup.new_master().expect("a new master");
    let acts = h.signal(Signal::Term);
    assert!(
        acts.contains(&Action::SignalNewMaster {
            pid: new,
            signal: Signal::Term
        }),
        "{acts:?}"
    );
    for pid in h.live() {
        h.exit(pid, WorkerExit::Code(0));
    }
    assert_eq!(h.outcome(), None, "the new master still runs");
    // Its readiness now is too late: no handover.
    assert_eq!(h.upgrade_ready(), vec![]);
    // Its grace ends: KILL; then its exit ends the run.
    let acts = h.wake();
    assert_eq!(
        acts,
        vec![Action::SignalNewMaster {
            pid: new,
            signal: Signal::Kill
        }]
    );
    h.upgrade_exit(WorkerExit::Signal(crate::exit::Signal::KILL));
    assert_eq!(h.outcome(), Some(&Ok(())));
}

#[test]
fn hup_ttin_and_ttou_during_an_upgrade_go_on_as_usual() {
    let mut h = Harness::new(cfg(2));
    h.signal(Signal::Usr2);
    let acts = h.signal(Signal::Hup);
    assert!(acts.contains(&Action::Reloading), "{acts:?}");
    h.signal(Signal::Ttin);
    assert_eq!(h.m.sup.active_slots(), 3);
    h.signal(Signal::Ttou);
    assert_eq!(h.m.sup.active_slots(), 2);
    let new = h.m.sup.new_master().expect("still under way");
    let acts = h.upgrade_ready();
    assert_eq!(acts[0], Action::HandedOver { pid: new });
}

// ---- A stop always ends.

#[test]
fn a_stop_gives_up_on_workers_that_survive_kill_and_ends() {
    let mut c = cfg(2);
    c.shutdown_grace = 3 * SEC;
    let mut h = Harness::new(c);
    h.m.make_unkillable();
    let live = h.live();
    h.signal(Signal::Term);
    // The grace ends: KILL, which they survive.
    let acts = h.wake();
    assert!(
        acts.iter()
            .filter(|a| matches!(
                a,
                Action::Signal {
                    signal: Signal::Kill,
                    ..
                }
            ))
            .count()
            == 2,
        "{acts:?}"
    );
    assert_eq!(h.outcome(), None);
    // The margin after KILL ends: the stop gives up on them, and says so.
    let acts = h.wake();
    assert_eq!(acts, vec![Action::Unreaped { pids: live.clone() }]);
    assert_eq!(
        h.outcome(),
        Some(&Err(Failure::Unreaped { pids: live })),
        "the outcome names them"
    );
}

// ---- The operator's commands (the control socket).

impl Harness {
    /// A command from a new client: the client and the actions of the step.
    fn command(&mut self, command: Command) -> (Client, Vec<Action>) {
        let client = self.m.command(command);
        (client, self.settle())
    }

    /// The answer to `client` in `actions`.
    fn answer_in(actions: &[Action], client: Client) -> Option<Answer> {
        actions.iter().find_map(|a| match a {
            Action::Answer { client: c, answer } if *c == client => Some(answer.clone()),
            _ => None,
        })
    }
}

#[test]
fn status_and_metrics_are_answered_at_once_in_every_phase() {
    let mut h = Harness::manual(cfg(2));
    for command in [Command::Status, Command::Metrics] {
        let (client, acts) = h.command(command);
        assert_eq!(
            acts,
            vec![Action::Answer {
                client,
                answer: Answer::Snapshot
            }]
        );
    }
    h.ready(100);
    h.ready(101);
    h.signal(Signal::Term);
    let (client, acts) = h.command(Command::Status);
    assert_eq!(Harness::answer_in(&acts, client), Some(Answer::Snapshot));
}

#[test]
fn stop_answers_then_stops_gracefully_and_a_second_stop_forces_nothing() {
    let mut h = Harness::new(cfg(2));
    let (client, acts) = h.command(Command::Stop);
    assert_eq!(
        acts[0],
        Action::Answer {
            client,
            answer: Answer::Stopping
        },
        "answered before the stop's actions: {acts:?}"
    );
    assert!(acts.contains(&Action::Stopping), "{acts:?}");
    assert!(h.signals().iter().all(|s| s.1 == Signal::Term));
    let (again, acts) = h.command(Command::Stop);
    assert_eq!(
        acts,
        vec![Action::Answer {
            client: again,
            answer: Answer::Stopping
        }],
        "no KILL, unlike a second TERM"
    );
    for pid in h.live() {
        h.exit(pid, WorkerExit::Code(0));
    }
    assert_eq!(h.outcome(), Some(&Ok(())));
}

#[test]
fn reload_answers_when_every_slot_has_a_new_ready_worker() {
    let mut h = Harness::manual(cfg(2));
    h.ready(100);
    h.ready(101);
    let (client, acts) = h.command(Command::Reload);
    assert_eq!(acts, vec![Action::Reloading, spawn(0, None)]);
    h.ready(102);
    h.exit(100, WorkerExit::Code(0));
    assert_eq!(Harness::answer_in(&h.last, client), None, "one slot to go");
    let acts = h.ready(103);
    assert_eq!(
        Harness::answer_in(&acts, client),
        Some(Answer::Reloaded {
            pids: vec![102, 103]
        }),
        "{acts:?}"
    );
    assert!(acts.contains(&Action::Reloaded));
}

#[test]
fn a_reload_and_a_hup_during_a_restart_coalesce_into_one_more_restart() {
    let mut h = Harness::new(cfg(1));
    let (first, _) = h.command(Command::Reload);
    // The replacement (101) is ready at once: the restart ended, the old worker drains.
    assert_eq!(
        Harness::answer_in(&h.last, first),
        Some(Answer::Reloaded { pids: vec![101] })
    );
    // During the drain a HUP and a reload coalesce into one more restart.
    h.signal(Signal::Hup);
    let (second, acts) = h.command(Command::Reload);
    assert_eq!(Harness::answer_in(&acts, second), None);
    h.exit(100, WorkerExit::Code(0));
    let answer = Harness::answer_in(&h.last, second);
    assert_eq!(answer, Some(Answer::Reloaded { pids: vec![102] }));
    assert_eq!(h.spawns(), 3, "exactly one more restart");
}

#[test]
fn reload_before_the_master_is_ready_waits_for_the_restart_after_it() {
    let mut h = Harness::manual(cfg(1));
    let (client, acts) = h.command(Command::Reload);
    assert!(acts.is_empty(), "{acts:?}");
    let acts = h.ready(100);
    assert!(acts.contains(&Action::Reloading), "{acts:?}");
    let acts = h.ready(101);
    assert_eq!(
        Harness::answer_in(&acts, client),
        Some(Answer::Reloaded { pids: vec![101] })
    );
}

#[test]
fn scale_adds_and_removes_slots_in_one_step_and_answers_when_they_serve() {
    let mut h = Harness::manual(cfg(1));
    let (early, acts) = h.command(Command::Scale(3));
    assert_eq!(
        acts,
        vec![Action::Answer {
            client: early,
            answer: Answer::Refused(Refusal::Starting)
        }]
    );
    h.ready(100);
    let (client, acts) = h.command(Command::Scale(3));
    assert_eq!(
        acts,
        vec![
            spawn(1, None),
            Action::Steer { active: 2 },
            spawn(2, None),
            Action::Steer { active: 3 },
        ]
    );
    h.ready(101);
    assert_eq!(Harness::answer_in(&h.last, client), None);
    let acts = h.ready(102);
    assert_eq!(
        Harness::answer_in(&acts, client),
        Some(Answer::Scaled {
            pids: vec![100, 101, 102]
        })
    );
    // Down to one: answered at once (slot 0 serves), the others drain.
    let (down, acts) = h.command(Command::Scale(1));
    assert_eq!(
        Harness::answer_in(&acts, down),
        Some(Answer::Scaled { pids: vec![100] })
    );
    let mut told: Vec<u32> = h.signals().iter().map(|s| s.0).collect();
    told.sort_unstable();
    assert_eq!(told, vec![101, 102]);
    // The same count again: answered at once, nothing changes.
    let (same, acts) = h.command(Command::Scale(1));
    assert_eq!(
        acts,
        vec![Action::Answer {
            client: same,
            answer: Answer::Scaled { pids: vec![100] }
        }]
    );
}

#[test]
fn a_later_count_supersedes_a_waiting_scale() {
    let mut h = Harness::manual(cfg(1));
    h.ready(100);
    let (first, _) = h.command(Command::Scale(3));
    let (second, acts) = h.command(Command::Scale(2));
    assert_eq!(
        Harness::answer_in(&acts, first),
        Some(Answer::Refused(Refusal::Superseded { workers: 2 }))
    );
    h.ready(101);
    assert_eq!(
        Harness::answer_in(&h.last, second),
        Some(Answer::Scaled {
            pids: vec![100, 101]
        })
    );
    let (third, _) = h.command(Command::Scale(4));
    let acts = h.signal(Signal::Ttou);
    assert_eq!(
        Harness::answer_in(&acts, third),
        Some(Answer::Refused(Refusal::Superseded { workers: 3 }))
    );
}

#[test]
fn upgrade_answers_with_the_new_master_and_joins_a_usr2_under_way() {
    let mut h = Harness::new(cfg(2));
    h.signal(Signal::Usr2);
    let new = h.m.sup.new_master().expect("a new master");
    let (client, acts) = h.command(Command::Upgrade);
    assert!(acts.is_empty(), "it joins the USR2's upgrade: {acts:?}");
    let (other, _) = h.command(Command::Reload);
    let acts = h.upgrade_ready();
    assert_eq!(acts[0], Action::HandedOver { pid: new });
    assert_eq!(
        Harness::answer_in(&acts, client),
        Some(Answer::Upgraded { pid: new })
    );
    assert_eq!(
        Harness::answer_in(&acts, other),
        Some(Answer::Refused(Refusal::HandedOver { pid: new }))
    );
}

#[test]
fn upgrade_answers_every_rollback_with_its_cause() {
    // Exec failed.
    let mut h = Harness::new(cfg(1));
    h.m.upgrade_start_fails = true;
    let (client, acts) = h.command(Command::Upgrade);
    assert_eq!(
        Harness::answer_in(&acts, client),
        Some(Answer::RolledBack(Rollback::ExecFailed))
    );
    // Exited before it was ready.
    let (client, _) = h.command(Command::Upgrade);
    let acts = h.upgrade_exit(WorkerExit::Code(3));
    assert_eq!(
        Harness::answer_in(&acts, client),
        Some(Answer::RolledBack(Rollback::Exited(WorkerExit::Code(3))))
    );
    // Not ready in time; a command while it is killed is refused.
    let (client, _) = h.command(Command::Upgrade);
    let acts = h.wake();
    assert_eq!(
        Harness::answer_in(&acts, client),
        Some(Answer::RolledBack(Rollback::NotReady(60 * SEC)))
    );
    let (late, acts) = h.command(Command::Upgrade);
    assert!(matches!(
        Harness::answer_in(&acts, late),
        Some(Answer::Refused(Refusal::UpgradeUnderWay { pid: Some(_) }))
    ));
    let (rollback, acts) = h.command(Command::Rollback);
    assert_eq!(
        Harness::answer_in(&acts, rollback),
        Some(Answer::Refused(Refusal::NoRollback))
    );
}

#[test]
fn a_stop_answers_every_command_still_waiting() {
    let mut h = Harness::manual(cfg(1));
    h.ready(100);
    let (reload, _) = h.command(Command::Reload);
    let (scale, _) = h.command(Command::Scale(2));
    let (upgrade, _) = h.command(Command::Upgrade);
    let acts = h.signal(Signal::Term);
    for client in [reload, scale, upgrade] {
        assert_eq!(
            Harness::answer_in(&acts, client),
            Some(Answer::Refused(Refusal::Stopping)),
            "{acts:?}"
        );
    }
    let (late, acts) = h.command(Command::Reload);
    assert_eq!(
        Harness::answer_in(&acts, late),
        Some(Answer::Refused(Refusal::Stopping))
    );
}
