//! Listeners the crate owns: binding (TCP, shared or `SO_REUSEPORT`, and Unix stream
//! sockets), the inherited fds 3.. of an exec-mode worker, and systemd socket activation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::listener::{Listener, UnixAddr, parse_unix};
use crate::protocol;
use crate::sys;

use crate::protocol::REUSEPORT_ADDR_ENV;

/// The listen backlog: the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// Which address family [`crate::Prefork::listen_and_serve`] binds, as Go's `net.Listen`
/// networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Network {
    /// IPv4 or IPv6, whichever the address resolves to first; an empty host (`":8080"`)
    /// binds `[::]` dual-stack, accepting IPv4 as well.
    Tcp,
    /// IPv4 only (the default, as fasthttp's prefork).
    #[default]
    Tcp4,
    /// IPv6 only (`IPV6_V6ONLY`).
    Tcp6,
}

/// Resolves `addr` (`host:port`, `[v6]:port`, or `:port` for every address) for `network`.
pub(crate) fn resolve(addr: &str, network: Network) -> Result<SocketAddr, Error> {
    let bad = |reason: String| Error::Listen {
        addr: addr.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, reason),
    };
    if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| bad(format!("{port:?} is not a port number")))?;
        let ip = match network {
            Network::Tcp4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Network::Tcp | Network::Tcp6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        return Ok(SocketAddr::new(ip, port));
    }
    let candidates = addr.to_socket_addrs().map_err(|source| Error::Listen {
        addr: addr.to_owned(),
        source,
    })?;
    let mut candidates = candidates.filter(|a| match network {
        Network::Tcp => true,
        Network::Tcp4 => a.is_ipv4(),
        Network::Tcp6 => a.is_ipv6(),
    });
    candidates.next().ok_or_else(|| {
        bad(format!(
            "no {} address",
            match network {
                Network::Tcp => "IP",
                Network::Tcp4 => "IPv4",
                Network::Tcp6 => "IPv6",
            }
        ))
    })
}

/// Binds one listening socket.
pub(crate) fn bind(
    addr: SocketAddr,
    network: Network,
    reuseport: bool,
    shown: &str,
) -> Result<TcpListener, Error> {
    // `tcp` on the unspecified IPv6 address is dual-stack; `tcp6` is IPv6 only.
    let v6only = network == Network::Tcp6;
    sys::bind_tcp(addr, reuseport, v6only, BACKLOG).map_err(|source| Error::Listen {
        addr: shown.to_owned(),
        source,
    })
}

/// Binds the one listening socket every worker shares. Where the kernel refuses the
/// graceful stop's socket filter to this process, the socket is made a reuseport group of
/// one (`SO_REUSEPORT` set after the bind, so a busy port still fails here) with a program
/// that sends every connection to it, so that the stop's full sockets can join a group that
/// already has a program (see `master::listeners`). Returns the socket and whether it is
/// such a group.
pub(crate) fn bind_shared(
    addr: SocketAddr,
    network: Network,
    shown: &str,
) -> Result<(TcpListener, bool), Error> {
    let Some(refused) = sys::reuseport::filter_refused(addr) else {
        return Ok((bind(addr, network, false, shown)?, false));
    };
    let v6only = network == Network::Tcp6;
    let socket =
        sys::bind_tcp_group_of_one(addr, v6only, BACKLOG).map_err(|source| Error::Listen {
            addr: shown.to_owned(),
            source,
        })?;
    match sys::reuseport::send_all(socket.as_fd(), 0) {
        Ok(()) => {
            log::info!(
                "the kernel refuses socket filters to this process ({refused}): {shown} is a \
                 reuseport group of one, which the graceful stop closes with full sockets"
            );
            Ok((socket, true))
        }
        Err(e) => {
            log::warn!(
                "the kernel refuses socket filters to this process ({refused}) and a reuseport \
                 program on {shown} ({e}); a graceful stop may reset a connection"
            );
            Ok((socket, false))
        }
    }
}

/// The `LISTEN_FDNAMES` name of each socket of a reuseport group that a master of this crate
/// hands to a new master (binary upgrade), in the group's order, when it has one listener.
pub(crate) const SLOT_NAME: &str = "prefork-reuseport";
/// The `LISTEN_FDNAMES` name of a shared socket a master of this crate hands on, when it has
/// one listener.
pub(crate) const SHARED_NAME: &str = "prefork";
/// A master with several listeners names each socket it hands on `SHARED_NAME=KEY` or
/// `SLOT_NAME=KEY`: KEY is the listener's name ([`crate::Prefork::listen_named`]) or `#I`,
/// its position among the builder's listeners, for one without a name.
const KEY_SEPARATOR: char = '=';

