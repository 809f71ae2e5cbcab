//! Listener benchmarks: fork mode against exec mode, a shared listener against
//! `SO_REUSEPORT`, all through `Prefork::listen_and_serve`, side by side in one run.
//!
//! ```text
//! cargo bench --bench listeners                       # every section
//! cargo bench --bench listeners -- --quick            # fewer samples, shorter runs
//! cargo bench --bench listeners -- spawn memory       # only these sections
//! ```
//!
//! Sections: `spawn` (spawn-to-ready of n = 2, 8, 32 workers, fork vs exec), `memory` (the
//! workers' proportional set size when the master holds 64 MiB of data, fork vs exec),
//! `resets` (what 16 client threads see while one of 4 workers is killed every 200 ms, by
//! SIGKILL or by SIGSTOP then SIGKILL 50 ms later: shared listener vs reuseport, fork vs
//! exec). `BENCH_QUICK=1` is `--quick`; `BENCH_RESETS_SECS` sets the length of each resets
//! run (4 s; 1.5 s quick). See `docs/benchmarks.md`.
//!
//! How it runs: this process (the *bench*) starts, for every sample, a fresh copy of its own
//! binary with `BENCH_ROLE=master` and the sample's parameters in the environment. That
//! master calls `Prefork::listen_and_serve` on `127.0.0.1:0`. Since an exec-mode worker
//! re-executes `/proc/self/exe` with the master's arguments and environment, it runs this
//! `main` again, sees `BENCH_ROLE` and reaches the same `listen_and_serve` call, which makes
//! it a worker: the binary is re-entrant by construction. Masters and workers report to the
//! bench by datagrams on a unix socket whose path is in the environment (inherited
//! descriptors other than 0-3 do not survive an exec), each carrying a `CLOCK_MONOTONIC`
//! timestamp taken in the sending process and the sample's nonce (stale reports of an
//! earlier sample are ignored).
//!
//! Cleanup: every wait has a timeout; a master dies with the bench (`PR_SET_PDEATHSIG`), its
//! workers die with it (the library's own PDEATHSIG); the bench is a child subreaper and
//! kills any stray child at the end; a 15-minute `alarm` is the last resort.

#[path = "shared/opts.rs"]
mod opts;
#[path = "shared/procs.rs"]
mod procs;
#[path = "listeners/role.rs"]
mod role;
#[path = "shared/stats.rs"]
mod stats;
#[path = "listeners/sys.rs"]
mod sys;
use opts::Opts;
use stats::{pct, sorted, verdict};

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use role::{
    DATA_BYTES, MODE_ENV, NONCE_ENV, PARENT_ENV, REPORT_ENV, REUSEPORT_ENV, ROLE_ENV, TASK_ENV,
    WORKERS_ENV,
};

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

const SECTIONS: &[&str] = &["spawn", "memory", "resets"];

// ---------------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------------

/// What a master is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Spawn,
    Memory,
    Resets,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Spawn => "spawn",
            Task::Memory => "memory",
            Task::Resets => "resets",
        }
    }

    fn parse(s: &str) -> Option<Task> {
        [Task::Spawn, Task::Memory, Task::Resets]
            .into_iter()
            .find(|t| t.name() == s)
    }
}

/// The kinds of report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The master is about to call `listen_and_serve`.
    Start,
    /// The master's `on_master_ready` hook ran: every initial worker was started.
    MasterReady,
    /// A worker entered `serve` (and did its task's preparation). `extra`: the data checksum
    /// (memory) or the listening port (resets).
    Ready,
}

