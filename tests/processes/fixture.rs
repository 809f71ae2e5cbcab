//! The `master` fixture of `tests/processes.rs`: this binary, started by a test with
//! `PREFORK_FIXTURE=master`, runs a prefork master (`Prefork::run`) configured by `FX_*`
//! environment variables and reports what happens on stdout, one line per event, flushed at
//! once: the lines every fixture shares (`master`, `spawn`, `ready`, `recover`, `exit`,
//! `result`/`debug`, `children`, `end`; see `support/report.rs`) and these:
//!
//! | line | printed by | when |
//! |---|---|---|
//! | `port PORT` | master | the listener's port, before `run` |
//! | `state LABEL fds=N sigblk=X sigign=X sigcgt=X chld=ACTION` | master | before the first run (`before`), after run k (`afterK`) |
//! | `sig SIGNO PID` | worker | its handler caught a signal (`FX_TERM=catch`, `FX_USR=1`) |
//! | `orphan PID PPID` | grandchild | an orphan left by the `orphan` command, once adopted |
//! | `chld PID ACTION` | worker | its `SIGCHLD` action (see `chld_action`) |
//!
//! It exits 0 when every run returned `Ok`, 2 when one returned `Err`.
//!
//! Workers serve a line protocol on the shared listener: the client sends one command line,
//! the worker answers `ID PID MASTER_PID IS_CHILD` (from `Worker` and `prefork::is_child`),
//! closes the connection, then acts on the command:
//!
//! * `id`: nothing more;
//! * `panic`, `err`, `ok`: `serve` panics, returns `Err`, returns `Ok`;
//! * `fatal`: `Worker::exit_fatal`;
//! * `orphan`: leaves an orphan grandchild behind;
//! * `chld`: reports its `SIGCHLD` action.
//!
//! Options (unset means the library's default, or nothing done):
//!
//! * `FX_WORKERS`, `FX_GRACE_MS`, `FX_INTERVAL_MS`, `FX_THRESHOLD`: builder options;
//! * `FX_TERM=ignore|catch`: the workers' SIGTERM disposition;
//! * `FX_USR=1`: workers report USR1 and USR2;
//! * `FX_START=panic|exit0`: `serve` panics or returns at once;
//! * `FX_DEATH_DIR=DIR`: `on_master_death` appends a line to `DIR/PID`;
//! * `FX_FAIL_HOOK=spawn_err|spawn_panic|ready_err|ready_panic|recover_err|ready_thread`: a
//!   hook fails (`spawn_*` at the second spawn) or starts a thread;
//! * `FX_THREAD=1`: a thread runs before `run`;
//! * `FX_SUBREAPER=1`: the master is a child subreaper;
//! * `FX_NO_PIDFD=1`: a seccomp filter makes `pidfd_open` fail with `ENOSYS`, as on a
//!   kernel before 5.3;
//! * `FX_PIDS_CGROUP=DIR`: the master moves itself into that pids cgroup before `run`, so
//!   the test can make `fork` fail with `EAGAIN` (`pids.max`);
//! * `FX_IGNORE_CHLD=1`, `FX_NOCLDWAIT=1`: SIGCHLD is ignored, or has `SA_NOCLDWAIT`, before
//!   `run`;
//! * `FX_RUNS=N`: `run` is called N times; with `FX_SELF_TERM=1` each run stops itself with
//!   a SIGTERM sent from `on_master_ready`;
//! * `FX_UNFLUSHED=1`: `unflushed-marker ` is left in stdout's buffer before `run` (so it
//!   prefixes the first `spawn` line).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use prefork::{Prefork, Worker};

use crate::support::backend::deny_pidfd_open;
use crate::support::fixture::{EXIT_BROKEN, EXIT_ERR, EXIT_OK, choice, flag, parsed, var};
use crate::support::procfs;
use crate::support::report::{self, complain, say, write_raw};

/// The fixture's role (the value of `PREFORK_FIXTURE`).
pub const ROLE: &str = "master";

