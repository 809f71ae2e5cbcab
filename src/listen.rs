//! Listeners the crate owns: binding (shared or `SO_REUSEPORT`), the inherited fd 3 of an
//! exec-mode worker, and systemd socket activation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use crate::error::Error;
use crate::protocol;
use crate::sys;

use crate::protocol::{LISTENER_FD, REUSEPORT_ADDR_ENV};

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
/// hands to a new master (binary upgrade), in the group's order.
pub(crate) const SLOT_NAME: &str = "prefork-reuseport";
/// The `LISTEN_FDNAMES` name of a shared socket a master of this crate hands on.
pub(crate) const SHARED_NAME: &str = "prefork";

/// Adopts an inherited listening socket: checks that `fd` is a listening TCP socket, then
/// makes it close-on-exec (so programs a worker starts do not keep the port open) and, with
/// `blocking`, blocking (a socket passed non-blocking, as systemd's `NonBlocking=yes` does,
/// would make std's `accept` fail with `WouldBlock`). Every inherited listener comes through
/// here.
///
/// `blocking` is false for a socket that workers of this crate may be serving at the same
/// moment (an exec-mode worker's fd 3 under our master, a socket an old master hands on):
/// the blocking mode belongs to the socket, shared by every process holding it, and a
/// sibling's `Shutdown::incoming` relies on the non-blocking mode it set.
#[allow(unsafe_code)]
fn adopt(fd: std::os::fd::RawFd, blocking: bool) -> Result<TcpListener, Error> {
    // SAFETY: both callers pass a number a protocol gave the crate, which nothing else in the
    // process owns: fd 3 of an exec-mode worker, or a socket of socket activation whose
    // `LISTEN_PID` names this process.
    unsafe { sys::adopt_listener(fd, blocking) }
        .map_err(|reason| Error::InheritedListener { fd, reason })
}

/// The listener of an exec-mode worker: fd 3, adopted; made blocking only under a master
/// other than ours (ours sets `PREFORK_READY_FD`, and its workers share the socket).
pub(crate) fn inherited() -> Result<TcpListener, Error> {
    let under_our_master = std::env::var_os(protocol::READY_FD_ENV).is_some();
    adopt(LISTENER_FD, !under_our_master)
}

fn env_bytes(name: &str) -> Option<Vec<u8>> {
    std::env::var_os(name).map(|v| v.as_bytes().to_vec())
}

/// systemd socket activation (or a binary upgrade, which passes sockets the same way): when
/// `LISTEN_PID` is our pid and `LISTEN_FDS` ≥ 1, the sockets on fds 3.. with their names
/// from `LISTEN_FDNAMES`, each adopted (checked to be a listening TCP socket). The variables
/// are removed from the environment so workers do not misread them. `Ok(None)` when the variables are absent or meant for
/// another process.
///
/// Must run while the process is single-threaded or no other thread touches the
/// environment (it modifies it).
pub(crate) fn systemd() -> Result<Option<Vec<(TcpListener, String)>>, Error> {
    let pid = env_bytes("LISTEN_PID");
    let fds = env_bytes("LISTEN_FDS");
    let names = env_bytes("LISTEN_FDNAMES");
    let parsed = protocol::parse_listen_fds(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        sys::getpid(),
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
        let from_systemd = name != SLOT_NAME && name != SHARED_NAME;
        let fd = protocol::LISTEN_FDS_START + i as i32;
        sockets.push((adopt(fd, from_systemd)?, name));
    }
    Ok(Some(sockets))
}

/// The listener of an exec-mode worker: fd 3, adopted. With reuseport, when fd 3 holds no
/// listening socket (a fasthttp master passes none), its own `SO_REUSEPORT` socket, bound to
/// `PREFORK_REUSEPORT_ADDR` when set (older masters of this crate), else to `addr`.
pub(crate) fn exec_worker_listener(
    addr: &str,
    network: Network,
    reuseport: bool,
) -> Result<TcpListener, Error> {
    let fd3 = inherited();
    if !reuseport || fd3.is_ok() {
        return fd3;
    }
    match std::env::var_os(REUSEPORT_ADDR_ENV).map(|v| v.into_string()) {
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
    }
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
