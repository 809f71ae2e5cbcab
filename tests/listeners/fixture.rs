//! The `listen` fixture of `tests/listeners.rs`: this binary, started by a test with
//! `PREFORK_FIXTURE=listen`, runs `Prefork::listen_and_serve` configured by `FX_*`
//! environment variables and reports what happens on stdout, one line per event, flushed at
//! once: the lines every fixture shares (`master`, `spawn`, `ready`, `recover`, `exit`,
//! `result`/`debug`, `children`, `end`; see `support/report.rs`) and these:
//!
//! | line | printed by | when |
//! |---|---|---|
//! | `serving ID PID PORT INODE FD BLOCKING` | worker | `serve` starts: its slot, pid, the listener's port, socket inode and descriptor, and `blocking` or `nonblocking` (`O_NONBLOCK` in `fcntl(F_GETFL)`) |
//! | `child-result err DISPLAY` + `child-debug DEBUG` | exec worker | `listen_and_serve` failed in a worker |
//!
//! In exec mode the master re-executes this same binary (same arguments, same environment
//! plus the child protocol's variables, `FASTHTTP_PREFORK_CHILD=1` among them; see
//! `docs/protocol.md`): the worker runs this same code,
//! which reaches `listen_and_serve` and becomes a worker there. A master exits 0 when
//! `listen_and_serve` returned `Ok`, 2 when it returned `Err`; so does a worker whose
//! `listen_and_serve` failed.
//!
//! Workers serve a line protocol: the client sends one command line, the worker answers
//! `ID PID INODE[ EXTRA]`, then closes the connection. The command is `[hold] [env
//! NAME[,NAME…]]` (`id` or anything else: just answer): with `hold` the worker keeps the
//! connection until the client closes it, so that the next connection goes to another
//! worker; with `env`, EXTRA is ` NAME=VALUE` or ` NAME unset` for each name, from the
//! worker's live environment.
//!
//! Options: the builder's, as every fixture maps them (`FX_MODE=fork|exec|auto`,
//! `FX_NETWORK=tcp|tcp4|tcp6`, `FX_REUSEPORT=1`, `FX_WORKERS=N`, `FX_GRACE_MS`, …; see
//! `support::fixture::Options`), and `FX_ADDR` (default `127.0.0.1:0`), `FX_THREAD=1` (a
//! thread that does not block any signal runs before `listen_and_serve`),
//! `FX_ACCEPT_ERRORS=fail` (`serve` returns the first error of `accept` as its own, as a
//! server that writes `stream?` does; by default a worker goes on accepting).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use prefork::Worker;

use crate::support::fixture::{EXIT_BROKEN, EXIT_ERR, EXIT_OK, Options, choice, flag, var};
use crate::support::procfs;
use crate::support::report::{self, complain, say};
use crate::support::seccomp::{Refusal, deny};

/// The fixture's role (the value of `PREFORK_FIXTURE`).
pub const ROLE: &str = "listen";

struct Opts {
    /// The builder's options.
    prefork: Options,
    addr: String,
    thread: bool,
    /// `serve` fails on the first `accept` error.
    accept_errors_fail: bool,
}

impl Opts {
    fn from_env() -> Result<Opts, String> {
        Ok(Opts {
            prefork: Options::from_env()?,
            addr: var("FX_ADDR").unwrap_or_else(|| "127.0.0.1:0".to_owned()),
            thread: flag("FX_THREAD"),
            accept_errors_fail: choice(
                "FX_ACCEPT_ERRORS",
                &[("fail", true), ("skip", false)],
                false,
            )?,
        })
    }
}

/// The `listen` role: `listen_and_serve` as the options say; the exit code.
pub fn listen() -> i32 {
    match Opts::from_env() {
        Ok(opts) => run(&opts),
        Err(e) => {
            complain(format!("fixture: {e}"));
            EXIT_BROKEN
        }
    }
}

fn run(opts: &Opts) -> i32 {
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
        report::master();
    }
    let fail = opts.accept_errors_fail;
    let result = opts
        .prefork
        .builder()
        .listen_and_serve(&opts.addr, |listener, worker| serve(listener, worker, fail));
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
    let ok = report::result(&result);
    if let Err(e) = &result {
        complain(format!("fixture: {e}"));
    }
    report::children();
    if ok { EXIT_OK } else { EXIT_ERR }
}

/// The socket inode of `listener`, from `/proc/self/fd`.
fn inode_of(listener: &TcpListener) -> u64 {
    std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd()))
        .ok()
        .and_then(|t| procfs::socket_inode(&t.to_string_lossy()))
        .unwrap_or(0)
}

