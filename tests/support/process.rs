//! Starting fixtures and other processes, following what they print, waiting for them, and
//! cleaning up after them even when a test fails.
//!
//! A [`Fixture`] is the test binary itself started in a fixture role, in a process group of
//! its own: dropping it kills the whole group (master, workers, anything they left) and
//! reaps the master, and hands what it printed to the runner, which shows it when the test
//! failed.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::RawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::backend::Backend;
use super::fixture::{DRIVER_PID_ENV, EXIT_OK, ROLE_ENV};
use super::report::{self, Exit};
use super::{procfs, runner};

/// How long any awaited condition may take before the test fails. Generous: the machine
/// may be small and busy (the demos' servers build a runtime per worker, under load), and a
/// deadline only bounds how long a failing test takes to report; the tests assert what
/// happens, never how fast.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `probe` until it returns `Ok`, or panics after [`DEADLINE`] with the last `Err`,
/// which describes what was seen instead.
pub fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {DEADLINE:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Polls `cond` until it holds, or panics after [`DEADLINE`].
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    wait_until(what, || {
        if cond() {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
}

/// Sends `signal` to `pid`; panics if it cannot.
pub fn kill(pid: u32, signal: i32) {
    if let Err(e) = try_kill(pid, signal) {
        panic!("kill({pid}, {signal}): {e}");
    }
}

/// Sends `signal` to `pid`, for clean-up paths where the process may be gone already.
pub fn try_kill(pid: u32, signal: i32) -> std::io::Result<()> {
    // SAFETY: kill takes plain integers.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// An exit status in words: `code N` or `signal N`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => format!("{status:?}"),
    }
}

/// Variables of the protocols under test, removed from every fixture's environment unless
/// the test sets them.
const PROTOCOL_VARS: &[&str] = &[
    "FASTHTTP_PREFORK_CHILD",
    "PREFORK_WORKER_ID",
    "PREFORK_REUSEPORT_ADDR",
    prefork::BACKEND_ENV,
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    // systemd's notification protocol: a test run under systemd must not notify it.
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// What goes on the fixture's descriptor 3.
#[derive(Clone, Copy)]
pub enum Fd3 {
    /// Whatever the test process has there (normally nothing: everything std opens is
    /// close-on-exec).
    Inherit,
    /// Closed explicitly.
    Closed,
    /// A copy of this test process's descriptor.
    Dup(RawFd),
}

/// How to start one fixture.
pub struct Spec {
    role: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
    fd3: Fd3,
    /// Copies of these descriptors of the test process go on the fixture's fds 3.. (for
    /// several sockets of socket activation); replaces `fd3` when not empty.
    passed: Vec<RawFd>,
    /// Variables set to the fixture's own pid (by `sh`, which the fixture replaces).
    self_pid_vars: Vec<String>,
}

impl Spec {
    /// A fixture in `role` (the value of `PREFORK_FIXTURE`), with no option set, every
    /// `FX_*` and protocol variable of the test's own environment removed, and two
    /// arguments that exec-mode workers must get too.
    pub fn new(role: &str) -> Spec {
        Spec {
            role: role.to_owned(),
            env: Vec::new(),
            args: vec!["fixture-arg".to_owned(), "with space".to_owned()],
            fd3: Fd3::Inherit,
            passed: Vec::new(),
            self_pid_vars: Vec::new(),
        }
    }

    /// Puts copies of `fds` on the fixture's descriptors 3, 4, … in order.
    pub fn pass_fds(mut self, fds: &[RawFd]) -> Spec {
        self.passed = fds.to_vec();
        self
    }

    /// Sets an environment variable (an `FX_*` option, or any other).
    pub fn env(mut self, k: &str, v: impl Into<String>) -> Spec {
        self.env.push((k.to_owned(), v.into()));
        self
    }

    /// Sets every `(name, value)` of `vars`.
    pub fn envs(mut self, vars: &[(&str, &str)]) -> Spec {
        for &(k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// Selects the reaping backend (`PREFORK_BACKEND`).
    pub fn backend(self, backend: Backend) -> Spec {
        self.env(prefork::BACKEND_ENV, backend.name())
    }

    pub fn fd3(mut self, fd3: Fd3) -> Spec {
        self.fd3 = fd3;
        self
    }

    /// Starts the fixture through `sh`, which exports `LISTEN_PID=$$` (its own pid, which
    /// the fixture keeps across `exec`) before exec'ing it: systemd's socket activation.
    pub fn listen_pid_self(self) -> Spec {
        self.self_pid_env("LISTEN_PID")
    }

    /// Starts the fixture through `sh`, which exports `name=$$` (its own pid, which the
    /// fixture keeps across `exec`) before exec'ing it: for variables that must name the
    /// fixture itself (`LISTEN_PID`, `WATCHDOG_PID`). `name` must be a shell identifier.
    pub fn self_pid_env(mut self, name: &str) -> Spec {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "not a variable name: {name:?}"
        );
        self.self_pid_vars.push(name.to_owned());
        self
    }

    /// The arguments the fixture is started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Starts the fixture in a process group of its own; panics if it cannot.
    pub fn start(self) -> Fixture {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut cmd = if !self.self_pid_vars.is_empty() {
            let exports: String = self
                .self_pid_vars
                .iter()
                .map(|v| format!("{v}=$$; export {v}; "))
                .collect();
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(format!("{exports}exec \"$0\" \"$@\""))
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
        for k in PROTOCOL_VARS {
            cmd.env_remove(k);
        }
        cmd.env(ROLE_ENV, &self.role)
            .env(DRIVER_PID_ENV, std::process::id().to_string())
            // Workers panic on purpose in some cases: keep that cheap and quiet.
            .env("RUST_BACKTRACE", "0");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if !self.passed.is_empty() {
            let mut passed = self.passed.clone();
            // SAFETY: the closure only calls fcntl(2) and dup2(2), which are
            // async-signal-safe, and allocates nothing (it rewrites `passed` in place).
            unsafe {
                cmd.pre_exec(move || {
                    let last = 3 + passed.len() as RawFd;
                    for fd in passed.iter_mut() {
                        // Out of the way of the targets first.
                        let moved = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, last);
                        if moved == -1 {
                            return Err(std::io::Error::last_os_error());
                        }
                        *fd = moved;
                    }
                    for (i, &fd) in passed.iter().enumerate() {
                        if libc::dup2(fd, 3 + i as RawFd) == -1 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                })
            };
        }
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
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting the fixture: {e}"));
        let out = Lines::capture(child.stdout.take().expect("piped stdout"));
        let err = Lines::capture(child.stderr.take().expect("piped stderr"));
        let pid = child.id();
        let options: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Fixture {
            child,
            pid,
            status: None,
            out,
            err,
            label: format!("{} [{}]", self.role, options.join(" ")),
        }
    }
}

/// Lines read from a pipe by a thread of their own.
struct Lines {
    state: Mutex<LinesState>,
    changed: Condvar,
}

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    /// Every writer has closed the pipe: no more lines will come.
    eof: bool,
}

impl Lines {
    fn capture(pipe: impl Read + Send + 'static) -> Arc<Lines> {
        let lines = Arc::new(Lines {
            state: Mutex::new(LinesState::default()),
            changed: Condvar::new(),
        });
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                        sink.lock().lines.push(line);
                        sink.changed.notify_all();
                    }
                }
            }
            sink.lock().eof = true;
            sink.changed.notify_all();
        });
        lines
    }

    fn lock(&self) -> MutexGuard<'_, LinesState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// Waits up to `timeout` until `probe` finds what it looks for in the lines read so
    /// far; `None` if it did not, by then or before the pipe was closed.
    fn wait_within<T>(
        &self,
        timeout: Duration,
        mut probe: impl FnMut(&[String]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if let Some(found) = probe(&state.lines) {
                return Some(found);
            }
            let now = Instant::now();
            if state.eof || now >= deadline {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// [`Lines::wait_within`] the [`DEADLINE`], panicking with `what` if it fails.
    fn wait<T>(&self, stream: &str, what: &str, probe: impl FnMut(&[String]) -> Option<T>) -> T {
        match self.wait_within(DEADLINE, probe) {
            Some(found) => found,
            None if self.lock().eof => {
                panic!("the fixture's {stream} ended without {what}")
            }
            None => panic!("timed out after {DEADLINE:?} waiting for {what} on {stream}"),
        }
    }
}

/// A running fixture, in a process group of its own. Dropping it kills the whole group and
/// reaps the fixture; what it printed goes to the runner, shown if the test fails.
pub struct Fixture {
    child: Child,
    /// The fixture's pid, which is also its process group id.
    pub pid: u32,
    status: Option<ExitStatus>,
    out: Arc<Lines>,
    err: Arc<Lines>,
    label: String,
}

impl Fixture {
    // ---- Lines ----------------------------------------------------------------------------

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.out.snapshot()
    }

    /// Every stderr line so far.
    pub fn stderr(&self) -> Vec<String> {
        self.err.snapshot()
    }

    /// Waits for a stdout line that `probe` accepts, and returns what it returned.
    pub fn wait_line<T>(&self, what: &str, mut probe: impl FnMut(&str) -> Option<T>) -> T {
        self.out
            .wait("stdout", what, |lines| lines.iter().find_map(|l| probe(l)))
    }

    /// Waits for a stderr line (the fixture's log) that `probe` accepts.
    pub fn wait_stderr_line<T>(&self, what: &str, mut probe: impl FnMut(&str) -> Option<T>) -> T {
        self.err
            .wait("stderr", what, |lines| lines.iter().find_map(|l| probe(l)))
    }

    /// Waits for a stdout line at index `from` or later that `probe` accepts; returns its
    /// index and what `probe` returned.
    pub fn wait_line_from<T>(
        &self,
        from: usize,
        what: &str,
        mut probe: impl FnMut(&str) -> Option<T>,
    ) -> (usize, T) {
        self.out.wait("stdout", what, |lines| {
            lines
                .iter()
                .enumerate()
                .skip(from)
                .find_map(|(i, l)| Some((i, probe(l)?)))
        })
    }

    /// Waits until `probe` accepts the stdout lines read so far as a whole.
    pub fn wait_lines<T>(&self, what: &str, probe: impl FnMut(&[String]) -> Option<T>) -> T {
        self.out.wait("stdout", what, probe)
    }

    /// The rest of the first stdout line that starts with `prefix` and a space.
    pub fn wait_field(&self, prefix: &str) -> String {
        let p = format!("{prefix} ");
        self.wait_line(&format!("a `{prefix}` line"), |l| {
            l.strip_prefix(&p).map(str::to_owned)
        })
    }

    /// Waits until `probe` accepts the stderr lines read so far as a whole.
    pub fn wait_stderr<T>(&self, what: &str, probe: impl FnMut(&[String]) -> Option<T>) -> T {
        self.err.wait("stderr", what, probe)
    }

    /// Waits until at least `n` stderr lines contain `needle`.
    pub fn wait_stderr_count(&self, needle: &str, n: usize) {
        self.wait_stderr(&format!("{n} stderr lines with {needle:?}"), |lines| {
            (lines.iter().filter(|l| l.contains(needle)).count() >= n).then_some(())
        })
    }

    /// Waits for a log (stderr) line that contains `needle`.
    pub fn expect_log(&self, needle: &str) {
        self.wait_stderr_count(needle, 1);
    }

    // ---- The shared report lines (see `report`) -------------------------------------------

    /// The pids of the first `ready` line, in slot order.
    pub fn ready(&self) -> Vec<u32> {
        self.wait_line("the ready line", |l| {
            l.strip_prefix("ready ").map(report::parse_pids)
        })
    }

    /// Every `ready` line so far.
    pub fn ready_lines(&self) -> Vec<Vec<u32>> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("ready ").map(report::parse_pids))
            .collect()
    }

    /// Pids of every `spawn` line so far, in order.
    pub fn spawns(&self) -> Vec<u32> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("spawn ")?.parse().ok())
            .collect()
    }

    /// Every `recover` line so far.
    pub fn recovers(&self) -> Vec<(u32, u32)> {
        self.lines()
            .iter()
            .filter_map(|l| report::parse_recover(l))
            .collect()
    }

    /// Every `exit` line so far.
    pub fn exits(&self) -> Vec<Exit> {
        self.lines()
            .iter()
            .filter_map(|l| report::parse_exit(l))
            .collect()
    }

    /// Waits for the `exit` line of `pid`.
    pub fn wait_exit_line(&self, pid: u32) -> Exit {
        self.wait_line(&format!("the exit line of pid {pid}"), |l| {
            report::parse_exit(l).filter(|e| e.pid == pid)
        })
    }

    /// Waits for the `recover OLD NEW` line of `old` at index `from` or later; returns the
    /// line's index and the new pid.
    pub fn wait_recover_line(&self, from: usize, old: u32) -> (usize, u32) {
        self.wait_line_from(from, &format!("the recovery of pid {old}"), |l| {
            report::parse_recover(l)
                .filter(|&(o, _)| o == old)
                .map(|(_, n)| n)
        })
    }

    /// [`Fixture::wait_recover_line`], also checking that the hooks ran in order: exit of
    /// the old worker, spawn of the new one, recover.
    pub fn wait_recover_from(&self, from: usize, old: u32) -> (usize, u32) {
        let (at, new) = self.wait_recover_line(from, old);
        let lines = self.lines();
        let spawn = format!("spawn {new}");
        let spawned_at = lines[..at].iter().rposition(|l| *l == spawn);
        let exited_at = lines[..at]
            .iter()
            .rposition(|l| report::parse_exit(l).is_some_and(|e| e.pid == old));
        match (exited_at, spawned_at) {
            (Some(e), Some(s)) => assert!(
                e < s,
                "the exit of {old} was reported after the spawn of {new} that replaced it"
            ),
            _ => panic!(
                "`recover {old} {new}` came without an earlier exit line for {old} \
                 ({exited_at:?}) and spawn line for {new} ({spawned_at:?})"
            ),
        }
        (at, new)
    }

    /// [`Fixture::wait_recover_from`] from the first line: the new pid.
    pub fn wait_recover(&self, old: u32) -> u32 {
        self.wait_recover_from(0, old).1
    }

    /// The `result …` lines (`ok`, or `err DISPLAY`), one per run.
    pub fn results(&self) -> Vec<String> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("result ").map(str::to_owned))
            .collect()
    }

    /// Waits for the first `result` line: `Ok(())` for `result ok`, `Err(display)` for
    /// `result err DISPLAY`.
    pub fn result(&self) -> Result<(), String> {
        let r = self.wait_field("result");
        if r == "ok" {
            Ok(())
        } else {
            Err(r.strip_prefix("err ").unwrap_or(&r).to_owned())
        }
    }

    /// The `debug …` lines (the errors' Debug form), one per failed run.
    pub fn debugs(&self) -> Vec<String> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("debug ").map(str::to_owned))
            .collect()
    }

    /// The `children N zombies Z` lines: the master's children and zombies after each run.
    pub fn children_reports(&self) -> Vec<(usize, usize)> {
        self.lines()
            .iter()
            .filter_map(|l| report::parse_children(l))
            .collect()
    }

    // ---- The process ----------------------------------------------------------------------

    /// Sends `signal` to the fixture.
    pub fn signal(&self, signal: i32) {
        assert!(self.status.is_none(), "the fixture has already exited");
        kill(self.pid, signal);
    }

    /// Waits up to `timeout` for the fixture to exit and reaps it.
    pub fn wait_exit_within(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => panic!(
                    "timed out after {timeout:?} waiting for the fixture {} to exit",
                    self.pid
                ),
                Err(e) => panic!("waiting for the fixture {}: {e}", self.pid),
            }
        };
        self.status = Some(status);
        status
    }

    /// Waits for the fixture to exit and reaps it.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.wait_exit_within(DEADLINE)
    }

    /// Waits for the fixture to exit and checks its exit code.
    pub fn expect_exit(&mut self, code: i32) {
        let status = self.wait_exit();
        assert_eq!(
            status.code(),
            Some(code),
            "the fixture exited with {}, expected code {code}",
            describe(status)
        );
    }

    /// Waits for the master to exit on its own and to have printed its last line; returns
    /// its exit code (panics if a signal killed it).
    pub fn finish(&mut self) -> i32 {
        let status = self.wait_exit();
        let code = status
            .code()
            .unwrap_or_else(|| panic!("the master was killed by signal {:?}", status.signal()));
        self.wait_line("the end line", |l| {
            l.strip_prefix("end ")?.parse::<i32>().ok()
        });
        code
    }

    /// Waits until every process in `pids` (members of this fixture's group) has ended.
    pub fn wait_gone(&self, pids: &[u32]) {
        wait_until(&format!("processes {pids:?} to end"), || {
            let left: Vec<u32> = pids
                .iter()
                .copied()
                .filter(|&p| !procfs::is_gone(p, self.pid))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still running: {left:?}"))
            }
        })
    }

    /// Asserts that no process of the fixture's group is left.
    pub fn assert_group_empty(&self) {
        let left = procfs::group_members(self.pid);
        assert!(left.is_empty(), "processes of the fixture left: {left:?}");
    }

    /// Stops the master with `signal` and checks that it went cleanly: exit code 0 after
    /// every run returned `Ok`, its children reaped, nothing of its process group left.
    pub fn stop_with(&mut self, signal: i32) {
        self.signal(signal);
        self.assert_clean_exit();
    }

    /// Checks that the master exited 0 with every run `Ok` and nothing left behind.
    pub fn assert_clean_exit(&mut self) {
        let code = self.finish();
        assert_eq!(code, EXIT_OK, "the master's exit code");
        let results = self.results();
        assert!(
            !results.is_empty() && results.iter().all(|r| r == "ok"),
            "run results: {results:?}"
        );
        for (n, z) in self.children_reports() {
            assert_eq!(
                (n, z),
                (0, 0),
                "children and zombies of the master after run"
            );
        }
        self.assert_group_empty();
    }

    /// Checks that the master exited with `EXIT_ERR` after a run that returned `Err`, left
    /// no child or zombie, and that nothing of its group is left. Returns the error's
    /// Display.
    pub fn assert_failed_exit(&mut self) -> String {
        let code = self.finish();
        assert_eq!(
            code,
            super::fixture::EXIT_ERR,
            "the master's exit code (run must return Err, not panic)"
        );
        let results = self.results();
        assert_eq!(results.len(), 1, "run results: {results:?}");
        let display = results[0]
            .strip_prefix("err ")
            .unwrap_or_else(|| panic!("run result {:?} is not an error", results[0]))
            .to_owned();
        assert_eq!(
            self.children_reports(),
            [(0, 0)],
            "children and zombies of the master after run"
        );
        self.assert_group_empty();
        display
    }

    /// What the fixture printed, for the runner to show if the test fails.
    fn transcript(&self) -> Vec<String> {
        const STDERR_TAIL: usize = 200;
        let mut t = vec![format!(
            "---- fixture {} (pid {}) stdout:",
            self.label, self.pid
        )];
        t.extend(self.lines().into_iter().map(|l| format!("  {l}")));
        let err = self.stderr();
        let skip = err.len().saturating_sub(STDERR_TAIL);
        if skip > 0 {
            t.push(format!("---- stderr (its last {STDERR_TAIL} lines):"));
        } else {
            t.push("---- stderr:".to_owned());
        }
        t.extend(err.into_iter().skip(skip).map(|l| format!("  {l}")));
        t
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if self.status.is_none() || !procfs::group_members(self.pid).is_empty() {
            // SAFETY: kill takes plain integers; a negative pid names the fixture's group,
            // which still has members (or whose leader we have not reaped).
            unsafe { libc::kill(-(self.pid as libc::pid_t), libc::SIGKILL) };
        }
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // What the processes wrote last, once the pipes close (a moment after the kill).
        let settle = Duration::from_secs(2);
        let _ = self.out.wait_within(settle, |_| None::<()>);
        let _ = self.err.wait_within(settle, |_| None::<()>);
        runner::attach(self.transcript());
    }
}

/// Runs `cmd` in a process group of its own with its output captured; kills the group if it
/// runs longer than `timeout` (and panics then). Its status, stdout and stderr.
pub fn run_captured(cmd: &mut Command, timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
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
    match status {
        Ok(s) => (s, out, err),
        Err(e) => panic!("{e}\nstdout:\n{out}\nstderr:\n{err}"),
    }
}

/// The names of the files in `dir`.
pub fn files_in(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("the test's directory")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A fresh directory in the system's temporary directory, named after `tag`.
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), tag)
    }

    /// A fresh directory in `base` (for a file system of its own: programs hard-linked
    /// from cargo's target directory need `CARGO_TARGET_TMPDIR`), named after `tag`, this
    /// process and a counter, so that tests on parallel threads never share one.
    pub fn new_in(base: &std::path::Path, tag: &str) -> TempDir {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = base.join(format!("prefork-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    pub fn path_str(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
