//! `prefork-load`: a small HTTP/1.1 load client for servers on the loopback interface, std only.
//!
//! ```text
//! prefork-load --addr 127.0.0.1:8080 [--path /] [--conn new|keepalive] [--clients N]
//!              [--duration SECS] [--requests N] [--timeout MS] [--bodies N] [--series MS]
//!              [--span-file FILE]
//! ```
//!
//! Each of `--clients` threads sends `GET` requests one after another (a closed loop) until
//! `--duration` has passed or `--requests` have been started in all, and classifies every
//! request:
//!
//! * `ok`: a complete `200` response;
//! * `refused`: the connection was refused (`ECONNREFUSED`);
//! * `reset`: `ECONNRESET`/`EPIPE`, or the connection ended before a complete response after
//!   the request was sent;
//! * `timeout`: no complete response within `--timeout` (connect, write or read);
//! * `other`: anything else (another status, a malformed response, another error).
//!
//! `--conn new` opens a connection per request (and sends `Connection: close`); `--conn
//! keepalive` reuses one connection per client. A server may close an idle keep-alive
//! connection at any time (a graceful stop does exactly that), so on a *reused* connection:
//! before each request the client checks whether the server has closed it and reconnects if
//! so (`reconnects`); and when the request was written but the connection ends without a
//! single byte of answer, or the write itself fails because the server closed it, the request
//! is sent again, once, on a new connection (`retried`). That is correct HTTP: the server never
//! started processing it. A request sent on a fresh connection and never answered is a failure.
//!
//! Once every client has had its first request answered (or failed), a line says so on
//! stderr: from then on the server is under the full load. The result is one JSON line on stdout: counts per outcome, latency percentiles of the
//! `ok` requests in µs (from the first write, or the connect in `--conn new` mode, to the last
//! byte), the statuses seen, and how many responses carried each distinct first body line
//! (capped at `--bodies` distinct lines; the rest are counted in `bodies_other`), which shows
//! which worker answered. With `--series MS`, the JSON line also has `start_unix_us` (the wall
//! clock at the start of the run) and `series`: for each slice of MS milliseconds of the run,
//! by when the request started, the `ok` requests `n` and their `p99` in µs (a latency over
//! time, to place an event inside the run). With `--span-file FILE`, a file that holds two
//! wall-clock times in µs since the Unix epoch (written by someone else while the run goes on,
//! read at its end), the JSON line has `span`: the `ok` requests in flight at any time
//! between the two (`n`, `p99`) and the `p99` of the others (`rest_p99`); `{}` if the file
//! is missing or malformed. The exit status is 0 whatever the outcomes; 2 for bad arguments.
//! Only loopback addresses are accepted.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: prefork-load --addr HOST:PORT [--path /] [--conn new|keepalive] \
[--clients N] [--duration SECS] [--requests N] [--timeout MS] [--bodies N] [--series MS] \
[--span-file FILE]";

/// Longest run accepted, so that a mistyped duration cannot load a machine for hours.
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest first body line kept for the per-body counts.
const MAX_BODY_LINE: usize = 120;

