//! Sockets and inherited descriptors: binding a listening TCP or Unix socket, and taking over the
//! descriptors another process passed by number (systemd socket activation, an exec-mode
//! worker's fd 3, readiness pipe and heartbeat table, an upgrade's pipes), each through
//! [`Designated::take`]. Through rustix.

#![allow(unsafe_code)]

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};

/// `socket(2)`, `setsockopt(2)`, `bind(2)` and `listen(2)`: a listening TCP socket bound to
/// `addr`, close-on-exec, with `SO_REUSEADDR` always, `SO_REUSEPORT` when asked, and
/// `IPV6_V6ONLY` set to `v6only` for IPv6 addresses.
pub(crate) fn bind_tcp(
    addr: SocketAddr,
    reuseport: bool,
    v6only: bool,
    backlog: i32,
) -> io::Result<TcpListener> {
    bind_tcp_with(addr, reuseport, false, v6only, backlog)
}

/// As [`bind_tcp`] without `SO_REUSEPORT`, but with `SO_REUSEPORT` set between `bind(2)` and
/// `listen(2)`: the socket makes a reuseport group of one at `listen`, which sockets of the
/// same user may join later, while the bind itself still fails with `EADDRINUSE` where any
/// socket holds the port (the kernel checks the flags of both sockets at the bind).
pub(crate) fn bind_tcp_group_of_one(
    addr: SocketAddr,
    v6only: bool,
    backlog: i32,
) -> io::Result<TcpListener> {
    bind_tcp_with(addr, false, true, v6only, backlog)
}

/// The calls of [`bind_tcp`]: `SO_REUSEPORT` before `bind` (`reuseport`) or between `bind`
/// and `listen` (`reuseport_after_bind`).
fn bind_tcp_with(
    addr: SocketAddr,
    reuseport: bool,
    reuseport_after_bind: bool,
    v6only: bool,
    backlog: i32,
) -> io::Result<TcpListener> {
    let domain = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    // A refusal names its call (other errors keep their errno, which callers test).
    let named = |call| {
        move |e: rustix::io::Errno| {
            let e = io::Error::from(e);
            if super::is_refused(&e) {
                super::named(call, e)
            } else {
                e
            }
        }
    };
    let fd = rustix::net::socket_with(domain, SocketType::STREAM, SocketFlags::CLOEXEC, None)
        .map_err(named("socket"))?;
    sockopt::set_socket_reuseaddr(&fd, true).map_err(named("setsockopt(SO_REUSEADDR)"))?;
    if reuseport {
        sockopt::set_socket_reuseport(&fd, true).map_err(named("setsockopt(SO_REUSEPORT)"))?;
    }
    if addr.is_ipv6() {
        sockopt::set_ipv6_v6only(&fd, v6only).map_err(named("setsockopt(IPV6_V6ONLY)"))?;
    }
    rustix::net::bind(&fd, &addr).map_err(named("bind"))?;
    if reuseport_after_bind {
        sockopt::set_socket_reuseport(&fd, true).map_err(named("setsockopt(SO_REUSEPORT)"))?;
    }
    rustix::net::listen(&fd, backlog).map_err(named("listen"))?;
    Ok(TcpListener::from(fd))
}

/// Where a Unix socket is bound: a path, or a name in the abstract namespace.
pub(crate) enum UnixName<'a> {
    Path(&'a std::path::Path),
    Abstract(&'a [u8]),
}

/// `socket(2)`, `bind(2)`, `chmod(2)` and `listen(2)`: a listening Unix stream socket bound to
/// `name`, close-on-exec; a path's file gets `mode` when given (set between `bind` and
/// `listen`, before any client can connect), else the mode the umask leaves. An error names
/// the call that failed (its kind kept); where `chmod` or `listen` failed, the file `bind`
/// made is removed.
pub(crate) fn bind_unix(
    name: &UnixName<'_>,
    mode: Option<u32>,
    backlog: i32,
) -> io::Result<UnixListener> {
    let addr = match name {
        UnixName::Path(p) => rustix::net::SocketAddrUnix::new(*p)?,
        UnixName::Abstract(n) => rustix::net::SocketAddrUnix::new_abstract_name(n)?,
    };
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| super::named("socket(AF_UNIX, SOCK_STREAM)", e))?;
    rustix::net::bind(&fd, &addr).map_err(|e| super::named("bind", e))?;
    let made = (|| {
        if let (UnixName::Path(p), Some(mode)) = (name, mode) {
            rustix::fs::chmod(*p, rustix::fs::Mode::from_raw_mode(mode))
                .map_err(|e| super::named("chmod (fchmodat)", e))?;
        }
        rustix::net::listen(&fd, backlog).map_err(|e| super::named("listen", e))
    })();
    if let Err(e) = made {
        if let UnixName::Path(p) = name {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    Ok(UnixListener::from(fd))
}

/// `connect(2)` on a fresh non-blocking Unix stream socket: whether something listens at
/// `path`. `Ok(false)` when the connection is refused (a socket file nobody listens on);
/// `Ok(true)` when it connected or the listener's queue is full (`EAGAIN`). An error names
/// the call that failed.
pub(crate) fn unix_path_answers(path: &std::path::Path) -> io::Result<bool> {
    let addr = rustix::net::SocketAddrUnix::new(path)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| super::named("socket(AF_UNIX, SOCK_STREAM)", e))?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) | Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INPROGRESS) => Ok(true),
        Err(rustix::io::Errno::CONNREFUSED) => Ok(false),
        Err(e) => Err(super::named(
            "connect (is a server listening on the socket already?)",
            e,
        )),
    }
}

