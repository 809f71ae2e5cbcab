//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by a unit test that
//! runs their seed corpora, so the corpora run under `cargo test` even where cargo-fuzz
//! cannot.
//!
//! Each entry point decodes arbitrary bytes into calls of the code under test and panics
//! when an invariant breaks; any input that does not panic is fine.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::error::Error;
use crate::protocol::{
    self, CHILD_ENV, DEFAULT_FDNAME, LISTEN_FDNAMES_ENV, LISTEN_FDS_ENV, LISTEN_PID_ENV, ListenFds,
    MAX_FDNAME_LEN, MAX_LISTEN_FDS, MAX_WORKER_ID, WORKER_ID_ENV,
};
use crate::supervisor::{Action, Config, Failure, Supervisor, WorkerExit, sig};

// ---------------------------------------------------------------------------------------
// Environment protocol
// ---------------------------------------------------------------------------------------

/// The pid `env` passes as ours unless the input asks for `LISTEN_PID`'s own value.
const ENV_OUR_PID: u32 = 4242;

/// Fuzzes the parsers of [`crate::protocol`].
///
/// Input: one flag byte, then up to five fields separated by `0xFF` bytes, in order:
/// `FASTHTTP_PREFORK_CHILD`, `PREFORK_WORKER_ID`, `LISTEN_PID`, `LISTEN_FDS`,
/// `LISTEN_FDNAMES`. Flag bits 0 to 4 say whether each variable is set (a set variable with
/// no field left is set to the empty string). With bit 5 our pid is `LISTEN_PID` read
/// leniently (`str::parse::<u32>`, so `+7` gives 7), else 4242.
///
/// Each parser's result is compared with a simple reference implementation, every error's
/// `Display` is checked, and every field also goes through every single-value parser.
pub fn env(data: &[u8]) {
    let (flags, rest) = match data.split_first() {
        Some((&f, rest)) => (f, rest),
        None => (0, &[][..]),
    };
    let mut fields = rest.split(|&b| b == 0xFF);
    let mut vars: [Option<&[u8]>; 5] = [None; 5];
    for (i, var) in vars.iter_mut().enumerate() {
        let field = fields.next();
        if flags & (1 << i) != 0 {
            *var = Some(field.unwrap_or(&[]));
        }
    }
    let [child, worker_id, listen_pid, listen_fds, listen_fdnames] = vars;
    let our_pid = match listen_pid {
        Some(v) if flags & 0x20 != 0 => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(ENV_OUR_PID),
        _ => ENV_OUR_PID,
    };

    check_child_flag(child);
    check_worker_id(worker_id);
    check_listen_fds(listen_pid, listen_fds, listen_fdnames, our_pid);

    // Every field through every parser: more shapes for the same code.
    for v in vars.iter().flatten() {
        check_child_flag(Some(v));
        check_worker_id(Some(v));
        check_listen_fds(Some(v), Some(v), Some(v), our_pid);
        check_listen_fds(listen_pid, Some(v), Some(v), our_pid);
        check_listen_fds(listen_pid, listen_fds, Some(v), our_pid);
    }
}

/// Checks an `InvalidEnv` error: the expected variable, the value found, a reason, and a
/// `Display` that names them.
fn check_env_error(err: &Error, want_var: &str, want_value: &[u8]) {
    let Error::InvalidEnv { var, value, reason } = err else {
        panic!("expected Error::InvalidEnv for {want_var}, got {err:?}");
    };
    assert_eq!(*var, want_var, "error names the wrong variable: {err:?}");
    assert_eq!(
        *value,
        String::from_utf8_lossy(want_value),
        "error reports the wrong value"
    );
    assert!(!reason.is_empty(), "error without a reason: {err:?}");
    let msg = err.to_string();
    assert!(!msg.is_empty());
    assert!(
        msg.starts_with(&format!("invalid environment variable {var}=")),
        "{msg}"
    );
    assert!(msg.ends_with(reason.as_str()), "{msg}");
}

/// The reference for the strict decimal format: what `str::parse` accepts, minus a leading
/// `+` and non-canonical forms, up to `max`.
fn reference_decimal(v: &[u8], max: u64) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    let n: u64 = s.parse().ok()?;
    (n.to_string() == s && n <= max).then_some(n)
}

