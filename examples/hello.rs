//! A preforked HTTP/1.1 "hello" server on `std::net`, with a graceful drain.
//!
//! ```text
//! cargo run --release --example hello -- --workers 4 --addr 127.0.0.1:8080 [--mode exec] [--reuseport]
//! curl http://127.0.0.1:8080/              # Hello from worker 2 (pid 12345)
//! curl http://127.0.0.1:8080/slow?ms=1500  # answers after 1.5 s
//!
//! cargo run --release --example hello -- --addr 127.0.0.1:8080 --addr unix:/tmp/hello.sock --unix-mode 660
//! curl --unix-socket /tmp/hello.sock http://localhost/
//! ```
//!
//! `--addr` may be given more than once: TCP addresses, `unix:PATH` and `unix:@NAME` (a Unix
//! domain socket, at a path or in the abstract namespace), mixed. `--unix-mode OCTAL` sets the
//! mode of the socket files (default: what the umask leaves). Every worker serves every
//! listener `serve` hands it, with the same code for TCP and Unix ([`prefork::Listener`],
//! [`prefork::Stream`]), and each connection on a thread of its own, so one worker serves
//! many keep-alive connections at once. Each
//! answer names the worker's slot and pid, after a greeting taken from the `HELLO_GREETING`
//! environment variable (default `Hello`): a deploy that sets it shows, answer by answer,
//! when a binary upgrade (`kill -USR2 <master>`) has handed over to the new program.
//!
//! With `--run` the program binds the socket itself, a TCP address or `unix:PATH` (or takes
//! the one an old master or systemd handed it, [`prefork::inherited_sockets`]) and calls
//! [`prefork::Prefork::run`], as a program that manages its own sockets does; fork mode
//! only. A program that binds its own Unix socket owns the file: the master neither removes
//! it nor sets its mode (`--unix-mode` is refused with `--run`), and it is left behind when
//! the program exits, as std's `UnixListener` leaves it; remove it before the next start.
//!
//! `--grace SECS` sets how long the master waits for a draining worker before KILL (default
//! 5 s), `--upgrade-timeout SECS` how long a new master started by `USR2` gets to be ready
//! (default 60 s), `--upgrade-probation SECS` how long the old master of an upgrade waits,
//! its workers gone, for a rollback (`hello ctl rollback`, or SIGHUP to the old master) before
//! it exits (default 0: no probation).
//!
//! `--control PATH` opens the master's control socket at `PATH`, `--pid-file PATH` writes the
//! master's pid there once it serves. `hello ctl --control PATH COMMAND` is the control
//! socket's client: it sends `status`, `metrics`, `reload`, `upgrade`, `rollback`, `scale N`
//! or `stop`, prints the master's reply (one line of JSON) when the outcome is known, and
//! exits 0 when the reply says `"ok":true`, 1 otherwise (so `ExecReload=hello ctl --control
//! /run/hello.sock upgrade` makes `systemctl reload` fail when the upgrade was rolled back).
//!
//! Ctrl-C (SIGINT) or SIGTERM to the master stops every worker gracefully: each worker takes
//! its shutdown notice ([`prefork::Worker::shutdown`]), stops accepting, serves the
//! connections already queued, lets in-flight requests finish (answered with
//! `connection: close`), closes idle keep-alive connections, and exits 0; the master then
//! exits 0.

use std::io::{self, Read, Write};
use std::net::{Shutdown as Direction, TcpListener};
use std::os::unix::net::UnixListener;
use std::process::ExitCode;

use prefork::{Listener, Stream};
use std::time::Duration;

/// How long a connection may wait for the rest of a request once the drain has begun.
const DRAIN_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a connection closed by the drain waits for the client to close its side.
const LINGER: Duration = Duration::from_millis(500);
/// Stack of a connection thread: the handler needs little.
const THREAD_STACK: usize = 64 * 1024;

