//! The master's loop: sleep in the event loop, turn what woke it into the supervisor's
//! events (one at a time, each followed by the actions it caused), until the outcome.

use crate::listener::Listener;
use std::io;
use std::os::fd::AsFd;
use std::process::Termination;

use super::control::{CLIENT_TOKEN_BASE, Control, LISTENER_TOKEN, Request};
use super::event_loop::{
    Event, FORWARD_TOKEN, PROBATION_TOKEN, READY_TOKEN, SIGNALFD_TOKEN, UPGRADE_PID_TOKEN,
    UPGRADE_READY_TOKEN,
};
use super::hooks::call_hook;
use super::reaper::exit_of;
use super::spawn::Spawn;
use super::state::{Master, epoll_of};
use super::upgrade::{HandBack, Report};
use crate::config::Hooks;
use crate::error::Error;
use crate::supervisor::{Cause, Command, Config, Exited, Failure, Supervisor};
use crate::sys::signal::Signal;
use crate::sys::{self, Reaped};
use crate::worker::Worker;

impl Master {
    /// Records the error that fails the run (the first one wins) and tells the supervisor.
    pub(super) fn fail(&mut self, sup: &mut Supervisor, err: Error) {
        log::error!("{err}");
        if self.error.is_none() {
            self.error = Some(err);
        }
        sup.fail(self.now());
    }

