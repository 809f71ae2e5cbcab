//! The fuzz target of the supervisor: arbitrary event orders against the reference model.

use std::time::Duration;

use crate::exit::{EXIT_FATAL, WorkerExit};
use crate::supervisor::model::{FIRST_PID, Model};
use crate::supervisor::{Action, Config, Failure};
use crate::sys::signal::Signal;

/// TTIN is ignored once this many slots are in service.
const MAX_SLOTS: usize = 32;

/// Fuzzes the supervisor state machine against the reference model of the driver and
/// the worker processes (`supervisor::model`), which performs every action at once (a spawn
/// is answered with a fresh pid or a failure before the next action), moves time only
/// forward, and checks every step: how each exit is judged, the crash-loop guard, respawn
/// delays, when a retiring worker is told, KILL deadlines, no spawn after a stop, the
/// outcome, and that the actions are well-formed.
///
/// Input: a 6-byte header (missing bytes read as 0), then events of one opcode byte and
/// their operands (a missing operand reads as 0).
///
/// Header: `workers = 1 + b0 % 8`; `recover_threshold = b1 % 16`;
/// `recover_window = (1 + b2) × 100 ms`, and `upgrade_timeout` the same;
/// `recover_interval = b3 × 10 ms`;
/// `shutdown_grace = b4 × 100 ms`; flags `b5`: bit 0 fails the run right after the Ready
/// action (a failing `on_master_ready` hook), bits 1-2 make that many initial spawns fail,
/// bit 3 fails the run after the first spawn (a failing `on_child_spawn` hook), bit 4 makes
/// each performed spawn take 1 ms, bit 5 makes workers exit on TERM in the final shutdown
/// (otherwise they wait for KILL), bit 6 makes workers report ready only through event 10
/// (otherwise each reports ready right after its spawn), bit 7 gives upgrades a probation as
/// long as the recover window (the old master waits after a handover; HUP and `rollback`
/// roll back, see `upgrade_event`).
///
/// Event: the opcode's high nibble advances time by that many × 50 ms first; the low nibble
/// selects
///
/// | nibble | event |
/// |---|---|
/// | 0 | advance time by the next byte × 1 s |
/// | 1 | advance time to `next_deadline()`, if any |
/// | 2 | exit of a live worker: operand 1 picks it, operand 2 how it ended (see `exit_of`) |
/// | 3 | exit of an unknown pid (reaped before, or never a worker): operand picks it |
/// | 4 to 9 | signal TERM, INT, HUP, TTIN (ignored at 32 slots), TTOU, USR1 |
/// | 10 | a worker that has not reported ready does: operand picks it (255: all of them) |
/// | 11 | any signal the master handles: `Signal::ALL[operand % 10]` |
/// | 12 | the driver fails (`fail`) |
/// | 13 | operand: with bits 6 and 7 set, a command of the operator (see `command_event`); with bit 7 set, an event of the binary upgrade (see `upgrade_event`); else bits 0-1 make that many next spawns fail; bit 4 fails the run after a spawn; bit 5 has the health checks recycle a live worker, else bit 6 find one stuck (bits 2-3 pick it) |
/// | 14 | every worker that was sent TERM exits with code 0 |
/// | 15 | every worker that was sent KILL dies of it |
///
/// Each event is followed, as in the driver, by the actions it caused, `on_timer(now)` and
/// the actions that caused, and the model's checks. When the input is used up before the
/// run is over, TERM is sent and the workers are made to exit (on TERM or on KILL, per
/// header bit 5) until the outcome is known, which must come within the grace period.
pub fn supervisor(data: &[u8]) {
    drive(data);
}

/// What a run of [`supervisor`] came to, for tests of the seeds.
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))] // read by the tests only
pub(super) struct Summary {
    /// The outcome reached by the input's own events, before the final shutdown.
    pub(super) outcome_by_input: Option<Result<(), Failure>>,
    /// Worker processes started.
    pub(super) spawns: usize,
    /// Slots that existed.
    pub(super) slots: usize,
    /// Every action performed.
    pub(super) log: Vec<Action>,
}

