//! The cases of `tests/fleet.rs`: heartbeats and stuck workers, recycling by lifetime and
//! by memory, CPU affinity, dropped credentials, process names, and a signal storm. Each
//! starts the `fleet` fixture (`fleet/fixture.rs`) and watches it from outside.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::fixture::ROLE;
use crate::support::backend::{Backend, Mode};
use crate::support::net::{ask, try_ask};
use crate::support::process::{DEADLINE, Fixture, Spec, kill, wait_for, wait_until};
use crate::support::procfs;
use crate::support::runner::{self, Case};

/// Every backend in either mode.
const EVERY: &[(Backend, Mode)] = &[
    (Backend::Pidfd, Mode::Fork),
    (Backend::Pidfd, Mode::Exec),
    (Backend::Sigchld, Mode::Fork),
    (Backend::Sigchld, Mode::Exec),
];
/// Every backend in fork mode.
const FORK: &[(Backend, Mode)] = &[(Backend::Pidfd, Mode::Fork), (Backend::Sigchld, Mode::Fork)];
/// The default backend in either mode (cases that do not depend on reaping).
const PIDFD: &[(Backend, Mode)] = &[(Backend::Pidfd, Mode::Fork), (Backend::Pidfd, Mode::Exec)];
/// The default backend in fork mode.
const PIDFD_FORK: &[(Backend, Mode)] = &[(Backend::Pidfd, Mode::Fork)];

/// Every case: its name, the backends and modes it runs under, its body.
pub const ALL: &[Case<(Backend, Mode)>] = &[
    Case::new(
        "stuck_worker_is_killed_and_replaced_beating_ones_are_not",
        EVERY,
        stuck_worker_is_killed_and_replaced_beating_ones_are_not,
    ),
    Case::new(
        "lifetime_recycles_with_the_replacement_serving_first",
        EVERY,
        lifetime_recycles_with_the_replacement_serving_first,
    ),
    Case::new(
        "rss_ceiling_recycles_a_worker_that_grows",
        EVERY,
        rss_ceiling_recycles_a_worker_that_grows,
    ),
    Case::new(
        "workers_are_pinned_to_the_masters_cpus_in_order",
        PIDFD,
        workers_are_pinned_to_the_masters_cpus_in_order,
    ),
    Case::new(
        "workers_drop_to_the_user_and_cannot_regain_root",
        PIDFD,
        workers_drop_to_the_user_and_cannot_regain_root,
    ),
    Case::new(
        "unknown_user_or_group_is_refused_before_any_fork",
        PIDFD_FORK,
        unknown_user_or_group_is_refused_before_any_fork,
    ),
    Case::new(
        "a_worker_that_cannot_drop_privileges_stops_the_master",
        PIDFD,
        a_worker_that_cannot_drop_privileges_stops_the_master,
    ),
    Case::new(
        "processes_are_named_and_the_name_comes_back",
        PIDFD,
        processes_are_named_and_the_name_comes_back,
    ),
    Case::new("names_can_be_turned_off", PIDFD, names_can_be_turned_off),
    Case::new(
        "signal_storm_leaves_the_master_consistent",
        FORK,
        signal_storm_leaves_the_master_consistent,
    ),
    Case::new(
        "status_reports_each_slots_last_and_longest_fork",
        EVERY,
        status_reports_each_slots_last_and_longest_fork,
    ),
];

// ---- Helpers ------------------------------------------------------------------------------

fn fleet(backend: Backend, mode: Mode, vars: &[(&str, &str)]) -> Fixture {
    Spec::new(ROLE)
        .backend(backend)
        .env("FX_MODE", mode.name())
        .envs(vars)
        .start()
}

/// A `serving ID PID PORT` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Serving {
    slot: usize,
    pid: u32,
    port: u16,
}

fn parse_serving(line: &str) -> Option<Serving> {
    let mut f = line.strip_prefix("serving ")?.split(' ');
    Some(Serving {
        slot: f.next()?.parse().ok()?,
        pid: f.next()?.parse().ok()?,
        port: f.next()?.parse().ok()?,
    })
}

/// The port the workers serve, from the first `serving` line.
fn port(fx: &Fixture) -> u16 {
    fx.wait_line("a serving line", parse_serving).port
}