fn main() -> ExitCode {
    let config = match Config::parse(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(msg) => {
            eprintln!("prefork-load: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let report = run(&config);
    println!("{}", report.to_json(&config));
    ExitCode::SUCCESS
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnMode {
    New,
    KeepAlive,
}

#[derive(Debug, Clone)]
struct Config {
    addr: SocketAddr,
    path: String,
    conn: ConnMode,
    clients: usize,
    duration: Duration,
    requests: Option<u64>,
    timeout: Duration,
    max_bodies: usize,
    /// The slice of `--series`, when asked for.
    series: Option<Duration>,
    /// The file of `--span-file`.
    span_file: Option<std::path::PathBuf>,
}

impl Config {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Config, String> {
        let mut addr = None;
        let mut config = Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            path: "/".to_owned(),
            conn: ConnMode::KeepAlive,
            clients: 1,
            duration: Duration::from_secs(5),
            requests: None,
            timeout: Duration::from_secs(5),
            max_bodies: 64,
            series: None,
            span_file: None,
        };
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "--addr" => addr = Some(value()?),
                "--path" => {
                    let path = value()?;
                    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                        return Err(format!(
                            "bad --path {path:?}: an origin-form path, no spaces"
                        ));
                    }
                    config.path = path;
                }
                "--conn" => {
                    config.conn = match value()?.as_str() {
                        "new" => ConnMode::New,
                        "keepalive" | "keep-alive" => ConnMode::KeepAlive,
                        v => return Err(format!("bad --conn {v:?} (new or keepalive)")),
                    }
                }
                "--clients" => config.clients = number(&value()?, "--clients", 1, 4096)? as usize,
                "--duration" => {
                    let v = value()?;
                    let secs: f64 = v.parse().map_err(|_| format!("bad --duration {v:?}"))?;
                    if !(secs > 0.0 && secs <= MAX_DURATION.as_secs_f64()) {
                        return Err(format!(
                            "--duration must be in (0, {}]",
                            MAX_DURATION.as_secs()
                        ));
                    }
                    config.duration = Duration::from_secs_f64(secs);
                }
                "--requests" => {
                    config.requests = Some(number(&value()?, "--requests", 1, u64::MAX)?)
                }
                "--timeout" => {
                    config.timeout =
                        Duration::from_millis(number(&value()?, "--timeout", 1, 600_000)?)
                }
                "--bodies" => {
                    config.max_bodies = number(&value()?, "--bodies", 0, 100_000)? as usize
                }
                "--series" => {
                    config.series = Some(Duration::from_millis(number(
                        &value()?,
                        "--series",
                        1,
                        60_000,
                    )?))
                }
                "--span-file" => config.span_file = Some(value()?.into()),
                "--help" | "-h" => return Err("help".to_owned()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        let addr = addr.ok_or("--addr is required")?;
        config.addr = loopback(&addr)?;
        Ok(config)
    }
}

fn number(v: &str, name: &str, min: u64, max: u64) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("bad {name} {v:?} (an integer in {min}..={max})")),
    }
}

