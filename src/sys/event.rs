//! Waiting and pipes: the master's epoll instance, close-on-exec pipes, `poll` on one
//! descriptor, and the readiness pipe's records. All through rustix, with no `unsafe`.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::event::{Timespec, epoll};
use rustix::pipe::PipeFlags;

/// An epoll instance whose registrations carry a `u64` token.
pub(crate) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// `epoll_create1(EPOLL_CLOEXEC)`.
    pub(crate) fn new() -> io::Result<Epoll> {
        let fd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        Ok(Epoll { fd })
    }

    /// `epoll_ctl(EPOLL_CTL_ADD)`: registers `fd` for readability (level-triggered).
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let data = epoll::EventData::new_u64(token);
        epoll::add(&self.fd, fd, data, epoll::EventFlags::IN)?;
        Ok(())
    }

    /// `epoll_ctl(EPOLL_CTL_MOD)`: watches `fd` (registered with `token`) for readability, or
    /// for writability instead when `writable`.
    pub(crate) fn watch(&self, fd: BorrowedFd<'_>, token: u64, writable: bool) -> io::Result<()> {
        let data = epoll::EventData::new_u64(token);
        let flags = if writable {
            epoll::EventFlags::OUT
        } else {
            epoll::EventFlags::IN
        };
        epoll::modify(&self.fd, fd, data, flags)?;
        Ok(())
    }

    /// `epoll_ctl(EPOLL_CTL_DEL)`.
    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        epoll::delete(&self.fd, fd)?;
        Ok(())
    }

    /// `epoll_wait(2)`: waits for events, for at most `timeout` (forever when `None`), and
    /// appends the ready tokens; an interrupted wait (`EINTR`) returns none.
    pub(crate) fn wait(&self, timeout: Option<Duration>, tokens: &mut Vec<u64>) -> io::Result<()> {
        const MAX: usize = 64;
        let mut events = [const { MaybeUninit::<epoll::Event>::uninit() }; MAX];
        // Whole milliseconds, as epoll_wait takes them: rounded up so that a deadline 0.3 ms
        // away does not spin with a zero timeout, and capped at i32::MAX (larger ones would
        // need epoll_pwait2, Linux 5.11).
        let timeout = timeout.map(|d| {
            let ms = d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i64;
            Timespec {
                tv_sec: ms / 1000,
                tv_nsec: (ms % 1000) * 1_000_000,
            }
        });
        match epoll::wait(&self.fd, &mut events, timeout.as_ref()) {
            Ok((ready, _)) => {
                tokens.extend(ready.iter().map(|e| e.data.u64()));
                Ok(())
            }
            Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// `pipe2(O_CLOEXEC)`: `(read end, write end)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?)
}

/// `pipe2(O_CLOEXEC | O_NONBLOCK)`: `(read end, write end)`.
pub(crate) fn pipe_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(
        PipeFlags::CLOEXEC | PipeFlags::NONBLOCK,
    )?)
}

/// `poll(2)`: blocks until `fd` is readable or hung up (retried on `EINTR`).
pub(crate) fn wait_readable(fd: BorrowedFd<'_>) -> io::Result<()> {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    loop {
        match poll(&mut fds, None) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// `write(2)` of a pid to the readiness pipe: 4 bytes, native order, one atomic write (a
/// pipe write of at most `PIPE_BUF` bytes is never split or interleaved).
pub(crate) fn write_pid(fd: BorrowedFd<'_>, pid: super::Pid) -> io::Result<()> {
    let n = rustix::io::write(fd, &pid.get().to_ne_bytes())?;
    if n != 4 {
        return Err(io::Error::other("short write to the readiness pipe"));
    }
    Ok(())
}

/// `read(2)` of every pid the workers wrote to the readiness pipe (non-blocking), until it
/// is empty.
pub(crate) fn read_pids(fd: BorrowedFd<'_>, out: &mut Vec<u32>) -> io::Result<()> {
    let mut buf = [0u8; 256];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(0) | Err(rustix::io::Errno::AGAIN) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            // A pipe left readable would wake the loop again at once, for ever.
            Err(e) => return Err(e.into()),
            Ok(n) => out.extend(
                buf[..n - n % 4]
                    .chunks_exact(4)
                    .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])),
            ),
        }
    }
}

/// `fstat(2)`: whether descriptor number `fd` is an open pipe (FIFO). It need not be ours
/// (yet): a number that is not open is just not a pipe.
pub(crate) fn is_pipe(fd: RawFd) -> bool {
    check_pipe(fd).unwrap_or(false)
}

/// As [`is_pipe`], but where `fstat` fails on an open number (a sandbox refusing it) the error
/// comes back, named, rather than "not a pipe".
pub(crate) fn check_pipe(fd: RawFd) -> io::Result<bool> {
    match super::net::Unowned::new(fd) {
        Some(fd) => fd.is_fifo().map_err(|e| super::named("fstat", e)),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};
    use std::time::Duration;

    fn pid(n: u32) -> crate::sys::Pid {
        crate::sys::Pid::new(n).expect("a pid")
    }

    #[test]
    fn epoll_reports_the_readable_pipe_by_token() {
        let epoll = super::Epoll::new().unwrap();
        let (read, write) = super::pipe_nonblocking().unwrap();
        epoll.add(read.as_fd(), 7).unwrap();
        let mut tokens = Vec::new();
        epoll.wait(Some(Duration::ZERO), &mut tokens).unwrap();
        assert!(tokens.is_empty());
        super::write_pid(write.as_fd(), pid(42)).unwrap();
        super::write_pid(write.as_fd(), pid(43)).unwrap();
        epoll
            .wait(Some(Duration::from_micros(300)), &mut tokens)
            .unwrap();
        assert_eq!(tokens, [7]);
        let mut pids = Vec::new();
        super::read_pids(read.as_fd(), &mut pids).unwrap();
        assert_eq!(pids, [42, 43]);
        epoll.delete(read.as_fd()).unwrap();
        super::write_pid(write.as_fd(), pid(44)).unwrap();
        tokens.clear();
        epoll.wait(Some(Duration::ZERO), &mut tokens).unwrap();
        assert!(tokens.is_empty());
        drop(write);
        super::wait_readable(read.as_fd()).unwrap();
    }

    #[test]
    fn pipes_are_close_on_exec_and_recognised() {
        let (read, write) = super::pipe().unwrap();
        for fd in [&read, &write] {
            let flags = rustix::io::fcntl_getfd(fd).unwrap();
            assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        }
        assert!(super::is_pipe(read.as_raw_fd()));
        assert!(!super::is_pipe(-1));
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(!super::is_pipe(file.as_raw_fd()));
    }
}
