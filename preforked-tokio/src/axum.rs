//! axum routers on the draining server, and the draining listener as an
//! `axum::serve::Listener`.
//!
//! [`serve`] is the way that loses nothing: the router runs on [`Server`], whose drain
//! finishes each connection by what it is doing (see [`crate::http`]).
//!
//! `axum::serve` itself also takes a [`Listener`]: its accept loop then serves the listen
//! queue before it ends, and [`Listener::drained`] is the signal for
//! `with_graceful_shutdown`:
//!
//! ```ignore
//! let drained = listener.drained();
//! axum::serve(listener, router).with_graceful_shutdown(drained).await?;
//! ```
//!
//! axum's graceful shutdown is hyper's: it closes at once a connection whose request it has
//! not read yet. The signal therefore waits, after the accept loop ended, until every
//! connection the listener handed out has read its first bytes (or
//! [`FIRST_REQUEST_GRACE`](crate::FIRST_REQUEST_GRACE) passed), so that the connections
//! taken from the queue are answered. What this path does not do: an idle keep-alive
//! connection is closed at the signal, without [`IDLE_GRACE`](crate::IDLE_GRACE) (a request
//! crossing the close is one a client may retry on a reused connection, RFC 9112 section
//! 9.3.1), and an answer in flight gets `connection: close` only from hyper's own shutdown.
//! [`serve`] does both.

use std::io;
use std::time::Duration;

use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http::{Drained, Server};
use crate::listener::{Accept, FirstRead, Listener};

/// Serves `router` on `listener` with [`Server::new`]'s settings until the notice, then
/// drains: see [`Server::serve`].
///
/// # Errors
///
/// As [`Server::serve`].
pub async fn serve<L>(listener: Listener<L>, router: axum::Router) -> io::Result<Drained>
where
    L: Accept,
    L::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Server::new().serve(listener, service(router)).await
}

/// `router` as the service [`Server::serve`] takes, for a server with settings of its own.
pub fn service(router: axum::Router) -> TowerToHyperService<axum::Router> {
    TowerToHyperService::new(router)
}

impl<L> axum::serve::Listener for Listener<L>
where
    L: Accept + Send + Sync + 'static,
    L::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    L::Addr: Send,
{
    type Io = FirstRead<L::Stream>;
    type Addr = L::Addr;

    /// The next connection; once the listener is drained, never (axum's loop ends on its
    /// graceful-shutdown signal, [`Listener::drained`]).
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match Listener::accept(self).await {
                Some(Ok((stream, addr))) => {
                    L::configure(&stream);
                    return (self.first_read(stream), addr);
                }
                Some(Err(e)) => {
                    log::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Listener::local_addr(self)
    }
}
