//! systemd's notification protocol (`sd_notify`), spoken only when `NOTIFY_SOCKET` is set:
//! `READY=1` once every worker is inside `serve`, `RELOADING=1` during a rolling restart,
//! `STOPPING=1` at a graceful stop, `STATUS=` with the worker count, and `WATCHDOG=1` pings
//! when the unit sets `WatchdogSec=` (a timer only then).

use std::cell::Cell;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The variables of the notification protocol: the master's, never its workers'.
pub(crate) const VARIABLES: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// The service manager's notification socket.
pub(crate) struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// How often to ping the watchdog (half of `WATCHDOG_USEC`), when it is enabled for us.
    pub(crate) watchdog: Option<Duration>,
    /// Whether the last notification failed: a failure is logged as a warning only when it
    /// follows a success (or comes first), so that a refused `sendto` (a sandbox) or a
    /// vanished socket is said once, not at every watchdog ping.
    failing: Cell<bool>,
}

impl Notifier {
    /// The notifier named by `NOTIFY_SOCKET` (`/path` or `@abstract`), if set. A malformed
    /// value or an unusable socket is logged and ignored: the service runs on without it.
    pub(crate) fn from_env(our_pid: u32) -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = path.as_bytes();
        let addr = match bytes.split_first() {
            Some((b'@', name)) => SocketAddr::from_abstract_name(name),
            Some((b'/', _)) => SocketAddr::from_pathname(&path),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "expected an absolute path or an @abstract name",
            )),
        };
        let notifier = addr.and_then(|addr| {
            Ok(Notifier {
                socket: UnixDatagram::unbound()?,
                addr,
                watchdog: watchdog_interval(our_pid),
                failing: Cell::new(false),
            })
        });
        match notifier {
            Ok(n) => Some(n),
            Err(e) => {
                log::warn!("NOTIFY_SOCKET={path:?} cannot be used ({e}); not notifying systemd");
                None
            }
        }
    }

    /// Sends one notification (newline-separated `KEY=value` assignments).
    pub(crate) fn send(&self, message: &str) {
        match self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            Ok(_) => {
                if self.failing.replace(false) {
                    log::info!("notifying systemd again");
                }
            }
            Err(e) if self.failing.replace(true) => log::debug!("cannot notify systemd ({e})"),
            Err(e) => log::warn!("cannot notify systemd ({e}); said once until it works again"),
        }
    }

    /// `RELOADING=1` with the monotonic time systemd asks for.
    pub(crate) fn reloading(&self, status: &str) {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS={status}"
        ));
    }
}

/// Half of `WATCHDOG_USEC`, when set for this process (`WATCHDOG_PID` absent or ours).
fn watchdog_interval(our_pid: u32) -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(our_pid) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