pub(super) fn drive(data: &[u8]) -> Summary {
    let mut input = Input(data);
    let workers = 1 + usize::from(input.byte() % 8);
    let recover_threshold = usize::from(input.byte() % 16);
    let recover_window = Duration::from_millis(100 * (1 + u64::from(input.byte())));
    let cfg = Config {
        workers,
        recover_threshold,
        recover_window,
        recover_interval: Duration::from_millis(10 * u64::from(input.byte())),
        shutdown_grace: Duration::from_millis(100 * u64::from(input.byte())),
        // The header has no byte of its own for it: the window's value serves both.
        upgrade_timeout: recover_window,
        upgrade_probation: Duration::ZERO,
    };
    let flags = input.byte();
    let cfg = Config {
        upgrade_probation: if flags & 0x80 != 0 {
            recover_window
        } else {
            Duration::ZERO
        },
        ..cfg
    };
    let mut m = Model::new(cfg);
    m.fail_after_ready = flags & 0x01 != 0;
    m.spawn_failures = u32::from((flags >> 1) & 3);
    m.fail_after_spawn = flags & 0x08 != 0;
    if flags & 0x10 != 0 {
        m.spawn_cost = Duration::from_millis(1);
    }
    let exit_on_term = flags & 0x20 != 0;
    m.auto_ready = flags & 0x40 == 0;
    m.settle();
    if m.auto_ready {
        assert!(
            m.ready_seen || m.sup.is_stopping(),
            "the initial spawns neither made the master ready nor stopped the run"
        );
    }

    while !input.is_empty() && m.sup.outcome().is_none() {
        let op = input.byte();
        m.advance(Duration::from_millis(50 * u64::from(op >> 4)));
        match op & 0x0f {
            0 => m.advance(Duration::from_secs(u64::from(input.byte()))),
            1 => m.wake_at_deadline(),
            2 => {
                let (pick, how) = (input.byte(), input.byte());
                let pids: Vec<u32> = m.live.keys().copied().collect();
                if !pids.is_empty() {
                    m.exit(pids[usize::from(pick) % pids.len()], exit_of(how));
                }
            }
            3 => {
                let pick = input.byte();
                let pid = match m.reaped.keys().nth(usize::from(pick) % 8) {
                    Some(&pid) if pick < 128 => pid,
                    _ => [0, 1, m.next_pid, m.next_pid + 1000, u32::MAX][usize::from(pick) % 5],
                };
                m.unknown_exit(pid);
            }
            4 => m.signal(Signal::Term),
            5 => m.signal(Signal::Int),
            6 => m.signal(Signal::Hup),
            7 => ttin(&mut m),
            8 => m.signal(Signal::Ttou),
            9 => m.signal(Signal::Usr1),
            10 => {
                let pick = input.byte();
                let waiting: Vec<u32> = m
                    .live
                    .iter()
                    .filter(|(_, p)| p.ready.is_none())
                    .map(|(&pid, _)| pid)
                    .collect();
                if pick == 0xFF {
                    for pid in waiting {
                        m.ready(pid);
                        m.pump();
                    }
                } else if !waiting.is_empty() {
                    m.ready(waiting[usize::from(pick) % waiting.len()]);
                }
            }
            11 => match Signal::ALL[usize::from(input.byte()) % Signal::ALL.len()] {
                Signal::Ttin => ttin(&mut m),
                s => m.signal(s),
            },
            12 => m.fail(),
            13 if input.peek() & 0x80 != 0 => upgrade_event(&mut m, input.byte()),
            13 => {
                let b = input.byte();
                m.spawn_failures = u32::from(b & 3);
                m.fail_after_spawn |= b & 0x10 != 0;
                let pids: Vec<u32> = m.live.keys().copied().collect();
                if b & 0x60 != 0 && !pids.is_empty() {
                    let pid = pids[usize::from((b >> 2) & 3) % pids.len()];
                    if b & 0x20 != 0 {
                        m.recycle(pid);
                    } else {
                        m.kill_stuck(pid);
                    }
                }
            }
            14 => m.exit_all(|p| p.term, WorkerExit::Code(0)),
            _ => m.exit_all(|p| p.kill, WorkerExit::Signal(crate::exit::Signal::KILL)),
        }
        m.settle();
    }
    let outcome_by_input = m.sup.outcome().cloned();
    m.finish(exit_on_term);
    Summary {
        outcome_by_input,
        spawns: m.next_pid as usize - FIRST_PID as usize,
        slots: m.slots_created,
        log: m.log,
    }
}