fn check_child_flag(v: Option<&[u8]>) {
    let got = protocol::parse_child_flag(v);
    match (v, got) {
        (None | Some(b""), Ok(false)) | (Some(b"1"), Ok(true)) => {}
        (Some(v), Err(e)) if v != b"" && v != b"1" => check_env_error(&e, CHILD_ENV, v),
        (v, got) => panic!("parse_child_flag({v:?}) = {got:?}"),
    }
}

fn check_worker_id(v: Option<&[u8]>) {
    let got = protocol::parse_worker_id(v);
    let Some(v) = v else {
        assert!(matches!(got, Ok(None)), "absent id: {got:?}");
        return;
    };
    match (reference_decimal(v, MAX_WORKER_ID as u64), got) {
        (Some(want), Ok(Some(n))) => assert_eq!(n as u64, want, "id {v:?}"),
        (None, Err(e)) => check_env_error(&e, WORKER_ID_ENV, v),
        (want, got) => panic!("parse_worker_id({v:?}) = {got:?}, expected {want:?}"),
    }
}

/// What `parse_listen_fds` must return, computed the simple way: `Ok(Some)`, `Ok(None)`, or
/// the variable the error must name.
fn reference_listen_fds(
    pid: Option<&[u8]>,
    fds: Option<&[u8]>,
    names: Option<&[u8]>,
    our_pid: u32,
) -> Result<Option<ListenFds>, (&'static str, Vec<u8>)> {
    let Some(pid) = pid else { return Ok(None) };
    let pid = match reference_decimal(pid, i32::MAX as u64) {
        Some(p) if p > 0 => p,
        _ => return Err((LISTEN_PID_ENV, pid.to_vec())),
    };
    if pid != u64::from(our_pid) {
        return Ok(None);
    }
    let Some(fds) = fds else {
        return Err((LISTEN_FDS_ENV, Vec::new()));
    };
    let Some(count) = reference_decimal(fds, MAX_LISTEN_FDS as u64) else {
        return Err((LISTEN_FDS_ENV, fds.to_vec()));
    };
    let count = count as usize;
    if count == 0 {
        return Ok(None);
    }
    let names = match names {
        None | Some(b"") => vec![DEFAULT_FDNAME.to_owned(); count],
        Some(all) => {
            let s = String::from_utf8_lossy(all);
            let names: Vec<String> = s.split(':').map(str::to_owned).collect();
            let valid = |n: &String| {
                !n.is_empty()
                    && n.len() <= MAX_FDNAME_LEN
                    && n.chars().all(|c| (' '..='~').contains(&c) && c != ':')
            };
            if names.len() != count || !names.iter().all(valid) {
                return Err((LISTEN_FDNAMES_ENV, all.to_vec()));
            }
            names
        }
    };
    Ok(Some(ListenFds { count, names }))
}

