//! The measured processes: a master started by the bench (`BENCH_ROLE=master`) and its
//! workers. Both run this code: a forked worker continues inside `listen_and_serve`, an
//! exec-mode worker runs the bench binary's `main` again (same arguments, same environment
//! plus `FASTHTTP_PREFORK_CHILD=1`), reaches the same `listen_and_serve` call and becomes a
//! worker there.

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use prefork::{Mode, Prefork};

use super::sys;
use super::{Kind, Task};

/// What the bench passes to a master (and, through the inherited environment, to exec-mode
/// workers).
pub const ROLE_ENV: &str = "BENCH_ROLE";
pub const TASK_ENV: &str = "BENCH_TASK";
pub const MODE_ENV: &str = "BENCH_MODE";
pub const WORKERS_ENV: &str = "BENCH_WORKERS";
pub const REUSEPORT_ENV: &str = "BENCH_REUSEPORT";
pub const REPORT_ENV: &str = "BENCH_REPORT";
pub const NONCE_ENV: &str = "BENCH_NONCE";
pub const PARENT_ENV: &str = "BENCH_PARENT";

/// Every master listens on a fresh port of the loopback address.
const ADDR: &str = "127.0.0.1:0";
/// The data a master builds before `listen_and_serve` in the memory section.
pub const DATA_BYTES: usize = 64 << 20;

struct Cfg {
    task: Task,
    mode: Mode,
    workers: usize,
    reuseport: bool,
    report: PathBuf,
    nonce: u64,
    parent: u32,
}

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

fn num<T: std::str::FromStr>(name: &str) -> Result<T, String> {
    let v = var(name)?;
    v.parse()
        .map_err(|_| format!("{name}={v:?} is not a number"))
}

impl Cfg {
    fn from_env() -> Result<Cfg, String> {
        let task = Task::parse(&var(TASK_ENV)?).ok_or("bad BENCH_TASK")?;
        let mode = match var(MODE_ENV)?.as_str() {
            "fork" => Mode::Fork,
            "exec" => Mode::Exec,
            m => return Err(format!("bad {MODE_ENV} {m:?}")),
        };
        Ok(Cfg {
            task,
            mode,
            workers: num(WORKERS_ENV)?,
            reuseport: var(REUSEPORT_ENV)? == "1",
            report: PathBuf::from(var(REPORT_ENV)?),
            nonce: num(NONCE_ENV)?,
            parent: num(PARENT_ENV)?,
        })
    }
}

/// Sends one report datagram to the bench: `nonce kind pid slot ts extra`.
pub struct Reporter {
    sock: UnixDatagram,
    path: PathBuf,
    nonce: u64,
}

impl Reporter {
    fn new(path: PathBuf, nonce: u64) -> io::Result<Reporter> {
        let sock = UnixDatagram::unbound()?;
        // A full queue (net.unix.max_dgram_qlen) blocks the sender until the bench reads; never
        // for long, and never forever.
        sock.set_write_timeout(Some(Duration::from_secs(2)))?;
        Ok(Reporter { sock, path, nonce })
    }

    fn try_clone(&self) -> io::Result<Reporter> {
        Ok(Reporter {
            sock: self.sock.try_clone()?,
            path: self.path.clone(),
            nonce: self.nonce,
        })
    }

    /// `ts` is taken by the caller, before the send.
    fn send(&self, kind: Kind, slot: usize, ts: u64, extra: u64) {
        let msg = format!(
            "{} {} {} {slot} {ts} {extra}",
            self.nonce,
            kind.tag(),
            std::process::id()
        );
        // A bench that stopped listening is no reason to fail: it will stop us.
        let _ = self.sock.send_to(msg.as_bytes(), &self.path);
    }
}

/// `main` of a master and of an exec-mode worker.
pub fn main() -> i32 {
    let cfg = match Cfg::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("listeners bench (role): {e}");
            return 2;
        }
    };
    let in_worker = prefork::is_child();
    if !in_worker {
        if let Err(e) = sys::die_with_parent(cfg.parent) {
            eprintln!("listeners bench master: {e}");
            return 1;
        }
    }
    let reporter = match Reporter::new(cfg.report.clone(), cfg.nonce) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("listeners bench: report socket: {e}");
            return 1;
        }
    };
    // The memory section's data, built by whoever runs `main`: the master (whose forked
    // workers share it copy-on-write) and, in exec mode, every worker again.
    let data = if cfg.task == Task::Memory {
        make_data(DATA_BYTES)
    } else {
        Vec::new()
    };
    let mut pf = Prefork::new()
        .workers(cfg.workers)
        .mode(cfg.mode)
        .reuseport(cfg.reuseport)
        // The resets section kills a worker every 200 ms on purpose.
        .recover_threshold(1_000_000)
        .shutdown_grace(Duration::from_secs(2));
    if !in_worker {
        let hook = match reporter.try_clone() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("listeners bench: report socket: {e}");
                return 1;
            }
        };
        pf = pf.on_master_ready(move |_pids| {
            hook.send(Kind::MasterReady, 0, sys::now_ns(), 0);
            Ok(())
        });
        reporter.send(Kind::Start, 0, sys::now_ns(), 0);
    }
    let task = cfg.task;
    let result = pf.listen_and_serve(ADDR, |listener, worker| -> io::Result<()> {
        let extra = match task {
            Task::Spawn => 0,
            // Read every byte once: the pages are mapped into this worker (shared with the
            // master after a fork, private after an exec).
            Task::Memory => checksum(std::hint::black_box(&data)),
            Task::Resets => u64::from(listener.local_addr()?.port()),
        };
        reporter.send(Kind::Ready, worker.id(), sys::now_ns(), extra);
        match task {
            Task::Resets => serve_pings(&listener),
            Task::Spawn | Task::Memory => idle(&listener),
        }
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("listeners bench master {}: {e}", std::process::id());
            1
        }
    }
}

/// `len` bytes of xorshift64 output (no zero word), so that no page is the shared zero page
/// and no two pages are alike.
fn make_data(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for word in v.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&(x | 1).to_le_bytes());
    }
    v
}

fn checksum(data: &[u8]) -> u64 {
    data.chunks_exact(8).fold(0u64, |acc, w| {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        acc.rotate_left(5) ^ u64::from_le_bytes(b)
    })
}

/// Blocks in `accept` until the master stops us (nobody connects in these sections).
fn idle(listener: &TcpListener) -> ! {
    loop {
        if listener.accept().is_err() {
            sys::sleep(Duration::from_millis(10));
        }
    }
}

/// The resets section's protocol, one connection at a time: right after `accept` the worker
/// sends `A` (so the client knows its connection was accepted), reads a line, answers
/// `pong\n` and closes. A worker holds at most one client connection at a time.
fn serve_pings(listener: &TcpListener) -> ! {
    loop {
        let mut s = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    sys::sleep(Duration::from_millis(1));
                }
                continue;
            }
        };
        // First thing after accept (nothing in between, to keep the window in which a kill
        // loses an accepted connection that the client cannot tell from a queued one small).
        if s.write_all(b"A").is_err() {
            continue;
        }
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 64];
        let mut len = 0;
        let got_line = loop {
            match s.read(&mut buf[len..]) {
                Ok(0) => break false,
                Ok(k) => {
                    len += k;
                    if buf[..len].contains(&b'\n') {
                        break true;
                    }
                    if len == buf.len() {
                        break false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break false,
            }
        };
        if got_line {
            let _ = s.write_all(b"pong\n");
        }
    }
}