    pub(super) fn supervise<F, T>(
        &mut self,
        cfg: Config,
        hooks: &mut Hooks,
        serve: &mut F,
    ) -> Result<(), Error>
    where
        F: FnMut(Vec<(String, Listener)>, Worker) -> T,
        T: Termination,
    {
        let mut sup = Supervisor::new(cfg);
        if self.fds().probation.is_some() {
            // 0 when the old master is outside this pid namespace (no `Pid`: never signalled).
            let old = sys::getppid().map_or(0, sys::Pid::get);
            log::info!(
                "the old master {old} is on upgrade probation: no upgrade until it ends; \
                 rollback is forwarded to it"
            );
            sup.on_probation(old);
        }
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
            let control = self.control.as_ref().and_then(Control::next_deadline);
            let deadline = [sup.next_deadline(), self.next_ping, checks, control]
                .into_iter()
                .flatten()
                .min();
            let timeout = deadline.map(|d| d.saturating_sub(self.now()));
            tokens.clear();
            if let Err(e) = self.ensure_loop() {
                return self.abort(e);
            }
            if let Err(e) = self.event_loop().epoll.wait(timeout, &mut tokens) {
                return self.abort(Error::sys("epoll_wait (epoll_pwait)")(e));
            }
            for &token in &tokens {
                raw.clear();
                match token {
                    FORWARD_TOKEN => {
                        if let Some(fw) = &self.fds().forwarding {
                            if let Err(e) = sys::read_forwarded(fw.read.as_fd(), &mut raw) {
                                let e = Error::sys("reading the signal pipe (read)")(e);
                                return self.abort(e);
                            }
                        }
                    }
                    SIGNALFD_TOKEN => {
                        if let Err(e) = self.event_loop().read_signals(&mut raw) {
                            return self.abort(Error::sys("reading the signalfd (read)")(e));
                        }
                    }
                    READY_TOKEN => {
                        let mut pids = Vec::new();
                        if let Err(e) = sys::read_pids(self.fds().ready.0.as_fd(), &mut pids) {
                            let e = Error::sys("reading the readiness pipe (read)")(e);
                            return self.abort(e);
                        }
                        events.extend(pids.into_iter().map(Event::Ready));
                    }
                    UPGRADE_READY_TOKEN => events.push(Event::UpgradeReport),
                    PROBATION_TOKEN => events.push(Event::ProbationReport),
                    LISTENER_TOKEN => {
                        let now = self.now();
                        if let (Some(c), Some(epoll)) = (&mut self.control, epoll_of(&self.fds)) {
                            c.accept(epoll, now);
                        }
                    }
                    t if (CLIENT_TOKEN_BASE..LISTENER_TOKEN - (1 << 20)).contains(&t) => {
                        if let (Some(c), Some(epoll)) = (&mut self.control, epoll_of(&self.fds)) {
                            if let Some(Request::Command(id, command)) = c.on_ready(t, epoll) {
                                events.push(Event::Command(id, command));
                            }
                        }
                    }
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
                    Event::ProbationReport => self.on_probation_report(&mut sup),
                    Event::UpgradeExited(how) => self.on_upgrade_exit(how, &mut sup),
                    Event::Command(client, command) => {
                        let name = super::answer::name(command);
                        match command {
                            Command::Status | Command::Metrics => {
                                log::debug!("control socket: {name}")
                            }
                            _ => log::info!("control socket: {name}"),
                        }
                        sup.on_command(client, command, self.now());
                    }
                }
                self.drain(&mut sup, hooks, serve);
            }
            #[cfg(test)]
            super::tests::maybe_panic(&sup);
            self.ping_watchdog();
            let now = self.now();
            if let (Some(c), Some(epoll)) = (&mut self.control, epoll_of(&self.fds)) {
                c.on_timer(now, epoll);
            }
            self.health.tick(self.now(), &mut sup);
            sup.on_timer(self.now());
        }
    }

    pub(super) fn ping_watchdog(&mut self) {
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
    pub(super) fn drain<F, T>(&mut self, sup: &mut Supervisor, hooks: &mut Hooks, serve: &mut F)
    where
        F: FnMut(Vec<(String, Listener)>, Worker) -> T,
        T: Termination,
    {
        while let Some(action) = sup.next_action() {
            self.perform(action, sup, hooks, serve);
        }
    }

    pub(super) fn on_signal(&mut self, signal: Signal, sup: &mut Supervisor) {
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
    pub(super) fn on_sigchld(&mut self, events: &mut Vec<Event>) {
        let upgrade = self.upgrade.as_ref().map(|u| u.pid);
        self.reaper.on_sigchld(|pid, how| {
            events.push(if Some(pid) == upgrade {
                Event::UpgradeExited(how)
            } else {
                Event::Exited(pid, how)
            })
        });
    }

    pub(super) fn on_worker_exit(
        &mut self,
        pid: u32,
        how: Reaped,
        sup: &mut Supervisor,
        hooks: &mut Hooks,
    ) {
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
                super::health::exit_cause(cause)
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

    /// Acts on a hook's result; also refuses a hook that left threads behind, since the next
    /// fork would then be unsafe. Returns whether the run goes on.
    pub(super) fn after_hook(&mut self, result: Result<(), Error>, sup: &mut Supervisor) -> bool {
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

    /// At exit: the control socket's last replies and its file, the PID file (each removed
    /// only while it is still this master's).
    pub(super) fn close_operator(&mut self) {
        if let Some(mut c) = self.control.take() {
            c.finish();
            c.remove();
        }
        if let Some(p) = self.pid_file.take() {
            p.remove(sys::getpid().get());
        }
    }

    pub(super) fn finish(&mut self, outcome: Result<(), Failure>) -> Result<(), Error> {
        self.close_operator();
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
            (Err(Failure::Unreaped { pids }), None) => Err(Error::Unreaped { pids }),
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
    pub(super) fn abort(&mut self, err: Error) -> Result<(), Error> {
        log::error!("{err}; killing all workers");
        self.kill_and_reap_all();
        self.close_operator();
        Err(self.error.take().unwrap_or(err))
    }

    /// The new master's readiness pipe is readable: a report, or its end.
    pub(super) fn on_upgrade_report(&mut self, sup: &mut Supervisor) {
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

    /// The probation pipe is readable: the old master took the service back, or its
    /// probation ended.
    pub(super) fn on_probation_report(&mut self, sup: &mut Supervisor) {
        let Some(fd) = &self.fds().probation else {
            return;
        };
        let report = super::upgrade::read_probation(fd);
        if matches!(report, HandBack::Pending) {
            return;
        }
        if let Some(fd) = self.fds_mut().probation.take() {
            let _ = self.event_loop().epoll.delete(fd.as_fd());
        }
        match report {
            HandBack::HandedBack => {
                log::info!("upgrade probation: the old master took the service back");
                sup.on_handed_back(self.now());
            }
            HandBack::Ended => {
                log::info!("upgrade probation ended: the old master is gone, this one serves");
                sup.on_probation_ended();
            }
            HandBack::Pending => {}
        }
    }

    /// Reaps the new master if it exited.
    pub(super) fn reap_upgrade(&mut self) -> Option<Reaped> {
        let pid = self.upgrade.as_ref()?.pid;
        self.reaper.reap(pid)
    }

    pub(super) fn on_upgrade_exit(&mut self, how: Reaped, sup: &mut Supervisor) {
        if let Some(pid) = self.upgrade.as_ref().map(|u| u.pid) {
            sup.on_upgrade_exit(pid, exit_of(how), self.now());
        }
    }

    /// Stops watching the new master: it serves (handed over), or it was reaped.
    pub(super) fn forget_upgrade(&mut self) {
        if let Some(u) = self.upgrade.take() {
            u.end(&mut self.reaper, epoll_of(&self.fds));
        }
    }
}
