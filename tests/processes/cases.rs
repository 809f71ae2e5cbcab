//! The cases of `tests/processes.rs`. Each takes the backend it runs under, starts a
//! fixture master (`processes/fixture.rs`), drives it and asserts what happened; a failed
//! assertion panics (the fixture is then killed, with its whole process group, and its
//! output shown).

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::fixture::ROLE;
use crate::support::backend::Backend;
use crate::support::net::{Load, Tally, all_ids, ask, collect_ids, hold, id_of, try_ask};
use crate::support::notify::{Notification, NotifySocket};
use crate::support::process::{DEADLINE, Fixture, Spec, TempDir, kill, wait_until};
use crate::support::report::parse_exit;
use crate::support::runner::{Case, cases};
use crate::support::{procfs, runner};

/// Every case, each run under every backend, in this order.
pub const ALL: &[Case<Backend>] = cases![&Backend::ALL =>
    // Starting workers, and respawning them in their slot.
    workers_answer_with_own_id_and_pid,
    sigkill_worker_respawns_in_same_slot,
    serve_panic_exits_101_and_respawns,
    serve_err_exits_1_and_respawns,
    serve_ok_exits_0_and_respawns,
    crash_loop_of_panics_is_over_recovery,
    crash_loop_of_clean_exits_is_over_recovery,
    crash_loop_of_several_workers_respawns_threshold_times,
    exit_fatal_stops_everything,
    // fork failing with EAGAIN (a pids cgroup at its limit).
    fork_eagain_at_start_kills_started_workers,
    fork_eagain_on_respawn_is_retried,
    // Stopping.
    sigterm_stops_all_workers,
    sigint_stops_all_workers,
    term_ignoring_worker_killed_after_grace,
    second_sigterm_kills_at_once,
    stop_cancels_delayed_respawn,
    // The master's death.
    master_sigkill_takes_workers_down,
    on_master_death_runs_once_per_worker,
    // Hooks that fail.
    spawn_hook_error_fails_run,
    spawn_hook_panic_fails_run,
    ready_hook_error_fails_run,
    ready_hook_panic_fails_run,
    recover_hook_error_fails_run,
    hook_starting_a_thread_fails_run,
    // Refusals before any fork.
    threads_before_run_are_refused,
    zero_workers_refused,
    bogus_backend_env_refused,
    // Kernels without pidfds (sandboxes that refuse system calls: processes/sandbox.rs).
    no_pidfd_kernel_falls_back_to_sigchld,
    // What workers inherit, and what the master puts back.
    worker_has_no_master_fds_and_clean_mask,
    ignored_sigchld_handled_and_restored,
    nocldwait_sigchld_handled_and_restored,
    buffered_stdout_is_not_duplicated_by_fork,
    run_twice_restores_fds_and_mask,
    // Signals to the master.
    sigttin_adds_and_sigttou_removes_workers,
    usr1_forwarded_usr2_upgrades,
    sighup_rolling_restart,
    sighup_kills_term_ignoring_workers_after_grace,
    // Reaping.
    adopted_orphans_are_reaped,
    respawn_churn_leaks_no_fds_or_zombies,
    // The zero-downtime lifecycle: kills from outside, drains, rolling restarts.
    sigkill_storm_of_serving_workers_is_never_counted,
    slow_drain_is_killed_at_grace_and_logged,
    sighup_old_worker_drains_only_after_replacement_is_ready,
    sigttou_during_restart_old_worker_waits_for_replacement,
    sighups_during_rolling_restart_coalesce_into_one_more,
    sigterm_during_rolling_restart_drains_second_kills,
    term_before_the_notice_is_asked_for_is_kept,
    retirements_by_hup_and_ttou_are_logged_at_info,
    // systemd's notification protocol.
    notify_lifecycle_on_path_socket,
    notify_lifecycle_on_abstract_socket,
    notify_watchdog_pings_every_half_period,
    notify_silent_without_watchdog_or_socket,
    // An unprivileged master (uid 65534) under a loopback load, one connection per request:
    // no connection the kernel accepted is lost.
    unprivileged_sigterm_loses_nothing_reuseport,
    unprivileged_sigterm_loses_nothing_reuseport_exec,
    unprivileged_sigterm_loses_nothing_shared,
    unprivileged_sigterm_loses_nothing_shared_exec,
    unprivileged_sighup_loses_nothing,
    unprivileged_sigttou_loses_nothing_shared,
    unprivileged_sigttou_loses_nothing_reuseport,
];

// ---- Helpers ---------------------------------------------------------------------------------

/// Starts a fixture master under `backend` with the given `FX_*` options (or other
/// environment variables, which override `PREFORK_BACKEND` too).
pub(crate) fn start(backend: Backend, opts: &[(&str, &str)]) -> Fixture {
    Spec::new(ROLE).backend(backend).envs(opts).start()
}

/// A master with `n` workers that all answered; returns it, its port and slot → pid.
pub(crate) fn started(
    b: Backend,
    n: usize,
    opts: &[(&str, &str)],
) -> (Fixture, u16, BTreeMap<usize, u32>) {
    let workers = n.to_string();
    let mut all: Vec<(&str, &str)> = vec![("FX_WORKERS", &workers)];
    all.extend_from_slice(opts);
    let fx = start(b, &all);
    let port = port(&fx);
    let ids = all_ids(port, n);
    (fx, port, ids)
}

/// [`started`], and the master ready (its `on_master_ready` ran): signals such as HUP and
/// TTOU are only acted on from then on.
pub(crate) fn ready_master(
    b: Backend,
    n: usize,
    opts: &[(&str, &str)],
) -> (Fixture, u16, BTreeMap<usize, u32>) {
    let (fx, port, ids) = started(b, n, opts);
    let ready = fx.ready();
    let pids: Vec<u32> = ids.values().copied().collect();
    assert_eq!(
        ready, pids,
        "the ready line lists the workers that answered"
    );
    (fx, port, ids)
}

/// The listener's port (the `port` line).
fn port(fx: &Fixture) -> u16 {
    fx.wait_line("the port line", |l| l.strip_prefix("port ")?.parse().ok())
}

/// Sends a command that is not idempotent (the worker acts on it once): one attempt, with
/// the whole deadline to be answered. The answering worker's slot and pid.
fn command(port: u16, command: &str) -> (usize, u32) {
    let a = ask(port, command);
    (a.id, a.pid)
}

/// The master's state as the fixture reported it before or after a run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    fds: usize,
    sigblk: u64,
    sigign: u64,
    sigcgt: u64,
    /// The `SIGCHLD` action: `dfl`, `ign`, `handler`, maybe with `+nocldwait`.
    chld: String,
}

/// The state the fixture reported under `label` (`before`, `after1`, …).
fn state(fx: &Fixture, label: &str) -> State {
    let prefix = format!("state {label} ");
    fx.wait_line(&format!("the {label} state line"), |l| {
        let mut state = State {
            fds: 0,
            sigblk: 0,
            sigign: 0,
            sigcgt: 0,
            chld: String::new(),
        };
        for field in l.strip_prefix(&prefix)?.split_whitespace() {
            let (name, value) = field.split_once('=')?;
            match name {
                "fds" => state.fds = value.parse().ok()?,
                "sigblk" => state.sigblk = u64::from_str_radix(value, 16).ok()?,
                "sigign" => state.sigign = u64::from_str_radix(value, 16).ok()?,
                "sigcgt" => state.sigcgt = u64::from_str_radix(value, 16).ok()?,
                "chld" => state.chld = value.to_owned(),
                _ => return None,
            }
        }
        Some(state)
    })
}

/// Asserts that `pid` is a running child of the master, in its process group.
pub(crate) fn assert_worker_of(fx: &Fixture, pid: u32) {
    let stat = procfs::stat(pid).unwrap_or_else(|| panic!("worker {pid} does not exist"));
    assert_eq!(stat.ppid, fx.pid, "parent of worker {pid}");
    assert_eq!(stat.pgrp, fx.pid, "process group of worker {pid}");
    assert!(!stat.is_dead(), "worker {pid} is a zombie");
}

pub(crate) fn assert_all_alive(fx: &Fixture, pids: impl IntoIterator<Item = u32>) {
    for pid in pids {
        assert_worker_of(fx, pid);
    }
}

/// Asserts that every pid in `pids` has ended.
fn assert_all_gone(fx: &Fixture, pids: impl IntoIterator<Item = u32>) {
    let left: Vec<u32> = pids
        .into_iter()
        .filter(|&p| !procfs::is_gone(p, fx.pid))
        .collect();
    assert!(left.is_empty(), "workers still running: {left:?}");
}

/// The exit line of each pid in `pids`, asserting it says `how`.
pub(crate) fn assert_exits(fx: &Fixture, pids: impl IntoIterator<Item = u32>, how: &str) {
    let exits = fx.exits();
    for pid in pids {
        let exit = exits
            .iter()
            .find(|e| e.pid == pid)
            .unwrap_or_else(|| panic!("no exit line for worker {pid} in {exits:?}"));
        assert_eq!(exit.how, how, "how worker {pid} ended");
    }
}

/// Checks a run that failed before forking anything.
fn assert_nothing_forked(fx: &Fixture) {
    assert!(
        fx.spawns().is_empty(),
        "workers were spawned: {:?}",
        fx.spawns()
    );
    assert!(fx.ready_lines().is_empty(), "the master became ready");
}

// ---- Starting workers, and respawning them in their slot -------------------------------------

fn workers_answer_with_own_id_and_pid(b: Backend) {
    let (mut fx, port, ids) = started(b, 3, &[]);
    let ready = fx.ready();
    assert_eq!(ready.len(), 3, "pids reported by on_master_ready");
    assert_eq!(
        ids.keys().copied().collect::<Vec<_>>(),
        [0, 1, 2],
        "ids that answered"
    );
    let pids: BTreeSet<u32> = ids.values().copied().collect();
    assert_eq!(pids.len(), 3, "every worker is its own process: {ids:?}");
    for (&id, &pid) in &ids {
        assert_eq!(ready[id], pid, "on_master_ready lists pids in slot order");
        assert_worker_of(&fx, pid);
    }
    assert_eq!(fx.spawns(), ready, "one spawn line per initial worker");
    let answer = ask(port, "id");
    let (master, is_child) = answer
        .rest
        .split_once(' ')
        .and_then(|(m, c)| Some((m.parse::<u32>().ok()?, c.parse::<bool>().ok()?)))
        .unwrap_or_else(|| panic!("answer {answer:?}: not MASTER_PID IS_CHILD after the pid"));
    assert_eq!(master, fx.pid, "Worker::master_pid");
    assert!(is_child, "prefork::is_child() in a worker");
    let live: BTreeSet<u32> = procfs::live_children(fx.pid).into_iter().collect();
    assert_eq!(live, pids, "the master's children are exactly the workers");
    fx.stop_with(libc::SIGTERM);
}

