//! Binary upgrade (`SIGUSR2`): the master starts the program anew, from the path it was
//! started from, handing it every listening socket in the systemd socket-activation form;
//! once the new master reports that all its workers are inside `serve`, this one drains its
//! own workers and exits. If the new master exits first, cannot be executed, or is not ready
//! within the upgrade timeout, it is killed and this master keeps serving as if nothing
//! happened.
//!
//! The new master reports readiness on a pipe whose write end it inherits, named by
//! `PREFORK_UPGRADE_FD` (see `docs/protocol.md`).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use super::listeners::Listeners;
use super::reaper::Reaper;
use crate::protocol::{self, PROBATION_FD_ENV, UPGRADE_FD_ENV};
use crate::sys::{self, handover::Handover};

/// The variables a new master must not inherit from this one.
const NOT_INHERITED: [&str; 6] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    UPGRADE_FD_ENV,
    PROBATION_FD_ENV,
    GENERATION_ENV,
];

/// How many binary upgrades led to this master: `0` for one started otherwise, and one more
/// than its old master's for a new master, which gets it in this variable.
pub(crate) const GENERATION_ENV: &str = "PREFORK_GENERATION";

static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Reads this master's generation from [`GENERATION_ENV`] (and removes the variable, which
/// is the master's alone).
pub(crate) fn read_generation() {
    let Some(value) = std::env::var_os(GENERATION_ENV) else {
        return;
    };
    sys::remove_env_if_single_threaded(GENERATION_ENV);
    let n = value
        .to_str()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    GENERATION.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// This master's generation (see [`GENERATION_ENV`]).
pub(crate) fn generation() -> u64 {
    GENERATION.load(std::sync::atomic::Ordering::Relaxed)
}

/// What the new master writes when every one of its workers is ready.
pub(crate) const READY_MESSAGE: &[u8] = b"READY=1\n";

/// What an old master on probation writes to its new master when it took the service back.
pub(crate) const HANDBACK_MESSAGE: &[u8] = b"HANDBACK\n";

/// The program this master was started as: `argv[0]`, the arguments, and what resolving
/// `argv[0]` depends on (the working directory and `PATH`), read on `SIGUSR2`, so a start
/// pays for none of it. While the master runs, only its hooks run the program's code, so
/// these are what they were when `run` began unless a hook changed them. Not
/// `/proc/self/exe`, which names the old file once a deploy replaced it.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    pub(crate) args: Vec<OsString>,
    cwd: Option<PathBuf>,
    search: Option<OsString>,
}

impl Program {
    /// Reads `argv`, the working directory and `PATH`.
    pub(crate) fn current() -> Option<Program> {
        let args: Vec<OsString> = std::env::args_os().collect();
        args.first()?;
        Some(Program {
            args,
            cwd: std::env::current_dir().ok(),
            search: std::env::var_os("PATH"),
        })
    }

    /// `argv[0]` as the shell found it: a path with a slash, taken relative to the working
    /// directory (symlinks kept: a deploy often switches one); a bare name, looked up in
    /// `PATH`; else `/proc/self/exe` resolved now.
    pub(crate) fn path(&self) -> Option<PathBuf> {
        let arg0 = PathBuf::from(self.args.first()?);
        if arg0.components().count() > 1 {
            let joined = self.cwd.as_ref()?.join(arg0);
            return Some(
                joined
                    .components()
                    .filter(|c| *c != std::path::Component::CurDir)
                    .collect(),
            );
        }
        self.search
            .as_ref()
            .and_then(|paths| {
                std::env::split_paths(paths)
                    .map(|dir| dir.join(&arg0))
                    .find(|p| p.is_file())
            })
            .or_else(|| std::env::current_exe().ok())
    }
}

/// An upgrade under way: the new master, until it is ready or gone.
pub(crate) struct Upgrade {
    pub(crate) pid: u32,
    /// The read end of its readiness pipe, in the master's epoll set.
    pub(crate) ready: OwnedFd,
    /// With an upgrade probation: the write end of the probation pipe (see
    /// [`PROBATION_FD_ENV`]).
    pub(crate) probation: Option<OwnedFd>,
}

