//! The master's event loop: one `epoll` over a `signalfd` and one pidfd per worker, feeding
//! the [`Supervisor`] and performing its actions.
//!
//! The master blocks the signals it handles, so they arrive only through the signalfd; it
//! sleeps in `epoll_wait` with no timeout unless the supervisor has a deadline (a delayed
//! respawn, a grace period), so an idle master makes no wake-ups at all.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Termination;
use std::time::{Duration, Instant};

use crate::builder::{Backend, HookResult, Hooks};
use crate::child::{self, ChildSetup};
use crate::error::Error;
use crate::exec::ExecSpec;
use crate::supervisor::{Action, Config, Failure, Supervisor, WorkerExit, sig, signal_name};
use crate::sys::{self, Fork, Reaped, SigSet};
use crate::worker::Worker;

/// The signals the master takes over while it runs.
const HANDLED: &[i32] = &[
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGCHLD,
];

/// The epoll token of the signalfd; pidfds use their worker's pid.
const SIGNALFD_TOKEN: u64 = u64::MAX;
/// The epoll token of the pipe fed by the signal handlers of exec mode.
const FORWARD_TOKEN: u64 = u64::MAX - 1;

struct Child {
    pidfd: Option<OwnedFd>,
}

/// What one wake-up of the loop found, handled one at a time.
enum Event {
    Signal(i32),
    Exited(u32, Reaped),
}

/// The handlers that forward signals delivered to other threads (exec mode, where the
/// process may run threads whose masks the master cannot change).
struct Forwarding {
    read: OwnedFd,
    _write: OwnedFd,
    saved: Vec<sys::SavedAction>,
}

/// The master's machinery. Dropping it puts the signal mask and the `SIGCHLD` disposition
/// back as they were and closes every descriptor it opened.
struct Master {
    epoll: sys::Epoll,
    sigfd: OwnedFd,
    old_mask: SigSet,
    saved_chld: Option<sys::SavedAction>,
    /// Pipe whose write end only the master holds: workers watch the read end to learn of
    /// the master's death (used when `on_master_death` is set).
    death_pipe: Option<(OwnedFd, OwnedFd)>,
    children: HashMap<u32, Child>,
    backend: Backend,
    adopts_orphans: bool,
    start: Instant,
    /// Exec mode: how to start a worker. `None`: fork mode.
    exec: Option<ExecSpec>,
    /// Exec mode: signals caught by handlers on other threads arrive through this pipe.
    forwarding: Option<Forwarding>,
    /// The first error that made the run fail; later ones are logged only.
    error: Option<Error>,
}

