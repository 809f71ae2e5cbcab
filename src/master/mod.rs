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

mod event_loop;
mod health;
mod hooks;
pub(crate) mod listeners;
mod notify;
mod pids;
mod reaper;
pub(crate) mod spawn;
mod upgrade;

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Termination;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::child::{self, ChildSetup};
use crate::config::{Backend, HealthChecks, Hooks, WorkerSetup};
use crate::error::Error;
use crate::supervisor::{
    Action, Cause, Config, Exited, Failure, Ignored, Rollback, Supervisor, Why,
};
use crate::sys::signal::{self, Signal};
use crate::sys::{self, Fork, MaskHow, Reaped, SigSet};
use crate::worker::Worker;
use event_loop::{
    Event, FORWARD_TOKEN, Loop, READY_TOKEN, SIGNALFD_TOKEN, UPGRADE_PID_TOKEN, UPGRADE_READY_TOKEN,
};
use health::Health;
use hooks::{STDOUT_CLEAN, call_hook, flush_stdout};
use listeners::Listeners;
use notify::Notifier;
use reaper::{Reaper, exit_of};
use spawn::Spawn;
use upgrade::{Report, Upgrade};

/// The signals the master takes over while it runs.
const HANDLED: [Signal; 8] = [
    Signal::Term,
    Signal::Int,
    Signal::Hup,
    Signal::Ttin,
    Signal::Ttou,
    Signal::Usr1,
    Signal::Usr2,
    Signal::Chld,
];

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
}

/// The handlers that forward signals delivered to other threads (exec mode, where the
/// process may run threads whose masks the master cannot change).
struct Forwarding {
    read: OwnedFd,
    _write: OwnedFd,
    saved: Vec<sys::SavedAction>,
}

/// The master's machinery. Dropping it kills and reaps every worker still alive (the loop
/// unwound), puts the signal mask and the `SIGCHLD` disposition back as they were and closes
/// every descriptor it opened.
struct Master {
    /// The descriptors of the loop, `None` only in a forked worker, which drops them.
    fds: Option<Fds>,
    old_mask: SigSet,
    /// The signals the master handles (blocked, read from the signalfd).
    handled: SigSet,
    saved_chld: Option<sys::SavedAction>,
    /// The children (workers, a new master) and how they are reaped.
    reaper: Reaper,
    start: Instant,
    spawn: Spawn,
    listeners: Listeners,
    notifier: Option<Notifier>,
    /// Whether any notification variable is set, which a forked worker then removes
    /// (decided once in the master, so that a worker reads the environment only when it must).
    notify_env: bool,
    /// The new master of an upgrade under way: its pid, pidfd and readiness pipe (the
    /// supervisor decides what becomes of it).
    upgrade: Option<Upgrade>,
    /// Why the latest upgrade could not start, for the rollback's log line.
    upgrade_error: Option<String>,
    /// When the next watchdog ping is due.
    next_ping: Option<Duration>,
    /// The first error that made the run fail; later ones are logged only.
    error: Option<Error>,
    /// Health checks and the workers' status.
    health: Health,
    /// What each forked worker does for itself before `serve`.
    setup: WorkerSetup,
    /// Fork mode: the workers' signal handlers, installed once here for them to inherit.
    inherited: Option<sys::notice::Inherited>,
}

/// The master's own descriptors, none of which a worker keeps (close-on-exec does not help
/// without an exec, so a forked worker drops them).
struct Fds {
    /// The epoll instance and the signalfd, made by [`Master::ensure_loop`] once the first
    /// workers are forked (the workers forked before never hold them, and until the master
    /// first sleeps it has nothing to wait for: signals stay pending while blocked, and the
    /// readiness pipe and the pidfds stay readable).
    event_loop: Option<Loop>,
    /// Workers write their pid here when they enter `serve`: `(read end, write end)`.
    ready: (OwnedFd, OwnedFd),
    /// Pipe whose write end only the master holds: workers watch the read end to learn of
    /// the master's death (used when `on_master_death` is set).
    death_pipe: Option<(OwnedFd, OwnedFd)>,
    /// Exec mode: signals caught by handlers on other threads arrive through this pipe.
    forwarding: Option<Forwarding>,
    /// In a new master started by an upgrade: where to report that every worker is ready.
    upgrade_report: Option<OwnedFd>,
}