/// Resolves `addr` and refuses anything that is not a loopback address.
fn loopback(addr: &str) -> Result<SocketAddr, String> {
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("bad --addr {addr:?}: {e}"))?
        .collect();
    match resolved.iter().find(|a| !a.ip().is_loopback()) {
        Some(a) => Err(format!(
            "--addr {addr:?} resolves to {a}, which is not a loopback address; this client \
             only loads servers on this machine"
        )),
        None => resolved
            .first()
            .copied()
            .ok_or(format!("--addr {addr:?} resolves to nothing")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Refused,
    Reset,
    Timeout,
    Other,
}

const OUTCOMES: [(Outcome, &str); 5] = [
    (Outcome::Ok, "ok"),
    (Outcome::Refused, "refused"),
    (Outcome::Reset, "reset"),
    (Outcome::Timeout, "timeout"),
    (Outcome::Other, "other"),
];

/// What one client thread (and, merged, the whole run) saw.
#[derive(Debug, Default)]
struct Report {
    counts: [u64; 5],
    retried: u64,
    reconnects: u64,
    /// Latencies of the `ok` requests, µs.
    latencies: Vec<u64>,
    /// When each of them started, µs after the run's start (with `--series` only).
    starts: Vec<u64>,
    /// The wall clock at the run's start, µs since the Unix epoch.
    start_unix_us: u64,
    statuses: BTreeMap<u16, u64>,
    bodies: BTreeMap<String, u64>,
    bodies_other: u64,
    errors: BTreeMap<String, u64>,
    elapsed: Duration,
}

impl Report {
    fn count(&mut self, outcome: Outcome) {
        self.counts[outcome as usize] += 1;
    }

    fn error(&mut self, outcome: Outcome, what: String) {
        self.count(outcome);
        if self.errors.len() < 16 || self.errors.contains_key(&what) {
            *self.errors.entry(what).or_default() += 1;
        }
    }

    fn body(&mut self, line: String, cap: usize) {
        if let Some(n) = self.bodies.get_mut(&line) {
            *n += 1;
        } else if self.bodies.len() < cap {
            self.bodies.insert(line, 1);
        } else {
            self.bodies_other += 1;
        }
    }

    fn merge(&mut self, other: Report, cap: usize) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.retried += other.retried;
        self.reconnects += other.reconnects;
        self.latencies.extend(other.latencies);
        self.starts.extend(other.starts);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.bodies {
            if let Some(n) = self.bodies.get_mut(&k) {
                *n += v;
            } else if self.bodies.len() < cap {
                self.bodies.insert(k, v);
            } else {
                self.bodies_other += v;
            }
        }
        self.bodies_other += other.bodies_other;
        for (k, v) in other.errors {
            if self.errors.len() < 16 || self.errors.contains_key(&k) {
                *self.errors.entry(k).or_default() += v;
            }
        }
    }

    fn to_json(&self, config: &Config) -> String {
        let mut latencies = self.latencies.clone();
        latencies.sort_unstable();
        let total: u64 = self.counts.iter().sum();
        let mut out = format!(
            "{{\"addr\":{},\"path\":{},\"conn\":\"{}\",\"clients\":{},\"elapsed_s\":{:.3},\"requests\":{total}",
            json_str(&config.addr.to_string()),
            json_str(&config.path),
            match config.conn {
                ConnMode::New => "new",
                ConnMode::KeepAlive => "keepalive",
            },
            config.clients,
            self.elapsed.as_secs_f64(),
        );
        for (outcome, name) in OUTCOMES {
            out += &format!(",\"{name}\":{}", self.counts[outcome as usize]);
        }
        out += &format!(
            ",\"retried\":{},\"reconnects\":{},\"rps\":{:.0}",
            self.retried,
            self.reconnects,
            self.counts[Outcome::Ok as usize] as f64 / self.elapsed.as_secs_f64().max(1e-9)
        );
        out += &format!(
            ",\"latency_us\":{{\"p50\":{},\"p99\":{},\"p99.9\":{},\"max\":{}}}",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            percentile(&latencies, 0.999),
            latencies.last().copied().unwrap_or(0)
        );
        if let Some(slice) = config.series {
            out += &format!(
                ",\"start_unix_us\":{},\"series_ms\":{},\"series\":[{}]",
                self.start_unix_us,
                slice.as_millis(),
                self.series(slice).join(",")
            );
        }
        if let Some(file) = &config.span_file {
            let span = std::fs::read_to_string(file)
                .ok()
                .and_then(|text| {
                    let mut times = text.split_whitespace().map(|t| t.parse::<u64>().ok());
                    Some((times.next()??, times.next()??))
                })
                .map(|(from, to)| self.span(from, to));
            out += &format!(",\"span\":{}", span.unwrap_or_else(|| "{}".to_owned()));
        }
        let map = |entries: Vec<(String, u64)>| {
            let items: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{v}", json_str(&k)))
                .collect();
            format!("{{{}}}", items.join(","))
        };
        out += ",\"statuses\":";
        out += &map(self
            .statuses
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect());
        out += ",\"bodies\":";
        out += &map(self.bodies.iter().map(|(k, v)| (k.clone(), *v)).collect());
        out += &format!(",\"bodies_other\":{}", self.bodies_other);
        out += ",\"errors\":";
        out += &map(self.errors.iter().map(|(k, v)| (k.clone(), *v)).collect());
        out + "}"
    }
}

impl Report {
    /// `{"n":..,"p99":..,"rest_p99":..}`: the requests in flight at any time from `from` to
    /// `to` (µs since the Unix epoch), and the others.
    fn span(&self, from: u64, to: u64) -> String {
        let from = from.saturating_sub(self.start_unix_us);
        let to = to.saturating_sub(self.start_unix_us);
        let (mut inside, mut rest) = (Vec::new(), Vec::new());
        for (start, latency) in self.starts.iter().zip(&self.latencies) {
            if *start <= to && start + latency >= from {
                inside.push(*latency);
            } else {
                rest.push(*latency);
            }
        }
        inside.sort_unstable();
        rest.sort_unstable();
        format!(
            "{{\"n\":{},\"p99\":{},\"rest_p99\":{}}}",
            inside.len(),
            percentile(&inside, 0.99),
            percentile(&rest, 0.99)
        )
    }

