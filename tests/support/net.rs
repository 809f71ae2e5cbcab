//! Talking to a fixture's workers over TCP. Every fixture's workers serve a line protocol:
//! the client sends one command line, the worker answers one line `ID PID[ REST]` (its slot,
//! its pid, and what the fixture adds) and closes the connection, unless the command asks
//! it to hold it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::process::{DEADLINE, wait_until};

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A worker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The worker's slot.
    pub id: usize,
    pub pid: u32,
    /// What follows the pid, without the separating space (the fixture's own fields).
    pub rest: String,
}

impl Answer {
    /// Parses one answer line, `ID PID[ REST]`, with or without its newline; `None` for
    /// anything else (also for more than one line).
    pub fn parse(text: &str) -> Option<Answer> {
        let line = text.strip_suffix('\n').unwrap_or(text);
        if line.contains('\n') {
            return None;
        }
        let mut f = line.splitn(3, ' ');
        Some(Answer {
            id: f.next()?.parse().ok()?,
            pid: f.next()?.parse().ok()?,
            rest: f.next().unwrap_or("").to_owned(),
        })
    }
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    Ok(stream)
}

/// Sends `command` to whichever worker accepts the connection and reads its answer until
/// the worker closes; every step within `timeout`.
pub fn try_ask_at(addr: SocketAddr, command: &str, timeout: Duration) -> Result<Answer, String> {
    let mut stream = connect(addr, timeout)?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    Answer::parse(&text).ok_or_else(|| format!("bad answer {text:?} from {addr}"))
}

/// Where a [`Load`] or an `ask` connects: `127.0.0.1:port`, or a Unix socket (a path, or
/// `@NAME` in the abstract namespace).
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(u16),
    Unix(std::path::PathBuf),
}

impl Target {
    /// A connection to the target; `Err` as `connect` failed.
    pub fn connect_stream(&self) -> std::io::Result<Box<dyn Conn>> {
        self.connect()
    }

    fn connect(&self) -> std::io::Result<Box<dyn Conn>> {
        match self {
            Target::Tcp(port) => Ok(Box::new(TcpStream::connect_timeout(
                &local(*port),
                DEADLINE,
            )?)),
            Target::Unix(path) => {
                use std::os::linux::net::SocketAddrExt;
                use std::os::unix::ffi::OsStrExt;
                use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
                let bytes = path.as_os_str().as_bytes();
                let stream = match bytes.strip_prefix(b"@") {
                    Some(name) => UnixStream::connect_addr(&UnixAddr::from_abstract_name(name)?)?,
                    None => UnixStream::connect(path)?,
                };
                Ok(Box::new(stream))
            }
        }
    }
}

/// A connected stream of either kind.
pub trait Conn: Read + Write + Send {
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()>;
}

impl Conn for TcpStream {
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, d)
    }
}

impl Conn for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, d)
    }
}

/// Sends `command` to whichever worker accepts a connection to `target`; its answer.
pub fn try_ask_target(target: &Target, command: &str) -> Result<Answer, String> {
    let mut stream = target
        .connect()
        .map_err(|e| format!("connect {target:?}: {e}"))?;
    stream
        .set_read_timeout(Some(DEADLINE))
        .map_err(|e| format!("timeout: {e}"))?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| format!("send to {target:?}: {e}"))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| format!("read from {target:?}: {e}"))?;
    Answer::parse(&text).ok_or_else(|| format!("bad answer {text:?} from {target:?}"))
}

/// [`try_ask_target`]; panics without an answer.
pub fn ask_target(target: &Target, command: &str) -> Answer {
    try_ask_target(target, command)
        .unwrap_or_else(|e| panic!("command {command:?} to the workers: {e}"))
}

/// [`try_ask_at`] on `127.0.0.1:port`.
pub fn try_ask(port: u16, command: &str, timeout: Duration) -> Result<Answer, String> {
    try_ask_at(local(port), command, timeout)
}

/// Sends `command` once, with the whole [`DEADLINE`] to be answered (for commands the
/// worker acts on: not to be repeated); panics without an answer.
pub fn ask_at(addr: SocketAddr, command: &str) -> Answer {
    try_ask_at(addr, command, DEADLINE)
        .unwrap_or_else(|e| panic!("command {command:?} to the workers: {e}"))
}

/// [`ask_at`] on `127.0.0.1:port`.
pub fn ask(port: u16, command: &str) -> Answer {
    ask_at(local(port), command)
}

/// Sends `command`, which asks the worker to hold the connection: the worker stays busy
/// until the returned stream is dropped. Its answer.
pub fn hold(port: u16, command: &str) -> (TcpStream, Answer) {
    let attempt = || -> Result<(TcpStream, Answer), String> {
        let mut stream = connect(local(port), DEADLINE)?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        let answer = Answer::parse(&line).ok_or_else(|| format!("bad answer {line:?}"))?;
        Ok((stream, answer))
    };
    attempt().unwrap_or_else(|e| panic!("holding a worker with {command:?}: {e}"))
}

/// Holds one connection per worker with `command` (see [`hold`]): with a shared listener a
/// busy worker accepts nothing, so `n` held connections are answered by `n` different
/// workers. Their answers, sorted by worker id.
pub fn hold_all(port: u16, n: usize, command: &str) -> (Vec<TcpStream>, Vec<Answer>) {
    let mut streams = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..n {
        let (s, a) = hold(port, command);
        streams.push(s);
        answers.push(a);
    }
    answers.sort_by_key(|a| a.id);
    (streams, answers)
}