/// `getsockopt(2)` (`SO_TYPE`, `SO_DOMAIN`, `SO_ACCEPTCONN`), then `fcntl(2)`: adopts the
/// inherited listening socket on the number a protocol designates for a listener
/// ([`Designated::Listener`]). Checks that it is an open, listening stream socket, TCP (IPv4
/// or IPv6) or Unix, then sets close-on-exec and, with `blocking`, clears `O_NONBLOCK`. The
/// error says which of those it is not. The checks only read the descriptor's state; it is
/// taken over ([`Designated::take`]) only once they passed. Returns the socket and whether
/// it is a Unix socket.
pub(crate) fn adopt_listener(
    socket: Designated,
    blocking: bool,
) -> Result<(OwnedFd, bool), String> {
    let fd = socket.fd();
    // Each failure names its call: a sandbox refusing one must not read as a bad socket.
    let describe = |(call, e): (&str, io::Error)| match e.raw_os_error() {
        Some(libc::EBADF) => format!("fd {fd} is not open"),
        Some(libc::ENOTSOCK) => format!("fd {fd} is not a socket"),
        _ => format!("fd {fd}: {}", super::named(call, e)),
    };
    let probe = Unowned::new(fd)
        .ok_or_else(|| describe(("", io::Error::from_raw_os_error(libc::EBADF))))?;
    let (ty, domain, listening) = probe.socket().map_err(describe)?;
    let unix = domain == AddressFamily::UNIX;
    if ty != SocketType::STREAM
        || (domain != AddressFamily::INET && domain != AddressFamily::INET6 && !unix)
    {
        return Err(format!(
            "fd {fd} is a socket but not a TCP socket nor a Unix stream socket"
        ));
    }
    let kind = if unix { "Unix stream" } else { "TCP" };
    if !listening {
        return Err(format!("fd {fd} is a {kind} socket that is not listening"));
    }
    // `Designated::take` asks `fcntl(F_GETFD)` whether the number is open: refused, it must
    // not read as a socket taken already.
    rustix::io::fcntl_getfd(probe.fd()).map_err(|e| describe(("fcntl(F_GETFD)", e.into())))?;
    let owned = socket
        .take()
        .ok_or_else(|| format!("fd {fd} was adopted already"))?;
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| describe(("fcntl(F_SETFD)", e.into())))?;
    if blocking {
        rustix::io::ioctl_fionbio(&owned, false)
            .map_err(|e| describe(("ioctl(FIONBIO)", e.into())))?;
    }
    Ok((owned, unix))
}

/// Descriptors of this process's own for every listening TCP or Unix stream socket among its descriptors
/// from 3 on (`/proc/self/fd`, or every number below 1024 where that cannot be read), in
/// ascending order of the descriptors found: `fcntl(F_DUPFD_CLOEXEC)` of each, so that the
/// sockets can be handed on while their owners (the program) keep theirs.
///
/// Every number is probed before the first duplicate is made: a duplicate takes the lowest
/// free number, which may be one still to be probed (the directory's own descriptor, closed
/// once listed, is such a number), and the socket would then be found, and passed, twice.
pub(crate) fn listening_sockets() -> Vec<OwnedFd> {
    let numbers: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => {
            let mut numbers: Vec<RawFd> = dir
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            numbers.sort_unstable();
            numbers
        }
        Err(_) => (3..INHERITED_LIMIT as RawFd).collect(),
    };
    let listening: Vec<Unowned> = numbers
        .into_iter()
        .filter(|&fd| fd > 2)
        .filter_map(Unowned::new)
        .filter(|probe| {
            probe.socket().is_ok_and(|(ty, domain, listening)| {
                listening
                    && ty == SocketType::STREAM
                    && (domain == AddressFamily::INET
                        || domain == AddressFamily::INET6
                        || domain == AddressFamily::UNIX)
            })
        })
        .collect();
    listening
        .into_iter()
        .filter_map(|probe| probe.duplicate().ok())
        .collect()
}

