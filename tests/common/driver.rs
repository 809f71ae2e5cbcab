//! The driver's tools: starting a fixture master, following its report lines, talking to
//! its workers, and waiting for conditions with a deadline.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::fixture;
use super::procfs;

/// How long any expected event may take. Generous: the machine is small and noisy, and a
/// deadline only bounds how long a failing test takes to report.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The reaping backend a test runs under, selected through `PREFORK_BACKEND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Pidfd,
    Sigchld,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Pidfd, Backend::Sigchld];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Pidfd => "pidfd",
            Backend::Sigchld => "sigchld",
        }
    }
}

/// Polls `probe` until it returns `Ok`, or panics after `DEADLINE` with the last `Err`,
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

/// Sends `signal` to `pid`.
pub fn kill(pid: u32, signal: i32) {
    // SAFETY: kill takes plain integers.
    let ret = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(
        ret,
        0,
        "kill({pid}, {signal}): {}",
        io::Error::last_os_error()
    );
}

/// Lines read from a pipe by a thread of their own.
struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl Lines {
    fn capture(pipe: impl Read + Send + 'static) -> Arc<Lines> {
        let lines = Arc::new(Lines {
            lines: Mutex::new(Vec::new()),
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
                        sink.lock().push(line);
                        sink.changed.notify_all();
                    }
                }
            }
        });
        lines
    }

    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `probe` finds what it looks for in the lines read so far.
    fn wait<T>(&self, what: &str, mut probe: impl FnMut(&[String]) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        let mut lines = self.lock();
        loop {
            if let Some(found) = probe(&lines) {
                return found;
            }
            let now = Instant::now();
            if now >= deadline {
                drop(lines);
                panic!("timed out after {DEADLINE:?} waiting for {what}");
            }
            lines = self
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A worker exit reported by the fixture's `on_child_exit` hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub slot: usize,
    pub pid: u32,
    /// `Code(N)` or `Signal(N)`.
    pub how: String,
}

/// The master's state as the fixture reported it before or after a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub fds: usize,
    pub sigblk: u64,
    pub sigign: u64,
    pub sigcgt: u64,
    /// The `SIGCHLD` action: `dfl`, `ign`, `handler`, maybe with `+nocldwait`.
    pub chld: String,
}

/// A running fixture master, in a process group of its own. Dropping it kills the whole
/// group and reaps the master; a test that panicked also gets the fixture's output printed.
pub struct Fixture {
    child: Child,
    /// The master's pid, which is also its process group id.
    pub pid: u32,
    status: Option<ExitStatus>,
    out: Arc<Lines>,
    err: Arc<Lines>,
    label: String,
}

