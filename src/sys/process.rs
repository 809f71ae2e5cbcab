//! Processes: fork, pidfds, signals to a process, reaping, the parent-death signal, and the
//! pre-`exec` setup of an exec-mode worker. Pids: [`super::pid`].
//!
//! Through rustix where it wraps the call safely; through nix for `fork`; through libc for
//! `waitid(P_ALL)` (rustix does not report which child it found) and the descriptor-table
//! calls of the pre-`exec` child, which work on bare numbers.

#![allow(unsafe_code)]

use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::process::{WaitId, WaitIdOptions, WaitIdStatus, WaitOptions};

use super::pid::{Pid, getpid, getppid, try_getpid};
use super::signal::{self, MaskHow, SigSet, Signal};

/// The number of threads of this process. This runs before every fork and after every hook,
/// so the common answer, one, costs one system call that changes nothing:
/// `unshare(CLONE_THREAD)`, which succeeds when the process has a single thread (there is
/// nothing to unshare) and fails with `EINVAL` when it has more (unshare(2), every kernel
/// since 2.6.16). Only then, or where a seccomp filter refuses `unshare` (containers' default
/// profiles do, with `EPERM`), are the threads counted: from the link count of
/// `/proc/self/task`, which procfs reports as 2 plus the number of threads; else from field
/// 20 of `/proc/self/stat`; last by listing `/proc/self/task`.
pub(crate) fn thread_count() -> io::Result<usize> {
    match nix::sched::unshare(nix::sched::CloneFlags::CLONE_THREAD) {
        Ok(()) => return Ok(1),
        Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => {
            static LOGGED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                log::info!(
                    "unshare(CLONE_THREAD) refused ({}): threads are counted in /proc/self/task \
                     instead",
                    io::Error::from(e)
                );
            }
        }
    }
    counted_threads()
}

/// The number of threads, counted in `/proc` (see [`thread_count`]).
fn counted_threads() -> io::Result<usize> {
    if let Some(n) = rustix::fs::stat("/proc/self/task")
        .ok()
        .and_then(|st| task_dir_threads(nlink(&st)))
    {
        return Ok(n);
    }
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

/// `st_nlink`, which is 32 bits wide on some targets and 64 on others.
#[allow(clippy::unnecessary_cast)]
fn nlink(st: &rustix::fs::Stat) -> u64 {
    st.st_nlink as u64
}

/// The thread count from the link count of a `/proc/PID/task` directory (2 + threads);
/// `None` for a count that cannot be one (a filesystem that reports 1 or 2 for directories).
fn task_dir_threads(nlink: u64) -> Option<usize> {
    usize::try_from(nlink.checked_sub(2)?)
        .ok()
        .filter(|&n| n >= 1)
}

/// `num_threads` from the text of `/proc/PID/stat`. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted after its last `)`.
fn stat_threads(stat: &[u8]) -> Option<usize> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    // After the name come field 3 (state) onwards; num_threads is field 20.
    rest.split_ascii_whitespace().nth(20 - 3)?.parse().ok()
}

/// Result of [`fork`].
pub(crate) enum Fork {
    Parent(Pid),
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
    // held by some other thread, and may run any code, allocation included.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            // The parent's pid is no longer this process's: learnt again, for the handlers.
            super::pid::relearn_after_fork();
            Ok(Fork::Child)
        }
        nix::unistd::ForkResult::Parent { child } => Pid::try_from(child.as_raw() as u32)
            .map(Fork::Parent)
            .map_err(|_| io::Error::other("fork returned no child pid")),
    }
}

/// `pidfd_open(2)` (Linux 5.3). The descriptor is close-on-exec (the kernel always sets it).
pub(crate) fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    let fd = rustix::process::pidfd_open(pid.rustix(), rustix::process::PidfdFlags::empty())?;
    Ok(fd)
}

/// `pidfd_send_signal(2)` (Linux 5.1): signals exactly the process the pidfd refers to.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: Signal) -> io::Result<()> {
    rustix::process::pidfd_send_signal(pidfd, signal.rustix())?;
    Ok(())
}

/// `kill(2)`.
pub(crate) fn kill(pid: Pid, signal: Signal) -> io::Result<()> {
    rustix::process::kill_process(pid.rustix(), signal.rustix())?;
    Ok(())
}

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reaped {
    Exited(i32),
    Signaled(i32),
}

