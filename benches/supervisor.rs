//! Supervisor benchmarks: `prefork` against a raw fork/pidfd floor measured in the same run.
//!
//! ```text
//! cargo bench --bench supervisor                      # every section
//! cargo bench --bench supervisor -- --quick           # fewer repetitions, 2 s idle window
//! cargo bench --bench supervisor -- spawn idle        # only these sections
//! ```
//!
//! Sections: `spawn` (run() to every worker inside serve), `respawn` (SIGKILL a worker to its
//! replacement inside serve), `death` (SIGKILL the master to the worker noticing), `idle`
//! (context switches of an idle master and idle workers). `BENCH_QUICK=1` is `--quick`;
//! `BENCH_IDLE_SECS` sets the idle window; `BENCH_WORKER_NAMES=0` runs the prefork masters
//! with `worker_names(false)` (the library names every worker `prefork wK` by default);
//! `BENCH_SPAWN_WORKERS=1,2` and `BENCH_SPAWN_SAMPLES=200` choose the spawn section's worker
//! counts and its samples per count. See `docs/benchmarks.md`.
//!
//! `refused` runs only when named (`cargo bench --bench supervisor -- refused`): the prefork
//! master's respawn latency (as `respawn`) and stop latency (TERM to the master -> the master
//! exited, every worker reaped; `BENCH_REFUSED_WORKERS`, 4) on the pidfd path, and with
//! `pidfd_send_signal` refused (`EPERM`) by a seccomp filter installed in the master before
//! `run`, so that it signals through the `kill(2)` fallback; `BENCH_REFUSED_SAMPLES` (40 stops
//! and 100 kills each; a quarter with `--quick`).
//!
//! `bigmem` runs only when named (`cargo bench --bench supervisor -- bigmem`): spawn and
//! respawn with 0, 1 and 4 GiB written before the fork (`BENCH_BIGMEM_GIB=0,1,4`), with and
//! without `MADV_HUGEPAGE`, beside the floor; `BENCH_BIGMEM_WORKERS` (1),
//! `BENCH_BIGMEM_SPAWNS` (10) and `BENCH_BIGMEM_KILLS` (20) size it.
//!
//! Every measured process is a descendant of this one: for each sample the bench forks a
//! "master" process that calls `Prefork::run` (or runs the bare floor loop), and the workers
//! report to the bench over an inherited pipe with 16-byte records carrying a
//! `CLOCK_MONOTONIC` timestamp taken in the reporting process. Writes of 16 bytes to a pipe
//! are atomic, and `CLOCK_MONOTONIC` is one clock for every process of the machine, so the
//! timestamps compare directly. A prefork worker reports its readiness to its master (the
//! library's own pipe) before `serve` starts, so READY, sent from `serve`, comes after it.
//! Every wait has a timeout; every master has `PR_SET_PDEATHSIG` tied to the bench, and the
//! bench is a child subreaper, so nothing outlives it.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use prefork::Prefork;

#[path = "shared/opts.rs"]
mod opts;
#[path = "shared/procs.rs"]
mod procs;
#[path = "shared/stats.rs"]
mod stats;
// The tests' seccomp filters (the `refused` section uses `deny`).
#[allow(dead_code)]
#[path = "../tests/support/seccomp.rs"]
mod seccomp;
use opts::Opts;
use stats::{now_ns, pct, sorted, verdict};

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

const SECTIONS: &[&str] = &["spawn", "respawn", "death", "idle"];

// ---------------------------------------------------------------------------------------------
// System helpers
// ---------------------------------------------------------------------------------------------

/// A positive count from the environment variable `name`, if set.
fn env_usize(name: &str) -> Option<usize> {
    let v = std::env::var(name).ok()?;
    match v.parse() {
        Ok(n) if n > 0 => Some(n),
        _ => {
            eprintln!("{name}={v:?} is not a positive count; ignored");
            None
        }
    }
}

fn getpid() -> u32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() as u32 }
}

fn getppid() -> u32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() as u32 }
}

fn last_error(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// `_exit`: leaves a forked child without running the bench's destructors or flushing its
/// buffers a second time.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

fn set_pdeathsig(signal: i32) {
    // SAFETY: PR_SET_PDEATHSIG takes the signal number as an unsigned long.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) };
}

fn set_child_subreaper() -> Result<(), String> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes a flag as an unsigned long.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(last_error("PR_SET_CHILD_SUBREAPER"))
    }
}

/// A pipe: `(read end, write end)`.
fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a writable array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_error("pipe2"));
    }
    // SAFETY: pipe2 just returned these two descriptors; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn close_raw(fd: RawFd) {
    // SAFETY: used only in forked children, on a descriptor whose owning value lives in a
    // stack frame the child never returns to.
    unsafe { libc::close(fd) };
}

/// In a freshly forked master: closes every descriptor from 3 up except `keep`, so that no
/// process holds another sample's pipes.
fn close_other_fds(keep: RawFd) {
    let close_range = |first: u32, last: u32| {
        // SAFETY: close_range takes plain integers; the descriptors it closes belong to
        // values in stack frames this child never returns to.
        unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) }
    };
    let keep = keep as u32;
    let ok = (keep <= 3 || close_range(3, keep - 1) == 0) && close_range(keep + 1, u32::MAX) == 0;
    if !ok {
        for fd in 3..4096 {
            if fd != keep as RawFd {
                close_raw(fd);
            }
        }
    }
}

fn pidfd_open(pid: u32) -> Result<OwnedFd, String> {
    // SAFETY: pidfd_open takes a pid and a flags word by value.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(last_error(&format!("pidfd_open({pid})")));
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pidfd_send_signal(pidfd: RawFd, signal: i32) -> bool {
    // SAFETY: `pidfd` is an open pidfd for the duration of the call; a null siginfo asks the
    // kernel to fill it in as kill(2) would.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    r == 0
}

fn kill(pid: u32, signal: i32) -> bool {
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
}

/// `waitpid(pid, WNOHANG)`: `Some(true)` reaped, `Some(false)` still running, `None` not our
/// child (`ECHILD`).
fn try_reap(pid: libc::pid_t) -> Option<bool> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a writable int; waitpid only reaps the given child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r > 0 {
            return Some(true);
        }
        if r == 0 {
            return Some(false);
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// Blocking reap, for children that were just sent SIGKILL.
fn reap_blocking(pid: libc::pid_t) {
    // SAFETY: waitpid with a null status pointer only reaps the given child.
    while unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) } == -1 {
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
}

/// Waits until `fd` is readable or hung up; `Ok(false)` on timeout. `None` waits forever.
fn poll_in(fd: RawFd, timeout: Option<Duration>) -> Result<bool, String> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
            }
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd owned by this frame.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return Ok(true);
        }
        if n == 0 {
            return Ok(false);
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Err(last_error("poll"));
        }
    }
}

/// Sleeps in the kernel (one voluntary context switch per call, as a polling loop makes).
fn sleep(d: Duration) {
    std::thread::sleep(d);
}

