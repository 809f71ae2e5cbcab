//! One tokio runtime per worker process.
//!
//! ```text
//! cargo run --release --example tokio -- --workers 4 --addr 127.0.0.1:8080
//! ```
//!
//! Runtimes start threads, and `fork` copies only the calling thread, so the runtime must be
//! built *inside* `serve`, after the fork: each worker builds its own current-thread runtime
//! and converts the listener it was handed with `set_nonblocking(true)` and
//! `tokio::net::TcpListener::from_std`. Building the runtime before `listen_and_serve` would
//! make fork mode refuse with `Error::NotSingleThreaded` (exec mode would still work).

use std::process::ExitCode;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() -> ExitCode {
    let mut workers = 2;
    let mut addr = "127.0.0.1:8080".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--workers", Some(v)) => match v.parse() {
                Ok(n) => workers = n,
                Err(_) => return fail(&format!("bad --workers value {v:?}")),
            },
            ("--addr", Some(v)) => addr = v,
            (other, _) => return fail(&format!("unknown or incomplete argument {other:?}")),
        }
    }
    let result = prefork::Prefork::new().workers(workers).listen_and_serve(
        &addr,
        |listener, worker| -> std::io::Result<()> {
            listener.set_nonblocking(true)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                println!(
                    "worker {} serving http://{}",
                    worker.id(),
                    listener.local_addr()?
                );
                loop {
                    let (stream, _) = listener.accept().await?;
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, worker).await {
                            eprintln!("worker {}: {e}", worker.id());
                        }
                    });
                }
            })
        },
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("tokio example: {msg}");
    ExitCode::from(1)
}

/// Reads one request head and answers it, then closes the connection.
async fn answer(mut stream: tokio::net::TcpStream, worker: prefork::Worker) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 16 * 1024 {
            return Ok(());
        }
    }
    let body = format!(
        "Hello from tokio in worker {} (pid {})\n",
        worker.id(),
        worker.pid()
    );
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
