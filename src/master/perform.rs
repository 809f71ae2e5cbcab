//! Performing the supervisor's actions: spawns, signals, notifications, steering, the
//! upgrade's steps.

use crate::listener::Listener;
use std::process::Termination;

use super::answer::{Facts, render};
use super::event_loop::{UPGRADE_PID_TOKEN, UPGRADE_READY_TOKEN};
use super::hooks::call_hook;
use super::state::{Master, epoll_of};
use super::upgrade::Upgrade;
use crate::config::Hooks;
use crate::error::Error;
use crate::supervisor::{Action, Answer, Client, Ignored, Rollback, Supervisor, Why};
use crate::sys::signal::Signal;
use crate::worker::Worker;

impl Master {
    pub(super) fn perform<F, T>(
        &mut self,
        action: Action,
        sup: &mut Supervisor,
        hooks: &mut Hooks,
        serve: &mut F,
    ) where
        F: FnMut(Vec<(String, Listener)>, Worker) -> T,
        T: Termination,
    {
        match action {
            Action::Spawn { slot, recovers } => {
                let (pid, took) = match self.spawn(slot, hooks, serve) {
                    Ok(started) => started,
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
                self.health.on_spawned(slot, pid, self.now(), took);
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
                // Before the old master (if any) hears of it: once it answers its upgrade's
                // client, the path and the PID file name this master.
                if let Some(c) = &mut self.control {
                    c.take_over();
                }
                if let Some(p) = &self.pid_file {
                    p.write(crate::sys::getpid().get());
                }
                let report = self.fds_mut().upgrade_report.take();
                if report.is_none() {
                    self.listeners.files_are_ours();
                }
                if let Some(fd) = report {
                    match rustix::io::write(&fd, super::upgrade::READY_MESSAGE) {
                        Ok(_) => {
                            log::info!("told the old master that this one is ready");
                            self.listeners.files_are_ours();
                        }
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
            Action::StartUpgrade => match self.start_upgrade(!sup.upgrade_probation().is_zero()) {
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
                Ignored::Probation { pid } => log::warn!(
                    "SIGUSR2: refused, the old master {pid} is on upgrade probation; upgrade \
                     once it ended"
                ),
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
                self.listeners.handed_over();
                if let Some(n) = &self.notifier {
                    n.send(&format!(
                        "MAINPID={pid}\nSTATUS=handed over to the new master {pid}"
                    ));
                }
                // The new master owns the sockets now: nothing here may close or filter
                // them before the old workers are gone.
                if sup.new_master().is_none() {
                    self.forget_upgrade();
                }
            }
            Action::Probation { pid, until } => {
                let left = until.saturating_sub(self.now());
                log::info!(
                    "upgrade probation: the old workers are gone; waiting {left:?} for a \
                     rollback (SIGHUP or `rollback`) before leaving the service to {pid}"
                );
                if let Some(n) = &self.notifier {
                    n.send(&format!("STATUS=upgrade probation: {pid} serves"));
                }
            }
            Action::ProbationEnded { pid } => {
                log::info!(
                    "upgrade probation ended: no rollback to the new master {pid} any more; \
                     this master exits once its workers are gone"
                );
                // Not waited for: it serves on, this master's child until it exits.
                self.forget_upgrade();
            }
            Action::HandBack { pid, pids } => {
                log::info!(
                    "rollback: {} workers of the old program serve again; the new master {pid} \
                     is told to stop",
                    pids.len()
                );
                self.listeners.files_are_ours();
                let epoll = epoll_of(&self.fds);
                if let (Some(c), Some(epoll)) = (&mut self.control, epoll) {
                    match c.take_back(epoll) {
                        Ok(()) => log::info!("control socket {} taken back", c.path().display()),
                        Err(e) => log::warn!(
                            "cannot take the control socket {} back: {e}",
                            c.path().display()
                        ),
                    }
                }
                if let Some(p) = &self.pid_file {
                    p.write(crate::sys::getpid().get());
                }
                if let Some(u) = &mut self.upgrade {
                    if let Err(e) = u.hand_back() {
                        log::warn!("cannot tell the new master {pid} to hand back: {e}");
                        let _ = self.reaper.signal(pid, Signal::Term);
                    }
                }
                if let Some(n) = &self.notifier {
                    n.send(&format!(
                        "MAINPID={}\nREADY=1\nSTATUS={}",
                        crate::sys::getpid(),
                        self.health.status(sup)
                    ));
                }
            }
            Action::AskRollback { pid } => {
                log::info!("rollback: asking the old master {pid} (SIGHUP)");
                // Only while it is still this master's parent: once it exited, its pid may
                // name another process (the probation pipe's end then answers the client).
                let sent = crate::sys::Pid::new(pid)
                    .filter(|&p| crate::sys::getppid() == Some(p))
                    .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESRCH))
                    .and_then(|p| crate::sys::kill(p, Signal::Hup));
                if let Err(e) = sent {
                    log::warn!("cannot send SIGHUP to the old master {pid}: {e}");
                }
            }
            Action::HandedBack { pid } => {
                log::info!(
                    "the old master {pid} serves again: draining this master's workers, leaving \
                     the sockets, the control socket and the PID file to it"
                );
                self.listeners.handed_over();
            }
            Action::RolledBack { pid, why } => {
                let pid = pid.map_or_else(String::new, |p| format!(" {p}"));
                match why {
                    Rollback::ExecFailed => {
                        self.rollback_detail = self.upgrade_error.take();
                        log::error!(
                            "upgrade failed: {}; the running workers keep serving",
                            self.rollback_detail.as_deref().unwrap_or_default()
                        )
                    }
                    Rollback::Exited(exit) => {
                        log::error!(
                            "upgrade failed: the new master{pid} exited ({exit}) before it was \
                             ready; the running workers keep serving"
                        );
                        if let (Some(c), Some(p)) = (&self.control, self.upgrade.as_ref()) {
                            c.remove_staged_of(p.pid);
                        }
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
                if let Some(c) = &self.control {
                    c.remove_staged_of(pid);
                }
                self.forget_upgrade();
            }
            Action::Answer { client, answer } => self.answer(client, &answer, sup),
            Action::Unreaped { pids } => {
                log::error!(
                    "giving up on {pids:?}: still alive well after SIGKILL; they end with \
                     the master"
                );
                self.upgrade = None;
                let epoll = epoll_of(&self.fds);
                for pid in pids {
                    self.reaper.forget(pid, epoll);
                }
            }
        }
    }

    pub(super) fn signal(&mut self, pid: u32, signal: Signal, why: Why, sup: &Supervisor) {
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

    /// [`Action::Answer`]: the reply line to the client, if it is still connected.
    pub(super) fn answer(&mut self, client: Client, answer: &Answer, sup: &Supervisor) {
        let Some(command) = self.control.as_ref().and_then(|c| c.command_of(client)) else {
            return;
        };
        let draining = sup.draining();
        let status = self.health.status(sup).clone();
        let backend = match self.backend {
            crate::Backend::Pidfd => "pidfd",
            crate::Backend::Sigchld => "sigchld",
        };
        let control = self.control.as_ref().expect("checked above");
        let path = control.path().display().to_string();
        let facts = Facts {
            pid: crate::sys::getpid().get(),
            generation: super::upgrade::generation(),
            mode: self.mode,
            backend,
            uptime: self.now(),
            state: sup.state_name(),
            draining: &draining,
            upgrade: sup.new_master(),
            reloading: sup.is_reloading(),
            control: &path,
        };
        let line = render(
            command,
            answer,
            &status,
            &facts,
            self.rollback_detail.as_deref(),
        );
        match answer {
            Answer::Snapshot => {
                log::debug!("control socket: {} answered", super::answer::name(command))
            }
            _ => log::info!(
                "control socket: {} answered: {line}",
                super::answer::name(command)
            ),
        }
        let epoll = epoll_of(&self.fds);
        if let (Some(c), Some(epoll)) = (&mut self.control, epoll) {
            c.reply(client, line, epoll);
        }
    }

    /// [`Action::StartUpgrade`]: starts the new master (see [`Upgrade::begin`]). Returns its
    /// pid, or why it could not start.
    pub(super) fn start_upgrade(&mut self, probation: bool) -> Result<u32, String> {
        let epoll = epoll_of(&self.fds).expect("the event loop runs");
        let tokens = (UPGRADE_READY_TOKEN, UPGRADE_PID_TOKEN);
        let upgrade = Upgrade::begin(
            &self.listeners,
            &self.old_mask,
            &mut self.reaper,
            epoll,
            tokens,
            probation,
        )?;
        let pid = upgrade.pid;
        self.upgrade = Some(upgrade);
        Ok(pid)
    }
}
