//! HTTP/1 and HTTP/2 on hyper-util's server, with a drain that answers every request that has
//! arrived or is arriving.
//!
//! # What the drain does
//!
//! Until the notice, a connection is served by hyper as usual. When it comes, each connection
//! is finished according to what it is doing:
//!
//! | the connection | what happens |
//! |---|---|
//! | a request is being read, handled or answered | it is served; the answer carries `connection: close` (HTTP/1), or the connection gets GOAWAY and finishes its streams (HTTP/2) |
//! | accepted, no byte received yet | it gets [`FIRST_REQUEST_GRACE`] for its first bytes: a request that comes is served as above; then it is closed |
//! | idle between two requests (keep-alive) | it gets [`IDLE_GRACE`] for its next request: one that comes is served as above; then it is closed |
//!
//! hyper's own graceful shutdown closes a connection at once when it has not *read* a request
//! yet. A request already in the socket, not yet read, is then lost: the client sees the
//! connection close without an answer. Under a load of one request per connection (as
//! nginx's default `proxy_pass`, health checkers and clients without a pool send), that
//! happens at every stop, rolling restart, scale-down and upgrade.
//!
//! How: an HTTP/1 answer produced after the notice gets `connection: close` (hyper then
//! closes the connection once it is written), whether its request came before the notice
//! or after. To tell an idle connection from one with a request arriving or in hand, the
//! drain asks the kernel, from the notice on and only then, nothing being recorded on the
//! request path: bytes received and not read yet (`FIONREAD`), and, for TCP, the bytes
//! received in all and whether the last data received came after the last data sent
//! (`TCP_INFO`). A connection with unread bytes, with data received after its last answer,
//! or that received bytes since the drain last looked, has a request arriving or in hand. A
//! connection seen otherwise for the whole grace (a connection that has received nothing,
//! [`FIRST_REQUEST_GRACE`]; one that has, [`IDLE_GRACE`]) is closed with hyper's graceful
//! shutdown, which closes an idle connection and lets one with a request in hand answer it
//! with `connection: close`. An HTTP/2 connection (known by its first request) gets hyper's
//! graceful shutdown at the notice: GOAWAY, and its streams finish.
//!
//! The kernel's clock ticks every few milliseconds: a client that sent the beginning of its
//! next request within the tick of the last answer, and then nothing for a whole grace, is
//! taken for idle and closed. On a Unix-domain socket, where the kernel keeps no such
//! record, a connection with nothing unread for [`FIRST_REQUEST_GRACE`] is closed.
//!
//! A pipelined HTTP/1 request behind one answered with `connection: close` is not answered;
//! a client that pipelines must be ready to send it again (RFC 9112, section 9.3.2).

use std::error::Error as StdError;
use std::future::poll_fn;
use std::io;
use std::os::fd::AsFd;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::listener::{Accept, Listener};
use crate::notice::Notice;
use crate::socket::{Seen, Socket};

/// The error of a connection, as hyper reports it.
pub type BoxError = Box<dyn StdError + Send + Sync>;

pub use crate::{FIRST_REQUEST_GRACE, IDLE_GRACE};

/// How a drained server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Drained {
    /// Connections accepted in all.
    pub connections: u64,
    /// Connections still open when the accept loop ended (the notice came and the queue was
    /// served): the ones the drain finished.
    pub draining: usize,
    /// Connections still open when the drain limit ran out ([`Server::drain_limit`]); they
    /// are closed when the runtime is dropped.
    pub cut: usize,
}

/// An HTTP/1 and HTTP/2 server (hyper-util's `auto` server) whose connections drain on the
/// worker's notice. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    builder: Arc<auto::Builder<TokioExecutor>>,
    first_request_grace: Duration,
    idle_grace: Duration,
    drain_limit: Option<Duration>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("first_request_grace", &self.first_request_grace)
            .field("idle_grace", &self.idle_grace)
            .field("drain_limit", &self.drain_limit)
            .finish_non_exhaustive()
    }
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

impl Server {
    /// A server with hyper-util's defaults for HTTP/1 and HTTP/2, the drain's default grace
    /// periods and no drain limit.
    pub fn new() -> Self {
        Server {
            builder: Arc::new(auto::Builder::new(TokioExecutor::new())),
            first_request_grace: FIRST_REQUEST_GRACE,
            idle_grace: IDLE_GRACE,
            drain_limit: None,
        }
    }

    /// hyper-util's connection builder, to set HTTP/1 and HTTP/2 options (`http1_only`,
    /// `http1().keep_alive(..)`, `http2().max_concurrent_streams(..)`, ...).
    pub fn builder(&mut self) -> &mut auto::Builder<TokioExecutor> {
        Arc::make_mut(&mut self.builder)
    }