    /// `{"t_ms":..,"n":..,"p99":..}` for each slice of the run, by the requests' starts.
    fn series(&self, slice: Duration) -> Vec<String> {
        let width = slice.as_micros().max(1) as u64;
        let mut slices: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (start, latency) in self.starts.iter().zip(&self.latencies) {
            slices.entry(start / width).or_default().push(*latency);
        }
        slices
            .into_iter()
            .map(|(i, mut v)| {
                v.sort_unstable();
                format!(
                    "{{\"t_ms\":{},\"n\":{},\"p99\":{}}}",
                    i * width / 1000,
                    v.len(),
                    percentile(&v, 0.99)
                )
            })
            .collect()
    }
}

/// Nearest-rank percentile of sorted values; 0 when there are none.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn run(config: &Config) -> Report {
    let started = Instant::now();
    let start_unix_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let deadline = started + config.duration;
    let budget = Arc::new(AtomicU64::new(config.requests.unwrap_or(u64::MAX)));
    let answered = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..config.clients)
        .map(|_| {
            let (config, budget, answered) = (config.clone(), budget.clone(), answered.clone());
            std::thread::spawn(move || {
                Client::new(&config, &answered).run(started, deadline, &budget)
            })
        })
        .collect();
    let mut report = Report::default();
    for t in threads {
        match t.join() {
            Ok(r) => report.merge(r, config.max_bodies),
            Err(_) => report.error(Outcome::Other, "client thread panicked".to_owned()),
        }
    }
    report.elapsed = started.elapsed();
    report.start_unix_us = start_unix_us;
    report
}

/// One connection and what was read past the last response.
struct Conn {
    stream: TcpStream,
    /// Requests answered on it so far: above zero, the connection is a reused one.
    served: u64,
}

struct Client<'a> {
    config: &'a Config,
    /// How many clients have had their first request answered (or failed).
    started: &'a AtomicUsize,
    request: Vec<u8>,
    conn: Option<Conn>,
    report: Report,
    buf: Vec<u8>,
}

/// How one attempt ended.
enum Attempt {
    Done(Outcome),
    /// The server closed a reused connection before the request reached it: send it again.
    Retry,
}

