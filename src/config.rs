//! What the builder hands down to the master: the reaping backend, the hooks, the health
//! checks and what each worker does for itself before `serve` (and [`Mode`], which the
//! builder resolves into the master's way of starting a worker); and the status the master
//! hands back to its hooks. These types live below the master so that it never reaches back
//! up into the public builder.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::error::Error;
use crate::exit::WorkerExit;
use crate::sys::identity::Credentials;

/// What a master-side hook returns: an error stops every worker and comes back from
/// [`Prefork::run`](crate::Prefork::run).
pub type HookResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// How workers are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// `fork()` without exec: workers run `serve` directly and share everything loaded before
    /// the fork copy-on-write. The process must be single-threaded. The default.
    #[default]
    Fork,
    /// Re-execute the current binary for every worker, with the fasthttp child protocol
    /// (`FASTHTTP_PREFORK_CHILD=1`, listener on fd 3): works when threads already run, and
    /// gives each worker a fresh image (fresh ASLR).
    Exec,
    /// `Fork` when the process is single-threaded, `Exec` otherwise; logs which.
    Auto,
}

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
    pub(crate) fn parse(value: &str) -> Result<Backend, Error> {
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
    pub(crate) fn from_env() -> Result<Option<Backend>, Error> {
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

/// `on_child_spawn(slot, pid)`.
pub(crate) type SpawnHook = Box<dyn FnMut(usize, u32) -> HookResult>;
/// `on_master_ready(&[(slot, pid)])`.
pub(crate) type ReadyHook = Box<dyn FnMut(&[(usize, u32)]) -> HookResult>;
/// `on_child_recover(slot, old pid, new pid)`.
pub(crate) type RecoverHook = Box<dyn FnMut(usize, u32, u32) -> HookResult>;
/// `on_child_exit(slot, pid, exit)`.
pub(crate) type ExitHook = Box<dyn FnMut(usize, u32, WorkerExit) -> HookResult>;
/// `on_master_death()`, in a worker.
pub(crate) type DeathHook = Box<dyn FnMut() + Send>;
/// `on_status(&status)`.
pub(crate) type StatusHook = Box<dyn FnMut(&Status) -> HookResult>;

/// The user's hooks. Every master-side hook gets the worker's slot first, then its pid.
#[derive(Default)]
pub(crate) struct Hooks {
    pub(crate) on_child_spawn: Option<SpawnHook>,
    pub(crate) on_master_ready: Option<ReadyHook>,
    pub(crate) on_child_recover: Option<RecoverHook>,
    pub(crate) on_child_exit: Option<ExitHook>,
    pub(crate) on_master_death: Option<DeathHook>,
    pub(crate) on_status: Option<StatusHook>,
}

/// The master's health checks; each one unset costs nothing (no timer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HealthChecks {
    /// Kill and replace a ready worker whose heartbeat is older than this.
    pub(crate) worker_timeout: Option<Duration>,
    /// Recycle a worker after this long (plus its jitter).
    pub(crate) max_lifetime: Option<Duration>,
    /// Recycle a worker whose resident set is larger than this many bytes.
    pub(crate) max_rss: Option<u64>,
}

impl HealthChecks {
    /// Whether any check is set (and the master needs a timer).
    pub(crate) fn any(&self) -> bool {
        self.worker_timeout.is_some() || self.max_lifetime.is_some() || self.max_rss.is_some()
    }
}

/// What every worker does for itself between its start and `serve`, in fork and exec mode
/// alike (an exec-mode worker reads it from its own builder).
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerSetup {
    /// Name the worker `prefork wK` (and the master `prefork master`).
    pub(crate) names: bool,
    /// Pin worker k to the k-th CPU the master may run on.
    pub(crate) affinity: bool,
    /// Drop to these credentials.
    pub(crate) credentials: Option<Credentials>,
}

/// The operator's interfaces of a master: its control socket and PID file.
#[derive(Debug, Clone, Default)]
pub(crate) struct Operator {
    pub(crate) control: Option<std::path::PathBuf>,
    pub(crate) pid_file: Option<std::path::PathBuf>,
}

/// How a worker's exit was judged, in a [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExitCause {
    /// It served, then died of a signal from outside or exited by itself: replaced, not
    /// counted by the crash-loop guard.
    Crash,
    /// It exited before it was serving, or by itself just after: replaced, and counted by
    /// the crash-loop guard.
    BootFailure,
    /// Its heartbeat stopped for longer than `worker_timeout`: killed by the master and
    /// replaced.
    Stuck,
    /// Past `max_worker_lifetime` or over `max_worker_rss`: replaced like a rolling restart
    /// replaces it.
    Recycled,
    /// Its slot was taken out of service by `TTOU`.
    Retired,
    /// Replaced by a rolling restart (`HUP`).
    Replaced,
    /// It died of a signal the master forwarded to it (`USR1`): replaced, not counted.
    Forwarded,
    /// Stopped with the master (`TERM`, `INT`, a failure, a binary upgrade's hand-over).
    Stopped,
    /// It exited with [`crate::EXIT_FATAL`]: the master stops.
    Fatal,
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExitCause::Crash => "crash",
            ExitCause::BootFailure => "boot failure",
            ExitCause::Stuck => "stuck",
            ExitCause::Recycled => "recycled",
            ExitCause::Retired => "retired by TTOU",
            ExitCause::Replaced => "replaced by HUP",
            ExitCause::Forwarded => "forwarded signal",
            ExitCause::Stopped => "stopped",
            ExitCause::Fatal => "fatal",
        })
    }
}

