//! A pre-fork process supervisor for Linux servers.
//!
//! Bind your listening socket, then call [`fork_workers`] (or configure a [`Prefork`]) while
//! the process is still single-threaded. The master `fork()`s N worker processes that run
//! your `serve` closure directly (no re-exec: everything loaded before the fork is shared
//! copy-on-write), then sleeps in one `epoll_wait` over a `signalfd` and one pidfd per
//! worker. A worker's exit or a signal wakes it at once; an idle master makes no wake-ups.
//!
//! ```no_run
//! use std::io::Write;
//! use std::net::TcpListener;
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let listener = TcpListener::bind("127.0.0.1:8080")?;
//!     prefork::Prefork::new()
//!         .workers(4)                                        // default: available_parallelism()
//!         .recover_threshold(20)                             // crash-loop guard (default 2 × workers, ≥ 10)
//!         .recover_window(std::time::Duration::from_secs(60)) // window the threshold counts in
//!         .recover_interval(std::time::Duration::from_millis(100)) // pause before a respawn (default 0)
//!         .shutdown_grace(std::time::Duration::from_secs(10)) // TERM -> KILL (default 5 s)
//!         .on_child_spawn(|slot, pid| { log::info!("worker {slot} is pid {pid}"); Ok(()) })
//!         .on_child_recover(|slot, old, new| { log::warn!("worker {slot}: {old} replaced by {new}"); Ok(()) })
//!         .run(|worker| -> std::io::Result<()> {
//!             // Drain on the master's TERM: stop accepting, finish, return.
//!             let shutdown = worker.shutdown();
//!             for stream in shutdown.incoming(&listener) {
//!                 writeln!(stream?, "worker {} (pid {})", worker.id(), worker.pid())?;
//!             }
//!             Ok(())
//!         })?;
//!     Ok(())
//! }
//! ```
//!
//! # What the master does
//!
//! * **Respawns** a worker that exits or crashes, in the same slot ([`Worker::id`]), after
//!   [`Prefork::recover_interval`]. Workers that fail to boot (exit before they are inside
//!   `serve`, or by themselves just after) more than [`Prefork::recover_threshold`] times
//!   within [`Prefork::recover_window`] stop everything with [`Error::OverRecovery`]; a worker
//!   that served and was then killed is always replaced. A worker that exits with
//!   [`EXIT_FATAL`] (a start-up failure that a respawn cannot fix) stops everything with
//!   [`Error::WorkerFatal`].
//! * **Stops gracefully** on `SIGTERM` or `SIGINT`: every worker drains (see below), KILL
//!   after [`Prefork::shutdown_grace`], reap all, and [`Prefork::run`] returns `Ok(())`.
//! * **Never leaves orphans**: a worker is killed the moment the master dies
//!   (`PR_SET_PDEATHSIG`), or runs [`Prefork::on_master_death`] instead.
//!
//! # Draining
//!
//! A worker that calls [`Worker::shutdown`] learns of the master's stop request (a graceful
//! stop, its slot's turn in a rolling restart, a scale-down) and can drain: stop accepting,
//! finish what it accepted, close idle keep-alive connections, return from `serve`.
//! [`Shutdown::incoming`] is an accept loop that ends on the request, for std code; the
//! [`Shutdown`] descriptor fits poll, epoll and async runtimes. The master asks a worker to
//! drain only when its replacement, if any, is inside `serve`, and keeps the listening
//! sockets open meanwhile, so no request the kernel accepted is lost.
//!
//! # Signals
//!
//! | Signal to the master | Effect |
//! |---|---|
//! | `TERM`, `INT` | Graceful stop: workers drain, KILL after the grace period; `run` returns `Ok(())`. |
//! | second `TERM`/`INT` | KILL every worker at once. |
//! | `HUP` | Rolling restart: each slot's new worker starts, then the old one drains. |
//! | `TTIN` / `TTOU` | One worker more / one less. |
//! | `USR1` | Forwarded to every worker. |
//! | `USR2` | Binary upgrade: a new master from the program's path takes over the sockets. |
//! | `KILL` | Workers die with the master (PDEATHSIG) or run `on_master_death`. |
//!
//! Every detail is in the signal table of the operations guide, `docs/operations.md` in the
//! source package.
//!
//! # The control socket
//!
//! With [`Prefork::control_socket`] the same changes are asked for on a Unix socket, and each
//! request is answered when its outcome is known: `reload` once every slot has a new worker
//! serving, `upgrade` with the new master's pid once it serves (or why it was rolled back),
//! `scale N` once N workers serve, and `status`, `metrics` and `stop` at once. See
//! [`control`] and `docs/protocol.md`.
//!
//! # Fork safety
//!
//! `fork` copies only the calling thread. A lock held by any other thread at that moment
//! stays locked forever in the child, so [`Prefork::run`] refuses to fork when the process
//! has more than one thread ([`Error::NotSingleThreaded`]): call it before starting threads,
//! thread pools or async runtimes (start those inside `serve`, one per worker). Hooks run in
//! the master and must not start threads either; the master checks after each one.
//!
//! Inside a worker, the signal mask and dispositions are those the process had before `run`
//! (std's `SIGPIPE` ignore included), and none of the master's descriptors is open.
//!
//! # Listeners, exec mode, systemd
//!
//! [`Prefork::listen_and_serve`] binds the address in the master (a busy port is an error
//! before anything forks) and hands every worker its listener: one shared socket, or with
//! [`Prefork::reuseport`] one `SO_REUSEPORT` socket per slot that the master keeps open, so
//! connections queued on a dead worker's socket wait for its replacement. Under systemd
//! socket activation (`LISTEN_PID`/`LISTEN_FDS`) it serves the inherited socket instead.
//!
//! For Unix domain sockets and several listeners, [`Prefork::listen`] and
//! [`Prefork::listen_named`] (TCP, `unix:/run/app.sock`, `unix:@name`, mixed) with
//! [`Prefork::serve`], whose workers get every [`Listener`] by name ([`Listeners`]); a
//! [`Listener`] accepts a [`Stream`] of either kind, and [`Shutdown::incoming`] drains
//! either kind:
//!
//! ```no_run
//! use std::io::Write;
//!
//! prefork::Prefork::new()
//!     .listen("127.0.0.1:8080")
//!     .listen_named("admin", "unix:/run/app/admin.sock")
//!     .unix_mode(0o660)
//!     .serve(|listeners, worker| {
//!         let shutdown = worker.shutdown();
//!         std::thread::scope(|scope| {
//!             for (name, listener) in listeners {
//!                 scope.spawn(move || {
//!                     for stream in shutdown.incoming(&listener).flatten() {
//!                         let mut stream = stream;
//!                         let _ = writeln!(stream, "{name}: worker {}", worker.id());
//!                     }
//!                 });
//!             }
//!         });
//!     })?;
//! # Ok::<(), prefork::Error>(())
//! ```
//!
//! [`Mode::Exec`] re-executes the binary for every worker with Go fasthttp's child protocol
//! (`FASTHTTP_PREFORK_CHILD=1`, listener on fd 3, plus `PREFORK_WORKER_ID`): it works when
//! the process already runs threads, and a worker built on this crate runs under a fasthttp
//! master as well. In such a worker `listen_and_serve` (or `run`) serves directly.
//! [`Mode::Auto`] forks when it can and execs otherwise.
//!
//! # Which mode?
//!
//! | | fork ([`Mode::Fork`], the default) | exec ([`Mode::Exec`]) |
//! |---|---|---|
//! | start of a worker | `fork()`, then `serve` runs at once | `fork()` + `execve` of the binary: `main` runs again, `listen_and_serve`/`run` see `FASTHTTP_PREFORK_CHILD=1` and call `serve` |
//! | memory | everything loaded before the fork (configuration, caches, code) is shared copy-on-write | each worker loads its own copy |
//! | address-space layout | the same in every worker (one ASLR draw for all) | re-randomised per worker |
//! | threads before `run` | refused ([`Error::NotSingleThreaded`]): start runtimes inside `serve` | allowed: the master may already run threads |
//! | start-up cost | a fork | a fork, an exec and the program's own start-up |
//! | foreign masters | no | a worker runs under Go fasthttp's master, and a fasthttp child under ours |
//!
//! [`Mode::Auto`] forks when the process is single-threaded and execs otherwise.
//!
//! | | one shared listener (the default) | [`Prefork::reuseport`]: one `SO_REUSEPORT` socket per slot |
//! |---|---|---|
//! | balance across workers | whoever accepts first: uneven with keep-alive connections (the busiest worker can serve several times the idlest's share) | the kernel hashes each connection to a slot: even |
//! | a worker dies or is replaced | the queue is shared: the other workers take its connections | the master keeps the slot's socket open: its queue waits for the replacement, nothing is reset |
//! | a slot is removed (TTOU) | nothing to move | new connections are steered away first, then the worker drains its queue |
//! | accept contention | every worker polls the one socket | none |
//!
//! Both keep every queued connection through restarts, scale-downs, stops and upgrades.
//! `docs/benchmarks.md` in the source package has throughput, latency and balance figures.
//!
//! # Long-running fleets
//!
//! Options that cost nothing while unset (no thread, no timer):
//!
//! * [`Prefork::worker_timeout`] with [`Worker::heartbeat`]: a worker whose heartbeat stops
//!   (a hung event loop) is killed, logged as stuck, and replaced. A heartbeat is one atomic
//!   store of a vDSO clock reading into memory shared with the master; only workers that
//!   beat at least once are judged.
//! * [`Prefork::max_worker_lifetime`] (with a per-worker jitter of up to a tenth) and
//!   [`Prefork::max_worker_rss`]: recycling, as a rolling restart replaces a worker (the new
//!   one serves first), never counted as a crash.
//! * [`Prefork::cpu_affinity`]: worker k pinned to the k-th CPU the master may run on.
//! * [`Prefork::user`] and [`Prefork::group`]: workers drop to an unprivileged user after
//!   the master bound the sockets, with `PR_SET_NO_NEW_PRIVS`; a worker that cannot drop
//!   refuses to serve and stops the master.
//! * Process names `prefork wK` and `prefork master` ([`Prefork::worker_names`] turns them
//!   off).
//! * A [`Status`] per slot (pid, start time, restarts, last exit and its [`ExitCause`]),
//!   handed to [`Prefork::on_status`], logged, and sent to systemd as `STATUS=` whenever it
//!   changes.
//!
//! The operations guide (`docs/operations.md`) has the details, and `docs/security.md` what a
//! compromised worker can and cannot do, with and without `user`.
//!
//! # Backends
//!
//! On kernels before 5.3 (no pidfds) the same loop runs on `SIGCHLD` through the signalfd and
//! `waitid(P_ALL, WNOHANG)`; [`Backend::Sigchld`] or `PREFORK_BACKEND=sigchld` selects it
//! explicitly.