#[derive(Clone, Copy, PartialEq, Eq)]
enum TermMode {
    Default,
    Ignore,
    Catch,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StartMode {
    Serve,
    Panic,
    Exit0,
}

struct Opts {
    workers: Option<usize>,
    grace: Option<Duration>,
    interval: Option<Duration>,
    threshold: Option<usize>,
    term: TermMode,
    usr: bool,
    start: StartMode,
    death_dir: Option<PathBuf>,
    fail_hook: Option<String>,
    thread: bool,
    subreaper: bool,
    ignore_chld: bool,
    runs: usize,
    self_term: bool,
    unflushed: bool,
    nocldwait: bool,
    pids_cgroup: Option<PathBuf>,
    no_pidfd: bool,
}

impl Opts {
    fn from_env() -> Result<Opts, String> {
        use {StartMode as S, TermMode as T};
        Ok(Opts {
            workers: parsed("FX_WORKERS")?,
            grace: parsed("FX_GRACE_MS")?.map(Duration::from_millis),
            interval: parsed("FX_INTERVAL_MS")?.map(Duration::from_millis),
            threshold: parsed("FX_THRESHOLD")?,
            term: choice(
                "FX_TERM",
                &[("ignore", T::Ignore), ("catch", T::Catch)],
                T::Default,
            )?,
            usr: flag("FX_USR"),
            start: choice(
                "FX_START",
                &[("panic", S::Panic), ("exit0", S::Exit0)],
                S::Serve,
            )?,
            death_dir: var("FX_DEATH_DIR").map(PathBuf::from),
            fail_hook: var("FX_FAIL_HOOK"),
            thread: flag("FX_THREAD"),
            subreaper: flag("FX_SUBREAPER"),
            pids_cgroup: var("FX_PIDS_CGROUP").map(PathBuf::from),
            no_pidfd: flag("FX_NO_PIDFD"),
            ignore_chld: flag("FX_IGNORE_CHLD"),
            runs: parsed("FX_RUNS")?.unwrap_or(1),
            self_term: flag("FX_SELF_TERM"),
            unflushed: flag("FX_UNFLUSHED"),
            nocldwait: flag("FX_NOCLDWAIT"),
        })
    }
}

/// The `master` role: set up what the options ask for, run `Prefork` `runs` times, report.
/// The exit code: `EXIT_OK` when every run returned `Ok`, `EXIT_ERR` otherwise.
pub fn master() -> i32 {
    match Opts::from_env() {
        Ok(opts) => run_master(&opts),
        Err(e) => {
            complain(format!("fixture: {e}"));
            EXIT_BROKEN
        }
    }
}

fn run_master(opts: &Opts) -> i32 {
    report::master();
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            complain(format!("fixture: bind: {e}"));
            return EXIT_BROKEN;
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    say(format!("port {port}"));
    if let Some(dir) = &opts.pids_cgroup {
        if let Err(e) = std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()) {
            complain(format!(
                "fixture: joining the pids cgroup {}: {e}",
                dir.display()
            ));
            return EXIT_BROKEN;
        }
    }
    if opts.subreaper {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
            complain("fixture: PR_SET_CHILD_SUBREAPER failed");
            return EXIT_BROKEN;
        }
    }
    if opts.ignore_chld {
        // SAFETY: SIG_IGN is a valid disposition for SIGCHLD.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    }
    if opts.nocldwait {
        // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask, no flags).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = libc::SIG_DFL;
        action.sa_flags = libc::SA_NOCLDWAIT;
        // SAFETY: `action` is a valid sigaction; the old one is not asked for.
        unsafe { libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut()) };
    }
    if opts.no_pidfd {
        if let Err(e) = deny_pidfd_open() {
            complain(format!("fixture: installing the seccomp filter: {e}"));
            return EXIT_BROKEN;
        }
    }
    if opts.thread {
        // A thread that lives until the process exits.
        std::thread::spawn(|| {
            loop {
                std::thread::park();
            }
        });
    }
    report_state("before");
    if opts.unflushed {
        // Left in std's stdout buffer: the master must flush it before forking, or every
        // worker would write its copy too when it exits.
        print!("unflushed-marker ");
    }
    let mut code = EXIT_OK;
    for run in 1..=opts.runs {
        let result = builder(opts).run(|worker| serve(worker, &listener, opts));
        if prefork::is_child() {
            // `run` must never return in a worker.
            complain(format!(
                "fixture: BUG: run returned in worker {}",
                std::process::id()
            ));
            std::process::exit(EXIT_BROKEN);
        }
        if !report::result(&result) {
            code = EXIT_ERR;
        }
        report::children();
        report_state(&format!("after{run}"));
    }
    code
}