/// `blocking` or `nonblocking`: whether `O_NONBLOCK` is set on `listener`
/// (`fcntl(F_GETFL)`), or `unknown`.
fn blocking_of(listener: &TcpListener) -> &'static str {
    // SAFETY: F_GETFL on a descriptor the listener owns; it takes no argument.
    let flags = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_GETFL) };
    match flags {
        -1 => "unknown",
        f if f & libc::O_NONBLOCK != 0 => "nonblocking",
        _ => "blocking",
    }
}

/// The worker: report, then serve the line protocol; with `fail`, until `accept` fails.
fn serve(listener: TcpListener, worker: Worker, fail: bool) -> Result<(), String> {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let inode = inode_of(&listener);
    say(format!(
        "serving {} {} {port} {inode} {} {}",
        worker.id(),
        worker.pid(),
        listener.as_raw_fd(),
        blocking_of(&listener),
    ));
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => answer(stream, worker, inode),
            Err(e) if fail => return Err(format!("fixture: worker {}: accept: {e}", worker.id())),
            Err(_) => {}
        }
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

// ---- The `serve` role --------------------------------------------------------------------

/// The role of the `serve` fixture: `Prefork::listen`/`listen_named` with `Prefork::serve`.
///
/// Options: the builder's (as above), `FX_LISTEN` (space-separated listeners, each `ADDR`
/// or `NAME=ADDR`, `ADDR` a TCP address or `unix:PATH` or `unix:@NAME`), `FX_UNIX_MODE`
/// (octal, `unix_mode`), `FX_UMASK` (octal, set before anything is bound) and `FX_DENY`
/// (`CALL=ERRNO,…`: a seccomp filter installed before anything is bound refuses those calls,
/// as in the processes suite; not with `FX_RUN`).
///
/// With `FX_RUN=1` the program owns its sockets, as one that calls `Prefork::run` does
/// (fork mode only: an exec-mode worker of `run` inherits none of the caller's sockets):
/// it takes `prefork::inherited_sockets()`, the sockets an old master handed it on `USR2`,
/// each named as that function names it; when there are none it binds `FX_LISTEN` itself,
/// a TCP address with std's `TcpListener::bind` and `unix:PATH` with std's
/// `UnixListener::bind` (no stale file policy, no mode: the library's are `listen`'s), each
/// named as with `listen`; then `run`, whose workers serve those sockets as below.
///
/// Lines, besides the shared ones: `listener ID PID NAME ADDR INODE` from each worker for
/// each listener (its name, `local_addr()` and socket inode), then `serving ID PID`;
/// `status-listeners NAME=ADDR …` from the master's first status (not with `FX_RUN`). Each
/// worker serves every listener (one thread each) with `Shutdown::incoming`, answering the
/// line protocol above with `ID PID NAME INODE`, and returns from `serve` once all have
/// drained.
pub const SERVE_ROLE: &str = "serve";

/// The `serve` role; the exit code.
pub fn serve_role() -> i32 {
    let prefork = match Options::from_env() {
        Ok(o) => o,
        Err(e) => {
            complain(format!("fixture: {e}"));
            return EXIT_BROKEN;
        }
    };
    if let Some(mask) = var("FX_UMASK") {
        let mask = u32::from_str_radix(&mask, 8).expect("FX_UMASK in octal");
        // SAFETY: umask(2) only sets the process's file mode creation mask.
        unsafe { libc::umask(mask as libc::mode_t) };
    }
    let child = prefork::is_child();
    if flag("FX_RUN") {
        if prefork.mode() != prefork::Mode::Fork {
            complain("fixture: FX_RUN is for fork mode only");
            return EXIT_BROKEN;
        }
        report::master();
        let listeners = match own_listeners() {
            Ok(l) => l,
            Err(e) => {
                complain(format!("fixture: {e}"));
                return EXIT_ERR;
            }
        };
        let result = prefork
            .builder()
            .run(|worker| serve_each(&listeners, worker));
        return finish(child, &result);
    }
    if !child {
        report::master();
        // An exec-mode worker has its master's filter already: it survives exec.
        if let Err(e) = sandbox() {
            complain(format!("fixture: FX_DENY: {e}"));
            return EXIT_BROKEN;
        }
    }
    let mut builder = prefork.builder();
    for entry in var("FX_LISTEN").unwrap_or_default().split_whitespace() {
        builder = match entry.split_once('=') {
            Some((name, addr)) => builder.listen_named(name, addr),
            None => builder.listen(entry),
        };
    }
    if let Some(mode) = var("FX_UNIX_MODE") {
        builder = builder.unix_mode(u32::from_str_radix(&mode, 8).expect("FX_UNIX_MODE in octal"));
    }
    let mut told = false;
    let builder = builder.on_status(move |status| {
        if !told {
            told = true;
            let all: Vec<String> = status
                .listeners()
                .iter()
                .map(|(name, addr)| format!("{name}={addr}"))
                .collect();
            say(format!("status-listeners {}", all.join(" ")));
        }
        Ok(())
    });
    let result = builder.serve(|listeners, worker| {
        let all: Vec<(String, prefork::Listener)> = listeners.into_iter().collect();
        serve_each(&all, worker)
    });
    finish(child, &result)
}