impl Kind {
    fn tag(self) -> char {
        match self {
            Kind::Start => 'S',
            Kind::MasterReady => 'M',
            Kind::Ready => 'R',
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Msg {
    kind: Kind,
    pid: u32,
    slot: usize,
    ts: u64,
    extra: u64,
}

impl Msg {
    /// `nonce kind pid slot ts extra`; `None` for another sample's report or garbage.
    fn parse(bytes: &[u8], nonce: u64) -> Option<Msg> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut f = text.split(' ');
        if f.next()?.parse::<u64>().ok()? != nonce {
            return None;
        }
        let kind = match f.next()? {
            "S" => Kind::Start,
            "M" => Kind::MasterReady,
            "R" => Kind::Ready,
            _ => return None,
        };
        Some(Msg {
            kind,
            pid: f.next()?.parse().ok()?,
            slot: f.next()?.parse().ok()?,
            ts: f.next()?.parse().ok()?,
            extra: f.next()?.parse().ok()?,
        })
    }
}

/// The bench's end of the report channel: a bound unix datagram socket in a private
/// directory, removed on drop.
struct Collector {
    sock: UnixDatagram,
    dir: PathBuf,
    path: PathBuf,
    next_nonce: u64,
}

impl Collector {
    fn new() -> Result<Collector, String> {
        let dir =
            std::env::temp_dir().join(format!("prefork-bench-listeners-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("report.sock");
        let sock = UnixDatagram::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Collector {
            sock,
            dir,
            path,
            next_nonce: u64::from(std::process::id()) << 20,
        })
    }

    /// The next report of sample `nonce`, or `None` once `until` passes.
    fn recv(&self, nonce: u64, until: Instant) -> Result<Option<Msg>, String> {
        let mut buf = [0u8; 256];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| format!("report socket: {e}"))?;
            match self.sock.recv(&mut buf) {
                Ok(k) => {
                    if let Some(m) = Msg::parse(&buf[..k], nonce) {
                        return Ok(Some(m));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(format!("report socket: {e}")),
            }
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Masters
// ---------------------------------------------------------------------------------------------

/// How long a master gets to have every worker report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a master gets to stop after SIGTERM (its own grace period is 2 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModeName {
    Fork,
    Exec,
}

impl ModeName {
    fn name(self) -> &'static str {
        match self {
            ModeName::Fork => "fork",
            ModeName::Exec => "exec",
        }
    }
}

/// A master process started by the bench; SIGKILLed and reaped on drop if still running.
struct Master {
    child: Child,
    nonce: u64,
    exited: bool,
}

impl Master {
    /// Starts a copy of this binary as a master. Must be called from the main thread: the
    /// master's PDEATHSIG fires when the *thread* that spawned it exits.
    fn start(
        col: &mut Collector,
        task: Task,
        mode: ModeName,
        workers: usize,
        reuseport: bool,
    ) -> Result<Master, String> {
        col.next_nonce += 1;
        let nonce = col.next_nonce;
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let child = Command::new(exe)
            .env(ROLE_ENV, "master")
            .env(TASK_ENV, task.name())
            .env(MODE_ENV, mode.name())
            .env(WORKERS_ENV, workers.to_string())
            .env(REUSEPORT_ENV, if reuseport { "1" } else { "0" })
            .env(REPORT_ENV, &col.path)
            .env(NONCE_ENV, nonce.to_string())
            .env(PARENT_ENV, std::process::id().to_string())
            // A master must not mistake itself for a worker or a socket-activated service.
            .env_remove(prefork::protocol::CHILD_ENV)
            .env_remove(prefork::protocol::WORKER_ID_ENV)
            // The variable a worker honours without a socket on fd 3 (crate-internal).
            .env_remove("PREFORK_REUSEPORT_ADDR")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting a master: {e}"))?;
        Ok(Master {
            child,
            nonce,
            exited: false,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the master has exited.
    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.exited = true;
                Err(format!("master {} exited early: {status}", self.pid()))
            }
            Err(e) => Err(format!("waiting for master {}: {e}", self.pid())),
        }
    }

    /// The next report, checking every 100 ms that the master still runs; an error after
    /// `until`.
    fn expect(&mut self, col: &Collector, until: Instant) -> Result<Msg, String> {
        loop {
            let slice = (Instant::now() + Duration::from_millis(100)).min(until);
            if let Some(m) = col.recv(self.nonce, slice)? {
                return Ok(m);
            }
            self.check_alive()?;
            if Instant::now() >= until {
                return Err(format!("master {}: no report in time", self.pid()));
            }
        }
    }

    /// Collects reports until the master's start, its ready hook and `n` distinct workers'
    /// ready reports are in. Returns them (the workers' in arrival order).
    fn collect_ready(&mut self, col: &Collector, n: usize) -> Result<Ready, String> {
        let until = Instant::now() + READY_TIMEOUT;
        let (mut start, mut master_ready) = (None, None);
        let mut workers: Vec<Msg> = Vec::new();
        while start.is_none() || master_ready.is_none() || workers.len() < n {
            let m = self.expect(col, until).map_err(|e| {
                format!(
                    "{e} (had start: {}, master ready: {}, {} of {n} workers)",
                    start.is_some(),
                    master_ready.is_some(),
                    workers.len()
                )
            })?;
            match m.kind {
                Kind::Start => start = Some(m.ts),
                Kind::MasterReady => master_ready = Some(m.ts),
                Kind::Ready if !workers.iter().any(|w| w.pid == m.pid) => workers.push(m),
                Kind::Ready => {}
            }
        }
        Ok(Ready {
            start: start.unwrap_or(0),
            master_ready: master_ready.unwrap_or(0),
            workers,
        })
    }

    /// SIGTERM, then wait; SIGKILL after [`STOP_TIMEOUT`]. An error if the master did not
    /// exit 0 by itself.
    fn stop(mut self) -> Result<(), String> {
        let pid = self.pid();
        if !self.exited {
            sys::kill(pid, libc::SIGTERM);
        }
        let until = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exited = true;
                    return if status.success() {
                        Ok(())
                    } else {
                        Err(format!("master {pid} exited with {status}"))
                    };
                }
                Ok(None) if Instant::now() < until => sys::sleep(Duration::from_millis(2)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    self.exited = true;
                    return Err(format!(
                        "master {pid} did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed"
                    ));
                }
                Err(e) => return Err(format!("waiting for master {pid}: {e}")),
            }
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Ready {
    start: u64,
    master_ready: u64,
    workers: Vec<Msg>,
}

impl Ready {
    fn last_worker_ts(&self) -> u64 {
        self.workers.iter().map(|w| w.ts).max().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics and printing
// ---------------------------------------------------------------------------------------------

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn failed(errors: usize) -> String {
    if errors > 0 {
        format!(" ({errors} failed samples)")
    } else {
        String::new()
    }
}

// ---------------------------------------------------------------------------------------------
// 1. spawn-to-ready
// ---------------------------------------------------------------------------------------------

/// One sample: (master's start -> last worker inside serve, master's start -> its ready
/// hook), in ms.
fn spawn_sample(col: &mut Collector, mode: ModeName, n: usize) -> Result<(f64, f64), String> {
    let mut m = Master::start(col, Task::Spawn, mode, n, false)?;
    let ready = m.collect_ready(col, n);
    let stopped = m.stop();
    let ready = ready?;
    stopped?;
    Ok((
        ms(ready.last_worker_ts().saturating_sub(ready.start)),
        ms(ready.master_ready.saturating_sub(ready.start)),
    ))
}

fn bench_spawn(o: &Opts, col: &mut Collector) {
    let reps = if o.quick { 11 } else { 101 };
    println!(
        "\n## spawn-to-ready: listen_and_serve called -> every worker inside serve ({reps} samples each, fork/exec interleaved)\n"
    );
    println!(
        "| workers | fork p50 ms | fork p90 ms | exec p50 ms | exec p90 ms | exec/fork p50 | exec/fork p90 | all started (master) fork / exec p50 ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let sizes = [2usize, 8, 32];
    let mut ratios = Vec::new();
    // p50 per mode and size, for the marginal cost per worker.
    let mut p50s = [[f64::NAN; 3]; 2];
    for (i, &n) in sizes.iter().enumerate() {
        let mut ready = [Vec::new(), Vec::new()];
        let mut started = [Vec::new(), Vec::new()];
        let mut errors = 0;
        // One warm-up sample each (page cache, allocator), not recorded.
        let _ = spawn_sample(col, ModeName::Fork, n);
        let _ = spawn_sample(col, ModeName::Exec, n);
        for rep in 0..reps {
            let order = if rep % 2 == 0 {
                [ModeName::Fork, ModeName::Exec]
            } else {
                [ModeName::Exec, ModeName::Fork]
            };
            for mode in order {
                match spawn_sample(col, mode, n) {
                    Ok((r, s)) => {
                        ready[mode as usize].push(r);
                        started[mode as usize].push(s);
                    }
                    Err(e) => {
                        errors += 1;
                        eprintln!("  spawn {} n={n}: {e}", mode.name());
                    }
                }
            }
        }
        let [f, e] = ready.map(sorted);
        let [fs, es] = started.map(sorted);
        let (r50, r90) = (pct(&e, 50.0) / pct(&f, 50.0), pct(&e, 90.0) / pct(&f, 90.0));
        ratios.push(r50);
        p50s[0][i] = pct(&f, 50.0);
        p50s[1][i] = pct(&e, 50.0);
        println!(
            "| {n} | {:.2} | {:.2} | {:.2} | {:.2} | {r50:.1} | {r90:.1} | {:.2} / {:.2} |{}",
            pct(&f, 50.0),
            pct(&f, 90.0),
            pct(&e, 50.0),
            pct(&e, 90.0),
            pct(&fs, 50.0),
            pct(&es, 50.0),
            failed(errors)
        );
    }
    let extra = (sizes[2] - sizes[0]) as f64;
    let marginal = p50s.map(|m| (m[2] - m[0]) / extra * 1e3);
    println!(
        "\nmarginal cost per worker, (p50(32) - p50(2)) / 30: fork {:.0} µs, exec {:.0} µs ({:.1}x)",
        marginal[0],
        marginal[1],
        marginal[1] / marginal[0]
    );
    let worst = if ratios.iter().all(|r| r.is_finite()) {
        ratios.iter().copied().fold(f64::INFINITY, f64::min)
    } else {
        f64::NAN
    };
    println!(
        "target: fork mode at least 5x faster than exec mode (p50, every n): smallest ratio {worst:.1} -> {}",
        verdict(worst >= 5.0)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. memory
// ---------------------------------------------------------------------------------------------

struct MemSample {
    workers_pss: u64,
    workers_rss: u64,
    master_pss: u64,
    ready_ms: f64,
    checksums_agree: bool,
}

/// One sample: a master that built 64 MiB, `n` workers that read it once; the Pss (and Rss)
/// of each from `/proc/PID/smaps_rollup`, in KiB.
fn memory_sample(col: &mut Collector, mode: ModeName, n: usize) -> Result<MemSample, String> {
    let mut m = Master::start(col, Task::Memory, mode, n, false)?;
    let measured = (|| {
        let ready = m.collect_ready(col, n)?;
        // Let the last worker settle into accept().
        sys::sleep(Duration::from_millis(200));
        let (master_pss, _) = sys::pss_rss_kib(m.pid())?;
        let (mut workers_pss, mut workers_rss) = (0, 0);
        for w in &ready.workers {
            let (pss, rss) = sys::pss_rss_kib(w.pid)?;
            workers_pss += pss;
            workers_rss += rss;
        }
        let first = ready.workers[0].extra;
        Ok::<_, String>(MemSample {
            workers_pss,
            workers_rss,
            master_pss,
            ready_ms: ms(ready.last_worker_ts().saturating_sub(ready.start)),
            checksums_agree: ready.workers.iter().all(|w| w.extra == first),
        })
    })();
    let stopped = m.stop();
    let s = measured?;
    stopped?;
    Ok(s)
}

fn bench_memory(o: &Opts, col: &mut Collector) {
    let reps = if o.quick { 1 } else { 3 };
    let sizes: &[usize] = if o.quick { &[4] } else { &[4, 8] };
    let one = (DATA_BYTES >> 10) as f64;
    println!(
        "\n## memory: master builds {} MiB of pseudo-random data before listen_and_serve; workers read it once, then idle ({reps} sample(s) each, median by total)\n",
        DATA_BYTES >> 20
    );
    println!(
        "| mode | workers | workers' Pss sum MiB | per worker MiB | master Pss MiB | total MiB | total / one copy | workers / one copy | workers' Rss sum MiB | ready ms | checksums |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let mut fork_ok = true;
    let mut exec_ok = true;
    for &n in sizes {
        for mode in [ModeName::Fork, ModeName::Exec] {
            let mut samples = Vec::new();
            let mut errors = 0;
            for _ in 0..reps {
                match memory_sample(col, mode, n) {
                    Ok(s) => samples.push(s),
                    Err(e) => {
                        errors += 1;
                        eprintln!("  memory {} n={n}: {e}", mode.name());
                    }
                }
            }
            samples.sort_by_key(|s| s.workers_pss + s.master_pss);
            let Some(s) = samples.get(samples.len() / 2) else {
                println!(
                    "| {} | {n} | - | - | - | - | - | - | - | - | - |{}",
                    mode.name(),
                    failed(errors)
                );
                if mode == ModeName::Fork {
                    fork_ok = false;
                } else {
                    exec_ok = false;
                }
                continue;
            };
            let mib = |kib: u64| kib as f64 / 1024.0;
            let total = s.workers_pss + s.master_pss;
            let total_ratio = total as f64 / one;
            let workers_ratio = s.workers_pss as f64 / one;
            match mode {
                ModeName::Fork => fork_ok &= total_ratio < 1.5,
                // "About n copies": at least 0.9 n of them in the workers.
                ModeName::Exec => exec_ok &= workers_ratio >= 0.9 * n as f64,
            }
            println!(
                "| {} | {n} | {:.1} | {:.1} | {:.1} | {:.1} | {total_ratio:.2}x | {workers_ratio:.2}x | {:.1} | {:.1} | {} |{}",
                mode.name(),
                mib(s.workers_pss),
                mib(s.workers_pss) / n as f64,
                mib(s.master_pss),
                mib(total),
                mib(s.workers_rss),
                s.ready_ms,
                if s.checksums_agree { "agree" } else { "DIFFER" },
                failed(errors)
            );
        }
    }
    println!(
        "\ntarget: fork mode total (master + workers) under 1.5 copies -> {}; exec mode about one copy per worker -> {}",
        verdict(fork_ok),
        verdict(exec_ok)
    );
    println!(
        "(\"ready ms\": listen_and_serve called -> last worker has read the data; in exec mode it includes each worker building its own copy)"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. resets under worker kills
// ---------------------------------------------------------------------------------------------

const RESET_WORKERS: usize = 4;
/// More clients than workers, so that accept queues are not empty when a worker dies.
const CLIENTS: usize = 16;
const KILL_EVERY: Duration = Duration::from_millis(200);
/// In the stop-then-kill runs: how long a worker is stopped before its SIGKILL.
const STOP_FOR: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// How a run kills workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillStyle {
    /// No kills: the control run.
    None,
    /// SIGKILL a serving worker every [`KILL_EVERY`].
    Kill,
    /// Every [`KILL_EVERY`]: SIGSTOP a serving worker, SIGKILL it [`STOP_FOR`] later. While
    /// it is stopped, connections the kernel routes to it pile up in its accept queue (its
    /// own with reuseport), so its death shows what happens to a non-empty queue.
    StopKill,
}

impl KillStyle {
    fn name(self) -> &'static str {
        match self {
            KillStyle::None => "none (control)",
            KillStyle::Kill => "KILL",
            KillStyle::StopKill => "STOP, 50 ms, KILL",
        }
    }
}

#[derive(Clone, Copy)]
struct ResetCfg {
    mode: ModeName,
    reuseport: bool,
    kill: KillStyle,
}

impl ResetCfg {
    fn listener(&self) -> &'static str {
        match (self.reuseport, self.mode) {
            (false, _) => "shared",
            (true, ModeName::Fork) => "reuseport (master keeps the sockets)",
            (true, ModeName::Exec) => "reuseport (each worker binds its own)",
        }
    }
}

/// What happened to one client connection.
enum Outcome {
    /// `A` then `pong\n`, in this many microseconds from the start of `connect`.
    Ok(u64),
    /// EOF or reset after the worker's `A`: accepted, then its worker died.
    LostAfterAccept,
    /// EOF or reset with nothing received: reset in an accept queue, or taken out of the queue
    /// by a worker that died before its first write (inside `accept` included).
    LostNothingReceived,
    /// No complete answer within [`ANSWER_TIMEOUT`].
    Unanswered,
    /// `connect` failed or timed out.
    Connect,
    Other(String),
}

#[derive(Default)]
struct Counts {
    ok: u64,
    after_accept: u64,
    nothing: u64,
    unanswered: u64,
    connect: u64,
    other: u64,
    other_examples: Vec<String>,
    latencies_us: Vec<u64>,
}

impl Counts {
    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Ok(us) => {
                self.ok += 1;
                self.latencies_us.push(us);
            }
            Outcome::LostAfterAccept => self.after_accept += 1,
            Outcome::LostNothingReceived => self.nothing += 1,
            Outcome::Unanswered => self.unanswered += 1,
            Outcome::Connect => self.connect += 1,
            Outcome::Other(e) => {
                self.other += 1;
                if self.other_examples.len() < 3 {
                    self.other_examples.push(e);
                }
            }
        }
    }

    fn merge(&mut self, other: Counts) {
        self.ok += other.ok;
        self.after_accept += other.after_accept;
        self.nothing += other.nothing;
        self.unanswered += other.unanswered;
        self.connect += other.connect;
        self.other += other.other;
        for e in other.other_examples {
            if self.other_examples.len() < 3 {
                self.other_examples.push(e);
            }
        }
        self.latencies_us.extend(other.latencies_us);
    }
}

/// One request: connect, `ping\n`, expect `A` (accepted) then `pong\n`.
fn exchange(addr: SocketAddr) -> Outcome {
    let t0 = Instant::now();
    let mut s = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(_) => return Outcome::Connect,
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(ANSWER_TIMEOUT));
    let _ = sys::set_linger_zero(&s);
    let mut got = [0u8; 8];
    let mut len = 0;
    let lost = |len: usize| {
        if len > 0 {
            Outcome::LostAfterAccept
        } else {
            Outcome::LostNothingReceived
        }
    };
    let classify = |e: io::Error, len: usize| match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => lost(len),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Outcome::Unanswered,
        _ => Outcome::Other(e.to_string()),
    };
    if let Err(e) = s.write_all(b"ping\n") {
        return classify(e, len);
    }
    let deadline = t0 + CONNECT_TIMEOUT + ANSWER_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::Unanswered;
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut got[len..]) {
            Ok(0) => return lost(len),
            Ok(k) => {
                len += k;
                if len >= 6 {
                    return if &got[..6] == b"Apong\n" {
                        Outcome::Ok(t0.elapsed().as_micros() as u64)
                    } else {
                        Outcome::Other(format!("unexpected answer {:?}", &got[..len]))
                    };
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return classify(e, len),
        }
    }
}

/// A client thread: requests one after another until `end` (or `stop`); each request is
/// bounded by its timeouts, so the thread ends at most ~3 s after `end`.
fn client_loop(addr: SocketAddr, end: Instant, stop: &AtomicBool) -> Counts {
    let mut c = Counts::default();
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        c.add(exchange(addr));
    }
    c
}

struct ResetRun {
    counts: Counts,
    kills: u64,
    respawns: usize,
    /// SIGKILL (in the bench) -> the replacement inside serve, ms.
    respawn_ms: Vec<f64>,
    secs: f64,
}

fn resets_run(col: &mut Collector, cfg: ResetCfg, dur: Duration) -> Result<ResetRun, String> {
    let n = RESET_WORKERS;
    let mut m = Master::start(col, Task::Resets, cfg.mode, n, cfg.reuseport)?;
    let master_pid = m.pid();
    let ready = match m.collect_ready(col, n) {
        Ok(r) => r,
        Err(e) => {
            let _ = m.stop();
            return Err(e);
        }
    };
    // The serving (ready, not yet signalled) worker of each slot.
    let mut slots: Vec<Option<u32>> = vec![None; n];
    let mut port = 0;
    for w in &ready.workers {
        if w.slot < n {
            slots[w.slot] = Some(w.pid);
        }
        port = w.extra as u16;
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let end = t0 + dur;
    let (mut kills, mut respawns) = (0, 0);
    let mut respawn_ms = Vec::new();
    // When each slot's worker was killed (CLOCK_MONOTONIC ns), until its replacement reports.
    let mut killed_at: Vec<Option<u64>> = vec![None; n];
    let mut error = None;
    // A stopped worker and when to kill it.
    let mut stopped: Option<(u32, usize, Instant)> = None;
    let counts = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| s.spawn(|| client_loop(addr, end, &stop)))
            .collect();
        let mut next_kill = t0 + KILL_EVERY;
        let mut turn = 0;
        while Instant::now() < end && error.is_none() {
            let mut wake = next_kill.min(end);
            if let Some((_, _, at)) = stopped {
                wake = wake.min(at);
            }
            match col.recv(m.nonce, wake) {
                Ok(Some(msg)) if msg.kind == Kind::Ready && msg.slot < n => {
                    if slots[msg.slot] != Some(msg.pid) {
                        respawns += 1;
                    }
                    if let Some(t) = killed_at[msg.slot].take() {
                        respawn_ms.push(ms(msg.ts.saturating_sub(t)));
                    }
                    slots[msg.slot] = Some(msg.pid);
                }
                Ok(_) => {}
                Err(e) => error = Some(e),
            }
            if let Err(e) = m.check_alive() {
                error = Some(e);
            }
            let now = Instant::now();
            if let Some((pid, slot, at)) = stopped {
                if now >= at {
                    stopped = None;
                    let t = sys::now_ns();
                    if sys::kill(pid, libc::SIGKILL) {
                        kills += 1;
                        killed_at[slot] = Some(t);
                    }
                }
            }
            if cfg.kill == KillStyle::None || now < next_kill {
                continue;
            }
            next_kill += KILL_EVERY;
            // The next slot, in turn, whose worker is serving.
            let Some(slot) = (0..n).map(|k| (turn + k) % n).find(|&s| slots[s].is_some()) else {
                continue;
            };
            turn = slot + 1;
            let Some(pid) = slots[slot].take() else {
                continue;
            };
            // Only a worker of this master (pids are not reused that fast; check anyway).
            if sys::ppid_of(pid) != Some(master_pid) {
                continue;
            }
            match cfg.kill {
                KillStyle::Kill => {
                    let t = sys::now_ns();
                    if sys::kill(pid, libc::SIGKILL) {
                        kills += 1;
                        killed_at[slot] = Some(t);
                    }
                }
                KillStyle::StopKill => {
                    if sys::kill(pid, libc::SIGSTOP) {
                        stopped = Some((pid, slot, now + STOP_FOR));
                    }
                }
                KillStyle::None => {}
            }
        }
        // A stopped worker must not outlive the run (it would not see the master's TERM).
        if let Some((pid, _, _)) = stopped.take() {
            if sys::kill(pid, libc::SIGKILL) {
                kills += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut all = Counts::default();
        for c in clients {
            match c.join() {
                Ok(c) => all.merge(c),
                Err(_) => all.add(Outcome::Other("client thread panicked".into())),
            }
        }
        all
    });
    let secs = t0.elapsed().as_secs_f64().min(dur.as_secs_f64());
    let stopped = m.stop();
    if let Some(e) = error {
        return Err(e);
    }
    stopped?;
    Ok(ResetRun {
        counts,
        kills,
        respawns,
        respawn_ms: sorted(respawn_ms),
        secs,
    })
}

fn bench_resets(o: &Opts, col: &mut Collector) {
    let default = if o.quick { 1.5 } else { 4.0 };
    let secs = match std::env::var("BENCH_RESETS_SECS") {
        Ok(v) => match v.parse::<f64>() {
            Ok(s) if s > 0.0 && s <= 120.0 => s,
            _ => {
                eprintln!("BENCH_RESETS_SECS={v:?} is not a duration in seconds (0-120]; ignored");
                default
            }
        },
        Err(_) => default,
    };
    let dur = Duration::from_secs_f64(secs);
    let mut configs: Vec<ResetCfg> = [false, true]
        .into_iter()
        .map(|reuseport| ResetCfg {
            mode: ModeName::Fork,
            reuseport,
            kill: KillStyle::None,
        })
        .collect();
    for kill in [KillStyle::Kill, KillStyle::StopKill] {
        for mode in [ModeName::Fork, ModeName::Exec] {
            for reuseport in [false, true] {
                configs.push(ResetCfg {
                    mode,
                    reuseport,
                    kill,
                });
            }
        }
    }
    println!(
        "\n## resets: {CLIENTS} client threads, one request per connection, {RESET_WORKERS} workers; one worker killed every {} ms for {secs:.1} s\n",
        KILL_EVERY.as_millis(),
    );
    println!(
        "| kill | mode | listener | kills | ok | ok/s | lost after `A` | lost, nothing received | lost per kill | unanswered | connect / other errors | p50 ms | p99 ms | max ms | respawn p50 / max ms |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // Per kill style: fork mode with reuseport (lost, lost per kill, failures).
    let mut verdicts = Vec::new();
    for cfg in configs {
        let run = match resets_run(col, cfg, dur) {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "  resets {} {} {}: {e}",
                    cfg.kill.name(),
                    cfg.mode.name(),
                    cfg.listener()
                );
                println!(
                    "| {} | {} | {} | failed: {e} |",
                    cfg.kill.name(),
                    cfg.mode.name(),
                    cfg.listener()
                );
                continue;
            }
        };
        let c = &run.counts;
        let lat = sorted(c.latencies_us.iter().map(|&u| u as f64 / 1e3).collect());
        let lost = c.after_accept + c.nothing;
        let per_kill = if run.kills > 0 {
            format!("{:.2}", lost as f64 / run.kills as f64)
        } else {
            "-".to_owned()
        };
        let failures = c.unanswered + c.connect + c.other;
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {per_kill} | {} | {} / {} | {:.2} | {:.2} | {:.1} | {} |",
            cfg.kill.name(),
            cfg.mode.name(),
            cfg.listener(),
            run.kills,
            c.ok,
            c.ok as f64 / run.secs,
            c.after_accept,
            c.nothing,
            c.unanswered,
            c.connect,
            c.other,
            pct(&lat, 50.0),
            pct(&lat, 99.0),
            lat.last().copied().unwrap_or(f64::NAN),
            if run.respawn_ms.is_empty() {
                "-".to_owned()
            } else {
                format!(
                    "{:.1} / {:.1}",
                    pct(&run.respawn_ms, 50.0),
                    run.respawn_ms.last().copied().unwrap_or(f64::NAN)
                )
            },
        );
        for e in &c.other_examples {
            eprintln!("  resets {}: other error: {e}", cfg.listener());
        }
        if run.respawns as u64 + 1 < run.kills {
            eprintln!(
                "  resets {} {}: {} kills but only {} respawns reported",
                cfg.kill.name(),
                cfg.listener(),
                run.kills,
                run.respawns
            );
        }
        if cfg.kill != KillStyle::None && cfg.mode == ModeName::Fork && cfg.reuseport {
            verdicts.push((cfg.kill, lost, run.kills, failures));
        }
    }
    println!(
        "\nEach worker holds at most one client connection at a time, so a kill can lose at most one connection unless the dead worker's accept queue is lost with it: \"lost per kill\" above 1 means queued connections were reset. \"lost after `A`\": accepted, then the worker died (in flight). \"lost, nothing received\": reset in a dead worker's accept queue, or taken out of the queue by the worker just before it died (inside `accept`, or before its first write)."
    );
    for (kill, lost, kills, failures) in verdicts {
        println!(
            "target: zero resets with reuseport, fork mode, {}: {lost} lost in {kills} kills ({}); no queued connection lost (at most one per kill, nothing unanswered) -> {}",
            kill.name(),
            if lost == 0 {
                "literally zero: met".to_owned()
            } else {
                "literally zero: NOT met, in-flight losses".to_owned()
            },
            verdict(lost <= kills && failures == 0)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

/// The 1, 5 and 15-minute load averages: other work on the machine skews every figure here.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn main() {
    // A master, or an exec-mode worker re-running this binary: the same listen_and_serve.
    if std::env::var_os(ROLE_ENV).is_some() {
        std::process::exit(role::main());
    }
    let opts = Opts::parse();
    let unknown: Vec<_> = opts
        .filters
        .iter()
        .filter(|f| !SECTIONS.iter().any(|s| s.starts_with(f.as_str())))
        .collect();
    if !unknown.is_empty() {
        eprintln!("unknown section filter(s) {unknown:?}; sections: {SECTIONS:?}");
        std::process::exit(2);
    }
    if let Err(e) = sys::set_child_subreaper() {
        eprintln!("warning: {e}; orphaned workers will be adopted by init instead");
    }
    // Last-resort watchdog: SIGALRM ends the bench; every master dies with it (PDEATHSIG).
    sys::alarm(900);
    let mut col = match Collector::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("report socket: {e}");
            std::process::exit(1);
        }
    };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "# prefork listener benchmarks ({} mode; {cpus} CPUs; kernel {}; load average {})",
        if opts.quick { "quick" } else { "full" },
        kernel.trim(),
        loadavg()
    );
    let started = Instant::now();
    if opts.selected("spawn") {
        bench_spawn(&opts, &mut col);
    }
    if opts.selected("memory") {
        bench_memory(&opts, &mut col);
    }
    if opts.selected("resets") {
        bench_resets(&opts, &mut col);
    }
    drop(col);
    let strays = sys::reap_strays(&[]);
    if strays > 0 {
        eprintln!("warning: {strays} stray child process(es) found at the end and killed");
    }
    let _ = io::stdout().flush();
    println!(
        "\n(total {:.1} s; load average at the end {})",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}
