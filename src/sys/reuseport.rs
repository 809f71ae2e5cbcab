//! Classic BPF programs on listening sockets, so that a socket can stop receiving new
//! connections without closing (closing a listening socket resets every connection queued on
//! it).
//!
//! * [`steer`]: `SO_ATTACH_REUSEPORT_CBPF` (Linux 4.5). The kernel runs the group's program for
//!   every new connection and hands the connection to the socket at the position the program
//!   returns. Ours picks, by the connection's flow hash, one of a list of positions, so a
//!   socket left out of the list gets no new connection while it stays open and its worker
//!   drains what is queued on it.
//! * [`refuse_new_connections`]: `SO_ATTACH_FILTER` with a program that drops the packets
//!   that open a connection (a SYN without ACK): new connection requests are dropped, as on a
//!   full queue, while a handshake under way completes and the connections already queued
//!   stay, to be accepted and served.
//!   A client's retransmitted SYN then finds the port closed (refused) or served by whatever
//!   listens there by then (a restarted server). Some kernels refuse the filter without
//!   `CAP_NET_ADMIN` (`EPERM`).
//! * [`steer_plugs`], [`Plug`] and [`queued`]: the same effect without privilege, from the
//!   accept queue itself: a socket of the group whose queue is full (backlog 0 and one
//!   connection of ours, the plug, that nobody accepts) gets every new connection, and the
//!   kernel drops each request, as it does on any full queue. [`steer_plugs`] sends the plug
//!   to that socket before anything else can reach it.

#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// The most positions a program can list: 3 instructions plus 2 per position, within the
/// kernel's limit of 4096 instructions.
pub(crate) const MAX_TARGETS: usize = 2046;

/// Attaches to the group of `socket` a program that spreads new connections over the group
/// positions `targets` by flow hash.
pub(crate) fn steer(socket: BorrowedFd<'_>, targets: &[u32]) -> io::Result<()> {
    let mut program = program(targets)?;
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    setsockopt(&socket, sockopt::AttachReusePortCbpf, &fprog).map_err(io::Error::from)
}

/// Attaches to the group of `socket` a one-instruction program that sends every new
/// connection to the group position `position`.
pub(crate) fn send_all(socket: BorrowedFd<'_>, position: u32) -> io::Result<()> {
    let mut program = [op(libc::BPF_RET | libc::BPF_K, 0, 0, position)];
    let fprog = libc::sock_fprog {
        len: 1,
        filter: program.as_mut_ptr(),
    };
    setsockopt(&socket, sockopt::AttachReusePortCbpf, &fprog).map_err(io::Error::from)
}

/// Attaches to `socket` a filter that drops every new connection request (a bare SYN) and
/// lets every other packet through (see the module docs): connections already queued are not
/// affected, and a handshake under way when the filter arrives completes into the queue.
///
/// A filter on a TCP socket sees each packet from its TCP header on, so byte 13 holds the
/// flags; a connection accepted later inherits the filter, which then lets its data through.
pub(crate) fn refuse_new_connections(socket: BorrowedFd<'_>) -> io::Result<()> {
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    let mut program = [
        // A = the TCP flags byte.
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 13),
        op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, 0, 0, SYN | ACK),
        // A bare SYN (SYN without ACK) is dropped; everything else is kept whole.
        op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 1, SYN),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points to a five-instruction program that lives until the call returns
    // (the kernel copies it); the option value is exactly one `sock_fprog`.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the kernel refuses [`refuse_new_connections`]'s filter to this process (some
/// kernels want `CAP_NET_ADMIN` for any `SO_ATTACH_FILTER`): tried on a socket of `addr`'s
/// family made for the purpose and closed at once. `Some(error)` when refused.
pub(crate) fn filter_refused(addr: SocketAddr) -> Option<io::Error> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let probe =
        match rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None) {
            Ok(probe) => probe,
            Err(e) => return Some(e.into()),
        };
    refuse_new_connections(probe.as_fd()).err()
}

/// Attaches to the group of `socket` a program that sends a connection from one of `plugs`
/// (its local port, and the group position to send it to) to that position, and spreads
/// every other new connection over `targets` as [`steer`] does.
///
/// The plug is told by its source port, read from the network header (`SKF_NET_OFF`): after
/// an IPv4 header without options (a plug sends none) or an IPv6 header; the first byte's
/// version says which.
pub(crate) fn steer_plugs(
    socket: BorrowedFd<'_>,
    plugs: &[(u16, u32)],
    targets: &[u32],
) -> io::Result<()> {
    let net = libc::SKF_NET_OFF as u32;
    let rest = program(targets)?;
    let mut prog = vec![
        // A = the IP version (high nibble of the first byte).
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, net),
        op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, 0, 0, 0xf0),
        op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 2, 0x40),
        // IPv4: the TCP source port after a 20-byte header.
        op(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 0, 0, net + 20),
        op(libc::BPF_JMP | libc::BPF_JA, 0, 0, 1),
        // IPv6: after the 40-byte header.
        op(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 0, 0, net + 40),
    ];
    for &(port, position) in plugs {
        prog.push(op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            u32::from(port),
        ));
        prog.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, position));
    }
    prog.extend(rest);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    setsockopt(&socket, sockopt::AttachReusePortCbpf, &fprog).map_err(io::Error::from)
}

