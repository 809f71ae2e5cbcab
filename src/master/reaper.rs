//! Reaping: the master's children (its workers and a new master of an upgrade) watched and
//! reaped through one type, with the pidfd and the SIGCHLD backends behind it.
//!
//! * pidfd (Linux 5.3 and later): one pidfd per child in the master's epoll set, keyed by a
//!   token the caller chooses; a readable pidfd is reaped with `waitid(P_PIDFD)`.
//! * sigchld: the signalfd's `SIGCHLD` wakes the loop, and [`Reaper::on_sigchld`] reaps
//!   every child that exited with `waitid(P_ALL, WNOHANG)`.
//!
//! The backend is decided once, at the first child: its pidfd must open and the kernel must
//! let the master wait on it (`waitid(P_PIDFD, WNOWAIT)`, which reaps nothing). A kernel
//! without pidfds (`ENOSYS`), or a sandbox whose system call filter refuses either call
//! (`EPERM`, `EACCES`), switches the run to sigchld, logged once with the cause. Signalling a
//! child goes through its pidfd until a sandbox refuses `pidfd_send_signal`; from then on,
//! decided once and logged once, through `kill(2)`, which is as exact for an unreaped child
//! (its pid cannot be reused). A process that is PID 1 or a subreaper also adopts orphans,
//! which [`Reaper::on_sigchld`] reaps (and forgets) under either backend. A child whose
//! watch cannot be set up is killed and reaped at once ([`Reaper::adopt`]), and
//! [`Reaper::kill_and_reap_all`] leaves no child behind.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use super::pids::PidMap;
use crate::config::Backend;
use crate::exit::WorkerExit;
use crate::sys::signal::Signal;
use crate::sys::{self, Reaped};

/// One watched child.
struct Child {
    /// Its pidfd (pidfd backend).
    pidfd: Option<OwnedFd>,
}

/// The children of the master, and how they are reaped.
pub(crate) struct Reaper {
    backend: Backend,
    /// Whether the backend was decided (at the first child).
    decided: bool,
    /// Whether children are signalled through their pidfds; false once a sandbox refused
    /// `pidfd_send_signal`.
    pidfd_signals: Cell<bool>,
    adopts_orphans: bool,
    children: PidMap<Child>,
}

impl Reaper {
    /// A reaper on `backend`.
    pub(crate) fn new(backend: Backend) -> Reaper {
        Reaper {
            backend,
            decided: false,
            pidfd_signals: Cell::new(true),
            adopts_orphans: sys::adopts_orphans(),
            children: PidMap::default(),
        }
    }

    /// Makes room for `n` children, so that no spawn grows the table.
    pub(crate) fn reserve(&mut self, n: usize) {
        self.children.reserve(n);
    }

    /// How many children are watched.
    pub(crate) fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether `pid` is a watched child.
    pub(crate) fn contains(&self, pid: u32) -> bool {
        self.children.contains_key(&pid)
    }