impl<'a> Client<'a> {
    fn new(config: &'a Config, started: &'a AtomicUsize) -> Self {
        let host = match config.addr {
            SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        let close = match config.conn {
            ConnMode::New => "Connection: close\r\n",
            ConnMode::KeepAlive => "",
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: prefork-load\r\n{close}\r\n",
            config.path
        );
        Client {
            config,
            started,
            request: request.into_bytes(),
            conn: None,
            report: Report::default(),
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    fn run(mut self, run_start: Instant, deadline: Instant, budget: &AtomicU64) -> Report {
        let mut first = true;
        while Instant::now() < deadline
            && budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        {
            let start = Instant::now();
            let mut outcome = self.attempt(start);
            if let Attempt::Retry = outcome {
                self.report.retried += 1;
                outcome = self.attempt(start);
            }
            match outcome {
                Attempt::Done(Outcome::Ok) => {
                    self.report.count(Outcome::Ok);
                    self.report
                        .latencies
                        .push(start.elapsed().as_micros() as u64);
                    if self.config.series.is_some() || self.config.span_file.is_some() {
                        self.report
                            .starts
                            .push(start.duration_since(run_start).as_micros() as u64);
                    }
                }
                Attempt::Done(_) => {} // counted with its error
                Attempt::Retry => self.report.error(
                    Outcome::Reset,
                    "closed again before the retried request".to_owned(),
                ),
            }
            if matches!(self.config.conn, ConnMode::New) {
                self.conn = None;
            }
            if first {
                first = false;
                if self.started.fetch_add(1, Ordering::Relaxed) + 1 == self.config.clients {
                    eprintln!(
                        "prefork-load: all {} clients have had a first answer",
                        self.config.clients
                    );
                }
            }
        }
        self.report
    }

    fn attempt(&mut self, start: Instant) -> Attempt {
        let timeout = self.config.timeout;
        if let Some(conn) = &self.conn {
            if conn.served > 0 && closed_by_peer(&conn.stream) {
                self.report.reconnects += 1;
                self.conn = None;
            }
        }
        if self.conn.is_none() {
            match TcpStream::connect_timeout(&self.config.addr, timeout) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    self.conn = Some(Conn { stream, served: 0 });
                }
                Err(e) => return Attempt::Done(self.failed("connect", &e)),
            }
        }
        let conn = self.conn.as_mut().expect("connected above");
        let reused = conn.served > 0;
        let remaining = timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1));
        let _ = conn.stream.set_write_timeout(Some(remaining));
        if let Err(e) = conn.stream.write_all(&self.request) {
            self.conn = None;
            if reused
                && matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                )
            {
                return Attempt::Retry;
            }
            return Attempt::Done(self.failed("write", &e));
        }
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let remaining = timeout.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                self.conn = None;
                return Attempt::Done(self.fail(Outcome::Timeout, "read: timed out".to_owned()));
            }
            let conn = self.conn.as_mut().expect("connected above");
            let _ = conn.stream.set_read_timeout(Some(remaining));
            let (n, eof) = match conn.stream.read(&mut chunk) {
                Ok(0) => (0, true),
                Ok(n) => (n, false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.conn = None;
                    return Attempt::Done(self.failed("read", &e));
                }
            };
            self.buf.extend_from_slice(&chunk[..n]);
            match parse_response(&self.buf, eof) {
                Ok(Parsed::Complete(response)) => {
                    let conn = self.conn.as_mut().expect("connected above");
                    conn.served += 1;
                    if response.close || eof || response.len < self.buf.len() {
                        // Closed, or bytes nobody asked for: do not reuse.
                        self.conn = None;
                    }
                    *self.report.statuses.entry(response.status).or_default() += 1;
                    if response.status != 200 {
                        return Attempt::Done(
                            self.fail(Outcome::Other, format!("status {}", response.status)),
                        );
                    }
                    let line = first_line(&response.body);
                    self.report.body(line, self.config.max_bodies);
                    return Attempt::Done(Outcome::Ok);
                }
                Ok(Parsed::Partial) if !eof => {}
                Ok(Parsed::Partial) => {
                    self.conn = None;
                    if self.buf.is_empty() && reused {
                        return Attempt::Retry;
                    }
                    let what = if self.buf.is_empty() {
                        "connection closed before any response byte"
                    } else {
                        "connection closed mid-response"
                    };
                    return Attempt::Done(self.fail(Outcome::Reset, what.to_owned()));
                }
                Err(e) => {
                    self.conn = None;
                    return Attempt::Done(self.fail(Outcome::Other, format!("bad response: {e}")));
                }
            }
        }
    }

    fn fail(&mut self, outcome: Outcome, what: String) -> Outcome {
        self.report.error(outcome, what);
        outcome
    }

    fn failed(&mut self, during: &str, e: &io::Error) -> Outcome {
        let outcome = classify(e);
        self.fail(outcome, format!("{during}: {}", describe(e)))
    }
}

fn classify(e: &io::Error) -> Outcome {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => Outcome::Refused,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Outcome::Reset,
        WouldBlock | TimedOut => Outcome::Timeout,
        _ => Outcome::Other,
    }
}

