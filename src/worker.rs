//! What a worker sees: its identity ([`Worker`]) and the master's request to stop
//! ([`Shutdown`]), with an accept loop that ends on it ([`Incoming`]).

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::sys::notice;

/// How many connections a draining [`Incoming`] still hands out from the accept queue at
/// most (the listen backlog): under a load that never lets the queue empty, the drain ends
/// anyway.
const DRAIN_ACCEPT_LIMIT: usize = 4096;

/// A worker's identity, handed to `serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worker {
    pub(crate) id: usize,
    pub(crate) pid: crate::sys::Pid,
    /// 0 when the master is outside this process's pid namespace.
    pub(crate) master_pid: u32,
}

impl Worker {
    /// The worker's slot, `0..n`; a respawned worker keeps the slot of the one it replaces.
    pub fn id(&self) -> usize {
        self.id
    }

    /// This worker's process id.
    pub fn pid(&self) -> u32 {
        self.pid.get()
    }

    /// The master's process id.
    pub fn master_pid(&self) -> u32 {
        self.master_pid
    }

    /// Tells the master that this worker is alive, for [`crate::Prefork::worker_timeout`]:
    /// a worker whose latest heartbeat is older than the timeout is killed as stuck and
    /// replaced. Call it from the loop that must not hang (once per request, or per turn of
    /// an event loop); a worker is judged only from its first call on.
    ///
    /// It costs one clock reading from the vDSO and one atomic store into shared memory, no
    /// system call. Without a `worker_timeout` (or under a master that is not this crate's)
    /// it does nothing.
    #[inline]
    pub fn heartbeat(&self) {
        crate::sys::heartbeat::beat(self.pid);
    }

    /// Reports a fatal start-up failure: logs `reason` and exits with [`crate::exit::EXIT_FATAL`],
    /// so the master stops everything instead of respawning this worker.
    pub fn exit_fatal(&self, reason: impl std::fmt::Display) -> ! {
        eprintln!("worker {} (pid {}): fatal: {reason}", self.id, self.pid);
        std::process::exit(crate::exit::EXIT_FATAL)
    }

    /// The master's request that this worker stop, for a graceful drain.
    ///
    /// The master asks a worker to stop with `SIGTERM` (a graceful stop, its slot's turn in
    /// a rolling restart, a scale-down with TTOU). By default that ends the worker at once,
    /// with every connection it holds. The first call of this method installs a handler for
    /// `SIGTERM` and `SIGINT` in this worker process instead: the signal then only sets the
    /// notice, and the worker drains (stops accepting, finishes what it accepted, closes idle
    /// keep-alive connections) and returns from `serve` before the master's grace period
    /// ends, after which the master sends `SIGKILL`.
    ///
    /// Call it at the start of `serve`, before accepting.
    ///
    /// ```no_run
    /// # fn demo(listener: std::net::TcpListener, worker: prefork::Worker) -> std::io::Result<()> {
    /// use std::io::Write;
    /// let shutdown = worker.shutdown();
    /// for stream in shutdown.incoming(&listener) {
    ///     // Ends once the master asked this worker to stop and the queue is empty.
    ///     writeln!(stream?, "hello from worker {}", worker.id())?;
    /// }
    /// Ok(())
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// On the first call in a process, if no file descriptor is left for the notice's pipe
    /// (the process is at its `RLIMIT_NOFILE`).
    pub fn shutdown(&self) -> Shutdown {
        Shutdown {
            fd: notice::install(),
        }
    }
}

/// The master's request that a worker stop: see [`Worker::shutdown`].
///
/// Cheap to copy and to share between threads. Its descriptor ([`AsFd`]) becomes readable
/// when the stop is requested and stays readable, so it can sit in any `poll`/`epoll` set or
/// in an async runtime's reactor. The descriptor is opened once per worker process, by the
/// first call of [`Worker::shutdown`], and stays open, referring to the same pipe, for the
/// rest of the process's life:
/// registering it with a reactor (which requires that it outlive the registration) is sound.
/// With tokio:
///
/// ```ignore
/// // tokio 1.54 or newer with the `net` feature, inside the worker's runtime:
/// // SAFETY: the notice's descriptor stays open, and the same, for the whole process.
/// let notice = unsafe { AsyncFd::register_with_interest(worker.shutdown(), Interest::READABLE) }?;
/// let _ = notice.readable().await?; // the drain begins
/// ```
///
/// (`demos/examples/tokio.rs` in the repository shows it in a whole server.)
#[derive(Debug, Clone, Copy)]
pub struct Shutdown {
    fd: BorrowedFd<'static>,
}

impl Shutdown {
    /// Whether the stop was requested. An atomic load: no system call. Inlined into the
    /// caller, so that a server that asks per request pays the load and no call.
    #[inline]
    pub fn is_requested(&self) -> bool {
        notice::requested()
    }

    /// Blocks until the stop is requested.
    pub fn wait(&self) {
        while !self.is_requested() {
            let _ = self.poll_with(None, None);
        }
    }