fn sigkill_worker_respawns_in_same_slot(b: Backend) {
    let (mut fx, port, ids) = started(b, 2, &[]);
    let old = ids[&0];
    kill(old, libc::SIGKILL);
    let new = fx.wait_recover(old);
    assert_ne!(new, old);
    let exit = fx.wait_exit_line(old);
    assert_eq!((exit.slot, exit.how.as_str()), (0, "Signal(SIGKILL)"));
    assert_eq!(id_of(port, new), 0, "the replacement's slot");
    assert_worker_of(&fx, new);
    assert!(procfs::is_gone(old, fx.pid), "the killed worker is reaped");
    assert_eq!(fx.recovers(), [(old, new)], "one recovery");
    assert_eq!(fx.spawns().len(), 3, "two initial workers and one respawn");
    fx.stop_with(libc::SIGTERM);
}

/// Sends `cmd` to a worker, which acts on it and ends with `how`; checks it is replaced in
/// its slot.
fn respawn_after(b: Backend, cmd: &str, how: &str) {
    let (mut fx, port, _ids) = started(b, 2, &[]);
    let (slot, pid) = command(port, cmd);
    let exit = fx.wait_exit_line(pid);
    assert_eq!(
        (exit.slot, exit.how.as_str()),
        (slot, how),
        "worker {pid}'s exit"
    );
    let new = fx.wait_recover(pid);
    assert_eq!(id_of(port, new), slot, "the replacement's slot");
    assert_worker_of(&fx, new);
    fx.stop_with(libc::SIGTERM);
}

fn serve_panic_exits_101_and_respawns(b: Backend) {
    respawn_after(b, "panic", &format!("Code({})", prefork::EXIT_PANIC));
}

fn serve_err_exits_1_and_respawns(b: Backend) {
    respawn_after(b, "err", "Code(1)");
}

fn serve_ok_exits_0_and_respawns(b: Backend) {
    respawn_after(b, "ok", "Code(0)");
}

/// One worker that keeps failing at start (`FX_START=start_mode`, ending with `how`) under
/// `recover_threshold(3)`. With a single worker the exits come one at a time, so exactly
/// three respawns happen before the fourth exit goes over the threshold. (With more workers
/// the fourth exit can arrive while the third respawn is still queued, and the stop then
/// cancels it.)
fn crash_loop(b: Backend, start_mode: &str, how: &str) {
    const THRESHOLD: usize = 3;
    let mut fx = start(
        b,
        &[
            ("FX_WORKERS", "1"),
            ("FX_START", start_mode),
            ("FX_THRESHOLD", &THRESHOLD.to_string()),
        ],
    );
    let display = fx.assert_failed_exit();
    let spawns = fx.spawns();
    assert_eq!(
        spawns.len(),
        THRESHOLD + 1,
        "the first worker and {THRESHOLD} respawns: {spawns:?}"
    );
    assert_over_recovery(&display, THRESHOLD + 1);
    let last = spawns[THRESHOLD];
    let last_exit = format!("the last: worker 0 (pid {last}): {}", exit_text(how));
    assert!(display.contains(&last_exit), "error: {display}");
    let counted: Vec<(usize, u32, &str)> = spawns.iter().map(|&pid| (0, pid, how)).collect();
    // Whether a worker that failed at once had reported ready depends on which the master
    // read first.
    let debugs: Vec<String> = fx
        .debugs()
        .iter()
        .map(|d| {
            d.replace("was_ready: true", "was_ready: _")
                .replace("was_ready: false", "was_ready: _")
        })
        .collect();
    assert_eq!(
        debugs,
        [over_recovery_debug(THRESHOLD + 1, &counted)],
        "the error's Debug form (was_ready shown as _)"
    );
    let recovers = fx.recovers();
    let chain: Vec<(u32, u32)> = spawns.windows(2).map(|w| (w[0], w[1])).collect();
    assert_eq!(recovers, chain, "each respawn recovers the previous worker");
    let exits = fx.exits();
    assert_eq!(
        exits.len(),
        spawns.len(),
        "every worker was reaped: {exits:?}"
    );
    for (exit, &pid) in exits.iter().zip(&spawns) {
        assert_eq!((exit.slot, exit.pid, exit.how.as_str()), (0, pid, how));
    }
    assert_all_gone(&fx, spawns);
}

/// Checks the Display of `Error::OverRecovery` after `count` boot failures.
fn assert_over_recovery(display: &str, count: usize) {
    assert!(
        display.contains(&format!("{count} workers failed to boot"))
            && display.contains("more than recover_threshold allows"),
        "error: {display}"
    );
}

/// `Code(N)` or `Signal(N)` (an exit line's HOW) as `WorkerExit`'s Display says it.
fn exit_text(how: &str) -> String {
    match how.strip_prefix("Code(").and_then(|c| c.strip_suffix(')')) {
        Some(code) => format!("exit code {code}"),
        None => panic!("not an exit code: {how}"),
    }
}

/// The Debug form of `Error::OverRecovery` with `count` failures and the counted exits
/// `(slot, pid, HOW)`, oldest first, with each `was_ready` written `_`.
fn over_recovery_debug(count: usize, counted: &[(usize, u32, &str)]) -> String {
    let exits: Vec<String> = counted
        .iter()
        .map(|(slot, pid, how)| {
            format!("CountedExit {{ slot: {slot}, pid: {pid}, exit: {how}, was_ready: _ }}")
        })
        .collect();
    format!(
        "OverRecovery {{ count: {count}, exits: [{}] }}",
        exits.join(", ")
    )
}

fn crash_loop_of_panics_is_over_recovery(b: Backend) {
    crash_loop(b, "panic", "Code(101)");
}

fn crash_loop_of_clean_exits_is_over_recovery(b: Backend) {
    crash_loop(b, "exit0", "Code(0)");
}

/// Several workers crashing at once: exits reaped in one wake-up are handled one at a time,
/// each respawn performed before the next exit counts, so threshold k still means at least k
/// respawns before OverRecovery.
fn crash_loop_of_several_workers_respawns_threshold_times(b: Backend) {
    const THRESHOLD: usize = 3;
    const WORKERS: usize = 2;
    for _ in 0..5 {
        let mut fx = start(
            b,
            &[
                ("FX_WORKERS", &WORKERS.to_string()),
                ("FX_START", "panic"),
                ("FX_THRESHOLD", &THRESHOLD.to_string()),
            ],
        );
        let display = fx.assert_failed_exit();
        assert_over_recovery(&display, THRESHOLD + 1);
        let spawns = fx.spawns();
        let recovers = fx.recovers();
        assert!(
            recovers.len() >= THRESHOLD,
            "only {} respawns before OverRecovery with threshold {THRESHOLD}: {recovers:?}",
            recovers.len()
        );
        assert_eq!(spawns.len(), WORKERS + recovers.len(), "spawns {spawns:?}");
        assert_all_gone(&fx, spawns);
    }
}

/// A pids cgroup whose `pids.max` makes `fork` fail with `EAGAIN`: the one way to get that
/// error from the kernel as root, where `RLIMIT_NPROC` is not enforced. Made under the v1
/// `pids` hierarchy (`/sys/fs/cgroup/pids`), or under a cgroup2 root that offers the `pids`
/// controller. Removed on drop.
struct PidsCgroup(std::path::PathBuf);

