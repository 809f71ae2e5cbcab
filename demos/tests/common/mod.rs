//! What the demos' test binaries share beyond the library's test support (`tests/support`
//! of the repository, which each binary includes as `support`: waits, signals, `/proc`,
//! temporary directories): the example programs, a running server and its output, HTTP
//! requests, the `prefork-load` client and its report, and the workers a master's log names.
//!
//! Every wait is bounded by the support's [`DEADLINE`]; a server still running when a test
//! ends is stopped (TERM, then KILL), and so is a load client.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::support::process::{DEADLINE, TempDir, kill, try_kill};
use crate::support::procfs;

/// The target profile directory (`target/debug`) of this test binary.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_owned()
}

/// An example of this package; cargo builds them before it runs this test.
pub fn example(name: &str) -> PathBuf {
    profile_dir().join("examples").join(name)
}

/// The library's `hello` example. `cargo test` at the workspace root builds it, but
/// `cargo test -p prefork-demos` does not, so it is built here (cargo does not hold its
/// build lock while tests run).
pub fn hello_example() -> PathBuf {
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
pub fn require(tool: &str) {
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

/// A directory of its own for one test, removed when it is dropped: under cargo's temporary
/// directory for tests, on the same file system as the built examples (so that a program
/// can be hard-linked into it).
pub fn temp_dir(tag: &str) -> TempDir {
    TempDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), tag)
}

/// A running example: its master process, its stdout lines as they come, and its stderr
/// lines (the master's and the workers' log) as they come.
pub struct Server {
    child: Child,
    stdout: Receiver<String>,
    /// Ends (disconnects) when every process holding the stderr pipe has exited: the master,
    /// its workers, and a new master started by a binary upgrade with its workers.
    stderr: Receiver<String>,
    /// The stderr lines read so far.
    log: RefCell<Vec<String>>,
    /// Other masters of this server (started by a binary upgrade), stopped with it.
    others: RefCell<Vec<u32>>,
    /// The address the workers announced.
    pub addr: String,
}

impl Server {
    /// Starts the example with `args` plus `--addr 127.0.0.1:0 --workers N`, and waits until
    /// its N workers announced themselves (`worker K serving SCHEME://ADDR`).
    pub fn start(cmd: &mut Command, workers: usize) -> Server {
        cmd.args(["--addr", "127.0.0.1:0", "--workers", &workers.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(cmd);
        let stdout = lines_of(child.stdout.take().expect("piped stdout"));
        let stderr = lines_of(child.stderr.take().expect("piped stderr"));
        let mut server = Server {
            child,
            stdout,
            stderr,
            log: RefCell::new(Vec::new()),
            others: RefCell::new(Vec::new()),
            addr: String::new(),
        };
        for _ in 0..workers {
            let line = server.line(|l| l.contains(" serving "));
            server.addr = line.rsplit("://").next().expect("an address").to_owned();
        }
        server
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line that satisfies `want` (earlier ones are skipped).
    pub fn line(&self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(_) => {}
                Err(e) => panic!("no such line from the server: {e}\nlog:\n{}", self.log()),
            }
        }
    }

    /// Skips the stdout lines that have arrived so far.
    pub fn skip_lines(&self) {
        while self.stdout.try_recv().is_ok() {}
    }

    /// The next log line that satisfies `want` (the lines before it are kept in the log,
    /// and not matched again).
    pub fn log_line(&self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.log.borrow_mut().push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(e) => panic!("no such log line ({e}); log:\n{}", self.log()),
            }
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        let mut log = self.log.borrow_mut();
        while let Ok(line) = self.stderr.try_recv() {
            log.push(line);
        }
        log.join("\n")
    }