fn check_listen_fds(pid: Option<&[u8]>, fds: Option<&[u8]>, names: Option<&[u8]>, our_pid: u32) {
    let got = protocol::parse_listen_fds(pid, fds, names, our_pid);
    if let Ok(Some(l)) = &got {
        assert_eq!(l.names.len(), l.count, "one name per descriptor: {l:?}");
        assert!((1..=MAX_LISTEN_FDS).contains(&l.count), "count {}", l.count);
    }
    match (reference_listen_fds(pid, fds, names, our_pid), got) {
        (Ok(want), Ok(got)) => {
            assert_eq!(got, want, "parse_listen_fds({pid:?}, {fds:?}, {names:?})")
        }
        (Err((var, value)), Err(e)) => check_env_error(&e, var, &value),
        (want, got) => panic!(
            "parse_listen_fds({pid:?}, {fds:?}, {names:?}, {our_pid}) = {got:?}, expected \
             {want:?}"
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Supervisor
// ---------------------------------------------------------------------------------------

/// The pid of the first worker the model starts.
const FIRST_PID: u32 = 100;

/// TTIN is ignored once this many slots are in service.
const MAX_SLOTS: usize = 32;

/// A bound on the actions one burst of events may produce; more is an action storm.
const MAX_ACTIONS_PER_PUMP: usize = 100_000;

/// Fuzzes the [`Supervisor`] state machine against a model of the process table, driving it
/// the way the driver does: every action is performed at once (a spawn is answered with a
/// fresh pid or a failure before the next action), and time only moves forward.
///
/// Input: a 6-byte header (missing bytes read as 0), then events of one opcode byte and
/// their operands (a missing operand reads as 0).
///
/// Header: `workers = 1 + b0 % 8`; `recover_threshold = b1 % 16`;
/// `recover_window = (1 + b2) × 100 ms`; `recover_interval = b3 × 10 ms`;
/// `shutdown_grace = b4 × 100 ms`; flags `b5`: bit 0 fails the run right after the Ready
/// action (a failing `on_master_ready` hook), bits 1-2 make that many initial spawns fail,
/// bit 3 fails the run after the first spawn (a failing `on_child_spawn` hook), bit 4 makes
/// each performed spawn take 1 ms, bit 5 makes workers exit on TERM in the final shutdown
/// (otherwise they wait for KILL).
///
/// Event: the opcode's high nibble advances time by that many × 50 ms first; the low nibble
/// selects
///
/// | nibble | event |
/// |---|---|
/// | 0 | advance time by the next byte × 1 s |
/// | 1 | advance time to `next_deadline()`, if any |
/// | 2 | exit of a live worker: operand 1 picks it, operand 2 how it ended |
/// | 3 | exit of an unknown pid (reaped before, or never a worker): operand picks it |
/// | 4 to 10 | signal TERM, INT, HUP, TTIN (ignored at 32 slots), TTOU, USR1, USR2 |
/// | 11 | another signal: operand as a signed number |
/// | 12 | the driver fails (`fail`) |
/// | 13 | operand: bits 0-1 make that many next spawns fail; bit 4 fails the run after a spawn |
/// | 14 | every worker that was sent TERM exits with code 0 |
/// | 15 | every worker that was sent KILL dies of it |
///
/// After each event, as the driver does: `on_timer(now)`, then every queued action is
/// performed, then the invariants are checked. When the input is used up before the run is
/// over, TERM is sent and the workers are made to exit (on TERM or on KILL, per header bit 5)
/// until the outcome is known, which must take a bounded number of steps.
pub fn supervisor(data: &[u8]) {
    drive(data);
}

/// What a run of [`supervisor`] came to, for tests of the seeds.
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))] // read by the tests only
struct Summary {
    /// The outcome reached by the input's own events, before the final shutdown.
    outcome_by_input: Option<Result<(), Failure>>,
    /// Worker processes started.
    spawns: usize,
    /// Slots that existed.
    slots: usize,
}

fn drive(data: &[u8]) -> Summary {
    let mut input = Input(data);
    let cfg = Config {
        workers: 1 + usize::from(input.byte() % 8),
        recover_threshold: usize::from(input.byte() % 16),
        recover_window: Duration::from_millis(100 * (1 + u64::from(input.byte()))),
        recover_interval: Duration::from_millis(10 * u64::from(input.byte())),
        shutdown_grace: Duration::from_millis(100 * u64::from(input.byte())),
    };
    let flags = input.byte();
    let mut h = Harness::new(cfg, flags);
    h.pump();
    assert!(
        h.ready_seen || h.sup.is_stopping(),
        "the initial spawns neither made the master ready nor stopped the run"
    );
    h.check();

    while !input.is_empty() && h.sup.outcome().is_none() {
        let op = input.byte();
        h.advance(Duration::from_millis(50 * u64::from(op >> 4)));
        match op & 0x0f {
            0 => h.advance(Duration::from_secs(u64::from(input.byte()))),
            1 => h.wake_at_deadline(),
            2 => {
                let (pick, how) = (input.byte(), input.byte());
                let pids: Vec<u32> = h.live.keys().copied().collect();
                if !pids.is_empty() {
                    h.exit(pids[usize::from(pick) % pids.len()], exit_of(how));
                }
            }
            3 => {
                let pick = input.byte();
                let pid = match h.reaped.keys().nth(usize::from(pick) % 8) {
                    Some(&pid) if pick < 128 => pid,
                    _ => [0, 1, h.next_pid, h.next_pid + 1000, u32::MAX][usize::from(pick) % 5],
                };
                h.unknown_exit(pid);
            }
            4 => h.signal(sig::TERM),
            5 => h.signal(sig::INT),
            6 => h.signal(sig::HUP),
            7 => h.signal(sig::TTIN),
            8 => h.signal(sig::TTOU),
            9 => h.signal(sig::USR1),
            10 => h.signal(sig::USR2),
            11 => h.signal(i32::from(input.byte() as i8)),
            12 => h.sup.fail(h.now),
            13 => {
                let b = input.byte();
                h.spawn_failures = u32::from(b & 3);
                h.fail_after_spawn |= b & 0x10 != 0;
            }
            14 => h.exit_all(|w| w.term, WorkerExit::Code(0)),
            _ => h.exit_all(|w| w.kill, WorkerExit::Signal(sig::KILL)),
        }
        h.sup.on_timer(h.now);
        h.pump();
        h.check();
    }
    let outcome_by_input = h.sup.outcome().cloned();
    h.finish();
    Summary {
        outcome_by_input,
        spawns: h.next_pid as usize - FIRST_PID as usize,
        slots: h.slots_created,
    }
}

