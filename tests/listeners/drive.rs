//! The driver's side: starting fixture masters, watching their report lines, talking to
//! their workers, and cleaning up every process even when a test fails.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::RawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::fixture;
use crate::procfs;

/// How long any awaited condition may take before the test fails. Generous: the tests
/// assert what happens, never how fast.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The environment variable that makes this binary a fixture.
pub const FIXTURE_ENV: &str = "PREFORK_FIXTURE";

/// Variables of the protocols under test, removed from every fixture's environment unless a
/// test sets them.
const PROTOCOL_VARS: &[&str] = &[
    "FASTHTTP_PREFORK_CHILD",
    "PREFORK_WORKER_ID",
    "PREFORK_REUSEPORT_ADDR",
    "PREFORK_BACKEND",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
];

pub type TestResult = Result<String, String>;

thread_local! {
    /// What the last fixtures printed, shown when a test fails.
    static TRANSCRIPT: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Takes the transcript of the fixtures the current test ran.
pub fn take_transcript() -> Vec<String> {
    TRANSCRIPT.with(|t| std::mem::take(&mut *t.borrow_mut()))
}

/// What goes on the fixture's descriptor 3.
#[derive(Clone, Copy)]
pub enum Fd3 {
    /// Whatever the driver has there (normally nothing: everything std opens is
    /// close-on-exec).
    Inherit,
    /// Closed explicitly.
    Closed,
    /// A copy of this driver descriptor.
    Dup(RawFd),
}

/// How to start one fixture.
pub struct Spec {
    env: Vec<(String, String)>,
    fd3: Fd3,
    /// Run through `sh`, which exports `LISTEN_PID=$$` (its own pid, which the fixture keeps
    /// across `exec`) before exec'ing the fixture.
    listen_pid_self: bool,
    args: Vec<String>,
}

impl Spec {
    pub fn new() -> Spec {
        Spec {
            env: Vec::new(),
            fd3: Fd3::Inherit,
            listen_pid_self: false,
            args: vec!["fixture-arg".to_owned(), "with space".to_owned()],
        }
    }

    pub fn env(mut self, k: &str, v: impl Into<String>) -> Spec {
        self.env.push((k.to_owned(), v.into()));
        self
    }

    pub fn fd3(mut self, fd3: Fd3) -> Spec {
        self.fd3 = fd3;
        self
    }

    pub fn listen_pid_self(mut self) -> Spec {
        self.listen_pid_self = true;
        self
    }

    /// The arguments the fixture is started with (exec-mode workers must get the same).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    pub fn start(self) -> Result<Fixture, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut cmd = if self.listen_pid_self {
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg("LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"")
                .arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(&self.args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FX_") {
                cmd.env_remove(k);
            }
        }
        for k in PROTOCOL_VARS.iter().chain(fixture::OPTION_VARS) {
            cmd.env_remove(k);
        }
        cmd.env(FIXTURE_ENV, "listen");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that cleanup can kill master and workers at once.
            .process_group(0);
        match self.fd3 {
            Fd3::Inherit => {}
            Fd3::Closed => {
                // SAFETY: the closure only calls close(2), which is async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::close(3);
                        Ok(())
                    })
                };
            }
            Fd3::Dup(fd) => {
                // SAFETY: the closure only calls dup2(2) and fcntl(2), which are
                // async-signal-safe, and allocates nothing.
                unsafe {
                    cmd.pre_exec(move || {
                        if fd == 3 {
                            // dup2 onto itself would keep close-on-exec set.
                            if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                                return Err(std::io::Error::last_os_error());
                            }
                        } else if libc::dup2(fd, 3) == -1 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    })
                };
            }
        }
        let mut child = cmd.spawn().map_err(|e| format!("spawn fixture: {e}"))?;
        let pid = child.id();
        let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stderr = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        spawn_reader(out, Arc::clone(&lines));
        spawn_reader(err, Arc::clone(&stderr));
        Ok(Fixture {
            child,
            pid,
            lines,
            stderr,
            status: None,
        })
    }
}

type Lines = Arc<(Mutex<Vec<String>>, Condvar)>;

fn spawn_reader(from: impl Read + Send + 'static, into: Lines) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            let (lock, cv) = &*into;
            lock.lock().unwrap().push(line);
            cv.notify_all();
        }
        let (lock, cv) = &*into;
        lock.lock().unwrap().push("<eof>".to_owned());
        cv.notify_all();
    });
}

