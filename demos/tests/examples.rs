//! The demo servers, run as a user would and asked over the loopback network:
//!
//! * `tls` serves HTTPS from every worker, with the certificate from files and from bytes in
//!   memory (fasthttp prefork's ListenAndServeTLS and ListenAndServeTLSEmbed; a throw-away
//!   certificate is generated with `openssl`, the client is Python's `ssl`);
//! * `tokio`, `hyper` and `axum` run one runtime per worker; `axum` answers JSON;
//! * `hello` (the library's std-only example) serves many keep-alive connections per worker;
//! * every server but `tls` drains on TERM to the master (a slow request started before
//!   completes, an idle keep-alive connection is closed, every worker exits 0) and loses no
//!   request during a rolling restart (HUP) under load from `prefork-load`.
//!
//! Every wait is bounded; a server still running when a test ends is stopped (TERM, then
//! KILL). The helpers are in `common/`, shared with the lifecycle and upgrade tests.

// The library's test support (`tests/support` of the repository): waits, signals, `/proc`,
// temporary directories, one failure style for every process test of the workspace.
#[path = "../../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{
    Server, all_ok, bodies, connect, example, get, hello_example, load, read_response, require,
    send_get, started_workers, temp_dir,
};
use support::process::wait_for;

// ---------------------------------------------------------------------------------------
// TLS

/// Creates a self-signed certificate for localhost / 127.0.0.1 in `dir`.
fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl could not make a certificate");
    (cert, key)
}

/// Fetches `/` over TLS, trusting only `ca`.
fn fetch_tls(addr: &str, ca: &Path) -> String {
    let (_, port) = addr.rsplit_once(':').expect("host:port");
    let script = "import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
with socket.create_connection(('127.0.0.1', int(sys.argv[2])), timeout=20) as raw:
    with ctx.wrap_socket(raw, server_hostname='localhost') as s:
        s.sendall(b'GET / HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n')
        data = b''
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
print(data.decode())";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(ca)
        .arg(port)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "TLS request failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 answer")
}

#[test]
fn https_from_certificate_files() {
    require("openssl");
    require("python3");
    let dir = temp_dir("tls-files");
    let (cert, key) = make_cert(dir.path());
    let mut cmd = Command::new(example("tls"));
    cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
    let server = Server::start(&mut cmd, 2);
    let answer = fetch_tls(&server.addr, &cert);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "answer: {answer}");
    assert!(
        answer.contains("Hello over TLS from worker "),
        "answer: {answer}"
    );
}

