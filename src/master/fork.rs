//! Starting a worker: `fork` (the child's teardown of the master's machinery, then `serve`)
//! or exec mode's `Command`; and watching it.

use std::io;
use std::os::fd::AsFd;
use std::process::Termination;
use std::time::Duration;

use super::hooks::flush_stdout;
use super::spawn::Spawn;
use super::state::{Fds, Master, epoll_of};
use crate::child::{self, ChildSetup};
use crate::config::Hooks;
use crate::listener::Listener;
use crate::sys::{self, Fork};
use crate::worker::Worker;

impl Master {
    /// Starts one worker for `slot`: its pid, and how long the start took the master (the
    /// `fork`, or exec mode's spawn), for [`Health::on_spawned`](super::health::Health). In a
    /// forked child this never returns.
    pub(super) fn spawn<F, T>(
        &mut self,
        slot: usize,
        hooks: &mut Hooks,
        serve: &mut F,
    ) -> io::Result<(u32, Duration)>
    where
        F: FnMut(Vec<(String, Listener)>, Worker) -> T,
        T: Termination,
    {
        self.health.before_spawn(slot);
        if let Spawn::Exec(exec) = &self.spawn {
            let fdnames = self.listeners.child_fdnames();
            let listeners = self.listeners.for_slot(slot)?;
            let fds = self.fds.as_ref().expect("the master's descriptors");
            let ready = fds.ready.1.as_fd();
            let heartbeat = self.health.table().map(|t| t.fd());
            let started = std::time::Instant::now();
            let pid = exec
                .spawn(
                    slot,
                    &listeners,
                    fdnames.as_deref(),
                    ready,
                    heartbeat,
                    self.old_mask,
                )
                .map_err(|e| {
                    // The child's setup reports only an errno: every call it makes is named.
                    named(
                        "starting the worker's program (fork; in the child pthread_sigmask, \
                         prctl(PR_SET_PDEATHSIG), fcntl, dup2; execve)",
                        e,
                    )
                })?;
            let took = started.elapsed();
            self.adopt(pid)?;
            return Ok((pid, took));
        }
        self.listeners.for_slot(slot)?;
        flush_stdout();
        let master_pid = sys::getpid();
        let name = sys::identity::WorkerName::new(slot);
        let name = self.setup.names.then(|| name.as_c_str());
        let forked_at = sys::notice::monotonic_ns();
        match sys::fork().map_err(|e| named("fork", e))? {
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
                if self.control.is_some() {
                    // Closes the listener and the clients (the file stays the master's).
                    self.control = None;
                }
                if self.notify_env {
                    for var in super::notify::VARIABLES {
                        // The master's to use: a worker must not speak for the service.
                        if std::env::var_os(var).is_some() {
                            sys::remove_env_if_single_threaded(var);
                        }
                    }
                }
                let listeners = self.listeners.take_for_worker(slot);
                let setup = ChildSetup {
                    slot,
                    master_pid,
                    listeners,
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
                let pid = pid.get();
                let took = sys::notice::monotonic_ns().saturating_sub(forked_at);
                self.adopt(pid)?;
                Ok((pid, Duration::from_nanos(took)))
            }
        }
    }

    /// Starts watching a just-started worker (see [`Reaper::adopt`]).
    pub(super) fn adopt(&mut self, pid: u32) -> io::Result<()> {
        self.reaper.adopt(pid, epoll_of(&self.fds), u64::from(pid))
    }
}

/// `e`, from the system call `call` on the way to a worker, saying which call failed; and,
/// when a sandbox's system call filter refused it, where the calls a master needs are listed.
fn named(call: &str, e: io::Error) -> io::Error {
    sys::named(call, e)
}

/// What to add to an error `e` of a system call that a sandbox refused (see
/// [`sys::refused_hint`]).
pub(super) fn refused_hint(e: &io::Error) -> &'static str {
    sys::refused_hint(e)
}
