//! The fixture role: this binary, started by the driver with `PREFORK_FIXTURE=listen`, runs
//! `Prefork::listen_and_serve` configured by `FX_*` environment variables and reports what
//! happens on stdout, one line per event, flushed at once.
//!
//! In exec mode the master re-executes this same binary (same arguments, same environment
//! plus `FASTHTTP_PREFORK_CHILD=1` and `PREFORK_WORKER_ID`): the worker runs this same code,
//! which reaches `listen_and_serve` and becomes a worker there.
//!
//! | line | printed by | when |
//! |---|---|---|
//! | `master PID` | master | at start |
//! | `spawn PID` | `on_child_spawn` | every worker start |
//! | `ready PID…` | `on_master_ready` | pids in slot order |
//! | `recover OLD NEW` | `on_child_recover` | |
//! | `exit SLOT PID HOW` | `on_child_exit` | `HOW`: `Code(0)`, `Signal(9)`, … |
//! | `serving ID PID PORT INODE` | worker | `serve` starts: its slot, pid, the listener's port and socket inode |
//! | `result ok` / `result err DISPLAY` + `debug DEBUG` | master | `listen_and_serve` returned |
//! | `children N` | master | its children (zombies included) after `listen_and_serve` |
//! | `end CODE` | master | last line before it exits with CODE |
//! | `child-result err DISPLAY` + `child-debug DEBUG` | exec worker | `listen_and_serve` failed in a worker |
//!
//! Workers serve a line protocol: the client sends one command line, the worker answers
//! `ID PID INODE[ EXTRA]`, then closes the connection. The command is `[hold] [env
//! NAME[,NAME…]]` (`id` or anything else: just answer): with `hold` the worker keeps the
//! connection until the client closes it, so that the next connection goes to another
//! worker; with `env`, EXTRA is ` NAME=VALUE` or ` NAME unset` for each name, from the
//! worker's live environment.
//!
//! Options: `FX_MODE=fork|exec|auto`, `FX_NETWORK=tcp|tcp4|tcp6`, `FX_REUSEPORT=1`,
//! `FX_WORKERS=N`, `FX_ADDR` (default `127.0.0.1:0`), `FX_THREAD=1` (a thread that does not
//! block any signal runs before `listen_and_serve`), `FX_GRACE_MS`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use prefork::{Mode, Network, Prefork, Worker};

/// Every option variable, so the driver can clear them from the environment it passes on.
pub const OPTION_VARS: &[&str] = &[
    "FX_MODE",
    "FX_NETWORK",
    "FX_REUSEPORT",
    "FX_WORKERS",
    "FX_ADDR",
    "FX_THREAD",
    "FX_GRACE_MS",
];

/// Exit code of a master whose `listen_and_serve` returned `Ok`.
pub const EXIT_OK: i32 = 0;
/// Exit code of a master (or worker) whose `listen_and_serve` returned `Err`.
pub const EXIT_ERR: i32 = 2;
/// Exit code of a fixture that was misconfigured.
const EXIT_BROKEN: i32 = 98;

struct Opts {
    mode: Mode,
    network: Network,
    reuseport: bool,
    workers: Option<usize>,
    addr: String,
    thread: bool,
    grace: Option<Duration>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Opts {
    fn from_env() -> Result<Opts, String> {
        let mode = match var("FX_MODE").as_deref() {
            None | Some("fork") => Mode::Fork,
            Some("exec") => Mode::Exec,
            Some("auto") => Mode::Auto,
            Some(other) => return Err(format!("bad FX_MODE {other:?}")),
        };
        let network = match var("FX_NETWORK").as_deref() {
            None | Some("tcp4") => Network::Tcp4,
            Some("tcp") => Network::Tcp,
            Some("tcp6") => Network::Tcp6,
            Some(other) => return Err(format!("bad FX_NETWORK {other:?}")),
        };
        let workers = var("FX_WORKERS")
            .map(|v| v.parse().map_err(|_| format!("bad FX_WORKERS {v:?}")))
            .transpose()?;
        let grace = var("FX_GRACE_MS")
            .map(|v| v.parse().map_err(|_| format!("bad FX_GRACE_MS {v:?}")))
            .transpose()?
            .map(Duration::from_millis);
        Ok(Opts {
            mode,
            network,
            reuseport: var("FX_REUSEPORT").is_some(),
            workers,
            addr: var("FX_ADDR").unwrap_or_else(|| "127.0.0.1:0".to_owned()),
            thread: var("FX_THREAD").is_some(),
            grace,
        })
    }
}

/// Prints one report line with one `write`, so lines from the master and its workers (who
/// share the pipe) never interleave, and nothing stays buffered across a fork.
pub fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{}\n", line.as_ref()).as_bytes());
    let _ = out.flush();
}

/// Prints one line on stderr with one `write`, so lines from several processes do not
/// interleave.
fn complain(line: impl AsRef<str>) {
    let _ = std::io::stderr().write_all(format!("{}\n", line.as_ref()).as_bytes());
}