/// Supervises `cfg.workers` workers until a stop. Fork mode when `exec` is `None` (each
/// worker runs `serve`), exec mode otherwise (`serve` is not called in the master).
pub(crate) fn run<F, T>(
    cfg: Config,
    backend: Backend,
    hooks: &mut Hooks,
    serve: &mut F,
    exec: Option<ExecSpec>,
) -> Result<(), Error>
where
    F: FnMut(Worker) -> T,
    T: Termination,
{
    if exec.is_none() {
        check_single_threaded()?;
    }
    let mode = if exec.is_some() { "exec" } else { "fork" };
    let mut master = Master::new(backend, hooks.on_master_death.is_some(), exec)?;
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
    fn new(backend: Backend, watch_death: bool, exec: Option<ExecSpec>) -> Result<Master, Error> {
        let death_pipe = if watch_death {
            Some(sys::pipe().map_err(Error::sys("creating the master-death pipe"))?)
        } else {
            None
        };
        let epoll = sys::Epoll::new().map_err(Error::sys("epoll_create1"))?;
        // Auto-reaping (SIGCHLD ignored, or SA_NOCLDWAIT) would make exited workers vanish
        // without a trace.
        let saved_chld = match sys::children_auto_reaped() {
            Ok(true) => Some(
                sys::set_default_disposition(libc::SIGCHLD)
                    .map_err(Error::sys("resetting SIGCHLD to its default"))?,
            ),
            _ => None,
        };
        let mask = SigSet::of(HANDLED);
        let old_mask = match sys::sigmask(libc::SIG_BLOCK, &mask) {
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
        let master_sigfd = sys::signalfd(&mask);
        let restore = |e| {
            let _ = sys::sigmask(libc::SIG_SETMASK, &old_mask);
            if let Some(saved) = &saved_chld {
                let _ = sys::restore_disposition(saved);
            }
            e
        };
        let sigfd = master_sigfd.map_err(|e| restore(Error::sys("signalfd")(e)))?;
        if let Err(e) = epoll.add(sigfd.as_fd(), SIGNALFD_TOKEN) {
            return Err(restore(Error::sys("epoll_ctl")(e)));
        }
        let mut master = Master {
            epoll,
            sigfd,
            old_mask,
            saved_chld,
            death_pipe,
            children: HashMap::new(),
            backend,
            adopts_orphans: sys::adopts_orphans(),
            start: Instant::now(),
            exec,
            forwarding: None,
            error: None,
        };
        if master.exec.is_some() {
            // From here on Drop restores everything, the handlers included.
            master.forwarding = Some(master.forward_signals()?);
        }
        Ok(master)
    }

    /// Installs handlers that forward the handled signals through a pipe: in exec mode
    /// other threads may run with these signals unblocked, and the kernel may pick any of
    /// them to deliver a process-directed signal to.
    fn forward_signals(&self) -> Result<Forwarding, Error> {
        let (read, write) =
            sys::pipe_nonblocking().map_err(Error::sys("creating the signal pipe"))?;
        self.epoll
            .add(read.as_fd(), FORWARD_TOKEN)
            .map_err(Error::sys("epoll_ctl"))?;
        let saved = sys::forward_signals(HANDLED, write.as_raw_fd())
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
        F: FnMut(Worker) -> T,
        T: Termination,
    {
        let mut sup = Supervisor::new(cfg);
        let mut tokens = Vec::new();
        let mut signals = Vec::new();
        let mut events = Vec::new();
        loop {
            self.drain(&mut sup, hooks, serve);
            if let Some(outcome) = sup.outcome() {
                let outcome = outcome.clone();
                return self.finish(outcome);
            }
            let timeout = sup.next_deadline().map(|d| d.saturating_sub(self.now()));
            tokens.clear();
            if let Err(e) = self.epoll.wait(timeout, &mut tokens) {
                return self.abort(Error::sys("epoll_wait")(e));
            }
            for &token in &tokens {
                signals.clear();
                if token == FORWARD_TOKEN {
                    if let Some(fw) = &self.forwarding {
                        sys::read_forwarded(fw.read.as_fd(), &mut signals);
                    }
                } else if token == SIGNALFD_TOKEN {
                    if let Err(e) = sys::read_signals(self.sigfd.as_fd(), &mut signals) {
                        return self.abort(Error::sys("reading the signalfd")(e));
                    }
                } else if let Some(how) = self.reap(token as u32) {
                    events.push(Event::Exited(token as u32, how));
                }
                for &signal in &signals {
                    if signal == libc::SIGCHLD {
                        self.on_sigchld(&mut events);
                    } else {
                        events.push(Event::Signal(signal));
                    }
                }
            }
            // Signals first: when Ctrl-C reaches the whole process group, the workers' deaths
            // by SIGINT arrive with the master's own SIGINT, and are then part of the stop
            // rather than crashes to respawn.
            events.sort_by_key(|e| matches!(e, Event::Exited(..)));
            // One event at a time, each followed by the actions it caused: a respawn is
            // performed before the next exit of the batch is counted.
            for event in events.drain(..) {
                match event {
                    Event::Signal(signal) => self.on_signal(signal, &mut sup),
                    Event::Exited(pid, how) => self.on_worker_exit(pid, how, &mut sup, hooks),
                }
                self.drain(&mut sup, hooks, serve);
            }
            sup.on_timer(self.now());
        }
    }

    /// Performs every action the supervisor has queued.
    fn drain<F, T>(&mut self, sup: &mut Supervisor, hooks: &mut Hooks, serve: &mut F)
    where
        F: FnMut(Worker) -> T,
        T: Termination,
    {
        while let Some(action) = sup.next_action() {
            self.perform(action, sup, hooks, serve);
        }
    }

    fn on_signal(&mut self, signal: i32, sup: &mut Supervisor) {
        match signal {
            sig::TERM | sig::INT if sup.is_stopping() => {
                log::warn!(
                    "{} during shutdown: killing workers now",
                    signal_name(signal)
                );
            }
            sig::TERM | sig::INT => log::info!(
                "{}: stopping workers (grace period before KILL)",
                signal_name(signal)
            ),
            sig::HUP => log::info!("SIGHUP: rolling restart of the workers"),
            sig::TTIN => log::info!("SIGTTIN: adding a worker"),
            sig::TTOU => log::info!("SIGTTOU: removing a worker"),
            _ => log::info!("{}: forwarding to the workers", signal_name(signal)),
        }
        sup.on_signal(signal, self.now());
    }

    /// `SIGCHLD`: the sigchld backend reaps every exited child here; the pidfd backend reaps
    /// only orphans it adopted as PID 1 or subreaper (its workers come through their pidfds).
    fn on_sigchld(&mut self, events: &mut Vec<Event>) {
        if self.backend == Backend::Pidfd && !self.adopts_orphans {
            return;
        }
        loop {
            let peek = self.backend == Backend::Pidfd;
            let (pid, how) = match sys::wait_any(peek) {
                Ok(Some(found)) => found,
                Ok(None) => return,
                Err(e) => {
                    log::error!("waitid: {e}");
                    return;
                }
            };
            if self.children.contains_key(&pid) {
                let how = if peek { self.reap(pid) } else { Some(how) };
                if let Some(how) = how {
                    events.push(Event::Exited(pid, how));
                }
            } else {
                if peek {
                    let _ = sys::reap_pid(pid);
                }
                log::debug!("reaped orphan {pid} ({})", exit_of(how));
            }
        }
    }

    /// Reaps the worker `pid` if it has exited (its pidfd is readable).
    fn reap(&mut self, pid: u32) -> Option<Reaped> {
        let child = self.children.get(&pid)?;
        let how = match &child.pidfd {
            Some(fd) => sys::reap_pidfd(fd.as_fd(), pid),
            None => sys::reap_pid(pid),
        };
        match how {
            Ok(how) => how,
            // Already reaped through SIGCHLD in this batch (PID 1 or subreaper).
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => None,
            Err(e) => {
                log::error!("waitid for worker pid {pid}: {e}");
                None
            }
        }
    }

    fn on_worker_exit(&mut self, pid: u32, how: Reaped, sup: &mut Supervisor, hooks: &mut Hooks) {
        if let Some(Child { pidfd: Some(fd) }) = self.children.remove(&pid) {
            let _ = self.epoll.delete(fd.as_fd());
        }
        let exit = exit_of(how);
        let expected = sup.is_stopping();
        let Some(slot) = sup.on_exit(pid, exit, self.now()) else {
            return;
        };
        if expected {
            log::info!("worker {slot} (pid {pid}) stopped: {exit}");
        } else {
            log::warn!("worker {slot} (pid {pid}) exited: {exit}");
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
        F: FnMut(Worker) -> T,
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
                match recovers {
                    Some(old) => log::info!("worker {slot} respawned (pid {pid}, was {old})"),
                    None => log::info!("worker {slot} started (pid {pid})"),
                }
                if let Some(f) = hooks.on_child_spawn.as_mut() {
                    let r = call_hook("on_child_spawn", || f(pid));
                    if !self.after_hook(r, sup) {
                        return;
                    }
                }
                if let (Some(old), Some(f)) = (recovers, hooks.on_child_recover.as_mut()) {
                    let r = call_hook("on_child_recover", || f(old, pid));
                    self.after_hook(r, sup);
                }
            }
            Action::Signal { pid, signal } => {
                let Some(child) = self.children.get(&pid) else {
                    return;
                };
                log::debug!("sending {} to worker pid {pid}", signal_name(signal));
                let sent = match &child.pidfd {
                    Some(fd) => sys::pidfd_send_signal(fd.as_fd(), signal),
                    None => sys::kill(pid, signal),
                };
                match sent {
                    Ok(()) => {}
                    // Already exited, not yet reaped: its exit is on its way.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => log::warn!(
                        "cannot send {} to worker pid {pid}: {e}",
                        signal_name(signal)
                    ),
                }
            }
            Action::Closed { slot } => {
                if let Some(f) = hooks.on_slot_closed.as_mut() {
                    f(slot);
                }
            }
            Action::Ready { pids } => {
                log::info!("master ready: {} workers running", pids.len());
                if let Some(f) = hooks.on_master_ready.as_mut() {
                    let r = call_hook("on_master_ready", || f(&pids));
                    self.after_hook(r, sup);
                }
            }
        }
    }

    /// Acts on a hook's result; also refuses a hook that left threads behind, since the next
    /// fork would then be unsafe. Returns whether the run goes on.
    fn after_hook(&mut self, result: Result<(), Error>, sup: &mut Supervisor) -> bool {
        if let Err(e) = result {
            self.fail(sup, e);
            return false;
        }
        if self.exec.is_some() {
            return true;
        }
        if let Ok(threads @ 2..) = sys::thread_count() {
            self.fail(sup, Error::NotSingleThreaded { threads });
            return false;
        }
        true
    }

    /// Forks one worker for `slot`. In the child this never returns.
    fn spawn<F, T>(&mut self, slot: usize, hooks: &mut Hooks, serve: &mut F) -> io::Result<u32>
    where
        F: FnMut(Worker) -> T,
        T: Termination,
    {
        if let Some(exec) = &self.exec {
            let pid = exec.spawn(slot, self.old_mask)?;
            self.adopt(pid)?;
            return Ok(pid);
        }
        // Anything buffered now would otherwise be written twice, once by each process.
        let _ = io::stdout().flush();
        let _ = io::stderr().flush();
        let master_pid = sys::getpid();
        // Built before the fork so the child allocates nothing: every page it writes is a
        // copy-on-write fault on the way to `serve`.
        let close = self.inherited_fds();
        // SAFETY: the master is single-threaded: `run` checked it before the first fork, and
        // `after_hook` checks it again after every user hook, the only foreign code the master
        // runs; the master itself starts no threads.
        match unsafe { sys::fork() }? {
            Fork::Child => {
                let setup = ChildSetup {
                    slot,
                    master_pid,
                    close,
                    old_mask: self.old_mask,
                    saved_chld: self.saved_chld.as_ref(),
                    death_watch: match (&self.death_pipe, hooks.on_master_death.take()) {
                        (Some((read, _)), Some(f)) => Some((read.as_raw_fd(), f)),
                        _ => None,
                    },
                };
                child::run(setup, serve)
            }
            Fork::Parent(pid) => {
                drop(close);
                self.adopt(pid)?;
                Ok(pid)
            }
        }
    }

    /// Starts watching a just-started worker: with the pidfd backend, opens its pidfd and
    /// adds it to the epoll set. A pid cannot be reused while its process is our unreaped
    /// child, so `pidfd_open` after the start is race-free. A kernel without pidfds
    /// (`ENOSYS`, before 5.3) switches this run to the sigchld backend. On any other failure
    /// the worker is killed and reaped, so nothing leaks.
    fn adopt(&mut self, pid: u32) -> io::Result<()> {
        if self.backend == Backend::Pidfd {
            let registered = sys::pidfd_open(pid).and_then(|fd| {
                self.epoll.add(fd.as_fd(), u64::from(pid))?;
                Ok(fd)
            });
            match registered {
                Ok(fd) => {
                    self.children.insert(pid, Child { pidfd: Some(fd) });
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) && self.children.is_empty() => {
                    log::info!("pidfds unavailable ({e}); using the sigchld backend");
                    self.backend = Backend::Sigchld;
                }
                Err(e) => {
                    let _ = sys::kill(pid, libc::SIGKILL);
                    sys::wait_blocking(pid);
                    return Err(e);
                }
            }
        }
        self.children.insert(pid, Child { pidfd: None });
        Ok(())
    }

    /// The master's descriptors a new worker must close.
    fn inherited_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.epoll.raw(), self.sigfd.as_raw_fd()];
        fds.extend(
            self.children
                .values()
                .filter_map(|c| c.pidfd.as_ref().map(|f| f.as_raw_fd())),
        );
        if let Some((_, write)) = &self.death_pipe {
            fds.push(write.as_raw_fd());
        }
        fds
    }

    fn finish(&mut self, outcome: Result<(), Failure>) -> Result<(), Error> {
        let result = match (outcome, self.error.take()) {
            (_, Some(e)) => Err(e),
            (Ok(()), None) => Ok(()),
            (Err(Failure::OverRecovery { exits }), None) => {
                log::error!("{exits} unexpected worker exits within the recover window: giving up");
                Err(Error::OverRecovery)
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
        for (&pid, child) in &self.children {
            let _ = match &child.pidfd {
                Some(fd) => sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL),
                None => sys::kill(pid, libc::SIGKILL),
            };
        }
        for (pid, _) in std::mem::take(&mut self.children) {
            sys::wait_blocking(pid);
        }
        Err(self.error.take().unwrap_or(err))
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        // Signals that arrived too late to matter would otherwise be delivered, with their
        // default actions, the moment they are unblocked.
        let mut late = Vec::new();
        let _ = sys::read_signals(self.sigfd.as_fd(), &mut late);
        for s in late {
            log::debug!(
                "{} arrived after the workers stopped; ignored",
                signal_name(s)
            );
        }
        if let Some(fw) = &self.forwarding {
            sys::stop_forwarding(&fw.saved);
        }
        let _ = sys::sigmask(libc::SIG_SETMASK, &self.old_mask);
        if let Some(saved) = &self.saved_chld {
            let _ = sys::restore_disposition(saved);
        }
    }
}

fn exit_of(how: Reaped) -> WorkerExit {
    match how {
        Reaped::Exited(code) => WorkerExit::Code(code),
        Reaped::Signaled(signal) => WorkerExit::Signal(signal),
    }
}

/// Runs a hook, turning its error or panic into [`Error::Hook`].
fn call_hook(hook: &'static str, f: impl FnOnce() -> HookResult) -> Result<(), Error> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(Error::Hook {
            hook,
            panicked: false,
            source,
        }),
        Err(payload) => Err(Error::Hook {
            hook,
            panicked: true,
            source: crate::child::panic_message(payload.as_ref()).into(),
        }),
    }
}