/// What the readiness pipe said.
pub(crate) enum Report {
    Ready,
    /// Nothing complete yet.
    Pending,
    /// Closed without the message: the new master is failing.
    Closed,
}

impl Upgrade {
    /// Starts the new master with `sockets` (and their names) on fds 3.. and the readiness
    /// pipe after them; `Ok` once it was executed.
    pub(crate) fn start(
        path: &std::path::Path,
        args: &[OsString],
        sockets: &[(std::os::fd::BorrowedFd<'_>, String)],
        mask: &sys::SigSet,
        probation: bool,
    ) -> io::Result<Upgrade> {
        let (read, write) = sys::pipe_nonblocking()?;
        let probation = if probation {
            Some(sys::pipe_nonblocking()?)
        } else {
            None
        };
        let env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| !NOT_INHERITED.iter().any(|n| k == n))
            .collect();
        let upgrade_fd = (3 + sockets.len()).to_string();
        let names: Vec<String> = sockets.iter().map(|(_, n)| n.clone()).collect();
        let mut extra = vec![
            (UPGRADE_FD_ENV, upgrade_fd),
            (GENERATION_ENV, (generation() + 1).to_string()),
        ];
        let mut passed = vec![write.as_fd()];
        if let Some((probation_read, _)) = &probation {
            extra.push((PROBATION_FD_ENV, (4 + sockets.len()).to_string()));
            passed.push(probation_read.as_fd());
        }
        let mut handover =
            Handover::new(path.as_os_str(), args, &env, &extra, sockets.len(), &names)?;
        let fds: Vec<_> = sockets.iter().map(|(fd, _)| *fd).collect();
        let pid = handover.spawn(&fds, &passed, mask)?.get();
        drop(passed);
        drop(write);
        Ok(Upgrade {
            pid,
            ready: read,
            probation: probation.map(|(_, w)| w),
        })
    }

    /// Reads what the new master wrote so far.
    /// Starts the new master with every listening socket of `listeners` (and, for `run`,
    /// every listening socket the program holds, as duplicates), and watches it: its
    /// readiness pipe in `epoll` under `tokens.0`, its exit through `reaper` (`tokens.1`).
    /// Returns why it could not start.
    pub(crate) fn begin(
        listeners: &Listeners,
        mask: &sys::SigSet,
        reaper: &mut Reaper,
        epoll: &sys::Epoll,
        tokens: (u64, u64),
        probation: bool,
    ) -> Result<Upgrade, String> {
        let Some((path, args)) = Program::current().and_then(|p| Some((p.path()?, p.args))) else {
            return Err("the program's path is unknown".to_owned());
        };
        let caller = match listeners {
            Listeners::Caller => sys::listening_sockets(),
            _ => Vec::new(),
        };
        let mut sockets = listeners.handover();
        sockets.extend(
            caller
                .iter()
                .map(|fd| (fd.as_fd(), crate::listen::SHARED_NAME.to_owned())),
        );
        log::info!(
            "SIGUSR2: upgrading: starting {} with {} listening sockets",
            path.display(),
            sockets.len()
        );
        let started = Upgrade::start(&path, &args, &sockets, mask, probation);
        drop(sockets);
        // The new master has its copies (or failed to start): ours of `run`'s sockets close.
        drop(caller);
        let upgrade = started.map_err(|e| format!("cannot execute {}: {e}", path.display()))?;
        if let Err(e) = epoll.add(upgrade.ready.as_fd(), tokens.0) {
            log::error!("upgrade: cannot watch the new master's readiness ({e})");
        }
        if let Err(e) = reaper.watch(upgrade.pid, Some(epoll), tokens.1) {
            log::error!("upgrade: cannot open a pidfd of the new master ({e})");
        }
        Ok(upgrade)
    }

    /// Stops watching the new master: it serves (handed over), or it was reaped.
    pub(crate) fn end(self, reaper: &mut Reaper, epoll: Option<&sys::Epoll>) {
        if let Some(epoll) = epoll {
            let _ = epoll.delete(self.ready.as_fd());
        }
        reaper.forget(self.pid, epoll);
    }

    /// The old master took the service back: tells the new master so (it then stops without
    /// touching the shared sockets), and closes the probation pipe.
    pub(crate) fn hand_back(&mut self) -> io::Result<()> {
        let Some(fd) = self.probation.take() else {
            return Err(io::Error::other("no probation pipe"));
        };
        rustix::io::write(&fd, HANDBACK_MESSAGE)?;
        Ok(())
    }

    pub(crate) fn report(&self) -> Report {
        let mut buf = [0u8; 64];
        match rustix::io::read(&self.ready, &mut buf) {
            Ok(0) => Report::Closed,
            Ok(n) if buf[..n].starts_with(READY_MESSAGE) => Report::Ready,
            Ok(_) => Report::Closed,
            Err(_) => Report::Pending,
        }
    }
}

/// In a new master started by an upgrade: the write end of the readiness pipe, taken from
/// `PREFORK_UPGRADE_FD` (and made close-on-exec, so workers do not inherit it). `None` when
/// the variable is absent or does not name a pipe.
pub(crate) fn inherited_report_fd() -> Option<OwnedFd> {
    let value = std::env::var_os(UPGRADE_FD_ENV)?;
    sys::remove_env_if_single_threaded(UPGRADE_FD_ENV);
    let fd = match protocol::parse_upgrade_fd(Some(value.as_encoded_bytes())) {
        Ok(Some(fd)) => fd,
        Ok(None) => return None,
        Err(e) => {
            log::warn!("{e}; not reporting readiness to the old master");
            return None;
        }
    };
    take_pipe(
        UPGRADE_FD_ENV,
        sys::Designated::UpgradePipe(fd),
        "not reporting readiness",
    )
}

/// In a new master whose old master is on upgrade probation: the read end of the probation
/// pipe, taken from `PREFORK_PROBATION_FD` (close-on-exec). `None` when the variable is absent
/// or does not name a pipe.
pub(crate) fn inherited_probation_fd() -> Option<OwnedFd> {
    let value = std::env::var_os(PROBATION_FD_ENV)?;
    sys::remove_env_if_single_threaded(PROBATION_FD_ENV);
    let digits = value
        .to_str()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
    let Some(fd) = digits
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|&fd| fd >= 3)
    else {
        log::warn!(
            "{PROBATION_FD_ENV}={}: expected a descriptor number from 3 on, digits only; \
             not on probation",
            value.to_string_lossy()
        );
        return None;
    };
    take_pipe(
        PROBATION_FD_ENV,
        sys::Designated::ProbationPipe(fd),
        "not on probation",
    )
}

