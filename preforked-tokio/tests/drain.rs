//! Process tests of the drain: a real master with one worker serving
//! `prefork_tokio::http::Server`, a connection in each state when the master is asked to
//! stop, and what the client sees. Observed through sockets, the fixture's output and its
//! exit code.
//!
//! A `harness = false` binary on the library's test support (`tests/support` of the
//! repository): started with `PREFORK_FIXTURE=drain` it is the fixture master; otherwise
//! it runs the cases one after the other.

// The support library's own `unsafe` blocks (kill, prctl, pre_exec), each with its SAFETY
// comment; this file has none.
#[allow(unsafe_code)]
#[path = "../../tests/support/mod.rs"]
mod support;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use support::fixture::{EXIT_ERR, EXIT_OK};
use support::process::{Fixture, Spec};
use support::runner::{self, Test};

const ROLE: &str = "drain";

fn main() -> ExitCode {
    // The fixture role first, while the process is still single-threaded.
    if let Some(role) = support::fixture::role() {
        support::fixture::main(&role, &[(ROLE, fixture)]);
    }
    runner::main(tests())
}

fn tests() -> Vec<Test> {
    vec![
        runner::test(
            "silent_connection_gets_its_first_request_answered",
            silent_then_request,
        ),
        runner::test(
            "silent_connection_is_closed_after_the_grace",
            silent_then_closed,
        ),
        runner::test(
            "idle_keepalive_gets_its_next_request_answered",
            idle_then_request,
        ),
        runner::test("idle_keepalive_is_closed_after_the_grace", idle_then_closed),
        runner::test(
            "request_begun_before_the_notice_is_answered_after_the_grace",
            begun_then_finished,
        ),
        runner::test("request_in_flight_is_answered_with_close", in_flight),
        runner::test("queued_connections_are_served", queued),
        runner::test("http2_gets_goaway_and_finishes_its_stream", http2),
        runner::test("axum_serve_answers_a_silent_connection", || {
            silent_then_request_on(Via::AxumServe)
        }),
        runner::test("axum_serve_serves_the_queue", || queued_on(Via::AxumServe)),
        runner::test("axum_serve_completes_a_request_in_flight", || {
            in_flight_on(Via::AxumServe)
        }),
    ]
}

/// Which server the fixture's worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `prefork_tokio::http::Server`.
    Server,
    /// `axum::serve` on the draining listener, with `Listener::drained` as its
    /// graceful-shutdown signal.
    AxumServe,
}

/// The fixture's variable that selects `Via::AxumServe`.
const AXUM_SERVE_ENV: &str = "FX_AXUM_SERVE";

// ---------------------------------------------------------------------------------------
// The fixture: one worker, `Server` with a hello and a slow route.

fn fixture() -> i32 {
    let result = prefork::Prefork::new()
        .workers(1)
        .shutdown_grace(Duration::from_secs(15))
        .listen_and_serve("127.0.0.1:0", |listener, worker| {
            let shutdown = worker.shutdown();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let notice = prefork_tokio::Notice::new(shutdown)?;
                let listener = prefork_tokio::Listener::tcp(listener, notice.clone())?;
                println!(
                    "serving {} {}",
                    listener.local_addr()?.port(),
                    std::process::id()
                );
                tokio::spawn(async move {
                    notice.requested().await;
                    println!("notice");
                });
                if std::env::var_os(AXUM_SERVE_ENV).is_some() {
                    let drained = listener.drained();
                    let router = axum::Router::new().fallback(axum_handle);
                    axum::serve(listener, router)
                        .with_graceful_shutdown(drained)
                        .await?;
                    println!("drained by axum::serve");
                    return Ok(());
                }
                let service = hyper::service::service_fn(handle);
                let drained = prefork_tokio::http::Server::new()
                    .serve(listener, service)
                    .await?;
                println!(
                    "drained connections={} draining={} cut={}",
                    drained.connections, drained.draining, drained.cut
                );
                Ok::<_, io::Error>(())
            })
        });
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("fixture: {e}");
            EXIT_ERR
        }
    }
}

async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<String>, std::convert::Infallible> {
    Ok(hyper::Response::new(answer(req.uri()).await))
}

async fn axum_handle(uri: axum::http::Uri) -> String {
    answer(&uri).await
}

/// `/slow?ms=N` sleeps N ms; anything else says hello.
async fn answer(uri: &hyper::Uri) -> String {
    let ms = uri
        .query()
        .and_then(|q| q.strip_prefix("ms="))
        .and_then(|ms| ms.parse::<u64>().ok());
    match ms {
        Some(ms) if uri.path() == "/slow" => {
            println!("slow {ms}");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            format!("slept {ms} ms\n")
        }
        _ => format!("hello from {}\n", std::process::id()),
    }
}

// ---------------------------------------------------------------------------------------
// The client side.

const TIMEOUT: Duration = Duration::from_secs(20);

struct Server {
    fixture: Fixture,
    port: u16,
    worker: u32,
}