impl Reaped {
    /// From the `siginfo_t` fields of `waitid(WEXITED)`: `si_code` is `CLD_EXITED`,
    /// `CLD_KILLED` or `CLD_DUMPED`, and `si_status` the exit code or the signal.
    fn from_siginfo(code: i32, status: i32) -> Reaped {
        match code {
            libc::CLD_EXITED => Reaped::Exited(status),
            _ => Reaped::Signaled(status),
        }
    }

    fn from_status(status: &WaitIdStatus) -> Reaped {
        let code = status.raw_code();
        let value = status
            .exit_status()
            .or_else(|| status.terminating_signal())
            .unwrap_or(0);
        Reaped::from_siginfo(code, value)
    }
}

/// `waitid(idtype, WEXITED | WNOHANG)` for one child. `Ok(None)` when it has not exited.
fn reap(id: WaitId<'_>) -> io::Result<Option<Reaped>> {
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
    Ok(rustix::process::waitid(id, options)?.map(|status| Reaped::from_status(&status)))
}

/// `waitid(P_PIDFD, …)` reaps the child a pidfd refers to; on Linux 5.3, where `P_PIDFD` is
/// not known (`EINVAL`), `waitid(P_PID, pid)` (a pid cannot be reused while its zombie is
/// unreaped, so this is as race-free).
pub(crate) fn reap_pidfd(pidfd: BorrowedFd<'_>, pid: Pid) -> io::Result<Option<Reaped>> {
    match reap(WaitId::PidFd(pidfd)) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => reap_pid(pid),
        r => r,
    }
}

/// `waitid(P_PIDFD, …, WNOWAIT)`: whether the kernel lets this process wait on a pidfd,
/// asked without reaping anything (a child that already exited stays a zombie for
/// [`reap_pidfd`]). On Linux 5.3 (`EINVAL`: `P_PIDFD` unknown) the answer is yes, through
/// [`reap_pidfd`]'s fallback to `P_PID`.
pub(crate) fn probe_pidfd(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    match rustix::process::waitid(WaitId::PidFd(pidfd), options) {
        Ok(_) => Ok(()),
        Err(rustix::io::Errno::INVAL) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The calls a master makes only once it has workers, tried before the first fork so that a
/// sandbox that refuses one is named before anything is started: `epoll_create1` and
/// `signalfd4` (the event loop, made after the first forks), `waitid` (every backend reaps
/// with it: `P_PIDFD`, `P_ALL`), and with `kill_signals` (the sigchld backend) `kill` (as
/// `kill(self, 0)`, which sends nothing); and `getpid` (or `/proc/self`) and `close`, which
/// every step needs. Each is made and undone at once; the error names the call that failed.
pub(crate) fn probe_master_calls(kill_signals: bool) -> Result<(), (&'static str, io::Error)> {
    // Its own pid, through `/proc/self` where `getpid` is refused.
    let pid = try_getpid().map_err(|e| ("getpid", e))?;
    drop(super::Epoll::new().map_err(|e| ("epoll_create1", e))?);
    let signalfd = signal::signalfd(&SigSet::of(&[])).map_err(|e| ("signalfd", e))?;
    // `close`, which every dropped descriptor makes and whose failure a drop cannot report:
    // refused, each descriptor the master drops stays open, std's `Command::spawn` (an
    // exec-mode worker) waits forever on the write end of its own error pipe, and std's
    // `read_dir` panics at its end.
    nix::unistd::close(signalfd).map_err(|e| ("close", e.into()))?;
    // WNOWAIT: a child this process already has (not a worker) is left as it is.
    wait_any(true).map_err(|e| ("waitid", e))?;
    if kill_signals {
        rustix::process::test_kill_process(pid.rustix()).map_err(|e| ("kill", e.into()))?;
    }
    Ok(())
}

/// Whether an error says that a sandbox (a seccomp filter, an LSM) refused the system call,
/// or that the kernel lacks it: `EPERM`, `EACCES`, `ENOSYS`.
pub(crate) fn is_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::EACCES | libc::ENOSYS)
    )
}

/// What to add to an error `e` of a system call: where a sandbox's system call filter refused
/// it, that it must allow it and where the calls a master needs are listed; else nothing.
pub(crate) fn refused_hint(e: &io::Error) -> &'static str {
    if is_refused(e) {
        " (refused: a system call filter must allow it; docs/security.md lists what a master \
         needs)"
    } else {
        ""
    }
}

