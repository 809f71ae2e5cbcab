//! What the options for long-running fleets cost: the master's wake-ups while everything is
//! idle, with and without the options that need a timer, and the cost of one
//! `Worker::heartbeat` call beside a plain atomic store.
//!
//! ```sh
//! cargo bench --bench fleet                    # both sections (about 60 s)
//! cargo bench --bench fleet -- --quick         # 2 s windows, fewer calls (about 15 s)
//! cargo bench --bench fleet -- idle            # one section: idle or heartbeat
//! BENCH_IDLE_SECS=30 cargo bench --bench fleet -- idle
//! ```
//!
//! Each measurement forks a master (`Prefork::run` with 4 workers in `idle`, 1 in
//! `heartbeat`) from this single-threaded process, so that `run` blocking does not block the
//! bench; the master dies with the bench (`PR_SET_PDEATHSIG`) if the bench is killed.

#[path = "shared/opts.rs"]
mod opts;
// Only `pct` and `sorted` are used here.
#[allow(dead_code)]
#[path = "shared/stats.rs"]
mod stats;

use std::fs;
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prefork::{Prefork, Worker};

use opts::Opts;

const SECTIONS: &[&str] = &["idle", "heartbeat"];

fn main() {
    let opts = Opts::parse();
    let unknown = opts.unknown(SECTIONS);
    if !unknown.is_empty() {
        eprintln!("unknown section filter(s) {unknown:?}; sections: {SECTIONS:?}");
        std::process::exit(2);
    }
    if threads(std::process::id()) != Some(1) {
        eprintln!("the bench must be single-threaded to fork safely");
        std::process::exit(2);
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "# prefork fleet-operation benchmarks ({} mode; {cpus} CPUs; kernel {})",
        if opts.quick { "quick" } else { "full" },
        kernel.trim()
    );
    if opts.selected("idle") {
        bench_idle(&opts);
    }
    if opts.selected("heartbeat") {
        bench_heartbeat(&opts);
    }
}

/// `Threads:` of `/proc/PID/status`.
fn threads(pid: u32) -> Option<usize> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok())
}

/// Forks a child that runs `master` and exits with its return value; the child dies with
/// the bench. Returns its pid.
fn fork_master(master: impl FnOnce() -> i32) -> u32 {
    // SAFETY: the bench is single-threaded (checked at start), so the child may run any code.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
            let code = master();
            std::process::exit(code)
        }
        pid => pid as u32,
    }
}

/// TERM to the master, then waits for it.
fn stop_master(pid: u32) {
    // SAFETY: kill and waitpid take plain integers and a null status pointer.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
        libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
    }
}

/// The master's live children (`/proc/PID/task/PID/children`).
fn children(pid: u32) -> usize {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| s.split_whitespace().count())
        .unwrap_or(0)
}

/// Voluntary and involuntary context switches of every thread of `pid`.
fn switches(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return total;
    };
    for task in tasks.flatten() {
        let Ok(text) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in text.lines() {
            let value = |prefix: &str| line.strip_prefix(prefix)?.trim().parse::<u64>().ok();
            if let Some(v) = value("voluntary_ctxt_switches:") {
                total.0 += v;
            } else if let Some(v) = value("nonvoluntary_ctxt_switches:") {
                total.1 += v;
            }
        }
    }
    total
}

// ---- idle -------------------------------------------------------------------------------------

