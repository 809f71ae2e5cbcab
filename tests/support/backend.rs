//! What the cases run under: the two reaping backends every supervision case runs under,
//! the two ways a fixture starts its workers, and the seccomp filters a fixture uses to
//! simulate a kernel without pidfds or a sandbox: one that refuses a few calls ([`deny`]),
//! and an allowlist that refuses everything not on it ([`allow_only`], [`CONTAINER`]).

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
    deny(&[Refusal::parse("pidfd_open=ENOSYS").expect("a known call")])
}

/// One system call a seccomp filter refuses, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The system call's number.
    nr: libc::c_long,
    /// Its first argument, when only that form is refused (`waitid(P_PIDFD, …)`).
    arg0: Option<u32>,
    /// The error it fails with.
    errno: i32,
}

impl Refusal {
    /// `CALL=ERRNO`, as `FX_DENY` lists them: `CALL` is `pidfd_open`, `pidfd_send_signal`
    /// or `waitid_pidfd` (`waitid` with `P_PIDFD`); `ERRNO` is `EPERM`, `EACCES` or `ENOSYS`.
    pub fn parse(text: &str) -> Option<Refusal> {
        let (call, errno) = text.split_once('=')?;
        let (nr, arg0) = match call {
            "pidfd_open" => (libc::SYS_pidfd_open, None),
            "pidfd_send_signal" => (libc::SYS_pidfd_send_signal, None),
            "waitid_pidfd" => (libc::SYS_waitid, Some(3)), // P_PIDFD
            "kill" => (libc::SYS_kill, None),
            "clone" => (libc::SYS_clone, None),
            _ => return None,
        };
        let errno = match errno {
            "EPERM" => libc::EPERM,
            "EACCES" => libc::EACCES,
            "ENOSYS" => libc::ENOSYS,
            _ => return None,
        };
        Some(Refusal { nr, arg0, errno })
    }
}

/// A BPF statement: `code` with the constant `k`.
fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A BPF jump: to `jt` statements further on if the accumulator equals `k`, else `jf`.
fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// Installs a seccomp filter in this process (inherited by its children) that makes each
/// call of `refusals` fail with its errno, and allows everything else.
pub fn deny(refusals: &[Refusal]) -> std::io::Result<()> {
    let jeq = |k: u32, jf: u8| jeq(k, 0, jf);
    // Offsets in struct seccomp_data: the call's number, and the low half of its first
    // argument (little-endian).
    let (nr_at, arg0_at) = (0, 16);
    let mut filter = vec![stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, nr_at)];
    for r in refusals {
        let ret = stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | r.errno as u32,
        );
        match r.arg0 {
            None => {
                filter.push(jeq(r.nr as u32, 1));
                filter.push(ret);
            }
            Some(arg0) => {
                // Not this call: skip the four below. This call: load its first argument;
                // not that form: reload the number and go on.
                filter.push(jeq(r.nr as u32, 4));
                filter.push(stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, arg0_at));
                filter.push(jeq(arg0, 1));
                filter.push(ret);
                filter.push(stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, nr_at));
            }
        }
    }
    filter.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW));
    install(&filter)
}

/// Installs `filter` as a seccomp filter of this process (after `PR_SET_NO_NEW_PRIVS`, which
/// an unprivileged process needs for it). Filters stack: a call is allowed only if every
/// filter installed allows it, and the first refusal in the order of the return values'
/// precedence (`ERRNO` before `ALLOW`) wins.
fn install(filter: &[libc::sock_filter]) -> std::io::Result<()> {
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

/// The `AUDIT_ARCH_X86_64` of `<linux/audit.h>`: the architecture a seccomp filter sees for
/// a 64-bit x86 system call (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

/// The bit that marks an x32 system call: the same architecture as x86_64, other numbers.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Installs a seccomp filter in this process (inherited by its children, across `exec` too)
/// that allows the system calls numbered `allowed` and makes every other fail with `EPERM`,
/// as a container engine's default profile does: an allowlist with `SCMP_ACT_ERRNO` as its
/// default action. A call made through another ABI than x86_64's (x32 numbers, or the i386
/// ABI through `int 0x80`) fails with `EPERM` too, as under those profiles.
///
/// x86_64 only: a list of numbers is one architecture's. Elsewhere this returns
/// `Unsupported` and installs nothing, and the case that needs it skips.
pub fn allow_only(allowed: &[libc::c_long]) -> std::io::Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        // The chain of JEQs jumps to the final ALLOW, at most 255 statements away.
        if allowed.len() > 250 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "allow_only: more than 250 calls",
            ));
        }
        let refuse = stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        );
        let load = |at: u32| stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, at);
        // Offsets in struct seccomp_data: the call's number, then the architecture.
        let (nr_at, arch_at) = (0, 4);
        let mut filter = vec![
            // Another architecture: refused.
            load(arch_at),
            jeq(AUDIT_ARCH_X86_64, 1, 0),
            refuse,
            // An x32 number: refused.
            load(nr_at),
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: X32_SYSCALL_BIT,
            },
            refuse,
        ];
        // Each call on the list jumps over the rest of the list and the refusal to ALLOW.
        let n = allowed.len();
        for (i, &nr) in allowed.iter().enumerate() {
            filter.push(jeq(nr as u32, (n - i) as u8, 0));
        }
        filter.push(refuse);
        filter.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW));
        install(&filter)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = allowed;
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "allow_only: x86_64 only",
        ))
    }
}

/// The system calls of `docs/security.md`'s allowlist (what the crate, std and glibc make
/// under every option, measured with `strace -f`, and the few the crate makes only on paths
/// the measurement did not take: `wait4`, `setitimer`), less `pidfd_open` and
/// `pidfd_send_signal`: a container engine's default profile of the years before the pidfd
/// calls were listed (Docker's and containerd's before November 2020, moby/moby#41665 and
/// containerd/containerd#4730; Podman's before containers/common#381). `waitid` is on it; its `P_PIDFD` form was new too, and the case
/// that uses this list refuses it with a [`deny`] filter. With the fixture's own calls (the
/// `/proc` reads and the reports), which the list covers too. x86_64 only, as [`allow_only`].
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