#![warn(missing_docs)]
#![deny(unsafe_code)]

#[cfg(test)]
mod readme {
    /// The crate docs' first example is the README's "The API in brief": one text, checked.
    #[test]
    fn crate_example_is_the_readme_one() {
        let readme = include_str!("../README.md");
        let section = &readme[readme.find("## The API in brief").expect("the section")..];
        let start = section.find("```rust\n").expect("a rust block") + "```rust\n".len();
        let from_readme = &section[start..start + section[start..].find("```").unwrap()];
        let lib = include_str!("lib.rs");
        let docs: String = lib
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| format!("{}\n", l.strip_prefix("//! ").unwrap_or(&l[3..])))
            .collect();
        let start = docs.find("```no_run\n").expect("a no_run block") + "```no_run\n".len();
        let from_docs = &docs[start..start + docs[start..].find("```").unwrap()];
        assert_eq!(from_docs, from_readme);
    }
}

mod builder;
mod child;
mod config;
pub mod control;
mod error;
mod exit;
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
mod listen;
mod listener;
mod master;
pub mod protocol;
mod supervisor;
mod sys;
mod worker;

use std::process::Termination;

pub use builder::Prefork;
pub use config::{
    BACKEND_ENV, Backend, DEFAULT_RECOVER_WINDOW, DEFAULT_SHUTDOWN_GRACE, DEFAULT_UPGRADE_TIMEOUT,
    ExitCause, HookResult, LastExit, Mode, SlotStatus, Status,
};
pub use error::Error;
pub use exit::{CountedExit, EXIT_FATAL, EXIT_PANIC, Signal, WorkerExit};
pub use listen::Network;
pub use listener::{ListenAddr, Listener, Listeners, Stream};
pub use worker::{Accept, Incoming, Shutdown, Worker};

