//! How a worker process starts: a `fork` that runs `serve` directly, or an exec of the
//! current binary speaking the fasthttp prefork child protocol (see `docs/protocol.md`).
//!
//! Exec mode starts workers with [`std::process::Command`], which forks and execs safely
//! even when the process already runs other threads. Between fork and exec the child runs
//! only async-signal-safe calls: it restores the signal mask, sets `PR_SET_PDEATHSIG`, puts
//! the listeners on fds 3.., the readiness pipe and the heartbeat table after them (fds 4
//! and 5 with one listener), and
//! marks every other descriptor close-on-exec. std resets `SIGPIPE` in the child; exec
//! resets every handler.

use std::ffi::OsString;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::protocol::{CHILD_ENV, READY_FD, READY_FD_ENV, WORKER_ID_ENV};
use crate::protocol::{
    HEARTBEAT_FD, HEARTBEAT_FD_ENV, LISTEN_FDNAMES_CHILD_ENV, REUSEPORT_ADDR_ENV,
};
use crate::sys;

/// How workers start.
pub(crate) enum Spawn {
    /// `fork()` and run `serve` in the child.
    Fork,
    /// Re-execute the binary.
    Exec(ExecSpec),
}

/// How to start one exec-mode worker.
#[derive(Debug, Clone)]
pub(crate) struct ExecSpec {
    program: OsString,
    arg0: OsString,
    args: Vec<OsString>,
}

impl ExecSpec {
    /// Re-executes this binary (`/proc/self/exe`) with this process's arguments.
    pub(crate) fn current_binary() -> ExecSpec {
        let mut args = std::env::args_os();
        let arg0 = args
            .next()
            .unwrap_or_else(|| OsString::from("prefork-worker"));
        ExecSpec {
            program: OsString::from("/proc/self/exe"),
            arg0,
            args: args.collect(),
        }
    }

    /// This binary with other arguments (the unit tests re-execute the test binary).
    #[cfg(test)]
    pub(crate) fn with_args(args: &[&str]) -> ExecSpec {
        ExecSpec {
            program: OsString::from("/proc/self/exe"),
            arg0: OsString::from("prefork-test-worker"),
            args: args.iter().map(OsString::from).collect(),
        }
    }

    /// Starts the worker for `slot` with `listeners` on its fds 3.. (named by `fdnames` in
    /// `PREFORK_LISTEN_FDNAMES` when given), the readiness pipe's write end `ready` right
    /// after them (fd 4 with one listener) and the heartbeat table's memfd, if any, after
    /// that (fd 5); returns its pid. The child is not reaped by std: the master reaps it
    /// through its pidfd like a forked worker.
    pub(crate) fn spawn(
        &self,
        slot: usize,
        listeners: &[BorrowedFd<'_>],
        fdnames: Option<&str>,
        ready: BorrowedFd<'_>,
        heartbeat: Option<BorrowedFd<'_>>,
        mask: sys::SigSet,
    ) -> io::Result<u32> {
        // With no listener (`run`) fd 3 stays closed and the pipe is on fd 4, as always.
        let ready_fd = READY_FD + listeners.len().max(1) as i32 - 1;
        let heartbeat_fd = HEARTBEAT_FD + listeners.len().max(1) as i32 - 1;
        let mut cmd = Command::new(&self.program);
        cmd.arg0(&self.arg0)
            .args(&self.args)
            .env(CHILD_ENV, "1")
            .env(WORKER_ID_ENV, slot.to_string())
            .env(READY_FD_ENV, ready_fd.to_string())
            .env_remove(REUSEPORT_ADDR_ENV);
        match fdnames {
            Some(names) => cmd.env(LISTEN_FDNAMES_CHILD_ENV, names),
            None => cmd.env_remove(LISTEN_FDNAMES_CHILD_ENV),
        };
        for var in super::notify::VARIABLES {
            cmd.env_remove(var);
        }
        match heartbeat {
            Some(_) => cmd.env(HEARTBEAT_FD_ENV, heartbeat_fd.to_string()),
            None => cmd.env_remove(HEARTBEAT_FD_ENV),
        };
        sys::set_exec_child_setup(&mut cmd, listeners, ready, heartbeat, sys::getpid(), mask);
        let child = cmd.spawn()?;
        Ok(child.id())
    }
}
