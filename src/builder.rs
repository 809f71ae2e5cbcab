//! [`Prefork`]: the builder, its options and hooks, and its entry points (`run`, `serve`,
//! `listen_and_serve`); the options' validation and the plan handed to the master are in
//! `builder/plan.rs`.

use std::net::TcpListener;
use std::process::Termination;
use std::time::Duration;

use crate::child;
use crate::config::{
    Backend, DEFAULT_RECOVER_WINDOW, DEFAULT_SHUTDOWN_GRACE, DEFAULT_UPGRADE_TIMEOUT, HealthChecks,
    HookResult, Hooks, Mode, Operator, Status,
};
use crate::error::Error;
use crate::exit::WorkerExit;
use crate::listen::{self, Network, Spec};
use crate::listener::{Listener, Listeners, parse_unix};
use crate::master;
use crate::master::listeners::Listeners as Sockets;
use crate::worker::Worker;

mod plan;

/// A pre-fork supervisor, configured by its builder methods and started by [`Prefork::run`].
///
/// ```no_run
/// use std::io::Write;
/// use std::net::TcpListener;
/// use std::time::Duration;
///
/// let listener = TcpListener::bind("127.0.0.1:8080")?;
/// prefork::Prefork::new()
///     .workers(4)
///     .shutdown_grace(Duration::from_secs(10))
///     .on_child_spawn(|slot, pid| {
///         log::info!("worker {slot} started as pid {pid}");
///         Ok(())
///     })
///     .run(|worker| -> std::io::Result<()> {
///         for stream in listener.incoming() {
///             writeln!(stream?, "hello from worker {}", worker.id())?;
///         }
///         Ok(())
///     })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Prefork {
    workers: Option<usize>,
    recover_threshold: Option<usize>,
    recover_window: Duration,
    recover_interval: Duration,
    shutdown_grace: Duration,
    backend: Option<Backend>,
    mode: Mode,
    network: Network,
    reuseport: bool,
    upgrade_timeout: Duration,
    upgrade_probation: Duration,
    health: HealthChecks,
    cpu_affinity: bool,
    user: Option<String>,
    group: Option<String>,
    worker_names: bool,
    listeners: Vec<Spec>,
    unix_mode: Option<u32>,
    operator: Operator,
    hooks: Hooks,
}

impl Default for Prefork {
    fn default() -> Self {
        Prefork::new()
    }
}

impl std::fmt::Debug for Prefork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefork")
            .field("workers", &self.workers)
            .field("recover_threshold", &self.recover_threshold)
            .field("recover_window", &self.recover_window)
            .field("recover_interval", &self.recover_interval)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("backend", &self.backend)
            .field("mode", &self.mode)
            .field("network", &self.network)
            .field("reuseport", &self.reuseport)
            .field("upgrade_timeout", &self.upgrade_timeout)
            .field("upgrade_probation", &self.upgrade_probation)
            .field("health", &self.health)
            .field("cpu_affinity", &self.cpu_affinity)
            .field("user", &self.user)
            .field("group", &self.group)
            .field("worker_names", &self.worker_names)
            .field("listeners", &self.listeners)
            .field("unix_mode", &self.unix_mode)
            .field("operator", &self.operator)
            .finish_non_exhaustive()
    }
}

impl Prefork {
    /// A supervisor with every option at its default.
    pub fn new() -> Self {
        Prefork {
            workers: None,
            recover_threshold: None,
            recover_window: DEFAULT_RECOVER_WINDOW,
            recover_interval: Duration::ZERO,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            backend: None,
            mode: Mode::Fork,
            network: Network::Tcp4,
            reuseport: false,
            upgrade_timeout: DEFAULT_UPGRADE_TIMEOUT,
            upgrade_probation: Duration::ZERO,
            health: HealthChecks::default(),
            cpu_affinity: false,
            user: None,
            group: None,
            worker_names: true,
            listeners: Vec::new(),
            unix_mode: None,
            operator: Operator::default(),
            hooks: Hooks::default(),
        }
    }

