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

/// Installs a seccomp filter in this process (inherited by its children) that makes each
/// call of `refusals` fail with its errno, and allows everything else.
pub fn deny(refusals: &[Refusal]) -> std::io::Result<()> {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt: 0,
        jf,
        k,
    };
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
