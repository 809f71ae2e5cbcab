//! The master: one `epoll` over a `signalfd`, the workers' readiness pipe and one pidfd per
//! worker, feeding the [`Supervisor`] and performing its actions.
//!
//! The master blocks the signals it handles, so they arrive only through the signalfd; it
//! sleeps in `epoll_wait` with no timeout unless the supervisor has a deadline (a delayed
//! respawn, a grace period) or systemd asked for watchdog pings, so an idle master makes no
//! wake-ups at all.
//!
//! It asks [`listeners::Listeners`] for each slot's socket and starts workers as
//! [`spawn::Spawn`] says (fork or exec).

mod answer;
mod control;
mod event_loop;
mod fork;
mod health;
mod hooks;
pub(crate) mod listeners;
mod notify;
mod perform;
mod pid_file;
mod pids;
mod reaper;
pub(crate) mod spawn;
mod state;
mod supervise;
mod upgrade;

use std::process::Termination;
use std::sync::atomic::Ordering;

use crate::config::{Backend, HealthChecks, Hooks, Operator, WorkerSetup};
use crate::error::Error;
use crate::listener::Listener;
use crate::supervisor::Config;
use crate::sys;
use crate::worker::Worker;
use health::Health;
use hooks::STDOUT_CLEAN;
use listeners::Listeners;
use spawn::Spawn;
use state::Master;

/// Everything a run needs, validated by the builder.
pub(crate) struct Plan {
    pub(crate) cfg: Config,
    pub(crate) backend: Backend,
    pub(crate) spawn: Spawn,
    pub(crate) listeners: Listeners,
    /// The health checks (heartbeat timeout, recycling).
    pub(crate) health: HealthChecks,
    /// What each worker does for itself before `serve`.
    pub(crate) setup: WorkerSetup,
    /// The control socket and the PID file.
    pub(crate) operator: Operator,
}

/// Supervises `plan.cfg.workers` workers until a stop. In fork mode each worker runs
/// `serve` with its listeners (none for `run`); in exec mode `serve` is not called here.
pub(crate) fn run<F, T>(plan: Plan, hooks: &mut Hooks, serve: &mut F) -> Result<(), Error>
where
    F: FnMut(Vec<(String, Listener)>, Worker) -> T,
    T: Termination,
{
    // The program ran before this call: whatever it printed may still be buffered.
    STDOUT_CLEAN.store(false, Ordering::Relaxed);
    let _name = plan
        .setup
        .names
        .then(|| sys::identity::Renamed::set(c"prefork master"));
    let death = hooks.on_master_death.is_some();
    let (mut master, cfg) = start(plan, death)?;
    let result = master.supervise(cfg, hooks, serve);
    // Exiting for good (not after handing the sockets to a new master): the socket files
    // bound here go.
    master.listeners.remove_files();
    result
}

/// The master's start, before its first fork: the checks, the health state, the machinery
/// (`Master::new`), the PID file's check and the control socket. Where it fails, the socket
/// files bound for the builder's listeners are removed (from then on
/// `Listeners::remove_files` does it).
///
/// Out of line, so that `run`'s frame holds little beyond the `Master`: a forked worker
/// writes to every page of the stack between the `Master` it tears down and the fork, each
/// a copy-on-write fault (docs/benchmarks.md).
#[inline(never)]
fn start(plan: Plan, death: bool) -> Result<(Master, Config), Error> {
    let Plan {
        cfg,
        backend,
        spawn,
        listeners,
        health,
        setup,
        operator,
    } = plan;
    let files = listeners.files();
    let mode = match spawn {
        Spawn::Fork => "fork",
        Spawn::Exec(_) => "exec",
    };
    // Read before the master takes the upgrade's variable over.
    let upgraded = std::env::var_os(crate::protocol::UPGRADE_FD_ENV).is_some();
    let started = (|| {
        if matches!(spawn, Spawn::Fork) {
            check_single_threaded()?;
        }
        check_sandbox(backend)?;
        let mut health = Health::new(health, cfg.workers)?;
        health.set_listeners(listeners.addresses());
        upgrade::read_generation();
        let mut master = Master::new(backend, death, spawn, listeners, health)?;
        master.reaper.reserve(2 * cfg.workers);
        master.setup = setup;
        master.mode = mode;
        master.backend = backend;
        if let Some(path) = &operator.pid_file {
            master.pid_file = Some(pid_file::PidFile::check(path)?);
        }
        if let Some(path) = &operator.control {
            let control = control::Control::bind(path, upgraded)?;
            log::info!("control socket: {}", path.display());
            master.control = Some(control);
        }
        Ok(master)
    })();
    let master = match started {
        Ok(master) => master,
        Err(e) => {
            for file in files {
                file.remove();
            }
            return Err(e);
        }
    };
    log::info!(
        "prefork master {} starting {} workers ({mode} mode, {:?} backend)",
        sys::getpid(),
        cfg.workers,
        backend
    );
    Ok((master, cfg))
}

fn check_single_threaded() -> Result<(), Error> {
    match sys::thread_count() {
        Ok(1) => Ok(()),
        Ok(threads) => Err(Error::NotSingleThreaded { threads }),
        Err(e) => {
            // Without /proc the check cannot be made; say so and trust the caller.
            log::warn!("cannot count this process's threads ({e}); assuming one");
            Ok(())
        }
    }
}

/// Fails before anything is forked where a sandbox refuses a call the master needs only once
/// it has workers (the event loop's, reaping's, and with the sigchld backend `kill`): the
/// error names the call and says that a system call filter refused it.
///
/// It also asks whether the workers' shutdown notice may use `setitimer` (optional: see
/// `sys::notice`), and logs once where it may not.
fn check_sandbox(backend: Backend) -> Result<(), Error> {
    sys::probe_master_calls(backend == Backend::Sigchld).map_err(|(op, e)| {
        let hint = fork::refused_hint(&e);
        Error::sys(op)(std::io::Error::new(e.kind(), format!("{e}{hint}")))
    })?;
    if let Err(e) = sys::notice::probe_timer() {
        log::warn!(
            "setitimer(ITIMER_REAL) refused ({e}): a TERM that reaches a worker in its first \
             {} ms, before it asked for the shutdown notice (Worker::shutdown), ends it at once \
             instead of waiting for it to ask",
            sys::notice::DECISION_WINDOW.as_millis()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
