//! The listeners bench's only `unsafe`: thin wrappers over libc calls std does not offer.

use std::fs;
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

pub use crate::procs::{kill, ppid_of, reap_strays};
pub use crate::stats::now_ns;

fn getppid() -> u32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() as u32 }
}

/// In a master started by the bench: SIGKILL when the bench (the thread that spawned us)
/// dies, and give up at once if it already died (we would have been reparented).
pub fn die_with_parent(expected: u32) -> Result<(), String> {
    // SAFETY: PR_SET_PDEATHSIG takes the signal number as an unsigned long.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(format!("PR_SET_PDEATHSIG: {}", io::Error::last_os_error()));
    }
    if getppid() != expected {
        return Err(format!("the bench (pid {expected}) is gone"));
    }
    Ok(())
}

/// Makes the bench adopt orphaned descendants, so that a worker whose master died is
/// reparented to (and cleaned up by) the bench rather than init.
pub fn set_child_subreaper() -> Result<(), String> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes a flag as an unsigned long.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "PR_SET_CHILD_SUBREAPER: {}",
            io::Error::last_os_error()
        ))
    }
}

/// Last-resort watchdog: SIGALRM (default action: terminate) after `secs`.
pub fn alarm(secs: u32) {
    // SAFETY: alarm takes a number of seconds.
    unsafe { libc::alarm(secs) };
}

/// `SO_LINGER` {on, 0}: `close` sends RST instead of FIN, so the client side leaves no
/// `TIME_WAIT` behind (tens of thousands of short connections per run).
pub fn set_linger_zero(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid struct of the size passed, read by the kernel only during
    // the call; the descriptor is open for as long as `stream` is borrowed.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `Pss:` and `Rss:` of a process from `/proc/PID/smaps_rollup`, in KiB.
pub fn pss_rss_kib(pid: u32) -> Result<(u64, u64), String> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| format!("/proc/{pid}/smaps_rollup: {e}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| format!("/proc/{pid}/smaps_rollup: no {name} line"))
    };
    Ok((field("Pss:")?, field("Rss:")?))
}

/// Sleeps in the kernel.
pub fn sleep(d: Duration) {
    std::thread::sleep(d);
}