/// `e`, from the system call `call`, saying which call failed (and, where a sandbox refused
/// it, [`refused_hint`]); its kind is kept.
pub(crate) fn named(call: &str, e: impl Into<io::Error>) -> io::Error {
    let e = e.into();
    io::Error::new(e.kind(), format!("{call}: {e}{}", refused_hint(&e)))
}

/// `waitid(P_PID, pid)`: reaps one child by pid if it has exited.
pub(crate) fn reap_pid(pid: Pid) -> io::Result<Option<Reaped>> {
    reap(WaitId::Pid(pid.rustix()))
}

/// `waitid(P_ALL, …)`: reports any exited child, reaping it unless `peek` is set
/// (`WNOWAIT`). `Ok(None)` when no child has exited; `ECHILD` (no children at all) is also
/// `Ok(None)`.
///
/// Through libc: rustix's `waitid` does not say which child it found, and nix's fails with
/// `EINVAL`, after reaping, for a child killed by a signal it has no name for (a real-time
/// one).
pub(crate) fn wait_any(peek: bool) -> io::Result<Option<(Pid, Reaped)>> {
    let flags = libc::WEXITED | libc::WNOHANG | if peek { libc::WNOWAIT } else { 0 };
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: `info` is writable storage for one siginfo_t owned by this frame. It starts
    // zero-filled, a valid siginfo_t, so it is initialised whether or not the kernel writes
    // it (with WNOHANG and nothing to report it may not). The accessors read the SIGCHLD
    // fields, which waitid(WEXITED) fills; si_pid stays 0 when nothing was reported.
    let (ret, pid, code, status) = unsafe {
        let ret = libc::waitid(libc::P_ALL, 0, info.as_mut_ptr(), flags);
        let info = info.assume_init_ref();
        (ret, info.si_pid(), info.si_code, info.si_status())
    };
    if ret == -1 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ECHILD) => Ok(None),
            _ => Err(e),
        };
    }
    // 0 when nothing was reported; never negative.
    let Some(pid) = Pid::new(pid as u32) else {
        return Ok(None);
    };
    Ok(Some((pid, Reaped::from_siginfo(code, status))))
}

/// `waitpid(2)` (`wait4`): reaps `pid`, waiting for it to exit (retried on `EINTR`).
pub(crate) fn wait_blocking(pid: Pid) -> io::Result<()> {
    loop {
        match rustix::process::waitpid(Some(pid.rustix()), WaitOptions::empty()) {
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
            Ok(_) => return Ok(()),
        }
    }
}

/// `prctl(PR_SET_PDEATHSIG)`: the death of the calling thread's parent delivers `signal` to
/// us (`None` clears it).
pub(crate) fn set_parent_death_signal(signal: Option<Signal>) -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(signal.map(Signal::rustix))?;
    Ok(())
}

/// `getpid(2)` and `prctl(PR_GET_CHILD_SUBREAPER)`: whether this process adopts orphaned
/// descendants, being PID 1 of its namespace or a child subreaper.
pub(crate) fn adopts_orphans() -> bool {
    getpid().get() == 1 || rustix::process::child_subreaper().is_ok_and(|flag| flag.is_some())
}

/// `std::env::remove_var` (which rewrites `environ`): removes an environment variable if
/// the process is single-threaded, so that no other thread can read the environment
/// meanwhile; returns whether it did.
pub(crate) fn remove_env_if_single_threaded(name: &str) -> bool {
    if !matches!(thread_count(), Ok(1)) {
        return false;
    }
    // SAFETY: the process has one thread (checked just above, and one thread cannot start
    // another between the check and this call), so nothing reads the environment meanwhile.
    unsafe { std::env::remove_var(name) };
    true
}

