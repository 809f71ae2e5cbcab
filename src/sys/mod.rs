//! The raw system calls the crate makes, and the only module that holds `unsafe`
//! (besides the `fork` call site in [`crate::driver`], whose contract only it can check).
//!
//! Every function here returns owned file descriptors ([`OwnedFd`]) or plain values and
//! reports failures as [`io::Error`] with the OS error code intact. The calls are made through
//! `libc` directly: it is the one syscall layer the crate uses (see `docs/design.md`).

pub(crate) mod notice;
pub(crate) mod reuseport;
pub(crate) mod signal;

use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// `idtype_t` value for `waitid(P_PIDFD, …)` (Linux 5.4); spelled out because older `libc`
/// releases lack the constant.
const P_PIDFD: libc::idtype_t = 3;

/// Turns a `-1` return into the thread's `errno`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Wraps a freshly returned descriptor.
fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: callers pass a descriptor the kernel has just returned to us and that nothing
    // else owns, so transferring its ownership to an `OwnedFd` is sound.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The number of threads of this process: field 20 of `/proc/self/stat`, read into a stack
/// buffer (this runs before every fork-mode `run` and after every hook, so it is kept
/// cheap), falling back to counting `/proc/self/task`.
pub(crate) fn thread_count() -> io::Result<usize> {
    use std::io::Read;
    let mut buf = [0u8; 1024];
    let mut len = 0;
    if let Ok(mut f) = fs::File::open("/proc/self/stat") {
        while len < buf.len() {
            match f.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    if let Some(n) = stat_threads(&buf[..len]) {
        return Ok(n);
    }
    Ok(fs::read_dir("/proc/self/task")?.count())
}

/// `num_threads` from the text of `/proc/PID/stat`. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted after its last `)`.
fn stat_threads(stat: &[u8]) -> Option<usize> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    // After the name come field 3 (state) onwards; num_threads is field 20.
    rest.split_ascii_whitespace().nth(20 - 3)?.parse().ok()
}

pub(crate) fn getpid() -> u32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() as u32 }
}

pub(crate) fn getppid() -> u32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() as u32 }
}

/// Result of [`fork`].
pub(crate) enum Fork {
    Parent(u32),
    Child,
}

/// `fork(2)`, for a single-threaded process only: it checks the thread count first and
/// refuses with `EDEADLK` when other threads run (any lock one of them held at the fork would
/// stay locked forever in the child).
pub(crate) fn fork() -> io::Result<Fork> {
    match thread_count() {
        Ok(1) => {}
        Ok(_) => return Err(io::Error::from_raw_os_error(libc::EDEADLK)),
        // Without /proc the count cannot be read; the master checked what it could at start.
        Err(_) => {}
    }
    // SAFETY: the process is single-threaded (checked just above; a single thread cannot
    // start another one between the check and the call), so the child inherits no lock
    // held by some other thread.
    match cvt(unsafe { libc::fork() })? {
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid as u32)),
    }
}

/// `pidfd_open(2)` (Linux 5.3).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word, both passed by value.
    let fd = cvt_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) })?;
    Ok(owned(fd as libc::c_int))
}

/// `pidfd_send_signal(2)` (Linux 5.1): signals exactly the process the pidfd refers to.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: the fd is a valid pidfd for the duration of the call; a null siginfo asks the
    // kernel to fill it in as kill(2) would.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })?;
    Ok(())
}

/// `kill(2)`.
pub(crate) fn kill(pid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    cvt(unsafe { libc::kill(pid as libc::pid_t, signal) })?;
    Ok(())
}

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reaped {
    Exited(i32),
    Signaled(i32),
}