impl PidsCgroup {
    fn new(tag: &str, max: usize) -> PidsCgroup {
        let v1 = std::path::Path::new("/sys/fs/cgroup/pids");
        let v2 = std::path::Path::new("/sys/fs/cgroup");
        let root = if v1.join("pids.max").exists() || v1.join("cgroup.procs").exists() {
            v1
        } else {
            let controllers =
                std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
            assert!(
                controllers.split_whitespace().any(|c| c == "pids"),
                "this test needs a pids cgroup: neither {} nor a cgroup2 root with the pids \
                 controller at {}",
                v1.display(),
                v2.display()
            );
            // Children of the root get the controller only once it is enabled for them.
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+pids");
            v2
        };
        let dir = root.join(format!("prefork-test-{}-{tag}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "this test needs a writable pids cgroup (creating {}: {e})",
                dir.display()
            )
        });
        let cg = PidsCgroup(dir);
        cg.set_max(max);
        cg
    }

    fn set_max(&self, max: usize) {
        std::fs::write(self.0.join("pids.max"), max.to_string()).expect("writing pids.max");
    }

    fn current(&self) -> usize {
        std::fs::read_to_string(self.0.join("pids.current"))
            .expect("reading pids.current")
            .trim()
            .parse()
            .expect("a number in pids.current")
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 path")
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        // The fixture's processes are gone (or killed by the fixture's own drop) by now; the
        // directory can be removed once the kernel has let go of the last task.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `fork` fails with EAGAIN while the initial workers start: the ones already started are
/// killed and reaped, and run names the slot and the OS error.
fn fork_eagain_at_start_kills_started_workers(b: Backend) {
    // The master and two workers fit; the third worker's fork fails.
    let cg = PidsCgroup::new(&format!("start-{}", b.name()), 3);
    let mut fx = start(b, &[("FX_WORKERS", "4"), ("FX_PIDS_CGROUP", cg.path())]);
    let display = fx.assert_failed_exit();
    assert!(
        display.contains("cannot start worker 2") && display.contains("os error 11"),
        "error: {display}"
    );
    assert_eq!(
        fx.spawns().len(),
        2,
        "two workers started before the failure"
    );
    wait_until("the cgroup to be empty", || {
        if cg.current() == 0 {
            Ok(())
        } else {
            Err(format!("{} tasks left in the cgroup", cg.current()))
        }
    });
}

/// `fork` fails with EAGAIN when a worker is respawned: the slot is retried until the fork
/// succeeds again, and the replacement takes the slot.
fn fork_eagain_on_respawn_is_retried(b: Backend) {
    let cg = PidsCgroup::new(&format!("respawn-{}", b.name()), 3);
    let (mut fx, _port, ids) = started(
        b,
        2,
        &[("FX_THRESHOLD", "1000"), ("FX_PIDS_CGROUP", cg.path())],
    );
    // No room for a replacement: the master and the surviving worker fill the cgroup.
    cg.set_max(2);
    let victim = ids[&1];
    kill(victim, libc::SIGKILL);
    fx.wait_stderr_count("cannot start worker 1", 2);
    assert!(
        !fx.recovers().iter().any(|&(old, _)| old == victim),
        "a replacement started although fork cannot succeed"
    );
    cg.set_max(3);
    let new = fx.wait_recover(victim);
    let (slot, pid) = wait_until("the replacement to answer", || {
        let a = try_ask(port(&fx), "id", DEADLINE)?;
        if a.pid == new {
            Ok((a.id, a.pid))
        } else {
            Err(format!("answered by {a:?}"))
        }
    });
    assert_eq!((slot, pid), (1, new), "the replacement serves slot 1");
    fx.stop_with(libc::SIGTERM);
    fx.assert_clean_exit();
}

/// On a kernel without `pidfd_open` (ENOSYS, simulated with seccomp) the pidfd backend
/// falls back to the sigchld loop by itself: workers start, a killed worker is replaced in
/// its slot, TERM stops everything cleanly, and the master holds no pidfd.
fn no_pidfd_kernel_falls_back_to_sigchld(b: Backend) {
    let (mut fx, _port, ids) = started(b, 2, &[("FX_NO_PIDFD", "1")]);
    if b == Backend::Pidfd {
        fx.wait_stderr_count("pidfds unavailable", 1);
    }
    let fds = procfs::fd_targets(fx.pid);
    assert!(
        !fds.iter().any(|t| t.contains("pidfd")),
        "master fds: {fds:?}"
    );
    let victim = ids[&0];
    kill(victim, libc::SIGKILL);
    let new = fx.wait_recover(victim);
    let exit = fx.wait_exit_line(victim);
    assert_eq!(exit.slot, 0, "the killed worker's slot");
    assert_worker_of(&fx, new);
    fx.stop_with(libc::SIGTERM);
    fx.assert_clean_exit();
}

fn exit_fatal_stops_everything(b: Backend) {
    let (mut fx, port, ids) = started(b, 2, &[]);
    let (slot, pid) = command(port, "fatal");
    let display = fx.assert_failed_exit();
    assert!(
        display.contains(&format!(
            "worker {slot} (pid {pid}) reported a fatal start-up failure"
        )),
        "error: {display}"
    );
    assert_eq!(
        fx.debugs(),
        [format!(
            "WorkerFatal {{ slot: {slot}, pid: {pid}, code: {} }}",
            prefork::EXIT_FATAL
        )]
    );
    assert!(fx.recovers().is_empty(), "the fatal worker was respawned");
    assert_eq!(
        fx.spawns().len(),
        2,
        "no worker was started after the fatal exit"
    );
    assert_exits(&fx, [pid], &format!("Code({})", prefork::EXIT_FATAL));
    let others: Vec<u32> = ids.values().copied().filter(|&p| p != pid).collect();
    assert_exits(&fx, others, "Signal(SIGTERM)");
}

// ---- Stopping --------------------------------------------------------------------------------

fn stops_all_workers_on(b: Backend, signal: i32) {
    let (mut fx, _port, ids) = started(b, 2, &[]);
    fx.stop_with(signal);
    assert_exits(&fx, ids.values().copied(), "Signal(SIGTERM)");
    assert_all_gone(&fx, fx.spawns());
    assert!(fx.recovers().is_empty(), "a stop is no recovery");
}

fn sigterm_stops_all_workers(b: Backend) {
    stops_all_workers_on(b, libc::SIGTERM);
}

fn sigint_stops_all_workers(b: Backend) {
    stops_all_workers_on(b, libc::SIGINT);
}

fn term_ignoring_worker_killed_after_grace(b: Backend) {
    let grace = Duration::from_millis(1000);
    let ms = grace.as_millis().to_string();
    let (mut fx, _port, ids) = started(b, 2, &[("FX_TERM", "ignore"), ("FX_GRACE_MS", &ms)]);
    let sent = Instant::now();
    fx.signal(libc::SIGTERM);
    fx.wait_exit();
    let took = sent.elapsed();
    fx.assert_clean_exit();
    assert_exits(&fx, ids.values().copied(), "Signal(SIGKILL)");
    assert!(
        took >= grace,
        "the master exited {took:?} after TERM, before the {grace:?} grace period ended"
    );
    for (&slot, &pid) in &ids {
        assert_logged(
            &fx,
            "WARN",
            &format!("worker {slot} (pid {pid}) did not finish draining within the grace period"),
        );
    }
}

fn second_sigterm_kills_at_once(b: Backend) {
    // A grace period no test run could sit out: only the second TERM can end the stop.
    let (mut fx, _port, ids) = started(b, 2, &[("FX_TERM", "catch"), ("FX_GRACE_MS", "3600000")]);
    fx.signal(libc::SIGTERM);
    // The workers caught the TERM the master sent them: the first stop is under way.
    for &pid in ids.values() {
        fx.wait_line(&format!("worker {pid} to catch TERM"), |l| {
            (l == format!("sig {} {pid}", libc::SIGTERM)).then_some(())
        });
    }
    assert_all_alive(&fx, ids.values().copied());
    fx.signal(libc::SIGTERM);
    fx.assert_clean_exit();
    assert_exits(&fx, ids.values().copied(), "Signal(SIGKILL)");
}

fn stop_cancels_delayed_respawn(b: Backend) {
    // A respawn delay no test run could sit out.
    let (mut fx, _port, ids) = started(b, 2, &[("FX_INTERVAL_MS", "3600000")]);
    let old = ids[&0];
    kill(old, libc::SIGKILL);
    assert_eq!(fx.wait_exit_line(old).how, "Signal(SIGKILL)");
    // Slot 0 now waits an hour for its respawn; the stop must not wait for it.
    fx.stop_with(libc::SIGTERM);
    assert_eq!(fx.spawns().len(), 2, "the delayed respawn never happened");
    assert!(fx.recovers().is_empty());
    assert_exits(&fx, [ids[&1]], "Signal(SIGTERM)");
}

// ---- The master's death ----------------------------------------------------------------------

fn master_sigkill_takes_workers_down(b: Backend) {
    let (mut fx, _port, ids) = started(b, 2, &[]);
    fx.signal(libc::SIGKILL);
    let status = fx.wait_exit();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let pgid = fx.pid;
    wait_until("every worker to die with the master", || {
        let left = procfs::group_members(pgid);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("left: {left:?}"))
        }
    });
    assert_all_gone(&fx, ids.values().copied());
}

fn on_master_death_runs_once_per_worker(b: Backend) {
    let dir = TempDir::new("death");
    let (mut fx, port, mut ids) = started(b, 2, &[("FX_DEATH_DIR", dir.path_str())]);
    // A respawned worker watches the master too.
    let old = ids[&0];
    kill(old, libc::SIGKILL);
    let new = fx.wait_recover(old);
    assert_eq!(id_of(port, new), 0);
    ids.insert(0, new);
    assert!(
        std::fs::read_dir(&dir.0)
            .expect("the directory")
            .next()
            .is_none(),
        "on_master_death ran while the master lives"
    );
    fx.signal(libc::SIGKILL);
    fx.wait_exit();
    let pgid = fx.pid;
    wait_until("every worker to run on_master_death and exit", || {
        let missing: Vec<u32> = ids
            .values()
            .copied()
            .filter(|pid| !dir.0.join(pid.to_string()).exists())
            .collect();
        let left = procfs::group_members(pgid);
        if missing.is_empty() && left.is_empty() {
            Ok(())
        } else {
            Err(format!("no report from {missing:?}; running: {left:?}"))
        }
    });
    let mut reported: Vec<String> = std::fs::read_dir(&dir.0)
        .expect("the directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    reported.sort();
    let mut expected: Vec<String> = ids.values().map(u32::to_string).collect();
    expected.sort();
    assert_eq!(
        reported, expected,
        "on_master_death ran in exactly the running workers"
    );
    for pid in ids.values() {
        let text = std::fs::read_to_string(dir.0.join(pid.to_string())).expect("the report");
        assert_eq!(text, "ran\n", "on_master_death ran once in worker {pid}");
    }
}

// ---- Hooks that fail -------------------------------------------------------------------------

/// Runs a master whose hook `hook` fails as `FX_FAIL_HOOK` says, after `trigger` (which gets
/// the fixture and its port); checks the run failed with an error whose Display contains
/// what `expected` returns (given the fixture and what `trigger` returned), and that every
/// worker was killed.
fn hook_failure<T>(
    b: Backend,
    fail: &str,
    trigger: impl FnOnce(&Fixture, u16) -> T,
    expected: impl FnOnce(&Fixture, T) -> String,
) {
    let mut fx = start(b, &[("FX_WORKERS", "2"), ("FX_FAIL_HOOK", fail)]);
    let port = port(&fx);
    let triggered = trigger(&fx, port);
    let display = fx.assert_failed_exit();
    let expected = expected(&fx, triggered);
    assert!(
        display.contains(&expected),
        "error {display:?} does not contain {expected:?}"
    );
    let spawns = fx.spawns();
    assert!(!spawns.is_empty(), "workers were started");
    assert_exits(&fx, spawns.iter().copied(), "Signal(SIGKILL)");
    assert_all_gone(&fx, spawns);
}

fn second_spawn(fx: &Fixture) -> u32 {
    let spawns = fx.spawns();
    assert_eq!(spawns.len(), 2, "spawns: {spawns:?}");
    spawns[1]
}

fn spawn_hook_error_fails_run(b: Backend) {
    hook_failure(
        b,
        "spawn_err",
        |_, _| {},
        |fx, ()| {
            format!(
                "hook on_child_spawn failed: fixture: spawn hook refuses pid {}",
                second_spawn(fx)
            )
        },
    );
}

fn spawn_hook_panic_fails_run(b: Backend) {
    hook_failure(
        b,
        "spawn_panic",
        |_, _| {},
        |fx, ()| {
            format!(
                "hook on_child_spawn panicked: fixture: spawn hook panics on pid {}",
                second_spawn(fx)
            )
        },
    );
}

fn ready_hook_error_fails_run(b: Backend) {
    hook_failure(
        b,
        "ready_err",
        |_, _| {},
        |_, ()| "hook on_master_ready failed: fixture: ready hook refuses".to_owned(),
    );
}

fn ready_hook_panic_fails_run(b: Backend) {
    hook_failure(
        b,
        "ready_panic",
        |_, _| {},
        |_, ()| "hook on_master_ready panicked: fixture: ready hook panics".to_owned(),
    );
}

fn recover_hook_error_fails_run(b: Backend) {
    hook_failure(
        b,
        "recover_err",
        |fx, port| {
            let victim = all_ids(port, 2)[&0];
            kill(victim, libc::SIGKILL);
            (victim, fx.wait_recover(victim))
        },
        |_, (old, new)| {
            format!("hook on_child_recover failed: fixture: recover hook refuses {old} {new}")
        },
    );
}

fn hook_starting_a_thread_fails_run(b: Backend) {
    let mut fx = start(b, &[("FX_WORKERS", "2"), ("FX_FAIL_HOOK", "ready_thread")]);
    let display = fx.assert_failed_exit();
    assert!(display.contains("runs 2 threads"), "error: {display}");
    assert_eq!(fx.debugs(), ["NotSingleThreaded { threads: 2 }"]);
    let spawns = fx.spawns();
    assert_eq!(spawns.len(), 2, "no fork after the hook: {spawns:?}");
    assert_exits(&fx, spawns.iter().copied(), "Signal(SIGKILL)");
}

// ---- Refusals before any fork ----------------------------------------------------------------

fn threads_before_run_are_refused(b: Backend) {
    let mut fx = start(b, &[("FX_WORKERS", "2"), ("FX_THREAD", "1")]);
    let display = fx.assert_failed_exit();
    assert!(display.contains("runs 2 threads"), "error: {display}");
    assert_eq!(fx.debugs(), ["NotSingleThreaded { threads: 2 }"]);
    assert_nothing_forked(&fx);
    assert_eq!(
        state(&fx, "before"),
        state(&fx, "after1"),
        "master state restored"
    );
}

fn zero_workers_refused(b: Backend) {
    let mut fx = start(b, &[("FX_WORKERS", "0")]);
    let display = fx.assert_failed_exit();
    assert!(
        display.contains("invalid option workers: at least one worker is needed"),
        "error: {display}"
    );
    assert_nothing_forked(&fx);
}

fn bogus_backend_env_refused(b: Backend) {
    let mut fx = start(b, &[("FX_WORKERS", "2"), (prefork::BACKEND_ENV, "bogus")]);
    let display = fx.assert_failed_exit();
    assert!(
        display.contains(&format!("{}=\"bogus\"", prefork::BACKEND_ENV)),
        "error: {display}"
    );
    assert_nothing_forked(&fx);
}

// ---- What workers inherit, and what the master puts back -------------------------------------

fn worker_has_no_master_fds_and_clean_mask(b: Backend) {
    let (mut fx, _port, ids) = started(b, 2, &[]);
    let before = state(&fx, "before");
    assert_ne!(
        before.sigign & procfs::sig_bit(libc::SIGPIPE),
        0,
        "std ignores SIGPIPE before main"
    );
    // The master holds what the workers must not: control that the checks can see it.
    let master_fds = procfs::fd_targets(fx.pid);
    let count = |fds: &[String], kind: &str| fds.iter().filter(|t| t.contains(kind)).count();
    assert_eq!(
        count(&master_fds, "eventpoll"),
        1,
        "master fds: {master_fds:?}"
    );
    assert_eq!(
        count(&master_fds, "signalfd"),
        1,
        "master fds: {master_fds:?}"
    );
    let pidfds = match b {
        Backend::Pidfd => ids.len(),
        Backend::Sigchld => 0,
    };
    assert_eq!(
        count(&master_fds, "pidfd"),
        pidfds,
        "master fds: {master_fds:?}"
    );
    let master_blocked = procfs::sigset_field(fx.pid, "SigBlk").expect("master SigBlk");
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD, libc::SIGHUP] {
        assert_ne!(
            master_blocked & procfs::sig_bit(signal),
            0,
            "master blocks {signal}"
        );
    }
    for &pid in ids.values() {
        let fds = procfs::fd_targets(pid);
        assert!(!fds.is_empty(), "worker {pid}'s fds are readable");
        for kind in ["eventpoll", "signalfd", "pidfd"] {
            assert_eq!(count(&fds, kind), 0, "worker {pid} holds a {kind}: {fds:?}");
        }
        assert_eq!(
            procfs::sigset_field(pid, "SigBlk"),
            Some(0),
            "worker {pid} blocks signals"
        );
        assert_eq!(
            procfs::sigset_field(pid, "SigIgn"),
            Some(before.sigign),
            "worker {pid} ignores the signals the master ignored before run"
        );
    }
    fx.stop_with(libc::SIGTERM);
    assert_eq!(
        state(&fx, "after1"),
        before,
        "master state restored after run"
    );
}

