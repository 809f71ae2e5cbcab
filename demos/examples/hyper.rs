//! hyper 1.x on prefork: one current-thread tokio runtime per worker, HTTP/1.1 and HTTP/2
//! (cleartext), and the drain of `prefork_tokio` that answers every accepted request.
//!
//! ```text
//! cargo run --release -p prefork-demos --example hyper -- --workers 4 --addr 127.0.0.1:8080 [--reuseport] [--mode exec]
//! curl http://127.0.0.1:8080/            # Hello from worker 2 (pid 12345)
//! curl http://127.0.0.1:8080/slow?ms=1500
//! cargo run --release -p prefork-demos --example hyper -- --single --workers 4   # no prefork, for comparison
//! cargo run --release -p prefork-demos --example hyper -- --workers 4 --addr unix:/run/app.sock
//! curl --unix-socket /run/app.sock http://localhost/
//! ```
//!
//! With `--addr unix:PATH` (or `unix:@NAME`) the workers serve a Unix domain socket, as behind
//! nginx's `proxy_pass http://unix:PATH` on the same host: the master binds it with
//! `Prefork::listen` and hands it to `serve`, and the worker's code is the same for both
//! kinds but for the tokio listener it builds.
//!
//! Each worker builds its runtime inside `serve`, after the fork (a runtime started before
//! would make the fork unsafe), and serves the listener it was handed. When the master asks
//! it to stop (TERM to the master, a rolling restart, TTOU, the old generation of an
//! upgrade), the worker drains with `prefork_tokio::http::Server`: it serves the connections
//! already queued, answers every request that has arrived or is arriving (with
//! `connection: close`), closes connections that stay idle for a short grace, prints how
//! many requests it served and exits 0, within the master's grace period (`--grace`,
//! default 5 s).
//!
//! `--single` runs the same handler without prefork: one process, one multi-thread runtime
//! with `--workers` threads (default: one per CPU), stopped by TERM or Ctrl-C the same way.
//! It is the baseline of `benches/http.sh`.

use std::convert::Infallible;
use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
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
        if args.addr.starts_with("unix:") {
            args.prefork()
                .listen(&args.addr)
                .serve(|listeners, worker| match listeners.into_only() {
                    Some(listener) => serve_worker(listener, worker, drain_limit),
                    None => Err(io::Error::other("one listener expected")),
                })
                .map_err(io::Error::other)
        } else {
            args.prefork()
                .listen_and_serve(&args.addr, |listener, worker| {
                    serve_worker(prefork::Listener::Tcp(listener), worker, drain_limit)
                })
                .map_err(io::Error::other)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyper: {e}");
            ExitCode::from(1)
        }
    }
}

/// One worker: its own runtime, its own accept loop, until the master's shutdown notice;
/// then the drain of `prefork_tokio`: the listen queue is served, every request that has
/// arrived or is arriving is answered, idle connections close after a short grace.
fn serve_worker(
    listener: prefork::Listener,
    worker: prefork::Worker,
    drain_limit: Duration,
) -> io::Result<()> {
    // Asking for the notice first: from here on TERM starts a drain instead of ending the
    // worker.
    let shutdown = worker.shutdown();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let notice = prefork_tokio::Notice::new(shutdown)?;
        let (id, pid) = (worker.id(), worker.pid());
        println!("worker {id} serving http://{}", listener.local_addr()?);
        let hello = Bytes::from(format!("Hello from worker {id} (pid {pid})\n"));
        let service = service_fn(move |req| handle(req, hello.clone(), id));
        let server = prefork_tokio::http::Server::new().drain_limit(drain_limit);
        let drained = match listener {
            prefork::Listener::Unix(l) => {
                let listener = prefork_tokio::Listener::unix(l, notice)?;
                server.serve(listener, service).await?
            }
            other => {
                let l = other
                    .into_tcp()
                    .map_err(|_| io::Error::other("a listener of an unknown kind"))?;
                let listener = prefork_tokio::Listener::tcp(l, notice)?;
                server.serve(listener, service).await?
            }
        };
        println!(
            "worker {id} (pid {pid}) served {} requests; drained {} connections",
            SERVED.load(Ordering::Relaxed),
            drained.draining
        );
        Ok(())
    })
}

/// The `--single` baseline: one process, one multi-thread runtime, no prefork; hyper-util's
/// server and graceful shutdown on TERM or Ctrl-C.
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
        println!("worker 0 serving http://{}", listener.local_addr()?);
        let hello = Bytes::from(format!(
            "Hello from worker 0 (pid {})\n",
            std::process::id()
        ));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let graceful = GracefulShutdown::new();
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        log::warn!("accept: {e}");
                        continue;
                    }
                },
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            };
            let _ = stream.set_nodelay(true);
            let hello = hello.clone();
            let service = service_fn(move |req| handle(req, hello.clone(), 0));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn.into_owned());
            tokio::spawn(conn);
        }
        if tokio::time::timeout(drain_limit, graceful.shutdown())
            .await
            .is_err()
        {
            log::warn!("connections still open after {drain_limit:?}; closing them");
        }
        Ok(())
    })
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
