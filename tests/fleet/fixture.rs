//! The `fleet` fixture of `tests/fleet.rs`: this binary, started by a test with
//! `PREFORK_FIXTURE=fleet`, runs a prefork master (`Prefork::listen_and_serve` on
//! `127.0.0.1:0`, fork or exec mode) with the options for long-running fleets set by `FX_*`
//! variables, and reports what happens on stdout, one line per event: the lines every
//! fixture shares (`master`, `spawn`, `ready`, `recover`, `exit`, `result`/`debug`,
//! `children`, `end`; see `support/report.rs`) and these:
//!
//! | line | printed by | when |
//! |---|---|---|
//! | `comm LABEL NAME` | master | its own name (`/proc/self/comm`) before `run` (`before`) and after it (`after`) |
//! | `serving ID PID PORT` | worker | `serve` starts |
//! | `status SERVING IN_SERVICE RESTARTS SLOT=PID/READY/RESTARTS/CAUSE/LASTPID/FORK/MAXFORK…` | `on_status` | the status changed; `-` for none, `r` for ready, causes with `_` for spaces, fork durations in ns |
//! | `mark N` | worker | the `mark N` command (also on stderr) |
//!
//! Workers serve a line protocol on the listener: the client sends one command line, the
//! worker answers `ID PID REST` and closes the connection, then acts on the command:
//!
//! * `id`: nothing more (`REST` is empty);
//! * `hang K`: the worker of slot K stops its heartbeats and blocks for good, as a hung
//!   event loop does (`REST` is `hung`); a worker of another slot answers `not-me`;
//! * `alloc BYTES`: allocates and touches that many bytes, and keeps them;
//! * `setuid0`: `REST` is what `setuid(0)` did: `ok`, or the error's name (`EPERM`);
//! * `mark N`: prints `mark N` on stdout and on stderr (so the test knows that everything
//!   written to either pipe before is read).
//!
//! Options (unset means the library's default, or nothing done): the builder's, as every
//! fixture maps them (`FX_WORKERS`, `FX_GRACE_MS`, `FX_THRESHOLD`, `FX_MODE`,
//! `FX_TIMEOUT_MS`, `FX_LIFETIME_MS`, `FX_RSS_BYTES`, `FX_AFFINITY=1`, `FX_USER`,
//! `FX_GROUP`, `FX_NAMES=0`; see `support::fixture::Options`), and these:
//!
//! * `FX_BEAT_MS=N`: workers call `Worker::heartbeat` before they accept anything, then
//!   every N ms on a thread of their own until they hang; `FX_SILENT_SLOT=K`: the worker of
//!   slot K never does;
//! * `FX_CPUS=A,B,…`: the master pins itself to those CPUs before `run`;
//! * `FX_MASTER_USER=NAME`: the master itself drops to that user before `run`;
//! * `FX_ADDR`: the address to listen on (default `127.0.0.1:0`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prefork::{Prefork, Status, Worker};

use crate::support::fixture::{EXIT_BROKEN, EXIT_ERR, EXIT_OK, Options, parsed, var};
use crate::support::report::{self, complain, say};

/// The fixture's role (the value of `PREFORK_FIXTURE`).
pub const ROLE: &str = "fleet";

/// Set when the worker hangs: its heartbeat thread stops beating.
static HUNG: AtomicBool = AtomicBool::new(false);

struct Opts {
    /// The builder's options.
    prefork: Options,
    beat: Option<Duration>,
    silent_slot: Option<usize>,
    cpus: Option<Vec<usize>>,
    master_user: Option<String>,
    addr: String,
}

impl Opts {
    fn from_env() -> Result<Opts, String> {
        let ms = |name| parsed::<u64>(name).map(|v| v.map(Duration::from_millis));
        let cpus = match var("FX_CPUS") {
            None => None,
            Some(list) => Some(
                list.split(',')
                    .map(|c| c.parse().map_err(|_| format!("bad FX_CPUS {list:?}")))
                    .collect::<Result<Vec<usize>, String>>()?,
            ),
        };
        Ok(Opts {
            prefork: Options::from_env()?,
            beat: ms("FX_BEAT_MS")?,
            silent_slot: parsed("FX_SILENT_SLOT")?,
            cpus,
            master_user: var("FX_MASTER_USER"),
            addr: var("FX_ADDR").unwrap_or_else(|| "127.0.0.1:0".to_owned()),
        })
    }
}

/// The `fleet` role: configure, run, report. `EXIT_OK` when the run returned `Ok`,
/// `EXIT_ERR` otherwise.
pub fn fleet() -> i32 {
    let opts = match Opts::from_env() {
        Ok(o) => o,
        Err(e) => {
            complain(format!("fixture: {e}"));
            return EXIT_BROKEN;
        }
    };
    let worker = prefork::is_child();
    if !worker {
        report::master();
        if let Err(e) = prepare_master(&opts) {
            complain(format!("fixture: {e}"));
            return EXIT_BROKEN;
        }
        say(format!("comm before {}", comm()));
    }
    let result =
        builder(&opts).listen_and_serve(&opts.addr, |listener, w| serve(w, &listener, &opts));
    if prefork::is_child() {
        // Only an exec-mode worker whose protocol environment was unusable gets here.
        complain(format!("fixture: worker: {result:?}"));
        return EXIT_ERR;
    }
    let ok = report::result(&result);
    report::children();
    say(format!("comm after {}", comm()));
    if ok { EXIT_OK } else { EXIT_ERR }
}