/// A socket's name for a new master: the one-listener names as before, `prefork=KEY` and
/// `prefork-reuseport=KEY` with several.
pub(crate) fn handover_name(key: Option<&str>, reuseport: bool) -> String {
    let base = if reuseport { SLOT_NAME } else { SHARED_NAME };
    match key {
        None => base.to_owned(),
        Some(key) => format!("{base}{KEY_SEPARATOR}{key}"),
    }
}

/// Reads a name [`handover_name`] wrote: `Some((key, reuseport))` for a socket an old master
/// of this crate handed on, `None` for any other name (systemd's).
pub(crate) fn parse_handover_name(name: &str) -> Option<(Option<&str>, bool)> {
    for (base, reuseport) in [(SLOT_NAME, true), (SHARED_NAME, false)] {
        if let Some(rest) = name.strip_prefix(base) {
            if rest.is_empty() {
                return Some((None, reuseport));
            }
            if let Some(key) = rest.strip_prefix(KEY_SEPARATOR) {
                return Some((Some(key), reuseport));
            }
        }
    }
    None
}

/// Adopts an inherited listening socket: checks that `fd` is a listening TCP or Unix stream
/// socket, then makes it close-on-exec (so programs a worker starts do not keep it open)
/// and, with `blocking`, blocking (a socket passed non-blocking, as systemd's
/// `NonBlocking=yes` does, would make std's `accept` fail with `WouldBlock`). Every
/// inherited listener comes through here.
///
/// `blocking` is false for a socket that workers of this crate may be serving at the same
/// moment (an exec-mode worker's fd 3 under our master, a socket an old master hands on):
/// the blocking mode belongs to the socket, shared by every process holding it, and a
/// sibling's `Shutdown::incoming` relies on the non-blocking mode it set.
///
/// Its callers pass only the numbers a protocol designates for listeners
/// ([`sys::Designated::Listener`]): fds 3.. of an exec-mode worker, or the sockets of socket
/// activation whose `LISTEN_PID` names this process.
fn adopt(fd: std::os::fd::RawFd, blocking: bool) -> Result<Listener, Error> {
    sys::adopt_listener(sys::Designated::Listener(fd), blocking)
        .map(|(fd, unix)| Listener::from_fd(fd, unix))
        .map_err(|reason| Error::InheritedListener { fd, reason })
}

/// The listener of an exec-mode worker on `fd`, adopted; made blocking only under a master
/// other than ours (ours sets `PREFORK_READY_FD`, and its workers share the socket).
fn inherited(fd: std::os::fd::RawFd) -> Result<Listener, Error> {
    let under_our_master = std::env::var_os(protocol::READY_FD_ENV).is_some();
    adopt(fd, !under_our_master)
}

fn env_bytes(name: &str) -> Option<Vec<u8>> {
    std::env::var_os(name).map(|v| v.as_bytes().to_vec())
}

/// systemd socket activation (or a binary upgrade, which passes sockets the same way): when
/// `LISTEN_PID` is our pid and `LISTEN_FDS` ≥ 1, the sockets on fds 3.. with their names
/// from `LISTEN_FDNAMES`, each adopted (checked to be a listening TCP or Unix stream
/// socket). The variables are removed from the environment so workers do not misread them.
/// `Ok(None)` when the variables are absent or meant for another process.
///
/// Must run while the process is single-threaded or no other thread touches the
/// environment (it modifies it).
pub(crate) fn systemd() -> Result<Option<Vec<(Listener, String)>>, Error> {
    let pid = env_bytes("LISTEN_PID");
    let fds = env_bytes("LISTEN_FDS");
    let names = env_bytes("LISTEN_FDNAMES");
    let parsed = protocol::parse_listen_fds(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        sys::try_getpid().map_err(Error::sys("getpid"))?.get(),
    )?;
    let Some(parsed) = parsed else {
        return Ok(None);
    };
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // Left in place by a multi-threaded process, they are harmless: LISTEN_PID names
        // this process, so no worker or other child takes them for its own.
        sys::remove_env_if_single_threaded(var);
    }
    let mut sockets = Vec::with_capacity(parsed.count);
    for (i, name) in parsed.names.into_iter().enumerate() {
        // An old master's sockets are still served by its draining workers.
        let from_systemd = parse_handover_name(&name).is_none();
        let fd = protocol::LISTEN_FDS_START + i as i32;
        sockets.push((adopt(fd, from_systemd)?, name));
    }
    Ok(Some(sockets))
}