/// Runs `waitid` and decodes the `siginfo_t`. `Ok(None)` when `WNOHANG` found nothing.
fn waitid(idtype: libc::idtype_t, id: libc::id_t, flags: i32) -> io::Result<Option<(u32, Reaped)>> {
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: `info` points to writable memory the size of a siginfo_t; the kernel fills it.
    cvt(unsafe { libc::waitid(idtype, id, info.as_mut_ptr(), flags | libc::WEXITED) })?;
    // SAFETY: zero-initialised above, and possibly filled in by the kernel: either way a valid
    // siginfo_t (all-zero is a valid bit pattern for this plain C struct).
    let info = unsafe { info.assume_init() };
    // SAFETY: for waitid with WEXITED the kernel fills the SIGCHLD fields, which these
    // accessors read; with WNOHANG and nothing to report, si_pid stays 0 as zeroed.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    let reaped = match info.si_code {
        libc::CLD_EXITED => Reaped::Exited(status),
        _ => Reaped::Signaled(status),
    };
    Ok(Some((pid as u32, reaped)))
}

/// Reaps the child a pidfd refers to: `waitid(P_PIDFD, …)`, or `waitid(P_PID, pid)` on Linux
/// 5.3 where `P_PIDFD` is not known (a pid cannot be reused while its zombie is unreaped, so
/// this is as race-free).
pub(crate) fn reap_pidfd(pidfd: BorrowedFd<'_>, pid: u32) -> io::Result<Option<Reaped>> {
    match waitid(P_PIDFD, pidfd.as_raw_fd() as libc::id_t, libc::WNOHANG) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => reap_pid(pid),
        r => Ok(r?.map(|(_, how)| how)),
    }
}

/// Reaps one child by pid if it has exited.
pub(crate) fn reap_pid(pid: u32) -> io::Result<Option<Reaped>> {
    Ok(waitid(libc::P_PID, pid as libc::id_t, libc::WNOHANG)?.map(|(_, how)| how))
}

/// Reports any exited child, reaping it unless `peek` is set. `Ok(None)` when no child has
/// exited; `ECHILD` (no children at all) is also `Ok(None)`.
pub(crate) fn wait_any(peek: bool) -> io::Result<Option<(u32, Reaped)>> {
    let flags = libc::WNOHANG | if peek { libc::WNOWAIT } else { 0 };
    match waitid(libc::P_ALL, 0, flags) {
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Ok(None),
        r => r,
    }
}

/// A signal set.
#[derive(Clone, Copy)]
pub(crate) struct SigSet(libc::sigset_t);

impl SigSet {
    pub(crate) fn empty() -> SigSet {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set it is given.
        unsafe { libc::sigemptyset(set.as_mut_ptr()) };
        // SAFETY: initialised by sigemptyset just above.
        SigSet(unsafe { set.assume_init() })
    }

    pub(crate) fn of(signals: &[i32]) -> SigSet {
        let mut set = SigSet::empty();
        for &s in signals {
            // SAFETY: `set.0` is an initialised sigset_t; an invalid signal number only makes
            // sigaddset return EINVAL, which we do not need to act on for our constants.
            unsafe { libc::sigaddset(&mut set.0, s) };
        }
        set
    }
}

/// Applies `how` (`SIG_BLOCK`, `SIG_SETMASK`, …) to the calling thread's signal mask and
/// returns the previous mask.
pub(crate) fn sigmask(how: i32, set: &SigSet) -> io::Result<SigSet> {
    let mut old = SigSet::empty();
    // SAFETY: both pointers refer to initialised sigset_t values owned by this frame.
    let ret = unsafe { libc::pthread_sigmask(how, &set.0, &mut old.0) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(old)
}

/// `signalfd(2)` for `mask`, non-blocking and close-on-exec.
pub(crate) fn signalfd(mask: &SigSet) -> io::Result<OwnedFd> {
    // SAFETY: -1 asks for a new descriptor; the mask is an initialised sigset_t.
    let fd = cvt(unsafe { libc::signalfd(-1, &mask.0, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) })?;
    Ok(owned(fd))
}

/// Reads every pending signal from a non-blocking signalfd.
pub(crate) fn read_signals(fd: BorrowedFd<'_>, out: &mut Vec<i32>) -> io::Result<()> {
    loop {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::zeroed();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: the buffer is exactly one signalfd_siginfo, writable, owned by this frame.
        let n = unsafe { libc::read(fd.as_raw_fd(), info.as_mut_ptr().cast(), size) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(()),
                io::ErrorKind::Interrupted => continue,
                _ => Err(e),
            };
        }
        if n as usize != size {
            return Ok(());
        }
        // SAFETY: the kernel wrote a whole signalfd_siginfo (checked just above).
        let info = unsafe { info.assume_init() };
        out.push(info.ssi_signo as i32);
    }
}