/// `Command::pre_exec`: arranges for [`exec_child_setup`] to run in the child of `cmd`
/// between fork and exec.
pub(crate) fn set_exec_child_setup(
    cmd: &mut std::process::Command,
    listeners: &[BorrowedFd<'_>],
    ready: BorrowedFd<'_>,
    heartbeat: Option<BorrowedFd<'_>>,
    master_pid: Pid,
    mask: SigSet,
) {
    // Numbers only from here: the closure runs in the child, right after `Command::spawn`'s
    // fork, while the caller still holds every descriptor open. Each descriptor and where it
    // goes: the listeners on 3.., then the readiness pipe, then the heartbeat table; with
    // no listener (`run`) fd 3 stays empty and the others go to 4 and 5.
    let first = 3 + listeners.len().max(1) as RawFd;
    let mut moves: Vec<(Option<RawFd>, RawFd)> = listeners
        .iter()
        .enumerate()
        .map(|(i, fd)| (Some(fd.as_raw_fd()), 3 + i as RawFd))
        .collect();
    if listeners.is_empty() {
        moves.push((None, 3));
    }
    moves.push((Some(ready.as_raw_fd()), first));
    moves.push((heartbeat.map(|fd| fd.as_raw_fd()), first + 1));
    use std::os::unix::process::CommandExt;
    // SAFETY: exec_child_setup makes only async-signal-safe calls (pthread_sigmask, prctl,
    // getppid, fcntl, dup2, close_range), allocates nothing (it rearranges `moves` in place,
    // allocated here before the fork) and takes no lock, as pre_exec requires in a process
    // that may run other threads.
    unsafe { cmd.pre_exec(move || exec_child_setup(&mut moves, master_pid, &mask)) };
}

/// `pthread_sigmask(2)`, `prctl(PR_SET_PDEATHSIG)`, `getppid(2)`, then `fcntl(2)`, `dup2(2)`
/// and `close_range(2)`: the pre-`exec` setup of an exec-mode worker. Death signal, each
/// descriptor of `moves` (number now, target: the listeners on fds 3.., then the readiness
/// pipe, then the heartbeat memfd) on its target, and every other descriptor above 2 marked
/// close-on-exec. Only async-signal-safe calls, and no allocation.
///
/// Its one caller is the closure [`set_exec_child_setup`] gives `Command::pre_exec`: it runs
/// in the child between fork and exec, where nothing else of this process runs and no
/// owner of a descriptor ever runs again (exec replaces the program, and a failed exec ends
/// the child), so it may rearrange the descriptor table by number.
fn exec_child_setup(
    moves: &mut [(Option<RawFd>, RawFd)],
    master_pid: Pid,
    mask: &SigSet,
) -> io::Result<()> {
    /// A descriptor-table call on bare numbers.
    enum FdCall {
        /// `fcntl(fd, F_DUPFD_CLOEXEC, min)`.
        DupAbove(RawFd, RawFd),
        /// `fcntl(fd, F_SETFD, flags)`.
        SetFlags(RawFd, libc::c_int),
        /// `dup2(fd, target)`.
        Dup2(RawFd, RawFd),
        /// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)` (Linux 5.11).
        CloexecFrom(RawFd),
    }

    fn call(op: FdCall) -> io::Result<libc::c_int> {
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        // SAFETY: each call takes integers only and reads or writes no memory of ours, and
        // each is async-signal-safe. They change which file sits at a descriptor number, or
        // its close-on-exec flag; `call` is local to exec_child_setup, which runs only in
        // the pre-exec child (see there), where no owner of those descriptors runs again.
        let ret = unsafe {
            match op {
                FdCall::DupAbove(fd, min) => libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min),
                FdCall::SetFlags(fd, flags) => libc::fcntl(fd, libc::F_SETFD, flags),
                FdCall::Dup2(fd, target) => libc::dup2(fd, target),
                FdCall::CloexecFrom(first) => libc::syscall(
                    libc::SYS_close_range,
                    first as libc::c_uint,
                    libc::c_uint::MAX,
                    CLOSE_RANGE_CLOEXEC,
                ) as libc::c_int,
            }
        };
        if ret == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    /// Puts `fd` at `target` without close-on-exec, so the exec'd program finds it there.
    fn keep_at(fd: RawFd, target: RawFd) -> io::Result<()> {
        if fd == target {
            // Clearing FD_CLOEXEC keeps it across exec.
            call(FdCall::SetFlags(target, 0))?;
        } else {
            // dup2 gives a descriptor without FD_CLOEXEC.
            call(FdCall::Dup2(fd, target))?;
        }
        Ok(())
    }

    // The master's blocked signals would survive exec: put back the mask of before `run`.
    signal::sigmask(MaskHow::Set, mask)?;
    set_parent_death_signal(Some(Signal::Kill))?;
    if getppid() != Some(master_pid) {
        // The master died before the prctl: do not exec an orphan.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    let last = moves.last().map_or(3, |&(_, target)| target);
    // A descriptor sitting on another one's target would be closed by that one's dup2:
    // move it above the targets first.
    for (fd, target) in moves.iter_mut() {
        if let Some(n) = fd {
            if (3..=last).contains(n) && *n != *target {
                *n = call(FdCall::DupAbove(*n, last + 1))?;
            }
        }
    }
    for &(fd, target) in moves.iter() {
        match fd {
            Some(fd) => keep_at(fd, target)?,
            // A target without a descriptor may hold anything: it must not leak. (It may
            // not be open: then this just fails with EBADF.)
            None => {
                let _ = call(FdCall::SetFlags(target, libc::FD_CLOEXEC));
            }
        }
    }
    // Mark everything else close-on-exec; std's own error-reporting pipe is close-on-exec
    // already, so it keeps working.
    let first = last + 1;
    if call(FdCall::CloexecFrom(first)).is_err() {
        // Older kernels: walk the descriptor table up to a bound (EBADF for the closed ones).
        for fd in first..4096 {
            let _ = call(FdCall::SetFlags(fd, libc::FD_CLOEXEC));
        }
    }
    Ok(())
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

    #[test]
    fn unshare_tells_one_thread_from_several() {
        // The test harness runs tests on threads of their own, and one more is parked here:
        // `unshare(CLONE_THREAD)` must refuse, and the count must come from /proc. (The
        // single-threaded answer is what every fork-mode run in tests/ depends on.)
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let parked = std::thread::spawn(move || rx.recv());
        // EINVAL; EPERM where a seccomp filter refuses `unshare` altogether.
        let refused = nix::sched::unshare(nix::sched::CloneFlags::CLONE_THREAD);
        assert!(refused.is_err(), "{refused:?}");
        assert!(super::thread_count().expect("counted") >= 2);
        drop(tx);
        let _ = parked.join();
    }

    #[test]
    fn the_task_link_count_and_the_stat_field_agree() {
        // Both ways of counting, read while a thread of ours is parked, so that the count
        // cannot change in between (other tests may start threads: retried until stable).
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let parked = std::thread::spawn(move || rx.recv());
        for _ in 0..100 {
            let st = rustix::fs::stat("/proc/self/task").expect("stat /proc/self/task");
            let by_link = super::task_dir_threads(super::nlink(&st)).expect("a link count");
            let stat = std::fs::read("/proc/self/stat").expect("/proc/self/stat");
            let by_stat = super::stat_threads(&stat).expect("field 20");
            if by_link == by_stat {
                assert!(by_link >= 2, "this thread and the parked one: {by_link}");
                drop(tx);
                let _ = parked.join();
                return;
            }
        }
        panic!("the link count of /proc/self/task never matched /proc/self/stat");
    }

    #[test]
    fn task_link_counts_below_three_are_not_thread_counts() {
        assert_eq!(super::task_dir_threads(0), None);
        assert_eq!(super::task_dir_threads(2), None);
        assert_eq!(super::task_dir_threads(3), Some(1));
        assert_eq!(super::task_dir_threads(10), Some(8));
    }

    #[test]
    fn pids_convert_at_the_boundary() {
        use super::Pid;
        assert_eq!(Pid::new(0), None);
        assert_eq!(Pid::new(1 << 31), None);
        assert!(Pid::try_from(u32::MAX).is_err());
        assert_eq!(Pid::new(42).map(Pid::get), Some(42));
        assert_eq!(
            Pid::new(i32::MAX as u32).map(Pid::get),
            Some(i32::MAX as u32)
        );
        assert_eq!(Pid::new(42).unwrap().to_string(), "42");
        assert_eq!(super::getpid().get(), std::process::id());
    }

    #[test]
    fn rss_of_this_process_is_at_least_a_page() {
        let rss = crate::sys::rss_bytes(super::getpid()).expect("statm");
        assert!(rss >= rustix::param::page_size() as u64, "{rss}");
    }

    #[test]
    fn no_pid_zero() {
        // kill(0) would signal the whole process group: 0 is no `Pid`.
        assert!(super::Pid::try_from(0).is_err());
    }
}