/// An event of the binary upgrade, from an operand byte with bit 7 set: `b & 7` selects
/// USR2, the new master's readiness, its exit (code 0, code 1, or KILL), a USR2 whose start
/// fails, two USR2s, or readiness followed by a USR2; `0x88..=0x8F` makes every live worker
/// unkillable (KILL no longer ends it, as when a sandbox refuses the master's signals).
fn upgrade_event(m: &mut Model, b: u8) {
    if b & 0xC0 == 0xC0 {
        command_event(m, b);
        return;
    }
    if b & 0x78 == 0x08 {
        // 0x88..=0x8F: the live workers stop dying of KILL.
        m.make_unkillable();
        return;
    }
    match b & 7 {
        0 => m.signal(Signal::Usr2),
        1 => m.upgrade_ready(),
        2 => m.upgrade_exit(WorkerExit::Code(0)),
        3 => m.upgrade_exit(WorkerExit::Code(1)),
        4 => m.upgrade_exit(WorkerExit::Signal(crate::exit::Signal::KILL)),
        5 => {
            m.upgrade_start_fails = true;
            m.signal(Signal::Usr2);
        }
        6 => {
            m.signal(Signal::Usr2);
            m.pump();
            m.signal(Signal::Usr2);
        }
        _ => {
            m.upgrade_ready();
            m.pump();
            m.signal(Signal::Usr2);
        }
    }
}

/// A command of the operator, from an operand byte with bits 6 and 7 set: `b & 7` selects
/// `status`, `metrics`, `reload`, `upgrade`, `rollback`, `scale N` with N = 1 + `(b >> 3) & 7`,
/// `stop`, or USR2 followed by `upgrade` (which then joins it). The model checks that each
/// is answered exactly once, with an answer its command can have, when its outcome is known,
/// and that a stop leaves none without one.
fn command_event(m: &mut Model, b: u8) {
    use crate::supervisor::Command;
    let command = match b & 7 {
        0 => Command::Status,
        1 => Command::Metrics,
        2 => Command::Reload,
        3 => Command::Upgrade,
        4 => Command::Rollback,
        5 => Command::Scale(1 + usize::from((b >> 3) & 7)),
        6 => Command::Stop,
        _ => {
            m.signal(Signal::Usr2);
            m.pump();
            Command::Upgrade
        }
    };
    m.command(command);
}

/// TTIN, unless the supervisor already has [`MAX_SLOTS`] slots in service: more slots only
/// make each step slower, not the state machine different.
fn ttin(m: &mut Model) {
    if m.sup.active_slots() < MAX_SLOTS {
        m.signal(Signal::Ttin);
    }
}

/// How a worker ended, from one byte: `b % 16` selects exit code 0, 1, [`EXIT_FATAL`]
/// or 101, or death by SIGKILL, SIGTERM, SIGSEGV, SIGUSR1, SIGUSR2, SIGABRT or SIGHUP; from 11
/// on, exit code `b` as a signed byte.
fn exit_of(b: u8) -> WorkerExit {
    match b % 16 {
        0 => WorkerExit::Code(0),
        1 => WorkerExit::Code(1),
        2 => WorkerExit::Code(EXIT_FATAL),
        3 => WorkerExit::Code(101),
        4 => WorkerExit::Signal(crate::exit::Signal::KILL),
        5 => WorkerExit::Signal(crate::exit::Signal::TERM),
        6 => WorkerExit::Signal(crate::exit::Signal::SEGV),
        7 => WorkerExit::Signal(crate::exit::Signal::USR1),
        8 => WorkerExit::Signal(crate::exit::Signal::USR2),
        9 => WorkerExit::Signal(crate::exit::Signal::ABRT),
        10 => WorkerExit::Signal(crate::exit::Signal::HUP),
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

    /// The next byte, not taken (0 once used up).
    fn peek(&self) -> u8 {
        self.0.first().copied().unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