    /// How long a connection that has sent nothing yet is given for its first request once
    /// the drain has begun (default [`FIRST_REQUEST_GRACE`]).
    pub fn first_request_grace(mut self, grace: Duration) -> Self {
        self.first_request_grace = grace;
        self
    }

    /// How long an idle keep-alive connection is given for its next request once the drain
    /// has begun (default [`IDLE_GRACE`]).
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }

    /// How long [`serve`](Server::serve) waits for the open connections once the accept loop
    /// has ended (default: until the last one is done). Set it below the master's
    /// `shutdown_grace`, so that the worker returns from `serve` (and exits 0) before the
    /// master's KILL.
    pub fn drain_limit(mut self, limit: Duration) -> Self {
        self.drain_limit = Some(limit);
        self
    }

    /// Accepts from `listener` and serves each connection on a task of its own with
    /// `service`, until the notice; then serves the listen queue, finishes every connection
    /// (see the [module](self) documentation) and returns.
    ///
    /// TCP connections get `TCP_NODELAY`. An `accept` error is logged at WARN (with a pause
    /// of 10 ms when descriptors or memory ran out) and the loop goes on.
    ///
    /// # Errors
    ///
    /// None today; the result leaves room for one.
    pub async fn serve<L, S, B>(&self, mut listener: Listener<L>, service: S) -> io::Result<Drained>
    where
        L: Accept,
        L::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        // Every connection task holds a receiver; `closed` resolves when the last is gone.
        let (open, _) = watch::channel(());
        let mut connections = 0u64;
        while let Some(accepted) = listener.accept().await {
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    log::warn!("accept: {e}");
                    if is_resource_error(&e) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    continue;
                }
            };
            L::configure(&stream);
            connections += 1;
            let guard = open.subscribe();
            let server = self.clone();
            let notice = listener.notice().clone();
            let service = service.clone();
            tokio::spawn(async move {
                if let Err(e) = server.serve_connection(stream, &notice, service).await {
                    log::debug!("connection: {e}");
                }
                drop(guard);
            });
        }
        drop(listener);
        let draining = open.receiver_count();
        let cut = match self.drain_limit {
            None => {
                open.closed().await;
                0
            }
            Some(limit) => match tokio::time::timeout(limit, open.closed()).await {
                Ok(()) => 0,
                Err(_) => {
                    let cut = open.receiver_count();
                    log::warn!("{cut} connections still open after {limit:?}; closing them");
                    cut
                }
            },
        };
        Ok(Drained {
            connections,
            draining,
            cut,
        })
    }

    /// Serves one connection until the client closes it, or until the drain has finished it
    /// (see the [module](self) documentation). For servers with an accept loop of their own;
    /// [`serve`](Server::serve) calls it for each connection.
    ///
    /// The drain reads the state of the connection's socket (`io.as_fd()`) from the kernel;
    /// a stream that wraps a socket (TLS) can lend it through a newtype that implements
    /// `AsFd`.
    ///
    /// # Errors
    ///
    /// hyper's error for the connection (a malformed request, an IO error).
    pub async fn serve_connection<I, S, B>(
        &self,
        io: I,
        notice: &Notice,
        service: S,
    ) -> Result<(), BoxError>
    where
        I: AsyncRead + AsyncWrite + AsFd + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let socket = Socket::of(&io);
        let http2 = Arc::new(AtomicBool::new(false));
        let io = TokioIo::new(io);
        let service = Closing {
            inner: service,
            shutdown: notice.shutdown(),
            http2: Arc::clone(&http2),
        };
        let mut conn = pin!(self.builder.serve_connection_with_upgrades(io, service));
        let requested = pin!(notice.requested());
        let mut drain = Drain::new(notice, requested, self.first_request_grace, self.idle_grace);
        poll_fn(|cx| {
            loop {
                if let Poll::Ready(done) = conn.as_mut().poll(cx) {
                    return Poll::Ready(done);
                }
                // The one `unsafe` of this file.
                #[allow(unsafe_code)]
                // SAFETY: `conn` owns the IO `socket` was taken from, and has not given it
                // up: it gives it up (an upgrade) or closes it only as it completes, and it
                // has not completed (it was just polled, pending).
                let seen = || unsafe { socket.seen() };
                if !drain.poll_finish(cx, &http2, seen) {
                    return Poll::Pending;
                }
                // hyper acts on it when polled next: it closes an idle HTTP/1 connection, or
                // sends GOAWAY on an HTTP/2 one.
                conn.as_mut().graceful_shutdown();
            }
        })
        .await
    }
}