/// A master whose SIGCHLD action made the kernel reap children by itself before `run`
/// (`option` sets it up; the fixture reports it as `action`): the master must still see its
/// workers exit, and puts the action back, in workers and after the run.
fn auto_reaping_sigchld(b: Backend, option: &str, action: &str) {
    let (mut fx, port, ids) = started(b, 2, &[(option, "1")]);
    let before = state(&fx, "before");
    assert_eq!(
        before.chld, action,
        "the fixture's SIGCHLD action before run"
    );
    for &pid in ids.values() {
        assert_eq!(
            procfs::sigset_field(pid, "SigIgn"),
            Some(before.sigign),
            "worker {pid} ignores what the master ignored before run"
        );
    }
    let (_, pid) = command(port, "chld");
    let reported = fx.wait_line("a worker's SIGCHLD action", |l| {
        l.strip_prefix(&format!("chld {pid} ")).map(str::to_owned)
    });
    assert_eq!(reported, action, "worker {pid}'s SIGCHLD action");
    // Without auto-reaping in the master, a killed worker is seen and replaced...
    let old = ids[&1];
    kill(old, libc::SIGKILL);
    let new = fx.wait_recover(old);
    assert_eq!(fx.wait_exit_line(old).how, "Signal(SIGKILL)");
    assert_eq!(id_of(port, new), 1);
    // ... and the workers' exits at the stop too.
    fx.stop_with(libc::SIGTERM);
    assert_exits(&fx, [ids[&0], new], "Signal(SIGTERM)");
    assert_eq!(
        state(&fx, "after1"),
        before,
        "SIGCHLD action restored after run"
    );
}

fn ignored_sigchld_handled_and_restored(b: Backend) {
    auto_reaping_sigchld(b, "FX_IGNORE_CHLD", "ign");
}

fn nocldwait_sigchld_handled_and_restored(b: Backend) {
    auto_reaping_sigchld(b, "FX_NOCLDWAIT", "dfl+nocldwait");
}

fn buffered_stdout_is_not_duplicated_by_fork(b: Backend) {
    let (mut fx, port, ids) = started(b, 2, &[("FX_UNFLUSHED", "1")]);
    // Had the master forked with bytes in its stdout buffer, a worker would hold a copy and
    // write it when it exits normally (std::process::exit flushes stdout). So make both
    // first workers exit normally: `ok` goes to whichever worker accepts, so send it until
    // both are gone (their replacements may get some too, and respawn again).
    let first: Vec<u32> = ids.values().copied().collect();
    wait_until("both first workers to exit normally", || {
        let left: Vec<u32> = first
            .iter()
            .copied()
            .filter(|&p| !procfs::is_gone(p, fx.pid))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        let _ = try_ask(port, "ok", Duration::from_secs(2));
        Err(format!("still running: {left:?}"))
    });
    fx.stop_with(libc::SIGTERM);
    let lines = fx.lines();
    let copies: usize = lines
        .iter()
        .map(|l| l.matches("unflushed-marker").count())
        .sum();
    assert_eq!(
        copies, 1,
        "bytes buffered before run were written {copies} times"
    );
    for (slot, pid) in ids {
        // Matched anywhere in the line: a stray copy of the marker would prefix it.
        let exit = format!("exit {slot} {pid} Code(0)");
        assert!(
            lines.iter().any(|l| l.contains(&exit)),
            "worker {pid} did not exit normally"
        );
    }
}

fn run_twice_restores_fds_and_mask(b: Backend) {
    let mut fx = start(
        b,
        &[("FX_WORKERS", "2"), ("FX_RUNS", "2"), ("FX_SELF_TERM", "1")],
    );
    fx.assert_clean_exit();
    assert_eq!(fx.results(), ["ok", "ok"], "both runs returned Ok");
    let ready = fx.ready_lines();
    assert_eq!(ready.len(), 2, "each run became ready: {ready:?}");
    assert!(ready.iter().all(|pids| pids.len() == 2), "{ready:?}");
    assert!(
        ready[0].iter().all(|p| !ready[1].contains(p)),
        "the second run has workers of its own: {ready:?}"
    );
    assert_eq!(fx.children_reports(), [(0, 0), (0, 0)]);
    let before = state(&fx, "before");
    assert_eq!(state(&fx, "after1"), before, "state after the first run");
    assert_eq!(state(&fx, "after2"), before, "state after the second run");
    assert_exits(&fx, ready.concat(), "Signal(SIGTERM)");
}

// ---- Signals to the master -------------------------------------------------------------------

fn sigttin_adds_and_sigttou_removes_workers(b: Backend) {
    let (mut fx, port, ids) = started(b, 2, &[]);
    fx.ready();
    fx.signal(libc::SIGTTIN);
    let added = fx.wait_lines("a third spawn", |lines| {
        let spawns: Vec<u32> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("spawn ")?.parse().ok())
            .collect();
        spawns.get(2).copied()
    });
    assert_eq!(id_of(port, added), 2, "the added worker's slot");
    assert_worker_of(&fx, added);

    fx.signal(libc::SIGTTOU);
    let exit = fx.wait_exit_line(added);
    assert_eq!(
        (exit.slot, exit.how.as_str()),
        (2, "Signal(SIGTERM)"),
        "the last slot goes first"
    );
    fx.signal(libc::SIGTTOU);
    let exit = fx.wait_exit_line(ids[&1]);
    assert_eq!((exit.slot, exit.how.as_str()), (1, "Signal(SIGTERM)"));
    // The last worker stays.
    fx.signal(libc::SIGTTOU);
    fx.wait_stderr_count("SIGTTOU", 3);
    assert_eq!(all_ids(port, 1)[&0], ids[&0]);
    assert_eq!(procfs::live_children(fx.pid), [ids[&0]]);
    let before_stop = fx.lines().len();
    fx.stop_with(libc::SIGTERM);
    let lines = fx.lines();
    let exit_at = lines
        .iter()
        .position(|l| l.starts_with(&format!("exit 0 {} ", ids[&0])))
        .expect("an exit line for the last worker");
    assert!(
        exit_at >= before_stop,
        "the last worker was removed before the stop"
    );
    assert_exits(&fx, [ids[&0]], "Signal(SIGTERM)");
    assert_eq!(fx.spawns().len(), 3, "TTOU does not respawn");
    assert!(fx.recovers().is_empty(), "TTOU exits are no crashes");
}

/// USR1 reaches every worker; USR2 is the master's own (a binary upgrade, which fails here:
/// a fixture started by a master rather than by the test exits at once) and reaches none.
fn usr1_forwarded_usr2_upgrades(b: Backend) {
    let (mut fx, _port, ids) = started(b, 2, &[("FX_USR", "1")]);
    let usr1 = libc::SIGUSR1;
    fx.signal(usr1);
    for &pid in ids.values() {
        fx.wait_line(&format!("worker {pid} to catch signal {usr1}"), |l| {
            (l == format!("sig {usr1} {pid}")).then_some(())
        });
    }
    fx.signal(libc::SIGUSR2);
    fx.wait_stderr_line("the upgrade to start and roll back", |l| {
        l.contains("upgrade failed").then_some(())
    });
    let usr2 = format!("sig {} ", libc::SIGUSR2);
    assert!(
        !fx.lines().iter().any(|l| l.starts_with(&usr2)),
        "USR2 is not forwarded to workers"
    );
    assert!(fx.exits().is_empty(), "no worker exited: {:?}", fx.exits());
    assert_all_alive(&fx, ids.values().copied());
    fx.stop_with(libc::SIGTERM);
}

