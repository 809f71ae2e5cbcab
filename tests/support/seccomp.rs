//! Seccomp filters that simulate a sandbox or an old kernel: one that refuses a few calls, or
//! one form of a call ([`deny`], [`Refusal`]), and an allowlist that refuses everything not
//! on it ([`allow_only`]). Installed in a process before it starts a master, they are
//! inherited by every child, across `exec` too.
//!
//! Self-contained (libc only), so that the benches can include it with `#[path]` as the
//! tests do.

use std::io;

/// Makes `pidfd_open` fail with `ENOSYS` in this process and its children, as it does on a
/// kernel before 5.3: a seccomp filter that returns that error for the one system call.
/// For a fixture, before it starts its master.
pub fn deny_pidfd_open() -> io::Result<()> {
    deny(&[Refusal::parse("pidfd_open=ENOSYS").expect("a known call")])
}

/// The calls a [`Refusal`] can name: the name `FX_DENY` uses, the system call's number, and
/// the arguments that select the refused form, if only one form is refused (each an index
/// and a test of its low 32 bits: [`Arg`]).
///
/// A name is the system call's, or a form of it: `waitid_pidfd` is `waitid(P_PIDFD, …)`;
/// `setsockopt_attach_filter` and `setsockopt_attach_reuseport_cbpf` are
/// `setsockopt(_, SOL_SOCKET, SO_ATTACH_FILTER | SO_ATTACH_REUSEPORT_CBPF, …)`;
/// `prctl_set_name`, `prctl_set_pdeathsig` and `prctl_get_child_subreaper` are
/// `prctl(PR_SET_NAME | PR_SET_PDEATHSIG | PR_GET_CHILD_SUBREAPER, …)`;
/// `socket_unix` is `socket(AF_UNIX, …)` (systemd's notification socket; the runs that refuse
/// it make no other); `sendto_addressed` is `sendto` with a destination address (an `addrlen` other
/// than 0: systemd's notifications; `send(2)` on a connected socket passes none); `mmap_shared` is `mmap` with exactly `MAP_SHARED` as its flags (the heartbeat
/// table's mappings; the loader's and the allocator's are private); `socket_unix_stream` is
/// `socket(AF_UNIX, SOCK_STREAM | flags)` (the control socket, Unix listeners, the probe of a
/// socket file); `getsockopt_peercred` is `getsockopt(_, SOL_SOCKET, SO_PEERCRED, …)`;
/// `openat_creat` is `openat` with `O_CREAT` (the PID file; nothing else a master opens is
/// created); `accept4_nonblock` is `accept4` with `SOCK_NONBLOCK` (the control socket's
/// clients; std's `accept` and the fixtures' workers pass no such flag); `recvfrom_dontwait` and
/// `sendto_dontwait` are `recvfrom` and `sendto` with `MSG_DONTWAIT` (the control socket's
/// requests and replies; std's sockets pass no such flag, and systemd's notifications none). `rename` and `unlink` are the calls glibc makes for them.
/// `read_fd3_up` and `write_fd3_up` are `read` and `write` on descriptors 3 and up (the
/// standard streams carry a fixture's report and log); `socket_inet` is `socket(AF_INET, …)`
/// (`listen_and_serve`'s listener); `setsockopt_reuseaddr` and `setsockopt_reuseport`,
/// `getsockopt_type`, `getsockopt_domain` and `getsockopt_acceptconn` are those options at
/// `SOL_SOCKET`; `fcntl_getfd` is `fcntl(_, F_GETFD)`, `ioctl_fionbio` `ioctl(_, FIONBIO)`.
pub const CALLS: &[(&str, libc::c_long, Form)] = &[
    ("pidfd_open", libc::SYS_pidfd_open, &[]),
    ("pidfd_send_signal", libc::SYS_pidfd_send_signal, &[]),
    ("waitid", libc::SYS_waitid, &[]),
    ("waitid_pidfd", libc::SYS_waitid, &[(0, Arg::Is(3))]), // P_PIDFD
    ("kill", libc::SYS_kill, &[]),
    ("clone", libc::SYS_clone, &[]),
    ("execve", libc::SYS_execve, &[]),
    ("close_range", libc::SYS_close_range, &[]),
    ("unshare", libc::SYS_unshare, &[]),
    ("signalfd4", libc::SYS_signalfd4, &[]),
    ("epoll_create1", libc::SYS_epoll_create1, &[]),
    ("epoll_ctl", libc::SYS_epoll_ctl, &[]),
    ("pipe2", libc::SYS_pipe2, &[]),
    (
        "setsockopt_attach_filter",
        libc::SYS_setsockopt,
        &[
            (1, Arg::Is(libc::SOL_SOCKET as u32)),
            (2, Arg::Is(libc::SO_ATTACH_FILTER as u32)),
        ],
    ),
    (
        "setsockopt_attach_reuseport_cbpf",
        libc::SYS_setsockopt,
        &[
            (1, Arg::Is(libc::SOL_SOCKET as u32)),
            (2, Arg::Is(libc::SO_ATTACH_REUSEPORT_CBPF as u32)),
        ],
    ),
    ("sched_setaffinity", libc::SYS_sched_setaffinity, &[]),
    ("prctl", libc::SYS_prctl, &[]),
    (
        "prctl_set_name",
        libc::SYS_prctl,
        &[(0, Arg::Is(libc::PR_SET_NAME as u32))],
    ),
    (
        "prctl_set_pdeathsig",
        libc::SYS_prctl,
        &[(0, Arg::Is(libc::PR_SET_PDEATHSIG as u32))],
    ),
    (
        "prctl_get_child_subreaper",
        libc::SYS_prctl,
        &[(0, Arg::Is(libc::PR_GET_CHILD_SUBREAPER as u32))],
    ),
    (
        "socket_unix",
        libc::SYS_socket,
        &[(0, Arg::Is(libc::AF_UNIX as u32))],
    ),
    ("sendto_addressed", libc::SYS_sendto, &[(5, Arg::IsNot(0))]),
    ("setuid", libc::SYS_setuid, &[]),
    ("setgid", libc::SYS_setgid, &[]),
    ("setgroups", libc::SYS_setgroups, &[]),
    ("memfd_create", libc::SYS_memfd_create, &[]),
    ("ftruncate", libc::SYS_ftruncate, &[]),
    (
        "mmap_shared",
        libc::SYS_mmap,
        &[(3, Arg::Is(libc::MAP_SHARED as u32))],
    ),
    ("setitimer", libc::SYS_setitimer, &[]),
    // The control socket and the PID file, Unix listeners.
    (
        "socket_unix_stream",
        libc::SYS_socket,
        &[
            (0, Arg::Is(libc::AF_UNIX as u32)),
            (1, Arg::Masked(0xf, libc::SOCK_STREAM as u32)),
        ],
    ),
    ("bind", libc::SYS_bind, &[]),
    ("listen", libc::SYS_listen, &[]),
    ("connect", libc::SYS_connect, &[]),
    (
        "accept4_nonblock",
        libc::SYS_accept4,
        &[(
            3,
            Arg::Masked(libc::SOCK_NONBLOCK as u32, libc::SOCK_NONBLOCK as u32),
        )],
    ),
    ("shutdown", libc::SYS_shutdown, &[]),
    ("getpid", libc::SYS_getpid, &[]),
    ("gettid", libc::SYS_gettid, &[]),
    ("readlinkat", libc::SYS_readlinkat, &[]),
    (
        "recvfrom_dontwait",
        libc::SYS_recvfrom,
        &[(
            3,
            Arg::Masked(libc::MSG_DONTWAIT as u32, libc::MSG_DONTWAIT as u32),
        )],
    ),
    (
        "sendto_dontwait",
        libc::SYS_sendto,
        &[(
            3,
            Arg::Masked(libc::MSG_DONTWAIT as u32, libc::MSG_DONTWAIT as u32),
        )],
    ),
    (
        "getsockopt_peercred",
        libc::SYS_getsockopt,
        &[
            (1, Arg::Is(libc::SOL_SOCKET as u32)),
            (2, Arg::Is(libc::SO_PEERCRED as u32)),
        ],
    ),
    ("fchmodat", libc::SYS_fchmodat, &[]),
    (
        "openat_creat",
        libc::SYS_openat,
        &[(2, Arg::Masked(libc::O_CREAT as u32, libc::O_CREAT as u32))],
    ),
    ("rename", SYS_RENAME, &[]),
    ("unlink", SYS_UNLINK, &[]),
    ("statx", libc::SYS_statx, &[]),
    ("newfstatat", libc::SYS_newfstatat, &[]),
    // The generic calls: the event loop, signals, descriptors.
    ("epoll_pwait", libc::SYS_epoll_pwait, &[]),
    ("wait4", libc::SYS_wait4, &[]),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask, &[]),
    ("rt_sigaction", libc::SYS_rt_sigaction, &[]),
    ("read_fd3_up", libc::SYS_read, &[(0, Arg::AtLeast(3))]),
    ("write_fd3_up", libc::SYS_write, &[(0, Arg::AtLeast(3))]),
    ("close", libc::SYS_close, &[]),
    ("fcntl", libc::SYS_fcntl, &[]),
    (
        "fcntl_getfd",
        libc::SYS_fcntl,
        &[(1, Arg::Is(libc::F_GETFD as u32))],
    ),
    ("fstat", libc::SYS_fstat, &[]),
    ("getsockopt", libc::SYS_getsockopt, &[]),
    (
        "getsockopt_acceptconn",
        libc::SYS_getsockopt,
        &[
            (1, Arg::Is(libc::SOL_SOCKET as u32)),
            (2, Arg::Is(libc::SO_ACCEPTCONN as u32)),
        ],
    ),
    (
        "getsockopt_domain",
        libc::SYS_getsockopt,
        &[
            (1, Arg::Is(libc::SOL_SOCKET as u32)),
            (2, Arg::Is(libc::SO_DOMAIN as u32)),
        ],
    ),
    (
        "getsockopt_type",
        libc::SYS_getsockopt,
        &[
            (1, Arg::Is(libc::SOL_SOCKET as u32)),
            (2, Arg::Is(libc::SO_TYPE as u32)),
        ],
    ),
    // The listener of `listen_and_serve`.
    (
        "socket_inet",
        libc::SYS_socket,
        &[(0, Arg::Is(libc::AF_INET as u32))],
    ),
    (
        "setsockopt_reuseaddr",
        libc::SYS_setsockopt,
        &[
            (1, Arg::Is(libc::SOL_SOCKET as u32)),
            (2, Arg::Is(libc::SO_REUSEADDR as u32)),
        ],
    ),
    (
        "setsockopt_reuseport",
        libc::SYS_setsockopt,
        &[
            (1, Arg::Is(libc::SOL_SOCKET as u32)),
            (2, Arg::Is(libc::SO_REUSEPORT as u32)),
        ],
    ),
    ("getsockname", libc::SYS_getsockname, &[]),
    (
        "ioctl_fionbio",
        libc::SYS_ioctl,
        &[(1, Arg::Is(libc::FIONBIO as u32))],
    ),
];