/// Waits until the workers `pids` each printed their `serving` line; returns them by slot.
fn wait_serving(fx: &Fixture, pids: &[u32]) -> Vec<Serving> {
    fx.wait_lines(&format!("serving lines of {pids:?}"), |lines| {
        let found: Vec<Serving> = lines.iter().filter_map(|l| parse_serving(l)).collect();
        pids.iter()
            .map(|p| found.iter().find(|s| s.pid == *p).copied())
            .collect::<Option<Vec<_>>>()
    })
}

/// One slot of a `status` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotLine {
    slot: usize,
    pid: Option<u32>,
    ready: bool,
    restarts: u64,
    cause: Option<String>,
    last_pid: Option<u32>,
    /// `SlotStatus::last_fork` and `max_fork`, in ns.
    fork_ns: Option<u64>,
    max_fork_ns: Option<u64>,
}

/// A `status` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatusLine {
    serving: usize,
    in_service: usize,
    restarts: u64,
    slots: Vec<SlotLine>,
}

fn parse_status(line: &str) -> Option<StatusLine> {
    let mut f = line.strip_prefix("status ")?.split(' ');
    let serving = f.next()?.parse().ok()?;
    let in_service = f.next()?.parse().ok()?;
    let restarts = f.next()?.parse().ok()?;
    let dash = |v: &str| (v != "-").then(|| v.to_owned());
    let slots = f
        .map(|s| {
            let (slot, rest) = s.split_once('=')?;
            let v: Vec<&str> = rest.split('/').collect();
            Some(SlotLine {
                slot: slot.parse().ok()?,
                pid: dash(v.first()?).and_then(|p| p.parse().ok()),
                ready: *v.get(1)? == "r",
                restarts: v.get(2)?.parse().ok()?,
                cause: dash(v.get(3)?),
                last_pid: dash(v.get(4)?).and_then(|p| p.parse().ok()),
                fork_ns: dash(v.get(5)?).and_then(|d| d.parse().ok()),
                max_fork_ns: dash(v.get(6)?).and_then(|d| d.parse().ok()),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(StatusLine {
        serving,
        in_service,
        restarts,
        slots,
    })
}

/// Every `status` line so far, with its index among the stdout lines.
fn statuses(lines: &[String]) -> Vec<(usize, StatusLine)> {
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| Some((i, parse_status(l)?)))
        .collect()
}

/// Sends `command` until a worker that `accept` accepts answers it; every worker that
/// answered is returned (each acted on the command).
fn ask_until(port: u16, command: &str, accept: impl Fn(usize, u32) -> bool) -> Vec<(usize, u32)> {
    let mut answered = Vec::new();
    wait_until(&format!("a chosen worker to answer {command:?}"), || {
        let a = try_ask(port, command, DEADLINE).map_err(|e| e.to_string())?;
        answered.push((a.id, a.pid));
        if accept(a.id, a.pid) {
            Ok(())
        } else {
            Err(format!("answered by worker {} (pid {})", a.id, a.pid))
        }
    });
    answered
}

/// The worker `old` of `slot` was replaced with its replacement serving first: a status
/// line shows another worker of the slot ready before the line of `old`'s exit. Returns
/// the replacement's pid.
fn replaced_serving_first(fx: &Fixture, slot: usize, old: u32) -> u32 {
    let exit = fx.wait_exit_line(old);
    assert_eq!(exit.slot, slot, "the exit of {old}");
    let lines = fx.lines();
    let exit_at = lines
        .iter()
        .position(|l| crate::support::report::parse_exit(l).is_some_and(|e| e.pid == old))
        .expect("the exit line just seen");
    let newer = statuses(&lines[..exit_at]).into_iter().find_map(|(_, st)| {
        let s = st.slots.get(slot)?;
        s.pid.filter(|&p| p != old && s.ready)
    });
    newer.unwrap_or_else(|| {
        panic!("no status line shows a ready replacement of {old} in slot {slot} before its exit")
    })
}

/// Waits for a status line whose slot `slot` reports the last exit of `pid` as `cause`.
fn wait_cause(fx: &Fixture, slot: usize, pid: u32, cause: &str) {
    fx.wait_line(&format!("a status with {pid}'s exit as {cause}"), |l| {
        let st = parse_status(l)?;
        let s = st.slots.get(slot)?;
        (s.last_pid == Some(pid) && s.cause.as_deref() == Some(cause)).then_some(())
    });
}

/// A CPU list as `/proc` writes it (`0-3,8,10-11`).
fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().expect("cpu"), b.parse().expect("cpu"));
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().expect("cpu")),
        }
    }
    cpus
}