/// The descriptors below this number that [`Designated::take`] handed out already.
const INHERITED_LIMIT: usize = 1024;
static INHERITED: [AtomicBool; INHERITED_LIMIT] =
    [const { AtomicBool::new(false) }; INHERITED_LIMIT];

/// A descriptor number one of the crate's protocols hands this process, named by the
/// protocol that does: the only numbers the crate takes over ([`Designated::take`]). Each
/// variant is made where the crate reads its protocol, from the number that protocol names
/// (`docs/protocol.md`), and nowhere else:
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Designated {
    /// A listening socket from fd 3 on ([`adopt_listener`], for `listen.rs`): an exec-mode
    /// worker's listeners (fd 3, or as many as `PREFORK_LISTEN_FDNAMES` names), or socket
    /// activation's (`LISTEN_FDS`, with `LISTEN_PID` naming this process: systemd's, or an
    /// old master's in a binary upgrade).
    Listener(RawFd),
    /// An exec-mode worker's readiness pipe, named by `PREFORK_READY_FD` (`child.rs`).
    ReadyPipe(RawFd),
    /// An exec-mode worker's heartbeat memfd, named by `PREFORK_HEARTBEAT_FD` (`child.rs`).
    HeartbeatTable(RawFd),
    /// A new master's readiness report to its old master, named by `PREFORK_UPGRADE_FD`
    /// (`master/upgrade.rs`).
    UpgradePipe(RawFd),
    /// A new master's pipe from its old master on probation, named by
    /// `PREFORK_PROBATION_FD` (`master/upgrade.rs`).
    ProbationPipe(RawFd),
}

impl Designated {
    /// The descriptor number.
    pub(crate) fn fd(self) -> RawFd {
        match self {
            Designated::Listener(fd)
            | Designated::ReadyPipe(fd)
            | Designated::HeartbeatTable(fd)
            | Designated::UpgradePipe(fd)
            | Designated::ProbationPipe(fd) => fd,
        }
    }