/// Supervises `plan.cfg.workers` workers until a stop. In fork mode each worker runs
/// `serve` with its listener (`None` for `run`); in exec mode `serve` is not called here.
pub(crate) fn run<F, T>(plan: Plan, hooks: &mut Hooks, serve: &mut F) -> Result<(), Error>
where
    F: FnMut(Option<TcpListener>, Worker) -> T,
    T: Termination,
{
    let Plan {
        cfg,
        backend,
        spawn,
        listeners,
        health,
        setup,
    } = plan;
    if matches!(spawn, Spawn::Fork) {
        check_single_threaded()?;
    }
    let mode = match spawn {
        Spawn::Fork => "fork",
        Spawn::Exec(_) => "exec",
    };
    // The program ran before this call: whatever it printed may still be buffered.
    STDOUT_CLEAN.store(false, Ordering::Relaxed);
    let death = hooks.on_master_death.is_some();
    let _name = setup
        .names
        .then(|| sys::identity::Renamed::set(c"prefork master"));
    let health = Health::new(health, cfg.workers)?;
    let mut master = Master::new(backend, death, spawn, listeners, health)?;
    master.reaper.reserve(2 * cfg.workers);
    master.setup = setup;
    log::info!(
        "prefork master {} starting {} workers ({mode} mode, {:?} backend)",
        sys::getpid(),
        cfg.workers,
        backend
    );
    master.supervise(cfg, hooks, serve)
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

impl Master {
    fn new(
        backend: Backend,
        watch_death: bool,
        spawn: Spawn,
        listeners: Listeners,
        health: Health,
    ) -> Result<Master, Error> {
        let death_pipe = if watch_death {
            Some(sys::pipe().map_err(Error::sys("creating the master-death pipe"))?)
        } else {
            None
        };
        let ready = sys::pipe_nonblocking().map_err(Error::sys("creating the readiness pipe"))?;
        // Auto-reaping (SIGCHLD ignored, or SA_NOCLDWAIT) would make exited workers vanish
        // without a trace.
        let saved_chld = match sys::children_auto_reaped() {
            Ok(true) => Some(
                sys::set_default_disposition(Signal::Chld)
                    .map_err(Error::sys("resetting SIGCHLD to its default"))?,
            ),
            _ => None,
        };
        let mask = SigSet::of(&HANDLED);
        let old_mask = match sys::sigmask(MaskHow::Block, &mask) {
            Ok(old) => old,
            Err(e) => {
                if let Some(saved) = &saved_chld {
                    let _ = sys::restore_disposition(saved);
                }
                return Err(Error::Sys {
                    op: "blocking signals",
                    source: e,
                });
            }
        };
        // From here on, `Master`'s Drop undoes the changes above.
        let notifier = Notifier::from_env(sys::getpid());
        let mut master = Master {
            fds: Some(Fds {
                event_loop: None,
                ready,
                death_pipe,
                forwarding: None,
                upgrade_report: upgrade::inherited_report_fd(),
            }),
            old_mask,
            handled: mask,
            saved_chld,
            reaper: Reaper::new(backend),
            start: Instant::now(),
            spawn,
            listeners,
            upgrade: None,
            upgrade_error: None,
            next_ping: None,
            notifier,
            notify_env: notify::VARIABLES
                .iter()
                .any(|var| std::env::var_os(var).is_some()),
            error: None,
            health,
            setup: WorkerSetup::default(),
            inherited: None,
        };
        if let Some(every) = master.notifier.as_ref().and_then(|n| n.watchdog) {
            master.next_ping = Some(every);
        }
        if matches!(master.spawn, Spawn::Exec(_)) {
            // From here on Drop restores everything, the handlers included.
            let forwarding = master.forward_signals()?;
            master.fds_mut().forwarding = Some(forwarding);
        } else {
            // The signals are blocked: the handlers are for the workers alone.
            master.inherited = Some(sys::notice::Inherited::install());
        }
        Ok(master)
    }

    fn fds(&self) -> &Fds {
        self.fds
            .as_ref()
            .expect("only a forked worker gives up the master's descriptors")
    }

    fn fds_mut(&mut self) -> &mut Fds {
        self.fds
            .as_mut()
            .expect("only a forked worker gives up the master's descriptors")
    }

    /// Makes the event loop, once (see [`Loop::new`]).
    fn ensure_loop(&mut self) -> Result<(), Error> {
        if self.fds().event_loop.is_some() {
            return Ok(());
        }
        let fds = self.fds();
        let forwarding = fds.forwarding.as_ref().map(|fw| fw.read.as_fd());
        let event_loop = Loop::new(&self.handled, fds.ready.0.as_fd(), forwarding, &self.reaper)?;
        self.fds_mut().event_loop = Some(event_loop);
        Ok(())
    }

    /// The event loop, made by [`Master::ensure_loop`] before the master first sleeps.
    fn event_loop(&self) -> &Loop {
        self.fds()
            .event_loop
            .as_ref()
            .expect("the event loop is made before the master first waits")
    }

    /// Installs handlers that forward the handled signals through a pipe: in exec mode
    /// other threads may run with these signals unblocked, and the kernel may pick any of
    /// them to deliver a process-directed signal to.
    fn forward_signals(&self) -> Result<Forwarding, Error> {
        // Its read end joins the epoll set in `ensure_loop`.
        let (read, write) =
            sys::pipe_nonblocking().map_err(Error::sys("creating the signal pipe"))?;
        let saved = sys::forward_signals(&HANDLED, write.as_raw_fd())
            .map_err(Error::sys("installing signal handlers"))?;
        Ok(Forwarding {
            read,
            _write: write,
            saved,
        })
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records the error that fails the run (the first one wins) and tells the supervisor.
    fn fail(&mut self, sup: &mut Supervisor, err: Error) {
        log::error!("{err}");
        if self.error.is_none() {
            self.error = Some(err);
        }
        sup.fail(self.now());
    }

    fn supervise<F, T>(
        &mut self,
        cfg: Config,
        hooks: &mut Hooks,
        serve: &mut F,
    ) -> Result<(), Error>
    where
        F: FnMut(Option<TcpListener>, Worker) -> T,
        T: Termination,
    {
        let mut sup = Supervisor::new(cfg);
        let mut tokens = Vec::new();
        let mut raw = Vec::new();
        let mut events = Vec::new();
        loop {
            self.drain(&mut sup, hooks, serve);
            let notifier = self.notifier.as_ref();
            let hook = hooks.on_status.as_mut();
            if let Some(r) = self.health.publish(&sup, hook, notifier) {
                if !self.after_hook(r, &mut sup) {
                    // Performs the stop it causes before sleeping.
                    continue;
                }
            }
            if let Some(outcome) = sup.outcome() {
                let outcome = outcome.clone();
                return self.finish(outcome);
            }
            let checks = self.health.next_deadline();
            let deadline = [sup.next_deadline(), self.next_ping, checks]
                .into_iter()
                .flatten()
                .min();
            let timeout = deadline.map(|d| d.saturating_sub(self.now()));
            tokens.clear();
            if let Err(e) = self.ensure_loop() {
                return self.abort(e);
            }
            if let Err(e) = self.event_loop().epoll.wait(timeout, &mut tokens) {
                return self.abort(Error::sys("epoll_wait")(e));
            }
            for &token in &tokens {
                raw.clear();
                match token {
                    FORWARD_TOKEN => {
                        if let Some(fw) = &self.fds().forwarding {
                            sys::read_forwarded(fw.read.as_fd(), &mut raw);
                        }
                    }
                    SIGNALFD_TOKEN => {
                        if let Err(e) = self.event_loop().read_signals(&mut raw) {
                            return self.abort(Error::sys("reading the signalfd")(e));
                        }
                    }
                    READY_TOKEN => {
                        let mut pids = Vec::new();
                        sys::read_pids(self.fds().ready.0.as_fd(), &mut pids);
                        events.extend(pids.into_iter().map(Event::Ready));
                    }
                    UPGRADE_READY_TOKEN => events.push(Event::UpgradeReport),
                    UPGRADE_PID_TOKEN => {
                        if let Some(how) = self.reap_upgrade() {
                            events.push(Event::UpgradeExited(how));
                        }
                    }
                    pid => {
                        if let Some(how) = self.reaper.reap(pid as u32) {
                            events.push(Event::Exited(pid as u32, how));
                        }
                    }
                }
                for &n in &raw {
                    match Signal::from_raw(n) {
                        Some(Signal::Chld) => self.on_sigchld(&mut events),
                        Some(s) => events.push(Event::Signal(s)),
                        None => {}
                    }
                }
            }
            events.sort_by_key(Event::order);
            // One event at a time, each followed by the actions it caused: a respawn is
            // performed before the next exit of the batch is counted.
            for event in events.drain(..) {
                match event {
                    Event::Signal(signal) => self.on_signal(signal, &mut sup),
                    Event::Ready(pid) => sup.on_ready(pid, self.now()),
                    Event::Exited(pid, how) => self.on_worker_exit(pid, how, &mut sup, hooks),
                    Event::UpgradeReport => self.on_upgrade_report(&mut sup),
                    Event::UpgradeExited(how) => self.on_upgrade_exit(how, &mut sup),
                }
                self.drain(&mut sup, hooks, serve);
            }
            #[cfg(test)]
            tests::maybe_panic(&sup);
            self.ping_watchdog();
            self.health.tick(self.now(), &mut sup);
            sup.on_timer(self.now());
        }
    }

    fn ping_watchdog(&mut self) {
        let (Some(due), Some(n)) = (self.next_ping, &self.notifier) else {
            return;
        };
        let now = self.now();
        if due <= now {
            n.send("WATCHDOG=1");
            self.next_ping = n.watchdog.map(|every| now + every);
        }
    }

    /// Performs every action the supervisor has queued.
    fn drain<F, T>(&mut self, sup: &mut Supervisor, hooks: &mut Hooks, serve: &mut F)
    where
        F: FnMut(Option<TcpListener>, Worker) -> T,
        T: Termination,
    {
        while let Some(action) = sup.next_action() {
            self.perform(action, sup, hooks, serve);
        }
    }

    fn on_signal(&mut self, signal: Signal, sup: &mut Supervisor) {
        match signal {
            Signal::Term | Signal::Int if sup.is_stopping() => {
                log::warn!("{signal} during shutdown: killing workers now");
            }
            Signal::Term | Signal::Int => {
                log::info!("{signal}: stopping workers (they drain; KILL after the grace period)")
            }
            Signal::Hup => log::info!("SIGHUP: rolling restart of the workers"),
            Signal::Ttin => log::info!("SIGTTIN: adding a worker"),
            Signal::Ttou => log::info!("SIGTTOU: removing a worker"),
            Signal::Usr2 => {}
            _ => log::info!("{signal}: forwarding to the workers"),
        }
        sup.on_signal(signal, self.now());
    }

    /// `SIGCHLD`: the children it reaps become exits of workers, or of the new master.
    fn on_sigchld(&mut self, events: &mut Vec<Event>) {
        let upgrade = self.upgrade.as_ref().map(|u| u.pid);
        self.reaper.on_sigchld(|pid, how| {
            events.push(if Some(pid) == upgrade {
                Event::UpgradeExited(how)
            } else {
                Event::Exited(pid, how)
            })
        });
    }

    fn on_worker_exit(&mut self, pid: u32, how: Reaped, sup: &mut Supervisor, hooks: &mut Hooks) {
        self.reaper.forget(pid, epoll_of(&self.fds));
        let exit = exit_of(how);
        let Some(Exited { slot, cause }) = sup.on_exit(pid, exit, self.now()) else {
            return;
        };
        self.health.on_exit(slot, pid, exit, cause);
        match cause {
            Cause::Requested => log::info!("worker {slot} (pid {pid}) stopped: {exit}"),
            Cause::Replaced | Cause::Retired | Cause::Recycled => log::info!(
                "worker {slot} (pid {pid}) stopped: {exit} ({})",
                health::exit_cause(cause)
            ),
            Cause::Stuck => {
                log::warn!("worker {slot} (pid {pid}) killed as stuck: {exit}; replacing it")
            }
            Cause::Forwarded => log::info!(
                "worker {slot} (pid {pid}) ended by the {exit} the master forwarded; replacing it"
            ),
            Cause::Crashed => log::warn!("worker {slot} (pid {pid}) exited: {exit}; replacing it"),
            Cause::BootFailure => log::warn!(
                "worker {slot} (pid {pid}) exited: {exit}, before it was serving or just after \
                 (counted by the crash-loop guard)"
            ),
            Cause::Fatal => log::error!(
                "worker {slot} (pid {pid}) reported a fatal start-up failure ({exit}): stopping"
            ),
        }
        if let Some(f) = hooks.on_child_exit.as_mut() {
            let r = call_hook("on_child_exit", || f(slot, pid, exit));
            self.after_hook(r, sup);
        }
    }

    fn perform<F, T>(
        &mut self,
        action: Action,
        sup: &mut Supervisor,
        hooks: &mut Hooks,
        serve: &mut F,
    ) where
        F: FnMut(Option<TcpListener>, Worker) -> T,
        T: Termination,
    {
        match action {
            Action::Spawn { slot, recovers } => {
                let pid = match self.spawn(slot, hooks, serve) {
                    Ok(pid) => pid,
                    Err(source) => {
                        log::error!("cannot start worker {slot}: {source}");
                        sup.on_spawn_failed(slot, self.now());
                        if sup.is_stopping() && self.error.is_none() {
                            self.error = Some(Error::Spawn { slot, source });
                        }
                        return;
                    }
                };
                sup.on_spawned(slot, pid, self.now());
                self.health.on_spawned(slot, pid, self.now());
                match recovers {
                    Some(old) => log::info!("worker {slot} respawned (pid {pid}, was {old})"),
                    None => log::info!("worker {slot} started (pid {pid})"),
                }
                if let Some(f) = hooks.on_child_spawn.as_mut() {
                    let r = call_hook("on_child_spawn", || f(slot, pid));
                    if !self.after_hook(r, sup) {
                        return;
                    }
                }
                if let (Some(old), Some(f)) = (recovers, hooks.on_child_recover.as_mut()) {
                    let r = call_hook("on_child_recover", || f(slot, old, pid));
                    self.after_hook(r, sup);
                }
            }
            Action::Signal { pid, signal, why } => self.signal(pid, signal, why, sup),
            Action::Ready { pids } => {
                log::info!("master ready: {} workers serving", pids.len());
                if let Some(fd) = self.fds_mut().upgrade_report.take() {
                    match rustix::io::write(&fd, upgrade::READY_MESSAGE) {
                        Ok(_) => log::info!("told the old master that this one is ready"),
                        Err(e) => {
                            log::warn!("cannot tell the old master that this one is ready: {e}")
                        }
                    }
                }
                if let Some(n) = &self.notifier {
                    n.send(&format!("READY=1\nSTATUS={}", self.health.status(sup)));
                }
                if let Some(f) = hooks.on_master_ready.as_mut() {
                    let workers: Vec<(usize, u32)> = pids
                        .iter()
                        .filter_map(|&p| Some((sup.slot_of(p)?, p)))
                        .collect();
                    let r = call_hook("on_master_ready", || f(&workers));
                    self.after_hook(r, sup);
                }
            }
            Action::Reloading => {
                if let Some(n) = &self.notifier {
                    n.reloading(&format!("rolling restart; {}", self.health.status(sup)));
                }
            }
            Action::Reloaded => {
                log::info!("rolling restart done: every slot has a new worker serving");
                if let Some(n) = &self.notifier {
                    n.send(&format!("READY=1\nSTATUS={}", self.health.status(sup)));
                }
            }
            Action::Stopping => {
                self.listeners.refuse_new_connections();
                if let Some(n) = &self.notifier {
                    n.send("STOPPING=1\nSTATUS=stopping: workers drain");
                }
            }
            Action::Steer { active } => {
                self.listeners.steer(active);
                if let Some(n) = &self.notifier {
                    n.send(&format!("STATUS={active} worker slots"));
                }
            }
            Action::Closed { slot } => self.listeners.close_slot(slot),
            Action::StartUpgrade => match self.start_upgrade() {
                Ok(pid) => {
                    sup.on_upgrade_started(pid, self.now());
                    log::info!(
                        "upgrade: new master {pid} started; waiting up to {:?} for its workers \
                         to be ready",
                        sup.upgrade_timeout()
                    );
                }
                Err(why) => {
                    self.upgrade_error = Some(why);
                    sup.on_upgrade_failed(self.now());
                }
            },
            Action::UpgradeIgnored { why } => match why {
                Ignored::Stopping => log::info!("SIGUSR2 during a stop: ignored"),
                Ignored::UnderWay { pid: Some(pid) } => {
                    log::info!("SIGUSR2: ignored, the upgrade to pid {pid} is under way")
                }
                Ignored::UnderWay { pid: None } => {
                    log::info!("SIGUSR2: ignored, an upgrade is under way")
                }
            },
            Action::SignalNewMaster { pid, signal } => {
                if signal == Signal::Term {
                    log::info!("stopping the new master {pid} too");
                }
                if let Err(e) = self.reaper.signal(pid, signal) {
                    log::warn!("cannot send {signal} to the new master {pid}: {e}");
                }
            }
            Action::HandedOver { pid } => {
                log::info!("upgrade: new master {pid} is serving; draining the old workers");
                if let Some(n) = &self.notifier {
                    n.send(&format!(
                        "MAINPID={pid}\nSTATUS=handed over to the new master {pid}"
                    ));
                }
                // The new master owns the sockets now: nothing here may close or filter
                // them before the old workers are gone.
                self.forget_upgrade();
            }
            Action::RolledBack { pid, why } => {
                let pid = pid.map_or_else(String::new, |p| format!(" {p}"));
                match why {
                    Rollback::ExecFailed => log::error!(
                        "upgrade failed: {}; the running workers keep serving",
                        self.upgrade_error.take().unwrap_or_default()
                    ),
                    Rollback::Exited(exit) => {
                        log::error!(
                            "upgrade failed: the new master{pid} exited ({exit}) before it was \
                             ready; the running workers keep serving"
                        );
                        self.forget_upgrade();
                    }
                    Rollback::NotReady(timeout) => log::error!(
                        "upgrade failed: the new master{pid} was not ready within {timeout:?}; \
                         killing it, the running workers keep serving"
                    ),
                }
            }
            Action::NewMasterExited { pid, exit } => {
                log::info!("upgrade: new master {pid} stopped ({exit})");
                self.forget_upgrade();
            }
        }
    }

    fn signal(&mut self, pid: u32, signal: Signal, why: Why, sup: &Supervisor) {
        if !self.reaper.contains(pid) {
            return;
        }
        let slot = sup.slot_of(pid).map_or("?".to_owned(), |s| s.to_string());
        match why {
            Why::GraceExpired => log::warn!(
                "worker {slot} (pid {pid}) did not finish draining within the grace period: \
                 sending {signal}"
            ),
            Why::Kill => log::warn!("sending {signal} to worker {slot} (pid {pid})"),
            Why::Retire => log::info!("worker {slot} (pid {pid}) retired: asked to drain"),
            Why::Stop | Why::Forward | Why::Stuck => {
                log::debug!("sending {signal} to worker {slot} (pid {pid})")
            }
        }
        if let Err(e) = self.reaper.signal(pid, signal) {
            log::warn!("cannot send {signal} to worker pid {pid}: {e}");
        }
    }

    /// Acts on a hook's result; also refuses a hook that left threads behind, since the next
    /// fork would then be unsafe. Returns whether the run goes on.
    fn after_hook(&mut self, result: Result<(), Error>, sup: &mut Supervisor) -> bool {
        if let Err(e) = result {
            self.fail(sup, e);
            return false;
        }
        if matches!(self.spawn, Spawn::Exec(_)) {
            return true;
        }
        if let Ok(threads @ 2..) = sys::thread_count() {
            self.fail(sup, Error::NotSingleThreaded { threads });
            return false;
        }
        true
    }

    /// Starts one worker for `slot`. In a forked child this never returns.
    fn spawn<F, T>(&mut self, slot: usize, hooks: &mut Hooks, serve: &mut F) -> io::Result<u32>
    where
        F: FnMut(Option<TcpListener>, Worker) -> T,
        T: Termination,
    {
        self.health.before_spawn(slot);
        if let Spawn::Exec(exec) = &self.spawn {
            let listener = self.listeners.for_slot(slot)?;
            let fds = self.fds.as_ref().expect("the master's descriptors");
            let ready = fds.ready.1.as_fd();
            let heartbeat = self.health.table().map(|t| t.fd());
            let started = std::time::Instant::now();
            let pid = exec.spawn(slot, listener, ready, heartbeat, self.old_mask)?;
            self.health.on_forked(slot, started.elapsed());
            self.adopt(pid)?;
            return Ok(pid);
        }
        self.listeners.for_slot(slot)?;
        flush_stdout();
        let master_pid = sys::getpid();
        let name = sys::identity::WorkerName::new(slot);
        let name = self.setup.names.then(|| name.as_c_str());
        let forked_at = sys::notice::monotonic_ns();
        match sys::fork()? {
            Fork::Child => {
                // The master's values are this process's now, and it never returns into the
                // master's frames: dropping them closes the worker's copies.
                let Fds {
                    ready: (_, ready),
                    death_pipe,
                    ..
                } = self.fds.take().expect("the master's descriptors");
                self.reaper.close_in_child();
                // Only what is there is dropped: each write here is a copy-on-write fault.
                if self.notifier.is_some() {
                    self.notifier = None;
                }
                if self.upgrade.is_some() {
                    self.upgrade = None;
                }
                if self.notify_env {
                    for var in notify::VARIABLES {
                        // The master's to use: a worker must not speak for the service.
                        if std::env::var_os(var).is_some() {
                            sys::remove_env_if_single_threaded(var);
                        }
                    }
                }
                let listener = self.listeners.take_for_worker(slot);
                let setup = ChildSetup {
                    slot,
                    master_pid,
                    listener,
                    ready,
                    old_mask: &self.old_mask,
                    saved_chld: self.saved_chld.as_ref(),
                    death_watch: match (death_pipe, hooks.on_master_death.take()) {
                        (Some((read, _)), Some(f)) => Some((read, f)),
                        _ => None,
                    },
                    heartbeat: self.health.take_table(),
                    setup: &self.setup,
                    forked_at,
                    name,
                };
                child::run(setup, serve)
            }
            Fork::Parent(pid) => {
                let took = sys::notice::monotonic_ns().saturating_sub(forked_at);
                self.health.on_forked(slot, Duration::from_nanos(took));
                self.adopt(pid)?;
                Ok(pid)
            }
        }
    }

    /// Starts watching a just-started worker (see [`Reaper::adopt`]).
    fn adopt(&mut self, pid: u32) -> io::Result<()> {
        self.reaper.adopt(pid, epoll_of(&self.fds), u64::from(pid))
    }

    fn finish(&mut self, outcome: Result<(), Failure>) -> Result<(), Error> {
        let result = match (outcome, self.error.take()) {
            (_, Some(e)) => Err(e),
            (Ok(()), None) => Ok(()),
            (Err(Failure::OverRecovery { count, latest }), None) => {
                log::error!("{count} workers failed to boot within the recover window: giving up");
                Err(Error::OverRecovery {
                    count,
                    exits: latest,
                })
            }
            (Err(Failure::WorkerFatal { slot, pid, code }), None) => {
                Err(Error::WorkerFatal { slot, pid, code })
            }
            (Err(Failure::External), None) => Err(Error::Sys {
                op: "supervising workers",
                source: io::Error::other("failed without a recorded cause"),
            }),
        };
        match &result {
            Ok(()) => log::info!("all workers stopped; master exiting cleanly"),
            Err(e) => log::error!("master stopped: {e}"),
        }
        result
    }

    /// Last resort when the event loop itself fails: KILL and reap every worker directly.
    fn abort(&mut self, err: Error) -> Result<(), Error> {
        log::error!("{err}; killing all workers");
        self.kill_and_reap_all();
        Err(self.error.take().unwrap_or(err))
    }

    /// [`Action::StartUpgrade`]: starts the new master (see [`Upgrade::begin`]). Returns its
    /// pid, or why it could not start.
    fn start_upgrade(&mut self) -> Result<u32, String> {
        let epoll = epoll_of(&self.fds).expect("the event loop runs");
        let tokens = (UPGRADE_READY_TOKEN, UPGRADE_PID_TOKEN);
        let upgrade = Upgrade::begin(
            &self.listeners,
            &self.old_mask,
            &mut self.reaper,
            epoll,
            tokens,
        )?;
        let pid = upgrade.pid;
        self.upgrade = Some(upgrade);
        Ok(pid)
    }

    /// The new master's readiness pipe is readable: a report, or its end.
    fn on_upgrade_report(&mut self, sup: &mut Supervisor) {
        let Some(u) = &self.upgrade else {
            return;
        };
        match u.report() {
            Report::Pending => {}
            Report::Closed => {
                let _ = self.event_loop().epoll.delete(u.ready.as_fd());
            }
            Report::Ready => sup.on_upgrade_ready(self.now()),
        }
    }

    /// Reaps the new master if it exited.
    fn reap_upgrade(&mut self) -> Option<Reaped> {
        let pid = self.upgrade.as_ref()?.pid;
        self.reaper.reap(pid)
    }

    fn on_upgrade_exit(&mut self, how: Reaped, sup: &mut Supervisor) {
        if let Some(pid) = self.upgrade.as_ref().map(|u| u.pid) {
            sup.on_upgrade_exit(pid, exit_of(how), self.now());
        }
    }

    /// Stops watching the new master: it serves (handed over), or it was reaped.
    fn forget_upgrade(&mut self) {
        if let Some(u) = self.upgrade.take() {
            u.end(&mut self.reaper, epoll_of(&self.fds));
        }
    }

    /// KILLs and reaps every child, a new master included.
    fn kill_and_reap_all(&mut self) {
        self.upgrade = None;
        self.reaper.kill_and_reap_all();
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if self.reaper.len() > 0 {
            // Only an unwinding loop gets here with workers alive: none may run on
            // unsupervised.
            log::error!(
                "the master's loop ended abnormally; killing {} workers",
                self.reaper.len()
            );
            self.kill_and_reap_all();
        }
        // Signals that arrived too late to matter would otherwise be delivered, with their
        // default actions, the moment they are unblocked.
        let Some(fds) = &self.fds else {
            return;
        };
        let mut late = Vec::new();
        match &fds.event_loop {
            Some(l) => {
                let _ = l.read_signals(&mut late);
            }
            // The loop never started: a signalfd of the moment reads what is pending.
            None => {
                if let Ok(sigfd) = sys::signalfd(&self.handled) {
                    let _ = sys::read_signals(sigfd.as_fd(), &mut late);
                }
            }
        }
        for s in late {
            log::debug!(
                "{} arrived after the workers stopped; ignored",
                signal::name_of(s)
            );
        }
        if let Some(fw) = &fds.forwarding {
            sys::stop_forwarding(&fw.saved);
        }
        // The workers' handlers go before the signals are unblocked, so that none runs here.
        drop(self.inherited.take());
        let _ = sys::sigmask(MaskHow::Set, &self.old_mask);
        if let Some(saved) = &self.saved_chld {
            let _ = sys::restore_disposition(saved);
        }
    }
}

/// The event loop's epoll instance, once it exists (borrowed apart from the master's other
/// fields).
fn epoll_of(fds: &Option<Fds>) -> Option<&sys::Epoll> {
    fds.as_ref()
        .and_then(|f| f.event_loop.as_ref())
        .map(|l| &l.epoll)
}

#[cfg(test)]
mod tests;