fn cpus_of(pid: u32) -> Vec<usize> {
    parse_cpu_list(&procfs::status_field(pid, "Cpus_allowed_list").expect("Cpus_allowed_list"))
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

/// The uid and gid of `name`, creating it as a system user (`useradd -r`) if it is missing.
fn system_user(name: &str) -> (u32, u32) {
    if nix::unistd::User::from_name(name).ok().flatten().is_none() {
        let status = std::process::Command::new("useradd")
            .args(["-r", "-M", "-s", "/usr/sbin/nologin", name])
            .status()
            .unwrap_or_else(|e| panic!("useradd {name}: {e}"));
        assert!(status.success(), "useradd {name}: {status}");
    }
    let u = nix::unistd::User::from_name(name)
        .expect("looking up the user")
        .expect("the user exists");
    (u.uid.as_raw(), u.gid.as_raw())
}

// ---- Heartbeats -------------------------------------------------------------------------------

/// Forty heartbeats per timeout: a beating worker stays safe even when a busy machine
/// leaves its heartbeat thread unscheduled for a long while.
const TIMEOUT_MS: u64 = 2000;
const BEAT_MS: u64 = 50;

/// Hangs the worker of `slot` (it stops beating and blocks for good); returns its pid.
fn hang(port: u16, slot: usize) -> u32 {
    let answered = ask_until(port, &format!("hang {slot}"), |s, _| s == slot);
    answered.last().expect("an answer").1
}

/// Two beating workers (slots 0 and 1) and one that never beats (slot 2). The silent one
/// is hung first and never judged. Slot 0's worker is hung, killed (logged as stuck with its
/// silence, reported stuck, replaced), then its replacement too; slot 1's worker beats all
/// along and lives on.
fn stuck_worker_is_killed_and_replaced_beating_ones_are_not((backend, mode): (Backend, Mode)) {
    let timeout = TIMEOUT_MS.to_string();
    let beat = BEAT_MS.to_string();
    let mut fx = fleet(
        backend,
        mode,
        &[
            ("FX_WORKERS", "3"),
            ("FX_TIMEOUT_MS", &timeout),
            ("FX_BEAT_MS", &beat),
            ("FX_SILENT_SLOT", "2"),
            ("FX_GRACE_MS", "1500"),
        ],
    );
    let initial = fx.ready();
    wait_serving(&fx, &initial);
    let port = port(&fx);
    let began = Instant::now();
    let silent = hang(port, 2);
    assert_eq!(silent, initial[2]);
    let mut stuck = Vec::new();
    let mut pid = hang(port, 0);
    assert_eq!(pid, initial[0]);
    for round in 0..2 {
        let needle = format!("worker 0 (pid {pid}) is stuck: no heartbeat for ");
        let silence_ms = fx.wait_stderr_line(&format!("the stuck log of {pid}"), |l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            parse_duration_ms(rest.split(' ').next()?)
        });
        assert!(
            silence_ms >= TIMEOUT_MS as f64,
            "round {round}: {pid} was killed after {silence_ms} ms of silence, less than the \
             timeout"
        );
        let exit = fx.wait_exit_line(pid);
        assert_eq!(exit.how, "Signal(SIGKILL)", "the stuck worker is KILLed");
        wait_cause(&fx, 0, pid, "stuck");
        let new = fx.wait_recover(pid);
        wait_serving(&fx, &[new]);
        stuck.push((pid, silence_ms));
        if round == 0 {
            pid = hang(port, 0);
            assert_eq!(pid, new, "the replacement holds slot 0");
        }
    }
    // Each kill came at least a timeout (less one beat) after its hang: slot 1 beat through
    // two timeouts, the silent worker hung through them, and neither was judged.
    let window = began.elapsed();
    assert!(
        window >= Duration::from_millis(2 * (TIMEOUT_MS - BEAT_MS)),
        "the watch lasted {window:?}"
    );
    let stuck_logs: Vec<String> = fx
        .stderr()
        .into_iter()
        .filter(|l| l.contains(" is stuck: "))
        .collect();
    assert_eq!(
        stuck_logs.len(),
        2,
        "only the hung beating workers: {stuck_logs:?}"
    );
    let exited: Vec<u32> = fx.exits().iter().map(|e| e.pid).collect();
    let killed: Vec<u32> = stuck.iter().map(|&(p, _)| p).collect();
    assert_eq!(exited, killed, "no other worker exited");
    for p in [initial[1], silent] {
        assert!(!procfs::is_gone(p, fx.pid), "worker {p} lives on");
    }
    runner::note(format!(
        "silences before the kills (ms): {:?}; watched {window:.1?}",
        stuck.iter().map(|&(_, ms)| ms).collect::<Vec<_>>()
    ));
    // The hung silent worker does not drain: KILLed after the grace period.
    fx.stop_with(libc::SIGTERM);
}