    /// The control socket: the master listens on a Unix stream socket at `path` (mode 0600),
    /// where the operator asks for the status, the metrics, a rolling restart, a binary
    /// upgrade, another worker count or a stop, one line per request, and each reply (one
    /// line of JSON) comes when the outcome is known ([`crate::control`], `docs/protocol.md`).
    /// Only a client of the master's uid, or root, is served.
    ///
    /// The path's directory must exist; a socket file nobody listens on (left by a master
    /// that died) is replaced, and a path where a master answers fails the start with
    /// [`Error::Control`]. The file is removed when the master exits, unless a new master
    /// (binary upgrade) took it over. Workers never hold the socket. Default: none.
    pub fn control_socket(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.operator.control = Some(path.into());
        self
    }

    /// A PID file: the master writes its pid to `path` (a temporary file beside it, then
    /// `rename`) once every initial worker serves; a new master of a binary upgrade
    /// overwrites it once it serves; the master removes it at exit only if it still names
    /// this master. A path whose directory is missing or not writable fails the start with
    /// [`Error::Control`]. Default: none.
    pub fn pid_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.operator.pid_file = Some(path.into());
        self
    }

    /// How workers are started. Default: [`Mode::Fork`].
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The address family [`Prefork::listen_and_serve`] binds, and [`Prefork::serve`] for
    /// each TCP address of [`Prefork::listen`]. Default: [`Network::Tcp4`], as fasthttp's
    /// prefork.
    pub fn network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }

    /// One `SO_REUSEPORT` socket per worker instead of one shared listener, for
    /// [`Prefork::listen_and_serve`] and each TCP listener of [`Prefork::listen`] (Unix
    /// listeners beside them stay shared, as reuseport does not apply to them; asked with
    /// Unix listeners only, it is an error): the kernel spreads connections evenly over the
    /// workers.
    /// The master binds one socket per slot and keeps it (in exec mode worker k gets socket k
    /// on its fd 3), so connections queued on a dead or replaced worker's socket wait for the
    /// next worker of the slot; TTOU steers new connections away from a retired slot before it
    /// drains. Default: off (one shared listener).
    pub fn reuseport(mut self, on: bool) -> Self {
        self.reuseport = on;
        self
    }

    /// Adds a listener for [`Prefork::serve`]: `host:port`, `[v6]:port` or `:port` (TCP, as
    /// [`Prefork::listen_and_serve`] takes it, with [`Prefork::network`] and
    /// [`Prefork::reuseport`]), `unix:PATH` (a Unix domain stream socket at a path) or
    /// `unix:@NAME` (in Linux's abstract namespace). Repeatable: every address is bound in
    /// the master before anything forks, in this order, and every worker gets all of them.
    /// `serve` finds it under the address as written here ([`Listeners::get`]); see
    /// [`Prefork::listen_named`] for a name of its own.
    ///
    /// A Unix socket file that exists already is replaced when nothing listens on it (a
    /// server that died without removing it); a live socket, or a file that is not a
    /// socket, is an error naming the path, and is left alone. The file's mode is what the
    /// umask leaves unless [`Prefork::unix_mode`] sets it. The master removes the file at
    /// the start of a graceful stop (new clients then fail to connect, while the workers
    /// serve what is queued) and when it exits, but not when it hands the socket to a new
    /// master (`USR2`), which serves the same file. Unix sockets are shared by the workers:
    /// [`Prefork::reuseport`] applies to the TCP listeners beside them, and is an error when
    /// every listener is a Unix socket.
    pub fn listen(mut self, addr: &str) -> Self {
        self.listeners.push(Spec {
            named: None,
            addr: addr.to_owned(),
            reuseport: false,
        });
        self
    }

    /// Adds a listener as [`Prefork::listen`] does, named `name` ([`Listeners::get`]). Under
    /// systemd socket activation the names are matched with the socket unit's
    /// `FileDescriptorName=` (`LISTEN_FDNAMES`): every listener needs one then, and each
    /// name must be passed exactly once. A name is 1 to 255 bytes of printable ASCII
    /// without `:` (systemd's rule), and does not start with `prefork` or `#` (reserved for
    /// the handover of a binary upgrade); [`Prefork::serve`] refuses others.
    pub fn listen_named(mut self, name: &str, addr: &str) -> Self {
        self.listeners.push(Spec {
            named: Some(name.to_owned()),
            addr: addr.to_owned(),
            reuseport: false,
        });
        self
    }

    /// The mode of the Unix socket files the master binds (`0o660`, for example, to let a
    /// proxy in the socket's group connect), set before any client can connect. Default:
    /// what the process's umask leaves (`0o777` minus the umask). Only the permission bits
    /// (`0o777`) are accepted.
    pub fn unix_mode(mut self, mode: u32) -> Self {
        self.unix_mode = Some(mode);
        self
    }

    /// Number of worker processes. Default: [`std::thread::available_parallelism`] (1 if it
    /// cannot be determined). Zero is refused by [`Prefork::run`].
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Crash-loop guard: more than this many unexpected worker exits within
    /// [`Prefork::recover_window`] stop everything with [`Error::OverRecovery`]. With
    /// threshold k, at least k respawns happen first; 0 stops at the first unexpected exit.
    /// Default: twice the number of workers, and at least 10.
    pub fn recover_threshold(mut self, n: usize) -> Self {
        self.recover_threshold = Some(n);
        self
    }

    /// The sliding window in which unexpected exits are counted. Default: 60 s.
    pub fn recover_window(mut self, d: Duration) -> Self {
        self.recover_window = d;
        self
    }

    /// Pause before a crashed worker is respawned. A slot whose worker keeps crashing within
    /// a second of its start waits twice as long each time, up to 32 × this interval.
    /// Default: zero (respawn at once).
    pub fn recover_interval(mut self, d: Duration) -> Self {
        self.recover_interval = d;
        self
    }

    /// How long workers get between TERM and KILL when the master stops. Default: 5 s.
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = d;
        self
    }

    /// How long a new master started by `SIGUSR2` (binary upgrade) gets to have every worker
    /// inside `serve`; after that it is killed and this master keeps serving. Default: 60 s.
    pub fn upgrade_timeout(mut self, d: Duration) -> Self {
        self.upgrade_timeout = d;
        self
    }

    /// Keeps the old master of a binary upgrade for `d` after the new master serves, so that
    /// the upgrade can be rolled back: its workers drain and exit as without a probation, but
    /// it waits, its listening sockets open, the new master still its watched child. A
    /// rollback (`SIGHUP` to the old master, or the `rollback` command on either master's
    /// control socket) starts the old program's workers again; once they serve, the new
    /// master is told to stop without touching the shared sockets, and the old master takes
    /// the control socket's path and the PID file back. When `d` ends without a rollback,
    /// the old master exits. The new master refuses upgrades of its own until then. See
    /// `docs/protocol.md` ("Upgrade probation"). Default: zero (the old master exits once
    /// its workers are gone).
    pub fn upgrade_probation(mut self, d: Duration) -> Self {
        self.upgrade_probation = d;
        self
    }

    /// Kills and replaces a worker that stopped calling [`Worker::heartbeat`] for longer
    /// than `d` (a hung event loop, a deadlock). Only a worker that is inside `serve`, holds
    /// its slot and has called `heartbeat` at least once is judged, so workers that never
    /// call it are never killed. The kill is logged as `stuck`, with how long the worker was
    /// silent; it is replaced at once and not counted by the crash-loop guard.
    ///
    /// The master then wakes about once per `d` to look (never more often than the
    /// heartbeats of the silent-most worker require); without this option it has no such
    /// timer. Heartbeats are read in milliseconds of a clock that advances in scheduler
    /// ticks, so `d` must be at least 10 ms ([`Prefork::run`] refuses shorter); a second
    /// or more suits real servers. Default: off.
    pub fn worker_timeout(mut self, d: Duration) -> Self {
        self.health.worker_timeout = Some(d);
        self
    }

    /// Recycles each worker once it has run for `d` plus a random jitter, uniform in
    /// `[0, d/10]` and drawn per worker, so that workers started together do not recycle
    /// together. A recycled worker is replaced as a rolling restart replaces it (its
    /// replacement is inside `serve` before it is asked to drain) and is not counted as a
    /// crash. Default: off (no timer).
    pub fn max_worker_lifetime(mut self, d: Duration) -> Self {
        self.health.max_lifetime = Some(d);
        self
    }

    /// Recycles a worker whose resident set size (`/proc/PID/statm`) exceeds `bytes`, as
    /// [`Prefork::max_worker_lifetime`] recycles. The master reads the workers' sizes once a
    /// second while this is set. Default: off (no timer).
    pub fn max_worker_rss(mut self, bytes: u64) -> Self {
        self.health.max_rss = Some(bytes);
        self
    }

    /// Pins worker k to one CPU: the k-th (modulo their number) of the CPUs the master may
    /// run on, in ascending order (its `sched_getaffinity` set, which already honours the
    /// cgroup's cpuset, so this need not be CPUs `0..n`). Each worker pins itself, every
    /// thread it has at that moment included, before `serve`; threads it starts later
    /// inherit the setting. Default: off (workers run wherever the scheduler puts them).
    pub fn cpu_affinity(mut self, on: bool) -> Self {
        self.cpu_affinity = on;
        self
    }

    /// Runs every worker as this user, with its primary group (or the one named by
    /// [`Prefork::group`]) and its supplementary groups from the group database. The master
    /// keeps its own credentials, and binds the listening sockets before any worker starts,
    /// so a master started as root serves port 80 with unprivileged workers.
    ///
    /// The name is resolved by [`Prefork::run`] before any worker starts; an unknown user is
    /// [`Error::InvalidOption`] naming it. Each worker then calls `setgroups`, `setgid` and
    /// `setuid` in that order, sets `PR_SET_NO_NEW_PRIVS`, and checks that root cannot be
    /// regained; if any step fails it refuses to serve and exits with [`crate::EXIT_FATAL`],
    /// which stops the master. The kernel then also makes the worker non-dumpable: no core
    /// dumps, and processes of the same user cannot `ptrace` it (the worker may call
    /// `prctl(PR_SET_DUMPABLE, 1)` itself to allow core dumps again). Exec-mode workers drop
    /// in their own process, from their own builder. Default: workers keep the master's
    /// credentials.
    pub fn user(mut self, name: &str) -> Self {
        self.user = Some(name.to_owned());
        self
    }

    /// Runs every worker with this group (see [`Prefork::user`]). Without a user, the
    /// worker's user stays the master's and this group becomes its only group.
    pub fn group(mut self, name: &str) -> Self {
        self.group = Some(name.to_owned());
        self
    }

    /// Whether to name the processes: each worker's name (`/proc/PID/comm`, what `ps`,
    /// `top`, `pgrep NAME` and `killall NAME` show and match) becomes `prefork wK` (`K` its
    /// slot), and the master's `prefork master` while [`Prefork::run`] runs (its earlier
    /// name comes back when `run` returns). The command line (`/proc/PID/cmdline`, which
    /// `pgrep -f` matches) is left as it was. Turn this off where scripts find the processes
    /// by their program name. Default: on.
    pub fn worker_names(mut self, on: bool) -> Self {
        self.worker_names = on;
        self
    }

    /// How the master learns of worker exits. Default: the `PREFORK_BACKEND` environment
    /// variable if set, else [`Backend::Pidfd`] (which falls back to [`Backend::Sigchld`] on
    /// kernels without pidfds). A malformed `PREFORK_BACKEND` is an error even when this is
    /// set, so an operator's typo is reported rather than ignored.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Runs in the master after every worker start (initial ones, respawns, replacements),
    /// with the new worker's `(slot, pid)`.
    pub fn on_child_spawn(mut self, f: impl FnMut(usize, u32) -> HookResult + 'static) -> Self {
        self.hooks.on_child_spawn = Some(Box::new(f));
        self
    }

    /// Runs in the master once, when every initial worker is inside `serve`, with their
    /// `(slot, pid)` in slot order.
    pub fn on_master_ready(
        mut self,
        f: impl FnMut(&[(usize, u32)]) -> HookResult + 'static,
    ) -> Self {
        self.hooks.on_master_ready = Some(Box::new(f));
        self
    }

    /// Runs in the master after a worker that exited unexpectedly was replaced, with
    /// `(slot, old pid, new pid)`; it runs after [`Prefork::on_child_spawn`] for the new
    /// worker.
    pub fn on_child_recover(
        mut self,
        f: impl FnMut(usize, u32, u32) -> HookResult + 'static,
    ) -> Self {
        self.hooks.on_child_recover = Some(Box::new(f));
        self
    }

    /// Runs in the master after a worker was reaped, with `(slot, pid, how it ended)`, for
    /// every exit, expected or not.
    pub fn on_child_exit(
        mut self,
        f: impl FnMut(usize, u32, WorkerExit) -> HookResult + 'static,
    ) -> Self {
        self.hooks.on_child_exit = Some(Box::new(f));
        self
    }

    /// Runs in the master with a snapshot of the workers ([`Status`]: per slot, the pid,
    /// start time, restarts and last exit with its cause) whenever it changed: at most once
    /// per wake-up of the master, after the events of that wake-up are handled, and once
    /// more when the last worker is gone. The master also logs the status's short form at
    /// INFO whenever it changes, and sends it to systemd as `STATUS=` when `NOTIFY_SOCKET`
    /// is set.
    pub fn on_status(mut self, f: impl FnMut(&Status) -> HookResult + 'static) -> Self {
        self.hooks.on_status = Some(Box::new(f));
        self
    }

    /// Runs in every worker, on a thread of its own, as soon as the master dies; when it
    /// returns the worker exits. Without it a worker is killed (`SIGKILL`) at once when the
    /// master dies.
    pub fn on_master_death(mut self, f: impl FnMut() + Send + 'static) -> Self {
        self.hooks.on_master_death = Some(Box::new(f));
        self
    }

    /// Forks the workers, each of which runs `serve`, and supervises them until the master is
    /// told to stop (TERM or INT: `Ok(())`) or fails.
    ///
    /// `serve` runs in each worker process and never returns into the caller's code there:
    /// `()` or `Ok(_)` exits the worker with code 0, `Err(e)` prints `e` and exits 1, a panic
    /// exits 101 (see [`std::process::Termination`]). The master returns only after every
    /// worker is reaped, with its signal mask and dispositions as before and every descriptor
    /// it opened closed, so `run` may be called again.
    ///
    /// In fork mode this must be called while the process is single-threaded: otherwise
    /// [`Error::NotSingleThreaded`] is returned and nothing is forked. In exec mode, a process
    /// started as a worker (`FASTHTTP_PREFORK_CHILD=1`) runs `serve` directly instead.
    pub fn run<F, T>(mut self, mut serve: F) -> Result<(), Error>
    where
        F: FnMut(Worker) -> T,
        T: Termination,
    {
        if let Some(id) = listen::exec_child()? {
            let setup = self.worker_setup()?;
            child::run_exec_child(id, self.hooks.on_master_death.take(), &setup, serve);
        }
        let plan = self.plan(|_| Ok(Sockets::Caller))?;
        master::run(plan, &mut self.hooks, &mut |_, worker| serve(worker))
    }

    /// Binds every address of [`Prefork::listen`] and [`Prefork::listen_named`] in the
    /// master, then supervises workers that each run `serve(listeners, worker)` with all of
    /// them, TCP and Unix alike (see [`Prefork::run`] for the rest). The log names each
    /// listener's actual address (the port the kernel picked for `:0`), as
    /// [`Listener::local_addr`] does in every worker.
    ///
    /// Under systemd socket activation the passed sockets are served instead (matched by
    /// name; see [`Prefork::listen_named`]); a binary upgrade's new master serves the
    /// sockets of the old one, each under its name.
    ///
    /// In exec mode every worker gets the listeners on its fds 3.. with their names in
    /// `PREFORK_LISTEN_FDNAMES` (`docs/protocol.md`); under a master that passes only fd 3
    /// (Go fasthttp's), a worker serves that one socket, as the first listener.
    ///
    /// # Errors
    ///
    /// No listener, a bad, busy or live address (naming it), a Unix address with
    /// [`Prefork::reuseport`], a bad name or mode, sockets passed by systemd that do not
    /// match the names: before anything is forked.
    pub fn serve<F, T>(mut self, mut serve: F) -> Result<(), Error>
    where
        F: FnMut(Listeners, Worker) -> T,
        T: Termination,
    {
        let specs = self.specs()?;
        if let Some(id) = listen::exec_child()? {
            let setup = self.worker_setup()?;
            let passed = listen::exec_worker_listeners(&specs, self.network)?;
            let listeners = passed
                .into_iter()
                .map(|(key, l)| {
                    let spec = key
                        .strip_prefix('#')
                        .and_then(|i| i.parse::<usize>().ok())
                        .and_then(|i| specs.get(i));
                    (spec.map_or(key, Spec::name), l)
                })
                .collect();
            let death = self.hooks.on_master_death.take();
            child::run_exec_child(id, death, &setup, move |worker| {
                serve(Listeners::new(listeners), worker)
            });
        }
        let (network, unix_mode) = (self.network, self.unix_mode);
        let plan = self.plan(|cfg| Sockets::open(&specs, network, cfg.workers, unix_mode, true))?;
        master::run(plan, &mut self.hooks, &mut |listeners, worker| {
            serve(Listeners::new(listeners), worker)
        })
    }

    /// Binds `addr` in the master, then supervises workers that each run
    /// `serve(listener, worker)` (see [`Prefork::run`] for the rest).
    ///
    /// The address is `host:port`, `[v6]:port` or `:port` (every address of
    /// [`Prefork::network`]'s family). A bad or busy address fails here, naming it, before
    /// anything is forked. When the process was started by systemd socket activation
    /// (`LISTEN_PID` is ours, `LISTEN_FDS` ≥ 1), the inherited socket on fd 3 is served
    /// instead and `addr` is not bound.
    ///
    /// The listener is handed to `serve` close-on-exec and, unless a worker switched the
    /// socket to non-blocking (which [`crate::Shutdown::incoming`] and async runtimes do, for
    /// every process sharing it), in blocking mode.
    ///
    /// In a process started as an exec-mode worker (`FASTHTTP_PREFORK_CHILD=1`), this takes
    /// the listener from fd 3 (after checking it is a listening TCP socket) or, with
    /// reuseport under a master that passes no socket (a fasthttp master), binds its own,
    /// and runs `serve`: it never returns, except with an error if fd 3 is unusable.
    ///
    /// A `unix:` address is refused here, before anything starts: `serve` gets a
    /// [`TcpListener`]. Unix sockets and several listeners are [`Prefork::listen`] with
    /// [`Prefork::serve`].
    pub fn listen_and_serve<F, T>(mut self, addr: &str, mut serve: F) -> Result<(), Error>
    where
        F: FnMut(TcpListener, Worker) -> T,
        T: Termination,
    {
        if parse_unix(addr).is_some() {
            return Err(Error::Listen {
                addr: addr.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a Unix socket address: listen_and_serve hands workers a TcpListener; use \
                     Prefork::listen with Prefork::serve, which hands them a Listener of either \
                     kind",
                ),
            });
        }
        if !self.listeners.is_empty() {
            return Err(Error::InvalidOption {
                option: "listen",
                reason: "listen_and_serve serves its one address: use Prefork::serve for the \
                         listeners of Prefork::listen"
                    .to_owned(),
            });
        }
        let spec = Spec {
            named: None,
            addr: addr.to_owned(),
            reuseport: self.reuseport,
        };
        if let Some(id) = listen::exec_child()? {
            let setup = self.worker_setup()?;
            let passed = listen::exec_worker_listeners(std::slice::from_ref(&spec), self.network)?;
            let listener = match passed.into_iter().next().map(|(_, l)| l.into_tcp()) {
                Some(Ok(l)) => l,
                _ => {
                    return Err(Error::InheritedListener {
                        fd: crate::protocol::LISTENER_FD,
                        reason: "a Unix socket, where listen_and_serve serves a TCP socket"
                            .to_owned(),
                    });
                }
            };
            let death = self.hooks.on_master_death.take();
            child::run_exec_child(id, death, &setup, move |worker| serve(listener, worker));
        }
        let network = self.network;
        let plan = self.plan(|cfg| {
            Sockets::open(
                std::slice::from_ref(&spec),
                network,
                cfg.workers,
                None,
                false,
            )
        })?;
        master::run(
            plan,
            &mut self.hooks,
            &mut |listeners, worker| match listeners.into_iter().next() {
                Some((_, Listener::Tcp(listener))) => serve(listener, worker),
                Some((_, other)) => {
                    // A socket passed by systemd or an old master that is not TCP.
                    let kind = match other.local_addr() {
                        Ok(a) => a.to_string(),
                        Err(_) => "a Unix socket".to_owned(),
                    };
                    worker.exit_fatal(format!(
                        "listen_and_serve serves a TCP socket, and the socket passed is {kind}; \
                         use Prefork::listen with Prefork::serve"
                    ))
                }
                None => unreachable!("listen_and_serve always gives every worker a listener"),
            },
        )
    }
}