/// A running fixture master. Dropping it kills its whole process group and reaps it.
pub struct Fixture {
    child: Child,
    pub pid: u32,
    lines: Lines,
    stderr: Lines,
    status: Option<ExitStatus>,
}

/// One worker's `serving` line.
#[derive(Debug, Clone, Copy)]
pub struct Serving {
    pub id: usize,
    pub pid: u32,
    pub port: u16,
    pub inode: u64,
}

impl Fixture {
    /// Waits until `f` finds what it looks for in the report lines.
    pub fn wait_for<T>(&self, what: &str, f: impl Fn(&[String]) -> Option<T>) -> Result<T, String> {
        wait_lines(&self.lines, DEADLINE, what, f)
    }

    /// Waits until `f` finds what it looks for in the stderr lines.
    pub fn wait_stderr<T>(
        &self,
        what: &str,
        f: impl Fn(&[String]) -> Option<T>,
    ) -> Result<T, String> {
        wait_lines(&self.stderr, DEADLINE, what, f)
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.0.lock().unwrap().clone()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.0.lock().unwrap().clone()
    }

    /// The first line starting with `prefix` (and a space), without the prefix.
    pub fn wait_line(&self, prefix: &str) -> Result<String, String> {
        let p = format!("{prefix} ");
        self.wait_for(&format!("a `{prefix}` line"), |lines| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(&p).map(str::to_owned))
        })
    }

    /// The pids of the `ready` line, in slot order.
    pub fn ready(&self) -> Result<Vec<u32>, String> {
        let line = self.wait_line("ready")?;
        line.split_whitespace()
            .map(|p| p.parse().map_err(|_| format!("bad ready line {line:?}")))
            .collect()
    }

    /// Waits for the `serving` line of each of `pids`, returned in the same order.
    pub fn serving(&self, pids: &[u32]) -> Result<Vec<Serving>, String> {
        self.wait_for("a `serving` line from every worker", |lines| {
            let all = parse_serving(lines);
            pids.iter()
                .map(|&p| all.iter().find(|s| s.pid == p).copied())
                .collect()
        })
    }

    /// The `ready` pids once every worker serves, checking that worker k reports slot k.
    pub fn ready_serving(&self) -> Result<Vec<Serving>, String> {
        let pids = self.ready()?;
        let serving = self.serving(&pids)?;
        for (k, s) in serving.iter().enumerate() {
            if s.id != k {
                return Err(format!(
                    "worker pid {} of slot {k} reports id {}",
                    s.pid, s.id
                ));
            }
        }
        Ok(serving)
    }

    /// The `recover OLD NEW` line for `old`: the new pid.
    pub fn recovered(&self, old: u32) -> Result<u32, String> {
        let prefix = format!("recover {old} ");
        self.wait_for(&format!("worker {old} to be replaced"), |lines| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        })
    }

    pub fn signal(&self, signal: i32) -> Result<(), String> {
        kill(self.pid, signal)
    }

    /// Waits for the master to exit; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let end = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.status = Some(s);
                    return Ok(s);
                }
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => return Err(format!("master {} did not exit in time", self.pid)),
                Err(e) => return Err(format!("waiting for master {}: {e}", self.pid)),
            }
        }
    }

    /// Waits for the master to exit and checks its exit code.
    pub fn expect_exit(&mut self, code: i32) -> Result<(), String> {
        let status = self.wait_exit(DEADLINE)?;
        if status.code() != Some(code) {
            return Err(format!(
                "master exited with {}, expected code {code}",
                describe(status)
            ));
        }
        Ok(())
    }

    /// Waits until every process in `pids` (members of this fixture's group) has ended.
    pub fn wait_gone(&self, pids: &[u32]) -> Result<(), String> {
        wait_until(&format!("processes {pids:?} to end"), || {
            pids.iter().all(|&p| procfs::is_gone(p, self.pid))
        })
    }

    /// The `result` line: `Ok(())` for `result ok`, `Err(display)` otherwise.
    pub fn result(&self) -> Result<Result<(), String>, String> {
        let r = self.wait_line("result")?;
        Ok(if r == "ok" {
            Ok(())
        } else {
            Err(r.strip_prefix("err ").unwrap_or(&r).to_owned())
        })
    }

    /// Expects `listen_and_serve` to have failed before any worker was started; its
    /// `Display` and `Debug` forms.
    pub fn expect_early_error(&mut self) -> Result<(String, String), String> {
        self.expect_exit(fixture::EXIT_ERR)?;
        let display = match self.result()? {
            Ok(()) => return Err("listen_and_serve returned Ok, expected an error".to_owned()),
            Err(d) => d,
        };
        let debug = self.wait_line("debug")?;
        let lines = self.lines();
        if let Some(s) = lines.iter().find(|l| l.starts_with("spawn ")) {
            return Err(format!("a worker was started before the error: {s:?}"));
        }
        if lines.iter().any(|l| l.starts_with("serving ")) {
            return Err("a worker served before the error".to_owned());
        }
        let children = self.wait_line("children")?;
        if children != "0" {
            return Err(format!(
                "the master had {children} children after the error"
            ));
        }
        Ok((display, debug))
    }

    /// Stops the master with SIGTERM and checks a clean stop: `result ok`, exit 0, every
    /// worker in `pids` gone.
    pub fn stop(&mut self, pids: &[u32]) -> Result<(), String> {
        self.signal(libc::SIGTERM)?;
        self.expect_exit(0)?;
        if let Err(e) = self.result()? {
            return Err(format!("listen_and_serve failed: {e}"));
        }
        self.wait_gone(pids)
    }

    /// Checks the master's log (stderr) mentions `needle`.
    pub fn expect_log(&self, needle: &str) -> Result<(), String> {
        self.wait_stderr(&format!("a log line containing {needle:?}"), |lines| {
            lines.iter().any(|l| l.contains(needle)).then_some(())
        })
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // SAFETY: killpg takes plain integers; the group is the fixture's own (its pid).
        unsafe { libc::killpg(self.pid as libc::pid_t, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Give the readers a moment to drain what the processes wrote last.
        let _ = wait_lines(&self.lines, Duration::from_secs(2), "", |l| {
            l.last().filter(|s| *s == "<eof>").map(|_| ())
        });
        let mut transcript = vec![format!("--- fixture {} stdout:", self.pid)];
        transcript.extend(self.lines().into_iter().map(|l| format!("    {l}")));
        transcript.push(format!("--- fixture {} stderr (last 40 lines):", self.pid));
        let err = self.stderr_lines();
        let skip = err.len().saturating_sub(40);
        transcript.extend(err.into_iter().skip(skip).map(|l| format!("    {l}")));
        TRANSCRIPT.with(|t| t.borrow_mut().extend(transcript));
    }
}

fn wait_lines<T>(
    lines: &Lines,
    timeout: Duration,
    what: &str,
    f: impl Fn(&[String]) -> Option<T>,
) -> Result<T, String> {
    let end = Instant::now() + timeout;
    let (lock, cv) = &**lines;
    let mut guard = lock.lock().unwrap();
    loop {
        if let Some(found) = f(&guard) {
            return Ok(found);
        }
        let now = Instant::now();
        if now >= end {
            return Err(format!("timed out waiting for {what}"));
        }
        guard = cv.wait_timeout(guard, end - now).unwrap().0;
    }
}

/// Polls `cond` until it holds, or fails after [`DEADLINE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let end = Instant::now() + DEADLINE;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn parse_serving(lines: &[String]) -> Vec<Serving> {
    lines
        .iter()
        .filter_map(|l| {
            let mut f = l.strip_prefix("serving ")?.split_whitespace();
            Some(Serving {
                id: f.next()?.parse().ok()?,
                pid: f.next()?.parse().ok()?,
                port: f.next()?.parse().ok()?,
                inode: f.next()?.parse().ok()?,
            })
        })
        .collect()
}

pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => format!("{status:?}"),
    }
}

pub fn kill(pid: u32, signal: i32) -> Result<(), String> {
    // SAFETY: kill takes plain integers.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } == -1 {
        return Err(format!(
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A worker's answer: `ID PID INODE[ EXTRA]`.
#[derive(Debug, Clone)]
pub struct Answer {
    pub id: usize,
    pub pid: u32,
    pub inode: u64,
    pub extra: String,
}

fn parse_answer(text: &str) -> Option<Answer> {
    let line = text.lines().next()?;
    let mut f = line.splitn(4, ' ');
    Some(Answer {
        id: f.next()?.parse().ok()?,
        pid: f.next()?.parse().ok()?,
        inode: f.next()?.parse().ok()?,
        extra: f.next().unwrap_or("").to_owned(),
    })
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(DEADLINE))
        .map_err(|e| format!("set_read_timeout: {e}"))?;
    Ok(stream)
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends `command`, reads the answer until the worker closes.
pub fn ask_at(addr: SocketAddr, command: &str) -> Result<Answer, String> {
    let mut stream = connect(addr)?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    parse_answer(&text).ok_or_else(|| format!("bad answer {text:?} from {addr}"))
}

pub fn ask(port: u16, command: &str) -> Result<Answer, String> {
    ask_at(local(port), command)
}

/// Sends `command` (which starts with `hold`): the connection keeps its worker busy until
/// dropped; the worker's answer.
pub fn hold(port: u16, command: &str) -> Result<(TcpStream, Answer), String> {
    let mut stream = connect(local(port))?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    let answer = parse_answer(&line).ok_or_else(|| format!("bad answer {line:?}"))?;
    Ok((stream, answer))
}

/// Holds one connection per worker: with a shared listener, a busy worker accepts nothing,
/// so `n` held connections are answered by `n` different workers. Their answers, sorted by
/// worker id.
pub fn hold_all(port: u16, n: usize) -> Result<(Vec<TcpStream>, Vec<Answer>), String> {
    hold_all_with(port, n, "hold")
}

/// [`hold_all`] with a command of its own (which starts with `hold`).
pub fn hold_all_with(
    port: u16,
    n: usize,
    command: &str,
) -> Result<(Vec<TcpStream>, Vec<Answer>), String> {
    let mut streams = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..n {
        let (s, a) = hold(port, command)?;
        streams.push(s);
        answers.push(a);
    }
    answers.sort_by_key(|a| a.id);
    Ok((streams, answers))
}

/// Checks that the answers come from exactly the workers `serving` (worker k from slot k).
pub fn expect_answers_from(answers: &[Answer], serving: &[Serving]) -> Result<(), String> {
    let got: Vec<(usize, u32)> = answers.iter().map(|a| (a.id, a.pid)).collect();
    let want: Vec<(usize, u32)> = serving.iter().map(|s| (s.id, s.pid)).collect();
    if got != want {
        return Err(format!("answers from (id, pid) {got:?}, expected {want:?}"));
    }
    Ok(())
}

/// Asks until every worker of `serving` has answered at least once (for `SO_REUSEPORT`,
/// where the kernel picks the socket by hashing the connection). At most 400 connections.
pub fn ask_until_all(port: u16, serving: &[Serving]) -> Result<Vec<Answer>, String> {
    let mut seen: Vec<Option<Answer>> = vec![None; serving.len()];
    for _ in 0..400 {
        let a = ask(port, "id")?;
        let Some(k) = serving.iter().position(|s| s.pid == a.pid) else {
            return Err(format!("answer from unknown worker {a:?}"));
        };
        if serving[k].id != a.id {
            return Err(format!(
                "worker pid {} answers id {}, expected {}",
                a.pid, a.id, k
            ));
        }
        seen[k] = Some(a);
        if seen.iter().all(Option::is_some) {
            return Ok(seen.into_iter().flatten().collect());
        }
    }
    let missing: Vec<u32> = serving
        .iter()
        .zip(&seen)
        .filter(|(_, a)| a.is_none())
        .map(|(s, _)| s.pid)
        .collect();
    Err(format!(
        "workers {missing:?} never answered in 400 connections"
    ))
}

/// Runs `cmd` in a process group of its own with its output captured; kills the group if it
/// runs longer than `timeout`. Its status, stdout and stderr.
pub fn run_captured(
    cmd: &mut Command,
    timeout: Duration,
) -> Result<(ExitStatus, String, String), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let collect = |mut from: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = from.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = collect(Box::new(child.stdout.take().expect("piped stdout")));
    let err = collect(Box::new(child.stderr.take().expect("piped stderr")));
    let end = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => break Err(format!("{cmd:?} ran longer than {timeout:?}")),
            Err(e) => break Err(format!("waiting for {cmd:?}: {e}")),
        }
    };
    // Whatever it left behind (or all of it, on a timeout).
    // SAFETY: killpg takes plain integers; the group is the child's own (its pid).
    unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = child.kill();
    let _ = child.wait();
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    status.map(|s| (s, out, err))
}