/// `123.4ms`, `1.2s` (Rust's `Debug` of a `Duration` with one decimal) in milliseconds.
fn parse_duration_ms(d: &str) -> Option<f64> {
    let d = d.trim_end_matches([',', ';', ')']);
    if let Some(v) = d.strip_suffix("ms") {
        v.parse().ok()
    } else if let Some(v) = d.strip_suffix("µs") {
        v.parse::<f64>().ok().map(|v| v / 1000.0)
    } else {
        d.strip_suffix('s')?.parse::<f64>().ok().map(|v| v * 1000.0)
    }
}

// ---- Recycling --------------------------------------------------------------------------------

/// Workers past their lifetime are recycled, each with a jitter of at most a tenth of it,
/// the replacement serving before the old worker exits, and never counted as crashes (the
/// crash-loop guard is at 0: any counted exit would stop the master).
fn lifetime_recycles_with_the_replacement_serving_first((backend, mode): (Backend, Mode)) {
    const LIFETIME_MS: u64 = 1000;
    let mut fx = fleet(
        backend,
        mode,
        &[
            ("FX_WORKERS", "2"),
            ("FX_LIFETIME_MS", "1000"),
            ("FX_THRESHOLD", "0"),
            ("FX_GRACE_MS", "2000"),
        ],
    );
    fx.ready();
    // Three recyclings.
    let recycled: Vec<(usize, u32, f64, f64)> = fx.wait_stderr("three recyclings", |lines| {
        let found: Vec<(usize, u32, f64, f64)> =
            lines.iter().filter_map(|l| parse_lifetime_log(l)).collect();
        (found.len() >= 3).then_some(found)
    });
    let mut jitters = Vec::new();
    for &(slot, pid, ran_ms, jitter_ms) in &recycled[..3] {
        assert!(
            jitter_ms <= LIFETIME_MS as f64 / 10.0,
            "jitter {jitter_ms} ms of {pid} is more than a tenth of the lifetime"
        );
        assert!(
            ran_ms >= LIFETIME_MS as f64,
            "{pid} was recycled after {ran_ms} ms"
        );
        jitters.push(format!("{jitter_ms:.1}"));
        let new = replaced_serving_first(&fx, slot, pid);
        wait_cause(&fx, slot, pid, "recycled");
        let exit = fx.wait_exit_line(pid);
        assert_eq!(exit.how, "Code(0)", "{pid} drained and exited by itself");
        assert_ne!(new, pid);
    }
    assert!(fx.recovers().is_empty(), "a recycling is no recovery");
    assert!(
        fx.results().is_empty(),
        "the master runs on: {:?}",
        fx.results()
    );
    runner::note(format!("jitters (ms): {}", jitters.join(", ")));
    fx.stop_with(libc::SIGTERM);
}

/// `worker S (pid P) recycled: it ran for 1.0s (max_worker_lifetime 1s + jitter 55.3ms)`:
/// slot, pid, how long it ran and its jitter, in ms.
fn parse_lifetime_log(line: &str) -> Option<(usize, u32, f64, f64)> {
    let rest = &line[line.find("worker ")? + "worker ".len()..];
    let (slot, rest) = rest.split_once(" (pid ")?;
    let (pid, rest) = rest.split_once(") recycled: it ran for ")?;
    let (ran, rest) = rest.split_once(' ')?;
    let jitter = rest.split("+ jitter ").nth(1)?.trim_end_matches(')');
    Some((
        slot.parse().ok()?,
        pid.parse().ok()?,
        parse_duration_ms(ran)?,
        parse_duration_ms(jitter)?,
    ))
}