/// The error without the OS error number, so equal errors count together.
fn describe(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// Whether the server has closed (or reset) an idle connection: a non-blocking peek that finds
/// end-of-file, an error, or bytes that no request asked for.
fn closed_by_peer(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    let closed = !matches!(stream.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    closed || stream.set_nonblocking(false).is_err()
}

fn first_line(body: &[u8]) -> String {
    let line = body.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end_matches('\r');
    match line.char_indices().nth(MAX_BODY_LINE) {
        Some((i, _)) => line[..i].to_owned(),
        None => line.to_owned(),
    }
}

/// A complete response found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    /// The body, de-chunked.
    body: Vec<u8>,
    /// Bytes of the buffer this response took (interim `1xx` responses before it included).
    len: usize,
    /// The server will close the connection after this response.
    close: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// More bytes are needed.
    Partial,
    Complete(Response),
}

/// Parses the HTTP/1.x response at the start of `buf`, the answer to a `GET`. `eof` says the
/// server has closed the connection, which completes a body delimited by the close.
fn parse_response(buf: &[u8], eof: bool) -> Result<Parsed, String> {
    let mut offset = 0;
    loop {
        let rest = &buf[offset..];
        let Some(head_end) = find(rest, b"\r\n\r\n") else {
            if rest.len() > MAX_HEAD {
                return Err("response head too large".to_owned());
            }
            return Ok(Parsed::Partial);
        };
        let head = std::str::from_utf8(&rest[..head_end]).map_err(|_| "head is not UTF-8")?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let (version, status) = parse_status_line(status_line)?;
        let mut close = version == 0;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("bad header line {line:?}"))?;
            if name.is_empty() || name.bytes().any(|b| b <= b' ') {
                return Err(format!("bad header name {name:?}"));
            }
            let value = value.trim_matches([' ', '\t']);
            if name.eq_ignore_ascii_case("content-length") {
                let n: usize = value
                    .parse()
                    .map_err(|_| format!("bad content-length {value:?}"))?;
                if length.is_some_and(|m| m != n) {
                    return Err("conflicting content-length headers".to_owned());
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                let last = value.rsplit(',').next().unwrap_or_default().trim();
                if !last.eq_ignore_ascii_case("chunked") {
                    return Err(format!("unsupported transfer-encoding {value:?}"));
                }
                chunked = true;
            } else if name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") && version == 0 {
                        close = false;
                    }
                }
            }
        }
        let body_start = offset + head_end + 4;
        if (100..200).contains(&status) && status != 101 {
            // An interim response; the real one follows.
            offset = body_start;
            continue;
        }
        if chunked && length.is_some() {
            return Err("both content-length and chunked".to_owned());
        }
        let no_body = status < 200 || status == 204 || status == 304;
        let complete = |body: Vec<u8>, len: usize, close: bool| {
            Ok(Parsed::Complete(Response {
                status,
                body,
                len,
                close,
            }))
        };
        if no_body {
            return complete(Vec::new(), body_start, close);
        }
        if chunked {
            return match dechunk(&buf[body_start..])? {
                Some((body, used)) => complete(body, body_start + used, close),
                None => Ok(Parsed::Partial),
            };
        }
        if let Some(n) = length {
            return if buf.len() - body_start >= n {
                complete(
                    buf[body_start..body_start + n].to_vec(),
                    body_start + n,
                    close,
                )
            } else {
                Ok(Parsed::Partial)
            };
        }
        // Neither length nor chunks: the body runs until the server closes.
        return if eof {
            complete(buf[body_start..].to_vec(), buf.len(), true)
        } else {
            Ok(Parsed::Partial)
        };
    }
}

/// `HTTP/1.x SSS reason` to (minor version, status).
fn parse_status_line(line: &str) -> Result<(u8, u16), String> {
    let bad = || format!("bad status line {line:?}");
    let rest = line.strip_prefix("HTTP/1.").ok_or_else(bad)?;
    let version = match rest.as_bytes().first() {
        Some(b'0') => 0,
        Some(b'1') => 1,
        _ => return Err(bad()),
    };
    let rest = rest[1..].strip_prefix(' ').ok_or_else(bad)?;
    let code = rest.get(..3).ok_or_else(bad)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) || rest.len() > 3 && rest.as_bytes()[3] != b' ' {
        return Err(bad());
    }
    Ok((version, code.parse().map_err(|_| bad())?))
}