    /// Watches the just-started child `pid`; its pidfd goes into `epoll` under `token`
    /// (when `epoll` is `None`, [`Reaper::register`] adds it later). A pid cannot be reused
    /// while its process is our unreaped child, so `pidfd_open` after the start is race-free.
    /// At the first child, a refused pidfd call switches the run to the sigchld backend (see
    /// the module docs). On any other failure the child is killed and reaped, and the error
    /// returned: nothing leaks.
    pub(crate) fn adopt(
        &mut self,
        pid: u32,
        epoll: Option<&sys::Epoll>,
        token: u64,
    ) -> io::Result<()> {
        if let Err(e) = self.watch(pid, epoll, token) {
            if let Some(pid) = sys::Pid::new(pid) {
                // A child the KILL did not reach is not waited for: it ends with the master.
                if sys::kill(pid, Signal::Kill).is_ok() {
                    let _ = sys::wait_blocking(pid);
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// As [`Reaper::adopt`], but a child whose pidfd cannot be had is still watched, through
    /// `SIGCHLD` alone (for a new master, which must not be killed for it).
    pub(crate) fn watch(
        &mut self,
        pid: u32,
        epoll: Option<&sys::Epoll>,
        token: u64,
    ) -> io::Result<()> {
        if self.backend == Backend::Pidfd {
            // At the first child the backend is decided: its pidfd must open, and the kernel
            // (or the sandbox) must let this process wait on it.
            let opened = match sys::Pid::try_from(pid).and_then(sys::pidfd_open) {
                Ok(fd) if !self.decided => match sys::probe_pidfd(fd.as_fd()) {
                    Ok(()) => Ok(fd),
                    Err(e) => Err(("waitid(P_PIDFD)", e)),
                },
                Ok(fd) => Ok(fd),
                Err(e) => Err(("pidfd_open", e)),
            };
            match opened {
                Ok(fd) => {
                    self.decided = true;
                    if let Some(epoll) = epoll {
                        if let Err(e) = epoll.add(fd.as_fd(), token) {
                            self.children.insert(pid, Child { pidfd: None });
                            return Err(e);
                        }
                    }
                    self.children.insert(pid, Child { pidfd: Some(fd) });
                    return Ok(());
                }
                Err((call, e)) if !self.decided && sys::is_refused(&e) => {
                    if e.raw_os_error() == Some(libc::ENOSYS) {
                        log::info!(
                            "pidfds unavailable ({call}: {e}); using the sigchld backend \
                             (PREFORK_BACKEND=sigchld skips the attempt)"
                        );
                    } else {
                        log::warn!(
                            "pidfds refused ({call}: {e}), as a sandbox's system call filter \
                             does; using the sigchld backend (PREFORK_BACKEND=sigchld skips \
                             the attempt)"
                        );
                    }
                    self.backend = Backend::Sigchld;
                }
                Err((_, e)) => {
                    self.children.insert(pid, Child { pidfd: None });
                    return Err(e);
                }
            }
        }
        self.decided = true;
        self.children.insert(pid, Child { pidfd: None });
        Ok(())
    }

    /// Adds every pidfd to `epoll`, keyed by `token(pid)`: the children started before the
    /// event loop existed.
    pub(crate) fn register(
        &self,
        epoll: &sys::Epoll,
        token: impl Fn(u32) -> u64,
    ) -> io::Result<()> {
        for (&pid, child) in &self.children {
            if let Some(fd) = &child.pidfd {
                epoll.add(fd.as_fd(), token(pid))?;
            }
        }
        Ok(())
    }

    /// Reaps `pid` if it has exited (its pidfd is readable, or `SIGCHLD` said so), without
    /// forgetting it: [`Reaper::forget`] does, once its exit is handled.
    pub(crate) fn reap(&mut self, pid: u32) -> Option<Reaped> {
        let child = self.children.get(&pid)?;
        let how = match &child.pidfd {
            Some(fd) => sys::Pid::try_from(pid).and_then(|pid| sys::reap_pidfd(fd.as_fd(), pid)),
            None => sys::Pid::try_from(pid).and_then(sys::reap_pid),
        };
        match how {
            Ok(how) => how,
            // Already reaped through SIGCHLD in this batch (PID 1 or subreaper).
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => None,
            Err(e) => {
                log::error!("waitid for pid {pid}: {e}");
                None
            }
        }
    }

    /// Stops watching `pid` (reaped, or no longer ours to watch): its pidfd leaves `epoll`
    /// and closes.
    pub(crate) fn forget(&mut self, pid: u32, epoll: Option<&sys::Epoll>) {
        if let Some(Child { pidfd: Some(fd) }) = self.children.remove(&pid) {
            if let Some(epoll) = epoll {
                let _ = epoll.delete(fd.as_fd());
            }
        }
    }

    /// `SIGCHLD`: under the sigchld backend, reaps every child that exited and hands each
    /// to `found`; under either backend, reaps and logs the orphans a PID 1 or subreaper
    /// adopted. (Under the pidfd backend a watched child is left to its pidfd.)
    pub(crate) fn on_sigchld(&mut self, mut found: impl FnMut(u32, Reaped)) {
        if self.backend == Backend::Pidfd && !self.adopts_orphans {
            return;
        }
        loop {
            let peek = self.backend == Backend::Pidfd;
            let (child, how) = match sys::wait_any(peek) {
                Ok(Some(found)) => found,
                Ok(None) => return,
                Err(e) => {
                    log::error!("waitid: {e}");
                    return;
                }
            };
            let pid = child.get();
            if self.children.contains_key(&pid) {
                let how = if peek { self.reap(pid) } else { Some(how) };
                if let Some(how) = how {
                    found(pid, how);
                }
            } else {
                if peek {
                    let _ = sys::reap_pid(child);
                }
                log::debug!("reaped orphan {pid} ({})", exit_of(how));
            }
        }
    }

    /// Sends `signal` to the child `pid`, through its pidfd when it has one (no pid-reuse
    /// race; without one, a pid cannot be reused while its process is our unreaped child).
    /// A child that already exited (`ESRCH`) is not an error: its exit is on its way.
    pub(crate) fn signal(&self, pid: u32, signal: Signal) -> io::Result<()> {
        let pidfd = self
            .children
            .get(&pid)
            .and_then(|c| c.pidfd.as_ref())
            .filter(|_| self.pidfd_signals.get());
        let by_pid = || sys::Pid::try_from(pid).and_then(|pid| sys::kill(pid, signal));
        let sent = match pidfd {
            Some(fd) => match sys::pidfd_send_signal(fd.as_fd(), signal) {
                Err(e) if sys::is_refused(&e) => {
                    // Decided once, for every child: kill(2) is as exact for an unreaped
                    // child, whose pid cannot be reused.
                    self.pidfd_signals.set(false);
                    log::warn!(
                        "pidfd_send_signal refused ({e}), as a sandbox's system call filter \
                         does; signalling children with kill(2) from now on"
                    );
                    by_pid()
                }
                sent => sent,
            },
            None => by_pid(),
        };
        match sent {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            sent => sent,
        }
    }

    /// KILLs every child and waits for each (`wait4`): nothing of the master's outlives
    /// this. It always returns: a child whose KILL was refused (a sandbox refusing both
    /// `pidfd_send_signal` and `kill`) is not waited for, and where the wait itself fails
    /// (`wait4` refused) the master waits for no more; either is logged, and such children
    /// end with the master at the latest (`PR_SET_PDEATHSIG`).
    pub(crate) fn kill_and_reap_all(&mut self) {
        let mut unkilled = Vec::new();
        for &pid in self.children.keys() {
            if let Err(e) = self.signal(pid, Signal::Kill) {
                log::error!("cannot KILL child {pid} ({e}); it ends with the master");
                unkilled.push(pid);
            }
        }
        let mut waiting = true;
        for (pid, _) in std::mem::take(&mut self.children) {
            if !waiting || unkilled.contains(&pid) {
                continue;
            }
            if let Some(pid) = sys::Pid::new(pid) {
                if let Err(e) = sys::wait_blocking(pid) {
                    log::error!(
                        "cannot wait for the killed children ({}); they end with the master",
                        sys::named("wait4", e)
                    );
                    waiting = false;
                }
            }
        }
    }

    /// In a forked worker: closes the siblings' pidfds. Iterating by value reads the table
    /// without writing to it, and the table itself is left to the worker's copy of the heap:
    /// every page a worker writes is a copy-on-write fault.
    #[inline]
    pub(crate) fn close_in_child(&mut self) {
        if !self.children.is_empty() {
            let mut siblings = std::mem::take(&mut self.children).into_iter();
            siblings.by_ref().for_each(drop);
            std::mem::forget(siblings);
        }
    }
}

/// How a reaped child ended, as the supervisor judges it.
pub(crate) fn exit_of(how: Reaped) -> WorkerExit {
    match how {
        Reaped::Exited(code) => WorkerExit::Code(code),
        Reaped::Signaled(signal) => WorkerExit::Signal(crate::exit::Signal::from_raw(signal)),
    }
}