/// How a worker ended, from one byte.
fn exit_of(b: u8) -> WorkerExit {
    match b % 8 {
        0 => WorkerExit::Code(0),
        1 => WorkerExit::Code(1),
        2 => WorkerExit::Code(crate::EXIT_FATAL),
        3 => WorkerExit::Code(101),
        4 => WorkerExit::Signal(sig::KILL),
        5 => WorkerExit::Signal(sig::TERM),
        6 => WorkerExit::Signal(11),
        _ => WorkerExit::Code(i32::from(b as i8)),
    }
}

/// The fuzz input, read a byte at a time; 0 once used up.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A live worker process in the model.
#[derive(Debug, Clone, Copy)]
struct Proc {
    slot: usize,
    /// It was sent TERM.
    term: bool,
    /// It was sent KILL.
    kill: bool,
}

impl Proc {
    /// Whether it was told to stop.
    fn told(&self) -> bool {
        self.term || self.kill
    }
}

struct Harness {
    sup: Supervisor,
    workers: usize,
    now: Duration,
    /// How long performing a spawn takes.
    spawn_cost: Duration,
    next_pid: u32,
    /// The model's process table: every spawned worker not yet reported exited.
    live: BTreeMap<u32, Proc>,
    /// Reported exited: pid → slot.
    reaped: BTreeMap<u32, usize>,
    /// Slots that exist: the initial ones plus those TTIN added.
    slots_created: usize,
    /// TTIN signals not yet answered by a spawn, each of which may add a slot.
    ttin_pending: usize,
    spawn_failures: u32,
    fail_after_spawn: bool,
    fail_after_ready: bool,
    exit_on_term: bool,
    ready_seen: bool,
    was_stopping: bool,
    /// A HUP was sent at some point.
    hup_sent: bool,
}