/// `FX_DENY=CALL=ERRNO,…`: a seccomp filter refuses those calls from here on, in the master
/// and every worker, as a sandbox's profile does (`support::seccomp::Refusal`).
fn sandbox() -> Result<(), String> {
    let Some(list) = var("FX_DENY") else {
        return Ok(());
    };
    let refusals = list
        .split(',')
        .map(|r| Refusal::parse(r).ok_or(format!("unknown refusal {r:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    deny(&refusals).map_err(|e| format!("installing the seccomp filter: {e}"))
}

/// The end of the `serve` role, in a master or a worker whose `serve` or `run` returned;
/// the exit code.
fn finish<E: std::fmt::Display + std::fmt::Debug>(child: bool, result: &Result<(), E>) -> i32 {
    if child || prefork::is_child() {
        if let Err(e) = result {
            say(format!("child-result err {e}"));
            say(format!("child-debug {e:?}"));
        }
        return EXIT_ERR;
    }
    let ok = report::result(result);
    if let Err(e) = result {
        complain(format!("fixture: {e}"));
    }
    report::children();
    if ok { EXIT_OK } else { EXIT_ERR }
}

/// `FX_RUN`: the sockets an old master handed this program, else `FX_LISTEN` bound here.
fn own_listeners() -> Result<Vec<(String, prefork::Listener)>, String> {
    let inherited = prefork::inherited_sockets().map_err(|e| format!("inherited_sockets: {e}"))?;
    if !inherited.is_empty() {
        return Ok(inherited);
    }
    var("FX_LISTEN")
        .unwrap_or_default()
        .split_whitespace()
        .map(|entry| {
            let (name, addr) = entry.split_once('=').unwrap_or((entry, entry));
            let listener = match addr.strip_prefix("unix:") {
                Some(path) => UnixListener::bind(path).map(prefork::Listener::from),
                None => TcpListener::bind(addr).map(prefork::Listener::from),
            };
            listener
                .map(|l| (name.to_owned(), l))
                .map_err(|e| format!("bind {addr}: {e}"))
        })
        .collect()
}

/// A worker of the `serve` role.
fn serve_each(listeners: &[(String, prefork::Listener)], worker: Worker) {
    let shutdown = worker.shutdown();
    let mut all = Vec::new();
    for (name, listener) in listeners {
        let addr = listener
            .local_addr()
            .map_or_else(|e| format!("error:{e}"), |a| a.to_string());
        let inode = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .ok()
            .and_then(|t| procfs::socket_inode(&t.to_string_lossy()))
            .unwrap_or(0);
        say(format!(
            "listener {} {} {name} {addr} {inode}",
            worker.id(),
            worker.pid()
        ));
        all.push((name, listener, inode));
    }
    say(format!("serving {} {}", worker.id(), worker.pid()));
    std::thread::scope(|scope| {
        for (name, listener, inode) in &all {
            scope.spawn(move || {
                for stream in shutdown.incoming(*listener).flatten() {
                    answer_stream(&stream, worker, &format!("{name} {inode}"));
                }
            });
        }
    });
}

/// Answers one connection of the `serve` role: `ID PID REST`, then closes it (with `hold`,
/// once the client closed).
fn answer_stream(stream: &prefork::Stream, worker: Worker, rest: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(n) if n > 0 => {}
        _ => return,
    }
    let reply = format!("{} {} {rest}\n", worker.id(), worker.pid());
    if (&mut &*stream).write_all(reply.as_bytes()).is_err() {
        return;
    }
    if line.starts_with("hold") {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
        let mut sink = [0u8; 64];
        while matches!((&mut &*stream).read(&mut sink), Ok(n) if n > 0) {}
    }
}