fn main() -> ExitCode {
    log::set_logger(&StderrLogger).expect("no other logger is installed");
    log::set_max_level(log::LevelFilter::Info);

    if std::env::args().nth(1).as_deref() == Some("ctl") {
        return ctl(std::env::args().skip(2));
    }
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(msg) => {
            eprintln!(
                "hello: {msg}\nusage: hello [--workers N] [--addr HOST:PORT|unix:PATH]... [--unix-mode OCTAL] [--mode fork|exec|auto] [--network tcp|tcp4|tcp6] [--reuseport] [--run] [--grace SECS] [--upgrade-timeout SECS] [--upgrade-probation SECS] [--control PATH] [--pid-file PATH]\n       hello ctl --control PATH status|metrics|reload|upgrade|rollback|scale N|stop"
            );
            return ExitCode::from(2);
        }
    };
    let mut prefork = prefork::Prefork::new()
        .mode(args.mode)
        .network(args.network)
        .reuseport(args.reuseport);
    if let Some(grace) = args.grace {
        prefork = prefork.shutdown_grace(grace);
    }
    if let Some(probation) = args.upgrade_probation {
        prefork = prefork.upgrade_probation(probation);
    }
    if let Some(timeout) = args.upgrade_timeout {
        prefork = prefork.upgrade_timeout(timeout);
    }
    if let Some(n) = args.workers {
        prefork = prefork.workers(n);
    }
    if let Some(mode) = args.unix_mode {
        prefork = prefork.unix_mode(mode);
    }
    if let Some(path) = &args.control {
        prefork = prefork.control_socket(path);
    }
    if let Some(path) = &args.pid_file {
        prefork = prefork.pid_file(path);
    }
    let result = if args.run {
        own_socket(&args.addrs[0]).and_then(|listener| {
            let listeners = [listener];
            prefork
                .run(|worker| serve_worker(&listeners, worker))
                .map_err(io::Error::other)
        })
    } else {
        for addr in &args.addrs {
            prefork = prefork.listen(addr);
        }
        // The master binds every address (and logs each one's actual address). In exec mode
        // each worker re-runs this program and, inside serve, takes its listeners from fds
        // 3.. and serves: the same code path for master and worker.
        prefork
            .serve(|listeners, worker| {
                let listeners: Vec<Listener> = listeners.into_iter().map(|(_, l)| l).collect();
                serve_worker(&listeners, worker)
            })
            .map_err(io::Error::other)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello: {e}");
            ExitCode::from(1)
        }
    }
}

/// `hello ctl --control PATH COMMAND...`: one request to the master's control socket; prints
/// the reply; exit 0 when it is ok, 1 when not, 2 for a usage error.
fn ctl(mut args: impl Iterator<Item = String>) -> ExitCode {
    let usage =
        "usage: hello ctl --control PATH status|metrics|reload|upgrade|rollback|scale N|stop";
    let mut path = None;
    let mut words = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--control" => path = args.next(),
            _ => words.push(arg),
        }
    }
    let (Some(path), false) = (path, words.is_empty()) else {
        eprintln!("hello ctl: {usage}");
        return ExitCode::from(2);
    };
    match prefork::control::request_line(&path, &words.join(" ")) {
        Ok(line) => {
            println!("{line}");
            // The reply's first two fields say it (docs/protocol.md): no JSON parser needed.
            if prefork::control::reply_ok(&line) == Some(true) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("hello ctl: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--run`: the socket an old master (binary upgrade) or systemd handed this process, else
/// `addr` bound here: a TCP address, or `unix:PATH`, a Unix socket whose file this program
/// then owns (it is not removed when the program exits; a file already at the path makes
/// the bind fail with "address in use").
fn own_socket(addr: &str) -> io::Result<Listener> {
    if let Some((_, inherited)) = prefork::inherited_sockets()
        .map_err(io::Error::other)?
        .into_iter()
        .next()
    {
        return Ok(inherited);
    }
    let bound = match addr.strip_prefix("unix:") {
        Some(path) => UnixListener::bind(path).map(Listener::Unix),
        None => TcpListener::bind(addr).map(Listener::Tcp),
    };
    bound.map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))
}

/// One worker: accepts on every listener (one thread each) until the master asks it to
/// stop, each connection on a thread of its own, then drains.
fn serve_worker(listeners: &[Listener], worker: prefork::Worker) -> io::Result<()> {
    // From here on TERM starts a drain instead of ending the worker at once.
    let shutdown = worker.shutdown();
    let greeting = std::env::var("HELLO_GREETING").unwrap_or_else(|_| "Hello".to_owned());
    let greeting = greeting.as_str();
    for listener in listeners {
        let addr = listener.local_addr()?;
        println!("worker {} serving http://{addr}", worker.id());
    }
    // The scopes join every connection thread: the worker returns once the last
    // connection is done.
    std::thread::scope(|scope| {
        for listener in listeners {
            scope.spawn(move || accept_loop(listener, worker, shutdown, greeting));
        }
    });
    Ok(())
}

/// Accepts on `listener`, each connection on a thread of its own, until the drain.
fn accept_loop(
    listener: &Listener,
    worker: prefork::Worker,
    shutdown: prefork::Shutdown,
    greeting: &str,
) {
    std::thread::scope(|scope| {
        // Ends on the notice, after the connections already queued.
        for stream in shutdown.incoming(listener) {
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    log::warn!("accept: {e}");
                    continue;
                }
            };
            let spawned = std::thread::Builder::new()
                .stack_size(THREAD_STACK)
                .spawn_scoped(scope, move || {
                    if let Err(e) = serve_connection(stream, worker, shutdown, greeting) {
                        log::debug!("connection: {e}");
                    }
                });
            if let Err(e) = spawned {
                log::warn!("cannot start a connection thread: {e}");
            }
        }
    });
}