/// Forks `n` workers that each run `serve`, and supervises them until `SIGTERM`/`SIGINT`.
///
/// Shorthand for `Prefork::new().workers(n).run(serve)`; see [`Prefork::run`].
pub fn fork_workers<F, T>(n: usize, serve: F) -> Result<(), Error>
where
    F: FnMut(Worker) -> T,
    T: Termination,
{
    Prefork::new().workers(n).run(serve)
}

/// The listening sockets this process was handed by socket activation, for a program that
/// binds its own sockets and calls [`Prefork::run`] or [`fork_workers`]: from the old master
/// of a binary upgrade (`USR2`), or from systemd. Empty when there are none.
///
/// A `run` master hands every listening TCP socket it holds to the new program on `USR2`
/// (in the order of its descriptor numbers). A program that takes them here, and binds only
/// when there are none, is upgraded without refusing a connection:
///
/// ```no_run
/// use std::net::TcpListener;
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let listener = match prefork::inherited_listeners()?.into_iter().next() {
///         Some(inherited) => inherited,
///         None => TcpListener::bind("127.0.0.1:8080")?,
///     };
///     prefork::fork_workers(4, |worker| {
///         // serve `listener` (see `Worker::shutdown` for the drain)
///         let _ = (&listener, worker);
///     })?;
///     Ok(())
/// }
/// ```
///
/// Each socket is checked to be a listening TCP socket and made close-on-exec; sockets from
/// systemd are also made blocking, those from an old master are left as they are (its
/// draining workers may still be accepting on them). `LISTEN_PID`, `LISTEN_FDS` and
/// `LISTEN_FDNAMES` are removed from the environment, so call it once, before any thread
/// starts. [`Prefork::listen_and_serve`] does all this itself.
///
/// # Errors
///
/// [`Error::InvalidEnv`] for malformed variables, [`Error::InheritedListener`] for a
/// descriptor that is not a listening TCP socket (a Unix socket among them included: take
/// those with [`inherited_sockets`]).
pub fn inherited_listeners() -> Result<Vec<std::net::TcpListener>, Error> {
    let mut out = Vec::new();
    for (i, (_, socket)) in inherited_sockets()?.into_iter().enumerate() {
        match socket {
            Listener::Tcp(l) => out.push(l),
            _ => {
                return Err(Error::InheritedListener {
                    fd: protocol::LISTEN_FDS_START + i as i32,
                    reason: "a Unix stream socket, where inherited_listeners returns TCP \
                             listeners only: take it with inherited_sockets"
                        .to_owned(),
                });
            }
        }
    }
    Ok(out)
}

/// The listening sockets this process was handed by socket activation, as
/// [`inherited_listeners`], of either kind (TCP or Unix stream sockets), each with its name
/// from `LISTEN_FDNAMES` (`unknown` where systemd gave none; an old master of a `run` program
/// names them `prefork`). Empty when there are none. A `run` master hands every listening
/// TCP and Unix stream socket it holds to the new program on `USR2`.
///
/// # Errors
///
/// As [`inherited_listeners`]: malformed variables, or a descriptor that is not a listening
/// TCP or Unix stream socket.
pub fn inherited_sockets() -> Result<Vec<(String, Listener)>, Error> {
    Ok(listen::systemd()?
        .map(|sockets| sockets.into_iter().map(|(s, name)| (name, s)).collect())
        .unwrap_or_default())
}

/// Whether this process is a worker started by a prefork master: a forked worker, or an
/// exec-mode worker (`FASTHTTP_PREFORK_CHILD=1` in its environment).
pub fn is_child() -> bool {
    sys::notice::armed() || std::env::var_os(protocol::CHILD_ENV).is_some_and(|v| v == "1")
}
