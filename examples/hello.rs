//! A preforked HTTP/1.1 "hello" server on `std::net`.
//!
//! ```text
//! cargo run --release --example hello -- --workers 4 --addr 127.0.0.1:8080 [--mode exec] [--reuseport]
//! curl http://127.0.0.1:8080/      # Hello from worker 2 (pid 12345)
//! ```
//!
//! Every worker accepts on the one listening socket bound before the fork, and answers each
//! request (keep-alive included) with its slot and pid. Ctrl-C (SIGINT) or SIGTERM to the
//! master stops every worker and exits 0.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;

fn main() -> ExitCode {
    log::set_logger(&StderrLogger).expect("no other logger is installed");
    log::set_max_level(log::LevelFilter::Info);

    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(msg) => {
            eprintln!(
                "hello: {msg}\nusage: hello [--workers N] [--addr HOST:PORT] [--mode fork|exec|auto] [--network tcp|tcp4|tcp6] [--reuseport]"
            );
            return ExitCode::from(2);
        }
    };
    let mut prefork = prefork::Prefork::new()
        .mode(args.mode)
        .network(args.network)
        .reuseport(args.reuseport);
    if let Some(n) = args.workers {
        prefork = prefork.workers(n);
    }
    if !prefork::is_child() {
        log::info!("listening on http://{}", args.addr);
    }
    // In exec mode each worker re-runs this program and, inside listen_and_serve, takes its
    // listener from fd 3 and serves: the same code path for master and worker.
    let result = prefork.listen_and_serve(&args.addr, |listener, worker| -> io::Result<()> {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    if let Err(e) = serve_connection(stream, worker) {
                        log::debug!("connection: {e}");
                    }
                }
                Err(e) => log::warn!("accept: {e}"),
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello: {e}");
            ExitCode::from(1)
        }
    }
}

/// Answers every request on one connection until the client closes it.
fn serve_connection(mut stream: TcpStream, worker: prefork::Worker) -> io::Result<()> {
    let body = format!("Hello from worker {} (pid {})\n", worker.id(), worker.pid());
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // Answer every complete request head already received (pipelining included).
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let close = request_wants_close(&buf[..end]);
            buf.drain(..end + 4);
            stream.write_all(response.as_bytes())?;
            if close {
                return Ok(());
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn request_wants_close(head: &[u8]) -> bool {
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    head.starts_with("get / http/1.0") && !head.contains("connection: keep-alive")
        || head.contains("connection: close")
}

struct Args {
    workers: Option<usize>,
    addr: String,
    mode: prefork::Mode,
    network: prefork::Network,
    reuseport: bool,
}

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut out = Args {
            workers: None,
            addr: "127.0.0.1:8080".to_owned(),
            mode: prefork::Mode::Fork,
            network: prefork::Network::Tcp4,
            reuseport: false,
        };
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--workers" | "-w" => {
                    let v = value("--workers")?;
                    out.workers = Some(
                        v.parse()
                            .map_err(|_| format!("bad --workers value {v:?}"))?,
                    );
                }
                "--addr" | "-a" => out.addr = value("--addr")?,
                "--mode" => {
                    out.mode = match value("--mode")?.as_str() {
                        "fork" => prefork::Mode::Fork,
                        "exec" => prefork::Mode::Exec,
                        "auto" => prefork::Mode::Auto,
                        v => return Err(format!("bad --mode value {v:?} (fork, exec or auto)")),
                    }
                }
                "--network" => {
                    out.network = match value("--network")?.as_str() {
                        "tcp" => prefork::Network::Tcp,
                        "tcp4" => prefork::Network::Tcp4,
                        "tcp6" => prefork::Network::Tcp6,
                        v => return Err(format!("bad --network value {v:?} (tcp, tcp4 or tcp6)")),
                    }
                }
                "--reuseport" => out.reuseport = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(out)
    }
}

/// A minimal logger: level, pid and message on stderr.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "[{} {}] {}",
                record.level(),
                std::process::id(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}
