//! The builder's options validated, and what `master::run` is given: the listeners' specs,
//! the supervisor's configuration, the backend, how workers start and what each does for
//! itself ([`Plan`]), in the order that makes a bad option fail before any socket is bound.

use std::time::Duration;

use super::Prefork;
use crate::config::Mode;
use crate::config::{Backend, WorkerSetup};
use crate::error::Error;
use crate::listen::{self, Spec};
use crate::listener::parse_unix;
use crate::master::Plan;
use crate::master::listeners::Listeners as Sockets;
use crate::master::spawn::{ExecSpec, Spawn};
use crate::protocol;
use crate::supervisor::Config;
use crate::sys;

/// The shortest [`Prefork::worker_timeout`] accepted.
const MIN_WORKER_TIMEOUT: Duration = Duration::from_millis(10);

impl Prefork {
    /// The listeners of [`Prefork::listen`], validated, each with the builder's reuseport
    /// for TCP.
    pub(super) fn specs(&self) -> Result<Vec<Spec>, Error> {
        if self.listeners.is_empty() {
            return Err(Error::InvalidOption {
                option: "listen",
                reason: "serve needs at least one listener: add one with Prefork::listen or \
                         Prefork::listen_named"
                    .to_owned(),
            });
        }
        self.check_unix_mode()?;
        let mut specs = Vec::with_capacity(self.listeners.len());
        for (i, spec) in self.listeners.iter().enumerate() {
            if let Some(name) = &spec.named {
                let reserved = name.starts_with('#') || listen::parse_handover_name(name).is_some();
                if !protocol::listener_name_is_valid(name) || reserved {
                    return Err(Error::InvalidOption {
                        option: "listen_named",
                        reason: format!(
                            "{name:?} cannot name a listener: a name is 1 to 255 bytes of \
                             printable ASCII without ':', and does not start with '#' or \
                             'prefork'"
                        ),
                    });
                }
            }
            let name = spec.name();
            if self.listeners[..i].iter().any(|s| s.name() == name) {
                return Err(Error::InvalidOption {
                    option: "listen",
                    reason: format!("two listeners are named {name:?}"),
                });
            }
            let unix = parse_unix(&spec.addr);
            if let Some(Err(reason)) = &unix {
                return Err(Error::Listen {
                    addr: spec.addr.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, reason.clone()),
                });
            }
            specs.push(Spec {
                reuseport: self.reuseport && unix.is_none(),
                ..spec.clone()
            });
        }
        if self.reuseport && specs.iter().all(|s| !s.reuseport) {
            let addrs: Vec<&str> = specs.iter().map(|s| s.addr.as_str()).collect();
            return Err(Error::InvalidOption {
                option: "reuseport",
                reason: format!(
                    "{} is a Unix socket, which the workers share: SO_REUSEPORT applies to TCP \
                     listeners only, and there is none",
                    addrs.join(", ")
                ),
            });
        }
        Ok(specs)
    }

    /// A [`Prefork::unix_mode`] of permission bits only.
    fn check_unix_mode(&self) -> Result<(), Error> {
        match self.unix_mode {
            Some(mode) if mode & !0o777 != 0 => Err(Error::InvalidOption {
                option: "unix_mode",
                reason: format!("{mode:#o} is not a mode of permission bits (0o000 to 0o777)"),
            }),
            _ => Ok(()),
        }
    }

    /// What `master::run` is given: the options validated, the backend and how workers start
    /// resolved, each worker's setup, and the sockets `listeners` opens for the configuration
    /// (in this order, so that a bad option fails before any socket is bound).
    pub(super) fn plan(
        &self,
        listeners: impl FnOnce(&Config) -> Result<Sockets, Error>,
    ) -> Result<Plan, Error> {
        let (cfg, backend, spawn) = self.prepare()?;
        let setup = self.worker_setup()?;
        let listeners = listeners(&cfg)?;
        Ok(Plan {
            cfg,
            backend,
            spawn,
            listeners,
            health: self.health,
            setup,
            operator: self.operator.clone(),
        })
    }

    /// Validates the options and resolves the backend and how workers start.
    fn prepare(&self) -> Result<(Config, Backend, Spawn), Error> {
        let cfg = self.config()?;
        let backend = match (self.backend, Backend::from_env()?) {
            (Some(b), _) | (None, Some(b)) => b,
            (None, None) => Backend::Pidfd,
        };
        let mode = match self.mode {
            Mode::Auto => match sys::thread_count() {
                Ok(1) => {
                    log::info!("mode auto: single-threaded, forking workers");
                    Mode::Fork
                }
                Ok(threads) => {
                    log::info!("mode auto: {threads} threads running, re-executing workers");
                    Mode::Exec
                }
                Err(e) => {
                    log::info!("mode auto: cannot count threads ({e}), re-executing workers");
                    Mode::Exec
                }
            },
            m => m,
        };
        let spawn = match mode {
            Mode::Exec => Spawn::Exec(ExecSpec::current_binary()),
            _ => Spawn::Fork,
        };
        Ok((cfg, backend, spawn))
    }

    /// What each worker does for itself before `serve`; resolves the user and group names
    /// (an unknown one is an error naming it).
    pub(super) fn worker_setup(&self) -> Result<WorkerSetup, Error> {
        let credentials = match (&self.user, &self.group) {
            (None, None) => None,
            (user, group) => Some(
                sys::identity::resolve(user.as_deref(), group.as_deref())
                    .map_err(|(option, reason)| Error::InvalidOption { option, reason })?,
            ),
        };
        Ok(WorkerSetup {
            names: self.worker_names,
            affinity: self.cpu_affinity,
            credentials,
        })
    }

    /// Validates the options into the supervisor's configuration.
    fn config(&self) -> Result<Config, Error> {
        let workers = match self.workers {
            Some(0) => {
                return Err(Error::InvalidOption {
                    option: "workers",
                    reason: "at least one worker is needed".to_owned(),
                });
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if self.recover_window.is_zero() {
            return Err(Error::InvalidOption {
                option: "recover_window",
                reason: "the window must be longer than zero".to_owned(),
            });
        }
        if self
            .health
            .worker_timeout
            .is_some_and(|d| d < MIN_WORKER_TIMEOUT)
        {
            return Err(Error::InvalidOption {
                option: "worker_timeout",
                reason: format!(
                    "the timeout must be at least {MIN_WORKER_TIMEOUT:?} (heartbeats are read \
                     in milliseconds of a clock that advances in scheduler ticks)"
                ),
            });
        }
        if self.health.max_lifetime.is_some_and(|d| d.is_zero()) {
            return Err(Error::InvalidOption {
                option: "max_worker_lifetime",
                reason: "the lifetime must be longer than zero".to_owned(),
            });
        }
        if self.health.max_rss == Some(0) {
            return Err(Error::InvalidOption {
                option: "max_worker_rss",
                reason: "the ceiling must be more than zero bytes".to_owned(),
            });
        }
        Ok(Config {
            workers,
            recover_threshold: self
                .recover_threshold
                .unwrap_or_else(|| workers.saturating_mul(2).max(10)),
            recover_window: self.recover_window,
            recover_interval: self.recover_interval,
            shutdown_grace: self.shutdown_grace,
            upgrade_timeout: self.upgrade_timeout,
            upgrade_probation: self.upgrade_probation,
        })
    }
}