/// A worker that allocates past `max_worker_rss` is recycled at the next reading (once a
/// second), its replacement serving first, and not counted; the other worker is untouched.
fn rss_ceiling_recycles_a_worker_that_grows((backend, mode): (Backend, Mode)) {
    const CEILING: u64 = 64 << 20;
    let ceiling = CEILING.to_string();
    let mut fx = fleet(
        backend,
        mode,
        &[
            ("FX_WORKERS", "2"),
            ("FX_RSS_BYTES", &ceiling),
            ("FX_THRESHOLD", "0"),
            ("FX_GRACE_MS", "2000"),
        ],
    );
    let initial = fx.ready();
    wait_serving(&fx, &initial);
    for &pid in &initial {
        let rss = procfs::status_field(pid, "VmRSS").unwrap_or_default();
        assert!(
            parse_kb(&rss) < CEILING,
            "worker {pid} starts below the ceiling: {rss}"
        );
    }
    let port = port(&fx);
    let grown = ask(port, &format!("alloc {}", CEILING + (32 << 20)));
    let (slot, pid) = (grown.id, grown.pid);
    fx.expect_log(&format!(
        "worker {slot} (pid {pid}) recycled: resident set "
    ));
    let new = replaced_serving_first(&fx, slot, pid);
    wait_cause(&fx, slot, pid, "recycled");
    let other = *initial.iter().find(|&&p| p != pid).expect("two workers");
    assert!(!procfs::is_gone(other, fx.pid), "the other worker lives on");
    assert!(
        !fx.exits().iter().any(|e| e.pid == other),
        "the other worker was not recycled"
    );
    assert!(fx.recovers().is_empty(), "a recycling is no recovery");
    runner::note(format!("{pid} replaced by {new}"));
    fx.stop_with(libc::SIGTERM);
}

/// `VmRSS: 1234 kB` in bytes.
fn parse_kb(field: &str) -> u64 {
    field
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(u64::MAX, |kb| kb * 1024)
}

// ---- Affinity ---------------------------------------------------------------------------------

/// Worker k runs on the k-th CPU of the master's set (modulo its size): first with the
/// whole set, then with the master restricted to its highest CPU (so not CPUs `0..n`).
fn workers_are_pinned_to_the_masters_cpus_in_order((backend, mode): (Backend, Mode)) {
    let mine = cpus_of(std::process::id());
    let highest = *mine.last().expect("at least one CPU");
    let restricted = highest.to_string();
    for cpus in [None, Some(restricted.as_str())] {
        let mut vars = vec![("FX_WORKERS", "3"), ("FX_AFFINITY", "1")];
        if let Some(c) = cpus {
            vars.push(("FX_CPUS", c));
        }
        let mut fx = fleet(backend, mode, &vars);
        let pids = fx.ready();
        let allowed = cpus_of(fx.pid);
        if cpus.is_some() {
            assert_eq!(allowed, vec![highest], "the master restricted itself");
        } else {
            assert_eq!(allowed, mine, "the master's CPUs are the test's");
        }
        for (slot, &pid) in pids.iter().enumerate() {
            let want = allowed[slot % allowed.len()];
            assert_eq!(
                cpus_of(pid),
                vec![want],
                "worker {slot} (pid {pid}) with the master on {allowed:?}"
            );
        }
        fx.stop_with(libc::SIGTERM);
    }
    if highest == 0 {
        runner::note("one CPU only: the restricted run pins to CPU 0 as well");
    }
}

// ---- Credentials ------------------------------------------------------------------------------

