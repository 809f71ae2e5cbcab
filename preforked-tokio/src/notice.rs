//! The master's request to stop, as a future of the worker's runtime.

#![allow(unsafe_code)]

use std::io;
use std::sync::Arc;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The worker's shutdown notice in the tokio reactor: a cheap handle ([`Clone`]) that any
/// number of tasks can wait on.
///
/// Built from [`prefork::Worker::shutdown`], inside the worker's runtime (the notice's pipe is
/// registered with the runtime's reactor, which must have IO enabled). Waiting costs no
/// wake-up until the master asks: the pipe becomes readable once, and every waiting task is
/// woken.
#[derive(Debug, Clone)]
pub struct Notice {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shutdown: prefork::Shutdown,
    fd: AsyncFd<prefork::Shutdown>,
}

impl Notice {
    /// Registers the notice of `shutdown` with the current runtime's reactor.
    ///
    /// # Errors
    ///
    /// When there is no current runtime with IO enabled (`Builder::enable_io`), or the
    /// registration fails.
    pub fn new(shutdown: prefork::Shutdown) -> io::Result<Notice> {
        // SAFETY: `register_with_interest` wants the descriptor to stay open, and to refer
        // to the same file, for as long as the `AsyncFd` lives. The notice's pipe is opened
        // once per worker process by the first `Worker::shutdown` and never closed (see
        // `prefork::Shutdown`), and `Shutdown::as_raw_fd` always returns that descriptor.
        let fd = unsafe { AsyncFd::register_with_interest(shutdown, Interest::READABLE) }?;
        Ok(Notice {
            inner: Arc::new(Inner { shutdown, fd }),
        })
    }

    /// Whether the master asked this worker to stop. An atomic load: no system call.
    #[inline]
    pub fn is_requested(&self) -> bool {
        self.inner.shutdown.is_requested()
    }

    /// The worker's [`prefork::Shutdown`] this notice waits on (`Copy`, for code that polls
    /// the flag without the reactor).
    pub fn shutdown(&self) -> prefork::Shutdown {
        self.inner.shutdown
    }

    /// Resolves once the master asked this worker to stop (at once if it already has).
    ///
    /// Cancel-safe: dropping the future before it resolves loses nothing.
    pub async fn requested(&self) {
        loop {
            if self.is_requested() {
                return;
            }
            match self.inner.fd.readable().await {
                Ok(mut guard) => {
                    // The pipe is readable only once the flag is set; readiness without it
                    // is the reactor's (a spurious wake-up), and is cleared for the next.
                    if !self.is_requested() {
                        guard.clear_ready();
                    }
                }
                // The reactor is gone (the runtime is shutting down): no notice will come.
                Err(_) => std::future::pending::<()>().await,
            }
        }
    }
}
