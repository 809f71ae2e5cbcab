//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by a unit test that
//! runs their seed corpora, so the corpora run under `cargo test` even where cargo-fuzz
//! cannot.
//!
//! Each entry point decodes arbitrary bytes into calls of the code under test and panics
//! when an invariant breaks; any input that does not panic is fine.

use std::time::Duration;

use crate::error::Error;
use crate::exit::{EXIT_FATAL, WorkerExit};
use crate::protocol::{
    self, CHILD_ENV, DEFAULT_FDNAME, LISTEN_FDNAMES_ENV, LISTEN_FDS_ENV, LISTEN_PID_ENV, ListenFds,
    MAX_FDNAME_LEN, MAX_LISTEN_FDS, MAX_WORKER_ID, WORKER_ID_ENV,
};
use crate::supervisor::model::{FIRST_PID, Model};
use crate::supervisor::{Action, Config, Failure};
use crate::sys::signal::Signal;

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
/// (otherwise each reports ready right after its spawn).
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
/// | 13 | operand: with bit 7 set, an event of the binary upgrade (see `upgrade_event`); else bits 0-1 make that many next spawns fail; bit 4 fails the run after a spawn; bit 5 has the health checks recycle a live worker, else bit 6 find one stuck (bits 2-3 pick it) |
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
struct Summary {
    /// The outcome reached by the input's own events, before the final shutdown.
    outcome_by_input: Option<Result<(), Failure>>,
    /// Worker processes started.
    spawns: usize,
    /// Slots that existed.
    slots: usize,
    /// Every action performed.
    log: Vec<Action>,
}