/// The latest exit of a worker of one slot, in a [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LastExit {
    /// The worker's pid.
    pub pid: u32,
    /// How it ended.
    pub exit: WorkerExit,
    /// How the master judged it.
    pub cause: ExitCause,
    /// When the master reaped it.
    pub at: SystemTime,
}

/// One worker slot, in a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlotStatus {
    /// The slot ([`crate::Worker::id`] of its workers).
    pub slot: usize,
    /// Whether the slot is in service (`TTOU` takes the highest one out, `TTIN` puts one
    /// back).
    pub in_service: bool,
    /// The pid of the worker that holds the slot; `None` while its next worker is not
    /// started yet, or when the slot is out of service. During a rolling restart or a
    /// recycling this is the new worker; the old one drains on.
    pub pid: Option<u32>,
    /// When that worker was started.
    pub started: Option<SystemTime>,
    /// Whether that worker is inside `serve`.
    pub ready: bool,
    /// How many workers were started in this slot after its first one: respawns, rolling
    /// restarts, recyclings.
    pub restarts: u64,
    /// How the latest worker of this slot that was reaped ended.
    pub last_exit: Option<LastExit>,
    /// See [`SlotStatus::last_fork`].
    pub(crate) last_fork: Option<Duration>,
    /// See [`SlotStatus::max_fork`].
    pub(crate) max_fork: Option<Duration>,
}

impl SlotStatus {
    /// How long the master spent starting the latest worker of this slot: in fork mode, the
    /// `fork(2)` call as the master saw it (monotonic clock before it and after it returned
    /// in the master); in exec mode, `Command::spawn`, which forks and waits for the
    /// worker's `execve(2)` to succeed. `None` before the slot's first worker.
    ///
    /// `fork` copies the master's page tables, so this grows with the master's resident set:
    /// on a 2-core VM, about 30 ms per GiB of memory in 4 KiB pages and 0.6 ms per GiB in
    /// transparent huge pages (see "Big programs" in `docs/operations.md`). The master does
    /// nothing else meanwhile: every start, respawn and rolling-restart step waits this long.
    pub fn last_fork(&self) -> Option<Duration> {
        self.last_fork
    }

    /// The longest of the slot's starts measured as [`SlotStatus::last_fork`], since the
    /// master started. `None` before the slot's first worker.
    pub fn max_fork(&self) -> Option<Duration> {
        self.max_fork
    }
}

/// A snapshot of the master's workers, for operators: per slot, the worker's pid, start
/// time, restarts and last exit. Handed to [`crate::Prefork::on_status`] whenever it
/// changes; its [`Display`](fmt::Display) form is the short one the master logs and sends
/// to systemd as `STATUS=`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    pub(crate) slots: Vec<SlotStatus>,
    /// The slot of the latest exit, if any.
    pub(crate) latest: Option<usize>,
    /// Each listener's name and actual address.
    pub(crate) listeners: Vec<(String, String)>,
}

impl Status {
    /// The listeners the master serves, in the builder's order: each one's name (the name of
    /// `Prefork::listen_named`, or the address as written) and its actual address as the
    /// builder writes addresses (`127.0.0.1:41234` with the port the kernel picked for `:0`,
    /// `unix:/run/app.sock`, `unix:@name`). Empty for `run`.
    pub fn listeners(&self) -> &[(String, String)] {
        &self.listeners
    }

    /// Every slot ever created, in slot order, those out of service included.
    pub fn slots(&self) -> &[SlotStatus] {
        &self.slots
    }

    /// How many slots are in service.
    pub fn in_service(&self) -> usize {
        self.slots.iter().filter(|s| s.in_service).count()
    }

    /// How many slots in service have a worker inside `serve`.
    pub fn serving(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.in_service && s.ready)
            .count()
    }

    /// The restarts of every slot together.
    pub fn restarts(&self) -> u64 {
        self.slots.iter().map(|s| s.restarts).sum()
    }

    /// The latest exit of any worker, with its slot.
    pub fn last_exit(&self) -> Option<(usize, &LastExit)> {
        let slot = self.latest?;
        Some((slot, self.slots.get(slot)?.last_exit.as_ref()?))
    }

    /// The longest start of a worker of any slot ([`SlotStatus::max_fork`]); `None` before
    /// the first.
    pub fn max_fork(&self) -> Option<Duration> {
        self.slots.iter().filter_map(|s| s.max_fork).max()
    }
}

/// The short form: `3 of 4 workers serving, 7 restarts, longest fork 1.3 ms; last exit:
/// worker 2 (pid 4242) stuck, signal SIGKILL`.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let restarts = self.restarts();
        write!(
            f,
            "{} of {} workers serving, {restarts} restart{}",
            self.serving(),
            self.in_service(),
            if restarts == 1 { "" } else { "s" }
        )?;
        if let Some(d) = self.max_fork() {
            write!(f, ", longest fork {:.1} ms", d.as_secs_f64() * 1e3)?;
        }
        if let Some((slot, e)) = self.last_exit() {
            write!(
                f,
                "; last exit: worker {slot} (pid {}) {}, {}",
                e.pid, e.cause, e.exit
            )?;
        }
        Ok(())
    }
}

/// The default window in which unexpected exits are counted against `recover_threshold`.
pub const DEFAULT_RECOVER_WINDOW: Duration = Duration::from_secs(60);
/// The default grace period between TERM and KILL at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The default time a new master started by `SIGUSR2` gets to be ready.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);