/// A signal disposition saved by [`set_default_disposition`], to be put back later.
pub(crate) struct SavedAction {
    signal: i32,
    action: libc::sigaction,
}

/// Whether the kernel reaps this process's exited children by itself: `SIGCHLD` is
/// `SIG_IGN`, or its action carries `SA_NOCLDWAIT`.
pub(crate) fn children_auto_reaped() -> io::Result<bool> {
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null new action only queries; `old` is writable memory for one sigaction.
    cvt(unsafe { libc::sigaction(libc::SIGCHLD, std::ptr::null(), old.as_mut_ptr()) })?;
    // SAFETY: filled in by the successful sigaction call above.
    let old = unsafe { old.assume_init() };
    Ok(old.sa_sigaction == libc::SIG_IGN || old.sa_flags & libc::SA_NOCLDWAIT != 0)
}

/// Sets `signal` to `SIG_DFL` and returns the previous disposition.
pub(crate) fn set_default_disposition(signal: i32) -> io::Result<SavedAction> {
    let mut new = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: zeroed sigaction is a valid value: handler SIG_DFL (0), empty mask, no flags.
    let new = unsafe { new.assume_init_mut() };
    new.sa_sigaction = libc::SIG_DFL;
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: both pointers refer to valid sigaction storage owned by this frame.
    cvt(unsafe { libc::sigaction(signal, new, old.as_mut_ptr()) })?;
    Ok(SavedAction {
        signal,
        // SAFETY: filled in by the successful sigaction call above.
        action: unsafe { old.assume_init() },
    })
}

/// Puts back a disposition saved by [`set_default_disposition`].
pub(crate) fn restore_disposition(saved: &SavedAction) -> io::Result<()> {
    // SAFETY: `saved.action` is a sigaction the kernel returned to us earlier.
    cvt(unsafe { libc::sigaction(saved.signal, &saved.action, std::ptr::null_mut()) })?;
    Ok(())
}

/// An epoll instance whose registrations carry a `u64` token.
pub(crate) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes a flags word.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll { fd: owned(fd) })
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Registers `fd` for readability.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both descriptors are valid for the call; `ev` is a valid epoll_event.
        cvt(unsafe { libc::epoll_ctl(self.raw(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev) })?;
        Ok(())
    }

    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: both descriptors are valid; a non-null event keeps pre-2.6.9 kernels happy.
        cvt(unsafe { libc::epoll_ctl(self.raw(), libc::EPOLL_CTL_DEL, fd.as_raw_fd(), &mut ev) })?;
        Ok(())
    }

    /// Waits for events, for at most `timeout` (forever when `None`). Returns the ready
    /// tokens; an interrupted wait returns none.
    pub(crate) fn wait(&self, timeout: Option<Duration>, tokens: &mut Vec<u64>) -> io::Result<()> {
        const MAX: usize = 64;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        let ms = match timeout {
            None => -1,
            // Round up so a deadline 0.3 ms away does not spin with a zero timeout.
            Some(d) => d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
        };
        // SAFETY: `events` is a writable array of MAX epoll_event values.
        let n = unsafe { libc::epoll_wait(self.raw(), events.as_mut_ptr(), MAX as i32, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        tokens.extend(events[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

/// `prctl(PR_SET_PDEATHSIG)`: the calling thread's parent's death delivers `signal` to us.
pub(crate) fn set_parent_death_signal(signal: i32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes the signal number as an unsigned long argument.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

/// Whether this process adopts orphaned descendants: it is PID 1 of its namespace, or it
/// has `PR_SET_CHILD_SUBREAPER` set.
pub(crate) fn adopts_orphans() -> bool {
    if getpid() == 1 {
        return true;
    }
    let mut flag: libc::c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through the pointer we pass.
    let ret = unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut flag as *mut libc::c_int) };
    ret == 0 && flag != 0
}

/// A close-on-exec pipe: `(read end, write end)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a writable array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// Blocks until `fd` is readable or hung up. (A descriptor number is enough: poll on a
/// closed one reports `POLLNVAL` rather than misbehaving.)
pub(crate) fn wait_readable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Ends the process at once, without running atexit handlers or flushing anything.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Reaps `pid`, waiting for it to exit.
pub(crate) fn wait_blocking(pid: u32) {
    // SAFETY: waitpid with a null status pointer only reaps the given child.
    while unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) } == -1 {
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
}

/// Creates a listening TCP socket bound to `addr`: `SO_REUSEADDR` always, `SO_REUSEPORT` when
/// asked, `IPV6_V6ONLY` set to `v6only` for IPv6 addresses. Close-on-exec.
pub(crate) fn bind_tcp(
    addr: std::net::SocketAddr,
    reuseport: bool,
    v6only: bool,
    backlog: i32,
) -> io::Result<std::net::TcpListener> {
    use std::net::SocketAddr;
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket takes plain integers and returns a new descriptor or -1.
    let fd = owned(cvt(unsafe {
        libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
    })?);
    setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if reuseport {
        setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { storage.as_mut_ptr().cast::<libc::sockaddr_in>().write(sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            setsockopt_int(
                fd.as_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                v6only as i32,
            )?;
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe {
                storage
                    .as_mut_ptr()
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6)
            };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: `storage` holds an initialised sockaddr of `len` bytes for this family.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            storage.as_ptr().cast(),
            len as libc::socklen_t,
        )
    })?;
    // SAFETY: listen takes a valid descriptor and a backlog.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(std::net::TcpListener::from(fd))
}

fn setsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the option value is one int, passed with its exact size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: `value` and `len` are writable and sized for one int; an invalid descriptor
    // only makes the call fail with EBADF.
    cvt(unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut i32).cast(), &mut len) })?;
    Ok(value)
}

