//! An accept loop that ends on the notice, after serving what the kernel already queued.

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use rustix::net::SocketFlags;
use tokio::sync::{Notify, watch};

use crate::Notice;

/// How many connections a draining [`Listener`] still hands out from the listen queue at
/// most: under a load that never lets the queue empty (a shared socket during a rolling
/// restart, where the new workers keep serving), the drain ends anyway.
pub const DRAIN_ACCEPT_LIMIT: usize = 4096;

/// A listening socket [`Listener`] can drain: tokio's TCP and Unix listeners.
pub trait Accept: AsFd {
    /// A connection (its socket, for the drain to read the connection's state from the
    /// kernel).
    type Stream: AsFd;
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
    shared: Arc<Shared>,
}

/// What [`Listener::drained`] waits on.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Whether the accept loop has ended.
    drained: watch::Sender<bool>,
    /// Connections handed out through [`FirstRead`] that have not read a byte yet.
    unread: AtomicUsize,
    /// Woken when `unread` falls to 0.
    all_read: Notify,
}

impl Shared {
    /// One tracked connection has read its first bytes, or is gone.
    fn read_or_gone(&self) {
        if self.unread.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_read.notify_waiters();
        }
    }
}

/// A connection handed out by a [`Listener`] that tells it when it first reads: until then
/// its request may be waiting, unread, in the socket, and a server that shuts down
/// gracefully (axum's, hyper's) would close it without an answer.
#[derive(Debug)]
pub struct FirstRead<S> {
    io: S,
    shared: Option<Arc<Shared>>,
}

impl<S> FirstRead<S> {
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn new(io: S, shared: &Arc<Shared>) -> Self {
        shared.unread.fetch_add(1, Ordering::AcqRel);
        FirstRead {
            io,
            shared: Some(Arc::clone(shared)),
        }
    }

    /// The connection.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The connection, mutably (to set socket options).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }
}

impl<S> Drop for FirstRead<S> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.read_or_gone();
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstRead<S> {
    #[inline]
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if self.shared.is_some() && buf.filled().len() > before {
            if let Some(shared) = self.shared.take() {
                shared.read_or_gone();
            }
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstRead<S> {
    #[inline]
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    #[inline]
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
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
            shared: Arc::new(Shared {
                drained: watch::Sender::new(false),
                unread: AtomicUsize::new(0),
                all_read: Notify::new(),
            }),
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

    /// Resolves once the accept loop has ended (or the listener is dropped), and every
    /// connection it handed out as a [`FirstRead`] (through `axum::serve::Listener`) has
    /// read its first bytes, is gone, or had [`FIRST_REQUEST_GRACE`](crate::FIRST_REQUEST_GRACE)
    /// since the end of the accept loop: the signal for
    /// `axum::serve(..).with_graceful_shutdown`, taken before the listener is moved.
    ///
    /// A graceful shutdown of axum (hyper's) closes a connection whose request it has not
    /// read yet; waiting for the first reads keeps it from closing the connections taken
    /// from the queue at the notice, whose requests are in their sockets.
    pub fn drained(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        let mut done = shared.drained.subscribe();
        async move {
            let _ = done.wait_for(|&d| d).await;
            let deadline = tokio::time::Instant::now() + crate::FIRST_REQUEST_GRACE;
            loop {
                let notified = shared.all_read.notified();
                let mut notified = pin!(notified);
                notified.as_mut().enable();
                if shared.unread.load(Ordering::Acquire) == 0 {
                    return;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return;
                }
            }
        }
    }

    /// `stream` as a [`FirstRead`] of this listener, for [`drained`](Listener::drained).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn first_read<S>(&self, stream: S) -> FirstRead<S> {
        FirstRead::new(stream, &self.shared)
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
        self.shared.drained.send_replace(true);
    }
}
