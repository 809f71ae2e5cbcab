//! The master's machinery: what it holds (descriptors, children, sockets, the signal mask it
//! changed), how it is made, and how Drop undoes it all.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::control::{Control, LISTENER_TOKEN};
use super::event_loop::{Loop, PROBATION_TOKEN};
use super::health::Health;
use super::listeners::Listeners;
use super::notify::Notifier;
use super::pid_file::PidFile;
use super::reaper::Reaper;
use super::spawn::Spawn;
use super::upgrade::Upgrade;
use crate::config::{Backend, WorkerSetup};
use crate::error::Error;
use crate::sys::signal::{self, Signal};
use crate::sys::{self, MaskHow, SigSet};

/// The signals the master takes over while it runs.
pub(super) const HANDLED: [Signal; 8] = [
    Signal::Term,
    Signal::Int,
    Signal::Hup,
    Signal::Ttin,
    Signal::Ttou,
    Signal::Usr1,
    Signal::Usr2,
    Signal::Chld,
];

/// The handlers that forward signals delivered to other threads (exec mode, where the
/// process may run threads whose masks the master cannot change).
pub(super) struct Forwarding {
    pub(super) read: OwnedFd,
    pub(super) _write: OwnedFd,
    pub(super) saved: Vec<sys::SavedAction>,
}

/// The master's machinery. Dropping it kills and reaps every worker still alive (the loop
/// unwound), puts the signal mask and the `SIGCHLD` disposition back as they were and closes
/// every descriptor it opened.
pub(super) struct Master {
    /// The descriptors of the loop, `None` only in a forked worker, which drops them.
    pub(super) fds: Option<Fds>,
    pub(super) old_mask: SigSet,
    /// The signals the master handles (blocked, read from the signalfd).
    pub(super) handled: SigSet,
    pub(super) saved_chld: Option<sys::SavedAction>,
    /// The children (workers, a new master) and how they are reaped.
    pub(super) reaper: Reaper,
    pub(super) start: Instant,
    pub(super) spawn: Spawn,
    pub(super) listeners: Listeners,
    pub(super) notifier: Option<Notifier>,
    /// Whether any notification variable is set, which a forked worker then removes
    /// (decided once in the master, so that a worker reads the environment only when it must).
    pub(super) notify_env: bool,
    /// The new master of an upgrade under way: its pid, pidfd and readiness pipe (the
    /// supervisor decides what becomes of it).
    pub(super) upgrade: Option<Upgrade>,
    /// Why the latest upgrade could not start, for the rollback's log line.
    pub(super) upgrade_error: Option<String>,
    /// When the next watchdog ping is due.
    pub(super) next_ping: Option<Duration>,
    /// The first error that made the run fail; later ones are logged only.
    pub(super) error: Option<Error>,
    /// Health checks and the workers' status.
    pub(super) health: Health,
    /// What each forked worker does for itself before `serve`.
    pub(super) setup: WorkerSetup,
    /// Fork mode: the workers' signal handlers, installed once here for them to inherit.
    pub(super) inherited: Option<sys::notice::Inherited>,
    /// The control socket and its clients.
    pub(super) control: Option<Control>,
    /// The PID file.
    pub(super) pid_file: Option<PidFile>,
    /// `fork` or `exec`, for the status.
    pub(super) mode: &'static str,
    /// The reaping backend asked for, for the status.
    pub(super) backend: Backend,
    /// Why the latest upgrade could not start, for its answer.
    pub(super) rollback_detail: Option<String>,
}

