//! The master's event loop: one epoll instance over the signalfd (the signals the master
//! handles, blocked), the workers' readiness pipe, the forwarding pipe of exec mode, one pidfd
//! per child (pidfd backend) and an upgrade's readiness pipe; each keyed by a token. An idle
//! master sleeps in `epoll_wait` with no timeout but the supervisor's next deadline.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::reaper::Reaper;
use crate::error::Error;
use crate::sys::signal::Signal;
use crate::sys::{self, Reaped, SigSet};

/// The epoll token of the signalfd; pidfds use their worker's pid.
pub(crate) const SIGNALFD_TOKEN: u64 = u64::MAX;
/// The epoll token of the pipe fed by the signal handlers of exec mode.
pub(crate) const FORWARD_TOKEN: u64 = u64::MAX - 1;
/// The epoll token of the readiness pipe.
pub(crate) const READY_TOKEN: u64 = u64::MAX - 2;
/// The epoll token of the readiness pipe of a new master (binary upgrade).
pub(crate) const UPGRADE_READY_TOKEN: u64 = u64::MAX - 3;
/// The epoll token of the pidfd of a new master (binary upgrade).
pub(crate) const UPGRADE_PID_TOKEN: u64 = u64::MAX - 4;
/// The epoll token of the probation pipe of a new master whose old master is on probation.
pub(crate) const PROBATION_TOKEN: u64 = u64::MAX - 6;

/// What one wake-up of the loop found, handled one at a time.
pub(crate) enum Event {
    Signal(Signal),
    Ready(u32),
    Exited(u32, Reaped),
    /// The new master of an upgrade wrote to its readiness pipe (or closed it).
    UpgradeReport,
    /// The new master of an upgrade exited.
    UpgradeExited(Reaped),
    /// The old master wrote to the probation pipe (or closed it).
    ProbationReport,
    /// A client of the control socket sent a command.
    Command(crate::supervisor::Client, crate::supervisor::Command),
}

impl Event {
    /// Signals first (when Ctrl-C reaches the whole process group, the workers' deaths by
    /// SIGINT arrive with the master's own SIGINT and are then part of the stop rather than
    /// crashes to respawn), then readiness (a worker that reported ready and died is judged
    /// as ready), then exits.
    pub(crate) fn order(&self) -> u8 {
        match self {
            Event::Signal(_) => 0,
            Event::Ready(_)
            | Event::UpgradeReport
            | Event::ProbationReport
            | Event::Command(..) => 1,
            Event::Exited(..) | Event::UpgradeExited(_) => 2,
        }
    }
}

/// The epoll instance and the signalfd. Made once the first workers are forked (the workers
/// forked before never hold them, and until the master first sleeps it has nothing to wait
/// for: signals stay pending while blocked, and the readiness pipe and the pidfds stay
/// readable).
pub(crate) struct Loop {
    pub(crate) epoll: sys::Epoll,
    sigfd: OwnedFd,
}

impl Loop {
    /// `epoll_create1` and a signalfd for `handled`, with the signalfd, the readiness pipe
    /// `ready`, the forwarding pipe (exec mode) and every pidfd of `reaper` registered.
    pub(crate) fn new(
        handled: &SigSet,
        ready: BorrowedFd<'_>,
        forwarding: Option<BorrowedFd<'_>>,
        reaper: &Reaper,
    ) -> Result<Loop, Error> {
        let epoll = sys::Epoll::new().map_err(Error::sys("epoll_create1"))?;
        let sigfd = sys::signalfd(handled).map_err(Error::sys("signalfd"))?;
        let add = |fd: BorrowedFd<'_>, token| epoll.add(fd, token).map_err(Error::sys("epoll_ctl"));
        add(sigfd.as_fd(), SIGNALFD_TOKEN)?;
        add(ready, READY_TOKEN)?;
        if let Some(fd) = forwarding {
            add(fd, FORWARD_TOKEN)?;
        }
        reaper
            .register(&epoll, u64::from)
            .map_err(Error::sys("epoll_ctl"))?;
        Ok(Loop { epoll, sigfd })
    }

    /// Reads the signals that arrived (raw numbers) into `raw`.
    pub(crate) fn read_signals(&self, raw: &mut Vec<i32>) -> io::Result<()> {
        sys::read_signals(self.sigfd.as_fd(), raw)
    }
}