/// Whether an accept error is a shortage (descriptors, memory) that a pause may relieve.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// The errno values `is_resource_error` names, from rustix (which takes them from the
/// platform's own headers).
mod libc_errno {
    use rustix::io::Errno;
    pub(super) const EMFILE: i32 = Errno::MFILE.raw_os_error();
    pub(super) const ENFILE: i32 = Errno::NFILE.raw_os_error();
    pub(super) const ENOBUFS: i32 = Errno::NOBUFS.raw_os_error();
    pub(super) const ENOMEM: i32 = Errno::NOMEM.raw_os_error();
}

/// One connection's drain: when to ask hyper for its graceful shutdown.
struct Drain<'a, F> {
    notice: &'a Notice,
    /// The notice's future, polled once per task waker (an atomic load otherwise).
    requested: Pin<&'a mut F>,
    registered: Option<Waker>,
    first_request_grace: Duration,
    idle_grace: Duration,
    /// Whether the notice came.
    draining: bool,
    /// The bytes received when the drain last looked (TCP).
    received: Option<u64>,
    /// Since the connection was last seen idle during the drain: the grace of its state.
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
    finished: bool,
}

impl<'a, F: Future<Output = ()>> Drain<'a, F> {
    fn new(
        notice: &'a Notice,
        requested: Pin<&'a mut F>,
        first_request_grace: Duration,
        idle_grace: Duration,
    ) -> Self {
        Drain {
            notice,
            requested,
            registered: None,
            first_request_grace,
            idle_grace,
            draining: false,
            received: None,
            grace: None,
            finished: false,
        }
    }

    /// Whether the connection is to be finished now (true once). `seen` reads its state
    /// from the kernel; it is called only once the notice has come.
    #[inline]
    fn poll_finish(
        &mut self,
        cx: &mut Context<'_>,
        http2: &AtomicBool,
        seen: impl FnOnce() -> Seen,
    ) -> bool {
        if self.finished {
            return false;
        }
        if !self.draining {
            if !self.notice.is_requested() {
                // Waiting costs one registration per task waker, not one per poll.
                if self
                    .registered
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    return false;
                }
                self.registered = Some(cx.waker().clone());
                if self.requested.as_mut().poll(cx).is_pending() {
                    return false;
                }
            }
            self.draining = true;
        }
        self.poll_drained(cx, http2, seen)
    }

    /// The drain's decision, once the notice has come: out of the serving path.
    #[cold]
    #[inline(never)]
    fn poll_drained(
        &mut self,
        cx: &mut Context<'_>,
        http2: &AtomicBool,
        seen: impl FnOnce() -> Seen,
    ) -> bool {
        if http2.load(Ordering::Relaxed) {
            self.finished = true;
            return true;
        }
        let seen = seen();
        let moved = self.received.is_some() && seen.received != self.received;
        self.received = seen.received;
        if seen.unread > 0 || seen.received_last || moved {
            // A request arriving or in hand: its answer carries `connection: close`. When
            // the connection is idle again, its grace starts anew.
            self.grace = None;
        } else {
            let grace = if seen.received.is_some_and(|n| n > 0) {
                self.idle_grace
            } else {
                self.first_request_grace
            };
            let timer = self
                .grace
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(grace)));
            self.finished = timer.as_mut().poll(cx).is_ready();
        }
        self.finished
    }
}

/// The service of one connection: an HTTP/1 answer produced after the notice gets
/// `connection: close`; an HTTP/2 request marks the connection as HTTP/2.
struct Closing<S> {
    inner: S,
    shutdown: prefork::Shutdown,
    http2: Arc<AtomicBool>,
}

impl<S, B> Service<Request<Incoming>> for Closing<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = ClosingFuture<S::Future>;

    #[inline]
    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() < hyper::Version::HTTP_2;
        if !http1 && !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::Relaxed);
        }
        ClosingFuture {
            inner: self.inner.call(req),
            shutdown: http1.then_some(self.shutdown),
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of [`Closing`].
    struct ClosingFuture<F> {
        #[pin]
        inner: F,
        // `Some` for an HTTP/1 request.
        shutdown: Option<prefork::Shutdown>,
    }
}

impl<F, B, E> Future for ClosingFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut answer = std::task::ready!(this.inner.poll(cx));
        let closing = this.shutdown.is_some_and(|s| s.is_requested());
        if let (Ok(response), true) = (&mut answer, closing) {
            response.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
        }
        Poll::Ready(answer)
    }
}