/// `getsockopt(TCP_INFO)`: how many connections wait in the accept queue of the listening
/// `socket` (`tcpi_unacked` of a listener), see [tcp(7)].
///
/// [tcp(7)]: https://man7.org/linux/man-pages/man7/tcp.7.html
pub(crate) fn queued(socket: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes, and the kernel writes at most `len`. It
    // starts zero-filled, and a tcp_info is plain integers, for which any bytes (zeroes, or
    // what the kernel wrote over some of them) are a valid value.
    let (r, info) = unsafe {
        let r = libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        );
        (r, info.assume_init())
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked)
}

/// A connection of ours to a listening socket, whose local port is known before it connects
/// (so that [`steer_plugs`] can name it).
pub(crate) struct Plug {
    fd: OwnedFd,
    port: u16,
}

impl Plug {
    /// `socket(2)` and `bind(2)` to port 0 of the unspecified address of `addr`'s family.
    pub(crate) fn new(addr: SocketAddr) -> io::Result<Plug> {
        let (family, any) = match addr {
            SocketAddr::V4(_) => (AddressFamily::INET, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            SocketAddr::V6(_) => (AddressFamily::INET6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        };
        let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
        let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, None)?;
        rustix::net::bind(&fd, &SocketAddr::new(any, 0))?;
        let port = match SocketAddr::try_from(rustix::net::getsockname(&fd)?) {
            Ok(local) => local.port(),
            Err(_) => return Err(io::Error::other("a TCP socket with no IP address")),
        };
        Ok(Plug { fd, port })
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// `connect(2)` to `addr` (the listener's address, its loopback one when it listens on
    /// every address), waiting at most `wait` for the handshake.
    pub(crate) fn connect(self, addr: SocketAddr, wait: Duration) -> io::Result<TcpStream> {
        let addr = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
            }
            _ => addr,
        };
        match rustix::net::connect(&self.fd, &addr) {
            Ok(()) | Err(rustix::io::Errno::INPROGRESS) => {}
            Err(e) => return Err(e.into()),
        }
        let timeout = Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&self.fd, PollFlags::OUT)];
        if rustix::event::poll(&mut fds, Some(&timeout))? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection was not answered",
            ));
        }
        rustix::net::sockopt::socket_error(&self.fd)??;
        Ok(TcpStream::from(self.fd))
    }
}

/// One classic BPF instruction.
fn op(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The program: `A = rxhash % n; return targets[A]`, the lookup as a chain of comparisons.
fn program(targets: &[u32]) -> io::Result<Vec<libc::sock_filter>> {
    if targets.is_empty() || targets.len() > MAX_TARGETS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot steer over {} sockets", targets.len()),
        ));
    }
    let rxhash = (libc::SKF_AD_OFF + libc::SKF_AD_RXHASH) as u32;
    let mut prog = vec![
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, rxhash),
        op(
            libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
            0,
            0,
            targets.len() as u32,
        ),
    ];
    for (i, &target) in targets.iter().enumerate() {
        // If A == i fall through to `return target`, else skip it.
        prog.push(op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            i as u32,
        ));
        prog.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, target));
    }
    prog.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, targets[0]));
    Ok(prog)
}

#[cfg(test)]
mod tests {
    /// A queued connection survives the filter, is accepted, and its data still arrives (the
    /// accepted socket inherits the filter); a new one is not answered.
    #[test]
    fn refused_listener_keeps_its_queue() {
        let listener =
            crate::sys::bind_tcp("127.0.0.1:0".parse().unwrap(), false, false, 128).unwrap();
        let addr = listener.local_addr().unwrap();
        let queued = TcpStream::connect(addr).unwrap();
        super::refuse_new_connections(listener.as_fd()).unwrap();
        let late = TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300));
        assert!(
            late.is_err(),
            "a connection request after the filter is dropped"
        );
        let (mut accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, queued.local_addr().unwrap());
        use std::io::{Read, Write};
        (&queued).write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        accepted
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        accepted.read_exact(&mut got).unwrap();
        assert_eq!(
            &got, b"ping",
            "data of an accepted connection passes the filter"
        );
    }

    use std::io::ErrorKind;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    /// Three sockets in a group, steered to positions 0 and 2: position 1 gets nothing.
    #[test]
    fn steered_group_leaves_a_socket_out() {
        let bind = |port: u16| {
            crate::sys::bind_tcp(
                format!("127.0.0.1:{port}").parse().unwrap(),
                true,
                false,
                128,
            )
            .unwrap()
        };
        let first: TcpListener = bind(0);
        let port = first.local_addr().unwrap().port();
        let group = [first, bind(port), bind(port)];
        super::steer(group[0].as_fd(), &[0, 2]).unwrap();
        let clients: Vec<TcpStream> = (0..60)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        let mut counts = [0; 3];
        for (i, l) in group.iter().enumerate() {
            l.set_nonblocking(true).unwrap();
            loop {
                match l.accept() {
                    Ok(_) => counts[i] += 1,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("accept: {e}"),
                }
            }
        }
        assert_eq!(counts.iter().sum::<usize>(), clients.len(), "{counts:?}");
        assert_eq!(counts[1], 0, "position 1 is not a target: {counts:?}");
        assert!(
            counts[0] > 0 && counts[2] > 0,
            "both targets serve: {counts:?}"
        );
    }
}