/// The master's own descriptors, none of which a worker keeps (close-on-exec does not help
/// without an exec, so a forked worker drops them).
pub(super) struct Fds {
    /// The epoll instance and the signalfd, made by [`Master::ensure_loop`] once the first
    /// workers are forked (the workers forked before never hold them, and until the master
    /// first sleeps it has nothing to wait for: signals stay pending while blocked, and the
    /// readiness pipe and the pidfds stay readable).
    pub(super) event_loop: Option<Loop>,
    /// Workers write their pid here when they enter `serve`: `(read end, write end)`.
    pub(super) ready: (OwnedFd, OwnedFd),
    /// Pipe whose write end only the master holds: workers watch the read end to learn of
    /// the master's death (used when `on_master_death` is set).
    pub(super) death_pipe: Option<(OwnedFd, OwnedFd)>,
    /// Exec mode: signals caught by handlers on other threads arrive through this pipe.
    pub(super) forwarding: Option<Forwarding>,
    /// In a new master started by an upgrade: where to report that every worker is ready.
    pub(super) upgrade_report: Option<OwnedFd>,
    /// In a new master whose old master is on upgrade probation: the probation pipe's read
    /// end (see `PREFORK_PROBATION_FD` in docs/protocol.md).
    pub(super) probation: Option<OwnedFd>,
}

impl Master {
    pub(super) fn new(
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
        let notifier = Notifier::from_env(sys::getpid().get());
        let mut master = Master {
            fds: Some(Fds {
                event_loop: None,
                ready,
                death_pipe,
                forwarding: None,
                upgrade_report: super::upgrade::inherited_report_fd(),
                probation: super::upgrade::inherited_probation_fd(),
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
            notify_env: super::notify::VARIABLES
                .iter()
                .any(|var| std::env::var_os(var).is_some()),
            error: None,
            health,
            setup: WorkerSetup::default(),
            inherited: None,
            control: None,
            pid_file: None,
            mode: "fork",
            backend,
            rollback_detail: None,
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
            let inherited = sys::notice::Inherited::install().map_err(Error::sys(
                "installing the workers' signal handlers (rt_sigaction)",
            ))?;
            master.inherited = Some(inherited);
        }
        Ok(master)
    }

    pub(super) fn fds(&self) -> &Fds {
        self.fds
            .as_ref()
            .expect("only a forked worker gives up the master's descriptors")
    }

    pub(super) fn fds_mut(&mut self) -> &mut Fds {
        self.fds
            .as_mut()
            .expect("only a forked worker gives up the master's descriptors")
    }

    /// Makes the event loop, once (see [`Loop::new`]).
    pub(super) fn ensure_loop(&mut self) -> Result<(), Error> {
        if self.fds().event_loop.is_some() {
            return Ok(());
        }
        let fds = self.fds();
        let forwarding = fds.forwarding.as_ref().map(|fw| fw.read.as_fd());
        let event_loop = Loop::new(&self.handled, fds.ready.0.as_fd(), forwarding, &self.reaper)?;
        if let Some(control) = &self.control {
            event_loop
                .epoll
                .add(control.listener(), LISTENER_TOKEN)
                .map_err(Error::sys("epoll_ctl"))?;
        }
        if let Some(probation) = &fds.probation {
            event_loop
                .epoll
                .add(probation.as_fd(), PROBATION_TOKEN)
                .map_err(Error::sys("epoll_ctl"))?;
        }
        self.fds_mut().event_loop = Some(event_loop);
        Ok(())
    }

    /// The event loop, made by [`Master::ensure_loop`] before the master first sleeps.
    pub(super) fn event_loop(&self) -> &Loop {
        self.fds()
            .event_loop
            .as_ref()
            .expect("the event loop is made before the master first waits")
    }

    /// Installs handlers that forward the handled signals through a pipe: in exec mode
    /// other threads may run with these signals unblocked, and the kernel may pick any of
    /// them to deliver a process-directed signal to.
    pub(super) fn forward_signals(&self) -> Result<Forwarding, Error> {
        // Its read end joins the epoll set in `ensure_loop`.
        let (read, write) =
            sys::pipe_nonblocking().map_err(Error::sys("creating the signal pipe"))?;
        let saved = sys::forward_signals(&HANDLED, write.as_raw_fd())
            .map_err(Error::sys("installing signal handlers (rt_sigaction)"))?;
        Ok(Forwarding {
            read,
            _write: write,
            saved,
        })
    }

    pub(super) fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// KILLs and reaps every child, a new master included.
    pub(super) fn kill_and_reap_all(&mut self) {
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
pub(super) fn epoll_of(fds: &Option<Fds>) -> Option<&sys::Epoll> {
    fds.as_ref()
        .and_then(|f| f.event_loop.as_ref())
        .map(|l| &l.epoll)
}