/// The workers run as `nobody` (its group, its groups), with no effective capability and
/// `NoNewPrivs`, cannot `setuid(0)`; the master stays root and binds a privileged port.
fn workers_drop_to_the_user_and_cannot_regain_root((backend, mode): (Backend, Mode)) {
    let (uid, gid) = system_user("nobody");
    let port = free_privileged_port();
    let addr = format!("127.0.0.1:{port}");
    let mut fx = fleet(
        backend,
        mode,
        &[
            ("FX_WORKERS", "2"),
            ("FX_USER", "nobody"),
            ("FX_ADDR", &addr),
        ],
    );
    let pids = fx.ready();
    let servings = wait_serving(&fx, &pids);
    assert!(servings.iter().all(|s| s.port == port), "{servings:?}");
    let ids = |id: u32| format!("{id}\t{id}\t{id}\t{id}");
    for &pid in &pids {
        let field = |name| procfs::status_field(pid, name).unwrap_or_default();
        assert_eq!(field("Uid"), ids(uid), "Uid of worker {pid}");
        assert_eq!(field("Gid"), ids(gid), "Gid of worker {pid}");
        assert_eq!(field("Groups"), gid.to_string(), "Groups of worker {pid}");
        assert_eq!(
            field("CapEff"),
            "0000000000000000",
            "CapEff of worker {pid}"
        );
        assert_eq!(field("NoNewPrivs"), "1", "NoNewPrivs of worker {pid}");
    }
    assert_eq!(
        procfs::status_field(fx.pid, "Uid").unwrap_or_default(),
        ids(0),
        "the master stays root"
    );
    let answer = ask(port, "setuid0");
    assert_eq!(answer.rest, "EPERM", "setuid(0) in worker {}", answer.pid);
    fx.stop_with(libc::SIGTERM);
}

/// A port below 1024 that nothing listens on now.
fn free_privileged_port() -> u16 {
    (900..1000)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port from 900 to 999")
}

/// An unknown user or group fails `run` with `InvalidOption` naming it, before any worker
/// starts.
fn unknown_user_or_group_is_refused_before_any_fork((backend, mode): (Backend, Mode)) {
    for (var, value, option) in [
        ("FX_USER", "no-such-user-prefork", "user"),
        ("FX_GROUP", "no-such-group-prefork", "group"),
    ] {
        let mut fx = fleet(backend, mode, &[(var, value)]);
        let err = fx.assert_failed_exit();
        assert!(
            err.starts_with(&format!("invalid option {option}: "))
                && err.contains(&format!("{value:?}")),
            "{err}"
        );
        assert!(fx.spawns().is_empty(), "nothing was forked");
    }
}

/// A master that is not root cannot give its workers root: each worker's `setgroups`
/// fails, it exits with `EXIT_FATAL`, and the master stops with `WorkerFatal`.
fn a_worker_that_cannot_drop_privileges_stops_the_master((backend, mode): (Backend, Mode)) {
    system_user("nobody");
    let mut fx = fleet(
        backend,
        mode,
        &[
            ("FX_WORKERS", "2"),
            ("FX_MASTER_USER", "nobody"),
            ("FX_USER", "root"),
        ],
    );
    let err = fx.assert_failed_exit();
    assert!(
        err.contains("reported a fatal start-up failure (exit code 3)"),
        "{err}"
    );
    fx.expect_log("cannot drop its privileges (user root, group root): setgroups: ");
    assert!(fx.ready_lines().is_empty(), "no worker served");
}

// ---- Names ------------------------------------------------------------------------------------

/// Workers are `prefork wK`, the master `prefork master` while it runs and its own name
/// again after; command lines are untouched.
fn processes_are_named_and_the_name_comes_back((backend, mode): (Backend, Mode)) {
    let mut fx = fleet(backend, mode, &[("FX_WORKERS", "3")]);
    let pids = fx.ready();
    let before = fx.wait_field("comm before");
    assert_eq!(comm_of(fx.pid), "prefork master");
    for (slot, &pid) in pids.iter().enumerate() {
        assert_eq!(comm_of(pid), format!("prefork w{slot}"), "worker {pid}");
        let cmdline = procfs::cmdline(pid).unwrap_or_default();
        assert!(
            cmdline.iter().any(|a| a == "fixture-arg"),
            "the command line of {pid} is the program's: {cmdline:?}"
        );
    }
    fx.stop_with(libc::SIGTERM);
    assert_eq!(
        fx.wait_field("comm after"),
        before,
        "the master's name came back"
    );
    assert_ne!(before, "prefork master");
}