/// Never returns; blocks in `pause()` until a signal kills the process.
fn block_forever() {
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

/// Forks; the child runs `child` and `_exit`s with its result (101 if it panics), so it never
/// returns into the bench.
fn fork_process(child: impl FnOnce() -> i32) -> Result<u32, String> {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    // SAFETY: the bench is single-threaded (checked in `main`) and so is every process it
    // forks that forks again, so no lock is held by a thread missing from the child; the
    // child leaves through `_exit` and never returns into the caller's frames.
    match unsafe { libc::fork() } {
        -1 => Err(last_error("fork")),
        0 => {
            let code = catch_unwind(AssertUnwindSafe(child)).unwrap_or(101);
            exit_now(code)
        }
        pid => Ok(pid as u32),
    }
}

/// A blocked-signal `signalfd` for TERM and INT (the floor master's stop request).
fn term_signalfd() -> Result<OwnedFd, String> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset and the rest take that initialised
    // set; signalfd returns a new descriptor or -1.
    let fd = unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::sigprocmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
        libc::signalfd(-1, set.as_ptr(), libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if fd < 0 {
        return Err(last_error("signalfd"));
    }
    // SAFETY: signalfd just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_alarm(secs: u32) {
    // SAFETY: alarm takes a number of seconds.
    unsafe { libc::alarm(secs) };
}

// ---------------------------------------------------------------------------------------------
// Reports from the measured processes
// ---------------------------------------------------------------------------------------------

/// A master is about to call `run()` (or start its floor loop).
const START: u32 = 1;
/// A worker has entered `serve`.
const READY: u32 = 2;
/// A worker noticed the master's death (callback or floor pipe watcher).
const DEATH: u32 = 3;

#[derive(Debug, Clone, Copy)]
struct Record {
    kind: u32,
    pid: u32,
    ts: u64,
}

/// Writes one 16-byte record (atomic: below `PIPE_BUF`). Uses `write(2)` directly so it is
/// as cheap in a forked child as anywhere.
fn send(fd: RawFd, kind: u32, pid: u32, ts: u64) {
    let mut buf = [0u8; 16];
    buf[..4].copy_from_slice(&kind.to_ne_bytes());
    buf[4..8].copy_from_slice(&pid.to_ne_bytes());
    buf[8..].copy_from_slice(&ts.to_ne_bytes());
    // SAFETY: `buf` is 16 readable bytes; a bad descriptor only yields EBADF.
    let _ = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
}

/// The bench's read end of a report pipe.
struct Chan {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Chan {
    fn new(fd: OwnedFd) -> Chan {
        Chan {
            fd,
            buf: Vec::new(),
        }
    }

    fn recv(&mut self, timeout: Duration) -> Result<Record, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 16 {
                let b: Vec<u8> = self.buf.drain(..16).collect();
                return Ok(Record {
                    kind: u32::from_ne_bytes(b[..4].try_into().expect("4 bytes")),
                    pid: u32::from_ne_bytes(b[4..8].try_into().expect("4 bytes")),
                    ts: u64::from_ne_bytes(b[8..].try_into().expect("8 bytes")),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !poll_in(self.fd.as_raw_fd(), Some(left))? {
                return Err(format!("no report within {timeout:?}"));
            }
            let mut chunk = [0u8; 4096];
            // SAFETY: `chunk` is writable memory of the given length.
            let n =
                unsafe { libc::read(self.fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
            match n {
                0 => return Err("report pipe closed: every reporting process exited".into()),
                n if n < 0 => {
                    if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                        return Err(last_error("read"));
                    }
                }
                n => self.buf.extend_from_slice(&chunk[..n as usize]),
            }
        }
    }

    fn expect(&mut self, kind: u32, timeout: Duration) -> Result<Record, String> {
        let r = self.recv(timeout)?;
        if r.kind != kind {
            return Err(format!("expected report {kind}, got {r:?}"));
        }
        Ok(r)
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A child of the bench, held through a pidfd; killed and reaped on drop if still there.
struct Proc {
    pid: u32,
    pidfd: OwnedFd,
    reaped: bool,
}

impl Proc {
    fn new(pid: u32) -> Result<Proc, String> {
        match pidfd_open(pid) {
            Ok(pidfd) => Ok(Proc {
                pid,
                pidfd,
                reaped: false,
            }),
            Err(e) => {
                kill(pid, libc::SIGKILL);
                reap_blocking(pid as libc::pid_t);
                Err(e)
            }
        }
    }

    fn signal(&self, signal: i32) {
        pidfd_send_signal(self.pidfd.as_raw_fd(), signal);
    }

    fn wait_exit(&self, timeout: Duration) -> bool {
        poll_in(self.pidfd.as_raw_fd(), Some(timeout)).unwrap_or(false)
    }

    /// Reaps after an observed exit (retrying briefly: the pidfd turns readable when the
    /// process is a zombie, which is what waitpid needs).
    fn reap(&mut self) {
        for _ in 0..1000 {
            match try_reap(self.pid as libc::pid_t) {
                Some(true) | None => {
                    self.reaped = true;
                    return;
                }
                Some(false) => sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Sends `signal`, waits up to `timeout` for the exit, escalates to KILL, reaps.
    fn stop(&mut self, signal: i32, timeout: Duration) -> Result<(), String> {
        self.signal(signal);
        let mut result = Ok(());
        if !self.wait_exit(timeout) {
            result = Err(format!(
                "process {} did not exit within {timeout:?} of signal {signal}; killed",
                self.pid
            ));
            self.signal(libc::SIGKILL);
            self.wait_exit(Duration::from_secs(5));
        }
        self.reap();
        result
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            self.signal(libc::SIGKILL);
            self.wait_exit(Duration::from_secs(5));
            self.reap();
        }
    }
}

/// Forks a master process: it dies with the bench (PDEATHSIG), keeps only `report` among the
/// bench's descriptors, and runs `body`.
fn spawn_master(report: RawFd, body: impl FnOnce() -> i32) -> Result<Proc, String> {
    let bench = getpid();
    let pid = fork_process(move || {
        set_pdeathsig(libc::SIGKILL);
        if getppid() != bench {
            return 1;
        }
        close_other_fds(report);
        body()
    })?;
    Proc::new(pid)
}

/// Reaps a process this bench adopted as subreaper (a worker whose master died), once its
/// pidfd says it exited; kills it if it did not.
fn reap_adopted(pid: u32, pidfd: &OwnedFd) {
    if !poll_in(pidfd.as_raw_fd(), Some(Duration::from_secs(5))).unwrap_or(false) {
        eprintln!("  worker {pid} outlived its master by 5 s; killing it");
        pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL);
        let _ = poll_in(pidfd.as_raw_fd(), Some(Duration::from_secs(5)));
    }
    // Reparenting to us may trail the exit by a moment.
    for _ in 0..1000 {
        match try_reap(pid as libc::pid_t) {
            Some(false) => sleep(Duration::from_millis(1)),
            _ => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The two masters under test
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Imp {
    Prefork,
    Floor,
}

impl Imp {
    fn name(self) -> &'static str {
        match self {
            Imp::Prefork => "prefork",
            Imp::Floor => "floor",
        }
    }
}

/// How the prefork master's workers learn of its death.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DeathMode {
    /// Default: `PR_SET_PDEATHSIG` = SIGKILL.
    Pdeathsig,
    /// `on_master_death`: the callback reports a DEATH record.
    Callback,
}

/// Whether prefork workers name themselves (`BENCH_WORKER_NAMES`, default: the library's
/// default, on).
fn worker_names() -> bool {
    std::env::var("BENCH_WORKER_NAMES").map_or(true, |v| v != "0")
}

/// Body of a prefork master: reports START, then `Prefork::run` with `n` workers whose
/// `serve` reports READY and blocks.
fn prefork_master(n: usize, report: RawFd, death: DeathMode) -> i32 {
    let mut pf = Prefork::new()
        .workers(n)
        .shutdown_grace(Duration::from_secs(2))
        // The respawn bench kills hundreds of workers, 2 ms after each one's READY. A worker
        // killed from outside after it reported ready is not counted by the crash-loop
        // guard; one whose readiness the master had not read yet would be, so the guard is
        // kept out of the way. With the default `recover_interval` of zero nothing waits.
        .recover_threshold(usize::MAX)
        .worker_names(worker_names());
    if death == DeathMode::Callback {
        pf = pf.on_master_death(move || {
            let ts = now_ns();
            send(report, DEATH, getpid(), ts);
        });
    }
    send(report, START, getpid(), now_ns());
    let result = pf.run(move |worker| {
        let ts = now_ns();
        send(report, READY, worker.pid(), ts);
        block_forever();
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("prefork master {}: {e}", getpid());
            1
        }
    }
}

/// What a floor worker does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FloorChild {
    /// `prctl(PR_SET_PDEATHSIG, SIGKILL)` + `getppid` check, report READY, `pause()`.
    Bare,
    /// Report READY, block in `poll` on a pipe only the master writes, report DEATH at EOF.
    DeathPipe,
    /// fasthttp-style: report READY, then every 500 ms check `getppid()`.
    Poll500,
}

/// Body of a floor master: a bare loop of `fork` + `pidfd_open`, then `poll` over a TERM/INT
/// signalfd and the pidfds; with `respawn`, a worker that exits is reaped and re-forked.
fn floor_master(n: usize, report: RawFd, child: FloorChild, respawn: bool) -> i32 {
    send(report, START, getpid(), now_ns());
    let sfd = match term_signalfd() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("floor master: {e}");
            return 1;
        }
    };
    let death = if child == FloorChild::DeathPipe {
        match pipe() {
            Ok((r, w)) => Some((r.as_raw_fd(), w.as_raw_fd(), r, w)),
            Err(e) => {
                eprintln!("floor master: {e}");
                return 1;
            }
        }
    } else {
        None
    };
    let death_fds = death.as_ref().map(|d| (d.0, d.1));
    let master = getpid();
    let spawn = || -> Result<(u32, OwnedFd), String> {
        let pid = fork_process(|| floor_child(report, child, master, death_fds))?;
        Ok((pid, pidfd_open(pid)?))
    };
    let mut kids = Vec::with_capacity(n);
    for _ in 0..n {
        match spawn() {
            Ok(k) => kids.push(k),
            Err(e) => {
                eprintln!("floor master: {e}");
                break;
            }
        }
    }
    let mut pfds = Vec::with_capacity(n + 1);
    'outer: loop {
        pfds.clear();
        pfds.push(libc::pollfd {
            fd: sfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        pfds.extend(kids.iter().map(|(_, fd)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: `pfds` is a writable array of `pfds.len()` pollfds.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if pfds[0].revents != 0 {
            break;
        }
        for i in (0..kids.len()).rev() {
            if pfds[i + 1].revents == 0 {
                continue;
            }
            let (pid, _) = kids.swap_remove(i);
            reap_blocking(pid as libc::pid_t);
            if respawn {
                match spawn() {
                    Ok(k) => kids.push(k),
                    Err(e) => {
                        eprintln!("floor master: {e}");
                        break 'outer;
                    }
                }
            }
        }
    }
    for (_, fd) in &kids {
        pidfd_send_signal(fd.as_raw_fd(), libc::SIGKILL);
    }
    for (pid, _) in &kids {
        reap_blocking(*pid as libc::pid_t);
    }
    0
}

fn floor_child(
    report: RawFd,
    child: FloorChild,
    master: u32,
    death: Option<(RawFd, RawFd)>,
) -> i32 {
    match child {
        FloorChild::Bare => {
            set_pdeathsig(libc::SIGKILL);
            if getppid() != master {
                return 1;
            }
            send(report, READY, getpid(), now_ns());
            block_forever();
            0
        }
        FloorChild::DeathPipe => {
            let Some((rd, wr)) = death else { return 1 };
            close_raw(wr);
            send(report, READY, getpid(), now_ns());
            let _ = poll_in(rd, None);
            send(report, DEATH, getpid(), now_ns());
            0
        }
        FloorChild::Poll500 => {
            send(report, READY, getpid(), now_ns());
            loop {
                sleep(Duration::from_millis(500));
                if getppid() != master {
                    return 0;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics and printing
// ---------------------------------------------------------------------------------------------

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

// ---------------------------------------------------------------------------------------------
// 1. spawn-to-ready
// ---------------------------------------------------------------------------------------------

const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// One sample: fork a master, time from its START (just before `run()`) to the last READY.
fn spawn_sample(imp: Imp, n: usize) -> Result<f64, String> {
    let (rd, wr) = pipe()?;
    let report = wr.as_raw_fd();
    let mut master = spawn_master(report, move || match imp {
        Imp::Prefork => prefork_master(n, report, DeathMode::Pdeathsig),
        Imp::Floor => floor_master(n, report, FloorChild::Bare, false),
    })?;
    drop(wr);
    let mut chan = Chan::new(rd);
    let measured = (|| {
        let start = chan.expect(START, REPORT_TIMEOUT)?;
        let mut last = start.ts;
        for _ in 0..n {
            last = last.max(chan.expect(READY, REPORT_TIMEOUT)?.ts);
        }
        Ok::<_, String>(us(last - start.ts))
    })();
    let stopped = master.stop(libc::SIGTERM, STOP_TIMEOUT);
    let d = measured?;
    stopped?;
    Ok(d)
}

fn bench_spawn(o: &Opts) {
    let reps = env_usize("BENCH_SPAWN_SAMPLES").unwrap_or(if o.quick { 8 } else { 40 });
    println!(
        "\n## spawn-to-ready: run() called -> every worker inside serve ({reps} samples each, interleaved)\n"
    );
    println!(
        "| workers | prefork p50 µs | prefork p90 µs | floor p50 µs | floor p90 µs | ratio p50 | ratio p90 | ratio min | Δ p50 µs |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut worst: f64 = 0.0;
    // p50 of (prefork, floor) at the smallest and the largest n, for the per-worker cost.
    let mut ends: Vec<(usize, f64, f64)> = Vec::new();
    let counts: Vec<usize> = match std::env::var("BENCH_SPAWN_WORKERS") {
        Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) => vec![1, 2, 8, 32, 64],
    };
    for n in counts {
        let mut samples = [Vec::new(), Vec::new()];
        let mut errors = 0;
        // One warm-up sample each (page cache, allocator, scheduler), not recorded.
        let _ = spawn_sample(Imp::Prefork, n);
        let _ = spawn_sample(Imp::Floor, n);
        for rep in 0..reps {
            let order = if rep % 2 == 0 {
                [Imp::Prefork, Imp::Floor]
            } else {
                [Imp::Floor, Imp::Prefork]
            };
            for imp in order {
                match spawn_sample(imp, n) {
                    Ok(d) => samples[imp as usize].push(d),
                    Err(e) => {
                        errors += 1;
                        eprintln!("  spawn {} n={n}: {e}", imp.name());
                    }
                }
            }
        }
        let [p, f] = samples.map(sorted);
        let (r50, r90) = (pct(&p, 50.0) / pct(&f, 50.0), pct(&p, 90.0) / pct(&f, 90.0));
        worst = worst.max(r50);
        ends.push((n, pct(&p, 50.0), pct(&f, 50.0)));
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} | {:.0} | {r50:.2} | {r90:.2} | {:.2} | {:.0} |{}",
            pct(&p, 50.0),
            pct(&p, 90.0),
            pct(&f, 50.0),
            pct(&f, 90.0),
            pct(&p, 0.0) / pct(&f, 0.0),
            pct(&p, 50.0) - pct(&f, 50.0),
            if errors > 0 {
                format!(" {errors} failed samples")
            } else {
                String::new()
            }
        );
    }
    if let (Some(&(n0, p0, f0)), Some(&(n1, p1, f1))) = (ends.first(), ends.last()) {
        if n1 > n0 {
            let (dp, df) = ((p1 - p0) / (n1 - n0) as f64, (f1 - f0) / (n1 - n0) as f64);
            println!(
                "\nper additional worker (p50, n = {n0} to {n1}): prefork {dp:.0} µs, floor {df:.0} µs ({:.2}x); fixed cost at n = {n0}: prefork {p0:.0} µs, floor {f0:.0} µs",
                dp / df
            );
        }
    }
    println!(
        "\ntarget: prefork within 1.5x of the floor (median): worst ratio {worst:.2} -> {}",
        verdict(worst <= 1.5)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. respawn latency
// ---------------------------------------------------------------------------------------------

/// One master with one worker; `kills` times: SIGKILL the worker, time to its replacement's
/// READY.
fn respawn_run(imp: Imp, kills: usize) -> Result<Vec<f64>, String> {
    let (rd, wr) = pipe()?;
    let report = wr.as_raw_fd();
    let mut master = spawn_master(report, move || match imp {
        Imp::Prefork => prefork_master(1, report, DeathMode::Pdeathsig),
        Imp::Floor => floor_master(1, report, FloorChild::Bare, true),
    })?;
    drop(wr);
    let mut chan = Chan::new(rd);
    let mut out = Vec::with_capacity(kills);
    let measured = (|| {
        chan.expect(START, REPORT_TIMEOUT)?;
        let mut pid = chan.expect(READY, REPORT_TIMEOUT)?.pid;
        for _ in 0..kills {
            // Let the master get back to sleep: measure an idle master's reaction.
            sleep(Duration::from_millis(2));
            let t0 = now_ns();
            if !kill(pid, libc::SIGKILL) {
                return Err(last_error(&format!("kill({pid})")));
            }
            let r = chan.expect(READY, REPORT_TIMEOUT)?;
            if r.pid == pid {
                return Err(format!("worker {pid} reported ready twice"));
            }
            out.push(us(r.ts.saturating_sub(t0)));
            pid = r.pid;
        }
        Ok::<_, String>(())
    })();
    let stopped = master.stop(libc::SIGTERM, STOP_TIMEOUT);
    measured?;
    stopped?;
    Ok(out)
}

fn bench_respawn(o: &Opts) {
    let (blocks, per_block) = if o.quick { (2, 25) } else { (4, 50) };
    let total = blocks * per_block;
    println!(
        "\n## respawn latency: SIGKILL a worker -> replacement inside serve ({total} kills each, in {blocks} alternating blocks)\n"
    );
    let mut samples = [Vec::new(), Vec::new()];
    for block in 0..blocks {
        let order = if block % 2 == 0 {
            [Imp::Prefork, Imp::Floor]
        } else {
            [Imp::Floor, Imp::Prefork]
        };
        for imp in order {
            match respawn_run(imp, per_block) {
                Ok(v) => samples[imp as usize].extend(v),
                Err(e) => eprintln!("  respawn {}: {e}", imp.name()),
            }
        }
    }
    let [p, f] = samples.map(sorted);
    println!("| master | kills | p50 µs | p90 µs | p99 µs | max µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, s) in [("prefork", &p), ("floor", &f)] {
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            s.len(),
            pct(s, 50.0),
            pct(s, 90.0),
            pct(s, 99.0),
            pct(s, 100.0)
        );
    }
    let (r50, r99) = (pct(&p, 50.0) / pct(&f, 50.0), pct(&p, 99.0) / pct(&f, 99.0));
    println!(
        "| ratio | | {r50:.2} | {:.2} | {r99:.2} | |",
        pct(&p, 90.0) / pct(&f, 90.0)
    );
    if pct(&p, 50.0) > 20_000.0 {
        println!(
            "\nprefork's median respawn is over 20 ms: the replacement waited (a respawn delay or the crash-loop guard), which this bench assumes it does not"
        );
    }
    println!(
        "\ntarget: prefork within 1.5x of the floor (p50): {r50:.2} -> {}",
        verdict(r50 <= 1.5)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. master-death notice
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum DeathVariant {
    PreforkPdeathsig,
    PreforkCallback,
    FloorPdeathsig,
    FloorPipe,
}

impl DeathVariant {
    const ALL: [DeathVariant; 4] = [
        DeathVariant::PreforkPdeathsig,
        DeathVariant::PreforkCallback,
        DeathVariant::FloorPdeathsig,
        DeathVariant::FloorPipe,
    ];

    fn name(self) -> &'static str {
        match self {
            DeathVariant::PreforkPdeathsig => "prefork, default (PDEATHSIG): worker gone",
            DeathVariant::PreforkCallback => "prefork, on_master_death: callback entered",
            DeathVariant::FloorPdeathsig => "floor, bare PDEATHSIG child: child gone",
            DeathVariant::FloorPipe => "floor, child polling a pipe: EOF seen",
        }
    }

    /// Whether the worker reports a DEATH record (otherwise the bench watches its pidfd).
    fn reports(self) -> bool {
        matches!(
            self,
            DeathVariant::PreforkCallback | DeathVariant::FloorPipe
        )
    }
}

/// One trial: master with one worker; SIGKILL the master; time until the worker noticed.
fn death_trial(v: DeathVariant) -> Result<f64, String> {
    let (rd, wr) = pipe()?;
    let report = wr.as_raw_fd();
    let mut master = spawn_master(report, move || match v {
        DeathVariant::PreforkPdeathsig => prefork_master(1, report, DeathMode::Pdeathsig),
        DeathVariant::PreforkCallback => prefork_master(1, report, DeathMode::Callback),
        DeathVariant::FloorPdeathsig => floor_master(1, report, FloorChild::Bare, false),
        DeathVariant::FloorPipe => floor_master(1, report, FloorChild::DeathPipe, false),
    })?;
    drop(wr);
    let mut chan = Chan::new(rd);
    chan.expect(START, REPORT_TIMEOUT)?;
    let worker = chan.expect(READY, REPORT_TIMEOUT)?.pid;
    // The worker is alive (it just reported) and unreaped, so its pid is not reused.
    let worker_fd = pidfd_open(worker)?;
    // Let the master and the worker (and its watcher thread) settle.
    sleep(Duration::from_millis(5));
    let t0 = now_ns();
    master.signal(libc::SIGKILL);
    let measured = if v.reports() {
        chan.expect(DEATH, Duration::from_secs(5))
            .map(|r| us(r.ts.saturating_sub(t0)))
    } else {
        match poll_in(worker_fd.as_raw_fd(), Some(Duration::from_secs(5))) {
            Ok(true) => Ok(us(now_ns() - t0)),
            Ok(false) => Err(format!(
                "worker {worker} alive 5 s after its master's death"
            )),
            Err(e) => Err(e),
        }
    };
    master.wait_exit(STOP_TIMEOUT);
    master.reap();
    reap_adopted(worker, &worker_fd);
    measured
}

fn bench_death(o: &Opts) {
    let trials = if o.quick { 15 } else { 50 };
    println!(
        "\n## master-death notice: SIGKILL the master -> the worker noticed ({trials} trials each, interleaved)\n"
    );
    let mut samples: [Vec<f64>; 4] = Default::default();
    for _ in 0..trials {
        for (i, v) in DeathVariant::ALL.into_iter().enumerate() {
            match death_trial(v) {
                Ok(d) => samples[i].push(d),
                Err(e) => eprintln!("  death {}: {e}", v.name()),
            }
        }
    }
    println!("| variant | trials | p50 µs | p90 µs | max µs |");
    println!("|---|---:|---:|---:|---:|");
    let samples = samples.map(sorted);
    for (v, s) in DeathVariant::ALL.into_iter().zip(&samples) {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} |",
            v.name(),
            s.len(),
            pct(s, 50.0),
            pct(s, 90.0),
            pct(s, 100.0)
        );
    }
    let worst = pct(&samples[0], 50.0).max(pct(&samples[1], 50.0));
    println!(
        "\ntarget: noticed in under 1 ms (median, both prefork variants): worst {worst:.0} µs -> {}",
        verdict(worst < 1000.0)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. idle wake-ups
// ---------------------------------------------------------------------------------------------

/// Voluntary and involuntary context switches summed over every thread of `pid`
/// (`/proc/PID/status` alone counts only the main thread), and the thread count.
fn ctxt(pid: u32) -> Option<(u64, u64, usize)> {
    let mut vol = 0;
    let mut invol = 0;
    let mut threads = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        threads += 1;
        for line in status.lines() {
            let field = |name: &str| {
                line.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            if let Some(v) = field("voluntary_ctxt_switches:") {
                vol += v;
            } else if let Some(v) = field("nonvoluntary_ctxt_switches:") {
                invol += v;
            }
        }
    }
    Some((vol, invol, threads))
}

/// A master process's body: `(workers, report fd) -> exit code`.
type MasterBody = fn(usize, RawFd) -> i32;

struct IdleSetup {
    name: &'static str,
    master: Proc,
    workers: Vec<u32>,
    _chan: Chan,
}

fn start_idle(name: &'static str, workers: usize, body: MasterBody) -> Result<IdleSetup, String> {
    let (rd, wr) = pipe()?;
    let report = wr.as_raw_fd();
    let master = spawn_master(report, move || body(workers, report))?;
    drop(wr);
    let mut chan = Chan::new(rd);
    chan.expect(START, REPORT_TIMEOUT)?;
    let mut pids = Vec::new();
    for _ in 0..workers {
        pids.push(chan.expect(READY, REPORT_TIMEOUT)?.pid);
    }
    Ok(IdleSetup {
        name,
        master,
        workers: pids,
        _chan: chan,
    })
}

fn bench_idle(o: &Opts) {
    const WORKERS: usize = 4;
    let window = o.idle;
    println!(
        "\n## idle wake-ups: context switches over {:.1} s, master + {WORKERS} idle workers (serve blocks in pause())\n",
        window.as_secs_f64()
    );
    let setups: [(&'static str, MasterBody); 4] = [
        ("prefork, default (PDEATHSIG)", |n, fd| {
            prefork_master(n, fd, DeathMode::Pdeathsig)
        }),
        ("prefork, on_master_death (watcher thread)", |n, fd| {
            prefork_master(n, fd, DeathMode::Callback)
        }),
        ("floor: bare fork + pidfd, poll()", |n, fd| {
            floor_master(n, fd, FloorChild::Bare, false)
        }),
        ("reference: workers poll getppid() every 500 ms", |n, fd| {
            floor_master(n, fd, FloorChild::Poll500, false)
        }),
    ];
    let mut running = Vec::new();
    for (name, body) in setups {
        match start_idle(name, WORKERS, body) {
            Ok(s) => running.push(s),
            Err(e) => eprintln!("  idle {name}: {e}"),
        }
    }
    // Let start-up work (thread starts, the master's last bookkeeping) finish.
    sleep(Duration::from_millis(300));
    let snapshot = |s: &IdleSetup| {
        std::iter::once(s.master.pid)
            .chain(s.workers.iter().copied())
            .map(ctxt)
            .collect::<Vec<_>>()
    };
    let before: Vec<_> = running.iter().map(snapshot).collect();
    sleep(window);
    let after: Vec<_> = running.iter().map(snapshot).collect();
    let per10 = 10.0 / window.as_secs_f64();
    println!(
        "| setup | process | threads | Δ voluntary | Δ involuntary | wake-ups per 10 s, per process |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    let mut prefork_total = 0;
    let mut reference_total = 0;
    for (i, s) in running.iter().enumerate() {
        let mut rows = vec![("master", 0usize..1)];
        rows.push(("workers (sum)", 1..1 + s.workers.len()));
        for (role, range) in rows {
            let mut dv = 0;
            let mut di = 0;
            let mut threads = 0;
            let mut missing = false;
            let procs = range.len().max(1);
            for k in range {
                match (before[i][k], after[i][k]) {
                    (Some((v0, i0, _)), Some((v1, i1, t))) => {
                        dv += v1.saturating_sub(v0);
                        di += i1.saturating_sub(i0);
                        threads += t;
                    }
                    _ => missing = true,
                }
            }
            let total = dv + di;
            if s.name.starts_with("prefork") {
                prefork_total += total;
            } else if s.name.starts_with("reference") {
                reference_total += total;
            }
            println!(
                "| {} | {role} | {threads} | {dv} | {di} | {:.1}{} |",
                s.name,
                total as f64 * per10 / procs as f64,
                if missing { " (process vanished!)" } else { "" }
            );
        }
    }
    for mut s in running {
        if let Err(e) = s.master.stop(libc::SIGTERM, STOP_TIMEOUT) {
            eprintln!("  idle {}: {e}", s.name);
        }
    }
    println!(
        "\ntarget: zero wake-ups in the prefork master and workers: {prefork_total} -> {}; the polling reference shows {reference_total} (expected ≈ {:.0}: the measurement sees wake-ups)",
        verdict(prefork_total == 0),
        WORKERS as f64 * window.as_secs_f64() * 2.0
    );
}

// ---------------------------------------------------------------------------------------------
// refused: the kill(2) fallback beside the pidfd path
// ---------------------------------------------------------------------------------------------

/// How the `refused` section's prefork master signals its workers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Signalling {
    /// `pidfd_send_signal`, the default.
    Pidfd,
    /// `pidfd_send_signal` refused (`EPERM`) by a seccomp filter: the `kill(2)` fallback.
    Kill,
}

impl Signalling {
    fn name(self) -> &'static str {
        match self {
            Signalling::Pidfd => "pidfd_send_signal",
            Signalling::Kill => "kill(2) fallback",
        }
    }
}

/// A prefork master ([`prefork_master`]) signalling as `how` says.
fn signalling_master(n: usize, report: RawFd, how: Signalling) -> i32 {
    if how == Signalling::Kill {
        let refusal = seccomp::Refusal::parse("pidfd_send_signal=EPERM").expect("a known call");
        if let Err(e) = seccomp::deny(&[refusal]) {
            eprintln!("installing the seccomp filter: {e}");
            return 1;
        }
    }
    prefork_master(n, report, DeathMode::Pdeathsig)
}

/// One master with one worker, `kills` times: SIGKILL the worker, time to its replacement's
/// READY (as [`respawn_run`]).
fn refused_respawn_run(how: Signalling, kills: usize) -> Result<Vec<f64>, String> {
    let (rd, wr) = pipe()?;
    let report = wr.as_raw_fd();
    let mut master = spawn_master(report, move || signalling_master(1, report, how))?;
    drop(wr);
    let mut chan = Chan::new(rd);
    let mut out = Vec::with_capacity(kills);
    let measured = (|| {
        chan.expect(START, REPORT_TIMEOUT)?;
        let mut pid = chan.expect(READY, REPORT_TIMEOUT)?.pid;
        for _ in 0..kills {
            sleep(Duration::from_millis(2));
            let t0 = now_ns();
            if !kill(pid, libc::SIGKILL) {
                return Err(last_error(&format!("kill({pid})")));
            }
            let r = chan.expect(READY, REPORT_TIMEOUT)?;
            out.push(us(r.ts.saturating_sub(t0)));
            pid = r.pid;
        }
        Ok::<_, String>(())
    })();
    let stopped = master.stop(libc::SIGTERM, STOP_TIMEOUT);
    measured?;
    stopped?;
    Ok(out)
}

/// One stop: a master with `n` workers inside `serve`; TERM to the master -> the master
/// exited (it returns once every worker is reaped).
fn refused_stop_sample(how: Signalling, n: usize) -> Result<f64, String> {
    let (rd, wr) = pipe()?;
    let report = wr.as_raw_fd();
    let mut master = spawn_master(report, move || signalling_master(n, report, how))?;
    drop(wr);
    let mut chan = Chan::new(rd);
    chan.expect(START, REPORT_TIMEOUT)?;
    for _ in 0..n {
        chan.expect(READY, REPORT_TIMEOUT)?;
    }
    // Past the workers' 100 ms decision window (a TERM within it waits for the window to end:
    // the worker may still ask for the shutdown notice): a worker that did not ask then ends
    // at once, and the stop measures the master's signalling and reaping.
    sleep(Duration::from_millis(150));
    let t0 = now_ns();
    master.signal(libc::SIGTERM);
    if !master.wait_exit(STOP_TIMEOUT) {
        return Err(format!(
            "the master did not exit within {STOP_TIMEOUT:?} of TERM"
        ));
    }
    let took = us(now_ns() - t0);
    master.reap();
    Ok(took)
}

fn bench_refused(o: &Opts) {
    let workers = env_usize("BENCH_REFUSED_WORKERS").unwrap_or(4);
    let stops = env_usize("BENCH_REFUSED_SAMPLES").unwrap_or(if o.quick { 10 } else { 40 });
    let kills = stops * 5 / 2;
    let all = [Signalling::Pidfd, Signalling::Kill];
    println!(
        "\n## pidfd_send_signal refused (seccomp, EPERM): the kill(2) fallback beside the pidfd path ({kills} respawns, {stops} stops of {workers} workers each, interleaved)\n"
    );
    let mut respawns = [Vec::new(), Vec::new()];
    let mut stopped = [Vec::new(), Vec::new()];
    for block in 0..4 {
        let order = if block % 2 == 0 {
            all
        } else {
            [all[1], all[0]]
        };
        for how in order {
            match refused_respawn_run(how, kills / 4) {
                Ok(v) => respawns[how as usize].extend(v),
                Err(e) => eprintln!("  respawn {}: {e}", how.name()),
            }
            for _ in 0..stops / 4 {
                match refused_stop_sample(how, workers) {
                    Ok(d) => stopped[how as usize].push(d),
                    Err(e) => eprintln!("  stop {}: {e}", how.name()),
                }
            }
        }
    }
    println!("| signals through | measure | samples | p50 µs | p90 µs | p99 µs | max µs |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let respawns = respawns.map(sorted);
    let stopped = stopped.map(sorted);
    for (what, samples) in [("respawn", &respawns), ("stop", &stopped)] {
        for how in all {
            let s = &samples[how as usize];
            println!(
                "| {} | {what} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                how.name(),
                s.len(),
                pct(s, 50.0),
                pct(s, 90.0),
                pct(s, 99.0),
                pct(s, 100.0)
            );
        }
    }
    for (what, samples) in [("respawn", &respawns), ("stop", &stopped)] {
        println!(
            "\n{what}: kill(2) fallback / pidfd p50 {:.2}",
            pct(&samples[1], 50.0) / pct(&samples[0], 50.0)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. big programs: spawn and respawn with gigabytes written before the fork (opt-in)
// ---------------------------------------------------------------------------------------------

/// A prefork master's `on_status` hook: the master's own measure of a worker's fork
/// (`SlotStatus::last_fork`), in nanoseconds, the worker's pid in `pid`.
const FORK: u32 = 4;

/// Sections that run only when a filter names them: `bigmem` writes gigabytes.
const OPT_IN_SECTIONS: &[&str] = &["bigmem", "refused"];

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
/// The size of a transparent huge page (a PMD) on x86_64 and aarch64 with 4 KiB pages.
const HUGE: usize = 2 * MIB;

/// Anonymous private memory, written (every 4 KiB page faulted in) before any master forks:
/// the bench maps and writes it, and every master and worker inherits it, so each fork
/// copies its page tables. Aligned to 2 MiB so that `MADV_HUGEPAGE` can back all of it with
/// huge pages. Unmapped on drop.
struct BigMem {
    map: *mut libc::c_void,
    map_len: usize,
}

impl BigMem {
    fn new(len: usize, huge: bool) -> Result<BigMem, String> {
        let map_len = len + HUGE;
        // SAFETY: a new anonymous private mapping; nothing else refers to that range.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(last_error("mmap"));
        }
        let mem = BigMem { map, map_len };
        let start = (map as usize).next_multiple_of(HUGE) as *mut u8;
        if huge {
            // SAFETY: `start..start + len` lies inside the mapping made above.
            if unsafe { libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE) } != 0 {
                return Err(last_error("madvise(MADV_HUGEPAGE)"));
            }
        }
        for off in (0..len).step_by(4096) {
            // SAFETY: inside the mapping, which is readable and writable.
            unsafe { start.add(off).write_volatile(1) };
        }
        Ok(mem)
    }
}

impl Drop for BigMem {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; no reference into it remains.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// A field of `/proc/self/smaps_rollup` or `/proc/meminfo` (`kB`), in bytes.
fn kb_field(path: &str, name: &str) -> Option<usize> {
    fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let v = l.strip_prefix(name)?.strip_prefix(':')?;
        Some(
            v.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()?
                * 1024,
        )
    })
}

/// The mode of a transparent-huge-page setting: the bracketed word of its sysfs file.
fn thp_setting(name: &str) -> String {
    fs::read_to_string(format!("/sys/kernel/mm/transparent_hugepage/{name}"))
        .ok()
        .and_then(|s| Some(s.split_once('[')?.1.split_once(']')?.0.to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

/// Body of a prefork master for the bigmem section: `prefork_master` with the default death
/// notice, plus an `on_status` hook that reports each new worker's fork as the master's
/// `Status` has it (a FORK record).
fn prefork_bigmem_master(n: usize, report: RawFd) -> i32 {
    let mut reported: Vec<u32> = Vec::with_capacity(2 * n);
    let pf = Prefork::new()
        .workers(n)
        .shutdown_grace(Duration::from_secs(2))
        .recover_threshold(usize::MAX)
        .worker_names(worker_names())
        .on_status(move |status| {
            for s in status.slots() {
                if let (Some(pid), Some(took)) = (s.pid, s.last_fork()) {
                    if !reported.contains(&pid) {
                        if reported.len() == reported.capacity() {
                            reported.remove(0);
                        }
                        reported.push(pid);
                        send(report, FORK, pid, took.as_nanos() as u64);
                    }
                }
            }
            Ok(())
        });
    send(report, START, getpid(), now_ns());
    let result = pf.run(move |worker| {
        let ts = now_ns();
        send(report, READY, worker.pid(), ts);
        block_forever();
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("prefork master {}: {e}", getpid());
            1
        }
    }
}

/// The next record of `kind`; FORK records met on the way go to `forks` (µs).
fn expect_noting_forks(chan: &mut Chan, kind: u32, forks: &mut Vec<f64>) -> Result<Record, String> {
    loop {
        let r = chan.recv(REPORT_TIMEOUT)?;
        match r.kind {
            FORK => forks.push(us(r.ts)),
            k if k == kind => return Ok(r),
            _ => return Err(format!("expected report {kind}, got {r:?}")),
        }
    }
}

/// After the master stopped: the FORK records still in the pipe.
fn drain_forks(chan: &mut Chan, forks: &mut Vec<f64>) {
    while let Ok(r) = chan.recv(Duration::from_millis(200)) {
        if r.kind == FORK {
            forks.push(us(r.ts));
        }
    }
}

/// What one bigmem sample or run measured.
#[derive(Default)]
struct BigSamples {
    /// Spawn-to-ready or respawn latencies (µs).
    latency: Vec<f64>,
    /// The prefork master's forks as its `Status` reports them (µs).
    status_forks: Vec<f64>,
    /// The bench's own fork of a master (µs): a bare `fork` of a process that maps the memory.
    bare_forks: Vec<f64>,
}

fn bigmem_master(imp: Imp, n: usize, report: RawFd, respawn: bool) -> i32 {
    match imp {
        Imp::Prefork => prefork_bigmem_master(n, report),
        Imp::Floor => floor_master(n, report, FloorChild::Bare, respawn),
    }
}

/// One spawn sample (as `spawn_sample`), with the bench's fork of the master timed.
fn bigmem_spawn_sample(imp: Imp, n: usize, out: &mut BigSamples) -> Result<(), String> {
    let (rd, wr) = pipe()?;
    let report = wr.as_raw_fd();
    let t0 = now_ns();
    let mut master = spawn_master(report, move || bigmem_master(imp, n, report, false))?;
    out.bare_forks.push(us(now_ns() - t0));
    drop(wr);
    let mut chan = Chan::new(rd);
    let mut forks = Vec::new();
    let measured = (|| {
        let start = chan.expect(START, REPORT_TIMEOUT)?;
        let mut last = start.ts;
        for _ in 0..n {
            last = last.max(expect_noting_forks(&mut chan, READY, &mut forks)?.ts);
        }
        Ok::<_, String>(us(last - start.ts))
    })();
    let stopped = master.stop(libc::SIGTERM, STOP_TIMEOUT);
    drain_forks(&mut chan, &mut forks);
    out.latency.push(measured?);
    out.status_forks.extend(forks);
    stopped
}

/// One respawn run (as `respawn_run`): `kills` times SIGKILL the worker, time to READY.
fn bigmem_respawn_run(imp: Imp, kills: usize, out: &mut BigSamples) -> Result<(), String> {
    let (rd, wr) = pipe()?;
    let report = wr.as_raw_fd();
    let mut master = spawn_master(report, move || bigmem_master(imp, 1, report, true))?;
    drop(wr);
    let mut chan = Chan::new(rd);
    let mut forks = Vec::new();
    let measured = (|| {
        chan.expect(START, REPORT_TIMEOUT)?;
        let mut pid = expect_noting_forks(&mut chan, READY, &mut forks)?.pid;
        // The first worker's fork is a spawn, not a respawn.
        forks.clear();
        for _ in 0..kills {
            sleep(Duration::from_millis(2));
            let t0 = now_ns();
            if !kill(pid, libc::SIGKILL) {
                return Err(last_error(&format!("kill({pid})")));
            }
            let r = expect_noting_forks(&mut chan, READY, &mut forks)?;
            if r.pid == pid {
                return Err(format!("worker {pid} reported ready twice"));
            }
            out.latency.push(us(r.ts.saturating_sub(t0)));
            pid = r.pid;
        }
        Ok::<_, String>(())
    })();
    let stopped = master.stop(libc::SIGTERM, STOP_TIMEOUT);
    drain_forks(&mut chan, &mut forks);
    out.status_forks.extend(forks);
    measured?;
    stopped
}

/// One row's measurements: spawn samples (alternating, one warm-up each) and respawn runs
/// (two alternating blocks each), prefork and floor.
fn bigmem_config(n: usize, spawns: usize, kills: usize) -> [[BigSamples; 2]; 2] {
    let mut spawn: [BigSamples; 2] = Default::default();
    let mut respawn: [BigSamples; 2] = Default::default();
    for imp in [Imp::Prefork, Imp::Floor] {
        let _ = bigmem_spawn_sample(imp, n, &mut BigSamples::default());
    }
    for rep in 0..spawns {
        let order = if rep % 2 == 0 {
            [Imp::Prefork, Imp::Floor]
        } else {
            [Imp::Floor, Imp::Prefork]
        };
        for imp in order {
            if let Err(e) = bigmem_spawn_sample(imp, n, &mut spawn[imp as usize]) {
                eprintln!("  bigmem spawn {}: {e}", imp.name());
            }
        }
    }
    let half = kills.div_ceil(2);
    for order in [[Imp::Prefork, Imp::Floor], [Imp::Floor, Imp::Prefork]] {
        for imp in order {
            if let Err(e) = bigmem_respawn_run(imp, half, &mut respawn[imp as usize]) {
                eprintln!("  bigmem respawn {}: {e}", imp.name());
            }
        }
    }
    [spawn, respawn]
}

fn ms(us: f64) -> String {
    if us.is_nan() {
        "-".into()
    } else {
        format!("{:.2}", us / 1e3)
    }
}

fn bench_bigmem(o: &Opts) {
    let sizes: Vec<usize> = match std::env::var("BENCH_BIGMEM_GIB") {
        Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) => vec![0, 1, 4],
    };
    let n = env_usize("BENCH_BIGMEM_WORKERS").unwrap_or(1);
    let spawns = env_usize("BENCH_BIGMEM_SPAWNS").unwrap_or(if o.quick { 4 } else { 10 });
    let kills = env_usize("BENCH_BIGMEM_KILLS").unwrap_or(if o.quick { 8 } else { 20 });
    let enabled = thp_setting("enabled");
    println!(
        "\n## bigmem: spawn ({n} worker{}, {spawns} samples each) and respawn ({kills} kills each) with memory written before the fork\n",
        if n == 1 { "" } else { "s" }
    );
    println!(
        "transparent huge pages: enabled [{enabled}], defrag [{}]{}",
        thp_setting("defrag"),
        match enabled.as_str() {
            "madvise" => ": only memory advised MADV_HUGEPAGE gets huge pages",
            "always" => ": memory gets huge pages with or without the advice",
            "never" => ": no huge pages, the advice cannot change that",
            _ => "",
        }
    );
    println!(
        "\"bare fork\": the bench's own fork of each spawn sample's master (fork + pidfd_open, same mapping); \"Status fork\": the prefork master's `SlotStatus::last_fork` of each worker\n"
    );
    let mut spawn_rows = Vec::new();
    let mut respawn_rows = Vec::new();
    for &gib in &sizes {
        for huge in [false, true] {
            if gib == 0 && huge {
                continue;
            }
            let len = gib * GIB;
            let available = kb_field("/proc/meminfo", "MemAvailable").unwrap_or(0);
            if len + 2 * GIB > available {
                eprintln!(
                    "  bigmem {gib} GiB: skipped, {} MiB available (needs {} MiB with 2 GiB to spare)",
                    available / MIB,
                    (len + 2 * GIB) / MIB
                );
                continue;
            }
            let started = Instant::now();
            let mem = if len > 0 {
                match BigMem::new(len, huge) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        eprintln!("  bigmem {gib} GiB: {e}");
                        continue;
                    }
                }
            } else {
                None
            };
            let wrote = started.elapsed();
            let huge_mib = kb_field("/proc/self/smaps_rollup", "AnonHugePages").unwrap_or(0) / MIB;
            let [spawn, respawn] = bigmem_config(n, spawns, kills);
            drop(mem);
            let label = format!(
                "| {gib} GiB | {} | {huge_mib} | {:.1} |",
                if gib == 0 {
                    "-"
                } else if huge {
                    "yes"
                } else {
                    "no"
                },
                wrote.as_secs_f64()
            );
            let [sp, sf] = [&spawn[0], &spawn[1]].map(|s| sorted(s.latency.clone()));
            let bare = sorted(spawn.iter().flat_map(|s| s.bare_forks.clone()).collect());
            let st = sorted(spawn[0].status_forks.clone());
            spawn_rows.push(format!(
                "{label} {} | {} | {} | {} | {} | {:.2} | {} |",
                ms(pct(&bare, 50.0)),
                ms(pct(&st, 50.0)),
                ms(pct(&sp, 50.0)),
                ms(pct(&sp, 90.0)),
                ms(pct(&sf, 50.0)),
                pct(&sp, 50.0) / pct(&sf, 50.0),
                ms(pct(&sp, 50.0) - pct(&sf, 50.0)),
            ));
            let [rp, rf] = [&respawn[0], &respawn[1]].map(|s| sorted(s.latency.clone()));
            let rt = sorted(respawn[0].status_forks.clone());
            respawn_rows.push(format!(
                "{label} {} | {} | {} | {} | {} | {} | {:.2} |",
                ms(pct(&rt, 50.0)),
                ms(pct(&rt, 100.0)),
                ms(pct(&rp, 50.0)),
                ms(pct(&rp, 90.0)),
                ms(pct(&rf, 50.0)),
                ms(pct(&rf, 90.0)),
                pct(&rp, 50.0) / pct(&rf, 50.0),
            ));
            eprintln!(
                "  bigmem {gib} GiB, MADV_HUGEPAGE {huge}: {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!("### spawn: run() called -> every worker inside serve (ms)\n");
    println!(
        "| memory | MADV_HUGEPAGE | AnonHugePages MiB | write s | bare fork p50 | Status fork p50 | prefork p50 | prefork p90 | floor p50 | ratio p50 | Δ p50 |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in spawn_rows {
        println!("{row}");
    }
    println!("\n### respawn: SIGKILL the worker -> replacement inside serve (ms)\n");
    println!(
        "| memory | MADV_HUGEPAGE | AnonHugePages MiB | write s | Status fork p50 | Status fork max | prefork p50 | prefork p90 | floor p50 | floor p90 | ratio p50 |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in respawn_rows {
        println!("{row}");
    }
}

// ---------------------------------------------------------------------------------------------

/// `/proc/loadavg`'s three averages: the machine is shared, so say how busy it was.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    let opts = Opts::parse();
    let unknown: Vec<_> = opts
        .filters
        .iter()
        .filter(|f| {
            !SECTIONS
                .iter()
                .chain(OPT_IN_SECTIONS)
                .any(|s| s.starts_with(f.as_str()))
        })
        .collect();
    if !unknown.is_empty() {
        eprintln!(
            "unknown section filter(s) {unknown:?}; sections: {SECTIONS:?}, and when named: {OPT_IN_SECTIONS:?}"
        );
        std::process::exit(2);
    }
    match fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_owned()))
    }) {
        Some(t) if t == "1" => {}
        other => {
            eprintln!("the bench must be single-threaded to fork safely (threads: {other:?})");
            std::process::exit(2);
        }
    }
    if let Err(e) = set_child_subreaper() {
        eprintln!("warning: {e}; orphaned workers will be adopted by init instead");
    }
    // Last-resort watchdog: SIGALRM ends the bench; every master dies with it (PDEATHSIG).
    set_alarm(900 + opts.idle.as_secs() as u32);

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "# prefork supervisor benchmarks ({} mode; {cpus} CPUs; kernel {}; backend {}; worker names {})",
        if opts.quick { "quick" } else { "full" },
        kernel.trim(),
        std::env::var(prefork::BACKEND_ENV).unwrap_or_else(|_| "pidfd (default)".into()),
        if worker_names() {
            "on (default)"
        } else {
            "off"
        }
    );
    println!("load average at start: {}", loadavg());
    let started = Instant::now();
    if opts.selected("spawn") {
        bench_spawn(&opts);
    }
    if opts.selected("respawn") {
        bench_respawn(&opts);
    }
    if opts.selected("death") {
        bench_death(&opts);
    }
    if opts.selected("idle") {
        bench_idle(&opts);
    }
    if opts
        .filters
        .iter()
        .any(|f| "bigmem".starts_with(f.as_str()))
    {
        bench_bigmem(&opts);
    }
    if opts
        .filters
        .iter()
        .any(|f| "refused".starts_with(f.as_str()))
    {
        bench_refused(&opts);
    }
    let strays = procs::reap_strays(&[]);
    if strays > 0 {
        eprintln!("warning: {strays} stray child process(es) found at the end and killed");
    }
    println!(
        "\n(total {:.1} s; load average at end: {})",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}
