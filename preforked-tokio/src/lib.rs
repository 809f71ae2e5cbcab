//! tokio, hyper and axum workers for [`prefork`]: a drain that answers every connection the
//! kernel accepted.
//!
//! A prefork worker is asked to stop by its master (a graceful stop, its slot's turn in a
//! rolling restart, a scale-down, a binary upgrade's old generation). Stopping well takes
//! three things, and this crate ships each of them:
//!
//! 1. **The notice as a future**: [`Notice`] wraps the worker's [`prefork::Shutdown`] in the
//!    runtime's reactor; [`Notice::requested`] resolves when the master asks.
//! 2. **An accept loop that serves the queue**: [`Listener`] hands out connections until the
//!    notice, then the ones already in the listen queue (the kernel completed their handshake:
//!    the clients have sent, or are sending, their requests), then ends. A listener closed
//!    with connections still queued resets them.
//! 3. **A connection-level drain** (feature `hyper`): `http::Server` serves HTTP/1 and
//!    HTTP/2 on hyper-util's server and, once the notice arrives, finishes every connection
//!    without dropping a request: a request that has arrived or is arriving is served and
//!    answered with `connection: close`; a connection that has sent nothing is given
//!    [`FIRST_REQUEST_GRACE`] for its first bytes, an idle keep-alive connection
//!    [`IDLE_GRACE`] for its next request, and only then closed; an HTTP/2 connection
//!    gets GOAWAY and finishes its streams. hyper's own graceful shutdown (and axum's, built
//!    on it) closes a connection at once when it has not *read* a request yet, even when the
//!    request is already in the socket: under a load of one request per connection that
//!    loses requests at every lifecycle event.
//!
//! With the feature `axum`, `axum::serve` serves a router the same way,
//! and [`Listener`] is an `axum::serve::Listener` for `axum::serve` itself.
//!
//! ```no_run
//! # #[cfg(feature = "hyper")]
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::convert::Infallible;
//! use hyper::{Request, Response, body::Incoming, service::service_fn};
//!
//! prefork::Prefork::new().listen_and_serve("127.0.0.1:8080", |listener, worker| {
//!     // Asked for first: from here on TERM starts a drain instead of ending the worker.
//!     let shutdown = worker.shutdown();
//!     // The runtime is built after the fork, inside the worker.
//!     let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//!     runtime.block_on(async move {
//!         let notice = prefork_tokio::Notice::new(shutdown)?;
//!         let listener = prefork_tokio::Listener::tcp(listener, notice)?;
//!         let hello = service_fn(|_: Request<Incoming>| async {
//!             Ok::<_, Infallible>(Response::new(String::from("hello\n")))
//!         });
//!         let drained = prefork_tokio::http::Server::new().serve(listener, hello).await?;
//!         println!("served {} connections", drained.connections);
//!         Ok::<_, std::io::Error>(())
//!     })
//! })?;
//! # Ok(())
//! # }
//! ```
//!
//! The runtime must be built inside `serve`, after the fork: a runtime started before would
//! make fork mode refuse (`Error::NotSingleThreaded`), since `fork` copies one thread only.
//! What a drain does with a connection in each state, and the timers, is told in the
//! repository's `docs/operations.md` ("Draining tokio workers").

mod listener;
mod notice;

#[cfg(feature = "hyper")]
pub mod http;

#[cfg(feature = "hyper")]
mod socket;

#[cfg(feature = "axum")]
pub mod axum;

pub use listener::{Accept, DRAIN_ACCEPT_LIMIT, FirstRead, Listener};
pub use notice::Notice;

use std::time::Duration;

/// During a drain, how long a connection that has not sent a byte yet is given for its first
/// request. The kernel completed its handshake, so its client believes it is connected and is
/// about to send: under load a client may be descheduled between `connect` and `write`.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// During a drain, how long an idle keep-alive connection is given for its next request
/// before it is closed.
pub const IDLE_GRACE: Duration = Duration::from_millis(250);