/// Asks `id` until every slot `0..n` has answered from a pid that `accept` takes; returns
/// slot → pid.
pub fn collect_ids(port: u16, n: usize, accept: impl Fn(u32) -> bool) -> BTreeMap<usize, u32> {
    let mut seen = BTreeMap::new();
    wait_until(&format!("answers from {n} workers"), || {
        if let Ok(a) = try_ask(port, "id", Duration::from_secs(2)) {
            if accept(a.pid) {
                seen.insert(a.id, a.pid);
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

/// Asks `id` until `pid` answers; returns its slot.
pub fn id_of(port: u16, pid: u32) -> usize {
    let mut seen = Vec::new();
    wait_until(&format!("an answer from pid {pid}"), || {
        match try_ask(port, "id", Duration::from_secs(2)) {
            Ok(a) if a.pid == pid => return Ok(a.id),
            Ok(a) => seen.push((a.id, a.pid)),
            Err(_) => {}
        }
        Err(format!("answers {seen:?}"))
    })
}

/// Asks `id` until each worker of `workers` (`(slot, pid)`) has answered at least once (for
/// `SO_REUSEPORT`, where the kernel picks the socket by hashing the connection); panics on
/// an answer from another worker, or from a worker with another slot, and after 400
/// connections. The answers, in the order of `workers`.
pub fn ask_until_all(port: u16, workers: &[(usize, u32)]) -> Vec<Answer> {
    let mut seen: Vec<Option<Answer>> = vec![None; workers.len()];
    for _ in 0..400 {
        let a = ask(port, "id");
        let Some(k) = workers.iter().position(|&(_, pid)| pid == a.pid) else {
            panic!("answer from unknown worker {a:?}; expected one of {workers:?}");
        };
        assert_eq!(
            a.id, workers[k].0,
            "worker pid {} answers id {}, expected {}",
            a.pid, a.id, workers[k].0
        );
        seen[k] = Some(a);
        if seen.iter().all(Option::is_some) {
            return seen.into_iter().flatten().collect();
        }
    }
    let missing: Vec<u32> = workers
        .iter()
        .zip(&seen)
        .filter(|(_, a)| a.is_none())
        .map(|(&(_, pid), _)| pid)
        .collect();
    panic!("workers {missing:?} never answered in 400 connections")
}

/// What a [`Load`]'s requests came to.
#[derive(Debug, Default)]
pub struct Tally {
    /// Answered.
    pub ok: usize,
    /// Refused at connect (the port was closed): the client knows, and sent nothing.
    pub refused: usize,
    /// Not connected within the deadline (the requests were dropped): nothing sent either.
    pub unconnected: usize,
    /// Connected (the kernel accepted the connection), then reset, ended or timed out
    /// without an answer: one line each, saying how.
    pub lost: Vec<String>,
}

/// A loopback load: `clients` threads that each ask `id` on a new connection per request,
/// one request after another, until [`Load::stop`].
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Tally>>,
}

impl Load {
    /// Starts the clients against `127.0.0.1:port`.
    pub fn start(port: u16, clients: usize) -> Load {
        Load::start_at(Target::Tcp(port), clients)
    }

    /// Starts the clients against `target`.
    pub fn start_at(target: Target, clients: usize) -> Load {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
                let target = target.clone();
                std::thread::spawn(move || {
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::Relaxed) {
                        let before = tally.ok;
                        one_request(&target, &mut tally);
                        answered.fetch_add(tally.ok - before, Ordering::Relaxed);
                    }
                    tally
                })
            })
            .collect();
        Load {
            stop,
            answered,
            threads,
        }
    }

    /// The answers the clients have had so far.
    pub fn answered(&self) -> usize {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the clients have had `n` answers in all.
    pub fn wait_answered(&self, n: usize) {
        wait_until(&format!("{n} answers to the load"), || {
            let seen = self.answered.load(std::sync::atomic::Ordering::Relaxed);
            if seen >= n {
                Ok(())
            } else {
                Err(format!("{seen}"))
            }
        })
    }

    /// Stops the clients after their request under way; what every request came to.
    pub fn stop(self) -> Tally {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Tally::default();
        for t in self.threads {
            let tally = t.join().expect("a load client panicked");
            all.ok += tally.ok;
            all.refused += tally.refused;
            all.unconnected += tally.unconnected;
            all.lost.extend(tally.lost);
        }
        all
    }
}

/// One request of a [`Load`] client, counted in `tally`. A Unix socket whose file is gone
/// (`ENOENT`) counts as refused, as a closed port.
fn one_request(target: &Target, tally: &mut Tally) {
    let mut stream = match target.connect() {
        Ok(s) => s,
        Err(e)
            if e.kind() == std::io::ErrorKind::ConnectionRefused
                || e.kind() == std::io::ErrorKind::NotFound =>
        {
            tally.refused += 1;
            // The port is closed: do not spin.
            std::thread::sleep(Duration::from_millis(10));
            return;
        }
        Err(_) => {
            tally.unconnected += 1;
            return;
        }
    };
    let mut lost = |what: String| tally.lost.push(what);
    if let Err(e) = stream
        .set_read_timeout(Some(DEADLINE))
        .and_then(|()| stream.write_all(b"id\n"))
    {
        return lost(format!("send: {e}"));
    }
    let mut text = String::new();
    match stream.read_to_string(&mut text) {
        Ok(_) if Answer::parse(&text).is_some() => tally.ok += 1,
        Ok(_) => lost(format!("answer {text:?}")),
        Err(e) => lost(format!("read: {e}")),
    }
}
