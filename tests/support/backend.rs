//! What the cases run under: the two reaping backends every supervision case runs under,
//! the two ways a fixture starts its workers, and the list of calls a container engine's
//! default profile of before the pidfd calls allowed ([`CONTAINER`], for
//! [`allow_only`](super::seccomp::allow_only)); the filters themselves are
//! [`super::seccomp`]'s.

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

/// The system calls of `docs/security.md`'s allowlist (what the crate, std and glibc make
/// under every option, measured with `strace -f`, and the few the crate makes only on paths
/// the measurement did not take: `wait4`, `setitimer`), less `pidfd_open` and
/// `pidfd_send_signal`: a container engine's default profile of the years before the pidfd
/// calls were listed (Docker's and containerd's before November 2020, moby/moby#41665 and
/// containerd/containerd#4730; Podman's before containers/common#381). `waitid` is on it; its `P_PIDFD` form was new too, and the case
/// that uses this list refuses it with a [`deny`](super::seccomp::deny) filter. With the
/// fixture's own calls (the `/proc` reads and the reports), which the list covers too. x86_64
/// only, as [`allow_only`](super::seccomp::allow_only).
#[cfg(target_arch = "x86_64")]
pub const CONTAINER: &[(&str, libc::c_long)] = &[
    ("accept4", libc::SYS_accept4),
    ("access", libc::SYS_access),
    ("arch_prctl", libc::SYS_arch_prctl),
    ("bind", libc::SYS_bind),
    ("brk", libc::SYS_brk),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("close", libc::SYS_close),
    ("close_range", libc::SYS_close_range),
    ("connect", libc::SYS_connect),
    ("dup2", libc::SYS_dup2),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("execve", libc::SYS_execve),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    ("fcntl", libc::SYS_fcntl),
    ("fstat", libc::SYS_fstat),
    ("ftruncate", libc::SYS_ftruncate),
    ("futex", libc::SYS_futex),
    ("getcwd", libc::SYS_getcwd),
    ("getdents64", libc::SYS_getdents64),
    ("getegid", libc::SYS_getegid),
    ("geteuid", libc::SYS_geteuid),
    ("getgid", libc::SYS_getgid),
    ("getpid", libc::SYS_getpid),
    ("getppid", libc::SYS_getppid),
    ("getrandom", libc::SYS_getrandom),
    ("getsockname", libc::SYS_getsockname),
    ("getsockopt", libc::SYS_getsockopt),
    ("gettid", libc::SYS_gettid),
    ("getuid", libc::SYS_getuid),
    ("ioctl", libc::SYS_ioctl),
    ("kill", libc::SYS_kill),
    ("listen", libc::SYS_listen),
    ("lseek", libc::SYS_lseek),
    ("madvise", libc::SYS_madvise),
    ("memfd_create", libc::SYS_memfd_create),
    ("mmap", libc::SYS_mmap),
    ("mprotect", libc::SYS_mprotect),
    ("munmap", libc::SYS_munmap),
    ("newfstatat", libc::SYS_newfstatat),
    ("openat", libc::SYS_openat),
    ("pipe2", libc::SYS_pipe2),
    ("poll", libc::SYS_poll),
    ("ppoll", libc::SYS_ppoll),
    ("prctl", libc::SYS_prctl),
    ("pread64", libc::SYS_pread64),
    ("prlimit64", libc::SYS_prlimit64),
    ("read", libc::SYS_read),
    ("readlink", libc::SYS_readlink),
    ("recvfrom", libc::SYS_recvfrom),
    ("rseq", libc::SYS_rseq),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("sched_setaffinity", libc::SYS_sched_setaffinity),
    ("sendto", libc::SYS_sendto),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("set_tid_address", libc::SYS_set_tid_address),
    ("setgid", libc::SYS_setgid),
    ("setgroups", libc::SYS_setgroups),
    ("setitimer", libc::SYS_setitimer),
    ("setsockopt", libc::SYS_setsockopt),
    ("setuid", libc::SYS_setuid),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("signalfd4", libc::SYS_signalfd4),
    ("socket", libc::SYS_socket),
    ("socketpair", libc::SYS_socketpair),
    ("statx", libc::SYS_statx),
    ("tgkill", libc::SYS_tgkill),
    ("unshare", libc::SYS_unshare),
    ("wait4", libc::SYS_wait4),
    ("waitid", libc::SYS_waitid),
    ("write", libc::SYS_write),
];