    /// The lines of the log so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log();
        self.log.borrow().clone()
    }

    /// Sends `signal` (`libc::SIGHUP`, …) to the master.
    pub fn signal(&self, signal: i32) {
        kill(self.pid(), signal);
    }

    /// Stops `pid`, another master of this server, when the server is dropped.
    pub fn adopt(&self, pid: u32) {
        self.others.borrow_mut().push(pid);
    }

    /// Waits until the log ends (the master and every process it started, other masters
    /// included, have exited), then for the master; returns its status and the log.
    pub fn wait_exit(&mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => self.log.borrow_mut().push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "the server did not exit within {DEADLINE:?}; log:\n{}",
                    self.log()
                ),
            }
        }
        let status = self.child.wait().expect("wait for the master");
        (status, self.log())
    }

    /// Waits for the master process alone to exit (another master may still hold the log).
    pub fn wait_master(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the master") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the master did not exit within {DEADLINE:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let mut pids = self.others.borrow().clone();
        // New masters of binary upgrades, adopted or not (a test may have failed before).
        pids.extend(self.log_lines().iter().filter_map(|l| {
            let (_, rest) = l.split_once("] upgrade: new master ")?;
            let (pid, _) = rest.split_once(" started")?;
            pid.parse::<u32>().ok()
        }));
        if let Ok(None) = self.child.try_wait() {
            pids.push(self.child.id());
        }
        pids.retain(|&pid| procfs::is_alive(pid));
        if pids.is_empty() {
            return;
        }
        for &pid in &pids {
            let _ = try_kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    for &pid in &pids {
                        let _ = try_kill(pid, libc::SIGKILL);
                    }
                    break;
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd`, again if the program was busy: a program file just written may still be
/// open for writing in a child another test thread forked at that moment (until that child
/// executes its own program).
fn spawn(cmd: &mut Command) -> Child {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result.unwrap_or_else(|e| panic!("start {cmd:?}: {e}")),
        }
    }
}

/// The lines of `from`, as they are read, through a channel (which disconnects at the end).
pub fn lines_of(from: impl Read + Send + 'static) -> Receiver<String> {
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

// ---------------------------------------------------------------------------------------
// HTTP

pub fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream
}

pub fn send_get(stream: &mut TcpStream, path: &str) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send a request");
}

/// Reads one response with a `content-length` body: (status, head, body).
pub fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        let n = loop {
            match stream.read(&mut byte) {
                // A signal that reached this test process is no outcome of the server's (on a
                // socket with a read timeout, the kernel ends the read with EINTR even where
                // nothing handles the signal): read again, as `read_exact` does for the body.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r.expect("read a response head"),
            }
        };
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

pub fn get(addr: &str, path: &str) -> (u16, String, String) {
    let mut stream = connect(addr);
    send_get(&mut stream, path);
    read_response(&mut stream)
}

/// An answer of the `hello` example: `GREETING from worker SLOT (pid PID)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hello {
    pub greeting: String,
    pub slot: usize,
    pub pid: u32,
}

impl Hello {
    pub fn parse(body: &str) -> Option<Hello> {
        let (greeting, rest) = body.trim_end().split_once(" from worker ")?;
        let (slot, rest) = rest.split_once(" (pid ")?;
        Some(Hello {
            greeting: greeting.to_owned(),
            slot: slot.parse().ok()?,
            pid: rest.strip_suffix(')')?.parse().ok()?,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Load

/// A running `prefork-load` client.
pub struct Load {
    child: Child,
}

/// The pid in a master's `upgrade: new master PID …` log line.
pub fn new_master_pid(line: &str) -> u32 {
    line.split("new master ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// Checks that every load still runs now that `what` is over (so that it covered all of
/// it), then waits for each one's report.
pub fn finish_loads<const N: usize>(
    server: &Server,
    mut loads: [Load; N],
    what: &str,
) -> [serde_json::Value; N] {
    for load in &mut loads {
        assert!(
            load.running(),
            "the load ended before {what} did; log:\n{}",
            server.log()
        );
    }
    loads.map(Load::finish)
}

impl Load {
    /// Starts `prefork-load` against `addr` and returns once every one of its clients has
    /// had a first answer (or failed).
    pub fn start(addr: &str, args: &[&str]) -> Load {
        let mut child = Command::new(env!("CARGO_BIN_EXE_prefork-load"))
            .args(["--addr", addr, "--timeout", "10000"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start prefork-load");
        let started = lines_of(child.stderr.take().expect("piped stderr"));
        let load = Load { child };
        let line = started
            .recv_timeout(DEADLINE)
            .expect("prefork-load reports its start");
        assert!(line.contains("first answer"), "prefork-load: {line}");
        load
    }

    /// Whether the client is still sending requests.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the end of the run (its `--duration` or `--requests`) and returns the
    /// report.
    pub fn finish(mut self) -> serde_json::Value {
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .expect("piped stdout")
            .read_to_string(&mut out)
            .expect("read the result");
        assert!(self.child.wait().expect("wait for prefork-load").success());
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON {out:?}: {e}"))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The outcome of a `prefork-load` run: its JSON line. `on_start` runs once every client
/// has had a first answer.
pub fn load(addr: &str, args: &[&str], on_start: impl FnOnce()) -> serde_json::Value {
    let load = Load::start(addr, args);
    on_start();
    load.finish()
}

/// Every request of the run was answered 200; returns how many.
pub fn all_ok(report: &serde_json::Value) -> u64 {
    for outcome in ["refused", "reset", "timeout", "other"] {
        assert_eq!(report[outcome], 0, "{outcome} requests: {report}");
    }
    let ok = report["ok"].as_u64().expect("an ok count");
    assert!(ok > 0 && report["requests"] == ok, "{report}");
    ok
}

/// Every request of a run that saw the server stop was answered 200 or refused (the port
/// was closing); returns (ok, refused).
pub fn ok_or_refused(report: &serde_json::Value) -> (u64, u64) {
    for outcome in ["reset", "timeout", "other"] {
        assert_eq!(report[outcome], 0, "{outcome} requests: {report}");
    }
    let ok = report["ok"].as_u64().expect("an ok count");
    let refused = report["refused"].as_u64().expect("a refused count");
    assert!(ok > 0 && report["requests"] == ok + refused, "{report}");
    (ok, refused)
}

/// How many answers each distinct first body line got.
pub fn bodies(report: &serde_json::Value) -> BTreeMap<String, u64> {
    assert_eq!(
        report["bodies_other"], 0,
        "too many distinct bodies: {report}"
    );
    report["bodies"]
        .as_object()
        .expect("per-body counts")
        .iter()
        .map(|(body, n)| (body.clone(), n.as_u64().expect("a count")))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Processes

/// The live children of `pid` (a master's workers), as a set.
pub fn children(pid: u32) -> BTreeSet<u32> {
    procfs::live_children(pid).into_iter().collect()
}

/// The workers a master's log says it started last in each slot (`worker K started (pid P)`,
/// `worker K respawned (pid P, was Q)`), from the lines of master `pid`.
pub fn started_workers(log: &[String], master: u32) -> BTreeMap<usize, u32> {
    let prefix = format!("[INFO {master}] worker ");
    let mut slots = BTreeMap::new();
    for line in log {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((slot, rest)) = rest.split_once(' ') else {
            continue;
        };
        let pid = rest
            .strip_prefix("started (pid ")
            .or_else(|| rest.strip_prefix("respawned (pid "))
            .and_then(|r| r.split([')', ',']).next());
        if let (Ok(slot), Some(Ok(pid))) = (slot.parse(), pid.map(str::parse)) {
            slots.insert(slot, pid);
        }
    }
    slots
}

/// A deploy directory: `server`, a copy of the `hello` example, and the next program, staged
/// beside it until it is renamed over `server`.
pub struct Deploy {
    pub dir: TempDir,
    pub server: PathBuf,
}

impl Deploy {
    pub fn new(tag: &str) -> Deploy {
        let dir = temp_dir(&format!("upgrade-{tag}"));
        let server = dir.path().join("server");
        let hello = hello_example();
        // A hard link is a copy that nobody writes, so it cannot be busy when executed.
        if std::fs::hard_link(&hello, &server).is_err() {
            std::fs::copy(&hello, &server).expect("copy the hello example");
        }
        Deploy { dir, server }
    }

    /// Writes the next program (before anything runs from this directory, so that no
    /// process forked meanwhile holds it open for writing when it is executed).
    pub fn stage(&self, script: &str, mode: u32) -> PathBuf {
        let path = self.dir.path().join("server.next");
        std::fs::write(&path, script).expect("write the next program");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .expect("set its mode");
        path
    }

    /// Renames the staged program over `server`, as a deploy does.
    pub fn replace(&self, staged: &Path) {
        std::fs::rename(staged, &self.server).expect("rename the new program over the old");
    }
}

/// `path` quoted for `sh`.
pub fn quoted(path: &Path) -> String {
    format!(
        "'{}'",
        path.to_str().expect("UTF-8 path").replace('\'', r"'\''")
    )
}
