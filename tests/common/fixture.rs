//! The fixture role: this binary, started by the driver with `PREFORK_FIXTURE=master`, runs
//! a prefork master configured by `FX_*` environment variables and reports what happens on
//! stdout, one line per event, flushed at once:
//!
//! | line | printed by | when |
//! |---|---|---|
//! | `master PID` | master | at start |
//! | `port PORT` | master | the listener's port, before `run` |
//! | `state LABEL fds=N sigblk=X sigign=X sigcgt=X chld=ACTION` | master | before the first run (`before`), after run k (`afterK`) |
//! | `spawn PID` | `on_child_spawn` | every worker start |
//! | `ready PID…` | `on_master_ready` | pids in slot order |
//! | `recover OLD NEW` | `on_child_recover` | |
//! | `exit SLOT PID HOW` | `on_child_exit` | `HOW` is the `WorkerExit` debug form: `Code(101)`, `Signal(9)` |
//! | `result ok` / `result err DISPLAY` + `debug DEBUG` | master | after each run |
//! | `children N zombies Z` | master | the master's own children after each run |
//! | `end CODE` | master | last line before it exits with CODE (0: every run Ok, 2: an Err) |
//! | `sig SIGNO PID` | worker | its handler caught a signal (`FX_TERM=catch`, `FX_USR=1`) |
//! | `orphan PID PPID` | grandchild | an orphan left by the `orphan` command, once adopted |
//! | `chld PID ACTION` | worker | its `SIGCHLD` action (see `chld_action`) |
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
//!   the driver can make `fork` fail with `EAGAIN` (`pids.max`);
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

use super::procfs;

/// Every option variable, so the driver can clear them from its own environment.
pub const OPTION_VARS: &[&str] = &[
    "FX_WORKERS",
    "FX_GRACE_MS",
    "FX_INTERVAL_MS",
    "FX_THRESHOLD",
    "FX_TERM",
    "FX_USR",
    "FX_START",
    "FX_DEATH_DIR",
    "FX_FAIL_HOOK",
    "FX_THREAD",
    "FX_SUBREAPER",
    "FX_IGNORE_CHLD",
    "FX_RUNS",
    "FX_SELF_TERM",
    "FX_UNFLUSHED",
    "FX_NOCLDWAIT",
    "FX_PIDS_CGROUP",
    "FX_NO_PIDFD",
];

/// Exit code of a fixture whose every run returned `Ok`.
pub const EXIT_OK: i32 = 0;
/// Exit code of a fixture one of whose runs returned `Err`.
pub const EXIT_ERR: i32 = 2;
/// Exit code of a fixture that was misconfigured or saw the impossible.
const EXIT_BROKEN: i32 = 98;

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

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn parsed<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    var(name)
        .map(|v| v.parse().map_err(|_| format!("bad {name} value {v:?}")))
        .transpose()
}

impl Opts {
    fn from_env() -> Result<Opts, String> {
        let term = match var("FX_TERM").as_deref() {
            None => TermMode::Default,
            Some("ignore") => TermMode::Ignore,
            Some("catch") => TermMode::Catch,
            Some(other) => return Err(format!("bad FX_TERM {other:?}")),
        };
        let start = match var("FX_START").as_deref() {
            None => StartMode::Serve,
            Some("panic") => StartMode::Panic,
            Some("exit0") => StartMode::Exit0,
            Some(other) => return Err(format!("bad FX_START {other:?}")),
        };
        Ok(Opts {
            workers: parsed("FX_WORKERS")?,
            grace: parsed("FX_GRACE_MS")?.map(Duration::from_millis),
            interval: parsed("FX_INTERVAL_MS")?.map(Duration::from_millis),
            threshold: parsed("FX_THRESHOLD")?,
            term,
            usr: var("FX_USR").is_some(),
            start,
            death_dir: var("FX_DEATH_DIR").map(PathBuf::from),
            fail_hook: var("FX_FAIL_HOOK"),
            thread: var("FX_THREAD").is_some(),
            subreaper: var("FX_SUBREAPER").is_some(),
            pids_cgroup: var("FX_PIDS_CGROUP").map(PathBuf::from),
            no_pidfd: var("FX_NO_PIDFD").is_some(),
            ignore_chld: var("FX_IGNORE_CHLD").is_some(),
            runs: parsed("FX_RUNS")?.unwrap_or(1),
            self_term: var("FX_SELF_TERM").is_some(),
            unflushed: var("FX_UNFLUSHED").is_some(),
            nocldwait: var("FX_NOCLDWAIT").is_some(),
        })
    }
}

/// Prints one report line and flushes it, so the driver sees it at once and no buffered
/// bytes are left to be duplicated by the next fork.
fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