/// What the master does to itself before `run`: its CPUs, its user.
fn prepare_master(opts: &Opts) -> Result<(), String> {
    if let Some(cpus) = &opts.cpus {
        // SAFETY: an all-zero cpu_set_t is an empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &c in cpus {
            // SAFETY: `set` is a valid cpu_set_t and CPU_SET bounds-checks `c`.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        // SAFETY: `set` is a valid cpu_set_t of the size passed.
        let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
        if r != 0 {
            return Err(format!(
                "sched_setaffinity {cpus:?}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    if let Some(name) = &opts.master_user {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| format!("looking up {name}: {e}"))?
            .ok_or_else(|| format!("no user {name}"))?;
        nix::unistd::setgroups(&[user.gid]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setgid(user.gid).map_err(|e| format!("setgid: {e}"))?;
        nix::unistd::setuid(user.uid).map_err(|e| format!("setuid: {e}"))?;
    }
    Ok(())
}

/// This process's name.
fn comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_else(|e| format!("unreadable({e})"))
}

/// The configured `Prefork`: the shared options and hooks, and a status reporter.
fn builder(opts: &Opts) -> Prefork {
    opts.prefork.builder().on_status(|status| {
        say(status_line(status));
        Ok(())
    })
}

/// `status SERVING IN_SERVICE RESTARTS SLOT=PID/READY/RESTARTS/CAUSE/LASTPID/FORK/MAXFORK…`.
fn status_line(status: &Status) -> String {
    let mut line = format!(
        "status {} {} {}",
        status.serving(),
        status.in_service(),
        status.restarts()
    );
    for s in status.slots() {
        let dash = || "-".to_owned();
        let ns = |d: Option<Duration>| d.map_or_else(dash, |d| d.as_nanos().to_string());
        line.push_str(&format!(
            " {}={}/{}/{}/{}/{}/{}/{}",
            s.slot,
            s.pid.map_or_else(dash, |p| p.to_string()),
            if s.ready { "r" } else { "-" },
            s.restarts,
            s.last_exit
                .map_or_else(dash, |e| e.cause.to_string().replace(' ', "_")),
            s.last_exit.map_or_else(dash, |e| e.pid.to_string()),
            ns(s.last_fork()),
            ns(s.max_fork()),
        ));
    }
    line
}

/// The worker: heartbeats on a thread of its own (with `FX_BEAT_MS`), the line protocol on
/// the listener until the master asks it to drain.
fn serve(worker: Worker, listener: &TcpListener, opts: &Opts) -> std::io::Result<()> {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    say(format!("serving {} {} {port}", worker.id(), worker.pid()));
    let shutdown = worker.shutdown();
    if let Some(every) = opts.beat.filter(|_| opts.silent_slot != Some(worker.id())) {
        // The first one before any command can make the worker hang.
        worker.heartbeat();
        std::thread::spawn(move || {
            while !HUNG.load(Ordering::Relaxed) {
                worker.heartbeat();
                if shutdown.wait_timeout(every) {
                    break;
                }
            }
        });
    }
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for stream in shutdown.incoming(listener) {
        let Ok(stream) = stream else { continue };
        if let Some(more) = answer(stream, &worker) {
            kept.push(more);
        }
    }
    Ok(())
}

/// Reads one command, answers it, and acts on it; returns memory to keep (`alloc`).
fn answer(mut stream: TcpStream, worker: &Worker) -> Option<Vec<u8>> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 256];
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    let line = String::from_utf8_lossy(&buf[..len]).trim().to_owned();
    let (command, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
    let hangs = command == "hang" && arg.parse() == Ok(worker.id());
    let rest = match command {
        "hang" if hangs => "hung".to_owned(),
        "hang" => "not-me".to_owned(),
        "setuid0" => {
            // SAFETY: setuid takes a plain integer.
            if unsafe { libc::setuid(0) } == 0 {
                "ok".to_owned()
            } else {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EPERM) => "EPERM".to_owned(),
                    other => format!("errno{other:?}"),
                }
            }
        }
        _ => String::new(),
    };
    let _ = stream.write_all(format!("{} {} {rest}\n", worker.id(), worker.pid()).as_bytes());
    drop(stream);
    match command {
        "hang" if hangs => {
            HUNG.store(true, Ordering::Relaxed);
            // A hung event loop: never returns (the master kills the process).
            loop {
                std::thread::park();
            }
        }
        "alloc" => {
            let bytes: usize = arg.parse().unwrap_or(0);
            let mut v = vec![0u8; bytes];
            // Touch every page, so it is resident.
            for i in (0..v.len()).step_by(4096) {
                v[i] = 1;
            }
            Some(std::hint::black_box(v))
        }
        "mark" => {
            say(format!("mark {arg}"));
            complain(format!("mark {arg}"));
            None
        }
        _ => None,
    }
}