/// The listeners of an exec-mode worker, with their names. Under our master with
/// `PREFORK_LISTEN_FDNAMES` set: fds 3.. with those names. Otherwise (one listener, or a
/// fasthttp master): fd 3, named as the builder's first listener; with reuseport, when fd 3
/// holds no listening socket (a fasthttp master passes none), its own `SO_REUSEPORT` socket,
/// bound to `PREFORK_REUSEPORT_ADDR` when set (older masters of this crate), else to the
/// first address.
pub(crate) fn exec_worker_listeners(
    specs: &[Spec],
    network: Network,
) -> Result<Vec<(String, Listener)>, Error> {
    let names = env_bytes(protocol::LISTEN_FDNAMES_CHILD_ENV);
    if let Some(names) = protocol::parse_child_fdnames(names.as_deref())? {
        let mut out = Vec::with_capacity(names.len());
        for (i, name) in names.into_iter().enumerate() {
            out.push((name, inherited(protocol::LISTENER_FD + i as i32)?));
        }
        return Ok(out);
    }
    let first = specs
        .first()
        .expect("the builder has at least one listener");
    if specs.len() > 1 {
        log::warn!(
            "the master passed one listener (fd 3, without {}); serving it as {:?} only",
            protocol::LISTEN_FDNAMES_CHILD_ENV,
            first.name()
        );
    }
    let fd3 = inherited(protocol::LISTENER_FD);
    if !first.reuseport || fd3.is_ok() || parse_unix(&first.addr).is_some() {
        return Ok(vec![(first.name(), fd3?)]);
    }
    let addr = first.addr.as_str();
    let socket = match std::env::var_os(REUSEPORT_ADDR_ENV).map(|v| v.into_string()) {
        Some(Err(v)) => Err(Error::InvalidEnv {
            var: REUSEPORT_ADDR_ENV,
            value: v.to_string_lossy().into_owned(),
            reason: "not valid UTF-8".to_owned(),
        }),
        Some(Ok(a)) => {
            let resolved = a.parse().map_err(|_| Error::InvalidEnv {
                var: REUSEPORT_ADDR_ENV,
                value: a.clone(),
                reason: "expected a socket address such as 127.0.0.1:8080".to_owned(),
            })?;
            bind(resolved, network, true, addr)
        }
        None => bind(resolve(addr, network)?, network, true, addr),
    }?;
    Ok(vec![(first.name(), Listener::Tcp(socket))])
}

/// One listener the builder was given.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// The name of [`crate::Prefork::listen_named`]; `None` for [`crate::Prefork::listen`].
    pub(crate) named: Option<String>,
    /// The address as the user wrote it.
    pub(crate) addr: String,
    /// One `SO_REUSEPORT` socket per slot (TCP only).
    pub(crate) reuseport: bool,
}

impl Spec {
    /// The name `serve` sees: the given one, or the address as written.
    pub(crate) fn name(&self) -> String {
        self.named.clone().unwrap_or_else(|| self.addr.clone())
    }

    /// Its key for a new master: the given name, or `#I` (its position `i`).
    pub(crate) fn key(&self, i: usize) -> String {
        self.named.clone().unwrap_or_else(|| format!("#{i}"))
    }
}

/// What identifies the file of a Unix socket bound here: its path, device and inode, so that
/// the master removes it only while it is still the file it made.
#[derive(Debug, Clone)]
pub(crate) struct SocketFile {
    pub(crate) path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// The socket file at `path` as it is now (std's `symlink_metadata`: `statx`, or
    /// `newfstatat` where `statx` is refused); `None` when it is gone or is no socket.
    pub(crate) fn at(path: &Path) -> Option<SocketFile> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        meta.file_type().is_socket().then(|| SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The socket file just bound at `path`; where it cannot be looked at (a sandbox refuses
    /// both `statx` and `newfstatat`), `None`, with a warning: it is then left at exit.
    fn bound_at(path: &Path) -> Option<SocketFile> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => SocketFile::at(path),
            Err(e) => {
                log::warn!(
                    "cannot look at the socket file {} ({}): it will be left at exit",
                    path.display(),
                    sys::named("lstat (statx, newfstatat)", e)
                );
                None
            }
        }
    }