    /// Blocks until the stop is requested or `timeout` passed; returns whether it was
    /// requested.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_requested() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = self.poll_with(None, Some(left));
        }
        self.is_requested()
    }

    /// Blocks until `fd` is readable (`Ok(true)`) or the stop is requested (`Ok(false)`):
    /// for waiting on an idle keep-alive connection without missing the drain.
    pub fn readable(&self, fd: impl AsFd) -> io::Result<bool> {
        loop {
            if self.is_requested() {
                return Ok(false);
            }
            if self.poll_with(Some(fd.as_fd()), None)? {
                return Ok(true);
            }
        }
    }

    /// The connections of `listener` (a [`TcpListener`], a [`UnixListener`] or a
    /// [`crate::Listener`]) until the stop is requested; then the ones already queued, then
    /// the end. See [`Incoming`].
    pub fn incoming<'a, L: Accept>(&self, listener: &'a L) -> Incoming<'a, L> {
        Incoming {
            listener,
            shutdown: *self,
            state: State::Fresh,
        }
    }

    /// `poll(2)` on the notice and `other`; returns whether `other` is readable.
    fn poll_with(
        &self,
        other: Option<BorrowedFd<'_>>,
        timeout: Option<Duration>,
    ) -> io::Result<bool> {
        let readable = PollFlags::IN | PollFlags::ERR | PollFlags::HUP;
        let mut fds = Vec::with_capacity(2);
        fds.push(PollFd::from_borrowed_fd(self.fd, PollFlags::IN));
        if let Some(fd) = other {
            fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
        }
        let timeout = timeout.map(|d| Timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) => Ok(fds.get(1).is_some_and(|f| f.revents().intersects(readable))),
            Err(rustix::io::Errno::INTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsFd for Shutdown {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd
    }
}

impl AsRawFd for Shutdown {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The listener is not yet non-blocking.
    Fresh,
    Serving,
    /// The stop was requested: this many more queued connections may be handed out.
    Draining(usize),
    Done,
}

/// An iterator over a listener's connections that ends when the worker is asked to stop,
/// from [`Shutdown::incoming`].
///
/// std's blocking `accept` cannot be interrupted, so this waits in `poll(2)` on the listener
/// and the shutdown notice together. When the notice arrives it hands out the connections
/// already in the accept queue (the kernel accepted them; with a per-slot `SO_REUSEPORT`
/// socket nobody else may take them), then ends.
///
/// The first call puts the listener in non-blocking mode (several workers polling one shared
/// listener race for each connection; the losers must not block in `accept`). Every worker
/// sharing the listener should accept through `Incoming`, or handle `WouldBlock` itself. The
/// streams it yields are blocking, as std's `accept` makes them.
///
/// An error of one `accept` (a connection reset while queued, no descriptors left) is
/// yielded as `Some(Err(_))`; the iteration goes on after it.
#[derive(Debug)]
pub struct Incoming<'a, L: Accept = TcpListener> {
    listener: &'a L,
    shutdown: Shutdown,
    state: State,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for std::net::TcpListener {}
    impl Sealed for std::os::unix::net::UnixListener {}
    impl Sealed for crate::listener::Listener {}
}

/// A listening socket [`Shutdown::incoming`] accepts on: [`TcpListener`], [`UnixListener`]
/// or [`crate::Listener`]. Sealed: the crate implements it for those three only.
pub trait Accept: sealed::Sealed + AsFd + std::fmt::Debug {
    /// What `accept` yields: [`TcpStream`], [`UnixStream`] or [`crate::Stream`].
    type Stream;
    /// One `accept`, as the type's own method, without the peer's address.
    fn accept_one(&self) -> io::Result<Self::Stream>;
    /// As the type's own `set_nonblocking`.
    fn set_nonblocking_mode(&self, on: bool) -> io::Result<()>;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    fn accept_one(&self) -> io::Result<TcpStream> {
        self.accept().map(|(s, _)| s)
    }
    fn set_nonblocking_mode(&self, on: bool) -> io::Result<()> {
        self.set_nonblocking(on)
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    fn accept_one(&self) -> io::Result<UnixStream> {
        self.accept().map(|(s, _)| s)
    }
    fn set_nonblocking_mode(&self, on: bool) -> io::Result<()> {
        self.set_nonblocking(on)
    }
}

impl Accept for crate::listener::Listener {
    type Stream = crate::listener::Stream;
    fn accept_one(&self) -> io::Result<crate::listener::Stream> {
        self.accept()
    }
    fn set_nonblocking_mode(&self, on: bool) -> io::Result<()> {
        self.set_nonblocking(on)
    }
}

impl<L: Accept> Iterator for Incoming<'_, L> {
    type Item = io::Result<L::Stream>;

    fn next(&mut self) -> Option<io::Result<L::Stream>> {
        loop {
            match self.state {
                State::Done => return None,
                State::Fresh => {
                    if let Err(e) = self.listener.set_nonblocking_mode(true) {
                        self.state = State::Done;
                        return Some(Err(e));
                    }
                    self.state = State::Serving;
                }
                State::Serving if self.shutdown.is_requested() => {
                    self.state = State::Draining(DRAIN_ACCEPT_LIMIT);
                }
                State::Draining(0) => self.state = State::Done,
                State::Serving | State::Draining(_) => match self.listener.accept_one() {
                    Ok(stream) => {
                        if let State::Draining(left) = &mut self.state {
                            *left -= 1;
                        }
                        return Some(Ok(stream));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if matches!(self.state, State::Draining(_)) {
                            self.state = State::Done;
                        } else if let Err(e) =
                            self.shutdown.poll_with(Some(self.listener.as_fd()), None)
                        {
                            return Some(Err(e));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Some(Err(e)),
                },
            }
        }
    }
}
