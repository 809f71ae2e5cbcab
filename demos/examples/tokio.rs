//! One tokio runtime per worker process, on plain `tokio::net`, with a graceful drain.
//!
//! ```text
//! cargo run --release -p prefork-demos --example tokio -- --workers 4 --addr 127.0.0.1:8080
//! curl http://127.0.0.1:8080/              # Hello from tokio in worker 1 (pid 12345)
//! curl http://127.0.0.1:8080/slow?ms=1500
//! ```
//!
//! Runtimes start threads, and `fork` copies only the calling thread, so the runtime must be
//! built *inside* `serve`, after the fork: each worker builds its own current-thread runtime
//! and converts the listener it was handed with `set_nonblocking(true)` and
//! `tokio::net::TcpListener::from_std`. Building the runtime before `listen_and_serve` would
//! make fork mode refuse with `Error::NotSingleThreaded` (exec mode would still work).
//!
//! Every connection carries one request and is closed after the answer. On the master's
//! shutdown notice (`tokio::io::unix::AsyncFd` over `worker.shutdown()`) the worker stops
//! accepting, takes the connections already queued, waits for every connection task to
//! finish and exits 0.

use std::io;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use prefork_demos::{Args, USAGE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long a connection may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// During the drain, how long a connection that has sent nothing yet is given before it is
/// taken for idle.
const FIRST_BYTES_DRAIN_GRACE: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    prefork_demos::init_logger();
    let args = match Args::parse(std::env::args().skip(1), |_, _| Ok(false)) {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("tokio example: {msg}\nusage: tokio {USAGE}");
            return ExitCode::from(2);
        }
    };
    let drain_limit = args.drain_limit();
    let result =
        args.prefork()
            .listen_and_serve(&args.addr, |listener, worker| -> io::Result<()> {
                let shutdown = worker.shutdown();
                listener.set_nonblocking(true)?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(serve(listener, worker, shutdown, drain_limit))
            });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio example: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    worker: prefork::Worker,
    shutdown: prefork::Shutdown,
    drain_limit: Duration,
) -> io::Result<()> {
    let notice = notice(shutdown)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    println!(
        "worker {} serving http://{}",
        worker.id(),
        listener.local_addr()?
    );
    let mut tasks = JoinSet::new();
    let (draining, drain) = watch::channel(false);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tasks.spawn(answer(stream, worker, drain.clone()));
                }
                Err(e) => log::warn!("worker {}: accept: {e}", worker.id()),
            },
            _ = notice.readable() => break,
        }
        // Collect finished tasks, so the set holds only live connections.
        while tasks.try_join_next().is_some() {}
    }
    // The drain: the connections already queued, then every task to its end.
    let _ = draining.send(true);
    let listener = listener.into_std()?;
    for _ in 0..4096 {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(true)?;
                tasks.spawn(answer(
                    tokio::net::TcpStream::from_std(stream)?,
                    worker,
                    drain.clone(),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break, // WouldBlock: the queue is empty
        }
    }
    drop(listener);
    while tasks.try_join_next().is_some() {}
    let open = tasks.len();
    let drained = tokio::time::timeout(drain_limit, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log::warn!(
            "worker {}: {} connections still open after {drain_limit:?}; closing them",
            worker.id(),
            tasks.len()
        );
    }
    println!("worker {} drained {open} connections", worker.id());
    Ok(())
}

async fn answer(
    stream: tokio::net::TcpStream,
    worker: prefork::Worker,
    drain: watch::Receiver<bool>,
) {
    if let Err(e) = answer_one(stream, worker, drain).await {
        log::debug!("worker {}: {e}", worker.id());
    }
}

/// Reads one request head and answers it, then closes the connection.
async fn answer_one(
    mut stream: tokio::net::TcpStream,
    worker: prefork::Worker,
    mut drain: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read_head = async {
        let mut n = first_read(&mut stream, &mut buf, &mut drain).await?;
        loop {
            if n == 0 || head.len() > 16 * 1024 {
                return Ok(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok::<_, io::Error>(true);
            }
            n = stream.read(&mut buf).await?;
        }
    };
    match tokio::time::timeout(HEAD_TIMEOUT, read_head).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) | Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
    }
    let target = head
        .split(|&b| b == b' ')
        .nth(1)
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let body = if path == "/slow" {
        let ms = prefork_demos::slow_ms(Some(query));
        println!("worker {}: slow request, {ms} ms", worker.id());
        tokio::time::sleep(Duration::from_millis(ms)).await;
        format!("slept {ms} ms in worker {}\n", worker.id())
    } else {
        format!(
            "Hello from tokio in worker {} (pid {})\n",
            worker.id(),
            worker.pid()
        )
    };
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The worker's shutdown notice as a tokio readiness source: readable once the drain begins.
fn notice(shutdown: prefork::Shutdown) -> io::Result<AsyncFd<prefork::Shutdown>> {
    // SAFETY: `AsyncFd::register` wants a descriptor that stays open, and the same, while the
    // `AsyncFd` lives. The notice's descriptor is created once per worker process and stays
    // open until the process exits, and `Shutdown::as_raw_fd` always returns it.
    Ok(unsafe { AsyncFd::register_with_interest(shutdown, Interest::READABLE) }?)
}

/// The first read of a connection. Until its first bytes come the connection is idle: once
/// the drain has begun, it gets a short grace (its request may be on its way), then counts
/// as closed (0).
async fn first_read(
    stream: &mut tokio::net::TcpStream,
    buf: &mut [u8],
    drain: &mut watch::Receiver<bool>,
) -> io::Result<usize> {
    let drain_began = tokio::select! {
        biased;
        n = stream.read(buf) => return n,
        began = drain.wait_for(|&d| d) => began.is_ok(),
    };
    if !drain_began {
        return Ok(0);
    }
    tokio::time::timeout(FIRST_BYTES_DRAIN_GRACE, stream.read(buf))
        .await
        .unwrap_or(Ok(0))
}