/// With `worker_names(false)` nobody is renamed: a forked worker keeps the master's name,
/// an exec-mode worker the name the kernel gives it (that of the program path the master
/// executes, `/proc/self/exe`).
fn names_can_be_turned_off((backend, mode): (Backend, Mode)) {
    let mut fx = fleet(backend, mode, &[("FX_WORKERS", "2"), ("FX_NAMES", "0")]);
    let pids = fx.ready();
    let before = fx.wait_field("comm before");
    assert_eq!(comm_of(fx.pid), before);
    let worker_name = match mode {
        Mode::Fork => before.as_str(),
        Mode::Exec => "exe",
    };
    for &pid in &pids {
        assert_eq!(comm_of(pid), worker_name, "worker {pid}");
    }
    fx.stop_with(libc::SIGTERM);
}

// ---- Fork durations in the status -------------------------------------------------------------

/// Every slot's status gives the master's last fork for it (non-zero) and the longest, which
/// is at least the last; after respawns, the longest is the largest of the slot's forks the
/// status lines showed.
fn status_reports_each_slots_last_and_longest_fork((backend, mode): (Backend, Mode)) {
    let mut fx = fleet(backend, mode, &[("FX_WORKERS", "2")]);
    let mut pids = fx.ready();
    for _ in 0..3 {
        kill(pids[0], libc::SIGKILL);
        pids[0] = fx.wait_recover(pids[0]);
    }
    let last = fx.wait_line("a status of 2 serving with 3 restarts", |l| {
        let st = parse_status(l)?;
        let s0 = st.slots.first()?;
        (st.serving == 2 && s0.restarts == 3 && s0.pid == Some(pids[0])).then_some(st)
    });
    for s in &last.slots {
        let (fork, max) = (
            s.fork_ns.expect("a last fork"),
            s.max_fork_ns.expect("a max"),
        );
        assert!(fork > 0, "slot {}: last fork {fork} ns", s.slot);
        assert!(
            max >= fork,
            "slot {}: max {max} ns < last {fork} ns",
            s.slot
        );
    }
    // The longest of slot 0 is the largest of the four forks its status lines showed.
    let mut shown: Vec<u64> = statuses(&fx.lines())
        .iter()
        .filter_map(|(_, st)| st.slots.first()?.fork_ns)
        .collect();
    assert_eq!(last.slots[0].max_fork_ns, shown.iter().copied().max());
    shown.dedup();
    runner::note(format!(
        "slot 0's forks shown (µs): {:?}",
        shown.iter().map(|ns| ns / 1000).collect::<Vec<_>>()
    ));
    fx.stop_with(libc::SIGTERM);
}

// ---- Signal storm -----------------------------------------------------------------------------

/// 10,000 HUP, TTIN, TTOU and USR1 in bursts of 500. Standard signals coalesce, so the
/// worker count they ask for is the one the master's log says it received: TTIN one more,
/// TTOU one less (never below one). After each burst the master must settle on exactly that
/// count (workers serving, none draining, no zombie); at the end, back at two workers, it
/// holds as many descriptors as at the start, and TERM stops it with exit code 0.
fn signal_storm_leaves_the_master_consistent((backend, mode): (Backend, Mode)) {
    const BURSTS: usize = 20;
    const PER_BURST: usize = 500;
    const MOST: usize = 8;
    let mut fx = fleet(
        backend,
        mode,
        &[("FX_WORKERS", "2"), ("FX_GRACE_MS", "3000")],
    );
    let master = fx.pid;
    fx.ready();
    let port = port(&fx);
    let mut marks = 0;
    let mut expected = settle(&fx, port, &mut marks);
    assert_eq!(expected, 2);
    let fds_at_start = wait_until("the master's descriptors", || {
        procfs::fd_count(master).ok_or("unreadable".to_owned())
    });
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut sent = BTreeMap::<&str, usize>::new();
    for _ in 0..BURSTS {
        // At most enough TTIN to reach MOST workers even if every one of them arrives.
        let mut ttin_left = MOST.saturating_sub(expected);
        for _ in 0..PER_BURST {
            let (name, signal) = match next(10) {
                0 => ("HUP", libc::SIGHUP),
                1..=3 => ("USR1", libc::SIGUSR1),
                4..=6 if ttin_left > 0 => {
                    ttin_left -= 1;
                    ("TTIN", libc::SIGTTIN)
                }
                _ => ("TTOU", libc::SIGTTOU),
            };
            kill(master, signal);
            *sent.entry(name).or_default() += 1;
        }
        expected = settle(&fx, port, &mut marks);
    }
    // Back to two workers, one signal at a time.
    while expected != 2 {
        let signal = if expected > 2 {
            libc::SIGTTOU
        } else {
            libc::SIGTTIN
        };
        kill(master, signal);
        *sent
            .entry(if expected > 2 { "TTOU" } else { "TTIN" })
            .or_default() += 1;
        let before = expected;
        expected = settle(&fx, port, &mut marks);
        assert_ne!(expected, before, "a lone signal is received");
    }
    wait_until(
        "the master's descriptors to return to their count",
        || match procfs::fd_count(master) {
            Some(n) if n == fds_at_start => Ok(()),
            n => Err(format!("{n:?} descriptors, {fds_at_start} at the start")),
        },
    );
    let received = received_signals(&fx.stderr());
    runner::note(format!(
        "sent {} signals ({sent:?}); the master received {}: {:?}",
        sent.values().sum::<usize>(),
        received.len(),
        count_names(&received)
    ));
    fx.stop_with(libc::SIGTERM);
}

