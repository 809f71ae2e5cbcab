//! hyper 1.x on prefork: one current-thread tokio runtime per worker, HTTP/1.1, graceful drain.
//!
//! ```text
//! cargo run --release -p prefork-demos --example hyper -- --workers 4 --addr 127.0.0.1:8080 [--reuseport] [--mode exec]
//! curl http://127.0.0.1:8080/            # Hello from worker 2 (pid 12345)
//! curl http://127.0.0.1:8080/slow?ms=1500
//! cargo run --release -p prefork-demos --example hyper -- --single --workers 4   # no prefork, for comparison
//! ```
//!
//! Each worker builds its runtime inside `serve`, after the fork (a runtime started before
//! would make the fork unsafe), and serves the listener it was handed. When the master asks
//! it to stop (TERM to the master, a rolling restart, TTOU), the worker drains: it stops
//! accepting, serves the connections already queued, lets in-flight requests finish (their
//! responses carry `connection: close`), closes idle keep-alive connections, prints how many
//! requests it served and exits 0, within the master's grace period (`--grace`, default 5 s).
//!
//! `--single` runs the same handler without prefork: one process, one multi-thread runtime
//! with `--workers` threads (default: one per CPU), stopped by TERM or Ctrl-C the same way.
//! It is the baseline of `benches/http.sh`.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prefork_demos::{Args, USAGE};

/// Requests this process answered (a worker is a process: this is the worker's count).
static SERVED: AtomicU64 = AtomicU64::new(0);

fn main() -> ExitCode {
    prefork_demos::init_logger();
    let mut single = false;
    let args = match Args::parse(std::env::args().skip(1), |arg, _| match arg {
        "--single" => {
            single = true;
            Ok(true)
        }
        _ => Ok(false),
    }) {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("hyper: {msg}\nusage: hyper {USAGE} [--single]");
            return ExitCode::from(2);
        }
    };
    let result = if single {
        single_process(&args)
    } else {
        let drain_limit = args.drain_limit();
        args.prefork()
            .listen_and_serve(&args.addr, |listener, worker| {
                serve_worker(listener, worker, drain_limit)
            })
            .map_err(io::Error::other)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyper: {e}");
            ExitCode::from(1)
        }
    }
}

/// One worker: its own runtime, its own accept loop, until the master's shutdown notice.
fn serve_worker(
    listener: std::net::TcpListener,
    worker: prefork::Worker,
    drain_limit: Duration,
) -> io::Result<()> {
    // Asking for the notice first: from here on TERM starts a drain instead of ending the
    // worker.
    let shutdown = worker.shutdown();
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let notice = notice(shutdown)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let stop = async move {
            let _ = notice.readable().await;
        };
        serve(listener, worker.id(), worker.pid(), stop, drain_limit).await
    })
}

/// The `--single` baseline: one process, one multi-thread runtime, no prefork.
fn single_process(args: &Args) -> io::Result<()> {
    let threads = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let drain_limit = args.drain_limit();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.addr).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        serve(listener, 0, std::process::id(), stop, drain_limit).await
    })
}