fn drive(data: &[u8]) -> Summary {
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
    };
    let flags = input.byte();
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
        use crate::supervisor::{Action, Failure};
        let over = |n| move |o: &Option<Result<(), Failure>>| matches!(o, Some(Err(Failure::OverRecovery { count, .. })) if *count == n);
        let ok = |o: &Option<Result<(), Failure>>| *o == Some(Ok(()));
        let external = |o: &Option<Result<(), Failure>>| *o == Some(Err(Failure::External));
        let going = |o: &Option<Result<(), Failure>>| o.is_none();
        type Check = Box<dyn Fn(&Option<Result<(), Failure>>) -> bool>;
        let cases: Vec<(&str, Check)> = vec![
            ("term_then_graceful_exits", Box::new(ok)),
            ("term_stubborn_workers", Box::new(ok)),
            ("double_term_kills_at_once", Box::new(ok)),
            ("crash_loop", Box::new(over(4))),
            ("crash_loop_zero_interval", Box::new(over(3))),
            ("boot_loop_before_ready", Box::new(over(3))),
            ("kills_after_ready_not_counted", Box::new(going)),
            ("forwarded_usr1_kills", Box::new(going)),
            ("initial_spawn_fails", Box::new(external)),
            ("spawn_hook_fails", Box::new(external)),
            ("ready_hook_fails", Box::new(external)),
            ("fail_mid_run", Box::new(external)),
            ("hup_graceful", Box::new(ok)),
            ("upgrade_hands_over", Box::new(ok)),
            ("upgrade_new_master_exits", Box::new(going)),
            ("upgrade_times_out", Box::new(going)),
            ("upgrade_exec_fails", Box::new(going)),
            ("upgrade_term_stops_both", Box::new(ok)),
            ("upgrade_usr2_twice", Box::new(ok)),
            ("upgrade_during_hup_ttin_ttou", Box::new(ok)),
            (
                "stop_gives_up_on_unkillable",
                Box::new(
                    |o: &Option<Result<(), Failure>>| matches!(o, Some(Err(Failure::Unreaped { pids })) if pids.len() == 2),
                ),
            ),
            ("unknown_exits", Box::new(going)),
            (
                "fatal_exit",
                Box::new(|o: &Option<Result<(), Failure>>| {
                    matches!(
                        o,
                        Some(Err(Failure::WorkerFatal {
                            slot: 1,
                            code: 3,
                            ..
                        }))
                    )
                }),
            ),
        ];
        for (name, check) in &cases {
            let Some(data) = seed(name) else { return };
            let got = super::drive(&data).outcome_by_input;
            assert!(check(&got), "seed {name}: {got:?}");
        }
        let count = |log: &[Action], f: fn(&Action) -> bool| log.iter().filter(|a| f(a)).count();
        let spawns = |a: &Action| matches!(a, Action::Spawn { .. });
        let reloaded = |a: &Action| *a == Action::Reloaded;
        let closed = |a: &Action| matches!(a, Action::Closed { .. });
        let run = |name| seed(name).map(|data| super::drive(&data));
        if let Some(r) = run("hup_graceful") {
            // 3 initial workers, then 3 replacements.
            assert_eq!(r.spawns, 6);
            assert_eq!(count(&r.log, reloaded), 1);
        }
        if let Some(r) = run("hups_coalesce") {
            // Three HUPs make two restarts; the HUP after them a third, stopped by the end.
            assert_eq!(count(&r.log, |a| *a == Action::Reloading), 3);
            assert_eq!(count(&r.log, reloaded), 2);
        }
        if let Some(r) = run("hup_replacement_fails_to_boot") {
            assert_eq!(r.spawns, 4);
            assert_eq!(count(&r.log, reloaded), 1);
        }
        if let Some(r) = run("ttou_mid_restart") {
            assert_eq!(count(&r.log, reloaded), 1);
            assert_eq!(count(&r.log, closed), 1);
        }
        let rolled_back = |why: fn(&crate::supervisor::Rollback) -> bool| {
            move |log: &[Action]| {
                log.iter()
                    .filter(|a| matches!(a, Action::RolledBack { why: w, .. } if why(w)))
                    .count()
            }
        };
        use crate::supervisor::Rollback;
        if let Some(r) = run("upgrade_hands_over") {
            assert_eq!(count(&r.log, |a| matches!(a, Action::HandedOver { .. })), 1);
            assert_eq!(count(&r.log, |a| *a == Action::Stopping), 0);
        }
        if let Some(r) = run("upgrade_new_master_exits") {
            assert_eq!(rolled_back(|w| matches!(w, Rollback::Exited(_)))(&r.log), 1);
        }
        if let Some(r) = run("upgrade_times_out") {
            assert_eq!(
                rolled_back(|w| matches!(w, Rollback::NotReady(_)))(&r.log),
                1
            );
            let killed = |a: &Action| matches!(a, Action::SignalNewMaster { signal, .. } if *signal == crate::sys::signal::Signal::Kill);
            assert_eq!(count(&r.log, killed), 1);
            assert_eq!(
                count(&r.log, |a| matches!(a, Action::NewMasterExited { .. })),
                1
            );
        }
        if let Some(r) = run("upgrade_exec_fails") {
            assert_eq!(rolled_back(|w| *w == Rollback::ExecFailed)(&r.log), 1);
        }
        if let Some(r) = run("upgrade_term_stops_both") {
            assert_eq!(
                count(&r.log, |a| matches!(a, Action::SignalNewMaster { .. })),
                2
            );
            assert_eq!(count(&r.log, |a| matches!(a, Action::HandedOver { .. })), 0);
        }
        if let Some(r) = run("upgrade_usr2_twice") {
            assert_eq!(count(&r.log, |a| *a == Action::StartUpgrade), 1);
            assert_eq!(
                count(&r.log, |a| matches!(a, Action::UpgradeIgnored { .. })),
                2
            );
        }
        if let Some(r) = run("upgrade_during_hup_ttin_ttou") {
            assert_eq!(count(&r.log, |a| matches!(a, Action::HandedOver { .. })), 1);
            assert_eq!(count(&r.log, reloaded), 1);
        }
        if let Some(r) = run("ttin_ttou") {
            assert_eq!(r.slots, 3);
        }
        if let Some(r) = run("ttin_reopens_closing_slot") {
            assert_eq!(count(&r.log, spawns), 3);
        }
        let retired = |a: &Action| {
            matches!(
                a,
                Action::Signal {
                    why: crate::supervisor::Why::Retire,
                    ..
                }
            )
        };
        let stuck = |a: &Action| {
            matches!(
                a,
                Action::Signal {
                    why: crate::supervisor::Why::Stuck,
                    ..
                }
            )
        };
        if let Some(r) = run("recycle_replaces_first") {
            // 2 workers; the recycled one's replacement starts, then it is asked to drain.
            assert_eq!(r.spawns, 3);
            assert_eq!(count(&r.log, retired), 1);
            assert!(r.outcome_by_input.is_none(), "{:?}", r.outcome_by_input);
        }
        if let Some(r) = run("stuck_worker_killed_and_replaced") {
            assert_eq!(count(&r.log, stuck), 1);
            assert_eq!(r.spawns, 3);
            assert!(r.outcome_by_input.is_none(), "{:?}", r.outcome_by_input);
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