/// One idle setup: its label and the options it sets.
type Setup = (&'static str, fn(Prefork) -> Prefork, bool);

/// Four idle workers (blocked until asked to stop) under each setup; the master's context
/// switches over the window are its wake-ups.
fn bench_idle(opts: &Opts) {
    let setups: [Setup; 5] = [
        ("no fleet option", |p| p, false),
        (
            "worker_timeout 1 s, workers never beat",
            |p| p.worker_timeout(Duration::from_secs(1)),
            false,
        ),
        (
            "worker_timeout 1 s, workers beat every 100 ms",
            |p| p.worker_timeout(Duration::from_secs(1)),
            true,
        ),
        (
            "max_worker_lifetime 1 h",
            |p| p.max_worker_lifetime(Duration::from_secs(3600)),
            false,
        ),
        ("max_worker_rss 1 GiB", |p| p.max_worker_rss(1 << 30), false),
    ];
    println!(
        "\n## idle: the master's wake-ups, 4 idle workers, {:?} window\n",
        opts.idle
    );
    println!("| setup | Δ voluntary | Δ involuntary | wake-ups per second |");
    println!("|---|---:|---:|---:|");
    for (label, configure, beat) in setups {
        let master = fork_master(move || {
            let p = configure(Prefork::new().workers(4).worker_names(false));
            match p.run(move |w: Worker| idle_worker(w, beat)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("master: {e}");
                    1
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while children(master) < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Let the start-up settle (readiness reports, first timers).
        std::thread::sleep(Duration::from_millis(300));
        let before = switches(master);
        let start = Instant::now();
        std::thread::sleep(opts.idle);
        let after = switches(master);
        let secs = start.elapsed().as_secs_f64();
        stop_master(master);
        let (vol, invol) = (after.0 - before.0, after.1 - before.1);
        println!(
            "| {label} | {vol} | {invol} | {:.2} |",
            (vol + invol) as f64 / secs
        );
    }
}

/// An idle worker: blocks until asked to stop; with `beat`, a thread calls `heartbeat`
/// every 100 ms meanwhile.
fn idle_worker(worker: Worker, beat: bool) {
    let shutdown = worker.shutdown();
    if beat {
        std::thread::spawn(move || {
            loop {
                worker.heartbeat();
                if shutdown.wait_timeout(Duration::from_millis(100)) {
                    break;
                }
            }
        });
    }
    shutdown.wait();
}

// ---- heartbeat --------------------------------------------------------------------------------

static PLAIN: AtomicU64 = AtomicU64::new(0);

/// Per call, in a worker: `Worker::heartbeat` with a cell (`worker_timeout` set) and
/// without one, a plain `AtomicU64` store, and the two clock readings it could use.
fn bench_heartbeat(opts: &Opts) {
    let calls: u64 = if opts.quick { 5_000_000 } else { 50_000_000 };
    let runs = if opts.quick { 3 } else { 7 };
    println!("\n## heartbeat: ns per call in a worker ({calls} calls, median of {runs} runs)\n");
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("`Worker::heartbeat()`, `worker_timeout` set", Vec::new()),
        (
            "`Worker::heartbeat()`, no `worker_timeout` (does nothing)",
            Vec::new(),
        ),
        ("plain `AtomicU64::store(Relaxed)`", Vec::new()),
        ("`clock_gettime(CLOCK_MONOTONIC_COARSE)`", Vec::new()),
        ("`clock_gettime(CLOCK_MONOTONIC)`", Vec::new()),
    ];
    for _ in 0..runs {
        for with_timeout in [true, false] {
            let figures = measure_in_worker(calls, with_timeout);
            if with_timeout {
                rows[0].1.push(figures[0]);
                rows[2].1.push(figures[1]);
                rows[3].1.push(figures[2]);
                rows[4].1.push(figures[3]);
            } else {
                rows[1].1.push(figures[0]);
            }
        }
    }
    println!("| operation | ns per call (median) | min | max |");
    println!("|---|---:|---:|---:|");
    for (label, v) in rows {
        let v = stats::sorted(v);
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} |",
            stats::pct(&v, 50.0),
            v.first().copied().unwrap_or(f64::NAN),
            v.last().copied().unwrap_or(f64::NAN)
        );
    }
}

/// Runs the loops in the one worker of a fresh master and returns ns per call: heartbeat,
/// plain store, coarse clock, monotonic clock.
fn measure_in_worker(calls: u64, with_timeout: bool) -> [f64; 4] {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: pipe(2) just returned these two descriptors, owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let write_fd = write.as_raw_fd();
    let master = fork_master(move || {
        let mut p = Prefork::new().workers(1).worker_names(false);
        if with_timeout {
            p = p.worker_timeout(Duration::from_secs(3600));
        }
        let r = p.run(move |w: Worker| {
            let shutdown = w.shutdown();
            let per_call = |f: &mut dyn FnMut(u64)| {
                let t = Instant::now();
                for i in 0..calls {
                    f(std::hint::black_box(i));
                }
                t.elapsed().as_nanos() as f64 / calls as f64
            };
            let beat = per_call(&mut |_| w.heartbeat());
            let plain = per_call(&mut |i| PLAIN.store(i, Ordering::Relaxed));
            let coarse = per_call(&mut |_| {
                std::hint::black_box(clock(libc::CLOCK_MONOTONIC_COARSE));
            });
            let mono = per_call(&mut |_| {
                std::hint::black_box(clock(libc::CLOCK_MONOTONIC));
            });
            // SAFETY: the write end of the bench's pipe, inherited through the master.
            let mut out = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(write_fd) });
            let _ = writeln!(out, "{beat} {plain} {coarse} {mono}");
            drop(out);
            shutdown.wait();
        });
        i32::from(r.is_err())
    });
    drop(write);
    // One line: the master holds the write end until it exits, so there is no end-of-file.
    let mut text = String::new();
    let _ = std::io::BufReader::new(std::fs::File::from(read)).read_line(&mut text);
    stop_master(master);
    let v: Vec<f64> = text
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    assert_eq!(v.len(), 4, "the worker's figures: {text:?}");
    [v[0], v[1], v[2], v[3]]
}

fn clock(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec owned by this frame.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