    /// `fcntl(F_GETFD)`: takes ownership of the descriptor, at most once per number: a
    /// second call for the same number, under any protocol, returns `None`. Also `None`
    /// when the number is not open, or not in `3..1024` (no protocol passes one below 3).
    pub(crate) fn take(self) -> Option<OwnedFd> {
        let fd = self.fd();
        let index = guard_index(fd)?;
        if !Unowned::new(fd)?.is_open() {
            return None;
        }
        if INHERITED[index].swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the descriptor is open (checked above). It is ours alone: the number is
        // one a protocol of the crate hands this process for the crate (`Designated` is made
        // only from the number a protocol names, where the crate reads that protocol: see
        // its variants), so nothing else in the process owns it, and the flag just set makes
        // sure the crate takes each number at most once. (The flag cannot see an owner
        // outside the crate, a program that also took fd 3 for example: the protocols give
        // these numbers to the crate, and the program that uses it does not take them.)
        Some(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// The index of `fd`'s flag in the guard: `None` for a number no protocol passes (below 3)
/// or one beyond the guard.
fn guard_index(fd: RawFd) -> Option<usize> {
    usize::try_from(fd)
        .ok()
        .filter(|&i| (3..INHERITED_LIMIT).contains(&i))
}

/// A descriptor number this process may have inherited but does not own (yet): it allows
/// only queries that read the descriptor's state and change nothing, and a duplicate of it,
/// which leaves it as it was, so using a number that is not open, or that some other part of
/// the program owns, does no harm.
#[derive(Clone, Copy)]
pub(super) struct Unowned(RawFd);

impl Unowned {
    /// `None` for a negative number, which no descriptor has.
    pub(super) fn new(fd: RawFd) -> Option<Unowned> {
        (fd >= 0).then_some(Unowned(fd))
    }

    /// Borrows the number for one of the queries below, and for nothing else.
    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the number is not negative (checked by `new`). It may not be open: every
        // use is one of the read-only queries below (fcntl F_GETFD, fstat, getsockopt) or a
        // duplicate (fcntl F_DUPFD_CLOEXEC), on which a closed number fails with EBADF, and
        // none of which can close, change or hand out the descriptor itself.
        unsafe { BorrowedFd::borrow_raw(self.0) }
    }

    /// `fcntl(F_GETFD)`: whether the number is an open descriptor.
    pub(super) fn is_open(self) -> bool {
        rustix::io::fcntl_getfd(self.fd()).is_ok()
    }

    /// `fstat(2)`: whether it is an open pipe (FIFO); `Ok(false)` where it is not open.
    pub(super) fn is_fifo(self) -> io::Result<bool> {
        match rustix::fs::fstat(self.fd()) {
            Ok(st) => {
                Ok(rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo)
            }
            Err(rustix::io::Errno::BADF) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// `fcntl(F_DUPFD_CLOEXEC)`: a new descriptor, ours, for the same open file.
    pub(super) fn duplicate(self) -> io::Result<OwnedFd> {
        Ok(rustix::io::fcntl_dupfd_cloexec(self.fd(), 3)?)
    }

    /// `getsockopt(SO_TYPE, SO_DOMAIN, SO_ACCEPTCONN)`: type, family, and whether it listens;
    /// a failure comes with the call that failed.
    pub(super) fn socket(
        self,
    ) -> Result<(SocketType, AddressFamily, bool), (&'static str, io::Error)> {
        let fd = self.fd();
        let named = |call| move |e: rustix::io::Errno| (call, io::Error::from(e));
        Ok((
            sockopt::socket_type(fd).map_err(named("getsockopt(SO_TYPE)"))?,
            sockopt::socket_domain(fd).map_err(named("getsockopt(SO_DOMAIN)"))?,
            sockopt::socket_acceptconn(fd).map_err(named("getsockopt(SO_ACCEPTCONN)"))?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    #[test]
    fn bound_sockets_listen_with_their_options() {
        let v4 = super::bind_tcp("127.0.0.1:0".parse().unwrap(), true, false, 16).unwrap();
        assert!(rustix::net::sockopt::socket_reuseaddr(&v4).unwrap());
        assert!(rustix::net::sockopt::socket_reuseport(&v4).unwrap());
        assert!(rustix::net::sockopt::socket_acceptconn(&v4).unwrap());
        let flags = rustix::io::fcntl_getfd(&v4).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        let port = v4.local_addr().unwrap().port();
        // The same port without SO_REUSEPORT on the second socket: refused.
        let taken = super::bind_tcp(
            format!("127.0.0.1:{port}").parse().unwrap(),
            false,
            false,
            16,
        );
        assert_eq!(taken.unwrap_err().raw_os_error(), Some(libc::EADDRINUSE));
        if let Ok(v6) = super::bind_tcp("[::1]:0".parse().unwrap(), false, true, 16) {
            assert!(rustix::net::sockopt::ipv6_v6only(&v6).unwrap());
            assert!(!rustix::net::sockopt::socket_reuseport(&v6).unwrap());
        }
    }

    #[test]
    fn unix_sockets_bind_with_mode_and_are_found_for_a_handover() {
        let dir = std::env::temp_dir().join(format!("prefork-net-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let l = super::bind_unix(&super::UnixName::Path(&path), Some(0o640), 16).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert!(rustix::net::sockopt::socket_acceptconn(&l).unwrap());
        let flags = rustix::io::fcntl_getfd(&l).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        assert!(super::unix_path_answers(&path).unwrap());
        // A `run` master hands on every listening Unix socket too.
        let ino = rustix::fs::fstat(&l).unwrap().st_ino;
        let found = super::listening_sockets();
        let copies = found
            .iter()
            .filter(|fd| rustix::fs::fstat(fd).is_ok_and(|st| st.st_ino == ino))
            .count();
        assert_eq!(
            copies, 1,
            "the Unix listener among the handed-over sockets, once"
        );
        drop(found);
        drop(l);
        // The file stays, nobody answers: stale.
        assert!(!super::unix_path_answers(&path).unwrap());
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn designated_numbers_are_taken_once() {
        use std::os::fd::IntoRawFd;
        let (read, write) = rustix::pipe::pipe().unwrap();
        // The number is given up, as a protocol hands it over.
        let n = read.into_raw_fd();
        let taken = super::Designated::ReadyPipe(n)
            .take()
            .expect("an open pipe, taken");
        assert_eq!(taken.as_raw_fd(), n);
        // A second time, under any protocol: refused while the first owner holds it.
        assert!(super::Designated::UpgradePipe(n).take().is_none());
        assert!(super::Designated::ReadyPipe(n).take().is_none());
        // No protocol passes a number below 3.
        assert!(super::Designated::Listener(2).take().is_none());
        assert!(super::Designated::Listener(-1).take().is_none());
        drop((taken, write));
    }

    #[test]
    fn probes_say_what_a_number_is() {
        let listener = super::bind_tcp("127.0.0.1:0".parse().unwrap(), false, false, 16).unwrap();
        let probe = super::Unowned::new(listener.as_raw_fd()).unwrap();
        assert!(probe.is_open());
        assert!(!probe.is_fifo().unwrap());
        let (ty, domain, listening) = probe.socket().unwrap();
        assert_eq!(ty, rustix::net::SocketType::STREAM);
        assert_eq!(domain, rustix::net::AddressFamily::INET);
        assert!(listening);
        assert!(super::Unowned::new(-1).is_none());
        // Out of the protocol's range: never taken.
        assert_eq!(super::guard_index(2), None);
        assert_eq!(super::guard_index(3), Some(3));
        assert_eq!(super::guard_index(super::INHERITED_LIMIT as i32), None);
    }
}
