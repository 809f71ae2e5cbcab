//! axum 0.8 on prefork: a router with a JSON route and a path parameter, one current-thread
//! tokio runtime per worker, and the drain of `prefork_tokio` that answers every accepted
//! request.
//!
//! ```text
//! cargo run --release -p prefork-demos --example axum -- --workers 4 --addr 127.0.0.1:8080 [--reuseport] [--mode exec]
//! curl http://127.0.0.1:8080/              # Hello from worker 2 (pid 12345)
//! curl http://127.0.0.1:8080/users/42      # {"id":42,"name":"user-42","worker":2,"pid":12345}
//! curl http://127.0.0.1:8080/slow?ms=1500
//! ```
//!
//! The router is built inside each worker, after the fork, together with the runtime, and
//! served by `prefork_tokio::http::Server` (HTTP/1.1 and HTTP/2). When the master asks the
//! worker to stop, it serves the connections still queued, answers every request that has
//! arrived or is arriving (with `connection: close`), closes connections that stay idle for a
//! short grace, and exits 0 within the master's grace period (`--grace`, default 5 s).
//! `axum::serve(..).with_graceful_shutdown(..)` would close a connection whose request is in
//! the socket but not yet read, without an answer (see `prefork_tokio::axum`).

use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use prefork_demos::{Args, USAGE};
use serde::{Deserialize, Serialize};

/// Requests this worker process answered.
static SERVED: AtomicU64 = AtomicU64::new(0);

fn main() -> ExitCode {
    prefork_demos::init_logger();
    let args = match Args::parse(std::env::args().skip(1), |_, _| Ok(false)) {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("axum: {msg}\nusage: axum {USAGE}");
            return ExitCode::from(2);
        }
    };
    let drain_limit = args.drain_limit();
    match args
        .prefork()
        .listen_and_serve(&args.addr, |listener, worker| {
            serve_worker(listener, worker, drain_limit)
        }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("axum: {e}");
            ExitCode::from(1)
        }
    }
}

/// What every handler of one worker sees.
#[derive(Clone, Copy)]
struct AppState {
    worker: prefork::Worker,
}

fn router(worker: prefork::Worker) -> Router {
    Router::new()
        .route("/", get(hello))
        .route("/users/{id}", get(user))
        .route("/slow", get(slow))
        .with_state(AppState { worker })
}

fn serve_worker(
    listener: std::net::TcpListener,
    worker: prefork::Worker,
    drain_limit: Duration,
) -> io::Result<()> {
    // From here on TERM starts a drain instead of ending the worker.
    let shutdown = worker.shutdown();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let notice = prefork_tokio::Notice::new(shutdown)?;
        let listener = prefork_tokio::Listener::tcp(listener, notice)?;
        println!(
            "worker {} serving http://{}",
            worker.id(),
            listener.local_addr()?
        );
        let drained = prefork_tokio::http::Server::new()
            .drain_limit(drain_limit)
            .serve(listener, prefork_tokio::axum::service(router(worker)))
            .await?;
        println!(
            "worker {} (pid {}) served {} requests; drained {} connections",
            worker.id(),
            worker.pid(),
            SERVED.load(Ordering::Relaxed),
            drained.draining
        );
        Ok(())
    })
}

async fn hello(State(app): State<AppState>) -> String {
    SERVED.fetch_add(1, Ordering::Relaxed);
    format!(
        "Hello from worker {} (pid {})\n",
        app.worker.id(),
        app.worker.pid()
    )
}

#[derive(Serialize)]
struct User {
    id: u64,
    name: String,
    worker: usize,
    pid: u32,
}

/// `GET /users/{id}`: a JSON document; a non-numeric id is answered 400 by the extractor.
async fn user(State(app): State<AppState>, Path(id): Path<u64>) -> axum::Json<User> {
    SERVED.fetch_add(1, Ordering::Relaxed);
    axum::Json(User {
        id,
        name: format!("user-{id}"),
        worker: app.worker.id(),
        pid: app.worker.pid(),
    })
}

#[derive(Deserialize)]
struct SlowQuery {
    ms: Option<u64>,
}

/// `GET /slow?ms=N`: answers after N ms (default 1000, at most 60 000).
async fn slow(State(app): State<AppState>, Query(q): Query<SlowQuery>) -> String {
    SERVED.fetch_add(1, Ordering::Relaxed);
    let ms = q.ms.unwrap_or(1000).min(60_000);
    println!("worker {}: slow request, {ms} ms", app.worker.id());
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms} ms in worker {}\n", app.worker.id())
}