/// Accepts and serves until `stop` resolves, then drains.
async fn serve(
    listener: tokio::net::TcpListener,
    id: usize,
    pid: u32,
    stop: impl std::future::Future<Output = ()>,
    drain_limit: Duration,
) -> io::Result<()> {
    let hello = Bytes::from(format!("Hello from worker {id} (pid {pid})\n"));
    println!("worker {id} serving http://{}", listener.local_addr()?);
    let graceful = GracefulShutdown::new();
    let (draining, drain) = tokio::sync::watch::channel(false);
    let spawn = |stream: tokio::net::TcpStream| {
        // The watcher is taken here, before the drain can begin, so that the drain waits
        // for this connection.
        let task = connection(stream, graceful.watcher(), drain.clone(), hello.clone(), id);
        tokio::spawn(task);
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => spawn(stream),
                Err(e) => log::warn!("worker {id}: accept: {e}"),
            },
            () = &mut stop => break,
        }
    }
    // The drain. Connections the kernel already queued were accepted on the client's side:
    // serve them too (with a per-slot reuseport socket nobody else would). Then every
    // connection is told to finish: idle keep-alive connections close, in-flight requests
    // complete with `connection: close`.
    let _ = draining.send(true);
    let listener = listener.into_std()?;
    for _ in 0..4096 {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(true)?;
                spawn(tokio::net::TcpStream::from_std(stream)?);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break, // WouldBlock: the queue is empty
        }
    }
    drop(listener);
    let open = graceful.count();
    if tokio::time::timeout(drain_limit, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!("worker {id}: connections still open after {drain_limit:?}; closing them");
    }
    println!(
        "worker {id} (pid {pid}) served {} requests; drained {open} connections",
        SERVED.load(Ordering::Relaxed)
    );
    Ok(())
}

/// How long a new connection may take to send its first bytes.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// During the drain, how long a connection that has sent nothing yet is given before it is
/// taken for idle.
const FIRST_BYTES_DRAIN_GRACE: Duration = Duration::from_millis(200);

/// Serves one connection: HTTP/1.1 with keep-alive until the client closes it or the drain.
async fn connection(
    stream: tokio::net::TcpStream,
    watcher: Watcher,
    mut drain: tokio::sync::watch::Receiver<bool>,
    hello: Bytes,
    id: usize,
) {
    let _ = stream.set_nodelay(true);
    // hyper's graceful shutdown closes a connection it has not read anything from yet, as
    // idle, even when the client's request is already in the socket. So hyper gets the
    // connection once its first bytes are there, and reads them (one poll) before it watches
    // for the drain. A connection that sends nothing is closed after a while, or soon once
    // the drain has begun.
    let first_bytes = async {
        let drain_began = tokio::select! {
            biased;
            ready = stream.readable() => return ready.is_ok(),
            began = drain.wait_for(|&d| d) => began.is_ok(),
        };
        drain_began
            && matches!(
                tokio::time::timeout(FIRST_BYTES_DRAIN_GRACE, stream.readable()).await,
                Ok(Ok(()))
            )
    };
    if !matches!(
        tokio::time::timeout(FIRST_BYTES_TIMEOUT, first_bytes).await,
        Ok(true)
    ) {
        return;
    }
    let service = service_fn(move |req| handle(req, hello.clone(), id));
    let mut conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut conn).poll(cx))).await;
    let result = match first {
        Poll::Ready(result) => result,
        Poll::Pending => watcher.watch(conn).await,
    };
    if let Err(e) = result {
        log::debug!("worker {id}: connection: {e}");
    }
}

async fn handle(
    req: Request<Incoming>,
    hello: Bytes,
    id: usize,
) -> Result<Response<Full<Bytes>>, Infallible> {
    SERVED.fetch_add(1, Ordering::Relaxed);
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => (StatusCode::OK, hello),
        (&Method::GET, "/slow") => {
            let ms = prefork_demos::slow_ms(req.uri().query());
            println!("worker {id}: slow request, {ms} ms");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (
                StatusCode::OK,
                Bytes::from(format!("slept {ms} ms in worker {id}\n")),
            )
        }
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    Ok(response)
}

/// The worker's shutdown notice as a tokio readiness source: readable once the drain begins.
fn notice(shutdown: prefork::Shutdown) -> io::Result<AsyncFd<prefork::Shutdown>> {
    // SAFETY: `AsyncFd::register` wants a descriptor that stays open, and the same, while the
    // `AsyncFd` lives. The notice's descriptor is created once per worker process and stays
    // open until the process exits, and `Shutdown::as_raw_fd` always returns it.
    Ok(unsafe { AsyncFd::register_with_interest(shutdown, Interest::READABLE) }?)
}
