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
//! and takes the listener it was handed into it with `prefork_tokio::Listener::tcp`. Building the runtime before `listen_and_serve` would
//! make fork mode refuse with `Error::NotSingleThreaded` (exec mode would still work).
//!
//! Every connection carries one request and is closed after the answer. On the master's
//! shutdown notice (`prefork_tokio::Notice`) the worker's `prefork_tokio::Listener` hands
//! out the connections already queued and ends; a connection that has not sent its request
//! yet gets `prefork_tokio::FIRST_REQUEST_GRACE` for it; the worker waits for every
//! connection task to finish and exits 0.

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use prefork_demos::{Args, USAGE};
use prefork_tokio::Notice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

/// How long a connection may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

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
    let notice = Notice::new(shutdown)?;
    let mut listener = prefork_tokio::Listener::tcp(listener, notice.clone())?;
    println!(
        "worker {} serving http://{}",
        worker.id(),
        listener.local_addr()?
    );
    let mut tasks = JoinSet::new();
    // Ends on the notice, once the connections queued by then were handed out.
    while let Some(accepted) = listener.accept().await {
        match accepted {
            Ok((stream, _)) => {
                tasks.spawn(answer(stream, worker, notice.clone()));
            }
            Err(e) => log::warn!("worker {}: accept: {e}", worker.id()),
        }
        // Collect finished tasks, so the set holds only live connections.
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    // The drain: every connection task to its end.
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

async fn answer(stream: tokio::net::TcpStream, worker: prefork::Worker, notice: Notice) {
    if let Err(e) = answer_one(stream, worker, notice).await {
        log::debug!("worker {}: {e}", worker.id());
    }
}

/// Reads one request head and answers it, then closes the connection.
async fn answer_one(
    mut stream: tokio::net::TcpStream,
    worker: prefork::Worker,
    notice: Notice,
) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read_head = async {
        let mut n = first_read(&mut stream, &mut buf, &notice).await?;
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

/// The first read of a connection. Until its first bytes come the connection is idle: once
/// the drain has begun, it gets `prefork_tokio::FIRST_REQUEST_GRACE` (its request may be on
/// its way), then counts as closed (0).
async fn first_read(
    stream: &mut tokio::net::TcpStream,
    buf: &mut [u8],
    notice: &Notice,
) -> io::Result<usize> {
    if !notice.is_requested() {
        tokio::select! {
            biased;
            n = stream.read(buf) => return n,
            () = notice.requested() => {}
        }
    }
    tokio::time::timeout(prefork_tokio::FIRST_REQUEST_GRACE, stream.read(buf))
        .await
        .unwrap_or(Ok(0))
}