/// The TTIN and TTOU (and other) signals the master logged receiving, in order.
fn received_signals(stderr: &[String]) -> Vec<&'static str> {
    const LOGS: [(&str, &str); 4] = [
        ("SIGTTIN: adding a worker", "TTIN"),
        ("SIGTTOU: removing a worker", "TTOU"),
        ("SIGHUP: rolling restart", "HUP"),
        ("SIGUSR1: forwarding", "USR1"),
    ];
    stderr
        .iter()
        .filter_map(|l| LOGS.iter().find(|(needle, _)| l.contains(needle)))
        .map(|&(_, name)| name)
        .collect()
}

fn count_names(names: &[&'static str]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(*n).or_default() += 1;
    }
    m
}

/// The worker count the received TTIN and TTOU ask for, from two workers.
fn asked_for(received: &[&str]) -> usize {
    received.iter().fold(2usize, |n, s| match *s {
        "TTIN" => n + 1,
        "TTOU" => n.saturating_sub(1).max(1),
        _ => n,
    })
}

/// Waits until the master has taken every signal sent and handled them (none pending, and
/// it sleeps in `epoll_wait` again), then until every line it wrote is read (a worker's
/// `mark`, written to the same pipes after them), then until it runs exactly the worker
/// count its received signals ask for: that many slots in service, each with a ready
/// worker, no other child, no zombie. Returns the count.
fn settle(fx: &Fixture, port: u16, marks: &mut usize) -> usize {
    let master = fx.pid;
    let ours = [libc::SIGHUP, libc::SIGUSR1, libc::SIGTTIN, libc::SIGTTOU]
        .iter()
        .map(|&s| procfs::sig_bit(s))
        .fold(0, |a, b| a | b);
    wait_for("the master to take and handle every signal sent", || {
        // Pending first: once none is, a master found waiting has handled them all.
        let taken = procfs::sigset_field(master, "ShdPnd").is_some_and(|p| p & ours == 0);
        let waiting = std::fs::read_to_string(format!("/proc/{master}/wchan"))
            .is_ok_and(|w| w.contains("epoll"));
        taken && waiting
    });
    *marks += 1;
    let mark = format!("mark {marks}");
    ask(port, &mark);
    fx.wait_line(&format!("{mark} on stdout"), |l| (l == mark).then_some(()));
    fx.wait_stderr_line(&format!("{mark} on stderr"), |l| {
        l.ends_with(&mark).then_some(())
    });
    let mut want = 0;
    wait_until(
        "the master to run the worker count its signals ask for",
        || {
            want = asked_for(&received_signals(&fx.stderr()));
            let lines = fx.lines();
            let last = statuses(&lines).pop().map(|(_, s)| s);
            let live = procfs::live_children(master);
            let zombies = procfs::zombie_children(master);
            let ok = last.as_ref().is_some_and(|s| {
                s.in_service == want
                    && s.serving == want
                    && s.slots.iter().filter(|x| x.pid.is_some()).count() == want
            }) && live.len() == want
                && zombies.is_empty();
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "asked for {want}; status {last:?}; children {live:?}; zombies {zombies:?}"
                ))
            }
        },
    );
    want
}