/// The call glibc's `rename(3)` makes: `rename(2)` where the architecture has it.
#[cfg(target_arch = "x86_64")]
const SYS_RENAME: libc::c_long = libc::SYS_rename;
#[cfg(not(target_arch = "x86_64"))]
const SYS_RENAME: libc::c_long = libc::SYS_renameat;

/// The call glibc's `unlink(3)` makes: `unlink(2)` where the architecture has it.
#[cfg(target_arch = "x86_64")]
const SYS_UNLINK: libc::c_long = libc::SYS_unlink;
#[cfg(not(target_arch = "x86_64"))]
const SYS_UNLINK: libc::c_long = libc::SYS_unlinkat;

/// The arguments that select one form of a call: each an index and a test of its low 32 bits.
pub type Form = &'static [(usize, Arg)];

/// A test of one argument's low 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    Is(u32),
    IsNot(u32),
    /// The bits of the mask (the first) are the value (the second): `socket`'s type without
    /// its flags, `open`'s `O_CREAT` among the others.
    Masked(u32, u32),
    /// At least this (unsigned): a descriptor other than the standard streams.
    AtLeast(u32),
}

/// One system call (or one form of it) a seccomp filter refuses, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The system call's number.
    nr: libc::c_long,
    /// The arguments that select the refused form; empty: every form.
    args: Form,
    /// The error it fails with.
    errno: i32,
}