fn report_state(label: &str) {
    let me = std::process::id();
    let field = |name| procfs::sigset_field(me, name).unwrap_or(u64::MAX);
    say(format!(
        "state {label} fds={} sigblk={:x} sigign={:x} sigcgt={:x} chld={}",
        procfs::fd_count(me).unwrap_or(usize::MAX),
        field("SigBlk"),
        field("SigIgn"),
        field("SigCgt"),
        chld_action(),
    ));
}

/// This process's `SIGCHLD` action: `ign`, `dfl` or `handler`, with `+nocldwait` if its
/// flags have `SA_NOCLDWAIT` (which `/proc` does not show).
fn chld_action() -> String {
    // SAFETY: an all-zero sigaction is a valid value to be overwritten.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries; `action` is writable.
    if unsafe { libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut action) } != 0 {
        return "unknown".to_owned();
    }
    let handler = match action.sa_sigaction {
        libc::SIG_IGN => "ign",
        libc::SIG_DFL => "dfl",
        _ => "handler",
    };
    let nocldwait = if action.sa_flags & libc::SA_NOCLDWAIT != 0 {
        "+nocldwait"
    } else {
        ""
    };
    format!("{handler}{nocldwait}")
}

/// The configured `Prefork`, its hooks reporting every event.
fn builder(opts: &Opts) -> Prefork {
    let mut p = Prefork::new();
    if let Some(n) = opts.workers {
        p = p.workers(n);
    }
    if let Some(d) = opts.grace {
        p = p.shutdown_grace(d);
    }
    if let Some(d) = opts.interval {
        p = p.recover_interval(d);
    }
    if let Some(n) = opts.threshold {
        p = p.recover_threshold(n);
    }
    let fail = opts.fail_hook.clone().unwrap_or_default();
    let self_term = opts.self_term;

    let spawn_fail = fail.clone();
    let mut spawns = 0;
    p = p.on_child_spawn(move |_slot, pid| {
        report::spawned(pid);
        spawns += 1;
        match spawn_fail.as_str() {
            "spawn_err" if spawns == 2 => {
                Err(format!("fixture: spawn hook refuses pid {pid}").into())
            }
            "spawn_panic" if spawns == 2 => panic!("fixture: spawn hook panics on pid {pid}"),
            _ => Ok(()),
        }
    });

    let ready_fail = fail.clone();
    p = p.on_master_ready(move |workers| {
        report::ready(workers);
        match ready_fail.as_str() {
            "ready_err" => return Err("fixture: ready hook refuses".into()),
            "ready_panic" => panic!("fixture: ready hook panics"),
            "ready_thread" => {
                std::thread::spawn(|| {
                    loop {
                        std::thread::park();
                    }
                });
            }
            _ => {}
        }
        if self_term {
            // SAFETY: kill takes plain integers; the master blocks SIGTERM while it runs, so
            // this reaches its signalfd.
            unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        }
        Ok(())
    });

    let recover_fail = fail;
    p = p.on_child_recover(move |_slot, old, new| {
        report::recovered(old, new);
        if recover_fail == "recover_err" {
            return Err(format!("fixture: recover hook refuses {old} {new}").into());
        }
        Ok(())
    });

    p = p.on_child_exit(|slot, pid, how| {
        report::exited(slot, pid, how);
        Ok(())
    });

    if let Some(dir) = opts.death_dir.clone() {
        p = p.on_master_death(move || {
            let path = dir.join(std::process::id().to_string());
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path);
            match file {
                Ok(mut f) => {
                    let _ = f.write_all(b"ran\n");
                }
                Err(e) => complain(format!("fixture: cannot write {}: {e}", path.display())),
            }
        });
    }
    p
}

/// The worker's pid, for the signal handler.
static WORKER_PID: AtomicU32 = AtomicU32::new(0);

