//! What the kernel knows of a connection, read by the drain when it decides, instead of a
//! record kept on every read and write of the request path.

#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

/// A connection's state as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Seen {
    /// Bytes received and not read yet (`FIONREAD`): a request arriving, unread.
    pub(crate) unread: u64,
    /// Bytes received in all (`TCP_INFO`'s `tcpi_bytes_received`); `None` where the socket
    /// is no TCP socket (a Unix-domain one) or the kernel does not say (before Linux 4.1).
    pub(crate) received: Option<u64>,
    /// Whether the last data received came after the last data sent (`TCP_INFO`'s
    /// `tcpi_last_data_recv` below `tcpi_last_data_sent`, at the kernel's clock tick): bytes
    /// of a request came after the last answer went out. False when both fell in the same
    /// tick, and where the socket is no TCP socket.
    pub(crate) received_last: bool,
}

/// The descriptor of a connection, taken before its IO is handed to the server, to read
/// its state while the server owns the IO.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Socket(RawFd);

impl Socket {
    pub(crate) fn of(io: &impl AsFd) -> Socket {
        Socket(io.as_fd().as_raw_fd())
    }

    /// The connection's state now. A call that fails reads as nothing received (a socket
    /// that errs has no request to serve).
    ///
    /// # Safety
    ///
    /// The IO this socket was taken from ([`Socket::of`]) must still be alive: its
    /// descriptor open and not closed since.
    pub(crate) unsafe fn seen(self) -> Seen {
        // SAFETY: the caller guarantees the descriptor is open and still the connection's.
        let fd = unsafe { BorrowedFd::borrow_raw(self.0) };
        let unread = rustix::io::ioctl_fionread(fd).unwrap_or(0);
        let (received, received_last) = match tcp_info(fd) {
            Some(info) => (
                Some(info.tcpi_bytes_received),
                info.tcpi_bytes_received > 0 && info.tcpi_last_data_recv < info.tcpi_last_data_sent,
            ),
            None => (None, false),
        };
        Seen {
            unread,
            received,
            received_last,
        }
    }
}

/// `getsockopt(TCP_INFO)`; `None` on a socket that is no TCP socket, or an error.
fn tcp_info(fd: BorrowedFd<'_>) -> Option<libc::tcp_info> {
    // SAFETY: `tcp_info` is plain integers; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes and `len` is the size of `info`; the
    // kernel writes at most `len` bytes and sets `len` to what it wrote (fields it does not
    // know stay zero). `fd` is an open descriptor for the call's duration.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    /// Long enough for the kernel's clock to tick between two transfers (HZ is 100 at least).
    const TICKS: Duration = Duration::from_millis(30);

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn seen(s: &TcpStream) -> Seen {
        // SAFETY: `s` is open for the call.
        unsafe { Socket::of(s).seen() }
    }

    /// Waits (10 s at most) until `s` has `n` unread bytes.
    fn until_unread(s: &TcpStream, n: u64) {
        for _ in 0..1000 {
            if seen(s).unread == n {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{n} unread bytes never came: {:?}", seen(s));
    }

    #[test]
    fn sees_a_request_arriving_read_and_answered() {
        let (mut client, mut server) = pair();
        let fresh = seen(&server);
        assert_eq!(fresh.unread, 0);
        assert_eq!(fresh.received, Some(0));
        assert!(!fresh.received_last);

        std::thread::sleep(TICKS);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        until_unread(&server, 18);
        let arriving = seen(&server);
        assert_eq!(arriving.received, Some(18));
        assert!(arriving.received_last, "{arriving:?}");

        let mut buf = [0u8; 64];
        assert_eq!(server.read(&mut buf).unwrap(), 18);
        let in_hand = seen(&server);
        assert_eq!(in_hand.unread, 0);
        assert_eq!(in_hand.received, Some(18));
        assert!(in_hand.received_last, "a request in hand: {in_hand:?}");

        std::thread::sleep(TICKS);
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        let answered = seen(&server);
        assert_eq!(answered.unread, 0);
        assert!(
            !answered.received_last,
            "idle after the answer: {answered:?}"
        );

        std::thread::sleep(TICKS);
        client.write_all(b"G").unwrap();
        until_unread(&server, 1);
        assert_eq!(server.read(&mut buf).unwrap(), 1);
        let partial = seen(&server);
        assert_eq!(partial.unread, 0);
        assert_eq!(partial.received, Some(19));
        assert!(partial.received_last, "the next request begun: {partial:?}");
    }

    #[test]
    fn a_unix_socket_has_no_tcp_state() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.write_all(b"abc").unwrap();
        // SAFETY: `b` is open for the call.
        let s = unsafe { Socket::of(&b).seen() };
        assert_eq!(s.unread, 3);
        assert_eq!(s.received, None);
        assert!(!s.received_last);
    }
}