    /// Removes the file if it is still the one recorded (another server may have replaced
    /// it since); says so in the log.
    pub(crate) fn remove(&self) {
        match SocketFile::at(&self.path) {
            Some(now) if now.dev == self.dev && now.ino == self.ino => {
                match std::fs::remove_file(&self.path) {
                    Ok(()) => log::info!("removed the socket file {}", self.path.display()),
                    Err(e) => log::warn!(
                        "cannot remove the socket file {}: {}",
                        self.path.display(),
                        sys::named("unlink", e)
                    ),
                }
            }
            _ => log::info!(
                "the socket file {} is gone or was replaced; left as it is",
                self.path.display()
            ),
        }
    }
}

/// Binds a Unix stream socket at `ua` (`shown` is the address as the user wrote it). A socket
/// file already at the path is removed first when nothing answers on it (a server that died
/// without removing it); a live socket is an error, as is any other kind of file, which is
/// never removed. The file's mode is `mode`, or what the umask leaves.
pub(crate) fn bind_unix(
    ua: &UnixAddr,
    mode: Option<u32>,
    shown: &str,
) -> Result<(UnixListener, Option<SocketFile>), Error> {
    let err = |source: std::io::Error| Error::Listen {
        addr: shown.to_owned(),
        source,
    };
    let refuse = |kind: std::io::ErrorKind, reason: String| err(std::io::Error::new(kind, reason));
    let path = match ua {
        UnixAddr::Abstract(name) => {
            let l = sys::bind_unix(&sys::UnixName::Abstract(name), None, BACKLOG).map_err(err)?;
            return Ok((l, None));
        }
        UnixAddr::Path(p) => p,
    };
    let name = sys::UnixName::Path(path);
    match sys::bind_unix(&name, mode, BACKLOG) {
        Ok(l) => return Ok((l, SocketFile::bound_at(path))),
        Err(e) if e.kind() != std::io::ErrorKind::AddrInUse => return Err(err(e)),
        Err(_) => {}
    }
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| err(sys::named("lstat (statx, newfstatat)", e)))?;
    if !meta.file_type().is_socket() {
        return Err(refuse(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; it is left as it is (remove it, or choose \
                 another path)",
                path.display()
            ),
        ));
    }
    if sys::unix_path_answers(path).map_err(err)? {
        return Err(refuse(
            std::io::ErrorKind::AddrInUse,
            format!(
                "a server is listening on the socket {} (stop it, or choose another path)",
                path.display()
            ),
        ));
    }
    log::info!(
        "removing the stale socket file {} (nothing listens on it)",
        path.display()
    );
    std::fs::remove_file(path).map_err(|e| err(sys::named("unlink", e)))?;
    let l = sys::bind_unix(&name, mode, BACKLOG).map_err(err)?;
    Ok((l, SocketFile::bound_at(path)))
}

/// Whether this process is an exec-mode worker (`FASTHTTP_PREFORK_CHILD=1`), and its slot
/// (`PREFORK_WORKER_ID`, 0 when absent, as under a fasthttp master).
pub(crate) fn exec_child() -> Result<Option<usize>, Error> {
    let flag = env_bytes(protocol::CHILD_ENV);
    if !protocol::parse_child_flag(flag.as_deref())? {
        return Ok(None);
    }
    let id = env_bytes(protocol::WORKER_ID_ENV);
    Ok(Some(protocol::parse_worker_id(id.as_deref())?.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handover_names_round_trip() {
        for (key, reuseport, name) in [
            (None, false, "prefork"),
            (None, true, "prefork-reuseport"),
            (Some("web"), false, "prefork=web"),
            (Some("#1"), true, "prefork-reuseport=#1"),
        ] {
            assert_eq!(handover_name(key, reuseport), name);
            assert_eq!(parse_handover_name(name), Some((key, reuseport)));
        }
        for other in ["web", "unknown", "preforked", "prefork-other", "prefork:x"] {
            assert_eq!(parse_handover_name(other), None, "{other}");
        }
    }

    #[test]
    fn specs_name_and_key() {
        let unnamed = Spec {
            named: None,
            addr: "unix:/run/a.sock".to_owned(),
            reuseport: false,
        };
        assert_eq!(unnamed.name(), "unix:/run/a.sock");
        assert_eq!(unnamed.key(2), "#2");
        let named = Spec {
            named: Some("admin".to_owned()),
            ..unnamed
        };
        assert_eq!(
            (named.name(), named.key(2)),
            ("admin".into(), "admin".into())
        );
    }
}
