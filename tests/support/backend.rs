//! What the cases run under: the two reaping backends every supervision case runs under,
//! the two ways a fixture starts its workers, and the seccomp filter a fixture uses to
//! simulate a kernel without pidfds.

use super::runner::Variant;

/// The reaping backend a test runs under, selected through `PREFORK_BACKEND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Pidfd,
    Sigchld,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Pidfd, Backend::Sigchld];

    /// The value of `PREFORK_BACKEND`, also the backend's part of test names.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Pidfd => "pidfd",
            Backend::Sigchld => "sigchld",
        }
    }

    /// How the master's start-up log line names it (`… (fork mode, Pidfd backend)`).
    pub fn log_name(self) -> &'static str {
        match self {
            Backend::Pidfd => "Pidfd",
            Backend::Sigchld => "Sigchld",
        }
    }
}

impl Variant for Backend {
    fn name(self) -> String {
        Backend::name(self).to_owned()
    }
}

/// How a fixture's workers start, selected through `FX_MODE` (the library's `Mode`, less
/// `Auto`, which the cases that test it set themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Fork,
    Exec,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Fork, Mode::Exec];

    /// The value of `FX_MODE`, also the mode's part of test names.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fork => "fork",
            Mode::Exec => "exec",
        }
    }
}

impl Variant for Mode {
    fn name(self) -> String {
        Mode::name(self).to_owned()
    }
}

/// Makes `pidfd_open` fail with `ENOSYS` in this process and its children, as it does on a
/// kernel before 5.3: a seccomp filter that returns that error for the one system call.
/// For a fixture, before it starts its master.
pub fn deny_pidfd_open() -> std::io::Result<()> {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let filter = [
        // Load the system call number (offset 0 of struct seccomp_data).
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        // pidfd_open? Fall through to ENOSYS; otherwise skip to ALLOW.
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_pidfd_open as u32,
        },
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes an integer flag.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `prog` points to a valid filter program that outlives the call (the kernel
    // copies it).
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
