//! The examples that carry their own protocol stack, run as a user would and asked over the
//! network: `tls` serves HTTPS from every worker, with the certificate from files and from
//! bytes in memory (fasthttp prefork's ListenAndServeTLS and ListenAndServeTLSEmbed; a
//! throw-away certificate is generated with `openssl`, the client is Python's `ssl`), and
//! `tokio` runs one runtime per worker.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    dir.join("examples").join(name)
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

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Starts the example and returns it with the address its workers announced
/// (`worker N serving SCHEME://ADDR`), and the ids of the workers that announced it.
fn start(cmd: &mut Command, workers: usize) -> (Server, String) {
    let mut child = cmd
        .args(["--addr", "127.0.0.1:0", "--workers", &workers.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the example");
    let stdout = child.stdout.take().expect("piped stdout");
    let server = Server(child);
    let mut addr = String::new();
    let mut lines = BufReader::new(stdout).lines();
    for _ in 0..workers {
        let line = lines
            .next()
            .expect("a worker announces itself")
            .expect("read stdout");
        addr = line.rsplit("://").next().expect("an address").to_owned();
    }
    (server, addr)
}

/// Fetches `/` over TLS, trusting only `ca`.
fn fetch(addr: &str, ca: &Path) -> String {
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
    let (_server, addr) = start(&mut cmd, 2);
    let answer = fetch(&addr, &cert);
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
    let (_server, addr) = start(&mut cmd, 2);
    // Several requests: every one is a full handshake with some worker.
    for _ in 0..4 {
        let answer = fetch(&addr, &cert);
        assert!(
            answer.contains("Hello over TLS from worker "),
            "answer: {answer}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tokio_runtime_per_worker() {
    use std::io::{Read, Write};
    let (_server, addr) = start(&mut Command::new(example("tokio")), 2);
    let mut seen = std::collections::BTreeSet::new();
    // The kernel spreads connections over both workers' accept calls; ask until both have
    // answered (bounded, so a worker that never answers fails the test).
    for _ in 0..200 {
        let mut stream =
            std::net::TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect {addr:?}: {e}"));
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .expect("timeout");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "answer: {answer}");
        let id = answer
            .split("in worker ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("a worker id");
        seen.insert(id.to_owned());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "answers came from workers {seen:?} only");
}
