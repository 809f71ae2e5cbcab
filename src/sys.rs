//! The raw system calls the crate makes, and the only module that holds `unsafe`
//! (besides the `fork` call site in [`crate::driver`], whose contract only it can check).
//!
//! Every function here returns owned file descriptors ([`OwnedFd`]) or plain values and
//! reports failures as [`io::Error`] with the OS error code intact. The calls are made through
//! `libc` directly: it is the one syscall layer the crate uses (see `docs/design.md`).

use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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

/// The number of threads of this process, from `/proc/self/status` (`Threads:`), falling back
/// to counting `/proc/self/task`.
pub(crate) fn thread_count() -> io::Result<usize> {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            if let Some(rest) = line.strip_prefix("Threads:") {
                if let Ok(n) = rest.trim().parse() {
                    return Ok(n);
                }
            }
        }
    }
    Ok(fs::read_dir("/proc/self/task")?.count())
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

/// `fork(2)`.
///
/// # Safety
///
/// The process must be single-threaded, or the child must restrict itself to
/// async-signal-safe calls until it execs: any lock held by another thread at the time of the
/// fork stays locked forever in the child.
pub(crate) unsafe fn fork() -> io::Result<Fork> {
    // SAFETY: forwarded to the caller (see the function's contract).
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

/// Whether `signal`'s disposition is `SIG_IGN`.
pub(crate) fn is_ignored(signal: i32) -> io::Result<bool> {
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null new action only queries; `old` is writable memory for one sigaction.
    cvt(unsafe { libc::sigaction(signal, std::ptr::null(), old.as_mut_ptr()) })?;
    // SAFETY: filled in by the successful sigaction call above.
    Ok(unsafe { old.assume_init() }.sa_sigaction == libc::SIG_IGN)
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
pub(crate) fn wait_readable(fd: RawFd) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
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

/// Closes descriptors by number. Used only in a freshly forked child, to drop its copies of
/// the master's descriptors whose owning values live in the (never to be resumed) master
/// stack frames.
pub(crate) fn close_raw(fds: &[RawFd]) {
    for &fd in fds {
        // SAFETY: the caller passes descriptors this process inherited from the master and
        // that no live value in the child will use or close again.
        unsafe { libc::close(fd) };
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
