//! A stand-in for systemd's side of the notification protocol (`sd_notify`): a unix
//! datagram socket the test binds, named to a fixture by `NOTIFY_SOCKET`, that collects
//! what the master sends, one datagram per notification.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use super::process::{DEADLINE, TempDir};

/// One notification as it arrived.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The datagram, as text: `KEY=value` assignments, one per line.
    pub text: String,
    /// When the test received it.
    pub at: Instant,
}

impl Notification {
    /// The value of `key` (`READY`, `STATUS`, `MONOTONIC_USEC`, …), if assigned.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }

    /// Whether it assigns `key=value`.
    pub fn has(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }
}

/// A bound notification socket.
pub struct NotifySocket {
    socket: UnixDatagram,
    /// What `NOTIFY_SOCKET` must say: the path, or `@name` for an abstract socket.
    pub name: String,
    /// Holds the socket's file for a path socket; removed on drop.
    _dir: Option<TempDir>,
}

impl NotifySocket {
    /// A socket bound to a path in a fresh temporary directory.
    pub fn at_path(tag: &str) -> NotifySocket {
        let dir = TempDir::new(tag);
        let path = dir.0.join("notify");
        let socket = UnixDatagram::bind(&path)
            .unwrap_or_else(|e| panic!("binding a notify socket at {}: {e}", path.display()));
        let name = path.to_str().expect("a UTF-8 temporary path").to_owned();
        NotifySocket {
            socket,
            name,
            _dir: Some(dir),
        }
    }

    /// A socket bound to an abstract name (no file; `@name` in `NOTIFY_SOCKET`).
    pub fn abstract_name(tag: &str) -> NotifySocket {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("prefork-test-{}-{tag}-{n}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes())
            .unwrap_or_else(|e| panic!("the abstract name {name:?}: {e}"));
        let socket = UnixDatagram::bind_addr(&addr)
            .unwrap_or_else(|e| panic!("binding the abstract notify socket {name:?}: {e}"));
        NotifySocket {
            socket,
            name: format!("@{name}"),
            _dir: None,
        }
    }

    /// The next notification, waiting up to `timeout`; `None` if none came.
    pub fn recv_within(&self, timeout: Duration) -> Option<Notification> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.socket
                .set_read_timeout(Some(left))
                .expect("setting the notify socket's timeout");
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    return Some(Notification {
                        text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                        at: Instant::now(),
                    });
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("receiving on the notify socket {}: {e}", self.name),
            }
        }
    }

    /// Every notification already queued, without waiting.
    pub fn pending(&self) -> Vec<Notification> {
        self.socket
            .set_nonblocking(true)
            .expect("making the notify socket non-blocking");
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => out.push(Notification {
                    text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                    at: Instant::now(),
                }),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("receiving on the notify socket {}: {e}", self.name),
            }
        }
        self.socket
            .set_nonblocking(false)
            .expect("making the notify socket blocking");
        out
    }

    /// Receives until a notification that `accept` takes arrives (within [`DEADLINE`]);
    /// returns the ones received before it and that one.
    pub fn wait_for(
        &self,
        what: &str,
        mut accept: impl FnMut(&Notification) -> bool,
    ) -> (Vec<Notification>, Notification) {
        let deadline = Instant::now() + DEADLINE;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_within(left) {
                Some(n) if accept(&n) => return (before, n),
                Some(n) => before.push(n),
                None => panic!(
                    "timed out after {DEADLINE:?} waiting for {what} on {}; received: {:?}",
                    self.name,
                    before.iter().map(|n| &n.text).collect::<Vec<_>>()
                ),
            }
        }
    }
}