fn sighup_rolling_restart(b: Backend) {
    let (mut fx, port, old) = ready_master(b, 2, &[]);
    fx.signal(libc::SIGHUP);
    for (&slot, &pid) in &old {
        let exit = fx.wait_exit_line(pid);
        assert_eq!((exit.slot, exit.how.as_str()), (slot, "Signal(SIGTERM)"));
    }
    let old_pids: BTreeSet<u32> = old.values().copied().collect();
    let new = collect_ids(port, 2, |pid| !old_pids.contains(&pid));
    let lines = fx.lines();
    for (&slot, &pid) in &new {
        assert_worker_of(&fx, pid);
        let spawned = lines.iter().position(|l| *l == format!("spawn {pid}"));
        let old_exit = lines
            .iter()
            .position(|l| l.starts_with(&format!("exit {slot} {} ", old[&slot])));
        assert!(
            matches!((spawned, old_exit), (Some(s), Some(e)) if s < e),
            "slot {slot}: the new worker {pid} must start before the old one stops"
        );
    }
    assert_eq!(fx.spawns().len(), 4, "one new worker per slot");
    assert!(fx.recovers().is_empty(), "a restart is no recovery");
    let live: BTreeSet<u32> = procfs::live_children(fx.pid).into_iter().collect();
    assert_eq!(
        live,
        new.values().copied().collect(),
        "only new workers run"
    );
    fx.stop_with(libc::SIGTERM);
}

fn sighup_kills_term_ignoring_workers_after_grace(b: Backend) {
    let grace = Duration::from_millis(300);
    let ms = grace.as_millis().to_string();
    let (mut fx, port, old) = ready_master(b, 2, &[("FX_TERM", "ignore"), ("FX_GRACE_MS", &ms)]);
    let sent = Instant::now();
    fx.signal(libc::SIGHUP);
    for (&slot, &pid) in &old {
        let exit = fx.wait_exit_line(pid);
        assert_eq!((exit.slot, exit.how.as_str()), (slot, "Signal(SIGKILL)"));
    }
    let took = sent.elapsed();
    // One slot after the other, each old worker sits out its grace period.
    assert!(
        took >= grace * 2,
        "both old workers were killed {took:?} after HUP, within less than two grace periods"
    );
    let old_pids: BTreeSet<u32> = old.values().copied().collect();
    let new = collect_ids(port, 2, |pid| !old_pids.contains(&pid));
    assert_eq!(fx.spawns().len(), 4, "one new worker per slot");
    assert!(fx.recovers().is_empty(), "a restart is no recovery");
    assert_all_alive(&fx, new.values().copied());
    // The new workers ignore TERM too: the stop needs its grace period and KILL.
    fx.stop_with(libc::SIGTERM);
    assert_exits(&fx, new.values().copied(), "Signal(SIGKILL)");
}

// ---- Reaping ---------------------------------------------------------------------------------

fn adopted_orphans_are_reaped(b: Backend) {
    let (mut fx, port, ids) = started(b, 2, &[("FX_SUBREAPER", "1")]);
    let master = fx.pid;
    command(port, "orphan");
    let (orphan, parent) = fx.wait_line("the orphan's report", |l| {
        let (pid, ppid) = l.strip_prefix("orphan ")?.split_once(' ')?;
        Some((pid.parse::<u32>().ok()?, ppid.parse::<u32>().ok()?))
    });
    assert_eq!(parent, master, "the subreaper master adopted the orphan");
    wait_until("the master to reap the orphan", || {
        let zombies = procfs::zombie_children(master);
        match procfs::stat(orphan) {
            Some(s) if s.ppid == master => Err(format!(
                "orphan {orphan} state {}; zombies {zombies:?}",
                s.state
            )),
            _ if !zombies.is_empty() => Err(format!("zombies {zombies:?}")),
            _ => Ok(()),
        }
    });
    assert!(
        fx.exits().is_empty(),
        "the orphan was taken for a worker: {:?}",
        fx.exits()
    );
    assert!(fx.recovers().is_empty(), "{:?}", fx.recovers());
    assert_all_alive(&fx, ids.values().copied());
    let live: BTreeSet<u32> = procfs::live_children(master).into_iter().collect();
    assert_eq!(
        live,
        ids.values().copied().collect(),
        "only the workers are left"
    );
    // An adopting master sees worker exits on both paths (its pidfd and SIGCHLD under the
    // pidfd backend): the exit is still reported once and the slot respawned once.
    let old = ids[&0];
    kill(old, libc::SIGKILL);
    let new = fx.wait_recover(old);
    assert_eq!(id_of(port, new), 0);
    fx.stop_with(libc::SIGTERM);
    let exits: Vec<_> = fx.exits().into_iter().filter(|e| e.pid == old).collect();
    assert_eq!(exits.len(), 1, "exit lines of the killed worker: {exits:?}");
    assert_eq!(exits[0].how, "Signal(SIGKILL)");
    assert_eq!(fx.recovers(), [(old, new)]);
}

fn respawn_churn_leaks_no_fds_or_zombies(b: Backend) {
    const RESPAWNS: usize = 200;
    let (mut fx, _port, ids) = started(b, 2, &[("FX_THRESHOLD", "10000")]);
    let master = fx.pid;
    let fds_before = procfs::fd_count(master).expect("the master's fds");
    assert_eq!(procfs::zombie_children(master), Vec::<u32>::new());
    let mut current: Vec<u32> = ids.values().copied().collect();
    let mut cursor = 0;
    for i in 0..RESPAWNS {
        let slot = i % current.len();
        let old = current[slot];
        kill(old, libc::SIGKILL);
        let (at, new) = fx.wait_recover_from(cursor, old);
        cursor = at + 1;
        current[slot] = new;
    }
    wait_until(
        "the master to settle with every replacement running",
        || {
            let fds = procfs::fd_count(master);
            let zombies = procfs::zombie_children(master);
            let live = procfs::live_children(master);
            let mut expected = current.clone();
            expected.sort_unstable();
            if fds == Some(fds_before) && zombies.is_empty() && live == expected {
                Ok(())
            } else {
                Err(format!(
                    "fds {fds:?} (before: {fds_before}), zombies {zombies:?}, \
                 live {live:?} (expected {expected:?})"
                ))
            }
        },
    );
    let exits = fx.exits();
    assert_eq!(exits.len(), RESPAWNS, "one exit line per kill");
    assert!(
        exits.iter().all(|e| e.how == "Signal(SIGKILL)"),
        "{exits:?}"
    );
    assert_eq!(fx.recovers().len(), RESPAWNS);
    fx.stop_with(libc::SIGTERM);
}

// ---- The zero-downtime lifecycle -------------------------------------------------------------

/// The `serving SLOT PID` lines so far: `(line index, slot, pid)`, in order.
fn serving(lines: &[String]) -> Vec<(usize, usize, u32)> {
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let (slot, pid) = l.strip_prefix("serving ")?.split_once(' ')?;
            Some((i, slot.parse().ok()?, pid.parse().ok()?))
        })
        .collect()
}

/// The index of the `exit` line of `pid` in `lines`.
fn exit_index(lines: &[String], pid: u32) -> Option<usize> {
    lines
        .iter()
        .position(|l| parse_exit(l).is_some_and(|e| e.pid == pid))
}

/// Holds one connection per worker (`hold`: a held worker is busy, so the next connection
/// goes to another): slot → (the held connection, the worker's pid). Dropping a connection
/// lets its worker go on.
fn hold_each(port: u16, n: usize) -> BTreeMap<usize, (TcpStream, u32)> {
    let mut held = BTreeMap::new();
    for _ in 0..n {
        let (stream, answer) = hold(port, "hold");
        let previous = held.insert(answer.id, (stream, answer.pid));
        assert!(previous.is_none(), "slot {} answered twice", answer.id);
    }
    held
}

/// The fixture's log lines (stderr) that name the worker `pid` (`… (pid PID) …`).
fn logs_about(fx: &Fixture, pid: u32) -> Vec<String> {
    let needle = format!("(pid {pid})");
    fx.stderr()
        .into_iter()
        .filter(|l| l.contains(&needle))
        .collect()
}

/// Waits for the log line with `message` and asserts that it is at `level` (`INFO`,
/// `WARN`, …).
fn assert_logged(fx: &Fixture, level: &str, message: &str) {
    let line = fx.wait_stderr_line(&format!("a log line with {message:?}"), |l| {
        l.contains(message).then(|| l.to_owned())
    });
    assert!(
        line.starts_with(&format!("[{level} ")),
        "logged at another level than {level}: {line}"
    );
}

/// Waits for the master's last log line: every line it logged before is read then.
fn wait_last_log(fx: &Fixture) {
    fx.expect_log("master exiting cleanly");
}

/// Waits until at least `n` `spawn` lines were read; returns every one read so far.
fn wait_spawns(fx: &Fixture, n: usize) -> Vec<u32> {
    fx.wait_lines(&format!("{n} spawn lines"), |lines| {
        let spawns: Vec<u32> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("spawn ")?.parse().ok())
            .collect();
        (spawns.len() >= n).then_some(spawns)
    })
}

/// How many log lines contain `needle`.
fn log_count(fx: &Fixture, needle: &str) -> usize {
    fx.stderr().iter().filter(|l| l.contains(needle)).count()
}