impl Fixture {
    /// Starts a fixture master under `backend` with the given `FX_*` options (or other
    /// environment variables, which override `PREFORK_BACKEND` too).
    pub fn start(backend: Backend, opts: &[(&str, &str)]) -> Fixture {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut cmd = Command::new(exe);
        for var in fixture::OPTION_VARS {
            cmd.env_remove(var);
        }
        cmd.env("PREFORK_FIXTURE", "master")
            .env(fixture::DRIVER_PID_VAR, std::process::id().to_string())
            .env(prefork::BACKEND_ENV, backend.name())
            // Workers panic on purpose in some cases: keep that cheap and quiet.
            .env("RUST_BACKTRACE", "0");
        for (k, v) in opts {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().expect("starting the fixture");
        let out = Lines::capture(child.stdout.take().expect("piped stdout"));
        let err = Lines::capture(child.stderr.take().expect("piped stderr"));
        let pid = child.id();
        Fixture {
            child,
            pid,
            status: None,
            out,
            err,
            label: format!("{} {:?}", backend.name(), opts),
        }
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.out.lock().clone()
    }

    /// Every stderr line so far.
    pub fn stderr(&self) -> Vec<String> {
        self.err.lock().clone()
    }

    /// Waits for a stdout line that `probe` accepts, and returns what it returned.
    pub fn wait_line<T>(&self, what: &str, mut probe: impl FnMut(&str) -> Option<T>) -> T {
        self.out
            .wait(what, |lines| lines.iter().find_map(|l| probe(l)))
    }

    /// Waits for a stdout line at index `from` or later that `probe` accepts; returns its
    /// index and what `probe` returned.
    pub fn wait_line_from<T>(
        &self,
        from: usize,
        what: &str,
        mut probe: impl FnMut(&str) -> Option<T>,
    ) -> (usize, T) {
        self.out.wait(what, |lines| {
            lines
                .iter()
                .enumerate()
                .skip(from)
                .find_map(|(i, l)| Some((i, probe(l)?)))
        })
    }

    /// Waits until `probe` accepts the stdout lines read so far as a whole.
    pub fn wait_lines<T>(&self, what: &str, probe: impl FnMut(&[String]) -> Option<T>) -> T {
        self.out.wait(what, probe)
    }

    /// Waits until at least `n` stderr lines contain `needle`.
    pub fn wait_stderr_count(&self, needle: &str, n: usize) {
        self.err
            .wait(&format!("{n} stderr lines with {needle:?}"), |lines| {
                (lines.iter().filter(|l| l.contains(needle)).count() >= n).then_some(())
            })
    }

    /// The listener's port.
    pub fn port(&self) -> u16 {
        self.wait_line("the port line", |l| l.strip_prefix("port ")?.parse().ok())
    }

    /// The pids `on_master_ready` reported, in slot order.
    pub fn ready(&self) -> Vec<u32> {
        self.wait_line("the ready line", |l| {
            l.strip_prefix("ready ").map(parse_pids)
        })
    }

    /// Every `ready` line so far.
    pub fn ready_lines(&self) -> Vec<Vec<u32>> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("ready ").map(parse_pids))
            .collect()
    }

    /// The state the fixture reported under `label` (`before`, `after1`, …).
    pub fn state(&self, label: &str) -> State {
        let prefix = format!("state {label} ");
        self.wait_line(&format!("the {label} state line"), |l| {
            let mut state = State {
                fds: 0,
                sigblk: 0,
                sigign: 0,
                sigcgt: 0,
                chld: String::new(),
            };
            for field in l.strip_prefix(&prefix)?.split_whitespace() {
                let (name, value) = field.split_once('=')?;
                match name {
                    "fds" => state.fds = value.parse().ok()?,
                    "sigblk" => state.sigblk = u64::from_str_radix(value, 16).ok()?,
                    "sigign" => state.sigign = u64::from_str_radix(value, 16).ok()?,
                    "sigcgt" => state.sigcgt = u64::from_str_radix(value, 16).ok()?,
                    "chld" => state.chld = value.to_owned(),
                    _ => return None,
                }
            }
            Some(state)
        })
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
            .filter_map(|l| parse_recover(l))
            .collect()
    }

    /// Every `exit` line so far.
    pub fn exits(&self) -> Vec<Exit> {
        self.lines().iter().filter_map(|l| parse_exit(l)).collect()
    }

    /// Waits for the `exit` line of `pid`.
    pub fn wait_exit_line(&self, pid: u32) -> Exit {
        self.wait_line(&format!("the exit line of pid {pid}"), |l| {
            parse_exit(l).filter(|e| e.pid == pid)
        })
    }

    /// Waits for the `recover OLD NEW` line of `old`, at index `from` or later, and checks
    /// that the hooks ran in order: exit of the old worker, spawn of the new one, recover.
    /// Returns the line's index and the new pid.
    pub fn wait_recover_from(&self, from: usize, old: u32) -> (usize, u32) {
        let (at, new) = self.wait_line_from(from, &format!("the recovery of pid {old}"), |l| {
            parse_recover(l).filter(|&(o, _)| o == old).map(|(_, n)| n)
        });
        let lines = self.lines();
        let spawn = format!("spawn {new}");
        let spawned_at = lines[..at].iter().rposition(|l| *l == spawn);
        let exited_at = lines[..at]
            .iter()
            .rposition(|l| parse_exit(l).is_some_and(|e| e.pid == old));
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

    /// [`Fixture::wait_recover_from`] from the first line.
    pub fn wait_recover(&self, old: u32) -> u32 {
        self.wait_recover_from(0, old).1
    }

    /// Sends `signal` to the master.
    pub fn signal(&self, signal: i32) {
        assert!(self.status.is_none(), "the master has already exited");
        kill(self.pid, signal);
    }

    /// Waits for the master to exit and reaps it.
    pub fn wait_exit(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let child = &mut self.child;
        let status = wait_until("the master to exit", || match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("still running".to_owned()),
            Err(e) => Err(format!("try_wait: {e}")),
        });
        self.status = Some(status);
        status
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

    /// The `result …` lines (`ok`, or `err DISPLAY`), one per run.
    pub fn results(&self) -> Vec<String> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("result ").map(str::to_owned))
            .collect()
    }

    /// The `debug …` lines (the errors' Debug form), one per failed run.
    pub fn debugs(&self) -> Vec<String> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("debug ").map(str::to_owned))
            .collect()
    }

    /// The `children …` lines: the master's children and zombies after each run.
    pub fn children_reports(&self) -> Vec<(usize, usize)> {
        self.lines()
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("children ")?;
                let (n, z) = rest.split_once(" zombies ")?;
                Some((n.parse().ok()?, z.parse().ok()?))
            })
            .collect()
    }

    /// Asserts that no process of the fixture's group is left.
    pub fn assert_group_empty(&self) {
        let left = procfs::group_members(self.pid);
        assert!(left.is_empty(), "processes of the fixture left: {left:?}");
    }

    /// Stops the master with `signal` and checks that it went cleanly: exit code 0 after
    /// `run` returned `Ok`, its children reaped, nothing of its process group left.
    pub fn stop_with(&mut self, signal: i32) {
        self.signal(signal);
        self.assert_clean_exit();
    }

    /// Checks that the master exited 0 with every run `Ok` and nothing left behind.
    pub fn assert_clean_exit(&mut self) {
        let code = self.finish();
        assert_eq!(code, fixture::EXIT_OK, "the master's exit code");
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

    /// Checks that the master exited with the fixture's error code after a run that
    /// returned `Err`, left no child or zombie, and that nothing of its group is left.
    /// Returns the error's Display.
    pub fn assert_failed_exit(&mut self) -> String {
        let code = self.finish();
        assert_eq!(
            code,
            fixture::EXIT_ERR,
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
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- fixture {} (master pid {}) stdout:",
                self.label, self.pid
            );
            for line in self.lines() {
                eprintln!("  {line}");
            }
            eprintln!("---- stderr:");
            for line in self.stderr() {
                eprintln!("  {line}");
            }
            eprintln!("----");
        }
        if self.status.is_none() || !procfs::group_members(self.pid).is_empty() {
            // SAFETY: kill takes plain integers; a negative pid names our fixture's group.
            unsafe { libc::kill(-(self.pid as libc::pid_t), libc::SIGKILL) };
        }
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn parse_pids(list: &str) -> Vec<u32> {
    list.split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect()
}

fn parse_recover(line: &str) -> Option<(u32, u32)> {
    let (old, new) = line.strip_prefix("recover ")?.split_once(' ')?;
    Some((old.parse().ok()?, new.parse().ok()?))
}

fn parse_exit(line: &str) -> Option<Exit> {
    let mut parts = line.strip_prefix("exit ")?.split_whitespace();
    Some(Exit {
        slot: parts.next()?.parse().ok()?,
        pid: parts.next()?.parse().ok()?,
        how: parts.next()?.to_owned(),
    })
}

/// A worker's answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub id: usize,
    pub pid: u32,
    /// `Worker::master_pid`.
    pub master: u32,
    /// `prefork::is_child()` in the worker.
    pub is_child: bool,
}