/// Takes the pipe the old master passed on `pipe`'s number (named by the variable `var`),
/// made close-on-exec; `None` (logged, with `otherwise`) when it is no pipe.
fn take_pipe(var: &str, pipe: sys::Designated, otherwise: &str) -> Option<OwnedFd> {
    let fd = pipe.fd();
    if !sys::is_pipe(fd) {
        log::warn!("{var}={fd} is not a pipe; {otherwise}");
        return None;
    }
    let fd = pipe.take()?;
    if let Err(e) = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC) {
        log::warn!("cannot make the pipe of {var} close-on-exec: {e}");
    }
    Some(fd)
}

/// What the probation pipe said.
pub(crate) enum HandBack {
    /// The old master took the service back.
    HandedBack,
    /// Nothing complete yet.
    Pending,
    /// Closed without the message: the probation ended.
    Ended,
}

/// Reads what the old master wrote on the probation pipe `fd`.
pub(crate) fn read_probation(fd: &OwnedFd) -> HandBack {
    let mut buf = [0u8; 64];
    match rustix::io::read(fd, &mut buf) {
        Ok(0) => HandBack::Ended,
        Ok(n) if buf[..n].starts_with(HANDBACK_MESSAGE) => HandBack::HandedBack,
        Ok(_) => HandBack::Ended,
        Err(_) => HandBack::Pending,
    }
}