/// 200 SIGKILLs from outside, 20 per second, each at a worker that is serving: every one is
/// a crash to replace (logged at WARN), none a boot failure the crash-loop guard counts
/// (the default threshold for 4 workers is 10), so the master ends with 4 serving workers
/// and stops cleanly on TERM.
fn sigkill_storm_of_serving_workers_is_never_counted(b: Backend) {
    const WORKERS: usize = 4;
    const KILLS: usize = 200;
    const PACE: Duration = Duration::from_millis(50);
    let (mut fx, port, first) = ready_master(b, WORKERS, &[]);
    let master = fx.pid;
    // The `serving` lines (by index: pids are reused) of the workers killed so far, and
    // their pids.
    let mut killed: BTreeSet<usize> = BTreeSet::new();
    let mut victims: Vec<u32> = Vec::new();
    // Slot → its latest worker that reported serving, unless it was killed already.
    let current_at = |killed: &BTreeSet<usize>| -> BTreeMap<usize, (usize, u32)> {
        let latest: BTreeMap<usize, (usize, u32)> = serving(&fx.lines())
            .into_iter()
            .map(|(at, slot, pid)| (slot, (at, pid)))
            .collect();
        latest
            .into_iter()
            .filter(|(_, (at, _))| !killed.contains(at))
            .collect()
    };
    let current = |killed: &BTreeSet<usize>| -> BTreeMap<usize, u32> {
        current_at(killed)
            .into_iter()
            .map(|(slot, (_, pid))| (slot, pid))
            .collect()
    };
    assert_eq!(current(&killed), first, "the first workers serve");
    let began = Instant::now();
    for i in 0..KILLS {
        // The pace of the killer, not a wait for the master.
        if let Some(wait) = (began + PACE * i as u32).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let slot = i % WORKERS;
        // A replacement not yet inside `serve` would be a boot failure: kill only workers
        // that reported serving.
        let (at, victim) = wait_until(&format!("a serving worker in slot {slot}"), || {
            current_at(&killed)
                .get(&slot)
                .copied()
                .ok_or_else(|| format!("serving: {:?}", current(&killed)))
        });
        // SAFETY: kill takes plain integers.
        if unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) } != 0 {
            panic!(
                "kill {}: worker {victim} of slot {slot}, serving, is gone: {}; the master's \
                 results: {:?}; crash-loop guard log lines: {}",
                i + 1,
                std::io::Error::last_os_error(),
                fx.results(),
                log_count(&fx, "crash-loop guard")
            );
        }
        killed.insert(at);
        victims.push(victim);
    }
    let rate = KILLS as f64 / began.elapsed().as_secs_f64();
    let workers = wait_until("four serving workers and no zombie", || {
        let workers = current(&killed);
        let live = procfs::live_children(master);
        let zombies = procfs::zombie_children(master);
        let mut expected: Vec<u32> = workers.values().copied().collect();
        expected.sort_unstable();
        if workers.len() == WORKERS && live == expected && zombies.is_empty() {
            Ok(workers)
        } else {
            Err(format!(
                "serving {workers:?}, live children {live:?}, zombies {zombies:?}"
            ))
        }
    });
    let answered = collect_ids(port, WORKERS, |pid| workers.values().any(|&p| p == pid));
    assert_eq!(answered, workers, "every slot's worker answers");
    assert!(fx.results().is_empty(), "the run ended: {:?}", fx.results());
    fx.stop_with(libc::SIGTERM);
    wait_last_log(&fx);
    let exits = fx.exits();
    assert_eq!(
        exits.len(),
        KILLS + WORKERS,
        "one exit line per kill, and one per worker stopped"
    );
    let (crashed, stopped) = exits.split_at(KILLS);
    assert!(
        crashed.iter().all(|e| e.how == "Signal(SIGKILL)"),
        "{crashed:?}"
    );
    let last: BTreeMap<usize, u32> = stopped.iter().map(|e| (e.slot, e.pid)).collect();
    assert_eq!(last, workers, "the workers stopped by TERM");
    let mut exited: Vec<u32> = crashed.iter().map(|e| e.pid).collect();
    exited.sort_unstable();
    victims.sort_unstable();
    assert_eq!(
        exited, victims,
        "the killed workers are the ones that exited"
    );
    assert_eq!(fx.recovers().len(), KILLS, "one respawn per kill");
    let warned = fx
        .stderr()
        .iter()
        .filter(|l| l.starts_with("[WARN ") && l.contains("exited: signal SIGKILL; replacing it"))
        .count();
    assert_eq!(warned, KILLS, "crash lines at WARN");
    assert_eq!(
        log_count(&fx, "crash-loop guard"),
        0,
        "a kill of a serving worker was counted"
    );
    runner::note(format!("{KILLS} kills at {rate:.1}/s"));
}

/// A worker that got the notice but whose drain outlives the grace period is killed when it
/// ends, and the master says so at WARN.
fn slow_drain_is_killed_at_grace_and_logged(b: Backend) {
    let grace = Duration::from_millis(300);
    let ms = grace.as_millis().to_string();
    let (mut fx, _port, ids) = ready_master(
        b,
        2,
        &[
            ("FX_DRAIN", "1"),
            ("FX_DRAIN_MS", "3600000"),
            ("FX_GRACE_MS", &ms),
        ],
    );
    let sent = Instant::now();
    fx.signal(libc::SIGTERM);
    for &pid in ids.values() {
        fx.wait_line(&format!("worker {pid} to begin its drain"), |l| {
            (l == format!("drain {pid}")).then_some(())
        });
    }
    fx.wait_exit();
    let took = sent.elapsed();
    fx.assert_clean_exit();
    assert_exits(&fx, ids.values().copied(), "Signal(SIGKILL)");
    assert!(
        took >= grace,
        "the master exited {took:?} after TERM, before the {grace:?} grace period ended"
    );
    for (&slot, &pid) in &ids {
        assert_logged(
            &fx,
            "WARN",
            &format!("worker {slot} (pid {pid}) did not finish draining within the grace period"),
        );
        assert!(
            !fx.lines().contains(&format!("drained {pid}")),
            "worker {pid} finished a drain it had an hour for"
        );
    }
}

/// Sends HUP until the fixture (`FX_HOLD_NEW`) holds slot 0's replacement stopped before it
/// reported ready; `current` is slot → worker of the `n` slots. A restart whose slot-0
/// replacement was too late to hold runs to its end (the later slots' replacements, if
/// held, are resumed at once) and the next HUP tries again. Returns the workers of that
/// restart's slots before it, the held replacement and the number of HUPs sent.
fn hup_until_slot0_held(
    fx: &Fixture,
    n: usize,
    mut current: BTreeMap<usize, u32>,
) -> (BTreeMap<usize, u32>, u32, usize) {
    const ATTEMPTS: usize = 10;
    let mut cursor = fx.lines().len();
    for attempt in 1..=ATTEMPTS {
        fx.signal(libc::SIGHUP);
        let mut replaced = BTreeMap::new();
        for slot in 0..n {
            let (at, (held, new)) = fx.wait_line_from(cursor, "a replacement's hold report", |l| {
                let (word, pid) = l.split_once(' ')?;
                let held = match word {
                    "held" => true,
                    "missed" => false,
                    _ => return None,
                };
                Some((held, pid.parse::<u32>().ok()?))
            });
            cursor = at + 1;
            if slot == 0 && held {
                return (current, new, attempt);
            }
            if held {
                kill(new, libc::SIGCONT);
            }
            replaced.insert(slot, new);
        }
        fx.wait_stderr_count("rolling restart done", attempt);
        current = replaced;
    }
    panic!("no replacement of slot 0 was stopped before it reported ready in {ATTEMPTS} restarts");
}

/// Asserts that the worker `old` was not asked to drain, and still serves: everything the
/// master logged before the line with `barrier` (which the caller awaited) is read.
fn assert_untouched(fx: &Fixture, port: u16, old: u32, new: u32, barrier: &str) {
    fx.expect_log(barrier);
    assert_eq!(
        log_count(fx, &format!("(pid {old}) retired")),
        0,
        "the old worker {old} was asked to drain before its replacement {new} was ready"
    );
    assert!(
        exit_index(&fx.lines(), old).is_none(),
        "the old worker {old} ended before its replacement {new} was ready"
    );
    assert_eq!(
        ask(port, "id").pid,
        old,
        "the old worker serves while its replacement starts"
    );
}

/// HUP: the old worker is asked to drain only once its replacement is ready. The fixture
/// stops the replacement (SIGSTOP, from the spawn hook) and reports whether it provably did
/// so before the replacement reported ready; the old worker must then stay untouched, and
/// serving, for as long as the replacement is held, and retire as soon as it is resumed.
/// (One worker: TTOU then changes nothing, and its log line shows that the master has
/// handled everything before it.)
fn sighup_old_worker_drains_only_after_replacement_is_ready(b: Backend) {
    let (mut fx, port, ids) = ready_master(b, 1, &[("FX_HOLD_NEW", "1"), ("FX_MASTER_FIRST", "1")]);
    let (current, new, attempt) = hup_until_slot0_held(&fx, 1, ids);
    let old = current[&0];
    fx.signal(libc::SIGTTOU);
    assert_untouched(&fx, port, old, new, "SIGTTOU");
    kill(new, libc::SIGCONT);
    assert_eq!(
        fx.wait_exit_line(old).how,
        "Signal(SIGTERM)",
        "the old worker's end"
    );
    assert_logged(
        &fx,
        "INFO",
        &format!("worker 0 (pid {old}) retired: asked to drain"),
    );
    assert_eq!(id_of(port, new), 0, "the replacement serves slot 0");
    fx.stop_with(libc::SIGTERM);
    runner::note(format!("held at HUP {attempt}"));
}

/// TTOU during a rolling restart closes the highest slot, not yet replaced: its worker is
/// retired at once (there is no replacement to wait for), while slot 0's old worker still
/// waits for its own replacement to be ready; the restart then ends with that slot.
fn sigttou_during_restart_old_worker_waits_for_replacement(b: Backend) {
    let (mut fx, port, ids) = ready_master(b, 2, &[("FX_HOLD_NEW", "1"), ("FX_MASTER_FIRST", "1")]);
    let (current, new, attempt) = hup_until_slot0_held(&fx, 2, ids);
    let (old0, old1) = (current[&0], current[&1]);
    fx.signal(libc::SIGTTOU);
    let exit = fx.wait_exit_line(old1);
    assert_eq!(
        (exit.slot, exit.how.as_str()),
        (1, "Signal(SIGTERM)"),
        "the closed slot's worker"
    );
    // Logged after the TTOU was handled, in a later wake-up.
    assert_untouched(
        &fx,
        port,
        old0,
        new,
        &format!("worker 1 (pid {old1}) stopped"),
    );
    kill(new, libc::SIGCONT);
    assert_eq!(
        fx.wait_exit_line(old0).how,
        "Signal(SIGTERM)",
        "slot 0's old worker"
    );
    fx.wait_stderr_count("rolling restart done", attempt);
    assert_eq!(id_of(port, new), 0, "the replacement serves slot 0");
    assert_eq!(procfs::live_children(fx.pid), [new], "the master's workers");
    fx.stop_with(libc::SIGTERM);
    wait_last_log(&fx);
    let spawns = fx.spawns();
    assert_eq!(
        spawns.last(),
        Some(&new),
        "nothing started after slot 0's replacement: {spawns:?}"
    );
    assert_logged(
        &fx,
        "INFO",
        &format!("worker 1 (pid {old1}) retired: asked to drain"),
    );
    runner::note(format!("held at HUP {attempt}"));
}

