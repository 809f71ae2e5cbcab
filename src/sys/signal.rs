//! Typed signals: the signals the crate sends or reacts to, numbered by the platform's own
//! definitions (MIPS and SPARC number `USR1`, `TTIN` and others differently from x86 and
//! ARM, so no number is written by hand anywhere else).

/// A signal the master handles, forwards or sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Signal {
    Hup,
    Int,
    Quit,
    Kill,
    Usr1,
    Usr2,
    Term,
    Chld,
    Ttin,
    Ttou,
}

impl Signal {
    /// Every variant, for tables and tests.
    pub(crate) const ALL: [Signal; 10] = [
        Signal::Hup,
        Signal::Int,
        Signal::Quit,
        Signal::Kill,
        Signal::Usr1,
        Signal::Usr2,
        Signal::Term,
        Signal::Chld,
        Signal::Ttin,
        Signal::Ttou,
    ];

    /// The platform's number for this signal.
    pub(crate) fn raw(self) -> i32 {
        self.nix() as i32
    }

    /// The signal with this number, if it is one of ours.
    pub(crate) fn from_raw(raw: i32) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.raw() == raw)
    }

    /// The signal as nix spells it (signal masks, dispositions, signalfd).
    pub(crate) fn nix(self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal as N;
        match self {
            Signal::Hup => N::SIGHUP,
            Signal::Int => N::SIGINT,
            Signal::Quit => N::SIGQUIT,
            Signal::Kill => N::SIGKILL,
            Signal::Usr1 => N::SIGUSR1,
            Signal::Usr2 => N::SIGUSR2,
            Signal::Term => N::SIGTERM,
            Signal::Chld => N::SIGCHLD,
            Signal::Ttin => N::SIGTTIN,
            Signal::Ttou => N::SIGTTOU,
        }
    }

    /// The signal as rustix spells it (kill, pidfd_send_signal, the parent-death signal).
    pub(crate) fn rustix(self) -> rustix::process::Signal {
        use rustix::process::Signal as R;
        match self {
            Signal::Hup => R::HUP,
            Signal::Int => R::INT,
            Signal::Quit => R::QUIT,
            Signal::Kill => R::KILL,
            Signal::Usr1 => R::USR1,
            Signal::Usr2 => R::USR2,
            Signal::Term => R::TERM,
            Signal::Chld => R::CHILD,
            Signal::Ttin => R::TTIN,
            Signal::Ttou => R::TTOU,
        }
    }

    /// `SIGTERM`, …
    pub(crate) fn name(self) -> &'static str {
        self.nix().as_str()
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of any signal number (`SIGSEGV`), or `signal N` for one the platform does not
/// name.
pub(crate) fn name_of(raw: i32) -> String {
    match nix::sys::signal::Signal::try_from(raw) {
        Ok(s) => s.as_str().to_owned(),
        Err(_) => format!("signal {raw}"),
    }
}

/// Whether a process killed by signal `raw` brought it on itself: a fault of its own code
/// (`SIGSEGV`, `SIGBUS`, `SIGILL`, `SIGFPE`, `SIGABRT` from a failed assertion or abort,
/// `SIGSYS`, `SIGTRAP`) or a resource limit it ran into (`SIGXCPU`, `SIGXFSZ`), as opposed to
/// a signal someone sent it (`SIGKILL` from the OOM killer or an operator, `SIGTERM`, …).
pub(crate) fn is_fault(raw: i32) -> bool {
    [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGABRT,
        libc::SIGSYS,
        libc::SIGTRAP,
        libc::SIGXCPU,
        libc::SIGXFSZ,
    ]
    .contains(&raw)
}

#[cfg(test)]
mod tests {
    use super::Signal;

    /// Pins every variant to libc's constant for the target it is compiled for.
    #[test]
    fn numbers_are_the_platforms() {
        let expected = [
            (Signal::Hup, libc::SIGHUP),
            (Signal::Int, libc::SIGINT),
            (Signal::Quit, libc::SIGQUIT),
            (Signal::Kill, libc::SIGKILL),
            (Signal::Usr1, libc::SIGUSR1),
            (Signal::Usr2, libc::SIGUSR2),
            (Signal::Term, libc::SIGTERM),
            (Signal::Chld, libc::SIGCHLD),
            (Signal::Ttin, libc::SIGTTIN),
            (Signal::Ttou, libc::SIGTTOU),
        ];
        assert_eq!(expected.len(), Signal::ALL.len());
        for (signal, raw) in expected {
            assert_eq!(signal.raw(), raw, "{signal}");
            assert_eq!(signal.rustix().as_raw(), raw, "{signal}");
            assert_eq!(Signal::from_raw(raw), Some(signal));
        }
        assert_eq!(Signal::from_raw(libc::SIGSEGV), None);
        assert_eq!(super::name_of(libc::SIGSEGV), "SIGSEGV");
        assert_eq!(Signal::Ttin.name(), "SIGTTIN");
        assert!(super::is_fault(libc::SIGSEGV));
        assert!(!super::is_fault(libc::SIGKILL));
    }
}