/// Decodes a chunked body at the start of `buf`: the body and the bytes it took (trailers
/// included), or `None` if it is not complete yet.
fn dechunk(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_end) = find(&buf[pos..], b"\r\n") else {
            return if buf.len() - pos > 1024 {
                Err("chunk size line too long".to_owned())
            } else {
                Ok(None)
            };
        };
        let line = std::str::from_utf8(&buf[pos..pos + line_end]).map_err(|_| "bad chunk size")?;
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        pos += line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(end) = find(&buf[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += end + 2;
                if end == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".to_owned());
        }
        pos += size + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> Response {
        match parse_response(buf, false) {
            Ok(Parsed::Complete(r)) => r,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn content_length() {
        let r = complete(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\nrest");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello\n");
        assert_eq!(r.len, 44);
        assert!(!r.close);
    }

    #[test]
    fn every_prefix_is_partial() {
        let full = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        for cut in 0..full.len() {
            assert_eq!(
                parse_response(&full[..cut], false),
                Ok(Parsed::Partial),
                "cut {cut}"
            );
        }
        assert_eq!(complete(full).body, b"hello");
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let full = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\n";
        let r = complete(full);
        assert_eq!(r.body, b"hello!");
        assert_eq!(r.len, full.len());
        for cut in 0..full.len() {
            assert_eq!(
                parse_response(&full[..cut], false),
                Ok(Parsed::Partial),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn connection_close_and_http10() {
        assert!(
            complete(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").close
        );
        assert!(complete(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").close);
        assert!(
            !complete(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
                .close
        );
    }

    #[test]
    fn body_until_close() {
        let buf = b"HTTP/1.0 200 OK\r\n\r\nuntil the end";
        assert_eq!(parse_response(buf, false), Ok(Parsed::Partial));
        match parse_response(buf, true) {
            Ok(Parsed::Complete(r)) => {
                assert_eq!(r.body, b"until the end");
                assert!(r.close);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_body_statuses_and_interim() {
        let r = complete(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((r.status, r.body.len()), (204, 0));
        let r = complete(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\nno",
        );
        assert_eq!((r.status, &r.body[..]), (404, &b"no"[..]));
    }

    #[test]
    fn malformed() {
        for bad in [
            &b"HTTP/2 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        ] {
            assert!(
                parse_response(bad, true).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_response(&vec![b'a'; MAX_HEAD + 1], false).is_err());
    }

    #[test]
    fn status_line_without_reason() {
        assert_eq!(
            complete(b"HTTP/1.1 200\r\ncontent-length: 0\r\n\r\n").status,
            200
        );
    }

    #[test]
    fn percentiles_and_first_lines() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), 500);
        assert_eq!(percentile(&v, 0.99), 990);
        assert_eq!(percentile(&v, 0.999), 999);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(
            first_line(b"Hello from worker 1 (pid 2)\r\nmore"),
            "Hello from worker 1 (pid 2)"
        );
        assert_eq!(json_str("a\"b\\\n\u{1}"), "\"a\\\"b\\\\\\n\\u0001\"");
    }

    #[test]
    fn series_by_slice_of_the_start() {
        let report = Report {
            latencies: vec![10, 20, 30, 400],
            starts: vec![0, 49_999, 50_000, 120_000],
            ..Report::default()
        };
        assert_eq!(
            report.series(Duration::from_millis(50)),
            [
                "{\"t_ms\":0,\"n\":2,\"p99\":20}",
                "{\"t_ms\":50,\"n\":1,\"p99\":30}",
                "{\"t_ms\":100,\"n\":1,\"p99\":400}",
            ]
        );
    }

    #[test]
    fn span_splits_the_requests_in_flight_during_it() {
        let report = Report {
            latencies: vec![10, 20, 30, 400],
            starts: vec![0, 1_000, 2_000, 3_000],
            start_unix_us: 5_000_000,
            ..Report::default()
        };
        // From 1 ms to 2.01 ms into the run: the requests started at 1 ms and 2 ms.
        assert_eq!(
            report.span(5_001_000, 5_002_010),
            "{\"n\":2,\"p99\":30,\"rest_p99\":400}"
        );
    }

    #[test]
    fn refuses_other_addresses() {
        assert!(loopback("127.0.0.1:80").is_ok());
        assert!(loopback("[::1]:80").is_ok());
        assert!(loopback("10.0.0.1:80").is_err());
        assert!(loopback("0.0.0.0:80").is_err());
    }
}