/// The worker: set up signals as asked, then serve the line protocol.
fn serve(worker: Worker, listener: &TcpListener, opts: &Opts) -> Result<(), String> {
    WORKER_PID.store(worker.pid(), Ordering::Relaxed);
    match opts.term {
        TermMode::Default => {}
        TermMode::Ignore => {
            // SAFETY: SIG_IGN is a valid disposition for SIGTERM.
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
        }
        TermMode::Catch => catch(libc::SIGTERM),
    }
    if opts.usr {
        catch(libc::SIGUSR1);
        catch(libc::SIGUSR2);
    }
    match opts.start {
        StartMode::Serve => {}
        StartMode::Panic => panic!("fixture: worker {} panics at start", worker.id()),
        StartMode::Exit0 => return Ok(()),
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let Some(command) = answer(stream, worker) else {
            continue;
        };
        match command.as_str() {
            "" | "id" => {}
            "panic" => panic!("fixture: worker {} panics on request", worker.id()),
            "err" => return Err(format!("fixture: worker {} fails on request", worker.id())),
            "ok" => return Ok(()),
            "fatal" => worker.exit_fatal("fixture: fatal on request"),
            "orphan" => make_orphan(),
            "chld" => say(format!("chld {} {}", worker.pid(), chld_action())),
            other => complain(format!("fixture: unknown command {other:?}")),
        }
    }
    Ok(())
}

/// Reads the command line, answers `ID PID MASTER_PID IS_CHILD` and closes the connection
/// (before acting on the command, so the client sees the answer even if the worker then
/// dies).
fn answer(stream: TcpStream, worker: Worker) -> Option<String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line).ok()? == 0 {
        return None;
    }
    let answer = format!(
        "{} {} {} {}\n",
        worker.id(),
        worker.pid(),
        worker.master_pid(),
        prefork::is_child()
    );
    (&stream).write_all(answer.as_bytes()).ok()?;
    drop(stream);
    Some(line.trim().to_owned())
}

/// Leaves an orphan behind: forks a child that forks a grandchild and exits at once. The
/// grandchild waits until it is adopted (by the nearest subreaper, or init), reports
/// `orphan PID PPID` and exits, to be reaped by whoever adopted it.
fn make_orphan() {
    // SAFETY: the worker is single-threaded (this command is only used without
    // on_master_death, whose watcher thread would be the only other one).
    let middle = unsafe { libc::fork() };
    if middle == 0 {
        let me = std::process::id() as libc::pid_t;
        // SAFETY: a forked copy of a single-threaded process is single-threaded.
        let grandchild = unsafe { libc::fork() };
        if grandchild == 0 {
            let deadline = Instant::now() + Duration::from_secs(20);
            // SAFETY: getppid has no preconditions.
            while unsafe { libc::getppid() } == me && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            // SAFETY: getppid has no preconditions.
            let parent = unsafe { libc::getppid() };
            write_raw(format!("orphan {} {parent}\n", std::process::id()).as_bytes());
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(0) }
        }
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(0) }
    }
    if middle > 0 {
        // SAFETY: waitpid with a null status pointer only reaps our own child.
        unsafe { libc::waitpid(middle, std::ptr::null_mut(), 0) };
    }
}

/// Installs [`report_signal`] as the handler of `signal` (with `SA_RESTART`).
fn catch(signal: libc::c_int) {
    // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = report_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action` is a valid sigaction whose handler only makes async-signal-safe
    // calls; the old action is not asked for.
    unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
}

/// Signal handler: writes `sig SIGNO PID` to stdout with one `write(2)`. Formats by hand
/// into a stack buffer, since nothing that allocates or locks is async-signal-safe.
extern "C" fn report_signal(signal: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno, always valid.
    let errno = unsafe { *libc::__errno_location() };
    let mut buf = [0u8; 40];
    let mut len = 0;
    for part in [
        Part::Text(b"sig "),
        Part::Num(signal as u32),
        Part::Text(b" "),
        Part::Num(WORKER_PID.load(Ordering::Relaxed)),
        Part::Text(b"\n"),
    ] {
        match part {
            Part::Text(t) => {
                buf[len..len + t.len()].copy_from_slice(t);
                len += t.len();
            }
            Part::Num(mut n) => {
                let mut digits = [0u8; 10];
                let mut k = digits.len();
                loop {
                    k -= 1;
                    digits[k] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                let d = &digits[k..];
                buf[len..len + d.len()].copy_from_slice(d);
                len += d.len();
            }
        }
    }
    write_raw(&buf[..len]);
    // SAFETY: as above; restores the errno the interrupted code may be about to read.
    unsafe { *libc::__errno_location() = errno };
}

enum Part {
    Text(&'static [u8]),
    Num(u32),
}