/// Adopts an inherited listening socket ([`take_inherited`]): checks that `fd` is an open,
/// listening TCP socket (IPv4 or IPv6), then sets close-on-exec and clears `O_NONBLOCK`. The
/// error says which of those it is not.
pub(crate) fn adopt_listener(fd: RawFd) -> Result<std::net::TcpListener, String> {
    let describe = |e: io::Error| match e.raw_os_error() {
        Some(libc::EBADF) => format!("fd {fd} is not open"),
        Some(libc::ENOTSOCK) => format!("fd {fd} is not a socket"),
        _ => format!("fd {fd}: {e}"),
    };
    let ty = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).map_err(describe)?;
    let domain = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(describe)?;
    let listening = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).map_err(describe)?;
    if ty != libc::SOCK_STREAM || (domain != libc::AF_INET && domain != libc::AF_INET6) {
        return Err(format!("fd {fd} is a socket but not a TCP socket"));
    }
    if listening == 0 {
        return Err(format!("fd {fd} is a TCP socket that is not listening"));
    }
    let listener = std::net::TcpListener::from(
        take_inherited(fd).ok_or_else(|| format!("fd {fd} was adopted already"))?,
    );
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| describe(e.into()))?;
    listener.set_nonblocking(false).map_err(describe)?;
    Ok(listener)
}