impl Harness {
    fn new(cfg: Config, flags: u8) -> Harness {
        Harness {
            workers: cfg.workers,
            slots_created: cfg.workers,
            sup: Supervisor::new(cfg),
            now: Duration::ZERO,
            spawn_cost: if flags & 0x10 != 0 {
                Duration::from_millis(1)
            } else {
                Duration::ZERO
            },
            next_pid: FIRST_PID,
            live: BTreeMap::new(),
            reaped: BTreeMap::new(),
            ttin_pending: 0,
            spawn_failures: u32::from((flags >> 1) & 3),
            fail_after_spawn: flags & 0x08 != 0,
            fail_after_ready: flags & 0x01 != 0,
            exit_on_term: flags & 0x20 != 0,
            ready_seen: false,
            was_stopping: false,
            hup_sent: false,
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now.saturating_add(d);
    }

    /// Wakes up at the next deadline, as the driver's `epoll_wait` timeout does; `on_timer`
    /// must then make progress: nothing left due at or before now.
    fn wake_at_deadline(&mut self) {
        let Some(deadline) = self.sup.next_deadline() else {
            return;
        };
        self.now = self.now.max(deadline);
        self.sup.on_timer(self.now);
        if let Some(next) = self.sup.next_deadline() {
            assert!(
                next > self.now,
                "on_timer({:?}) made no progress: next deadline {next:?}",
                self.now
            );
        }
    }

    fn signal(&mut self, signal: i32) {
        if signal == sig::TTIN {
            if self.sup.active_slots() >= MAX_SLOTS {
                // More slots only make each step slower, not the state machine different.
                return;
            }
            self.ttin_pending += 1;
        }
        self.hup_sent |= signal == sig::HUP;
        self.sup.on_signal(signal, self.now);
    }

    /// The live worker `pid` was reaped.
    fn exit(&mut self, pid: u32, how: WorkerExit) {
        let proc = self.live.remove(&pid).expect("exit of a live worker");
        self.reaped.insert(pid, proc.slot);
        let stopping = self.sup.is_stopping();
        let slot = self.sup.on_exit(pid, how, self.now);
        assert_eq!(
            slot,
            Some(proc.slot),
            "on_exit({pid}, {how:?}) returned the wrong slot"
        );
        // (A rolling restart keeps the old worker, not yet told, while its replacement
        // starts; its exit is not a start-up failure. Checked only without HUP.)
        if how == WorkerExit::Code(crate::EXIT_FATAL) && !stopping && !proc.told() && !self.hup_sent
        {
            assert!(
                self.sup.is_stopping(),
                "worker {pid} exited with EXIT_FATAL, and the run goes on"
            );
        }
    }

    fn exit_all(&mut self, which: impl Fn(&Proc) -> bool, how: WorkerExit) {
        let pids: Vec<u32> = self
            .live
            .iter()
            .filter(|(_, p)| which(p))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in pids {
            self.exit(pid, how);
        }
    }

    /// An exit the driver would never report for a worker (a pid reaped before, or an
    /// orphan's): ignored, and nothing changes.
    fn unknown_exit(&mut self, pid: u32) {
        if self.live.contains_key(&pid) {
            return;
        }
        let before = self.sup.live_pids();
        let outcome = self.sup.outcome().cloned();
        let slot = self.sup.on_exit(pid, WorkerExit::Code(0), self.now);
        assert_eq!(slot, None, "on_exit of unknown pid {pid} returned a slot");
        assert_eq!(
            self.sup.live_pids(),
            before,
            "unknown exit changed the workers"
        );
        assert_eq!(self.sup.outcome().cloned(), outcome);
        assert!(
            self.sup.next_action().is_none(),
            "unknown exit made an action"
        );
    }

    /// Performs every queued action, checking each.
    fn pump(&mut self) {
        let mut n = 0;
        while let Some(action) = self.sup.next_action() {
            n += 1;
            assert!(n <= MAX_ACTIONS_PER_PUMP, "action storm: {action:?}");
            match action {
                Action::Spawn { slot, recovers } => self.spawn(slot, recovers),
                Action::Signal { pid, signal } => {
                    let Some(proc) = self.live.get_mut(&pid) else {
                        panic!("{action:?}: pid {pid} is not a live worker");
                    };
                    match signal {
                        sig::TERM => proc.term = true,
                        sig::KILL => proc.kill = true,
                        sig::USR1 | sig::USR2 => {}
                        _ => panic!("{action:?}: the supervisor sends no such signal"),
                    }
                }
                Action::Closed { slot } => {
                    assert!(slot < self.slots_created, "{action:?}: no such slot");
                }
                Action::Ready { pids } => {
                    assert!(!self.ready_seen, "a second Ready action");
                    self.ready_seen = true;
                    assert!(!self.sup.is_stopping(), "Ready after the stop began");
                    assert_eq!(pids.len(), self.workers, "Ready {pids:?}");
                    let slots: BTreeSet<usize> = pids
                        .iter()
                        .map(|pid| match self.live.get(pid) {
                            Some(p) => p.slot,
                            None => panic!("Ready {pids:?}: {pid} is not a live worker"),
                        })
                        .collect();
                    assert_eq!(slots, (0..self.workers).collect(), "Ready {pids:?}");
                    if self.fail_after_ready {
                        self.sup.fail(self.now);
                    }
                }
            }
        }
        self.ttin_pending = 0;
    }

    fn spawn(&mut self, slot: usize, recovers: Option<u32>) {
        let action = Action::Spawn { slot, recovers };
        assert!(!self.sup.is_stopping(), "{action:?} after the stop began");
        if slot >= self.slots_created {
            assert!(
                slot == self.slots_created && self.ttin_pending > 0,
                "{action:?}: only {} slots exist",
                self.slots_created
            );
            self.slots_created += 1;
            self.ttin_pending -= 1;
        }
        if let Some(old) = recovers {
            assert!(!self.live.contains_key(&old), "{action:?}: {old} is alive");
            assert_eq!(
                self.reaped.get(&old),
                Some(&slot),
                "{action:?}: {old} was no worker of this slot"
            );
        }
        assert!(
            self.untold_in(slot) <= 1,
            "{action:?}: the slot already runs a worker"
        );
        self.now = self.now.saturating_add(self.spawn_cost);
        if self.spawn_failures > 0 {
            self.spawn_failures -= 1;
            self.sup.on_spawn_failed(slot, self.now);
            return;
        }
        let pid = self.next_pid;
        self.next_pid += 1;
        self.live.insert(
            pid,
            Proc {
                slot,
                term: false,
                kill: false,
            },
        );
        self.sup.on_spawned(slot, pid, self.now);
        assert_eq!(
            self.sup.slot_of(pid),
            Some(slot),
            "{action:?}: the new worker {pid} is not tracked (a leaked process)"
        );
        if self.fail_after_spawn {
            self.fail_after_spawn = false;
            self.sup.fail(self.now);
        }
    }

    /// Live workers of `slot` that were not told to stop.
    fn untold_in(&self, slot: usize) -> usize {
        self.live
            .values()
            .filter(|p| p.slot == slot && !p.told())
            .count()
    }

    /// The invariants that hold whenever every action has been performed.
    fn check(&mut self) {
        let stopping = self.sup.is_stopping();
        assert!(!self.was_stopping || stopping, "a stop was undone");
        self.was_stopping = stopping;

        let mut live = self.sup.live_pids();
        live.sort_unstable();
        let n = live.len();
        live.dedup();
        assert_eq!(live.len(), n, "a pid is live twice");
        let model: Vec<u32> = self.live.keys().copied().collect();
        assert_eq!(
            live, model,
            "the supervisor's live workers differ from the processes"
        );

        let mut untold_slots = BTreeSet::new();
        for (&pid, p) in &self.live {
            assert_eq!(self.sup.slot_of(pid), Some(p.slot), "slot of {pid}");
            assert!(p.slot < self.slots_created, "{pid} in slot {}", p.slot);
            if !p.told() {
                assert!(
                    untold_slots.insert(p.slot),
                    "two workers run in slot {} (neither told to stop)",
                    p.slot
                );
                assert!(
                    !stopping,
                    "worker {pid} was not told to stop during the stop"
                );
            }
            if p.term && !p.kill {
                assert!(
                    self.sup.next_deadline().is_some(),
                    "worker {pid} was sent TERM, but no KILL is scheduled"
                );
            }
        }
        assert_eq!(self.sup.slot_count(), self.slots_created, "slots created");
        let active = self.sup.active_slots();
        assert!(active <= self.slots_created, "{active} active slots");
        assert!(
            untold_slots.len() <= active,
            "more running slots than active ones"
        );

        match self.sup.outcome() {
            Some(_) => assert!(
                self.live.is_empty(),
                "an outcome while workers live: {:?}",
                self.live
            ),
            None => assert!(
                !(stopping && self.live.is_empty()),
                "every worker is gone after the stop, but no outcome"
            ),
        }
    }

    /// Ends the run: TERM, then workers exit (on TERM, or when killed) until the outcome.
    fn finish(&mut self) {
        if self.sup.outcome().is_some() {
            return;
        }
        self.signal(sig::TERM);
        self.sup.on_timer(self.now);
        self.pump();
        self.check();
        assert!(self.sup.is_stopping(), "TERM did not begin a stop");
        // A round either reaps killed workers or wakes at the next deadline, which KILLs at
        // least one more. A retiring worker keeps its own (earlier) KILL deadline, so there
        // are at most one deadline per live worker plus the stop's own: two rounds each.
        let rounds = 2 * (self.live.len() + 2);
        for _ in 0..rounds {
            if self.sup.outcome().is_some() {
                return;
            }
            let before = self.live.len();
            self.exit_all(|p| p.kill, WorkerExit::Signal(sig::KILL));
            if self.exit_on_term {
                self.exit_all(|p| p.term, WorkerExit::Code(0));
            }
            if self.live.len() == before {
                let deadline = self.sup.next_deadline();
                assert!(
                    deadline.is_some(),
                    "workers {:?} live, none was killed, and no deadline",
                    self.live
                );
                self.wake_at_deadline();
            }
            self.sup.on_timer(self.now);
            self.pump();
            self.check();
        }
        assert!(
            self.sup.outcome().is_some(),
            "no outcome after TERM and every exit: {:?}",
            self.live
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The seed files of one fuzz target, sorted; `None` where the crate was packaged
    /// without `fuzz/` (it is a separate package, left out by `cargo package`).
    fn corpus(target: &str) -> Option<Vec<PathBuf>> {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        if !fuzz.join("Cargo.toml").exists() {
            eprintln!("no fuzz/ directory: skipping the {target} corpus");
            return None;
        }
        let dir = fuzz.join("corpus").join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|entry| entry.expect("reading a corpus entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} holds no seed", dir.display());
        Some(files)
    }

    fn run_corpus(target: &str, f: fn(&[u8])) {
        let Some(files) = corpus(target) else { return };
        for path in files {
            let data = std::fs::read(&path).expect("reading a seed");
            let r = std::panic::catch_unwind(|| f(&data));
            assert!(
                r.is_ok(),
                "fuzz target {target} fails on {}",
                path.display()
            );
        }
    }

    #[test]
    fn env_protocol_corpus() {
        run_corpus("env_protocol", super::env);
    }

    #[test]
    fn supervisor_corpus() {
        run_corpus("supervisor", super::supervisor);
    }

    fn seed(name: &str) -> Option<Vec<u8>> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/supervisor")
            .join(name);
        if !path.parent()?.exists() {
            return None;
        }
        Some(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }

    /// The supervisor seeds reach what their names promise (so they keep covering it).
    #[test]
    fn supervisor_seeds_reach_their_paths() {
        use crate::supervisor::Failure;
        let cases: &[(&str, Option<Result<(), Failure>>)] = &[
            ("term_then_graceful_exits", Some(Ok(()))),
            ("term_stubborn_workers", Some(Ok(()))),
            ("double_term_kills_at_once", Some(Ok(()))),
            ("crash_loop", Some(Err(Failure::OverRecovery { exits: 4 }))),
            (
                "crash_loop_zero_interval",
                Some(Err(Failure::OverRecovery { exits: 3 })),
            ),
            ("initial_spawn_fails", Some(Err(Failure::External))),
            ("spawn_hook_fails", Some(Err(Failure::External))),
            ("ready_hook_fails", Some(Err(Failure::External))),
            ("fail_mid_run", Some(Err(Failure::External))),
            ("hup_graceful", Some(Ok(()))),
            ("unknown_exits", None),
        ];
        for (name, want) in cases {
            let Some(data) = seed(name) else { return };
            let got = super::drive(&data).outcome_by_input;
            assert_eq!(&got, want, "seed {name}");
        }
        if let Some(data) = seed("fatal_exit") {
            let got = super::drive(&data).outcome_by_input;
            assert!(
                matches!(
                    got,
                    Some(Err(Failure::WorkerFatal {
                        slot: 1,
                        code: 3,
                        ..
                    }))
                ),
                "{got:?}"
            );
        }
        if let Some(data) = seed("hup_graceful") {
            // 3 initial workers, then 3 replacements.
            assert_eq!(super::drive(&data).spawns, 6);
        }
        if let Some(data) = seed("ttin_ttou") {
            assert_eq!(super::drive(&data).slots, 3);
        }
    }

    #[test]
    fn empty_and_tiny_inputs() {
        for data in [&[][..], &[0], &[0xff], &[0x3f, 0xff, 0xff, 0xff, 0xff]] {
            super::env(data);
            super::supervisor(data);
        }
    }
}