impl Server {
    fn start() -> Server {
        Server::start_on(Via::Server)
    }

    fn start_on(via: Via) -> Server {
        let mut spec = Spec::new(ROLE);
        if via == Via::AxumServe {
            spec = spec.env(AXUM_SERVE_ENV, "1");
        }
        let fixture = spec.start();
        let (port, worker) = fixture.wait_line("the worker serving", |l| {
            let mut parts = l.strip_prefix("serving ")?.split(' ');
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        });
        Server {
            fixture,
            port,
            worker,
        }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream
            .set_read_timeout(Some(TIMEOUT))
            .expect("read timeout");
        stream
    }

    /// TERM to the master; returns once the worker has its notice.
    fn stop(&self) {
        self.fixture.signal(libc::SIGTERM);
        self.fixture
            .wait_line("the worker's notice", |l| (l == "notice").then_some(()));
    }

    /// Waits for the master to exit 0 and returns the worker's last report line.
    fn finish(mut self) -> String {
        let drained = self.fixture.wait_line("the worker's drain report", |l| {
            l.starts_with("drained").then(|| l.to_owned())
        });
        let code = self.fixture.finish();
        assert_eq!(code, EXIT_OK, "the master's exit code");
        self.fixture.assert_group_empty();
        drained
    }
}

fn send_get(stream: &mut TcpStream, path: &str) {
    write!(stream, "GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").expect("send a request");
}

/// One response: (status line and headers in lower case, body).
fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            Ok(_) => panic!(
                "the connection closed before the answer: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("read the body");
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// The next read ends the connection cleanly: end of file, not a reset.
fn expect_eof(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "bytes after the answer: {rest:?}"),
        Err(e) => panic!("the connection ended with {e}, not end-of-file"),
    }
}

/// `prefork_tokio`'s server closes with `connection: close`; axum's own graceful shutdown
/// adds it only to an answer still in progress when it begins.
fn assert_answer(via: Via, head: &str, body: &str) {
    match via {
        Via::Server => assert_closing_answer(head, body),
        Via::AxumServe => {
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert!(!body.is_empty(), "empty body");
        }
    }
}

fn assert_closing_answer(head: &str, body: &str) {
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("\r\nconnection: close\r\n"),
        "the answer during the drain does not close the connection: {head}"
    );
    assert!(!body.is_empty(), "empty body");
}

// ---------------------------------------------------------------------------------------
// The cases.

/// Accepted without a byte when the notice comes; the request follows within
/// `FIRST_REQUEST_GRACE` and is answered, with `connection: close`.
fn silent_then_request() {
    silent_then_request_on(Via::Server);
}

fn silent_then_request_on(via: Via) {
    let server = Server::start_on(via);
    let mut stream = server.connect();
    // The connection is accepted (the worker is idle and takes it at once), then the notice.
    std::thread::sleep(Duration::from_millis(200));
    server.stop();
    std::thread::sleep(prefork_tokio::FIRST_REQUEST_GRACE / 3);
    send_get(&mut stream, "/");
    let (head, body) = read_response(&mut stream);
    assert_answer(via, &head, &body);
    expect_eof(&mut stream);
    let drained = server.finish();
    if via == Via::Server {
        assert!(drained.contains("connections=1 "), "{drained}");
    }
}

/// Accepted without a byte, and silent for the whole grace: closed (end of file).
fn silent_then_closed() {
    let server = Server::start();
    let mut stream = server.connect();
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    server.stop();
    expect_eof(&mut stream);
    let waited = asked.elapsed();
    assert!(
        waited >= prefork_tokio::FIRST_REQUEST_GRACE / 2,
        "closed {waited:?} after the notice, before its grace"
    );
    server.finish();
}

/// Idle after one answer when the notice comes; the next request follows within
/// `IDLE_GRACE` and is answered, with `connection: close`.
fn idle_then_request() {
    let server = Server::start();
    let mut stream = server.connect();
    send_get(&mut stream, "/");
    let (head, _) = read_response(&mut stream);
    assert!(!head.contains("connection: close"), "{head}");
    server.stop();
    std::thread::sleep(prefork_tokio::IDLE_GRACE / 5);
    send_get(&mut stream, "/");
    let (head, body) = read_response(&mut stream);
    assert_closing_answer(&head, &body);
    expect_eof(&mut stream);
    server.finish();
}

/// Idle after one answer, and for the whole grace: closed (end of file).
fn idle_then_closed() {
    let server = Server::start();
    let mut stream = server.connect();
    send_get(&mut stream, "/");
    read_response(&mut stream);
    let asked = Instant::now();
    server.stop();
    expect_eof(&mut stream);
    let waited = asked.elapsed();
    assert!(
        waited >= prefork_tokio::IDLE_GRACE / 2,
        "closed {waited:?} after the notice, before its grace"
    );
    server.finish();
}

