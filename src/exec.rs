//! Exec mode: each worker is a fresh `execve` of the current binary, speaking the fasthttp
//! prefork child protocol (see `docs/protocol.md`).
//!
//! The master starts workers with [`std::process::Command`], which forks and execs safely
//! even when the process already runs other threads. Between fork and exec the child runs
//! only async-signal-safe calls: it sets `PR_SET_PDEATHSIG`, puts the listener on fd 3, and
//! marks every other descriptor above 2 close-on-exec. std resets the signal mask and
//! `SIGPIPE` in the child; exec resets every handler.

use std::ffi::OsString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::sys;

pub use crate::protocol::{CHILD_ENV, WORKER_ID_ENV};
/// With reuseport in exec mode: the address the master resolved (so port 0 means the same
/// port in every worker). This crate's addition to the protocol.
pub const REUSEPORT_ADDR_ENV: &str = "PREFORK_REUSEPORT_ADDR";
/// The descriptor a worker finds its listener on.
pub const LISTENER_FD: RawFd = 3;

/// How to start one exec-mode worker.
#[derive(Debug, Clone)]
pub(crate) struct ExecSpec {
    program: OsString,
    arg0: OsString,
    args: Vec<OsString>,
    /// The master's listener, to become the worker's fd 3; `None` with reuseport.
    listener: Option<RawFd>,
    env: Vec<(&'static str, String)>,
}

impl ExecSpec {
    /// Re-executes this binary (`/proc/self/exe`) with this process's arguments.
    pub(crate) fn current_binary(listener: Option<RawFd>) -> ExecSpec {
        let mut args = std::env::args_os();
        let arg0 = args
            .next()
            .unwrap_or_else(|| OsString::from("prefork-worker"));
        ExecSpec {
            program: OsString::from("/proc/self/exe"),
            arg0,
            args: args.collect(),
            listener,
            env: Vec::new(),
        }
    }

    /// Adds an environment variable for every worker.
    pub(crate) fn env(mut self, key: &'static str, value: String) -> ExecSpec {
        self.env.push((key, value));
        self
    }

    /// Starts the worker for `slot`; returns its pid. The child is not reaped by std: the
    /// master reaps it through its pidfd like a forked worker.
    pub(crate) fn spawn(&self, slot: usize, mask: sys::SigSet) -> io::Result<u32> {
        let mut cmd = Command::new(&self.program);
        cmd.arg0(&self.arg0)
            .args(&self.args)
            .env(CHILD_ENV, "1")
            .env(WORKER_ID_ENV, slot.to_string());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        sys::set_exec_child_setup(&mut cmd, self.listener, sys::getpid(), mask);
        let child = cmd.spawn()?;
        Ok(child.id())
    }
}