#[test]
fn https_from_certificate_bytes() {
    require("openssl");
    require("python3");
    let dir = temp_dir("tls-embedded");
    let (cert, key) = make_cert(dir.path());
    let mut cmd = Command::new(example("tls"));
    cmd.arg("--embedded")
        .env(
            "TLS_CERT_PEM",
            std::fs::read_to_string(&cert).expect("cert"),
        )
        .env("TLS_KEY_PEM", std::fs::read_to_string(&key).expect("key"));
    let server = Server::start(&mut cmd, 2);
    // Several requests: every one is a full handshake with some worker.
    for _ in 0..4 {
        let answer = fetch_tls(&server.addr, &cert);
        assert!(
            answer.contains("Hello over TLS from worker "),
            "answer: {answer}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Runtimes per worker, routes

/// Asks `/` until `workers` different workers have answered (bounded, so a worker that
/// never answers fails the test).
fn answers_from_every_worker(addr: &str, workers: usize) {
    let mut seen = BTreeSet::new();
    for _ in 0..400 {
        let (status, _, body) = get(addr, "/");
        assert_eq!(status, 200, "body: {body}");
        let id = body
            .split("worker ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no worker id in {body:?}"));
        seen.insert(id.to_owned());
        if seen.len() == workers {
            return;
        }
    }
    panic!("answers came from workers {seen:?} only");
}

#[test]
fn tokio_runtime_per_worker() {
    let server = Server::start(&mut Command::new(example("tokio")), 2);
    answers_from_every_worker(&server.addr, 2);
}

#[test]
fn hyper_runtime_per_worker_shared_and_reuseport() {
    let server = Server::start(&mut Command::new(example("hyper")), 2);
    answers_from_every_worker(&server.addr, 2);
    let mut cmd = Command::new(example("hyper"));
    cmd.args(["--reuseport", "--mode", "exec"]);
    let server = Server::start(&mut cmd, 2);
    answers_from_every_worker(&server.addr, 2);
}

#[test]
fn axum_json_route_with_path_parameter() {
    let server = Server::start(&mut Command::new(example("axum")), 2);
    let (status, head, body) = get(&server.addr, "/users/42");
    assert_eq!(status, 200, "body: {body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "head: {head}"
    );
    let user: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(user["id"], 42, "{user}");
    assert_eq!(user["name"], "user-42", "{user}");
    assert!(user["worker"].as_u64().is_some_and(|w| w < 2), "{user}");
    let (status, _, _) = get(&server.addr, "/users/forty-two");
    assert_eq!(status, 400);
    let (status, _, _) = get(&server.addr, "/nowhere");
    assert_eq!(status, 404);
    answers_from_every_worker(&server.addr, 2);
}

// ---------------------------------------------------------------------------------------
// Many connections per worker

#[test]
fn hello_serves_many_keepalive_connections_per_worker() {
    let server = Server::start(&mut Command::new(hello_example()), 4);
    // 16 clients, each on one keep-alive connection, 4 workers: a worker that served one
    // connection at a time would leave 12 clients unanswered until they time out.
    let report = load(
        &server.addr,
        &[
            "--conn",
            "keepalive",
            "--clients",
            "16",
            "--requests",
            "3200",
            "--duration",
            "20",
        ],
        || {},
    );
    assert_eq!(all_ok(&report), 3200);
    assert_eq!(report["reconnects"], 0, "{report}");
    assert_eq!(report["retried"], 0, "{report}");
}

// ---------------------------------------------------------------------------------------
// Graceful drain

/// TERM to the master while one request is in flight and one keep-alive connection idles:
/// the idle connection is closed, the request completes with 200, every worker exits 0,
/// and so does the master.
fn drains_on_term(mut cmd: Command, keepalive: bool) {
    let workers = 2;
    let mut server = Server::start(&mut cmd, workers);
    let mut idle = connect(&server.addr);
    if keepalive {
        send_get(&mut idle, "/");
        let (status, _, _) = read_response(&mut idle);
        assert_eq!(status, 200);
    }
    let mut slow = connect(&server.addr);
    send_get(&mut slow, "/slow?ms=1500");
    server.line(|l| l.contains("slow request"));
    server.signal(libc::SIGTERM);
    if keepalive {
        let mut rest = Vec::new();
        idle.read_to_end(&mut rest)
            .expect("the idle connection is closed, not reset");
        assert!(rest.is_empty(), "bytes on the idle connection: {rest:?}");
    }
    let (status, head, body) = read_response(&mut slow);
    assert_eq!(status, 200, "{head}{body}");
    assert!(body.starts_with("slept 1500 ms"), "body: {body}");
    let (status, log) = server.wait_exit();
    assert!(status.success(), "master: {status}\n{log}");
    let clean = log.matches("stopped: exit code 0").count();
    assert_eq!(clean, workers, "workers did not all exit 0:\n{log}");
}

#[test]
fn hello_drains_on_term() {
    drains_on_term(Command::new(hello_example()), true);
}

#[test]
fn tokio_drains_on_term() {
    // Every answer closes its connection: there is no idle keep-alive connection.
    drains_on_term(Command::new(example("tokio")), false);
}

#[test]
fn hyper_drains_on_term() {
    drains_on_term(Command::new(example("hyper")), true);
    let mut exec = Command::new(example("hyper"));
    exec.args(["--reuseport", "--mode", "exec"]);
    drains_on_term(exec, true);
}

#[test]
fn axum_drains_on_term() {
    drains_on_term(Command::new(example("axum")), true);
}

/// A rolling restart (HUP) under load: every worker is replaced while 8 clients send
/// requests, and not one request fails.
fn restarts_without_losing_a_request(mut cmd: Command, conn: &str) {
    let workers = 4;
    let server = Server::start(&mut cmd, workers);
    let mut old = BTreeSet::new();
    wait_for("the workers' start lines in the log", || {
        old = started_workers(&server.log_lines(), server.pid())
            .into_values()
            .collect();
        old.len() == workers
    });
    let report = load(
        &server.addr,
        &["--conn", conn, "--clients", "8", "--duration", "3"],
        || server.signal(libc::SIGHUP),
    );
    all_ok(&report);
    // Every old worker drained and was replaced; none was counted as a crash.
    wait_for("the rolling restart's end", || {
        server.log().contains("rolling restart done")
    });
    for pid in &old {
        let stopped = format!("(pid {pid}) stopped: exit code 0 (replaced by HUP)");
        wait_for(&format!("worker pid {pid} stopped"), || {
            server.log().contains(&stopped)
        });
    }
    let log = server.log();
    assert!(
        !log.contains("replacing it"),
        "a worker exit counted as a crash:\n{log}"
    );
    // Answers came from the old workers (every client had one before HUP) and from their
    // replacements. Which workers accept the clients' connections is the kernel's choice
    // (one worker may take all 8), so the test does not ask for answers from every one.
    // Every example's answer ends with `(pid P)`.
    let pids = bodies(&report)
        .keys()
        .map(|body| {
            body.trim_end()
                .strip_suffix(')')
                .and_then(|b| b.rsplit_once("(pid "))
                .and_then(|(_, pid)| pid.parse::<u32>().ok())
                .unwrap_or_else(|| panic!("no pid in the answer {body:?}"))
        })
        .collect::<BTreeSet<_>>();
    assert!(
        pids.iter().any(|p| old.contains(p)),
        "no answer from the old workers {old:?}: {report}"
    );
    assert!(
        pids.iter().any(|p| !old.contains(p)),
        "no answer from a new worker (old ones: {old:?}): {report}"
    );
}

#[test]
fn hello_restarts_without_losing_a_request() {
    restarts_without_losing_a_request(Command::new(hello_example()), "keepalive");
}

#[test]
fn tokio_restarts_without_losing_a_request() {
    restarts_without_losing_a_request(Command::new(example("tokio")), "new");
}

#[test]
fn hyper_restarts_without_losing_a_request() {
    restarts_without_losing_a_request(Command::new(example("hyper")), "keepalive");
    let mut reuseport = Command::new(example("hyper"));
    reuseport.arg("--reuseport");
    restarts_without_losing_a_request(reuseport, "new");
}

// ---------------------------------------------------------------------------------------
// Unix domain sockets

/// One `GET /` over the Unix socket at `path`, HTTP/1.1 with `connection: close`: the body.
fn get_unix(path: &Path) -> String {
    use std::io::Write;
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    stream
        .set_read_timeout(Some(support::process::DEADLINE))
        .expect("timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    assert!(text.starts_with("HTTP/1.1 200"), "answer {text:?}");
    text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

/// Who removes the socket file when the master exits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SocketFile {
    /// The master bound it (`listen`): it removes it.
    Master,
    /// The program bound it and calls `run`: the file is the program's, left as it was.
    Program,
}

/// `example` with `args` serves `--addr unix:PATH` from both workers, over the same code as
/// TCP; TERM removes the socket file (or, for `SocketFile::Program`, leaves it, and nothing
/// answers on it any more) and every worker exits 0.
fn serves_unix_socket(example: PathBuf, args: &[&str], file: SocketFile) {
    let dir = temp_dir("unix");
    let path = dir.path().join("app.sock");
    let addr = format!("unix:{}", path.display());
    let mut cmd = Command::new(example);
    cmd.args(["--workers", "2", "--addr", &addr])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start the example");
    let out = common::lines_of(child.stdout.take().expect("stdout"));
    let err = common::lines_of(child.stderr.take().expect("stderr"));
    for _ in 0..2 {
        let line = out
            .recv_timeout(support::process::DEADLINE)
            .expect("a worker's `serving` line");
        assert!(line.ends_with(&format!("serving http://{addr}")), "{line}");
    }
    let mut seen = BTreeSet::new();
    for _ in 0..400 {
        let body = get_unix(&path);
        assert!(body.contains(" from worker "), "{body}");
        seen.insert(body);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "answers from both workers: {seen:?}");
    let inode = {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(&path)
            .expect("the socket file")
            .ino()
    };
    support::process::kill(child.id(), libc::SIGTERM);
    let status = child.wait().expect("wait");
    let log: Vec<String> = err.try_iter().collect();
    assert!(status.success(), "master: {status}\n{}", log.join("\n"));
    match file {
        SocketFile::Master => assert!(
            !path.exists(),
            "{} left behind:\n{}",
            path.display(),
            log.join("\n")
        ),
        SocketFile::Program => {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            let meta = std::fs::symlink_metadata(&path)
                .unwrap_or_else(|e| panic!("the program's socket file {}: {e}", path.display()));
            assert!(
                meta.file_type().is_socket(),
                "{} is not a socket",
                path.display()
            );
            assert_eq!(meta.ino(), inode, "the program's socket file was replaced");
            let refused = std::os::unix::net::UnixStream::connect(&path)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
            assert!(
                refused,
                "{} answers after the program exited",
                path.display()
            );
        }
    }
}

#[test]
fn hello_serves_a_unix_socket() {
    serves_unix_socket(hello_example(), &["--unix-mode", "600"], SocketFile::Master);
}

/// `hello --run`: the program binds `unix:PATH` itself and calls `run`.
#[test]
fn hello_run_serves_its_own_unix_socket() {
    serves_unix_socket(hello_example(), &["--run"], SocketFile::Program);
}

#[test]
fn hyper_serves_a_unix_socket() {
    serves_unix_socket(example("hyper"), &[], SocketFile::Master);
    serves_unix_socket(example("hyper"), &["--mode", "exec"], SocketFile::Master);
}