/// The pre-`exec` setup of an exec-mode worker, run between `fork` and `execve` by
/// [`std::process::Command`]: death signal, the listener on fd 3, the readiness pipe on fd 4,
/// and every other descriptor above 2 marked close-on-exec. Only async-signal-safe calls.
pub(crate) fn exec_child_setup(
    listener: Option<RawFd>,
    ready: RawFd,
    master_pid: u32,
    mask: &SigSet,
) -> io::Result<()> {
    // The master's blocked signals would survive exec: put back the mask of before `run`.
    sigmask(libc::SIG_SETMASK, mask)?;
    set_parent_death_signal(libc::SIGKILL)?;
    if getppid() != master_pid {
        // The master died before the prctl: do not exec an orphan.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    let mut ready = ready;
    if ready == 3 && listener.is_some_and(|l| l != 3) {
        // Moving the listener onto 3 would close the readiness pipe: move it out of the way.
        // SAFETY: F_DUPFD_CLOEXEC on an open descriptor returns a new one or fails.
        ready = cvt(unsafe { libc::fcntl(3, libc::F_DUPFD_CLOEXEC, 5) })?;
    }
    if let Some(fd) = listener {
        keep_at(fd, 3)?;
    }
    keep_at(ready, 4)?;
    // Mark everything else close-on-exec (Linux 5.11); std's own error-reporting pipe is
    // close-on-exec already, so it keeps working.
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    let first = 5;
    if listener.is_none() {
        // SAFETY: F_SETFD on a descriptor that may not be open just fails with EBADF.
        unsafe { libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: close_range takes plain integers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == -1 {
        // Older kernels: walk the descriptor table up to a bound.
        for fd in first..4096 {
            // SAFETY: F_SETFD on a descriptor that may not be open just fails with EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    Ok(())
}

/// Puts `fd` at `target` without close-on-exec, so the exec'd program finds it there.
fn keep_at(fd: RawFd, target: RawFd) -> io::Result<()> {
    if fd == target {
        // SAFETY: F_SETFD on an open descriptor; clearing FD_CLOEXEC keeps it across exec.
        cvt(unsafe { libc::fcntl(target, libc::F_SETFD, 0) })?;
    } else {
        // SAFETY: dup2 onto `target` gives a descriptor without FD_CLOEXEC.
        cvt(unsafe { libc::dup2(fd, target) })?;
    }
    Ok(())
}

/// Removes an environment variable, if the process is single-threaded (so that no other
/// thread can read the environment meanwhile); returns whether it did.
pub(crate) fn remove_env_if_single_threaded(name: &str) -> bool {
    if !matches!(thread_count(), Ok(1)) {
        return false;
    }
    // SAFETY: the process has one thread (checked just above, and one thread cannot start
    // another between the check and this call), so nothing reads the environment meanwhile.
    unsafe { std::env::remove_var(name) };
    true
}

/// The descriptors below this number that [`take_inherited`] handed out already.
const INHERITED_LIMIT: usize = 1024;
static INHERITED: [std::sync::atomic::AtomicBool; INHERITED_LIMIT] =
    [const { std::sync::atomic::AtomicBool::new(false) }; INHERITED_LIMIT];

/// Takes ownership of a descriptor this process inherited by protocol (fd 3 of systemd
/// socket activation or of an exec-mode worker, the readiness pipe on fd 4), at most once per
/// number: a second call for the same number returns `None`, so no two owners can close it.
/// Also `None` when `fd` is not open, or not in `3..1024`.
pub(crate) fn take_inherited(fd: RawFd) -> Option<OwnedFd> {
    let index = usize::try_from(fd)
        .ok()
        .filter(|&i| (3..INHERITED_LIMIT).contains(&i))?;
    // SAFETY: only inspects the descriptor's flags; a number that is not open makes it fail.
    if rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(fd) }).is_err() {
        return None;
    }
    if INHERITED[index].swap(true, std::sync::atomic::Ordering::AcqRel) {
        return None;
    }
    // SAFETY: the descriptor is open (checked above), the protocol that passed it to this
    // process gives it to the crate, and the flag just set guarantees that this is its only
    // owner: no other call returns it again.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Write end of the pipe that [`forward_signal`] writes signal numbers to (-1: none).
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Signal handler used while the master shares its process with other threads: the kernel
/// may deliver a process-directed signal to any thread that does not block it, so the
/// handler forwards the number through a pipe the master's epoll watches. Only
/// async-signal-safe calls; `errno` is preserved.
extern "C" fn forward_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    let errno = unsafe { *libc::__errno_location() };
    let byte = signal as u8;
    // SAFETY: one byte from a local; a full or closed pipe just makes write fail.
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Installs [`forward_signal`] for `signals`, writing to `pipe_write`; returns the previous
/// dispositions for [`stop_forwarding`].
pub(crate) fn forward_signals(signals: &[i32], pipe_write: RawFd) -> io::Result<Vec<SavedAction>> {
    SIGNAL_PIPE.store(pipe_write, std::sync::atomic::Ordering::Relaxed);
    let mut saved = Vec::new();
    for &signal in signals {
        let mut new = MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: a zeroed sigaction is valid (empty mask, no flags); we then set the handler.
        let new = unsafe { new.assume_init_mut() };
        new.sa_sigaction = forward_signal as *const () as libc::sighandler_t;
        new.sa_flags = libc::SA_RESTART;
        let mut old = MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: both pointers refer to valid sigaction storage owned by this frame; the
        // handler only makes async-signal-safe calls.
        if let Err(e) = cvt(unsafe { libc::sigaction(signal, new, old.as_mut_ptr()) }) {
            stop_forwarding(&saved);
            return Err(e);
        }
        saved.push(SavedAction {
            signal,
            // SAFETY: filled in by the successful sigaction call above.
            action: unsafe { old.assume_init() },
        });
    }
    Ok(saved)
}

/// Puts back the dispositions replaced by [`forward_signals`] and stops forwarding.
pub(crate) fn stop_forwarding(saved: &[SavedAction]) {
    for s in saved {
        let _ = restore_disposition(s);
    }
    SIGNAL_PIPE.store(-1, std::sync::atomic::Ordering::Relaxed);
}

/// A non-blocking, close-on-exec pipe: `(read end, write end)`.
pub(crate) fn pipe_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a writable array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// Writes a pid to the readiness pipe: 4 bytes, native order, one atomic `write(2)` (a pipe
/// write of at most `PIPE_BUF` bytes is never split or interleaved).
pub(crate) fn write_pid(fd: BorrowedFd<'_>, pid: u32) -> io::Result<()> {
    let n = rustix::io::write(fd, &pid.to_ne_bytes())?;
    if n != 4 {
        return Err(io::Error::other("short write to the readiness pipe"));
    }
    Ok(())
}

/// Reads every pid the workers wrote to the readiness pipe (non-blocking).
pub(crate) fn read_pids(fd: BorrowedFd<'_>, out: &mut Vec<u32>) {
    let mut buf = [0u8; 256];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => out.extend(
                buf[..n - n % 4]
                    .chunks_exact(4)
                    .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])),
            ),
        }
    }
}

