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
//! | `serving SLOT PID` | worker | in `serve` (the library reported it ready before), its signals set up as asked (with `FX_DRAIN`, the shutdown notice taken) |
//! | `drain PID` | worker | `FX_DRAIN`: the accept loop ended on the master's stop request |
//! | `drained PID` | worker | `FX_DRAIN`: the drain is over; `serve` returns `Ok` |
//! | `held PID` / `missed PID` | `on_child_spawn` | `FX_HOLD_NEW`: a worker started after the master was ready is stopped before it reported ready / was too late to stop |
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
//! * `chld`: reports its `SIGCHLD` action;
//! * `hold`: keeps the connection open (the worker, single-threaded, is busy) until the
//!   client closes it; the test holds a worker's drain back this way.
//!
//! Options (unset means the library's default, or nothing done): the builder's, as every
//! fixture maps them (`FX_WORKERS`, `FX_GRACE_MS`, `FX_INTERVAL_MS`, `FX_THRESHOLD`,
//! `FX_MODE`, `FX_REUSEPORT`, …; see `support::fixture::Options`), and these:
//!
//! * `FX_TERM=ignore|catch`: the workers' SIGTERM disposition;
//! * `FX_DRAIN=1`: workers ask for the shutdown notice (`Worker::shutdown`) and accept
//!   through `Shutdown::incoming`, so they drain on TERM and exit 0; with `FX_DRAIN_MS=N`
//!   the drain then takes N ms more (work still in progress: longer than the grace period,
//!   it is cut short by KILL);
//! * `FX_USR=1`: workers report USR1 and USR2;
//! * `FX_START=panic|exit0`: `serve` panics or returns at once;
//! * `FX_DEATH_DIR=DIR`: `on_master_death` appends a line to `DIR/PID`;
//! * `FX_FAIL_HOOK=spawn_err|spawn_panic|ready_err|ready_panic|recover_err|ready_thread`: a
//!   hook fails (`spawn_*` at the second spawn) or starts a thread;
//! * `FX_THREAD=1`: a thread runs before `run`;
//! * `FX_SUBREAPER=1`: the master is a child subreaper;
//! * `FX_NO_PIDFD=1`: a seccomp filter makes `pidfd_open` fail with `ENOSYS`, as on a
//!   kernel before 5.3;
//! * `FX_DENY=CALL=ERRNO,…`: a seccomp filter refuses those calls, as a sandbox's profile
//!   does (see `support::seccomp::Refusal` and its `CALLS`);
//! * `FX_ALLOWLIST=container`: a seccomp filter allows only the calls of
//!   `support::backend::CONTAINER` and refuses every other with `EPERM`, and `waitid` with
//!   `P_PIDFD` too, as a container engine's default profile of before the pidfd calls did
//!   (x86_64 only); these filters are installed by the master before `run` (with `FX_LISTEN`,
//!   before `listen_and_serve`, after `FX_MASTER_UID`), and exec-mode workers inherit them;
//! * `FX_PIDS_CGROUP=DIR`: the master moves itself into that pids cgroup before `run`, so
//!   the test can make `fork` fail with `EAGAIN` (`pids.max`);
//! * `FX_IGNORE_CHLD=1`, `FX_NOCLDWAIT=1`: SIGCHLD is ignored, or has `SA_NOCLDWAIT`, before
//!   `run`;
//! * `FX_RUNS=N`: `run` is called N times; with `FX_SELF_TERM=1` each run stops itself with
//!   a SIGTERM sent from `on_master_ready`;
//! * `FX_UNFLUSHED=1`: `unflushed-marker ` is left in stdout's buffer before `run` (so it
//!   prefixes the first `spawn` line);
//! * `FX_HOLD_NEW=1`: the spawn hook stops (SIGSTOP) every worker started after the master
//!   was ready, and reports `held PID` when it provably stopped it before it reported ready
//!   (the test resumes it with SIGCONT), `missed PID` otherwise (resumed at once); see
//!   [`hold_before_ready`];
//! * `FX_LATE_NOTICE=1`: each worker raises SIGTERM at itself before it asks for the
//!   shutdown notice, then asks, reports `late-notice PID REQUESTED READABLE` (1 or 0: what
//!   `is_requested` says, and whether the notice's descriptor polls readable), sends SIGTERM
//!   to the master and returns `Ok`;
//! * `FX_MASTER_FIRST=1`: the master (and so every worker) runs on one CPU only, and the
//!   master with real-time priority (workers start without it): a just-forked worker cannot
//!   run before the master sleeps, so `FX_HOLD_NEW` stops it before any of its code ran;
//! * `FX_LISTEN=1`: `listen_and_serve` on `127.0.0.1:0` instead of `run` (the library's own
//!   sockets: one shared, or one per slot with `FX_REUSEPORT=1`); each worker reports `port
//!   PORT` before `serving`, and the master none; with `FX_MODE=exec`, in exec mode (the
//!   workers re-execute this binary, which becomes a worker in `listen_and_serve`);
//! * `FX_MASTER_UID=ID`: the master drops root's privileges (groups, gid and uid `ID`)
//!   before it starts, so it and its workers run as that user, with sockets that user made.

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use prefork::{Prefork, Worker};

