//! Starting a new master for a binary upgrade: `fork` + `execve` with the listening sockets
//! on fds 3, 4, … in the systemd socket-activation form and `LISTEN_PID` set to the new
//! process's own pid, written between `fork` and `execve`.
//!
//! The master may run other threads (exec mode), so the child makes only async-signal-safe
//! calls: every string and pointer array is built before the fork, and the child only writes
//! its pid's digits into a buffer reserved for them, moves descriptors and calls `execve`. An
//! `execve` that fails is reported to the parent through a close-on-exec pipe (as std's
//! `Command` does), so "not executable" is an error at once, not a mysterious exit.

#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// The room reserved for `LISTEN_PID`'s digits (a pid has at most 10).
const PID_DIGITS: usize = 10;

/// A program to start with inherited sockets.
pub(crate) struct Handover {
    path: CString,
    /// `argv` strings and the NULL-terminated pointer array into them.
    _args: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    /// `envp` strings; the `LISTEN_PID=` one has room for the digits.
    env: Vec<Vec<u8>>,
    /// Index in `env` of `LISTEN_PID=`.
    listen_pid: usize,
}

impl Handover {
    /// `path` with `args` (`argv[0]` included) and `env` (every `KEY=value`; the caller
    /// leaves out `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`), plus `LISTEN_FDS=fds`,
    /// `LISTEN_FDNAMES=names` and `LISTEN_PID` as the new process.
    pub(crate) fn new(
        path: &OsStr,
        args: &[OsString],
        env: &[(OsString, OsString)],
        extra: &[(&str, String)],
        fds: usize,
        names: &[String],
    ) -> io::Result<Handover> {
        let c = |b: &[u8]| {
            CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"))
        };
        let path = c(path.as_bytes())?;
        let args: Vec<CString> = args
            .iter()
            .map(|a| c(a.as_bytes()))
            .collect::<io::Result<_>>()?;
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envs: Vec<Vec<u8>> = Vec::with_capacity(env.len() + extra.len() + 3);
        for (k, v) in env {
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            c(&e)?;
            e.push(0);
            envs.push(e);
        }
        for (k, v) in extra {
            envs.push(format!("{k}={v}\0").into_bytes());
        }
        envs.push(format!("LISTEN_FDS={fds}\0").into_bytes());
        if !names.is_empty() {
            envs.push(format!("LISTEN_FDNAMES={}\0", names.join(":")).into_bytes());
        }
        let mut pid = b"LISTEN_PID=".to_vec();
        pid.extend_from_slice(&[0; PID_DIGITS + 1]);
        envs.push(pid);
        let listen_pid = envs.len() - 1;
        Ok(Handover {
            path,
            _args: args,
            argv,
            env: envs,
            listen_pid,
        })
    }

    /// Forks and execs the program with `sockets` on fds 3.. and `extra_fds` right after them;
    /// every other descriptor above 2 is closed by `execve` (marked close-on-exec). Returns
    /// the new process's pid once `execve` succeeded, or the error it failed with (the child
    /// is then reaped).
    pub(crate) fn spawn(
        &mut self,
        sockets: &[BorrowedFd<'_>],
        extra_fds: &[BorrowedFd<'_>],
        mask: &super::SigSet,
    ) -> io::Result<super::Pid> {
        let raw: Vec<RawFd> = sockets
            .iter()
            .map(|s| s.as_raw_fd())
            .chain(extra_fds.iter().map(|fd| fd.as_raw_fd()))
            .collect();
        // Every source moved above the targets first, so that dup2 onto 3.. never clobbers a
        // source still to be moved.
        let first_free = 3 + raw.len() as RawFd;
        let (err_read, err_write) = super::pipe()?;
        let pid_slot = self.env[self.listen_pid].as_mut_ptr();
        let mut envp: Vec<*const libc::c_char> =
            self.env.iter().map(|e| e.as_ptr().cast()).collect();
        envp.push(std::ptr::null());
        let mut moved = raw.clone();
        let mask: libc::sigset_t = *mask.as_raw();
        // SAFETY: the fork and the child's side of it are one contract. The master may run
        // other threads, so the child makes only async-signal-safe calls (pthread_sigmask,
        // fcntl, dup2, getpid, readlink, close_range, execve, write, _exit) on memory prepared before
        // the fork, every pointer referring to memory of this (copied) process, and ends in
        // execve or _exit, never returning into Rust code. The parent only reads the result.
        let pid = unsafe {
            let pid = libc::fork();
            if pid == 0 {
                let fail = |step: i32| -> ! {
                    let errno = *libc::__errno_location();
                    let report = [step, errno];
                    libc::write(err_write.as_raw_fd(), report.as_ptr().cast(), 8);
                    libc::_exit(127)
                };
                libc::pthread_sigmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut());
                for fd in moved.iter_mut() {
                    if *fd < first_free {
                        let to = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, first_free);
                        if to == -1 {
                            fail(1);
                        }
                        *fd = to;
                    }
                }
                for (i, &fd) in moved.iter().enumerate() {
                    if libc::dup2(fd, 3 + i as RawFd) == -1 {
                        fail(2);
                    }
                }
                const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
                let r = libc::syscall(
                    libc::SYS_close_range,
                    first_free as libc::c_uint,
                    libc::c_uint::MAX,
                    CLOSE_RANGE_CLOEXEC,
                );
                if r == -1 {
                    for fd in first_free..4096 {
                        if fd != err_write.as_raw_fd() {
                            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                        }
                    }
                }
                // close_range marked the error pipe close-on-exec too, as it must be.
                // Its pid, or where a sandbox refuses getpid (which then returns the
                // negated errno), the digits /proc/self links to; neither: the step fails.
                let mut digits = [0u8; 20];
                let own = libc::getpid();
                let digits: &[u8] = if own > 0 {
                    super::decimal(own as u64, &mut digits)
                } else {
                    let n = libc::readlink(
                        c"/proc/self".as_ptr(),
                        digits.as_mut_ptr().cast(),
                        digits.len(),
                    );
                    if n <= 0 || n as usize >= digits.len() {
                        *libc::__errno_location() = -own;
                        fail(4);
                    }
                    &digits[..n as usize]
                };
                let at = pid_slot.add(b"LISTEN_PID=".len());
                for (i, &d) in digits.iter().enumerate() {
                    *at.add(i) = d;
                }
                *at.add(digits.len()) = 0;
                libc::execve(self.path.as_ptr(), self.argv.as_ptr(), envp.as_ptr());
                fail(3)
            }
            pid
        };
        if pid == -1 {
            return Err(io::Error::last_os_error());
        }
        // Positive: the parent's side of a fork that succeeded.
        let pid = super::Pid::try_from(pid as u32)?;
        drop(err_write);
        let mut report = [0u8; 8];
        let n = loop {
            match rustix::io::read(&err_read, &mut report) {
                Err(rustix::io::Errno::INTR) => continue,
                r => break r.unwrap_or(0),
            }
        };
        if n == 0 {
            return Ok(pid);
        }
        // The child reported its failure and exits: reaped here (a refused wait4 leaves it a
        // zombie until the master exits).
        let _ = super::wait_blocking(pid);
        let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
        Err(io::Error::from_raw_os_error(errno))
    }
}