/// After one answer, the next request begins (its first bytes, read by the server), the
/// notice comes, and the rest of the request follows only after several idle graces: the
/// connection is not taken for idle, and the request is answered with `connection: close`.
fn begun_then_finished() {
    let server = Server::start();
    let mut stream = server.connect();
    send_get(&mut stream, "/");
    read_response(&mut stream);
    // Later than the answer by more than the kernel's clock tick (a few ms), by which the
    // drain tells data received after the last answer.
    std::thread::sleep(Duration::from_millis(100));
    stream.write_all(b"GET / HT").expect("the first bytes");
    std::thread::sleep(Duration::from_millis(100));
    server.stop();
    std::thread::sleep(prefork_tokio::IDLE_GRACE * 3);
    stream
        .write_all(b"TP/1.1\r\nhost: localhost\r\n\r\n")
        .expect("the rest of the request");
    let (head, body) = read_response(&mut stream);
    assert_closing_answer(&head, &body);
    expect_eof(&mut stream);
    server.finish();
}

/// A slow request in flight when the notice comes completes, with `connection: close`.
fn in_flight() {
    in_flight_on(Via::Server);
}

fn in_flight_on(via: Via) {
    let server = Server::start_on(via);
    let mut stream = server.connect();
    send_get(&mut stream, "/slow?ms=800");
    server
        .fixture
        .wait_line("the slow request", |l| (l == "slow 800").then_some(()));
    server.stop();
    let (head, body) = read_response(&mut stream);
    assert_answer(via, &head, &body);
    assert_eq!(body, "slept 800 ms\n");
    expect_eof(&mut stream);
    server.finish();
}

/// Connections queued while the worker cannot accept (stopped with SIGSTOP), their
/// requests sent, then the notice: the worker serves every one before it exits.
fn queued() {
    queued_on(Via::Server);
}

fn queued_on(via: Via) {
    const QUEUED: usize = 8;
    let server = Server::start_on(via);
    support::process::kill(server.worker, libc::SIGSTOP);
    let mut streams: Vec<TcpStream> = (0..QUEUED).map(|_| server.connect()).collect();
    for stream in &mut streams {
        send_get(stream, "/");
    }
    server.fixture.signal(libc::SIGTERM);
    // The master logs the TERM it sends to the worker just before it sends it: once the
    // line is out, the TERM is on its way and reaches the stopped worker before it runs again
    // (a worker continued before its TERM could answer some of the queue before the notice).
    server
        .fixture
        .wait_stderr_line("the master's TERM to the worker", |l| {
            l.contains("sending SIGTERM to worker").then_some(())
        });
    support::process::kill(server.worker, libc::SIGCONT);
    for stream in &mut streams {
        let (head, body) = read_response(stream);
        assert_answer(via, &head, &body);
        expect_eof(stream);
    }
    let drained = server.finish();
    if via == Via::Server {
        assert!(
            drained.contains(&format!("connections={QUEUED} ")),
            "{drained}"
        );
    }
}

/// HTTP/2 (cleartext, prior knowledge): a stream in flight when the notice comes gets its
/// answer, and the connection gets GOAWAY.
fn http2() {
    let server = Server::start();
    let mut stream = server.connect();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .expect("preface");
    write_frame(&mut stream, 0x4, 0, 0, &[]); // SETTINGS, empty
    // HEADERS on stream 1, END_STREAM | END_HEADERS: :method GET (static 2), :scheme http
    // (static 6), :path (name static 4) "/slow?ms=600", :authority (name static 1) "x".
    let path = b"/slow?ms=600";
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path);
    block.extend_from_slice(&[0x01, 1, b'x']);
    write_frame(&mut stream, 0x1, 0x5, 1, &block);
    server
        .fixture
        .wait_line("the slow request", |l| (l == "slow 600").then_some(()));
    server.stop();
    let (mut goaway, mut headers, mut ended) = (false, false, false);
    while !(goaway && ended) {
        let (kind, flags, id, payload) = match read_frame(&mut stream) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => panic!("reading frames: {e}"),
        };
        match kind {
            0x7 => goaway = true,
            0x1 if id == 1 => {
                // :status 200 is static index 8.
                assert_eq!(
                    payload.first(),
                    Some(&0x88),
                    "status of stream 1: {payload:?}"
                );
                headers = true;
                ended |= flags & 0x1 != 0;
            }
            0x0 if id == 1 => ended |= flags & 0x1 != 0,
            0x4 if flags & 0x1 == 0 => write_frame(&mut stream, 0x4, 0x1, 0, &[]), // ack
            _ => {}
        }
    }
    assert!(goaway, "no GOAWAY");
    assert!(
        headers && ended,
        "stream 1 did not finish (headers {headers}, ended {ended})"
    );
    drop(stream);
    server.finish();
}

fn write_frame(stream: &mut TcpStream, kind: u8, flags: u8, id: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame).expect("write a frame");
}

/// An HTTP/2 frame: type, flags, stream id, payload.
type Frame = (u8, u8, u32, Vec<u8>);

/// The next frame, or `None` at end of file.
fn read_frame(stream: &mut TcpStream) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 9];
    match stream.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok(Some((head[3], head[4], id, payload)))
}