use crate::support::fixture::{
    EXIT_BROKEN, EXIT_ERR, EXIT_OK, Options, become_user, choice, flag, parsed, var,
};
use crate::support::procfs;
use crate::support::report::{self, complain, say, write_raw};
use crate::support::seccomp::{Refusal, allow_only, deny, deny_pidfd_open};

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
    /// The builder's options.
    prefork: Options,
    term: TermMode,
    drain: bool,
    drain_time: Option<Duration>,
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
    /// `FX_DENY`: the calls a seccomp filter refuses.
    deny: Vec<Refusal>,
    /// `FX_ALLOWLIST=container`: a container engine's allowlist of before the pidfd calls.
    container: bool,
    hold_new: bool,
    master_first: bool,
    late_notice: bool,
    /// `FX_LISTEN`: `listen_and_serve` instead of `run`.
    listen: bool,
    master_uid: Option<u32>,
}

impl Opts {
    fn from_env() -> Result<Opts, String> {
        use {StartMode as S, TermMode as T};
        Ok(Opts {
            prefork: Options::from_env()?,
            term: choice(
                "FX_TERM",
                &[("ignore", T::Ignore), ("catch", T::Catch)],
                T::Default,
            )?,
            drain: flag("FX_DRAIN"),
            drain_time: parsed("FX_DRAIN_MS")?.map(Duration::from_millis),
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
            deny: match var("FX_DENY") {
                None => Vec::new(),
                Some(list) => list
                    .split(',')
                    .map(|r| Refusal::parse(r).ok_or(format!("FX_DENY: unknown refusal {r:?}")))
                    .collect::<Result<_, _>>()?,
            },
            container: choice("FX_ALLOWLIST", &[("container", true)], false)?,
            ignore_chld: flag("FX_IGNORE_CHLD"),
            runs: parsed("FX_RUNS")?.unwrap_or(1),
            self_term: flag("FX_SELF_TERM"),
            unflushed: flag("FX_UNFLUSHED"),
            nocldwait: flag("FX_NOCLDWAIT"),
            hold_new: flag("FX_HOLD_NEW"),
            master_first: flag("FX_MASTER_FIRST"),
            late_notice: flag("FX_LATE_NOTICE"),
            listen: flag("FX_LISTEN"),
            master_uid: parsed("FX_MASTER_UID")?,
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
    if opts.listen {
        return listen_master(opts);
    }
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
    if let Err(e) = sandbox(opts) {
        complain(format!("fixture: installing the seccomp filter: {e}"));
        return EXIT_BROKEN;
    }
    if opts.master_first {
        if let Err(e) = run_before_children() {
            complain(format!("fixture: one CPU, real-time priority: {e}"));
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

/// `FX_LISTEN`: `listen_and_serve`, after dropping privileges if asked; the exit code. An
/// exec-mode worker runs this too, and only comes back if `listen_and_serve` failed.
fn listen_master(opts: &Opts) -> i32 {
    let child = prefork::is_child();
    if !child {
        report::master();
        if let Some(id) = opts.master_uid {
            if let Err(e) = become_user(id) {
                complain(format!("fixture: {e}"));
                return EXIT_BROKEN;
            }
        }
        // An exec-mode worker has its master's filters already: they survive exec.
        if let Err(e) = sandbox(opts) {
            complain(format!("fixture: installing the seccomp filter: {e}"));
            return EXIT_BROKEN;
        }
    }
    let result = builder(opts).listen_and_serve("127.0.0.1:0", |listener, worker| {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        say(format!("port {port}"));
        serve(worker, &listener, opts)
    });
    if child || prefork::is_child() {
        complain(format!("fixture worker: listen_and_serve: {result:?}"));
        return EXIT_ERR;
    }
    let ok = report::result(&result);
    report::children();
    if ok { EXIT_OK } else { EXIT_ERR }
}

/// The seccomp filters `FX_NO_PIDFD`, `FX_DENY` and `FX_ALLOWLIST` ask for, installed in
/// this process (and so in every child it starts from now on).
fn sandbox(opts: &Opts) -> std::io::Result<()> {
    if opts.no_pidfd {
        deny_pidfd_open()?;
    }
    if !opts.deny.is_empty() {
        deny(&opts.deny)?;
    }
    if opts.container {
        // The profiles allowed waitid in every form, P_PIDFD (Linux 5.4) included, but a
        // kernel of their day had none: refused as a sandbox that knows the form would.
        deny(&[Refusal::parse("waitid_pidfd=EPERM").expect("a known refusal")])?;
        container_allowlist()?;
    }
    Ok(())
}

/// `FX_ALLOWLIST=container`: [`allow_only`] the calls of `support::backend::CONTAINER`.
#[cfg(target_arch = "x86_64")]
fn container_allowlist() -> std::io::Result<()> {
    let numbers: Vec<libc::c_long> = crate::support::backend::CONTAINER
        .iter()
        .map(|&(_, nr)| nr)
        .collect();
    allow_only(&numbers)
}

#[cfg(not(target_arch = "x86_64"))]
fn container_allowlist() -> std::io::Result<()> {
    allow_only(&[])
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

/// The configured `Prefork` (the shared options, then this fixture's hooks, each of which
/// reports its event and may be asked to fail).
fn builder(opts: &Opts) -> Prefork {
    let mut p = opts.prefork.apply(Prefork::new());
    let fail = opts.fail_hook.clone().unwrap_or_default();
    let self_term = opts.self_term;

    // Set once the master is ready: the workers started after that are replacements.
    let master_ready = Rc::new(Cell::new(false));
    let hold_new = opts.hold_new;
    // What this process held before `run`: never the library's.
    let before_run = procfs::fd_targets(std::process::id());
    let spawn_ready = Rc::clone(&master_ready);
    let spawn_fail = fail.clone();
    let mut spawns = 0;
    p = p.on_child_spawn(move |_slot, pid| {
        report::spawned(pid);
        if hold_new && spawn_ready.get() {
            let held = hold_before_ready(pid, &before_run);
            say(format!("{} {pid}", if held { "held" } else { "missed" }));
        }
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
        master_ready.set(true);
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

/// `FX_HOLD_NEW`: stops the just-forked worker `pid` (SIGSTOP, from the spawn hook, in the
/// master) and tells whether it was stopped before it reported ready. Proof, read while the
/// master is still in this hook (so it has read nothing from its readiness pipe since the
/// fork): the stopped worker still holds an end of a pipe that `run` opened and whose two
/// ends the master holds (the readiness pipe; a worker closes it right after writing its
/// pid), and that pipe is empty.
/// Otherwise the worker is resumed at once and the answer is `false`.
fn hold_before_ready(pid: u32, before_run: &[String]) -> bool {
    let resume = || {
        // SAFETY: kill takes plain integers; `pid` is our unreaped child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
    };
    // SAFETY: kill takes plain integers; `pid` is our unreaped child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    // The stop takes effect when the child next runs (before any of its code, if it never
    // ran yet).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match procfs::stat(pid) {
            Some(s) if s.state == 'T' => break,
            Some(s) if !s.is_dead() && Instant::now() < deadline => {}
            _ => {
                resume();
                return false;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // The library's pipes: both ends held here, opened by `run` (not inherited).
    let fds = procfs::fds(std::process::id());
    let ends = |target: &String| fds.iter().filter(|(_, t)| t == target).count();
    let child = procfs::fd_targets(pid);
    let shared: Vec<i32> = fds
        .iter()
        .filter(|(_, t)| t.starts_with("pipe:") && !before_run.contains(t))
        .filter(|(_, t)| ends(t) == 2 && child.contains(t))
        .map(|(fd, _)| *fd)
        .collect();
    let empty = |fd: i32| {
        let mut n: libc::c_int = -1;
        // SAFETY: FIONREAD writes one int to the pointer given; `fd` is open in this process.
        let ret = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n as *mut libc::c_int) };
        ret == 0 && n == 0
    };
    let held = !shared.is_empty() && shared.iter().all(|&fd| empty(fd));
    if !held {
        resume();
    }
    held
}

/// `FX_MASTER_FIRST`: restricts this process (and the children it forks later) to the first
/// CPU it may run on, and gives it `SCHED_FIFO` priority 1 with `SCHED_RESET_ON_FORK`, so
/// that its children start with the normal policy: on that one CPU a child runs only when
/// the master sleeps.
fn run_before_children() -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is an empty set.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `allowed` is a writable cpu_set_t of `size` bytes.
    if unsafe { libc::sched_getaffinity(0, size, &mut allowed) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let max = libc::CPU_SETSIZE as usize;
    // SAFETY: CPU_ISSET reads the set for a CPU number below CPU_SETSIZE.
    let Some(cpu) = (0..max).find(|&c| unsafe { libc::CPU_ISSET(c, &allowed) }) else {
        return Err(std::io::Error::other("no CPU is allowed"));
    };
    // SAFETY: as above.
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes the set for a CPU number below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut one) };
    // SAFETY: `one` is a valid cpu_set_t of `size` bytes.
    if unsafe { libc::sched_setaffinity(0, size, &one) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let param = libc::sched_param { sched_priority: 1 };
    let policy = libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK;
    // SAFETY: `param` is a valid sched_param for SCHED_FIFO.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `FX_LATE_NOTICE`: a TERM that reaches the worker before it asks for the notice (its
/// handler is inherited from the master, the notice's pipe does not exist yet) must be
/// kept, and be on the pipe once the worker asks.
fn late_notice(worker: &Worker) -> Result<(), String> {
    use std::os::fd::{AsFd, AsRawFd};
    // SAFETY: raise has no preconditions; the handler runs before it returns.
    unsafe { libc::raise(libc::SIGTERM) };
    let shutdown = worker.shutdown();
    let mut pfd = libc::pollfd {
        fd: shutdown.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd on this frame; a zero timeout only looks.
    let readable = unsafe { libc::poll(&mut pfd, 1, 0) } == 1;
    say(format!(
        "late-notice {} {} {}",
        worker.pid(),
        u8::from(shutdown.is_requested()),
        u8::from(readable)
    ));
    // SAFETY: kill has no preconditions.
    unsafe { libc::kill(worker.master_pid() as i32, libc::SIGTERM) };
    Ok(())
}

/// The worker's pid, for the signal handler.
static WORKER_PID: AtomicU32 = AtomicU32::new(0);

/// The worker: sets up signals as asked, reports that it serves, then serves the line
/// protocol (through the shutdown notice's accept loop with `FX_DRAIN`).
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
    if opts.late_notice {
        return late_notice(&worker);
    }
    // Before the `serving` line: from then on, TERM means drain.
    let shutdown = opts.drain.then(|| worker.shutdown());
    say(format!("serving {} {}", worker.id(), worker.pid()));
    match opts.start {
        StartMode::Serve => {}
        StartMode::Panic => panic!("fixture: worker {} panics at start", worker.id()),
        StartMode::Exit0 => return Ok(()),
    }
    if let Some(shutdown) = shutdown {
        for stream in shutdown.incoming(listener) {
            let Ok(stream) = stream else { continue };
            if let Some(done) = act(stream, worker) {
                return done;
            }
        }
        say(format!("drain {}", worker.pid()));
        if let Some(work) = opts.drain_time {
            // Work still in progress when the stop came (a slow request, say).
            std::thread::sleep(work);
        }
        say(format!("drained {}", worker.pid()));
        return Ok(());
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if let Some(done) = act(stream, worker) {
            return done;
        }
    }
    Ok(())
}

/// Answers one connection and acts on its command; `Some` when `serve` is to return that.
fn act(stream: TcpStream, worker: Worker) -> Option<Result<(), String>> {
    let (stream, command) = answer(stream, worker)?;
    if command == "hold" {
        hold(stream);
        return None;
    }
    // Closed before acting, so the client sees the answer even if the worker then dies.
    drop(stream);
    match command.as_str() {
        "" | "id" => {}
        "panic" => panic!("fixture: worker {} panics on request", worker.id()),
        "err" => {
            return Some(Err(format!(
                "fixture: worker {} fails on request",
                worker.id()
            )));
        }
        "ok" => return Some(Ok(())),
        "fatal" => worker.exit_fatal("fixture: fatal on request"),
        "orphan" => make_orphan(),
        "chld" => say(format!("chld {} {}", worker.pid(), chld_action())),
        other => complain(format!("fixture: unknown command {other:?}")),
    }
    None
}

/// Keeps a connection until the client closes it (signals that interrupt the read, such as
/// the master's TERM caught by the shutdown notice, do not end it).
fn hold(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(None);
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Reads the command line and answers `ID PID MASTER_PID IS_CHILD`; returns the connection
/// and the command.
fn answer(stream: TcpStream, worker: Worker) -> Option<(TcpStream, String)> {
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
    Some((stream, line.trim().to_owned()))
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
