//! What the builder hands down to the master: the reaping backend and the hooks. These types
//! live below the master so that it never reaches back up into the public builder.

use std::time::Duration;

use crate::error::Error;
use crate::supervisor::WorkerExit;

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

/// The user's hooks. Every master-side hook gets the worker's slot first, then its pid.
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
/// The default time a new master started by `SIGUSR2` gets to be ready.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);
