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
//! KILL).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// The longest any single wait of these tests may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// The target profile directory (`target/debug`) of this test binary.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_owned()
}

/// An example of this package; cargo builds them before it runs this test.
fn example(name: &str) -> PathBuf {
    profile_dir().join("examples").join(name)
}

/// The library's `hello` example. `cargo test` at the workspace root builds it, but
/// `cargo test -p prefork-demos` does not, so it is built here (cargo does not hold its
/// build lock while tests run).
fn hello_example() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "-p", "preforked", "--example", "hello"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            let dir = profile_dir();
            match dir.file_name().and_then(|p| p.to_str()) {
                Some("debug") | None => {}
                Some(profile) => {
                    cmd.args(["--profile", profile]);
                }
            }
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "cargo build --example hello failed");
            dir.join("examples").join("hello")
        })
        .clone()
}

/// The test needs `tool`; `.ci/run` installs it where it is missing.
fn require(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{tool} is required by this test; install it (see .ci/run)"
    );
}

/// A running example: its master process, its stdout lines as they come, and its stderr
/// (the master's and the workers' log) once it has exited.
struct Server {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// The address the workers announced.
    addr: String,
}

impl Server {
    /// Starts the example with `args` plus `--addr 127.0.0.1:0 --workers N`, and waits until
    /// its N workers announced themselves (`worker K serving SCHEME://ADDR`).
    fn start(cmd: &mut Command, workers: usize) -> Server {
        let mut child = cmd
            .args(["--addr", "127.0.0.1:0", "--workers", &workers.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the example");
        let stdout = lines_of(child.stdout.take().expect("piped stdout"));
        let err = child.stderr.take().expect("piped stderr");
        let (tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(err).read_to_string(&mut text);
            let _ = tx.send(text);
        });
        let mut server = Server {
            child,
            stdout,
            stderr,
            addr: String::new(),
        };
        for _ in 0..workers {
            let line = server.line(|l| l.contains(" serving "));
            server.addr = line.rsplit("://").next().expect("an address").to_owned();
        }
        server
    }

    /// The next stdout line that satisfies `want` (earlier ones are skipped).
    fn line(&self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(_) => {}
                Err(e) => panic!("no such line from the server: {e}"),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the master to exit (its stderr ends when the master and every worker have
    /// exited), and returns its status and the log.
    fn wait_exit(&mut self) -> (ExitStatus, String) {
        let log = self
            .stderr
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("the server did not exit within {DEADLINE:?}"));
        (self.child.wait().expect("wait for the master"), log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            if self.stderr.recv_timeout(DEADLINE).is_err() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
    }
}

/// The lines of `from`, as they are read, through a channel.
fn lines_of(from: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream
}

fn send_get(stream: &mut TcpStream, path: &str) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send a request");
}

/// Reads one response with a `content-length` body: (status, head, body).
fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read a response head");
        assert_eq!(
            n, 1,
            "the connection ended inside a response head: {data:?}"
        );
        data.push(byte[0]);
    }
    let head = String::from_utf8(data).expect("utf-8 head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("read a body");
    (status, head, String::from_utf8(body).expect("utf-8 body"))
}

fn get(addr: &str, path: &str) -> (u16, String, String) {
    let mut stream = connect(addr);
    send_get(&mut stream, path);
    read_response(&mut stream)
}

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

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("prefork-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

#[test]
fn https_from_certificate_files() {
    require("openssl");
    require("python3");
    let dir = temp_dir("files");
    let (cert, key) = make_cert(&dir);
    let mut cmd = Command::new(example("tls"));
    cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
    let server = Server::start(&mut cmd, 2);
    let answer = fetch_tls(&server.addr, &cert);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "answer: {answer}");
    assert!(
        answer.contains("Hello over TLS from worker "),
        "answer: {answer}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn https_from_certificate_bytes() {
    require("openssl");
    require("python3");
    let dir = temp_dir("embedded");
    let (cert, key) = make_cert(&dir);
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
    let _ = std::fs::remove_dir_all(dir);
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

/// The outcome of a `prefork-load` run: its JSON line.
fn load(addr: &str, args: &[&str], on_start: impl FnOnce()) -> serde_json::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_prefork-load"))
        .args(["--addr", addr, "--timeout", "10000"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prefork-load");
    let started = lines_of(child.stderr.take().expect("piped stderr"));
    let line = started
        .recv_timeout(DEADLINE)
        .expect("prefork-load reports its start");
    assert!(line.contains("first answer"), "prefork-load: {line}");
    on_start();
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut out)
        .expect("read the result");
    assert!(child.wait().expect("wait for prefork-load").success());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON {out:?}: {e}"))
}

/// Every request of the run was answered 200; returns how many.
fn all_ok(report: &serde_json::Value) -> u64 {
    for outcome in ["refused", "reset", "timeout", "other"] {
        assert_eq!(report[outcome], 0, "{outcome} requests: {report}");
    }
    let ok = report["ok"].as_u64().expect("an ok count");
    assert!(ok > 0 && report["requests"] == ok, "{report}");
    ok
}

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
    server.signal("TERM");
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
    let report = load(
        &server.addr,
        &["--conn", conn, "--clients", "8", "--duration", "3"],
        || server.signal("HUP"),
    );
    all_ok(&report);
    // Answers came from the old workers and from their replacements.
    let pids = report["bodies"]
        .as_object()
        .expect("per-body counts")
        .keys()
        .filter_map(|body| body.split("(pid ").nth(1))
        .collect::<BTreeSet<_>>();
    assert!(
        pids.len() > workers,
        "answers from {} processes only: {report}",
        pids.len()
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
