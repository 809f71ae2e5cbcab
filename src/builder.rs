//! [`Prefork`]: the builder, its options and hooks, and their validation.

use std::process::Termination;
use std::time::Duration;

use crate::error::Error;
use crate::supervisor::{Config, WorkerExit};
use crate::{Worker, driver};

/// What a master-side hook returns: an error stops every worker and comes back from
/// [`Prefork::run`].
pub type HookResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The environment variable that selects the child-reaping backend: `pidfd` (the default) or
/// `sigchld`.
pub const BACKEND_ENV: &str = "PREFORK_BACKEND";

/// How the master learns that a worker exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// One pidfd per worker in the epoll set, reaped with `waitid(P_PIDFD)` (Linux 5.3+).
    /// Where the kernel lacks pidfds this falls back to [`Backend::Sigchld`] by itself.
    Pidfd,
    /// `SIGCHLD` through the signalfd, then `waitid(P_ALL, WNOHANG)`: works on any kernel.
    Sigchld,
}

impl Backend {
    /// Parses a `PREFORK_BACKEND` value.
    pub fn parse(value: &str) -> Result<Backend, Error> {
        match value {
            "pidfd" => Ok(Backend::Pidfd),
            "sigchld" => Ok(Backend::Sigchld),
            _ => Err(Error::InvalidEnv {
                var: BACKEND_ENV,
                value: value.to_owned(),
                reason: "expected \"pidfd\" or \"sigchld\"".to_owned(),
            }),
        }
    }

    /// The backend named by `PREFORK_BACKEND`, if it is set and not empty.
    pub fn from_env() -> Result<Option<Backend>, Error> {
        match std::env::var_os(BACKEND_ENV) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => match v.to_str() {
                Some(s) => Backend::parse(s).map(Some),
                None => Err(Error::InvalidEnv {
                    var: BACKEND_ENV,
                    value: v.to_string_lossy().into_owned(),
                    reason: "not valid UTF-8".to_owned(),
                }),
            },
        }
    }
}

type SpawnHook = Box<dyn FnMut(u32) -> HookResult>;
type ReadyHook = Box<dyn FnMut(&[u32]) -> HookResult>;
type RecoverHook = Box<dyn FnMut(u32, u32) -> HookResult>;
type ExitHook = Box<dyn FnMut(usize, u32, WorkerExit) -> HookResult>;
pub(crate) type DeathHook = Box<dyn FnMut() + Send>;

#[derive(Default)]
pub(crate) struct Hooks {
    pub(crate) on_child_spawn: Option<SpawnHook>,
    pub(crate) on_master_ready: Option<ReadyHook>,
    pub(crate) on_child_recover: Option<RecoverHook>,
    pub(crate) on_child_exit: Option<ExitHook>,
    pub(crate) on_master_death: Option<DeathHook>,
}

/// The default window in which unexpected exits are counted against `recover_threshold`.
pub const DEFAULT_RECOVER_WINDOW: Duration = Duration::from_secs(60);
/// The default grace period between TERM and KILL at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
///     .on_child_spawn(|pid| {
///         log::info!("worker pid {pid} started");
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
            hooks: Hooks::default(),
        }
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

    /// How the master learns of worker exits. Default: the `PREFORK_BACKEND` environment
    /// variable if set, else [`Backend::Pidfd`] (which falls back to [`Backend::Sigchld`] on
    /// kernels without pidfds).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Runs in the master after every worker start (initial ones and respawns), with the new
    /// worker's pid.
    pub fn on_child_spawn(mut self, f: impl FnMut(u32) -> HookResult + 'static) -> Self {
        self.hooks.on_child_spawn = Some(Box::new(f));
        self
    }

    /// Runs in the master once, when every initial worker has started, with their pids in
    /// slot order.
    pub fn on_master_ready(mut self, f: impl FnMut(&[u32]) -> HookResult + 'static) -> Self {
        self.hooks.on_master_ready = Some(Box::new(f));
        self
    }

    /// Runs in the master after a worker that exited unexpectedly was replaced, with
    /// `(old pid, new pid)`; it runs after [`Prefork::on_child_spawn`] for the new worker.
    pub fn on_child_recover(mut self, f: impl FnMut(u32, u32) -> HookResult + 'static) -> Self {
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
    /// Must be called while the process is single-threaded: otherwise
    /// [`Error::NotSingleThreaded`] is returned and nothing is forked.
    pub fn run<F, T>(mut self, mut serve: F) -> Result<(), Error>
    where
        F: FnMut(Worker) -> T,
        T: Termination,
    {
        let cfg = self.config()?;
        let backend = match (self.backend, Backend::from_env()?) {
            (Some(b), _) | (None, Some(b)) => b,
            (None, None) => Backend::Pidfd,
        };
        driver::run(cfg, backend, &mut self.hooks, &mut serve)
    }

    /// Validates the options into the supervisor's configuration.
    fn config(&self) -> Result<Config, Error> {
        let workers = match self.workers {
            Some(0) => {
                return Err(Error::InvalidOption {
                    option: "workers",
                    reason: "at least one worker is needed".to_owned(),
                });
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if self.recover_window.is_zero() {
            return Err(Error::InvalidOption {
                option: "recover_window",
                reason: "the window must be longer than zero".to_owned(),
            });
        }
        Ok(Config {
            workers,
            recover_threshold: self
                .recover_threshold
                .unwrap_or_else(|| workers.saturating_mul(2).max(10)),
            recover_window: self.recover_window,
            recover_interval: self.recover_interval,
            shutdown_grace: self.shutdown_grace,
        })
    }
}