/// Answers every request on one connection until the client closes it, or until the drain
/// finds it idle.
fn serve_connection(
    mut stream: Stream,
    worker: prefork::Worker,
    shutdown: prefork::Shutdown,
    greeting: &str,
) -> io::Result<()> {
    let hello = format!(
        "{greeting} from worker {} (pid {})\n",
        worker.id(),
        worker.pid()
    );
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut answered = 0u64;
    loop {
        // Answer every complete request head already received (pipelining included).
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let body = match target(&head) {
                ("/slow", query) => {
                    let ms = slow_ms(query);
                    println!("worker {}: slow request, {ms} ms", worker.id());
                    std::thread::sleep(Duration::from_millis(ms));
                    format!("slept {ms} ms in worker {}\n", worker.id())
                }
                _ => hello.clone(),
            };
            // Once the drain has begun, this is the connection's last answer.
            let close = request_wants_close(&head) || shutdown.is_requested();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{body}",
                body.len(),
                if close { "connection: close\r\n" } else { "" },
            );
            stream.write_all(response.as_bytes())?;
            answered += 1;
            if close {
                return Ok(());
            }
        }
        if !shutdown.is_requested() {
            // Wait for bytes or for the drain, whichever comes first.
            if !shutdown.readable(&stream)? {
                continue;
            }
        } else if buf.is_empty() && answered > 0 {
            // Idle keep-alive connection, and the drain has begun: close it, unless the next
            // request has already arrived.
            match read_waiting(&mut stream, &mut chunk) {
                Some(0) => return Ok(()),
                Some(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
                None => {
                    linger_close(stream);
                    return Ok(());
                }
            }
        } else {
            // A request under way (or the first one of a connection taken from the queue):
            // it gets a short while to arrive.
            stream.set_read_timeout(Some(DRAIN_READ_TIMEOUT))?;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
}

/// Reads what is waiting on the connection, without blocking: `Some(n)` bytes read (0 at
/// end-of-file), `None` when nothing is waiting.
fn read_waiting(stream: &mut Stream, chunk: &mut [u8]) -> Option<usize> {
    stream.set_nonblocking(true).ok()?;
    let read = stream.read(chunk);
    let _ = stream.set_nonblocking(false);
    read.ok()
}

/// Closes a connection the client may still write to: send our FIN first, then read and
/// discard until the client closes its side (or briefly), so that a request crossing the
/// close is met by end-of-file, which a client retries, rather than a reset.
fn linger_close(mut stream: Stream) {
    let _ = stream.shutdown(Direction::Write);
    let _ = stream.set_read_timeout(Some(LINGER));
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

/// The request target of a head, split into path and query.
fn target(head: &str) -> (&str, Option<&str>) {
    let target = head.split(' ').nth(1).unwrap_or("/");
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

/// The `ms` parameter of `/slow?ms=N` (default 1000, at most 60 000).
fn slow_ms(query: Option<&str>) -> u64 {
    query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .min(60_000)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether the client asked for the connection to end after this answer (HTTP/1.0 without
/// keep-alive, or `connection: close`).
fn request_wants_close(head: &str) -> bool {
    let head = head.to_ascii_lowercase();
    let http10 = head.lines().next().is_some_and(|l| l.ends_with("http/1.0"));
    http10 && !head.contains("connection: keep-alive") || head.contains("connection: close")
}

struct Args {
    workers: Option<usize>,
    addrs: Vec<String>,
    unix_mode: Option<u32>,
    mode: prefork::Mode,
    network: prefork::Network,
    reuseport: bool,
    run: bool,
    grace: Option<Duration>,
    upgrade_timeout: Option<Duration>,
    upgrade_probation: Option<Duration>,
    control: Option<String>,
    pid_file: Option<String>,
}

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut out = Args {
            workers: None,
            addrs: Vec::new(),
            unix_mode: None,
            mode: prefork::Mode::Fork,
            network: prefork::Network::Tcp4,
            reuseport: false,
            run: false,
            grace: None,
            upgrade_timeout: None,
            upgrade_probation: None,
            control: None,
            pid_file: None,
        };
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--workers" | "-w" => {
                    let v = value("--workers")?;
                    out.workers = Some(
                        v.parse()
                            .map_err(|_| format!("bad --workers value {v:?}"))?,
                    );
                }
                "--addr" | "-a" => out.addrs.push(value("--addr")?),
                "--unix-mode" => {
                    let v = value("--unix-mode")?;
                    out.unix_mode =
                        Some(u32::from_str_radix(&v, 8).map_err(|_| {
                            format!("bad --unix-mode value {v:?} (octal, e.g. 660)")
                        })?);
                }
                "--mode" => {
                    out.mode = match value("--mode")?.as_str() {
                        "fork" => prefork::Mode::Fork,
                        "exec" => prefork::Mode::Exec,
                        "auto" => prefork::Mode::Auto,
                        v => return Err(format!("bad --mode value {v:?} (fork, exec or auto)")),
                    }
                }
                "--network" => {
                    out.network = match value("--network")?.as_str() {
                        "tcp" => prefork::Network::Tcp,
                        "tcp4" => prefork::Network::Tcp4,
                        "tcp6" => prefork::Network::Tcp6,
                        v => return Err(format!("bad --network value {v:?} (tcp, tcp4 or tcp6)")),
                    }
                }
                "--reuseport" => out.reuseport = true,
                "--run" => out.run = true,
                "--grace" => out.grace = Some(seconds("--grace", &value("--grace")?)?),
                "--upgrade-timeout" => {
                    let v = value("--upgrade-timeout")?;
                    out.upgrade_timeout = Some(seconds("--upgrade-timeout", &v)?);
                }
                "--upgrade-probation" => {
                    let v = value("--upgrade-probation")?;
                    out.upgrade_probation = Some(seconds("--upgrade-probation", &v)?);
                }
                "--control" => out.control = Some(value("--control")?),
                "--pid-file" => out.pid_file = Some(value("--pid-file")?),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if out.addrs.is_empty() {
            out.addrs.push("127.0.0.1:8080".to_owned());
        }
        if out.run && (out.reuseport || out.mode == prefork::Mode::Exec || out.addrs.len() > 1) {
            return Err(
                "--run binds one socket and forks: one --addr, no --reuseport, no --mode exec"
                    .into(),
            );
        }
        if out.run && out.unix_mode.is_some() {
            return Err(
                "--unix-mode sets the mode of the sockets the master binds, not with --run: \
                 the program that binds its own socket sets its mode"
                    .into(),
            );
        }
        if out.run && out.addrs[0].starts_with("unix:@") {
            return Err("--run binds a Unix socket at a path (unix:PATH), not unix:@NAME".into());
        }
        Ok(out)
    }
}

/// A duration in seconds (fractions allowed), from 0 to one hour.
fn seconds(name: &str, v: &str) -> Result<Duration, String> {
    match v.parse::<f64>() {
        Ok(secs) if (0.0..=3600.0).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("bad {name} value {v:?} (seconds, 0 to 3600)")),
    }
}

/// A minimal logger: level, pid and message on stderr, a line at a time.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            // One write per line: the master, its workers (and, during a binary upgrade, a
            // second master) share stderr, and a line written in pieces would interleave.
            let line = format!("[{} {}] {}\n", record.level(), own_pid(), record.args());
            let _ = io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// This process's id for the log lines: `getpid(2)`, or where a sandbox refuses it (then it
/// returns -1 or -38, which `std::process::id` shows as a number near `u32::MAX`), the
/// number `/proc/self` links to, as the library itself falls back.
fn own_pid() -> u32 {
    let id = std::process::id();
    if id <= i32::MAX as u32 {
        return id;
    }
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse().ok())
        .unwrap_or(id)
}