/// HUPs that arrive while a rolling restart waits for an old worker's drain (held back by a
/// connection the test keeps open) queue exactly one more full restart: three generations of
/// workers in all, each replaced slot by slot, every one ending with exit code 0.
fn sighups_during_rolling_restart_coalesce_into_one_more(b: Backend) {
    let (mut fx, port, gen0) = ready_master(b, 2, &[("FX_DRAIN", "1"), ("FX_GRACE_MS", "60000")]);
    let held = hold_each(port, 2);
    fx.signal(libc::SIGHUP);
    fx.expect_log(&format!(
        "worker 0 (pid {}) retired: asked to drain",
        gen0[&0]
    ));
    for k in 2..=4 {
        fx.signal(libc::SIGHUP);
        fx.wait_stderr_count("SIGHUP: rolling restart", k);
    }
    assert_eq!(
        wait_spawns(&fx, 3).len(),
        3,
        "the restart is at its first slot"
    );
    assert!(
        fx.exits().is_empty(),
        "a worker exited while the restart was held: {:?}",
        fx.exits()
    );
    drop(held);
    fx.wait_stderr_count("rolling restart done", 2);
    // Each generation's workers, in the order they started, with the slot they serve.
    let (spawns, slots) = fx.wait_lines("six workers serving", |lines| {
        let spawns: Vec<u32> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("spawn ")?.parse().ok())
            .collect();
        let slots: BTreeMap<u32, usize> = serving(lines)
            .into_iter()
            .map(|(_, slot, pid)| (pid, slot))
            .collect();
        (spawns.len() >= 6 && spawns.iter().all(|p| slots.contains_key(p)))
            .then_some((spawns, slots))
    });
    let generations: Vec<Vec<(usize, u32)>> = spawns[..6]
        .chunks(2)
        .map(|g| g.iter().map(|pid| (slots[pid], *pid)).collect())
        .collect();
    let first: Vec<(usize, u32)> = gen0.iter().map(|(&s, &p)| (s, p)).collect();
    assert_eq!(generations[0], first, "the first generation");
    for (k, generation) in generations.iter().enumerate() {
        let in_slots: Vec<usize> = generation.iter().map(|&(slot, _)| slot).collect();
        assert_eq!(
            in_slots,
            [0, 1],
            "generation {k} replaces slot 0, then slot 1: {generations:?}"
        );
    }
    let last: BTreeMap<usize, u32> = generations[2].iter().copied().collect();
    assert_eq!(
        collect_ids(port, 2, |pid| last.values().any(|&p| p == pid)),
        last,
        "the third generation serves"
    );
    fx.stop_with(libc::SIGTERM);
    wait_last_log(&fx);
    assert_eq!(
        log_count(&fx, "rolling restart done"),
        2,
        "restarts completed"
    );
    assert_eq!(fx.spawns(), spawns[..6], "no third restart");
    // Every generation drained, the second too, although its workers may have been asked
    // to drain right after they reported ready, before they took the shutdown notice.
    assert_exits(&fx, spawns, "Code(0)");
    assert!(fx.recovers().is_empty(), "a restart is no recovery");
}

/// TERM while a rolling restart waits for an old worker's drain: the restart ends there, the
/// new worker and the old ones drain and exit 0 (as their connections let them); a second
/// TERM kills the worker still draining at once, long before the grace period ends.
/// A TERM that reaches a worker before it asks for the shutdown notice (within the decision
/// window) is kept: the worker survives it, and once it asks, the request is there and its
/// descriptor is readable (the pipe is created on that first request).
fn term_before_the_notice_is_asked_for_is_kept(b: Backend) {
    let mut fx = start(b, &[("FX_WORKERS", "1"), ("FX_LATE_NOTICE", "1")]);
    let (pid, requested, readable) = fx.wait_line("the late notice", |l| {
        let mut f = l.strip_prefix("late-notice ")?.split(' ');
        let pid: u32 = f.next()?.parse().ok()?;
        Some((pid, f.next()?.to_owned(), f.next()?.to_owned()))
    });
    assert_eq!(requested, "1", "is_requested after a TERM that came first");
    assert_eq!(
        readable, "1",
        "the notice's descriptor after a TERM that came first"
    );
    fx.wait_exit();
    fx.assert_clean_exit();
    assert_exits(&fx, [pid], "Code(0)");
}

fn sigterm_during_rolling_restart_drains_second_kills(b: Backend) {
    // A grace period no test run could sit out: only the second TERM can end the stop.
    let (mut fx, port, old) = ready_master(b, 2, &[("FX_DRAIN", "1"), ("FX_GRACE_MS", "3600000")]);
    let mut held = hold_each(port, 2);
    fx.signal(libc::SIGHUP);
    fx.expect_log(&format!(
        "worker 0 (pid {}) retired: asked to drain",
        old[&0]
    ));
    let spawns = wait_spawns(&fx, 3);
    assert_eq!(spawns.len(), 3, "slot 0's new worker started: {spawns:?}");
    let new = spawns[2];
    fx.signal(libc::SIGTERM);
    // The new worker is idle: it drains at once.
    assert_eq!(
        fx.wait_exit_line(new).how,
        "Code(0)",
        "the new worker's exit"
    );
    assert_all_alive(&fx, old.values().copied());
    // Slot 1's old worker finishes its connection, then its drain.
    let (stream, pid) = held.remove(&1).expect("a held connection to slot 1");
    assert_eq!(pid, old[&1]);
    drop(stream);
    assert_eq!(fx.wait_exit_line(old[&1]).how, "Code(0)");
    assert_all_alive(&fx, [old[&0]]);
    fx.signal(libc::SIGTERM);
    fx.assert_clean_exit();
    wait_last_log(&fx);
    assert_exits(&fx, [old[&0]], "Signal(SIGKILL)");
    assert_logged(&fx, "WARN", "during shutdown: killing workers now");
    assert_eq!(fx.spawns().len(), 3, "no slot was restarted after TERM");
    assert_eq!(
        log_count(&fx, "rolling restart done"),
        0,
        "the restart cannot complete"
    );
    assert_eq!(
        log_count(&fx, "did not finish draining"),
        0,
        "the grace period did not end"
    );
    drop(held);
}

/// Workers retired by HUP and TTOU drain and exit 0, and the master logs both steps at INFO,
/// never anything about them at WARN or ERROR.
fn retirements_by_hup_and_ttou_are_logged_at_info(b: Backend) {
    let (mut fx, port, old) = ready_master(b, 3, &[("FX_DRAIN", "1")]);
    let old_pids: BTreeSet<u32> = old.values().copied().collect();
    fx.signal(libc::SIGHUP);
    for (&slot, &pid) in &old {
        let exit = fx.wait_exit_line(pid);
        assert_eq!((exit.slot, exit.how.as_str()), (slot, "Code(0)"));
    }
    fx.expect_log("rolling restart done");
    let new = collect_ids(port, 3, |pid| !old_pids.contains(&pid));
    fx.signal(libc::SIGTTOU);
    let exit = fx.wait_exit_line(new[&2]);
    assert_eq!(
        (exit.slot, exit.how.as_str()),
        (2, "Code(0)"),
        "the highest slot's worker drained"
    );
    let rest: BTreeMap<usize, u32> = [(0, new[&0]), (1, new[&1])].into();
    assert_eq!(
        collect_ids(port, 2, |pid| pid != new[&2]),
        rest,
        "the other workers serve on"
    );
    let mut expected: Vec<u32> = rest.values().copied().collect();
    expected.sort_unstable();
    assert_eq!(
        procfs::live_children(fx.pid),
        expected,
        "the master's workers"
    );
    fx.stop_with(libc::SIGTERM);
    wait_last_log(&fx);
    let mut retired: Vec<(usize, u32)> = old.iter().map(|(&s, &p)| (s, p)).collect();
    retired.push((2, new[&2]));
    for (slot, pid) in retired {
        let about = logs_about(&fx, pid);
        for step in ["retired: asked to drain", "stopped: exit code 0"] {
            assert_logged(&fx, "INFO", &format!("worker {slot} (pid {pid}) {step}"));
        }
        let loud: Vec<&String> = about
            .iter()
            .filter(|l| l.starts_with("[WARN ") || l.starts_with("[ERROR "))
            .collect();
        assert!(loud.is_empty(), "worker {pid} retired with: {loud:?}");
    }
    assert!(fx.recovers().is_empty(), "a retirement is no recovery");
    assert_eq!(fx.spawns().len(), 6, "TTOU starts nothing");
}

// ---- systemd's notification protocol ---------------------------------------------------------

/// `CLOCK_MONOTONIC` in microseconds, the clock of `MONOTONIC_USEC=`.
fn monotonic_usec() -> u64 {
    // SAFETY: an all-zero timespec is a valid value to be overwritten.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is writable.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(ret, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

fn texts(notifications: &[Notification]) -> Vec<&str> {
    notifications.iter().map(|n| n.text.as_str()).collect()
}

/// Asserts that `status` (a `STATUS=` value) says `n` of `n` workers serve.
fn assert_all_serving(status: Option<&str>, n: usize) {
    let expected = format!("{n} of {n} workers serving");
    assert!(
        status.is_some_and(|s| s.starts_with(&expected)),
        "STATUS={status:?}, expected it to begin with {expected:?}"
    );
}

/// The life of a master under `Type=notify`: `READY=1` once both workers serve; at HUP
/// `RELOADING=1` with the monotonic time, and `READY=1` only when the last slot has a new
/// worker (not while slot 0's old worker still drains, held back by the test);
/// `STOPPING=1` at TERM, and nothing after it.
fn notify_lifecycle(b: Backend, socket: NotifySocket) {
    let (mut fx, port, old) = ready_master(
        b,
        2,
        &[
            ("FX_DRAIN", "1"),
            ("FX_GRACE_MS", "60000"),
            ("NOTIFY_SOCKET", &socket.name),
        ],
    );
    let (before, ready) = socket.wait_for("READY=1", |n| n.has("READY", "1"));
    assert_all_serving(ready.get("STATUS"), 2);
    let loud = ["READY", "RELOADING", "STOPPING", "WATCHDOG"];
    assert!(
        before
            .iter()
            .all(|n| loud.iter().all(|k| n.get(k).is_none())),
        "before READY=1: {:?}",
        texts(&before)
    );
    let held = hold_each(port, 2);
    let t0 = monotonic_usec();
    fx.signal(libc::SIGHUP);
    let (between, reloading) = socket.wait_for("RELOADING=1", |n| n.has("RELOADING", "1"));
    let t1 = monotonic_usec();
    assert!(
        between.iter().all(|n| n.get("READY").is_none()),
        "a second READY=1 before the HUP: {:?}",
        texts(&between)
    );
    let usec: u64 = reloading
        .get("MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC= in {:?}", reloading.text));
    assert!(
        (t0..=t1).contains(&usec),
        "MONOTONIC_USEC={usec} is not between the HUP ({t0}) and its receipt ({t1})"
    );
    // Slot 0's new worker serves; its old one drains for as long as the test holds it.
    fx.expect_log(&format!(
        "worker 0 (pid {}) retired: asked to drain",
        old[&0]
    ));
    // Everything the master sent for that is on the socket once it has logged a later
    // signal (USR1 is forwarded to the workers, which ignore it).
    fx.signal(libc::SIGUSR1);
    fx.expect_log("SIGUSR1: forwarding");
    let early = socket.pending();
    assert!(
        early.iter().all(|n| n.get("READY").is_none()),
        "READY=1 while slot 0's old worker drains and slot 1 is not replaced: {:?}",
        texts(&early)
    );
    drop(held);
    let (_, reloaded) = socket.wait_for("READY=1 after the restart", |n| n.has("READY", "1"));
    assert_all_serving(reloaded.get("STATUS"), 2);
    fx.expect_log("rolling restart done");
    fx.signal(libc::SIGTERM);
    socket.wait_for("STOPPING=1", |n| n.has("STOPPING", "1"));
    fx.assert_clean_exit();
    assert_eq!(fx.spawns().len(), 4, "both slots have a new worker");
    let after = socket.pending();
    assert!(
        after
            .iter()
            .all(|n| n.get("READY").is_none() && n.get("RELOADING").is_none()),
        "after STOPPING=1: {:?}",
        texts(&after)
    );
}