/// Runs the fixture named by `scenario` and exits. Must be the first thing `main` does.
pub fn main(scenario: &str) -> ! {
    log::set_logger(&LOGGER).expect("no logger installed yet");
    log::set_max_level(log::LevelFilter::Debug);
    let code = match scenario {
        "listen" => match Opts::from_env() {
            Ok(opts) => listen(&opts),
            Err(e) => {
                complain(format!("fixture: {e}"));
                EXIT_BROKEN
            }
        },
        other => {
            complain(format!("fixture: unknown scenario {other:?}"));
            EXIT_BROKEN
        }
    };
    if !prefork::is_child() {
        say(format!("end {code}"));
    }
    std::process::exit(code)
}

fn listen(opts: &Opts) -> i32 {
    // Decided before listen_and_serve: in a worker it never returns unless it fails.
    let child = prefork::is_child();
    if opts.thread {
        // A thread that lives until the process exits and blocks no signal (it inherits
        // the main thread's mask, empty here): the kernel may deliver a process-directed
        // signal to it.
        // Wait until it runs: a thread starts with every signal blocked until its start-up
        // code restores the inherited mask.
        let (started, running) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = started.send(());
            loop {
                std::thread::park();
            }
        });
        let _ = running.recv();
    }
    if !child {
        say(format!("master {}", std::process::id()));
    }
    let result = builder(opts).listen_and_serve(&opts.addr, serve);
    if child || prefork::is_child() {
        // Only a failing worker gets here (a forked worker never returns).
        match result {
            Ok(()) => say("child-result ok"),
            Err(e) => {
                say(format!("child-result err {e}"));
                say(format!("child-debug {e:?}"));
                complain(format!("fixture worker: {e}"));
            }
        }
        return EXIT_ERR;
    }
    let code = match result {
        Ok(()) => {
            say("result ok");
            EXIT_OK
        }
        Err(e) => {
            say(format!("result err {e}"));
            say(format!("debug {e:?}"));
            complain(format!("fixture: {e}"));
            EXIT_ERR
        }
    };
    say(format!("children {}", children(std::process::id())));
    code
}

/// How many children (zombies included) `pid` has, by scanning every process's parent.
fn children(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| crate::procfs::stat(p).is_some_and(|s| s.ppid == pid))
        .count()
}

/// The configured `Prefork`, its hooks reporting every event.
fn builder(opts: &Opts) -> Prefork {
    let mut p = Prefork::new()
        .mode(opts.mode)
        .network(opts.network)
        .reuseport(opts.reuseport);
    if let Some(n) = opts.workers {
        p = p.workers(n);
    }
    if let Some(g) = opts.grace {
        p = p.shutdown_grace(g);
    }
    p.on_child_spawn(|pid| {
        say(format!("spawn {pid}"));
        Ok(())
    })
    .on_master_ready(|pids| {
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        say(format!("ready {}", list.join(" ")));
        Ok(())
    })
    .on_child_recover(|old, new| {
        say(format!("recover {old} {new}"));
        Ok(())
    })
    .on_child_exit(|slot, pid, how| {
        say(format!("exit {slot} {pid} {how:?}"));
        Ok(())
    })
}

/// The socket inode of `listener`, from `/proc/self/fd`.
fn inode_of(listener: &TcpListener) -> u64 {
    std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd()))
        .ok()
        .and_then(|t| crate::procfs::socket_inode(&t.to_string_lossy()))
        .unwrap_or(0)
}

/// The worker: report, then serve the line protocol.
fn serve(listener: TcpListener, worker: Worker) -> Result<(), String> {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let inode = inode_of(&listener);
    say(format!(
        "serving {} {} {port} {inode}",
        worker.id(),
        worker.pid()
    ));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        answer(stream, worker, inode);
    }
    Ok(())
}

/// Reads the command line, answers, acts on the command, closes the connection.
fn answer(stream: TcpStream, worker: Worker, inode: u64) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let mut line = String::new();
    match BufReader::new(&stream).read_line(&mut line) {
        Ok(n) if n > 0 => {}
        _ => return,
    }
    let mut words = line.split_whitespace().peekable();
    let hold = words.next_if_eq(&"hold").is_some();
    let mut extra = String::new();
    if words.next_if_eq(&"env").is_some() {
        for name in words.next().unwrap_or("").split(',') {
            match std::env::var(name) {
                Ok(v) => extra.push_str(&format!(" {name}={v}")),
                Err(_) => extra.push_str(&format!(" {name} unset")),
            }
        }
    }
    let reply = format!("{} {} {inode}{extra}\n", worker.id(), worker.pid());
    if (&stream).write_all(reply.as_bytes()).is_err() {
        return;
    }
    if hold {
        // Until the client closes (or a minute passes): this worker accepts nothing else.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
        let mut sink = [0u8; 64];
        while matches!((&stream).read(&mut sink), Ok(n) if n > 0) {}
    }
}

/// Logs to stderr as `[LEVEL pid] message`, for the driver to check and to show when a
/// test fails.
struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        complain(format!(
            "[{} {}] {}",
            record.level(),
            std::process::id(),
            record.args()
        ));
    }

    fn flush(&self) {}
}
