//! The crate's error type.

use std::fmt;
use std::io;

/// Why [`crate::Prefork::run`] failed.
///
/// Every variant's `Display` reads as a sentence naming what went wrong and, where it helps,
/// what to do instead. OS errors are kept intact as the [`std::error::Error::source`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The process already runs more than one thread, so `fork` without `exec` is unsafe.
    /// Nothing was forked.
    NotSingleThreaded {
        /// How many threads the process had.
        threads: usize,
    },
    /// More than `recover_threshold` workers failed to boot (exited before they were serving,
    /// or by themselves just after) within `recover_window`; every worker was killed.
    OverRecovery {
        /// How many boot failures were counted within the window.
        count: usize,
        /// The latest of them (at most 16), oldest first.
        exits: Vec<crate::exit::CountedExit>,
    },
    /// A worker exited with [`crate::exit::EXIT_FATAL`] (a fatal start-up failure it reported). It
    /// was not respawned; every other worker was stopped.
    WorkerFatal {
        /// The worker's slot ([`crate::Worker::id`]).
        slot: usize,
        /// The worker's pid.
        pid: u32,
        /// Its exit code.
        code: i32,
    },
    /// The stop sent KILL to these children and they were still alive the stop's margin
    /// later (their signals refused by a sandbox, or stuck in the kernel): the master gave up
    /// on them and returned, and they end with it (`PR_SET_PDEATHSIG`).
    Unreaped {
        /// Their pids.
        pids: Vec<u32>,
    },
    /// A builder option has a value that cannot work. Nothing was forked.
    InvalidOption {
        /// The option, as named by its builder method.
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An environment variable the crate reads has a malformed value.
    InvalidEnv {
        /// The variable's name.
        var: &'static str,
        /// Its value, as found.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A hook returned an error or panicked. Every worker was killed.
    Hook {
        /// The hook's builder name (`on_child_spawn`, …).
        hook: &'static str,
        /// Whether it panicked (otherwise it returned this error).
        panicked: bool,
        /// The hook's error, or the panic message.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A worker could not be started (`fork` failed, e.g. with `EAGAIN` at the process limit).
    Spawn {
        /// The slot that could not be filled.
        slot: usize,
        /// The OS error.
        source: io::Error,
    },
    /// The listening socket could not be set up: the address does not resolve, is busy, or
    /// is not ours to bind. Nothing was forked.
    Listen {
        /// The address as given.
        addr: String,
        /// The OS or resolver error.
        source: io::Error,
    },
    /// An inherited listener (fd 3 of an exec-mode worker or of systemd socket activation) is
    /// not a listening TCP socket.
    InheritedListener {
        /// The descriptor.
        fd: i32,
        /// What it is instead (not open, not a socket, not listening, …).
        reason: String,
    },
    /// The control socket ([`crate::Prefork::control_socket`]) or the PID file
    /// ([`crate::Prefork::pid_file`]) at `path` cannot be used: its directory is missing,
    /// another master answers there, it cannot be written; or, for a client
    /// ([`crate::control::request_line`]), nobody answers there or the reply is malformed.
    Control {
        /// The path as given.
        path: std::path::PathBuf,
        /// What was being done, and what is wrong.
        what: String,
        /// The OS error, when there is one.
        source: Option<io::Error>,
    },
    /// A system call the master needs failed.
    Sys {
        /// What the master was doing.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn sys(op: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Sys { op, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotSingleThreaded { threads } => write!(
                f,
                "cannot fork workers: the process runs {threads} threads, and fork without exec \
                 is only safe in a single-threaded process; call prefork before starting any \
                 thread or async runtime, or use exec mode"
            ),
            Error::OverRecovery { count, exits } => {
                write!(
                    f,
                    "{count} workers failed to boot (exited before they were serving, or by \
                     themselves just after) within recover_window, more than recover_threshold \
                     allows; all workers were stopped"
                )?;
                if let Some(last) = exits.last() {
                    write!(f, "; the last: {last}")?;
                }
                Ok(())
            }
            Error::WorkerFatal { slot, pid, code } => write!(
                f,
                "worker {slot} (pid {pid}) reported a fatal start-up failure (exit code {code}); \
                 all workers were stopped"
            ),
            Error::Unreaped { pids } => write!(
                f,
                "processes {pids:?} were still alive well after SIGKILL (a sandbox refusing \
                 the master's signals, or a process stuck in the kernel); the master gave up on \
                 them, and they end with it"
            ),
            Error::InvalidOption { option, reason } => {
                write!(f, "invalid option {option}: {reason}")
            }
            Error::InvalidEnv { var, value, reason } => {
                write!(f, "invalid environment variable {var}={value:?}: {reason}")
            }
            Error::Hook {
                hook,
                panicked: false,
                source,
            } => write!(f, "hook {hook} failed: {source}"),
            Error::Hook {
                hook,
                panicked: true,
                source,
            } => write!(f, "hook {hook} panicked: {source}"),
            Error::Spawn { slot, source } => write!(f, "cannot start worker {slot}: {source}"),
            Error::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::InheritedListener { fd, reason } => write!(
                f,
                "inherited listener on fd {fd} is unusable: {reason} (a prefork worker expects a \
                 listening TCP or Unix stream socket there)"
            ),
            Error::Control { path, what, source } => {
                write!(f, "{}: {what}", path.display())?;
                match source {
                    Some(e) => write!(f, ": {e}"),
                    None => Ok(()),
                }
            }
            Error::Sys { op, source } => write!(
                f,
                "{op} failed: {source}{}",
                crate::sys::refused_hint(source)
            ),
        }
    }
}

/// Each variant's `Display` already says its cause (an operator reads one line), so, as std's
/// `io::Error` does, `source` is the cause's own source: a chain of causes (`anyhow`'s `{:#}`,
/// a logger that walks `source`) prints each cause once.
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Hook { source, .. } => source.source(),
            Error::Spawn { source, .. }
            | Error::Sys { source, .. }
            | Error::Listen { source, .. } => source.source(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;
    use std::io;

    /// The whole chain, as an error reporter prints it.
    fn chain(e: &dyn std::error::Error) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut next = e.source();
        while let Some(cause) = next {
            out.push(cause.to_string());
            next = cause.source();
        }
        out
    }

    #[derive(Debug)]
    struct Inner(io::Error);

    impl std::fmt::Display for Inner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the hook's own error")
        }
    }

    impl std::error::Error for Inner {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_chain_prints_each_cause_once() {
        let os = || io::Error::from_raw_os_error(libc::EADDRINUSE);
        let errors = [
            Error::Listen {
                addr: "127.0.0.1:8080".to_owned(),
                source: os(),
            },
            Error::Spawn {
                slot: 2,
                source: os(),
            },
            Error::Sys {
                op: "signalfd",
                source: os(),
            },
        ];
        let message = os().to_string();
        for e in &errors {
            let lines = chain(e);
            let seen = lines.iter().filter(|l| l.contains(&message)).count();
            assert_eq!(seen, 1, "{lines:?}");
        }
        let hook = Error::Hook {
            hook: "on_child_spawn",
            panicked: false,
            source: Box::new(Inner(os())),
        };
        let lines = chain(&hook);
        assert_eq!(
            lines,
            vec![
                "hook on_child_spawn failed: the hook's own error".to_owned(),
                message
            ]
        );
        assert!(hook.source().is_some(), "the cause's cause is kept");
    }
}