fn notify_lifecycle_on_path_socket(b: Backend) {
    notify_lifecycle(b, NotifySocket::at_path("notify"));
}

fn notify_lifecycle_on_abstract_socket(b: Backend) {
    notify_lifecycle(b, NotifySocket::abstract_name("notify"));
}

/// With `WATCHDOG_USEC=200000`, and `WATCHDOG_PID` unset or the master's own pid, the
/// master pings `WATCHDOG=1` every 100 ms (half the period).
fn notify_watchdog_pings_every_half_period(b: Backend) {
    const PINGS: usize = 8;
    let mut seen = Vec::new();
    for own_pid in [false, true] {
        let socket = NotifySocket::at_path("watchdog");
        let mut spec = Spec::new(ROLE).backend(b).envs(&[
            ("FX_WORKERS", "1"),
            ("NOTIFY_SOCKET", &socket.name),
            ("WATCHDOG_USEC", "200000"),
        ]);
        if own_pid {
            spec = spec.self_pid_env("WATCHDOG_PID");
        }
        let mut fx = spec.start();
        // Once it runs (and `sh` has exec'd it), its environment is the master's.
        fx.wait_field("master");
        let env = procfs::environ(fx.pid).expect("the master's environment");
        let expected = own_pid.then(|| fx.pid.to_string());
        assert_eq!(
            procfs::environ_var(&env, "WATCHDOG_PID"),
            expected,
            "the master's WATCHDOG_PID"
        );
        let pings: Vec<Instant> = (0..PINGS)
            .map(|_| {
                socket
                    .wait_for("WATCHDOG=1", |n| n.has("WATCHDOG", "1"))
                    .1
                    .at
            })
            .collect();
        let every = (pings[PINGS - 1] - pings[0]) / (PINGS as u32 - 1);
        assert!(
            (Duration::from_millis(70)..=Duration::from_millis(190)).contains(&every),
            "WATCHDOG=1 every {every:?} on average (WATCHDOG_PID set: {own_pid}), expected \
             about 100 ms"
        );
        seen.push(format!("{every:?}"));
        fx.stop_with(libc::SIGTERM);
    }
    runner::note(format!("pings every {}", seen.join(", ")));
}

/// No watchdog without `WATCHDOG_USEC`, nor when `WATCHDOG_PID` names another process: no
/// ping in an idle second. Without `NOTIFY_SOCKET` the master holds no unix socket at all,
/// through a start, a rolling restart and a stop (a master with one holds exactly one).
fn notify_silent_without_watchdog_or_socket(b: Backend) {
    let quiet = NotifySocket::at_path("quiet");
    let other = NotifySocket::abstract_name("other");
    let mut fx_quiet = start(b, &[("FX_WORKERS", "1"), ("NOTIFY_SOCKET", &quiet.name)]);
    let mut fx_other = start(
        b,
        &[
            ("FX_WORKERS", "1"),
            ("NOTIFY_SOCKET", &other.name),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    let mut fx_none = start(b, &[("FX_WORKERS", "1"), ("WATCHDOG_USEC", "200000")]);
    for socket in [&quiet, &other] {
        let (before, _) = socket.wait_for("READY=1", |n| n.has("READY", "1"));
        assert!(
            before.iter().all(|n| n.get("WATCHDOG").is_none()),
            "{:?}",
            texts(&before)
        );
    }
    for fx in [&fx_quiet, &fx_other, &fx_none] {
        fx.ready();
    }
    assert_eq!(
        procfs::unix_sockets_of(fx_quiet.pid).len(),
        1,
        "a notifying master holds its notification socket"
    );
    let workers = procfs::live_children(fx_quiet.pid);
    assert!(!workers.is_empty(), "the notifying master has a worker");
    for worker in workers {
        assert_eq!(
            procfs::unix_sockets_of(worker),
            Vec::<u64>::new(),
            "worker {worker} holds the master's notification socket"
        );
    }
    assert_eq!(
        procfs::unix_sockets_of(fx_none.pid),
        Vec::<u64>::new(),
        "the master without NOTIFY_SOCKET holds a unix socket"
    );
    // The idle second, for both at once.
    let idle = Instant::now() + Duration::from_secs(1);
    let mut heard = Vec::new();
    while let Some(n) = quiet.recv_within(idle.saturating_duration_since(Instant::now())) {
        heard.push(n);
    }
    let heard_other = other.pending();
    for (what, heard) in [
        ("no WATCHDOG_USEC", &heard),
        ("another WATCHDOG_PID", &heard_other),
    ] {
        assert!(
            heard.iter().all(|n| n.get("WATCHDOG").is_none()),
            "{what}: pinged in an idle second: {:?}",
            texts(heard)
        );
    }
    fx_none.signal(libc::SIGHUP);
    fx_none.expect_log("rolling restart done");
    assert_eq!(
        procfs::unix_sockets_of(fx_none.pid),
        Vec::<u64>::new(),
        "the master without NOTIFY_SOCKET holds a unix socket after HUP"
    );
    for fx in [&mut fx_quiet, &mut fx_other, &mut fx_none] {
        fx.stop_with(libc::SIGTERM);
    }
}

// ---- Unprivileged masters under load -------------------------------------------------------

/// The user the unprivileged cases run their master as (`nobody`).
const NOBODY: u32 = 65534;
/// Load clients: more than the workers, so the queues are never empty for long.
const LOAD_CLIENTS: usize = 8;

/// A `listen_and_serve` master (`listen`: `shared` or `reuseport`; `mode`: `fork` or `exec`)
/// with three draining workers, running as [`NOBODY`], already under a load that has had
/// answers.
fn unprivileged_under_load(b: Backend, listen: &str, mode: &str) -> (Fixture, Load) {
    assert!(
        matches!(listen, "shared" | "reuseport"),
        "listen {listen:?}"
    );
    let user = NOBODY.to_string();
    let fx = start(
        b,
        &[
            ("FX_WORKERS", "3"),
            ("FX_LISTEN", "1"),
            ("FX_REUSEPORT", if listen == "reuseport" { "1" } else { "" }),
            ("FX_MODE", mode),
            ("FX_MASTER_UID", &user),
            ("FX_DRAIN", "1"),
        ],
    );
    let port = port(&fx);
    fx.ready();
    for pid in std::iter::once(fx.pid).chain(procfs::live_children(fx.pid)) {
        assert_eq!(uid_of(pid), Some(NOBODY), "process {pid} runs as nobody");
    }
    let load = Load::start(port, LOAD_CLIENTS);
    load.wait_answered(100);
    (fx, load)
}

/// The real uid of `pid` (`Uid:` in its status).
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The load was answered, and lost nothing the kernel accepted, and the master did not warn
/// that it could not keep new connections out, nor that a connection reached a full socket
/// of the stop before its program (the window of a shared socket that is no reuseport group
/// yet, which an unprivileged master's shared socket never is: `shared` asks that the master
/// said so at the bind).
fn assert_nothing_lost(fx: &Fixture, tally: &Tally, shared: bool) {
    assert!(tally.ok > 0, "the load was answered: {tally:?}");
    let log = fx.stderr();
    let refused: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("cannot stop new connections") || l.contains("reached a full"))
        .collect();
    assert!(refused.is_empty(), "the master warned: {refused:?}");
    if shared {
        assert!(
            log.iter()
                .any(|l| l.contains("is a reuseport group of one")),
            "the shared socket of an unprivileged master is a group of one: {log:?}"
        );
    }
    assert!(
        tally.lost.is_empty(),
        "{} accepted connections lost: {:?} ({tally:?})",
        tally.lost.len(),
        tally.lost
    );
}

/// TERM under load: the master exits 0 and the load lost nothing.
fn unprivileged_sigterm(b: Backend, listen: &str, mode: &str) {
    let (mut fx, load) = unprivileged_under_load(b, listen, mode);
    fx.signal(libc::SIGTERM);
    fx.assert_clean_exit();
    let tally = load.stop();
    assert_nothing_lost(&fx, &tally, listen == "shared");
}

fn unprivileged_sigterm_loses_nothing_reuseport(b: Backend) {
    unprivileged_sigterm(b, "reuseport", "fork");
}

fn unprivileged_sigterm_loses_nothing_reuseport_exec(b: Backend) {
    unprivileged_sigterm(b, "reuseport", "exec");
}

fn unprivileged_sigterm_loses_nothing_shared(b: Backend) {
    unprivileged_sigterm(b, "shared", "fork");
}

fn unprivileged_sigterm_loses_nothing_shared_exec(b: Backend) {
    unprivileged_sigterm(b, "shared", "exec");
}

/// HUP under load: every slot gets a new worker, and the load lost nothing, then nor does TERM.
fn unprivileged_sighup_loses_nothing(b: Backend) {
    let (mut fx, load) = unprivileged_under_load(b, "shared", "fork");
    let before = fx.spawns().len();
    fx.signal(libc::SIGHUP);
    fx.expect_log("rolling restart done");
    assert_eq!(fx.spawns().len(), before + 3, "one new worker per slot");
    load.wait_answered(200);
    fx.signal(libc::SIGTERM);
    fx.assert_clean_exit();
    let tally = load.stop();
    assert_nothing_lost(&fx, &tally, true);
}

/// TTOU under load: the retired worker drains and exits 0, and the load lost nothing, then
/// nor does TERM.
fn unprivileged_sigttou(b: Backend, listen: &str) {
    let (mut fx, load) = unprivileged_under_load(b, listen, "fork");
    let last = *fx.ready().last().expect("three workers");
    fx.signal(libc::SIGTTOU);
    let exit = fx.wait_exit_line(last);
    assert_eq!(exit.how.as_str(), "Code(0)", "the retired worker drained");
    load.wait_answered(200);
    fx.signal(libc::SIGTERM);
    fx.assert_clean_exit();
    let tally = load.stop();
    assert_nothing_lost(&fx, &tally, listen == "shared");
}

fn unprivileged_sigttou_loses_nothing_shared(b: Backend) {
    unprivileged_sigttou(b, "shared");
}

fn unprivileged_sigttou_loses_nothing_reuseport(b: Backend) {
    unprivileged_sigttou(b, "reuseport");
}