impl Refusal {
    /// `CALL=ERRNO`, as `FX_DENY` lists them: `CALL` is one of [`CALLS`]; `ERRNO` is
    /// `EPERM`, `EACCES` or `ENOSYS`.
    pub fn parse(text: &str) -> Option<Refusal> {
        let (call, errno) = text.split_once('=')?;
        let &(_, nr, args) = CALLS.iter().find(|(name, _, _)| *name == call)?;
        let errno = match errno {
            "EPERM" => libc::EPERM,
            "EACCES" => libc::EACCES,
            "ENOSYS" => libc::ENOSYS,
            _ => return None,
        };
        Some(Refusal { nr, args, errno })
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

/// A loaded seccomp program, built before it is installed: [`Filter::install`] allocates
/// nothing, so a child may install it between `fork` and `exec` (`Command::pre_exec`).
pub struct Filter(Vec<libc::sock_filter>);

impl Filter {
    /// The program that makes each call of `refusals` fail with its errno, and allows
    /// everything else.
    pub fn deny(refusals: &[Refusal]) -> Filter {
        // Offsets in struct seccomp_data: the call's number, and the low half of argument i.
        let nr_at = 0;
        let low = if cfg!(target_endian = "big") { 4 } else { 0 };
        let arg_at = |i: usize| 16 + 8 * i as u32 + low;
        let load = |at: u32| stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, at);
        let mut filter = Vec::new();
        for r in refusals {
            // One block per refusal: load the number; not this call, or one of its arguments
            // not the refused value: jump to the next block (`n - 1 - p` statements on from
            // the jump at `p`); else return the errno.
            let arg_len = |arg: Arg| if matches!(arg, Arg::Masked(..)) { 3 } else { 2 };
            let n = 3 + r.args.iter().map(|&(_, a)| arg_len(a)).sum::<usize>();
            let mut block = vec![load(nr_at), jeq(r.nr as u32, 0, (n - 2) as u8)];
            for &(i, arg) in r.args {
                block.push(load(arg_at(i)));
                if let Arg::Masked(mask, _) = arg {
                    block.push(stmt(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, mask));
                }
                let next = (n - 1 - block.len()) as u8;
                block.push(match arg {
                    Arg::Is(value) | Arg::Masked(_, value) => jeq(value, 0, next),
                    Arg::IsNot(value) => jeq(value, next, 0),
                    Arg::AtLeast(value) => libc::sock_filter {
                        code: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
                        jt: 0,
                        jf: next,
                        k: value,
                    },
                });
            }
            block.push(stmt(
                libc::BPF_RET | libc::BPF_K,
                libc::SECCOMP_RET_ERRNO | r.errno as u32,
            ));
            filter.extend(block);
        }
        filter.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW));
        Filter(filter)
    }

    /// Installs the program as a seccomp filter of this process (after
    /// `PR_SET_NO_NEW_PRIVS`, which an unprivileged process needs for it). Filters stack: a
    /// call is allowed only if every filter installed allows it, and the first refusal in
    /// the order of the return values' precedence (`ERRNO` before `ALLOW`) wins.
    pub fn install(&self) -> io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.0.len() as u16,
            filter: self.0.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: PR_SET_NO_NEW_PRIVS takes an integer flag.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `prog` points to a valid filter program that outlives the call (the
        // kernel copies it).
        let ret = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Installs a seccomp filter in this process (inherited by its children) that makes each
/// call of `refusals` fail with its errno, and allows everything else.
pub fn deny(refusals: &[Refusal]) -> io::Result<()> {
    Filter::deny(refusals).install()
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
pub fn allow_only(allowed: &[libc::c_long]) -> io::Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        // The chain of JEQs jumps to the final ALLOW, at most 255 statements away.
        if allowed.len() > 250 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
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
        Filter(filter).install()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = allowed;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "allow_only: x86_64 only",
        ))
    }
}
