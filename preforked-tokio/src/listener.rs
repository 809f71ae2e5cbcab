//! An accept loop that ends on the notice, after serving what the kernel already queued.

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::pin;
use std::task::{Context, Poll};

use rustix::net::SocketFlags;
use tokio::sync::watch;

use crate::Notice;

/// How many connections a draining [`Listener`] still hands out from the listen queue at
/// most: under a load that never lets the queue empty (a shared socket during a rolling
/// restart, where the new workers keep serving), the drain ends anyway.
pub const DRAIN_ACCEPT_LIMIT: usize = 4096;

/// A listening socket [`Listener`] can drain: tokio's TCP and Unix listeners.
pub trait Accept: AsFd {
    /// A connection.
    type Stream;
    /// The peer's address.
    type Addr;

    /// Waits for a connection through the reactor (`accept4(2)` when the socket is ready).
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::Addr)>>;

    /// Takes a connection the kernel queued, now: `accept4(2)` whatever the reactor last saw,
    /// so that a connection queued since its last event is not taken for an empty queue.
    /// `Ok(None)` when the queue is empty.
    fn accept_queued(&self) -> io::Result<Option<(Self::Stream, Self::Addr)>>;

    /// The address the socket is bound to.
    fn local_addr(&self) -> io::Result<Self::Addr>;

    /// Prepares a connection before it is served: `TCP_NODELAY` for TCP (an HTTP answer
    /// must not wait for Nagle's algorithm), nothing for Unix-domain sockets.
    fn configure(stream: &Self::Stream) {
        let _ = stream;
    }
}

/// `accept4(2)` with `SOCK_NONBLOCK | SOCK_CLOEXEC`; `None` on `EAGAIN`, retried on `EINTR`.
fn accept_nonblocking(listener: impl AsFd) -> io::Result<Option<OwnedFd>> {
    loop {
        match rustix::net::accept_with(&listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
            Ok(fd) => return Ok(Some(fd)),
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::Addr)>> {
        tokio::net::TcpListener::poll_accept(self, cx)
    }

    fn accept_queued(&self) -> io::Result<Option<(Self::Stream, Self::Addr)>> {
        let Some(fd) = accept_nonblocking(self)? else {
            return Ok(None);
        };
        let stream = std::net::TcpStream::from(fd);
        let addr = stream.peer_addr()?;
        Ok(Some((tokio::net::TcpStream::from_std(stream)?, addr)))
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        tokio::net::TcpListener::local_addr(self)
    }

    fn configure(stream: &Self::Stream) {
        let _ = stream.set_nodelay(true);
    }
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::Addr)>> {
        tokio::net::UnixListener::poll_accept(self, cx)
    }

    fn accept_queued(&self) -> io::Result<Option<(Self::Stream, Self::Addr)>> {
        let Some(fd) = accept_nonblocking(self)? else {
            return Ok(None);
        };
        let stream = tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))?;
        let addr = stream.peer_addr()?;
        Ok(Some((stream, addr)))
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        tokio::net::UnixListener::local_addr(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Serving,
    /// The notice came: this many more queued connections may be handed out.
    Draining(usize),
    Done,
}

/// A listener whose accept loop ends on the worker's [`Notice`], after the connections
/// already queued.
///
/// Until the notice, [`accept`](Listener::accept) waits for connections as tokio's listener
/// does. Once the notice has come, it hands out the connections still in the listen queue,
/// each taken with its own `accept4(2)` (not from the reactor's last readiness event, which
/// may predate them), up to [`DRAIN_ACCEPT_LIMIT`], and then returns `None` for good. A
/// connection in the listen queue has completed its handshake: its client believes it
/// connected, and is sending its request. Whoever closes the last descriptor of the socket
/// resets every connection left in the queue; with one `SO_REUSEPORT` socket per worker, no
/// other worker would ever take them.
///
/// Every worker that shares a listener should accept through its own `Listener`.
#[derive(Debug)]
pub struct Listener<L: Accept = tokio::net::TcpListener> {
    inner: L,
    notice: Notice,
    state: State,
    drained: watch::Sender<bool>,
}

impl Listener<tokio::net::TcpListener> {
    /// Takes the worker's std listener (as `serve` is handed it) into the current runtime:
    /// non-blocking, registered with the reactor.
    ///
    /// # Errors
    ///
    /// When the listener cannot be made non-blocking or registered (no runtime with IO).
    pub fn tcp(listener: std::net::TcpListener, notice: Notice) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Self::new(
            tokio::net::TcpListener::from_std(listener)?,
            notice,
        ))
    }
}

impl Listener<tokio::net::UnixListener> {
    /// Takes a std Unix-domain listener into the current runtime, as [`Listener::tcp`].
    ///
    /// # Errors
    ///
    /// As [`Listener::tcp`].
    pub fn unix(listener: std::os::unix::net::UnixListener, notice: Notice) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Self::new(
            tokio::net::UnixListener::from_std(listener)?,
            notice,
        ))
    }
}

impl<L: Accept> Listener<L> {
    /// A draining listener over `inner`, which must be registered with the current runtime
    /// (as tokio's listeners are).
    pub fn new(inner: L, notice: Notice) -> Self {
        Listener {
            inner,
            notice,
            state: State::Serving,
            drained: watch::Sender::new(false),
        }
    }

    /// The notice this listener ends on.
    pub fn notice(&self) -> &Notice {
        &self.notice
    }

    /// The socket.
    pub fn get_ref(&self) -> &L {
        &self.inner
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<L::Addr> {
        self.inner.local_addr()
    }

    /// Whether the accept loop has ended: the notice came and the queue was served.
    pub fn is_drained(&self) -> bool {
        self.state == State::Done
    }

    /// Resolves once the accept loop has ended (or the listener is dropped): the signal
    /// for `axum::serve(..).with_graceful_shutdown`, taken before the listener is moved.
    pub fn drained(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut done = self.drained.subscribe();
        async move {
            let _ = done.wait_for(|&d| d).await;
        }
    }

    /// The next connection: `None` once the notice came and the connections queued by then
    /// were handed out. An error of one `accept` (a connection reset while queued, no
    /// descriptors left) is returned as `Some(Err(_))`; the loop goes on after it.
    pub async fn accept(&mut self) -> Option<io::Result<(L::Stream, L::Addr)>> {
        loop {
            match self.state {
                State::Done => return None,
                State::Serving if self.notice.is_requested() => {
                    self.state = State::Draining(DRAIN_ACCEPT_LIMIT);
                }
                State::Serving => {
                    let accepted = {
                        let inner = &self.inner;
                        let mut requested = pin!(self.notice.requested());
                        poll_fn(|cx| {
                            if let Poll::Ready(accepted) = inner.poll_accept(cx) {
                                return Poll::Ready(Some(accepted));
                            }
                            requested.as_mut().poll(cx).map(|()| None)
                        })
                        .await
                    };
                    match accepted {
                        Some(accepted) => return Some(accepted),
                        None => self.state = State::Draining(DRAIN_ACCEPT_LIMIT),
                    }
                }
                State::Draining(0) => self.finish(),
                State::Draining(left) => {
                    self.state = State::Draining(left - 1);
                    match self.inner.accept_queued() {
                        Ok(Some(accepted)) => return Some(Ok(accepted)),
                        Ok(None) => self.finish(),
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
        }
    }

    fn finish(&mut self) {
        self.state = State::Done;
        self.drained.send_replace(true);
    }
}