/// Sends one command to whichever worker accepts the connection and returns its answer.
pub fn ask(port: u16, command: &str, timeout: Duration) -> io::Result<Answer> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let parse = || {
        let mut fields = answer.split_whitespace();
        let answer = Answer {
            id: fields.next()?.parse().ok()?,
            pid: fields.next()?.parse().ok()?,
            master: fields.next()?.parse().ok()?,
            is_child: fields.next()?.parse().ok()?,
        };
        fields.next().is_none().then_some(answer)
    };
    parse().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("answer {answer:?}")))
}

/// [`ask`], keeping `(id, pid)` of the answer.
pub fn request(port: u16, command: &str, timeout: Duration) -> io::Result<(usize, u32)> {
    ask(port, command, timeout).map(|a| (a.id, a.pid))
}

/// Sends a command that is not idempotent (the worker acts on it once): one attempt, with
/// the whole deadline to be answered.
pub fn command(port: u16, command: &str) -> (usize, u32) {
    request(port, command, DEADLINE)
        .unwrap_or_else(|e| panic!("command {command:?} to the workers: {e}"))
}

/// Asks for ids until every slot `0..n` has answered from a pid that `accept` takes;
/// returns slot → pid.
pub fn collect_ids(port: u16, n: usize, accept: impl Fn(u32) -> bool) -> BTreeMap<usize, u32> {
    let mut seen = BTreeMap::new();
    wait_until(&format!("answers from {n} workers"), || {
        if let Ok((id, pid)) = request(port, "id", Duration::from_secs(2)) {
            if accept(pid) {
                seen.insert(id, pid);
            }
        }
        if (0..n).all(|id| seen.contains_key(&id)) {
            Ok(seen.clone())
        } else {
            Err(format!("{seen:?}"))
        }
    })
}

/// [`collect_ids`] accepting any pid.
pub fn all_ids(port: u16, n: usize) -> BTreeMap<usize, u32> {
    collect_ids(port, n, |_| true)
}

/// Asks for ids until `pid` answers; returns its id.
pub fn id_of(port: u16, pid: u32) -> usize {
    let mut seen = Vec::new();
    wait_until(&format!("an answer from pid {pid}"), || {
        match request(port, "id", Duration::from_secs(2)) {
            Ok((id, p)) if p == pid => return Ok(id),
            Ok(answer) => seen.push(answer),
            Err(_) => {}
        }
        Err(format!("answers {seen:?}"))
    })
}