/// Runs the fixture named by `PREFORK_FIXTURE` and exits. Must be the first thing `main`
/// does, while the process is single-threaded.
pub fn main(scenario: &str) -> ! {
    log::set_logger(&LOGGER).expect("no logger installed yet");
    log::set_max_level(log::LevelFilter::Debug);
    die_with_driver();
    let code = match scenario {
        "master" => match Opts::from_env() {
            Ok(opts) => master(&opts),
            Err(e) => {
                eprintln!("fixture: {e}");
                EXIT_BROKEN
            }
        },
        other => {
            eprintln!("fixture: unknown scenario {other:?}");
            EXIT_BROKEN
        }
    };
    say(format!("end {code}"));
    std::process::exit(code)
}

/// The driver's pid, passed to the fixture so that it can tie its life to the driver's.
pub const DRIVER_PID_VAR: &str = "PREFORK_TEST_DRIVER_PID";

/// A fixture must not outlive its driver (killed by a test runner's timeout, say): it gets
/// SIGKILL when the driver dies, and its workers follow it as usual.
fn die_with_driver() {
    let Some(driver) = var(DRIVER_PID_VAR).and_then(|v| v.parse::<libc::pid_t>().ok()) else {
        return;
    };
    // SAFETY: PR_SET_PDEATHSIG takes the signal number as an integer argument.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != driver {
        // The driver died before the prctl took effect.
        std::process::exit(EXIT_BROKEN);
    }
}

/// The master: set up what the options ask for, run `Prefork` `runs` times, report.
fn master(opts: &Opts) -> i32 {
    say(format!("master {}", std::process::id()));
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fixture: bind: {e}");
            return EXIT_BROKEN;
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    say(format!("port {port}"));
    if let Some(dir) = &opts.pids_cgroup {
        if let Err(e) = std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()) {
            eprintln!("fixture: joining the pids cgroup {}: {e}", dir.display());
            return EXIT_BROKEN;
        }
    }
    if opts.subreaper {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
            eprintln!("fixture: PR_SET_CHILD_SUBREAPER failed");
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
            eprintln!("fixture: installing the seccomp filter: {e}");
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
            eprintln!(
                "fixture: BUG: run returned in worker {}",
                std::process::id()
            );
            std::process::exit(EXIT_BROKEN);
        }
        match result {
            Ok(()) => say("result ok"),
            Err(e) => {
                say(format!("result err {e}"));
                say(format!("debug {e:?}"));
                code = EXIT_ERR;
            }
        }
        let me = std::process::id();
        let children = procfs::children(me);
        let zombies = children.iter().filter(|(_, s)| s.is_dead()).count();
        say(format!("children {} zombies {zombies}", children.len()));
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
    p = p.on_child_spawn(move |pid| {
        say(format!("spawn {pid}"));
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
    p = p.on_master_ready(move |pids| {
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        say(format!("ready {}", list.join(" ")));
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
    p = p.on_child_recover(move |old, new| {
        say(format!("recover {old} {new}"));
        if recover_fail == "recover_err" {
            return Err(format!("fixture: recover hook refuses {old} {new}").into());
        }
        Ok(())
    });

    p = p.on_child_exit(|slot, pid, how| {
        say(format!("exit {slot} {pid} {how:?}"));
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
                Err(e) => eprintln!("fixture: cannot write {}: {e}", path.display()),
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
            other => eprintln!("fixture: unknown command {other:?}"),
        }
    }
    Ok(())
}

/// Reads the command line, answers `ID PID MASTER_PID IS_CHILD` and closes the connection (before acting on
/// the command, so the client sees the answer even if the worker then dies).
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

/// One `write(2)` to stdout, bypassing std's buffer.
fn write_raw(bytes: &[u8]) {
    // SAFETY: the pointer and length describe a live byte slice.
    unsafe { libc::write(1, bytes.as_ptr().cast(), bytes.len()) };
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

/// Logs to stderr as `[LEVEL pid] message`, for the driver to show when a test fails.
struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        eprintln!(
            "[{} {}] {}",
            record.level(),
            std::process::id(),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// Makes `pidfd_open` fail with `ENOSYS` in this process and its children, as it does on a
/// kernel before 5.3: a seccomp filter that returns that error for the one system call.
fn deny_pidfd_open() -> std::io::Result<()> {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let filter = [
        // Load the system call number (offset 0 of struct seccomp_data).
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        // pidfd_open? Fall through to ENOSYS; otherwise skip to ALLOW.
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_pidfd_open as u32,
        },
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes an integer flag.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `prog` points to a valid filter program that outlives the call (the kernel
    // copies it).
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