/// Whether `fd` is an open pipe (FIFO).
pub(crate) fn is_pipe(fd: RawFd) -> bool {
    // SAFETY: fstat only inspects the descriptor; one that is not open makes it fail.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::fs::fstat(fd).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo
    })
}

/// Reads the signal numbers [`forward_signal`] wrote.
pub(crate) fn read_forwarded(fd: BorrowedFd<'_>, out: &mut Vec<i32>) {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
        out.extend(buf[..n as usize].iter().map(|&b| i32::from(b)));
    }
}

/// Arranges for [`exec_child_setup`] to run in the child of `cmd` between fork and exec.
pub(crate) fn set_exec_child_setup(
    cmd: &mut std::process::Command,
    listener: Option<BorrowedFd<'_>>,
    ready: BorrowedFd<'_>,
    master_pid: u32,
    mask: SigSet,
) {
    // Numbers only from here: the closure runs in the child, right after `Command::spawn`'s
    // fork, while the caller still holds both descriptors open.
    let listener = listener.map(|fd| fd.as_raw_fd());
    let ready = ready.as_raw_fd();
    use std::os::unix::process::CommandExt;
    // SAFETY: exec_child_setup makes only async-signal-safe calls (pthread_sigmask, prctl,
    // getppid, fcntl, dup2, close_range) and allocates nothing, as pre_exec requires in a
    // process that may run other threads.
    unsafe { cmd.pre_exec(move || exec_child_setup(listener, ready, master_pid, &mask)) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn stat_threads_counts_after_the_command_name() {
        let stat = b"42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 7 0 1234 0";
        assert_eq!(super::stat_threads(stat), Some(7));
        assert_eq!(super::stat_threads(b"42 (x) S 1"), None);
        assert_eq!(super::stat_threads(b""), None);
    }

    #[test]
    fn thread_count_sees_this_test_thread() {
        assert!(super::thread_count().unwrap() >= 1);
    }
}
